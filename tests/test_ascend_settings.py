"""Ascend settings checked on CPU: block-reuse keys, the JitConfig a run attaches, the GELU kernel choice.

Lazy-inlined cells cannot compile on MindSpore 2.10's CPU backend, so block reuse is tested
through the key ``mindspore.lazy_inline`` forms at construction (``cell_init_args``) and
through :class:`SharedGraphBlock`, the same block without the decorator.
"""
import inspect
import logging

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops

import mindswin
from mindswin.amp import apply_amp
from mindswin.config import ConfigError, load_config
from mindswin.engine import runtime
from mindswin.engine.builder import model_from_config
from mindswin.models import attention_paths, layers, list_models, model_spec, swin_v2
from mindswin.models.kernel_library import cpu_kernels
from mindswin.models.swin_v2 import (
    BasicLayer,
    BlockConfig,
    ReusedSwinTransformerV2Block,
    SharedGraphBlock,
    block_reuse_key,
    reuse_keys,
)

from helpers import MICRO_MS, randomize

_PREFIX = "lazy_inline_ReusedSwinTransformerV2Block"


@pytest.fixture
def ascend_context(monkeypatch):
    """``ms.get_context('device_target')`` answers Ascend (construction only: nothing is compiled)."""
    original = ms.get_context
    monkeypatch.setattr(ms, "get_context", lambda key: "Ascend" if key == "device_target" else original(key))


def _block(drop_path, shift=(0, 0), dim=96):
    return ReusedSwinTransformerV2Block(dim, (16, 16), 3, (8, 8), shift, drop_path=drop_path)


def test_blocks_of_one_shape_share_the_lazy_inline_key():
    first, second = _block(0.01), _block(0.09)
    assert first.cell_init_args == second.cell_init_args
    assert first.cell_init_args == _PREFIX + str(block_reuse_key(BlockConfig(96, (16, 16), 3, (8, 8), (0, 0),
                                                                             drop_path=0.01)))
    assert (first.drop_path_rate, second.drop_path_rate) == (0.01, 0.09)
    # what shapes the graph still separates keys
    assert _block(0.01, shift=(4, 4)).cell_init_args != first.cell_init_args
    assert _block(0.01, dim=192).cell_init_args != first.cell_init_args
    assert _block(0.0).cell_init_args != first.cell_init_args  # no stochastic depth at all: another graph


def test_reuse_keys_are_the_keys_of_the_built_blocks(ascend_context):
    geometry = dict(MICRO_MS, depths=[1, 3, 1])  # stage 1: blocks 0 and 2 have one shape
    model = mindswin.create_model("swinv2_tiny_window8_256", **geometry, drop_path_rate=0.2, reuse_blocks=True)
    built = [block.cell_init_args for layer in model.layers for block in layer.blocks]
    planned = reuse_keys(**{**model_spec("swinv2_tiny_window8_256").model_kwargs(), **geometry},
                         drop_path_rate=0.2)
    assert built == [_PREFIX + str(key) for key in planned]
    rates = [block.drop_path_rate for layer in model.layers for block in layer.blocks]
    assert rates == pytest.approx(np.linspace(0, 0.2, len(rates)).tolist())
    assert (len(built), len(set(built))) == (5, 4)


def test_swin_t_block_reuse_keys_name_7_graphs_for_12_blocks():
    keys = reuse_keys(**model_spec("swinv2_tiny_window8_256").model_kwargs(), drop_path_rate=0.2)
    assert (len(keys), len(set(keys))) == (12, 7)


def test_every_variant_reuses_blocks():
    for name in list_models():
        kwargs = model_spec(name).model_kwargs()
        trained, evaluated = reuse_keys(**kwargs, drop_path_rate=0.2), reuse_keys(**kwargs, drop_path_rate=0.0)
        assert len(set(trained)) == len(set(evaluated)) <= 7, name
        assert len(set(trained)) < len(trained), name


def _layers(drop_path, monkeypatch):
    """A plain stage and the same stage of shared-graph blocks (rate as an input), equal weights."""
    # dim 32, an 8x8 map, 4 heads, window 4, the second block shifted
    blocks = [BlockConfig(32, (8, 8), 4, (4, 4), (0, 0) if i % 2 == 0 else (2, 2), drop_path=rate)
              for i, rate in enumerate(drop_path)]
    plain = BasicLayer(blocks, downsample=False)
    monkeypatch.setattr(swin_v2, "ReusedSwinTransformerV2Block", SharedGraphBlock)
    shared = BasicLayer(blocks, downsample=False, reuse_blocks=True)
    randomize(plain)
    ms.load_param_into_net(shared, {p.name: p for p in plain.get_parameters()}, strict_load=True)
    return plain, shared


