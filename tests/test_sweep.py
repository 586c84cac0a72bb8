"""The bad-input sweep (issue 41 item 5) over what this round added: published weights (``--pretrained``,
``--pretrained_dir`` and its cache), the memory keys and the memory plan, the data-sink and compile keys, the
new keys, named splits and map files, damaged checkpoints of every format the loaders read, resume states of
another model or cut short, and inputs that are not images, through every entry script.

Each case runs the command in this process (:func:`helpers.cli`; the scripts themselves run in their own
process in test_config and test_train) and either works as documented or ends with exit status 2 and one
``error:`` line that names the problem and the fix, without a traceback, leaving nothing outside its
``ckpt_save_dir``. The checkpoints and the resume state are the shared ``trained`` run's; nothing compiles
but the one case that evaluates published weights.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import zipfile
from pathlib import Path
from typing import Callable, Dict, NamedTuple, Optional, Set, Tuple

import pytest

from helpers import BASE_ARGS, ROOT, cli, register_published

MICRO = "swinv2_micro_window4_32"
TINY = "swinv2_tiny_window8_256"
# The official file the default of swinv2_tiny_window8_256 is, in the cache.
TINY_OFFICIAL = "official/swinv2_tiny_patch4_window8_256.pth"
MEMORY_PLAN = "python -m mindswin.memory_plan"


class Inputs(NamedTuple):
    """Where a case's files are (its own folder, the shared run's ``ckpt_save_dir``, the demo data), and the
    test's monkeypatch, for what a case changes in this process."""

    folder: Path
    run: Path
    data: str
    monkeypatch: pytest.MonkeyPatch


def _safetensors_cut_short(inputs: Inputs) -> Path:
    header = json.dumps({"head.weight": {"dtype": "F32", "shape": [4, 96], "data_offsets": [0, 1536]}}).encode()
    return _write(inputs, "cut.safetensors", struct.pack("<Q", len(header)) + header + bytes(64))


def _torch_zip_with_a_bad_pickle(inputs: Inputs) -> Path:
    path = inputs.folder / "bad_pickle.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", b"garbage")
    return path


