"""mindcv's own Swin V2 weights load into mindswin and compute what mindcv's model computes."""
import json
import math
import os

import mindspore as ms
import numpy as np
import pytest
from mindcv.models.swintransformerv2 import SwinTransformerV2 as MindcvSwinV2
from mindcv.optim import create_optimizer
from mindspore import nn

import mindswin
from mindswin.checkpoint import load_checkpoint, read_metadata

from helpers import read_metrics, run

# swinv2_micro_window4_32: 32 px, patch 2, dim 48, depths 2-2-2, heads 3-6-12, window 4
MICRO = dict(image_size=32, patch_size=2, embed_dim=48, depths=[2, 2, 2], num_heads=[3, 6, 12], window_size=4,
             num_classes=4, pretrained_window_sizes=[0, 0, 0], drop_path_rate=0.0)
# Float32 round-off bound for these logits. Both sides are float32 MindSpore on one CPU and differ
# only in operation order (fused q/k/v vs three Dense, rsqrt vs L2Normalize, fused softmax/bias
# kernels): each of the 6 blocks' ~10 reductions (length <= 4 * 192) can move a value by a few
# ulps relative to its magnitude, sharpened by softmaxes with logit scales up to 100. The
# project's timm parity bound (tests/test_parity.py) is the same 1e-4 on logits of this size;
# measured here: ~1e-6 (AVX-512). The check below also requires the difference to sit far under
# what the numerics change (official epsilon and erf GELU on the same weights), or it proves nothing.
TOLERANCE = 1e-4


def _mindcv_model(seed: int = 0) -> nn.Cell:
    """mindcv 0.3.0's own model with non-trivial weights (scales away from init, post-norms away from 1)."""
    model = MindcvSwinV2(**MICRO)
    rng = np.random.default_rng(seed)
    for p in model.trainable_params():
        if "logit_scale" in p.name:
            value = rng.uniform(math.log(10) - 1, math.log(100) + 1, p.shape)
        elif p.name.endswith(".gamma"):
            value = 1 + 0.3 * rng.standard_normal(p.shape)
        else:
            value = 0.05 * rng.standard_normal(p.shape)
        p.set_data(ms.Tensor(value.astype(np.float32)))
    model.set_train(False)
    return model


@pytest.fixture(scope="module")
def mindcv_files(tmp_path_factory):
    """mindcv's logits on one batch, and its weights saved both ways mindcv files come."""
    out = tmp_path_factory.mktemp("mindcv")
    model = _mindcv_model()
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    logits = model(ms.Tensor(x)).asnumpy()
    # 1. saved from the built model: MindSpore's bare names ("0.blocks.0...", "0.blocks.1.blocks.0...")
    ms.save_checkpoint(model, str(out / "fresh.ckpt"))
    # 2. as a trained run leaves it: "layers.i..." names (the cell paths), mindcv's AdamW moments
    #    and power terms, and EMA copies named as mindcv's TrainStep clones them ("ema.")
    optimizer = create_optimizer(model.trainable_params(), opt="adamw", lr=1e-3)
    entries = [{"name": name, "data": p} for name, p in model.parameters_and_names()]
    entries += [{"name": p.name, "data": p} for p in optimizer.get_parameters() if not p.name.startswith(
        tuple(name for name, _ in model.parameters_and_names()))]
    entries += [{"name": f"ema.{name}", "data": ms.Tensor(p.asnumpy() * 0.5)}
                for name, p in model.parameters_and_names()]
    ms.save_checkpoint(entries, str(out / "trained.ckpt"))
    return out, x, logits


def test_saved_names_are_the_two_mindcv_variants(mindcv_files):
    out = mindcv_files[0]
    fresh, trained = ms.load_checkpoint(str(out / "fresh.ckpt")), ms.load_checkpoint(str(out / "trained.ckpt"))
    assert "0.blocks.1.blocks.0.attn.q.weight" in fresh and "layers.1.blocks.0.attn.q.weight" in trained
    assert any(k.startswith("adam_m.") for k in trained) and "beta1_power" in trained
    assert any(k.startswith("ema.") for k in trained)


