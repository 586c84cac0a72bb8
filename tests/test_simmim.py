"""SimMIM pre-training and layer-wise-decay fine-tuning: loss, masks, encoder, optimizer groups, checkpoint
layouts, train.py end to end (pre-train -> fine-tune at a new resolution/window), refusals, msrun."""
import hashlib
import io
import json
import math
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindswin.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    load_checkpoint,
    read_metadata,
    read_tensors,
    save_checkpoint,
)
from mindswin.checkpoint.loader import load_simmim_checkpoint
from mindswin.checkpoint.native import save_tensors
from mindswin.data.dataset import FROM_THE_START, ONE_SHARD, EpochShardSampler, Shard, StartPoint, path_noise
from mindswin.data.folder import scan_images
from mindswin.data.masking import MaskGenerator, mask_geometry_problem, train_mask_rng
from mindswin.data.pretrain import create_pretrain_dataset, pretrain_augment
from mindswin.engine.optim import AdamW, layer_decay_scales, layer_ids
from mindswin.engine.reconstruction import local_mean_std
from mindswin.models import build_model
from mindswin.models.simmim import LocalTargetNorm, build_simmim, masked_l1_loss

from helpers import (
    NOISE,
    ROOT,
    assert_same_state,
    built_once,
    cli,
    msrun,
    randomize,
    read_events,
    read_metrics,
    require_torch_python,
    resumed_from_a_kept_state,
    run,
)

MICRO = "swinv2_micro_window4_32"  # 32 px, patch 2, depths 2-2-2, encoder stride 8
# train.py arguments of a small SimMIM pre-training of the micro model (8-px squares: 10 of 16 masked)
PRETRAIN = ["--task", "simmim", "--model", MICRO, "--batch_size", "16", "--epoch_size", "3", "--warmup_epochs", "1",
            "--base_lr", "2e-3", "--lr_base_batch", "16", "--amp_level", "O0", "--mask_patch_size", "8",
            "--drop_path_rate", "0", "--num_parallel_workers", "1", "--log_interval", "3", "--recon_grid_images", "4",
            "--scale", "[0.67,1.0]", "--interpolation", "bilinear"]
FINETUNE = ["--model", MICRO, "--batch_size", "16", "--epoch_size", "1", "--warmup_epochs", "0", "--base_lr", "1e-3",
            "--lr_base_batch", "16", "--amp_level", "O0", "--auto_augment", "", "--mixup", "0", "--cutmix", "0",
            "--re_prob", "0", "--crop_pct", "1.0", "--drop_path_rate", "0", "--num_parallel_workers", "1"]


def digest(array) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


# --- 1. the loss, the masks and the encoder -------------------------------------------------------------------


def test_loss_is_the_masked_l1_normalised_by_masked_pixels_and_channels():
    # 1 image, 3 channels, 4x4 pixels, patch 2: patches (0, 0) and (1, 1) masked = 8 of 16 pixels
    mask = np.array([[[1, 0], [0, 1]]], np.float32)
    target = np.zeros((1, 3, 4, 4), np.float32)
    rec = np.full((1, 3, 4, 4), 2.0, np.float32)
    visible = np.kron(1 - mask[0], np.ones((2, 2), np.float32)).astype(bool)
    rec[:, :, visible] = 100.0  # errors on visible pixels must not count
    loss = float(masked_l1_loss(Tensor(target), Tensor(rec), Tensor(mask), 2).asnumpy())
    by_hand = (8 * 3 * 2.0) / (8 + 1e-5) / 3  # |0 - 2| over 8 masked pixels x 3 channels
    assert loss == pytest.approx(by_hand, rel=1e-6)
    rec[:, :, ~visible] = 0.0  # reconstruction equals the target on the masked area
    assert float(masked_l1_loss(Tensor(target), Tensor(rec), Tensor(mask), 2).asnumpy()) == 0.0


