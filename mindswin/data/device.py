"""The last steps of the input pipeline, run in the graph on the device.

The host sends uint8 NHWC images (a quarter of the bytes of float32) and a few numbers per
sample; these cells finish the official order on the device: normalise -> random erasing
(per-pixel standard normal noise in normalised space) -> mixup / CutMix with the batch
flipped end to end. The soft targets are made on the host with the same draws.

* :class:`DeviceNormalize`: ``(B, H, W, 3) uint8 -> (B, 3, H, W) float32``, for evaluation.
* :class:`DeviceAugment`: normalise, erase the ``erase`` rectangles (``(top, left, h, w,
  field, dy, dx)``, ``h == 0``: none), then mix: outside ``cutbox`` (``(top, bottom, left,
  right)``) a pixel is ``blend[0] * x + blend[1] * x_flipped``, inside it the flipped batch's
  pixel. The erasing noise is a window of a fixed bank of standard-normal fields (drawn once
  from the run's seed), field ``field`` cyclically shifted by ``(dy, dx)``: every pixel is
  N(0, 1) as in timm's per-pixel mode, and the noise is a pure function of the sample's
  numbers, which the host draws from ``(seed, sample key)``; a resumed run erases with the
  noise the uninterrupted run used (a device generator would restart on resume).
* :func:`normalize_erase_mix`: the same arithmetic with the noise given, for tests.

The model's own input is unchanged (normalised float32 NCHW): inference and export never
see these cells.
"""
from __future__ import annotations

from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

from .transforms import IMAGENET_MEAN, IMAGENET_STD, NOISE_FIELDS

__all__ = ["DeviceNormalize", "DeviceAugment", "normalize_erase_mix", "noise_bank", "erase_noise"]


def _channel_constant(values: Sequence[float]) -> Tensor:
    return Tensor(np.asarray(values, np.float32).reshape(1, 3, 1, 1))


def _normalize(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    return (ops.transpose(images, (0, 3, 1, 2)).astype(ms.float32) - mean) / std


def _box_mask(rows: Tensor, cols: Tensor, top: Tensor, bottom: Tensor, left: Tensor, right: Tensor) -> Tensor:
    """(B, 1, H, W) bool: ``top <= row < bottom`` and ``left <= col < right`` per sample."""
    in_rows = ops.logical_and(rows >= top.reshape(-1, 1), rows < bottom.reshape(-1, 1))
    in_cols = ops.logical_and(cols >= left.reshape(-1, 1), cols < right.reshape(-1, 1))
    return ops.logical_and(in_rows.reshape(-1, 1, rows.shape[0], 1), in_cols.reshape(-1, 1, 1, cols.shape[0]))


def normalize_erase_mix(images: Tensor, erase: Tensor, cutbox: Tensor, blend: Tensor, noise: Tensor,
                        mean: Tensor, std: Tensor) -> Tensor:
    """Normalise, erase with ``noise`` (B, 3, H, W), mix; see the module docstring."""
    x = _normalize(images, mean, std)
    height, width = x.shape[2], x.shape[3]
    rows = ops.arange(height, dtype=ms.int32)
    cols = ops.arange(width, dtype=ms.int32)
    top, left, h, w = erase[:, 0], erase[:, 1], erase[:, 2], erase[:, 3]
    x = ops.select(_box_mask(rows, cols, top, top + h, left, left + w).broadcast_to(x.shape), noise, x)
    flipped = ops.reverse(x, [0])
    outside = x * blend[:, 0].reshape(-1, 1, 1, 1) + flipped * blend[:, 1].reshape(-1, 1, 1, 1)
    inside = _box_mask(rows, cols, cutbox[:, 0], cutbox[:, 1], cutbox[:, 2], cutbox[:, 3]).broadcast_to(x.shape)
    return ops.select(inside, flipped, outside)


class DeviceNormalize(nn.Cell):
    """``(B, H, W, 3) uint8 -> (B, 3, H, W)`` float32 ``(x - mean) / std`` (mean/std on the 0-255 scale)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        super().__init__()
        self.mean = _channel_constant(mean)
        self.std = _channel_constant(std)

    def construct(self, images: Tensor) -> Tensor:
        return _normalize(images, self.mean, self.std)


class DeviceAugment(nn.Cell):
    """Normalise, random-erase and mix a uint8 batch on the device (see the module docstring).

    Args:
        mean, std: Per-channel statistics on the 0-255 scale.
        erasing: Whether erasing can happen (``re_prob > 0``); without it no noise is made.
        seed: The run's seed: it draws the noise bank (the same on every rank; the samples'
            shifts differ).
        image_size: Side of the training images (the bank's fields have this size).
        fill: What erased pixels become in normalised space: None for per-pixel N(0, 1)
            noise (timm's pixel mode, the official recipe), or a constant (mindcv's
            ``re_value``, 0 by default there).
    """

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 erasing: bool = True, seed: int = 0, image_size: int = 224, fill: Optional[float] = None) -> None:
        super().__init__()
        self.mean = _channel_constant(mean)
        self.std = _channel_constant(std)
        self.erasing = erasing
        self.image_size = image_size
        self.fill = fill
        if erasing and fill is None:
            self.noise_bank = Tensor(noise_bank(seed, image_size).reshape(-1))

    def _noise(self, erase: Tensor) -> Tensor:
        """(B, 3, S, S): field ``erase[:, 4]`` of the bank shifted by ``(erase[:, 5], erase[:, 6])``."""
        size = self.image_size
        positions = ops.arange(size, dtype=ms.int32).reshape(1, -1)
        rows = (positions + erase[:, 5:6]) % size
        cols = (positions + erase[:, 6:7]) % size
        channels = (ops.arange(3, dtype=ms.int32) * (size * size)).reshape(1, 3, 1, 1)
        index = ((erase[:, 4] * (3 * size * size)).reshape(-1, 1, 1, 1) + channels
                 + (rows * size).reshape(-1, 1, size, 1) + cols.reshape(-1, 1, 1, size))
        return ops.gather(self.noise_bank, index.reshape(-1), 0).reshape(index.shape)

    def construct(self, images: Tensor, erase: Tensor, cutbox: Tensor, blend: Tensor) -> Tensor:
        batch, height, width = images.shape[0], images.shape[1], images.shape[2]
        if self.erasing and self.fill is None:
            noise = self._noise(erase)
        else:
            noise = ops.full((batch, 3, height, width), float(self.fill or 0.0), dtype=ms.float32)
        if not self.erasing:
            erase = ops.zeros_like(erase)
        return normalize_erase_mix(images, erase, cutbox, blend, noise, self.mean, self.std)


def noise_bank(seed: int, image_size: int) -> np.ndarray:
    """``(NOISE_FIELDS, 3, S, S)`` float32 standard-normal fields, a function of the seed alone."""
    rng = np.random.default_rng([int(seed), 0xE2A5E])
    return rng.standard_normal((NOISE_FIELDS, 3, image_size, image_size)).astype(np.float32)


def erase_noise(erase: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """Host reference of :meth:`DeviceAugment._noise` for one sample's ``erase`` row."""
    field, dy, dx = (int(v) for v in erase[4:7])
    return np.roll(bank[field], shift=(-dy, -dx), axis=(1, 2))
