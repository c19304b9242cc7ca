"""Deterministic mock spectra: model spectra on the LAMOST grid with continuum, noise and defects.

``draw_parameters`` draws true stellar parameters; ``simulate`` turns them into observed spectra:

1. the forward model's broadened spectrum (emulator → resampling onto the observed grid → Gaussian
   kernel with the RV and σ; ``jaxlasp.model``), so a noise-free mock is exactly a model spectrum;
2. times a smooth random continuum 1 + Σ_{k=1..3} a_k P_k(x) (Legendre polynomials at PyLASP's
   nodes, a_k uniform in ±0.1, so it stays within 0.7–1.3), which the fit's degree-50
   multiplicative polynomial represents exactly;
3. plus Gaussian noise of one standard deviation per spectrum, median(noise-free flux)/S/N, so the
   S/N per pixel at the median flux (and the median S/N over pixels) is the requested S/N;
4. plus optional cosmic rays (positive spikes 1–3 pixels wide, unknown to ``ivar``) and bad
   pixels (flux 0, ``ivar`` 0, weight 0: a dead pixel flagged by the pipeline; not NaN, because
   0·NaN = NaN would poison the fit's weighted sums).

Randomness comes from NumPy generators seeded with ``seed``. ``simulate`` draws the continuum, the
noise, the cosmic rays and the bad pixels from four independent streams, so switching cosmic rays on
leaves the noise unchanged (Clean tests can compare the two), and every draw fills rows in order,
so the first k stars or spectra of a batch do not depend on the batch size (the spectra up to the
round-off of the batched model evaluation).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxlasp.emulators.tgm import ELODIE32_DOMAIN, Domain, TGMEmulator
from jaxlasp.fit.driver import MU_LIMIT, SIGMA_LIMIT
from jaxlasp.grids import C_KMS, LAMOST_LN_STEP, LogGrid, PixelGrid, lamost_fit_grid
from jaxlasp.io.arrays import pixel_edges
from jaxlasp.io.lamost import VACUUM_LN_SHIFT, write_lamost
from jaxlasp.model import (
    MU,
    SIGMA,
    ForwardModel,
    broadened,
    build_forward_model,
    n_pixels,
    parameter_grid,
    theta_from_physical,
)
from jaxlasp.spectral.broaden import SIGMA_FLOOR, kernel_fits
from jaxlasp.spectral.continuum import legendre_basis

DEFAULT_TEFF = (3100.0, 20000.0)
"""Default Teff range [K], clipped to the model's domain; drawn uniform in ln Teff."""
DEFAULT_LOGG = (0.0, 5.0)
"""Default log g range [dex], clipped to the model's domain."""
DEFAULT_FEH = (-2.5, 0.5)
"""Default [Fe/H] range [dex], clipped to the model's domain."""
DEFAULT_RV = (-300.0, 300.0)
"""Default radial velocity range [km/s] (±4.3 LAMOST pixels)."""
DEFAULT_SIGMA = (40.0, 120.0)
"""Default broadening σ range [km/s] (0.58–1.74 LAMOST pixels of 69 km/s).

σ is the Gaussian width beyond the template's own: LAMOST's R ≈ 1500–2000 (instrumental σ ≈
64–85 km/s) against ELODIE's R = 10000 (σ ≈ 13 km/s) leaves 60–85 km/s, widened up to 120 km/s by
rotation and narrowed to 40 km/s for the sharpest fibres."""

CONTINUUM_DEGREE = 3
"""Degree of the random Legendre continuum."""
CONTINUUM_AMPLITUDE = 0.1
"""Largest |a_k| of the continuum's Legendre coefficients k ≥ 1 (a_0 = 1)."""
COSMIC_MAX_WIDTH = 3
"""Cosmic-ray hits span 1 to this many pixels."""
COSMIC_HEIGHT = (0.5, 5.0)
"""Range of cosmic-ray heights [× the spectrum's median noise-free flux], drawn log-uniform."""
CHUNK = 64
"""Largest number of spectra computed by one compiled call (bounds the memory of broadening)."""


