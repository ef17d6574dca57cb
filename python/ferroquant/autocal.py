"""Accuracy-driven fallback: keep the fewest, most sensitive layers in float so that the metric drops by at most
``max_drop`` (AMCT's ``accuracy_based_auto_calibration``).

The evaluator contract: ``evaluator(model_path: str) -> float``, the path of an ONNX model file (the FP32 model,
then fake-quant QDQ models) and a metric where higher is better (accuracy, agreement, mAP...). The drop is
``metric(FP32) - metric(quantized)``, in the metric's own units. The evaluator picks its own onnxruntime
session options (graph optimizations disabled measure the calibration, not the runtime's int8 kernels).

Steps: evaluate FP32; calibrate every enabled layer once; rank layers by sensitivity (the local SQNR of the
per-layer report: the error each layer adds alone, lowest first); evaluate with no layer in float and, when that
misses ``max_drop``, binary-search the count ``k`` of most sensitive layers kept in float (fake-quant models
rebuilt from the one calibration, no recalibration). The search assumes the metric does not get worse as more
layers stay in float.

With ``methods.mixed_precision`` in the config, each layer's bits are chosen first, under its budget (16-bit
inputs where they remove the most error per MAC, 4-bit weights where a size budget asks for them): the layers a
wider grid rescues then need no float fallback, and only what still misses ``max_drop`` is kept in float.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np
import onnx

from ferroquant.calib_data import model_inputs
from ferroquant.config import QuantConfig, load_config
from ferroquant.errors import ConfigError, DataError
from ferroquant.onnx.api import create_quant_config, prepare_model, quantize_model, save_model
from ferroquant.onnx.calibration import iterate_batches
from ferroquant.onnx.deploy import deploy_layout
from ferroquant.onnx.io import load_model, save_onnx
from ferroquant.onnx.qdq import export_fake_quant
from ferroquant.outputs import output_set, write_text
from ferroquant.progress import ProgressBar
from ferroquant.report.measure import measure

Evaluator = Callable[[str], float]


@dataclass
class AutoCalResult:
    """What the search found: the layers kept in float, the metrics, every trial ``(k, metric)`` and the files
    written (``config``, ``fake_quant``, ``deploy``, ``record``, ``summary``)."""

    float_layers: List[str]
    fp32_metric: float
    quantized_metric: float  # every layer quantized
    final_metric: float
    max_drop: float
    ranking: List[str]
    trials: List[Tuple[int, float]]
    config: QuantConfig
    paths: Dict[str, Path] = field(default_factory=dict)

    @property
    def drop(self) -> float:
        return self.fp32_metric - self.final_metric

    @property
    def met(self) -> bool:
        return self.drop <= self.max_drop

    def to_json(self) -> Dict[str, Any]:
        return {"float_layers": self.float_layers, "num_float_layers": len(self.float_layers),
                "num_quantized_layers": len(self.ranking) - len(self.float_layers),
                "fp32_metric": self.fp32_metric, "quantized_metric": self.quantized_metric,
                "final_metric": self.final_metric, "drop": self.drop, "max_drop": self.max_drop, "met": self.met,
                "ranking": self.ranking, "trials": [{"float_layers": k, "metric": m} for k, m in self.trials],
                "paths": {k: str(v) for k, v in self.paths.items()}}


def _score(evaluator: Evaluator, path: Path) -> float:
    v = evaluator(str(path))
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or not math.isfinite(v):
        raise DataError(f"the evaluator must return a finite number, got {v!r}")
    return float(v)


def accuracy_based_auto_calibration(model: Union[str, Path, onnx.ModelProto], evaluator: Evaluator,
                                    config: Optional[Union[str, Path, Mapping, QuantConfig]],
                                    calibration_data: Iterable[Mapping[str, np.ndarray]], max_drop: float,
                                    save_dir: Union[str, Path], batch_num: Optional[int] = None,
                                    report_batches: int = 2, profile: str = "amct",
                                    cpu_types: Optional[str] = None) -> AutoCalResult:
    """Find the fewest float layers that keep the metric within ``max_drop`` of FP32 (see the module docstring)
    and write ``config.json``, ``model_fake_quant.onnx``, ``model_deploy.onnx``, ``model_quant_record.json`` and
    ``autocal_summary.json`` into ``save_dir``. ``calibration_data`` is read into memory once (it is used for
    calibration and for the sensitivity ranking). ``profile`` is the deploy profile whose layout is searched and
    written (AMCT's simulation layout by default; ``onnxruntime`` searches the faster layout's fallbacks, every
    trial model evaluated in that layout)."""
    if not isinstance(max_drop, (int, float)) or max_drop < 0:
        raise ConfigError(f"max_drop must be a number >= 0, got {max_drop!r}")
    m = load_model(model)
    feeds = list(iterate_batches(calibration_data, [s.name for s in model_inputs(m)]))
    cfg = load_config(config) if config is not None else None
    prepared = prepare_model(m, cfg.do_fusion if cfg else True, cfg.skip_fusion_layers if cfg else (), loaded=True)
    cfg = cfg or create_quant_config(None, prepared, batch_num=None)
    out = Path(save_dir)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".autocal-", dir=out))
    try:
        fp32 = _score(evaluator, save_onnx(m, work / "fp32.onnx"))
        with ProgressBar("calibrating", None, "batches") as cbar:
            cm = quantize_model(cfg, prepared, feeds, batch_num=batch_num if batch_num else len(feeds),
                                progress=cbar, profile=profile, cpu_types=cpu_types)
        with ProgressBar("searching clips", len(cm.calibrators), "tensors") as sbar:
            table = cm.table(progress=sbar)
        ranking = measure(cm, feeds, report_batches, table).ranking()
        scores: Dict[int, float] = {len(ranking): fp32}
        with ProgressBar("evaluating fallbacks", None, "models") as bar:

            def trial(k: int) -> float:
                if k not in scores:
                    sub = table.without(ranking[:k])
                    model = export_fake_quant(cm.model, sub, deploy_layout(cm, sub))
                    scores[k] = _score(evaluator, save_onnx(model, work / f"k{k}.onnx"))
                    bar.update()
                return scores[k]

            lo, hi = 0, len(ranking)
            if fp32 - trial(0) <= max_drop:
                hi = 0
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if fp32 - trial(mid) <= max_drop:
                    hi = mid
                else:
                    lo = mid
    finally:
        shutil.rmtree(work, ignore_errors=True)
    float_layers = ranking[:hi]
    final_cfg = cm.config.with_float_layers(float_layers)
    res = AutoCalResult(float_layers, fp32, scores[0], scores[hi], float(max_drop), ranking,
                        sorted((k, v) for k, v in scores.items() if k != len(ranking) or k == hi), final_cfg)
    res.paths["config"] = out / "config.json"
    remaining = [l for l in cm.layers if l.name not in set(float_layers)]
    with output_set():  # config, models, record and summary renamed into place together
        final_cfg.save(res.paths["config"])
        if remaining:
            res.paths.update(save_model(replace(cm, config=final_cfg, layers=remaining), out / "model",
                                        table.without(float_layers)))
        else:
            res.paths["fp32"] = save_onnx(m, out / "model_fp32.onnx")
        res.paths["summary"] = out / "autocal_summary.json"
        write_text(res.paths["summary"], json.dumps(res.to_json(), indent=2) + "\n")
    return res


__all__ = ["AutoCalResult", "Evaluator", "accuracy_based_auto_calibration"]
