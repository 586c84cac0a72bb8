"""The training loop behind ``train.py``."""
from __future__ import annotations

import logging
import math
import os
import sys
import time
from typing import Any, Dict

import mindspore as ms
import numpy as np
from mindspore import Tensor

from ..amp import apply_amp
from ..checkpoint import load_checkpoint
from ..config import Config, ConfigError, save_config
from ..data import create_eval_dataset, create_train_dataset, scan_split
from ..models import create_model, model_spec
from .checkpoints import CheckpointManager, find_resume_state
from .evaluate import EvalStep, evaluate
from .optim import AdamW, cosine_schedule, scaled_learning_rates
from .runtime import Runtime, setup_logging, setup_runtime
from .state import START_POSITION, TrainState
from .train_step import EMA, TrainStep

__all__ = ["build_model", "train"]

_logger = logging.getLogger("mindswin.train")


def resolved_geometry(config: Config) -> Dict[str, Any]:
    """Image size and eval crop of the run (config values, else the model's defaults)."""
    spec = model_spec(config.model)
    return dict(image_size=config.image_resize or spec.img_size,
                crop_pct=config.crop_pct if config.crop_pct is not None else spec.crop_pct)


def _reuse_blocks(config: Config) -> bool:
    """lazy_inline block reuse: the config's choice, else on for Ascend only."""
    if config.reuse_blocks is None:
        return config.device_target == "Ascend"
    return config.reuse_blocks


def build_model(config: Config, num_classes: int, *, training: bool, strict_head: bool = False):
    """Create the model of ``config`` and load ``ckpt_path``/``pretrained`` weights if set.

    ``strict_head`` (evaluation) makes a head of another class count an error instead of a
    re-initialisation.
    """
    geometry = resolved_geometry(config)
    model = create_model(config.model, num_classes=num_classes, img_size=geometry["image_size"],
                         window_size=config.window_size, pretrained_window_sizes=config.pretrained_window_sizes,
                         drop_path_rate=config.drop_path_rate if training else 0.0, recompute=config.recompute,
                         reuse_blocks=_reuse_blocks(config))
    weights = config.ckpt_path or config.pretrained
    report = None
    if weights:
        report = load_checkpoint(model, weights, class_map=config.class_map or None, strict_head=strict_head)
    return model, report


def _log_step(epoch: int, epochs: int, step: int, steps: int, loss: float, lr: float, scale: float,
              images_per_second: float, eta: float) -> None:
    _logger.info("epoch %d/%d step %d/%d loss %.4f lr %.3e loss_scale %.0f %.1f img/s ETA %s", epoch, epochs, step,
                 steps, loss, lr, scale, images_per_second, time.strftime("%H:%M:%S", time.gmtime(max(eta, 0))))