def test_model_loss_ignores_masked_pixels_in_the_input_and_is_zero_for_a_perfect_reconstruction():
    model = randomize(build_simmim(MICRO), seed=3)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    mask = MaskGenerator(32, 8, 2, 0.6).batch(np.random.default_rng(1), 2)
    rec = model.reconstruct(Tensor(x), Tensor(mask)).asnumpy()
    pixel_mask = mask.repeat(2, axis=1).repeat(2, axis=2)[:, None].astype(bool)
    expected = (np.abs(x - rec) * pixel_mask).sum() / (pixel_mask.sum() + 1e-5) / 3
    assert float(model(Tensor(x), Tensor(mask)).asnumpy()) == pytest.approx(expected, rel=1e-5)
    # Put the reconstruction into the masked pixels: the encoder never sees them (mask token), so the
    # reconstruction stays the same and now equals the target where the loss looks.
    perfect = np.where(pixel_mask, rec, x).astype(np.float32)
    assert np.array_equal(model.reconstruct(Tensor(perfect), Tensor(mask)).asnumpy(), rec)
    assert float(model(Tensor(perfect), Tensor(mask)).asnumpy()) == 0.0


def test_normalised_targets_match_the_official_formula():
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)
    got = LocalTargetNorm((16, 16), 5)(Tensor(x)).asnumpy()
    # official norm_targets: avg_pool2d(k, stride 1, pad k//2, count_include_pad=False), unbiased variance
    pad = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (2, 2), (2, 2)), constant_values=np.nan)
    want = np.empty_like(x, dtype=np.float64)
    for i in range(16):
        for j in range(16):
            window = pad[:, :, i:i + 5, j:j + 5].reshape(1, 3, -1)
            n = np.sum(~np.isnan(window[0, 0]))
            mean, mean_sq = np.nanmean(window, -1), np.nanmean(window ** 2, -1)
            var = np.maximum((mean_sq - mean ** 2) * n / (n - 1), 0)
            want[:, :, i, j] = (x[:, :, i, j] - mean) / np.sqrt(var + 1e-6)
    assert np.abs(got - want).max() < 1e-4
    mean, std = local_mean_std(x, 5)  # the grid's inverse of it
    assert np.abs(want * std + mean - x).max() < 1e-9


def test_mask_ratio_and_patch_geometry():
    generator = MaskGenerator()  # official defaults: 192 px, 32-px squares, patch 4, ratio 0.6
    assert (generator.token_count, generator.mask_count, generator.grid_size) == (36, math.ceil(36 * 0.6), 48)
    mask = generator(np.random.default_rng(0))
    assert mask.shape == (48, 48) and set(np.unique(mask)) == {0.0, 1.0}
    squares = mask.reshape(6, 8, 6, 8)
    assert (squares == squares[:, :1, :, :1]).all()  # constant over each 8x8-patch (32-px) square
    assert squares[:, 0, :, 0].sum() == 22 and mask.mean() == pytest.approx(22 / 36)
    same = MaskGenerator().batch(np.random.default_rng(0), 3)
    assert np.array_equal(same[0], mask) and not np.array_equal(same[0], same[1])
    assert "does not divide" in mask_geometry_problem(192, 40, 4)
    assert "not a multiple of the model's patch size 4" in mask_geometry_problem(192, 6, 4)
    for bad in (dict(mask_patch_size=40), dict(mask_patch_size=6), dict(mask_ratio=1.0), dict(mask_ratio=0.0)):
        with pytest.raises(ValueError):
            MaskGenerator(**bad)


def _pretrain_dataset(data_dir, batch_size, seed, **options):
    """``create_pretrain_dataset`` of ``data_dir/train`` with the official SimMIM augmentation."""
    augment = pretrain_augment(32, seed=seed, **options.pop("augment", {}))
    return create_pretrain_dataset(scan_images(os.path.join(data_dir, "train")), augment,
                                   MaskGenerator(32, 8, 2, 0.6), batch_size, seed=seed, num_workers=1, **options)


def _masks(data_dir, epochs=2, start=FROM_THE_START, shard=ONE_SHARD):
    dataset, info = _pretrain_dataset(data_dir, 16, 5, start=start, shard=shard,
                                      augment=dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0))
    batches = []
    for _ in range(epochs):
        batches += [(digest(images.asnumpy()), digest(masks.asnumpy()))
                    for images, masks in dataset.create_tuple_iterator(num_epochs=1)]
    return batches, info


