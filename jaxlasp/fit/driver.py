"""Fit a batch of spectra with LM, optionally with CurveFit's Clean schedule (ALGORITHM §g.2).

Everything here works on arrays on one observed grid; reading files and building tables lives in
``jaxlasp.api``. Each spectrum is independent: its own convergence, Clean cycles and flags.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlasp.compile_cache import program
from jaxlasp.fit import lm, minpack
from jaxlasp.fit.clean import clean, masked_std
from jaxlasp.fit.schedule import run_compacted
from jaxlasp.model import (
    ForwardModel,
    components,
    full_theta,
    model_flags,
    parameter_grid,
    residuals_and_jacobian,
    sigma_indices,
)
from jaxlasp.spectral.broaden import RESOLVED_SIGMA, SIGMA_FLOOR

MAX_CLEAN = 10
"""PyLASP's ``nclean``: at most 10 Clean calls, 11 fits."""
MU_LIMIT = 15.0
"""|mu| bound [pixels] (≈ 1035 km/s on LAMOST); with σ ≤ 5 px the kernel fits in 40 px."""
SIGMA_LIMIT = 5.0
SLOTS = 32
"""Default number of LM slots (spectra stepped together, ``jaxlasp.fit.schedule``): 16–32 were the
fastest on the 2-core CPU at batch 400 (3.2 ms/spectrum vs 4.7 with 128 slots)."""
WARM_DAMPING = 1e-3
"""λ at the start of an LM fit from the solution of a nearby problem (a Clean cycle's refit on a
few pixels fewer), relative to the scaling D: an almost Gauss–Newton first step, where
``lm.INITIAL_DAMPING``'s cautious steps, meant for a far start point, take ~7 iterations to reach
a minimum already at hand. (The global start's winner continuing from its loose tolerance gains
little from it: 9.8 instead of 11.2 iterations on 512 mocks, and more in flat valleys.)"""
MIN_GOOD_PIXELS = 100
"""Fewer good pixels than this (vs 51 polynomial + 5 stellar unknowns) is flagged."""

# Result flags (bit values of FitResult.flags); documented in the README.
NOT_CONVERGED = 1          # iteration cap reached before the tolerances were met
NONFINITE = 2              # non-finite residuals at the start or the solution
NEGATIVE_POLYNOMIAL = 4    # multiplicative polynomial ≤ 0 on some fitted pixel
AT_BOUND = 8               # solution on a bound of the parameter box
FEW_PIXELS = 16            # fewer than MIN_GOOD_PIXELS good pixels
DEGENERATE = 64            # a parameter (almost) without effect: singular covariance, or an
#                            error wider than the parameter's whole box
MULTIMODAL = 128           # global start: another distinct minimum holds ≥ 1 % of the posterior
#                            mass; the errors include the spread between the minima
UNDERSAMPLED = 2048        # σ < RESOLVED_SIGMA: the pixel-sampled kernel is no Gaussian of that
#                            width and centre (RV biased, errors meaningless); 256–1024: readers
FLAG_NAMES = {NOT_CONVERGED: "not_converged", NONFINITE: "nonfinite", NEGATIVE_POLYNOMIAL:
              "negative_polynomial", AT_BOUND: "at_bound", FEW_PIXELS: "few_pixels",
              DEGENERATE: "degenerate", MULTIMODAL: "multimodal", UNDERSAMPLED: "undersampled"}
FAILURES = (NOT_CONVERGED | NONFINITE | NEGATIVE_POLYNOMIAL | FEW_PIXELS | DEGENERATE
            | UNDERSAMPLED)
"""Flags that make a result not ``converged``."""
MAX_VARIANCE_INFLATION = 1e10
"""Largest (JᵀJ)⁻¹_jj·(JᵀJ)_jj accepted; beyond it the errors are meaningless (e.g. σ so small
that the truncated kernel is a single node, where neither mu nor σ changes the model)."""


class FitResult(NamedTuple):
    """Per-spectrum results of a batch fit (leading axis = spectrum)."""

    theta: jax.Array       # (b, 5) [mu px, sigma px, ln Teff, log g, [Fe/H]]
    covariance: jax.Array  # (b, 5, 5)
    loss: jax.Array        # RMS residual over the final good pixels
    n_iter: jax.Array      # LM iterations, summed over Clean cycles
    n_clean: jax.Array     # PyLASP's clean_number (m + m2 + m3 of the last effective Clean)
    n_cycles: jax.Array    # Clean calls made
    mask: jax.Array        # (b, n) final good pixels
    converged: jax.Array   # bool
    flags: jax.Array       # int bitmask