def train(config: Config) -> Dict[str, Any]:
    """Run the training described by ``config``; returns the last epoch's metrics."""
    runtime = setup_runtime(config)
    setup_logging(runtime)
    if not config.data_dir:
        raise ConfigError("--data_dir is required: a folder with train/<class>/<image> and val/<class>/<image>")
    geometry = resolved_geometry(config)
    index = scan_split(os.path.join(config.data_dir, config.train_split), verify=config.verify_images,
                       strict=config.strict_data, num_workers=config.num_parallel_workers)
    num_classes = config.num_classes or len(index.class_names)
    if num_classes != len(index.class_names):
        raise ConfigError(f"num_classes is {num_classes} but {index.root} has {len(index.class_names)} class folders")

    model, _ = build_model(config, num_classes, training=True)
    apply_amp(model, config.amp_level, config.amp_dtype)
    model.set_train(True)

    accumulation = config.gradient_accumulation_steps
    global_batch = config.batch_size * runtime.group_size * accumulation
    batches_per_epoch = math.ceil(len(index) / runtime.group_size) // config.batch_size
    steps_per_epoch = batches_per_epoch // accumulation
    if steps_per_epoch < 1:
        raise ConfigError(f"{len(index)} training images give no full optimizer step at batch_size "
                          f"{config.batch_size} x {runtime.group_size} device(s) x {accumulation} accumulation")
    peak, floor, warm = scaled_learning_rates(config.lr, config.min_lr, config.warmup_lr, global_batch,
                                              config.lr_base_batch, config.scale_lr)
    total_steps = config.epoch_size * steps_per_epoch
    lr_table = cosine_schedule(peak, floor, warm, total_steps, int(round(config.warmup_epochs * steps_per_epoch)),
                               config.lr_scheduler)

    optimizer = AdamW(model.trainable_params(), config.weight_decay, model.no_weight_decay(), config.betas, config.eps)
    if config.amp_level == "O2" and config.loss_scale_type == "dynamic":
        scaler = ms.amp.DynamicLossScaler(config.loss_scale, int(config.loss_scale_factor), config.scale_window)
    else:
        scaler = ms.amp.StaticLossScaler(config.loss_scale if config.amp_level == "O2" else 1.0)
    ema_model = None
    ema = None
    if config.ema:
        ema_model = create_model(config.model, num_classes=num_classes, img_size=geometry["image_size"],
                                 window_size=config.window_size, pretrained_window_sizes=config.pretrained_window_sizes,
                                 reuse_blocks=_reuse_blocks(config))
        apply_amp(ema_model, config.amp_level, config.amp_dtype)
        ema = EMA(model, ema_model, config.ema_decay)
    step_cell = TrainStep(model, optimizer, Tensor(lr_table), scaler,
                          clip_value=config.clip_value if config.clip_grad else None, accumulation=accumulation,
                          ema=ema, distributed=runtime.distributed)
    step_cell.set_train(True)
    state = TrainState(step_cell.named_state())

    manager = CheckpointManager(config.ckpt_save_dir, model.model_name, config.keep_checkpoint_max, runtime.is_main)
    position = _restore(config, runtime, state, manager)
    start_epoch, skip_batches, best_top1 = position["epoch"], position["batch_in_epoch"], position["best_top1"]
    if runtime.is_main:
        save_config(config, os.path.join(config.ckpt_save_dir, "config.yaml"))

    data_args = dict(image_size=geometry["image_size"], num_workers=config.num_parallel_workers)
    train_data, train_info = create_train_dataset(
        config.data_dir, batch_size=config.batch_size, num_shards=runtime.group_size, shard_id=runtime.rank,
        seed=config.seed, start_epoch=start_epoch, skip_batches=skip_batches,
        auto_augment=config.auto_augment or None, re_prob=config.re_prob, color_jitter=config.color_jitter,
        hflip=config.hflip, scale=config.scale, ratio=config.ratio, interpolation=config.interpolation,
        mixup=config.mixup, cutmix=config.cutmix, mixup_prob=config.mixup_prob,
        mixup_switch_prob=config.mixup_switch_prob, mixup_mode=config.mixup_mode,
        label_smoothing=config.label_smoothing, index=index, split=config.train_split, **data_args)
    eval_step = eval_data = eval_info = None
    if config.val_while_train:
        eval_data, eval_info = create_eval_dataset(
            config.data_dir, batch_size=config.val_batch_size or config.batch_size, split=config.val_split,
            class_names=index.class_names, num_shards=runtime.group_size, shard_id=runtime.rank,
            crop_pct=geometry["crop_pct"], interpolation=config.interpolation, verify=config.verify_images,
            strict=config.strict_data, **data_args)
        eval_step = EvalStep(ema_model if ema_model is not None else model, distributed=runtime.distributed)

    metadata = dict(model=model.model_name, num_classes=num_classes, class_names=index.class_names,
                    image_size=geometry["image_size"], crop_pct=geometry["crop_pct"],
                    window_size=config.window_size, pretrained_window_sizes=config.pretrained_window_sizes,
                    interpolation=config.interpolation)
    _logger.info("training %s on %d images (%d classes), %d device(s), global batch %d, %d optimizer steps per "
                 "epoch, peak lr %.3e, amp %s", model.model_name, len(index), num_classes, runtime.group_size,
                 global_batch, steps_per_epoch, peak, config.amp_level)
    return _run_epochs(config, runtime, step_cell, optimizer, train_data, train_info, batches_per_epoch,
                       start_epoch, skip_batches, best_top1, manager, state, metadata,
                       eval_step, eval_data, eval_info, ema_model or model)


