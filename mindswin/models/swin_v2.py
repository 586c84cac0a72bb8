"""Swin Transformer V2 (Liu et al., CVPR 2022) as MindSpore cells.

Numerics follow the official implementation (and timm, which matches it): res-post-norm
blocks, scaled cosine attention with a clamped learnable logit scale, a log-spaced
continuous position bias (CPB) MLP, V2 patch merging and exact GELU.

Layout notes:
    * Feature maps travel as NHWC ``(B, H, W, C)``; only :meth:`forward_intermediates`
      returns NCHW maps.
    * Parameter names equal the official checkpoint's (``layers.{i}.blocks.{j}.attn.qkv
      .weight``, ``layers.{i}.downsample.reduction.weight``, ``head.weight``), with the
      downsample at the *end* of stages 0..n-2 as in the official code.
    * Everything derived from the geometry (CPB coordinate tables, relative position
      indices, shifted-window masks) is built with numpy at init and held as constant
      tensors: never trainable, never saved, rebuilt for whatever resolution and window
      the model is created with.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Set, Tuple, Union

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .attention_paths import (
    AttentionPath,
    FlashAttention,
    FusedSoftmaxAttention,
    RowBlockAttention,
    SequentialAttention,
    row_blocks_pay,
)
from .kernel_library import use_cpu_kernels
from .kernels import PositionBiasKernel, QkvHeadsKernel
from .layers import (
    DropPath,
    InputRateDropPath,
    LayerNorm,
    Linear,
    Mlp,
    PatchProjection,
    WeightAndBias,
    WeightRecord,
    expand_to,
    mask_from_factors,
)
from .sequential_attention import SequentialAttentionCore, sequential_pays_under_checkpoint

__all__ = [
    "SwinTransformerV2",
    "SwinTransformerV2Block",
    "BlockCheckpoint",
    "BlockFunction",
    "TokenGather",
    "token_gather",
    "swap_axes_gather",
    "merging_order",
    "geometry_problem",
    "whole_maps_problem",
    "merged_resolution",
    "padded_resolution",
    "SharedGraphBlock",
    "ReusedSwinTransformerV2Block",
    "BlockConfig",
    "block_reuse_key",
    "stage_block_configs",
    "reuse_keys",
    "WindowAttention",
    "AttentionWeights",
    "BlockWeights",
    "use_flash_attention",
    "PatchMerging",
    "PatchEmbed",
    "relative_coords_table",
    "relative_position_index",
    "shifted_window_mask",
    "shifted_window_mask_factors",
    "shifted_window_regions",
    "window_token_order",
    "NUMERICS",
]

IntOrPair = Union[int, Sequence[int]]

# Bounds the learnable temperature of cosine attention: exp(logit_scale) <= 1 / 0.01.
MAX_LOGIT_SCALE = math.log(1.0 / 0.01)
# Added to attention logits between tokens that came from different regions after the
# cyclic shift; softmax turns it into ~0 weight (exp(-100) ~ 4e-44).
MASK_VALUE = -100.0
# F.normalize's epsilon, squared because the squared norm is clamped.
L2_EPS_SQUARED = 1e-24
# How a model computes apart from its weights. "official": Microsoft's code (and timm's).
# "mindcv": mindcv's Swin V2, whose trained weights keep their accuracy only with its
# choices: LayerNorm epsilon 1e-6 in the blocks, the patch embedding and the final norm
# (patch merging keeps 1e-5) and MindSpore nn.GELU's tanh approximation.
NUMERICS: Dict[str, Dict[str, object]] = {
    "official": dict(norm_eps=1e-5, gelu_approximate="none"),
    "mindcv": dict(norm_eps=1e-6, gelu_approximate="tanh"),
}


def to_pair(value: IntOrPair) -> Tuple[int, int]:
    """Return ``(value, value)`` for an int, or the value as a 2-tuple."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"expected an int or a pair, got {value}")
    return value


def relative_coords_table(window_size: Tuple[int, int], pretrained_window_size: Tuple[int, int]) -> np.ndarray:
    """Log-spaced relative coordinates fed to the CPB MLP.

    Args:
        window_size: Window (height, width) the model attends over.
        pretrained_window_size: Window the weights were trained with; (0, 0) if the same.

    Returns:
        float32 array ``((2*Wh-1) * (2*Ww-1), 2)``.
    """
    wh, ww = window_size
    table = np.stack(np.meshgrid(np.arange(-(wh - 1), wh, dtype=np.float64),
                                 np.arange(-(ww - 1), ww, dtype=np.float64), indexing="ij"), axis=-1)
    reference = pretrained_window_size if pretrained_window_size[0] > 0 else window_size
    # max(.., 1): a 1x1 window (e.g. a 1x1 last stage) has only the zero offset; the
    # official code divides 0 by 0 there and produces NaN.
    table[..., 0] /= max(reference[0] - 1, 1)
    table[..., 1] /= max(reference[1] - 1, 1)
    table *= 8.0
    table = np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)
    return table.reshape(-1, 2).astype(np.float32)


def relative_position_index(window_size: Tuple[int, int]) -> np.ndarray:
    """Index into the flattened coordinate table for every (query, key) pair of a window.

    Returns:
        int32 array ``(Wh*Ww * Wh*Ww,)``.
    """
    wh, ww = window_size
    coords = np.stack(np.meshgrid(np.arange(wh), np.arange(ww), indexing="ij")).reshape(2, -1)
    relative = coords[:, :, None] - coords[:, None, :]
    index = (relative[0] + wh - 1) * (2 * ww - 1) + (relative[1] + ww - 1)
    return index.reshape(-1).astype(np.int32)


def geometry_problem(img_size: IntOrPair, patch_size: int) -> Optional[str]:
    """Why a :class:`SwinTransformerV2` cannot take images of ``img_size``, or None.

    The one statement of the rule (the model raises with it, the config check calls it): the
    patch embedding needs sides divisible by the patch. Everything else fits, as in timm: a
    patch merging pads an odd map by one row or column of zeros, a map the window does not
    divide is padded to a window multiple, and a window larger than the map is clipped to it.
    """
    h, w = to_pair(img_size)
    if h % patch_size or w % patch_size:
        return f"it is not a multiple of the patch size {patch_size}"
    return None


def whole_maps_problem(img_size: IntOrPair, patch_size: int, num_stages: int) -> Optional[str]:
    """Why ``img_size`` is not halved exactly by the ``num_stages - 1`` patch mergings, or None.

    What SimMIM needs on top of :func:`geometry_problem`: its decoder turns the last map back
    into the image with a pixel shuffle by ``patch_size * 2^(num_stages - 1)``.
    """
    h, w = to_pair(img_size)
    step = patch_size * 2 ** (num_stages - 1)
    if h % step or w % step:
        return (f"its {h // patch_size}x{w // patch_size} patch grid is not halved exactly by {num_stages - 1} "
                f"patch merging(s): the side must be a multiple of {patch_size} x 2^{num_stages - 1} = {step}")
    return None


def merged_resolution(resolution: Tuple[int, int]) -> Tuple[int, int]:
    """The map after a patch merging: halved, an odd side padded first (timm's ``PatchMerging``)."""
    return (resolution[0] + 1) // 2, (resolution[1] + 1) // 2


