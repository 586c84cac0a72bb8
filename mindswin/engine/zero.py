"""ZeRO-1: optimizer state sharded across the data-parallel ranks (``enable_parallel_optimizer``).

MindSpore shards optimizer state in data parallel only for its own AdamWeightDecay, Lamb
and AdaFactor; mindswin's optimizers (:class:`~mindswin.engine.optim.MaskedOptimizer`) shard
themselves.

Every trainable tensor is flattened and zero-padded to ``group_size * chunk`` elements;
rank ``r`` owns elements ``[r * chunk, (r + 1) * chunk)`` and keeps the optimizer's state
(and the gradient-accumulation buffer) for those elements only. A step then:

1. packs all local gradients into one ``(group_size, C)`` buffer whose row ``r`` holds
   every tensor's ``r``-th chunk (``C`` is the sum of the chunks), and reduces it so each
   rank receives the group's mean of its own row: a ``ReduceScatter`` on Ascend and GPU,
   an ``AllReduce`` followed by taking the row on CPU (MindSpore's CPU backend has no
   ReduceScatter; the arithmetic is the same);
2. checks finiteness, accumulates and clips on the shards (the global norm is an
   all-reduced sum of squares);
3. updates its chunk of every parameter with its moments, and all-gathers the updated
   chunks (one ``AllGather``) into the full parameters every replica holds.

The resume state stays independent of the world size: saving all-gathers each moment to
its full shape (one tensor at a time), and loading gives each rank its chunk of rank 0's
full tensors. A run can resume sharded from an unsharded state and the other way round.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = ["Sharding", "ShardedLayout", "ShardedGradientMean", "ShardedParameterGather", "sharded_clip_by_global_norm",
           "global_norm", "clip_by_norm"]


@dataclass(frozen=True)
class Sharding:
    """This rank's place in the data-parallel group that shares the optimizer state."""

    rank: int
    group_size: int

    def chunk(self, shape: Sequence[int]) -> int:
        """Elements of a tensor of ``shape`` that each rank owns (the last chunk is zero-padded)."""
        return max(1, math.ceil(int(np.prod(shape, dtype=np.int64)) / self.group_size))

    def own_chunk(self, full: np.ndarray) -> np.ndarray:
        """This rank's chunk of a full host array."""
        chunk = self.chunk(full.shape)
        flat = np.zeros(chunk * self.group_size, full.dtype)
        flat[:full.size] = full.reshape(-1)
        return flat[self.rank * chunk:(self.rank + 1) * chunk]

    def gather(self, shard: Tensor, shape: Sequence[int]) -> np.ndarray:
        """The full tensor of ``shape`` from every rank's chunk (a collective: all ranks call it)."""
        full = ops.AllGather()(shard).asnumpy()
        return full[:int(np.prod(shape, dtype=np.int64))].reshape(shape)

    def chunk_from_root(self, full: Optional[np.ndarray], shape: Sequence[int], dtype) -> np.ndarray:
        """This rank's chunk of rank 0's full tensor (a collective; ``full`` is read on rank 0 only)."""
        sent = full if self.rank == 0 else np.zeros(shape, dtype)
        received = ops.Broadcast(0)((Tensor(np.ascontiguousarray(sent, dtype)),))[0].asnumpy()
        return self.own_chunk(received)


_to_rows = ops.MultitypeFuncGraph("to_rows")


@_to_rows.register("Number", "Tensor")
def _rows_of(group_size, tensor):
    """``(group_size, chunk)``: the tensor flattened and zero-padded, one chunk per rank."""
    flat = tensor.reshape(-1).astype(ms.float32)
    padding = (group_size - flat.shape[0] % group_size) % group_size
    if padding > 0:
        flat = ops.concat((flat, ops.zeros(padding, ms.float32)))
    return flat.reshape(group_size, -1)


_cut = ops.MultitypeFuncGraph("cut")


@_cut.register("Tensor", "Number", "Number")
def _cut_columns(rows, start, size):
    # static slices: ops.split with a list of sizes unrolls into a deep call chain, and SplitV has no CPU kernel
    return rows[..., start:start + size]


_from_rows = ops.MultitypeFuncGraph("from_rows")


