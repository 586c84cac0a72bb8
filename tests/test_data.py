"""Data pipeline on generated ImageFolders: shapes, determinism, sharding, bad files, mixup."""
import io
import json
import logging
import os
import subprocess
import sys

import mindspore.dataset as ds
import numpy as np
import pytest
from PIL import Image

from mindswin.config import ConfigError
from mindswin.data import (
    DataError,
    ImageSource,
    Mixup,
    Preprocessing,
    create_eval_dataset,
    create_train_dataset,
    decode_rgb,
    eval_shard_indices,
    make_demo_dataset,
    scan_split,
    smooth_one_hot,
)
from mindswin.data.dataset import ONE_SHARD, Shard, UnreadableFiles, scan_data_split
from mindswin.data.folder import UNREADABLE
from mindswin.data.transforms import IMAGENET_MEAN, IMAGENET_STD, RandomErasing, TrainAugment, auto_augment_transform

from helpers import ROOT, write_header_damaged_jpegs


def train_dataset(root, image_size, batch_size, *, seed=0, num_workers=2, index=None, mixup=0.0, cutmix=0.0,
                  label_smoothing=0.0, device_augment=False, **augment):
    """``create_train_dataset`` of ``root/train`` with the augmentation and mixing built from keywords."""
    index = index or scan_data_split(root, "train")
    mixer = Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=label_smoothing,
                  num_classes=len(index.class_names))
    augment = TrainAugment(image_size, seed=seed, device=device_augment, **augment)
    return create_train_dataset(index, augment, mixer, batch_size, seed=seed, num_workers=num_workers)


def eval_dataset(root, image_size, batch_size, *, crop_pct=0.9, shard=ONE_SHARD, index=None, class_names=None,
                 num_workers=2, device_augment=False, verify="auto"):
    """``create_eval_dataset`` of ``root/val`` with ImageNet preprocessing at ``image_size``."""
    index = index or scan_data_split(root, "val", class_names, verify, num_workers=num_workers)
    preprocessing = Preprocessing(image_size, crop_pct, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    return create_eval_dataset(index, preprocessing, batch_size, shard=shard, num_workers=num_workers,
                               normalize=not device_augment)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    make_demo_dataset(str(root), num_classes=4, train_per_class=24, val_per_class=11, image_size=48)
    return str(root)


def _batches(dataset, columns=None):
    return list(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))


