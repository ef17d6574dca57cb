"""The post-training quantization config: global keys and one resolved entry per quantizable layer.

Precedence, field by field: the layer's own entry > ``override_layer_types[type]`` > ``common_config`` >
built-in defaults (and the global ``symmetric`` for the activations' ``symmetric``). A layer's ``quant_enable``
defaults to false when its type is in ``skip_layer_types``. Every field is validated on load; errors name the
layer and the field (as the user spelled it: AMCT's keys are accepted, see :mod:`ferroquant.config.amct`).
Unknown keys are errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ferroquant.config import amct
from ferroquant.config.fields import (
    check_batch_num,
    check_bool,
    check_choice,
    check_int,
    check_names,
    check_num,
    field_error,
    load_json,
    make_params,
    save_json,
)
from ferroquant.config.methods import MethodsConfig, methods_from_json
from ferroquant.errors import ConfigError
from ferroquant.quant.registry import QUANTIZABLE_TYPES

CONFIG_VERSION = 2
ACT_ALGORITHMS = ("ifmr", "hfmg", "minmax", "percentile", "entropy")
WEIGHT_ALGORITHMS = ("arq", "nuq")
BIAS_CORRECTIONS = ("none", "empirical")


@dataclass(frozen=True)
class ActivationParams:
    """How one layer's input activation is calibrated (spec §3.4, §4.4). Percentiles are fractions."""

    algorithm: str = "ifmr"
    bits: int = 8
    symmetric: Optional[bool] = None  # None: the config's global `symmetric`
    max_percentile: float = 0.999999
    min_percentile: float = 0.999999
    search_range: Tuple[float, float] = (0.7, 1.3)
    search_step: float = 0.01
    search_extend: bool = True
    search_2d: bool = False
    num_of_bins: int = 4096
    hfmg_refine: bool = True
    percentile: float = 0.99999  # the `percentile` algorithm's clip
    num_quantized_bins: int = 128  # the `entropy` algorithm's target bins
    channel_wise: bool = False  # per-channel scales on a depthwise Conv's input (other layers: per tensor)
    output_clip: bool = False  # clip chosen by the readers' output error (:mod:`ferroquant.quant.output_clip`)

    def validate(self, layer: str) -> None:
        check_choice(layer, "algorithm", self.algorithm, ACT_ALGORITHMS)
        check_int(layer, "bits", self.bits, (4, 8, 16))
        if self.symmetric is not None:
            check_bool(layer, "symmetric", self.symmetric)
        check_num(layer, "max_percentile", self.max_percentile, 0.5, 1.0, lo_open=True)
        check_num(layer, "min_percentile", self.min_percentile, 0.5, 1.0, lo_open=True)
        sr = self.search_range
        if not (isinstance(sr, (list, tuple)) and len(sr) == 2 and all(isinstance(v, (int, float)) for v in sr)):
            raise field_error(layer, "search_range", f"must be [start, end], got {sr!r}")
        if not 0 < sr[0] < sr[1]:
            raise field_error(layer, "search_range", f"needs 0 < start < end, got {list(sr)}")
        check_num(layer, "search_step", self.search_step, 0.0, sr[1] - sr[0], lo_open=True)
        for k in ("search_extend", "search_2d", "hfmg_refine", "channel_wise", "output_clip"):
            check_bool(layer, k, getattr(self, k))
        check_int(layer, "num_of_bins", self.num_of_bins, (1024, 2048, 4096, 8192))
        check_num(layer, "percentile", self.percentile, 0.5, 1.0, lo_open=True)
        check_int(layer, "num_quantized_bins", self.num_quantized_bins, (16, 32, 64, 128, 256, 512))


@dataclass(frozen=True)
class WeightParams:
    """How one layer's weight is quantized (spec §1 ARQ, §2 NUQ)."""

    algorithm: str = "arq"
    channel_wise: bool = True
    bits: int = 8
    num_steps: int = 32
    num_of_iteration: int = 1
    bias_correction: str = "none"  # or "empirical": the mean output error over calibration data folded into the bias

    def validate(self, layer: str) -> None:
        check_choice(layer, "algorithm", self.algorithm, WEIGHT_ALGORITHMS)
        check_bool(layer, "channel_wise", self.channel_wise)
        check_int(layer, "bits", self.bits, range(2, 9))
        check_int(layer, "num_steps", self.num_steps, range(2, 257))
        check_int(layer, "num_of_iteration", self.num_of_iteration, range(0, 6))
        check_choice(layer, "bias_correction", self.bias_correction, BIAS_CORRECTIONS)


