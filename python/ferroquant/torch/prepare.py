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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ferroquant.config import (
    RetrainConfig,
    RetrainLayerConfig,
    load_retrain_config,
    retrain_config_from_json,
)
from ferroquant.config import amct
from ferroquant.config.fields import field_error
from ferroquant.errors import ConfigError, DataError
from ferroquant.quant.fold import BatchNormParams, fold_conv, fold_gemm
from ferroquant.quant.registry import QAT_MODULES
from ferroquant.torch.layers import (class_name, is_qat_module, is_transposed, layer_type_of, weight_axis,
                                     weight_groups)
from ferroquant.torch.modules import ActivationULQ, ArqRetrainWeight, LsqWeight, QuantLayer

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_KEEP_SIGN_MODULES = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                      nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d,
                      nn.Flatten, nn.Dropout, nn.Identity)
_RELU_FUNCS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.relu_}
_KEEP_SIGN_FUNCS = {torch.flatten, torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
                    torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.dropout}
_KEEP_SIGN_METHODS = {"view", "reshape", "flatten", "contiguous"}

#: an example input: a tensor, positional tensors, or keyword tensors (a tokenizer's output)
InputData = Union[torch.Tensor, Tuple[torch.Tensor, ...], Mapping[str, torch.Tensor]]


