"""YAML recipes + ``--key value`` overrides, checked against one table of known keys.

Keys follow mindcv's names where mindcv has one. Every key has a default, a type, its
allowed values (a :class:`Choices`, :class:`Range` or :class:`Items` rule), its ``--help``
group and the scripts that read it in :data:`DEFAULTS`. A misspelt key, a value of the
wrong type, a value outside its range, an option of another script or a model geometry the
network cannot be built with is a :class:`ConfigError` naming the key, the value and what
is allowed, raised before anything is built or compiled. A recipe may start from others
(``_base_``, as in mmpretrain) and state only what differs.
"""
from __future__ import annotations

import argparse
import difflib
import math
import os
import re
import sys
import textwrap
from typing import Any, Dict, List, NamedTuple, NoReturn, Optional, Sequence, Tuple

import yaml

__all__ = ["ConfigError", "Config", "DEFAULTS", "ALIASES", "RETIRED", "Option", "Choices", "Only", "NumberOr", "Range",
           "Items", "OddWindow", "RegisteredModel", "SCRIPTS", "choices", "load_config", "check_geometry",
           "parse_cli_value", "add_option", "parse_args", "save_config"]


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
        from .models.registry import resolve_model_name

        try:
            resolve_model_name(value)
        except ValueError as exc:
            return f"must be {self.describe()}: {exc}"
        return None


# The entry scripts, by the name of their file without ".py".
TRAIN, VALIDATE, INFER, EXPORT = "train", "validate", "infer", "export"
SCRIPTS = (TRAIN, VALIDATE, INFER, EXPORT)
_ALL = SCRIPTS
_WITH_DATA = (TRAIN, VALIDATE)  # read an image folder
_PREPROCESSING = (TRAIN, VALIDATE, INFER)  # resize and crop images for the model


class Option(NamedTuple):
    """One key of :data:`DEFAULTS`.

    Attributes:
        default: Value when neither the recipe nor the command line sets the key.
        kind: int, float, bool, str, list or a tuple of them. None is allowed only where
            the default is None.
        help: ``--help`` text.
        allowed: Rule for the values of the right type, or None when every one is valid.
        scripts: Scripts (:data:`SCRIPTS`) that read the key, train.py alone unless given:
            only they offer it as an option.
        group: ``--help`` section, set by :func:`_group`.
        null: The value an explicit null (YAML ``null``/``~``) stands for, for keys whose
            default is not None but where mindcv's recipes write null; null is refused
            for the other keys.
    """

    default: Any
    kind: Any
    help: str
    allowed: Optional[Rule] = None
    scripts: Tuple[str, ...] = (TRAIN,)
    group: str = ""
    null: Any = None


def _group(title: str, options: Dict[str, Option]) -> Dict[str, Option]:
    """``options``, listed under ``title`` in ``--help``."""
    return {key: option._replace(group=title) for key, option in options.items()}


