"""The per-layer quantization report: measure (:mod:`~ferroquant.report.measure`) and write
(:mod:`~ferroquant.report.render`) it. Needs the ``onnx`` extra, and matplotlib for the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Mapping, Optional, Union

import numpy as np

from ferroquant.onnx.calibration import CalibratedModel
from ferroquant.quant.table import QuantTable
from ferroquant.report.measure import LayerStats, QuantReport, measure
from ferroquant.report.render import fallback_config, summary_lines, write_report


def create_report(calibrated: CalibratedModel, data: Iterable[Mapping[str, np.ndarray]],
                  out_dir: Union[str, Path], max_batches: int = 2, plots: bool = True,
                  fallback_sqnr_db: Optional[float] = 20.0, fallback_count: Optional[int] = None,
                  table: Optional[QuantTable] = None) -> "tuple[QuantReport, Dict[str, Path]]":
    """Measure ``calibrated`` on up to ``max_batches`` batches of ``data`` and write the report into
    ``out_dir`` (``report.html``, ``report.json``, ``plots/*.png``, ``fallback_config.json``). ``table``: the
    qparams already searched (``calibrated.table()``), not searched again."""
    rep = measure(calibrated, data, max_batches, table)
    return rep, write_report(rep, calibrated.config, out_dir, plots, fallback_sqnr_db, fallback_count)


__all__ = ["LayerStats", "QuantReport", "create_report", "fallback_config", "measure", "summary_lines",
           "write_report"]
