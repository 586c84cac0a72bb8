"""The table of every key, read like the official ``_C`` tree: default, type, rule, ``--help``, readers.
"""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Optional, Tuple

from .rules import Choices, Items, NumberOr, OddWindow, Only, Range, RegisteredModel, Rule

__all__ = ["Option", "DEFAULTS", "ALIASES", "RETIRED", "SCRIPTS", "TRAIN", "VALIDATE", "INFER", "EXPORT", "choices"]


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


def choices(key: str) -> Tuple[str, ...]:
    """The allowed values of a :class:`Choices` key, for modules that act on them."""
    return DEFAULTS[key].allowed.values
