"""mindcv's training features together under two msrun workers, on padded windows, resumed mid-epoch."""

import numpy as np
import pytest

from distributed_runs import (
    NATIVE_OPS_TRAIN,
    PADDED_WINDOW_12,
    TWO_WORKERS,
    ZERO_1,
    assert_ranks_agree_and_resumed_bitwise,
    digest_lines,
    saved_state,
    straight_and_resumed_mid_epoch,
)
from helpers import (
    OFFICIAL_AUGMENTATION,
    read_metrics,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


@pytest.mark.parametrize("script", ["train.py", NATIVE_OPS_TRAIN], ids=["kernels_on", "kernels_off"])
def test_mindcv_training_features_on_padded_windows_resume_bitwise(data_dir, tmp_path, script):
    """mindcv's aug_repeats deals each image's copies to different ranks and the epoch keeps its length; with
    its bce loss, top_k checkpoints, Lamb sharded by ZeRO-1 (trust-ratio norms all-reduced), EMA and the
    official augmentation (RandAugment, erasing, mixup/CutMix, drop path), on window 12 padded to four
    144-token windows with sequential attention; resumed in the middle of epoch 2, it ends bit for bit as
    the uninterrupted run.

    Replaces ``test_mindcv_training_features_together_under_two_workers[kernels_on|kernels_off]`` and
    ``test_sequential_attention_on_padded_windows_two_workers_resume_bitwise[window12-kernels_on|off]``.
    """
    args = [*TWO_WORKERS, *OFFICIAL_AUGMENTATION, *ZERO_1, *PADDED_WINDOW_12, "--opt", "lamb", "--aug_repeats", "2",
            "--loss", "bce", "--ckpt_save_policy", "top_k", "--keep_checkpoint_max", "1", "--resume_save_steps", "2",
            "--data_dir", data_dir]
    out, resumed, logs, resumed_logs, position = straight_and_resumed_mid_epoch(script, args, tmp_path)
    digests = digest_lines(logs)
    assert len(digests) == 2 and digests[0] == digests[1]
    records = read_metrics(out)
    assert [r["optimizer_step"] for r in records] == [6, 12]
    assert all(np.isfinite(r["train_loss"]) and r["val_samples"] == 36 for r in records)
    assert "ZeRO-1: lamb state sharded over 2 ranks" in logs
    state = saved_state(out)
    assert any(name.startswith("ema.") for name in state) and "optimizer.exp_avg_sq.head.weight" in state
    # top_k 1: the one kept weight file is the epoch of the best val_top1 (the later of equal scores)
    best = max(range(len(records)), key=lambda i: (records[i]["val_top1"], i)) + 1
    kept = sorted(p.name for p in out.glob("*-e*.ckpt"))
    assert len(kept) == 1 and kept[0].endswith(f"-e{best:04d}.ckpt"), kept
    assert_ranks_agree_and_resumed_bitwise(out, resumed, resumed_logs, position)

