"""jaxlasp's LM and scipy.optimize.least_squares on an independent NumPy model reach one optimum."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jaxlasp.fit.driver import fit_batch
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.model import build_forward_model, components, theta_from_physical
from jaxlasp.testing import NumpyForwardModel, fit_least_squares


@pytest.fixture(scope="module")
def models(elodie):
    grid = lamost_fit_grid(elodie.grid)
    return build_forward_model(elodie, grid), NumpyForwardModel.from_emulator(elodie, grid), grid


@pytest.mark.slow
@settings(max_examples=4, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), teff=st.floats(4600, 6800), logg=st.floats(2.0, 4.7),
       feh=st.floats(-1.5, 0.3), rv=st.floats(-150, 150))
def test_same_optimum_as_scipy(models, seed, teff, logg, feh, rv):
    fm, reference, grid = models
    rng = np.random.default_rng(seed)
    truth = theta_from_physical(teff, logg, feh, rv=rv, sigma_px=rng.uniform(0.8, 1.5))
    comps = components(fm, jnp.asarray(truth), jnp.ones(grid.n), jnp.ones(grid.n))
    clean = np.asarray(comps.convolved)
    response = 1 + 0.2 * np.cos(np.linspace(0, 3, grid.n))
    flux = clean * response * (1 + rng.normal(0, 0.01, grid.n))
    weights = np.ones(grid.n)
    weights[-1] = 0.0
    start = truth + np.array([0.5, 0.1, np.log(1.04), 0.15, 0.1]) * rng.choice([-1, 1], 5)

    ours = fit_batch(fm, jnp.asarray(start[None]), flux[None], weights[None])
    scipy_fit = fit_least_squares(reference, start, flux, weights, jac="3-point")
    assert bool(ours.converged[0]) and scipy_fit.result.success
    assert float(ours.loss[0]) == pytest.approx(scipy_fit.loss, rel=1e-8)
    errors = np.sqrt(np.diag(np.asarray(ours.covariance[0])))
    np.testing.assert_array_less(np.abs(np.asarray(ours.theta[0]) - scipy_fit.theta), 1e-3 * errors)
    np.testing.assert_allclose(errors, scipy_fit.errors, rtol=1e-3)
