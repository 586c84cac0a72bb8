"""The preprocessing of a model, resolved once for train, validate, infer and export.

Like timm's ``resolve_data_config``: the model's registry entry says how its weights expect
images (size, eval crop, interpolation, mean/std); the config may override size, crop and
interpolation; everything that feeds the model asks :func:`resolve_data_config`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Mapping, Tuple, Union

import numpy as np

from ..models import model_spec
from .folder import UNREADABLE, DataError, decode_rgb
from .transforms import build_eval_transforms

__all__ = ["Preprocessing", "resolve_data_config", "load_image"]

_KEYS = ("model", "image_resize", "crop_pct", "interpolation", "mean", "std")


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

    def eval_transforms(self, normalize: bool = True) -> list:
        """The evaluation transforms (resize, centre crop, [normalise and CHW]): :func:`build_eval_transforms`."""
        return build_eval_transforms(self.image_size, crop_pct=self.crop_pct, interpolation=self.interpolation,
                                     mean=self.mean, std=self.std, normalize=normalize)

    @cached_property
    def eval_transform(self) -> Callable[[np.ndarray], np.ndarray]:
        """HWC uint8 RGB array -> the model's CHW float32 input (resize, crop, normalise); built once."""
        ops = self.eval_transforms()

        def apply(image: np.ndarray) -> np.ndarray:
            for op in ops:
                image = op(image)
            return image

        return apply


def resolve_data_config(source: Union[str, Mapping[str, Any]], **overrides: Any) -> Preprocessing:
    """The preprocessing of a model, with the config's (or the keywords') overrides.

    Args:
        source: A model name, or a config whose ``model``, ``image_resize``, ``crop_pct``,
            ``interpolation``, ``mean`` and ``std`` (0-255 scale) keys are used (None: the
            model's own value).
        **overrides: The same keys, taking precedence over ``source``.
    """
    values = {"model": source} if isinstance(source, str) else {k: source.get(k) for k in _KEYS}
    values.update(overrides)
    spec = model_spec(values["model"])
    return Preprocessing(image_size=values.get("image_resize") or spec.img_size,
                         crop_pct=values["crop_pct"] if values.get("crop_pct") is not None else spec.crop_pct,
                         interpolation=values.get("interpolation") or spec.interpolation,
                         mean=tuple(values.get("mean") or (255.0 * m for m in spec.mean)),
                         std=tuple(values.get("std") or (255.0 * s for s in spec.std)))


def load_image(path: str, preprocessing: Preprocessing) -> np.ndarray:
    """One image file as the model's (3, S, S) float32 input, preprocessed for evaluation.

    Raises:
        DataError: The file cannot be decoded.
    """
    try:
        image = np.asarray(decode_rgb(path), dtype=np.uint8)
    except UNREADABLE as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc
    return preprocessing.eval_transform(image)
