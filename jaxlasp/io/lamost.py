"""Read LAMOST low-resolution spectra (ALGORITHM §c) into host-side numpy arrays.

``Spectrum`` (alias ``LamostSpectrum``) is also the type every other reader returns
(``jaxlasp.io.readers``): a spectrum on an air ln-λ grid, truncated to a window.

Public DR9/DR10 layout: HDU0 is a header holding the wavelength solution (CRVAL1 = log10 Å of pixel
CRPIX1, CD1_1 or CDELT1 = log10 step, DC-FLAG = 1, VACUUM); HDU1 'COADD' is a one-row table with the
columns FLUX, IVAR and ANDMASK (plus others that are not used). The internal layout (PyLASP's
``public=False``) instead stores an image in HDU0 whose rows are flux, ivar, (unused), andmask.

Flags (bit values of ``Spectrum.flags``, computed on the spectrum's own pixels):

* ``NONFINITE_FLUX`` = 1: some flux value was NaN or ±inf and has been replaced (§c.6). For a
  resampled spectrum (DESI, arrays off a log-λ grid) a pixel without unmasked input data counts.
* ``NONPOSITIVE_FLUX`` = 2: some finite flux value is ≤ 0.
* ``FEW_GOOD_PIXELS`` = 4: at most 3 finite flux values; PyLASP refuses to fit such a spectrum.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from jaxlasp.grids import LinearGrid, LogGrid, log_grid_inside, window_pixels
from jaxlasp.io._fits import FitsFile, as_fits

NONFINITE_FLUX = 1
"""Flag: some flux value was not finite (or had no unmasked data) and has been replaced."""
NONPOSITIVE_FLUX = 2
"""Flag: some finite flux value is ≤ 0."""
FEW_GOOD_PIXELS = 4
"""Flag: at most 3 finite flux values (PyLASP raises an error for these)."""

VACUUM_LN_SHIFT = 0.00028
"""PyLASP's vacuum → air conversion: ln λ_air = ln λ_vac − 0.00028 (one refractive index, §c.4)."""
DEFAULT_WINDOW = (4200.0, 5700.0)
"""Wavelength window [Å] PyLASP truncates LAMOST spectra to (§c.5)."""


class SpectrumFileError(ValueError):
    """A file that cannot be read as a spectrum for fitting."""


@dataclass(frozen=True, eq=False)
class Spectrum:
    """One spectrum on a ln-λ grid (host-side numpy arrays, all of length ``grid.n``).

    id: LAMOST: the file stem (the obsid for the public files, e.g. '3706009'); DESI: TARGETID.
    grid: the pixels' air-wavelength grid (uniform in ln λ [ln Å]), or for a spectrum kept on
        its own pixels (``native``) a ``jaxlasp.grids.PixelGrid``.
    flux: flux, float32, not normalised (LAMOST: raw FLUX); non-finite values replaced (§c.6).
    ivar: inverse variance [flux⁻²], float32, with the same replacement (0 where a resampled
        spectrum has no unmasked data).
    andmask: mask bits, int32, 0 = good (LAMOST ANDMASK; DESI MASK bits of a pixel left
        without data by masking).
    median: the normaliser of §c.3; LAMOST: max(nanmedian(FLUX over all pixels of the file), 1).
    finite: bool, True where the flux was originally finite (resampled: had unmasked data).
    flags: bitwise OR of the module's flag constants.
    survey: what links the spectrum back to its survey, as far as the file says (keys of
        ``SURVEY_KEYS``): LAMOST obsid, ra, dec, snr_u … snr_z; DESI targetid, ra, dec.
    """

    id: str
    grid: LogGrid
    flux: np.ndarray
    ivar: np.ndarray
    andmask: np.ndarray
    median: float
    finite: np.ndarray
    flags: int
    survey: Mapping = field(default_factory=dict)

    def normalised_flux(self) -> np.ndarray:
        """flux / median, divided in float32 as PyLASP does, returned as float64."""
        return (self.flux / np.float32(self.median)).astype(np.float64)

    def sub(self, first: int, n: int) -> Spectrum:
        """The spectrum of pixels ``first .. first+n-1`` (flags recomputed on them)."""
        part = slice(first, first + n)
        return replace(make_spectrum(self.id, self.grid.sub(first, n), self.flux[part],
                                 self.ivar[part], self.andmask[part], self.median,
                                 self.finite[part]), survey=self.survey)


