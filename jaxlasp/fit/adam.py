"""LASP-Adam: a batch of spectra fitted by Adam on box-normalised parameters (ALGORITHM §i).

Variables. As PyLASP (§i.2), the optimiser works on x ∈ [−1, 1]⁵ with internal parameters
p = [t = log10 Teff − 3.7617, g = log g − 4.44, z = [Fe/H], mu (px), sigma (px)] = c + (w/2)·x,
c = [0.215, −1.44, −0.75, 0, 2.55], w = [1, 6, 3.5, 30, 4.9]. ``theta_from_x``/``x_from_theta``
convert to and from jaxlasp's θ = [mu, sigma, ln Teff, log g, [Fe/H]]. After every Adam update x is
projected onto the box with ``optax.projections.projection_box`` (PyLASP clamps in place at the
start of the next iteration: the same sequence of evaluated points).

Optimiser. ``optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)``. PyTorch's Adam updates
x ← x − (lr/(1−β₁ᵗ))·m_t/(√v_t/√(1−β₂ᵗ) + ε) and optax's x ← x − lr·m̂_t/(√v̂_t + ε) with
m̂ = m/(1−β₁ᵗ), v̂ = v/(1−β₂ᵗ): algebraically the same update (ε is added to the bias-corrected
√v̂ in both; only the rounding order differs). The formula that differs is the "ε̂" form of the
Adam paper / TF1 (ε added to the uncorrected √v_t), which neither uses. Each spectrum has its own
optax state (``vmap`` over the batch), so a frozen spectrum's moments and step count stay put.

Loss (§i.4). Residuals r = √w·(f − model)·M with w the caller's weights (PyLASP: 1 on pixels
0..N−3) and M the Clean mask (all ones without Clean). Per-spectrum loss L_b = √(Σ_i r_bi² / n_b)
with n_b = #{w_b > 0} (masked pixels count as zeros, as in PyLASP). Group loss (PyLASP's Eq. 9)
L = √(Σ_b Σ_i r_bi² / Σ_b n_b). Deviation from PyLASP (``mask_polynomial=True``, default): the
Legendre polynomial is fitted with weights w·M, so the loss is the χ² of the masked problem, the
same objective as LM's and as the covariance computed at the end; ``mask_polynomial=False`` fits it
unmasked as PyLASP does (§i.4.7), which is what reproduces PyLASP's Clean results (group of 25 in
its setting: median 0.25 K in Teff with False, 9 K with True; tests/test_adam_pylasp.py).

Convergence (§i.5), ``convergence=``:
* ``"group"`` (PyLASP): the bookkeeping runs on the group loss L: stop when |ΔL| < 1e-5 for 50
  consecutive steps or after more than 50 steps without a new minimum of L; gradient of L.
* ``"spectrum"`` (default): the same rules on each spectrum's own L_b; a spectrum that meets them
  is frozen (its x and Adam state stop changing, its gradient is masked). The gradient is that of
  Σ_b L_b: spectrum b's gradient is exactly that of a PyLASP group of one, independent of the other
  spectra and of which of them are frozen (the group L would couple them through its common 1/2L).

Reported parameters: each spectrum's best iterate (lowest L_b seen; with Clean, the lowest since
the last Clean call, so losses on different masks are not compared), not the post-step x that
PyLASP reports (§i.6). Errors: ``driver.finish`` at the best θ with the exact Jacobian (the LM
formula), on the final mask.

Clean (§g.3–g.4): ``clean_adam`` at iterations 30, 60, …, 330, applied to running spectra only.
Generalisation: the residuals given to Clean are √w·(f − model) (PyLASP: w = 1) over all n pixels
with the base mask M0 = (w > 0) (PyLASP: pixels 0..N−3, M0 = ones).

Precision. The loop runs in the dtype of ``fm``'s emulator coefficients: float32 for a model built
from ``TGMEmulator.astype(jnp.float32)``, with only the emulator's basis values (23 per regime and
spectrum) in float64, so that PyLASP's float32 cancellation (§j.1) does not return. Errors, loss
and flags are computed in float64 at the float32 solution (``fit_batch_adam``). On the 25 sample
spectra float32 agrees with float64 to ≤ 0.16 km/s and ≤ 1.2 K, within 0.07 σ
(tests/test_adam_float32.py).
"""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxlasp.emulators.tgm import G_OFFSET, T_OFFSET
from jaxlasp.fit import lm
from jaxlasp.fit.clean import LAYER3_PASSES, LEVELS, MAX_FRACTION
from jaxlasp.fit.driver import (
    FAILURES, FitResult, finish, lm_residual)
