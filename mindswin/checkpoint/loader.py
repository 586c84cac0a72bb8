"""Load any Swin V2 checkpoint into a mindswin model, with checks that name what is wrong."""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mindspore import Tensor, nn

from .layouts import detect_layout, to_mindswin_names, unwrap_state_dict
from .native import read_metadata
from .readers import CheckpointError, read_tensors

__all__ = ["LoadReport", "load_checkpoint", "load_simmim_checkpoint", "load_state_dict", "read_state_dict",
           "describe_architecture", "is_pretraining_only"]

_logger = logging.getLogger(__name__)

HEAD_KEYS = ("head.weight", "head.bias")
# The official fine-tuning rule (microsoft/Swin-Transformer utils.load_pretrained): a 21841-class
# ImageNet-22k head loaded into a 1000-class model keeps the rows of the ImageNet-1k classes,
# listed in the shipped map (the official data/map22kto1k.txt, one 22k row index per 1k class).
CLASS_MAPS = {"imagenet22k_to_1k": os.path.join(os.path.dirname(__file__), "class_maps", "imagenet22k_to_1k.txt")}
_AUTOMATIC_MAPS = {(21841, 1000): "imagenet22k_to_1k"}
# class_map value that keeps no rows: a mismatched head is zero-initialised even for 22k -> 1k.
NO_CLASS_MAP = "none"


def is_pretraining_only(key: str) -> bool:
    """Whether a (mindswin-named) tensor belongs to SimMIM pre-training only: the mask token and the decoder."""
    return key == "mask_token" or key.startswith("decoder.")


@dataclass
class LoadReport:
    """What :func:`load_checkpoint` did."""

    path: str
    layout: str
    loaded: List[str] = field(default_factory=list)
    dropped: List[str] = field(default_factory=list)
    head_reinitialised: bool = False
    head_initialised: bool = False
    head_rows_selected: Optional[int] = None
    class_map: Optional[str] = None
    skipped_for_features_only: List[str] = field(default_factory=list)
    pretraining_dropped: List[str] = field(default_factory=list)
    head_dropped: List[str] = field(default_factory=list)
    initialised: List[str] = field(default_factory=list)
    numerics: str = "official"

    def summary(self) -> str:
        parts = [f"loaded {len(self.loaded)} tensors from {self.path} (layout: {self.layout})",
                 f"dropped {len(self.dropped)} derived buffers/training state"]
        if self.numerics != "official":
            parts.append(f"the model computes with {self.numerics}'s numerics, as these weights were trained "
                         "(LayerNorm epsilon 1e-6, tanh GELU)")
        if self.pretraining_dropped:
            parts.append(f"dropped the SimMIM mask token and decoder ({len(self.pretraining_dropped)} tensors: "
                         f"{', '.join(self.pretraining_dropped)}), which only pre-training uses")
        if self.head_dropped:
            parts.append(f"dropped the classifier head ({', '.join(self.head_dropped)}): the SimMIM encoder has none")
        if self.initialised:
            parts.append(f"kept the initial values of {', '.join(self.initialised)} (not in the checkpoint)")
        if self.head_rows_selected is not None:
            parts.append(f"head reduced to {self.head_rows_selected} classes via the class map {self.class_map}")
        if self.head_reinitialised:
            parts.append("classifier head re-initialised to zero (class count differs)")
        if self.head_initialised:
            parts.append("classifier head initialised (the checkpoint has none)")
        if self.skipped_for_features_only:
            parts.append(f"skipped {len(self.skipped_for_features_only)} head/norm tensors (features_only)")
        return "; ".join(parts)


def weights_numerics(path: str, layout: str) -> str:
    """How a model must compute to reproduce what these weights were trained with.

    mindcv files: mindcv's numerics; mindswin files: what their metadata records (a converted
    or fine-tuned mindcv model keeps them); every other layout: the official ones.
    """
    if layout == "mindcv":
        return "mindcv"
    if layout == "mindswin":
        return read_metadata(path).numerics
    return "official"


def _apply_numerics(model: nn.Cell, path: str, report: LoadReport) -> None:
    report.numerics = weights_numerics(path, report.layout)
    if report.numerics != getattr(model, "numerics", report.numerics):
        model.set_numerics(report.numerics)


def read_state_dict(path: str) -> Tuple[Dict[str, np.ndarray], str, List[str]]:
    """Read ``path`` and map it to mindswin names.

    Returns:
        (state dict in mindswin names, detected layout, dropped keys).
    """
    raw = read_tensors(path)
    try:
        state = unwrap_state_dict(raw)
        layout = detect_layout(state)
        mapped, dropped = to_mindswin_names(state, layout)
        if layout == "official" and path.endswith(".ckpt"):
            layout = "mindswin"  # same names; a MindSpore file cannot come from the official repo
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    return mapped, layout, dropped


