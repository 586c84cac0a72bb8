"""Memory predicted before anything compiles: training refuses in one line, evaluation splits its batch.

The budget a run sees is lowered with ``MINDSWIN_MEMORY_BUDGET`` (never by exhausting the
machine); the plan's own figures choose budgets that fall between two batch sizes.
"""
import json
import os

import pytest

from mindswin.config import ConfigError, load_config
from mindswin.engine.memory_guard import (
    BUDGET_VARIABLE,
    check_training_fits,
    evaluation_batch_size,
    memory_budget,
)
from mindswin.memory_plan import (
    largest_batch,
    model_arguments,
    plan_inference_memory,
    plan_memory,
)

from helpers import BASE_ARGS, read_metrics, run

MICRO = "swinv2_micro_window4_32"


def _config(**overrides):
    return load_config(overrides=dict(dict(model=MICRO, amp_level="O0", ema=False), **overrides))


def _training_bytes(batch_size: int, **options) -> int:
    return plan_memory(model_arguments(MICRO, img_size=32), batch_size=batch_size, backend="cpu", **options).total


def test_the_budget_is_the_variable_else_the_hosts_memory(monkeypatch):
    monkeypatch.setenv(BUDGET_VARIABLE, "1.5G")
    assert memory_budget(_config()) == (3 * 2 ** 29, BUDGET_VARIABLE)
    monkeypatch.setenv(BUDGET_VARIABLE, "512MiB")
    assert memory_budget(_config()).bytes == 2 ** 29
    monkeypatch.setenv(BUDGET_VARIABLE, "lots")
    with pytest.raises(ConfigError, match=f"{BUDGET_VARIABLE}='lots' is not a size"):
        memory_budget(_config())
    monkeypatch.delenv(BUDGET_VARIABLE)
    host = memory_budget(_config())
    assert host is not None and 2 ** 28 < host.bytes and "this process's" in host.source


def test_a_training_step_over_the_budget_is_refused_with_the_batch_that_fits(monkeypatch):
    check_training_fits(_config(batch_size=64), group_size=1)  # this machine holds the micro model
    budget = (_training_bytes(24) + _training_bytes(25)) // 2
    assert largest_batch(model_arguments(MICRO, img_size=32), budget, backend="cpu") == 24
    monkeypatch.setenv(BUDGET_VARIABLE, str(budget))
    with pytest.raises(ConfigError) as refused:
        check_training_fits(_config(batch_size=64, gradient_accumulation_steps=2), group_size=1)
    message = str(refused.value)
    assert "\n" not in message
    assert f"one training step of {MICRO} at batch_size 64 needs about" in message
    assert "the largest batch that fits is 24" in message
    assert "--batch_size 24 with --gradient_accumulation_steps 6 (the same global batch)" in message
    assert "--sequential_attention N" in message
    assert "--recompute" not in message  # its rerun graphs cost a model this small more than they save
    check_training_fits(_config(batch_size=24), group_size=1)  # at the boundary: runs


def test_recompute_is_offered_with_the_batch_it_fits_where_it_saves_memory(monkeypatch):
    monkeypatch.setenv(BUDGET_VARIABLE, "8G")
    tiny = model_arguments("swinv2_tiny_window8_256", img_size=256)
    plain, rerun = (largest_batch(tiny, 8 * 2 ** 30, limit=128, backend="cpu", recompute=recompute)
                    for recompute in (False, True))
    assert 0 < plain < rerun
    with pytest.raises(ConfigError) as refused:
        check_training_fits(_config(model="swinv2_tiny_window8_256", batch_size=128), group_size=1)
    assert f"the largest batch that fits is {plain};" in str(refused.value)
    assert f"--recompute True (fits batch {rerun})" in str(refused.value)


def test_zero_1_shares_the_moments_in_the_prediction(monkeypatch):
    monkeypatch.setenv(BUDGET_VARIABLE, str(_training_bytes(16, zero_ranks=8) + 1))
    check_training_fits(_config(batch_size=16, enable_parallel_optimizer=True), group_size=8)
    with pytest.raises(ConfigError, match="the largest batch that fits is"):
        check_training_fits(_config(batch_size=16, enable_parallel_optimizer=False), group_size=8)


def test_evaluation_splits_a_batch_over_the_budget_and_says_so(monkeypatch, caplog):
    args = model_arguments(MICRO, img_size=32)
    monkeypatch.setenv(BUDGET_VARIABLE, str(plan_inference_memory(args, batch_size=5, backend="cpu").total))
    assert evaluation_batch_size(_config(), 5) == 5
    with caplog.at_level("INFO", logger="mindswin"):
        assert evaluation_batch_size(_config(), 32) == 5
    assert "evaluating in batches of 5: batch_size 32 needs about" in caplog.text
    monkeypatch.setenv(BUDGET_VARIABLE, "1M")
    with pytest.raises(ConfigError, match="needs about .* for one image"):
        evaluation_batch_size(_config(), 32)


def test_train_py_refuses_before_compiling_and_validate_py_splits_to_the_same_result(trained, data_dir, tmp_path):
    """One line and exit 2 from train.py; validate.py in smaller batches gives the training's own val figures."""
    out, _ = trained
    budget = str(_training_bytes(4, ema=True))  # BASE_ARGS keep an EMA twin
    env = {**os.environ, BUDGET_VARIABLE: budget}
    result = run("train.py", *BASE_ARGS, "--data_dir", data_dir, "--ckpt_save_dir", tmp_path / "out", check=False,
                 env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert "the largest batch that fits is 4" in errors[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "config.yaml").exists()  # stopped before the model was built
    args = model_arguments(MICRO, img_size=32)
    env[BUDGET_VARIABLE] = str(plan_inference_memory(args, batch_size=7, backend="cpu").total)
    last = read_metrics(out)[-1]
    results = tmp_path / "results.json"
    result = run("validate.py", "--data_dir", data_dir, "--ckpt_path", f"{out}/{MICRO}-e0003.ckpt", "--output",
                 results, env=env)
    assert "evaluating in batches of 7: batch_size 128 needs about" in result.stdout + result.stderr
    summary = json.loads(results.read_text())
    assert summary["top1"] == pytest.approx(last["val_top1"], abs=1e-9)
    assert summary["loss"] == pytest.approx(last["val_loss"], abs=1e-5) and summary["num_samples"] == 36
