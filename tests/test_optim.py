"""mindcv's optimizers, masked and shardable, each against what mindcv 0.3.0 builds for it (lamb: timm's)."""
import mindspore as ms
import numpy as np
import pytest
from mindcv.optim import create_optimizer as mindcv_create_optimizer
from mindspore import Parameter, Tensor

from mindswin.config import ConfigError, load_config
from mindswin.engine.optim import OPTIMIZERS, create_optimizer

# A decayed matrix, a bias (mindcv's norm_and_bias filter exempts it by name, mindswin by no_weight_decay),
# a decayed 3-d tensor.
SHAPES = {"w1": (4, 5), "w2.bias": (5,), "w3": (3, 3, 2)}
LR, WEIGHT_DECAY, STEPS = 0.01, 0.05, 4

CASES = [
    dict(opt="adamw"), dict(opt="adam"), dict(opt="adam", nesterov=True), dict(opt="sgd"),
    dict(opt="sgd", nesterov=True), dict(opt="momentum"),
    # nn.Momentum's documented Nesterov rule is nn.SGD's; MindSpore 2.10's CPU ApplyMomentum kernel ignores
    # use_nesterov (it steps plain momentum), so this case is checked against nn.SGD, what Ascend computes
    dict(opt="nesterov", nesterov=True, reference="sgd"),
    dict(opt="momentum", momentum=0.5), dict(opt="lamb"), dict(opt="lion"),
]


# timm's Lamb is the anchor of opt lamb: MindSpore has no Lamb kernel on CPU, so the nn.Lamb mindcv builds cannot
# run here. With always_adapt (nn.Lamb adapts every tensor) and no gradient clipping it is nn.Lamb's documented rule.
_TIMM_LAMB = r'''
import sys, numpy as np, torch
from timm.optim import Lamb
data = np.load(sys.argv[1])
names, lr, decay = data["names"], float(data["lr"]), float(data["decay"])
eps, steps = float(data["eps"]), int(data["steps"])
params = {n: torch.nn.Parameter(torch.from_numpy(data["start." + n])) for n in names}
no_decay = set(data["no_decay"].tolist())
groups = [dict(params=[params[n] for n in names if n not in no_decay], weight_decay=decay),
          dict(params=[params[n] for n in names if n in no_decay], weight_decay=0.0)]
optimizer = Lamb(groups, lr=lr, eps=eps, max_grad_norm=None, always_adapt=True, foreach=False)
for step in range(steps):
    for n in names:
        params[n].grad = torch.from_numpy(data[f"grad{step}." + n])
    optimizer.step()
np.savez(sys.argv[2], **{n: p.detach().numpy() for n, p in params.items()})
'''


