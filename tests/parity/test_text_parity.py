"""Native float-list text against the twin (Python's own repr), on every kind of double."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferroquant import _native as N
from ferroquant import ops
from ferroquant import reference as R
from ferroquant.errors import DTypeError, NonFiniteError, ShapeError

finite = st.floats(allow_nan=False, allow_infinity=False)
float32s = st.floats(allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=300, deadline=None)
@given(xs=st.lists(st.one_of(finite, float32s), max_size=40))
def test_json_floats_is_what_json_writes(xs):
    a = np.array(xs, np.float64)
    text = N.json_floats(a)
    assert text == R.json_floats(a) == json.dumps([float(v) for v in xs])
    assert np.array_equal(np.array(json.loads(text), np.float64).view(np.int64), a.view(np.int64))  # -0.0 too


def test_halfway_values_take_the_even_last_digit():
    """A double exactly halfway between its two shortest round-trip decimals (2^46 + 0.125 lies between
    ...664.12 and ...664.13): Python's repr takes the even last digit, as json.dumps writes it. Rust's shortest
    formatting took the one above (found by hypothesis; 2264 of 48,000 doubles between 2^40 and 2^56 with
    eighths)."""
    rng = np.random.default_rng(0)
    xs = [70368744177664.12, 70368744246530.62, 2.0**46 + 0.375, -(2.0**47 + 0.25), 2.0**52 + 0.5]
    xs += [float(2.0**e + k / 8) for e in range(40, 56) for k in rng.integers(0, 2**20, 60)]
    a = np.array(xs)
    assert N.json_floats(a) == R.json_floats(a) == json.dumps(xs)


def test_edges_and_errors():
    edges = [0.0, -0.0, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 1e-4, 9.999999999999999e-05,
             1e-5, 1e15, 9999999999999998.0, 1e16, 0.1, 1 / 3, 123456789.125, float(np.float32(0.1))]
    a = np.array(edges)
    assert ops.json_floats(a) == json.dumps(edges)
    assert ops.json_floats(np.zeros((2, 3))) == json.dumps([0.0] * 6)
    assert ops.json_floats([]) == "[]"
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(NonFiniteError):
            ops.json_floats([1.0, bad])
        with pytest.raises(NonFiniteError):
            R.json_floats([1.0, bad])


@pytest.mark.parametrize("bad, error", [(np.array([1 + 2j]), DTypeError), (np.array(["1.5"]), DTypeError),
                                        (np.array([object()]), DTypeError), ([[1.0], [2.0, 3.0]], ShapeError)])
def test_values_that_are_not_real_numbers_raise(bad, error):
    """A complex value would lose its imaginary part, a string would be parsed: both kernels refuse them."""
    for kernel in (ops.json_floats, R.json_floats):
        with pytest.raises(error):
            kernel(bad)
    assert ops.json_floats([True, 2, 3]) == R.json_floats([True, 2, 3]) == "[1.0, 2.0, 3.0]"  # numbers, as floats
