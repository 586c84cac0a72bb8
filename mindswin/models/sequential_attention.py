"""Sequential self-attention (Swin V2 paper, section 3.4): window attention group by group.

The batched attention of :class:`~mindswin.models.swin_v2.WindowAttention` holds the logits
and probabilities of every window and head at once, ``B * windows * heads * N**2`` floats,
and autodiff keeps the probabilities of every block for the backward pass. At 1,024 px and
window 32 that is 0.8 GB per stage-1 block. :class:`SequentialAttentionCore` computes
``softmax(q k^T + bias + mask) v`` for a group of windows and heads at a time and keeps only
its inputs and output; its backward pass recomputes each group's probabilities from ``q``
and ``k``. A block's attention then needs one group's probabilities at a time, forward or
backward, whatever the number of windows: memory that MindSpore's own ``recompute`` does not
cut (see docs/memory.md).

The position bias ``(heads, N, N)`` and the shifted-window mask are never expanded to
``(windows, heads, N, N)``: each group adds its own ``(w, h, N, N)`` slice, shared by the images
of the batch, and makes its ``(w, N, N)`` part of the mask from the mask's factors
(:func:`~mindswin.models.layers.mask_from_factors`).

Groups run one after another, unrolled: each group's inputs depend (``ops.depend``) on the
previous group's output, since a dataflow graph is otherwise free to compute every group's
logits before any softmax. A group reads its ``(row, head)`` pairs with one ``GatherNd``, and one
``ScatterNd`` writes every group's output (gradients) at the end: MindSpore's CPU backend keeps every
compiled kernel in host memory, next to the tensors, and a group of 5-D slices and
concatenations cost about 30 MB of graph there, a gathered group about 4 MB. (A graph-mode
``while`` loop over the groups compiles one body whatever their number, but the runtime then
held about 0.7 GB more per Swin V2-T step at 512 px.)
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import mindspore as ms
from mindspore import Tensor, nn, ops

from .kernels import BiasSoftmaxKernel, WindowBiasSoftmaxKernel
from .layers import expand_to, mask_from_factors

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
        mask_factors: The ``(2, num_windows, N, k)`` float32 factors of the shifted-window mask
            (:func:`~mindswin.models.swin_v2.shifted_window_mask_factors`), or None.
        fused: Softmax and its gradient in the fused CPU kernels (:class:`BiasSoftmaxKernel`; with a
            mask :class:`WindowBiasSoftmaxKernel`, which adds the bias and the mask row by row).

    Inputs are parameter-free tensors (a custom ``bprop`` may not read parameters): ``q``, ``k``,
    ``v`` ``(B * num_windows, heads, N, head_dim)`` in the matmul dtype and ``bias``
    ``(heads, N, N)`` in float32. Softmax and its gradient run in float32, as in the batched path.

    The mask factors are constants of the cell; each group multiplies its windows' after the bias.
    """

    def __init__(self, num_windows: int, num_heads: int, window_chunk: int = 0, head_chunk: int = 0,
                 mask_factors: Optional[Tensor] = None, fused: bool = False) -> None:
        super().__init__()
        self.num_windows = num_windows
        self.num_heads = num_heads
        self.window_groups = chunk_ranges(num_windows, window_chunk)
        self.head_groups = chunk_ranges(num_heads, head_chunk)
        self.mask_factors = mask_factors
        softmax_kernel = BiasSoftmaxKernel if mask_factors is None else WindowBiasSoftmaxKernel
        self.bias_softmax = softmax_kernel() if fused else None
        self.qk_matmul = ops.BatchMatMul(transpose_b=True)
        self.av_matmul = ops.BatchMatMul()
        self.ta_matmul = ops.BatchMatMul(transpose_a=True)
        # Primitive instances: a nested GradOperation (BlockCheckpoint) inside a bprop fails on
        # some functional ops ("The func graph is empty").
        self.zeros_like = ops.ZerosLike()
        self.gather = ops.Gather()
        self.gather_pairs = ops.GatherNd()
        self.scatter_pairs = ops.ScatterNd()
        self.scatter_add = ops.TensorScatterAdd()
        self.concat_last = ops.Concat(axis=-1)
        self.concat_rows = ops.Concat(axis=0)
        self.tile = ops.Tile()
        self.softmax = ops.Softmax(axis=-1)

    @property
    def num_groups(self) -> int:
        """Groups of windows x heads computed one after another."""
        return len(self.window_groups) * len(self.head_groups)

    def _group_indices(self, windows: Tuple[int, int], heads: Tuple[int, int],
                       images: int) -> Tuple[Tensor, Tensor, Tensor]:
        """The group's ``(images * w, h, 2)`` (row, head) pairs in the ``(images * windows, heads)``
        layout, image-major, and its ``(w,)`` windows and ``(h,)`` heads (constants of the graph)."""
        window_index = Tensor(tuple(range(windows[0], windows[1])), ms.int32)
        head_index = Tensor(tuple(range(heads[0], heads[1])), ms.int32)
        image_rows = Tensor(tuple(range(0, images * self.num_windows, self.num_windows)), ms.int32)
        rows = (image_rows.reshape(-1, 1) + window_index.reshape(1, -1)).reshape(-1, 1, 1)
        heads_column = head_index.reshape(1, -1, 1)
        # Adding zeros of the other's shape broadcasts each to (images * w, h, 1).
        pairs = self.concat_last((rows + heads_column * 0, heads_column + rows * 0))
        return pairs, window_index, head_index

    def _group_terms(self, bias: Tensor, window_index: Tensor, head_index: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
        """What one group's logits add: its ``(h, N, N)`` position bias, shared by every window, and
        its ``(w, N, N)`` part of the mask, shared by every head (None without a mask)."""
        head_bias = self.gather(bias, head_index, 0)
        if self.mask_factors is None:
            return head_bias, None
        return head_bias, mask_from_factors(self.gather(self.mask_factors, window_index, 1), bias)

    def _probabilities(self, q: Tensor, k: Tensor, head_bias: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Float32 probabilities ``(B * w, h, N, N)`` of one group."""
        logits = self.qk_matmul(q, k).astype(ms.float32)
        if self.bias_softmax is not None:
            if mask is None:
                return self.bias_softmax(logits, head_bias)
            return self.bias_softmax(logits, head_bias, mask)
        group_bias = head_bias
        if mask is not None:  # (w, h, N, N), shared by every image; Tile: docs/memory.md
            windows, heads, n = mask.shape[0], head_bias.shape[0], mask.shape[-1]
            group_bias = self.tile(head_bias.reshape(1, heads, n, n), (windows, 1, 1, 1)) + \
                self.tile(mask.reshape(windows, 1, n, n), (1, heads, 1, 1))
        flat = logits.reshape(-1, group_bias.size)
        flat = flat + expand_to(group_bias.reshape(1, -1), flat)
        return self.softmax(flat.reshape(logits.shape))

    def _softmax_backward(self, dprobs: Tensor, probs: Tensor, head_bias: Tensor) -> Tuple[Tensor, Tensor]:
        """Gradients of the logits ``(B * w, h, N, N)`` and of the group's ``(h, N, N)`` position bias
        (a sum over images and windows)."""
        if self.bias_softmax is not None:
            return self.bias_softmax.backward_op(dprobs, probs, head_bias)
        dot = (dprobs * probs).sum(axis=-1, keepdims=True)
        dlogits = probs * (dprobs - expand_to(dot, dprobs))
        return dlogits, dlogits.reshape(-1, head_bias.size).sum(axis=0).reshape(head_bias.shape)

    def _attend_group(self, windows: Tuple[int, int], heads: Tuple[int, int], inputs: Tuple[Tensor, ...],
                      previous: Tensor) -> Tuple[Tensor, Tensor]:
        """The ``(row, head)`` pairs and the ``(B * w, h, N, D)`` attention output of the group of
        ``windows`` x ``heads``, its ``inputs`` ``(q, k, v, bias)`` gated on ``previous``."""
        q, k, v, bias = (ops.depend(inputs[0], previous), ops.depend(inputs[1], previous),
                         ops.depend(inputs[2], previous), ops.depend(inputs[3], previous))
        pairs, window_index, head_index = self._group_indices(windows, heads, q.shape[0] // self.num_windows)
        qg, kg, vg = self.gather_pairs(q, pairs), self.gather_pairs(k, pairs), self.gather_pairs(v, pairs)
        probs = self._probabilities(qg, kg, *self._group_terms(bias, window_index, head_index))
        return pairs, self.av_matmul(probs.astype(vg.dtype), vg)

    def _backward_group(self, windows: Tuple[int, int], heads: Tuple[int, int], inputs: Tuple[Tensor, ...],
                        previous: Tensor, dbias: Tensor) -> Tuple[Tensor, Tuple[Tensor, Tensor, Tensor], Tensor]:
        """The group's pairs, its ``(B * w, h, N, D)`` gradients of ``q``, ``k``, ``v``, and ``dbias``
        with its part added, from ``inputs`` ``(q, k, v, bias, dout)`` gated on ``previous``."""
        q, k, v, bias, dout = (ops.depend(inputs[0], previous), ops.depend(inputs[1], previous),
                               ops.depend(inputs[2], previous), ops.depend(inputs[3], previous),
                               ops.depend(inputs[4], previous))
        pairs, window_index, head_index = self._group_indices(windows, heads, q.shape[0] // self.num_windows)
        qg, kg, vg, dg = (self.gather_pairs(q, pairs), self.gather_pairs(k, pairs), self.gather_pairs(v, pairs),
                          self.gather_pairs(dout, pairs))
        head_bias, mask = self._group_terms(bias, window_index, head_index)
        probs = self._probabilities(qg, kg, head_bias, mask)
        dvg = self.ta_matmul(probs.astype(dg.dtype), dg)
        dlogits, dhead_bias = self._softmax_backward(self.qk_matmul(dg, vg).astype(ms.float32), probs, head_bias)
        dbias = self.scatter_add(dbias, head_index.reshape(-1, 1), dhead_bias)
        dlogits = dlogits.astype(qg.dtype)
        return pairs, (self.av_matmul(dlogits, kg), self.ta_matmul(dlogits, qg), dvg), dbias

    def _assemble(self, pairs: List[Tensor], parts: List[Tensor], like: Tensor) -> Tensor:
        """The groups' ``parts`` written at their ``pairs`` into one tensor shaped as ``like``.

        One scatter at the end: a chain of per-group updates of the whole tensor held about one
        group's probabilities more per core until the backward pass reached it.
        """
        if len(parts) == 1:  # one group: its pairs are every row and head, in order
            return parts[0]
        # flattened to (pair, N, D): groups differ in windows and, uneven, in heads
        return self.scatter_pairs(self.concat_rows([p.reshape(-1, 2) for p in pairs]),
                                  self.concat_rows([x.reshape((-1,) + x.shape[2:]) for x in parts]), like.shape)

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
        pairs, outputs = [], []
        previous = bias
        for windows in self.window_groups:
            for heads in self.head_groups:
                group_pairs, previous = self._attend_group(windows, heads, (q, k, v, bias), previous)
                pairs.append(group_pairs)
                outputs.append(previous)
        return self._assemble(pairs, outputs, v)

    def bprop(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, out: Tensor, dout: Tensor):
        pairs, dq, dk, dv = [], [], [], []
        dbias = self.zeros_like(bias)
        previous = dout
        for windows in self.window_groups:
            for heads in self.head_groups:
                group_pairs, grads, dbias = self._backward_group(windows, heads, (q, k, v, bias, dout), previous,
                                                                 dbias)
                pairs.append(group_pairs)
                dq.append(grads[0])
                dk.append(grads[1])
                dv.append(grads[2])
                previous = grads[1]
        return self._assemble(pairs, dq, q), self._assemble(pairs, dk, k), self._assemble(pairs, dv, v), dbias