from jaxlasp.model import FEH, LN_TEFF, LOGG, MU, SIGMA, ForwardModel, components, emulator_dtype

CENTER = np.array([0.215, -1.44, -0.75, 0.0, 2.55])
"""c of §i.2, internal order [t, g, z, mu, sigma]."""
WIDTH = np.array([1.0, 6.0, 3.5, 30.0, 4.9])
"""w of §i.2."""
LN10 = math.log(10.0)

SMALL_CHANGE = 1e-5
"""|ΔL| below which a step counts as "no change" (§i.5)."""
PATIENCE = 50
"""Consecutive small changes that stop the fit, and the allowed steps without a new minimum."""
CLEAN_EVERY, CLEAN_LAST = 30, 330
"""Clean at it = 30, 60, …, 330 (§g.4)."""
FACSH = 0.2
"""Clean's gradient factor: always 0.2 in the Adam loop (it ≥ 30)."""

RUNNING, SMALL_CHANGES, STALLED, MAX_ITER, NONFINITE_LOSS = 0, 1, 2, 3, 4
"""Values of ``AdamState.status``."""


# --------------------------------------------------------------------------------------------
# Parameter map


def internal_from_theta(theta):
    """p = [t, g, z, mu, sigma] from θ = [mu, sigma, ln Teff, log g, [Fe/H]] (last axis)."""
    theta = jnp.asarray(theta)
    return jnp.stack([theta[..., LN_TEFF] / LN10 - T_OFFSET,
                      theta[..., LOGG] - G_OFFSET, theta[..., FEH],
                      theta[..., MU], theta[..., SIGMA]], axis=-1)


def theta_from_internal(p):
    """θ from p = [t, g, z, mu, sigma]."""
    p = jnp.asarray(p)
    return jnp.stack([p[..., 3], p[..., 4], (p[..., 0] + T_OFFSET) * LN10,
                      p[..., 1] + G_OFFSET, p[..., 2]], axis=-1)


def x_from_theta(theta):
    """Normalised x = 2(p − c)/w."""
    p = internal_from_theta(theta)
    return 2 * (p - CENTER.astype(p.dtype)) / WIDTH.astype(p.dtype)


def theta_from_x(x):
    """θ from the normalised x: p = c + (w/2)·x."""
    x = jnp.asarray(x)
    return theta_from_internal(CENTER.astype(x.dtype) + 0.5 * WIDTH.astype(x.dtype) * x)


def x_box(fm: ForwardModel):
    """Bounds (lo, hi) of x, each (5,): PyLASP's box [−1, 1] intersected with the emulator's
    domain (for ELODIE they differ only in Teff ≥ 3100 K and log g ≤ 5.9; a line-list emulator
    built on a small grid is confined to it)."""
    dom = fm.emulator.domain
    bounds = []
    for teff, logg, feh, limit in zip(dom.teff, dom.logg, dom.feh, (-1.0, 1.0)):
        p = np.array([math.log10(teff) - T_OFFSET, logg - G_OFFSET, feh, 0.0, 0.0])
        x = 2 * (p - CENTER) / WIDTH  # as x_from_theta, in NumPy: the domain is static
        x[3:] = limit  # mu and σ: PyLASP's box
        bounds.append(x)
    return np.maximum(bounds[0], -1.0), np.minimum(bounds[1], 1.0)


def project(x, box=(-1.0, 1.0)):
    """Projection of x onto the box ``(lo, hi)`` (default [−1, 1]), in x's dtype."""
    lo, hi = (jnp.asarray(bound, x.dtype) for bound in box)
    return optax.projections.projection_box(x, lo, hi)


# --------------------------------------------------------------------------------------------
# Clean, Adam variant (§g.3)


def _std_all(values):
    """std (ddof = 1) over all entries (masked entries enter as zeros)."""
    n = values.shape[-1]
    mean = jnp.mean(values)
    return jnp.sqrt(jnp.sum((values - mean) ** 2) / (n - 1))