def test_train_batches_shapes_types_ranges(demo):
    ds.config.set_seed(1)
    dataset, info = train_dataset(demo, image_size=32, batch_size=8, auto_augment="rand-m9-mstd0.5-inc1",
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
    dataset, info = eval_dataset(demo, image_size=32, batch_size=8, crop_pct=0.875)
    batches = _batches(dataset)
    images, labels, weights = batches[0]
    assert images.shape == (8, 3, 32, 32) and labels.dtype == np.int32 and weights.dtype == np.float32
    assert sum(b[2].sum() for b in batches) == info.num_samples == 44


def test_train_order_is_deterministic_for_a_seed(demo):
    def run(seed):
        ds.config.set_seed(seed)
        dataset, _ = train_dataset(demo, image_size=32, batch_size=8, seed=seed, num_workers=1)
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
        dataset, info = eval_dataset(demo, image_size=32, batch_size=8, shard=Shard(2, shard))
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
        dataset, info = eval_dataset(str(root), image_size=32, batch_size=2)
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
    # A file that only turns bad after the scan is met while decoding: replaced by the next sample,
    # and named by the main process from the key and the count the worker skipped.
    samples = [(str(bomb), 0), (str(split / "a" / "good.png"), 0)]
    image, label, skipped = ImageSource(samples).read(0)
    assert image.shape == (16, 16, 3) and image[0, 0].tolist() == [200, 10, 10] and label == 0 and skipped == 1
    unreadable = UnreadableFiles(samples)
    assert unreadable(np.int64(2), skipped) == 2  # key 2: the epoch after, sample 0
    assert [p for p, _ in unreadable.bad_files] == [str(bomb)]
    assert "DecompressionBombError" in unreadable.bad_files[0][1]


def test_missing_and_empty_data_errors(tmp_path):
    with pytest.raises(DataError, match="data_dir not found"):
        eval_dataset(str(tmp_path / "nope"), image_size=32, batch_size=2)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        eval_dataset(str(tmp_path), image_size=32, batch_size=2)
    (tmp_path / "val" / "cats").mkdir()
    (tmp_path / "val" / "dogs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "dogs" / "a.png")
    with pytest.raises(DataError, match="without images: cats"):
        eval_dataset(str(tmp_path), image_size=32, batch_size=2)
    with pytest.raises(DataError, match="data split not found"):
        train_dataset(str(tmp_path), image_size=32, batch_size=2)


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


def test_batches_drawn_at_the_same_time_each_draw_from_their_own_generator():
    """The batch stage runs ``Mixup.draw`` in several threads. Here the first batch's draw
    pauses at its first random number until the second batch's draw has started, and the
    second waits for the first to finish: each must give what it gives alone."""
    import threading

    first_inside, second_inside, first_done = threading.Event(), threading.Event(), threading.Event()

    class Paused:
        """A generator whose first ``random()`` runs ``pause`` first."""

        def __init__(self, seed, pause):
            self.generator, self.pause = np.random.default_rng(seed), pause

        def random(self):
            pause, self.pause = self.pause, None
            if pause is not None:
                pause()
            return self.generator.random()

        def __getattr__(self, name):
            return getattr(self.generator, name)

    def first_pause():
        first_inside.set()
        assert second_inside.wait(timeout=10)

    def second_pause():
        second_inside.set()
        first_done.wait(timeout=2)  # times out only if the first draw waits on this one

    mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, num_classes=3)
    alone = [mixer.draw(4, 16, 16, np.random.default_rng(seed)) for seed in (1, 2)]
    together = {}

    def draw_first():
        together[1] = mixer.draw(4, 16, 16, Paused(1, first_pause))
        first_done.set()

    first = threading.Thread(target=draw_first)
    first.start()
    assert first_inside.wait(timeout=10)
    together[2] = mixer.draw(4, 16, 16, Paused(2, second_pause))
    first.join()
    for seed, params in zip((1, 2), alone):
        for field in ("cutbox", "blend", "lam"):
            assert np.array_equal(getattr(together[seed], field), getattr(params, field)), (seed, field)


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


# --- decoding: Pillow in the worker processes, where a damaged file raises ----------------------

def test_sources_give_pillows_rgb_pixels_for_every_mode(tmp_path):
    root = _write_bad_folder(tmp_path)
    deep = (np.random.default_rng(1).integers(0, 255, (20, 20)) * 200).astype(np.int32)
    Image.fromarray(deep).convert("I;16").save(root / "val" / "odd" / "deep.png")
    paths = [p for p in sorted((root / "val").glob("*/*.*"))
             if p.suffix != ".txt" and p.name not in ("truncated.jpg", "zero.jpg", "text.jpg")]
    source = ImageSource([(str(p), 0) for p in paths])
    for key, path in enumerate(paths):
        image, _, skipped = source.read(key)
        with Image.open(path) as img:
            expected = np.asarray(img.convert("RGB"))
        assert image.dtype == np.uint8 and image.shape[2] == 3 and skipped == 0
        assert np.array_equal(image, expected), path.name


_DAMAGED_RUN = """
import json, os, sys
from mindswin.data import Mixup, Preprocessing, create_eval_dataset, create_train_dataset, scan_split
from mindswin.data.transforms import IMAGENET_MEAN, IMAGENET_STD, TrainAugment
root, verify = sys.argv[1], sys.argv[2]
index = scan_split(os.path.join(root, "train"), verify=verify)
augment = TrainAugment(16, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.25, device=True)
mixer = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.0, num_classes=len(index.class_names))
train, train_info = create_train_dataset(index, augment, mixer, 4, num_workers=2)
batches = sum(1 for _ in train.create_tuple_iterator(num_epochs=1))
val_index = scan_split(os.path.join(root, "val"), class_names=index.class_names, verify=verify)
preprocessing = Preprocessing(16, 0.9, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
val, val_info = create_eval_dataset(val_index, preprocessing, 4, num_workers=2, normalize=False)
weight = sum(float(b[2].sum()) for b in val.create_tuple_iterator(num_epochs=1, output_numpy=True))
bad = train_info.all_bad_files() + val_info.all_bad_files()
print(json.dumps(dict(batches=batches, expected=train_info.batches_per_epoch, val_weight=weight,
                      val_samples=val_info.num_samples, bad=sorted(os.path.basename(p) for p, _ in bad))))
"""


@pytest.mark.parametrize("verify", ["header", "full"])
def test_header_damaged_jpegs_are_skipped_and_named_not_fatal(tmp_path, verify):
    # A subprocess: a decoder that dies on a signal must fail this test, not end pytest.
    root = tmp_path / "data"
    for split, per_class in (("train", 6), ("val", 3)):
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                colour = (40 * i, 90, 200 if name == "a" else 10)
                Image.new("RGB", (24, 20), colour).save(root / split / name / f"{i}.jpg")
    damaged = write_header_damaged_jpegs(root / "train" / "a", 30, seed=0)
    damaged += write_header_damaged_jpegs(root / "val" / "b", 30, seed=1, prefix="val_damaged")
    readable = set()
    for path in damaged:
        try:
            decode_rgb(str(path))
            readable.add(path.name)
        except UNREADABLE:
            pass
    work = tmp_path / "cwd"
    work.mkdir()
    script = tmp_path / "damaged_run.py"
    script.write_text(_DAMAGED_RUN)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, str(script), str(root), verify], capture_output=True, text=True,
                            cwd=work, env=env, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr[-3000:]}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["batches"] == report["expected"] > 0
    assert report["val_weight"] == report["val_samples"]
    unreadable = sorted(p.name for p in damaged if p.name not in readable)
    assert len(unreadable) >= 25  # the seeds give damage Pillow refuses, not just odd pixels
    # named once each, whether the scan (full) or the decode in the pipeline (header) caught them
    assert sorted(set(report["bad"])) == sorted(set(unreadable))
    assert os.listdir(work) == []  # no abnormal_image.jpg (or anything) in the working directory