_NUM = (int, float)
_POSITIVE_INT = Range("[1, inf)")
_NON_NEGATIVE = Range("[0, inf)")
_POSITIVE = Range("(0, inf)")
_PROBABILITY = Range("[0, 1]")
DEFAULTS: Dict[str, Option] = {
    **_group("model", {
        "task": Option("classification", str, "what is trained: classification (labelled class folders) or simmim "
                       "(masked-image pre-training on any image folder, no labels)",
                       Choices("classification", "simmim"), (TRAIN,)),
        "model": Option("swinv2_tiny_window8_256", str, "registered model name", RegisteredModel(), _ALL),
        "num_classes": Option(None, int, "classifier width; if unset, the number of class folders (train.py) or "
                              "the checkpoint's", _POSITIVE_INT, _ALL),
        "image_resize": Option(None, int, "image side; the model's if unset", _POSITIVE_INT, _ALL),
        "window_size": Option(None, int, "attention window; the model's if unset", _POSITIVE_INT, _ALL),
        "pretrained_window_sizes": Option(None, list, "windows of the weights being fine-tuned, one per stage (0: "
                                          "trained at window_size); the model's if unset",
                                          Items(_NON_NEGATIVE, integers=True), _ALL),
        "embed_dim": Option(None, int, "channels of the first stage (the paper's C); the model's if unset",
                            _POSITIVE_INT, _ALL),
        "depths": Option(None, list, "blocks per stage; the model's if unset", Items(_POSITIVE_INT, integers=True),
                         _ALL),
        "num_heads": Option(None, list, "attention heads per stage; the model's if unset",
                            Items(_POSITIVE_INT, integers=True), _ALL),
        "extra_norm_period": Option(None, int, "a LayerNorm on the main branch after every n-th block of each stage "
                                    "(the paper's SwinV2-H and -G: 6; 0: none); the model's if unset", _NON_NEGATIVE,
                                    _ALL),
        "drop_path_rate": Option(0.1, float, "stochastic depth rate (null: the model's default, 0.1)", Range("[0, 1)"),
                                 null=0.1),
        "drop_rate": Option(0.0, float, "dropout before the classifier (mindcv)",
                            Only(0.0, "Swin V2 has no dropout before its head (official DROP_RATE 0.0)"), null=0.0),
        "in_channels": Option(3, int, "input channels (mindcv)", Only(3, "the models and the pipeline take RGB "
                                                                      "images"), _ALL),
        "recompute": Option(False, bool, "recompute block activations in backward"),
        "sequential_attention": Option(0, int, "sequential self-attention (Swin V2 paper, 3.4): attend this many "
                                       "windows at a time and recompute their probabilities in backward, so a "
                                       "block's attention memory no longer grows with the window count; 0: all "
                                       "windows at once (see docs/memory.md)", _NON_NEGATIVE, _ALL),
        "sequential_attention_heads": Option(0, int, "heads per step of sequential self-attention (0: all heads)",
                                             _NON_NEGATIVE, _ALL),
        "reuse_blocks": Option(None, bool, "compile one graph per block shape (lazy_inline) and reuse it, Ascend "
                               "only (Swin V2-T: 7 block graphs instead of 12, see docs/ascend.md); on for Ascend "
                               "if unset", scripts=_ALL),
        "ckpt_path": Option("", str, "weights to start from (any supported layout) / to evaluate", scripts=_ALL),
        "pretrained": Option(False, bool, "mindcv: download the model's published weights",
                             Only(False, "mindswin downloads no weights; pass the weights file (a mindcv, official "
                                         "or timm checkpoint) as ckpt_path"), _ALL),
        "class_map": Option("", str, "head rows to keep from loaded weights: a file of source-class indices, "
                            "imagenet22k_to_1k (shipped), or none; if unset, the official rule (a 21841-class head "
                            "in a 1000-class model keeps the 1k rows; any other class count starts at zero)",
                            scripts=_ALL),
    }),
    **_group("data", {
        "data_dir": Option("", str, "folder with train/<class>/... and val/<class>/...", scripts=_WITH_DATA),
        "dataset": Option("imagenet", str, "mindcv's dataset name: class folders (ImageFolder layout)",
                          Only("imagenet", "mindswin reads class-folder data (mindcv's 'imagenet' layout) or the "
                                           "official map files; convert other datasets to folders"), _WITH_DATA),
        "dataset_download": Option(False, bool, "mindcv: download the dataset",
                                   Only(False, "mindswin downloads no data; point data_dir at a local copy"),
                                   _WITH_DATA),
        "shuffle": Option(True, bool, "shuffle the training samples each epoch",
                          Only(True, "the seeded per-epoch permutation is what makes a resumed run exact")),
        "drop_remainder": Option(True, bool, "drop the last partial batch",
                                 Only(True, "graph mode compiles one static batch shape")),
        "num_samples": Option(None, int, "mindcv: train on a subset of the samples",
                              Only(None, "mindswin trains on the whole split; point data_dir at a smaller copy "
                                         "(or a train_map_file listing the subset)"), _WITH_DATA),
        "train_split": Option("train", str, "training sub-folder"),
        "val_split": Option("val", str, "validation sub-folder", scripts=_WITH_DATA),
        "batch_size": Option(128, int, "images per device per step (export.py: the exported input's batch, 1 if "
                             "unset)", _POSITIVE_INT, (TRAIN, VALIDATE, EXPORT)),
        "val_batch_size": Option(None, int, "eval batch size; batch_size if unset", _POSITIVE_INT, _WITH_DATA),
        "num_parallel_workers": Option(2, int, "data-pipeline workers (decoding threads, transform processes)",
                                       _POSITIVE_INT, _WITH_DATA),
        "strict_data": Option(False, bool, "error on unreadable images instead of skipping them",
                              scripts=_WITH_DATA),
        "verify_images": Option("auto", str, "how images are checked when scanned (auto: full up to 10,000 "
                                "files)", Choices("auto", "full", "header"), _WITH_DATA),
        "train_map_file": Option("", str, "official map file listing the training images instead of class folders "
                                 "(ImageNet-22k's ILSVRC2011fall_whole_map_train.txt: JSON [path, label] pairs; or "
                                 "path<TAB>label lines), relative to data_dir"),
        "val_map_file": Option("", str, "the same for validation (ILSVRC2011fall_whole_map_val.txt)",
                               scripts=_WITH_DATA),
        "scan_index": Option(True, bool, "keep the scanned index of the data (scan_index_dir) and reuse it at the "
                             "next start while no folder changed"),
        "scan_index_dir": Option("", str, "where scan indexes are kept; ckpt_save_dir/scan_index if unset"),
        "interpolation": Option(None, str, "resize interpolation; the model's if unset",
                                Choices("bicubic", "bilinear", "nearest", "area"), _PREPROCESSING),
        "mean": Option(None, list, "per-channel mean on the 0-255 scale (mindcv's form); the model's if unset",
                       Items(Range("[0, 255]"), 3), _PREPROCESSING),
        "std": Option(None, list, "per-channel standard deviation on the 0-255 scale; the model's if unset",
                      Items(Range("(0, 255]"), 3), _PREPROCESSING),
        "eval_shuffle": Option(False, bool, "mindcv: shuffle the validation split",
                               Only(False, "validation reads the split in order (every rank its fixed share)"),
                               _WITH_DATA),
        "crop_pct": Option(None, float, "eval centre-crop fraction, 1.0 squash-resizes; the model's if unset",
                           Range("(0, 1]"), _PREPROCESSING),
    }),
    **_group("augmentation", {
        "auto_augment": Option("rand-m9-mstd0.5-inc1", str, "timm's or mindcv's policy name (rand-/randaug-...), "
                               "'' or null for none", null=""),
        "re_prob": Option(0.25, float, "random erasing probability", _PROBABILITY),
        "re_value": Option("random", (float, str), "what erased pixels become, in normalised space: 'random' "
                           "(per-pixel N(0, 1), timm's pixel mode, the official recipe) or a number (a constant, "
                           "mindcv's default 0)", NumberOr("random")),
        "re_scale": Option([0.02, 0.33], list, "random erasing area range (mindcv)",
                           Only([0.02, 0.33], "mindswin erases timm's area range 0.02 to 1/3")),
        "re_ratio": Option([0.3, 3.3], list, "random erasing aspect range (mindcv)",
                           Only([0.3, 3.3], "mindswin erases timm's aspect range 0.3 to 3.3")),
        "re_max_attempts": Option(10, int, "random erasing placement tries (mindcv)",
                                  Only(10, "mindswin tries 10 placements, as timm")),
        "vflip": Option(0.0, float, "vertical flip probability (mindcv)",
                        Only(0.0, "vertical flips are not implemented (no Swin recipe flips vertically)")),
        "aug_splits": Option(0, int, "mindcv: AugMix splits for the JSD loss",
                             Only(0, "AugMix splits and the JSD loss are not implemented")),
        "aug_repeats": Option(0, int, "repeated augmentation (mindcv, DeiT): each drawn image N times per epoch, "
                              "its copies on different ranks with their own augmentations; the epoch keeps its "
                              "length (0 or 1: off)", _NON_NEGATIVE),
        "color_jitter": Option(None, float, "colour jitter when auto_augment is off; none if unset", _NON_NEGATIVE),
        "hflip": Option(0.5, float, "horizontal flip probability", _PROBABILITY),
        "scale": Option([0.08, 1.0], list, "RandomResizedCrop area range",
                        Items(Range("(0, 1]"), 2, ascending=True)),
        "ratio": Option([0.75, 1.3333333], list, "RandomResizedCrop aspect range",
                        Items(_POSITIVE, 2, ascending=True)),
        "mixup": Option(0.8, float, "mixup alpha (0: off)", _NON_NEGATIVE),
        "cutmix": Option(1.0, float, "cutmix alpha (0: off)", _NON_NEGATIVE),
        "cutmix_prob": Option(1.0, float, "probability of mixing a batch (mindcv's name; timm's mixup_prob)",
                              _PROBABILITY),
        "mixup_switch_prob": Option(0.5, float, "probability of cutmix when both are on", _PROBABILITY),
        "mixup_mode": Option("batch", str, "one mixing draw per batch, per pair of samples or per sample",
                             Choices("batch", "pair", "elem")),
        "label_smoothing": Option(0.1, float, "label smoothing", Range("[0, 1)")),
    }),
    **_group("optimisation", {
        "epoch_size": Option(300, int, "epochs", _POSITIVE_INT),
        "gradient_accumulation_steps": Option(1, int, "micro-batches per optimizer step", _POSITIVE_INT),
        "opt": Option("adamw", str, "optimizer, as mindcv's create_optimizer builds it: adamw (official Swin V2), "
                      "adam, sgd / momentum / nesterov (heavy-ball, Nesterov with use_nesterov), lamb, lion",
                      Choices("adamw", "adam", "sgd", "momentum", "nesterov", "lamb", "lion", unsupported={
                          name: "not implemented in mindswin (mindcv has it); choose adamw, adam, sgd, momentum, "
                                "lamb or lion" for name in ("rmsprop", "adagrad", "nadam", "adan", "lars")})),
        "momentum": Option(0.9, float, "momentum of sgd / momentum / nesterov (mindcv)", Range("[0, 1)")),
        "use_nesterov": Option(False, bool, "Nesterov momentum of sgd / momentum / nesterov and adam (mindcv passes "
                               "it to all three)"),
        # mindcv's spelling: absolute rates. The official spelling: per lr_base_batch images, scaled.
        "lr": Option(None, float, "peak learning rate, absolute (mindcv's meaning); or give base_lr", _POSITIVE),
        "min_lr": Option(None, float, "final learning rate, absolute (with lr; 1e-6 if unset, mindcv's)",
                         _NON_NEGATIVE),
        "warmup_lr": Option(None, float, "learning rate at step 0, absolute (with lr; else lr x warmup_factor)",
                            _NON_NEGATIVE),
        "warmup_factor": Option(None, float, "warmup starts at the peak lr x this (mindcv; 0 if unset and no "
                                "warmup_lr / base_warmup_lr)", _PROBABILITY),
        "base_lr": Option(None, float, "peak learning rate per lr_base_batch images of global batch, scaled by "
                          "global batch / lr_base_batch (the official TRAIN.BASE_LR); 5e-4 if neither lr nor "
                          "base_lr is set", _POSITIVE),
        "base_min_lr": Option(None, float, "final learning rate, scaled like base_lr (official TRAIN.MIN_LR; 5e-6 "
                              "if unset)", _NON_NEGATIVE),
        "base_warmup_lr": Option(None, float, "learning rate at step 0, scaled like base_lr (official "
                                 "TRAIN.WARMUP_LR; 5e-7 if unset and no warmup_factor)", _NON_NEGATIVE),
        "lr_base_batch": Option(512, int, "global batch the base_* rates refer to (linear scaling rule)",
                                _POSITIVE_INT),
        "warmup_epochs": Option(20, _NUM, "linear warmup length in epochs, before the scheduler's decay",
                                _NON_NEGATIVE),
        "scheduler": Option("cosine_decay", str, "learning-rate decay after warmup: mindcv's create_scheduler "
                            "names (their epochs count from the end of the warmup; one_cycle and cyclic take no "
                            "warmup) or the official build_scheduler's cosine, linear, step, multistep",
                            Choices("cosine_decay", "warmup_cosine_decay", "constant", "multi_step_decay",
                                    "step_decay", "exponential_decay", "polynomial_decay", "one_cycle", "cyclic",
                                    "cosine", "linear", "step", "multistep")),
        "warmup_prefix": Option(None, bool, "the decay's clock starts after the warmup (True) or at step 0, the "
                                "warmup replacing its first steps (False; official LR_SCHEDULER.WARMUP_PREFIX); "
                                "unset: False for the official step and multistep, True otherwise"),
        "decay_epochs": Option(None, int, "cosine_decay: epochs of one cosine cycle (then min_lr); step_decay: "
                               "epochs between decays; if unset, cosine_decay spans the run after warmup",
                               _POSITIVE_INT),
        "num_cycles": Option(1, int, "cosine_decay: cosine cycles of decay_epochs each", _POSITIVE_INT),
        "cycle_decay": Option(1.0, float, "cosine_decay: peak lr factor from one cycle to the next", _POSITIVE),
        "lr_epoch_stair": Option(False, bool, "change the lr once per epoch instead of every step (mindcv)"),
        "multi_step_decay_milestones": Option([], list, "multi_step_decay: epochs after the warmup at which the lr "
                                              "is multiplied by decay_rate (mindcv's origin)",
                                              Items(_NON_NEGATIVE, integers=True, ascending=True)),
        "decay_rate": Option(0.9, float, "lr factor of step_decay, exponential_decay (per epoch) and "
                             "multi_step_decay; the power of polynomial_decay", _POSITIVE),
        "layer_decay": Option(1.0, float, "layer-wise lr decay for fine-tuning: block i of n trains at lr x "
                              "layer_decay^(n + 1 - i), the patch embedding lowest, norm and head at lr (1 or "
                              "null: off)", Range("(0, 1]"), null=1.0),
        "weight_decay": Option(0.05, float, "weight decay (decoupled in adamw, lamb, lion; L2 in adam and the "
                               "momentum optimizers; not on biases, norms, cpb_mlp, logit_scale)",
                               _NON_NEGATIVE),
        "betas": Option(None, list, "moment decay rates of adamw, adam, lamb, lion; unset: the optimizer's own "
                        "(0.9, 0.999; lion 0.9, 0.99)", Items(Range("[0, 1)"), 2)),
        "eps": Option(1e-8, float, "denominator epsilon of adamw, adam and lamb", _POSITIVE),
        "clip_grad": Option(True, bool, "clip the global gradient norm"),
        "clip_value": Option(5.0, float, "max global gradient norm", _POSITIVE),
        "loss_scale_type": Option("dynamic", str, "loss scaling under amp_level O2", Choices(
            "dynamic", "fixed", unsupported={"auto": "write dynamic (grows and backs off) or fixed instead"})),
        "loss_scale": Option(65536.0, float, "initial (dynamic) or constant (fixed) loss scale", _POSITIVE),
        # MindSpore's DynamicLossScaler takes an integer factor: below 2 the scale could never move.
        "loss_scale_factor": Option(2.0, float, "dynamic loss-scale growth/backoff factor", Range("[2, inf)")),
        "scale_window": Option(1000, int, "finite steps before the dynamic loss scale grows", _POSITIVE_INT),
        "ema": Option(False, bool, "keep an EMA of the weights and validate with it"),
        "ema_decay": Option(0.9998, float, "EMA decay per optimizer step (warmed up, see ema_warmup)",
                            Range("[0, 1)")),
        "ema_warmup": Option(True, bool, "mindcv's EMA warmup: update t decays by ema_decay x (1 - exp(-t / 2000)); "
                             "False: ema_decay from the first update (timm's ModelEmaV2)"),
        "weight_decay_filter": Option("auto", str, "mindcv: which parameters get no weight decay; auto: biases, "
                                      "norms, cpb_mlp, logit_scale, the mask token (official Swin V2)",
                                      Choices("auto", "norm_and_bias", unsupported={
                                          "disable": "Swin V2 never decays its biases, norms, cpb_mlp and "
                                                     "logit_scale (official set_weight_decay)"})),
        "drop_overflow_update": Option(True, bool, "skip the update of a step with non-finite gradients",
                                       Only(True, "mindswin never applies an update with inf/NaN gradients (it "
                                                  "would write them into the weights)")),
        "loss": Option("ce", str, "classification loss on the (mixed, smoothed) soft targets: ce (softmax "
                       "cross-entropy) or bce (sigmoid binary cross-entropy, mean over classes, as mindcv)",
                       Choices("ce", "CE", "bce", "BCE")),
        "aux_factor": Option(0.0, float, "mindcv: weight of an auxiliary head's loss",
                             Only(0.0, "Swin V2 has no auxiliary head")),
        "reduction": Option("mean", str, "mindcv: loss reduction over the batch",
                            Only("mean", "the step averages the loss over the batch (the gradients are means)")),
    }),
    **_group("simmim", {
        "mask_patch_size": Option(32, int, "task simmim: side in pixels of the masked squares (divides the image, "
                                  "a multiple of the model's patch)", _POSITIVE_INT),
        "mask_ratio": Option(0.6, float, "task simmim: fraction of the squares masked (rounded up)", Range("(0, 1)")),
        "norm_target_patch_size": Option(0, int, "task simmim: reconstruct pixels normalised by the mean and variance "
                                         "of this window around them (official Swin V2 recipe: 47); 0: raw pixels",
                                         OddWindow()),
        "recon_grid_images": Option(8, int, "task simmim: validation images shown in recon_e{epoch}.png (input / "
                                    "masked / reconstruction) at each validation; 0: none", _NON_NEGATIVE),
    }),
    **_group("checkpoints/logging", {
        "ckpt_save_dir": Option("./output", str, "checkpoints, resume state, config, metrics, per-rank logs"),
        "tensorboard": Option(True, bool, "write live curves (and SimMIM's grids) as TensorBoard events into "
                              "ckpt_save_dir/tensorboard (rank 0)"),
        "keep_checkpoint_max": Option(3, int, "weight checkpoints kept: the k latest (plus MODEL-best.ckpt, as "
                                      "mindcv's best-checkpoint callback)", _POSITIVE_INT),
        "ckpt_save_policy": Option("latest_k", str, "which keep_checkpoint_max checkpoints are kept (mindcv): the "
                                   "latest, or top_k those of the best validation metric (val_top1; SimMIM: "
                                   "val_loss is not a score, latest_k only)", Choices("latest_k", "top_k")),
        "resume_opt": Option(False, bool, "mindcv: also load optimizer state next to ckpt_path",
                             Only(False, "a run continues from its ckpt_save_dir/resume_state.ckpt (optimizer, "
                                         "EMA, data position and schedule): pass --resume auto")),
        "ckpt_save_interval": Option(1, int, "epochs between weight checkpoints", _POSITIVE_INT),
        "resume_save_steps": Option(0, int, "also save resume state every N steps (0: epoch ends only)",
                                    _NON_NEGATIVE),
        "resume": Option("", str, "'auto' (latest in ckpt_save_dir) or a resume_state.ckpt path"),
        "val_while_train": Option(True, bool, "validate during training"),
        "val_interval": Option(1, int, "epochs between validations", _POSITIVE_INT),
        "log_interval": Option(20, int, "steps between log lines", _POSITIVE_INT),
    }),
    **_group("runtime", {
        "device_target": Option(None, str, "MindSpore backend; the one the installed MindSpore targets if unset "
                                "(Ascend on an Ascend build)", Choices("CPU", "GPU", "Ascend"), _ALL),
        "amp_level": Option("O2", str, "O0: float32; O2: float16 matmuls, float32 islands (validate/infer/export: "
                            "O0 unless set)", Choices("O0", "O2", unsupported={
                                "O1": "mindswin casts by its own O2 lists (float32 norms, softmax and position bias); "
                                      "O1's white list is not offered",
                                "O3": "everything in float16 (norms and softmax too) loses the accuracy of Swin V2's "
                                      "cosine attention"}), _ALL),
        "amp_dtype": Option("float16", str, "matmul dtype under O2", Choices("float16", "bfloat16"), _ALL),
        "val_amp_level": Option(None, str, "amp level of validation during training (mindcv); amp_level if unset",
                                Choices("O0", "O2")),
        "amp_cast_list": Option(None, str, "mindcv: the operators O1 casts",
                                Only(None, "O2 keeps mindswin's own float32 islands (norms, softmax, the "
                                           "position bias; docs/ascend.md)"), _ALL),
        "mode": Option(0, int, "MindSpore execution mode (mindcv): 0 is GRAPH_MODE",
                       Only(0, "every step compiles in GRAPH_MODE (0); PyNative (1) is not supported"), _ALL),
        "dataset_sink_mode": Option(False, bool, "mindcv: feed the train steps through MindSpore's data sink on "
                                    "Ascend and GPU; on CPU, which has no sink, the host feeds them (said once)"),
        "jit_level": Option("O0", str, "graph-compile level on Ascend (Cell.set_jit_config): O0 kernel by kernel, "
                            "O1 adds automatic operator fusion, O2 sinks the whole graph (GE; deprecated by "
                            "MindSpore 2.9, said once); CPU and GPU compile alike at every level",
                            Choices("O0", "O1", "O2"), _ALL),
        "distribute": Option(False, bool, "data parallel under msrun", scripts=_WITH_DATA),
        "enable_parallel_optimizer": Option(False, bool, "ZeRO-1: shard the optimizer state across the data-parallel "
                                                         "ranks (with distribute; any backend)"),
        "hccl_buffsize": Option(None, int, "HCCL buffer size in MB (Ascend only); HCCL's if unset", _POSITIVE_INT,
                                _WITH_DATA),
        # numpy's legacy global seed (set with MindSpore's) takes 32 bits.
        "seed": Option(42, int, "global seed", Range("[0, 4294967295]")),
    }),
    **_group("output", {
        "output": Option("", str, "write the results to this JSON file", scripts=(VALIDATE, INFER)),
        "topk": Option(5, int, "classes reported per image", _POSITIVE_INT, (INFER,)),
        "cam": Option("", str, "write a Grad-CAM picture of the last stage per image (IMAGE_cam.png, and the map "
                      "as IMAGE_cam.npy) into this folder", scripts=(INFER,)),
        "throughput": Option(False, bool, "measure model-only img/s and ms/step (inference and a training step) at "
                             "the recipe's batch and resolution instead of validating; no data or weights needed",
                             scripts=(VALIDATE,)),
        "throughput_warmup": Option(50, int, "untimed calls before the timed ones", _POSITIVE_INT, (VALIDATE,)),
        "throughput_steps": Option(30, int, "timed calls, synchronised at the end", _POSITIVE_INT, (VALIDATE,)),
        "class_names_file": Option("", str, "index->name file (one name per line) for checkpoints without "
                                   "names", scripts=(INFER,)),
        "file_format": Option("MINDIR", str, "export format (ONNX: ops without a MindSpore converter rewritten, "
                              "see docs/deploy.md)", Choices("MINDIR", "ONNX"), (EXPORT,)),
        "dynamic_batch": Option(None, bool, "export with a dynamic batch dimension; on unless batch_size is given "
                                "(ONNX: two fixed exports merged, needs the onnx package)", scripts=(EXPORT,)),
        "export_file": Option("", str, "output path without extension; next to the checkpoint if empty",
                              scripts=(EXPORT,)),
    }),
}
# Other spellings accepted on the command line.
# Other spellings of a key (recipes and command line): timm's, the official repo's, mindswin's earlier ones.
ALIASES = {"img_size": "image_resize", "lr_scheduler": "scheduler", "mixup_prob": "cutmix_prob"}
# Keys that are gone, with what to write instead.
RETIRED = {"scale_lr": "lr is absolute (mindcv's meaning) and base_lr, base_min_lr and base_warmup_lr are scaled by "
                       "global batch / lr_base_batch (the official meaning): write the rates with the spelling of "
                       "their meaning instead"}

