"""``ferroquant quantize --weight-only``: the flags (``--wts-algo rtn|gptq|awq``, ``--group-size``,
``--weight-bits``, ``--weight-format``), a config file with a ``weight_only`` section, and one error line for
flags that do not fit together."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.cli.sensitive import samples, write_case
from tests.cli.test_cli import assert_one_error_line, fq


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    return write_case(tmp_path_factory.mktemp("case"))


@pytest.mark.parametrize("algo,fmt", [("gptq", "matmulnbits"), ("awq", "qdq"), ("rtn", "matmulnbits")])
def test_weight_only_flags(case, tmp_path, algo, fmt):
    out = tmp_path / "out"
    p = fq("quantize", case["model"], "--calib", case["calib"], "--out", out, "--weight-only", "--wts-algo", algo,
           "--group-size", 16, "--weight-bits", 4, "--weight-format", fmt, "--batch-size", 16, "-q")
    assert f"weight-only {algo} int4 g16 ({fmt}): 3 layers" in p.stdout
    model = onnx.load(str(out / "model_deploy.onnx"))
    op = "MatMulNBits" if fmt == "matmulnbits" else "DequantizeLinear"
    assert sum(n.op_type == op for n in model.graph.node) == 3
    rec = json.loads((out / "model_quant_record.json").read_text())
    assert set(rec["layers"]) == {"fc1", "fc2", "fc3"} and rec["config"]["group_size"] == 16
    assert json.loads((out / "config.json").read_text())["weight_only"]["algorithm"] == algo
    x = samples(8, 3)
    s = ort.InferenceSession(str(out / "model_deploy.onnx"), providers=["CPUExecutionProvider"])
    assert s.run(None, {"x": x})[0].shape == (8, 10)
    again = tmp_path / "again"
    fq("quantize", case["model"], "--calib", case["calib"], "--out", again, "--config", out / "config.json",
       "--batch-size", 16, "-q")
    assert (again / "model_deploy.onnx").read_bytes() == (out / "model_deploy.onnx").read_bytes()


def test_weight_only_flag_errors(case, tmp_path):
    base = ("quantize", case["model"], "--calib", case["calib"], "--out", tmp_path / "o", "-q")
    assert_one_error_line(fq(*base, "--wts-algo", "gptq", check=False), "--wts-algo gptq", "--weight-only")
    assert_one_error_line(fq(*base, "--group-size", "32", check=False), "--group-size", "--weight-only")
    assert_one_error_line(fq(*base, "--weight-only", "--wts-algo", "arq", check=False), "--weight-only")
    assert_one_error_line(fq(*base, "--weight-only", "--group-size", "24", check=False), "group_size",
                          "power of two")
    assert not np.any([p.exists() for p in (tmp_path / "o").glob("*.onnx")])


def test_embeddings_flag_quantizes_gather_tables(tmp_path):
    from tests.onnx.test_weight_only_tables import _model

    onnx.save(_model(), str(tmp_path / "emb.onnx"))
    out = tmp_path / "out"
    p = fq("quantize", tmp_path / "emb.onnx", "--out", out, "--weight-only", "--embeddings", "--group-size", 32, "-q")
    assert "2 layers" in p.stdout
    ops = [n.op_type for n in onnx.load(str(out / "model_deploy.onnx")).graph.node]
    assert ops == ["GatherBlockQuantized", "MatMulNBits"]
    assert json.loads((out / "config.json").read_text())["weight_only"]["embeddings"] is True
    base = ("quantize", tmp_path / "emb.onnx", "--out", tmp_path / "o", "-q")
    assert_one_error_line(fq(*base, "--embeddings", check=False), "--embeddings", "--weight-only")
