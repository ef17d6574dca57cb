"""The ``ferroquant`` command through subprocesses (``python -m ferroquant``): every subcommand's help, the
files each writes, and one clear error line with a non-zero status for bad paths, configs, data and models."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from ferroquant.config import load_config
from tests.cli.sensitive import write_case

COMMANDS = ["config", "quantize", "calibrate", "merge", "fuse", "report", "autocal", "demo"]


def fq(*args: object, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "ferroquant", *map(str, args)], capture_output=True, text=True,
                       timeout=120)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("case"))


def assert_one_error_line(p: subprocess.CompletedProcess, *fragments: str) -> None:
    assert p.returncode != 0
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferroquant: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


def test_help_everywhere():
    assert all(c in fq("--help").stdout for c in COMMANDS)
    for c in COMMANDS:
        out = fq(c, "--help").stdout
        assert out.startswith(f"usage: ferroquant {c}") and "--quiet" in out
    assert "evaluate(model_path: str) -> float" in fq("autocal", "--help").stdout


def test_config_with_skips_and_options(case, tmp_path):
    out = tmp_path / "cfg" / "config.json"
    fq("config", case["model"], "-o", out, "--skip-type", "Gemm", "--skip", "fc3", "--act-algo", "hfmg",
       "--wts-algo", "nuq", "--symmetric")
    cfg = load_config(out)
    assert not cfg.layers["fc1"].quant_enable and not cfg.layers["fc3"].quant_enable
    assert cfg.layers["fc2"].quant_enable and cfg.layers["fc2"].activation.algorithm == "hfmg"
    assert cfg.layers["fc2"].weight.algorithm == "nuq" and cfg.symmetric is True
    assert cfg.skip_layer_types == ("Gemm",)


def test_quantize_writes_models_record_and_report(case, tmp_path):
    p = fq("quantize", case["model"], "--calib", case["calib"], "--out", tmp_path, "--act-algo", "hfmg",
           "--batch-size", "16", "--batch-num", "3", "--report")
    assert "calibrated 3 layers on 3 batches" in p.stdout
    assert "calibrating" in p.stderr  # a progress bar
    for f in ("model_fake_quant.onnx", "model_deploy.onnx", "model_quant_record.json", "config.json",
              "report/report.html", "report/report.json", "report/fallback_config.json"):
        assert (tmp_path / f).is_file(), f
    onnx.checker.check_model(onnx.load(str(tmp_path / "model_deploy.onnx")))
    doc = json.loads((tmp_path / "report/report.json").read_text())
    assert [l["name"] for l in doc["layers"]] == ["fc1", "fc2", "fc3"]
    assert doc["fallback"]["float_layers"] == ["fc2"]
    html = (tmp_path / "report/report.html").read_text()
    for l in doc["layers"]:
        assert l["clip_max"] > l["clip_min"] and l["histogram_png"] in html
        assert (tmp_path / "report" / l["histogram_png"]).stat().st_size > 2000


def test_quantize_without_report_prints_a_check(case, tmp_path):
    """Issue 14: the report cost 1-5x the quantization and was on by default. It is opt-in (--report); by
    default one line gives the fake-quant model's output SQNR against FP32 on the first calibration batch."""
    p = fq("quantize", case["model"], "--calib", case["calib"], "--out", tmp_path, "--batch-size", "16",
           "--batch-num", "3", "--no-latency-check")  # (else this tiny MLP is kept float: faster)
    assert not (tmp_path / "report").exists() and (tmp_path / "model_fake_quant.onnx").is_file()
    line = next(l for l in p.stdout.splitlines() if l.startswith("check:"))
    assert "first calibration batch (16 samples)" in line and "SQNR" in line and "cosine" in line, line
    db = float(line.split("SQNR ")[1].split(" dB")[0])
    fake = onnx.load(str(tmp_path / "model_fake_quant.onnx"))
    x = np.load(case["calib"])[:16]
    from ferroquant.onnx.session import cpu_session

    ref = cpu_session(onnx.load(case["model"]), optimize=False).run(None, {"x": x})[0]
    got = cpu_session(fake, optimize=False).run(None, {"x": x})[0]
    want = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    assert 0 < db < 60 and db == pytest.approx(want, abs=0.06)
    assert "--report" in p.stdout
    bad = fq("quantize", case["model"], "--calib", case["calib"], "--out", tmp_path, "--report", "--no-report",
             check=False)
    assert bad.returncode == 2 and "not allowed with" in bad.stderr