LamostSpectrum = Spectrum
"""The spectrum type's original name, kept for existing code."""


def read_lamost(source, window: tuple[float, float] = DEFAULT_WINDOW) -> Spectrum:
    """Read a LAMOST low-resolution FITS file and truncate it to ``window`` [Å] (§c.1–§c.6).

    source: the file's path, or the file already open (a ``FitsFile`` of ``jaxlasp.io._fits``).
    Only FLUX, IVAR and ANDMASK (or the internal layout's image) and the wavelength keywords are
    read. The wavelength solution comes from the header (air wavelengths, §c.4). The median
    normaliser is taken over the whole file before truncation. Non-finite flux and ivar values
    are replaced by ``fill_nonfinite``. Raises SpectrumFileError (naming the file) for an
    unreadable file, a missing flux table/column or wavelength header, a spectrum not covering
    the window, or a window without any finite flux.
    """
    with as_fits(source, SpectrumFileError) as file:
        path = file.path
        flux, ivar, andmask = _read_arrays(file)
        grid = _log_grid(file.headers[0], flux.size, path)
        survey = lamost_survey_values(file.headers[0])
    check_covers(grid, window, path)
    first, last = window_pixels(grid, *window)
    if not np.isfinite(flux[first:last + 1]).any():
        raise SpectrumFileError(f"{path}: no finite flux value in the window {window} Å")
    median = max(float(np.nanmedian(flux)), 1.0)
    spectrum = windowed_spectrum(file_stem(path), grid, flux, ivar, andmask, median, window, path)
    return replace(spectrum, survey=survey)


SURVEY_KEYS = ("obsid", "targetid", "ra", "dec", "snr_u", "snr_g", "snr_r", "snr_i", "snr_z")
"""The survey values a reader may give a spectrum (``Spectrum.survey``)."""
LAMOST_SURVEY_CARDS = {"obsid": "OBSID", "ra": "RA", "dec": "DEC", "snr_u": "SNRU",
                       "snr_g": "SNRG", "snr_r": "SNRR", "snr_i": "SNRI", "snr_z": "SNRZ"}
"""``Spectrum.survey`` keys and the LAMOST HDU0 keywords they come from."""


def lamost_survey_values(header: Mapping) -> dict:
    """The survey values of a LAMOST file's HDU0 header; keywords that are missing or not
    numbers are left out (the internal layout has fewer)."""
    values = {}
    for key, card in LAMOST_SURVEY_CARDS.items():
        value = header.get(card)
        if key == "obsid" and isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            values[key] = int(value) if key == "obsid" else float(value)
    return values


def windowed_spectrum(id_: str, grid: LogGrid, flux, ivar, andmask, median: float,
                      window: tuple[float, float] | None, source) -> Spectrum:
    """A ``Spectrum`` from full-length arrays on ``grid``, truncated to ``window`` [Å] (§c.5).

    flux, ivar (float32) and andmask (int32) have length ``grid.n``; NaN/±inf values are
    replaced by ``fill_nonfinite`` (§c.6) and ``finite`` records where the flux was finite.
    ``window`` None keeps every pixel. Raises SpectrumFileError naming ``source`` (a path or a
    description) when the grid does not cover the window.
    """
    first, last = 0, grid.n - 1
    if window is not None:
        check_covers(grid, window, source)
        first, last = window_pixels(grid, *window)
    part = slice(first, last + 1)
    return make_spectrum(id_, grid.sub(first, last - first + 1), fill_nonfinite(flux[part]),
                     fill_nonfinite(ivar[part]), andmask[part], median, np.isfinite(flux[part]))


