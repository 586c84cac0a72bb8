"""ZeRO-1's chunk layout and sharded clipping in one process (the msrun runs are in test_distributed.py)."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

from mindswin.engine.optim import AdamW
from mindswin.engine.zero import ShardedLayout, Sharding, sharded_clip_by_global_norm

# odd sizes: chunks that need padding, a tensor smaller than the group, a scalar-like bias
SHAPES = [(5, 3), (7,), (1,), (2, 2, 3)]


class _Roundtrip(nn.Cell):
    def __init__(self, layout: ShardedLayout) -> None:
        super().__init__()
        self.layout = layout

    def construct(self, tensors):
        packed = self.layout.pack(tensors)
        return packed, self.layout.own_chunks(tensors), self.layout.unpack(packed, tensors)


@pytest.mark.parametrize("rank, group_size", [(0, 2), (1, 2), (2, 3)])
def test_layout_puts_each_ranks_chunks_in_its_row_and_unpacks_exactly(rank, group_size):
    sharding = Sharding(rank, group_size)
    rng = np.random.default_rng(rank)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in SHAPES]
    packed, own, full = _Roundtrip(ShardedLayout(SHAPES, sharding))(tuple(Tensor(a) for a in arrays))
    chunks = [sharding.chunk(shape) for shape in SHAPES]
    assert packed.shape == (group_size, sum(chunks))
    for array, chunk, mine, back in zip(arrays, chunks, own, full):
        expected = sharding.own_chunk(array)
        assert expected.shape == (chunk,)
        assert np.array_equal(mine.asnumpy(), expected)
        assert np.array_equal(back.asnumpy(), array)
    # the rows together hold every element once, zero padding after each tensor's last element
    assert np.isclose(np.abs(packed.asnumpy()).sum(), sum(np.abs(a).sum() for a in arrays), rtol=1e-6)


class _Clip(nn.Cell):
    def __init__(self, clip: float) -> None:
        super().__init__()
        self.clip = clip
        self.hyper_map = ops.HyperMap()

    def construct(self, grads):
        # one rank holding every chunk: the all-reduce of the squared norm is the identity
        return sharded_clip_by_global_norm(grads, self.clip, ops.identity, self.hyper_map)


@pytest.mark.parametrize("clip", [0.5, 100.0])
def test_sharded_clip_scales_by_the_global_norm(clip):
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(n).astype(np.float32) for n in (6, 4, 9)]
    norm = np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    clipped = _Clip(clip)(tuple(Tensor(g) for g in grads))
    factor = clip / max(norm, clip)
    for g, c in zip(grads, clipped):
        # float32 sum of 19 squares and one sqrt: relative error below 19 * 2**-24 + 2**-24
        np.testing.assert_allclose(c.asnumpy(), g * factor, rtol=20 * 2.0 ** -24, atol=0)
    if clip > norm:
        assert all(np.array_equal(c.asnumpy(), g) for g, c in zip(grads, clipped))  # inactive clip is exact


def test_sharded_adamw_holds_one_chunk_of_each_moment():
    params = [ms.Parameter(Tensor(np.ones(shape, np.float32)), name=f"p{i}") for i, shape in enumerate(SHAPES)]
    full = AdamW(params, 0.05, set())
    sharded = AdamW(params, 0.05, set(), sharding=Sharding(1, 2))
    assert [m.shape for m in sharded.exp_avg] == [(Sharding(1, 2).chunk(s),) for s in SHAPES]
    # ceil(15/2) + ceil(7/2) + ceil(1/2) + ceil(12/2) = 8 + 4 + 1 + 6 floats per moment
    assert sharded.state_bytes() == 2 * 4 * 19 and full.state_bytes() == 2 * 4 * 35