def test_quantize_with_a_report_patch_and_quiet(case, tmp_path):
    fq("report", case["model"], "--calib", case["calib"], "--out", tmp_path / "r", "--fallback-count", "1",
       "--no-plots")
    patch = tmp_path / "r" / "fallback_config.json"
    p = fq("quantize", case["model"], "--calib", case["calib"], "--config", patch, "--out", tmp_path / "q",
           "--no-report", "--quiet")
    assert p.stderr == "" and "calibrated 2 layers" in p.stdout
    assert not (tmp_path / "q" / "report").exists()


def test_fuse(tmp_path):
    from tests.onnx.builders import conv_bn

    model, _ = conv_bn(np.random.default_rng(0))
    onnx.save(model, str(tmp_path / "m.onnx"))
    p = fq("fuse", tmp_path / "m.onnx", "-o", tmp_path / "f.onnx")
    assert "1 fold(s)" in p.stdout
    assert not [n for n in onnx.load(str(tmp_path / "f.onnx")).graph.node if n.op_type == "BatchNormalization"]


def test_quantize_an_image_folder(tmp_path):
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("Conv", ["img", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])], "c",
                          [helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, 16, 20])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 16, 20])], [w])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(tmp_path / "c.onnx"))
    (tmp_path / "img").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (30, 40 + i, 3), np.uint8)).save(tmp_path / "img" / f"{i}.jpg")
    p = fq("quantize", tmp_path / "c.onnx", "--calib", tmp_path / "img", "--preprocess", "imagenet",
           "--batch-size", "2", "--out", tmp_path / "o", "--no-plots")
    assert "calibrated 1 layers on 3 batches" in p.stdout and (tmp_path / "o" / "model_deploy.onnx").is_file()


def test_autocal_meets_max_drop_with_one_float_layer(case, tmp_path):
    p = fq("autocal", case["model"], "--calib", case["calib"], "--evaluator", case["evaluator"],
           "--max-drop", "0.02", "--out", tmp_path, "-q")
    assert "float layers: fc2" in p.stdout
    s = json.loads((tmp_path / "autocal_summary.json").read_text())
    assert s["num_float_layers"] == 1 and s["met"] and s["fp32_metric"] - s["quantized_metric"] > 0.02
    assert not load_config(tmp_path / "config.json").layers["fc2"].quant_enable


@pytest.mark.parametrize("kind", ["missing model", "missing calib", "bad config", "config with options",
                                  "wrong shape", "wrong input name", "malformed model", "missing evaluator",
                                  "bad evaluator", "images for a 2-D input"])
