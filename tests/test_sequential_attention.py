"""Sequential self-attention: the same logits and gradients as batched attention, group by group.

Bounds are float32 round-off, derived where they are asserted. The round-off of one attention
comes from the logits: ``T * cos(q, k)`` with temperature ``T <= 100`` (the clamp) is a dot
product of ``D`` products, off by at most ``T * D * eps``; softmax turns an absolute logit error
into about twice that relative error of the probabilities, and each matmul after it adds
``N * eps`` (``N`` terms). Gradients go through the same logits once more.
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from mindswin.amp import apply_amp
from mindswin.models.kernel_library import cpu_kernels
from mindswin.models.sequential_attention import SequentialAttentionCore, chunk_ranges

from helpers import loss_and_grads, micro, randomize

EPS32 = float(np.finfo(np.float32).eps)
MAX_TEMPERATURE = 100.0  # the logit-scale clamp, exp(log(100))


def test_chunk_ranges_cover_every_item_once():
    assert chunk_ranges(7, 3) == ((0, 3), (3, 6), (6, 7))
    assert chunk_ranges(4, 0) == ((0, 4),)
    assert chunk_ranges(4, 9) == ((0, 4),)
    for total, chunk in ((16, 5), (3, 1), (12, 4)):
        covered = [i for start, stop in chunk_ranges(total, chunk) for i in range(start, stop)]
        assert covered == list(range(total))


class BatchedAttention(nn.Cell):
    """The reference: one softmax over all windows and heads, MindSpore's own autodiff."""

    def __init__(self, num_windows: int, num_heads: int, mask: ms.Tensor):
        super().__init__()
        self.num_windows, self.num_heads, self.mask = num_windows, num_heads, mask

    def construct(self, q, k, v, bias):
        n = q.shape[2]
        logits = ops.BatchMatMul(transpose_b=True)(q, k).reshape(-1, self.num_windows, self.num_heads, n, n)
        logits = logits + bias.reshape(1, 1, self.num_heads, n, n) + self.mask.reshape(1, self.num_windows, 1, n, n)
        return ops.BatchMatMul()(ops.softmax(logits, -1).reshape(q.shape[:2] + (n, n)), v)


def attention_inputs(images, windows, heads, n, d, seed=0):
    """Unit queries times temperatures up to the clamp, unit keys, a position bias and a 0 / -100 mask."""
    rng = np.random.default_rng(seed)

    def unit(shape):
        x = rng.standard_normal(shape)
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    temperature = rng.uniform(1.0, MAX_TEMPERATURE, (1, heads, 1, 1))
    q = unit((images * windows, heads, n, d)) * temperature
    k, v = unit((images * windows, heads, n, d)), rng.standard_normal((images * windows, heads, n, d))
    bias = 16.0 / (1.0 + np.exp(-rng.standard_normal((heads, n, n))))
    mask = np.where(rng.random((windows, n, n)) < 0.3, -100.0, 0.0)
    mask[:, np.arange(n), np.arange(n)] = 0.0  # every query sees itself, as in a shifted window
    return q, k, v, bias, mask


def as_factors(mask):
    """``(2, windows, N, N)`` factors of any ``(windows, N, N)`` mask: the mask and the identity."""
    return ms.Tensor(np.stack([mask, np.broadcast_to(np.eye(mask.shape[-1]), mask.shape)]).astype(np.float32))


def value_and_gradients(cell, inputs, dout, dtype):
    tensors = [ms.Tensor(x.astype(dtype)) for x in inputs]

    def weighted(*args):
        return (cell(*args) * ms.Tensor(dout.astype(dtype))).sum()

    out = cell(*tensors).asnumpy().astype(np.float64)
    grads = ms.grad(weighted, grad_position=(0, 1, 2, 3))(*tensors)
    return out, [g.asnumpy().astype(np.float64) for g in grads]


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("window_chunk,head_chunk", [(3, 0), (2, 3), (0, 1)])
def test_core_matches_float64_attention(fused, window_chunk, head_chunk):
    images, windows, heads, n, d = 2, 7, 4, 16, 8
    *inputs, mask = attention_inputs(images, windows, heads, n, d)
    dout = np.random.default_rng(1).standard_normal((images * windows, heads, n, d))
    reference, reference_grads = value_and_gradients(BatchedAttention(windows, heads, ms.Tensor(mask)), inputs,
                                                     dout, np.float64)
    with cpu_kernels(fused):
        core = SequentialAttentionCore(windows, heads, window_chunk, head_chunk, as_factors(mask),
                                       fused=fused)
    out, grads = value_and_gradients(core, inputs, dout, np.float32)
    # float32 against float64: logits off by T * D * eps, probabilities by twice that relative,
    # the output matmul adds N * eps; gradients pass the logits twice (4x). Relative to the
    # largest element of each tensor.
    bound = 4 * (2 * MAX_TEMPERATURE * d + n) * EPS32
    assert np.abs(out - reference).max() <= bound * np.abs(reference).max()
    for name, got, want in zip(("q", "k", "v", "bias"), grads, reference_grads):
        assert np.abs(got - want).max() <= 4 * bound * np.abs(want).max(), name


