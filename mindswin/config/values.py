"""The resolved config and one value's conversion to its key's type and rule, with the fix named.
"""
from __future__ import annotations

import difflib
from typing import Any, Dict, NoReturn, Sequence, Tuple

import yaml

from .keys import DEFAULTS, RETIRED
from .rules import ConfigError

__all__ = ["Config", "COMMAND_LINE", "checked", "suggest", "parse_cli_value"]


COMMAND_LINE = "command line"


class Config(dict):
    """Resolved configuration: a read-only dict with attribute access.

    ``explicit`` holds the keys set by the recipe or the command line (not defaults), and
    ``commanded`` those set on the command line. Once resolved nothing changes it in place:
    :meth:`replace` returns a new config whose values are checked like a recipe's, so what a
    run saves next to its checkpoints is what it read.
    """

    def __init__(self, values: Dict[str, Any], explicit: frozenset = frozenset(),
                 commanded: frozenset = frozenset()) -> None:
        super().__init__(values)
        object.__setattr__(self, "explicit", frozenset(explicit))
        object.__setattr__(self, "commanded", frozenset(commanded))

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def _frozen(self, *_args: Any, **_kwargs: Any) -> NoReturn:
        raise TypeError("the resolved config is read-only: config.replace(key=value) returns a changed copy")

    __setattr__ = __setitem__ = __delitem__ = _frozen
    update = setdefault = pop = popitem = clear = _frozen

    def __reduce__(self):
        return Config, (dict(self), self.explicit, self.commanded)

    def replace(self, source: str = "resolved config", **changes: Any) -> Config:
        """A copy with ``changes``; a key of the table is checked and named with ``source`` if wrong.

        Other names (a script's positional arguments, e.g. infer.py's ``inputs``) are kept as given.
        """
        values = dict(self)
        for key, value in changes.items():
            values[key] = checked(key, value, source) if key in DEFAULTS else value
        return Config(values, self.explicit, self.commanded)


def suggest(key: str) -> str:
    if key in RETIRED:
        return f" {RETIRED[key]}."
    close = difflib.get_close_matches(key, DEFAULTS, n=3, cutoff=0.6)
    # a key with the same letters (two swapped) before one a letter away: 'modle' is 'model', not 'mode'
    close.sort(key=lambda candidate: sorted(candidate) != sorted(key))
    return f" Did you mean '{close[0]}'?" if close else " Run with --help to list the valid keys."


def _fix(key: str, source: str) -> str:
    """How to correct ``key``, given where its value came from."""
    default = DEFAULTS[key].default
    where = f"change --{key}" if source == COMMAND_LINE else f"change '{key}' in {source} or override it with --{key}"
    return f"{where} (default: {default!r})" if default is not None else where


def checked(key: str, value: Any, source: str) -> Any:
    """``value`` converted to ``key``'s type and checked against its rule."""
    default, kind, allowed = DEFAULTS[key].default, DEFAULTS[key].kind, DEFAULTS[key].allowed
    if value is None:
        if default is None or DEFAULTS[key].null is not None:
            return DEFAULTS[key].null
        raise ConfigError(f"{source}: '{key}' cannot be empty (null); {_fix(key, source)}")
    kinds = kind if isinstance(kind, tuple) else (kind,)
    value = _typed(key, value, kinds, source)
    problem = allowed.problem(value) if allowed is not None else None
    if problem:
        raise ConfigError(f"{source}: '{key}' {problem}; {_fix(key, source)}")
    return value


def _typed(key: str, value: Any, kinds: Tuple[type, ...], source: str) -> Any:
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{source}: '{key}' must be {_type_names(kinds)}, got the boolean {value}; "
                          f"{_fix(key, source)}")
    if isinstance(value, kinds):
        return value
    if float in kinds and isinstance(value, int):
        return float(value)
    if float in kinds and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        except ValueError:
            pass
    if list in kinds and isinstance(value, tuple):
        return list(value)
    raise ConfigError(f"{source}: '{key}' must be {_type_names(kinds)}, got {value!r} "
                      f"({type(value).__name__}); {_fix(key, source)}")


def _type_names(kinds: Sequence[type]) -> str:
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list"}
    return " or ".join(names[k] for k in kinds)


def parse_cli_value(text: str) -> Any:
    """YAML-parse a command-line value: ``True``, ``3``, ``1e-3``, ``[12,12,12,6]``; ``''`` stays empty."""
    if not text.strip():
        return ""  # YAML reads an empty string as null; on a command line it means "none"
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text