def describe_architecture(state: Dict[str, np.ndarray]) -> str:
    """Guess embed_dim / depths / heads of a mindswin-named state dict, for error messages."""
    try:
        embed_dim = state["patch_embed.proj.weight"].shape[0]
    except KeyError:
        return "unknown architecture"
    depths = []
    for stage in range(8):
        blocks = {int(m.group(1)) for k in state for m in [re.match(rf"layers\.{stage}\.blocks\.(\d+)\.", k)] if m}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
    heads = [state[f"layers.{i}.blocks.0.attn.logit_scale"].shape[0] for i in range(len(depths))
             if f"layers.{i}.blocks.0.attn.logit_scale" in state]
    classes = state["head.weight"].shape[0] if "head.weight" in state else 0
    return f"embed_dim={embed_dim}, depths={tuple(depths)}, num_heads={tuple(heads)}, num_classes={classes}"


def resolve_class_map(class_map: Optional[str], source_classes: int, target_classes: int) -> Optional[str]:
    """The class-map file to apply: ``class_map`` itself, a shipped map by name, or the official automatic one.

    An empty ``class_map`` follows the official rule (the ImageNet-1k rows of a 22k head, see
    ``CLASS_MAPS``); ``"none"`` applies no map.
    """
    if class_map == NO_CLASS_MAP:
        return None
    if not class_map:
        class_map = _AUTOMATIC_MAPS.get((source_classes, target_classes))
    return CLASS_MAPS.get(class_map, class_map) if class_map else None


def _read_class_map(path: str, num_source_classes: int) -> np.ndarray:
    if not os.path.isfile(path):
        raise CheckpointError(f"class map not found: {path} (pass a file with one source-class index per line, "
                              f"a shipped map ({', '.join(CLASS_MAPS)}) or {NO_CLASS_MAP!r})")
    with open(path) as f:
        rows = [line.split()[0] for line in f if line.strip()]
    if not rows:
        raise CheckpointError(f"class map {path} is empty: it needs one source-class index per line")
    try:
        index = np.array([int(r) for r in rows], dtype=np.int64)
    except ValueError as exc:
        raise CheckpointError(f"class map {path} must hold one integer source-class index per line: {exc}") from exc
    if index.min() < 0 or index.max() >= num_source_classes:
        raise CheckpointError(f"class map {path} has indices outside [0, {num_source_classes})")
    return index


def _only_class_count_differs(state: Dict[str, np.ndarray], params: dict) -> bool:
    """True when the head differs from the model's in its number of rows alone."""
    if "head.weight" not in state or "head.weight" not in params:
        return False
    source, target = tuple(state["head.weight"].shape), tuple(params["head.weight"].shape)
    return source != target and source[1:] == target[1:]


def load_state_dict(model: nn.Cell, state: Dict[str, np.ndarray], *, source: str = "<state dict>",
                    layout: str = "mindswin", class_map: Optional[str] = None,
                    strict_head: bool = False, init_missing_head: bool = False,
                    may_lack: Sequence[str] = ()) -> LoadReport:
    """Copy a mindswin-named state dict into ``model`` after checking it fits.

    SimMIM's mask token and decoder are dropped (and reported) when ``model`` has no mask
    token.

    Args:
        model: Target model.
        state: Tensors under mindswin names (see :func:`read_state_dict`).
        source: Name used in messages.
        layout: Layout name, for the report.
        class_map: File with one source-class index per line, or a shipped map's name
            (``CLASS_MAPS``); selects head rows. Empty: the official rule, which keeps the
            ImageNet-1k rows of a 21841-class head in a 1000-class model; ``"none"``: no rows kept.
        strict_head: Raise instead of zero-initialising a head whose class count differs.
        init_missing_head: Give a classifier the freshly initialised head when the checkpoint
            has none (a SimMIM or backbone checkpoint being fine-tuned; reported); otherwise
            such a checkpoint is an error.
        may_lack: Parameter names the checkpoint may lack; they keep their initial values
            (reported).

    Raises:
        CheckpointError: naming missing/unexpected keys and shape mismatches.
    """
    report = LoadReport(path=source, layout=layout)
    params = dict(model.parameters_and_names())
    state = dict(state)

    if "mask_token" not in params:
        for key in [k for k in state if is_pretraining_only(k)]:
            report.pretraining_dropped.append(key)
            del state[key]

    if getattr(model, "features_only", False):
        for key in [k for k in state if k.startswith(("head.", "norm."))]:
            report.skipped_for_features_only.append(key)
            del state[key]

    class_map = (resolve_class_map(class_map, state["head.weight"].shape[0], params["head.weight"].shape[0])
                 if "head.weight" in state and "head.weight" in params else None)
    if class_map:
        index = _read_class_map(class_map, state["head.weight"].shape[0])
        for key in HEAD_KEYS:
            if key in state:
                state[key] = state[key][index]
        report.head_rows_selected = len(index)
        report.class_map = class_map

    if _only_class_count_differs(state, params):
        if strict_head:
            raise CheckpointError(f"{source}: head has {state['head.weight'].shape[0]} classes, model has "
                                  f"{params['head.weight'].shape[0]}")
        source_classes = state["head.weight"].shape[0]
        # zeros, as the official fine-tuning does: every class starts at logit 0
        for key in HEAD_KEYS:
            state[key] = np.zeros(params[key].shape, np.float32)
        report.head_reinitialised = True
        _logger.warning("%s: classifier head re-initialised to zero: checkpoint has %d classes, model has %d",
                        source, source_classes, params["head.weight"].shape[0])
    if "head.weight" not in params:
        for key in HEAD_KEYS:
            state.pop(key, None)
    elif state and not report.head_reinitialised and not any(key in state for key in HEAD_KEYS):
        if strict_head or not init_missing_head:
            raise CheckpointError(f"{source} has no classifier head (a SimMIM pre-training or backbone checkpoint): "
                                  "fine-tune it with train.py --ckpt_path, or build the model with num_classes=0")
        report.head_initialised = True
        _logger.warning("%s has no classifier head: the model's %d-class head starts from its initialisation",
                        source, params["head.weight"].shape[0])

    for key in may_lack:
        if key in params and key not in state:
            report.initialised.append(key)
    expected = {k for k in params if not (report.head_initialised and k in HEAD_KEYS) and k not in report.initialised}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - set(params))
    mismatched = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(params[k].shape)}"
                        for k in set(state) & set(params) if tuple(state[k].shape) != tuple(params[k].shape))
    if missing or unexpected or mismatched:
        model_name = getattr(model, "model_name", type(model).__name__)
        lines = [f"{source} (layout: {layout}) does not fit model {model_name}."]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mismatched)):
            if keys:
                shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
                lines.append(f"  {title}: {shown}")
        lines.append(f"  checkpoint looks like: {describe_architecture(state)}")
        lines.append(f"  model is:              {describe_architecture({k: p for k, p in params.items()})}")
        lines.append("  Likely cause: a checkpoint of another variant (pick the model name that matches it) "
                     "or of an unsupported layout.")
        raise CheckpointError("\n".join(lines))

    for key in sorted(state):
        param = params[key]
        param.set_data(Tensor(np.ascontiguousarray(state[key]), dtype=param.dtype))
        report.loaded.append(key)
    return report


