"""What the msrun test files share: the 2-worker arguments, reading the runs' states and digests, and
one launch that serves as the uninterrupted run and the interrupted one (resumed from a state it saved)."""

import mindspore as ms
import numpy as np

from mindswin.checkpoint.native import META_KEY

from helpers import (
    BASE_ARGS,
    DETERMINISTIC_DATA,
    ROOT,
    kept_states,
    msrun,
    msrun_keeping_states,
)


def digest_lines(logs: str):
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


def saved_state(directory):
    return {name: value.asnumpy() for name, value in ms.load_checkpoint(str(directory / "resume_state.ckpt")).items()
            if name != META_KEY}


# Sequential attention on windows padded at every stage map of the 32 px micro model (16, 8, 4 -> 18, 9, 6
# windows of 3 tokens a side) in uneven groups: 36, 9 and 4 windows in groups of 8, 3, 6 and 12 heads in groups
# of 4. Window 12 pads stage 1 to 24 x 24: four 144-token windows, which the fused CPU attention kernel attends
# (kernels on; the core's groups of 3 windows and 2 heads with them off), the later stages clipped to their maps.
PADDED_WINDOW_3 = ["--window_size", "3", "--sequential_attention", "8", "--sequential_attention_heads", "4"]


PADDED_WINDOW_12 = ["--window_size", "12", "--sequential_attention", "3", "--sequential_attention_heads", "2"]


def assert_ranks_agree_and_resumed_bitwise(straight, resumed, logs: str, position) -> None:
    """Both ranks of the resumed run started where ``position`` says, ended with the same weights and state,
    and ended bit for bit as the uninterrupted run in ``straight``."""
    digests = digest_lines(logs)
    assert len(digests) == 2 and digests[0] == digests[1]
    for rank in (0, 1):
        assert f"rank {rank} starts at epoch {position.epoch} batch {position.batch_in_epoch} " in logs
    straight_state, resumed_state = saved_state(straight), saved_state(resumed)
    assert set(straight_state) == set(resumed_state)
    for name, value in straight_state.items():
        assert np.array_equal(value, resumed_state[name]), name


def straight_and_resumed_mid_epoch(script, args, tmp_path):
    """``script`` under 2 workers uninterrupted, keeping its resume states, then again from the first one it
    saved in the middle of epoch 2 (what a run killed just after saving it resumes from; SIGKILL itself is
    ``test_official_augmentation_two_workers_killed_mid_epoch_resume_bitwise``'s).

    Returns the uninterrupted and resumed ``ckpt_save_dir``, the uninterrupted and resumed runs' logs and the
    position resumed from.
    """
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    result, straight_logs = msrun_keeping_states(script, *args, "--ckpt_save_dir", straight, logs=tmp_path / "logs",
                                                 kept=tmp_path / "kept")
    assert result.returncode == 0, straight_logs[-4000:]
    position, state = next((p, path) for p, path in kept_states(tmp_path / "kept")
                           if p.epoch == 1 and p.batch_in_epoch > 0)
    result, logs = msrun(script, *args, "--ckpt_save_dir", resumed, "--resume", state, logs=tmp_path / "resumed_logs")
    assert result.returncode == 0, logs[-4000:]
    return straight, resumed, straight_logs, logs, position

