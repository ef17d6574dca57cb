"""Mixed precision in the ONNX flow (``methods.mixed_precision``, issue 15 item 5): the bits chosen under the
budget are what the record, the report and both exported models hold; the errors it chooses from are the
report's local SQNRs; at all-int8's weight size it beats all-int8 on held-out inputs; the onnxruntime profile
refuses 16-bit activations; sharded calibration refuses the method; the default flow is unchanged."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from ferroquant import ops
from ferroquant.errors import ConfigError, ModelError
from ferroquant.onnx import create_quant_config, quantize_model, save_model
from ferroquant.onnx.shards import state_of
from ferroquant.report.measure import measure
from tests.onnx.builders import run
from tests.onnx.test_adaround import _images, _net


def _quantize(model, calib, mixed=None, profile="amct", common=None):
    methods = {"mixed_precision": {"enabled": True, **mixed}} if mixed is not None else {}
    cfg = create_quant_config(None, model, batch_num=None,
                              config_defination={"methods": methods, "common_config": common or {}})
    return quantize_model(cfg, model, calib, profile=profile)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(7)
    return _net(rng), [{"x": _images(rng, 8)} for _ in range(6)], _images(rng, 64)


def _sqnr(model, path, x):
    ref = run(model, {"x": x})[0]
    got = run(onnx.load(str(path)), {"x": x})[0]
    return ops.compare(ref, got).sqnr_db


def _qdq_types(model):
    inits = {t.name: t for t in model.graph.initializer}
    return {n.input[0]: inits[n.input[2]].data_type for n in model.graph.node
            if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits}


def test_at_all_int8_size_wide_activations_beat_all_int8_and_every_output_says_so(case, tmp_path):
    model, calib, held_out = case
    plain = _quantize(model, calib)
    mixed = _quantize(model, calib, {"size_fraction": 1.0, "int8_compute_share": 0.0})
    rec = mixed.methods["mixed_precision"]
    assert rec["weight_bytes"] == rec["all_int8_weight_bytes"] == sum(
        numpy_helper.to_array(t).size for t in model.graph.initializer if t.name in ("w1", "w2", "w3", "w4"))
    wide = {n for n, v in rec["layers"].items() if v["activation_bits"] == 16}
    assert wide and all(v["weight_bits"] == 8 for v in rec["layers"].values())
    table = mixed.table()
    for name, lq in table.layers.items():
        assert (lq.activation.bits, lq.weight.bits) == (rec["layers"][name]["activation_bits"], 8)
        assert mixed.config.layers[name].activation.bits == lq.activation.bits
    p_plain, p_mixed = save_model(plain, tmp_path / "plain"), save_model(mixed, tmp_path / "mixed", table)
    for kind in ("fake_quant", "deploy"):
        m = onnx.load(str(p_mixed[kind]))
        assert m.opset_import[0].version == 21
        types = _qdq_types(m)
        for name in wide:
            assert types[table.layers[name].activation.tensor] == TensorProto.INT16
        assert _sqnr(model, p_mixed[kind], held_out) > _sqnr(model, p_plain[kind], held_out) + 1.0  # 33.4 vs 30.9 dB
    saved = json.loads(p_mixed["record"].read_text())["extra"]["methods"]["mixed_precision"]
    assert saved["layers"] == rec["layers"] and saved["wide_mac_share"] == rec["wide_mac_share"]
    rows = {r.name: r for r in measure(mixed, calib, 2, table).layers}
    assert {n for n, r in rows.items() if r.activation_bits == 16} == wide


def test_the_errors_chosen_from_are_the_reports_local_sqnr(case):
    model, calib, _ = case
    plain = _quantize(model, calib)
    mixed = _quantize(model, calib, {"int8_compute_share": 1.0, "batches": 2})
    report = {r.name: r.local_sqnr_db for r in measure(plain, calib, 2).layers}
    rec = mixed.methods["mixed_precision"]["layers"]
    for name, db in report.items():
        assert rec[name]["local_sqnr_db"]["W8A8"] == pytest.approx(db, abs=2e-3)
        assert rec[name]["local_sqnr_db"]["W4A8"] < rec[name]["local_sqnr_db"]["W8A8"]
        assert (rec[name]["weight_bits"], rec[name]["activation_bits"]) == (8, 8)  # share 1.0, size 1.0: as int8
    np.testing.assert_array_equal(  # nothing chosen: the same weights as without the method
        mixed.table().layers["pw"].weight.codes, plain.table().layers["pw"].weight.codes)


def test_a_smaller_size_budget_writes_int4_weights_within_it(case, tmp_path):
    model, calib, held_out = case
    mixed = _quantize(model, calib, {"size_fraction": 0.7, "int8_compute_share": 1.0})
    rec = mixed.methods["mixed_precision"]
    assert rec["weight_bytes"] <= 0.7 * rec["all_int8_weight_bytes"]
    four = {n for n, v in rec["layers"].items() if v["weight_bits"] == 4}
    assert four and all(v["activation_bits"] == 8 for v in rec["layers"].values())
    table = mixed.table()
    elems = {n: lq.weight.codes.size for n, lq in table.layers.items()}
    assert rec["weight_bytes"] == sum(elems[n] * rec["layers"][n]["weight_bits"] / 8 for n in elems)
    deploy = onnx.load(str(save_model(mixed, tmp_path / "m", table)["deploy"]))
    inits = {t.name: t for t in deploy.graph.initializer}
    for name in four:
        assert inits[f"{name}.weight_quantized"].data_type == TensorProto.INT4
        assert table.layers[name].weight.codes.min() >= -8 and table.layers[name].weight.codes.max() <= 7
    out = run(deploy, {"x": held_out[:4]})[0]
    assert out.shape == (4, 5) and np.all(np.isfinite(out))


def test_onnxruntime_refuses_16_bit_activations_and_allow_float_keeps_those_layers_float(case, tmp_path):
    model, calib, _ = case
    cm = _quantize(model, calib, {"int8_compute_share": 0.0}, profile="onnxruntime")
    wide = sorted(n for n, v in cm.methods["mixed_precision"]["layers"].items() if v["activation_bits"] == 16)
    assert wide
    with pytest.raises(ModelError, match=f"{wide[0]}.*wide_activation: .*simulation, in float; use the amct"):
        save_model(cm, tmp_path / "m", latency_check=False)
    with pytest.warns(RuntimeWarning, match="kept in float"):
        paths = save_model(cm, tmp_path / "m", allow_float=True, latency_check=False)
    assert sorted(json.loads(paths["record"].read_text())["extra"]["kept_float"]) == wide


def test_default_flow_and_shards(case):
    model, calib, _ = case
    plain = _quantize(model, calib)
    assert plain.wide_activations == {} and "mixed_precision" not in plain.methods
    assert plain.config.methods_in_use() == []
    mixed = _quantize(model, calib, {})
    assert mixed.config.methods_in_use() == ["methods.mixed_precision"]
    with pytest.raises(ConfigError, match="sharded calibration cannot run methods.mixed_precision"):
        state_of(mixed)


def test_nuq_layers_keep_their_weights(case):
    model, calib, _ = case
    cfg = create_quant_config(None, model, batch_num=None, config_defination={
        "methods": {"mixed_precision": {"enabled": True, "size_fraction": 0.5, "int8_compute_share": 1.0}},
        "override_layer_configs": {"fc": {"weight": {"algorithm": "nuq"}}}})
    with pytest.raises(ConfigError, match="weight budget of .* cannot be met"):  # fc (most bytes) stays 8-bit
        quantize_model(cfg, model, calib, profile="amct")
    cfg = create_quant_config(None, model, batch_num=None, config_defination={
        "methods": {"mixed_precision": {"enabled": True, "size_fraction": 0.9, "int8_compute_share": 1.0}},
        "override_layer_configs": {"fc": {"weight": {"algorithm": "nuq"}}}})
    cm = quantize_model(cfg, model, calib, profile="amct")
    assert cm.methods["mixed_precision"]["layers"]["fc"]["weight_bits"] == 8 and cm.weights["fc"].algorithm == "nuq"


@pytest.mark.parametrize("section, field", [({"enabled": "yes"}, "mixed_precision.enabled"),
                                            ({"weight_bits": [8, 4]}, "mixed_precision.weight_bits"),
                                            ({"weight_bits": [1, 8]}, "mixed_precision.weight_bits"),
                                            ({"activation_bits": [8, 12]}, "mixed_precision.activation_bits"),
                                            ({"activation_bits": [4, 8]}, "mixed_precision.activation_bits"),
                                            ({"size_fraction": 0}, "mixed_precision.size_fraction"),
                                            ({"size_bytes": 1.5}, "mixed_precision.size_bytes"),
                                            ({"size_bytes": 10, "size_fraction": 0.5}, "size_bytes or size_fraction"),
                                            ({"int8_compute_share": 1.5}, "mixed_precision.int8_compute_share"),
                                            ({"int8_compute_share": float("nan")}, "mixed_precision.int8_compute_share"),
                                            ({"batches": 0}, "mixed_precision.batches"),
                                            ({"budget": 3}, "budget")])
def test_mixed_precision_section_is_validated(section, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        create_quant_config(None, _net(np.random.default_rng(0)),
                            config_defination={"methods": {"mixed_precision": section}})


def test_config_round_trip(tmp_path):
    model = _net(np.random.default_rng(0))
    cfg = create_quant_config(tmp_path / "c.json", model, config_defination={
        "methods": {"mixed_precision": {"enabled": True, "size_bytes": 900, "int8_compute_share": 0.5}}})
    saved = json.loads((tmp_path / "c.json").read_text())
    assert saved["methods"] == {"mixed_precision": {"enabled": True, "size_bytes": 900, "int8_compute_share": 0.5}}
    assert create_quant_config(None, model, config_defination={"methods": saved["methods"]}).methods == cfg.methods


def test_cli_mixed_precision_flags(tmp_path, capsys):
    from ferroquant.cli import main

    rng = np.random.default_rng(5)
    onnx.save(_net(rng), tmp_path / "m.onnx")
    np.save(tmp_path / "calib.npy", _images(rng, 16))
    rc = main(["quantize", str(tmp_path / "m.onnx"), "--calib", str(tmp_path / "calib.npy"), "--out",
               str(tmp_path / "out"), "--no-report", "--profile", "amct", "--mixed-precision", "0.8",
               "--int8-compute-share", "0.5", "-q"])
    assert rc == 0
    rec = json.loads(next((tmp_path / "out").glob("*_quant_record.json")).read_text())["extra"]["methods"]
    mp = rec["mixed_precision"]
    assert mp["budget"]["int8_compute_share"] == 0.5 and mp["weight_bytes"] <= 0.8 * mp["all_int8_weight_bytes"]
    assert mp["wide_mac_share"] <= 0.5
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["methods"]["mixed_precision"] == {"enabled": True, "size_fraction": 0.8, "int8_compute_share": 0.5}
    assert main(["config", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c.json"), "--mixed-precision",
                 "900B"]) == 0
    saved = json.loads((tmp_path / "c.json").read_text())["methods"]["mixed_precision"]
    assert saved == {"enabled": True, "size_bytes": 900}
    for args, msg in ((["--mixed-precision", "lots"], "SIZE must be a fraction"),
                      (["--int8-compute-share", "0.5"], "--int8-compute-share needs --mixed-precision")):
        capsys.readouterr()
        assert main(["config", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "d.json"), *args]) != 0
        assert msg in capsys.readouterr().err


def test_per_channel_inputs_keep_their_bits(case):
    model, calib, _ = case
    cm = _quantize(model, calib, {"int8_compute_share": 0.0}, common={"activation": {"channel_wise": True}})
    rec = cm.methods["mixed_precision"]["layers"]
    assert rec["dw"]["activation_bits"] == 8 and set(rec["dw"]["local_sqnr_db"]) == {"W4A8", "W8A8"}
    assert rec["pw"]["activation_bits"] == 16  # the per-tensor inputs are widened
    table = cm.table()
    assert table.layers["dw"].activation.per_channel and table.layers["dw"].activation.bits == 8


def test_output_sensitivity_measures_the_model_output_with_one_layer_changed(case, tmp_path):
    model, calib, held_out = case
    plain = _quantize(model, calib)
    cm = _quantize(model, calib, {"sensitivity": "output", "int8_compute_share": 0.0, "batches": 2})
    rec = cm.methods["mixed_precision"]
    assert rec["sensitivity"] == "output"
    fq = onnx.load(str(save_model(plain, tmp_path / "plain")["fake_quant"]))
    x = np.concatenate([f["x"] for f in calib[:2]])
    ref, got = run(model, {"x": x})[0], run(fq, {"x": x})[0]
    base_db = ops.compare(ref, got).sqnr_db
    for name, v in rec["layers"].items():
        assert v["output_sqnr_db"]["W8A8"] == pytest.approx(base_db, abs=2e-3)  # every layer at its base bits
        assert set(v["output_sqnr_db"]) == set(v["local_sqnr_db"]) == {"W4A8", "W4A16", "W8A8", "W8A16"}
    wide = {n for n, v in rec["layers"].items() if v["activation_bits"] == 16}
    assert wide == {n for n, v in rec["layers"].items() if v["output_sqnr_db"]["W8A16"] > base_db}
    with pytest.raises(ConfigError, match="sensitivity: must be 'local' or 'output'"):
        create_quant_config(None, model, config_defination={"methods": {"mixed_precision": {"sensitivity": "x"}}})
