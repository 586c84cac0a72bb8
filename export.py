"""Export for deployment (MindIR, or ONNX where MindSpore can).

python export.py --ckpt_path CKPT [--model NAME] --file_format MINDIR [--batch_size N] [--img_size S]
"""
import sys

from mindswin.cli import run_export

if __name__ == "__main__":
    sys.exit(run_export(sys.argv[1:]))