def clean_adam(model, resid, prev_mask, base=None):
    """One Adam-loop Clean call for one spectrum (ALGORITHM §g.3); returns the new mask (bool).

    model: (n,) best-fit model B; resid: (n,) residuals f − B, unmasked; prev_mask: (n,) previous
    mask Mp (ones before the first call); base: (n,) base mask M0 (default all ones).
    Neighbours are cyclic. The new mask replaces the previous one.
    """
    dtype = resid.dtype
    prev = jnp.asarray(prev_mask).astype(dtype)
    base = jnp.ones_like(resid) if base is None else jnp.asarray(base).astype(dtype)
    slope = jnp.maximum(jnp.abs(model - jnp.roll(model, -1)), jnp.abs(model - jnp.roll(model, 1)))
    excess = jnp.abs(resid) - FACSH * slope
    s = _std_all(resid * prev)
    total = jnp.sum(prev)
    frac = jnp.stack([1 - jnp.sum((excess <= lvl * s) * prev) / total for lvl in LEVELS[:3]])
    ok = frac <= MAX_FRACTION
    level = jnp.where(jnp.any(ok), jnp.asarray(LEVELS[:3], dtype)[jnp.argmax(ok)], LEVELS[3])
    mask = (excess <= level * s) & (base > 0)
    # layer 2, one pass from the layer-1 mask
    gap = ~jnp.roll(mask, 1) | ~jnp.roll(mask, -1)
    mask = mask & ~((excess > 2 * s) & gap)

    def layer3(carry):
        mask, _, passes = carry
        s3 = _std_all(resid * mask)
        prev_r, next_r = jnp.roll(resid, 1), jnp.roll(resid, -1)
        left = ~jnp.roll(mask, 1) & (prev_r * resid > 0) & (jnp.abs(resid) <= jnp.abs(prev_r))
        right = ~jnp.roll(mask, -1) & (next_r * resid > 0) & (jnp.abs(resid) <= jnp.abs(next_r))
        drop = mask & (excess > s3) & (left | right)
        return mask & ~drop, jnp.any(drop), passes + 1

    mask, _, _ = lax.while_loop(lambda c: c[1] & (c[2] < LAYER3_PASSES), layer3,
                                (mask, jnp.asarray(True), jnp.asarray(0)))
    return mask


# --------------------------------------------------------------------------------------------
# The optimiser


class AdamState(NamedTuple):
    """State of a batch Adam fit (leading axis b = spectrum, except ``it``)."""

    x: jax.Array          # (b, 5) normalised parameters, next point to evaluate
    opt_state: tuple      # optax state, one per spectrum
    mask: jax.Array       # (b, n) bool Clean mask M
    prev: jax.Array       # (b,) loss tracked by the stopping rules at the previous step
    count: jax.Array      # (b,) consecutive steps with |ΔL| < 1e-5
    min_loss: jax.Array   # (b,) PyLASP's L_min (stall rule)
    stall: jax.Array      # (b,) steps since L_min last improved
    best_x: jax.Array     # (b, 5) best iterate (lowest per-spectrum loss since the last Clean)
    best_loss: jax.Array  # (b,)
    n_iter: jax.Array     # (b,) loss evaluations (= Adam steps) of this spectrum
    n_clean: jax.Array    # (b,) Clean calls that this spectrum took part in
    status: jax.Array     # (b,) RUNNING, SMALL_CHANGES, STALLED, MAX_ITER, NONFINITE_LOSS
    it: jax.Array         # () iteration index


class AdamInfo(NamedTuple):
    """Diagnostics of one step (losses at the point evaluated in this step)."""

    loss: jax.Array        # (b,) per-spectrum RMS
    group_loss: jax.Array  # () PyLASP's group loss
    cleaned: jax.Array     # () bool, Clean ran at this step


def _optimizer(lr):
    return optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)


def init(x0, n_pixels: int, lr=0.1, box=(-1.0, 1.0)) -> AdamState:
    """State at the normalised start points ``x0`` (b, 5), projected onto ``box``."""
    x0 = project(jnp.asarray(x0), box)
    batch = x0.shape[0]
    inf = jnp.full(batch, jnp.inf, x0.dtype)
    zeros = jnp.zeros(batch, int)
    return AdamState(x0, jax.vmap(_optimizer(lr).init)(x0), jnp.ones((batch, n_pixels), bool),
                     inf, zeros, inf, zeros, x0, inf, zeros, zeros, zeros, jnp.asarray(0))


