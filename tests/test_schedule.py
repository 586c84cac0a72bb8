"""Learning-rate keys with one meaning each: mindcv's absolute rates and schedulers, the official scaled rates."""
import glob
import os

import numpy as np
import pytest
from mindcv.scheduler import create_scheduler

from mindswin.config import ConfigError, load_config
from mindswin.engine.schedule import LearningRates, learning_rates, lr_schedule, schedule_from_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Per-step tables of every shipped recipe written by the code before lr became absolute (commit d7eb04b, when
# the recipes said lr: for what is now base_lr:), at 1 device x 7 and 8 devices x 5 optimizer steps per epoch.
BEFORE = os.path.join(ROOT, "tests", "data", "recipe_lr_tables.npz")


def test_every_shipped_recipe_keeps_the_schedule_it_had():
    tables = np.load(BEFORE)
    recipes = sorted(path for path in glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True)
                     if f"{os.sep}_base_{os.sep}" not in path)
    assert {key.split("|")[0] for key in tables.files} == {os.path.relpath(path, ROOT) for path in recipes}
    for key in tables.files:
        path, devices, steps_per_epoch = key.split("|")
        config = load_config(os.path.join(ROOT, path))
        global_batch = config.batch_size * int(devices) * config.gradient_accumulation_steps
        table = schedule_from_config(config, int(steps_per_epoch), global_batch)
        # the same float64 arithmetic in the same order, rounded once to float32: bitwise equal on the machine
        # that wrote the tables (AVX-512); numpy's float64 cos differs by an ulp or so between its SIMD and
        # scalar paths, which can move a float32 rounding by at most one float32 ulp on another ISA
        before = tables[key]
        assert table.shape == before.shape, key
        assert (np.abs(table - before) <= np.spacing(np.abs(before))).all(), key


# mindcv's create_scheduler takes integer epochs; its tables are float64 lists.
MINDCV_CASES = [
    dict(scheduler="cosine_decay", decay_epochs=9),
    dict(scheduler="cosine_decay", decay_epochs=4, num_cycles=2, cycle_decay=0.5),
    dict(scheduler="warmup_cosine_decay", decay_epochs=12),
    dict(scheduler="step_decay", decay_epochs=3, decay_rate=0.5),
    dict(scheduler="exponential_decay", decay_rate=0.8),
    dict(scheduler="polynomial_decay", decay_rate=2.0),
    dict(scheduler="multi_step_decay", milestones=[2, 5, 7], decay_rate=0.3),
    dict(scheduler="constant"),
]


@pytest.mark.parametrize("stair", [False, True])
@pytest.mark.parametrize("warmup_factor", [0.0, 0.1])
@pytest.mark.parametrize("case", MINDCV_CASES, ids=[c["scheduler"] + str(i) for i, c in enumerate(MINDCV_CASES)])
def test_schedulers_equal_mindcvs_create_scheduler(case, warmup_factor, stair):
    lr, min_lr, steps_per_epoch, epochs, warmup = 1e-3, 1e-5, 6, 12, 3
    theirs = np.asarray(create_scheduler(
        steps_per_epoch, case["scheduler"], lr=lr, min_lr=min_lr, warmup_epochs=warmup, warmup_factor=warmup_factor,
        decay_epochs=case.get("decay_epochs", 10), decay_rate=case.get("decay_rate", 0.9),
        milestones=case.get("milestones"), num_epochs=epochs, num_cycles=case.get("num_cycles", 1),
        cycle_decay=case.get("cycle_decay", 1.0), lr_epoch_stair=stair), np.float64)
    ours = lr_schedule(LearningRates(lr, min_lr, lr * warmup_factor), steps_per_epoch, epochs, warmup,
                       scheduler=case["scheduler"], decay_epochs=case.get("decay_epochs"),
                       decay_rate=case.get("decay_rate", 0.9), milestones=case.get("milestones", ()),
                       num_cycles=case.get("num_cycles", 1), cycle_decay=case.get("cycle_decay", 1.0),
                       epoch_stair=stair)
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    # ours is one float32 rounding (<= 2^-24 relative) of float64 values that agree with mindcv's to a few
    # float64 ulps (the same formulas, some operations in another order)
    assert np.allclose(ours, theirs, rtol=2.0 ** -24 + 1e-12, atol=0), np.abs(ours - theirs).max()
    assert not np.array_equal(ours[:warmup * steps_per_epoch], np.full(warmup * steps_per_epoch, lr))


