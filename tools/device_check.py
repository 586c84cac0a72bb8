"""Device check: train the micro and tiny models on an accelerator and compare the losses with the CPU.

``python tools/device_check.py [--device auto|Ascend|GPU|CPU] [--models micro,tiny] [--work DIR]``

For each model it runs ``train.py`` (the project's own entry point) on the built-in shapes data
(:func:`mindswin.data.make_demo_dataset`) with AMP O2, ``dataset_sink_mode True`` and one log line
per step, and prints one verdict line per check:

* ``train``: the run compiles and trains every step with a finite loss;
* ``cpu``: its per-step losses equal a CPU run of the same steps (same seed, data, O2) within the
  bound below;
* ``resume``: a second run SIGKILLed in the middle of an epoch (``resume_save_steps 1``) and
  continued with ``--resume auto`` resumes mid-epoch and its losses from there on equal the
  uninterrupted run's within the bound.

Exit status 0 when every check passes, 1 otherwise.

The bound. AMP O2 rounds each matmul's output to float16 (unit roundoff ``u = 2**-11``; bfloat16:
``2**-8``); a 910A also computes the float32 matmuls in float16 (``allow_fp32_to_fp16``). A loss
passes through ``depth`` such roundings one after another (6 matmuls per block, plus the stem,
patch merging and head), and independent roundings add up as a random walk, so the loss of the
first step differs by about ``sqrt(depth) * u`` relative. Every step's update then carries the
previous steps' difference into the weights, so the difference may grow by as much again per
step: step ``t`` (0-based) is allowed ``SAFETY * sqrt(depth) * u * (t + 1)`` relative, with
``SAFETY = 4`` for the random walk's tails and Adam's normalisation (its first updates are about
``lr * sign(g)``, which a small difference in a near-zero gradient can flip). The losses are
read from the log lines, printed with 4 decimals, so ``5e-5`` absolute is added for the printing.
The CPU runs both sides in the same float16 arithmetic (``--device CPU``): there the bound is 0,
the losses must be equal as printed (MindSpore's CPU backend is deterministic, and a resumed CPU
run is bitwise equal to the uninterrupted one, ``tests/test_train.py``).

What it cannot tell: a bound this wide lets through differences of a few percent at the last
step, so ``cpu`` catches a broken kernel or cast, not a small bias; ``resume`` compares with the
same device's uninterrupted run, which is as close as that device's own run-to-run determinism.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
SAFETY = 4.0
# the log line prints the loss with %.4f: half a unit of the last digit
PRINTED = 5e-5
UNIT_ROUNDOFF = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 2.0 ** -24}
# matmuls a loss passes through, one after another: 6 per block (qkv, q k^T, attention x v, proj,
# fc1, fc2), plus the patch projection, one per patch merging and the head
_MATMULS_PER_BLOCK = 6


@dataclass(frozen=True)
class Model:
    """A model the check trains, at the batch and image size it trains at."""

    name: str
    depths: Tuple[int, ...]
    image_size: int
    batch_size: int

    @property
    def depth(self) -> int:
        """The float16 roundings one after another on the way to the loss."""
        return _MATMULS_PER_BLOCK * sum(self.depths) + 1 + (len(self.depths) - 1) + 1


MODELS: Dict[str, Model] = {
    "micro": Model("swinv2_micro_window4_32", (2, 2, 2), 32, 8),
    "tiny": Model("swinv2_tiny_window8_256", (2, 2, 6, 2), 256, 2),
}
# per model: 3 epochs of 4 steps (a kill in epoch 2 leaves more than an epoch to resume)
STEPS_PER_EPOCH = 4
EPOCHS = 3
_LOG_LINE = re.compile(r"epoch (\d+)/\d+ step (\d+)/\d+ loss (\S+)")


def loss_bound(model: Model, step: int, dtype: str = "float16") -> float:
    """Relative difference allowed between two runs' losses at 0-based ``step`` (module docstring)."""
    return SAFETY * math.sqrt(model.depth) * UNIT_ROUNDOFF[dtype] * (step + 1)


def within_bound(model: Model, step: int, loss: float, reference: float, exact: bool,
                 dtype: str = "float16") -> bool:
    """Whether ``loss`` equals ``reference`` at ``step``: as printed when ``exact``, else within the bound."""
    if exact:
        return loss == reference
    return abs(loss - reference) <= loss_bound(model, step, dtype) * abs(reference) + PRINTED


def parse_losses(stdout: str) -> Dict[Tuple[int, int], float]:
    """``{(epoch, step): loss}`` (1-based, as printed) from train.py's log lines."""
    return {(int(e), int(s)): float(v) for e, s, v in _LOG_LINE.findall(stdout)}


def detect_device() -> str:
    """The accelerator the installed MindSpore targets (Ascend or GPU build), else CPU."""
    import mindspore as ms

    return ms.get_context("device_target")


def train_args(model: Model, data: Path, device: str, out: Path) -> List[str]:
    """train.py's arguments: deterministic data, AMP O2, the data sink, a log line and a resume state per step."""
    return ["--model", model.name, "--data_dir", str(data), "--image_resize", str(model.image_size),
            "--batch_size", str(model.batch_size), "--epoch_size", str(EPOCHS), "--warmup_epochs", "1",
            "--base_lr", "1e-3", "--lr_base_batch", str(model.batch_size), "--amp_level", "O2",
            "--amp_dtype", "float16", "--dataset_sink_mode", "True", "--device_target", device,
            "--auto_augment", "", "--mixup", "0", "--cutmix", "0", "--re_prob", "0", "--crop_pct", "1.0",
            "--scale", "[1.0,1.0]", "--ratio", "[1.0,1.0]", "--hflip", "0", "--drop_path_rate", "0.0",
            "--label_smoothing", "0.1", "--num_parallel_workers", "1", "--val_while_train", "False",
            "--tensorboard", "False", "--log_interval", "1", "--resume_save_steps", "1", "--seed", "7",
            "--ckpt_save_dir", str(out)]


