"""LASP-Adam throughput: spectra per second versus group size, No Clean and Clean, float64/float32.

Usage: python benchmarks/adam.py [--sizes 25 100 400 1000] [--large] [--modes noclean clean]
       [--dtypes float64 float32] [--repeats 1] [--noise 0.01] [--group PATH]

Spectra: the 25 LAMOST sample spectra of ``pylasp_group0.npz`` (read with numpy only, so it also
runs on the GPU machine), normalised by their median, last pixel left out (as ``fit_files``),
repeated to fill a group; the copies beyond the first 25 get ``--noise`` relative Gaussian noise
(seeded), so that they stop at different iterations as distinct spectra would. ``--large`` adds a
group of 10 000. Settings: ``fit_batch_adam`` defaults (per-spectrum convergence, lr 0.1, start
7500 K, 3.5, −0.5); float32 casts the emulator (``TGMEmulator.astype``).

Columns, per dtype, mode and group size:
* compile s: tracing, lowering and XLA compilation of the Adam loop (ahead of time);
* first s: the first ``fit_batch_adam`` call: compiling the error step (exact Jacobian) and a run;
* s/batch, ms/spec, spec/s: best of ``--repeats`` later calls (``--repeats 0``: the first call,
  for groups too large to run twice);
* steps mean/max: Adam steps per spectrum; the vmapped loop runs ``max`` steps for the group;
* loop MB: XLA's estimate for the compiled Adam loop (arguments + outputs + temporaries);
* peak MB: the process's peak resident memory on a CPU, the device's peak bytes in use on a GPU;
  both are high-water marks since the script started, so read them in order of group size.
"""
from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import DEFAULT_START
from jaxlasp.fit import adam
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.groups.inputs import start_points
from jaxlasp.io.pylasp_group import read_pylasp_group
from jaxlasp.model import build_forward_model

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/lamost-dr10-sample"
GROUP = SAMPLE / "pylasp_group0.npz"
LARGE = 10_000
MB = 2.0 ** 20


def sample_spectra(path: Path):
    """(emulator, flux (25, n) / median, weights (25, n): 1 with the last pixel 0)."""
    emulator, data = read_pylasp_group(path)
    flux = data["spectra"].astype(np.float64)
    flux /= np.median(flux, axis=1, keepdims=True)
    weights = np.ones_like(flux)
    weights[:, -1] = 0.0
    return emulator, flux, weights


def fill_group(flux, weights, size: int, noise: float, seed: int = 0):
    """``size`` spectra: the sample repeated; the copies are multiplied by 1 + noise·N(0, 1)."""
    rng = np.random.default_rng(seed)
    big = np.resize(flux, (size, flux.shape[1]))
    extra = big[len(flux):]
    big[len(flux):] = extra * (1 + noise * rng.standard_normal(extra.shape))
    return big, np.resize(weights, big.shape)


def peak_memory_mb() -> float:
    """Peak device bytes in use (GPU) or the process's peak RSS (CPU), in MiB."""
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / MB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB   # ru_maxrss: KiB


def compile_loop(fm, theta0, flux, weights, clean: bool):
    """The Adam loop compiled ahead of time exactly as ``fit_batch_adam`` will call it (which
    then reuses it); returns (seconds to trace, lower and compile, XLA's memory estimate [MiB])."""
    dtype = fm.emulator.coef.dtype
    args = [jnp.asarray(a, dtype) for a in (theta0, flux, weights)]
    t0 = time.perf_counter()
    compiled = adam.run.lower(fm, adam.x_from_theta(args[0]), *args[1:], lr=0.1, clean=clean,
                              convergence="spectrum", max_iter=5000,
                              mask_polynomial=True).compile()
    seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    if mem is None:
        return seconds, float("nan")
    return seconds, (mem.argument_size_in_bytes + mem.output_size_in_bytes
                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / MB


def benchmark(fm, theta0, flux, weights, clean: bool, repeats: int) -> dict:
    """Figures of one configuration (see the module docstring)."""
    def call():
        return jax.block_until_ready(adam.fit_batch_adam(fm, theta0, flux, weights, clean=clean))

    compile_s, loop_mb = compile_loop(fm, theta0, flux, weights, clean)
    t0 = time.perf_counter()
    result, _ = call()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    best = min(times) if times else first   # --repeats 0: error-step compilation included
    steps = np.asarray(result.n_iter)
    return {"compile": compile_s, "first": first, "seconds": best, "mean": steps.mean(),
            "max": steps.max(), "loop_mb": loop_mb, "peak_mb": peak_memory_mb(),
            "converged": int(np.sum(np.asarray(result.converged)))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100, 400, 1000])
    parser.add_argument("--large", action="store_true", help=f"add a group of {LARGE}")
    parser.add_argument("--modes", nargs="+", choices=["noclean", "clean"],
                        default=["noclean", "clean"])
    parser.add_argument("--dtypes", nargs="+", choices=["float64", "float32"],
                        default=["float64", "float32"])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--group", type=Path, default=GROUP)
    args = parser.parse_args()
    if not args.group.exists():
        raise SystemExit(f"needs the LAMOST sample group file at {args.group} (--group)")
    sizes = sorted(set(args.sizes) | ({LARGE} if args.large else set()))
    emulator, flux25, weights25 = sample_spectra(args.group)
    grid = lamost_fit_grid(emulator.grid)
    device = jax.devices()[0]
    print(f"# device {device.platform} {device.device_kind}, {jax.device_count()} device(s), "
          f"{os.cpu_count()} CPU cores, jax {jax.__version__}; {grid.n} pixels, start "
          f"{DEFAULT_START}, per-spectrum convergence, lr 0.1; copies beyond 25 with "
          f"{args.noise:g} noise; "
          + (f"best of {args.repeats} after the first call" if args.repeats else "first call"))
    print(f"{'dtype':>8} {'mode':>8} {'group':>6} {'compile s':>9} {'first s':>8} {'s/batch':>9} "
          f"{'ms/spec':>8} {'spec/s':>8} {'steps':>11} {'loop MB':>8} {'peak MB':>8} "
          f"{'converged':>11}")
    for dtype in args.dtypes:
        fm = build_forward_model(emulator.astype(jnp.dtype(dtype)), grid)
        for mode in args.modes:
            for size in sizes:
                flux, weights = fill_group(flux25, weights25, size, args.noise)
                row = benchmark(fm, start_points(DEFAULT_START, size), flux, weights,
                                mode == "clean", args.repeats)
                print(f"{dtype:>8} {mode:>8} {size:>6} {row['compile']:>9.1f} {row['first']:>8.1f} "
                      f"{row['seconds']:>9.2f} {1e3 * row['seconds'] / size:>8.1f} "
                      f"{size / row['seconds']:>8.1f} {row['mean']:>6.1f}/{row['max']:<4d} "
                      f"{row['loop_mb']:>8.1f} {row['peak_mb']:>8.0f} "
                      f"{str(row['converged']) + '/' + str(size):>11}", flush=True)


if __name__ == "__main__":
    main()