@dataclass(frozen=True)
class LayerConfig:
    layer_type: str
    quant_enable: bool = True
    activation: ActivationParams = field(default_factory=ActivationParams)
    weight: WeightParams = field(default_factory=WeightParams)


@dataclass(frozen=True)
class QuantConfig:
    """The whole config: global keys and one resolved :class:`LayerConfig` per quantizable layer.

    ``batch_num`` None calibrates on every batch given. ``common_config`` / ``override_layer_types`` are kept
    (in ferroquant's keys) so a saved config says what it was built from."""

    layers: Dict[str, LayerConfig]
    batch_num: Optional[int] = 1
    symmetric: bool = False
    do_fusion: bool = True
    skip_fusion_layers: Tuple[str, ...] = ()
    skip_layer_types: Tuple[str, ...] = ()
    common_config: Dict[str, Any] = field(default_factory=dict)
    override_layer_types: Dict[str, Any] = field(default_factory=dict)
    methods: MethodsConfig = field(default_factory=MethodsConfig)
    #: attention's activation x activation MatMuls quantized per tensor (True/False), or None: the deploy
    #: profile's policy (:class:`~ferroquant.quant.profiles.Profile`, off for every profile so far)
    activation_matmul: Optional[bool] = None

    def opt_ins(self) -> Dict[str, Optional[bool]]:
        """The registry's opt-in rules as this config sets them (None: the profile decides)."""
        return {"activation_matmul": self.activation_matmul}

    def methods_in_use(self) -> List[str]:
        """The accuracy methods this config turns on (issue 15), as the config spells them; [] by default."""
        out = ["methods.equalization"] if self.methods.equalization.enabled else []
        out += ["methods.adaround"] if self.methods.adaround.enabled else []
        out += ["methods.smooth_quant"] if self.methods.smooth_quant.enabled else []
        out += ["methods.mixed_precision"] if self.methods.mixed_precision.enabled else []
        for key, on in (("weight.bias_correction", lambda c: c.weight.bias_correction != "none"),
                        ("activation.channel_wise", lambda c: c.activation.channel_wise),
                        ("activation.output_clip", lambda c: c.activation.output_clip)):
            if any(on(c) for c in self.layers.values() if c.quant_enable):
                out.append(key)
        return out

    def activation_symmetric(self, layer: str) -> bool:
        s = self.layers[layer].activation.symmetric
        return self.symmetric if s is None else s

    def enabled_layers(self) -> List[str]:
        return [n for n, c in self.layers.items() if c.quant_enable]

    def with_symmetric_activations(self) -> "QuantConfig":
        """This config with every activation symmetric (zero point 0), as a target like TensorRT needs."""
        layers = {n: replace(c, activation=replace(c.activation, symmetric=True)) for n, c in self.layers.items()}
        common = {k: dict(v) for k, v in self.common_config.items()}
        common.setdefault("activation", {})["symmetric"] = True
        return replace(self, layers=layers, symmetric=True, common_config=common)

    def tensor_activation(self) -> ActivationParams:
        """The activation parameters of tensors that are no layer's input (a deploy profile's layer outputs,
        residual Adds...): ``common_config``'s, over the defaults."""
        c = _sections(self.common_config, "common_config", _SECTIONS)
        return _params(ActivationParams, "<tensors>", "activation", [c["activation"]])

    def tensor_symmetric(self) -> bool:
        s = self.tensor_activation().symmetric
        return self.symmetric if s is None else s

    def with_float_layers(self, names: Iterable[str]) -> "QuantConfig":
        """This config with ``quant_enable`` false for ``names`` (a ConfigError for a name it does not have)."""
        names = list(names)
        unknown = [n for n in names if n not in self.layers]
        if unknown:
            raise ConfigError(f"no layer named {unknown} in the config")
        layers = {n: replace(c, quant_enable=False) if n in set(names) else c for n, c in self.layers.items()}
        return replace(self, layers=layers)

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {"version": CONFIG_VERSION, "batch_num": self.batch_num, "symmetric": self.symmetric,
                               "do_fusion": self.do_fusion, "skip_fusion_layers": list(self.skip_fusion_layers),
                               "skip_layer_types": list(self.skip_layer_types)}
        if self.common_config:
            out["common_config"] = self.common_config
        if self.override_layer_types:
            out["override_layer_types"] = self.override_layer_types
        if not self.methods.is_default():
            out["methods"] = self.methods.to_json()
        if self.activation_matmul is not None:  # written only when set: a config without it saves as before
            out["activation_matmul"] = self.activation_matmul
        out["layers"] = {n: _layer_json(c) for n, c in self.layers.items()}
        return out

    def save(self, path: Union[str, Path]) -> Path:
        return save_json(path, self.to_json())


