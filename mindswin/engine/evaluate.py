"""Top-1 / top-5 / loss over a (sharded, padded) evaluation dataset."""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, Optional

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn, ops

__all__ = ["EvalStep", "EvalResult", "evaluate"]


class EvalStep(nn.Cell):
    """Weighted sums of top-1 hits, top-5 hits and cross-entropy for one batch.

    Padding samples carry weight 0. Under data parallel the sums are all-reduced, so every
    rank returns the totals of the whole batch group. ``preprocess`` (e.g.
    :class:`~mindswin.data.device.DeviceNormalize` for uint8 batches) runs in front of the model.
    """

    def __init__(self, model: nn.Cell, distributed: bool = False, preprocess: Optional[nn.Cell] = None) -> None:
        super().__init__(auto_prefix=False)
        self.model = model
        self.preprocess = preprocess
        self.all_reduce = ops.AllReduce() if distributed else None

    def construct(self, images: Tensor, labels: Tensor, weights: Tensor) -> Tensor:
        if self.preprocess is not None:
            images = self.preprocess(images)
        logits = self.model(images).astype(ms.float32)
        k = min(5, logits.shape[-1])
        _, top = ops.topk(logits, k)
        hits = (top == labels.reshape(-1, 1)).astype(ms.float32)
        top1 = (hits[:, 0] * weights).sum()
        top5 = (hits.sum(axis=1) * weights).sum()
        losses = ops.cross_entropy(logits, labels, reduction="none")
        sums = ops.stack([top1, top5, (losses * weights).sum(), weights.sum()])
        if self.all_reduce is not None:
            sums = self.all_reduce(sums)
        return sums


@dataclass
class EvalResult:
    top1: float
    top5: float
    loss: float
    num_samples: int
    seconds: float
    images_per_second: float

    def as_dict(self) -> Dict[str, float]:
        return asdict(self)


def evaluate(step: EvalStep, dataset, num_batches: int, progress: bool = False) -> EvalResult:
    """Run ``step`` over ``dataset``; percentages over the weighted (real) samples."""
    step.set_train(False)
    totals = np.zeros(4, np.float64)
    start = time.perf_counter()
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=num_batches, desc="eval", leave=False)
    for images, labels, weights in dataset.create_tuple_iterator(num_epochs=1):
        totals += step(images, labels, weights).asnumpy()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start
    count = max(totals[3], 1.0)
    return EvalResult(top1=100.0 * totals[0] / count, top5=100.0 * totals[1] / count, loss=totals[2] / count,
                      num_samples=int(round(totals[3])), seconds=seconds,
                      images_per_second=totals[3] / max(seconds, 1e-9))
