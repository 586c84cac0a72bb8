"""AdamW with the official no-weight-decay groups, and the warmup + cosine schedule.

MindSpore's ``nn.AdamWeightDecay`` has no bias correction (BERT-style), so mindswin
carries its own AdamW with PyTorch's semantics (decoupled decay, bias-corrected moments).
Its update is masked by an ``apply`` flag instead of branching, so a skipped step
(overflow, or a gradient-accumulation micro-step) is one static graph.
"""
from __future__ import annotations

import math
from typing import Iterable, List, Sequence, Set

import mindspore as ms
import numpy as np
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

__all__ = ["AdamW", "cosine_schedule", "scaled_learning_rates"]

_adamw_update = ops.MultitypeFuncGraph("adamw_update")


@_adamw_update.register("Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor", "Tensor",
                        "Tensor", "Tensor", "Tensor")
def _update(lr, beta1, beta2, eps, bias1, bias2, apply, decay, param, m, v, grad):
    grad = grad.astype(ms.float32)
    m_new = beta1 * m + (1.0 - beta1) * grad
    v_new = beta2 * v + (1.0 - beta2) * grad * grad
    step = (m_new / bias1) / (ops.sqrt(v_new / bias2) + eps)
    param_new = param - lr * decay * param - lr * step
    ops.assign(m, ops.select(apply, m_new, m))
    ops.assign(v, ops.select(apply, v_new, v))
    return ops.assign(param, ops.select(apply, param_new, param))


class AdamW(nn.Cell):
    """AdamW over ``params``; parameters named in ``no_decay`` get weight decay 0.

    Args:
        params: Trainable parameters.
        weight_decay: Decoupled weight decay.
        no_decay: Names exempt from weight decay (``model.no_weight_decay()``).
        betas: Adam betas.
        eps: Adam epsilon.
    """

    def __init__(self, params: Iterable[Parameter], weight_decay: float, no_decay: Set[str],
                 betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        super().__init__()
        self.parameters = ParameterTuple(list(params))
        self.exp_avg = self.parameters.clone(prefix="adamw_m", init="zeros")
        self.exp_avg_sq = self.parameters.clone(prefix="adamw_v", init="zeros")
        self.decays = tuple(Tensor(0.0 if p.name in no_decay else weight_decay, ms.float32) for p in self.parameters)
        self.beta1 = Tensor(betas[0], ms.float32)
        self.beta2 = Tensor(betas[1], ms.float32)
        self.eps = Tensor(eps, ms.float32)
        # number of applied updates: drives bias correction (and the lr schedule)
        self.step = Parameter(Tensor(0, ms.int32), name="adamw_step", requires_grad=False)
        self.hyper_map = ops.HyperMap()

    def decayed_names(self) -> List[str]:
        return [p.name for p, d in zip(self.parameters, self.decays) if float(d.asnumpy()) > 0]

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
        return self.hyper_map(update, self.decays, self.parameters, self.exp_avg, self.exp_avg_sq, grads)


def scaled_learning_rates(lr: float, min_lr: float, warmup_lr: float, global_batch: int, base_batch: int,
                          scale: bool = True) -> Sequence[float]:
    """Apply the linear scaling rule: values are per ``base_batch`` images of global batch."""
    factor = global_batch / base_batch if scale else 1.0
    return lr * factor, min_lr * factor, warmup_lr * factor


def cosine_schedule(peak_lr: float, min_lr: float, warmup_lr: float, total_steps: int, warmup_steps: int,
                    kind: str = "cosine_decay") -> np.ndarray:
    """Per-step learning rates: linear warmup from ``warmup_lr``, then cosine to ``min_lr``.

    Matches the official (timm ``CosineLRScheduler``, per-step) schedule.
    """
    steps = np.arange(total_steps, dtype=np.float64)
    if kind == "constant":
        rates = np.full(total_steps, peak_lr)
    else:
        decay_steps = max(total_steps - warmup_steps, 1)
        progress = (steps - warmup_steps) / decay_steps
        rates = min_lr + 0.5 * (peak_lr - min_lr) * (1.0 + np.cos(math.pi * np.clip(progress, 0.0, 1.0)))
    if warmup_steps > 0:
        warm = warmup_lr + (peak_lr - warmup_lr) * steps / warmup_steps
        rates = np.where(steps < warmup_steps, warm, rates)
    return rates.astype(np.float32)
