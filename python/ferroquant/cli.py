"""The ``ferroquant`` command (also ``python -m ferroquant``): config, quantize, calibrate, merge, fuse, report,
autocal, demo.

Every failure the user can fix (a missing file, a bad config, data of the wrong shape or name, a malformed
model) ends in one line ``ferroquant: error: ...`` on stderr and exit status 1 (2 for bad arguments); ``--debug``
shows the traceback instead. Progress bars go to stderr; ``--quiet`` silences them.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ferroquant.config.ptq import ACT_ALGORITHMS, WEIGHT_ALGORITHMS
from ferroquant.cli_args import Parser, count, number
from ferroquant.config.weight_only import WEIGHT_ONLY_ALGORITHMS, WEIGHT_ONLY_FORMATS
from ferroquant.errors import ConfigError, DataError, QuantError

EVALUATOR_CONTRACT = """The evaluator file defines evaluate(model_path: str) -> float: it receives the path of an
ONNX model file (the FP32 model, then fake-quant QDQ models), runs it on the user's validation data, and returns
a metric where higher is better (accuracy, top-1 agreement, mAP...). The drop is metric(FP32) - metric(quant)."""


def _common() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (warnings, errors and the result lines on stdout remain)")
    p.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    return p


#: The accuracy methods' on/off switches (``_config_and_model`` turns them into the config).
METHOD_SWITCHES = (
    ("--equalize", "cross-layer equalization of Conv -> Relu -> Conv chains before calibration"),
    ("--relu6-to-relu", "with --equalize: replace ReLU6 between equalized Convs by Relu (changes the FP32 model)"),
    ("--bias-correction", "empirical bias correction of every Conv whose mean output error on the calibration data "
                          "stands out from its batch-to-batch noise"),
    ("--adaround", "learned rounding (AdaRound) of Conv/Gemm/MatMul weights on their ARQ grid, by each layer's "
                   "output on the calibration data"),
    ("--per-channel-depthwise", "per-channel activation scales on depthwise-Conv inputs (not for the onnxruntime "
                                "and tensorrt profiles)"),
    ("--output-clip", "choose each layer input's clip by the error it causes in the outputs of the Conv/Gemm/MatMul "
                      "layers that read it (on the calibration data), not only in the tensor itself"),
)


def _quant_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("quantization options (for a default config; not with --config)")
    g.add_argument("--act-algo", choices=ACT_ALGORITHMS, help="activation calibration (default ifmr)")
    g.add_argument("--wts-algo", choices=WEIGHT_ALGORITHMS + WEIGHT_ONLY_ALGORITHMS,
                   help="weight quantization (default arq; with --weight-only: rtn (default), gptq or awq)")
    g.add_argument("--bits", type=count(1), help="activation bits (4, 8, 16) and weight bits (2..8; 8 when 16)")
    g.add_argument("--symmetric", action="store_true", help="symmetric activations (zero point 0)")
    g.add_argument("--skip", metavar="NAME", action="append", default=[], help="keep this layer in float")
    g.add_argument("--skip-type", metavar="OP", action="append", default=[],
                   help="keep every layer of this op type in float (Conv, ConvTranspose, Gemm, MatMul)")
    g.add_argument("--activation-matmul", action="store_true",
                   help="also quantize attention's activation x activation MatMuls (Q.K^T, P.V) per tensor "
                        "(off by default: it costs accuracy on the transformers measured)")
    m = p.add_argument_group("accuracy methods (off by default)")
    for flag, text in METHOD_SWITCHES:
        m.add_argument(flag, action="store_true", help=text)
    m.add_argument("--smooth-quant", nargs="?", const="search", metavar="ALPHA",
                   help="SmoothQuant balancing of LayerNorm -> MatMul groups before calibration (transformers); "
                        "ALPHA in [0, 1] fixes alpha, default: searched per LayerNorm")
    m.add_argument("--mixed-precision", nargs="?", const="1.0", metavar="SIZE",
                   help="mixed precision: each layer's weight bits (4/8) and input bits (8/16) chosen by local "
                        "error under a weight size budget, SIZE a fraction of all-int8's (default 1.0) or a byte "
                        "count ending in B (e.g. 2500000B); 16-bit activations are for the amct profile")
    m.add_argument("--int8-compute-share", type=number(0.0), metavar="SHARE",
                   help="with --mixed-precision: the least share of the MACs kept on 8-bit activations (default 0.9)")
    g = p.add_argument_group("weight-only (group-wise int4/int8 MatMul/Gemm weights, float activations)")
    g.add_argument("--weight-only", action="store_true",
                   help="quantize only the weights of MatMul/Gemm layers, group-wise (onnxruntime MatMulNBits)")
    g.add_argument("--weight-bits", type=int, choices=(4, 8), help="weight-only bits (default 4)")
    g.add_argument("--group-size", type=count(1), metavar="G", help="weight-only inputs per group (default 128)")
    g.add_argument("--weight-format", choices=WEIGHT_ONLY_FORMATS,
                   help="weight-only export: matmulnbits (default) or qdq (opset-21 blocked DequantizeLinear)")
    g.add_argument("--symmetric-weights", action="store_true", help="weight-only: no zero points")
    g.add_argument("--embeddings", action="store_true",
                   help="weight-only: also the Gather tables (embeddings), group-wise per row (RTN)")
    return p


def _calib_options(required: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("calibration data")
    g.add_argument("--calib", required=required, metavar="PATH",
                   help=".npy/.npz file, a folder of them (arrays or dicts keyed by input name), or a folder of "
                        "images")
    g.add_argument("--config", metavar="JSON", help="a config file (from `ferroquant config` or a report's "
                                                    "fallback_config.json)")
    g.add_argument("--batch-num", type=count(1), metavar="N", help="calibrate on the first N batches (default all)")
    g.add_argument("--batch-size", type=count(1), metavar="B",
                   help="samples per batch (default: the model's fixed batch size, else 8)")
    g.add_argument("--input-shape", metavar="NAME:DIMS", action="append", default=[],
                   help="fill in dynamic input dims, e.g. x:1,3,320,320 (-1 keeps a dim dynamic; NAME: may be "
                        "left out for a single-input model); a fixed first dim is the batch size")
    g = p.add_argument_group("image preprocessing (image folders): (x * scale - mean) / std on 0-255 values")
    g.add_argument("--preprocess", choices=["imagenet", "none", "paddleocr", "yolo", "tf"],
                   help="a preset the options below modify: imagenet (centre crop, ImageNet mean/std; default), "
                        "none (plain resize, RGB 0-255), paddleocr ((x/255-0.5)/0.5), yolo (letterbox, x/255), "
                        "tf ((x-127)/128)")
    g.add_argument("--mean", metavar="M[,M,M]", help="per-channel mean (one value or one per channel)")
    g.add_argument("--std", metavar="S[,S,S]", help="per-channel std (one value or one per channel)")
    g.add_argument("--scale", metavar="K", help="multiplier applied first, e.g. 1/255")
    g.add_argument("--channel-order", choices=["RGB", "BGR"], help="channel order the model expects")
    g.add_argument("--resize", choices=["center-crop", "plain", "letterbox"],
                   help="center-crop (short side to 256/224 of the target, centre crop), plain (stretch to the "
                        "target), letterbox (fit, keep the aspect ratio, pad with 114)")
    return p


def _deploy_options(default: Optional[str] = None) -> argparse.ArgumentParser:
    from ferroquant.quant.profiles import CPU_TYPES, DEFAULT_PROFILE, PROFILES

    default = default or DEFAULT_PROFILE
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("deploy model")
    g.add_argument("--profile", choices=sorted(PROFILES), default=default,
                   help=f"the runtime the deploy model is for (default {default}; onnxruntime: Q/DQ where "
                        "onnxruntime forms integer kernels; tensorrt: symmetric int8; amct: Q/DQ on layer inputs "
                        "only, AMCT's simulation layout)")
    g.add_argument("--cpu-types", choices=sorted(CPU_TYPES),
                   help="integer types for the CPU (default: detected; u8s7 = 7-bit weights, which onnxruntime "
                        "cannot saturate on without VNNI; u8s8 with VNNI)")
    g.add_argument("--allow-float", action="store_true",
                   help="keep layers that break the profile's rules in float instead of stopping with an error")
    g.add_argument("--no-latency-check", action="store_true",
                   help="onnxruntime profile: do not time the model against FP32 (layers slower in integer are "
                        "otherwise kept float)")
    return p


def _report_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("report")
    g.add_argument("--report-batches", type=count(1), default=2, metavar="N", help="batches measured (default 2)")
    g.add_argument("--fallback-sqnr", type=number(), default=20.0, metavar="DB",
                   help="the fallback config keeps layers whose local SQNR is under DB in float (default 20)")
    g.add_argument("--fallback-count", type=count(0), metavar="K", help="... or the K most sensitive layers")
    g.add_argument("--no-plots", action="store_true", help="skip the histogram PNGs")


# -- helpers ---------------------------------------------------------------------------------------------------
def _version() -> str:
    from ferroquant import __version__

    return __version__


REPORT_FILES = ("report.json", "report.html", "fallback_config.json")


def _refuse_inputs(args: argparse.Namespace, outputs: List[Path]) -> None:
    """Stop before any work when an output path is one of the command's input files."""
    from ferroquant.outputs import refuse_input

    inputs = [getattr(args, k, None) for k in ("model", "calib", "config", "evaluator")]
    refuse_input(outputs, [p for p in inputs if p], "output")


