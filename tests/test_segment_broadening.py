"""A broadening σ per segment (issue 22): segments or native arms of different resolution share
RV, Teff, log g and [Fe/H] but each is broadened with its own Gaussian width."""
from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ELODIE, SAMPLE, need
from helpers import edited_lamost_copy

from jaxlasp.emulators.demo import demo_emulator
from jaxlasp.fit.adam import fit_batch_adam, theta_from_x, x_box, x_from_theta
from jaxlasp.fit.driver import UNDERSAMPLED, fit_batch, parameter_box
from jaxlasp.fit.start import fit_multistart
from jaxlasp.grids import C_KMS, LAMOST_LN_STEP, PixelGrid, lamost_fit_grid
from jaxlasp.groups.columns import make_table, result_columns
from jaxlasp.model import (
    SIGMA,
    broadened,
    build_forward_model,
    fitted_pixels,
    full_theta,
    n_parameters,
    residuals,
    residuals_and_jacobian,
    segment_of_pixels,
    sigma_indices,
    theta_from_physical,
)

SEGMENTS = ((4200.0, 4900.0), (5000.0, 5700.0))
PYLASP_START = theta_from_physical(7500.0, 3.5, -0.5)


@pytest.fixture(scope="module")
def emulator():
    return demo_emulator()


@pytest.fixture(scope="module")
def models(emulator):
    """(one σ, a σ per segment) forward models of the demo emulator on two LAMOST segments."""
    grid = lamost_fit_grid(emulator.grid)
    return (build_forward_model(emulator, grid, segments=SEGMENTS),
            build_forward_model(emulator, grid, segments=SEGMENTS, segment_broadening=True))


def two_sigma_truth(fm, sigmas=((1.0, 2.5), (1.6, 1.1))):
    """θ of two stars whose segments have the widths ``sigmas`` [px]."""
    theta = np.array([theta_from_physical(t, g, z, rv=v, sigma_px=1.0)
                      for t, g, z, v in ((5200.0, 4.2, -0.3, 30.0), (6300.0, 3.6, -1.0, -55.0))])
    theta = np.array(full_theta(fm, theta))
    theta[:, list(sigma_indices(fm))] = sigmas
    return theta


def test_the_parameter_vector_gains_one_sigma_per_further_segment(models, emulator):
    one, per_segment = models
    assert (n_parameters(one), sigma_indices(one)) == (5, (SIGMA,))
    assert (n_parameters(per_segment), sigma_indices(per_segment)) == (6, (SIGMA, 5))
    theta = full_theta(per_segment, PYLASP_START)
    assert theta.shape == (6,) and theta[5] == theta[SIGMA]
    assert full_theta(one, PYLASP_START).shape == (5,)
    with pytest.raises(ValueError, match="takes 5 or 6"):
        full_theta(per_segment, np.zeros(4))
    lower, upper = parameter_box(per_segment)
    assert lower[5] == lower[SIGMA] and upper[5] == upper[SIGMA] and lower.shape == (6,)
    x = x_from_theta(theta)
    np.testing.assert_allclose(theta_from_x(x), theta, rtol=1e-15)
    assert x[5] == x[4] and len(x_box(per_segment)[0]) == 6   # each σ normalised as sigma
    # a single segment, or no segments, has one broadening whatever the option says
    grid = lamost_fit_grid(emulator.grid)
    assert build_forward_model(emulator, grid, segment_broadening=True).broadenings == 1
    assert build_forward_model(emulator, grid, segments=SEGMENTS[:1],
                               segment_broadening=True).broadenings == 1


