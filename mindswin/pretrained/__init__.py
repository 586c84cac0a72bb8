"""Published weights by name: ``pretrained=True`` as mindcv and timm users type it.

The table (:mod:`.table`) lists every published file of every registered variant;
:func:`resolve_pretrained` turns what a user typed into one file, :func:`pretrained_path` fetches
it into the cache (:mod:`.download`) and returns its path, which loads like any ``ckpt_path``.

What ``pretrained`` may say (a recipe's ``pretrained:``, ``--pretrained``, ``create_model(...,
pretrained=...)``):

- ``True``: the model's default weights: the tag in a timm-style name (``swinv2_tiny_window8_256.ms_in1k``),
  else mindcv's weights for a mindcv name (``swinv2_tiny_window8``), else timm's default tag;
- ``"TAG"`` (``ms_in1k``): that tag of the model; ``"MODEL"`` or ``"MODEL.TAG"``: weights published
  for another variant, e.g. the ImageNet-22k ``swinv2_base_window12_192.ms_in22k`` that the 22k->1k
  fine-tuning recipes start from;
- any of these followed by ``@SOURCE`` (``@official``, ``@timm``, ``@hf``, ``@mindcv``): that
  publisher's copy; without it, the first source of ``$MINDSWIN_PRETRAINED_SOURCES`` (a comma
  list, for a site that reaches only some publishers) that has the file, else the table's first.
"""
from __future__ import annotations

import fnmatch
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Union

from ..config.rules import ConfigError
from ..models.published import (
    ALIAS_DEFAULT_TAGS,
    DEFAULT_TAGS,
    PRETRAINED,
    SOURCES,
    PretrainedWeights,
    WeightFile,
    split_spec,
)
from .download import cache_dir, cached_path, default_cache_dir, fetch, source_url

__all__ = ["PretrainedWeights", "WeightFile", "Choice", "SOURCES", "SOURCES_VARIABLE", "list_pretrained",
           "pretrained_weights", "split_tag", "resolve_pretrained", "pretrained_path", "config_weights",
           "markdown_table", "cache_dir", "cached_path", "default_cache_dir", "fetch", "source_url"]

_logger = logging.getLogger("mindswin.pretrained")

SOURCES_VARIABLE = "MINDSWIN_PRETRAINED_SOURCES"
_BY_NAME = {weights.name: weights for weights in PRETRAINED}


def list_pretrained(pattern: Optional[str] = None) -> List[str]:
    """Names (``model.tag``, as timm's ``list_pretrained``) of the published weights, table order,
    optionally filtered by a shell-style ``pattern``."""
    names = [weights.name for weights in PRETRAINED]
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def pretrained_weights(name: str) -> PretrainedWeights:
    """The table entry of ``model.tag``."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"no published weights named {name!r}; see mindswin.list_pretrained()") from None


def split_tag(name: str) -> tuple:
    """``("swinv2_tiny_window8_256", "ms_in1k")`` for timm's ``name.tag``; ``(name, None)`` without a tag."""
    model, dot, tag = name.partition(".")
    return (model, tag) if dot else (name, None)


