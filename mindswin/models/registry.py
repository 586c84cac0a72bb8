"""Model registry: official/timm variant names, mindcv aliases, ``build_model``."""
from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence

from mindspore import nn

from .kernel_library import cpu_kernels, kernel_choice
from .swin_v2 import SwinTransformerV2
from .threads import default_cpu_threads

__all__ = ["ModelSpec", "register_model", "list_models", "model_spec", "resolve_model_name", "build_model",
           "build_model_with_cfg", "geometry_overrides"]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and default geometry of a registered variant."""

    name: str
    embed_dim: int
    depths: Sequence[int]
    num_heads: Sequence[int]
    window_size: int
    img_size: int
    num_classes: int = 1000
    patch_size: int = 4
    pretrained_window_sizes: Sequence[int] = (0, 0, 0, 0)
    extra_norm_period: int = 0
    # Preprocessing the weights were trained with (timm's pretrained_cfg): eval crop
    # fraction (1.0 squash-resizes), resize interpolation, per-channel mean/std on [0, 1].
    crop_pct: float = 0.9
    interpolation: str = "bicubic"
    mean: Sequence[float] = (0.485, 0.456, 0.406)
    std: Sequence[float] = (0.229, 0.224, 0.225)
    description: str = ""

    def model_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of :class:`SwinTransformerV2` for this variant."""
        return dict(img_size=self.img_size, patch_size=self.patch_size, num_classes=self.num_classes,
                    embed_dim=self.embed_dim, depths=tuple(self.depths), num_heads=tuple(self.num_heads),
                    window_size=self.window_size,
                    pretrained_window_sizes=tuple(self.pretrained_window_sizes),
                    extra_norm_period=self.extra_norm_period)


_REGISTRY: Dict[str, ModelSpec] = {}
# mindcv's names for the same architectures (all at 256 px, ImageNet-1k).
_ALIASES: Dict[str, str] = {}


def register_model(spec: ModelSpec, aliases: Sequence[str] = ()) -> ModelSpec:
    """Add ``spec`` (and optional alias names) to the registry."""
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    for alias in aliases:
        _ALIASES[alias] = spec.name
    return spec


_TINY = dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24))
_SMALL = dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24))
_BASE = dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))
_LARGE = dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48))
# The paper's two largest (Swin V2, table 1): an extra main-branch LayerNorm every 6 blocks. The
# paper gives C and depths; the heads are mmpretrain's (its arch_zoo; for H it notes the count is
# not certain), as no official code for them is published.
_HUGE = dict(embed_dim=352, depths=(2, 2, 18, 2), num_heads=(8, 16, 32, 64), extra_norm_period=6)
_GIANT = dict(embed_dim=512, depths=(2, 2, 42, 4), num_heads=(16, 32, 64, 128), extra_norm_period=6)
_FROM_22K = dict(pretrained_window_sizes=(12, 12, 12, 6))

for _size, _arch in (("tiny", _TINY), ("small", _SMALL), ("base", _BASE)):
    for _window in (8, 16):
        register_model(ModelSpec(f"swinv2_{_size}_window{_window}_256", window_size=_window, img_size=256,
                                 description=f"Swin-{_size[0].upper()} V2, ImageNet-1k, 256 px, window {_window}",
                                 **_arch),
                       aliases=(f"swinv2_{_size}_window{_window}",))
for _size, _arch in (("base", _BASE), ("large", _LARGE)):
    register_model(ModelSpec(f"swinv2_{_size}_window12_192", window_size=12, img_size=192, num_classes=21841,
                             description=f"Swin-{_size[0].upper()} V2, ImageNet-22k pre-training, 192 px", **_arch))
    register_model(ModelSpec(f"swinv2_{_size}_window12to16_192to256", window_size=16, img_size=256,
                             description=f"Swin-{_size[0].upper()} V2, 22k->1k fine-tune, 256 px, window 16",
                             **_FROM_22K, **_arch))
    register_model(ModelSpec(f"swinv2_{_size}_window12to24_192to384", window_size=24, img_size=384,
                             crop_pct=1.0,
                             description=f"Swin-{_size[0].upper()} V2, 22k->1k fine-tune, 384 px, window 24",
                             **_FROM_22K, **_arch))

# Pre-training geometry of the paper's H and G (192 px, window 12, as its SimMIM pre-training).
for _size, _arch, _count in (("huge", _HUGE, "658M"), ("giant", _GIANT, "3.0B")):
    register_model(ModelSpec(f"swinv2_{_size}_window12_192", window_size=12, img_size=192,
                             description=f"Swin V2-{_size[0].upper()} ({_count} parameters), 192 px, window 12; "
                                         "no published classification weights",
                             **_arch))

# Small variants for CPU demos, tests and benchmarks (no official weights).
register_model(ModelSpec("swinv2_micro_window4_32", embed_dim=48, depths=(2, 2, 2), num_heads=(3, 6, 12),
                         window_size=4, img_size=32, patch_size=2, num_classes=10,
                         pretrained_window_sizes=(0, 0, 0), crop_pct=1.0,
                         description="CPU variant: 32 px, patch 2, dim 48, depths 2-2-2, window 4"))
