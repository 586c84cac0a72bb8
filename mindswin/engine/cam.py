"""Grad-CAM of a Swin V2 classifier: where in the image the predicted class comes from.

As mmpretrain's ``vis_cam.py`` does for Swin, on the last stage: the target is the last
stage's output map ``A`` (``forward_stages``, ``(B, h, w, C)``, before the final norm, so the
gradient runs through it), the score the predicted class's logit ``y``; each channel weighs
``mean_hw(dy/dA)`` and the map is ``relu(sum_c weight_c * A_c)``, scaled to [0, 1] per image.
(Taken after the final norm instead, the gradient is the head's row divided by ``h * w`` and
the map reduces to plain CAM.) The gradient is taken in the compiled graph
(``ops.GradOperation``). :func:`cam_on_image` brings the ``h x w`` map back to the original
image's pixels through the evaluation crop, and :func:`save_cam_picture` draws it over the
image next to the top-k classes.
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = ["GradCAM", "cam_on_image", "save_cam_picture"]


class _ClassScore(nn.Cell):
    """Sum over the batch of each image's logit for its target class, from the last stage's map."""

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, stage_map: Tensor, targets: Tensor) -> Tensor:
        return (self.model.forward_head(self.model.norm(stage_map)) * targets).sum()


class GradCAM(nn.Cell):
    """``images -> (logits, cam)``: float32 logits and ``(B, h, w)`` maps in [0, 1] for the top-1 classes.

    ``logits`` are the model's own (``forward_head(norm(forward_stages(...)))`` is its forward).
    """

    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.score = _ClassScore(model)
        self.grad = ops.GradOperation()

    def construct(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        stage_map = self.model.forward_stages(self.model.patch_embed(images), None)[0]
        logits = self.model.forward_head(self.model.norm(stage_map))
        targets = ops.one_hot(logits.argmax(-1), logits.shape[-1], Tensor(1.0, ms.float32),
                              Tensor(0.0, ms.float32))
        grads = self.grad(self.score)(stage_map, targets).astype(ms.float32)
        stage_map = stage_map.astype(ms.float32)
        cam = ops.relu((grads.mean(axis=(1, 2), keep_dims=True) * stage_map).sum(axis=-1))
        peak = cam.max(axis=(1, 2), keepdims=True)
        return logits, cam / ops.maximum(peak, 1e-12)


def cam_on_image(cam: np.ndarray, height: int, width: int, image_size: int, crop_pct: float) -> np.ndarray:
    """The ``(h, w)`` map as an ``(height, width)`` float32 map over the original image.

    Undoes the evaluation geometry (:func:`~mindswin.data.transforms.build_eval_transforms`):
    a squash-resize for ``crop_pct == 1``, else the centre crop of the resized image, outside
    of which the model saw nothing (0).
    """
    from PIL import Image

    def resized(w: int, h: int) -> np.ndarray:
        return np.asarray(Image.fromarray(cam.astype(np.float32), mode="F").resize((w, h), Image.BILINEAR))

    if crop_pct == 1.0:
        return np.clip(resized(width, height), 0.0, 1.0)
    side = image_size / int(np.floor(image_size / crop_pct)) * min(height, width)  # the crop, in original pixels
    box = max(1, int(round(side)))
    top, left = max(0, (height - box) // 2), max(0, (width - box) // 2)
    out = np.zeros((height, width), np.float32)
    patch = resized(box, box)[:height - top, :width - left]
    out[top:top + patch.shape[0], left:left + patch.shape[1]] = patch
    return np.clip(out, 0.0, 1.0)


def save_cam_picture(path: str, image: np.ndarray, cam: np.ndarray, top: Sequence[Tuple[str, float]]) -> None:
    """The image, the same with the map over it (jet, half transparent), and the top-k classes, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 4.4))
    axes[0].imshow(image)
    axes[0].set_title(os.path.basename(path).rsplit("_cam.png", 1)[0], fontsize=9)
    axes[1].imshow(image)
    axes[1].imshow(cam, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    axes[1].set_title("Grad-CAM (last stage), " + ", ".join(f"{name} {p:.3f}" for name, p in top[:1]), fontsize=9)
    for axis in axes:
        axis.axis("off")
    lines: List[str] = [f"{i + 1}. {name}  {p:.3f}" for i, (name, p) in enumerate(top)]
    figure.text(0.5, 0.02, "   ".join(lines), ha="center", fontsize=9)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    from ..fileio import atomic_write

    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=100))
    plt.close(figure)
