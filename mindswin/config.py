"""YAML recipes + ``--key value`` overrides, checked against one table of known keys.

Keys follow mindcv's names where mindcv has one. Every key has a default and a type;
a misspelt key or a value of the wrong type is an error that names the nearest valid key
or the expected type, raised before anything is built or compiled.
"""
from __future__ import annotations

import argparse
import difflib
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

__all__ = ["ConfigError", "Config", "DEFAULTS", "load_config", "parse_args", "save_config"]


class ConfigError(ValueError):
    """A recipe or command-line value is wrong."""


# key: (default, type, help). Types: int, float, bool, str, list, or a tuple of them
# (None is always allowed where the default is None).
_NUM = (int, float)
DEFAULTS: Dict[str, Tuple[Any, Any, str]] = {
    # model
    "model": ("swinv2_tiny_window8_256", str, "registered model name (see mindswin.list_models())"),
    "num_classes": (None, int, "classifier width; default: the number of class folders"),
    "image_resize": (None, int, "train/eval image side; default: the model's"),
    "window_size": (None, int, "attention window; default: the model's"),
    "pretrained_window_sizes": (None, list, "per-stage windows of the weights being fine-tuned"),
    "drop_path_rate": (0.1, float, "stochastic depth rate"),
    "recompute": (False, bool, "recompute block activations in backward"),
    "reuse_blocks": (None, bool, "compile each block once (lazy_inline); default: on for Ascend, off elsewhere"),
    "ckpt_path": ("", str, "weights to start from (any supported layout) / to evaluate"),
    "pretrained": ("", str, "alias of ckpt_path for fine-tuning recipes"),
    "class_map": ("", str, "file of source-class indices to keep from a loaded head (e.g. 22k->1k)"),
    # data
    "data_dir": ("", str, "folder with train/<class>/... and val/<class>/..."),
    "train_split": ("train", str, "training sub-folder"),
    "val_split": ("val", str, "validation sub-folder"),
    "num_parallel_workers": (2, int, "data-pipeline worker threads"),
    "strict_data": (False, bool, "error on unreadable images instead of skipping them"),
    "verify_images": ("auto", str, "auto | full | header: how images are checked when scanned"),
    "auto_augment": ("rand-m9-mstd0.5-inc1", str, "timm-style policy, '' for none"),
    "re_prob": (0.25, float, "random erasing probability"),
    "color_jitter": (None, float, "colour jitter when auto_augment is off"),
    "hflip": (0.5, float, "horizontal flip probability"),
    "scale": ([0.08, 1.0], list, "RandomResizedCrop area range"),
    "ratio": ([0.75, 1.3333333], list, "RandomResizedCrop aspect range"),
    "interpolation": ("bicubic", str, "resize interpolation"),
    "crop_pct": (None, float, "eval centre-crop fraction; 1.0 squash-resizes; default: the model's"),
    "mixup": (0.8, float, "mixup alpha (0: off)"),
    "cutmix": (1.0, float, "cutmix alpha (0: off)"),
    "mixup_prob": (1.0, float, "probability of mixing"),
    "mixup_switch_prob": (0.5, float, "probability of cutmix when both are on"),
    "mixup_mode": ("batch", str, "batch | pair | elem"),
    "label_smoothing": (0.1, float, "label smoothing"),
    # optimisation
    "batch_size": (128, int, "images per device per step"),
    "epoch_size": (300, int, "epochs"),
    "gradient_accumulation_steps": (1, int, "micro-batches per optimizer step"),
    "opt": ("adamw", str, "optimizer (adamw)"),
    "lr": (5e-4, float, "peak learning rate per lr_base_batch images of global batch"),
    "lr_base_batch": (512, int, "global batch the lr values refer to (linear scaling rule)"),
    "scale_lr": (True, bool, "scale lr, min_lr, warmup_lr by global_batch / lr_base_batch"),
    "min_lr": (5e-6, float, "final learning rate (scaled like lr)"),
    "warmup_lr": (5e-7, float, "learning rate at step 0 (scaled like lr)"),
    "warmup_epochs": (20, _NUM, "linear warmup length in epochs"),
    "lr_scheduler": ("cosine_decay", str, "cosine_decay | constant"),
    "weight_decay": (0.05, float, "AdamW weight decay (not on biases, norms, cpb_mlp, logit_scale)"),
    "betas": ([0.9, 0.999], list, "AdamW betas"),
    "eps": (1e-8, float, "AdamW epsilon"),
    "clip_grad": (True, bool, "clip the global gradient norm"),
    "clip_value": (5.0, float, "max global gradient norm"),
    "amp_level": ("O2", str, "O0 (float32) | O2 (float16 matmuls, float32 islands)"),
    "amp_dtype": ("float16", str, "float16 | bfloat16 under O2"),
    "loss_scale_type": ("dynamic", str, "dynamic | fixed"),
    "loss_scale": (65536.0, float, "initial (dynamic) or constant (fixed) loss scale"),
    "loss_scale_factor": (2.0, float, "dynamic loss-scale growth/backoff factor"),
    "scale_window": (1000, int, "finite steps before the dynamic loss scale grows"),
    "ema": (False, bool, "keep an EMA of the weights and validate with it"),
    "ema_decay": (0.9998, float, "EMA decay per optimizer step"),
    # checkpoints / logging
    "ckpt_save_dir": ("./output", str, "checkpoints, resume state, config, metrics"),
    "keep_checkpoint_max": (3, int, "last-k weight checkpoints kept (plus the best)"),
    "ckpt_save_interval": (1, int, "epochs between weight checkpoints"),
    "resume_save_steps": (0, int, "also save resume state every N steps (0: epoch ends only)"),
    "resume": ("", str, "'auto' (latest in ckpt_save_dir) or a resume_state.ckpt path"),
    "val_while_train": (True, bool, "validate during training"),
    "val_interval": (1, int, "epochs between validations"),
    "val_batch_size": (None, int, "eval batch size; default: batch_size"),
    "log_interval": (20, int, "steps between log lines"),
    "seed": (42, int, "global seed"),
    # runtime
    "distribute": (False, bool, "data parallel under msrun"),
    "device_target": ("CPU", str, "CPU | GPU | Ascend"),
    "jit_level": ("O2", str, "graph-compile level on Ascend (O0 | O1 | O2)"),
    "enable_parallel_optimizer": (False, bool, "ZeRO-1 optimizer-state sharding (Ascend only)"),
    "hccl_buffsize": (None, int, "HCCL buffer size in MB (Ascend only)"),
    # validate / infer / export
    "output": ("", str, "validate.py / infer.py: write results to this JSON file"),
    "topk": (5, int, "infer.py: classes reported per image"),
    "class_names_file": ("", str, "infer.py: index->name file (one name per line) for checkpoints without names"),
    "file_format": ("MINDIR", str, "export.py: MINDIR | ONNX"),
    "export_file": ("", str, "export.py: output path without extension; default: next to the checkpoint"),
}
# Other spellings accepted on the command line.
ALIASES = {"img_size": "image_resize"}


