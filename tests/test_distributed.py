"""Data parallel under msrun on 127.0.0.1: 2 workers match one process, ZeRO-1 matches both, and two
"nodes" that lose one and resume end as the uninterrupted run (one pair of launches, shared by this file's
tests: the slow tier deals each file to one pytest-xdist worker)."""
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time

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
    PYTHON,
    ROOT,
    free_port,
    kept_states,
    msrun,
    msrun_keeping_states,
    read_metrics,
    run,
    worker_logs,
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



def _wait_for(predicate, timeout: float, every: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return False


def _port_listens(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _start_two_nodes(args, tmp_path, port):
    """train.py on two msrun "nodes" of one worker each, each with its own ckpt_save_dir and log folder."""
    nodes = []
    for rank in (0, 1):
        nodes.append(msrun("train.py", *args, "--ckpt_save_dir", tmp_path / f"node{rank}", workers=2, local_workers=1,
                           node_rank=rank, port=port, logs=tmp_path / f"logs{rank}", wait=False))
        if rank == 0:  # node 1's msrun would take the scheduler port if it came first
            assert _wait_for(lambda: _port_listens(port), timeout=120), "node 0's scheduler never listened"
    return nodes


def _worker_pid(ckpt_save_dir) -> int:
    """The train.py worker given ``ckpt_save_dir``: the process msrun started (not msrun, not its data workers)."""
    def parent_is_msrun(pid: str) -> bool:
        with open(f"/proc/{pid}/stat") as f:
            parent = f.read().rsplit(")", 1)[1].split()[1]
        with open(f"/proc/{parent}/cmdline", "rb") as f:
            return b"msrun" in f.read()

    found = subprocess.run(["pgrep", "-f", f"train.py .*--ckpt_save_dir {ckpt_save_dir}"], capture_output=True,
                           text=True).stdout.split()
    workers = [int(pid) for pid in found if "msrun" not in open(f"/proc/{pid}/cmdline").read() and parent_is_msrun(pid)]
    assert len(workers) == 1, found
    return workers[0]


def _last_line(logs, timeout: float = 60) -> str:
    """The last line of a node's worker log, once the rank's watcher has written its ``error:`` line."""
    _wait_for(lambda: "error: rank" in worker_logs(logs), timeout)
    return worker_logs(logs).strip().splitlines()[-1]


def test_a_lost_node_is_named_and_both_nodes_resume_to_the_uninterrupted_run(data_dir, tmp_path, two_worker_runs):
    """Two msrun "nodes" of one worker each without shared storage (only rank 0 writes); node 1's worker is
    killed in epoch 2. Node 0's worker ends with the project's line: rank 1 lost, the state saved at the end
    of epoch 1, and the command that continues; node 1's says its process was ended. Both nodes run the
    commands their lines give, and end bit for bit as the uninterrupted 2-worker run.

    Was ``test_two_nodes_without_shared_storage_resume_from_rank_0_state`` (test_distributed_ranks.py), whose
    first run stopped after epoch 1 by itself: its checks are all here.
    """
    args = [*TWO_WORKERS, "--data_dir", data_dir]
    nodes = _start_two_nodes(args, tmp_path, free_port())
    assert _wait_for(lambda: "epoch 2/2 step 2/6" in worker_logs(tmp_path / "logs0"), timeout=600, every=0.1), \
        worker_logs(tmp_path / "logs0")[-3000:]
    os.kill(_worker_pid(tmp_path / "node1"), signal.SIGKILL)
    consoles = [node.communicate(timeout=300)[0] for node in nodes]
    assert nodes[0].returncode != 0
    assert (tmp_path / "node0" / "resume_state.ckpt").exists()
    assert not (tmp_path / "node1" / "resume_state.ckpt").exists()  # only rank 0 writes
    lines = [_last_line(tmp_path / f"logs{rank}") for rank in (0, 1)]
    state = "the last resume state on disk is the end of epoch 1/2 (optimizer step 6), "
    state_here = f"{state}{tmp_path / 'node0' / 'resume_state.ckpt'} on rank 0's node"
    assert lines[0].startswith("error: rank 0 stopped: rank 1 of the job stopped answering (msrun's scheduler.log); "
                               f"{state_here}; to continue, run on every node its own msrun command as on this one: "
                               "msrun "), lines[0]
    assert lines[1].startswith("error: rank 1 stopped: the process was ended from outside Python"), lines[1]
    # every rank knows where rank 0's state stands
    assert f"{state}resume_state.ckpt in rank 0's ckpt_save_dir;" in lines[1], lines[1]
    assert (tmp_path / "node0" / "log_rank0.txt").read_text().rstrip().endswith(lines[0])
    assert lines[0] in consoles[0].splitlines()  # msrun's console too: it stopped echoing the worker's log

    # each node runs the command its line gives
    commands = [shlex.split(line.split(" as on this one: ", 1)[1]) for line in lines]
    for rank, command in enumerate(commands):
        assert command[0] == "msrun" and f"--node_rank {rank}" in shlex.join(command)
        assert command[-2:] == ["--resume", "auto"]
    env = dict(os.environ, PATH=f"{os.path.dirname(PYTHON)}:{os.environ.get('PATH', '')}")
    restarted = []
    for rank, command in enumerate(commands):
        restarted.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                          cwd=str(ROOT), env=env))
        if rank == 0:
            port = int(command[command.index("--master_port") + 1])
            assert _wait_for(lambda p=port: _port_listens(p), timeout=120), "node 0's scheduler never listened"
    output = restarted[0].communicate(timeout=900)[0]
    restarted[1].communicate(timeout=300)  # node 1's msrun exits 1 after its worker: the scheduler port is taken
    logs = [worker_logs(tmp_path / f"logs{rank}") for rank in (0, 1)]
    assert restarted[0].returncode == 0, output[-3000:] + logs[0][-3000:]
    for rank, text in enumerate(logs):
        assert f"rank {rank} starts at epoch 1 batch 0 optimizer step 6" in text, text[-3000:]
        assert "Traceback" not in text and "error:" not in text
    digests = digest_lines("".join(logs))
    assert len(digests) == 2 and digests[0] == digests[1]
    assert [r["epoch"] for r in read_metrics(tmp_path / "node0")] == [1, 2]
    uninterrupted, resumed = saved_state(two_worker_runs["plain"][0]), saved_state(tmp_path / "node0")
    assert set(uninterrupted) == set(resumed)
    for name, value in uninterrupted.items():
        assert np.array_equal(value, resumed[name]), name
