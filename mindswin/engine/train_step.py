"""One compiled training step that runs on CPU, GPU and Ascend.

forward (AMP per the model's compute dtype) -> soft-target cross-entropy -> backward of
the loss times the loss scale -> all-reduce (data parallel, mean; a reduce-scatter to this
rank's chunks under ZeRO-1) -> unscale -> finite check agreed by all ranks -> gradient
accumulation -> global-norm clipping -> the optimizer (-> all-gather of the updated chunks) -> EMA,
with the update masked off (not branched) on overflow or between accumulation boundaries.
Everything is one graph; the host only feeds batches and reads the returned scalars.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore._c_expression import MSContext
from mindspore.ops.operations.math_ops import NPUClearFloatStatusV2

from .optim import MaskedOptimizer
from .zero import ShardedGradientMean, clip_by_norm, global_norm

__all__ = ["SoftTargetCrossEntropy", "SoftTargetBinaryCrossEntropy", "classification_loss", "NetWithLoss", "EMA",
           "TrainStep", "overflow_status_register_in_use"]

# MindSpore's SoC features for the two overflow checks (mindspore/amp.py, _ascend_910a_target and
# _ascend_910b_target; nn/wrap/loss_scale.py asks the same): the 910A's classic loss-scale target, and the
# 910B and later
_STATUS_REGISTER_SOC = "amp_loss_scale_train_classic_target"
_INFNAN_CAPABLE_SOC = "train_hq_dtype_line"


def overflow_status_register_in_use() -> bool:
    """Whether ``ms.amp.all_finite`` answers from the Ascend overflow status register on this device.

    mindspore/amp.py ``_all_finite``: on a 910A, and on a 910B when
    ``MS_ASCEND_CHECK_OVERFLOW_MODE=SATURATION_MODE``, it reads ``NPUGetFloatStatusV2`` (every
    overflow since the register was last cleared) and clears it after; elsewhere (910B's
    default INFNAN mode, GPU, CPU) it checks the gradients themselves. Where the register
    answers, whatever overflowed after the last read (the optimizer and EMA tail of a step, a
    float16 validation pass) counts against the next step unless the step clears it first, as
    ``TrainOneStepWithLossScaleCell.start_overflow_check`` does (nn/wrap/loss_scale.py, same
    two conditions).
    """
    if ms.get_context("device_target") != "Ascend":
        return False
    soc = MSContext.get_instance()
    if soc.ascend_soc_supports_feature(_STATUS_REGISTER_SOC):
        return True
    return (soc.ascend_soc_supports_feature(_INFNAN_CAPABLE_SOC)
            and os.environ.get("MS_ASCEND_CHECK_OVERFLOW_MODE") == "SATURATION_MODE")


class SoftTargetCrossEntropy(nn.Cell):
    """``mean(-sum(target * log_softmax(logits)))`` for (mixed, smoothed) soft targets."""

    def construct(self, logits: Tensor, targets: Tensor) -> Tensor:
        log_probs = ops.log_softmax(logits.astype(ms.float32), axis=-1)
        return -(targets * log_probs).sum(axis=-1).mean()


class SoftTargetBinaryCrossEntropy(nn.Cell):
    """Mean over samples and classes of the sigmoid cross-entropy with (mixed, smoothed) soft targets.

    mindcv's ``loss: bce`` (``BinaryCrossEntropySmooth``), with the smoothing already in the targets.
    """

    def construct(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits = logits.astype(ms.float32)
        ones = ops.ones_like(logits)
        return ops.binary_cross_entropy_with_logits(logits, targets, ones, ones, "mean")


def classification_loss(name: str) -> nn.Cell:
    """The loss of config key ``loss``: ``ce`` or ``bce`` (either case, as mindcv)."""
    return SoftTargetBinaryCrossEntropy() if name.lower() == "bce" else SoftTargetCrossEntropy()


class NetWithLoss(nn.Cell):
    """Model + loss: ``loss_fn(model(images), targets)`` (the classification task's loss network)."""

    def __init__(self, model: nn.Cell, loss_fn: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss_fn = loss_fn

    def construct(self, images: Tensor, targets: Tensor) -> Tensor:
        return self.loss_fn(self.model(images), targets)


class _ScaledLoss(nn.Cell):
    """A loss network's loss times the loss scale, for any batch columns.

    With ``clear_overflow_status`` the Ascend overflow status register is cleared once the
    loss is computed and before the gradients are, where MindSpore's loss-scale cell clears
    it (``start_overflow_check(loss, scaling_sens)``, nn/wrap/loss_scale.py; mindcv's
    TrainStep calls it so): the status ``all_finite`` reads is the backward's alone.
    """

    def __init__(self, network: nn.Cell, clear_overflow_status: bool = False) -> None:
        super().__init__(auto_prefix=False)
        self.network = network
        # built only where the register answers: on CPU and GPU the graph is what it always was
        self.clear_status = NPUClearFloatStatusV2() if clear_overflow_status else None

    def construct(self, scale: Tensor, batch: tuple) -> Tensor:
        loss = self.network(*batch)
        if self.clear_status is not None:
            # start_overflow_check's order: after the loss (pre_cond), before every backward op, which all
            # consume the scale (the sensitivity of loss * scale); stop_gradient: the clear is no part of the
            # derivative and has no bprop to ask
            status = ops.depend(Tensor([0] * 8, ms.int32), loss)
            scale = ops.depend(scale, ops.stop_gradient(self.clear_status(status)))
        return loss * scale


_ema_update = ops.MultitypeFuncGraph("ema_update")


@_ema_update.register("Tensor", "Tensor", "Tensor", "Tensor")
def _ema_step(decay, apply, ema, param):
    return ops.assign(ema, ops.select(apply, ema * decay + param * (1.0 - decay), ema))


class EMA(nn.Cell):
    """Exponential moving average of the trainable parameters, held in a twin model.

    The twin (``ema_model``) is a model of the same architecture whose parameters *are*
    the averages, so it is evaluated and saved like any model. Derived tensors are
    constants of each model and never averaged.

    Args:
        model: The trained model.
        ema_model: Its twin, which becomes the average.
        decay: Decay per applied update.
        warmup: mindcv's warmup: update ``t`` (counted from 1) decays by
            ``decay * (1 - exp(-t / 2000))``, so early averages follow the weights; without
            it every update decays by ``decay`` (timm's ``ModelEmaV2``).
    """

    # mindcv's EMA warmup time constant, in updates (mindcv.utils.train_step)
    WARMUP_UPDATES = 2000.0

    def __init__(self, model: nn.Cell, ema_model: nn.Cell, decay: float, warmup: bool = True) -> None:
        super().__init__(auto_prefix=False)
        params = model.trainable_params()
        averages = ema_model.trainable_params()
        names = [p.name for p in averages]
        if names != [p.name for p in params]:
            raise ValueError("EMA model does not mirror the trained model's parameters")
        for avg, p in zip(averages, params):
            avg.set_data(Tensor(p.asnumpy()))
            avg.requires_grad = False
        for name, avg in ema_model.parameters_and_names():
            # unique names before any compile (MindSpore would rename the duplicates itself)
            avg.name = f"ema.{name}"
        self.ema_model = ema_model
        self.averages = ms.ParameterTuple(averages)
        self.decay = Tensor(decay, ms.float32)
        self.warmup = warmup
        self.hyper_map = ops.HyperMap()

    def decay_at(self, updates: Tensor) -> Tensor:
        """The decay of update number ``updates`` (float32, counted from 1)."""
        if self.warmup:
            # 1 - exp(-x) without the cancellation: x is 1/2000 at the first update
            return self.decay * -ops.expm1(-updates / self.WARMUP_UPDATES)
        return self.decay

    def construct(self, params, apply: Tensor, updates: Tensor):
        return self.hyper_map(ops.partial(_ema_update, self.decay_at(updates), apply), self.averages, params)


class TrainStep(nn.Cell):
    """The whole optimisation step as one cell.

    Args:
        model: The model (its compute dtype set by ``apply_amp``).
        optimizer: A :class:`MaskedOptimizer` over the model's trainable parameters; when it
            shards its state (ZeRO-1), gradients are reduce-scattered and accumulated as chunks too.
        lr_table: Per-step learning rates (indexed by the optimizer's applied-step count).
        loss_scaler: ``ms.amp.DynamicLossScaler`` or ``StaticLossScaler``.
        clip_value: Max global gradient norm, or None.
        accumulation: Micro-batches per optimizer step.
        ema: Optional :class:`EMA`.
        distributed: All-reduce (mean) gradients across the data-parallel group.
        loss_network: Cell mapping the batch columns to the loss, holding ``model``;
            default: soft-target cross-entropy of ``model(images)`` against ``targets``.

    A call takes one micro-batch's columns and returns ``(loss, finite, loss_scale, lr,
    grad_norm)``, device scalars: ``grad_norm`` is the global L2 norm of the unscaled (and,
    with accumulation, accumulated) gradients before clipping, over all ranks.
    """

    def __init__(self, model: nn.Cell, optimizer: MaskedOptimizer, lr_table: Tensor, loss_scaler, *,
                 clip_value: Optional[float] = 5.0, accumulation: int = 1, ema: Optional[EMA] = None,
                 distributed: bool = False, loss_network: Optional[nn.Cell] = None) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.scaled_loss = _ScaledLoss(loss_network or NetWithLoss(model, SoftTargetCrossEntropy()),
                                       clear_overflow_status=overflow_status_register_in_use())
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.lr_table = lr_table
        self.last_step = lr_table.shape[0] - 1
        self.loss_scaler = loss_scaler
        self.clip_value = clip_value
        self.accumulation = accumulation
        self.ema = ema
        self.distributed = distributed
        self.sharded = optimizer.sharding is not None
        if self.sharded and not distributed:
            raise ValueError("a sharded optimizer needs distributed=True")
        self.reducer = None
        if self.sharded:
            self.grad_mean = ShardedGradientMean(optimizer.layout)
        elif distributed:
            self.reducer = nn.DistributedGradReducer(self.weights, mean=True)
        if distributed:
            from mindspore.communication import get_group_size

            self.all_reduce_sum = ops.AllReduce()
            self.group_size = float(get_group_size())
        if accumulation > 1:
            self.accumulated = optimizer.zeros_like_state("accum")
            self.micro_step = Parameter(Tensor(0, ms.int32), name="accum_micro_step", requires_grad=False)
            self.overflow_seen = Parameter(Tensor(False, ms.bool_), name="accum_overflow", requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def current_lr(self) -> Tensor:
        return self.lr_table[ops.minimum(self.optimizer.step, self.last_step)]

    def construct(self, *batch):
        scale = self.loss_scaler.scale_value.astype(ms.float32)
        # Built here, not kept as an attribute: an attribute value_and_grad function made the
        # compile fail (parsing __init__) in a process that had compiled many graphs before.
        scaled_loss, grads = ops.value_and_grad(self.scaled_loss, None, self.weights)(scale, batch)
        grads = self._reduce_gradients(grads)
        grads = self.loss_scaler.unscale(grads)
        finite = self._finite_on_every_rank(grads)
        # Zero non-finite gradients so the masked update never multiplies inf by 0.
        grads = self.hyper_map(ops.partial(_zero_if, finite), grads)
        apply = finite
        if self.accumulation > 1:
            grads, apply = self._accumulate(grads, finite)
        # of the (accumulated) gradients the update uses, before clipping: the official grad_norm
        grad_norm = global_norm(grads, self.hyper_map, self.all_reduce_sum if self.sharded else None)
        if self.clip_value is not None:
            grads = clip_by_norm(grads, grad_norm, self.clip_value, self.hyper_map)
        lr = self.current_lr()
        if self.ema is not None:
            # the number of this update if it is applied (read before the optimizer counts it)
            updates = (self.optimizer.step + 1).astype(ms.float32)
        updated = self.optimizer(grads, lr, apply)
        if self.ema is not None:
            updated = ops.depend(updated, self.ema(self.weights, apply, updates))
        scale_before = scale
        self.loss_scaler.adjust(finite)
        loss = scaled_loss / scale_before
        if self.distributed:
            # the reported loss is the global batch's, as a single process would see it
            loss = self.all_reduce_sum(loss) / self.group_size
        return ops.depend(loss, updated), finite, scale_before, lr, grad_norm

    def _reduce_gradients(self, grads):
        if self.sharded:
            return self.grad_mean(grads)
        return self.reducer(grads) if self.reducer is not None else grads

    def _finite_on_every_rank(self, grads) -> Tensor:
        """One skip decision for the whole data-parallel group.

        On Ascend 910A (and 910B in saturation mode) ``all_finite`` reads the device's own
        overflow status (cleared before the backward by ``_ScaledLoss``, after the read by
        ``all_finite``), so ranks can disagree after identical all-reduced gradients; if one
        rank skipped while the others stepped, replicas and loss scales would drift apart.
        The ranks that saw an overflow are counted across the group, as MindSpore's own
        loss-scale cell does.
        """
        finite = ms.amp.all_finite(grads)
        if not self.distributed:
            return finite
        overflowed_ranks = self.all_reduce_sum(ops.logical_not(finite).astype(ms.float32))
        return overflowed_ranks == 0

    def named_state(self) -> List[Tuple[str, Parameter]]:
        """Every tensor a resumed run needs, under names derived from the model's structure.

        ``Parameter.name`` cannot serve: MindSpore renames duplicates (the EMA twin's,
        the moments') at the first compile, so it depends on whether and what compiled.
        """
        named = list(self.model.parameters_and_names())
        trainable = [name for name, param in named if param.requires_grad]
        state = [(f"model.{name}", param) for name, param in named]
        if self.ema is not None:
            state += [(f"ema.{name}", param) for name, param in self.ema.ema_model.parameters_and_names()]
        for slot, tensors in self.optimizer.named_slots():
            state += [(f"optimizer.{slot}.{name}", t) for name, t in zip(trainable, tensors)]
        state.append(("optimizer.step", self.optimizer.step))
        state.append(("loss_scale.value", self.loss_scaler.scale_value))
        if hasattr(self.loss_scaler, "counter"):
            state.append(("loss_scale.good_steps", self.loss_scaler.counter))
        if self.accumulation > 1:
            state += [(f"accumulation.grad.{name}", g) for name, g in zip(trainable, self.accumulated)]
            state += [("accumulation.micro_step", self.micro_step), ("accumulation.overflow", self.overflow_seen)]
        return state

    def sharded_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """Full shapes of the :meth:`named_state` entries this rank holds one chunk of (ZeRO-1)."""
        if not self.sharded:
            return {}
        shapes = {name: tuple(param.shape) for name, param in self.model.parameters_and_names()
                  if param.requires_grad}
        prefixes = [f"optimizer.{slot}." for slot, _ in self.optimizer.named_slots()] + (
            ["accumulation.grad."] if self.accumulation > 1 else [])
        return {prefix + name: shape for prefix in prefixes for name, shape in shapes.items()}

    def _accumulate(self, grads, finite: Tensor):
        micro = self.micro_step + 1
        boundary = micro >= self.accumulation
        overflow = ops.logical_or(self.overflow_seen, ops.logical_not(finite))
        total = self.hyper_map(ops.add, self.accumulated, grads)
        mean = self.hyper_map(ops.partial(_divide, float(self.accumulation)), total)
        keep = self.hyper_map(ops.partial(_store_or_reset, boundary), self.accumulated, total)
        total = ops.depend(mean, keep)
        ops.assign(self.micro_step, ops.select(boundary, ops.zeros_like(micro), micro))
        ops.assign(self.overflow_seen, ops.logical_and(overflow, ops.logical_not(boundary)))
        return total, ops.logical_and(boundary, ops.logical_not(overflow))


_zero_if = ops.MultitypeFuncGraph("zero_if")


@_zero_if.register("Tensor", "Tensor")
def _zero_grad(finite, grad):
    return ops.select(finite, grad, ops.zeros_like(grad))


_divide = ops.MultitypeFuncGraph("divide")


@_divide.register("Number", "Tensor")
def _divide_by(count, grad):
    return grad / count


_store_or_reset = ops.MultitypeFuncGraph("store_or_reset")


@_store_or_reset.register("Tensor", "Tensor", "Tensor")
def _store(boundary, buffer, total):
    return ops.assign(buffer, ops.select(boundary, ops.zeros_like(total), total))
