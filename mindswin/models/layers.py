"""Building blocks shared by the Swin V2 cells.

Parameter names follow PyTorch (``weight``/``bias``) rather than MindSpore's ``gamma``/
``beta`` so that official, timm and mindswin checkpoints share one key space: this file is
the single place where that choice is made (see :class:`LayerNorm`).

Mixed precision is explicit rather than delegated to ``mindspore.amp``: every matmul cell
reads ``compute_dtype`` (float32 by default, float16/bfloat16 under AMP O2, see
:func:`set_compute_dtype`), while normalisation and everything numerically sensitive runs
in float32. The residual stream therefore stays float32 and the same graph compiles on
CPU, GPU and Ascend.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.ops.auto_generate.gen_ops_prim import GeluExt

from .kernel_library import use_cpu_kernels
from .kernels import BiasAddKernel, GeluKernel, LayerNormKernel

__all__ = [
    "WeightRecord",
    "WeightAndBias",
    "MlpWeights",
    "expand_to",
    "mask_from_factors",
    "Linear",
    "LayerNorm",
    "Mlp",
    "DropPath",
    "InputRateDropPath",
    "keep_mask",
    "PatchProjection",
    "set_compute_dtype",
    "trunc_normal",
]


class WeightRecord:
    """The layout of a plain tuple of weights: a field name for every position.

    A subclass declares its fields as annotations, in tuple order; each name then becomes a
    class attribute holding its position, so code reads ``weights[AttentionWeights.qkv]``. A
    checkpointed block (:class:`~mindswin.models.swin_v2.BlockCheckpoint`) reruns its layers from
    such records, nested as its cells are. Each cell's ``weights()`` writes its record as a tuple
    of its own attributes in field order; ``tests/test_model.py`` checks every field of a block
    holds the parameter of its name.

    What MindSpore 2.10's graph mode allows here, measured: not a ``NamedTuple`` (built through
    the Python fallback, its parameters get zero gradients, without an error), nor a dict (it
    does not compile through the checkpoint's nested ``GradOperation``), nor a helper that builds
    the tuple from the parameters it is given (two same-shaped layers, ``norm1`` and ``norm2``, then
    reach the checkpoint with each other's tensors, without an error).
    """

    fields: Tuple[str, ...] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.fields = tuple(cls.__dict__.get("__annotations__", {}))
        for position, name in enumerate(cls.fields):
            setattr(cls, name, position)


class WeightAndBias(WeightRecord):
    """The weights of a :class:`Linear` or a :class:`LayerNorm`."""

    weight: Tensor
    bias: Optional[Tensor]  # None: a Linear without bias


class MlpWeights(WeightRecord):
    """The weights of an :class:`Mlp`: its two layers' :class:`WeightAndBias`."""

    fc1: tuple  # a WeightAndBias
    fc2: tuple


def expand_to(small: Tensor, like: Tensor) -> Tensor:
    """``small`` broadcast to ``like``'s shape, as the operand of an elementwise op with ``like``.

    MindSpore 2.10's CPU kernels of broadcasting binary ops (Add, Mul, Sub, RealDiv) keep a
    workspace of about 4x their output for the life of the compiled graph, one per op in the
    graph; a BroadcastTo and a same-shape op keep none (measured in docs/memory.md). Every
    broadcast of a large tensor in the models goes through here.
    """
    return ops.broadcast_to(small, like.shape)


_FACTOR_PRODUCT = ops.BatchMatMul(transpose_b=True)


def mask_from_factors(factors: Tensor, gate: Tensor) -> Tensor:
    """The ``(windows, N, N)`` mask ``factors[0] @ factors[1]^T`` of ``(2, windows, N, k)`` factors
    (:func:`~mindswin.models.swin_v2.shifted_window_mask_factors`), computed after ``gate``.

    The factors are constants, and MindSpore folds an op whose inputs are all constants at
    compile time: ungated, the product would be a constant of the graph, as large as the mask. A
    constant has no gradient, so none is propagated into the product.
    """
    factors = ops.depend(factors, gate)
    return ops.stop_gradient(_FACTOR_PRODUCT(factors[0], factors[1]))


def add_bias(y: Tensor, bias: Tensor, kernel: Optional[BiasAddKernel]) -> Tensor:
    """``y + bias`` for a 2-D matmul output, with the fused CPU kernel when given (float32 only).

    Added to the 2-D product, not the N-d view: the bias gradient is then a sum over one
    leading axis, which is ~20x faster on CPU than over the three of a ``(B, H, W, C)`` map.
    """
    if kernel is not None and y.dtype == ms.float32:
        return kernel(y, bias)
    return y + expand_to(bias.astype(y.dtype), y)


def trunc_normal(shape: tuple, std: float = 0.02, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Sample a normal(0, std) array truncated to [-2, 2] (absolute, as ``trunc_normal_``).

    Args:
        shape: Output shape.
        std: Standard deviation.
        rng: Numpy generator; the global MindSpore seed is not used so model init stays
            reproducible from ``np.random.seed`` alone.

    Returns:
        float32 array of ``shape``.
    """
    rng = rng or np.random.default_rng(np.random.randint(0, 2**31 - 1))
    out = rng.normal(0.0, std, size=shape)
    bad = np.abs(out) > 2.0
    while bad.any():
        out[bad] = rng.normal(0.0, std, size=int(bad.sum()))
        bad = np.abs(out) > 2.0
    return out.astype(np.float32)


class Linear(nn.Cell):
    """``y = x @ W.T + b`` over the last axis of an N-d input, in ``compute_dtype``.

    Args:
        in_features: Input width.
        out_features: Output width.
        bias: Whether to add a learnable bias.
        force_float32: Keep float32 even when the model is switched to a lower compute
            dtype (used for the numerically sensitive position-bias MLP).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 force_float32: bool = False) -> None:
        super().__init__()
        self.force_float32 = force_float32
        self.in_features = in_features
        self.out_features = out_features
        self.weight = Parameter(Tensor(trunc_normal((out_features, in_features))), name="weight")
        self.bias = Parameter(Tensor(np.zeros(out_features, np.float32)), name="bias") if bias else None
        self.compute_dtype = ms.float32
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = BiasAddKernel() if bias and use_cpu_kernels() else None

    def _project(self, x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
        flat = x.reshape(-1, self.in_features).astype(self.compute_dtype)
        y = self.matmul(flat, weight.astype(self.compute_dtype))
        if bias is not None:
            y = add_bias(y, bias, self.bias_add)
        return y.reshape(x.shape[:-1] + (weight.shape[0],))

    def weights(self) -> tuple:
        """The :class:`WeightAndBias` :meth:`forward_with` takes (bias None without one)."""
        return self.weight, self.bias

    def forward_with(self, weights: tuple, x: Tensor) -> Tensor:
        """The layer computed with ``weights`` (a :class:`WeightAndBias`) instead of its parameters."""
        return self._project(x, weights[WeightAndBias.weight], weights[WeightAndBias.bias])

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_with(self.weights(), x)

    def extend_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis, always computed in float32.

    Uses ``weight``/``bias`` as parameter names (MindSpore's ``nn.LayerNorm`` calls them
    ``gamma``/``beta`` and defaults to epsilon 1e-7; the official Swin V2 uses 1e-5).

    Args:
        dim: Normalised width.
        eps: Variance epsilon.
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.dim = dim
        self.weight = Parameter(Tensor(np.ones(dim, np.float32)), name="weight")
        self.bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="bias")
        self.fused = use_cpu_kernels()  # decided when built: set_eps may run later (a checkpoint's numerics)
        self.set_eps(eps)

    def set_eps(self, eps: float) -> None:
        """Use variance epsilon ``eps`` (before the first compile: it is a constant of the graph)."""
        self.eps = eps
        if self.fused:
            self.layer_norm = LayerNormKernel(eps)
        else:
            self.layer_norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def weights(self) -> tuple:
        """The :class:`WeightAndBias` :meth:`forward_with` takes."""
        return self.weight, self.bias

    def forward_with(self, weights: tuple, x: Tensor) -> Tensor:
        """The norm computed with ``weights`` (a :class:`WeightAndBias`) instead of its parameters."""
        y, _, _ = self.layer_norm(x.reshape(-1, self.dim).astype(ms.float32), weights[WeightAndBias.weight],
                                  weights[WeightAndBias.bias])
        return y.reshape(x.shape)

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_with(self.weights(), x)

    def extend_repr(self) -> str:
        return f"dim={self.dim}, eps={self.eps}"


def single_kernel_gelu() -> bool:
    """Whether exact GELU should be one ``GeluExt`` kernel: on Ascend (aclnnGelu), not elsewhere.

    ``ops.gelu(x, approximate="none")`` is composed in Python from 6 ops (sqrt, div, erf,
    add, mul, mul) on every backend (``mindspore/ops/function/nn_func.py``), which uses the
    classic ``GeLU`` primitive only for ``approximate="tanh"``. ``GeluExt`` (what
    ``mint.nn.functional.gelu`` calls) computes the exact erf GELU in one kernel on Ascend;
    MindSpore 2.10's CPU graph backend does not run it, so CPU keeps the fused mindswin
    kernel or the composed native ops.
    """
    return ms.get_context("device_target") == "Ascend"


# Numerical Recipes' Chebyshev fit of erfc (``erfcc``): fractional error below 1.2e-7 for every argument.
_ERFC_FIT = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806, 0.27886807, -1.13520398, 1.48851587,
             -0.82215223, 0.17087277)


def portable_gelu(x: Tensor) -> Tensor:
    """Exact (erf) GELU written with ops that MindSpore 2.10 exports to ONNX (it has no Erf, Sign or Reciprocal).

    ``relu(x) - |x| / 2 * erfc(|x| / sqrt 2)`` (both signs without cancellation), ``erfc`` from
    :data:`_ERFC_FIT`: within 14 float32 ulps of ``|x|`` of the exact GELU (tested in onnxruntime).
    """
    magnitude = ops.abs(x)
    z = magnitude * 0.7071067811865476
    t = ops.ones_like(z) / (0.5 * z + 1.0)  # a tensor numerator: a scalar one exports as Reciprocal
    poly = _ERFC_FIT[-1]
    for coefficient in _ERFC_FIT[-2::-1]:
        poly = poly * t + coefficient
    return ops.relu(x) - 0.5 * magnitude * (t * ops.exp(poly - z * z))


class Mlp(nn.Cell):
    """fc1 -> GELU -> fc2: exact (erf) GELU as in the official Swin V2, or the tanh approximation.

    Args:
        dim: Input and output width.
        hidden_dim: Hidden width.
        gelu_approximate: ``"none"`` (exact, official) or ``"tanh"`` (MindSpore's ``nn.GELU``
            default, which mindcv's Swin V2 uses).
    """

    def __init__(self, dim: int, hidden_dim: int, gelu_approximate: str = "none") -> None:
        super().__init__()
        self.fc1 = Linear(dim, hidden_dim)
        self.fc2 = Linear(hidden_dim, dim)
        self.fused = use_cpu_kernels()  # decided when built, like LayerNorm's
        self.gelu_ext = GeluExt() if not self.fused and single_kernel_gelu() else None
        self.portable = False  # set_portable: the exact GELU from ONNX-exportable ops
        self.set_gelu_approximate(gelu_approximate)

    def set_gelu_approximate(self, approximate: str) -> None:
        """Exact (``"none"``) or tanh-approximated GELU (before the first compile)."""
        if approximate not in ("none", "tanh"):
            raise ValueError(f"gelu_approximate must be 'none' or 'tanh', got {approximate!r}")
        self.gelu_approximate = approximate
        self.gelu = GeluKernel(approximate) if self.fused else None

    def weights(self) -> tuple:
        """The :class:`MlpWeights` :meth:`forward_with` takes."""
        return self.fc1.weights(), self.fc2.weights()

    def forward_with(self, weights: tuple, x: Tensor) -> Tensor:
        """The MLP computed with ``weights`` (an :class:`MlpWeights`) instead of its parameters."""
        fc1, fc2 = weights[MlpWeights.fc1], weights[MlpWeights.fc2]
        if self.gelu is None and self.gelu_approximate == "tanh":
            return self.fc2.forward_with(fc2, ops.gelu(self.fc1.forward_with(fc1, x), approximate="tanh"))
        if self.portable:
            return self.fc2.forward_with(fc2, portable_gelu(self.fc1.forward_with(fc1, x)))
        if self.gelu_ext is not None:
            return self.fc2.forward_with(fc2, self.gelu_ext(self.fc1.forward_with(fc1, x), "none"))
        if self.gelu is None:
            return self.fc2.forward_with(fc2, ops.gelu(self.fc1.forward_with(fc1, x), approximate="none"))
        hidden = self.fc1._project(x, fc1[WeightAndBias.weight], None)  # the kernel adds the bias
        return self.fc2.forward_with(fc2, self.gelu(hidden.astype(ms.float32), fc1[WeightAndBias.bias])
                                     .astype(hidden.dtype))

    def construct(self, x: Tensor) -> Tensor:
        return self.forward_with(self.weights(), x)


def keep_mask(x: Tensor, keep_prob, uniform: Tensor) -> Tensor:
    """``x`` with sample ``b`` kept and rescaled by ``1 / keep_prob`` where ``uniform[b] < keep_prob``, else 0.

    ``floor(keep + u)`` is 1 with probability ``keep`` for ``u`` uniform in [0, 1).
    """
    mask = ops.floor(keep_prob + uniform) / keep_prob
    return x * expand_to(mask.reshape((x.shape[0],) + (1,) * (x.ndim - 1)).astype(x.dtype), x)


class DropPath(nn.Cell):
    """Stochastic depth: zero whole samples of a residual branch with probability ``p``.

    Called with ``uniform`` (``(B,)`` draws in [0, 1) that the input pipeline made from each
    sample's key), the mask is a pure function of them: a resumed run drops what the
    uninterrupted run dropped. Without it, MindSpore's stateful generator draws the mask.

    Args:
        drop_prob: Probability of dropping a sample's branch.
    """

    def __init__(self, drop_prob: float) -> None:
        super().__init__()
        self.drop_prob = drop_prob
        # nn.Dropout draws the Bernoulli mask, rescales by 1/keep and is a no-op in eval.
        self.dropout = nn.Dropout(p=drop_prob)

    def construct(self, x: Tensor, uniform: Optional[Tensor] = None) -> Tensor:
        if uniform is not None:
            return keep_mask(x, 1.0 - self.drop_prob, uniform) if self.training else x
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        return x * expand_to(self.dropout(ops.ones(mask_shape, x.dtype)), x)

    def extend_repr(self) -> str:
        return f"drop_prob={self.drop_prob}"


class InputRateDropPath(nn.Cell):
    """Stochastic depth whose keep probability is a ``construct`` input, not a constant.

    Used by the lazy-inlined (reused) block: blocks of one shape share one compiled graph,
    so a per-block rate cannot be a constant of that graph; each block's caller passes it
    as a float32 scalar tensor instead. Same distribution as :class:`DropPath`: a sample's
    branch is kept with probability ``keep_prob`` and rescaled by ``1 / keep_prob``;
    identity in evaluation.
    """

    def __init__(self) -> None:
        super().__init__()
        self.uniform = ops.UniformReal()

    def construct(self, x: Tensor, keep_prob: Tensor, uniform: Optional[Tensor] = None) -> Tensor:
        if not self.training:
            return x
        if uniform is None:
            uniform = self.uniform((x.shape[0],))
        return keep_mask(x, keep_prob, uniform)


class PatchProjection(nn.Cell):
    """Non-overlapping patch projection with Conv2d's parameters, computed as one matmul.

    Equivalent to ``Conv2d(in_chans, dim, patch, stride=patch)`` (weight ``(dim, in_chans,
    p, p)``, bias ``(dim,)``), but returns NHWC directly and avoids a strided convolution,
    which is slow on the CPU backend.

    Args:
        in_chans: Input channels.
        dim: Output channels.
        patch_size: Patch side.
    """

    def __init__(self, in_chans: int, dim: int, patch_size: int) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.dim = dim
        self.patch_size = patch_size
        fan_in = in_chans * patch_size * patch_size
        bound = 1.0 / math.sqrt(fan_in)
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        # PyTorch's Conv2d default init (kaiming_uniform(a=sqrt(5)) == U(-1/sqrt(fan_in), ..)).
        self.weight = Parameter(
            Tensor(rng.uniform(-bound, bound, (dim, in_chans, patch_size, patch_size)).astype(np.float32)),
            name="weight")
        self.bias = Parameter(Tensor(rng.uniform(-bound, bound, (dim,)).astype(np.float32)), name="bias")
        self.compute_dtype = ms.float32
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = BiasAddKernel() if use_cpu_kernels() else None

    def construct(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        x = x.reshape(b, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * p * p)
        weight = self.weight.reshape(self.dim, c * p * p).astype(self.compute_dtype)
        y = add_bias(self.matmul(x.astype(self.compute_dtype), weight), self.bias, self.bias_add)
        return y.reshape(b, gh, gw, self.dim)


def set_compute_dtype(model: nn.Cell, dtype: ms.dtype) -> nn.Cell:
    """Set the matmul dtype of every :class:`Linear` and :class:`PatchProjection` in ``model``.

    Linears built with ``force_float32`` are left in float32.

    Args:
        model: Any cell tree.
        dtype: ``ms.float32`` (AMP O0) or ``ms.float16``/``ms.bfloat16`` (AMP O2).

    Returns:
        ``model``, modified in place.
    """
    for _, cell in model.cells_and_names():
        if isinstance(cell, (Linear, PatchProjection)) and not getattr(cell, "force_float32", False):
            cell.compute_dtype = dtype
    return model
