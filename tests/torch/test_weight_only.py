"""Weight-only quantization of torch ``nn.Linear`` layers (issue 12, item 4's torch half): the torch path gives
the codes, scales and ONNX export of the ONNX path on the same model and data (RTN, GPTQ, AWQ), the quantized
torch model computes what its codes say (and so does its export in onnxruntime), the state dict holds the
integers, the record lists every group's scale, and bad input is a clear error naming the layer."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from numpy.testing import assert_allclose, assert_array_equal  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from torch import nn  # noqa: E402

from ferroquant.config import WeightOnlyConfig  # noqa: E402
from ferroquant.errors import ConfigError, DataError, ModelError, NonFiniteError  # noqa: E402
from ferroquant.onnx import quantize_weight_only  # noqa: E402
from ferroquant.torch import WeightOnlyLinear, quantize_torch_weights_only  # noqa: E402
from ferroquant.torch.weight_only import InputTaps  # noqa: E402

D, H, O = 64, 48, 24  # H = 48 is not a multiple of 32: a ragged last group


class Net(nn.Module):
    """x -> q, k (the same input, shared statistics) -> relu(q + k) -> fc (bias). With weights on a 1/16 grid
    and inputs on a 1/4 grid every product and sum is exact in float32, so torch and onnxruntime feed the
    calibration the same activations bit for bit."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.q, self.k, self.fc = nn.Linear(D, H, bias=False), nn.Linear(D, H), nn.Linear(H, O)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randint(-16, 17, p.shape, generator=g).float() / 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.q(x) + self.k(x)))


def _batches(n: int, seed: int = 1) -> list:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randint(-16, 17, (3, 5, D), generator=g).float() / 4
        x[..., 7] *= 4  # an outlier channel, as transformers have
        out.append(x)
    return out


def _onnx_path(model: nn.Module, batches: list, cfg: WeightOnlyConfig, tmp_path) -> onnx.ModelProto:
    """The ONNX flow on the model exported the usual way (constant folding on, opset 17)."""
    path = tmp_path / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (batches[0],), str(path), input_names=["input"], output_names=["output"],
                          opset_version=17, dynamo=False, dynamic_axes={"input": {0: "batch"}})
    feeds = [{"input": b.numpy()} for b in batches]
    return quantize_weight_only(cfg, str(path), feeds).export()


def _quantized_initializers(m: onnx.ModelProto) -> list:
    """Per MatMulNBits / DequantizeLinear / AWQ Div node in graph order: its constant inputs' values."""
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    return [(n.op_type, [inits[i] for i in n.input if i in inits]) for n in m.graph.node
            if n.op_type in ("MatMulNBits", "DequantizeLinear") or (n.op_type == "Div" and "awq" in n.name)]


@pytest.mark.parametrize("algorithm,bits,group_size,symmetric,fmt", [
    ("rtn", 4, 32, False, "matmulnbits"), ("rtn", 8, 16, True, "qdq"), ("gptq", 4, 16, False, "matmulnbits"),
    ("gptq", 4, 32, True, "qdq"), ("awq", 4, 32, False, "matmulnbits"), ("awq", 8, 16, False, "qdq")])
def test_torch_path_gives_the_codes_and_export_of_the_onnx_path(algorithm, bits, group_size, symmetric, fmt,
                                                                 tmp_path):
    model, batches = Net(), _batches(4)
    cfg = WeightOnlyConfig(algorithm, bits, group_size, symmetric, format=fmt)
    res = quantize_torch_weights_only(model, batches, cfg)
    ours, theirs = _quantized_initializers(res.export()), _quantized_initializers(_onnx_path(model, batches, cfg,
                                                                                             tmp_path))
    assert [op for op, _ in ours] == [op for op, _ in theirs] and len(ours) >= 3
    for (_, a), (_, b) in zip(ours, theirs):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_array_equal(x, y)


@pytest.mark.parametrize("algorithm", ["rtn", "gptq", "awq"])
def test_quantized_model_computes_its_codes_and_its_export_agrees(algorithm):
    model, batches = Net(3), _batches(3, seed=5)
    res = quantize_torch_weights_only(model, batches, algorithm=algorithm, bits=4, group_size=16)
    x = _batches(1, seed=9)[0]
    with torch.no_grad():
        got = res.model(x).numpy()
    q = {n: res.quants[n] for n in ("q", "k", "fc")}

    def lin(name, a):
        wq, m = q[name], getattr(model, name)
        a = a if wq.input_divisor is None else a / wq.input_divisor
        b = 0 if m.bias is None else m.bias.detach().numpy().astype(np.float64)
        return a @ wq.quant.dequantize().astype(np.float64) + b

    x64 = x.numpy().astype(np.float64)
    want = lin("fc", np.maximum(lin("q", x64) + lin("k", x64), 0))
    assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    sess = ort.InferenceSession(res.export().SerializeToString(), providers=["CPUExecutionProvider"])
    assert_allclose(sess.run(None, {"input": x.numpy()})[0], got, rtol=1e-4, atol=1e-4)
    assert all(isinstance(getattr(res.model, n), WeightOnlyLinear) for n in q)
    assert all(isinstance(getattr(model, n), nn.Linear) for n in q)  # the model given is not modified


