"""The optimizers of mindcv's ``create_optimizer`` with the official weight-decay groups and layer-wise lr decay.

Every optimizer here is a :class:`MaskedOptimizer`: its update is masked by an ``apply``
flag instead of branching, so a skipped step (overflow, or a gradient-accumulation
micro-step) is one static graph, and each can shard its state across the data-parallel
ranks (ZeRO-1, :mod:`mindswin.engine.zero`). The update rules are those of the optimizers
mindcv builds for each ``opt`` name:

* ``adamw``: PyTorch's AdamW (decoupled decay, bias-corrected moments; MindSpore's
  ``nn.AdamWeightDecay`` has no bias correction);
* ``adam``: MindSpore's ``nn.Adam`` (L2 decay added to the gradient, optional Nesterov);
* ``sgd``, ``momentum``, ``nesterov``: ``nn.SGD``/``nn.Momentum`` (heavy-ball momentum
  without dampening, L2 decay, Nesterov with ``use_nesterov``, as mindcv passes it);
* ``lamb``: ``nn.Lamb`` (Adam's ratio plus decoupled decay, scaled per tensor by the
  trust ratio ``||w|| / ||r + wd w||``; under ZeRO-1 both norms are all-reduced);
* ``lion``: mindcv's ``Lion`` (the sign of an interpolated momentum, decoupled decay).

Layer-wise lr decay (SimMIM/BEiT fine-tuning) is a per-parameter lr multiplier, as the
official optimizer's per-group ``lr_scale``: :func:`swin_layer_id` numbers the parameters
as microsoft/Swin-Transformer's ``get_swin_layer`` does and :func:`layer_decay_scales`
turns the numbers into ``decay ** (num_layers + 1 - layer_id)``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from .zero import ShardedLayout, ShardedParameterGather, Sharding

__all__ = ["MaskedOptimizer", "AdamW", "Adam", "Momentum", "Lamb", "Lion", "OPTIMIZERS", "create_optimizer",
           "swin_layer_id", "layer_ids", "layer_decay_scales"]


def _masked(apply: Tensor, state: Parameter, value: Tensor):
    return ops.assign(state, ops.select(apply, value, state))


_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor", "Tensor")
def _adamw(lr, beta1, beta2, eps, bias1, bias2, apply, decay, lr_scale, param, m, v, grad):
    grad = grad.astype(ms.float32)
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    step = (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps)
    lr = lr * lr_scale  # the parameter group's lr, as PyTorch's AdamW uses it for the step and the decay
    param_new = param - lr * decay * param - lr * step
    _masked(apply, m, m_new)
    _masked(apply, v, v_new)
    return param_new


_adam_update = ops.MultitypeFuncGraph("adam_update")


@_adam_update.register("Bool", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                       "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _adam(nesterov, lr, beta1, beta2, eps, bias1, bias2, apply, decay, lr_scale, param, m, v, grad):
    grad = grad.astype(ms.float32) + decay * param
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    # nn.Adam's step size lr * sqrt(1 - beta2^t) / (1 - beta1^t), its eps outside the correction
    step_size = lr * lr_scale * ops.sqrt(bias2) / bias1
    numerator = beta1 * m_new + (1.0 - beta1) * grad if nesterov else m_new
    _masked(apply, m, m_new)
    _masked(apply, v, v_new)
    return param - step_size * numerator / (ops.sqrt(v_new) + eps)


_momentum_update = ops.MultitypeFuncGraph("momentum_update")


@_momentum_update.register("Bool", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _momentum(nesterov, lr, momentum, apply, decay, lr_scale, param, buffer, grad):
    grad = grad.astype(ms.float32) + decay * param
    buffer_new = momentum * buffer + grad
    step = grad + momentum * buffer_new if nesterov else buffer_new
    _masked(apply, buffer, buffer_new)
    return param - lr * lr_scale * step


_lamb_ratio = ops.MultitypeFuncGraph("lamb_ratio")


@_lamb_ratio.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                      "Tensor", "Tensor")
def _lamb_direction(beta1, beta2, eps, bias1, bias2, apply, decay, param, m, v, grad):
    """Lamb's ``r + wd w`` (moments updated in place when ``apply``)."""
    grad = grad.astype(ms.float32)
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    _masked(apply, m, m_new)
    _masked(apply, v, v_new)
    return (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps) + decay * param


_squares = ops.MultitypeFuncGraph("squares")


@_squares.register("Tensor", "Tensor")
def _squares_of(param, direction):
    return ops.stack(((param * param).sum(), (direction * direction).sum()))


_lamb_step = ops.MultitypeFuncGraph("lamb_step")


