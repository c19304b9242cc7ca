"""The line-list emulator: line parameters and continua interpolated trilinearly over the
(Teff [K], log g, [Fe/H]) grid, its model flux on its wavelength grid [Å], and its crop."""
from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlasp.emulators.lines.continuum import continuum_values
from jaxlasp.emulators.lines.detection import MISSING_LN_AMP
from jaxlasp.emulators.lines.profiles import HALFWIDTH, Lines, transmission
from jaxlasp.emulators.tgm import Domain
from jaxlasp.grids import LinearGrid

AMPLITUDE_SPACES = ("log", "linear")
"""Spaces in which line amplitudes are interpolated (``LineListEmulator.amplitude``)."""


def _axis_position(axis: tuple, x):
    """(cell index, fraction in the cell) of x on increasing nodes ``axis``; x clamped to them."""
    nodes = jnp.asarray(axis)
    x = jnp.clip(x, axis[0], axis[-1])
    i = jnp.clip(jnp.searchsorted(nodes, x, side="right") - 1, 0, len(axis) - 2)
    return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])


def cell_weights(axes: tuple, teff, logg, feh):
    """(cell, weights): the grid cell (i, j, k) holding (teff, logg, feh) (clamped to the box) and
    the trilinear weights (2, 2, 2) of its corners."""
    (i, t), (j, u), (k, v) = (_axis_position(a, x) for a, x in zip(axes, (teff, logg, feh)))
    w = jnp.stack([1.0 - t, t])[:, None, None] * jnp.stack([1.0 - u, u])[None, :, None] \
        * jnp.stack([1.0 - v, v])[None, None, :]
    return (i, j, k), w


def _corners(array, cell):
    """The 2 × 2 × 2 corner values ``array[i:i+2, j:j+2, k:k+2]`` of ``cell``; (2, 2, 2, ...)."""
    zero = jnp.zeros((), cell[0].dtype)
    return lax.dynamic_slice(array, tuple(cell) + (zero,) * (array.ndim - 3),
                             (2, 2, 2) + array.shape[3:])


def _weighted(cube, w):
    """Σ over the corners of w × cube (cube (2, 2, 2, ...), w (2, 2, 2))."""
    return jnp.tensordot(w.astype(cube.dtype), cube, axes=3)


def interpolate(values, axes: tuple, teff, logg, feh):
    """Trilinear interpolation of a pytree of arrays (nT, ng, nz, ...) at (teff, logg, feh).

    axes: the node values (static tuples). Points outside the grid are clamped to its box.
    Differentiable in the parameters (piecewise linear: the derivative jumps at nodes).
    """
    cell, w = cell_weights(axes, teff, logg, feh)
    return jax.tree.map(lambda a: _weighted(_corners(a, cell), w), values)


def cell_lines(ln_amp) -> np.ndarray:
    """Indices of the lines present at any corner of each grid cell, padded with −1 (host).

    ln_amp: (nT, ng, nz, M) with ``MISSING_LN_AMP`` where a line was not detected. Returns
    (nT−1, ng−1, nz−1, K) int32, K the most lines any cell has, each cell's indices increasing.
    Inside a cell the other lines are absent at all 8 corners, so they add nothing to the clone.
    """
    present = np.asarray(ln_amp) > 0.5 * MISSING_LN_AMP
    for axis in range(3):
        cut = [slice(None)] * 4
        cut[axis] = slice(1, None)
        low = [slice(None)] * 4
        low[axis] = slice(None, -1)
        present = present[tuple(low)] | present[tuple(cut)]
    k = max(int(present.sum(axis=-1).max()), 1)
    order = np.argsort(~present, axis=-1, kind="stable")[..., :k]
    valid = np.take_along_axis(present, order, axis=-1)
    return np.where(valid, order, -1).astype(np.int32)


@dataclass(frozen=True)
class LineListEmulator:
    """Line lists and continua on the nodes of a regular grid (a pytree; arrays are the leaves).

    lines: fields (nT, ng, nz, M) of the M distinct lines at every node.
    continuum: (nT, ng, nz, degree+1) Legendre coefficients of the continuum, in x ∈ [−1, 1] over
        the pixels of the full source grid.
    grid: the linear wavelength grid [Å] of the spectra (static).
    axes: node values (teff [K], logg [dex], feh [dex]) (static tuples).
    domain: the parameter box (the grid's).
    halfwidth: wing cut [pixels] (static).
    first, n_full: position of ``grid`` in the source grid (for the continuum's x) after a crop.
    amplitude: "log" interpolates ln a linearly (blase3D: a missing line, ln a = −1000, vanishes
        just off the nodes where it was found); "linear" interpolates a itself (missing: a = 0), so
        a line found at neighbouring pixels of neighbouring nodes (two keys) fades from one into
        the other instead of vanishing between them.
    active: (nT−1, ng−1, nz−1, K) int32 indices of the lines present at a corner of each cell,
        padded with −1 (``cell_lines``), or None; with it a spectrum is built from the K lines of
        its cell instead of all M (K ≈ the most lines of one node; M the union over the grid).
    """

    lines: Lines
    continuum: jax.Array
    grid: LinearGrid
    axes: tuple
    domain: Domain
    halfwidth: int = HALFWIDTH
    first: int = 0
    n_full: int | None = None
    amplitude: str = "log"
    active: jax.Array | None = None

    @property
    def dtype(self):
        """dtype of the emulator's arrays (and of its spectra)."""
        return self.continuum.dtype

    def astype(self, dtype) -> LineListEmulator:
        """The same emulator with arrays cast to ``dtype``."""
        lines, continuum = jax.tree.map(lambda a: jnp.asarray(a, dtype),
                                        (self.lines, self.continuum))
        return replace(self, lines=lines, continuum=continuum)

    def with_amplitude(self, amplitude: str) -> LineListEmulator:
        """The same emulator interpolating amplitudes in ``amplitude`` space ("log" or "linear")."""
        if amplitude not in AMPLITUDE_SPACES:
            raise ValueError(f"amplitude must be one of {AMPLITUDE_SPACES}, not {amplitude!r}")
        return replace(self, amplitude=amplitude)


