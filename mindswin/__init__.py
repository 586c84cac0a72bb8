"""mindswin: Swin Transformer V2 in MindSpore.

The names below load on first use (PEP 562), so that importing a submodule, e.g. the
commands in :mod:`mindswin.cli`, runs that module's first line before MindSpore is imported.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "list_pretrained", "load_checkpoint", "save_checkpoint", "CheckpointError",
           "__version__"]

# public name -> the submodule that defines it
_EXPORTS = {"create_model": ".factory", "list_models": ".models", "list_pretrained": ".pretrained",
            "load_checkpoint": ".checkpoint", "save_checkpoint": ".checkpoint", "CheckpointError": ".checkpoint"}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    try:
        return import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
