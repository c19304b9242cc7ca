"""A group of spectra through the fit: start (fixed or global), the optimiser, Clean and the
errors as one batch (split over local devices), then the catalog columns."""
from __future__ import annotations

from contextlib import nullcontext
from functools import cache

import jax
import numpy as np

from jaxlasp.fit.driver import FitResult
from jaxlasp.fit.errors import check_errors, profile_errors
from jaxlasp.fit.start import fit_multistart, fit_one_method
from jaxlasp.groups.columns import INPUT_FLAG_SHIFT, describe_flags, fitted_columns
from jaxlasp.groups.inputs import DEFAULT_START, initial_points, lamost_weights, mask_weights
from jaxlasp.model import ForwardModel, fitted_pixels, observed_grid, parameter_grid
from jaxlasp.parallel.devices import device_mesh, run_sharded

METHODS = ("lm", "adam", "curvefit")


def check_method(method: str) -> None:
    """Raise ValueError for an unknown optimiser name."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")


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