def load_checkpoint(model: nn.Cell, path: str, *, class_map: Optional[str] = None,
                    strict_head: bool = False, init_missing_head: bool = False) -> LoadReport:
    """Load a checkpoint of any supported layout into ``model``.

    Supports mindswin ``.ckpt``, official ``.pth``, timm ``.pth``/``.safetensors``, Hugging
    Face ``pytorch_model.bin``/``model.safetensors`` (file or directory), mmpretrain
    ``.pth`` and mindcv ``.ckpt``. Derived buffers are dropped (the model built its own for
    its resolution and window); a head whose class count differs is re-initialised with a
    warning. The model is switched to the numerics the weights were trained with (mindcv's
    for mindcv weights, see :func:`weights_numerics`): call this before the first compile.

    Args:
        model: A :class:`~mindswin.models.SwinTransformerV2`.
        path: Checkpoint file or Hugging Face model directory.
        class_map: Optional file of source-class indices to keep from the head.
        strict_head: Raise rather than re-initialise a mismatching head.
        init_missing_head: Initialise the head when the checkpoint has none (fine-tuning a
            SimMIM or backbone checkpoint) instead of raising.

    Returns:
        A :class:`LoadReport`.
    """
    path = os.fspath(path)
    state, layout, dropped = read_state_dict(path)
    report = load_state_dict(model, state, source=path, layout=layout, class_map=class_map,
                             strict_head=strict_head, init_missing_head=init_missing_head)
    report.dropped = dropped
    _apply_numerics(model, path, report)
    _logger.info(report.summary())
    return report


def load_simmim_checkpoint(model: nn.Cell, path: str) -> LoadReport:
    """Load a checkpoint into a :class:`~mindswin.models.simmim.SimMIM` model (pre-training start or continuation).

    A SimMIM checkpoint (official ``.pth`` or mindswin ``.ckpt``) fills encoder, mask token
    and decoder; a classification checkpoint of any layout fills the encoder, its head is
    dropped and the mask token and decoder keep their initialisation. Both are reported.
    """
    path = os.fspath(path)
    state, layout, dropped = read_state_dict(path)
    encoder_state = {k: v for k, v in state.items() if not k.startswith(("decoder.", "head."))}
    decoder_state = {k[len("decoder."):]: v for k, v in state.items() if k.startswith("decoder.")}
    report = load_state_dict(model.encoder, encoder_state, source=path, layout=layout, may_lack=("mask_token",))
    report.dropped = dropped
    report.head_dropped = sorted(k for k in state if k.startswith("head."))
    decoder = load_state_dict(model.decoder, decoder_state, source=path, layout=layout,
                              may_lack=tuple(name for name, _ in model.decoder.parameters_and_names()))
    report.loaded += [f"decoder.{k}" for k in decoder.loaded]
    report.initialised += [f"decoder.{k}" for k in decoder.initialised]
    _apply_numerics(model.encoder, path, report)
    _logger.info(report.summary())
    return report