_COMMAND_LINE = "command line"


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


def choices(key: str) -> Tuple[str, ...]:
    """The allowed values of a :class:`Choices` key, for modules that act on them."""
    return DEFAULTS[key].allowed.values


def _suggest(key: str) -> str:
    if key in RETIRED:
        return f" {RETIRED[key]}."
    close = difflib.get_close_matches(key, DEFAULTS, n=3, cutoff=0.6)
    # a key with the same letters (two swapped) before one a letter away: 'modle' is 'model', not 'mode'
    close.sort(key=lambda candidate: sorted(candidate) != sorted(key))
    return f" Did you mean '{close[0]}'?" if close else " Run with --help to list the valid keys."


def _fix(key: str, source: str) -> str:
    """How to correct ``key``, given where its value came from."""
    default = DEFAULTS[key].default
    where = f"change --{key}" if source == _COMMAND_LINE else f"change '{key}' in {source} or override it with --{key}"
    return f"{where} (default: {default!r})" if default is not None else where


def _checked(key: str, value: Any, source: str) -> Any:
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


_BASE = "_base_"


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
        raise ConfigError(f"recipes include each other through {_BASE}: {' -> '.join((*including, path))}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}" + (f" ({_BASE} of {including[-1]})" if including else ""))
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
    bases = recipe.pop(_BASE, [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(base, str) and base for base in bases):
        raise ConfigError(f"{path}: '{_BASE}' must be a recipe path or a list of them (relative to the folder of "
                          f"{path}), got {bases!r}")
    values: Dict[str, Tuple[Any, str]] = {}
    for base in bases:
        values.update(_recipe_values(os.path.normpath(os.path.join(os.path.dirname(path), base)), (*including, path)))
    for key, value in recipe.items():
        key = ALIASES.get(key, key)
        if key not in DEFAULTS:
            raise ConfigError(f"{path}: unknown key '{key}'.{_suggest(key)}")
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
    explicit = set()
    for key, (value, source) in (_recipe_values(path) if path else {}).items():
        values[key] = _checked(key, value, source)
        explicit.add(key)
    for key, value in (overrides or {}).items():
        key = ALIASES.get(key, key)
        if key not in DEFAULTS:
            raise ConfigError(f"unknown option --{key}.{_suggest(key)}")
        values[key] = _checked(key, value, _COMMAND_LINE)
        explicit.add(key)
    if values["device_target"] is None:
        values["device_target"] = _installed_backend()
    config = Config(values)
    config.explicit = frozenset(explicit)
    _check_combinations(config)
    if not defer_geometry:
        check_geometry(config)
    return config


def _installed_backend() -> str:
    """The backend the installed MindSpore targets (imported only when device_target is unset)."""
    import mindspore as ms

    return ms.get_context("device_target")


def _check_combinations(config: Config) -> None:
    """Keys that are each valid but not together."""
    if config.reuse_blocks and config.device_target != "Ascend":
        raise ConfigError("'reuse_blocks' is supported by MindSpore on Ascend only; device_target is "
                          f"{config.device_target}. Set reuse_blocks: False on this backend")
    if config.hccl_buffsize is not None and config.device_target != "Ascend":
        raise ConfigError("hccl_buffsize is an Ascend (HCCL) setting; remove it on "
                          f"device_target {config.device_target}")
    _check_learning_rates(config)
    if config.ckpt_save_policy == "top_k" and config.task == "simmim":
        raise ConfigError("ckpt_save_policy top_k keeps the checkpoints of the best val_top1, and SimMIM "
                          "pre-training has no such score: use latest_k")
    if config.val_amp_level is not None and config.val_amp_level != config.amp_level:
        raise ConfigError(f"val_amp_level {config.val_amp_level} differs from amp_level {config.amp_level}: "
                          "validation during training runs the training network; evaluate the saved weights at "
                          f"another level with validate.py --amp_level {config.val_amp_level}, or remove "
                          "val_amp_level")
    if config.mixup_mode == "pair" and config.batch_size % 2:
        raise ConfigError(f"mixup_mode 'pair' mixes samples two by two and needs an even batch_size, got "
                          f"{config.batch_size}; change --batch_size or --mixup_mode")


# Schedulers that are a whole cycle by themselves: mindcv refuses them with a warmup or an epoch stair.
NO_WARMUP = ("one_cycle", "cyclic")
_ABSOLUTE_RATES = ("lr", "min_lr", "warmup_lr")
_SCALED_RATES = ("base_lr", "base_min_lr", "base_warmup_lr")


def _check_learning_rates(config: Config) -> None:
    """The rates of a run are all absolute (lr, mindcv's) or all per lr_base_batch (base_lr, official)."""
    absolute = [key for key in _ABSOLUTE_RATES if config[key] is not None]
    scaled = [key for key in _SCALED_RATES if config[key] is not None]
    if absolute and scaled:
        raise ConfigError(f"{', '.join(absolute)} (absolute, mindcv's meaning) and {', '.join(scaled)} (per "
                          f"lr_base_batch {config.lr_base_batch} images, scaled by the global batch) are both set: "
                          f"write all rates one way, e.g. {', '.join('base_' + key for key in absolute)} instead")
    if absolute and "lr" not in absolute:
        raise ConfigError(f"{', '.join(absolute)} set without lr: give the peak lr too (absolute), or write "
                          f"{', '.join('base_' + key for key in absolute)} to scale them with the default base_lr")
    # (a resolved config.yaml states the default 512 and reloads: only another value says something)
    if absolute and config.lr_base_batch != DEFAULTS["lr_base_batch"].default:
        raise ConfigError(f"lr_base_batch scales the base_* rates, and this run gives absolute ones "
                          f"({', '.join(absolute)}): remove lr_base_batch, or write base_lr to scale")
    if config.scheduler in NO_WARMUP and (config.warmup_epochs or config.lr_epoch_stair):
        raise ConfigError(f"scheduler {config.scheduler} is a whole cycle from step 0 and takes no warmup or "
                          f"lr_epoch_stair (mindcv refuses them too): set warmup_epochs: 0 and lr_epoch_stair: "
                          "False, or choose another scheduler")
    starts = [key for key in ("warmup_lr", "base_warmup_lr") if config[key] is not None]
    if starts and config.warmup_factor is not None:
        raise ConfigError(f"warmup_factor and {starts[0]} both set the lr at step 0: keep one")


def check_geometry(config: Config) -> None:
    """Refuse an image size, window or pretrained windows the model cannot be built with.

    Raises:
        ConfigError: naming the key to change and values that fit.
    """
    from .models.registry import model_spec  # imports MindSpore: only once a model is concerned
    from .models.swin_v2 import geometry_problem

    problem = RegisteredModel().problem(config.model)
    if problem:  # a model name read from a checkpoint's metadata is checked here first
        raise ConfigError(f"'model' {problem}")
    spec = model_spec(config.model)
    stages, patch = _check_architecture(config, spec), spec.patch_size
    image = config.image_resize or spec.img_size
    what = f"{spec.name} (patch {patch}, {stages} stages)"
    problem = geometry_problem(image, patch, stages)
    if problem:
        sizes = range(patch, 2 * image + patch, patch)
        fitting = [s for s in sizes if geometry_problem(s, patch, stages) is None]
        nearest = [s for s in fitting if s < image][-1:] + [s for s in fitting if s > image][:1]
        raise ConfigError(f"'image_resize' {image} does not fit {what}: {problem}; set --image_resize to e.g. "
                          f"{' or '.join(map(str, nearest))} (any window fits: feature maps are padded to it)")
    if config.task == "simmim":
        _check_masks(config, image, patch, what)
    pretrained = config.pretrained_window_sizes
    if pretrained is not None and len(pretrained) != stages:
        example = list(spec.pretrained_window_sizes) if len(spec.pretrained_window_sizes) == stages else [0] * stages
        raise ConfigError(f"'pretrained_window_sizes' {pretrained} has {len(pretrained)} entries but {spec.name} "
                          f"has {stages} stages; give one per stage (0: trained at window_size), e.g. {example}")


def _check_architecture(config: Config, spec: Any) -> int:
    """Refuse ``embed_dim`` / ``depths`` / ``num_heads`` that give no model; returns the number of stages."""
    embed_dim = config.embed_dim or spec.embed_dim
    depths = config.depths or list(spec.depths)
    heads = config.num_heads or list(spec.num_heads)
    if len(depths) != len(heads):
        raise ConfigError(f"'depths' {list(depths)} and 'num_heads' {list(heads)} give {len(depths)} and {len(heads)} "
                          f"stages ({spec.name}'s where unset): give one entry per stage in both")
    for stage, count in enumerate(heads):
        channels = embed_dim * 2 ** stage
        if channels % count:
            fitting = [h for h in range(1, channels + 1) if channels % h == 0 and channels // h >= 16]
            raise ConfigError(f"'num_heads' {count} of stage {stage} does not divide its {channels} channels "
                              f"(embed_dim {embed_dim} x 2^{stage}); use one of {', '.join(map(str, fitting))}")
    return len(depths)


def _check_masks(config: Config, image: int, patch: int, what: str) -> None:
    """SimMIM's masked squares must tile the image and cover whole patches (official MaskGenerator asserts)."""
    size = config.mask_patch_size
    if image % size == 0 and size % patch == 0:
        return
    fitting = [s for s in range(patch, image + 1, patch) if image % s == 0]
    reason = (f"it does not divide the {image} px image" if image % size else
              f"it is not a multiple of the patch size {patch} of {what}")
    raise ConfigError(f"'mask_patch_size' {size} cannot tile the images with masked squares: {reason}; set "
                      f"--mask_patch_size to one of {', '.join(map(str, fitting))}")


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
    allowed = f"; allowed: {option.allowed.describe()}" if option.allowed is not None else ""
    default = "" if required else f" (default: {option.default!r})"
    flags = [f"--{key}"] + [f"--{alias}" for alias, aliased in ALIASES.items() if aliased == key]
    parser.add_argument(*flags, dest=key, type=parse_cli_value, default=argparse.SUPPRESS, required=required,
                        metavar=_metavar(option.kind),
                        help=argparse.SUPPRESS if hidden else f"{option.help}{allowed}{default}")


def _metavar(kind: Any) -> str:
    """How ``--help`` shows a value of type ``kind``: lists in the syntax they are given in."""
    if kind is list:
        return "[A,B,...]"
    return {int: "N", bool: "BOOL", str: "TEXT"}.get(kind, "X")  # X: float or int-or-float


# Shown by the --help of the scripts that complete the model keys from a checkpoint.
_FROM_CHECKPOINT = """\
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
        description = f"{description}\n\n{_FROM_CHECKPOINT}"
    usage = f"%(prog)s [-h] [--config RECIPE] [--KEY VALUE ...]{f' [{positional} ...]' if positional else ''}"
    launcher = os.path.basename(sys.argv[0])  # a console script (mindswin-train) names itself
    parser = _Parser(prog=launcher if launcher.startswith("mindswin-") else f"{script}.py", usage=usage,
                     description=description,
                     epilog=("examples:\n" + textwrap.indent(examples, "  ")) if examples else None,
                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("--config", "-c", default="", metavar="RECIPE",
                        help=f"YAML recipe; the recipe(s) its {_BASE} names are read first, then overridden")
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
        raise ConfigError(f"unknown option {unknown[0]}.{_suggest(key)}")
    overrides = {k: v for k, v in vars(args).items() if k not in ("config", positional)}
    for key in overrides:
        if script not in DEFAULTS[key].scripts:
            users = ", ".join(f"{user}.py" for user in DEFAULTS[key].scripts)
            raise ConfigError(f"--{key} is an option of {users}; {script}.py does not use it")
    config = load_config(args.config or None, overrides, defer_geometry=model_from_checkpoint)
    require(config, required)
    if positional:
        config[positional] = getattr(args, positional)
    return config


def require(config: Config, keys: Sequence[str]) -> None:
    """Refuse an empty value for any of ``keys``, naming the option."""
    for key in keys:
        if not config[key]:
            raise ConfigError(f"--{key} is required ({DEFAULTS[key].help})")


def save_config(config: Config, path: str) -> None:
    """Write the resolved config as YAML (atomically)."""
    from .fileio import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            yaml.safe_dump(dict(config), f, sort_keys=False)

    atomic_write(path, write)