@_lamb_step.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _lamb_apply(lr, lr_scale, norms, param, direction):
    # the trust ratio ||w|| / ||r + wd w||, 1 where either norm is 0 (nn.Lamb's rule)
    w_norm, r_norm = ops.sqrt(norms[0]), ops.sqrt(norms[1])
    usable = ops.logical_and(w_norm > 0.0, r_norm > 0.0)
    trust = ops.select(usable, w_norm / ops.select(usable, r_norm, ops.ones_like(r_norm)), ops.ones_like(w_norm))
    return param - lr * lr_scale * trust * direction


_lion_update = ops.MultitypeFuncGraph("lion_update")


@_lion_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor")
def _lion(lr, beta1, beta2, apply, decay, lr_scale, param, m, grad):
    grad = grad.astype(ms.float32)
    update = ops.sign(beta1 * m + (1.0 - beta1) * grad) + decay * param
    _masked(apply, m, beta2 * m + (1.0 - beta2) * grad)
    return param - lr * lr_scale * update


_assign_if = ops.MultitypeFuncGraph("assign_if")


@_assign_if.register("Tensor", "Tensor", "Tensor")
def _assign_when(apply, param, value):
    return ops.assign(param, ops.select(apply, value, param))


class MaskedOptimizer(nn.Cell):
    """An optimizer over ``params`` whose step is applied only where ``apply`` is True.

    Subclasses name their per-parameter state in ``SLOTS`` (each a float32 tensor shaped like
    its parameter, or like this rank's chunk of it under ZeRO-1) and compute the new values
    in :meth:`updated`.

    Args:
        params: Trainable parameters.
        weight_decay: Weight decay of the decayed parameters.
        no_decay: Names exempt from weight decay (``model.no_weight_decay()``).
        lr_scales: Per-parameter lr multiplier, in the order of ``params`` (layer-wise decay,
            see :func:`layer_decay_scales`); all 1.0 when None.
        sharding: Shard the state across the data-parallel ranks (ZeRO-1, see
            :mod:`mindswin.engine.zero`); ``construct`` then takes this rank's gradient chunks.
    """

    SLOTS: Tuple[str, ...] = ()

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str],
                 lr_scales: Optional[Sequence[float]] = None, sharding: Optional[Sharding] = None) -> None:
        super().__init__()
        self.parameters = ParameterTuple(list(params))
        self.sharding = sharding
        if sharding is not None:
            self.layout = ShardedLayout([p.shape for p in self.parameters], sharding)
            self.gather = ShardedParameterGather(self.layout)
        for slot in self.SLOTS:
            setattr(self, slot, self.zeros_like_state(slot))
        self.decays = tuple(Tensor(0.0 if p.name in no_decay else weight_decay, ms.float32) for p in self.parameters)
        lr_scales = [1.0] * len(self.parameters) if lr_scales is None else list(lr_scales)
        if len(lr_scales) != len(self.parameters):
            raise ValueError(f"{len(lr_scales)} lr scales for {len(self.parameters)} parameters")
        self.lr_scales = tuple(Tensor(scale, ms.float32) for scale in lr_scales)
        # number of applied updates: drives bias correction (and the lr schedule)
        self.step = Parameter(Tensor(0, ms.int32), name="optimizer_step", requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def zeros_like_state(self, prefix: str) -> ParameterTuple:
        """Zero float32 tensors, one per parameter, shaped as this rank keeps its state (full or its chunk)."""
        shapes = ([p.shape for p in self.parameters] if self.sharding is None
                  else [(chunk,) for chunk in self.layout.chunks])
        return ParameterTuple([Parameter(Tensor(np.zeros(shape, np.float32)), name=f"{prefix}.{p.name}",
                                         requires_grad=False) for p, shape in zip(self.parameters, shapes)])

    def named_slots(self) -> List[Tuple[str, ParameterTuple]]:
        """``(slot name, one tensor per parameter)`` for every kind of state the optimizer keeps."""
        return [(slot, getattr(self, slot)) for slot in self.SLOTS]

    def decayed_names(self) -> List[str]:
        return [p.name for p, d in zip(self.parameters, self.decays) if float(d.asnumpy()) > 0]

    def state_bytes(self) -> int:
        """Bytes of optimizer state this rank holds."""
        return int(sum(t.data.nbytes for _, tensors in self.named_slots() for t in tensors))

    def full_state_bytes(self) -> int:
        """Bytes of optimizer state one unsharded replica holds."""
        return 4 * len(self.SLOTS) * sum(int(p.size) for p in self.parameters)

    def construct(self, grads, lr: Tensor, apply: Tensor):
        step = self.step + apply.astype(ms.int32)
        ops.assign(self.step, step)
        if self.sharding is None:
            updated = self.updated(self.parameters, grads, lr, apply, step)
        else:
            # each rank steps its own chunk of every parameter; the chunks are then gathered everywhere
            updated = self.gather(self.updated(self.layout.own_chunks(self.parameters), grads, lr, apply, step),
                                  self.parameters)
        return self.hyper_map(ops.partial(_assign_if, apply), self.parameters, updated)

    def updated(self, params, grads, lr: Tensor, apply: Tensor, step: Tensor):
        """New values of ``params`` (full tensors, or this rank's chunks); the state is updated where ``apply``."""
        raise NotImplementedError


class _AdaptiveMoments(MaskedOptimizer):
    """Shared by the Adam family: betas, eps and the bias corrections of step ``t``."""

    SLOTS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str],
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8, **kwargs) -> None:
        super().__init__(params, weight_decay, no_decay, **kwargs)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.eps = Tensor(eps, ms.float32)

    def bias_corrections(self, step: Tensor):
        t = step.astype(ms.float32)
        # before the first applied step t == 0: keep the divisors away from 0 (result unused)
        return (ops.maximum(1.0 - ops.pow(self.beta1, t), 1e-12),
                ops.maximum(1.0 - ops.pow(self.beta2, t), 1e-12))