register_model(ModelSpec("swinv2_nano_window4_64", embed_dim=32, depths=(1, 1, 2, 1), num_heads=(2, 4, 8, 16),
                         window_size=4, img_size=64, num_classes=10, crop_pct=1.0,
                         description="CPU variant: 64 px, patch 4, dim 32, depths 1-1-2-1, window 4"))


def list_models(pattern: Optional[str] = None) -> List[str]:
    """Registered model names, optionally filtered by a shell-style ``pattern``."""
    names = sorted(_REGISTRY)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def resolve_model_name(name: str) -> str:
    """Canonical name for ``name``, a mindcv alias or timm's ``name.tag`` (a published tag of it); a clear
    error otherwise."""
    if name in _REGISTRY:
        return name
    if name in _ALIASES:
        return _ALIASES[name]
    base, dot, tag = name.partition(".")
    if dot and (base in _REGISTRY or base in _ALIASES):
        from .published import PRETRAINED  # data only

        canonical = _REGISTRY[base].name if base in _REGISTRY else _ALIASES[base]
        tags = [weights.tag for weights in PRETRAINED if weights.model == canonical]
        if tag in tags:
            return canonical
        published = f"its tags: {', '.join(tags)}" if tags else "it has no published weights"
        raise ValueError(f"unknown pretrained tag {tag!r} in {name!r}; {published} (mindswin.list_pretrained())")
    close = difflib.get_close_matches(name, list(_REGISTRY) + list(_ALIASES), n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"unknown model {name!r}.{hint} Available: {', '.join(list_models())}")


def model_spec(name: str) -> ModelSpec:
    """The :class:`ModelSpec` of a registered name or alias."""
    return _REGISTRY[resolve_model_name(name)]


def build_model_with_cfg(model_class: Callable[..., nn.Cell], name: str, *, kernels: str = "auto",
                         portable: bool = False, **arguments: Any) -> nn.Cell:
    """The one builder of every variant: ``model_class`` with the registered variant's arguments, overridden.

    As timm's ``build_model_with_cfg``. Sizes MindSpore's CPU thread pool first (the one process
    state it changes: the pool is sized once, before the first graph; see
    :func:`~mindswin.models.threads.default_cpu_threads`).

    Args:
        model_class: :class:`SwinTransformerV2` or a subclass taking its arguments.
        name: Registered name or mindcv alias.
        kernels: What the model computes with: ``"auto"`` (the backend decides), ``"cpu"`` (the fused
            CPU kernels) or ``"native"`` (MindSpore's own ops); see
            :data:`~mindswin.models.kernel_library.KERNELS`. Fixed for the model's life.
        portable: Only ops every exporter converts (ONNX): the exact GELU and the cosine
            normalisation without Erf and Rsqrt; needs ``kernels="native"``.
        **arguments: :class:`SwinTransformerV2` arguments replacing the variant's.

    Returns:
        The model, training mode off, ``model_name`` set to the registered name.
    """
    spec = model_spec(name)
    default_cpu_threads()
    with cpu_kernels(kernel_choice(kernels)):
        model = model_class(**{**spec.model_kwargs(), **arguments})
    if portable:
        model.set_portable()
    model.model_name = spec.name
    model.set_train(False)
    return model


def geometry_overrides(num_classes: Optional[int] = None, img_size: Optional[Any] = None,
                       window_size: Optional[Any] = None,
                       pretrained_window_sizes: Optional[Sequence[Any]] = None) -> Dict[str, Any]:
    """The geometry arguments that are set (None: the variant's)."""
    given = dict(num_classes=num_classes, img_size=img_size, window_size=window_size,
                 pretrained_window_sizes=pretrained_window_sizes)
    return {key: value for key, value in given.items() if value is not None}


def build_model(name: str, *, num_classes: Optional[int] = None, img_size: Optional[Any] = None,
                window_size: Optional[Any] = None, pretrained_window_sizes: Optional[Sequence[Any]] = None,
                drop_path_rate: float = 0.0, **kwargs: Any) -> SwinTransformerV2:
    """Build the architecture of a registered Swin V2 variant (no weights loaded).

    :func:`mindswin.create_model` takes the same arguments and also loads a checkpoint.

    Args:
        name: Official/timm name (see :func:`list_models`) or a mindcv alias.
        num_classes: Classifier width; defaults to the variant's (1000, or 21841 for the
            ImageNet-22k models).
        img_size: Input side or (height, width); defaults to the variant's.
        window_size: Attention window; defaults to the variant's.
        pretrained_window_sizes: Per-stage windows of the weights to be loaded, for the
            CPB rescaling; defaults to the variant's.
        drop_path_rate: Stochastic depth rate.
        **kwargs: Further :class:`SwinTransformerV2` arguments (``features_only``,
            ``out_indices``, ``recompute``, ``embed_dim``, ...) and :func:`build_model_with_cfg`'s
            ``kernels`` and ``portable``.

    Returns:
        The model, with training mode off (``set_train(False)``).
    """
    return build_model_with_cfg(SwinTransformerV2, name, **geometry_overrides(num_classes, img_size, window_size,
                                                                               pretrained_window_sizes),
                                **kwargs, drop_path_rate=drop_path_rate)
