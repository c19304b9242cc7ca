"""Compacted LM (slots refilled as problems finish) gives lm.run's results, member by member."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxlasp  # noqa: F401
from jaxlasp.fit import lm
from jaxlasp.fit.driver import slot_count
from jaxlasp.fit.schedule import run_compacted

X = np.linspace(0, 4, 60)
INF = np.full(3, np.inf)


def exp_decay(theta, shared, data):
    """Residuals of y = a·exp(−b·x) + c."""
    return theta[0] * jnp.exp(-theta[1] * shared) + theta[2] - data


@pytest.fixture(scope="module")
def problems():
    rng = np.random.default_rng(7)
    b = 13
    truth = np.stack([rng.uniform(1, 3, b), rng.uniform(0.3, 2, b), rng.uniform(-1, 1, b)], 1)
    y = truth[:, :1] * np.exp(-truth[:, 1:2] * X) + truth[:, 2:] + rng.normal(0, 0.05, (b, X.size))
    y[4] = np.nan  # a non-finite start: finishes at its first evaluation
    start = truth * rng.uniform(0.3, 1.7, (b, 3))
    ftol = np.where(np.arange(b) % 2 == 0, 1e-10, 1e-4)
    return jnp.asarray(start), jnp.asarray(y), jnp.asarray(ftol)


@pytest.mark.slow
@pytest.mark.parametrize("slots", [1, 4, 13])
@pytest.mark.parametrize("with_active", [False, True])
def test_same_results_as_run(problems, slots, with_active):
    start, y, ftol = problems
    active = jnp.asarray(np.arange(start.shape[0]) % 3 != 1) if with_active else None
    damping = jnp.asarray(np.where(np.arange(start.shape[0]) % 4 == 0, 1e-3, lm.INITIAL_DAMPING))
    kw = dict(lower=-INF, upper=INF, max_iter=40, ftol=ftol, active=active, damping=damping)
    plain = lm.run(exp_decay, start, jnp.asarray(X), y, **kw)
    packed = jax.jit(lambda th, d: run_compacted(exp_decay, th, jnp.asarray(X), d, slots=slots,
                                                 **kw))(start, y)
    used = np.ones(start.shape[0], bool) if active is None else np.asarray(active)
    np.testing.assert_array_equal(np.asarray(packed.status)[used], np.asarray(plain.status)[used])
    np.testing.assert_array_equal(np.asarray(packed.n_iter)[used], np.asarray(plain.n_iter)[used])
    np.testing.assert_allclose(np.asarray(packed.theta)[used], np.asarray(plain.theta)[used],
                               rtol=1e-12, atol=1e-14, equal_nan=True)
    np.testing.assert_allclose(np.asarray(packed.jac)[used], np.asarray(plain.jac)[used],
                               rtol=1e-12, atol=1e-14, equal_nan=True)
    assert np.all(np.asarray(packed.status)[~used] == lm.SKIPPED)
    assert int(packed.status[4]) == lm.NONFINITE or not used[4]


def test_small_starting_damping_near_a_minimum(problems):
    """Started next to its minimum, LM from λ = 1e-3 reaches the same minimum as from the cautious
    default λ in fewer steps (what the Clean schedule's refits use, ``driver.WARM_DAMPING``)."""
    start, y, _ = problems
    finite = np.isfinite(np.asarray(y)).all(axis=1)
    start, y = start[finite], y[finite]
    kw = dict(lower=-INF, upper=INF, max_iter=100, slots=4)
    solved = run_compacted(exp_decay, start, jnp.asarray(X), y, **kw).theta
    nearby = solved * (1 + 1e-3 * jnp.asarray(np.random.default_rng(1).normal(size=solved.shape)))
    cautious = run_compacted(exp_decay, nearby, jnp.asarray(X), y, **kw)
    warm = run_compacted(exp_decay, nearby, jnp.asarray(X), y, damping=1e-3, **kw)
    assert np.all(np.asarray(warm.status) == lm.FTOL)
    np.testing.assert_allclose(warm.theta, cautious.theta, rtol=1e-6)
    np.testing.assert_allclose(warm.theta, solved, rtol=1e-6)
    assert np.sum(warm.n_iter) < 0.7 * np.sum(cautious.n_iter)


def test_iteration_cap_in_slots(problems):
    start, y, _ = problems
    packed = run_compacted(exp_decay, start, jnp.asarray(X), y, lower=-INF, upper=INF, slots=3,
                           max_iter=2)
    finite = np.isfinite(np.asarray(y)).all(axis=1)
    assert np.all(np.asarray(packed.n_iter)[finite] <= 2)
    assert np.any(np.asarray(packed.status)[finite] == lm.MAX_ITER)


def test_nothing_active(problems):
    start, y, _ = problems
    packed = run_compacted(exp_decay, start, jnp.asarray(X), y, lower=-INF, upper=INF, slots=4,
                           active=jnp.zeros(start.shape[0], bool))
    assert np.all(np.asarray(packed.status) == lm.SKIPPED)


@pytest.mark.parametrize("n_active, slots, expected", [(1, 128, 4), (5, 128, 16), (16, 128, 16),
                                                       (17, 128, 64), (100, 128, 128),
                                                       (400, 32, 32), (3, 2, 2)])
def test_slot_count(n_active, slots, expected):
    assert slot_count(n_active, slots) == expected
