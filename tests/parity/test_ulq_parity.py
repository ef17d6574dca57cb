"""Native == reference for the QAT kernels: ULQ forward/backward and the LSQ scale backward (spec §5)."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from ferroquant import _native, reference
from ferroquant.errors import QuantError
from tests.strategies import both, float_arrays, f32s



def _sum_tol(g, bits):
    """f64 sums of the same f32 terms in different orders: a few ulps of the sum of magnitudes."""
    return 1e-9 * (np.abs(g).astype(np.float64).sum() * (1 + 2.0 ** bits) + 1.0)


@given(x=float_arrays(), lo=f32s(-1e3, 0.0), hi=f32s(0.0, 1e3), bits=st.sampled_from([4, 8, 16]),
       sym=st.booleans())
def test_ulq_fake_quant_parity(x, lo, hi, bits, sym):
    got, want = both(lambda: _native.ulq_fake_quant(x, lo, hi, bits, sym),
                      lambda: reference.ulq_fake_quant(x, lo, hi, bits, sym))
    if got is not None:
        assert (np.float32(got.scale), got.zero_point) == (np.float32(want.scale), want.zero_point)
        assert_array_equal(got.fake, want.fake)


@given(x=float_arrays(), lo=f32s(-1e3, 0.0), hi=f32s(0.0, 1e3), bits=st.sampled_from([4, 8]),
       sym=st.booleans(), seed=st.integers(0, 2**16))
def test_ulq_backward_parity(x, lo, hi, bits, sym, seed):
    g = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
    got, want = both(lambda: _native.ulq_backward(x, g, lo, hi, bits, sym),
                      lambda: reference.ulq_backward(x, g, lo, hi, bits, sym))
    if got is not None:
        assert_array_equal(got.grad_x, want.grad_x)
        assert abs(got.grad_clip_max - want.grad_clip_max) <= _sum_tol(g, 0)
        assert abs(got.grad_clip_min - want.grad_clip_min) <= _sum_tol(g, 0)


@given(w=float_arrays(min_dims=2), bits=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16),
       per_channel=st.booleans())
def test_lsq_backward_parity(w, bits, seed, per_channel):
    rng = np.random.default_rng(seed)
    g = rng.standard_normal(w.shape).astype(np.float32)
    axis = 0 if per_channel else None
    c = w.shape[0] if per_channel else 1
    s = (np.abs(rng.standard_normal(c)) * 0.1 + 1e-3).astype(np.float32)
    got, want = both(lambda: _native.lsq_backward(w, g, s, bits, axis),
                      lambda: reference.lsq_backward(w, g, s, bits, axis))
    if got is not None:
        assert_allclose(got, want, rtol=1e-5, atol=1e-6 * (np.abs(g).sum() * 2**bits / np.sqrt(w.size) + 1))


def test_ulq_backward_large_is_thread_independent():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000).astype(np.float32)
    g = rng.standard_normal(200_000).astype(np.float32)
    from ferroquant import ops
    n = ops.get_num_threads()
    try:
        ops.set_num_threads(1)
        a = _native.ulq_backward(x, g, -1.0, 1.5, 8, False)
        ops.set_num_threads(2)
        b = _native.ulq_backward(x, g, -1.0, 1.5, 8, False)
    finally:
        ops.set_num_threads(n)
    assert_array_equal(a.grad_x, b.grad_x)
    assert (a.grad_clip_max, a.grad_clip_min) == (b.grad_clip_max, b.grad_clip_min)
    ref = reference.ulq_backward(x, g, -1.0, 1.5, 8, False)
    assert abs(a.grad_clip_max - ref.grad_clip_max) < 1e-6 and abs(a.grad_clip_min - ref.grad_clip_min) < 1e-6
