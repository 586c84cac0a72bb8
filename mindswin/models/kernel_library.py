"""Building, caching and choosing the fused CPU kernel library (``csrc/cpu_kernels.c``).

The library is compiled once per machine type with the system C compiler
(:data:`COMPILE_FLAGS`) into a cache directory keyed by everything that changes the binary
(source, flags, compiler, instruction set), written atomically so concurrent processes never
load a partial file. :func:`use_cpu_kernels` says whether cells built now use it (CPU backend
and a library, unless :func:`cpu_kernels` forces a choice); :mod:`mindswin.models.kernels`
holds the cells that call it.

The kernels keep IEEE inf/NaN semantics (no ``-ffast-math``, which lets the compiler assume
there are none): dynamic loss scaling detects an overflow by the inf/NaN it leaves in the
gradients, so an inf or NaN anywhere in a step must reach them.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Iterator, Optional

import mindspore as ms

__all__ = ["use_cpu_kernels", "cpu_kernels", "kernel_choice", "KERNELS", "compiled_library", "compile_flags",
           "COMPILE_FLAGS", "MARCH_ENV", "SOURCE"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).resolve().parent / "csrc" / "cpu_kernels.c"
# Every flag keeps inf/NaN semantics. -fassociative-math (which needs -fno-signed-zeros and
# -fno-trapping-math) lets sums vectorise by reordering them; -fno-math-errno makes sqrtf one
# instruction. Not -ffast-math: its -ffinite-math-only assumes there is no inf or NaN (and
# folds isnan() away), and GCC < 13 then also links crtfastmath.o into the library, which
# turns on flush-to-zero in the process that loads it.
COMPILE_FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fno-signed-zeros",
                 "-fassociative-math", "-fopenmp-simd", "-shared", "-fPIC")
LINK_FLAGS = ("-lpthread", "-lm", "-ldl")
# Benchmarking and testing only: build for another instruction set than this CPU's, e.g.
# ``MINDSWIN_KERNEL_MARCH=znver3`` (an AVX2 AMD EPYC), ``x86-64-v3`` (any AVX2 x86-64) or
# ``"native -mno-avx512f"``: the first word replaces ``native`` in ``-march=native``, the rest
# (``-m`` flags only) follow it. Keyed into the cache like any other flag. A target the CPU
# cannot run crashes the process with an illegal instruction: users leave this unset.
MARCH_ENV = "MINDSWIN_KERNEL_MARCH"

_forced: Optional[bool] = None


# What a model's builder may be told to compute with (``build_model(..., kernels=...)``).
KERNELS = {
    "auto": "the fused CPU kernels on MindSpore's CPU backend when the library builds, else MindSpore's own ops",
    "cpu": "the fused CPU kernels (CPU backend and a C compiler needed)",
    "native": "MindSpore's own ops only: the Ascend and GPU path, and what an exported file needs",
}


def kernel_choice(kernels: str) -> Optional[bool]:
    """``kernels`` (a key of :data:`KERNELS`) as :func:`cpu_kernels` takes it: None leaves the choice to
    :func:`use_cpu_kernels` (the backend, or an enclosing :func:`cpu_kernels`).

    Raises:
        ValueError: An unknown name, or ``"cpu"`` where the fused kernels cannot run.
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(KERNELS)}, got {kernels!r}")
    if kernels == "cpu":
        if ms.get_context("device_target") != "CPU" or compiled_library() is None:
            raise ValueError(f"kernels 'cpu': the fused CPU kernels run on MindSpore's CPU backend with a C compiler "
                             f"(device_target here: {ms.get_context('device_target')}); use 'auto' or 'native'")
        return True
    return False if kernels == "native" else None


@contextlib.contextmanager
def cpu_kernels(enabled: Optional[bool]) -> Iterator[None]:
    """Force the fused CPU kernels on or off (None: leave the choice as it is) for cells built inside the block.

    The builder's ``kernels`` argument is the way to choose (:func:`kernel_choice`); each cell
    decides once, when it is built, so models built either way live side by side in one process.
    Tests that compare both variants also use this block directly.
    """
    global _forced
    previous = _forced
    if enabled is not None:
        _forced = enabled
    try:
        yield
    finally:
        _forced = previous


def use_cpu_kernels() -> bool:
    """Whether cells built now should use the fused CPU kernels."""
    if _forced is not None:
        return _forced
    return ms.get_context("device_target") == "CPU" and compiled_library() is not None