def _quantize_outputs(out: Path, report: bool) -> List[Path]:
    from ferroquant.onnx.api import output_paths

    files = [*output_paths(out / "model").values(), out / "config.json"]
    return files + ([out / "report" / f for f in REPORT_FILES] if report else [])


def _load_model(path: str):  # noqa: ANN202 - onnx.ModelProto
    from ferroquant.onnx.io import load_model

    return load_model(path)


def _config_and_model(args: argparse.Namespace):  # noqa: ANN202 - (ModelProto, PreparedModel, QuantConfig)
    """The model loaded and fused once, and its config: from ``--config``, or the default config of the model with
    the quantization options applied."""
    from ferroquant.config import QUANTIZABLE_TYPES, load_config
    from ferroquant.onnx.api import create_quant_config, prepare_model

    if getattr(args, "weight_only", False):
        raise ConfigError("--weight-only is an option of `ferroquant quantize`")
    model = _load_model(args.model)
    given = [f"--{k.replace('_', '-')}" for k in ("act_algo", "wts_algo", "bits", "skip", "skip_type", "symmetric",
                                                  "equalize", "relu6_to_relu", "bias_correction",
                                                  "per_channel_depthwise", "output_clip", "smooth_quant", "activation_matmul",
                                                  "mixed_precision", "int8_compute_share")
             if getattr(args, k, None) is not None and getattr(args, k) is not False and getattr(args, k) != []]
    if getattr(args, "config", None):
        if given:
            raise ConfigError(f"--config cannot be combined with {', '.join(given)}: edit the config instead")
        cfg = load_config(args.config)
        return model, prepare_model(model, cfg.do_fusion, cfg.skip_fusion_layers, loaded=True), cfg
    act, wts = {}, {}
    if args.act_algo:
        act["algorithm"] = args.act_algo
    if args.wts_algo:
        wts["algorithm"] = args.wts_algo
    if args.bits is not None:
        act["bits"], wts["bits"] = args.bits, min(args.bits, 8)
    if getattr(args, "relu6_to_relu", False) and not args.equalize:
        raise ConfigError("--relu6-to-relu needs --equalize")
    if getattr(args, "bias_correction", False):
        wts["bias_correction"] = "empirical"
    if getattr(args, "per_channel_depthwise", False):
        act["channel_wise"] = True
    if getattr(args, "output_clip", False):
        act["output_clip"] = True
    methods = ({"equalization": {"enabled": True, "relu6_to_relu": bool(args.relu6_to_relu)}}
               if getattr(args, "equalize", False) else {})
    if getattr(args, "adaround", False):
        methods["adaround"] = {"enabled": True}
    if getattr(args, "smooth_quant", None):
        methods["smooth_quant"] = {"enabled": True, "alpha": _alpha(args.smooth_quant)}
    if getattr(args, "mixed_precision", None) is not None or getattr(args, "int8_compute_share", None) is not None:
        methods["mixed_precision"] = _mixed_precision(args)
    bad = sorted(set(args.skip_type) - set(QUANTIZABLE_TYPES))
    if bad:
        raise ConfigError(f"--skip-type: unknown op types {bad} (quantizable: {list(QUANTIZABLE_TYPES)})")
    prepared = prepare_model(model, loaded=True)
    cfg = create_quant_config(None, prepared, skip_layers=args.skip, batch_num=None, symmetric=args.symmetric,
                              skip_layer_types=args.skip_type,
                              activation_matmul=True if getattr(args, "activation_matmul", False) else None,
                              config_defination={"common_config": {"activation": act, "weight": wts},
                                                 "methods": methods})
    return model, prepared, cfg


