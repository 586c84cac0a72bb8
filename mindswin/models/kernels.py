"""Graph building blocks written for MindSpore's CPU kernels, with native fallbacks elsewhere.

Measured on the CPU backend (MindSpore 2.10, float32, one thread), for the tensors of a
Swin V2 block:

* a reduction over a short last axis (``ReduceSum`` of ``(49152, 16)`` over 16) takes
  ~3 ms, the same sum as a matmul with a ones column ~0.4 ms;
* a broadcasting binary op (``(M, 16) * (M, 1)`` or ``(M, 16) * (16,)``) costs 3-5x a
  same-shape one; broadcasting a column by a matmul with a ones row, or a row with
  ``broadcast_to``, first is faster than the fused broadcast;
* reducing a 4-D gradient over its three leading axes (a bias added to ``(B, H, W, C)``)
  is ~20x slower than the same reduction over axis 0 of the ``(B*H*W, C)`` view;
* ``LayerNormGrad`` takes ~10 ms for ``(16384, 48)``; the gradient of erf-GELU is built
  from ``Pow``/``Div``/``Erf`` nodes.

So on CPU the sums and broadcasts over the last axis are matmuls, and LayerNorm, exact
GELU, softmax and the L2 normalisation carry hand-written backward passes built from the
same pieces (each is the textbook derivative; ``tests/test_model.py`` checks values and
gradients against the native ops). Other backends (Ascend, GPU) have fused kernels for all
of these and use the native ops: :func:`use_cpu_kernels` decides once, when a cell is built.
"""
from __future__ import annotations

import math
from typing import Optional

import mindspore as ms
from mindspore import Tensor, nn, ops

__all__ = [
    "use_cpu_kernels",
    "force_cpu_kernels",
    "sum_last",
    "expand_last",
    "LayerNormKernel",
    "GeluKernel",
    "SoftmaxKernel",
    "L2NormalizeKernel",
]

# F.normalize's epsilon, squared because the squared norm is clamped.
L2_EPS_SQUARED = 1e-24
# 1 / norm above this means the norm was clamped (1 / 1e-12, with margin for rounding).
CLAMPED_INVERSE_NORM = 0.5e12
SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)

_forced: Optional[bool] = None


def force_cpu_kernels(enabled: Optional[bool]) -> None:
    """Override the backend choice for cells built afterwards (None: decide by backend).

    Used by tests to build the native-op variant on CPU and compare the two.
    """
    global _forced
    _forced = enabled


def use_cpu_kernels() -> bool:
    """Whether cells built now should use the CPU formulations of this module."""
    if _forced is not None:
        return _forced
    return ms.get_context("device_target") == "CPU"


def sum_last(x: Tensor, by_matmul: bool) -> Tensor:
    """Sum over the last axis, keeping it (size 1)."""
    if not by_matmul:
        return x.sum(axis=-1, keepdims=True)
    width = x.shape[-1]
    ones = ops.ones((width, 1), x.dtype)
    return ops.matmul(x.reshape(-1, width), ones).reshape(x.shape[:-1] + (1,))


def expand_last(column: Tensor, width: int, by_matmul: bool) -> Tensor:
    """Repeat a size-1 last axis ``width`` times."""
    if not by_matmul:
        return ops.broadcast_to(column, column.shape[:-1] + (width,))
    ones = ops.ones((1, width), column.dtype)
    return ops.matmul(column.reshape(-1, 1), ones).reshape(column.shape[:-1] + (width,))


class LayerNormKernel(nn.Cell):
    """LayerNorm of a 2-D ``(M, C)`` input: returns ``(y, mean, rstd)``; CPU only.

    The statistics are returned so the backward pass does not recompute them.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def _normalized(self, x: Tensor, mean: Tensor, rstd: Tensor) -> Tensor:
        width = x.shape[-1]
        return (x - expand_last(mean, width, True)) * expand_last(rstd, width, True)

    def construct(self, x: Tensor, weight: Tensor, bias: Tensor):
        width = x.shape[-1]
        mean = sum_last(x, True) * (1.0 / width)
        centred = x - expand_last(mean, width, True)
        variance = sum_last(centred * centred, True) * (1.0 / width)
        rstd = ops.rsqrt(variance + self.eps)
        normalized = centred * expand_last(rstd, width, True)
        y = normalized * ops.broadcast_to(weight, x.shape) + ops.broadcast_to(bias, x.shape)
        return y, mean, rstd

    def bprop(self, x: Tensor, weight: Tensor, bias: Tensor, out, dout):
        mean, rstd = out[1], out[2]
        dy = dout[0]
        width = x.shape[-1]
        normalized = self._normalized(x, mean, rstd)
        d_weight = (dy * normalized).sum(axis=0)
        d_bias = dy.sum(axis=0)
        g = dy * ops.broadcast_to(weight, x.shape)
        mean_g = sum_last(g, True) * (1.0 / width)
        mean_gx = sum_last(g * normalized, True) * (1.0 / width)
        dx = (g - expand_last(mean_g, width, True) - normalized * expand_last(mean_gx, width, True))
        return dx * expand_last(rstd, width, True), d_weight, d_bias


class GeluKernel(nn.Cell):
    """Exact (erf) GELU returning ``(y, Phi(x))``; the backward pass reuses ``Phi(x)``."""

    def construct(self, x: Tensor):
        cdf = 0.5 + 0.5 * ops.erf(x * SQRT_HALF)
        return x * cdf, cdf

    def bprop(self, x: Tensor, out, dout):
        pdf = ops.exp(x * x * -0.5) * INV_SQRT_2PI
        return (dout[0] * (out[1] + x * pdf),)


class SoftmaxKernel(nn.Cell):
    """Softmax over the last axis with the backward ``y * (dy - sum(dy * y))`` as matmuls."""

    def construct(self, x: Tensor) -> Tensor:
        return ops.softmax(x, axis=-1)

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor):
        dot = sum_last(dout * out, True)
        return (out * (dout - expand_last(dot, x.shape[-1], True)),)


class L2NormalizeKernel(nn.Cell):
    """``scale * x / max(||x||, 1e-12)`` over the last axis; returns ``(y, 1 / max(||x||, 1e-12))``.

    ``scale`` broadcasts against ``x.shape[:-1] + (1,)`` (the per-head attention temperature
    folded into the queries, or ones). With ``y = s * r * x``, ``dot = sum(dy * y)``:
    ``dx = r * s * (dy - y * dot / s**2)`` where the norm is not clamped, ``r * s * dy``
    where it is (the clamp makes ``r`` a constant; norms within a factor 2 of the clamp
    count as clamped), and ``ds = sum(dot) / s``.
    """

    def construct(self, x: Tensor, scale: Tensor):
        squared = sum_last(x * x, True)
        inverse_norm = ops.rsqrt(ops.maximum(squared, L2_EPS_SQUARED))
        factor = inverse_norm * ops.broadcast_to(scale, inverse_norm.shape)
        return x * expand_last(factor, x.shape[-1], True), inverse_norm

    def bprop(self, x: Tensor, scale: Tensor, out, dout):
        y, inverse_norm = out
        dy = dout[0]
        width = x.shape[-1]
        scale_full = ops.broadcast_to(scale, inverse_norm.shape)
        dot = sum_last(dy * y, True) / scale_full
        unclamped = (inverse_norm < CLAMPED_INVERSE_NORM).astype(x.dtype)
        dx = (dy - y * expand_last(dot * unclamped / scale_full, width, True))
        dx = dx * expand_last(inverse_norm * scale_full, width, True)
        return dx, dot.sum_to_size(*scale.shape)
