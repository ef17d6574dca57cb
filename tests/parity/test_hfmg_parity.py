"""Native HFMG (candidates, losses, search) against the NumPy reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from ferroquant import _native as N
from ferroquant import reference as R
from ferroquant.reference._hfmg_direct import direct_losses
from ferroquant.reference.hfmg import _hfmg_search_direct
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


def test_refinement_never_moves_to_a_degenerate_candidate():
    """A candidate whose destination bins are narrower than FLT_EPSILON has a loss of 0 by definition (spec
    §4.3, for constant data), not because it fits: the refinement moved to one on fine histograms (2^20 bins of
    uniform, normal or ReLU data: a one-bin clip). 4096 bins over [0, 0.01]: clips under 13 bins degenerate."""
    x = np.random.default_rng(0).uniform(0, 0.01, 400_000).astype(np.float32)
    h = N.histogram_observe(None, x, 4096)
    for search in (N.hfmg_search, R.hfmg_search):
        s = search(h, 8, False, True)
        assert s.loss > 0 and s.right - s.left > 4000, (search, s)
    assert (s.index, s.left, s.right, s.loss, s.refined) == _hfmg_search_direct(h, 8, True)


KINDS = ("dense", "sparse", "one_bin", "two_spikes", "heavy_tail", "noisy", "huge_counts")


@st.composite
def histograms(draw):
    """Histograms of every shape the search meets: dense bells, a few scattered bins, one bin, two spikes
    (far apart, counts of any ratio), power-law tails, small noisy counts, and counts so large that the group
    moments need 128-bit integers."""
    n = draw(st.sampled_from([2, 4, 16, 64, 256, 1024]))
    kind = draw(st.sampled_from(KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = np.zeros(n, np.uint64)
    if kind == "dense":
        k = np.arange(n)
        c[:] = np.floor(1e5 * np.exp(-0.5 * ((k - rng.uniform(0, n)) / (n * rng.uniform(0.02, 0.5))) ** 2))
    elif kind == "sparse":
        c[rng.integers(0, n, draw(st.integers(1, 6)))] = rng.integers(1, 10**6, 1)
    elif kind == "one_bin":
        c[draw(st.integers(0, n - 1))] = draw(st.integers(1, 10**9))
    elif kind == "two_spikes":
        i, j = draw(st.integers(0, n - 1)), draw(st.integers(0, n - 1))
        c[i] += np.uint64(draw(st.integers(1, 10**9)))
        c[j] += np.uint64(draw(st.integers(1, 10**3)))
    elif kind == "heavy_tail":
        c[:] = np.floor(1e8 / (1.0 + np.arange(n)) ** rng.uniform(1.0, 3.0))
        c = c[::-1].copy() if draw(st.booleans()) else c
    elif kind == "noisy":
        c[:] = rng.integers(0, 4, n)
    else:
        c[:] = rng.integers(1, 2**50, n, dtype=np.uint64)
    if not c.any():
        c[n // 2] = 1
    lo = float(np.float32(draw(st.floats(-1e3, 1e3))))
    span = draw(st.sampled_from([0.0, 1e-9, 1e-4, 1.0, 37.5, 1e4]))
    return Histogram(c, lo, float(np.float32(lo + span)))


@settings(max_examples=150, deadline=None)
@given(h=histograms(), bits=st.sampled_from([2, 4, 8]), refine=st.booleans())
def test_prefix_sum_search_is_the_direct_search(h, bits, refine):
    """The O(2^bits)-per-candidate search chooses what the O(nbins) direct search chooses: the same candidate,
    the same refined bounds, the same loss (the direct sum of the winner)."""
    s = N.hfmg_search(h, bits, False, refine)
    assert (s.index, s.left, s.right, s.loss, s.refined) == _hfmg_search_direct(h, bits, refine)
    t = R.hfmg_search(h, bits, False, refine)
    assert (t.index, t.left, t.right, t.loss, t.refined) == (s.index, s.left, s.right, s.loss, s.refined)
    direct = direct_losses(h.counts, (h.hi - h.lo) / h.nbins, *N.hfmg_candidates(h), 1 << bits)
    fast = N.hfmg_losses(h, bits)
    np.testing.assert_allclose(fast, direct, rtol=1e-12, atol=0)


def test_prefix_sum_search_on_large_histograms():
    """4096-bin histograms of four shapes (hundreds to thousands of candidates): the direct search's results."""
    rng = np.random.default_rng(0)
    x = {
        "gauss": rng.standard_normal(400_000),
        "laplace": rng.laplace(size=400_000),
        "uniform": rng.uniform(-1, 1, 400_000),
        "relu_t": np.maximum(rng.standard_t(3, 400_000), 0),
    }
    for name, data in x.items():
        h = N.histogram_observe(None, data.astype(np.float32), 4096)
        for refine in (False, True):
            s = N.hfmg_search(h, 8, False, refine)
            assert (s.index, s.left, s.right, s.loss, s.refined) == _hfmg_search_direct(h, 8, refine), name
