"""The forward model: parameters → model spectrum on an observed grid → residuals.

Composition (ALGORITHM §h.4): emulator (§a) → flux-conserving resampling (§d) → Gaussian
broadening with (mu, sigma) (§e) → multiplicative Legendre polynomial fitted by weighted least
squares (§f). Functions here act on one spectrum and are pure, jit-able and differentiable; the
``batch_*`` versions are their ``vmap`` over spectra that share one observed grid.

Parameter vector θ (as LASP-CurveFit): [mu (pixels), sigma (pixels), ln Teff (ln K), log g (dex),
[Fe/H] (dex)]. With a broadening per segment (``segment_broadening``: arms of different
resolution) θ continues with the σ [pixels] of the second, third, … segment, and ``sigma`` is the
first segment's: [mu, σ_1, ln Teff, log g, [Fe/H], σ_2, …, σ_K].

**Native pixels.** Observed pixels need not be the ln-λ lattice: with ``pixels`` (a
``PixelGrid``: any strictly increasing edges, in one or more segments such as a spectrograph's
arms) the model is broadened on a ln-λ *kernel grid* (``grid``: LAMOST's lattice covering the
pixels, each lattice pixel split into ``oversample`` equal ones where the observed pixels are
finer than the lattice's) and then resampled, flux-conserving, onto the observed pixels
(``observe``): the model is resampled, never the data. mu and sigma stay in LAMOST pixels
(``parameter_grid``) whatever the kernel grid's step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlasp.compile_cache import program
from jaxlasp.emulators.lines import LineListEmulator, crop_linelist, linelist_flux
from jaxlasp.emulators.tgm import TGMEmulator, crop_to, tgm_flux
from jaxlasp.grids import C_KMS, LAMOST_AIR_GRID, LAMOST_LN_STEP, LinearGrid, LogGrid, PixelGrid
from jaxlasp.io.arrays import band
from jaxlasp.spectral.broaden import broaden, kernel_fits
from jaxlasp.spectral.continuum import (
    DEGREE,
    LegendreSystem,
    combined_fit,
    combined_tangents,
    fit_multiplicative_polynomial,
    legendre_system,
    polynomial_fit,
    polynomial_tangents,
    segment_basis,
)
from jaxlasp.spectral.resample import ResamplingPlan, apply_plan, resample, resampling_plan

MU, SIGMA, LN_TEFF, LOGG, FEH = range(5)
"""Indices into the parameter vector θ."""
STELLAR_PARAMETERS = 5
"""Length of θ with one broadening; the σ of segments 2, 3, … follow from this index."""
DEFAULT_HALFWIDTH = 40
"""Static kernel half-width [pixels]: holds |mu| ≤ 15 and σ ≤ 5 (LASP-Adam's box)."""


class PolynomialDesign(NamedTuple):
    """Legendre bases of the polynomials fitted with the model: model = c·(M a) + A b.

    multiplicative: (n, K) — one block of P_0..P_d per segment, 0 outside it; additive: (n, J),
    J = 0 without an additive polynomial."""

    multiplicative: jax.Array
    additive: jax.Array


REFERENCE_SPAN = float(np.log(5700.0 / 4200.0))
"""ln-λ span of PyLASP's window, over which the multiplicative degree is ``DEGREE``."""


def segment_ranges(grid: LogGrid, segments) -> list[tuple[int, int]]:
    """(first, stop) pixel ranges of ``grid`` whose centres lie in each (lo, hi) [Å] segment;
    ValueError when segments overlap or one holds fewer than 10 pixels."""
    centres = grid.centres
    ranges = []
    for lo, hi in segments:
        first, stop = int(np.searchsorted(centres, lo)), int(np.searchsorted(centres, hi, "right"))
        if stop - first < 10:
            raise ValueError(f"segment {lo:g}-{hi:g} Å holds {max(stop - first, 0)} pixels of the "
                             f"fit grid ({centres[0]:.1f}–{centres[-1]:.1f} Å); at least 10 needed")
        if ranges and first < ranges[-1][1]:
            raise ValueError(f"segments overlap at {lo:g} Å; give disjoint LO-HI intervals")
        ranges.append((first, stop))
    return ranges


def fitted_pixels(fm: ForwardModel) -> np.ndarray:
    """(n,) bool: the pixels inside the fitted segments (all of them without segments); the
    others must get weight 0."""
    if fm.design is None:
        return np.ones(n_pixels(fm), bool)
    return np.any(np.asarray(fm.design.multiplicative) != 0, axis=1)


def segment_degree(degree: int, grid: LogGrid, pixels: int) -> int:
    """The multiplicative degree of a segment of ``pixels`` pixels: ``degree`` scaled by its
    ln-λ span over ``REFERENCE_SPAN`` (so a 4200–5700 Å segment keeps ``degree``), at least 1."""
    return span_degree(degree, pixels * grid.step)


def span_degree(degree: int, ln_span: float) -> int:
    """``degree`` scaled by a segment's ln-λ span over ``REFERENCE_SPAN``, at least 1."""
    return max(1, round(degree * ln_span / REFERENCE_SPAN))


class LatticeView(NamedTuple):
    """How native pixels map onto the kernel grid's ln-λ pixels, for the global start.

    index, overlap: (n_lattice, K) the observed pixels overlapping each lattice pixel
    (``parameter_grid``) and the overlaps [Å] (0 off it); width: (n_lattice,) the lattice
    pixel widths [Å]; legendre: the Legendre system of the scoring polynomial on the lattice;
    emulator: the emulator on the lattice pixels."""

    index: jax.Array
    overlap: jax.Array
    width: jax.Array
    legendre: LegendreSystem
    emulator: TGMEmulator | LineListEmulator


@dataclass(frozen=True)
class ForwardModel:
    """Everything needed to evaluate model spectra on one observed grid (a pytree).

    emulator: a TGM emulator (coefficients on the model's own grid, or already resampled onto
        ``grid``) or a line-list emulator (``jaxlasp.emulators.lines``, on its own grid).
    legendre: Legendre polynomials at PyLASP's nodes and their product rule.
    grid: the observed ln-λ grid (static); with native ``pixels``, the kernel grid the model is
        broadened on.
    halfwidth: static kernel half-width [pixels].
    edges: resampling edge convention ("extrapolate" or "clip"), used when the emulator is still
        on its own grid.
    design: None (PyLASP: one multiplicative polynomial of ``legendre``'s degree over the grid)
        or the bases of ``PolynomialDesign`` (segments, an additive polynomial), fitted by
        ``combined_fit``.
    pixels: None (the observed pixels are ``grid``'s) or the native observed pixels
        (``PixelGrid``), onto which the broadened model is resampled; ``grid`` is then the
        kernel grid only.
    view: with ``pixels``, the ``LatticeView`` that puts data onto the lattice for the global
        start.
    oversample: kernel-grid pixels per LAMOST-lattice pixel (1 but with finer native pixels);
        ``halfwidth`` counts kernel-grid pixels, mu and sigma lattice pixels.
    lattice: with ``oversample`` > 1, the lattice that ``grid`` refines (``parameter_grid``).
    broadenings: the number of broadening widths σ (1; or one per segment, θ then holds
        ``n_parameters`` values).
    sigma_segment: with ``broadenings`` > 1, (n,) int32: which σ (0 … broadenings − 1) each
        observed pixel is broadened with (its segment's; pixels between segments take a
        neighbour's, they have weight 0).
    """

    emulator: TGMEmulator | LineListEmulator
    legendre: LegendreSystem
    grid: LogGrid
    halfwidth: int = DEFAULT_HALFWIDTH
    edges: str = "extrapolate"
    design: PolynomialDesign | None = None
    pixels: PixelGrid | None = None
    view: LatticeView | None = None
    oversample: int = 1
    lattice: LogGrid | None = None
    broadenings: int = 1
    sigma_segment: jax.Array | None = None


jax.tree_util.register_dataclass(
    ForwardModel, data_fields=["emulator", "legendre", "design", "view", "sigma_segment"],
    meta_fields=["grid", "halfwidth", "edges", "pixels", "oversample", "lattice", "broadenings"])


def n_parameters(fm: ForwardModel) -> int:
    """Length of θ: 5, plus one σ for each segment after the first with ``broadenings``."""
    return STELLAR_PARAMETERS + fm.broadenings - 1


def sigma_indices(fm: ForwardModel) -> tuple[int, ...]:
    """Indices of θ holding the broadening widths σ, one per segment (``SIGMA`` first)."""
    return (SIGMA, *range(STELLAR_PARAMETERS, n_parameters(fm)))


def full_theta(fm: ForwardModel, theta):
    """θ (..., 5) or (..., ``n_parameters``) → (..., ``n_parameters``): each segment's σ
    starting at the one ``sigma`` (θ of the right length is returned unchanged)."""
    theta = jnp.asarray(theta)
    missing = n_parameters(fm) - theta.shape[-1]
    if missing == 0:
        return theta
    if theta.shape[-1] != STELLAR_PARAMETERS or missing < 0:
        raise ValueError(f"θ has {theta.shape[-1]} values; the model takes "
                         f"{STELLAR_PARAMETERS} or {n_parameters(fm)}")
    sigma = jnp.repeat(theta[..., SIGMA:SIGMA + 1], missing, axis=-1)
    return jnp.concatenate([theta, sigma], axis=-1)


def parameter_grid(fm: ForwardModel) -> LogGrid:
    """The ln-λ grid whose pixels mu and sigma count: ``fm.grid``, or the lattice it refines
    when ``fm.oversample`` > 1 (its step converts them to km/s)."""
    return fm.grid if fm.lattice is None else fm.lattice


def refine(grid: LogGrid, k: int) -> LogGrid:
    """``grid`` with each pixel split into ``k`` equal ln-λ pixels (same edges overall)."""
    return LogGrid(grid.ln_start - 0.5 * (k - 1) * grid.step / k, grid.step / k, grid.n * k)


def kernel_mean_width(fm: ForwardModel, theta):
    """(mu, sigma) of θ in kernel-grid pixels; sigma: each segment's (``broadenings``,) when
    there is more than one broadening."""
    mu = theta[MU] * fm.oversample
    sigma = theta[SIGMA] if fm.broadenings == 1 else theta[jnp.array(sigma_indices(fm))]
    return mu, sigma * fm.oversample


def broaden_observe(fm: ForwardModel, resampled, theta):
    """The model on the kernel grid ``resampled`` broadened with θ's (mu, sigma) and put onto the
    observed pixels (``observe``); with a σ per segment, each pixel from its segment's width."""
    mu, sigma = kernel_mean_width(fm, theta)
    if fm.broadenings == 1:
        return observe(fm, broaden(resampled, mu, sigma, fm.halfwidth))
    each = jax.vmap(lambda s: observe(fm, broaden(resampled, mu, s, fm.halfwidth)))(sigma)
    return jnp.take_along_axis(each, fm.sigma_segment[None, :], axis=0)[0]


def n_pixels(fm: ForwardModel) -> int:
    """Number of observed pixels (the length of flux and weights arrays)."""
    return fm.grid.n if fm.pixels is None else fm.pixels.n


def observed_grid(fm: ForwardModel) -> LogGrid | PixelGrid:
    """The observed pixels: ``fm.pixels``, or ``fm.grid`` without native pixels."""
    return fm.grid if fm.pixels is None else fm.pixels


def observe(fm: ForwardModel, values):
    """``values`` (..., grid.n) on the kernel grid → the observed pixels (..., n): unchanged
    without native pixels, else resampled per segment (flux-conserving, exact bin means)."""
    if fm.pixels is None:
        return values
    return apply_plan(values, fm.grid.edges, _plan(fm.grid, fm.pixels, fm.edges))


@lru_cache(maxsize=16)
def _plan(grid: LogGrid, pixels: PixelGrid, edges: str) -> ResamplingPlan:
    """The ``ResamplingPlan`` from ``grid`` onto native ``pixels`` (worked out once per pair)."""
    return resampling_plan(grid.edges, pixels.segment_edges, edges)


def lattice_view(fm: ForwardModel, flux, weights):
    """(flux, weights) of one spectrum on native pixels (n,) put onto the lattice
    (``parameter_grid``): each lattice pixel the overlap-weighted mean of the used pixels under
    it, with the inverse variance of that mean (``jaxlasp.io.arrays.rebin``'s rule, weights as
    1/σ²); weight 0 where used pixels cover less than half of it."""
    view = fm.view
    used = weights[view.index] > 0
    share = jnp.where(used, view.overlap, 0.0)
    covered = jnp.sum(share, axis=-1)
    ok = covered >= 0.5 * view.width
    safe = jnp.where(ok, covered, 1.0)
    mean = jnp.sum(share * jnp.where(used, flux[view.index], 0.0), axis=-1) / safe
    variance = jnp.sum(share**2 / jnp.where(used, weights[view.index], 1.0), axis=-1)
    return (jnp.where(ok, mean, 0.0),
            jnp.where(ok, covered**2 / jnp.where(ok, variance, 1.0), 0.0))


def lattice_model(fm: ForwardModel) -> ForwardModel:
    """The forward model of the lattice's own pixels (``parameter_grid``; no native pixels, one
    polynomial of the view's degree): what the global start scores ``lattice_view`` data with."""
    return ForwardModel(fm.view.emulator, fm.view.legendre, parameter_grid(fm),
                        fm.halfwidth // fm.oversample, fm.edges)


class Components(NamedTuple):
    """Intermediate arrays of one model evaluation (on the observed pixels, shape (n,), but
    ``resampled``: on the kernel grid, which they are unless the model has native pixels)."""

    resampled: jax.Array   # emulator flux resampled onto the (kernel) grid
    convolved: jax.Array   # after broadening with (mu, sigma)
    coefs: jax.Array       # (degree+1,) Legendre coefficients of the multiplicative polynomial
    polynomial: jax.Array  # Σ_k coefs_k P_k(x_i)
    model: jax.Array       # convolved · polynomial + additive
    residuals: jax.Array   # √weight·(flux − model), zero on excluded pixels
    additive: jax.Array    # the additive polynomial (zeros without one)


def emulator_dtype(emulator: TGMEmulator | LineListEmulator):
    """The floating-point dtype an emulator computes in."""
    return emulator.dtype if isinstance(emulator, LineListEmulator) else emulator.coef.dtype


def emulator_flux(emulator: TGMEmulator | LineListEmulator, teff, logg, feh):
    """Model flux on the emulator's own pixels, for either kind of emulator."""
    if isinstance(emulator, LineListEmulator):
        return linelist_flux(emulator, teff, logg, feh)
    return tgm_flux(emulator, teff, logg, feh)


@program(static_argnames=("grid", "edges"))
def _resample_to(emulator: TGMEmulator | LineListEmulator, values, grid: LogGrid, edges: str):
    """Resample ``values`` (..., n_model) from the emulator's grid onto ``grid``."""
    return resample(values, emulator.grid.edges, grid.edges, grid.widths, edges)


def fold_resampling(emulator: TGMEmulator, grid: LogGrid,
                    edges: str = "extrapolate") -> TGMEmulator:
    """Resample every coefficient plane onto ``grid`` once (ALGORITHM §k).

    The emulator is linear in its coefficients and the resampling is linear, so evaluating the
    returned emulator equals resampling each model spectrum, up to round-off. The resampling runs
    in float64 (when JAX allows it) and the result keeps the emulator's dtype.
    """
    dtype = emulator.coef.dtype
    wide = emulator.astype(jnp.float64 if jax.config.jax_enable_x64 else dtype)
    coef = _resample_to(wide, wide.coef, grid, edges)
    return emulator.replace_coef(coef.astype(dtype), grid)


def kernel_grid(model: LinearGrid, pixels: PixelGrid, margin: int = DEFAULT_HALFWIDTH) -> LogGrid:
    """The LAMOST-lattice pixels (``LAMOST_AIR_GRID`` continued) from ``margin`` pixels below to
    ``margin`` above the native ``pixels``, inside the model's coverage ``model`` [Å]: where the
    model is broadened before it is resampled onto ``pixels`` (each pixel split by ``refine``
    when the pixels are finer).

    ValueError when the pixels reach beyond the model's coverage by more than a lattice pixel."""
    base = LAMOST_AIR_GRID
    edges = model.edges
    if pixels.lo < edges[0] * (1 - base.step) or pixels.hi > edges[-1] * (1 + base.step):
        raise ValueError(f"the pixels {pixels.lo:.2f}–{pixels.hi:.2f} Å reach beyond the model's "
                         f"coverage {edges[0]:.2f}–{edges[-1]:.2f} Å: cut them to a window "
                         "inside it")
    position = lambda wave: (np.log(wave) - base.ln_start) / base.step  # noqa: E731
    first = max(int(np.floor(position(pixels.lo) + 0.5)) - margin,
                int(np.ceil(position(edges[0]) + 0.5)))
    last = min(int(np.ceil(position(pixels.hi) - 0.5)) + margin,
               int(np.floor(position(edges[-1]) - 0.5)))
    return base.sub(first, last - first + 1)


def native_view(grid: LogGrid, pixels: PixelGrid, degree: int, emulator) -> LatticeView:
    """The ``LatticeView`` of native ``pixels`` onto the lattice ``grid`` (every segment's pixels
    that overlap a grid pixel, numbered as in ``pixels``), with ``emulator`` on ``grid``."""
    dtype = emulator_dtype(emulator)
    bands = [band(edges, grid.edges) for edges in pixels.segment_edges]
    index = np.concatenate([b.index + first for b, (first, _) in zip(bands, pixels.ranges)], 1)
    overlap = np.concatenate([b.overlap for b in bands], axis=1)
    return LatticeView(jnp.asarray(index, jnp.int32), jnp.asarray(overlap, dtype),
                       jnp.asarray(grid.widths, dtype), legendre_system(grid.n, degree, dtype),
                       emulator)


def auto_oversample(pixels: PixelGrid) -> int:
    """Kernel-grid pixels per lattice pixel for native ``pixels``: the lattice pixel's width over
    the narrowest observed pixel's, rounded up (1 for pixels as wide as LAMOST's or wider)."""
    ratio = np.max(pixels.centres * LAMOST_LN_STEP / pixels.widths)
    return max(1, math.ceil(ratio - 0.01))


def segment_of_pixels(n: int, ranges) -> np.ndarray:
    """(n,) int32: the index of the (first, stop) range each of ``n`` pixels lies in; a pixel
    between ranges gets the one before it (the first range's for pixels before all)."""
    starts = np.array([first for first, _ in ranges])
    index = np.searchsorted(starts, np.arange(n), side="right") - 1
    return np.clip(index, 0, len(ranges) - 1).astype(np.int32)


def with_segment_broadening(fm: ForwardModel, ranges) -> ForwardModel:
    """``fm`` with one broadening σ per (first, stop) pixel range of its observed pixels (none
    added for a single range)."""
    if len(ranges) < 2:
        return fm
    index = jnp.asarray(segment_of_pixels(n_pixels(fm), ranges))
    return replace(fm, broadenings=len(ranges), sigma_segment=index)


def build_forward_model(emulator: TGMEmulator | LineListEmulator, grid: LogGrid | None = None,
                        *, edges: str = "extrapolate",
                        fold: bool = True, degree: int = DEGREE, adegree: int = -1,
                        segments=(), halfwidth: int = DEFAULT_HALFWIDTH,
                        pixels: PixelGrid | None = None,
                        oversample: int | None = None,
                        segment_broadening: bool = False) -> ForwardModel:
    """Set up the forward model for observed grid ``grid`` (or native ``pixels``).

    The emulator is first cropped to the pixels covering the grid (plus one each side).
    fold: resample the coefficient planes once now (fast); otherwise resample every model. A
    line-list emulator is not linear in its parameters, so its spectra are always resampled.
    degree: the multiplicative polynomial's degree (PyLASP: 50); adegree: the additive one's
    (−1: none, PyLASP; 0: a constant, …). segments: disjoint (lo, hi) [Å] windows inside
    ``grid``, each with its own polynomials (multiplicative degree ``segment_degree``); the
    pixels between them must get weight 0 (``jaxlasp.groups.inputs.mask_weights`` does).
    pixels: native observed pixels (``PixelGrid``; module docstring): ``grid`` is then the lattice
    whose pixels mu and sigma count (default ``kernel_grid``), refined ``oversample`` times for
    the kernel grid (default ``auto_oversample``; 1 when ``grid`` is given); each of the pixels'
    segments gets its own polynomials (one segment: of ``degree``; several: ``degree`` scaled to
    each one's ln-λ span) and ``segments`` must be empty (cut the pixels instead).
    segment_broadening: a broadening σ of its own for each segment (of ``segments``, or of the
    native pixels: a spectrograph's arms of different resolution); θ then has
    ``n_parameters`` values (module docstring). No change with a single segment.
    """
    if pixels is not None:
        fm = _native_forward_model(emulator, grid, pixels, edges=edges, fold=fold,
                                   degree=degree, adegree=adegree, segments=segments,
                                   halfwidth=halfwidth, oversample=oversample)
        return with_segment_broadening(fm, pixels.ranges) if segment_broadening else fm
    if oversample not in (None, 1):
        raise ValueError("oversample applies to native pixels only")
    if degree < 0 or adegree < -1:
        raise ValueError(f"polynomial degrees: multiplicative ≥ 0 and additive ≥ −1, not "
                         f"{degree} and {adegree}")
    if not isinstance(emulator.grid, LinearGrid):
        raise ValueError("the emulator must be on its own linear grid (as read from its file)")
    edges_model = emulator.grid.edges
    if grid.edges[0] >= edges_model[-1] or grid.edges[-1] <= edges_model[0]:
        raise ValueError(
            f"observed grid {grid.edges[0]:.2f}–{grid.edges[-1]:.2f} Å does not overlap the model "
            f"{edges_model[0]:.2f}–{edges_model[-1]:.2f} Å")
    if isinstance(emulator, LineListEmulator):
        emulator = crop_linelist(emulator, grid.edges[0], grid.edges[-1])
    else:
        emulator = crop_to(emulator, grid.edges[0], grid.edges[-1])
        if fold:
            emulator = fold_resampling(emulator, grid, edges)
    dtype = emulator_dtype(emulator)
    legendre = legendre_system(grid.n, degree, dtype)
    design = None
    ranges = segment_ranges(grid, segments) if segments else [(0, grid.n)]
    if segments or adegree >= 0:
        degrees = ([segment_degree(degree, grid, stop - first) for first, stop in ranges]
                   if segments else [degree])
        design = PolynomialDesign(
            jnp.asarray(segment_basis(grid.n, ranges, degrees), dtype),
            jnp.asarray(segment_basis(grid.n, ranges, [adegree] * len(ranges)), dtype))
    fm = ForwardModel(emulator, legendre, grid, halfwidth, edges, design)
    return with_segment_broadening(fm, ranges) if segment_broadening else fm


def _native_forward_model(emulator, grid, pixels: PixelGrid, *, segments, degree: int,
                          adegree: int, halfwidth: int, oversample: int | None,
                          **options) -> ForwardModel:
    """``build_forward_model`` for native ``pixels``."""
    if segments:
        raise ValueError("with native pixels the segments are the pixels' own: cut the pixels "
                         "to the windows instead of passing segments")
    if not isinstance(emulator.grid, LinearGrid):
        raise ValueError("the emulator must be on its own linear grid (as read from its file)")
    k = oversample or (1 if grid is not None else auto_oversample(pixels))
    lattice = build_forward_model(emulator, grid or kernel_grid(emulator.grid, pixels),
                                  degree=degree, halfwidth=halfwidth, **options)
    fm = (lattice if k == 1 else
          build_forward_model(emulator, refine(lattice.grid, k), degree=0,
                              halfwidth=halfwidth * k, **options))
    ranges = pixels.ranges
    if len(ranges) > 1 or adegree >= 0:
        spans = [float(np.log(e[-1] / e[0])) for e in pixels.segment_edges]
        degrees = ([degree] if len(ranges) == 1
                   else [span_degree(degree, span) for span in spans])
        design = PolynomialDesign(
            jnp.asarray(segment_basis(pixels.n, ranges, degrees), fm.legendre.basis.dtype),
            jnp.asarray(segment_basis(pixels.n, ranges, [adegree] * len(ranges)),
                        fm.legendre.basis.dtype))
        legendre = lattice.legendre
    else:
        design, legendre = None, legendre_system(pixels.n, degree, fm.legendre.basis.dtype)
    view = native_view(lattice.grid, pixels, degree, lattice.emulator)
    return ForwardModel(fm.emulator, legendre, fm.grid, fm.halfwidth, fm.edges, design, pixels,
                        view, k, lattice.grid if k > 1 else None)


def emulate(fm: ForwardModel, teff, logg, feh):
    """Emulator flux resampled onto the observed grid; shape (n,)."""
    flux = emulator_flux(fm.emulator, teff, logg, feh)
    if fm.emulator.grid == fm.grid:
        return flux
    return _resample_to(fm.emulator, flux, fm.grid, fm.edges)


@jax.jit
def components(fm: ForwardModel, theta, flux, weights) -> Components:
    """All intermediate arrays of the model for one spectrum.

    theta: (5,) [mu, sigma, ln Teff, log g, [Fe/H]] (``n_parameters`` with a σ per segment);
    flux: (n,) observed flux;
    weights: (n,) 1/err² times the good-pixel mask (0 = pixel not used).
    """
    resampled = emulate(fm, jnp.exp(theta[LN_TEFF]), theta[LOGG], theta[FEH])
    convolved = broaden_observe(fm, resampled, theta)
    if fm.design is None:
        coefs, polynomial = fit_multiplicative_polynomial(convolved, flux, weights, fm.legendre)
        additive = jnp.zeros_like(polynomial)
    else:
        fit = combined_fit(convolved, flux, weights, *fm.design)
        coefs, polynomial, additive = fit.coefs, fit.polynomial, fit.additive
    model = convolved * polynomial + additive
    resid = jnp.sqrt(weights) * (flux - model)
    return Components(resampled, convolved, coefs, polynomial, model, resid, additive)


def residuals(fm: ForwardModel, theta, flux, weights):
    """Weighted residuals √weight·(flux − model) for one spectrum; shape (n,), 0 where
    weight = 0."""
    return components(fm, theta, flux, weights).residuals


def broadened(fm: ForwardModel, theta):
    """The emulator spectrum broadened with (mu, sigma), on the observed pixels; shape (n,)."""
    resampled = emulate(fm, jnp.exp(theta[LN_TEFF]), theta[LOGG], theta[FEH])
    return broaden_observe(fm, resampled, theta)


@jax.jit
def residuals_and_jacobian(fm: ForwardModel, theta, flux, weights):
    """(r, Jᵀ): ``residuals`` (n,) and their exact Jacobian, transposed: ∂r/∂θ_j as rows (5, n).

    The broadened emulator spectrum c and its 5 tangents ∂c/∂θ_j (rows) come from forward-mode
    autodiff; the polynomial's derivative from the fit's own Cholesky factor
    (``polynomial_tangents``), so r = √w·(f − c·p) gives J = −√w·(∂c·p + c·∂p) without
    differentiating the moments, the factorisation or the refinement step (~7× cheaper than
    ``jax.linearize`` of ``residuals``, equal to round-off). With segments or an additive
    polynomial the design's derivative comes the same way (``combined_tangents``).
    """
    convolved, tangents = jax.vmap(
        lambda e: jax.jvp(lambda th: broadened(fm, th), (theta,), (e,)), out_axes=(None, 0))(
        jnp.eye(theta.shape[0], dtype=theta.dtype))
    root = jnp.sqrt(weights)
    if fm.design is not None:
        fit = combined_fit(convolved, flux, weights, *fm.design)
        dmodel = combined_tangents(fit, convolved, tangents, flux, weights, *fm.design)
        return root * (flux - convolved * fit.polynomial - fit.additive), -root * dmodel
    fit = polynomial_fit(convolved, flux, weights, fm.legendre)
    dpoly = polynomial_tangents(fit, convolved, tangents, flux, weights, fm.legendre)
    resid = root * (flux - convolved * fit.polynomial)
    jac = -root * (tangents * fit.polynomial + convolved * dpoly)
    return resid, jac


def model_flags(fm: ForwardModel, theta, comps: Components, weights):
    """Boolean problems of one evaluation: (outside domain, kernel too wide, polynomial ≤ 0,
    non-finite)."""
    teff = jnp.exp(theta[LN_TEFF])
    used = weights > 0
    return (
        ~fm.emulator.domain.contains(teff, theta[LOGG], theta[FEH]),
        ~jnp.all(kernel_fits(*kernel_mean_width(fm, theta), fm.halfwidth)),
        jnp.any(used & (comps.polynomial <= 0)),
        ~jnp.all(jnp.isfinite(comps.residuals)),
    )


batch_residuals = jax.vmap(residuals, in_axes=(None, 0, 0, 0))
"""``residuals`` over a batch: theta (b, 5), flux and weights (b, n) → (b, n)."""


def theta_from_physical(teff, logg, feh, rv=0.0, sigma_px=1.0, step: float = LAMOST_LN_STEP):
    """θ from Teff [K], log g, [Fe/H], RV [km/s] and σ [pixels]; shape (..., 5).

    mu = ln(1 + RV/c)/Δlnλ, so RV = c·expm1(Δlnλ·mu) inverts it exactly.
    """
    mu = np.log1p(np.asarray(rv, np.float64) / C_KMS) / step
    parts = (mu, sigma_px, np.log(teff), logg, feh)
    return np.stack(np.broadcast_arrays(*(np.asarray(v, np.float64) for v in parts)), axis=-1)


def rv_from_mu(mu, step: float):
    """Radial velocity [km/s] from the kernel mean ``mu`` [pixels of Δlnλ = ``step``]."""
    return C_KMS * jnp.expm1(step * mu)
