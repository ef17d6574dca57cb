"""Writing the per-layer report: ``report.json``, ``report.html``, one PNG per layer (activation histogram,
chosen clip marked) and ``fallback_config.json``, a full config with the worst layers kept in float that
``ferroquant quantize --config`` (and :func:`ferroquant.config.load_config`) accepts as it is."""

from __future__ import annotations

import html
import json
import math
import re
import warnings
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Union


from ferroquant.config import QuantConfig
from ferroquant.outputs import output_set, replacing, write_text
from ferroquant.progress import ProgressBar
from ferroquant.report.measure import LayerStats, QuantReport
from ferroquant.report.plots import PLOT_BINS, HistogramPlot, plot_histogram, plots_available


def fallback_config(config: QuantConfig, float_layers: Iterable[str]) -> QuantConfig:
    """``config`` with ``quant_enable`` false for ``float_layers`` (:meth:`QuantConfig.with_float_layers`)."""
    return config.with_float_layers(float_layers)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def plot_names(names: Iterable[str]) -> Dict[str, str]:
    """One PNG file name per layer name: the name with unsafe characters replaced, and ``-2``, ``-3``... added
    where two layers would otherwise share a file (``blk/conv`` and ``blk_conv``; also names that differ only in
    case, for case-insensitive file systems). Deterministic: the order of ``names`` decides the suffixes."""
    taken: set = set()
    out: Dict[str, str] = {}
    for name in names:
        base = _safe(name)[:120] or "layer"
        stem, k = base, 1
        while stem.lower() in taken:
            k += 1
            stem = f"{base}-{k}"
        taken.add(stem.lower())
        out[name] = f"{stem}.png"
    return out


def _json_number(v: object) -> object:
    """``v``, with a non-finite float written as JSON can hold it (null, "inf", "-inf")."""
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return v


def _with_spread(v: Optional[float], spread: Optional[List[float]]) -> str:
    """A pooled SQNR and its per-sample [min, median, max]."""
    return _fmt(v) + (f" [{', '.join(_fmt(x, 1) for x in spread)}]" if spread else "")


def _fmt(v: Optional[float], digits: int = 2) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def fallback_sentence(float_layers: List[str], sqnr_db: Optional[float], count: Optional[int]) -> str:
    """What the fallback config keeps in float and why, in one sentence (no layer: says so)."""
    why = f"the {count} most sensitive" if count is not None else f"local SQNR under {sqnr_db:g} dB"
    if not float_layers:
        if count is not None:
            return "fallback_config.json keeps every layer quantized (--fallback-count 0)"
        return (f"no layer has a local SQNR under {sqnr_db:g} dB, so fallback_config.json keeps every layer "
                "quantized (raise --fallback-sqnr or use --fallback-count K to keep the worst layers in float)")
    shown = ", ".join(float_layers[:5]) + (f" and {len(float_layers) - 5} more" if len(float_layers) > 5 else "")
    n = len(float_layers)
    return (f"fallback_config.json keeps {n} layer{'s' if n > 1 else ''} in float ({shown}; {why}); quantize "
            "with it: ferroquant quantize MODEL --config fallback_config.json")


def _html(report: QuantReport, plots: Dict[str, str], float_layers: Iterable[str], fallback: str = "") -> str:
    fl = set(float_layers)
    head = ("layer", "type", "act algo", "observed range", "clip", "clipped %", "weight", "weight SQNR dB",
            "output SQNR dB", "output cosine", "local SQNR dB", "histogram")
    rows = []
    for r in report.layers:
        img = f'<img src="{html.escape(plots[r.name])}" alt="{html.escape(r.name)}">' if r.name in plots else ""
        act = r.act_algorithm + (f" int{r.activation_bits}" if r.activation_bits != 8 else "")
        cells = (r.name + (" (float in patch)" if r.name in fl else ""), r.op_type, act,
                 f"[{r.observed_min:.4g}, {r.observed_max:.4g}]", f"[{r.clip_min:.4g}, {r.clip_max:.4g}]",
                 f"{100 * r.clipped_fraction:.4f}", f"{r.weight_algorithm} int{r.weight_bits}",
                 _fmt(r.weight_sqnr_db), _with_spread(r.output_sqnr_db, r.output_sqnr_spread_db),
                 _fmt(r.output_cosine, 5), _with_spread(r.local_sqnr_db, r.local_sqnr_spread_db))
        tds = "".join(f"<td>{html.escape(str(c))}</td>" for c in cells)
        rows.append(f"<tr{' class=worst' if r.name in fl else ''}>{tds}<td>{img}</td></tr>")
    ths = "".join(f"<th>{h}</th>" for h in head)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>ferroquant per-layer report</title><style>"
            "body{font-family:sans-serif;font-size:13px}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}td:first-child{text-align:left}"
            "tr.worst{background:#fde2e2}</style></head><body>"
            f"<h1>Per-layer quantization report</h1><p>{len(report.layers)} quantized layers. Ranges, clips and "
            "clipped shares: every calibration batch. Output and local SQNR: measured on the first "
            f"{report.batches} calibration batches ({report.samples} samples), onnxruntime optimizations off. "
            "<b>Output SQNR/cosine</b>: the layer's output as the next layer reads it in the fake-quant model "
            "(every layer up to it quantized, errors accumulate) vs FP32; at the last layer, the model's output "
            "SQNR on these samples. <b>Local SQNR</b>: the layer alone quantized, on its FP32 input (ranks the "
            "layers). SQNRs are pooled over the samples; in brackets the per-sample [min, median, max]: a wide "
            "spread means too few samples. Histograms: red dashes mark the clip, grey dots the observed range."
            f"</p><p>{html.escape(fallback[:1].upper() + fallback[1:])}"
            f"{' (highlighted below)' if fl else ''}. <a href='fallback_config.json'>fallback_config.json</a></p>"
            f"<table><tr>{ths}</tr>{''.join(rows)}</table></body></html>\n")


