"""Live curves of a run in TensorBoard's event format, written by rank 0 while it trains.

TensorBoard (or any reader of its format) shows them while the run goes: ``tensorboard
--logdir CKPT_SAVE_DIR/tensorboard``. The writer is tensorboardX's (TensorBoard itself is not
needed to write). The x axis is the global micro-batch count, ``epoch * batches_per_epoch +
batch``, which a resumed run continues; its writer purges the points a killed run wrote after
the resume state (TensorBoard drops earlier events at or past a new file's ``purge_step``),
so no step appears twice.

Tags: ``train/*`` every ``log_interval`` steps (loss, lr, loss scale, gradient norm, skipped
steps, img/s); ``epoch/*`` every epoch (the ``metrics.jsonl`` record's numeric fields,
validation metrics included); images a task draws at validation (SimMIM's reconstruction grid).
"""
from __future__ import annotations

import logging
import os
from typing import Dict, Optional

import numpy as np

__all__ = ["EventLog", "EVENTS_SUBDIR"]

_logger = logging.getLogger("mindswin.train")

EVENTS_SUBDIR = "tensorboard"


class EventLog:
    """TensorBoard events of one run (a no-op when ``directory`` is None: other ranks, or ``tensorboard: False``).

    Args:
        directory: Folder of the event files.
        first_step: The first step this process will write (the resume position + 1); the
            points an interrupted run wrote from there on are purged.
    """

    def __init__(self, directory: Optional[str], first_step: int = 1) -> None:
        self.writer = None
        if directory is None:
            return
        try:
            from tensorboardX import SummaryWriter
        except ImportError:  # a dependency in requirements.txt; an environment without it still trains
            _logger.warning("tensorboardX is not installed: no TensorBoard events (pip install tensorboardX)")
            return
        os.makedirs(directory, exist_ok=True)
        self.writer = SummaryWriter(directory, purge_step=first_step if first_step > 1 else None, flush_secs=20)

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """Write each ``tag: value`` at ``step``."""
        if self.writer is None:
            return
        for tag, value in values.items():
            self.writer.add_scalar(tag, float(value), step)

    def image(self, tag: str, step: int, image: np.ndarray) -> None:
        """Write an ``(H, W, 3)`` uint8 image at ``step``."""
        if self.writer is not None:
            self.writer.add_image(tag, np.ascontiguousarray(image), step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
