"""Run under msrun with 2 workers: what must differ between ranks, and what must not.

Prints one line per rank: ``RANK_CHECKS {json}`` with
* digests of the initial weights before and after the start-of-run broadcast;
* a digest of one training-mode forward (DropPath masks) on an input shared by all ranks;
* a digest of the first augmented batch drawn from the same files in the same order (keyed
  on seed, epoch and sample, so equal on every rank);
* for three train steps, where rank 1 alone gets a non-finite gradient in step 2 (as a
  device-local overflow status would report): each step's finite flag and loss scale,
  and a digest of the whole train state after them; the model's part again under
  ``native_ops``, built with the fused CPU kernels off (MindSpore's own ops, as on Ascend/GPU);
* ZeRO-1's clipping of gradient chunks held by different ranks: the largest relative
  error against the float64 global-norm clip of all ranks' chunks together;
* every optimizer sharded (ZeRO-1) against itself unsharded, three steps with the second
  masked: the largest difference of the parameters, in float32 roundings of their move
  and value.

Usage: msrun ... rank_checks.py DATA_DIR SEED
"""
import hashlib
import json
import os
import sys

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from mindswin import create_model
from mindswin.config import load_config
from mindswin.data import Mixup, create_train_dataset, scan_split
from mindswin.data.transforms import TrainAugment
from mindswin.engine.optim import AdamW, create_optimizer
from mindswin.engine.runtime import setup_runtime
from mindswin.engine.state import RunPosition, TrainState
from mindswin.engine.train_step import TrainStep
from mindswin.engine.zero import Sharding, sharded_clip_by_global_norm
from mindswin.models.kernel_library import cpu_kernels


class StepWithFaultyRank(TrainStep):
    """TrainStep whose reduced gradients can be poisoned on this rank alone."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.poison = Parameter(Tensor(1.0, ms.float32), name="poison", requires_grad=False)

    def _reduce_gradients(self, grads):
        grads = self.reducer(grads)
        return (grads[0] * self.poison,) + grads[1:]


class ShardedClip(nn.Cell):
    def __init__(self, clip: float) -> None:
        super().__init__()
        self.clip = clip
        self.all_reduce_sum = ops.AllReduce()
        self.hyper_map = ops.HyperMap()

    def construct(self, chunks):
        return sharded_clip_by_global_norm(chunks, self.clip, self.all_reduce_sum, self.hyper_map)


def sharded_clip_error(rank: int, group_size: int) -> float:
    """Largest relative error of the sharded clip (float32, all-reduced norm) against float64."""
    shared = np.random.default_rng(123)
    all_chunks = [[shared.standard_normal(n).astype(np.float32) for n in (7, 3, 10)] for _ in range(group_size)]
    norm = np.sqrt(sum(float((c.astype(np.float64) ** 2).sum()) for chunks in all_chunks for c in chunks))
    clip = norm / 4  # clipping acts: every gradient is scaled by 1/4
    clipped = ShardedClip(clip)(tuple(Tensor(c) for c in all_chunks[rank]))
    return max(float(np.max(np.abs(out.asnumpy() - c * (clip / norm)) / np.abs(c * (clip / norm))))
               for out, c in zip(clipped, all_chunks[rank]))


class Stepper(nn.Cell):
    def __init__(self, optimizer) -> None:
        super().__init__()
        self.optimizer = optimizer

    def construct(self, grads, lr, apply):
        return self.optimizer(grads, lr, apply)


def sharded_optimizer_errors(rank: int, group_size: int) -> dict:
    """Per optimizer after 3 steps (the 2nd masked): max |sharded - unsharded| over the float32 rounding of the
    largest move plus the parameter's own spacing."""
    shapes = [(7,), (3, 5), (1,), (2, 2, 3)]  # odd sizes: the last chunks are padded
    shared = np.random.default_rng(5)
    start = [shared.standard_normal(shape).astype(np.float32) for shape in shapes]
    grads = [[shared.standard_normal(shape).astype(np.float32) for shape in shapes] for _ in range(3)]
    sharding = Sharding(rank, group_size)
    errors = {}
    for opt in ("adamw", "adam", "sgd", "lamb", "lion"):
        runs = []
        for shard in (None, sharding):
            params = [Parameter(Tensor(value), name=f"p{i}") for i, value in enumerate(start)]
            optimizer = create_optimizer(opt, params, weight_decay=0.05, no_decay={"p2"}, nesterov=True,
                                         sharding=shard)
            stepper = Stepper(optimizer)
            for index, step_grads in enumerate(grads):
                fed = step_grads if shard is None else [shard.own_chunk(g) for g in step_grads]
                stepper(tuple(Tensor(g) for g in fed), Tensor(0.01, ms.float32), Tensor(index != 1))
            runs.append([p.asnumpy() for p in params])
        moved = max(float(np.abs(p - s).max()) for p, s in zip(runs[0], start))
        errors[opt] = max(float((np.abs(a - b) / (2.0 ** -24 * moved + np.spacing(np.abs(b)))).max())
                          for a, b in zip(*runs))
    return errors


