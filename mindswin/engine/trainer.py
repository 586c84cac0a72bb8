"""The training loop behind ``train.py``, the same for every task.

Order of events: set up the process -> the task scans its data -> build model, EMA twin,
optimizer and train step -> rank 0 restores the resume state and broadcasts it -> for
each epoch: train (saving mid-epoch resume states if asked), validate when due, then save
weights, best weights, resume state, metrics and curves.
"""
from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from ..config import Config, ConfigError, save_config
from ..data import DataInfo
from ..data.dataset import MINDSPORE_IPC_FILES, prepare_to_stream
from .builder import Training, build_training
from .checkpoints import CheckpointManager, find_resume_state
from .curves import plot_curves
from .events import EVENTS_SUBDIR, EventLog
from .memory_guard import check_training_fits
from .rank_watch import RankWatch
from .runtime import (
    SINK_BACKENDS,
    Runtime,
    direct_graph_dumps,
    jit_config,
    say_jit_level,
    setup_logging,
    setup_runtime,
)
from .state import RunPosition
from .tasks import Task, create_task

__all__ = ["Run", "train", "train_one_epoch", "end_epoch"]

_logger = logging.getLogger("mindswin.train")


@dataclass
class Run:
    """What the loop carries from one epoch to the next."""

    config: Config
    runtime: Runtime
    task: Task
    training: Training
    files: CheckpointManager
    position: RunPosition
    train_data: Any
    train_info: DataInfo
    events: EventLog
    first_step_done: bool = False
    unreadable_reported: int = 0
    # the train step fed by MindSpore's data sink (dataset_sink_mode on Ascend/GPU); None: fed from the host
    sinking_step: Any = None
    # the watcher that writes this rank's last line if MindSpore ends the process (distributed runs)
    watch: Optional[RankWatch] = None
    started: float = field(default_factory=time.perf_counter)

    @property
    def images_per_batch(self) -> int:
        """Images of one micro-batch over all ranks."""
        return self.config.batch_size * self.runtime.group_size

    def global_step(self, epoch: int, batches_done: int) -> int:
        """Micro-batches trained once ``batches_done`` batches of 0-based ``epoch`` are: the curves' x axis."""
        return epoch * self.training.batches_per_epoch + batches_done

    def save_resume(self) -> None:
        """Save the resume state at :attr:`position` (every rank takes part, rank 0 writes) and tell the watcher."""
        self.files.save_resume(self.training.state, self.position)
        if self.watch is not None:
            self.watch.saved(describe_resume_state(self))


def describe_resume_state(run: Run, path: Optional[str] = None) -> str:
    """Where the resume state at ``run.position`` stands, and where it is (``path``, default the run's), in words."""
    position, per_epoch = run.position, run.training.batches_per_epoch
    if position.batch_in_epoch:
        at = f"epoch {position.epoch + 1}/{run.config.epoch_size} step {position.batch_in_epoch}/{per_epoch}"
    else:
        at = f"the end of epoch {position.epoch}/{run.config.epoch_size}"
    if path is None:  # only rank 0 knows its ckpt_save_dir: each node may have its own
        where = (f"{run.files.resume_path} on rank 0's node" if run.runtime.is_main
                 else f"{os.path.basename(run.files.resume_path)} in rank 0's ckpt_save_dir")
    else:
        where = f"{path} on rank 0's node"
    return f"{at} (optimizer step {run.training.state.optimizer_step()}), {where}"


def watch_this_rank(config: Config, runtime: Runtime) -> Optional[RankWatch]:
    """A :class:`RankWatch` for a rank of a distributed run; None for one process, where Python has the last word."""
    if not runtime.distributed:
        return None
    return RankWatch(runtime.rank, os.path.join(config.ckpt_save_dir, f"log_rank{runtime.rank}.txt"),
                     leftovers=MINDSPORE_IPC_FILES.format(pid=os.getpid()))


# mindcv's periodic checkpoints: MODEL-EPOCH_STEP.ckpt; mindcv's train.py continues at EPOCH from such a ckpt_path
_MINDCV_PERIODIC = re.compile(r"-(\d+)_(\d+)\.ckpt$")


def _say_where_mindcvs_epoch_goes(config: Config, position: RunPosition) -> None:
    """mindcv resumes the epoch count from a ckpt_path's name; mindswin starts the schedule over, and says so."""
    match = _MINDCV_PERIODIC.search(os.path.basename(config.ckpt_path or ""))
    if match and position.epoch == 0 and position.batch_in_epoch == 0:
        _logger.warning("%s is named as a mindcv checkpoint of epoch %s: mindcv's train.py would continue its run "
                        "at that epoch; here its weights start a new run at epoch 1 (a mindswin run continues "
                        "with --resume auto)", config.ckpt_path, int(match[1]))


