"""The additive Legendre polynomial (--adegree) fitted with the multiplicative one."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ELODIE, SAMPLE, need
from helpers import edited_lamost_copy
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlasp.spectral.continuum import combined_fit, legendre_basis


@pytest.mark.slow
@settings(deadline=None, max_examples=30)
@given(st.integers(0, 6), st.integers(0, 3), st.integers(0, 2**31 - 1))
def test_combined_fit_against_lstsq(mdegree, adegree, seed):
    rng = np.random.default_rng(seed)
    n = 200
    model = 1.0 + 0.3 * rng.random(n)
    flux = model * (2.0 + rng.normal(0, 0.1, n)) + rng.normal(0, 0.2, n)
    weights = rng.random(n) * (rng.random(n) > 0.2)
    basis, additive = legendre_basis(n, mdegree), legendre_basis(n, adegree)
    fit = combined_fit(model, flux, weights, basis, additive)
    design = np.concatenate([model[:, None] * basis, additive], axis=1)
    root = np.sqrt(weights)[:, None]
    coefs = np.linalg.lstsq(design * root, flux * root[:, 0], rcond=None)[0]
    np.testing.assert_allclose(fit.coefs, coefs[:mdegree + 1], rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(fit.additive, additive @ coefs[mdegree + 1:], rtol=1e-8,
                               atol=1e-10)


@pytest.mark.slow
def test_without_an_additive_polynomial_the_model_is_unchanged(demo_fm):
    """``adegree=-1`` is the default forward model, bit for bit (the PyLASP path); with an
    additive polynomial the Jacobian is that of the residuals."""
    import jax
    import jax.numpy as jnp

    from jaxlasp.model import build_forward_model, components, residuals_and_jacobian

    theta = jnp.array([0.3, 1.2, np.log(5800.0), 4.2, -0.3])
    weights = jnp.ones(demo_fm.grid.n)
    flux = components(demo_fm, theta + 0.01, weights, weights).model
    explicit = build_forward_model(_demo(), demo_fm.grid, adegree=-1)
    for a, b in zip(components(explicit, theta, flux, weights), components(demo_fm, theta, flux,
                                                                            weights)):
        np.testing.assert_array_equal(a, b)
    with_constant = build_forward_model(_demo(), demo_fm.grid, adegree=0)
    resid, jac = residuals_and_jacobian(with_constant, theta, flux + 0.2, weights)
    np.testing.assert_allclose(jac.T, jax.jacfwd(lambda t: components(
        with_constant, t, flux + 0.2, weights).residuals)(theta), rtol=1e-9, atol=1e-12)
    segmented = build_forward_model(_demo(), demo_fm.grid, adegree=1,
                                    segments=((4200.0, 4900.0), (5000.0, 5700.0)))
    inside = jnp.asarray(np.any(np.asarray(segmented.design.multiplicative) != 0, axis=1), float)
    resid, jac = residuals_and_jacobian(segmented, theta, flux + 0.2, weights * inside)
    np.testing.assert_allclose(jac.T, jax.jacfwd(lambda t: components(
        segmented, t, flux + 0.2, weights * inside).residuals)(theta), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(resid, components(segmented, theta, flux + 0.2,
                                                 weights * inside).residuals, atol=1e-14)
    comps = components(with_constant, theta, flux + 0.2, weights)
    assert np.std(comps.additive) < 1e-12 and abs(float(comps.additive[0])) > 0  # a constant


def _demo():
    from jaxlasp.emulators.demo import demo_emulator

    return demo_emulator()


# ---------------------------------------------------------------- the real sample


@pytest.fixture(scope="module")
def scattered(tmp_path_factory):
    """A real LAMOST file and a copy with 30 % of its median flux added (scattered light)."""
    def add_light(wavelength, flux, ivar):
        flux += 0.3 * np.median(flux)

    source = need(SAMPLE / "fits" / "3706009.fits")
    path = tmp_path_factory.mktemp("scattered") / "scattered.fits"
    return source, edited_lamost_copy(source, path, add_light)


@pytest.mark.slow
@pytest.mark.parametrize("method, clean", [("lm", False), ("lm", True), ("adam", False)])
def test_a_constant_added_to_the_flux_changes_nothing_with_adegree_0(scattered, elodie, method,
                                                                     clean):
    from jaxlasp.api import fit_files

    kwargs = dict(start=(6000.0, 4.0, 0.0), errors="laplace", method=method, clean=clean)
    additive = fit_files(list(scattered), elodie, adegree=0, **kwargs)
    assert list(additive["converged"]) == [True, True]
    for name in ("rv", "teff", "logg", "feh"):
        assert additive[name][1] == pytest.approx(additive[name][0], rel=1e-6, abs=1e-6), name
    if method == "lm" and not clean:
        plain = fit_files(list(scattered), elodie, **kwargs)
        moved = [abs(plain[n][1] - plain[n][0]) / plain[f"{n}_err"][0] for n in ("teff", "feh")]
        assert max(moved) > 1.0  # without the additive term the offset biases the fit


@pytest.mark.slow
def test_cli_degrees_reach_the_catalog_options(scattered, tmp_path, capsys):
    from jaxlasp.cli import main
    from jaxlasp.io.catalog import read_catalog

    output = tmp_path / "c.ecsv"
    common = [str(scattered[0]), "--model", str(need(ELODIE)), "--start", "6000,4,0",
              "--errors", "laplace", "-q", "--group-size", "2"]
    assert main(["fit", *common, "--adegree", "0", "--mdegree", "40", "-o", str(output)]) == 0
    options = json.loads(read_catalog(output).meta["options"])
    assert (options["adegree"], options["mdegree"]) == (0, 40)
    for bad in (["--adegree", "-2"], ["--mdegree", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", *common, *bad, "-o", str(tmp_path / "bad.ecsv")])
        assert exit_info.value.code == 2
        assert bad[0] in capsys.readouterr().err