def digest(arrays) -> str:
    sha = hashlib.sha1()
    for array in arrays:
        sha.update(np.ascontiguousarray(array).tobytes())
    return sha.hexdigest()[:16]


def training_checks(rank: int, kernels: bool) -> dict:
    """Initial weights, DropPath and three train steps (rank 1's second poisoned) of a model built with the fused
    CPU kernels on or off."""
    with cpu_kernels(kernels):
        model = create_model("swinv2_micro_window4_32", num_classes=4, drop_path_rate=0.5)
    optimizer = AdamW(model.trainable_params(), 0.05, model.no_weight_decay())
    scaler = ms.amp.DynamicLossScaler(2.0 ** 10, 2, 1000)
    step = StepWithFaultyRank(model, optimizer, Tensor(np.full(10, 1e-3, np.float32)), scaler, clip_value=5.0,
                              distributed=True)
    state = TrainState(step.named_state())
    report = dict(init_local=digest(p.asnumpy() for p in model.get_parameters()))
    state.broadcast(RunPosition(), rank)
    report["init_synced"] = digest(p.asnumpy() for p in model.get_parameters())

    # Res-post-norm branches start at zero (norm weights 0), so dropping one would change
    # nothing: give every rank the same non-trivial weights first.
    shared = np.random.default_rng(0)
    for param in model.trainable_params():
        param.set_data(Tensor(0.1 * shared.standard_normal(param.shape), param.dtype))
    images = Tensor(shared.standard_normal((4, 3, 32, 32)).astype(np.float32))
    targets = Tensor(np.eye(4, dtype=np.float32)[shared.integers(0, 4, 4)])
    model.set_train(True)
    report["drop_path"] = digest([model(images).asnumpy()])

    step.set_train(True)
    report["finite"], report["loss_scale"] = [], []
    for index in range(3):
        poisoned = index == 1 and rank == 1
        step.poison.set_data(Tensor(float("inf") if poisoned else 1.0, ms.float32))
        _, finite, _, _, _ = step(images, targets)
        report["finite"].append(bool(finite.asnumpy()))
        report["loss_scale"].append(float(scaler.scale_value.asnumpy()))
    report["optimizer_step"] = state.optimizer_step()
    report["final_state"] = state.digest()
    return report


def main(data_dir: str, seed: int) -> None:
    config = load_config(overrides=dict(distribute=True, seed=seed))
    runtime = setup_runtime(config)
    # the kernels switch applies when a model is built: both paths in one launch
    report = dict(rank=runtime.rank, **training_checks(runtime.rank, kernels=True))
    report["native_ops"] = training_checks(runtime.rank, kernels=False)

    index = scan_split(os.path.join(data_dir, "train"))
    mixer = Mixup(mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0, num_classes=len(index.class_names))
    dataset, _ = create_train_dataset(index, TrainAugment(32, seed=seed), mixer, 8, seed=seed, num_workers=1)
    first_batch, _ = next(dataset.create_tuple_iterator(num_epochs=1))
    report["augment"] = digest([first_batch.asnumpy()])

    report["sharded_clip_error"] = sharded_clip_error(runtime.rank, runtime.group_size)
    report["sharded_optimizer_errors"] = sharded_optimizer_errors(runtime.rank, runtime.group_size)
    print("RANK_CHECKS " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