def _run_epochs(config, runtime: Runtime, step_cell, optimizer, train_data, train_info, batches_per_epoch: int,
                start_epoch: int, skip_batches: int, best_top1: float, manager: CheckpointManager, state: TrainState,
                metadata: Dict[str, Any], eval_step, eval_data, eval_info, eval_model) -> Dict[str, Any]:
    epochs = config.epoch_size
    images_per_step = config.batch_size * runtime.group_size
    record: Dict[str, Any] = {}
    bar = None
    show_bar = runtime.is_main and sys.stdout.isatty()
    first_step = True
    run_start = time.perf_counter()
    steps_done = 0
    total_batches = (epochs - start_epoch) * batches_per_epoch - skip_batches
    reported_bad = len(train_info.all_bad_files())
    for epoch in range(start_epoch, epochs):
        first_batch = skip_batches if epoch == start_epoch else 0
        losses, finite_flags = [], []
        epoch_start = time.perf_counter()
        if show_bar:
            from tqdm import tqdm

            bar = tqdm(total=batches_per_epoch, initial=first_batch, desc=f"epoch {epoch + 1}/{epochs}",
                       dynamic_ncols=True)
        window_start, window_images = time.perf_counter(), 0
        # One iterator per epoch: each asks the sampler for the next epoch's order.
        iterator = train_data.create_tuple_iterator(num_epochs=1)
        for batch in range(first_batch, batches_per_epoch):
            images, targets = next(iterator)
            t0 = time.perf_counter()
            loss, finite, scale, lr = step_cell(images, targets)
            if first_step:
                loss.asnumpy()
                _logger.info("train graph compiled and first step run in %.1f s", time.perf_counter() - t0)
                first_step = False
                window_start, window_images = time.perf_counter(), 0
            else:
                window_images += images_per_step
            # kept on device: reading them every step would add a host round-trip per step
            losses.append(loss)
            finite_flags.append(finite)
            steps_done += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.asnumpy()):.4f}", lr=f"{float(lr.asnumpy()):.2e}")
            if (batch + 1) % config.log_interval == 0 and runtime.is_main and bar is None:
                elapsed = time.perf_counter() - window_start
                speed = window_images / max(elapsed, 1e-9)
                remaining = total_batches - steps_done
                _log_step(epoch + 1, epochs, batch + 1, batches_per_epoch, float(loss.asnumpy()),
                          float(lr.asnumpy()), float(scale.asnumpy()), speed,
                          remaining * images_per_step / max(speed, 1e-9))
            if config.resume_save_steps and (batch + 1) % config.resume_save_steps == 0 \
                    and batch + 1 < batches_per_epoch:
                manager.save_resume(state, dict(epoch=epoch, batch_in_epoch=batch + 1, best_top1=best_top1))
        if bar is not None:
            bar.close()
        train_seconds = time.perf_counter() - epoch_start
        skipped = len(finite_flags) - int(sum(bool(f.asnumpy()) for f in finite_flags))
        if skipped:
            _logger.warning("epoch %d: %d update(s) skipped for non-finite gradients; loss scale now %.0f",
                            epoch + 1, skipped, float(scale.asnumpy()))
        record = dict(epoch=epoch + 1, train_loss=float(np.mean([x.asnumpy() for x in losses])) if losses else None,
                      lr=float(lr.asnumpy()), loss_scale=float(scale.asnumpy()), skipped_steps=skipped,
                      optimizer_step=int(optimizer.step.asnumpy()), train_seconds=round(train_seconds, 2),
                      train_images_per_second=round(len(losses) * images_per_step / max(train_seconds, 1e-9), 2))
        if eval_step is not None and ((epoch + 1) % config.val_interval == 0 or epoch + 1 == epochs):
            result = evaluate(eval_step, eval_data, eval_info.batches_per_epoch, progress=show_bar)
            record.update(val_top1=round(result.top1, 4), val_top5=round(result.top5, 4),
                          val_loss=round(result.loss, 6), val_samples=result.num_samples)
            step_cell.set_train(True)
            if result.top1 > best_top1:
                best_top1 = result.top1
                manager.save_best(eval_model, dict(metadata, epoch=epoch + 1, val_top1=result.top1))
        if (epoch + 1) % config.ckpt_save_interval == 0 or epoch + 1 == epochs:
            manager.save_weights(eval_model, epoch + 1, dict(metadata, epoch=epoch + 1, **_val_fields(record)))
        manager.save_resume(state, dict(epoch=epoch + 1, batch_in_epoch=0, best_top1=best_top1))
        manager.append_metrics(record)
        manager.plot_curves()
        bad = train_info.all_bad_files()
        if len(bad) > reported_bad:
            _logger.warning("%d more unreadable training image(s): %s", len(bad) - reported_bad,
                            ", ".join(p for p, _ in bad[reported_bad:][:10]))
            reported_bad = len(bad)
        if runtime.is_main:
            _logger.info("epoch %d/%d: %s", epoch + 1, epochs,
                         ", ".join(f"{k} {v}" for k, v in record.items() if k != "epoch"))
    _logger.info("done in %.1f s; checkpoints in %s", time.perf_counter() - run_start, config.ckpt_save_dir)
    if runtime.distributed:
        # every rank prints it: equal digests show the data-parallel replicas stayed in sync
        print(f"rank {runtime.rank} weights sha1 {state.digest('model.')} state sha1 {state.digest()}", flush=True)
    return record


def _restore(config: Config, runtime: Runtime, state: TrainState, manager: CheckpointManager) -> Dict[str, Any]:
    """Load the resume state on rank 0 and give every rank rank 0's tensors and position.

    Only rank 0 writes checkpoints, so only its disk is asked: nodes need no shared storage.
    """
    position = dict(START_POSITION)
    if runtime.is_main:
        path = find_resume_state(config.resume, config.ckpt_save_dir)
        if path:
            position = state.load(path)
            _logger.info("resumed from %s: epoch %d, batch %d, optimizer step %d", path, position["epoch"],
                         position["batch_in_epoch"], state.optimizer_step())
            manager.truncate_metrics(position["epoch"])
    if runtime.distributed:
        position = state.broadcast(position, runtime.rank)
        # every rank prints it: a rank that started from anything else would show at once
        print(f"rank {runtime.rank} starts at epoch {position['epoch']} batch {position['batch_in_epoch']} "
              f"optimizer step {state.optimizer_step()}", flush=True)
    return position


def _val_fields(record: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in record.items() if k.startswith("val_")}
