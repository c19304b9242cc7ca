"""Read DESI coadd and spectra FITS files (many spectra per file) onto the LAMOST pixel lattice.

Layout (DESI spectroscopic data model, ``coadd-*.fits`` and ``spectra-*.fits``; HDUs are found by
name, not position): for each camera X (B, R and Z for DESI; any name works, e.g. a combined
BRZ) the images X_WAVELENGTH (nwave,) [vacuum Å, linear, 0.8 Å steps], X_FLUX (nspec, nwave)
[1e-17 erg/s/cm²/Å], X_IVAR (nspec, nwave) [flux⁻²] and optionally X_MASK (nspec, nwave) (uint32
bits, 0 = good; a compressed image in DESI's files), and the FIBERMAP table whose row i gives the
TARGETID of spectrum row i. X_RESOLUTION and the other HDUs are not used.

Joining the cameras: each camera is resampled on its own (``jaxlasp.io.arrays.rebin``, flux-
conserving, masked and ivar = 0 pixels excluded) from its vacuum pixels, shifted to air by
PyLASP's constant (``VACUUM_LN_SHIFT``, see ``jaxlasp.io.arrays``), onto the LAMOST lattice
(Δlog10 λ = 1e-4). Where cameras overlap (B/R about 5660–5930 Å, R/Z about 7430–7720 Å) the
resampled values are averaged with their ivars as weights and the ivars add, so a noisy camera
end does not spoil its better neighbour.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from jaxlasp.grids import LogGrid, window_pixels
from jaxlasp.io._fits import FitsFile, as_fits
from jaxlasp.io.arrays import (
    band,
    flux_normaliser,
    good_pixels,
    lattice_grid,
    native_cut,
    native_spectrum,
    overlapping_bits,
    pixel_edges,
    rebin,
)
from jaxlasp.io.lamost import (
    DEFAULT_WINDOW,
    VACUUM_LN_SHIFT,
    Spectrum,
    SpectrumFileError,
    check_covers,
    windowed_spectrum,
)

WAVELENGTH_SUFFIX = "_WAVELENGTH"
"""HDU name ending that marks a camera (the name before it is the camera, e.g. 'B')."""


def desi_cameras(names) -> list[str]:
    """The cameras X (in file order) for which HDUs X_WAVELENGTH and X_FLUX both exist."""
    names = list(names)
    return [n[:-len(WAVELENGTH_SUFFIX)] for n in names
            if n.endswith(WAVELENGTH_SUFFIX) and f"{n[:-len(WAVELENGTH_SUFFIX)]}_FLUX" in names]


def desi_ids(fibermap: dict[str, np.ndarray]) -> list[str]:
    """Spectrum ids from FIBERMAP columns: the TARGETIDs, or 'TARGETID-EXPID' (else
    'TARGETID-row') when a target repeats, as in a per-exposure spectra file."""
    targets = [str(t) for t in np.asarray(fibermap["TARGETID"]).tolist()]
    if len(set(targets)) == len(targets):
        return targets
    tags = (np.asarray(fibermap["EXPID"]).tolist() if "EXPID" in fibermap
            else range(len(targets)))
    return [f"{t}-{tag}" for t, tag in zip(targets, tags)]


def read_desi(source, window: tuple[float, float] | None = DEFAULT_WINDOW) -> list[Spectrum]:
    """Every spectrum of a DESI coadd or spectra file, on the LAMOST lattice, in FIBERMAP order.

    source: the file's path, or the file already open (a ``FitsFile`` of ``jaxlasp.io._fits``);
    only FIBERMAP's TARGETID (and EXPID, TARGET_RA, TARGET_DEC: ``Spectrum.survey``) and the
    cameras' WAVELENGTH, FLUX, IVAR and MASK are read. window: [Å] to truncate to (None:
    everything the cameras cover). Each spectrum's ``median`` is max(median of its valid pixels
    in the window, 1) and ``andmask`` holds the OR of the mask bits where masking left a pixel
    without data. A spectrum without valid data in the window is returned (flagged
    ``FEW_GOOD_PIXELS``), not refused, so that one bad fibre does not lose the file. Raises
    SpectrumFileError (naming the file) for an unreadable file, missing or inconsistent HDUs, or
    cameras that do not cover the window.
    """
    path, ids, survey, arms = _read_file(source)
    grid = _output_grid([edges for edges, *_ in arms], window, path)
    flux, ivar, andmask = join_cameras(arms, grid)
    return [replace(windowed_spectrum(id_, grid, flux[i].astype(np.float32),
                                      ivar[i].astype(np.float32), andmask[i],
                                      flux_normaliser(flux[i]), None, path), survey=survey[i])
            for i, id_ in enumerate(ids)]


def read_desi_native(source, windows) -> list[Spectrum]:
    """Every spectrum of a DESI file on its own pixels: each camera's pixels (air, by PyLASP's
    constant shift) inside each window ((lo, hi), … Å) a segment of a ``PixelGrid``
    (``jaxlasp.io.arrays.native_cut``), nothing resampled; the cameras' overlaps are kept in
    both. Masked and ivar = 0 pixels get ivar 0 and ``finite`` False. Raises as ``read_desi``."""
    path, ids, survey, arms = _read_file(source)
    cut = native_cut([edges for edges, *_ in arms], windows, path)
    return [replace(native_spectrum(id_, cut, [(f[i], v[i], m[i]) for _, f, v, m in arms]),
                    survey=survey[i])
            for i, id_ in enumerate(ids)]


def _read_file(source):
    """(path, ids, survey values, arms) of a DESI file (``read_desi``); arms as ``_camera``."""
    with as_fits(source, SpectrumFileError) as file:
        path = file.path
        index = {name: i for i, name in enumerate(file.names)}  # a repeated name: its last HDU
        ids, survey = _ids(file, index)
        arms = [_camera(file, index, cam, len(ids)) for cam in desi_cameras(index)]
    if not arms:
        raise SpectrumFileError(f"{path}: no DESI camera HDUs (X_WAVELENGTH with X_FLUX); HDUs "
                                f"found: {sorted(index)}")
    return path, ids, survey, arms


def join_cameras(arms, grid: LogGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Resample cameras onto ``grid`` and combine them where they overlap.

    arms: (air edges (nwave+1,) [Å], flux, ivar, mask (nspec, nwave)) per camera. Returns flux
    (NaN without data), ivar (0 without data) as float64 and andmask as int32 bits, each
    (nspec, grid.n): the ivar-weighted mean of the cameras' resampled values, the sum of their
    ivars, and where no camera has data the OR of the mask bits of the input pixels there.
    """
    total = weighted = bits = 0
    for edges, flux, ivar, mask in arms:
        b = band(edges, grid.edges)
        arm_flux, arm_ivar = rebin(b, flux, ivar, good_pixels(flux, ivar, mask))
        total = total + arm_ivar
        weighted = weighted + arm_ivar * np.nan_to_num(arm_flux)
        bits = bits | overlapping_bits(b, mask)
    flux = np.divide(weighted, total, out=np.full(np.shape(total), np.nan), where=total > 0)
    andmask = np.where(total > 0, 0, bits).astype(np.uint32).view(np.int32)
    return flux, total, andmask


