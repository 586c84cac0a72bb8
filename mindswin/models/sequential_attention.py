"""Sequential self-attention (Swin V2 paper, section 3.4): window attention chunk by chunk.

The batched attention of :class:`~mindswin.models.swin_v2.WindowAttention` holds the logits
and probabilities of every window and head at once, ``B * windows * heads * N**2`` floats,
and autodiff keeps the probabilities of every block for the backward pass. At 1,024 px and
window 32 that is 0.8 GB per stage-1 block. :class:`SequentialAttentionCore` computes
``softmax(q k^T + bias + mask) v`` for a group of windows and heads at a time and keeps only
its inputs and output; its backward pass recomputes each group's probabilities from ``q``
and ``k``. A block's attention then needs one group's probabilities at a time, forward or
backward, whatever the number of windows: memory that MindSpore's own ``recompute`` does not
cut (see docs/memory.md).

The position bias ``(heads, N, N)`` and the shifted-window mask ``(windows, N, N)`` are never
expanded to ``(windows, heads, N, N)``: each group adds its own ``(w, h, N, N)`` slice, shared
by the images of the batch.

Groups run one after another: each group's inputs (its slices of ``q``, ``k``, ``v`` and its
bias) depend (``ops.depend``) on the previous group's output, since a dataflow graph is
otherwise free to compute every group's logits before any softmax, or every group's bias up
front.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import mindspore as ms
from mindspore import Tensor, nn, ops

from .kernels import BiasSoftmaxKernel
from .layers import expand_to

__all__ = ["SequentialAttentionCore", "chunk_ranges", "sequential_pays_under_checkpoint"]


def chunk_ranges(total: int, chunk: int) -> Tuple[Tuple[int, int], ...]:
    """``[start, stop)`` ranges of at most ``chunk`` items covering ``range(total)`` (0: one range)."""
    if chunk <= 0 or chunk >= total:
        return ((0, total),)
    return tuple((start, min(start + chunk, total)) for start in range(0, total, chunk))


def sequential_pays_under_checkpoint(num_groups: int) -> bool:
    """Whether sequential attention of ``num_groups`` groups still saves memory in a checkpointed block.

    A checkpointed block's rerun frees the attention probabilities after its own backward pass
    either way, so a single group holds there what batched attention holds, and recomputing its
    probabilities once more would only cost time (a ``q k^T`` and a softmax) and compiled graph.
    """
    return num_groups > 1


class SequentialAttentionCore(nn.Cell):
    """``softmax(q k^T + bias + mask) v`` over groups of windows x heads, probabilities recomputed in backward.

    Args:
        num_windows: Windows per image (``q``'s leading axis is ``images * num_windows``).
        num_heads: Attention heads.
        window_chunk: Windows per group (0: all).
        head_chunk: Heads per group (0: all).
        mask: The ``(num_windows, N, N)`` float32 shifted-window mask, or None.
        fused: Softmax and its gradient in the fused CPU kernel (:class:`BiasSoftmaxKernel`).

    Inputs are parameter-free tensors (a custom ``bprop`` may not read parameters): ``q``, ``k``,
    ``v`` ``(B * num_windows, heads, N, head_dim)`` in the matmul dtype and ``bias``
    ``(heads, N, N)`` in float32. Softmax and its gradient run in float32, as in the batched path.

    The mask is a constant of the cell, gated on the bias (``ops.depend``) before it is sliced and
    broadcast: MindSpore folds an op whose inputs are all constants at compile time, and would
    keep each group's ``(w, h, N, N)`` broadcast mask, the whole ``(windows, heads, N, N)`` per
    block, for the life of the graph.
    """

    def __init__(self, num_windows: int, num_heads: int, window_chunk: int = 0, head_chunk: int = 0,
                 mask: Optional[Tensor] = None, fused: bool = False) -> None:
        super().__init__()
        self.num_windows = num_windows
        self.num_heads = num_heads
        self.window_groups = chunk_ranges(num_windows, window_chunk)
        self.head_groups = chunk_ranges(num_heads, head_chunk)
        self.mask = mask
        self.bias_softmax = BiasSoftmaxKernel() if fused else None
        self.qk_matmul = ops.BatchMatMul(transpose_b=True)
        self.av_matmul = ops.BatchMatMul()
        self.ta_matmul = ops.BatchMatMul(transpose_a=True)

    @property
    def num_groups(self) -> int:
        """Groups of windows x heads computed one after another."""
        return len(self.window_groups) * len(self.head_groups)

    def _by_window(self, x: Tensor) -> Tensor:
        """``(B * windows, heads, N, D)`` -> ``(B, windows, heads, N, D)``."""
        return x.reshape((-1, self.num_windows) + x.shape[1:])

    def _group(self, x: Tensor, windows: Tuple[int, int], heads: Tuple[int, int]) -> Tensor:
        """One group ``(B * w, h, N, D)`` of a ``(B, windows, heads, N, D)`` tensor."""
        part = x[:, windows[0]:windows[1], heads[0]:heads[1]]
        return part.reshape((-1,) + part.shape[2:])

    def _group_bias(self, bias: Tensor, windows: Tuple[int, int], heads: Tuple[int, int]) -> Tensor:
        """What one group's logits add: the ``(h, N, N)`` position bias, shared by every window, or
        with a mask the ``(w, h, N, N)`` bias plus mask, shared by every image."""
        head_bias = bias[heads[0]:heads[1]]
        if self.mask is None:
            return head_bias
        n = bias.shape[-1]
        shape = (windows[1] - windows[0], heads[1] - heads[0], n, n)
        mask = ops.depend(self.mask, bias)[windows[0]:windows[1]]
        return ops.broadcast_to(head_bias.reshape((1,) + shape[1:]), shape) + \
            ops.broadcast_to(mask.reshape(shape[0], 1, n, n), shape)

    def _group_inputs(self, tensors: Tuple[Tensor, ...], previous: Tensor, windows: Tuple[int, int],
                      heads: Tuple[int, int]) -> Tuple[Tensor, ...]:
        """One group's slices of the ``(B, windows, heads, N, D)`` ``tensors[:-1]`` and its bias from ``tensors[-1]``.

        Each is gated on the previous group's result: slices and bias depend on nothing else, so
        a dataflow executor would otherwise make every group's at once and hold them all (with a
        mask, the whole ``(windows, heads, N, N)`` bias per block).
        """
        gated = [ops.depend(x, previous) for x in tensors]
        return tuple(self._group(x, windows, heads) for x in gated[:-1]) + \
            (self._group_bias(gated[-1], windows, heads),)

    def _probabilities(self, q: Tensor, k: Tensor, group_bias: Tensor) -> Tensor:
        """Float32 probabilities ``(B * w, h, N, N)`` of one group."""
        logits = self.qk_matmul(q, k).astype(ms.float32)
        if self.bias_softmax is not None:
            return self.bias_softmax(logits, group_bias)
        flat = logits.reshape(-1, group_bias.size)
        flat = flat + expand_to(group_bias.reshape(1, -1), flat)
        return ops.softmax(flat.reshape(logits.shape), axis=-1)

    def _softmax_backward(self, dprobs: Tensor, probs: Tensor, group_bias: Tensor) -> Tuple[Tensor, Tensor]:
        """Gradients of the logits ``(B * w, h, N, N)`` and of the group bias (its shape)."""
        if self.bias_softmax is not None:
            return self.bias_softmax.backward_op(dprobs, probs, group_bias)
        dot = (dprobs * probs).sum(axis=-1, keepdims=True)
        dlogits = probs * (dprobs - expand_to(dot, dprobs))
        return dlogits, dlogits.reshape(-1, group_bias.size).sum(axis=0).reshape(group_bias.shape)

    def _assemble(self, groups: List[List[Tensor]], like: Tensor) -> Tensor:
        """Groups ``[window group][head group]`` of ``(B * w, h, N, D)`` -> ``(B * windows, heads, N, D)``."""
        rows = []
        for w in range(len(self.window_groups)):
            width = self.window_groups[w][1] - self.window_groups[w][0]
            parts = [part.reshape((-1, width) + part.shape[1:]) for part in groups[w]]
            rows.append(parts[0] if len(parts) == 1 else ops.concat(parts, axis=2))
        out = rows[0] if len(rows) == 1 else ops.concat(rows, axis=1)
        return out.reshape(like.shape)

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        q5, k5, v5 = self._by_window(q), self._by_window(k), self._by_window(v)
        groups = []
        previous = bias
        for windows in self.window_groups:
            row = []
            for heads in self.head_groups:
                qg, kg, vg, group_bias = self._group_inputs((q5, k5, v5, bias), previous, windows, heads)
                probs = self._probabilities(qg, kg, group_bias)
                previous = self.av_matmul(probs.astype(vg.dtype), vg)
                row.append(previous)
            groups.append(row)
        return self._assemble(groups, v)

    def bprop(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, out: Tensor, dout: Tensor):
        q5, k5, v5, d5 = self._by_window(q), self._by_window(k), self._by_window(v), self._by_window(dout)
        dq_groups, dk_groups, dv_groups, dbias_groups = [], [], [], []
        previous = dout
        for windows in self.window_groups:
            dq_row, dk_row, dv_row, dbias_row = [], [], [], []
            for heads in self.head_groups:
                qg, kg, vg, dg, group_bias = self._group_inputs((q5, k5, v5, d5, bias), previous, windows, heads)
                probs = self._probabilities(qg, kg, group_bias)
                dv_row.append(self.ta_matmul(probs.astype(dg.dtype), dg))
                dlogits, dgroup_bias = self._softmax_backward(self.qk_matmul(dg, vg).astype(ms.float32), probs,
                                                              group_bias)
                dbias_row.append(dgroup_bias if self.mask is None else dgroup_bias.sum(axis=0))  # (h, N, N)
                dlogits = dlogits.astype(qg.dtype)
                dq_row.append(self.av_matmul(dlogits, kg))
                previous = self.ta_matmul(dlogits, qg)
                dk_row.append(previous)
            dq_groups.append(dq_row)
            dk_groups.append(dk_row)
            dv_groups.append(dv_row)
            dbias_groups.append(dbias_row)
        return (self._assemble(dq_groups, q), self._assemble(dk_groups, k), self._assemble(dv_groups, v),
                self._bias_gradient(dbias_groups))

    def _bias_gradient(self, groups: List[List[Tensor]]) -> Tensor:
        """Sum the ``[window group][head group]`` partial bias gradients over window groups, concat heads."""
        heads = []
        for h in range(len(self.head_groups)):
            total = groups[0][h]
            for w in range(1, len(self.window_groups)):
                total = total + groups[w][h]
            heads.append(total)
        return heads[0] if len(heads) == 1 else ops.concat(heads, axis=0)
