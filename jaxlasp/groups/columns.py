"""Catalog columns of a group's fit: the physical values and errors from a ``FitResult``, the
result flags and their names, rows that are no result, and the astropy Table they make."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxlasp.fit.driver import FLAG_NAMES, FitResult
from jaxlasp.grids import C_KMS, LogGrid
from jaxlasp.io.lamost import FEW_GOOD_PIXELS, NONFINITE_FLUX, NONPOSITIVE_FLUX
from jaxlasp.model import FEH, LN_TEFF, LOGG, MU, SIGMA, STELLAR_PARAMETERS

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


def broadening_columns(names) -> tuple[str, ...]:
    """The columns of further segments' broadening among ``names`` ("sigma_2", "sigma_3", …:
    fits with a σ per segment, where "sigma" is the first segment's), in segment order."""
    found = [name for name in names
             if name.startswith("sigma_") and name[6:].isdigit() and int(name[6:]) >= 2]
    return tuple(sorted(found, key=lambda name: int(name[6:])))


def with_broadening(names: Sequence[str], extra: Sequence[str]) -> tuple[str, ...]:
    """``names`` with the broadening columns ``extra`` inserted after "sigma"."""
    at = list(names).index("sigma") + 1
    return (*names[:at], *extra, *names[at:])


def describe(name: str) -> str:
    """A column's description (``DESCRIPTIONS``, and the per-segment broadening columns)."""
    if name in broadening_columns([name]):
        return f"Gaussian broadening of the model in segment {name[6:]} (σ per segment)"
    return DESCRIPTIONS[name]


def unit(name: str) -> str | None:
    """A column's unit (``UNITS``; km/s for the per-segment broadening columns)."""
    return "km/s" if name in broadening_columns([name]) else UNITS.get(name)


def result_columns(result: FitResult, grid: LogGrid, weights=None) -> dict[str, np.ndarray]:
    """Physical columns (RV, Teff, … with errors) from a batch result; ``n_pixels``: the pixels
    the final fit used (weight > 0, when ``weights`` are given, and in the final mask)."""
    theta = np.asarray(result.theta)
    used = np.asarray(result.mask, bool)
    if weights is not None:
        used = used & (np.asarray(weights) > 0)
    err = np.sqrt(np.abs(np.diagonal(np.asarray(result.covariance), axis1=1, axis2=2)))
    teff = np.exp(theta[:, LN_TEFF])
    to_kms = lambda sigma: C_KMS * np.expm1(grid.step * sigma)  # noqa: E731
    return {
        "rv": C_KMS * np.expm1(grid.step * theta[:, MU]),
        "rv_err": C_KMS * grid.step * np.exp(grid.step * theta[:, MU]) * err[:, MU],
        "teff": teff, "teff_err": teff * err[:, LN_TEFF],
        "logg": theta[:, LOGG], "logg_err": err[:, LOGG],
        "feh": theta[:, FEH], "feh_err": err[:, FEH],
        "sigma": to_kms(theta[:, SIGMA]),
        **{f"sigma_{k}": to_kms(theta[:, index])
           for k, index in enumerate(range(STELLAR_PARAMETERS, theta.shape[1]), start=2)},
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
    """An astropy Table with ``COLUMNS`` (and the ``broadening_columns`` of ``columns``), units
    and descriptions in the column metadata."""
    from astropy.table import Table

    names = with_broadening(COLUMNS, broadening_columns(columns))
    table = Table({"id": np.asarray(ids, dtype=str), **columns, "reason": np.asarray(reasons, str)},
                  names=names)
    for name in names:
        table[name].unit = unit(name)
        table[name].description = describe(name)
    return table


def empty_columns(n: int) -> dict[str, np.ndarray]:
    """Result columns for ``n`` spectra that were not fitted: NaN values, flag ``READ_ERROR``."""
    columns = {name: np.full(n, np.nan) for name in COLUMNS[1:-6]}
    columns.update({name: np.zeros(n, np.int64) for name in INTEGER_COLUMNS},
                   converged=np.zeros(n, bool), flags=np.full(n, READ_ERROR, np.int64))
    return columns


def put_rows(columns: dict[str, np.ndarray], rows, fitted: dict[str, np.ndarray]) -> None:
    """Write the ``fitted`` columns of some spectra into ``columns`` at ``rows``; a broadening
    column the others lack (spectra with more segments) is added, NaN for them."""
    size = len(columns["flags"])
    for name, values in fitted.items():
        if name not in columns:
            columns[name] = np.full(size, np.nan)
        columns[name][rows] = values[:len(rows)]


PARAMETER_COLUMNS = ("rv", "rv_err", "teff", "teff_err", "logg", "logg_err", "feh", "feh_err",
                     "sigma")
"""Columns that hold a fitted parameter or its error."""


MIN_USABLE_PIXELS = 4
"""Fewer pixels with weight > 0 than this and a fit is no result (PyLASP's limit, §c.6)."""


def fitted_columns(result: FitResult, theta0, weights, grid: LogGrid) -> dict[str, np.ndarray]:
    """``result_columns`` with the rows that are no result blanked (``blank_unfitted``)."""
    columns = result_columns(result, grid, weights)
    moved = (np.ones(len(columns["n_iter"]), bool) if theta0 is None
             else np.any(np.asarray(result.theta) != np.asarray(theta0), axis=1))
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
    for name in (*PARAMETER_COLUMNS, *broadening_columns(columns)):
        columns[name] = np.where(unfitted, np.nan, columns[name])
    columns["flags"] = columns["flags"] | np.where(unfitted, NOT_FITTED, 0)
    columns["converged"] = np.asarray(columns["converged"], bool) & ~unfitted
