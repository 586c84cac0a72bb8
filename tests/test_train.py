"""train.py / validate.py / infer.py end to end, resume after SIGKILL, AMP overflow, accumulation."""
import json
import os
import signal
import subprocess
import sys
import time

import mindspore as ms
import numpy as np
import pytest

import mindswin
from mindswin.amp import apply_amp
from mindswin.checkpoint import read_metadata
from mindswin.data import make_demo_dataset
from mindswin.engine.optim import AdamW
from mindswin.engine.train_step import TrainStep

from conftest import MICRO_MS, ROOT

PYTHON = sys.executable
BASE_ARGS = ["--model", "swinv2_micro_window4_32", "--batch_size", "16", "--epoch_size", "3", "--warmup_epochs", "1",
             "--lr", "2e-3", "--lr_base_batch", "16", "--amp_level", "O0", "--auto_augment", "", "--mixup", "0",
             "--cutmix", "0", "--re_prob", "0", "--crop_pct", "1.0", "--log_interval", "2", "--keep_checkpoint_max",
             "2", "--drop_path_rate", "0.0", "--num_parallel_workers", "1"]
NOISE = ("Traceback", "Exception ignored", "[WARNING]", "DeprecationWarning", "FutureWarning")


def run(script, *args, check=True, env=None):
    result = subprocess.run([PYTHON, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                            cwd=str(ROOT), env=env)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("patterns")
    make_demo_dataset(str(root), num_classes=4, train_per_class=24, val_per_class=9, image_size=32)
    return str(root)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("run")
    result = run("train.py", *BASE_ARGS, "--data_dir", data_dir, "--ckpt_save_dir", out, "--resume_save_steps", 2)
    return out, result.stdout + result.stderr


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_run_writes_metrics_curves_config_and_checkpoints(trained):
    out, log = trained
    records = _metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    assert all("val_top1" in r and r["val_samples"] == 36 for r in records)
    assert records[-1]["optimizer_step"] == 3 * (96 // 16)
    files = sorted(os.listdir(out))
    assert "curves.png" in files and "config.yaml" in files and "resume_state.ckpt" in files
    assert [f for f in files if f.endswith("-e0002.ckpt") or f.endswith("-e0003.ckpt")] and \
        not [f for f in files if f.endswith("-e0001.ckpt")]  # keep_checkpoint_max 2
    assert "swinv2_micro_window4_32-best.ckpt" in files
    assert not [f for f in files if f.startswith(".tmp-")]
    meta = read_metadata(os.path.join(out, "swinv2_micro_window4_32-e0003.ckpt"))
    assert meta["class_names"] == ["checkerboard", "stripes_diagonal", "stripes_horizontal", "stripes_vertical"]
    assert "train graph compiled and first step run in" in log
    for noise in NOISE:
        assert noise not in log


def test_validate_reproduces_the_last_val_top1(trained, data_dir, tmp_path):
    out, _ = trained
    last = _metrics(out)[-1]
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
    assert result.returncode != 0
    assert message in result.stderr


def test_validate_empty_val_dir(trained, tmp_path):
    out, _ = trained
    (tmp_path / "val").mkdir()
    result = run("validate.py", "--data_dir", tmp_path, "--ckpt_path",
                 os.path.join(out, "swinv2_micro_window4_32-best.ckpt"), check=False)
    assert result.returncode != 0 and "has no class folders" in result.stderr


def test_infer_names_classes(trained, data_dir, tmp_path):
    out, _ = trained
    images = [os.path.join(data_dir, "val", c, "00000.png") for c in ("checkerboard", "stripes_vertical")]
    preds = tmp_path / "preds.json"
    run("infer.py", "--ckpt_path", os.path.join(out, "swinv2_micro_window4_32-best.ckpt"), "--topk", "4",
        "--output", preds, *images)
    results = json.loads(preds.read_text())
    assert [r["image"] for r in results] == images
    names = {t["class"] for t in results[0]["top"]}
    assert names == {"checkerboard", "stripes_diagonal", "stripes_horizontal", "stripes_vertical"}
    assert all(abs(sum(t["probability"] for t in r["top"]) - 1) < 1e-3 for r in results)


@pytest.mark.parametrize("argv, message", [
    (["--modle", "x"], "Did you mean 'model'"),
    (["--batch_size", "many"], "'batch_size' must be an integer"),
    (["--data_dir", "/nonexistent/data"], "data split not found"),
    ([], "--data_dir is required"),
])
def test_config_errors_before_any_compile(argv, message, tmp_path):
    start = time.perf_counter()
    result = run("train.py", *argv, "--ckpt_save_dir", tmp_path / "o", check=False)
    assert result.returncode == 2 and message in result.stderr
    assert "compiled" not in result.stdout
    assert time.perf_counter() - start < 30


def _wait_for(predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_auto_matches_uninterrupted(trained, data_dir, tmp_path):
    reference = _metrics(trained[0])[-1]
    out = tmp_path / "killed"
    args = [*BASE_ARGS, "--data_dir", data_dir, "--ckpt_save_dir", out, "--resume_save_steps", 2]
    proc = subprocess.Popen([PYTHON, str(ROOT / "train.py"), *map(str, args)], cwd=str(ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = out / "resume_state.ckpt"

    def mid_epoch_two():
        return state.exists() and read_metadata(str(state)).get("epoch") == 1 and \
            read_metadata(str(state)).get("batch_in_epoch", 0) > 0

    try:
        assert _wait_for(mid_epoch_two, 240), "run never reached the middle of epoch 2"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    # every checkpoint the killed run left is intact
    for name in os.listdir(out):
        if name.endswith(".ckpt"):
            ms.load_checkpoint(str(out / name))
    run("train.py", *args, "--resume", "auto")
    resumed = _metrics(out)
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    final = resumed[-1]
    assert final["optimizer_step"] == reference["optimizer_step"]
    assert final["lr"] == pytest.approx(reference["lr"], rel=1e-6)
    # same sample order; only the random crops of the resumed epoch differ
    assert abs(final["train_loss"] - reference["train_loss"]) < 0.15


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
    loss, finite, scale, _ = step(images, targets)
    assert not bool(finite.asnumpy()) and float(scale.asnumpy()) == 2.0 ** 120
    assert float(scaler.scale_value.asnumpy()) == 2.0 ** 119
    assert int(optimizer.step.asnumpy()) == 0
    for p in model.trainable_params():
        assert np.array_equal(p.asnumpy(), before[p.name]), p.name
        assert np.isfinite(p.asnumpy()).all()
    assert np.isfinite(loss.asnumpy())


def test_gradient_accumulation_equals_the_big_batch():
    images, targets = _fixed_batch(batch=8)

    def trained_params(accumulation):
        model = randomized_micro()
        model.set_train(True)
        optimizer = AdamW(model.trainable_params(), 0.05, model.no_weight_decay())
        step = TrainStep(model, optimizer, ms.Tensor(np.full(10, 1e-3, np.float32)), ms.amp.StaticLossScaler(1.0),
                         clip_value=1.0, accumulation=accumulation)
        if accumulation == 1:
            step(images, targets)
        else:
            step(images[:4], targets[:4])
            assert int(optimizer.step.asnumpy()) == 0
            step(images[4:], targets[4:])
        assert int(optimizer.step.asnumpy()) == 1
        return {p.name: p.asnumpy() for p in model.trainable_params()}

    big, accumulated = trained_params(1), trained_params(2)
    # Adam's first step is ~lr * sign(g): allow 1% of lr for float summation order
    assert max(np.abs(big[k] - accumulated[k]).max() for k in big) < 1e-5


def randomized_micro():
    from test_model import randomize

    return randomize(mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS), seed=3)


def test_fine_tune_from_another_resolution_window_and_class_count(trained, tmp_path):
    from mindswin.config import load_config
    from mindswin.engine.trainer import build_model

    source = os.path.join(trained[0], "swinv2_micro_window4_32-best.ckpt")  # 32 px, window 4, 4 classes
    three = tmp_path / "three"
    make_demo_dataset(str(three), num_classes=3, train_per_class=16, val_per_class=4, image_size=64)
    overrides = dict(model="swinv2_micro_window4_32", image_resize=64, window_size=8,
                     pretrained_window_sizes=[4, 4, 4], ckpt_path=source)
    model, report = build_model(load_config(overrides=overrides), 3, training=True)
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
    assert "classifier head re-initialised: checkpoint has 4 classes, model has 3" in result.stdout + result.stderr
    assert _metrics(tmp_path / "ft")[-1]["val_samples"] == 12


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.slow
def test_msrun_two_workers_match_a_single_process(data_dir, tmp_path):
    # deterministic inputs (full-image crops, no flip) so both runs see identical global batches
    common = [*BASE_ARGS, "--epoch_size", "2", "--scale", "[1.0,1.0]", "--ratio", "[1.0,1.0]", "--hflip", "0",
              "--data_dir", data_dir]
    run("train.py", *common, "--batch_size", "16", "--ckpt_save_dir", tmp_path / "single")
    result, worker_logs = _msrun("train.py", *common, "--batch_size", "8", "--ckpt_save_dir", tmp_path / "dist",
                                 logs=tmp_path / "logs")
    assert result.returncode == 0, worker_logs[-4000:]
    digests = sorted(line.split()[-1] for line in worker_logs.splitlines() if " weights sha1 " in line)
    assert len(digests) == 2 and digests[0] == digests[1]  # ranks end with identical weights
    single, dist = _metrics(tmp_path / "single"), _metrics(tmp_path / "dist")
    assert [r["val_samples"] for r in dist] == [36, 36]  # the whole val set, 18 per rank, all-reduced
    assert [r["optimizer_step"] for r in dist] == [r["optimizer_step"] for r in single]
    for a, b in zip(single, dist):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
        assert abs(a["val_top1"] - b["val_top1"]) <= 100 / 36 + 1e-9  # at most one sample flips

    # validate.py under msrun: sharded (18 + 18), all-reduced, same top-1 as training reported
    ckpt = tmp_path / "dist" / "swinv2_micro_window4_32-e0002.ckpt"
    result, worker_logs = _msrun("validate.py", "--data_dir", data_dir, "--ckpt_path", ckpt, "--batch_size", "8",
                                 "--output", tmp_path / "val.json", logs=tmp_path / "val_logs")
    assert result.returncode == 0, worker_logs[-4000:]
    summary = json.loads((tmp_path / "val.json").read_text())
    assert summary["num_samples"] == 36
    assert summary["top1"] == pytest.approx(dist[-1]["val_top1"], abs=1e-9)


def _msrun(script, *args, logs):
    env = dict(os.environ, PATH=f"{os.path.dirname(PYTHON)}:{os.environ.get('PATH', '')}")
    command = [os.path.join(os.path.dirname(PYTHON), "msrun"), "--worker_num", "2", "--local_worker_num", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "--log_dir", str(logs),
               "--join", "True", str(ROOT / script), *map(str, args), "--distribute", "True"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=600)
    return result, "".join(p.read_text() for p in sorted(logs.glob("worker_*.log")))


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
    onnx = run("export.py", "--ckpt_path", ckpt, "--file_format", "ONNX", "--export_file", target, check=False)
    assert onnx.returncode == 0 or "could not export this model as ONNX" in onnx.stderr


def test_ema_follows_the_weights():
    from mindswin.engine.train_step import EMA

    model = randomized_micro()
    twin = mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS)
    model.set_train(True)
    optimizer = AdamW(model.trainable_params(), 0.05, model.no_weight_decay())
    ema = EMA(model, twin, decay=0.9)
    step = TrainStep(model, optimizer, ms.Tensor(np.full(10, 1e-3, np.float32)), ms.amp.StaticLossScaler(1.0),
                     ema=ema)
    start = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    assert all(np.array_equal(a.asnumpy(), start[a.name]) for a in twin.get_parameters())
    step(*_fixed_batch())
    for avg, param in zip(twin.get_parameters(), model.trainable_params()):
        expected = 0.9 * start[param.name] + 0.1 * param.asnumpy()
        assert np.allclose(avg.asnumpy(), expected, atol=1e-7), param.name
    names = {p.name for p in twin.get_parameters()}
    assert not [n for n in names if "attn_mask" in n or "relative_" in n]
