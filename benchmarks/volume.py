"""Throughput and memory from 10³ to 10⁶ spectra: does the LM path stay flat as the volume grows?

Usage: python benchmarks/volume.py [--sizes 1000 10000 100000] [--group 256] [--model demo|FILE]
       [--clean] [--start fixed|global] [--snr 30] [--progress 100000]

Spectra: mock spectra (``jaxlasp.mock``: parameters drawn over the model's domain, random smooth
continuum, Gaussian noise at ``--snr``), generated group by group with the group's index as seed
and streamed through one compiled fit of ``--group`` spectra (``jaxlasp.groups.fitting.fit``: LM,
the start ``--start``), the way the pipeline streams files. Per size: seconds spent fitting (mock
generation is timed separately and left out), spectra/s, the share that converged, and the
process's peak resident memory (a high-water mark, so read the sizes in increasing order: memory
that does not grow with N is the point). Before the runs, XLA's memory analysis of the compiled LM
program (``driver.run_lm``: arguments + outputs + temporaries) for several batch sizes gives the
device memory per spectrum. With ``--progress K`` a running row (spectra so far, fit s, spectra/s,
the share converged, peak RSS) is printed every K spectra of a size, so a run of 10⁶ spectra shows
its trend as it goes and one cut short still leaves its figures.
"""
from __future__ import annotations

import argparse
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import load_model
from jaxlasp.fit.driver import SLOTS, run_lm
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.groups.fitting import fit
from jaxlasp.groups.inputs import initial_points
from jaxlasp.mock import draw_parameters, simulate
from jaxlasp.model import build_forward_model

FIXED_START = (7500.0, 3.5, -0.5)
MB = 2.0**20


def peak_rss_mb() -> float:
    """The process's peak resident memory so far [MiB] (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def lm_memory_per_spectrum(fm, batches) -> None:
    """XLA's memory estimate of the compiled LM program per batch size, and per spectrum."""
    print("\n## LM program memory (XLA memory analysis of driver.run_lm, float64)")
    print("| batch | arguments MB | outputs MB | temporaries MB | total MB | KB per spectrum |")
    print("|---:|---:|---:|---:|---:|---:|")
    for batch in batches:
        theta = jnp.zeros((batch, 5))
        flux = jnp.ones((batch, fm.grid.n))
        tol = jnp.full(batch, 1e-10)
        compiled = run_lm.lower(fm, theta, flux, flux, tol, tol, 100, None, SLOTS).compile()
        mem = compiled.memory_analysis()
        total = mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
        print(f"| {batch} | {mem.argument_size_in_bytes / MB:.1f} | "
              f"{mem.output_size_in_bytes / MB:.1f} | {mem.temp_size_in_bytes / MB:.1f} | "
              f"{total / MB:.1f} | {total / batch / 1024:.0f} |")
    print("(arguments include the emulator's resampled coefficient planes, shared by the batch)")


def stream(fm, emulator, n: int, group: int, args):
    """Fit n mock spectra in full groups (the last one fitted whole, only its first spectra
    counted); returns (fit s, mock s, converged count, spectra fitted)."""
    theta0 = None if args.start == "global" else initial_points(FIXED_START, group, fm)
    fit_seconds = mock_seconds = 0.0
    converged = 0
    next_report = args.progress or n + group
    for index, first in enumerate(range(0, n, group)):
        t = time.perf_counter()
        truth = draw_parameters(group, seed=index, domain=emulator.domain)
        mock = simulate(fm, truth, snr=args.snr, seed=index)
        mock_seconds += time.perf_counter() - t
        t = time.perf_counter()
        result = fit(fm, theta0, mock.flux, mock.weights, method="lm", clean=args.clean,
                     max_iter=None)
        ok = np.asarray(jax.block_until_ready(result.converged))
        fit_seconds += time.perf_counter() - t
        converged += int(ok[:min(group, n - first)].sum())
        done = first + group
        if done >= next_report and done < n:
            next_report += args.progress
            print(f"  progress {done} of {n}: fit {fit_seconds:.1f} s, {done / fit_seconds:.1f} "
                  f"spectra/s, converged {converged / done:.1%}, peak RSS {peak_rss_mb():.0f} MB",
                  flush=True)
    return fit_seconds, mock_seconds, converged, -(-n // group) * group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--group", type=int, default=256)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--clean", action="store_true")
    parser.add_argument("--start", choices=("fixed", "global"), default="fixed")
    parser.add_argument("--snr", type=float, default=30.0)
    parser.add_argument("--progress", type=int, default=0,
                        help="print a running row every this many spectra (0: none)")
    parser.add_argument("--memory-batches", type=int, nargs="*", default=[32, 256, 1024])
    args = parser.parse_args()
    emulator = load_model(args.model)
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid))
    print(f"# volume: model {args.model}, LM, clean={args.clean}, start {args.start}, group "
          f"{args.group}, S/N {args.snr}, {jax.devices()[0].device_kind}, {os.cpu_count()} "
          f"cores, {time.strftime('%Y-%m-%d %H:%M')}")
    lm_memory_per_spectrum(fm, args.memory_batches)
    t = time.perf_counter()
    stream(fm, emulator, args.group, args.group, args)  # compile
    print(f"\nfirst group (compiles): {time.perf_counter() - t:.1f} s")
    print("\n## throughput versus volume")
    print("| spectra | fit s | spectra/s | ms/spectrum | converged | mock generation s | "
          "peak RSS MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        fit_s, mock_s, converged, fitted = stream(fm, emulator, n, args.group, args)
        print(f"| {n} | {fit_s:.1f} | {fitted / fit_s:.1f} | {1000 * fit_s / fitted:.2f} | "
              f"{converged / n:.1%} | {mock_s:.1f} | {peak_rss_mb():.0f} |", flush=True)


if __name__ == "__main__":
    main()
