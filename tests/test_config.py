"""Recipes and command-line overrides: parsing, types, typos, ranges, model geometry, Ascend-only keys,
recipe inheritance (``_base_``), per-script options and help."""
import argparse
import glob
import os
import re
import subprocess
import sys

import pytest
import yaml

from mindswin.config import (
    DEFAULTS,
    SCRIPTS,
    ConfigError,
    add_option,
    check_geometry,
    choices,
    load_config,
    parse_args,
    save_config,
)

from helpers import ROOT, cli, run


def test_cli_overrides_parse_lists_booleans_and_numbers(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: swinv2_tiny_window16_256\nlr: 1e-3\nbatch_size: 16\n")
    config = parse_args(["--config", str(recipe), "--pretrained_window_sizes", "[12,12,12,6]", "--ema", "True",
                         "--batch_size", "8", "--warmup_epochs", "0.5", "--img_size", "512"], script="train")
    assert config.model == "swinv2_tiny_window16_256"
    assert config.lr == 1e-3 and isinstance(config.lr, float)
    assert config.pretrained_window_sizes == [12, 12, 12, 6]
    assert config.ema is True and config.batch_size == 8 and config.warmup_epochs == 0.5
    assert config.image_resize == 512
    assert {"model", "lr", "batch_size", "ema", "image_resize"} <= config.explicit
    assert "seed" not in config.explicit


@pytest.mark.parametrize("argv, message", [
    (["--learning_rate", "1e-3"], "unknown option --learning_rate"),
    (["--batch_sise", "8"], "Did you mean 'batch_size'"),
    (["--batch_size", "eight"], "'batch_size' must be an integer"),
    (["--ema", "3"], "'ema' must be true/false"),
    (["--amp_level", "O3"], "'amp_level' cannot be 'O3': everything in float16"),
    (["--topk", "3"], r"^--topk is an option of infer.py; train.py does not use it$"),
    (["--file_format", "MINDIR"], r"^--file_format is an option of export.py; train.py does not use it$"),
])
def test_bad_options_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv, script="train")


