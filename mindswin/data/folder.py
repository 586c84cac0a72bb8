"""ImageFolder scanning: classes, samples, and the files that cannot be used."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image

from ..fileio import atomic_write

__all__ = ["DataError", "IMAGE_EXTENSIONS", "UNREADABLE", "FolderIndex", "scan_split", "scan_map_file", "decode_rgb",
           "ShareFn", "shared_scan", "IndexCache"]

_logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp", ".gif")
# Above this many files verify="auto" checks a split by header only (full decoding of ImageNet's
# 50,000 val images took minutes per rank); files that fail later are replaced and reported.
FULL_VERIFY_LIMIT = 10_000
# How a data-parallel job scans once: ``share(make)`` runs ``make()`` on rank 0 only and
# returns its bytes on every rank (the engine supplies it; see mindswin.engine.tasks).
ShareFn = Callable[[Callable[[], bytes]], bytes]
# What opening or decoding a bad file raises: unknown format / truncated data (OSError,
# including UnidentifiedImageError), broken headers (SyntaxError, ValueError), and images
# larger than Image.MAX_IMAGE_PIXELS allows (DecompressionBombError, an Exception of its own).
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class DataError(ValueError):
    """The data directory cannot be used as given."""


@dataclass
class FolderIndex:
    """Samples of one split: ``(path, label)`` pairs and sorted class names."""

    root: str
    class_names: List[str]
    samples: List[Tuple[str, int]]
    bad_files: List[Tuple[str, str]] = field(default_factory=list)
    # What the scan read, with its modification time (ns) taken before reading it: every folder
    # walked, or the map file and the folders it names. A file added, removed or renamed
    # changes its folder's time, so an unchanged list means an unchanged index (IndexCache).
    watched: List[Tuple[str, int]] = field(default_factory=list, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.samples)

    def to_bytes(self, watched: bool = False) -> bytes:
        """Compact form (paths relative to ``root``, zlib-compressed JSON) for sending to other ranks.

        ``watched`` adds the scanned folders' times (what :class:`IndexCache` keeps).
        """
        relative = _relative_to(self.root)
        body = dict(class_names=self.class_names, files=[relative(p) for p, _ in self.samples],
                    labels=[label for _, label in self.samples], bad=[[relative(p), why] for p, why in self.bad_files])
        if watched:
            body["watched"] = [[relative(p), mtime] for p, mtime in self.watched]
        return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes, root: str) -> FolderIndex:
        """The index :meth:`to_bytes` wrote, with paths under this node's ``root`` (same layout)."""
        body = json.loads(zlib.decompress(data).decode())
        samples = [(os.path.join(root, f), int(label)) for f, label in zip(body["files"], body["labels"])]
        return cls(root=root, class_names=list(body["class_names"]), samples=samples,
                   bad_files=[(os.path.join(root, p), why) for p, why in body["bad"]],
                   watched=[(os.path.normpath(os.path.join(root, p)), int(t)) for p, t in body.get("watched", [])])


def _relative_to(root: str) -> Callable[[str], str]:
    prefix = os.path.join(root, "")

    def relative(path: str) -> str:
        return path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, root)

    return relative


