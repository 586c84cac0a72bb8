"""SimMIM masked-image pre-training of a Swin V2 encoder (Xie et al., CVPR 2022).

Numerics follow the official implementation (microsoft/Swin-Transformer ``models/simmim.py``,
``SwinTransformerV2ForSimMIM`` and ``SimMIM``; the same code as microsoft/SimMIM):

* **encoder**: the patch embedding (projection + norm), then the embeddings of the masked
  patches are replaced by a learned mask token, ``x * (1 - w) + mask_token * w`` with ``w``
  the mask; every patch, masked or not, goes through all stages and the final norm;
* **decoder**: a 1x1 convolution to ``encoder_stride**2 * 3`` channels and a pixel shuffle
  by ``encoder_stride``, the encoder's total downsampling (32 for the 4-stage patch-4 models);
* **loss**: ``L1(target, reconstruction)`` on the masked pixels only (the token mask
  repeated over each patch's pixels), ``sum / (masked pixels + 1e-5) / in_chans``; the
  target is the input, or with ``norm_target_patch_size`` the input normalised by the mean
  and variance of its ``k x k`` neighbourhood (the official ``NORM_TARGET`` of the Swin V2
  recipe, ``k = 47``).

Parameter names are the official checkpoint's: ``encoder.*`` (the Swin V2 names),
``encoder.mask_token`` ``(1, 1, embed_dim)``, ``decoder.0.weight`` ``(stride**2 * 3, C, 1, 1)``
and ``decoder.0.bias``. Feature maps stay NHWC; the decoder's 1x1 convolution is one matmul.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Set, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from .layers import Linear, expand_to, trunc_normal
from .registry import build_model_with_cfg, geometry_overrides
from .swin_v2 import SwinTransformerV2, whole_maps_problem

__all__ = ["SwinTransformerV2ForSimMIM", "PointwiseConv", "PixelShuffle", "LocalTargetNorm", "SimMIM",
           "build_simmim", "masked_l1_loss", "upsample_mask"]

# Added to the masked-pixel count before dividing, as the official loss does.
MASK_SUM_EPS = 1e-5
# Added to the local variance of the normalised target (official norm_targets).
TARGET_VAR_EPS = 1e-6


class SwinTransformerV2ForSimMIM(SwinTransformerV2):
    """Swin V2 encoder whose masked patch embeddings are replaced by a learned token.

    Built like :class:`SwinTransformerV2` with ``num_classes=0`` (the final norm, no head).
    ``construct(x, mask)`` returns the normalised last-stage map; with an all-zero mask it
    is exactly :meth:`SwinTransformerV2.forward_features` of the same weights.
    """

    def __init__(self, **kwargs: Any) -> None:
        if kwargs.get("num_classes", 0) != 0 or kwargs.get("features_only"):
            raise ValueError("the SimMIM encoder has no classifier and no feature pyramid: build it with "
                             "num_classes=0 and features_only=False")
        super().__init__(**{**kwargs, "num_classes": 0})
        # official: trunc_normal_(mask_token, mean=0, std=.02), truncated at +-2 (absolute)
        self.mask_token = Parameter(Tensor(trunc_normal((1, 1, self.embed_dim), std=0.02)), name="mask_token")

    def no_weight_decay(self) -> Set[str]:
        """The classifier's no-decay names plus the mask token (official ``no_weight_decay``)."""
        return super().no_weight_decay() | {self.mask_token.name}

    def embed_masked(self, x: Tensor, mask: Tensor) -> Tensor:
        """Patch embeddings ``(B, H/p, W/p, C)`` with the masked ones replaced by the mask token.

        Args:
            x: ``(B, in_chans, H, W)`` images.
            mask: ``(B, H/p, W/p)``, 1 where a patch is masked, 0 where it is visible.
        """
        x = self.patch_embed(x)
        w = expand_to(mask.astype(x.dtype).reshape(mask.shape + (1,)), x)
        token = expand_to(self.mask_token.reshape(1, 1, 1, self.embed_dim).astype(x.dtype), x)
        return x * (1.0 - w) + token * w

    def construct(self, x: Tensor, mask: Tensor, path_noise: Optional[Tensor] = None) -> Tensor:
        """Normalised ``(B, H/s, W/s, num_features)`` map of the masked images (NHWC).

        ``path_noise``: stochastic-depth uniforms, as in :meth:`SwinTransformerV2.forward_stages`.
        """
        return self.norm(self.forward_stages(self.embed_masked(x, mask), path_noise)[0])


