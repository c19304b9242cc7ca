"""The composed forward model: derivatives, batching, flags (real ELODIE coefficients)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlasp.grids import LAMOST_LN_STEP, LogGrid
from jaxlasp.model import (
    batch_residuals,
    build_forward_model,
    components,
    model_flags,
    residuals,
    rv_from_mu,
    theta_from_physical,
)

GRID = LogGrid(8.342906825954625, LAMOST_LN_STEP, 1327)


@pytest.fixture(scope="module")
def fm(elodie):
    return build_forward_model(elodie, GRID)


@pytest.fixture(scope="module")
def observed(fm):
    """A noisy spectrum simulated from the model itself, with a smooth 'instrument' response."""
    theta = jnp.asarray(theta_from_physical(5700.0, 4.3, -0.2, rv=35.0, sigma_px=1.3))
    comps = components(fm, theta, jnp.ones(GRID.n), jnp.ones(GRID.n))
    response = 1 + 0.3 * np.linspace(-1, 1, GRID.n) ** 2
    rng = np.random.default_rng(0)
    flux = np.asarray(comps.convolved) * response * (1 + rng.normal(0, 0.01, GRID.n))
    weights = np.ones(GRID.n)
    weights[-1] = 0.0
    return jnp.asarray(flux), jnp.asarray(weights)


# Points away from regime boundaries and kernel-truncation jumps, one per regime / blend.
POINTS = [(5600.0, 4.2, -0.3, 0.37, 1.21), (4300.0, 2.1, -1.2, -2.23, 0.93),
          (8100.0, 3.9, 0.1, 1.41, 1.73), (3850.0, 4.6, -0.5, 0.61, 1.07),
          (12500.0, 3.5, 0.0, -0.77, 2.11)]


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_jacfwd_matches_central_differences(fm, observed, point):
    teff, logg, feh, mu, sigma = point
    theta = jnp.asarray([mu, sigma, np.log(teff), logg, feh])
    flux, weights = observed
    f = lambda th: residuals(fm, th, flux, weights)  # noqa: E731
    jac = np.asarray(jax.jacfwd(f)(theta))
    steps = np.array([1e-5, 1e-5, 1e-6, 1e-5, 1e-5])
    for j, h in enumerate(steps):
        e = np.zeros(5)
        e[j] = h
        fd = (np.asarray(f(theta + e)) - np.asarray(f(theta - e))) / (2 * h)
        scale = np.max(np.abs(jac[:, j]))
        assert scale > 0
        np.testing.assert_allclose(jac[:, j], fd, rtol=0, atol=2e-6 * scale)


@pytest.mark.slow
def test_vmap_equals_loop(fm, observed):
    flux, weights = observed
    rng = np.random.default_rng(3)
    thetas = theta_from_physical(rng.uniform(4000, 9000, 6), rng.uniform(1, 5, 6),
                                 rng.uniform(-2, 0.5, 6), rng.uniform(-100, 100, 6),
                                 rng.uniform(0.5, 3, 6))
    fluxes = flux[None] * jnp.asarray(rng.uniform(0.5, 2, (6, 1)))
    wts = jnp.broadcast_to(weights, (6, GRID.n))
    batched = np.asarray(batch_residuals(fm, jnp.asarray(thetas), fluxes, wts))
    loop = np.stack([np.asarray(residuals(fm, jnp.asarray(t), f, w))
                     for t, f, w in zip(thetas, fluxes, wts)])
    np.testing.assert_allclose(batched, loop, rtol=1e-12, atol=1e-14)


def test_truth_is_a_good_fit(fm, observed):
    """At the true parameters the residuals are at the noise level (1 %)."""
    flux, weights = observed
    theta = jnp.asarray(theta_from_physical(5700.0, 4.3, -0.2, rv=35.0, sigma_px=1.3))
    r = np.asarray(residuals(fm, theta, flux, weights))
    rms = np.sqrt(np.sum(r**2) / np.sum(weights))
    assert 0.5 * 0.01 < rms / np.median(np.asarray(flux)) < 2 * 0.01


def test_rv_mapping_inverts():
    theta = theta_from_physical(5000.0, 4.0, 0.0, rv=-123.4)
    assert float(rv_from_mu(theta[0], LAMOST_LN_STEP)) == pytest.approx(-123.4, rel=1e-13)


def test_no_flags_on_a_good_point(fm, observed):
    theta = jnp.asarray(theta_from_physical(5600.0, 4.2, -0.3))
    comps = components(fm, theta, *observed)
    assert not any(bool(f) for f in model_flags(fm, theta, comps, observed[1]))


@pytest.mark.parametrize("point,flag", [
    ((2500.0, 4.2, -0.3, 0.0, 1.0), 0), ((5600.0, 8.0, -0.3, 0.0, 1.0), 0),
    ((5600.0, 4.2, -3.5, 0.0, 1.0), 0), ((5600.0, 4.2, -0.3, 30.0, 3.0), 1),
    ((5600.0, 4.2, -0.3, 2.0, 8.0), 1)])
def test_flags(fm, observed, point, flag):
    """Outside the emulator's domain (flag 0) or a kernel wider than the static half-width (1)."""
    teff, logg, feh, mu, sigma = point
    theta = jnp.asarray([mu, sigma, np.log(teff), logg, feh])
    flux, weights = observed
    comps = components(fm, theta, flux, weights)
    assert bool(model_flags(fm, theta, comps, weights)[flag])


def test_flags_non_finite_and_negative_polynomial(fm, observed):
    flux, weights = observed
    theta = jnp.asarray(theta_from_physical(5600.0, 4.2, -0.3))
    bad = flux.at[100].set(jnp.nan)
    comps = components(fm, theta, bad, weights)
    assert bool(model_flags(fm, theta, comps, weights)[3])
    flipped = -flux  # a negative spectrum needs a negative polynomial
    comps = components(fm, theta, flipped, weights)
    assert bool(model_flags(fm, theta, comps, weights)[2])


@pytest.mark.slow
def test_fold_equals_per_model_resampling(elodie):
    folded = build_forward_model(elodie, GRID, fold=True)
    direct = build_forward_model(elodie, GRID, fold=False)
    flux, weights = jnp.ones(GRID.n), jnp.ones(GRID.n)
    for teff in (3500.0, 4300.0, 5800.0, 8000.0, 20000.0):
        theta = jnp.asarray(theta_from_physical(teff, 3.0, -0.5))
        a = np.asarray(components(folded, theta, flux, weights).resampled)
        b = np.asarray(components(direct, theta, flux, weights).resampled)
        np.testing.assert_allclose(a, b, rtol=1e-11)


def test_grid_outside_model_is_an_error(elodie):
    with pytest.raises(ValueError, match="does not overlap"):
        build_forward_model(elodie, LogGrid(np.log(7000.0), LAMOST_LN_STEP, 100))


def test_folding_keeps_a_float32_emulator_float32(elodie):
    """Folding runs in float64 but returns float32 planes equal to the float64 ones rounded."""
    fm64 = build_forward_model(elodie, GRID)
    fm32 = build_forward_model(elodie.astype(jnp.float32), GRID)
    assert fm32.emulator.coef.dtype == jnp.float32 and fm32.legendre.basis.dtype == jnp.float32
    np.testing.assert_allclose(fm32.emulator.coef, fm64.emulator.coef, rtol=1e-6,
                               atol=1e-6 * float(jnp.max(jnp.abs(fm64.emulator.coef))))