class IndexCache:
    """A scanned index kept in a file, reused while the tree it describes is unchanged.

    Starting a run on ImageNet-22k (14M files) spends minutes walking and checking the tree;
    a restart re-reads the index instead after one ``stat`` per watched folder (22k folders:
    a fraction of a second). The check sees every file added, removed or renamed (each changes
    its folder's modification time); a file rewritten in place under the same name is not seen
    (a damaged one is still caught when it is decoded, replaced and reported).

    Args:
        directory: Where index files live (the run's ``ckpt_save_dir/scan_index`` by default).
        split: The scanned folder (or map file); with ``options``, it names the file.
        root: The index's root (the folder its paths are relative to).
        options: Everything else the index depends on (verification, strictness, class list).
    """

    VERSION = 1
    RACY_SECONDS = 1.0

    def __init__(self, directory: str, split: str, root: str, options: dict) -> None:
        self.key = dict(version=self.VERSION, split=os.path.abspath(split), root=os.path.abspath(root), **options)
        digest = hashlib.sha1(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:16]
        self.path = os.path.join(directory, f"{os.path.basename(os.path.normpath(split))}-{digest}.idx")
        self.root = root

    def load(self) -> Optional[FolderIndex]:
        """The kept index, or None when there is none, it is unreadable or the tree changed."""
        started = time.perf_counter()
        try:
            with open(self.path, "rb") as f:
                key_line, body = f.read().split(b"\n", 1)
            if json.loads(key_line) != self.key:
                return None
            index = FolderIndex.from_bytes(body, self.root)
        except (OSError, ValueError, KeyError, zlib.error):
            return None
        for path, mtime in index.watched:
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    _logger.info("%s changed since %s was written: scanning again", path, self.path)
                    return None
            except OSError:
                return None
        _logger.info("reused the scan index %s (%d images; %d folders unchanged, checked in %.2f s)", self.path,
                     len(index), len(index.watched), time.perf_counter() - started)
        return index

    def save(self, index: FolderIndex, scan_started: float) -> None:
        """Keep ``index`` for the next start (a failure to write only costs that start a scan).

        A folder changed less than ``RACY_SECONDS`` before the scan started (``time.time()``) is
        kept as changed: a file added in the same clock tick after the folder was read would
        leave its time as the scan saw it (git's "racy" entries).
        """
        racy_after = int((scan_started - self.RACY_SECONDS) * 1e9)
        index = dataclasses.replace(index, watched=[(path, mtime if mtime < racy_after else -1)
                                                    for path, mtime in index.watched])
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            atomic_write(self.path, lambda tmp: _write_bytes(
                tmp, json.dumps(self.key, sort_keys=True).encode() + b"\n" + index.to_bytes(watched=True)))
        except OSError as exc:
            _logger.warning("could not keep the scan index in %s (%s): the next start scans again", self.path, exc)


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def shared_scan(root: str, scan: Callable[[], FolderIndex], share: Optional[ShareFn],
                cache: Optional[IndexCache] = None) -> FolderIndex:
    """``scan()`` on this process, or once per job when ``share`` is given (rank 0 scans, all get it).

    With ``cache``, rank 0 first looks for an index of an unchanged tree (see :class:`IndexCache`)
    and keeps what it scanned for the next start.

    Errors (missing folder, no classes, strict mode) are raised on rank 0, which then
    sends an error record so the other ranks raise the same :class:`DataError` instead of waiting.
    """
    if cache is not None:
        scan = _cached(scan, cache)
    if share is None:
        return scan()

    def make() -> bytes:
        try:
            return b"I" + scan().to_bytes()
        except DataError as exc:
            return b"E" + str(exc).encode()

    payload = share(make)
    if payload[:1] == b"E":
        raise DataError(payload[1:].decode())
    return FolderIndex.from_bytes(payload[1:], root)


def _cached(scan: Callable[[], FolderIndex], cache: IndexCache) -> Callable[[], FolderIndex]:
    def cached_scan() -> FolderIndex:
        index = cache.load()
        if index is None:
            started = time.time()
            index = scan()
            cache.save(index, started)
        elif index.bad_files:
            shown = "; ".join(f"{p} ({why})" for p, why in index.bad_files[:10])
            _logger.warning("%s: %d unreadable image(s) skipped (found by the scan that wrote %s): %s%s", index.root,
                            len(index.bad_files), cache.path, shown, " ..." if len(index.bad_files) > 10 else "")
        return index

    return cached_scan


def decode_rgb(path: str):
    """Decode ``path`` fully and convert any mode (L, P, RGBA, CMYK, ...) to an RGB PIL image."""
    with Image.open(path) as img:
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img


