"""Scientific validation on mock spectra (issue 7): start robustness, accuracy, errors, Clean.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/validation.py [--model elodie|demo|PATH]
       [--n 200] [--snr inf 10 20 50 100] [--method lm|adam] [--cosmic 10] [--chunk 50]
       [--sections robustness accuracy calibration clean cost]

Mock stars (``jaxlasp.mock``, seeds fixed) are fitted with the chosen optimiser and the tables are
printed as Markdown:

* robustness: ``--n`` stars with Teff 8000–20000 K and ``--n`` over the whole default range
  (3100–20000 K) at S/N 50, fitted from (5000 K, 3, −0.5), from (7500 K, 3, −0.5), from the truth
  and with the global start (``jaxlasp.fit.start.fit_multistart``); the fraction of stars whose
  Teff differs by > 100 K between two of them.
* accuracy: median bias and robust scatter (1.4826·MAD) of fit − truth for RV, Teff, log g and
  [Fe/H] in bins of true Teff, per S/N (``inf``: noise-free), global start.
* calibration: standard deviation (and robust 1.4826·MAD) of the pulls (fit − truth)/error per
  S/N, over fits without failure or bound flags; weights = ivar of the mock noise.
* clean: the S/N 50 stars with ``--cosmic`` cosmic-ray hits each, fitted with and without Clean,
  against the same spectra without cosmic rays fitted without Clean (same noise).
* cost: wall time per spectrum of the global start's grid scoring, of one fixed-start fit and of
  the global-start fit (grid + candidates), measured on the calls above after compilation.

Each experiment fits its stars in chunks of ``--chunk`` (the last chunk is padded), so compiled
shapes are reused; times exclude the first (compiling) chunk.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import jax
import numpy as np

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import result_columns, start_points
from jaxlasp.fit.driver import AT_BOUND, FAILURES
from jaxlasp.fit.start import fit_multistart, fit_one_method, global_start
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.mock import draw_parameters, simulate
from jaxlasp.model import build_forward_model

ELODIE = (Path(__file__).resolve().parents[1].parent
          / "shared/data/lamost-dr10-sample/elodie32_flux_tgm_4199-5700.fits")
STARTS = {"5000 K": (5000.0, 3.0, -0.5), "7500 K": (7500.0, 3.0, -0.5)}
"""The fixed starts of the robustness table (Teff, log g, [Fe/H])."""
TEFF_BINS = (3100.0, 4500.0, 7000.0, 10000.0, 20000.0)
"""Bins of true Teff [K] of the accuracy table (7000 K: the blase3D paper's split)."""
MOVE_K = 100.0
"""Teff difference [K] counted as "moved" between two starts."""
PARAMS = (("rv", "km/s"), ("teff", "K"), ("logg", "dex"), ("feh", "dex"))
SEEDS = {"hot": 101, "all": 102, "snr": 103}
"""Seeds of the star draws (hot robustness set, all-Teff set) and of the noise."""


def forward_model(name: str):
    """The forward model on the LAMOST 4200–5700 Å grid for "elodie", "demo" or a TGM path."""
    if name == "demo":
        from jaxlasp.emulators.demo import demo_emulator

        emulator = demo_emulator()
    else:
        from jaxlasp.io import read_tgm

        path = ELODIE if name == "elodie" else Path(name)
        if not path.exists():
            raise SystemExit(f"model not found at {path} (use --model demo)")
        emulator = read_tgm(path)
    return build_forward_model(emulator, lamost_fit_grid(emulator.grid))


class Timer:
    """Wall time of calls after the first (compiling) one, and the spectra they fitted."""

    def __init__(self):
        self.seconds, self.spectra, self.calls = 0.0, 0, 0

    def __call__(self, fn, n: int):
        start = time.perf_counter()
        out = jax.block_until_ready(fn())
        if self.calls:
            self.seconds += time.perf_counter() - start
            self.spectra += n
        self.calls += 1
        return out

    def ms_per_spectrum(self) -> float:
        return 1e3 * self.seconds / self.spectra if self.spectra else math.nan


def fit_in_chunks(fit, mocks, chunk: int, timer: Timer, theta0=None) -> dict[str, np.ndarray]:
    """Result columns (``api.result_columns``) of ``fit(flux, weights, theta0)`` over chunks."""
    n = len(mocks.flux)
    parts = []
    for i in range(0, n, chunk):
        rows = np.minimum(np.arange(i, i + chunk), n - 1)
        args = (mocks.flux[rows], mocks.weights[rows],
                None if theta0 is None else theta0[rows])
        result = timer(lambda: fit(*args), min(chunk, n - i))
        columns = result_columns(result, mocks.grid)
        parts.append({k: v[:min(chunk, n - i)] for k, v in columns.items()})
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def fitters(fm, method: str):
    """Fit functions (flux, weights, theta0) → FitResult: fixed-start/given-θ₀ and global."""
    def fixed(flux, weights, theta0, clean=False):
        return fit_one_method(fm, theta0, flux, weights, method=method, clean=clean,
                              max_iter=None)

    def multistart(flux, weights, _, clean=False):
        return fit_multistart(fm, flux, weights, method=method, clean=clean)

    return fixed, multistart


def robust_scatter(x) -> float:
    """1.4826 × median absolute deviation from the median (NaN for no values)."""
    x = np.asarray(x)
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) if x.size else math.nan