class MockTruth(NamedTuple):
    """True parameters of n mock stars; every field has shape (n,), float64.

    Units are those of the columns of ``jaxlasp.fit_arrays``'s table, so truth and fits compare
    field by field: teff [K], logg [dex], feh [dex], rv [km/s] and sigma [km/s], the Gaussian
    broadening c·expm1(Δlnλ·σ_px) of a kernel σ_px pixels wide.
    """

    teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray
    rv: np.ndarray
    sigma: np.ndarray

    def theta(self, step: float = LAMOST_LN_STEP) -> np.ndarray:
        """θ = [mu px, sigma px, ln Teff, log g, [Fe/H]] for pixels of ln-λ ``step``; (n, 5)."""
        return theta_from_physical(self.teff, self.logg, self.feh, self.rv,
                                   kms_to_pixels(self.sigma, step), step)


class MockSpectra(NamedTuple):
    """n simulated spectra on ``grid`` (npix pixels); arrays are float64 unless stated.

    flux: (n, npix) observed flux (noise-free flux + noise + cosmic rays; 0 on bad pixels).
    ivar: (n, npix) 1/noise² in flux units; 0 on bad pixels, +inf everywhere for S/N = inf.
    weights: (n, npix) for fitting (``fit_arrays(weights=...)``): ivar, 0 on bad pixels; for
        S/N = inf (no noise, relative weights undefined) 1 on good pixels.
    noiseless: (n, npix) model spectrum × continuum, before noise, cosmic rays and bad pixels
        (where the emulator extrapolates it can dip ≤ 0: ELODIE, 3 in 20 000 default stars).
    continuum: (n, npix) the multiplicative continuum (ones when ``continuum=False``).
    cosmic: (n, npix) bool, pixels that received cosmic-ray flux.
    bad: (n, npix) bool, bad pixels (where a pixel is both, it is bad: flux 0).
    snr: (n,) requested S/N per pixel at the median flux (inf: noise-free).
    truth: the true parameters. ids: (n,) str, "mock-00000", …. grid: the observed ln-λ grid.
    """

    flux: np.ndarray
    ivar: np.ndarray
    weights: np.ndarray
    noiseless: np.ndarray
    continuum: np.ndarray
    cosmic: np.ndarray
    bad: np.ndarray
    snr: np.ndarray
    truth: MockTruth
    ids: np.ndarray
    grid: LogGrid


def kms_to_pixels(velocity, step: float = LAMOST_LN_STEP):
    """Velocity [km/s] → pixels of ln-λ ``step``: ln(1 + v/c)/step (inverse of c·expm1(step·px))."""
    return np.log1p(np.asarray(velocity, np.float64) / C_KMS) / step


def pixels_to_kms(pixels, step: float = LAMOST_LN_STEP):
    """Pixels of ln-λ ``step`` → velocity [km/s]: c·expm1(step·pixels)."""
    return C_KMS * np.expm1(step * np.asarray(pixels, np.float64))


def _check_count(name: str, value) -> int:
    """``value`` as a non-negative int; ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, not {value!r}")
    return int(value)


def _range(name: str, requested, default: tuple[float, float], allowed: tuple[float, float],
           unit: str) -> tuple[float, float]:
    """The (lo, hi) range to draw ``name`` from.

    ``requested`` None takes ``default`` clipped to ``allowed``; an explicit range must be finite,
    ordered (lo = hi fixes the value) and inside ``allowed``. Raises ValueError otherwise.
    """
    if requested is None:
        lo, hi = max(default[0], allowed[0]), min(default[1], allowed[1])
        if lo > hi:
            raise ValueError(f"the default {name} range {default} {unit} does not overlap the "
                             f"allowed range {allowed} {unit}")
        return lo, hi
    try:
        lo, hi = (float(v) for v in requested)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (low, high) pair, not {requested!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ValueError(f"{name} range {requested!r} must be finite with low ≤ high")
    if lo < allowed[0] or hi > allowed[1]:
        raise ValueError(f"{name} range ({lo:g}, {hi:g}) {unit} lies outside the allowed range "
                         f"({allowed[0]:g}, {allowed[1]:g}) {unit}")
    return lo, hi


def velocity_limits(step: float = LAMOST_LN_STEP) -> dict[str, tuple[float, float]]:
    """Allowed RV and σ ranges [km/s]: the fit's box |mu| ≤ 15 px, 0.1 ≤ σ ≤ 5 px on ``step``."""
    return {"rv": (float(pixels_to_kms(-MU_LIMIT, step)), float(pixels_to_kms(MU_LIMIT, step))),
            "sigma": (float(pixels_to_kms(SIGMA_FLOOR, step)),
                      float(pixels_to_kms(SIGMA_LIMIT, step)))}


