"""Datasets of unlabelled images for SimMIM pre-training.

* Any folder works: every image below it is a sample, with or without class sub-folders
  (labels are never read), unreadable files reported as for ImageFolder.
* Training: the official SimMIM augmentation (``RandomResizedCrop`` with the given scale and
  ratio, 0.67-1 and 3/4-4/3 in the recipes, then a horizontal flip) on the classification
  pipeline (uint8 to the device, transforms in worker processes, the sharded, resumable
  sample order); each image gets its mask from :class:`~mindswin.data.masking.MaskGenerator`
  seeded by ``(seed, key)``. Columns: ``image`` (B, S, S, 3) uint8, ``mask`` (B, S/p, S/p)
  float32[, ``path_noise``].
* Evaluation: the eval transform (resize/centre-crop), sharded and padded like the
  classification eval set; every image has a fixed mask drawn from ``(seed, index)``.
  Columns: ``image``, ``mask``, ``weight`` (0 marks padding).
"""
from __future__ import annotations

import logging
from typing import Sequence, Tuple

import mindspore.dataset as ds
import numpy as np

from .dataset import (
    FROM_THE_START,
    ONE_SHARD,
    DataInfo,
    Shard,
    StartPoint,
    batch_path_noise,
    collect_keys,
    eval_samples,
    keyed_training_samples,
)
from .folder import FolderIndex
from .masking import MaskGenerator, train_mask_rng, val_mask_rng
from .preprocess import Preprocessing
from .transforms import TrainAugment

__all__ = ["create_pretrain_dataset", "create_masked_eval_dataset", "pretrain_augment"]

_logger = logging.getLogger(__name__)


def pretrain_augment(image_size: int, *, seed: int = 0, hflip: float = 0.5, scale: Sequence[float] = (0.67, 1.0),
                     ratio: Sequence[float] = (3 / 4, 4 / 3), interpolation: str = "bilinear") -> TrainAugment:
    """The official SimMIM augmentation: random resized crop and flip, uint8 for the device's normalisation."""
    return TrainAugment(image_size, scale=scale, ratio=ratio, hflip=hflip, interpolation=interpolation, seed=seed,
                        device=True)


def create_pretrain_dataset(index: FolderIndex, augment: TrainAugment, mask_generator: MaskGenerator,
                            batch_size: int, *, seed: int = 0, shard: Shard = ONE_SHARD,
                            start: StartPoint = FROM_THE_START, path_noise_blocks: int = 0, num_workers: int = 2,
                            multiprocessing: bool = True) -> Tuple[ds.Dataset, DataInfo]:
    """Training dataset yielding ``image`` (B, S, S, 3) uint8 and ``mask`` (B, S/p, S/p) float32.

    The classification pipeline's stages (:func:`~mindswin.data.dataset.keyed_training_samples`:
    the sharded, resumable sample order; decoding, the crop and flip in worker processes) with
    ``augment`` (:func:`pretrain_augment`); the graph normalises
    (:class:`~mindswin.data.device.DeviceNormalize`). Every draw of a sample, its crop, flip, mask
    and (with ``path_noise_blocks``, a ``path_noise`` column as in classification) stochastic
    depth, comes from ``(seed, key)``: ``start`` resumes an interrupted run with exactly what it
    would have drawn. ``index``: :func:`~mindswin.data.folder.scan_images`.
    """
    if mask_generator.input_size != augment.image_size:
        raise ValueError(f"the mask generator is for {mask_generator.input_size} px images, the dataset makes "
                         f"{augment.image_size} px ones")
    dataset, info = keyed_training_samples(index, augment, batch_size, seed=seed, shard=shard, start=start,
                                           num_workers=num_workers, multiprocessing=multiprocessing)

    def draw(keys, _batch_info):
        masks = np.stack([mask_generator(train_mask_rng(seed, key)) for key in collect_keys(keys)])
        return (masks, batch_path_noise(seed, keys, path_noise_blocks)) if path_noise_blocks else (masks,)

    extra = ["path_noise"] if path_noise_blocks else []
    dataset = dataset.batch(batch_size, drop_remainder=True, per_batch_map=draw, input_columns=["key"],
                            output_columns=["mask", *extra])
    return dataset.project(["image", "mask", *extra]), info


class _FixedMasks:
    """``key -> mask`` of evaluation position ``key``: the mask depends on the image's global index only."""

    def __init__(self, indices: Sequence[int], mask_generator: MaskGenerator, seed: int) -> None:
        self.indices = list(indices)
        self.mask_generator = mask_generator
        self.seed = seed

    def __call__(self, key):
        return self.mask_generator(val_mask_rng(self.seed, self.indices[int(key)]))


def create_masked_eval_dataset(index: FolderIndex, preprocessing: Preprocessing, mask_generator: MaskGenerator,
                               batch_size: int, *, seed: int = 0, shard: Shard = ONE_SHARD,
                               num_workers: int = 2) -> Tuple[ds.Dataset, DataInfo]:
    """Evaluation dataset yielding ``image`` (B, S, S, 3) uint8, ``mask`` (fixed per image) and ``weight`` (B,).

    As the classification evaluation set (``preprocessing``'s resize and centre crop; the graph
    normalises: ``ReconstructionStep``). Shard ``k`` holds images ``k, k + num_shards, ...``,
    padded with zero-weight copies to whole batches of the same count on every shard.
    """
    dataset, positions, info = eval_samples(index, preprocessing.eval_transforms(normalize=False), batch_size,
                                            shard=shard, num_workers=num_workers)
    dataset = dataset.map(_FixedMasks(positions, mask_generator, seed), input_columns=["key"],
                          output_columns=["mask"])
    dataset = dataset.project(["image", "mask", "weight"]).batch(batch_size, drop_remainder=True)
    return dataset, info