def _mixed_precision(args: argparse.Namespace) -> Dict[str, Any]:
    """``--mixed-precision [SIZE]`` and ``--int8-compute-share`` as the config's ``methods.mixed_precision``."""
    if args.mixed_precision is None:
        raise ConfigError("--int8-compute-share needs --mixed-precision")
    text = args.mixed_precision.strip()
    out: Dict[str, Any] = {"enabled": True}
    try:
        if text.upper().endswith("B"):
            out["size_bytes"] = int(text[:-1])
        else:
            out["size_fraction"] = float(text)
    except ValueError:
        raise ConfigError(f"--mixed-precision: SIZE must be a fraction of all-int8's weight size (e.g. 0.8) or a "
                          f"byte count ending in B (e.g. 2500000B), got {text!r}") from None
    if args.int8_compute_share is not None:
        out["int8_compute_share"] = args.int8_compute_share
    return out


def _alpha(text: str) -> Optional[float]:
    """``--smooth-quant``'s value: None for ``search``, else a number (range checked by the config)."""
    if text == "search":
        return None
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--smooth-quant: ALPHA must be a number in [0, 1] (or omitted), got {text!r}") from None


def _preprocess(args: argparse.Namespace):  # noqa: ANN202 - a Preprocess
    from ferroquant.preprocess import parse_numbers, preset

    scale = parse_numbers(args.scale, "--scale")
    if scale is not None and len(scale) != 1:
        raise DataError(f"--scale takes one number, got {args.scale!r}")
    return preset(args.preprocess).with_options(
        mean=parse_numbers(args.mean, "--mean"), std=parse_numbers(args.std, "--std"),
        scale=None if scale is None else scale[0], channel_order=args.channel_order, resize=args.resize)