def train(config: Config) -> Dict[str, Any]:
    """Run the training described by ``config``; returns the last epoch's record."""
    runtime = setup_runtime(config)
    direct_graph_dumps(config.ckpt_save_dir)
    setup_logging(runtime, config.ckpt_save_dir)
    watch = watch_this_rank(config, runtime)
    task = create_task(config, runtime)  # the data's mistakes first: they are the user's to fix either way
    check_training_fits(config, runtime.group_size)
    model, _ = task.build_model()
    training = build_training(config, runtime, model, task.loss_network(model), task.num_samples)
    files = CheckpointManager(config.ckpt_save_dir, model.model_name, config.keep_checkpoint_max, runtime.is_main,
                              keep_best_by=task.monitor if config.ckpt_save_policy == "top_k" else None)
    position = restore(config, runtime, training, files, task.name)
    _say_where_mindcvs_epoch_goes(config, position)
    if runtime.is_main:
        save_config(config, os.path.join(config.ckpt_save_dir, "config.yaml"))
    train_data, train_info = task.train_data(position)
    first_step = position.epoch * training.batches_per_epoch + position.batch_in_epoch + 1
    events = EventLog(os.path.join(config.ckpt_save_dir, EVENTS_SUBDIR) if runtime.is_main and config.tensorboard
                      else None, first_step)
    run = Run(config, runtime, task, training, files, position, train_data, train_info, events,
              unreadable_reported=len(train_info.all_bad_files()), watch=watch)
    if watch is not None and (position.epoch or position.batch_in_epoch):
        started_from = None if config.resume == "auto" else config.resume
        watch.started_from(f"{describe_resume_state(run, started_from)} (the state this run started from)")
    _logger.info("training %s: %s, %d device(s), global batch %d, %d optimizer steps per epoch, peak lr %.3g, "
                 "amp %s", model.model_name, task.describe(), runtime.group_size, training.global_batch,
                 training.steps_per_epoch, training.peak_lr, config.amp_level)
    say_jit_level(config)
    run.sinking_step = sinking_step(config, training, train_data, train_info)

    record: Dict[str, Any] = {}
    for epoch in range(position.epoch, config.epoch_size):
        record = train_one_epoch(run, epoch)
        if (epoch + 1) % config.val_interval == 0 or epoch + 1 == config.epoch_size:
            if config.val_while_train:
                record.update(task.evaluate(training.eval_model, epoch + 1))
                training.step.set_train(True)
        end_epoch(run, record)
    events.close()

    _logger.info("done in %.1f s; checkpoints in %s", time.perf_counter() - run.started, config.ckpt_save_dir)
    if runtime.distributed:
        # every rank prints it: equal digests show the data-parallel replicas stayed in sync
        state = training.state
        print(f"rank {runtime.rank} weights sha1 {state.digest('model.')} state sha1 {state.digest()}", flush=True)
    return record


def sinking_step(config: Config, training: Training, train_data, train_info: DataInfo) -> Optional[Callable]:
    """The train step fed by MindSpore's data sink when ``dataset_sink_mode`` asks and the backend has one.

    Each call runs one step on the next batch the sink queued on the device (``sink_size``
    1): the same batches in the same order as the host loop, also after a mid-epoch resume
    (the sink streams pass after pass without end, so ``train_data``'s passes are cut from
    one stream: :func:`~mindswin.data.dataset.prepare_to_stream`), and the same per-step
    outputs for the epoch records. With ``jit_level`` O2 the whole step graph sinks too. On
    CPU, where MindSpore has no sink, the host feeds the steps, said once.
    """
    if not config.dataset_sink_mode:
        return None
    if config.device_target not in SINK_BACKENDS:
        _logger.info("dataset_sink_mode: the steps are fed from the host (MindSpore has no data sink on %s)",
                     config.device_target)
        return None
    import mindspore as ms

    _logger.info("dataset_sink_mode: batches reach the %s through MindSpore's data sink, one step per call",
                 config.device_target)
    prepare_to_stream(train_data, train_info)
    return ms.data_sink(training.step, train_data, sink_size=1, jit_config=jit_config(config))


