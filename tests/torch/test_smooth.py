"""SmoothQuant for torch ``nn.Linear`` after ``nn.LayerNorm`` (issue 12, item 2's torch half): the groups are
those the ONNX flow finds, balancing is exact in float (the norm's weight and bias divided by ``s``, the
Linear weights' input columns multiplied by it), the torch PTQ flow applies it from the config's
``methods.smooth_quant`` and records it, and it lowers the static int8 error on outlier channels. Torch PTQ of
``nn.Linear`` on 3-D inputs (exported as ``MatMul(x, Transpose(W))``) works at all."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

import ferroquant.torch as fqt  # noqa: E402
from ferroquant.config.methods import SmoothQuantParams  # noqa: E402
from ferroquant.errors import NonFiniteError  # noqa: E402
from ferroquant.torch.export import norm_linear_groups  # noqa: E402
from ferroquant.torch.smooth import balance_  # noqa: E402

D = 32


class Block(nn.Module):
    """A pre-LayerNorm transformer block: ln1 -> q/k/v -> attention -> o (residual), ln2 -> fc1 -> GELU -> fc2
    (residual). ``outlier``: ln1's and ln2's gain on two channels, as trained transformers have."""

    def __init__(self, seed: int = 0, outlier: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.ln1, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.q, self.k, self.v, self.o = (nn.Linear(D, D, bias=False) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
        with torch.no_grad():
            for ln in (self.ln1, self.ln2):
                ln.weight.uniform_(0.5, 1.5)
                ln.weight[[3, 17]] *= outlier
                ln.bias.uniform_(-0.2, 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln1(x)
        att = torch.softmax(self.q(h) @ self.k(h).transpose(-1, -2) / D ** 0.5, dim=-1)
        x = x + self.o(att @ self.v(h))
        return x + self.fc2(nn.functional.gelu(self.fc1(self.ln2(x))))


def _batches(seed: int, n: int = 4) -> list:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 6, D, generator=g) for _ in range(n)]


GROUPS = [("ln1", ("q", "k", "v")), ("ln2", ("fc1",))]


def test_groups_are_the_norms_read_only_by_linears():
    groups, skipped = norm_linear_groups(Block(), _batches(0, 1)[0])
    assert groups == GROUPS and skipped == []


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), alpha=st.sampled_from([None, 0.0, 0.5, 0.85, 1.0]))
def test_balancing_is_exact_in_float_and_folds_the_scales(seed, alpha):
    model = Block(seed % 1000, outlier=20.0).eval()
    data = _batches(seed % 997)
    out = copy.deepcopy(model)
    done = balance_(out, GROUPS, SmoothQuantParams(enabled=True, alpha=alpha), data)
    assert [d.norm for d in done] == ["ln1", "ln2"] and done[0].layers == ("q", "k", "v")
    with torch.no_grad():
        a, b = model(data[0]), out(data[0])
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5
    s = (model.ln1.weight / out.ln1.weight).detach()
    if alpha != 0.0:  # alpha 0: s = 1 / max|W_j|, the activations play no part
        assert float(s.max() / s.min()) > 1.5  # the outlier channels got their own scales
    for name in ("q", "k", "v"):
        torch.testing.assert_close(getattr(out, name).weight, getattr(model, name).weight * s[None, :],
                                   rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.ln1.bias, model.ln1.bias / s, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out.o.weight, model.o.weight)  # o reads no normalization: unchanged
    if alpha is not None:
        assert all(d.alpha == alpha for d in done)
    assert done[0].scale_min == pytest.approx(float(s.min()), rel=1e-5)


def test_torch_ptq_quantizes_linears_on_3d_inputs():
    """torch exports these Linears as MatMul(x, Transpose(W)): every one is a quantized layer."""
    res = fqt.quantize_torch_model(Block(1), _batches(1))
    assert {l.weight.tensor for l in res.table.layers.values()} == {f"{n}.weight" for n in
                                                              ("q", "k", "v", "o", "fc1", "fc2")}


def _int8_error(model, batches, methods, tmp_path, tag):
    """The fake-quant model's max relative error on a held-out batch; o and fc2 (which read no LayerNorm, so
    balancing leaves them alone) stay float so that the error is the balanced layers'."""
    res = fqt.quantize_torch_model(model, batches, methods=methods, batch_num=None, skip_layers=["o", "fc2"])
    paths = res.save(tmp_path / tag)
    x = _batches(99, 1)[0]
    sess = ort.InferenceSession(str(paths["fake_quant"]), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(x).numpy()
    got = sess.run(None, {"input": x.numpy()})[0]
    return float(np.abs(got - want).max() / np.abs(want).max()), json.loads(paths["record"].read_text())


def test_torch_ptq_with_smooth_quant_has_a_smaller_int8_error_and_records_it(tmp_path):
    model, batches = Block(2, outlier=40.0).eval(), _batches(2)
    plain, _ = _int8_error(model, batches, None, tmp_path, "plain")
    smooth, record = _int8_error(model, iter(batches), {"smooth_quant": {"enabled": True}}, tmp_path, "smooth")
    assert smooth < 0.5 * plain
    entry = record["extra"]["methods"]["smooth_quant"]
    assert [g["norm"] for g in entry["groups"]] == ["ln1", "ln2"]
    assert [g["layers"] for g in entry["groups"]] == [["q", "k", "v"], ["fc1"]]
    assert all(g["loss"] < g["loss_unbalanced"] for g in entry["groups"])
    assert entry["fp32_max_relative_difference"] < 1e-5
    assert isinstance(model.ln1, nn.LayerNorm) and float(model.ln1.weight.detach().max()) > 20  # the model given is unchanged


def test_nan_in_the_norms_output_names_it():
    model, data = Block(3), _batches(3, 2)
    data[1][0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="normalization 'ln1'"):
        fqt.quantize_torch_model(model, data, methods={"smooth_quant": {"enabled": True}})


def test_models_returning_several_outputs_are_balanced_too():
    class Two(Block):
        def forward(self, x: torch.Tensor):  # noqa: ANN201 - a tuple, as transformers models return
            y = super().forward(x)
            return y, y.sum(-1)

    res = fqt.quantize_torch_model(Two(4, outlier=20.0), _batches(4), methods={"smooth_quant": {"enabled": True}})
    entry = res.extra["methods"]["smooth_quant"]
    assert len(entry["groups"]) == 2 and entry["fp32_max_relative_difference"] < 1e-5