def trustworthy(fit) -> np.ndarray:
    """Fits without failure flags and not on a bound of the parameter box."""
    return (fit["flags"] & (FAILURES | AT_BOUND)) == 0


# ------------------------------------------------------------------------------ tables

def robustness_rows(label: str, fits: dict[str, dict], truth, n_pixels: int) -> list[str]:
    """Fractions of stars moving by > MOVE_K between pairs of starts, for one star set; the
    fraction whose global-start χ² exceeds the from-truth χ² by > 1 (χ² = n_pixels·loss², all
    pixels used); the fraction off by > 10 % in Teff."""
    names = list(fits)
    n = len(truth.teff)
    cells = []
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            moved = np.abs(fits[names[a]]["teff"] - fits[names[b]]["teff"]) > MOVE_K
            cells.append(f"{100 * moved.mean():.1f} %")
    far = np.abs(fits["global"]["teff"] - truth.teff) / truth.teff > 0.1
    chi2_worse = n_pixels * (fits["global"]["loss"] ** 2 - fits["truth"]["loss"] ** 2) > 1
    return [f"| {label} | {n} | " + " | ".join(cells)
            + f" | {100 * chi2_worse.mean():.1f} % | {100 * far.mean():.1f} % |"]


def robustness_header(names) -> list[str]:
    pairs = [f"{names[a]} ↔ {names[b]}" for a in range(len(names))
             for b in range(a + 1, len(names))]
    return ["| stars (S/N 50) | N | " + " | ".join(pairs)
            + " | global χ² > from-truth χ² + 1 | global |ΔTeff| > 10 % |",
            "|---|---:|" + "---:|" * (len(pairs) + 2)]


