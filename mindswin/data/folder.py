"""ImageFolder scanning: classes, samples, and the files that cannot be used."""
from __future__ import annotations

import json
import logging
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

from PIL import Image

__all__ = ["DataError", "IMAGE_EXTENSIONS", "UNREADABLE", "FolderIndex", "scan_split", "decode_rgb", "ShareFn",
           "shared_scan"]

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

    def __len__(self) -> int:
        return len(self.samples)

    def to_bytes(self) -> bytes:
        """Compact form (paths relative to ``root``, zlib-compressed JSON) for sending to other ranks."""
        prefix = os.path.join(self.root, "")
        rel = [p[len(prefix):] if p.startswith(prefix) else p for p, _ in self.samples]
        bad = [[p[len(prefix):] if p.startswith(prefix) else p, why] for p, why in self.bad_files]
        body = dict(class_names=self.class_names, files=rel, labels=[label for _, label in self.samples], bad=bad)
        return zlib.compress(json.dumps(body, separators=(",", ":")).encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes, root: str) -> FolderIndex:
        """The index :meth:`to_bytes` wrote, with paths under this node's ``root`` (same layout)."""
        body = json.loads(zlib.decompress(data).decode())
        samples = [(os.path.join(root, f), int(label)) for f, label in zip(body["files"], body["labels"])]
        return cls(root=root, class_names=list(body["class_names"]), samples=samples,
                   bad_files=[(os.path.join(root, p), why) for p, why in body["bad"]])


def shared_scan(root: str, scan: Callable[[], FolderIndex], share: Optional[ShareFn]) -> FolderIndex:
    """``scan()`` on this process, or once per job when ``share`` is given (rank 0 scans, all get it).

    Errors (missing folder, no classes, strict mode) are raised on rank 0, which then
    sends an error record so the other ranks raise the same :class:`DataError` instead of waiting.
    """
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


def decode_rgb(path: str):
    """Decode ``path`` fully and convert any mode (L, P, RGBA, CMYK, ...) to an RGB PIL image."""
    with Image.open(path) as img:
        img.load()
        if img.mode != "RGB":
            img = img.convert("RGB")
        return img


def _check(path: str, full: bool) -> Optional[str]:
    """None when ``path`` is a usable image, else the reason it is not."""
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


def scan_split(split_dir: str, *, class_names: Optional[Sequence[str]] = None, verify: str = "auto",
               strict: bool = False, num_workers: int = 4, share: Optional[ShareFn] = None) -> FolderIndex:
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

    Raises:
        DataError: missing/empty directory, no classes, a class without images, or (strict)
            an unusable file.
    """
    return shared_scan(split_dir, lambda: _scan_split(split_dir, class_names, verify, strict, num_workers), share)


def _scan_split(split_dir: str, class_names: Optional[Sequence[str]], verify: str, strict: bool,
                num_workers: int) -> FolderIndex:
    if not os.path.isdir(split_dir):
        raise DataError(f"data split not found: {split_dir} (expected DATA_DIR/train/<class>/<image> and "
                        "DATA_DIR/val/<class>/<image>; set --data_dir to the folder holding train/ and val/)")
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
        files = []
        if os.path.isdir(class_dir):
            for dirpath, _, filenames in sorted(os.walk(class_dir)):
                files += [os.path.join(dirpath, f) for f in sorted(filenames)
                          if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
        if not files:
            empty.append(name)
        candidates += [(f, label) for f in files]
    if empty:
        raise DataError(f"{split_dir}: class folder(s) without images: {', '.join(empty[:10])} "
                        f"(supported extensions: {', '.join(IMAGE_EXTENSIONS)})")

    full = verify == "full" or (verify == "auto" and len(candidates) <= FULL_VERIFY_LIMIT)
    with ThreadPoolExecutor(max(1, num_workers)) as pool:
        problems = list(pool.map(lambda s: _check(s[0], full), candidates))
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
        _logger.warning("skipped %d unreadable image(s) in %s: %s%s", len(bad), split_dir, shown,
                        " ..." if len(bad) > 10 else "")
    empty_after = sorted({class_names[label] for _, label in candidates} - {class_names[label] for _, label in samples})
    if empty_after:
        raise DataError(f"{split_dir}: every image of class(es) {', '.join(empty_after)} is unreadable")
    return FolderIndex(root=split_dir, class_names=list(class_names), samples=samples, bad_files=bad)
