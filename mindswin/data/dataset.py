"""ImageFolder datasets on ``mindspore.dataset`` for training and evaluation.

Pipeline (training; evaluation decodes, resizes and crops in one stage of worker threads):

1. source (main process): the sampler's sample keys, nothing else (:class:`SampleKeys`).
2. worker processes (``python_multiprocessing``), one stage per key, so everything per image
   scales with cores: read and decode the file with Pillow (any mode to RGB,
   :class:`ImageSource`), then the Python transform (:class:`~mindswin.data.transforms.TrainAugment`:
   RandomResizedCrop, flip, RandAugment, the erasing rectangle). A damaged file raises an
   exception that can be caught: it is replaced by the next readable sample, and the main
   process names it (:class:`UnreadableFiles`, ``DataInfo.all_bad_files``, a warning).
   MindSpore's C++ ``vision.Decode`` is not used: some damaged JPEGs kill it with a signal.
   Every random number of a sample comes from ``(seed, key)``, the key being
   ``epoch * num_samples + index`` as the sampler yields it: workers never share a
   generator, and a run repeats exactly from its seed whatever the number of workers (and a
   resumed run draws what the uninterrupted one drew).
3. batch (main process): mixup/CutMix parameters drawn from ``(seed, the batch's keys)`` and
   the soft targets (label smoothing folded in).

With an augmentation that leaves the pixels to the device (``TrainAugment.device``) the batch
is ``(image (B, S, S, 3) uint8, erase (B, 7) int32, cutbox (B, 4) int32, blend (B, 2) float32,
label (B, K) float32[, path_noise (B, blocks, 2) float32])`` and
:class:`~mindswin.data.device.DeviceAugment` normalises, erases and mixes in the graph;
otherwise the host does it and the batch is ``(image (B, 3, S, S) float32, label)`` as before.

* Training: a seeded per-epoch permutation, sharded like ``DistributedSampler`` (every
  rank the same number of samples), batched with ``drop_remainder``.
* Evaluation: samples ``i, i + num_shards, ...`` per shard, padded with zero-weight copies
  to whole batches of the same count on every shard, so every sample is counted exactly
  once and every batch has the same static shape: ``(image, label, weight)``.
"""
from __future__ import annotations

import atexit
import functools
import glob
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import mindspore.dataset as ds
import numpy as np

from .folder import UNREADABLE, DataError, FolderIndex, decode_rgb, scan_split, unreadable_reason
from .mixup import Mixup
from .preprocess import Preprocessing
from .transforms import TrainAugment

__all__ = ["DataInfo", "EpochShardSampler", "ImageSource", "UnreadableFiles", "SampleKeys", "DecodeAndAugment",
           "DecodeAndPreprocess", "decoded_samples", "eval_samples", "Shard", "StartPoint",
           "create_train_dataset", "create_eval_dataset", "eval_shard_indices", "path_noise", "batch_path_noise",
           "collect_keys", "keyed_training_samples", "prepare_to_stream", "scan_data_split"]

_logger = logging.getLogger(__name__)


@dataclass
class DataInfo:
    """What a created dataset holds."""

    class_names: List[str]
    num_samples: int
    batches_per_epoch: int
    batch_size: int
    bad_files: List[Tuple[str, str]] = field(default_factory=list)
    unreadable: Optional[UnreadableFiles] = None  # files that failed to decode in the pipeline
    # the training order (keyed_training_samples); None for evaluation
    sampler: Optional[EpochShardSampler] = None

    def all_bad_files(self) -> List[Tuple[str, str]]:
        """Files skipped at scan time plus those that failed to decode since."""
        return self.bad_files + (self.unreadable.bad_files if self.unreadable is not None else [])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