class PointwiseConv(Linear):
    """``Conv2d(in, out, kernel_size=1)`` on NHWC maps, computed as one matmul.

    Holds the convolution's parameters as PyTorch lays them out (weight ``(out, in, 1, 1)``,
    bias ``(out,)``) with PyTorch's default init ``U(-1/sqrt(in), 1/sqrt(in))``; being a
    :class:`Linear`, it runs in the model's AMP compute dtype.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features, bias=True)
        bound = 1.0 / math.sqrt(in_features)
        rng = np.random.default_rng(np.random.randint(0, 2**31 - 1))
        self.weight = Parameter(Tensor(rng.uniform(-bound, bound, (out_features, in_features, 1, 1))
                                       .astype(np.float32)), name="weight")
        self.bias = Parameter(Tensor(rng.uniform(-bound, bound, (out_features,)).astype(np.float32)), name="bias")

    def construct(self, x: Tensor) -> Tensor:
        return self._project(x, self.weight.reshape(self.out_features, self.in_features), self.bias)


class PixelShuffle(nn.Cell):
    """``torch.nn.PixelShuffle(r)`` from an NHWC map to an NCHW image.

    Input channel ``c * r * r + i * r + j`` of position ``(h, w)`` becomes pixel
    ``(h * r + i, w * r + j)`` of output channel ``c``.
    """

    def __init__(self, upscale: int, channels: int = 3) -> None:
        super().__init__()
        self.upscale = upscale
        self.channels = channels

    def construct(self, x: Tensor) -> Tensor:
        b, h, w, _ = x.shape
        r = self.upscale
        x = x.reshape(b, h, w, self.channels, r, r).transpose(0, 3, 1, 4, 2, 5)
        return x.reshape(b, self.channels, h * r, w * r)


def _box_matrix(size: int, kernel: int) -> np.ndarray:
    """``(size, size)`` 0/1 matrix summing the ``kernel`` neighbours of each position (zero padded)."""
    index = np.arange(size)
    return (np.abs(index[:, None] - index[None, :]) <= kernel // 2).astype(np.float32)


class LocalTargetNorm(nn.Cell):
    """Normalise each pixel by the mean and variance of its ``kernel x kernel`` neighbourhood.

    The official ``norm_targets``: ``avg_pool2d(stride 1, padding kernel // 2,
    count_include_pad=False)`` of the pixels and their squares, the variance's unbiased
    correction ``n / (n - 1)`` with ``n`` the valid pixels of the window, clamped at 0, then
    ``(x - mean) / sqrt(var + 1e-6)``. Window sums are two matmuls with constant 0/1 band
    matrices (exact sums of at most ``kernel`` terms, on any backend), in float32.

    Args:
        image_size: Input (height, width).
        kernel: Odd window side (47 in the official Swin V2 recipe).
    """

    def __init__(self, image_size: Tuple[int, int], kernel: int) -> None:
        super().__init__()
        if kernel < 3 or kernel % 2 == 0:
            raise ValueError(f"the target-normalisation window must be odd and >= 3, got {kernel}")
        self.kernel = kernel
        rows, cols = _box_matrix(image_size[0], kernel), _box_matrix(image_size[1], kernel)
        self.rows = Tensor(rows)
        self.cols = Tensor(cols)
        count = rows.sum(axis=1)[:, None] * cols.sum(axis=0)[None, :]
        self.inverse_count = Tensor((1.0 / count).astype(np.float32))
        self.unbiased = Tensor((count / (count - 1.0)).astype(np.float32))

    def _window_mean(self, x: Tensor) -> Tensor:
        return ops.matmul(self.rows, ops.matmul(x, self.cols)) * self.inverse_count

    def construct(self, x: Tensor) -> Tensor:
        x = x.astype(ms.float32)
        mean = self._window_mean(x)
        var = (self._window_mean(x * x) - mean * mean) * self.unbiased
        var = ops.maximum(var, 0.0)
        return (x - mean) / ops.sqrt(var + TARGET_VAR_EPS)


def upsample_mask(mask: Tensor, patch_size: int) -> Tensor:
    """``(B, h, w)`` patch mask -> ``(B, 1, h * p, w * p)`` pixel mask (official ``repeat_interleave``)."""
    b, h, w = mask.shape
    pixels = ops.broadcast_to(mask.reshape(b, h, 1, w, 1), (b, h, patch_size, w, patch_size))
    return pixels.reshape(b, 1, h * patch_size, w * patch_size)


def masked_l1_loss(target: Tensor, reconstruction: Tensor, mask: Tensor, patch_size: int) -> Tensor:
    """The official SimMIM loss: ``sum(|target - rec| * pixel mask) / (pixel mask sum + 1e-5) / channels``.

    Args:
        target: ``(B, C, H, W)`` float32.
        reconstruction: ``(B, C, H, W)`` float32.
        mask: ``(B, H/p, W/p)`` patch mask, 1 where masked.
        patch_size: ``p``.
    """
    pixel_mask = upsample_mask(mask.astype(ms.float32), patch_size)
    loss_recon = ops.abs(target - reconstruction)
    return (loss_recon * pixel_mask).sum() / (pixel_mask.sum() + MASK_SUM_EPS) / target.shape[1]


class SimMIM(nn.Cell):
    """Encoder + linear pixel decoder + masked L1 loss.

    Args:
        encoder: A :class:`SwinTransformerV2ForSimMIM`.
        norm_target_patch_size: Window of the local target normalisation; 0 for raw pixels.

    ``construct(images, mask)`` returns the scalar loss (float32), as the official model's
    ``forward`` does, so it is the task's loss network as it stands.
    """

    def __init__(self, encoder: SwinTransformerV2ForSimMIM, norm_target_patch_size: int = 0) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch_size = encoder.patch_embed.patch_size
        self.in_chans = encoder.in_chans
        self.img_size = encoder.img_size
        self.encoder_stride = self.patch_size * 2 ** (encoder.num_stages - 1)
        problem = whole_maps_problem(self.img_size, self.patch_size, encoder.num_stages)
        if problem:
            raise ValueError(f"img_size {self.img_size}: SimMIM's decoder reconstructs the image from the last map "
                             f"by a pixel shuffle of {self.encoder_stride}, and {problem}")
        self.decoder = nn.SequentialCell([PointwiseConv(encoder.num_features, self.encoder_stride ** 2 * self.in_chans),
                                          PixelShuffle(self.encoder_stride, self.in_chans)])
        self.norm_target_patch_size = norm_target_patch_size
        self.target_norm = LocalTargetNorm(self.img_size, norm_target_patch_size) if norm_target_patch_size else None
        self.model_name = "simmim"

    @property
    def mask_token(self) -> Parameter:
        return self.encoder.mask_token

    @property
    def num_classes(self) -> int:
        return 0

    def no_weight_decay(self) -> Set[str]:
        """The encoder's no-decay names (biases, norms, CPB MLP, logit scales, mask token) and the
        decoder bias; the decoder weight decays, as in the official pre-training optimizer."""
        return self.encoder.no_weight_decay() | {p.name for p in self.decoder.get_parameters() if p.ndim <= 1}

    def reconstruct(self, x: Tensor, mask: Tensor, path_noise: Optional[Tensor] = None) -> Tensor:
        """``(B, in_chans, H, W)`` float32 reconstruction of the (target-space) image."""
        return self.decoder(self.encoder(x, mask, path_noise)).astype(ms.float32)

    def target(self, x: Tensor) -> Tensor:
        """What the decoder reconstructs: the image, or its locally normalised version."""
        x = x.astype(ms.float32)
        return x if self.target_norm is None else self.target_norm(x)

    def masked_error(self, x: Tensor, mask: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Per-image sum of ``|target - reconstruction|`` over the masked pixels, per-image masked
        pixel count, and the reconstruction (validation sums these over a whole split)."""
        x_rec = self.reconstruct(x, mask)
        pixel_mask = upsample_mask(mask.astype(ms.float32), self.patch_size)
        error = (ops.abs(self.target(x) - x_rec) * pixel_mask).sum(axis=(1, 2, 3))
        return error, pixel_mask.sum(axis=(1, 2, 3)), x_rec

    def construct(self, x: Tensor, mask: Tensor, path_noise: Optional[Tensor] = None) -> Tensor:
        return masked_l1_loss(self.target(x), self.reconstruct(x, mask, path_noise), mask, self.patch_size)


