"""Golden tests: jaxlasp's forward model reproduces PyLASP's own intermediate arrays (GOLDEN.md)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from helpers import golden_grid, rel_err
from helpers import golden_theta as golden_theta_np

from jaxlasp.emulators.tgm import tgm_flux
from jaxlasp.model import build_forward_model, components
from jaxlasp.spectral.broaden import gaussian_kernel

POINTS = range(7)
CF_TOL = 1e-10


def golden_theta(golden, i):
    return jnp.asarray(golden_theta_np(golden, i))


@pytest.fixture(scope="module", params=[True, False], ids=["folded", "per-model"])
def cf_model(request, elodie, golden):
    return build_forward_model(elodie, golden_grid(golden), edges="extrapolate", fold=request.param)


@pytest.fixture(scope="module")
def cf_components(cf_model, golden):
    return [components(cf_model, golden_theta(golden, i), jnp.asarray(golden["cf_obs_flux"][i]),
                       jnp.asarray(golden["cf_goodpix0"][i], jnp.float64)) for i in POINTS]


@pytest.mark.parametrize("i", POINTS)
def test_emulator_on_model_grid(elodie, golden, i):
    flux = tgm_flux(elodie, golden["pt_teff_K"][i], golden["pt_logg"][i], golden["pt_feh"][i])
    assert rel_err(flux, golden["cf_raw_model"][i]) <= CF_TOL


def test_grid_matches_pylasp(golden):
    grid = golden_grid(golden)
    np.testing.assert_allclose(grid.centres, golden["cf_obs_wave"][0], rtol=1e-14)


@pytest.mark.parametrize("i", POINTS)
def test_kernel(golden, i):
    n = int(golden["cf_kernel_len"][i])
    half = (n - 1) // 2
    kernel = gaussian_kernel(golden["pt_mu_pix"][i], golden["pt_sigma_pix"][i], 40)
    np.testing.assert_allclose(kernel[40 - half:41 + half], golden["cf_kernel"][i][:n],
                               rtol=1e-13, atol=1e-16)
    assert float(jnp.sum(kernel)) == pytest.approx(1.0, abs=1e-15)


@pytest.mark.slow
@pytest.mark.parametrize("i", POINTS)
@pytest.mark.parametrize("name,key", [
    ("resampled", "cf_resampled"), ("convolved", "cf_convolved"), ("model", "cf_bestfit"),
    ("residuals", "cf_resid")])
def test_curvefit_arrays(cf_components, golden, i, name, key):
    assert rel_err(getattr(cf_components[i], name), golden[key][i]) <= CF_TOL


@pytest.mark.parametrize("i", POINTS)
def test_curvefit_legendre(cf_components, golden, i):
    """PyLASP normalises the coefficients to c_0 = 1 and moves c_0 into a scalar weight."""
    coefs = np.asarray(cf_components[i].coefs)
    assert rel_err(coefs / coefs[0], golden["cf_leg_coefs"][i]) <= CF_TOL
    assert coefs[0] == pytest.approx(golden["cf_weight"][i], rel=CF_TOL)
    assert rel_err(cf_components[i].polynomial / coefs[0], golden["cf_poly"][i]) <= CF_TOL


@pytest.mark.parametrize("i", POINTS)
def test_curvefit_loss(cf_components, golden, i):
    r = np.asarray(cf_components[i].residuals)
    loss = np.sqrt(np.sum(r**2) / golden["cf_goodpix0"][i].sum())
    assert loss == pytest.approx(golden["cf_loss"][i], rel=CF_TOL)


# --- LASP-Adam path (float32 PyTorch in PyLASP; we compute in float64): GOLDEN.md §5 tolerances.

ADAM_FIT_PIXELS = 1325  # pixels 0..N−3 enter the Legendre fit and the loss


@pytest.fixture(scope="module")
def adam_components(elodie, golden):
    fm = build_forward_model(elodie, golden_grid(golden), edges="clip")
    weights = jnp.zeros(1327).at[:ADAM_FIT_PIXELS].set(1.0)
    return [components(fm, golden_theta(golden, i), jnp.asarray(golden["adam_spec_norm"][i], float),
                       weights) for i in POINTS]


def test_adam_emulator_within_float32_cancellation(elodie, golden):
    """PyLASP's float32 emulator is off by ≤ 1.7 % (point 1) from the exact float64 one
    (§j.1)."""
    errs = [np.max(np.abs(np.asarray(tgm_flux(elodie, golden["pt_teff_K"][i],
                                              golden["pt_logg"][i], golden["pt_feh"][i]))
                          / golden["adam_raw_model"][i] - 1))
            for i in POINTS]
    assert max(errs) <= 0.018
    assert np.argmax(errs) == 1
    assert errs[0] < 1e-4  # the Sun-like point barely suffers from cancellation


def test_adam_resampling_clip(golden):
    """Resampling PyLASP's own float32 emulator output with clipped edges: ≤ 7e-4
    (float32 noise)."""
    from jaxlasp.grids import LinearGrid
    from jaxlasp.spectral.resample import resample

    grid, model = golden_grid(golden), LinearGrid(4199.2, 0.2, 7506)
    ours = resample(golden["adam_raw_model"].astype(float), model.edges, grid.edges, grid.widths,
                    edges="clip")
    # GOLDEN §5 quotes ≤ 7e-4 (rounded); the largest here is 7.04e-4, pixel 741 of point 1.
    assert np.max(np.abs(np.asarray(ours) / golden["adam_resampled"] - 1)) <= 7.5e-4
    # The clipped last pixel comes out ~30 % low, as in PyLASP (ALGORITHM §d.3).
    assert 0.6 < float(ours[0, -1] / ours[0, -2]) < 0.75


@pytest.mark.parametrize("i", POINTS)
def test_adam_alone_loss(adam_components, golden, i):
    resid = np.asarray(adam_components[i].residuals[:ADAM_FIT_PIXELS])
    alone = np.sqrt(np.mean(resid**2))
    assert alone == pytest.approx(float(golden["adam_alone_loss"][i]), rel=1.1e-4)
    # The best-fit model carries PyLASP's float32 emulator error (≤ 1.7 %, damped by the
    # resampling and the polynomial fit) and resampling noise.
    np.testing.assert_allclose(adam_components[i].model[:ADAM_FIT_PIXELS],
                               golden["adam_bestfit"][i][:ADAM_FIT_PIXELS], rtol=2e-3)