def _state_cut_short(inputs: Inputs) -> Path:
    state = (inputs.run / "resume_state.ckpt").read_bytes()
    return _write(inputs, "cut_state.ckpt", state[:len(state) * 2 // 3])


def _cache_with_a_corrupt_file(inputs: Inputs) -> Path:
    cache = inputs.folder / "cache_by_hand"
    _write(inputs, f"cache_by_hand/{TINY_OFFICIAL}", b"<html>an error page saved as the weights</html>")
    return cache


def _cache_with_the_test_weights(inputs: Inputs) -> Path:
    """A folder holding the micro model's published weights ``official/micro_test.ckpt``, registered as its
    default for the test (from no server at all: found there, they are used without any network access)."""
    from mindswin.pretrained import PretrainedWeights, WeightFile

    file = WeightFile("official", "http://127.0.0.1:9/micro_test.ckpt", "official", "official/micro_test.ckpt")
    register_published(inputs.monkeypatch, PretrainedWeights(MICRO, "test_in4", "test", 32, 4, 4, (0, 0, 0), None,
                                                             "", (file,)))
    cache = inputs.folder / "shared_weights"
    (cache / "official").mkdir(parents=True)
    shutil.copy(inputs.run / f"{MICRO}-e0003.ckpt", cache / "official" / "micro_test.ckpt")
    return cache


def _val_map(inputs: Inputs, label: int) -> Path:
    first_class = sorted(os.listdir(os.path.join(inputs.data, "val")))[0]
    image = sorted(os.listdir(os.path.join(inputs.data, "val", first_class)))[0]
    return _write(inputs, "val_map.txt", f"val/{first_class}/{image}\t{label}\n".encode())


def _write(inputs: Inputs, name: str, data: bytes) -> Path:
    path = inputs.folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _folder(inputs: Inputs, name: str, *files: str) -> Path:
    """A folder holding ``files`` (each a line of text)."""
    folder = inputs.folder / name
    folder.mkdir()
    for file in files:
        (folder / file).write_text("a line\n")
    return folder


# What a case's {NAME} stands for, made when a case names it.
MAKERS: Dict[str, Callable[[Inputs], object]] = {
    "data": lambda inputs: inputs.data,
    "out": lambda inputs: inputs.folder / "out",
    "missing": lambda inputs: inputs.folder / "missing",
    "weights": lambda inputs: inputs.run / f"{MICRO}-e0003.ckpt",
    "state": lambda inputs: inputs.run / "resume_state.ckpt",
    "recipe": lambda inputs: ROOT / "configs" / "demo" / "swinv2_micro_shapes_cpu.yaml",
    "text": lambda inputs: _write(inputs, "notes.txt", b"some notes\n"),
    "binary": lambda inputs: _write(inputs, "binary.txt", bytes(range(256))),
    "empty": lambda inputs: _write(inputs, "empty.pth", b""),
    "ckpt_cut_short": lambda inputs: _write(inputs, "cut.ckpt", (inputs.run / f"{MICRO}-e0003.ckpt").read_bytes()[
        :50_000]),
    "bad_pickle": _torch_zip_with_a_bad_pickle,
    "legacy": lambda inputs: _write(inputs, "legacy.pth", b"\x80\x02" + bytes(100)),
    "bad_safetensors": lambda inputs: _write(inputs, "bad.safetensors", struct.pack("<Q", 9) + b"{not json" +
                                             bytes(16)),
    "cut_safetensors": _safetensors_cut_short,
    "random_bin": lambda inputs: _write(inputs, "random.bin", bytes(range(7, 250)) * 8),
    "hf_folder": lambda inputs: _folder(inputs, "hf_folder", "config.json"),
    "state_cut_short": _state_cut_short,
    "corrupt_cache": _cache_with_a_corrupt_file,
    "test_weights": _cache_with_the_test_weights,
    "not_an_image": lambda inputs: _write(inputs, "photo.png", b"not an image at all"),
    "empty_jpeg": lambda inputs: _write(inputs, "photo.jpg", b""),
    "no_images": lambda inputs: _folder(inputs, "no_images", "readme.md"),
    "folder": lambda inputs: _folder(inputs, "results"),
    "map_bad_label": lambda inputs: _val_map(inputs, 99),
    "recipe_sink_words": lambda inputs: _write(inputs, "sink.yaml", b"dataset_sink_mode: on the device please\n"),
    "recipe_source": lambda inputs: _write(inputs, "source.yaml", f"model: {TINY}\npretrained: ms_in1k@github\n"
                                           .encode()),
    "recipe_zero": lambda inputs: _write(inputs, "zero.yaml", b"enable_parallel_optimizer: True\ndistribute: False\n"),
}


class Case(NamedTuple):
    """A command with a mistake (or none) and what it must do.

    Attributes:
        script: Entry script (helpers.COMMANDS) or MEMORY_PLAN.
        argv: Its arguments; ``{NAME}`` stands for a file of :data:`MAKERS`.
        error: Part of the one ``error:`` line it must end with (exit 2); None: it works (exit 0).
        past_runtime: It gets past the runtime set-up (a stand-in here) before it stops.
    """

    script: str
    argv: Tuple[str, ...]
    error: Optional[str]
    past_runtime: bool = False


def train(*argv: str, error: Optional[str], past_runtime: bool = False) -> Case:
    """train.py on the demo data with the quick micro run's arguments, and ``argv``."""
    return Case("train.py", (*BASE_ARGS, "--data_dir", "{data}", "--ckpt_save_dir", "{out}", *argv), error,
                past_runtime)


def validate(*argv: str, error: Optional[str], past_runtime: bool = False) -> Case:
    """validate.py on the demo data, and ``argv``."""
    return Case("validate.py", ("--data_dir", "{data}", *argv), error, past_runtime)


def damaged(name: str, error: str) -> Case:
    """validate.py of the micro model with the weights file ``{name}``."""
    return validate("--model", MICRO, "--ckpt_path", f"{{{name}}}", error=error, past_runtime=True)


def infer(*argv: str, error: Optional[str]) -> Case:
    """infer.py with the shared run's weights, and ``argv``."""
    return Case("infer.py", ("--ckpt_path", "{weights}", *argv), error, past_runtime=True)


CASES = {
    # --pretrained: True, a tag, @SOURCE, True@SOURCE, an unknown tag, a name without weights, with ckpt_path
    "pretrained_true_at_source_from_a_named_folder_works": validate(
        "--model", MICRO, "--pretrained", "True@official", "--pretrained_dir", "{test_weights}", error=None,
        past_runtime=True),
    "pretrained_true_for_a_model_without_weights": train(
        "--pretrained", "True", error=f"'pretrained' True with model {MICRO}: {MICRO} has no published weights"),
    "pretrained_unknown_tag": train("--pretrained", "ms_in5k", error="'ms_in5k' is neither a tag"),
    "pretrained_unknown_source": train("--pretrained", "@github", error="names the unknown source 'github'"),
    "pretrained_true_at_unknown_source": train("--pretrained", "True@github",
                                               error="names the unknown source 'github'"),
    "pretrained_source_without_the_file": train(
        "--model", "swinv2_base_window8_256", "--pretrained", "True@mindcv",
        error="swinv2_base_window8_256.ms_in1k is not published by mindcv; it is by official, timm, hf"),
    "pretrained_at_without_a_source": train("--model", TINY, "--pretrained", "ms_in1k@",
                                            error="'ms_in1k@' names no source after '@': write ms_in1k@SOURCE"),
    "pretrained_empty": train("--pretrained", "", error="got an empty string; change --pretrained"),
    "pretrained_unknown_source_in_a_recipe": Case(
        "train.py", ("--config", "{recipe_source}", "--data_dir", "{data}"), "source.yaml: 'pretrained' names the "
        "unknown source 'github'; sources: official, timm, hf, mindcv; change 'pretrained' in"),
    "pretrained_with_ckpt_path_loads_the_ckpt_path": validate(
        "--model", TINY, "--pretrained", "True", "--pretrained_dir", "{missing}", "--ckpt_path", "{missing}",
        error="checkpoint not found: {missing}; refusing to run random weights"),
    # the folder of published weights
    "pretrained_dir_missing": validate(
        "--model", TINY, "--pretrained", "True", "--pretrained_dir", "{missing}",
        error="pretrained_dir {missing} does not exist: published weights are looked up in, and downloaded into, a "
              "folder that exists (a named one is never created); create it, fix --pretrained_dir"),
    "pretrained_dir_is_a_file": validate("--model", TINY, "--pretrained", "True", "--pretrained_dir", "{text}",
                                         error="pretrained_dir {text} is a file, not a folder"),
    "pretrained_file_in_the_cache_corrupt": Case(
        "export.py", ("--model", TINY, "--pretrained", "True", "--pretrained_dir", "{corrupt_cache}"),
        f"{{corrupt_cache}}/{TINY_OFFICIAL} from https://github.com/SwinTransformer/storage/releases/download/v2.0.0/"
        "swinv2_tiny_patch4_window8_256.pth is corrupt: its first bytes are not those of a PyTorch zip file (the "
        "official source publishes no checksum); removed it; run again to download it again"),
    # ZeRO-1, the memory keys and the memory plan
    "parallel_optimizer_without_distribute": train(
        "--enable_parallel_optimizer", "True", error="enable_parallel_optimizer shards the optimizer state across the "
        "data-parallel ranks, and this run is one process (distribute False): launch it with msrun"),
    "parallel_optimizer_without_distribute_in_a_recipe": Case(
        "train.py", ("--config", "{recipe_zero}", "--data_dir", "{data}"), "or set --enable_parallel_optimizer False"),
    "parallel_optimizer_recipe_is_read_by_infer_as_it_is": infer(  # stops at its input, past the recipe
        "--config", "{recipe_zero}", "{not_an_image}", error="cannot read image {not_an_image}"),
    "sequential_attention_negative": train("--sequential_attention", "-1",
                                           error="'sequential_attention' must be >= 0, got -1"),
    "sequential_attention_heads_negative": train("--sequential_attention_heads", "-4",
                                                 error="'sequential_attention_heads' must be >= 0, got -4"),
    "recompute_not_a_bool": train("--recompute", "sometimes", error="'recompute' must be true/false"),
    "gradient_accumulation_zero": train("--gradient_accumulation_steps", "0",
                                        error="'gradient_accumulation_steps' must be >= 1, got 0"),
    "flash_attention_on_cpu": train("--flash_attention", "True", error="Set flash_attention: False on this backend"),
    "reuse_blocks_on_cpu": train("--reuse_blocks", "True", error="Set reuse_blocks: False on this backend"),
    "memory_plan_window_zero": Case(MEMORY_PLAN, ("--window_size", "0"), "window_size must be at least 1, got 0"),
    "memory_plan_image_zero": Case(MEMORY_PLAN, ("--model", MICRO, "--img_size", "0"),
                                   "img_size must be at least 1, got 0"),
    "memory_plan_sequential_negative": Case(MEMORY_PLAN, ("--sequential_attention", "-1"),
                                            "sequential_attention must be at least 0 (0: all at once), got -1"),
    # the data sink, the compile keys, Ascend-only keys
    "sink_not_a_bool": train("--dataset_sink_mode", "maybe", error="'dataset_sink_mode' must be true/false"),
    "sink_not_a_bool_in_a_recipe": Case("train.py", ("--config", "{recipe_sink_words}", "--data_dir", "{data}"),
                                        "sink.yaml: 'dataset_sink_mode' must be true/false"),
    "jit_level_unknown": train("--jit_level", "O3", error="'jit_level' must be one of O0, O1, O2, got 'O3'"),
    "pynative_mode": train("--mode", "1", error="PyNative (1) is not supported"),
    "hccl_buffsize_on_cpu": train("--hccl_buffsize", "200", error="hccl_buffsize is an Ascend (HCCL) setting"),
    # named splits and map files
    "val_split_named_missing": train("--val_split", "nosuchsplit", past_runtime=True,
                                     error="val_split 'nosuchsplit' names no folder"),
    "train_split_named_missing": train("--train_split", "nosuchsplit", past_runtime=True,
                                       error="or --train_split / --val_split to its split folders"),
    "validate_val_split_missing": validate("--ckpt_path", "{weights}", "--val_split", "nosuchsplit",
                                           past_runtime=True, error="(folders in {data}: train, val;"),
    "train_map_file_not_text": train("--train_map_file", "{binary}", past_runtime=True,
                                     error="binary.txt is not a map file ('utf-8' codec can't decode"),
    "val_map_file_not_text": validate("--ckpt_path", "{weights}", "--val_map_file", "{binary}", past_runtime=True,
                                      error="binary.txt is not a map file"),
    "val_map_file_missing": validate("--ckpt_path", "{weights}", "--val_map_file", "{missing}", past_runtime=True,
                                     error="map file not found: {missing}"),
    "val_map_file_label_out_of_range": validate("--ckpt_path", "{weights}", "--val_map_file", "{map_bad_label}",
                                                past_runtime=True, error="has labels outside [0, 4)"),
    # damaged checkpoints of every format
    "ckpt_cut_short": damaged("ckpt_cut_short", "cut.ckpt is not a readable MindSpore checkpoint (truncated or"),
    "pth_with_a_bad_pickle": damaged("bad_pickle", "bad_pickle.pth is truncated or corrupt (UnpicklingError"),
    "pth_legacy_pickle": damaged("legacy", "legacy (pre-1.6) pickle format; re-save it"),
    "safetensors_bad_header": damaged("bad_safetensors", "bad.safetensors is not a valid safetensors file"),
    "safetensors_cut_short": damaged("cut_safetensors", "cut.safetensors is truncated: tensor 'head.weight' runs past"),
    "bin_of_random_bytes": damaged("random_bin", "random.bin is not a recognised checkpoint"),
    "weights_file_empty": damaged("empty", "empty.pth is empty (0 bytes)"),
    "hf_folder_without_weights": damaged("hf_folder", "hf_folder is a directory without model.safetensors"),
    "recipe_as_weights": Case("export.py", ("--model", MICRO, "--ckpt_path", "{recipe}"),
                              "swinv2_micro_shapes_cpu.yaml is not a recognised checkpoint", past_runtime=True),
    # resume states of another model, cut short, in the place of weights
    "resume_state_as_weights": validate(
        "--ckpt_path", "{state}", past_runtime=True, error="a training run's resume state (the model's, the "
        "optimizer's and the EMA's tensors), not weights: pass one of the run's MODEL-eNNNN.ckpt"),
    "resume_state_of_another_model": train("--model", "swinv2_nano_window4_64", "--image_resize", "32", "--resume",
                                           "{state}", past_runtime=True, error="does not match this run: missing"),
    "resume_state_cut_short": train("--resume", "{state_cut_short}", past_runtime=True,
                                    error="; resume from an intact copy with --resume PATH"),
    "weights_as_resume_state": train("--resume", "{weights}", past_runtime=True,
                                     error="is a weights file (classification weights), not a resume state"),
    "resume_state_missing": train("--resume", "{missing}", past_runtime=True,
                                  error="resume state not found: {missing}"),
    # infer.py and export.py inputs
    "infer_text_named_png": infer("{not_an_image}", error="cannot read image {not_an_image}"),
    "infer_empty_jpeg": infer("{empty_jpeg}", error="cannot read image {empty_jpeg}"),
    "infer_folder_without_images": infer("{no_images}", error="no images found in {no_images}"),
    "infer_cam_folder_is_a_file": infer("--cam", "{text}", "{not_an_image}",
                                        error="--cam {text} is a file, not a folder"),
    "infer_class_names_file_missing": infer("--class_names_file", "{missing}", "{not_an_image}",
                                            error="class_names_file not found: {missing}; pass a UTF-8 text file"),
    "infer_class_names_file_not_text": infer("--class_names_file", "{binary}", "{not_an_image}",
                                             error="class_names_file {binary} is not a text file"),
    # output files where a folder is, or below a file: refused before any work (a traceback after it)
    "validate_output_is_a_folder": validate("--ckpt_path", "{weights}", "--output", "{folder}",
                                            error="--output: {folder} is a folder; name a file to write"),
    "infer_output_below_a_file": infer("--output", "{text}/predictions.json", "{not_an_image}",
                                       error="--output: {text}/predictions.json cannot be written, {text} is a file"),
    "export_file_below_a_file": Case("export.py", ("--ckpt_path", "{weights}", "--export_file", "{text}/model"),
                                     "--export_file: {text}/model.mindir cannot be written, {text} is a file"),
    "convert_weights_out_below_a_file": Case("tools/convert_weights.py", ("--src", "{weights}", "--out",
                                                                          "{text}/converted.ckpt", "--model", MICRO),
                                             "--out: {text}/converted.ckpt cannot be written, {text} is a file"),
    "export_format_unknown": Case("export.py", ("--ckpt_path", "{weights}", "--file_format", "TFLITE"),
                                  "'file_format' must be one of MINDIR, ONNX, got 'TFLITE'"),
}


def _memory_plan(*argv: str) -> subprocess.CompletedProcess:
    """``python -m mindswin.memory_plan`` in this process."""
    from mindswin.memory_plan import main

    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        returncode = main(list(argv))
    return subprocess.CompletedProcess([MEMORY_PLAN, *argv], returncode, stdout.getvalue(), stderr.getvalue())


def _files(*folders: Path) -> Set[str]:
    return {os.path.join(root, name) for folder in folders for root, dirs, names in os.walk(folder)
            for name in dirs + names}


@pytest.mark.parametrize("name", CASES)
def test_each_mistake_is_one_line_with_its_fix_and_leaves_nothing_behind(name, trained, data_dir, tmp_path,
                                                                        monkeypatch):
    case = CASES[name]
    inputs = Inputs(tmp_path / "inputs", trained[0], data_dir, monkeypatch)
    inputs.folder.mkdir()
    work = tmp_path / "cwd"  # the working directory the command runs in: it stays empty
    work.mkdir()
    monkeypatch.setenv("MINDSWIN_PRETRAINED_DIR", str(tmp_path / "default_cache"))
    monkeypatch.setenv("MINDSWIN_OFFLINE", "1")  # whatever a case does, it never reaches for the network
    made: Dict[str, str] = {}

    def resolve(text: str) -> str:
        def value(match: re.Match) -> str:
            key = match.group(1)
            if key not in made:
                made[key] = str(MAKERS[key](inputs))
            return made[key]

        return re.sub(r"\{(\w+)\}", value, text)

    argv = [resolve(arg) for arg in case.argv]
    before = _files(inputs.folder, inputs.run, Path(data_dir))
    result = (_memory_plan(*argv) if case.script == MEMORY_PLAN
              else cli(case.script, *argv, cwd=work, past_runtime=case.past_runtime))
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    if case.error is None:
        assert result.returncode == 0 and not lines, result.stderr[-2000:]
    else:
        assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), lines
        assert resolve(case.error) in lines[0], lines[0]
    # nothing outside ckpt_save_dir: not in the working directory, nor beside the inputs, nor a default cache
    assert not os.listdir(work) and not (tmp_path / "default_cache").exists()
    after = _files(inputs.folder, inputs.run, Path(data_dir))
    out = str(inputs.folder / "out")
    assert {path for path in after - before if not path.startswith(out)} == set(), after - before
    assert before - after <= {os.path.join(made.get("corrupt_cache", ""), *TINY_OFFICIAL.split("/"))}
