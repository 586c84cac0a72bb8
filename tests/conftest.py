"""Session setup (graph mode everywhere, the framework's log quiet) and the shared fixtures; the helpers
the tests import are in helpers.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")
# A graph that fails to compile in a test process leaves MindSpore's report (rank_0/om/analyze_fail.ir)
# in the temporary folder, not the working folder (entry scripts direct theirs: runtime.direct_graph_dumps).
os.environ.setdefault("MS_OM_PATH", os.path.join(tempfile.gettempdir(), "mindswin-test-graphs"))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from mindswin.engine.runtime import quiet_framework  # noqa: E402

quiet_framework()
ms.set_context(mode=ms.GRAPH_MODE, jit_syntax_level=ms.STRICT)

import helpers  # noqa: E402
from helpers import (  # noqa: E402
    BASE_ARGS,
    OFFICIAL_VARIANTS,
    REFERENCE_CASES,
    built_once,
    require_torch_python,
    run,
)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # before any fixture of the test: a module fixture that launches msrun is checked against its first test
    helpers.set_current_test(item)


def pytest_runtest_teardown(item: pytest.Item) -> None:
    helpers.set_current_test(None)


def pytest_terminal_summary(terminalreporter) -> None:
    """Seconds per test file (set-up, call and tear-down, shared fixtures where they were built; with several
    pytest-xdist workers, their times added up), longest first."""
    per_file: dict = {}
    for reports in terminalreporter.stats.values():
        for report in reports:
            if isinstance(report, pytest.TestReport):
                entry = per_file.setdefault(report.nodeid.split("::")[0], [0.0, set()])
                entry[0] += report.duration
                entry[1].add(report.nodeid)
    if per_file:
        terminalreporter.write_sep("=", "seconds per test file")
        for path, (seconds, tests) in sorted(per_file.items(), key=lambda kv: -kv[1][0]):
            terminalreporter.write_line(f"{seconds:8.1f} s  {len(tests):4d} tests  {path}")
        total = sum(seconds for seconds, _ in per_file.values())
        terminalreporter.write_line(f"{total:8.1f} s  {sum(len(t) for _, t in per_file.values()):4d} tests  total")


@pytest.fixture(scope="session")
def reference_dir(tmp_path_factory) -> Path:
    """Directory of reference checkpoints and logits produced by timm / transformers."""
    python = require_torch_python()

    def build(out: Path) -> str:
        subprocess.run([str(python), str(ROOT / "tests" / "reference" / "torch_reference.py"), "--out", str(out),
                        "--cases", json.dumps(REFERENCE_CASES), "--variants", json.dumps(OFFICIAL_VARIANTS)],
                       check=True)
        return str(out)

    return Path(built_once(tmp_path_factory, "reference", build))


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
    """4 classes of 32-px patterns: 96 training and 36 validation images."""
    from mindswin.data import make_demo_dataset

    def build(root: Path) -> str:
        make_demo_dataset(str(root), num_classes=4, train_per_class=24, val_per_class=9, image_size=32)
        return str(root)

    return built_once(tmp_path_factory, "patterns", build)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, data_dir):
    """``(ckpt_save_dir, log)`` of a 3-epoch BASE_ARGS run on the demo patterns (EMA, resume states every 2 steps)."""
    def build(out: Path) -> list:
        result = run("train.py", *BASE_ARGS, "--data_dir", data_dir, "--ckpt_save_dir", out, "--resume_save_steps", 2)
        return [str(out), result.stdout + result.stderr]

    out, log = built_once(tmp_path_factory, "run", build)
    return Path(out), log
