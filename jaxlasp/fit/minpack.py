"""Levenberg–Marquardt the way MINPACK's ``lmdif`` takes it (``scipy.optimize.leastsq``, and
``curve_fit`` without bounds), batched in JAX: the path LASP-CurveFit's fits follow.

``jaxlasp.fit.lm`` is the fast path: exact Jacobians, fitted to convergence. Where a fit is stopped
early on purpose, as in CurveFit's Clean schedule (ftol 1e-2, then 1e-3, ALGORITHM §g.2), the
point where it stops depends on the optimiser's path, and the next Clean decision depends on that
point. To make the same decisions as PyLASP, this module follows MINPACK's path:

* the Jacobian by forward differences, step h_j = √ε·|x_j| (√ε where x_j = 0), ε machine epsilon
  (``epsfcn`` left at its default, as PyLASP does);
* column scaling D: the Jacobian's column norms at the start (1 for a zero column), then their
  running maximum; trust-region radius Δ = 100·‖D x₀‖ (``factor`` 100), or 100 when that is 0;
* the step p = −(JᵀJ + λD²)⁻¹Jᵀf with λ from ``lmpar``'s safeguarded Newton iteration, so that
  ‖Dp‖ is within 10 % of Δ (λ = 0 when the Gauss–Newton step is already that short), at most 10
  iterations, started from the previous λ;
* Moré's update of Δ and λ from the ratio of actual to predicted reduction, the step accepted when
  that ratio is ≥ 1e-4, and MINPACK's stopping tests and ``info`` codes: 1 ftol, 2 xtol, 3 both,
  4 zero gradient, 5 ``maxfev`` = 200·(p + 1) evaluations, 6–8 tolerances below machine precision.

Reference: J. J. Moré, "The Levenberg–Marquardt algorithm: implementation and theory", Lecture
Notes in Mathematics 630 (1978). The mathematics is MINPACK's, the arithmetic is not: the QR of the
Jacobian is a Householder QR without column pivoting (columns that are exactly zero are moved last,
as pivoting would), and ``lmpar``'s damped systems are solved from a QR of [R; √λ·D]. The results
agree with ``scipy.optimize.leastsq`` to round-off (tests/test_minpack.py).

Every trial step recomputes the forward-difference Jacobian at the current point (unchanged after
a rejected step, so the numbers are MINPACK's; ``nfev`` counts it once, as MINPACK does): p + 1
residual evaluations per trial, the price of a vmappable loop without branches.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

FACTOR = 100.0
"""Initial trust-region radius relative to ‖D x₀‖ (MINPACK's ``factor``)."""
LMPAR_ITERATIONS = 10
"""Most Newton iterations for λ in one ``lmpar`` call."""

RUNNING, FTOL, XTOL, FTOL_XTOL, GTOL, MAXFEV, FTOL_EPS, XTOL_EPS, GTOL_EPS, NONFINITE, SKIPPED = \
    range(11)
"""``MinpackState.status``: 0 running, 1–8 MINPACK's ``info``, then a non-finite start point and
a member left out by the caller."""
CONVERGED = (FTOL, XTOL, FTOL_XTOL, GTOL)
"""The statuses ``curve_fit`` accepts (``ier`` 1–4); it raises on the others."""


class MinpackState(NamedTuple):
    """State of one problem between trial steps (leading batch axis when batched)."""

    x: jax.Array         # (p,) current point
    fvec: jax.Array      # (n,) residuals at x
    fnorm: jax.Array     # ‖fvec‖
    diag: jax.Array      # (p,) D
    xnorm: jax.Array     # ‖D x‖ (D as it was when x was accepted)
    delta: jax.Array     # trust-region radius Δ
    par: jax.Array       # λ
    n_iter: jax.Array    # accepted steps (MINPACK's iter − 1)
    n_trial: jax.Array   # trial steps taken
    nfev: jax.Array      # residual evaluations as MINPACK counts them
    new_jac: jax.Array   # bool: the next Jacobian is at a new point (counted in nfev)
    status: jax.Array
    ftol: jax.Array
    xtol: jax.Array


def householder_qr(a, b):
    """R (p, p) upper triangular and the first p entries of Qᵀb for a (m, p) = QR, b (m,).

    Householder reflections; a zero column gets R_jj = 0 and leaves the others unchanged.
    """
    m, p = a.shape
    rows = jnp.arange(m)
    for j in range(p):
        x = jnp.where(rows >= j, a[:, j], 0.0)
        norm = jnp.linalg.norm(x)
        alpha = jnp.where(x[j] >= 0, -norm, norm)
        v = x.at[j].add(-alpha)
        vv = v @ v
        beta = jnp.where(vv > 0, 2.0 / jnp.where(vv > 0, vv, 1.0), 0.0)
        a = a - beta * jnp.outer(v, v @ a)
        b = b - beta * v * (v @ b)
    return jnp.triu(a[:p]), b[:p]


def solve_upper(r, b):
    """x with R x = b for upper-triangular R (p, p); x_j = 0 where R_jj = 0 (MINPACK's treatment of
    a rank-deficient R: those columns take no part)."""
    p = b.shape[0]
    x = jnp.zeros_like(b)
    for j in reversed(range(p)):
        d = r[j, j]
        x = x.at[j].set(jnp.where(d != 0, (b[j] - r[j, j + 1:] @ x[j + 1:]) / jnp.where(
            d != 0, d, 1.0), 0.0))
    return x


def solve_upper_transposed(r, b):
    """y with Rᵀ y = b for upper-triangular, non-singular R (p, p)."""
    p = b.shape[0]
    y = jnp.zeros_like(b)
    for j in range(p):
        y = y.at[j].set((b[j] - r[:j, j] @ y[:j]) / r[j, j])
    return y


def damped_solve(r, diag, qtb, par):
    """MINPACK's ``qrsolv``: x minimising ‖[R; √λ·D] x − [Qᵀf; 0]‖, and the triangular factor S of
    [R; √λ·D] (SᵀS = RᵀR + λD²)."""
    p = r.shape[0]
    stacked = jnp.concatenate([r, jnp.sqrt(par) * jnp.diag(diag)])
    s, z = householder_qr(stacked, jnp.concatenate([qtb, jnp.zeros(p, qtb.dtype)]))
    return solve_upper(s, z), s


def lmpar(r, diag, qtb, delta, par):
    """MINPACK's ``lmpar``: (λ, x) with x = (RᵀR + λD²)⁻¹Rᵀ(Qᵀf) (the step is −x) such that
    λ = 0 and ‖Dx‖ ≤ 1.1Δ, or λ > 0 and |‖Dx‖ − Δ| ≤ 0.1Δ (or 10 iterations were made).
    ``par`` is the starting guess (the previous λ)."""
    dtype = qtb.dtype
    dwarf = jnp.finfo(dtype).tiny
    full_rank = jnp.all(jnp.diagonal(r) != 0)
    x = solve_upper(r, qtb)                              # Gauss–Newton
    dxnorm = jnp.linalg.norm(diag * x)
    fp = dxnorm - delta
    gauss_newton = fp <= 0.1 * delta

    def newton_denominator(factor, x, dxnorm):
        """‖S⁻ᵀ D²x/‖Dx‖‖² with S the triangular factor ``factor``."""
        y = solve_upper_transposed(factor, diag * (diag * x / dxnorm))
        return y @ y

    safe_r = jnp.where(full_rank, r, jnp.eye(r.shape[0], dtype=dtype))
    parl = jnp.where(full_rank, fp / delta / newton_denominator(safe_r, x, dxnorm), 0.0)
    gnorm = jnp.linalg.norm((r.T @ qtb) / diag)
    paru = gnorm / delta
    paru = jnp.where(paru == 0, dwarf / jnp.minimum(delta, 0.1), paru)
    par = jnp.minimum(jnp.maximum(par, parl), paru)
    par = jnp.where(par == 0, gnorm / dxnorm, par)

    def body(i, carry):
        par, parl, paru, fp, _, done = carry
        trial_par = jnp.where(par == 0, jnp.maximum(dwarf, 0.001 * paru), par)
        x_new, s = damped_solve(r, diag, qtb, trial_par)
        dxnorm = jnp.linalg.norm(diag * x_new)
        fp_new = dxnorm - delta
        stop = ((jnp.abs(fp_new) <= 0.1 * delta) | ((parl == 0) & (fp_new <= fp) & (fp < 0))
                | (i == LMPAR_ITERATIONS - 1))
        parc = fp_new / delta / newton_denominator(s, x_new, dxnorm)
        new_parl = jnp.where(fp_new > 0, jnp.maximum(parl, trial_par), parl)
        new_paru = jnp.where(fp_new < 0, jnp.minimum(paru, trial_par), paru)
        next_par = jnp.where(stop, trial_par, jnp.maximum(new_parl, trial_par + parc))
        new = (next_par, new_parl, new_paru, fp_new, x_new, stop)
        return jax.tree_util.tree_map(lambda a, b: jnp.where(done, a, b), carry, new)

    par, _, _, _, x_damped, _ = lax.fori_loop(
        0, LMPAR_ITERATIONS, body, (par, parl, paru, fp, x, gauss_newton))
    return jnp.where(gauss_newton, 0.0, par), jnp.where(gauss_newton, x, x_damped)


def forward_difference_jacobian(fun: Callable, x, fvec, shared, data):
    """Jᵀ (p, n) by forward differences as MINPACK's ``fdjac2`` (epsfcn = 0)."""
    eps = jnp.sqrt(jnp.finfo(x.dtype).eps)
    h = eps * jnp.abs(x)
    h = jnp.where(h == 0, eps, h)
    shifted = x + jnp.diag(h)
    return jax.vmap(lambda xs, hj: (fun(xs, shared, data) - fvec) / hj)(shifted, h)


def init(fun: Callable, x, shared, data, ftol, xtol) -> MinpackState:
    """State at the start point (one evaluation)."""
    dtype = x.dtype
    fvec = fun(x, shared, data)
    fnorm = jnp.linalg.norm(fvec)
    zero = jnp.zeros((), dtype)
    return MinpackState(x, fvec, fnorm, jnp.ones_like(x), zero, zero, zero, jnp.asarray(0),
                        jnp.asarray(0), jnp.asarray(1), jnp.asarray(True),
                        jnp.where(jnp.isfinite(fnorm), RUNNING, NONFINITE),
                        jnp.asarray(ftol, dtype), jnp.asarray(xtol, dtype))


def step(fun: Callable, maxfev: int, state: MinpackState, shared, data) -> MinpackState:
    """One trial step of ``lmdif`` for one problem (a problem not RUNNING does not change)."""
    dtype = state.x.dtype
    epsmch = jnp.finfo(dtype).eps
    p = state.x.shape[0]
    first = state.n_trial == 0
    jac = forward_difference_jacobian(fun, state.x, state.fvec, shared, data)
    nfev = state.nfev + jnp.where(state.new_jac, p, 0)
    acnorm = jnp.linalg.norm(jac, axis=1)
    diag = jnp.where(first, jnp.where(acnorm == 0, 1.0, acnorm), jnp.maximum(state.diag, acnorm))
    xnorm = jnp.where(first, jnp.linalg.norm(diag * state.x), state.xnorm)
    delta = jnp.where(first, jnp.where(xnorm == 0, FACTOR, FACTOR * xnorm), state.delta)
    gradient = jac @ state.fvec
    gnorm = jnp.where(state.fnorm == 0, 0.0, jnp.max(jnp.where(
        acnorm == 0, 0.0, jnp.abs(gradient) / (state.fnorm * jnp.where(acnorm == 0, 1, acnorm)))))

    order = jnp.argsort(acnorm == 0, stable=True)     # zero columns last, as pivoting would
    r, qtf = householder_qr(jac[order].T, state.fvec)
    par, x_lmpar = lmpar(r, diag[order], qtf, delta, state.par)
    step_ordered = -x_lmpar
    trial_step = jnp.zeros_like(state.x).at[order].set(step_ordered)
    trial = state.x + trial_step
    pnorm = jnp.linalg.norm(diag * trial_step)
    delta = jnp.where(state.n_iter == 0, jnp.minimum(delta, pnorm), delta)

    fvec = fun(trial, shared, data)
    fnorm1 = jnp.linalg.norm(fvec)
    nfev = nfev + 1
    actred = jnp.where(0.1 * fnorm1 < state.fnorm, 1.0 - (fnorm1 / state.fnorm) ** 2, -1.0)
    temp1 = jnp.linalg.norm(r @ step_ordered) / state.fnorm
    temp2 = jnp.sqrt(par) * pnorm / state.fnorm
    prered = temp1**2 + temp2**2 / 0.5
    dirder = -(temp1**2 + temp2**2)
    ratio = jnp.where(prered != 0, actred / jnp.where(prered != 0, prered, 1.0), 0.0)

    shrink = jnp.where(actred >= 0, 0.5, 0.5 * dirder / (dirder + 0.5 * actred))
    shrink = jnp.where((0.1 * fnorm1 >= state.fnorm) | (shrink < 0.1), 0.1, shrink)
    poor = ratio <= 0.25
    good = ~poor & ((par == 0) | (ratio >= 0.75))
    new_delta = jnp.where(poor, shrink * jnp.minimum(delta, pnorm / 0.1),
                          jnp.where(good, pnorm / 0.5, delta))
    new_par = jnp.where(poor, par / shrink, jnp.where(good, 0.5 * par, par))

    success = ratio >= 1e-4
    x = jnp.where(success, trial, state.x)
    xnorm = jnp.where(success, jnp.linalg.norm(diag * trial), xnorm)
    fvec = jnp.where(success, fvec, state.fvec)
    fnorm = jnp.where(success, fnorm1, state.fnorm)

    small_reduction = (jnp.abs(actred) <= state.ftol) & (prered <= state.ftol) & (0.5 * ratio <= 1)
    small_radius = new_delta <= state.xtol * xnorm
    tolerance = jnp.where(small_reduction & small_radius, FTOL_XTOL, jnp.where(
        small_reduction, FTOL, jnp.where(small_radius, XTOL, RUNNING)))
    machine = jnp.where(gnorm <= epsmch, GTOL_EPS, jnp.where(
        new_delta <= epsmch * xnorm, XTOL_EPS, jnp.where(
            (jnp.abs(actred) <= epsmch) & (prered <= epsmch) & (0.5 * ratio <= 1), FTOL_EPS,
            jnp.where(nfev >= maxfev, MAXFEV, RUNNING))))
    status = jnp.where(tolerance != RUNNING, tolerance, machine)
    status = jnp.where(gnorm == 0, GTOL, status)    # gtol = 0: stop before the trial step

    taken = gnorm != 0
    new = MinpackState(
        x=jnp.where(taken, x, state.x), fvec=jnp.where(taken, fvec, state.fvec),
        fnorm=jnp.where(taken, fnorm, state.fnorm), diag=diag,
        xnorm=jnp.where(taken, xnorm, state.xnorm), delta=jnp.where(taken, new_delta, delta),
        par=jnp.where(taken, new_par, state.par), n_iter=state.n_iter + (taken & success),
        n_trial=state.n_trial + 1, nfev=jnp.where(taken, nfev, nfev - 1),
        new_jac=success, status=status, ftol=state.ftol, xtol=state.xtol)
    running = state.status == RUNNING
    return jax.tree_util.tree_map(lambda a, b: jnp.where(running, a, b), new, state)


def run(fun: Callable, theta, shared, data, *, ftol, xtol, active=None,
        maxfev: int | None = None) -> MinpackState:
    """``lmdif`` on a batch: ``theta`` (b, p) start points, ``data`` with leading axis b,
    ``ftol``/``xtol`` scalars or (b,); members not ``active`` are not evaluated (SKIPPED).
    ``fun(theta, shared, data) -> r`` as for ``jaxlasp.fit.lm``. ``maxfev`` None: 200·(p + 1)."""
    batch, p = theta.shape
    maxfev = 200 * (p + 1) if maxfev is None else maxfev
    ftol = jnp.broadcast_to(jnp.asarray(ftol, theta.dtype), (batch,))
    xtol = jnp.broadcast_to(jnp.asarray(xtol, theta.dtype), (batch,))
    state = jax.vmap(lambda th, d, f, x: init(fun, th, shared, d, f, x))(theta, data, ftol, xtol)
    if active is not None:
        state = state._replace(status=jnp.where(active, state.status, SKIPPED))
    batched_step = jax.vmap(lambda s, d: step(fun, maxfev, s, shared, d))
    return lax.while_loop(lambda s: jnp.any(s.status == RUNNING),
                          lambda s: batched_step(s, data), state)
