"""Process setup shared by the entry points: context, seeds, distributed init, quiet exit."""
from __future__ import annotations

import logging
import os
import random
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..config import ConfigError
from ..models.threads import set_cpu_threads

_logger = logging.getLogger(__name__)

__all__ = ["Runtime", "setup_runtime", "setup_logging", "quiet_framework", "jit_config", "apply_jit_config",
           "say_jit_level", "SINK_BACKENDS",
           "AscendPrecision", "ascend_precision", "apply_ascend_precision", "refuse_what_the_soc_lacks",
           "say_ascend_precision", "direct_graph_dumps", "graph_compile_report"]


@dataclass
class Runtime:
    rank: int = 0
    group_size: int = 1
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


# MindSpore writes what a failed compile leaves (rank_N/om/analyze_fail.ir) under this folder, read when it
# fails; unset, that is the working directory.
GRAPH_DUMPS_VARIABLE = "MS_OM_PATH"
_graph_dumps_set_here: set = set()


def direct_graph_dumps(folder: Optional[str] = None) -> str:
    """Send MindSpore's graph dumps to ``folder`` (a run's ``ckpt_save_dir``), or to a temporary folder.

    A user's own ``MS_OM_PATH`` is kept. MindSpore creates the folder only when it writes a dump.

    Returns:
        The folder the dumps go to.
    """
    current = os.environ.get(GRAPH_DUMPS_VARIABLE)
    if current is not None and current not in _graph_dumps_set_here:
        return current
    path = os.path.abspath(folder) if folder else os.path.join(tempfile.gettempdir(), f"mindswin-graphs-{os.getpid()}")
    os.environ[GRAPH_DUMPS_VARIABLE] = path
    _graph_dumps_set_here.add(path)
    return path


def graph_compile_report(exc: BaseException) -> Optional[str]:
    """For an error MindSpore raised when a graph failed to compile: one line, what failed and where its report is.

    None for any other error.
    """
    text = str(exc)
    found = re.search(r"See file '([^']*analyze_fail\.ir)'", text)
    if found is None:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("-")]
    return (f"the graph failed to compile: {lines[0] if lines else type(exc).__name__}; MindSpore's report "
            f"(the failing line and its call stack): {found.group(1)}")


def quiet_framework() -> None:
    """Silence what a user would otherwise have to interpret.

    * MindSpore's INFO/WARNING log lines (GLOG_v=3 keeps errors), unless the user set
      GLOG_v themselves. MindSpore reads it when first imported: the commands set it on
      :mod:`mindswin.cli`'s first line, before any import; here it reaches only a process that
      has not imported MindSpore yet;
    * ``Exception ignored in: Cell.__del__`` tracebacks printed at interpreter exit, when
      MindSpore's module globals are torn down before the cells that reference them.
    """
    os.environ.setdefault("GLOG_v", "3")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    from mindspore import nn

    original_del = nn.Cell.__del__
    if getattr(original_del, "_mindswin_quiet", False):
        return

    def quiet_del(self):
        try:
            original_del(self)
        except Exception:  # noqa: BLE001 - only at interpreter teardown, nothing left to clean
            pass

    quiet_del._mindswin_quiet = True
    nn.Cell.__del__ = quiet_del


# Backends where MindSpore sinks data to the device (mindspore.data_sink refuses CPU).
SINK_BACKENDS = ("Ascend", "GPU")
_O2_DEPRECATED = ("jit_level O2 (whole-graph sink through the GE engine) is deprecated by MindSpore since 2.9 "
                  "and may be removed; offered as mindcv uses it. Measure O0/O1 against it (docs/ascend.md)")


def jit_config(config):
    """The ``mindspore.JitConfig`` of ``config.jit_level`` on Ascend, STRICT syntax; None on other backends.

    ``set_context(jit_config=...)`` is deprecated in MindSpore 2.10; a compiled cell takes its
    level from ``Cell.set_jit_config(JitConfig(...))`` instead. O0 and O1 run kernel by kernel
    (O1 adds MindSpore's automatic operator fusion); O2 sinks the whole graph (GE), deprecated
    since 2.9 but still in MindSpore, and what mindcv's published figures use. The CPU and GPU
    backends have one level and get nothing.

    The syntax level is STRICT, as :func:`setup_runtime` sets for the whole process: a cell
    would take the context's level anyway, but ``mindspore.data_sink`` compiles its function
    with ``jit(fullgraph=...)``, and ``fullgraph`` is True only for a JitConfig that says
    ``"STRICT"`` (``mindspore/train/data_sink.py``, ``_get_jit_func``): without it the sunk step
    would compile under LAX, where host fallbacks the rest of the run refuses pass silently.
    """
    if config.device_target != "Ascend":
        return None
    import mindspore as ms

    # the string: JitConfig takes "STRICT"/"LAX", not the context's ms.STRICT (an int)
    return ms.JitConfig(jit_level=config.jit_level, jit_syntax_level="STRICT")


