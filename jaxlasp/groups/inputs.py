"""What a group's fit starts from: the model, the spectra of a file cut to the fit grid, their
pixel weights (masks included) and the start points."""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jaxlasp.emulators.demo import demo_emulator
from jaxlasp.emulators.tgm import TGMEmulator
from jaxlasp.grids import LogGrid, PixelGrid
from jaxlasp.io import SpectrumFileError, cut_to_grid, read_spectra, read_tgm
from jaxlasp.io.lamost import Spectrum, file_stem
from jaxlasp.io.model_files import is_named_model, named_model_path
from jaxlasp.model import FEH, LN_TEFF, LOGG, ForwardModel, full_theta, theta_from_physical
from jaxlasp.spectral.masks import check_intervals, masked_pixels

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


DEFAULT_START = (7500.0, 3.5, -0.5)
"""Start (Teff [K], log g, [Fe/H]) of PyLASP's shipped runs; mu = 0, σ = 1 pixel."""
GLOBAL_START = "global"
"""``start=GLOBAL_START``: the global start of ``jaxlasp.fit.start`` (grid scan, best
candidates)."""


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


def initial_points(start, batch: int, fm: ForwardModel):
    """θ₀ (batch, ``n_parameters(fm)``) for ``start`` (checked against the domain), or None for
    the global start."""
    if isinstance(start, str):
        if start != GLOBAL_START:
            raise ValueError(f"start must be {GLOBAL_START!r} or (Teff, log g, [Fe/H]), "
                             f"not {start!r}")
        return None
    theta0 = start_points(start, batch)
    check_start(theta0, fm)
    return np.asarray(full_theta(fm, theta0))


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