def padded_resolution(resolution: Tuple[int, int], window_size: Tuple[int, int]) -> Tuple[int, int]:
    """The feature map padded at the bottom and right to a multiple of the window (timm's ``_attn``)."""
    return tuple(-(-r // w) * w for r, w in zip(resolution, window_size))


def num_windows(resolution: Tuple[int, int], window_size: Tuple[int, int]) -> int:
    """Windows of a (padded) feature map."""
    padded = padded_resolution(resolution, window_size)
    return (padded[0] // window_size[0]) * (padded[1] // window_size[1])


def shifted_window_regions(resolution: Tuple[int, int], window_size: Tuple[int, int],
                           shift_size: Tuple[int, int]) -> Optional[np.ndarray]:
    """Region of every token of every shifted window: tokens of different regions may not attend.

    Regions are cut from the map padded to a window multiple, as timm cuts them; the padding
    tokens themselves are not masked (timm attends to them too).

    Returns:
        int32 array ``(num_windows, N)`` with ``N = Wh*Ww`` and regions 0-8, or None without shift.
    """
    if not any(shift_size):
        return None
    h, w = padded_resolution(resolution, window_size)
    region = np.zeros((h, w), np.int32)
    count = 0
    for hs in (slice(0, -window_size[0]), slice(-window_size[0], -shift_size[0] or None),
               slice(-shift_size[0] or h, None)):
        for ws in (slice(0, -window_size[1]), slice(-window_size[1], -shift_size[1] or None),
                   slice(-shift_size[1] or w, None)):
            region[hs, ws] = count
            count += 1
    windows = region.reshape(h // window_size[0], window_size[0], w // window_size[1], window_size[1])
    return windows.transpose(0, 2, 1, 3).reshape(-1, window_size[0] * window_size[1])


def shifted_window_mask(resolution: Tuple[int, int], window_size: Tuple[int, int],
                        shift_size: Tuple[int, int]) -> Optional[np.ndarray]:
    """Attention mask for shifted windows: 0 within a region, ``MASK_VALUE`` across.

    Returns:
        float32 array ``(num_windows, N, N)``, or None without shift.
    """
    regions = shifted_window_regions(resolution, window_size, shift_size)
    if regions is None:
        return None
    return np.where(regions[:, None, :] != regions[:, :, None], MASK_VALUE, 0.0).astype(np.float32)


def shifted_window_mask_factors(resolution: Tuple[int, int], window_size: Tuple[int, int],
                                shift_size: Tuple[int, int]) -> Optional[np.ndarray]:
    """Factors ``(2, num_windows, N, 10)`` of the shifted-window mask: ``f[0] @ f[1]^T`` is
    :func:`shifted_window_mask`, exactly (None without shift).

    ``f[0] = [10 * onehot(region), 1]`` and ``f[1] = [10 * onehot(region), MASK_VALUE]``: a pair
    of tokens sums ``100 * same_region + MASK_VALUE``, small integers that every float format adds
    exactly. The model keeps these (40 floats per token) rather than the mask (``N`` per token,
    268 MB for a stage-1 block at 1,024 px / window 32) and multiplies them where the mask is used.
    """
    regions = shifted_window_regions(resolution, window_size, shift_size)
    if regions is None:
        return None
    scale = math.sqrt(-MASK_VALUE)
    onehot = scale * (regions[..., None] == np.arange(9)).astype(np.float32)
    ones = np.ones(regions.shape + (1,), np.float32)
    return np.stack([np.concatenate([onehot, ones], -1), np.concatenate([onehot, MASK_VALUE * ones], -1)])


def window_token_order(resolution: Tuple[int, int], window_size: Tuple[int, int],
                       shift_size: Tuple[int, int]) -> np.ndarray:
    """Source token of every position of "roll by -shift, pad to a window multiple, partition into windows".

    Position ``((wi * nWw + wj) * Wh + r) * Ww + c`` (window ``(wi, wj)``, in-window
    ``(r, c)``, on the padded map) takes token ``((wi*Wh + r + sh) % H) * W + (wj*Ww + c + sw) % W``
    of the row-major ``(H, W)`` map, or ``H * W`` (a zero token) where it falls in the padding:
    ``torch.roll(x, (-sh, -sw))``, zero padding at the bottom and right, then the official
    ``window_partition``.

    Returns:
        int32 array ``(Hp*Wp,)``, values in ``[0, H*W]``.
    """
    h, w = resolution
    hp, wp = padded_resolution(resolution, window_size)
    wh, ww = window_size
    rows, cols = np.arange(hp), np.arange(wp)
    index = ((rows[:, None] + shift_size[0]) % h) * w + (cols[None, :] + shift_size[1]) % w
    index = np.where((rows[:, None] < h) & (cols[None, :] < w), index, h * w)  # (Hp, Wp)
    return index.reshape(hp // wh, wh, wp // ww, ww).transpose(0, 2, 1, 3).reshape(-1).astype(np.int32)


class TokenGather(nn.Cell):
    """Gather tokens ``(B, L, C)`` along L by a fixed index in which ``L`` reads a zero token.

    One gather replaces roll + pad + window partition (and its inverse replaces window reverse
    + crop + roll back). The backward pass is the gather by ``backward_index`` (the same
    convention for the gradient, whose length is ``len(index)``) instead of the scatter-add
    MindSpore derives for a general gather: every source token is read at most once.

    Args:
        index: ``(L_out,)`` source of each output token, ``input_length`` for a zero token.
        backward_index: ``(input_length,)`` output position of each input token, ``L_out``
            for a token no output reads.
        input_length: ``L`` of the input.
    """

    def __init__(self, index: np.ndarray, backward_index: np.ndarray, input_length: int) -> None:
        super().__init__()
        self.index = Tensor(index.astype(np.int32))
        self.backward_index = Tensor(backward_index.astype(np.int32))
        self.pad_input = bool((index == input_length).any())
        self.pad_gradient = bool((backward_index == len(index)).any())
        # Primitive instances, not ops.gather / ops.concat: those functions' graphs break when a
        # BlockCheckpoint's backward pass differentiates the block again (MindSpore 2.10,
        # "The func graph is empty").
        self.gather = ops.Gather()
        self.concat = ops.Concat(1)
        self.zeros = ops.Zeros()

    def _with_zero_token(self, x: Tensor) -> Tensor:
        return self.concat((x, self.zeros((x.shape[0], 1, x.shape[2]), x.dtype)))

    def construct(self, x: Tensor) -> Tensor:
        return self.gather(self._with_zero_token(x) if self.pad_input else x, self.index, 1)

    def bprop(self, x: Tensor, out: Tensor, dout: Tensor):
        return (self.gather(self._with_zero_token(dout) if self.pad_gradient else dout, self.backward_index, 1),)


def token_gather(index: np.ndarray, input_length: int) -> TokenGather:
    """A :class:`TokenGather` by ``index`` that reads each input token at most once; its backward gathers back.

    Also how the models rearrange large tensors instead of ``Transpose``: MindSpore 2.10's CPU
    Transpose keeps a workspace of about twice its output for the life of the compiled graph,
    one per op, so every transpose in a block (and in its recomputation) would add memory that
    activation checkpointing cannot free; a gather keeps none (docs/memory.md).
    """
    reads = index < input_length
    backward_index = np.full(input_length, len(index), np.int64)
    backward_index[index[reads]] = np.nonzero(reads)[0]
    return TokenGather(index, backward_index, input_length)


def swap_axes_gather(rows: int, columns: int) -> TokenGather:
    """Rows of a ``(B, rows * columns, D)`` tensor read as ``(rows, columns)``, reordered to ``(columns, rows)``."""
    return token_gather(np.arange(rows * columns).reshape(rows, columns).T.reshape(-1), rows * columns)


def window_gathers(resolution: Tuple[int, int], window_size: Tuple[int, int],
                   shift_size: Tuple[int, int]) -> Tuple[TokenGather, TokenGather]:
    """The two :class:`TokenGather` of a block: map tokens to padded window order and back."""
    order = window_token_order(resolution, window_size, shift_size)
    tokens = resolution[0] * resolution[1]
    real = np.nonzero(order < tokens)[0]
    back = np.empty(tokens, np.int64)
    back[order[real]] = real
    return token_gather(order, tokens), token_gather(back, len(order))


def merging_order(resolution: Tuple[int, int]) -> np.ndarray:
    """Source token of every row of V2 patch merging's concatenation, ``H * W`` (a zero token) in the padding.

    Row ``(i * Wp/2 + j) * 4 + 2 * dw + dh`` takes token ``(2i + dh, 2j + dw)`` of the row-major
    ``(H, W)`` map padded at the bottom and right to even sides: the official concat order
    ``x[0::2, 0::2], x[1::2, 0::2], x[0::2, 1::2], x[1::2, 1::2]``.
    """
    h, w = resolution
    hp, wp = merged_resolution(resolution)
    i, j, dw, dh = np.meshgrid(np.arange(hp), np.arange(wp), np.arange(2), np.arange(2), indexing="ij")
    rows, cols = 2 * i + dh, 2 * j + dw
    return np.where((rows < h) & (cols < w), rows * w + cols, h * w).reshape(-1).astype(np.int32)


def l2_normalize(x: Tensor) -> Tensor:
    """``F.normalize(x, dim=-1)`` in float32, via rsqrt.

    ``ops.L2Normalize``'s backward is pathologically slow on CPU and its epsilon
    underflows in float16, so this is written out.
    """
    x = x.astype(ms.float32)
    return x * expand_to(ops.rsqrt(ops.maximum((x * x).sum(axis=-1, keepdims=True), L2_EPS_SQUARED)), x)


def portable_l2_normalize(x: Tensor) -> Tensor:
    """:func:`l2_normalize` as a division by the square root: MindSpore 2.10 exports no Rsqrt to ONNX."""
    x = x.astype(ms.float32)
    return x / expand_to(ops.sqrt(ops.maximum((x * x).sum(axis=-1, keepdims=True), L2_EPS_SQUARED)), x)


class AttentionWeights(WeightRecord):
    """The weights of a :class:`WindowAttention`."""

    logit_scale: Tensor
    cpb_fc1: tuple  # the CPB MLP's layers, WeightAndBias each (fc2 without bias)
    cpb_fc2: tuple
    qkv: tuple  # a WeightAndBias without bias: k has none, q and v have their own
    q_bias: Optional[Tensor]  # None without qkv_bias
    v_bias: Optional[Tensor]
    proj: tuple


class WindowAttention(nn.Cell):
    """Scaled cosine window attention with a continuous position bias.

    :meth:`forward_with` is the paper's attention; :meth:`reference_attention` its
    ``softmax(q k^T + bias + mask) v`` in MindSpore's ops, which the hardware paths of
    :mod:`~mindswin.models.attention_paths` compute otherwise where they are available.

    Args:
        dim: Token width.
        window_size: Window (height, width).
        num_heads: Attention heads.
        qkv_bias: Learn q and v biases (k's is fixed at zero, as official).
        pretrained_window_size: Window of the pre-trained weights, for CPB rescaling.
        attn_drop: Dropout on attention probabilities.
        proj_drop: Dropout after the output projection.
    """

    def __init__(self, dim: int, window_size: Tuple[int, int], num_heads: int, qkv_bias: bool = True,
                 pretrained_window_size: Tuple[int, int] = (0, 0), attn_drop: float = 0.0,
                 proj_drop: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.window_size = window_size
        self.pretrained_window_size = pretrained_window_size
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.window_area = window_size[0] * window_size[1]

        self.logit_scale = Parameter(Tensor(np.full((num_heads, 1, 1), math.log(10.0), np.float32)),
                                     name="logit_scale")
        self.cpb_mlp = nn.SequentialCell([
            Linear(2, 512, bias=True, force_float32=True),
            nn.ReLU(),
            Linear(512, num_heads, bias=False, force_float32=True),
        ])
        self.qkv = Linear(dim, dim * 3, bias=False)
        if qkv_bias:
            self.q_bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="q_bias")
            self.v_bias = Parameter(Tensor(np.zeros(dim, np.float32)), name="v_bias")
        else:
            self.q_bias = None
            self.v_bias = None
        self.attn_drop = nn.Dropout(p=attn_drop) if attn_drop > 0 else None
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(p=proj_drop) if proj_drop > 0 else None

        coords_table = relative_coords_table(window_size, pretrained_window_size)
        position_index = relative_position_index(window_size)
        self.relative_coords_table = Tensor(coords_table)
        self.relative_position_index = Tensor(position_index)
        self.split_heads = swap_axes_gather(self.window_area, num_heads)
        self.merge_heads = swap_axes_gather(num_heads, self.window_area)
        self.qk_matmul = ops.BatchMatMul(transpose_b=True)
        self.av_matmul = ops.BatchMatMul()
        self.tile = ops.Tile()
        cpu = use_cpu_kernels()
        self.qkv_heads = QkvHeadsKernel() if cpu else None
        self.position_bias_kernel = PositionBiasKernel(coords_table, position_index, self.window_area) if cpu else None
        self.zero_bias = Tensor(np.zeros(dim, np.float32)) if cpu and not qkv_bias else None
        # The hardware paths this attention may take, in order of preference (the reference after them)
        paths = [RowBlockAttention()] if cpu and row_blocks_pay(self.window_area, attn_drop) else []
        self.paths = nn.CellList(paths + ([FusedSoftmaxAttention(self.attn_drop)] if cpu else []))
        self.portable = False  # set_portable: the cosine normalisation without Rsqrt

    @property
    def path_names(self) -> Tuple[str, ...]:
        """Names of the hardware paths this attention may take, in order of preference."""
        return tuple(path.name for path in self.paths)

    def path(self, name: str) -> Optional[AttentionPath]:
        """The hardware path called ``name``, or None."""
        return next((path for path in self.paths if path.name == name), None)

    def use_sequential(self, num_windows: int, attn_chunks: Tuple[int, int], mask_factors: Optional[Tensor]) -> None:
        """Attend ``attn_chunks = (windows, heads)`` at a time (0: all), probabilities recomputed in backward.

        See :mod:`~mindswin.models.sequential_attention`. Attention dropout would draw other
        noise when the backward pass recomputes the probabilities, so it is refused. Where the
        fused CPU kernel attends in row blocks, it goes first: it keeps less than any group.
        """
        if self.attn_drop is not None:
            raise ValueError("sequential attention recomputes the attention probabilities in the backward pass, "
                             "where dropout would draw other noise; set attn_drop_rate 0 (the official value) or "
                             "turn sequential attention off")
        core = SequentialAttentionCore(num_windows, self.num_heads, attn_chunks[0], attn_chunks[1], mask_factors,
                                       fused=self.path(FusedSoftmaxAttention.name) is not None)
        self.paths.insert(int(self.path(RowBlockAttention.name) is not None), SequentialAttention(core))

    def stop_sequential(self) -> None:
        """Attend without the sequential path again."""
        self.paths = nn.CellList([path for path in self.paths if path.name != SequentialAttention.name])

    def use_flash_attention(self) -> None:
        """Attend in MindSpore's ``FlashAttentionScore`` (Atlas A2) where it computes the official attention
        (:class:`~mindswin.models.attention_paths.FlashAttention`). See :func:`use_flash_attention`."""
        if self.attn_drop is not None:
            raise ValueError("flash_attention: FlashAttentionScore would drop the probabilities with noise of its "
                             "own; set attn_drop_rate 0 (the official value) or flash_attention false")
        if self.head_dim % 16:
            raise ValueError(f"flash_attention: FlashAttentionScore needs a head size that is a multiple of 16, "
                             f"this model's is {self.head_dim}; set flash_attention false")
        self.paths.insert(0, FlashAttention(self.num_heads, self.window_area))

    def weights(self) -> tuple:
        """The :class:`AttentionWeights` :meth:`forward_with` takes."""
        return (self.logit_scale, self.cpb_mlp[0].weights(), self.cpb_mlp[2].weights(), self.qkv.weights(),
                self.q_bias, self.v_bias, self.proj.weights())

    def position_bias(self, fc1: tuple, fc2: tuple, gate: Tensor) -> Tensor:
        """``16 * sigmoid(cpb_mlp(coords))`` gathered to ``(heads, N, N)``, float32, computed after ``gate``.

        ``fc1``, ``fc2``: the CPB MLP's :class:`~mindswin.models.layers.WeightAndBias` to compute with.
        Gated on the tokens: the bias depends on weights only, so in a checkpointed block's rerun
        the executor would build it (and, shifted, the (windows, heads, N, N) bias + mask) for
        every block as soon as the backward pass starts, and hold them all (docs/memory.md).
        """
        fc1_weight = ops.depend(fc1[WeightAndBias.weight], gate)
        if self.position_bias_kernel is not None:
            return self.position_bias_kernel(fc1_weight, fc1[WeightAndBias.bias], fc2[WeightAndBias.weight])[0]
        hidden = self.cpb_mlp[1](self.cpb_mlp[0]._project(self.relative_coords_table, fc1_weight,
                                                          fc1[WeightAndBias.bias]))
        table = self.cpb_mlp[2].forward_with(fc2, hidden)
        bias = ops.gather(table, self.relative_position_index, 0)
        bias = bias.transpose(1, 0).reshape(self.num_heads, self.window_area, self.window_area)
        return 16.0 * ops.sigmoid(bias)

    def _heads(self, x: Tensor) -> Tensor:
        """``(B_, N, C)`` -> ``(B_, heads, N, head_dim)``."""
        rows = self.split_heads(x.reshape(x.shape[0], x.shape[1] * self.num_heads, self.head_dim))
        return rows.reshape(x.shape[0], self.num_heads, x.shape[1], self.head_dim)

    def _queries_keys_values(self, x: Tensor, temperature: Tensor, qkv: tuple, q_bias: Optional[Tensor],
                             v_bias: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tensor]:
        """``(B_, heads, N, head_dim)`` q (unit, times the temperature), k (unit) and v.

        The temperature multiplies the unit queries rather than the (N / head_dim times
        larger) logits. Unit vectors scaled by <= 100 are safe in float16, so the
        normalisation runs in float32 and q/k go back to the matmul dtype.
        """
        if self.qkv_heads is not None:
            q_bias = self.zero_bias if q_bias is None else q_bias
            v_bias = self.zero_bias if v_bias is None else v_bias
            q, k, v, _, _ = self.qkv_heads(self.qkv.forward_with(qkv, x).astype(ms.float32), q_bias, v_bias,
                                           temperature)
            dtype = self.qkv.compute_dtype
            return q.astype(dtype), k.astype(dtype), v.astype(dtype)
        c = x.shape[-1]
        qkv_weight = qkv[WeightAndBias.weight]
        # Three projections with row blocks of qkv.weight: slicing the small weight is cheap,
        # slicing the large fused output (StridedSlice) is slow.
        q = self._heads(self.qkv._project(x, qkv_weight[:c], q_bias))
        k = self._heads(self.qkv._project(x, qkv_weight[c:2 * c], None))
        v = self._heads(self.qkv._project(x, qkv_weight[2 * c:], v_bias))
        normalize = portable_l2_normalize if self.portable else l2_normalize
        q = normalize(q)
        return (q * expand_to(temperature.reshape(1, self.num_heads, 1, 1), q)).astype(v.dtype), \
            normalize(k).astype(v.dtype), v

    def _logit_bias(self, bias: Tensor, mask_factors: Optional[Tensor]) -> Tensor:
        """Position bias ``(heads, N, N)``, plus the shifted-window mask as ``(num_windows, heads, N, N)``.

        The mask is made from its factors after the bias (:func:`~mindswin.models.layers.mask_from_factors`).
        """
        if mask_factors is None:
            return bias
        windows = mask_factors.shape[1]
        mask = mask_from_factors(mask_factors, bias).reshape(windows, 1, self.window_area, self.window_area)
        head_bias = bias.reshape(1, self.num_heads, self.window_area, self.window_area)
        # Tile, not BroadcastTo: the same memory, 3-8x faster on the CPU backend (docs/memory.md)
        return self.tile(head_bias, (windows, 1, 1, 1)) + self.tile(mask, (1, self.num_heads, 1, 1))

    def _softmax_with_bias(self, logits: Tensor, bias: Tensor) -> Tensor:
        """``softmax(logits + bias)`` with the per-image ``bias`` broadcast over images.

        The logits are viewed as ``(B, everything else)`` so the bias gradient is a sum over
        one leading axis.
        """
        flat = logits.reshape(-1, bias.size)
        flat = flat + expand_to(bias.reshape(1, -1), flat)
        return ops.softmax(flat.reshape(logits.shape), axis=-1)

    def construct(self, x: Tensor, mask_factors: Optional[Tensor] = None) -> Tensor:
        """Attend within windows.

        Args:
            x: ``(B * num_windows, N, C)`` window tokens.
            mask_factors: ``(2, num_windows, N, k)`` factors of the shifted-window mask
                (:func:`shifted_window_mask_factors`), or None.

        Returns:
            ``(B * num_windows, N, C)``.
        """
        return self.forward_with(self.weights(), x, mask_factors)

    def forward_with(self, weights: tuple, x: Tensor, mask_factors: Optional[Tensor] = None) -> Tensor:
        """:meth:`construct` computed with ``weights`` (an :class:`AttentionWeights`) instead of the parameters."""
        batch_windows, n, c = x.shape
        temperature = ops.exp(ops.minimum(weights[AttentionWeights.logit_scale], MAX_LOGIT_SCALE))
        q, k, v = self._queries_keys_values(x, temperature, weights[AttentionWeights.qkv],
                                            weights[AttentionWeights.q_bias], weights[AttentionWeights.v_bias])
        bias = self.position_bias(weights[AttentionWeights.cpb_fc1], weights[AttentionWeights.cpb_fc2], x)
        x = self._attend(q, k, v, bias, mask_factors)
        x = self.merge_heads(x.reshape(batch_windows, self.num_heads * n, self.head_dim)).reshape(batch_windows, n, c)
        x = self.proj.forward_with(weights[AttentionWeights.proj], x)
        if self.proj_drop is not None:
            x = self.proj_drop(x)
        return x

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor, mask_factors: Optional[Tensor]) -> Tensor:
        """The first available hardware path's attention, else the reference's (chosen as the graph compiles)."""
        for path in self.paths:
            if path.available(q, mask_factors):
                return path(q, k, v, bias, mask_factors)
        return self.reference_attention(q, k, v, bias, mask_factors)

    def reference_attention(self, q: Tensor, k: Tensor, v: Tensor, bias: Tensor,
                            mask_factors: Optional[Tensor]) -> Tensor:
        """``softmax(q k^T + bias + mask) v`` of every window and head at once: ``(B_, heads, N, head_dim)``.

        ``q`` is unit and times the temperature, ``k`` unit: ``q k^T`` is the scaled cosine logit.
        """
        logits = self.qk_matmul(q, k).astype(ms.float32)
        attn = self._softmax_with_bias(logits, self._logit_bias(bias, mask_factors))
        if self.attn_drop is not None:
            attn = self.attn_drop(attn)
        return self.av_matmul(attn.astype(v.dtype), v)

    def extend_repr(self) -> str:
        return (f"dim={self.dim}, window_size={self.window_size}, num_heads={self.num_heads}, "
                f"pretrained_window_size={self.pretrained_window_size}")


def use_flash_attention(model: nn.Cell) -> int:
    """Let every window attention of ``model`` attend in MindSpore's ``FlashAttentionScore`` where it fits
    (:class:`~mindswin.models.attention_paths.FlashAttention`: unshifted blocks, float16 or bfloat16).

    Returns:
        The number of window attention cells switched.

    Raises:
        ValueError: Not on Ascend, or a model with attention dropout or a head size the op refuses.
    """
    target = ms.get_context("device_target")
    if target != "Ascend":
        raise ValueError(f"flash_attention: MindSpore's FlashAttentionScore runs on Ascend Atlas A2 (910B) only "
                         f"and device_target is {target}; set flash_attention false")
    cells = [cell for _, cell in model.cells_and_names() if isinstance(cell, WindowAttention)]
    for cell in cells:
        cell.use_flash_attention()
    return len(cells)


class BlockWeights(WeightRecord):
    """The weights of a :class:`SwinTransformerV2Block`: its layers' records."""

    attn: tuple  # an AttentionWeights
    norm1: tuple  # a WeightAndBias
    mlp: tuple  # an MlpWeights
    norm2: tuple
    norm3: Optional[tuple]  # None without the extra norm


class SwinTransformerV2Block(nn.Cell):
    """Shifted-window block with residual post-normalisation.

    ``x = x + drop_path(norm1(attn(x)))``; ``x = x + drop_path(norm2(mlp(x)))``.

    Args:
        dim: Token width.
        input_resolution: Feature map (height, width) of the stage.
        num_heads: Attention heads.
        window_size: Requested window; clipped to the resolution when it does not fit.
        shift_size: Requested shift (0 for even blocks, window // 2 for odd ones).
        mlp_ratio: MLP hidden width over ``dim``.
        qkv_bias: Learn q/v biases.
        drop_path: Stochastic depth probability of this block.
        pretrained_window_size: Window of the pre-trained weights (0 if the same).
        attn_drop: Attention-probability dropout.
        proj_drop: Dropout after projections.
        attn_chunks: ``(windows, heads)`` per step of sequential attention; ``(0, 0)``: batched
            attention (see :meth:`WindowAttention.use_sequential`).
        extra_norm: A LayerNorm (``norm3``) on the main branch after the block, as the paper's
            SwinV2-H and -G have every 6 blocks (mmpretrain's ``extra_norm_every_n_blocks``).
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], num_heads: int,
                 window_size: Tuple[int, int], shift_size: Tuple[int, int], mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_path: float = 0.0,
                 pretrained_window_size: Tuple[int, int] = (0, 0), attn_drop: float = 0.0,
                 proj_drop: float = 0.0, attn_chunks: Tuple[int, int] = (0, 0), extra_norm: bool = False) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.window_size, self.shift_size = self._calc_window_shift(window_size, shift_size)
        self.padded_resolution = padded_resolution(self.input_resolution, self.window_size)

        self.attn = WindowAttention(dim, self.window_size, num_heads, qkv_bias=qkv_bias,
                                    pretrained_window_size=pretrained_window_size,
                                    attn_drop=attn_drop, proj_drop=proj_drop)
        self.norm1 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm2 = LayerNorm(dim)
        self.norm3 = LayerNorm(dim) if extra_norm else None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else None
        mask_factors = self.get_attn_mask_factors()
        self.attn_mask_factors = Tensor(mask_factors) if mask_factors is not None else None
        if any(attn_chunks):
            self.attn.use_sequential(num_windows(self.input_resolution, self.window_size), tuple(attn_chunks),
                                     self.attn_mask_factors)
        self.to_windows, self.from_windows = window_gathers(self.input_resolution, self.window_size,
                                                            self.shift_size)
        self.checkpoint = None  # use_checkpoint: a BlockCheckpoint
        self.uniform = None  # use_checkpoint: draws stochastic depth outside the rerun block

    def _calc_window_shift(self, window_size: Tuple[int, int],
                           shift_size: Tuple[int, int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
        """Clip the window to the feature map; no shift along an axis the window covers."""
        return clip_window_shift(self.input_resolution, window_size, shift_size)

    def get_attn_mask_factors(self) -> Optional[np.ndarray]:
        """Factors of the mask of this block's shifted windows (None for unshifted blocks; see
        :func:`shifted_window_mask_factors`)."""
        return shifted_window_mask_factors(self.input_resolution, self.window_size, self.shift_size)

    def use_checkpoint(self) -> None:
        """Keep only the block's input for the backward pass and rerun the block there (:class:`BlockCheckpoint`).

        Random draws inside the block would differ when recomputed: stochastic depth then takes
        its uniforms as an input (drawn outside when the caller passes none), and dropout is refused.
        Sequential attention of a single group goes back to batched attention, which holds the
        same inside a checkpoint (:func:`~mindswin.models.sequential_attention.sequential_pays_under_checkpoint`).
        """
        if self.attn.attn_drop is not None or self.attn.proj_drop is not None:
            raise ValueError("recompute reruns each block's forward in the backward pass, where dropout would draw "
                             "other noise; set attn_drop_rate and proj_drop_rate 0 (the official values) or turn "
                             "recompute off")
        sequential = self.attn.path(SequentialAttention.name)
        if sequential is not None and not sequential_pays_under_checkpoint(sequential.core.num_groups):
            self.attn.stop_sequential()
        self.checkpoint = BlockCheckpoint(self)
        # Made only here: every random op created takes the next of MindSpore's op seeds, so one
        # more per block would change what the other random ops of a model without recompute draw.
        self.uniform = ops.UniformReal() if self.drop_path is not None else None

    def weights(self) -> tuple:
        """The :class:`BlockWeights` :meth:`forward_with` takes."""
        return (self.attn.weights(), self.norm1.weights(), self.mlp.weights(), self.norm2.weights(),
                None if self.norm3 is None else self.norm3.weights())

    def _attn(self, weights: tuple, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        windows = self.to_windows(x.reshape(b, h * w, c)).reshape(-1, self.attn.window_area, c)
        windows = self.attn.forward_with(weights, windows, self.attn_mask_factors)
        padded_tokens = self.padded_resolution[0] * self.padded_resolution[1]
        return self.from_windows(windows.reshape(b, padded_tokens, c)).reshape(b, h, w, c)

    def _residual(self, branch: Tensor, draws: Tuple[Tensor, ...], which: int) -> Tensor:
        """Stochastic depth on ``branch``; ``draws``: ``()`` or ``(path_noise,)`` (see :meth:`_draws`)."""
        if self.drop_path is None:
            return branch
        return self.drop_path(branch, draws[0][:, which] if draws else None)

    def forward_with(self, weights: tuple, x: Tensor, draws: Tuple[Tensor, ...]) -> Tensor:
        """The block computed with ``weights`` (a :class:`BlockWeights`) instead of its parameters.

        A pure function of its inputs, so :class:`BlockCheckpoint` can rerun it in the backward pass.
        """
        attn = self._attn(weights[BlockWeights.attn], x)
        x = x + self._residual(self.norm1.forward_with(weights[BlockWeights.norm1], attn), draws, 0)
        mlp = self.mlp.forward_with(weights[BlockWeights.mlp], x)
        x = x + self._residual(self.norm2.forward_with(weights[BlockWeights.norm2], mlp), draws, 1)
        return x if self.norm3 is None else self.norm3.forward_with(weights[BlockWeights.norm3], x)

    def _draws(self, x: Tensor, path_noise: Optional[Tensor]) -> Tuple[Tensor, ...]:
        """The stochastic-depth inputs of :meth:`forward_with`: ``(path_noise,)`` or ``()``.

        A checkpointed block draws its ``(B, 2)`` uniforms here, outside the recomputed function,
        when the caller passes none: the recomputation must drop what the forward pass dropped.
        """
        if self.drop_path is None:
            return ()
        if path_noise is None and self.uniform is not None and self.training:
            path_noise = self.uniform((x.shape[0], 2))
        return () if path_noise is None else (path_noise,)

    def _run(self, x: Tensor, draws: Tuple[Tensor, ...]) -> Tensor:
        if self.checkpoint is None:
            return self.forward_with(self.weights(), x, draws)
        return self.checkpoint(self.weights(), x, draws)

    def construct(self, x: Tensor, path_noise: Optional[Tensor] = None) -> Tensor:
        """``path_noise``: ``(B, 2)`` uniforms for the two stochastic-depth draws (see :class:`DropPath`)."""
        return self._run(x, self._draws(x, path_noise))

    def extend_repr(self) -> str:
        return (f"dim={self.dim}, input_resolution={self.input_resolution}, "
                f"window_size={self.window_size}, shift_size={self.shift_size}")


def clip_window_shift(resolution: Tuple[int, int], window_size: Tuple[int, int],
                      shift_size: Tuple[int, int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """Clip the window to the feature map; no shift along an axis the window covers."""
    window = tuple(r if r <= w else w for r, w in zip(resolution, window_size))
    shift = tuple(0 if r <= w else s for r, w, s in zip(resolution, window, shift_size))
    return window, shift


class BlockConfig(NamedTuple):
    """The arguments one :class:`SwinTransformerV2Block` is built from: the per-block geometry record.

    :func:`stage_block_configs` writes them for a whole model, :class:`BasicLayer` builds its
    blocks from them and :func:`block_reuse_key` reads them.
    """

    dim: int
    input_resolution: Tuple[int, int]
    num_heads: int
    window_size: Tuple[int, int]
    shift_size: Tuple[int, int]
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path: float = 0.0
    pretrained_window_size: Tuple[int, int] = (0, 0)
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    attn_chunks: Tuple[int, int] = (0, 0)
    extra_norm: bool = False


def block_reuse_key(config: BlockConfig) -> tuple:
    """What makes two blocks' graphs identical: the key :class:`ReusedSwinTransformerV2Block` reuses on.

    Everything that shapes the graph or its constants (widths, heads, the clipped window and
    shift, which fix the shifted-window mask, token order and CPB tables; the pre-trained
    window; dropout rates, which are constants of ``nn.Dropout``; sequential-attention groups;
    the extra norm) and whether the block has stochastic depth at all, but not its rate: that
    is a ``construct`` input of the reused block.
    """
    window, shift = clip_window_shift(tuple(config.input_resolution), tuple(config.window_size),
                                      tuple(config.shift_size))
    return (int(config.dim), tuple(int(r) for r in config.input_resolution), int(config.num_heads), window, shift,
            int(config.dim * config.mlp_ratio), bool(config.qkv_bias),
            tuple(int(w) for w in config.pretrained_window_size), float(config.attn_drop), float(config.proj_drop),
            config.drop_path > 0, tuple(int(c) for c in config.attn_chunks), bool(config.extra_norm))


class BlockFunction(nn.Cell):
    """A block's :meth:`~SwinTransformerV2Block.forward_with` as a cell whose graph reads no parameter.

    The block is held outside the cell tree, so its parameters keep their names and are not
    listed twice.
    """

    def __init__(self, block: SwinTransformerV2Block) -> None:
        super().__init__(auto_prefix=False)
        object.__setattr__(self, "block", block)

    def construct(self, weights: tuple, x: Tensor, draws: Tuple[Tensor, ...]) -> Tensor:
        return self.block.forward_with(weights, x, draws)


class BlockCheckpoint(nn.Cell):
    """Activation checkpointing of one block: its forward keeps nothing, its backward reruns it.

    The backward pass recomputes the block from its input and weights under a nested
    ``GradOperation`` once the output's gradient exists, so only block inputs live between the
    forward and backward passes, as with ``torch.utils.checkpoint``. MindSpore 2.10's own
    ``Cell.recompute()`` keeps most of a Swin block's intermediates on CPU (see
    docs/memory.md), and a custom ``bprop`` may not read parameters: the weights are inputs here.
    """

    def __init__(self, block: SwinTransformerV2Block) -> None:
        super().__init__()
        self.function = BlockFunction(block)
        self.gradients = ops.GradOperation(get_all=True, sens_param=True)

    def construct(self, weights: tuple, x: Tensor, draws: Tuple[Tensor, ...]) -> Tensor:
        return self.function(weights, x, draws)

    def bprop(self, weights: tuple, x: Tensor, draws: Tuple[Tensor, ...], out: Tensor, dout: Tensor):
        # Recompute only once the output's gradient exists: the executor would otherwise be free
        # to rerun every block's forward as soon as its input is ready.
        grads = self.gradients(self.function)(weights, ops.depend(x, dout), draws, dout)
        # GradOperation returns nothing for an empty tuple input; the bprop must still answer for it.
        return grads if draws else grads + ((),)


class SharedGraphBlock(SwinTransformerV2Block):
    """A block whose stochastic-depth rate is a ``construct`` input (``block(x, keep_prob, path_noise)``).

    The graph of such a block depends on :func:`block_reuse_key` only, so one graph can serve
    every block of the same shape. :class:`BasicLayer` passes each block's keep probability
    (``1 - drop_path``) as a float32 scalar tensor. Runs on any backend; the lazy-inlined
    subclass is the one that actually shares the graph.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """Takes :class:`SwinTransformerV2Block`'s arguments (the fields of :class:`BlockConfig`)."""
        config = BlockConfig(*args, **kwargs)
        super().__init__(*config._replace(drop_path=0.0))
        self.drop_path_rate = float(config.drop_path)  # plain float: not read by construct, not in the key
        self.drop_path = InputRateDropPath() if config.drop_path > 0 else None
        self.reuse_key = block_reuse_key(config)

    def _residual(self, branch: Tensor, draws: Tuple[Tensor, ...], which: int) -> Tensor:
        """``draws``: ``(keep_prob,)`` or ``(keep_prob, path_noise)``."""
        if self.drop_path is None:
            return branch
        return self.drop_path(branch, draws[0], draws[1][:, which] if len(draws) > 1 else None)

    def construct(self, x: Tensor, keep_prob: Tensor, path_noise: Optional[Tensor]) -> Tensor:
        """``path_noise``: ``(B, 2)`` uniforms, or None to draw them here (see :meth:`_draws`).

        No defaults: ``mindspore.lazy_inline`` requires construct parameters without default
        values (MindSpore 2.10 only logs it, at INFO), so every caller passes all three.
        """
        return self._run(x, (keep_prob,) + self._draws(x, path_noise))


class ReusedSwinTransformerV2Block(SharedGraphBlock):
    """A block whose graph is compiled once per :func:`block_reuse_key` and reused (``mindspore.lazy_inline``).

    Cuts graph-compile time of deep models on Ascend. ``lazy_inline`` keys reuse on
    ``cell_init_args``: without ``attrs`` that is the string of every ``__init__`` argument,
    so the per-block drop-path rate would give every block its own key. With
    ``attrs="reuse_key"`` it is ``"lazy_inline_ReusedSwinTransformerV2Block" + str(reuse_key)``,
    and the rate travels as a ``construct`` input (see :class:`SharedGraphBlock`).
    MindSpore 2.10's CPU backend cannot run lazy-inlined cells ("Input[0] must be a
    Primitive ValueNode"), so models only use this class when built with
    ``reuse_blocks=True``, which is refused off Ascend.
    """

    @ms.lazy_inline(attrs="reuse_key")
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)


class PatchMerging(nn.Cell):
    """V2 patch merging: 2x2 neighbourhood concat -> Linear(4C, 2C) -> LayerNorm(2C).

    The concat order is the official one: (h even, w even), (h odd, w even),
    (h even, w odd), (h odd, w odd). An odd map is zero-padded by one row/column first, as in
    timm. Padding and concatenation are one gather (:func:`merging_order`).

    Args:
        dim: Input width.
        input_resolution: Input map (height, width).
        out_dim: Output width (``2 * dim`` if None).
    """

    def __init__(self, dim: int, input_resolution: Tuple[int, int], out_dim: Optional[int] = None) -> None:
        super().__init__()
        self.dim = dim
        self.input_resolution = input_resolution
        self.out_dim = out_dim or 2 * dim
        self.neighbourhoods = token_gather(merging_order(input_resolution), input_resolution[0] * input_resolution[1])
        self.reduction = Linear(4 * dim, self.out_dim, bias=False)
        self.norm = LayerNorm(self.out_dim)

    def construct(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        hp, wp = merged_resolution((h, w))
        x = self.neighbourhoods(x.reshape(b, h * w, c)).reshape(b, hp, wp, 4 * c)
        return self.norm(self.reduction(x))


class PatchEmbed(nn.Cell):
    """Image to patch tokens: projection (``proj``, Conv2d layout) + LayerNorm (``norm``)."""

    def __init__(self, img_size: Tuple[int, int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.grid_size = (img_size[0] // patch_size, img_size[1] // patch_size)
        self.proj = PatchProjection(in_chans, embed_dim, patch_size)
        self.norm = LayerNorm(embed_dim)

    def construct(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x))


def has_extra_norm(index: int, period: int) -> bool:
    """Whether block ``index`` (0-based, within its stage) ends with the extra main-branch norm."""
    return period > 0 and (index + 1) % period == 0


def stage_block_configs(img_size: IntOrPair = 256, patch_size: int = 4, embed_dim: int = 96,
                        depths: Sequence[int] = (2, 2, 6, 2), num_heads: Sequence[int] = (3, 6, 12, 24),
                        window_size: IntOrPair = 8, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                        drop_path_rate: float = 0.1, pretrained_window_sizes: Optional[Sequence[IntOrPair]] = None,
                        attn_drop_rate: float = 0.0, proj_drop_rate: float = 0.0, sequential_attention: int = 0,
                        sequential_attention_heads: int = 0, extra_norm_period: int = 0,
                        **_ignored: Any) -> List[List[BlockConfig]]:
    """The :class:`BlockConfig` of every block, stage by stage: the one statement of the stage geometry.

    Takes :class:`SwinTransformerV2`'s arguments (others, e.g. ``num_classes``, are ignored):
    the map halves after each stage, odd blocks shift by half a window, stochastic depth rises
    linearly over all blocks, and every ``extra_norm_period``-th block of a stage ends with the
    extra norm.
    """
    num_stages = len(depths)
    pretrained = pretrained_window_sizes or (0,) * num_stages
    window = to_pair(window_size)
    shift = (window[0] // 2, window[1] // 2)
    rates = np.linspace(0.0, drop_path_rate, sum(depths)).tolist()
    image = to_pair(img_size)
    resolution = (image[0] // patch_size, image[1] // patch_size)
    stages = []
    for i, depth in enumerate(depths):
        stages.append([BlockConfig(int(embed_dim * 2 ** i), resolution, num_heads[i], window,
                                   (0, 0) if j % 2 == 0 else shift, mlp_ratio, qkv_bias, rates[sum(depths[:i]) + j],
                                   to_pair(pretrained[i]), attn_drop_rate, proj_drop_rate,
                                   (sequential_attention, sequential_attention_heads),
                                   has_extra_norm(j, extra_norm_period))
                       for j in range(depth)])
        resolution = merged_resolution(resolution)
    return stages


class BasicLayer(nn.Cell):
    """One stage: blocks at a fixed resolution, then optional patch merging.

    The model calls :attr:`downsample` itself so it can read the stage output first.
    """

    def __init__(self, blocks: Sequence[BlockConfig], downsample: bool, reuse_blocks: bool = False) -> None:
        """``blocks``: one :class:`BlockConfig` per block (see :func:`stage_block_configs`)."""
        super().__init__()
        self.dim = blocks[0].dim
        self.input_resolution = blocks[0].input_resolution
        block_class = ReusedSwinTransformerV2Block if reuse_blocks else SwinTransformerV2Block
        self.blocks = nn.CellList([block_class(*config) for config in blocks])
        # Reused blocks take their stochastic-depth keep probability as an input (one scalar each).
        self.keep_probs = (tuple(Tensor(1.0 - float(config.drop_path), ms.float32) for config in blocks)
                           if issubclass(block_class, SharedGraphBlock) else None)
        self.downsample = PatchMerging(self.dim, self.input_resolution) if downsample else None

    def construct(self, x: Tensor, path_noise: Optional[Tensor] = None) -> Tensor:
        """``path_noise``: ``(B, depth, 2)`` stochastic-depth uniforms of this stage's blocks, or None."""
        for i in range(len(self.blocks)):
            noise = None if path_noise is None else path_noise[:, i]
            if self.keep_probs is not None:
                x = self.blocks[i](x, self.keep_probs[i], noise)
            else:
                x = self.blocks[i](x, noise)
        return x

    def init_respostnorm(self) -> None:
        """Zero the post-norms so every block starts as the identity (official init)."""
        for block in self.blocks:
            for norm in (block.norm1, block.norm2):
                norm.weight.set_data(ops.zeros_like(norm.weight))
                norm.bias.set_data(ops.zeros_like(norm.bias))


class SwinTransformerV2(nn.Cell):
    """Swin Transformer V2 classifier / backbone.

    Args:
        img_size: Input (height, width) or side. Fixed at init: masks and windows depend on it.
        patch_size: Patch side of the stem.
        in_chans: Input channels.
        num_classes: Classifier width; 0 for no head (pooled features).
        embed_dim: Width of the first stage (doubles per stage).
        depths: Blocks per stage.
        num_heads: Heads per stage.
        window_size: Attention window (clipped per stage to the feature map).
        mlp_ratio: MLP expansion.
        qkv_bias: Learn q/v biases.
        drop_rate: Dropout before the classifier.
        proj_drop_rate: Dropout after attention/MLP projections.
        attn_drop_rate: Dropout on attention probabilities.
        drop_path_rate: Stochastic depth, rising linearly from 0 to this over all blocks.
        pretrained_window_sizes: Per-stage window of the pre-trained weights (0: same).
        features_only: Build a backbone whose forward returns the ``out_indices`` stage maps
            (NCHW, strides 4/8/16/32); no final norm or head.
        out_indices: Stages to return with ``features_only``.
        recompute: Recompute each block's activations in the backward pass.
        reuse_blocks: Compile one graph per block shape and reuse it (``lazy_inline``);
            Ascend only.
        numerics: ``"official"`` or ``"mindcv"`` (see :data:`NUMERICS` and :meth:`set_numerics`).
        sequential_attention: Windows per step of sequential self-attention (0: all windows at
            once, the batched path); see :mod:`~mindswin.models.sequential_attention`.
        sequential_attention_heads: Heads per step of sequential attention (0: all heads).
        extra_norm_period: A LayerNorm on the main branch after every ``extra_norm_period``-th
            block of each stage (the paper's SwinV2-H and -G: 6); 0: none.
    """

    def __init__(self, img_size: IntOrPair = 256, patch_size: int = 4, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 96, depths: Sequence[int] = (2, 2, 6, 2),
                 num_heads: Sequence[int] = (3, 6, 12, 24), window_size: IntOrPair = 8,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_rate: float = 0.0,
                 proj_drop_rate: float = 0.0, attn_drop_rate: float = 0.0, drop_path_rate: float = 0.1,
                 pretrained_window_sizes: Optional[Sequence[IntOrPair]] = None,
                 features_only: bool = False, out_indices: Sequence[int] = (0, 1, 2, 3),
                 recompute: bool = False, reuse_blocks: bool = False, numerics: str = "official",
                 sequential_attention: int = 0, sequential_attention_heads: int = 0,
                 extra_norm_period: int = 0) -> None:
        super().__init__()
        if reuse_blocks and ms.get_context("device_target") != "Ascend":
            raise ValueError("reuse_blocks (mindspore.lazy_inline) runs on Ascend only; MindSpore's "
                             f"{ms.get_context('device_target')} backend cannot execute lazy-inlined cells. "
                             "Leave it off on this backend")
        if len(depths) != len(num_heads):
            raise ValueError(f"depths {tuple(depths)} and num_heads {tuple(num_heads)} differ in length")
        num_stages = len(depths)
        pretrained_window_sizes = pretrained_window_sizes or (0,) * num_stages
        if len(pretrained_window_sizes) != num_stages:
            raise ValueError(f"pretrained_window_sizes needs {num_stages} entries, "
                             f"got {tuple(pretrained_window_sizes)}")
        problem = geometry_problem(img_size, patch_size)
        if problem:
            raise ValueError(f"img_size {img_size} does not fit a model with patch {patch_size}: {problem}")
        # "cpu" (the fused CPU kernels) or "native" (MindSpore's ops), as every cell below is built
        self.kernels = "cpu" if use_cpu_kernels() else "native"
        self.img_size = to_pair(img_size)
        self.window_size = to_pair(window_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.num_stages = num_stages
        self.embed_dim = embed_dim
        self.num_features = int(embed_dim * 2 ** (num_stages - 1))
        self.features_only = features_only
        self.out_indices = tuple(i % num_stages for i in out_indices)
        self.feature_info = []

        self.patch_embed = PatchEmbed(self.img_size, patch_size, in_chans, embed_dim)
        stages = stage_block_configs(img_size, patch_size, embed_dim, depths, num_heads, window_size, mlp_ratio,
                                     qkv_bias, drop_path_rate, pretrained_window_sizes, attn_drop_rate, proj_drop_rate,
                                     sequential_attention, sequential_attention_heads, extra_norm_period)
        layers = []
        for i, blocks in enumerate(stages):
            layers.append(BasicLayer(blocks, downsample=i < num_stages - 1, reuse_blocks=reuse_blocks))
            self.feature_info.append(dict(num_chs=blocks[0].dim, reduction=patch_size * 2 ** i, module=f"layers.{i}"))
        self.layers = nn.CellList(layers)
        # block i of stage s draws path_noise[:, stage_blocks[s][0] + i]
        self.stage_blocks = tuple((sum(depths[:i]), sum(depths[:i + 1])) for i in range(num_stages))
        self.num_blocks = sum(depths)

        if features_only:
            self.norm = None
            self.head = None
        else:
            self.norm = LayerNorm(self.num_features)
            self.head_drop = nn.Dropout(p=drop_rate) if drop_rate > 0 else None
            self.head = Linear(self.num_features, num_classes) if num_classes > 0 else None
        for layer in self.layers:
            layer.init_respostnorm()
        self.set_numerics(numerics)
        if recompute:
            self.enable_recompute()

    def set_numerics(self, numerics: str) -> None:
        """Compute as the official model (``"official"``) or as mindcv's (``"mindcv"``).

        Changes graph constants only (LayerNorm epsilons, the GELU formula), never parameters:
        call it before the first compile. The checkpoint loader calls it for mindcv weights.
        """
        if numerics not in NUMERICS:
            raise ValueError(f"numerics must be one of {', '.join(NUMERICS)}, got {numerics!r}")
        if getattr(self, "compile_cache", None) and numerics != self.numerics:
            raise RuntimeError(f"the model already compiled with {self.numerics} numerics: a compiled graph keeps its "
                               "constants, so set numerics (or load the weights) before the first call")
        self.numerics = numerics
        choice = NUMERICS[numerics]
        norms = [self.patch_embed.norm] + ([self.norm] if self.norm is not None else [])
        for layer in self.layers:
            for block in layer.blocks:
                norms += [block.norm1, block.norm2]
                block.mlp.set_gelu_approximate(choice["gelu_approximate"])
        for norm in norms:
            norm.set_eps(choice["norm_eps"])

    def set_portable(self) -> None:
        """Compute with ops every exporter converts (ONNX): exact GELU and the cosine normalisation
        written without Erf and Rsqrt (:func:`~mindswin.models.layers.portable_gelu`,
        :func:`portable_l2_normalize`), before the first compile. The builder's ``portable=True``
        calls it on a model built with ``kernels="native"``.

        Raises:
            ValueError: The model computes with the fused CPU kernels, which no exporter knows.
        """
        if self.kernels != "native":
            raise ValueError("a portable model computes with MindSpore's own ops only: build it with "
                             "kernels='native' (this one uses the fused CPU kernels)")
        for _, cell in self.cells_and_names():
            if isinstance(cell, (WindowAttention, Mlp)):
                cell.portable = True

    def enable_recompute(self) -> None:
        """Checkpoint every block: keep its input only and recompute it in backward (costs one forward)."""
        for layer in self.layers:
            for block in layer.blocks:
                block.use_checkpoint()

    def no_weight_decay(self) -> Set[str]:
        """Parameter names the official recipe trains without weight decay.

        1-D parameters (norms, biases, q/v biases), every ``.bias``, the CPB MLP and the
        attention logit scales.
        """
        return {p.name for p in self.get_parameters()
                if p.ndim <= 1 or p.name.endswith(".bias") or "cpb_mlp" in p.name or "logit_scale" in p.name}

    def get_classifier(self) -> Optional[Linear]:
        """The classifier head, or None when ``num_classes == 0``."""
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one of ``num_classes`` outputs."""
        self.num_classes = num_classes
        self.head = Linear(self.num_features, num_classes) if num_classes > 0 else None
        if self.head is not None:
            self.head.update_parameters_name("head.")

    def forward_stages(self, x: Tensor, path_noise: Optional[Tensor] = None) -> Tuple[Tensor, Tuple[Tensor, ...]]:
        """The stage loop, the one every forward shares: blocks, then each stage's patch merging.

        Args:
            x: ``(B, H/p, W/p, embed_dim)`` patch tokens.
            path_noise: ``(B, num_blocks, 2)`` stochastic-depth uniforms (training; see
                :class:`~mindswin.models.layers.DropPath`), or None.

        Returns:
            The last stage's output map, and (``features_only``) the ``out_indices`` stage
            outputs, NCHW.
        """
        features = ()
        for i, layer in enumerate(self.layers):
            start, stop = self.stage_blocks[i]
            x = layer(x, None if path_noise is None else path_noise[:, start:stop])
            if self.features_only and i in self.out_indices:
                features = features + (x.transpose(0, 3, 1, 2),)
            if layer.downsample is not None:
                x = layer.downsample(x)
        return x, features

    def forward_intermediates(self, x: Tensor, path_noise: Optional[Tensor] = None) -> Tuple[Tensor, ...]:
        """Stage outputs listed in ``out_indices``, NCHW at strides 4, 8, 16, 32."""
        return self.forward_stages(self.patch_embed(x), path_noise)[1]

    def forward_features(self, x: Tensor, path_noise: Optional[Tensor] = None) -> Tensor:
        """``(B, C, H, W)`` image -> normalised ``(B, H/32, W/32, num_features)`` map."""
        return self.norm(self.forward_stages(self.patch_embed(x), path_noise)[0])

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Average-pool the feature map and classify (float32 logits)."""
        x = x.mean(axis=(1, 2))
        if pre_logits or self.head is None:
            return x
        if self.head_drop is not None:
            x = self.head_drop(x)
        return self.head(x).astype(ms.float32)

    def construct(self, x: Tensor, path_noise: Optional[Tensor] = None) -> Union[Tensor, Tuple[Tensor, ...]]:
        """Logits, or the stage maps with ``features_only``; ``path_noise`` as in :meth:`forward_stages`."""
        if self.features_only:
            return self.forward_intermediates(x, path_noise)
        return self.forward_head(self.forward_features(x, path_noise))

    def param_count(self) -> int:
        """Number of trainable scalars (derived tensors are constants and not counted)."""
        return int(sum(p.size for p in self.trainable_params()))

    def state_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Parameter name -> shape, the key space of mindswin checkpoints."""
        return {p.name: tuple(p.shape) for p in self.get_parameters()}

    def stage_resolutions(self) -> List[Tuple[int, int]]:
        """Feature-map (height, width) of each stage."""
        return [layer.input_resolution for layer in self.layers]


def reuse_keys(**model_args: Any) -> List[tuple]:
    """:func:`block_reuse_key` of every block of a :class:`SwinTransformerV2`, in model order, without building it.

    Takes :class:`SwinTransformerV2`'s arguments (see :func:`stage_block_configs`).
    ``len(set(reuse_keys(...)))`` is the number of distinct block graphs ``reuse_blocks=True``
    compiles.
    """
    return [block_reuse_key(config) for stage in stage_block_configs(**model_args) for config in stage]
