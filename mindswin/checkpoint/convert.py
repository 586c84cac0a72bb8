"""Convert a checkpoint of any supported layout to a mindswin ``.ckpt``."""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, List, Optional

from .loader import LoadReport, load_checkpoint
from .native import save_checkpoint

__all__ = ["convert_checkpoint", "main"]


def convert_checkpoint(src: str, model_name: str, out: str, *, class_map: Optional[str] = None,
                       **model_kwargs: Any) -> LoadReport:
    """Load ``src`` into ``model_name`` (built with ``model_kwargs``) and save it to ``out``.

    The result loads with ``create_model(model_name, checkpoint_path=out, **model_kwargs)``
    without any conversion.
    """
    from ..models import create_model

    model = create_model(model_name, **{k: v for k, v in model_kwargs.items() if v is not None})
    report = load_checkpoint(model, src, class_map=class_map)
    save_checkpoint(model, out, metadata={"converted_from": os.path.basename(src), "source_layout": report.layout,
                                          "model_kwargs": {k: v for k, v in model_kwargs.items() if v is not None}})
    return report


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Convert official / timm / Hugging Face / mmpretrain Swin V2 "
                                                 "weights to a mindswin .ckpt")
    parser.add_argument("--src", required=True, help="checkpoint file (.pth/.bin/.safetensors/.ckpt) or HF directory")
    parser.add_argument("--model", required=True, help="mindswin model name, e.g. swinv2_tiny_window8_256")
    parser.add_argument("--out", required=True, help="output .ckpt")
    parser.add_argument("--num_classes", type=int, default=None)
    parser.add_argument("--img_size", type=int, default=None)
    parser.add_argument("--window_size", type=int, default=None)
    parser.add_argument("--pretrained_window_sizes", type=int, nargs="+", default=None)
    parser.add_argument("--class_map", default=None,
                        help="file of source-class indices (one per line) to keep from the head, e.g. 22k->1k")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    from .readers import CheckpointError

    try:
        report = convert_checkpoint(args.src, args.model, args.out, class_map=args.class_map,
                                    num_classes=args.num_classes, img_size=args.img_size,
                                    window_size=args.window_size,
                                    pretrained_window_sizes=args.pretrained_window_sizes)
    except (CheckpointError, ValueError) as exc:
        print(f"error: {exc}")
        return 2
    print(report.summary())
    if report.dropped:
        print(f"dropped: {', '.join(report.dropped[:8])}{' ...' if len(report.dropped) > 8 else ''}")
    print(f"wrote {args.out}")
    return 0
