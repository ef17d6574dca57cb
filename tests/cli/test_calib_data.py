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


# ---------------------------------------------------------------- lazy reading


def _images(folder, n, size=(32, 32), seed=0):
    from PIL import Image

    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (*size, 3), np.uint8)
    for i in range(n):
        Image.fromarray(img).save(folder / f"{i:05d}.png")
    return folder


def test_batch_limit_applies_before_decoding(tmp_path, monkeypatch):
    """A folder of 2,000 images with a limit of 2 batches decodes only those 8 images (every image was
    decoded up front, then all but 8 thrown away)."""
    import ferroquant.calib_data as cd

    folder = _images(tmp_path / "img", 2000, (8, 8))
    decoded = []
    real = cd.load_image
    monkeypatch.setattr(cd, "load_image", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    batches = load_calibration_data(folder, [InputSpec("x", ("N", 3, 8, 8))], batch_size=4, limit=2)
    assert len(batches) == 2 and decoded == []  # nothing read before it is used
    assert [b["x"].shape for b in batches] == [(4, 3, 8, 8)] * 2
    assert len(decoded) == 8 and decoded[0].name == "00000.png"


@pytest.mark.parametrize("n", [100, 1000])
def test_memory_does_not_grow_with_the_folder(tmp_path, n):
    import tracemalloc

    folder = _images(tmp_path / "img", n)
    tracemalloc.start()
    for batch in load_calibration_data(folder, [InputSpec("x", ("N", 3, 32, 32))], batch_size=4, limit=2):
        assert batch["x"].shape == (4, 3, 32, 32)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < (1 << 20), f"{peak} bytes for {n} images"  # a few batches, whatever the folder holds


def test_arrays_are_read_when_used(tmp_path, monkeypatch):
    """Only headers are read up front; .npz chunks are loaded one at a time as batches reach them."""
    import ferroquant.calib_data as cd

    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", x=np.full((6, 16), i, np.float32))
    np.save(tmp_path / "big.npy", np.zeros((10, 16), np.float64))
    loads = []
    real = cd._Chunk.load
    monkeypatch.setattr(cd._Chunk, "load", lambda self: loads.append(self.path.name) or real(self))
    batches = load_calibration_data(tmp_path, X, batch_size=4)
    assert len(batches) == 3 * 2 + 3 and loads == []
    values = [float(b["x"][0, 0]) for b in batches]
    assert values == [0, 0, 1, 1, 2, 2, 0, 0, 0]
    assert loads == ["0.npz", "1.npz", "2.npz", "big.npy"]  # each chunk once, in order
    assert batches[-1]["x"].dtype == np.float32 and batches[-1]["x"].shape == (2, 16)
    np.save(tmp_path / "z.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DataError, match="z.npy.*shape"):  # checked from the header, before any use
        load_calibration_data(tmp_path / "z.npy", X)


# ---------------------------------------------------------------- dynamic dims and preprocessing


def test_input_shape_fills_dynamic_dims(tmp_path):
    from ferroquant.calib_data import parse_input_shape

    folder = _images(tmp_path / "img", 3, (40, 60))
    spec = [InputSpec("x", ("DynamicDimension.0", 3, "h", "w"))]
    with pytest.raises(DataError, match="--input-shape x:1,3,H,W"):
        load_calibration_data(folder, spec)
    shapes = dict([parse_input_shape("x:1,3,32,48")])
    b = load_calibration_data(folder, spec, input_shapes=shapes)
    assert len(b) == 3 and b[0]["x"].shape == (1, 3, 32, 48)  # a fixed first dim is the batch size
    b = load_calibration_data(folder, spec, batch_size=2, input_shapes=dict([parse_input_shape("-1,3,32,48")]))
    assert [f["x"].shape[0] for f in b] == [2, 1]
    for bad, msg in [("x:1,3,32", "3 dims"), ("y:1,3,32,32", "not an input"), ("x:1,4,32,32", "fixed at 3"),
                     ("x:1,3,a b,2", "not a dimension")]:
        with pytest.raises(DataError, match=msg):
            load_calibration_data(folder, spec, input_shapes=dict([parse_input_shape(bad)]))


def _flat(tmp_path, rgb, size=(20, 40), name="c.png"):
    from PIL import Image

    folder = tmp_path / name.split(".")[0]
    folder.mkdir()
    Image.fromarray(np.full((*size, 3), rgb, np.uint8)).save(folder / name)
    return folder


@pytest.mark.parametrize("name,expect", [
    ("paddleocr", lambda v: (v / 255 - 0.5) / 0.5),
    ("tf", lambda v: (v - 127) / 128),
    ("none", lambda v: v),
])
def test_presets_compute_what_they_say(tmp_path, name, expect):
    folder = _flat(tmp_path, (51, 102, 204))
    x = load_calibration_data(folder, [InputSpec("x", ("N", 3, 16, 16))], preprocess=name)[0]["x"][0]
    np.testing.assert_allclose(x[:, 8, 8], [expect(51.0), expect(102.0), expect(204.0)], rtol=1e-5, atol=1e-5)


def test_letterbox_bgr_and_options(tmp_path):
    from ferroquant.preprocess import preset

    folder = _flat(tmp_path, (255, 0, 0), size=(16, 32))  # a red 32x16 (w x h) image
    p = preset("yolo").with_options(channel_order="BGR")
    x = load_calibration_data(folder, [InputSpec("x", ("N", 3, 32, 32))], preprocess=p)[0]["x"][0]
    np.testing.assert_allclose(x[:, 0, 0], [114 / 255] * 3, rtol=1e-6)  # padding above the picture
    np.testing.assert_allclose(x[:, 16, 16], [0, 0, 1], atol=1e-6)  # red, last in BGR order
    assert np.allclose(x[:, 8:24, :], x[:, 16:17, 16:17], atol=1e-5)  # the band 8..24 is the picture
    gray = load_calibration_data(folder, [InputSpec("x", ("N", 1, 8, 8))], preprocess="none")[0]["x"]
    assert gray.shape == (1, 1, 8, 8) and abs(float(gray[0, 0, 4, 4]) - 76.245) < 1  # luminance of red
    with pytest.raises(DataError, match="mean has 3 values but the input has 1"):
        load_calibration_data(folder, [InputSpec("x", ("N", 1, 8, 8))], preprocess="imagenet")[0]


def test_sixteen_bit_png_is_not_clipped(tmp_path):
    """A 16-bit grayscale PNG went through Pillow's convert('RGB'), which clips every value above 255."""
    from PIL import Image

    ramp = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    (tmp_path / "g").mkdir()
    Image.fromarray(ramp).save(tmp_path / "g" / "ramp.png")
    x = load_calibration_data(tmp_path / "g", [InputSpec("x", ("N", 3, 32, 32))], preprocess="none")[0]["x"][0]
    np.testing.assert_allclose(x[0], ramp / 257.0, rtol=1e-5)
    assert np.count_nonzero(x[0] >= 255) == 0 and x[0].max() > 254
