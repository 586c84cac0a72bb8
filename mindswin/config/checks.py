"""Checks across keys: values that are each valid but not together, and the model geometry.
"""
from __future__ import annotations

from typing import Any, Optional

from .keys import DEFAULTS, SIMMIM
from .rules import ConfigError, RegisteredModel
from .values import Config

__all__ = ["check_combinations", "check_geometry", "NO_WARMUP"]


def check_combinations(config: Config) -> None:
    """Keys that are each valid but not together."""
    if config.reuse_blocks and config.device_target != "Ascend":
        raise ConfigError("'reuse_blocks' is supported by MindSpore on Ascend only; device_target is "
                          f"{config.device_target}. Set reuse_blocks: False on this backend")
    if config.flash_attention and config.device_target != "Ascend":
        raise ConfigError("'flash_attention' (MindSpore's FlashAttentionScore) runs on Ascend Atlas A2 (910B) only; "
                          f"device_target is {config.device_target}. Set flash_attention: False on this backend")
    if config.flash_attention and config.amp_level == "O0":
        raise ConfigError("'flash_attention' takes float16 or bfloat16 only, and amp_level O0 trains in float32: "
                          "set amp_level O2 (the Ascend recipes' level) or flash_attention: False")
    if config.hccl_buffsize is not None and config.device_target != "Ascend":
        raise ConfigError("hccl_buffsize is an Ascend (HCCL) setting; remove it on "
                          f"device_target {config.device_target}")
    _check_learning_rates(config)
    if config.pretrained is not False:
        # the spec against the run's model: the tag exists for it, the named source publishes it
        from ..pretrained import resolve_pretrained  # data only, and the registry the model check loaded

        try:
            resolve_pretrained(config.model, config.pretrained)
        except ConfigError as exc:
            raise ConfigError(f"'pretrained' {config.pretrained!r} with model {config.model}: {exc}") from None
    if config.ckpt_save_policy == "top_k" and config.task == SIMMIM:
        raise ConfigError("ckpt_save_policy top_k keeps the checkpoints of the best val_top1, and SimMIM "
                          "pre-training has no such score: use latest_k")
    if config.val_amp_level is not None and config.val_amp_level != config.amp_level:
        raise ConfigError(f"val_amp_level {config.val_amp_level} differs from amp_level {config.amp_level}: "
                          "validation during training runs the training network; evaluate the saved weights at "
                          f"another level with validate.py --amp_level {config.val_amp_level}, or remove "
                          "val_amp_level")
    if config.mixup_mode == "pair" and config.batch_size % 2:
        raise ConfigError(f"mixup_mode 'pair' mixes samples two by two and needs an even batch_size, got "
                          f"{config.batch_size}; change --batch_size or --mixup_mode")


# Schedulers that are a whole cycle by themselves: mindcv refuses them with a warmup or an epoch stair.
NO_WARMUP = ("one_cycle", "cyclic")
_ABSOLUTE_RATES = ("lr", "min_lr", "warmup_lr")
_SCALED_RATES = ("base_lr", "base_min_lr", "base_warmup_lr")


def _check_learning_rates(config: Config) -> None:
    """The rates of a run are all absolute (lr, mindcv's) or all per lr_base_batch (base_lr, official)."""
    absolute = [key for key in _ABSOLUTE_RATES if config[key] is not None]
    scaled = [key for key in _SCALED_RATES if config[key] is not None]
    if absolute and scaled:
        raise ConfigError(f"{', '.join(absolute)} (absolute, mindcv's meaning) and {', '.join(scaled)} (per "
                          f"lr_base_batch {config.lr_base_batch} images, scaled by the global batch) are both set: "
                          f"write all rates one way, e.g. {', '.join('base_' + key for key in absolute)} instead")
    if absolute and "lr" not in absolute:
        raise ConfigError(f"{', '.join(absolute)} set without lr: give the peak lr too (absolute), or write "
                          f"{', '.join('base_' + key for key in absolute)} to scale them with the default base_lr")
    # (a resolved config.yaml states the default 512 and reloads: only another value says something)
    if absolute and config.lr_base_batch != DEFAULTS["lr_base_batch"].default:
        raise ConfigError(f"lr_base_batch scales the base_* rates, and this run gives absolute ones "
                          f"({', '.join(absolute)}): remove lr_base_batch, or write base_lr to scale")
    if config.scheduler in NO_WARMUP and (config.warmup_epochs or config.lr_epoch_stair):
        raise ConfigError(f"scheduler {config.scheduler} is a whole cycle from step 0 and takes no warmup or "
                          f"lr_epoch_stair (mindcv refuses them too): set warmup_epochs: 0 and lr_epoch_stair: "
                          "False, or choose another scheduler")
    starts = [key for key in ("warmup_lr", "base_warmup_lr") if config[key] is not None]
    if starts and config.warmup_factor is not None:
        raise ConfigError(f"warmup_factor and {starts[0]} both set the lr at step 0: keep one")


