"""Batched Levenberg–Marquardt with exact forward-mode Jacobians (replaces MINPACK's lmdif).

An optimiser in the blackjax/optax style: ``init`` and ``step`` are pure functions of an explicit
``LMState``; ``run`` drives ``vmap(step)`` with ``lax.while_loop`` over a batch until every member
has converged or hit the iteration cap. A converged (inactive) member stops changing.

Damping: classic Marquardt, (JᵀJ + λ·diag(D)) δ = −Jᵀr with D the running maximum of diag(JᵀJ)
(MINPACK's automatic scaling); λ is updated from the gain ratio ρ = actual/predicted reduction
with Nielsen's rule (λ·max(⅓, 1 − (2ρ − 1)³) on success, λ·ν and ν·2 on failure). The trial point
is projected onto the box [lower, upper], so parameters never leave it, and a parameter on a bound
whose descent direction points out of the box is held there (removed from the damped system) so
that the others converge as in an unbounded problem. Convergence as in MINPACK:
``ftol`` on the relative actual and predicted reductions of Σr², ``xtol`` on the relative scaled
step length.

The residual function has the signature ``fun(theta, shared, data) -> r`` where ``shared`` is the
same for the whole batch (e.g. the forward model) and ``data`` holds one member's arrays. An
optional ``jacobian(theta, shared, data) -> (r, Jᵀ)`` with the same signature replaces the
autodiff Jacobian (e.g. one that does not differentiate through an inner linear solve). Jacobians
are stored transposed, (p, n): one row per parameter, the layout that XLA handles fastest here.

A member may also be PENDING: its ``theta`` is a start point not yet evaluated. ``step`` then
evaluates it (exactly what ``init`` does) instead of taking a step, which lets a caller refill a
slot of a running batch with a new problem (``jaxlasp.fit.schedule``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxlasp.spectral.continuum import cholesky_lower, cholesky_solve

ACCEPT_RATIO = 1e-4
"""Smallest gain ratio for which a step is accepted."""
INITIAL_DAMPING = 1.0
"""λ at the start, relative to the scaling D: a cautious first step (with 1e-3 the first
Gauss–Newton-like step from 7500 K can drop σ below ~0.3 px, where the truncated kernel is a single
node with zero derivative, and trap the fit; seen on LAMOST 3709139)."""

RUNNING, FTOL, XTOL, MAX_ITER, NONFINITE, SKIPPED, PENDING = 0, 1, 2, 3, 4, 5, 6
"""Values of ``LMState.status`` (SKIPPED: left out of this run by the caller; PENDING: start point
set, not evaluated yet)."""


class LMState(NamedTuple):
    """State of one LM problem (leading batch axis when batched)."""

    theta: jax.Array      # (p,) current accepted parameters
    resid: jax.Array      # (n,) residuals at theta
    jac: jax.Array        # (p, n) Jacobian at theta, transposed: row j is ∂r/∂θ_j
    cost: jax.Array       # ½ Σ r²
    scale: jax.Array      # (p,) D: running max of diag(JᵀJ)
    damping: jax.Array    # λ
    growth: jax.Array     # ν
    n_iter: jax.Array     # number of steps taken
    status: jax.Array     # RUNNING, FTOL, XTOL, MAX_ITER, NONFINITE, SKIPPED or PENDING
    ftol: jax.Array       # relative tolerance on Σr² reductions
    xtol: jax.Array       # relative tolerance on the scaled step


class LMInfo(NamedTuple):
    """Diagnostics of one step."""

    accepted: jax.Array
    gain_ratio: jax.Array
    step_norm: jax.Array


def residuals_and_jacobian(fun: Callable, theta, shared, data, jacobian: Callable | None = None):
    """(r, Jᵀ): residuals (n,) and their exact Jacobian, transposed (p, n): ``jacobian`` when
    given (same signature as ``fun``, returning (r, Jᵀ)), else forward-mode autodiff of ``fun``
    (p tangents)."""
    if jacobian is not None:
        return jacobian(theta, shared, data)
    return jax.vmap(lambda e: jax.jvp(lambda th: fun(th, shared, data), (theta,), (e,)),
                    out_axes=(None, 0))(jnp.eye(theta.shape[0], dtype=theta.dtype))


def start_state(theta, resid, jac, ftol, xtol, damping=INITIAL_DAMPING) -> LMState:
    """State at the start point ``theta`` with residuals and Jacobian evaluated there; λ starts
    at ``damping``."""
    dtype = theta.dtype
    status = jnp.where(jnp.all(jnp.isfinite(resid)), RUNNING, NONFINITE)
    return LMState(theta, resid, jac, 0.5 * resid @ resid, jnp.sum(jac * jac, axis=1),
                   jnp.asarray(damping, dtype), jnp.asarray(2.0, dtype),
                   jnp.asarray(0), status, jnp.asarray(ftol, dtype), jnp.asarray(xtol, dtype))


def init(fun: Callable, theta, shared, data, ftol=1e-10, xtol=1e-10,
         jacobian: Callable | None = None, damping=INITIAL_DAMPING) -> LMState:
    """LM state at the start point ``theta`` (one problem)."""
    resid, jac = residuals_and_jacobian(fun, theta, shared, data, jacobian)
    return start_state(theta, resid, jac, ftol, xtol, damping)


def pending(theta, resid, jac, ftol, xtol, damping=INITIAL_DAMPING) -> LMState:
    """A PENDING state at the start point ``theta``; ``resid`` and ``jac`` are placeholders with
    the shapes of the residuals (n,) and transposed Jacobian (p, n), e.g. zeros (one problem)."""
    state = start_state(theta, resid, jac, ftol, xtol, damping)
    return state._replace(status=jnp.full_like(state.status, PENDING))


def pinned_at_bound(theta, grad, lower, upper):
    """Parameters on a bound of the box whose descent direction (−Jᵀr) points out of it."""
    return ((theta <= lower) & (grad > 0)) | ((theta >= upper) & (grad < 0))


def solve_damped(jac, resid, scale, damping, free=None):
    """Step δ solving (JᵀJ + λ·diag(D)) δ = −Jᵀr over the ``free`` parameters (the others keep
    δ = 0; default all free), and (JᵀJ, Jᵀr); ``jac`` is Jᵀ (p, n)."""
    normal = jac @ jac.T
    grad = jac @ resid
    f = jnp.ones_like(grad) if free is None else free.astype(grad.dtype)
    system = (normal + damping * jnp.diag(scale)) * jnp.outer(f, f) + jnp.diag(1 - f)
    delta = -cholesky_solve(cholesky_lower(system), grad * f)
    return delta, normal, grad


def step(fun: Callable, lower, upper, max_iter: int, state: LMState, shared, data,
         jacobian: Callable | None = None):
    """One LM iteration for one problem: returns (state, info).

    A RUNNING problem takes a step; a PENDING one is evaluated at its start point (as ``init``);
    any other does not change. One evaluation of residuals and Jacobian either way.
    """
    active = state.status == RUNNING
    fresh = state.status == PENDING
    free = ~pinned_at_bound(state.theta, state.jac @ state.resid, lower, upper)
    delta, normal, grad = solve_damped(state.jac, state.resid, state.scale, state.damping, free)
    trial = jnp.clip(state.theta + delta, lower, upper)
    delta = trial - state.theta
    predicted = -(grad @ delta + 0.5 * delta @ normal @ delta)
    resid, jac = residuals_and_jacobian(fun, jnp.where(fresh, state.theta, trial), shared, data,
                                        jacobian)
    cost = 0.5 * resid @ resid
    actual = state.cost - cost
    ratio = jnp.where(predicted > 0, actual / predicted, -1.0)
    accepted = jnp.isfinite(cost) & (ratio > ACCEPT_RATIO)
    damping = jnp.where(accepted, state.damping * jnp.maximum(1 / 3, 1 - (2 * ratio - 1) ** 3),
                        state.damping * state.growth)
    growth = jnp.where(accepted, 2.0, 2.0 * state.growth)
    root_scale = jnp.sqrt(state.scale)
    step_norm = jnp.linalg.norm(root_scale * delta)
    small_step = step_norm <= state.xtol * jnp.linalg.norm(root_scale * state.theta)
    small_gain = (accepted & (actual <= state.ftol * state.cost)
                  & (predicted <= state.ftol * state.cost) & (ratio <= 2.0))
    n_iter = state.n_iter + 1
    status = jnp.where(small_gain, FTOL, jnp.where(small_step, XTOL, jnp.where(
        n_iter >= max_iter, MAX_ITER, RUNNING)))
    new = LMState(
        theta=jnp.where(accepted, trial, state.theta),
        resid=jnp.where(accepted, resid, state.resid),
        jac=jnp.where(accepted, jac, state.jac),
        cost=jnp.where(accepted, cost, state.cost),
        scale=jnp.where(accepted, jnp.maximum(state.scale, jnp.sum(jac * jac, axis=1)),
                        state.scale),
        damping=damping, growth=growth, n_iter=n_iter, status=status,
        ftol=state.ftol, xtol=state.xtol)
    started = start_state(state.theta, resid, jac, state.ftol, state.xtol, state.damping)
    new = jax.tree_util.tree_map(
        lambda a, b, c: jnp.where(active, a, jnp.where(fresh, b, c)), new, started, state)
    return new, LMInfo(accepted & active, ratio, step_norm)


def run(fun: Callable, theta, shared, data, *, lower, upper, max_iter: int = 100,
        ftol=1e-10, xtol=1e-10, active=None, jacobian: Callable | None = None,
        damping=INITIAL_DAMPING) -> LMState:
    """Fit a batch: ``theta`` (b, p) and ``data`` with leading axis b; returns the final states.

    ``ftol``, ``xtol`` and the starting λ ``damping`` may be scalars or (b,) arrays. Members
    where the (b,) bool ``active`` is False are not iterated (status SKIPPED). The loop ends when
    no member is RUNNING.
    """
    batch = theta.shape[0]
    ftol = jnp.broadcast_to(jnp.asarray(ftol, theta.dtype), (batch,))
    xtol = jnp.broadcast_to(jnp.asarray(xtol, theta.dtype), (batch,))
    damping = jnp.broadcast_to(jnp.asarray(damping, theta.dtype), (batch,))
    lower, upper = jnp.asarray(lower, theta.dtype), jnp.asarray(upper, theta.dtype)
    state = jax.vmap(lambda th, d, f, x, lam: init(fun, th, shared, d, f, x, jacobian, lam))(
        theta, data, ftol, xtol, damping)
    if active is not None:
        state = state._replace(status=jnp.where(active, state.status, SKIPPED))
    batched_step = jax.vmap(
        lambda s, d: step(fun, lower, upper, max_iter, s, shared, d, jacobian)[0])
    return lax.while_loop(lambda s: jnp.any(s.status == RUNNING),
                          lambda s: batched_step(s, data), state)


def covariance(jac, resid, n_used):
    """Parameter covariance (JᵀJ)⁻¹·Σr²/(M − p) from Jᵀ (p, n), M = number of used pixels
    (curve_fit's pcov)."""
    p = jac.shape[0]
    low = cholesky_lower(jac @ jac.T)
    inverse = jax.vmap(lambda e: cholesky_solve(low, e))(jnp.eye(p, dtype=jac.dtype))
    return inverse * (resid @ resid) / (n_used - p)
