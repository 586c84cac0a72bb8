"""Fetch one published file into the cache, the way a shared cluster can trust.

- The cache is ``pretrained_dir`` if given (a folder that must exist: a named one is never created),
  else ``$MINDSWIN_PRETRAINED_DIR``, else ``$XDG_CACHE_HOME/mindswin/pretrained``
  (``~/.cache/mindswin/pretrained``), created when needed; a file sits at
  ``CACHE/SOURCE/...`` (:attr:`WeightFile.cache_name`). A file already there is used without any
  network access: a filled cache (or a folder on shared storage) means no downloads at all.
- A download is written to ``NAME.partial`` and renamed only once complete and verified, so a
  partial file never looks complete. A connection cut mid-body is resumed with an HTTP Range
  request (up to :data:`RESUMES` times per call); a process killed mid-download leaves the
  ``.partial``, which the next call resumes. Any failure this process sees (404, no network,
  timeout, full disk, wrong checksum) removes what it wrote.
- The SHA-256 (or its published prefix) is checked before the file is used; where none is
  published, the first bytes (a ``.pth``/``.bin`` is a PyTorch zip, a ``.safetensors`` a safetensors
  file). A mismatch removes the file and is one error line naming the source.
- ``$MINDSWIN_PRETRAINED_MIRROR`` (or ``mirror=``) is a base URL that replaces every publisher:
  the file is fetched from ``MIRROR/CACHE_NAME``, so a filled cache served over HTTP is a mirror.
  Without it, ``$HF_ENDPOINT`` replaces ``https://huggingface.co`` as in huggingface_hub.
  ``MINDSWIN_OFFLINE=1`` forbids downloads (a missing file is an error saying where to put it).
- Under msrun, local rank 0 of each node downloads; the other local ranks wait for the file (or
  for rank 0's failure, which they report), and give up after ``$MINDSWIN_PRETRAINED_WAIT``
  seconds (default 600) without progress. Independent jobs sharing a cache take a file lock.
- A progress bar on a terminal; elsewhere one log line when a download starts and one when it ends.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import http.client
import json
import logging
import os
import socket
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator, Optional

from ..checkpoint.readers import CheckpointError, file_format
from ..config.rules import ConfigError
from ..models.published import WeightFile

__all__ = ["CACHE_VARIABLE", "MIRROR_VARIABLE", "OFFLINE_VARIABLE", "WAIT_VARIABLE", "TIMEOUT_VARIABLE", "RESUMES",
           "default_cache_dir", "cache_dir", "source_url", "cached_path", "fetch", "local_rank", "sha256_of"]

_logger = logging.getLogger("mindswin.pretrained")

CACHE_VARIABLE = "MINDSWIN_PRETRAINED_DIR"
MIRROR_VARIABLE = "MINDSWIN_PRETRAINED_MIRROR"
OFFLINE_VARIABLE = "MINDSWIN_OFFLINE"
WAIT_VARIABLE = "MINDSWIN_PRETRAINED_WAIT"
TIMEOUT_VARIABLE = "MINDSWIN_PRETRAINED_TIMEOUT"
# Resumed requests per call after a connection is cut mid-body (each must bring new bytes).
RESUMES = 3
_CHUNK = 1 << 20
_HUB = "https://huggingface.co"
# ENOSPC: no space left; EDQUOT: quota; EFBIG: file-size limit.
_STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def default_cache_dir() -> str:
    """``$MINDSWIN_PRETRAINED_DIR``, else ``$XDG_CACHE_HOME/mindswin/pretrained`` (``~/.cache/...``)."""
    if os.environ.get(CACHE_VARIABLE):
        return os.path.expanduser(os.environ[CACHE_VARIABLE])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mindswin", "pretrained")


def cache_dir(pretrained_dir: str = "") -> str:
    """The folder weights are looked up in and downloaded to: ``pretrained_dir`` if set."""
    return os.path.abspath(os.path.expanduser(pretrained_dir)) if pretrained_dir else default_cache_dir()


def _check_named_cache(pretrained_dir: str) -> None:
    """A ``pretrained_dir`` the user named must be a folder that exists: a typo there would otherwise be
    created and filled with a fresh download (only the default cache is created when needed).

    Raises:
        ConfigError: One line: what is wrong with the folder and what to do.
    """
    path = cache_dir(pretrained_dir)
    if pretrained_dir and not os.path.isdir(path):
        what = "is a file, not a folder" if os.path.exists(path) else "does not exist"
        raise ConfigError(f"pretrained_dir {path} {what}: published weights are looked up in, and downloaded into, "
                          "a folder that exists (a named one is never created); create it, fix --pretrained_dir, "
                          f"or leave it unset for the default cache {default_cache_dir()}")


def cached_path(file: WeightFile, pretrained_dir: str = "") -> str:
    """Where ``file`` is (or will be) in the cache."""
    return os.path.join(cache_dir(pretrained_dir), *file.cache_name.split("/"))


def source_url(file: WeightFile, mirror: str = "") -> str:
    """The URL ``file`` is fetched from: under the mirror if one is set, else the publisher's."""
    mirror = mirror or os.environ.get(MIRROR_VARIABLE, "")
    if mirror:
        return f"{mirror.rstrip('/')}/{file.cache_name}"
    endpoint = os.environ.get("HF_ENDPOINT", "").rstrip("/")
    if endpoint and file.url.startswith(_HUB + "/"):
        return endpoint + file.url[len(_HUB):]
    return file.url


