"""Wavelength grids: linear model grids and logarithmic observed grids.

Grids are small frozen dataclasses of Python numbers, so they are hashable and serve as static
(compile-time) metadata of the pytrees that carry arrays sampled on them. Wavelengths are in Å
(air); logarithmic grids are uniform in natural-log wavelength.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

C_KMS = 299792.458
"""Speed of light [km/s]."""

LAMOST_LOG10_STEP = 1e-4
"""LAMOST low-resolution pixel step in log10 λ."""

LAMOST_LN_STEP = LAMOST_LOG10_STEP * math.log(10.0)
"""LAMOST pixel step in ln λ (Δ of ALGORITHM §0)."""


@dataclass(frozen=True)
class LinearGrid:
    """Pixels uniform in wavelength: centre of pixel j is ``start + j*step`` [Å]."""

    start: float
    step: float
    n: int

    @property
    def centres(self) -> np.ndarray:
        """Pixel centres [Å], shape (n,)."""
        return self.start + self.step * np.arange(self.n, dtype=np.float64)

    @property
    def edges(self) -> np.ndarray:
        """Pixel edges [Å], shape (n+1,)."""
        return self.start + self.step * (np.arange(self.n + 1, dtype=np.float64) - 0.5)

    @property
    def widths(self) -> np.ndarray:
        """Pixel widths [Å], shape (n,)."""
        return np.full(self.n, float(self.step))

    def sub(self, first: int, n: int) -> LinearGrid:
        """The grid of pixels ``first .. first+n-1``."""
        return LinearGrid(self.start + first * self.step, self.step, n)


@dataclass(frozen=True)
class LogGrid:
    """Pixels uniform in ln λ: centre of pixel i is ``exp(ln_start + i*step)`` [Å]."""

    ln_start: float
    step: float
    n: int

    @property
    def ln_centres(self) -> np.ndarray:
        """ln of the pixel centres [ln Å], shape (n,)."""
        return self.ln_start + self.step * np.arange(self.n, dtype=np.float64)

    @property
    def centres(self) -> np.ndarray:
        """Pixel centres [Å], shape (n,)."""
        return np.exp(self.ln_centres)

    @property
    def edges(self) -> np.ndarray:
        """Pixel edges exp(ln_start + (i − ½)·step) [Å], shape (n+1,)."""
        return np.exp(self.ln_start + self.step * (np.arange(self.n + 1, dtype=np.float64) - 0.5))

    @property
    def widths(self) -> np.ndarray:
        """Differential pixel widths λ_i·Δlnλ [Å], shape (n,).

        This is PyLASP's ``flat`` times the model step (ALGORITHM §d.1); it equals the true edge
        difference to relative accuracy step²/24.
        """
        return self.centres * self.step

    @property
    def velscale(self) -> float:
        """Velocity width of one pixel, c·Δlnλ [km/s]."""
        return C_KMS * self.step

    def sub(self, first: int, n: int) -> LogGrid:
        """The grid of pixels ``first .. first+n-1``."""
        return LogGrid(self.ln_start + first * self.step, self.step, n)


@dataclass(frozen=True, eq=False)
class PixelGrid:
    """Observed pixels on any strictly increasing wavelength grid, in one or more segments.

    edges: per segment, the pixel edges [Å] as a tuple of floats (n_s + 1 of them); pixels are
    numbered segment after segment, so segments may overlap in wavelength (a spectrograph's arms).
    Hashable by value (a static part of a forward model), like ``LogGrid``.
    """

    edges: tuple[tuple[float, ...], ...]

    def __post_init__(self):
        if not self.edges:
            raise ValueError("a pixel grid needs at least one segment")
        for seg in self.edges:
            e = np.asarray(seg, np.float64)
            if (e.ndim != 1 or e.size < 2 or not np.all(np.isfinite(e))
                    or not np.all(np.diff(e) > 0)):
                raise ValueError("pixel edges must be finite and strictly increasing, with at "
                                 "least one pixel per segment")
        object.__setattr__(self, "_key", hash(self.edges))

    def __hash__(self):
        return self._key

    def __eq__(self, other):
        return (isinstance(other, PixelGrid) and self._key == other._key
                and self.edges == other.edges)

    @classmethod
    def from_edges(cls, *segments) -> PixelGrid:
        """A grid from one array of edges [Å] per segment."""
        return cls(tuple(tuple(np.asarray(e, np.float64).tolist()) for e in segments))

    @classmethod
    def from_log_grid(cls, grid: LogGrid) -> PixelGrid:
        """The pixels of a ln-λ grid, as one segment."""
        return cls.from_edges(grid.edges)

    @property
    def segment_edges(self) -> list[np.ndarray]:
        """Edges [Å] per segment, (n_s + 1,) each."""
        return [np.asarray(e, np.float64) for e in self.edges]

    @property
    def sizes(self) -> list[int]:
        """Pixels per segment."""
        return [len(e) - 1 for e in self.edges]

    @property
    def n(self) -> int:
        """Number of pixels."""
        return sum(self.sizes)

    @property
    def ranges(self) -> list[tuple[int, int]]:
        """(first, stop) pixel index range of each segment."""
        stops = np.cumsum(self.sizes).tolist()
        return list(zip([0, *stops[:-1]], stops))

    @property
    def centres(self) -> np.ndarray:
        """Pixel centres [Å] (midpoints of their edges), shape (n,)."""
        return np.concatenate([0.5 * (e[1:] + e[:-1]) for e in self.segment_edges])

    @property
    def widths(self) -> np.ndarray:
        """Pixel widths [Å], shape (n,)."""
        return np.concatenate([np.diff(e) for e in self.segment_edges])

    @property
    def lo(self) -> float:
        """Bluest edge [Å]."""
        return min(e[0] for e in self.edges)

    @property
    def hi(self) -> float:
        """Reddest edge [Å]."""
        return max(e[-1] for e in self.edges)


def window_pixels(grid: LogGrid, lo: float, hi: float) -> tuple[int, int]:
    """Pixel range ``(first, last)`` (inclusive) that covers the window [lo, hi] Å.

    PyLASP's rule (ALGORITHM §c.5): first = ⌊(ln lo − ln λ0)/Δ + 0.01⌋, last = ⌈(ln hi − ln λ0)/Δ −
    0.01⌉, so the pixels straddling both window ends are kept. ``last`` is capped at n − 1.
    """
    first = math.floor((math.log(lo) - grid.ln_start) / grid.step + 0.01)
    last = math.ceil((math.log(hi) - grid.ln_start) / grid.step - 0.01)
    return max(first, 0), min(last, grid.n - 1)


def log_grid_inside(model: LinearGrid, ln_step: float, lo: float, hi: float) -> LogGrid:
    """The ln-λ grid PyLASP fits on: inside both the model's coverage and [lo, hi] Å.

    ALGORITHM §d.2 (``uly_spect_logrebin`` on a linear input): the grid starts at ln lo, moved up by
    whole steps until its first pixel lies half a step inside the model's first edge, and ends at
    min(ln hi, ln(last model edge) − ½ step), its length rounded to the nearest integer.
    """
    edges = model.edges
    first = math.log(edges[0]) + 0.5 * ln_step
    last = math.log(edges[-1]) - 0.5 * ln_step
    start = math.log(lo)
    nshift = math.ceil(max(0.0, first - start) / ln_step - 1e-7)
    start = start + ln_step * nshift
    end = min(math.log(hi), last)
    n = round((end - start) / ln_step + 1)
    if n < 1:
        raise ValueError(
            f"the window {lo:.2f}–{hi:.2f} Å does not overlap the model's coverage "
            f"{edges[0]:.2f}–{edges[-1]:.2f} Å"
        )
    return LogGrid(start, ln_step, n)


LAMOST_AIR_GRID = LogGrid(3.5682 * math.log(10.0) - 0.00028, LAMOST_LN_STEP, 3909)
"""The LAMOST DR9/DR10 low-resolution pixel grid in air (header wavelengths shifted by PyLASP's
constant vacuum→air term, ALGORITHM §c.4)."""


def lamost_fit_grid(model: LinearGrid, window: tuple[float, float] = (4200.0, 5700.0)) -> LogGrid:
    """The LAMOST pixels PyLASP fits for a model on ``model`` and a window [Å] (§c.5, §c.8).

    For the ELODIE 3.2 4199.2–5700.2 Å model and the default window these are LAMOST pixels
    552..1878 (1327 pixels, λ 4200.28–5700.05 Å).
    """
    first, last = window_pixels(LAMOST_AIR_GRID, *window)
    centres = LAMOST_AIR_GRID.centres
    inside = log_grid_inside(model, LAMOST_LN_STEP, centres[first], centres[last])
    k0 = round((inside.ln_start - LAMOST_AIR_GRID.ln_start) / LAMOST_LN_STEP)
    return LAMOST_AIR_GRID.sub(k0, inside.n)


def window_note(grid: LogGrid, window) -> str | None:
    """A message when the fit grid ``grid`` covers less of ``window`` [Å] than asked (the model
    does not reach that far) by more than a pixel at either end, else None."""
    lo, hi = window
    first, last = grid.edges[0], grid.edges[-1]
    if lo < first * (1 - grid.step) or hi > last * (1 + grid.step):
        return (f"the window {lo:g}–{hi:g} Å reaches beyond the model's coverage: fitting "
                f"{first:.1f}–{last:.1f} Å")
    return None
