"""Data parallel under msrun on 127.0.0.1: 2 workers match one process, and ZeRO-1 matches both (one
pair of launches, shared by this file's tests: the slow tier deals each file to one pytest-xdist worker)."""
import json
import re

import numpy as np
import pytest

from distributed_runs import (
    NATIVE_OPS_TRAIN,
    TWO_WORKERS,
    UNCLIPPED,
    ZERO_1,
    digest_lines,
    saved_state,
)
from helpers import (
    BASE_ARGS,
    DETERMINISTIC_DATA,
    kept_states,
    msrun,
    msrun_keeping_states,
    read_metrics,
    run,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.fixture(scope="module")
def two_worker_runs(data_dir, tmp_path_factory):
    """train.py on 2 msrun workers, unsharded and with ZeRO-1: {name: (ckpt_save_dir, worker logs)}; every
    resume state the runs wrote is kept in ``<name>_kept`` beside their ckpt_save_dir."""
    root = tmp_path_factory.mktemp("two_workers")
    runs = {}
    for name, extra in (("plain", []), ("zero1", ZERO_1)):
        result, logs = msrun_keeping_states("train.py", *TWO_WORKERS, *extra, "--data_dir", data_dir,
                                            "--ckpt_save_dir", root / name, logs=root / f"{name}_logs",
                                            kept=root / f"{name}_kept")
        assert result.returncode == 0, logs[-4000:]
        runs[name] = (root / name, logs)
    return runs


def test_msrun_two_workers_match_a_single_process(data_dir, tmp_path, two_worker_runs):
    run("train.py", *BASE_ARGS, *DETERMINISTIC_DATA, *UNCLIPPED, "--epoch_size", "2", "--data_dir", data_dir,
        "--batch_size", "16", "--ckpt_save_dir", tmp_path / "single")
    dist_dir, logs = two_worker_runs["plain"]
    digests = digest_lines(logs)
    assert len(digests) == 2 and digests[0] == digests[1]  # ranks end with identical weights and state
    single, dist = read_metrics(tmp_path / "single"), read_metrics(dist_dir)
    assert [r["val_samples"] for r in dist] == [36, 36]  # the whole val set, 18 per rank, all-reduced
    assert [r["optimizer_step"] for r in dist] == [r["optimizer_step"] for r in single]
    for a, b in zip(single, dist):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
        assert abs(a["val_top1"] - b["val_top1"]) <= 100 / 36 + 1e-9  # at most one sample flips

    # validate.py under msrun: sharded (18 + 18), all-reduced, same top-1 as training reported
    ckpt = dist_dir / "swinv2_micro_window4_32-e0002.ckpt"
    result, logs = msrun("validate.py", "--data_dir", data_dir, "--ckpt_path", ckpt, "--batch_size", "8",
                         "--output", tmp_path / "val.json", "--distribute", "True", logs=tmp_path / "val_logs")
    assert result.returncode == 0, logs[-4000:]
    summary = json.loads((tmp_path / "val.json").read_text())
    assert summary["num_samples"] == 36
    assert summary["top1"] == pytest.approx(dist[-1]["val_top1"], abs=1e-9)


def test_zero1_matches_unsharded_training_with_half_the_optimizer_state(two_worker_runs):
    (plain_dir, plain_logs), (zero_dir, zero_logs) = two_worker_runs["plain"], two_worker_runs["zero1"]
    # rank 0 holds half of the AdamW moments (each tensor's chunk is rounded up: at most 1 element each)
    held, full = map(int, re.search(r"ZeRO-1: .* (\d+) bytes on this rank \(unsharded: (\d+)", zero_logs).groups())
    plain, zero = saved_state(plain_dir), saved_state(zero_dir)
    moments = [name for name in plain if name.startswith("optimizer.exp_avg.")]
    assert full == 2 * sum(plain[name].nbytes for name in moments)
    assert full / 2 <= held <= full / 2 + 2 * 4 * len(moments)
    assert "ZeRO-1" not in plain_logs
    # the replicas agree, and the saved state has the unsharded layout: same names, full shapes
    digests = digest_lines(zero_logs)
    assert len(digests) == 2 and digests[0] == digests[1]
    assert {name: v.shape for name, v in zero.items()} == {name: v.shape for name, v in plain.items()}
    # Each gradient element is the same 2-term all-reduce, divided by 2 (exact), and AdamW and the
    # EMA are elementwise: sharding changes which rank computes an element, not its value.
    for name, value in plain.items():
        assert np.array_equal(zero[name], value), name
    assert [r["optimizer_step"] for r in read_metrics(zero_dir)] == [6, 12]
    fields = ("train_loss", "val_loss", "val_top1")
    assert [[r[k] for k in fields] for r in read_metrics(zero_dir)] == [[r[k] for k in fields]
                                                                       for r in read_metrics(plain_dir)]
    # grad_norm: the same gradients, their float32 squares summed in another order (per rank's
    # chunks, then across ranks): each sum of n squares is within (n + 2) * 2**-24 of the exact
    # norm, so the two within twice that (and the epoch means, averages of such values, too)
    n = sum(plain[name].size for name in moments)
    for sharded, unsharded in zip(read_metrics(zero_dir), read_metrics(plain_dir)):
        assert sharded["grad_norm"] > 0
        assert abs(sharded["grad_norm"] - unsharded["grad_norm"]) <= 2 * (n + 2) * 2.0 ** -24 * unsharded["grad_norm"]


def test_zero1_matches_unsharded_training_on_native_ops_too(data_dir, tmp_path, two_worker_runs):
    # the fused CPU kernels off: MindSpore's own ops, the code path of Ascend and GPU
    script = NATIVE_OPS_TRAIN
    states = {}
    for name, extra in (("plain", []), ("zero1", ZERO_1)):
        result, logs = msrun(script, *TWO_WORKERS, *extra, "--data_dir", data_dir, "--ckpt_save_dir", tmp_path / name,
                             logs=tmp_path / f"{name}_logs")
        assert result.returncode == 0, logs[-4000:]
        states[name] = saved_state(tmp_path / name)
    for name, value in states["plain"].items():
        assert np.array_equal(states["zero1"][name], value), name
    # the kernels really were off: other float ordering than the kernels-on run
    kernels_on = saved_state(two_worker_runs["plain"][0])
    assert not np.array_equal(kernels_on["model.head.weight"], states["plain"]["model.head.weight"])


def test_zero1_run_resumed_after_an_epoch_ends_as_the_uninterrupted_one(data_dir, tmp_path, two_worker_runs):
    """ZeRO-1 resumed from the state the uninterrupted run saved at the end of epoch 1: each rank gets its
    chunk of rank 0's full moments back and the run ends bit for bit as if never stopped.

    Was ``test_zero1_run_killed_after_an_epoch_resumes_to_the_uninterrupted_result``, which killed a second
    launch after epoch 1 (a kill is now in ``test_official_augmentation_two_workers_killed_mid_epoch_resume_bitwise``,
    with ZeRO-1, in the middle of an epoch).
    """
    zero_dir, _ = two_worker_runs["zero1"]
    position, state = next((p, path) for p, path in kept_states(zero_dir.parent / "zero1_kept")
                           if p.epoch == 1 and p.batch_in_epoch == 0)
    out = tmp_path / "resumed"
    out.mkdir()
    # the first epoch's line, as the interrupted run's folder would hold it
    (out / "metrics.jsonl").write_text((zero_dir / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
    result, logs = msrun("train.py", *TWO_WORKERS, *ZERO_1, "--data_dir", data_dir, "--ckpt_save_dir", out,
                         "--resume", state, logs=tmp_path / "resumed_logs")
    assert result.returncode == 0, logs[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} starts at epoch 1 batch 0 optimizer step 6" in logs
    uninterrupted, resumed = saved_state(zero_dir), saved_state(out)
    for name, value in uninterrupted.items():
        assert np.array_equal(value, resumed[name]), name
    fields = ("epoch", "optimizer_step", "train_loss", "val_loss", "val_top1")
    assert [[r[k] for k in fields] for r in read_metrics(out)] == [[r[k] for k in fields]
                                                                   for r in read_metrics(zero_dir)]

