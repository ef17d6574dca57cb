"""The torch front end on ``transformers`` models as a user builds them (random weights, the default attention,
which is ``scaled_dot_product_attention``: torch exports it from opset 14 on): PTQ, QAT and weight-only each
export a model that onnxruntime runs at other batch sizes (and, where asked, lengths) than the example, close to
the torch model. Grouped-query attention through ``scaled_dot_product_attention`` has no TorchScript export: a
ModelError says to load the model with eager attention, which exports. Needs the ``torch-test`` extra
(transformers)."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
tf = pytest.importorskip("transformers")
ort = pytest.importorskip("onnxruntime")
from torch import nn  # noqa: E402

import ferroquant.torch as fqt  # noqa: E402
from ferroquant.errors import ModelError  # noqa: E402


class LastHidden(nn.Module):
    """``input_ids`` -> the last hidden state (a tensor, as the exporters take it)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).last_hidden_state


def _model(kind: str, kv_heads: int = 4, **attn) -> nn.Module:
    """``bert``, ``gpt2``, or ``llama`` with ``kv_heads`` key/value heads for its 4 query heads (fewer:
    grouped-query)."""
    torch.manual_seed(0)
    if kind == "bert":
        m = tf.BertModel(tf.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                                       intermediate_size=256, vocab_size=1000, **attn))
    elif kind == "gpt2":  # its projections are transformers' Conv1D ([in, out] weights), not nn.Linear
        m = tf.GPT2Model(tf.GPT2Config(n_embd=128, n_layer=2, n_head=2, vocab_size=1000, n_positions=128, **attn))
    else:
        m = tf.LlamaModel(tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=kv_heads, vocab_size=1000,
                                         max_position_embeddings=128, **attn))
    if not attn:
        assert m.config._attn_implementation == "sdpa"  # what a user gets by default
    return LastHidden(m).eval()


def _ids(seed: int, batch: int = 2, length: int = 16) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 1000, (batch, length)))


def _cosine(ref: list, got: list) -> float:
    a, b = np.concatenate(ref).astype(np.float64), np.concatenate(got).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _cosine_to_torch(model: nn.Module, path, lengths=(16, 16)) -> float:
    """Cosine between the torch model's output and onnxruntime's on ``path``, at other batch sizes than the
    example (and ``lengths``: the sequence axis is dynamic only where the export was asked to make it so)."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    ref, got = [], []
    for seed, (batch, length) in enumerate(zip((1, 3), lengths)):
        ids = _ids(100 + seed, batch, length)
        with torch.no_grad():
            ref.append(model(ids).float().numpy().ravel())
        got.append(s.run(None, {name: ids.numpy()})[0].ravel())
    return _cosine(ref, got)


SEQ = {"input": {0: "batch", 1: "seq"}, "output": {0: "batch", 1: "seq"}}  # a transformer's dynamic axes


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_ptq_of_a_transformers_model(kind, tmp_path):
    model = _model(kind)
    r = fqt.quantize_torch_model(model, [_ids(i) for i in range(4)], dynamic_axes=SEQ)
    assert len(r.table.layers) >= 8  # the attention and MLP projections of both blocks
    paths = r.save(tmp_path / kind)
    assert _cosine_to_torch(model, paths["deploy"], lengths=(7, 30)) > 0.95


@pytest.mark.parametrize("kind", ["bert", "llama", "gpt2"])
def test_qat_of_a_transformers_model(kind, tmp_path):
    model = _model(kind)
    ids = _ids(0)
    cfg = fqt.create_quant_retrain_config(None, model, ids)
    qat = fqt.create_quant_retrain_model(cfg, model.train(), ids)
    opt = torch.optim.SGD(qat.parameters(), lr=1e-4)
    for i in range(2):
        opt.zero_grad()
        qat(_ids(i)).pow(2).mean().backward()
        opt.step()
    qat.eval()
    paths = fqt.save_quant_retrain_model(cfg, qat, tmp_path / kind, ids, dynamic_axes=SEQ)
    assert _cosine_to_torch(qat, paths["deploy"], lengths=(7, 30)) > 0.95


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_weight_only_of_a_transformers_model(kind, tmp_path):
    model = _model(kind)
    r = fqt.quantize_torch_weights_only(model, [_ids(i) for i in range(2)], algorithm="gptq", bits=4, group_size=64)
    assert len(r.quants) == 14 if kind == "llama" else 8  # 7 or 4 projections in each of the 2 blocks
    paths = r.save(tmp_path / "w", input_data=_ids(0), dynamic_axes=SEQ)
    assert _cosine_to_torch(r.model, paths["deploy"], lengths=(7, 30)) > 0.99


def test_grouped_query_attention_exports_with_its_attention_written_out(tmp_path):
    """torch has no TorchScript export of scaled_dot_product_attention with grouped-query heads: the export runs
    the model's eager attention (the same function) and gives the model its own setting back."""
    model = _model("llama", kv_heads=2)
    r = fqt.quantize_torch_model(model, [_ids(i) for i in range(2)], dynamic_axes=SEQ)
    assert model.model.config._attn_implementation == "sdpa"
    assert _cosine_to_torch(model, r.save(tmp_path / "gqa")["deploy"], lengths=(7, 30)) > 0.95
    cfg = fqt.create_quant_retrain_config(None, model, _ids(0))
    qat = fqt.create_quant_retrain_model(cfg, model.train(), _ids(0))
    qat(_ids(1))
    paths = fqt.save_quant_retrain_model(cfg, qat.eval(), tmp_path / "gqa_qat", _ids(0))
    assert _cosine_to_torch(qat, paths["deploy"]) > 0.95


