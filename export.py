"""Export for deployment (MindIR, or ONNX where MindSpore can).

python export.py --ckpt_path CKPT [--model NAME] --file_format MINDIR [--batch_size N] [--img_size S]
"""
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # before mindspore is imported: keep its log to errors

from mindswin.cli import run_export  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_export(sys.argv[1:]))
