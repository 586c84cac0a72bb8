"""Hardware paths of window attention: ``softmax(q k^T + bias + mask) v`` computed another way.

:class:`~mindswin.models.swin_v2.WindowAttention` states Swin V2's attention once, in MindSpore's
ops (its reference). Each class here computes the same function where it pays, behind one
interface (:class:`AttentionPath`): the same inputs and output as the reference, a :attr:`name`,
and an :meth:`~AttentionPath.available` rule read when the graph is compiled, on what only then is
known (the dtype AMP gave the matmuls, whether the block's windows are shifted, the batch). The
model is built with the paths it may take (the fused CPU kernels or not, sequential attention,
FlashAttentionScore), in order of preference; each window attention takes the first available one,
else the reference.
"""
from __future__ import annotations

from typing import Optional

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore.ops import flash_attention_score

from .kernels import (
    AttentionKernel,
    BiasSoftmaxKernel,
    MaskedAttentionKernel,
    WindowBiasSoftmaxKernel,
    attention_kernel_available,
)
from .layers import mask_from_factors
from .sequential_attention import SequentialAttentionCore

__all__ = [
    "AttentionPath",
    "FlashAttention",
    "RowBlockAttention",
    "SequentialAttention",
    "FusedSoftmaxAttention",
    "ROW_BLOCK_ATTENTION_MIN_TOKENS",
    "FLASH_ATTENTION_MAX_BATCH",
    "row_blocks_pay",
]

# Windows of this many tokens or more attend in the fused CPU kernel (AttentionKernel), 64 query
# rows at a time. Op by op, forward and backward, 64 windows x 3 heads on this project's 2-core
# machines: at 144 tokens (window 12) as fast as the batched matmuls, at 1,024 tokens 20% faster
# (3,394 -> 697 MB peak); at 64 tokens (window 8) twice as slow (the products are too small for
# a call each), where the probabilities are small anyway.
ROW_BLOCK_ATTENTION_MIN_TOKENS = 144
# FlashAttentionScore's documented limit on its batch (here images x windows); beyond it, the other paths.
FLASH_ATTENTION_MAX_BATCH = 2048


class AttentionPath(nn.Cell):
    """One way to compute a window attention's ``softmax(q k^T + bias + mask) v``.

    Inputs, as the reference's (:meth:`~mindswin.models.swin_v2.WindowAttention.reference_attention`):
    ``q`` (unit, times the temperature), ``k`` (unit) and ``v``, ``(B * windows, heads, N, head_dim)``
    in the matmul dtype; ``bias``, the ``(heads, N, N)`` float32 position bias; ``mask_factors``,
    the ``(2, windows, N, k)`` factors of the shifted-window mask or None. Output: ``(B * windows,
    heads, N, head_dim)`` in ``v``'s dtype.
    """

    name = ""

    def available(self, q: Tensor, mask_factors: Optional[Tensor]) -> bool:
        """Whether this path computes the attention of these inputs (constants of the graph only)."""
        raise NotImplementedError

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask_factors: Optional[Tensor]) -> Tensor:
        raise NotImplementedError


class FlashAttention(AttentionPath):
    """MindSpore's ``FlashAttentionScore`` (Atlas A2 / 910B only; float16 and bfloat16).

    The op takes cosine attention as it is: ``softmax(scalar_value * q k^T + real_shift) v`` with
    unit q times the temperature, unit k, ``scalar_value=1`` and the position bias as the additive
    ``real_shift``, in q's dtype as the op requires, shared by every window (its gradient is the
    op's ``dpse``), layout ``BNSD``. It does not take the shifted-window mask as the official code
    adds it (-100 to the masked logits; its ``attn_mask`` discards them, which differs where a row's
    unmasked logits lie 80 or more below a masked one), so shifted blocks take another path, as do
    float32 steps and batches of more than :data:`FLASH_ATTENTION_MAX_BATCH` windows (the op's
    limit). Written to MindSpore's documentation; not yet run on a card.
    """

    name = "flash"

    def __init__(self, num_heads: int, window_area: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.window_area = window_area

    def available(self, q: Tensor, mask_factors: Optional[Tensor]) -> bool:
        return mask_factors is None and q.dtype != ms.float32 and q.shape[0] <= FLASH_ATTENTION_MAX_BATCH

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask_factors: Optional[Tensor]) -> Tensor:
        shift = bias.astype(q.dtype).reshape(1, self.num_heads, self.window_area, self.window_area)
        return flash_attention_score(q, k, v, self.num_heads, real_shift=shift, scalar_value=1.0,
                                     input_layout="BNSD")