def test_files_bad_at_decode_time_are_reported_from_the_pipeline(tmp_path, caplog):
    root = _write_bad_folder(tmp_path)
    index = scan_split(str(root / "val"), verify="header")  # truncated.jpg passes a header check
    assert "truncated.jpg" in {p.rsplit("/", 1)[-1] for p, _ in index.samples}
    with caplog.at_level(logging.WARNING):
        dataset, info = eval_dataset(str(root), image_size=16, batch_size=2, index=index, num_workers=2,
                                            device_augment=True)
        batches = _batches(dataset)
    assert len(batches) == info.batches_per_epoch and batches[0][0].dtype == np.uint8
    late = [p.rsplit("/", 1)[-1] for p, _ in info.unreadable.bad_files]
    assert late == ["truncated.jpg"] and "truncated.jpg" in caplog.text
    assert sorted(p.rsplit("/", 1)[-1] for p, _ in info.all_bad_files()) == ["text.jpg", "truncated.jpg", "zero.jpg"]


def test_train_files_bad_at_decode_time_are_reported_with_worker_processes(tmp_path):
    split = tmp_path / "train"
    for name in ("a", "b"):
        (split / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (24, 20), (40 * i, 90, 200 if name == "a" else 10)).save(split / name / f"{i}.jpg")
    good = (split / "a" / "0.jpg").read_bytes()
    (split / "b" / "broken.jpg").write_bytes(good[: len(good) // 2])
    index = scan_split(str(split), verify="header")
    dataset, info = train_dataset(str(tmp_path), image_size=16, batch_size=4, index=index, num_workers=2,
                                         auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5, mixup=0.8, cutmix=1.0,
                                         device_augment=True)
    assert len(_batches(dataset)) == info.batches_per_epoch
    assert [p.rsplit("/", 1)[-1] for p, _ in info.all_bad_files()] == ["broken.jpg"]


# --- worker processes: per-sample randomness, reproducible from the seed -------------------------

@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """16 copies of one image: any difference between samples is augmentation."""
    root = tmp_path_factory.mktemp("twins")
    image = Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 48, 3), dtype=np.uint8))
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(8):
            image.save(root / "train" / name / f"{i}.png")
    return str(root)