class Config(dict):
    """Resolved configuration: a dict with attribute access.

    ``explicit`` holds the keys set by the recipe or the command line (not defaults).
    """

    explicit: frozenset = frozenset()

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "explicit":
            object.__setattr__(self, key, value)
        else:
            self[key] = value


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, DEFAULTS, n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else " Run with --help to list the valid keys."


def _coerce(key: str, value: Any, source: str) -> Any:
    default, kind, _ = DEFAULTS[key]
    if value is None:
        return None
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds:
        raise ConfigError(f"{source}: '{key}' must be {_type_names(kinds)}, got the boolean {value}")
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
    if str in kinds and value == "":
        return ""
    raise ConfigError(f"{source}: '{key}' must be {_type_names(kinds)}, got {value!r} "
                      f"({type(value).__name__}); default is {default!r}")


def _type_names(kinds: Sequence[type]) -> str:
    names = {int: "an integer", float: "a number", bool: "true/false", str: "a string", list: "a list"}
    return " or ".join(names[k] for k in kinds)


def _parse_cli_value(text: str) -> Any:
    """YAML-parse a command-line value: ``True``, ``3``, ``1e-3``, ``[12,12,12,6]``."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: Optional[str] = None, overrides: Optional[Dict[str, Any]] = None) -> Config:
    """Defaults <- YAML recipe at ``path`` <- ``overrides``, with every key and type checked."""
    values = {k: v[0] for k, v in DEFAULTS.items()}
    explicit = set()
    if path:
        if not os.path.isfile(path):
            raise ConfigError(f"config file not found: {path}")
        with open(path) as f:
            try:
                recipe = yaml.safe_load(f) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        if not isinstance(recipe, dict):
            raise ConfigError(f"{path} must hold a mapping of key: value")
        for key, value in recipe.items():
            if key not in DEFAULTS:
                raise ConfigError(f"{path}: unknown key '{key}'.{_suggest(key)}")
            values[key] = _coerce(key, value, path)
            explicit.add(key)
    for key, value in (overrides or {}).items():
        key = ALIASES.get(key, key)
        if key not in DEFAULTS:
            raise ConfigError(f"unknown option --{key}.{_suggest(key)}")
        values[key] = _coerce(key, value, "command line")
        explicit.add(key)
    config = Config(values)
    config.explicit = frozenset(explicit)
    _check(config)
    return config


def _check(config: Config) -> None:
    choices = {"amp_level": ("O0", "O2"), "amp_dtype": ("float16", "bfloat16"),
               "loss_scale_type": ("dynamic", "fixed"), "lr_scheduler": ("cosine_decay", "constant"),
               "mixup_mode": ("batch", "pair", "elem"), "verify_images": ("auto", "full", "header"),
               "opt": ("adamw",), "device_target": ("CPU", "GPU", "Ascend"), "jit_level": ("O0", "O1", "O2")}
    for key, allowed in choices.items():
        if config[key] not in allowed:
            raise ConfigError(f"'{key}' must be one of {', '.join(allowed)}; got {config[key]!r}")
    for key in ("batch_size", "epoch_size", "gradient_accumulation_steps", "keep_checkpoint_max", "log_interval"):
        if config[key] < 1:
            raise ConfigError(f"'{key}' must be >= 1, got {config[key]}")
    if config.enable_parallel_optimizer and config.device_target != "Ascend":
        raise ConfigError("enable_parallel_optimizer (ZeRO-1 optimizer sharding) is supported by MindSpore on "
                          f"Ascend only in data-parallel mode; device_target is {config.device_target}. Set "
                          "enable_parallel_optimizer: False on this backend")
    if config.hccl_buffsize is not None and config.device_target != "Ascend":
        raise ConfigError("hccl_buffsize is an Ascend (HCCL) setting; remove it on "
                          f"device_target {config.device_target}")


def parse_args(argv: Optional[List[str]] = None, description: str = "", required: Sequence[str] = (),
               positional: Optional[str] = None) -> Config:
    """``--config X.yaml`` plus ``--key value`` for every key in :data:`DEFAULTS`.

    Args:
        argv: Arguments (default ``sys.argv[1:]``).
        description: ``--help`` text.
        required: Keys that must be non-empty.
        positional: Name under which extra positional arguments are stored (e.g. images).
    """
    parser = argparse.ArgumentParser(description=description, allow_abbrev=False)
    parser.add_argument("--config", "-c", default="", help="YAML recipe")
    if positional:
        parser.add_argument(positional, nargs="*", default=[])
    for key, (default, _, help_text) in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=_parse_cli_value, default=argparse.SUPPRESS,
                            help=f"{help_text} (default: {default!r})")
    for alias, key in ALIASES.items():
        parser.add_argument(f"--{alias}", type=_parse_cli_value, default=argparse.SUPPRESS, help=f"same as --{key}")
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        key = unknown[0].lstrip("-").split("=")[0]
        raise ConfigError(f"unknown option {unknown[0]}.{_suggest(key)}")
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", positional)}
    config = load_config(args.config or None, overrides)
    for key in required:
        if not config[key]:
            raise ConfigError(f"--{key} is required ({DEFAULTS[key][2]})")
    if positional:
        config[positional] = getattr(args, positional)
    return config


def save_config(config: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .checkpoint.native import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            yaml.safe_dump(dict(config), f, sort_keys=False)

    atomic_write(path, write)
