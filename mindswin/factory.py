"""``mindswin.create_model``: a registered architecture with any supported checkpoint loaded."""
from __future__ import annotations

from typing import Any, Optional, Sequence

from .checkpoint import load_checkpoint
from .models import SwinTransformerV2, build_model

__all__ = ["create_model"]


def create_model(name: str, *, num_classes: Optional[int] = None, img_size: Optional[Any] = None,
                 window_size: Optional[Any] = None, pretrained_window_sizes: Optional[Sequence[Any]] = None,
                 drop_path_rate: float = 0.0, checkpoint_path: Optional[str] = None,
                 **kwargs: Any) -> SwinTransformerV2:
    """Build a registered Swin V2 variant, optionally loading weights.

    The architecture arguments are those of :func:`mindswin.models.build_model` (official/timm
    name or mindcv alias; class count, input size, window, pretrained windows and drop-path
    rate default to the variant's; further ``SwinTransformerV2`` keywords such as
    ``features_only`` or ``recompute``).

    Args:
        checkpoint_path: Weights to load: a mindswin ``.ckpt``, an official or timm
            ``.pth``/``.safetensors``, a Hugging Face checkpoint (file or folder) or an
            mmpretrain ``.pth``.

    Returns:
        The model, with training mode off (``set_train(False)``).
    """
    model = build_model(name, num_classes=num_classes, img_size=img_size, window_size=window_size,
                        pretrained_window_sizes=pretrained_window_sizes, drop_path_rate=drop_path_rate, **kwargs)
    if checkpoint_path:
        load_checkpoint(model, checkpoint_path)
    return model