def test_masks_are_reproducible_from_the_seed_differ_per_rank_and_resume_where_they_stopped(data_dir):
    first, info = _masks(data_dir)
    assert len(first) == 2 * info.batches_per_epoch == 12
    assert first == _masks(data_dir)[0]  # same seed, same images and masks
    assert first[:6] != first[6:]  # a new order and new masks every epoch
    rank0, rank1 = (_masks(data_dir, epochs=1, shard=Shard(2, rank))[0] for rank in (0, 1))
    assert not {m for _, m in rank0} & {m for _, m in rank1}
    # resumed after 2 batches of epoch 2: the remaining 4 batches, images and masks as uninterrupted
    resumed = _masks(data_dir, epochs=1, start=StartPoint(1, 2))[0]
    assert resumed[:4] == first[8:]


def test_any_image_folder_is_a_pretraining_split(tmp_path, data_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, name in enumerate(sorted(os.listdir(os.path.join(data_dir, "val", "checkerboard")))[:3]):
        os.symlink(os.path.join(data_dir, "val", "checkerboard", name), flat / f"{i}_{name}")
    (flat / "notes.txt").write_text("not an image")
    assert len(scan_images(str(flat)).samples) == 3
    assert len(scan_images(os.path.join(data_dir, "train")).samples) == 96  # class folders: labels ignored


def test_encoder_with_a_zero_mask_gives_the_classification_backbone_features():
    model = randomize(build_simmim(MICRO), seed=7)
    backbone = build_model(MICRO, num_classes=0)
    weights = {name: p.asnumpy() for name, p in model.encoder.parameters_and_names()}
    for name, p in backbone.parameters_and_names():
        p.set_data(Tensor(weights[name]))
    x = Tensor(np.random.default_rng(2).standard_normal((2, 3, 32, 32)).astype(np.float32))
    encoded = model.encoder(x, Tensor(np.zeros((2, 16, 16), np.float32))).asnumpy()
    assert encoded.shape == (2, 4, 4, 192)
    assert np.array_equal(encoded, backbone.forward_features(x).asnumpy())
    # and a mask changes exactly what it should: the embeddings of masked patches
    masked = model.encoder.embed_masked(x, Tensor(np.ones((2, 16, 16), np.float32))).asnumpy()
    assert np.allclose(masked, model.mask_token.asnumpy().reshape(1, 1, 1, -1))


def test_decoder_is_a_1x1_conv_and_pixel_shuffle_by_the_encoder_stride():
    model = randomize(build_simmim(MICRO), seed=1)
    assert model.encoder_stride == 8 and model.decoder[0].weight.shape == (8 * 8 * 3, 192, 1, 1)
    features = np.random.default_rng(0).standard_normal((1, 4, 4, 192)).astype(np.float32)
    out = model.decoder(Tensor(features)).asnumpy()
    conv = np.einsum("bhwc,oc->bohw", features, model.decoder[0].weight.asnumpy()[:, :, 0, 0]) \
        + model.decoder[0].bias.asnumpy()[None, :, None, None]
    # torch.nn.PixelShuffle(8): (1, 3*64, 4, 4) -> (1, 3, 32, 32)
    shuffled = conv.reshape(1, 3, 8, 8, 4, 4).transpose(0, 1, 4, 2, 5, 3).reshape(1, 3, 32, 32)
    assert np.abs(out - shuffled).max() < 1e-4


# --- 4. layer-wise lr decay ----------------------------------------------------------------------------------


def official_get_swin_layer(name, num_layers, depths):
    """microsoft/Swin-Transformer optimizer.py get_swin_layer, verbatim logic."""
    if name in ("mask_token",):
        return 0
    elif name.startswith("patch_embed"):
        return 0
    elif name.startswith("layers"):
        layer_id = int(name.split('.')[1])
        block_id = name.split('.')[3]
        if block_id == 'reduction' or block_id == 'norm':
            return sum(depths[:layer_id + 1])
        layer_id = sum(depths[:layer_id]) + int(block_id)
        return layer_id + 1
    else:
        return num_layers - 1


def test_layer_ids_are_the_official_ones():
    depths = [2, 2, 2]
    model = build_model(MICRO, num_classes=4)
    ids = layer_ids(model)
    assert ids == {name: official_get_swin_layer(name, sum(depths) + 2, depths) for name in ids}
    assert ids["patch_embed.proj.weight"] == 0 and ids["layers.0.blocks.0.norm1.weight"] == 1
    assert ids["layers.0.downsample.reduction.weight"] == 2 and ids["layers.2.blocks.1.mlp.fc2.bias"] == 6
    assert ids["norm.weight"] == ids["head.weight"] == 7
    pretraining = layer_ids(build_simmim(MICRO))  # encoder. prefix ignored, the decoder is on top
    assert pretraining["encoder.mask_token"] == 0 and pretraining["decoder.0.weight"] == 7


def test_each_parameter_group_trains_at_lr_times_decay_to_the_depth_minus_its_layer():
    decay, lr, depth = 0.75, 0.1, 7
    model = build_model(MICRO, num_classes=4)
    params = model.trainable_params()
    before = [p.asnumpy().copy() for p in params]
    optimizer = AdamW(params, 0.0, set(), lr_scales=layer_decay_scales(model, decay))
    optimizer(tuple(Tensor(np.ones(p.shape, np.float32)) for p in params), Tensor(lr, ms.float32),
              Tensor(True))
    ids = layer_ids(model)
    names = {id(p): name for name, p in model.parameters_and_names()}
    seen = {}
    for p, old in zip(params, before):
        # a first Adam step with gradient 1 moves every weight by its group's lr (times 1 / (1 + eps))
        step = float(np.mean(old - p.asnumpy()))
        layer = ids[names[id(p)]]
        assert step == pytest.approx(lr * decay ** (depth - layer), rel=1e-5), names[id(p)]
        seen[layer] = step
    assert sorted(seen) == list(range(depth + 1))  # every group, patch embedding (0) to head (7)
    assert layer_decay_scales(model, 1.0) == [1.0] * len(params)


# --- checkpoint layouts --------------------------------------------------------------------------------------


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = np.ascontiguousarray(array, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


@pytest.fixture(scope="module")
def official_simmim(tmp_path_factory):
    """A randomised micro SimMIM model's weights in the official layout (safetensors, with derived buffers
    and the older ``rpe_mlp`` name the official loader renames)."""
    model = randomize(build_simmim(MICRO), seed=5)
    state = {name: p.asnumpy() for name, p in model.parameters_and_names()}
    official = {name.replace(".cpb_mlp.", ".rpe_mlp."): value for name, value in state.items()}
    official["encoder.layers.0.blocks.0.attn.relative_coords_table"] = np.zeros((1, 7, 7, 2), np.float32)
    official["encoder.layers.0.blocks.1.attn_mask"] = np.zeros((4, 16, 16), np.float32)
    path = tmp_path_factory.mktemp("official") / "simmim_pretrain.safetensors"
    write_safetensors(path, official)
    return str(path), state


def _finetune_report(path, state):
    model = build_model(MICRO, num_classes=4, img_size=64, window_size=8, pretrained_window_sizes=[4, 4, 4])
    with pytest.raises(CheckpointError, match="has no classifier head .* fine-tune it with train.py --ckpt_path"):
        load_checkpoint(model, path)  # only fine-tuning asks for a fresh head
    report = load_checkpoint(model, path, init_missing_head=True)
    assert report.layout == "simmim"
    assert sorted(report.pretraining_dropped) == ["decoder.0.bias", "decoder.0.weight", "mask_token"]
    assert report.head_initialised and "dropped the SimMIM mask token and decoder" in report.summary()
    loaded = dict(model.parameters_and_names())
    for name in ("patch_embed.proj.weight", "layers.1.blocks.1.attn.cpb_mlp.0.weight", "norm.weight"):
        assert np.array_equal(loaded[name].asnumpy(), state[f"encoder.{name}"])
    return report


def test_official_simmim_checkpoint_fine_tunes_at_a_new_resolution_and_window(official_simmim):
    path, state = official_simmim
    report = _finetune_report(path, state)
    assert len(report.dropped) == 2  # the derived buffers
    # and it loads whole into a SimMIM model, e.g. to continue pre-training
    model = build_simmim(MICRO)
    report = load_simmim_checkpoint(model, path)
    assert not report.initialised
    assert np.array_equal(model.decoder[0].weight.asnumpy(), state["decoder.0.weight"])
    assert np.array_equal(model.mask_token.asnumpy(), state["encoder.mask_token"])


def test_classification_weights_start_a_simmim_encoder_and_keep_mask_token_and_decoder_init(tmp_path):
    classifier = randomize(build_model(MICRO, num_classes=4), seed=2)
    path = str(tmp_path / "cls.ckpt")
    save_checkpoint(classifier, path, CheckpointMetadata(num_classes=4))
    model = build_simmim(MICRO)
    report = load_simmim_checkpoint(model, path)
    assert report.head_dropped == ["head.bias", "head.weight"]
    assert sorted(report.initialised) == ["decoder.0.bias", "decoder.0.weight", "mask_token"]
    assert np.array_equal(model.encoder.patch_embed.proj.weight.asnumpy(), classifier.patch_embed.proj.weight.asnumpy())


@pytest.mark.reference
def test_official_simmim_pth_without_torch(official_simmim, tmp_path, monkeypatch):
    """The same weights as an official ``.pth`` ({'model': state_dict}), written by torch, read without it."""
    python = require_torch_python()
    path, state = official_simmim
    npz, pth = tmp_path / "w.npz", tmp_path / "simmim.pth"
    np.savez(npz, **read_tensors(path))
    subprocess.run([str(python), "-c", "import sys, numpy as np, torch; w = np.load(sys.argv[1]); "
                    "torch.save({'model': {k: torch.from_numpy(w[k]) for k in w.files}}, sys.argv[2])",
                    str(npz), str(pth)], check=True)
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # force the torch-free reader
    _finetune_report(str(pth), state)


# --- 2./4./6. train.py end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, data_dir):
    """``(ckpt_save_dir, log)`` of PRETRAIN's 3 epochs, built once for every pytest-xdist worker."""
    def build(out):
        result = run("train.py", *PRETRAIN, "--data_dir", data_dir, "--ckpt_save_dir", out)
        return [str(out), result.stdout + result.stderr]

    out, log = built_once(tmp_path_factory, "simmim_pretrained", build)
    return Path(out), log


def test_pretraining_lowers_the_reconstruction_loss_and_draws_the_grids(pretrained):
    out, log = pretrained
    records = read_metrics(out)
    assert [r["epoch"] for r in records] == [1, 2, 3]
    losses = [r["train_loss"] for r in records]
    assert losses[-1] < losses[0]
    assert all(r["val_samples"] == 36 and r["val_loss"] > 0 for r in records)
    files = sorted(os.listdir(out))
    assert {"recon_e0001.png", "recon_e0002.png", "recon_e0003.png", "curves.png", "resume_state.ckpt"} <= set(files)
    assert not [f for f in files if f.endswith("-best.ckpt")]  # no "best" reconstruction, as the official run
    weights = os.path.join(out, f"simmim_{MICRO}-e0003.ckpt")
    meta = read_metadata(weights)
    assert (meta.task, meta.num_classes, meta.model, meta.image_resize, meta.epoch) == ("simmim", 0, MICRO, 32, 3)
    names = set(read_tensors(weights))
    assert {"encoder.mask_token", "decoder.0.weight", "encoder.patch_embed.proj.weight"} <= names
    assert "SimMIM pre-training on 96 unlabelled images" in log and "10 of 16 8-px squares masked" in log
    # the live curves: reconstruction loss per epoch and the grid of each validation as an image
    scalars, images = read_events(os.path.join(out, "tensorboard"))
    assert scalars["epoch/val_loss"] == [(6 * r["epoch"], np.float32(r["val_loss"])) for r in records]
    assert [step for step, _ in images["val/reconstruction"]] == [6, 12, 18]
    from PIL import Image

    for (_, encoded), epoch in zip(images["val/reconstruction"], (1, 2, 3)):
        with Image.open(os.path.join(out, f"recon_e{epoch:04d}.png")) as grid:
            assert np.array_equal(np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB")),
                                  np.asarray(grid.convert("RGB")))
    for noise in NOISE:
        assert noise not in log


@pytest.mark.slow  # a fourth epoch
def test_pretraining_resumes_where_it_stopped(pretrained, data_dir, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(pretrained[0], out)
    log = run("train.py", *PRETRAIN, "--data_dir", data_dir, "--ckpt_save_dir", out, "--epoch_size", "4",
              "--resume", "auto").stdout
    assert "resumed from" in log and "epoch 3, batch 0, optimizer step 18" in log
    assert [r["epoch"] for r in read_metrics(out)] == [1, 2, 3, 4]


@pytest.mark.slow
def test_pretraining_resumed_mid_epoch_ends_bitwise_with_drop_path_and_ema(data_dir, tmp_path):
    """Was ``test_pretraining_killed_mid_epoch_resumes_bitwise_with_drop_path_and_ema``: resumed from the state
    the uninterrupted run saved in the middle of epoch 2 instead of a second run SIGKILLed after saving it (a
    SIGKILL and the files it leaves are test_train's ``test_official_augmentation_run_killed_mid_epoch_...``)."""
    # crop, flip, mask and stochastic depth of every image come from (seed, epoch, sample) in the
    # worker processes, and the graph normalises: the resumed run draws what the straight one drew
    args = [*PRETRAIN, "--epoch_size", "2", "--drop_path_rate", "0.2", "--ema", "True", "--ema_decay", "0.9",
            "--resume_save_steps", "2", "--data_dir", data_dir]
    straight, out, _, log = resumed_from_a_kept_state(
        args, tmp_path, lambda position: position.epoch == 1 and position.batch_in_epoch > 0)
    assert re.search(r"resumed from .*: epoch 1, batch [1-5],", log), log[-2000:]
    assert_same_state(straight, out)
    assert [r["val_loss"] for r in read_metrics(out)] == [r["val_loss"] for r in read_metrics(straight)]


def test_pretraining_batches_are_uint8_with_per_sample_masks_and_path_noise(data_dir):
    dataset, info = _pretrain_dataset(data_dir, 8, 3, path_noise_blocks=6)
    images, masks, noise = next(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.dtype == np.uint8 and images.shape == (8, 32, 32, 3)  # normalised in the graph
    assert masks.shape == (8, 16, 16) and noise.shape == (8, 6, 2)
    # the sampler's first 8 keys of epoch 0 (the sample indices): each one's mask and noise from its key
    order = EpochShardSampler(info.num_samples, seed=3).indices(0)[:8]
    for i, key in enumerate(order):
        assert np.array_equal(masks[i], MaskGenerator(32, 8, 2, 0.6)(train_mask_rng(3, key)))
        assert np.array_equal(noise[i], path_noise(3, key, 6))


def test_fine_tune_from_simmim_at_a_new_resolution_and_window_with_layer_decay(pretrained, data_dir, tmp_path):
    out, _ = pretrained
    weights = os.path.join(out, f"simmim_{MICRO}-e0003.ckpt")
    result = run("train.py", *FINETUNE, "--data_dir", data_dir, "--ckpt_save_dir", tmp_path, "--ckpt_path", weights,
                 "--image_resize", "64", "--window_size", "8", "--pretrained_window_sizes", "[4,4,4]",
                 "--layer_decay", "0.8")
    log = result.stdout + result.stderr
    assert "layout: simmim" in log and "dropped the SimMIM mask token and decoder (3 tensors" in log
    assert "classifier head initialised (the checkpoint has none)" in log
    assert "layer-wise lr decay 0.8: lr x 0.21 (patch embedding)" in log  # 0.8 ** 7
    record = read_metrics(tmp_path)[-1]
    assert record["val_samples"] == 36 and record["val_top1"] >= 0
    meta = read_metadata(os.path.join(tmp_path, f"{MICRO}-e0001.ckpt"))
    assert (meta.task, meta.num_classes, meta.image_resize, meta.window_size) == ("classification", 4, 64, 8)


def test_validate_refuses_simmim_weights(pretrained, data_dir):
    out, _ = pretrained
    result = run("validate.py", "--data_dir", data_dir, "--ckpt_path", os.path.join(out, f"simmim_{MICRO}-e0003.ckpt"),
                 check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ") and "SimMIM pre-training weights (task simmim)" in result.stderr
    assert "no classifier" in result.stderr


def _classification_files(tmp_path):
    """A classification run's weights file and resume state (names as the loop writes them)."""
    model = build_model(MICRO, num_classes=4)
    weights = str(tmp_path / f"{MICRO}-e0001.ckpt")
    save_checkpoint(model, weights, CheckpointMetadata(num_classes=4))
    state = str(tmp_path / "resume_state.ckpt")
    named = [(f"model.{name}", p) for name, p in model.parameters_and_names()]
    named.append(("optimizer.step", ms.Parameter(Tensor(6, ms.int32), name="step")))
    save_tensors(state, named, dict(epoch=1, batch_in_epoch=0, best=50.0, task="classification"))
    return weights, state


@pytest.mark.parametrize("argv, message, parse_time", [
    (["--mask_patch_size", "12"], "'mask_patch_size' 12 cannot tile the images with masked squares: it does not "
                                  "divide the 32 px image; set --mask_patch_size to one of 2, 4, 8, 16, 32", True),
    (["--mask_ratio", "1.5"], "'mask_ratio' must be in (0, 1), got 1.5", True),
    (["--mask_ratio", "0"], "'mask_ratio' must be in (0, 1), got 0.0", True),
    (["--resume", "STATE"], "is the resume state of a classification run and this run's task is simmim", False),
    (["--resume", "WEIGHTS"], "is a weights file (classification weights), not a resume state", False),
])
def test_bad_simmim_input_is_one_error_line_and_exit_2(argv, message, parse_time, data_dir, tmp_path):
    weights, state = _classification_files(tmp_path)
    argv = [{"STATE": state, "WEIGHTS": weights}.get(a, a) for a in argv]
    # the parser's refusals in this process (cli fails if the run got past them); the resume's in a process of its own
    args = [*PRETRAIN, "--data_dir", data_dir, "--ckpt_save_dir", tmp_path / "out", *argv]
    result = cli("train.py", *args) if parse_time else run("train.py", *args, check=False)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "compiled" not in result.stdout


def test_a_simmim_resume_state_is_refused_by_classification(pretrained, data_dir, tmp_path):
    out, _ = pretrained
    result = run("train.py", *FINETUNE, "--data_dir", data_dir, "--ckpt_save_dir", tmp_path, "--resume",
                 os.path.join(out, "resume_state.ckpt"), check=False)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "is the resume state of a simmim run and this run's task is classification" in result.stderr


# --- 5. msrun ------------------------------------------------------------------------------------------------


@pytest.mark.distributed
@pytest.mark.slow
def test_msrun_simmim_ranks_end_equal_and_draw_their_own_masks(data_dir, tmp_path):
    # with AMP O2 (float16 matmuls, dynamic loss scale) and recompute, as a real run would use them
    args = [*PRETRAIN, "--batch_size", "8", "--epoch_size", "2", "--data_dir", data_dir, "--ckpt_save_dir",
            tmp_path / "out", "--distribute", "True", "--seed", "11", "--amp_level", "O2", "--recompute", "True"]
    result, logs = msrun(ROOT / "tests" / "msrun_scripts" / "simmim_ranks.py", *args, logs=tmp_path / "logs")
    assert result.returncode == 0, logs[-4000:]
    digests = sorted(line.split(" weights sha1 ")[1] for line in logs.splitlines() if " weights sha1 " in line)
    assert len(digests) == 2 and digests[0] == digests[1]  # identical weights and optimizer state on both ranks
    reports = sorted((json.loads(line.split("SIMMIM_MASKS ", 1)[1]) for line in logs.splitlines()
                      if "SIMMIM_MASKS " in line), key=lambda r: r["rank"])
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["masks"] != reports[1]["masks"]  # each rank masks its own way...
    for report in reports:  # ...reproducibly: the same masks from the seed in this process
        dataset, _ = _pretrain_dataset(data_dir, 8, 11, shard=Shard(2, report["rank"]))
        _, masks = next(dataset.create_tuple_iterator(num_epochs=1))
        assert digest(masks.asnumpy()) == report["masks"]
        assert report["ratio"] == pytest.approx(10 / 16)
    records = read_metrics(tmp_path / "out")
    assert [r["val_samples"] for r in records] == [36, 36]  # the whole val set, sharded and all-reduced