def _canonical(model: str) -> str:
    from ..models.registry import resolve_model_name  # the registry imports MindSpore: only when needed

    try:
        return resolve_model_name(model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _is_model(name: str) -> bool:
    try:
        _canonical(name)
    except ConfigError:
        return False
    return True


def _tags(model: str) -> List[str]:
    return [weights.tag for weights in PRETRAINED if weights.model == model]


def _weights_of(model: str, tag: Optional[str]) -> PretrainedWeights:
    """The entry of ``model`` (as typed: a mindcv alias picks mindcv's default) and ``tag`` (None: the default)."""
    canonical = _canonical(model)
    tags = _tags(canonical)
    if not tags:
        with_weights = ", ".join(sorted(DEFAULT_TAGS))
        raise ConfigError(f"{canonical} has no published weights (variants with weights: {with_weights}); train it, "
                          "or give its weights as --ckpt_path")
    tag = tag or ALIAS_DEFAULT_TAGS.get(model) or DEFAULT_TAGS[canonical]
    if tag not in tags:
        raise ConfigError(f"no weights tagged {tag!r} are published for {canonical}; its tags: {', '.join(tags)}")
    return _BY_NAME[f"{canonical}.{tag}"]


@dataclass(frozen=True)
class Choice:
    """The weights and the copy of them that a ``pretrained`` value names."""

    weights: PretrainedWeights
    file: WeightFile

    def describe(self) -> str:
        return f"{self.weights.name} ({self.file.source}: {self.file.url})"


def resolve_pretrained(model: str, pretrained: Union[bool, str] = True) -> Choice:
    """The published file ``pretrained`` names for ``model`` (see the module docstring).

    Args:
        model: Registered name, mindcv alias, or timm's ``name.tag``.
        pretrained: True or a spec string ``[TAG | MODEL | MODEL.TAG][@SOURCE]``.

    Raises:
        ConfigError: One line: what does not exist and what does.
    """
    if pretrained is False or pretrained == "":
        raise ConfigError("pretrained is off: nothing to resolve")
    model, model_tag = split_tag(model)
    spec = "" if pretrained is True else str(pretrained).strip()
    weights_spec, source = split_spec(spec)
    if "@" in spec and not source:
        raise ConfigError(f"{spec!r} names no source after '@': write {weights_spec or 'True'}@SOURCE with a source of "
                          f"{', '.join(SOURCES)}, or leave '@' out for the first source that publishes the weights")
    if source and source not in SOURCES:
        raise ConfigError(f"unknown weights source {source!r}; sources: {', '.join(SOURCES)}")
    if not weights_spec:
        weights = _weights_of(model, model_tag)
    elif "." in weights_spec:
        weights = _weights_of(*split_tag(weights_spec))
    elif weights_spec in _tags(_canonical(model)) or not _is_model(weights_spec):
        if model_tag and model_tag != weights_spec:
            raise ConfigError(f"model {model}.{model_tag} names the tag {model_tag!r} and pretrained names "
                              f"{weights_spec!r}: name the weights once")
        weights = _weights_of(model, weights_spec)
    else:
        weights = _weights_of(weights_spec, None)
    return Choice(weights, _pick_file(weights, source))


def _pick_file(weights: PretrainedWeights, source: str) -> WeightFile:
    available = ", ".join(file.source for file in weights.files)
    if source:
        try:
            return weights.file(source)
        except KeyError:
            raise ConfigError(f"{weights.name} is not published by {source}; it is by {available}") from None
    preferred = [s.strip() for s in os.environ.get(SOURCES_VARIABLE, "").split(",") if s.strip()]
    unknown = [s for s in preferred if s not in SOURCES]
    if unknown:
        raise ConfigError(f"${SOURCES_VARIABLE} names unknown sources {', '.join(unknown)}; sources: "
                          f"{', '.join(SOURCES)}")
    for wanted in preferred:
        for file in weights.files:
            if file.source == wanted:
                return file
    if preferred:
        raise ConfigError(f"{weights.name} is published by {available}, none of ${SOURCES_VARIABLE}="
                          f"{os.environ[SOURCES_VARIABLE]}")
    return weights.files[0]


def pretrained_path(model: str, pretrained: Union[bool, str] = True, *, pretrained_dir: str = "",
                    mirror: str = "") -> str:
    """Resolve ``pretrained`` for ``model`` and fetch the file (cache, else download); its local path.

    Raises:
        ConfigError: ``pretrained`` names no published file.
        CheckpointError: The file cannot be fetched or is corrupt (one line, see :func:`fetch`).
    """
    choice = resolve_pretrained(model, pretrained)
    path = fetch(choice.file, pretrained_dir=pretrained_dir, mirror=mirror)
    _logger.info("pretrained weights %s: %s", choice.describe(), path)
    return path


def config_weights(config) -> str:
    """The weights file a resolved config loads: ``ckpt_path`` if set, else the ``pretrained`` file
    (fetched now), else ""."""
    if config.ckpt_path:
        if config.pretrained is not False:
            _logger.info("ckpt_path %s is loaded; pretrained %s is not fetched", config.ckpt_path, config.pretrained)
        return config.ckpt_path
    if config.pretrained is False:
        return ""
    return pretrained_path(config.model, config.pretrained, pretrained_dir=config.pretrained_dir)


def _checksum_cell(file: WeightFile) -> str:
    if not file.sha256:
        return "none published"
    return f"`{file.sha256}`" + (" (prefix, in the name)" if len(file.sha256) < 64 else "")


def markdown_table() -> str:
    """The README's table of published weights, generated from :data:`PRETRAINED`."""
    lines = ["| weights (`pretrained=` / timm name) | trained on | px | window | classes | top-1 | files: source, "
             "layout, sha256 |",
             "|---|---|---|---|---|---|---|"]
    for weights in PRETRAINED:
        top1 = f"{weights.top1:g}" if weights.top1 is not None else "not stated"
        files = "<br>".join(f"[{file.source}]({file.url}) {file.layout}, sha256 {_checksum_cell(file)}"
                            for file in weights.files)
        window = f"{weights.window_size}" + (f" (from {weights.pretrained_window_sizes[0]})"
                                             if any(weights.pretrained_window_sizes) else "")
        lines.append(f"| `{weights.name}` | {weights.dataset} | {weights.img_size} | {window} | "
                     f"{weights.num_classes} | {top1} | {files} |")
    return "\n".join(lines) + "\n"