def say_jit_level(config) -> None:
    """One line for jit_level O2: deprecated by MindSpore, and a no-op off Ascend."""
    if config.jit_level != "O2":
        return
    if config.device_target == "Ascend":
        _logger.warning(_O2_DEPRECATED)
    else:
        _logger.info("jit_level O2 is an Ascend compile level; %s compiles as at O0 and O1. %s",
                     config.device_target, _O2_DEPRECATED)


def apply_jit_config(cell, config):
    """Attach :func:`jit_config` to ``cell`` (a cell compiled as a whole: train step, model, EMA twin).

    A no-op off Ascend, and for a cell that already has a JitConfig (MindSpore ignores a
    second one with a warning). Returns ``cell``.
    """
    chosen = jit_config(config)
    if chosen is not None and not cell.jit_config_dict:
        cell.set_jit_config(chosen)
    return cell


@dataclass(frozen=True)
class AscendPrecision:
    """The operator-precision settings a run gives Ascend (``mindspore.device_context.ascend.op_precision``)."""

    precision_mode: str = "must_keep_origin_dtype"
    matmul_allow_hf32: bool = False
    conv_allow_hf32: bool = False


# MindSpore's name of the Ascend 910A SoC (MSContext.get_ascend_soc_version; 910B is "ascend910b").
ASCEND_910A = "ascend910"
# The 910A's precision mode. CANN's aclnnMatmul / aclnnBatchMatMul / aclnnMm pages: cubeMathType
# KEEP_DTYPE with float32 input "is not supported on Atlas training series products and raises an
# error"; ALLOW_FP32_DOWN_PRECISION computes it in float16 there. The card has no float32 cube
# path, so a float32 matmul either fails or runs in float16; MindSpore's own default on Atlas
# training series is this mode (op_precision.precision_mode's documentation).
_910A_PRECISION_MODE = "allow_fp32_to_fp16"


def refuse_what_the_soc_lacks(config, soc: Optional[str]) -> None:
    """Refuse, in one line before anything compiles, what ``config`` asks and the Ascend SoC ``soc`` cannot do.

    Raises:
        ConfigError: on a 910A (``ascend910``), ``amp_dtype bfloat16`` under O2 (no bfloat16
            units) or ``flash_attention`` (CANN's aclnnFlashAttentionScore: "Atlas training
            series products do not support this operator; Atlas A2 training series products do").
    """
    if soc != ASCEND_910A:
        return
    if config.amp_level == "O2" and config.amp_dtype == "bfloat16":
        raise ConfigError("amp_dtype bfloat16 needs an Ascend 910B or later: the 910A has no bfloat16 units; "
                          "use --amp_dtype float16 (with dynamic loss scaling) on this card")
    if config.flash_attention:
        raise ConfigError("flash_attention: CANN's FlashAttentionScore runs on Atlas A2 (910B) and not on this "
                          "Ascend 910A (Atlas training series); set flash_attention: False on this card")


def ascend_precision(config) -> AscendPrecision:
    """What ``config`` asks of Ascend's operator precision on the SoC it runs on.

    mindswin's mixed precision is explicit: under O2 each matmul cell casts to ``amp_dtype``
    and LayerNorm, softmax, the position bias and the loss stay float32; under O0 everything
    is float32. On a 910B (Atlas A2), which computes float32 matmuls in float32, a precision
    mode that lets the device lower them (``allow_fp32_to_fp16``, ``force_fp16``) or run them
    in HF32 would silently change both, so the run sets ``must_keep_origin_dtype`` and turns
    HF32 off for matmuls and convolutions, whatever the CANN or MindSpore default. A 910A has
    no float32 matmul: there it sets ``allow_fp32_to_fp16`` (MindSpore's default on that card),
    and the matmuls that stay float32 (all of them under O0) run in float16, which
    :func:`apply_ascend_precision` says.

    Raises:
        ConfigError: what the SoC cannot do (:func:`refuse_what_the_soc_lacks`).
    """
    soc = config_soc_version(config)
    refuse_what_the_soc_lacks(config, soc)
    if soc == ASCEND_910A:
        return AscendPrecision(precision_mode=_910A_PRECISION_MODE)
    return AscendPrecision()


def config_soc_version(config) -> Optional[str]:
    """The Ascend SoC this process runs on (``ascend910``, ``ascend910b``, ...), None off Ascend."""
    if config.device_target != "Ascend":
        return None
    from mindspore._c_expression import MSContext

    return MSContext.get_instance().get_ascend_soc_version()


