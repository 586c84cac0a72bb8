"""Data parallel under msrun on 127.0.0.1: 2 workers, and two single-worker "nodes"."""
import json
import socket
import time

import pytest

from conftest import BASE_ARGS, DETERMINISTIC_DATA, ROOT, free_port, msrun, read_metrics, run, worker_logs

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def _digest_lines(logs: str):
    """``rank R weights sha1 W state sha1 S`` lines printed by every rank at the end of train.py."""
    return sorted(line.split(" weights sha1 ")[1] for line in logs.splitlines() if " weights sha1 " in line)


def test_msrun_two_workers_match_a_single_process(data_dir, tmp_path):
    common = [*BASE_ARGS, *DETERMINISTIC_DATA, "--epoch_size", "2", "--data_dir", data_dir]
    run("train.py", *common, "--batch_size", "16", "--ckpt_save_dir", tmp_path / "single")
    result, logs = msrun("train.py", *common, "--batch_size", "8", "--ckpt_save_dir", tmp_path / "dist",
                         "--distribute", "True", logs=tmp_path / "logs")
    assert result.returncode == 0, logs[-4000:]
    digests = _digest_lines(logs)
    assert len(digests) == 2 and digests[0] == digests[1]  # ranks end with identical weights and state
    single, dist = read_metrics(tmp_path / "single"), read_metrics(tmp_path / "dist")
    assert [r["val_samples"] for r in dist] == [36, 36]  # the whole val set, 18 per rank, all-reduced
    assert [r["optimizer_step"] for r in dist] == [r["optimizer_step"] for r in single]
    for a, b in zip(single, dist):
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
        assert abs(a["val_top1"] - b["val_top1"]) <= 100 / 36 + 1e-9  # at most one sample flips

    # validate.py under msrun: sharded (18 + 18), all-reduced, same top-1 as training reported
    ckpt = tmp_path / "dist" / "swinv2_micro_window4_32-e0002.ckpt"
    result, logs = msrun("validate.py", "--data_dir", data_dir, "--ckpt_path", ckpt, "--batch_size", "8",
                         "--output", tmp_path / "val.json", "--distribute", "True", logs=tmp_path / "val_logs")
    assert result.returncode == 0, logs[-4000:]
    summary = json.loads((tmp_path / "val.json").read_text())
    assert summary["num_samples"] == 36
    assert summary["top1"] == pytest.approx(dist[-1]["val_top1"], abs=1e-9)


def _rank_checks(data_dir, logs, seed=7, kernels="on"):
    result, text = msrun(ROOT / "tests" / "msrun_scripts" / "rank_checks.py", data_dir, seed, kernels, logs=logs)
    assert result.returncode == 0, text[-4000:]
    reports = [json.loads(line.split("RANK_CHECKS ", 1)[1]) for line in text.splitlines() if "RANK_CHECKS " in line]
    return sorted(reports, key=lambda r: r["rank"])


def test_ranks_draw_their_own_randomness_from_one_start_and_skip_overflow_together(data_dir, tmp_path):
    first, second = _rank_checks(data_dir, tmp_path / "a")
    # seeded with seed + rank: each rank initialises, drops paths and augments differently...
    assert first["init_local"] != second["init_local"]
    assert first["drop_path"] != second["drop_path"]
    assert first["augment"] != second["augment"]
    # ...but every replica starts from rank 0's weights
    assert first["init_synced"] == second["init_synced"] == first["init_local"]
    # rank 1 alone saw a non-finite gradient in step 2: both ranks skip it, halve the scale together
    assert first["finite"] == second["finite"] == [True, False, True]
    assert first["loss_scale"] == second["loss_scale"] == [1024.0, 512.0, 512.0]
    assert first["optimizer_step"] == second["optimizer_step"] == 2
    assert first["final_state"] == second["final_state"]
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


def test_native_ops_path_agrees_across_ranks_too(data_dir, tmp_path):
    # the fused CPU kernels off: MindSpore's own ops, as on Ascend/GPU and in exported graphs
    first, second = _rank_checks(data_dir, tmp_path / "native", kernels="off")
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