def _augmented(root, seed, workers, device=True):
    dataset, _ = train_dataset(root, image_size=24, batch_size=8, seed=seed, num_workers=workers,
                                      auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.9, mixup=0.8, cutmix=1.0,
                                      label_smoothing=0.1, device_augment=device)
    return [np.concatenate(column) for column in zip(*_batches(dataset))]


def test_worker_processes_draw_different_randomness_and_repeat_per_seed(twins):
    first = _augmented(twins, seed=5, workers=2)
    images, erase = first[0], first[1]
    assert images.dtype == np.uint8 and images.shape == (16, 24, 24, 3)
    # two workers each took half of the samples: no two samples share crops, policy draws or erasing boxes
    flat = images.reshape(len(images), -1)
    assert len({row.tobytes() for row in flat}) == len(flat)
    assert len({tuple(box) for box in erase if box[2] > 0}) == int((erase[:, 2] > 0).sum()) > 4
    again = _augmented(twins, seed=5, workers=2)
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    one_worker = _augmented(twins, seed=5, workers=1)
    assert all(np.array_equal(a, b) for a, b in zip(first, one_worker))
    other = _augmented(twins, seed=6, workers=2)
    assert not np.array_equal(first[0], other[0])


def test_host_path_repeats_per_seed_too(twins):
    first = _augmented(twins, seed=2, workers=2, device=False)
    assert first[0].dtype == np.float32 and first[0].shape == (16, 3, 24, 24)
    assert all(np.array_equal(a, b) for a, b in zip(first, _augmented(twins, seed=2, workers=2, device=False)))


# --- device-side normalise -> erase -> mix equals the host reference ----------------------------