def test_state_dict_holds_the_integers_and_reloads(tmp_path):
    model, batches = Net(), _batches(2)
    res = quantize_torch_weights_only(model, batches, algorithm="awq", group_size=16)
    sd = res.model.state_dict()
    assert sd["q.codes"].dtype == torch.uint8 and "q.weight" not in sd and "q.input_divisor" in sd
    other = quantize_torch_weights_only(Net(seed=7), batches, algorithm="awq", group_size=16)
    other.model.load_state_dict(sd)
    x = _batches(1, seed=4)[0]
    with torch.no_grad():
        assert_array_equal(other.model(x).numpy(), res.model(x).numpy())
    torch.save(res.model, tmp_path / "whole.pt")  # the whole quantized model pickles too
    again = torch.load(tmp_path / "whole.pt", weights_only=False)
    with torch.no_grad():
        assert_array_equal(again(x).numpy(), res.model(x).numpy())


def test_record_lists_every_groups_scale_and_save_writes_the_onnx_flows_files(tmp_path):
    res = quantize_torch_weights_only(Net(), _batches(2), algorithm="gptq", group_size=32)
    paths = res.save(tmp_path / "net")
    rec = json.loads(paths["record"].read_text())
    assert rec["kind"] == "weight_only" and rec["batches"] == 2 and set(rec["layers"]) == {"q", "k", "fc"}
    fc = rec["layers"]["fc"]
    assert (fc["k"], fc["n"], fc["groups"]) == (H, O, 2)
    assert_array_equal(np.array(fc["scale"], np.float32), res.quants["fc"].quant.scale.T)
    assert_array_equal(np.array(fc["zero_point"]), res.quants["fc"].quant.zero_point.T)
    assert onnx.load(str(paths["deploy"])).graph.node


def test_layers_reading_one_tensor_share_statistics_and_a_reused_layer_counts_every_call():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(D, D), nn.Linear(D, D), nn.Linear(D, D)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.c(self.a(x) + self.b(x)) + self.c(x)

    m = Twice()
    cfg = WeightOnlyConfig("gptq", group_size=16)
    taps = InputTaps({n: getattr(m, n) for n in "abc"}, cfg)
    with torch.no_grad():
        for x in _batches(2):
            m(x)
            taps.end_batch()
    taps.remove()
    assert taps.stats["a"] is taps.stats["b"] and taps.stats["c"] is not taps.stats["a"]
    assert taps.stats["a"].hessian.rows == 2 * 15 and taps.stats["c"].hessian.rows == 2 * 2 * 15


def test_bad_input_is_a_clear_error_naming_the_layer():
    model, batches = Net(), _batches(2)
    bad = [b.clone() for b in batches]
    bad[1][0, 0, 3] = float("nan")
    with pytest.raises(NonFiniteError, match="'q'"):
        quantize_torch_weights_only(model, bad, algorithm="gptq", group_size=16)
    with pytest.raises(DataError, match="gptq needs calibration data"):
        quantize_torch_weights_only(model, None, algorithm="gptq", group_size=16)
    with pytest.raises(DataError, match="awq needs calibration data"):
        quantize_torch_weights_only(model, [], algorithm="awq", group_size=16)
    with pytest.raises(ConfigError, match="nope"):
        quantize_torch_weights_only(model, batches, skip_layers=("nope",), group_size=16)
    with pytest.raises(ConfigError, match="either a config or config options"):
        quantize_torch_weights_only(model, batches, WeightOnlyConfig(), bits=8)
    with pytest.raises(ConfigError, match="no linear layer"):
        quantize_torch_weights_only(nn.Sequential(nn.ReLU()), batches)
    with pytest.raises(ConfigError, match="weight_only.embeddings"):
        quantize_torch_weights_only(model, batches, embeddings=True)
    with pytest.raises(ConfigError, match="group_size"):
        quantize_torch_weights_only(model, batches, group_size=24)  # MatMulNBits needs a power of two

    class Unused(Net):
        def __init__(self) -> None:
            super().__init__()
            self.spare = nn.Linear(D, 4)

    with pytest.raises(DataError, match="spare"):
        quantize_torch_weights_only(Unused(), batches, algorithm="awq", group_size=16)
    res = quantize_torch_weights_only(Unused(), batches, group_size=16)  # RTN needs no data
    with pytest.warns(UserWarning, match="spare"):  # the exporter drops a layer forward never calls
        assert [n.op_type for n in res.export().graph.node].count("MatMulNBits") == 3

    class Transformed(Net):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.linear(torch.relu(self.q(x) + self.k(x)), self.fc.weight * 2)

    res = quantize_torch_weights_only(Transformed(), batches, group_size=16)
    with pytest.raises(ModelError, match="'fc'"):
        res.export()


def test_skip_layers_stay_float_and_rtn_needs_no_data():
    res = quantize_torch_weights_only(Net(), None, skip_layers=("fc",), group_size=16)
    assert isinstance(res.model.fc, nn.Linear) and set(res.quants) == {"q", "k"}
    out = res.export(_batches(1)[0])
    assert [n.op_type for n in out.graph.node].count("MatMulNBits") == 2