def cut_to_grid(spectrum: Spectrum, grid: LogGrid) -> Spectrum:
    """The pixels of ``spectrum`` that coincide with ``grid``, which must be a sub-grid of its own.

    Raises ValueError if the two grids' steps differ, if ``grid`` starts a non-whole number of
    pixels (beyond 1e-6) into the spectrum, or if it does not lie fully inside it. The result's
    grid is built from the spectrum's own start, so it is exact.
    """
    own = spectrum.grid
    if not math.isclose(grid.step, own.step, rel_tol=1e-10):
        raise ValueError(f"the grids are not commensurate: ln-λ steps {grid.step!r} and "
                         f"{own.step!r} differ")
    offset = (grid.ln_start - own.ln_start) / own.step
    k0 = round(offset)
    if abs(offset - k0) >= 1e-6:
        raise ValueError(f"the grids are not commensurate: the grid starts {offset:.6f} pixels "
                         "into the spectrum, not a whole number")
    if k0 < 0 or k0 + grid.n > own.n:
        raise ValueError(
            f"the grid (pixels {k0}..{k0 + grid.n - 1} of the spectrum, "
            f"{grid.centres[0]:.3f}–{grid.centres[-1]:.3f} Å) is not inside spectrum "
            f"{spectrum.id} (pixels 0..{own.n - 1}, {own.centres[0]:.3f}–{own.centres[-1]:.3f} Å)"
        )
    return spectrum.sub(k0, grid.n)


def fit_grid(spectrum: Spectrum, model_grid: LinearGrid) -> LogGrid:
    """The ln-λ grid PyLASP fits on: the spectrum's pixels inside the model's coverage (§c.8, §d.2).

    For the sample (window 4200–5700 Å, ELODIE 4199.1–5700.3 Å) these are LAMOST pixels 552..1878.
    """
    centres = spectrum.grid.centres
    return log_grid_inside(model_grid, spectrum.grid.step, centres[0], centres[-1])


def fill_nonfinite(values: np.ndarray) -> np.ndarray:
    """A copy with non-finite values replaced as PyLASP does (§c.6).

    Each non-finite value takes its next pixel's value (the last pixel its own); values still
    non-finite then take their previous pixel's value (the first pixel its own); anything left
    becomes 0. Each step reads the values as they were before that step.
    """
    out = np.array(values, copy=True)
    for shift in (1, -1):
        bad = np.flatnonzero(~np.isfinite(out))
        if not bad.size:
            return out
        out[bad] = out[np.clip(bad + shift, 0, out.size - 1)]
    out[~np.isfinite(out)] = 0
    return out


def make_spectrum(id_, grid, flux, ivar, andmask, median, finite) -> Spectrum:
    """Assemble a Spectrum, computing its flags."""
    flags = ((NONFINITE_FLUX if not finite.all() else 0)
             | (NONPOSITIVE_FLUX if np.any(flux[finite] <= 0) else 0)
             | (FEW_GOOD_PIXELS if np.count_nonzero(finite) <= 3 else 0))
    return Spectrum(id_, grid, flux, ivar, andmask, median, finite, flags)