def _calibration(args: argparse.Namespace, model: Any, cfg: Any):  # noqa: ANN202 - a CalibrationSet
    from ferroquant.calib_data import load_calibration_data, model_inputs, parse_input_shape

    if args.batch_num is not None and args.batch_num < 1:
        raise DataError(f"--batch-num must be >= 1, got {args.batch_num}")
    limit = args.batch_num or (cfg.batch_num if args.config else None)
    shapes = dict(parse_input_shape(text) for text in args.input_shape)
    return load_calibration_data(args.calib, model_inputs(model), args.batch_size, _preprocess(args), limit,
                                 shapes)


def _calibrate(args: argparse.Namespace):  # noqa: ANN202
    from ferroquant.onnx.api import quantize_model
    from ferroquant.progress import ProgressBar

    model, prepared, cfg = _config_and_model(args)
    feeds = _calibration(args, model, cfg)
    with ProgressBar("calibrating", len(feeds), "batches") as bar:
        cm = quantize_model(cfg, prepared, feeds, batch_num=len(feeds), progress=bar,
                            profile=getattr(args, "profile", "amct"), cpu_types=getattr(args, "cpu_types", None))
    with ProgressBar("searching clips", len(cm.calibrators), "tensors") as bar:
        table = cm.table(progress=bar)
    return cm, feeds, table


