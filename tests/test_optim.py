"""mindcv's optimizers, masked and shardable: each against the optimizer mindcv 0.3.0's create_optimizer builds."""
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


class _LambReference:
    """nn.Lamb's documented rule in float64 (MindSpore has no Lamb kernel on CPU, so mindcv's cannot run here)."""

    def __init__(self, params, no_decay, eps, betas=(0.9, 0.999)):
        self.params = [p.asnumpy().astype(np.float64) for p in params]
        self.decays = [0.0 if p.name in no_decay else WEIGHT_DECAY for p in params]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.eps, self.betas, self.t = eps, betas, 0

    def __call__(self, grads):
        self.t += 1
        b1, b2 = self.betas
        for i, grad in enumerate(grads):
            g = grad.asnumpy().astype(np.float64)
            self.m[i] = b1 * self.m[i] + (1 - b1) * g
            self.v[i] = b2 * self.v[i] + (1 - b2) * g * g
            r = (self.m[i] / (1 - b1 ** self.t)) / (np.sqrt(self.v[i] / (1 - b2 ** self.t)) + self.eps)
            r = r + self.decays[i] * self.params[i]
            w_norm, r_norm = np.linalg.norm(self.params[i]), np.linalg.norm(r)
            trust = w_norm / r_norm if w_norm > 0 and r_norm > 0 else 1.0
            self.params[i] = self.params[i] - LR * trust * r


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
def test_each_optimizer_steps_as_mindcvs_and_a_masked_step_changes_nothing(case):
    theirs_params, ours_params = _params(""), _params("")
    eps = 1e-6 if case["opt"] == "lamb" else 1e-8  # the default of the MindSpore optimizer mindcv builds
    extra = dict(momentum=case.get("momentum", 0.9), nesterov=case.get("nesterov", False))
    if case["opt"] == "lamb":
        theirs = _LambReference(theirs_params, {"w2.bias"}, eps)
    else:
        theirs = mindcv_create_optimizer(theirs_params, opt=case.get("reference", case["opt"]), lr=LR,
                                         weight_decay=WEIGHT_DECAY, weight_decay_filter="norm_and_bias", eps=eps,
                                         **extra)
    ours = _Ours(create_optimizer(case["opt"], ours_params, weight_decay=WEIGHT_DECAY, no_decay={"w2.bias"},
                                  eps=eps, **extra))
    lr = Tensor(LR, ms.float32)
    start = [p.asnumpy().copy() for p in ours_params]
    for step in range(STEPS):
        theirs(_grads(step))
        ours(_grads(step), lr, Tensor(True))
        # a skipped step (overflow, accumulation) leaves parameters and state as they were
        ours(_grads(50 + step), lr, Tensor(False))
    assert int(ours.optimizer.step.asnumpy()) == STEPS
    final = theirs.params if case["opt"] == "lamb" else [p.asnumpy() for p in theirs_params]
    for mine, their, first in zip(ours_params, final, start):
        mine = mine.asnumpy()
        moved = np.abs(their - first)
        assert moved.max() > 0  # (a Lion element can come back: its steps are +-lr)
        # the same float32 formulas, some products and sums in another order (MindSpore's fused kernels
        # write m += (g - m)(1 - b1), Adam's lr_t carries sqrt(1 - b2^t), the powers are running products):
        # each update is within ~8 float32 roundings of its size (moved.max() bounds it), plus the rounding
        # of the parameter. Lamb also scales by a ratio of two float32 norms of up to n elements, each
        # within (n + 3) roundings of the float64 one.
        roundings = 8 + (2 * (first.size + 3) if case["opt"] == "lamb" else 0)
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
