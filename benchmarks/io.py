"""Reading spectrum files: ms per LAMOST file and per DESI spectrum, per FITS backend and before.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/io.py [--repeats 7] [--desi-spectra 500]
       [--before /tmp/jaxlasp-before]

Each reader calls ``jaxlasp.io.read_spectra`` (detection + reading, what the pipeline calls) on:

* lamost .fits: the 25 real LAMOST DR10 files as shipped (../shared/data/lamost-dr10-sample/fits,
  uncompressed), read in place;
* lamost .fits.gz: the same files gzip-compressed (level 6, as the gzip tool does) in a temp dir;
* desi .fits: a synthetic DESI coadd of --desi-spectra spectra × 3 cameras (B, R, Z with DESI's
  pixel counts; FIBERMAP, X_WAVELENGTH/FLUX/IVAR, X_MASK as compressed images, X_RESOLUTION of
  DESI's shape (spectra, 11, pixels)), in a temp dir; the time is given per spectrum.

Readers: 'fitsio' and 'astropy' (this tree, JAXLASP_FITS_BACKEND set), and 'before': the code of
commit dca8459 (every HDU read whole, detection opening the file a second time), imported from a
git worktree (--before; made with ``git worktree add <dir> dca8459`` when missing). Each reader
runs in its own process and is driven round robin, one pass over the files at a time, so that a
noisy, shared machine treats them alike; each is warmed by one untimed pass first.

Warm: files in the page cache; the median over --repeats passes of the wall time, and of the
process's CPU time (less sensitive to other processes sharing the cores). Cold: before each file
is read its pages are dropped from the page cache with posix_fadvise(POSIX_FADV_DONTNEED) (the
files are never written, so no page is dirty and all go); median over --repeats passes.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LAMOST_DIR = REPO.parent / "shared" / "data" / "lamost-dr10-sample" / "fits"
BEFORE_COMMIT = "dca8459"
CAMERAS = {"B": (3600.0, 2751), "R": (5760.0, 2326), "Z": (7520.0, 2881)}
"""DESI's cameras: first pixel [vacuum Å] and pixel count, 0.8 Å steps."""
READERS = ("fitsio", "astropy", "before")


def write_desi(path: Path, n_spectra: int, seed: int = 0) -> Path:
    """A synthetic DESI coadd in DESI's layout (HDU order, compressed masks, resolution data)."""
    from astropy.io import fits

    rng = np.random.default_rng(seed)
    fibermap = fits.BinTableHDU.from_columns(
        [fits.Column(name="TARGETID", format="K", array=39627745484341489 + np.arange(n_spectra))],
        name="FIBERMAP")
    hdus = [fits.PrimaryHDU(), fibermap]
    for cam, (start, n) in CAMERAS.items():
        shape = (n_spectra, n)
        flux = (5.0 + rng.normal(0.0, 0.5, shape)).astype(np.float32)
        ivar = rng.uniform(1.0, 4.0, shape).astype(np.float32)
        mask = np.where(rng.random(shape) < 0.01, 2, 0).astype(np.uint32)
        hdus += [fits.ImageHDU(start + 0.8 * np.arange(n), name=f"{cam}_WAVELENGTH"),
                 fits.ImageHDU(flux, name=f"{cam}_FLUX"), fits.ImageHDU(ivar, name=f"{cam}_IVAR"),
                 fits.CompImageHDU(mask, name=f"{cam}_MASK"),
                 fits.ImageHDU(np.zeros((n_spectra, 11, n), np.float32),
                               name=f"{cam}_RESOLUTION")]
    fits.HDUList(hdus).writeto(path)
    return path


def gzipped_copies(paths: list[Path], folder: Path) -> list[Path]:
    """Each file gzip-compressed (level 6) into ``folder``."""
    copies = []
    for path in paths:
        copy = folder / f"{path.name}.gz"
        copy.write_bytes(gzip.compress(path.read_bytes(), compresslevel=6))
        copies.append(copy)
    return copies


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (they are clean: dropped at once)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# --- the worker: one reader, driven over stdin/stdout ---------------------------------------------

def timed_pass(read, paths: list[str], cold: bool) -> tuple[float, float, int]:
    """(wall s, CPU s, spectra) of reading every file once; cold: each dropped from the cache
    first (the dropping not timed)."""
    wall = cpu = 0.0
    spectra = 0
    for path in paths:
        if cold:
            drop_from_page_cache(Path(path))
        w0, c0 = time.perf_counter(), time.process_time()
        spectra += len(read(path))
        wall += time.perf_counter() - w0
        cpu += time.process_time() - c0
    return wall, cpu, spectra


def worker() -> None:
    """Answer each request line {"paths": [...], "cold": bool} with the pass's timings."""
    from jaxlasp.io import read_spectra

    for line in sys.stdin:
        request = json.loads(line)
        wall, cpu, spectra = timed_pass(read_spectra, request["paths"], request["cold"])
        print(json.dumps({"wall": wall, "cpu": cpu, "spectra": spectra}), flush=True)