def _trained_norms(model: nn.Module) -> nn.Module:
    """Norm parameters as training leaves them, each its own: a fresh model's are all ones (and zeros), which
    torch's exporter writes as one shared initializer, and a shared scale cannot absorb one norm's balancing."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) or type(m).__name__ == "LlamaRMSNorm":
                m.weight.copy_(1 + 0.1 * torch.randn(m.weight.shape, generator=g))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return model


@pytest.mark.parametrize("kind,groups", [
    ("gpt2", ["attn.c_attn", "mlp.c_fc"]),  # Conv1D layers: Gemm after a Reshape in the export
    ("llama", ["self_attn.q_proj self_attn.k_proj self_attn.v_proj", "mlp.gate_proj mlp.up_proj"]),  # RMSNorm
])
def test_smooth_quant_balances_the_norms_of_transformers_blocks(kind, groups):
    model = _trained_norms(_model(kind))
    batches = [_ids(i) for i in range(4)]
    r = fqt.quantize_torch_model(model, batches, methods={"smooth_quant": {"enabled": True}})
    entry = r.extra["methods"]["smooth_quant"]
    block = "model.h" if kind == "gpt2" else "model.layers"
    assert [g["layers"] for g in entry["groups"]] == [[f"{block}.{i}.{p}" for p in ps.split()] for i in range(2)
                                                      for ps in groups]
    assert entry["fp32_max_relative_difference"] < 1e-4  # the balanced float model computes the same
    with torch.no_grad():
        assert torch.equal(model(batches[0]), _trained_norms(_model(kind))(batches[0]))  # caller's model untouched


# -- tokenizer outputs as batches: the model's own forward, keyword inputs ----------------------------------------
def _encoding(seed: int, batch: int = 2, length: int = 16) -> "tf.BatchEncoding":
    """What a tokenizer returns (``return_tensors="pt"``): ids, a padding mask and segment ids, by keyword."""
    ids = _ids(seed, batch, length)
    mask = torch.ones_like(ids)
    mask[0, length - 3:] = 0  # padding at the end of the first sequence
    return tf.BatchEncoding({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)})


def _classifier() -> nn.Module:
    torch.manual_seed(0)
    return tf.BertForSequenceClassification(tf.BertConfig(
        hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256, vocab_size=1000,
        num_labels=3)).eval()


def _keyword_cosine(model: nn.Module, path) -> float:
    """Cosine between the torch model and onnxruntime fed the same encodings by name, at other batch sizes and
    lengths than the example."""
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in s.get_inputs()] == ["input_ids", "attention_mask", "token_type_ids"]
    ref, got = [], []
    for seed, (batch, length) in enumerate([(1, 7), (3, 30)]):
        enc = _encoding(200 + seed, batch, length)
        with torch.no_grad():
            ref.append(model(**enc).logits.float().numpy().ravel())
        got.append(s.run(None, {k: v.numpy() for k, v in enc.items()})[0].ravel())
    return _cosine(ref, got)


def test_ptq_takes_tokenizer_outputs_and_exports_their_names(tmp_path):  # and SmoothQuant reads them too
    """Batches that are mappings (a tokenizer's BatchEncoding) call the model's own forward by keyword; the export
    takes the inputs by those names, with their batch and sequence axes dynamic, and the first float output
    (the logits; a ModelOutput is not a tensor)."""
    model = _classifier()
    r = fqt.quantize_torch_model(model, [_encoding(i) for i in range(4)])
    assert len(r.table.layers) >= 12  # q/k/v/o and both MLP layers of the 2 blocks
    assert [i.name for i in r.onnx_model.graph.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert _keyword_cosine(model, r.save(tmp_path / "bert")["deploy"]) > 0.95
    llama = _trained_norms(_model("llama").model)  # pre-norm blocks: what balancing folds into (BERT's are post-)
    encs = [{"input_ids": _ids(i), "attention_mask": torch.ones(2, 16, dtype=torch.long)} for i in range(2)]
    entry = fqt.quantize_torch_model(llama, encs, methods={"smooth_quant": {"enabled": True}}).extra["methods"]
    assert len(entry["smooth_quant"]["groups"]) == 4  # q/k/v and gate/up of both blocks
    assert entry["smooth_quant"]["fp32_max_relative_difference"] < 1e-4


def test_weight_only_and_qat_take_tokenizer_outputs(tmp_path):
    model = _model("llama").model  # the bare LlamaModel: its output is a ModelOutput
    encs = [tf.BatchEncoding({"input_ids": _ids(i), "attention_mask": torch.ones(2, 16, dtype=torch.long)})
            for i in range(2)]
    r = fqt.quantize_torch_weights_only(model, encs, algorithm="gptq", bits=4, group_size=64)
    s = ort.InferenceSession(str(r.save(tmp_path / "w")["deploy"]), providers=["CPUExecutionProvider"])
    enc = {"input_ids": _ids(9, 3, 30), "attention_mask": torch.ones(3, 30, dtype=torch.long)}
    got = s.run(None, {k: v.numpy() for k, v in enc.items()})[0]
    with torch.no_grad():
        ref = r.model(**enc).last_hidden_state.numpy()
    assert got.shape == ref.shape and np.corrcoef(got.ravel(), ref.ravel())[0, 1] > 0.99

    bert = _classifier()
    cfg = fqt.create_quant_retrain_config(None, bert, _encoding(0))
    qat = fqt.create_quant_retrain_model(cfg, bert.train(), _encoding(0))
    qat(**_encoding(1)).logits.pow(2).mean().backward()
    paths = fqt.save_quant_retrain_model(cfg, qat.eval(), tmp_path / "qat", _encoding(0))
    assert _keyword_cosine(qat, paths["deploy"]) > 0.95


def test_keyword_batches_that_cannot_export_say_why():
    from ferroquant.errors import DataError

    model = _classifier()
    bad = {"input_ids": _ids(0), "attention_mask": [[1] * 16] * 2}
    with pytest.raises(DataError, match="attention_mask"):
        fqt.quantize_torch_model(model, [bad])

    class Ints(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> dict:
            return {"label": self.fc(x).argmax(-1)}

    with pytest.raises(ModelError, match="no float tensor"):
        fqt.quantize_torch_model(Ints(), [{"x": torch.randn(2, 4)}])
