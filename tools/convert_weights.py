"""Convert Swin V2 weights (official, timm, Hugging Face, mmpretrain) to a mindswin .ckpt.

python tools/convert_weights.py --src FILE --model NAME --out OUT.ckpt [--num_classes N]
    [--img_size S --window_size W --pretrained_window_sizes [A,B,C,D]] [--class_map FILE]

The model options are train.py's: the same syntax (lists as ``[8,8,8,8]``), help and checks.
Also installed as ``mindswin-convert-weights``.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindswin.cli import run_convert_weights  # noqa: E402

if __name__ == "__main__":
    sys.exit(run_convert_weights(sys.argv[1:]))
