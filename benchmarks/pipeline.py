"""What a user gets: the whole ``jaxlasp fit`` command on real LAMOST files, against SciPy.

Usage: python benchmarks/pipeline.py [--sizes 100 500]
           [--sets defaults clean fixed segments adegree segment-broadening] (default: the first
           three)
           [--before CHECKOUT] [--baseline-spectra 50] [--workers 2]

The 25 LAMOST DR10 sample files (../shared/data/lamost-dr10-sample/fits) are copied to folders of
100 and 500 files. For each option set the command ``python -m jaxlasp fit FOLDER --model ELODIE
OPTIONS`` runs as its own process on each folder; the steady state is
(wall time for 500 − wall time for 100) / 400 per spectrum, so start-up and compilation cancel.
Every process gets the same fresh compilation cache folder, filled by unmeasured runs (one file,
then the small folder: some programs, such as the Clean schedule's compaction, are compiled for
shapes the data choose), as a user's later runs would find it. The stage split (read, start, fit,
Clean, errors, write, fitter idle; ms per spectrum after the first group) is the command's own
"timings" line of the 500-file run. Start-up is reported apart: the wall time of ``fit`` on one
file with an empty cache (cold) and with the filled one (warm), and the seconds before the first
group is done.

``--before CHECKOUT`` runs the same commands with an older jaxlasp checkout first on PYTHONPATH
(e.g. ``git worktree add /tmp/before dca8459``) in the same run, for a before/after table
(``--after CHECKOUT`` likewise for the other side; default: the installed jaxlasp).
The baseline is ``scipy.optimize.curve_fit`` as LASP-CurveFit calls it (No Clean,
``benchmarks/baseline_scipy.py``, on jaxlasp's NumPy reference model), fitting
``--baseline-spectra`` sample spectra in ``--workers`` processes, as PyLASP runs with joblib;
its ms per spectrum is wall time over spectra, reading not included.
"""
from __future__ import annotations

import argparse
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # the curve_fit workers: one BLAS thread each
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO.parent / "shared" / "data" / "lamost-dr10-sample"
MODEL = SAMPLE / "elodie32_flux_tgm_4199-5700.fits"
OPTION_SETS = {
    "defaults": [],
    "clean": ["--clean"],
    "fixed": ["--start", "7500,3.5,-0.5", "--errors", "laplace"],
    "segments": ["--segments", "4200-4900,5000-5700"],
    "adegree": ["--adegree", "0"],
    "segment-broadening": ["--segments", "4200-4900,5000-5700", "--segment-broadening"],
}
"""The option sets measured: the CLI's defaults (global start, profile errors), with Clean,
PyLASP's fixed start with its (Laplace) errors, and the defaults with two segments (with one σ,
or a σ per segment) or with an additive constant (the explicit polynomial design, issue 22)."""


def copy_sample(folder: Path, n: int) -> Path:
    """``folder`` holding n copies of the sample files (cycled), named so they sort in order."""
    files = sorted((SAMPLE / "fits").glob("*.fits*"))
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        source = files[k % len(files)]
        shutil.copyfile(source, folder / f"c{k:05d}_{source.name}")
    return folder


def fit_command(inputs, output: Path, options: list[str], checkout: Path | None, cache: Path):
    """(wall seconds, stderr) of one ``jaxlasp fit`` process."""
    env = {**os.environ, "JAXLASP_CACHE_DIR": str(cache), "OPENBLAS_NUM_THREADS": "1"}
    if checkout is not None:
        env["PYTHONPATH"] = str(checkout)
    command = [sys.executable, "-m", "jaxlasp", "fit", str(inputs), "--model", str(MODEL),
               "-o", str(output), *options]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=output.parent)
    seconds = time.perf_counter() - start
    output.unlink(missing_ok=True)
    if done.returncode not in (0, 3):
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}")
    return seconds, done.stderr


def parse_timings(stderr: str) -> dict[str, float]:
    """{stage: seconds} from the command's 'timings: …' line ({} for a checkout without it)."""
    line = next((ln for ln in stderr.splitlines() if "timings:" in ln), "")
    line = line.split("timings:", 1)[-1].replace("(compilation included)", "")
    stages = {}
    for piece in re.split(r"[,;]|after it:", line):
        match = re.fullmatch(r"([a-z ]+?) ([\d.]+) s", piece.strip())
        if match:
            stages[match[1]] = float(match[2])
    return stages


def measure(label: str, options: list[str], folders: dict[int, Path], checkout, work: Path):
    """One option set on one checkout: wall per size, steady ms/spectrum, stage split, start-up."""
    cache = work / f"cache-{label}"
    one = next(iter(folders.values())) / sorted(os.listdir(next(iter(folders.values()))))[0]
    cold, _ = fit_command(one, work / "cold.ecsv", options, checkout, cache)
    warm, warm_err = fit_command(one, work / "warm.ecsv", options, checkout, cache)
    fit_command(folders[min(folders)], work / "warmup.ecsv", options, checkout, cache)
    walls, timings = {}, {}
    for n, folder in folders.items():
        walls[n], stderr = fit_command(folder, work / "out.ecsv", options, checkout, cache)
        timings[n] = parse_timings(stderr)
    small, large = min(folders), max(folders)
    steady = 1e3 * (walls[large] - walls[small]) / (large - small)
    return {"label": label, "walls": walls, "steady": steady, "cold": cold, "warm": warm,
            "warm_timings": parse_timings(warm_err), "timings": timings[large], "n": large}