def build_simmim(name: str, *, img_size: Optional[Any] = None, window_size: Optional[Any] = None,
                 pretrained_window_sizes: Optional[Sequence[Any]] = None, drop_path_rate: float = 0.0,
                 norm_target_patch_size: int = 0, **kwargs: Any) -> SimMIM:
    """SimMIM around the encoder of a registered Swin V2 variant (no weights loaded).

    Args:
        name: Registered model name or mindcv alias (see :func:`mindswin.list_models`).
        img_size: Input side; the variant's if None.
        window_size: Attention window; the variant's if None.
        pretrained_window_sizes: Per-stage windows of weights to be loaded; the variant's if None.
        drop_path_rate: Stochastic depth of the encoder.
        norm_target_patch_size: Local target normalisation window (0: raw pixel targets).
        **kwargs: Further :class:`SwinTransformerV2` arguments (``recompute``, ``reuse_blocks``...).

    Returns:
        The model, training mode off; ``model_name`` is ``simmim_{name}`` and
        ``encoder.model_name`` the registered name.
    """
    encoder = build_model_with_cfg(SwinTransformerV2ForSimMIM, name,
                                   **geometry_overrides(None, img_size, window_size, pretrained_window_sizes),
                                   **kwargs, num_classes=0, drop_path_rate=drop_path_rate)
    model = SimMIM(encoder, norm_target_patch_size=norm_target_patch_size)
    model.model_name = f"simmim_{encoder.model_name}"
    model.set_train(False)
    return model
