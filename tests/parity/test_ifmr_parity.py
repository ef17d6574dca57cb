"""IFMR (spec §3): rust/ferroquant-core/src/ifmr/ against its NumPy twin ferroquant.reference.ifmr."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import dataclasses
from types import SimpleNamespace

from ferroquant import _native
from ferroquant import reference as ref
from ferroquant.errors import BitsError, EmptyInputError, NonFiniteError, ParameterError, QuantError, ScaleError
from ferroquant.ops import Histogram, IfmrOptions

f32 = np.float32


def _opts(**kw) -> SimpleNamespace:
    """The options object with some fields replaced, unchecked (the kernels' own checks are under test)."""
    return SimpleNamespace(**{**dataclasses.asdict(IfmrOptions()), **kw})


def nat_ifmr(x, **kw) -> dict:
    return dataclasses.asdict(_native.ifmr(x, _opts(**kw)))


def ref_ifmr(x, **kw) -> dict:
    return dataclasses.asdict(ref.ifmr(x, _opts(**kw)))


def nat_hist(counts, lo, hi, x=None, **kw) -> dict:
    return dataclasses.asdict(_native.ifmr_histogram(Histogram(counts, lo, hi), x, _opts(**kw)))


def ref_hist(counts, lo, hi, x=None, **kw) -> dict:
    return dataclasses.asdict(ref.ifmr_histogram(Histogram(counts, lo, hi), x, _opts(**kw)))
KEYS = ("index", "index_min", "zero_point", "bound", "candidates", "extension", "max_init", "min_init")


def assert_parity(a: dict, b: dict) -> None:
    for k in KEYS:
        assert a[k] == b[k], (k, a[k], b[k])
    assert abs(int(np.float32(a["scale"]).view(np.int32)) - int(np.float32(b["scale"]).view(np.int32))) <= 1
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-12, abs=0)


def both(x, **kw) -> tuple[dict, dict]:
    a, b = nat_ifmr(x, **kw), ref_ifmr(x, **kw)
    assert_parity(a, b)
    return a, b


def datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "gaussian": rng.standard_normal(50_000).astype(f32),
        "relu_t3": np.maximum(rng.standard_t(3, 50_000), 0).astype(f32),
        "all_zero": np.zeros(1000, f32),
        "constant": np.full(333, 1.75, f32),
        "negative_only": -np.abs(rng.standard_normal(4000)).astype(f32) - 0.1,
        "positive_only": np.abs(rng.standard_normal(4000)).astype(f32) + 0.1,
        "single": np.array([-2.5], f32),
        "huge": (rng.standard_normal(3000) * 1e6).astype(f32),
        "odd_tail": rng.uniform(-3, 5, (1 << 15) + 37).astype(f32),
    }


OPTIONS = [
    {},
    {"symmetric": True},
    {"bits": 4},
    {"bits": 16, "search_extend": False},
    {"search_2d": True, "search_step": 0.1},
    {"max_percentile": 0.999, "min_percentile": 0.99},
]


@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("name", list(datasets()))
def test_parity_on_datasets(name, opts):
    both(datasets()[name], **opts)


@settings(max_examples=30, deadline=None)
@given(
    x=arrays(f32, st.integers(1, 300), elements=st.floats(-1e3, 1e3, width=32)),
    symmetric=st.booleans(),
    bits=st.sampled_from([4, 8]),
    p=st.sampled_from([1.0, 0.999999, 0.99, 0.9]),
)
def test_parity_random(x, symmetric, bits, p):
    both(x, symmetric=symmetric, bits=bits, max_percentile=p, min_percentile=p)


def test_default_window_has_61_candidates():
    a, _ = both(np.linspace(-1, 2, 100, dtype=f32), search_extend=False)
    assert a["candidates"] == a["window"] == 61
    assert ref.ifmr.__module__ == "ferroquant.reference.ifmr"


def test_min_percentile_counts_from_the_bottom():
    # 1000 values -500..499; p = 0.99 keeps k = 10 from each end: the min is the 10th smallest (-491), not
    # the 0.99 quantile (near +489).
    x = np.arange(-500, 500, dtype=f32)
    np.random.default_rng(1).shuffle(x)
    a, _ = both(x, max_percentile=0.99, min_percentile=0.99)
    assert (a["max_init"], a["min_init"]) == (490.0, -491.0)
    assert ref.percentile_init(x, 0.99, 0.99) == (490.0, -491.0)