def test_typo_in_recipe_names_the_file_and_suggests(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("modle: swinv2_tiny_window8_256\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: unknown key 'modle'. Did you mean 'model'\?"):
        load_config(str(recipe))


def test_every_shipped_recipe_loads():
    recipes = sorted(glob.glob(str(ROOT / "configs" / "**" / "*.yaml"), recursive=True))
    assert len(recipes) >= 1
    for path in recipes:
        load_config(path)


# A value each key refuses. Every key of DEFAULTS is here or in UNCONSTRAINED (checked below),
# so a key added without deciding its allowed values fails this file.
INVALID = {
    "task": "segmentation",
    "model": "swinv2_bogus",
    "num_classes": 0,
    "image_resize": 0,
    "window_size": 0,
    "pretrained_window_sizes": [8, -1, 8, 8],
    "embed_dim": 0,
    "depths": [2, 0, 2],
    "num_heads": [3, 6.5, 12],
    "extra_norm_period": -6,
    "sequential_attention": -1,
    "sequential_attention_heads": -2,
    "drop_path_rate": 1.0,
    "reuse_blocks": True,  # refused off Ascend (the default device_target is CPU)
    "flash_attention": True,  # refused off Ascend, like reuse_blocks
    "num_parallel_workers": 0,
    "verify_images": "partial",
    "re_prob": 1.5,
    "color_jitter": -0.1,
    "hflip": -0.5,
    "scale": [0.5, 0.1],
    "ratio": [0.0, 1.0],
    "interpolation": "cubic",
    "crop_pct": 0.0,
    "mixup": -1.0,
    "cutmix": -1.0,
    "cutmix_prob": 2.0,
    "mixup_switch_prob": -0.1,
    "mixup_mode": "row",
    "label_smoothing": 1.0,
    "batch_size": 0,
    "epoch_size": 0,
    "gradient_accumulation_steps": 0,
    "opt": "rmsprop",
    "lr": -0.001,
    "lr_base_batch": 0,
    "min_lr": -1e-6,
    "warmup_lr": -1e-7,
    "base_lr": -0.001,
    "base_min_lr": -1e-6,
    "base_warmup_lr": -1e-7,
    "warmup_factor": 1.5,
    "decay_epochs": 0,
    "num_cycles": 0,
    "cycle_decay": 0.0,
    "momentum": 1.0,
    # mindcv's keys with one supported value: each other value refused with its own reason
    "mode": 1,
    "dataset": "cifar10",
    "dataset_download": True,
    "shuffle": False,
    "drop_remainder": False,
    "num_samples": 100,
    "eval_shuffle": True,
    "pretrained": "no_such_weights",
    "drop_rate": 0.5,
    "in_channels": 1,
    "re_value": "noise",
    "re_scale": [0.1, 0.5],
    "re_ratio": [1.0, 2.0],
    "re_max_attempts": 5,
    "vflip": 0.5,
    "aug_splits": 3,
    "aug_repeats": -1,
    "weight_decay_filter": "disable",
    "drop_overflow_update": False,
    "loss": "nll",
    "aux_factor": 0.4,
    "reduction": "sum",
    "ckpt_save_policy": "best_k",
    "resume_opt": True,
    "val_amp_level": "O1",
    "amp_cast_list": "[Softmax]",
    "mean": [0.0, 0.0],
    "std": [58.4, 57.1, 0.0],
    "warmup_epochs": -1,
    "scheduler": "cosine_annealing",
    "multi_step_decay_milestones": [10, 5],
    "decay_rate": 0.0,
    "layer_decay": 0.0,
    "mask_patch_size": 0,
    "mask_ratio": 1.0,
    "norm_target_patch_size": 4,
    "recon_grid_images": -1,
    "weight_decay": -0.05,
    "betas": [0.9, 1.0],
    "eps": 0.0,
    "clip_value": 0.0,
    "amp_level": "O1",
    "amp_dtype": "float64",
    "loss_scale_type": "static",
    "loss_scale": 0.0,
    "loss_scale_factor": 1.5,
    "scale_window": 0,
    "ema_decay": 1.0,
    "keep_checkpoint_max": 0,
    "ckpt_save_interval": 0,
    "resume_save_steps": -1,
    "val_interval": 0,
    "val_batch_size": 0,
    "log_interval": 0,
    "seed": -1,
    "device_target": "TPU",
    "jit_level": "O3",
    "hccl_buffsize": 0,
    "topk": 0,
    "file_format": "PDF",
    "throughput_warmup": 0,
    "throughput_steps": 0,
}
# Keys whose every value of the right type is valid (a wrong type is still refused).
UNCONSTRAINED = {
    "recompute": "true/false, both valid everywhere",
    "strict_data": "true/false, both valid",
    "use_nesterov": "true/false; the optimizers without momentum ignore it (as in mindcv)",
    "warmup_prefix": "true/false/null, all valid for every scheduler",
    "lr_epoch_stair": "true/false, both valid",
    "ema_warmup": "true/false, both valid",
    "dataset_sink_mode": "true/false; on CPU, which has no sink, the host feeds the steps, said once",
    "clip_grad": "true/false, both valid",
    "ema": "true/false, both valid",
    "val_while_train": "true/false, both valid",
    "distribute": "true/false; whether msrun started the process is only known at runtime",
    "enable_parallel_optimizer": "true/false; train.py refuses True without distribute (test_sweep)",
    "ckpt_path": "a path: read (and reported if missing or unreadable) when the weights are loaded",
    "pretrained_dir": "a folder that must exist, checked when weights are fetched (test_sweep)",
    "class_map": "a path or a shipped map's name, read when the head is loaded",
    "train_map_file": "a path, read (and reported) before the model is built",
    "val_map_file": "a path, read (and reported) before the model is built",
    "scan_index": "true/false, both valid",
    "tensorboard": "true/false, both valid",
    "throughput": "true/false, both valid",
    "dynamic_batch": "true/false, both valid for MINDIR and ONNX",
    "cam": "an output folder, created when needed",
    "scan_index_dir": "an output folder, created when needed",
    "data_dir": "a path, scanned (and reported) before the model is built",
    "train_split": "a sub-folder name of data_dir, scanned like data_dir",
    "val_split": "a sub-folder name of data_dir, scanned like data_dir",
    "auto_augment": "a timm policy string; an unknown family is a ConfigError when the pipeline is built",
    "ckpt_save_dir": "an output folder, created when needed",
    "resume": "'auto' or a path, looked up when training starts",
    "output": "an output file",
    "class_names_file": "a path, read by infer.py",
    "export_file": "an output path",
}


def test_every_key_has_an_invalid_value_or_a_reason_it_has_none():
    assert set(INVALID) | set(UNCONSTRAINED) == set(DEFAULTS)
    assert not set(INVALID) & set(UNCONSTRAINED)
    for key in UNCONSTRAINED:
        assert DEFAULTS[key].allowed is None, f"{key} has a rule: give it an INVALID value instead"


def test_every_default_is_allowed_by_its_own_rule():
    for key, option in DEFAULTS.items():
        if option.allowed is not None and option.default is not None:
            assert option.allowed.problem(option.default) is None, key


@pytest.mark.parametrize("key, value", INVALID.items())
def test_out_of_range_values_are_refused_naming_the_key(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(overrides={key: value})


@pytest.mark.parametrize("key", UNCONSTRAINED)
def test_unconstrained_keys_still_refuse_a_wrong_type(key):
    with pytest.raises(ConfigError, match=f"'{key}' must be"):
        load_config(overrides={key: [1, 2]})


def test_range_message_names_value_allowed_range_and_fix(tmp_path):
    with pytest.raises(ConfigError, match=r"^command line: 'weight_decay' must be >= 0, got -0.05; change "
                                          r"--weight_decay \(default: 0.05\)$"):
        load_config(overrides={"weight_decay": -0.05})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("drop_path_rate: 1.5\n")
    with pytest.raises(ConfigError, match=r"r.yaml: 'drop_path_rate' must be in \[0, 1\), got 1.5; change "
                                          r"'drop_path_rate' in .*r.yaml or override it with --drop_path_rate"):
        load_config(str(recipe))
    with pytest.raises(ConfigError, match="'weight_decay' cannot be empty"):
        load_config(overrides={"weight_decay": None})


MICRO_RECIPE = str(ROOT / "configs" / "demo" / "swinv2_micro_shapes_cpu.yaml")  # patch 2, 3 stages, window 4


@pytest.mark.parametrize("overrides, message", [
    ({"image_resize": 33}, r"'image_resize' 33 does not fit .*not a multiple of the patch size 2; "
                           r"set --image_resize to e.g. 32 or 34"),
    # SimMIM's decoder needs maps that the patch mergings halve exactly (classification pads odd ones)
    ({"image_resize": 36, "task": "simmim", "mask_patch_size": 4},
     r"'image_resize' 36 .*multiple of 2 x 2\^2 = 8; set --image_resize to e.g. 32 or 40"),
    ({"pretrained_window_sizes": [4, 4, 4, 4]}, r"'pretrained_window_sizes' \[4, 4, 4, 4\] has 4 entries but "
                                                r"swinv2_micro_window4_32 has 3 stages"),
    ({"mixup_mode": "pair", "batch_size": 31}, "mixup_mode 'pair' .* even batch_size"),
])
def test_model_geometry_is_checked_when_read(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(MICRO_RECIPE, overrides)


def test_geometry_that_builds_is_accepted():
    config = load_config(MICRO_RECIPE, {"image_resize": 64, "window_size": 8, "pretrained_window_sizes": [4, 4, 4]})
    assert (config.image_resize, config.window_size) == (64, 8)
    load_config(MICRO_RECIPE, {"window_size": 100})  # larger than every feature map: clipped by the model
    # maps the window does not divide are padded to it (stage 1 of 40 px is 10x10, window 4)
    load_config(MICRO_RECIPE, {"image_resize": 40})
    load_config(MICRO_RECIPE, {"window_size": 3})
    # odd maps are padded by the patch merging, as in timm (36 px: 18 -> 9 -> 5)
    load_config(MICRO_RECIPE, {"image_resize": 36})


@pytest.mark.parametrize("overrides, message", [
    ({"depths": [1, 1]}, r"'depths' \[1, 1\] and 'num_heads' \[3, 6, 12\] give 2 and 3 stages"),
    ({"embed_dim": 20}, r"'num_heads' 3 of stage 0 does not divide its 20 channels .*use one of 1"),
    ({"depths": [1, 0, 1]}, r"'depths'"),
    ({"extra_norm_period": -1}, r"'extra_norm_period'"),
])
def test_declared_architecture_is_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(MICRO_RECIPE, overrides)


def test_declared_architecture_is_built_and_recorded():
    from mindswin.data import resolve_data_config
    from mindswin.engine.builder import model_from_config
    from mindswin.engine.tasks import model_fields

    config = load_config(MICRO_RECIPE, {"embed_dim": 16, "depths": [1, 2, 1], "num_heads": [1, 2, 4],
                                        "extra_norm_period": 2, "pretrained_window_sizes": [0, 0, 0]})
    model, _ = model_from_config(config, 10, training=False)
    assert (model.embed_dim, [len(layer.blocks) for layer in model.layers]) == (16, [1, 2, 1])
    assert [layer.blocks[0].attn.num_heads for layer in model.layers] == [1, 2, 4]
    assert model.layers[1].blocks[1].norm3 is not None and model.layers[1].blocks[0].norm3 is None
    fields = model_fields(config, resolve_data_config(config), "official")
    assert (fields["embed_dim"], fields["depths"], fields["extra_norm_period"]) == (16, [1, 2, 1], 2)


def test_geometry_can_wait_for_the_checkpoints_model():
    # validate/infer/export take the model from the checkpoint after reading the options
    config = load_config(overrides={"pretrained_window_sizes": [0, 0, 0]}, defer_geometry=True)
    with pytest.raises(ConfigError, match="has 3 entries but swinv2_tiny_window8_256 has 4 stages"):
        check_geometry(config)
    check_geometry(config.replace(model="swinv2_micro_window4_32"))


def test_the_resolved_config_is_read_only_and_replace_checks_what_it_changes():
    config = load_config(overrides={"batch_size": 8})
    for change in (lambda: setattr(config, "batch_size", 4), lambda: config.__setitem__("batch_size", 4),
                   lambda: config.update(batch_size=4), lambda: config.pop("batch_size")):
        with pytest.raises(TypeError, match="read-only"):
            change()
    changed = config.replace(batch_size=4, inputs=["a.png"])
    assert (config.batch_size, changed.batch_size, changed.inputs) == (8, 4, ["a.png"])
    assert changed.explicit == config.explicit == {"batch_size"}
    with pytest.raises(ConfigError, match="c.ckpt's metadata: 'batch_size' must be"):
        config.replace("c.ckpt's metadata", batch_size=0)


def test_task_membership_is_stated_once_in_the_table():
    from mindswin.config.keys import TASKS, task_only_keys
    from mindswin.engine.tasks import TASKS as TASK_CLASSES

    assert set(TASK_CLASSES) == set(TASKS) == set(choices("task"))
    assert {"mask_ratio", "recon_grid_images"} <= set(task_only_keys("classification"))
    assert {"mixup", "label_smoothing", "num_classes"} <= set(task_only_keys("simmim"))
    assert not set(task_only_keys("classification")) & set(task_only_keys("simmim"))
    # --help says it from the table
    parser = argparse.ArgumentParser()
    add_option(parser, "mask_ratio")
    assert "task simmim: fraction of the squares masked" in " ".join(parser.format_help().split())


@pytest.fixture(scope="module")
def script_help():
    """``SCRIPT.py --help`` of every script: its text and options {"--key": "--key METAVAR help"}."""
    helps = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")  # one line per option
        for script in SCRIPTS:
            result = cli(f"{script}.py", "--help")
            assert result.returncode == 0, result.stderr
            blocks = re.split(r"\n(?=  -)", result.stdout.split("\nexamples:")[0])
            # a group's last option ends where the next group's title starts
            options = {block.split()[0].rstrip(","): " ".join(block.split("\n\n")[0].split())
                       for block in blocks[1:]}
            helps[script] = result.stdout, options
    return helps


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_lists_the_options_of_its_script_by_group_with_examples(script, script_help):
    text, options = script_help[script]
    used = [key for key, option in DEFAULTS.items() if script in option.scripts]
    assert set(options) == {"-h", "--config"} | {f"--{key}" for key in used}
    for key in used:
        if DEFAULTS[key].allowed is not None:
            assert f"allowed: {DEFAULTS[key].allowed.describe()}" in options[f"--{key}"]
    groups = [line[:-1] for line in text.splitlines() if re.fullmatch(r"[a-z/]+:", line)]
    assert groups == ["options", *dict.fromkeys(DEFAULTS[key].group for key in used), "examples"]
    examples = text.split("\nexamples:\n")[1].splitlines()
    assert 2 <= len(examples) <= 4 and all(f"{script}.py --" in line for line in examples)


def test_help_of_each_script_shows_what_it_does(script_help):
    text, options = script_help["train"]
    assert options["--drop_path_rate"].endswith("stochastic depth rate (null: the model's default, 0.1); allowed: "
                                                "in [0, 1) (default: 0.1)")
    assert options["--pretrained_window_sizes"].startswith("--pretrained_window_sizes [A,B,...]")
    assert "--topk" not in text and "--export_file" not in text
    for script in ("validate", "infer", "export"):
        text, _ = script_help[script]
        assert "The model and its geometry come from a mindswin .ckpt's metadata unless given" in text
        assert "--lr" not in text and "augmentation:" not in text
    text, options = script_help["export"]
    assert options["--file_format"].endswith("allowed: one of MINDIR, ONNX (default: 'MINDIR')")


def test_every_key_is_read_by_some_script_and_shown_in_a_group():
    for key, option in DEFAULTS.items():
        assert option.scripts and set(option.scripts) <= set(SCRIPTS), key
        assert option.group, key


def test_a_recipe_may_set_keys_of_other_scripts(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 1e-3\ntopk: 3\n")  # a training recipe given to validate.py
    config = parse_args(["--config", str(recipe), "--output", "r.json"], script="validate", model_from_checkpoint=True)
    assert (config.lr, config.topk, config.output) == (1e-3, 3, "r.json")


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_base_recipes_are_read_first_and_overridden(tmp_path):
    _write(tmp_path / "bases" / "schedule.yaml", "lr: 1.0e-3\nepoch_size: 5\nbatch_size: 16\n")
    _write(tmp_path / "bases" / "mid.yaml", "_base_: schedule.yaml\nbatch_size: 32\nema: True\n")
    _write(tmp_path / "bases" / "other.yaml", "batch_size: 64\nmixup: 0.0\n")
    recipe = _write(tmp_path / "r.yaml", "_base_: [bases/mid.yaml, bases/other.yaml]\nepoch_size: 7\n")
    config = load_config(recipe)
    # schedule <- mid (recursion, paths relative to each file) <- other (later base wins) <- the recipe
    assert (config.lr, config.batch_size, config.ema, config.mixup, config.epoch_size) == (1e-3, 64, True, 0.0, 7)
    assert config.explicit == {"lr", "epoch_size", "batch_size", "ema", "mixup"}
    assert "_base_" not in config
    saved = tmp_path / "saved.yaml"
    save_config(config, str(saved))
    resolved = yaml.safe_load(saved.read_text())
    assert "_base_" not in resolved and resolved == dict(config)
    assert load_config(str(saved)) == config


@pytest.mark.parametrize("files, message", [
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "_base_: [c.yaml]\n", "c.yaml": "_base_: a.yaml\n"},
     r"recipes include each other through _base_: \S*/a.yaml -> \S*/b.yaml -> \S*/c.yaml -> \S*/a.yaml$"),
    ({"a.yaml": "_base_: a.yaml\n"}, r"through _base_: \S*/a.yaml -> \S*/a.yaml$"),
    ({"a.yaml": "_base_: b.yaml\nlr: 1e-3\n", "b.yaml": "modle: swinv2_tiny_window8_256\n"},
     r"/b.yaml: unknown key 'modle'. Did you mean 'model'\?"),
    ({"a.yaml": "_base_: b.yaml\n", "b.yaml": "drop_path_rate: 1.5\n"},
     r"/b.yaml: 'drop_path_rate' must be in \[0, 1\), got 1.5; change 'drop_path_rate' in \S*/b.yaml"),
    ({"a.yaml": "_base_: missing.yaml\n"}, r"config file not found: \S*/missing.yaml \(_base_ of \S*/a.yaml\)"),
    ({"a.yaml": "_base_: [b.yaml, 3]\n", "b.yaml": ""}, r"/a.yaml: '_base_' must be a recipe path or a list of them"),
])
def test_base_recipe_mistakes_name_the_files(tmp_path, files, message):
    for name, text in files.items():
        _write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=message):
        load_config(str(tmp_path / "a.yaml"))


def test_shipped_imagenet_recipes_state_only_what_differs_from_their_base():
    for path in glob.glob(str(ROOT / "configs" / "swinv2" / "*.yaml")):
        with open(path) as f:
            own = yaml.safe_load(f)
        base = load_config(os.path.join(os.path.dirname(path), own.pop("_base_")))
        config = load_config(path)
        assert "model" in own, path  # named even where it is the default
        assert [key for key in own if key != "model" and config[key] == base[key]] == [], path


def test_convert_weights_takes_lists_as_train_py_does(tmp_path):
    tool = ["tools/convert_weights.py", "--src", tmp_path / "missing.pth", "--model", "swinv2_tiny_window8_256",
            "--out", tmp_path / "out.ckpt", "--pretrained_window_sizes"]
    parsed = cli(*tool, "[8,8,8,8]")
    assert parsed.returncode == 2 and "checkpoint not found" in parsed.stderr  # the list passed every check
    checked = cli(*tool, "[8,8,8]")
    assert checked.returncode == 2 and "'pretrained_window_sizes' [8, 8, 8] has 3 entries" in checked.stderr
    spaced = cli(*tool, "8", "8", "8", "8")
    assert spaced.returncode == 2 and "unrecognized arguments: 8 8 8" in spaced.stderr
    assert not (tmp_path / "out.ckpt").exists()


@pytest.mark.parametrize("argv, message", [
    (["--model", "swinv2_bogus"], "'model' must be a name from mindswin.list_models()"),
    (["--image_resize", "35"], "'image_resize' 35 does not fit"),
    (["--image_resize", "33"], "'image_resize' 33 does not fit"),
    (["--window_size", "0"], "'window_size' must be >= 1, got 0"),
    (["--drop_path_rate", "1.5"], "'drop_path_rate' must be in [0, 1), got 1.5"),
    (["--lr", "-0.001"], "'lr' must be > 0, got -0.001"),
    (["--mixup", "-1"], "'mixup' must be >= 0, got -1.0"),
])
def test_train_py_refuses_with_one_line_and_exit_2(argv, message, tmp_path):
    result = cli("train.py", "--config", MICRO_RECIPE, "--data_dir", tmp_path / "data", "--ckpt_save_dir",
                 tmp_path / "out", *argv)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was built


@pytest.mark.parametrize("script, argv, message", [
    ("validate.py", ["--data_dir", "d", "--ckpt_path", "c.ckpt", "--amp_level", "O3"],
     "error: command line: 'amp_level' cannot be 'O3'"),
    ("validate.py", ["--data_dir", "d", "--ckpt_path", "c.ckpt", "--lr", "1e-3"],
     "error: --lr is an option of train.py; validate.py does not use it"),
    ("infer.py", ["--ckpt_path", "c.ckpt", "image.png", "--amp_level", "O3"],
     "error: command line: 'amp_level' cannot be 'O3'"),
    ("export.py", ["--ckpt_path", "c.ckpt", "--file_format", "PDF"],
     "error: command line: 'file_format' must be one of MINDIR, ONNX, got 'PDF'"),
    ("train.py", ["--batch_size"], "error: argument --batch_size: expected one argument (run train.py --help"),
    ("validate.py", ["--config"], "error: argument --config/-c: expected one argument (run validate.py --help"),
])
def test_every_entry_point_refuses_with_exit_2(script, argv, message):
    # in a process of its own: each entry script runs for real here (the other refusals run in-process)
    result = subprocess.run([sys.executable, str(ROOT / script), *argv],
                            capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith(message) and result.stderr.count("\n") == 1, result.stderr


def test_console_scripts_are_installed_and_refuse_like_the_scripts():
    from importlib.metadata import entry_points

    scripts = {entry.name: entry for entry in entry_points(group="console_scripts")
               if entry.name.startswith("mindswin")}
    assert set(scripts) == {"mindswin-train", "mindswin-validate", "mindswin-infer", "mindswin-export",
                            "mindswin-convert-weights", "mindswin-memory-plan"}
    assert all(callable(entry.load()) for entry in scripts.values())
    launcher = os.path.join(os.path.dirname(sys.executable), "mindswin-validate")
    result = subprocess.run([str(launcher), "--data_dir", "d", "--ckpt_path", "c.ckpt", "--amp_level", "O3"],
                            capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: command line: 'amp_level' cannot be 'O3'")
    result = subprocess.run([str(launcher), "--help"], capture_output=True, text=True, timeout=120)
    assert result.stdout.startswith("usage: mindswin-validate")


def _binary_recipe(tmp_path):
    (tmp_path / "r.yaml").write_bytes(bytes(range(256)))
    return ["train.py", "--config", str(tmp_path / "r.yaml"), "--data_dir", str(tmp_path)], "is not a text file", True


def _file_as_save_dir(tmp_path):
    (tmp_path / "notes.txt").write_text("a file")
    return (["train.py", "--config", MICRO_RECIPE, "--data_dir", str(tmp_path), "--ckpt_save_dir",
             str(tmp_path / "notes.txt")], "is a file, not a folder", True)


def _damaged_pickle(tmp_path):
    import zipfile

    with zipfile.ZipFile(tmp_path / "w.pth", "w") as archive:
        archive.writestr("archive/data.pkl", b"garbage")
    return (["infer.py", "--model", "swinv2_micro_window4_32", "--ckpt_path", str(tmp_path / "w.pth"),
             str(tmp_path / "w.pth")], "is truncated or corrupt (UnpicklingError", False)


@pytest.mark.parametrize("make", [_binary_recipe, _file_as_save_dir, _damaged_pickle])
def test_mistakes_found_by_the_sweep_are_one_line(tmp_path, make):
    argv, message, parse_time = make(tmp_path)
    # refused by the parser: in this process (cli fails if the run got past it); the rest in a process of its own
    result = cli(*argv) if parse_time else run(argv[0], *argv[1:], check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and message in errors[0], errors


def test_running_out_of_device_memory_is_named_with_the_fixes():
    from mindswin.cli import _out_of_memory

    config = load_config(overrides=dict(model="swinv2_tiny_window8_256", batch_size=128))
    oom = RuntimeError("Memory not enough: Current free memory size[0] is smaller than required size")
    message = str(_out_of_memory(oom, config))
    assert "ran out of memory" in message and "batch_size 128" in message and "--recompute True" in message
    other = RuntimeError("something else")
    assert _out_of_memory(other, config) is other  # anything else is not dressed up as a user error


def test_the_mindcv_key_table_lists_each_of_mindcvs_86_keys_as_a_key_of_mindswin():
    from mindswin.config import ALIASES

    with open(ROOT / "docs" / "mindcv.md") as f:
        section = f.read().split("## Every key of mindcv's config.py")[1].split("\n## ")[0]
    keys = re.findall(r"^\| `(\w+)` \|", section, flags=re.M)
    assert len(keys) == len(set(keys)) == 86
    assert [key for key in keys if ALIASES.get(key, key) not in DEFAULTS] == []