def _host_reference(images, erase, params, noise, mean, std):
    from mindswin.data.transforms import normalize_chw

    normalised = np.stack([RandomErasing.apply(normalize_chw(img, mean, std), box, n)
                           for img, box, n in zip(images, erase, noise)])
    return Mixup.apply(normalised, params)


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_device_normalise_erase_mix_matches_the_host_reference(mode):
    import mindspore as ms
    from mindspore import Tensor, nn

    from mindswin.data.device import DeviceAugment, DeviceNormalize, erase_noise, noise_bank, normalize_erase_mix
    from mindswin.data.transforms import IMAGENET_MEAN, IMAGENET_STD, NOISE_FIELDS, normalize_chw

    class Given(nn.Cell):  # the device arithmetic with the noise given
        def __init__(self):
            super().__init__()
            self.mean = Tensor(np.asarray(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1))
            self.std = Tensor(np.asarray(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1))

        def construct(self, images, erase, cutbox, blend, noise):
            return normalize_erase_mix(images, erase, cutbox, blend, noise, self.mean, self.std)

    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    batch, size = 8, 20
    given = Given()
    for trial in range(4):
        images = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        erase = np.array([RandomErasing(prob=0.6).draw(rng, size, size) for _ in range(batch)], np.int32)
        params = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, mode=mode, num_classes=3).draw(batch, size, size, rng)
        noise = rng.standard_normal((batch, 3, size, size)).astype(np.float32)
        expected = _host_reference(images, erase, params, noise, IMAGENET_MEAN, IMAGENET_STD)
        got = given(Tensor(images), Tensor(erase), Tensor(params.cutbox), Tensor(params.blend),
                    Tensor(noise)).asnumpy()
        # float32: (x - mean) / std is two roundings, the blend three more, each at most
        # half an ulp of values below |8|; a different evaluation order moves a result by
        # a few ulps of the largest operand
        tolerance = 8 * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(expected))
        assert np.all(np.abs(got - expected) <= tolerance), (trial, np.abs(got - expected).max())
    # the cells: DeviceNormalize is the eval transform's normalisation; DeviceAugment without
    # erasing is the reference with nothing erased
    normalised = DeviceNormalize()(Tensor(images)).asnumpy()
    reference = np.stack([normalize_chw(img, IMAGENET_MEAN, IMAGENET_STD) for img in images])
    assert np.allclose(normalised, reference, rtol=0, atol=8 * np.finfo(np.float32).eps * 4)
    nothing = np.zeros_like(erase)
    plain = DeviceAugment(erasing=False)(Tensor(images), Tensor(erase), Tensor(params.cutbox),
                                         Tensor(params.blend)).asnumpy()
    expected = _host_reference(images, nothing, params, noise, IMAGENET_MEAN, IMAGENET_STD)
    assert np.all(np.abs(plain - expected) <= 8 * np.finfo(np.float32).eps * np.maximum(1.0, np.abs(expected)))
    # with erasing: the rectangles hold standard normal noise, the rest is the reference
    no_mix = np.tile(np.array([1.0, 0.0], np.float32), (batch, 1))
    shifts = np.stack([rng.integers(0, NOISE_FIELDS, batch), rng.integers(0, size, batch),
                       rng.integers(0, size, batch)], axis=1)
    boxes = np.concatenate([np.tile(np.array([2, 3, 10, 12]), (batch, 1)), shifts], axis=1).astype(np.int32)
    erased = DeviceAugment(erasing=True, seed=1, image_size=size)(
        Tensor(images), Tensor(boxes), Tensor(np.zeros((batch, 4), np.int32)), Tensor(no_mix)).asnumpy()
    inside = erased[:, :, 2:12, 3:15]
    assert abs(inside.mean()) < 0.1 and 0.9 < inside.std() < 1.1
    # the noise is the bank's field at the sample's shift, bit for bit: a function of the numbers alone
    bank = noise_bank(1, size)
    for b in range(batch):
        assert np.array_equal(inside[b], erase_noise(boxes[b], bank)[:, 2:12, 3:15]), b
    outside = erased.copy()
    outside[:, :, 2:12, 3:15] = reference[:, :, 2:12, 3:15]
    assert np.allclose(outside, reference, rtol=0, atol=1e-5)


def test_device_batches_have_the_documented_columns(demo):
    dataset, info = train_dataset(demo, image_size=32, batch_size=8, auto_augment="rand-m9-mstd0.5-inc1",
                                         re_prob=0.25, mixup=0.8, cutmix=1.0, label_smoothing=0.1,
                                         device_augment=True)
    images, erase, cutbox, blend, targets = _batches(dataset)[0]
    assert images.shape == (8, 32, 32, 3) and images.dtype == np.uint8
    assert erase.shape == (8, 7) and cutbox.shape == (8, 4) and erase.dtype == cutbox.dtype == np.int32
    assert blend.shape == (8, 2) and blend.dtype == np.float32 and targets.shape == (8, 4)
    assert np.allclose(targets.sum(axis=1), 1.0, atol=1e-5)


# --- scanning once per job -----------------------------------------------------------------------

def test_scan_happens_once_per_job_and_other_ranks_get_the_index(tmp_path, monkeypatch):
    import mindswin.data.folder as folder

    root = _write_bad_folder(tmp_path)
    sent = []

    def rank0(make):
        sent.append(make())
        return sent[-1]

    def other_rank(make):  # never calls make: it only receives what rank 0 sent
        return sent[-1]

    expected = scan_split(str(root / "val"))
    assert scan_split(str(root / "val"), share=rank0) == expected
    walks = []
    monkeypatch.setattr(folder.os, "walk", lambda *a, **k: walks.append(a) or iter(()))
    monkeypatch.setattr(folder, "unreadable_reason", lambda *a: walks.append(a))
    received = scan_split(str(root / "val"), share=other_rank)
    assert walks == [] and received == expected
    assert [p.rsplit("/", 1)[-1] for p, _ in received.bad_files] == ["text.jpg", "truncated.jpg", "zero.jpg"]
    # an error on rank 0 reaches every rank as the same DataError
    with pytest.raises(DataError, match="data split not found"):
        scan_split(str(root / "nope"), share=rank0)
    with pytest.raises(DataError, match="data split not found"):
        scan_split(str(root / "nope"), share=other_rank)


