"""A procedural ImageFolder dataset for demos and tests (no download needed).

Each class is a pattern (stripes of three orientations, checkerboard, dots, a disc) in
random colours, period and phase with pixel noise: learnable from structure alone, not
from colour statistics, by a small model in a few CPU minutes.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np
from PIL import Image

__all__ = ["SHAPES", "make_demo_dataset"]

SHAPES = ("stripes_horizontal", "stripes_vertical", "stripes_diagonal", "checkerboard", "dots", "circle")


def _draw(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One image of class ``shape``: a pattern of random period, phase and colours."""
    background = rng.integers(0, 256, 3).astype(np.float64)
    foreground = (background + rng.integers(80, 176, 3)) % 256
    period = rng.uniform(0.12, 0.25) * size
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, period, 2)
    if shape == "stripes_horizontal":
        mask = ((yy + phase[0]) % period) < period / 2
    elif shape == "stripes_vertical":
        mask = ((xx + phase[1]) % period) < period / 2
    elif shape == "stripes_diagonal":
        mask = ((xx + yy + phase[0]) % (1.4 * period)) < 0.7 * period
    elif shape == "checkerboard":
        mask = (((yy + phase[0]) // period + (xx + phase[1]) // period) % 2) == 0
    elif shape == "dots":
        cy, cx = (yy + phase[0]) % period - period / 2, (xx + phase[1]) % period - period / 2
        mask = cy ** 2 + cx ** 2 < (period / 4) ** 2
    elif shape == "circle":
        r = rng.uniform(0.25, 0.45) * size
        cy, cx = rng.uniform(r, size - r, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    else:
        raise ValueError(f"unknown class {shape!r}")
    canvas = np.where(mask[..., None], foreground, background) + rng.normal(0, 12, (size, size, 3))
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))


def make_demo_dataset(root: str, *, num_classes: int = 4, train_per_class: int = 200, val_per_class: int = 50,
                      image_size: int = 64, seed: int = 0, formats: Sequence[str] = ("png", "jpg")) -> Dict[str, int]:
    """Write ``root/{train,val}/<shape>/<i>.<ext>``.

    Args:
        root: Output directory (created; existing files are overwritten).
        num_classes: Number of shapes (at most ``len(SHAPES)``).
        train_per_class: Training images per class.
        val_per_class: Validation images per class.
        image_size: Side of the square images.
        seed: Generator seed: the same seed writes the same images.
        formats: File formats to alternate between.

    Returns:
        Number of images written per split.
    """
    if not 1 < num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {num_classes}")
    rng = np.random.default_rng(seed)
    counts = {}
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for shape in SHAPES[:num_classes]:
            folder = os.path.join(root, split, shape)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                ext = formats[i % len(formats)]
                _draw(shape, image_size, rng).save(os.path.join(folder, f"{i:05d}.{ext}"), quality=95)
        counts[split] = per_class * num_classes
    return counts
