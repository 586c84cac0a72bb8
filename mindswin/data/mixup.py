"""Mixup / CutMix with label smoothing, producing soft targets, applied per batch in the pipeline.

mindcv 0.3.0's ``Mixup`` only works in batch mode on current numpy (its pair and elem
modes use ``np.bool``, removed in numpy 1.24), so this is mindswin's own implementation of
the same (timm) semantics: mixup 0.8 / cutmix 1.0 / switch prob 0.5, one lambda per batch
(``batch``), per pair of samples (``pair``) or per sample (``elem``), each sample mixed with
the batch flipped end to end.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from ..config import choices

__all__ = ["smooth_one_hot", "Mixup"]


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """``(B,)`` int labels -> ``(B, K)`` float32 targets with label smoothing."""
    off = smoothing / num_classes
    targets = np.full((len(labels), num_classes), off, dtype=np.float32)
    targets[np.arange(len(labels)), labels.astype(np.int64)] = 1.0 - smoothing + off
    return targets


class Mixup:
    """Mix a batch of CHW images and build the matching soft targets.

    Args:
        mixup_alpha: Beta(alpha, alpha) for mixup; 0 disables mixup.
        cutmix_alpha: Beta(alpha, alpha) for CutMix; 0 disables CutMix.
        prob: Probability of mixing a batch/pair/sample at all.
        switch_prob: Probability of CutMix instead of mixup when both are enabled.
        mode: ``batch``, ``pair`` or ``elem``.
        label_smoothing: Smoothing folded into the targets.
        num_classes: Number of classes.
        seed: Generator seed.
    """

    MODES = choices("mixup_mode")

    def __init__(self, mixup_alpha: float = 0.8, cutmix_alpha: float = 1.0, prob: float = 1.0,
                 switch_prob: float = 0.5, mode: str = "batch", label_smoothing: float = 0.1,
                 num_classes: int = 1000, seed: Optional[int] = None) -> None:
        if mode not in self.MODES:
            raise ValueError(f"mixup mode must be one of {self.MODES}, got {mode!r}")
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.mode = mode
        self.label_smoothing = label_smoothing
        self.num_classes = num_classes
        self.rng = np.random.default_rng(seed)
        self.enabled = mixup_alpha > 0 or cutmix_alpha > 0

    def _draw(self) -> Tuple[float, bool]:
        """One (lambda, use_cutmix) draw."""
        if not self.enabled or self.rng.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or self.rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(self.rng.beta(alpha, alpha)), use_cutmix

    def _cut_box(self, height: int, width: int, lam: float) -> Tuple[int, int, int, int, float]:
        """Random box with area ~ (1 - lam); returns it and the exact kept fraction."""
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(self.rng.integers(0, height)), int(self.rng.integers(0, width))
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return int(top), int(bottom), int(left), int(right), kept

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Mix ``images`` (B, C, H, W) with their flipped batch; return (images, soft targets)."""
        batch = len(images)
        if batch % 2 and self.mode == "pair":
            raise ValueError("mixup mode 'pair' needs an even batch size")
        source = images[::-1]
        mixed = images.astype(np.float32, copy=True)
        lam = np.ones(batch, dtype=np.float32)
        height, width = images.shape[-2:]
        if self.mode == "batch":
            group = np.zeros(batch, dtype=np.int64)
        elif self.mode == "pair":
            group = np.minimum(np.arange(batch), batch - 1 - np.arange(batch))
        else:
            group = np.arange(batch)
        for g in np.unique(group):
            value, use_cutmix = self._draw()
            if value >= 1.0:
                continue
            members = np.nonzero(group == g)[0]
            if use_cutmix:
                top, bottom, left, right, kept = self._cut_box(height, width, value)
                mixed[members, :, top:bottom, left:right] = source[members, :, top:bottom, left:right]
                lam[members] = kept
            else:
                mixed[members] = images[members] * value + source[members] * (1.0 - value)
                lam[members] = value
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        targets = targets * lam[:, None] + targets[::-1] * (1.0 - lam[:, None])
        return mixed, targets.astype(np.float32)

