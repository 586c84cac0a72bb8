"""Fused CPU kernels (compiled aot Custom ops) against the native ops they replace and float64 NumPy."""
import ctypes
import logging
import math
import os
import platform
import re
import shutil
from pathlib import Path
from typing import List, Optional, Tuple, Union

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

import mindswin
from mindswin.engine.optim import AdamW
from mindswin.engine.train_step import TrainStep
from mindswin.models import kernel_library, kernels
from mindswin.models.swin_v2 import (
    MAX_LOGIT_SCALE,
    WindowAttention,
    l2_normalize,
    relative_coords_table,
    relative_position_index,
    shifted_window_mask_factors,
)

from helpers import MICRO_MS, loss_and_grads, micro, randomize

WINDOWS, HEADS, TOKENS, HEAD_DIM = 6, 2, 4, 8
WIDTH = HEADS * HEAD_DIM


def qkv_heads_native(qkv, q_bias, v_bias, scale):
    def heads(x):
        return x.reshape(WINDOWS, TOKENS, HEADS, HEAD_DIM).transpose(0, 2, 1, 3)

    q = heads(qkv[:, :, :WIDTH] + q_bias)
    k = heads(qkv[:, :, WIDTH:2 * WIDTH])
    v = heads(qkv[:, :, 2 * WIDTH:] + v_bias)
    return l2_normalize(q) * scale, l2_normalize(k), v


def bias_softmax_native(logits, bias):
    flat = logits.reshape(-1, bias.size) + bias.reshape(1, -1)
    return ops.softmax(flat.reshape(logits.shape), axis=-1)


class Case(nn.Cell):
    """One kernel (fused=True) or the native composition it replaces, as a function of its inputs."""

    def __init__(self, name: str, fused: bool) -> None:
        super().__init__()
        self.name = name
        self.fused = fused
        self.layer_norm = kernels.LayerNormKernel(1e-5) if fused else ops.LayerNorm(-1, -1, 1e-5)
        self.gelu = kernels.GeluKernel()
        self.gelu_tanh = kernels.GeluKernel("tanh")
        self.bias_add = kernels.BiasAddKernel()
        self.bias_softmax = kernels.BiasSoftmaxKernel()
        self.qkv_heads = kernels.QkvHeadsKernel()

    def construct(self, *args):
        if self.name == "layer_norm":
            return self.layer_norm(*args)[0]
        if self.name == "gelu":
            return self.gelu(*args) if self.fused else ops.gelu(args[0] + args[1], approximate="none")
        if self.name == "gelu_tanh":  # mindcv's numerics
            return self.gelu_tanh(*args) if self.fused else ops.gelu(args[0] + args[1], approximate="tanh")
        if self.name == "bias_add":
            return self.bias_add(*args) if self.fused else args[0] + args[1]
        if self.name == "bias_softmax":
            return self.bias_softmax(*args) if self.fused else bias_softmax_native(*args)
        out = self.qkv_heads(*args)[:3] if self.fused else qkv_heads_native(*args)
        return out[0] + 2 * out[1] + 3 * out[2]  # one output, every part with its own gradient


def case_inputs(name, rng):
    def tensor(*shape, scale=1.0, shift=0.0):
        return ms.Tensor((rng.standard_normal(shape) * scale + shift).astype(np.float32))

    if name == "layer_norm":
        x = rng.standard_normal((24, 16)) * 2 + 0.5
        x[3] = 0.25  # a row with zero variance
        return [ms.Tensor(x.astype(np.float32)), tensor(16, scale=0.3, shift=1.0), tensor(16, scale=0.2)]
    if name in ("gelu", "gelu_tanh", "bias_add"):
        return [tensor(24, 16, scale=2.0), tensor(16, scale=0.5)]
    if name == "bias_softmax":
        # (B * windows, heads, N, N) logits; bias with the mask for 3 windows: (3, heads, N, N)
        return [tensor(2 * 3, HEADS, TOKENS, TOKENS, scale=3.0), tensor(3, HEADS, TOKENS, TOKENS, scale=2.0)]
    qkv = (rng.standard_normal((WINDOWS, TOKENS, 3 * WIDTH)) * 2).astype(np.float32)
    q_bias = (rng.standard_normal(WIDTH) * 0.3).astype(np.float32)
    qkv[0, 1, :HEAD_DIM] = -q_bias[:HEAD_DIM]  # a query of norm 0: the clamped branch
    return [ms.Tensor(qkv), ms.Tensor(q_bias), tensor(WIDTH, scale=0.3),
            ms.Tensor(rng.uniform(2, 50, (HEADS, 1, 1)).astype(np.float32))]


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "gelu_tanh", "bias_add", "bias_softmax", "qkv_heads"])
def test_kernel_values_and_gradients_equal_native_ops(name):
    rng = np.random.default_rng(0)
    args = case_inputs(name, rng)
    results = []
    for fused in (False, True):
        net = Case(name, fused)
        value = net(*args)
        upstream = ms.Tensor(rng.standard_normal(value.shape).astype(np.float32)) if not results else results[0][2]
        grad = ms.jit(ops.GradOperation(get_all=True, sens_param=True)(net))
        results.append((value.asnumpy(), [g.asnumpy() for g in grad(*args, upstream)], upstream))
    (value_native, grads_native, _), (value_fused, grads_fused, _) = results
    assert_close_per_row(value_fused, value_native, "value")
    assert len(grads_fused) == len(args)
    for got, want in zip(grads_fused, grads_native):
        assert_close_per_row(got, want, "gradient")