DESI_SURVEY_COLUMNS = {"targetid": "TARGETID", "ra": "TARGET_RA", "dec": "TARGET_DEC"}
"""``Spectrum.survey`` keys and the FIBERMAP columns they come from."""


def _ids(file: FitsFile, index: dict[str, int]) -> tuple[list[str], list[dict]]:
    """The spectrum ids and survey values (``DESI_SURVEY_COLUMNS``) from the FIBERMAP table
    (SpectrumFileError when it is missing)."""
    fibermap = index.get("FIBERMAP")
    if (fibermap is None or not file.is_table(fibermap)
            or "TARGETID" not in file.column_names(fibermap)):
        raise SpectrumFileError(f"{file.path}: no FIBERMAP table with a TARGETID column; HDUs "
                                f"found: {sorted(index)}")
    columns = file.columns(fibermap, ("TARGETID", "EXPID", *DESI_SURVEY_COLUMNS.values()))
    kinds = {"targetid": int, "ra": float, "dec": float}
    survey = [{key: kinds[key](columns[name][i]) for key, name in DESI_SURVEY_COLUMNS.items()
               if name in columns} for i in range(len(columns["TARGETID"]))]
    return desi_ids(columns), survey


def _camera(file: FitsFile, index: dict[str, int], cam: str, nspec: int):
    """(air edges (nwave+1,), flux, ivar, mask (nspec, nwave)) of one camera, checked.

    An absent X_MASK means no pixel is masked; X_IVAR and a present X_MASK must be images.
    """
    def image(kind):
        return file.image(index[f"{cam}_{kind}"]) if f"{cam}_{kind}" in index else None

    wave, flux, ivar = image("WAVELENGTH"), image("FLUX"), image("IVAR")
    if wave is None or wave.ndim != 1 or wave.size < 2 or not np.all(np.diff(wave) > 0):
        raise SpectrumFileError(f"{file.path}: {cam}_WAVELENGTH is not an increasing 1-D array")
    shape = (nspec, wave.size)
    mask = image("MASK") if f"{cam}_MASK" in index else np.zeros(shape, np.uint32)
    for name, array in (("FLUX", flux), ("IVAR", ivar), ("MASK", mask)):
        if array is None or array.shape != shape:
            found = "missing" if array is None else array.shape
            raise SpectrumFileError(f"{file.path}: {cam}_{name} should be an image of shape "
                                    f"{shape} (FIBERMAP rows × {cam}_WAVELENGTH pixels), found "
                                    f"{found}")
    edges = pixel_edges(wave) * np.exp(-VACUUM_LN_SHIFT)
    return edges, flux.astype(np.float64), ivar.astype(np.float64), mask


def _output_grid(edges: list[np.ndarray], window, path) -> LogGrid:
    """The lattice pixels inside the cameras' joint coverage, truncated to ``window`` [Å]."""
    lo, hi = min(e[0] for e in edges), max(e[-1] for e in edges)
    try:
        grid = lattice_grid(lo, hi)
    except ValueError as err:
        raise SpectrumFileError(f"{path}: {err}") from err
    if window is None:
        return grid
    check_covers(grid, window, path)
    first, last = window_pixels(grid, *window)
    return grid.sub(first, last - first + 1)


def is_desi(names) -> bool:
    """Whether HDU names look like a DESI coadd/spectra file (FIBERMAP and a camera)."""
    return "FIBERMAP" in names and bool(desi_cameras(names))