def draw_parameters(n: int, seed: int = 0, *, domain: Domain = ELODIE32_DOMAIN, teff=None,
                    logg=None, feh=None, rv=None, sigma=None,
                    step: float = LAMOST_LN_STEP) -> MockTruth:
    """Draw n stars: Teff uniform in ln Teff, the others uniform in their (low, high) ranges.

    teff [K], logg, feh [dex] must lie inside ``domain``; rv, sigma [km/s] inside the fit's
    parameter box for pixels of ln-λ ``step`` (``velocity_limits``). None takes the module's
    ``DEFAULT_*`` range clipped to those limits; a range (v, v) fixes the value. Deterministic in
    ``seed``; the first k stars do not depend on n.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive integer, not {n!r}")
    limits = velocity_limits(step)
    lo, hi = np.array([
        _range("teff", teff, DEFAULT_TEFF, domain.teff, "K"),
        _range("logg", logg, DEFAULT_LOGG, domain.logg, "dex"),
        _range("feh", feh, DEFAULT_FEH, domain.feh, "dex"),
        _range("rv", rv, DEFAULT_RV, limits["rv"], "km/s"),
        _range("sigma", sigma, DEFAULT_SIGMA, limits["sigma"], "km/s"),
    ]).T
    unit = np.random.default_rng(seed).random((int(n), 5))
    values = lo + (hi - lo) * unit
    values[:, 0] = np.exp(np.log(lo[0]) + np.log(hi[0] / lo[0]) * unit[:, 0])
    return MockTruth(*np.clip(values, lo, hi).T)


_broadened_batch = jax.jit(jax.vmap(broadened, in_axes=(None, 0)))
"""The forward model's broadened spectra (before the polynomial) for θ (b, 5); (b, npix)."""


def model_spectra(fm: ForwardModel, theta) -> np.ndarray:
    """Broadened model spectra (n, npix), float64, for θ (n, 5), in chunks of at most ``CHUNK``.

    Each chunk is padded to a power of two (CHUNK for all but small batches), so batches of
    different sizes reuse a few compiled shapes.
    """
    theta = np.asarray(theta, np.float64)
    n = theta.shape[0]
    size = min(CHUNK, 1 << (n - 1).bit_length())
    padded = np.concatenate([theta, np.repeat(theta[-1:], -n % size, axis=0)])
    parts = [np.asarray(_broadened_batch(fm, jnp.asarray(padded[i:i + size])), np.float64)
             for i in range(0, len(padded), size)]
    return np.concatenate(parts)[:n]


def _forward_model(model, grid: LogGrid | None) -> ForwardModel:
    """``model`` as a ForwardModel on ``grid`` (default: the LAMOST 4200–5700 Å fit grid)."""
    if isinstance(model, ForwardModel):
        if grid is not None and grid != model.grid:
            raise ValueError(f"grid {grid} differs from the forward model's grid {model.grid}")
        return model
    if isinstance(model, TGMEmulator):
        return build_forward_model(model, grid or lamost_fit_grid(model.grid))
    raise ValueError(f"model must be a TGMEmulator or a ForwardModel, not {type(model).__name__}")


