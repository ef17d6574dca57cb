"""Weight-only embedding tables (``WeightOnlyConfig(embeddings=True)``): what quantizing the Gather tables adds
to MatMul weight-only quantization, on the trained decoder of ``bench_llm.py`` (held-out perplexity, whole
file size) and on its random-weight Llama-style model of about 110M parameters (file size and prompt
latency, onnxruntime CPU, 128-token prompt, runs interleaved, median).

    python bench/bench_llm_embeddings.py [--repeats N] [--no-latency]

Writes bench/results/llm_embeddings.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_llm import CTX, _llama, _windows, corpus, export, perplexity, train  # noqa: E402
from harness import Table, latency_ms, write_report  # noqa: E402

import torch  # noqa: E402

SETTINGS = (("int4 g128 GPTQ", dict(algorithm="gptq")),
            ("int4 g128 GPTQ + embeddings int4 g128", dict(algorithm="gptq", embeddings=True)),
            ("int4 g32 GPTQ + embeddings int4 g32", dict(algorithm="gptq", group_size=32, embeddings=True)),
            ("int8 g128 RTN", dict(algorithm="rtn", bits=8)),
            ("int8 g128 RTN + embeddings int8 g128", dict(algorithm="rtn", bits=8, embeddings=True)))


def perplexity_table(work: Path, calib_batches: int) -> Table:
    import ferroquant as fq
    from ferroquant.config import WeightOnlyConfig

    train_data, held = corpus()
    model, info = train(train_data, 600)
    rng = np.random.default_rng(123)  # the calibration windows of bench_llm.py
    calib = [{"ids": _windows(train_data, rng, 8)[:, :-1]} for _ in range(calib_batches)]
    fp32_path = export(model, work / "fp32.onnx")
    fp32, size = perplexity(fp32_path, held), fp32_path.stat().st_size
    t = Table("Held-out perplexity per byte of the trained decoder, weight-only with and without the embedding "
              "tables (tok 256 x 128, pos 128 x 128), MatMulNBits + GatherBlockQuantized, onnxruntime",
              ["setting", "perplexity", "increase over FP32", "file bytes / FP32", "quantize s"])
    t.add("FP32", f"{fp32:.4f}", "-", "1", "-")
    for name, opts in SETTINGS:
        t0 = time.perf_counter()
        fq.quantize(fp32_path, calib, work / "q.onnx", weight_only=WeightOnlyConfig(**opts))
        took = time.perf_counter() - t0
        ppl = perplexity(work / "q.onnx", held)
        t.add(name, f"{ppl:.4f}", f"{ppl - fp32:+.4f} ({100 * (ppl - fp32) / fp32:+.2f}%)",
              f"{(work / 'q.onnx').stat().st_size / size:.3f}", f"{took:.1f}")
    t.notes.append(f"Decoder of bench_llm.py ({info['params'] / 1e6:.2f}M parameters, of which 49k in the two "
                   f"embedding tables), {calib_batches} calibration batches of 8 windows; the tables are quantized "
                   "by RTN with the per-group clip search whatever the MatMul algorithm. File bytes: the whole "
                   "ONNX file.")
    return t


def latency_table(work: Path, repeats: int) -> Table:
    import ferroquant as fq
    from ferroquant.config import WeightOnlyConfig

    fp32 = _llama(work / "llama.onnx")
    paths: Dict[str, Path] = {"FP32": fp32}
    for name, emb in (("MatMulNBits int4 g128 (RTN)", False),
                      ("MatMulNBits int4 g128 (RTN) + GatherBlockQuantized int4 g128", True)):
        out = work / f"llama_{int(emb)}.onnx"
        fq.quantize(fp32, None, out, weight_only=WeightOnlyConfig("rtn", 4, 128, embeddings=emb))
        paths[name] = out
    t = Table("Random-weight Llama-style decoder (110M parameters, vocabulary 16000 x 768), onnxruntime CPU, "
              "128-token prompt, batch 1", ["model", "file MB", "file / FP32", "threads", "ms / prompt", "vs FP32"])
    ids = {"ids": np.random.default_rng(0).integers(0, 16000, (1, CTX)).astype(np.int64),
           "mask": np.ones((1, CTX), np.int64)}
    base_size = fp32.stat().st_size
    for threads in (1, 2):
        ms = latency_ms(paths, ids, threads, repeats, warm=1)
        base = ms["FP32"] / 1e3
        for n in ms:
            med, size = ms[n] / 1e3, paths[n].stat().st_size
            t.add(n, f"{size / 1e6:.0f}", f"{size / base_size:.3f}", threads, f"{med * 1e3:.0f}", f"{base / med:.2f}x")
    t.notes.append(f"Median of {repeats} runs per model, the models interleaved; the machine is shared: read the "
                   "ratios. The FP32 file holds the untied embedding table and LM head (12.3M parameters each).")
    return t


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--calib-batches", type=int, default=16)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-latency", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="bench_llm_emb_"))
    tables = [perplexity_table(work, a.calib_batches)]
    print(tables[0].markdown(), flush=True)
    if not a.no_latency:
        tables.append(latency_table(work, a.repeats))
        print(tables[-1].markdown(), flush=True)
    write_report("llm_embeddings", tables, f"torch {torch.__version__}; load average at end: "
                                           f"{os.getloadavg()[0]:.1f} (the machine is shared).")


if __name__ == "__main__":
    main()