def parameter_box(fm: ForwardModel):
    """(lower, upper) bounds of θ: the emulator's domain, |mu| ≤ 15 px, 0.1 ≤ σ ≤ 5 px (every
    segment's σ with a broadening per segment)."""
    dom = fm.emulator.domain
    extra = len(sigma_indices(fm)) - 1
    lower = np.array([-MU_LIMIT, SIGMA_FLOOR, math.log(dom.teff[0]), dom.logg[0], dom.feh[0]]
                     + [SIGMA_FLOOR] * extra)
    upper = np.array([MU_LIMIT, SIGMA_LIMIT, math.log(dom.teff[1]), dom.logg[1], dom.feh[1]]
                     + [SIGMA_LIMIT] * extra)
    if fm.halfwidth < (MU_LIMIT + 5 * SIGMA_LIMIT) * fm.oversample:
        raise ValueError(f"kernel half-width {fm.halfwidth} px is too small for the parameter box")
    return lower, upper


def lm_residual(theta, fm, data):
    """Residuals in the ``lm.run`` signature: data = (flux, weights) of one spectrum."""
    flux, weights = data
    return components(fm, theta, flux, weights).residuals


def lm_jacobian(theta, fm, data):
    """(residuals, Jacobian) in the ``lm.run`` signature (``model.residuals_and_jacobian``)."""
    flux, weights = data
    return residuals_and_jacobian(fm, theta, flux, weights)


def slot_count(n_active: int, slots: int) -> int:
    """Slots for a run with ``n_active`` spectra to fit: ``slots``, or the smallest power of 4
    (≥ 4) that holds them all, so that few programs are compiled."""
    size = 4
    while size < min(n_active, slots):
        size *= 4
    return min(size, slots)


@program(static_argnames=("max_iter", "slots"))
def run_lm(fm: ForwardModel, theta, flux, weights, ftol, xtol, max_iter: int = 100, active=None,
           slots: int = SLOTS, damping=lm.INITIAL_DAMPING):
    """LM on a batch (members with ``active`` False are skipped) from λ = ``damping`` (scalar or
    (b,)); returns ``lm.LMState``.

    ``slots`` spectra are stepped at a time, refilled as they converge (``schedule``); at most b.
    """
    lower, upper = parameter_box(fm)
    return run_compacted(lm_residual, theta, fm, (flux, weights), lower=lower, upper=upper,
                         slots=min(slots, theta.shape[0]), max_iter=max_iter, ftol=ftol,
                         xtol=xtol, active=active, jacobian=lm_jacobian, damping=damping)


@program
def run_curvefit(fm: ForwardModel, theta, flux, weights, ftol, xtol, active=None):
    """MINPACK-path LM (``jaxlasp.fit.minpack``, unbounded as curve_fit) on a batch; returns
    ``minpack.MinpackState``."""
    return minpack.run(lm_residual, theta, fm, (flux, weights), ftol=ftol, xtol=xtol,
                       active=active)


@program
def evaluate(fm: ForwardModel, theta, flux, weights, status):
    """``lm.LMState`` at ``theta`` (b, 5) without a step: exact residuals and Jacobian there, for
    ``finish``; ``status`` (b,) an ``lm`` status."""
    def one(th, f, w, st):
        resid, jac = lm_jacobian(th, fm, (f, w))
        return lm.start_state(th, resid, jac, 0.0, 0.0)._replace(status=st)
    return jax.vmap(one)(theta, flux, weights, status)


@program
def clean_step(fm: ForwardModel, theta_start, theta, flux, weights, good, initial, first_call):
    """One Clean call per spectrum at the fit's solution (ALGORITHM §g.2 steps 3–5).

    Returns (CleanResult, s0, s1): s0 = std of the residuals at the fit's start over the good
    pixels, s1 = std of the solution's residuals over the new good pixels (both ddof = 1).
    """
    def one(th0, th, f, w, g, g0):
        r0 = components(fm, th0, f, w * g).residuals
        comps = components(fm, th, f, w * g)
        resid = jnp.sqrt(w) * (f - comps.model) * g0
        noise = jnp.where(w > 0, 1 / jnp.sqrt(w), 1.0)
        result = clean(comps.model, resid, g, g0, first_call, noise)
        return result, masked_std(r0, g), masked_std(resid, result.mask)
    return jax.vmap(one)(theta_start, theta, flux, weights, good, initial)