def test_shared_graph_blocks_equal_plain_blocks_in_eval(monkeypatch):
    plain, shared = _layers([0.1, 0.3], monkeypatch)
    assert [float(k.asnumpy()) for k in shared.keep_probs] == pytest.approx([0.9, 0.7])
    x = Tensor(np.random.default_rng(0).standard_normal((2, 8, 8, 32)).astype(np.float32))
    np.testing.assert_allclose(shared(x).asnumpy(), plain(x).asnumpy(), rtol=1e-5, atol=1e-5)
    shared.set_train(True)
    assert shared(x).shape == (2, 8, 8, 32)  # the train graph (keep probabilities as inputs) compiles and runs


def test_input_rate_drop_path_keeps_with_the_given_probability():
    drop = layers.InputRateDropPath()
    drop.set_train(True)
    out = drop(Tensor(np.ones((4000, 1, 1), np.float32)), Tensor(0.7, ms.float32)).asnumpy()
    kept = out != 0
    assert abs(kept.mean() - 0.7) < 0.04
    np.testing.assert_allclose(out[kept], 1 / 0.7, rtol=1e-6)
    drop.set_train(False)
    assert (drop(Tensor(np.ones((8, 1, 1), np.float32)), Tensor(0.5, ms.float32)).asnumpy() == 1).all()


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
def test_ascend_cells_get_the_jit_config(level):
    config = load_config(overrides={"device_target": "Ascend", "jit_level": level, "reuse_blocks": False,
                                    "model": "swinv2_micro_window4_32"})
    model, _ = model_from_config(config, 10, training=False)
    assert model.jit_config_dict["jit_level"] == level
    # O0/O1 kernel by kernel; O2 sinks the whole graph through GE, as mindcv compiles it
    assert model.jit_config_dict["backend"] == ("GE" if level == "O2" else "ms_backend")
    step = ms.nn.Cell()
    assert runtime.apply_jit_config(step, config) is step and step.jit_config_dict["jit_level"] == level


def test_jit_config_is_a_no_op_on_cpu(caplog):
    config = load_config(overrides={"model": "swinv2_micro_window4_32"})
    assert config.jit_level == "O0" and runtime.jit_config(config) is None
    model, _ = model_from_config(config, 10, training=False)
    assert not model.jit_config_dict
    assert not [r for r in caplog.records if "jit" in r.getMessage().lower()]


@pytest.mark.parametrize("device", ["Ascend", "CPU"])
def test_deprecated_jit_level_o2_is_offered_with_one_line(device, caplog):
    config = load_config(overrides={"device_target": device, "jit_level": "O2", "reuse_blocks": False})
    with caplog.at_level(logging.INFO, logger="mindswin"):
        runtime.say_jit_level(config)
    lines = [r for r in caplog.records if "jit_level O2" in r.getMessage()]
    assert len(lines) == 1 and "deprecated by MindSpore since 2.9" in lines[0].getMessage()
    assert lines[0].levelno == (logging.WARNING if device == "Ascend" else logging.INFO)
    assert (runtime.jit_config(config) is None) == (device == "CPU")


def test_gelu_is_one_kernel_on_ascend_only(ascend_context):
    with cpu_kernels(False):
        mlp = layers.Mlp(8, 16)
    assert isinstance(mlp.gelu_ext, layers.GeluExt)


def test_gelu_on_cpu_keeps_its_paths():
    with cpu_kernels(False):
        assert layers.Mlp(8, 16).gelu_ext is None
    with cpu_kernels(True):
        mlp = layers.Mlp(8, 16)
    assert mlp.gelu_ext is None and mlp.gelu is not None


