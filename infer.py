"""Predict images: ``python infer.py --ckpt_path CKPT [--config X.yaml | --model NAME] IMAGE_OR_DIR...``."""
import sys

from mindswin.cli import run_infer

if __name__ == "__main__":
    sys.exit(run_infer(sys.argv[1:]))
