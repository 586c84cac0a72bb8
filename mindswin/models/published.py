"""The published weights of every registered variant: where each file lives, its layout, the numbers
it was published with, and its checksum where one is known.

Pure data (no MindSpore import), so that reading the table, ``--help`` and the README generator
stay fast. Every fact comes from the publisher's own page, named in :data:`SOURCES`:

- official: the Swin Transformer repository's model zoo (``MODELHUB.md``), files in the GitHub
  releases of ``SwinTransformer/storage`` (v2.0.0). The zoo states acc@1 on ImageNet-1k val for
  the 1k models and the 22k->1k fine-tunes; it publishes no checksums.
- timm: the ``default_cfgs`` of ``timm/models/swin_transformer_v2.py`` (``hf_hub_id='timm/'``):
  the same weights converted to timm's names, one Hugging Face repository ``timm/NAME.TAG`` each
  (``model.safetensors``). Their LFS sha256 is not recorded here (not read from the Hub).
- hf: the transformers conversions (``convert_swinv2_timm_to_pytorch.py`` names the repositories
  ``microsoft/`` + the official file stem with ``-`` for ``_``), ``pytorch_model.bin``.
- mindcv: ``configs/swintransformerv2/README.md`` of mindspore-lab/mindcv (top-1 on ImageNet-1k
  val); the file name carries the first 8 hex digits of the file's SHA-256, as all mindcv
  weights do, which is checked as a prefix.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

__all__ = ["SOURCES", "WeightFile", "PretrainedWeights", "PRETRAINED", "DEFAULT_TAGS", "ALIAS_DEFAULT_TAGS",
           "split_spec"]

# source -> (what it is, where its facts were read)
SOURCES: Dict[str, Tuple[str, str]] = {
    "official": ("GitHub release of microsoft/Swin-Transformer (official .pth)",
                 "github.com/microsoft/Swin-Transformer MODELHUB.md"),
    "timm": ("Hugging Face Hub, timm's conversion (model.safetensors)",
             "github.com/huggingface/pytorch-image-models timm/models/swin_transformer_v2.py default_cfgs"),
    "hf": ("Hugging Face Hub, transformers' conversion (pytorch_model.bin)",
           "github.com/huggingface/transformers models/swinv2/convert_swinv2_timm_to_pytorch.py"),
    "mindcv": ("MindSpore download server, mindcv's own training (.ckpt)",
               "github.com/mindspore-lab/mindcv configs/swintransformerv2/README.md"),
}

_OFFICIAL = "https://github.com/SwinTransformer/storage/releases/download/v2.0.0/"
_HUB = "https://huggingface.co/"


@dataclass(frozen=True)
class WeightFile:
    """One published file.

    Attributes:
        source: Key of :data:`SOURCES`.
        url: Where the publisher serves it.
        layout: Its parameter names, a key of :data:`mindswin.checkpoint.LAYOUTS`.
        cache_name: Its path inside the cache (``SOURCE/...``); also its path under a mirror.
        sha256: Its SHA-256 in hex, or the published prefix of it (mindcv's 8 digits); None
            where the publisher states none.
    """

    source: str
    url: str
    layout: str
    cache_name: str
    sha256: Optional[str] = None


@dataclass(frozen=True)
class PretrainedWeights:
    """One set of published weights of a registered variant (timm's ``model.tag``).

    Attributes:
        model: Registered model name.
        tag: timm's pretrained tag (``ms_in1k``, ...) or mindcv's (``mindcv_in1k``, ...).
        dataset: What it was trained on, in words.
        img_size: Input side it was published at.
        window_size: Attention window it was published at.
        num_classes: Classifier width.
        pretrained_window_sizes: Per-stage windows of the weights it was fine-tuned from.
        top1: ImageNet-1k val top-1 (%) as the publisher states it; None where none is stated.
        top1_source: Where that figure is stated.
        files: Every published copy, the default one first.
    """

    model: str
    tag: str
    dataset: str
    img_size: int
    window_size: int
    num_classes: int
    pretrained_window_sizes: Tuple[int, ...]
    top1: Optional[float]
    top1_source: str
    files: Tuple[WeightFile, ...]

    @property
    def name(self) -> str:
        """timm's full name, ``model.tag``."""
        return f"{self.model}.{self.tag}"

    def file(self, source: Optional[str] = None) -> WeightFile:
        """The copy from ``source`` (the first one when None); KeyError when there is none."""
        if not source:
            return self.files[0]
        for file in self.files:
            if file.source == source:
                return file
        raise KeyError(source)


def split_spec(spec: str) -> Tuple[str, str]:
    """A ``pretrained`` spec ``[TAG | MODEL | MODEL.TAG][@SOURCE]`` as ``(weights, source)``.

    ``True@SOURCE`` (as a user extends ``--pretrained True``) is the default weights' copy at SOURCE,
    the same as ``@SOURCE``.
    """
    weights, _, source = spec.strip().partition("@")
    if source and weights.lower() == "true":
        weights = ""
    return weights, source


def _three_copies(model: str, tag: str, official_stem: str) -> Tuple[WeightFile, ...]:
    """The official file and its timm and transformers conversions (the same weights)."""
    hf_repo = "microsoft/" + official_stem.replace("_", "-")
    return (
        WeightFile("official", f"{_OFFICIAL}{official_stem}.pth", "official", f"official/{official_stem}.pth"),
        WeightFile("timm", f"{_HUB}timm/{model}.{tag}/resolve/main/model.safetensors", "timm",
                   f"timm/{model}.{tag}/model.safetensors"),
        WeightFile("hf", f"{_HUB}{hf_repo}/resolve/main/pytorch_model.bin", "hf",
                   f"hf/{hf_repo}/pytorch_model.bin"),
    )


_ZOO = SOURCES["official"][1]


def _ms_in1k(size: str, window: int, top1: float) -> PretrainedWeights:
    model = f"swinv2_{size}_window{window}_256"
    return PretrainedWeights(model, "ms_in1k", "ImageNet-1k", 256, window, 1000, (0, 0, 0, 0), top1, _ZOO,
                             _three_copies(model, "ms_in1k", f"swinv2_{size}_patch4_window{window}_256"))


def _ms_in22k(size: str) -> PretrainedWeights:
    model = f"swinv2_{size}_window12_192"
    # The zoo states no ImageNet-22k accuracy, only that of the fine-tunes below.
    return PretrainedWeights(model, "ms_in22k", "ImageNet-22k", 192, 12, 21841, (0, 0, 0, 0), None, "",
                             _three_copies(model, "ms_in22k", f"swinv2_{size}_patch4_window12_192_22k"))


def _ms_in22k_ft_in1k(size: str, window: int, img: int, top1: float) -> PretrainedWeights:
    model = f"swinv2_{size}_window12to{window}_192to{img}"
    stem = f"swinv2_{size}_patch4_window12to{window}_192to{img}_22kto1k_ft"
    return PretrainedWeights(model, "ms_in22k_ft_in1k", "ImageNet-22k, fine-tuned on ImageNet-1k", img, window, 1000,
                             (12, 12, 12, 6), top1, _ZOO, _three_copies(model, "ms_in22k_ft_in1k", stem))


_MINDCV_README = SOURCES["mindcv"][1]

PRETRAINED: Tuple[PretrainedWeights, ...] = (
    _ms_in1k("tiny", 8, 81.8),
    _ms_in1k("tiny", 16, 82.8),
    _ms_in1k("small", 8, 83.7),
    _ms_in1k("small", 16, 84.1),
    _ms_in1k("base", 8, 84.2),
    _ms_in1k("base", 16, 84.6),
    _ms_in22k("base"),
    _ms_in22k_ft_in1k("base", 16, 256, 86.2),
    _ms_in22k_ft_in1k("base", 24, 384, 87.1),
    _ms_in22k("large"),
    _ms_in22k_ft_in1k("large", 16, 256, 86.9),
    _ms_in22k_ft_in1k("large", 24, 384, 87.6),
    # mindcv's own training (mindcv's numerics: LayerNorm eps 1e-6, tanh GELU; the loader switches
    # the model to them). On Ascend 910, the file mindcv's default_cfgs load with pretrained=True:
    PretrainedWeights("swinv2_tiny_window8_256", "mindcv_in1k", "ImageNet-1k (mindcv, Ascend 910 x8)", 256, 8, 1000,
                      (0, 0, 0, 0), 81.42, _MINDCV_README,
                      (WeightFile("mindcv", "https://download.mindspore.cn/toolkits/mindcv/swinv2/"
                                            "swinv2_tiny_window8-3ef8b787.ckpt", "mindcv",
                                  "mindcv/swinv2_tiny_window8-3ef8b787.ckpt", "3ef8b787"),)),
    # ... and on Ascend 910* (910B), the file of mindcv's newer README and MindSpore Hub:
    PretrainedWeights("swinv2_tiny_window8_256", "mindcv_910v2_in1k", "ImageNet-1k (mindcv, Ascend 910* x8)", 256, 8,
                      1000, (0, 0, 0, 0), 81.38, _MINDCV_README,
                      (WeightFile("mindcv", "https://download-mindspore.osinfra.cn/toolkits/mindcv/swinv2/"
                                            "swinv2_tiny_window8-70c5e903-910v2.ckpt", "mindcv",
                                  "mindcv/swinv2_tiny_window8-70c5e903-910v2.ckpt", "70c5e903"),)),
)

# The weights ``pretrained=True`` loads for a model named without a tag: timm's default (its
# first tag) for the official/timm names ...
DEFAULT_TAGS: Dict[str, str] = {}
for _weights in PRETRAINED:
    DEFAULT_TAGS.setdefault(_weights.model, _weights.tag)
# ... and mindcv's for a model named by its mindcv alias, as mindcv's create_model does.
ALIAS_DEFAULT_TAGS: Dict[str, str] = {"swinv2_tiny_window8": "mindcv_in1k"}