def unreadable_reason(path: str, full: bool = True) -> Optional[str]:
    """None when ``path`` is a usable image, else the reason it is not (``full``: decode it all, else its header)."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        if full:
            decode_rgb(path)
        else:
            with Image.open(path) as img:
                img.verify()
    except UNREADABLE as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _walk_images(top: str) -> Tuple[List[str], List[Tuple[str, int]]]:
    """The image files below ``top`` (sorted, hidden entries skipped) and every folder read, with its time.

    Each folder's modification time is taken before it is listed: a change made while the
    scan runs shows as a changed time at the next start (:class:`IndexCache`).
    """
    files: List[str] = []
    watched: List[Tuple[str, int]] = []
    pending = [top]
    while pending:
        folder = pending.pop()
        watched.append((os.path.normpath(folder), os.stat(folder).st_mtime_ns))
        subfolders = []
        with os.scandir(folder) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    subfolders.append(entry.path)
                elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(entry.path)
        pending += reversed(subfolders)
    return files, watched


def _verified(candidates: Sequence[Tuple[str, int]], verify: str, strict: bool, num_workers: int,
              where: str) -> Tuple[List[Tuple[str, int]], List[Tuple[str, str]]]:
    """The usable ``(path, label)`` samples and the ``(path, reason)`` of the others (logged)."""
    full = verify == "full" or (verify == "auto" and len(candidates) <= FULL_VERIFY_LIMIT)
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        problems = list(pool.map(lambda s: unreadable_reason(s[0], full), candidates))
    samples, bad = [], []
    for sample, problem in zip(candidates, problems):
        if problem is None:
            samples.append(sample)
        elif strict:
            raise DataError(f"unreadable image {sample[0]}: {problem} (strict_data is on; remove the file or set "
                            "strict_data: False to skip it)")
        else:
            bad.append((sample[0], problem))
    if bad:
        shown = "; ".join(f"{p} ({why})" for p, why in bad[:10])
        _logger.warning("skipped %d unreadable image(s) in %s: %s%s", len(bad), where, shown,
                        " ..." if len(bad) > 10 else "")
    return samples, bad


def scan_split(split_dir: str, *, class_names: Optional[Sequence[str]] = None, verify: str = "auto",
               strict: bool = False, num_workers: int = 4, share: Optional[ShareFn] = None,
               cache_dir: Optional[str] = None) -> FolderIndex:
    """Index ``split_dir/<class>/<image>``.

    Args:
        split_dir: Split directory (e.g. ``DATA/train``).
        class_names: Expected classes (e.g. the train split's, for val); default: the
            sorted sub-directories.
        verify: ``"full"`` decodes every image, ``"header"`` only reads headers, ``"auto"``
            decodes fully up to 10,000 files (``FULL_VERIFY_LIMIT``), header only above.
        strict: Raise on the first unusable file instead of skipping it.
        num_workers: Threads used for verification.
        share: Scan once per job: rank 0 scans and every rank gets its index (see :data:`ShareFn`).
        cache_dir: Keep the index there and reuse it while the tree is unchanged (:class:`IndexCache`).

    Raises:
        DataError: missing/empty directory, no classes, a class without images, or (strict)
            an unusable file.
    """
    cache = None if cache_dir is None else IndexCache(cache_dir, split_dir, split_dir, dict(
        kind="folders", verify=verify, strict=strict, classes=list(class_names) if class_names else None))
    return shared_scan(split_dir, lambda: _scan_split(split_dir, class_names, verify, strict, num_workers), share,
                       cache)


def _scan_split(split_dir: str, class_names: Optional[Sequence[str]], verify: str, strict: bool,
                num_workers: int) -> FolderIndex:
    if not os.path.isdir(split_dir):
        parent = os.path.dirname(os.path.normpath(split_dir))
        folders = sorted(d for d in os.listdir(parent) if os.path.isdir(os.path.join(parent, d))) \
            if os.path.isdir(parent) else []
        raise DataError(f"data split not found: {split_dir} (folders in {parent}: {', '.join(folders) or 'none'}; "
                        "expected DATA_DIR/train/<class>/<image> and DATA_DIR/val/<class>/<image>); set --data_dir "
                        "to the folder holding train/ and val/, or --train_split / --val_split to its split folders")
    watched = [(os.path.normpath(split_dir), os.stat(split_dir).st_mtime_ns)]
    entries = os.listdir(split_dir)
    found = sorted(d for d in entries if os.path.isdir(os.path.join(split_dir, d)) and not d.startswith("."))
    if not found:
        loose = [f for f in entries if f.lower().endswith(IMAGE_EXTENSIONS)]
        if loose:
            raise DataError(f"{split_dir} holds {len(loose)} images directly, not in class folders (ImageNet's val "
                            f"split is distributed flat like this): move each image into {split_dir}/<class>/ "
                            "using the labels that come with the data (the class folder names of the train split)")
        raise DataError(f"{split_dir} has no class folders (expected {split_dir}/<class>/<image>)")
    if class_names is None:
        class_names = found
    else:
        extra = sorted(set(found) - set(class_names))
        if extra:
            raise DataError(f"{split_dir} has {len(extra)} class folder(s) the training split lacks: "
                            f"{', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''} (labels are positions in the "
                            "training split's sorted class list, so every class folder name must be one of the "
                            "training split's: rename or remove these)")
    candidates: List[Tuple[str, int]] = []
    empty: List[str] = []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        files: List[str] = []
        if os.path.isdir(class_dir):
            files, folders = _walk_images(class_dir)
            watched += folders
        if not files:
            empty.append(name)
        candidates += [(f, label) for f in files]
    if empty:
        raise DataError(f"{split_dir}: class folder(s) without images: {', '.join(empty[:10])} "
                        f"(supported extensions: {', '.join(IMAGE_EXTENSIONS)})")
    samples, bad = _verified(candidates, verify, strict, num_workers, split_dir)
    empty_after = sorted({class_names[label] for _, label in candidates} - {class_names[label] for _, label in samples})
    if empty_after:
        raise DataError(f"{split_dir}: every image of class(es) {', '.join(empty_after)} is unreadable")
    return FolderIndex(root=split_dir, class_names=list(class_names), samples=samples, bad_files=bad, watched=watched)


def scan_images(folder: str, *, verify: str = "auto", strict: bool = False, num_workers: int = 4,
                what: str = "SimMIM", share: Optional[ShareFn] = None, cache_dir: Optional[str] = None) -> FolderIndex:
    """Every image below ``folder`` (any depth, sorted), as unlabelled samples (label 0).

    Args:
        folder: A folder of images, with or without class sub-folders.
        verify: ``"full"`` decodes every image, ``"header"`` reads headers, ``"auto"`` decodes
            up to 10,000 files.
        strict: Raise on the first unusable file instead of skipping it.
        num_workers: Verification threads.
        what: Who reads the folder, for messages.
        share: Scan once per job (rank 0 scans, every rank gets the index; see ``ShareFn``).
        cache_dir: Keep the index there and reuse it while the tree is unchanged (:class:`IndexCache`).

    Raises:
        DataError: the folder is missing or holds no readable image.
    """
    cache = None if cache_dir is None else IndexCache(cache_dir, folder, folder, dict(kind="images", verify=verify,
                                                                                      strict=strict))
    return shared_scan(folder, lambda: _scan_images(folder, verify, strict, num_workers, what), share, cache)


def _scan_images(folder: str, verify: str, strict: bool, num_workers: int, what: str) -> FolderIndex:
    if not os.path.isdir(folder):
        raise DataError(f"image folder not found: {folder} ({what} reads every image below DATA_DIR/SPLIT, with or "
                        "without class sub-folders; set --data_dir and --train_split)")
    files, watched = _walk_images(folder)
    if not files:
        raise DataError(f"{folder} holds no images (supported extensions: {', '.join(IMAGE_EXTENSIONS)})")
    samples, bad = _verified([(path, 0) for path in files], verify, strict, num_workers, folder)
    if not samples:
        raise DataError(f"every image in {folder} is unreadable")
    return FolderIndex(root=folder, class_names=[], samples=samples, bad_files=bad, watched=watched)


def scan_map_file(map_file: str, root: str, *, num_classes: Optional[int] = None, verify: str = "auto",
                  strict: bool = False, num_workers: int = 4, share: Optional[ShareFn] = None,
                  cache_dir: Optional[str] = None) -> FolderIndex:
    """Index the samples an official map file lists, instead of walking class folders.

    Two layouts of microsoft/Swin-Transformer are read: the ImageNet-22k one
    (``ILSVRC2011fall_whole_map_train.txt``, a JSON list of ``[path, label]``) and the zip-mode
    ``train_map.txt`` (``path<TAB>label`` lines). Paths are relative to ``root``; labels are
    class indices, so the class names are ``"0" .. str(K - 1)`` with ``K`` = ``num_classes`` or
    the largest label + 1. Listed files that are missing or unreadable are skipped and named.

    Raises:
        DataError: the file is missing, unparseable, empty, or has a label outside ``[0, K)``.
    """
    cache = None if cache_dir is None else IndexCache(cache_dir, map_file, root, dict(
        kind="map", classes=num_classes, verify=verify, strict=strict))
    return shared_scan(root, lambda: _scan_map_file(map_file, root, num_classes, verify, strict, num_workers),
                       share, cache)


def _read_map_file(map_file: str) -> List[Tuple[str, int]]:
    try:  # a file that is not UTF-8 text (UnicodeDecodeError) is no map file either
        with open(map_file, encoding="utf-8") as f:
            text = f.read()
        if text.lstrip().startswith("["):
            return [(str(path), int(label)) for path, label in json.loads(text)]
        rows = [line.rstrip("\n").split("\t") for line in text.splitlines() if line.strip()]
        return [(path, int(label)) for path, label in rows]
    except (ValueError, TypeError) as exc:
        raise DataError(f"{map_file} is not a map file ({exc}): expected the official layouts, a JSON list of "
                        "[path, label] (ImageNet-22k's ILSVRC2011fall_whole_map_*.txt) or path<TAB>label lines "
                        "(train_map.txt), paths relative to --data_dir") from exc


def _scan_map_file(map_file: str, root: str, num_classes: Optional[int], verify: str, strict: bool,
                   num_workers: int) -> FolderIndex:
    if not os.path.isfile(map_file):
        raise DataError(f"map file not found: {map_file} (train_map_file/val_map_file name the official "
                        "ILSVRC2011fall_whole_map_{train,val}.txt, relative to --data_dir or absolute)")
    watched = [(os.path.normpath(map_file), os.stat(map_file).st_mtime_ns)]
    listed = _read_map_file(map_file)
    if not listed:
        raise DataError(f"{map_file} lists no images")
    labels = [label for _, label in listed]
    classes = num_classes or max(labels) + 1
    if min(labels) < 0 or max(labels) >= classes:
        raise DataError(f"{map_file} has labels outside [0, {classes}) (num_classes {classes}): labels are class "
                        "indices of the training map")
    candidates, missing = [], []
    folders = set()
    for path, label in listed:
        full_path = os.path.join(root, path)
        folders.add(os.path.dirname(os.path.normpath(full_path)))
        (candidates if os.path.isfile(full_path) else missing).append((full_path, label))
    for folder in sorted(folders):
        try:
            watched.append((folder, os.stat(folder).st_mtime_ns))
        except OSError:
            watched.append((folder, -1))  # a missing folder: the index is stale once it appears
    if missing and strict:
        raise DataError(f"{map_file} lists {len(missing)} missing file(s), e.g. {missing[0][0]} (strict_data is on)")
    samples, bad = _verified(candidates, verify, strict, num_workers, map_file)
    bad = [(path, "file not found") for path, _ in missing] + bad
    if missing:
        _logger.warning("%s lists %d missing file(s), skipped: %s%s", map_file, len(missing),
                        "; ".join(p for p, _ in missing[:10]), " ..." if len(missing) > 10 else "")
    if not samples:
        raise DataError(f"no readable image among the {len(listed)} that {map_file} lists")
    return FolderIndex(root=root, class_names=[str(c) for c in range(classes)], samples=samples, bad_files=bad,
                       watched=watched)