def test_all_zero_gives_scale_one():
    a, _ = both(np.zeros(64, f32))
    assert (a["scale"], a["zero_point"]) == (1.0, -128)
    a, _ = both(np.zeros(64, f32), symmetric=True)
    assert (a["scale"], a["zero_point"]) == (1.0, 0)


def test_constant_is_reproduced():
    c = f32(3.7)
    a, _ = both(np.full(500, c))
    s = f32(a["scale"])
    back = (np.rint(c / s) + a["zero_point"] - a["zero_point"]) * s
    assert abs(back - c) <= 4 * np.spacing(c)
    assert a["ratio"] == pytest.approx(1.0)


def test_negative_only_searches_the_lower_bound():
    x = -np.maximum(np.random.default_rng(2).standard_t(3, 20_000), 0).astype(f32)
    a, _ = both(x)
    assert a["bound"] == "min" and a["zero_point"] == 127 and a["max_init"] == 0.0
    assert a["clip_max"] == 0.0 and a["clip_min"] < 0


def test_positive_only_uses_full_range():
    a, _ = both(np.abs(np.random.default_rng(3).standard_normal(1000)).astype(f32) + 0.5)
    assert a["zero_point"] == -128 and a["min_init"] == 0.0 and a["clip_min"] == 0.0


def test_window_extension_on_heavy_tails():
    """ReLU'd Student-t (df=3), 1M values: the best clip lies below 0.7 x max; AMCT stops at 0.7."""
    x = np.maximum(np.random.default_rng(2).standard_t(3, 1_000_000), 0).astype(f32)
    amct = nat_ifmr(x, search_extend=False)
    ext = nat_ifmr(x)
    assert amct["index"] == 0 and amct["ratio"] == pytest.approx(0.7) and not amct["extended"]
    assert amct["candidates"] == 61
    assert ext["extended"] and ext["extension"] < 0 and ext["ratio"] < 0.7
    assert ext["loss"] < amct["loss"]
    assert ext["index"] == ext["extension"]
    # The twin agrees on the subsample (the full 1M run is the native one only, to keep the suite fast).
    both(x[:100_000])


def test_window_extension_upward():
    # Constant data and a window [0.5, 0.9] below it: the best window candidate is the last one, the walk
    # goes up to ratio 1.0 (which reproduces the constant) and stops there because 1.1 is worse.
    x = np.full(100, 2.0, f32)
    a, _ = both(x, search_start=0.5, search_end=0.9, search_step=0.1, bits=4)
    assert a["window"] == 5 and a["index"] == 5 and a["extension"] == 1 and a["ratio"] == pytest.approx(1.0)
    b, _ = both(x, search_start=0.5, search_end=0.9, search_step=0.1, bits=4, search_extend=False)
    assert b["index"] == 4 and not b["extended"] and b["loss"] > a["loss"]


def test_thread_count_does_not_change_bits():
    x = np.random.default_rng(4).standard_normal(300_000).astype(f32)
    try:
        _native.set_num_threads(1)
        one = nat_ifmr(x, search_2d=True, search_step=0.1)
        one1 = nat_ifmr(x)
    finally:
        _native.set_num_threads(0)
    assert one == nat_ifmr(x, search_2d=True, search_step=0.1)
    assert one1 == nat_ifmr(x)


def test_histogram_percentiles_and_search():
    x = np.maximum(np.random.default_rng(5).standard_t(3, 200_000), 0).astype(f32)
    lo, hi = float(x.min()), float(x.max())
    counts, _ = np.histogram(x, 128, (lo, hi))
    for kw in [{}, {"symmetric": True}, {"max_percentile": 0.99, "min_percentile": 0.99}]:
        a, b = nat_hist(counts, lo, hi, **kw), ref_hist(counts, lo, hi, **kw)
        assert_parity(a, b)
        a, b = nat_hist(counts, lo, hi, x, **kw), ref_hist(counts, lo, hi, x, **kw)
        assert_parity(a, b)
    assert nat_hist(counts.astype(np.uint64), lo, hi) == nat_hist(counts, lo, hi)
    # cdf = [0.1, 0.5, 0.9, 1.0] over [-2, 2]
    assert ref.histogram_init([1, 4, 4, 1], -2.0, 2.0, 0.95, 0.95) == (1.0, -2.0)
    a = nat_hist(np.array([1, 4, 4, 1]), -2.0, 2.0, max_percentile=0.95, min_percentile=0.95)
    assert (a["max_init"], a["min_init"]) == (1.0, -2.0)


