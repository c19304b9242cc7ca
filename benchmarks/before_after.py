"""LM throughput of the working tree against an earlier git revision, interleaved in one process.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/before_after.py [--rev 3837262] [--sizes 25 100 400]
       [--modes noclean clean] [--repeats 3]

The package at ``--rev`` is extracted with ``git archive`` into a temporary folder and imported as
``jaxlasp_before`` (its import statements rewritten), so both versions fit the same spectra in the
same process: after one compiling call each, the two alternate ``--repeats`` times and the medians
are reported with their ratio. On a shared machine this is the fair comparison: both sides see the
same load. Data as ``lm_cpu.py`` (the 25 LAMOST sample spectra repeated to fill the batch, start
7500 K, 3.5, −0.5, tight tolerances). Also prints the largest difference between the answers.
"""
from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GROUP = ROOT.parent / "shared/data/lamost-dr10-sample/pylasp_group0.npz"
IMPORT = re.compile(r"^(\s*)(from|import) jaxlasp\b", re.M)


def import_revision(rev: str, where: Path):
    """The ``jaxlasp`` package of git revision ``rev``, imported as ``jaxlasp_before``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "jaxlasp"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(where, filter="data")
    package = where / "jaxlasp_before"
    (where / "jaxlasp").rename(package)
    for path in package.rglob("*.py"):
        path.write_text(IMPORT.sub(r"\1\2 jaxlasp_before", path.read_text()))
    sys.path.insert(0, str(where))
    return importlib.import_module("jaxlasp_before")


def problem(package, size: int):
    """(forward model, θ₀, flux, weights) for ``size`` spectra with the given package version."""
    from jaxlasp.api import DEFAULT_START
    from jaxlasp.groups.inputs import start_points

    driver = importlib.import_module(package.__name__ + ".fit.driver")
    group = importlib.import_module(package.__name__ + ".io.pylasp_group")
    grids = importlib.import_module(package.__name__ + ".grids")
    model = importlib.import_module(package.__name__ + ".model")
    emulator, data = group.read_pylasp_group(GROUP)
    grid = grids.lamost_fit_grid(emulator.grid)
    flux = data["spectra"].astype(np.float64)
    flux /= np.median(flux, axis=1, keepdims=True)
    weights = np.ones_like(flux)
    weights[:, -1] = 0.0
    fm = model.build_forward_model(emulator, grid)
    return (driver.fit_batch, fm, start_points(DEFAULT_START, size),
            np.resize(flux, (size, grid.n)), np.resize(weights, (size, grid.n)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="3837262")
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 400])
    parser.add_argument("--modes", nargs="+", default=["noclean", "clean"])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not GROUP.exists():
        raise SystemExit(f"needs the LAMOST sample at {GROUP}")
    import jaxlasp

    with tempfile.TemporaryDirectory() as tmp:
        before = import_revision(args.rev, Path(tmp))
        print(f"# before = git {args.rev}, after = working tree; device "
              f"{jax.devices()[0].device_kind}; float64; OPENBLAS_NUM_THREADS="
              f"{os.environ.get('OPENBLAS_NUM_THREADS')}, XLA_FLAGS="
              f"{os.environ.get('XLA_FLAGS', '')!r}; median of {args.repeats} alternating runs")
        print(f"{'mode':>8} {'batch':>6} {'before ms/spec':>15} {'after ms/spec':>14} "
              f"{'speed-up':>9} {'first s before/after':>21} {'max|Δθ|/σ':>10}")
        for mode in args.modes:
            for size in args.sizes:
                runs = {}
                for name, package in (("before", before), ("after", jaxlasp)):
                    fit, fm, theta0, flux, weights = problem(package, size)
                    runs[name] = (lambda f=fit, m=fm, t=theta0, x=flux, w=weights:
                                  jax.block_until_ready(f(m, t, x, w, use_clean=mode == "clean")))
                first, results = {}, {}
                for name, run in runs.items():
                    t0 = time.perf_counter()
                    results[name] = run()
                    first[name] = time.perf_counter() - t0
                times = {name: [] for name in runs}
                for _ in range(args.repeats):
                    for name, run in runs.items():
                        t0 = time.perf_counter()
                        run()
                        times[name].append(time.perf_counter() - t0)
                ms = {name: 1e3 * np.median(t) / size for name, t in times.items()}
                sigma = np.sqrt(np.diagonal(np.asarray(results["after"].covariance), axis1=1,
                                            axis2=2))
                shift = np.max(np.abs(np.asarray(results["after"].theta)
                                      - np.asarray(results["before"].theta)) / sigma)
                print(f"{mode:>8} {size:>6} {ms['before']:>15.2f} {ms['after']:>14.2f} "
                      f"{ms['before'] / ms['after']:>9.2f} "
                      f"{first['before']:>10.1f}/{first['after']:<10.1f} {shift:>10.2e}",
                      flush=True)


if __name__ == "__main__":
    main()
