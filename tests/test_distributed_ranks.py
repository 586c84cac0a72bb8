"""Under msrun on 127.0.0.1: what each rank draws and holds (rank_checks.py, one launch for both kernel
paths). Two single-worker "nodes" without shared storage: tests/test_distributed.py."""
import json

import pytest

from helpers import (
    ROOT,
    msrun,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


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


def test_native_ops_path_agrees_across_ranks_too(rank_reports):
    # the fused CPU kernels off: MindSpore's own ops, as on Ascend/GPU and in exported graphs (built in the same
    # launch as the kernels-on model: the switch applies when a model is built)
    first, second = (report["native_ops"] for report in rank_reports)
    assert first["final_state"] != rank_reports[0]["final_state"]  # really the other path: other float order
    assert first["init_synced"] == second["init_synced"] and first["drop_path"] != second["drop_path"]
    assert first["finite"] == second["finite"] == [True, False, True]
    assert first["loss_scale"] == second["loss_scale"] == [1024.0, 512.0, 512.0]
    assert first["final_state"] == second["final_state"]
