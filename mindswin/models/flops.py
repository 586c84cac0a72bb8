"""Analytic FLOP counts of a built Swin V2 model.

Convention (the official repository's ``flops()``): one multiply-add counts as one FLOP;
matmuls of the patch projection, qkv/proj/MLP linears, ``q @ k^T`` and ``attn @ v``,
patch merging and the head are counted, plus one FLOP per element for each LayerNorm and
for the final pooling. Softmax, GELU, the CPB MLP (input-independent) and the cosine
normalisation are not counted. With it Swin V2-T (window 8, 256 px) is 5.93 GFLOPs, the
figure of the official model zoo (5.9 G). Tools that count only the matmuls of one
forward under another convention (e.g. fvcore/mmengine) report smaller numbers.
"""
from __future__ import annotations

from typing import Sequence

from .swin_v2 import SwinTransformerV2, has_extra_norm, merged_resolution, num_windows

__all__ = ["count_flops", "count_parameters"]


def count_flops(model: SwinTransformerV2) -> int:
    """FLOPs (multiply-adds) of one image through ``model`` under the official convention."""
    gh, gw = model.patch_embed.grid_size
    patch = model.patch_embed.patch_size
    flops = gh * gw * model.embed_dim * model.in_chans * patch * patch  # projection
    flops += gh * gw * model.embed_dim  # patch norm
    for layer in model.layers:
        h, w = layer.input_resolution
        dim = layer.dim
        for block in layer.blocks:
            attn = block.attn
            n = attn.window_area
            per_window = n * dim * 3 * dim  # qkv
            per_window += attn.num_heads * n * attn.head_dim * n * 2  # q @ k^T and attn @ v
            per_window += n * dim * dim  # proj
            flops += num_windows((h, w), block.window_size) * per_window  # padded windows compute too
            flops += 2 * h * w * dim * block.mlp.fc1.out_features  # fc1 + fc2
            flops += 2 * dim * h * w  # norm1 + norm2
        if layer.downsample is not None:
            merged_h, merged_w = merged_resolution((h, w))
            flops += merged_h * merged_w * (4 * dim * 2 * dim + 2 * dim)  # reduction + norm
    last_h, last_w = model.layers[-1].input_resolution
    flops += model.num_features * last_h * last_w  # final norm / pooling
    flops += model.num_features * model.num_classes
    return int(flops)


def count_parameters(embed_dim: int, depths: Sequence[int], num_heads: Sequence[int], num_classes: int = 1000,
                     patch_size: int = 4, in_chans: int = 3, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                     extra_norm_period: int = 0, **_ignored) -> int:
    """Trainable parameters of a :class:`SwinTransformerV2` from its arguments, without building it.

    For sizes too large to allocate here (SwinV2-G: 3.0B); tests check it against built models.
    Window and resolution do not change the count (the CPB MLP maps coordinates to heads).
    """
    total = embed_dim * in_chans * patch_size ** 2 + embed_dim + 2 * embed_dim  # projection + norm
    for i, (depth, heads) in enumerate(zip(depths, num_heads)):
        dim = embed_dim * 2 ** i
        hidden = int(dim * mlp_ratio)
        block = heads + 2 * 512 + 512 + 512 * heads  # logit scale, CPB MLP
        block += 3 * dim * dim + (2 * dim if qkv_bias else 0) + dim * dim + dim  # qkv (+ q, v biases), proj
        block += dim * hidden + hidden + hidden * dim + dim + 2 * 2 * dim  # MLP, norm1, norm2
        total += depth * block + sum(2 * dim for j in range(depth) if has_extra_norm(j, extra_norm_period))
        if i < len(depths) - 1:
            total += 4 * dim * 2 * dim + 2 * 2 * dim  # patch merging: reduction + norm
    num_features = embed_dim * 2 ** (len(depths) - 1)
    return total + 2 * num_features + (num_features * num_classes + num_classes if num_classes > 0 else 0)
