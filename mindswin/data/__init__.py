"""Data pipeline: ImageFolder scanning, transforms, mixup, datasets, demo data."""
from .dataset import (
                      DataInfo,
                      EpochShardSampler,
                      ImageSource,
                      create_eval_dataset,
                      create_train_dataset,
                      eval_shard_indices,
)
from .folder import IMAGE_EXTENSIONS, UNREADABLE, DataError, FolderIndex, decode_rgb, scan_split
from .mixup import Mixup, smooth_one_hot
from .preprocess import Preprocessing, load_image, resolve_data_config
from .synthetic import make_demo_dataset
from .transforms import RandomErasing, build_eval_transforms, build_train_transforms

__all__ = [
    "DataInfo", "EpochShardSampler", "ImageSource", "create_train_dataset", "create_eval_dataset",
    "eval_shard_indices", "IMAGE_EXTENSIONS", "UNREADABLE", "DataError", "FolderIndex", "decode_rgb", "scan_split",
    "Mixup", "smooth_one_hot", "Preprocessing", "resolve_data_config", "load_image",
    "make_demo_dataset", "RandomErasing", "build_eval_transforms", "build_train_transforms",
]
