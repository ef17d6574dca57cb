"""Issue 13, items 6 and 11 (array kernels): values that used to wrap, truncate or be silently replaced now
raise an error that names the parameter, in the native path and in its NumPy twin alike."""

import numpy as np
import pytest

import ferroquant as fq
from ferroquant import ops, reference
from ferroquant.errors import AxisError, BitsError, ParameterError, ZeroPointError

X = np.linspace(-2, 2, 12, dtype=np.float32)


@pytest.mark.parametrize("k", [ops, reference], ids=["native", "reference"])
def test_zero_point_does_not_wrap(k):
    """2**32 + 5 used to be cast to int32 and behave as 5."""
    with pytest.raises(ZeroPointError, match=r"zero point 4294967301"):
        k.quantize(X, 0.1, 2**32 + 5)
    with pytest.raises(ZeroPointError, match="zero point"):
        k.fake_quant(X, 0.1, -(2**31) - 1)


@pytest.mark.parametrize("k", [ops, reference], ids=["native", "reference"])
def test_fractional_bits_are_refused(k):
    """bits=8.7 used to be truncated to 8."""
    for call in (lambda: k.quantize(X, 0.1, 0, bits=8.7), lambda: k.fake_quant(X, 0.1, 0, bits=8.0),
                 lambda: k.qparams_from_range(-1.0, 1.0, bits=8.7), lambda: k.arq(X.reshape(3, 4), bits=4.5)):
        with pytest.raises(BitsError, match=r"bits must be an integer"):
            call()


@pytest.mark.parametrize("k", [ops, reference], ids=["native", "reference"])
def test_inverted_range_is_refused(k):
    """qparams_from_range(5, -5) used to return scale 1.0 (the guard's value for an empty range)."""
    with pytest.raises(ParameterError, match=r"range: lo 5(\.0)? > hi -5(\.0)?"):
        k.qparams_from_range(5.0, -5.0, 8, False)
    assert k.qparams_from_range(-5.0, 5.0, 8, False).scale == pytest.approx(10 / 255)


@pytest.mark.parametrize("k", [ops, reference], ids=["native", "reference"])
def test_dequantize_refuses_codes_outside_the_bit_width(k):
    """Codes outside [qmin, qmax] used to be dequantized (to inf for a finite scale)."""
    with pytest.raises(ParameterError, match=r"q: code 100 at flat index 1 is outside \[-8, 7\] for 4 bits"):
        k.dequantize(np.array([1, 100], np.int8), 1.0, 0, bits=4)
    with pytest.raises(ParameterError, match=r"outside \[-32768, 32767\]"):
        k.dequantize(np.array([2**31 - 1], np.int32), np.float32(1e30), 0, bits=16)
    np.testing.assert_array_equal(k.dequantize(np.array([-8, 7], np.int8), 0.5, 0, bits=4), [-4.0, 3.5])


def test_zero_dim_input_with_an_axis():
    """A 0-d array with axis=0 used to be taken as 1-d on the native side (the twin raised): both raise."""
    x = np.array(3.0, np.float32)
    for k in (ops, reference):
        for call in (lambda: k.quantize(x, 1.0, 0, axis=0), lambda: k.fake_quant(x, 1.0, 0, axis=0),
                     lambda: k.min_max(x, 0), lambda: k.qparams_from_data(x, 0), lambda: k.arq(x)):
            with pytest.raises(AxisError, match="axis 0 is out of range for an array with 0 dimensions"):
                call()
        assert k.quantize(x, 1.0, 0).shape == ()  # per tensor, a 0-d array stays 0-d


@pytest.mark.parametrize("bits", [-1, 2**40])
def test_bits_out_of_any_range_name_the_parameter(bits):
    """bits=-1 / 2**40 used to surface as a bare OverflowError from the argument conversion."""
    for call in (lambda: fq.arq(X.reshape(3, 4), bits=bits), lambda: ops.quantize(X, 0.1, 0, bits=bits),
                 lambda: ops.qparams_from_range(-1, 1, bits), lambda: ops.IfmrOptions(bits=bits)):
        with pytest.raises(BitsError, match=rf"bits must be in \[2, 16\], got {bits}"):
            call()


def test_negative_iteration_count_names_the_parameter():
    """num_of_iteration=-1 used to surface as a bare OverflowError."""
    with pytest.raises(ParameterError, match=r"num_of_iteration must be in \[0, \d+\], got -1"):
        fq.nuq(X.reshape(3, 4), 16, -1)
    with pytest.raises(ParameterError, match="num_steps"):
        fq.nuq(X.reshape(3, 4), -5)
