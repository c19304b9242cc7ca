"""What do profile-likelihood errors cost, and how much do they change on real spectra?

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/errors.py [--sizes 25 100 400] [--repeats 3]

Needs ../shared/data/lamost-dr10-sample (pylasp_group0.npz, numpy only). For batches of the 25
LAMOST sample spectra repeated: LM No Clean from PyLASP's start (``fit_batch``, Laplace errors)
and ``jaxlasp.fit.errors.profile_errors`` on its result, timed separately (median of
--repeats after a compiling call), in ms per spectrum and as a ratio to the fit. Then, for the 25
spectra, the ratio profile error / Laplace error of RV, Teff, log g and [Fe/H] (min, median,
max): how far the χ² surface of real LAMOST spectra is from a parabola over ±2 errors.
"""
from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from sample import load_sample

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import DEFAULT_START
from jaxlasp.fit.driver import fit_batch
from jaxlasp.fit.errors import FAST_ITERATIONS, PROFILE_STEP, profile_errors
from jaxlasp.groups.columns import result_columns
from jaxlasp.groups.inputs import start_points


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """(first call s, median of ``repeats`` later calls s, last result)."""
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    first, times = time.perf_counter() - t0, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return first, float(np.median(times)), out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    _, fm, flux25, weights25 = load_sample()
    print(f"# device {jax.devices()[0].device_kind}, float64, {fm.grid.n} pixels, LM No Clean "
          f"from {DEFAULT_START}, profile at ±{PROFILE_STEP:g} errors with "
          f"{FAST_ITERATIONS} Gauss-Newton step(s), median of {args.repeats}")
    print("| batch | LM ms/spectrum | profile errors ms/spectrum | profile / LM | "
          "first call s (LM, profile) |")
    print("|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        flux = np.resize(flux25, (size, fm.grid.n))
        weights = np.resize(weights25, (size, fm.grid.n))
        theta0 = start_points(DEFAULT_START, size)
        lm_first, lm_s, result = timed(lambda: fit_batch(fm, theta0, flux, weights),
                                       args.repeats)
        pr_first, pr_s, _ = timed(lambda: profile_errors(fm, result, flux, weights),
                                  args.repeats)
        print(f"| {size} | {1e3 * lm_s / size:.2f} | {1e3 * pr_s / size:.2f} | "
              f"{pr_s / lm_s:.2f} | {lm_first:.1f}, {pr_first:.1f} |", flush=True)
    result = fit_batch(fm, start_points(DEFAULT_START, len(flux25)), flux25, weights25)
    laplace = result_columns(result, fm.grid)
    profile = result_columns(profile_errors(fm, result, flux25, weights25), fm.grid)
    print("\n| parameter | profile / Laplace error: min | median | max |")
    print("|---|---:|---:|---:|")
    for name in ("rv", "teff", "logg", "feh"):
        ratio = profile[f"{name}_err"] / laplace[f"{name}_err"]
        print(f"| {name} | {ratio.min():.3f} | {np.median(ratio):.3f} | {ratio.max():.3f} |")


if __name__ == "__main__":
    main()