def losses(fm: ForwardModel, x, flux, weights, mask, mask_polynomial: bool = True):
    """Per-spectrum RMS L_b (b,) and the group's Σ r² and Σ n_b at normalised ``x`` (b, 5)."""
    def one(xb, f, w, m):
        theta = theta_from_x(xb)
        comps = components(fm, theta, f, w * m if mask_polynomial else w)
        r = jnp.sqrt(w) * (f - comps.model) * m
        return jnp.sum(r * r), jnp.sum(w > 0)
    sq, n = jax.vmap(one)(x, flux, weights, mask)
    return jnp.sqrt(sq / n), jnp.sum(sq), jnp.sum(n)


def step(fm: ForwardModel, state: AdamState, flux, weights, *, lr=0.1, clean: bool = False,
         convergence: str = "spectrum", max_iter: int = 5000, mask_polynomial: bool = True):
    """One Adam iteration of the batch: returns (state, info). Stopped spectra do not change."""
    running = state.status == RUNNING
    it = state.it
    mask = state.mask
    cleaned = jnp.asarray(False)
    if clean:
        cleaned = (it % CLEAN_EVERY == 0) & (it > 1) & (it <= CLEAN_LAST)

        def do_clean(mask):
            def one(xb, f, w, m):
                comps = components(fm, theta_from_x(xb), f, w * m if mask_polynomial else w)
                resid = jnp.sqrt(w) * (f - comps.model)
                return clean_adam(comps.model, resid, m, w > 0)
            new = jax.vmap(one)(state.x, flux, weights, mask)
            return jnp.where(running[:, None], new, mask)

        mask = lax.cond(cleaned, do_clean, lambda m: m, mask)

    def objective(x):
        per, sq, n = losses(fm, x, flux, weights, mask, mask_polynomial)
        if convergence == "group":
            return jnp.sqrt(sq / n), (per, jnp.sqrt(sq / n))
        return jnp.sum(jnp.where(running, per, 0.0)), (per, jnp.sqrt(sq / n))

    (_, (per, group)), grad = jax.value_and_grad(objective, has_aux=True)(state.x)
    grad = jnp.where(running[:, None], grad, 0.0)
    finite = jnp.isfinite(per) & jnp.all(jnp.isfinite(grad), axis=1)

    tracked = jnp.broadcast_to(group, per.shape) if convergence == "group" else per
    count = jnp.where(jnp.abs(state.prev - tracked) < SMALL_CHANGE, state.count + 1, 0)
    improved = tracked < state.min_loss
    min_loss = jnp.where(improved, tracked, state.min_loss)
    stall = jnp.where(improved, 0, state.stall + 1)
    best_loss = jnp.where(cleaned & running, jnp.inf, state.best_loss)
    better = running & finite & (per < best_loss)
    best_x = jnp.where(better[:, None], state.x, state.best_x)
    best_loss = jnp.where(better, per, best_loss)

    updates, opt_state = jax.vmap(_optimizer(lr).update)(grad, state.opt_state)
    x = project(optax.apply_updates(state.x, updates), x_box(fm))
    n_iter = state.n_iter + 1
    status = jnp.where(~finite, NONFINITE_LOSS, jnp.where(
        count >= PATIENCE, SMALL_CHANGES, jnp.where(stall > PATIENCE, STALLED, jnp.where(
            n_iter >= max_iter, MAX_ITER, RUNNING))))
    move = running & finite
    new = AdamState(
        x=jnp.where(move[:, None], x, state.x),
        opt_state=jax.tree_util.tree_map(
            lambda a, b: jnp.where(move.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
            opt_state, state.opt_state),
        mask=mask,
        prev=jnp.where(running, tracked, state.prev),
        count=jnp.where(running, count, state.count),
        min_loss=jnp.where(running, min_loss, state.min_loss),
        stall=jnp.where(running, stall, state.stall),
        best_x=best_x, best_loss=jnp.where(running, best_loss, state.best_loss),
        n_iter=jnp.where(running, n_iter, state.n_iter),
        n_clean=state.n_clean + (cleaned & running),
        status=jnp.where(running, status, state.status),
        it=it + 1)
    return new, AdamInfo(per, group, cleaned)


@partial(jax.jit, static_argnames=("lr", "clean", "convergence", "max_iter", "mask_polynomial"))
def run(fm: ForwardModel, x0, flux, weights, *, lr=0.1, clean: bool = False,
        convergence: str = "spectrum", max_iter: int = 5000, mask_polynomial: bool = True):
    """Iterate ``step`` with ``lax.while_loop`` until no spectrum is running; the final state."""
    state = init(x0, flux.shape[1], lr, x_box(fm))
    body = partial(step, fm, flux=flux, weights=weights, lr=lr, clean=clean,
                   convergence=convergence, max_iter=max_iter, mask_polynomial=mask_polynomial)
    return lax.while_loop(lambda s: jnp.any(s.status == RUNNING), lambda s: body(s)[0], state)


@jax.jit
def _lm_state_at(fm: ForwardModel, theta, flux, used):
    return jax.vmap(lambda th, f, w: lm.init(lm_residual, th, fm, (f, w)))(theta, flux, used)


def cast_model(fm: ForwardModel, dtype) -> ForwardModel:
    """``fm`` with its floating-point arrays (emulator and Legendre arrays) in ``dtype``."""
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, fm)


