"""Batch fitting on real spectra: batch = one at a time, flags instead of exceptions, tables."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ELODIE, SAMPLE, need

from jaxlasp.api import PYLASP, READ_ERROR, fit_arrays, fit_files
from jaxlasp.fit.driver import FEW_PIXELS, NONFINITE

IDS = ["3706009", "3709197", "3713139"]


@pytest.fixture(scope="module")
def paths():
    return [need(SAMPLE / "fits" / f"{i}.fits") for i in IDS]


@pytest.fixture(scope="module")
def batch_table(paths):
    return fit_files(paths, need(ELODIE), **PYLASP)


@pytest.mark.slow
def test_batch_equals_one_at_a_time(paths, batch_table):
    for k, path in enumerate(paths):
        single = fit_files([path], ELODIE, **PYLASP)
        for col in ("rv", "teff", "logg", "feh", "teff_err", "loss"):
            assert single[col][0] == pytest.approx(batch_table[col][k], rel=1e-8), col
        assert single["n_iter"][0] == batch_table["n_iter"][k]


def test_table_columns_and_units(batch_table):
    assert batch_table.colnames == ["id", "rv", "rv_err", "teff", "teff_err", "logg",
                                    "logg_err", "feh", "feh_err", "sigma", "loss", "n_iter",
                                    "n_clean", "n_pixels", "converged", "flags", "reason"]
    assert list(batch_table["n_pixels"]) == [1326] * len(IDS)  # 1327 less PyLASP's last pixel
    assert str(batch_table["teff"].unit) == "K" and str(batch_table["rv"].unit) == "km / s"
    assert list(batch_table["id"]) == IDS


def test_bad_file_gets_a_row_and_the_rest_are_fitted(paths, batch_table, tmp_path):
    junk = tmp_path / "junk.fits"
    junk.write_text("not a FITS file")
    table = fit_files([paths[0], junk, paths[1]], ELODIE, **PYLASP)
    assert list(table["id"]) == [IDS[0], "junk", IDS[1]]
    assert table["flags"][1] == READ_ERROR and not table["converged"][1]
    assert np.isnan(table["teff"][1]) and "junk.fits" in table["reason"][1]
    assert table["teff"][0] == pytest.approx(batch_table["teff"][0], rel=1e-8)
    assert table["teff"][2] == pytest.approx(batch_table["teff"][1], rel=1e-8)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lm", "curvefit"])
def test_unusable_spectra_are_flagged_not_raised(elodie, method):
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.io import cut_to_grid, read_lamost

    grid = lamost_fit_grid(elodie.grid)
    good = cut_to_grid(read_lamost(SAMPLE / "fits" / "3706009.fits"), grid).normalised_flux()
    flux = np.stack([good, np.full(grid.n, np.nan), good])
    weights = np.ones_like(flux)
    weights[2, 60:] = 0.0  # only 60 usable pixels
    table = fit_arrays(flux, elodie, weights=weights, method=method, **PYLASP)
    assert table["converged"][0] and table["flags"][0] == 0
    assert table["flags"][1] & NONFINITE and not table["converged"][1]
    assert table["flags"][2] & FEW_PIXELS and not table["converged"][2]
    assert "nonfinite" in table["reason"][1]
    assert "few_pixels" in table["reason"][2] and table["reason"][0] == ""


def test_out_of_domain_start_is_a_clear_error(elodie):
    with pytest.raises(ValueError, match="outside the model's valid domain"):
        fit_arrays(np.ones((1, 1327)), elodie, start=(50000.0, 3.5, -0.5))


def test_per_spectrum_starts(paths):
    table = fit_files(paths[:2], ELODIE, start=[(5900.0, 4.2, -0.3), (6000.0, 4.1, -0.4)],
                      errors="laplace")
    assert np.all(table["converged"])


@pytest.mark.slow
def test_iteration_cap_is_flagged(paths):
    from jaxlasp.fit.driver import NOT_CONVERGED

    table = fit_files(paths[:1], ELODIE, max_iter=2, **PYLASP)
    assert table["flags"][0] & NOT_CONVERGED and not table["converged"][0]
    assert table["n_iter"][0] == 2


def test_degenerate_solution_is_flagged(elodie):
    """Below σ ≈ 0.2 px the truncated kernel is one node: mu and σ stop acting on the model; the
    fit is also flagged undersampled (σ < RESOLVED_SIGMA)."""
    import jax.numpy as jnp

    from jaxlasp.fit.driver import DEGENERATE, UNDERSAMPLED, fit_batch
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.groups.inputs import lamost_weights, start_points
    from jaxlasp.io import cut_to_grid, read_lamost
    from jaxlasp.model import SIGMA, build_forward_model

    grid = lamost_fit_grid(elodie.grid)
    spectrum = cut_to_grid(read_lamost(SAMPLE / "fits" / "3709139.fits"), grid)
    theta0 = start_points((4600.0, 4.5, -0.1), 2)
    theta0[0, SIGMA] = 0.15
    flux = np.stack([spectrum.normalised_flux()] * 2)
    weights = np.stack([lamost_weights(spectrum, "none")] * 2)
    result = fit_batch(build_forward_model(elodie, grid), jnp.asarray(theta0), flux, weights)
    assert int(result.flags[0]) & DEGENERATE and not bool(result.converged[0])
    assert not int(result.flags[1]) & DEGENERATE and bool(result.converged[1])
    assert int(result.flags[0]) & UNDERSAMPLED and not int(result.flags[1]) & UNDERSAMPLED


@pytest.mark.slow
def test_adam_through_the_same_entry_point(paths, batch_table):
    table = fit_files(paths, ELODIE, method="adam", **PYLASP)
    assert list(table["id"]) == IDS and np.all(table["converged"])
    for col in ("teff", "logg", "feh", "rv"):
        assert np.all(np.abs(table[col] - batch_table[col]) < 0.2 * batch_table[col + "_err"]), col


def test_unknown_method_is_an_error(paths):
    with pytest.raises(ValueError, match="method must be one of"):
        fit_files(paths, ELODIE, method="bfgs")


def test_unknown_path_is_an_error(elodie):
    from jaxlasp.fit.driver import fit_batch
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.model import build_forward_model

    fm = build_forward_model(elodie, lamost_fit_grid(elodie.grid))
    with pytest.raises(ValueError, match="path must be one of"):
        fit_batch(fm, np.zeros((1, 5)), np.ones((1, 1327)), np.ones((1, 1327)), path="scipy")



def test_clean_rounds_traced_in_one_loop_follow_the_eager_rounds(monkeypatch):
    """Inside jit (as under shard_map) the Clean rounds are one lax.fori_loop over all 10; called
    eagerly they stop when no spectrum cycles. With stand-ins for the fit (θ moves by the round's
    ftol, its iterations say whether it started warm) and the Clean call (one more pixel rejected
    per call, spectrum k's mask changed k + 1 times, the start kept or moved in turn), both give
    the same θ, masks, counts and iterations, on MINPACK's path (whose ftol depends on the round
    and the start rule) and the exact one (whose damping does)."""
    import jax
    import jax.numpy as jnp

    from jaxlasp.fit import driver, lm
    from jaxlasp.fit.clean import CleanResult

    def fit_cycle(fm, path, theta, flux, weights, ftol, xtol, max_iter, active, n_active, slots,
                  damping):
        moved = theta + ftol[:, None] * jnp.sum(weights, axis=1, keepdims=True)
        return moved, jnp.where(damping < 0.5, 3, 5), jnp.full(len(theta), lm.FTOL)

    def clean_step(fm, start, theta, flux, weights, good, initial, first_call):
        rejected = jnp.sum(~good, axis=1)
        mask = good & (jnp.arange(good.shape[1]) != rejected[:, None])
        changed = rejected < jnp.arange(len(good)) + 1
        sigma = jnp.where((rejected % 2 == 0) | first_call, 2.0, 1.0)   # keep the start, or not
        counts = jnp.stack([rejected + 1, rejected, 0 * rejected], axis=1)
        result = CleanResult(jnp.where(changed[:, None], mask, good), sigma, counts, changed)
        return result, jnp.ones(len(good)), jnp.ones(len(good))

    monkeypatch.setattr(driver, "fit_cycle", fit_cycle)
    monkeypatch.setattr(driver, "clean_step", clean_step)
    theta0 = np.tile([0.0, 1.0, 8.6, 4.0, 0.0], (12, 1)) + np.arange(12)[:, None]
    flux = weights = np.ones((12, 20))
    for path in ("curvefit", "exact"):
        def schedule(theta0, flux, weights, path=path):
            return driver.run_clean_schedule(None, theta0, flux, weights, ftol=1e-10,
                                             xtol=1e-10, max_iter=100, path=path)

        eager, traced = schedule(theta0, flux, weights), jax.jit(schedule)(theta0, flux, weights)
        # spectrum k: k + 1 calls that change its mask and one that does not, at most 10
        np.testing.assert_array_equal(eager.n_cycles, np.minimum(np.arange(12) + 2, 10))
        for name in eager._fields:
            np.testing.assert_array_equal(getattr(traced, name), getattr(eager, name), name)
