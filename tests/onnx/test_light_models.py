"""The onnx wheel's light model topologies: load (opset 9 -> 13), fuse, and run in ORT with fused == unfused."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import helper, numpy_helper  # noqa: E402

from ferroquant.onnx import fuse, load_model  # noqa: E402
from ferroquant.onnx.graph import GraphView, get_attr  # noqa: E402
from tests.onnx import builders as B  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
# (file, Conv+BN folds, BN+Mul and BN+Add folds each, BNs left: DenseNet's pre-activation BNs follow a Concat
# or a pool, not a conv). VGG-19, AlexNet and ZFNet carry 60-140 M fully-connected weights that take 10-20 s
# each to convert and check: they are marked slow and run only with FERROQUANT_SLOW_TESTS=1.
MODELS = [
    ("light_resnet50.onnx", 53, 0, 0),
    ("light_densenet121.onnx", 59, 121, 62),
    ("light_inception_v1.onnx", 0, 0, 0),
    ("light_inception_v2.onnx", 69, 69, 0),
    ("light_shufflenet.onnx", 49, 0, 0),
    ("light_squeezenet.onnx", 0, 0, 0),
    ("light_vgg19.onnx", 0, 0, 0),
    ("light_bvlc_alexnet.onnx", 0, 0, 0),
    ("light_zfnet512.onnx", 0, 0, 0),
]
SLOW = {"light_vgg19.onnx", "light_bvlc_alexnet.onnx", "light_zfnet512.onnx"}
_slow = [pytest.mark.slow, pytest.mark.skipif(not os.environ.get("FERROQUANT_SLOW_TESTS"),
                                              reason="slow: set FERROQUANT_SLOW_TESTS=1")]


def with_random_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The light models keep every weight as ``ConstantOfShape(shape initializer)`` filled with 0.02, so
    their outputs are constant. Replace each by a random initializer of that shape (He-scaled for weights,
    small for vectors), give every BN random statistics (positive var, gamma of both signs), turn
    ``Unsqueeze`` of an initializer (opset 9, ``axes`` attribute) into the unsqueezed initializer, so the
    Caffe2-style BN -> Mul -> Add scale layers become foldable constants, and drop the (inference no-op)
    Dropout nodes, which the ONNX 9 -> 13 version converter rewrites with a non-scalar ratio."""
    rng = np.random.default_rng(seed)
    # IR 3 lists every initializer as a graph input too; as IR 4 they need not be (and must not, to be
    # constants), so the new initializers made below can stay out of the inputs
    model.ir_version = max(model.ir_version, 4)
    inits = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    view = GraphView(model)
    for node in view.nodes("ConstantOfShape"):
        shape = view.array(node.input[0])
        if shape is None:
            continue
        shape = tuple(int(d) for d in shape)
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        value = rng.normal(0, np.sqrt(2.0 / fan_in) if fan_in else 0.05, shape)
        view.remove_node(node)
        view.set_initializer(node.output[0], value.astype(np.float32))
    for bn in view.nodes("BatchNormalization"):
        c = view.array(bn.input[1]).shape[0]
        gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c, p=[0.2, 0.8])
        for name, value in zip(bn.input[1:5], (gamma, rng.normal(0, 0.1, c), rng.normal(0, 0.1, c),
                                               rng.uniform(0.5, 2.0, c))):
            view.set_initializer(name, value.astype(np.float32))
    for node in view.nodes("Unsqueeze"):
        value = view.array(node.input[0])
        if value is not None and view.producer(node.output[0]) is node:
            axes = get_attr(node, "axes")
            view.remove_node(node)
            view.set_initializer(node.output[0], np.expand_dims(value, tuple(axes)))
    for node in view.nodes("Dropout"):
        view.bypass(node, keep=node.input[0])
    view.prune_initializers()
    return model


def _feed(model: onnx.ModelProto) -> dict:
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(7)
    feed = {}
    for vi in model.graph.input:
        if vi.name not in inits:
            shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
            feed[vi.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feed


def _logits_too(model: onnx.ModelProto) -> onnx.ModelProto:
    """Expose the Softmax input as an extra output: random-weight softmaxes saturate and hide differences."""
    for node in model.graph.node:
        if node.op_type == "Softmax":
            B.add_output(model, node.input[0])
    return model


@pytest.mark.parametrize("name,n_conv_bn,n_chain,n_left", [
    pytest.param(*m, marks=_slow) if m[0] in SLOW else m for m in MODELS])
def test_light_model_fuses_exactly(name, n_conv_bn, n_chain, n_left):
    raw = onnx.load(str(LIGHT / name))
    assert raw.opset_import[0].version == 9
    model = _logits_too(load_model(with_random_weights(raw)))
    assert model.opset_import[0].version == 13
    fused, report = fuse(model)
    kinds = [f.kind for f in report.folded]
    assert kinds.count("conv_bn") == n_conv_bn and kinds.count("bn_mul") == n_chain == kinds.count("bn_add")
    assert B.op_count(fused, "BatchNormalization") == n_left == B.op_count(model, "BatchNormalization") - n_conv_bn
    assert all("not made by a Conv" in s.reason for s in report.skipped)
    assert B.op_count(fused, "Mul") == B.op_count(model, "Mul") - n_chain
    worst = B.assert_same_outputs(model, fused, _feed(model))
    print(f"{name}: {len(report.folded)} folds, max rel diff {worst:.2e}")
