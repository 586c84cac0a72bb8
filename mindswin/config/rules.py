"""The rule classes: what values of the right type a key allows, and how ``--help`` says it.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, Optional

__all__ = ["ConfigError", "Rule", "Choices", "Only", "NumberOr", "Range", "Items", "OddWindow", "RegisteredModel",
           "PublishedWeights"]


class ConfigError(ValueError):
    """A recipe or command-line value is wrong."""


class Rule:
    """Allowed values of one key (beyond its type)."""

    def describe(self) -> str:
        """The allowed values in words, completing "must be ..." (also shown by ``--help``)."""
        raise NotImplementedError

    def allows(self, value: Any) -> bool:
        """Whether ``value`` (already of the key's type) is allowed."""
        raise NotImplementedError

    def problem(self, value: Any) -> Optional[str]:
        """None when ``value`` is allowed, else what is wrong with it."""
        return None if self.allows(value) else f"must be {self.describe()}, got {value!r}"


class Choices(Rule):
    """One of a fixed set of strings.

    Args:
        values: The allowed strings.
        unsupported: Values a user may expect but that cannot work, each with the reason,
            which the error then gives instead of only listing ``values``.
    """

    def __init__(self, *values: str, unsupported: Optional[Dict[str, str]] = None) -> None:
        self.values = values
        self.unsupported = unsupported or {}

    def describe(self) -> str:
        return "one of " + ", ".join(self.values)

    def allows(self, value: Any) -> bool:
        return value in self.values

    def problem(self, value: Any) -> Optional[str]:
        if value in self.unsupported:
            return f"cannot be {value!r}: {self.unsupported[value]}; it must be {self.describe()}"
        return super().problem(value)


class Only(Rule):
    """A key mindcv has, of which mindswin supports one value: any other is refused with ``reason``."""

    def __init__(self, value: Any, reason: str) -> None:
        self.value = value
        self.reason = reason

    def describe(self) -> str:
        return repr(self.value)

    def allows(self, value: Any) -> bool:
        return value == self.value

    def problem(self, value: Any) -> Optional[str]:
        return None if self.allows(value) else f"cannot be {value!r}: {self.reason}; it must be {self.value!r}"


class NumberOr(Rule):
    """A number, or one of the given words."""

    def __init__(self, *words: str) -> None:
        self.words = words

    def describe(self) -> str:
        return "a number or " + " or ".join(map(repr, self.words))

    def allows(self, value: Any) -> bool:
        return value in self.words or isinstance(value, (int, float)) and not isinstance(value, bool)


class Range(Rule):
    """Numbers in an interval written as in mathematics: ``Range("[0, 1)")``, ``Range("(0, inf)")``."""

    _NOTATION = re.compile(r"([\[(])\s*([^,\s]+)\s*,\s*([^\])\s]+)\s*([\])])")

    def __init__(self, interval: str) -> None:
        match = self._NOTATION.fullmatch(interval)
        if not match:
            raise ValueError(f"not an interval: {interval!r} (write e.g. '[0, 1)' or '(0, inf)')")
        self.interval = interval
        self.low_text, self.high_text = match[2], match[3]
        self.low, self.high = float(match[2]), float(match[3])
        self.low_closed, self.high_closed = match[1] == "[", match[4] == "]"

    def describe(self) -> str:
        if math.isinf(self.high):
            return f"{'>=' if self.low_closed else '>'} {self.low_text}"
        return f"in {self.interval}"

    def allows(self, value: Any) -> bool:
        above = value >= self.low if self.low_closed else value > self.low
        below = value <= self.high if self.high_closed else value < self.high
        return above and below


class Items(Rule):
    """A list of numbers, each inside ``each``.

    Args:
        each: Range of every item.
        length: Required number of items; any number when None.
        integers: Items must be integers (else any number).
        ascending: Items must not decrease (a low, high pair).
    """

    def __init__(self, each: Range, length: Optional[int] = None, integers: bool = False,
                 ascending: bool = False) -> None:
        self.each = each
        self.length = length
        self.integers = integers
        self.ascending = ascending

    def describe(self) -> str:
        count = f"{self.length} " if self.length else ""
        kind = "integers" if self.integers else "numbers"
        order = ", low <= high" if self.ascending else ""
        return f"a list of {count}{kind}, each {self.each.describe()}{order}"

    def allows(self, value: Any) -> bool:
        kinds = (int,) if self.integers else (int, float)
        return (isinstance(value, list) and (self.length is None or len(value) == self.length)
                and all(isinstance(v, kinds) and not isinstance(v, bool) and self.each.allows(v) for v in value)
                and (not self.ascending or value == sorted(value)))


class OddWindow(Rule):
    """0 (off) or an odd window side of at least 3."""

    def describe(self) -> str:
        return "0 (off) or an odd number >= 3"

    def allows(self, value: Any) -> bool:
        return value == 0 or (value >= 3 and value % 2 == 1)


class RegisteredModel(Rule):
    """A name of :func:`mindswin.list_models` or one of its mindcv aliases."""

    def describe(self) -> str:
        return "a name from mindswin.list_models() or a mindcv alias"

    def allows(self, value: Any) -> bool:
        return self.problem(value) is None

    def problem(self, value: Any) -> Optional[str]:
        # Imported here: the registry pulls in MindSpore, which reading a config should not need.
        from ..models.registry import resolve_model_name

        try:
            resolve_model_name(value)
        except ValueError as exc:
            return f"must be {self.describe()}: {exc}"
        return None


class PublishedWeights(Rule):
    """``pretrained``: true/false, or a spec of published weights ``[TAG | MODEL | MODEL.TAG][@SOURCE]``.

    This rule checks the spec alone (the tag exists for some variant, the model has weights, the
    source exists); whether it fits the run's ``model`` is checked with the other keys.
    """

    def describe(self) -> str:
        return ("true/false, or published weights: TAG, MODEL or MODEL.TAG, optionally followed by @SOURCE "
                "(python -m mindswin.pretrained lists them)")

    def allows(self, value: Any) -> bool:
        return self.problem(value) is None

    def problem(self, value: Any) -> Optional[str]:
        if isinstance(value, bool):
            return None
        # Imported here: the table is data only, the registry (for model names) pulls in MindSpore.
        from ..models.published import PRETRAINED, SOURCES, split_spec

        weights, source = split_spec(value)
        if not value.strip():
            return f"must be {self.describe()}, got an empty string"
        if source and source not in SOURCES:
            return f"names the unknown source {source!r}; sources: {', '.join(SOURCES)}"
        if not weights or weights in {entry.tag for entry in PRETRAINED}:
            return None
        from ..models.registry import resolve_model_name

        model, _, tag = weights.partition(".")
        try:
            canonical = resolve_model_name(model)
        except ValueError:
            tags = sorted({entry.tag for entry in PRETRAINED})
            return (f"must be {self.describe()}: {weights!r} is neither a tag ({', '.join(tags)}) nor a "
                    "registered model")
        if tag:
            try:
                resolve_model_name(weights)
            except ValueError as exc:
                return f"must be {self.describe()}: {exc}"
        elif not any(entry.model == canonical for entry in PRETRAINED):
            return f"names {canonical}, which has no published weights"
        return None
