"""The preprocessing of a model, resolved once for train, validate, infer and export.

Like timm's ``resolve_data_config``: the model's registry entry says how its weights expect
images (size, eval crop, interpolation, mean/std); the config may override size, crop and
interpolation; everything that feeds the model asks :func:`resolve_data_config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple

from ..models import model_spec

__all__ = ["Preprocessing", "resolve_data_config"]


@dataclass(frozen=True)
class Preprocessing:
    """How images are turned into model inputs.

    Attributes:
        image_size: Input side in pixels.
        crop_pct: Eval centre-crop fraction (1.0: squash-resize the whole image).
        interpolation: Resize interpolation name.
        mean: Per-channel mean on the 0-255 scale of decoded pixels.
        std: Per-channel standard deviation on the same scale.
    """

    image_size: int
    crop_pct: float
    interpolation: str
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    def train_args(self) -> Dict[str, Any]:
        """Keyword arguments of ``create_train_dataset`` / ``build_train_transforms``."""
        return dict(image_size=self.image_size, interpolation=self.interpolation, mean=self.mean, std=self.std)

    def eval_args(self) -> Dict[str, Any]:
        """Keyword arguments of ``create_eval_dataset`` / ``build_eval_transforms``."""
        return dict(self.train_args(), crop_pct=self.crop_pct)


def resolve_data_config(config: Any) -> Preprocessing:
    """Preprocessing of ``config.model``, with ``image_resize``/``crop_pct``/``interpolation`` overrides."""
    spec = model_spec(config.model)
    return Preprocessing(image_size=config.image_resize or spec.img_size,
                         crop_pct=config.crop_pct if config.crop_pct is not None else spec.crop_pct,
                         interpolation=config.interpolation or spec.interpolation,
                         mean=tuple(255.0 * m for m in spec.mean), std=tuple(255.0 * s for s in spec.std))
