"""Spectra/s versus the number of devices (one process) and of Dask workers (processes).

Usage: python benchmarks/scaling.py [--n 400] [--devices 1 2 4] [--workers 1 2]
       [--model demo|TGM_FILE] [--method lm|adam] [--start global|T,G,Z] [--group-size 50]

Spectra: ``--n`` mock spectra drawn over the model's domain (``jaxlasp.mock``, S/N 30, seed 0).

* Devices: each count runs in its own process (``XLA_FLAGS=--xla_force_host_platform_device_count``
  on a CPU, which splits the same cores into that many XLA devices; on a multi-GPU host the real
  devices): ``fit_arrays(..., devices=d)`` on all n spectra at once, timed after a first call
  that compiles. On a CPU this measures the sharding's overhead, not a speed-up: the "devices"
  share the cores.
* Workers: the mock spectra are written as LAMOST FITS files and fitted by ``run_cluster`` on a
  ``LocalCluster`` of w single-threaded worker processes, in chunks of ``--group-size`` files;
  a first run compiles on every worker (its time is printed as "first s"), a second run on the
  same cluster is timed. The single-process pipeline (``pipeline.run``) is timed the same way.

Every line prints the device, the settings and the ratio to the 1-device / single-process run.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEVICE_SCRIPT = """
import json, sys, time
import jax
import jaxlasp
from jaxlasp.api import fit_arrays, load_model
from jaxlasp.mock import draw_parameters, simulate
model, n, devices = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
method, start = sys.argv[4], json.loads(sys.argv[5])
emulator = load_model(model)
mock = simulate(emulator, draw_parameters(n, seed=0, domain=emulator.domain), snr=30.0, seed=1)
def once():
    t = time.perf_counter()
    fit_arrays(mock.flux, emulator, weights=mock.weights, method=method, start=start,
               errors="laplace", devices=devices)
    return time.perf_counter() - t
first = once()
print(json.dumps({"first": first, "seconds": once(), "device": str(jax.devices()[0].device_kind)}))
"""


def parse_start(text: str):
    return text if text == "global" else [float(v) for v in text.split(",")]


def device_runs(args) -> None:
    print(f"\n## devices (one process), n = {args.n}, method {args.method}, start {args.start}")
    print("| devices | first call s | s | spectra/s | × 1 device |")
    print("|---:|---:|---:|---:|---:|")
    base = None
    for devices in args.devices:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
        out = subprocess.run([sys.executable, "-c", DEVICE_SCRIPT, args.model, str(args.n),
                              str(devices), args.method, json.dumps(parse_start(args.start))],
                             env=env, capture_output=True, text=True)
        if out.returncode:
            print(f"| {devices} | failed: {out.stderr.strip().splitlines()[-1]} |||")
            continue
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rate = args.n / result["seconds"]
        base = base or rate
        print(f"| {devices} | {result['first']:.1f} | {result['seconds']:.2f} | {rate:.1f} | "
              f"{rate / base:.2f} |")
    print(f"device kind: {result['device'] if base else '?'}")


def worker_runs(args) -> None:
    from distributed import Client, LocalCluster

    from jaxlasp.api import load_model
    from jaxlasp.mock import draw_parameters, simulate, write_mock_files
    from jaxlasp.parallel.cluster import run_cluster
    from jaxlasp.pipeline import FitOptions, run

    emulator = load_model(args.model)
    mock = simulate(emulator, draw_parameters(args.n, seed=0, domain=emulator.domain),
                    snr=30.0, seed=1)
    options = FitOptions(method=args.method, start=parse_start(args.start),
                         group_size=args.group_size, weighting="ivar")
    folder = Path(tempfile.mkdtemp(prefix="jaxlasp-scaling-"))
    files = write_mock_files(mock, folder / "spectra")
    print(f"\n## Dask workers, n = {args.n} files, chunks and groups of {args.group_size}, "
          f"method {args.method}, start {args.start}, {os.cpu_count()} CPU cores")
    print("| runner | first s (compiles) | s | spectra/s | × single process |")
    print("|---|---:|---:|---:|---:|")

    def timed(fit, name):
        t = time.perf_counter()
        fit(folder / f"{name}.ecsv")
        return time.perf_counter() - t

    first = timed(lambda out: run(files, args.model, out, options, quiet=True), "single-a")
    seconds = timed(lambda out: run(files, args.model, out, options, quiet=True), "single-b")
    base = args.n / seconds
    print(f"| single process (pipeline.run) | {first:.1f} | {seconds:.2f} | {base:.1f} | 1.00 |")
    for workers in args.workers:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                               dashboard_address=":0")
        with Client(cluster) as client:
            def fit(out):
                run_cluster(files, args.model, out, options, client=client,
                            chunk_files=args.group_size, quiet=True)
            first = timed(fit, f"w{workers}-a")
            seconds = timed(fit, f"w{workers}-b")
        cluster.close()
        rate = args.n / seconds
        print(f"| LocalCluster, {workers} workers | {first:.1f} | {seconds:.2f} | {rate:.1f} | "
              f"{rate / base:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=400)
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--method", default="lm", choices=("lm", "adam"))
    parser.add_argument("--start", default="global")
    parser.add_argument("--group-size", type=int, default=50)
    args = parser.parse_args()
    print(f"# scaling: {args.model} model, {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{os.cpu_count()} CPU cores")
    if args.devices:
        device_runs(args)
    if args.workers:
        worker_runs(args)


if __name__ == "__main__":
    main()
