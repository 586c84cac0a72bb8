"""Train and eval image transforms (the official Swin V2 recipe).

Train: RandomResizedCrop(scale .08-1, ratio 3/4-4/3) -> horizontal flip -> RandAugment
(timm policy string) -> normalise -> random erasing (pixel mode) -> CHW.
Eval: resize the shorter side to ``size / crop_pct`` and centre-crop, or squash-resize
when ``crop_pct`` is 1.0 -> normalise -> CHW.

:class:`TrainAugment` is the training transform as the datasets run it: one callable per
decoded image, in worker processes, whose randomness comes from ``(seed, sample key)``
alone (never from a worker's generator), so every worker draws different numbers and a
run repeats exactly from its seed, whatever the worker count. It can stop at the uint8
crop and hand the erasing rectangle on as numbers (``device=True``): normalising and
erasing then happen in the graph (:mod:`mindswin.data.device`).

Reused from mindcv (verified on MindSpore 2.10 in tests/test_data.py): the timm-style
auto-augment policies (``rand_augment_transform`` and friends). Replaced: mindcv's random
erasing (MindSpore's ``vision.RandomErasing`` fills a constant, not timm's per-pixel
normal noise that the official recipe uses) - see :class:`RandomErasing`.
"""
from __future__ import annotations

import math
import random
import threading
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
from mindspore.dataset import vision
from mindspore.dataset.vision import Inter

from ..config import ConfigError, choices

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "NOISE_FIELDS", "RandomErasing", "ColorJitter",
           "TrainAugment", "build_train_transforms", "build_eval_transforms", "auto_augment_transform",
           "random_resized_crop_box", "normalize_chw"]

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
# Fields in the device's erasing-noise bank (mindswin.data.device): with S x S cyclic shifts
# each, 4 * S**2 distinct noise images per image size.
NOISE_FIELDS = 4
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

    def draw(self, rng: np.random.Generator, height: int, width: int) -> Tuple[int, int, int, int]:
        """``(top, left, h, w)`` of the rectangle to erase, ``(0, 0, 0, 0)`` for none."""
        if rng.random() >= self.prob:
            return 0, 0, 0, 0
        area = height * width
        for _ in range(self.max_attempts):
            target = rng.uniform(*self.scale) * area
            aspect = math.exp(rng.uniform(*self.log_ratio))
            h = int(round(math.sqrt(target * aspect)))
            w = int(round(math.sqrt(target / aspect)))
            if 0 < h < height and 0 < w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        return 0, 0, 0, 0

    @staticmethod
    def apply(img: np.ndarray, box: Sequence[int], noise: np.ndarray) -> np.ndarray:
        """``img`` (C, H, W) with ``box`` replaced by the same window of ``noise`` (C, H, W)."""
        top, left, h, w = (int(v) for v in box)
        if h <= 0 or w <= 0:
            return img
        img = img.copy()
        img[:, top:top + h, left:left + w] = noise[:, top:top + h, left:left + w]
        return img

    def __call__(self, img: np.ndarray) -> np.ndarray:
        channels, height, width = img.shape
        top, left, h, w = self.draw(self.rng, height, width)
        if h <= 0:
            return img
        img = img.copy()
        img[:, top:top + h, left:left + w] = self.rng.standard_normal((channels, h, w)).astype(img.dtype)
        return img


class ColorJitter:
    """Brightness, contrast and saturation jitter whose draws come from the sample's generator.

    As torchvision's ``ColorJitter(s, s, s)`` (what timm builds from one ``color_jitter``
    float): each factor uniform in [max(0, 1 - s), 1 + s], the three applied in a random
    order. MindSpore's ``RandomColorAdjust`` would draw from its own generator, which a
    resumed run cannot replay.
    """

    ADJUSTMENTS = (vision.AdjustBrightness, vision.AdjustContrast, vision.AdjustSaturation)

    def __init__(self, strength: float) -> None:
        self.low, self.high = max(0.0, 1.0 - strength), 1.0 + strength

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for which in rng.permutation(len(self.ADJUSTMENTS)):
            image = np.asarray(self.ADJUSTMENTS[which](float(rng.uniform(self.low, self.high)))(image))
        return image


def random_resized_crop_box(rng: np.random.Generator, height: int, width: int, scale: Sequence[float],
                            ratio: Sequence[float]) -> Tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a RandomResizedCrop window (torchvision's algorithm: ten tries, then centre)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def normalize_chw(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """HWC uint8 -> CHW float32 ``(x - mean) / std`` (the host reference of the device normalisation)."""
    mean32 = np.asarray(mean, np.float32).reshape(3, 1, 1)
    std32 = np.asarray(std, np.float32).reshape(3, 1, 1)
    return (np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32) - mean32) / std32