def test_segment_of_pixels():
    np.testing.assert_array_equal(segment_of_pixels(10, [(0, 3), (5, 8)]),
                                  [0, 0, 0, 0, 0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(segment_of_pixels(6, [(2, 4), (4, 6)]), [0, 0, 0, 0, 1, 1])


def test_each_segment_is_broadened_with_its_own_sigma(models):
    """Equal widths give the one-σ model exactly; a segment's pixels are the one-σ model at that
    segment's width, bit for bit."""
    one, per_segment = models
    theta = theta_from_physical(5600.0, 4.1, -0.2, rv=40.0, sigma_px=1.3)
    np.testing.assert_array_equal(broadened(per_segment, full_theta(per_segment, theta)),
                                  broadened(one, jnp.asarray(theta)))
    wide = full_theta(per_segment, theta).at[5].set(2.7)
    both = np.asarray(broadened(per_segment, wide))
    first = np.asarray(per_segment.sigma_segment) == 0
    assert 700 < first.sum() < both.size - 500
    plain = np.asarray(broadened(one, jnp.asarray(theta)))
    np.testing.assert_array_equal(both[first], plain[first])
    at_second = jnp.asarray(theta).at[SIGMA].set(2.7)
    np.testing.assert_array_equal(both[~first], np.asarray(broadened(one, at_second))[~first])


@pytest.mark.slow
def test_native_arms_are_broadened_with_their_own_sigma(emulator):
    """Two overlapping arms of different pixel sizes: each arm's pixels are the one-σ native
    model at its own width."""
    blue = np.linspace(4400.0, 5000.0, 1201)           # 0.5 Å pixels
    red = np.linspace(4950.0, 5550.0, 751)             # 0.8 Å pixels
    pixels = PixelGrid.from_edges(blue, red)
    one = build_forward_model(emulator, pixels=pixels)
    arms = build_forward_model(emulator, pixels=pixels, segment_broadening=True)
    assert arms.broadenings == 2 and n_parameters(arms) == 6
    theta = theta_from_physical(6100.0, 4.3, -0.4, rv=-20.0, sigma_px=0.9)
    both = np.asarray(broadened(arms, full_theta(arms, theta).at[5].set(2.2)))
    (a0, a1), (b0, b1) = pixels.ranges
    plain = np.asarray(broadened(one, jnp.asarray(theta)))
    np.testing.assert_array_equal(both[a0:a1], plain[a0:a1])
    np.testing.assert_array_equal(
        both[b0:b1], np.asarray(broadened(one, jnp.asarray(theta).at[SIGMA].set(2.2)))[b0:b1])


@pytest.mark.slow
def test_the_jacobian_is_the_derivative_of_the_residuals(models):
    _, fm = models
    theta = jnp.asarray(two_sigma_truth(fm)[0])
    flux = broadened(fm, theta) * 1.05
    weights = jnp.asarray(fitted_pixels(fm), flux.dtype)
    resid, jac = residuals_and_jacobian(fm, theta + 0.01, flux, weights)
    expected = jax.jacfwd(lambda th: residuals(fm, th, flux, weights))(theta + 0.01)
    np.testing.assert_allclose(resid, residuals(fm, theta + 0.01, flux, weights), rtol=1e-12,
                               atol=1e-14)
    np.testing.assert_allclose(jac, expected.T, rtol=0, atol=1e-9 * float(jnp.max(jnp.abs(jac))))


@pytest.fixture(scope="module")
def noise_free(models):
    """Noise-free spectra of two stars whose segments differ in width, and their truth."""
    _, fm = models
    truth = two_sigma_truth(fm)
    flux = np.stack([np.asarray(broadened(fm, jnp.asarray(t))) for t in truth])
    weights = np.ones_like(flux) * np.asarray(fitted_pixels(fm))
    return flux, weights, truth


@pytest.mark.slow
def test_lm_and_the_global_start_recover_each_segments_sigma(models, noise_free):
    """Exact on noise-free spectra: LM from PyLASP's start and the global start (with profile
    errors) both reach the truth; one σ for both segments cannot (its best fit is biased)."""
    one, fm = models
    flux, weights, truth = noise_free
    start = np.tile(PYLASP_START, (2, 1))
    result = fit_batch(fm, start, flux, weights)
    assert result.theta.shape == (2, 6) and result.covariance.shape == (2, 6, 6)
    np.testing.assert_allclose(result.theta, truth, rtol=0, atol=1e-7)
    assert np.all(result.converged)
    global_start = fit_multistart(fm, flux, weights)
    np.testing.assert_allclose(global_start.theta, truth, rtol=0, atol=1e-7)
    assert np.all(global_start.converged)
    single = fit_batch(one, start, flux, weights)
    assert np.all(np.asarray(single.loss) > 1e3 * np.asarray(result.loss))
    assert np.max(np.abs(np.asarray(single.theta)[:, 3] - truth[:, 3])) > 0.05   # log g biased


@pytest.mark.slow
def test_adam_and_clean_fit_each_segments_sigma(models, noise_free):
    _, fm = models
    flux, weights, truth = noise_free
    start = np.tile(PYLASP_START, (2, 1))
    adam, _ = fit_batch_adam(fm, start, flux, weights)
    assert adam.theta.shape == (2, 6)
    np.testing.assert_allclose(np.asarray(adam.theta)[:, list(sigma_indices(fm))],
                               truth[:, list(sigma_indices(fm))], atol=0.1)
    np.testing.assert_allclose(np.exp(adam.theta[:, 2]), np.exp(truth[:, 2]), rtol=0.01)
    noisy = flux * (1 + 0.01 * np.random.default_rng(3).standard_normal(flux.shape))
    noisy[:, 300] *= 1.5    # a cosmic ray for Clean
    clean = fit_batch(fm, start, noisy, weights, use_clean=True)
    assert np.all(clean.converged) and np.all(np.asarray(clean.n_clean) >= 1)
    pull = (np.asarray(clean.theta) - truth) / np.sqrt(np.diagonal(clean.covariance, axis1=1,
                                                                   axis2=2))
    assert np.all(np.abs(pull) < 5), pull


def test_columns_and_flags_of_further_segments(models):
    """The result columns gain sigma_2 … in km/s, after "sigma"."""
    from jaxlasp.fit.driver import FitResult

    _, fm = models
    theta = two_sigma_truth(fm)
    result = FitResult(theta, np.tile(np.eye(6), (2, 1, 1)) * 1e-4, np.ones(2), np.ones(2, int),
                       np.zeros(2, int), np.zeros(2, int), np.ones((2, 10), bool),
                       np.ones(2, bool), np.zeros(2, int))
    columns = result_columns(result, fm.grid)
    np.testing.assert_allclose(columns["sigma_2"], C_KMS * np.expm1(LAMOST_LN_STEP * theta[:, 5]))
    table = make_table(["a", "b"], columns, ["", ""])
    assert table.colnames.index("sigma_2") == table.colnames.index("sigma") + 1
    assert str(table["sigma_2"].unit) == "km / s" and "segment 2" in table["sigma_2"].description


@pytest.mark.slow
def test_a_narrow_second_segment_is_flagged_undersampled(models):
    """Every segment's σ is checked against the resolved width, not only the first one's."""
    _, fm = models
    theta = two_sigma_truth(fm, ((1.2, 0.3), (1.2, 1.4)))
    flux = np.stack([np.asarray(broadened(fm, jnp.asarray(t))) for t in theta])
    weights = np.ones_like(flux) * np.asarray(fitted_pixels(fm))
    result = fit_batch(fm, theta, flux, weights)
    assert [bool(f & UNDERSAMPLED) for f in np.asarray(result.flags)] == [True, False]


# ------------------------------------------------------------------ real LAMOST spectra

EXTRA_SIGMA = 1.5
"""Extra Gaussian width [pixels] put on the red segment of a real spectrum."""


@pytest.fixture(scope="module")
def degraded(tmp_path_factory):
    """A real LAMOST file and a copy whose red half (≥ 4950 Å, the second segment) is convolved
    with a Gaussian of EXTRA_SIGMA pixels: an arm of lower resolution."""
    from scipy.ndimage import gaussian_filter1d

    def degrade(wavelength, flux, ivar):
        red = wavelength >= 4950.0 * (1 + 2.8e-4)    # vacuum wavelengths
        flux[red] = gaussian_filter1d(flux[red].astype(np.float64), EXTRA_SIGMA, mode="nearest",
                                      truncate=5.0)

    source = need(SAMPLE / "fits" / "3706009.fits")
    path = tmp_path_factory.mktemp("degraded") / "degraded.fits"
    return source, edited_lamost_copy(source, path, degrade)


@pytest.mark.slow
def test_a_real_spectrum_with_a_blurred_segment(degraded, elodie):
    """The blurred segment's σ grows as Gaussians add (σ₂² + 1.5²), the other's stays, and the
    stellar parameters move by less than their errors; without a σ per segment the one σ is a
    compromise."""
    from jaxlasp.api import fit_files

    kwargs = dict(start=(6000.0, 4.0, 0.0), errors="laplace", segments=SEGMENTS)
    table = fit_files(list(degraded), elodie, segment_broadening=True, **kwargs)
    assert list(table["converged"]) == [True, True]
    assert "sigma_2" in table.colnames
    to_px = lambda kms: np.log1p(np.asarray(kms) / C_KMS) / LAMOST_LN_STEP  # noqa: E731
    first, second = to_px(table["sigma"]), to_px(table["sigma_2"])
    assert first[1] == pytest.approx(first[0], abs=0.1)
    assert second[1] == pytest.approx(np.hypot(second[0], EXTRA_SIGMA), rel=0.08)
    for name in ("teff", "logg", "feh"):
        assert abs(table[name][1] - table[name][0]) < table[f"{name}_err"][0], name
    single = fit_files([degraded[1]], elodie, **kwargs)
    assert first[1] < to_px(single["sigma"])[0] < second[1]
    assert "sigma_2" not in single.colnames


@pytest.mark.slow
def test_cli_segment_broadening_catalog_and_resume(degraded, tmp_path, capsys):
    from jaxlasp.cli import main
    from jaxlasp.io.catalog import read_catalog

    output = tmp_path / "c.csv"
    common = [str(degraded[0]), str(degraded[1]), "--model", str(need(ELODIE)), "--start",
              "6000,4,0", "--errors", "laplace", "--segments", "4200-4900,5000-5700", "-q",
              "--group-size", "2", "-o", str(output)]   # fit_files' batch above
    assert main(["fit", *common, "--segment-broadening"]) == 0
    catalog = read_catalog(output)
    assert json.loads(catalog.meta["options"])["segment_broadening"] is True
    assert catalog.colnames.index("sigma_2") == catalog.colnames.index("sigma") + 1
    assert np.all(np.isfinite(catalog["sigma_2"])) and str(catalog["sigma_2"].unit) == "km / s"
    assert catalog["sigma_2"][1] > catalog["sigma_2"][0]
    assert main(["fit", *common, "--resume", "--segment-broadening"]) == 0   # nothing to do
    assert len(read_catalog(output)) == 2
    assert main(["fit", *common, "--resume"]) == 2
    assert "segment_broadening" in capsys.readouterr().err
    plot = tmp_path / "fit.png"
    assert main(["plot", str(degraded[1]), "--model", str(need(ELODIE)), "--from-catalog",
                 str(output), "-o", str(plot)]) == 0
    assert plot.stat().st_size > 10_000


def test_a_single_window_with_segment_broadening_says_what_it_does(caplog):
    from jaxlasp.api import DEMO_MODEL
    from jaxlasp.pipeline import FitOptions, prepare_model

    with caplog.at_level("WARNING", logger="jaxlasp"):
        fm = prepare_model(DEMO_MODEL, FitOptions(segment_broadening=True))
    assert fm.broadenings == 1 and "single window" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="jaxlasp"):
        fm = prepare_model(DEMO_MODEL, FitOptions(segment_broadening=True, segments=SEGMENTS))
    assert fm.broadenings == 2 and "single window" not in caplog.text
