"""LM throughput: spectra per second for batches of the 25 LAMOST sample spectra repeated.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/lm_cpu.py [--sizes 25 100 400]
       [--modes noclean clean] [--slots 128] [--repeats 3] [--path exact|curvefit]

Needs ../shared/data/lamost-dr10-sample (reads pylasp_group0.npz: numpy only, no astropy, so it
also runs on the GPU machine). Prints, per batch size and mode, the first call (compile + run) and
the median of --repeats later calls, as seconds per batch, ms per spectrum and spectra per second.
``--slots``: spectra stepped together by LM (``fit_batch(slots=...)``; several values are timed
interleaved, for choosing the default). ``--path curvefit``: CurveFit's own path
(``fit_batch(path="curvefit")``, MINPACK's LM with forward differences; slots do not apply).
PyLASP CurveFit on a 2-core machine: 170 ms/spectrum serially (No Clean), 128 ms with 2 processes.
"""
from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
from sample import load_sample

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import DEFAULT_START
from jaxlasp.fit.driver import PATHS, SLOTS, fit_batch
from jaxlasp.groups.inputs import start_points


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--modes", nargs="+", default=["noclean", "clean"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--slots", type=int, nargs="+", default=[SLOTS])
    parser.add_argument("--path", choices=PATHS, default="exact")
    args = parser.parse_args()
    _, fm, flux25, weights25 = load_sample()
    grid = fm.grid
    print(f"# device {jax.devices()[0].device_kind}, {jax.device_count()} device(s), float64, "
          f"{grid.n} pixels, start {DEFAULT_START}, path {args.path}, median of {args.repeats}, "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"{'mode':>8} {'batch':>6} {'slots':>6} {'first s':>9} {'s/batch':>9} {'ms/spec':>9} "
          f"{'spec/s':>8} {'iters':>6}")
    for mode in args.modes:
        for size in args.sizes:
            flux = np.resize(flux25, (size, grid.n))
            weights = np.resize(weights25, (size, grid.n))
            theta0 = start_points(DEFAULT_START, size)
            runs, first, times = {}, {}, {}
            for slots in args.slots:
                runs[slots] = lambda s=slots: jax.block_until_ready(
                    fit_batch(fm, theta0, flux, weights, use_clean=mode == "clean", slots=s,
                              path=args.path))
                t0 = time.perf_counter()
                result = runs[slots]()
                first[slots], times[slots] = time.perf_counter() - t0, []
            for _ in range(args.repeats):
                for slots, run in runs.items():
                    t0 = time.perf_counter()
                    run()
                    times[slots].append(time.perf_counter() - t0)
            for slots in args.slots:
                t = np.median(times[slots])
                print(f"{mode:>8} {size:>6} {slots:>6} {first[slots]:>9.2f} {t:>9.2f} "
                      f"{1e3 * t / size:>9.2f} {size / t:>8.1f} {np.mean(result.n_iter):>6.1f}",
                      flush=True)


if __name__ == "__main__":
    main()