def test_errors_are_one_clear_line(case, tmp_path, kind):
    m, c = case["model"], case["calib"]
    q = ["quantize", m, "--calib", c, "--out", tmp_path / "o", "-q"]
    if kind == "missing model":
        args, frag = ["quantize", tmp_path / "no.onnx", "--calib", c, "--out", tmp_path], ["model file not found"]
    elif kind == "missing calib":
        args, frag = ["quantize", m, "--calib", tmp_path / "no.npy", "--out", tmp_path], ["not found", "no.npy"]
    elif kind == "bad config":
        (tmp_path / "bad.json").write_text('{"layers": {"fc1": {"layer_type": "Gemm", "quant_enable": "yes"}}}')
        args, frag = q + ["--config", tmp_path / "bad.json"], ["'fc1'", "quant_enable"]
    elif kind == "config with options":
        fq("config", m, "-o", tmp_path / "ok.json")
        args, frag = q + ["--config", tmp_path / "ok.json", "--bits", "4"], ["--config cannot be combined"]
    elif kind == "wrong shape":
        np.save(tmp_path / "w.npy", np.zeros((8, 12), np.float32))
        args, frag = ["quantize", m, "--calib", tmp_path / "w.npy", "--out", tmp_path], ["[8, 12]", "'x'"]
    elif kind == "wrong input name":
        np.savez(tmp_path / "w.npz", y=np.zeros((8, 16), np.float32))
        args, frag = ["quantize", m, "--calib", tmp_path / "w.npz", "--out", tmp_path], ["['y']", "['x']"]
    elif kind == "malformed model":
        (tmp_path / "bad.onnx").write_bytes(b"not a model")
        args, frag = ["fuse", tmp_path / "bad.onnx", "-o", tmp_path / "f.onnx"], ["not an ONNX"]
    elif kind == "missing evaluator":
        args, frag = ["autocal", m, "--calib", c, "--evaluator", tmp_path / "e.py", "--max-drop", "0.01",
                      "--out", tmp_path], ["evaluator file not found"]
    elif kind == "bad evaluator":
        (tmp_path / "e.py").write_text("x = 1\n")
        args, frag = ["autocal", m, "--calib", c, "--evaluator", tmp_path / "e.py", "--max-drop", "0.01",
                      "--out", tmp_path], ["defines no function evaluate"]
    else:
        from PIL import Image

        (tmp_path / "img").mkdir()
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(tmp_path / "img" / "a.png")
        args, frag = ["report", m, "--calib", tmp_path / "img", "--out", tmp_path], ["[N, C, H, W]"]
    assert_one_error_line(fq(*args, check=False), *frag)


def test_debug_shows_the_traceback(tmp_path):
    p = fq("fuse", tmp_path / "no.onnx", "-o", tmp_path / "f.onnx", "--debug", check=False)
    assert p.returncode != 0 and "Traceback" in p.stderr and "ModelError" in p.stderr


def test_weights_demo_is_reachable():
    p = fq("demo", "--weights", "--layers", "2", "--no-reference")
    assert "ARQ int8" in p.stdout and "features.0.0.weight" in p.stdout


def test_dynamic_image_model_from_a_folder(tmp_path):
    """A det-style model with every input dim dynamic, calibrated from images: --input-shape gives the size,
    a preset and options give the normalization; bad options are one clear line."""
    from onnx import TensorProto, helper, numpy_helper
    from PIL import Image

    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Sigmoid", ["c"], ["y"], name="sig")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])],
                              initializer=[numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=7)
    onnx.save(model, str(tmp_path / "det.onnx"))
    (tmp_path / "img").mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (50, 70, 3), np.uint8)).save(tmp_path / "img" / f"{i}.png")
    base = ["quantize", tmp_path / "det.onnx", "--calib", tmp_path / "img", "-q", "--no-report"]
    assert_one_error_line(fq(*base, "--out", tmp_path / "o", check=False), "--input-shape x:1,3,H,W")
    out = fq(*base, "--out", tmp_path / "o", "--input-shape", "x:-1,3,32,48", "--batch-size", "2", "--batch-num", "2",
             "--preprocess", "paddleocr", "--channel-order", "BGR", "--resize", "letterbox").stdout
    assert "calibrated 1 layers on 2 batches" in out
    out = fq(*base, "--out", tmp_path / "o2", "--input-shape", "x:1,3,32,32", "--mean", "127", "--std", "128",
             "--scale", "1", "--resize", "plain").stdout
    assert "on 5 batches" in out
    assert_one_error_line(fq(*base, "--out", tmp_path / "o3", "--input-shape", "x:1,3,32,32", "--scale", "1/0",
                             check=False), "--scale")
    assert_one_error_line(fq(*base, "--out", tmp_path / "o3", "--input-shape", "x:1,3,32,32", "--std", "0",
                             check=False), "std must not be 0")
