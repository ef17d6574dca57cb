"""The runs whose outputs the golden digests pin: the MobileNetV2 demo (HFMG, IFMR, NUQ; the demo's 32
calibration crops) and the torch PTQ and QAT exports of a small CNN."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import onnx

from tests.golden.digest import model_digest, record_digest

Digests = Dict[str, Dict[str, str]]

DEMO_VARIANTS = {
    "hfmg": ({"act_algo": "hfmg"}, {"wts_algo": "arq_quantize"}),
    "ifmr": ({"act_algo": "ifmr"}, {"wts_algo": "arq_quantize"}),
    "nuq": ({"act_algo": "hfmg"}, {"wts_algo": "nuq_quantize", "num_steps": 32}),
}


def _files(paths: Dict[str, Path]) -> Digests:
    return {"fake_quant": model_digest(onnx.load(str(paths["fake_quant"]))),
            "deploy": model_digest(onnx.load(str(paths["deploy"]))),
            "record": record_digest(json.loads(Path(paths["record"]).read_text()))}


def _demo_assets():
    try:
        from ferroquant.examples.models import mobilenet_v2_onnx
        from ferroquant.examples.photos import calibration_and_eval_sets
    except ImportError:  # before the demo assets moved out of the core
        from ferroquant.data.photos import calibration_and_eval_sets
        from ferroquant.models.mobilenet_v2 import mobilenet_v2_onnx
    return mobilenet_v2_onnx, calibration_and_eval_sets


def demo_case(variant: str, out: Path) -> Digests:
    from ferroquant.onnx import create_quant_config, quantize_model, save_model

    mobilenet_v2_onnx, sets_of = _demo_assets()
    model = mobilenet_v2_onnx()
    sets = sets_of(32, 64, 0)
    calib = [{"input": sets.calibration[i:i + 8]} for i in range(0, len(sets.calibration), 8)]
    act, wts = DEMO_VARIANTS[variant]
    cfg = create_quant_config(None, model, batch_num=len(calib), config_defination={
        "common_config": {"activation_quant_params": act, "weight_quant_params": wts}})
    import inspect

    extra = {"profile": "amct"} if "profile" in inspect.signature(quantize_model).parameters else {}
    cm = quantize_model(cfg, model, calib, **extra)  # the amct profile: the deploy layout of before profiles
    return _files(save_model(cm, out / "mobilenet_v2"))


def _torch_model():
    import torch

    from tests.torch.models import SmallCNN

    torch.manual_seed(0)
    m = SmallCNN()
    with torch.no_grad():  # non-trivial BN statistics, so folding is exercised
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((64, 1, 8, 8)).astype(np.float32))
    return m.eval(), x


def torch_ptq_case(out: Path) -> Digests:
    import ferroquant.torch as fqt

    m, x = _torch_model()
    r = fqt.quantize_torch_model(m, [x[i:i + 16] for i in range(0, 64, 16)])
    return _files(r.save(out / "ptq"))


def torch_qat_case(out: Path) -> Digests:
    import torch

    import ferroquant.torch as fqt

    m, x = _torch_model()
    cfg = fqt.create_quant_retrain_config(None, m, x[:4], batch_num=2)
    fqt.create_quant_retrain_model(cfg, m, x[:4])
    m.train()
    with torch.no_grad():
        for i in range(0, 32, 16):  # the IFMR initialisation of the ULQ clips
            m(x[i:i + 16])
    m.eval()
    return _files(fqt.save_quant_retrain_model(cfg, m, out / "qat", x[:1]))


CASES: Dict[str, Callable[[Path], Digests]] = {
    **{f"demo_{v}": (lambda out, v=v: demo_case(v, out)) for v in DEMO_VARIANTS},
    "torch_ptq": torch_ptq_case,
    "torch_qat": torch_qat_case,
}
