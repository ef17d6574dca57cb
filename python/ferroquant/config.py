"""AMCT-style quantization config: JSON with global keys and one entry per quantizable layer.

Precedence, field by field: the layer's own entry > ``override_layer_types[type]`` > ``common_config`` >
built-in defaults (and ``activation_offset`` for ``asymmetric``). Every field is validated on load; errors
name the layer and the field. Unknown keys are errors (a typo must not silently fall back to a default).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ferroquant.errors import ConfigError

CONFIG_VERSION = 1
QUANTIZABLE_TYPES = ("Conv", "ConvTranspose", "Gemm", "MatMul")
ACT_ALGOS = ("ifmr", "hfmg")
WTS_ALGOS = ("arq_quantize", "nuq_quantize")
_WTS_ALIASES = {"arq": "arq_quantize", "nuq": "nuq_quantize"}


def field_error(layer: str, fld: str, msg: str) -> ConfigError:
    return ConfigError(f"layer {layer!r}, field {fld!r}: {msg}")


def check_bool(layer: str, name: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise field_error(layer, name, f"must be true or false, got {v!r}")


def check_num(layer: str, name: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise field_error(layer, name, f"must be a number, got {v!r}")
    if (v <= lo if lo_open else v < lo) or v > hi:
        raise field_error(layer, name, f"must be in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")


def check_int(layer: str, name: str, v: Any, allowed: Iterable[int]) -> None:
    allowed = tuple(allowed)
    if isinstance(v, bool) or not isinstance(v, int) or v not in allowed:
        raise field_error(layer, name, f"must be one of {list(allowed)}, got {v!r}")


@dataclass(frozen=True)
class ActivationParams:
    """How one layer's input activation is calibrated (spec §3.4, §4.4)."""

    act_algo: str = "ifmr"
    num_bits: int = 8
    asymmetric: Optional[bool] = None  # None: the config's activation_offset
    max_percentile: float = 0.999999
    min_percentile: float = 0.999999
    search_range: Tuple[float, float] = (0.7, 1.3)
    search_step: float = 0.01
    search_extend: bool = True
    search_2d: bool = False
    num_of_bins: int = 4096
    hfmg_refine: bool = True

    def validate(self, layer: str) -> None:
        if self.act_algo not in ACT_ALGOS:
            raise field_error(layer, "act_algo", f"must be one of {list(ACT_ALGOS)}, got {self.act_algo!r}")
        check_int(layer, "num_bits", self.num_bits, (4, 8, 16))
        if self.asymmetric is not None:
            check_bool(layer, "asymmetric", self.asymmetric)
        check_num(layer, "max_percentile", self.max_percentile, 0.5, 1.0, lo_open=True)
        check_num(layer, "min_percentile", self.min_percentile, 0.5, 1.0, lo_open=True)
        sr = self.search_range
        if not (isinstance(sr, (list, tuple)) and len(sr) == 2 and all(isinstance(v, (int, float)) for v in sr)):
            raise field_error(layer, "search_range", f"must be [start, end], got {sr!r}")
        if not 0 < sr[0] < sr[1]:
            raise field_error(layer, "search_range", f"needs 0 < start < end, got {list(sr)}")
        check_num(layer, "search_step", self.search_step, 0.0, sr[1] - sr[0], lo_open=True)
        check_bool(layer, "search_extend", self.search_extend)
        check_bool(layer, "search_2d", self.search_2d)
        check_bool(layer, "hfmg_refine", self.hfmg_refine)
        check_int(layer, "num_of_bins", self.num_of_bins, (1024, 2048, 4096, 8192))


@dataclass(frozen=True)
class WeightParams:
    """How one layer's weight is quantized (spec §1, §2)."""

    wts_algo: str = "arq_quantize"
    channel_wise: bool = True
    num_bits: int = 8
    num_steps: int = 32
    num_of_iteration: int = 1

    def validate(self, layer: str) -> None:
        if self.wts_algo not in WTS_ALGOS:
            raise field_error(layer, "wts_algo", f"must be one of {list(WTS_ALGOS)} (or arq / nuq), got {self.wts_algo!r}")
        check_bool(layer, "channel_wise", self.channel_wise)
        check_int(layer, "num_bits", self.num_bits, range(2, 9))
        check_int(layer, "num_steps", self.num_steps, range(2, 257))
        check_int(layer, "num_of_iteration", self.num_of_iteration, range(0, 6))