def local_rank() -> int:
    """This process's rank on its node: ``LOCAL_RANK`` if set, else msrun's ``DEVICE_ID``, else 0."""
    if os.environ.get("LOCAL_RANK"):
        return int(os.environ["LOCAL_RANK"])
    if "MS_WORKER_NUM" in os.environ or "RANK_TABLE_FILE" in os.environ:
        return int(os.environ.get("DEVICE_ID") or 0)  # msrun sets it to the worker's local rank
    return 0


def _run_id() -> str:
    """Same for the workers one msrun started on a node (its children), different for the next run."""
    return f"{os.getppid()}:{os.environ.get('MS_SCHED_PORT', '')}"


def sha256_of(path: str) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _by_hand(file: WeightFile, path: str) -> str:
    """How to get the file without this machine downloading it (ends every error)."""
    return (f"place it by hand: download {file.url} on a machine that can and copy it to {path} (or point "
            f"--pretrained_dir / ${CACHE_VARIABLE} at a folder holding {file.cache_name}, or set "
            f"${MIRROR_VARIABLE} to a server that has it), or pass the file as --ckpt_path")


# The container of a published file without a checksum, by its name's extension (what the publishers write):
# readers.file_format's name for it, and how a message says it.
_CONTAINERS = {".pth": ("torch_zip", "a PyTorch zip file"), ".bin": ("torch_zip", "a PyTorch zip file"),
               ".safetensors": ("safetensors", "a safetensors file")}


def _verify(file: WeightFile, path: str, url: str, remove: bool, shown: Optional[str] = None) -> None:
    """Check ``path`` (named ``shown``: a download is checked before its rename) against the published
    checksum; where none is published, its first bytes against the container its name promises."""
    if file.sha256:
        actual = sha256_of(path)
        if actual.startswith(file.sha256.lower()):
            return
        problem = f"its sha256 is {actual[:16]}..., the {file.source} source publishes {file.sha256}..."
    else:
        container, described = _CONTAINERS.get(os.path.splitext(file.cache_name)[1], (None, ""))
        if container is None or file_format(path) == container:
            return
        problem = f"its first bytes are not those of {described} (the {file.source} source publishes no checksum)"
    if remove:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
    removed = "removed it; run again to download it again" if remove else "left it (local rank 0 manages the cache)"
    raise CheckpointError(f"{shown or path} from {url} is corrupt: {problem}; {removed}")


def _timeout() -> float:
    return float(os.environ.get(TIMEOUT_VARIABLE) or 60)


class _Cut(Exception):
    """The connection ended before the body was complete (resumable)."""


