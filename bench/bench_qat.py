"""QAT on Fashion-MNIST: a small Conv+BN CNN, FP32 vs PTQ int8/int4 vs QAT int4, and the cost of a QAT step.

    python bench/bench_qat.py [--fp32-epochs 2] [--qat-epochs 1] [--train N] [--threads 2]

Data: Debian ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``; ``apt-get install -y
dataset-fashion-mnist``). Accuracy is measured on the 10k test set, the quantized models in onnxruntime on the
exported deploy model (graph optimizations disabled: each Q/DQ executed as written). PTQ: IFMR activations and
ARQ weights (per channel) on 8 batches of 64 training images. QAT: ferroquant ULQ activations + ARQ-retrain
weights, 4 bits, starting from the FP32 model, ``--qat-epochs`` epochs of Adam at lr 1e-4 (the first 2 batches also run the one-off IFMR initialisation).
Step time: median of a whole training step (forward, backward, optimizer) on a batch of 64, FP32 vs ferroquant
QAT vs ``torch.ao.quantization.prepare_qat`` with its default QAT qconfig (fake-quant per-channel weights and
per-tensor activations; BN kept, not fused, like ours it keeps one conv per layer). Writes bench/results/qat.md.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Table, median_time, write_report  # noqa: E402

import ferroquant.torch as fqt  # noqa: E402

DATA = Path("/usr/share/datasets/fashion-mnist")


def _idx(name: str) -> np.ndarray:
    with gzip.open(DATA / name) as f:
        raw = f.read()
    if raw[2] == 8 and raw[3] == 3:
        n, r, c = (int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, r, c)
    return np.frombuffer(raw, np.uint8, offset=8)


def load(train_n: int):
    xtr = _idx("train-images-idx3-ubyte.gz")[:train_n].astype(np.float32) / 255.0
    ytr = _idx("train-labels-idx1-ubyte.gz")[:train_n].astype(np.int64)
    xte = _idx("t10k-images-idx3-ubyte.gz").astype(np.float32) / 255.0
    yte = _idx("t10k-labels-idx1-ubyte.gz").astype(np.int64)
    mean, std = xtr.mean(), xtr.std()
    f = lambda a: torch.from_numpy(((a - mean) / std)[:, None].copy())  # noqa: E731
    return f(xtr), torch.from_numpy(ytr), f(xte), torch.from_numpy(yte)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1, self.relu1 = nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2, self.bn2, self.relu2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1, self.relu3 = nn.Linear(64 * 7 * 7, 128), nn.ReLU()
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        x = self.pool2(self.relu2(self.bn2(self.conv2(x))))
        return self.fc2(self.relu3(self.fc1(self.flatten(x))))


def train(model: nn.Module, x, y, epochs: int, lr: float, seed: int = 0, batch: int = 64) -> float:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            j = perm[i:i + batch]
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[j]), y[j]).backward()
            opt.step()
    return time.perf_counter() - t0


def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    with torch.no_grad():
        return float(torch.cat([model(x[i:i + 1000]).argmax(1) for i in range(0, len(y), 1000)]).eq(y).float().mean())


def ort_accuracy(path: Path, x, y) -> float:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    pred = np.concatenate([s.run(None, {name: x[i:i + 1000].numpy()})[0].argmax(1) for i in range(0, len(y), 1000)])
    return float((pred == y.numpy()).mean())


def step_fn(model: nn.Module, x, y):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()

    def step() -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return step


def torch_ao_qat(model: nn.Module) -> nn.Module:
    import warnings

    from torch.ao import quantization as tq

    m = copy.deepcopy(model).train()
    m.qconfig = tq.get_default_qat_qconfig("x86")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tq.prepare_qat(m, inplace=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fp32-epochs", type=int, default=2)
    ap.add_argument("--qat-epochs", type=int, default=1)
    ap.add_argument("--train", type=int, default=60000)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    xtr, ytr, xte, yte = load(a.train)
    tmp = Path(tempfile.mkdtemp(prefix="fq-bench-qat-"))
    acc = Table("Fashion-MNIST test accuracy (10k images)", ["model", "bits (w/a)", "accuracy", "train time s"])
    model = Net()
    t = train(model, xtr, ytr, a.fp32_epochs, 1e-3)
    fp32 = accuracy(model, xte, yte)
    acc.add(f"FP32 ({a.fp32_epochs} epochs)", "32/32", fp32, t)
    calib = [xtr[i:i + 64] for i in range(0, 512, 64)]
    for bits in (8, 4):
        cc = {"activation": {"bits": bits}, "weight": {"bits": bits}}
        t0 = time.perf_counter()
        r = fqt.quantize_torch_model(model, calib, common_config=cc)
        paths = r.save(tmp / f"ptq{bits}")
        acc.add("PTQ (IFMR + ARQ), deploy in ORT", f"{bits}/{bits}", ort_accuracy(paths["deploy"], xte, yte),
                time.perf_counter() - t0)
    q = copy.deepcopy(model)
    cfg = fqt.create_quant_retrain_config(None, q, xtr[:8], bits=4, weight_bits=4, batch_num=2)
    fqt.create_quant_retrain_model(cfg, q, xtr[:8])
    t = train(q, xtr, ytr, a.qat_epochs, 1e-4, seed=1)
    qat_torch = accuracy(q, xte, yte)
    paths = fqt.save_quant_retrain_model(cfg, q, tmp / "qat4", xtr[:1])
    acc.add(f"QAT (ULQ + ARQ-retrain, {a.qat_epochs} epoch), deploy in ORT", "4/4",
            ort_accuracy(paths["deploy"], xte, yte), t)
    acc.notes.append(f"QAT model in torch eval mode: {qat_torch:.4f}. PTQ calibrates on 8 batches of 64 images.")

    xb, yb = xtr[:64], ytr[:64]
    models = {"FP32": copy.deepcopy(model), "ferroquant QAT (4-bit ULQ + ARQ-retrain)": q}
    lsq = copy.deepcopy(model)
    cfg_l = fqt.create_quant_retrain_config(None, lsq, xtr[:8], bits=4, weight_bits=4, weight_algorithm="lsq",
                                            override_layer_configs=None)
    fqt.create_quant_retrain_model(cfg_l, lsq, xtr[:8])
    lsq.train()
    lsq(xtr[:64])
    models["ferroquant QAT (4-bit ULQ + LSQ weights)"] = lsq
    try:
        models["torch.ao prepare_qat (default qconfig)"] = torch_ao_qat(model)
    except Exception as e:  # noqa: BLE001 - report, do not fail the benchmark
        print(f"torch.ao prepare_qat unavailable: {e}")
    times = {k: median_time(step_fn(m, xb, yb), repeats=30, warmup=3) for k, m in models.items()}
    st = Table(f"Training step time, batch 64, {a.threads} threads", ["model", "step ms", "vs FP32", "vs torch.ao"])
    ao = times.get("torch.ao prepare_qat (default qconfig)")
    for k, v in times.items():
        st.add(k, v * 1e3, v / times["FP32"], "-" if ao is None else v / ao)
    intro = ("Small Conv+BN CNN (2 conv, 2 linear) on Fashion-MNIST. BN is folded before QAT (frozen statistics); "
             "torch.ao keeps its BN unfused. Command: `python bench/bench_qat.py " +
             " ".join(sys.argv[1:]) + "`.")
    write_report("qat", [acc, st], intro)


if __name__ == "__main__":
    main()