def test_ascend_keeps_every_operator_dtype_and_refuses_bfloat16_on_910a(monkeypatch):
    from mindspore.device_context.ascend import op_precision

    calls = {}
    for name in ("precision_mode", "matmul_allow_hf32", "conv_allow_hf32"):
        monkeypatch.setattr(op_precision, name, lambda value, name=name: calls.__setitem__(name, value))
    soc = {"version": "ascend910b"}
    monkeypatch.setattr(runtime, "config_soc_version", lambda config: soc["version"])
    for amp in ({"amp_level": "O0"}, {"amp_level": "O2", "amp_dtype": "float16"},
                {"amp_level": "O2", "amp_dtype": "bfloat16"}):
        calls.clear()
        settings = runtime.apply_ascend_precision(load_config(overrides={"device_target": "Ascend", **amp}))
        # float32 stays float32 (no fp16/HF32 lowering by the device): the explicit casts decide alone
        assert calls == {"precision_mode": "must_keep_origin_dtype", "matmul_allow_hf32": False,
                         "conv_allow_hf32": False} == settings.__dict__
    soc["version"] = "ascend910"
    with pytest.raises(ConfigError, match="910A has no bfloat16"):
        runtime.apply_ascend_precision(load_config(overrides={"device_target": "Ascend", "amp_level": "O2",
                                                              "amp_dtype": "bfloat16"}))
    assert runtime.apply_ascend_precision(load_config(overrides={"device_target": "Ascend", "amp_level": "O2",
                                                                 "amp_dtype": "float16"})) is not None
    calls.clear()
    assert runtime.apply_ascend_precision(load_config(overrides={"device_target": "CPU"})) is None and not calls


def _record_op_precision(monkeypatch, soc: str) -> dict:
    """Stand-ins for the device-only precision setters and the SoC query; returns what gets set."""
    from mindspore.device_context.ascend import op_precision

    calls = {}
    for name in ("precision_mode", "matmul_allow_hf32", "conv_allow_hf32"):
        monkeypatch.setattr(op_precision, name, lambda value, name=name: calls.__setitem__(name, value))
    monkeypatch.setattr(runtime, "config_soc_version", lambda config: soc)
    return calls


@pytest.mark.parametrize("amp", [{"amp_level": "O0"}, {"amp_level": "O2", "amp_dtype": "float16"}])
def test_910a_computes_float32_matmuls_in_float16_and_says_so_in_one_line(amp, monkeypatch, caplog):
    # CANN: KEEP_DTYPE float32 matmuls raise on Atlas training series; MindSpore's default there lowers them
    calls = _record_op_precision(monkeypatch, "ascend910")
    config = load_config(overrides={"device_target": "Ascend", **amp})
    with caplog.at_level(logging.INFO, logger="mindswin"):
        settings = runtime.apply_ascend_precision(config)
    assert calls == {"precision_mode": "allow_fp32_to_fp16", "matmul_allow_hf32": False,
                     "conv_allow_hf32": False} == settings.__dict__
    lines = [r for r in caplog.records if "910A" in r.getMessage()]
    assert len(lines) == 1 and "\n" not in lines[0].getMessage()
    if amp["amp_level"] == "O0":  # asked for float32, gets float16 matmuls: said as a warning
        assert "amp_level O0 computes every matmul in float16" in lines[0].getMessage()
        assert lines[0].levelno == logging.WARNING
    else:
        assert "float32 matmuls run in float16" in lines[0].getMessage()


def test_910b_keeps_float32_matmuls_and_says_nothing(monkeypatch, caplog):
    calls = _record_op_precision(monkeypatch, "ascend910b")
    with caplog.at_level(logging.INFO, logger="mindswin"):
        runtime.apply_ascend_precision(load_config(overrides={"device_target": "Ascend", "amp_level": "O0"}))
    assert calls["precision_mode"] == "must_keep_origin_dtype"
    assert not [r for r in caplog.records if "float16" in r.getMessage()]


def test_flash_attention_is_refused_on_910a_before_anything_is_set(monkeypatch):
    # CANN's aclnnFlashAttentionScore: not on Atlas training series (910A), on Atlas A2 (910B)
    config = load_config(overrides={"device_target": "Ascend", "amp_level": "O2", "flash_attention": True,
                                    "reuse_blocks": False})
    calls = _record_op_precision(monkeypatch, "ascend910")
    with pytest.raises(ConfigError, match="FlashAttentionScore runs on Atlas A2 .* not on this Ascend 910A") as error:
        runtime.apply_ascend_precision(config)
    assert "\n" not in str(error.value) and not calls  # refused before the device is given any setting
    calls = _record_op_precision(monkeypatch, "ascend910b")
    assert runtime.apply_ascend_precision(config).precision_mode == "must_keep_origin_dtype"


