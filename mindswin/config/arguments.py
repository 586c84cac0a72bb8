"""The command line of each script: its keys as ``--key value`` options, grouped ``--help``, errors.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from typing import Any, List, NoReturn, Optional, Sequence

from .keys import ALIASES, DEFAULTS, SCRIPTS, TASKS
from .recipes import BASE_KEY, load_config
from .rules import ConfigError
from .values import Config, parse_cli_value, suggest

__all__ = ["add_option", "parse_args", "require"]


def add_option(parser: argparse._ActionsContainer, key: str, *, required: bool = False, hidden: bool = False) -> None:
    """``--key`` (and its aliases) of :data:`DEFAULTS` on ``parser``, read as by :func:`parse_cli_value`.

    Left out of the namespace unless given, so that only given values override a recipe.

    Args:
        parser: Parser or argument group.
        key: Key of :data:`DEFAULTS`.
        required: The option must be given (its default is then not shown).
        hidden: Parsed but left out of ``--help``.
    """
    option = DEFAULTS[key]
    tasks = f"task {' or '.join(option.tasks)}: " if option.tasks != TASKS else ""
    allowed = f"; allowed: {option.allowed.describe()}" if option.allowed is not None else ""
    default = "" if required else f" (default: {option.default!r})"
    flags = [f"--{key}"] + [f"--{alias}" for alias, aliased in ALIASES.items() if aliased == key]
    parser.add_argument(*flags, dest=key, type=parse_cli_value, default=argparse.SUPPRESS, required=required,
                        metavar=_metavar(option.kind),
                        help=argparse.SUPPRESS if hidden else f"{tasks}{option.help}{allowed}{default}")


def _metavar(kind: Any) -> str:
    """How ``--help`` shows a value of type ``kind``: lists in the syntax they are given in."""
    if kind is list:
        return "[A,B,...]"
    return {int: "N", bool: "BOOL", str: "TEXT", (bool, str): "BOOL|WEIGHTS"}.get(kind, "X")  # X: float or int-or-float


# Shown by the --help of the scripts that complete the model keys from a checkpoint.
FROM_CHECKPOINT = """\
The model and its geometry come from a mindswin .ckpt's metadata unless given (here or in
--config): model, image size (image_resize), window, pretrained windows, crop_pct and
interpolation. Other layouts (official/timm .pth, .safetensors, Hugging Face, mmpretrain)
carry none: give --model and the geometry for them."""


class _Parser(argparse.ArgumentParser):
    """argparse whose mistakes (an option without its value) are a ConfigError: one ``error:`` line, exit 2."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{message} (run {self.prog} --help for the options)")


def parse_args(argv: Optional[List[str]] = None, *, script: str, description: str = "", examples: str = "",
               required: Sequence[str] = (), positional: Optional[str] = None,
               model_from_checkpoint: bool = False) -> Config:
    """``--config X.yaml`` plus ``--key value`` for the keys of :data:`DEFAULTS` that ``script`` reads.

    ``--help`` lists those keys by group. A key only other scripts read is an error naming
    them; a recipe may still set it (a recipe describes a whole run).

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
        script: One of :data:`SCRIPTS`.
        description: ``--help`` text.
        examples: Command lines shown at the end of ``--help``, one per line.
        required: Keys that must be non-empty.
        positional: Name under which extra positional arguments are stored (e.g. images).
        model_from_checkpoint: The caller completes the model keys from a checkpoint's
            metadata and then calls :func:`check_geometry` itself; ``--help`` says so.
    """
    if script not in SCRIPTS:
        raise ValueError(f"unknown script {script!r}; one of {', '.join(SCRIPTS)}")
    if model_from_checkpoint:
        description = f"{description}\n\n{FROM_CHECKPOINT}"
    usage = f"%(prog)s [-h] [--config RECIPE] [--KEY VALUE ...]{f' [{positional} ...]' if positional else ''}"
    launcher = os.path.basename(sys.argv[0])  # a console script (mindswin-train) names itself
    parser = _Parser(prog=launcher if launcher.startswith("mindswin-") else f"{script}.py", usage=usage,
                     description=description,
                     epilog=("examples:\n" + textwrap.indent(examples, "  ")) if examples else None,
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", "-c", default="", metavar="RECIPE",
                        help=f"YAML recipe; the recipe(s) its {BASE_KEY} names are read first, then overridden")
    if positional:
        parser.add_argument(positional, nargs="*", default=[])
    groups = {}
    for key, option in DEFAULTS.items():
        if script in option.scripts:
            if option.group not in groups:
                groups[option.group] = parser.add_argument_group(option.group)
            add_option(groups[option.group], key)
        else:
            add_option(parser, key, hidden=True)  # parsed, to be refused by name below
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        key = unknown[0].lstrip("-").split("=")[0]
        raise ConfigError(f"unknown option {unknown[0]}.{suggest(key)}")
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", positional)}
    for key in overrides:
        if script not in DEFAULTS[key].scripts:
            users = ", ".join(f"{user}.py" for user in DEFAULTS[key].scripts)
            raise ConfigError(f"--{key} is an option of {users}; {script}.py does not use it")
    config = load_config(args.config or None, overrides, defer_geometry=model_from_checkpoint)
    require(config, required)
    return config.replace(**{positional: getattr(args, positional)}) if positional else config


def require(config: Config, keys: Sequence[str]) -> None:
    """Refuse an empty value for any of ``keys``, naming the option."""
    for key in keys:
        if not config[key]:
            raise ConfigError(f"--{key} is required ({DEFAULTS[key].help})")
