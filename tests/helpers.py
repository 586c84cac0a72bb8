"""Test data that several test modules write: damaged image files as real datasets contain them."""
from __future__ import annotations

import glob
import io
import os
import struct
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

__all__ = ["write_header_damaged_jpegs", "read_events"]


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


def _records(path: str):
    """The payloads of a TFRecord file (length, length CRC, data, data CRC)."""
    with open(path, "rb") as f:
        data = f.read()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        yield data[offset + 12:offset + 12 + length]
        offset += 12 + length + 4


def read_events(directory) -> Tuple[Dict[str, List[Tuple[int, float]]], Dict[str, List[Tuple[int, bytes]]]]:
    """``({tag: [(step, value)]}, {tag: [(step, encoded image)]})`` of the TensorBoard event files in ``directory``.

    Files are read in the order they were written, and TensorBoard's purge rule applied: a
    ``SessionLog.START`` at step N (a resumed writer's ``purge_step``) drops every earlier point
    at step N or later.
    """
    from tensorboardX.proto import event_pb2

    files = []
    for path in glob.glob(os.path.join(str(directory), "events.out.tfevents.*")):
        events = []
        for record in _records(path):
            event = event_pb2.Event()
            event.ParseFromString(record)
            events.append(event)
        files.append((events[0].wall_time if events else 0.0, events))
    scalars: Dict[str, List[Tuple[int, float]]] = {}
    images: Dict[str, List[Tuple[int, bytes]]] = {}
    for _, events in sorted(files, key=lambda f: f[0]):
        for event in events:
            if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
                for series in (*scalars.values(), *images.values()):
                    series[:] = [point for point in series if point[0] < event.step]
            for value in event.summary.value:
                if value.HasField("image"):
                    images.setdefault(value.tag, []).append((event.step, value.image.encoded_image_string))
                else:
                    scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars, images
