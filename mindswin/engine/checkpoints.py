"""Checkpoints of a training run: weights (last-k + best), resume state, metrics, curves.

Layout of ``ckpt_save_dir``::

    config.yaml                  resolved configuration
    {model}-e{epoch:04d}.ckpt    weights only, the last ``keep_checkpoint_max`` kept
    {model}-best.ckpt            weights with the best val top-1
    resume_state.ckpt            weights + AdamW moments + step + loss scale + EMA + position
    metrics.jsonl                one JSON line per epoch
    curves.png                   loss / accuracy / lr per epoch (see curves.py)

Every file is written to a temporary name and renamed, so a kill at any moment leaves the
previous version intact.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional

from ..checkpoint import CheckpointMetadata, read_metadata, save_checkpoint
from ..fileio import append_line, atomic_write
from .state import RunPosition, TrainState

__all__ = ["RESUME_FILE", "CheckpointManager", "find_resume_state"]

_logger = logging.getLogger(__name__)

RESUME_FILE = "resume_state.ckpt"


def find_resume_state(resume: str, save_dir: str) -> Optional[str]:
    """Path of the state to resume from: ``'auto'`` looks in ``save_dir``; '' means none."""
    if not resume:
        return None
    if resume == "auto":
        path = os.path.join(save_dir, RESUME_FILE)
        if os.path.exists(path):
            return path
        _logger.info("resume auto: no %s in %s, starting a new run", RESUME_FILE, save_dir)
        return None
    if not os.path.exists(resume):
        raise FileNotFoundError(f"resume state not found: {resume} (use --resume auto to pick up "
                                f"{os.path.join(save_dir, RESUME_FILE)} when it exists)")
    return resume


class CheckpointManager:
    """Writes the files of one run (on the main rank only).

    Args:
        save_dir: ``ckpt_save_dir``.
        model_name: Prefix of weight files.
        keep_max: Number of per-epoch weight files kept.
        is_main: Whether this process writes files.
        keep_best_by: None keeps the ``keep_max`` latest files (mindcv's ``latest_k``); a
            metric name (``val_top1``) keeps the ``keep_max`` files with the highest value of it
            in their metadata, the later of equal ones (mindcv's ``top_k``). Files without the
            metric (epochs without validation) rank lowest.
    """

    def __init__(self, save_dir: str, model_name: str, keep_max: int, is_main: bool = True,
                 keep_best_by: Optional[str] = None) -> None:
        self.save_dir = save_dir
        self.model_name = model_name
        self.keep_max = keep_max
        self.is_main = is_main
        self.keep_best_by = keep_best_by
        if is_main:
            os.makedirs(save_dir, exist_ok=True)

    @property
    def best_path(self) -> str:
        return os.path.join(self.save_dir, f"{self.model_name}-best.ckpt")

    @property
    def resume_path(self) -> str:
        return os.path.join(self.save_dir, RESUME_FILE)

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.save_dir, "metrics.jsonl")

    def epoch_checkpoints(self) -> List[str]:
        return sorted(glob.glob(os.path.join(self.save_dir, f"{self.model_name}-e[0-9]*.ckpt")))

    @property
    def curves_path(self) -> str:
        return os.path.join(self.save_dir, "curves.png")

    def save_weights(self, model, epoch: int, metadata: CheckpointMetadata) -> Optional[str]:
        """Save ``{model}-e{epoch}.ckpt`` and delete the oldest beyond ``keep_max``."""
        if not self.is_main:
            return None
        path = os.path.join(self.save_dir, f"{self.model_name}-e{epoch:04d}.ckpt")
        save_checkpoint(model, path, metadata)
        for old in self._ranked(self.epoch_checkpoints())[:-self.keep_max]:
            os.remove(old)
        return path

    def _ranked(self, paths: List[str]) -> List[str]:
        """``paths`` (oldest first) from the first to drop to the last: by age, or by the kept metric."""
        if self.keep_best_by is None:
            return paths

        def score(path: str) -> float:
            value = read_metadata(path).metrics.get(self.keep_best_by)
            return float("-inf") if value is None else float(value)

        return sorted(paths, key=score)  # stable: of equal scores the older is dropped first

    def save_best(self, model, metadata: CheckpointMetadata) -> None:
        if self.is_main:
            save_checkpoint(model, self.best_path, metadata)

    def save_resume(self, state: TrainState, position: RunPosition) -> None:
        """Save every tensor of the run's state plus ``position`` (epoch, batch, best top-1).

        Called on every rank: a sharded (ZeRO-1) state is gathered first; rank 0 writes.
        """
        state.save(self.resume_path, position, write=self.is_main)

    def append_metrics(self, record: Dict[str, Any]) -> None:
        if self.is_main:
            append_line(self.metrics_path, json.dumps(record))

    def truncate_metrics(self, epochs_done: int) -> None:
        """Drop the lines of epochs after ``epochs_done`` (a resumed run redoes them)."""
        records = [r for r in self.read_metrics() if r["epoch"] <= epochs_done]

        def write(tmp: str) -> None:
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in records)

        atomic_write(self.metrics_path, write)

    def read_metrics(self) -> List[Dict[str, Any]]:
        if not os.path.exists(self.metrics_path):
            return []
        with open(self.metrics_path) as f:
            return [json.loads(line) for line in f if line.strip()]
