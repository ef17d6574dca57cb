"""End to end on scikit-learn digits: a Conv+BN CNN trained here; 4-bit weights and activations with PTQ lose
accuracy (the test loss rises; top-1 accuracy on 450 images is too coarse to show it on every CPU), and QAT
(ULQ activations, ARQ-retrain weights) recovers it to within 2 points of FP32."""

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("onnxruntime")

import ferroquant.torch as fqt  # noqa: E402
from tests.torch.models import DeepCNN, accuracy, cross_entropy, digits, ort_accuracy, ort_logits, train  # noqa: E402

FOUR_BITS = {"activation": {"bits": 4}, "weight": {"bits": 4}}


def test_qat_recovers_4bit_accuracy(tmp_path):
    torch.manual_seed(0)
    torch.set_num_threads(2)
    xtr, ytr, xte, yte = digits()
    model = train(DeepCNN(16), xtr, ytr, epochs=10, lr=5e-3)
    fp32 = accuracy(model, xte, yte)
    with torch.no_grad():
        fp32_loss = cross_entropy(model(xte), yte)

    ptq = fqt.quantize_torch_model(model, [xtr[i:i + 128] for i in range(0, 512, 128)], common_config=FOUR_BITS)
    ptq_path = ptq.save(tmp_path / "ptq4")["deploy"]
    ptq_acc, ptq_loss = ort_accuracy(ptq_path, xte, yte), cross_entropy(ort_logits(ptq_path, xte), yte)

    q = copy.deepcopy(model)
    cfg = fqt.create_quant_retrain_config(None, q, xtr[:8], bits=4, weight_bits=4, batch_num=2)
    fqt.create_quant_retrain_model(cfg, q, xtr[:8])
    torch.manual_seed(1)
    train(q, xtr, ytr, epochs=5, lr=1e-3)
    qat_torch = accuracy(q, xte, yte)
    qat_acc = ort_accuracy(fqt.save_quant_retrain_model(cfg, q, tmp_path / "qat4", xtr[:1])["deploy"], xte, yte)
    print(f"digits: fp32 {fp32:.4f} (loss {fp32_loss:.4f})  ptq-4bit {ptq_acc:.4f} (loss {ptq_loss:.4f})  "
          f"qat-4bit {qat_acc:.4f} (torch {qat_torch:.4f})")
    assert fp32 > 0.95
    assert ptq_loss > fp32_loss  # PTQ at 4 bits loses accuracy
    assert qat_acc >= fp32 - 0.02  # QAT recovers it to within 2 points
    assert qat_acc > ptq_acc
    assert abs(qat_acc - qat_torch) <= 0.005