jax.tree_util.register_dataclass(
    LineListEmulator, data_fields=["lines", "continuum", "active"],
    meta_fields=["grid", "axes", "domain", "halfwidth", "first", "n_full", "amplitude"])


def emulator_lines(em: LineListEmulator, teff, logg, feh) -> Lines:
    """The interpolated line list at (Teff [K], log g, [Fe/H]); fields (M,), or (K,) with
    ``em.active`` (the lines of the point's cell; padding slots have ln a = −1000).

    With ``em.amplitude == "linear"`` a = exp(ln a) is interpolated and ln a = ln max(a, 1e-300)
    returned (the floor keeps the gradient finite where a line is absent at all 8 corners).
    """
    cell, w = cell_weights(em.axes, teff, logg, feh)
    cube = jax.tree.map(lambda a: _corners(a, cell), em.lines)
    if em.active is not None:
        index = em.active[cell]
        cube = jax.tree.map(lambda a: jnp.take(a, jnp.maximum(index, 0), axis=3), cube)
        cube = cube._replace(ln_amp=jnp.where(index >= 0, cube.ln_amp, MISSING_LN_AMP))
    if em.amplitude == "log":
        return jax.tree.map(lambda a: _weighted(a, w), cube)
    lines = jax.tree.map(lambda a: _weighted(a, w), cube._replace(ln_amp=jnp.exp(cube.ln_amp)))
    return lines._replace(ln_amp=jnp.log(jnp.maximum(lines.ln_amp, 1e-300)))


def normalised_flux(em: LineListEmulator, teff, logg, feh):
    """Continuum-normalised model spectrum (the clone) on ``em.grid``; shape (n,)."""
    return transmission(emulator_lines(em, teff, logg, feh), em.grid, em.halfwidth)


def continuum_flux(em: LineListEmulator, teff, logg, feh):
    """The interpolated continuum on ``em.grid``; shape (n,)."""
    coef = interpolate(em.continuum, em.axes, teff, logg, feh)
    return continuum_values(coef, em.grid.n, em.first, em.n_full).astype(em.dtype)


def linelist_flux(em: LineListEmulator, teff, logg, feh):
    """Model flux (continuum × clone) on ``em.grid`` at (Teff [K], log g, [Fe/H]); shape (n,).

    The counterpart of ``tgm_flux`` for the forward model.
    """
    return continuum_flux(em, teff, logg, feh) * normalised_flux(em, teff, logg, feh)


def crop_linelist(em: LineListEmulator, lo: float, hi: float) -> LineListEmulator:
    """The emulator on the pixels covering [lo, hi] Å plus one each side (as ``tgm.crop_to``).

    Lines whose centre lies, at every node, more than the wing cut outside the new grid are
    dropped. Raises ValueError if the grid does not overlap [lo, hi] or the crop is narrower
    than one window.
    """
    edges = em.grid.edges
    if not (lo <= hi and hi > edges[0] and lo < edges[-1]):
        raise ValueError(f"the model covers {edges[0]:.3f}–{edges[-1]:.3f} Å, which does not "
                         f"overlap the requested interval [{lo}, {hi}] Å")
    first = max(int(np.searchsorted(edges, lo, side="right")) - 2, 0)
    last = min(int(np.searchsorted(edges, hi, side="left")), em.grid.n - 1)
    grid = em.grid.sub(first, last - first + 1)
    if 2 * em.halfwidth + 1 > grid.n:
        raise ValueError(f"the crop ({grid.n} pixels) is narrower than one line window")
    margin = em.halfwidth * grid.step
    mu = np.asarray(em.lines.mu).reshape(-1, em.lines.mu.shape[-1])
    keep = np.any((mu > grid.centres[0] - margin) & (mu < grid.centres[-1] + margin), axis=0)
    lines = jax.tree.map(lambda a: a[..., keep], em.lines)
    active = em.active
    if active is not None:
        index = np.asarray(active)
        new = np.cumsum(keep) - 1
        kept = (index >= 0) & keep[np.maximum(index, 0)]
        active = jnp.asarray(np.where(kept, new[np.maximum(index, 0)], -1).astype(np.int32))
    n_full = em.grid.n if em.n_full is None else em.n_full
    return replace(em, lines=lines, grid=grid, first=em.first + first, n_full=n_full,
                   active=active)
