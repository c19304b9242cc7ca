"""Spectra from plain arrays or ``specutils`` objects, and the host-side (numpy) resampler that
puts spectra not sampled uniformly in ln λ onto the LAMOST pixel lattice.

**The lattice.** LAMOST's air ln-λ pixels (``jaxlasp.grids.LAMOST_AIR_GRID``, Δlog10 λ = 1e-4,
the sampling of the LASP paper) continued to all wavelengths: ln λ_k = L0 + kΔ for every integer
k. A spectrum resampled onto it has exactly the pixels a LAMOST spectrum has, so one fit grid
(``lamost_fit_grid``) is a sub-grid of every spectrum, whichever survey it comes from, and
``cut_to_grid`` works unchanged.

**Vacuum → air.** Vacuum wavelengths are converted with PyLASP's LAMOST convention, the
constant shift ln λ_air = ln λ_vac − ``VACUUM_LN_SHIFT`` (ALGORITHM §c.4), never with a
wavelength-dependent formula: results from every survey then share LAMOST's wavelength scale,
and log-uniform vacuum spectra keep their pixels (a constant shift maps a ln-λ grid onto a ln-λ
grid). Against the IAU standard (Morton 2000) this is off by −0.8…+0.5 km/s over 4200–5700 Å
and by at most 1.8 km/s over 3600–9830 Å.

**Resampling** (``rebin``) is flux-conserving: an output pixel's flux is the overlap-weighted
mean of the flux densities of the good input pixels (finite flux, ivar > 0, mask 0) in its bin,
so Σ flux·width is conserved where everything is good. Its inverse variance is that of this mean
for independent input errors, (Σ o_j)² / Σ o_j² σ_j² with o_j the overlaps [Å]; the covariance
that averaging introduces between neighbouring output pixels is neglected. An output pixel less
than half covered (``MIN_COVERAGE``) by good input pixels gets no value: NaN flux, ivar 0.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from jaxlasp.grids import LAMOST_AIR_GRID, LogGrid, PixelGrid
from jaxlasp.io.lamost import (
    VACUUM_LN_SHIFT,
    Spectrum,
    SpectrumFileError,
    fill_nonfinite,
    make_spectrum,
    windowed_spectrum,
)

MIN_COVERAGE = 0.5
"""Least fraction of an output pixel's width that good input pixels must cover."""
ALIGN_TOLERANCE = 0.01
"""Largest offset [pixels] of an input wavelength from a ln-λ grid (or of a ln-λ grid from the
LAMOST lattice) for the input to count as sampled on it."""


class Band(NamedTuple):
    """The overlaps of m output pixels with n input pixels, as a band of K input pixels each.

    index: (m, K) int, input pixels (clipped into 0..n−1 where the band runs off the input).
    overlap: (m, K) float, overlap [Å] of output pixel i with input pixel index[i, k] (0 off it).
    width: (m,) output pixel widths [Å].
    """

    index: np.ndarray
    overlap: np.ndarray
    width: np.ndarray


def pixel_edges(centres: np.ndarray) -> np.ndarray:
    """Edges (n+1,) [Å] of pixels with increasing ``centres`` (n,), n ≥ 2: midpoints between
    neighbours, the two outer edges half a neighbouring step beyond the end pixels."""
    centres = np.asarray(centres, np.float64)
    mid = 0.5 * (centres[1:] + centres[:-1])
    return np.concatenate([[2 * centres[0] - mid[0]], mid, [2 * centres[-1] - mid[-1]]])


def band(in_edges: np.ndarray, out_edges: np.ndarray) -> Band:
    """The overlap band of output bins ``out_edges`` (m+1,) with input bins ``in_edges`` (n+1,),
    both increasing [Å]."""
    in_edges, out_edges = np.asarray(in_edges, np.float64), np.asarray(out_edges, np.float64)
    n = in_edges.size - 1
    lo = np.searchsorted(in_edges, out_edges[:-1], side="right") - 1
    hi = np.searchsorted(in_edges, out_edges[1:], side="left") - 1
    k = max(int(np.max(hi - lo)) + 1, 1)
    index = lo[:, None] + np.arange(k)
    inside = (index >= 0) & (index < n) & (index <= hi[:, None])
    index = np.clip(index, 0, n - 1)
    overlap = (np.minimum(out_edges[1:, None], in_edges[index + 1])
               - np.maximum(out_edges[:-1, None], in_edges[index]))
    return Band(index, np.where(inside, np.maximum(overlap, 0.0), 0.0), np.diff(out_edges))