def _rates(*, devices=1, **overrides):
    config = load_config(overrides=dict(batch_size=64, **overrides))
    return learning_rates(config, config.batch_size * devices)


def test_lr_is_absolute_and_base_lr_scales_with_the_global_batch():
    # mindcv's recipe: lr 0.001 at 8 x 128 trains at 0.001, whatever the batch
    assert _rates(lr=1e-3, min_lr=1e-6, devices=8) == LearningRates(1e-3, 1e-6, 0.0)
    assert _rates(lr=1e-3, devices=2).final == 1e-6  # mindcv's default min_lr
    assert _rates(lr=1e-3, warmup_factor=0.01).start == pytest.approx(1e-5, rel=1e-15)
    assert _rates(lr=1e-3, warmup_lr=2e-6).start == 2e-6
    # the official spelling: per lr_base_batch (512) images of global batch
    scaled = _rates(base_lr=5e-4, base_min_lr=5e-6, base_warmup_lr=5e-7, devices=16)  # 1024 images
    assert scaled == pytest.approx(LearningRates(1e-3, 1e-5, 1e-6), rel=1e-15)
    assert _rates(devices=8) == pytest.approx(LearningRates(5e-4, 5e-6, 5e-7), rel=1e-15)  # nothing given: official
    assert _rates(base_lr=1e-3, lr_base_batch=256, devices=2).peak == pytest.approx(5e-4, rel=1e-15)


@pytest.mark.parametrize("overrides, message", [
    (dict(lr=1e-3, base_lr=5e-4), "write all rates one way"),
    (dict(lr=1e-3, base_min_lr=5e-6), "write all rates one way"),
    (dict(min_lr=1e-6), "set without lr"),
    (dict(lr=1e-3, lr_base_batch=256), "lr_base_batch scales the base_\\* rates"),
    (dict(base_lr=1e-3, warmup_factor=0.1, base_warmup_lr=1e-6), "warmup_factor and base_warmup_lr both set"),
])
def test_rates_written_both_ways_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_the_retired_scale_lr_names_both_spellings(tmp_path):
    recipe = tmp_path / "old.yaml"
    recipe.write_text("scale_lr: False\nlr: 1e-3\n")
    with pytest.raises(ConfigError, match="unknown key 'scale_lr'. lr is absolute .* base_lr"):
        load_config(str(recipe))