def accuracy_table(fits: dict, truth) -> list[str]:
    """Median bias / robust scatter of fit − truth per S/N and Teff bin."""
    lines = ["| S/N | Teff bin [K] | N | RV bias / scatter [km/s] | Teff bias / scatter [K] | "
             "log g bias / scatter | [Fe/H] bias / scatter | flagged |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for snr, fit in fits.items():
        for lo, hi in zip(TEFF_BINS[:-1], TEFF_BINS[1:]):
            sel = (truth.teff >= lo) & (truth.teff < hi)
            cells = []
            for name, _ in PARAMS:
                diff = fit[name][sel] - getattr(truth, name)[sel]
                digits = 0 if name == "teff" else (1 if name == "rv" else 3)
                cells.append(f"{np.median(diff):+.{digits}f} / {robust_scatter(diff):.{digits}f}")
            flagged = np.mean(fit["flags"][sel] != 0) if sel.any() else math.nan
            lines.append(f"| {snr} | {lo:.0f}–{hi:.0f} | {sel.sum()} | " + " | ".join(cells)
                         + f" | {100 * flagged:.0f} % |")
    return lines


def pulls(fit, truth) -> dict[str, np.ndarray]:
    """(fit − truth)/error per parameter over ``trustworthy`` fits."""
    ok = trustworthy(fit)
    return {name: (fit[name][ok] - getattr(truth, name)[ok]) / fit[f"{name}_err"][ok]
            for name, _ in PARAMS}


def calibration_table(fits: dict, truth) -> list[str]:
    """std (robust std) of the pulls per S/N; noise-free fits are left out."""
    lines = ["| S/N | N used | RV | Teff | log g | [Fe/H] |", "|---|---:|---:|---:|---:|---:|"]
    for snr, fit in fits.items():
        if snr == "inf":
            continue
        p = pulls(fit, truth)
        cells = [f"{np.std(v):.2f} ({robust_scatter(v):.2f})" for v in p.values()]
        lines.append(f"| {snr} | {len(p['teff'])} | " + " | ".join(cells) + " |")
    return lines


def clean_table(fits: dict, truth) -> list[str]:
    """Bias / scatter and pull std for spectra with and without cosmic rays and Clean."""
    lines = ["| spectra (S/N 50) | fit | RV bias / scatter | Teff bias / scatter | "
             "log g bias / scatter | [Fe/H] bias / scatter | Teff pull std | "
             "|ΔTeff| > 10 % | flagged |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (spectra, mode), fit in fits.items():
        cells = []
        for name, _ in PARAMS:
            diff = fit[name] - getattr(truth, name)
            digits = 0 if name == "teff" else (1 if name == "rv" else 3)
            cells.append(f"{np.median(diff):+.{digits}f} / {robust_scatter(diff):.{digits}f}")
        far = np.abs(fit["teff"] - truth.teff) / truth.teff > 0.1
        lines.append(f"| {spectra} | {mode} | " + " | ".join(cells)
                     + f" | {np.std(pulls(fit, truth)['teff']):.2f} | {100 * far.mean():.1f} % "
                     f"| {100 * np.mean(fit['flags'] != 0):.0f} % |")
    return lines


# ------------------------------------------------------------------------------ main

def parse_snr(text: str) -> float:
    return math.inf if text == "inf" else float(text)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="elodie", help='"elodie", "demo" or a TGM file')
    parser.add_argument("--n", type=int, default=200, help="stars per star set")
    parser.add_argument("--snr", nargs="+", default=["inf", "10", "20", "50", "100"])
    parser.add_argument("--method", choices=("lm", "adam"), default="lm")
    parser.add_argument("--cosmic", type=int, default=10, help="cosmic-ray hits per spectrum")
    parser.add_argument("--chunk", type=int, default=50, help="stars per compiled call")
    parser.add_argument("--sections", nargs="+",
                        default=["robustness", "accuracy", "calibration", "clean", "cost"])
    args = parser.parse_args()
    fm = forward_model(args.model)
    fixed, multistart = fitters(fm, args.method)
    timers = {"fixed": Timer(), "global": Timer(), "grid": Timer(), "clean": Timer()}
    print(f"# validation: model {args.model}, method {args.method}, N = {args.n} per set, "
          f"device {jax.devices()[0].device_kind}, {fm.grid.n} pixels, float64")
    began = time.perf_counter()

    def fit_set(truth, snr, seed, **kw):
        """Mocks of ``truth`` and their fits from the fixed starts, the truth and globally."""
        mocks = simulate(fm, truth, snr=snr, seed=seed, **kw)
        fits = {}
        for name, start in STARTS.items():
            fits[name] = fit_in_chunks(fixed, mocks, args.chunk, timers["fixed"],
                                       start_points(start, len(truth.teff)))
        fits["truth"] = fit_in_chunks(fixed, mocks, args.chunk, timers["fixed"], truth.theta())
        fits["global"] = fit_in_chunks(multistart, mocks, args.chunk, timers["global"])
        return mocks, fits

    hot = draw_parameters(args.n, SEEDS["hot"], teff=(8000.0, 20000.0))
    everyone = draw_parameters(args.n, SEEDS["all"])
    tables = {}
    if "robustness" in args.sections or "cost" in args.sections:
        _, hot_fits = fit_set(hot, 50.0, SEEDS["snr"])
        mocks50, all_fits = fit_set(everyone, 50.0, SEEDS["snr"])
        names = list(hot_fits)
        tables["robustness"] = (robustness_header(names)
                                + robustness_rows("Teff 8000–20000 K", hot_fits, hot, fm.grid.n)
                                + robustness_rows("Teff 3100–20000 K", all_fits, everyone,
                                                  fm.grid.n))
    snr_fits = {}
    if {"accuracy", "calibration", "clean"} & set(args.sections):
        for text in args.snr:
            snr = parse_snr(text)
            if snr == 50.0 and "robustness" in tables:
                snr_fits[text] = all_fits["global"]
                continue
            mocks = simulate(fm, everyone, snr=snr, seed=SEEDS["snr"])
            snr_fits[text] = fit_in_chunks(multistart, mocks, args.chunk, timers["global"])
        tables["accuracy"] = accuracy_table(snr_fits, everyone)
        tables["calibration"] = calibration_table(snr_fits, everyone)
    if "clean" in args.sections:
        plain = snr_fits.get("50") or fit_in_chunks(
            multistart, simulate(fm, everyone, snr=50.0, seed=SEEDS["snr"]), args.chunk,
            timers["global"])
        hit = simulate(fm, everyone, snr=50.0, seed=SEEDS["snr"], cosmic_rays=args.cosmic)
        with_clean = lambda f, w, t: multistart(f, w, t, clean=True)  # noqa: E731
        tables["clean"] = clean_table({
            ("no cosmic rays", "no Clean"): plain,
            (f"{args.cosmic} cosmic rays", "no Clean"): fit_in_chunks(
                multistart, hit, args.chunk, timers["global"]),
            (f"{args.cosmic} cosmic rays", "Clean"): fit_in_chunks(
                with_clean, hit, args.chunk, timers["clean"]),
        }, everyone)
    if "cost" in args.sections:
        grid_fn = lambda: global_start(fm, mocks50.flux[:args.chunk],  # noqa: E731
                                       mocks50.weights[:args.chunk])
        for _ in range(3):
            timers["grid"](grid_fn, min(args.chunk, args.n))
        tables["cost"] = ["| step | ms per spectrum |", "|---|---:|"] + [
            f"| {label} | {timers[key].ms_per_spectrum():.1f} |" for key, label in (
                ("grid", "global start: grid scoring (144 nodes)"),
                ("fixed", f"{args.method} from one fixed start"),
                ("global", f"{args.method} with the global start (grid + 3 candidates)"),
                ("clean", f"{args.method} with the global start + Clean"))]
    for name in args.sections:
        if name in tables:
            print(f"\n## {name}\n")
            print("\n".join(tables[name]))
    print(f"\n# total wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