def _write_report(args: argparse.Namespace, cm: Any, feeds: List[dict], table: Any, out: Path) -> None:
    from ferroquant.report import create_report, summary_lines
    from ferroquant.report.render import fallback_sentence

    rep, paths = create_report(cm, feeds, out, args.report_batches, not args.no_plots, args.fallback_sqnr,
                               args.fallback_count, table)
    print(summary_lines(rep))
    print(f"report: {paths['html']} (JSON {paths['json'].name}, plots/)")
    worst = rep.worst(args.fallback_count, args.fallback_sqnr)
    print("fallback: " + fallback_sentence(worst, args.fallback_sqnr, args.fallback_count)
          .replace("fallback_config.json", str(paths["fallback_config"]), 2))


# -- commands --------------------------------------------------------------------------------------------------
def _cmd_config(args: argparse.Namespace) -> int:
    _refuse_inputs(args, [Path(args.output)])
    _, _, cfg = _config_and_model(args)
    cfg.save(args.output)
    print(f"wrote {args.output}: {len(cfg.layers)} layers, {len(cfg.enabled_layers())} quantized")
    return 0


def _weight_only_config(args: argparse.Namespace):  # noqa: ANN202 - a WeightOnlyConfig or None
    """The weight-only config of the command line: from ``--config`` (a ``weight_only`` section) or the flags;
    None for static quantization."""
    from ferroquant.config.weight_only import WeightOnlyConfig, has_weight_only_section, load_weight_only_config

    flags = {"bits": args.weight_bits, "group_size": args.group_size, "format": args.weight_format}
    given = [f"--{k.replace('_', '-')}" for k in ("weight_bits", "group_size", "weight_format", "symmetric_weights",
                                                  "embeddings") if getattr(args, k)]
    if getattr(args, "config", None) and has_weight_only_section(args.config):
        if given or args.wts_algo:
            raise ConfigError(f"--config cannot be combined with {', '.join(given + ['--wts-algo'])}")
        return load_weight_only_config(args.config)
    if not args.weight_only:
        if given:
            raise ConfigError(f"{', '.join(given)} need --weight-only")
        if args.wts_algo in WEIGHT_ONLY_ALGORITHMS:
            raise ConfigError(f"--wts-algo {args.wts_algo} is a weight-only algorithm: add --weight-only")
        return None
    if args.wts_algo in WEIGHT_ALGORITHMS:
        raise ConfigError(f"--weight-only takes --wts-algo {'/'.join(WEIGHT_ONLY_ALGORITHMS)}, got {args.wts_algo}")
    opts = {k: v for k, v in flags.items() if v is not None}
    return WeightOnlyConfig(algorithm=args.wts_algo or "rtn", symmetric=args.symmetric_weights,
                            skip_layers=tuple(args.skip), batch_num=args.batch_num, embeddings=args.embeddings, **opts)