class AdamW(_AdaptiveMoments):
    """PyTorch's AdamW (the official Swin V2 optimizer); see :class:`MaskedOptimizer` for the arguments."""

    def updated(self, params, grads, lr, apply, step):
        bias1, bias2 = self.bias_corrections(step)
        update = ops.partial(_adamw_update, lr, self.beta1, self.beta2, self.eps, bias1, bias2, apply)
        return self.hyper_map(update, self.decays, self.lr_scales, params, self.exp_avg, self.exp_avg_sq, grads)


class Adam(_AdaptiveMoments):
    """MindSpore's ``nn.Adam`` (mindcv ``opt: adam``): L2 weight decay, Nesterov with ``nesterov``."""

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str],
                 nesterov: bool = False, **kwargs) -> None:
        super().__init__(params, weight_decay, no_decay, **kwargs)
        self.nesterov = nesterov

    def updated(self, params, grads, lr, apply, step):
        bias1, bias2 = self.bias_corrections(step)
        update = ops.partial(_adam_update, self.nesterov, lr, self.beta1, self.beta2, self.eps, bias1, bias2, apply)
        return self.hyper_map(update, self.decays, self.lr_scales, params, self.exp_avg, self.exp_avg_sq, grads)


class Lamb(_AdaptiveMoments):
    """MindSpore's ``nn.Lamb`` (mindcv ``opt: lamb``), its trust ratio over whole tensors also under ZeRO-1."""

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str], **kwargs) -> None:
        super().__init__(params, weight_decay, no_decay, **kwargs)
        if self.sharding is not None:
            self.all_reduce_sum = ops.AllReduce()

    def updated(self, params, grads, lr, apply, step):
        bias1, bias2 = self.bias_corrections(step)
        ratio = ops.partial(_lamb_ratio, self.beta1, self.beta2, self.eps, bias1, bias2, apply)
        directions = self.hyper_map(ratio, self.decays, params, self.exp_avg, self.exp_avg_sq, grads)
        squares = self.hyper_map(_squares, params, directions)
        if self.sharding is not None:
            # one all-reduce of every tensor's two sums of squares (the padding chunks hold zeros)
            squares = ops.unstack(self.all_reduce_sum(ops.stack(squares)))
        return self.hyper_map(ops.partial(_lamb_step, lr), self.lr_scales, squares, params, directions)


class Momentum(MaskedOptimizer):
    """``nn.SGD``/``nn.Momentum`` (mindcv ``opt: sgd``, ``momentum``, ``nesterov``): L2 decay, no dampening."""

    SLOTS = ("momentum_buffer",)

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str],
                 momentum: float = 0.9, nesterov: bool = False, **kwargs) -> None:
        super().__init__(params, weight_decay, no_decay, **kwargs)
        self.momentum = Tensor(momentum, ms.float32)
        self.nesterov = nesterov

    def updated(self, params, grads, lr, apply, step):
        update = ops.partial(_momentum_update, self.nesterov, lr, self.momentum, apply)
        return self.hyper_map(update, self.decays, self.lr_scales, params, self.momentum_buffer, grads)


class Lion(MaskedOptimizer):
    """mindcv's ``Lion`` (``opt: lion``): ``w -= lr (sign(b1 m + (1 - b1) g) + wd w)``."""

    SLOTS = ("exp_avg",)

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str],
                 betas: Sequence[float] = (0.9, 0.99), **kwargs) -> None:
        super().__init__(params, weight_decay, no_decay, **kwargs)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)

    def updated(self, params, grads, lr, apply, step):
        update = ops.partial(_lion_update, lr, self.beta1, self.beta2, apply)
        return self.hyper_map(update, self.decays, self.lr_scales, params, self.exp_avg, grads)


