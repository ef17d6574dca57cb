"""Native == reference for qparams, quantize, dequantize and fake-quant."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from ferroquant import ops, reference
from ferroquant.errors import QuantError
from tests.strategies import both, array_and_axis, f32s

BITS = st.integers(2, 16)



@given(lo=f32s(-1e6, 1e6), hi=f32s(-1e6, 1e6), bits=BITS, sym=st.booleans())
def test_qparams_from_range_parity(lo, hi, bits, sym):
    got, want = both(lambda: ops.qparams_from_range(lo, hi, bits, sym), lambda: reference.qparams_from_range(lo, hi, bits, sym))
    if got is not None:
        assert got.scale == want.scale and got.zero_point == want.zero_point


@given(xa=array_and_axis(), bits=BITS, sym=st.booleans())
def test_qparams_from_data_parity(xa, bits, sym):
    x, axis = xa
    got, want = both(lambda: ops.qparams_from_data(x, axis, bits, sym), lambda: reference.qparams_from_data(x, axis, bits, sym))
    if got is not None:
        assert_array_equal(got[0], want[0])
        assert_array_equal(got[1], want[1])


@given(xa=array_and_axis(), bits=BITS, sym=st.booleans())
def test_quantize_fake_quant_dequantize_parity(xa, bits, sym):
    x, axis = xa
    got = both(lambda: ops.qparams_from_data(x, axis, bits, sym), lambda: reference.qparams_from_data(x, axis, bits, sym))[0]
    if got is None:
        return
    s, z = got
    q = ops.quantize(x, s, z, bits, axis)
    assert q.dtype == (np.int8 if bits <= 8 else np.int16)
    assert_array_equal(q, reference.quantize(x, s, z, bits, axis))
    assert_array_equal(ops.fake_quant(x, s, z, bits, axis), reference.fake_quant(x, s, z, bits, axis))
    assert_array_equal(ops.dequantize(q, s, z, bits, axis), reference.dequantize(q, s, z, bits, axis))
    # fake-quant is exactly dequantize(quantize(x))
    assert_array_equal(ops.fake_quant(x, s, z, bits, axis), ops.dequantize(q, s, z, bits, axis))


@given(scale=f32s(1e-6, 1e3), zp=st.integers(-128, 127),
       x=st.lists(f32s(-1e7, 1e7), min_size=1, max_size=50))
def test_arbitrary_scale_parity(scale, zp, x):
    x = np.array(x, np.float32)
    assert_array_equal(ops.quantize(x, scale, zp), reference.quantize(x, scale, zp))
    assert_array_equal(ops.fake_quant(x, scale, zp), reference.fake_quant(x, scale, zp))


def test_round_half_to_even_ties():
    x = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5], np.float32)
    want = np.array([0, 2, 2, 4, 0, -2, -2, -4], np.int8)
    assert_array_equal(ops.quantize(x, 1.0, 0), want)
    assert_array_equal(reference.quantize(x, 1.0, 0), want)
    # with a zero point the tie is decided before the offset is added
    assert_array_equal(ops.quantize(x, 1.0, 3), want + 3)


def test_symmetric_127_128_rule():
    assert ops.qparams_from_range(-1.0, 2.54).scale == np.float32(2.54) / np.float32(127)
    assert ops.qparams_from_range(-2.56, 1.0).scale == np.float32(2.56) / np.float32(128)
    p = ops.qparams_from_range(-2.56, 1.0)
    assert ops.quantize(np.float32([-2.56]), p.scale, 0)[0] == -128


def test_asymmetric_zero_exact():
    p = ops.qparams_from_range(-0.3, 5.1, symmetric=False)
    assert ops.fake_quant(np.float32([0.0]), p.scale, p.zero_point)[0] == 0.0


def test_large_tensor_parity_crosses_parallel_threshold():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((37, 4099)) * 3).astype(np.float32)
    s, z = ops.qparams_from_data(x, 0, 8, False)
    assert_array_equal(ops.quantize(x, s, z, 8, 0), reference.quantize(x, s, z, 8, 0))
    assert_array_equal(ops.fake_quant(x, s, z, 8, 0), reference.fake_quant(x, s, z, 8, 0))


@given(xa=array_and_axis(), noise=f32s(0, 10))
def test_compare_parity(xa, noise):
    x, _ = xa
    t = (x + np.float32(noise) * np.sign(x)).astype(np.float32)
    try:
        want = reference.compare(x, t)
    except QuantError as e:
        with pytest.raises(type(e)):
            ops.compare(x, t)
        return
    got = ops.compare(x, t)
    np.testing.assert_allclose([got.ref_sq, got.test_sq, got.dot, got.diff_sq],
                               [want.ref_sq, want.test_sq, want.dot, want.diff_sq], rtol=1e-12, atol=0)
    assert got.max_abs_diff == want.max_abs_diff and got.size == want.size
    c = ops.compare(x, x)
    assert c.sqnr_db == float("inf") and c.diff_sq == 0.0
