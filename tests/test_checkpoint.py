"""Checkpoint files: safe .pth reading, native round trip, conversion tool, errors."""
import logging
import os
import pickle
import subprocess
import sys
import zipfile

import mindspore as ms
import numpy as np
import pytest

import mindswin
from mindswin.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    load_checkpoint,
    read_metadata,
    read_tensors,
    save_checkpoint,
)

from helpers import MICRO_MS, ROOT, randomize


def micro(**kwargs):
    return mindswin.create_model("swinv2_tiny_window8_256", **{**MICRO_MS, **kwargs})


@pytest.fixture(scope="module")
def batch():
    return ms.Tensor(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))


@pytest.fixture(scope="module")
def saved(tmp_path_factory, batch):
    """A randomised micro model saved as a mindswin .ckpt, with its logits."""
    model = randomize(micro(), seed=11)
    path = str(tmp_path_factory.mktemp("ckpt") / "micro.ckpt")
    save_checkpoint(model, path, CheckpointMetadata(class_names=list("abcde")))
    return path, model(batch).asnumpy()


def test_native_round_trip_is_exact(saved, batch):
    path, logits = saved
    model = mindswin.create_model("swinv2_tiny_window8_256", checkpoint_path=path, **MICRO_MS)
    assert np.array_equal(model(batch).asnumpy(), logits)
    assert read_metadata(path).class_names == list("abcde")
    assert read_metadata(path).model == "swinv2_tiny_window8_256"


def test_checkpoint_holds_no_derived_tensors(saved):
    names = set(read_tensors(saved[0]))
    assert not [n for n in names if any(d in n for d in ("attn_mask", "relative_", "k_bias"))]


def test_wrong_variant_names_the_keys_and_cause(saved):
    other = mindswin.create_model("swinv2_tiny_window8_256", **{**MICRO_MS, "embed_dim": 32})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(other, saved[0])
    message = str(err.value)
    assert "(layout: mindswin) does not fit model" in message
    assert "shape mismatch: head.weight: checkpoint (5, 96) vs model (5, 128)" in message
    assert "checkpoint looks like: embed_dim=24, depths=(1, 2, 1)" in message
    assert "another variant" in message
    deeper = mindswin.create_model("swinv2_tiny_window8_256", **{**MICRO_MS, "depths": [1, 2, 2]})
    with pytest.raises(CheckpointError, match=r"missing: layers\.2\.blocks\.1\."):
        load_checkpoint(deeper, saved[0])


def test_head_with_other_class_count_is_reinitialised_with_warning(saved, caplog):
    model = micro(num_classes=7)
    with caplog.at_level(logging.WARNING):
        report = load_checkpoint(model, saved[0])
    assert report.head_reinitialised
    assert "head re-initialised to zero: checkpoint has 5 classes, model has 7" in caplog.text
    # the official rule: a mismatched head starts at zero (every class at logit 0), not at a random draw
    assert not model.head.weight.asnumpy().any() and not model.head.bias.asnumpy().any()
    source = read_tensors(saved[0])
    assert np.array_equal(model.layers[0].blocks[0].attn.qkv.weight.asnumpy(),
                          source["layers.0.blocks.0.attn.qkv.weight"])
    with pytest.raises(CheckpointError, match="head has 5 classes"):
        load_checkpoint(micro(num_classes=7), saved[0], strict_head=True)


def test_class_map_keeps_selected_head_rows(saved, tmp_path):
    mapping = tmp_path / "map.txt"
    mapping.write_text("4\n0\n2\n")
    model = micro(num_classes=3)
    report = load_checkpoint(model, saved[0], class_map=str(mapping))
    assert report.head_rows_selected == 3 and not report.head_reinitialised
    source = read_tensors(saved[0])["head.weight"]
    assert np.array_equal(model.head.weight.asnumpy(), source[[4, 0, 2]])


def test_imagenet22k_head_keeps_the_official_1k_rows(tmp_path):
    """A synthetic 21841-class checkpoint fine-tuned for 1000 classes, as the official loader does it."""
    from mindswin.checkpoint.loader import CLASS_MAPS

    rows = np.loadtxt(CLASS_MAPS["imagenet22k_to_1k"], dtype=np.int64)
    # the official map: 1000 distinct 22k rows in ImageNet-1k's class order
    assert rows.shape == (1000,) and len(set(rows.tolist())) == 1000 and rows.max() < 21841
    assert rows[:3].tolist() == [359, 368, 460] and rows[-1] == 21817
    path = str(tmp_path / "in22k.ckpt")
    save_checkpoint(randomize(micro(num_classes=21841), seed=5), path, CheckpointMetadata())
    source = read_tensors(path)
    for class_map in ("", "imagenet22k_to_1k"):  # the official rule applies without being asked
        model = micro(num_classes=1000)
        report = load_checkpoint(model, path, class_map=class_map or None)
        assert report.head_rows_selected == 1000 and not report.head_reinitialised
        assert np.array_equal(model.head.weight.asnumpy(), source["head.weight"][rows])
        assert np.array_equal(model.head.bias.asnumpy(), source["head.bias"][rows])
    model = micro(num_classes=1000)
    report = load_checkpoint(model, path, class_map="none")
    assert report.head_reinitialised and not model.head.weight.asnumpy().any()
    with pytest.raises(CheckpointError, match="class map not found: nowhere.txt"):
        load_checkpoint(micro(num_classes=1000), path, class_map="nowhere.txt")


