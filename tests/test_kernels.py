"""Fused CPU kernels (compiled aot Custom ops) against the native ops they replace."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindswin.models import kernels
from mindswin.models.swin_v2 import l2_normalize

from test_model import _grads, micro, randomize


class Native(nn.Cell):
    """The formula each kernel implements, written with native ops (autodiff backward)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.layer_norm = ops.LayerNorm(-1, -1, 1e-5)

    def construct(self, x, weight, bias, scale):
        if self.name == "layer_norm":
            return self.layer_norm(x, weight, bias)[0]
        if self.name == "gelu":
            return 0.5 * x * (1.0 + ops.erf(x / np.sqrt(2.0)))
        if self.name == "softmax":
            return ops.softmax(x, axis=-1)
        return l2_normalize(x) * scale


class Kernel(nn.Cell):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.layer_norm = kernels.LayerNormKernel(1e-5)
        self.gelu = kernels.GeluKernel()
        self.softmax = kernels.SoftmaxKernel()
        self.l2 = kernels.L2NormalizeKernel()

    def construct(self, x, weight, bias, scale):
        if self.name == "layer_norm":
            return self.layer_norm(x, weight, bias)[0]
        if self.name == "gelu":
            return self.gelu(x)
        if self.name == "softmax":
            return self.softmax(x)
        return self.l2(x, scale)[0]


@pytest.mark.parametrize("name", ["layer_norm", "gelu", "softmax", "l2_normalize"])
def test_kernel_values_and_gradients_equal_native_ops(name):
    rng = np.random.default_rng(0)
    rows, width = 6 * 4, 16
    x = rng.standard_normal((rows, width)) * 2 + 0.5
    x[3] = 1e-14  # a row whose norm is clamped (L2) / has zero variance (LayerNorm)
    if name == "l2_normalize":
        x = x.reshape(3, 2, 4, width)  # (windows, heads, tokens, head_dim)
    args = [ms.Tensor(x.astype(np.float32)),
            ms.Tensor((1 + 0.3 * rng.standard_normal(width)).astype(np.float32)),
            ms.Tensor((0.2 * rng.standard_normal(width)).astype(np.float32)),
            ms.Tensor(rng.uniform(2, 50, (2, 1, 1)).astype(np.float32))]
    upstream = ms.Tensor(rng.standard_normal(x.shape).astype(np.float32))
    results = []
    for net in (Native(name), Kernel(name)):
        grad = ms.jit(ops.GradOperation(get_all=True, sens_param=True)(net))
        results.append((net(*args).asnumpy(), [g.asnumpy() for g in grad(*args, upstream)]))
    (value_a, grads_a), (value_b, grads_b) = results
    np.testing.assert_allclose(value_b, value_a, rtol=1e-5, atol=1e-5)
    used = {"layer_norm": 3, "gelu": 1, "softmax": 1, "l2_normalize": 4}[name]
    for got, want in list(zip(grads_b, grads_a))[:used]:
        if name == "l2_normalize" and got.ndim == 4:  # the clamped row: gradient is s * dy / eps
            np.testing.assert_allclose(got[0, 0, 3], want[0, 0, 3], rtol=1e-4)
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4 * np.abs(want).max())


def test_model_with_cpu_kernels_matches_native_ops():
    """Whole model: logits and every parameter gradient, CPU kernels vs native ops."""
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(np.array([1, 3], np.int32))
    results = []
    for enabled in (True, False):
        with kernels.cpu_kernels(enabled):
            model = randomize(micro(), seed=4)
        assert (model.layers[0].blocks[0].attn.softmax is not None) == enabled
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