def _as_truth(truth: MockTruth) -> MockTruth:
    """``truth`` with float64 array fields; ValueError unless they are 1-d of one length."""
    truth = MockTruth(*(np.asarray(v, np.float64) for v in truth))
    shapes = {v.shape for v in truth}
    if len(shapes) != 1 or len(shapes.pop()) != 1 or truth.teff.size == 0:
        raise ValueError("the fields of truth must be non-empty 1-d arrays of one length")
    return truth


def _check_truth(fm: ForwardModel, truth: MockTruth, theta: np.ndarray) -> None:
    """Raise ValueError unless every star lies in the domain and its kernel fits the half-width."""
    dom = fm.emulator.domain
    outside = ~np.asarray(dom.contains(truth.teff, truth.logg, truth.feh))
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"star {i} (Teff {truth.teff[i]:g} K, log g {truth.logg[i]:g}, [Fe/H] "
                         f"{truth.feh[i]:g}) lies outside the model's domain Teff {dom.teff} K, "
                         f"log g {dom.logg}, [Fe/H] {dom.feh}")
    wide = ~np.asarray(kernel_fits(theta[:, MU] * fm.oversample, theta[:, SIGMA] * fm.oversample,
                                   fm.halfwidth))
    if wide.any():
        i = int(np.flatnonzero(wide)[0])
        raise ValueError(f"star {i} (RV {truth.rv[i]:g} km/s, σ {truth.sigma[i]:g} km/s) needs "
                         f"a kernel wider than the model's half-width of {fm.halfwidth} pixels")


def _snr(snr, n: int) -> np.ndarray:
    """Per-spectrum S/N (n,) from a scalar or (n,); ValueError unless all > 0 (inf allowed)."""
    try:
        out = np.broadcast_to(np.asarray(snr, np.float64), (n,)).copy()
    except ValueError:
        raise ValueError(f"snr must be a scalar or of shape ({n},), not {np.shape(snr)}") from None
    if not np.all(out > 0):
        raise ValueError(f"snr must be > 0 (np.inf for no noise), got minimum {np.min(out)!r}")
    return out


def random_continuum(rng: np.random.Generator, n: int, npix: int) -> np.ndarray:
    """n continua 1 + Σ_{k=1..3} a_k P_k(x_i), a_k uniform in ±0.1, at PyLASP's nodes; (n, npix).

    All lie within 1 ± 0.3, so they are positive.
    """
    coefs = rng.uniform(-CONTINUUM_AMPLITUDE, CONTINUUM_AMPLITUDE, (n, CONTINUUM_DEGREE))
    return 1.0 + coefs @ legendre_basis(npix, CONTINUUM_DEGREE)[:, 1:].T


def cosmic_ray_flux(rng: np.random.Generator, level: np.ndarray, npix: int,
                    count: int) -> np.ndarray:
    """Added flux (n, npix) of ``count`` cosmic rays per spectrum (hits may overlap).

    Each hit starts at a uniform pixel, spans 1–3 pixels (truncated at the last pixel) and adds a
    height log-uniform in ``COSMIC_HEIGHT`` × ``level`` (n,) to each of them.
    """
    n = level.shape[0]
    unit = rng.random((n, count, 3))
    start = np.floor(unit[..., 0] * npix).astype(int)
    width = 1 + np.floor(unit[..., 1] * COSMIC_MAX_WIDTH).astype(int)
    low, high = np.log(COSMIC_HEIGHT)
    height = level[:, None] * np.exp(low + (high - low) * unit[..., 2])
    spikes = np.zeros((n, npix))
    rows = np.broadcast_to(np.arange(n)[:, None], (n, count))
    for offset in range(COSMIC_MAX_WIDTH):
        hit = (offset < width) & (start + offset < npix)
        np.add.at(spikes, (rows[hit], start[hit] + offset), height[hit])
    return spikes


