"""Datasets of unlabelled images for SimMIM pre-training.

* Any folder works: every image below it is a sample, with or without class sub-folders
  (labels are never read), unreadable files reported as for ImageFolder.
* Training: the official SimMIM augmentation (``RandomResizedCrop`` with the given scale and
  ratio, 0.67-1 and 3/4-4/3 in the recipes, then a horizontal flip), normalised, with the
  sharded, resumable sample order of classification; each batch gets its masks from
  :class:`~mindswin.data.masking.MaskGenerator` seeded by ``(seed, rank, epoch, batch)``.
  Columns: ``image`` (B, 3, S, S) float32, ``mask`` (B, S/p, S/p) float32.
* Evaluation: the eval transform (resize/centre-crop), sharded and padded like the
  classification eval set; every image has a fixed mask drawn from ``(seed, index)``.
  Columns: ``image``, ``mask``, ``weight`` (0 marks padding).
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import mindspore.dataset as ds

from .dataset import DataInfo, EpochShardSampler, ImageSource, eval_shard_indices
from .folder import DataError, FolderIndex, scan_images
from .masking import MaskGenerator, train_mask_rng, val_mask_rng
from .transforms import IMAGENET_MEAN, IMAGENET_STD, build_eval_transforms, build_train_transforms

__all__ = ["create_pretrain_dataset", "create_masked_eval_dataset"]

_logger = logging.getLogger(__name__)


class _MaskedTrainSource:
    """``(image, mask)`` of a sampler key; the mask comes from ``(seed, rank, epoch, index)``."""

    def __init__(self, images: ImageSource, sampler: EpochShardSampler, mask_generator: MaskGenerator,
                 seed: int, rank: int) -> None:
        self.images = images
        self.sampler = sampler
        self.mask_generator = mask_generator
        self.seed = seed
        self.rank = rank

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int):
        epoch, index = self.sampler.split_key(key)
        image, _, _ = self.images[index]
        rng = train_mask_rng(self.seed, self.rank, epoch, index)
        return image, self.mask_generator(rng)


def create_pretrain_dataset(folder: str, *, image_size: int, batch_size: int, mask_generator: MaskGenerator,
                            num_shards: int = 1, shard_id: int = 0, seed: int = 0, num_workers: int = 2,
                            start_epoch: int = 0, skip_batches: int = 0, hflip: float = 0.5,
                            scale: Sequence[float] = (0.67, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
                            interpolation: str = "bilinear", verify: str = "auto", strict: bool = False,
                            index: Optional[FolderIndex] = None, mean: Sequence[float] = IMAGENET_MEAN,
                            std: Sequence[float] = IMAGENET_STD) -> Tuple[ds.Dataset, DataInfo]:
    """Training dataset yielding ``image`` (B, 3, S, S) float32 and ``mask`` (B, S/p, S/p) float32.

    Each iterator is the next epoch. ``start_epoch``/``skip_batches`` resume an interrupted
    run: the first iterator starts with the batches it had not trained, and every image gets
    the mask it would have had (a mask depends on seed, rank, epoch and image only).
    """
    index = index or scan_images(folder, verify=verify, strict=strict, num_workers=num_workers)
    if mask_generator.input_size != image_size:
        raise ValueError(f"the mask generator is for {mask_generator.input_size} px images, the dataset makes "
                         f"{image_size} px ones")
    sampler = EpochShardSampler(len(index), num_shards, shard_id, seed, shuffle=True, start_epoch=start_epoch,
                                    skip=skip_batches * batch_size)
    if sampler.per_shard < batch_size:
        raise DataError(f"{index.root}: {sampler.per_shard} images per shard is fewer than batch_size {batch_size}")
    images = ImageSource(index.samples)
    source = _MaskedTrainSource(images, sampler, mask_generator, seed, shard_id)
    dataset = ds.GeneratorDataset(source, column_names=["image", "mask"], sampler=sampler,
                                  num_parallel_workers=num_workers, python_multiprocessing=False)
    transforms = build_train_transforms(image_size, scale=scale, ratio=ratio, hflip=hflip, auto_augment=None,
                                        interpolation=interpolation, re_prob=0.0, color_jitter=None, mean=mean, std=std)
    dataset = dataset.map(transforms, input_columns="image", num_parallel_workers=num_workers,
                          python_multiprocessing=False)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    info = DataInfo(class_names=[], num_samples=len(index), batch_size=batch_size,
                    batches_per_epoch=sampler.per_shard // batch_size, bad_files=list(index.bad_files), source=images)
    return dataset, info


class _MaskedSource:
    """``(image, mask, weight)`` of evaluation position ``i``; the mask depends on the global index only."""

    def __init__(self, images: ImageSource, indices: Sequence[int], mask_generator: MaskGenerator,
                 seed: int) -> None:
        self.images = images
        self.indices = list(indices)
        self.mask_generator = mask_generator
        self.seed = seed

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int):
        image, _, weight = self.images[position]
        return image, self.mask_generator(val_mask_rng(self.seed, self.indices[position])), weight


def create_masked_eval_dataset(folder: str, *, image_size: int, batch_size: int, mask_generator: MaskGenerator,
                               num_shards: int = 1, shard_id: int = 0, seed: int = 0, num_workers: int = 2,
                               crop_pct: float = 1.0, interpolation: str = "bicubic", verify: str = "auto",
                               strict: bool = False, index: Optional[FolderIndex] = None,
                               mean: Sequence[float] = IMAGENET_MEAN,
                               std: Sequence[float] = IMAGENET_STD) -> Tuple[ds.Dataset, DataInfo]:
    """Evaluation dataset yielding ``image``, ``mask`` (fixed per image) and ``weight`` (B,) float32.

    Shard ``k`` holds images ``k, k + num_shards, ...``, padded with zero-weight copies to
    whole batches of the same count on every shard.
    """
    index = index or scan_images(folder, verify=verify, strict=strict, num_workers=num_workers)
    positions, weights = eval_shard_indices(len(index), num_shards, shard_id, batch_size)
    images = ImageSource([index.samples[i] for i in positions], weights)
    source = _MaskedSource(images, positions, mask_generator, seed)
    dataset = ds.GeneratorDataset(source, column_names=["image", "mask", "weight"], shuffle=False,
                                  num_parallel_workers=num_workers, python_multiprocessing=False)
    dataset = dataset.map(build_eval_transforms(image_size, crop_pct=crop_pct, interpolation=interpolation,
                                                mean=mean, std=std),
                          input_columns="image", num_parallel_workers=num_workers, python_multiprocessing=False)
    dataset = dataset.batch(batch_size, drop_remainder=True)
    info = DataInfo(class_names=[], num_samples=len(index), batch_size=batch_size,
                    batches_per_epoch=len(positions) // batch_size, bad_files=list(index.bad_files), source=images)
    return dataset, info