def good_pixels(flux: np.ndarray, ivar: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Pixels usable as resampling input: finite flux, finite ivar > 0 and mask 0."""
    with np.errstate(invalid="ignore"):
        return np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & (mask == 0)


def rebin(b: Band, flux: np.ndarray, ivar: np.ndarray,
          good: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flux-conserving resampling of (..., n) input pixels onto the band's m output pixels.

    flux [any flux density unit], ivar [flux⁻²] and good (bool) have shape (..., n). Returns
    (flux, ivar), float64 (..., m): the overlap-weighted mean of the good input pixels and its
    inverse variance; NaN and 0 where good pixels cover less than ``MIN_COVERAGE`` of the bin.
    """
    weight = np.where(good[..., b.index], b.overlap, 0.0)
    values = np.where(weight > 0, flux[..., b.index], 0.0)
    variance = np.divide(1.0, ivar, out=np.zeros(np.shape(ivar)), where=good)[..., b.index]
    covered = weight.sum(-1)
    var_sum = (weight**2 * variance).sum(-1)
    ok = covered >= MIN_COVERAGE * b.width
    mean = np.divide((weight * values).sum(-1), covered, out=np.full(covered.shape, np.nan),
                     where=ok)
    return mean, np.divide(covered**2, var_sum, out=np.zeros(covered.shape), where=ok)


def overlapping_bits(b: Band, mask: np.ndarray) -> np.ndarray:
    """Bitwise OR (..., m) of the mask bits (..., n) of the input pixels each output overlaps."""
    mask = np.asarray(mask).astype(np.uint32)
    return np.bitwise_or.reduce(np.where(b.overlap > 0, mask[..., b.index], 0).astype(np.uint32),
                                axis=-1)


def lattice_grid(lo: float, hi: float) -> LogGrid:
    """The LAMOST-lattice pixels whose bins lie inside [lo, hi] Å (air).

    Raises ValueError when no whole pixel fits.
    """
    base = LAMOST_AIR_GRID
    first = math.ceil((math.log(lo) - base.ln_start) / base.step + 0.5)
    last = math.floor((math.log(hi) - base.ln_start) / base.step - 0.5)
    if last < first:
        raise ValueError(f"{lo:.3f}–{hi:.3f} Å holds no whole pixel of the LAMOST lattice")
    return base.sub(first, last - first + 1)


def log_uniform_grid(ln_wave: np.ndarray) -> LogGrid | None:
    """The ln-λ grid that ``ln_wave`` (n,) [ln Å, increasing] samples, or None if it is not
    uniform in ln λ to ``ALIGN_TOLERANCE`` pixels.

    A grid with the LAMOST step lying within the tolerance of the lattice is returned as the
    exact lattice sub-grid (float32 wavelengths then still give commensurate grids).
    """
    n = ln_wave.size
    step = (ln_wave[-1] - ln_wave[0]) / (n - 1)
    offsets = ln_wave - (ln_wave[0] + step * np.arange(n))
    if not step > 0 or np.max(np.abs(offsets)) > ALIGN_TOLERANCE * step:
        return None
    base = LAMOST_AIR_GRID
    k0 = round((ln_wave[0] - base.ln_start) / base.step)
    on_lattice = np.abs(ln_wave - (base.ln_start + base.step * (k0 + np.arange(n))))
    if np.max(on_lattice) <= ALIGN_TOLERANCE * base.step:
        return base.sub(k0, n)
    return LogGrid(float(ln_wave[0]), float(step), n)


def flux_normaliser(flux: np.ndarray) -> float:
    """max(median of the finite values, 1), or 1 when none is finite (the §c.3 rule)."""
    finite = flux[np.isfinite(flux)]
    return max(float(np.median(finite)), 1.0) if finite.size else 1.0


MIN_SEGMENT_PIXELS = 10
"""Fewest pixels an arm keeps inside a window for that part to become a native segment."""


class NativeCut(NamedTuple):
    """Which pixels of each arm a native spectrum keeps: ``grid`` (one segment per arm and
    window) and, per segment, (arm number, index array of the arm's pixels)."""

    grid: PixelGrid
    parts: tuple[tuple[int, np.ndarray], ...]


def native_cut(arm_edges, windows, source) -> NativeCut:
    """The ``NativeCut`` of arms with pixel edges ``arm_edges`` (air Å, increasing) for windows
    ((lo, hi), … Å; None: every pixel): the pixels of each arm whose centres lie in a window
    form a segment (arm after arm, windows in order); parts of fewer than
    ``MIN_SEGMENT_PIXELS`` pixels are left out. SpectrumFileError (naming ``source``) when the
    arms do not cover every window (to half a pixel) or no segment is left."""
    lo = min(float(e[0]) for e in arm_edges)
    hi = max(float(e[-1]) for e in arm_edges)
    segments, parts = [], []
    for w_lo, w_hi in windows or [(lo, hi)]:
        if w_lo < lo or w_hi > hi:
            raise SpectrumFileError(f"{source}: the spectrum covers {lo:.1f}–{hi:.1f} Å, which "
                                    f"does not include the window {w_lo:g}–{w_hi:g} Å")
    for arm, edges in enumerate(arm_edges):
        centres = 0.5 * (edges[1:] + edges[:-1])
        for w_lo, w_hi in windows or [(lo, hi)]:
            index = np.flatnonzero((centres >= w_lo) & (centres <= w_hi))
            if index.size >= MIN_SEGMENT_PIXELS:
                segments.append(edges[index[0]:index[-1] + 2])
                parts.append((arm, index))
    if not segments:
        raise SpectrumFileError(f"{source}: no arm has {MIN_SEGMENT_PIXELS} pixels inside "
                                f"{list(windows)}")
    return NativeCut(PixelGrid.from_edges(*segments), tuple(parts))


def native_spectrum(id_: str, cut: NativeCut, arms) -> Spectrum:
    """A ``Spectrum`` on its own pixels (``cut.grid``) from each arm's (flux, ivar, mask) (n_arm,)
    arrays: a pixel without good data (``good_pixels``) gets ivar 0 and ``finite`` False, its
    flux filled as a LAMOST pixel's (§c.6); ``andmask`` holds the mask bits; ``median`` is
    ``flux_normaliser`` of the good pixels kept."""
    flux, ivar, mask, good = [], [], [], []
    for arm, index in cut.parts:
        f, v, m = (np.asarray(a)[index] for a in arms[arm])
        ok = good_pixels(f.astype(np.float64), v.astype(np.float64), m)
        flux.append(np.where(ok, f, np.nan))
        ivar.append(np.where(ok, v, 0.0))
        mask.append(np.asarray(m).astype(np.int64))
        good.append(ok)
    flux, good = np.concatenate(flux).astype(np.float64), np.concatenate(good)
    return make_spectrum(id_, cut.grid, fill_nonfinite(flux.astype(np.float32)),
                         np.concatenate(ivar).astype(np.float32),
                         np.concatenate(mask).astype(np.uint32).view(np.int32),
                         flux_normaliser(flux), good)


def spectrum_from_arrays(wave, flux, ivar=None, mask=None, *, id: str = "spectrum",
                         vacuum: bool = False, window: tuple[float, float] | None = None,
                         resample: bool = False, native: bool = False,
                         windows=None) -> Spectrum:
    """A ``Spectrum`` from arrays sampled on any grid.

    wave: (n,) pixel centres [Å], strictly monotonic (decreasing input is reversed), air unless
    ``vacuum``. flux: (n,) flux density (any unit). ivar: (n,) inverse variance [flux⁻²]
    (default 1). mask: (n,) bool or integer bits, nonzero = bad (default none). window: [Å] to
    truncate to (default: keep everything).

    Uniform in ln λ (to ``ALIGN_TOLERANCE`` pixels): the pixels are kept as they are, as
    ``read_lamost`` keeps a LAMOST file's (mask bits go to ``andmask``, ``median`` is
    max(nanmedian(flux), 1)). Otherwise the arrays are resampled (``rebin``) onto the LAMOST
    lattice pixels inside their coverage; pixels without good data get ivar 0 and
    ``finite = False``, and ``median`` comes from the resampled pixels; ``resample`` resamples
    a uniform grid too (one whose pixels are not the lattice's). ``native``: the spectrum keeps
    its own pixels whatever they are (a ``PixelGrid``, ``native_spectrum``), cut to ``windows``
    ((lo, hi), … Å: segments; default ``[window]``). Raises ValueError for inconsistent shapes
    or a non-monotonic ``wave``, SpectrumFileError when the window is not covered.
    """
    wave, flux = np.asarray(wave, np.float64), np.asarray(flux, np.float64)
    n = wave.size
    ivar = np.ones(n) if ivar is None else np.asarray(ivar, np.float64)
    mask = (np.zeros(n, np.int64) if mask is None
            else np.nan_to_num(np.asarray(mask)).astype(np.int64))
    if wave.ndim != 1 or n < 2 or any(a.shape != wave.shape for a in (flux, ivar, mask)):
        raise ValueError(f"wave, flux, ivar and mask must be 1-D of one length ≥ 2, not "
                         f"{[np.shape(a) for a in (wave, flux, ivar, mask)]}")
    if np.all(np.diff(wave) < 0):
        wave, flux, ivar, mask = wave[::-1], flux[::-1], ivar[::-1], mask[::-1]
    if not np.all(np.diff(wave) > 0) or wave[0] <= 0:
        raise ValueError("wave must be positive and strictly monotonic")
    shift = VACUUM_LN_SHIFT if vacuum else 0.0
    source = f"spectrum {id}"
    if native:
        edges = pixel_edges(wave) * math.exp(-shift)
        cut = native_cut([edges], windows or (None if window is None else [window]), source)
        return native_spectrum(id, cut, [(flux, ivar, mask)])
    grid = log_uniform_grid(np.log(wave) - shift)
    if grid is not None and not resample:
        flux32 = flux.astype(np.float32)
        return windowed_spectrum(id, grid, flux32, ivar.astype(np.float32), mask.astype(np.int32),
                                 max(float(np.nanmedian(flux32)), 1.0), window, source)
    edges = pixel_edges(wave) * math.exp(-shift)
    grid = lattice_grid(edges[0], edges[-1])
    b = band(edges, grid.edges)
    out, out_ivar = rebin(b, flux, ivar, good_pixels(flux, ivar, mask))
    andmask = np.where(out_ivar > 0, 0, overlapping_bits(b, mask)).astype(np.uint32)
    return windowed_spectrum(id, grid, out.astype(np.float32), out_ivar.astype(np.float32),
                             andmask.view(np.int32), flux_normaliser(out), window, source)


def from_specutils(spectrum, *, id: str = "spectrum", vacuum: bool = False,
                   window: tuple[float, float] | None = None) -> Spectrum:
    """A ``Spectrum`` from a one-dimensional ``specutils`` spectrum (Spectrum1D / Spectrum).

    The spectral axis is converted to Å (wavelength, frequency or energy); flux values are taken
    in the object's own unit (the fit's multiplicative polynomial absorbs the scale);
    ``uncertainty`` (any astropy kind) becomes ivar and ``mask`` (True = bad) the mask. Whether
    the wavelengths are in vacuum is not recorded by specutils: say so with ``vacuum``. For a
    multi-spectrum object pass its rows, ``[from_specutils(s[i]) for i in ...]``.
    """
    return spectrum_from_arrays(*specutils_arrays(spectrum), id=id, vacuum=vacuum, window=window)


def specutils_arrays(spectrum) -> tuple:
    """(wave [Å], flux, ivar or None, mask or None) of a one-dimensional specutils spectrum."""
    import astropy.units as u
    from astropy.nddata import InverseVariance

    if np.ndim(spectrum.flux) != 1:
        raise ValueError(f"from_specutils takes one spectrum; the flux has shape "
                         f"{np.shape(spectrum.flux)} (pass its rows one at a time)")
    wave = spectrum.spectral_axis.to_value(u.AA, equivalencies=u.spectral())
    ivar = (None if spectrum.uncertainty is None
            else spectrum.uncertainty.represent_as(InverseVariance).array)
    return wave, np.asarray(spectrum.flux.value), ivar, spectrum.mask