def call_model(model: nn.Module, batch: Any) -> Any:
    """``model`` on one calibration batch: a tensor, a tuple/list of positional tensors, or a mapping of
    keyword arguments (a tokenizer's output for a ``transformers`` model)."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def example_input(batch: Any) -> InputData:
    """A calibration batch as an export example: a tensor, a tuple (from a tuple or list), or a dict of keyword
    tensors (from any mapping, e.g. a ``BatchEncoding``; each value must be a tensor: the exported model takes
    them as its inputs, by those names)."""
    if isinstance(batch, Mapping):
        bad = [str(k) for k, v in batch.items() if not isinstance(v, torch.Tensor)]
        if bad or not batch:
            why = f"not tensors: {bad}" if bad else "it is empty"
            raise DataError(f"a keyword batch must map input names to tensors (the exported model's inputs); {why}")
        return {str(k): v for k, v in batch.items()}
    return tuple(batch) if isinstance(batch, (tuple, list)) else batch


# -- graph analysis --------------------------------------------------------------------------------------------
@dataclass
class GraphFacts:
    """What preparation needs to know about the model: Conv/Linear->BN pairs, inputs that follow a ReLU, and
    layers that read the same input."""

    bn_pairs: Dict[str, str] = field(default_factory=dict)  # layer name -> BN name
    after_relu: Dict[str, bool] = field(default_factory=dict)
    traced: bool = True
    #: quantizable layers that read the same input tensor (q/k/v after a LayerNorm), each group in call order
    shared: List[Tuple[str, ...]] = field(default_factory=list)


def _groups(readers: Mapping[Any, List[str]]) -> List[Tuple[str, ...]]:
    return [tuple(names) for names in readers.values() if len(names) > 1]


def _quantizable(model: nn.Module) -> Dict[str, nn.Module]:
    """The modules QAT swaps (the registry's QAT modules), by name."""
    return {n: m for n, m in model.named_modules() if is_qat_module(m)}


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

    readers: Dict[Any, List[str]] = {}
    for n in gm.graph.nodes:
        if n.op != "call_module":
            continue
        m = mods[n.target]
        src = n.args[0] if n.args else None
        if is_qat_module(m):
            if src is not None:
                readers.setdefault(src, []).append(n.target)
            while hasattr(src, "op") and keeps_sign(src) and src.args:
                src = src.args[0]
            facts.after_relu[n.target] = bool(hasattr(src, "op") and is_relu(src))
        elif isinstance(m, _BNS) and hasattr(src, "op") and src.op == "call_module":
            if is_qat_module(mods[src.target]) and len(src.users) == 1:
                facts.bn_pairs[src.target] = n.target
    facts.shared = _groups(readers)
    return facts


def _hook_facts(model: nn.Module, input_data: InputData) -> GraphFacts:
    """The fallback: one forward with hooks on the leaf modules (execution order and tensor identity)."""
    produced: Dict[int, Tuple[str, nn.Module]] = {}
    facts = GraphFacts(traced=False)
    hooks = []
    # the input tensors of the quantizable layers, held so that no id is reused during the forward
    inputs: Dict[int, Tuple[torch.Tensor, List[str]]] = {}

    def hook(name: str):
        def fn(mod: nn.Module, args: Tuple[Any, ...], out: Any) -> None:
            src = produced.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
            while src is not None and isinstance(src[1], _KEEP_SIGN_MODULES):
                src = src[2] if len(src) > 2 else None  # type: ignore[misc]
            if is_qat_module(mod):
                facts.after_relu[name] = bool(src is not None and isinstance(src[1], _RELU_MODULES))
                if args and isinstance(args[0], torch.Tensor):
                    inputs.setdefault(id(args[0]), (args[0], []))[1].append(name)
            elif isinstance(mod, _BNS) and src is not None and is_qat_module(src[1]):
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
            call_model(model, input_data)
    finally:
        model.train(was)
        for h in hooks:
            h.remove()
    facts.shared = _groups({k: names for k, (_, names) in inputs.items()})
    return facts


def analyse(model: nn.Module, input_data: Optional[InputData] = None) -> GraphFacts:
    """Conv+BN pairs, after-ReLU inputs and layers sharing an input, by torch.fx, else by a hooked forward of
    ``input_data``."""
    try:
        return _fx_facts(model)
    except Exception:  # noqa: BLE001 - any tracing failure falls back to the hooked forward
        if input_data is None:
            return GraphFacts(traced=False)
        return _hook_facts(model, input_data)


def create_quant_retrain_config(config_path: Optional[Union[str, Path]], model: nn.Module, input_data: InputData,
                                skip_layers: Iterable[str] = (), skip_layer_types: Iterable[str] = (),
                                batch_num: int = 1, bits: int = 8, weight_bits: int = 8,
                                weight_algorithm: str = "arq_retrain", symmetric: bool = False,
                                fixed_min: Optional[bool] = None,
                                override_layer_configs: Optional[Mapping[str, Mapping[str, Any]]] = None
                                ) -> RetrainConfig:
    """Write (when ``config_path`` is given) and return a retrain config with one entry per module QAT swaps
    (the registry's QAT modules: Conv1d/2d/3d, ConvTranspose2d, Linear). ``bits`` / ``symmetric``: the ULQ
    activations; ``weight_bits`` / ``weight_algorithm`` (``arq_retrain`` or ``lsq``): the weights.
    ``fixed_min=None`` detects it per layer (true after a ReLU). ``override_layer_configs[name]`` may hold
    ``activation`` / ``weight`` sections (AMCT's ``retrain_data_quant_params`` / ``retrain_weight_quant_params``
    too; e.g. ``clip_max``/``clip_min``) and ``quant_enable``."""
    mods = _quantizable(model)
    if not mods:
        raise ConfigError(f"the model has no quantizable module ({', '.join(QAT_MODULES)})")
    skip, skip_types = set(skip_layers), set(skip_layer_types)
    for what, names, known in (("skip_layers", skip, set(mods)), ("skip_layer_types", skip_types, set(QAT_MODULES)),
                               ("override_layer_configs", set(override_layer_configs or {}), set(mods))):
        if names - known:
            raise ConfigError(f"{what}: unknown {sorted(names - known)}")
    facts = analyse(model, input_data)
    layers: Dict[str, Any] = {}
    for name, m in mods.items():
        lt = class_name(m)
        fm = facts.after_relu.get(name, False) if fixed_min is None else fixed_min
        entry: Dict[str, Any] = {"layer_type": lt, "quant_enable": name not in skip and lt not in skip_types,
                                 "activation": {"bits": bits, "symmetric": symmetric, "fixed_min": bool(fm)},
                                 "weight": {"algorithm": weight_algorithm, "bits": weight_bits}}
        override, _ = amct.sections((override_layer_configs or {}).get(name, {}), f"override_layer_configs[{name!r}]")
        for k, v in override.items():
            entry[k] = {**entry[k], **v} if isinstance(v, Mapping) and isinstance(entry.get(k), Mapping) else v
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
        t = layer_type_of(conv)
        if t is not None and t.fold == "gemm":
            r = fold_gemm(w, b, p, True, 1.0)
        elif getattr(conv, "padding_mode", "zeros") != "zeros" and not is_transposed(conv):
            continue
        else:
            r = fold_conv(w, b, p, conv.groups, is_transposed(conv))
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


def make_quant_layer(name: str, m: nn.Module, lc: RetrainLayerConfig, batch_num: int) -> QuantLayer:
    a, wp = lc.activation, lc.weight
    act = ActivationULQ(name, a.bits, a.symmetric, a.fixed_min, a.clip_max, a.clip_min, batch_num)
    axis, groups = weight_axis(m), weight_groups(m)
    if wp.algorithm == "lsq":
        if groups > 1 and wp.channel_wise:
            raise field_error(name, "algorithm", "lsq weights per channel do not support grouped ConvTranspose; "
                                                 "use arq_retrain")
        wq: nn.Module = LsqWeight(m.weight, wp.bits, wp.channel_wise, axis)
    else:
        wq = ArqRetrainWeight(wp.bits, wp.channel_wise, axis, groups)
    return QuantLayer(m, act, wq)


def create_quant_retrain_model(config: Union[str, Path, Mapping[str, Any], RetrainConfig], model: nn.Module,
                               input_data: Optional[InputData] = None) -> nn.Module:
    """In place: fold Conv/Linear+BN (frozen statistics), then swap every enabled layer for a
    :class:`QuantLayer` (ULQ input, ARQ-retrain or LSQ weight); layers that read one tensor share one ULQ module.
    ``input_data`` (an example input) lets a hooked forward find BN pairs and shared inputs where torch.fx cannot
    trace the model (``transformers`` models). Returns ``model``."""
    cfg = load_retrain_config(config)
    mods = _quantizable(model)
    missing = [n for n in cfg.layers if n not in mods]
    if missing:
        raise ConfigError(f"config names layers the model does not have: {missing}")
    facts = analyse(model, input_data)
    fold_batch_norm_(model, facts.bn_pairs)
    swapped = {}
    for name in cfg.enabled_layers():
        parent, last = _parent(model, name)
        swapped[name] = make_quant_layer(name, mods[name], cfg.layers[name], cfg.batch_num)
        setattr(parent, last, swapped[name])
    _share_activations(cfg, swapped, facts.shared)
    return model


def _share_activations(cfg: RetrainConfig, swapped: Mapping[str, QuantLayer],
                       shared: List[Tuple[str, ...]]) -> None:
    """Layers that read one tensor (q/k/v) get one ULQ module: a deployed model has one Q/DQ pair per tensor, so
    their clips are learned together. Their activation configs must agree (else a ConfigError naming them)."""
    for group in shared:
        names = [n for n in group if n in swapped]
        if len(names) < 2:
            continue
        first = names[0]
        differ = [n for n in names[1:] if cfg.layers[n].activation != cfg.layers[first].activation]
        if differ:
            raise ConfigError(f"layers {[first] + differ} read the same input tensor, which a deployed model "
                              "quantizes once, but their activation configs differ; give them the same "
                              "activation section")
        for n in names[1:]:
            swapped[n].act_quant = swapped[first].act_quant
            swapped[n].observes = False  # the tensor feeds the clip initialization once per batch


def share_as_saved(config: Union[str, Path, Mapping[str, Any], RetrainConfig], model: nn.Module,
                   state: Mapping[str, Any]) -> List[Tuple[str, ...]]:
    """Give the layers of a prepared ``model`` whose ULQ clips a checkpoint ``state`` holds in one tensor (one
    module, shared when the checkpoint was saved: torch saves a shared tensor once) one ULQ module again, as
    :func:`create_quant_retrain_model` did: a model torch.fx cannot trace, prepared without an example input,
    shows no other sign of it. Returns the groups."""
    qls = quant_layers(model)
    by_storage: Dict[Tuple[int, int], List[str]] = {}
    for name in qls:
        t = state.get(f"{name}.act_quant.clip_max")
        if isinstance(t, torch.Tensor):
            by_storage.setdefault((t.untyped_storage().data_ptr(), t.storage_offset()), []).append(name)
    groups = [tuple(g) for g in by_storage.values() if len(g) > 1]
    _share_activations(load_retrain_config(config), qls, groups)
    return groups


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