@dataclass(frozen=True)
class LayerConfig:
    layer_type: str
    quant_enable: bool = True
    activation: ActivationParams = field(default_factory=ActivationParams)
    weight: WeightParams = field(default_factory=WeightParams)


@dataclass(frozen=True)
class QuantConfig:
    """The whole config: global keys and one resolved :class:`LayerConfig` per quantizable layer."""

    layers: Dict[str, LayerConfig]
    batch_num: int = 1
    activation_offset: bool = True
    do_fusion: bool = True
    skip_fusion_layers: Tuple[str, ...] = ()
    common_config: Dict[str, Any] = field(default_factory=dict)
    override_layer_types: Dict[str, Any] = field(default_factory=dict)

    def activation_asymmetric(self, layer: str) -> bool:
        a = self.layers[layer].activation.asymmetric
        return self.activation_offset if a is None else a

    def enabled_layers(self) -> List[str]:
        return [n for n, c in self.layers.items() if c.quant_enable]

    def to_json(self) -> Dict[str, Any]:
        out: Dict[str, Any] = {
            "version": CONFIG_VERSION,
            "batch_num": self.batch_num,
            "activation_offset": self.activation_offset,
            "do_fusion": self.do_fusion,
            "skip_fusion_layers": list(self.skip_fusion_layers),
        }
        if self.common_config:
            out["common_config"] = self.common_config
        if self.override_layer_types:
            out["override_layer_types"] = self.override_layer_types
        out["layers"] = {n: _layer_json(c) for n, c in self.layers.items()}
        return out

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _layer_json(c: LayerConfig) -> Dict[str, Any]:
    act = asdict(c.activation)
    act["search_range"] = list(act["search_range"])
    return {"layer_type": c.layer_type, "quant_enable": c.quant_enable, "activation_quant_params": act,
            "weight_quant_params": asdict(c.weight)}


_GLOBAL_KEYS = {"version", "batch_num", "activation_offset", "do_fusion", "skip_fusion_layers", "common_config",
                "override_layer_types", "layers"}
_LAYER_KEYS = {"layer_type", "quant_enable", "activation_quant_params", "weight_quant_params"}
_PARAM_KEYS = {"activation_quant_params", "weight_quant_params"}


def _params(cls: type, layer: str, section: str, *sources: Mapping[str, Any]) -> Any:
    names = {f.name for f in fields(cls)}
    merged: Dict[str, Any] = {}
    for src in sources:
        for k, v in src.items():
            if k not in names:
                raise field_error(layer, f"{section}.{k}", f"unknown key (known: {sorted(names)})")
            merged[k] = v
    if "wts_algo" in merged:
        merged["wts_algo"] = _WTS_ALIASES.get(merged["wts_algo"], merged["wts_algo"])
    if "search_range" in merged and isinstance(merged["search_range"], list):
        merged["search_range"] = tuple(merged["search_range"])
    obj = cls(**merged)
    obj.validate(layer)
    return obj


def _section(d: Mapping[str, Any], where: str) -> Dict[str, Mapping[str, Any]]:
    unknown = set(d) - _PARAM_KEYS
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(_PARAM_KEYS)})")
    return {k: d.get(k, {}) for k in _PARAM_KEYS}


def resolve_layer(name: str, layer_type: str, entry: Mapping[str, Any], common: Mapping[str, Any],
                  by_type: Mapping[str, Any]) -> LayerConfig:
    """One layer's config: its entry over its type's override over the common config over the defaults."""
    unknown = set(entry) - _LAYER_KEYS
    if unknown:
        raise field_error(name, sorted(unknown)[0], f"unknown key (known: {sorted(_LAYER_KEYS)})")
    c = _section(common, "common_config")
    t = _section(by_type.get(layer_type, {}), f"override_layer_types[{layer_type!r}]")
    own = {k: entry.get(k, {}) for k in _PARAM_KEYS}
    qe = entry.get("quant_enable", True)
    check_bool(name, "quant_enable", qe)
    act = _params(ActivationParams, name, "activation_quant_params", c["activation_quant_params"],
                  t["activation_quant_params"], own["activation_quant_params"])
    wts = _params(WeightParams, name, "weight_quant_params", c["weight_quant_params"], t["weight_quant_params"],
                  own["weight_quant_params"])
    return LayerConfig(layer_type, qe, act, wts)


