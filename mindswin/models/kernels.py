"""Fused CPU kernels (MindSpore ``aot`` Custom ops) for the row-wise parts of a Swin V2 block.

MindSpore's CPU backend (2.10) runs LayerNorm, erf-GELU, bias adds, the q/k normalisation,
the softmax with its position bias and the CPB MLP either as one slow kernel
(``LayerNormGrad``: ~45 ms for a ``(32768, 96)`` tensor) or as chains of separate passes
whose broadcasts and short-axis reductions are themselves slow (docs/performance.md has the
measurements). ``csrc/cpu_kernels.c`` does each of them in one pass per row block (10x faster
for LayerNorm and GELU forward + backward, measured), and the gradients of the biases, the
attention temperature and the position bias come out of the same backward passes. It is
compiled once per machine type with the system C compiler (:data:`COMPILE_FLAGS`) into a cache
directory, and every op here is a graph-mode ``ops.Custom(func_type="aot")``: no Python runs
per step.

The kernels keep IEEE inf/NaN semantics (no ``-ffast-math``, which lets the compiler assume
there are none): dynamic loss scaling detects an overflow by the inf/NaN it leaves in the
gradients, so an inf or NaN anywhere in a step must reach them.

Only the CPU backend uses these; Ascend and GPU have fused native kernels and keep the
native ops, as does CPU when no compiler is found (with a warning naming the fix).
Each cell's ``bprop`` is the textbook derivative; tests/test_kernels.py checks values and
gradients against the native ops, kernel by kernel and for the whole model.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = [
    "use_cpu_kernels",
    "cpu_kernels",
    "compiled_library",
    "LayerNormKernel",
    "BiasAddKernel",
    "GeluKernel",
    "BiasSoftmaxKernel",
    "QkvHeadsKernel",
    "PositionBiasKernel",
]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.c"
# Every flag keeps inf/NaN semantics. -fassociative-math (which needs -fno-signed-zeros and
# -fno-trapping-math) lets sums vectorise by reordering them; -fno-math-errno makes sqrtf one
# instruction. Not -ffast-math: its -ffinite-math-only assumes there is no inf or NaN (and
# folds isnan() away), and GCC < 13 then also links crtfastmath.o into the library, which
# turns on flush-to-zero in the process that loads it.
COMPILE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
                 "-fassociative-math", "-fopenmp-simd", "-shared", "-fPIC")
LINK_FLAGS = ("-lpthread", "-lm")
# Benchmarking and testing only: build for another instruction set than this CPU's, e.g.
# ``MINDSWIN_KERNEL_MARCH=znver3`` (an AVX2 AMD EPYC), ``x86-64-v3`` (any AVX2 x86-64) or
# ``"native -mno-avx512f"``: the first word replaces ``native`` in ``-march=native``, the rest
# (``-m`` flags only) follow it. Keyed into the cache like any other flag. A target the CPU
# cannot run crashes the process with an illegal instruction: users leave this unset.
MARCH_ENV = "MINDSWIN_KERNEL_MARCH"

_forced: Optional[bool] = None


@contextlib.contextmanager
def cpu_kernels(enabled: bool) -> Iterator[None]:
    """Force the fused CPU kernels on or off for cells built inside the block.

    Used by MindIR export, whose files must not depend on a machine-local library, and by
    tests that compare both variants on CPU.
    """
    global _forced
    previous, _forced = _forced, enabled
    try:
        yield
    finally:
        _forced = previous


def use_cpu_kernels() -> bool:
    """Whether cells built now should use the fused CPU kernels."""
    if _forced is not None:
        return _forced
    return ms.get_context("device_target") == "CPU" and compiled_library() is not None


def _cache_dir() -> Path:
    root = os.environ.get("MINDSWIN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mindswin")
    return Path(root)


def _march_flags() -> tuple:
    """``-march=native``, or the target ``$MINDSWIN_KERNEL_MARCH`` names (see :data:`MARCH_ENV`)."""
    override = os.environ.get(MARCH_ENV, "").strip()
    if not override:
        return ("-march=native",)
    first, *rest = shlex.split(override)
    if first.startswith("-") or not all(flag.startswith("-m") and not flag.startswith("-march") for flag in rest):
        raise ValueError(f"{MARCH_ENV}={override!r}: expected an -march value followed by -m flags, "
                         "e.g. 'znver3' or 'native -mno-avx512f'")
    return (f"-march={first}", *rest)


def compile_flags() -> tuple:
    """:data:`COMPILE_FLAGS` with the target of :func:`_march_flags`."""
    march = _march_flags()
    return tuple(flag for part in COMPILE_FLAGS for flag in (march if part == "-march=native" else (part,)))


def _isa_fingerprint(compiler: str, march: tuple = ("-march=native",)) -> str:
    """The instruction set ``march`` (``-march=native``) stands for on this machine, as the compiler resolves it.

    A cache directory shared by machines of different types (an AVX-512 and an AVX2 one on
    a network home) must not hand one a library built for the other, which would crash
    with an illegal instruction. The compiler's driver (``-###``) prints the target it
    passes on: GCC's ``-march=<cpu>``, ``-mtune`` and one ``-m[no-]<feature>`` per ISA
    extension, plus its cache-size tuning; clang's ``-target-cpu`` and ``-target-feature``
    list. If that fails, the CPU's feature flags from ``/proc/cpuinfo`` stand in.
    """
    try:
        result = subprocess.run([compiler, *march, "-###", "-E", "-"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60, check=False)
        driver = result.stderr if result.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        driver = ""
    target = []
    for line in driver.splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError:  # not a command line (an unbalanced quote in a banner)
            continue
        for previous, token in zip([""] + tokens, tokens):
            if token.startswith("-m") or previous in ("--param", "-target-cpu", "-tune-cpu", "-target-feature"):
                target.append(token)
    if any(token.startswith("-march=") for token in target) or "-target-cpu" in driver:
        return " ".join(target)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    # x86 calls the feature line "flags", arm64 "Features"
    return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")


def _machine_key(compiler: str) -> str:
    """Source, flags, compiler and instruction set: anything that changes the binary."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    isa = _isa_fingerprint(compiler, _march_flags())
    for part in (" ".join(compile_flags() + LINK_FLAGS), version, platform.machine(), isa):
        digest.update(part.encode() + b"\0")  # separated, so no two lists of parts hash alike
    return digest.hexdigest()[:16]


