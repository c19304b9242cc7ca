"""High-level entry points: fit in-memory batches or LAMOST files, get an astropy Table."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from contextlib import nullcontext
from functools import cache
from typing import NamedTuple

import jax
import numpy as np

from jaxlasp.emulators.demo import demo_emulator
from jaxlasp.emulators.tgm import TGMEmulator
from jaxlasp.fit.driver import FLAG_NAMES, FitResult
from jaxlasp.fit.errors import check_errors, profile_errors
from jaxlasp.fit.start import fit_multistart, fit_one_method
from jaxlasp.grids import C_KMS, LogGrid, PixelGrid, lamost_fit_grid, window_note
from jaxlasp.io import SpectrumFileError, cut_to_grid, read_spectra, read_tgm, spectrum_from_arrays
from jaxlasp.io.arrays import ALIGN_TOLERANCE, specutils_arrays
from jaxlasp.io.lamost import (
    FEW_GOOD_PIXELS,
    NONFINITE_FLUX,
    NONPOSITIVE_FLUX,
    VACUUM_LN_SHIFT,
    Spectrum,
    file_stem,
)
from jaxlasp.io.model_files import is_named_model, named_model_path
from jaxlasp.model import (
    FEH,
    LN_TEFF,
    LOGG,
    MU,
    SIGMA,
    ForwardModel,
    build_forward_model,
    fitted_pixels,
    observed_grid,
    parameter_grid,
    theta_from_physical,
)
from jaxlasp.parallel.devices import device_mesh, run_sharded
from jaxlasp.spectral.continuum import DEGREE
from jaxlasp.spectral.masks import check_intervals, fit_window, masked_pixels

DEFAULT_START = (7500.0, 3.5, -0.5)
"""Start (Teff [K], log g, [Fe/H]) of PyLASP's shipped runs; mu = 0, σ = 1 pixel."""
PYLASP = {"start": DEFAULT_START, "errors": "laplace"}
"""PyLASP's setting, one keyword away from the defaults: ``fit_files(paths, model, **PYLASP)``
(its fixed start (7500 K, 3.5, −0.5) and curve_fit's Laplace errors)."""
READ_ERROR = 32
"""Result flag: the file could not be read or does not cover the window (see ``reason``)."""
NOT_FITTED = 4096
"""Result flag (catalogs): the fit never ran or never left its start and did not converge; its
parameters and errors are NaN rather than the start point."""
INPUT_FLAG_SHIFT = 8
"""Reader flags (``jaxlasp.io.lamost``) are stored in the result flags shifted by this many bits."""
COLUMNS = ("id", "rv", "rv_err", "teff", "teff_err", "logg", "logg_err", "feh", "feh_err",
           "sigma", "loss", "n_iter", "n_clean", "n_pixels", "converged", "flags", "reason")
INTEGER_COLUMNS = ("n_iter", "n_clean", "n_pixels", "flags")
DESCRIPTIONS = {
    "id": "spectrum identifier (file stem, or the survey's id for multi-spectrum files)",
    "rv": "radial velocity", "rv_err": "RV error", "teff": "effective temperature",
    "teff_err": "Teff error", "logg": "surface gravity log10(g / cm s-2)",
    "logg_err": "log g error", "feh": "metallicity [Fe/H]", "feh_err": "[Fe/H] error",
    "sigma": "Gaussian broadening of the model (instrument and star)",
    "loss": "RMS weighted residual over the pixels used",
    "n_iter": "optimiser iterations (summed over Clean cycles)",
    "n_clean": "pixels rejected by Clean", "n_pixels": "pixels the final fit used",
    "converged": "the fit converged with no failure flag",
    "flags": "bit flags (README: Conventions and flags)", "reason": "names of the flags set, "
    "or why the file could not be read",
    "path": "input file, as given (resume matches it by its resolved real path)"}
"""Column descriptions, kept in the catalog's metadata (ECSV, Parquet, FITS comments)."""
UNITS = {"rv": "km/s", "rv_err": "km/s", "teff": "K", "teff_err": "K", "logg": "dex",
         "logg_err": "dex", "feh": "dex", "feh_err": "dex", "sigma": "km/s"}


DEMO_MODEL = "demo"
"""Model name of the embedded demo emulator (``jaxlasp.emulators.demo``; synthetic, not ELODIE)."""


