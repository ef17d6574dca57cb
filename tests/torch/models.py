"""Small plain-torch models and the scikit-learn digits data shared by the torch tests."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class SmallCNN(nn.Module):
    """Conv+BN+ReLU x2, max pool, Linear: 8x8 single-channel input, 10 classes."""

    def __init__(self, c1: int = 16, c2: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c2)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c2 * 16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.pool(self.relu2(self.bn2(self.conv2(x))))
        return self.fc(self.flatten(x))


def digits(seed: int = 0):
    """(x_train, y_train, x_test, y_test): digits scaled to [0, 1], centred per pixel, 1,347 / 450 split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    y = d.target.astype(np.int64)
    idx = np.random.default_rng(seed).permutation(len(y))
    x, y = x[idx], y[idx]
    mean = x[:1347].mean(0, keepdims=True)
    x = x - mean
    return (torch.from_numpy(x[:1347]), torch.from_numpy(y[:1347]), torch.from_numpy(x[1347:]),
            torch.from_numpy(y[1347:]))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, batch: int = 64,
          seed: int = 0, opt: str = "adam") -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    o = torch.optim.Adam(model.parameters(), lr=lr) if opt == "adam" else torch.optim.SGD(
        model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            j = perm[i:i + batch]
            o.zero_grad()
            nn.functional.cross_entropy(model(x[j]), y[j]).backward()
            o.step()
    return model


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def ort_logits(path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]


def ort_accuracy(path, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((ort_logits(path, x).argmax(1) == y.numpy()).mean())


def cross_entropy(logits, y: torch.Tensor) -> float:
    """Mean cross-entropy of logits (array or tensor) against the labels."""
    return float(nn.functional.cross_entropy(torch.as_tensor(np.asarray(logits)), y))


class DeepCNN(nn.Module):
    """Four Conv+BN+ReLU blocks, global average pooling, Linear: quantization error accumulates over depth and
    the pooled 4-bit features feeding the classifier are few, so 4-bit PTQ visibly loses accuracy."""

    def __init__(self, c: int = 16, classes: int = 10) -> None:
        super().__init__()
        layers = []
        cin = 1
        for i in range(4):
            layers += [nn.Conv2d(cin, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.features(x))))