def _sink_data():
    """A dataset for the sink whose arguments alone are checked, and its info (no training order of its own)."""
    from types import SimpleNamespace

    import mindspore.dataset as ds

    return ds.NumpySlicesDataset({"x": np.zeros((4, 2), np.float32)}, shuffle=False).batch(2), \
        SimpleNamespace(sampler=None, batch_size=2)


def test_data_sink_compiles_the_step_under_strict_syntax(monkeypatch):
    """The sunk step compiles as MindSpore's ``data_sink`` compiles it (``train/data_sink.py``,
    ``_get_jit_func``: ``jit(..., fullgraph=True)`` only for a JitConfig saying STRICT), here with a
    stand-in ``jit`` that records its arguments."""
    import importlib
    from types import SimpleNamespace

    from mindswin.engine.trainer import sinking_step

    # mindspore.train exports the data_sink function under the module's name: the module by its path
    sink_module = importlib.import_module("mindspore.train.data_sink")
    passed = {}
    monkeypatch.setattr(ms, "data_sink", lambda fn, dataset, **kwargs: passed.update(kwargs) or "sunk")
    config = load_config(overrides={"device_target": "Ascend", "dataset_sink_mode": True, "reuse_blocks": False})
    data, info = _sink_data()
    assert sinking_step(config, SimpleNamespace(step="the train step"), data, info) == "sunk"
    compiled = {}
    monkeypatch.setattr(sink_module, "jit", lambda fn, **kwargs: compiled.update(kwargs) or fn)
    sink_module._get_jit_func(lambda: None, passed["jit_config"])
    assert passed["jit_config"].jit_config_dict["jit_syntax_level"] == "STRICT"
    assert compiled["fullgraph"] is True


def test_reused_block_construct_takes_no_defaults():
    # lazy_inline's documented restriction; MindSpore 2.10 checks it at the first construction and
    # marks the decorated __init__ with has_tips_ (logged at INFO only), so the mark is asked too
    _block(0.1)
    parameters = list(inspect.signature(ReusedSwinTransformerV2Block.construct).parameters.values())[1:]
    assert [p.name for p in parameters] == ["x", "keep_prob", "path_noise"]
    assert all(p.default is inspect.Parameter.empty and p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
               for p in parameters)
    assert not getattr(ReusedSwinTransformerV2Block.__init__.__wrapped__, "has_tips_", False)


@pytest.mark.parametrize("device", ["Ascend", "GPU", "CPU"])
def test_dataset_sink_mode_sinks_one_step_per_call_where_mindspore_can(device, monkeypatch, caplog):
    # mindspore.data_sink refuses CPU, so on CPU only the arguments the Ascend/GPU path passes are checked
    from types import SimpleNamespace

    from mindswin.engine.trainer import sinking_step

    calls = []
    monkeypatch.setattr(ms, "data_sink", lambda fn, dataset, **kwargs: calls.append((fn, dataset, kwargs)) or "sunk")
    config = load_config(overrides={"device_target": device, "dataset_sink_mode": True, "jit_level": "O2",
                                    "reuse_blocks": False})
    training = SimpleNamespace(step="the train step")
    data, info = _sink_data()
    with caplog.at_level(logging.INFO, logger="mindswin"):
        result = sinking_step(config, training, data, info)
    if device == "CPU":
        assert result is None and not calls
        assert "fed from the host (MindSpore has no data sink on CPU)" in caplog.text
        return
    assert result == "sunk"
    (fn, dataset, kwargs), = calls
    assert (fn, dataset, kwargs["sink_size"]) == ("the train step", data, 1)
    assert (kwargs["jit_config"] is None) == (device == "GPU")
    if device == "Ascend":
        assert kwargs["jit_config"].jit_config_dict["jit_level"] == "O2"
    assert sinking_step(load_config(overrides={"device_target": device, "reuse_blocks": False}), training,
                        data, info) is None


def _streaming_data_sink(fn, dataset, sink_size=1, jit_config=None, input_signature=None):
    """MindSpore 2.10's ``data_sink`` as the dataset meets it, on CPU (``train/data_sink.py``, ``train/_utils.py``).

    It reads the dataset's size and its column types and shapes (``_init_sink_dataset``), the
    batch size, types and shapes again (``_exec_datagraph``), then sends the dataset to the
    device without end (``transfer_dataset.send(-1)``): pass after pass, and each call of
    the returned function runs ``fn`` on the next batch (``GetNext``), across passes.
    """
    from mindspore.train._utils import _get_types_and_shapes

    assert sink_size == 1
    dataset.get_dataset_size()
    _get_types_and_shapes(dataset)
    dataset.get_batch_size()
    _get_types_and_shapes(dataset)
    passes = dataset.create_tuple_iterator(num_epochs=-1, output_numpy=True)

    def endless():
        while True:
            yield from passes  # each pass ends with StopIteration; the next call starts the next pass

    batches = endless()
    return lambda: fn(*next(batches))