def row_blocks_pay(window_area: int, attn_drop: float) -> bool:
    """Whether a model on the fused CPU kernels attends in :class:`RowBlockAttention`: windows of at
    least :data:`ROW_BLOCK_ATTENTION_MIN_TOKENS` tokens, no attention dropout, a library with the kernel."""
    return window_area >= ROW_BLOCK_ATTENTION_MIN_TOKENS and not attn_drop and attention_kernel_available()


class RowBlockAttention(AttentionPath):
    """The fused CPU kernel (:class:`~mindswin.models.kernels.AttentionKernel`), 64 query rows at a time, float32.

    Probabilities are recomputed in the backward pass, one (window, head) pair at a time per
    thread: it also stands in for sequential attention, keeping less than any of its groups.
    """

    name = "row_blocks"

    def __init__(self) -> None:
        super().__init__()
        self.attention = AttentionKernel()
        self.masked_attention = MaskedAttentionKernel()

    def available(self, q: Tensor, mask_factors: Optional[Tensor]) -> bool:
        return q.dtype == ms.float32

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask_factors: Optional[Tensor]) -> Tensor:
        if mask_factors is None:
            return self.attention(q, k, v, bias)
        return self.masked_attention(q, k, v, bias, mask_factors)


class SequentialAttention(AttentionPath):
    """Groups of windows x heads one after another (:class:`~mindswin.models.sequential_attention
    .SequentialAttentionCore`), probabilities recomputed in the backward pass.

    Args:
        core: The core, built with the block's windows, groups and mask factors.
    """

    name = "sequential"

    def __init__(self, core: SequentialAttentionCore) -> None:
        super().__init__()
        self.core = core

    def available(self, q: Tensor, mask_factors: Optional[Tensor]) -> bool:
        return True

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask_factors: Optional[Tensor]) -> Tensor:
        return self.core(q, k, v, bias)  # the core holds the mask factors


class FusedSoftmaxAttention(AttentionPath):
    """Every window and head at once, as the reference, with the softmax in the fused CPU kernels.

    :class:`~mindswin.models.kernels.BiasSoftmaxKernel` adds the position bias inside the softmax;
    in shifted blocks :class:`~mindswin.models.kernels.WindowBiasSoftmaxKernel` adds bias and mask
    row by row, the ``(windows, heads, N, N)`` sum never built.

    Args:
        attn_drop: The attention's dropout on the probabilities, or None.
    """

    name = "fused_softmax"

    def __init__(self, attn_drop: Optional[nn.Cell]) -> None:
        super().__init__()
        self.attn_drop = attn_drop
        self.bias_softmax = BiasSoftmaxKernel()
        self.window_softmax = WindowBiasSoftmaxKernel()
        self.qk_matmul = ops.BatchMatMul(transpose_b=True)
        self.av_matmul = ops.BatchMatMul()

    def available(self, q: Tensor, mask_factors: Optional[Tensor]) -> bool:
        return True

    def construct(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask_factors: Optional[Tensor]) -> Tensor:
        logits = self.qk_matmul(q, k).astype(ms.float32)
        if mask_factors is None:
            attn = self.bias_softmax(logits, bias)
        else:
            attn = self.window_softmax(logits, bias, mask_from_factors(mask_factors, bias))
        if self.attn_drop is not None:
            attn = self.attn_drop(attn)
        return self.av_matmul(attn.astype(v.dtype), v)
