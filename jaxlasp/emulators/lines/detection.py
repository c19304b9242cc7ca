"""Lines detected in normalised spectra (prominence in normalised flux, widths in pixels), the
clone's start values, and blase3D's identification of lines across the grid (0.01 Å)."""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jaxlasp.emulators.lines.profiles import FWHM_PER_SIGMA, Lines, pseudo_voigt
from jaxlasp.grids import LinearGrid

MISSING_LN_AMP = -1000.0
"""ln a of a line at the grid nodes where it was not detected (blase3D)."""
PROMINENCE = 0.005
"""Detection threshold in normalised flux (blase3D)."""
CENTRE_PRECISION = 0.01
"""Precision [Å] at which pre-optimisation centres identify a line across the grid."""


class Detected(NamedTuple):
    """Lines found in one normalised spectrum (host arrays of shape (k,))."""

    pixel: np.ndarray       # int, pixel of the minimum
    prominence: np.ndarray  # depth above the surrounding saddle, normalised flux
    width: np.ndarray       # full width at half prominence [pixels]


def detect_lines(normalised, prominence: float = PROMINENCE) -> Detected:
    """Absorption lines of a normalised spectrum (n,): minima of prominence ≥ ``prominence``."""
    from scipy.signal import find_peaks

    pixel, props = find_peaks(1.0 - np.asarray(normalised, np.float64), prominence=prominence,
                              width=0)
    return Detected(pixel, props["prominences"], props["widths"])


def initial_lines(found: Detected, grid: LinearGrid, size: int) -> tuple[Lines, np.ndarray]:
    """Start values of the clone for ``found``, padded to ``size`` lines, and the validity mask.

    μ: the detected pixel's wavelength; σ, γ from the measured width w [pixels] (clipped to
    1–10, then in Å): a Gaussian FWHM of 0.8·w and γ = 0.05·w; a such that the line's central depth
    a·V(0) equals its prominence (≤ 0.95). Padding lines have ln a = −1000 (no absorption).
    """
    k = found.pixel.size
    if k > size:
        raise ValueError(f"{k} lines do not fit in {size} slots")
    width = np.clip(found.width, 1.0, 10.0) * grid.step
    sigma = 0.8 * width / FWHM_PER_SIGMA
    gamma = 0.05 * width
    peak = np.asarray(pseudo_voigt(0.0, jnp.asarray(sigma), jnp.asarray(gamma)))
    ln_amp = np.log(np.minimum(found.prominence, 0.95) / peak)

    def pad(values, fill):
        return np.concatenate([values, np.full(size - k, fill)])

    lines = Lines(pad(grid.centres[found.pixel], grid.start), pad(ln_amp, MISSING_LN_AMP),
                  pad(sigma, grid.step), pad(gamma, grid.step))
    return lines, np.arange(size) < k


def missed_lines(target, clone_flux, taken, prominence: float = PROMINENCE) -> Detected:
    """Absorption the clone misses: minima of target − clone (n,) of prominence ≥ ``prominence``
    at pixels not in ``taken`` (the pixels of the lines already cloned)."""
    found = detect_lines(1.0 + np.asarray(target) - np.asarray(clone_flux), prominence)
    keep = ~np.isin(found.pixel, taken)
    return Detected(*(a[keep] for a in found))


def stack_starts(found: list[Detected], grid: LinearGrid) -> tuple[Lines, np.ndarray]:
    """``initial_lines`` of every spectrum's ``found``, padded to the longest; fields (B, L)."""
    size = max(max(f.pixel.size for f in found), 1)
    starts = [initial_lines(f, grid, size) for f in found]
    return Lines(*(np.stack([s[0][k] for s in starts]) for k in range(4))), \
        np.stack([s[1] for s in starts])


# ---------------------------------------------------------------------------------------------
# Identification across the grid


def centre_keys(centres) -> np.ndarray:
    """Integer identity of pre-optimisation centres [Å] at ``CENTRE_PRECISION``."""
    return np.round(np.asarray(centres, np.float64) / CENTRE_PRECISION).astype(np.int64)


def identify_lines(keys: list[np.ndarray], fitted: Lines) -> tuple[Lines, np.ndarray]:
    """Merge per-node line lists into one list of distinct lines with values at every node.

    keys: for each of the N nodes, the ``centre_keys`` of its k_i detected lines (which occupy
    the first k_i slots of the node's row in ``fitted``); fitted: fields (N, L_pad). Returns the
    lines (N, M) over the M distinct keys, sorted, and the keys (M,).
    Where a line was not detected: ln a = −1000, μ′ its pre-optimisation centre, and σ, γ its
    mean over the nodes where it was detected (so interpolated widths stay plausible).
    """
    union = np.unique(np.concatenate(keys))
    n_nodes, m = len(keys), union.size
    found = np.zeros((n_nodes, m), bool)
    out = {name: np.zeros((n_nodes, m)) for name in Lines._fields}
    out["ln_amp"][:] = MISSING_LN_AMP
    out["mu"][:] = union * CENTRE_PRECISION
    for i, k in enumerate(keys):
        col = np.searchsorted(union, k)
        found[i, col] = True
        for name in Lines._fields:
            out[name][i, col] = np.asarray(getattr(fitted, name))[i, :k.size]
    count = found.sum(axis=0)
    for name in ("sigma", "gamma"):
        mean = np.where(found, out[name], 0.0).sum(axis=0) / count
        out[name] = np.where(found, out[name], mean)
    return Lines(**out), union
