"""Side-by-side baseline: SciPy finite-difference fits (the way LASP-CurveFit works) vs jaxlasp LM.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/baseline_scipy.py [--rounds 2] [--spectra 25]

Same 25 LAMOST DR10 spectra (../shared/data/lamost-dr10-sample/pylasp_group0.npz), same ELODIE 3.2
model, same start (7500 K, 3.5, −0.5; mu 0, σ 1 px), same weights (1, last pixel dropped), No Clean,
in one process, the two sides alternating ``--rounds`` times (medians reported):

* ``curve_fit``: ``scipy.optimize.curve_fit`` (method "lm" = MINPACK lmdif, forward differences,
  ftol 1e-5, xtol 1e-10: CurveFit's No Clean settings, ALGORITHM §h.5) on the NumPy forward model of
  ``jaxlasp.testing`` (independent of the JAX code), one spectrum at a time;
* ``least_squares``: ``scipy.optimize.least_squares`` (TRF, 2-point differences, jaxlasp's box and
  tight tolerances 1e-10, ``jaxlasp.testing.fit_least_squares``), one spectrum at a time;
* ``jaxlasp``: ``fit_batch`` on the 25 as one batch (after compilation, which is reported apart).

Prints per-spectrum seconds and function evaluations for each side, the ratios, and the largest
parameter differences between the answers.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import scipy.optimize
from sample import load_sample

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import DEFAULT_START
from jaxlasp.fit.driver import fit_batch
from jaxlasp.groups.inputs import start_points
from jaxlasp.model import LN_TEFF
from jaxlasp.testing import NumpyForwardModel, fit_least_squares


def curve_fit_one(reference: NumpyForwardModel, theta0, flux, weights):
    """(θ, function evaluations) from curve_fit as CurveFit calls it (No Clean tolerances)."""
    n = flux.size

    def model(_, *theta):
        return reference.residuals(np.asarray(theta), flux, weights)

    theta, _, info, _, _ = scipy.optimize.curve_fit(
        model, [], np.zeros(n), p0=theta0, method="lm", ftol=1e-5, xtol=1e-10, full_output=True)
    return theta, info["nfev"]


def timed(fn):
    """(seconds, result) of one call."""
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--spectra", type=int, default=25)
    args = parser.parse_args()
    emulator, fm, flux, weights = load_sample(args.spectra)
    grid = fm.grid
    reference = NumpyForwardModel.from_emulator(emulator, grid)
    b = flux.shape[0]
    theta0 = start_points(DEFAULT_START, b)

    def ours():
        return jax.block_until_ready(fit_batch(fm, theta0, flux, weights))

    def least_squares_one(k):
        out = fit_least_squares(reference, theta0[k], flux[k], weights[k], ftol=1e-10,
                                xtol=1e-10, gtol=1e-10)
        return out.theta, out.nfev

    scipy_sides = {"curve_fit": lambda k: curve_fit_one(reference, theta0[k], flux[k], weights[k]),
                   "least_squares": least_squares_one}
    compile_s, result = timed(ours)
    times = {"jaxlasp": [], **{name: [] for name in scipy_sides}}
    answers, evaluations = {}, {}
    for _ in range(args.rounds):
        times["jaxlasp"].append(timed(ours)[0] / b)
        for name, fit_one in scipy_sides.items():
            runs = [timed(lambda: fit_one(k)) for k in range(b)]
            times[name].append(np.mean([seconds for seconds, _ in runs]))
            answers[name] = np.array([theta for _, (theta, _) in runs])
            evaluations[name] = np.array([count for _, (_, count) in runs])
    ours_s = np.median(times["jaxlasp"])
    print(f"# {b} LAMOST DR10 spectra, ELODIE 3.2, No Clean, start {DEFAULT_START}; device "
          f"{jax.devices()[0].device_kind}; float64; median of {args.rounds} alternating rounds; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS')}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"# jaxlasp first call (compile + run): {compile_s:.1f} s; mean LM iterations "
          f"{np.mean(result.n_iter):.1f}, each one residual + exact Jacobian evaluation")
    print(f"{'method':<15} {'ms/spectrum':>11} {'evaluations':>12} {'× jaxlasp time':>15} "
          f"{'max|ΔTeff| K':>13} {'max|Δlog g|':>12} {'max|Δ[Fe/H]|':>13}")
    theta = np.asarray(result.theta)
    print(f"{'jaxlasp LM':<15} {1e3 * ours_s:>11.2f} {np.mean(result.n_iter) + 1:>12.1f} "
          f"{1.0:>15.1f} {'—':>13} {'—':>12} {'—':>13}")
    for name in scipy_sides:
        other = answers[name]
        dteff = np.max(np.abs(np.exp(other[:, LN_TEFF]) - np.exp(theta[:, LN_TEFF])))
        dlogg, dfeh = (np.max(np.abs(other[:, j] - theta[:, j])) for j in (3, 4))
        seconds = np.median(times[name])
        print(f"{name:<15} {1e3 * seconds:>11.2f} {np.mean(evaluations[name]):>12.1f} "
              f"{seconds / ours_s:>15.1f} {dteff:>13.2f} {dlogg:>12.4f} {dfeh:>13.4f}")


if __name__ == "__main__":
    main()
