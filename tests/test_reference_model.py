"""The NumPy reference forward model (jaxlasp.testing): golden arrays, agreement with the JAX
model, and a scipy least_squares fit of a simulated spectrum."""
from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import golden_grid, golden_theta, rel_err

from jaxlasp.grids import LAMOST_LN_STEP
from jaxlasp.testing import NumpyForwardModel, exp_remainder, fit_least_squares

TOL = 1e-9
POINTS = range(7)


@pytest.fixture(scope="module")
def ref(elodie, golden):
    return NumpyForwardModel.from_emulator(elodie, golden_grid(golden))


@pytest.fixture(scope="module")
def golden_components(ref, golden):
    return [ref.components(golden_theta(golden, i), golden["cf_obs_flux"][i],
                           golden["cf_goodpix0"][i].astype(np.float64)) for i in POINTS]


def test_exp_remainder_series():
    for x in (-2.7, -0.3, 0.01, 1.5, 3.99, 4.01, 7.0):
        exact = sum(x**n / math.factorial(n) for n in range(6, 80))
        assert exp_remainder(x) == pytest.approx(exact, rel=1e-14)
    assert exp_remainder(1e-3) == pytest.approx(1e-18 / 720, rel=1e-12)


@pytest.mark.parametrize("i", POINTS)
def test_emulator_on_model_grid(ref, golden, i):
    theta = golden_theta(golden, i)
    assert rel_err(ref.emulate_model_grid(*theta[2:]), golden["cf_raw_model"][i]) <= TOL


@pytest.mark.parametrize("i", POINTS)
@pytest.mark.parametrize("name,key", [
    ("resampled", "cf_resampled"), ("convolved", "cf_convolved"), ("model", "cf_bestfit"),
    ("residuals", "cf_resid")])
def test_golden_arrays(golden_components, golden, i, name, key):
    assert rel_err(getattr(golden_components[i], name), golden[key][i]) <= TOL


@pytest.mark.parametrize("i", POINTS)
def test_golden_loss(ref, golden, i):
    loss = ref.loss(golden_theta(golden, i), golden["cf_obs_flux"][i], golden["cf_goodpix0"][i])
    assert loss == pytest.approx(golden["cf_loss"][i], rel=TOL)


def test_resampling_rows_conserve_density(ref):
    """A constant flux density stays constant (to Δ²/24), the last bin included (extrapolation)."""
    np.testing.assert_allclose(ref.R.sum(axis=1), 1.0, rtol=0, atol=1e-8)


def test_agrees_with_jax_model(elodie, golden, ref):
    from jaxlasp.model import build_forward_model, residuals

    fm = build_forward_model(elodie, golden_grid(golden))
    flux = golden["cf_obs_flux"][0]
    weights = golden["cf_goodpix0"][0].astype(np.float64)
    rng = np.random.default_rng(11)
    # one point per regime / blend, plus random ones inside the fitting box
    thetas = [golden_theta(golden, i) for i in (1, 3, 4, 5)]
    for _ in range(4):
        thetas.append(np.array([rng.uniform(-10, 10), rng.uniform(0.3, 4.0),
                                rng.uniform(math.log(3200.0), math.log(25000.0)),
                                rng.uniform(0.5, 5.5), rng.uniform(-2.3, 0.8)]))
    for theta in thetas:
        ours = ref.residuals(theta, flux, weights)
        theirs = np.asarray(residuals(fm, theta, flux, weights))
        assert rel_err(theirs, ours) <= TOL, theta


def test_fit_least_squares_recovers_truth(ref):
    grid = ref.observed
    assert grid.step == pytest.approx(LAMOST_LN_STEP)
    truth = np.array([2.37, 1.45, math.log(5450.0), 4.15, -0.35])
    response = 1.0 + 0.3 * np.linspace(-1, 1, grid.n) ** 2 - 0.1 * np.linspace(-1, 1, grid.n)
    rng = np.random.default_rng(5)
    clean = ref.broadened(truth) * response
    flux = clean * (1.0 + rng.normal(0.0, 0.01, grid.n))
    weights = np.ones(grid.n)
    weights[-1] = 0.0
    dmu = math.log1p(20.0 / 299792.458) / grid.step      # 20 km/s in pixels
    theta0 = np.array([truth[0] - dmu, 1.0, math.log(5450.0 + 300.0), 4.15 - 0.3, -0.35 + 0.2])
    fit = fit_least_squares(ref, theta0, flux, weights)
    theta, loss, nfev, cov = fit
    err = np.sqrt(np.diag(cov))
    assert np.all(np.isfinite(err)) and np.all(err > 0)
    assert np.all(np.abs(theta - truth) <= 4 * err), (theta - truth) / err
    assert loss == pytest.approx(0.01 * np.sqrt(np.mean(clean[:-1] ** 2)), rel=0.1)
    assert nfev >= fit.result.nfev
    # the start is ~20 σ away in Teff, so the fit really moved
    assert abs(theta0[2] - truth[2]) > 10 * err[2]


@pytest.mark.parametrize("i", [0, 1, 3, 4])   # warm, cold/warm blend, cold, warm/hot blend
def test_fit_reproduces_pylasp_curvefit(ref, golden, i):
    """From PyLASP's start (7500 K, 3.5, −0.5) the fit lands on PyLASP's own No-Clean CurveFit
    result (GOLDEN §4.2) to within that run's loose LM tolerance (ftol = 1e-5)."""
    ids = [str(s) for s in golden["adamrun_ids"]]
    row = golden["cfrun0_csv"][ids.index(str(golden["pt_spec_id"][i]))]
    cols = [str(c) for c in golden["cfrun_csv_columns"]]
    expect = dict(zip(cols, row))
    theta0 = np.array([0.0, 0.999884888, math.log(7500.0), 3.5, -0.5])
    fit = fit_least_squares(ref, theta0, golden["cf_obs_flux"][i], golden["cf_goodpix0"][i])
    rv = 299792.458 * math.expm1(ref.observed.step * fit.theta[0])
    assert rv == pytest.approx(expect["pred_Rv"], abs=1.0)
    assert math.exp(fit.theta[2]) == pytest.approx(expect["pred_Teff"], abs=5.0)
    assert fit.theta[3] == pytest.approx(expect["pred_logg"], abs=0.01)
    assert fit.theta[4] == pytest.approx(expect["pred_FeH"], abs=0.01)
    assert fit.loss == pytest.approx(expect["loss"], rel=1e-3)
    assert fit.loss <= expect["loss"] * (1 + 1e-9)   # a tighter optimum, never a worse one


def test_clip_edges_agree_with_jax_model(elodie, golden):
    """LASP-Adam's edge convention (no flux beyond the model's coverage) matches too."""
    from jaxlasp.model import build_forward_model, components

    grid = golden_grid(golden)
    ref = NumpyForwardModel.from_emulator(elodie, grid, edges="clip")
    fm = build_forward_model(elodie, grid, edges="clip")
    for i in (1, 4):
        theta = golden_theta(golden, i)
        flux, weights = golden["cf_obs_flux"][i], golden["cf_goodpix0"][i].astype(np.float64)
        ours = ref.components(theta, flux, weights)
        theirs = components(fm, theta, flux, weights)
        assert rel_err(theirs.resampled, ours.resampled) <= TOL
        assert rel_err(theirs.residuals, ours.residuals) <= TOL
        # the last observed bin reaches 0.40 Å past the model: about 30 % of it is missing
        assert 0.6 < ours.resampled[-1] / golden["cf_resampled"][i][-1] < 0.8
