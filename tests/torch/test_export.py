"""Preparation (BN folding, fixed_min detection, the swap), save/resume, and export parity: onnxruntime on the
deploy model vs the torch QAT model in eval mode."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
from torch import nn  # noqa: E402

import ferroquant.torch as fqt  # noqa: E402
from ferroquant.errors import ConfigError, ModelError  # noqa: E402
from tests.torch.models import SmallCNN, digits, train  # noqa: E402


def _run(path, x):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x.numpy()})[0]


@pytest.fixture(scope="module")
def data():
    return digits()


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    xtr, ytr, _, _ = data
    return train(SmallCNN(8, 16), xtr[:512], ytr[:512], epochs=2, lr=3e-3)


def _prepared(model, x, tmp_path=None, **kw):
    import copy

    q = copy.deepcopy(model)
    cfg = fqt.create_quant_retrain_config(None if tmp_path is None else tmp_path / "cfg.json", q, x[:4], **kw)
    fqt.create_quant_retrain_model(cfg, q, x[:4])
    return cfg, q


def test_config_detects_fixed_min_and_bn(trained, data, tmp_path):
    cfg, q = _prepared(trained, data[0], tmp_path)
    assert {n: c.activation.fixed_min for n, c in cfg.layers.items()} == {"conv1": False, "conv2": True, "fc": True}
    saved = json.loads((tmp_path / "cfg.json").read_text())
    assert saved["layers"]["conv2"]["activation"]["fixed_min"] is True
    assert isinstance(q.bn1, nn.Identity) and isinstance(q.bn2, nn.Identity)
    assert set(fqt.quant_layers(q)) == {"conv1", "conv2", "fc"}
    with pytest.raises(ConfigError, match="skip_layers"):
        fqt.create_quant_retrain_config(None, trained, data[0][:2], skip_layers=["nope"])
    c2 = fqt.create_quant_retrain_config(None, trained, data[0][:2], skip_layer_types=["Linear"])
    assert c2.enabled_layers() == ["conv1", "conv2"]


class Branchy(nn.Module):
    """Untraceable by torch.fx (data-dependent branch): the hooked-forward fallback must find the same facts."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        self.bn = nn.BatchNorm2d(4)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 3)

    def forward(self, x):
        y = self.act(self.bn(self.conv(x)))
        if y.sum() > -1e30:
            y = y.flatten(1)
        return self.fc(y)


def test_fallback_analysis_without_fx():
    m = Branchy().eval()
    facts = fqt.analyse(m, torch.randn(2, 1, 8, 8))
    assert not facts.traced
    assert facts.bn_pairs == {"conv": "bn"}
    assert facts.after_relu == {"conv": False, "fc": False}  # flatten is a method call: not seen by hooks


