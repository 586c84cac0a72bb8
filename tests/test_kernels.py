"""Fused CPU kernels (compiled aot Custom ops) against the native ops they replace."""
import logging
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindswin.models import kernels
from mindswin.models.swin_v2 import l2_normalize

from test_model import _grads, micro, randomize

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
        self.bias_add = kernels.BiasAddKernel()
        self.bias_softmax = kernels.BiasSoftmaxKernel()
        self.qkv_heads = kernels.QkvHeadsKernel()

    def construct(self, *args):
        if self.name == "layer_norm":
            return self.layer_norm(*args)[0]
        if self.name == "gelu":
            return self.gelu(*args) if self.fused else ops.gelu(args[0] + args[1], approximate="none")
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
    if name in ("gelu", "bias_add"):
        return [tensor(24, 16, scale=2.0), tensor(16, scale=0.5)]
    if name == "bias_softmax":
        # (B * windows, heads, N, N) logits; bias with the mask for 3 windows: (3, heads, N, N)
        return [tensor(2 * 3, HEADS, TOKENS, TOKENS, scale=3.0), tensor(3, HEADS, TOKENS, TOKENS, scale=2.0)]
    qkv = (rng.standard_normal((WINDOWS, TOKENS, 3 * WIDTH)) * 2).astype(np.float32)
    q_bias = (rng.standard_normal(WIDTH) * 0.3).astype(np.float32)
    qkv[0, 1, :HEAD_DIM] = -q_bias[:HEAD_DIM]  # a query of norm 0: the clamped branch
    return [ms.Tensor(qkv), ms.Tensor(q_bias), tensor(WIDTH, scale=0.3),
            ms.Tensor(rng.uniform(2, 50, (HEADS, 1, 1)).astype(np.float32))]


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "bias_add", "bias_softmax", "qkv_heads"])
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
    np.testing.assert_allclose(value_fused, value_native, rtol=1e-5, atol=1e-5)
    assert len(grads_fused) == len(args)
    for got, want in zip(grads_fused, grads_native):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_model_with_cpu_kernels_matches_native_ops():
    """Whole model: logits and every parameter gradient, fused CPU kernels vs native ops."""
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(np.array([1, 3], np.int32))
    results = []
    for enabled in (True, False):
        with kernels.cpu_kernels(enabled):
            model = randomize(micro(), seed=4)
        assert (model.layers[0].blocks[0].attn.qkv_heads is not None) == enabled
        model.set_train(False)
        logits = model(x).asnumpy()
        model.set_train(True)
        loss, grads = _grads(model, x, y)
        results.append((logits, loss.asnumpy(), [g.asnumpy() for g in grads]))
    (logits_a, loss_a, grads_a), (logits_b, loss_b, grads_b) = results
    np.testing.assert_allclose(logits_a, logits_b, atol=1e-4)
    assert np.isclose(loss_a, loss_b, atol=1e-5)
    for a, b in zip(grads_a, grads_b):
        assert np.abs(a - b).max() <= 2e-4 * max(np.abs(b).max(), 1e-3)


def test_kernel_library_is_built_once_and_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("MINDSWIN_CACHE_DIR", str(tmp_path))
    built = kernels.compiled_library.__wrapped__()
    assert built is not None and os.path.dirname(built) == str(tmp_path)
    stamp = os.stat(built).st_mtime_ns
    assert kernels.compiled_library.__wrapped__() == built
    assert os.stat(built).st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(built)]  # no temporary files left


def test_failed_kernel_build_falls_back_to_native_ops_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MINDSWIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # a compiler that always fails
    with caplog.at_level(logging.WARNING):
        assert kernels.compiled_library.__wrapped__() is None
    assert "building the fused CPU kernels with false failed" in caplog.text
    assert not list(tmp_path.glob("*.so"))
