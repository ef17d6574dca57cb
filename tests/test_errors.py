"""Bad input gets a clear error, never a crash, and never a PanicException."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import ferroquant as fq
from ferroquant import errors, ops
from tests.strategies import f32s


def test_nan_in_weight_names_the_problem_and_tensor():
    w = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    w[2, 1, 0, 0] = np.nan
    with pytest.raises(errors.NonFiniteError, match=r"conv1\.weight.*non-finite.*NaN.*index 63") as ei:
        fq.arq(w, name="conv1.weight")
    assert isinstance(ei.value, ValueError)
    w[2, 1, 0, 0] = np.inf
    with pytest.raises(errors.NonFiniteError, match="(?i)inf"):
        ops.quantize(w, 0.1, 0)


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: fq.arq(np.zeros((0, 3), np.float32)), errors.EmptyInputError, "empty"),
        (lambda: ops.quantize(np.array([], np.float32), 1.0), errors.EmptyInputError, "empty"),
        (lambda: fq.arq(np.ones((2, 2), np.float32), bits=1), errors.BitsError, r"bits must be in \[2, 16\], got 1"),
        (lambda: fq.arq(np.ones((2, 2), np.float32), bits=17), errors.BitsError, "got 17"),
        (lambda: fq.arq(np.ones((2, 2), np.float32), axis=2), errors.AxisError, "axis 2 is out of range"),
        (lambda: fq.arq(np.ones(4, np.int32)), errors.DTypeError, "int32"),
        (lambda: ops.quantize(np.ones(4, np.complex64), 1.0), errors.DTypeError, "complex64"),
        (lambda: ops.quantize(np.ones((3, 4), np.float32), [1.0, 2.0], 0, axis=0), errors.ShapeError, "expected 3"),
        (lambda: ops.quantize(np.ones(4, np.float32), 0.0), errors.ScaleError, "scale"),
        (lambda: ops.quantize(np.ones(4, np.float32), np.nan), errors.ScaleError, "scale"),
        (lambda: ops.quantize(np.ones(4, np.float32), 1.0, 200), errors.ZeroPointError, "zero point 200"),
        (lambda: ops.quantize(np.ones(4, np.float32), 1.0, 0.5), errors.DTypeError, "integers"),
        (lambda: ops.dequantize(np.ones(4, np.float32), 1.0), errors.DTypeError, "int8"),
        (lambda: fq.arq(np.array([-3e38, 3e38], np.float32), channel_wise=False, symmetric=False), errors.ScaleError, "not finite"),
        (lambda: fq.arq(np.array([1e10], np.float32)), errors.ScaleError, "too large"),
        (lambda: fq.arq(np.ones((4, 2), np.float32), axis=0, groups=3), errors.ParameterError, "output-channel axis"),
        (lambda: fq.arq(np.ones((4, 2), np.float32), axis=1, groups=3), errors.ShapeError, "not divisible"),
        (lambda: ops.compare(np.ones(4, np.float32), np.ones(5, np.float32)), errors.ShapeError, "expected 4, got 5"),
        (lambda: ops.compare(np.ones(3, np.float32), np.array([1, np.nan, 1], np.float32), name="fc.out"),
         errors.NonFiniteError, r"'fc\.out'.*index 1"),
        (lambda: ops.compare(np.ones(0, np.float32), np.ones(0, np.float32)), errors.EmptyInputError, "empty"),
    ],
)
def test_clear_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_errors_are_builtin_subclasses():
    assert issubclass(errors.NonFiniteError, ValueError)
    assert issubclass(errors.DTypeError, TypeError)
    assert issubclass(errors.AxisError, IndexError)
    assert all(issubclass(getattr(errors, n), errors.QuantError) for n in errors.__all__)


def test_dtypes_accepted_and_non_contiguous():
    x = np.linspace(-2, 2, 60).reshape(6, 10)
    want = fq.arq(x.astype(np.float32)).codes
    for dt in (np.float16, np.float64):
        np.testing.assert_array_equal(fq.arq(x.astype(dt).astype(np.float32)).codes, fq.arq(x.astype(np.float32)).codes)
        assert fq.arq(x.astype(dt)).codes.dtype == np.int8
    xt = np.asfortranarray(x.astype(np.float32))
    np.testing.assert_array_equal(fq.arq(xt).codes, want)
    np.testing.assert_array_equal(fq.arq(x.astype(np.float32)[:, ::1]).codes, want)
    strided = np.zeros((6, 20), np.float32)
    strided[:, ::2] = x
    np.testing.assert_array_equal(fq.arq(strided[:, ::2]).codes, want)


def test_contiguous_float32_is_not_copied():
    from ferroquant._arrays import as_f32

    x = np.ones((4, 4), np.float32)
    assert as_f32(x) is x


NATIVE_CALLS = st.sampled_from(["quantize", "fake_quant", "dequantize", "arq", "nuq", "min_max", "qp", "compare"])


@given(
    which=NATIVE_CALLS,
    n=st.integers(0, 6),
    bits=st.integers(-3, 40),
    axis=st.integers(-5, 5) | st.none(),
    scale=f32s(allow_nan=True, allow_infinity=True),
    zp=st.integers(-(2**31), 2**31 - 1),
    steps=st.integers(-5, 300),
    iters=st.integers(-2, 10),
    val=f32s(allow_nan=True, allow_infinity=True),
)
def test_no_panic_reaches_python(which, n, bits, axis, scale, zp, steps, iters, val):
    """Random (often invalid) arguments straight into the native module: errors, never panics."""
    from ferroquant import _native

    x = np.full((n, 3), val, np.float32)
    s = np.full(3 if axis is not None else 1, scale, np.float32)
    z = np.full(s.shape, zp, np.int32)
    calls = {
        "quantize": lambda: _native.quantize(x, s, z, bits, axis),
        "fake_quant": lambda: _native.fake_quant(x, s, z, bits, axis),
        "dequantize": lambda: _native.dequantize(np.nan_to_num(np.clip(x, -1e9, 1e9)).astype(np.int32), s, z, bits, axis),
        "arq": lambda: _native.arq(x, axis, bits, True),
        "nuq": lambda: _native.nuq(x, axis, steps, iters),
        "min_max": lambda: _native.min_max(x, axis),
        "qp": lambda: _native.qparams_from_range(val, scale, bits, zp % 2 == 0),
        "compare": lambda: _native.compare(x, np.full((n, 3 if zp % 2 else 2), scale, np.float32)),
    }
    try:
        calls[which]()
    except (errors.QuantError, OverflowError, TypeError) as e:
        assert not type(e).__name__.startswith("Panic"), repr(e)
    except BaseException as e:  # pragma: no cover - a PanicException derives from BaseException
        pytest.fail(f"{which} raised {type(e).__name__}: {e}")
