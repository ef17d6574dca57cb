"""Weight-only quantization of the trained decoder of ``bench_llm.py`` through the torch front end
(:func:`ferroquant.torch.quantize_torch_weights_only`) beside the ONNX flow on the same calibration windows:
held-out perplexity of the quantized torch model (evaluated in torch), of its ONNX export (onnxruntime), and of
the ONNX flow's model; the share of codes the two paths agree on (their calibration activations come from
different runtimes, torch and onnxruntime, so GPTQ/AWQ may differ by float rounding; RTN needs none).

    python bench/bench_llm_torch.py [--calib-batches N]

Writes bench/results/llm_torch.md. Uses the decoder cached by bench_llm.py (trains it when absent).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llm import CTX, _windows, corpus, export, perplexity, train  # noqa: E402
from harness import Table, write_report  # noqa: E402

import torch  # noqa: E402


def torch_perplexity(model: torch.nn.Module, held: np.ndarray, batch: int = 32) -> float:
    """bench_llm.perplexity, computed by the torch model itself."""
    n = (len(held) - 1) // CTX
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, n, batch):
            rows = torch.from_numpy(np.stack([held[j * CTX:j * CTX + CTX + 1] for j in range(i, min(i + batch, n))]))
            logp = torch.log_softmax(model(rows[:, :-1]).double(), dim=-1)
            nll -= float(logp.gather(-1, rows[:, 1:, None]).sum())
            count += rows[:, 1:].numel()
    return math.exp(nll / count)


def _key(w: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(w, np.float32).tobytes()).hexdigest()


def code_agreement(model: torch.nn.Module, torch_quants: Dict, onnx_wom) -> float:
    """Share of weight codes identical between the two paths, layers matched by their float weights."""
    from ferroquant.onnx.graph import GraphView

    view = GraphView(onnx_wom.model)
    by_weight = {_key(view.array(q.layer.weight)): q for q in onnx_wom.quants.values()}
    mods = dict(model.named_modules())
    same = total = 0
    for name, tq in torch_quants.items():
        oq = by_weight[_key(mods[name].weight.detach().numpy().T)]
        same += int((oq.quant.codes == tq.quant.codes).sum())
        total += tq.quant.codes.size
    return same / total


def main() -> None:
    import ferroquant as fq
    from ferroquant.config import WeightOnlyConfig
    from ferroquant.torch import quantize_torch_weights_only

    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=600, help="the cached decoder's training steps (bench_llm.py)")
    p.add_argument("--calib-batches", type=int, default=16, help="calibration batches of 8 x 128 bytes")
    a = p.parse_args()
    torch.set_num_threads(1)
    train_data, held = corpus()
    model, info = train(train_data, a.steps)
    rng = np.random.default_rng(123)  # the calibration windows of bench_llm.py
    calib = [{"ids": _windows(train_data, rng, 8)[:, :-1]} for _ in range(a.calib_batches)]
    batches = [torch.from_numpy(c["ids"]) for c in calib]
    work = Path(tempfile.mkdtemp(prefix="bench_llm_torch_"))
    fp32_path = export(model, work / "fp32.onnx")
    fp32_ort, fp32_torch = perplexity(fp32_path, held), torch_perplexity(model, held)
    t = Table("Held-out perplexity per byte, weight-only through the torch front end and the ONNX flow",
              ["setting", "torch model (torch)", "torch path export (onnxruntime)", "ONNX flow (onnxruntime)",
               "codes equal", "torch path s", "ONNX flow s"])
    t.add("FP32", f"{fp32_torch:.4f}", f"{fp32_ort:.4f}", f"{fp32_ort:.4f}", "-", "-", "-")
    for name, opts in (("int4 g128 RTN (min/max)", dict(algorithm="rtn", clip_search=False)),
                       ("int4 g128 GPTQ", dict(algorithm="gptq")), ("int4 g128 AWQ", dict(algorithm="awq")),
                       ("int4 g32 GPTQ", dict(algorithm="gptq", group_size=32)),
                       ("int8 g128 RTN (min/max)", dict(algorithm="rtn", bits=8, clip_search=False))):
        cfg = WeightOnlyConfig(**opts)
        t0 = time.perf_counter()
        res = quantize_torch_weights_only(model, batches, cfg)
        t_torch = time.perf_counter() - t0
        res.save(work / "t", torch.zeros((2, CTX), dtype=torch.int64))
        t0 = time.perf_counter()
        out = fq.quantize(fp32_path, calib, work / "o.onnx", weight_only=cfg)
        t_onnx = time.perf_counter() - t0
        agree = code_agreement(model, res.quants, out["calibrated"])
        t.add(name, f"{torch_perplexity(res.model, held):.4f}", f"{perplexity(work / 't_deploy.onnx', held):.4f}",
              f"{perplexity(work / 'o.onnx', held):.4f}", f"{100 * agree:.3f}%", f"{t_torch:.1f}", f"{t_onnx:.1f}")
    t.notes.append(
        f"Decoder of bench_llm.py ({info['params'] / 1e6:.2f}M parameters, {info['steps']} training steps, cached), "
        f"the same held-out bytes and the same {a.calib_batches} calibration batches of 8 windows. Every nn.Linear "
        "(q/k/v/o, fc1/fc2, head) quantized, MatMulNBits, asymmetric, float32 scales. The torch path's statistics "
        "come from forward pre-hooks on the float torch model; the ONNX flow's from onnxruntime taps on its export. "
        "`codes equal`: the share of the int codes identical in both paths (layers matched by their float "
        "weights); where they differ, it is because torch and onnxruntime compute the activations with "
        "different float rounding (tests/torch/test_weight_only.py shows identical codes when the activations "
        "are exact). Times are wall seconds on a shared 2-core machine (the torch path includes the torch "
        "forward passes, the ONNX flow its onnxruntime session and taps).")
    print(t.markdown())
    write_report("llm_torch", [t], f"torch {torch.__version__}; load average at end: {os.getloadavg()[0]:.1f} "
                                   "(the machine is shared).")


if __name__ == "__main__":
    main()