@pytest.mark.parametrize("filename", ["fresh.ckpt", "trained.ckpt"])
def test_mindcv_checkpoint_gives_mindcvs_logits(mindcv_files, filename):
    out, x, expected = mindcv_files
    model = mindswin.create_model("swinv2_micro_window4_32", num_classes=4)
    report = load_checkpoint(model, str(out / filename))
    assert report.layout == "mindcv" and report.numerics == "mindcv" and model.numerics == "mindcv"
    assert len(report.loaded) == len(model.state_shapes())
    assert any(k.endswith("attn_mask") for k in report.dropped) and \
        any(k.endswith("relative_position_index") for k in report.dropped)
    got = model(ms.Tensor(x)).asnumpy()
    control = mindswin.create_model("swinv2_micro_window4_32", num_classes=4, checkpoint_path=str(out / filename))
    control.set_numerics("official")  # same weights, official epsilons and GELU: what the choice changes
    official = control(ms.Tensor(x)).asnumpy()
    diff, numerics_effect = np.abs(got - expected).max(), np.abs(official - expected).max()
    print(f"{filename}: max |mindswin - mindcv| {diff:.2e}; official numerics would differ by {numerics_effect:.2e} "
          f"(logits up to {np.abs(expected).max():.2f})")
    assert diff <= TOLERANCE
    assert numerics_effect > 100 * diff


def test_mindcv_numerics_survive_conversion_and_inference(mindcv_files, data_dir, tmp_path):
    """Fine-tuning from a mindcv file keeps its numerics too: checked on the run of
    ``test_mindcvs_recipe_trains_as_written_with_its_absolute_lr``, which starts from one."""
    out, x, expected = mindcv_files
    converted = tmp_path / "converted.ckpt"
    result = run("tools/convert_weights.py", "--src", out / "trained.ckpt", "--model", "swinv2_micro_window4_32",
                 "--num_classes", "4", "--out", converted)
    assert "layout: mindcv" in result.stdout and "mindcv's numerics" in result.stdout
    assert read_metadata(str(converted)).numerics == "mindcv"
    model = mindswin.create_model("swinv2_micro_window4_32", num_classes=4, checkpoint_path=str(converted))
    assert np.abs(model(ms.Tensor(x)).asnumpy() - expected).max() <= TOLERANCE

    image = os.path.join(data_dir, "val", "checkerboard", sorted(os.listdir(os.path.join(data_dir, "val",
                                                                                          "checkerboard")))[0])
    result = run("infer.py", "--ckpt_path", out / "fresh.ckpt", "--model", "swinv2_micro_window4_32",
                 "--num_classes", "4", "--image_resize", "32", image)
    assert "layout: mindcv" in result.stdout + result.stderr


# mindcv's configs/swintransformerv2/swinv2_tiny_window8_ascend.yaml (mindspore-lab/mindcv), every key and value.
MINDCV_RECIPE = {
    "mode": 0, "distribute": True, "num_parallel_workers": 8, "val_while_train": True,
    "dataset": "imagenet", "data_dir": "/path/to/imagenet", "shuffle": True, "dataset_download": False,
    "batch_size": 128, "drop_remainder": True,
    "image_resize": 256, "scale": [0.08, 1.0], "ratio": [0.75, 1.333], "hflip": 0.5, "interpolation": "bicubic",
    "auto_augment": "randaug-m9-mstd0.5-inc1", "re_prob": 0.25, "crop_pct": 0.9, "mixup": 0.8, "cutmix": 1.0,
    "model": "swinv2_tiny_window8", "num_classes": 1000, "pretrained": False, "ckpt_path": "",
    "keep_checkpoint_max": 10, "ckpt_save_dir": "./ckpt", "epoch_size": 450, "drop_path_rate": 0.2,
    "dataset_sink_mode": True, "amp_level": "O2",
    "loss": "ce", "label_smoothing": 0.1,
    "scheduler": "cosine_decay", "lr": 0.001, "min_lr": 0.000001, "decay_epochs": 430, "warmup_epochs": 20,
    "opt": "adamw", "momentum": 0.9, "weight_decay": 0.05, "loss_scale": 1024, "use_nesterov": False,
}


