"""Reading recipes (``_base_`` first, then the file, then the command line) and writing the resolved one.
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import yaml

from .checks import check_combinations, check_geometry
from .keys import ALIASES, DEFAULTS
from .rules import ConfigError
from .values import COMMAND_LINE, Config, checked, suggest

__all__ = ["BASE_KEY", "load_config", "save_config"]


BASE_KEY = "_base_"


def _recipe_values(path: str, including: Tuple[str, ...] = ()) -> Dict[str, Tuple[Any, str]]:
    """Keys of the recipe at ``path`` over those of its ``_base_`` recipes, each with the file setting it.

    ``_base_`` names one recipe or a list of them, relative to ``path``'s folder; they are
    read in order (a later one overrides an earlier one), then ``path``'s own keys override
    them all, as in mmpretrain.

    Args:
        path: YAML recipe.
        including: The recipes whose ``_base_`` led to ``path``, outermost first.

    Raises:
        ConfigError: for a missing or malformed file, an unknown key (naming the file
            holding it) or recipes that are their own base (naming the cycle).
    """
    if os.path.realpath(path) in map(os.path.realpath, including):
        raise ConfigError(f"recipes include each other through {BASE_KEY}: {' -> '.join((*including, path))}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}" + (f" ({BASE_KEY} of {including[-1]})" if including else ""))
    with open(path, encoding="utf-8") as f:
        try:
            recipe = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{path} is not a text file ({exc.reason} at byte {exc.start}): a recipe is "
                              "UTF-8 YAML with one key: value per line") from exc
    if not isinstance(recipe, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value")
    bases = recipe.pop(BASE_KEY, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a recipe path or a list of them (relative to the folder of "
                          f"{path}), got {bases!r}")
    values: Dict[str, Tuple[Any, str]] = {}
    for base in bases:
        values.update(_recipe_values(os.path.normpath(os.path.join(os.path.dirname(path), base)), (*including, path)))
    for key, value in recipe.items():
        key = ALIASES.get(key, key)
        if key not in DEFAULTS:
            raise ConfigError(f"{path}: unknown key '{key}'.{suggest(key)}")
        values[key] = (value, path)
    return values


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None, *,
                defer_geometry: bool = False) -> Config:
    """Defaults <- YAML recipe at ``path`` (after its ``_base_`` recipes) <- ``overrides``, every key checked.

    Args:
        path: YAML recipe.
        overrides: Command-line values.
        defer_geometry: Skip :func:`check_geometry`, for callers that first complete the
            model keys from a checkpoint and then call it themselves.

    Raises:
        ConfigError: naming the key, the value, the file or option it came from and what is allowed.
    """
    values = {k: option.default for k, option in DEFAULTS.items()}
    recipe, commanded = set(), set()
    for key, (value, source) in (_recipe_values(path) if path else {}).items():
        values[key] = checked(key, value, source)
        recipe.add(key)
    for key, value in (overrides or {}).items():
        key = ALIASES.get(key, key)
        if key not in DEFAULTS:
            raise ConfigError(f"unknown option --{key}.{suggest(key)}")
        values[key] = checked(key, value, COMMAND_LINE)
        commanded.add(key)
    if values["device_target"] is None:
        values["device_target"] = _installed_backend()
    config = Config(values, frozenset(recipe | commanded), frozenset(commanded))
    check_combinations(config)
    if not defer_geometry:
        check_geometry(config)
    return config


def _installed_backend() -> str:
    """The backend the installed MindSpore targets (imported only when device_target is unset)."""
    import mindspore as ms

    return ms.get_context("device_target")


def save_config(config: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    from ..fileio import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            yaml.safe_dump(dict(config), f, sort_keys=False)

    atomic_write(path, write)
