"""Swin V2 cells: geometry rules, derived tensors, modes, AMP, features, recompute."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

import mindswin
from mindswin.amp import apply_amp
from mindswin.models import count_flops, model_spec
from mindswin.models.flops import count_parameters
from mindswin.models.layers import MlpWeights, WeightAndBias
from mindswin.models.simmim import build_simmim
from mindswin.models.swin_v2 import (
    AttentionWeights,
    BlockWeights,
    SwinTransformerV2Block,
    relative_coords_table,
    shifted_window_mask,
    shifted_window_mask_factors,
)

from helpers import MICRO, OFFICIAL_VARIANTS, PAPER_VARIANTS, loss_and_grads, micro, randomize


def test_tiny_parameter_count_and_names():
    model = mindswin.create_model("swinv2_tiny_window8_256")
    assert model.param_count() == 28_347_154
    names = set(model.state_shapes())
    for expected in ("patch_embed.proj.weight", "layers.0.blocks.0.attn.qkv.weight", "layers.0.blocks.0.attn.q_bias",
                     "layers.0.blocks.0.attn.cpb_mlp.0.weight", "layers.0.downsample.reduction.weight",
                     "layers.2.blocks.5.mlp.fc2.bias", "norm.weight", "head.weight"):
        assert expected in names
    derived = ("relative_coords_table", "relative_position_index", "attn_mask", "k_bias")
    assert not [n for n in names if any(d in n for d in derived)]
    assert "layers.3.downsample.reduction.weight" not in names


def test_mindcv_alias_and_unknown_name():
    assert mindswin.create_model("swinv2_tiny_window8", img_size=64).model_name == "swinv2_tiny_window8_256"
    with pytest.raises(ValueError, match="Did you mean swinv2_tiny_window8_256"):
        mindswin.create_model("swinv2_tiny_windw8_256")


def test_variant_defaults():
    cpu_variants = {n for n in mindswin.list_models() if model_spec(n).description.startswith("CPU variant")}
    assert set(mindswin.list_models()) - cpu_variants == set(OFFICIAL_VARIANTS) | set(PAPER_VARIANTS)
    big = mindswin.create_model("swinv2_base_window12to24_192to384", num_classes=0)
    assert big.img_size == (384, 384)
    assert big.layers[0].blocks[0].attn.pretrained_window_size == (12, 12)
    assert big.layers[3].blocks[0].attn.pretrained_window_size == (6, 6)
    # stage 3 is 12x12 with window 24: window clipped to 12, no shift
    assert big.layers[3].blocks[1].window_size == (12, 12) and big.layers[3].blocks[1].shift_size == (0, 0)
    assert big.layers[1].blocks[1].shift_size == (12, 12)  # 48x48, window 24
    assert big.layers[2].blocks[1].shift_size == (0, 0)  # 24x24: the window covers the map


def test_post_norms_start_at_zero_and_logit_scale_log10():
    model = micro()
    block = model.layers[0].blocks[0]
    assert not block.norm1.weight.asnumpy().any() and not block.norm2.bias.asnumpy().any()
    assert np.allclose(block.attn.logit_scale.asnumpy(), math.log(10))
    assert model.norm.weight.asnumpy().all()


def test_coords_table_range_and_pretrained_rescale():
    table = relative_coords_table((8, 8), (0, 0))
    assert table.shape == (225, 2)
    assert np.isclose(table.max(), 1.056642, atol=1e-6) and np.isclose(table.min(), -1.056642, atol=1e-6)
    # a 16 window with pretrained window 8 reaches further than 8 (extrapolation)
    assert relative_coords_table((16, 16), (8, 8)).max() > table.max()
    assert np.isfinite(relative_coords_table((1, 1), (0, 0))).all()


def test_shift_mask_blocks_cross_region_pairs():
    mask = shifted_window_mask((8, 8), (4, 4), (2, 2))
    assert mask.shape == (4, 16, 16)
    assert not mask[0].any()  # top-left window holds one region only
    assert set(np.unique(mask[3])) == {0.0, -100.0}
    assert shifted_window_mask((8, 8), (4, 4), (0, 0)) is None


@pytest.mark.parametrize("resolution,window,shift", [((8, 8), (4, 4), (2, 2)), ((12, 20), (8, 8), (4, 4)),
                                                     ((64, 64), (32, 32), (16, 16))])
def test_mask_factors_multiply_to_the_mask_exactly(resolution, window, shift):
    # products of 10, 1 and -100 summed: small integers, exact in any float format and order
    factors = shifted_window_mask_factors(resolution, window, shift)
    product = ms.ops.BatchMatMul(transpose_b=True)(ms.Tensor(factors[0]), ms.Tensor(factors[1])).asnumpy()
    np.testing.assert_array_equal(product, shifted_window_mask(resolution, window, shift))
    assert shifted_window_mask_factors(resolution, window, (0, 0)) is None


def test_pynative_and_graph_give_same_logits():
    model = randomize(micro())
    x = ms.Tensor(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    graph = model(x).asnumpy()
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        eager = model(x).asnumpy()
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    assert np.abs(graph - eager).max() <= 1e-5


def test_one_by_one_last_stage_is_finite():
    model = randomize(mindswin.create_model("swinv2_tiny_window8_256", img_size=32, num_classes=10))
    assert model.stage_resolutions()[-1] == (1, 1)
    x = ms.Tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32))
    logits = model(x).asnumpy()
    assert np.isfinite(logits).all()

    def loss_fn(inputs):
        return model(inputs).sum()

    grads = ms.grad(loss_fn, grad_position=None, weights=model.trainable_params())(x)
    assert all(np.isfinite(g.asnumpy()).all() for g in grads)


def test_geometry_errors_are_clear():
    with pytest.raises(ValueError, match="img_size 30 .*not a multiple of the patch size 4"):
        mindswin.create_model("swinv2_tiny_window8_256", img_size=30)
    # a map the patch merging halves unevenly is padded, as in timm: 36 px gives 9, 5, 3 and 2
    model = mindswin.create_model("swinv2_tiny_window8_256", img_size=36, window_size=4)
    assert model.stage_resolutions() == [(9, 9), (5, 5), (3, 3), (2, 2)]
    with pytest.raises(ValueError, match="SimMIM's decoder .*multiple of 4 x 2\\^3 = 32"):
        build_simmim("swinv2_tiny_window8_256", img_size=36, window_size=4)


def test_odd_maps_are_padded_in_graph_mode_forward_and_backward():
    model = randomize(micro(img_size=36))  # stage maps 18, 9 (odd: padded to 10 by the merging), 5
    model.set_train(True)
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 36, 36)).astype(np.float32))
    loss, grads = loss_and_grads(model, x, ms.Tensor(np.array([0, 1], np.int32)))
    assert np.isfinite(loss.asnumpy()) and all(np.isfinite(g.asnumpy()).all() for g in grads)
    assert all(np.abs(g.asnumpy()).max() > 0 for g in grads)  # every weight, the last stage's included, learns


def test_features_only_shapes_tiny_256():
    model = mindswin.create_model("swinv2_tiny_window8_256", features_only=True)
    assert [f["reduction"] for f in model.feature_info] == [4, 8, 16, 32]
    feats = model(ms.Tensor(np.zeros((1, 3, 256, 256), np.float32)))
    assert [tuple(f.shape) for f in feats] == [(1, 96, 64, 64), (1, 192, 32, 32), (1, 384, 16, 16), (1, 768, 8, 8)]
    assert not any(n.startswith(("head.", "norm.")) for n in model.state_shapes())


def test_features_non_square_and_out_indices():
    model = micro(img_size=(32, 64), features_only=True, out_indices=(1, 2))
    feats = model(ms.Tensor(np.zeros((2, 3, 32, 64), np.float32)))
    assert [tuple(f.shape) for f in feats] == [(2, 48, 8, 16), (2, 96, 4, 8)]


def test_non_square_classifier_runs():
    model = randomize(micro(img_size=(32, 64)))
    out = model(ms.Tensor(np.ones((1, 3, 32, 64), np.float32))).asnumpy()
    assert out.shape == (1, 5) and np.isfinite(out).all()


def test_recompute_gives_same_gradients():
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(np.array([1, 3], np.int32))
    plain = randomize(micro())
    recomputed = randomize(micro(recompute=True))
    loss_a, grads_a = loss_and_grads(plain, x, y)
    loss_b, grads_b = loss_and_grads(recomputed, x, y)
    assert np.isclose(loss_a.asnumpy(), loss_b.asnumpy(), atol=1e-6)
    assert max(np.abs(a.asnumpy() - b.asnumpy()).max() for a, b in zip(grads_a, grads_b)) <= 1e-5


def test_amp_o2_forward_and_train_step_close_to_float32():
    x = ms.Tensor(np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32))
    y = ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    fp32 = randomize(micro())
    fp16 = apply_amp(randomize(micro()), "O2")
    assert fp16.layers[0].blocks[0].attn.qkv.compute_dtype == ms.float16
    assert fp16.layers[0].blocks[0].attn.cpb_mlp[0].compute_dtype == ms.float32
    logits32, logits16 = fp32(x).asnumpy(), fp16(x).asnumpy()
    assert logits16.dtype == np.float32
    # float16 matmuls (10-bit mantissa) through 4 blocks: about 1e-2 of the logit scale
    assert np.abs(logits16 - logits32).max() <= 2e-2 * max(1.0, np.abs(logits32).max())

    fp16.set_train(True)
    optimizer = nn.AdamWeightDecay(fp16.trainable_params(), learning_rate=1e-4)

    def loss_fn(a, b):
        return ops.cross_entropy(fp16(a), b)

    grad_fn = ms.value_and_grad(loss_fn, None, optimizer.parameters)

    @ms.jit
    def step(a, b):
        loss, grads = grad_fn(a, b)
        optimizer(grads)
        return loss

    before = fp16.head.weight.asnumpy().copy()
    losses = [float(step(x, y).asnumpy()) for _ in range(3)]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert np.abs(fp16.head.weight.asnumpy() - before).max() > 0
    assert all(p.dtype == ms.float32 for p in fp16.trainable_params())


def test_amp_after_first_run_is_refused():
    model = micro()
    model(ms.Tensor(np.zeros((1, 3, 32, 32), np.float32)))
    with pytest.raises(RuntimeError, match="before the model is first run"):
        apply_amp(model, "O2")


def test_drop_path_rule_and_train_eval():
    model = micro(drop_path_rate=0.3)
    rates = [b.drop_path.drop_prob if b.drop_path is not None else 0.0 for layer in model.layers
             for b in layer.blocks]
    assert np.allclose(rates, np.linspace(0, 0.3, 4))
    randomize(model)
    x = ms.Tensor(np.random.default_rng(5).standard_normal((8, 3, 32, 32)).astype(np.float32))
    eval_a, eval_b = model(x).asnumpy(), model(x).asnumpy()
    assert np.array_equal(eval_a, eval_b)
    model.set_train(True)
    assert not np.allclose(model(x).asnumpy(), eval_a)


def test_no_weight_decay_names():
    model = micro()
    exempt = model.no_weight_decay()
    assert "layers.0.blocks.0.attn.logit_scale" in exempt
    assert "layers.0.blocks.0.attn.cpb_mlp.0.weight" in exempt
    assert "layers.0.blocks.0.attn.q_bias" in exempt and "head.bias" in exempt and "norm.weight" in exempt
    assert "layers.0.blocks.0.attn.qkv.weight" not in exempt and "head.weight" not in exempt


def test_reset_classifier_names():
    model = micro()
    model.reset_classifier(7)
    assert model.state_shapes()["head.weight"] == (7, 96)


def test_flops_official_convention():
    assert round(count_flops(mindswin.create_model("swinv2_tiny_window8_256")) / 1e9, 2) == 5.93


def test_block_reuse_is_refused_off_ascend():
    with pytest.raises(ValueError, match="Ascend only"):
        micro(reuse_blocks=True)


def test_parameter_count_without_building_equals_built_models():
    small_huge = dict(model_spec("swinv2_huge_window12_192").model_kwargs(), embed_dim=16, num_heads=(1, 2, 4, 8),
                      depths=(2, 2, 12, 2), img_size=64, window_size=4)
    for kwargs in (model_spec("swinv2_tiny_window8_256").model_kwargs(), small_huge, dict(MICRO, qkv_bias=False)):
        built = mindswin.models.SwinTransformerV2(**kwargs)
        assert count_parameters(**kwargs) == built.param_count()


def test_huge_and_giant_have_the_papers_sizes():
    # Swin V2 paper, table 1: SwinV2-H 658M, SwinV2-G 3.0B parameters (1,000-class head).
    for name, paper in (("swinv2_huge_window12_192", 658e6), ("swinv2_giant_window12_192", 3.0e9)):
        assert abs(count_parameters(**model_spec(name).model_kwargs()) - paper) <= 0.01 * paper, name


def test_extra_norm_every_sixth_block_of_a_stage():
    # SwinV2-G's stage layout (2-2-42-4) at tiny widths: a norm3 after blocks 6, 12, ..., 42 of stage 2
    model = mindswin.create_model("swinv2_giant_window12_192", embed_dim=8, num_heads=(1, 1, 2, 4), img_size=64,
                                  window_size=4, num_classes=3)
    with_norm = [(i, j) for i, layer in enumerate(model.layers) for j, block in enumerate(layer.blocks)
                 if block.norm3 is not None]
    assert with_norm == [(2, j) for j in range(5, 42, 6)]
    block = micro(extra_norm_period=1).layers[0].blocks[0]  # norm3 at its initial weight 1, bias 0
    x = ms.Tensor(np.random.default_rng(0).standard_normal((2, 16, 16, 24)).astype(np.float32))
    out = block(x).asnumpy()
    # the block's output is layer-normalised over channels (variance var / (var + 1e-5) ~ 1)
    assert np.abs(out.mean(axis=-1)).max() <= 1e-5
    assert np.abs(out.var(axis=-1) - 1).max() <= 1e-3


def named_weights(record, layout, prefix=""):
    """``(parameter name, tensor)`` of every weight in a nested weight record of ``layout``, None fields left out."""
    nested = {"attn": AttentionWeights, "mlp": MlpWeights}
    cells = {"cpb_fc1": "cpb_mlp.0", "cpb_fc2": "cpb_mlp.2"}  # the fields of a SequentialCell's layers
    for field in layout.fields:
        value = record[getattr(layout, field)]
        name = prefix + cells.get(field, field)
        if isinstance(value, tuple):
            yield from named_weights(value, nested.get(field, WeightAndBias), name + ".")
        elif value is not None:
            yield name, value


def test_block_weights_are_records_of_the_parameters_they_name():
    # forward_with reads a block's weights by field name from nested records; a checkpointed block
    # reruns it with exactly these tensors, so each field must hold the parameter of its name.
    for qkv_bias, extra_norm in ((True, True), (False, True), (True, False)):
        block = SwinTransformerV2Block(16, (8, 8), 2, (4, 4), (2, 2), qkv_bias=qkv_bias, extra_norm=extra_norm)
        weights = block.weights()
        assert len(weights) == len(BlockWeights.fields)
        named = list(named_weights(weights, BlockWeights))
        assert all(name == tensor.name for name, tensor in named)
        assert sorted(name for name, _ in named) == sorted(p.name for p in block.trainable_params())
        attn = weights[BlockWeights.attn]
        assert (attn[AttentionWeights.q_bias] is None) == (attn[AttentionWeights.v_bias] is None) == (not qkv_bias)
        assert (weights[BlockWeights.norm3] is None) == (not extra_norm)