def curve_fit_share(indices: list[int]) -> int:
    """Fit sample spectra ``indices`` with curve_fit as CurveFit does (run in a worker)."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    from baseline_scipy import curve_fit_one
    from sample import load_sample

    from jaxlasp.api import DEFAULT_START
    from jaxlasp.groups.inputs import start_points
    from jaxlasp.testing import NumpyForwardModel

    emulator, fm, flux, weights = load_sample(max(indices) + 1)
    reference = NumpyForwardModel.from_emulator(emulator, fm.grid)
    theta0 = start_points(DEFAULT_START, 1)[0]
    for k in indices:
        curve_fit_one(reference, theta0, flux[k], weights[k])
    return len(indices)


def scipy_baseline(spectra: int, workers: int) -> float:
    """ms per spectrum of curve_fit over ``spectra`` sample spectra in ``workers`` processes."""
    shares = [list(range(w, spectra, workers)) for w in range(workers)]
    with ProcessPoolExecutor(workers) as pool:
        list(pool.map(curve_fit_share, [[0]] * workers))  # imports and model set-up
        start = time.perf_counter()
        list(pool.map(curve_fit_share, shares))
        return 1e3 * (time.perf_counter() - start) / spectra


def stage_split(timings: dict[str, float], n_after: int) -> str:
    """'read 0.31, fit 4.2, …' in ms per spectrum over the spectra after the first group."""
    stages = {k: v for k, v in timings.items() if k not in ("setup", "first group")}
    if not stages or n_after <= 0:
        return "–"
    return ", ".join(f"{k} {1e3 * v / n_after:.2f}" for k, v in stages.items())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=(100, 500))
    parser.add_argument("--sets", nargs="+", choices=tuple(OPTION_SETS),
                        default=("defaults", "clean", "fixed"))
    parser.add_argument("--before", type=Path, default=None,
                        help="an older jaxlasp checkout measured the same way")
    parser.add_argument("--after", type=Path, default=None,
                        help="the checkout measured as 'after' (default: the installed jaxlasp)")
    parser.add_argument("--baseline-spectra", type=int, default=50)
    parser.add_argument("--workers", type=int, default=2, help="curve_fit processes")
    parser.add_argument("--group-size", type=int, default=64)
    args = parser.parse_args(argv)
    if not MODEL.exists():
        raise SystemExit(f"needs the LAMOST sample and ELODIE model in {SAMPLE}")
    work = Path(tempfile.mkdtemp(prefix="jaxlasp-pipeline-"))
    try:
        folders = {n: copy_sample(work / f"in{n}", n) for n in sorted(args.sizes)}
        checkouts = {"after": args.after} if args.before is None else {
            "before": args.before, "after": args.after}
        rows = []
        for name in args.sets:
            options = [*OPTION_SETS[name], "--group-size", str(args.group_size)]
            for side, checkout in checkouts.items():
                rows.append((side, measure(f"{name}-{side}", options, folders, checkout, work)))
                print(f"# measured {name} ({side})", file=sys.stderr)
        baseline = scipy_baseline(args.baseline_spectra, args.workers)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = sorted(args.sizes)
    print(f"# jaxlasp fit on {small} and {large} copies of the 25 LAMOST DR10 sample files, "
          f"ELODIE 3.2, group size {args.group_size}; {os.cpu_count()} CPU cores; steady = "
          f"(wall {large} − wall {small}) / {large - small}")
    print(f"# baseline: scipy curve_fit (CurveFit's No Clean settings) in {args.workers} "
          f"processes over {args.baseline_spectra} spectra: {baseline:.1f} ms per spectrum")
    print(f"| options | code | wall {small} s | wall {large} s | steady ms/spectrum | "
          "× curve_fit | 1 file cold s | 1 file warm s | warm: setup + first group s | "
          "stage split, ms/spectrum after the first group |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for side, r in rows:
        warm_start = r["warm_timings"]
        first = (f"{warm_start['setup'] + warm_start['first group']:.1f}"
                 if "first group" in warm_start else "–")
        n_after = r["n"] - args.group_size
        print(f"| {r['label'].rsplit('-', 1)[0]} | {side} | {r['walls'][small]:.1f} | "
              f"{r['walls'][large]:.1f} | {r['steady']:.1f} | {baseline / r['steady']:.1f} | "
              f"{r['cold']:.1f} | {r['warm']:.1f} | {first} | "
              f"{stage_split(r['timings'], n_after)} |")


if __name__ == "__main__":
    main()