def _environment() -> Dict[str, str]:
    return dict(os.environ, PYTHONUNBUFFERED="1")


def run_train(args: Sequence[str]) -> subprocess.CompletedProcess:
    """train.py to its end (output captured)."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=_environment(),
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run_killed_mid_epoch(args: Sequence[str], epoch: int = 2) -> Tuple[str, bool]:
    """train.py SIGKILLed once it logs step 2 of 1-based ``epoch``; returns its output and whether it was killed."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=_environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, killed = [], False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        found = _LOG_LINE.search(line)
        if found and int(found.group(1)) == epoch and int(found.group(2)) >= 2:
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
    proc.wait()
    return "".join(lines), killed


@dataclass
class Verdict:
    """One check's outcome and its line."""

    passed: bool
    line: str


def _compare(model: Model, losses: Dict[Tuple[int, int], float], reference: Dict[Tuple[int, int], float],
             exact: bool) -> Optional[str]:
    """None when every step of ``losses`` matches ``reference``, else what differs first."""
    order = sorted(reference)
    for key in sorted(losses):
        if key not in reference:
            return f"step {key} is not in the reference run"
        step = order.index(key)
        if not within_bound(model, step, losses[key], reference[key], exact):
            allowed = "equal as printed" if exact else f"bound {loss_bound(model, step):.2e} relative"
            return f"epoch {key[0]} step {key[1]}: {losses[key]:.4f} vs {reference[key]:.4f} ({allowed})"
    return None


def check_model(model: Model, device: str, work: Path) -> List[Verdict]:
    """The three checks of one model (module docstring)."""
    from mindswin.data import make_demo_dataset

    data = work / f"data_{model.image_size}"
    if not data.exists():
        per_class = STEPS_PER_EPOCH * model.batch_size // 4
        make_demo_dataset(str(data), num_classes=4, train_per_class=per_class, val_per_class=1, image_size=64)
    exact = device == "CPU"
    verdicts = []
    straight = run_train(train_args(model, data, device, work / f"{model.name}_{device}"))
    losses = parse_losses(straight.stdout)
    expected = EPOCHS * STEPS_PER_EPOCH
    trained = straight.returncode == 0 and len(losses) == expected and all(map(math.isfinite, losses.values()))
    last = straight.stdout.strip().splitlines()[-1:] or [""]
    verdicts.append(Verdict(trained, f"{model.name} train on {device}: " + (
        f"{len(losses)} steps, loss {losses[min(losses)]:.4f} -> {losses[max(losses)]:.4f}" if trained else
        f"exit {straight.returncode}, {len(losses)} of {expected} steps logged; last line: {last[0][:200]}")))
    if not trained:
        return verdicts
    # a run of its own also for --device CPU: there the check is that two CPU runs are equal
    cpu = run_train(train_args(model, data, "CPU", work / f"{model.name}_CPU_reference"))
    reference = parse_losses(cpu.stdout)
    if len(reference) != expected:
        verdicts.append(Verdict(False, f"{model.name} cpu: the CPU reference run failed ({len(reference)} steps)"))
    else:
        problem = _compare(model, losses, reference, exact)
        verdicts.append(Verdict(problem is None, f"{model.name} {device} vs CPU: " + (
            problem or f"{expected} steps within {'equality' if exact else 'the bound'} (last step: "
                       f"{losses[max(losses)]:.4f} vs {reference[max(reference)]:.4f})")))
    resumed_dir = work / f"{model.name}_{device}_killed"
    killed_out, killed = run_killed_mid_epoch(train_args(model, data, device, resumed_dir))
    if not killed:
        verdicts.append(Verdict(False, f"{model.name} resume on {device}: the run ended before it reached "
                                       f"the middle of epoch 2; output tail: {killed_out[-200:]!r}"))
        return verdicts
    resumed = run_train([*train_args(model, data, device, resumed_dir), "--resume", "auto"])
    after = parse_losses(resumed.stdout)
    first = min(after) if after else None
    mid_epoch = first is not None and first[1] > 1
    problem = None if resumed.returncode == 0 else f"exit {resumed.returncode}"
    problem = problem or (None if mid_epoch else f"resumed at {first}, not in the middle of an epoch")
    problem = problem or _compare(model, after, losses, exact)
    verdicts.append(Verdict(problem is None, f"{model.name} kill and resume on {device}: " + (
        problem or f"resumed at epoch {first[0]} step {first[1]}, {len(after)} steps equal the "
                   f"uninterrupted run's {'exactly' if exact else 'within the bound'}")))
    return verdicts


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=("auto", "Ascend", "GPU", "CPU"),
                        help="the device to check (auto: the installed MindSpore's target; CPU: self-check)")
    parser.add_argument("--models", default="micro,tiny",
                        help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--work", default=None, help="folder for data and runs (a temporary one if unset, removed)")
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.models.split(",") if name.strip()]
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        parser.error(f"--models: {', '.join(unknown) or 'none given'}; choose from {', '.join(MODELS)}")
    args.models = [MODELS[name] for name in names]
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    device = detect_device() if args.device == "auto" else args.device
    if device == "CPU":
        print("device CPU: self-check (CPU against CPU, losses must be equal); no accelerator checked")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="mindswin-device-check-"))
    work.mkdir(parents=True, exist_ok=True)
    failed = 0
    try:
        for model in args.models:
            for verdict in check_model(model, device, work):
                print(f"{'PASS' if verdict.passed else 'FAIL'} {verdict.line}", flush=True)
                failed += not verdict.passed
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