def test_fine_tuning_recipes_name_the_shipped_map():
    from mindswin.config import load_config

    for name in ("swinv2_base_window12to16_192to256_22kto1k_ft", "swinv2_large_window12to24_192to384_22kto1k_ft"):
        config = load_config(os.path.join(ROOT, "configs", "swinv2", f"{name}.yaml"))
        assert config.class_map == "imagenet22k_to_1k"


@pytest.mark.parametrize("content, match", [
    (b"", "empty"),
    (b"this is not a checkpoint", "not a readable MindSpore checkpoint"),
])
def test_bad_ckpt_files(tmp_path, content, match):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(micro(), str(path))


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        mindswin.create_model("swinv2_micro_window4_32", checkpoint_path=str(tmp_path / "nope.ckpt"))
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a recognised checkpoint"):
        load_checkpoint(micro(), str(text))


def test_truncated_native_checkpoint(saved, tmp_path):
    data = open(saved[0], "rb").read()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(micro(), str(cut))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"model": _RunsCode(marker)}, protocol=2))
    monkeypatch.setitem(sys.modules, "torch", None)  # force the torch-free reader
    with pytest.raises(CheckpointError, match="refusing to unpickle global 'posix.system'"):
        read_tensors(str(path))
    assert not marker.exists()


def test_conversion_tool_explains_a_checkpoint_that_does_not_fit(tmp_path, saved):
    out = tmp_path / "converted.ckpt"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "convert_weights.py"), "--src", saved[0], "--model",
         "swinv2_tiny_window8_256", "--out", str(out), "--img_size", "32", "--window_size", "4"],
        capture_output=True, text=True)
    # the micro geometry (width 24) is not a registered variant: the tool must say why it cannot load
    assert result.returncode == 2 and "does not fit model swinv2_tiny_window8_256" in result.stderr
    assert "Traceback" not in result.stderr and not out.exists()


@pytest.mark.reference
def test_pth_without_torch_and_converted_round_trip(reference_dir, tmp_path, batch, monkeypatch):
    ref = np.load(reference_dir / "tiny8.npz")
    monkeypatch.setitem(sys.modules, "torch", None)
    model = mindswin.create_model("swinv2_tiny_window8_256")
    report = load_checkpoint(model, str(reference_dir / "tiny8.official.pth"))
    assert report.layout == "official"
    direct = model(ms.Tensor(ref["input"])).asnumpy()
    assert np.abs(direct - ref["timm"]).max() <= 1e-4

    out = tmp_path / "tiny8.ckpt"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "convert_weights.py"), "--src", str(reference_dir / "tiny8.official.pth"),
         "--model", "swinv2_tiny_window8_256", "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "layout: official" in result.stdout and "dropped" in result.stdout
    converted = mindswin.create_model("swinv2_tiny_window8_256", checkpoint_path=str(out))
    assert np.array_equal(converted(ms.Tensor(ref["input"])).asnumpy(), direct)


@pytest.mark.reference
def test_truncated_pth_and_safetensors(reference_dir, tmp_path):
    for name in ("micro.timm.pth", "micro.timm.safetensors"):
        data = (reference_dir / name).read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: len(data) // 2])
        with pytest.raises(CheckpointError, match="truncated|not a valid"):
            load_checkpoint(micro(), str(cut))


@pytest.mark.parametrize("policy, kept", [
    (None, ["e0004", "e0005"]),  # latest_k
    ("val_top1", ["e0002", "e0004"]),  # top_k: the two best scores (e0004 over the equal, older e0001)
])
def test_checkpoint_policies_keep_the_latest_or_the_best(tmp_path, policy, kept):
    from mindspore import nn

    from mindswin.checkpoint import CheckpointMetadata
    from mindswin.engine.checkpoints import CheckpointManager

    files = CheckpointManager(str(tmp_path), "net", keep_max=2, keep_best_by=policy)
    cell = nn.Dense(2, 2)
    scores = {1: 50.0, 2: 80.0, 3: None, 4: 50.0, 5: 40.0}  # epoch 3 was not validated
    for epoch, score in scores.items():
        metrics = {} if score is None else {"val_top1": score}
        files.save_weights(cell, epoch, CheckpointMetadata(model="net", epoch=epoch, metrics=metrics))
    assert [os.path.basename(p)[4:9] for p in files.epoch_checkpoints()] == kept
