"""Fused CPU kernels (MindSpore ``aot`` Custom ops) for the row-wise parts of a Swin V2 block.

MindSpore's CPU backend (2.10) runs LayerNorm, erf-GELU, bias adds, the q/k normalisation,
the softmax with its position bias and the CPB MLP either as one slow kernel
(``LayerNormGrad``: ~45 ms for a ``(32768, 96)`` tensor) or as chains of separate passes
whose broadcasts and short-axis reductions are themselves slow (docs/performance.md has the
measurements). ``csrc/cpu_kernels.c`` does each of them in one pass per row block (10x faster
for LayerNorm and GELU forward + backward, measured), and the gradients of the biases, the
attention temperature and the position bias come out of the same backward passes. It is
compiled once per machine type (:mod:`~mindswin.models.kernel_library` builds, caches and
chooses it), and every op here is a graph-mode ``ops.Custom(func_type="aot")``: no Python runs
per step. Each kernel checks the dtypes it is given at its boundary (float32, int32 indices)
and refuses others with status 2, which MindSpore raises as "Return value ... is 2".

The kernels keep IEEE inf/NaN semantics, so an inf or NaN anywhere in a step reaches the
gradients, where dynamic loss scaling detects it.

Only the CPU backend uses these; Ascend and GPU have fused native kernels and keep the
native ops, as does CPU when no compiler is found (with a warning naming the fix).
Each cell's ``bprop`` is the textbook derivative; tests/test_kernels.py checks values and
gradients against the native ops, kernel by kernel and for the whole model.
"""
from __future__ import annotations

import ctypes
import functools

import numpy as np
from mindspore import Tensor, nn, ops

from .kernel_library import compiled_library

__all__ = [
    "LayerNormKernel",
    "BiasAddKernel",
    "GeluKernel",
    "BiasSoftmaxKernel",
    "WindowBiasSoftmaxKernel",
    "QkvHeadsKernel",
    "AttentionKernel",
    "MaskedAttentionKernel",
    "attention_kernel_available",
    "ATTENTION_ROWS",
    "PositionBiasKernel",
]


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
    """GELU of ``x + bias`` (the bias of the preceding linear layer), float32: exact, or tanh-approximated.

    The backward pass recomputes the activation's derivative and also returns the bias gradient.

    Args:
        approximate: ``"none"`` (the erf GELU) or ``"tanh"`` (MindSpore ``nn.GELU``'s default).
    """

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        name = {"none": "Gelu", "tanh": "GeluTanh"}[approximate]
        self.forward_op = _custom(f"{name}Forward", lambda x, b: x, lambda x, b: x)
        self.backward_op = _custom(f"{name}Backward", lambda dy, x, b: (x, b), lambda dy, x, b: (x, x))

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


class WindowBiasSoftmaxKernel(BiasSoftmaxKernel):
    """``softmax(logits + (bias + mask))`` of a shifted block's windows, the ``(windows, heads, N, N)``
    sum of the position bias and the mask never built.

    ``logits`` is ``(B * windows, heads, N, N)``, ``bias`` ``(heads, N, N)`` (shared by every window
    and image), ``mask`` ``(windows, N, N)`` (shared by every head and image): each row adds its
    two rows. Backward: :class:`BiasSoftmaxKernel`'s with the position bias, whose gradient then
    sums over images and windows alike; the mask gets none.
    """

    def __init__(self) -> None:
        super().__init__()
        self.window_op = _custom("WindowBiasSoftmaxForward", lambda x, b, m: x, lambda x, b, m: x)
        self.zeros_like = ops.ZerosLike()

    def construct(self, logits: Tensor, bias: Tensor, mask: Tensor) -> Tensor:
        return self.window_op(logits, bias, mask)

    def bprop(self, logits: Tensor, bias: Tensor, mask: Tensor, out: Tensor, dout: Tensor):
        dlogits, dbias = self.backward_op(dout, out, bias)
        return dlogits, dbias, self.zeros_like(mask)


ATTENTION_ROWS = 64  # query rows the attention kernels compute at a time (csrc/cpu_kernels.c's #define)


@functools.cache
def attention_kernel_available() -> bool:
    """Whether :class:`AttentionKernel` can run here: the library built, and oneDNN's sgemm in
    the process (MindSpore loads ``libdnnl`` when imported)."""
    library = compiled_library()
    return library is not None and bool(ctypes.CDLL(library).MindswinAttentionAvailable())


class AttentionKernel(nn.Cell):
    """``softmax(q k^T + bias) v`` of every window and head, 64 query rows at a time, float32.

    ``q`` (unit, times the temperature), ``k`` (unit) and ``v`` are ``(B * windows, heads, N, D)``;
    ``bias`` ``(heads, N, N)`` is shared by every window and image. Neither the logits nor the
    probabilities are kept: the backward pass recomputes them block by block, so attention holds
    ``O(N * D)`` per window and head instead of ``O(N**2)`` (the probabilities of a stage-1 block
    of Swin V2-T at 1,024 px / window 32 are 805 MB). Backward: ``d_bias`` sums over images and
    windows.
    """

    def __init__(self) -> None:
        super().__init__()
        self.forward_op = _custom("AttentionForward", lambda q, k, v, b: v, lambda q, k, v, b: v)
        self.backward_op = _custom("AttentionBackward", lambda dy, q, k, v, b: (q, k, v, b),
                                   lambda dy, q, k, v, b: (q, q, q, q))

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        return self.forward_op(q, k, v, bias)

    def bprop(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, out: Tensor, dout: Tensor):
        return self.backward_op(dout, q, k, v, bias)


class MaskedAttentionKernel(AttentionKernel):
    """:class:`AttentionKernel` of a shifted block: ``softmax(q k^T + (bias + mask)) v``.

    The ``(windows, N, N)`` mask is given by its ``(2, windows, N, F)`` factors
    (:func:`~mindswin.models.swin_v2.shifted_window_mask_factors`) and made 64 rows at a time;
    the factors, a constant, get no gradient.
    """

    def __init__(self) -> None:
        super().__init__()
        self.forward_op = _custom("MaskedAttentionForward", lambda q, k, v, b, f: v, lambda q, k, v, b, f: v)
        self.backward_op = _custom("MaskedAttentionBackward", lambda dy, q, k, v, b, f: (q, k, v, b),
                                   lambda dy, q, k, v, b, f: (q, q, q, q))
        self.zeros_like = ops.ZerosLike()

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, factors: Tensor) -> Tensor:
        return self.forward_op(q, k, v, bias, factors)

    def bprop(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, factors: Tensor, out: Tensor, dout: Tensor):
        dq, dk, dv, dbias = self.backward_op(dout, q, k, v, bias, factors)
        return dq, dk, dv, dbias, self.zeros_like(factors)


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
