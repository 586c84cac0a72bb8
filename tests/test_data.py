"""Data pipeline on generated ImageFolders: shapes, determinism, sharding, bad files, mixup."""
import io
import logging

import mindspore.dataset as ds
import numpy as np
import pytest
from PIL import Image

from mindswin.config import ConfigError
from mindswin.data import (
    DataError,
    ImageSource,
    Mixup,
    create_eval_dataset,
    create_train_dataset,
    eval_shard_indices,
    make_demo_dataset,
    scan_split,
    smooth_one_hot,
)
from mindswin.data.transforms import RandomErasing, auto_augment_transform


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(str(root), num_classes=4, train_per_class=24, val_per_class=11, image_size=48)
    return str(root)


def _batches(dataset, columns=None):
    return list(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))


def test_train_batches_shapes_types_ranges(demo):
    ds.config.set_seed(1)
    dataset, info = create_train_dataset(demo, image_size=32, batch_size=8, auto_augment="rand-m9-mstd0.5-inc1",
                                         re_prob=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1)
    batches = _batches(dataset)
    assert len(batches) == info.batches_per_epoch == 96 // 8
    images, targets = batches[0]
    assert images.shape == (8, 3, 32, 32) and images.dtype == np.float32
    assert targets.shape == (8, 4) and targets.dtype == np.float32
    assert -3.0 < images.mean() < 3.0 and images.min() >= -6 and images.max() <= 6
    assert np.allclose(targets.sum(axis=1), 1.0, atol=1e-5)
    assert info.class_names == ["checkerboard", "stripes_diagonal", "stripes_horizontal", "stripes_vertical"]


def test_eval_batches_and_crop(demo):
    dataset, info = create_eval_dataset(demo, image_size=32, batch_size=8, crop_pct=0.875)
    batches = _batches(dataset)
    images, labels, weights = batches[0]
    assert images.shape == (8, 3, 32, 32) and labels.dtype == np.int32 and weights.dtype == np.float32
    assert sum(b[2].sum() for b in batches) == info.num_samples == 44


def test_train_order_is_deterministic_for_a_seed(demo):
    def run(seed):
        ds.config.set_seed(seed)
        dataset, _ = create_train_dataset(demo, image_size=32, batch_size=8, seed=seed, num_workers=1)
        return np.concatenate([t for _, t in _batches(dataset)])

    assert np.array_equal(run(3), run(3))
    assert not np.array_equal(run(3), run(4))


@pytest.mark.parametrize("num_samples, shards, batch", [(44, 2, 8), (45, 2, 8), (7, 3, 4), (100, 8, 16)])
def test_eval_shards_cover_every_sample_once(num_samples, shards, batch):
    counts = np.zeros(num_samples)
    lengths = set()
    for shard in range(shards):
        indices, weights = eval_shard_indices(num_samples, shards, shard, batch)
        lengths.add(len(indices))
        assert len(indices) % batch == 0
        np.add.at(counts, indices, weights)
    assert len(lengths) == 1 and np.all(counts == 1)


def test_two_val_shards_through_the_pipeline(demo):
    seen = []
    for shard in range(2):
        dataset, info = create_eval_dataset(demo, image_size=32, batch_size=8, num_shards=2, shard_id=shard)
        for images, labels, weights in _batches(dataset):
            seen += [(float(images[i].sum()), int(labels[i])) for i in range(len(labels)) if weights[i] > 0]
    assert len(seen) == 44 and len(set(seen)) == 44


