"""Recipes and command-line overrides: parsing, types, typos, ranges, model geometry, Ascend-only keys."""
import glob
import re
import subprocess
import sys

import pytest

from mindswin.config import DEFAULTS, ConfigError, check_geometry, load_config, parse_args

from conftest import ROOT


def test_cli_overrides_parse_lists_booleans_and_numbers(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: swinv2_tiny_window16_256\nlr: 1e-3\nbatch_size: 16\n")
    config = parse_args(["--config", str(recipe), "--pretrained_window_sizes", "[12,12,12,6]", "--ema", "True",
                         "--batch_size", "8", "--warmup_epochs", "0.5", "--img_size", "512"])
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
    (["--amp_level", "O3"], "'amp_level' must be one of O0, O2"),
    (["--enable_parallel_optimizer", "True"], "Ascend only"),
])
def test_bad_options_are_clear_errors(argv, message):
    with pytest.raises(ConfigError, match=message):
        parse_args(argv)


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
    "model": "swinv2_bogus",
    "num_classes": 0,
    "image_resize": 0,
    "window_size": 0,
    "pretrained_window_sizes": [8, -1, 8, 8],
    "drop_path_rate": 1.0,
    "reuse_blocks": True,  # refused off Ascend (the default device_target is CPU)
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
    "mixup_prob": 2.0,
    "mixup_switch_prob": -0.1,
    "mixup_mode": "row",
    "label_smoothing": 1.0,
    "batch_size": 0,
    "epoch_size": 0,
    "gradient_accumulation_steps": 0,
    "opt": "sgd",
    "lr": -0.001,
    "lr_base_batch": 0,
    "min_lr": -1e-6,
    "warmup_lr": -1e-7,
    "warmup_epochs": -1,
    "lr_scheduler": "step",
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
    "enable_parallel_optimizer": True,  # refused off Ascend
    "hccl_buffsize": 0,
    "topk": 0,
    "file_format": "PDF",
}
# Keys whose every value of the right type is valid (a wrong type is still refused).
UNCONSTRAINED = {
    "recompute": "true/false, both valid everywhere",
    "strict_data": "true/false, both valid",
    "scale_lr": "true/false, both valid",
    "clip_grad": "true/false, both valid",
    "ema": "true/false, both valid",
    "val_while_train": "true/false, both valid",
    "distribute": "true/false; whether msrun started the process is only known at runtime",
    "ckpt_path": "a path: read (and reported if missing or unreadable) when the weights are loaded",
    "pretrained": "a path, like ckpt_path",
    "class_map": "a path, read when the head is loaded",
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
    with pytest.raises(ConfigError, match=r"^command line: 'lr' must be > 0, got -0.001; change --lr "
                                          r"\(default: 0.0005\)$"):
        load_config(overrides={"lr": -0.001})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("drop_path_rate: 1.5\n")
    with pytest.raises(ConfigError, match=r"r.yaml: 'drop_path_rate' must be in \[0, 1\), got 1.5; change "
                                          r"'drop_path_rate' in .*r.yaml or override it with --drop_path_rate"):
        load_config(str(recipe))
    with pytest.raises(ConfigError, match="'lr' cannot be empty"):
        load_config(overrides={"lr": None})


MICRO_RECIPE = str(ROOT / "configs" / "demo" / "swinv2_micro_shapes_cpu.yaml")  # patch 2, 3 stages, window 4


@pytest.mark.parametrize("overrides, message", [
    ({"image_resize": 33}, r"'image_resize' 33 does not fit .*not a multiple of the patch size 2; "
                           r"set --image_resize to e.g. 32 or 64"),
    ({"image_resize": 36}, r"'image_resize' 36 .*multiple of 2 x 2\^2 = 8; set --image_resize to e.g. 32 or 64"),
    ({"image_resize": 40}, r"'image_resize' 40 .*the model's window 4: stage 1's 10x10 feature map"),
    ({"window_size": 3}, r"'window_size' 3 does not fit 32 px .*one of 1, 2, 4, 8 or >= 16"),
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


def test_geometry_can_wait_for_the_checkpoints_model():
    # validate/infer/export take the model from the checkpoint after reading the options
    config = load_config(overrides={"pretrained_window_sizes": [0, 0, 0]}, defer_geometry=True)
    with pytest.raises(ConfigError, match="has 3 entries but swinv2_tiny_window8_256 has 4 stages"):
        check_geometry(config)
    config.model = "swinv2_micro_window4_32"
    check_geometry(config)


def test_help_lists_the_allowed_values_of_every_key(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "1000")  # no wrapping inside a help text
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    blocks = re.split(r"\n(?=  -)", capsys.readouterr().out)
    options = {block.split()[0]: " ".join(block.split()) for block in blocks[1:]}
    for key, option in DEFAULTS.items():
        if option.allowed is not None:
            assert f"allowed: {option.allowed.describe()}" in options[f"--{key}"]
    assert options["--drop_path_rate"].endswith("stochastic depth rate; allowed: in [0, 1) (default: 0.1)")
    assert "allowed: one of O0, O2" in options["--amp_level"]


@pytest.mark.parametrize("argv, message", [
    (["--model", "swinv2_bogus"], "'model' must be a name from mindswin.list_models()"),
    (["--image_resize", "36"], "'image_resize' 36 does not fit"),
    (["--image_resize", "33"], "'image_resize' 33 does not fit"),
    (["--window_size", "0"], "'window_size' must be >= 1, got 0"),
    (["--drop_path_rate", "1.5"], "'drop_path_rate' must be in [0, 1), got 1.5"),
    (["--lr", "-0.001"], "'lr' must be > 0, got -0.001"),
    (["--mixup", "-1"], "'mixup' must be >= 0, got -1.0"),
])
def test_train_py_refuses_with_one_line_and_exit_2(argv, message, tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", MICRO_RECIPE, "--data_dir",
                             str(tmp_path / "data"), "--ckpt_save_dir", str(tmp_path / "out"), *argv],
                            capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was built


@pytest.mark.parametrize("script, argv", [
    ("validate.py", ["--data_dir", "d", "--ckpt_path", "c.ckpt"]),
    ("infer.py", ["--ckpt_path", "c.ckpt", "image.png"]),
    ("export.py", ["--ckpt_path", "c.ckpt"]),
])
def test_every_entry_point_refuses_with_exit_2(script, argv):
    result = subprocess.run([sys.executable, str(ROOT / script), *argv, "--file_format", "PDF"],
                            capture_output=True, text=True, cwd=str(ROOT), timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: command line: 'file_format' must be one of MINDIR, ONNX, got 'PDF'")
