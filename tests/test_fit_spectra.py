"""``jaxlasp.fit_spectra``: spectra as arrays on their own wavelength grids, in one call, and the
same defaults in the library and the CLI."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
from conftest import ELODIE, SAMPLE, need

from jaxlasp import PYLASP, fit_arrays, fit_files, fit_spectra
from jaxlasp.pipeline import FitOptions

START = {"start": (6000.0, 4.0, 0.0), "errors": "laplace"}
FILES = ("3706009", "3713134")


def lamost_arrays(name):
    """(vacuum wavelength, flux, ivar) of a LAMOST file's COADD table, as a user reads them."""
    from astropy.io import fits

    row = fits.getdata(need(SAMPLE / "fits" / f"{name}.fits"), "COADD")[0]
    return (np.asarray(row["WAVELENGTH"], np.float64), np.asarray(row["FLUX"], np.float64),
            np.asarray(row["IVAR"], np.float64))


@pytest.fixture(scope="module")
def from_files():
    return fit_files([need(SAMPLE / "fits" / f"{n}.fits") for n in FILES], need(ELODIE), **START)


def test_a_files_own_arrays_give_the_files_fit(from_files):
    wave, flux, ivar = zip(*(lamost_arrays(n) for n in FILES))
    table = fit_spectra(list(wave), list(flux), list(ivar), model=ELODIE, vacuum=True,
                        ids=FILES, **START)
    assert list(table["id"]) == list(FILES)
    for name in ("rv", "teff", "logg", "feh", "teff_err", "loss", "n_pixels", "flags"):
        np.testing.assert_array_equal(table[name], from_files[name], err_msg=name)


def test_vacuum_wavelengths_given_as_air_are_refused_naming_the_keyword():
    wave, flux, ivar = lamost_arrays(FILES[0])
    with pytest.raises(ValueError, match="pass vacuum=True"):
        fit_spectra(wave, flux, ivar, model=ELODIE, **START)


@pytest.mark.slow
def test_any_grid_is_resampled_onto_the_fit_grid(from_files):
    """The same spectrum on a linear 1 Å grid (air): fitted on LAMOST's pixels after a
    flux-conserving resampling, close to the file's fit."""
    wave, flux, _ = lamost_arrays(FILES[0])
    air = wave * np.exp(-2.8e-4)  # roughly air; the grid below is what the fit sees
    linear = np.arange(4150.0, 5750.0, 1.0)
    resampled = np.interp(linear, air, flux)
    table = fit_spectra(linear, resampled, model=ELODIE, **START)
    assert len(table) == 1 and bool(table["converged"][0])
    assert abs(table["teff"][0] - from_files["teff"][0]) < 150.0
    assert abs(table["feh"][0] - from_files["feh"][0]) < 0.15


def test_shapes_are_checked():
    wave, flux, _ = lamost_arrays(FILES[0])
    with pytest.raises(ValueError, match="flux rows"):
        fit_spectra([wave, wave], [flux], model=ELODIE, **START)
    with pytest.raises(ValueError, match="ids"):
        fit_spectra(wave, flux, model=ELODIE, ids=["a", "b"], vacuum=True, **START)
    with pytest.raises(ValueError, match="flux is required"):
        fit_spectra(wave, model=ELODIE)


def test_a_spectrum_outside_the_window_is_a_flagged_row_not_an_error():
    wave, flux, _ = lamost_arrays(FILES[0])
    red = wave > 6000.0
    table = fit_spectra([wave, wave[red]], [flux, flux[red]], model=ELODIE, vacuum=True,
                        **START)
    assert list(table["converged"]) == [True, False]
    assert "window" in table["reason"][1] or "cover" in table["reason"][1]


def test_library_and_cli_share_their_defaults():
    """fit_files, fit_arrays and fit_spectra default to what ``jaxlasp fit`` does (FitOptions);
    PYLASP is PyLASP's fixed start and Laplace errors."""
    options = FitOptions()
    for function in (fit_files, fit_arrays, fit_spectra):
        defaults = {name: p.default for name, p in inspect.signature(function).parameters.items()}
        for name in ("method", "clean", "start", "errors", "mdegree", "adegree"):
            if name in defaults:
                assert defaults[name] == getattr(options, name), (function.__name__, name)
        if "weighting" in defaults:
            assert defaults["weighting"] == options.weighting
    assert PYLASP == {"start": (7500.0, 3.5, -0.5), "errors": "laplace"}


@pytest.mark.slow
def test_native_pixels_of_a_lamost_file_give_its_lattice_fit(from_files):
    """A LAMOST spectrum's pixels are the lattice: fitted natively (the model broadened on the
    lattice and resampled onto the same pixels) it gives the file's fit, to a small part of the
    errors (the native fit keeps the last pixel and sees real model flux past the window)."""
    wave, flux, ivar = zip(*(lamost_arrays(n) for n in FILES))
    table = fit_spectra(list(wave), list(flux), list(ivar), model=ELODIE, vacuum=True,
                        ids=FILES, native=True, **START)
    for name in ("rv", "teff", "logg", "feh"):
        diff = np.abs(table[name] - from_files[name]) / from_files[f"{name}_err"]
        assert np.all(diff < 0.1), (name, diff)
    assert np.all(np.abs(table["n_pixels"] - from_files["n_pixels"]) <= 2)


@pytest.mark.slow
def test_a_linear_grid_fitted_natively(from_files):
    """The spectrum interpolated onto a linear 1 Å grid, fitted on those pixels (the model is
    resampled, not the data): close to the file's fit."""
    wave, flux, _ = lamost_arrays(FILES[0])
    air = wave * np.exp(-2.8e-4)
    linear = np.arange(4150.0, 5750.0, 1.0)
    table = fit_spectra(linear, np.interp(linear, air, flux), model=ELODIE, native=True, **START)
    assert bool(table["converged"][0]) and table["n_pixels"][0] == 1501
    assert abs(table["teff"][0] - from_files["teff"][0]) < 150.0
    assert abs(table["feh"][0] - from_files["feh"][0]) < 0.15