def test_nan_raises_nonfinite():
    x = np.array([1.0, np.nan, 2.0], f32)
    for f in (nat_ifmr, ref_ifmr):
        with pytest.raises(NonFiniteError):
            f(x)
    with pytest.raises(NonFiniteError):
        nat_hist(np.array([1, 2]), 0.0, 1.0, np.array([np.inf], f32))


def test_nan_beside_counted_zeros_raises_nonfinite():
    """With zeros counted beside the data, the range and sign counts come from one fused pass: it must still
    refuse NaN/Inf, alone and inside ``ifmr_many``."""
    x = np.array([1.0, -2.0, np.inf, 2.0], f32)
    for f in (_native.ifmr, ref.ifmr):
        with pytest.raises(NonFiniteError):
            f(x, _opts(), 3)
    for many in (_native.ifmr_many, ref.ifmr_many):
        with pytest.raises(NonFiniteError):
            many([np.ones(5, f32), x], [_opts()] * 2, [0, 3])


def test_huge_values_raise_scale_error_on_both_sides():
    x = np.array([1e9, -1e9], f32)
    for f in (nat_ifmr, ref_ifmr):
        with pytest.raises(ScaleError):
            f(x)


BAD = [
    ({"max_percentile": 0.5}, "max_percentile"),
    ({"min_percentile": 1.5}, "min_percentile"),
    ({"min_percentile": float("nan")}, "min_percentile"),
    ({"search_start": 0.0}, "search_start"),
    ({"search_end": 0.7}, "search_end"),
    ({"search_step": 0.0}, "search_step"),
    ({"search_step": 0.61}, "search_step"),
    ({"search_step": 1e-9}, "search_step"),
    ({"search_2d": True, "symmetric": True}, "search_2d"),
]


@pytest.mark.parametrize("kw,name", BAD)
def test_bad_options_raise_parameter_error(kw, name):
    x = np.ones(4, f32)
    for f in (nat_ifmr, ref_ifmr):
        with pytest.raises(ParameterError, match=name):
            f(x, **kw)
    assert issubclass(ParameterError, ValueError)


def test_other_errors_are_typed():
    for f in (nat_ifmr, ref_ifmr):
        with pytest.raises(BitsError):
            f(np.ones(4, f32), bits=1)
    with pytest.raises(EmptyInputError):
        nat_ifmr(np.zeros(0, f32))
    with pytest.raises(EmptyInputError):
        nat_hist(np.zeros(4, np.int64), 0.0, 1.0)
    with pytest.raises(ParameterError):
        nat_hist(np.array([1, -1]), 0.0, 1.0)
    with pytest.raises(ParameterError):
        nat_hist(np.array([1, 1]), 1.0, 0.0)
    with pytest.raises(QuantError):
        nat_hist(np.array([1, 1]), 0.0, float("inf"))


# -- zeros counted, not stored ------------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(arrays(f32, st.integers(1, 3000), elements=st.floats(-50, 50, width=32)),
       st.floats(0.0, 0.95), st.sampled_from([0.999999, 0.99, 0.9, 0.6]), st.booleans())
def test_zeros_left_out_same_result(x, zero_share, pct, symmetric) -> None:
    """IFMR of the non-zero values with the zeros counted gives the result of the whole data (twin and native)."""
    x = x.copy()
    x[: int(zero_share * x.size)] = 0.0
    np.random.default_rng(x.size).shuffle(x)
    nz = x[x != 0]
    kw = dict(max_percentile=pct, min_percentile=pct, symmetric=symmetric)
    whole = nat_ifmr(x, **kw)
    a = dataclasses.asdict(_native.ifmr(nz, _opts(**kw), x.size - nz.size))
    b = dataclasses.asdict(ref.ifmr(nz, _opts(**kw), x.size - nz.size))
    assert_parity(a, b)
    for k in ("scale", "zero_point", "clip_min", "clip_max", "index", "max_init", "min_init"):
        assert a[k] == whole[k], (k, a[k], whole[k])
    assert a["loss"] == pytest.approx(whole["loss"], rel=1e-9, abs=1e-30)


def test_all_zeros_counted() -> None:
    for k in (_native, ref):
        assert k.ifmr(np.zeros(0, f32), _opts(), 10).scale == _native.ifmr(np.zeros(10, f32), _opts()).scale
    for k in (_native, ref):
        with pytest.raises(EmptyInputError):
            k.ifmr(np.zeros(0, f32), _opts(), 0)


