"""train.py / validate.py / infer.py end to end, resume after SIGKILL, AMP overflow, accumulation."""
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest

import mindswin
from mindswin.amp import apply_amp
from mindswin.checkpoint import read_metadata
from mindswin.checkpoint.native import META_KEY, save_tensors
from mindswin.config import load_config
from mindswin.data import UNREADABLE, decode_rgb, load_image, make_demo_dataset, resolve_data_config
from mindswin.engine.optim import AdamW
from mindswin.engine.state import RunPosition, read_position
from mindswin.engine.train_step import SoftTargetCrossEntropy, TrainStep

from helpers import (
    BASE_ARGS,
    DETERMINISTIC_DATA,
    MICRO_MS,
    NOISE,
    OFFICIAL_AUGMENTATION,
    assert_same_state,
    cli,
    killed_mid_epoch_and_resumed,
    randomize,
    read_events,
    read_metrics,
    resumed_from_a_kept_state,
    run,
    write_header_damaged_jpegs,
)


def test_run_writes_metrics_curves_config_and_checkpoints(trained):
    out, log = trained
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all("val_top1" in r and r["val_samples"] == 36 for r in records)
    assert records[-1]["optimizer_step"] == 3 * (96 // 16)
    files = sorted(os.listdir(out))
    assert "curves.png" in files and "config.yaml" in files and "resume_state.ckpt" in files
    position = read_position(str(out / "resume_state.ckpt"))
    assert (position.epoch, position.task) == (3, "classification")  # the task is what a resume checks
    assert [f for f in files if f.endswith("-e0002.ckpt") or f.endswith("-e0003.ckpt")] and \
        not [f for f in files if f.endswith("-e0001.ckpt")]  # keep_checkpoint_max 2
    assert "swinv2_micro_window4_32-best.ckpt" in files
    assert not [f for f in files if f.startswith(".tmp-")]
    meta = read_metadata(os.path.join(out, "swinv2_micro_window4_32-e0003.ckpt"))
    assert meta.class_names == ["checkerboard", "stripes_diagonal", "stripes_horizontal", "stripes_vertical"]
    assert (meta.model, meta.task, meta.num_classes, meta.image_resize, meta.epoch) == \
        ("swinv2_micro_window4_32", "classification", 4, 32, 3)
    assert meta.metrics["val_top1"] == read_metrics(out)[-1]["val_top1"]
    assert "train graph compiled and first step run in" in log
    # every rank's own log file, the date on every line
    with open(os.path.join(out, "log_rank0.txt")) as f:
        logged = f.read()
    assert "train graph compiled and first step run in" in logged and re.match(r"\d{4}-\d\d-\d\d ", logged)
    # the official trainer's grad_norm: on the log lines and per epoch (mean over the updates)
    assert re.search(r"step \d+/6 loss [\d.]+ lr \S+ loss_scale \S+ grad_norm \d+\.\d{4} ", log)
    assert all(r["grad_norm"] > 0 and math.isfinite(r["grad_norm"]) for r in records)
    for noise in NOISE:
        assert noise not in log


def test_tensorboard_events_hold_the_logged_curves_and_the_epoch_records(trained):
    out, log = trained
    scalars, _ = read_events(out / "tensorboard")
    records = read_metrics(out)
    # every epoch record, as metrics.jsonl has it (TensorBoard stores float32), at the epoch's last step
    for key in ("train_loss", "lr", "grad_norm", "val_top1", "val_loss", "skipped_steps", "optimizer_step"):
        assert scalars[f"epoch/{key}"] == [(6 * r["epoch"], np.float32(r[key])) for r in records], key
    # every log_interval (2) steps: the values of the log line
    steps = [step for step, _ in scalars["train/loss"]]
    assert steps == list(range(2, 19, 2))
    for tag in ("lr", "loss_scale", "grad_norm", "skipped_steps", "images_per_second"):
        assert [step for step, _ in scalars[f"train/{tag}"]] == steps, tag
    lines = re.findall(r"epoch (\d)/3 step (\d)/6 loss ([\d.]+) lr \S+ loss_scale \S+ grad_norm ([\d.]+) ", log)
    assert [(6 * (int(e) - 1) + int(b), float(loss), float(norm)) for e, b, loss, norm in lines] == \
        [(step, round(float(loss), 4), round(float(norm), 4)) for (step, loss), (_, norm)
         in zip(scalars["train/loss"], scalars["train/grad_norm"])]


def test_validate_reproduces_the_last_val_top1(trained, data_dir, tmp_path):
    out, _ = trained
    last = read_metrics(out)[-1]
    results = tmp_path / "results.json"
    last_ckpt = os.path.join(out, "swinv2_micro_window4_32-e0003.ckpt")
    result = run("validate.py", "--data_dir", data_dir, "--ckpt_path", last_ckpt, "--output", results)
    summary = json.loads(results.read_text())
    assert summary["top1"] == pytest.approx(last["val_top1"], abs=1e-9)
    assert summary["loss"] == pytest.approx(last["val_loss"], abs=1e-5)
    assert summary["num_samples"] == 36 and summary["model"] == "swinv2_micro_window4_32"
    for noise in NOISE:
        assert noise not in result.stdout + result.stderr


@pytest.mark.parametrize("args, message", [
    (["--ckpt_path", "missing.ckpt"], "checkpoint not found"),
    (["--ckpt_path", "WRONG", "--model", "swinv2_nano_window4_64"], "does not fit model swinv2_nano_window4_64"),
    (["--ckpt_path", "WRONG", "--num_classes", "7"], "head has 4 classes"),
])
def test_validate_refuses_without_loadable_weights(trained, data_dir, args, message):
    out, _ = trained
    args = [os.path.join(out, "swinv2_micro_window4_32-best.ckpt") if a == "WRONG" else a for a in args]
    result = run("validate.py", "--data_dir", data_dir, *args, check=False)
    assert result.returncode == 2
    assert message in result.stderr


def test_validate_empty_val_dir(trained, tmp_path):
    out, _ = trained
    (tmp_path / "val").mkdir()
    result = run("validate.py", "--data_dir", tmp_path, "--ckpt_path",
                 os.path.join(out, "swinv2_micro_window4_32-best.ckpt"), check=False)
    assert result.returncode == 2 and "has no class folders" in result.stderr


def test_infer_names_classes(trained, data_dir, tmp_path):
    out, _ = trained
    best = os.path.join(out, "swinv2_micro_window4_32-best.ckpt")
    images = [os.path.join(data_dir, "val", c, "00000.png") for c in ("checkerboard", "stripes_vertical")]
    preds = tmp_path / "preds.json"
    run("infer.py", "--ckpt_path", best, "--topk", "2", "--output", preds, *images)
    results = json.loads(preds.read_text())
    assert [r["image"] for r in results] == images
    # the same weights and preprocessing in this process: infer.py must name the classes the
    # logits rank first (top 2 of 4, so a wrong index-to-name mapping shows)
    meta = read_metadata(best)
    model = mindswin.create_model(meta.model, num_classes=meta.num_classes, checkpoint_path=best)
    preprocessing = resolve_data_config(load_config(overrides=meta.model_config()))
    logits = model(ms.Tensor(np.stack([load_image(p, preprocessing) for p in images]))).asnumpy()
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    for result, p in zip(results, probs):
        top = np.argsort(-p)[:2]
        assert [t["class"] for t in result["top"]] == [meta.class_names[i] for i in top]
        assert [t["index"] for t in result["top"]] == top.tolist()
        assert np.allclose([t["probability"] for t in result["top"]], p[top], rtol=0, atol=2e-6)


@pytest.mark.slow  # a whole run of its own
def test_damaged_jpegs_in_both_splits_do_not_end_the_run(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    damaged = write_header_damaged_jpegs(data / "train" / "checkerboard", 12, seed=0)
    damaged += write_header_damaged_jpegs(data / "val" / "stripes_vertical", 12, seed=1, prefix="val_damaged")
    work = tmp_path / "cwd"
    work.mkdir()
    result = run("train.py", *BASE_ARGS, "--epoch_size", "1", "--verify_images", "header", "--data_dir", data,
                 "--ckpt_save_dir", work / "out", cwd=work, check=False)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    assert "Traceback" not in log
    refused = 0
    for path in damaged:
        try:
            decode_rgb(str(path))
        except UNREADABLE:
            refused += 1
            assert path.name in log  # named, whether by the scan or by the pipeline
    assert refused >= 6
    assert read_metrics(work / "out")[-1]["val_samples"] >= 36
    assert os.listdir(work) == ["out"]  # nothing (no abnormal_image.jpg) outside ckpt_save_dir


def _val_flat(val):
    for path in list(val.glob("*/*")):
        path.rename(val / f"{path.parent.name}_{path.name}")
    for folder in val.iterdir():
        if folder.is_dir():
            folder.rmdir()


def _val_extra_class(val):
    shutil.copytree(val / "checkerboard", val / "spirals")


@pytest.mark.parametrize("damage, message", [
    (_val_flat, "holds 36 images directly, not in class folders"),
    (_val_extra_class, "has 1 class folder(s) the training split lacks: spirals"),
])
def test_bad_val_layout_is_one_error_before_anything_compiles(data_dir, tmp_path, damage, message):
    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    damage(data / "val")
    result = run("train.py", *BASE_ARGS, "--data_dir", data, "--ckpt_save_dir", tmp_path / "out", check=False)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.stderr
    assert "compiled" not in result.stdout + result.stderr  # stopped before the first step, not after an epoch


@pytest.mark.slow  # two epochs
def test_data_without_val_split_trains_and_says_once_it_will_not_validate(data_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(os.path.join(data_dir, "train"), data / "train")
    out = tmp_path / "out"
    result = run("train.py", *BASE_ARGS, "--epoch_size", "2", "--val_while_train", "True", "--data_dir", data,
                 "--ckpt_save_dir", out)
    log = result.stdout + result.stderr
    assert log.count("training without validation") == 1
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2] and not any(k.startswith("val_") for r in records for k in r)
    assert os.path.exists(out / "swinv2_micro_window4_32-e0002.ckpt")


@pytest.mark.parametrize("task", ["classification", "simmim"])
def test_a_named_val_split_that_does_not_exist_is_a_typo_not_a_choice(data_dir, task, tmp_path):
    from mindswin.config import ConfigError
    from mindswin.engine.runtime import Runtime
    from mindswin.engine.tasks import create_task

    def task_for(**overrides):  # the scan index goes to ckpt_save_dir, not the working directory's ./output
        return create_task(load_config(overrides=dict(task=task, model="swinv2_micro_window4_32", data_dir=data_dir,
                                                      ckpt_save_dir=str(tmp_path), **overrides)), Runtime())

    # found by the scan that runs before the model is built, so before anything compiles
    with pytest.raises(ConfigError, match=r"val_split 'nosuchsplit' names no folder: \S*/nosuchsplit does not exist "
                                          r"\(folders in \S*: train, val\); fix --val_split"):
        task_for(val_split="nosuchsplit")
    assert task_for(val_split="val").val_index is not None
    assert task_for(val_split="train").val_index is not None  # any existing folder may be named


def test_a_declared_architecture_draws_stochastic_depth_for_its_own_blocks(data_dir, tmp_path):
    # a recipe that declared depths with drop path fed the variant's block count of path noise to a model
    # with another, which failed in graph compile
    from mindswin.engine.runtime import Runtime
    from mindswin.engine.tasks import create_task

    def blocks(**overrides):  # the scan index goes to ckpt_save_dir, not the working directory's ./output
        values = dict(model="swinv2_micro_window4_32", data_dir=data_dir, drop_path_rate=0.1,
                      ckpt_save_dir=str(tmp_path))
        return create_task(load_config(overrides={**values, **overrides}), Runtime()).path_noise_blocks

    assert blocks() == 6  # depths 2-2-2
    assert blocks(depths=[1, 3, 1], num_heads=[2, 4, 8]) == 5
    assert blocks(depths=[1, 3, 1], num_heads=[2, 4, 8], drop_path_rate=0.0) == 0


class _DoesNotCompile(ms.nn.Cell):
    def construct(self, x, y):
        return ms.ops.matmul(x, y)  # (2, 3) @ (4, 5)


def test_a_graph_that_fails_to_compile_is_one_line_and_its_report_stays_out_of_the_working_directory(
        tmp_path, monkeypatch, capsys):
    from mindswin.cli import command
    from mindswin.engine import runtime

    @command
    def compiles_a_bad_graph(argv):
        if argv:  # as train.py does once it knows its run folder
            runtime.direct_graph_dumps(argv[0])
        _DoesNotCompile()(ms.Tensor(np.ones((2, 3), np.float32)), ms.Tensor(np.ones((4, 5), np.float32)))

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MS_OM_PATH", raising=False)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    for argv, folder in (([], None), ([str(tmp_path / "run")], tmp_path / "run")):
        assert compiles_a_bad_graph(argv) == 1
        errors = capsys.readouterr().err.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith("error: the graph failed to compile: "), errors
        report = Path(re.search(r"report \(the failing line and its call stack\): (\S+)$", errors[0]).group(1))
        assert report.name == "analyze_fail.ir" and report.exists()
        if folder is None:  # no run folder: a temporary one of this process
            assert str(report).startswith(os.path.join(tempfile.gettempdir(), "mindswin-graphs-"))
        else:
            assert report.is_relative_to(folder)
    assert sorted(os.listdir(tmp_path)) == ["run", "tmp"]  # nothing in MindSpore's default, ./rank_0/om/
    monkeypatch.setenv("MS_OM_PATH", str(tmp_path / "mine"))  # a user's own choice wins
    assert runtime.direct_graph_dumps(str(tmp_path / "run")) == str(tmp_path / "mine")


@pytest.mark.slow  # two runs, two epochs
def test_official_map_files_train_and_a_restart_reuses_the_scan_index(data_dir, tmp_path):
    """With mindcv's repeated augmentation, whose epoch keeps its length (3 copies of each image, a third of the
    epoch's images: was ``test_repeated_augmentation_trains_an_epoch_of_the_same_length``)."""
    data = tmp_path / "imagenet22k"
    shutil.copytree(data_dir, data / "images")
    classes = sorted(os.listdir(data / "images" / "train"))
    for split in ("train", "val"):
        listed = [[f"images/{split}/{name}/{f}", label] for label, name in enumerate(classes)
                  for f in sorted(os.listdir(data / "images" / split / name))]
        (data / f"ILSVRC2011fall_whole_map_{split}.txt").write_text(json.dumps(listed))
    past = time.time() - 3600  # a tree written long ago (one changed within the last second is scanned again)
    for path in [data, *data.rglob("*")]:
        os.utime(path, (past, past))
    out = tmp_path / "out"
    maps = ["--train_map_file", "ILSVRC2011fall_whole_map_train.txt", "--val_map_file",
            "ILSVRC2011fall_whole_map_val.txt", "--data_dir", data, "--ckpt_save_dir", out]
    first = run("train.py", *BASE_ARGS, "--aug_repeats", "3", "--epoch_size", "1", *maps)
    assert "reused the scan index" not in first.stdout + first.stderr
    record = read_metrics(out)[-1]
    assert record["optimizer_step"] == 96 // 16 and record["val_samples"] == 36
    assert len(os.listdir(out / "scan_index")) == 2
    resumed = run("train.py", *BASE_ARGS, "--aug_repeats", "3", "--epoch_size", "2", "--resume", "auto", *maps)
    log = resumed.stdout + resumed.stderr
    assert log.count("reused the scan index") == 2  # train and val: no file opened before the first step
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2] and records[-1]["val_samples"] == 36


@pytest.mark.parametrize("argv, message, parse_time", [
    (["--modle", "x"], "Did you mean 'model'", True),
    (["--batch_size", "many"], "'batch_size' must be an integer", True),
    (["--data_dir", "/nonexistent/data"], "data split not found", False),
    ([], "--data_dir is required", False),
])
def test_config_errors_before_any_compile(argv, message, parse_time, tmp_path):
    # the parser's refusals in this process (cli fails if the run got past them); the data's in a process of its own
    args = [*argv, "--ckpt_save_dir", tmp_path / "o"]
    result = cli("train.py", *args) if parse_time else run("train.py", *args, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "compiled" not in result.stdout


@pytest.mark.slow
def test_run_resumed_between_epochs_ends_bitwise_with_ema_and_a_mindcv_optimizer(data_dir, tmp_path):
    """Resumed from the state saved at the end of its first epoch, it ends as the uninterrupted run, bit for bit.

    Was ``test_run_killed_between_epochs_resumes_bitwise_with_ema_and_a_mindcv_optimizer`` (a second run
    SIGKILLed once that state was saved), which replaced ``test_ema_run_killed_between_epochs_resumes_to_the_
    uninterrupted_result`` (AdamW) and ``test_a_mindcv_optimizer_run_killed_between_epochs_resumes_bitwise``
    (Nesterov SGD): the state is now taken from the uninterrupted run as it saved it; a SIGKILL and the files
    it leaves are ``test_official_augmentation_run_killed_mid_epoch_resumes_bitwise``'s, where AdamW's moments
    are also restored mid-epoch, bitwise.
    """
    # Nesterov SGD keeps one buffer per parameter under its own name; the resume restores it, and the EMA twin
    args = [*BASE_ARGS, *DETERMINISTIC_DATA, "--data_dir", data_dir, "--epoch_size", "2", "--opt", "sgd",
            "--use_nesterov", "True", "--base_lr", "0.05"]
    straight, out, state, log = resumed_from_a_kept_state(
        args, tmp_path, lambda position: position.epoch == 1 and position.batch_in_epoch == 0)
    saved = ms.load_checkpoint(str(state))
    assert json.loads(saved[META_KEY])["epoch"] == 1
    # the epoch-1 state held distinct live and EMA weights: both had to be restored
    assert not np.array_equal(saved["model.head.weight"].asnumpy(), saved["ema.head.weight"].asnumpy())
    assert "epoch 1, batch 0, optimizer step 6" in log
    straight_metrics, resumed_metrics = read_metrics(straight), read_metrics(out)
    assert [r["optimizer_step"] for r in resumed_metrics] == [r["optimizer_step"] for r in straight_metrics] == [6, 12]
    # Same graph, same inputs, same machine: nothing but the resume could make them differ.
    for a, b in zip(straight_metrics, resumed_metrics):
        assert (a["train_loss"], a["val_loss"], a["val_top1"]) == (b["train_loss"], b["val_loss"], b["val_top1"])
    straight_state = ms.load_checkpoint(str(straight / "resume_state.ckpt"))
    resumed_state = ms.load_checkpoint(str(out / "resume_state.ckpt"))
    buffers = [name for name in straight_state if name.startswith("optimizer.momentum_buffer.")]
    assert buffers and not any(name.startswith("optimizer.exp_avg") for name in straight_state)
    assert np.abs(straight_state[buffers[0]].asnumpy()).max() > 0
    assert set(straight_state) == set(resumed_state)
    for name, value in straight_state.items():
        if name != META_KEY:
            assert np.array_equal(value.asnumpy(), resumed_state[name].asnumpy()), name


@pytest.mark.slow
def test_official_augmentation_run_killed_mid_epoch_resumes_bitwise(data_dir, tmp_path):
    """Also replaces ``test_sigkill_mid_epoch_then_resume_auto_matches_uninterrupted`` (the same kill without
    the augmentation, compared within a loss tolerance): the checkpoints the killed run left are checked to
    load in ``killed_mid_epoch_and_resumed``, and the resumed run is compared bitwise here."""
    # every draw (crop, flip, RandAugment, erasing box and noise, mixup/CutMix, drop path) comes from
    # (seed, epoch, sample): the resumed run must draw exactly what the uninterrupted one drew
    args = [*BASE_ARGS, *OFFICIAL_AUGMENTATION, "--epoch_size", "2", "--resume_save_steps", "2",
            "--data_dir", data_dir]
    straight, out, log = killed_mid_epoch_and_resumed(args, tmp_path)
    assert re.search(r"resumed from .*: epoch 1, batch [1-5],", log), log[-2000:]
    assert_same_state(straight, out)
    # the resumed run continues the same curves: the points the killed run wrote past its resume
    # state are purged, so every step appears once, with the uninterrupted run's value
    resumed_curves, straight_curves = read_events(out / "tensorboard")[0], read_events(straight / "tensorboard")[0]
    for tag in ("train/loss", "train/lr", "train/grad_norm", "epoch/val_loss", "epoch/val_top1"):
        assert resumed_curves[tag] == straight_curves[tag], tag
    assert [s for s, _ in resumed_curves["train/images_per_second"]] == [s for s, _ in straight_curves["train/loss"]]
    # (the resumed epoch's train_loss averages the batches trained after the restart only)
    fields = ("val_loss", "val_top1")
    assert [[r[k] for k in fields] for r in read_metrics(out)] == [[r[k] for k in fields]
                                                                   for r in read_metrics(straight)]


def test_resume_state_past_the_end_of_a_smaller_epoch_is_one_error(trained, data_dir, tmp_path):
    # a mid-epoch state (batch 4 of 6 at batch size 16), resumed at batch size 32: 3 batches per epoch
    out = tmp_path / "out"
    out.mkdir()
    tensors = {k: v for k, v in ms.load_checkpoint(os.path.join(trained[0], "resume_state.ckpt")).items()
               if k != META_KEY}
    save_tensors(str(out / "resume_state.ckpt"), tensors.items(), asdict(RunPosition(epoch=1, batch_in_epoch=4)))
    result = run("train.py", *BASE_ARGS, "--batch_size", "32", "--data_dir", data_dir, "--ckpt_save_dir", out,
                 "--resume", "auto", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "stopped after batch 4 of epoch 2, but this run's data gives only 3 batches per epoch" in result.stderr


def test_train_state_has_stable_names_that_survive_compile_and_reload(tmp_path):
    from mindswin.engine.state import TrainState
    from mindswin.engine.train_step import EMA

    def build():
        model = randomized_micro()
        model.set_train(True)
        optimizer = AdamW(model.trainable_params(), 0.05, model.no_weight_decay())
        twin = mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS)
        step = TrainStep(model, optimizer, ms.Tensor(np.full(10, 1e-3, np.float32)),
                         ms.amp.DynamicLossScaler(2.0 ** 10, 2, 1000), ema=EMA(model, twin, 0.9), accumulation=2)
        return model, step

    model, step = build()
    before_compile = TrainState(step.named_state()).names()
    structural = [name for name, _ in model.parameters_and_names()]
    assert [n for n in before_compile if n.startswith("model.")] == [f"model.{n}" for n in structural]
    assert [n for n in before_compile if n.startswith("ema.")] == [f"ema.{n}" for n in structural]
    assert {n.split(".")[0] for n in before_compile} == {"model", "ema", "optimizer", "loss_scale", "accumulation"}
    step(*_fixed_batch())
    step(*_fixed_batch(seed=1))  # the twin's and the moments' Parameter.names change at this compile
    state = TrainState(step.named_state())
    assert state.names() == before_compile
    state.save(str(tmp_path / "state.ckpt"), RunPosition(epoch=1, batch_in_epoch=0, best=50.0))
    assert [n for n in ms.load_checkpoint(str(tmp_path / "state.ckpt")) if n != META_KEY] == before_compile

    _, fresh = build()
    restored = TrainState(fresh.named_state())
    assert restored.load(str(tmp_path / "state.ckpt")) == RunPosition(epoch=1, batch_in_epoch=0, best=50.0)
    for (name, saved), (_, loaded) in zip(state.named, restored.named):
        assert np.array_equal(saved.asnumpy(), loaded.asnumpy()), name
    assert restored.optimizer_step() == 1


@pytest.mark.slow  # a fourth epoch
def test_full_disk_stops_with_one_message_and_leaves_earlier_checkpoints_intact(trained, data_dir, tmp_path):
    import resource
    import shutil

    out = tmp_path / "run"
    shutil.copytree(trained[0], out)
    before = {name: (out / name).read_bytes() for name in os.listdir(out) if (out / name).is_file()}

    def small_disk():  # the rest of a full disk, without root: writes past 1 MB fail (EFBIG)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))

    result = run("train.py", *BASE_ARGS, "--data_dir", data_dir, "--ckpt_save_dir", out, "--epoch_size", "4",
                 "--resume", "auto", check=False, preexec_fn=small_disk)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: cannot write ") and str(out) in errors[0], errors
    assert "Traceback" not in result.stdout + result.stderr
    # no partial or temporary file; the log only grew (the run's own lines appended)
    assert sorted(f for f in os.listdir(out) if (out / f).is_file()) == sorted(before)
    assert (out / "log_rank0.txt").read_bytes().startswith(before["log_rank0.txt"])
    for name, content in before.items():
        if name.endswith(".ckpt"):
            assert (out / name).read_bytes() == content, name
            ms.load_checkpoint(str(out / name))
    assert (out / "metrics.jsonl").read_bytes() == before["metrics.jsonl"]


def _fixed_batch(seed=0, batch=4, classes=5):
    rng = np.random.default_rng(seed)
    images = ms.Tensor(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    targets = ms.Tensor(np.eye(classes, dtype=np.float32)[rng.integers(0, classes, batch)])
    return images, targets


def test_overflow_skips_the_update_and_lowers_the_scale():
    model = apply_amp(mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS), "O2")
    model.set_train(True)
    optimizer = AdamW(model.trainable_params(), 0.05, model.no_weight_decay())
    scaler = ms.amp.DynamicLossScaler(2.0 ** 120, 2, 1000)  # float16 gradients overflow for sure
    step = TrainStep(model, optimizer, ms.Tensor(np.full(10, 1e-3, np.float32)), scaler, clip_value=5.0)
    before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    images, targets = _fixed_batch()
    loss, finite, scale, _, _ = step(images, targets)
    assert not bool(finite.asnumpy()) and float(scale.asnumpy()) == 2.0 ** 120
    assert float(scaler.scale_value.asnumpy()) == 2.0 ** 119
    assert int(optimizer.step.asnumpy()) == 0
    for p in model.trainable_params():
        assert np.array_equal(p.asnumpy(), before[p.name]), p.name
        assert np.isfinite(p.asnumpy()).all()
    assert np.isfinite(loss.asnumpy())


def test_gradient_accumulation_applies_the_big_batch_mean_gradient():
    images, targets = _fixed_batch(batch=8)
    # With eps == lr == 1e3, AdamW's first step is lr * g / (|g| + eps) ~ g (bias corrections
    # cancel): an update proportional to the gradient, not to its sign, so float summation
    # order moves it only as much as it moves the gradient itself.
    lr, eps = 1e3, 1e3

    def update(accumulation):
        model = randomized_micro()
        model.set_train(True)
        before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
        optimizer = AdamW(model.trainable_params(), 0.0, model.no_weight_decay(), eps=eps)
        step = TrainStep(model, optimizer, ms.Tensor(np.full(10, lr, np.float32)), ms.amp.StaticLossScaler(1.0),
                         clip_value=None, accumulation=accumulation)
        for micro_batch in range(accumulation):
            assert int(optimizer.step.asnumpy()) == 0
            part = slice(micro_batch * 8 // accumulation, (micro_batch + 1) * 8 // accumulation)
            step(images[part], targets[part])
        assert int(optimizer.step.asnumpy()) == 1
        return {p.name: p.asnumpy() - before[p.name] for p in model.trainable_params()}

    big, accumulated = update(1), update(2)
    for name, delta in big.items():
        # A float32 gradient summed over at most ~1e4 terms in another order moves by at most
        # ~1e4 * 2**-24 ~ 6e-4 of the tensor's largest term; 2e-3 of its largest update keeps a
        # margin on any ISA while a wrong mean (x2) or a lost micro-batch (~50%) fails.
        scale = float(np.abs(delta).max())
        assert np.abs(delta - accumulated[name]).max() <= 2e-3 * scale + 1e-6, name


def test_grad_norm_is_the_global_norm_before_clipping():
    images, targets = _fixed_batch(batch=4)
    reference = randomized_micro()
    reference.set_train(False)  # no dropout/drop path in MICRO_MS: train and eval forwards agree

    def loss_fn(x, y):
        return SoftTargetCrossEntropy()(reference(x), y)

    _, grads = ms.value_and_grad(loss_fn, None, reference.trainable_params())(ms.Tensor(images), ms.Tensor(targets))
    squares = [np.square(g.asnumpy().astype(np.float64)).sum() for g in grads]
    expected = math.sqrt(sum(squares))
    model = randomized_micro()
    optimizer = AdamW(model.trainable_params(), 0.0, model.no_weight_decay())
    step = TrainStep(model, optimizer, ms.Tensor(np.full(10, 1e-3, np.float32)), ms.amp.StaticLossScaler(1.0),
                     clip_value=expected / 10)  # clipping on: the norm reported is the one before it
    grad_norm = float(step(ms.Tensor(images), ms.Tensor(targets))[4].asnumpy())
    # float32 squares of n gradient elements summed in any order: relative error at most (n + 2) * 2**-24
    # (the gradients themselves come from the same graph order, bit for bit); against float64 sums
    n = sum(g.size for g in grads)
    assert abs(grad_norm - expected) <= (n + 2) * 2.0 ** -24 * expected
    assert grad_norm > 5 * (expected / 10)


def randomized_micro():

    return randomize(mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS), seed=3)


@pytest.mark.slow  # a whole run of its own
def test_fine_tune_from_another_resolution_window_and_class_count(trained, tmp_path):
    from mindswin.config import load_config
    from mindswin.engine.builder import model_from_config

    source = os.path.join(trained[0], "swinv2_micro_window4_32-best.ckpt")  # 32 px, window 4, 4 classes
    three = tmp_path / "three"
    make_demo_dataset(str(three), num_classes=3, train_per_class=16, val_per_class=4, image_size=64)
    overrides = dict(model="swinv2_micro_window4_32", image_resize=64, window_size=8,
                     pretrained_window_sizes=[4, 4, 4], ckpt_path=source)
    model, report = model_from_config(load_config(overrides=dict(overrides, amp_level="O0")), 3, training=True)
    assert report.head_reinitialised and model.head.weight.shape == (3, 192)
    assert model.layers[0].blocks[0].window_size == (8, 8)
    # logits before step 1: the backbone is exactly the checkpoint's, rebuilt for 64 px / window 8
    reference = mindswin.create_model("swinv2_micro_window4_32", num_classes=4, img_size=64, window_size=8,
                                      pretrained_window_sizes=[4, 4, 4], checkpoint_path=source)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    model.set_train(False)
    ours = model.forward_head(model.forward_features(x), pre_logits=True).asnumpy()
    assert np.array_equal(ours, reference.forward_head(reference.forward_features(x), pre_logits=True).asnumpy())
    cli = [f"--{k}={json.dumps(v) if isinstance(v, list) else v}" for k, v in overrides.items()]
    result = run("train.py", *BASE_ARGS, *cli, "--epoch_size", "1", "--data_dir", three, "--ckpt_save_dir",
                 tmp_path / "ft")
    log = result.stdout + result.stderr
    assert "classifier head re-initialised to zero: checkpoint has 4 classes, model has 3" in log
    assert read_metrics(tmp_path / "ft")[-1]["val_samples"] == 12


def test_exported_mindir_matches_the_cell(trained, tmp_path):
    from mindspore import nn

    ckpt = os.path.join(trained[0], "swinv2_micro_window4_32-best.ckpt")
    target = tmp_path / "micro"
    result = run("export.py", "--ckpt_path", ckpt, "--file_format", "MINDIR", "--batch_size", "2",
                 "--export_file", target)
    assert "wrote" in result.stdout
    graph = nn.GraphCell(ms.load(str(target) + ".mindir"))
    model = mindswin.create_model("swinv2_micro_window4_32", num_classes=4, checkpoint_path=ckpt)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    assert np.abs(graph(x).asnumpy() - model(x).asnumpy()).max() <= 1e-5


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_follows_the_weights(warmup):
    from mindswin.engine.train_step import EMA

    model = randomized_micro()
    twin = mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS)
    model.set_train(True)
    optimizer = AdamW(model.trainable_params(), 0.05, model.no_weight_decay())
    ema = EMA(model, twin, decay=0.9, warmup=warmup)
    step = TrainStep(model, optimizer, ms.Tensor(np.full(10, 1e-3, np.float32)), ms.amp.StaticLossScaler(1.0),
                     ema=ema)
    average = {p.name: p.asnumpy().astype(np.float64) for p in model.trainable_params()}
    assert all(np.array_equal(a.asnumpy(), average[name]) for name, a in twin.parameters_and_names())
    for update in (1, 2):
        step(*_fixed_batch(seed=update))
        # mindcv's warmup, decay x (1 - exp(-t / 2000)) for update t; timm's constant decay without it
        decay = 0.9 * -np.expm1(-update / 2000) if warmup else 0.9
        for avg, param in zip(twin.get_parameters(), model.trainable_params()):
            average[param.name] = decay * average[param.name] + (1 - decay) * param.asnumpy()
            # 3 float32 roundings per update (two products, one sum), each <= 2^-24 of the larger term
            assert np.allclose(avg.asnumpy(), average[param.name], rtol=8 * 2.0 ** -24, atol=1e-9), \
                (update, param.name)
    names = {p.name for p in twin.get_parameters()}
    assert not [n for n in names if "attn_mask" in n or "relative_" in n]


def test_steps_between_log_lines_read_nothing_back_from_the_device(data_dir, tmp_path, monkeypatch):
    """Counted on CPU: each Tensor.asnumpy made while a step is logged, with the terminal's progress bar on."""
    from mindswin.config import load_config
    from mindswin.engine import trainer

    reads = [0]
    to_numpy = ms.Tensor.asnumpy

    def counted(tensor):
        reads[0] += 1
        return to_numpy(tensor)

    per_step = []
    step_log = trainer._StepLog.step

    def logged(self, batch, *values):
        before = reads[0]
        step_log(self, batch, *values)
        per_step.append((batch + 1, reads[0] - before))

    # this test process ran kernels already: MindSpore allows choosing the device only before that
    monkeypatch.setattr(ms, "set_device", lambda *args, **kwargs: None)
    monkeypatch.setattr(ms.Tensor, "asnumpy", counted)
    monkeypatch.setattr(trainer._StepLog, "step", logged)
    monkeypatch.setattr(trainer.sys.stdout, "isatty", lambda: True)
    config = load_config(overrides=dict(
        model="swinv2_micro_window4_32", batch_size=16, epoch_size=1, warmup_epochs=0, amp_level="O0",
        auto_augment="", mixup=0.0, cutmix=0.0, re_prob=0.0, num_parallel_workers=1, log_interval=4,
        val_while_train=False, tensorboard=False, data_dir=data_dir, ckpt_save_dir=str(tmp_path / "out")))
    trainer.train(config)
    assert [batch for batch, _ in per_step] == [1, 2, 3, 4, 5, 6]
    # only the log line (step 4) reads: loss, lr, loss scale, grad norm and the 4 steps' finite flags
    assert [count for _, count in per_step] == [0, 0, 0, 8, 0, 0]
