"""Output-aware clip search's kernel (rust/ferroquant-core/src/output_clip.rs) against its NumPy twin, and what it
promises on its own terms. The fake-quantized patches are the same bits on both sides (the affine twin's grid);
the float64 products are summed in different orders, so the errors agree within a relative 1e-9."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

from ferroquant import ops, reference
from ferroquant.errors import EmptyInputError, NonFiniteError, ParameterError, ScaleError, ShapeError, ZeroPointError


def _case(seed, n, groups, p, per):
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((n, groups, p)) * rng.uniform(0.1, 3), -0.5).astype(np.float32)
    w = rng.standard_normal((groups * per, p)).astype(np.float32)
    return x, w


def _grids(x, ratios, bits, symmetric):
    lo, hi = float(min(x.min(), 0)), float(max(x.max(), 0))
    ps = [ops.qparams_from_range(lo * r, hi * r, bits, symmetric) for r in ratios]
    return np.array([q.scale for q in ps], np.float32), np.array([q.zero_point for q in ps], np.int32)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 40), groups=st.integers(1, 4), p=st.integers(1, 12),
       per=st.integers(1, 5), bits=st.sampled_from([4, 8, 16]), symmetric=st.booleans(), weighted=st.booleans())
def test_output_clip_errors_parity(seed, n, groups, p, per, bits, symmetric, weighted):
    x, w = _case(seed, n, groups, p, per)
    s, z = _grids(x, [0.3, 0.7, 1.0, 1.3], bits, symmetric)
    om = np.random.default_rng(seed).uniform(0.5, 20, n) if weighted else None
    got = ops.output_clip_errors(x, w, s, z, bits, om)
    want = reference.output_clip_errors(x, w, s, z, bits, om)
    assert got.dtype == np.float64 and got.shape == (4,)
    assert_allclose(got, want, rtol=1e-9, atol=1e-300)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), p=st.integers(2, 10), per=st.integers(1, 6))
def test_a_wider_grid_that_holds_every_value_costs_no_more_than_rounding(seed, p, per):
    """The error is what the fake-quantization error does through the weight: zero when the tensor is on the
    grid, and the output of a layer whose weight is zero never changes."""
    x, w = _case(seed, 16, 1, p, per)
    step = np.float32(0.25)
    on_grid = (np.rint(x / step) * step).astype(np.float32)
    assert ops.output_clip_errors(on_grid, w, [step], [0], 16)[0] == 0.0
    assert ops.output_clip_errors(x, np.zeros_like(w), [0.01], [0], 8)[0] == 0.0


def test_bad_input_names_the_problem():
    x, w = _case(0, 8, 2, 3, 2)
    with pytest.raises(ShapeError, match="patches"):
        ops.output_clip_errors(x.reshape(8, 6), w, [0.1], [0])
    with pytest.raises(ShapeError):
        ops.output_clip_errors(x, w[:, :2], [0.1], [0])
    with pytest.raises(EmptyInputError):
        ops.output_clip_errors(x, w, np.zeros(0, np.float32), np.zeros(0, np.int32))
    with pytest.raises(ScaleError):
        ops.output_clip_errors(x, w, [0.0], [0])
    with pytest.raises(ZeroPointError):
        ops.output_clip_errors(x, w, [0.1], [200])
    bad = x.copy()
    bad[1, 0, 2] = np.inf
    with pytest.raises(NonFiniteError, match="tensor 'act'.*index 8"):
        ops.output_clip_errors(bad, w, [0.1], [0], name="act")
    for f in (ops.output_clip_errors, reference.output_clip_errors):
        with pytest.raises(ShapeError):
            f(x, w[:3], [0.1], [0])  # 3 output channels for 2 groups
        with pytest.raises(ShapeError):
            f(x, w, [0.1], [0], 8, np.ones(3))
        with pytest.raises(ParameterError, match="weights"):
            f(x, w, [0.1], [0], 8, np.zeros(8))
        with pytest.raises(ParameterError, match="weights"):
            f(x, w, [0.1], [0], 8, np.r_[np.ones(7), np.nan])


def test_integer_weights_count_rows_as_repeats():
    x, w = _case(4, 10, 2, 3, 2)
    om = np.arange(1, 11)
    repeated = np.repeat(x, om, axis=0)
    assert_allclose(ops.output_clip_errors(x, w, [0.05, 0.1], [0, 3], 8, om),
                    ops.output_clip_errors(repeated, w, [0.05, 0.1], [0, 3], 8), rtol=1e-12)