def restore(config: Config, runtime: Runtime, training: Training, files: CheckpointManager,
            task: str) -> RunPosition:
    """Load the resume state on rank 0 and give every rank rank 0's tensors and position.

    Only rank 0 writes checkpoints, so only its disk is asked: nodes need no shared
    storage. A fresh run broadcasts too: every replica starts from rank 0's initial weights.
    """
    state = training.state
    position = RunPosition(task=task)
    if runtime.is_main:
        path = find_resume_state(config.resume, config.ckpt_save_dir)
        if path:
            position = replace(state.load(path), task=task)  # Task.check_resume_state saw it is ours
            _logger.info("resumed from %s: epoch %d, batch %d, optimizer step %d", path, position.epoch,
                         position.batch_in_epoch, state.optimizer_step())
            files.truncate_metrics(position.epoch)
    if runtime.distributed:
        position = state.broadcast(position, runtime.rank)
        # every rank prints it: a rank that started from anything else would show at once
        print(f"rank {runtime.rank} starts at epoch {position.epoch} batch {position.batch_in_epoch} "
              f"optimizer step {state.optimizer_step()}", flush=True)
    if position.batch_in_epoch >= training.batches_per_epoch:  # every rank sees rank 0's position
        raise ConfigError(f"the resume state in {config.ckpt_save_dir} stopped after batch {position.batch_in_epoch} "
                          f"of epoch {position.epoch + 1}, but this run's data gives only "
                          f"{training.batches_per_epoch} batches per epoch: the dataset, batch_size or number of "
                          "devices changed since it was saved. Resume with the same data and batch size, or start "
                          "a new run from its weights: --ckpt_path MODEL-eNNNN.ckpt --ckpt_save_dir NEW_DIR")
    return position


def train_one_epoch(run: Run, epoch: int) -> Dict[str, Any]:
    """Train ``epoch`` (0-based) from ``run.position``; returns its record (train_* fields)."""
    config, training, position = run.config, run.training, run.position
    first_batch = position.batch_in_epoch
    log = _StepLog(run, epoch, first_batch)
    losses: List[Any] = []
    finite_flags: List[Any] = []
    update_norms: List[Any] = []  # grad_norm of the micro-steps that end an accumulation (the updates)
    accumulation = config.gradient_accumulation_steps
    started = time.perf_counter()
    # One iterator per epoch: each asks the sampler for the next epoch's order (the sink keeps its own).
    iterator = run.train_data.create_tuple_iterator(num_epochs=1) if run.sinking_step is None else None
    for batch in range(first_batch, training.batches_per_epoch):
        step_started = time.perf_counter()
        outputs = run.sinking_step() if iterator is None else training.step(*next(iterator))
        loss, finite, scale, lr, grad_norm = outputs
        # kept on device: reading them every step would add a host round-trip per step
        losses.append(loss)
        finite_flags.append(finite)
        if (epoch * training.batches_per_epoch + batch + 1) % accumulation == 0:
            update_norms.append((grad_norm, finite))
        log.step(batch, loss, lr, scale, grad_norm, finite)
        if not run.first_step_done:
            loss.asnumpy()
            _logger.info("train graph compiled and first step run in %.1f s", time.perf_counter() - step_started)
            run.first_step_done = True
            log.restart_window()
        position.batch_in_epoch = batch + 1
        if config.resume_save_steps and (batch + 1) % config.resume_save_steps == 0 \
                and batch + 1 < training.batches_per_epoch:
            run.save_resume()
            run.events.flush()  # every point up to the state is on disk: a resume continues after it
    log.close()
    seconds = time.perf_counter() - started
    skipped = len(finite_flags) - int(sum(bool(f.asnumpy()) for f in finite_flags))
    if skipped:
        _logger.warning("epoch %d: %d update(s) skipped for non-finite gradients; loss scale now %g", epoch + 1,
                        skipped, float(training.step.loss_scaler.scale_value.asnumpy()))
    norms = [float(norm.asnumpy()) for norm, finite in update_norms if bool(finite.asnumpy())]
    return dict(epoch=epoch + 1, train_loss=float(np.mean([x.asnumpy() for x in losses])) if losses else None,
                lr=float(lr.asnumpy()), loss_scale=float(scale.asnumpy()),
                grad_norm=float(np.mean(norms)) if norms else None, skipped_steps=skipped,
                optimizer_step=training.state.optimizer_step(), train_seconds=round(seconds, 2),
                train_images_per_second=round(len(losses) * run.images_per_batch / max(seconds, 1e-9), 2))


