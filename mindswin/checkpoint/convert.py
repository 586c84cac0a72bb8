"""Convert a checkpoint of any supported layout to a mindswin ``.ckpt``."""
from __future__ import annotations

import os
from typing import Any, Optional

from ..models import build_model
from .loader import LoadReport, load_checkpoint
from .metadata import CheckpointMetadata
from .native import save_checkpoint

__all__ = ["convert_checkpoint"]


def convert_checkpoint(src: str, model_name: str, out: str, *, class_map: Optional[str] = None,
                       **model_kwargs: Any) -> LoadReport:
    """Load ``src`` into ``model_name`` (built with ``model_kwargs``) and save it to ``out``.

    The result loads with ``create_model(model_name, checkpoint_path=out, **model_kwargs)``
    without any conversion.
    """
    model = build_model(model_name, **{k: v for k, v in model_kwargs.items() if v is not None})
    report = load_checkpoint(model, src, class_map=class_map)
    metadata = CheckpointMetadata(model=model.model_name, num_classes=model.num_classes,
                                  image_resize=model_kwargs.get("img_size"),
                                  window_size=model_kwargs.get("window_size"),
                                  pretrained_window_sizes=model_kwargs.get("pretrained_window_sizes"),
                                  converted_from={"file": os.path.basename(src), "layout": report.layout},
                                  numerics=model.numerics)
    save_checkpoint(model, out, metadata)
    return report
