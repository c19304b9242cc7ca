"""The batched LM solver on problems with known answers, and its behaviour on a batch."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlasp  # noqa: F401
from jaxlasp.fit import lm

INF = np.full(3, np.inf)


def exp_decay(theta, shared, data):
    """Residuals of y = a·exp(−b·x) + c."""
    x, y = shared, data
    return theta[0] * jnp.exp(-theta[1] * x) + theta[2] - y


def rosenbrock(theta, shared, data):
    return jnp.stack([10 * (theta[1] - theta[0] ** 2), 1 - theta[0]])


X = np.linspace(0, 4, 60)


@pytest.mark.slow
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_matches_scipy_least_squares(seed):
    rng = np.random.default_rng(seed)
    truth = np.array([rng.uniform(1, 3), rng.uniform(0.3, 2), rng.uniform(-1, 1)])
    y = truth[0] * np.exp(-truth[1] * X) + truth[2] + rng.normal(0, 0.05, X.size)
    start = truth * rng.uniform(0.6, 1.4, 3)
    state = lm.run(exp_decay, jnp.asarray(start[None]), jnp.asarray(X), jnp.asarray(y[None]),
                   lower=-INF, upper=INF)
    ref = scipy.optimize.least_squares(
        lambda t: t[0] * np.exp(-t[1] * X) + t[2] - y, start, xtol=1e-15, ftol=1e-15, gtol=1e-15)
    assert int(state.status[0]) in (lm.FTOL, lm.XTOL)
    assert float(state.cost[0]) == pytest.approx(ref.cost, rel=1e-10)
    np.testing.assert_allclose(state.theta[0], ref.x, rtol=1e-6, atol=1e-8)


@pytest.mark.slow
def test_rosenbrock_and_iteration_cap():
    start = jnp.asarray([[-1.2, 1.0], [-1.2, 1.0]])
    bounds = dict(lower=np.full(2, -np.inf), upper=np.full(2, np.inf))
    state = lm.run(rosenbrock, start, None, jnp.zeros((2, 1)), **bounds)
    np.testing.assert_allclose(state.theta, 1.0, atol=1e-8)
    capped = lm.run(rosenbrock, start, None, jnp.zeros((2, 1)), max_iter=3, **bounds)
    assert np.all(np.asarray(capped.status) == lm.MAX_ITER)
    assert np.all(np.asarray(capped.n_iter) == 3)


def test_box_is_respected():
    """The unconstrained optimum (b ≈ 1) lies outside b ≤ 0.5: the fit stops on the bound."""
    y = 2 * np.exp(-X) + 0.1
    upper = np.array([np.inf, 0.5, np.inf])
    state = lm.run(exp_decay, jnp.asarray([[1.0, 0.2, 0.0]]), jnp.asarray(X), jnp.asarray(y[None]),
                   lower=-INF, upper=upper)
    assert float(state.theta[0, 1]) == pytest.approx(0.5)
    assert int(state.status[0]) != lm.RUNNING


def test_members_converge_independently():
    """A batch ends when all members stop; a member that stopped does not change any more."""
    y = np.stack([2 * np.exp(-X) + 0.1, 2 * np.exp(-X) + 0.1])
    start = jnp.asarray([[2.0, 1.0, 0.1], [0.5, 3.0, -1.0]])  # the first starts at the optimum
    state = lm.run(exp_decay, start, jnp.asarray(X), jnp.asarray(y), lower=-INF, upper=INF)
    single = lm.run(exp_decay, start[1:], jnp.asarray(X), jnp.asarray(y[1:]), lower=-INF, upper=INF)
    assert int(state.n_iter[0]) < int(state.n_iter[1])
    np.testing.assert_allclose(state.theta[0], [2.0, 1.0, 0.1], atol=1e-12)
    np.testing.assert_allclose(state.theta[1], single.theta[0], rtol=1e-12)
    assert int(state.n_iter[1]) == int(single.n_iter[0])


def test_nonfinite_start_is_a_status_not_an_exception():
    y = np.stack([2 * np.exp(-X), np.full(X.size, np.nan)])
    state = lm.run(exp_decay, jnp.asarray([[1.0, 1.0, 0.0]] * 2), jnp.asarray(X), jnp.asarray(y),
                   lower=-INF, upper=INF)
    assert int(state.status[1]) == lm.NONFINITE
    assert int(state.status[0]) in (lm.FTOL, lm.XTOL)


def test_covariance_matches_curve_fit():
    rng = np.random.default_rng(5)
    y = 2 * np.exp(-0.7 * X) + 0.3 + rng.normal(0, 0.05, X.size)
    state = lm.run(exp_decay, jnp.asarray([[1.5, 1.0, 0.0]]), jnp.asarray(X), jnp.asarray(y[None]),
                   lower=-INF, upper=INF)
    cov = np.asarray(lm.covariance(state.jac[0], state.resid[0], X.size))
    popt, pcov = scipy.optimize.curve_fit(lambda x, a, b, c: a * np.exp(-b * x) + c, X, y,
                                          p0=[1.5, 1.0, 0.0], xtol=1e-14, ftol=1e-14)
    np.testing.assert_allclose(state.theta[0], popt, rtol=1e-6)
    np.testing.assert_allclose(cov, pcov, rtol=1e-4)


def linear(theta, shared, data):
    """Residuals A·θ − b (shared = A, data = b)."""
    return shared @ theta - data


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_bounded_linear_problem_converges_to_lsq_linear(seed):
    """Optima on bounds: LM converges (holding the pinned parameters) to scipy's bounded
    solution instead of running to the iteration cap."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(40, 4))
    b = a @ rng.normal(0, 2, 4) + rng.normal(0, 0.1, 40)
    lower, upper = np.full(4, -1.0), np.full(4, 1.0)
    state = lm.run(linear, jnp.zeros((1, 4)), jnp.asarray(a), jnp.asarray(b[None]),
                   lower=lower, upper=upper, max_iter=200)
    ref = scipy.optimize.lsq_linear(a, b, bounds=(lower, upper), tol=1e-14)
    assert int(state.status[0]) in (lm.FTOL, lm.XTOL), int(state.n_iter[0])
    assert float(state.cost[0]) == pytest.approx(ref.cost, rel=1e-8, abs=1e-12)
    np.testing.assert_allclose(state.theta[0], ref.x, atol=1e-5)