def config_from_json(d: Mapping[str, Any]) -> QuantConfig:
    """Validate and resolve a config dict (as read from JSON)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - _GLOBAL_KEYS
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)} (known: {sorted(_GLOBAL_KEYS)})")
    if d.get("version", CONFIG_VERSION) != CONFIG_VERSION:
        raise ConfigError(f"config version {d.get('version')!r} is not supported (expected {CONFIG_VERSION})")
    bn = d.get("batch_num", 1)
    if isinstance(bn, bool) or not isinstance(bn, int) or bn < 1:
        raise ConfigError(f"field 'batch_num': must be an integer > 0, got {bn!r}")
    for key in ("activation_offset", "do_fusion"):
        check_bool("<global>", key, d.get(key, True))
    skip = d.get("skip_fusion_layers", [])
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise ConfigError(f"field 'skip_fusion_layers': must be a list of layer names, got {skip!r}")
    common, by_type = d.get("common_config", {}), d.get("override_layer_types", {})
    bad_types = set(by_type) - set(QUANTIZABLE_TYPES)
    if bad_types:
        raise ConfigError(f"override_layer_types: unknown layer types {sorted(bad_types)} "
                          f"(quantizable: {list(QUANTIZABLE_TYPES)})")
    layers = {}
    for name, entry in d.get("layers", {}).items():
        lt = entry.get("layer_type") if isinstance(entry, Mapping) else None
        if lt not in QUANTIZABLE_TYPES:
            raise field_error(name, "layer_type", f"must be one of {list(QUANTIZABLE_TYPES)}, got {lt!r}")
        layers[name] = resolve_layer(name, lt, entry, common, by_type)
    return QuantConfig(layers, bn, d.get("activation_offset", True), d.get("do_fusion", True), tuple(skip),
                       dict(common), dict(by_type))


def load_config(path: Union[str, Path, Mapping[str, Any], QuantConfig]) -> QuantConfig:
    """A :class:`QuantConfig` from a JSON file, a dict, or a config (returned as is)."""
    if isinstance(path, QuantConfig):
        return path
    if isinstance(path, Mapping):
        return config_from_json(path)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None
    return config_from_json(d)


def build_config(layers: Sequence[Tuple[str, str]], skip_layers: Iterable[str] = (), batch_num: int = 1,
                 activation_offset: bool = True, common_config: Optional[Mapping[str, Any]] = None,
                 override_layer_types: Optional[Mapping[str, Any]] = None,
                 override_layer_configs: Optional[Mapping[str, Any]] = None, do_fusion: bool = True,
                 skip_fusion_layers: Iterable[str] = ()) -> QuantConfig:
    """A resolved config for ``layers`` (``(name, op_type)`` pairs); skipped layers get quant_enable false."""
    names = {n for n, _ in layers}
    skip = set(skip_layers)
    for what, group in (("skip_layers", skip), ("override_layer_configs", set(override_layer_configs or {}))):
        unknown = group - names
        if unknown:
            raise ConfigError(f"{what}: no quantizable layer named {sorted(unknown)}")
    d = {"batch_num": batch_num, "activation_offset": activation_offset, "do_fusion": do_fusion,
         "skip_fusion_layers": list(skip_fusion_layers), "common_config": dict(common_config or {}),
         "override_layer_types": dict(override_layer_types or {}), "layers": {}}
    for name, op in layers:
        entry = dict((override_layer_configs or {}).get(name, {}))
        entry["layer_type"] = op
        if name in skip:
            entry["quant_enable"] = False
        d["layers"][name] = entry
    return config_from_json(d)