#: Fields added with the methods of issue 15, written only when set (a config without them saves as before).
_NEW_FIELDS = {"activation": {"channel_wise": False, "output_clip": False}, "weight": {"bias_correction": "none"}}


def _layer_json(c: LayerConfig) -> Dict[str, Any]:
    act = asdict(c.activation)
    act["search_range"] = list(act["search_range"])
    wts = asdict(c.weight)
    for section, d in (("activation", act), ("weight", wts)):
        for k, default in _NEW_FIELDS[section].items():
            if d[k] == default:
                del d[k]
    return {"layer_type": c.layer_type, "quant_enable": c.quant_enable, "activation": act,
            "weight": wts}


_GLOBAL_KEYS = {"version", "batch_num", "symmetric", "do_fusion", "skip_fusion_layers", "skip_layer_types",
                "common_config", "override_layer_types", "layers", "methods", "activation_matmul"}
_LAYER_KEYS = {"layer_type", "quant_enable", "activation", "weight"}
_SECTIONS = ("activation", "weight")
Source = Tuple[Mapping[str, Any], Mapping[str, str]]  # (params in our keys, how the user spelled them)


def _params(cls: type, layer: str, section: str, sources: Sequence[Source]) -> Any:
    """``cls`` from the merged sources (later ones win), validated; errors name the key as spelled."""
    names = {f.name for f in fields(cls)}
    merged: Dict[str, Any] = {}
    spelled: Dict[str, str] = {}
    for params, spelling in sources:  # unknown keys are named with the section they were written in
        unknown = sorted(set(params) - names)
        if unknown:
            raise field_error(layer, f"{spelling.get('__section__', section)}.{spelling.get(unknown[0], unknown[0])}",
                              f"unknown key (known: {sorted(names)})")
        merged.update(params)
        spelled.update({k: spelling.get(k, k) for k in params})
    return make_params(cls, layer, merged, spelled, section)


def _sections(d: Any, where: str, allowed: Iterable[str]) -> Dict[str, Source]:
    params, spelled = amct.sections(d, where)
    unknown = set(params) - set(allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(allowed)})")
    return {k: (params.get(k, {}), spelled.get(k, {})) for k in _SECTIONS}


def resolve_layer(name: str, layer_type: str, entry: Mapping[str, Any], common: Mapping[str, Any],
                  by_type: Mapping[str, Any], skip_layer_types: Iterable[str] = ()) -> LayerConfig:
    """One layer's config: its entry over its type's override over the common config over the defaults."""
    params, spelled = amct.sections(entry, f"layer {name!r}")
    unknown = set(params) - _LAYER_KEYS
    if unknown:
        raise field_error(name, sorted(unknown)[0], f"unknown key (known: {sorted(_LAYER_KEYS)})")
    own = {k: (params.get(k, {}), spelled.get(k, {})) for k in _SECTIONS}
    c = _sections(common, "common_config", _SECTIONS)
    t = _sections(by_type.get(layer_type, {}), f"override_layer_types[{layer_type!r}]", _SECTIONS)
    qe = entry.get("quant_enable", layer_type not in set(skip_layer_types))
    check_bool(name, "quant_enable", qe)
    act = _params(ActivationParams, name, "activation", [c["activation"], t["activation"], own["activation"]])
    wts = _params(WeightParams, name, "weight", [c["weight"], t["weight"], own["weight"]])
    return LayerConfig(layer_type, qe, act, wts)


def _check_types(what: str, types: Iterable[str]) -> None:
    bad = sorted(set(types) - set(QUANTIZABLE_TYPES))
    if bad:
        raise ConfigError(f"{what}: unknown layer types {bad} (quantizable: {list(QUANTIZABLE_TYPES)})")


