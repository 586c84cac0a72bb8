"""Logits of mindswin vs timm / transformers on the same (random, non-trivial) weights."""
import mindspore as ms
import numpy as np
import pytest

import mindswin
from mindswin.checkpoint import load_checkpoint

from helpers import MICRO_MS, OFFICIAL_VARIANTS

pytestmark = pytest.mark.reference
TOLERANCE = 1e-4  # max abs difference of float32 logits


def _logits(model, x: np.ndarray) -> np.ndarray:
    return model(ms.Tensor(x)).asnumpy()


@pytest.mark.parametrize("case, name, kwargs", [
    ("tiny8", "swinv2_tiny_window8_256", {}),
    ("tiny16", "swinv2_tiny_window16_256", {}),
    pytest.param("base12to16", "swinv2_base_window12to16_192to256", {}, marks=pytest.mark.slow),
    ("tiny8_to_384w12", "swinv2_tiny_window8_256",
     {"img_size": 384, "window_size": 12, "pretrained_window_sizes": [8, 8, 8, 8]}),
    ("micro_pad40", "swinv2_tiny_window8_256", dict(MICRO_MS, img_size=40)),
    ("micro_window3", "swinv2_tiny_window8_256", dict(MICRO_MS, window_size=3)),
    ("micro_odd36", "swinv2_tiny_window8_256", dict(MICRO_MS, img_size=36)),
])
def test_timm_parity(reference_dir, case, name, kwargs):
    ref = np.load(reference_dir / f"{case}.npz")
    source = "tiny8" if case == "tiny8_to_384w12" else case
    model = mindswin.create_model(name, checkpoint_path=str(reference_dir / f"{source}.timm.safetensors"), **kwargs)
    diff = np.abs(_logits(model, ref["input"]) - ref["timm"]).max()
    print(f"{case}: max |mindswin - timm| = {diff:.3e} (logit scale {np.abs(ref['timm']).max():.2f})")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("filename, key", [
    ("micro.timm.safetensors", "timm"),
    ("micro.timm.pth", "timm"),
    ("micro.official.pth", "timm"),
    ("micro.mmpretrain.pth", "timm"),
    ("micro.hf", "hf"),
    ("micro.hf/model.safetensors", "hf"),
])
def test_every_layout_loads_to_reference_logits(reference_dir, filename, key):
    ref = np.load(reference_dir / "micro.npz")
    model = mindswin.create_model("swinv2_tiny_window8_256", **MICRO_MS)
    report = load_checkpoint(model, str(reference_dir / filename))
    assert len(report.loaded) == len(model.state_shapes())
    diff = np.abs(_logits(model, ref["input"]) - ref[key]).max()
    print(f"{filename} ({report.layout}): max diff {diff:.3e}")
    assert diff <= TOLERANCE


def test_official_layout_at_full_size_and_buffers_dropped(reference_dir):
    ref = np.load(reference_dir / "tiny8.npz")
    model = mindswin.create_model("swinv2_tiny_window8_256")
    report = load_checkpoint(model, str(reference_dir / "tiny8.official.pth"))
    assert report.layout == "official"
    assert any(k.endswith("attn_mask") for k in report.dropped)
    assert any(k.endswith("relative_coords_table") for k in report.dropped)
    assert np.abs(_logits(model, ref["input"]) - ref["timm"]).max() <= TOLERANCE


@pytest.mark.slow
def test_parameter_counts_equal_timm(reference_dir):
    import json

    counts = json.loads((reference_dir / "param_counts.json").read_text())
    assert sorted(counts) == sorted(OFFICIAL_VARIANTS)
    for name, expected in counts.items():
        assert mindswin.create_model(name).param_count() == expected, name
