"""The mixed-precision choice (:func:`ferroquant.quant.mixed_precision.choose_bits`): budgets kept, bits from the
allowed sets, deterministic, the greedy order it documents, and unreachable budgets named."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferroquant.errors import ConfigError
from ferroquant.quant.mixed_precision import Budget, LayerCost, choose_bits


def _layer(name, tensor, elems, macs, n48, n88, n416=None, n816=None, weight_bits=(4, 8)):
    noise = {(4, 8): n48, (8, 8): n88, (4, 16): n48 if n416 is None else n416, (8, 16): n88 if n816 is None else n816}
    return LayerCost(name, tensor, elems, macs, weight_bits, {k: v for k, v in noise.items() if k[0] in weight_bits})


@st.composite
def _models(draw):
    n = draw(st.integers(1, 8))
    layers, acts = [], {}
    for i in range(n):
        shared = i > 0 and draw(st.booleans())
        tensor = f"t{i - 1}" if shared else f"t{i}"
        fixed = draw(st.booleans())
        wb = (8,) if fixed else (4, 8)
        n88 = draw(st.floats(1e-6, 1e-2))
        n816 = n88 * draw(st.floats(0.0, 1.0))
        n48 = n88 + draw(st.floats(0.0, 1e-1))
        n416 = n48 - (n88 - n816)
        layers.append(_layer(f"l{i}", tensor, draw(st.integers(1, 10_000)), draw(st.floats(1.0, 1e6)), n48, n88,
                             max(n416, 0.0), n816, wb))
        acts.setdefault(tensor, (8, 16))
    return layers, acts


@settings(max_examples=200, deadline=None)
@given(model=_models(), fraction=st.floats(0.5, 1.2), share=st.floats(0.0, 1.0))
def test_budgets_are_kept_and_bits_come_from_the_allowed_sets(model, fraction, share):
    layers, acts = model
    int8 = sum(l.weight_elements for l in layers)
    floor = sum(l.weight_bytes(l.weight_bits[0]) for l in layers)
    budget = Budget(int8 * fraction, share)
    if budget.weight_bytes < floor:
        with pytest.raises(ConfigError, match="weight budget"):
            choose_bits(layers, acts, budget)
        return
    c = choose_bits(layers, acts, budget)
    assert c.weight_bytes <= budget.weight_bytes + 1e-9
    total = sum(l.macs for l in layers)
    wide = sum(l.macs for l in layers if c.activation_bits[l.tensor] == 16)
    assert wide <= (1 - share) * total + 1e-9 * total
    assert c.wide_mac_share == pytest.approx(wide / total)
    assert all(c.weight_bits[l.name] in l.weight_bits for l in layers)
    assert set(c.activation_bits) == {l.tensor for l in layers} and set(c.activation_bits.values()) <= {8, 16}
    if fraction >= 1.0:  # all-int8 fits: no weight is narrowed
        assert all(c.weight_bits[l.name] == 8 for l in layers)
    if share == 1.0:
        assert set(c.activation_bits.values()) == {8}
    again = choose_bits(layers, acts, budget)
    assert (again.weight_bits, again.activation_bits) == (c.weight_bits, c.activation_bits)


def test_weights_narrowed_least_noise_per_byte_first():
    # equal sizes: the layers whose 4-bit weights add the least noise go first
    layers = [_layer("a", "ta", 100, 1, 0.30, 0.01), _layer("b", "tb", 100, 1, 0.02, 0.01),
              _layer("c", "tc", 100, 1, 0.05, 0.01), _layer("d", "td", 100, 1, 0.011, 0.01)]
    c = choose_bits(layers, {t: (8, 16) for t in ("ta", "tb", "tc", "td")}, Budget(300.0, 1.0))
    assert c.weight_bits == {"a": 8, "b": 4, "c": 8, "d": 4}  # 400 bytes -> 300: two layers at half size
    assert c.weight_bytes == 300.0 and c.steps[:2] == ["d: weights 8 -> 4 bits", "b: weights 8 -> 4 bits"]
    # per byte: a large layer that saves much can go before a small one that adds less noise
    layers = [_layer("big", "t1", 1000, 1, 0.05, 0.01), _layer("small", "t2", 10, 1, 0.02, 0.01)]
    c = choose_bits(layers, {"t1": (8, 16), "t2": (8, 16)}, Budget(600.0, 1.0))
    assert c.weight_bits == {"big": 4, "small": 8}


def test_activations_widened_most_noise_removed_per_mac_first_within_the_compute_share():
    layers = [_layer("a", "ta", 10, 100, 0.1, 0.010, n816=0.001), _layer("b", "tb", 10, 100, 0.1, 0.020, n816=0.001),
              _layer("c", "tc", 10, 800, 0.1, 0.030, n816=0.001)]
    acts = {t: (8, 16) for t in ("ta", "tb", "tc")}
    c = choose_bits(layers, acts, Budget(30.0, 0.8))  # 20% of 1000 MACs: two of the small ones, never c
    assert c.activation_bits == {"ta": 16, "tb": 16, "tc": 8} and c.wide_mac_share == pytest.approx(0.2)
    assert c.steps == ["tb: activations 8 -> 16 bits", "ta: activations 8 -> 16 bits"]
    c = choose_bits(layers, acts, Budget(30.0, 0.0))
    assert set(c.activation_bits.values()) == {16}
    # a tensor read by two layers is widened for both, its MACs counted once per reader
    shared = [_layer("x", "t", 10, 100, 0.1, 0.01, n816=0.001), _layer("y", "t", 10, 100, 0.1, 0.01, n816=0.001)]
    assert choose_bits(shared, {"t": (8, 16)}, Budget(20.0, 0.9)).activation_bits == {"t": 8}  # 200 > 20 MACs
    assert choose_bits(shared, {"t": (8, 16)}, Budget(20.0, 0.0)).activation_bits == {"t": 16}


def test_a_wider_activation_that_does_not_help_is_not_taken():
    layers = [_layer("a", "ta", 10, 100, 0.1, 0.01, n816=0.01)]
    assert choose_bits(layers, {"ta": (8, 16)}, Budget(10.0, 0.0)).activation_bits == {"ta": 8}


def test_fixed_layers_and_tensors_keep_their_bits():
    layers = [_layer("nuq", "t1", 100, 10, 0.0, 0.01, weight_bits=(8,)), _layer("arq", "t2", 100, 10, 0.5, 0.01)]
    c = choose_bits(layers, {"t1": (8,), "t2": (8, 16)}, Budget(150.0, 0.0))
    assert c.weight_bits == {"nuq": 8, "arq": 4} and c.activation_bits["t1"] == 8


def test_unreachable_budgets_and_missing_numbers_are_named():
    layers = [_layer("a", "ta", 100, 1, 0.1, 0.01)]
    with pytest.raises(ConfigError, match="weight budget of 40 bytes cannot be met.*50 bytes"):
        choose_bits(layers, {"ta": (8, 16)}, Budget(40.0, 1.0))
    with pytest.raises(ConfigError, match="no activation bits given for tensors \\['ta'\\]"):
        choose_bits(layers, {}, Budget(100.0, 1.0))
    with pytest.raises(ConfigError, match="no layer"):
        choose_bits([], {}, Budget(100.0, 1.0))
    partial = [LayerCost("p", "tp", 100, 1.0, (4, 8), {(8, 8): 0.01})]
    with pytest.raises(ConfigError, match="no measured error for layer 'p' at W4A8"):
        choose_bits(partial, {"tp": (8, 16)}, Budget(60.0, 1.0))
