"""Legendre continua of spectra (upper envelope; x ∈ [−1, 1] over the pixels) and the source
grid: the TGM spectra at the nodes of a (Teff [K], log g, [Fe/H]) grid, normalised."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlasp.emulators.tgm import Domain, TGMEmulator, tgm_flux
from jaxlasp.grids import LinearGrid

CONTINUUM_DEGREE = 5
"""Degree of the Legendre continuum (blase3D's 5th-order polynomial)."""
CONTINUUM_BLOCK = 100
"""Pixels per block whose maximum is a continuum point (20 Å at 0.2 Å/pixel)."""


def _unit_x(n: int):
    """Pixel positions mapped to [−1, 1] over a grid of n pixels; (n,)."""
    return np.linspace(-1.0, 1.0, n)


def fit_continuum(flux, degree: int = CONTINUUM_DEGREE, block: int = CONTINUUM_BLOCK,
                  iterations: int = 5, anchors: int = 2 * (CONTINUUM_DEGREE + 1)) -> np.ndarray:
    """Legendre coefficients (degree+1,) of an upper-envelope continuum of ``flux`` (n,) (host).

    The maximum of every block of ``block`` pixels is a candidate continuum point; a Legendre
    series in x ∈ [−1, 1] (over the pixels) is fitted through them, and block maxima more than
    0.5 % below the fit (blocks inside absorption bands) are dropped and the fit repeated. In each
    of ``anchors`` equal segments of the spectrum the block highest relative to the fit is always
    kept: without them the blocks of a cool star's molecular bands are dropped until a few, bunched
    points are left and the polynomial crosses zero between them.
    """
    flux = np.asarray(flux, np.float64)
    x = _unit_x(flux.size)
    n_block = flux.size // block
    peak = np.argmax(flux[:n_block * block].reshape(n_block, block), axis=1)
    peak = peak + block * np.arange(n_block)
    anchors = min(anchors, n_block)
    segment = np.arange(n_block) * anchors // n_block
    keep = np.ones(n_block, bool)
    for _ in range(iterations):
        coef = np.polynomial.legendre.legfit(x[peak[keep]], flux[peak[keep]], degree)
        ratio = flux[peak] / np.polynomial.legendre.legval(x[peak], coef)
        new = ratio >= 1.0 - 0.005
        for s in range(anchors):
            inside = np.flatnonzero(segment == s)
            new[inside[np.argmax(ratio[inside])]] = True
        if np.array_equal(new, keep):
            break
        keep = new
    return coef


def continuum_values(coef, n: int, first: int = 0, n_full: int | None = None):
    """Legendre continuum Σ_k c_k P_k(x) on pixels first..first+n−1 of an n_full-pixel grid; (n,).

    ``coef`` (degree+1,) is a JAX or NumPy array; x ∈ [−1, 1] spans the full (uncropped) grid.
    """
    n_full = n if n_full is None else n_full
    x = jnp.asarray(_unit_x(n_full)[first:first + n])
    p_prev, p = jnp.ones_like(x), x
    total = coef[0] * p_prev + (coef[1] * p if coef.shape[0] > 1 else 0.0)
    for k in range(2, coef.shape[0]):
        p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
        total = total + coef[k] * p
    return total


class SourceGrid(NamedTuple):
    """Spectra on a rectilinear (Teff, log g, [Fe/H]) grid, with continua (host NumPy arrays).

    axes: (teff [K], logg [dex], feh [dex]) increasing node values, each a tuple of ≥ 2 floats.
    flux: (nT, ng, nz, n) spectra on ``grid``; continuum: (nT, ng, nz, degree+1) Legendre
    coefficients (``fit_continuum``); normalised: (nT, ng, nz, n) flux / continuum.
    grid: the linear wavelength grid [Å]; domain: the parameter box the grid spans.
    """

    axes: tuple
    flux: np.ndarray
    continuum: np.ndarray
    normalised: np.ndarray
    grid: LinearGrid
    domain: Domain


def source_grid(tgm: TGMEmulator, teff, logg, feh, degree: int = CONTINUUM_DEGREE) -> SourceGrid:
    """Spectra of the TGM emulator at every node of the grid teff × logg × feh, normalised.

    teff [K], logg, feh [dex]: increasing 1-d node values (≥ 2 each).
    """
    axes = tuple(tuple(float(v) for v in np.asarray(a, np.float64)) for a in (teff, logg, feh))
    if any(len(a) < 2 or np.any(np.diff(a) <= 0) for a in axes):
        raise ValueError("each grid axis needs ≥ 2 strictly increasing nodes")
    mesh = [m.ravel() for m in np.meshgrid(*axes, indexing="ij")]
    flux = np.asarray(jax.jit(jax.vmap(tgm_flux, in_axes=(None, 0, 0, 0)))(tgm, *mesh), np.float64)
    continuum = np.stack([fit_continuum(f, degree) for f in flux])
    values = np.stack([np.asarray(continuum_values(c, f.size)) for c, f in zip(continuum, flux)])
    shape = tuple(len(a) for a in axes)
    domain = Domain(*((a[0], a[-1]) for a in axes))
    return SourceGrid(axes, flux.reshape(*shape, -1), continuum.reshape(*shape, -1),
                      (flux / values).reshape(*shape, -1), tgm.grid, domain)