def bad_pixel_mask(rng: np.random.Generator, n: int, npix: int, count: int) -> np.ndarray:
    """Boolean (n, npix) with ``count`` distinct uniformly drawn bad pixels in each row."""
    bad = np.zeros((n, npix), bool)
    if count:
        chosen = np.argsort(rng.random((n, npix)), axis=1)[:, :count]
        np.put_along_axis(bad, chosen, True, axis=1)
    return bad


def simulate(model: TGMEmulator | ForwardModel, truth: MockTruth, grid: LogGrid | None = None, *,
             snr=50.0, seed: int = 0, continuum: bool = True, cosmic_rays: int = 0,
             bad_pixels: int = 0) -> MockSpectra:
    """Observed mock spectra of the stars ``truth`` (see the module docstring for the recipe).

    model: a TGM emulator (its forward model is built on ``grid``, default the LAMOST 4200–5700 Å
        fit grid ``lamost_fit_grid``: pass a ``ForwardModel`` to reuse one across calls) or a
        ForwardModel (``grid`` None or equal to its grid).
    snr: S/N per pixel at the median noise-free flux, scalar or (n,); np.inf gives no noise.
    continuum: multiply by a random smooth continuum (else by 1).
    cosmic_rays, bad_pixels: number of cosmic-ray hits / bad pixels per spectrum.
    Raises ValueError for stars outside the emulator's domain or kernels wider than the model's
    half-width, for S/N ≤ 0 and for negative counts.
    """
    fm = _forward_model(model, grid)
    npix = n_pixels(fm)
    truth = _as_truth(truth)
    theta = truth.theta(parameter_grid(fm).step)
    _check_truth(fm, truth, theta)
    n = theta.shape[0]
    snr = _snr(snr, n)
    cosmic_rays = _check_count("cosmic_rays", cosmic_rays)
    bad_pixels = _check_count("bad_pixels", bad_pixels)
    if bad_pixels > npix:
        raise ValueError(f"bad_pixels = {bad_pixels} exceeds the {npix} pixels of the grid")
    rng_continuum, rng_noise, rng_cosmic, rng_bad = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4))

    shape = random_continuum(rng_continuum, n, npix) if continuum else np.ones((n, npix))
    noiseless = model_spectra(fm, theta) * shape
    level = np.median(noiseless, axis=1)
    noise_sd = level / snr
    flux = noiseless + noise_sd[:, None] * rng_noise.standard_normal((n, npix))
    spikes = cosmic_ray_flux(rng_cosmic, level, npix, cosmic_rays)
    bad = bad_pixel_mask(rng_bad, n, npix, bad_pixels)
    flux = np.where(bad, 0.0, flux + spikes)
    with np.errstate(divide="ignore"):
        ivar = np.where(bad, 0.0, np.broadcast_to(1.0 / noise_sd[:, None] ** 2, (n, npix)))
    weights = np.where(np.isinf(ivar), 1.0, ivar)
    ids = np.array([f"mock-{i:05d}" for i in range(n)])
    return MockSpectra(flux, ivar, weights, noiseless, shape, spikes > 0, bad, snr, truth, ids,
                       fm.grid)


FILE_PAD = 10
"""Pixels added on each side when mocks are written as files (so they cover the fit window)."""


def write_mock_files(mock: MockSpectra, folder, level: float = 1000.0) -> list:
    """Write each mock spectrum as a LAMOST DR10 FITS file ``<folder>/<id>.fits``; returns the
    paths in ``mock`` order.

    The flux is scaled to a median of about ``level`` (LAMOST-like counts; the reader's normaliser
    is max(median, 1)) with ivar scaled to match, and extended by ``FILE_PAD`` edge-valued pixels
    of ivar 0 on each side, so that the file covers the fit window and ``jaxlasp.fit_files`` cuts
    out exactly ``mock.grid``. Needs astropy.
    """
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    grid = LogGrid(mock.grid.ln_start - FILE_PAD * mock.grid.step, mock.grid.step,
                   mock.grid.n + 2 * FILE_PAD)
    scale = level / np.maximum(np.median(mock.noiseless, axis=1), 1e-30)
    ivar = np.where(np.isinf(mock.ivar), 1e30, mock.ivar)
    paths = []
    for k, spectrum_id in enumerate(mock.ids):
        flux = np.pad(mock.flux[k] * scale[k], FILE_PAD, mode="edge")
        weight = np.pad(ivar[k] / scale[k] ** 2, FILE_PAD)
        path = folder / f"{spectrum_id}.fits"
        write_lamost(path, grid, flux, weight)
        paths.append(path)
    return paths