class _BuildError(RuntimeError):
    """The compiler ran and failed; the message is its stderr."""


@functools.cache
def compiled_library() -> Optional[str]:
    """Path of the compiled kernel library, building it on first use; None if it cannot be built.

    The compiler is ``$CC`` or the first of gcc / cc found. The build is written with
    :func:`~mindswin.fileio.atomic_write`, so concurrent processes (msrun workers)
    never load a partial file.
    """
    from ..fileio import atomic_write

    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        logger.warning("no C compiler found (set CC or install gcc): mindswin uses MindSpore's native CPU "
                       "kernels for LayerNorm/GELU/softmax/L2-normalise, which are several times slower")
        return None
    target = _cache_dir() / f"cpu_kernels-{_machine_key(compiler)}.so"
    if target.exists():
        return str(target)

    def build(path: str) -> None:
        result = subprocess.run([compiler, *compile_flags(), "-o", path, str(SOURCE), *LINK_FLAGS],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise _BuildError(result.stderr[-2000:])

    try:
        atomic_write(str(target), build)
    except _BuildError as exc:
        logger.warning("building the fused CPU kernels with %s failed; using MindSpore's native kernels:\n%s",
                       compiler, exc)
        return None
    except OSError as exc:
        logger.warning("cannot write the fused CPU kernels to %s (%s); set MINDSWIN_CACHE_DIR to a writable "
                       "folder. Using MindSpore's native kernels", target.parent, exc)
        return None
    return str(target)


def _custom(name: str, out_shape, out_dtype) -> ops.Custom:
    return ops.Custom(f"{compiled_library()}:{name}", out_shape=out_shape, out_dtype=out_dtype, func_type="aot")


class LayerNormKernel(nn.Cell):
    """LayerNorm over the last axis (float32); returns ``(y, mean, rstd)`` like ``ops.LayerNorm``.

    The statistics (shape ``x.shape[:-1]``) are kept for the backward pass.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = Tensor(np.array([eps], np.float32))
        self.forward_op = _custom("LayerNormForward", lambda x, w, b, e: (x, x[:-1], x[:-1]),
                                  lambda x, w, b, e: (x, x, x))
        self.backward_op = _custom("LayerNormBackward", lambda dy, x, w, m, r: (x, w, w),
                                   lambda dy, x, w, m, r: (x, x, x))

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor):
        return self.forward_op(x, weight, bias, self.eps)

    def bprop(self, x: Tensor, weight: Tensor, bias: Tensor, out, dout):
        return self.backward_op(dout[0], x, weight, out[1], out[2])


class BiasAddKernel(nn.Cell):
    """``x + bias`` over the last axis; the bias gradient is the column sums of ``dy``."""

    def __init__(self) -> None:
        super().__init__()
        self.forward_op = _custom("BiasAddForward", lambda x, b: x, lambda x, b: x)
        self.backward_op = _custom("BiasAddBackward", lambda dy: dy[-1:], lambda dy: dy)

    def construct(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.forward_op(x, bias)

    def bprop(self, x: Tensor, bias: Tensor, out: Tensor, dout: Tensor):
        return dout, self.backward_op(dout)


class GeluKernel(nn.Cell):
    """Exact GELU of ``x + bias`` (the bias of the preceding linear layer), float32.

    The backward pass recomputes ``Phi(x + bias)`` and also returns the bias gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        self.forward_op = _custom("GeluForward", lambda x, b: x, lambda x, b: x)
        self.backward_op = _custom("GeluBackward", lambda dy, x, b: (x, b), lambda dy, x, b: (x, x))

    def construct(self, x: Tensor, bias: Tensor) -> Tensor:
        return self.forward_op(x, bias)

    def bprop(self, x: Tensor, bias: Tensor, out: Tensor, dout: Tensor):
        return self.backward_op(dout, x, bias)


class BiasSoftmaxKernel(nn.Cell):
    """``softmax(logits + bias)`` over the last axis, the bias shared by every image.

    ``logits`` is ``(B, ...)`` with ``bias.size`` elements per image (position bias, plus
    the shifted-window mask); rows of the last axis are softmaxed. Backward: ``dx = y * (dy
    - sum(dy * y))`` and ``d_bias`` = its sum over images, in the same pass.
    """

    def __init__(self) -> None:
        super().__init__()
        self.forward_op = _custom("BiasSoftmaxForward", lambda x, b: x, lambda x, b: x)
        self.backward_op = _custom("BiasSoftmaxBackward", lambda dy, y, b: (y, b), lambda dy, y, b: (y, y))

    def construct(self, logits: Tensor, bias: Tensor) -> Tensor:
        return self.forward_op(logits, bias)

    def bprop(self, logits: Tensor, bias: Tensor, out: Tensor, dout: Tensor):
        return self.backward_op(dout, out, bias)


class QkvHeadsKernel(nn.Cell):
    """Split the fused projection ``(B, N, 3C)`` into attention-ready heads ``(B, H, N, D)``.

    Returns ``(q, k, v, 1/||q + q_bias||, 1/||k||)`` with ``q = s_h * unit(q + q_bias)``,
    ``k = unit(k)``, ``v = v + v_bias``; ``unit(x) = x / max(||x||, 1e-12)`` over D and ``s``
    the ``(H, 1, 1)`` attention temperature (folded into the queries). Backward, per row with
    ``r`` the inverse norm and ``dot = sum(dy * y)``: ``dx = r * s * (dy - y * dot / s**2)``
    (``r * s * dy`` where the norm is clamped; norms within a factor 2 of the clamp count as
    clamped) and ``ds = sum(dot) / s``.
    """

    def __init__(self) -> None:
        super().__init__()

        def heads_shape(qkv, scale):
            heads = int(np.prod(scale))
            return (qkv[0], heads, qkv[1], qkv[2] // 3 // heads)

        def forward_shapes(qkv, q_bias, v_bias, scale):
            shape = heads_shape(qkv, scale)
            return shape, shape, shape, shape[:3] + (1,), shape[:3] + (1,)

        def backward_shapes(dq, dk, dv, q, k, rq, rk, scale):
            return (dq[0], dq[2], 3 * dq[1] * dq[3]), (dq[1] * dq[3],), (dq[1] * dq[3],), tuple(scale)

        self.forward_op = _custom("QkvHeadsForward", forward_shapes, lambda x, qb, vb, s: (x,) * 5)
        self.backward_op = _custom("QkvHeadsBackward", backward_shapes, lambda *args: (args[0],) * 4)

    def construct(self, qkv: Tensor, q_bias: Tensor, v_bias: Tensor, scale: Tensor):
        return self.forward_op(qkv, q_bias, v_bias, scale)

    def bprop(self, qkv: Tensor, q_bias: Tensor, v_bias: Tensor, scale: Tensor, out, dout):
        q, k, _, inverse_q, inverse_k = out
        return self.backward_op(dout[0], dout[1], dout[2], q, k, inverse_q, inverse_k, scale)


class PositionBiasKernel(nn.Cell):
    """``16 * sigmoid(cpb_mlp(coords))`` gathered to ``(heads, N, N)``: the whole CPB MLP in one op.

    Args:
        coords_table: ``(T, 2)`` log-spaced relative coordinates.
        index: ``(N * N,)`` row of the table for every (query, key) pair.
        window_area: ``N``.

    Inputs are the MLP's parameters ``(512, 2)`` weight, ``(512,)`` bias, ``(heads, 512)``
    weight; returns ``(bias, hidden activations)``, the latter kept for the backward pass.
    """

    def __init__(self, coords_table: np.ndarray, index: np.ndarray, window_area: int) -> None:
        super().__init__()
        self.table = Tensor(coords_table.astype(np.float32))
        self.index = Tensor(index.astype(np.int32))
        self.forward_op = _custom(
            "CpbBiasForward",
            lambda t, w1, b1, w2, i: ((w2[0], window_area, window_area), (t[0], w1[0])),
            lambda t, w1, b1, w2, i: (t, t))
        self.backward_op = _custom(
            "CpbBiasBackward",
            lambda db, b, t, h, w2, i: ((h[1], 2), (h[1],), tuple(w2)),
            lambda db, b, t, h, w2, i: (db, db, db))

    def construct(self, weight1: Tensor, bias1: Tensor, weight2: Tensor):
        return self.forward_op(self.table, weight1, bias1, weight2, self.index)

    def bprop(self, weight1: Tensor, bias1: Tensor, weight2: Tensor, out, dout):
        return self.backward_op(dout[0], out[0], self.table, out[1], weight2, self.index)
