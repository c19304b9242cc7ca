"""The MINPACK-path LM (jaxlasp.fit.minpack) against scipy.optimize.leastsq (MINPACK's lmdif)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.fit import minpack

T = np.linspace(0, 4, 40)


def damped_wave(x, shared, data):
    """Residuals y − (a·exp(−b·t) + c·sin(d·t)); ``shared`` scales a fifth, inert parameter."""
    model = x[0] * jnp.exp(-x[1] * T) + x[2] * jnp.sin(x[3] * T)
    return data - model - shared * x[4]


def damped_wave_np(x, y, inert=0.0):
    return y - (x[0] * np.exp(-x[1] * T) + x[2] * np.sin(x[3] * T)) - inert * x[4]


@jax.jit
def run_batch(theta, y, ftol, xtol, shared=0.0):
    return minpack.run(damped_wave, theta, shared, y, ftol=ftol, xtol=xtol)


def problem(seed):
    rng = np.random.default_rng(seed)
    truth = np.array([2.0, 0.7, 0.5, 2.5, 0.0]) * (1 + 0.2 * rng.standard_normal(5))
    y = -damped_wave_np(truth, np.zeros_like(T)) + 0.05 * rng.standard_normal(T.size)
    start = truth * (1 + 0.3 * rng.standard_normal(5))
    start[4] = 1.0
    return start, y


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), ftol=st.sampled_from([1e-2, 1e-3, 1e-5, 1.49012e-8]))
def test_follows_scipy_leastsq(seed, ftol):
    """Same number of evaluations, same MINPACK info and the same point as scipy's lmdif, at the
    loose tolerances that stop a fit early (where the path decides the answer) and tight ones.
    The fifth parameter has no effect (a zero Jacobian column), as MINPACK handles by pivoting."""
    start, y = problem(seed)
    x, _, info, _, ier = scipy.optimize.leastsq(lambda p: damped_wave_np(p, y), start,
                                                ftol=ftol, xtol=1e-8, full_output=True)
    state = run_batch(jnp.asarray(start[None]), jnp.asarray(y[None]), ftol, 1e-8)
    assert int(state.status[0]) == ier
    assert int(state.nfev[0]) == info["nfev"]
    np.testing.assert_allclose(np.asarray(state.x[0]), x, rtol=1e-6, atol=1e-9)
    scale = np.max(np.abs(info["fvec"]))  # x agrees to 1e-6: residuals to 1e-6 of their scale
    np.testing.assert_allclose(np.asarray(state.fvec[0]), info["fvec"], rtol=1e-6,
                               atol=1e-6 * scale)


@pytest.mark.slow
def test_batch_equals_one_at_a_time():
    problems = [problem(seed) for seed in range(4)]
    starts = jnp.asarray(np.stack([p[0] for p in problems]))
    ys = jnp.asarray(np.stack([p[1] for p in problems]))
    tols = jnp.asarray([1e-2, 1e-3, 1e-5, 1e-8])
    batch = run_batch(starts, ys, tols, 1e-8)
    for i in range(4):
        alone = run_batch(starts[i:i + 1], ys[i:i + 1], tols[i], 1e-8)
        np.testing.assert_allclose(batch.x[i], alone.x[0], rtol=1e-6)  # FD round-off
        assert int(batch.nfev[i]) == int(alone.nfev[0])


@pytest.mark.slow
def test_evaluation_limit_and_skipped_members():
    """maxfev reached gives MINPACK's info 5 (curve_fit raises there); inactive members are not
    touched."""
    start, y = problem(3)
    theta = jnp.asarray(np.stack([start, start]))
    ys = jnp.asarray(np.stack([y, y]))
    state = jax.jit(lambda th, d: minpack.run(damped_wave, th, 0.0, d, ftol=1e-15, xtol=1e-15,
                                              active=jnp.array([True, False]), maxfev=12))(
        theta, ys)
    _, _, _, _, ier = scipy.optimize.leastsq(lambda p: damped_wave_np(p, y), start,
                                                ftol=1e-15, xtol=1e-15, maxfev=12,
                                                full_output=True)
    assert ier == minpack.MAXFEV == int(state.status[0])
    assert int(state.status[1]) == minpack.SKIPPED
    np.testing.assert_array_equal(np.asarray(state.x[1]), start)


def test_exact_fit_stops_on_zero_gradient():
    """A start at the exact solution: zero residuals, gradient 0 → info 4 before any step."""
    truth = np.array([2.0, 0.7, 0.5, 2.5, 0.0])
    y = -np.asarray(damped_wave(jnp.asarray(truth), 0.0, jnp.zeros(T.size)))
    state = run_batch(jnp.asarray(truth[None]), jnp.asarray(y[None]), 1e-8, 1e-8)
    assert int(state.status[0]) == minpack.GTOL
    np.testing.assert_array_equal(np.asarray(state.x[0]), truth)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), m=st.sampled_from([5, 12, 30]))
def test_householder_qr_matches_numpy(seed, m):
    rng = np.random.default_rng(seed)
    a, b = rng.standard_normal((m, 5)), rng.standard_normal(m)
    r, qtb = jax.jit(minpack.householder_qr)(jnp.asarray(a), jnp.asarray(b))
    q_ref, r_ref = np.linalg.qr(a)
    signs = np.sign(np.diagonal(r_ref)) * np.sign(np.diagonal(np.asarray(r)))
    np.testing.assert_allclose(np.asarray(r), signs[:, None] * r_ref, atol=1e-12)
    np.testing.assert_allclose(np.asarray(qtb), signs * (q_ref.T @ b), atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), radius=st.floats(1e-3, 1e3), guess=st.floats(0, 10))
def test_lmpar_solves_the_trust_region_subproblem(seed, radius, guess):
    """lmpar's (λ, x): x = (RᵀR + λD²)⁻¹Rᵀb, with λ = 0 and ‖Dx‖ ≤ 1.1Δ, or ‖Dx‖ within 10 % of
    Δ (MINPACK's acceptance; its 10-iteration cap is not reached on these problems)."""
    rng = np.random.default_rng(seed)
    r = np.triu(rng.standard_normal((5, 5))) + np.diag(rng.uniform(0.5, 3, 5))
    diag = rng.uniform(0.1, 10, 5)
    qtb = rng.standard_normal(5)
    par, x = jax.jit(minpack.lmpar)(jnp.asarray(r), jnp.asarray(diag), jnp.asarray(qtb), radius,
                                    guess)
    par, x = float(par), np.asarray(x)
    expected = np.linalg.solve(r.T @ r + par * np.diag(diag**2), r.T @ qtb)
    np.testing.assert_allclose(x, expected, rtol=1e-8, atol=1e-12)
    length = np.linalg.norm(diag * x)
    if par == 0:
        assert length <= 1.1 * radius
    else:
        assert abs(length - radius) <= 0.1 * radius


def test_solve_upper_skips_zero_pivots():
    r = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 0.0]])
    x = minpack.solve_upper(jnp.asarray(r), jnp.asarray([4.0, 3.0, 7.0]))
    np.testing.assert_allclose(np.asarray(x), [1.5, 1.0, 0.0])


@pytest.mark.parametrize("step", [1e-4 * np.log(10), 1e-5])
def test_curvefit_start_sigma(step):
    """CurveFit's start σ: one pixel's velocity c·Δ back in pixels, ln(1 + Δ)/Δ."""
    from jaxlasp.fit.driver import curvefit_start_sigma

    assert curvefit_start_sigma(step) == pytest.approx(np.log1p(step) / step, rel=1e-15)
    if step > 2e-4:
        assert curvefit_start_sigma(step) == pytest.approx(0.999884888, abs=1e-9)