# mindcv's policies draw from the global ``random`` and ``np.random``: one sample at a time per process.
_GLOBAL_RNG_LOCK = threading.Lock()


class TrainAugment:
    """The training transform of one decoded image, its randomness drawn from ``(seed, key)``.

    Called as ``(image, key) -> (image, erase, key)``: ``image`` HWC uint8 RGB, ``key`` the
    sample's key (epoch and index, from the sampler). Steps: RandomResizedCrop, flip, the
    auto-augment policy (its global ``random``/``np.random`` seeded from the sample's
    generator), then either (``device=True``) the uint8 crop and the erasing rectangle
    ``(top, left, h, w)`` as int32 (normalise and erase run in the graph), or the
    normalised CHW float32 image with the rectangle already filled with normal noise.

    Args:
        image_size: Output side.
        seed: Run seed; with the key it fixes every random draw of the sample.
        device: Stop at uint8 and hand the erasing rectangle on.
        Others: as :func:`build_train_transforms`.
    """

    def __init__(self, image_size: int, *, scale: Sequence[float] = (0.08, 1.0),
                 ratio: Sequence[float] = (3 / 4, 4 / 3), hflip: float = 0.5, auto_augment: Optional[str] = None,
                 interpolation: str = "bicubic", re_prob: float = 0.0, color_jitter: Optional[float] = None,
                 seed: int = 0, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                 device: bool = False) -> None:
        self.image_size = image_size
        self.scale, self.ratio, self.hflip = tuple(scale), tuple(ratio), hflip
        self.resize = vision.Resize((image_size, image_size), interpolation=_interpolation(interpolation))
        self.policy = auto_augment_transform(auto_augment, image_size, interpolation, mean) if auto_augment else None
        self.jitter = ColorJitter(color_jitter) if color_jitter and not auto_augment else None
        self.erasing = RandomErasing(prob=re_prob) if re_prob > 0 else None
        self.seed = seed
        self.mean, self.std = tuple(mean), tuple(std)
        self.device = device

    def rng(self, key: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0x5A3F1E, int(key)])

    def __call__(self, image: np.ndarray, key):
        rng = self.rng(int(key))
        height, width = image.shape[:2]
        top, left, h, w = random_resized_crop_box(rng, height, width, self.scale, self.ratio)
        image = self.resize(np.ascontiguousarray(image[top:top + h, left:left + w]))
        if self.hflip > 0 and rng.random() < self.hflip:
            image = np.ascontiguousarray(image[:, ::-1])
        if self.policy is not None:
            py_seed, np_seed = (int(v) for v in rng.integers(0, 2 ** 31 - 1, size=2))
            with _GLOBAL_RNG_LOCK:
                random.seed(py_seed)
                np.random.seed(np_seed)
                image = np.asarray(self.policy(image))
            if image.dtype != np.uint8:  # AugMix blends in float
                image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        elif self.jitter is not None:
            image = self.jitter(image, rng)
        box = self.erasing.draw(rng, self.image_size, self.image_size) if self.erasing else (0, 0, 0, 0)
        if self.device:
            # the noise of the rectangle: a bank field and its cyclic shift (see mindswin.data.device)
            field, dy, dx = (int(v) for v in rng.integers(0, [NOISE_FIELDS, self.image_size, self.image_size]))
            return image, np.asarray((*box, field, dy, dx), np.int32), key
        erase = np.asarray(box, np.int32)
        out = normalize_chw(image, self.mean, self.std)
        if box[2] > 0:
            noise = np.zeros_like(out)
            noise[:, box[0]:box[0] + box[2], box[1]:box[1] + box[3]] = rng.standard_normal((3, box[2], box[3]))
            out = RandomErasing.apply(out, box, noise)
        return out, erase, key


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
                          mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                          normalize: bool = True) -> List:
    """Resize (by ``crop_pct``) + centre crop, or squash-resize for ``crop_pct == 1``.

    ``normalize=False`` stops at the HWC uint8 crop (the graph normalises, see :mod:`mindswin.data.device`).
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    inter = _interpolation(interpolation)
    if crop_pct == 1.0:
        ops: List = [vision.Resize((image_size, image_size), interpolation=inter)]
    else:
        ops = [vision.Resize(int(math.floor(image_size / crop_pct)), interpolation=inter),
               vision.CenterCrop(image_size)]
    if not normalize:
        return ops
    return ops + [vision.Normalize(mean=list(mean), std=list(std)), vision.HWC2CHW()]