def assert_close_per_row(got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Fused vs native: the same formula, to within 2e-4 of the row's largest magnitude.

    This checks the formulas (a wrong one is off by O(1)); float32 rounding is checked
    against float64 by the kernel tests further down. No sum in these cases has more than
    24 terms, so rounding moves a result by at most ~(24 + 10) * 24 * eps ~ 1e-4 of the
    row's scale per implementation (MindSpore's native softmax, whose exp is an
    approximation, measured within 50 ulps). Per row, so that one large row (the clamped
    query's, ~1e13) does not hide the others.
    """
    row_max = np.abs(want).max(axis=-1, keepdims=want.ndim > 1)
    assert_within(got, want, 2e-4 * (row_max + np.abs(want)), what)


def test_the_builder_fixes_each_models_kernels_and_a_checkpoints_numerics_keep_them():
    """Two models in one process, each computing with what its builder was told, whatever is built after it;
    numerics set after the build (as loading a mindcv checkpoint does) keep the model's LayerNorms on its path."""
    from mindswin.models.layers import LayerNorm, Mlp

    fused, native = micro(kernels="cpu"), micro(kernels="native")
    assert (fused.kernels, native.kernels) == ("cpu", "native")
    assert fused.layers[0].blocks[0].attn.qkv_heads is not None and native.layers[0].blocks[0].attn.qkv_heads is None
    for model in (fused, native):
        model.set_numerics("mindcv")
        norms = [cell for _, cell in model.cells_and_names() if isinstance(cell, LayerNorm)]
        assert norms and all(isinstance(n.layer_norm, kernels.LayerNormKernel) == (model is fused) for n in norms)
    portable = micro(kernels="native", portable=True)
    assert all(cell.portable for _, cell in portable.cells_and_names() if isinstance(cell, (Mlp, WindowAttention)))
    with pytest.raises(ValueError, match="kernels='native'"):
        fused.set_portable()  # no exporter knows the fused kernels
    with pytest.raises(ValueError, match="kernels must be one of auto, cpu, native"):
        micro(kernels="fused")


# window 12 at 48 px: 144-token windows, shifted and not, attend in the attention kernels
@pytest.mark.parametrize("geometry", [{}, dict(img_size=48, window_size=12),
                                      dict(img_size=48, window_size=12, recompute=True)],
                         ids=["micro", "window12", "window12-recompute"])
def test_model_with_cpu_kernels_matches_native_ops(geometry):
    """Whole model: logits and every parameter gradient, fused CPU kernels vs native ops."""
    size = geometry.get("img_size", 32)
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, size, size)).astype(np.float32))
    y = ms.Tensor(np.array([1, 3], np.int32))
    results = []
    for enabled in (True, False):
        model = randomize(micro(kernels="cpu" if enabled else "native", **geometry), seed=4)
        assert (model.layers[0].blocks[0].attn.qkv_heads is not None) == enabled
        row_blocks = ["row_blocks" in block.attn.path_names for block in model.layers[0].blocks]
        assert row_blocks == [enabled and "window_size" in geometry] * len(row_blocks)
        model.set_train(False)
        logits = model(x).asnumpy()
        model.set_train(True)
        loss, grads = loss_and_grads(model, x, y)
        results.append((logits, loss.asnumpy(), [g.asnumpy() for g in grads]))
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = results
    # Attention amplifies rounding most: its logits are tau * cos(q, k), tau <= 100 (the
    # clamp), and cos, from two normalised head_dim-vectors and their dot product, is off by
    # up to (2 head_dim + 8) eps. The attention weights, the logits and the gradients carry
    # that relative error, once per implementation (~7.6e-4 here; measured: ~5e-5).
    head_dim = max(block.attn.head_dim for layer in model.layers for block in layer.blocks)
    relative = 2 * math.exp(MAX_LOGIT_SCALE) * (2 * head_dim + 8) * EPS
    np.testing.assert_allclose(logits_a, logits_b, atol=relative * np.abs(logits_b).max())
    # the cross-entropy's gradient in the logits sums to at most 2 in magnitude
    assert abs(loss_a - loss_b) <= 2 * relative * np.abs(logits_b).max()
    for a, b in zip(grads_a, grads_b):
        assert np.abs(a - b).max() <= relative * max(np.abs(b).max(), 1e-3)  # 1e-3: a floor for zero gradients


def test_kernel_library_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDSWIN_CACHE_DIR", str(tmp_path))
    built = kernel_library.compiled_library.__wrapped__()
    assert built is not None and os.path.dirname(built) == str(tmp_path)
    stamp = os.stat(built).st_mtime_ns
    assert kernel_library.compiled_library.__wrapped__() == built
    assert os.stat(built).st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(built)]  # no temporary files left


def test_failed_kernel_build_falls_back_to_native_ops_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MINDSWIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    with caplog.at_level(logging.WARNING):
        assert kernel_library.compiled_library.__wrapped__() is None
    assert "building the fused CPU kernels with false failed" in caplog.text
    assert not list(tmp_path.glob("*.so"))


# ---------------------------------------------------------------- the C kernels called directly
# Each entry point is called through ctypes as MindSpore calls it (params = inputs then
# outputs) and compared with a float64 NumPy evaluation of the same formula. Every bound
# below is the worst case of float32 rounding in any summation order and vector width
# (so it holds on AVX2 and AVX-512 machines alike), with u = EPS / 2 the unit roundoff:
# a sum of n terms is off by at most (n - 1) u sum|terms| <= n EPS sum|terms| whatever the
# order (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., eq. 4.4), each
# further +, -, *, / or sqrt adds u relative, and erff/expf add LIBM_ULPS.

EPS = float(np.finfo(np.float32).eps)
LIBM_ULPS = 4  # glibc's stated bound for its vector math (libmvec: erff, expf); its scalar functions are closer
THREADS = 3  # several parts: the split of the rows and the merge of per-part sums both run
PARALLEL_MIN_ELEMENTS = int(re.search(r"#define PARALLEL_MIN_ELEMENTS (\d+)",
                                      kernel_library.SOURCE.read_text()).group(1))
ATTENTION_ROWS = int(re.search(r"#define ATTENTION_ROWS (\d+)", kernel_library.SOURCE.read_text()).group(1))
KERNELS = ["LayerNormForward", "LayerNormBackward", "GeluForward", "GeluBackward", "BiasAddForward", "BiasAddBackward",
           "BiasSoftmaxForward", "BiasSoftmaxBackward", "WindowBiasSoftmaxForward", "QkvHeadsForward",
           "QkvHeadsBackward", "CpbBiasForward", "CpbBiasBackward", "AttentionForward", "AttentionBackward",
           "MaskedAttentionForward", "MaskedAttentionBackward"]
PARALLEL = [name for name in KERNELS if not name.startswith("Cpb")]  # the position-bias kernels run on one thread


def _cpu_flags() -> List[str]:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []
    return next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])


# The library as built for this CPU, and as built for an AVX2-only x86-64 (MINDSWIN_KERNEL_MARCH):
# a machine with AVX-512 runs both codegens; vector widths and the remainder loops differ.
ISAS = ["native", "x86-64-v3"]


