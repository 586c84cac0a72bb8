"""Checkpoint layouts of the Swin V2 ecosystem and their mapping to mindswin names.

mindswin's parameter names are the official Microsoft ones. Every other layout is mapped
onto them here, one function per layout:

* ``official`` / ``mindswin``: identical names (official files also hold derived buffers).
* ``timm``: downsample at the *start* of stages 1..3 (``layers.{i}.downsample`` is the
  official ``layers.{i-1}.downsample``) and the classifier under ``head.fc``.
* ``hf``: Hugging Face transformers ``Swinv2Model`` / ``Swinv2ForImageClassification``
  (``swinv2.encoder.layers...``, split query/key/value projections).
* ``mmpretrain``: ``backbone.stages.{i}`` with ``attn.w_msa``, ``ffn.layers``, downsample
  at the start of stages 1..3 built on ``nn.Unfold`` (channel order differs from the
  official concat, so the merging weights are permuted), final norm ``backbone.norm3``.
* ``mindcv``: mindcv's ``swinv2_*`` (MindSpore): separate ``attn.q/k/v`` Dense layers (k
  without bias), the CPB MLP as ``attn.relative_position_bias.cpb_mlp0/cpb_mlp2``,
  LayerNorm ``gamma``/``beta``; stages named ``layers.{i}`` in a trained file and bare
  (``0.`` for stage 0, ``0.blocks.{i}.`` for stage i) in one saved from a freshly built
  model; optimizer moments (``adam_m.``, ``adam_v.``, ``beta1_power`` ...) and EMA weights
  (``ema.``) may sit beside them. mindcv
  computes with other epsilons and GELU: the loader switches the model to mindcv's numerics.
* ``simmim``: SimMIM pre-training (microsoft/SimMIM and microsoft/Swin-Transformer
  ``main_simmim_pt.py``, and mindswin's own SimMIM ``.ckpt``): the encoder under
  ``encoder.`` with ``encoder.mask_token``, the decoder under ``decoder.0.`` (older official
  files name the CPB MLP ``rpe_mlp``). Mapped to the classifier's names plus
  ``mask_token`` and ``decoder.*``, which the loader drops for a classifier and reports.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Callable, Dict, List, Mapping, Tuple

import numpy as np

__all__ = ["DERIVED_BUFFERS", "unwrap_state_dict", "detect_layout", "to_mindswin_names", "LAYOUTS"]

StateDict = Dict[str, np.ndarray]

# Tensors that depend only on geometry: dropped on load and rebuilt by the model.
DERIVED_BUFFERS = ("relative_coords_table", "relative_position_index", "attn_mask", "k_bias")
# MindSpore training state that can sit next to the weights in a .ckpt.
_TRAINING_STATE = re.compile(r"^(adam_m|adam_v|moments|moment1|moment2|accum|ema\.|swap\.|global_step|"
                             r"learning_rate|beta1_power|beta2_power|updates$|scale_sense|loss_scale|"
                             r"current_iterator_step|epoch_num|step_num)")
# Names only mindcv's Swin V2 has.
_MINDCV_KEY = re.compile(r"(^|\.)blocks\.\d+\.attn\.(q\.weight|relative_position_bias\.cpb_mlp0\.weight)$")
# A resume state (engine/state.py's TrainState): the model's tensors as model.* (SimMIM's model holds the
# encoder) beside the optimizer's step count.
_RESUME_STATE_KEY = re.compile(r"model\.(encoder\.)?patch_embed\.")
_RESUME_STATE_STEP = "optimizer.step"


def unwrap_state_dict(obj: object) -> StateDict:
    """Find the state dict inside common wrappers (``model``, ``state_dict``, ``module.``)."""
    for key in ("model", "state_dict", "model_state_dict"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a dict of tensors")
    tensors = OrderedDict((k, v) for k, v in obj.items() if isinstance(v, np.ndarray))
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = OrderedDict((k[len("module."):], v) for k, v in tensors.items())
    return tensors


def detect_layout(state: StateDict) -> str:
    """Name the layout of ``state`` from its keys."""
    keys = list(state)
    if any(k.startswith("encoder.patch_embed.") or k == "encoder.mask_token" for k in keys):
        return "simmim"
    if any(k.startswith(("swinv2.", "embeddings.patch_embeddings", "encoder.layers.")) for k in keys):
        return "hf"
    if any(k.startswith(("backbone.stages.", "stages.")) for k in keys):
        return "mmpretrain"
    if any(_MINDCV_KEY.search(k) for k in keys):
        return "mindcv"
    if "head.fc.weight" in state:
        return "timm"
    has_first_downsample = any(k.startswith("layers.0.downsample.") for k in keys)
    has_later_downsample = any(re.match(r"layers\.[1-9]\d*\.downsample\.", k) for k in keys)
    if has_later_downsample and not has_first_downsample:
        return "timm"
    if any(k.startswith(("layers.", "patch_embed.")) for k in keys):
        return "official"
    if _RESUME_STATE_STEP in state and any(_RESUME_STATE_KEY.match(k) for k in keys):
        raise ValueError("a training run's resume state (the model's, the optimizer's and the EMA's tensors), not "
                         "weights: pass one of the run's MODEL-eNNNN.ckpt or MODEL-best.ckpt files instead, or "
                         "continue that run with train.py --resume")
    raise ValueError("no Swin V2 parameters found (expected keys like 'layers.0.blocks.0.attn.qkv.weight', "
                     f"found e.g. {keys[:3]})")


def _drop_derived(state: StateDict) -> Tuple[StateDict, List[str]]:
    kept, dropped = OrderedDict(), []
    for k, v in state.items():
        if k.rsplit(".", 1)[-1] in DERIVED_BUFFERS or _TRAINING_STATE.match(k):
            dropped.append(k)
        else:
            kept[k] = v
    return kept, dropped


def _shift_downsample(key: str, delta: int) -> str:
    return re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m.group(1)) + delta}.downsample.", key)


def _from_official(state: StateDict) -> StateDict:
    return OrderedDict(state)


def _from_timm(state: StateDict) -> StateDict:
    out = OrderedDict()
    for k, v in state.items():
        k = _shift_downsample(k, -1)
        if k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        out[k] = v
    return out


_HF_BLOCK_RENAMES = (
    ("attention.self.logit_scale", "attn.logit_scale"),
    ("attention.self.continuous_position_bias_mlp.", "attn.cpb_mlp."),
    ("attention.output.dense.", "attn.proj."),
    ("layernorm_before.", "norm1."),
    ("layernorm_after.", "norm2."),
    ("intermediate.dense.", "mlp.fc1."),
    ("output.dense.", "mlp.fc2."),
)


def _from_hf(state: StateDict) -> StateDict:
    out = OrderedDict()
    qkv_parts: Dict[str, Dict[str, np.ndarray]] = {}
    for k, v in state.items():
        if k.startswith("swinv2."):
            k = k[len("swinv2."):]
        if k.startswith("embeddings.patch_embeddings.projection."):
            k = "patch_embed.proj." + k.rsplit(".", 1)[-1]
        elif k.startswith("embeddings.norm."):
            k = "patch_embed.norm." + k.rsplit(".", 1)[-1]
        elif k.startswith("layernorm."):
            k = "norm." + k[len("layernorm."):]
        elif k.startswith("classifier."):
            k = "head." + k[len("classifier."):]
        elif k == "embeddings.mask_token":
            k = "mask_token"  # Swinv2ForMaskedImageModeling (its decoder.* keeps its name)
        elif k.startswith("encoder.layers."):
            k = k[len("encoder."):]
            match = re.match(r"^(layers\.\d+\.blocks\.\d+\.)attention\.self\.(query|key|value)\.(weight|bias)$", k)
            if match:
                block, proj, kind = match.groups()
                qkv_parts.setdefault(block, {})[f"{proj}.{kind}"] = v
                continue
            for old, new in _HF_BLOCK_RENAMES:
                k = k.replace(old, new)
        out[k] = v
    for block, parts in qkv_parts.items():
        out[block + "attn.qkv.weight"] = np.concatenate(
            [parts["query.weight"], parts["key.weight"], parts["value.weight"]], axis=0)
        if "query.bias" in parts:
            out[block + "attn.q_bias"] = parts["query.bias"]
            out[block + "attn.v_bias"] = parts["value.bias"]
        if "key.bias" in parts and np.any(parts["key.bias"] != 0):
            raise ValueError(f"{block}attention.self.key.bias is non-zero; Swin V2 has no key bias")
    return out


def unfold_to_concat_order(channels: int) -> np.ndarray:
    """Permutation taking ``nn.Unfold(2, stride=2)`` channel order to the official concat.

    Unfold yields index ``c*4 + kh*2 + kw``; the official concat of ``x[0::2,0::2],
    x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]`` yields ``(kw*2 + kh)*C + c``. Returns
    ``perm`` with ``official[..., j] = unfold[..., perm[j]]``.
    """
    perm = np.empty(4 * channels, dtype=np.int64)
    for kh in range(2):
        for kw in range(2):
            for c in range(channels):
                perm[(kw * 2 + kh) * channels + c] = c * 4 + kh * 2 + kw
    return perm


_MM_BLOCK_RENAMES = (
    ("attn.w_msa.", "attn."),
    ("ffn.layers.0.0.", "mlp.fc1."),
    ("ffn.layers.1.", "mlp.fc2."),
)


def _from_mmpretrain(state: StateDict) -> StateDict:
    out = OrderedDict()
    final_norm = re.compile(r"^norm(\d+)\.")
    norms = sorted({int(m.group(1)) for k in state for m in [final_norm.match(k.replace("backbone.", "", 1))] if m})
    last_norm = norms[-1] if norms else None
    for k, v in state.items():
        if k.startswith("backbone."):
            k = k[len("backbone."):]
        if k.startswith("patch_embed.projection."):
            k = "patch_embed.proj." + k.rsplit(".", 1)[-1]
        elif k.startswith("head.fc."):
            k = "head." + k[len("head.fc."):]
        elif final_norm.match(k):
            if int(final_norm.match(k).group(1)) != last_norm:
                continue  # per-stage output norms of a detection backbone: not part of the classifier
            k = final_norm.sub("norm.", k)
        elif k.startswith("stages."):
            k = "layers." + k[len("stages."):]
            for old, new in _MM_BLOCK_RENAMES:
                k = k.replace(old, new)
            if re.match(r"^layers\.\d+\.downsample\.", k):
                k = _shift_downsample(k, -1)
                if k.endswith("reduction.weight"):
                    # mmpretrain's V2 merging is post-norm (norm over the 2C outputs), so
                    # only the reduction's input columns are in unfold order.
                    v = v[:, unfold_to_concat_order(v.shape[1] // 4)]
        out[k] = v
    return out


_MINDCV_BLOCK_RENAMES = (
    ("attn.relative_position_bias.cpb_mlp0.", "attn.cpb_mlp.0."),
    ("attn.relative_position_bias.cpb_mlp2.", "attn.cpb_mlp.2."),
    ("attn.q.bias", "attn.q_bias"),
    ("attn.v.bias", "attn.v_bias"),
)


def _from_mindcv(state: StateDict) -> StateDict:
    out = OrderedDict()
    qkv_parts: Dict[str, Dict[str, np.ndarray]] = {}
    for k, v in state.items():
        # A freshly built model's names (MindSpore 2.10): stage 0 is "0.", stage k > 0 is "0.blocks.k."
        k = re.sub(r"^0\.blocks\.(\d+)\.(blocks|downsample)\.", r"layers.\1.\2.", k)
        k = re.sub(r"^(\d+)\.", r"layers.\1.", k)
        k = re.sub(r"\.gamma$", ".weight", re.sub(r"\.beta$", ".bias", k))
        match = re.match(r"^(layers\.\d+\.blocks\.\d+\.attn\.)(q|k|v)\.weight$", k)
        if match:
            qkv_parts.setdefault(match.group(1), {})[match.group(2)] = v
            continue
        for old, new in _MINDCV_BLOCK_RENAMES:
            k = k.replace(old, new)
        out[k] = v
    for attn, parts in qkv_parts.items():
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"{attn}q/k/v: only {', '.join(sorted(parts))} present")
        out[attn + "qkv.weight"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


def _from_simmim(state: StateDict) -> StateDict:
    out = OrderedDict()
    for k, v in state.items():
        if k.startswith("encoder."):
            k = k[len("encoder."):]
        out[k.replace(".rpe_mlp.", ".cpb_mlp.")] = v  # the official loader's rename for its released files
    return out


LAYOUTS: Dict[str, Callable[[StateDict], StateDict]] = {
    "official": _from_official,
    "timm": _from_timm,
    "hf": _from_hf,
    "mmpretrain": _from_mmpretrain,
    "mindcv": _from_mindcv,
    "simmim": _from_simmim,
}


def to_mindswin_names(state: StateDict, layout: str) -> Tuple[StateDict, List[str]]:
    """Map ``state`` of ``layout`` to mindswin names; returns (mapped, dropped keys)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    state, dropped = _drop_derived(state)
    return LAYOUTS[layout](state), dropped
