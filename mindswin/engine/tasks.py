"""Tasks: what a training run learns from and measures. The loop is the same for all of them.

A task owns its data (scanning, training and validation pipelines), the loss network that
maps a batch to a scalar loss, its validation metrics and the metadata saved with its
weights. :func:`mindswin.engine.trainer.train` only orders the events: build, restore,
train epochs, validate, save.

Tasks: ``classification`` (labelled class folders) and ``simmim`` (masked-image
pre-training of the encoder on any folder of images, see docs/simmim.md).
"""
from __future__ import annotations

import abc
import logging
import os
from typing import Any, Dict, Optional, Tuple

import mindspore.dataset as ds
import numpy as np
from mindspore import Tensor, nn

from ..checkpoint import CheckpointMetadata, LoadReport
from ..checkpoint.metadata import ARCHITECTURE_KEYS
from ..checkpoint.native import read_meta_json
from ..config import Config, ConfigError
from ..config.keys import CLASSIFICATION, SIMMIM, task_only_keys
from ..data import DataInfo, FolderIndex, create_eval_dataset, create_train_dataset, resolve_data_config, scan_split
from ..data.dataset import Shard, StartPoint
from ..data.device import DeviceAugment, DeviceNormalize
from ..data.folder import scan_images, scan_map_file
from ..data.masking import MaskGenerator
from ..data.mixup import Mixup
from ..data.pretrain import create_masked_eval_dataset, create_pretrain_dataset, pretrain_augment
from ..data.transforms import TrainAugment
from ..models import SwinTransformerV2, model_spec, resolve_model_name
from ..models.simmim import SimMIM
from .builder import model_from_config, simmim_from_config
from .checkpoints import find_resume_state
from .collective import share_from_rank0
from .evaluate import EvalStep, evaluate
from .reconstruction import ReconstructionStep, evaluate_reconstruction, save_reconstruction_grid
from .runtime import Runtime, apply_jit_config
from .state import RunPosition
from .train_step import classification_loss

__all__ = ["Task", "ClassificationTask", "SimMIMTask", "create_task"]

_logger = logging.getLogger("mindswin.train")

