"""Test data that several test modules write: damaged image files as real datasets contain them."""
from __future__ import annotations

import io
from pathlib import Path
from typing import List

import numpy as np
from PIL import Image

__all__ = ["write_header_damaged_jpegs"]


def write_header_damaged_jpegs(folder: Path, count: int, seed: int = 0, prefix: str = "damaged") -> List[Path]:
    """JPEGs with 1 to 5 random bytes changed between the start marker and the start of scan.

    The bytes land in the quantisation and Huffman tables and the frame header: Pillow's header
    check passes most of them, and MindSpore's ``vision.Decode`` dies on about one in five
    with SIGSEGV or SIGFPE (measured on 60 such files: 13 signals, 18 exceptions, 29 decoded).
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(buffer, format="JPEG", quality=90)
        data = bytearray(buffer.getvalue())
        start_of_scan = data.find(b"\xff\xda")
        for _ in range(rng.integers(1, 6)):
            data[rng.integers(2, start_of_scan)] = rng.integers(0, 256)
        path = folder / f"{prefix}{i:03d}.jpg"
        path.write_bytes(bytes(data))
        paths.append(path)
    return paths
