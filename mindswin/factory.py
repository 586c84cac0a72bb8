"""``mindswin.create_model``: a registered architecture with any supported checkpoint loaded."""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

from .checkpoint import load_checkpoint
from .models import SwinTransformerV2, build_model
from .pretrained import fetch, resolve_pretrained

__all__ = ["create_model"]


def create_model(name: str, *, num_classes: Optional[int] = None, img_size: Optional[Any] = None,
                 window_size: Optional[Any] = None, pretrained_window_sizes: Optional[Sequence[Any]] = None,
                 drop_path_rate: float = 0.0, checkpoint_path: Optional[str] = None,
                 pretrained: Union[bool, str] = False, pretrained_dir: str = "", **kwargs: Any) -> SwinTransformerV2:
    """Build a registered Swin V2 variant, optionally loading weights.

    The architecture arguments are those of :func:`mindswin.models.build_model` (official/timm
    name, timm's ``name.tag`` or mindcv alias; class count, input size, window, pretrained windows
    and drop-path rate default to the variant's; further ``SwinTransformerV2`` keywords such as
    ``features_only`` or ``recompute``).

    Args:
        checkpoint_path: Weights to load: a mindswin ``.ckpt``, an official or timm
            ``.pth``/``.safetensors``, a Hugging Face checkpoint (file or folder) or an
            mmpretrain ``.pth``. Loaded instead of ``pretrained`` when both are given.
        pretrained: Load published weights (see :mod:`mindswin.pretrained`): True for the
            model's default ones (the tag of a ``name.tag``; mindcv's for a mindcv name), or a
            spec ``[TAG | MODEL | MODEL.TAG][@SOURCE]``; fetched once into the cache. A head of
            another ``num_classes`` starts at zero, as in timm and mindcv.
        pretrained_dir: Cache folder of published weights, which must exist (default
            ``$MINDSWIN_PRETRAINED_DIR``, else ``~/.cache/mindswin/pretrained``, created when needed).

    Returns:
        The model, with training mode off (``set_train(False)``).
    """
    weights = checkpoint_path
    if not weights and pretrained is not False:
        # resolved before the build, so that a wrong tag costs no model construction
        choice = resolve_pretrained(name, pretrained)
        weights = fetch(choice.file, pretrained_dir=pretrained_dir)
    model = build_model(name, num_classes=num_classes, img_size=img_size, window_size=window_size,
                        pretrained_window_sizes=pretrained_window_sizes, drop_path_rate=drop_path_rate, **kwargs)
    if weights:
        load_checkpoint(model, weights)
    return model
