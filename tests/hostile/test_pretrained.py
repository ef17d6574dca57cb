"""Issue 13, items 1-2: the legacy torch weights reader runs no code from the file and reads nothing outside a
tensor's storage. The crafted files are written here, byte by byte, with the standard library."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from ferroquant.examples.pretrained import PretrainedError, load_torch_legacy

MAGIC = 0x1950A86A20F9469CFC6C


class _Boom:
    """Unpickles into a call of ``Path.touch(marker)``: the file runs code if the reader lets it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (self.marker,))


class _Persistent(pickle.Pickler):
    """Pickles a state dict the way torch's legacy ``torch.save`` does: storages as persistent ids."""

    def persistent_id(self, obj):  # noqa: ANN001, ANN201
        return obj.pid if isinstance(obj, _FakeStorage) else None


class FloatStorage:
    """Stands for ``torch.FloatStorage``: pickled as a reference to the class, renamed below."""


class _FakeStorage:
    def __init__(self, key: str, numel: int) -> None:
        self.pid = ("storage", FloatStorage, key, "cpu", numel)


class _Rebuild:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, {})

    def __reduce__(self):  # noqa: ANN204
        return (_rebuild_tensor_v2, self.args)


def _rebuild_tensor_v2(*args):  # pragma: no cover - only its pickled reference is used
    raise AssertionError


def _pickle(obj, f) -> None:  # noqa: ANN001
    _Persistent(f, protocol=2).dump(obj)


def _patch_globals(blob: bytes) -> bytes:
    """Point the placeholders at the names torch's files use."""
    here = __name__.encode()
    blob = blob.replace(here + b"\n_rebuild_tensor_v2\n", b"torch._utils\n_rebuild_tensor_v2\n")
    return blob.replace(here + b"\nFloatStorage\n", b"torch\nFloatStorage\n")


def _chunks(size: tuple, stride: tuple, offset: int = 0, numel: int = 4) -> list:
    """The parts of a legacy file: magic, protocol, sys info, state dict, storage keys (pickles), storages."""
    import io

    st = _FakeStorage("0", numel)
    main = io.BytesIO()
    _pickle({"w": _Rebuild(st, offset, size, stride)}, main)
    return [pickle.dumps(MAGIC, protocol=2), pickle.dumps(1001, protocol=2),
            pickle.dumps({"little_endian": True}, protocol=2), _patch_globals(main.getvalue()),
            pickle.dumps(["0"], protocol=2),
            struct.pack("<q", numel) + np.arange(numel, dtype=np.float32).tobytes()]


def _legacy_file(path: Path, size: tuple, stride: tuple, offset: int = 0, numel: int = 4) -> Path:
    path.write_bytes(b"".join(_chunks(size, stride, offset, numel)))
    return path


def test_a_well_formed_file_still_reads(tmp_path):
    sd = load_torch_legacy(_legacy_file(tmp_path / "ok.pth", (2, 2), (2, 1)))
    np.testing.assert_array_equal(sd["w"], np.arange(4, dtype=np.float32).reshape(2, 2))


@pytest.mark.parametrize("where", ["magic", "protocol", "sys_info", "state_dict", "keys"])
def test_code_in_any_pickle_of_the_file_is_not_run(tmp_path, where):
    marker = tmp_path / "pwned"
    parts = _chunks((2, 2), (2, 1))
    parts[["magic", "protocol", "sys_info", "state_dict", "keys"].index(where)] = pickle.dumps(_Boom(marker),
                                                                                              protocol=2)
    path = tmp_path / "evil.pth"
    path.write_bytes(b"".join(parts))
    with pytest.raises(PretrainedError, match="evil.pth"):
        load_torch_legacy(path)
    assert not marker.exists(), "the weights file ran code"


@pytest.mark.parametrize("size,stride,offset", [
    ((64,), (1,), 0),          # 4 floats declared as 64
    ((2,), (1,), 3),           # offset past the end
    ((1 << 40,), (1 << 40,), 0),  # huge size and stride
    ((2, 2), (-1, 1), 0),      # negative stride
    ((2,), (1, 1), 0),         # size and stride disagree
])
def test_a_view_outside_its_storage_is_refused(tmp_path, size, stride, offset):
    path = _legacy_file(tmp_path / "oob.pth", size, stride, offset)
    with pytest.raises(PretrainedError, match="storage"):
        load_torch_legacy(path)


def test_a_storage_longer_than_the_file_is_refused_without_allocating(tmp_path):
    path = _legacy_file(tmp_path / "short.pth", (2,), (1,))
    blob = path.read_bytes()
    numel_at = len(blob) - 4 * 4 - 8
    path.write_bytes(blob[:numel_at] + struct.pack("<q", 1 << 50) + blob[numel_at + 8:])
    with pytest.raises(PretrainedError, match="short.pth"):
        load_torch_legacy(path)
