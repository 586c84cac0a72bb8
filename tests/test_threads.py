"""Library defaults for CPU threads: a plain script gets the tuned pool; a sized pool is kept."""
import os
import subprocess
import sys

import pytest

from helpers import ROOT

SCRIPT = """
import os, sys
import mindspore as ms
from mindspore.device_context.cpu import op_tuning
import mindswin
if sys.argv[1] == "sized":
    op_tuning.threads_num(3)
if sys.argv[1] == "context":
    ms.set_context(runtime_num_threads=int(sys.argv[2]))  # the deprecated way: MindSpore's pool follows it
mindswin.create_model("swinv2_micro_window4_32")
try:
    op_tuning.threads_num(5)
    print("pool still unsized")
except RuntimeError:
    print("pool sized")
print("kernel threads", os.environ.get("MINDSWIN_CPU_THREADS"))
print("context threads", ms.get_context("runtime_num_threads"))
"""


@pytest.mark.parametrize("case", ["plain", "sized", "context"])
def test_create_model_sizes_an_unsized_cpu_pool_only(case, tmp_path):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "MINDSWIN_CPU_THREADS"}
    user_threads = 3 if os.cpu_count() != 3 else 4  # not MindSpore's default, min(cores, 30)
    result = subprocess.run([sys.executable, str(script), case, str(user_threads)], capture_output=True, text=True,
                            cwd=str(ROOT),
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    cores = len(os.sched_getaffinity(0))
    if case == "context":  # the user's count stands: the pool is left to the context, the kernels follow it
        assert "pool still unsized" in result.stdout and f"context threads {user_threads}" in result.stdout
        assert f"kernel threads {user_threads}" in result.stdout
        return
    expected = str(max(1, cores // 2)) if case == "plain" else "None"  # the user's 3 stands, untouched
    assert "pool sized" in result.stdout and f"kernel threads {expected}" in result.stdout
