"""Mixup / CutMix with label smoothing, producing soft targets, applied per batch in the pipeline.

mindcv 0.3.0's ``Mixup`` only works in batch mode on current numpy (its pair and elem
modes use ``np.bool``, removed in numpy 1.24), so this is mindswin's own implementation of
the same (timm) semantics: mixup 0.8 / cutmix 1.0 / switch prob 0.5, one lambda per batch
(``batch``), per pair of samples (``pair``) or per sample (``elem``), each sample mixed with
the batch flipped end to end.

A draw is separate from its application (:meth:`Mixup.draw` -> :class:`MixParams`): the
datasets draw on the host, where the soft targets are made, and either mix there
(:meth:`Mixup.apply`) or hand the parameters to the graph (:mod:`mindswin.data.device`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from ..config import choices

__all__ = ["smooth_one_hot", "Mixup", "MixParams"]


def smooth_one_hot(labels: np.ndarray, num_classes: int, smoothing: float = 0.0) -> np.ndarray:
    """``(B,)`` int labels -> ``(B, K)`` float32 targets with label smoothing."""
    off = smoothing / num_classes
    targets = np.full((len(labels), num_classes), off, dtype=np.float32)
    targets[np.arange(len(labels)), labels.astype(np.int64)] = 1.0 - smoothing + off
    return targets


@dataclass
class MixParams:
    """How each sample of a batch is mixed with the flipped batch.

    Attributes:
        cutbox: (B, 4) int32 ``(top, bottom, left, right)`` pasted from the partner (empty: none).
        blend: (B, 2) float32 weights of the sample and its partner outside the box
            (``(1, 0)``: unchanged; mixup: ``(lam, 1 - lam)``).
        lam: (B,) float32 share of the sample's own label.
    """

    cutbox: np.ndarray
    blend: np.ndarray
    lam: np.ndarray


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

    def _draw(self, rng: np.random.Generator) -> Tuple[float, bool]:
        """One (lambda, use_cutmix) draw."""
        if not self.enabled or rng.random() >= self.prob:
            return 1.0, False
        use_cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha <= 0 or rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if use_cutmix else self.mixup_alpha
        return float(rng.beta(alpha, alpha)), use_cutmix

    @staticmethod
    def _cut_box(rng: np.random.Generator, height: int, width: int, lam: float) -> Tuple[int, int, int, int, float]:
        """Random box with area ~ (1 - lam); returns it and the exact kept fraction."""
        cut = math.sqrt(1.0 - lam)
        cut_h, cut_w = int(height * cut), int(width * cut)
        cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        kept = 1.0 - (bottom - top) * (right - left) / float(height * width)
        return int(top), int(bottom), int(left), int(right), kept

    def draw(self, batch: int, height: int, width: int, rng: Optional[np.random.Generator] = None) -> MixParams:
        """The parameters of one batch (from ``rng``, default this mixer's own generator).

        The pipeline's batch stage calls this from several threads at once, each with its
        batch's generator, so the draw reads only ``rng`` and changes nothing on the mixer.
        """
        if batch % 2 and self.mode == "pair":
            raise ValueError("mixup mode 'pair' needs an even batch size")
        rng = self.rng if rng is None else rng
        cutbox = np.zeros((batch, 4), np.int32)
        blend = np.tile(np.array([1.0, 0.0], np.float32), (batch, 1))
        lam = np.ones(batch, dtype=np.float32)
        if self.mode == "batch":
            group = np.zeros(batch, dtype=np.int64)
        elif self.mode == "pair":
            group = np.minimum(np.arange(batch), batch - 1 - np.arange(batch))
        else:
            group = np.arange(batch)
        for g in np.unique(group):
            value, use_cutmix = self._draw(rng)
            if value >= 1.0:
                continue
            members = np.nonzero(group == g)[0]
            if use_cutmix:
                top, bottom, left, right, kept = self._cut_box(rng, height, width, value)
                cutbox[members] = (top, bottom, left, right)
                lam[members] = kept
            else:
                blend[members] = (np.float32(value), np.float32(1.0 - value))
                lam[members] = value
        return MixParams(cutbox=cutbox, blend=blend, lam=lam)

    @staticmethod
    def apply(images: np.ndarray, params: MixParams) -> np.ndarray:
        """``images`` (B, C, H, W) mixed with their flipped batch as ``params`` say (float32)."""
        source = images[::-1]
        mixed = images.astype(np.float32, copy=True)
        for i in range(len(images)):
            top, bottom, left, right = (int(v) for v in params.cutbox[i])
            w_self, w_other = params.blend[i]
            if w_other != 0.0:
                mixed[i] = images[i] * w_self + source[i] * w_other
            if bottom > top and right > left:
                mixed[i, :, top:bottom, left:right] = source[i, :, top:bottom, left:right]
        return mixed

    def targets(self, labels: np.ndarray, lam: np.ndarray) -> np.ndarray:
        """Soft targets: the smoothed one-hot labels mixed with the flipped batch's by ``lam``."""
        targets = smooth_one_hot(labels, self.num_classes, self.label_smoothing)
        targets = targets * lam[:, None] + targets[::-1] * (1.0 - lam[:, None])
        return targets.astype(np.float32)

    def __call__(self, images: np.ndarray, labels: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Mix ``images`` (B, C, H, W) with their flipped batch; return (images, soft targets)."""
        params = self.draw(len(images), *images.shape[-2:])
        return self.apply(images, params), self.targets(labels, params.lam)