@pytest.mark.slow
def test_mindcvs_recipe_trains_as_written_with_its_absolute_lr(mindcv_files, data_dir, tmp_path):
    """Fine-tunes a mindcv file as a mindcv user would, whose numerics the weights it saves keep (was the
    fine-tuning run of ``test_mindcv_numerics_survive_conversion_fine_tuning_and_inference``)."""
    import yaml
    from mindcv.scheduler import create_scheduler

    recipe = tmp_path / "swinv2_tiny_window8_ascend.yaml"
    recipe.write_text(yaml.safe_dump(MINDCV_RECIPE, sort_keys=False))
    out = tmp_path / "ckpt"
    # only what this machine forces: the CPU, one process, and sizes a 2-core test can train
    result = run("train.py", "-c", recipe, "--data_dir", data_dir, "--device_target", "CPU", "--distribute", "False",
                 "--num_parallel_workers", "1", "--model", "swinv2_micro_window4_32", "--image_resize", "32",
                 "--num_classes", "4", "--batch_size", "8", "--epoch_size", "1", "--ckpt_save_dir", out,
                 "--ckpt_path", mindcv_files[0] / "fresh.ckpt")
    log = result.stdout + result.stderr
    assert read_metadata(str(out / "swinv2_micro_window4_32-e0001.ckpt")).numerics == "mindcv"
    assert "peak lr 0.001," in log  # absolute: mindcv's lr, not scaled by the global batch 8 / 512
    assert log.count("dataset_sink_mode: the steps are fed from the host (MindSpore has no data sink on CPU)") == 1
    record = read_metrics(out)[-1]
    steps = record["optimizer_step"]
    assert steps == 96 // 8
    table = create_scheduler(steps, "cosine_decay", lr=0.001, min_lr=1e-6, warmup_epochs=20, decay_epochs=430,
                             num_epochs=450)
    # the last step's rate: one float32 rounding of mindcv's float64 value
    assert record["lr"] == pytest.approx(table[steps - 1], rel=2.0 ** -23)


def test_validate_takes_mindcvs_recipe_and_a_mindcv_checkpoint(mindcv_files, data_dir, tmp_path):
    import yaml

    recipe = tmp_path / "swinv2_tiny_window8_ascend.yaml"
    recipe.write_text(yaml.safe_dump(MINDCV_RECIPE, sort_keys=False))
    out = mindcv_files[0]
    # mindcv's form: python validate.py -c RECIPE --data_dir DIR --ckpt_path CKPT (+ this machine's sizes)
    result = run("validate.py", "-c", recipe, "--data_dir", data_dir, "--ckpt_path", out / "trained.ckpt",
                 "--device_target", "CPU", "--model", "swinv2_micro_window4_32", "--image_resize", "32",
                 "--num_classes", "4", "--output", tmp_path / "results.json")
    log = result.stdout + result.stderr
    assert "layout: mindcv" in log
    assert "distribute is True but this process was not started by msrun: evaluating on this one device" in log
    # the recipe's O2 is its training's: float16 on the CPU backend took several times the memory (issue 41)
    assert "evaluating in float32 on CPU: the recipe's amp_level O2 is its training's" in log
    with open(tmp_path / "results.json") as f:
        results = json.load(f)
    assert results["num_samples"] == 36 and 0.0 <= results["top1"] <= 100.0


def test_a_recipes_amp_level_is_evaluated_in_float32_on_cpu_unless_the_command_line_asks(mindcv_files, tmp_path):
    import yaml

    from mindswin.cli import _checkpoint_metadata
    from mindswin.config import load_config

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(dict(MINDCV_RECIPE, distribute=False), sort_keys=False))
    ckpt = str(mindcv_files[0] / "trained.ckpt")
    common = dict(device_target="CPU", model="swinv2_micro_window4_32", image_resize=32, num_classes=4,
                  ckpt_path=ckpt)

    def amp(computes_here=True, **overrides):
        config = load_config(str(recipe), {**common, **overrides}, defer_geometry=True)
        return _checkpoint_metadata(config, computes_here=computes_here)[0].amp_level

    assert amp() == "O0"  # validate / infer on CPU: float16 there cost several times the memory
    assert amp(amp_level="O2") == "O2"  # asked for on the command line
    assert amp(computes_here=False) == "O2"  # export: the graph runs where the recipe trains
    assert amp(device_target="Ascend") == "O2"


def test_bce_loss_is_mindcvs_binary_cross_entropy_on_the_same_soft_targets():
    from mindcv.loss import BinaryCrossEntropySmooth

    from mindswin.engine.train_step import classification_loss

    rng = np.random.default_rng(0)
    logits = ms.Tensor((3 * rng.standard_normal((8, 10))).astype(np.float32))
    # mixed, smoothed targets as the pipeline makes them (mindcv smooths in its Mixup as well)
    targets = rng.dirichlet(np.full(10, 0.3), size=8).astype(np.float32)
    ours = float(classification_loss("bce")(logits, ms.Tensor(targets)).asnumpy())
    theirs = float(BinaryCrossEntropySmooth(smoothing=0.0)(logits, ms.Tensor(targets)).asnumpy())
    x = logits.asnumpy().astype(np.float64)
    exact = np.mean(np.maximum(x, 0) - x * targets + np.log1p(np.exp(-np.abs(x))))
    # the same MindSpore kernel on both sides; float32 against float64: 80 terms of one rounding each
    assert ours == theirs
    assert ours == pytest.approx(exact, rel=1e-6)
    assert classification_loss("CE").__class__.__name__ == "SoftTargetCrossEntropy"


