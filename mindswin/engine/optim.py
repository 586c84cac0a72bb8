"""AdamW with the official no-weight-decay groups and layer-wise lr decay.

MindSpore's ``nn.AdamWeightDecay`` has no bias correction (BERT-style), so mindswin
carries its own AdamW with PyTorch's semantics (decoupled decay, bias-corrected moments).
Its update is masked by an ``apply`` flag instead of branching, so a skipped step
(overflow, or a gradient-accumulation micro-step) is one static graph.

Layer-wise lr decay (SimMIM/BEiT fine-tuning) is a per-parameter lr multiplier, as the
official optimizer's per-group ``lr_scale``: :func:`swin_layer_id` numbers the parameters
as microsoft/Swin-Transformer's ``get_swin_layer`` does and :func:`layer_decay_scales`
turns the numbers into ``decay ** (num_layers + 1 - layer_id)``.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Set

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from .zero import ShardedLayout, ShardedParameterGather, Sharding

__all__ = ["AdamW", "swin_layer_id", "layer_ids", "layer_decay_scales"]

_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor", "Tensor")
def _update(lr, beta1, beta2, eps, bias1, bias2, apply, decay, lr_scale, param, m, v, grad):
    """Moments updated in place (when ``apply``); returns the updated ``param`` value."""
    grad = grad.astype(ms.float32)
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    step = (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps)
    lr = lr * lr_scale  # the parameter group's lr, as PyTorch's AdamW uses it for the step and the decay
    param_new = param - lr * decay * param - lr * step
    ops.assign(m, ops.select(apply, m_new, m))
    ops.assign(v, ops.select(apply, v_new, v))
    return param_new


_assign_if = ops.MultitypeFuncGraph("assign_if")


@_assign_if.register("Tensor", "Tensor", "Tensor")
def _assign_when(apply, param, value):
    return ops.assign(param, ops.select(apply, value, param))


class AdamW(nn.Cell):
    """AdamW over ``params``; parameters named in ``no_decay`` get weight decay 0.

    Args:
        params: Trainable parameters.
        weight_decay: Decoupled weight decay.
        no_decay: Names exempt from weight decay (``model.no_weight_decay()``).
        betas: Adam betas.
        eps: Adam epsilon.
        lr_scales: Per-parameter lr multiplier, in the order of ``params`` (layer-wise decay,
            see :func:`layer_decay_scales`); all 1.0 when None.
        sharding: Shard the moments across the data-parallel ranks (ZeRO-1, see
            :mod:`mindswin.engine.zero`); ``construct`` then takes this rank's gradient chunks.
    """

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str],
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 lr_scales: Optional[Sequence[float]] = None, sharding: Optional[Sharding] = None) -> None:
        super().__init__()
        self.parameters = ParameterTuple(list(params))
        self.sharding = sharding
        if sharding is None:
            self.exp_avg = self.parameters.clone(prefix="adamw_m", init="zeros")
            self.exp_avg_sq = self.parameters.clone(prefix="adamw_v", init="zeros")
        else:
            self.layout = ShardedLayout([p.shape for p in self.parameters], sharding)
            self.gather = ShardedParameterGather(self.layout)
            self.exp_avg = self._moment_chunks("adamw_m")
            self.exp_avg_sq = self._moment_chunks("adamw_v")
        self.decays = tuple(Tensor(0.0 if p.name in no_decay else weight_decay, ms.float32) for p in self.parameters)
        lr_scales = [1.0] * len(self.parameters) if lr_scales is None else list(lr_scales)
        if len(lr_scales) != len(self.parameters):
            raise ValueError(f"{len(lr_scales)} lr scales for {len(self.parameters)} parameters")
        self.lr_scales = tuple(Tensor(scale, ms.float32) for scale in lr_scales)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.eps = Tensor(eps, ms.float32)
        # number of applied updates: drives bias correction (and the lr schedule)
        self.step = Parameter(Tensor(0, ms.int32), name="adamw_step", requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def _moment_chunks(self, prefix: str) -> ParameterTuple:
        return ParameterTuple([Parameter(Tensor(np.zeros(chunk, np.float32)), name=f"{prefix}.{p.name}",
                                         requires_grad=False)
                               for p, chunk in zip(self.parameters, self.layout.chunks)])

    def decayed_names(self) -> List[str]:
        return [p.name for p, d in zip(self.parameters, self.decays) if float(d.asnumpy()) > 0]

    def state_bytes(self) -> int:
        """Bytes of AdamW moments this rank holds."""
        return int(sum(m.data.nbytes for m in (*self.exp_avg, *self.exp_avg_sq)))

    def construct(self, grads, lr: Tensor, apply: Tensor):
        step = self.step + apply.astype(ms.int32)
        ops.assign(self.step, step)
        t = step.astype(ms.float32)
        bias1 = 1.0 - ops.pow(self.beta1, t)
        bias2 = 1.0 - ops.pow(self.beta2, t)
        # before the first applied step t == 0: keep the divisors away from 0 (result unused)
        bias1 = ops.maximum(bias1, 1e-12)
        bias2 = ops.maximum(bias2, 1e-12)
        update = ops.partial(_adamw_update, lr, self.beta1, self.beta2, self.eps, bias1, bias2, apply)
        if self.sharding is None:
            updated = self.hyper_map(update, self.decays, self.lr_scales, self.parameters, self.exp_avg,
                                     self.exp_avg_sq, grads)
        else:
            # each rank steps its own chunk of every parameter; the chunks are then gathered everywhere
            own = self.layout.own_chunks(self.parameters)
            updated = self.gather(self.hyper_map(update, self.decays, self.lr_scales, own, self.exp_avg,
                                                 self.exp_avg_sq, grads), self.parameters)
        return self.hyper_map(ops.partial(_assign_if, apply), self.parameters, updated)


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