def load_model(model) -> TGMEmulator:
    """A TGM emulator from a path, a named model (``"elodie32"``: fetched once into the user's
    cache, ``jaxlasp.io.model_files``), ``DEMO_MODEL`` or an already loaded emulator."""
    if isinstance(model, TGMEmulator):
        return model
    if model == DEMO_MODEL:
        return demo_emulator()
    if is_named_model(model):
        model = named_model_path(model)

    return read_tgm(model)


def start_points(start, batch: int) -> np.ndarray:
    """θ₀ (batch, 5) from (Teff, log g, [Fe/H]) or per-spectrum (batch, 3) starts; mu 0, σ 1 px."""
    start = np.broadcast_to(np.asarray(start, np.float64), (batch, 3))
    return theta_from_physical(start[:, 0], start[:, 1], start[:, 2], rv=0.0, sigma_px=1.0)


def check_start(theta0: np.ndarray, fm: ForwardModel) -> None:
    """Raise ValueError when a start point lies outside the emulator's domain."""
    dom = fm.emulator.domain
    inside = dom.contains(np.exp(theta0[:, LN_TEFF]), theta0[:, LOGG], theta0[:, FEH])
    if not np.all(inside):
        bad = np.flatnonzero(~np.asarray(inside))[0]
        raise ValueError(f"start point {bad} (Teff {math.exp(theta0[bad, LN_TEFF]):.0f} K, log g "
                         f"{theta0[bad, LOGG]}, [Fe/H] {theta0[bad, FEH]}) is outside the model's "
                         f"valid domain Teff {dom.teff} K, log g {dom.logg}, [Fe/H] {dom.feh}")


def result_columns(result: FitResult, grid: LogGrid, weights=None) -> dict[str, np.ndarray]:
    """Physical columns (RV, Teff, … with errors) from a batch result; ``n_pixels``: the pixels
    the final fit used (weight > 0, when ``weights`` are given, and in the final mask)."""
    theta = np.asarray(result.theta)
    used = np.asarray(result.mask, bool)
    if weights is not None:
        used = used & (np.asarray(weights) > 0)
    err = np.sqrt(np.abs(np.diagonal(np.asarray(result.covariance), axis1=1, axis2=2)))
    teff = np.exp(theta[:, LN_TEFF])
    return {
        "rv": C_KMS * np.expm1(grid.step * theta[:, MU]),
        "rv_err": C_KMS * grid.step * np.exp(grid.step * theta[:, MU]) * err[:, MU],
        "teff": teff, "teff_err": teff * err[:, LN_TEFF],
        "logg": theta[:, LOGG], "logg_err": err[:, LOGG],
        "feh": theta[:, FEH], "feh_err": err[:, FEH],
        "sigma": C_KMS * np.expm1(grid.step * theta[:, SIGMA]),
        "loss": np.asarray(result.loss), "n_iter": np.asarray(result.n_iter),
        "n_clean": np.asarray(result.n_clean), "n_pixels": np.count_nonzero(used, axis=1),
        "converged": np.asarray(result.converged),
        "flags": np.asarray(result.flags).astype(np.int64),
    }


RESULT_FLAG_NAMES = {**FLAG_NAMES, READ_ERROR: "read_error", NOT_FITTED: "not_fitted",
                     NONFINITE_FLUX << INPUT_FLAG_SHIFT: "nonfinite_flux",
                     NONPOSITIVE_FLUX << INPUT_FLAG_SHIFT: "nonpositive_flux",
                     FEW_GOOD_PIXELS << INPUT_FLAG_SHIFT: "few_good_pixels"}
"""Names of every bit of a result's ``flags``: the fit's, READ_ERROR, and the reader's."""


def describe_flags(flags: int) -> str:
    """Comma-separated names of the flags set in ``flags`` ("" when none)."""
    return ",".join(name for bit, name in RESULT_FLAG_NAMES.items() if int(flags) & bit)


def make_table(ids: Sequence[str], columns: dict, reasons: Sequence[str]):
    """An astropy Table with ``COLUMNS`` and units in the column metadata."""
    from astropy.table import Table

    table = Table({"id": np.asarray(ids, dtype=str), **columns, "reason": np.asarray(reasons, str)},
                  names=COLUMNS)
    for name, unit in UNITS.items():
        table[name].unit = unit
    for name in COLUMNS:
        table[name].description = DESCRIPTIONS[name]
    return table