def _batch_digest(*columns) -> str:
    import hashlib

    return hashlib.sha1(b"".join(np.ascontiguousarray(c).tobytes() for c in columns)).hexdigest()[:12]


@pytest.fixture(scope="module")
def ten_images(tmp_path_factory):
    """A 10-image training split: with batch 3, three whole batches and one dropped sample per epoch."""
    from mindswin.data import make_demo_dataset, scan_split

    root = tmp_path_factory.mktemp("ten")
    make_demo_dataset(str(root), num_classes=2, train_per_class=5, val_per_class=1, image_size=16)
    return scan_split(str(root / "train"))


def _train_data(index, start):
    from mindswin.data import Mixup, create_train_dataset
    from mindswin.data.dataset import StartPoint
    from mindswin.data.transforms import TrainAugment

    augment = TrainAugment(16, seed=7, device=True, re_prob=0.5)
    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=2)
    return create_train_dataset(index, augment, mixer, 3, seed=7, start=StartPoint(*start), num_workers=1,
                                multiprocessing=False)


@pytest.mark.parametrize("start", [(0, 0), (0, 1), (1, 2), (2, 1)])
def test_the_sink_trains_the_uninterrupted_runs_batches_after_any_resume_point(ten_images, start, monkeypatch):
    """The sink streams without end, so the batches of a run resumed at ``start`` (epoch, batch)
    must be the uninterrupted run's from there on, across epoch boundaries; the uninterrupted
    run is the host loop's (one pass per epoch, as ``train_one_epoch`` takes them)."""
    from types import SimpleNamespace

    from mindswin.engine.trainer import sinking_step

    epochs, per_epoch = 4, 3
    host = _train_data(ten_images, (0, 0))[0]
    uninterrupted = [_batch_digest(*batch) for _ in range(epochs)
                     for batch in host.create_tuple_iterator(num_epochs=1, output_numpy=True)]
    assert len(uninterrupted) == epochs * per_epoch and len(set(uninterrupted)) == len(uninterrupted)
    monkeypatch.setattr(ms, "data_sink", _streaming_data_sink)
    config = load_config(overrides={"device_target": "Ascend", "dataset_sink_mode": True, "reuse_blocks": False})
    step = sinking_step(config, SimpleNamespace(step=_batch_digest), *_train_data(ten_images, start))
    first = start[0] * per_epoch + start[1]
    assert [step() for _ in range(len(uninterrupted) - first)] == uninterrupted[first:]


def test_flash_attention_is_refused_off_ascend_and_in_float32():
    with pytest.raises(ConfigError, match="Atlas A2.*device_target is CPU.*flash_attention: False"):
        load_config(overrides={"device_target": "CPU", "flash_attention": True})
    with pytest.raises(ConfigError, match="float16 or bfloat16.*amp_level O2"):
        load_config(overrides={"device_target": "Ascend", "amp_level": "O0", "flash_attention": True,
                               "reuse_blocks": False})
    assert load_config(overrides={"device_target": "Ascend", "amp_level": "O2", "flash_attention": True,
                                  "reuse_blocks": False}).flash_attention
    with pytest.raises(ValueError, match="device_target is CPU"):
        swin_v2.use_flash_attention(mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS))


def test_flash_attention_refuses_attention_dropout_and_head_sizes_the_op_refuses(ascend_context):
    with pytest.raises(ValueError, match="attn_drop_rate 0"):
        swin_v2.use_flash_attention(mindswin.create_model("swinv2_tiny_window8_256", attn_drop_rate=0.1,
                                                          **{**MICRO_MS, "embed_dim": 32}))
    with pytest.raises(ValueError, match="multiple of 16, this model's is 12"):
        swin_v2.use_flash_attention(mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS))


