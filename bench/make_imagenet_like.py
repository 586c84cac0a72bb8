"""Write a folder of ImageNet-like JPEGs for input-pipeline benchmarks.

    python bench/make_imagenet_like.py DIR [--images 2000] [--classes 10] [--seed 0] [--workers 2]

Writes ``DIR/train/cNNN/NNNNNN.jpg`` (and, with ``--val N``, ``DIR/val/...``): 500x375
(one in five 375x500) RGB JPEGs at quality 90, like the typical ImageNet photo. The
content is built to cost what a photo costs to decode: a 1/f ("pink") amplitude spectrum,
the statistics of natural images, so the JPEG entropy coder sees a photo's mix of smooth
regions and detail (files of roughly 100-150 kB, the ImageNet average is about 110 kB),
plus a few hard-edged objects and a lighting gradient. Deterministic: image ``i`` depends
only on ``(seed, i)``; the same arguments write byte-identical files. Fast: each image is
cut from a small bank of precomputed noise fields, so 2000 images take seconds per core.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import List, Tuple

import numpy as np
from PIL import Image, ImageDraw

BANK_SIZE = 8
FIELD = 768


def _pink_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) float32 field with a 1/f amplitude spectrum, normalised to zero mean, unit std."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    amplitude = 1.0 / radius ** 1.05
    amplitude[0, 0] = 0.0
    channels = []
    shared = rng.standard_normal((size, size // 2 + 1)) + 1j * rng.standard_normal((size, size // 2 + 1))
    for _ in range(3):  # colour channels are correlated like in photos
        own = rng.standard_normal((size, size // 2 + 1)) + 1j * rng.standard_normal((size, size // 2 + 1))
        spectrum = (0.8 * shared + 0.45 * own) * amplitude
        channel = np.fft.irfft2(spectrum, s=(size, size))
        channels.append((channel - channel.mean()) / channel.std())
    return np.stack(channels, axis=-1).astype(np.float32)


_BANK: List[np.ndarray] = []


def _bank(seed: int) -> List[np.ndarray]:
    if not _BANK:
        rng = np.random.default_rng([seed, 0xBA4C])
        _BANK.extend(_pink_field(rng, FIELD) for _ in range(BANK_SIZE))
    return _BANK


def render(seed: int, index: int) -> Image.Image:
    """Image ``index``: two blended noise crops, tinted and lit, with a few objects on top."""
    rng = np.random.default_rng([seed, index])
    width, height = (375, 500) if rng.random() < 0.2 else (500, 375)
    bank = _bank(seed)
    layers = []
    for _ in range(2):
        field = bank[int(rng.integers(len(bank)))]
        top, left = int(rng.integers(0, FIELD - height)), int(rng.integers(0, FIELD - width))
        crop = field[top:top + height, left:left + width]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        layers.append(crop)
    mix = float(rng.uniform(0.3, 0.7))
    image = mix * layers[0] + (1 - mix) * layers[1]
    contrast = rng.uniform(30, 60, size=3).astype(np.float32)
    base = rng.uniform(70, 180, size=3).astype(np.float32)
    yy = np.linspace(-1, 1, height, dtype=np.float32)[:, None, None]
    xx = np.linspace(-1, 1, width, dtype=np.float32)[None, :, None]
    light = float(rng.uniform(-25, 25)) * yy + float(rng.uniform(-25, 25)) * xx
    pixels = np.clip(image * contrast + base + light, 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(2, 6))):
        x0, y0 = int(rng.integers(0, width - 40)), int(rng.integers(0, height - 40))
        x1, y1 = x0 + int(rng.integers(30, width // 2)), y0 + int(rng.integers(30, height // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1, y1), fill=colour)
        else:
            draw.polygon([(x0, y0), (x1, y0 + int(rng.integers(0, 40))), (x0 + int(rng.integers(0, 60)), y1)],
                         fill=colour)
    # the objects get texture too: add a little of a third field on top of everything
    field = bank[int(rng.integers(len(bank)))][:height, :width]
    out = np.asarray(img, dtype=np.float32) + field * float(rng.uniform(6, 14))
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))


def _write(job: Tuple[int, int, str]) -> int:
    seed, index, path = job
    render(seed, index).save(path, format="JPEG", quality=90)
    return os.path.getsize(path)


def make_imagenet_like(root: str, images: int = 2000, classes: int = 10, seed: int = 0, val: int = 0,
                       workers: int = 2) -> dict:
    """Write the folder; returns counts and the mean file size."""
    jobs = []
    for split, count, offset in (("train", images, 0), ("val", val, 10_000_000)):
        for i in range(count):
            class_dir = os.path.join(root, split, f"c{i % classes:03d}")
            os.makedirs(class_dir, exist_ok=True)
            jobs.append((seed, offset + i, os.path.join(class_dir, f"{i:06d}.jpg")))
    start = time.perf_counter()
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            sizes = list(pool.map(_write, jobs, chunksize=16))
    else:
        sizes = [_write(job) for job in jobs]
    return dict(images=len(jobs), mean_kb=round(float(np.mean(sizes)) / 1024, 1) if sizes else 0.0,
                seconds=round(time.perf_counter() - start, 1))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root")
    parser.add_argument("--images", type=int, default=2000, help="training images")
    parser.add_argument("--val", type=int, default=0, help="validation images")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    result = make_imagenet_like(args.root, args.images, args.classes, args.seed, args.val, args.workers)
    print(f"wrote {result['images']} JPEGs ({result['mean_kb']} kB on average) under {args.root} "
          f"in {result['seconds']} s", file=sys.stderr)


if __name__ == "__main__":
    main()