@pytest.fixture(scope="module", params=ISAS)
def threaded_library(request, tmp_path_factory) -> ctypes.CDLL:
    """The kernel library as a process started with ``MINDSWIN_CPU_THREADS=3`` runs it.

    The library reads the variable once, at its first call large enough to split, so a
    private copy (a separate dlopen instance from the one MindSpore loaded) is made to read
    it now. The copy sits beside the original, a directory shared libraries load from.
    """
    if request.param == "native":
        original = Path(kernel_library.compiled_library())
    else:
        needed = {"avx2", "fma", "f16c", "bmi1", "bmi2", "movbe", "abm", "xsave"}  # x86-64-v3
        if platform.machine() != "x86_64" or not needed <= set(_cpu_flags()):
            pytest.skip(f"this CPU cannot run {request.param} code")
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv(kernel_library.MARCH_ENV, request.param)
            patch.setenv("MINDSWIN_CACHE_DIR", str(tmp_path_factory.mktemp(request.param)))
            built = kernel_library.compiled_library.__wrapped__()
        assert built is not None, f"the kernels do not build for {request.param}"
        original = Path(built)
    copy = original.with_name(f"threads-{os.getpid()}-{original.name}")
    shutil.copyfile(original, copy)
    try:
        library = ctypes.CDLL(str(copy))
    finally:
        copy.unlink()  # the mapping outlives the file
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MINDSWIN_CPU_THREADS", str(THREADS))
        run_kernel(library, "BiasAddBackward", [np.zeros((1, PARALLEL_MIN_ELEMENTS), np.float32)],
                   [(PARALLEL_MIN_ELEMENTS,)])
    return library


def run_kernel(library: ctypes.CDLL, name: str, inputs: List[np.ndarray],
               output_shapes: List[Tuple[int, ...]]) -> List[np.ndarray]:
    """Call one aot entry point; outputs start as NaN so an element never written shows."""
    outputs = [np.full(shape, np.nan, np.float32) for shape in output_shapes]
    arrays = [np.ascontiguousarray(a) for a in inputs] + outputs
    assert all(a.dtype in (np.float32, np.int32) for a in arrays), "the kernels read float32 and int32 only"
    status = call_kernel(library, name, arrays)
    assert status == 0, f"{name} returned {status}"
    return outputs


def call_kernel(library: ctypes.CDLL, name: str, arrays: List[np.ndarray]) -> int:
    """The status of entry point ``name`` on ``arrays`` (inputs then outputs), with MindSpore's arguments."""
    count = len(arrays)
    shapes = [(ctypes.c_int64 * max(a.ndim, 1))(*a.shape) for a in arrays]
    return getattr(library, name)(
        count, (ctypes.c_void_p * count)(*[a.ctypes.data for a in arrays]),
        (ctypes.c_int * count)(*[a.ndim for a in arrays]),
        (ctypes.POINTER(ctypes.c_int64) * count)(*[ctypes.cast(s, ctypes.POINTER(ctypes.c_int64)) for s in shapes]),
        (ctypes.c_char_p * count)(*[str(a.dtype).encode() for a in arrays]), None, None)


def test_kernels_refuse_dtypes_they_were_not_written_for(threaded_library):
    """The dtype check at every entry point: a float16 tensor, or a float index, is refused (status 2), not misread."""
    x, weight = np.ones((4, 8), np.float32), np.ones(8, np.float32)

    def status(name, arrays):
        return call_kernel(threaded_library, name, arrays)

    assert status("BiasAddForward", [x, weight, np.empty_like(x)]) == 0
    assert status("BiasAddForward", [x.astype(np.float16), weight, np.empty_like(x)]) == 2
    assert status("BiasAddForward", [x, weight, np.empty((4, 8), np.float64)]) == 2  # outputs are checked too
    table, w1, b1, w2 = np.ones((9, 2), np.float32), np.ones((4, 2), np.float32), np.ones(4, np.float32), \
        np.ones((2, 4), np.float32)
    outputs = [np.empty((2, 4, 4), np.float32), np.empty((9, 4), np.float32)]
    assert status("CpbBiasForward", [table, w1, b1, w2, np.zeros(16, np.int32), *outputs]) == 0
    assert status("CpbBiasForward", [table, w1, b1, w2, np.zeros(16, np.float32), *outputs]) == 2
    # through MindSpore: the graph raises the kernel's status
    with pytest.raises(RuntimeError, match="BiasAddForward.* is 2"):
        kernels.BiasAddKernel()(ms.Tensor(x.astype(np.float16)), ms.Tensor(weight.astype(np.float16)))


def sum_error(terms: np.ndarray, axis: Union[int, Tuple[int, ...]], roundings: int = 0) -> np.ndarray:
    """Bound on the error of a float32 sum of ``terms`` along ``axis``, in any order.

    ``roundings``: those already in each term (a product: 1), added to the n of the sum.
    """
    terms = np.abs(terms)
    count = np.prod([terms.shape[a] for a in np.atleast_1d(axis)])
    return (count + roundings) * EPS * terms.sum(axis)


Reference = List[Tuple[np.ndarray, np.ndarray]]  # (float64 value, error bound) per output


def layer_norm_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: np.ndarray) -> Reference:
    """LayerNormForward: ``(y, mean, rstd)`` over the last axis."""
    x = x.astype(np.float64)
    n = x.shape[-1]
    mean = x.mean(-1, keepdims=True)
    d = x - mean
    var = (d * d).mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(var + eps[0])
    xhat = d * rstd
    mean_error = sum_error(x, -1)[..., None] / n + EPS * np.abs(mean)  # the sum, then / n
    d_error = mean_error + EPS * np.abs(d)
    var_error = (sum_error(d * d, -1, 1)[..., None] + 2 * (np.abs(d) * d_error).sum(-1, keepdims=True)) / n
    rstd_relative = var_error / (2 * (var + eps[0])) + 3 * EPS  # + eps, sqrt, 1 / ...
    xhat_error = rstd * d_error + np.abs(xhat) * (rstd_relative + EPS)
    y_error = np.abs(w) * xhat_error + 2 * EPS * (np.abs(xhat * w) + np.abs(b))
    return [(xhat * w + b, y_error), (mean[..., 0], mean_error[..., 0]), (rstd[..., 0], (rstd * rstd_relative)[..., 0])]


def layer_norm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, mean: np.ndarray, rstd: np.ndarray) -> Reference:
    """LayerNormBackward: ``(dx, d_weight, d_bias)`` given the saved mean and rstd."""
    dy, x = dy.astype(np.float64), x.astype(np.float64)
    n = x.shape[-1]
    mean, rstd = mean[..., None].astype(np.float64), rstd[..., None].astype(np.float64)
    xhat = (x - mean) * rstd  # 2 roundings in the kernel
    g = dy * w
    sum_g, sum_gx = g.mean(-1, keepdims=True), (g * xhat).mean(-1, keepdims=True)
    dx = rstd * (g - sum_g - xhat * sum_gx)
    sum_g_error = sum_error(g, -1, 1)[..., None] / n
    sum_gx_error = sum_error(g * xhat, -1, 4)[..., None] / n
    dx_error = rstd * (sum_g_error + np.abs(xhat) * sum_gx_error + np.abs(sum_gx) * 2 * EPS * np.abs(xhat)
                       + 4 * EPS * (np.abs(g) + np.abs(sum_g) + np.abs(xhat * sum_gx)))
    rows = tuple(range(x.ndim - 1))
    return [(dx, dx_error), ((dy * xhat).sum(rows), sum_error(dy * xhat, rows, 3)), (dy.sum(rows), sum_error(dy, rows))]