def _read_arrays(file: FitsFile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(flux float32, ivar float32, andmask int32) of the whole file, public or internal layout.

    Public: the first binary table named COADD, row 0 of its FLUX, IVAR and ANDMASK columns.
    Internal: rows 0, 1 and 3 of a 2-D image in HDU0. A missing IVAR column gives ivar ≡ 1
    (PyLASP's err ≡ 1) and a missing ANDMASK gives 0.
    """
    coadd = next((i for i, name in enumerate(file.names)
                  if name == "COADD" and file.is_table(i)), None)
    if coadd is not None:
        names = file.column_names(coadd)
        if "FLUX" not in names:
            raise SpectrumFileError(f"{file.path}: the COADD table has no FLUX column "
                                    f"(columns: {sorted(names)})")
        rows = {k: np.atleast_2d(v)[0]
                for k, v in file.columns(coadd, ("FLUX", "IVAR", "ANDMASK")).items()}
        flux = rows["FLUX"]
        ivar, andmask = rows.get("IVAR"), rows.get("ANDMASK")
    else:
        image = file.image(0)
        if image is None or image.ndim != 2 or image.shape[0] < 2:
            raise SpectrumFileError(
                f"{file.path}: no 'COADD' table with a FLUX column (public layout) and no flux "
                f"image in HDU0 (internal layout); HDUs found: {list(file.names)}"
            )
        flux, ivar = image[0], image[1]
        andmask = image[3] if image.shape[0] > 3 else None
    ivar = np.ones_like(flux) if ivar is None else ivar
    andmask = np.zeros(flux.shape) if andmask is None else andmask
    return (flux.astype(np.float32), ivar.astype(np.float32),
            np.nan_to_num(andmask).astype(np.int32))


def _log_grid(header: Mapping, n: int, path) -> LogGrid:
    """The air ln-λ grid of the file's n pixels from its HDU0 header keywords (§c.4)."""
    start, step = header.get("CRVAL1"), header.get("CD1_1", header.get("CDELT1"))
    if not isinstance(start, (int, float)) or not isinstance(step, (int, float)) or step <= 0:
        raise SpectrumFileError(
            f"{path}: wavelength header missing: needs numeric CRVAL1 and a positive CD1_1 or "
            f"CDELT1 in HDU0 (found CRVAL1={start!r}, step={step!r})"
        )
    dc_flag = header.get("DC-FLAG")
    if dc_flag != 1:
        raise SpectrumFileError(f"{path}: DC-FLAG is {dc_flag!r}; only spectra sampled "
                                "uniformly in log λ (DC-FLAG = 1) are supported")
    start = start - (header.get("CRPIX1", 1) - 1) * step
    ln10 = math.log(10.0) if start <= 5 else 1.0  # start ≤ 5: log10 Å, otherwise already ln Å
    ln_start = start * ln10 - (VACUUM_LN_SHIFT if header.get("VACUUM", False) else 0.0)
    return LogGrid(ln_start, step * ln10, n)


def check_covers(grid: LogGrid, window: tuple[float, float], path) -> None:
    """Raise SpectrumFileError (naming ``path``) unless the window [Å] lies inside ``grid``
    (to PyLASP's 0.01-pixel tolerance of §c.5)."""
    lo, hi = window
    tol = 0.01 * grid.step
    if not (math.log(lo) >= grid.ln_start - tol
            and math.log(hi) <= grid.ln_centres[-1] + tol and lo < hi):
        centres = grid.centres
        raise SpectrumFileError(
            f"{path}: the spectrum covers {centres[0]:.1f}–{centres[-1]:.1f} Å, which does not "
            f"include the window {lo}–{hi} Å"
        )


def file_stem(path) -> str:
    """The file name without .gz and .fits/.fit endings."""
    name = Path(path).name
    name = name[:-3] if name.lower().endswith(".gz") else name
    return name.rsplit(".", 1)[0] if name.lower().endswith((".fits", ".fit")) else name


def write_lamost(path, grid: LogGrid, flux, ivar=None, andmask=None) -> None:
    """Write one spectrum in the public LAMOST DR10 layout (``read_lamost`` reads it back).

    grid: the pixels' air ln-λ grid (written as log10 CRVAL1/CD1_1, VACUUM = False).
    flux, ivar [flux⁻²], andmask (0 = good): arrays of ``grid.n`` values (ivar default 1,
    andmask default 0). Written atomically (temp file, then rename). Needs astropy.
    """
    import os
    import tempfile

    from astropy.io import fits

    flux = np.asarray(flux, np.float32)
    if flux.shape != (grid.n,):
        raise ValueError(f"flux has shape {flux.shape}, the grid {grid.n} pixels")
    ivar = np.ones_like(flux) if ivar is None else np.asarray(ivar, np.float32)
    andmask = np.zeros(grid.n, np.int32) if andmask is None else np.asarray(andmask, np.int32)
    ln10 = math.log(10.0)
    header = fits.Header({"CRVAL1": grid.ln_start / ln10, "CD1_1": grid.step / ln10,
                          "CRPIX1": 1, "DC-FLAG": 1, "VACUUM": False})
    columns = [fits.Column(name, format=f"{grid.n}{code}", array=values[None])
               for name, code, values in (("FLUX", "E", flux), ("IVAR", "E", ivar),
                                          ("ANDMASK", "J", andmask))]
    hdus = fits.HDUList([fits.PrimaryHDU(header=header),
                         fits.BinTableHDU.from_columns(columns, name="COADD")])
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".fits", dir=path.parent)
    os.close(fd)
    try:
        hdus.writeto(tmp, overwrite=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
