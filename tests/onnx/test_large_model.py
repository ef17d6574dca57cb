"""A generated model over 2 GB (external data): it loads, calibrates (onnxruntime session from a path),
quantizes and saves (external data for the fake-quant model), and the quantization's peak memory stays near
twice the weights. The quantization runs in a child process so its peak RSS is its own; the test prints it.

Costs about 40 s and 6 GB of memory at peak on a 2-core machine (marked slow; it still runs in CI)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ferroquant.onnx import external
from ferroquant.onnx.external import PROTOBUF_LIMIT
from tests.onnx import builders as B

WIDTH, LAYERS = 8192, 9  # 9 weights of 8192 x 8192 float32 = 2.25 GiB


def _write_model(path: Path) -> int:
    """x[N, 8192] -> (Gemm(transB=1) -> Relu) x 9, weights written straight to ``<path>.data`` one at a time (the
    test process never holds more than two of them). Returns the bytes of weights."""
    rng = np.random.default_rng(0)
    base = (rng.standard_normal((WIDTH, WIDTH), dtype=np.float32) / np.float32(np.sqrt(WIDTH) / 1.4))
    data = path.name + ".data"
    inits, nodes, x = [], [], "x"
    with open(path.parent / data, "wb") as f:
        for i in range(LAYERS):
            w = np.roll(base, 97 * i, axis=1) if i else base
            offset = f.tell()
            f.write(w.tobytes())
            t = TensorProto(name=f"w{i}", data_type=TensorProto.FLOAT, dims=w.shape)
            t.data_location = TensorProto.EXTERNAL
            for k, v in (("location", data), ("offset", str(offset)), ("length", str(w.nbytes))):
                e = t.external_data.add()
                e.key, e.value = k, v
            inits.append(t)
            nodes.append(helper.make_node("Gemm", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}", transB=1))
            x = f"h{i}"
            if i < LAYERS - 1:
                nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
                x = f"r{i}"
    graph = helper.make_graph(nodes, "large", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", WIDTH])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", WIDTH])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path.write_bytes(model.SerializeToString())
    return LAYERS * WIDTH * WIDTH * 4


def _small(rng: np.random.Generator):
    """Conv -> BN -> Relu -> Gemm, small enough to run the large-model code paths in a blink."""
    inits = {"w": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), **B.bn_params(rng, 8),
             "g": rng.normal(0, 0.3, (4, 8 * 6 * 6)).astype(np.float32), "gb": rng.normal(0, 0.1, 4).astype(np.float32),
             "shape": np.array([0, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), B.bn_node("c", "b"),
             helper.make_node("Relu", ["b"], ["r"], name="relu"),
             helper.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1)]
    model = B.make_model(nodes, {"x": (2, 3, 6, 6)}, ["y"], inits)
    feeds = [{"x": rng.normal(0, 1, (2, 3, 6, 6)).astype(np.float32)} for _ in range(3)]
    return model, feeds


def test_large_model_code_paths_on_a_small_model(tmp_path, monkeypatch):
    """With the 2 GB threshold lowered to 0, every model takes the large-model paths: the calibration session is
    built from a file with external data, the models are saved with external data, opset conversion and shape
    inference run on skeletons. The results are those of the in-memory paths, bit for bit."""
    from ferroquant.onnx import quantize
    from ferroquant.onnx.calibration import tapped_session

    rng = np.random.default_rng(2)
    model, feeds = _small(rng)
    normal = quantize(model, feeds, tmp_path / "a" / "q.onnx")
    monkeypatch.setattr(external, "LARGE", 0)
    sess = tapped_session(model, ["c"])
    assert sess._ferroquant_files is not None  # built from a path
    assert [o.name for o in sess.get_outputs()] == ["y", "c"]
    large = quantize(model, feeds, tmp_path / "b" / "q.onnx")
    assert (tmp_path / "b" / "q_deploy.onnx.data").is_file()  # the header q.onnx points to it
    ta, tb = normal["calibrated"].table(), large["calibrated"].table()
    for name, lq in ta.layers.items():
        assert lq.activation == tb.layers[name].activation
        np.testing.assert_array_equal(lq.weight.codes, tb.layers[name].weight.codes)
    for kind in ("deploy", "fake_quant"):
        a, b = (B.run(onnx.load(str(r["paths"][kind])), feeds[0])[0] for r in (normal, large))
        np.testing.assert_array_equal(a, b)


_CHILD = textwrap.dedent("""
    import json, resource, sys, time
    import numpy as np
    from ferroquant.onnx import quantize
    src, out, calib = sys.argv[1:4]
    x = np.load(calib)
    t0 = time.perf_counter()
    r = quantize(src, [{"x": x[i:i + 4]} for i in range(0, len(x), 4)], out)
    print(json.dumps({"layers": r["layers"], "batches": r["batches"], "seconds": time.perf_counter() - t0,
                      "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
""")


@pytest.mark.slow
def test_model_over_2gb_quantizes(tmp_path):
    src = tmp_path / "large.onnx"
    weights = _write_model(src)
    assert weights > PROTOBUF_LIMIT
    rng = np.random.default_rng(1)
    np.save(tmp_path / "calib.npy", rng.standard_normal((8, WIDTH), dtype=np.float32))
    out = tmp_path / "q" / "large_int8.onnx"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(out), str(tmp_path / "calib.npy")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"\n>2 GB model ({weights / 2**30:.2f} GiB of weights): quantized {stats['layers']} layers in "
          f"{stats['seconds']:.1f} s, peak RSS {stats['peak_rss'] / 2**30:.2f} GiB "
          f"({stats['peak_rss'] / weights:.2f}x the weights)")
    assert stats["layers"] == LAYERS and stats["batches"] == 2
    assert stats["peak_rss"] < 2.6 * weights  # a guard against whole-model copies; the measured ratio is printed
    fake = out.parent / "large_int8_fake_quant.onnx"
    assert Path(str(fake) + ".data").is_file()  # the float model is over 2 GB: written with external data
    assert out.stat().st_size < PROTOBUF_LIMIT and not Path(str(out) + ".data").exists()  # int8: 0.56 GB inline

    import onnxruntime as ort

    x = rng.standard_normal((2, WIDTH), dtype=np.float32)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref = ort.InferenceSession(str(src), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(str(out), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    assert sqnr > 15, f"deploy output SQNR {sqnr:.1f} dB"
    onnx.checker.check_model(str(fake))


def test_report_sessions_of_a_large_model_come_from_files(tmp_path, monkeypatch):
    """The report's onnxruntime sessions go through a file with external data for models over 2 GB (here the
    threshold is lowered to 0); the numbers are those of the in-memory sessions."""
    from ferroquant.onnx import quantize
    from ferroquant.report.measure import _session, measure

    rng = np.random.default_rng(3)
    model, feeds = _small(rng)
    cm = quantize(model, feeds, tmp_path / "q.onnx")["calibrated"]
    table = cm.table()
    before = measure(cm, feeds, 2, table)
    monkeypatch.setattr(external, "LARGE", 0)
    assert _session(cm.model)._ferroquant_files is not None
    after = measure(cm, feeds, 2, table)
    assert [(r.output_sqnr_db, r.local_sqnr_db) for r in before.layers] == \
        [(r.output_sqnr_db, r.local_sqnr_db) for r in after.layers]
