"""Model-only speed on this device, measured as the official ``main.py --throughput`` does.

``validate.py --throughput True --config RECIPE`` times, at the recipe's batch size (per
device) and resolution, on whatever backend is present:

* inference: the compiled forward (logits) of a fixed batch;
* a training step: the compiled step the run would use (device-side normalise/erase/mix,
  forward, backward, the gradient all-reduce under msrun, clipping, AdamW, EMA, loss scaling).

Method: compile (not timed), ``throughput_warmup`` warm-up calls, then ``throughput_steps``
timed calls queued back to back and one synchronisation at the end (``mindspore.runtime.
synchronize`` plus a read of the last output), so the figure is the device's, not the
host's per-call latency. Images per second count this device's batch: under msrun each rank
reports its own; the cluster's figure is their sum. The data pipeline is not involved
(``bench/data_bench.py`` measures it).
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from ..config import Config
from ..data import resolve_data_config
from ..data.device import DeviceAugment
from .builder import build_training, model_from_config
from .runtime import Runtime, apply_jit_config
from .tasks import AugmentedLoss
from .train_step import SoftTargetCrossEntropy

__all__ = ["Throughput", "measure_throughput", "time_calls", "as_records"]


@dataclass
class Throughput:
    """One timed mode."""

    mode: str
    batch_size: int
    image_size: int
    steps: int
    compile_seconds: float
    ms_per_step: float
    images_per_second: float

    def line(self) -> str:
        return (f"{self.mode}: {self.images_per_second:.1f} img/s, {self.ms_per_step:.2f} ms/step (batch "
                f"{self.batch_size}, {self.image_size} px, {self.steps} timed steps; compile "
                f"{self.compile_seconds:.1f} s)")


def time_calls(call: Callable[[], Sequence[Tensor]], warmup: int, steps: int) -> Dict[str, float]:
    """Compile time of the first ``call()``, then seconds of ``steps`` calls after ``warmup`` more."""
    started = time.perf_counter()
    _synchronize(call())
    compiled = time.perf_counter() - started
    outputs = None
    for _ in range(warmup):
        outputs = call()
    _synchronize(outputs)
    started = time.perf_counter()
    for _ in range(steps):
        outputs = call()
    _synchronize(outputs)
    return dict(compile_seconds=compiled, seconds=time.perf_counter() - started)


def _synchronize(outputs) -> None:
    ms.runtime.synchronize()
    if outputs is not None:
        first = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
        first.asnumpy()


class _Logits(nn.Cell):
    def __init__(self, model: nn.Cell) -> None:
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, images: Tensor) -> Tensor:
        return self.model(images)


def _training_batch(config: Config, batch: int, size: int, num_classes: int, blocks: int) -> List[Tensor]:
    """A batch in the classification pipeline's layout (``create_train_dataset`` with ``TrainAugment.device``)."""
    rng = np.random.default_rng(config.seed)
    columns = [rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
               np.zeros((batch, 7), np.int32),  # no erasing rectangle
               np.zeros((batch, 4), np.int32),  # no CutMix box
               np.tile(np.array([[1.0, 0.0]], np.float32), (batch, 1)),  # no mixup blend
               np.eye(num_classes, dtype=np.float32)[rng.integers(0, num_classes, batch)]]
    if blocks:
        columns.append(rng.random((batch, blocks, 2), dtype=np.float32))
    return [Tensor(c) for c in columns]


def measure_throughput(config: Config, runtime: Runtime) -> List[Throughput]:
    """Inference and training-step throughput of ``config``'s model at its batch size and resolution."""
    pre = resolve_data_config(config)
    batch, size = config.batch_size, pre.image_size
    num_classes = config.num_classes or 1000
    warmup, steps = config.throughput_warmup, config.throughput_steps
    results = []

    model, _ = model_from_config(config, num_classes, training=False, strict_head=True)
    model.set_train(False)
    forward = apply_jit_config(_Logits(model), config)
    images = Tensor(np.random.default_rng(config.seed).standard_normal((batch, 3, size, size)).astype(np.float32))
    timed = time_calls(lambda: forward(images), warmup, steps)
    results.append(_result("inference", batch, size, steps, timed))

    model, _ = model_from_config(config, num_classes, training=True)
    augment = DeviceAugment(pre.mean, pre.std, erasing=config.re_prob > 0, seed=config.seed, image_size=size)
    training = build_training(config, runtime, model, AugmentedLoss(augment, model, SoftTargetCrossEntropy()),
                              num_samples=batch * runtime.group_size * config.gradient_accumulation_steps)
    columns = _training_batch(config, batch, size, num_classes, model.num_blocks if config.drop_path_rate > 0 else 0)
    timed = time_calls(lambda: training.step(*columns), warmup, steps)
    results.append(_result("train", batch, size, steps, timed))
    return results


def _result(mode: str, batch: int, size: int, steps: int, timed: Dict[str, float]) -> Throughput:
    seconds = max(timed["seconds"], 1e-9)
    return Throughput(mode=mode, batch_size=batch, image_size=size, steps=steps,
                      compile_seconds=round(timed["compile_seconds"], 2), ms_per_step=round(1000 * seconds / steps, 3),
                      images_per_second=round(batch * steps / seconds, 2))


def as_records(results: Sequence[Throughput]) -> List[dict]:
    """The results as JSON-ready dicts."""
    return [asdict(r) for r in results]
