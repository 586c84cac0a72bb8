"""Train and eval image transforms (the official Swin V2 recipe).

Train: RandomResizedCrop(scale .08-1, ratio 3/4-4/3) -> horizontal flip -> RandAugment
(timm policy string) -> normalise -> random erasing (pixel mode) -> CHW.
Eval: resize the shorter side to ``size / crop_pct`` and centre-crop, or squash-resize
when ``crop_pct`` is 1.0 -> normalise -> CHW.

Reused from mindcv (verified on MindSpore 2.10 in tests/test_data.py): the timm-style
auto-augment policies (``rand_augment_transform`` and friends). Replaced: mindcv's random
erasing (MindSpore's ``vision.RandomErasing`` fills a constant, not timm's per-pixel
normal noise that the official recipe uses) - see :class:`RandomErasing`.
"""
from __future__ import annotations

import math
from typing import Callable, List, Optional, Sequence

import numpy as np
from mindspore.dataset import vision
from mindspore.dataset.vision import Inter

from ..config import ConfigError, choices

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "RandomErasing", "build_train_transforms",
           "build_eval_transforms", "auto_augment_transform"]

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# The allowed interpolation names are MindSpore's Inter members in lower case.
INTERPOLATIONS = {name: Inter[name.upper()] for name in choices("interpolation")}


def _interpolation(name: str) -> Inter:
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {name!r}")
    return INTERPOLATIONS[name]


class RandomErasing:
    """Random erasing with per-pixel normal noise (timm's ``mode='pixel'``), on CHW float.

    Args:
        prob: Probability of erasing one rectangle per image.
        scale: Range of erased area as a fraction of the image.
        ratio: Range of aspect ratios (log-uniform).
        max_attempts: Tries to place a rectangle that fits.
        seed: Seed of this transform's generator (each worker thread shares it).
    """

    def __init__(self, prob: float = 0.25, scale: Sequence[float] = (0.02, 1 / 3),
                 ratio: Sequence[float] = (0.3, 3.3), max_attempts: int = 10, seed: Optional[int] = None) -> None:
        self.prob = prob
        self.scale = scale
        self.log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
        self.max_attempts = max_attempts
        self.rng = np.random.default_rng(seed)

    def __call__(self, img: np.ndarray) -> np.ndarray:
        if self.rng.random() >= self.prob:
            return img
        channels, height, width = img.shape
        area = height * width
        for _ in range(self.max_attempts):
            target = self.rng.uniform(*self.scale) * area
            aspect = math.exp(self.rng.uniform(*self.log_ratio))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < height and 0 < w < width:
                top = int(self.rng.integers(0, height - h + 1))
                left = int(self.rng.integers(0, width - w + 1))
                img = img.copy()
                img[:, top:top + h, left:left + w] = self.rng.standard_normal((channels, h, w)).astype(img.dtype)
                return img
        return img


def auto_augment_transform(policy: str, image_size: int, interpolation: str,
                           mean: Sequence[float] = IMAGENET_MEAN) -> Callable:
    """A timm-style auto-augment policy (``rand-m9-mstd0.5-inc1``, ``autoaug``, ``augmix``, ...).

    Accepts timm's spelling (``rand-...``) and mindcv's (``randaug-...``).
    """
    from mindcv.data import auto_augment as mindcv_aa

    hparams = dict(translate_const=int(image_size * 0.45),
                   img_mean=tuple(min(255, round(m)) for m in mean),
                   interpolation=_interpolation(interpolation))
    if policy.startswith("rand-"):
        policy = "randaug-" + policy[len("rand-"):]
    if policy.startswith("randaug"):
        return mindcv_aa.rand_augment_transform(policy, hparams)
    if policy.startswith(("autoaug", "3a")):
        return mindcv_aa.auto_augment_transform(policy, hparams)
    if policy.startswith("trivialaugwide"):
        return mindcv_aa.trivial_augment_wide_transform(policy, hparams)
    if policy.startswith("augmix"):
        return mindcv_aa.augment_and_mix_transform(policy, dict(hparams, translate_pct=0.3))
    # A ConfigError: the policy comes from the config, and train.py reports it as one line.
    raise ConfigError(f"unknown auto_augment policy {policy!r}: use e.g. 'rand-m9-mstd0.5-inc1', 'autoaug', "
                      "'trivialaugwide' or 'augmix-m5-w4-d2', or '' for none; change --auto_augment")


def build_train_transforms(image_size: int, *, scale: Sequence[float] = (0.08, 1.0),
                           ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5,
                           auto_augment: Optional[str] = None, interpolation: str = "bicubic",
                           re_prob: float = 0.0, color_jitter: Optional[float] = None,
                           seed: Optional[int] = None, mean: Sequence[float] = IMAGENET_MEAN,
                           std: Sequence[float] = IMAGENET_STD) -> List:
    """Transforms for decoded HWC uint8 RGB arrays -> CHW float32."""
    ops: List = [vision.RandomResizedCrop(image_size, scale=tuple(scale), ratio=tuple(ratio),
                                          interpolation=_interpolation(interpolation))]
    if hflip > 0:
        ops.append(vision.RandomHorizontalFlip(prob=hflip))
    if auto_augment:
        ops.append(auto_augment_transform(auto_augment, image_size, interpolation, mean))
    elif color_jitter:
        ops.append(vision.RandomColorAdjust(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    ops += [vision.Normalize(mean=list(mean), std=list(std)), vision.HWC2CHW()]
    if re_prob > 0:
        ops.append(RandomErasing(prob=re_prob, seed=seed))
    return ops


def build_eval_transforms(image_size: int, *, crop_pct: float = 0.9, interpolation: str = "bicubic",
                          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> List:
    """Resize (by ``crop_pct``) + centre crop, or squash-resize for ``crop_pct == 1``."""
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    inter = _interpolation(interpolation)
    if crop_pct == 1.0:
        ops: List = [vision.Resize((image_size, image_size), interpolation=inter)]
    else:
        ops = [vision.Resize(int(math.floor(image_size / crop_pct)), interpolation=inter),
               vision.CenterCrop(image_size)]
    return ops + [vision.Normalize(mean=list(mean), std=list(std)), vision.HWC2CHW()]
