"""SimMIM validation: the reconstruction loss over a split, and the picture of what the model fills in.

* :class:`ReconstructionStep`: for one batch of ``(image, mask, weight)``, the weighted sums
  of the masked L1 error and of the masked pixel count (all-reduced under data parallel)
  and the reconstruction. :func:`evaluate_reconstruction` adds the sums over the split:
  ``val_loss = error / (masked pixels + 1e-5) / in_chans``, the training loss's
  normalisation over the whole split.
* :func:`save_reconstruction_grid`: one row per image: input, masked input (masked squares
  grey), reconstruction, and the visible pixels with the reconstruction in the masked squares.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from mindspore import Tensor, nn, ops

from ..fileio import atomic_write
from ..models.simmim import MASK_SUM_EPS, TARGET_VAR_EPS

__all__ = ["ReconstructionStep", "ReconstructionResult", "evaluate_reconstruction", "save_reconstruction_grid",
           "local_mean_std"]


class ReconstructionStep(nn.Cell):
    """``([error sum, masked pixels, images], reconstruction, images)`` of one batch; padding samples weigh 0.

    Args:
        model: The SimMIM model.
        distributed: Sum over the data-parallel group.
        preprocess: Cell applied to the batch's images first (:class:`~mindswin.data.device.DeviceNormalize`
            for the uint8 batches of the evaluation set); the normalised images are returned.
    """

    def __init__(self, model: nn.Cell, distributed: bool = False, preprocess: Optional[nn.Cell] = None) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.preprocess = preprocess
        self.all_reduce = ops.AllReduce() if distributed else None

    def construct(self, images: Tensor, masks: Tensor, weights: Tensor):
        if self.preprocess is not None:
            images = self.preprocess(images)
        error, masked, x_rec = self.model.masked_error(images, masks)
        sums = ops.stack([(error * weights).sum(), (masked * weights).sum(), weights.sum()])
        if self.all_reduce is not None:
            sums = self.all_reduce(sums)
        return sums, x_rec, images


@dataclass
class ReconstructionResult:
    """Reconstruction loss over a split, and the first batch of this rank (for the grid)."""

    loss: float
    num_samples: int
    images: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None
    reconstructions: Optional[np.ndarray] = None
    weights: Optional[np.ndarray] = None


def evaluate_reconstruction(step: ReconstructionStep, dataset, in_chans: int = 3,
                            progress: bool = False) -> ReconstructionResult:
    """Run ``step`` over ``dataset`` (``image, mask, weight`` batches)."""
    step.set_train(False)
    totals = np.zeros(3, np.float64)
    first = None
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc="eval", leave=False)
    for images, masks, weights in dataset.create_tuple_iterator(num_epochs=1):
        sums, x_rec, model_images = step(images, masks, weights)
        totals += sums.asnumpy()
        if first is None:
            first = (model_images.asnumpy(), masks.asnumpy(), x_rec.asnumpy(), weights.asnumpy())
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    loss = totals[0] / (totals[1] + MASK_SUM_EPS) / in_chans
    result = ReconstructionResult(loss=float(loss), num_samples=int(round(totals[2])))
    if first is not None:
        result.images, result.masks, result.reconstructions, result.weights = first
    return result


def _box_sum(x: np.ndarray, kernel: int) -> np.ndarray:
    """Sum over each ``kernel x kernel`` window of ``(..., H, W)``, zero padded."""
    pad = kernel // 2

    def along(a: np.ndarray, axis: int) -> np.ndarray:
        size = a.shape[axis]
        prefix = np.concatenate([np.zeros_like(np.take(a, [0], axis=axis)), np.cumsum(a, axis=axis)], axis=axis)
        hi = np.minimum(np.arange(size) + pad + 1, size)
        lo = np.maximum(np.arange(size) - pad, 0)
        return np.take(prefix, hi, axis=axis) - np.take(prefix, lo, axis=axis)

    return along(along(x, -2), -1)


def local_mean_std(x: np.ndarray, kernel: int):
    """Local mean and std of SimMIM's normalised targets (official ``norm_targets``), in float64 numpy."""
    x = x.astype(np.float64)
    count = _box_sum(np.ones(x.shape[-2:]), kernel)
    mean = _box_sum(x, kernel) / count
    var = np.maximum((_box_sum(x * x, kernel) / count - mean ** 2) * count / (count - 1), 0.0)
    return mean, np.sqrt(var + TARGET_VAR_EPS)


def save_reconstruction_grid(path: str, images: np.ndarray, masks: np.ndarray, reconstructions: np.ndarray, *,
                             mean: Sequence[float], std: Sequence[float], patch_size: int,
                             norm_target_patch_size: int = 0, title: str = "") -> None:
    """Write a PNG: per image, input / masked input / reconstruction / visible + reconstructed.

    Args:
        path: Output ``.png``.
        images: ``(N, 3, H, W)`` normalised model inputs.
        masks: ``(N, H/p, W/p)`` patch masks (1: masked).
        reconstructions: ``(N, 3, H, W)`` decoder outputs (in target space).
        mean: Per-channel mean on the 0-255 scale used to normalise ``images``.
        std: Per-channel std on the same scale.
        patch_size: Model patch side (mask -> pixels).
        norm_target_patch_size: Window of the locally normalised targets (0: raw pixels); the
            reconstruction is mapped back with the input's local statistics to be shown.
        title: Text above the grid.
    """
    from PIL import Image, ImageDraw

    mean = np.asarray(mean, np.float64).reshape(1, 3, 1, 1)
    std = np.asarray(std, np.float64).reshape(1, 3, 1, 1)
    images = images.astype(np.float64)
    rec = reconstructions.astype(np.float64)
    if norm_target_patch_size:
        local_mean, local_std = local_mean_std(images, norm_target_patch_size)
        rec = rec * local_std + local_mean
    pixel_mask = masks.repeat(patch_size, axis=1).repeat(patch_size, axis=2)[:, None].astype(bool)
    grey = ((127.5 - mean) / std) * np.ones_like(images)
    columns = {"input": images, "masked": np.where(pixel_mask, grey, images), "reconstruction": rec,
               "visible + rec.": np.where(pixel_mask, rec, images)}

    def to_rgb(x: np.ndarray) -> np.ndarray:
        return np.clip(x * std + mean, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)

    tiles = {name: to_rgb(x) for name, x in columns.items()}
    count, height, width = images.shape[0], images.shape[2], images.shape[3]
    zoom = max(1, int(np.ceil(96 / max(height, width))))
    tile_h, tile_w, gap, header = height * zoom, width * zoom, 4, 28 if title else 16
    canvas = Image.new("RGB", (len(tiles) * (tile_w + gap) + gap, header + count * (tile_h + gap) + gap), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 2), title, fill="black")
    for column, (name, rgb) in enumerate(tiles.items()):
        left = gap + column * (tile_w + gap)
        draw.text((left, header - 13), name, fill="black")
        for row in range(count):
            tile = Image.fromarray(rgb[row]).resize((tile_w, tile_h), Image.NEAREST)
            canvas.paste(tile, (left, header + row * (tile_h + gap)))
    atomic_write(path, lambda tmp: canvas.save(tmp, format="PNG"))