# --- the driver ----------------------------------------------------------------------------------

def start_worker(reader: str, before: Path) -> subprocess.Popen:
    """A worker process for ``reader``: this tree with its backend, or the code before."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    if reader == "before":
        env["PYTHONPATH"] = str(before)
    else:
        env["JAXLASP_FITS_BACKEND"] = reader
        env["PYTHONPATH"] = str(REPO)
    return subprocess.Popen([sys.executable, __file__, "--worker"], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=tempfile.gettempdir())


def ask(process: subprocess.Popen, paths: list[Path], cold: bool) -> dict:
    """One timed pass by a worker."""
    process.stdin.write(json.dumps({"paths": [str(p) for p in paths], "cold": cold}) + "\n")
    process.stdin.flush()
    answer = process.stdout.readline()
    if not answer:
        raise RuntimeError(f"a benchmark worker died (exit code {process.wait()})")
    return json.loads(answer)


def ensure_before(before: Path) -> Path:
    """The worktree of the code before (made when missing)."""
    if not (before / "jaxlasp" / "io" / "readers.py").exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", str(before), BEFORE_COMMIT],
                       check=True, capture_output=True)
    return before


def run(cases: dict[str, list[Path]], repeats: int, before: Path) -> dict:
    """{(reader, case, 'warm'|'cold'): [pass answers]} with every reader driven round robin."""
    workers = {reader: start_worker(reader, before) for reader in READERS}
    results = {}
    try:
        for name, paths in cases.items():
            for process in workers.values():
                ask(process, paths, cold=False)  # warm-up: imports, caches, page cache
            for cold in (False, True):
                for _ in range(repeats):
                    for reader, process in workers.items():
                        key = (reader, name, "cold" if cold else "warm")
                        results.setdefault(key, []).append(ask(process, paths, cold))
    finally:
        for process in workers.values():
            process.stdin.close()
            process.wait()
    return results


def table(results: dict, cases: dict[str, list[Path]]) -> list[str]:
    """Rows: case, reader, ms per unit warm (wall, CPU) and cold (wall), speed-up over before."""
    rows = [f"{'case':<16} {'unit':<9} {'reader':<8} {'warm ms':>8} {'warm CPU':>9} "
            f"{'cold ms':>8} {'vs before (warm)':>17}"]
    for case in cases:
        unit = "spectrum" if case.startswith("desi") else "file"

        def per_unit(reader, temperature, clock):
            answers = results[(reader, case, temperature)]
            return statistics.median(1e3 * a[clock] / (a["spectra"] if unit == "spectrum"
                                                        else len(cases[case])) for a in answers)
        before = per_unit("before", "warm", "wall")
        for reader in READERS:
            warm = per_unit(reader, "warm", "wall")
            rows.append(f"{case:<16} {unit:<9} {reader:<8} {warm:8.3f} "
                        f"{per_unit(reader, 'warm', 'cpu'):9.3f} "
                        f"{per_unit(reader, 'cold', 'wall'):8.3f} {before / warm:16.1f}×")
    return rows


def settings(args, cases: dict[str, list[Path]]) -> list[str]:
    """The conditions the table was measured under."""
    from importlib.metadata import version

    return [f"machine: {platform.machine()}, {os.cpu_count()} cores, load average "
            f"{os.getloadavg()[0]:.1f} at the start; Python {platform.python_version()}, numpy "
            f"{np.__version__}, astropy {version('astropy')}, fitsio {version('fitsio')}",
            f"files: {', '.join(f'{c} {len(p)}' for c, p in cases.items())}; DESI file "
            f"{cases['desi .fits'][0].stat().st_size / 1e6:.0f} MB, {args.desi_spectra} spectra; "
            f"repeats {args.repeats}; before = {BEFORE_COMMIT} ({args.before})",
            "warm: page cache hot, median over passes; cold: each file dropped from the page cache "
            "(posix_fadvise DONTNEED) just before it is read; OPENBLAS_NUM_THREADS=1"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--desi-spectra", type=int, default=500)
    parser.add_argument("--before", type=Path, default=Path("/tmp/jaxlasp-before"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker()
    if find_spec("fitsio") is None:
        sys.exit("this benchmark compares the fitsio backend too: pip install fitsio")
    lamost = sorted(LAMOST_DIR.glob("*.fits"))
    if not lamost:
        sys.exit(f"the LAMOST sample is not at {LAMOST_DIR}")
    ensure_before(args.before)
    with tempfile.TemporaryDirectory(prefix="jaxlasp-io-bench-") as folder:
        folder = Path(folder)
        cases = {"lamost .fits": lamost, "lamost .fits.gz": gzipped_copies(lamost, folder),
                 "desi .fits": [write_desi(folder / "coadd-bench.fits", args.desi_spectra)]}
        header = settings(args, cases)
        results = run(cases, args.repeats, args.before)
        print("\n".join(header + [""] + table(results, cases)))


if __name__ == "__main__":
    main()
