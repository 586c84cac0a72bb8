"""Train or fine-tune Swin V2: ``python train.py --config configs/X.yaml [--key value ...]``.

Data parallel: ``msrun --worker_num N --local_worker_num N train.py --config X.yaml --distribute True``.
"""
import sys

from mindswin.cli import run_train

if __name__ == "__main__":
    sys.exit(run_train(sys.argv[1:]))