def write_report(report: QuantReport, config: QuantConfig, out_dir: Union[str, Path], plots: bool = True,
                 fallback_sqnr_db: Optional[float] = 20.0, fallback_count: Optional[int] = None
                 ) -> Dict[str, Path]:
    """Write the report files into ``out_dir``; returns their paths (``html``, ``json``, ``fallback_config``,
    ``plots`` folder). The fallback keeps :meth:`QuantReport.worst` (``fallback_count`` or the SQNR threshold)
    in float."""
    with output_set():
        return _write_report(report, config, Path(out_dir), plots, fallback_sqnr_db, fallback_count)


def _plots(report: QuantReport, out: Path) -> Dict[str, str]:
    if not plots_available():
        warnings.warn("matplotlib is not installed, so the report has no histogram plots (pip install "
                      "matplotlib, or pass --no-plots to skip them quietly)", RuntimeWarning, stacklevel=3)
        return {}
    pngs: Dict[str, str] = {}
    files = plot_names(r.name for r in report.layers)
    figure = HistogramPlot()
    with ProgressBar("plotting histograms", len(report.layers), "layers") as bar:
        for r in report.layers:
            rel = f"plots/{files[r.name]}"
            figure.draw(out / rel, r, report.histograms[r.activation])
            pngs[r.name] = rel
            bar.update()
    return pngs


def _write_report(report: QuantReport, config: QuantConfig, out: Path, plots: bool,
                  fallback_sqnr_db: Optional[float], fallback_count: Optional[int]) -> Dict[str, Path]:
    (out / "plots").mkdir(parents=True, exist_ok=True)
    pngs = _plots(report, out) if plots else {}
    worst = report.worst(fallback_count, fallback_sqnr_db)
    patch = fallback_config(config, worst)
    paths = {"json": out / "report.json", "html": out / "report.html", "fallback_config": out / "fallback_config.json",
             "plots": out / "plots"}
    doc = report.to_json()
    for row in doc["layers"]:
        row["histogram_png"] = pngs.get(row["name"])
        for k, v in row.items():
            row[k] = [_json_number(x) for x in v] if isinstance(v, list) else _json_number(v)
    doc["fallback"] = {"float_layers": worst, "sqnr_db": None if fallback_count is not None else fallback_sqnr_db,
                       "count": fallback_count, "config": paths["fallback_config"].name}
    write_text(paths["json"], json.dumps(doc, indent=2) + "\n")
    sentence = fallback_sentence(worst, fallback_sqnr_db, fallback_count)
    write_text(paths["html"], _html(report, pngs, worst, sentence))
    patch.save(paths["fallback_config"])
    return paths


def summary_lines(report: QuantReport, top: int = 5) -> str:
    """The most sensitive layers, one line each, for the terminal."""
    by = {r.name: r for r in report.layers}
    lines = [f"{'layer':40s} {'local SQNR':>10s} {'out SQNR':>9s} {'clipped %':>9s}"]
    for n in report.ranking()[:top]:
        r = by[n]
        lines.append(f"{n[:40]:40s} {_fmt(r.local_sqnr_db):>10s} {_fmt(r.output_sqnr_db):>9s} "
                     f"{100 * r.clipped_fraction:9.4f}")
    return "\n".join(lines)


__all__ = ["PLOT_BINS", "fallback_config", "fallback_sentence", "plot_histogram", "plot_names", "plots_available", "summary_lines", "write_report"]
