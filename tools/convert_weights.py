"""Convert Swin V2 weights (official, timm, Hugging Face, mmpretrain) to a mindswin .ckpt.

python tools/convert_weights.py --src FILE --model NAME --out OUT.ckpt [--num_classes N]
    [--img_size S --window_size W --pretrained_window_sizes A B C D] [--class_map FILE]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindswin.checkpoint.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
