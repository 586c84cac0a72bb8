"""Library defaults for CPU threads: a plain script gets the tuned pool; a sized pool is kept."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = """
import os, sys
import mindspore as ms
from mindspore.device_context.cpu import op_tuning
import mindswin
if sys.argv[1] == "sized":
    op_tuning.threads_num(3)
mindswin.create_model("swinv2_micro_window4_32")
try:
    op_tuning.threads_num(5)
    print("pool still unsized")
except RuntimeError:
    print("pool sized")
print("kernel threads", os.environ.get("MINDSWIN_CPU_THREADS"))
"""


@pytest.mark.parametrize("case", ["plain", "sized"])
def test_create_model_sizes_an_unsized_cpu_pool_only(case, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "MINDSWIN_CPU_THREADS"}
    result = subprocess.run([sys.executable, str(script), case], capture_output=True, text=True, cwd=str(ROOT),
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    cores = len(os.sched_getaffinity(0))
    expected = str(max(1, cores // 2)) if case == "plain" else "None"  # the user's 3 stands, untouched
    assert "pool sized" in result.stdout and f"kernel threads {expected}" in result.stdout