def bias_add_forward(x: np.ndarray, b: np.ndarray) -> Reference:
    """BiasAddForward: ``x + b``."""
    y = x.astype(np.float64) + b
    return [(y, EPS * np.abs(y))]


def bias_add_backward(dy: np.ndarray) -> Reference:
    """BiasAddBackward: the column sums of ``dy``."""
    rows = tuple(range(dy.ndim - 1))
    return [(dy.astype(np.float64).sum(rows), sum_error(dy, rows))]


def _normal_cdf_pdf(z: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 + 0.5 * erf(z / math.sqrt(2)), np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def gelu_forward(x: np.ndarray, b: np.ndarray) -> Reference:
    """GeluForward: ``z Phi(z)``, ``z = x + b``."""
    z = x.astype(np.float64) + b
    cdf, _ = _normal_cdf_pdf(z)
    # z and the erf argument carry u each (erf' <= 1.13), erff LIBM_ULPS, 0.5 + 0.5 e and z * cdf u each
    return [(z * cdf, (LIBM_ULPS + 4) * EPS * np.abs(z))]


def gelu_backward(dy: np.ndarray, x: np.ndarray, b: np.ndarray) -> Reference:
    """GeluBackward: ``(dx, d_bias)`` with ``dx = dy (Phi(z) + z phi(z))``."""
    z = x.astype(np.float64) + b
    cdf, pdf = _normal_cdf_pdf(z)
    dx = dy * (cdf + z * pdf)
    # cdf as in the forward; z pdf: expf's LIBM_ULPS and its argument's 2u |z^2 / 2|, |z|^3 pdf <= 0.23
    dx_error = (2 * LIBM_ULPS + 4) * EPS * np.abs(dy)
    rows = tuple(range(x.ndim - 1))
    return [(dx, dx_error), (dx.sum(rows), sum_error(dx, rows) + dx_error.sum(rows))]


def bias_softmax_forward(logits: np.ndarray, bias: np.ndarray) -> Reference:
    """BiasSoftmaxForward: ``softmax(logits + bias)``, the bias shared by every image."""
    x = logits.astype(np.float64).reshape(-1, bias.size)
    z = (x + bias.reshape(1, -1)).reshape(-1, logits.shape[-1])
    top = z.max(-1, keepdims=True)
    e = np.exp(z - top)
    y = e / e.sum(-1, keepdims=True)
    # z - top may be evaluated as x + (bias - top): 2 roundings of at most the largest operand
    magnitude = np.abs(x).reshape(z.shape) + np.abs(np.broadcast_to(bias.reshape(1, -1), x.shape)).reshape(z.shape)
    e_relative = 2 * EPS * (magnitude + np.abs(top)) + LIBM_ULPS * EPS
    y_relative = e_relative + e_relative.max(-1, keepdims=True) + (z.shape[-1] + 2) * EPS
    # a probability below float32's normal range (a masked logit, -100 off) is rounded to the
    # subnormal grid: half a step by expf, half by the scaling, relative bounds aside
    underflow = np.finfo(np.float32).smallest_subnormal
    return [(y.reshape(logits.shape), (y * y_relative + underflow).reshape(logits.shape))]


def window_bias_softmax_forward(logits: np.ndarray, bias: np.ndarray, mask: np.ndarray) -> Reference:
    """WindowBiasSoftmaxForward: ``softmax(logits + (bias + mask))``, bias ``(heads, N, N)`` and mask
    ``(windows, N, N)`` each shared by the rest; their float32 sum first, as the kernel adds them."""
    return bias_softmax_forward(logits, bias[None] + mask[:, None])


def bias_softmax_backward(dy: np.ndarray, y: np.ndarray, bias: np.ndarray) -> Reference:
    """BiasSoftmaxBackward: ``(d_logits, d_bias)`` given the softmax output ``y``."""
    dy, y = dy.astype(np.float64), y.astype(np.float64)
    dot = (dy * y).sum(-1, keepdims=True)
    dx = y * (dy - dot)
    dx_error = np.abs(y) * (sum_error(dy * y, -1, 1)[..., None] + 2 * EPS * (np.abs(dy) + np.abs(dot)))
    images = dx.reshape(-1, bias.size)
    d_bias = images.sum(0).reshape(bias.shape)
    d_bias_error = (sum_error(images, 0) + dx_error.reshape(-1, bias.size).sum(0)).reshape(bias.shape)
    return [(dx, dx_error), (d_bias, d_bias_error)]


L2_EPS_SQUARED = 1e-24  # the kernel's clamp of the squared norm (F.normalize's eps = 1e-12)


def _unit(x: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``x * r``, ``r = 1 / max(||x||, 1e-12)`` over the last axis (NaN stays NaN), and ``r``."""
    squared = (x * x).sum(-1, keepdims=True)
    inverse = 1 / np.sqrt(np.where(squared < L2_EPS_SQUARED, L2_EPS_SQUARED, squared))
    return x * inverse, inverse


def qkv_heads_forward(qkv: np.ndarray, q_bias: np.ndarray, v_bias: np.ndarray, scale: np.ndarray) -> Reference:
    """QkvHeadsForward: ``(q, k, v, 1 / ||q + q_bias||, 1 / ||k||)`` in heads."""
    windows, tokens, width3 = qkv.shape
    heads = scale.size
    head_dim = width3 // 3 // heads

    def split(part: np.ndarray) -> np.ndarray:
        return part.reshape(windows, tokens, heads, head_dim).transpose(0, 2, 1, 3)

    qkv = qkv.astype(np.float64)
    width = heads * head_dim
    q, inverse_q = _unit(split(qkv[..., :width] + q_bias))
    k, inverse_k = _unit(split(qkv[..., width:2 * width]))
    v = split(qkv[..., 2 * width:] + v_bias)
    q = q * scale.reshape(1, heads, 1, 1)
    # squared norm: head_dim squares (+ the bias add); r: sqrt and 1 / halve and add; q: * (r s)
    inverse_relative = (head_dim / 2 + 3) * EPS
    return [(q, (inverse_relative + 3 * EPS) * np.abs(q)), (k, (inverse_relative + 2 * EPS) * np.abs(k)),
            (v, EPS * np.abs(v)), (inverse_q, inverse_relative * inverse_q), (inverse_k, inverse_relative * inverse_k)]


CLAMPED_INVERSE_NORM = 0.5e12  # the kernel's threshold: 1 / norm above it means the norm was clamped


def _unit_backward(dy: np.ndarray, y: np.ndarray, inverse: np.ndarray, s: np.ndarray) -> Reference:
    """Gradient of ``y = s x r`` given ``y`` and ``r``, and ``sum(dy y)``, with their bounds."""
    dot = (dy * y).sum(-1, keepdims=True)
    projection = np.where(inverse >= CLAMPED_INVERSE_NORM, 0.0, dot / (s * s))
    projection_error = np.where(inverse >= CLAMPED_INVERSE_NORM, 0.0,
                                sum_error(dy * y, -1, 1)[..., None] / (s * s) + 2 * EPS * np.abs(projection))
    dx = (dy - y * projection) * inverse * s
    dx_error = inverse * s * (np.abs(y) * projection_error + 4 * EPS * (np.abs(dy) + np.abs(y * projection)))
    return [(dx, dx_error), (dot, sum_error(dy * y, -1, 1)[..., None])]


def qkv_heads_backward(dq: np.ndarray, dk: np.ndarray, dv: np.ndarray, q: np.ndarray, k: np.ndarray,
                       inverse_q: np.ndarray, inverse_k: np.ndarray, scale: np.ndarray) -> Reference:
    """QkvHeadsBackward: ``(d_qkv, d_q_bias, d_v_bias, d_scale)``."""
    windows, heads, tokens, head_dim = dq.shape
    s = scale.reshape(1, heads, 1, 1).astype(np.float64)
    dq, dk, dv = dq.astype(np.float64), dk.astype(np.float64), dv.astype(np.float64)
    (dx_q, dx_q_error), (dot, dot_error) = _unit_backward(dq, q.astype(np.float64), inverse_q.astype(np.float64), s)
    (dx_k, dx_k_error), _ = _unit_backward(dk, k.astype(np.float64), inverse_k.astype(np.float64), s=np.ones_like(s))

    def fuse(*parts: np.ndarray) -> np.ndarray:  # (B, H, N, D) each -> (B, N, 3C)
        return np.concatenate([p.transpose(0, 2, 1, 3).reshape(windows, tokens, -1) for p in parts], -1)

    summed = (0, 2)  # windows and tokens
    d_scale = (dot / s).sum(summed)
    d_scale_error = sum_error(dot / s, summed, 1) + (dot_error / s).sum(summed)
    d_q_bias_error = sum_error(dx_q, summed) + dx_q_error.sum(summed)
    return [(fuse(dx_q, dx_k, dv), fuse(dx_q_error, dx_k_error, np.zeros_like(dv))),
            (dx_q.sum(summed).reshape(-1), d_q_bias_error.reshape(-1)),
            (dv.sum(summed).reshape(-1), sum_error(dv, summed).reshape(-1)),
            (d_scale.reshape(scale.shape), d_scale_error.reshape(scale.shape))]


def cpb_bias_forward(table: np.ndarray, w1: np.ndarray, b1: np.ndarray, w2: np.ndarray, index: np.ndarray) -> Reference:
    """CpbBiasForward: ``(16 sigmoid(relu(table w1^T + b1) w2^T)[index]^T, hidden)``."""
    table = table.astype(np.float64)
    products = table[:, None, :] * w1[None]  # (T, K, 2)
    pre = products.sum(-1) + b1
    hidden = np.where(np.isnan(pre) | (pre > 0), pre, 0.0)  # ReLU that keeps NaN
    hidden_error = 3 * EPS * (np.abs(products).sum(-1) + np.abs(b1))
    logits = hidden @ w2.T  # (T, heads)
    logits_error = sum_error(hidden[:, None, :] * w2[None], -1, 1) + hidden_error @ np.abs(w2).T
    sigmoid = 1 / (1 + np.exp(-logits[index].T))  # (heads, P)
    bias = 16 * sigmoid
    # 16 sigma' <= 4 times the logit's error; expf, 1 + e and 16 / (...) add LIBM_ULPS + 2
    bias_error = 16 * sigmoid * (1 - sigmoid) * logits_error[index].T + (LIBM_ULPS + 3) * EPS * bias
    return [(bias, bias_error), (hidden, hidden_error)]


def cpb_bias_backward(d_bias: np.ndarray, bias: np.ndarray, table: np.ndarray, hidden: np.ndarray, w2: np.ndarray,
                      index: np.ndarray) -> Reference:
    """CpbBiasBackward: ``(d_w1, d_b1, d_w2)`` given the saved bias and hidden activations."""
    rows, heads = hidden.shape[0], w2.shape[0]
    s = bias.reshape(heads, -1).astype(np.float64) / 16
    g = d_bias.reshape(heads, -1) * 16 * s * (1 - s)  # (heads, P)
    d_logits, d_logits_abs = np.zeros((rows, heads)), np.zeros((rows, heads))
    np.add.at(d_logits, index, g.T)
    np.add.at(d_logits_abs, index, np.abs(g.T))
    counts = np.bincount(index, minlength=rows)[:, None]
    d_logits_error = (counts + 3) * EPS * d_logits_abs  # 3 roundings in each term
    hidden = hidden.astype(np.float64)
    d_w2 = d_logits.T @ hidden
    d_w2_error = (rows + 1) * EPS * (np.abs(d_logits).T @ np.abs(hidden)) + d_logits_error.T @ np.abs(hidden)
    d_hidden = d_logits @ w2
    d_hidden_error = (heads + 1) * EPS * (np.abs(d_logits) @ np.abs(w2)) + d_logits_error @ np.abs(w2)
    dz = np.where(np.isnan(hidden), hidden, np.where(hidden > 0, d_hidden, 0.0))  # a NaN activation: NaN gradient
    dz_error = np.where(hidden > 0, d_hidden_error, 0.0)
    d_w1 = dz.T @ table
    d_w1_error = (rows + 1) * EPS * (np.abs(dz).T @ np.abs(table)) + dz_error.T @ np.abs(table)
    return [(d_w1, d_w1_error), (dz.sum(0), sum_error(dz, 0) + dz_error.sum(0)), (d_w2, d_w2_error)]


def _attention_probabilities(q: np.ndarray, k: np.ndarray, bias: np.ndarray, mask: np.ndarray):
    """Float64 probabilities ``(P, H, N, N)`` of the attention kernels and their relative error bound.

    The logits are float32 dot products over D (sum_error); bias and mask add two roundings of
    the magnitudes, then the softmax's own (bias_softmax_forward's bound, taking the logits' error
    as an error of the exponent's argument).
    """
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    logits = q64 @ k64.swapaxes(-1, -2)
    logits_error = (q.shape[-1] + 1) * EPS * (np.abs(q64) @ np.abs(k64).swapaxes(-1, -2))
    windows = mask.shape[0]
    added = (bias[None] + mask[:, None]).astype(np.float64)  # (windows, H, N, N), exact in float32 here
    z = (logits.reshape((-1, windows) + logits.shape[1:]) + added).reshape(logits.shape)
    top = z.max(-1, keepdims=True)
    e = np.exp(z - top)
    y = e / e.sum(-1, keepdims=True)
    magnitude = np.abs(logits) + np.abs(z - logits)
    e_relative = logits_error + 2 * EPS * (magnitude + np.abs(z) + np.abs(top)) + LIBM_ULPS * EPS
    y_relative = e_relative + e_relative.max(-1, keepdims=True) + (z.shape[-1] + 2) * EPS
    return y, y_relative + np.finfo(np.float32).smallest_subnormal / np.maximum(y, 1e-300)


def _product_error(a: np.ndarray, a_error: np.ndarray, b: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``a @ b`` in float64 and the bound on its float32 value, ``a`` known to within ``a_error``."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    terms = np.abs(a64) @ np.abs(b64)
    return a64 @ b64, a_error @ np.abs(b64) + (a.shape[-1] + 1) * EPS * terms


def _attention_mask(factors: Optional[np.ndarray], n: int) -> np.ndarray:
    return np.zeros((1, n, n)) if factors is None else factors[0].astype(np.float64) @ \
        factors[1].astype(np.float64).swapaxes(-1, -2)


def attention_forward(q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray,
                      factors: Optional[np.ndarray] = None) -> Reference:
    """AttentionForward (MaskedAttentionForward with ``factors``): ``softmax(q k^T + bias + mask) v``."""
    y, y_relative = _attention_probabilities(q, k, bias, _attention_mask(factors, q.shape[2]))
    out, out_error = _product_error(y, y * y_relative, v)
    return [(out, out_error)]


def attention_backward(dout: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray, bias: np.ndarray,
                       factors: Optional[np.ndarray] = None) -> Reference:
    """AttentionBackward (MaskedAttentionBackward): ``(d_q, d_k, d_v, d_bias)``, the probabilities
    recomputed; each product's bound carries its operands' (``_product_error``)."""
    y, y_relative = _attention_probabilities(q, k, bias, _attention_mask(factors, q.shape[2]))
    y_error = y * y_relative
    d_v, d_v_error = _product_error(y.swapaxes(-1, -2), y_error.swapaxes(-1, -2), dout)
    d_p, d_p_error = _product_error(dout, np.zeros(dout.shape), v.swapaxes(-1, -2))
    dot, dot_error = (d_p * y).sum(-1, keepdims=True), (np.abs(d_p) * y_error + d_p_error * y).sum(-1, keepdims=True) \
        + sum_error(d_p * y, -1, 1)[..., None]
    d_logits = y * (d_p - dot)
    d_logits_error = y_error * (np.abs(d_p) + np.abs(dot)) + y * (d_p_error + dot_error) \
        + 2 * EPS * y * (np.abs(d_p) + np.abs(dot))
    d_q, d_q_error = _product_error(d_logits, d_logits_error, k)
    d_k, d_k_error = _product_error(d_logits.swapaxes(-1, -2), d_logits_error.swapaxes(-1, -2), q)
    d_bias = d_logits.sum(0)
    return [(d_q, d_q_error), (d_k, d_k_error), (d_v, d_v_error),
            (d_bias, d_logits_error.sum(0) + sum_error(d_logits, 0))]


REFERENCES = {"LayerNormForward": layer_norm_forward, "LayerNormBackward": layer_norm_backward,
              "GeluForward": gelu_forward, "GeluBackward": gelu_backward, "BiasAddForward": bias_add_forward,
              "BiasAddBackward": bias_add_backward, "BiasSoftmaxForward": bias_softmax_forward,
              "BiasSoftmaxBackward": bias_softmax_backward, "WindowBiasSoftmaxForward": window_bias_softmax_forward,
              "QkvHeadsForward": qkv_heads_forward,
              "QkvHeadsBackward": qkv_heads_backward, "CpbBiasForward": cpb_bias_forward,
              "CpbBiasBackward": cpb_bias_backward, "AttentionForward": attention_forward,
              "AttentionBackward": attention_backward, "MaskedAttentionForward": attention_forward,
              "MaskedAttentionBackward": attention_backward}


def kernel_inputs(name: str, rng: np.random.Generator) -> List[np.ndarray]:
    """Inputs of entry point ``name``, sized above the parallel threshold for the parallel ones.

    Backward kernels get the reference forward's outputs, rounded to float32, as theirs.
    """
    def normal(*shape: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
        return (rng.standard_normal(shape) * scale + shift).astype(np.float32)

    def forward_outputs(forward: str, inputs: List[np.ndarray], *which: int) -> List[np.ndarray]:
        reference = REFERENCES[forward](*inputs)
        return [reference[i][0].astype(np.float32) for i in which]

    if name.startswith(("LayerNorm", "Gelu", "BiasAdd")):
        width = 96
        tokens = -(-3 * PARALLEL_MIN_ELEMENTS // (2 * 4 * width))  # 4 images, 1.5x the threshold
        x, w, b = normal(4, tokens, width, scale=2.0, shift=0.5), normal(width, scale=0.3, shift=1.0), normal(width)
        x[0, 3] = 0.25  # a row of zero variance
        dy = normal(*x.shape)
        eps = np.array([1e-5], np.float32)
        return {"LayerNormForward": [x, w, b, eps],
                "LayerNormBackward": [dy, x, w, *forward_outputs("LayerNormForward", [x, w, b, eps], 1, 2)],
                "GeluForward": [x, b], "GeluBackward": [dy, x, b], "BiasAddForward": [x, b],
                "BiasAddBackward": [dy]}[name]
    if name.startswith("BiasSoftmax"):
        heads, n = 3, 49
        windows = -(-PARALLEL_MIN_ELEMENTS // (2 * heads * n * n)) + 1  # 2 images of these windows
        logits, bias = normal(2 * windows, heads, n, n, scale=3.0), normal(windows, heads, n, n, scale=2.0)
        if name == "BiasSoftmaxForward":
            return [logits, bias]
        return [normal(*logits.shape), *forward_outputs("BiasSoftmaxForward", [logits, bias], 0), bias]
    if name == "WindowBiasSoftmaxForward":
        heads, n = 3, 49
        windows = -(-PARALLEL_MIN_ELEMENTS // (2 * heads * n * n)) + 1
        mask = np.where(rng.random((windows, n, n)) < 0.3, -100.0, 0.0).astype(np.float32)
        return [normal(2 * windows, heads, n, n, scale=3.0), normal(heads, n, n, scale=2.0), mask]
    if "Attention" in name:
        # 144-token windows (12 x 12): three blocks of query rows, the last one short
        assert ATTENTION_ROWS == kernels.ATTENTION_ROWS == 64, "the memory plan counts the C kernels' row blocks"
        images, windows, heads, n, head_dim = 2, 4, 2, 144, 16
        side = 12
        shape = (images * windows, heads, n, head_dim)
        unit_q, unit_k = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (normal(*shape), normal(*shape)))
        q = (unit_q * rng.uniform(2, 50, (1, heads, 1, 1))).astype(np.float32)  # times the temperature
        inputs = [q, unit_k.astype(np.float32), normal(*shape), rng.uniform(0, 16, (heads, n, n)).astype(np.float32)]
        if name.startswith("Masked"):
            inputs.append(shifted_window_mask_factors((2 * side, 2 * side), (side, side), (side // 2, side // 2)))
        return inputs if name.endswith("Forward") else [normal(*shape)] + inputs
    if name.startswith("QkvHeads"):
        tokens, heads, head_dim = 16, 4, 8
        width = heads * head_dim
        windows = -(-PARALLEL_MIN_ELEMENTS // (tokens * 3 * width)) + 1
        qkv, q_bias, v_bias = normal(windows, tokens, 3 * width, scale=2.0), normal(width, scale=0.3), normal(width)
        qkv[0, 1, :head_dim] = -q_bias[:head_dim]  # a query of norm 0: the clamped branch
        scale = rng.uniform(2, 50, (heads, 1, 1)).astype(np.float32)
        if name == "QkvHeadsForward":
            return [qkv, q_bias, v_bias, scale]
        shape = (windows, heads, tokens, head_dim)
        q, k, inverse_q, inverse_k = forward_outputs("QkvHeadsForward", [qkv, q_bias, v_bias, scale], 0, 1, 3, 4)
        return [normal(*shape), normal(*shape), normal(*shape), q, k, inverse_q, inverse_k, scale]
    # the CPB MLP of a 7x7 window: 169 table rows, 2401 (query, key) pairs
    table, index = relative_coords_table((7, 7), (0, 0)), relative_position_index((7, 7))
    w1, b1, w2 = normal(512, 2, scale=0.5), normal(512, scale=0.5), normal(3, 512, scale=0.05)
    if name == "CpbBiasForward":
        return [table, w1, b1, w2, index]
    bias, hidden = forward_outputs("CpbBiasForward", [table, w1, b1, w2, index], 0, 1)
    return [normal(*bias.shape), bias, table, hidden, w2, index]


def assert_within(got: np.ndarray, want: np.ndarray, bound: np.ndarray, what: str) -> None:
    """Every element of ``got`` within ``bound`` of ``want`` (NaN never is)."""
    error = np.abs(got.astype(np.float64) - want)
    assert np.all(error <= bound), f"{what}: error {np.max(error - bound):.3g} over its bound"


@pytest.mark.parametrize("name", KERNELS)
def test_kernel_on_several_threads_matches_float64(name, threaded_library):
    """Every kernel at a size it splits across threads, to within float32 rounding of NumPy."""
    inputs = kernel_inputs(name, np.random.default_rng(11))
    reference = REFERENCES[name](*inputs)
    if name in PARALLEL:  # the kernels measure the work by their largest tensor; attention by its logits
        if "Attention" in name:
            q = inputs[1] if name.endswith("Backward") else inputs[0]
            work = q.size // q.shape[-1] * q.shape[2]
        else:
            work = max(a.size for a in inputs + [want for want, _ in reference])
        assert work >= PARALLEL_MIN_ELEMENTS
    outputs = run_kernel(threaded_library, name, inputs, [want.shape for want, _ in reference])
    for i, (got, (want, bound)) in enumerate(zip(outputs, reference)):
        assert_within(got, want, bound, f"{name} output {i}")


# NaN and inf placed in the inputs of each kernel: (input number, index, value) each
POISON = [
    ("LayerNormForward", [(0, (0, 5, 7), np.nan), (0, (1, 9, 2), np.inf), (1, 11, np.nan)]),
    ("LayerNormBackward", [(0, (0, 5, 7), np.nan), (1, (1, 9, 2), np.inf)]),
    ("GeluForward", [(0, (0, 5, 7), np.nan), (0, (1, 9, 2), np.inf), (0, (2, 3, 4), -np.inf), (1, 11, np.nan)]),
    ("GeluBackward", [(0, (0, 5, 7), np.nan), (1, (1, 9, 2), np.inf), (2, 11, np.nan)]),
    ("BiasAddForward", [(0, (0, 5, 7), np.nan), (0, (1, 9, 2), np.inf), (1, 11, np.nan)]),
    ("BiasAddBackward", [(0, (0, 5, 7), np.nan), (0, (1, 9, 2), np.inf)]),
    ("BiasSoftmaxForward", [(0, (0, 1, 2, 3), np.nan), (1, (1, 0, 4, 5), np.inf)]),
    ("BiasSoftmaxBackward", [(0, (0, 1, 2, 3), np.nan), (0, (3, 2, 1, 0), np.inf)]),
    ("WindowBiasSoftmaxForward", [(0, (0, 1, 2, 3), np.nan), (1, (0, 4, 5), np.inf), (2, (1, 6, 7), np.nan)]),
    # NaN in a query, key and value element and a query bias; inf in a key element
    ("QkvHeadsForward", [(0, (2, 3, 5), np.nan), (0, (6, 0, 32 + 1), np.nan), (0, (4, 1, 32 + 9), np.inf),
                         (0, (5, 2, 64 + 3), np.nan), (1, 10, np.nan)]),
    ("QkvHeadsBackward", [(0, (1, 0, 2, 3), np.nan), (1, (2, 1, 3, 4), np.inf), (2, (3, 2, 1, 0), np.nan)]),
    ("CpbBiasForward", [(2, 7, np.nan)]),  # a hidden unit's bias: the ReLU must not make it 0
    ("CpbBiasBackward", [(0, (0, 500), np.nan)]),  # the upstream gradient
    ("CpbBiasBackward", [(3, (3, 5), np.nan)]),  # an activation: its gradient must not be masked to 0
    # a NaN query element, an inf key element and a NaN position bias. Masked: NaN only, since a
    # masked probability is 0 in float32 but not in float64, where it turns an inf into inf, not NaN
    ("AttentionForward", [(0, (0, 0, 5, 3), np.nan), (1, (1, 1, 7, 2), np.inf), (3, (0, 9, 100), np.nan)]),
    ("MaskedAttentionForward", [(0, (0, 0, 5, 3), np.nan), (2, (3, 1, 70, 2), np.nan)]),
    ("AttentionBackward", [(0, (2, 1, 4, 4), np.nan), (1, (0, 0, 5, 3), np.nan), (4, (1, 9, 100), np.inf)]),
    ("MaskedAttentionBackward", [(0, (2, 1, 4, 4), np.nan), (3, (3, 1, 70, 2), np.nan)]),
]


@pytest.mark.parametrize("name, placements", POISON, ids=[f"{name}-{i}" for i, (name, _) in enumerate(POISON)])
def test_kernel_passes_nan_and_inf_on(name, placements, threaded_library):
    """NaN stays NaN and inf stays non-finite, forward and backward: loss scaling relies on it."""
    inputs = kernel_inputs(name, np.random.default_rng(12))
    for number, where, value in placements:
        inputs[number][where] = value
    with np.errstate(invalid="ignore", over="ignore"):
        reference = REFERENCES[name](*inputs)
    outputs = run_kernel(threaded_library, name, inputs, [want.shape for want, _ in reference])
    for i, (got, (want, _)) in enumerate(zip(outputs, reference)):
        assert not np.isfinite(want).all(), "the poison must reach every output"
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{name} output {i}: NaN")
        np.testing.assert_array_equal(np.isinf(got), np.isinf(want), err_msg=f"{name} output {i}: inf")


def test_position_bias_kernel_matches_float64():
    """PositionBiasKernel as a cell: the bias and the MLP's gradients against NumPy."""
    rng = np.random.default_rng(13)
    table, index = relative_coords_table((4, 4), (0, 0)), relative_position_index((4, 4))
    heads = 3
    kernel = kernels.PositionBiasKernel(table, index, 16)
    # half the hidden units active for each coordinate, and logits across the sigmoid
    weights = [(rng.standard_normal(shape) * scale).astype(np.float32)
               for shape, scale in (((512, 2), 0.5), ((512,), 0.5), ((heads, 512), 0.05))]

    class Bias(nn.Cell):
        def construct(self, w1, b1, w2):
            return kernel(w1, b1, w2)[0]

    bias, hidden = (t.asnumpy() for t in kernel(*map(ms.Tensor, weights)))
    for got, (want, bound) in zip((bias.reshape(heads, -1), hidden), cpb_bias_forward(table, *weights, index)):
        assert_within(got, want, bound, "forward")
    d_bias = rng.standard_normal(bias.shape).astype(np.float32)
    grads = ms.jit(ops.GradOperation(get_all=True, sens_param=True)(Bias()))(*map(ms.Tensor, weights),
                                                                              ms.Tensor(d_bias))
    # the backward is checked given the forward's own outputs, which it reads
    for got, (want, bound) in zip(grads, cpb_bias_backward(d_bias, bias, table, hidden, weights[2], index)):
        assert_within(got.asnumpy(), want, bound, "gradient")


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "native"])
def test_an_inf_in_the_batch_skips_the_step(fused):
    """A float32 step whose batch holds an inf: not finite, weights and step count unchanged."""
    with kernel_library.cpu_kernels(fused):
        model = randomize(mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS), seed=5)
    assert (model.layers[0].blocks[0].attn.position_bias_kernel is not None) == fused
    model.set_train(True)
    optimizer = AdamW(model.trainable_params(), 0.05, model.no_weight_decay())
    step = TrainStep(model, optimizer, ms.Tensor(np.full(10, 1e-3, np.float32)), ms.amp.StaticLossScaler(1.0),
                     clip_value=5.0)
    before = {p.name: p.asnumpy().copy() for p in model.trainable_params()}
    rng = np.random.default_rng(6)
    images = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    images[2, 1, 17, 5] = np.inf
    targets = np.eye(5, dtype=np.float32)[rng.integers(0, 5, 4)]
    _, finite, _, _, _ = step(ms.Tensor(images), ms.Tensor(targets))
    assert not bool(finite.asnumpy())
    assert int(optimizer.step.asnumpy()) == 0
    for p in model.trainable_params():
        assert np.array_equal(p.asnumpy(), before[p.name]), p.name