@program
def finish(fm: ForwardModel, state: lm.LMState, flux, weights, good):
    """Covariance, loss and flags at the LM solution (per spectrum)."""
    lower, upper = parameter_box(fm)
    sigmas = np.array(sigma_indices(fm))

    def one(st, f, w, g):
        used = w * g
        comps = components(fm, st.theta, f, used)
        n_used = jnp.sum(used > 0)
        cov = lm.covariance(st.jac, st.resid, n_used)
        normal_diag = jnp.sum(st.jac * st.jac, axis=1)
        inflation = (jnp.diagonal(cov) * normal_diag * (n_used - st.theta.shape[0])
                     / (st.resid @ st.resid))
        unconstrained = jnp.sqrt(jnp.abs(jnp.diagonal(cov))) > upper - lower
        degenerate = ~jnp.all(jnp.isfinite(inflation) & (inflation < MAX_VARIANCE_INFLATION)
                              & ~unconstrained)
        loss = jnp.sqrt(jnp.sum(comps.residuals ** 2) / n_used)
        _, _, negative, nonfinite = model_flags(fm, st.theta, comps, used)
        span = upper - lower
        at_bound = jnp.any((st.theta - lower < 1e-6 * span) | (upper - st.theta < 1e-6 * span))
        flags = (NOT_CONVERGED * (st.status == lm.MAX_ITER)
                 + NONFINITE * ((st.status == lm.NONFINITE) | nonfinite | ~jnp.isfinite(loss))
                 + NEGATIVE_POLYNOMIAL * negative + AT_BOUND * at_bound
                 + FEW_PIXELS * (n_used < MIN_GOOD_PIXELS) + DEGENERATE * degenerate
                 + UNDERSAMPLED * jnp.any(st.theta[sigmas] < RESOLVED_SIGMA))
        return cov, loss, flags
    return jax.vmap(one)(state, flux, weights, good)


def active_count(active, batch: int) -> int:
    """Spectra still cycling (a host sync), or ``batch`` while ``active`` is traced (inside
    ``jit``/``shard_map`` every cycle runs: a fit with no active member costs almost nothing)."""
    if isinstance(active, jax.core.Tracer):
        return batch
    return int(jnp.sum(active))


CLEAN_FTOL0 = 1e-2
"""ftol of PyLASP's first Clean-mode fit."""
CLEAN_XTOL = 1e-8
"""xtol of PyLASP's Clean-mode fits."""
CYCLE_FTOL = 1e-8
"""Loosest ftol of the exact path's fits between Clean calls (the final fit uses ``ftol``): on 512
mocks (S/N 15 and 50, 3 cosmic rays each) every Clean mask came out as with ftol 1e-10 and θ
within 2.3e-4 σ, at 15.0 LM iterations per spectrum instead of 17.8 (1e-6: 2 masks differed by a
pixel)."""
NO_CLEAN_TOLERANCES = (1e-5, 1e-10)
"""(ftol, xtol) of PyLASP's single No Clean fit."""
PATHS = ("exact", "curvefit")
"""``fit_batch``'s optimiser paths (see there)."""


def curvefit_start_sigma(step: float) -> float:
    """LASP-CurveFit's start σ [pixels]: one pixel's velocity c·Δ converted back to pixels as
    ln(1 + v/c)/Δ (ALGORITHM §h.2; 0.999884888 px on LAMOST's Δ = 1e-4·ln 10)."""
    return math.log1p(step) / step


def next_tolerance(j):
    """ftol for the fit after Clean call j (ALGORITHM §g.2 step 6); j may be traced."""
    return jnp.where(j + 2 < MAX_CLEAN, 1e-3, jnp.where(j + 1 < MAX_CLEAN, 1e-4, 1e-5))


class CleanOutcome(NamedTuple):
    """Where the Clean schedule left each spectrum."""

    theta: jax.Array     # (b, 5) solutions of the last fit
    mask: jax.Array      # (b, n) final good-pixel masks
    n_iter: jax.Array    # LM iterations (curvefit path: trial steps) over all cycles
    n_clean: jax.Array   # PyLASP's clean_number
    n_cycles: jax.Array  # Clean calls made
    status: jax.Array    # ``lm`` status of the last fit (curvefit path: FTOL or MAX_ITER)


class Cycling(NamedTuple):
    """The Clean schedule's state between its fits and Clean calls (every field (b, ...))."""

    theta: jax.Array     # solutions of the latest fit
    start: jax.Array     # start vectors of the next fit
    good: jax.Array      # current good-pixel masks
    tol: jax.Array       # ftol of the next fit
    damping: jax.Array   # LM's starting λ for the next fit (exact path)
    n_iter: jax.Array
    n_clean: jax.Array
    n_cycles: jax.Array
    status: jax.Array
    active: jax.Array    # spectra still cycling


