"""Checkpoints of a training run: weights (last-k + best), resume state, metrics, curves.

Layout of ``ckpt_save_dir``::

    config.yaml                  resolved configuration
    {model}-e{epoch:04d}.ckpt    weights only, the last ``keep_checkpoint_max`` kept
    {model}-best.ckpt            weights with the best val top-1
    resume_state.ckpt            weights + AdamW moments + step + loss scale + EMA + position
    metrics.jsonl                one JSON line per epoch
    curves.png                   loss / accuracy / lr per epoch

Every file is written to a temporary name and renamed, so a kill at any moment leaves the
previous version intact.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional

from ..checkpoint.native import save_checkpoint
from ..fileio import append_line, atomic_write
from .state import TrainState

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
    """

    def __init__(self, save_dir: str, model_name: str, keep_max: int, is_main: bool = True) -> None:
        self.save_dir = save_dir
        self.model_name = model_name
        self.keep_max = keep_max
        self.is_main = is_main
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

    def save_weights(self, model, epoch: int, metadata: Dict[str, Any]) -> Optional[str]:
        """Save ``{model}-e{epoch}.ckpt`` and delete the oldest beyond ``keep_max``."""
        if not self.is_main:
            return None
        path = os.path.join(self.save_dir, f"{self.model_name}-e{epoch:04d}.ckpt")
        save_checkpoint(model, path, metadata)
        for old in self.epoch_checkpoints()[:-self.keep_max]:
            os.remove(old)
        return path

    def save_best(self, model, metadata: Dict[str, Any]) -> None:
        if self.is_main:
            save_checkpoint(model, self.best_path, metadata)

    def save_resume(self, state: TrainState, position: Dict[str, Any]) -> None:
        """Save every tensor of the run's state plus ``position`` (epoch, batch, best top-1)."""
        if self.is_main:
            state.save(self.resume_path, position)

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

    def plot_curves(self) -> None:
        """Redraw ``curves.png`` from ``metrics.jsonl``."""
        if not self.is_main:
            return
        records = self.read_metrics()
        if not records:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        epochs = [r["epoch"] for r in records]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        axes[0].plot(epochs, [r["train_loss"] for r in records], "o-", label="train")
        if any("val_loss" in r for r in records):
            axes[0].plot([r["epoch"] for r in records if "val_loss" in r],
                         [r["val_loss"] for r in records if "val_loss" in r], "o-", label="val")
        axes[0].set_title("loss")
        axes[0].legend()
        val = [r for r in records if "val_top1" in r]
        if val:
            axes[1].plot([r["epoch"] for r in val], [r["val_top1"] for r in val], "o-", label="top-1")
            axes[1].plot([r["epoch"] for r in val], [r["val_top5"] for r in val], "o-", label="top-5")
            axes[1].legend()
        axes[1].set_title("val accuracy (%)")
        axes[2].plot(epochs, [r["lr"] for r in records], "o-")
        axes[2].set_title("learning rate (end of epoch)")
        for ax in axes:
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
        fig.tight_layout()
        atomic_write(os.path.join(self.save_dir, "curves.png"), lambda tmp: fig.savefig(tmp, format="png", dpi=90))
        plt.close(fig)