def test_large_splits_are_checked_by_header_by_default(tmp_path, monkeypatch):
    import mindswin.data.folder as folder

    root = _write_bad_folder(tmp_path)
    modes = []
    real = folder.unreadable_reason
    monkeypatch.setattr(folder, "unreadable_reason", lambda path, full: modes.append(full) or real(path, full))
    monkeypatch.setattr(folder, "FULL_VERIFY_LIMIT", 5)
    scan_split(str(root / "val"))
    assert set(modes) == {False}
    modes.clear()
    scan_split(str(root / "val"), verify="full")
    assert set(modes) == {True}


@pytest.mark.distributed
@pytest.mark.slow
def test_scan_once_under_msrun(tmp_path):
    import re

    from helpers import msrun

    root = _write_bad_folder(tmp_path / "data")
    result, logs = msrun("tests/msrun_scripts/scan_once.py", root / "val", logs=tmp_path / "logs")
    assert result.returncode == 0, logs[-3000:]
    lines = sorted(re.findall(r"rank (\d) samples (\d+) scans (\d+) bad (\S+) sha1 (\w+)", logs))
    assert [(r, scans) for r, _, scans, _, _ in lines] == [("0", "1"), ("1", "0")]  # rank 1 never scanned
    assert len({(n, bad, sha) for _, n, _, bad, sha in lines}) == 1 and lines[0][1] == "7"
    assert lines[0][3] == "text.jpg,truncated.jpg,zero.jpg"
    assert len(re.findall(r"rank \d error data split not found", logs)) == 2


def test_color_jitter_draws_from_the_sample_key_alone():
    from mindswin.data.transforms import TrainAugment

    image = np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    options = dict(scale=(1.0, 1.0), ratio=(1.2, 1.2), hflip=0.0, color_jitter=0.4, seed=3, device=True)
    plain = TrainAugment(24, **{**options, "color_jitter": None})(image, 7)[0]
    first = [TrainAugment(24, **options)(image, key)[0] for key in (7, 8)]
    again = [TrainAugment(24, **options)(image, key)[0] for key in (7, 8)]  # a fresh transform: a resumed run
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not np.array_equal(first[0], first[1]) and not np.array_equal(first[0], plain)


def _backdate(root, seconds=3600):
    """Give every folder and file below ``root`` a modification time ``seconds`` ago (a tree written long ago)."""
    import time

    past = time.time() - seconds
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.utime(os.path.join(dirpath, name), (past, past))
        os.utime(dirpath, (past, past))


