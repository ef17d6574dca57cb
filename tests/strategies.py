"""Hypothesis strategies shared by the parity tests."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

SPECIALS = st.sampled_from(["random", "zeros", "constant", "negative", "denormal", "huge", "ties"])


@st.composite
def float_arrays(draw, max_dims: int = 4, max_side: int = 9, min_dims: int = 1):
    """float32 arrays with the value ranges that break quantizers: all-zero, constant, negative-only, denormal,
    huge, exact ties."""
    shape = draw(array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=1, max_side=max_side))
    kind = draw(SPECIALS)
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "constant":
        return np.full(shape, draw(f32s(-1e3, 1e3)), np.float32)
    if kind == "ties":
        # multiples of half a step: every element is a tie at scale 0.5
        return (draw(arrays(np.int32, shape, elements=st.integers(-300, 300))) * 0.25).astype(np.float32)
    bound = {"random": 1e4, "negative": 50.0, "denormal": 1e-38, "huge": 3e6}[kind]
    b = float(np.float32(bound))
    x = draw(arrays(np.float32, shape, elements=st.floats(-b, b, width=32)))
    if kind == "negative":
        x = -np.abs(x)
    return x


@st.composite
def array_and_axis(draw, **kw):
    x = draw(float_arrays(**kw))
    axis = draw(st.one_of(st.none(), st.integers(-x.ndim, x.ndim - 1)))
    return x, axis


def f32s(lo=None, hi=None, **kw):
    """Floats representable in float32 between the float32 roundings of ``lo`` and ``hi``."""
    kw.setdefault("width", 32)
    lo = None if lo is None else float(np.float32(lo))
    hi = None if hi is None else float(np.float32(hi))
    return st.floats(lo, hi, **kw)


def both(fn_native, fn_ref):
    """Run the reference, then the native side: they must succeed together (returns both results) or fail with
    the same ferroquant error class (returns ``(None, None)``)."""
    from ferroquant.errors import QuantError

    try:
        want = fn_ref()
    except QuantError as e:
        with pytest.raises(type(e)):
            fn_native()
        return None, None
    return fn_native(), want
