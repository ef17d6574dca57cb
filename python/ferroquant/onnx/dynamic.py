"""Dynamic int8 for ONNX: the weights of every MatMul (constant 2-D ``B``) and Gemm (constant ``B``,
``alpha = beta = 1``, no ``transA``) quantized per output channel offline (ARQ, symmetric), the activations
quantized at run time per tensor by onnxruntime: each layer becomes one ``com.microsoft.DynamicQuantizeMatMul``
(DynamicQuantizeLinear + MatMulInteger + scale, fused in one kernel). No calibration data.

On x86 CPUs without VNNI onnxruntime's u8 x s8 kernels saturate their int16 pair sums, so the weights keep 7
bits there (the ``onnxruntime`` profile's CPU types, :mod:`ferroquant.quant.profiles`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import onnx
from onnx import helper

from ferroquant.config import WeightParams
from ferroquant.config.weight_only import WeightOnlyConfig
from ferroquant.errors import ConfigError
from ferroquant.onnx.graph import GraphView, node_label
from ferroquant.onnx.io import save_onnx
from ferroquant.onnx.weight_only import MS_DOMAIN, weight_only_layers
from ferroquant.quant.profiles import CpuTypes, cpu_types_for
from ferroquant.quant.profiles import profile as get_profile
from ferroquant.quant.table import LayerInfo
from ferroquant.quant.weights import quantize_weight
from ferroquant.quant.weight_only import WeightOnlyLayer


@dataclass(frozen=True)
class DynamicLayer:
    """A layer's int8 weight ``[K, N]`` (codes transposed for Gemm ``transB=1``) and its ``[N]`` scales."""

    layer: WeightOnlyLayer
    codes: np.ndarray
    scale: np.ndarray
    bits: int


def quantize_dynamic_weights(model: onnx.ModelProto, cpu: CpuTypes,
                             skip_layers: tuple = ()) -> List[DynamicLayer]:
    """Per-output-channel ARQ of every MatMul/Gemm weight at the CPU's weight bits."""
    layers = weight_only_layers(model, WeightOnlyConfig(skip_layers=tuple(skip_layers), format="qdq"))
    if not layers:
        raise ConfigError("the model has no MatMul (constant 2-D weight) or Gemm layer to quantize dynamically")
    view, out = GraphView(model), []
    params = WeightParams(algorithm="arq", bits=cpu.max_weight_bits)
    for l in layers:
        w = view.array(l.weight).astype(np.float32)
        info = LayerInfo(l.name, l.op_type, l.activation, l.weight, l.bias, 0 if l.transposed else 1)
        wq = quantize_weight(info, w, params)
        codes = wq.codes.T if l.transposed else wq.codes
        out.append(DynamicLayer(l, np.ascontiguousarray(codes, np.int8), np.asarray(wq.scale, np.float32).ravel(),
                                params.bits))
    return out


def export_dynamic(model: onnx.ModelProto, layers: List[DynamicLayer]) -> onnx.ModelProto:
    """A copy of ``model`` with each layer replaced by ``DynamicQuantizeMatMul`` (Gemm's bias as its bias)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    view = GraphView(out)
    by_name = {d.layer.name: d for d in layers}
    nodes = []
    for node in list(out.graph.node):
        d = by_name.get(node_label(node))
        if d is None:
            nodes.append(node)
            continue
        label = node_label(node)
        names = [node.input[0]]
        for suffix, value in (("qweight", d.codes), ("scale", d.scale), ("zero_point", np.zeros_like(d.scale, np.int8))):
            names.append(view.unique_name(f"{label}.{suffix}"))
            view.set_initializer(names[-1], value)
        if d.layer.bias:
            names.append(d.layer.bias)
        nodes.append(helper.make_node("DynamicQuantizeMatMul", names, list(node.output),
                                      name=view.unique_name(f"{label}_dynamic"), domain=MS_DOMAIN))
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    if not any(i.domain == MS_DOMAIN for i in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    GraphView(out).prune_initializers()
    return out


def quantize_dynamic(model: Union[str, Path, onnx.ModelProto], output_path: Optional[Union[str, Path]] = None,
                     cpu_types: Optional[str] = None, skip_layers: tuple = ()) -> Dict[str, object]:
    """Dynamic int8 of ``model`` (loaded and fused like every flow); writes ``output_path`` when given. Returns
    the quantized model, its layers and the CPU types used (``cpu_types`` overrides the detection)."""
    from ferroquant.onnx.api import prepare_model

    cpu = cpu_types_for(get_profile("onnxruntime"), cpu_types)
    prepared = prepare_model(model).model
    layers = quantize_dynamic_weights(prepared, cpu, skip_layers)
    q = export_dynamic(prepared, layers)
    if output_path is not None:
        save_onnx(q, output_path)
    return {"model": q, "layers": layers, "cpu_types": cpu.name}


__all__ = ["DynamicLayer", "export_dynamic", "quantize_dynamic", "quantize_dynamic_weights"]
