"""Read tensors from checkpoint files into numpy, without executing pickled code.

Formats (detected from the file's bytes, not its extension):
    * PyTorch zip (``.pth``/``.bin``/``.pt``): ``torch.load(weights_only=True)`` when torch is
      importable, otherwise a restricted unpickler that can only rebuild tensors, storages,
      ordered dicts and plain containers;
    * safetensors;
    * MindSpore ``.ckpt`` (protobuf).
"""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any, Dict

import numpy as np

__all__ = ["CheckpointError", "file_format", "read_tensors", "read_torch_zip", "read_safetensors",
           "read_mindspore_ckpt"]


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


_TORCH_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}
_TORCH_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16, "bfloat16": "bfloat16",
    "int64": np.int64, "int32": np.int32, "int16": np.int16, "int8": np.int8, "uint8": np.uint8, "bool": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": "bfloat16", "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}


def _from_buffer(buffer: bytes, dtype: Any, count: int = -1, offset: int = 0) -> np.ndarray:
    """numpy view of raw little-endian data; bfloat16 is widened to float32."""
    if dtype == "bfloat16":
        raw = np.frombuffer(buffer, dtype=np.uint16, count=count, offset=offset)
        return (raw.astype(np.uint32) << 16).view(np.float32)
    return np.frombuffer(buffer, dtype=dtype, count=count, offset=offset)


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` and friends: only carries a dtype."""

    def __init__(self, dtype: Any) -> None:
        self.dtype = dtype


class _Storage:
    def __init__(self, data: np.ndarray) -> None:
        self.data = data


def _rebuild_tensor(storage: _Storage, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
    flat = storage.data
    if not size:
        return flat[offset].copy()
    itemsize = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=tuple(size),
                                           strides=tuple(s * itemsize for s in stride))
    return np.array(view)


def _rebuild_parameter(data: np.ndarray, *_: Any) -> np.ndarray:
    return data


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ``data.pkl`` of a torch zip checkpoint that only rebuilds tensors.

    Any global outside the allow-list (which is what a malicious pickle needs in order to
    run code, e.g. ``os.system`` or ``builtins.eval``) raises :class:`CheckpointError`.
    """

    def __init__(self, file: io.BytesIO, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(file)
        self.archive = archive
        self.prefix = prefix
        self.storages: Dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return _rebuild_parameter
        if module == "torch" and name in _TORCH_STORAGE_DTYPES:
            return _StorageType(_TORCH_STORAGE_DTYPES[name])
        if module == "torch" and name in _TORCH_DTYPES:
            return _StorageType(_TORCH_DTYPES[name])
        raise CheckpointError(
            f"refusing to unpickle global '{module}.{name}': this .pth file contains objects other than "
            "tensors (a pickle can run arbitrary code when loaded). If you trust it, re-save its state dict "
            "with torch.save(model.state_dict(), path) or convert it to safetensors")

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise CheckpointError(f"unsupported persistent id in torch checkpoint: {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        if key not in self.storages:
            dtype = storage_type.dtype if isinstance(storage_type, _StorageType) else None
            if dtype is None:
                raise CheckpointError(f"unsupported storage type {storage_type!r} in torch checkpoint")
            raw = self.archive.read(f"{self.prefix}data/{key}")
            self.storages[key] = _Storage(_from_buffer(raw, dtype, count=numel))
        return self.storages[key]


def read_torch_zip(path: str) -> Any:
    """Load a PyTorch zip checkpoint as nested containers of numpy arrays."""
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    if torch is not None:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise CheckpointError(f"torch refused to load {path} with weights_only=True: {exc}") from exc
        return _torch_to_numpy(obj)
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
            if not pickles:
                raise CheckpointError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl)")
            prefix = pickles[0][: -len("data.pkl")]
            unpickler = _RestrictedUnpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix)
            return unpickler.load()
    except (zipfile.BadZipFile, EOFError, KeyError, struct.error, pickle.UnpicklingError) as exc:
        raise CheckpointError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); "
                              "download or copy it again") from exc


def _torch_to_numpy(obj: Any) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        tensor = obj.detach().cpu()
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        return tensor.numpy().copy()
    if isinstance(obj, dict):
        return OrderedDict((k, _torch_to_numpy(v)) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        return type(obj)(_torch_to_numpy(v) for v in obj)
    return obj


def read_safetensors(path: str) -> Dict[str, np.ndarray]:
    """Read a safetensors file (bfloat16 widened to float32)."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        (header_len,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8:8 + header_len])
    except (struct.error, ValueError) as exc:
        raise CheckpointError(f"{path} is not a valid safetensors file ({exc})") from exc
    base = 8 + header_len
    out: Dict[str, np.ndarray] = OrderedDict()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        if base + end > len(data):
            raise CheckpointError(f"{path} is truncated: tensor {name!r} runs past the end of the file")
        dtype = _SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: unsupported safetensors dtype {info['dtype']} for {name!r}")
        array = _from_buffer(data[base + start:base + end], dtype)
        out[name] = array.reshape(info["shape"]).copy()
    return out


def read_mindspore_ckpt(path: str) -> Dict[str, np.ndarray]:
    """Read a MindSpore ``.ckpt`` into numpy arrays (string entries are skipped)."""
    import mindspore as ms

    try:
        params = ms.load_checkpoint(path)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} is not a readable MindSpore checkpoint (truncated or corrupt?): "
                              f"{str(exc).splitlines()[0]}") from exc
    return OrderedDict((k, v.asnumpy()) for k, v in params.items() if hasattr(v, "asnumpy"))


def file_format(path: str) -> str:
    """The container of the file at ``path``, from its first bytes: ``torch_zip``, ``safetensors``,
    ``torch_legacy`` (PyTorch before 1.6), ``empty``, else ``other`` (a MindSpore ``.ckpt`` has no magic bytes)."""
    size = os.path.getsize(path)
    if size == 0:
        return "empty"
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch_zip"
    if len(head) > 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] < size:
        return "safetensors"
    if head[:2] == b"\x80\x02":
        return "torch_legacy"
    return "other"


def read_tensors(path: str) -> Any:
    """Read any supported checkpoint file; the result may still be nested (``{'model': ...}``)."""
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if os.path.isdir(path):
        for candidate in ("model.safetensors", "pytorch_model.bin"):
            if os.path.exists(os.path.join(path, candidate)):
                return read_tensors(os.path.join(path, candidate))
        raise CheckpointError(f"{path} is a directory without model.safetensors or pytorch_model.bin")
    container = file_format(path)
    if container == "empty":
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); the write was probably interrupted")
    if container == "torch_zip":
        return read_torch_zip(path)
    if container == "safetensors":
        return read_safetensors(path)
    if container == "torch_legacy":
        raise CheckpointError(f"{path} uses PyTorch's legacy (pre-1.6) pickle format; re-save it with a "
                              "current torch.save or convert it to safetensors")
    if path.endswith(".ckpt"):
        return read_mindspore_ckpt(path)
    raise CheckpointError(f"{path} is not a recognised checkpoint (expected a PyTorch .pth/.bin, a "
                          ".safetensors or a MindSpore .ckpt file)")
