"""Building a ``LineListEmulator`` from a ``SourceGrid``: detection, cloning (blase3D per node
or shared) and assembly, with its diagnostics (``CloneReport``)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlasp.emulators.lines.cloning import SMOOTHNESS, clone_batch, clone_grid, pooled_lines
from jaxlasp.emulators.lines.continuum import SourceGrid
from jaxlasp.emulators.lines.detection import (
    PROMINENCE,
    Detected,
    centre_keys,
    detect_lines,
    identify_lines,
    missed_lines,
    stack_starts,
)
from jaxlasp.emulators.lines.emulator import LineListEmulator, cell_lines
from jaxlasp.emulators.lines.profiles import HALFWIDTH, Lines, transmission
from jaxlasp.grids import LinearGrid

CLONE_METHODS = ("shared", "blase3d")
"""How the grid is cloned (``build_linelist_emulator``)."""


class CloneReport(NamedTuple):
    """Diagnostics of building an emulator (host arrays over the nodes, shape (nT, ng, nz))."""

    rms: np.ndarray        # RMS of clone − normalised source spectrum
    n_lines: np.ndarray    # lines detected at each node
    keys: np.ndarray       # (M,) identity keys of the distinct lines (centre / 0.01 Å)


def _clones(lines: Lines, grid: LinearGrid, halfwidth: int) -> np.ndarray:
    """``transmission`` of every row of ``lines`` (fields (N, L)); (N, n) host array."""
    return np.asarray(jax.jit(lambda f: lax.map(lambda one: transmission(one, grid, halfwidth),
                                                f))(jax.tree.map(jnp.asarray, lines)))


def _line_pixels(lines: Lines, grid: LinearGrid) -> list[np.ndarray]:
    """Pixel of each line's centre, per row of ``lines`` (fields (N, L))."""
    return list(np.round((np.asarray(lines.mu) - grid.start) / grid.step).astype(int))


def _clone_per_node(targets, found, grid, prominence, halfwidth, epochs, learning_rate, chunk,
                    refine):
    """blase3D: each node cloned alone, lines identified by pre-optimisation centre afterwards.
    Returns (lines (N, M) with ln a = −1000 where absent, keys (M,), RMS (N,), found)."""
    fitted, rms = clone_batch(targets, *stack_starts(found, grid), grid, halfwidth, epochs,
                              learning_rate, chunk)
    if refine:
        extra = [missed_lines(t, c, f.pixel, prominence) for t, c, f in
                 zip(targets, _clones(fitted, grid, halfwidth), found)]
        count = np.array([f.pixel.size for f in found])[:, None]
        found = [Detected(*map(np.concatenate, zip(f, e))) for f, e in zip(found, extra)]
        lines0, mask = stack_starts(found, grid)
        cloned = np.arange(mask.shape[1]) < count      # the first pass's slots start from its fit
        lines0 = Lines(*(np.where(cloned, np.pad(f, ((0, 0), (0, a.shape[1] - f.shape[1]))), a)
                         for a, f in zip(lines0, fitted)))
        fitted, rms = clone_batch(targets, lines0, mask, grid, halfwidth, epochs,
                                  learning_rate, chunk)
    keys = [centre_keys(grid.centres[f.pixel]) for f in found]
    merged, union = identify_lines(keys, fitted)
    return merged, union, rms, found


def _clone_shared(targets, found, shape, grid, prominence, halfwidth, epochs, learning_rate,
                  chunk, refine, smoothness):
    """One pooled line list at every node, cloned jointly and smoothly (``clone_grid``); with
    ``refine`` the pooled misses of every node are added and the grid cloned again.
    Returns (lines (N, M), keys (M,) of the start centres, RMS (N,), found)."""
    def everywhere(lines):
        return Lines(*(np.broadcast_to(p, (len(targets), p.size)) for p in lines))

    start = pooled_lines(found, grid)
    options = dict(halfwidth=halfwidth, learning_rate=learning_rate, smoothness=smoothness,
                   chunk=chunk)
    fitted, rms = clone_grid(targets, everywhere(start), shape, grid, epochs=epochs, **options)
    if refine:
        extra = [missed_lines(t, c, k, prominence) for t, c, k in
                 zip(targets, _clones(fitted, grid, halfwidth), _line_pixels(fitted, grid))]
        added = pooled_lines(extra, grid)
        start = Lines(*(np.concatenate(p) for p in zip(start, added)))
        fitted = Lines(*(np.concatenate([f, a], axis=1) for f, a in zip(fitted,
                                                                       everywhere(added))))
        fitted, rms = clone_grid(targets, fitted, shape, grid, epochs=epochs, **options)
        found = [Detected(*map(np.concatenate, zip(f, e))) for f, e in zip(found, extra)]
    return fitted, centre_keys(start.mu), rms, found


def build_linelist_emulator(source: SourceGrid, *, method: str = "shared",
                            prominence: float = PROMINENCE, halfwidth: int = HALFWIDTH,
                            epochs: int = 100, learning_rate: float = 0.05, chunk: int = 8,
                            refine: bool = True, smoothness: float = SMOOTHNESS,
                            ) -> tuple[LineListEmulator, CloneReport]:
    """Clone every normalised spectrum of ``source`` and assemble the line-list emulator.

    Lines are detected at every node on the host (``detect_lines``). ``method``:
    "blase3d": each node cloned alone (vmapped over ``chunk`` nodes, line lists padded to the
    longest), lines identified across nodes by pre-optimisation centre, ln a = −1000 where a
    line was not detected; a spectrum is built from the lines of its grid cell (``cell_lines``).
    "shared": the detections of all nodes pooled into one list (``pooled_lines``) that every
    node starts from, and the whole grid cloned at once with a smoothness penalty across the
    nodes (``clone_grid``, weight ``smoothness``), so that the interpolated lines between nodes
    stay close to the spectra there; every line is evaluated everywhere.
    With ``refine`` a second pass detects the absorption each clone misses (``missed_lines``:
    blends, lines in the wings of others), adds those lines and runs ``epochs`` more from the
    first fit.
    """
    if method not in CLONE_METHODS:
        raise ValueError(f"method must be one of {CLONE_METHODS}, not {method!r}")
    shape = source.normalised.shape[:3]
    grid = source.grid
    targets = source.normalised.reshape(-1, grid.n)
    found = [detect_lines(t, prominence) for t in targets]
    if method == "blase3d":
        fitted, keys, rms, found = _clone_per_node(targets, found, grid, prominence, halfwidth,
                                                   epochs, learning_rate, chunk, refine)
    else:
        fitted, keys, rms, found = _clone_shared(targets, found, shape, grid, prominence,
                                                 halfwidth, epochs, learning_rate, chunk,
                                                 refine, smoothness)
    lines = Lines(*(np.asarray(p).reshape(*shape, -1) for p in fitted))
    active = jnp.asarray(cell_lines(lines.ln_amp)) if method == "blase3d" else None
    em = LineListEmulator(jax.tree.map(jnp.asarray, lines), jnp.asarray(source.continuum),
                          source.grid, source.axes, source.domain, halfwidth, active=active)
    counts = np.array([f.pixel.size for f in found]).reshape(shape)
    return em, CloneReport(rms.reshape(shape), counts, keys)
