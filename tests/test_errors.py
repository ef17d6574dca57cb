"""Bad input gets a clear error, never a crash, and never a PanicException."""

from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
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


def check_no_panic(call):
    """Run ``call``: a clear ferroquant error (or PyO3's OverflowError / TypeError for arguments that do not
    convert) is fine; an :class:`~ferroquant.errors.InternalError` (how a Rust panic reaches Python) or
    anything else fails the test."""
    try:
        call()
    except errors.InternalError as e:
        pytest.fail(f"a native kernel failed internally (a Rust panic): {e}")
    except (errors.QuantError, OverflowError, TypeError) as e:
        assert not type(e).__name__.startswith("Panic"), repr(e)
    except BaseException as e:  # pragma: no cover - a PanicException derives from BaseException
        pytest.fail(f"raised {type(e).__name__}: {e}")


def native_calls(n, bits, axis, scale, zp, steps, iters, val):
    """One call of every public native function, with the drawn (often invalid) arguments."""
    from types import SimpleNamespace

    from ferroquant import _native
    from ferroquant.ops import Histogram

    x = np.full((n, 3), val, np.float32)
    s = np.full(3 if axis is not None else 1, scale, np.float32)
    z = np.full(s.shape, zp, np.int32)
    nbins = [0, 1, 2, 3, 16, 256, 4096][steps % 7]
    counts = np.arange(nbins, dtype=np.uint64) * np.uint64(abs(zp) % 1000)
    h = Histogram(counts, val, scale)
    h2 = Histogram(counts[: nbins // 2], -1.0, float(zp % 7))
    opts = SimpleNamespace(bits=bits, symmetric=zp % 2 == 0, max_percentile=float(val), min_percentile=0.999,
                           search_start=float(scale), search_end=1.3, search_step=0.01 * (iters + 1),
                           search_extend=steps % 2 == 0, search_2d=zp % 3 == 0)
    g = np.full_like(x, scale)
    return {
        "quantize": lambda: _native.quantize(x, s, z, bits, axis),
        "fake_quant": lambda: _native.fake_quant(x, s, z, bits, axis),
        "dequantize": lambda: _native.dequantize(np.nan_to_num(np.clip(x, -1e9, 1e9)).astype(np.int32), s, z, bits, axis),
        "arq": lambda: _native.arq(x, axis, bits, True),
        "nuq": lambda: _native.nuq(x, axis, steps, iters),
        "min_max": lambda: _native.min_max(x, axis),
        "qparams_from_range": lambda: _native.qparams_from_range(val, scale, bits, zp % 2 == 0),
        "qparams_from_data": lambda: _native.qparams_from_data(x, axis, bits, zp % 2 == 0),
        "compare": lambda: _native.compare(x, np.full((n, 3 if zp % 2 else 2), scale, np.float32)),
        "json_floats": lambda: _native.json_floats(x.astype(np.float64)),
        "histogram_observe": lambda: _native.histogram_observe(h if zp % 2 else None, x, nbins or None, iters % 2 == 0),
        "histogram_observe_many": lambda: _native.histogram_observe_many([h, None, h2][: 1 + steps % 3],
                                                                         [x, x[:1]][: 1 + iters % 2], nbins, False),
        "histogram_merge": lambda: _native.histogram_merge(h, h2 if zp % 2 else h),
        "hfmg_candidates": lambda: _native.hfmg_candidates(h),
        "hfmg_losses": lambda: _native.hfmg_losses(h, bits),
        "hfmg_search": lambda: _native.hfmg_search(h, bits, zp % 2 == 0, iters % 2 == 0),
        "hfmg_search_many": lambda: _native.hfmg_search_many([h, h2][: 1 + steps % 2], bits, zp % 2 == 0),
        "percentile_clip": lambda: _native.percentile_clip(h, float(val), bits, zp % 2 == 0),
        "kl_divergences": lambda: _native.kl_divergences(h, steps),
        "kl_search": lambda: _native.kl_search(h, bits, zp % 2 == 0, steps),
        "ifmr": lambda: _native.ifmr(x.reshape(-1), opts, abs(zp) % 7),
        "ifmr_many": lambda: _native.ifmr_many([x.reshape(-1), x][: 1 + steps % 2], [opts] * (1 + iters % 2),
                                               [abs(zp) % 7, 0][: 1 + steps % 2]),
        "ifmr_store": lambda: _native.ifmr_store(np.zeros(max(0, steps), np.float32), max(0, iters), x),
        "ifmr_histogram": lambda: _native.ifmr_histogram(h, x if iters % 2 else None, opts),
        "ulq_fake_quant": lambda: _native.ulq_fake_quant(x, val, scale, bits, zp % 2 == 0),
        "ulq_backward": lambda: _native.ulq_backward(x, g if zp % 2 else g[:0], val, scale, bits, zp % 2 == 0),
        "lsq_backward": lambda: _native.lsq_backward(x, g, s, bits, axis),
        "adaround": lambda: _native.adaround(x, np.full(n, scale, np.float32), np.full(n, zp, np.int32),
                                             np.full((1 + steps % 3, 3, 3 if iters % 2 else 2), val), bits,
                                             SimpleNamespace(iterations=iters % 50, reg_weight=float(val),
                                                             beta_start=float(scale), beta_end=2.0,
                                                             warm_start=float(val) % 1.5, lr=float(scale))),
        "output_clip_errors": lambda: _native.output_clip_errors(
            x.reshape(n, 1 + steps % 2 if n else 1, -1) if n and 3 % (1 + steps % 2) == 0 else x.reshape(n, 1, 3),
            np.full((1 + iters % 3, 3), val, np.float32), np.full(1 + steps % 3, scale, np.float32),
            np.full(1 + steps % 3 if zp % 2 else steps % 3, zp, np.int32), bits,
            np.full(n if iters % 2 else n + 1, float(val))),
        **weight_only_calls(x, n, bits, scale, zp, steps, iters, val),
        "get_num_threads": lambda: _native.get_num_threads(),
        "set_num_threads": lambda: _native.set_num_threads(steps % 4),
    }


def weight_only_calls(x, n, bits, scale, zp, steps, iters, val):
    """The group-wise, GPTQ, AWQ, channel-statistics and SmoothQuant kernels with the same random arguments
    (``x`` is an ``[n, 3]`` weight or batch of rows; sizes that do not fit on purpose)."""
    from ferroquant import _native

    f32, k = np.float32, 3 if zp % 2 else 2
    gs, sym, f16 = steps % 9, zp % 2 == 0, iters % 2 == 0
    stats = lambda c: (np.full(c, np.inf, f32), np.full(c, -np.inf, f32), np.zeros(c))  # noqa: E731
    # raw values past GroupSpec's checks: the native side must refuse them itself
    spec = SimpleNamespace(bits=bits, group_size=gs, symmetric=sym, scale_f16=f16)
    clip = lambda grid: None if grid is None else SimpleNamespace(  # noqa: E731
        n_grid=grid, max_shrink=float(scale), refine=bool(zp % 2))
    return {
        "quantize_groupwise": lambda: _native.quantize_groupwise(x, spec, clip(None if steps % 3 else iters)),
        "dequantize_groupwise": lambda: _native.dequantize_groupwise(
            np.full((n, 3), abs(zp) % 256, np.uint8), np.full((iters % 3, 3), scale, f32),
            np.full((iters % 3, 3), 8, np.uint8), steps % 5),
        "hessian_update": lambda: _native.hessian_update(np.zeros((k, 3)), x),
        "gptq": lambda: _native.gptq(x, np.full((n, n), scale, np.float64) + np.eye(n) * float(val), spec,
                                     float(val), iters, zp % 3 == 0),
        "awq": lambda: _native.awq(x, np.full((4, n if zp % 2 else n + 1), val, f32), spec, iters,
                                   clip(None if steps % 2 else steps % 25)),
        "channel_stats_update": lambda: _native.channel_stats_update((*stats(3)[:2], stats(k)[2]), x),
        "channel_stats_merge": lambda: _native.channel_stats_merge(stats(3), stats(k)),
        "smooth_search": lambda: _native.smooth_search(np.full(3, scale, f32), np.full((k, 2), val, f32), x,
                                                       [float(val), 0.5][: 1 + iters % 2], bits),
    }


def test_no_panic_covers_every_native_function():
    from ferroquant import _native

    public = {k for k in dir(_native) if not k.startswith("_") and callable(getattr(_native, k))
              and not isinstance(getattr(_native, k), type)}  # classes are result types
    assert set(native_calls(1, 8, None, 1.0, 0, 1, 1, 1.0)) == public


NATIVE_CALLS = st.sampled_from(sorted(native_calls(1, 8, None, 1.0, 0, 1, 1, 1.0)))


@settings(max_examples=400, deadline=None)
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
    """Random (often invalid) arguments straight into every native function: errors, never panics."""
    from ferroquant import _native

    try:
        check_no_panic(native_calls(n, bits, axis, scale, zp, steps, iters, val)[which])
    finally:
        _native.set_num_threads(0)