def test_scan_index_is_reused_until_a_folder_changes(tmp_path, monkeypatch, caplog):
    import mindswin.data.folder as folder

    root = _write_bad_folder(tmp_path / "data")
    _backdate(root)
    cache = str(tmp_path / "out" / "scan_index")
    checked = []
    real = folder.unreadable_reason
    monkeypatch.setattr(folder, "unreadable_reason", lambda path, full: checked.append(path) or real(path, full))
    first = scan_split(str(root / "val"), cache_dir=cache)
    assert len(checked) == 10 and len(os.listdir(cache)) == 1
    checked.clear()
    with caplog.at_level(logging.INFO):
        again = scan_split(str(root / "val"), cache_dir=cache)
    # the restart reads the index: no file opened, the same samples and the same named bad files
    assert checked == [] and again == first
    assert "reused the scan index" in caplog.text and "3 unreadable image(s) skipped" in caplog.text
    # another verification or class list is another index
    scan_split(str(root / "val"), cache_dir=cache, verify="header")
    assert len(os.listdir(cache)) == 2 and checked
    # a file added, removed or renamed in any class folder (or a nested one) changes the index
    Image.new("RGB", (8, 8)).save(root / "val" / "good" / "new.jpg")
    checked.clear()
    added = scan_split(str(root / "val"), cache_dir=cache)
    assert checked and len(added) == len(first) + 1
    _backdate(root)
    scan_split(str(root / "val"), cache_dir=cache)
    (root / "val" / "odd" / "nested").mkdir()
    _backdate(root)
    Image.new("RGB", (8, 8)).save(root / "val" / "odd" / "nested" / "deep.jpg")
    assert len(scan_split(str(root / "val"), cache_dir=cache)) == len(first) + 2
    os.remove(root / "val" / "good" / "0.jpg")
    assert len(scan_split(str(root / "val"), cache_dir=cache)) == len(first) + 1
    # a damaged index file is ignored (scanned again), never an error
    for name in os.listdir(cache):
        (tmp_path / "out" / "scan_index" / name).write_bytes(b"garbage")
    assert scan_split(str(root / "val"), cache_dir=cache) == scan_split(str(root / "val"))


def test_a_tree_changed_just_before_the_scan_is_not_trusted(tmp_path, monkeypatch):
    """A folder changed in the clock tick its scan read it could hide a later file: scanned again once."""
    import mindswin.data.folder as folder

    root = _write_bad_folder(tmp_path / "data")  # written just now
    cache = str(tmp_path / "index")
    scan_split(str(root / "val"), cache_dir=cache)
    checked = []
    monkeypatch.setattr(folder, "unreadable_reason", lambda path, full: checked.append(path))
    scan_split(str(root / "val"), cache_dir=cache)
    assert checked


def test_official_map_files_list_the_samples(tmp_path):
    from mindswin.data.folder import scan_map_file

    root = tmp_path / "imagenet22k"
    classes = ["n00004475", "n00005787", "n00006024"]
    listed = []
    for label, name in enumerate(classes):
        (root / "fall11_whole" / name).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (label * 80, i * 80, 0)).save(root / "fall11_whole" / name / f"{name}_{i}.JPEG")
            listed.append([f"fall11_whole/{name}/{name}_{i}.JPEG", label])
    (root / "fall11_whole" / classes[1] / "broken.JPEG").write_text("not an image")
    listed += [[f"fall11_whole/{classes[1]}/broken.JPEG", 1], ["fall11_whole/n00006024/gone.JPEG", 2]]
    (root / "ILSVRC2011fall_whole_map_train.txt").write_text(json.dumps(listed))  # the ImageNet-22k layout
    (root / "train_map.txt").write_text("".join(f"{p}\t{label}\n" for p, label in listed[:6]))  # zip-mode layout
    index = scan_map_file(str(root / "ILSVRC2011fall_whole_map_train.txt"), str(root), num_classes=5)
    assert index.class_names == ["0", "1", "2", "3", "4"]
    assert [(os.path.relpath(p, root), label) for p, label in index.samples] == [tuple(x) for x in listed[:6]]
    assert sorted((os.path.basename(p), why.split(":")[0]) for p, why in index.bad_files) == \
        [("broken.JPEG", "UnidentifiedImageError"), ("gone.JPEG", "file not found")]
    tab = scan_map_file(str(root / "train_map.txt"), str(root))
    assert tab.samples == index.samples and len(tab.class_names) == 3
    with pytest.raises(DataError, match="map file not found"):
        scan_map_file(str(root / "missing.txt"), str(root))
    with pytest.raises(DataError, match=r"labels outside \[0, 2\)"):
        scan_map_file(str(root / "train_map.txt"), str(root), num_classes=2)
    (root / "bad_map.txt").write_text("fall11_whole/a.JPEG\tnot-a-number\n")
    with pytest.raises(DataError, match="not a map file"):
        scan_map_file(str(root / "bad_map.txt"), str(root))