def fit_batch_adam(fm: ForwardModel, theta0, flux, weights, *, clean: bool = False,
                   convergence: str = "spectrum", lr: float = 0.1, max_iter: int = 5000,
                   mask_polynomial: bool = True):
    """Fit spectra (b, n) on ``fm``'s grid with LASP-Adam from θ₀ (b, 5).

    The Adam loop runs in the dtype of ``fm``'s emulator coefficients: float32 for a model built
    from ``TGMEmulator.astype(jnp.float32)`` (θ₀, flux and weights are cast to it; the emulator
    basis is still evaluated in float64, ``tgm_flux``), float64 otherwise. The errors, loss and
    flags are computed in float64 whenever JAX allows it, at the float32 solution, so the
    covariance does not depend on the loop's precision.

    Returns (FitResult, group_loss): θ is each spectrum's best iterate; covariance, loss and flags
    come from ``driver.finish`` (exact Jacobian, final Clean mask); ``n_iter`` is the number of
    Adam steps of each spectrum, ``n_cycles`` its number of Clean calls and ``n_clean`` the number
    of pixels Clean rejected. group_loss = √(Σ_b Σ_i r_bi² / Σ_b n_b) at the reported θ.
    """
    if convergence not in ("group", "spectrum"):
        raise ValueError(f"convergence must be 'group' or 'spectrum', not {convergence!r}")
    dtype = emulator_dtype(fm.emulator)
    theta0, loop_flux, loop_weights = (jnp.asarray(a, dtype) for a in (theta0, flux, weights))
    state = run(fm, x_from_theta(theta0), loop_flux, loop_weights, lr=float(lr), clean=clean,
                convergence=convergence, max_iter=int(max_iter), mask_polynomial=mask_polynomial)
    good = state.mask & (loop_weights > 0)
    wide = jnp.float64 if jax.config.jax_enable_x64 else dtype
    fm = cast_model(fm, wide)
    flux, weights = jnp.asarray(flux, wide), jnp.asarray(weights, wide)
    theta = theta_from_x(state.best_x.astype(wide))
    lm_state = _lm_state_at(fm, theta, flux, weights * good)
    lm_status = jnp.where(state.status == MAX_ITER, lm.MAX_ITER, jnp.where(
        state.status == NONFINITE_LOSS, lm.NONFINITE, jnp.where(
            lm_state.status == lm.NONFINITE, lm.NONFINITE, lm.FTOL)))
    lm_state = lm_state._replace(status=lm_status)
    cov, loss, flags = finish(fm, lm_state, flux, weights, good)
    converged = (flags & FAILURES) == 0
    n_rejected = jnp.sum((weights > 0) & ~good, axis=1)
    group_loss = jnp.sqrt(jnp.sum(lm_state.resid ** 2) / jnp.sum(weights > 0))
    result = FitResult(theta, cov, loss, state.n_iter, n_rejected, state.n_clean, good, converged,
                       flags)
    return result, group_loss
