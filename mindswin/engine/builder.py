"""Build what a run is made of: the model (with its weights and precision), and for training
the EMA twin, optimizer, loss scaler, learning-rate schedule and compiled train step.

``train.py``, ``validate.py``, ``infer.py`` and ``export.py`` all get their model from
:func:`model_from_config`, so geometry, weights and precision are resolved one way; SimMIM
pre-training gets its encoder + decoder from :func:`simmim_from_config`, resolved the same way.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import mindspore as ms
from mindspore import Tensor, nn

from ..amp import apply_amp
from ..checkpoint import LoadReport, load_checkpoint
from ..checkpoint.loader import load_simmim_checkpoint
from ..checkpoint.metadata import ARCHITECTURE_KEYS
from ..config import Config, ConfigError
from ..data import resolve_data_config
from ..models import SwinTransformerV2, build_model
from ..models.simmim import SimMIM, build_simmim
from ..models.swin_v2 import use_flash_attention
from ..pretrained import config_weights
from .optim import create_optimizer, layer_decay_scales
from .runtime import Runtime, apply_jit_config
from .schedule import learning_rates, schedule_from_config
from .state import TrainState
from .train_step import EMA, TrainStep
from .zero import Sharding

__all__ = ["model_from_config", "simmim_from_config", "Training", "build_training"]

_logger = logging.getLogger("mindswin.train")


def _reuse_blocks(config: Config) -> bool:
    """lazy_inline block reuse: the config's choice, else on for Ascend only."""
    if config.reuse_blocks is None:
        return config.device_target == "Ascend"
    return config.reuse_blocks


def _model_options(config: Config) -> dict:
    """Model arguments beyond the geometry: the architecture a recipe declares (else the registered
    variant's), activation checkpointing and sequential attention."""
    declared = {key: getattr(config, key) for key in ARCHITECTURE_KEYS if getattr(config, key) is not None}
    return dict(declared, recompute=config.recompute, sequential_attention=config.sequential_attention,
                sequential_attention_heads=config.sequential_attention_heads)


def _model_arguments(config: Config, training: bool) -> dict:
    """What every model of ``config`` is built with: geometry, architecture and options; evaluation
    builds without stochastic depth."""
    return dict(img_size=resolve_data_config(config).image_size, window_size=config.window_size,
                pretrained_window_sizes=config.pretrained_window_sizes,
                drop_path_rate=config.drop_path_rate if training else 0.0, reuse_blocks=_reuse_blocks(config),
                **_model_options(config))


def _classifier(config: Config, num_classes: int, training: bool, **build: Any) -> SwinTransformerV2:
    return build_model(config.model, num_classes=num_classes, **_model_arguments(config, training), **build)


def _simmim(config: Config, training: bool) -> SimMIM:
    return build_simmim(config.model, norm_target_patch_size=config.norm_target_patch_size,
                        **_model_arguments(config, training))


def _compute_settings(config: Config, model: nn.Cell) -> nn.Cell:
    """``amp_level`` and the jit level on ``model`` (before it first runs)."""
    apply_amp(model, config.amp_level, config.amp_dtype)
    if config.flash_attention:
        count = use_flash_attention(model)
        _logger.info("flash_attention: FlashAttentionScore in the unshifted blocks of %d window attentions", count)
    return apply_jit_config(model, config)


def _from_config(config: Config, model: nn.Cell,
                 load: Callable[[nn.Cell, str], LoadReport]) -> Tuple[nn.Cell, Optional[LoadReport]]:
    """The one path both tasks' models take: ``load`` the ``ckpt_path`` weights, else the ``pretrained``
    ones (fetched into the cache first, see :mod:`mindswin.pretrained`), if any; then the compute settings."""
    weights = config_weights(config)
    report = load(model, weights) if weights else None
    return _compute_settings(config, model), report


def _swin(model: nn.Cell) -> SwinTransformerV2:
    """The Swin V2 of a classifier (itself) or of a SimMIM model (its encoder)."""
    return model.encoder if isinstance(model, SimMIM) else model


def simmim_from_config(config: Config, *, training: bool) -> Tuple[SimMIM, Optional[LoadReport]]:
    """The SimMIM model (encoder, mask token, decoder) of ``config``, weights loaded and ``amp_level`` applied.

    ``ckpt_path``/``pretrained`` may be a SimMIM checkpoint (everything loads) or a
    classification one (the encoder loads; mask token and decoder keep their init).
    """
    return _from_config(config, _simmim(config, training), load_simmim_checkpoint)


def model_from_config(config: Config, num_classes: int, *, training: bool, strict_head: bool = False,
                      kernels: str = "auto", portable: bool = False) -> Tuple[SwinTransformerV2, Optional[LoadReport]]:
    """The model of ``config`` with ``ckpt_path``/``pretrained`` loaded and ``amp_level`` applied.

    Args:
        config: Resolved configuration.
        num_classes: Classifier width.
        training: Use ``drop_path_rate`` (evaluation builds without stochastic depth).
        strict_head: Make a head of another class count an error instead of a
            re-initialisation (evaluation must never score a random head).
        kernels: ``"auto"``, ``"cpu"`` or ``"native"``: what the model computes with
            (:func:`~mindswin.models.registry.build_model_with_cfg`).
        portable: Only ops every exporter converts (needs ``kernels="native"``).

    Returns:
        The model and the load report (None when no weights were given).
    """
    def load(model: SwinTransformerV2, weights: str) -> LoadReport:
        # training fine-tunes headless (SimMIM, backbone) weights with a fresh head; evaluation never does
        return load_checkpoint(model, weights, class_map=config.class_map or None, strict_head=strict_head,
                               init_missing_head=training and not strict_head)

    return _from_config(config, _classifier(config, num_classes, training, kernels=kernels, portable=portable), load)


