"""Data parallel under msrun on 127.0.0.1: 2 workers, and two single-worker "nodes"."""
import json
import re
import socket
import time

import mindspore as ms
import numpy as np
import pytest

from mindswin.checkpoint.native import META_KEY
from mindswin.engine.state import read_position

from helpers import (
    BASE_ARGS,
    DETERMINISTIC_DATA,
    OFFICIAL_AUGMENTATION,
    ROOT,
    free_port,
    kill_processes_mentioning,
    mid_epoch,
    msrun,
    read_metrics,
    run,
    wait_for,
    worker_logs,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _digest_lines(logs: str):
    """``rank R weights sha1 W state sha1 S`` lines printed by every rank at the end of train.py."""
    return sorted(line.split(" weights sha1 ")[1] for line in logs.splitlines() if " weights sha1 " in line)


# 2 epochs of 6 optimizer steps, global batch 16 (8 per rank). No clipping: a sharded norm is
# summed in another order, and Adam's first steps are ~lr * sign(g), so a rounding apart in
# the clip factor could flip the update of a near-zero gradient; ZeRO-1's clipping is
# checked on its own (rank_checks.py).
UNCLIPPED = ["--clip_grad", "False"]
TWO_WORKERS = [*BASE_ARGS, *DETERMINISTIC_DATA, *UNCLIPPED, "--epoch_size", "2", "--batch_size", "8", "--distribute",
               "True"]
ZERO_1 = ["--enable_parallel_optimizer", "True"]
# train.py with the fused CPU kernels off: MindSpore's own ops, the code path of Ascend and GPU
NATIVE_OPS_TRAIN = ROOT / "tests" / "msrun_scripts" / "train_native_ops.py"


@pytest.fixture(scope="module")
def two_worker_runs(data_dir, tmp_path_factory):
    """train.py on 2 msrun workers, unsharded and with ZeRO-1: {name: (ckpt_save_dir, worker logs)}."""
    root = tmp_path_factory.mktemp("two_workers")
    runs = {}
    for name, extra in (("plain", []), ("zero1", ZERO_1)):
        result, logs = msrun("train.py", *TWO_WORKERS, *extra, "--data_dir", data_dir, "--ckpt_save_dir",
                             root / name, logs=root / f"{name}_logs")
        assert result.returncode == 0, logs[-4000:]
        runs[name] = (root / name, logs)
    return runs


def test_msrun_two_workers_match_a_single_process(data_dir, tmp_path, two_worker_runs):
    run("train.py", *BASE_ARGS, *DETERMINISTIC_DATA, *UNCLIPPED, "--epoch_size", "2", "--data_dir", data_dir,
        "--batch_size", "16", "--ckpt_save_dir", tmp_path / "single")
    dist_dir, logs = two_worker_runs["plain"]
    digests = _digest_lines(logs)
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


def _rank_checks(data_dir, logs, seed=7):
    result, text = msrun(ROOT / "tests" / "msrun_scripts" / "rank_checks.py", data_dir, seed, logs=logs)
    assert result.returncode == 0, text[-4000:]
    reports = [json.loads(line.split("RANK_CHECKS ", 1)[1]) for line in text.splitlines() if "RANK_CHECKS " in line]
    return sorted(reports, key=lambda r: r["rank"])


@pytest.fixture(scope="module")
def rank_reports(data_dir, tmp_path_factory):
    """rank_checks.py's reports of rank 0 and rank 1 (fused kernels on, and off under ``native_ops``)."""
    return _rank_checks(data_dir, tmp_path_factory.mktemp("rank_checks"))


def test_ranks_draw_their_own_randomness_from_one_start_and_skip_overflow_together(data_dir, tmp_path, rank_reports):
    first, second = rank_reports
    # seeded with seed + rank: each rank initialises and drops paths differently...
    assert first["init_local"] != second["init_local"]
    assert first["drop_path"] != second["drop_path"]
    # augmentation draws from (seed, epoch, sample): one file in one epoch gets the same crop on
    # any rank and with any worker count (in training the ranks' shards are disjoint anyway)
    assert first["augment"] == second["augment"]
    # ...but every replica starts from rank 0's weights
    assert first["init_synced"] == second["init_synced"] == first["init_local"]
    # rank 1 alone saw a non-finite gradient in step 2: both ranks skip it, halve the scale together
    assert first["finite"] == second["finite"] == [True, False, True]
    assert first["loss_scale"] == second["loss_scale"] == [1024.0, 512.0, 512.0]
    assert first["optimizer_step"] == second["optimizer_step"] == 2
    assert first["final_state"] == second["final_state"]
    # ZeRO-1 clips chunks held by different ranks by the norm of them all: float32 sums of 40
    # squares and a sqrt, relative error below (40 + 3) * 2**-24
    assert max(first["sharded_clip_error"], second["sharded_clip_error"]) <= 43 * 2.0 ** -24
    # every optimizer sharded steps as unsharded: the elementwise ones exactly (a rank computes the same
    # element with the same operations); Lamb's trust ratio divides two norms of up to 15 elements summed
    # per chunk and across ranks, each within (15 + 3) roundings: per applied step (2) at most 2 x 18
    # roundings of the move, and the parameter's own rounding
    for report in (first, second):
        errors = report["sharded_optimizer_errors"]
        assert {opt: errors[opt] for opt in ("adamw", "adam", "sgd", "lion")} == dict.fromkeys(
            ("adamw", "adam", "sgd", "lion"), 0.0)
        assert 0 < errors["lamb"] <= 2 * (2 * 18 + 2), errors
    # and the whole run is reproducible from the seed
    assert _rank_checks(data_dir, tmp_path / "b") == [first, second]


def _two_nodes(data_dir, tmp_path, name, *args):
    """train.py on two msrun "nodes" of one worker each, each with its own ckpt_save_dir."""
    port = free_port()
    common = [*BASE_ARGS, *DETERMINISTIC_DATA, "--batch_size", "8", "--data_dir", data_dir, "--distribute", "True",
              *args]
    nodes = []
    for rank in (0, 1):
        nodes.append(msrun("train.py", *common, "--ckpt_save_dir", tmp_path / f"node{rank}", workers=2,
                           local_workers=1, node_rank=rank, port=port, logs=tmp_path / f"{name}{rank}", wait=False))
        if rank == 0:  # node 1's msrun would take the scheduler port if it came first
            assert _wait_for_port(port, timeout=120), "node 0's scheduler never listened"
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    # node 1's msrun also tries to bind the scheduler port and exits 1 after its worker ends
    assert nodes[0].returncode == 0, outputs[0][-3000:] + worker_logs(tmp_path / f"{name}0")[-3000:]
    return [worker_logs(tmp_path / f"{name}{rank}") for rank in (0, 1)]


def test_native_ops_path_agrees_across_ranks_too(rank_reports):
    # the fused CPU kernels off: MindSpore's own ops, as on Ascend/GPU and in exported graphs (built in the same
    # launch as the kernels-on model: the switch applies when a model is built)
    first, second = (report["native_ops"] for report in rank_reports)
    assert first["final_state"] != rank_reports[0]["final_state"]  # really the other path: other float order
    assert first["init_synced"] == second["init_synced"] and first["drop_path"] != second["drop_path"]
    assert first["finite"] == second["finite"] == [True, False, True]
    assert first["loss_scale"] == second["loss_scale"] == [1024.0, 512.0, 512.0]
    assert first["final_state"] == second["final_state"]


def _wait_for_port(port: int, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.2)
    return False


def test_two_nodes_without_shared_storage_resume_from_rank_0_state(data_dir, tmp_path):
    _two_nodes(data_dir, tmp_path, "first", "--epoch_size", "1")
    assert (tmp_path / "node0" / "resume_state.ckpt").exists()
    assert not (tmp_path / "node1" / "resume_state.ckpt").exists()  # only rank 0 writes
    logs = _two_nodes(data_dir, tmp_path, "again", "--epoch_size", "2", "--resume", "auto")
    for rank, text in enumerate(logs):
        assert f"rank {rank} starts at epoch 1 batch 0 optimizer step 6" in text, text[-3000:]
        assert "Traceback" not in text
    digests = _digest_lines("".join(logs))
    assert len(digests) == 2 and digests[0] == digests[1]
    assert [r["epoch"] for r in read_metrics(tmp_path / "node0")] == [1, 2]


def _state(directory):
    return {name: value.asnumpy() for name, value in ms.load_checkpoint(str(directory / "resume_state.ckpt")).items()
            if name != META_KEY}


def test_zero1_matches_unsharded_training_with_half_the_optimizer_state(two_worker_runs):
    (plain_dir, plain_logs), (zero_dir, zero_logs) = two_worker_runs["plain"], two_worker_runs["zero1"]
    # rank 0 holds half of the AdamW moments (each tensor's chunk is rounded up: at most 1 element each)
    held, full = map(int, re.search(r"ZeRO-1: .* (\d+) bytes on this rank \(unsharded: (\d+)", zero_logs).groups())
    plain, zero = _state(plain_dir), _state(zero_dir)
    moments = [name for name in plain if name.startswith("optimizer.exp_avg.")]
    assert full == 2 * sum(plain[name].nbytes for name in moments)
    assert full / 2 <= held <= full / 2 + 2 * 4 * len(moments)
    assert "ZeRO-1" not in plain_logs
    # the replicas agree, and the saved state has the unsharded layout: same names, full shapes
    digests = _digest_lines(zero_logs)
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
        states[name] = _state(tmp_path / name)
    for name, value in states["plain"].items():
        assert np.array_equal(states["zero1"][name], value), name
    # the kernels really were off: other float ordering than the kernels-on run
    kernels_on = _state(two_worker_runs["plain"][0])
    assert not np.array_equal(kernels_on["model.head.weight"], states["plain"]["model.head.weight"])


def _straight_and_killed_mid_epoch(script, args, tmp_path):
    """``script`` under 2 workers twice: uninterrupted, and SIGKILLed in the middle of epoch 2 then resumed.

    Returns the two ``ckpt_save_dir``, the resume position the kill left and the resumed run's logs.
    """
    result, logs = msrun(script, *args, "--ckpt_save_dir", tmp_path / "straight", logs=tmp_path / "logs")
    assert result.returncode == 0, logs[-4000:]
    out = tmp_path / "killed"
    launcher = msrun(script, *args, "--ckpt_save_dir", out, logs=tmp_path / "killed_logs", wait=False)
    try:
        # start-up, compile and an epoch and a half of two workers, on a machine another test may share
        assert wait_for(mid_epoch(out / "resume_state.ckpt", 1), 900), "run never reached the middle of epoch 2"
        assert kill_processes_mentioning(str(out)) >= 3  # msrun and both workers
    finally:
        launcher.kill()
        launcher.wait(timeout=60)
    position = read_position(str(out / "resume_state.ckpt"))
    result, logs = msrun(script, *args, "--ckpt_save_dir", out, "--resume", "auto", logs=tmp_path / "resumed_logs")
    assert result.returncode == 0, logs[-4000:]
    return tmp_path / "straight", out, position, logs


def test_official_augmentation_two_workers_killed_mid_epoch_resume_bitwise(data_dir, tmp_path):
    # RandAugment, erasing noise, mixup/CutMix, drop path and EMA on two ranks, with every block
    # checkpointed (its rerun must drop what its forward pass dropped), killed with SIGKILL in the
    # middle of epoch 2: each rank must redraw exactly what it drew in the uninterrupted run
    args = [*BASE_ARGS, *OFFICIAL_AUGMENTATION, "--recompute", "True", "--epoch_size", "2", "--batch_size", "8",
            "--distribute", "True", "--resume_save_steps", "2", "--data_dir", data_dir]
    straight, out, position, logs = _straight_and_killed_mid_epoch("train.py", args, tmp_path)
    for rank in (0, 1):
        assert f"rank {rank} starts at epoch 1 batch {position.batch_in_epoch} " in logs
    straight, resumed = _state(straight), _state(out)
    for name, value in straight.items():
        assert np.array_equal(value, resumed[name]), name


@pytest.mark.parametrize("window, script, extra", [
    pytest.param("3", "train.py", [], id="window3-kernels_on"),
    pytest.param("3", NATIVE_OPS_TRAIN, [], id="window3-kernels_off"),
    pytest.param("12", "train.py", [], id="window12-kernels_on"),
    pytest.param("12", NATIVE_OPS_TRAIN, [], id="window12-kernels_off"),
])
def test_sequential_attention_on_padded_windows_two_workers_resume_bitwise(data_dir, tmp_path, window, script, extra):
    """Two ranks under the official augmentation (RandAugment, erasing noise, mixup/CutMix, drop path) and EMA,
    SIGKILLed in the middle of epoch 2 and resumed: each rank redraws exactly what it drew in the uninterrupted
    run, the ranks stay in sync and the run ends bit for bit as the uninterrupted one.

    Window 3 on the 32 px model pads every stage map (16, 8, 4 -> 18, 9, 6) and sequential attention runs
    3 windows x 2 heads per group (uneven groups); window 12 pads stage 1 to 24 x 24: four 144-token windows,
    which the fused CPU attention kernel attends (kernels on; the core's groups with them off), the later
    stages clipped to their maps.
    """
    args = [*BASE_ARGS, *OFFICIAL_AUGMENTATION, "--window_size", window, "--sequential_attention", "3",
            "--sequential_attention_heads", "2", "--epoch_size", "2", "--batch_size", "8", "--distribute", "True",
            "--resume_save_steps", "2", "--data_dir", data_dir, *extra]
    straight, out, position, logs = _straight_and_killed_mid_epoch(script, args, tmp_path)
    digests = _digest_lines(logs)
    assert len(digests) == 2 and digests[0] == digests[1]
    for rank in (0, 1):
        assert f"rank {rank} starts at epoch 1 batch {position.batch_in_epoch} " in logs
    straight_state, resumed = _state(straight), _state(out)
    assert any(name.startswith("ema.") for name in straight_state)
    for name, value in straight_state.items():
        assert np.array_equal(value, resumed[name]), name


def test_zero1_run_killed_after_an_epoch_resumes_to_the_uninterrupted_result(data_dir, tmp_path, two_worker_runs):
    zero_dir, _ = two_worker_runs["zero1"]
    out = tmp_path / "killed"
    args = [*TWO_WORKERS, *ZERO_1, "--data_dir", data_dir, "--ckpt_save_dir", out]
    launcher = msrun("train.py", *args, logs=tmp_path / "logs", wait=False)
    state, metrics = out / "resume_state.ckpt", out / "metrics.jsonl"
    try:
        # the epoch's line follows its resume state; polling a small file leaves the ~3 s of epoch 2 to kill in
        assert wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") == 1, 900)
        assert kill_processes_mentioning(str(out)) >= 3  # msrun and both workers, in epoch 2
    finally:
        launcher.kill()
        launcher.wait(timeout=60)
    assert read_position(str(state)).epoch == 1
    result, logs = msrun("train.py", *args, "--resume", "auto", logs=tmp_path / "resumed_logs")
    assert result.returncode == 0, logs[-4000:]
    for rank in (0, 1):
        assert f"rank {rank} starts at epoch 1 batch 0 optimizer step 6" in logs
    # each rank got its own chunk of rank 0's full moments back: the run ends bit for bit as if never killed
    uninterrupted, resumed = _state(zero_dir), _state(out)
    for name, value in uninterrupted.items():
        assert np.array_equal(value, resumed[name]), name
    fields = ("epoch", "optimizer_step", "train_loss", "val_loss", "val_top1")
    assert [[r[k] for k in fields] for r in read_metrics(out)] == [[r[k] for k in fields]
                                                                   for r in read_metrics(zero_dir)]


@pytest.mark.parametrize("script", ["train.py", NATIVE_OPS_TRAIN], ids=["kernels_on", "kernels_off"])
def test_mindcv_training_features_together_under_two_workers(data_dir, tmp_path, script):
    # mindcv's aug_repeats deals each image's copies to different ranks and the epoch keeps its length; with
    # its bce loss, top_k checkpoints, Lamb sharded by ZeRO-1 (trust-ratio norms all-reduced), EMA and the
    # official augmentation (RandAugment, erasing, mixup/CutMix, drop path)
    out = tmp_path / "out"
    result, logs = msrun(script, *TWO_WORKERS, *OFFICIAL_AUGMENTATION, *ZERO_1, "--opt", "lamb", "--aug_repeats", "2",
                         "--loss", "bce", "--ckpt_save_policy", "top_k", "--keep_checkpoint_max", "1", "--data_dir",
                         data_dir, "--ckpt_save_dir", out, logs=tmp_path / "logs")
    assert result.returncode == 0, logs[-4000:]
    digests = _digest_lines(logs)
    assert len(digests) == 2 and digests[0] == digests[1]
    records = read_metrics(out)
    assert [r["optimizer_step"] for r in records] == [6, 12]
    assert all(np.isfinite(r["train_loss"]) and r["val_samples"] == 36 for r in records)
    assert "ZeRO-1: lamb state sharded over 2 ranks" in logs
    state = _state(out)
    assert any(name.startswith("ema.") for name in state) and "optimizer.exp_avg_sq.head.weight" in state
    # top_k 1: the one kept weight file is the epoch of the best val_top1 (the later of equal scores)
    best = max(range(len(records)), key=lambda i: (records[i]["val_top1"], i)) + 1
    kept = sorted(p.name for p in out.glob("*-e*.ckpt"))
    assert len(kept) == 1 and kept[0].endswith(f"-e{best:04d}.ckpt"), kept