def _progress(total: Optional[int], done: int, name: str):
    """A tqdm bar on a terminal; None elsewhere (logs say start and end only)."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024, desc=name, leave=False)


def _receive(url: str, partial: str) -> None:
    """Append the rest of ``url``'s body to ``partial`` (which may hold a prefix); :class:`_Cut` if it ends early."""
    start = os.path.getsize(partial) if os.path.exists(partial) else 0
    headers = {"User-Agent": "mindswin"}
    if start:
        headers["Range"] = f"bytes={start}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_timeout())
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # the partial is not a prefix of this body: start over
            os.remove(partial)
            return _receive(url, partial)
        raise
    with response:
        status = getattr(response, "status", 200)
        if start and status != 206:
            start = 0  # the server ignored the Range: the body is the whole file
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        bar = _progress(total, start, os.path.basename(partial[:-len(".partial")]))
        written = start
        try:
            with open(partial, "ab" if start else "wb") as out:
                while True:
                    try:
                        chunk = response.read(_CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, socket.timeout) as exc:
                        raise _Cut(str(exc) or type(exc).__name__) from exc
                    if not chunk:
                        break
                    out.write(chunk)
                    written += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
                out.flush()
                os.fsync(out.fileno())
        finally:
            if bar is not None:
                bar.close()
        if total is not None and written < total:
            raise _Cut(f"{written} of {total} bytes")


def _download(file: WeightFile, url: str, path: str) -> None:
    """``url`` -> ``path`` via ``path.partial``: resumed, verified, renamed; every failure cleans up."""
    partial = path + ".partial"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    began = time.time()
    resumed = os.path.getsize(partial) if os.path.exists(partial) else 0
    _logger.info("downloading %s to %s%s", url, path, f" (resuming at byte {resumed})" if resumed else "")
    try:
        for attempt in range(RESUMES + 1):
            before = os.path.getsize(partial) if os.path.exists(partial) else 0
            try:
                _receive(url, partial)
                break
            except _Cut as exc:
                now = os.path.getsize(partial) if os.path.exists(partial) else 0
                if attempt == RESUMES or now <= before:
                    raise CheckpointError(f"cannot download {url} to {path}: the connection ended early ({exc}) "
                                          f"{attempt + 1} times; {_by_hand(file, path)}") from None
                _logger.warning("%s: the connection ended at byte %d; resuming", url, now)
        _verify(file, partial, url, remove=True, shown=path)
        os.replace(partial, path)
    except urllib.error.HTTPError as exc:
        _remove(partial)
        raise CheckpointError(f"cannot download {url} to {path}: HTTP {exc.code} {exc.reason}; "
                              f"{_by_hand(file, path)}") from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        _remove(partial)
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else (str(exc) or type(exc).__name__)
        raise CheckpointError(f"cannot download {url} to {path}: {reason} (no network, or the server did not "
                              f"answer within {_timeout():g} s; ${TIMEOUT_VARIABLE}); {_by_hand(file, path)}") from None
    except OSError as exc:
        _remove(partial)
        if exc.errno in _STORAGE_FULL:
            raise CheckpointError(f"cannot download {url} to {path}: {exc.strerror} in {os.path.dirname(path)}; "
                                  f"free space there or point --pretrained_dir / ${CACHE_VARIABLE} at another "
                                  f"disk; nothing was kept") from None
        raise CheckpointError(f"cannot download {url} to {path}: {exc.strerror or exc}; "
                              f"{_by_hand(file, path)}") from None
    except CheckpointError:
        _remove(partial)
        raise
    size = os.path.getsize(path)
    check = f"sha256 {file.sha256}... verified" if file.sha256 else f"no checksum published by {file.source}"
    _logger.info("downloaded %s (%.1f MB in %.1f s; %s)", path, size / 1e6, time.time() - began, check)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


def _lock_path(cache: str, file: WeightFile, suffix: str) -> str:
    return os.path.join(cache, ".locks", file.cache_name.replace("/", "__") + suffix)


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created), for jobs that share a cache; released on exit."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as exc:  # a filesystem without locks (some network mounts): go on unlocked
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            _logger.warning("%s: no file locks on this filesystem; downloading without one", path)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)


