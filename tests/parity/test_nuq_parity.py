"""NUQ: native == reference, and the quality claims of spec §2 on real and synthetic weights."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from ferroquant import ops, reference
from ferroquant.errors import NonFiniteError, ParameterError
from tests.strategies import float_arrays


def _check_parity(w, axis, steps, iters):
    want = reference.nuq(w, steps, iters, channel_wise=axis is not None, axis=axis if axis is not None else 0)
    lv, s, q, f, mse, it = want.levels, want.scale, want.codes, want.fake, want.mse, want.iteration
    r = ops.nuq(w, steps, iters, channel_wise=axis is not None, axis=axis if axis is not None else 0)
    assert_array_equal(r.levels, lv)
    assert_array_equal(r.scale, s)
    assert_array_equal(r.codes, q)
    assert_array_equal(r.fake, f)
    assert r.iteration == it
    assert r.mse == pytest.approx(mse, rel=1e-9, abs=1e-30)
    return r


@given(w=float_arrays(max_dims=3, max_side=12), steps=st.integers(2, 40), iters=st.integers(0, 3),
       per_channel=st.booleans())
def test_nuq_parity_hypothesis(w, steps, iters, per_channel):
    try:
        reference.nuq(w, steps, iters, channel_wise=per_channel)
    except Exception as e:  # the native side must reject it with the same class
        with pytest.raises(type(e)):
            ops.nuq(w, steps, iters, channel_wise=per_channel)
        return
    r = _check_parity(w, 0 if per_channel else None, steps, iters)
    assert len(np.unique(r.codes)) <= steps
    assert set(np.unique(r.codes)) <= set(r.levels.tolist())


@pytest.mark.parametrize("steps", [16, 32])
@pytest.mark.parametrize("axis", [None, 0])
def test_nuq_parity_gaussian_conv(steps, axis):
    w = np.random.default_rng(steps).standard_normal((32, 16, 3, 3)).astype(np.float32)
    _check_parity(w, axis, steps, 2)


def _weights():
    rng = np.random.default_rng(7)
    yield "gaussian", rng.standard_normal((256, 576)).astype(np.float32), 0
    yield "laplacian", rng.laplace(size=(256, 576)).astype(np.float32), 0


def _trained():
    from ferroquant.examples.pretrained import mobilenet_v2_state_dict

    sd = mobilenet_v2_state_dict()
    yield "mobilenet_v2.features.18.0.weight", sd["features.18.0.weight"], 0
    yield "mobilenet_v2.classifier.1.weight", sd["classifier.1.weight"], 0


def _all_weights():
    yield from _weights()
    try:
        yield from _trained()
    except Exception as e:  # the package is a test dependency; say so loudly when it is missing
        pytest.fail(f"pretrained weights unavailable: {e}")


@pytest.mark.parametrize("channel_wise", [True, False])
def test_nuq32_beats_uniform_5bit_and_16_steps(channel_wise):
    for name, w, axis in _all_weights():
        arq5 = ops.arq(w, channel_wise=channel_wise, axis=axis, bits=5)
        mse5 = float(np.mean((arq5.fake.astype(np.float64) - w) ** 2))
        n32 = ops.nuq(w, 32, 1, channel_wise=channel_wise, axis=axis)
        n16 = ops.nuq(w, 16, 1, channel_wise=channel_wise, axis=axis)
        mse32 = float(np.mean((n32.fake.astype(np.float64) - w) ** 2))
        mse16 = float(np.mean((n16.fake.astype(np.float64) - w) ** 2))
        assert mse32 == pytest.approx(n32.mse, rel=1e-6)
        assert mse32 < mse5, f"{name}: NUQ-32 {mse32:.3e} vs ARQ 5-bit {mse5:.3e}"
        assert mse32 <= mse16, f"{name}: NUQ-32 {mse32:.3e} vs NUQ-16 {mse16:.3e}"
        assert len(np.unique(n32.codes)) <= 32 and len(np.unique(n16.codes)) <= 16


def test_more_iterations_never_worse():
    w = np.random.default_rng(3).laplace(size=(64, 300)).astype(np.float32)
    mses = [ops.nuq(w, 16, it).mse for it in range(6)]
    assert all(b <= a for a, b in zip(mses, mses[1:]))


def test_zero_kept_and_few_codes_kept_as_is():
    w = np.random.default_rng(0).standard_normal(2000).astype(np.float32)
    w[::7] = 0.0
    r = ops.nuq(w, 8, 1, channel_wise=False)
    assert 0 in r.levels and np.all(r.fake[::7] == 0.0)
    few = np.array([0.0, 1.0, -1.0, 0.5], np.float32)
    r = ops.nuq(few, 16, 1, channel_wise=False)
    assert not r.complete and len(r.levels) == 4
    assert_array_equal(r.codes, ops.arq(few, channel_wise=False).codes)


def test_nuq_bad_input():
    w = np.ones((4, 4), np.float32)
    with pytest.raises(ParameterError, match="num_steps"):
        ops.nuq(w, 1)
    with pytest.raises(ParameterError, match="num_of_iteration"):
        ops.nuq(w, 16, 6)
    w[2, 1] = np.nan
    with pytest.raises(NonFiniteError, match="layer3.weight"):
        ops.nuq(w, 16, name="layer3.weight")
