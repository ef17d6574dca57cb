"""QAT autograd functions: gradients equal the spec §5 formulas (native == NumPy twin == torch path), are
sane under finite differences where the STE is exact, and the ULQ/LSQ validity rules hold."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from numpy.testing import assert_allclose, assert_array_equal  # noqa: E402

from ferroquant import ops, reference  # noqa: E402
from ferroquant.torch import functions as fqf  # noqa: E402
from ferroquant.torch.modules import ActivationULQ, LsqWeight  # noqa: E402


@pytest.fixture
def torch_path():
    fqf.FORCE_TORCH = True
    yield
    fqf.FORCE_TORCH = False


def _ulq_grads(x, g, lo, hi, bits, sym):
    xt = torch.tensor(x, requires_grad=True)
    cmin, cmax = torch.tensor(lo, requires_grad=True), torch.tensor(hi, requires_grad=True)
    y = fqf.ulq(xt, cmin, cmax, bits, sym)
    y.backward(torch.from_numpy(g))
    return y.detach().numpy(), xt.grad.numpy(), float(cmax.grad), float(cmin.grad)


@settings(max_examples=30)
@given(n=st.integers(1, 300), lo=st.floats(-5, -0.01), hi=st.floats(0.01, 5), bits=st.sampled_from([4, 8]),
       sym=st.booleans(), seed=st.integers(0, 2**16))
def test_ulq_grads_equal_spec_formulas(n, lo, hi, bits, sym, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 3).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    y, gx, gmax, gmin = _ulq_grads(x, g, lo, hi, bits, sym)
    ry = reference.ulq_fake_quant(x, lo, hi, bits, sym).fake
    rb = reference.ulq_backward(x, g, lo, hi, bits, sym)
    rgx, rgmax, rgmin = rb.grad_x, rb.grad_clip_max, rb.grad_clip_min
    assert_array_equal(y, ry)
    assert_array_equal(gx, rgx)
    assert gmax == pytest.approx(np.float32(rgmax), rel=1e-6, abs=1e-5)
    assert gmin == pytest.approx(np.float32(rgmin), rel=1e-6, abs=1e-5)
    fqf.FORCE_TORCH = True
    try:
        ty, tgx, tgmax, tgmin = _ulq_grads(x, g, lo, hi, bits, sym)
    finally:
        fqf.FORCE_TORCH = False
    assert_array_equal(ty, y)
    assert_array_equal(tgx, gx)
    assert tgmax == pytest.approx(gmax, rel=1e-6, abs=1e-5) and tgmin == pytest.approx(gmin, rel=1e-6, abs=1e-5)


def _lsq_grads(w, g, s, bits, axis):
    wt, st_ = torch.tensor(w, requires_grad=True), torch.tensor(s, requires_grad=True)
    y = fqf.lsq(wt, st_, bits, axis)
    y.backward(torch.from_numpy(g))
    return y.detach().numpy(), wt.grad.numpy(), st_.grad.numpy()


@settings(max_examples=30)
@given(c=st.integers(1, 6), k=st.integers(1, 20), bits=st.sampled_from([2, 4, 8]), seed=st.integers(0, 2**16),
       per_channel=st.booleans())
def test_lsq_grads_equal_spec_formulas(c, k, bits, seed, per_channel):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c, k)).astype(np.float32)
    g = rng.standard_normal((c, k)).astype(np.float32)
    axis = 0 if per_channel else None
    s = (np.abs(rng.standard_normal(c if per_channel else 1)) * 0.2 + 0.01).astype(np.float32)
    y, gw, gs = _lsq_grads(w, g, s, bits, axis)
    assert_array_equal(y, reference.fake_quant(w, s if per_channel else s[0], 0, bits, axis))
    assert_array_equal(gw, g)  # straight through, no mask
    assert_allclose(gs, reference.lsq_backward(w, g, s, bits, axis), rtol=1e-5, atol=1e-6)
    fqf.FORCE_TORCH = True
    try:
        ty, tgw, tgs = _lsq_grads(w, g, s, bits, axis)
    finally:
        fqf.FORCE_TORCH = False
    assert_array_equal(ty, y)
    assert_allclose(tgs, gs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("force", [False, True])
def test_arq_retrain_is_arq_with_identity_grad(force):
    fqf.FORCE_TORCH = force
    try:
        w = torch.randn(5, 3, 3, 3, requires_grad=True)
        y = fqf.arq_retrain(w, 4, 0)
        y.backward(torch.ones_like(y))
    finally:
        fqf.FORCE_TORCH = False
    assert_array_equal(y.detach().numpy(), ops.arq(w.detach().numpy(), bits=4).fake)
    assert torch.equal(w.grad, torch.ones_like(w))


def test_ulq_finite_differences_where_the_ste_is_exact():
    """With clip_min = 0 the grid top is exactly clip_max (o = qmin), so for saturated inputs the true
    derivative of sum(y) w.r.t. clip_max is the number of saturated elements, and e = 0 there."""
    x = np.array([5.0, 7.0, 9.0, 0.31, 0.62], np.float32)
    g = np.ones(5, np.float32)
    hi, h = 2.0, 1e-3
    _, gx, gmax, _ = _ulq_grads(x, g, 0.0, hi, 8, False)
    f = lambda c: float(reference.ulq_fake_quant(x[:3], 0.0, c, 8, False).fake.astype(np.float64).sum())  # noqa: E731
    fd = (f(hi + h) - f(hi - h)) / (2 * h)
    assert fd == pytest.approx(3.0, rel=1e-3)
    _, _, gsat, _ = _ulq_grads(x[:3], g[:3], 0.0, hi, 8, False)
    assert gsat == pytest.approx(fd, rel=1e-3)
    assert_array_equal(gx, [0, 0, 0, 1, 1])


def test_lsq_finite_differences_on_saturated_weights():
    """Saturated weights sit at s·qmax or s·qmin: d sum(ŵ)/ds = Σ(qmax | qmin) exactly, which is LSQ's
    gradient before the scale g = 1/sqrt(N·qmax)."""
    w = np.array([[10.0, -10.0, 12.0, 11.0]], np.float32)
    s, bits, h = np.array([0.5], np.float32), 4, 1e-3
    _, _, gs = _lsq_grads(w, np.ones_like(w), s, bits, 0)
    f = lambda v: float(reference.fake_quant(w, v, 0, bits, 0).astype(np.float64).sum())  # noqa: E731
    fd = (f(np.array([0.5 + h], np.float32)) - f(np.array([0.5 - h], np.float32))) / (2 * h)
    assert fd == pytest.approx(7 - 8 + 7 + 7, rel=1e-3)
    assert gs[0] * np.sqrt(4 * 7) == pytest.approx(fd, rel=1e-5)


def test_gradcheck_smoothed_ulq_clamp():
    """Smoothed case (float64, no rounding): y = clamp(x, lo, hi) has d/dhi = Σ g·up and d/dlo = Σ g·lo, the
    e-free part of the ULQ formula; torch.autograd.gradcheck confirms those terms numerically."""
    x = torch.tensor([-3.0, -0.5, 0.2, 0.7, 4.0], dtype=torch.float64)

    class SmoothULQ(torch.autograd.Function):
        @staticmethod
        def forward(ctx, lo, hi):
            ctx.save_for_backward(lo, hi)
            return torch.minimum(torch.maximum(x, lo), hi)

        @staticmethod
        def backward(ctx, g):
            lo, hi = ctx.saved_tensors
            return (g * (x < lo)).sum(), (g * (x > hi)).sum()

    lo = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)
    hi = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(SmoothULQ.apply, (lo, hi))


def test_ulq_reverts_invalid_clips():
    a = ActivationULQ("t", 8, clip_max=2.0, clip_min=-1.0, sync=False).train()
    x = torch.linspace(-2, 3, 50)
    with torch.no_grad():
        a.clip_max.fill_(-0.5)  # clip_max < 0: reverted alone
    a(x)
    assert (a.clip_max.item(), a.clip_min.item()) == (2.0, -1.0)
    with torch.no_grad():
        a.clip_min.fill_(0.25)  # clip_min > 0: reverted alone
        a.clip_max.fill_(2.5)
    a(x)
    assert (a.clip_max.item(), a.clip_min.item()) == (2.5, -1.0)
    with torch.no_grad():
        a.clip_max.fill_(0.1)
        a.clip_min.fill_(0.1)  # width <= eps: both reverted
    a(x)
    assert (a.clip_max.item(), a.clip_min.item()) == (2.5, -1.0)
    with torch.no_grad():
        a.clip_max.fill_(float("nan"))
    y = a(x)
    assert torch.isfinite(y).all() and a.clip_max.item() == 2.5


def test_ulq_fixed_min_and_ifmr_init():
    torch.manual_seed(0)
    a = ActivationULQ("t", 8, fixed_min=True, batch_num=2, sync=False).train()
    b1, b2 = torch.relu(torch.randn(4, 100)), torch.relu(torch.randn(4, 100))
    a(b1)
    assert not bool(a.initialized)
    a(b2)
    assert bool(a.initialized) and a.clip_min.item() == 0.0
    from ferroquant.calibrate import IFMRCalibrator

    cal = IFMRCalibrator("t", bits=8, symmetric=True)
    cal.observe(b1.numpy())
    cal.observe(b2.numpy())
    assert a.clip_max.item() == pytest.approx(cal.qparams().clip_max, rel=1e-6)


def test_lsq_scale_clamped_to_eps():
    w = torch.randn(3, 4)
    q = LsqWeight(w, 4)
    with torch.no_grad():
        q.scale[1] = -0.3
    y = q(w)
    assert torch.isfinite(y).all() and q.scale[1].item() == pytest.approx(fqf.FLT_EPSILON)
