"""``jaxlasp.testing``: a plain NumPy/SciPy reference implementation of the forward model (no
JAX), for tests and baselines (as ``numpy.testing`` is for NumPy), not part of the fitting API.

Written independently of jaxlasp's JAX code from the algorithm specification (ALGORITHM §a
emulator, §d resampling, §e broadening, §f Legendre correction, §h.4 objective), it serves two
purposes:

* a reference that the JAX model and optimisers are tested against, and
* a "the way LASP-CurveFit works" baseline for benchmarks: one spectrum at a time, fitted by
  ``scipy.optimize.least_squares`` with finite-difference Jacobians (``fit_least_squares``).

Parameter vector θ (as LASP-CurveFit): [mu (pixels), sigma (pixels), ln Teff (ln K), log g (dex),
[Fe/H] (dex)]. Everything is float64.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import scipy.optimize
import scipy.special

from jaxlasp.grids import LinearGrid, LogGrid
from jaxlasp.io import read_tgm

T_OFFSET = 3.7617
"""log10 Teff offset of the TGM basis."""
G_OFFSET = 4.44
"""log g offset of the TGM basis."""
HALFWIDTH = 40
"""Static broadening-kernel half-width [pixels] (holds |mu| ≤ 15 and σ ≤ 5)."""
SIGMA_FLOOR = 0.1
"""Smallest kernel dispersion used [pixels]."""
TRUNCATION = 5.0
"""Kernel nodes further than TRUNCATION·σ from mu are zero."""
DEGREE = 50
"""Degree of the multiplicative Legendre polynomial."""

LOWER = np.array([-15.0, 0.1, math.log(3100.0), 0.0, -2.5])
"""Default lower bounds of θ for ``fit_least_squares``."""
UPPER = np.array([15.0, 5.0, math.log(29971.0), 5.9, 1.0])
"""Default upper bounds of θ for ``fit_least_squares``."""

# log10(A) − 3.7617 for A = 4000, 4550, 7000, 9000 K (ALGORITHM §a.4).
_T4000, _T4550, _T7000, _T9000 = (math.log10(a) - T_OFFSET
                                  for a in (4000.0, 4550.0, 7000.0, 9000.0))
_N_TERMS = {1: 23, 2: 23, 3: 26}


# --------------------------------------------------------------------------------------------
# Emulator (ALGORITHM §a)
# --------------------------------------------------------------------------------------------

def exp_remainder(x: float) -> float:
    """R(x) = eˣ − (1 + x + x²/2 + x³/6 + x⁴/24 + x⁵/120) = Σ_{n≥6} xⁿ/n!, without cancellation.

    For |x| < 4 the Taylor terms from n = 6 on are summed exactly rounded (``math.fsum``) until
    they no longer matter; elsewhere the direct formula loses at most a few bits.
    """
    x = float(x)
    if abs(x) < 4.0:
        term = x**6 / 720.0
        terms = [term]
        n = 6
        while True:
            n += 1
            term *= x / n
            terms.append(term)
            if abs(term) < 1e-20 * abs(terms[0]) or term == 0.0:
                break
        return math.fsum(terms)
    head = [1.0, x, x * x / 2.0, x**3 / 6.0, x**4 / 24.0, x**5 / 120.0]
    return math.fsum([math.exp(x)] + [-h for h in head])


def basis(tau: float, g: float, z: float, version: int = 2) -> np.ndarray:
    """The TGM basis terms φ_k(τ, g, z) of ALGORITHM §a.2; shape (n_terms,)."""
    u = tau * tau - 1.0
    terms = [1.0, tau, z, g, tau**2, tau * u, u**2, tau * z, tau * g, u * g, u * z,
             g**2, z**2, tau * u**2, tau * g**2, g**3, z**3, tau * z**2, g * z, g**2 * z, g * z**2]
    if version == 1:
        terms += [math.exp(tau), math.exp(tau**2)]
    elif version == 2:
        terms += [exp_remainder(tau), exp_remainder(2.0 * tau)]
    elif version == 3:
        terms += [tau * u * g, u**2 * g, u * tau * z, u * g**2, u * g**3]
    else:
        raise ValueError(f"unknown TGM interpolator version {version!r}")
    return np.array(terms, dtype=np.float64)


def regime_weights(t: float) -> np.ndarray:
    """Blend weights (warm, hot, cold) at t = log10 Teff − 3.7617 (ALGORITHM §a.4)."""
    if t <= _T4000:
        return np.array([0.0, 0.0, 1.0])
    if t <= _T4550:
        q = (t - _T4000) / (_T4550 - _T4000)
        return np.array([q, 0.0, 1.0 - q])
    if t <= _T7000:
        return np.array([1.0, 0.0, 0.0])
    if t < _T9000:
        q = (t - _T7000) / (_T9000 - _T7000)
        return np.array([1.0 - q, q, 0.0])
    return np.array([0.0, 1.0, 0.0])


def emulator_design(ln_teff: float, logg: float, feh: float, version: int = 2) -> np.ndarray:
    """weight_r·φ_k(τ_r, g, z) for regimes r = (warm, hot, cold); shape (3, n_terms).

    The flux on any pixel grid is Σ_rk design[r, k]·coef[r, k, :].
    """
    t = math.log10(math.exp(ln_teff)) - T_OFFSET   # as CF: log10(exp(ln Teff))
    g = logg - G_OFFSET
    z = feh
    tau = t / 0.2
    tau_cold = tau if version == 1 else (t + 0.1) / 0.2
    weights = regime_weights(t)
    phi_warm = basis(tau, g, z, version)
    phi_cold = basis(tau_cold, g, z, version)
    return weights[:, None] * np.stack([phi_warm, phi_warm, phi_cold])


# --------------------------------------------------------------------------------------------
# Resampling (ALGORITHM §d), broadening (§e), Legendre polynomial (§f)
# --------------------------------------------------------------------------------------------

def resampling_matrix(model: LinearGrid, observed: LogGrid,
                      edges: str = "extrapolate") -> np.ndarray:
    """Dense R (n_obs, n_model) with resampled = R @ flux_model, from explicit bin overlaps.

    R_ij = overlap([B_i, B_i+1], [b_j, b_j+1]) / (λ_i·Δlnλ), where λ_i·Δlnλ is PyLASP's ``flat``
    times the model step. With ``edges="extrapolate"`` (LASP-CurveFit) the first and last model
    pixels extend without limit, i.e. their flux density continues beyond the model's coverage;
    with ``"clip"`` (LASP-Adam) nothing lies beyond it.
    """
    if edges not in ("extrapolate", "clip"):
        raise ValueError(f"edges must be 'extrapolate' or 'clip', not {edges!r}")
    b = np.array(model.edges, dtype=np.float64)
    B = np.array(observed.edges, dtype=np.float64)
    if edges == "extrapolate":
        b[0] = min(b[0], B[0])
        b[-1] = max(b[-1], B[-1])
    divisor = np.asarray(observed.widths, dtype=np.float64)
    R = np.zeros((observed.n, model.n))
    for i in range(observed.n):
        lo, hi = B[i], B[i + 1]
        j0 = max(int(np.searchsorted(b, lo, side="right")) - 1, 0)
        j1 = min(int(np.searchsorted(b, hi, side="left")), model.n)
        if j1 <= j0:
            continue
        j = np.arange(j0, j1)
        overlap = np.minimum(hi, b[j + 1]) - np.maximum(lo, b[j])
        R[i, j] = np.maximum(overlap, 0.0) / divisor[i]
    return R


def gaussian_kernel(mu: float, sigma: float, halfwidth: int = HALFWIDTH) -> np.ndarray:
    """Normalised kernel K(x) on nodes x = −halfwidth..halfwidth (index k ↔ x = k − halfwidth)."""
    s = max(float(sigma), SIGMA_FLOOR)
    x = np.arange(-halfwidth, halfwidth + 1, dtype=np.float64)
    w = (x - mu) / s
    k = np.where(np.abs(w) <= TRUNCATION, np.exp(-0.5 * w * w), 0.0)
    return k / k.sum()


def broaden(flux: np.ndarray, mu: float, sigma: float, halfwidth: int = HALFWIDTH) -> np.ndarray:
    """out_i = Σ_x flux[clip(i − x, 0, n−1)]·K(x), by ``np.convolve`` of the edge-padded flux."""
    kernel = gaussian_kernel(mu, sigma, halfwidth)
    padded = np.pad(flux, halfwidth, mode="edge")
    return np.convolve(padded, kernel, mode="valid")


def legendre_design(n: int, degree: int = DEGREE) -> np.ndarray:
    """P_k(x_i) at x_i = 2i/n − 1 for k = 0..degree; shape (n, degree+1)."""
    x = 2.0 * np.arange(n, dtype=np.float64) / n - 1.0
    return np.stack([scipy.special.eval_legendre(k, x) for k in range(degree + 1)], axis=1)


class Components(NamedTuple):
    """Intermediate arrays of one model evaluation, on the observed grid."""

    resampled: np.ndarray
    convolved: np.ndarray
    coefs: np.ndarray
    polynomial: np.ndarray
    model: np.ndarray
    residuals: np.ndarray


@dataclass
class NumpyForwardModel:
    """The LASP forward model in NumPy: emulator → resampling → broadening → Legendre.

    coef: (3, n_terms, n_model) emulator coefficients on the model's linear grid (warm, hot, cold).
    model: that linear grid; observed: the observed ln-λ grid.
    The resampling is precomputed as a dense matrix ``R`` and folded into the coefficients once
    (``coef_obs = coef @ R.T``, ALGORITHM §k).
    """

    coef: np.ndarray
    model: LinearGrid
    observed: LogGrid
    version: int = 2
    degree: int = DEGREE
    edges: str = "extrapolate"
    halfwidth: int = HALFWIDTH
    R: np.ndarray = field(init=False, repr=False)
    coef_obs: np.ndarray = field(init=False, repr=False)
    legendre: np.ndarray = field(init=False, repr=False)
    n_calls: int = field(init=False, default=0)

    def __post_init__(self):
        coef = np.asarray(self.coef, dtype=np.float64)
        n_terms = _N_TERMS[self.version]
        if coef.ndim != 3 or coef.shape[0] != 3 or coef.shape[1] < n_terms \
                or coef.shape[2] != self.model.n:
            raise ValueError(
                f"coef must have shape (3, ≥{n_terms}, {self.model.n}), not {coef.shape}")
        self.coef = coef[:, :n_terms]
        self.R = resampling_matrix(self.model, self.observed, self.edges)
        self.coef_obs = self.coef @ self.R.T
        self.legendre = legendre_design(self.observed.n, self.degree)

    @classmethod
    def from_emulator(cls, emulator, observed: LogGrid, **kw) -> NumpyForwardModel:
        """From a jaxlasp ``TGMEmulator`` on its own linear grid (coefficients copied to NumPy)."""
        return cls(np.asarray(emulator.coef, dtype=np.float64), emulator.grid, observed,
                   version=emulator.version, **kw)

    @classmethod
    def from_file(cls, path, observed: LogGrid, **kw) -> NumpyForwardModel:
        """From a TGM model file read with ``jaxlasp.io.read_tgm``."""
        return cls.from_emulator(read_tgm(path), observed, **kw)

    # -- pieces ---------------------------------------------------------------------------

    def emulate(self, ln_teff: float, logg: float, feh: float) -> np.ndarray:
        """Emulator flux resampled onto the observed grid; shape (n_obs,)."""
        design = emulator_design(ln_teff, logg, feh, self.version)
        return np.tensordot(design, self.coef_obs, axes=([0, 1], [0, 1]))

    def emulate_model_grid(self, ln_teff: float, logg: float, feh: float) -> np.ndarray:
        """Emulator flux on the model's own linear grid; shape (n_model,)."""
        design = emulator_design(ln_teff, logg, feh, self.version)
        return np.tensordot(design, self.coef, axes=([0, 1], [0, 1]))

    def broadened(self, theta) -> np.ndarray:
        """Resampled and broadened model, before the Legendre polynomial; shape (n_obs,)."""
        mu, sigma, ln_teff, logg, feh = (float(v) for v in theta)
        return broaden(self.emulate(ln_teff, logg, feh), mu, sigma, self.halfwidth)

    def components(self, theta, flux, weights) -> Components:
        """All intermediate arrays for θ, observed ``flux`` and ``weights`` (0 = pixel unused)."""
        self.n_calls += 1
        mu, sigma, ln_teff, logg, feh = (float(v) for v in theta)
        flux = np.asarray(flux, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        resampled = self.emulate(ln_teff, logg, feh)
        convolved = broaden(resampled, mu, sigma, self.halfwidth)
        sw = np.sqrt(weights)
        design = self.legendre * convolved[:, None]
        coefs = np.linalg.lstsq(design * sw[:, None], flux * sw, rcond=None)[0]
        polynomial = self.legendre @ coefs
        model = convolved * polynomial
        resid = np.where(weights > 0, sw * (flux - model), 0.0)
        return Components(resampled, convolved, coefs, polynomial, model, resid)

    # -- objective ------------------------------------------------------------------------

    def residuals(self, theta, flux, weights) -> np.ndarray:
        """√weights·(flux − model); shape (n_obs,), zero where weight = 0."""
        return self.components(theta, flux, weights).residuals

    def model_spectrum(self, theta, flux, weights) -> tuple[np.ndarray, np.ndarray]:
        """(model, residuals) for θ; the model is the broadened emulator × fitted polynomial."""
        c = self.components(theta, flux, weights)
        return c.model, c.residuals

    def loss(self, theta, flux, weights) -> float:
        """RMS of the residuals over the used pixels (LASP-CurveFit's ``loss``)."""
        r = self.residuals(theta, flux, weights)
        return float(np.sqrt(np.sum(r * r) / np.count_nonzero(np.asarray(weights) > 0)))


# --------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------

@dataclass
class LeastSquaresFit:
    """Result of ``fit_least_squares``; unpacks as (theta, loss, nfev, covariance).

    nfev counts *every* residual evaluation, finite-difference ones included (scipy's own count,
    which leaves those out for 'trf', is ``result.nfev``; ``njev`` is the number of Jacobians).
    """

    theta: np.ndarray
    loss: float
    nfev: int
    covariance: np.ndarray
    njev: int
    seconds: float
    result: Any = field(repr=False)

    def __iter__(self):
        return iter((self.theta, self.loss, self.nfev, self.covariance))

    @property
    def errors(self) -> np.ndarray:
        """√diag(covariance)."""
        return np.sqrt(np.diag(self.covariance))


def fit_least_squares(model: NumpyForwardModel, theta0, flux, weights, *, jac="2-point",
                      bounds=None, ftol=1e-12, xtol=1e-12, gtol=1e-12,
                      **kw) -> LeastSquaresFit:
    """Fit θ with ``scipy.optimize.least_squares`` (TRF, x_scale='jac', finite differences).

    jac: '2-point' (default) or '3-point'. bounds: (lower, upper), default ``(LOWER, UPPER)``.
    The problem is small (1327 × 51 least squares per evaluation): run with
    OPENBLAS_NUM_THREADS=1, or a multi-threaded OpenBLAS slows down by up to ~100× when another
    process occupies the cores.
    Other keywords go to ``least_squares`` (e.g. ``max_nfev``). The covariance is
    (JᵀJ)⁻¹·Σr²/(M − 5) from the final finite-difference Jacobian, with M the number of used
    pixels (as curve_fit with absolute_sigma=False; a pseudo-inverse, as curve_fit does).
    """
    flux = np.asarray(flux, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if bounds is None:
        bounds = (LOWER, UPPER)
    calls = [0]

    def fun(theta):
        calls[0] += 1
        return model.residuals(theta, flux, weights)

    start = time.perf_counter()
    res = scipy.optimize.least_squares(
        fun, np.asarray(theta0, dtype=np.float64), jac=jac, method="trf", x_scale="jac",
        bounds=bounds, ftol=ftol, xtol=xtol, gtol=gtol, **kw)
    seconds = time.perf_counter() - start
    m = int(np.count_nonzero(weights > 0))
    n = res.x.size
    chi2 = float(np.sum(res.fun**2))
    _, s, vt = np.linalg.svd(res.jac, full_matrices=False)
    keep = s > np.finfo(float).eps * max(res.jac.shape) * s[0]
    vt = vt[keep]
    cov = (vt.T / s[keep] ** 2) @ vt * (chi2 / (m - n))
    loss = math.sqrt(chi2 / m)
    return LeastSquaresFit(res.x, loss, calls[0], cov, int(res.njev or 0), seconds, res)
