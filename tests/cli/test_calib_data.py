"""Calibration data from .npy/.npz files, folders of them, and image folders with a named preprocessing."""

from __future__ import annotations

import numpy as np
import pytest

from ferroquant.calib_data import InputSpec, load_calibration_data
from ferroquant.errors import DataError

X = [InputSpec("x", ("N", 16))]


def test_npy_is_split_into_batches(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(20 * 16, dtype=np.float64).reshape(20, 16))
    b = load_calibration_data(tmp_path / "a.npy", X, batch_size=8)
    assert [f["x"].shape for f in b] == [(8, 16), (8, 16), (4, 16)] and b[0]["x"].dtype == np.float32
    assert len(load_calibration_data(tmp_path / "a.npy", X, batch_size=8, limit=2)) == 2


def test_npz_by_input_name_and_a_folder(tmp_path):
    specs = [InputSpec("a", ("N", 2)), InputSpec("b", ("N", 3))]
    for i in range(2):
        np.savez(tmp_path / f"{i}.npz", a=np.full((4, 2), i, np.float32), b=np.zeros((4, 3), np.float32))
    b = load_calibration_data(tmp_path, specs, batch_size=4)
    assert len(b) == 2 and set(b[0]) == {"a", "b"} and b[1]["a"][0, 0] == 1
    np.savez(tmp_path / "pos.npz", np.zeros((3, 16)), np.ones((5, 16)))
    assert [f["x"].shape[0] for f in load_calibration_data(tmp_path / "pos.npz", X)] == [3, 5]


def test_fixed_batch_dimension(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((3, 16), np.float32))
    fixed = [InputSpec("x", (1, 16))]
    assert len(load_calibration_data(tmp_path / "a.npy", fixed)) == 3
    with pytest.raises(DataError, match="fixed at 1"):
        load_calibration_data(tmp_path / "a.npy", fixed, batch_size=2)


def test_image_folder_fitted_to_the_input(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40 + i, 60, 3), np.uint8)).save(tmp_path / f"{i}.png")
    spec = [InputSpec("img", ("N", 3, 20, 24))]
    b = load_calibration_data(tmp_path, spec, batch_size=2)
    assert [f["img"].shape for f in b] == [(2, 3, 20, 24), (1, 3, 20, 24)]
    assert -2.5 < b[0]["img"].mean() < 2.5  # ImageNet-normalized
    raw = load_calibration_data(tmp_path, spec, preprocess="none")
    assert raw[0]["img"].max() > 100  # RGB 0-255, only resized


def test_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_calibration_data(tmp_path / "nothing", X)
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(DataError, match="expected a .npy"):
        load_calibration_data(tmp_path / "t.txt", X)
    with pytest.raises(DataError, match="no .npy"):
        load_calibration_data(tmp_path, X)
    np.save(tmp_path / "s.npy", np.zeros((4, 3, 16), np.float32))
    with pytest.raises(DataError, match="shape"):
        load_calibration_data(tmp_path / "s.npy", X)