def _cmd_weight_only(args: argparse.Namespace, cfg: Any) -> int:
    from ferroquant.onnx.api import quantize_weight_only, save_model
    from ferroquant.progress import ProgressBar

    model = _load_model(args.model)
    if cfg.needs_data:
        feeds = _calibration(args, model, cfg)
        with ProgressBar("calibrating", len(feeds), "batches") as bar:
            wom = quantize_weight_only(cfg, model, feeds, progress=bar)
    else:
        wom = quantize_weight_only(cfg, model)
    out = Path(args.out)
    paths = save_model(wom, out / "model")
    cfg.save(out / "config.json")
    print(f"weight-only {cfg.algorithm} int{cfg.bits} g{cfg.group_size} ({cfg.format}): {len(wom.quants)} layers"
          + (f", calibrated on {wom.batches} batches" if wom.batches else ""))
    for k, p in paths.items():
        print(f"{k:10s} {p}")
    return 0


def _cmd_quantize(args: argparse.Namespace) -> int:
    from ferroquant.outputs import output_set

    out = Path(args.out)
    _refuse_inputs(args, _quantize_outputs(out, args.report))
    wo = _weight_only_config(args)
    if wo is not None:
        return _cmd_weight_only(args, wo)
    if args.state:
        return _quantize_state(args, out)
    if args.calib is None:
        raise ConfigError("quantize needs --calib (calibration data) or --state (a merged calibration state)")
    cm, feeds, table = _calibrate(args)
    with output_set():  # models, record, config and report are renamed into place together, at the end
        paths = _save_quantized(args, cm, table, out)
        if args.report:
            _write_report(args, cm, feeds, table, out / "report")
    if not args.report:
        _print_check(cm, paths["fake_quant"])
    return 0


def _quantize_state(args: argparse.Namespace, out: Path) -> int:
    """``quantize --state``: search the merged calibrators and export; no data, so no latency check."""
    from ferroquant.cli_state import calibrated_from_args
    from ferroquant.outputs import output_set
    from ferroquant.progress import ProgressBar

    cm = calibrated_from_args(args)
    with ProgressBar("searching clips", len(cm.calibrators), "tensors") as bar:
        table = cm.table(progress=bar)
    args.no_latency_check = True
    with output_set():
        _save_quantized(args, cm, table, out)
    return 0


def _print_check(cm: Any, fake_quant: Path) -> None:
    """The short summary printed instead of the per-layer report (opt-in: it costs 0.2-2x the quantization)."""
    import onnx

    from ferroquant.report.measure import check_lines, output_check

    sample = cm.sample or {}
    first = next(iter(sample.values()), None)
    samples = int(first.shape[0]) if first is not None and first.ndim else 1
    for line in check_lines(output_check(cm.model, onnx.load(str(fake_quant)), sample), samples):
        print(line)
    print("per-layer report (every layer's output and local SQNR, histograms, a fallback config): add --report, "
          "or run `ferroquant report`")


def _save_quantized(args: argparse.Namespace, cm: Any, table: Any, out: Path) -> dict:
    from ferroquant.onnx.api import save_model

    with warnings.catch_warnings():  # the latency check's outcome is printed below, with its timings
        for message in ("kept in float because their integer kernels are slower", "the quantized model ran slower"):
            warnings.filterwarnings("ignore", message=message, category=RuntimeWarning)
        paths = save_model(cm, out / "model", table, allow_float=args.allow_float,
                           latency_check=False if args.no_latency_check else None)
    cm.config.save(out / "config.json")
    print(f"calibrated {len(cm.layers)} layers on {cm.batches} batches; deploy profile {cm.profile.name} "
          f"({cm.cpu.name} types: {cm.cpu.reason})")
    if cm.latency is not None:
        lat = cm.latency
        print(f"latency (onnxruntime, this machine): FP32 {lat.fp32_ms:.2f} ms, deploy {lat.deploy_ms:.2f} ms"
              + ("; the quantized model was slower than FP32 even with its slow layers in float, so every layer "
                 "is kept in float (--no-latency-check writes it quantized)" if lat.all_float else
                 f"; kept float for speed: {', '.join(lat.kept_float)}" if lat.kept_float else ""))
    for k, p in paths.items():
        print(f"{k:10s} {p}")
    return paths


