"""The resumable state of a training run, and how it reaches every rank.

A :class:`TrainState` is the list of ``(name, Parameter)`` pairs of the train step (see
:meth:`~mindswin.engine.train_step.TrainStep.named_state`): live weights, EMA weights,
optimizer state and step, loss scale, accumulation buffers. It saves them with the run's
position (epoch, batch, best top-1) into ``resume_state.ckpt`` and loads them back by the
same names.

Under data parallel only rank 0 reads the file: :meth:`TrainState.broadcast` then copies
rank 0's tensors and position to every rank. Nodes need no shared storage, and a fresh
run starts every replica from rank 0's initial weights although each rank is seeded
differently (``seed + rank``, for its own DropPath masks and augmentations).

Under ZeRO-1 (:mod:`mindswin.engine.zero`) each rank holds one chunk of the moments; the
file still holds them at full shape: saving gathers them, loading hands each rank its chunk.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from ..checkpoint import CheckpointError
from ..checkpoint.native import META_KEY, read_meta_json, save_tensors
from .zero import Sharding

__all__ = ["RunPosition", "TrainState", "read_position"]


@dataclass
class RunPosition:
    """Where a run stands: epochs done, batches done in the current one, best monitored metric, and
    the task whose run it is (the resume state's JSON says which task wrote it)."""

    epoch: int = 0
    batch_in_epoch: int = 0
    best: float = -math.inf
    task: str = ""


def read_position(path: str) -> RunPosition:
    """The position saved in a resume state file."""
    return RunPosition(**read_meta_json(path))

_from_root = ops.MultitypeFuncGraph("from_root")


@_from_root.register("Function", "Tensor", "Tensor")
def _copy_from_root(all_reduce_sum, is_root, param):
    # CPU AllReduce takes float16/float32 only: integer and boolean state travels as
    # float32, exact for the counters it holds (< 2**24).
    value = param.astype(ms.float32)
    value = ops.select(is_root, value, ops.zeros_like(value))
    return ops.assign(param, all_reduce_sum(value).astype(param.dtype))


class _BroadcastFromRoot(nn.Cell):
    """Overwrite parameters with rank 0's values (an all-reduce of rank 0's copy and zeros)."""

    def __init__(self, params: Sequence[Parameter], rank: int) -> None:
        super().__init__(auto_prefix=False)
        self.params = ms.ParameterTuple(params)
        self.is_root = Tensor(rank == 0)
        self.all_reduce_sum = ops.AllReduce()
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_from_root, self.all_reduce_sum, self.is_root), self.params)