# mindcv's opt names; sgd, momentum and nesterov are one rule (nn.SGD without dampening is nn.Momentum)
OPTIMIZERS = {"adamw": AdamW, "adam": Adam, "sgd": Momentum, "momentum": Momentum, "nesterov": Momentum,
              "lamb": Lamb, "lion": Lion}
# betas when the recipe gives none: each optimizer's own default in mindcv / MindSpore
DEFAULT_BETAS = {"adamw": (0.9, 0.999), "adam": (0.9, 0.999), "lamb": (0.9, 0.999), "lion": (0.9, 0.99)}


def create_optimizer(opt: str, params: Iterable[Parameter], *, weight_decay: float, no_decay: Set[str],
                     betas: Optional[Sequence[float]] = None, eps: float = 1e-8, momentum: float = 0.9,
                     nesterov: bool = False, lr_scales: Optional[Sequence[float]] = None,
                     sharding: Optional[Sharding] = None) -> MaskedOptimizer:
    """The optimizer mindcv's ``create_optimizer`` builds for ``opt``, masked and shardable.

    Args:
        opt: A key of :data:`OPTIMIZERS`.
        params: Trainable parameters.
        weight_decay: Weight decay of the parameters not in ``no_decay``.
        no_decay: Names exempt from weight decay.
        betas: Moment decay rates (Adam family, Lion); None: :data:`DEFAULT_BETAS`.
        eps: Denominator epsilon (Adam family).
        momentum: Momentum of ``sgd``/``momentum``/``nesterov``.
        nesterov: Nesterov momentum (``use_nesterov``), for the momentum optimizers and ``adam``.
        lr_scales: Per-parameter lr multipliers (layer-wise decay).
        sharding: ZeRO-1 sharding of the state.
    """
    if opt not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {opt!r}; choose one of {', '.join(OPTIMIZERS)}")
    kind = OPTIMIZERS[opt]
    betas = tuple(betas) if betas is not None else DEFAULT_BETAS.get(opt)
    settings = {Momentum: dict(momentum=momentum, nesterov=nesterov), Lion: dict(betas=betas),
                Adam: dict(betas=betas, eps=eps, nesterov=nesterov)}.get(kind, dict(betas=betas, eps=eps))
    return kind(params, weight_decay, no_decay, lr_scales=lr_scales, sharding=sharding, **settings)


def swin_layer_id(name: str, depths: Sequence[int]) -> int:
    """Layer number of a Swin parameter for layer-wise lr decay (official ``get_swin_layer``).

    ``mask_token`` and ``patch_embed.*``: 0; ``layers.i.blocks.j.*``: the block's index over
    all stages plus 1; ``layers.i.downsample.*``: the last block of stage ``i``; everything
    else (final norm, head, a SimMIM decoder): ``sum(depths) + 1``. A SimMIM model's
    ``encoder.`` prefix is ignored.
    """
    if name.startswith("encoder."):
        name = name[len("encoder."):]
    if name == "mask_token" or name.startswith("patch_embed"):
        return 0
    parts = name.split(".")
    if parts[0] == "layers":
        stage = int(parts[1])
        if parts[2] == "downsample":
            return sum(depths[:stage + 1])
        return sum(depths[:stage]) + int(parts[3]) + 1
    return sum(depths) + 1


def _depths(model) -> List[int]:
    encoder = getattr(model, "encoder", model)
    return [len(layer.blocks) for layer in encoder.layers]


def layer_ids(model) -> Dict[str, int]:
    """:func:`swin_layer_id` of every trainable parameter of a Swin V2 (or SimMIM) model, by structural name."""
    depths = _depths(model)
    return {name: swin_layer_id(name, depths) for name, param in model.parameters_and_names() if param.requires_grad}


def layer_decay_scales(model, decay: float) -> List[float]:
    """Per-parameter lr multipliers ``decay ** (num_layers + 1 - layer_id)``, in ``model.trainable_params()`` order.

    ``num_layers`` is the model's total block count: the head and final norm train at the
    full lr, block ``k`` (1-based, over all stages) at ``decay ** (num_layers + 1 - k)``,
    the patch embedding at ``decay ** (num_layers + 1)``.
    """
    ids = layer_ids(model)
    top = sum(_depths(model)) + 1
    by_param = {id(param): ids[name] for name, param in model.parameters_and_names() if param.requires_grad}
    return [float(decay ** (top - by_param[id(param)])) for param in model.trainable_params()]