def test_flash_attention_calls_the_op_as_documented_in_unshifted_blocks(monkeypatch):
    """FlashAttentionScore replaced by its documented computation, ``softmax(scalar_value * q k^T +
    real_shift) v`` in float32 from the given operands, recording each call (PyNative: the record runs).

    Checks what mindswin passes (BNSD layout, the heads, a (1, heads, N, N) real_shift in q's dtype,
    scale 1) and where (unshifted blocks under AMP O2 only). The op's numbers are Ascend's to check."""
    calls = []

    def documented(query, key, value, head_num, real_shift=None, scalar_value=1.0, input_layout="BSH"):
        calls.append((tuple(query.shape), query.dtype, head_num, tuple(real_shift.shape), real_shift.dtype,
                      scalar_value, input_layout))
        logits = ops.matmul(query, key.swapaxes(-1, -2)).astype(ms.float32) * scalar_value
        probs = ops.softmax(logits + real_shift.astype(ms.float32), axis=-1)
        return ops.matmul(probs.astype(value.dtype), value)

    monkeypatch.setattr(attention_paths, "flash_attention_score", documented)
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        with cpu_kernels(False):
            # head size 16: the op takes multiples of 16 (the micro model's is 12)
            model = randomize(mindswin.create_model("swinv2_tiny_window8_256", **{**MICRO_MS, "embed_dim": 32}))
        apply_amp(model, "O2")
        original = ms.get_context
        with monkeypatch.context() as ascend:  # the switch only: the model was built for CPU and runs there
            ascend.setattr(ms, "get_context", lambda key: "Ascend" if key == "device_target" else original(key))
            switched = swin_v2.use_flash_attention(model)
        x = Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
        logits = model(x).asnumpy()
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    blocks = [block for layer in model.layers for block in layer.blocks]
    assert switched == len(blocks)
    unshifted = [block for block in blocks if block.attn_mask_factors is None]
    assert 0 < len(unshifted) < len(blocks)  # the micro model has shifted blocks, which keep the other path
    assert len(calls) == len(unshifted)
    for block, (q_shape, q_dtype, heads, shift_shape, shift_dtype, scale, layout) in zip(unshifted, calls):
        n = block.attn.window_area
        assert q_shape[1:] == (block.attn.num_heads, n, block.attn.head_dim) and heads == block.attn.num_heads
        assert (shift_shape, shift_dtype, q_dtype) == ((1, heads, n, n), ms.float16, ms.float16)
        assert (scale, layout) == (1.0, "BNSD")
    assert np.isfinite(logits).all()
class _StatusRegister(nn.Cell):
    """Stand-in for the Ascend overflow status register as ``NPUGetFloatStatusV2`` / ``NPUClearFloatStatusV2``
    document it (ops/operations/math_ops.py): eight int32 flags, nonzero from an overflow until cleared."""

    def __init__(self) -> None:
        super().__init__()
        self.flags = ms.Parameter(Tensor(np.zeros(8, np.int32)), name="overflow_status", requires_grad=False)

    def raise_flag(self) -> None:
        """An overflow on the device outside the step (the optimizer/EMA tail, a float16 validation pass)."""
        self.flags.set_data(Tensor(np.ones(8, np.int32)))


class _ClearStatus(nn.Cell):
    """``NPUClearFloatStatusV2()``: zeroes the register; its (8,) int32 output means nothing."""

    def __init__(self, register: _StatusRegister) -> None:
        super().__init__()
        self.register = register

    def construct(self, x):
        return ops.depend(x, ops.assign(self.register.flags, ops.zeros_like(self.register.flags)))


class _StatusAllFinite(nn.Cell):
    """``ms.amp.all_finite`` on a 910A (mindspore/amp.py, ``_all_finite``): reads the register after the
    gradients (``NPUGetFloatStatusV2``), clears it, and answers whether it was all zero. The backward's
    own overflows, which the device writes to the register as they happen, are added at the read, as
    gradients that came out non-finite: a user ``bprop`` cannot write a Parameter in MindSpore 2.10."""

    def __init__(self, register: _StatusRegister) -> None:
        super().__init__()
        self.register = register

    def construct(self, grads):
        overflowed = ops.zeros((), ms.int32)
        for grad in grads:
            overflowed = overflowed + ops.logical_not(ops.isfinite(grad).all()).astype(ms.int32)
        status = self.register.flags + overflowed
        cleared = ops.assign(self.register.flags, ops.zeros_like(status))
        return ops.depend((status == 0).all(), cleared)


