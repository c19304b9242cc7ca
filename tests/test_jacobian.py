"""The analytic (implicit-differentiation) Jacobian equals autodiff through the whole model."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlasp.grids import LAMOST_LN_STEP, LogGrid
from jaxlasp.model import build_forward_model, components, residuals, residuals_and_jacobian
from jaxlasp.spectral.broaden import broaden, gaussian_kernel, pad_edges, shifted_sum

GRID = LogGrid(8.342906825954625, LAMOST_LN_STEP, 1327)
POINTS = [(5600.0, 4.2, -0.3, 0.37, 1.21), (4300.0, 2.1, -1.2, -2.23, 0.93),
          (8100.0, 3.9, 0.1, 1.41, 1.73), (3850.0, 4.6, -0.5, 0.61, 1.07),
          (12500.0, 3.5, 0.0, -0.77, 2.11)]


@pytest.fixture(scope="module")
def fm(elodie):
    return build_forward_model(elodie, GRID)


@pytest.fixture(scope="module")
def observed(fm):
    theta = jnp.asarray([0.8, 1.3, np.log(5700.0), 4.3, -0.2])
    comps = components(fm, theta, jnp.ones(GRID.n), jnp.ones(GRID.n))
    rng = np.random.default_rng(2)
    flux = np.asarray(comps.convolved) * (1 + 0.3 * np.linspace(-1, 1, GRID.n) ** 2)
    return jnp.asarray(flux * (1 + rng.normal(0, 0.01, GRID.n)))


@pytest.mark.slow
@pytest.mark.parametrize("masked", [False, True], ids=["all_pixels", "gaps"])
@pytest.mark.parametrize("point", POINTS)
def test_equals_jacfwd(fm, observed, point, masked):
    teff, logg, feh, mu, sigma = point
    theta = jnp.asarray([mu, sigma, np.log(teff), logg, feh])
    weights = np.ones(GRID.n)
    weights[-1] = 0.0
    if masked:  # Clean-like gaps and a wide hole make the Legendre system less well conditioned
        weights[200:260] = 0.0
        weights[::37] = 0.0
        weights[1200:1290] = 0.0
    weights = jnp.asarray(weights)
    resid, jac_t = residuals_and_jacobian(fm, theta, observed, weights)
    expected = jax.jacfwd(residuals, argnums=1)(fm, theta, observed, weights)
    np.testing.assert_allclose(resid, residuals(fm, theta, observed, weights), rtol=0,
                               atol=1e-12 * float(jnp.max(jnp.abs(resid))))
    assert jac_t.shape == (5, GRID.n)
    for j in range(5):
        scale = float(jnp.max(jnp.abs(expected[:, j])))
        np.testing.assert_allclose(jac_t[j], expected[:, j], rtol=0, atol=1e-9 * scale)


def test_shifted_sum_is_the_convolution():
    rng = np.random.default_rng(0)
    flux = rng.normal(size=(3, 300))
    kernel = np.asarray(gaussian_kernel(1.7, 2.3, 12))
    padded = np.asarray(pad_edges(jnp.asarray(flux), 12))
    expected = np.stack([np.convolve(p, kernel[::-1], mode="valid") for p in padded])
    np.testing.assert_allclose(shifted_sum(jnp.asarray(padded), jnp.asarray(kernel)), expected,
                               rtol=0, atol=1e-13)
    np.testing.assert_allclose(broaden(jnp.asarray(flux[0]), 1.7, 2.3, 12), expected[0], rtol=0,
                               atol=1e-13)
