"""What several test modules share: the micro model and its random weights, the PyTorch reference
cases, running the entry scripts (also under msrun), killing and resuming runs, and test data
that real datasets contain (damaged image files, event files)."""
from __future__ import annotations

import contextlib
import fcntl
import glob
import io
import json
import logging
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import mindspore as ms
import numpy as np
import pytest
import yaml
from mindspore import ops
from PIL import Image

import mindswin

ROOT = Path(__file__).resolve().parents[1]

# A model small enough to compile in seconds that still has shifted windows, patch merging
# and a window clipped at the last stage.
MICRO = dict(img_size=32, patch_size=2, embed_dim=24, depths=[1, 2, 1], num_heads=[2, 4, 8], window_size=4,
             num_classes=5)
MICRO_MS = dict(MICRO, pretrained_window_sizes=[0, 0, 0])

# The official Swin V2 variants (the public contract); list_models() adds CPU variants.
OFFICIAL_VARIANTS = (
    "swinv2_tiny_window8_256", "swinv2_tiny_window16_256", "swinv2_small_window8_256",
    "swinv2_small_window16_256", "swinv2_base_window8_256", "swinv2_base_window16_256",
    "swinv2_base_window12_192", "swinv2_base_window12to16_192to256", "swinv2_base_window12to24_192to384",
    "swinv2_large_window12_192", "swinv2_large_window12to16_192to256", "swinv2_large_window12to24_192to384",
)
# The paper's two largest, registered from the paper (no timm model, no published classification weights).
PAPER_VARIANTS = ("swinv2_huge_window12_192", "swinv2_giant_window12_192")

REFERENCE_CASES = [
    {"name": "micro", "model": "swinv2_tiny_window8_256", "kwargs": MICRO, "batch": 3,
     "layouts": ["timm", "official", "mmpretrain", "hf"]},
    {"name": "tiny8", "model": "swinv2_tiny_window8_256", "batch": 2, "layouts": ["timm", "official"]},
    {"name": "tiny16", "model": "swinv2_tiny_window16_256", "batch": 2, "seed": 3, "layouts": ["timm"]},
    {"name": "base12to16", "model": "swinv2_base_window12to16_192to256", "batch": 1, "seed": 5, "layouts": ["timm"]},
    # feature maps the window does not divide, padded (timm pads them in SwinTransformerV2Block._attn):
    # 40 px gives stage maps 20, 10 (shifted blocks, padded to 12) and 5 (padded to 8); window 3 on
    # 32 px pads 16, 8 and 4 to 18, 9 and 6
    {"name": "micro_pad40", "model": "swinv2_tiny_window8_256", "kwargs": dict(MICRO, img_size=40), "batch": 2,
     "seed": 11, "layouts": ["timm"]},
    # odd maps before a patch merging, padded by one row and column (timm's PatchMerging): 36 px gives
    # 18, 9 and 5, the last two also padded to the window (12 and 8)
    {"name": "micro_odd36", "model": "swinv2_tiny_window8_256", "kwargs": dict(MICRO, img_size=36), "batch": 2,
     "seed": 13, "layouts": ["timm"]},
    {"name": "micro_window3", "model": "swinv2_tiny_window8_256", "kwargs": dict(MICRO, window_size=3), "batch": 2,
     "seed": 12, "layouts": ["timm"]},
    {"name": "tiny8_to_384w12", "model": "swinv2_tiny_window8_256", "batch": 1, "weights_from": "tiny8",
     "kwargs": {"img_size": 384, "window_size": 12, "pretrained_window_sizes": [8, 8, 8, 8]}, "layouts": []},
]


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Any]) -> Any:
    """``build(folder)`` once per test session, whatever the number of pytest-xdist workers.

    The first worker to ask builds it under a lock in the session's shared temporary folder;
    the others wait for it and get what it returned (JSON). Without xdist, a plain session fixture.
    ``$MINDSWIN_TEST_SHARED`` names a folder that replaces the session's, so that the sessions of
    one source tree share what they build (.ci/run's two tiers: one folder, removed at its end).
    """
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # one folder per worker below the session's
    root = Path(os.environ.get("MINDSWIN_TEST_SHARED") or root)
    folder, done = root / name, root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            done.write_text(json.dumps(build(folder)))
        return json.loads(done.read_text())


