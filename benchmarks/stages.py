"""Cost of each stage of one LM iteration, per spectrum, for a batch of real spectra.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/stages.py [--batch 100] [--repeats 15]

Each stage is a jitted ``vmap`` over the batch, fed with the arrays the previous stage produces,
so stages are timed in isolation. Stages are run interleaved (round robin) ``--repeats`` times and
the median is reported, which keeps the comparison fair on a shared, noisy machine; the spread
(25–75 % quantiles) is printed too. "share" is the stage's median over the median of one full LM
step (``lm.step``: trial residuals + Jacobian + damped solve + bookkeeping). The last line is the
Jacobian computed the way it was before (``jax.linearize`` through the whole model, Legendre
solve included) on today's forward model, for comparison.

Needs ../shared/data/lamost-dr10-sample/pylasp_group0.npz (ELODIE 3.2 + 25 LAMOST spectra, the 25
repeated to fill the batch). Parameters: the default start (7500 K, 3.5, −0.5) spread by a few
per cent so that all three emulator regimes and both blends occur.
"""
from __future__ import annotations

import argparse
import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sample import load_sample

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.emulators.tgm import N_TERMS, regime_design
from jaxlasp.fit import lm
from jaxlasp.fit.driver import lm_jacobian, lm_residual, parameter_box
from jaxlasp.model import FEH, LN_TEFF, LOGG, MU, SIGMA, broadened, theta_from_physical
from jaxlasp.spectral.broaden import broaden
from jaxlasp.spectral.continuum import (
    PolynomialFit,
    cholesky_lower,
    polynomial_fit,
    polynomial_tangents,
)


def stage_functions(fm):
    """{name: per-spectrum function}, each taking the arrays ``stage_inputs`` prepares."""
    lower, upper = (jnp.asarray(b) for b in parameter_box(fm))
    emu = fm.emulator
    coef = emu.coef[:, :N_TERMS[emu.version]]
    leg = fm.legendre
    eye = jnp.eye(5)

    def basis(x):
        return regime_design(jnp.exp(x.theta[LN_TEFF]), x.theta[LOGG], x.theta[FEH], emu.version)

    def product(x):
        return jnp.einsum("rk,rkp->p", x.design, coef)

    def broadening(x):
        return broaden(x.resampled, x.theta[MU], x.theta[SIGMA], fm.halfwidth)

    def tangents(x):
        return jax.vmap(lambda e: jax.jvp(lambda th: broadened(fm, th), (x.theta,), (e,)),
                        out_axes=(None, 0))(eye)

    def moments(x):
        return leg.products @ (leg.moments.T @ (x.weights * x.convolved * x.convolved))

    def cholesky(x):
        scale = jnp.sqrt(jnp.diagonal(x.normal))
        return cholesky_lower(x.normal / scale[:, None] / scale[None, :])

    def legendre_fit(x):
        return polynomial_fit(x.convolved, x.flux, x.weights, leg)

    def legendre_tangents(x):
        return polynomial_tangents(x.fit, x.convolved, x.tangents, x.flux, x.weights, leg)

    def residual(x):
        return lm_residual(x.theta, fm, (x.flux, x.weights))

    def jacobian(x):
        return lm_jacobian(x.theta, fm, (x.flux, x.weights))

    def jacobian_linearize(x):
        return lm.residuals_and_jacobian(lm_residual, x.theta, fm, (x.flux, x.weights))

    def damped_solve(x):
        return lm.solve_damped(x.state.jac, x.state.resid, x.state.scale, x.state.damping)[0]

    def full_step(x):
        return lm.step(lm_residual, lower, upper, 100, x.state, fm, (x.flux, x.weights),
                       lm_jacobian)[0]

    return {
        "emulator basis + regime blend": basis,
        "emulator coefficient product": product,
        "broadening (81-node kernel, shifted sum)": broadening,
        "emulator + broadening, value + 5 tangents": tangents,
        "Legendre normal matrix (moments)": moments,
        "Legendre Cholesky (51×51)": cholesky,
        "Legendre fit (normal+Cholesky+2 solves)": legendre_fit,
        "Legendre fit tangents (implicit, 5)": legendre_tangents,
        "residuals (whole forward model)": residual,
        "residuals + Jacobian (analytic, in use)": jacobian,
        "LM damped solve (5×5)": damped_solve,
        "LM step (all in use)": full_step,
        "(for comparison) residuals + Jacobian by jax.linearize": jacobian_linearize,
    }


class Inputs(NamedTuple):
    """Per-spectrum inputs of the stages (leading batch axis)."""

    theta: jax.Array
    flux: jax.Array
    weights: jax.Array
    design: jax.Array
    resampled: jax.Array
    convolved: jax.Array
    tangents: jax.Array
    normal: jax.Array
    fit: PolynomialFit
    state: lm.LMState


def stage_inputs(fm, theta, flux, weights) -> Inputs:
    """The per-spectrum inputs of every stage, computed once with the model's own functions."""
    emu = fm.emulator
    design = jax.vmap(
        lambda t: regime_design(jnp.exp(t[LN_TEFF]), t[LOGG], t[FEH], emu.version))(theta)
    resampled = jnp.einsum("brk,rkp->bp", design, emu.coef[:, :N_TERMS[emu.version]])
    convolved = jax.vmap(lambda f, t: broaden(f, t[MU], t[SIGMA], fm.halfwidth))(resampled, theta)
    tangents = jax.vmap(lambda t: jax.jacfwd(lambda th: broadened(fm, th))(t).T)(theta)
    leg = fm.legendre
    normal = jax.vmap(lambda w, c: leg.products @ (leg.moments.T @ (w * c * c)))(weights, convolved)
    fit = jax.vmap(lambda c, f, w: polynomial_fit(c, f, w, leg))(convolved, flux, weights)
    state = jax.vmap(lambda t, f, w: lm.init(lm_residual, t, fm, (f, w), jacobian=lm_jacobian))(
        theta, flux, weights)
    return Inputs(theta, flux, weights, design, resampled, convolved, tangents, normal, fit, state)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    b = args.batch
    _, fm, flux, weights = load_sample(b)
    grid = fm.grid
    rng = np.random.default_rng(1)
    teff = np.exp(rng.uniform(np.log(3800.0), np.log(9500.0), b))
    theta = theta_from_physical(teff, rng.uniform(1.0, 5.0, b), rng.uniform(-1.5, 0.4, b),
                                rng.uniform(-100, 100, b), rng.uniform(0.8, 2.0, b))
    inputs = jax.jit(stage_inputs)(fm, *(jnp.asarray(a) for a in (theta, flux, weights)))
    functions = {name: jax.jit(jax.vmap(fn)) for name, fn in stage_functions(fm).items()}
    for fn in functions.values():  # compile
        jax.block_until_ready(fn(inputs))
    times = {name: [] for name in functions}
    for _ in range(args.repeats):
        for name, fn in functions.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(inputs))
            times[name].append(time.perf_counter() - t0)
    step = np.median(times["LM step (all in use)"])
    print(f"# device {jax.devices()[0].device_kind}, float64, batch {b}, {grid.n} pixels, "
          f"median of {args.repeats} interleaved runs, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{'stage':<44} {'ms/spectrum':>11} {'q25–q75':>15} {'share':>6}")
    for name, t in times.items():
        q25, q50, q75 = (1e3 * np.quantile(t, q) / b for q in (0.25, 0.5, 0.75))
        print(f"{name:<44} {q50:>11.3f} {q25:>7.3f}–{q75:<7.3f} {np.median(t) / step:>6.2f}")


if __name__ == "__main__":
    main()
