"""The AMCT-style flow for ONNX models: ``create_quant_config`` -> ``quantize_model`` (calibrate) ->
``save_model`` (fake-quant model, deploy model, record), and the one-call :func:`quantize`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Union

import onnx

from ferroquant.config import QuantConfig, build_config, load_config
from ferroquant.errors import ConfigError, DataError
from ferroquant.onnx.calibration import (
    IFMR_MODEL_BUDGET,
    CalibratedModel,
    CalibrationData,
    Progress,
    ifmr_share,
    make_activation_calibrator,
    quantize_weight,
    run_calibration,
)
from ferroquant.onnx.fusion import fuse
from ferroquant.onnx.graph import GraphView
from ferroquant.onnx.io import load_model
from ferroquant.onnx.layers import QuantTable, quantizable_layers

ModelLike = Union[str, Path, onnx.ModelProto]


def _fused(model: ModelLike, do_fusion: bool, skip: Iterable[str]):
    m = load_model(model)
    return fuse(m, do_fusion=do_fusion, skip_fusion_layers=tuple(skip))


def create_quant_config(config_path: Optional[Union[str, Path]], model: ModelLike,
                        skip_layers: Optional[Iterable[str]] = None, batch_num: int = 1,
                        activation_offset: bool = True, config_defination: Optional[Union[str, Path, Mapping]] = None,
                        do_fusion: bool = True, skip_fusion_layers: Iterable[str] = ()) -> QuantConfig:
    """Write (when ``config_path`` is given) and return a config with one entry per quantizable layer of the
    model as it will be after fusion. ``config_defination`` (AMCT's spelling) may hold ``common_config``,
    ``override_layer_types`` and ``override_layer_configs`` (by layer name)."""
    m, _ = _fused(model, do_fusion, skip_fusion_layers)
    layers = [(l.name, l.op_type) for l in quantizable_layers(m)]
    if not layers:
        raise ConfigError("the model has no quantizable layer (Conv, ConvTranspose, Gemm, MatMul with a constant "
                          "weight)")
    extra: Dict[str, Any] = {}
    if config_defination is not None:
        src = config_defination
        extra = dict(src) if isinstance(src, Mapping) else load_json(src)
        unknown = set(extra) - {"common_config", "override_layer_types", "override_layer_configs"}
        if unknown:
            raise ConfigError(f"config_defination: unknown keys {sorted(unknown)}")
    cfg = build_config(layers, skip_layers or (), batch_num, activation_offset, extra.get("common_config"),
                       extra.get("override_layer_types"), extra.get("override_layer_configs"), do_fusion,
                       tuple(skip_fusion_layers))
    if config_path is not None:
        cfg.save(config_path)
    return cfg


def load_json(path: Union[str, Path]) -> Dict[str, Any]:
    import json

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"file not found: {p}")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None


def quantize_model(config: Union[str, Path, Mapping, QuantConfig], model: ModelLike,
                   calibration_data: CalibrationData, batch_num: Optional[int] = None,
                   progress: Progress = False, ifmr_memory_budget: int = IFMR_MODEL_BUDGET) -> CalibratedModel:
    """Fuse, calibrate every enabled layer's input activation on ``calibration_data`` (at most ``batch_num``
    batches; default the config's ``batch_num``), and quantize the weights. Returns the calibrated state.

    Exact IFMR stores the samples it searches; all its tensors together keep at most ``ifmr_memory_budget``
    bytes (an equal share each), and a tensor that outgrows its share continues in the histogram percentile
    mode (one warning names them), so memory does not grow with the number of calibration batches."""
    cfg = load_config(config)
    t0 = time.perf_counter()
    m, report = _fused(model, cfg.do_fusion, cfg.skip_fusion_layers)
    found = {l.name: l for l in quantizable_layers(m)}
    missing = [n for n in cfg.layers if n not in found]
    if missing:
        raise ConfigError(f"config names layers the model does not have (after fusion): {missing}")
    layers = [found[n] for n in cfg.enabled_layers()]
    if not layers:
        raise ConfigError("no layer is enabled for quantization")
    view = GraphView(m)
    cals: Dict[str, Any] = {}
    weights = {}
    share = ifmr_share(cfg, layers, ifmr_memory_budget)
    for l in layers:
        lc = cfg.layers[l.name]
        if l.activation not in cals:
            cals[l.activation] = make_activation_calibrator(l.activation, lc, cfg.activation_asymmetric(l.name),
                                                            share)
        weights[l.name] = quantize_weight(l, view.array(l.weight), lc)
    cm = CalibratedModel(m, cfg, layers, cals, weights, fusion=report)
    cm.timings["prepare_s"] = time.perf_counter() - t0
    run_calibration(cm, calibration_data, batch_num if batch_num is not None else cfg.batch_num, progress)
    return cm


def save_model(calibrated: CalibratedModel, save_path: Union[str, Path],
               table: Optional[QuantTable] = None) -> Dict[str, Path]:
    """Write ``<save_path>_fake_quant.onnx`` (QDQ simulation), ``<save_path>_deploy.onnx`` (int8 weights, int32
    bias) and ``<save_path>_quant_record.json`` (every layer's scales and offsets). Returns the paths.
    ``table``: qparams already searched with ``calibrated.table()`` (not searched again)."""
    from ferroquant.onnx.io import save_onnx as write_onnx
    from ferroquant.onnx.qdq import export_deploy, export_fake_quant
    from ferroquant.onnx.record import write_record

    if table is None:
        t0 = time.perf_counter()
        table = calibrated.table()
        calibrated.timings["search_s"] = time.perf_counter() - t0
    base = Path(save_path)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = {"fake_quant": Path(f"{base}_fake_quant.onnx"), "deploy": Path(f"{base}_deploy.onnx"),
             "record": Path(f"{base}_quant_record.json")}
    write_onnx(export_fake_quant(calibrated.model, table), paths["fake_quant"])
    write_onnx(export_deploy(calibrated.model, table), paths["deploy"])
    write_record(paths["record"], table)
    return paths


def quantize(model: ModelLike, calibration_data: CalibrationData, output_path: Union[str, Path],
             config: Optional[Union[str, Path, Mapping, QuantConfig]] = None, progress: Progress = False,
             **config_kwargs: Any) -> Dict[str, Any]:
    """One call, for users of onnxruntime's ``quantize_static`` or NNCF: calibrate on every batch of
    ``calibration_data`` (an iterable of feeds, a callable, or an onnxruntime ``CalibrationDataReader``) and
    write the deploy model to ``output_path`` (the fake-quant model and record beside it). Keyword arguments
    go to :func:`create_quant_config` when no config is given."""
    out = Path(output_path)
    if out.suffix != ".onnx":
        raise DataError(f"output_path must end in .onnx, got {out}")
    if config is None:
        config_kwargs.setdefault("batch_num", 1 << 30)
        config = create_quant_config(None, model, **config_kwargs)
    elif config_kwargs:
        raise ConfigError(f"pass either a config or config options, not both ({sorted(config_kwargs)})")
    cm = quantize_model(config, model, calibration_data, progress=progress)
    paths = save_model(cm, out.with_suffix(""))
    paths["deploy"].replace(out)
    paths["deploy"] = out
    return {"paths": paths, "batches": cm.batches, "layers": len(cm.layers), "timings": cm.timings,
            "calibrated": cm}
