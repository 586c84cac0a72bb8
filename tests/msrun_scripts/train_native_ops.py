"""train.py with the fused CPU kernels off (MindSpore's own ops, as on Ascend/GPU), for msrun tests.

Usage: msrun ... train_native_ops.py <train.py arguments>
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # before mindspore is imported

from mindswin.cli import run_train  # noqa: E402
from mindswin.models.kernel_library import cpu_kernels  # noqa: E402

if __name__ == "__main__":
    with cpu_kernels(False):
        sys.exit(run_train(sys.argv[1:]))