DESI_STEP = 0.8
"""DESI's camera pixel step [Å, vacuum]."""


DESI_CAMERAS = {"B": (3600.0, 2751), "R": (5760.0, 2326), "Z": (7520.0, 2881)}
"""DESI's cameras: first pixel centre [vacuum Å] and number of pixels, ``DESI_STEP`` apart."""


def desi_camera_waves(lo: float, hi: float,
                      cameras: dict[str, tuple[float, int]] = DESI_CAMERAS
                      ) -> dict[str, np.ndarray]:
    """Per camera, DESI-like pixel centres [vacuum Å] (``cameras``: name → (first centre,
    pixels), ``DESI_STEP`` apart): those whose air wavelengths (PyLASP's constant shift) lie in
    [lo, hi] Å; cameras with fewer than 10 pixels there are left out."""
    waves = {}
    lo_vacuum, hi_vacuum = (w * math.exp(VACUUM_LN_SHIFT) for w in (lo, hi))
    for name, (first, n) in cameras.items():
        k0 = max(0, math.ceil((lo_vacuum - first) / DESI_STEP))
        k1 = min(n - 1, math.floor((hi_vacuum - first) / DESI_STEP))
        if k1 - k0 >= 10:
            waves[name] = first + DESI_STEP * np.arange(k0, k1 + 1)
    return waves


def desi_pixels(waves: dict[str, np.ndarray]) -> PixelGrid:
    """The air pixels (one segment per camera) that ``jaxlasp.io.desi`` makes of camera
    centres ``waves`` [vacuum Å]."""
    return PixelGrid.from_edges(*(pixel_edges(w) * np.exp(-VACUUM_LN_SHIFT)
                                  for w in waves.values()))


def write_mock_desi(mock: MockSpectra, pixels: PixelGrid, waves: dict[str, np.ndarray], path,
                    level: float = 100.0):
    """Write mock spectra made on ``pixels`` = ``desi_pixels(waves)`` as one DESI coadd file
    (FIBERMAP TARGETIDs 0…n−1; per camera X_WAVELENGTH, X_FLUX, X_IVAR, X_MASK), flux scaled to
    a median of about ``level``, ivar to match. Returns the path. Needs astropy."""
    from astropy.io import fits

    if pixels.sizes != [w.size for w in waves.values()]:
        raise ValueError("pixels and waves describe different cameras")
    scale = level / np.maximum(np.median(mock.noiseless, axis=1), 1e-30)[:, None]
    ivar = np.where(np.isinf(mock.ivar), 1e30, mock.ivar)
    hdus = [fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name="TARGETID", format="K", array=np.arange(len(mock.flux)))],
        name="FIBERMAP")]
    for (name, wave), (first, stop) in zip(waves.items(), pixels.ranges):
        part = slice(first, stop)
        hdus += [fits.ImageHDU(wave, name=f"{name}_WAVELENGTH"),
                 fits.ImageHDU((mock.flux[:, part] * scale).astype(np.float32),
                               name=f"{name}_FLUX"),
                 fits.ImageHDU((ivar[:, part] / scale**2).astype(np.float32),
                               name=f"{name}_IVAR"),
                 fits.ImageHDU(np.where(mock.bad[:, part], 1, 0).astype(np.int32),
                               name=f"{name}_MASK")]
    fits.HDUList(hdus).writeto(path, overwrite=True)
    return path