def _cmd_report(args: argparse.Namespace) -> int:
    _refuse_inputs(args, [Path(args.out) / f for f in REPORT_FILES])
    cm, feeds, table = _calibrate(args)
    _write_report(args, cm, feeds, table, Path(args.out))
    return 0


def _cmd_fuse(args: argparse.Namespace) -> int:
    from ferroquant.onnx.fusion import fuse
    from ferroquant.onnx.io import save_onnx

    _refuse_inputs(args, [Path(args.output)])
    fused, rep = fuse(_load_model(args.model), skip_fusion_layers=args.skip)
    save_onnx(fused, args.output)
    print(rep.summary())
    print(f"wrote {args.output}: {len(rep.folded)} fold(s), {len(rep.skipped)} skipped")
    return 0


def load_evaluator(path: str) -> Callable[[str], float]:
    """The ``evaluate`` function of a Python file (see :data:`EVALUATOR_CONTRACT`)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"evaluator file not found: {p}")
    spec = importlib.util.spec_from_file_location(f"ferroquant_evaluator_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise DataError(f"{p}: cannot be imported as a Python file")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn = getattr(mod, "evaluate", None)
    if not callable(fn):
        raise DataError(f"{p}: defines no function evaluate(model_path) -> float")
    return fn


def _cmd_autocal(args: argparse.Namespace) -> int:
    from ferroquant.autocal import accuracy_based_auto_calibration

    from ferroquant.onnx.api import output_paths

    out = Path(args.out)
    _refuse_inputs(args, [*output_paths(out / "model").values(), out / "config.json", out / "model_fp32.onnx",
                          out / "autocal_summary.json"])
    evaluate = load_evaluator(args.evaluator)
    model, _, cfg = _config_and_model(args)
    feeds = _calibration(args, model, cfg)
    res = accuracy_based_auto_calibration(model, evaluate, cfg, feeds, args.max_drop, args.out,
                                          profile=args.profile, cpu_types=args.cpu_types)
    print(f"FP32 metric {res.fp32_metric:.4f}; all layers quantized {res.quantized_metric:.4f}; "
          f"with {len(res.float_layers)} float layer(s) {res.final_metric:.4f} (drop {res.drop:.4f}, "
          f"max {res.max_drop})")
    print(f"float layers: {', '.join(res.float_layers) or '(none)'}")
    for k, p in res.paths.items():
        print(f"{k:10s} {p}")
    return 0 if res.met else 3


def _cmd_demo(args: argparse.Namespace) -> int:
    from ferroquant.examples import demo

    if args.weights:
        return demo.weights_demo(layers=args.layers, check_reference=not args.no_reference, out_dir=args.out)
    return demo.model_demo(args.out or "ferroquant-demo", n_calib=args.calib, n_eval=args.eval)


def build_parser() -> argparse.ArgumentParser:
    from ferroquant.cli_state import add_commands

    common, quant, calib, deploy = _common(), _quant_options(), _calib_options(), _deploy_options()
    p = Parser(prog="ferroquant", description="Post-training quantization of ONNX models with a Rust core "
                                               "(ARQ/NUQ weights, IFMR/HFMG activations).")
    p.add_argument("--version", action="version", version=f"ferroquant {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("config", parents=[common, quant], help="write the default config of a model")
    c.add_argument("model", help="ONNX model file")
    c.add_argument("-o", "--output", required=True, help="config JSON to write")
    c.set_defaults(func=_cmd_config)

    q = sub.add_parser("quantize", parents=[common, quant, _calib_options(required=False), deploy],
                       help="calibrate and write fake-quant and deploy models, record and config (--report: and the "
                            "per-layer report)")
    q.add_argument("model", help="ONNX model file")
    q.add_argument("--out", required=True, metavar="DIR", help="output folder")
    rep = q.add_mutually_exclusive_group()
    rep.add_argument("--report", action="store_true",
                     help="also write the per-layer report into DIR/report (it costs about 0.2-2x the quantization: "
                          "two more passes per measured batch; without it one line checks the model's outputs)")
    rep.add_argument("--no-report", action="store_true", help="no per-layer report (the default)")
    q.add_argument("--state", metavar="JSON", help="search and export from a calibration state (`ferroquant "
                                                   "calibrate` / `merge`) instead of calibrating on --calib")
    _report_options(q)
    q.set_defaults(func=_cmd_quantize)

    add_commands(sub, (common, quant, calib, deploy), common)

    f = sub.add_parser("fuse", parents=[common], help="fold BatchNormalization into convs (and Mul/Add)")
    f.add_argument("model", help="ONNX model file")
    f.add_argument("-o", "--output", required=True, help="fused ONNX model to write")
    f.add_argument("--skip", metavar="NODE", action="append", default=[], help="leave this node unfused")
    f.set_defaults(func=_cmd_fuse)

    r = sub.add_parser("report", parents=[common, quant, calib],
                       help="the per-layer report alone (HTML, JSON, PNG histograms, fallback config)")
    r.add_argument("model", help="ONNX model file")
    r.add_argument("--out", required=True, metavar="DIR", help="output folder")
    _report_options(r)
    r.set_defaults(func=_cmd_report)

    a = sub.add_parser("autocal", parents=[common, quant, calib, _deploy_options("amct")], epilog=EVALUATOR_CONTRACT,
                       help="keep the fewest sensitive layers in float so the metric drops by at most --max-drop")
    a.add_argument("model", help="ONNX model file")
    a.add_argument("--evaluator", required=True, metavar="FILE.py", help="defines evaluate(model_path) -> float")
    a.add_argument("--max-drop", required=True, type=number(0.0), help="largest allowed metric drop (e.g. 0.01)")
    a.add_argument("--out", required=True, metavar="DIR", help="output folder")
    a.set_defaults(func=_cmd_autocal)

    d = sub.add_parser("demo", parents=[common],
                       help="MobileNetV2 (ImageNet weights) on real photos: HFMG, IFMR, NUQ vs FP32, and a report")
    d.add_argument("--out", metavar="DIR", help="output folder (default ./ferroquant-demo; with --weights: the "
                                                 "table is also written there, as weights_demo.txt and .json)")
    d.add_argument("--calib", type=count(1), default=32, metavar="N", help="calibration images (default 32)")
    d.add_argument("--eval", type=count(1), default=64, metavar="N", help="evaluation images (default 64)")
    d.add_argument("--weights", action="store_true",
                   help="the weights-only demo instead: ARQ/NUQ error per layer, speed and parity vs NumPy")
    d.add_argument("--layers", type=count(0), default=0, help="--weights: only the first N weight tensors (0: all)")
    d.add_argument("--no-reference", action="store_true", help="--weights: skip the NumPy reference")
    d.set_defaults(func=_cmd_demo)
    return p


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split())
    return msg if isinstance(e, (QuantError, OSError)) and msg else f"{type(e).__name__}: {msg}"


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ferroquant import progress

    was_enabled, fmt = progress.enabled(), warnings.formatwarning
    progress.set_enabled(not args.quiet)
    warnings.formatwarning = lambda msg, *a, **k: f"ferroquant: warning: {msg}\n"  # type: ignore[assignment]
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("ferroquant: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug for the traceback
        if args.debug:
            raise
        print(f"ferroquant: error: {_one_line(e)}", file=sys.stderr)
        return 1
    finally:
        progress.set_enabled(was_enabled)
        warnings.formatwarning = fmt


if __name__ == "__main__":
    sys.exit(main())
