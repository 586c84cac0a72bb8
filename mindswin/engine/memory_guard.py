"""Memory predicted before anything compiles: a step that would not fit is refused (training) or split (evaluation).

The memory plan (:mod:`mindswin.memory_plan`) predicts a step's peak from the architecture;
this module compares it with what the run has:

* ``MINDSWIN_MEMORY_BUDGET`` (bytes, or a number with ``K``/``M``/``G``/``T``, binary), when set:
  for a run that shares its machine, and for tests;
* on CPU, the host memory this process can still take (``MemAvailable``, and the cgroup's
  limit less its usage where one is set) plus what it already holds;
* on Ascend, the card's memory (``memory_plan.DEVICES`` by SoC).

Elsewhere (GPU, an unknown SoC) nothing is predicted. The plan is within about 15% of the
measured peaks (docs/memory_plan_check.md), so a run the plan puts just under its budget can
still run short; one it puts over is refused before it costs a compile.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Dict, NamedTuple, Optional

from ..checkpoint.metadata import ARCHITECTURE_KEYS
from ..config import Config, ConfigError
from ..data import resolve_data_config
from ..memory_plan import DEVICES, GIB, largest_batch, model_arguments, plan_inference_memory, plan_memory
from .runtime import ASCEND_910A, config_soc_version

__all__ = ["BUDGET_VARIABLE", "MemoryBudget", "memory_budget", "check_training_fits", "evaluation_batch_size"]

_logger = logging.getLogger("mindswin")

BUDGET_VARIABLE = "MINDSWIN_MEMORY_BUDGET"
_UNITS = {"": 1, "K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


class MemoryBudget(NamedTuple):
    """Bytes one step may use, and where the figure comes from (for the message)."""

    bytes: int
    source: str


def _parse_bytes(text: str) -> int:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ConfigError(f"{BUDGET_VARIABLE}={text!r} is not a size: give bytes or a number with K, M, G or T "
                          f"(e.g. {BUDGET_VARIABLE}=20G), or unset it")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def _read_int(path: str) -> Optional[int]:
    try:
        with open(path) as file:
            text = file.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def _meminfo_available() -> Optional[int]:
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _cgroup_room() -> Optional[int]:
    """What the process's cgroup still allows (v2, else v1), None without a limit."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        # v1 reports "no limit" as a huge number rather than "max"
        if limit is not None and usage is not None and limit < 2 ** 60:
            return max(0, limit - usage)
    return None


def _host_budget() -> Optional[MemoryBudget]:
    available, cgroup = _meminfo_available(), _cgroup_room()
    if available is None and cgroup is None:
        return None
    if cgroup is not None and (available is None or cgroup < available):
        room, source = cgroup, "the memory its cgroup still allows"
    else:
        room, source = available, "the host's available memory"
    return MemoryBudget(room + _resident_bytes(), f"this process's {source} plus what it holds")


def _ascend_budget(config: Config) -> Optional[MemoryBudget]:
    soc = config_soc_version(config) or ""
    card = "910A" if soc == ASCEND_910A else "910B" if soc.startswith("ascend910b") else None
    if card is None:
        return None
    return MemoryBudget(DEVICES[card], f"an Ascend {card}'s memory")


def memory_budget(config: Config) -> Optional[MemoryBudget]:
    """What one step of this run may use (see the module docstring); None where nothing is known."""
    variable = os.environ.get(BUDGET_VARIABLE)
    if variable:
        return MemoryBudget(_parse_bytes(variable), BUDGET_VARIABLE)
    if config.device_target == "CPU":
        return _host_budget()
    if config.device_target == "Ascend":
        return _ascend_budget(config)
    return None


def _plan_arguments(config: Config) -> Dict[str, Any]:
    declared = {key: getattr(config, key) for key in ARCHITECTURE_KEYS if getattr(config, key) is not None}
    return model_arguments(config.model, img_size=resolve_data_config(config).image_size,
                           window_size=config.window_size, sequential_attention=config.sequential_attention,
                           sequential_attention_heads=config.sequential_attention_heads, **declared)


def _backend(config: Config) -> str:
    return "cpu" if config.device_target == "CPU" else "ascend"


def _gib(size: int) -> str:
    return f"{size / GIB:.1f} GiB"


def check_training_fits(config: Config, group_size: int) -> None:
    """Refuse, before anything compiles, a training step the memory plan puts over the budget.

    Raises:
        ConfigError: one line with the prediction, the budget, the largest batch that fits and the fixes.
    """
    budget = memory_budget(config)
    if budget is None:
        return
    zero_ranks = group_size if config.enable_parallel_optimizer and group_size > 1 else 1
    options = dict(amp_level=config.amp_level, zero_ranks=zero_ranks, ema=config.ema, backend=_backend(config))
    model_args = _plan_arguments(config)
    plan = plan_memory(model_args, batch_size=config.batch_size, recompute=config.recompute, **options)
    if plan.total <= budget.bytes:
        _logger.debug("memory plan: %s of %s (%s)", _gib(plan.total), _gib(budget.bytes), budget.source)
        return
    fits = largest_batch(model_args, budget.bytes, limit=config.batch_size, recompute=config.recompute, **options)
    with_recompute = (largest_batch(model_args, budget.bytes, limit=config.batch_size, recompute=True, **options)
                      if not config.recompute else fits)
    fixes = [f"--batch_size {fits} with --gradient_accumulation_steps "
             f"{-(-config.batch_size * config.gradient_accumulation_steps // fits)} (the same global batch)"
             if fits else "a smaller model or image size"]
    if not config.recompute and with_recompute > fits:
        fixes.append(f"--recompute True (fits batch {with_recompute})")
    if not config.sequential_attention:
        fixes.append("--sequential_attention N (windows per attention group)")
    raise ConfigError(f"one training step of {config.model} at batch_size {config.batch_size} needs about "
                      f"{_gib(plan.total)} by the memory plan (activations {_gib(plan.activations)}, attention "
                      f"{_gib(plan.attention)}), more than the {_gib(budget.bytes)} of {budget.source}: the largest "
                      f"batch that fits is {fits}; use {' or '.join(fixes)}")


def evaluation_batch_size(config: Config, batch_size: int) -> int:
    """``batch_size``, or the largest evaluation batch the budget holds (said in one line) when it is less.

    Evaluation's result does not depend on its batch (the weighted sums over padded batches are
    the same), so a batch that would not fit is split rather than refused.

    Raises:
        ConfigError: not even one image fits.
    """
    budget = memory_budget(config)
    if budget is None:
        return batch_size
    model_args = _plan_arguments(config)
    options = dict(amp_level=config.amp_level, backend=_backend(config))
    plan = plan_inference_memory(model_args, batch_size=batch_size, **options)
    if plan.total <= budget.bytes:
        return batch_size
    fits = largest_batch(model_args, budget.bytes, limit=batch_size, planner=plan_inference_memory, **options)
    if not fits:
        one = plan_inference_memory(model_args, batch_size=1, **options).total
        raise ConfigError(f"evaluating {config.model} needs about {_gib(one)} for one image by the memory plan, more "
                          f"than the {_gib(budget.bytes)} of {budget.source}: free memory, or evaluate a smaller "
                          "image size")
    _logger.info("evaluating in batches of %d: batch_size %d needs about %s by the memory plan, more than the %s "
                 "of %s (the result does not depend on the batch)", fits, batch_size, _gib(plan.total),
                 _gib(budget.bytes), budget.source)
    return fits
