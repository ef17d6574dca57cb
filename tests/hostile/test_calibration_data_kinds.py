"""Issue 13, item 11 (a string as calibration data): refused with one clear error, not iterated character by
character; a path says how to load it, and a non-iterable names its type."""

from __future__ import annotations

from pathlib import Path

import pytest

import ferroquant as fq
from ferroquant.errors import DataError
from tests.cli.sensitive import sensitive_mlp


@pytest.mark.parametrize("data", ["calib.npy", b"\x00\x01", Path("calib.npy"), 3.5])
def test_a_string_path_or_number_is_not_calibration_data(tmp_path, data):
    with pytest.raises(DataError, match="calibration_data"):
        fq.quantize(sensitive_mlp(), data, str(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())
