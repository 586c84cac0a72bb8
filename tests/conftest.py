"""Shared fixtures: graph mode everywhere, the PyTorch reference, small generated data."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mindswin.engine.runtime import quiet_framework  # noqa: E402

quiet_framework()
ms.set_context(mode=ms.GRAPH_MODE, jit_syntax_level=ms.STRICT)

# A model small enough to compile in seconds that still has shifted windows, patch merging
# and a window clipped at the last stage.
MICRO = dict(img_size=32, patch_size=2, embed_dim=24, depths=[1, 2, 1], num_heads=[2, 4, 8], window_size=4,
             num_classes=5)
MICRO_MS = dict(MICRO, pretrained_window_sizes=[0, 0, 0])

REFERENCE_CASES = [
    {"name": "micro", "model": "swinv2_tiny_window8_256", "kwargs": MICRO, "batch": 3,
     "layouts": ["timm", "official", "mmpretrain", "hf"]},
    {"name": "tiny8", "model": "swinv2_tiny_window8_256", "batch": 2, "layouts": ["timm", "official"]},
    {"name": "tiny16", "model": "swinv2_tiny_window16_256", "batch": 2, "seed": 3, "layouts": ["timm"]},
    {"name": "base12to16", "model": "swinv2_base_window12to16_192to256", "batch": 1, "seed": 5, "layouts": ["timm"]},
    {"name": "tiny8_to_384w12", "model": "swinv2_tiny_window8_256", "batch": 1, "weights_from": "tiny8",
     "kwargs": {"img_size": 384, "window_size": 12, "pretrained_window_sizes": [8, 8, 8, 8]}, "layouts": []},
]


def torch_python() -> Path:
    return Path(os.environ.get("MINDSWIN_TORCH_PYTHON", ROOT / ".venv-torchref" / "bin" / "python"))


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> Path:
    """Directory of reference checkpoints and logits produced by timm / transformers."""
    python = torch_python()
    if not python.exists():
        message = (f"torch reference venv not found at {python}; build it with "
                   "tests/reference/setup_torch_reference.sh")
        if os.environ.get("MINDSWIN_REQUIRE_REFERENCE"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path_factory.mktemp("reference")
    subprocess.run([str(python), str(ROOT / "tests" / "reference" / "torch_reference.py"), "--out", str(out),
                    "--cases", json.dumps(REFERENCE_CASES)], check=True)
    return out


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
