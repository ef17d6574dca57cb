"""Native HFMG (candidates, losses, search) against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ferroquant import _native as N
from ferroquant import reference as R
from ferroquant.errors import BitsError, ScaleError
from ferroquant.ops import Histogram

data = arrays(np.float32, st.integers(1, 2000), elements=st.floats(-1e4, 1e4, width=32))


def ulp_close(a: float, b: float) -> bool:
    a32, b32 = np.float32(a), np.float32(b)
    return a32 == b32 or abs(int(a32.view(np.int32)) - int(b32.view(np.int32))) <= 1


def check(h, bits, symmetric):
    for refine in (False, True):
        n, r = N.hfmg_search(h, bits, symmetric, refine), R.hfmg_search(h, bits, symmetric, refine)
        assert n.index == r.index  # same AMCT candidate
        assert n.refined == r.refined  # refinement moved the bounds in both or in neither
        assert (n.clip_min, n.clip_max, n.zero_point) == (r.clip_min, r.clip_max, r.zero_point)
        assert (n.left, n.right) == (r.left, r.right)
        assert ulp_close(n.scale, r.scale)
        assert n.loss == r.loss
    amct = N.hfmg_search(h, bits, symmetric, False)
    assert n.loss <= amct.loss  # refinement never raises the loss
    return n


@settings(max_examples=50, deadline=None)
@given(x=data, nbins=st.sampled_from([2, 4, 64, 256]), bits=st.sampled_from([4, 8, 16]), symmetric=st.booleans())
def test_search_parity(x, nbins, bits, symmetric):
    h = N.histogram_observe(None, x, nbins)
    for a, b in zip(N.hfmg_candidates(h), R.hfmg_candidates(h)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(N.hfmg_losses(h, bits), R.hfmg_losses(h, bits))
    s = check(h, bits, symmetric)
    assert h.lo <= s.clip_min <= s.clip_max <= h.hi


@pytest.mark.parametrize("kind", ["gauss", "relu", "neg", "constant", "single", "huge"])
@pytest.mark.parametrize("nbins", [1024, 4096])
def test_search_parity_shapes(kind, nbins):
    rng = np.random.default_rng(7)
    x = {
        "gauss": rng.standard_normal(20000),
        "relu": np.maximum(rng.standard_t(3, 20000), 0),
        "neg": -np.abs(rng.standard_normal(5000)) * 1e-3,
        "constant": np.full(100, -4.0),
        "single": np.array([3.0]),
        "huge": np.array([-1e38, 0.0, 1e38] + [1e30] * 10),
    }[kind].astype(np.float32)
    h = N.histogram_observe(None, x, nbins)
    if kind == "huge":  # the clip is found, but no scale can represent it: both sides raise ScaleError
        for f in (N.hfmg_search, R.hfmg_search):
            with pytest.raises(ScaleError):
                f(h, 8, True)
        np.testing.assert_array_equal(N.hfmg_losses(h, 8), R.hfmg_losses(h, 8))
        return
    check(h, 4, False)
    check(h, 8, True)


def test_thread_count_independence():
    x = np.random.default_rng(1).standard_t(4, 200_000).astype(np.float32)
    h = N.histogram_observe(None, x, 2048)
    try:
        N.set_num_threads(1)
        one = (N.hfmg_search(h, 8, False), N.hfmg_losses(h, 8).tobytes())
        N.set_num_threads(0)
        assert one == (N.hfmg_search(h, 8, False), N.hfmg_losses(h, 8).tobytes())
    finally:
        N.set_num_threads(0)


def test_bad_bits_no_panic():
    h = N.histogram_observe(None, np.arange(10, dtype=np.float32), 16)
    for bits in (0, 1, 17, 64):
        with pytest.raises(BitsError):
            N.hfmg_search(h, bits)


def test_refinement_on_heavy_tailed_relu_data():
    """AMCT's mass-stepped path has two candidates here; the refined clip lowers the loss and the real MSE."""
    from ferroquant import ops

    x = np.maximum(np.random.default_rng(0).standard_t(3, 2_000_000), 0).astype(np.float32)
    h = N.histogram_observe(None, x, 4096)
    assert len(N.hfmg_candidates(h)[0]) <= 3
    amct, ref = N.hfmg_search(h, 8, False, False), N.hfmg_search(h, 8, False, True)
    assert ref.refined and ref.loss < amct.loss

    def mse(r):
        d = ops.fake_quant(x, r.scale, r.zero_point).astype(np.float64) - x
        return float(np.mean(d * d))

    assert mse(ref) < mse(amct)
    twin = R.hfmg_search(h, 8, False, True)
    assert (ref.clip_min, ref.clip_max) == (twin.clip_min, twin.clip_max) or ulp_close(ref.scale, twin.scale)