def test_official_and_timm_names_of_the_schedule_keys_are_accepted(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr_scheduler: constant\nmixup_prob: 0.5\n")
    config = load_config(str(recipe))
    assert (config.scheduler, config.cutmix_prob) == ("constant", 0.5)


def test_multi_step_milestones_count_after_the_warmup():
    # SimMIM's official MULTISTEPS [700] with 10 warmup epochs: the lr drops at epoch 700 of the run
    table = lr_schedule(LearningRates(1e-4, 0.0, 5e-7), 2, 800, 10, scheduler="multi_step_decay",
                        milestones=[690], decay_rate=0.1)
    assert table[2 * 700 - 1] == np.float32(1e-4) and table[2 * 700] == np.float32(1e-5)


@pytest.mark.parametrize("case", [dict(scheduler="one_cycle"), dict(scheduler="cyclic", num_cycles=1),
                                  dict(scheduler="cyclic", num_cycles=3)], ids=["one_cycle", "cyclic1", "cyclic3"])
def test_whole_cycle_schedulers_equal_mindcvs(case):
    lr, min_lr, steps_per_epoch, epochs = 1e-3, 1e-5, 7, 11
    theirs = np.asarray(create_scheduler(steps_per_epoch, case["scheduler"], lr=lr, min_lr=min_lr, warmup_epochs=0,
                                         num_epochs=epochs, num_cycles=case.get("num_cycles", 1)), np.float64)
    ours = lr_schedule(LearningRates(lr, min_lr, 0.0), steps_per_epoch, epochs, 0, scheduler=case["scheduler"],
                       num_cycles=case.get("num_cycles", 1))
    assert ours.shape == theirs.shape
    # the same float64 formulas (numpy's cos for math.cos: a float64 ulp), rounded once to float32
    assert np.allclose(ours, theirs, rtol=2.0 ** -24 + 1e-12, atol=0), np.abs(ours - theirs).max()
    assert ours.max() > 0.9 * lr and ours.min() < 0.1 * lr


def test_whole_cycle_schedulers_refuse_a_warmup_as_mindcv_does():
    with pytest.raises(ConfigError, match="one_cycle is a whole cycle .* warmup_epochs: 0"):
        load_config(overrides=dict(scheduler="one_cycle", lr=1e-3))
    assert load_config(overrides=dict(scheduler="cyclic", lr=1e-3, warmup_epochs=0)).scheduler == "cyclic"


# The official build_scheduler's cosine and step are timm's schedulers over optimizer steps (t_in_epochs
# False); its linear and multistep are its own classes, written out here from their formulas (timm's
# MultiStepLRScheduler applies a milestone one step early, the official one does not).
_TIMM_TABLES = r'''
import json, sys, torch
from timm.scheduler import CosineLRScheduler, StepLRScheduler
peak, final, start, spe, epochs, warmup = json.loads(sys.argv[1])
total, wsteps = spe * epochs, warmup * spe
opt = lambda: torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
out = {}
for prefix in (True, False):
    common = dict(warmup_lr_init=start, warmup_t=wsteps, t_in_epochs=False, warmup_prefix=prefix)
    schedulers = {
        "cosine": CosineLRScheduler(opt(), t_initial=total - wsteps if prefix else total, lr_min=final,
                                    cycle_limit=1, **common),
        "step": StepLRScheduler(opt(), decay_t=3 * spe, decay_rate=0.5, **common),
    }
    for name, scheduler in schedulers.items():
        out[f"{name}|{prefix}"] = [scheduler._get_lr(t)[0] for t in range(total)]
print(json.dumps(out))
'''


def test_official_schedulers_equal_timms_with_both_warmup_prefixes():
    import json
    import subprocess

    from helpers import require_torch_python

    peak, final, start, spe, epochs, warmup = 1e-3, 1e-5, 1e-6, 5, 12, 2
    tables = json.loads(subprocess.run(
        [str(require_torch_python()), "-c", _TIMM_TABLES, json.dumps([peak, final, start, spe, epochs, warmup])],
        check=True, capture_output=True, text=True).stdout)
    rates = LearningRates(peak, final, start)
    for key, theirs in tables.items():
        name, prefix = key.split("|")
        extra = dict(decay_epochs=3, decay_rate=0.5) if name == "step" else {}
        ours = lr_schedule(rates, spe, epochs, warmup, scheduler=name, warmup_prefix=prefix == "True", **extra)
        assert np.allclose(ours, theirs, rtol=2.0 ** -24 + 1e-12, atol=0), (key, np.abs(ours - theirs).max())
    # unset, step and multistep count from step 0 as in the official code (its timm 0.4.12 had no prefix)
    assert np.array_equal(lr_schedule(rates, spe, epochs, warmup, scheduler="step", decay_epochs=3, decay_rate=0.5),
                          np.float32(tables["step|False"]))
    assert np.array_equal(lr_schedule(rates, spe, epochs, warmup, scheduler="cosine"),
                          np.float32(tables["cosine|True"]))
    total, wsteps = spe * epochs, spe * warmup
    t = np.arange(total, dtype=np.float64)
    linear = np.where(t < wsteps, start + t * (peak - start) / wsteps,
                      peak - (peak - final) * (t - wsteps) / (total - wsteps))
    assert np.allclose(lr_schedule(rates, spe, epochs, warmup, scheduler="linear"), linear, rtol=2.0 ** -24, atol=0)
    from_zero = np.where(t < wsteps, start + t * (peak - start) / wsteps, peak - (peak - final) * t / total)
    assert np.allclose(lr_schedule(rates, spe, epochs, warmup, scheduler="linear", warmup_prefix=False), from_zero,
                       rtol=2.0 ** -24, atol=0)
    for prefix, origin in ((None, 0), (True, wsteps)):
        multistep = np.where(t < wsteps, start + t * (peak - start) / wsteps,
                             peak * 0.1 ** np.searchsorted([5 * spe, 8 * spe], t - origin, side="right"))
        ours = lr_schedule(rates, spe, epochs, warmup, scheduler="multistep", milestones=[5, 8], decay_rate=0.1,
                           warmup_prefix=prefix)
        assert np.allclose(ours, multistep, rtol=2.0 ** -24, atol=0), prefix