def test_bn_fold_is_exact_in_float(trained, data):
    import copy

    x = data[2][:64]
    m = copy.deepcopy(trained).eval()
    want = m(x)
    fqt.fold_batch_norm_(m, fqt.analyse(m).bn_pairs)
    assert isinstance(m.bn1, nn.Identity)
    torch.testing.assert_close(m(x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("weight_algorithm", ["arq_retrain", "lsq"])
def test_export_parity_ort_deploy_vs_torch_eval(trained, data, tmp_path, weight_algorithm):
    xtr, ytr, xte, _ = data
    cfg, q = _prepared(trained, xtr, weight_algorithm=weight_algorithm, batch_num=2)
    train(q, xtr[:256], ytr[:256], epochs=1, lr=1e-3)
    paths = fqt.save_quant_retrain_model(cfg, q, tmp_path / "m", xtr[:1])
    assert all(p.is_file() for p in paths.values())
    deploy = onnx.load(str(paths["deploy"]))
    assert not [n for n in deploy.graph.node if n.op_type == "BatchNormalization"]
    q.eval()
    with torch.no_grad():
        want = q(xte).numpy()
    fake, dep = _run(paths["fake_quant"], xte), _run(paths["deploy"], xte)
    # Tolerance: one step of the last quantized activation (the Linear's input) times the largest |w| row sum
    # would bound a single flipped code; we require far less than one step of that activation itself.
    step = fqt.quant_layers(q)["fc"].act_quant.qparams()[0]
    assert np.abs(fake - want).max() < step
    assert np.abs(dep - want).max() < step
    assert (dep.argmax(1) == want.argmax(1)).mean() >= 0.99
    rec = json.loads(paths["record"].read_text())
    assert {e["activation"]["algorithm"] for e in rec["layers"].values()} == {"ulq"}


def test_save_and_restore_resumes_clips(trained, data, tmp_path):
    xtr, ytr, xte, _ = data
    cfg, q = _prepared(trained, xtr, weight_algorithm="lsq")
    train(q, xtr[:128], ytr[:128], epochs=1, lr=1e-3)
    torch.save(q.state_dict(), tmp_path / "ckpt.pt")
    import copy

    r = fqt.restore_quant_retrain_model(cfg, copy.deepcopy(trained), tmp_path / "ckpt.pt", xtr[:4])
    for name, ql in fqt.quant_layers(r).items():
        src = fqt.quant_layers(q)[name].act_quant
        assert bool(ql.act_quant.initialized)
        assert ql.act_quant.clip_max.item() == src.clip_max.item()
    q.eval()
    r.eval()
    with torch.no_grad():
        torch.testing.assert_close(r(xte[:32]), q(xte[:32]), rtol=0, atol=0)
    train(r, xtr[:64], ytr[:64], epochs=1, lr=1e-3)  # training goes on from the restored clips


def test_conv_transpose_and_conv1d_layers_export(tmp_path):
    torch.manual_seed(0)

    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose2d(2, 4, 2, stride=2)
            self.bn = nn.BatchNorm2d(4)
            self.conv = nn.Conv2d(4, 3, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.relu(self.bn(self.up(x))))

    m = Mixed()
    x = torch.randn(8, 2, 4, 4)
    m.train()
    m(x)
    m.eval()
    cfg = fqt.create_quant_retrain_config(None, m, x, batch_num=1)
    assert cfg.layers["conv"].activation.fixed_min
    fqt.create_quant_retrain_model(cfg, m, x)
    m.train()
    m(x)
    m.eval()
    paths = fqt.save_quant_retrain_model(cfg, m, tmp_path / "mixed", x[:1])
    with torch.no_grad():
        want = m(x).numpy()
    got = _run(paths["deploy"], x)
    step = fqt.quant_layers(m)["conv"].act_quant.qparams()[0]
    assert np.abs(got - want).max() < step


def test_torch_ptq_matches_its_fake_quant_model(trained, data, tmp_path):
    xtr, _, xte, yte = data
    r = fqt.quantize_torch_model(trained, [xtr[i:i + 64] for i in range(0, 256, 64)])
    assert r.batches == 4
    paths = r.save(tmp_path / "ptq")
    fake, dep = _run(paths["fake_quant"], xte), _run(paths["deploy"], xte)
    assert (fake.argmax(1) == dep.argmax(1)).mean() >= 0.99
    rec = json.loads(paths["record"].read_text())
    assert {e["activation"]["algorithm"] for e in rec["layers"].values()} == {"ifmr"}
    r2 = fqt.quantize_torch_model(trained, [xtr[:64]], common_config={"activation_quant_params": {"act_algo": "hfmg"},
                                                                    "weight_quant_params": {"wts_algo": "nuq"}})
    assert {lq.weight.algorithm for lq in r2.table.layers.values()} == {"nuq"}


@pytest.mark.parametrize("kw", [{"methods": {"equalization": {"enabled": True}}}, {"methods": {"adaround": {"enabled": True}}},
                                {"common_config": {"weight": {"bias_correction": "empirical"}}},
                                {"common_config": {"activation": {"channel_wise": True}}}])
def test_torch_ptq_refuses_the_accuracy_methods_it_does_not_apply(trained, data, kw):
    xtr = data[0]
    with pytest.raises(ConfigError, match="torch PTQ flow does not apply"):
        fqt.quantize_torch_model(trained, [xtr[:64]], **kw)


class SharedInput(nn.Module):
    """Two Linear layers read one tensor, as q/k/v read a LayerNorm's output."""

    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.a, self.b, self.out = nn.Linear(8, 4), nn.Linear(8, 4), nn.Linear(4, 2)

    def forward(self, x):
        y = self.norm(x)
        return self.out(self.a(y) * self.b(y))


def test_layers_reading_one_tensor_share_their_activation_clips(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    cfg = fqt.create_quant_retrain_config(None, SharedInput(), x, batch_num=2)
    q = fqt.create_quant_retrain_model(cfg, SharedInput(), x)
    qls = fqt.quant_layers(q)
    assert qls["a"].act_quant is qls["b"].act_quant and qls["out"].act_quant is not qls["a"].act_quant
    q.train()
    q(x)
    assert not bool(qls["a"].act_quant.initialized)  # the shared tensor counts once per batch, not once per reader
    q(x)  # the same batch again is a second batch
    assert bool(qls["a"].act_quant.initialized)
    opt = torch.optim.SGD(q.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        q(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
    q.eval()
    paths = fqt.save_quant_retrain_model(cfg, q, tmp_path / "s", x)  # one Q/DQ pair for the shared tensor
    deploy = onnx.load(str(paths["deploy"]))
    assert [n.op_type for n in deploy.graph.node].count("QuantizeLinear") == 2  # LayerNorm output, product
    with torch.no_grad():
        want = q(x).numpy()
    assert np.abs(_run(paths["deploy"], x) - want).max() < 0.05 * np.abs(want).max()
    bad = fqt.create_quant_retrain_config(None, SharedInput(), x,
                                          override_layer_configs={"b": {"activation": {"symmetric": True}}})
    with pytest.raises(ConfigError, match=r"\['a', 'b'\] read the same input tensor"):
        fqt.create_quant_retrain_model(bad, SharedInput(), x)


class UntraceableShared(SharedInput):
    """SharedInput with data-dependent control flow: torch.fx cannot trace it."""

    def forward(self, x):
        y = self.norm(x)
        if bool(y.abs().sum() > 0):
            y = y * 1.0
        return self.out(self.a(y) * self.b(y))


def test_a_checkpoint_restores_shared_clips_without_an_example(tmp_path):
    """Without an example input, a model torch.fx cannot trace gives no sign of which layers read one tensor;
    the checkpoint does: their shared ULQ module's clips are one tensor in it."""
    torch.manual_seed(0)
    x = torch.randn(16, 8)
    cfg = fqt.create_quant_retrain_config(None, UntraceableShared(), x, batch_num=1)
    q = fqt.create_quant_retrain_model(cfg, UntraceableShared(), x)  # found by the hooked forward of x
    assert fqt.quant_layers(q)["a"].act_quant is fqt.quant_layers(q)["b"].act_quant
    opt = torch.optim.SGD(q.parameters(), lr=1e-2)
    for _ in range(3):
        opt.zero_grad()
        q(torch.randn(16, 8)).pow(2).mean().backward()
        opt.step()
    torch.save(q.state_dict(), tmp_path / "ckpt.pt")
    r = fqt.restore_quant_retrain_model(cfg, UntraceableShared(), tmp_path / "ckpt.pt")
    qls = fqt.quant_layers(r)
    assert qls["a"].act_quant is qls["b"].act_quant and qls["out"].act_quant is not qls["a"].act_quant
    assert qls["a"].act_quant.clip_max.item() == fqt.quant_layers(q)["a"].act_quant.clip_max.item()
    assert not qls["b"].observes  # the tensor feeds the clip initialization once
    paths = fqt.save_quant_retrain_model(cfg, r.eval(), tmp_path / "r", x)
    assert [n.op_type for n in onnx.load(str(paths["deploy"])).graph.node].count("QuantizeLinear") == 2


class Attention(nn.Module):
    """``scaled_dot_product_attention``, which torch exports from opset 14 on."""

    def __init__(self):
        super().__init__()
        self.q, self.o = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        q = self.q(x).unsqueeze(1)
        return self.o(torch.nn.functional.scaled_dot_product_attention(q, q, q).squeeze(1))


def test_an_operator_newer_than_opset_13_exports_at_17(tmp_path):
    torch.manual_seed(0)
    model, batches = Attention().eval(), [torch.randn(2, 5, 8) for _ in range(3)]
    r = fqt.quantize_torch_model(model, batches)
    assert [o.version for o in r.onnx_model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    paths = r.save(tmp_path / "a")
    with torch.no_grad():
        want = model(batches[0]).numpy()
    assert np.abs(_run(paths["deploy"], batches[0]) - want).max() < 0.05 * np.abs(want).max()
    with pytest.raises(ModelError, match="opset 13: UnsupportedOperatorError.*scaled_dot_product_attention"):
        fqt.export_float_onnx(model, batches[0], opset=13)
