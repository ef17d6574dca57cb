"""Dynamic int8 (issue 12, item 3): MatMul/Gemm weights per output channel offline, activations per tensor at
run time, as onnxruntime's DynamicQuantizeMatMul. The model computes what its codes say (a NumPy simulation
of DynamicQuantizeLinear + integer MatMul), keeps 7-bit weights for CPUs without VNNI, and stays close to
FP32."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from onnx import numpy_helper

from ferroquant.errors import ConfigError
from ferroquant.onnx.dynamic import quantize_dynamic
from tests.onnx.test_weight_only import M, N, _feeds, _model, _session


def _dynamic_matmul(x: np.ndarray, codes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """DynamicQuantizeLinear (uint8, range widened to include 0) then the integer product, in float64."""
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    s = np.float32((hi - lo) / 255)
    zp = np.clip(np.rint(-lo / s), 0, 255)
    q = np.clip(np.rint(x / s) + zp, 0, 255)
    return ((q - zp) @ codes.astype(np.float64)) * (np.float64(s) * scale.astype(np.float64))


@pytest.mark.parametrize("cpu_types,bits", [("u8s8", 8), ("u8s7", 7)])
def test_dynamic_computes_its_codes(cpu_types, bits):
    m, x = _model(), _feeds(1, seed=9)[0]["x"]
    r = quantize_dynamic(m, cpu_types=cpu_types)
    q = r["model"]
    assert [n.op_type for n in q.graph.node].count("DynamicQuantizeMatMul") == 2
    fc1, fc2 = r["layers"]
    assert fc1.codes.shape == (200, N) and fc2.codes.shape == (N, M)  # Gemm transB=1: codes transposed to [K, N]
    assert max(np.abs(d.codes.astype(int)).max() for d in r["layers"]) <= (1 << (bits - 1))
    b2 = numpy_helper.to_array(m.graph.initializer[2])
    h = np.maximum(_dynamic_matmul(x.reshape(10, -1), fc1.codes, fc1.scale), 0)
    want = _dynamic_matmul(h.astype(np.float32), fc2.codes, fc2.scale) + b2
    got = _session(q, optimize=False).run(None, {"x": x})[0]
    assert_allclose(got, want, rtol=1e-3, atol=2e-3 * np.abs(want).max())
    fp = _session(m).run(None, {"x": x})[0]
    assert np.linalg.norm(got - fp) / np.linalg.norm(fp) < 0.06


def test_dynamic_errors(tmp_path):
    with pytest.raises(ConfigError, match="cpu types"):
        quantize_dynamic(_model(), cpu_types="u4s4")
    with pytest.raises(ConfigError, match="skip_layers"):
        quantize_dynamic(_model(), skip_layers=("nope",))
    r = quantize_dynamic(_model(), tmp_path / "d.onnx", skip_layers=("fc2",))
    assert [d.layer.name for d in r["layers"]] == ["fc1"] and (tmp_path / "d.onnx").is_file()