def test_a_mindcv_periodic_checkpoint_as_ckpt_path_says_the_epoch_is_not_continued(caplog):
    from mindswin.config import load_config
    from mindswin.engine.state import RunPosition
    from mindswin.engine.trainer import _say_where_mindcvs_epoch_goes

    config = load_config(overrides={"ckpt_path": "ckpt/swinv2_tiny_window8-120_625.ckpt"})
    with caplog.at_level("WARNING"):
        _say_where_mindcvs_epoch_goes(config, RunPosition())
        _say_where_mindcvs_epoch_goes(config, RunPosition(epoch=3, batch_in_epoch=0))  # resumed: nothing to say
        _say_where_mindcvs_epoch_goes(load_config(overrides={"ckpt_path": "swinv2-best.ckpt"}), RunPosition())
    assert [r.getMessage() for r in caplog.records] == [
        "ckpt/swinv2_tiny_window8-120_625.ckpt is named as a mindcv checkpoint of epoch 120: mindcv's train.py "
        "would continue its run at that epoch; here its weights start a new run at epoch 1 (a mindswin run "
        "continues with --resume auto)"]


def test_ema_warmup_averages_as_mindcvs_own_train_step():
    # mindcv's TrainStep (mindcv.utils.train_step) trains a small net with its EMA, counted from update 1500
    # (mid-warmup); mindswin's EMA is then fed the same weights after each step and must hold the same averages
    from mindcv.utils.train_step import TrainStep as MindcvTrainStep
    from mindspore import ParameterTuple, nn

    from mindswin.engine.train_step import EMA

    def dense():
        net = nn.Dense(4, 3)
        rng = np.random.default_rng(0)
        net.weight.set_data(ms.Tensor(rng.standard_normal((3, 4)).astype(np.float32)))
        net.bias.set_data(ms.Tensor(rng.standard_normal(3).astype(np.float32)))
        return net

    theirs = dense()
    step = MindcvTrainStep(nn.WithLossCell(theirs, nn.MSELoss()), nn.SGD(theirs.trainable_params(), 0.5),
                           scale_sense=ms.Tensor(1.0, ms.float32), ema=True, ema_decay=0.9999)
    step.updates.set_data(ms.Tensor(1500.0, ms.float32))
    step.set_train(True)
    ours_model, twin = dense(), dense()
    ema = EMA(ours_model, twin, 0.9999, warmup=True)

    class Drive(nn.Cell):
        def __init__(self):
            super().__init__()
            self.ema, self.weights = ema, ParameterTuple(ours_model.trainable_params())

        def construct(self, apply, updates):
            return self.ema(self.weights, apply, updates)

    drive = Drive()
    rng = np.random.default_rng(1)
    for update in (1501, 1502, 1503):
        x = ms.Tensor(rng.standard_normal((8, 4)).astype(np.float32))
        y = ms.Tensor(rng.standard_normal((8, 3)).astype(np.float32))
        step(x, y)
        for mine, their in zip(ours_model.trainable_params(), theirs.trainable_params()):
            mine.set_data(ms.Tensor(their.asnumpy()))
        drive(ms.Tensor(True), ms.Tensor(float(update), ms.float32))
    averages = {p.name.split(".")[-1]: p.asnumpy() for p in step.ema_weight}
    weights = {p.name.split(".")[-1]: p.asnumpy() for p in theirs.trainable_params()}
    for name, mine in ((p.name.split(".")[-1], p.asnumpy()) for p in twin.trainable_params()):
        # still warming up, far from the weights: the averages are not the weights
        assert np.abs(averages[name] - weights[name]).max() > 1e-2
        # per update: the decay (mindcv's 1 - exp in float32, mindswin's expm1) within 2 roundings, then two
        # products and a sum, each within a rounding of the largest term: 3 updates x 5 roundings
        scale = max(np.abs(averages[name]).max(), np.abs(weights[name]).max())
        assert np.abs(mine - averages[name]).max() <= 15 * 2.0 ** -24 * scale, (name, mine, averages[name])
