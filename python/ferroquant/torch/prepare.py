"""QAT preparation: the retrain config (JSON), graph analysis (Conv+BN pairs, inputs that follow a ReLU), BN
folding and the in-place swap of quantizable layers for :class:`~ferroquant.torch.modules.QuantLayer`.

BN handling: **fold before QAT, with the BN statistics frozen** (eval-mode folding of spec §6, f64 arithmetic).
Why not simulate folding during training (torch.ao's ConvBn QAT modules)? (1) The weights QAT learns are then
exactly the weights deployed: the quantized fold that ships is the one trained, so the deploy model matches
the QAT model in eval mode to rounding, with no BN to fold at save time (AMCT's RetrainQuant keeps BN and
folds at save time, which changes the quantized weights after training). (2) A simulated fold runs every conv
twice per step (batch statistics, then the folded weight), which breaks the <= 1.5x step-time budget on CPU.
(3) QAT is fine-tuning of a converged model at a small learning rate, where the running statistics are good
and batch statistics add noise, not accuracy. The cost: BN no longer re-normalizes during QAT, so QAT from
scratch (not the use case) trains worse. Folded BNs are replaced by ``nn.Identity``; the deployed model has no BN.

``fixed_min`` auto-detection (AMCT: true after ReLU): a layer's input follows a ReLU when, walking back from
the layer's input through ops that keep values non-negative (max/avg pooling, flatten, reshape/view, dropout,
identity, contiguous), the producer is a ReLU/ReLU6 (module, ``F.relu``, ``torch.relu`` or ``.relu()``). The
graph comes from ``torch.fx.symbolic_trace``; when the model cannot be traced (data-dependent control flow),
one forward of ``input_data`` with hooks on every leaf module records the execution order and which module's
output each module reads, and the same rule runs on that trace (modules only: a functional relu is then not
seen, and fixed_min stays false, which is always safe).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ferroquant.config import check_bool, check_int, field_error
from ferroquant.errors import ConfigError
from ferroquant.onnx._fold_math import BatchNormParams, fold_conv, fold_gemm
from ferroquant.torch.modules import CONV_TRANSPOSE, ActivationULQ, ArqRetrainWeight, LsqWeight, QuantLayer

RETRAIN_CONFIG_VERSION = 1
LAYER_TYPES: Dict[type, str] = {nn.Conv1d: "Conv1d", nn.Conv2d: "Conv2d", nn.Conv3d: "Conv3d",
                                nn.ConvTranspose2d: "ConvTranspose2d", nn.Linear: "Linear"}
WEIGHT_ALGOS = ("arq_retrain", "ulq")
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_KEEP_SIGN_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
                      nn.Flatten, nn.Dropout, nn.Identity)
_RELU_FUNCS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.relu_}
_KEEP_SIGN_FUNCS = {torch.flatten, torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
                    torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.dropout}
_KEEP_SIGN_METHODS = {"view", "reshape", "flatten", "contiguous"}

InputData = Union[torch.Tensor, Tuple[torch.Tensor, ...]]


@dataclass(frozen=True)
class UlqParams:
    """``retrain_data_quant_params`` of one layer (spec §5.1)."""

    num_bits: int = 8
    asymmetric: bool = True
    fixed_min: bool = False
    clip_max: Optional[float] = None
    clip_min: Optional[float] = None

    def validate(self, layer: str) -> None:
        check_int(layer, "num_bits", self.num_bits, (4, 8, 16))
        for k in ("asymmetric", "fixed_min"):
            check_bool(layer, k, getattr(self, k))
        if self.clip_max is not None and not self.clip_max > 0:
            raise field_error(layer, "clip_max", f"must be > 0, got {self.clip_max!r}")
        if self.clip_min is not None and not self.clip_min <= 0:
            raise field_error(layer, "clip_min", f"must be <= 0, got {self.clip_min!r}")


@dataclass(frozen=True)
class RetrainWeightParams:
    """``retrain_weight_quant_params``: ``algo`` arq_retrain (default, spec §5.3) or ulq (LSQ, §5.2)."""

    algo: str = "arq_retrain"
    num_bits: int = 8
    channel_wise: bool = True

    def validate(self, layer: str) -> None:
        if self.algo not in WEIGHT_ALGOS:
            raise field_error(layer, "algo", f"must be one of {list(WEIGHT_ALGOS)}, got {self.algo!r}")
        check_int(layer, "num_bits", self.num_bits, range(2, 9))
        check_bool(layer, "channel_wise", self.channel_wise)


@dataclass(frozen=True)
class RetrainLayerConfig:
    layer_type: str
    quant_enable: bool = True
    activation: UlqParams = field(default_factory=UlqParams)
    weight: RetrainWeightParams = field(default_factory=RetrainWeightParams)


@dataclass(frozen=True)
class RetrainConfig:
    """The QAT config: ``batch_num`` (IFMR init batches) and one entry per quantizable module, by name."""

    layers: Dict[str, RetrainLayerConfig]
    batch_num: int = 1

    def enabled_layers(self) -> List[str]:
        return [n for n, c in self.layers.items() if c.quant_enable]

    def to_json(self) -> Dict[str, Any]:
        return {"version": RETRAIN_CONFIG_VERSION, "batch_num": self.batch_num,
                "layers": {n: {"layer_type": c.layer_type, "quant_enable": c.quant_enable,
                               "retrain_data_quant_params": asdict(c.activation),
                               "retrain_weight_quant_params": asdict(c.weight)} for n, c in self.layers.items()}}

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2) + "\n")


def _section(cls: type, layer: str, d: Mapping[str, Any]) -> Any:
    names = set(cls.__dataclass_fields__)
    unknown = set(d) - names
    if unknown:
        raise field_error(layer, sorted(unknown)[0], f"unknown key (known: {sorted(names)})")
    obj = cls(**d)
    obj.validate(layer)
    return obj


def retrain_config_from_json(d: Mapping[str, Any]) -> RetrainConfig:
    """Validate a retrain config dict (as read from JSON)."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"config must be a JSON object, got {type(d).__name__}")
    unknown = set(d) - {"version", "batch_num", "layers"}
    if unknown:
        raise ConfigError(f"unknown top-level keys {sorted(unknown)}")
    bn = d.get("batch_num", 1)
    if isinstance(bn, bool) or not isinstance(bn, int) or bn < 1:
        raise ConfigError(f"field 'batch_num': must be an integer > 0, got {bn!r}")
    layers = {}
    for name, e in d.get("layers", {}).items():
        extra = set(e) - {"layer_type", "quant_enable", "retrain_data_quant_params", "retrain_weight_quant_params"}
        if extra:
            raise field_error(name, sorted(extra)[0], "unknown key")
        if e.get("layer_type") not in LAYER_TYPES.values():
            raise field_error(name, "layer_type", f"must be one of {list(LAYER_TYPES.values())}, got {e.get('layer_type')!r}")
        qe = e.get("quant_enable", True)
        if not isinstance(qe, bool):
            raise field_error(name, "quant_enable", f"must be true or false, got {qe!r}")
        layers[name] = RetrainLayerConfig(e["layer_type"], qe,
                                          _section(UlqParams, name, e.get("retrain_data_quant_params", {})),
                                          _section(RetrainWeightParams, name, e.get("retrain_weight_quant_params", {})))
    return RetrainConfig(layers, bn)