METHODS = ("lm", "adam", "curvefit")


GLOBAL_START = "global"
"""``start=GLOBAL_START``: the global start of ``jaxlasp.fit.start`` (grid scan, best
candidates)."""


def initial_points(start, batch: int, fm: ForwardModel):
    """θ₀ (batch, 5) for ``start`` (checked against the domain), or None for the global start."""
    if isinstance(start, str):
        if start != GLOBAL_START:
            raise ValueError(f"start must be {GLOBAL_START!r} or (Teff, log g, [Fe/H]), "
                             f"not {start!r}")
        return None
    theta0 = start_points(start, batch)
    check_start(theta0, fm)
    return theta0


@cache
def group_fitter(method: str, clean: bool, max_iter: int | None, global_start: bool,
                 errors: str = "laplace"):
    """The batch fit as a function of arrays: (fm, flux, weights) for the global start, else
    (fm, θ₀, flux, weights); one function object per setting, so compiled programs are reused.
    ``errors``: "profile" (covariance rescaled to the χ² profile, ``jaxlasp.fit.errors``) or
    "laplace" (curve_fit's). Keyword ``timer``: a ``jaxlasp.timing.StageClock`` that gets each
    stage's time (the stages then block on their results; not inside ``shard_map``)."""
    check_errors(errors)
    if global_start:
        def fit_group(fm, flux, weights, timer=None):
            return fit_multistart(fm, flux, weights, method=method, clean=clean,
                                  max_iter=max_iter, errors=errors, timer=timer)
    else:
        def fit_group(fm, theta0, flux, weights, timer=None):
            stage = timer or untimed
            with stage("fit"):
                result = fit_one_method(fm, theta0, flux, weights, method=method, clean=clean,
                                        max_iter=max_iter)
                result = jax.block_until_ready(result) if timer else result
            if errors != "profile":
                return result
            with stage("errors"):
                result = profile_errors(fm, result, flux, weights)
                return jax.block_until_ready(result) if timer else result
    return fit_group


def untimed(stage: str):
    """A stage timer that measures nothing (``timer=None``)."""
    return nullcontext()


def fit(fm: ForwardModel, theta0, flux, weights, *, method: str, clean: bool,
        max_iter: int | None, devices: int | None = None, errors: str = "laplace",
        timer=None) -> FitResult:
    """Run the chosen optimiser on a batch from θ₀, or from the global start when θ₀ is None
    (``max_iter`` None: the method's default). ``devices``: local devices to split the batch
    over (None: all of the default backend; ``jaxlasp.parallel.devices``). ``errors``:
    "profile" or "laplace" (``group_fitter``). ``timer``: a ``jaxlasp.timing.StageClock`` for
    the stage split (single device only)."""
    fit_group = group_fitter(method, clean, max_iter, theta0 is None, errors)
    batch = (flux, weights) if theta0 is None else (theta0, flux, weights)
    mesh = device_mesh(devices)
    if mesh.size == 1:
        return fit_group(fm, *batch, timer=timer)
    return run_sharded(fit_group, mesh, fm, *(np.asarray(a) for a in batch))