def _timm_lamb(tmp_path, eps):
    import subprocess

    from helpers import require_torch_python

    names = list(SHAPES)
    start = [p.asnumpy() for p in _params("")]
    arrays = {f"start.{n}": a for n, a in zip(names, start)}
    for step in range(STEPS):
        arrays.update({f"grad{step}.{n}": g.asnumpy() for n, g in zip(names, _grads(step))})
    np.savez(tmp_path / "in.npz", names=np.array(names), no_decay=np.array(["w2.bias"]), lr=LR, decay=WEIGHT_DECAY,
             eps=eps, steps=STEPS, **arrays)
    subprocess.run([str(require_torch_python()), "-c", _TIMM_LAMB, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                   check=True, capture_output=True, text=True)
    out = np.load(tmp_path / "out.npz")
    return [out[n] for n in names]


def _params(prefix):
    rng = np.random.default_rng(0)
    return [Parameter(Tensor(rng.standard_normal(shape).astype(np.float32)), name=f"{prefix}{name}")
            for name, shape in SHAPES.items()]


def _grads(step):
    rng = np.random.default_rng(100 + step)
    return tuple(Tensor(rng.standard_normal(shape).astype(np.float32)) for shape in SHAPES.values())


class _Ours(ms.nn.Cell):
    def __init__(self, optimizer):
        super().__init__()
        self.optimizer = optimizer

    def construct(self, grads, lr, apply):
        return self.optimizer(grads, lr, apply)


@pytest.mark.parametrize("case", CASES, ids=[f"{c['opt']}{'-nesterov' if c.get('nesterov') else ''}"
                                             f"{'-m' + str(c['momentum']) if 'momentum' in c else ''}" for c in CASES])
def test_each_optimizer_steps_as_mindcvs_and_a_masked_step_changes_nothing(case, tmp_path):
    theirs_params, ours_params = _params(""), _params("")
    eps = 1e-6 if case["opt"] == "lamb" else 1e-8  # the default of the MindSpore optimizer mindcv builds
    extra = dict(momentum=case.get("momentum", 0.9), nesterov=case.get("nesterov", False))
    if case["opt"] != "lamb":
        theirs = mindcv_create_optimizer(theirs_params, opt=case.get("reference", case["opt"]), lr=LR,
                                         weight_decay=WEIGHT_DECAY, weight_decay_filter="norm_and_bias", eps=eps,
                                         **extra)
    ours = _Ours(create_optimizer(case["opt"], ours_params, weight_decay=WEIGHT_DECAY, no_decay={"w2.bias"},
                                  eps=eps, **extra))
    lr = Tensor(LR, ms.float32)
    start = [p.asnumpy().copy() for p in ours_params]
    for step in range(STEPS):
        if case["opt"] != "lamb":
            theirs(_grads(step))
        ours(_grads(step), lr, Tensor(True))
        # a skipped step (overflow, accumulation) leaves parameters and state as they were
        ours(_grads(50 + step), lr, Tensor(False))
    assert int(ours.optimizer.step.asnumpy()) == STEPS
    final = _timm_lamb(tmp_path, eps) if case["opt"] == "lamb" else [p.asnumpy() for p in theirs_params]
    for mine, their, first in zip(ours_params, final, start):
        mine = mine.asnumpy()
        moved = np.abs(their - first)
        assert moved.max() > 0  # (a Lion element can come back: its steps are +-lr)
        # the same float32 formulas, some products and sums in another order (MindSpore's fused kernels
        # write m += (g - m)(1 - b1), Adam's lr_t carries sqrt(1 - b2^t), the powers are running products):
        # each update is within ~8 float32 roundings of its size (moved.max() bounds it), plus the rounding
        # of the parameter. Lamb also scales by a ratio of two float32 norms of up to n elements; each side
        # sums each norm in its own order within (n + 3) roundings of the exact one, so the two ratios
        # agree within 4 (n + 3).
        roundings = 8 + (4 * (first.size + 3) if case["opt"] == "lamb" else 0)
        bound = STEPS * (roundings * 2.0 ** -24 * moved.max() + np.spacing(np.abs(their)))
        if case["opt"] == "lion":  # a sign of the same interpolation: exact but for the final rounding
            bound = STEPS * np.spacing(np.abs(their))
        assert (np.abs(mine - their) <= bound).all(), (case, np.abs(mine - their).max(), bound.max())


def test_weight_decay_reaches_only_the_decayed_tensors():
    params = _params("")
    optimizer = _Ours(create_optimizer("sgd", params, weight_decay=0.5, no_decay={"w2.bias"}, momentum=0.0))
    before = [p.asnumpy().copy() for p in params]
    optimizer(tuple(Tensor(np.zeros(s, np.float32)) for s in SHAPES.values()), Tensor(0.1, ms.float32), Tensor(True))
    after = [p.asnumpy() for p in params]
    assert np.allclose(after[0], before[0] * (1 - 0.05)) and np.array_equal(after[1], before[1])


def test_every_mindcv_optimizer_name_is_built_or_refused_with_a_reason():
    for name in OPTIMIZERS:
        assert load_config(overrides=dict(opt=name)).opt == name
    with pytest.raises(ConfigError, match="rmsprop.*not implemented in mindswin .*choose adamw"):
        load_config(overrides=dict(opt="rmsprop"))


def test_lion_and_the_adam_family_take_their_own_betas_unless_given():
    lion = create_optimizer("lion", _params(""), weight_decay=0.0, no_decay=set())
    adam = create_optimizer("adam", _params(""), weight_decay=0.0, no_decay=set(), betas=(0.8, 0.9))
    assert np.isclose(float(lion.beta2.asnumpy()), 0.99) and np.isclose(float(adam.beta1.asnumpy()), 0.8)