def torch_python() -> Path:
    return Path(os.environ.get("MINDSWIN_TORCH_PYTHON", ROOT / ".venv-torchref" / "bin" / "python"))


def require_torch_python() -> Path:
    """The reference venv's python; without it the test skips, or fails under MINDSWIN_REQUIRE_REFERENCE (CI)."""
    python = torch_python()
    if not python.exists():
        message = (f"torch reference venv not found at {python}; build it with "
                   "tests/reference/setup_torch_reference.sh")
        if os.environ.get("MINDSWIN_REQUIRE_REFERENCE"):
            pytest.fail(message)
        pytest.skip(message)
    return python


def randomize(model, seed=0):
    """Non-trivial weights: nonzero post-norms, logit scales on both sides of the clamp."""
    rng = np.random.default_rng(seed)
    for p in model.get_parameters():
        if "logit_scale" in p.name:
            value = rng.uniform(math.log(10) - 1, math.log(100) + 1, p.shape)
        elif p.name.endswith("norm1.weight") or p.name.endswith("norm2.weight") or "norm.weight" in p.name:
            value = 1 + 0.2 * rng.standard_normal(p.shape)
        else:
            value = 0.05 * rng.standard_normal(p.shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    return model


def micro(**kwargs):
    """The test micro model (shifted windows, patch merging, a clipped last-stage window)."""
    return mindswin.create_model("swinv2_tiny_window8_256", **{**MICRO_MS, **kwargs})


def loss_and_grads(model, x, y):
    """Cross-entropy of ``model(x)`` and its gradients w.r.t. the trainable parameters."""
    def loss_fn(inputs, labels):
        return ops.cross_entropy(model(inputs), labels)

    return ms.value_and_grad(loss_fn, None, model.trainable_params())(x, y)


PYTHON = sys.executable
# train.py arguments of a quick deterministic-enough CPU run of the 32-px demo model, with EMA.
BASE_ARGS = ["--model", "swinv2_micro_window4_32", "--batch_size", "16", "--epoch_size", "3", "--warmup_epochs", "1",
             "--base_lr", "2e-3", "--lr_base_batch", "16", "--amp_level", "O0", "--auto_augment", "", "--mixup", "0",
             "--cutmix", "0", "--re_prob", "0", "--crop_pct", "1.0", "--log_interval", "2", "--keep_checkpoint_max",
             "2", "--drop_path_rate", "0.0", "--num_parallel_workers", "1", "--ema", "True", "--ema_decay", "0.9"]
# The official recipe's training randomness on top of BASE_ARGS (which has EMA): RandAugment, random
# erasing 0.25 (noise), mixup 0.8 / CutMix 1.0 with label smoothing, stochastic depth.
OFFICIAL_AUGMENTATION = ["--auto_augment", "rand-m9-mstd0.5-inc1", "--re_prob", "0.25", "--mixup", "0.8",
                         "--cutmix", "1.0", "--label_smoothing", "0.1", "--drop_path_rate", "0.2"]
# Whole-image crops and no flips: every run sees the same pixels in the same order.
DETERMINISTIC_DATA = ["--scale", "[1.0,1.0]", "--ratio", "[1.0,1.0]", "--hflip", "0"]
NOISE = ("Traceback", "Exception ignored", "[WARNING]", "DeprecationWarning", "FutureWarning")


def mid_epoch(state: Path, epoch: int):
    """Predicate: ``state`` (a resume state) is saved in the middle of 0-based ``epoch``."""
    from mindswin.engine.state import read_position

    def holds() -> bool:
        if not state.exists():
            return False
        position = read_position(str(state))
        return position.epoch == epoch and position.batch_in_epoch > 0

    return holds


def killed_mid_epoch_and_resumed(args, tmp_path: Path, epoch: int = 1):
    """train.py ``args`` straight through, and again SIGKILLed in the middle of 0-based ``epoch``
    (``args`` save ``resume_save_steps``) and continued with ``--resume auto``.

    Returns:
        ``(straight ckpt_save_dir, resumed ckpt_save_dir, the resumed run's stdout)``.
    """
    straight, out = tmp_path / "straight", tmp_path / "killed"
    run("train.py", *args, "--ckpt_save_dir", straight)
    proc = start("train.py", *args, "--ckpt_save_dir", out)
    try:
        assert wait_for(mid_epoch(out / "resume_state.ckpt", epoch), 300), f"run never reached the middle of " \
                                                                            f"epoch {epoch + 1}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    for name in os.listdir(out):  # every checkpoint the killed run left is intact
        if name.endswith(".ckpt"):
            ms.load_checkpoint(str(out / name))
    return straight, out, run("train.py", *args, "--resume", "auto", "--ckpt_save_dir", out).stdout


def assert_same_state(first: Path, second: Path) -> None:
    """The resume states in two ckpt_save_dirs hold bitwise equal tensors (weights, EMA, optimizer, scaler)."""
    from mindswin.checkpoint.native import META_KEY

    a, b = ms.load_checkpoint(str(first / "resume_state.ckpt")), ms.load_checkpoint(str(second / "resume_state.ckpt"))
    assert set(a) == set(b)
    for name, value in a.items():
        if name != META_KEY:
            assert np.array_equal(value.asnumpy(), b[name].asnumpy()), name


# --- the two tiers ---------------------------------------------------------------------------------------------
# The fast tier (README's test command) is ``-m "not slow and not distributed"``; .ci/run also runs the rest.
# What makes a test slow is checked where it happens: an msrun launch needs ``distributed``, a run killed
# and resumed or more than FAST_TIER_EPOCHS epochs of train.py need ``slow``.
FAST_TIER_EPOCHS = 3
_current_test: Optional[pytest.Item] = None


def set_current_test(item: Optional[pytest.Item]) -> None:
    """Called by conftest before each test's set-up (fixtures included): the test the helpers work for."""
    global _current_test
    _current_test = item


def require_marker(marker: str, reason: str) -> None:
    """Fail the running test unless it (or its module or class) is marked ``marker``.

    Args:
        marker: ``slow`` or ``distributed``.
        reason: What the test is doing that belongs to that tier, for the message.
    """
    if _current_test is not None and _current_test.get_closest_marker(marker) is None:
        pytest.fail(f"{_current_test.nodeid} {reason} but is not marked @pytest.mark.{marker}: the fast tier "
                    f"(-m 'not slow and not distributed') must not run it", pytrace=False)


def _epochs_trained(args, stdout: str) -> int:
    """Epochs a finished train.py run trained: its resolved ``epoch_size`` less the epoch it resumed at."""
    values = [str(a) for a in args]
    if "--ckpt_save_dir" not in values:
        return 0
    saved = Path(values[values.index("--ckpt_save_dir") + 1]) / "config.yaml"
    if not saved.exists():
        return 0
    epoch_size = yaml.safe_load(saved.read_text()).get("epoch_size", 0)
    resumed = re.search(r"resumed from .*: epoch (\d+), batch", stdout)
    return epoch_size - (int(resumed.group(1)) if resumed else 0)


def start(script, *args) -> subprocess.Popen:
    """Start an entry script in its own process (output discarded), to be killed: a slow test's work."""
    require_marker("slow", "starts a run to kill it")
    return subprocess.Popen([PYTHON, str(ROOT / script), *map(str, args)], cwd=str(ROOT), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def run(script, *args, check=True, env=None, cwd=ROOT, **popen):
    """Run one of the entry scripts (``train.py``...) in a fresh process (in ``cwd``)."""
    with subprocess.Popen([PYTHON, str(ROOT / script), *map(str, args)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=str(cwd), env=env, **popen) as process:
        stdout, stderr = process.communicate()
    result = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    # MindSpore's worker processes leave files in /tmp that the run removes at its end (data/dataset.py)
    assert not glob.glob(f"/tmp/dataset_ipc_{process.pid}_*"), f"{script} left MindSpore's IPC files in /tmp"
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    if script == "train.py" and result.returncode == 0:
        epochs = _epochs_trained(args, result.stdout)
        if epochs > FAST_TIER_EPOCHS:
            require_marker("slow", f"trains {epochs} epochs (more than {FAST_TIER_EPOCHS})")
    return result


# Entry scripts and the command each one runs (mindswin/cli.py).
COMMANDS = {"train.py": "run_train", "validate.py": "run_validate", "infer.py": "run_infer",
            "export.py": "run_export", "tools/convert_weights.py": "run_convert_weights"}


def _reached_the_runtime(*args, **kwargs):
    raise AssertionError("the command got past its checks to the runtime set-up (device, threads, seeds): "
                         "run this case in its own process with run(...)")


def _one_device(config):
    """A stand-in for ``setup_runtime``: one device, and nothing of this process changed."""
    from mindswin.engine.runtime import Runtime

    return Runtime()


def cli(script: str, *args, cwd=ROOT, past_runtime: bool = False) -> subprocess.CompletedProcess:
    """Run the command behind an entry script in this process, for a mistake it refuses before it starts.

    The command frame (``mindswin.cli.command``) is what turns a mistake into one ``error:`` line
    and exit status 2 in the scripts too; each script also runs for real in its own process in
    other tests. The run may not reach the runtime set-up (that sizes this process's thread pool
    once and for all) unless ``past_runtime``: then the set-up is a stand-in that changes nothing
    (one device; no device, thread or seed setting), for a mistake found after it (in the data, a
    checkpoint, an input) without a process of its own. The root logger and the working directory
    are put back afterwards.

    Returns:
        A ``CompletedProcess`` with the exit status and what the command printed.
    """
    import mindswin.cli
    import mindswin.engine.trainer

    stdout, stderr = io.StringIO(), io.StringIO()
    handlers, level, old_cwd = logging.root.handlers[:], logging.root.level, os.getcwd()
    patches = [(module, "setup_runtime", module.setup_runtime) for module in (mindswin.cli,
                                                                                       mindswin.engine.trainer)]
    try:
        for module, name, _ in patches:
            setattr(module, name, _one_device if past_runtime else _reached_the_runtime)
        os.chdir(str(cwd))
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                returncode = getattr(mindswin.cli, COMMANDS[script])([str(a) for a in args])
            except SystemExit as exit_:  # --help
                returncode = exit_.code or 0
    finally:
        for module, name, original in patches:
            setattr(module, name, original)
        os.chdir(old_cwd)
        for handler in set(logging.root.handlers) - set(handlers):  # a run's log file
            handler.close()
        logging.root.handlers[:] = handlers
        logging.root.setLevel(level)
    return subprocess.CompletedProcess([script, *map(str, args)], returncode, stdout.getvalue(), stderr.getvalue())


def register_published(monkeypatch, weights):
    """Add ``weights`` (a ``PretrainedWeights`` of a test model) to the published-weights table for one test,
    as its model's default; returns it."""
    import mindswin.pretrained as pretrained
    from mindswin.models import published

    monkeypatch.setattr(published, "PRETRAINED", published.PRETRAINED + (weights,))
    monkeypatch.setattr(pretrained, "PRETRAINED", published.PRETRAINED)
    monkeypatch.setitem(pretrained._BY_NAME, weights.name, weights)
    monkeypatch.setitem(published.DEFAULT_TAGS, weights.model, weights.tag)
    return weights


def read_metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def msrun(script, *args, logs, workers=2, local_workers=None, node_rank=None, port=None, wait=True):
    """Launch ``script`` under msrun on 127.0.0.1; returns (process result, concatenated worker logs).

    ``local_workers`` < ``workers`` with a ``node_rank`` makes this one "node" of several
    sharing ``port``; with ``wait=False`` the Popen is returned instead, to start the other.
    """
    require_marker("distributed", "launches msrun")
    env = dict(os.environ, PATH=f"{os.path.dirname(PYTHON)}:{os.environ.get('PATH', '')}")
    command = [os.path.join(os.path.dirname(PYTHON), "msrun"), "--worker_num", str(workers), "--local_worker_num",
               str(local_workers or workers), "--master_addr", "127.0.0.1", "--master_port", str(port or free_port()),
               "--log_dir", str(logs), "--join", "True"]
    if node_rank is not None:
        command += ["--node_rank", str(node_rank)]
    command += [str(ROOT / script) if not os.path.isabs(str(script)) else str(script), *map(str, args)]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=str(ROOT),
                                env=env)
    result = subprocess.run(command, capture_output=True, text=True, cwd=str(ROOT), env=env, timeout=1200)
    return result, worker_logs(logs)


def _keep_new_state(state: Path, kept: Path, inodes: set) -> None:
    """Hard-link ``state`` into ``kept`` if this version of it is not kept yet.

    A run replaces its resume state atomically (a new file renamed over the old): a hard link keeps
    the version it names complete and unchanged after the run has moved on.
    """
    link = kept / f"{len(inodes):03d}.ckpt"
    try:
        os.link(state, link)
    except FileNotFoundError:  # not written yet, or replaced between the check and the link
        return
    inode = link.stat().st_ino
    if inode in inodes:
        link.unlink()
    else:
        inodes.add(inode)


def _keep_states_until_done(process: subprocess.Popen, args, kept: Path, timeout: float = 1200) -> None:
    """While ``process`` (a run given ``args``) runs, keep every resume state it writes in ``kept``."""
    values = [str(a) for a in args]
    state = Path(values[values.index("--ckpt_save_dir") + 1]) / "resume_state.ckpt"
    kept.mkdir(parents=True)
    inodes: set = set()
    deadline = time.time() + timeout
    while process.poll() is None and time.time() < deadline:
        _keep_new_state(state, kept, inodes)
        time.sleep(0.02)  # a state lives for resume_save_steps steps (or an epoch), each well over 0.1 s here
    if process.poll() is None:
        process.kill()
    process.wait()
    _keep_new_state(state, kept, inodes)


def msrun_keeping_states(script, *args, logs, kept: Path) -> Tuple[subprocess.CompletedProcess, str]:
    """:func:`msrun` that also keeps every resume state the run writes, so that another launch can
    resume from any of them (as a run killed just after writing it would): one launch serves as the
    uninterrupted run and as the run interrupted at each of its save points.

    Returns:
        (process result, concatenated worker logs); the states are in ``kept`` (:func:`kept_states`).
    """
    launcher = msrun(script, *args, logs=logs, wait=False)
    output: List[str] = []
    reader = threading.Thread(target=lambda: output.append(launcher.stdout.read()), daemon=True)
    reader.start()
    _keep_states_until_done(launcher, args, kept)
    reader.join(timeout=60)
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, "".join(output)), worker_logs(logs)


def run_keeping_states(*args, kept: Path) -> subprocess.CompletedProcess:
    """``run("train.py", *args)`` that also keeps every resume state the run writes (see
    :func:`msrun_keeping_states`)."""
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([PYTHON, str(ROOT / "train.py"), *map(str, args)], cwd=str(ROOT), stdout=stdout,
                                   stderr=stderr, text=True)
        _keep_states_until_done(process, args, kept)
        stdout.seek(0)
        stderr.seek(0)
        result = subprocess.CompletedProcess(process.args, process.returncode, stdout.read(), stderr.read())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def resumed_from_a_kept_state(args, tmp_path: Path, where: Callable[[Any], bool]):
    """train.py ``args`` straight through keeping its resume states, then again from the first state
    ``where(position)`` picks, in a folder of its own that holds the metrics lines written before it.

    What a run killed just after saving that state resumes from; a real SIGKILL, and the files it
    leaves, are :func:`killed_mid_epoch_and_resumed`'s.

    Returns:
        ``(straight ckpt_save_dir, resumed ckpt_save_dir, the state resumed from, the resumed run's stdout)``.
    """
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_keeping_states(*args, "--ckpt_save_dir", straight, kept=tmp_path / "kept")
    position, state = next((p, path) for p, path in kept_states(tmp_path / "kept") if where(p))
    resumed.mkdir()
    lines = (straight / "metrics.jsonl").read_text().splitlines(keepends=True)
    (resumed / "metrics.jsonl").write_text("".join(lines[:position.epoch]))
    log = run("train.py", *args, "--resume", state, "--ckpt_save_dir", resumed).stdout
    return straight, resumed, state, log


def kept_states(kept: Path) -> List[Tuple[Any, Path]]:
    """``[(RunPosition, path)]`` of the states :func:`msrun_keeping_states` kept, in the order written."""
    from mindswin.engine.state import read_position

    return [(read_position(str(path)), path) for path in sorted(kept.glob("*.ckpt"))]


def wait_for(predicate, timeout: float) -> bool:
    """Poll ``predicate`` every 50 ms until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def kill_processes_mentioning(text: str) -> int:
    """SIGKILL every process whose command line contains ``text``; returns how many.

    msrun's workers do not stay in the launcher's process group, so a crashed job is
    emulated by killing each process that names the job's own output directory.
    """
    killed = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


def worker_logs(logs) -> str:
    return "".join(p.read_text() for p in sorted(Path(logs).glob("worker_*.log")))


def write_header_damaged_jpegs(folder: Path, count: int, seed: int = 0, prefix: str = "damaged") -> List[Path]:
    """JPEGs with 1 to 5 random bytes changed between the start marker and the start of scan.

    The bytes land in the quantisation and Huffman tables and the frame header: Pillow's header
    check passes most of them, and MindSpore's ``vision.Decode`` dies on about one in five
    with SIGSEGV or SIGFPE (measured on 60 such files: 13 signals, 18 exceptions, 29 decoded).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        data = bytearray(buffer.getvalue())
        start_of_scan = data.find(b"\xff\xda")
        for _ in range(rng.integers(1, 6)):
            data[rng.integers(2, start_of_scan)] = rng.integers(0, 256)
        path = folder / f"{prefix}{i:03d}.jpg"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths


def _records(path: str):
    """The payloads of a TFRecord file (length, length CRC, data, data CRC)."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        yield data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4


def read_events(directory) -> Tuple[Dict[str, List[Tuple[int, float]]], Dict[str, List[Tuple[int, bytes]]]]:
    """``({tag: [(step, value)]}, {tag: [(step, encoded image)]})`` of the TensorBoard event files in ``directory``.

    Files are read in the order they were written, and TensorBoard's purge rule applied: a
    ``SessionLog.START`` at step N (a resumed writer's ``purge_step``) drops every earlier point
    at step N or later.
    """
    from tensorboardX.proto import event_pb2

    files = []
    for path in glob.glob(os.path.join(str(directory), "events.out.tfevents.*")):
        events = []
        for record in _records(path):
            event = event_pb2.Event()
            event.ParseFromString(record)
            events.append(event)
        files.append((events[0].wall_time if events else 0.0, events))
    scalars: Dict[str, List[Tuple[int, float]]] = {}
    images: Dict[str, List[Tuple[int, bytes]]] = {}
    for _, events in sorted(files, key=lambda f: f[0]):
        for event in events:
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for series in (*scalars.values(), *images.values()):
                    series[:] = [point for point in series if point[0] < event.step]
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append((event.step, value.image.encoded_image_string))
                else:
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars, images