class _OverflowingForward(nn.Cell):
    """Identity that, when ``trigger`` is set, raises the register's flag: an overflow in the step's forward."""

    def __init__(self, register: _StatusRegister) -> None:
        super().__init__()
        self.register = register
        self.trigger = ms.Parameter(Tensor(0, ms.int32), name="forward_overflows", requires_grad=False)

    def construct(self, x):
        return ops.depend(x, ops.assign(self.register.flags, ops.maximum(self.register.flags, self.trigger)))


class _AnswersLike:
    """``MSContext.get_instance()`` of an Ascend SoC: the features MindSpore's amp asks (mindspore/amp.py)."""

    def __init__(self, features) -> None:
        self.features = set(features)

    def get_instance(self):
        return self

    def ascend_soc_supports_feature(self, feature: str) -> bool:
        return feature in self.features


_910A = ("amp_loss_scale_train_classic_target",)
_910B = ("train_hq_dtype_line",)


@pytest.mark.parametrize("soc, mode, clears", [(_910A, None, True), (_910A, "SATURATION_MODE", True),
                                               (_910B, None, False), (_910B, "INFNAN_MODE", False),
                                               (_910B, "SATURATION_MODE", True)])
def test_the_step_clears_the_overflow_status_where_all_finite_reads_it(soc, mode, clears, ascend_context,
                                                                       monkeypatch):
    # the conditions of amp._all_finite and of the loss-scale cell's start_overflow_check
    from mindswin.engine import train_step

    monkeypatch.setattr(train_step, "MSContext", _AnswersLike(soc), raising=False)
    if mode is None:
        monkeypatch.delenv("MS_ASCEND_CHECK_OVERFLOW_MODE", raising=False)
    else:
        monkeypatch.setenv("MS_ASCEND_CHECK_OVERFLOW_MODE", mode)
    assert train_step.overflow_status_register_in_use() is clears


def _tiny_step(scaler, probe=None):
    from mindswin.engine.optim import AdamW
    from mindswin.engine.train_step import NetWithLoss, SoftTargetCrossEntropy, TrainStep

    model = nn.Dense(4, 3)
    head = model if probe is None else nn.SequentialCell([model, probe])
    optimizer = AdamW(model.trainable_params(), 0.0, set())
    return TrainStep(model, optimizer, Tensor(np.full(8, 1e-2, np.float32)), scaler, clip_value=None,
                     loss_network=NetWithLoss(head, SoftTargetCrossEntropy()))


def test_cpu_steps_build_no_overflow_status_op(monkeypatch):
    from mindswin.engine import train_step

    monkeypatch.setattr(train_step, "MSContext", _AnswersLike(_910A), raising=False)  # never asked off Ascend
    assert train_step.overflow_status_register_in_use() is False
    assert _tiny_step(ms.amp.StaticLossScaler(1.0)).scaled_loss.clear_status is None


def test_910a_step_counts_the_overflows_of_its_backward_only(monkeypatch):
    """On a 910A ``all_finite`` reads the status register. An overflow raised after the last step's
    read (a float16 validation pass) or in the step's forward, which no loss scale can prevent, must
    neither skip the step nor halve the scale; one in the step's backward must. The register is
    cleared where MindSpore's loss-scale cell clears it: after the loss, before the gradients
    (``start_overflow_check``). Device-only ops replaced by stand-ins that follow their documents; the
    graph runs on CPU."""
    from mindswin.engine import train_step

    register = _StatusRegister()
    forward = _OverflowingForward(register)
    monkeypatch.setattr(train_step, "MSContext", _AnswersLike(_910A), raising=False)
    monkeypatch.setattr(train_step, "NPUClearFloatStatusV2", lambda: _ClearStatus(register), raising=False)
    monkeypatch.setattr(ms.amp, "all_finite", _StatusAllFinite(register))
    scaler = ms.amp.DynamicLossScaler(1024.0, 2, 1000)
    original = ms.get_context
    with monkeypatch.context() as ascend:  # the step is built as on a 910A, and runs on CPU
        ascend.setattr(ms, "get_context", lambda key: "Ascend" if key == "device_target" else original(key))
        step = _tiny_step(scaler, forward)
    rng = np.random.default_rng(0)
    batch = Tensor(rng.standard_normal((2, 4)).astype(np.float32)), Tensor(np.eye(3, dtype=np.float32)[[0, 2]])

    def applied(gain: float = 1.0) -> bool:
        before = int(step.optimizer.step.asnumpy())
        finite = bool(step(batch[0] * gain, batch[1])[1].asnumpy())
        assert finite == (int(step.optimizer.step.asnumpy()) == before + 1)
        return finite

    register.raise_flag()  # before the first step
    assert applied()
    register.raise_flag()  # between two steps
    assert applied() and float(scaler.scale_value.asnumpy()) == 1024.0
    forward.trigger.set_data(Tensor(1, ms.int32))
    assert applied()
    forward.trigger.set_data(Tensor(0, ms.int32))
    assert not register.flags.asnumpy().any()  # all_finite clears after its read

    scaler.scale_value.set_data(Tensor(2.0 ** 120, ms.float32))
    assert not applied(gain=1e6) and float(scaler.scale_value.asnumpy()) == 2.0 ** 119  # the backward overflowed