class ImageSource:
    """Sample ``key % len(samples)`` as ``(HWC uint8 RGB, label, skipped)``, decoded with Pillow.

    Called in the training pipeline's worker processes, so decoding runs on every core: the main
    process only deals keys, gathers the workers' results and batches them. Pillow is used,
    not MindSpore's C++ ``vision.Decode``, because it raises an exception on a damaged file
    where ``vision.Decode`` kills the process (SIGSEGV/SIGFPE) on some JPEGs with damaged
    header tables. A file that cannot be decoded is replaced by the next readable sample;
    ``skipped`` counts the files passed over, and :class:`UnreadableFiles` names them in the
    main process (a worker process's own record would never reach it).

    Args:
        samples: ``(path, label)`` pairs.
    """

    def __init__(self, samples: Sequence[Tuple[str, int]]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def read(self, key: int) -> Tuple[np.ndarray, np.int32, np.int32]:
        """Pixels and label of sample ``key % len(self)``, or of the next readable one, and how many were skipped."""
        count = len(self.samples)
        index = int(key) % count
        for skipped in range(count):
            path, label = self.samples[(index + skipped) % count]
            try:
                return np.asarray(decode_rgb(path), dtype=np.uint8), np.int32(label), np.int32(skipped)
            except UNREADABLE:
                continue
        raise DataError("no readable image left in the dataset")


class UnreadableFiles:
    """The files the pipeline's workers skipped, named in the main process (a warning each).

    A pipeline stage of its own, ``(key, skipped) -> key``, after the decoding workers: a
    sample whose file (or files, in a row) could not be decoded arrives with ``skipped``
    above 0, and the skipped paths are derived from its key. Their reason is read again
    here, once per file: rare, and the workers stay free of any shared state.
    """

    def __init__(self, samples: Sequence[Tuple[str, int]]) -> None:
        self.samples = samples
        self.bad_files: List[Tuple[str, str]] = []
        self._lock = threading.Lock()

    def __call__(self, key, skipped):
        if int(skipped):
            count = len(self.samples)
            for offset in range(int(skipped)):
                self._report(self.samples[(int(key) + offset) % count][0])
        return key

    def _report(self, path: str) -> None:
        with self._lock:
            if any(p == path for p, _ in self.bad_files):
                return
            why = unreadable_reason(path) or "failed to decode in the pipeline, decoded when checked again"
            self.bad_files.append((path, why))
        _logger.warning("unreadable image %s (%s): replaced by the next sample", path, why)


class SampleKeys:
    """The random-access source of a pipeline: ``key -> (key, weight)``; the workers read the image.

    Args:
        count: Samples (keys are taken modulo ``count`` for the weight).
        weights: Per-sample weight (0 marks evaluation padding); default all ones.
    """

    def __init__(self, count: int, weights: Optional[Sequence[float]] = None) -> None:
        self.weights = np.ones(count, np.float32) if weights is None else np.asarray(weights, np.float32)

    def __len__(self) -> int:
        return len(self.weights)

    def __getitem__(self, key: int):
        return np.int64(key), self.weights[int(key) % len(self.weights)]


class DecodeAndAugment:
    """Worker stage of training: ``key -> (image, label, erase, key, skipped)``, decode then ``augment``."""

    def __init__(self, images: ImageSource, augment: TrainAugment) -> None:
        self.images = images
        self.augment = augment

    def __call__(self, key):
        image, label, skipped = self.images.read(key)
        image, erase, key = self.augment(image, key)
        return image, label, erase, key, skipped


class DecodeAndPreprocess:
    """Worker stage of evaluation: ``key -> (image, label, key, skipped)``, decode then the eval transforms."""

    def __init__(self, images: ImageSource, transforms: Sequence) -> None:
        self.images = images
        self.transforms = list(transforms)

    def __call__(self, key):
        image, label, skipped = self.images.read(key)
        for transform in self.transforms:
            image = transform(image)
        return image, label, key, skipped


# MindSpore's python_multiprocessing keys its message queues on files it creates as
# /tmp/dataset_ipc_<pid>_<id>_<n> (a fixed folder, in _c_dataengine) and never removes: two per pipeline.
# A distributed rank that MindSpore ends from C++ never reaches its exit handlers: its watcher removes them.
MINDSPORE_IPC_FILES = "/tmp/dataset_ipc_{pid}_*"


@functools.cache
def remove_ipc_files_at_exit() -> None:
    """Remove, when this process ends through Python, the files MindSpore's worker processes left in /tmp."""
    owner = os.getpid()

    def remove() -> None:
        if os.getpid() != owner:  # a forked worker inherits the exit handlers
            return
        for path in glob.glob(MINDSPORE_IPC_FILES.format(pid=owner)):
            try:
                os.remove(path)
            except OSError:
                pass

    atexit.register(remove)


def decoded_samples(samples: Sequence[Tuple[str, int]], stage, output_columns: List[str], *, sampler=None,
                    weights: Optional[Sequence[float]] = None, num_workers: int = 2,
                    multiprocessing: bool = True) -> Tuple[ds.Dataset, UnreadableFiles]:
    """The first stages of every pipeline: sample keys, then ``stage`` on each in workers (processes or threads).

    The source deals keys (from ``sampler``, else ``0 .. len(samples) - 1`` in order) and
    their ``weights``; ``stage`` (:class:`DecodeAndAugment`, :class:`DecodeAndPreprocess`)
    turns a key into ``output_columns``, among them ``key`` and ``skipped``; the main process
    then names any file a worker skipped (:class:`UnreadableFiles`). The dataset's columns
    are ``output_columns`` without ``skipped``, then ``weight``.
    """
    unreadable = UnreadableFiles(samples)
    if multiprocessing:
        remove_ipc_files_at_exit()
    source = SampleKeys(len(samples), weights)
    if sampler is None:
        dataset = ds.GeneratorDataset(source, column_names=["key", "weight"], shuffle=False)
    else:
        dataset = ds.GeneratorDataset(source, column_names=["key", "weight"], sampler=sampler)
    dataset = dataset.map(stage, input_columns=["key"], output_columns=output_columns,
                          num_parallel_workers=python_workers(num_workers), python_multiprocessing=multiprocessing)
    dataset = dataset.map(unreadable, input_columns=["key", "skipped"], output_columns=["key"])
    return dataset.project([c for c in output_columns if c != "skipped"] + ["weight"]), unreadable


class EpochShardSampler:
    """Seeded per-epoch permutation, split across shards like ``DistributedSampler``.

    Each shard gets ``ceil(n / num_shards)`` indices (the permutation wraps around to
    even them out). Each iteration started is the next epoch; ``start_epoch`` and ``skip``
    resume a run in the middle of an epoch with the same order it would have had.

    ``GeneratorDataset`` calls ``iter(sampler)`` while it is built (to check that it is
    iterable), deep-copies the sampler for every iterator and wants ``len(sampler)`` samples
    per pass (2.10's ``GeneratorOp`` refuses a pass of another length). So ``iter()``
    returns a generator that moves to the next epoch only when iteration starts, copies are
    the sampler itself, and a resumed epoch yields its remaining samples first and the
    ``skip`` already-trained ones after them (never reached: the host loop takes only the
    remaining batches and starts a new pass for the next epoch).

    ``mindspore.data_sink`` sees no epochs: it sends pass after pass to the device without
    end and the step takes batch after batch. For it, :meth:`stream` deals the
    uninterrupted run's batches as one stream cut into passes of whole batches: a pass
    resumed ``skip`` samples into epoch ``e`` holds the rest of ``e``'s whole batches,
    then the first ``skip`` samples of ``e + 1``, then ``e``'s remainder (the samples
    short of a whole batch, dropped by the batch stage as in every epoch); the next pass
    continues in ``e + 1``.

    It yields sample *keys*, ``(epoch * repeats + copy) * num_samples + index``
    (:meth:`split_key` takes one apart): the epoch travels with every sample, so per-sample
    randomness drawn in worker processes (which never see this object's later state) knows
    its epoch, and each copy of a repeated sample draws its own augmentation.

    ``repeats`` above 1 is repeated augmentation (DeiT's RASampler, mindcv's
    ``RepeatAugSampler`` with ``selected_round=0``, as mindcv's ``aug_repeats`` builds it): the
    permutation's every index ``repeats`` times in a row, dealt round-robin over the shards
    (so the copies of a sample land on different ranks), each shard keeping its first
    ``ceil(n / num_shards)``: an epoch stays as long, with fewer distinct images.

    Attributes:
        current_epoch: The epoch being drawn.
    """

    def __init__(self, num_samples: int, num_shards: int = 1, shard_id: int = 0, seed: int = 0,
                 shuffle: bool = True, start_epoch: int = 0, skip: int = 0, repeats: int = 1) -> None:
        if not 0 <= shard_id < num_shards:
            raise ValueError(f"shard_id {shard_id} outside [0, {num_shards})")
        self.num_samples = num_samples
        self.num_shards = num_shards
        self.shard_id = shard_id
        self.seed = seed
        self.shuffle = shuffle
        self.start_epoch = start_epoch
        self.start_skip = skip
        self.epoch = start_epoch
        self.current_epoch = start_epoch
        self.skip = skip
        self.stream_batch_size: Optional[int] = None  # set by stream(): passes cut from one stream
        self.repeats = repeats
        self.per_shard = math.ceil(num_samples / num_shards)

    def keys(self, epoch: int) -> np.ndarray:
        """This shard's sample keys of ``epoch``, in order."""
        order = (np.random.default_rng([self.seed, epoch]).permutation(self.num_samples) if self.shuffle
                 else np.arange(self.num_samples))
        copies = np.tile(np.arange(self.repeats), self.num_samples)
        order = np.repeat(order, self.repeats)
        total = math.ceil(len(order) / self.num_shards) * self.num_shards
        # wraps around to even out the shards; each keeps its first per_shard
        order = np.resize(order, total)[self.shard_id::self.num_shards][:self.per_shard]
        copies = np.resize(copies, total)[self.shard_id::self.num_shards][:self.per_shard]
        return (epoch * self.repeats + copies) * self.num_samples + order

    def indices(self, epoch: int) -> np.ndarray:
        """This shard's sample indices of ``epoch``, in order."""
        return self.keys(epoch) % self.num_samples

    def __iter__(self) -> Iterator[int]:
        return self._next_epoch()

    def _next_epoch(self) -> Iterator[int]:
        self.current_epoch = self.epoch
        keys = self.keys(self.epoch)
        if self.stream_batch_size is None:
            keys = np.concatenate([keys[self.skip:], keys[:self.skip]])
            self.skip = 0
        else:
            whole = self.per_shard - self.per_shard % self.stream_batch_size  # samples in whole batches
            # skip stays: every pass of the stream starts skip samples into its epoch
            keys = np.concatenate([keys[self.skip:whole], self.keys(self.epoch + 1)[:self.skip], keys[whole:]])
        self.epoch += 1
        yield from keys.tolist()

    def stream(self, batch_size: int) -> None:
        """Deal passes for a consumer that runs from one pass into the next (the data sink), from the start point.

        The passes, batched by ``batch_size`` with ``drop_remainder``, give batch for batch
        the uninterrupted run's sequence from the start point on, whatever the pipeline
        drew before (MindSpore's type and shape reads launch it).
        """
        if self.start_skip % batch_size or self.start_skip >= self.per_shard - self.per_shard % batch_size:
            raise ValueError(f"a stream starts at a whole batch of the epoch: skip {self.start_skip} is not one "
                             f"of {self.per_shard // batch_size} batches of {batch_size}")
        self.stream_batch_size = batch_size
        self.epoch, self.skip = self.start_epoch, self.start_skip

    def split_key(self, key: int) -> Tuple[int, int]:
        """``(epoch, index)`` of a key this sampler yielded."""
        drawn, index = divmod(int(key), self.num_samples)
        return drawn // self.repeats, index

    def __deepcopy__(self, memo) -> EpochShardSampler:
        return self

    def __len__(self) -> int:
        return self.per_shard


def eval_shard_indices(num_samples: int, num_shards: int, shard_id: int,
                       batch_size: int) -> Tuple[List[int], List[float]]:
    """Indices and weights of one evaluation shard, padded to whole batches.

    Every shard gets the same number of whole batches; padding entries repeat index 0 with
    weight 0, so summing weighted metrics over shards counts each sample exactly once.
    """
    per_shard = math.ceil(num_samples / num_shards)
    padded = math.ceil(per_shard / batch_size) * batch_size
    own = list(range(shard_id, num_samples, num_shards))
    return own + [0] * (padded - len(own)), [1.0] * len(own) + [0.0] * (padded - len(own))


def path_noise(seed: int, key: int, blocks: int) -> np.ndarray:
    """``(blocks, 2)`` float32 uniforms in [0, 1): sample ``key``'s stochastic-depth draws, from ``(seed, key)``."""
    return np.random.default_rng([int(seed), 0xD7A7, int(key)]).random((blocks, 2), dtype=np.float32)


def usable_cores() -> int:
    """The cores this process may run on: its affinity set, else the machine's.

    ``msrun --bind_core=True`` starts each worker under ``taskset -c`` with its share of the
    cores (MindSpore 2.10, ``parallel/cluster/process_entity/_utils.py``, ``_generate_cmd``), while
    ``os.cpu_count()``, like the bound MindSpore's datasets check against
    (``dataset/core/validator_helpers.py``: ``multiprocessing.cpu_count()``), still counts the machine's.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def python_workers(num_workers: int) -> int:
    """``num_workers``, at least 1 and at most the cores this process may run on (:func:`usable_cores`).

    MindSpore's datasets refuse more than the machine's cores; under ``msrun --bind_core=True`` a
    worker may run on its share only, and more workers than that share would contend for it.
    """
    cores = usable_cores()
    if num_workers > cores:
        _say_fewer_workers(num_workers, cores)
    return max(1, min(num_workers, cores))


@functools.cache
def _say_fewer_workers(asked: int, cores: int) -> None:
    _logger.info("num_parallel_workers %d is more than the %d cores this process may run on: using %d", asked, cores,
                 cores)


def collect_keys(keys) -> List[int]:
    """The sample keys of a batch column, as ints."""
    return [int(k) for k in np.asarray(keys).reshape(-1)]


def batch_path_noise(seed: int, keys, blocks: int) -> np.ndarray:
    """``(B, blocks, 2)``: the stochastic-depth uniforms of a batch's samples (:func:`path_noise`)."""
    return np.stack([path_noise(seed, key, blocks) for key in collect_keys(keys)])


class Shard(NamedTuple):
    """This process's part of every epoch: shard ``shard_id`` of ``num_shards`` (the data-parallel rank)."""

    num_shards: int = 1
    shard_id: int = 0


class StartPoint(NamedTuple):
    """Where a training pipeline's sample order starts: ``batches`` into 0-based ``epoch`` (a resumed run)."""

    epoch: int = 0
    batches: int = 0


ONE_SHARD = Shard()  # one process reads all the data
FROM_THE_START = StartPoint()  # a fresh run

def keyed_training_samples(index: FolderIndex, augment: TrainAugment, batch_size: int, *, seed: int,
                           shard: Shard = ONE_SHARD, start: StartPoint = FROM_THE_START, repeats: int = 1,
                           num_workers: int = 2, multiprocessing: bool = True) -> Tuple[ds.Dataset, DataInfo]:
    """The stages every training pipeline shares, before batching: columns ``image, label, erase, key``.

    The sampler deals this shard's keys from ``start`` on (``repeats`` above 1: repeated
    augmentation, :class:`EpochShardSampler`); worker processes decode each one (a damaged
    file is replaced, and named by the main process) and transform it with ``augment`` from
    ``(seed, key)``. Returns the unbatched dataset and the :class:`DataInfo` of its batches.
    """
    sampler = EpochShardSampler(len(index), shard.num_shards, shard.shard_id, seed, shuffle=True,
                                start_epoch=start.epoch, skip=start.batches * batch_size, repeats=repeats)
    if sampler.per_shard < batch_size:
        raise DataError(f"{index.root}: {sampler.per_shard} samples per shard is fewer than batch_size {batch_size}")
    dataset, unreadable = decoded_samples(index.samples, DecodeAndAugment(ImageSource(index.samples), augment),
                                          ["image", "label", "erase", "key", "skipped"], sampler=sampler,
                                          num_workers=num_workers, multiprocessing=multiprocessing)
    dataset = dataset.project(["image", "label", "erase", "key"])
    info = DataInfo(class_names=index.class_names, num_samples=len(index), batch_size=batch_size,
                    batches_per_epoch=sampler.per_shard // batch_size, bad_files=list(index.bad_files),
                    unreadable=unreadable, sampler=sampler)
    return dataset, info


def prepare_to_stream(dataset: ds.Dataset, info: DataInfo) -> None:
    """Make ``dataset`` deal the uninterrupted run's batches from its start point on, pass after pass, without end.

    ``mindspore.data_sink`` sends the dataset to the device without end
    (``train/data_sink.py``: ``transfer_dataset.send(-1)``), the next pass right after the
    last batch of the one before, so the passes are cut from one stream
    (:meth:`EpochShardSampler.stream`). Before sending, it reads the dataset's size, batch
    size, column types and shapes (``_init_sink_dataset``; ``train/_utils.py``,
    ``_exec_datagraph``); reading the types and the shapes launches the pipeline for one
    row each, and each launch draws a pass from the shared sampler. Read here, they are
    cached on the dataset (``Dataset.output_types`` / ``output_shapes``) and no later read
    launches anything; only then does the sampler go back to its start point.
    """
    dataset.get_dataset_size()
    dataset.get_batch_size()
    dataset.output_types()
    dataset.output_shapes()
    if info.sampler is not None:
        info.sampler.stream(info.batch_size)


def create_train_dataset(index: FolderIndex, augment: TrainAugment, mixer: Mixup, batch_size: int, *,
                         seed: int = 0, shard: Shard = ONE_SHARD, start: StartPoint = FROM_THE_START,
                         path_noise_blocks: int = 0, repeats: int = 1, num_workers: int = 2,
                         multiprocessing: bool = True) -> Tuple[ds.Dataset, DataInfo]:
    """Training dataset of soft-target batches (columns: see the module docstring).

    Args:
        index: The scanned split (:func:`~mindswin.data.folder.scan_split`).
        augment: The per-sample augmentation; with ``augment.device`` it leaves normalise/erase/mix
            to :class:`~mindswin.data.device.DeviceAugment` and the batches carry their draws.
        mixer: Mixup/CutMix and label smoothing, drawn per batch from the samples' keys.
        batch_size: Images per batch of this shard.
        seed: The run's seed: sample order, augmentation and mixing all derive from ``(seed, key)``.
        shard: This process's part of the data.
        start: Where a resumed run continues (the same order and augmentation it would have had).
        path_noise_blocks: With stochastic depth, the model's block count: each batch also carries
            ``path_noise`` ``(B, blocks, 2)``, the model's stochastic-depth uniforms drawn from each
            sample's key (``SwinTransformerV2.forward_stages``).
        repeats: Above 1, repeated augmentation (:class:`EpochShardSampler`).
        num_workers: Worker processes (decoding and augmentation).
        multiprocessing: False runs the Python transform in threads (for debugging).
    """
    dataset, info = keyed_training_samples(index, augment, batch_size, seed=seed, shard=shard, start=start,
                                           repeats=repeats, num_workers=num_workers, multiprocessing=multiprocessing)
    size = augment.image_size

    def batch_rng(keys) -> np.random.Generator:
        return np.random.default_rng([seed, 0x313C, *collect_keys(keys)])

    if augment.device:
        def draw(labels, keys, _batch_info):
            params = mixer.draw(len(labels), size, size, batch_rng(keys))
            drawn = (mixer.targets(np.asarray(labels), params.lam), params.cutbox, params.blend)
            return (*drawn, batch_path_noise(seed, keys, path_noise_blocks)) if path_noise_blocks else drawn

        extra = ["path_noise"] if path_noise_blocks else []
        dataset = dataset.batch(batch_size, drop_remainder=True, per_batch_map=draw, input_columns=["label", "key"],
                                output_columns=["label", "cutbox", "blend", *extra])
        dataset = dataset.project(["image", "erase", "cutbox", "blend", "label", *extra])
    else:
        def mix(images, labels, keys, _batch_info):
            images = np.stack(images)
            params = mixer.draw(len(labels), size, size, batch_rng(keys))
            return Mixup.apply(images, params), mixer.targets(np.asarray(labels), params.lam)

        dataset = dataset.batch(batch_size, drop_remainder=True, per_batch_map=mix,
                                input_columns=["image", "label", "key"], output_columns=["image", "label"])
        dataset = dataset.project(["image", "label"])
    return dataset, info


def scan_data_split(data_dir: str, split: str, class_names: Optional[Sequence[str]] = None, verify: str = "auto",
                    strict: bool = False, num_workers: int = 2) -> FolderIndex:
    """:func:`~mindswin.data.folder.scan_split` of ``data_dir/split``, with the fix when ``data_dir`` is missing."""
    if not data_dir or not os.path.isdir(data_dir):
        raise DataError(f"data_dir not found: {data_dir!r} (pass --data_dir DIR with DIR/train/<class>/... and "
                        "DIR/val/<class>/...; `python -m mindswin.data DIR` writes a demo dataset)")
    return scan_split(os.path.join(data_dir, split), class_names=class_names, verify=verify, strict=strict,
                      num_workers=num_workers)


def eval_samples(index: FolderIndex, transforms: Sequence, batch_size: int, *, shard: Shard = ONE_SHARD,
                 num_workers: int = 2) -> Tuple[ds.Dataset, List[int], DataInfo]:
    """An evaluation shard before batching: columns ``image, label, key, weight``, the index of each key.

    Shard ``k`` holds samples ``k, k + num_shards, ...``, padded with zero-weight copies to
    whole batches of the same count on every shard (:func:`eval_shard_indices`). Worker
    threads decode each image and apply ``transforms`` to it.
    """
    positions, weights = eval_shard_indices(len(index), shard.num_shards, shard.shard_id, batch_size)
    samples = [index.samples[i] for i in positions]
    # threads, not processes: every evaluation pass would start a pool of its own, and a validation
    # split is read once per epoch (Pillow's decoder releases the GIL)
    dataset, unreadable = decoded_samples(samples, DecodeAndPreprocess(ImageSource(samples), transforms),
                                          ["image", "label", "key", "skipped"], weights=weights,
                                          num_workers=num_workers, multiprocessing=False)
    info = DataInfo(class_names=index.class_names, num_samples=len(index), batch_size=batch_size,
                    batches_per_epoch=len(positions) // batch_size, bad_files=list(index.bad_files),
                    unreadable=unreadable)
    return dataset, positions, info


def create_eval_dataset(index: FolderIndex, preprocessing: Preprocessing, batch_size: int, *,
                        shard: Shard = ONE_SHARD, num_workers: int = 2,
                        normalize: bool = True) -> Tuple[ds.Dataset, DataInfo]:
    """Evaluation dataset yielding ``image``, ``label`` (B,) int32 and ``weight`` (B,) float32.

    ``index``: the scanned split (:func:`scan_data_split`). ``image`` is (B, 3, S, S) float32
    after ``preprocessing``'s resize, centre crop and normalisation, or without ``normalize``
    (B, S, S, 3) uint8 for :class:`~mindswin.data.device.DeviceNormalize`. Decoding (Pillow),
    resizing and cropping run in ``num_workers`` worker threads. The shard's
    batches are padded with zero-weight copies to the same count on every shard.
    """
    dataset, _, info = eval_samples(index, preprocessing.eval_transforms(normalize), batch_size, shard=shard,
                                    num_workers=num_workers)
    dataset = dataset.project(["image", "label", "weight"]).batch(batch_size, drop_remainder=True)
    return dataset, info
