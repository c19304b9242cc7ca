"""Profile-likelihood errors: the Laplace covariance rescaled to the width of the χ² profile.

The covariance Σ = (JᵀJ)⁻¹·χ²/(M − 5) (curve_fit's, ``lm.covariance``) assumes χ² is quadratic in
θ around the solution θ̂. For hot stars and low S/N it is not: the valleys of the TGM emulator's
χ² curve and flatten, so the true parameters often sit several Laplace errors from θ̂ at a χ² only
a few units above the minimum (mock spectra, S/N 10: χ²(truth) − χ²(θ̂) follows χ²₅ exactly, yet
3.8 % of the fits have a pull beyond 3). Such errors are too small where it matters most.

The profile χ² of parameter j, min over the other parameters of χ² at fixed θ_j, is what a
likelihood-ratio interval uses. Here it is sampled at θ_j = θ̂_j ± ``PROFILE_STEP``·σ_j:
``FAST_ITERATIONS`` (1) Gauss–Newton step over the other four parameters from the Laplace
prediction θ̂ ± PROFILE_STEP·Σe_j/σ_j, with the exact Jacobian there, and the lower of the χ² at
the prediction and after the step. If χ² were quadratic the rise would be PROFILE_STEP² (in units
of the reduced χ²); the variance of θ_j is multiplied by PROFILE_STEP²/Δχ², averaged over the two
sides (a side outside the parameter box is left out), and Σ becomes D Σ D, D = diag(√ratio), so
its correlations are kept. On 1000 ELODIE mock spectra (LM, global start) this brought the pull
widths at S/N 10 from 1.06 / 1.11 / 1.08 / 1.09 (RV, Teff, log g, [Fe/H]) to 1.04 / 1.05 / 1.04 /
1.04 and left those at S/N 50 and 100 unchanged (README, "Validation"; measured with
``PROFILE_ITERATIONS`` = 2 steps, the former default: one step gives errors within 1.2 % of
those on the 25 LAMOST sample spectra, median ratio 1.0000, and the same pull widths).

Not used, and why: Gauss–Newton steps with the solution's Jacobian for all 8 points (one Jacobian
per fit instead of 8; 2.5× cheaper than one fresh step) stop short of the profile minimum where
the valley curves: errors up to 6 % smaller than the reference on the LAMOST sample, and the
S/N 10 pull widths rose from 1.03 / 1.06 / 1.05 / 1.04 to 1.07 / 1.08 / 1.07 / 1.07.

Cost per spectrum: 8 profile points × (FAST_ITERATIONS residual + Jacobian evaluations + one
residual evaluation), plus χ² at θ̂: 0.6× the two-step version's (3.75 against 6.30 ms on the
2-core CPU under load, batch 64; ``benchmarks/start.py``, ``benchmarks/errors.py``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxlasp.compile_cache import program
from jaxlasp.fit.driver import FitResult, parameter_box
from jaxlasp.model import FEH, LN_TEFF, LOGG, MU, ForwardModel, residuals, residuals_and_jacobian
from jaxlasp.spectral.continuum import cholesky_lower, cholesky_solve

PROFILE_STEP = 2.0
"""Offset of the profile points from θ̂ [Laplace standard deviations]."""
PROFILE_ITERATIONS = 2
"""Gauss–Newton steps per profile point of ``profile_chi2`` (fresh Jacobians; 4 gave the same pull
widths on the S/N 10 mocks)."""
FAST_ITERATIONS = 1
"""Gauss–Newton steps per profile point of ``profile_errors`` by default: on the 25 LAMOST sample
spectra the errors are within 1.2 % of those with PROFILE_ITERATIONS (median ratio 1.0000) at
0.6× the cost."""
PROFILED = (MU, LN_TEFF, LOGG, FEH)
"""Parameters whose errors are rescaled (σ, the broadening, keeps its Laplace error)."""
MAX_RATIO = 100.0
"""Variance ratios are clipped to [1/MAX_RATIO, MAX_RATIO] (errors changed at most 10×)."""
MAP_BATCH = 8
"""Spectra evaluated together on a CPU (``lax.map``; other devices take the whole batch): small
working sets stay in cache (all of a batch of 100 at once ran 1.7× slower per spectrum)."""
ERRORS = ("profile", "laplace")
"""Error models: the profile-rescaled covariance, or the Laplace (curve_fit) one."""


def chi2(fm: ForwardModel, theta, flux, weights):
    """χ² = Σ r² of the forward model at θ (polynomial solved)."""
    r = residuals(fm, theta, flux, weights)
    return r @ r


def profile_chi2(fm: ForwardModel, theta, fixed, flux, weights, lower, upper,
                 iterations: int = PROFILE_ITERATIONS):
    """Smallest χ² met by Gauss–Newton over the parameters other than ``fixed`` (an index) from θ,
    the steps kept inside [lower, upper]."""
    free = jnp.arange(theta.shape[0]) != fixed

    def step(_, carry):
        theta, best = carry
        resid, jac = residuals_and_jacobian(fm, theta, flux, weights)
        best = jnp.minimum(best, jnp.where(jnp.isfinite(resid @ resid), resid @ resid, jnp.inf))
        jac = jnp.where(free[:, None], jac, 0.0)
        normal = jac @ jac.T
        normal = normal + jnp.diag(jnp.where(free, 1e-9 * jnp.diagonal(normal), 1.0))
        delta = cholesky_solve(cholesky_lower(normal), -(jac @ resid))
        return jnp.clip(theta + jnp.where(free, delta, 0.0), lower, upper), best

    theta, best = lax.fori_loop(0, iterations, step, (theta, jnp.asarray(jnp.inf, theta.dtype)))
    last = chi2(fm, theta, flux, weights)
    return jnp.minimum(best, jnp.where(jnp.isfinite(last), last, jnp.inf))


def variance_ratios(fm: ForwardModel, theta, cov, flux, weights, step: float = PROFILE_STEP,
                    iterations: int = FAST_ITERATIONS):
    """(5,) factors for the variances of one fit: step²/Δχ²_profile averaged over the two sides
    for the ``PROFILED`` parameters, 1 for σ and wherever no side could be measured; each side's
    profile χ² from ``profile_chi2`` with ``iterations`` Gauss–Newton steps."""
    lower, upper = (jnp.asarray(a, theta.dtype) for a in parameter_box(fm))
    used = jnp.sum(weights > 0)
    best = chi2(fm, theta, flux, weights)
    reduced = best / (used - theta.shape[0])
    sd = jnp.sqrt(jnp.diagonal(cov))

    def side(j, sign):
        start = theta + sign * step * cov[:, j] / sd[j]
        inside = (start[j] >= lower[j]) & (start[j] <= upper[j])
        rise = (profile_chi2(fm, jnp.clip(start, lower, upper), j, flux, weights, lower, upper,
                             iterations) - best) / reduced
        ok = inside & jnp.isfinite(rise) & (rise > 0)
        return jnp.where(ok, step**2 / jnp.where(ok, rise, 1.0), 0.0), ok

    index = jnp.array(PROFILED)
    ratio, ok = jax.vmap(lambda j: jax.vmap(lambda s: side(j, s))(jnp.array([-1.0, 1.0])))(index)
    count = jnp.sum(ok, axis=1)
    mean = jnp.where(count > 0, jnp.sum(ratio, axis=1) / jnp.maximum(count, 1), 1.0)
    mean = jnp.clip(mean, 1.0 / MAX_RATIO, MAX_RATIO)
    mean = jnp.where(jnp.all(jnp.isfinite(cov)), mean, 1.0)
    return jnp.ones(theta.shape[0], theta.dtype).at[index].set(mean)


@program(static_argnames=("iterations",))
def profile_errors(fm: ForwardModel, result: FitResult, flux, weights,
                   iterations: int = FAST_ITERATIONS) -> FitResult:
    """``result`` with its covariance rescaled to the χ² profile (``variance_ratios`` with
    ``iterations`` Gauss–Newton steps per profile point; ``PROFILE_ITERATIONS`` is the former
    default, the reference of the tests) over the pixels each fit used (weights × final mask);
    batch of b spectra."""
    def one(args):
        theta, cov, f, w, mask = args
        root = jnp.sqrt(variance_ratios(fm, theta, cov, f, w * mask, iterations=iterations))
        return cov * root[:, None] * root[None, :]

    batch = (result.theta, result.covariance, jnp.asarray(flux), jnp.asarray(weights), result.mask)
    if jax.default_backend() == "cpu":
        size = result.theta.shape[0]
        cov = lax.map(one, pad_to_multiple(batch, MAP_BATCH), batch_size=MAP_BATCH)[:size]
    else:
        cov = jax.vmap(one)(batch)
    return result._replace(covariance=cov)


def pad_to_multiple(batch, multiple: int):
    """``batch`` (a tuple of arrays with one leading axis b) with its first row repeated up to a
    multiple of ``multiple`` rows when b exceeds it: ``lax.map`` with ``batch_size`` then traces
    its function once, as a scan, instead of once more for the remainder (which doubled the
    program and its compile time: 16–18 s against 9–11 s for 25 ELODIE spectra)."""
    size = batch[0].shape[0]
    extra = -size % multiple if size > multiple else 0
    if extra == 0:
        return batch
    return tuple(jnp.concatenate([a, jnp.repeat(a[:1], extra, axis=0)]) for a in batch)


def check_errors(errors: str) -> None:
    """Raise ValueError for an unknown error model."""
    if errors not in ERRORS:
        raise ValueError(f"errors must be one of {ERRORS}, not {errors!r}")