def load_retrain_config(config: Union[str, Path, Mapping[str, Any], RetrainConfig]) -> RetrainConfig:
    if isinstance(config, RetrainConfig):
        return config
    if isinstance(config, Mapping):
        return retrain_config_from_json(config)
    p = Path(config)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return retrain_config_from_json(json.loads(p.read_text()))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e})") from None


# -- graph analysis --------------------------------------------------------------------------------------------
@dataclass
class GraphFacts:
    """What preparation needs to know about the model: Conv/Linear->BN pairs and inputs that follow a ReLU."""

    bn_pairs: Dict[str, str] = field(default_factory=dict)  # layer name -> BN name
    after_relu: Dict[str, bool] = field(default_factory=dict)
    traced: bool = True


def _quantizable(model: nn.Module) -> Dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if type(m) in LAYER_TYPES}


def _fx_facts(model: nn.Module) -> GraphFacts:
    import torch.fx

    gm = torch.fx.symbolic_trace(model)
    mods = dict(gm.named_modules())
    facts = GraphFacts()

    def is_relu(n: Any) -> bool:
        if n.op == "call_module":
            return isinstance(mods[n.target], _RELU_MODULES)
        if n.op == "call_function":
            return n.target in _RELU_FUNCS
        return n.op == "call_method" and n.target in ("relu", "relu_")

    def keeps_sign(n: Any) -> bool:
        if n.op == "call_module":
            return isinstance(mods[n.target], _KEEP_SIGN_MODULES)
        if n.op == "call_function":
            return n.target in _KEEP_SIGN_FUNCS
        return n.op == "call_method" and n.target in _KEEP_SIGN_METHODS

    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = mods[n.target]
        src = n.args[0] if n.args else None
        if type(m) in LAYER_TYPES:
            while hasattr(src, "op") and keeps_sign(src) and src.args:
                src = src.args[0]
            facts.after_relu[n.target] = bool(hasattr(src, "op") and is_relu(src))
        elif isinstance(m, _BNS) and hasattr(src, "op") and src.op == "call_module":
            if type(mods[src.target]) in LAYER_TYPES and len(src.users) == 1:
                facts.bn_pairs[src.target] = n.target
    return facts


