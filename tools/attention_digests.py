"""sha256 digests of the logits and gradients of small fixed-weight models, one line per attention path.

A refactoring of the model code must leave every line unchanged: run this before and after and
compare (``diff``). Graph mode, the CPU backend; the FlashAttentionScore path runs through its
documented computation (``softmax(scalar_value * q k^T + real_shift) v``) standing in for the op,
as ``tests/test_ascend_settings.py`` does.

Stochastic depth runs on given uniforms (``path_noise``), as training does: the masks MindSpore's
stateful generator draws differ from run to run of the same code, ``mindspore.set_seed`` or not
(MindSpore 2.10, CPU), so they cannot be compared.

Usage: ``python tools/attention_digests.py [CASE ...]`` (all cases without arguments).
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import sys
from typing import Dict, Iterator

import mindspore as ms
import numpy as np
from mindspore import ops

import mindswin
from mindswin.amp import apply_amp
from mindswin.models import swin_v2

MICRO = dict(img_size=32, patch_size=2, embed_dim=24, depths=[1, 2, 1], num_heads=[2, 4, 8], window_size=4,
             num_classes=5, pretrained_window_sizes=[0, 0, 0])
# Window 12 on the 16x16 first stage: 144-token windows, which the fused CPU kernels attend in row blocks.
ROW_BLOCKS = dict(MICRO, window_size=12)
TRAIN = dict(drop_path_rate=0.3)

CASES: Dict[str, dict] = {
    "native_batched": dict(kernels="native"),
    "cpu_batched": dict(kernels="cpu"),
    "native_no_qkv_bias": dict(kernels="native", qkv_bias=False),
    "cpu_no_qkv_bias": dict(kernels="cpu", qkv_bias=False),
    "native_window12": dict(ROW_BLOCKS, kernels="native"),
    "cpu_row_blocks": dict(ROW_BLOCKS, kernels="cpu"),
    "native_sequential": dict(kernels="native", sequential_attention=2, sequential_attention_heads=1),
    "cpu_sequential": dict(kernels="cpu", sequential_attention=2, sequential_attention_heads=1),
    "native_recompute_drop_path": dict(TRAIN, kernels="native", recompute=True),
    "cpu_recompute_drop_path": dict(TRAIN, kernels="cpu", recompute=True),
    "cpu_drop_path": dict(TRAIN, kernels="cpu"),
    "cpu_recompute_sequential": dict(kernels="cpu", recompute=True, sequential_attention=2),
    "cpu_recompute_row_blocks_extra_norm": dict(ROW_BLOCKS, kernels="cpu", recompute=True, extra_norm_period=1),
    "native_extra_norm_no_qkv_bias_recompute": dict(kernels="native", extra_norm_period=1, qkv_bias=False,
                                                    recompute=True),
    "native_mindcv_numerics": dict(kernels="native", numerics="mindcv"),
    "native_o2": dict(kernels="native", embed_dim=32, amp=True),  # flash_stand_in_o2's model without flash
    "flash_stand_in_o2": dict(kernels="native", embed_dim=32, amp=True, flash=True),
}


def randomize(model: ms.nn.Cell, seed: int) -> None:
    """Non-trivial weights: nonzero post-norms, logit scales on both sides of the clamp (tests/helpers.py)."""
    rng = np.random.default_rng(seed)
    for p in model.get_parameters():
        if "logit_scale" in p.name:
            value = rng.uniform(math.log(10) - 1, math.log(100) + 1, p.shape)
        elif p.name.endswith(("norm1.weight", "norm2.weight")) or "norm.weight" in p.name:
            value = 1 + 0.2 * rng.standard_normal(p.shape)
        else:
            value = 0.05 * rng.standard_normal(p.shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))


def documented_flash(query, key, value, head_num, real_shift=None, scalar_value=1.0, input_layout="BSH"):
    """FlashAttentionScore's documented computation (BNSD), in float32 from the given operands."""
    logits = ops.matmul(query, key.swapaxes(-1, -2)).astype(ms.float32) * scalar_value
    probs = ops.softmax(logits + real_shift.astype(ms.float32), axis=-1)
    return ops.matmul(probs.astype(value.dtype), value)


@contextlib.contextmanager
def flash_stand_in() -> Iterator[None]:
    """The op replaced by :func:`documented_flash` wherever mindswin calls it, and an Ascend device_target
    for the switch only."""
    modules = [module for name, module in sys.modules.items()
               if name.startswith("mindswin.") and hasattr(module, "flash_attention_score")]
    saved = [(module, module.flash_attention_score) for module in modules]
    for module in modules:
        module.flash_attention_score = documented_flash
    try:
        yield
    finally:
        for module, original in saved:
            module.flash_attention_score = original


def switch_to_flash(model: ms.nn.Cell) -> None:
    original = ms.get_context
    ms.get_context = lambda key: "Ascend" if key == "device_target" else original(key)
    try:
        swin_v2.use_flash_attention(model)
    finally:
        ms.get_context = original


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str(a.dtype).encode() + str(a.shape).encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def run_case(name: str, options: dict) -> str:
    options = dict(options)
    amp, flash = options.pop("amp", False), options.pop("flash", False)
    ms.set_seed(5)
    np.random.seed(5)
    arguments = {**MICRO, **options}
    model = mindswin.create_model("swinv2_tiny_window8_256", **arguments)
    randomize(model, seed=11)
    if amp:
        apply_amp(model, "O2")
    if flash:
        switch_to_flash(model)
    training = arguments.get("drop_path_rate", 0.0) > 0
    model.set_train(training)
    rng = np.random.default_rng(3)
    x = ms.Tensor(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.array([1, 3], np.int32))
    noise = None
    if training:
        noise = ms.Tensor(rng.uniform(0, 1, (2, model.num_blocks, 2)).astype(np.float32))
    params = model.trainable_params()

    def loss_fn(inputs, y, path_noise):
        return ops.cross_entropy(model(inputs, path_noise), y)

    with flash_stand_in() if flash else contextlib.nullcontext():
        logits = model(x, noise).asnumpy()
        loss, (input_grad, weight_grads) = ms.value_and_grad(loss_fn, 0, params)(x, labels, noise)
    grads = [input_grad.asnumpy()] + [g.asnumpy() for g in weight_grads]
    names = ",".join(p.name for p in params)
    return (f"{name:42s} logits {digest(logits)} loss {digest(loss.asnumpy())} grads {digest(*grads)} "
            f"names {hashlib.sha256(names.encode()).hexdigest()[:8]} ({len(grads) - 1} params)")


def main() -> None:
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    for name in sys.argv[1:] or CASES:
        print(run_case(name, CASES[name]), flush=True)


if __name__ == "__main__":
    main()
