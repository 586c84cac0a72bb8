"""SimMIM's random masks: which patches of each training image the model must reconstruct.

:class:`MaskGenerator` is the official one (microsoft/Swin-Transformer
``data/data_simmim_pt.py``): the image is cut into ``mask_patch_size`` squares, ``ceil(count
* mask_ratio)`` of them are masked, chosen uniformly, and the mask is returned at the model's
patch resolution (each square repeated ``mask_patch_size / model_patch_size`` times per axis).

Unlike the official generator (numpy's global state, so the masks depend on worker timing),
every draw here takes an explicit generator: a training batch's masks come from
``(seed, rank, epoch, batch)`` and a validation image's from ``(seed, index)``, so they are
reproducible from the seed, differ from rank to rank, and a resumed run draws the masks the
uninterrupted one would have.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

__all__ = ["MaskGenerator", "mask_geometry_problem", "train_mask_rng", "val_mask_rng"]

# Separate the mask streams from every other use of the seed.
_TRAIN_STREAM = 0x51A1
_VAL_STREAM = 0x51A2


def mask_geometry_problem(input_size: int, mask_patch_size: int, model_patch_size: int) -> Optional[str]:
    """Why masks of ``mask_patch_size`` squares cannot tile ``input_size`` images, or None."""
    if input_size % mask_patch_size:
        return (f"mask_patch_size {mask_patch_size} does not divide the {input_size} px image: the masked squares "
                f"must tile it")
    if mask_patch_size % model_patch_size:
        return (f"mask_patch_size {mask_patch_size} is not a multiple of the model's patch size "
                f"{model_patch_size}: a masked square must cover whole patches")
    return None


class MaskGenerator:
    """Random patch masks of SimMIM.

    Args:
        input_size: Image side in pixels (192 in the official recipes).
        mask_patch_size: Side of a masked square in pixels (32).
        model_patch_size: The model's patch side (4).
        mask_ratio: Fraction of squares masked (0.6), rounded up to whole squares.

    Raises:
        ValueError: the squares do not tile the image or do not cover whole patches, or the
            ratio is outside (0, 1).
    """

    def __init__(self, input_size: int = 192, mask_patch_size: int = 32, model_patch_size: int = 4,
                 mask_ratio: float = 0.6) -> None:
        problem = mask_geometry_problem(input_size, mask_patch_size, model_patch_size)
        if problem:
            raise ValueError(problem)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.input_size = input_size
        self.mask_patch_size = mask_patch_size
        self.model_patch_size = model_patch_size
        self.mask_ratio = mask_ratio
        self.rand_size = input_size // mask_patch_size
        self.scale = mask_patch_size // model_patch_size
        self.token_count = self.rand_size ** 2
        self.mask_count = int(math.ceil(self.token_count * mask_ratio))

    @property
    def grid_size(self) -> int:
        """Side of the returned mask: the model's patch grid."""
        return self.rand_size * self.scale

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        """One ``(grid, grid)`` float32 mask, 1 on masked patches."""
        chosen = rng.permutation(self.token_count)[:self.mask_count]
        mask = np.zeros(self.token_count, np.float32)
        mask[chosen] = 1.0
        mask = mask.reshape(self.rand_size, self.rand_size)
        return mask.repeat(self.scale, axis=0).repeat(self.scale, axis=1)

    def batch(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """``(size, grid, grid)`` masks drawn one after the other from ``rng``."""
        return np.stack([self(rng) for _ in range(size)])

    def __repr__(self) -> str:
        return (f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
                f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio}: {self.mask_count} of "
                f"{self.token_count} squares)")


def train_mask_rng(seed: int, key: int) -> np.random.Generator:
    """Generator of the mask of the training sample ``key`` (its epoch and index, as the sampler yields it)."""
    return np.random.default_rng([seed, _TRAIN_STREAM, int(key)])


def val_mask_rng(seed: int, index: int) -> np.random.Generator:
    """Generator of the mask of validation image ``index`` (the same on every rank)."""
    return np.random.default_rng([seed, _VAL_STREAM, index])
