"""The library's face: fit in-memory batches, spectra given as arrays, or spectrum files, and get
an astropy Table (one row per spectrum). The machinery below it, shared with the pipeline and the
CLI, is ``jaxlasp.groups``."""
from __future__ import annotations

import math
import warnings

import numpy as np

from jaxlasp.grids import LogGrid, PixelGrid, lamost_fit_grid, window_note
from jaxlasp.groups.columns import (
    NOT_FITTED,
    READ_ERROR,
    describe_flags,
    empty_columns,
    fitted_columns,
    make_table,
    put_rows,
)
from jaxlasp.groups.fitting import check_method, fit, fit_spectrum_group
from jaxlasp.groups.inputs import (
    DEFAULT_START,
    DEMO_MODEL,
    GLOBAL_START,
    ReadResult,
    initial_points,
    load_model,
    mask_weights,
    read_for_fit,
)
from jaxlasp.io import SpectrumFileError, cut_to_grid, spectrum_from_arrays
from jaxlasp.io.arrays import ALIGN_TOLERANCE, specutils_arrays
from jaxlasp.io.lamost import VACUUM_LN_SHIFT
from jaxlasp.model import build_forward_model, fitted_pixels
from jaxlasp.spectral.continuum import DEGREE
from jaxlasp.spectral.masks import check_intervals, fit_window

__all__ = ["DEFAULT_START", "DEMO_MODEL", "GLOBAL_START", "NOT_FITTED", "PYLASP", "READ_ERROR",
           "describe_flags", "fit_arrays", "fit_files", "fit_spectra", "load_model"]

PYLASP = {"start": DEFAULT_START, "errors": "laplace"}
"""PyLASP's setting, one keyword away from the defaults: ``fit_files(paths, model, **PYLASP)``
(its fixed start (7500 K, 3.5, −0.5) and curve_fit's Laplace errors)."""


def fit_arrays(flux, model, *, weights=None, ids=None, grid: LogGrid | None = None,
               method: str = "lm", clean: bool = False, start=GLOBAL_START,
               max_iter: int | None = None, devices: int | None = None,
               errors: str = "profile", mask=None, mdegree: int = DEGREE, adegree: int = -1,
               segments=(), segment_broadening: bool = False):
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
    grid then spans the segments. segment_broadening: each segment gets its own broadening σ
    (segments of different resolution); the table gains columns "sigma_2", … ("sigma" is the
    first segment's).
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
    fm = build_forward_model(emulator, grid, degree=mdegree, adegree=adegree, segments=segments,
                             segment_broadening=segment_broadening)
    weights = mask_weights(weights, mask, grid) * fitted_pixels(fm)
    theta0 = initial_points(start, len(flux), fm)
    result = fit(fm, theta0, flux, weights, method=method, clean=clean, max_iter=max_iter,
                 devices=devices, errors=errors)
    columns = fitted_columns(result, theta0, weights, grid)
    return make_table(ids, columns, [describe_flags(f) for f in columns["flags"]])


def fit_files(paths, model, *, method: str = "lm", clean: bool = False, start=GLOBAL_START,
              window=None, weighting: str = "none", max_iter: int | None = None,
              devices: int | None = None, errors: str = "profile", mask=None,
              mdegree: int = DEGREE, adegree: int = -1, segments=(), native: bool = True,
              segment_broadening: bool = False):
    """Fit spectrum files (LAMOST DR9/DR10, DESI coadds, … see ``jaxlasp.io.read_spectra``);
    returns an astropy Table with one row per spectrum, in input order.

    The defaults are the CLI's (``jaxlasp fit``): the global start and profile errors; PyLASP's
    setting is ``**PYLASP``. A file that cannot be read (or a spectrum that does not cover the
    window) gets a row of NaNs with ``converged = False``, flag ``READ_ERROR`` and the reason;
    the others are fitted as one batch. ``errors``: "profile" or "laplace" (PyLASP's), as in
    ``fit_arrays``. ``mask``: wavelength intervals ((lo, hi), … [Å]) left out of every fit.
    ``mdegree``, ``adegree``: the polynomials' degrees, and ``segments`` and
    ``segment_broadening``, as in ``fit_arrays`` (a σ for each segment: each of ``segments``, or
    each camera of native pixels); ``window`` (default 4200–5700 Å) is the span of the segments
    when they are given.
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
                      mask=mask, mdegree=mdegree, adegree=adegree,
                      segment_broadening=segment_broadening)


def fit_spectra(wavelength, flux=None, ivar=None, *, model, pixel_mask=None, vacuum: bool = False,
                ids=None, method: str = "lm", clean: bool = False, start=GLOBAL_START,
                window=None, weighting: str = "none", max_iter: int | None = None,
                devices: int | None = None, errors: str = "profile", mask=None,
                mdegree: int = DEGREE, adegree: int = -1, segments=(), native: bool = False,
                segment_broadening: bool = False):
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
                      mask=mask, mdegree=mdegree, adegree=adegree,
                      segment_broadening=segment_broadening)


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
               segment_broadening: bool, **options):
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
        polynomials = dict(degree=mdegree, adegree=adegree, segment_broadening=segment_broadening)
        fm = (build_forward_model(emulator, grid, segments=segments, **polynomials)
              if pixels is None else build_forward_model(emulator, pixels=pixels, **polynomials))
        fitted, fit_reasons = fit_spectrum_group(fm, [reads[i].spectrum for i in ok], **options)
        put_rows(columns, ok, fitted)
        for k, i in enumerate(ok):
            reasons[i] = fit_reasons[k]
    return make_table([r.id for r in reads], columns, reasons)
