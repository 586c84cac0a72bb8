"""Learning-rate schedules: the rates of a run and its per-step table, as mindcv's ``create_scheduler``.

Two spellings of the rates, one meaning each:

* ``lr``, ``min_lr``, ``warmup_lr`` / ``warmup_factor`` are absolute, as in mindcv;
* ``base_lr``, ``base_min_lr``, ``base_warmup_lr`` are per ``lr_base_batch`` images and
  scaled by the global batch, as the official ``TRAIN.BASE_LR`` (linear scaling rule).

The table is a linear warmup over ``warmup_epochs`` followed by the decay of ``scheduler``,
whose epochs (``decay_epochs``, ``multi_step_decay_milestones``, the polynomial's span) count
from the end of the warmup, as mindcv's do. The whole table is computed in float64 and
rounded once to float32; it goes to the device with the train step, which indexes it by
the optimizer step (no host work per step).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..config import Config

__all__ = ["LearningRates", "learning_rates", "lr_schedule", "schedule_from_config"]

# The official config.py defaults, per 512 images (TRAIN.BASE_LR, MIN_LR, WARMUP_LR).
_BASE_LR, _BASE_MIN_LR, _BASE_WARMUP_LR = 5e-4, 5e-6, 5e-7
# mindcv's default final rate (config.py --min_lr).
_MIN_LR = 1e-6


class LearningRates(NamedTuple):
    """The resolved rates of a run: peak, final (cosine floor) and at step 0."""

    peak: float
    final: float
    start: float


def learning_rates(config: Config, global_batch: int) -> LearningRates:
    """The peak, final and step-0 rates of ``config`` at ``global_batch`` images per optimizer step.

    The config check (``mindswin.config``) has already refused rates written both ways.
    """
    if config.lr is not None:
        peak = config.lr
        final = config.min_lr if config.min_lr is not None else _MIN_LR
        start = config.warmup_lr if config.warmup_lr is not None else peak * (config.warmup_factor or 0.0)
        return LearningRates(peak, final, start)
    factor = global_batch / config.lr_base_batch
    peak = (config.base_lr if config.base_lr is not None else _BASE_LR) * factor
    final = (config.base_min_lr if config.base_min_lr is not None else _BASE_MIN_LR) * factor
    if config.warmup_factor is not None:
        start = peak * config.warmup_factor
    else:
        start = (config.base_warmup_lr if config.base_warmup_lr is not None else _BASE_WARMUP_LR) * factor
    return LearningRates(peak, final, start)


def lr_schedule(rates: LearningRates, steps_per_epoch: int, epochs: int, warmup_epochs: float, *,
                scheduler: str = "cosine_decay", decay_epochs: Optional[int] = None, decay_rate: float = 0.9,
                milestones: Sequence[int] = (), num_cycles: int = 1, cycle_decay: float = 1.0,
                epoch_stair: bool = False) -> np.ndarray:
    """Per-step learning rates (float32, ``epochs * steps_per_epoch`` of them).

    Args:
        rates: From :func:`learning_rates`.
        steps_per_epoch: Optimizer steps per epoch.
        epochs: Epochs of the run.
        warmup_epochs: Linear warmup from ``rates.start`` to ``rates.peak`` (may be fractional).
        scheduler: The decay after the warmup: ``cosine_decay`` (``warmup_cosine_decay`` is
            mindcv's other name for it), ``constant``, ``multi_step_decay``, ``step_decay``,
            ``exponential_decay`` or ``polynomial_decay``.
        decay_epochs: ``cosine_decay``: length of one cosine from ``peak`` to ``final``
            (then ``final``); None spans the rest of the run. ``step_decay``: epochs between
            decays (required).
        decay_rate: Factor of ``step_decay``, ``exponential_decay`` (per epoch) and
            ``multi_step_decay``; the power of ``polynomial_decay``.
        milestones: ``multi_step_decay``: epochs after the warmup at which the rate is
            multiplied by ``decay_rate``.
        num_cycles: ``cosine_decay``: cosines of ``decay_epochs`` one after the other.
        cycle_decay: ``cosine_decay``: peak factor from one cycle to the next.
        epoch_stair: Change the rate at epoch boundaries only (mindcv's ``lr_epoch_stair``).
    """
    total = epochs * steps_per_epoch
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    steps = np.arange(total, dtype=np.float64)
    # steps and epochs since the end of the warmup (the decay's own clock)
    after = np.maximum(steps - warmup_steps, 0.0)
    epoch = np.floor(after / steps_per_epoch)
    clock = epoch if epoch_stair else after / steps_per_epoch
    if scheduler == "constant":
        rates_ = np.full(total, rates.peak)
    elif scheduler in ("cosine_decay", "warmup_cosine_decay"):
        rates_ = _cosine(rates, after, steps_per_epoch, max(total - warmup_steps, 1), decay_epochs, num_cycles,
                         cycle_decay, epoch_stair)
    elif scheduler == "multi_step_decay":
        rates_ = rates.peak * decay_rate ** np.searchsorted(np.sort(np.asarray(milestones, np.float64)), epoch,
                                                            side="right")
    elif scheduler == "step_decay":
        if not decay_epochs:
            raise ValueError("step_decay needs decay_epochs")
        rates_ = rates.peak * decay_rate ** np.floor(epoch / decay_epochs)
    elif scheduler == "exponential_decay":
        rates_ = rates.peak * decay_rate ** clock
    elif scheduler == "polynomial_decay":
        span = epochs - warmup_epochs
        rates_ = rates.peak * (1.0 - np.minimum(clock, span) / span) ** decay_rate
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}")
    if warmup_steps > 0:
        done = np.floor(steps / steps_per_epoch) * steps_per_epoch if epoch_stair else steps
        rates_ = np.where(steps < warmup_steps, rates.start + (rates.peak - rates.start) * done / warmup_steps, rates_)
    return rates_.astype(np.float32)


def _cosine(rates: LearningRates, after: np.ndarray, steps_per_epoch: int, rest: int, decay_epochs: Optional[int],
            num_cycles: int, cycle_decay: float, epoch_stair: bool) -> np.ndarray:
    """Cosine cycles from the (decayed) peak to ``rates.final``, then ``rates.final``."""
    cycle_steps = decay_epochs * steps_per_epoch if decay_epochs else rest
    cycle = np.floor(after / cycle_steps)
    within = after - cycle * cycle_steps
    if epoch_stair:
        within = np.floor(within / steps_per_epoch) * steps_per_epoch
    peak = rates.peak * cycle_decay ** cycle
    cosine = rates.final + 0.5 * (peak - rates.final) * (1.0 + np.cos(np.pi * (within / cycle_steps)))
    return np.where(cycle < num_cycles, cosine, rates.final)


def schedule_from_config(config: Config, steps_per_epoch: int, global_batch: int) -> np.ndarray:
    """The per-step table of ``config``'s rates and ``scheduler`` keys."""
    return lr_schedule(learning_rates(config, global_batch), steps_per_epoch, config.epoch_size,
                       config.warmup_epochs, scheduler=config.scheduler, decay_epochs=config.decay_epochs,
                       decay_rate=config.decay_rate, milestones=config.multi_step_decay_milestones,
                       num_cycles=config.num_cycles, cycle_decay=config.cycle_decay,
                       epoch_stair=config.lr_epoch_stair)
