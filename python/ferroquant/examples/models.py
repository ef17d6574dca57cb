"""torchvision's MobileNetV2 as an ONNX graph, built with ``onnx.helper`` straight from the NumPy state dict.

No torch is involved: the weights come from :func:`ferroquant.examples.pretrained.mobilenet_v2_state_dict`. The graph
keeps every BatchNormalization (52 Conv + 52 BN) so fusion can be tested on a real network; ReLU6 is
``Clip(x, 0, 6)`` with min/max inputs; dropout is dropped. Node names mirror torchvision's module names
(``features.2.conv.0.0`` is a conv, ``features.2.conv.0.1`` its BN, ``classifier.1`` the Gemm) and
initializers keep the state-dict keys. Input ``input``: float32 ``[N, 3, 224, 224]`` (N dynamic); output
``logits`` ``[N, 1000]``.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Set

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ferroquant.errors import ConfigError, ModelError

#: (expand ratio t, output channels c, repeats n, first stride s), torchvision's table.
INVERTED_RESIDUAL_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                             (6, 160, 3, 2), (6, 320, 1, 1))
_RELU6_MIN, _RELU6_MAX = "relu6.min", "relu6.max"


class _Builder:
    """Accumulates nodes and initializers, and records which state-dict keys were used."""

    def __init__(self, state: Mapping[str, np.ndarray]) -> None:
        self.state = state
        self.used: Set[str] = set()
        self.nodes: List[onnx.NodeProto] = []
        self.inits: Dict[str, onnx.TensorProto] = {}

    def param(self, key: str) -> str:
        if key not in self.state:
            raise ModelError(f"state dict has no {key!r}")
        self.used.add(key)
        if key not in self.inits:
            self.inits[key] = numpy_helper.from_array(np.asarray(self.state[key], np.float32), key)
        return key

    def conv(self, x: str, name: str, stride: int, groups: int) -> str:
        w = self.state[f"{name}.weight"]
        pad = (w.shape[2] - 1) // 2
        self.nodes.append(helper.make_node(
            "Conv", [x, self.param(f"{name}.weight")], [name], name=name, kernel_shape=list(w.shape[2:]),
            strides=[stride, stride], pads=[pad] * 4, group=groups, dilations=[1, 1]))
        return name

    def bn(self, x: str, name: str) -> str:
        self.used.add(f"{name}.num_batches_tracked")  # a counter; BN at inference does not read it
        inputs = [x] + [self.param(f"{name}.{p}") for p in ("weight", "bias", "running_mean", "running_var")]
        self.nodes.append(helper.make_node("BatchNormalization", inputs, [name], name=name, epsilon=1e-5,
                                           momentum=0.9))
        return name

    def relu6(self, x: str, name: str) -> str:
        self.nodes.append(helper.make_node("Clip", [x, _RELU6_MIN, _RELU6_MAX], [name], name=name))
        return name

    def conv_bn_relu(self, x: str, prefix: str, stride: int, groups: int) -> str:
        """torchvision's Conv2dNormActivation: ``prefix.0`` conv, ``prefix.1`` BN, ``prefix.2`` ReLU6."""
        y = self.bn(self.conv(x, f"{prefix}.0", stride, groups), f"{prefix}.1")
        return self.relu6(y, f"{prefix}.2")

    def inverted_residual(self, x: str, idx: int, c_in: int, c_out: int, stride: int, t: int) -> str:
        p, hidden, layer = f"features.{idx}.conv", c_in * t, 0
        y = x
        if t != 1:
            y = self.conv_bn_relu(y, f"{p}.0", 1, 1)
            layer = 1
        y = self.conv_bn_relu(y, f"{p}.{layer}", stride, hidden)
        y = self.bn(self.conv(y, f"{p}.{layer + 1}", 1, 1), f"{p}.{layer + 2}")
        if stride == 1 and c_in == c_out:
            name = f"features.{idx}.add"
            self.nodes.append(helper.make_node("Add", [x, y], [name], name=name))
            y = name
        return y


def _features(b: _Builder, x: str) -> str:
    y = b.conv_bn_relu(x, "features.0", 2, 1)
    c_in, idx = 32, 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            y = b.inverted_residual(y, idx, c_in, c, s if i == 0 else 1, t)
            c_in, idx = c, idx + 1
    return b.conv_bn_relu(y, f"features.{idx}", 1, 1)


def _head(b: _Builder, x: str) -> str:
    b.nodes.append(helper.make_node("GlobalAveragePool", [x], ["pool"], name="pool"))
    b.nodes.append(helper.make_node("Flatten", ["pool"], ["flatten"], name="flatten", axis=1))
    b.nodes.append(helper.make_node(
        "Gemm", ["flatten", b.param("classifier.1.weight"), b.param("classifier.1.bias")], ["logits"],
        name="classifier.1", transB=1))
    return "logits"


def mobilenet_v2_onnx(opset: int = 13, state_dict: Optional[Mapping[str, np.ndarray]] = None) -> onnx.ModelProto:
    """MobileNetV2 (torchvision layout, ImageNet weights unless ``state_dict`` is given) as an ONNX model.

    Raises :class:`ModelError` when a state-dict key is missing or left unused, :class:`ConfigError` for an
    opset outside 13..(the installed onnx's newest).
    """
    newest = onnx.defs.onnx_opset_version()
    if not 13 <= opset <= newest:
        raise ConfigError(f"mobilenet_v2_onnx: opset must be in 13..{newest}, got {opset}")
    if state_dict is None:
        from ferroquant.examples.pretrained import mobilenet_v2_state_dict

        state_dict = mobilenet_v2_state_dict()
    b = _Builder(state_dict)
    b.inits[_RELU6_MIN] = numpy_helper.from_array(np.array(0.0, np.float32), _RELU6_MIN)
    b.inits[_RELU6_MAX] = numpy_helper.from_array(np.array(6.0, np.float32), _RELU6_MAX)
    out = _head(b, _features(b, "input"))
    unused = sorted(set(state_dict) - b.used)
    if unused:
        raise ModelError(f"state dict keys not used by MobileNetV2: {unused[:5]}{'...' if len(unused) > 5 else ''}")
    graph = helper.make_graph(
        b.nodes, "mobilenet_v2",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", 1000])],
        initializer=list(b.inits.values()))
    opsets = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ferroquant",
                              ir_version=helper.find_min_ir_version_for(opsets))
    onnx.checker.check_model(model)
    return model
