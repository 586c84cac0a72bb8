"""The table of every key, read like the official ``_C`` tree: default, type, rule, ``--help``, readers.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

from .rules import Choices, Items, NumberOr, OddWindow, Only, PublishedWeights, Range, RegisteredModel, Rule

__all__ = ["Option", "TASKS", "CLASSIFICATION", "SIMMIM", "task_only_keys", "DEFAULTS", "ALIASES", "RETIRED",
           "SCRIPTS", "TRAIN", "VALIDATE", "INFER", "EXPORT", "choices"]


# The training tasks (engine/tasks.py): what train.py trains.
CLASSIFICATION, SIMMIM = "classification", "simmim"
TASKS = (CLASSIFICATION, SIMMIM)
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
        tasks: Training tasks (:data:`TASKS`) that read the key, all unless given: the one
            statement of it (``--help`` says it, a task warns about the others' keys).
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
    tasks: Tuple[str, ...] = TASKS


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
        "task": Option(
            default="classification",
            kind=str,
            help="what is trained: classification (labelled class folders) or simmim "
                 "(masked-image pre-training on any image folder, no labels)",
            allowed=Choices(*TASKS),
            scripts=(TRAIN,),
        ),
        "model": Option(
            default="swinv2_tiny_window8_256",
            kind=str,
            help="registered model name",
            allowed=RegisteredModel(),
            scripts=_ALL,
        ),
        "num_classes": Option(
            default=None,
            kind=int,
            help="classifier width; if unset, the number of class folders (train.py) or "
                 "the checkpoint's",
            allowed=_POSITIVE_INT,
            scripts=_ALL,
            tasks=(CLASSIFICATION,),
        ),
        "image_resize": Option(
            default=None,
            kind=int,
            help="image side; the model's if unset",
            allowed=_POSITIVE_INT,
            scripts=_ALL,
        ),
        "window_size": Option(
            default=None,
            kind=int,
            help="attention window; the model's if unset",
            allowed=_POSITIVE_INT,
            scripts=_ALL,
        ),
        "pretrained_window_sizes": Option(
            default=None,
            kind=list,
            help="windows of the weights being fine-tuned, one per stage (0: "
                 "trained at window_size); the model's if unset",
            allowed=Items(_NON_NEGATIVE, integers=True),
            scripts=_ALL,
        ),
        "embed_dim": Option(
            default=None,
            kind=int,
            help="channels of the first stage (the paper's C); the model's if unset",
            allowed=_POSITIVE_INT,
            scripts=_ALL,
        ),
        "depths": Option(
            default=None,
            kind=list,
            help="blocks per stage; the model's if unset",
            allowed=Items(_POSITIVE_INT, integers=True),
            scripts=_ALL,
        ),
        "num_heads": Option(
            default=None,
            kind=list,
            help="attention heads per stage; the model's if unset",
            allowed=Items(_POSITIVE_INT, integers=True),
            scripts=_ALL,
        ),
        "extra_norm_period": Option(
            default=None,
            kind=int,
            help="a LayerNorm on the main branch after every n-th block of each stage "
                 "(the paper's SwinV2-H and -G: 6; 0: none); the model's if unset",
            allowed=_NON_NEGATIVE,
            scripts=_ALL,
        ),
        "drop_path_rate": Option(
            default=0.1,
            kind=float,
            help="stochastic depth rate (null: the model's default, 0.1)",
            allowed=Range("[0, 1)"),
            null=0.1,
        ),
        "drop_rate": Option(
            default=0.0,
            kind=float,
            help="dropout before the classifier (mindcv)",
            allowed=Only(0.0, "Swin V2 has no dropout before its head (official DROP_RATE 0.0)"),
            null=0.0,
        ),
        "in_channels": Option(
            default=3,
            kind=int,
            help="input channels (mindcv)",
            allowed=Only(3, "the models and the pipeline take RGB "
                         "images"),
            scripts=_ALL,
        ),
        "recompute": Option(
            default=False,
            kind=bool,
            help="activation checkpointing: keep each block's input only and rerun the "
                 "block in the backward pass (one extra forward; see docs/memory.md)",
        ),
        "sequential_attention": Option(
            default=0,
            kind=int,
            help="sequential self-attention (Swin V2 paper, 3.4): attend this many "
                 "windows at a time and recompute their probabilities in backward, so a "
                 "block's attention memory no longer grows with the window count; 0: all "
                 "windows at once; 16 at window 32 keeps the step within 1.2x the batched one; with recompute, "
                 "a block whose windows make one group attends in one batch. On CPU in float32, windows of "
                 "144 tokens or more attend in the fused kernel, one window and head at a time, whatever this "
                 "says (see docs/memory.md)",
            allowed=_NON_NEGATIVE,
            scripts=_ALL,
        ),
        "sequential_attention_heads": Option(
            default=0,
            kind=int,
            help="heads per step of sequential self-attention (0: all heads)",
            allowed=_NON_NEGATIVE,
            scripts=_ALL,
        ),
        "flash_attention": Option(
            default=False,
            kind=bool,
            help="attend in MindSpore's FlashAttentionScore where it computes the official attention: "
                 "unshifted windows under AMP O2 (shifted ones keep the other path); Ascend Atlas A2 "
                 "(910B) only, not yet run on a card (see docs/memory.md)",
            scripts=_ALL,
        ),
        "reuse_blocks": Option(
            default=None,
            kind=bool,
            help="compile one graph per block shape (lazy_inline) and reuse it, Ascend "
                 "only (Swin V2-T: 7 block graphs instead of 12, see docs/ascend.md); on for Ascend "
                 "if unset",
            scripts=_ALL,
        ),
        "ckpt_path": Option(
            default="",
            kind=str,
            help="weights to start from (any supported layout) / to evaluate",
            scripts=_ALL,
        ),
        "pretrained": Option(
            default=False,
            kind=(bool, str),
            help="start from / evaluate the model's published weights (mindcv's key), fetched once into "
                 "pretrained_dir: True (the model's default weights), a tag (ms_in1k), another variant's "
                 "weights (swinv2_base_window12_192.ms_in22k), any of them with @official/@timm/@hf/@mindcv "
                 "for that publisher's copy; ckpt_path, when set, is loaded instead",
            allowed=PublishedWeights(),
            scripts=_ALL,
        ),
        "pretrained_dir": Option(
            default="",
            kind=str,
            help="folder of published weights (SOURCE/... inside, as python -m mindswin.pretrained lists): "
                 "a file found there is used without any network access, a missing one is downloaded into it; "
                 "a folder that must exist (never created); if unset, $MINDSWIN_PRETRAINED_DIR, else "
                 "~/.cache/mindswin/pretrained (created when needed)",
            scripts=_ALL,
        ),
        "class_map": Option(
            default="",
            kind=str,
            help="head rows to keep from loaded weights: a file of source-class indices, "
                 "imagenet22k_to_1k (shipped), or none; if unset, the official rule (a 21841-class head "
                 "in a 1000-class model keeps the 1k rows; any other class count starts at zero)",
            scripts=_ALL,
            tasks=(CLASSIFICATION,),
        ),
    }),
    **_group("data", {
        "data_dir": Option(
            default="",
            kind=str,
            help="folder with train/<class>/... and val/<class>/...",
            scripts=_WITH_DATA,
        ),
        "dataset": Option(
            default="imagenet",
            kind=str,
            help="mindcv's dataset name: class folders (ImageFolder layout)",
            allowed=Only("imagenet", "mindswin reads class-folder data (mindcv's 'imagenet' layout) or the "
                                     "official map files; convert other datasets to folders"),
            scripts=_WITH_DATA,
        ),
        "dataset_download": Option(
            default=False,
            kind=bool,
            help="mindcv: download the dataset",
            allowed=Only(False, "mindswin downloads no data; point data_dir at a local copy"),
            scripts=_WITH_DATA,
        ),
        "shuffle": Option(
            default=True,
            kind=bool,
            help="shuffle the training samples each epoch",
            allowed=Only(True, "the seeded per-epoch permutation is what makes a resumed run exact"),
        ),
        "drop_remainder": Option(
            default=True,
            kind=bool,
            help="drop the last partial batch",
            allowed=Only(True, "graph mode compiles one static batch shape"),
        ),
        "num_samples": Option(
            default=None,
            kind=int,
            help="mindcv: train on a subset of the samples",
            allowed=Only(None, "mindswin trains on the whole split; point data_dir at a smaller copy "
                               "(or a train_map_file listing the subset)"),
            scripts=_WITH_DATA,
        ),
        "train_split": Option(
            default="train",
            kind=str,
            help="training sub-folder",
        ),
        "val_split": Option(
            default="val",
            kind=str,
            help="validation sub-folder",
            scripts=_WITH_DATA,
        ),
        "batch_size": Option(
            default=128,
            kind=int,
            help="images per device per step (export.py: the exported input's batch, 1 if "
                 "unset)",
            allowed=_POSITIVE_INT,
            scripts=(TRAIN, VALIDATE, EXPORT),
        ),
        "val_batch_size": Option(
            default=None,
            kind=int,
            help="eval batch size; batch_size if unset",
            allowed=_POSITIVE_INT,
            scripts=_WITH_DATA,
        ),
        "num_parallel_workers": Option(
            default=2,
            kind=int,
            help="data-pipeline workers (decoding threads, transform processes)",
            allowed=_POSITIVE_INT,
            scripts=_WITH_DATA,
        ),
        "strict_data": Option(
            default=False,
            kind=bool,
            help="error on unreadable images instead of skipping them",
            scripts=_WITH_DATA,
        ),
        "verify_images": Option(
            default="auto",
            kind=str,
            help="how images are checked when scanned (auto: full up to 10,000 "
                 "files)",
            allowed=Choices("auto", "full", "header"),
            scripts=_WITH_DATA,
        ),
        "train_map_file": Option(
            default="",
            kind=str,
            help="official map file listing the training images instead of class folders "
                 "(ImageNet-22k's ILSVRC2011fall_whole_map_train.txt: JSON [path, label] pairs; or "
                 "path<TAB>label lines), relative to data_dir",
        ),
        "val_map_file": Option(
            default="",
            kind=str,
            help="the same for validation (ILSVRC2011fall_whole_map_val.txt)",
            scripts=_WITH_DATA,
            tasks=(CLASSIFICATION,),
        ),
        "scan_index": Option(
            default=True,
            kind=bool,
            help="keep the scanned index of the data (scan_index_dir) and reuse it at the "
                 "next start while no folder changed",
        ),
        "scan_index_dir": Option(
            default="",
            kind=str,
            help="where scan indexes are kept; ckpt_save_dir/scan_index if unset",
        ),
        "interpolation": Option(
            default=None,
            kind=str,
            help="resize interpolation; the model's if unset",
            allowed=Choices("bicubic", "bilinear", "nearest", "area"),
            scripts=_PREPROCESSING,
        ),
        "mean": Option(
            default=None,
            kind=list,
            help="per-channel mean on the 0-255 scale (mindcv's form); the model's if unset",
            allowed=Items(Range("[0, 255]"), 3),
            scripts=_PREPROCESSING,
        ),
        "std": Option(
            default=None,
            kind=list,
            help="per-channel standard deviation on the 0-255 scale; the model's if unset",
            allowed=Items(Range("(0, 255]"), 3),
            scripts=_PREPROCESSING,
        ),
        "eval_shuffle": Option(
            default=False,
            kind=bool,
            help="mindcv: shuffle the validation split",
            allowed=Only(False, "validation reads the split in order (every rank its fixed share)"),
            scripts=_WITH_DATA,
        ),
        "crop_pct": Option(
            default=None,
            kind=float,
            help="eval centre-crop fraction, 1.0 squash-resizes; the model's if unset",
            allowed=Range("(0, 1]"),
            scripts=_PREPROCESSING,
        ),
    }),
    **_group("augmentation", {
        "auto_augment": Option(
            default="rand-m9-mstd0.5-inc1",
            kind=str,
            help="timm's or mindcv's policy name (rand-/randaug-...), "
                 "'' or null for none",
            null="",
            tasks=(CLASSIFICATION,),
        ),
        "re_prob": Option(
            default=0.25,
            kind=float,
            help="random erasing probability",
            allowed=_PROBABILITY,
            tasks=(CLASSIFICATION,),
        ),
        "re_value": Option(
            default="random",
            kind=(float, str),
            help="what erased pixels become, in normalised space: 'random' "
                 "(per-pixel N(0, 1), timm's pixel mode, the official recipe) or a number (a constant, "
                 "mindcv's default 0)",
            allowed=NumberOr("random"),
            tasks=(CLASSIFICATION,),
        ),
        "re_scale": Option(
            default=[0.02, 0.33],
            kind=list,
            help="random erasing area range (mindcv)",
            allowed=Only([0.02, 0.33], "mindswin erases timm's area range 0.02 to 1/3"),
        ),
        "re_ratio": Option(
            default=[0.3, 3.3],
            kind=list,
            help="random erasing aspect range (mindcv)",
            allowed=Only([0.3, 3.3], "mindswin erases timm's aspect range 0.3 to 3.3"),
        ),
        "re_max_attempts": Option(
            default=10,
            kind=int,
            help="random erasing placement tries (mindcv)",
            allowed=Only(10, "mindswin tries 10 placements, as timm"),
        ),
        "vflip": Option(
            default=0.0,
            kind=float,
            help="vertical flip probability (mindcv)",
            allowed=Only(0.0, "vertical flips are not implemented (no Swin recipe flips vertically)"),
        ),
        "aug_splits": Option(
            default=0,
            kind=int,
            help="mindcv: AugMix splits for the JSD loss",
            allowed=Only(0, "AugMix splits and the JSD loss are not implemented"),
        ),
        "aug_repeats": Option(
            default=0,
            kind=int,
            help="repeated augmentation (mindcv, DeiT): each drawn image N times per epoch, "
                 "its copies on different ranks with their own augmentations; the epoch keeps its "
                 "length (0 or 1: off)",
            allowed=_NON_NEGATIVE,
            tasks=(CLASSIFICATION,),
        ),
        "color_jitter": Option(
            default=None,
            kind=float,
            help="colour jitter when auto_augment is off; none if unset",
            allowed=_NON_NEGATIVE,
            tasks=(CLASSIFICATION,),
        ),
        "hflip": Option(
            default=0.5,
            kind=float,
            help="horizontal flip probability",
            allowed=_PROBABILITY,
        ),
        "scale": Option(
            default=[0.08, 1.0],
            kind=list,
            help="RandomResizedCrop area range",
            allowed=Items(Range("(0, 1]"), 2, ascending=True),
        ),
        "ratio": Option(
            default=[0.75, 1.3333333],
            kind=list,
            help="RandomResizedCrop aspect range",
            allowed=Items(_POSITIVE, 2, ascending=True),
        ),
        "mixup": Option(
            default=0.8,
            kind=float,
            help="mixup alpha (0: off)",
            allowed=_NON_NEGATIVE,
            tasks=(CLASSIFICATION,),
        ),
        "cutmix": Option(
            default=1.0,
            kind=float,
            help="cutmix alpha (0: off)",
            allowed=_NON_NEGATIVE,
            tasks=(CLASSIFICATION,),
        ),
        "cutmix_prob": Option(
            default=1.0,
            kind=float,
            help="probability of mixing a batch (mindcv's name; timm's mixup_prob)",
            allowed=_PROBABILITY,
            tasks=(CLASSIFICATION,),
        ),
        "mixup_switch_prob": Option(
            default=0.5,
            kind=float,
            help="probability of cutmix when both are on",
            allowed=_PROBABILITY,
            tasks=(CLASSIFICATION,),
        ),
        "mixup_mode": Option(
            default="batch",
            kind=str,
            help="one mixing draw per batch, per pair of samples or per sample",
            allowed=Choices("batch", "pair", "elem"),
            tasks=(CLASSIFICATION,),
        ),
        "label_smoothing": Option(
            default=0.1,
            kind=float,
            help="label smoothing",
            allowed=Range("[0, 1)"),
            tasks=(CLASSIFICATION,),
        ),
    }),
    **_group("optimisation", {
        "epoch_size": Option(
            default=300,
            kind=int,
            help="epochs",
            allowed=_POSITIVE_INT,
        ),
        "gradient_accumulation_steps": Option(
            default=1,
            kind=int,
            help="micro-batches per optimizer step",
            allowed=_POSITIVE_INT,
        ),
        "opt": Option(
            default="adamw",
            kind=str,
            help="optimizer, as mindcv's create_optimizer builds it: adamw (official Swin V2), "
                 "adam, sgd / momentum / nesterov (heavy-ball, Nesterov with use_nesterov), lamb, lion",
            allowed=Choices("adamw", "adam", "sgd", "momentum", "nesterov", "lamb", "lion", unsupported={
                        name: "not implemented in mindswin (mindcv has it); choose adamw, adam, sgd, momentum, "
                              "lamb or lion" for name in ("rmsprop", "adagrad", "nadam", "adan", "lars")}),
        ),
        "momentum": Option(
            default=0.9,
            kind=float,
            help="momentum of sgd / momentum / nesterov (mindcv)",
            allowed=Range("[0, 1)"),
        ),
        "use_nesterov": Option(
            default=False,
            kind=bool,
            help="Nesterov momentum of sgd / momentum / nesterov and adam (mindcv passes "
                 "it to all three)",
        ),
        # mindcv's spelling: absolute rates. The official spelling: per lr_base_batch images, scaled.
        "lr": Option(
            default=None,
            kind=float,
            help="peak learning rate, absolute (mindcv's meaning); or give base_lr",
            allowed=_POSITIVE,
        ),
        "min_lr": Option(
            default=None,
            kind=float,
            help="final learning rate, absolute (with lr; 1e-6 if unset, mindcv's)",
            allowed=_NON_NEGATIVE,
        ),
        "warmup_lr": Option(
            default=None,
            kind=float,
            help="learning rate at step 0, absolute (with lr; else lr x warmup_factor)",
            allowed=_NON_NEGATIVE,
        ),
        "warmup_factor": Option(
            default=None,
            kind=float,
            help="warmup starts at the peak lr x this (mindcv; 0 if unset and no "
                 "warmup_lr / base_warmup_lr)",
            allowed=_PROBABILITY,
        ),
        "base_lr": Option(
            default=None,
            kind=float,
            help="peak learning rate per lr_base_batch images of global batch, scaled by "
                 "global batch / lr_base_batch (the official TRAIN.BASE_LR); 5e-4 if neither lr nor "
                 "base_lr is set",
            allowed=_POSITIVE,
        ),
        "base_min_lr": Option(
            default=None,
            kind=float,
            help="final learning rate, scaled like base_lr (official TRAIN.MIN_LR; 5e-6 "
                 "if unset)",
            allowed=_NON_NEGATIVE,
        ),
        "base_warmup_lr": Option(
            default=None,
            kind=float,
            help="learning rate at step 0, scaled like base_lr (official "
                 "TRAIN.WARMUP_LR; 5e-7 if unset and no warmup_factor)",
            allowed=_NON_NEGATIVE,
        ),
        "lr_base_batch": Option(
            default=512,
            kind=int,
            help="global batch the base_* rates refer to (linear scaling rule)",
            allowed=_POSITIVE_INT,
        ),
        "warmup_epochs": Option(
            default=20,
            kind=_NUM,
            help="linear warmup length in epochs, before the scheduler's decay",
            allowed=_NON_NEGATIVE,
        ),
        "scheduler": Option(
            default="cosine_decay",
            kind=str,
            help="learning-rate decay after warmup: mindcv's create_scheduler "
                 "names (their epochs count from the end of the warmup; one_cycle and cyclic take no "
                 "warmup) or the official build_scheduler's cosine, linear, step, multistep",
            allowed=Choices("cosine_decay", "warmup_cosine_decay", "constant", "multi_step_decay",
                            "step_decay", "exponential_decay", "polynomial_decay", "one_cycle", "cyclic",
                            "cosine", "linear", "step", "multistep"),
        ),
        "warmup_prefix": Option(
            default=None,
            kind=bool,
            help="the decay's clock starts after the warmup (True) or at step 0, the "
                 "warmup replacing its first steps (False; official LR_SCHEDULER.WARMUP_PREFIX); "
                 "unset: False for the official step and multistep, True otherwise",
        ),
        "decay_epochs": Option(
            default=None,
            kind=int,
            help="cosine_decay: epochs of one cosine cycle (then min_lr); step_decay: "
                 "epochs between decays; if unset, cosine_decay spans the run after warmup",
            allowed=_POSITIVE_INT,
        ),
        "num_cycles": Option(
            default=1,
            kind=int,
            help="cosine_decay: cosine cycles of decay_epochs each",
            allowed=_POSITIVE_INT,
        ),
        "cycle_decay": Option(
            default=1.0,
            kind=float,
            help="cosine_decay: peak lr factor from one cycle to the next",
            allowed=_POSITIVE,
        ),
        "lr_epoch_stair": Option(
            default=False,
            kind=bool,
            help="change the lr once per epoch instead of every step (mindcv)",
        ),
        "multi_step_decay_milestones": Option(
            default=[],
            kind=list,
            help="multi_step_decay: epochs after the warmup at which the lr "
                 "is multiplied by decay_rate (mindcv's origin)",
            allowed=Items(_NON_NEGATIVE, integers=True, ascending=True),
        ),
        "decay_rate": Option(
            default=0.9,
            kind=float,
            help="lr factor of step_decay, exponential_decay (per epoch) and "
                 "multi_step_decay; the power of polynomial_decay",
            allowed=_POSITIVE,
        ),
        "layer_decay": Option(
            default=1.0,
            kind=float,
            help="layer-wise lr decay for fine-tuning: block i of n trains at lr x "
                 "layer_decay^(n + 1 - i), the patch embedding lowest, norm and head at lr (1 or "
                 "null: off)",
            allowed=Range("(0, 1]"),
            null=1.0,
        ),
        "weight_decay": Option(
            default=0.05,
            kind=float,
            help="weight decay (decoupled in adamw, lamb, lion; L2 in adam and the "
                 "momentum optimizers; not on biases, norms, cpb_mlp, logit_scale)",
            allowed=_NON_NEGATIVE,
        ),
        "betas": Option(
            default=None,
            kind=list,
            help="moment decay rates of adamw, adam, lamb, lion; unset: the optimizer's own "
                 "(0.9, 0.999; lion 0.9, 0.99)",
            allowed=Items(Range("[0, 1)"), 2),
        ),
        "eps": Option(
            default=1e-8,
            kind=float,
            help="denominator epsilon of adamw, adam and lamb",
            allowed=_POSITIVE,
        ),
        "clip_grad": Option(
            default=True,
            kind=bool,
            help="clip the global gradient norm",
        ),
        "clip_value": Option(
            default=5.0,
            kind=float,
            help="max global gradient norm",
            allowed=_POSITIVE,
        ),
        "loss_scale_type": Option(
            default="dynamic",
            kind=str,
            help="loss scaling under amp_level O2",
            allowed=Choices("dynamic", "fixed",
                            unsupported={"auto": "write dynamic (grows and backs off) or fixed instead"}),
        ),
        "loss_scale": Option(
            default=65536.0,
            kind=float,
            help="initial (dynamic) or constant (fixed) loss scale",
            allowed=_POSITIVE,
        ),
        # MindSpore's DynamicLossScaler takes an integer factor: below 2 the scale could never move.
        "loss_scale_factor": Option(
            default=2.0,
            kind=float,
            help="dynamic loss-scale growth/backoff factor",
            allowed=Range("[2, inf)"),
        ),
        "scale_window": Option(
            default=1000,
            kind=int,
            help="finite steps before the dynamic loss scale grows",
            allowed=_POSITIVE_INT,
        ),
        "ema": Option(
            default=False,
            kind=bool,
            help="keep an EMA of the weights and validate with it",
        ),
        "ema_decay": Option(
            default=0.9998,
            kind=float,
            help="EMA decay per optimizer step (warmed up, see ema_warmup)",
            allowed=Range("[0, 1)"),
        ),
        "ema_warmup": Option(
            default=True,
            kind=bool,
            help="mindcv's EMA warmup: update t decays by ema_decay x (1 - exp(-t / 2000)); "
                 "False: ema_decay from the first update (timm's ModelEmaV2)",
        ),
        "weight_decay_filter": Option(
            default="auto",
            kind=str,
            help="mindcv: which parameters get no weight decay; auto: biases, "
                 "norms, cpb_mlp, logit_scale, the mask token (official Swin V2)",
            allowed=Choices("auto", "norm_and_bias", unsupported={
                        "disable": "Swin V2 never decays its biases, norms, cpb_mlp and "
                                   "logit_scale (official set_weight_decay)"}),
        ),
        "drop_overflow_update": Option(
            default=True,
            kind=bool,
            help="skip the update of a step with non-finite gradients",
            allowed=Only(True, "mindswin never applies an update with inf/NaN gradients (it "
                               "would write them into the weights)"),
        ),
        "loss": Option(
            default="ce",
            kind=str,
            help="classification loss on the (mixed, smoothed) soft targets: ce (softmax "
                 "cross-entropy) or bce (sigmoid binary cross-entropy, mean over classes, as mindcv)",
            allowed=Choices("ce", "CE", "bce", "BCE"),
            tasks=(CLASSIFICATION,),
        ),
        "aux_factor": Option(
            default=0.0,
            kind=float,
            help="mindcv: weight of an auxiliary head's loss",
            allowed=Only(0.0, "Swin V2 has no auxiliary head"),
        ),
        "reduction": Option(
            default="mean",
            kind=str,
            help="mindcv: loss reduction over the batch",
            allowed=Only("mean", "the step averages the loss over the batch (the gradients are means)"),
        ),
    }),
    **_group("simmim", {
        "mask_patch_size": Option(
            default=32,
            kind=int,
            help="side in pixels of the masked squares (divides the image, "
                 "a multiple of the model's patch)",
            allowed=_POSITIVE_INT,
            tasks=(SIMMIM,),
        ),
        "mask_ratio": Option(
            default=0.6,
            kind=float,
            help="fraction of the squares masked (rounded up)",
            allowed=Range("(0, 1)"),
            tasks=(SIMMIM,),
        ),
        "norm_target_patch_size": Option(
            default=0,
            kind=int,
            help="reconstruct pixels normalised by the mean and variance "
                 "of this window around them (official Swin V2 recipe: 47); 0: raw pixels",
            allowed=OddWindow(),
            tasks=(SIMMIM,),
        ),
        "recon_grid_images": Option(
            default=8,
            kind=int,
            help="validation images shown in recon_e{epoch}.png (input / "
                 "masked / reconstruction) at each validation; 0: none",
            allowed=_NON_NEGATIVE,
            tasks=(SIMMIM,),
        ),
    }),
    **_group("checkpoints/logging", {
        "ckpt_save_dir": Option(
            default="./output",
            kind=str,
            help="checkpoints, resume state, config, metrics, per-rank logs",
        ),
        "tensorboard": Option(
            default=True,
            kind=bool,
            help="write live curves (and SimMIM's grids) as TensorBoard events into "
                 "ckpt_save_dir/tensorboard (rank 0)",
        ),
        "keep_checkpoint_max": Option(
            default=3,
            kind=int,
            help="weight checkpoints kept: the k latest (plus MODEL-best.ckpt, as "
                 "mindcv's best-checkpoint callback)",
            allowed=_POSITIVE_INT,
        ),
        "ckpt_save_policy": Option(
            default="latest_k",
            kind=str,
            help="which keep_checkpoint_max checkpoints are kept (mindcv): the "
                 "latest, or top_k those of the best validation metric (val_top1; SimMIM: "
                 "val_loss is not a score, latest_k only)",
            allowed=Choices("latest_k", "top_k"),
        ),
        "resume_opt": Option(
            default=False,
            kind=bool,
            help="mindcv: also load optimizer state next to ckpt_path",
            allowed=Only(False, "a run continues from its ckpt_save_dir/resume_state.ckpt (optimizer, "
                                "EMA, data position and schedule): pass --resume auto"),
        ),
        "ckpt_save_interval": Option(
            default=1,
            kind=int,
            help="epochs between weight checkpoints",
            allowed=_POSITIVE_INT,
        ),
        "resume_save_steps": Option(
            default=0,
            kind=int,
            help="also save resume state every N steps (0: epoch ends only)",
            allowed=_NON_NEGATIVE,
        ),
        "resume": Option(
            default="",
            kind=str,
            help="'auto' (latest in ckpt_save_dir) or a resume_state.ckpt path",
        ),
        "val_while_train": Option(
            default=True,
            kind=bool,
            help="validate during training",
        ),
        "val_interval": Option(
            default=1,
            kind=int,
            help="epochs between validations",
            allowed=_POSITIVE_INT,
        ),
        "log_interval": Option(
            default=20,
            kind=int,
            help="steps between log lines",
            allowed=_POSITIVE_INT,
        ),
    }),
    **_group("runtime", {
        "device_target": Option(
            default=None,
            kind=str,
            help="MindSpore backend; the one the installed MindSpore targets if unset "
                 "(Ascend on an Ascend build)",
            allowed=Choices("CPU", "GPU", "Ascend"),
            scripts=_ALL,
        ),
        "amp_level": Option(
            default="O2",
            kind=str,
            help="O0: float32; O2: float16 matmuls, float32 islands (validate/infer/export: "
                 "O0 unless set)",
            allowed=Choices("O0", "O2", unsupported={
                        "O1": "mindswin casts by its own O2 lists (float32 norms, softmax and position bias); "
                        "O1's white list is not offered",
                        "O3": "everything in float16 (norms and softmax too) loses the accuracy of Swin V2's "
                        "cosine attention"}),
            scripts=_ALL,
        ),
        "amp_dtype": Option(
            default="float16",
            kind=str,
            help="matmul dtype under O2",
            allowed=Choices("float16", "bfloat16"),
            scripts=_ALL,
        ),
        "val_amp_level": Option(
            default=None,
            kind=str,
            help="amp level of validation during training (mindcv); amp_level if unset",
            allowed=Choices("O0", "O2"),
        ),
        "amp_cast_list": Option(
            default=None,
            kind=str,
            help="mindcv: the operators O1 casts",
            allowed=Only(None, "O2 keeps mindswin's own float32 islands (norms, softmax, the "
                               "position bias; docs/ascend.md)"),
            scripts=_ALL,
        ),
        "mode": Option(
            default=0,
            kind=int,
            help="MindSpore execution mode (mindcv): 0 is GRAPH_MODE",
            allowed=Only(0, "every step compiles in GRAPH_MODE (0); PyNative (1) is not supported"),
            scripts=_ALL,
        ),
        "dataset_sink_mode": Option(
            default=False,
            kind=bool,
            help="mindcv: feed the train steps through MindSpore's data sink on "
                 "Ascend and GPU; on CPU, which has no sink, the host feeds them (said once)",
        ),
        "jit_level": Option(
            default="O0",
            kind=str,
            help="graph-compile level on Ascend (Cell.set_jit_config): O0 kernel by kernel, "
                 "O1 adds automatic operator fusion, O2 sinks the whole graph (GE; deprecated by "
                 "MindSpore 2.9, said once); CPU and GPU compile alike at every level",
            allowed=Choices("O0", "O1", "O2"),
            scripts=_ALL,
        ),
        "distribute": Option(
            default=False,
            kind=bool,
            help="data parallel under msrun",
            scripts=_WITH_DATA,
        ),
        "enable_parallel_optimizer": Option(
            default=False,
            kind=bool,
            help="ZeRO-1: shard the optimizer state across the data-parallel "
                 "ranks (needs distribute; any backend)",
        ),
        "hccl_buffsize": Option(
            default=None,
            kind=int,
            help="HCCL buffer size in MB (Ascend only); HCCL's if unset",
            allowed=_POSITIVE_INT,
            scripts=_WITH_DATA,
        ),
        # numpy's legacy global seed (set with MindSpore's) takes 32 bits.
        "seed": Option(
            default=42,
            kind=int,
            help="global seed",
            allowed=Range("[0, 4294967295]"),
        ),
    }),
    **_group("output", {
        "output": Option(
            default="",
            kind=str,
            help="write the results to this JSON file",
            scripts=(VALIDATE, INFER),
        ),
        "topk": Option(
            default=5,
            kind=int,
            help="classes reported per image",
            allowed=_POSITIVE_INT,
            scripts=(INFER,),
        ),
        "cam": Option(
            default="",
            kind=str,
            help="write a Grad-CAM picture of the last stage per image (IMAGE_cam.png, and the map "
                 "as IMAGE_cam.npy) into this folder",
            scripts=(INFER,),
        ),
        "throughput": Option(
            default=False,
            kind=bool,
            help="measure model-only img/s and ms/step (inference and a training step) at "
                 "the recipe's batch and resolution instead of validating; no data or weights needed",
            scripts=(VALIDATE,),
        ),
        "throughput_warmup": Option(
            default=50,
            kind=int,
            help="untimed calls before the timed ones",
            allowed=_POSITIVE_INT,
            scripts=(VALIDATE,),
        ),
        "throughput_steps": Option(
            default=30,
            kind=int,
            help="timed calls, synchronised at the end",
            allowed=_POSITIVE_INT,
            scripts=(VALIDATE,),
        ),
        "class_names_file": Option(
            default="",
            kind=str,
            help="index->name file (one name per line) for checkpoints without "
                 "names",
            scripts=(INFER,),
        ),
        "file_format": Option(
            default="MINDIR",
            kind=str,
            help="export format (ONNX: ops without a MindSpore converter rewritten, "
                 "see docs/deploy.md)",
            allowed=Choices("MINDIR", "ONNX"),
            scripts=(EXPORT,),
        ),
        "dynamic_batch": Option(
            default=None,
            kind=bool,
            help="export with a dynamic batch dimension; on unless batch_size is given "
                 "(ONNX: two fixed exports merged, needs the onnx package)",
            scripts=(EXPORT,),
        ),
        "export_file": Option(
            default="",
            kind=str,
            help="output path without extension; next to the checkpoint if empty",
            scripts=(EXPORT,),
        ),
    }),
}
# Other spellings accepted on the command line.
# Other spellings of a key (recipes and command line): timm's, the official repo's, mindswin's earlier ones.
ALIASES = {"img_size": "image_resize", "lr_scheduler": "scheduler", "mixup_prob": "cutmix_prob"}
# Keys that are gone, with what to write instead.
RETIRED = {"scale_lr": "lr is absolute (mindcv's meaning) and base_lr, base_min_lr and base_warmup_lr are scaled by "
                       "global batch / lr_base_batch (the official meaning): write the rates with the spelling of "
                       "their meaning instead"}


def choices(key: str) -> Tuple[str, ...]:
    """The allowed values of a :class:`Choices` key, for modules that act on them."""
    return DEFAULTS[key].allowed.values


def task_only_keys(task: str) -> Tuple[str, ...]:
    """The keys that other tasks read and ``task`` does not."""
    return tuple(key for key, option in DEFAULTS.items() if task not in option.tasks)