def _hook_facts(model: nn.Module, input_data: InputData) -> GraphFacts:
    """The fallback: one forward with hooks on the leaf modules (execution order and tensor identity)."""
    produced: Dict[int, Tuple[str, nn.Module]] = {}
    facts = GraphFacts(traced=False)
    hooks = []

    def hook(name: str):
        def fn(mod: nn.Module, args: Tuple[Any, ...], out: Any) -> None:
            src = produced.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
            while src is not None and isinstance(src[1], _KEEP_SIGN_MODULES):
                src = src[2] if len(src) > 2 else None  # type: ignore[misc]
            if type(mod) in LAYER_TYPES:
                facts.after_relu[name] = bool(src is not None and isinstance(src[1], _RELU_MODULES))
            elif isinstance(mod, _BNS) and src is not None and type(src[1]) in LAYER_TYPES:
                facts.bn_pairs[src[0]] = name
            if isinstance(out, torch.Tensor):
                prev = produced.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
                produced[id(out)] = (name, mod, prev)  # type: ignore[assignment]
        return fn

    for name, m in model.named_modules():
        if not list(m.children()):
            hooks.append(m.register_forward_hook(hook(name)))
    was = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*(input_data if isinstance(input_data, tuple) else (input_data,)))
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    return facts


def analyse(model: nn.Module, input_data: Optional[InputData] = None) -> GraphFacts:
    """Conv+BN pairs and after-ReLU inputs, by torch.fx, else by a hooked forward of ``input_data``."""
    try:
        return _fx_facts(model)
    except Exception:  # noqa: BLE001 - any tracing failure falls back to the hooked forward
        if input_data is None:
            return GraphFacts(traced=False)
        return _hook_facts(model, input_data)


def create_quant_retrain_config(config_path: Optional[Union[str, Path]], model: nn.Module, input_data: InputData,
                                skip_layers: Iterable[str] = (), skip_layer_types: Iterable[str] = (),
                                batch_num: int = 1, num_bits: int = 8, weight_num_bits: int = 8,
                                weight_algo: str = "arq_retrain", asymmetric: bool = True,
                                fixed_min: Optional[bool] = None,
                                override_layer_configs: Optional[Mapping[str, Mapping[str, Any]]] = None
                                ) -> RetrainConfig:
    """Write (when ``config_path`` is given) and return a retrain config with one entry per Conv1d/2d/3d,
    ConvTranspose2d and Linear module. ``fixed_min=None`` detects it per layer (true after a ReLU).
    ``override_layer_configs[name]`` may hold ``retrain_data_quant_params`` / ``retrain_weight_quant_params``
    (e.g. ``clip_max``/``clip_min``) and ``quant_enable``."""
    mods = _quantizable(model)
    if not mods:
        raise ConfigError("the model has no quantizable module (Conv1d/2d/3d, ConvTranspose2d, Linear)")
    skip, skip_types = set(skip_layers), set(skip_layer_types)
    for what, names, known in (("skip_layers", skip, set(mods)), ("skip_layer_types", skip_types,
                                                                    set(LAYER_TYPES.values())),
                               ("override_layer_configs", set(override_layer_configs or {}), set(mods))):
        if names - known:
            raise ConfigError(f"{what}: unknown {sorted(names - known)}")
    facts = analyse(model, input_data)
    layers: Dict[str, Any] = {}
    for name, m in mods.items():
        lt = LAYER_TYPES[type(m)]
        fm = facts.after_relu.get(name, False) if fixed_min is None else fixed_min
        entry: Dict[str, Any] = {"layer_type": lt, "quant_enable": name not in skip and lt not in skip_types,
                                 "retrain_data_quant_params": {"num_bits": num_bits, "asymmetric": asymmetric,
                                                               "fixed_min": bool(fm)},
                                 "retrain_weight_quant_params": {"algo": weight_algo, "num_bits": weight_num_bits}}
        for k, v in (override_layer_configs or {}).get(name, {}).items():
            entry[k] = {**entry[k], **v} if isinstance(v, Mapping) else v
        layers[name] = entry
    cfg = retrain_config_from_json({"batch_num": batch_num, "layers": layers})
    if config_path is not None:
        cfg.save(config_path)
    return cfg