def test_kernel_cache_is_keyed_by_instruction_set(tmp_path, monkeypatch):
    """A cache shared by an AVX-512 and an AVX2 machine gives each its own library."""
    monkeypatch.setenv("MINDSWIN_CACHE_DIR", str(tmp_path))
    built = {}
    avx512, avx2 = "-march=znver4 -mavx2 -mavx512f", "-march=znver2 -mavx2 -mno-avx512f"
    for isa in (avx512, avx2, avx512):
        monkeypatch.setattr(kernel_library, "_isa_fingerprint", lambda compiler, march=None, isa=isa: isa)
        path = kernel_library.compiled_library.__wrapped__()
        if isa in built:  # back on the first machine type: its own library, untouched by the other's build
            assert path == built[isa][0] and os.stat(path).st_mtime_ns == built[isa][1]
        built.setdefault(isa, (path, os.stat(path).st_mtime_ns))
    paths = {path for path, _ in built.values()}
    assert len(paths) == 2
    assert {p.name for p in tmp_path.iterdir()} == {os.path.basename(p) for p in paths}


def test_isa_fingerprint_is_what_march_native_resolves_to():
    """GCC's resolved features follow the CPU's AVX2 / AVX-512 flags; with no answer, the flags stand in."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    fingerprint = kernel_library._isa_fingerprint(compiler).split()
    cpu_flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    if platform.machine() == "x86_64" and any(token.startswith("-march=") for token in fingerprint):  # GCC
        for feature in ("avx2", "avx512f"):
            assert (f"-m{feature}" in fingerprint) == (feature in cpu_flags.split()), feature
    assert kernel_library._isa_fingerprint("false") == cpu_flags  # no compiler answer: the CPU's own flags


def test_kernel_march_override_is_keyed_into_the_cache(monkeypatch):
    """MINDSWIN_KERNEL_MARCH (benchmarks, tests) swaps -march=native for its target, and its own library."""
    monkeypatch.delenv(kernel_library.MARCH_ENV, raising=False)
    assert "-march=native" in kernel_library.compile_flags()
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.skip("no C compiler")
    native_key = kernel_library._machine_key(compiler)
    monkeypatch.setenv(kernel_library.MARCH_ENV, "native -mno-avx512f")
    flags = kernel_library.compile_flags()
    assert flags[flags.index("-march=native") + 1] == "-mno-avx512f"
    assert kernel_library._machine_key(compiler) != native_key
    for bad in ("-march=znver3", "znver3 -O0", "znver3 -march=native"):
        monkeypatch.setenv(kernel_library.MARCH_ENV, bad)
        with pytest.raises(ValueError, match=kernel_library.MARCH_ENV):
            kernel_library.compile_flags()
