"""Per-kernel timing of the fused CPU kernels, one library per instruction set, side by side.

    python bench/kernel_bench.py [--march native znver3] [--shapes tiny small] [--repeats 7]

Builds ``mindswin/models/csrc/cpu_kernels.c`` once per ``--march`` value (``native`` is this
CPU; ``znver3`` is an AVX2-only AMD EPYC, the same as ``"native -mno-avx512f"`` on a Zen 4;
see ``MINDSWIN_KERNEL_MARCH`` in mindswin/models/kernel_library.py) and calls every entry point the
way MindSpore does (through ctypes), at the first-stage sizes of the two benchmark shapes of
bench/run_bench.py, on one thread (the library default on 2 cores). Libraries are called in
turn within each repeat, so their ratio is measured side by side; the time is the median.
Prints a table (ms per call, and each library's time over the first one's).
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from typing import Dict, List, Tuple

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (tokens, channels, heads, window tokens N, windows, bias windows) of the first stage
SHAPES = {
    "tiny": dict(tokens=8 * 64 * 64, channels=96, heads=3, n=64, windows=8 * 64, bias_windows=64),
    "small": dict(tokens=64 * 16 * 16, channels=48, heads=3, n=16, windows=64 * 16, bias_windows=16),
}


def build(march: str) -> str:
    """Path of the kernel library built for ``march`` (through kernel_library.py's cache); a ``.so`` path as is.

    A path compares another build (an older source, other flags) with the current one.
    """
    from mindswin.models import kernel_library

    if march.endswith(".so"):
        return march

    previous = os.environ.get(kernel_library.MARCH_ENV)
    os.environ[kernel_library.MARCH_ENV] = "" if march == "native" else march
    try:
        path = kernel_library.compiled_library.__wrapped__()
    finally:
        if previous is None:
            del os.environ[kernel_library.MARCH_ENV]
        else:
            os.environ[kernel_library.MARCH_ENV] = previous
    if path is None:
        raise SystemExit(f"could not build the kernels for {march}")
    return path


def cases(shape: str, rng: np.random.Generator) -> Dict[str, Tuple[List[np.ndarray], List[Tuple[int, ...]]]]:
    """Entry point -> (inputs, output shapes) at ``shape``'s first-stage sizes."""
    s = SHAPES[shape]
    m, c, h, n, w = s["tokens"], s["channels"], s["heads"], s["n"], s["windows"]
    d = c // h

    def normal(*dims, scale=1.0):
        return (rng.standard_normal(dims) * scale).astype(np.float32)

    x, hidden = normal(m, c), normal(m, 4 * c)
    logits = normal(w, h, n, n, scale=3.0)
    bias = normal(s["bias_windows"], h, n, n)
    e = np.exp(logits - logits.max(-1, keepdims=True))
    probs = (e / e.sum(-1, keepdims=True)).astype(np.float32)
    q, k = normal(w, h, n, d), normal(w, h, n, d)
    inverse = np.full((w, h, n, 1), 0.5, np.float32)
    scale = np.full((h, 1, 1), 10.0, np.float32)
    return {
        "LayerNormForward": ([x, normal(c), normal(c), np.array([1e-5], np.float32)], [(m, c), (m,), (m,)]),
        "LayerNormBackward": ([normal(m, c), x, normal(c), normal(m), np.abs(normal(m)) + 0.5], [(m, c), (c,), (c,)]),
        "GeluForward": ([hidden, normal(4 * c)], [(m, 4 * c)]),
        "GeluBackward": ([normal(m, 4 * c), hidden, normal(4 * c)], [(m, 4 * c), (4 * c,)]),
        "BiasAddForward": ([x, normal(c)], [(m, c)]),
        "BiasAddBackward": ([normal(m, c)], [(c,)]),
        "BiasSoftmaxForward": ([logits, bias], [logits.shape]),
        "BiasSoftmaxBackward": ([normal(*logits.shape), probs, bias], [logits.shape, bias.shape]),
        "QkvHeadsForward": ([normal(w, n, 3 * c), normal(c), normal(c), scale], [q.shape] * 3 + [inverse.shape] * 2),
        "QkvHeadsBackward": ([normal(*q.shape), normal(*q.shape), normal(*q.shape), q, k, inverse, inverse, scale],
                             [(w, n, 3 * c), (c,), (c,), (h, 1, 1)]),
    }


class Call:
    """One entry point of one library with its argument arrays prepared (MindSpore's aot convention)."""

    def __init__(self, library: ctypes.CDLL, name: str, inputs: List[np.ndarray], outputs: List[Tuple[int, ...]]):
        self.arrays = [np.ascontiguousarray(a) for a in inputs] + [np.empty(o, np.float32) for o in outputs]
        count = len(self.arrays)
        self.shapes = [(ctypes.c_int64 * max(a.ndim, 1))(*a.shape) for a in self.arrays]
        self.args = (count, (ctypes.c_void_p * count)(*[a.ctypes.data for a in self.arrays]),
                     (ctypes.c_int * count)(*[a.ndim for a in self.arrays]),
                     (ctypes.POINTER(ctypes.c_int64) * count)(
                         *[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in self.shapes]),
                     (ctypes.c_char_p * count)(*[b"float32"] * count), None, None)
        self.fn = getattr(library, name)

    def __call__(self) -> None:
        if self.fn(*self.args) != 0:
            raise RuntimeError("kernel failed")


def time_call(call: Call, budget_s: float = 0.05) -> float:
    """Seconds per call: the best of a few batches of calls filling ``budget_s``."""
    call()
    start = time.perf_counter()
    call()
    once = time.perf_counter() - start
    loops = max(1, int(budget_s / max(once, 1e-6)))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(loops):
            call()
        best = min(best, (time.perf_counter() - start) / loops)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--march", nargs="+", default=["native", "znver3"])
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES))
    parser.add_argument("--kernels", nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ["MINDSWIN_CPU_THREADS"] = str(args.threads)  # read by each library at its first large call
    libraries = [ctypes.CDLL(build(march)) for march in args.march]
    header = "| shape | kernel | " + " | ".join(f"{m} ms" for m in args.march) + " | " + \
        " | ".join(f"{m} / {args.march[0]}" for m in args.march[1:]) + " |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    totals = {m: 0.0 for m in args.march}
    for shape in args.shapes:
        for name, (inputs, outputs) in cases(shape, np.random.default_rng(0)).items():
            if args.kernels and name not in args.kernels:
                continue
            calls = [Call(library, name, inputs, outputs) for library in libraries]
            times: List[List[float]] = [[] for _ in calls]
            for _ in range(args.repeats):
                for i, call in enumerate(calls):  # side by side: every library in each repeat
                    times[i].append(time_call(call))
            medians = [statistics.median(t) * 1e3 for t in times]
            for m, value in zip(args.march, medians):
                totals[m] += value
            print(f"| {shape} | {name} | " + " | ".join(f"{t:.3f}" for t in medians) + " | " +
                  " | ".join(f"{t / medians[0]:.2f}" for t in medians[1:]) + " |", flush=True)
    print("| all | sum | " + " | ".join(f"{totals[m]:.2f}" for m in args.march) + " | " +
          " | ".join(f"{totals[m] / totals[args.march[0]]:.2f}" for m in args.march[1:]) + " |")


if __name__ == "__main__":
    main()