def say_ascend_precision(config, settings: AscendPrecision) -> None:
    """One line where the card computes something other than what ``amp_level`` says: float32 matmuls
    in float16 (``allow_fp32_to_fp16``, the 910A). Nothing where every operator keeps its dtype."""
    if settings.precision_mode != _910A_PRECISION_MODE:
        return
    if config.amp_level == "O0":
        # the user asked for float32 and the card cannot give it to the matmuls: a warning
        _logger.warning("Ascend 910A: amp_level O0 computes every matmul in float16 on this card, not float32 "
                        "(CANN has no float32 matmul on Atlas training series; precision_mode %s, MindSpore's "
                        "default here); LayerNorm, softmax and the other vector operators stay float32",
                        settings.precision_mode)
    else:
        _logger.info("Ascend 910A: float32 matmuls run in float16 on this card (CANN has no float32 matmul on "
                     "Atlas training series; precision_mode %s, MindSpore's default here): under amp_level O2 "
                     "that is the position-bias MLP (the shifted-window mask product, small integers, stays "
                     "exact)", settings.precision_mode)


def apply_ascend_precision(config) -> Optional[AscendPrecision]:
    """Give Ascend the settings of :func:`ascend_precision` (before anything compiles); None off Ascend."""
    if config.device_target != "Ascend":
        return None
    from mindspore.device_context.ascend import op_precision

    settings = ascend_precision(config)
    op_precision.precision_mode(settings.precision_mode)
    op_precision.matmul_allow_hf32(settings.matmul_allow_hf32)
    op_precision.conv_allow_hf32(settings.conv_allow_hf32)
    say_ascend_precision(config, settings)
    return settings


def setup_logging(runtime: Optional[Runtime] = None, log_dir: Optional[str] = None) -> None:
    """INFO on the main rank's stdout; warnings and errors only, tagged with the rank, on the others'.

    With ``log_dir``, every rank also appends everything it logs (INFO and up) to
    ``log_dir/log_rank{rank}.txt``: on a cluster stdout is often lost.
    """
    runtime = runtime or Runtime()
    tag = f"[rank {runtime.rank}] " if runtime.distributed else ""
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.INFO if runtime.is_main else logging.WARNING)
    console.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(message)s", datefmt="%H:%M:%S"))
    handlers = [console]
    if log_dir:
        os.makedirs(log_dir, exist_ok=True)
        log_file = logging.FileHandler(os.path.join(log_dir, f"log_rank{runtime.rank}.txt"), encoding="utf-8")
        log_file.setFormatter(logging.Formatter(f"%(asctime)s %(levelname)s {tag}%(message)s"))  # with the date
        handlers.append(log_file)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def launched_by_msrun() -> bool:
    """Whether msrun (or an HCCL rank table) started this process as one rank of a group."""
    return "MS_WORKER_NUM" in os.environ or "RANK_TABLE_FILE" in os.environ


def evaluate_alone_unless_launched(config):
    """``distribute`` from a training recipe, in an evaluation not started by msrun: one device, said once.

    mindcv's ``validate.py`` takes a training recipe (``distribute: True``) as it is and
    evaluates in the one process it runs in; mindswin does the same instead of refusing.
    Returns the config to evaluate with.
    """
    if config.distribute and not launched_by_msrun():
        logging.getLogger("mindswin").info("distribute is True but this process was not started by msrun: "
                                           "evaluating on this one device")
        return config.replace(distribute=False)
    return config


def setup_runtime(config) -> Runtime:
    """Graph mode (STRICT syntax), device, seeds, and data-parallel communication."""
    import mindspore as ms
    import mindspore.dataset as ds

    ms.set_context(mode=ms.GRAPH_MODE, jit_syntax_level=ms.STRICT)
    try:
        ms.set_device(config.device_target)
    except RuntimeError as exc:
        raise ConfigError(f"device_target {config.device_target} is not available here "
                          f"({str(exc).strip().splitlines()[0]}); use --device_target CPU or a MindSpore build "
                          f"for {config.device_target}") from exc
    apply_ascend_precision(config)
    if config.device_target == "CPU":
        try:
            set_cpu_threads(int(os.environ.get("MS_WORKER_NUM", "1")) if config.distribute else 1)
        except RuntimeError:  # this process sized MindSpore's pool already (it can be set once)
            pass
    runtime = Runtime()
    if config.distribute:
        from mindspore.communication import get_group_size, get_rank, init

        if not launched_by_msrun():
            raise ConfigError("distribute is True but this process was not started by msrun; launch with "
                               "`msrun --worker_num N --local_worker_num N train.py ... --distribute True`")
        if config.hccl_buffsize:
            os.environ.setdefault("HCCL_BUFFSIZE", str(config.hccl_buffsize))
        init()
        runtime = Runtime(rank=get_rank(), group_size=get_group_size(), distributed=True)
        # MindSpore's own enable_parallel_optimizer shards only its built-in optimizers; mindswin's
        # optimizers shard themselves (engine/zero.py), so the context flag stays off.
        ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                     device_num=runtime.group_size)
    # Each rank draws its own DropPath masks and augmentations, as the official trainer
    # (seed + rank) does; replicas still start equal, from rank 0's weights (TrainState.broadcast).
    seed = config.seed + runtime.rank
    ms.set_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    ds.config.set_seed(seed)
    return runtime
