"""Two msrun workers stopped in the middle of an epoch (SIGKILL, or a state the run saved) and resumed: each
rank redraws what it drew, and the run ends bit for bit as the uninterrupted one."""

import mindspore as ms
import pytest

from mindswin.engine.state import read_position

from distributed_runs import (
    NATIVE_OPS_TRAIN,
    PADDED_WINDOW_3,
    UNCLIPPED,
    ZERO_1,
    assert_ranks_agree_and_resumed_bitwise,
    saved_state,
    straight_and_resumed_mid_epoch,
)
from helpers import (
    BASE_ARGS,
    OFFICIAL_AUGMENTATION,
    kill_processes_mentioning,
    mid_epoch,
    msrun,
    read_metrics,
    wait_for,
)

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


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
    for path in out.glob("*.ckpt"):  # every checkpoint the killed run left is intact
        ms.load_checkpoint(str(path))
    position = read_position(str(out / "resume_state.ckpt"))
    result, logs = msrun(script, *args, "--ckpt_save_dir", out, "--resume", "auto", logs=tmp_path / "resumed_logs")
    assert result.returncode == 0, logs[-4000:]
    return tmp_path / "straight", out, position, logs


def test_official_augmentation_two_workers_killed_mid_epoch_resume_bitwise(data_dir, tmp_path):
    """RandAugment, erasing noise, mixup/CutMix, drop path and EMA on two ranks, with every block checkpointed
    (its rerun must drop what its forward pass dropped), ZeRO-1 and sequential attention on padded windows
    (window 3, fused CPU kernels on), SIGKILLed in the middle of epoch 2: each rank must redraw exactly what it
    drew in the uninterrupted run, get its chunk of rank 0's full moments back, and end bit for bit as that run.

    Replaces (one kill, same assertions): ``test_sequential_attention_on_padded_windows_two_workers_resume_bitwise
    [window3-kernels_on]`` and ``test_zero1_run_killed_after_an_epoch_resumes_to_the_uninterrupted_result``'s kill
    (its resume from an epoch's end is ``test_zero1_run_resumed_after_an_epoch_ends_as_the_uninterrupted_one``).
    """
    # with recompute, a block whose windows make one group attends batched: groups of 16 leave stage 1's 36
    # padded windows in three uneven groups (16, 16, 4) and the later stages whole (each group is unrolled in
    # the block, its rerun and their backward: more groups would only lengthen the compile)
    args = [*BASE_ARGS, *OFFICIAL_AUGMENTATION, *UNCLIPPED, *ZERO_1, "--window_size", "3", "--sequential_attention",
            "16", "--recompute", "True",
            "--epoch_size", "2", "--batch_size", "8", "--distribute", "True", "--resume_save_steps", "2",
            "--data_dir", data_dir]
    straight, out, position, logs = _straight_and_killed_mid_epoch("train.py", args, tmp_path)
    assert position.epoch == 1 and position.batch_in_epoch > 0
    assert "ZeRO-1: adamw state sharded over 2 ranks" in logs
    assert_ranks_agree_and_resumed_bitwise(straight, out, logs, position)
    assert any(name.startswith("ema.") for name in saved_state(out))
    fields = ("epoch", "optimizer_step", "val_loss", "val_top1")
    assert [[r[k] for k in fields] for r in read_metrics(out)] == [[r[k] for k in fields]
                                                                   for r in read_metrics(straight)]


def test_sequential_attention_on_padded_windows_two_workers_resume_bitwise(data_dir, tmp_path):
    """Window 3 with the fused CPU kernels off (MindSpore's own ops, the code path of Ascend and GPU) under the
    official augmentation and EMA, resumed in the middle of epoch 2: each rank redraws exactly what it drew,
    the ranks stay in sync and the run ends bit for bit as the uninterrupted one.

    Was ``[window3-kernels_off]`` of four cases; ``[window3-kernels_on]`` is now in the killed official-augmentation
    run, ``[window12-kernels_on|off]`` in ``test_mindcv_training_features_on_padded_windows_resume_bitwise``.
    """
    args = [*BASE_ARGS, *OFFICIAL_AUGMENTATION, *PADDED_WINDOW_3, "--epoch_size", "2", "--batch_size", "8",
            "--distribute", "True", "--resume_save_steps", "2", "--data_dir", data_dir]
    straight, resumed, _, logs, position = straight_and_resumed_mid_epoch(NATIVE_OPS_TRAIN, args, tmp_path)
    assert_ranks_agree_and_resumed_bitwise(straight, resumed, logs, position)
    assert any(name.startswith("ema.") for name in saved_state(straight))