def _write_bad_folder(root):
    good = root / "val" / "good"
    good.mkdir(parents=True)
    odd = root / "val" / "odd"
    odd.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(good / f"{i}.jpg")
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    (odd / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (odd / "zero.jpg").write_bytes(b"")
    (odd / "text.jpg").write_text("this is not an image")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "CMYK").save(odd / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").save(odd / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 4), dtype=np.uint8), "RGBA").save(odd / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8), "L").convert("P").save(odd / "palette.png")
    (odd / "notes.txt").write_text("ignored: not an image extension")
    return root


def test_bad_files_are_reported_by_name_and_the_rest_is_yielded(tmp_path, caplog):
    root = _write_bad_folder(tmp_path)
    with caplog.at_level(logging.WARNING):
        dataset, info = create_eval_dataset(str(root), image_size=32, batch_size=2)
    bad = sorted(p.rsplit("/", 1)[-1] for p, _ in info.bad_files)
    assert bad == ["text.jpg", "truncated.jpg", "zero.jpg"]
    for name in bad:
        assert name in caplog.text
    assert "skipped 3 unreadable image(s)" in caplog.text
    batches = _batches(dataset)
    assert sum(b[2].sum() for b in batches) == 3 + 4  # good + cmyk, gray, rgba, palette
    assert all(np.isfinite(b[0]).all() and b[0].shape[1] == 3 for b in batches)


def test_strict_data_raises_on_a_bad_file(tmp_path):
    root = _write_bad_folder(tmp_path)
    with pytest.raises(DataError, match="strict_data"):
        scan_split(str(root / "val"), strict=True)


def test_decompression_bomb_is_skipped_and_reported_when_scanned_and_when_decoded(tmp_path, caplog):
    split = tmp_path / "train"
    (split / "a").mkdir(parents=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(split / "a" / "good.png")
    # 13400 x 13400 = 179.6 M pixels, over twice Image.MAX_IMAGE_PIXELS: Pillow refuses to
    # open it. As a 1-bit blank image the PNG is 22 kB and written in half a second.
    bomb = split / "a" / "bomb.png"
    Image.new("1", (13400, 13400)).save(bomb)
    for verify in ("full", "header"):
        with caplog.at_level(logging.WARNING):
            index = scan_split(str(split), verify=verify)
        assert index.samples == [(str(split / "a" / "good.png"), 0)]
        assert [(p, why.split(":")[0]) for p, why in index.bad_files] == [(str(bomb), "DecompressionBombError")]
        assert "bomb.png" in caplog.text
    # A file that only turns bad after the scan is met while decoding: replaced by the next sample.
    source = ImageSource([(str(bomb), 0), (str(split / "a" / "good.png"), 0)])
    image, label, _ = source[0]
    assert image.shape == (16, 16, 3) and image[0, 0].tolist() == [200, 10, 10] and label == 0
    assert [p for p, _ in source.bad_files] == [str(bomb)] and "DecompressionBombError" in source.bad_files[0][1]


def test_missing_and_empty_data_errors(tmp_path):
    with pytest.raises(DataError, match="data_dir not found"):
        create_eval_dataset(str(tmp_path / "nope"), image_size=32, batch_size=2)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        create_eval_dataset(str(tmp_path), image_size=32, batch_size=2)
    (tmp_path / "val" / "cats").mkdir()
    (tmp_path / "val" / "dogs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "dogs" / "a.png")
    with pytest.raises(DataError, match="without images: cats"):
        create_eval_dataset(str(tmp_path), image_size=32, batch_size=2)
    with pytest.raises(DataError, match="data split not found"):
        create_train_dataset(str(tmp_path), image_size=32, batch_size=2)


@pytest.mark.parametrize("mode", ["batch", "pair", "elem"])
def test_mixup_targets_sum_to_one_and_match_ratio(mode):
    rng = np.random.default_rng(0)
    images = rng.standard_normal((8, 3, 16, 16)).astype(np.float32)
    labels = np.arange(8) % 5
    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, label_smoothing=0.1, num_classes=5, seed=1)
    for _ in range(10):
        mixed, targets = mixer(images, labels)
        assert mixed.shape == images.shape and targets.shape == (8, 5)
        assert np.allclose(targets.sum(1), 1.0, atol=1e-6)
        for i in range(8):
            j = 7 - i
            if labels[i] == labels[j]:
                continue
            # the share of the sample's own (smoothed) class equals the mixed pixel share
            own = (targets[i, labels[i]] - 0.1 / 5) / 0.9
            changed = ~np.isclose(mixed[i], images[i])
            if np.allclose(mixed[i], images[i] * own + images[j] * (1 - own), atol=1e-4):
                continue  # mixup: blend with weight lam
            assert np.isclose(1 - changed.mean(), own, atol=1e-6)  # cutmix: box area


def test_smooth_one_hot():
    targets = smooth_one_hot(np.array([2, 0]), 4, 0.1)
    assert np.allclose(targets[0], [0.025, 0.025, 0.925, 0.025])


def test_random_erasing_pixel_mode():
    img = np.zeros((3, 32, 32), np.float32)
    out = RandomErasing(prob=1.0, seed=0)(img)
    erased = out != 0
    assert erased.any() and erased.mean() < 0.5 and out[erased].std() > 0.5


def test_mindcv_auto_augment_policies_run_on_this_mindspore():
    img = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    for policy in ("rand-m9-mstd0.5-inc1", "randaug-m7-mstd0.5", "autoaug", "trivialaugwide", "augmix-m5-w4-d2"):
        out = np.asarray(auto_augment_transform(policy, 32, "bicubic")(img))
        assert out.shape == (32, 32, 3) and 0 <= out.min() and out.max() <= 255
        # AugMix returns the float blend of its chains; the others keep uint8
        assert out.dtype == (np.float64 if policy.startswith("augmix") else np.uint8)
    with pytest.raises(ConfigError, match="unknown auto_augment policy"):
        auto_augment_transform("randomaug", 32, "bicubic")