def _cache_dir() -> Path:
    root = os.environ.get("MINDSWIN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "mindswin")
    return Path(root)


def _march_flags() -> tuple:
    """``-march=native``, or the target ``$MINDSWIN_KERNEL_MARCH`` names (see :data:`MARCH_ENV`)."""
    override = os.environ.get(MARCH_ENV, "").strip()
    if not override:
        return ("-march=native",)
    first, *rest = shlex.split(override)
    if first.startswith("-") or not all(flag.startswith("-m") and not flag.startswith("-march") for flag in rest):
        raise ValueError(f"{MARCH_ENV}={override!r}: expected an -march value followed by -m flags, "
                         "e.g. 'znver3' or 'native -mno-avx512f'")
    return (f"-march={first}", *rest)


def compile_flags() -> tuple:
    """:data:`COMPILE_FLAGS` with the target of :func:`_march_flags`."""
    march = _march_flags()
    return tuple(flag for part in COMPILE_FLAGS for flag in (march if part == "-march=native" else (part,)))


def _isa_fingerprint(compiler: str, march: tuple = ("-march=native",)) -> str:
    """The instruction set ``march`` (``-march=native``) stands for on this machine, as the compiler resolves it.

    A cache directory shared by machines of different types (an AVX-512 and an AVX2 one on
    a network home) must not hand one a library built for the other, which would crash
    with an illegal instruction. The compiler's driver (``-###``) prints the target it
    passes on: GCC's ``-march=<cpu>``, ``-mtune`` and one ``-m[no-]<feature>`` per ISA
    extension, plus its cache-size tuning; clang's ``-target-cpu`` and ``-target-feature``
    list. If that fails, the CPU's feature flags from ``/proc/cpuinfo`` stand in.
    """
    try:
        result = subprocess.run([compiler, *march, "-###", "-E", "-"], stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=60, check=False)
        driver = result.stderr if result.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        driver = ""
    target = []
    for line in driver.splitlines():
        try:
            tokens = shlex.split(line)
        except ValueError:  # not a command line (an unbalanced quote in a banner)
            continue
        for previous, token in zip([""] + tokens, tokens):
            if token.startswith("-m") or previous in ("--param", "-target-cpu", "-tune-cpu", "-target-feature"):
                target.append(token)
    if any(token.startswith("-march=") for token in target) or "-target-cpu" in driver:
        return " ".join(target)
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    # x86 calls the feature line "flags", arm64 "Features"
    return next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")


def _machine_key(compiler: str) -> str:
    """Source, flags, compiler and instruction set: anything that changes the binary."""
    digest = hashlib.sha256(SOURCE.read_bytes())
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    isa = _isa_fingerprint(compiler, _march_flags())
    for part in (" ".join(compile_flags() + LINK_FLAGS), version, platform.machine(), isa):
        digest.update(part.encode() + b"\0")  # separated, so no two lists of parts hash alike
    return digest.hexdigest()[:16]


class _BuildError(RuntimeError):
    """The compiler ran and failed; the message is its stderr."""


@functools.cache
def compiled_library() -> Optional[str]:
    """Path of the compiled kernel library, building it on first use; None if it cannot be built.

    The compiler is ``$CC`` or the first of gcc / cc found. The build is written with
    :func:`~mindswin.fileio.atomic_write`, so concurrent processes (msrun workers)
    never load a partial file.
    """
    from ..fileio import atomic_write

    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        logger.warning("no C compiler found (set CC or install gcc): mindswin uses MindSpore's native CPU "
                       "kernels for LayerNorm/GELU/softmax/L2-normalise, which are several times slower")
        return None
    target = _cache_dir() / f"cpu_kernels-{_machine_key(compiler)}.so"
    if target.exists():
        return str(target)

    def build(path: str) -> None:
        result = subprocess.run([compiler, *compile_flags(), "-o", path, str(SOURCE), *LINK_FLAGS],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise _BuildError(result.stderr[-2000:])

    try:
        atomic_write(str(target), build)
    except _BuildError as exc:
        logger.warning("building the fused CPU kernels with %s failed; using MindSpore's native kernels:\n%s",
                       compiler, exc)
        return None
    except OSError as exc:
        logger.warning("cannot write the fused CPU kernels to %s (%s); set MINDSWIN_CACHE_DIR to a writable "
                       "folder. Using MindSpore's native kernels", target.parent, exc)
        return None
    return str(target)
