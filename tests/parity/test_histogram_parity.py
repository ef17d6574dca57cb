"""Native histogram (build / observe / merge) and baselines against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ferroquant import _native as N
from ferroquant import ops
from ferroquant import reference as R
from ferroquant.errors import EmptyInputError, NonFiniteError, ParameterError, QuantError, ShapeError
from ferroquant.ops import Histogram as H

F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
batches = arrays(np.float32, st.integers(1, 300), elements=F32)
small = arrays(np.float32, st.integers(1, 300), elements=st.floats(-1e3, 1e3, width=32))
nbins_st = st.sampled_from([2, 4, 16, 64, 256])


def same(a, b):
    assert a.counts.dtype == np.uint64
    np.testing.assert_array_equal(a.counts, b.counts)
    assert (a.lo, a.hi) == (b.lo, b.hi)


SPECIAL = {
    "constant": np.full(50, 2.5, np.float32),
    "single": np.array([7.0], np.float32),
    "negative": -np.abs(np.linspace(1, 9, 101, dtype=np.float32)),
    "huge": np.array([-3e38, -1e38, 0.0, 1e38, 3.4e38], np.float32),
    "denormal": np.array([1e-45, 5e-42, -3e-40, 0.0, 1e-39], np.float32),
    "zeros": np.zeros(10, np.float32),
}


@pytest.mark.parametrize("name", sorted(SPECIAL))
@pytest.mark.parametrize("nbins", [2, 64, 4096])
def test_special_inputs_build_and_observe(name, nbins):
    x = SPECIAL[name]
    a, b = N.histogram_observe(None, x, nbins), R.histogram_observe(None, x, nbins)
    same(a, b)
    assert int(a.counts.sum()) == x.size
    y = np.concatenate([x * np.float32(0.5), x[:1]])
    same(N.histogram_observe(a, y), R.histogram_observe(b, y))


@settings(max_examples=50, deadline=None)
@given(first=small, x=arrays(np.float32, st.integers(0, 300), elements=F32), zeros=st.integers(0, 400),
       nbins=nbins_st, start=st.booleans())
def test_zeros_beside_a_batch_are_zeros_in_it(first, x, zeros, nbins, start):
    """``zeros=`` (an exact-IFMR calibrator's counted zeros) gives the histogram of ``x`` with the zeros
    appended, natively and in the twin, for a new histogram and a later batch."""
    if x.size == 0 and zeros == 0:
        return
    cat = np.concatenate([x, np.zeros(zeros, np.float32)])
    h0 = None if start else N.histogram_observe(None, first, nbins)
    nb = nbins if start else None
    a = N.histogram_observe(h0, x, nb, zeros=zeros)
    same(a, N.histogram_observe(h0, cat, nb))
    same(a, R.histogram_observe(h0, x, nb, zeros=zeros))
    assert int(a.counts.sum()) == cat.size + (0 if start else first.size)


def test_zeros_are_checked_and_nonfinite_values_still_named():
    with pytest.raises(ParameterError, match="zeros"):
        ops.histogram_observe(None, np.ones(3, np.float32), zeros=-1)
    with pytest.raises(NonFiniteError):
        ops.histogram_observe(None, np.array([1.0, np.nan], np.float32), zeros=5)
    with pytest.raises(EmptyInputError):
        ops.histogram_observe(None, np.zeros(0, np.float32), zeros=0)
    h = ops.histogram_observe(None, np.zeros(0, np.float32), 64, zeros=7)
    assert (h.lo, h.hi, int(h.counts.sum())) == (0.0, 0.0, 7)


@settings(max_examples=50, deadline=None)
@given(xs=st.lists(batches, min_size=1, max_size=4), nbins=nbins_st)
def test_observe_parity_and_total(xs, nbins):
    a = b = None
    n = 0
    for x in xs:
        a = N.histogram_observe(a, x, None if a else nbins)
        b = R.histogram_observe(b, x, None if b else nbins)
        n += x.size
        same(a, b)
        assert int(a.counts.sum()) == n
    assert a.lo == min(float(x.min()) for x in xs) and a.hi == max(float(x.max()) for x in xs)


@settings(max_examples=50, deadline=None)
@given(x=small, y=batches, nbins=nbins_st)
def test_merge_parity_symmetry_and_total(x, y, nbins):
    a, b = N.histogram_observe(None, x, nbins), N.histogram_observe(None, y, nbins)
    ab, ba = N.histogram_merge(a, b), N.histogram_merge(b, a)
    same(ab, ba)
    same(ab, R.histogram_merge(a, b))
    assert int(ab.counts.sum()) == x.size + y.size


@settings(max_examples=30, deadline=None)
@given(x=arrays(np.float32, st.integers(2, 2000), elements=st.floats(-50, 50, width=32)), seed=st.integers(0, 99))
def test_fixed_range_order_independence(x, seed):
    rng = np.random.default_rng(seed)
    lo, hi = float(x.min()), float(x.max())
    one = N.histogram_observe(H(np.zeros(64, np.uint64), lo, hi), x)
    parts = np.array_split(x[rng.permutation(x.size)], 5)
    state = H(np.zeros(64, np.uint64), lo, hi)
    for p in parts[::-1]:
        state = N.histogram_observe(state, p)
    same(state, one)
    partial = [N.histogram_observe(H(np.zeros(64, np.uint64), lo, hi), p) for p in parts]
    left = partial[0]
    for p in partial[1:]:
        left = N.histogram_merge(left, p)
    right = N.histogram_merge(partial[0], N.histogram_merge(partial[1], N.histogram_merge(partial[2], N.histogram_merge(partial[3], partial[4]))))
    same(left, one)
    same(right, one)


def test_thread_count_independence():
    x = (np.random.default_rng(3).standard_normal(400_000) * 5).astype(np.float32)
    try:
        N.set_num_threads(1)
        one = N.histogram_observe(N.histogram_observe(None, x[:1000], 1024), x)
        kl1 = N.kl_search(one)
        N.set_num_threads(0)
        many = N.histogram_observe(N.histogram_observe(None, x[:1000], 1024), x)
        same(one, many)
        assert kl1 == N.kl_search(many)
    finally:
        N.set_num_threads(0)


def test_nonfinite_raise_and_drop():
    x = np.array([1.0, np.nan, 3.0, np.inf, -np.inf], np.float32)
    with pytest.raises(NonFiniteError, match="index 1"):
        N.histogram_observe(None, x, 16)
    with pytest.raises(NonFiniteError):
        R.histogram_observe(None, x, 16)
    a = N.histogram_observe(None, x, 16, True)
    same(a, R.histogram_observe(None, x, 16, True))
    assert int(a.counts.sum()) == 2 and (a.lo, a.hi) == (1.0, 3.0)
    same(N.histogram_observe(a, x, None, True), R.histogram_observe(a, x, None, True))
    with pytest.raises(EmptyInputError):
        N.histogram_observe(None, np.array([np.nan], np.float32), 16, True)
    same(N.histogram_observe(a, np.array([np.nan], np.float32), None, True), a)


@pytest.mark.parametrize("nbins", [0, 1, 3, 100, 1 << 21, 2**62])
def test_bad_nbins_no_panic(nbins):
    with pytest.raises(ParameterError):
        N.histogram_observe(None, np.ones(3, np.float32), nbins)


def test_bad_state_no_panic():
    x = np.ones(3, np.float32)
    bad = [
        (np.zeros(3, np.uint64), 0.0, 1.0),
        (np.zeros(0, np.uint64), 0.0, 1.0),
        (np.zeros(4, np.uint64), 1.0, 0.0),
        (np.zeros(4, np.uint64), 0.0, float("nan")),
        (np.array([2**63, 2**63, 0, 0], np.uint64), 0.0, 1.0),
    ]
    for st_ in bad:
        with pytest.raises(QuantError):
            N.histogram_observe(H(*st_), x)
        for f in (N.hfmg_search, N.kl_search, N.percentile_clip):
            with pytest.raises(QuantError):
                f(H(*st_))
    with pytest.raises(ShapeError):
        N.histogram_merge(H(np.zeros(4, np.uint64), 0, 1), H(np.zeros(8, np.uint64), 0, 1))
    with pytest.raises(ShapeError):
        N.histogram_observe(H(np.zeros(4, np.uint64), 0, 1), x, 8)
    with pytest.raises(EmptyInputError):
        N.histogram_observe(None, np.zeros(0, np.float32), 8)
    for f in (N.hfmg_search, N.kl_search, N.percentile_clip):
        with pytest.raises(EmptyInputError):
            f(H(np.zeros(256, np.uint64), 0.0, 1.0))
    with pytest.raises(ParameterError):
        N.percentile_clip(H(np.ones(256, np.uint64), 0.0, 1.0), 0.0)
    with pytest.raises(ParameterError):
        N.kl_search(H(np.ones(64, np.uint64), 0.0, 1.0))


@settings(max_examples=40, deadline=None)
@given(x=small, p=st.sampled_from([0.5, 0.99, 0.999, 0.99999, 1.0]), symmetric=st.booleans(),
       nbins=st.sampled_from([16, 256]))
def test_percentile_parity(x, p, symmetric, nbins):
    h = N.histogram_observe(None, x, nbins)
    assert N.percentile_clip(h, p, 8, symmetric) == R.percentile_clip(h, p, 8, symmetric)
    assert int(R.fold_abs(h.counts, h.lo, h.hi)[2].sum()) == x.size


@settings(max_examples=15, deadline=None)
@given(x=arrays(np.float32, st.integers(10, 3000), elements=st.floats(-100, 300, width=32)),
       nbins=st.sampled_from([128, 512]))
def test_kl_parity(x, nbins):
    h = N.histogram_observe(None, x, nbins)
    np.testing.assert_allclose(N.kl_divergences(h), R.kl_divergences(h), rtol=1e-9, atol=1e-15)
    a, b = N.kl_search(h), R.kl_search(h)
    assert (a.clip_min, a.clip_max, a.scale, a.zero_point) == (b.clip_min, b.clip_max, b.scale, b.zero_point)