def _wait_for(file: WeightFile, path: str, url: str, cache: str) -> None:
    """Wait (a rank other than local rank 0) for local rank 0 to put ``path`` in place or to fail."""
    failed = _lock_path(cache, file, ".failed")
    partial = path + ".partial"
    patience = float(os.environ.get(WAIT_VARIABLE) or 600)
    last_change, last_size = time.time(), -1
    announced = False
    while not os.path.exists(path):
        try:
            with open(failed) as f:
                marker = json.load(f)
        except (FileNotFoundError, ValueError):  # none yet, or being written
            marker = {}
        if marker.get("run") == _run_id():  # an earlier run's marker is not this run's failure
            raise CheckpointError(f"local rank 0 could not fetch the weights: {marker['message']}")
        size = os.path.getsize(partial) if os.path.exists(partial) else -1
        if size != last_size:
            last_change, last_size = time.time(), size
        if time.time() - last_change > patience:
            raise CheckpointError(f"waited {patience:g} s without progress for local rank 0 to download {url} to "
                                  f"{path} (${WAIT_VARIABLE} sets the wait); see rank 0's log, or "
                                  f"{_by_hand(file, path)}")
        if not announced:
            _logger.info("waiting for local rank 0 to download %s", path)
            announced = True
        time.sleep(0.2)


def fetch(file: WeightFile, *, pretrained_dir: str = "", mirror: str = "", rank: Optional[int] = None) -> str:
    """The local path of ``file``: from the cache if there (verified), else downloaded into it.

    Args:
        file: A table entry's file.
        pretrained_dir: Cache folder, which must exist (default: :func:`default_cache_dir`, created if missing).
        mirror: Base URL replacing the publisher (default ``$MINDSWIN_PRETRAINED_MIRROR``).
        rank: Local rank on this node (default :func:`local_rank`); only rank 0 downloads.

    Raises:
        ConfigError: ``pretrained_dir`` is given and is not an existing folder.
        CheckpointError: One line naming the URL, the cache path and how to place the file by hand.
    """
    _check_named_cache(pretrained_dir)
    cache = cache_dir(pretrained_dir)
    path = cached_path(file, pretrained_dir)
    url = source_url(file, mirror)
    rank = local_rank() if rank is None else rank
    verified = False
    if not os.path.exists(path):
        if os.environ.get(OFFLINE_VARIABLE, "") not in ("", "0"):
            raise CheckpointError(f"{path} is not in the cache and {OFFLINE_VARIABLE} forbids downloading {url}; "
                                  f"{_by_hand(file, path)}")
        if rank != 0:
            _wait_for(file, path, url, cache)
        else:
            verified = _fetch_as_rank0(file, path, url, cache)
    if not verified:
        # every rank checks what it loads; only the one that manages the cache removes a bad file
        _verify(file, path, url, remove=rank == 0)
    return path


def _fetch_as_rank0(file: WeightFile, path: str, url: str, cache: str) -> bool:
    """Download ``path`` under the cache's file lock; True when this call downloaded (and verified) it."""
    failed = _lock_path(cache, file, ".failed")
    try:
        os.makedirs(os.path.dirname(failed), exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"cannot create the weights cache {cache}: {exc.strerror}; point --pretrained_dir / "
                              f"${CACHE_VARIABLE} at a writable folder") from None
    _remove(failed)
    try:
        with _file_lock(_lock_path(cache, file, ".lock")):
            if os.path.exists(path):  # another job fetched it while this one waited for the lock
                return False
            _download(file, url, path)
            return True
    except CheckpointError as exc:
        # tell this node's other ranks, which wait for the file (an atomic write: they read it whole)
        tmp = f"{failed}.{os.getpid()}"
        with contextlib.suppress(OSError):
            with open(tmp, "w") as f:
                json.dump({"run": _run_id(), "message": str(exc)}, f)
            os.replace(tmp, failed)
        raise