def test_data_workers_fit_the_cores_msrun_bind_core_leaves_the_process(monkeypatch):
    # msrun --bind_core=True starts each worker under `taskset -c` with its share of the cores (MindSpore 2.10,
    # parallel/cluster/process_entity/_utils.py, _generate_cmd); os.cpu_count() still counts the machine's
    from mindswin.data import dataset

    monkeypatch.setattr(dataset.os, "cpu_count", lambda: 192)
    monkeypatch.setattr(dataset.os, "sched_getaffinity", lambda pid: set(range(24)), raising=False)
    assert dataset.python_workers(8) == 8
    assert dataset.python_workers(32) == 24  # mindcv's recipes ask 8; more than the share would contend for it
    assert dataset.python_workers(0) == 1


def _device_check():
    """``tools/device_check.py`` as a module (tools/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "device_check.py"
    spec = importlib.util.spec_from_file_location("device_check", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("device_check", module)  # dataclasses look their module up there
    spec.loader.exec_module(sys.modules["device_check"])
    return sys.modules["device_check"]


def test_device_check_bound_grows_with_float16_roundings_and_steps():
    check = _device_check()
    micro, tiny = check.MODELS["micro"], check.MODELS["tiny"]
    assert (micro.depth, tiny.depth) == (6 * 6 + 4, 6 * 12 + 5)  # 6 matmuls a block, stem, mergings, head
    assert check.loss_bound(micro, 0) == pytest.approx(4 * np.sqrt(40) * 2.0 ** -11)
    assert check.loss_bound(micro, 11) == pytest.approx(12 * check.loss_bound(micro, 0))
    assert check.loss_bound(tiny, 0) > check.loss_bound(micro, 0)
    assert check.loss_bound(micro, 0, "bfloat16") == pytest.approx(8 * check.loss_bound(micro, 0))
    # within: relative bound plus the log line's printing; exact (CPU against CPU): equal as printed
    reference = 1.3863
    allowed = check.loss_bound(micro, 3) * reference + check.PRINTED
    assert check.within_bound(micro, 3, reference + 0.99 * allowed, reference, exact=False)
    assert not check.within_bound(micro, 3, reference + 1.01 * allowed, reference, exact=False)
    assert not check.within_bound(micro, 3, reference + 1e-4, reference, exact=True)
    assert check.within_bound(micro, 3, reference, reference, exact=True)


def test_device_check_reads_train_logs_and_its_arguments():
    check = _device_check()
    log = ("12:00:01 INFO epoch 1/3 step 1/4 loss 1.3863 lr 1.000e-05 loss_scale 65536 grad_norm 0.1 9.0 img/s ETA\n"
           "12:00:02 INFO epoch 2/3 step 3/4 loss 1.2000 lr 1.000e-03 loss_scale 65536 grad_norm 0.1 9.0 img/s ETA\n")
    assert check.parse_losses(log) == {(1, 1): 1.3863, (2, 3): 1.2}
    args = check.parse_args([])
    assert args.device == "auto" and [m.name for m in args.models] == ["swinv2_micro_window4_32",
                                                                       "swinv2_tiny_window8_256"]
    assert [m.batch_size for m in check.parse_args(["--device", "GPU", "--models", "tiny"]).models] == [2]
    with pytest.raises(SystemExit):
        check.parse_args(["--models", "huge"])
    with pytest.raises(SystemExit):
        check.parse_args(["--device", "TPU"])
    # the runs use the project's own keys: every flag train.py is given is one of its config keys
    from mindswin.config.keys import DEFAULTS

    flags = [a[2:] for a in check.train_args(check.MODELS["micro"], "data", "CPU", "out") if a.startswith("--")]
    assert set(flags) <= set(DEFAULTS) and "dataset_sink_mode" in flags and "resume_save_steps" in flags