def fit_cycle(fm: ForwardModel, path: str, theta, flux, weights, ftol, xtol, max_iter: int,
              active, n_active: int, slots: int, damping=lm.INITIAL_DAMPING):
    """One fit of the Clean schedule on the ``active`` spectra: (θ, iterations, lm status);
    ``damping``: the exact path's starting λ."""
    if path == "curvefit":
        state = run_curvefit(fm, theta, flux, weights, ftol, xtol, active)
        ok = jnp.isin(state.status, jnp.asarray(minpack.CONVERGED))
        return state.x, state.n_trial, jnp.where(ok, lm.FTOL, lm.MAX_ITER)
    state = run_lm(fm, theta, flux, weights, ftol, xtol, max_iter, active,
                   slot_count(n_active, slots), damping)
    return state.theta, state.n_iter, state.status


def run_clean_schedule(fm: ForwardModel, theta0, flux, weights, *, ftol, xtol, max_iter: int,
                       path: str = "exact", slots: int = SLOTS, warm: bool = False
                       ) -> CleanOutcome:
    """CurveFit's Clean schedule (ALGORITHM §g.2), every spectrum on its own cycle count.

    Up to MAX_CLEAN rounds of fit → Clean; a spectrum whose mask Clean leaves unchanged stops
    (it is skipped by later fits). ``path`` "exact": every fit is the exact-Jacobian LM to
    ``xtol`` and the looser of ``ftol`` and ``CYCLE_FTOL`` (``slot_count(spectra still cycling,
    slots)`` stepped at a time), from λ = ``WARM_DAMPING`` where it starts at the previous fit's
    solution (or at θ₀ with ``warm``: θ₀ a solution already), else ``lm.INITIAL_DAMPING``;
    "curvefit": MINPACK's path with PyLASP's tolerances (ftol 1e-2, then 1e-3 … 1e-5; xtol 1e-8).
    Called eagerly, the rounds are a Python loop that stops when no spectrum is cycling; traced
    (inside ``jit``/``shard_map``), they are one ``lax.fori_loop`` over all MAX_CLEAN rounds, so
    the program holds one fit and one Clean call instead of eleven and ten.
    """
    batch = theta0.shape[0]
    initial = weights > 0
    curvefit = path == "curvefit"
    cycle_xtol = jnp.full(batch, CLEAN_XTOL if curvefit else xtol)

    def fitted(state: Cycling, n_active: int) -> Cycling:
        theta, iterations, status = fit_cycle(fm, path, state.start, flux, weights * state.good,
                                              state.tol, cycle_xtol, max_iter, state.active,
                                              n_active, slots, state.damping)
        active = state.active
        return state._replace(theta=jnp.where(active[:, None], theta, state.theta),
                              status=jnp.where(active, status, state.status),
                              n_iter=state.n_iter + jnp.where(active, iterations, 0))

    def cleaned(j, state: Cycling) -> Cycling:
        result, s0, s1 = clean_step(fm, state.start, state.theta, flux, weights, state.good,
                                    initial, j == 0)
        changed = state.active & result.changed
        keep_start = result.sigma ** 2 / (s0 * s1) >= 1.5
        tol = state.tol
        if curvefit:
            tol = jnp.where(keep_start & (j + 1 < MAX_CLEAN), CLEAN_FTOL0, next_tolerance(j))
        moved = changed & ~keep_start
        return state._replace(
            start=jnp.where(moved[:, None], state.theta, state.start),
            damping=jnp.where(moved, WARM_DAMPING, state.damping).astype(state.damping.dtype),
            good=jnp.where(changed[:, None], result.mask, state.good),
            tol=tol.astype(state.tol.dtype),
            n_clean=jnp.where(changed, jnp.sum(result.counts, axis=-1), state.n_clean),
            n_cycles=state.n_cycles + state.active, active=changed)

    zeros = jnp.zeros(batch, int)
    state = Cycling(theta0, theta0, initial,
                    jnp.full(batch, CLEAN_FTOL0 if curvefit else max(ftol, CYCLE_FTOL)),
                    jnp.full(batch, WARM_DAMPING if warm else lm.INITIAL_DAMPING, theta0.dtype),
                    zeros, zeros, zeros, jnp.full(batch, lm.FTOL), jnp.ones(batch, bool))
    if any(isinstance(a, jax.core.Tracer) for a in (theta0, flux, weights)):
        state = lax.fori_loop(0, MAX_CLEAN, lambda j, s: cleaned(j, fitted(s, batch)), state)
        state = fitted(state, batch)
    else:
        n_active = batch
        for j in range(MAX_CLEAN + 1):
            state = fitted(state, n_active)
            if j == MAX_CLEAN:
                break
            state = cleaned(j, state)
            n_active = active_count(state.active, batch)
            if n_active == 0:
                break
    return CleanOutcome(state.theta, state.good, state.n_iter, state.n_clean, state.n_cycles,
                        state.status)


