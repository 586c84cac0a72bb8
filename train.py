"""Train or fine-tune Swin V2: ``python train.py --config configs/X.yaml [--key value ...]``.

Data parallel: ``msrun --worker_num N --local_worker_num N train.py --config X.yaml --distribute True``.
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # before mindspore is imported: keep its log to errors

from mindswin.cli import run_train  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_train(sys.argv[1:]))
