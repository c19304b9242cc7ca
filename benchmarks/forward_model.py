"""Cost of the forward model per spectrum: residuals and jacfwd(residuals) versus batch size.

Usage: python benchmarks/forward_model.py [--sizes 1 64 256 1024] [--dtype float64|float32]
       [--no-fold] [--repeats 3]

Uses the real ELODIE 3.2 model and the 25 LAMOST spectra of ../shared/data when present (the 25
repeated to fill a batch), otherwise the embedded demo model with simulated spectra. Prints one
line per batch size: compile time and the best-of-N run time per spectrum, for the residual vector
and for its 1327×5 Jacobian by forward-mode autodiff.
"""
from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxlasp
from jaxlasp.grids import LAMOST_LN_STEP, LogGrid
from jaxlasp.model import build_forward_model, residuals, theta_from_physical

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/lamost-dr10-sample"
GRID = LogGrid(8.342906825954625, LAMOST_LN_STEP, 1327)


def load_problem():
    """(emulator, fluxes (25, 1327), description)."""
    group = SAMPLE / "pylasp_group0.npz"
    if group.exists():
        from jaxlasp.io.pylasp_group import read_pylasp_group

        emulator, data = read_pylasp_group(group)
        flux = data["spectra"].astype(np.float64)
        normalised = flux / np.median(flux, axis=1, keepdims=True)
        return emulator, normalised, "ELODIE 3.2 + 25 LAMOST DR10"
    from jaxlasp.emulators.demo import demo_emulator

    emulator = demo_emulator()
    fm = build_forward_model(emulator, GRID)
    rng = np.random.default_rng(0)
    thetas = theta_from_physical(rng.uniform(4500, 7000, 25), rng.uniform(1, 5, 25),
                                 rng.uniform(-1.5, 0.3, 25), rng.uniform(-80, 80, 25), 1.2)
    flux = np.stack([np.asarray(jaxlasp.model.components(fm, jnp.asarray(t), jnp.ones(GRID.n),
                                                          jnp.ones(GRID.n)).convolved)
                     for t in thetas])
    return emulator, flux * (1 + rng.normal(0, 0.02, flux.shape)), "DEMO model + simulated"


def timed(fn, *args, repeats):
    """(compile+first-run seconds, best of ``repeats`` subsequent runs in seconds)."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return first, best


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 64, 256, 1024])
    parser.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    parser.add_argument("--no-fold", action="store_true", help="resample every model spectrum")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    emulator, flux25, source = load_problem()
    dtype = jnp.dtype(args.dtype)
    fm = build_forward_model(emulator.astype(dtype), GRID, fold=not args.no_fold)
    weights = np.ones(GRID.n)
    weights[-1] = 0
    theta0 = theta_from_physical(5500.0, 4.0, -0.3, rv=10.0, sigma_px=1.2)

    res = jax.jit(jax.vmap(residuals, in_axes=(None, 0, 0, 0)))
    jac = jax.jit(jax.vmap(jax.jacfwd(residuals, argnums=1), in_axes=(None, 0, 0, 0)))
    cpu = platform.processor() or platform.machine()
    print(f"# {source}; device {jax.devices()[0].device_kind} ({cpu}), "
          f"{jax.device_count()} device(s), dtype {args.dtype}, fold={not args.no_fold}, "
          f"N={GRID.n} pixels, kernel half-width {fm.halfwidth}, best of {args.repeats}")
    print(f"{'batch':>6} {'res compile s':>14} {'res ms/spec':>12} "
          f"{'jac compile s':>14} {'jac ms/spec':>12}")
    for b in args.sizes:
        flux = jnp.asarray(np.resize(flux25, (b, GRID.n)), dtype)
        w = jnp.asarray(np.tile(weights, (b, 1)), dtype)
        thetas = jnp.asarray(np.tile(theta0, (b, 1)), dtype)
        rc, rt = timed(res, fm, thetas, flux, w, repeats=args.repeats)
        jc, jt = timed(jac, fm, thetas, flux, w, repeats=args.repeats)
        print(f"{b:>6} {rc:>14.2f} {1e3 * rt / b:>12.3f} {jc:>14.2f} {1e3 * jt / b:>12.3f}",
              flush=True)


if __name__ == "__main__":
    main()
