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

from .swin_v2 import SwinTransformerV2

__all__ = ["count_flops"]


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
            num_windows = (h * w) // n
            per_window = n * dim * 3 * dim  # qkv
            per_window += attn.num_heads * n * attn.head_dim * n * 2  # q @ k^T and attn @ v
            per_window += n * dim * dim  # proj
            flops += num_windows * per_window
            flops += 2 * h * w * dim * block.mlp.fc1.out_features  # fc1 + fc2
            flops += 2 * dim * h * w  # norm1 + norm2
        if layer.downsample is not None:
            flops += (h // 2) * (w // 2) * 4 * dim * 2 * dim + h * w * dim // 2
    last_h, last_w = model.layers[-1].input_resolution
    flops += model.num_features * last_h * last_w  # final norm / pooling
    flops += model.num_features * model.num_classes
    return int(flops)