def check_method(method: str) -> None:
    """Raise ValueError for an unknown optimiser name."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")


def fit_arrays(flux, model, *, weights=None, ids=None, grid: LogGrid | None = None,
               method: str = "lm", clean: bool = False, start=GLOBAL_START,
               max_iter: int | None = None, devices: int | None = None,
               errors: str = "profile", mask=None, mdegree: int = DEGREE, adegree: int = -1,
               segments=()):
    """Fit spectra already on one observed grid; returns an astropy Table (one row per spectrum).

    flux: (b, n) flux (any scale: the multiplicative polynomial absorbs it).
    model: TGM file path or ``TGMEmulator``. grid: the spectra's ln-λ grid (default: PyLASP's
    LAMOST 4200–5700 Å grid for this model). weights: (b, n) 1/err² times the good-pixel mask
    (default: all ones). start: (Teff, log g, [Fe/H]), (b, 3) per-spectrum starts, or
    "global" for the global start (a grid scan scored by χ², then fits from the best distinct
    candidates: robust against the regime traps of a fixed start, about five fixed-start fits'
    cost, ``jaxlasp.fit.start``).
    method: "lm" (Levenberg–Marquardt), "adam" (per-spectrum Adam, ``jaxlasp.fit.adam``) or
    "curvefit" (LASP-CurveFit's own path, to reproduce its results: ``fit_batch(path="curvefit")``).
    devices: local devices the batch is split over (None: all; ``jaxlasp.parallel.devices``).
    errors: "profile" (default: curve_fit's covariance rescaled to the width of the χ² profile,
    calibrated on mock spectra where the Laplace errors are too small, at about 1.5 LM fits
    more per spectrum; ``jaxlasp.fit.errors``) or "laplace" (curve_fit's (JᵀJ)⁻¹·χ²/(M − 5), as
    PyLASP reports). The defaults are the CLI's (global start, profile errors); PyLASP's
    setting is ``**PYLASP`` (start (7500, 3.5, −0.5), Laplace errors). For spectra on their
    own wavelength grids use ``fit_spectra``.
    mask: pixels left out of the fit, Clean and the polynomial: wavelength intervals
    ((lo, hi), … [Å] on ``grid``) or a boolean array (n,) or (b, n), True where left out. The
    table's ``n_pixels`` counts the pixels each fit used; a spectrum with fewer than
    ``MIN_USABLE_PIXELS`` is flagged ``not_fitted`` with NaN parameters.
    mdegree, adegree: degrees of the multiplicative (PyLASP: 50) and additive (−1: none, PyLASP;
    0: a constant, e.g. scattered light) Legendre polynomials, fitted together by linear least
    squares. segments: disjoint (lo, hi) [Å] windows fitted jointly (shared RV, Teff, log g,
    [Fe/H]), each with its own polynomials (multiplicative degree ``mdegree`` scaled to its
    length, ``jaxlasp.model.segment_degree``); the pixels between them are left out. The default
    grid then spans the segments.
    """
    check_method(method)
    emulator = load_model(model)
    segments = check_intervals(segments)
    grid = grid or lamost_fit_grid(emulator.grid, fit_window(None, segments))
    flux = np.atleast_2d(np.asarray(flux, np.float64))
    if flux.shape[1] != grid.n:
        raise ValueError(f"flux has {flux.shape[1]} pixels but the grid has {grid.n}")
    weights = np.ones_like(flux) if weights is None else np.broadcast_to(weights, flux.shape)
    ids = [str(i) for i in range(len(flux))] if ids is None else list(ids)
    fm = build_forward_model(emulator, grid, degree=mdegree, adegree=adegree, segments=segments)
    weights = mask_weights(weights, mask, grid) * fitted_pixels(fm)
    theta0 = initial_points(start, len(flux), fm)
    result = fit(fm, theta0, flux, weights, method=method, clean=clean, max_iter=max_iter,
                 devices=devices, errors=errors)
    columns = fitted_columns(result, theta0, weights, grid)
    return make_table(ids, columns, [describe_flags(f) for f in columns["flags"]])


def mask_weights(weights, mask, grid: LogGrid) -> np.ndarray:
    """``weights`` (b, n) with the masked pixels set to 0. ``mask``: None, wavelength intervals
    ((lo, hi), … [Å] on ``grid``, ``jaxlasp.spectral.masks``), or a boolean array (n,) or (b, n),
    True where a pixel is left out."""
    weights = np.asarray(weights, np.float64)
    if mask is None:
        return weights
    pixels = np.asarray(mask)
    if pixels.dtype == bool:
        if pixels.shape[-1] != weights.shape[-1] or pixels.ndim > 2:
            raise ValueError(f"a pixel mask has shape (n,) or (b, n) with n = {weights.shape[-1]}"
                             f" pixels, not {pixels.shape}")
        masked = np.broadcast_to(pixels, weights.shape)
    else:
        masked = masked_pixels(grid.centres, check_intervals(mask))
    return np.where(masked, 0.0, weights)


def lamost_weights(spectrum, weighting: str) -> np.ndarray:
    """Initial pixel weights for a LAMOST spectrum on its fit grid.

    "none" (PyLASP): 1 on finite pixels, with PyLASP's quirk of dropping the last pixel (§c.7;
    not on a spectrum on its own pixels, whose grid is a ``PixelGrid``).
    "ivar": IVAR on finite pixels with ANDMASK = 0, in units of the normalised flux.

    Either way a pixel whose flux is exactly 0 is left out: LAMOST writes 0 where a pixel has no
    data (the 25 DR10 sample files hold 240 such pixels, all at 9016–9099 Å past the red arm's
    data, with IVAR > 0 and ANDMASK 0), and fitted as flux such pixels drag the fit (10 of them
    in Mg b moved 3706009's Teff by 20 K). Negative values are the noise of faint spectra and
    stay (618 in the sample, 5 of them inside 4200–5700 Å, all with IVAR > 0). No sample pixel
    inside 4200–5700 Å is exactly 0, so the PyLASP comparisons are unchanged.
    """
    weights = (spectrum.finite & (spectrum.flux != 0)).astype(np.float64)
    if not isinstance(spectrum.grid, PixelGrid):
        weights[-1] = 0.0
    if weighting == "ivar":
        weights = weights * spectrum.ivar * spectrum.median**2 * (spectrum.andmask == 0)
    elif weighting != "none":
        raise ValueError(f"weighting must be 'none' or 'ivar', not {weighting!r}")
    return weights


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """Result columns for ``n`` spectra that were not fitted: NaN values, flag ``READ_ERROR``."""
    columns = {name: np.full(n, np.nan) for name in COLUMNS[1:-6]}
    columns.update({name: np.zeros(n, np.int64) for name in INTEGER_COLUMNS},
                   converged=np.zeros(n, bool), flags=np.full(n, READ_ERROR, np.int64))
    return columns


def fit_spectrum_group(fm: ForwardModel, spectra, *, method: str = "lm", clean: bool = False,
                start=DEFAULT_START, weighting: str = "none", max_iter: int | None = None,
                devices: int | None = None, errors: str = "laplace", mask=None, timer=None):
    """Fit spectra already cut to ``fm.grid`` (or on ``fm.pixels``, native) as one batch (split over
    ``devices`` local devices, None: all). ``mask``: pixels left out (``mask_weights``: wavelength
    intervals, or a boolean array (n,) or (b, n) on ``fm.grid``). ``timer``: a
    ``jaxlasp.timing.StageClock`` that gets the time of each stage (prepare, start, fit, clean,
    errors, columns).

    Returns (columns, reasons): the result columns of ``result_columns`` with the reader's flags
    added (shifted by ``INPUT_FLAG_SHIFT``) and unfitted rows blanked (``blank_unfitted``), and
    the names of the flags set per spectrum.
    """
    stage = timer or untimed
    with stage("prepare"):
        flux = np.stack([s.normalised_flux() for s in spectra])
        weights = mask_weights(np.stack([lamost_weights(s, weighting) for s in spectra]), mask,
                               observed_grid(fm)) * fitted_pixels(fm)
        theta0 = initial_points(start, len(spectra), fm)
    result = fit(fm, theta0, flux, weights, method=method, clean=clean, max_iter=max_iter,
                 devices=devices, errors=errors, timer=timer)
    with stage("columns"):
        columns = fitted_columns(result, theta0, weights, parameter_grid(fm))
        input_flags = np.array([s.flags for s in spectra], np.int64) << INPUT_FLAG_SHIFT
        columns["flags"] = columns["flags"] | input_flags
        return columns, [describe_flags(f) for f in columns["flags"]]


PARAMETER_COLUMNS = ("rv", "rv_err", "teff", "teff_err", "logg", "logg_err", "feh", "feh_err",
                     "sigma")
"""Columns that hold a fitted parameter or its error."""


MIN_USABLE_PIXELS = 4
"""Fewer pixels with weight > 0 than this and a fit is no result (PyLASP's limit, §c.6)."""


def fitted_columns(result: FitResult, theta0, weights, grid: LogGrid) -> dict[str, np.ndarray]:
    """``result_columns`` with the rows that are no result blanked (``blank_unfitted``)."""
    columns = result_columns(result, grid, weights)
    moved = (np.ones(len(columns["n_iter"]), bool) if theta0 is None
             else np.any(np.asarray(result.theta) != theta0, axis=1))
    blank_unfitted(columns, moved, columns["n_pixels"])
    return columns


def blank_unfitted(columns: dict[str, np.ndarray], moved: np.ndarray,
                   usable: np.ndarray | None = None) -> None:
    """Set the parameters and errors of rows that did not converge and whose fit never ran
    (n_iter 0) or never left its start (``moved`` False), and of rows with fewer than
    ``MIN_USABLE_PIXELS`` pixels used (``usable``), to NaN with flag ``NOT_FITTED``: a
    start point is no result. Fits that ran and moved keep their last values."""
    unfitted = ~np.asarray(columns["converged"], bool) & ((columns["n_iter"] == 0) | ~moved)
    if usable is not None:
        unfitted |= np.asarray(usable) < MIN_USABLE_PIXELS
    for name in PARAMETER_COLUMNS:
        columns[name] = np.where(unfitted, np.nan, columns[name])
    columns["flags"] = columns["flags"] | np.where(unfitted, NOT_FITTED, 0)
    columns["converged"] = np.asarray(columns["converged"], bool) & ~unfitted


class ReadResult(NamedTuple):
    """One spectrum of a file, cut to the fit grid (``spectrum``), or why not (``reason``)."""

    id: str
    spectrum: Spectrum | None
    reason: str


def read_for_fit(path, grid: LogGrid, window, format: str = "auto", *, native: bool = False,
                 segments=()) -> list[ReadResult]:
    """The spectra of one file (LAMOST, DESI or any registered format) cut to ``grid``, or with
    ``native`` kept on their own pixels where the reader can (DESI; ``read_spectra``), cut to
    ``segments`` (default: the window).

    A file that cannot be read gives one ReadResult without spectrum (id: the file stem); a
    spectrum of a readable file that does not cover the grid gives one for that spectrum only.
    """
    try:
        spectra = read_spectra(path, format, tuple(window), native=native,
                               windows=tuple(segments) or None)
    except (SpectrumFileError, ValueError, OSError) as err:
        return [ReadResult(file_stem(path), None, str(err))]
    results = []
    for spectrum in spectra:
        if isinstance(spectrum.grid, PixelGrid):
            results.append(ReadResult(spectrum.id, spectrum, ""))
            continue
        try:
            results.append(ReadResult(spectrum.id, cut_to_grid(spectrum, grid), ""))
        except ValueError as err:
            results.append(ReadResult(spectrum.id, None, f"{path}: {err}"))
    return results


def fit_files(paths, model, *, method: str = "lm", clean: bool = False, start=GLOBAL_START,
              window=None, weighting: str = "none", max_iter: int | None = None,
              devices: int | None = None, errors: str = "profile", mask=None,
              mdegree: int = DEGREE, adegree: int = -1, segments=(), native: bool = True):
    """Fit spectrum files (LAMOST DR9/DR10, DESI coadds, … see ``jaxlasp.io.read_spectra``);
    returns an astropy Table with one row per spectrum, in input order.

    The defaults are the CLI's (``jaxlasp fit``): the global start and profile errors; PyLASP's
    setting is ``**PYLASP``. A file that cannot be read (or a spectrum that does not cover the
    window) gets a row of NaNs with ``converged = False``, flag ``READ_ERROR`` and the reason;
    the others are fitted as one batch. ``errors``: "profile" or "laplace" (PyLASP's), as in
    ``fit_arrays``. ``mask``: wavelength intervals ((lo, hi), … [Å]) left out of every fit.
    ``mdegree``, ``adegree``: the polynomials' degrees, and ``segments``, as in ``fit_arrays``;
    ``window`` (default 4200–5700 Å) is the span of the segments when they are given.
    ``native`` (default): fit spectra on their own pixels where the reader has them (DESI: each
    camera a segment with its own polynomial, inside the window or each of ``segments``; the
    model is resampled onto the pixels, not the data onto LAMOST's lattice; ``jaxlasp.model``);
    False: join and resample DESI cameras onto the lattice, as before native pixels. Files on
    the lattice (LAMOST) are fitted the same either way.
    For many files use ``jaxlasp.pipeline.run`` (groups, progress, resume).
    """
    check_method(method)
    emulator, grid, window, segments = _fit_setup(model, window, segments)
    reads = [r for p in paths
             for r in read_for_fit(p, grid, window, native=native, segments=segments)]
    return _fit_reads(reads, emulator, grid, segments, method=method, clean=clean, start=start,
                      weighting=weighting, max_iter=max_iter, devices=devices, errors=errors,
                      mask=mask, mdegree=mdegree, adegree=adegree)


def fit_spectra(wavelength, flux=None, ivar=None, *, model, pixel_mask=None, vacuum: bool = False,
                ids=None, method: str = "lm", clean: bool = False, start=GLOBAL_START,
                window=None, weighting: str = "none", max_iter: int | None = None,
                devices: int | None = None, errors: str = "profile", mask=None,
                mdegree: int = DEGREE, adegree: int = -1, segments=(), native: bool = False):
    """Fit spectra given as arrays on their own wavelength grids; returns the Table of
    ``fit_files`` (one row per spectrum).

    wavelength: pixel centres [Å] (air unless ``vacuum``), (n,) shared by all spectra or (N, n),
    or a list of (n_i,) arrays; or a specutils ``Spectrum1D`` (or a list of them), with
    ``flux`` and ``ivar`` left None. flux: (n,) one spectrum, (N, n) or a list. ivar: inverse
    variances of the same shapes (default 1); used as weights with ``weighting="ivar"``.
    pixel_mask: True (or nonzero bits) where a pixel is bad, same shapes. Any grid that covers
    the window works: one uniform in ln λ on LAMOST's lattice keeps its pixels (as a LAMOST
    file's do), any other is resampled onto the lattice, flux-conserving. A ln-λ grid that lies
    on the lattice only with the other air/vacuum convention is refused with an error naming
    ``vacuum`` (a LAMOST file's own WAVELENGTH column is in vacuum). ``native``: every spectrum
    is fitted on its own pixels instead (cut to the window, or to each of ``segments``), the
    model resampled onto them; spectra sharing a wavelength array are fitted as one batch. ids:
    one per spectrum (default "0", "1", …). The other keywords and the defaults are
    ``fit_files``'.
    """
    check_method(method)
    emulator, grid, window, segments = _fit_setup(model, window, segments)
    inputs = _spectrum_inputs(wavelength, flux, ivar, pixel_mask)
    ids = [str(i) for i in range(len(inputs))] if ids is None else [str(i) for i in ids]
    if len(ids) != len(inputs):
        raise ValueError(f"{len(ids)} ids for {len(inputs)} spectra")
    if native:
        reads = [_native_arrays(id_, arrays, window, segments, vacuum)
                 for id_, arrays in zip(ids, inputs)]
    else:
        reads = [_arrays_for_fit(id_, arrays, grid, window, vacuum)
                 for id_, arrays in zip(ids, inputs)]
    return _fit_reads(reads, emulator, grid, segments, method=method, clean=clean, start=start,
                      weighting=weighting, max_iter=max_iter, devices=devices, errors=errors,
                      mask=mask, mdegree=mdegree, adegree=adegree)


def _spectrum_inputs(wavelength, flux, ivar, pixel_mask) -> list[tuple]:
    """Per spectrum: (wave, flux, ivar, mask) arrays (ivar and mask may be None)."""
    if hasattr(wavelength, "spectral_axis") or (
            isinstance(wavelength, (list, tuple)) and wavelength
            and hasattr(wavelength[0], "spectral_axis")):
        if flux is not None or ivar is not None or pixel_mask is not None:
            raise ValueError("a specutils spectrum carries its own flux, uncertainty and mask: "
                             "pass flux, ivar and pixel_mask only with a wavelength array")
        objects = wavelength if isinstance(wavelength, (list, tuple)) else [wavelength]
        return [specutils_arrays(one) for one in objects]
    if flux is None:
        raise ValueError("flux is required with a wavelength array")

    def rows(values, name):
        if values is None:
            return None
        if isinstance(values, (list, tuple)) and values and np.ndim(values[0]) == 1:
            return [np.asarray(v, np.float64) for v in values]
        array = np.asarray(values, np.float64)
        if array.ndim not in (1, 2):
            raise ValueError(f"{name} must be (n,), (N, n) or a list of (n_i,) arrays, not an "
                             f"array of shape {array.shape}")
        return [array] if array.ndim == 1 else list(array)

    fluxes = rows(flux, "flux")
    waves = rows(wavelength, "wavelength")
    if len(waves) == 1 and len(fluxes) > 1:
        waves = waves * len(fluxes)
    extra = [rows(values, name) or [None] * len(fluxes)
             for values, name in ((ivar, "ivar"), (pixel_mask, "pixel_mask"))]
    if any(len(v) != len(fluxes) for v in (waves, *extra)):
        raise ValueError(f"{len(fluxes)} flux rows but {[len(v) for v in (waves, *extra)]} "
                         "wavelength, ivar and pixel_mask rows")
    return list(zip(waves, fluxes, *extra))


def _arrays_for_fit(id_: str, arrays, grid: LogGrid, window, vacuum: bool) -> ReadResult:
    """One spectrum's (wave, flux, ivar, mask) cut to ``grid``: its own pixels when they are the
    grid's, else resampled onto them; a ReadResult with the reason when the arrays do not cover
    the window. ValueError for bad arrays, or pixels that fit the grid only under the other
    air/vacuum convention."""
    try:
        spectrum = spectrum_from_arrays(*arrays, id=id_, vacuum=vacuum, window=window)
        try:
            return ReadResult(id_, cut_to_grid(spectrum, grid), "")
        except ValueError:
            _check_convention(spectrum.grid, grid, vacuum)
        resampled = spectrum_from_arrays(*arrays, id=id_, vacuum=vacuum, window=window,
                                         resample=True)
        return ReadResult(id_, cut_to_grid(resampled, grid), "")
    except SpectrumFileError as err:
        return ReadResult(id_, None, str(err))


def _native_arrays(id_: str, arrays, window, segments, vacuum: bool) -> ReadResult:
    """One spectrum's (wave, flux, ivar, mask) on its own pixels inside the window (or each
    segment); a ReadResult with the reason when the arrays do not cover it."""
    try:
        return ReadResult(id_, spectrum_from_arrays(*arrays, id=id_, vacuum=vacuum, native=True,
                                                    windows=segments or [window]), "")
    except SpectrumFileError as err:
        return ReadResult(id_, None, str(err))


def _check_convention(own: LogGrid, grid: LogGrid, vacuum: bool) -> None:
    """Raise ValueError when ``own`` (a ln-λ grid taken as ``vacuum`` says) would lie on ``grid``'s
    pixels under the other air/vacuum convention."""
    if not math.isclose(own.step, grid.step, rel_tol=1e-6):
        return
    other = own.ln_start + (VACUUM_LN_SHIFT if vacuum else -VACUUM_LN_SHIFT)
    offset = (other - grid.ln_start) / grid.step
    if abs(offset - round(offset)) < ALIGN_TOLERANCE:
        said, meant = ("vacuum=True", "air") if vacuum else ("air (vacuum=False)", "vacuum")
        raise ValueError(f"the wavelengths lie on LAMOST's pixels only if they are in {meant}, "
                         f"but they were given as {said}: pass vacuum={not vacuum} "
                         "(a LAMOST file's WAVELENGTH column is in vacuum)")


def _fit_setup(model, window, segments):
    """(emulator, fit grid, window, segments) for the fitting functions' arguments."""
    segments = check_intervals(segments)
    window = fit_window(window, segments)
    emulator = load_model(model)
    grid = lamost_fit_grid(emulator.grid, window)
    if note := window_note(grid, window):
        warnings.warn(note, stacklevel=3)
    return emulator, grid, window, segments


def _fit_reads(reads, emulator, grid: LogGrid, segments, *, mdegree: int, adegree: int,
               **options):
    """The Table of ``reads`` (ReadResults): the readable ones fitted with ``options``
    (``fit_spectrum_group``'s), one batch per pixel grid (those on ``grid``, and each native
    ``PixelGrid``), the others as failure rows."""
    reasons = [r.reason for r in reads]
    batches: dict = {}
    for i, r in enumerate(reads):
        if r.spectrum is not None:
            own = r.spectrum.grid
            batches.setdefault(own if isinstance(own, PixelGrid) else None, []).append(i)
    columns = empty_columns(len(reads))
    for pixels, ok in batches.items():
        fm = (build_forward_model(emulator, grid, degree=mdegree, adegree=adegree,
                                  segments=segments) if pixels is None
              else build_forward_model(emulator, pixels=pixels, degree=mdegree, adegree=adegree))
        fitted, fit_reasons = fit_spectrum_group(fm, [reads[i].spectrum for i in ok], **options)
        for name, values in fitted.items():
            columns[name][ok] = values
        for k, i in enumerate(ok):
            reasons[i] = fit_reasons[k]
    return make_table([r.id for r in reads], columns, reasons)
