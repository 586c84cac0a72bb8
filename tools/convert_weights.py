"""Convert Swin V2 weights (official, timm, Hugging Face, mmpretrain) to a mindswin .ckpt.

python tools/convert_weights.py --src FILE --model NAME --out OUT.ckpt [--num_classes N]
    [--img_size S --window_size W --pretrained_window_sizes [A,B,C,D]] [--class_map FILE]

The model options are train.py's: the same syntax (lists as ``[8,8,8,8]``), help and checks.
"""
import argparse
import logging
import os
import sys
from typing import List, Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mindswin.config import add_option, load_config  # noqa: E402

# The config keys the conversion builds the model with; the output loads with the same values.
MODEL_KEYS = ("model", "num_classes", "image_resize", "window_size", "pretrained_window_sizes", "class_map")


def main(argv: Optional[List[str]] = None) -> int:
    """Parse the options, convert, print what was mapped and dropped; 2 on a user error."""
    parser = argparse.ArgumentParser(description="Convert official / timm / Hugging Face / mmpretrain Swin V2 "
                                                 "weights to a mindswin .ckpt")
    parser.add_argument("--src", required=True, help="checkpoint file (.pth/.bin/.safetensors/.ckpt) or HF directory")
    parser.add_argument("--out", required=True, help="output .ckpt")
    for key in MODEL_KEYS:
        add_option(parser, key, required=key == "model")
    options = vars(parser.parse_args(argv))
    src, out = options.pop("src"), options.pop("out")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from mindswin.checkpoint import CheckpointError
    from mindswin.checkpoint.convert import convert_checkpoint

    try:
        config = load_config(overrides=options)
        report = convert_checkpoint(src, config.model, out, class_map=config.class_map or None,
                                    num_classes=config.num_classes, img_size=config.image_resize,
                                    window_size=config.window_size,
                                    pretrained_window_sizes=config.pretrained_window_sizes)
    except (CheckpointError, ValueError) as exc:  # ConfigError is a ValueError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    if report.dropped:
        print(f"dropped: {', '.join(report.dropped[:8])}{' ...' if len(report.dropped) > 8 else ''}")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