def config_from_json(d: Mapping[str, Any]) -> QuantConfig:
    """Validate and resolve a config dict (as read from JSON; AMCT's keys accepted)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    d = amct.top_level(d)
    unknown = set(d) - _GLOBAL_KEYS
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)} (known: {sorted(_GLOBAL_KEYS)})")
    if d.get("version", CONFIG_VERSION) not in (1, CONFIG_VERSION):
        raise ConfigError(f"config version {d.get('version')!r} is not supported (expected 1 or {CONFIG_VERSION})")
    bn = d.get("batch_num", 1)
    check_batch_num(bn)
    for key in ("symmetric", "do_fusion"):
        check_bool("<global>", key, d.get(key, key == "do_fusion"))
    if d.get("activation_matmul") is not None:
        check_bool("<global>", "activation_matmul", d["activation_matmul"])
    for key in ("skip_fusion_layers", "skip_layer_types"):
        check_names(key, d.get(key, []))
    skip_types = tuple(d.get("skip_layer_types", ()))
    _check_types("skip_layer_types", skip_types)
    common, by_type = d.get("common_config", {}), d.get("override_layer_types", {})
    if not isinstance(by_type, Mapping):
        raise ConfigError(f"override_layer_types: must be an object, got {type(by_type).__name__}")
    _check_types("override_layer_types", by_type)
    layers_in = d.get("layers", {})
    if not isinstance(layers_in, Mapping):
        raise ConfigError(f"layers: must be an object, got {type(layers_in).__name__}")
    layers = {}
    for name, entry in layers_in.items():
        lt = entry.get("layer_type") if isinstance(entry, Mapping) else None
        if lt not in QUANTIZABLE_TYPES:
            raise field_error(name, "layer_type", f"must be one of {list(QUANTIZABLE_TYPES)}, got {lt!r}")
        layers[name] = resolve_layer(name, lt, entry, common, by_type, skip_types)
    return QuantConfig(layers, bn, d.get("symmetric", False), d.get("do_fusion", True),
                       tuple(d.get("skip_fusion_layers", ())), skip_types, _ours(common, "common_config"),
                       {t: _ours(v, f"override_layer_types[{t!r}]") for t, v in by_type.items()},
                       methods_from_json(d.get("methods")), d.get("activation_matmul"))


def _ours(d: Mapping[str, Any], where: str) -> Dict[str, Any]:
    """A sections dict in ferroquant's keys (what a saved config writes)."""
    return {k: dict(v) for k, v in amct.sections(d, where)[0].items()}


def load_config(path: Union[str, Path, Mapping[str, Any], QuantConfig]) -> QuantConfig:
    """A :class:`QuantConfig` from a JSON file, a dict, or a config (returned as is)."""
    if isinstance(path, QuantConfig):
        return path
    if isinstance(path, Mapping):
        return config_from_json(path)
    return config_from_json(load_json(path, "config file"))


def build_config(layers: Sequence[Tuple[str, str]], skip_layers: Iterable[str] = (), batch_num: Optional[int] = 1,
                 symmetric: bool = False, common_config: Optional[Mapping[str, Any]] = None,
                 override_layer_types: Optional[Mapping[str, Any]] = None,
                 override_layer_configs: Optional[Mapping[str, Any]] = None, do_fusion: bool = True,
                 skip_fusion_layers: Iterable[str] = (), skip_layer_types: Iterable[str] = (),
                 methods: Optional[Mapping[str, Any]] = None, activation_matmul: Optional[bool] = None
                 ) -> QuantConfig:
    """A resolved config for ``layers`` (``(name, op_type)`` pairs); skipped layers get quant_enable false."""
    names = {n for n, _ in layers}
    skip = set(skip_layers)
    for what, group in (("skip_layers", skip), ("override_layer_configs", set(override_layer_configs or {}))):
        unknown = group - names
        if unknown:
            raise ConfigError(f"{what}: no quantizable layer named {sorted(unknown)}")
    d: Dict[str, Any] = {"batch_num": batch_num, "symmetric": symmetric, "do_fusion": do_fusion,
                         "skip_fusion_layers": list(skip_fusion_layers), "skip_layer_types": list(skip_layer_types),
                         "common_config": dict(common_config or {}),
                         "override_layer_types": dict(override_layer_types or {}), "layers": {}}
    if methods:
        d["methods"] = dict(methods)
    if activation_matmul is not None:
        d["activation_matmul"] = activation_matmul
    for name, op in layers:
        entry = dict((override_layer_configs or {}).get(name, {}))
        entry["layer_type"] = op
        if name in skip:
            entry["quant_enable"] = False
        d["layers"][name] = entry
    return config_from_json(d)


__all__ = ["ACT_ALGORITHMS", "BIAS_CORRECTIONS", "CONFIG_VERSION", "WEIGHT_ALGORITHMS", "ActivationParams",
           "LayerConfig", "QuantConfig", "WeightParams", "build_config", "config_from_json", "load_config", "resolve_layer"]
