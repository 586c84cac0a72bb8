"""CPU threads: MindSpore's intra-op kernel pool and the fused mindswin kernels, sized per machine."""
from __future__ import annotations

import os

import mindspore as ms

__all__ = ["set_cpu_threads", "default_cpu_threads"]


def set_cpu_threads(processes: int = 1) -> int:
    """Size MindSpore's CPU kernel thread pool (and the fused mindswin kernels') for this machine.

    MindSpore defaults to 25 intra-op threads whatever the machine. Its runtime already runs
    independent kernels of a graph concurrently (the forward of one branch beside the
    backward of another), so half the cores per process for intra-op parallelism is the
    better split: measured on 2 cores (1 thread vs 2 vs the default 25), the 32-px benchmark
    model trains at 212-236 vs 155-195 vs 146-173 img/s, and Swin-T at 256 px is the same
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

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = max(1, cores // (2 * max(1, processes)))
    op_tuning.threads_num(threads)
    os.environ.setdefault("MINDSWIN_CPU_THREADS", str(threads))
    return threads


def default_cpu_threads() -> None:
    """Give a CPU process whose thread pool nobody sized the tuned default (models call it when built).

    A library user who builds a model in their own script would otherwise run with
    MindSpore's 25 threads; one who sized the pool (``op_tuning.threads_num``), or an entry
    script that did, keeps that choice.
    """
    if ms.get_context("device_target") != "CPU":
        return
    try:
        set_cpu_threads()
    except RuntimeError:  # sized already: the user's (or train.py's) choice stands
        pass
