"""A procedural ImageFolder dataset for demos and tests (no download needed).

Each class is a shape drawn in a random colour, size and position on a noisy background
of another random colour: learnable from shape alone, not from colour statistics.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["SHAPES", "make_demo_dataset"]

SHAPES = ("circle", "square", "triangle", "cross", "ring", "bar")


def _draw(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    background = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size, size, 3))
    canvas = np.clip(background + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    colour = tuple(int(c) for c in (background + rng.integers(80, 176, 3)) % 256)
    extent = rng.uniform(0.35, 0.7) * size
    cx, cy = rng.uniform(extent / 2, size - extent / 2, 2)
    r = extent / 2
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "cross":
        w = r / 3
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
        draw.rectangle((cx - w, cy - r, cx + w, cy + r), fill=colour)
    elif shape == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(r / 3)))
    elif shape == "bar":
        w = r / 4
        draw.rectangle((cx - r, cy - w, cx + r, cy + w), fill=colour)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return img


def make_demo_dataset(root: str, *, num_classes: int = 4, train_per_class: int = 160, val_per_class: int = 40,
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
