"""Tasks: what a training run learns from and measures. The loop is the same for all of them.

A task owns its data (scanning, training and validation pipelines), the loss network that
maps a batch to a scalar loss, its validation metrics and the metadata saved with its
weights. :func:`mindswin.engine.trainer.train` only orders the events: build, restore,
train epochs, validate, save.
"""
from __future__ import annotations

import abc
import os
from typing import Any, Dict, Optional, Tuple

import mindspore.dataset as ds
from mindspore import nn

from ..checkpoint import CheckpointMetadata, LoadReport
from ..config import Config, ConfigError
from ..data import DataInfo, create_eval_dataset, create_train_dataset, resolve_data_config, scan_split
from ..models import SwinTransformerV2, resolve_model_name
from .builder import model_from_config
from .evaluate import EvalStep, evaluate
from .runtime import Runtime
from .state import RunPosition
from .train_step import NetWithLoss, SoftTargetCrossEntropy

__all__ = ["Task", "ClassificationTask", "create_task"]


class Task(abc.ABC):
    """One kind of training run.

    Attributes:
        name: Stored in the weights' metadata.
        monitor: Validation metric (higher is better) that picks ``{model}-best.ckpt``.
    """

    name: str
    monitor: str

    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.preprocessing = resolve_data_config(config)

    @property
    @abc.abstractmethod
    def num_samples(self) -> int:
        """Training samples in the whole split (all ranks together)."""

    @abc.abstractmethod
    def build_model(self) -> Tuple[SwinTransformerV2, Optional[LoadReport]]:
        """The model to train, with the configured weights loaded."""

    @abc.abstractmethod
    def loss_network(self, model: SwinTransformerV2) -> nn.Cell:
        """Cell mapping one training batch (the dataset's columns) to the scalar loss."""

    @abc.abstractmethod
    def train_data(self, position: RunPosition) -> Tuple[ds.Dataset, DataInfo]:
        """This rank's training pipeline, continuing from ``position``."""

    @abc.abstractmethod
    def evaluate(self, model: SwinTransformerV2) -> Dict[str, Any]:
        """Validation metrics of ``model`` over the whole split (``val_*`` keys)."""

    @abc.abstractmethod
    def metadata(self, epoch: int, metrics: Dict[str, Any]) -> CheckpointMetadata:
        """What the weights saved after ``epoch`` record about themselves."""

    def describe(self) -> str:
        """One phrase for the start-of-run log line."""
        return f"{self.name} on {self.num_samples} images"


class ClassificationTask(Task):
    """Supervised classification on an ImageFolder tree (``train/<class>/<image>``)."""

    name = "classification"
    monitor = "val_top1"

    def __init__(self, config: Config, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if not config.data_dir:
            raise ConfigError("--data_dir is required: a folder with train/<class>/<image> and val/<class>/<image>")
        self.index = scan_split(os.path.join(config.data_dir, config.train_split), verify=config.verify_images,
                                strict=config.strict_data, num_workers=config.num_parallel_workers)
        self.num_classes = config.num_classes or len(self.index.class_names)
        if self.num_classes != len(self.index.class_names):
            raise ConfigError(f"num_classes is {self.num_classes} but {self.index.root} has "
                              f"{len(self.index.class_names)} class folders")
        self._evaluator: Optional[Tuple[EvalStep, ds.Dataset, DataInfo]] = None

    @property
    def num_samples(self) -> int:
        return len(self.index)

    def build_model(self) -> Tuple[SwinTransformerV2, Optional[LoadReport]]:
        return model_from_config(self.config, self.num_classes, training=True)

    def loss_network(self, model: SwinTransformerV2) -> nn.Cell:
        return NetWithLoss(model, SoftTargetCrossEntropy())

    def train_data(self, position: RunPosition) -> Tuple[ds.Dataset, DataInfo]:
        config, runtime = self.config, self.runtime
        return create_train_dataset(
            config.data_dir, batch_size=config.batch_size, num_shards=runtime.group_size, shard_id=runtime.rank,
            seed=config.seed, start_epoch=position.epoch, skip_batches=position.batch_in_epoch,
            auto_augment=config.auto_augment or None, re_prob=config.re_prob, color_jitter=config.color_jitter,
            hflip=config.hflip, scale=config.scale, ratio=config.ratio, mixup=config.mixup, cutmix=config.cutmix,
            mixup_prob=config.mixup_prob, mixup_switch_prob=config.mixup_switch_prob, mixup_mode=config.mixup_mode,
            label_smoothing=config.label_smoothing, index=self.index, split=config.train_split,
            num_workers=config.num_parallel_workers, **self.preprocessing.train_args())

    def evaluate(self, model: SwinTransformerV2) -> Dict[str, Any]:
        if self._evaluator is None:  # built at the first validation: the train graph compiles first
            config, runtime = self.config, self.runtime
            data, info = create_eval_dataset(
                config.data_dir, batch_size=config.val_batch_size or config.batch_size, split=config.val_split,
                class_names=self.index.class_names, num_shards=runtime.group_size, shard_id=runtime.rank,
                verify=config.verify_images, strict=config.strict_data, num_workers=config.num_parallel_workers,
                **self.preprocessing.eval_args())
            self._evaluator = EvalStep(model, distributed=runtime.distributed), data, info
        step, data, info = self._evaluator
        result = evaluate(step, data, info.batches_per_epoch, progress=self.runtime.is_main)
        return dict(val_top1=round(result.top1, 4), val_top5=round(result.top5, 4), val_loss=round(result.loss, 6),
                    val_samples=result.num_samples)

    def metadata(self, epoch: int, metrics: Dict[str, Any]) -> CheckpointMetadata:
        config, pre = self.config, self.preprocessing
        return CheckpointMetadata(model=resolve_model_name(config.model), task=self.name, num_classes=self.num_classes,
                                  class_names=list(self.index.class_names), image_resize=pre.image_size,
                                  window_size=config.window_size,
                                  pretrained_window_sizes=config.pretrained_window_sizes, crop_pct=pre.crop_pct,
                                  interpolation=pre.interpolation, epoch=epoch, metrics=dict(metrics))

    def describe(self) -> str:
        return f"classification on {self.num_samples} images ({self.num_classes} classes)"


TASKS = {task.name: task for task in (ClassificationTask,)}


def create_task(config: Config, runtime: Runtime) -> Task:
    """The task named by ``config.task``."""
    return TASKS[config.task](config, runtime)