class TrainState:
    """Named tensors of a run, saved, loaded and broadcast by those names.

    Args:
        named: ``(name, Parameter)`` pairs; names must be unique.
        sharded: Full shapes of the entries of which this rank holds one chunk (ZeRO-1).
        sharding: The group those entries are sharded over (needed with ``sharded``).
    """

    def __init__(self, named: Sequence[Tuple[str, Parameter]], sharded: Optional[Mapping[str, Tuple[int, ...]]] = None,
                 sharding: Optional[Sharding] = None) -> None:
        names = [name for name, _ in named]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"train state names are not unique: {', '.join(duplicates[:5])}")
        if sharded and sharding is None:
            raise ValueError("sharded train state entries need the sharding they are split by")
        self.named: List[Tuple[str, Parameter]] = list(named)
        self.sharded: Dict[str, Tuple[int, ...]] = dict(sharded or {})
        self.sharding = sharding
        # rank 0's full values of the sharded entries, from load() until broadcast()
        self._loaded_full: Dict[str, np.ndarray] = {}

    def names(self) -> List[str]:
        return [name for name, _ in self.named]

    def arrays(self, prefix: str = "") -> Iterator[Tuple[str, np.ndarray]]:
        """The tensors whose names start with ``prefix``, at full shape.

        Sharded entries are gathered: with any under ``prefix``, all ranks call it together.
        """
        for name, param in self.named:
            if not name.startswith(prefix):
                continue
            if name in self.sharded:
                yield name, self.sharding.gather(param, self.sharded[name])
            else:
                yield name, param.asnumpy()

    def save(self, path: str, position: RunPosition, write: bool = True) -> None:
        """Write every tensor (full shapes) plus ``position`` (JSON) to ``path`` atomically.

        With sharded entries every rank must call it (they are gathered); ``write`` is then
        True on the one rank that writes the file.
        """
        named = [(name, Tensor(array)) for name, array in self.arrays()] if self.sharded else self.named
        if write:
            save_tensors(path, named, asdict(position))

    def load(self, path: str) -> RunPosition:
        """Restore every tensor from ``path``; returns the saved position.

        Raises:
            CheckpointError: The file is unreadable or holds another model/optimizer setup.
        """
        try:
            saved = ms.load_checkpoint(path)
        except (RuntimeError, ValueError, OSError) as exc:
            reason = str(exc).splitlines()[0].rstrip(".")
            raise CheckpointError(f"cannot read resume state {path}: {reason}; resume from an intact copy with "
                                  "--resume PATH, or start from the run's last MODEL-eNNNN.ckpt with --ckpt_path and "
                                  "a new --ckpt_save_dir") from exc
        hint = ("was it written by a run with another model, optimizer, EMA or accumulation setting? Start a new "
                "run with another --ckpt_save_dir, or resume with the config saved next to it")
        missing = [name for name in self.names() if name not in saved]
        if missing:
            raise CheckpointError(f"{path} does not match this run: missing {', '.join(missing[:5])}"
                                  f"{' ...' if len(missing) > 5 else ''} ({len(missing)} in all); {hint}")
        for name, param in self.named:
            value = saved[name]
            expected = self.sharded.get(name, tuple(param.shape))
            if tuple(value.shape) != tuple(expected):
                raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, this run expects "
                                      f"{tuple(expected)}; {hint}")
            array = value.asnumpy()
            if name in self.sharded:
                self._loaded_full[name] = array
                array = self.sharding.own_chunk(array)
            param.set_data(Tensor(array, dtype=param.dtype))
        if not isinstance(saved.get(META_KEY), str):
            raise CheckpointError(f"{path} is not a mindswin resume state (no run position in it)")
        return RunPosition(**json.loads(saved[META_KEY]))

    def broadcast(self, position: RunPosition, rank: int) -> RunPosition:
        """Give every rank rank 0's tensors and position (call on all ranks together).

        Sharded entries travel one tensor at a time, and only after a load: fresh moments
        and buffers are zeros on every rank already.
        """
        loaded = float(bool(self._loaded_full))
        carrier = Parameter(Tensor(np.array([position.epoch, position.batch_in_epoch, loaded], np.float32)),
                            name="run_position", requires_grad=False)
        _BroadcastFromRoot([param for name, param in self.named if name not in self.sharded] + [carrier], rank)()
        epoch, batch, loaded = carrier.asnumpy().tolist()
        if loaded:
            for name, param in self.named:
                if name in self.sharded:
                    chunk = self.sharding.chunk_from_root(self._loaded_full.get(name), self.sharded[name],
                                                          ms.dtype_to_nptype(param.dtype))
                    param.set_data(Tensor(chunk, dtype=param.dtype))
        self._loaded_full.clear()
        if rank == 0:
            return position
        # the best metric only matters where checkpoints are written: on rank 0
        return RunPosition(epoch=int(epoch), batch_in_epoch=int(batch), task=position.task)

    def optimizer_step(self) -> int:
        return int(dict(self.named)["optimizer.step"].asnumpy())

    def digest(self, prefix: str = "") -> str:
        """SHA-1 over the tensors (full shapes) whose names start with ``prefix`` (replicas in sync agree).

        With sharded entries under ``prefix`` it is a collective: all ranks call it together.
        """
        sha = hashlib.sha1()
        for name, array in self.arrays(prefix):
            sha.update(name.encode())
            sha.update(array.tobytes())
        return sha.hexdigest()
