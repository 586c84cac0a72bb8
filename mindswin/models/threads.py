"""CPU threads: MindSpore's intra-op kernel pool and the fused mindswin kernels, sized per machine."""
from __future__ import annotations

import os

import mindspore as ms

__all__ = ["set_cpu_threads", "default_cpu_threads"]


# MindSpore's own default for the pool (MsContext): min(std::thread::hardware_concurrency(), 30).
# The documentation of op_tuning.threads_num says 25; on this project's 2-core machine
# get_context("runtime_num_threads") reads 2.
_MINDSPORE_DEFAULT_CAP = 30


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def set_cpu_threads(processes: int = 1) -> int:
    """Size MindSpore's CPU kernel thread pool (and the fused mindswin kernels') for this machine.

    MindSpore sizes its pool to min(cores, 30) whatever the workload. Its runtime already runs
    independent kernels of a graph concurrently (the forward of one branch beside the
    backward of another), so half the cores per process for intra-op parallelism is the
    better split: measured on 2 cores (1 thread vs MindSpore's default, 2 there), the 32-px
    benchmark model trains at 212-236 vs 155-195 img/s, and Swin-T at 256 px is the same
    with 1 or 2 threads (3.7-4.0 img/s). ``$MINDSWIN_CPU_THREADS``, when set, sizes the fused
    kernels instead.

    Args:
        processes: Processes sharing this machine (msrun workers).

    Returns:
        The thread count set.

    Raises:
        RuntimeError: MindSpore's pool was sized already (it can be set once per process).
    """
    from mindspore.device_context.cpu import op_tuning

    threads = max(1, _cores() // (2 * max(1, processes)))
    op_tuning.threads_num(threads)
    os.environ.setdefault("MINDSWIN_CPU_THREADS", str(threads))
    return threads


def context_threads_set_by_user() -> bool:
    """Whether the process sized the pool with the deprecated ``set_context(runtime_num_threads=N)``.

    MindSpore keeps no record of that call; a value other than its default (min(cores, 30),
    counted as ``os.cpu_count()``, i.e. ``std::thread::hardware_concurrency()``) is taken as
    the user's. A user who sets exactly the default is indistinguishable from none (and gets
    the tuned pool).
    """
    default = min(os.cpu_count() or 1, _MINDSPORE_DEFAULT_CAP)
    return int(ms.get_context("runtime_num_threads")) != default


def default_cpu_threads() -> None:
    """Give a CPU process whose thread pool nobody sized the tuned default (models call it when built).

    A library user who builds a model in their own script would otherwise run with
    MindSpore's min(cores, 30) threads; one who sized the pool (``op_tuning.threads_num``, or
    ``set_context(runtime_num_threads=N)``), or an entry script that did, keeps that choice,
    and the fused kernels follow a ``runtime_num_threads`` they can read (else they use every core,
    or ``$MINDSWIN_CPU_THREADS``).
    """
    if ms.get_context("device_target") != "CPU":
        return
    if context_threads_set_by_user():
        os.environ.setdefault("MINDSWIN_CPU_THREADS", str(max(1, int(ms.get_context("runtime_num_threads")))))
        return
    try:
        set_cpu_threads()
    except RuntimeError:  # sized already: the user's (or train.py's) choice stands
        pass