@pytest.mark.parametrize("shards", [1, 2, 3])
def test_repeated_augmentation_deals_as_mindcvs_sampler_with_a_key_per_copy(shards):
    from mindcv.data.distributed_sampler import RepeatAugSampler

    from mindswin.data.dataset import EpochShardSampler

    n, repeats = 10, 3
    all_keys = []
    for rank in range(shards):
        ours = EpochShardSampler(n, shards, rank, seed=0, shuffle=False, repeats=repeats)
        theirs = list(RepeatAugSampler(n, num_shards=shards, rank_id=rank, num_repeats=repeats, selected_round=0,
                                       shuffle=False))
        assert ours.indices(0).tolist() == theirs  # the same images, in the same order, on every rank
        keys = ours.keys(4)
        assert [ours.split_key(k) for k in keys] == [(4, i) for i in ours.indices(4)]
        all_keys += keys.tolist()
    # every copy of an image has its own key (its own crop, flip, erasing, mixing, drop path); the copies of
    # one image go to consecutive ranks
    assert len(set(all_keys)) == len(all_keys)
    first = EpochShardSampler(n, shards, 0, seed=0, shuffle=True, repeats=repeats)
    if shards == 3:
        others = [EpochShardSampler(n, shards, r, seed=0, shuffle=True, repeats=repeats) for r in (1, 2)]
        assert first.indices(0)[0] == others[0].indices(0)[0] == others[1].indices(0)[0]
    # one repeat is the plain sampler, key for key
    plain, single = EpochShardSampler(n, shards, 0, seed=5), EpochShardSampler(n, shards, 0, seed=5, repeats=1)
    assert plain.keys(2).tolist() == single.keys(2).tolist() == (2 * n + plain.indices(2)).tolist()


def _batched(passes, batch_size):
    """What ``batch(batch_size, drop_remainder=True)`` makes of each pass, the batches of all passes in a row."""
    return [p[i:i + batch_size] for p in passes for i in range(0, len(p) - batch_size + 1, batch_size)]


@pytest.mark.parametrize("shards, repeats", [(1, 1), (2, 1), (3, 2)])
def test_a_streamed_sampler_deals_the_uninterrupted_batches_from_any_resume_point(shards, repeats):
    """The data sink runs from one pass into the next: a resumed sampler's passes, cut from one
    stream (``stream``), batch for batch the uninterrupted run's; each pass as long as every
    other (MindSpore's GeneratorOp refuses a pass of another length). The host loop's passes
    are one epoch each, a resumed one with its remaining samples first."""
    from mindswin.data.dataset import EpochShardSampler

    n, batch_size, epochs = 22, 3, 4
    per_shard = EpochShardSampler(n, shards, 0, repeats=repeats).per_shard
    batches = per_shard // batch_size
    assert per_shard % batch_size  # a remainder dropped from every epoch
    for rank in range(shards):
        fresh = EpochShardSampler(n, shards, rank, seed=9, repeats=repeats)
        uninterrupted = _batched([list(fresh) for _ in range(epochs)], batch_size)
        for epoch, batch in [(0, 0), (0, 1), (1, batches - 1), (2, batches // 2)]:
            resumed = EpochShardSampler(n, shards, rank, seed=9, start_epoch=epoch, skip=batch * batch_size,
                                        repeats=repeats)
            host = list(resumed)
            assert len(host) == per_shard and _batched([host], batch_size)[:batches - batch] == \
                uninterrupted[epoch * batches + batch:(epoch + 1) * batches]
            list(resumed), list(resumed)  # passes drawn before the stream (MindSpore's type and shape reads)
            resumed.stream(batch_size)
            passes = [list(resumed) for _ in range(epochs - epoch)]
            assert {len(p) for p in passes} == {per_shard}
            first = epoch * batches + batch
            assert _batched(passes, batch_size)[:len(uninterrupted) - first] == uninterrupted[first:]
    with pytest.raises(ValueError, match="whole batch"):
        EpochShardSampler(n, skip=4).stream(batch_size)