@dataclass
class Training:
    """The compiled pieces of a training run.

    Attributes:
        model: The trained model (training mode).
        ema_model: Its EMA twin, or None without ``ema``.
        step: The compiled train step (forward, backward, all-reduce, update, EMA).
        state: Every tensor a resume needs, under stable names.
        batches_per_epoch: Micro-batches per rank and epoch.
        steps_per_epoch: Optimizer steps per epoch.
        peak_lr: Learning rate after warmup (base_lr scaled to the global batch, or lr).
        global_batch: Images per optimizer step over all ranks.
    """

    model: SwinTransformerV2
    ema_model: Optional[SwinTransformerV2]
    step: TrainStep
    state: TrainState
    batches_per_epoch: int
    steps_per_epoch: int
    peak_lr: float
    global_batch: int

    @property
    def eval_model(self) -> SwinTransformerV2:
        """What is validated and saved as weights: the EMA twin when there is one."""
        return self.ema_model if self.ema_model is not None else self.model


def _optimizer_sharding(config: Config, runtime: Runtime) -> Optional[Sharding]:
    """ZeRO-1 sharding of the optimizer state, when asked for and there is a group to share it."""
    if not config.enable_parallel_optimizer:
        return None
    if runtime.group_size < 2:
        _logger.warning("enable_parallel_optimizer shards the optimizer state over data-parallel ranks; with %d "
                        "device(s) there is nothing to shard, so it has no effect", runtime.group_size)
        return None
    return Sharding(runtime.rank, runtime.group_size)


def build_training(config: Config, runtime: Runtime, model: SwinTransformerV2, loss_network: nn.Cell,
                   num_samples: int) -> Training:
    """Optimizer, loss scaler, schedule, EMA twin and train step around ``model``.

    Args:
        config: Resolved configuration.
        runtime: Rank and group size.
        model: From :func:`model_from_config` (``training=True``).
        loss_network: The task's cell mapping a batch to its loss (holds ``model``).
        num_samples: Training samples in the whole split (sharded over the ranks).
    """
    accumulation = config.gradient_accumulation_steps
    batches_per_epoch = math.ceil(num_samples / runtime.group_size) // config.batch_size
    steps_per_epoch = batches_per_epoch // accumulation
    if steps_per_epoch < 1:
        raise ConfigError(f"{num_samples} training images give no full optimizer step at batch_size "
                          f"{config.batch_size} x {runtime.group_size} device(s) x {accumulation} accumulation")
    global_batch = config.batch_size * runtime.group_size * accumulation
    lr_table = schedule_from_config(config, steps_per_epoch, global_batch)

    lr_scales = None
    if config.layer_decay < 1.0:
        lr_scales = layer_decay_scales(model, config.layer_decay)
        _logger.info("layer-wise lr decay %g: lr x %.3g (patch embedding) ... x %.3g (final norm, head)",
                     config.layer_decay, min(lr_scales), max(lr_scales))
    optimizer = create_optimizer(config.opt, model.trainable_params(), weight_decay=config.weight_decay,
                                 no_decay=model.no_weight_decay(), betas=config.betas, eps=config.eps,
                                 momentum=config.momentum, nesterov=config.use_nesterov, lr_scales=lr_scales,
                                 sharding=_optimizer_sharding(config, runtime))
    if optimizer.sharding is not None:
        full = optimizer.full_state_bytes()
        _logger.info("ZeRO-1: %s state sharded over %d ranks: %d bytes on this rank (unsharded: %d, %.3fx)",
                     config.opt, runtime.group_size, optimizer.state_bytes(), full, optimizer.state_bytes() / full)
    if config.amp_level == "O2" and config.loss_scale_type == "dynamic":
        scaler = ms.amp.DynamicLossScaler(config.loss_scale, int(config.loss_scale_factor), config.scale_window)
    else:
        scaler = ms.amp.StaticLossScaler(config.loss_scale if config.amp_level == "O2" else 1.0)
    ema_model = ema = None
    if config.ema:
        ema_model = (_simmim(config, training=False) if isinstance(model, SimMIM)
                     else _classifier(config, model.num_classes, training=False))
        _swin(ema_model).set_numerics(_swin(model).numerics)  # as the loaded weights asked
        _compute_settings(config, ema_model)
        ema = EMA(model, ema_model, config.ema_decay, warmup=config.ema_warmup)
    model.set_train(True)
    step = TrainStep(model, optimizer, Tensor(lr_table), scaler, loss_network=loss_network,
                     clip_value=config.clip_value if config.clip_grad else None, accumulation=accumulation,
                     ema=ema, distributed=runtime.distributed)
    step.set_train(True)
    apply_jit_config(step, config)
    state = TrainState(step.named_state(), step.sharded_shapes(), optimizer.sharding)
    return Training(model=model, ema_model=ema_model, step=step, state=state,
                    batches_per_epoch=batches_per_epoch, steps_per_epoch=steps_per_epoch,
                    peak_lr=learning_rates(config, global_batch).peak,
                    global_batch=global_batch)
