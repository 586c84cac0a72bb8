"""Learning-rate schedules: the rates of a run and its per-step table, as mindcv's ``create_scheduler``.

Two spellings of the rates, one meaning each:

* ``lr``, ``min_lr``, ``warmup_lr`` / ``warmup_factor`` are absolute, as in mindcv;
* ``base_lr``, ``base_min_lr``, ``base_warmup_lr`` are per ``lr_base_batch`` images and
  scaled by the global batch, as the official ``TRAIN.BASE_LR`` (linear scaling rule).

The table is a linear warmup over ``warmup_epochs`` followed by the decay of ``scheduler``:
mindcv's names count their epochs (``decay_epochs``, ``multi_step_decay_milestones``, the
polynomial's span) from the end of the warmup, as mindcv does; the official names keep the
official origins, and ``warmup_prefix`` chooses either for any of them. The whole table is computed in float64 and
rounded once to float32; it goes to the device with the train step, which indexes it by
the optimizer step (no host work per step).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import numpy as np

from ..config import NO_WARMUP, Config

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


# The official build_scheduler's step and multistep count from step 0 (timm's warmup_prefix False); every
# other decay counts from the end of the warmup (mindcv's schedulers, the official cosine's WARMUP_PREFIX True).
_FROM_STEP_0 = ("step", "multistep")


def lr_schedule(rates: LearningRates, steps_per_epoch: int, epochs: int, warmup_epochs: float, *,
                scheduler: str = "cosine_decay", decay_epochs: Optional[int] = None, decay_rate: float = 0.9,
                milestones: Sequence[int] = (), num_cycles: int = 1, cycle_decay: float = 1.0,
                epoch_stair: bool = False, warmup_prefix: Optional[bool] = None) -> np.ndarray:
    """Per-step learning rates (float32, ``epochs * steps_per_epoch`` of them).

    Args:
        rates: From :func:`learning_rates`.
        steps_per_epoch: Optimizer steps per epoch.
        epochs: Epochs of the run.
        warmup_epochs: Linear warmup from ``rates.start`` to ``rates.peak`` (may be fractional).
        scheduler: The decay after the warmup. mindcv's ``cosine_decay`` (``warmup_cosine_decay``
            is its other name), ``constant``, ``multi_step_decay``, ``step_decay``,
            ``exponential_decay``, ``polynomial_decay``, ``one_cycle`` and ``cyclic`` (these two
            without warmup or stair, as in mindcv); the official ``cosine``, ``linear`` (from
            ``peak`` to ``final``), ``step`` and ``multistep``.
        decay_epochs: ``cosine_decay``: length of one cosine from ``peak`` to ``final``
            (then ``final``); None spans the rest of the run. ``step_decay``/``step``: epochs
            between decays (required).
        decay_rate: Factor of ``step_decay``, ``step``, ``exponential_decay`` (per epoch),
            ``multi_step_decay`` and ``multistep`` (the official GAMMA); the power of
            ``polynomial_decay``.
        milestones: ``multi_step_decay``/``multistep``: epochs at which the rate is multiplied
            by ``decay_rate``.
        num_cycles: ``cosine_decay``: cosines of ``decay_epochs`` one after the other;
            ``cyclic``: triangles over the run.
        cycle_decay: ``cosine_decay``: peak factor from one cycle to the next.
        epoch_stair: Change the rate at epoch boundaries only (mindcv's ``lr_epoch_stair``).
        warmup_prefix: The decay's clock starts after the warmup (True) or at step 0, the
            warmup then replacing its first steps (False), as the official WARMUP_PREFIX.
            None: False for the official ``step`` and ``multistep``, True for the rest.
    """
    total = epochs * steps_per_epoch
    if scheduler in NO_WARMUP:
        if warmup_epochs or epoch_stair:
            raise ValueError(f"{scheduler} takes no warmup and no lr_epoch_stair (mindcv refuses them too)")
        return (_one_cycle(rates, total) if scheduler == "one_cycle" else _cyclic(rates, total, num_cycles))
    warmup_steps = int(round(warmup_epochs * steps_per_epoch))
    if warmup_prefix is None:
        warmup_prefix = scheduler not in _FROM_STEP_0
    origin = warmup_steps if warmup_prefix else 0
    steps = np.arange(total, dtype=np.float64)
    # steps and epochs on the decay's own clock
    after = np.maximum(steps - origin, 0.0)
    epoch = np.floor(after / steps_per_epoch)
    clock = epoch if epoch_stair else after / steps_per_epoch
    rest = max(total - origin, 1)
    if scheduler == "constant":
        rates_ = np.full(total, rates.peak)
    elif scheduler in ("cosine_decay", "warmup_cosine_decay", "cosine"):
        rates_ = _cosine(rates, after, steps_per_epoch, rest, decay_epochs, num_cycles, cycle_decay, epoch_stair)
    elif scheduler == "linear":
        done = clock * steps_per_epoch if epoch_stair else after
        rates_ = rates.peak - (rates.peak - rates.final) * np.minimum(done / rest, 1.0)
    elif scheduler in ("multi_step_decay", "multistep"):
        rates_ = rates.peak * decay_rate ** np.searchsorted(np.sort(np.asarray(milestones, np.float64)), epoch,
                                                            side="right")
    elif scheduler in ("step_decay", "step"):
        if not decay_epochs:
            raise ValueError(f"{scheduler} needs decay_epochs")
        rates_ = rates.peak * decay_rate ** np.floor(epoch / decay_epochs)
    elif scheduler == "exponential_decay":
        rates_ = rates.peak * decay_rate ** clock
    elif scheduler == "polynomial_decay":
        span = epochs - (warmup_epochs if warmup_prefix else 0)
        rates_ = rates.peak * (1.0 - np.minimum(clock, span) / span) ** decay_rate
    else:
        raise ValueError(f"unknown scheduler {scheduler!r}")
    if warmup_steps > 0:
        done = np.floor(steps / steps_per_epoch) * steps_per_epoch if epoch_stair else steps
        rates_ = np.where(steps < warmup_steps, rates.start + (rates.peak - rates.start) * done / warmup_steps, rates_)
    return rates_.astype(np.float32)


def _one_cycle(rates: LearningRates, total: int) -> np.ndarray:
    """mindcv's ``one_cycle``: cosine up from ``peak / 25`` for 30% of the run, then down to ``final``."""
    start = rates.peak / 25.0
    steps = np.arange(total, dtype=np.float64)
    up, end = 0.3 * total - 1.0, total - 1.0
    rising = _anneal(start, rates.peak, steps / up)
    falling = _anneal(rates.peak, rates.final, (steps - up) / (end - up))
    return np.where(steps <= up, rising, falling).astype(np.float32)


def _anneal(start: float, end: float, fraction: np.ndarray) -> np.ndarray:
    return end + (start - end) / 2.0 * (np.cos(np.pi * fraction) + 1.0)


def _cyclic(rates: LearningRates, total: int, num_cycles: int) -> np.ndarray:
    """mindcv's ``cyclic``: ``num_cycles`` triangles between ``final`` and ``peak`` (its triangular mode)."""
    half = float(int(total / num_cycles / 2))
    steps = np.arange(total, dtype=np.float64)
    cycle = np.floor(1.0 + steps / (2.0 * half))
    x = 1.0 + steps / (2.0 * half) - cycle
    height = np.where(x <= 0.5, x / 0.5, (x - 1.0) / (0.5 - 1.0))
    return (rates.final + (rates.peak - rates.final) * height).astype(np.float32)


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
                       epoch_stair=config.lr_epoch_stair, warmup_prefix=config.warmup_prefix)