def check_geometry(config: Config) -> None:
    """Refuse an image size, window or pretrained windows the model cannot be built with.

    Raises:
        ConfigError: naming the key to change and values that fit.
    """
    from ..models.registry import model_spec  # imports MindSpore: only once a model is concerned
    from ..models.swin_v2 import geometry_problem, whole_maps_problem

    problem = RegisteredModel().problem(config.model)
    if problem:  # a model name read from a checkpoint's metadata is checked here first
        raise ConfigError(f"'model' {problem}")
    spec = model_spec(config.model)
    stages, patch = _check_architecture(config, spec), spec.patch_size
    image = config.image_resize or spec.img_size
    what = f"{spec.name} (patch {patch}, {stages} stages)"
    def rule(size: int) -> Optional[str]:  # SimMIM's decoder also needs maps halved exactly
        return geometry_problem(size, patch) or (whole_maps_problem(size, patch, stages)
                                                 if config.task == SIMMIM else None)

    problem = rule(image)
    if problem:
        fitting = [s for s in range(patch, 2 * image + patch, patch) if rule(s) is None]
        nearest = [s for s in fitting if s < image][-1:] + [s for s in fitting if s > image][:1]
        padded = ("any window fits: feature maps are padded to it" if config.task != SIMMIM else
                  "SimMIM reconstructs the image from the last map by a pixel shuffle")
        raise ConfigError(f"'image_resize' {image} does not fit {what}: {problem}; set --image_resize to e.g. "
                          f"{' or '.join(map(str, nearest))} ({padded})")
    if config.task == SIMMIM:
        _check_masks(config, image, patch, what)
    pretrained = config.pretrained_window_sizes
    if pretrained is not None and len(pretrained) != stages:
        example = list(spec.pretrained_window_sizes) if len(spec.pretrained_window_sizes) == stages else [0] * stages
        raise ConfigError(f"'pretrained_window_sizes' {pretrained} has {len(pretrained)} entries but {spec.name} "
                          f"has {stages} stages; give one per stage (0: trained at window_size), e.g. {example}")


def _check_architecture(config: Config, spec: Any) -> int:
    """Refuse ``embed_dim`` / ``depths`` / ``num_heads`` that give no model; returns the number of stages."""
    embed_dim = config.embed_dim or spec.embed_dim
    depths = config.depths or list(spec.depths)
    heads = config.num_heads or list(spec.num_heads)
    if len(depths) != len(heads):
        raise ConfigError(f"'depths' {list(depths)} and 'num_heads' {list(heads)} give {len(depths)} and {len(heads)} "
                          f"stages ({spec.name}'s where unset): give one entry per stage in both")
    for stage, count in enumerate(heads):
        channels = embed_dim * 2 ** stage
        if channels % count:
            fitting = [h for h in range(1, channels + 1) if channels % h == 0 and channels // h >= 16]
            raise ConfigError(f"'num_heads' {count} of stage {stage} does not divide its {channels} channels "
                              f"(embed_dim {embed_dim} x 2^{stage}); use one of {', '.join(map(str, fitting))}")
    return len(depths)


def _check_masks(config: Config, image: int, patch: int, what: str) -> None:
    """SimMIM's masked squares must tile the image and cover whole patches (official MaskGenerator asserts)."""
    size = config.mask_patch_size
    if image % size == 0 and size % patch == 0:
        return
    fitting = [s for s in range(patch, image + 1, patch) if image % s == 0]
    reason = (f"it does not divide the {image} px image" if image % size else
              f"it is not a multiple of the patch size {patch} of {what}")
    raise ConfigError(f"'mask_patch_size' {size} cannot tile the images with masked squares: {reason}; set "
                      f"--mask_patch_size to one of {', '.join(map(str, fitting))}")