@_from_rows.register("Tensor", "Tensor")
def _full_from_rows(like, rows):
    """The tensor shaped like ``like`` whose chunks are the rows of ``rows``."""
    return rows.reshape(-1)[:like.size].reshape(like.shape)


class ShardedLayout(nn.Cell):
    """Moves per-tensor values between full shapes and the ``(group_size, C)`` chunk layout.

    Args:
        shapes: Full shapes of the sharded tensors, in optimizer order.
        sharding: Rank and group size.
    """

    def __init__(self, shapes: Sequence[Tuple[int, ...]], sharding: Sharding) -> None:
        super().__init__()
        self.chunks = tuple(sharding.chunk(s) for s in shapes)
        self.offsets = tuple(int(o) for o in np.cumsum((0,) + self.chunks[:-1]))
        self.group_size = sharding.group_size
        self.rank = sharding.rank
        self.hyper_map = ops.HyperMap()

    def pack(self, tensors) -> Tensor:
        """``(group_size, C)``: row ``r`` is every tensor's ``r``-th chunk, one after another."""
        return ops.concat(self.hyper_map(ops.partial(_to_rows, self.group_size), tensors), axis=1)

    def own_chunks(self, tensors):
        """This rank's chunk of each full tensor (no communication)."""
        return self.split(self.pack(tensors)[self.rank])

    def split(self, rows: Tensor):
        """One rank's row of :meth:`pack` (or all rows), cut back into the per-tensor chunks."""
        return self.hyper_map(ops.partial(_cut, rows), self.offsets, self.chunks)

    def unpack(self, rows: Tensor, likes):
        """Tensors shaped like ``likes`` from the ``(group_size, C)`` layout."""
        return self.hyper_map(_from_rows, likes, self.split(rows))


class ShardedGradientMean(nn.Cell):
    """The data-parallel group's mean gradient, each rank receiving only its own chunks."""

    def __init__(self, layout: ShardedLayout) -> None:
        super().__init__()
        self.layout = layout
        self.scatter = ms.get_context("device_target") != "CPU"
        self.reduce = ops.ReduceScatter(ops.ReduceOp.SUM) if self.scatter else ops.AllReduce()

    def construct(self, grads):
        packed = self.layout.pack(grads)
        if self.scatter:
            row = self.reduce(packed).reshape(-1)
        else:
            row = self.reduce(packed)[self.layout.rank]
        return self.layout.split(row / self.layout.group_size)


class ShardedParameterGather(nn.Cell):
    """Full tensors (shaped like ``likes``) from every rank's chunks of them (one AllGather)."""

    def __init__(self, layout: ShardedLayout) -> None:
        super().__init__()
        self.layout = layout
        self.all_gather = ops.AllGather()

    def construct(self, chunks, likes):
        rows = self.all_gather(ops.concat(chunks)).reshape(self.layout.group_size, -1)
        return self.layout.unpack(rows, likes)


_squared_sum = ops.MultitypeFuncGraph("squared_sum")


@_squared_sum.register("Tensor")
def _sum_of_squares(grad):
    return (grad * grad).sum()


_scale = ops.MultitypeFuncGraph("scale")


@_scale.register("Tensor", "Tensor")
def _scale_grad(factor, grad):
    return grad * factor


def global_norm(grads, hyper_map, all_reduce_sum=None) -> Tensor:
    """L2 norm of all ``grads`` together; with ``all_reduce_sum``, of the chunks every rank holds (ZeRO-1)."""
    squares = ops.addn(hyper_map(_squared_sum, grads))
    return ops.sqrt(squares if all_reduce_sum is None else all_reduce_sum(squares))


def clip_by_norm(grads, norm: Tensor, clip_norm: float, hyper_map):
    """``grads`` scaled by ``clip_norm / max(norm, clip_norm)``: clipped to global norm ``clip_norm``."""
    factor = clip_norm / ops.maximum(norm, clip_norm)
    return hyper_map(ops.partial(_scale, factor), grads)


def sharded_clip_by_global_norm(chunks, clip_norm: float, all_reduce_sum, hyper_map):
    """``clip_by_global_norm`` over gradients sharded across ranks (padding chunks hold zeros)."""
    return clip_by_norm(chunks, global_norm(chunks, hyper_map, all_reduce_sum), clip_norm, hyper_map)
