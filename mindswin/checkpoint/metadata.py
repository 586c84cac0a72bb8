"""What a mindswin weights file says about itself, in one dataclass with one spelling per fact."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional

__all__ = ["ARCHITECTURE_KEYS", "CheckpointMetadata"]

# The architecture a recipe may declare instead of the registered variant's (config keys of the same name).
ARCHITECTURE_KEYS = ("embed_dim", "depths", "num_heads", "extra_norm_period")


@dataclass
class CheckpointMetadata:
    """Metadata stored beside the tensors of a mindswin ``.ckpt``.

    The model fields carry the names of the config keys they fill: ``validate.py``,
    ``infer.py`` and ``export.py`` take the model and its geometry from here unless the
    command line sets them.

    Attributes:
        model: Registered model name.
        task: What the weights were trained for (``classification``, ``simmim``).
        num_classes: Classifier width (0: no classifier).
        class_names: Class folder names, index order.
        image_resize: Input side the weights were trained at.
        window_size: Attention window (None: the model's default).
        pretrained_window_sizes: Per-stage windows the position bias was rescaled from.
        embed_dim, depths, num_heads, extra_norm_period: The architecture, where the recipe
            declared one (None: the registered model's).
        crop_pct: Eval centre-crop fraction used in training's validation.
        interpolation: Resize interpolation.
        epoch: Epochs trained when saved.
        metrics: Validation metrics at that epoch (``val_top1``, ...).
        converted_from: Source file of a converted checkpoint, and its layout.
        numerics: How the model computes with these weights (``official``, or ``mindcv`` for
            weights trained with mindcv's Swin V2; see ``mindswin.models.swin_v2.NUMERICS``).
            The loader applies it, so it survives conversion, fine-tuning, resume and export.
    """

    model: Optional[str] = None
    task: str = "classification"
    num_classes: Optional[int] = None
    class_names: Optional[List[str]] = None
    image_resize: Optional[int] = None
    window_size: Optional[int] = None
    pretrained_window_sizes: Optional[List[int]] = None
    embed_dim: Optional[int] = None
    depths: Optional[List[int]] = None
    num_heads: Optional[List[int]] = None
    extra_norm_period: Optional[int] = None
    crop_pct: Optional[float] = None
    interpolation: Optional[str] = None
    epoch: Optional[int] = None
    metrics: Dict[str, float] = field(default_factory=dict)
    converted_from: Optional[Dict[str, str]] = None
    numerics: str = "official"

    # The fields that configure the model and its preprocessing (config keys of the same name).
    MODEL_KEYS = ("model", "image_resize", "window_size", "pretrained_window_sizes", "crop_pct", "interpolation",
                  *ARCHITECTURE_KEYS)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> CheckpointMetadata:
        """Build from a stored dict; keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def model_config(self) -> Dict[str, Any]:
        """The model fields that are set, as config overrides."""
        return {key: getattr(self, key) for key in self.MODEL_KEYS if getattr(self, key) is not None}