def test_core_adds_the_mask_it_holds_and_none_without():
    images, windows, heads, n, d = 1, 4, 2, 16, 8
    q, k, v, bias, mask = attention_inputs(images, windows, heads, n, d)
    as_tensors = [ms.Tensor(x.astype(np.float32)) for x in (q, k, v, bias)]
    unmasked = SequentialAttentionCore(windows, heads, 2, 0, None, fused=False)(*as_tensors).asnumpy()
    zero_mask = as_factors(np.zeros_like(mask))
    zero_masked = SequentialAttentionCore(windows, heads, 2, 0, zero_mask)(*as_tensors).asnumpy()
    np.testing.assert_array_equal(unmasked, zero_masked)
    masked = SequentialAttentionCore(windows, heads, 2, 0, as_factors(mask))(*as_tensors).asnumpy()
    assert np.abs(masked - unmasked).max() > 1e-3


def model_pair(**kwargs):
    """The micro model batched and with sequential attention (uneven groups: 3 windows, 3 heads), same weights."""
    batched = randomize(micro(**kwargs))
    sequential = randomize(micro(sequential_attention=3, sequential_attention_heads=3, **kwargs))
    return batched, sequential


def micro_inputs():
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32))
    return x, ms.Tensor(np.array([1, 3], np.int32))


def assert_same_training_signal(batched, sequential, relative):
    """Logits and every parameter gradient within ``relative`` of each tensor's largest element."""
    x, y = micro_inputs()
    logits_a, logits_b = batched(x).asnumpy(), sequential(x).asnumpy()
    assert np.abs(logits_a - logits_b).max() <= relative * np.abs(logits_a).max()
    _, grads_a = loss_and_grads(batched, x, y)
    _, grads_b = loss_and_grads(sequential, x, y)
    names = [p.name for p in batched.trainable_params()]
    assert names == [p.name for p in sequential.trainable_params()]
    for name, a, b in zip(names, grads_a, grads_b):
        a, b = a.asnumpy(), b.asnumpy()
        assert np.abs(a - b).max() <= relative * max(np.abs(a).max(), 1e-30), name


# Model-level bound: the two paths add the same float32 terms in other orders in each of the 4
# blocks' attentions (logits T * D * eps, the matmuls N * eps, with the micro model's D = 12,
# N = 16) and the gradients pass the logits twice; the blocks in between are the same ops.
MODEL_BOUND = 4 * 4 * (2 * MAX_TEMPERATURE * 12 + 16) * EPS32


# The model-level comparisons compile the whole micro model's gradient twice with every group unrolled
# (about 1.5 min each on 2 cores): slow tier; the core's own comparisons above stay in the fast one.
@pytest.mark.slow
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("recompute", [False, True])
def test_model_logits_and_gradients_match_batched(fused, recompute):
    with cpu_kernels(fused):
        batched, sequential = model_pair(recompute=recompute)
    assert "sequential" in sequential.layers[1].blocks[1].attn.path_names  # a shifted (masked) block
    assert_same_training_signal(batched, sequential, MODEL_BOUND)


@pytest.mark.slow
def test_amp_o2_sequential_matches_batched():
    batched, sequential = model_pair()
    batched, sequential = apply_amp(batched, "O2"), apply_amp(sequential, "O2")
    # Both compute the same float16 matmuls of the same rows; softmax in float32. What remains
    # is the order of float32 sums: the float32 bound, not float16's.
    assert_same_training_signal(batched, sequential, MODEL_BOUND)


def test_cpu_attention_kernel_stands_in_for_the_core():
    """At 144 tokens per window the fused CPU kernel attends one (window, head) pair at a time and
    takes the core's place: a sequential model computes exactly what the batched one does."""
    # stage maps 24 and 12: 4 windows (one block shifted), then 1
    geometry = dict(img_size=48, window_size=12, depths=[2, 2, 1])
    batched, sequential = model_pair(**geometry)
    assert sequential.layers[0].blocks[1].attn.path_names[:2] == ("row_blocks", "sequential")
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 48, 48)).astype(np.float32))
    y = ms.Tensor(np.array([1, 3], np.int32))
    np.testing.assert_array_equal(batched(x).asnumpy(), sequential(x).asnumpy())
    for a, b in zip(loss_and_grads(batched, x, y)[1], loss_and_grads(sequential, x, y)[1]):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def test_checkpoint_attends_in_one_batch_where_one_group_is_all():
    # the micro model's maps have 16, 4 and 1 windows: groups of 4 windows make 4, 1 and 1 groups
    plain, checkpointed = micro(sequential_attention=4), micro(sequential_attention=4, recompute=True)
    depths = [len(layer.blocks) for layer in plain.layers]
    assert [[b.attn.path("sequential").core.num_groups for b in layer.blocks] for layer in plain.layers] == \
        [[groups] * depth for groups, depth in zip((4, 1, 1), depths)]
    # inside a checkpoint one group holds what batched attention holds; only the split stage stays sequential
    assert [["sequential" in b.attn.path_names for b in layer.blocks] for layer in checkpointed.layers] == \
        [[split] * depth for split, depth in zip((True, False, False), depths)]


def test_attention_dropout_is_refused():
    with pytest.raises(ValueError, match="attn_drop_rate 0"):
        micro(sequential_attention=2, attn_drop_rate=0.1)