# -- BN folding and the swap ------------------------------------------------------------------------------------
def _parent(model: nn.Module, name: str) -> Tuple[nn.Module, str]:
    *path, last = name.split(".")
    mod = model
    for p in path:
        mod = getattr(mod, p)
    return mod, last


@torch.no_grad()
def fold_batch_norm_(model: nn.Module, pairs: Mapping[str, str]) -> List[str]:
    """Fold each BN into the layer before it (spec §6, f64) and replace the BN by ``nn.Identity``. BNs without
    affine parameters or running statistics are left alone. Returns the layers folded."""
    mods = dict(model.named_modules())
    done = []
    for layer, bn_name in pairs.items():
        conv, bn = mods[layer], mods[bn_name]
        if not (bn.track_running_stats and bn.running_mean is not None):
            continue
        gamma = bn.weight.detach().cpu().numpy() if bn.affine else np.ones(bn.num_features, np.float32)
        beta = bn.bias.detach().cpu().numpy() if bn.affine else np.zeros(bn.num_features, np.float32)
        p = BatchNormParams.make(gamma, beta, bn.running_mean.cpu().numpy(), bn.running_var.cpu().numpy(), bn.eps)
        if isinstance(p, str):
            continue
        w = conv.weight.detach().cpu().numpy()
        b = None if conv.bias is None else conv.bias.detach().cpu().numpy()
        if isinstance(conv, nn.Linear):
            r = fold_gemm(w, b, p, True, 1.0)
        elif getattr(conv, "padding_mode", "zeros") != "zeros" and not isinstance(conv, CONV_TRANSPOSE):
            continue
        else:
            r = fold_conv(w, b, p, conv.groups, isinstance(conv, CONV_TRANSPOSE))
        if isinstance(r, str):
            continue
        conv.weight.copy_(torch.from_numpy(r[0].astype(np.float32)))
        bias = torch.from_numpy(r[1].astype(np.float32)).to(conv.weight.device)
        if conv.bias is None:
            conv.bias = nn.Parameter(bias)
        else:
            conv.bias.copy_(bias)
        parent, last = _parent(model, bn_name)
        setattr(parent, last, nn.Identity())
        done.append(layer)
    return done


def _weight_axis(m: nn.Module) -> int:
    return 1 if isinstance(m, CONV_TRANSPOSE) else 0


def make_quant_layer(name: str, m: nn.Module, lc: RetrainLayerConfig, batch_num: int) -> QuantLayer:
    a, wp = lc.activation, lc.weight
    act = ActivationULQ(name, a.num_bits, a.asymmetric, a.fixed_min, a.clip_max, a.clip_min, batch_num)
    groups = getattr(m, "groups", 1) if isinstance(m, CONV_TRANSPOSE) else 1
    if wp.algo == "ulq":
        if groups > 1 and wp.channel_wise:
            raise field_error(name, "algo", "ulq weights per channel do not support grouped ConvTranspose; use arq_retrain")
        wq: nn.Module = LsqWeight(m.weight, wp.num_bits, wp.channel_wise, _weight_axis(m))
    else:
        wq = ArqRetrainWeight(wp.num_bits, wp.channel_wise, _weight_axis(m), groups)
    return QuantLayer(m, act, wq)


def create_quant_retrain_model(config: Union[str, Path, Mapping[str, Any], RetrainConfig], model: nn.Module,
                               input_data: Optional[InputData] = None) -> nn.Module:
    """In place: fold Conv/Linear+BN (frozen statistics), then swap every enabled layer for a
    :class:`QuantLayer` (ULQ input, ARQ-retrain or LSQ weight). Returns ``model``."""
    cfg = load_retrain_config(config)
    mods = _quantizable(model)
    missing = [n for n in cfg.layers if n not in mods]
    if missing:
        raise ConfigError(f"config names layers the model does not have: {missing}")
    facts = analyse(model, input_data)
    fold_batch_norm_(model, facts.bn_pairs)
    for name in cfg.enabled_layers():
        parent, last = _parent(model, name)
        setattr(parent, last, make_quant_layer(name, mods[name], cfg.layers[name], cfg.batch_num))
    return model


def quant_layers(model: nn.Module) -> Dict[str, QuantLayer]:
    """The QuantLayers of a prepared model, by the name of the layer they replaced."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QuantLayer)}


def float_copy(model: nn.Module) -> nn.Module:
    """A deep copy with every QuantLayer replaced by its float module (the trained, BN-folded weights)."""
    import copy

    out = copy.deepcopy(model)
    for name, ql in list(quant_layers(out).items()):
        parent, last = _parent(out, name)
        setattr(parent, last, ql.module)
    return out
