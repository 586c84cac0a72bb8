"""Crash-safe file writing shared by every layer (checkpoints, configs, results, kernel builds).

A file is written under a temporary name next to its destination and renamed over it,
so a kill at any moment leaves the previous version or the new one, never a mix. When
the disk fills up (or a quota or file-size limit is hit), the partial file is removed
and a :class:`DiskFullError` names the directory; files written before are untouched.
"""
from __future__ import annotations

import errno
import glob
import json
import os
import tempfile
from typing import Any, Callable

__all__ = ["DiskFullError", "atomic_write", "atomic_write_json", "append_line"]

# ENOSPC: no space left; EDQUOT: quota; EFBIG: file-size limit (RLIMIT_FSIZE, filesystem limit).
_STORAGE_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class DiskFullError(OSError):
    """A write failed for lack of space; nothing partial was left behind."""

    def __str__(self) -> str:
        return str(self.strerror)


def _file_mode() -> int:
    """Permissions of a new file as ``open()`` would make it: 0666 minus the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _storage_full(path: str, exc: OSError) -> DiskFullError:
    directory = os.path.dirname(os.path.abspath(path))
    return DiskFullError(exc.errno, f"cannot write {os.path.basename(path)} to {directory}: {exc.strerror}. Free "
                                    "space there (or point ckpt_save_dir/output to another disk); files written "
                                    "before are intact")


def atomic_write(path: str, write: Callable[[str], None]) -> None:
    """Run ``write(tmp_path)`` next to ``path``, then rename over it.

    Writers may create siblings of ``tmp_path`` (MindSpore's ``save_checkpoint`` writes
    ``<stem>.tmp`` first): all of them are removed if anything fails.

    Raises:
        DiskFullError: The disk, a quota or a file-size limit stopped the write.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno in _STORAGE_FULL:
            raise _storage_full(path, exc) from exc
        raise
    finally:
        for leftover in glob.glob(glob.escape(os.path.splitext(tmp)[0]) + ".*"):
            os.remove(leftover)


def atomic_write_json(path: str, obj: Any) -> None:
    """Write ``obj`` as indented JSON via :func:`atomic_write`."""

    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_write(path, write)


def append_line(path: str, line: str) -> None:
    """Append one line durably; a line that does not fit is cut off, never left half written.

    Raises:
        DiskFullError: The line could not be written in full.
    """
    data = (line.rstrip("\n") + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            if os.write(fd, data) != len(data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as exc:
            if exc.errno not in _STORAGE_FULL:
                raise
            os.ftruncate(fd, start)
            raise _storage_full(path, exc) from exc
    finally:
        os.close(fd)
