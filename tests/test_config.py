"""Config: precedence layer > type > common > defaults; validation names layer and field; JSON round trip."""

import json

import pytest

from ferroquant.config import build_config, load_config
from ferroquant.errors import ConfigError

LAYERS = [("conv1", "Conv"), ("deconv", "ConvTranspose"), ("fc", "Gemm"), ("proj", "MatMul")]


def test_defaults_and_precedence(tmp_path):
    cfg = build_config(
        LAYERS,
        skip_layers=["proj"],
        symmetric=True,
        common_config={"activation_quant_params": {"act_algo": "hfmg", "num_of_bins": 2048},
                       "weight_quant_params": {"num_bits": 6}},
        override_layer_types={"Gemm": {"weight_quant_params": {"channel_wise": False, "num_bits": 7}}},
        override_layer_configs={"fc": {"weight_quant_params": {"num_bits": 4}},
                                "conv1": {"activation_quant_params": {"asymmetric": True}}},
    )
    c, fc = cfg.layers["conv1"], cfg.layers["fc"]
    assert c.activation.algorithm == "hfmg" and c.activation.num_of_bins == 2048  # common
    assert c.weight.bits == 6 and c.weight.channel_wise  # common, default
    assert fc.weight.channel_wise is False and fc.weight.bits == 4  # type, then layer wins
    assert cfg.activation_symmetric("conv1") is False  # layer beats the global symmetric
    assert cfg.activation_symmetric("fc") is True  # the global symmetric
    assert not cfg.layers["proj"].quant_enable and cfg.enabled_layers() == ["conv1", "deconv", "fc"]
    path = tmp_path / "cfg.json"
    cfg.save(path)
    again = load_config(path)
    assert again == cfg
    assert json.loads(path.read_text())["layers"]["fc"]["weight"]["bits"] == 4


def test_hand_written_minimal_config():
    cfg = load_config({"layers": {"conv1": {"layer_type": "Conv", "weight_quant_params": {"wts_algo": "nuq"}}}})
    assert cfg.layers["conv1"].weight.algorithm == "nuq"
    assert cfg.layers["conv1"].activation.search_range == (0.7, 1.3)


@pytest.mark.parametrize(
    "entry, pattern",
    [
        ({"activation_quant_params": {"act_algo": "kl"}}, r"layer 'conv1', field 'act_algo'"),
        ({"activation_quant_params": {"num_bits": 5}}, r"field 'num_bits': must be one of \[4, 8, 16\]"),
        ({"activation_quant_params": {"max_percentile": 0.3}}, r"field 'max_percentile'"),
        ({"activation_quant_params": {"search_range": [1.3, 0.7]}}, r"field 'search_range'"),
        ({"activation_quant_params": {"search_step": 0}}, r"field 'search_step'"),
        ({"activation_quant_params": {"num_of_bins": 1000}}, r"field 'num_of_bins'"),
        ({"activation_quant_params": {"serch_step": 0.1}}, r"field 'activation_quant_params.serch_step': unknown key"),
        ({"weight_quant_params": {"wts_algo": "ada"}}, r"field 'wts_algo'"),
        ({"weight_quant_params": {"num_of_iteration": 9}}, r"field 'num_of_iteration'"),
        ({"weight_quant_params": {"channel_wise": "yes"}}, r"field 'channel_wise': must be true or false"),
        ({"quant_enable": 1}, r"field 'quant_enable'"),
        ({"wieght_quant_params": {}}, r"field 'wieght_quant_params': unknown key"),
    ],
)
def test_errors_name_layer_and_field(entry, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config({"layers": {"conv1": {"layer_type": "Conv", **entry}}})


def test_global_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown top-level keys"):
        load_config({"batch_nums": 2})
    with pytest.raises(ConfigError, match="batch_num"):
        load_config({"batch_num": 0})
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="skip_layers: no quantizable layer named"):
        build_config(LAYERS, skip_layers=["nope"])
    with pytest.raises(ConfigError, match="layer_type"):
        load_config({"layers": {"x": {"layer_type": "Relu"}}})


def test_amct_spelling_and_ferroquant_spelling_give_the_same_config(tmp_path):
    amct = {"version": 1, "batch_num": 2, "activation_offset": False,
            "common_config": {"activation_quant_params": {"act_algo": "hfmg", "num_bits": 16},
                              "weight_quant_params": {"wts_algo": "nuq_quantize", "num_bits": 8}},
            "layers": {"conv1": {"layer_type": "Conv", "activation_quant_params": {"asymmetric": True}}}}
    ours = {"batch_num": 2, "symmetric": True,
            "common_config": {"activation": {"algorithm": "hfmg", "bits": 16},
                              "weight": {"algorithm": "nuq", "bits": 8}},
            "layers": {"conv1": {"layer_type": "Conv", "activation": {"symmetric": False}}}}
    a, b = load_config(amct), load_config(ours)
    assert a == b
    assert a.symmetric is True and a.activation_symmetric("conv1") is False
    assert a.layers["conv1"].activation.bits == 16 and a.layers["conv1"].weight.algorithm == "nuq"
    path = tmp_path / "c.json"
    a.save(path)
    written = json.loads(path.read_text())
    assert written["version"] == 2 and "activation_offset" not in written and written["symmetric"] is True
    assert written["common_config"] == ours["common_config"]
    assert load_config(path) == a


def test_errors_name_the_key_as_the_user_spelled_it():
    with pytest.raises(ConfigError, match=r"field 'bits': must be one of \[4, 8, 16\]"):
        load_config({"layers": {"conv1": {"layer_type": "Conv", "activation": {"bits": 5}}}})
    with pytest.raises(ConfigError, match="'bits' and 'num_bits' set the same field"):
        load_config({"layers": {"conv1": {"layer_type": "Conv", "activation": {"bits": 8, "num_bits": 8}}}})
    with pytest.raises(ConfigError, match="activation_offset.*symmetric"):
        load_config({"activation_offset": True, "symmetric": True})
    with pytest.raises(ConfigError, match=r"layer 'conv1', field 'act_algo': must be one of"):
        load_config({"common_config": {"activation_quant_params": {"act_algo": "kl"}},
                     "layers": {"conv1": {"layer_type": "Conv"}}})


def test_derived_config_keeps_everything_but_quant_enable():
    cfg = build_config(LAYERS, batch_num=None, common_config={"weight": {"bits": 6}})
    fb = cfg.with_float_layers(["fc"])
    assert not fb.layers["fc"].quant_enable and fb.layers["conv1"] == cfg.layers["conv1"]
    assert fb.batch_num is None and fb.common_config == cfg.common_config
    with pytest.raises(ConfigError, match="no layer named"):
        cfg.with_float_layers(["ghost"])


def test_methods_in_use_names_what_a_config_turns_on():
    from ferroquant.config import build_config

    layers = [("a", "Conv"), ("b", "Conv")]
    assert build_config(layers).methods_in_use() == []
    cfg = build_config(layers, methods={"equalization": {"enabled": True}},
                       override_layer_configs={"b": {"weight": {"bias_correction": "empirical"},
                                                     "activation": {"channel_wise": True}}})
    assert cfg.methods_in_use() == ["methods.equalization", "weight.bias_correction", "activation.channel_wise"]
    assert build_config(layers, skip_layers=["b"], override_layer_configs={
        "b": {"weight": {"bias_correction": "empirical"}}}).methods_in_use() == []
