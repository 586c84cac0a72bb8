"""YAML recipes + ``--key value`` overrides, checked against one table of known keys.

Keys follow mindcv's names where mindcv has one. Every key has a default, a type, its
allowed values (a :class:`Choices`, :class:`Range` or :class:`Items` rule), its ``--help``
group and the scripts that read it in :data:`DEFAULTS`. A misspelt key, a value of the
wrong type, a value outside its range, an option of another script or a model geometry the
network cannot be built with is a :class:`ConfigError` naming the key, the value and what
is allowed, raised before anything is built or compiled. A recipe may start from others
(``_base_``, as in mmpretrain) and state only what differs.

The package has one file per job: :mod:`.rules` (what a key allows), :mod:`.keys` (the table),
:mod:`.values` (the resolved config and type coercion), :mod:`.recipes` (YAML and ``_base_``),
:mod:`.checks` (cross-key and geometry checks) and :mod:`.arguments` (argparse and ``--help``).
"""
from .arguments import add_option, parse_args, require
from .checks import NO_WARMUP, check_geometry
from .keys import ALIASES, DEFAULTS, RETIRED, SCRIPTS, Option, choices
from .recipes import load_config, save_config
from .rules import Choices, ConfigError, Items, NumberOr, OddWindow, Only, Range, RegisteredModel
from .values import Config, parse_cli_value

__all__ = ["ConfigError", "Config", "DEFAULTS", "ALIASES", "RETIRED", "Option", "Choices", "Only", "NumberOr", "Range",
           "Items", "OddWindow", "RegisteredModel", "SCRIPTS", "NO_WARMUP", "choices", "load_config", "check_geometry",
           "parse_cli_value", "add_option", "parse_args", "require", "save_config"]
