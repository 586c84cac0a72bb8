"""Predict images: ``python infer.py --ckpt_path CKPT [--config X.yaml | --model NAME] IMAGE_OR_DIR...``."""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # before mindspore is imported: keep its log to errors

from mindswin.cli import run_infer  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_infer(sys.argv[1:]))
