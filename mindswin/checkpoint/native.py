"""mindswin's own checkpoint files: weights-only ``.ckpt`` with JSON metadata, written atomically."""
from __future__ import annotations

import json
import logging
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any, Dict, Iterable, Iterator, Optional, Tuple

import mindspore as ms
from mindspore import Tensor, nn

from ..fileio import atomic_write
from .metadata import CheckpointMetadata

__all__ = ["META_KEY", "save_tensors", "save_checkpoint", "read_meta_json", "read_metadata"]

# Name of the string entry holding model name, class names, config... inside a .ckpt.
META_KEY = "mindswin_meta"


def save_checkpoint(model: nn.Cell, path: str, metadata: Optional[CheckpointMetadata] = None) -> None:
    """Save the model's parameters (no derived tensors, no optimizer state) to ``path``.

    Args:
        model: The model.
        path: Destination ``.ckpt``.
        metadata: Model name, class names, geometry..., read back with :func:`read_metadata`;
            the model name is filled in when missing.
    """
    meta = metadata or CheckpointMetadata()
    if meta.model is None:
        meta.model = getattr(model, "model_name", None)
    # Structural names (``layers.0.blocks.1...``), not ``Parameter.name``: MindSpore renames
    # the parameters of a model compiled beside a twin (an EMA copy) to ``ema.layers...``.
    save_tensors(path, model.parameters_and_names(), asdict(meta))


@contextmanager
def _without_mindspore_save_log() -> Iterator[None]:
    """Mute MindSpore's own CRITICAL line on a failed save: the raised error says it better."""
    get_logger = getattr(ms.log, "_get_logger", None)
    logger = get_logger() if get_logger else logging.getLogger("mindspore")
    disabled = logger.disabled
    logger.disabled = True
    try:
        yield
    finally:
        logger.disabled = disabled


def save_tensors(path: str, named: Iterable[Tuple[str, Tensor]], metadata: Dict[str, Any]) -> None:
    """Write ``(name, tensor)`` pairs and JSON ``metadata`` to a ``.ckpt`` atomically.

    Raises:
        mindswin.fileio.DiskFullError: The disk filled up; no partial file is left.
    """
    entries = [{"name": name, "data": tensor} for name, tensor in named]
    append = {META_KEY: json.dumps(metadata)}
    with _without_mindspore_save_log():
        atomic_write(path, lambda tmp: ms.save_checkpoint(entries, tmp, append_dict=append))


def read_meta_json(path: str) -> Dict[str, Any]:
    """The JSON entry of a mindswin ``.ckpt`` ({} for other files)."""
    if not str(path).endswith(".ckpt"):
        return {}
    try:
        entries = ms.load_checkpoint(path, choice_func=lambda name: name == META_KEY)
    except (RuntimeError, ValueError):
        return {}
    value = entries.get(META_KEY)
    return json.loads(value) if isinstance(value, str) else {}


def read_metadata(path: str) -> CheckpointMetadata:
    """The metadata stored by :func:`save_checkpoint` (all fields None for other files)."""
    return CheckpointMetadata.from_dict(read_meta_json(path))