def fit_batch(fm: ForwardModel, theta0, flux, weights, *, use_clean: bool = False,
              max_iter: int = 100, ftol: float = 1e-10, xtol: float = 1e-10,
              path: str = "exact", slots: int = SLOTS, warm: bool = False) -> FitResult:
    """Fit spectra (b, n) sharing ``fm``'s grid from start points ``theta0`` (b, 5), or (b,
    ``n_parameters``) with a broadening per segment (5 values start every σ at ``sigma``).

    weights: (b, n) 1/err² (or 1) times the initial good-pixel mask G0.
    ``path`` "exact" (default): No Clean is one exact-Jacobian LM fit to ``ftol``/``xtol`` (tight
    by default: it reaches the χ² minimum); Clean runs PyLASP's schedule of fits and Clean calls
    (start-vector rule included), each fit converged (``run_clean_schedule``: ftol at most
    ``CYCLE_FTOL``) so that each Clean sees the model at its minimum, then a final fit to
    ``ftol``/``xtol`` from the last solution on the final mask.
    ``path`` "curvefit": LASP-CurveFit's own path, to reproduce its results: MINPACK's LM
    (``jaxlasp.fit.minpack``: forward differences, unbounded) from CurveFit's start σ
    (``curvefit_start_sigma``), one fit to ftol 1e-5 / xtol 1e-10 (No Clean) or the Clean schedule
    with PyLASP's loose tolerances, and the values of that last fit reported (no final fit);
    ``max_iter``, ``ftol``, ``xtol`` and ``slots`` do not apply (MINPACK stops at 1200
    evaluations: flagged NOT_CONVERGED, where curve_fit would raise).
    ``slots``: spectra stepped together by the exact LM, refilled as they converge
    (``jaxlasp.fit.schedule``); it changes the speed only. ``warm``: θ₀ are solutions of nearby
    problems (the same spectra on other pixels or to a looser tolerance), so the exact LM starts
    from the small λ ``WARM_DAMPING``; it changes the speed, not the minimum reached.
    Errors, loss and flags come from the exact Jacobian at the reported solution either way.
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, not {path!r}")
    theta0 = full_theta(fm, theta0)
    flux, weights = jnp.asarray(flux, theta0.dtype), jnp.asarray(weights, theta0.dtype)
    batch = theta0.shape[0]
    zeros = jnp.zeros(batch, int)
    if path == "curvefit":
        theta0 = theta0.at[:, np.array(sigma_indices(fm))].set(
            curvefit_start_sigma(parameter_grid(fm).step))
        if use_clean:
            outcome = run_clean_schedule(fm, theta0, flux, weights, ftol=ftol, xtol=xtol,
                                         max_iter=max_iter, path=path)
        else:
            fitted, trials, status = fit_cycle(fm, path, theta0, flux, weights,
                                               *NO_CLEAN_TOLERANCES, max_iter,
                                               jnp.ones(batch, bool), batch, slots)
            outcome = CleanOutcome(fitted, weights > 0, trials, zeros, zeros, status)
        state = evaluate(fm, outcome.theta, flux, weights * outcome.mask, outcome.status)
        n_iter = outcome.n_iter
    else:
        outcome = CleanOutcome(theta0, weights > 0, zeros, zeros, zeros, zeros)
        if use_clean:
            outcome = run_clean_schedule(fm, theta0, flux, weights, ftol=ftol, xtol=xtol,
                                         max_iter=max_iter, path=path, slots=slots, warm=warm)
        state = run_lm(fm, outcome.theta, flux, weights * outcome.mask, ftol, xtol, max_iter,
                       slots=slots, damping=WARM_DAMPING if warm or use_clean
                       else lm.INITIAL_DAMPING)
        n_iter = outcome.n_iter + state.n_iter
    cov, loss, flags = finish(fm, state, flux, weights, outcome.mask)
    converged = (flags & FAILURES) == 0
    return FitResult(state.theta, cov, loss, n_iter, outcome.n_clean, outcome.n_cycles,
                     outcome.mask, converged, flags)