@settings(max_examples=40, deadline=None)
@given(arrays(f32, st.integers(0, 100_000), elements=st.sampled_from([0.0, -0.0, 1.5, -2.25, 3e-8])),
       st.integers(0, 50))
def test_store_parity(x, offset) -> None:
    nz = int(np.count_nonzero(x))
    bufs = [np.full(offset + nz + 3, np.nan, f32) for _ in range(2)]
    got = [_native.ifmr_store(bufs[0], offset, x), ref.ifmr_store(bufs[1], offset, x)]
    assert got[0] == got[1] == (nz, x.size - nz)
    np.testing.assert_array_equal(bufs[0], bufs[1])
    np.testing.assert_array_equal(bufs[0][offset:offset + nz], x[x != 0])


@pytest.mark.parametrize("kernel", [_native, ref])
def test_store_errors(kernel) -> None:
    x = np.array([1.0, 0.0, np.nan, 2.0], f32)
    buf = np.zeros(8, f32)
    with pytest.raises(NonFiniteError, match="index 2"):
        kernel.ifmr_store(buf, 0, x)
    assert not buf.any()  # nothing written
    with pytest.raises(QuantError):
        kernel.ifmr_store(np.zeros(1, f32), 0, np.ones(3, f32))
    with pytest.raises(ParameterError):
        kernel.ifmr_store(buf, 9, np.ones(1, f32))


@settings(max_examples=40, deadline=None)
@given(x=arrays(f32, st.integers(1, 3000), elements=st.floats(-50, 50, width=32)),
       bits=st.sampled_from([4, 8, 12]), zeros=st.integers(0, 50))
def test_loss_is_every_value_quantized(x, bits, zeros) -> None:
    """The loss from per-interval sums (twin and native) is the mean squared error of quantizing every value with
    the chosen candidate, ``f32(rint(clip(x, lo, hi) / s) * s) - x`` taken in float64, within float64 rounding."""
    r = ref.ifmr(x, _opts(bits=bits), zeros)
    n = _native.ifmr(x, _opts(bits=bits), zeros)
    assert (n.loss, n.scale, n.index) == (r.loss, r.scale, r.index)
    if r.bound == "max":
        lo, hi = f32(r.min_init), f32(r.ratio * float(r.max_init))
    else:
        lo, hi = f32(r.ratio * float(r.min_init)), f32(0)
    level = np.rint(np.clip(x, lo, hi) / f32(r.scale))
    e = (level * f32(r.scale)).astype(f32).astype(np.float64) - x.astype(np.float64)
    direct = float((e * e).sum()) / (x.size + zeros)
    assert r.loss == pytest.approx(direct, rel=1e-9, abs=1e-30)


@pytest.mark.parametrize("seed", range(4))
def test_losses_are_summed_as_the_twin_sums_them(seed) -> None:
    """Native and twin add a candidate's per-interval terms in the same order (four sums by interval index, then
    (s0 + s1) + (s2 + s3)), so every loss is the same double: 200,000 heavy-tailed values, 61 candidates of 255
    levels, where a different order of the 15,000 terms changes the last bits."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, 200_000) * rng.uniform(0.5, 2.0)).astype(f32)
    for kw in ({}, {"symmetric": True}, {"bits": 4}):
        r, n = ref.ifmr(x, _opts(**kw), 17), _native.ifmr(x, _opts(**kw), 17)
        assert (n.loss, n.scale, n.index) == (r.loss, r.scale, r.index), kw


@settings(max_examples=25, deadline=None)
@given(xs=st.lists(arrays(f32, st.integers(1, 2000), elements=st.floats(-20, 20, width=32)), min_size=1, max_size=5),
       bits=st.sampled_from([4, 8]), symmetric=st.booleans(), zeros=st.integers(0, 30))
def test_many_tensors_in_one_call(xs, bits, symmetric, zeros) -> None:
    """``ifmr_many`` (native, in parallel across the tensors) gives each tensor's ``ifmr`` result, and the twin's."""
    opts = [_opts(bits=bits, symmetric=symmetric)] * len(xs)
    counts = [zeros + i for i in range(len(xs))]
    got = _native.ifmr_many(xs, opts, counts)
    assert got == [_native.ifmr(x, o, z) for x, o, z in zip(xs, opts, counts)]
    assert got == ref.ifmr_many(xs, opts, counts)