def end_epoch(run: Run, record: Dict[str, Any]) -> None:
    """Save what the epoch produced: best and periodic weights, resume state, metrics, curves."""
    config, files, task, position = run.config, run.files, run.task, run.position
    epoch = record["epoch"]
    metrics = {k: v for k, v in record.items() if k.startswith("val_")}
    model = run.training.eval_model
    score = record.get(task.monitor)
    if score is not None and score > position.best:
        position.best = score
        files.save_best(model, task.metadata(epoch, metrics))
    if epoch % config.ckpt_save_interval == 0 or epoch == config.epoch_size:
        files.save_weights(model, epoch, task.metadata(epoch, metrics))
    # the epoch's points reach the disk before the state a resume would continue after
    step = run.global_step(epoch - 1, run.training.batches_per_epoch)
    run.events.scalars(step, {f"epoch/{k}": v for k, v in record.items()
                              if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch"})
    for tag, image in task.images().items():
        run.events.image(tag, step, image)
    run.events.flush()
    position.epoch, position.batch_in_epoch = epoch, 0
    run.save_resume()
    files.append_metrics(record)
    if run.runtime.is_main:
        plot_curves(files.read_metrics(), files.curves_path)
    _report_unreadable(run)
    _logger.info("epoch %d/%d: %s", epoch, config.epoch_size,
                 ", ".join(f"{k} {_short(v)}" for k, v in record.items() if k != "epoch"))


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _report_unreadable(run: Run) -> None:
    """Warn (on the rank that met them) about images that failed to decode this epoch."""
    bad = run.train_info.all_bad_files()
    if len(bad) > run.unreadable_reported:
        _logger.warning("%d more unreadable training image(s): %s", len(bad) - run.unreadable_reported,
                        ", ".join(p for p, _ in bad[run.unreadable_reported:][:10]))
        run.unreadable_reported = len(bad)


class _StepLog:
    """Progress of one epoch: a tqdm bar on a terminal, else a log line every ``log_interval`` steps.

    Values are read back from the device only at log lines (rank 0): between them a step
    costs no host round-trip, with or without the bar.
    """

    def __init__(self, run: Run, epoch: int, first_batch: int) -> None:
        self.run = run
        self.epoch = epoch
        self.total = run.training.batches_per_epoch
        remaining_epochs = run.config.epoch_size - epoch
        self.remaining = remaining_epochs * self.total - first_batch
        self.bar: Optional[Any] = None
        self.interval_flags: List[Any] = []  # finite flags since the last log line
        if run.runtime.is_main and sys.stdout.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=first_batch, dynamic_ncols=True,
                            desc=f"epoch {epoch + 1}/{run.config.epoch_size}")
        self.restart_window()

    def restart_window(self) -> None:
        """Measure speed from now on (after the compile, which is not throughput)."""
        self.window_start, self.window_images = time.perf_counter(), 0

    def step(self, batch: int, loss, lr, scale, grad_norm, finite) -> None:
        """Count a step; every ``log_interval`` steps (rank 0), read its values back: a log line and the events."""
        self.remaining -= 1
        self.window_images += self.run.images_per_batch
        self.interval_flags.append(finite)
        if self.bar is not None:
            self.bar.update(1)  # the loss and lr it shows are those of the last log line: no read per step
        if (batch + 1) % self.run.config.log_interval != 0 or not self.run.runtime.is_main:
            return
        speed = self.window_images / max(time.perf_counter() - self.window_start, 1e-9)
        values = dict(loss=float(loss.asnumpy()), lr=float(lr.asnumpy()), loss_scale=float(scale.asnumpy()),
                      grad_norm=float(grad_norm.asnumpy()),
                      skipped_steps=sum(not bool(f.asnumpy()) for f in self.interval_flags), images_per_second=speed)
        self.interval_flags = []
        self.run.events.scalars(self.run.global_step(self.epoch, batch + 1),
                                {f"train/{k}": v for k, v in values.items()})
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
        else:
            eta = self.remaining * self.run.images_per_batch / max(speed, 1e-9)
            _logger.info("epoch %d/%d step %d/%d loss %.4f lr %.3e loss_scale %g grad_norm %.4f %.1f img/s ETA %s",
                         self.epoch + 1, self.run.config.epoch_size, batch + 1, self.total, values["loss"],
                         values["lr"], values["loss_scale"], values["grad_norm"], speed,
                         time.strftime("%H:%M:%S", time.gmtime(max(eta, 0))))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
