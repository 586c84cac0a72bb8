"""Swin Transformer V2 cells and the model registry."""
from .flops import count_flops
from .layers import DropPath, LayerNorm, Linear, Mlp, set_compute_dtype
from .registry import ModelSpec, build_model, list_models, model_spec, register_model, resolve_model_name
from .simmim import SimMIM, SwinTransformerV2ForSimMIM, build_simmim
from .swin_v2 import PatchMerging, SwinTransformerV2, SwinTransformerV2Block, WindowAttention

__all__ = [
    "SwinTransformerV2", "SwinTransformerV2Block", "WindowAttention", "PatchMerging",
    "Linear", "LayerNorm", "Mlp", "DropPath", "set_compute_dtype",
    "count_flops", "ModelSpec", "build_model", "list_models", "model_spec", "register_model", "resolve_model_name",
    "SimMIM", "SwinTransformerV2ForSimMIM", "build_simmim",
]
