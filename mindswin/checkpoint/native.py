"""mindswin's own checkpoint files: weights-only ``.ckpt`` with JSON metadata, written atomically."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Dict, Optional

import mindspore as ms
from mindspore import nn

__all__ = ["META_KEY", "atomic_write", "atomic_write_json", "save_checkpoint", "read_metadata"]

# Name of the string entry holding model name, class names, config... inside a .ckpt.
META_KEY = "mindswin_meta"


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` next to ``path``, then rename over it.

    A crash or kill at any moment leaves either the old file or the new one, never a
    partial file under ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON via :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def save_checkpoint(model: nn.Cell, path: str, metadata: Optional[Dict[str, Any]] = None) -> None:
    """Save the model's parameters (no derived tensors, no optimizer state) to ``path``.

    Args:
        model: The model.
        path: Destination ``.ckpt``.
        metadata: JSON-serialisable extras (model name, class names, ...), read back with
            :func:`read_metadata`.
    """
    meta = dict(metadata or {})
    meta.setdefault("model", getattr(model, "model_name", None))
    append = {META_KEY: json.dumps(meta)}
    params = [{"name": p.name, "data": p} for p in model.get_parameters()]
    atomic_write(path, lambda tmp: ms.save_checkpoint(params, tmp, append_dict=append))


def read_metadata(path: str) -> Dict[str, Any]:
    """The metadata stored by :func:`save_checkpoint` ({} for other files)."""
    if not str(path).endswith(".ckpt"):
        return {}
    try:
        entries = ms.load_checkpoint(path, choice_func=lambda name: name == META_KEY)
    except (RuntimeError, ValueError):
        return {}
    value = entries.get(META_KEY)
    return json.loads(value) if isinstance(value, str) else {}