# A tensor only the resume state of a SimMIM run holds.
# Keys each task does not read: set explicitly, they are reported as ignored.
class Task(abc.ABC):
    """One kind of training run.

    Attributes:
        name: Stored in the weights' metadata.
        monitor: Validation metric (higher is better) that picks ``{model}-best.ckpt``; None
            keeps no best weights (only the periodic ones).
    """

    name: str
    monitor: Optional[str]

    def __init__(self, config: Config, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.preprocessing = resolve_data_config(config)
        ignored = [key for key in task_only_keys(self.name) if key in config.explicit]
        if ignored:
            _logger.warning("task %s does not use %s: ignored", self.name, ", ".join(ignored))
        self.check_resume_state()

    def scan_options(self) -> Dict[str, Any]:
        """Keyword arguments of every scan: verification, scan once per job, the kept index."""
        config = self.config
        cache_dir = (config.scan_index_dir or os.path.join(config.ckpt_save_dir, "scan_index")) if config.scan_index \
            else None
        return dict(verify=config.verify_images, strict=config.strict_data, num_workers=config.num_parallel_workers,
                    share=share_from_rank0(self.runtime), cache_dir=cache_dir)

    @property
    def shard(self) -> Shard:
        """This rank's part of the data."""
        return Shard(self.runtime.group_size, self.runtime.rank)

    @property
    def path_noise_blocks(self) -> int:
        """Blocks that draw stochastic depth from the samples' keys (exact resume); 0 without drop path.

        The blocks of the model the run builds: a recipe's declared ``depths`` over the variant's.
        """
        if self.config.drop_path_rate <= 0:
            return 0
        return sum(self.config.depths or model_spec(self.config.model).depths)

    def data_path(self, path: str) -> str:
        """``path`` relative to ``data_dir`` (an absolute one as it is)."""
        return os.path.join(self.config.data_dir, path)

    def val_dir(self) -> Optional[str]:
        """``data_dir/val_split`` if it is a folder; None if it is not and the split is the default one.

        Raises:
            ConfigError: ``val_split`` was named (recipe or command line) and is no folder: a typo, not a choice.
        """
        val_dir = self.data_path(self.config.val_split)
        if os.path.isdir(val_dir):
            return val_dir
        if "val_split" in self.config.explicit:
            folders = sorted(entry for entry in os.listdir(self.config.data_dir)
                             if os.path.isdir(self.data_path(entry))) if os.path.isdir(self.config.data_dir) else []
            raise ConfigError(f"val_split '{self.config.val_split}' names no folder: {val_dir} does not exist "
                              f"(folders in {self.config.data_dir}: {', '.join(folders) or 'none'}); fix --val_split, "
                              "or leave it out to train without validation where the data has no val split")
        return None

    def check_resume_state(self) -> None:
        """Refuse a ``resume`` file written by another task, or a weights file, before anything is built.

        Raises:
            ConfigError: naming the file, what wrote it and what to pass instead.
        """
        if not self.runtime.is_main:
            return  # only rank 0 reads the resume state (TrainState.broadcast gives it to the others)
        path = find_resume_state(self.config.resume, self.config.ckpt_save_dir)
        if not path:
            return
        meta = read_meta_json(path)
        if "model" in meta:  # weights files carry CheckpointMetadata, resume states a RunPosition
            raise ConfigError(f"--resume {path} is a weights file ({meta.get('task', 'classification')} weights), "
                              "not a resume state: --resume continues a run from the resume_state.ckpt in its "
                              f"ckpt_save_dir; to start from these weights pass --ckpt_path {path}")
        writer = meta.get("task")  # None: a state written before resume states recorded their task
        if writer and writer != self.name:
            raise ConfigError(f"{path} is the resume state of a {writer} run and this run's task is {self.name}: "
                              f"a run resumes only from its own task's state; to start {self.name} from that run's "
                              "weights pass one of its MODEL-eNNNN.ckpt files as --ckpt_path, with a new "
                              "--ckpt_save_dir")

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
    def evaluate(self, model: SwinTransformerV2, epoch: int) -> Dict[str, Any]:
        """Validation metrics of ``model`` after ``epoch`` epochs (1-based) over the whole split (``val_*`` keys)."""

    @abc.abstractmethod
    def metadata(self, epoch: int, metrics: Dict[str, Any]) -> CheckpointMetadata:
        """What the weights saved after ``epoch`` record about themselves."""

    def describe(self) -> str:
        """One phrase for the start-of-run log line."""
        return f"{self.name} on {self.num_samples} images"

    def images(self) -> Dict[str, np.ndarray]:
        """``(H, W, 3)`` uint8 pictures the last validation drew, by TensorBoard tag (each returned once)."""
        return {}


def model_fields(config: Config, preprocessing: Any, numerics: str) -> Dict[str, Any]:
    """The :class:`CheckpointMetadata` fields that rebuild a run's model and its preprocessing."""
    return dict(model=resolve_model_name(config.model), image_resize=preprocessing.image_size,
                window_size=config.window_size, pretrained_window_sizes=config.pretrained_window_sizes,
                crop_pct=preprocessing.crop_pct, interpolation=preprocessing.interpolation, numerics=numerics,
                **{key: getattr(config, key) for key in ARCHITECTURE_KEYS})


class AugmentedLoss(nn.Cell):
    """The classification loss network: device-side normalise/erase/mix, model, soft-target loss.

    Takes the training batch as the dataset delivers it with ``TrainAugment.device``: uint8 images,
    the erasing rectangles, the CutMix boxes, the blend weights, the soft targets and, with
    stochastic depth, the samples' drop-path uniforms.
    """

    def __init__(self, augment: nn.Cell, model: nn.Cell, loss_fn: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.augment = augment
        self.model = model
        self.loss_fn = loss_fn

    def construct(self, images: Tensor, erase: Tensor, cutbox: Tensor, blend: Tensor, targets: Tensor,
                  path_noise: Optional[Tensor] = None) -> Tensor:
        return self.loss_fn(self.model(self.augment(images, erase, cutbox, blend), path_noise), targets)


class MaskedImageLoss(nn.Cell):
    """The SimMIM loss network: device-side normalisation of the uint8 batch, then the masked L1 loss."""

    def __init__(self, normalize: nn.Cell, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.normalize = normalize
        self.model = model

    def construct(self, images: Tensor, mask: Tensor, path_noise: Optional[Tensor] = None) -> Tensor:
        return self.model(self.normalize(images), mask, path_noise)


class ClassificationTask(Task):
    """Supervised classification on an ImageFolder tree (``train/<class>/<image>``).

    The host sends uint8 images; normalising, random erasing and mixup/CutMix happen in the
    graph (:class:`AugmentedLoss`, and :class:`~mindswin.data.device.DeviceNormalize` in the
    evaluation step), with parameters drawn on the host next to the soft targets.
    """

    name = CLASSIFICATION
    monitor = "val_top1"

    def __init__(self, config: Config, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if not config.data_dir:
            raise ConfigError("--data_dir is required: a folder with train/<class>/<image> and val/<class>/<image>")
        # scanned once per job: rank 0 walks (and checks) the tree, the other ranks receive its index
        if config.train_map_file:
            self.index = scan_map_file(self.data_path(config.train_map_file), config.data_dir,
                                       num_classes=config.num_classes, **self.scan_options())
        else:
            self.index = scan_split(self.data_path(config.train_split), **self.scan_options())
        self.num_classes = config.num_classes or len(self.index.class_names)
        if self.num_classes != len(self.index.class_names):
            raise ConfigError(f"num_classes is {self.num_classes} but {self.index.root} has "
                              f"{len(self.index.class_names)} class folders")
        self.val_index = self._scan_val_split()
        self._evaluator: Optional[Tuple[EvalStep, ds.Dataset, DataInfo]] = None

    def _scan_val_split(self) -> Optional[FolderIndex]:
        """The val split's index, scanned with the train split so that a bad layout stops the run before compiling.

        None when the run does not validate, or when the data has no val split (an ImageNet-22k
        tree, for example): the run then trains without validating and says so once.
        """
        config = self.config
        if not config.val_while_train:
            return None
        if config.val_map_file:
            return scan_map_file(self.data_path(config.val_map_file), config.data_dir, num_classes=self.num_classes,
                                 **self.scan_options())
        if config.train_map_file:  # labels are the map's indices: class folders cannot be matched to them
            _logger.warning("train_map_file without val_map_file: training without validation (no val_* metrics, "
                            "no best checkpoint); set val_map_file to validate, or val_while_train: False to "
                            "silence this")
            return None
        val_dir = self.val_dir()
        if val_dir is None:
            _logger.warning("no %s: training without validation (no val_* metrics, no best checkpoint); "
                            "add DATA_DIR/%s/<class>/<image> to validate, or set val_while_train: False to "
                            "silence this", self.data_path(config.val_split), config.val_split)
            return None
        return scan_split(val_dir, class_names=self.index.class_names, **self.scan_options())

    @property
    def num_samples(self) -> int:
        return len(self.index)

    def build_model(self) -> Tuple[SwinTransformerV2, Optional[LoadReport]]:
        model, report = model_from_config(self.config, self.num_classes, training=True)
        self.numerics = model.numerics  # the weights' (mindcv weights keep mindcv's), recorded with every save
        return model, report

    def loss_network(self, model: SwinTransformerV2) -> nn.Cell:
        pre = self.preprocessing
        # one noise bank for all ranks: each sample's field and shift come from (seed, its key)
        fill = None if self.config.re_value == "random" else self.config.re_value
        augment = DeviceAugment(pre.mean, pre.std, erasing=self.config.re_prob > 0, seed=self.config.seed,
                                image_size=pre.image_size, fill=fill)
        return AugmentedLoss(augment, model, classification_loss(self.config.loss))

    def train_data(self, position: RunPosition) -> Tuple[ds.Dataset, DataInfo]:
        config, pre = self.config, self.preprocessing
        augment = TrainAugment(pre.image_size, scale=config.scale, ratio=config.ratio, hflip=config.hflip,
                               auto_augment=config.auto_augment or None, interpolation=pre.interpolation,
                               re_prob=config.re_prob, color_jitter=config.color_jitter, seed=config.seed,
                               mean=pre.mean, std=pre.std, device=True)
        mixer = Mixup(mixup_alpha=config.mixup, cutmix_alpha=config.cutmix, prob=config.cutmix_prob,
                      switch_prob=config.mixup_switch_prob, mode=config.mixup_mode,
                      label_smoothing=config.label_smoothing, num_classes=len(self.index.class_names))
        return create_train_dataset(self.index, augment, mixer, config.batch_size, seed=config.seed,
                                    shard=self.shard, start=StartPoint(position.epoch, position.batch_in_epoch),
                                    path_noise_blocks=self.path_noise_blocks, repeats=max(config.aug_repeats, 1),
                                    num_workers=config.num_parallel_workers)

    def evaluate(self, model: SwinTransformerV2, epoch: int) -> Dict[str, Any]:
        if self.val_index is None:
            return {}
        if self._evaluator is None:  # built at the first validation: the train graph compiles first
            config, runtime = self.config, self.runtime
            data, info = create_eval_dataset(self.val_index, self.preprocessing,
                                             config.val_batch_size or config.batch_size, shard=self.shard,
                                             num_workers=config.num_parallel_workers, normalize=False)
            pre = self.preprocessing
            step = apply_jit_config(EvalStep(model, distributed=runtime.distributed,
                                             preprocess=DeviceNormalize(pre.mean, pre.std)), config)
            self._evaluator = step, data, info
        step, data, info = self._evaluator
        result = evaluate(step, data, info.batches_per_epoch, progress=self.runtime.is_main)
        return dict(val_top1=round(result.top1, 4), val_top5=round(result.top5, 4), val_loss=round(result.loss, 6),
                    val_samples=result.num_samples)

    def metadata(self, epoch: int, metrics: Dict[str, Any]) -> CheckpointMetadata:
        config = self.config
        return CheckpointMetadata(task=self.name, num_classes=self.num_classes,
                                  class_names=list(self.index.class_names), epoch=epoch, metrics=dict(metrics),
                                  **model_fields(config, self.preprocessing, self.numerics))

    def describe(self) -> str:
        return f"classification on {self.num_samples} images ({self.num_classes} classes)"


class SimMIMTask(Task):
    """SimMIM masked-image pre-training of the Swin V2 encoder on any folder of images (no labels).

    Trains :class:`~mindswin.models.simmim.SimMIM` (encoder with mask token, pixel decoder,
    masked L1 loss) on ``data_dir/train_split`` (every image below it, class folders or
    not) with the official augmentation and random masks; validates the reconstruction
    loss on ``data_dir/val_split`` when it exists, with a fixed mask per image, and writes
    ``recon_e{epoch}.png``. Weights are saved with ``task: simmim`` and no classifier
    (``num_classes`` 0): ``validate.py`` refuses them, ``train.py --ckpt_path`` fine-tunes them.
    """

    name = SIMMIM
    monitor = None  # as the official pre-training: periodic weights, no "best" reconstruction

    def __init__(self, config: Config, runtime: Runtime) -> None:
        super().__init__(config, runtime)
        if not config.data_dir:
            raise ConfigError("--data_dir is required: SimMIM reads every image below DATA_DIR/TRAIN_SPLIT "
                              "(class folders optional) and validates on DATA_DIR/VAL_SPLIT if it exists")
        pre = self.preprocessing
        # the geometry was checked with the config; this raises only for direct API misuse
        self.mask_generator = MaskGenerator(pre.image_size, config.mask_patch_size, model_spec(config.model).patch_size,
                                            config.mask_ratio)
        options = self.scan_options()
        if config.train_map_file:
            self.index = scan_map_file(self.data_path(config.train_map_file), config.data_dir, **options)
        else:
            self.index = scan_images(self.data_path(config.train_split), **options)
        val_dir = self.val_dir()
        self.val_index: Optional[FolderIndex] = scan_images(val_dir, **options) if val_dir else None
        if self.val_index is None and config.val_while_train:
            _logger.info("no %s: the reconstruction grid shows training images and there is no val_loss",
                         self.data_path(config.val_split))
        self._evaluator: Optional[Tuple[ReconstructionStep, ds.Dataset]] = None
        self._grid_path: Optional[str] = None  # the last validation's reconstruction grid, not yet logged

    @property
    def num_samples(self) -> int:
        return len(self.index)

    def build_model(self) -> Tuple[SimMIM, Optional[LoadReport]]:
        model, report = simmim_from_config(self.config, training=True)
        self.numerics = model.encoder.numerics
        return model, report

    def loss_network(self, model: SimMIM) -> nn.Cell:
        pre = self.preprocessing
        return MaskedImageLoss(DeviceNormalize(pre.mean, pre.std), model)

    def train_data(self, position: RunPosition) -> Tuple[ds.Dataset, DataInfo]:
        config, pre = self.config, self.preprocessing
        augment = pretrain_augment(pre.image_size, seed=config.seed, hflip=config.hflip, scale=config.scale,
                                   ratio=config.ratio, interpolation=pre.interpolation)
        return create_pretrain_dataset(self.index, augment, self.mask_generator, config.batch_size, seed=config.seed,
                                       shard=self.shard, start=StartPoint(position.epoch, position.batch_in_epoch),
                                       path_noise_blocks=self.path_noise_blocks,
                                       num_workers=config.num_parallel_workers)

    def _grid_index(self) -> FolderIndex:
        """The split validated: val when there is one, else the first training images (grid only)."""
        if self.val_index is not None:
            # a fixed shuffle: the grid's first images come from all over the split, not from one class folder
            order = np.random.default_rng(0).permutation(len(self.val_index))
            return FolderIndex(root=self.val_index.root, class_names=[],
                               samples=[self.val_index.samples[i] for i in order])
        count = max(self.config.recon_grid_images, 1)
        return FolderIndex(root=self.index.root, class_names=[], samples=self.index.samples[:count])

    def evaluate(self, model: SimMIM, epoch: int) -> Dict[str, Any]:
        config, runtime, pre = self.config, self.runtime, self.preprocessing
        if self.val_index is None and not config.recon_grid_images:
            return {}
        if self._evaluator is None:  # built at the first validation: the train graph compiles first
            index = self._grid_index()
            batch = config.val_batch_size or config.batch_size
            if self.val_index is None:
                batch = len(index)
            data, _ = create_masked_eval_dataset(index, pre, self.mask_generator, batch, seed=config.seed,
                                                 shard=self.shard, num_workers=config.num_parallel_workers)
            step = apply_jit_config(ReconstructionStep(model, distributed=runtime.distributed,
                                                       preprocess=DeviceNormalize(pre.mean, pre.std)), config)
            self._evaluator = step, data
        step, data = self._evaluator
        result = evaluate_reconstruction(step, data, in_chans=model.in_chans, progress=runtime.is_main)
        if runtime.is_main and config.recon_grid_images and result.images is not None:
            shown = np.flatnonzero(result.weights > 0)[:config.recon_grid_images]  # no padding copies
            path = os.path.join(config.ckpt_save_dir, f"recon_e{epoch:04d}.png")
            split = "val" if self.val_index is not None else "train"
            save_reconstruction_grid(
                path, result.images[shown], result.masks[shown], result.reconstructions[shown], mean=pre.mean,
                std=pre.std, patch_size=model.patch_size, norm_target_patch_size=model.norm_target_patch_size,
                title=f"SimMIM {model.encoder.model_name}, epoch {epoch}, {split} images, mask ratio "
                      f"{config.mask_ratio}" + (f", val_loss {result.loss:.4f}" if self.val_index else ""))
            self._grid_path = path
        if self.val_index is None:
            return {}
        return dict(val_loss=round(result.loss, 6), val_samples=result.num_samples)

    def images(self) -> Dict[str, np.ndarray]:
        if self._grid_path is None:
            return {}
        from PIL import Image

        with Image.open(self._grid_path) as grid:
            picture = np.asarray(grid.convert("RGB"))
        self._grid_path = None
        return {"val/reconstruction": picture}

    def metadata(self, epoch: int, metrics: Dict[str, Any]) -> CheckpointMetadata:
        config = self.config
        return CheckpointMetadata(task=self.name, num_classes=0, epoch=epoch, metrics=dict(metrics),
                                  **model_fields(config, self.preprocessing, self.numerics))

    def describe(self) -> str:
        generator = self.mask_generator
        target = (f"targets normalised over {self.config.norm_target_patch_size}x"
                  f"{self.config.norm_target_patch_size} windows" if self.config.norm_target_patch_size
                  else "raw pixel targets")
        return (f"SimMIM pre-training on {self.num_samples} unlabelled images of {self.index.root} "
                f"({generator.mask_count} of {generator.token_count} {generator.mask_patch_size}-px squares masked, "
                f"{target})")


TASKS = {task.name: task for task in (ClassificationTask, SimMIMTask)}


def create_task(config: Config, runtime: Runtime) -> Task:
    """The task named by ``config.task``."""
    return TASKS[config.task](config, runtime)
