"""The AMCT-style flow for ONNX models: ``create_quant_config`` -> ``quantize_model`` (calibrate) ->
``save_model`` (fake-quant model, deploy model, record), and the one-call :func:`quantize`.

A model is loaded and fused once per run: :func:`prepare_model` returns a :class:`PreparedModel` that both
``create_quant_config`` and ``quantize_model`` accept (a path or ``ModelProto`` is prepared on the way in)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import onnx

from ferroquant.calibrate import ChannelCalibrator
from ferroquant.config import QuantConfig, WeightParams, build_config, load_config, load_json
from ferroquant.config.weight_only import WeightOnlyConfig, has_weight_only_section, load_weight_only_config
from ferroquant.errors import ConfigError, DataError
from ferroquant.onnx.calibration import CalibratedModel, CalibrationData, Progress, replayable, run_calibration
from ferroquant.onnx.deploy import Violation, check_latency, check_rules, deploy_layout, enforce
from ferroquant.onnx.fusion import FusionReport, fuse
from ferroquant.onnx.external import is_large
from ferroquant.onnx.graph import GraphView
from ferroquant.onnx.io import load_model, save_onnx
from ferroquant.onnx.layers import depthwise_inputs, quantizable_layers
from ferroquant.onnx.mixed_precision import search_precision
from ferroquant.onnx.methods import apply_methods, fp32_change, layer_grams, layer_moments, layer_patches
from ferroquant.onnx.placement import plan_deploy
from ferroquant.onnx.qdq import Layout, export_deploy, export_fake_quant
from ferroquant.onnx.record import write_record
from ferroquant.onnx.smooth import balance
from ferroquant.onnx.smooth import report as smooth_report
from ferroquant.onnx.weight_only import WeightOnlyModel, quantize_weights_only, save_weight_only
from ferroquant.outputs import output_set, refuse_input
from ferroquant.ops.types import AdaRoundOptions
from ferroquant.quant.adaround import LayerGram
from ferroquant.quant.calibrators import IFMR_MODEL_BUDGET, layer_calibrators
from ferroquant.quant.profiles import DEFAULT_PROFILE, CpuTypes, cpu_types_for
from ferroquant.quant.profiles import profile as get_profile
from ferroquant.quant.table import LayerInfo, QuantTable
from ferroquant.quant.weights import quantize_weight

ModelLike = Union[str, Path, onnx.ModelProto]
WeightOnlyLike = Union[WeightOnlyConfig, bool, str, Path, Mapping[str, Any]]


@dataclass(frozen=True)
class PreparedModel:
    """A model loaded, checked and fused once, with its quantizable layers and the fusion settings used."""

    model: onnx.ModelProto
    fusion: FusionReport
    layers: Tuple[LayerInfo, ...]
    do_fusion: bool = True
    skip_fusion_layers: Tuple[str, ...] = ()


def prepare_model(model: Union[ModelLike, PreparedModel], do_fusion: bool = True,
                  skip_fusion_layers: Iterable[str] = (), *, loaded: bool = False) -> PreparedModel:
    """Load ``model`` (:func:`~ferroquant.onnx.load_model`; skipped when ``loaded`` says it already went through
    it) and fold its BatchNormalizations; a :class:`PreparedModel` made with the same settings is returned as
    it is."""
    skip = tuple(skip_fusion_layers)
    if isinstance(model, PreparedModel):
        if (model.do_fusion, model.skip_fusion_layers) == (do_fusion, skip):
            return model
        if model.do_fusion:
            raise ConfigError("the model was prepared with other fusion settings (do_fusion, skip_fusion_layers) "
                              "than the config asks for: prepare it again from the original model")
        model = model.model
    if not (loaded and isinstance(model, onnx.ModelProto)):
        model = load_model(model)
    fused, report = fuse(model, do_fusion=do_fusion, skip_fusion_layers=skip)
    return PreparedModel(fused, report, tuple(quantizable_layers(fused)), do_fusion, skip)


def create_quant_config(config_path: Optional[Union[str, Path]], model: Union[ModelLike, PreparedModel],
                        skip_layers: Optional[Iterable[str]] = None, batch_num: Optional[int] = 1,
                        activation_offset: Optional[bool] = None,
                        config_defination: Optional[Union[str, Path, Mapping]] = None, do_fusion: bool = True,
                        skip_fusion_layers: Iterable[str] = (), *, symmetric: Optional[bool] = None,
                        skip_layer_types: Iterable[str] = (), activation_matmul: Optional[bool] = None
                        ) -> QuantConfig:
    """Write (when ``config_path`` is given) and return a config with one entry per quantizable layer of the
    model as it is after fusion. ``config_defination`` (AMCT's spelling; a dict or a JSON file) may hold
    ``common_config``, ``override_layer_types`` and ``override_layer_configs`` (by layer name).
    ``symmetric`` (default False) sets symmetric activations; ``activation_offset`` is AMCT's name for its
    negation. ``batch_num`` None calibrates on every batch. ``activation_matmul``: quantize attention's
    activation x activation MatMuls (Q.K^T, P.V) per tensor (None: the deploy profile's policy, off)."""
    if activation_offset is not None and symmetric is not None:
        raise ConfigError("pass symmetric or AMCT's activation_offset, not both")
    sym = bool(symmetric) if symmetric is not None else (activation_offset is False)
    prepared = prepare_model(model, do_fusion, skip_fusion_layers)
    layers = [(l.name, l.op_type) for l in prepared.layers]
    if not layers:
        raise ConfigError("the model has no quantizable layer (Conv, ConvTranspose, Gemm, MatMul with a constant "
                          "weight)")
    extra: Dict[str, Any] = {}
    if config_defination is not None:
        src = config_defination
        extra = dict(src) if isinstance(src, Mapping) else load_json(src, "config_defination file")
        unknown = set(extra) - {"common_config", "override_layer_types", "override_layer_configs", "methods"}
        if unknown:
            raise ConfigError(f"config_defination: unknown keys {sorted(unknown)}")
    cfg = build_config(layers, skip_layers or (), batch_num, sym, extra.get("common_config"),
                       extra.get("override_layer_types"), extra.get("override_layer_configs"), do_fusion,
                       tuple(skip_fusion_layers), tuple(skip_layer_types), extra.get("methods"), activation_matmul)
    if config_path is not None:
        refuse_input([config_path], [model], "config_path")
        cfg.save(config_path)
    return cfg


def _enabled_layers(cfg: QuantConfig, prepared: PreparedModel) -> List[LayerInfo]:
    found = {l.name: l for l in prepared.layers}
    missing = [n for n in cfg.layers if n not in found]
    if missing:
        raise ConfigError(f"config names layers the model does not have (after fusion): {missing}")
    for n, c in cfg.layers.items():
        if c.layer_type != found[n].op_type:
            raise ConfigError(f"layer {n!r}, field 'layer_type': the config says {c.layer_type}, the model's node "
                              f"is a {found[n].op_type}")
    layers = [found[n] for n in cfg.enabled_layers()]
    if not layers:
        raise ConfigError("no layer is enabled for quantization")
    return layers


def _weight_params(params: WeightParams, cpu: CpuTypes) -> WeightParams:
    """The weight parameters the CPU's kernels cannot saturate on (ARQ bits capped; NUQ is checked at export)."""
    if params.algorithm == "arq" and params.bits > cpu.max_weight_bits:
        return replace(params, bits=cpu.max_weight_bits)
    return params


def _rounding(cfg: QuantConfig, model: onnx.ModelProto, layers: List[LayerInfo], methods: Dict[str, Any]
              ) -> Tuple[Dict[str, LayerGram], Optional[AdaRoundOptions]]:
    """Learned rounding's input streams and options when the config turns it on (the record starts here)."""
    grams, skipped = layer_grams(cfg, model, layers)
    p = cfg.methods.adaround
    if not p.enabled:
        return {}, None
    options = AdaRoundOptions(iterations=p.iterations, reg_weight=p.reg_weight, lr=p.lr)
    methods["adaround"] = {"options": asdict(options), "rows_per_batch": p.rows_per_batch, "layers": {},
                           "skipped": skipped}
    return grams, options


def quantize_weight_only(weight_only: WeightOnlyLike, model: Union[ModelLike, PreparedModel],
                         calibration_data: Optional[CalibrationData] = None, batch_num: Optional[int] = None,
                         progress: Progress = False) -> WeightOnlyModel:
    """Group-wise weight-only quantization (:class:`~ferroquant.config.weight_only.WeightOnlyConfig`, ``True``
    for its defaults, a mapping or a JSON file with a ``weight_only`` section) of every MatMul/Gemm weight;
    GPTQ and AWQ calibrate on ``calibration_data`` (at most ``batch_num`` batches; default the config's).
    :func:`save_model` writes the deploy model and the record."""
    cfg = load_weight_only_config(weight_only)
    if batch_num is not None:
        cfg = replace(cfg, batch_num=batch_num)
    prepared = prepare_model(model)
    return quantize_weights_only(prepared.model, cfg, calibration_data, progress)


def quantize_model(config: Union[str, Path, Mapping, QuantConfig, None], model: Union[ModelLike, PreparedModel],
                   calibration_data: CalibrationData, batch_num: Optional[int] = None,
                   progress: Progress = False, ifmr_memory_budget: int = IFMR_MODEL_BUDGET,
                   profile: str = DEFAULT_PROFILE, cpu_types: Optional[str] = None,
                   weight_only: Optional[WeightOnlyLike] = None) -> Union[CalibratedModel, WeightOnlyModel]:
    """Fuse, calibrate every enabled layer's input activation (and the tensors the deploy ``profile`` quantizes
    besides: layer outputs, residual Adds...) on ``calibration_data`` (at most ``batch_num`` batches; default the
    config's ``batch_num``, None: every batch), and quantize the weights. Returns the calibrated state.

    ``profile`` (:mod:`ferroquant.quant.profiles`): ``onnxruntime`` (default), ``tensorrt`` or ``amct``;
    ``cpu_types`` overrides the integer types detected for this CPU (``u8s8`` with VNNI, ``u8s7`` without:
    7-bit ARQ weights, which onnxruntime's kernels cannot saturate on).

    Exact IFMR stores the samples it searches; all its tensors together keep at most ``ifmr_memory_budget``
    bytes (each sure of 4 MiB, taking more while the others leave room), and a tensor that finds no room
    continues in the histogram percentile mode (one warning names them), so memory does not grow with the
    number of calibration batches.

    ``methods.smooth_quant`` in the config: SmoothQuant balancing (:mod:`ferroquant.onnx.smooth`) on the same
    batches before calibration (a one-shot iterator is read into a list so that it can be read twice);
    ``methods.mixed_precision``: each layer's bits chosen after calibration from its local error on the first
    batches (:mod:`ferroquant.onnx.mixed_precision`).

    ``weight_only`` (or a ``config`` with a ``weight_only`` section): weight-only quantization instead, see
    :func:`quantize_weight_only`; returns a :class:`WeightOnlyModel`."""
    if weight_only is not None or has_weight_only_section(config):
        if weight_only is not None and config is not None:
            raise ConfigError("pass either a static config or weight_only, not both")
        return quantize_weight_only(config if weight_only is None else weight_only, model, calibration_data,
                                    batch_num, progress)
    if config is None:
        raise ConfigError("quantize_model needs a config (or weight_only)")
    cfg = load_config(config)
    limit = batch_num if batch_num is not None else cfg.batch_num
    if cfg.methods.smooth_quant.enabled or cfg.methods.mixed_precision.enabled:  # the data is read once more
        calibration_data = replayable(calibration_data, limit)
    cm, original = calibration_setup(cfg, model, ifmr_memory_budget, profile, cpu_types,
                                     calibration_data if cfg.methods.smooth_quant.enabled else None, limit)
    methods = cm.methods
    run_calibration(cm, calibration_data, limit, progress)
    if methods.get("equalization", {}).get("relu6_replaced") or methods.get("equalization", {}).get("absorbed"):
        methods["equalization"]["fp32_max_relative_difference"] = fp32_change(original, cm.model, cm.sample)
    if methods.get("smooth_quant", {}).get("groups"):
        methods["smooth_quant"]["fp32_max_relative_difference"] = fp32_change(original, cm.model, cm.sample)
    if cfg.methods.mixed_precision.enabled:
        t0 = time.perf_counter()
        search_precision(cm, calibration_data)
        cm.timings["mixed_precision_s"] = time.perf_counter() - t0
    return cm


def calibration_setup(config: Union[str, Path, Mapping, QuantConfig], model: Union[ModelLike, PreparedModel],
                      ifmr_memory_budget: int = IFMR_MODEL_BUDGET, profile: str = DEFAULT_PROFILE,
                      cpu_types: Optional[str] = None, balance_data: Optional[CalibrationData] = None,
                      limit: Optional[int] = None) -> Tuple[CalibratedModel, onnx.ModelProto]:
    """Everything :func:`quantize_model` does before it calibrates: fused (balanced, equalized) model, deploy plan,
    empty calibrators, quantized weights. Returns the state and the model before the accuracy methods.
    ``balance_data`` (at most ``limit`` batches): what SmoothQuant balancing reads, which it needs when the config
    turns it on. (:mod:`ferroquant.onnx.shards` fills the calibrators from saved states instead of data.)"""
    cfg = load_config(config)
    prof = get_profile(profile)
    cpu = cpu_types_for(prof, cpu_types)
    if prof.symmetric:  # e.g. TensorRT: zero points of 0 everywhere
        cfg = cfg.with_symmetric_activations()
    t0 = time.perf_counter()
    prepared = prepare_model(model, cfg.do_fusion, cfg.skip_fusion_layers)
    layers = _enabled_layers(cfg, prepared)
    original = prepared.model
    balanced, methods = original, {}
    if cfg.methods.smooth_quant.enabled:
        if balance_data is None:
            raise ConfigError("methods.smooth_quant balances the model on calibration data, so it cannot be used "
                              "where the calibrators come from saved states (ferroquant merge / quantize --state)")
        bits = {l.name: _weight_params(cfg.layers[l.name].weight, cpu).bits for l in layers}
        balanced, done, skipped = balance(original, cfg.methods.smooth_quant, balance_data, limit, bits)
        methods["smooth_quant"] = smooth_report(done, skipped)
    methods_model, more = apply_methods(cfg, balanced, layers, prepared.fusion)
    methods.update(more)
    if methods_model is not original:  # balanced, equalized or given biases: weight and bias names may change
        prepared = replace(prepared, model=methods_model, layers=tuple(quantizable_layers(methods_model)))
        layers = _enabled_layers(cfg, prepared)
    view = GraphView(prepared.model)
    plan = plan_deploy(prepared.model, layers, prof.placement, asymmetric=not cfg.tensor_symmetric(),
                       opt_in=prof.rules(cfg.opt_ins()))
    cals = layer_calibrators(cfg, layers, ifmr_memory_budget, plan.calibrate,
                             depthwise_inputs(prepared.model, layers))
    weights = {l.name: quantize_weight(l, view.array(l.weight), _weight_params(cfg.layers[l.name].weight, cpu))
               for l in layers}
    grams, rounding = _rounding(cfg, prepared.model, layers, methods)
    patches, not_clipped = layer_patches(cfg, prepared.model, layers,
                                         [t for t, c in cals.items() if isinstance(c, ChannelCalibrator)])
    if patches or not_clipped:
        p = cfg.methods.output_clip
        methods["output_clip"] = {"rows_per_batch": p.rows_per_batch, "max_rows": p.max_rows, "tensors": {},
                                  "skipped": not_clipped}
    cm = CalibratedModel(prepared.model, cfg, layers, cals, weights, fusion=prepared.fusion, profile=prof, cpu=cpu,
                         plan=plan, moments=layer_moments(cfg, prepared.model, layers), methods=methods,
                         grams=grams, rounding=rounding, patches=patches)
    cm.timings["prepare_s"] = time.perf_counter() - t0
    return cm, original


def output_paths(save_path: Union[str, Path], deploy_path: Optional[Union[str, Path]] = None) -> Dict[str, Path]:
    """Where :func:`save_model` writes, for ``save_path`` (``deploy_path``: the deploy model elsewhere)."""
    base = Path(save_path)
    return {"fake_quant": Path(f"{base}_fake_quant.onnx"),
            "deploy": Path(deploy_path) if deploy_path is not None else Path(f"{base}_deploy.onnx"),
            "record": Path(f"{base}_quant_record.json")}


def write_outputs(model: onnx.ModelProto, table: QuantTable, save_path: Union[str, Path],
                  extra: Optional[Mapping[str, Any]] = None, layout: Optional[Layout] = None,
                  deploy: Optional[onnx.ModelProto] = None, deploy_path: Optional[Union[str, Path]] = None
                  ) -> Dict[str, Path]:
    """Export ``model`` with ``table`` and write ``<save_path>_fake_quant.onnx`` (QDQ simulation),
    ``<save_path>_deploy.onnx`` (or ``deploy_path``; int8 weights, int32 bias; Q/DQ per ``layout``, AMCT's
    without; ``deploy``: that model when already exported) and ``<save_path>_quant_record.json``, as one set
    (:func:`ferroquant.outputs.output_set`): all three are renamed into place only once all are written."""
    paths = output_paths(save_path, deploy_path)
    paths["deploy"].parent.mkdir(parents=True, exist_ok=True)
    with output_set():
        save_onnx(export_fake_quant(model, table, layout), paths["fake_quant"])  # first: its float copy is freed
        save_onnx(deploy if deploy is not None else export_deploy(model, table, layout), paths["deploy"])
        write_record(paths["record"], table, extra)
    return paths


def deploy_model(calibrated: CalibratedModel, table: QuantTable, allow_float: bool = False
                 ) -> Tuple[QuantTable, Optional[Layout], List[Violation], onnx.ModelProto]:
    """The table and layout the deploy model is written with, after the profile's rule checker: a violation is
    a ModelError naming the node and the rule, or, with ``allow_float``, its layer is kept in float. Also
    returns the deploy model that passed."""
    kept: List[Violation] = []
    while True:
        layout = deploy_layout(calibrated, table)
        deploy = export_deploy(calibrated.model, table, layout)
        found = check_rules(deploy, calibrated.profile, calibrated.cpu, table)
        floats = {v.node for v in enforce(found, allow_float)} & set(table.layers)
        if not floats:
            return table, layout, kept + found, deploy
        kept += [v for v in found if v.node in floats]
        table = table.without(floats)


def save_model(calibrated: Union[CalibratedModel, WeightOnlyModel], save_path: Union[str, Path],
               table: Optional[QuantTable] = None, allow_float: bool = False,
               latency_check: Optional[bool] = None, deploy_path: Optional[Union[str, Path]] = None
               ) -> Dict[str, Path]:
    """Write the three files of :func:`write_outputs` for a calibrated model: the deploy model in the
    calibration's profile, checked against its rules first (:func:`deploy_model`) and, for the ``onnxruntime``
    profile, timed against FP32 on the first calibration batch with the layers that are slower in integer kept
    float (``latency_check=False`` skips that; by default it is skipped for models over 2 GB, where it would
    double the peak memory; see :mod:`ferroquant.onnx.latency`). Returns the paths.
    ``table``: qparams already searched with ``calibrated.table()`` (not searched again); ``deploy_path``: write
    the deploy model there instead of ``<save_path>_deploy.onnx``. A weight-only model
    (:func:`quantize_weight_only`) writes its deploy model and record (:func:`save_weight_only`)."""
    if isinstance(calibrated, WeightOnlyModel):
        return save_weight_only(calibrated, save_path)
    if table is None:
        t0 = time.perf_counter()
        table = calibrated.table()
        calibrated.timings["search_s"] = time.perf_counter() - t0
    table, layout, violations, deploy = deploy_model(calibrated, table, allow_float)
    kept = sorted({v.node for v in violations})
    extra: Dict[str, Any] = {"profile": calibrated.profile.name, "cpu_types": calibrated.cpu.name}
    if calibrated.methods:
        extra["methods"] = calibrated.methods
    large = is_large(calibrated.model)  # walks every tensor: once
    check = calibrated.profile.latency_check if latency_check is None else latency_check
    if latency_check is None and check and large:
        # timing needs the float model in onnxruntime beside the one held here: over 2 GB that doubles the
        # peak memory, so the check runs only when asked for (latency_check=True)
        check, extra["latency"] = False, {"skipped": "model over 2 GB; pass latency_check=True to run it"}
    if check and calibrated.profile.placement == "onnxruntime" and calibrated.sample is not None:
        t0 = time.perf_counter()
        checked, layout, report = check_latency(calibrated, table, layout, calibrated.sample, deploy=deploy)
        deploy, table = (deploy if checked is table else None), checked
        calibrated.timings["latency_check_s"] = time.perf_counter() - t0
        calibrated.latency = report
        extra["latency"] = report.to_json()
        kept = sorted(set(kept) | set(report.kept_float))
    extra["kept_float"] = kept
    extra["scale_guard"] = list(table.scale_guard)
    if large:
        deploy = None  # exported again after the fake-quant model is written: never two copies held at once
    t0 = time.perf_counter()
    paths = write_outputs(calibrated.model, table, save_path, extra, layout, deploy, deploy_path)
    calibrated.timings["write_s"] = time.perf_counter() - t0
    return paths


def quantize(model: ModelLike, calibration_data: CalibrationData, output_path: Union[str, Path],
             config: Optional[Union[str, Path, Mapping, QuantConfig]] = None, progress: Progress = False,
             profile: str = DEFAULT_PROFILE, cpu_types: Optional[str] = None, allow_float: bool = False,
             latency_check: Optional[bool] = None, weight_only: Optional[WeightOnlyLike] = None,
             **config_kwargs: Any) -> Dict[str, Any]:
    """One call, for users of onnxruntime's ``quantize_static`` or NNCF: calibrate on every batch of
    ``calibration_data`` (an iterable of feeds, a callable, or an onnxruntime ``CalibrationDataReader``) and
    write the deploy model to ``output_path`` (the fake-quant model and record beside it). Keyword arguments
    go to :func:`create_quant_config` when no config is given. ``profile`` / ``cpu_types``: see
    :func:`quantize_model`; ``allow_float``: keep layers that break the profile's rules in float instead of
    refusing; ``latency_check``: see :func:`save_model`; ``weight_only``: group-wise weight-only quantization
    instead (:func:`quantize_weight_only`; the record beside ``output_path``)."""
    out = Path(output_path)
    if out.suffix != ".onnx":
        raise DataError(f"output_path must end in .onnx, got {out}")
    sources = [model] + ([config] if isinstance(config, (str, Path)) else [])
    refuse_input(output_paths(out.with_suffix(""), out).values(), sources, "output_path")
    if weight_only is not None or has_weight_only_section(config):
        if config_kwargs or (weight_only is not None and config is not None):
            raise ConfigError("weight_only takes its options in its own config, not config options or a config")
        wom = quantize_weight_only(config if weight_only is None else weight_only, model, calibration_data,
                                   progress=progress)
        paths = save_weight_only(wom, out.with_suffix(""))
        paths["deploy"].replace(out)
        paths["deploy"] = out
        return {"paths": paths, "batches": wom.batches, "layers": len(wom.quants), "timings": wom.timings,
                "calibrated": wom}
    load_s = None
    if config is None:
        config_kwargs.setdefault("batch_num", None)
        t0 = time.perf_counter()
        prepared = prepare_model(model, config_kwargs.get("do_fusion", True),
                                 config_kwargs.get("skip_fusion_layers", ()))
        load_s = time.perf_counter() - t0
        config = create_quant_config(None, prepared, **config_kwargs)
        model = prepared  # type: ignore[assignment]
    elif config_kwargs:
        raise ConfigError(f"pass either a config or config options, not both ({sorted(config_kwargs)})")
    cm = quantize_model(config, model, calibration_data, progress=progress, profile=profile, cpu_types=cpu_types)
    if load_s is not None:  # else the model was loaded and fused within prepare_s
        cm.timings["load_s"] = load_s
    paths = save_model(cm, out.with_suffix(""), allow_float=allow_float, latency_check=latency_check,
                       deploy_path=out)
    return {"paths": paths, "batches": cm.batches, "layers": len(cm.layers), "timings": cm.timings,
            "calibrated": cm}
