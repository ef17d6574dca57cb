"""Rebuild bench/README.md from the intro below and every bench/results/*.md (each written by its bench)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent
ORDER = ["kernels", "search", "calibration", "onnx_ptq", "accuracy_all", "accuracy_all_adaround",
         "accuracy_output_clip", "accuracy_bc_gated", "accuracy_bc_gated_adaround",
         "accuracy_bc_gated_peers", "accuracy",
         "accuracy_adaround",
         "accuracy_mixed", "bias_correction",
         "adaround", "adaround_scenes", "adaround_oracle", "adaround_oracle_span1",
         "ptq_time", "qat", "deploy",
         "foreign", "weight_only", "weight_only_gptq", "llm", "awq_ablation"]

INTRO = """# Benchmarks

Every script compares ferroquant with its NumPy reference twin and with the peers people use today, on the
same data in the same run, and writes a table with the machine and the commit into `results/`. Read the
ratios: absolute times on these shared 2-core machines are noise. Run from the repository root with the
package installed (`pip install '.[onnx,data]'`, plus torch for the torch columns):

| script | what it measures |
|---|---|
| `bench/bench_kernels.py` | quantize / dequantize / fake-quant / ARQ / NUQ vs NumPy twins vs torch (weights 512x4608, activations 6.4M and 50M) |
| `bench/bench_search.py` | clip searches before/after in the same run: one 4096-bin HFMG search, direct summation vs prefix sums (Rust, `cargo run --release -p ferroquant-core --example bench_hfmg`); MobileNetV2's 53 activation tensors: HFMG search vs exact IFMR's 61-candidate search, and one call per tensor vs `observe_all` / `search_all` |
| `bench/bench_calibration.py` | HFMG, IFMR, MinMax, Percentile, KL vs onnxruntime's HistogramCollector and torch's HistogramObserver: time, peak memory, int8 MSE on 20-batch activation streams |
| `bench/bench_onnx_ptq.py` | MobileNetV2 int8: ferroquant vs onnxruntime `quantize_static` and NNCF `nncf.quantize` (agreement with FP32 on held-out photos, time, peak memory vs number of calibration images) |
| `bench/bench_accuracy.py` | MobileNetV2 int8: the share of each accuracy method (cross-layer equalization, bias correction, per-channel depthwise inputs, output-aware clips, learned rounding, mixed precision), alone and together, beside onnxruntime and NNCF, on crops of scenes disjoint from the calibration scenes, with a scene-bootstrap interval; `--report accuracy_all` is the run with every method (`accuracy_mixed`: mixed precision's budgets; `accuracy_output_clip`: output-aware clips) |
| `bench/bench_adaround.py` | MobileNetV2, every Conv: output reconstruction error on held-out crops of learned rounding (AdaRound) vs round-to-nearest on the same ARQ grid, int8 and int4 weights, and the time per layer; `bench_accuracy.py --report accuracy_adaround` gives the top-1 agreement rows with AdaRound (int8, W4A8); `--scenes 8,24 --polish` the held-out ratio by the number of calibration scenes (`adaround_scenes`); `--oracle [--span 1]` the exact best rounding of the 1x1 expansions fit on the held-out crops themselves, the bound no learned rounding can pass (`adaround_oracle`) |
| `bench/bench_ptq_time.py` | where a whole quantization spends its time (load, taps, observes, searches, writing) against onnxruntime's own pass over the same batches: MobileNetV2, PP-OCRv6 det, BERT; HFMG and IFMR |
| `bench/bench_deploy.py` | deploy models per profile (onnxruntime, tensorrt, amct) against FP32 and onnxruntime's `quantize_static` on MobileNetV2 (BN kept / folded): latency at 1 and 2 threads (interleaved medians), size, top-1 agreement as specified and with onnxruntime's integer kernels |
| `bench/bench_qat.py` | QAT on Fashion-MNIST (when torch is installed) |
| `bench/bench_weight_only.py` | group-wise RTN, Hessian (vs NumPy `X.T @ X`), GPTQ 1024-4096, AWQ and the SmoothQuant search vs their NumPy twins; output error of RTN / GPTQ / AWQ; `--gptq-only`: the GPTQ table alone, with CPU times (`weight_only_gptq`) |
| `bench/bench_llm.py` | a small GPT-style decoder trained here on `pydoc_data.topics`: held-out perplexity of FP32 vs weight-only RTN / GPTQ / AWQ (int4 g128 and g32, int8) through the ONNX export and onnxruntime, and the MatMul weight bytes |
| `bench/bench_awq_ablation.py` | the trained decoder of `bench_llm.py`, int4 g128: ferroquant's AWQ against the parts llm-awq / AutoAWQ do differently (auto_clip's clamp, token sample and q/k skip; auto_scale's shared q/k/v scale on the block output; duo scaling), perplexity increase vs RTN |
| `bench/bench_foreign.py` | models nobody here wrote (RapidOCR, ddddocr, nudenet YOLOv8n, silero-vad, torch-exported MobileNetV2 and transformers): load, folds, layers, time, peak RSS, size, cosine/SQNR and task metric vs FP32; the ONNX conformance corpus counts |

`python bench/collect.py` rebuilds this page from `results/`.
"""


def main() -> None:
    parts = [INTRO]
    names = sorted(p.stem for p in (ROOT / "results").glob("*.md"))
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        text = (ROOT / "results" / f"{name}.md").read_text()
        parts.append(text)
    (ROOT / "README.md").write_text("\n\n".join(parts))
    print(f"wrote {ROOT / 'README.md'} from {len(names)} result files")


if __name__ == "__main__":
    main()
