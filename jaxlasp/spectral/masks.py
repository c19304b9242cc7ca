"""Wavelength masks: intervals [Å] of a spectrum left out of the fit, and the pixels they cover.

Intervals are in the wavelengths of the fit grid (the reader's air/vacuum convention applied), as
a tuple of (lo, hi) pairs so that they are hashable and can be recorded with a run's options.
A pixel is masked when its centre lies inside an interval (ends included).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

Intervals = tuple[tuple[float, float], ...]


def check_intervals(intervals) -> Intervals:
    """``intervals`` as a sorted tuple of (lo, hi) float pairs; ValueError unless each has
    finite lo < hi."""
    pairs = []
    for pair in intervals:
        values = tuple(float(v) for v in pair)
        if len(values) != 2:
            raise ValueError(f"a mask interval needs two wavelengths (lo, hi), not {pair!r}")
        lo, hi = values
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"a mask interval needs finite lo < hi [Å], not {lo:g}-{hi:g}")
        pairs.append((lo, hi))
    return tuple(sorted(pairs))


def parse_intervals(text: str) -> Intervals:
    """Intervals from ``"LO-HI[,LO-HI…]"`` [Å], e.g. ``"5570-5585,6860-6920"``."""
    pairs = []
    for item in text.split(","):
        lo, sep, hi = item.strip().partition("-")
        try:
            pairs.append((float(lo), float(hi)))
        except ValueError:
            raise ValueError(f"a mask interval is LO-HI in Å (e.g. 5570-5585), not {item!r}") \
                from None
        if not sep:
            raise ValueError(f"a mask interval is LO-HI in Å (e.g. 5570-5585), not {item!r}")
    return check_intervals(pairs)


def read_intervals(path) -> Intervals:
    """Intervals from a text file: two columns (lo, hi [Å]), one interval a line, ``#`` comments."""
    path = Path(path)
    try:
        table = np.loadtxt(path, comments="#", ndmin=2, dtype=np.float64)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a mask file of two columns lo hi [Å] ({err})") from None
    if table.size and table.shape[1] != 2:
        raise ValueError(f"{path}: a mask file has two columns (lo hi [Å]), not {table.shape[1]}")
    return check_intervals(table.tolist())


def intervals_from(spec: str) -> Intervals:
    """``--mask`` argument: a file of intervals if ``spec`` names one, else ``LO-HI,…``."""
    return read_intervals(spec) if Path(spec).is_file() else parse_intervals(spec)


def masked_pixels(wavelength, intervals: Intervals) -> np.ndarray:
    """Boolean array, True where a pixel centre ``wavelength`` [Å] lies inside an interval."""
    wavelength = np.asarray(wavelength, np.float64)
    masked = np.zeros(wavelength.shape, bool)
    for lo, hi in intervals:
        masked |= (wavelength >= lo) & (wavelength <= hi)
    return masked


DEFAULT_WINDOW = (4200.0, 5700.0)
"""PyLASP's fitting window [Å]."""


def fit_window(window=None, segments: Intervals = ()) -> tuple[float, float]:
    """The window a fit reads and fits: ``window``, or the span of ``segments`` (disjoint
    (lo, hi) [Å] windows fitted jointly), or PyLASP's 4200–5700 Å; ValueError for both."""
    if segments:
        if window is not None and tuple(window) != (segments[0][0], max(hi for _, hi in segments)):
            raise ValueError("give a window or segments, not both (segments set the window)")
        return (min(lo for lo, _ in segments), max(hi for _, hi in segments))
    return DEFAULT_WINDOW if window is None else (float(window[0]), float(window[1]))
