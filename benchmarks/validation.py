"""Scientific validation on mock spectra (issue 7): start robustness, accuracy, errors, Clean.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/validation.py [--model elodie|demo|PATH]
       [--method lm|adam] [--n 1000] [--n-snr N] [--snr inf 10 20 50 100] [--cosmic 10]
       [--chunk C] [--sections robustness accuracy calibration basins agreement clean cost
       repeats] [--repeat-stars I ...] [--repeat-k 500] [--errors profile|laplace]
       [--save FILE.npz]

Mock stars (``jaxlasp.mock``, seeds fixed) are fitted with the chosen optimiser (the library's
``jaxlasp.fit.start.fit_one_method`` from a given start, ``fit_multistart`` for the global start:
the paths behind ``jaxlasp.api.fit_arrays``) and the tables are printed as Markdown. Weights are
the mocks' ivar (noise known); noise-free spectra are fitted with weights 1.

Star sets. "hot": ``--n`` stars with Teff 8000–20000 K; "all": ``--n`` stars over the whole default
range (Teff 3100–20000 K, log g 0–5, [Fe/H] −2.5…+0.5, RV ±300 km/s, σ 40–120 km/s). The S/N
sections use the first ``--n-snr`` (default ``--n``) stars of "all". Draws fill rows in order, so
the first k stars (and their noise) are the same for every N: runs with different N are nested,
and an Adam run fits the same spectra as the first stars of an LM run.

Reference minimum. Each noisy spectrum is also fitted by LM from its true parameters: the minimum
of the basin that holds the truth ("truth-start LM"), whichever method is validated. (Adam is no
reference: started at the truth, it stops by its stall rule — 50 steps without a lower loss —
after its first, overshooting steps and reports the start itself, see the README.)

Sections:

* robustness: both sets at S/N 50, fitted from (5000 K, 3, −0.5), from (7500 K, 3, −0.5), with
  the global start (and, for Adam, by Adam from the truth); the fraction of stars whose Teff
  differs by > 100 K between two fits, with a 95 % Clopper–Pearson upper bound for the global
  start against the reference minimum. The issue's criterion (< 1 %) is checked on that pair:
  the default's independence of the start.
* accuracy: median bias and robust scatter (1.4826·MAD) of fit − truth for RV, Teff, log g and
  [Fe/H] in bins of true Teff, per S/N (``inf``: noise-free), global start; and the noise-free
  RMS / robust scatter below and above 7000 K (the blase3D paper's footing).
* calibration: standard deviation of the pulls (fit − truth)/error per S/N (± its bootstrap
  standard error), over fits without failure or bound flags, next to the robust width
  1.4826·MAD; the issue's criterion is the standard deviation in [0.9, 1.1], and the table says
  where it is not met.
* basins: why pulls are wide. The global-start fit and the reference minimum are "in different
  basins" when Teff, log g or [Fe/H] differ by more than 0.5 of their errors; counted per S/N,
  split by which has the lower χ² (global lower: the likelihood's best minimum is away from the
  truth, no start can help; global higher: the global start missed the truth's basin). Pull
  widths of all stars and of the same-basin stars, with the reported covariance
  (JᵀJ)⁻¹·χ²/(M − 5) and with the known-noise one (JᵀJ)⁻¹; log g pull widths per Teff bin.
* agreement (Adam only): |Adam − LM|/error for the same spectra fitted by both with the global
  start (median, 90th percentile, fraction > 0.5 error).
* clean: the S/N 50 stars with ``--cosmic`` cosmic-ray hits each, fitted with and without Clean,
  against the same spectra without cosmic rays fitted without Clean (same noise); ratio of the
  robust scatters with Clean to those of the clean spectra.
* repeats (not run by default): ``--repeat-k`` noise draws at S/N 10 of each of
  ``--repeat-stars`` (rows of the "all" set), fitted by LM from the truth and with the global
  start: does the reported log g error describe one star's scatter, and how do its pulls depend
  on the error each draw reports?
* cost: wall time per spectrum of each kind of fit (chunks after the first, compiling, one of each
  kind), and the wall time of each section.

Each kind of fit runs over its stars in chunks of ``--chunk`` spectra (default 250 for LM, 50 for
Adam; the last chunk is padded), so compiled shapes are reused. Fits are cached within a run: a
section reuses what another section already fitted (the "all" S/N 50 set is the robustness set).
``--save`` writes every fit's result columns and the truths to an .npz file. Progress (each
kind of fit as it finishes, with its wall time) goes to stderr.
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import jax
import numpy as np

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.fit.driver import AT_BOUND, FAILURES
from jaxlasp.fit.start import fit_multistart, fit_one_method, global_start
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.groups.columns import result_columns
from jaxlasp.groups.inputs import start_points
from jaxlasp.mock import MockTruth, draw_parameters, simulate
from jaxlasp.model import build_forward_model

ELODIE = (Path(__file__).resolve().parents[1].parent
          / "shared/data/lamost-dr10-sample/elodie32_flux_tgm_4199-5700.fits")
STARTS = {"5000 K": (5000.0, 3.0, -0.5), "7500 K": (7500.0, 3.0, -0.5)}
"""The fixed starts of the robustness table (Teff, log g, [Fe/H])."""
TEFF_BINS = (3100.0, 4500.0, 7000.0, 10000.0, 20000.0)
"""Bins of true Teff [K] of the accuracy table (7000 K: the blase3D paper's split)."""
PULL_TEFF_BINS = (3100.0, 4000.0, 4550.0, 7000.0, 9000.0, 12000.0, 20000.0)
"""Bins of true Teff [K] of the pull diagnostics: the ELODIE emulator's regimes are blended over
4000–4550 K and 7000–9000 K."""
BLASE_SPLIT = 7000.0
"""Teff [K] splitting the blase3D paper's noise-free figures."""
MOVE_K = 100.0
"""Teff difference [K] counted as "moved" between two starts."""
ROBUSTNESS_LIMIT = 0.01
"""The issue's criterion: fewer than 1 % of the stars move between starts."""
PULL_RANGE = (0.9, 1.1)
"""The issue's criterion on the standard deviation of the pulls."""
SAME_BASIN = 0.5
"""Two fits of one spectrum are in the same basin when Teff, log g and [Fe/H] differ by less than
this many errors (LM converges to ~1e-10 error; Adam with the global start ends within ~0.005
error of LM's minimum, median, but can stop short of a narrow one)."""
PARAMS = (("rv", "RV"), ("teff", "Teff"), ("logg", "log g"), ("feh", "[Fe/H]"))
STELLAR = ("teff", "logg", "feh")
SEEDS = {"hot": 101, "all": 102, "snr": 103}
"""Seeds of the star draws (hot robustness set, all-Teff set) and of the noise."""
REPEAT_STARS = (31, 230, 931, 64, 445, 61)
"""Stars of the "all" set whose noise is redrawn by the repeats section: a 5400 K dwarf, whose
S/N 10 pulls are Gaussian, and five 7800–18000 K stars with large log g pulls at S/N 10."""
REPEAT_SEED = 1000
"""The noise of star i's repeats is drawn with seed REPEAT_SEED + i."""


def code_state() -> str:
    """``git describe --always --dirty`` of the repository and its modified library files."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--name-only", "HEAD", "--", "jaxlasp"], cwd=root,
                               text=True, capture_output=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return rev + (f" (modified: {', '.join(dirty)})" if dirty else "")


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


# ------------------------------------------------------------------------------ statistics

def robust_scatter(x) -> float:
    """1.4826 × median absolute deviation from the median (NaN for no values)."""
    x = np.asarray(x)
    return 1.4826 * float(np.median(np.abs(x - np.median(x)))) if x.size else math.nan


def rms(x) -> float:
    """Root mean square (NaN for no values)."""
    x = np.asarray(x)
    return float(np.sqrt(np.mean(x * x))) if x.size else math.nan


def upper_bound(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper–Pearson upper bound on a fraction with k successes of n trials."""
    if k >= n:
        return 1.0
    from scipy.stats import beta

    return float(beta.ppf(level, k + 1, n - k))


def std_error(x, resamples: int = 400, seed: int = 0) -> float:
    """Bootstrap standard error of the standard deviation of ``x`` (heavy tails included)."""
    x = np.asarray(x)
    if x.size < 2:
        return math.nan
    rows = np.random.default_rng(seed).integers(0, x.size, (resamples, x.size))
    return float(np.std(np.std(x[rows], axis=1)))


def trustworthy(fit) -> np.ndarray:
    """Fits without failure flags and not on a bound of the parameter box."""
    return (fit["flags"] & (FAILURES | AT_BOUND)) == 0


def pulls(fit, truth, scale=None) -> dict[str, np.ndarray]:
    """(fit − truth)/(error·scale) per parameter over ``trustworthy`` fits (scale: (n,) or None)."""
    ok = trustworthy(fit)
    scale = np.ones(len(fit["flags"])) if scale is None else np.asarray(scale)
    return {name: (fit[name][ok] - getattr(truth, name)[ok]) / (fit[f"{name}_err"][ok]
                                                                  * scale[ok])
            for name, _ in PARAMS}


def known_noise_scale(fit) -> np.ndarray:
    """Factor turning the reported errors (covariance (JᵀJ)⁻¹·χ²/(M − 5)) into those of the
    known-noise covariance (JᵀJ)⁻¹: √((M − 5)/χ²), χ² = M·loss² (M used pixels)."""
    used = fit["n_used"]
    return np.sqrt((used - 5) / (used * fit["loss"] ** 2))


def in_range(width: float, bounds=PULL_RANGE) -> bool:
    return bounds[0] <= width <= bounds[1]


def mark(width: float) -> str:
    """A pull width with ✗ appended when it lies outside ``PULL_RANGE``."""
    return f"{width:.2f}" + ("" if in_range(width) else " ✗")


def same_basin(a, b) -> np.ndarray:
    """Two fits of the same spectra in the same basin: Teff, log g, [Fe/H] within ``SAME_BASIN``
    of the larger error of the two."""
    close = np.ones(len(a["teff"]), bool)
    for name in STELLAR:
        err = np.maximum(a[f"{name}_err"], b[f"{name}_err"])
        close &= np.abs(a[name] - b[name]) <= SAME_BASIN * err
    return close


def chi2(fit) -> np.ndarray:
    """χ² = M·loss² of each fit (M: used pixels)."""
    return fit["n_used"] * fit["loss"] ** 2


def bias_scatter(diff, name: str) -> str:
    digits = 0 if name == "teff" else (1 if name == "rv" else 3)
    if not np.size(diff):
        return "–"
    return f"{np.median(diff):+.{digits}f} / {robust_scatter(diff):.{digits}f}"


# ------------------------------------------------------------------------------ fitting

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


class Runner:
    """Mock spectra and their fits, made on first use and cached.

    A fit is named by (star set, S/N text, cosmic-ray hits, mode). Modes: a key of ``STARTS``
    (``method`` from that start), "from truth" (``method`` from the true parameters), "reference"
    (LM from the true parameters: the minimum of the basin that holds the truth, for either
    method), "global" (``method`` with the global start), "global (lm)" (LM with the global start,
    to compare Adam with) and "global+Clean". Each fit's columns are ``api.result_columns`` plus
    ``n_used`` (pixels with weight > 0).
    """

    def __init__(self, fm, method: str, n: int, n_snr: int, chunks: dict[str, int],
                 errors: str = "profile"):
        self.fm, self.method, self.chunks, self.errors = fm, method, chunks, errors
        self.truths = {"hot": draw_parameters(n, SEEDS["hot"], teff=(8000.0, 20000.0)),
                       "all": draw_parameters(n, SEEDS["all"])}
        self.sizes = {"hot": n, "all": n, "snr": n_snr}
        self.mocks, self.fits = {}, {}
        self.timers = {kind: Timer() for kind in ("fixed", "global", "clean", "grid", "lm")}

    def truth(self, star_set: str) -> MockTruth:
        base = self.truths["all" if star_set == "snr" else star_set]
        return MockTruth(*(v[:self.sizes[star_set]] for v in base))

    def mock(self, star_set: str, snr: str, cosmic: int = 0):
        key = (star_set, snr, cosmic)
        if key not in self.mocks:
            value = math.inf if snr == "inf" else float(snr)
            self.mocks[key] = simulate(self.fm, self.truth(star_set), snr=value,
                                       seed=SEEDS["snr"], cosmic_rays=cosmic)
        return self.mocks[key]

    def fit(self, star_set: str, snr: str, mode: str, cosmic: int = 0) -> dict[str, np.ndarray]:
        """Result columns of one kind of fit of one mock set (cached). The "snr" set is the first
        ``n_snr`` stars of "all": its fits are cut from those of "all" when they exist."""
        if mode == "from truth" and self.method == "lm":
            mode = "reference"
        if mode == "global (lm)" and self.method == "lm":
            mode = "global"
        key = (star_set, snr, cosmic, mode)
        if key in self.fits:
            return self.fits[key]
        if star_set == "snr" and ("all", snr, cosmic, mode) in self.fits:
            whole = self.fits[("all", snr, cosmic, mode)]
            self.fits[key] = {k: v[:self.sizes["snr"]] for k, v in whole.items()}
            return self.fits[key]
        mocks = self.mock(star_set, snr, cosmic)
        truth = self.truth(star_set)
        if mode in STARTS:
            theta0 = start_points(STARTS[mode], len(truth.teff))
        else:
            theta0 = truth.theta() if mode in ("from truth", "reference") else None
        method = "lm" if mode in ("reference", "global (lm)") else self.method
        clean = mode == "global+Clean"
        timer = self.timers["lm" if method != self.method else "clean" if clean
                            else "global" if theta0 is None else "fixed"]
        began = time.perf_counter()
        self.fits[key] = self.in_chunks(mocks, theta0, method, clean, timer)
        print(f"# fitted {star_set} S/N {snr}{f' + {cosmic} cosmic rays' if cosmic else ''}, "
              f"{mode} ({method}): {len(truth.teff)} spectra in "
              f"{time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
        return self.fits[key]

    def in_chunks(self, mocks, theta0, method: str, clean: bool,
                  timer: Timer) -> dict[str, np.ndarray]:
        """Fit ``mocks`` with ``method`` from θ₀ (n, 5), or with the global start when θ₀ is
        None, chunk by chunk (the last chunk padded by repeating the last spectrum)."""
        n, chunk = len(mocks.flux), self.chunks[method]
        parts = []
        for i in range(0, n, chunk):
            rows = np.minimum(np.arange(i, i + chunk), n - 1)
            flux, weights = mocks.flux[rows], mocks.weights[rows]
            if theta0 is None:
                fn = lambda: fit_multistart(self.fm, flux, weights,  # noqa: E731
                                            method=method, clean=clean, errors=self.errors)
            else:
                fn = lambda: fit_one_method(self.fm, theta0[rows], flux, weights,  # noqa: E731
                                            method=method, clean=clean, max_iter=None)
            columns = result_columns(timer(fn, min(chunk, n - i)), mocks.grid)
            columns["n_used"] = np.sum(weights > 0, axis=1)
            parts.append({k: v[:min(chunk, n - i)] for k, v in columns.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def time_grid(self, repeats: int = 3):
        """Time the global start's grid scoring alone on the first chunk of the S/N 50 set."""
        mocks = self.mock("all", "50")
        chunk = self.chunks[self.method]
        flux, weights = mocks.flux[:chunk], mocks.weights[:chunk]
        for _ in range(repeats):
            self.timers["grid"](lambda: global_start(self.fm, flux, weights), len(flux))

    def load(self, path: str) -> int:
        """Fill the cache with the fits of a ``save`` file (same --n and model; a smaller
        --n-snr takes the first stars of its S/N sets); returns how many kinds of fit were
        loaded. Raises SystemExit when its truths differ."""
        with np.load(path) as data:
            for name, truth in self.truths.items():
                for field, value in truth._asdict().items():
                    saved = data.get(f"truth/{name}/{field}")
                    if saved is None or saved.shape != value.shape or not np.allclose(saved,
                                                                                      value):
                        raise SystemExit(f"{path} holds other stars than --n {len(value)}")
            fits = {}
            for key in data.files:
                if key.startswith("fit/"):
                    _, star_set, snr, cosmic, mode, column = key.split("/")
                    fits.setdefault((star_set, snr, int(cosmic), mode), {})[column] = data[key]
        for (star_set, *_), columns in fits.items():
            if star_set in self.sizes:  # a run with a smaller --n-snr uses the first stars
                for name, value in columns.items():
                    columns[name] = value[:self.sizes[star_set]]
        self.fits.update(fits)
        return len(fits)

    def save(self, path: str) -> None:
        arrays = {f"truth/{name}/{field}": value for name in self.truths
                  for field, value in self.truths[name]._asdict().items()}
        for (star_set, snr, cosmic, mode), columns in self.fits.items():
            for column, value in columns.items():
                arrays[f"fit/{star_set}/{snr}/{cosmic}/{mode}/{column}"] = value
        np.savez_compressed(path, **arrays)


# ------------------------------------------------------------------------------ tables

def robustness_pairs(method: str) -> list[tuple[str, str]]:
    """Pairs of fits compared in the robustness table (the last: the criterion's)."""
    pairs = [("5000 K", "7500 K"), ("5000 K", "reference"), ("7500 K", "reference")]
    if method != "lm":
        pairs.append(("from truth", "reference"))
    return pairs + [("global", "reference")]


def robustness_header(method: str) -> list[str]:
    names = {"reference": "truth-start LM", "from truth": f"{method} from truth"}
    cells = [f"{names.get(a, a)} ↔ {names.get(b, b)}" for a, b in robustness_pairs(method)]
    cells[-1] = "global ↔ truth-start LM (95 % upper bound)"
    return ["| stars (S/N 50) | N | " + " | ".join(cells) + " | global χ² > truth-start LM χ² + 1 "
            "| global \\|ΔTeff\\| > 10 % of truth | criterion: global ↔ truth-start LM < 1 % |",
            "|---|---:|" + "---:|" * (len(cells) + 2) + "---|"]


def robustness_row(label: str, fits: dict[str, dict], truth, method: str = "lm") -> str:
    """Fractions of stars whose Teff moves by > MOVE_K between the pairs of fits of
    ``robustness_pairs`` ("reference": LM from the truth); the global start's χ² excess over the
    reference and its |ΔTeff| > 10 % fraction; the verdict on the last pair."""
    n = len(truth.teff)

    def moved(a, b):
        return np.abs(fits[a]["teff"] - fits[b]["teff"]) > MOVE_K

    pairs = robustness_pairs(method)
    cells = [f"{100 * moved(a, b).mean():.1f} %" for a, b in pairs[:-1]]
    k = int(moved(*pairs[-1]).sum())
    bound = upper_bound(k, n)
    cells.append(f"{100 * k / n:.1f} % ({k} of {n}; ≤ {100 * bound:.1f} %)")
    worse = chi2(fits["global"]) - chi2(fits["reference"]) > 1
    far = np.abs(fits["global"]["teff"] - truth.teff) / truth.teff > 0.1
    verdict = ("met" if k / n < ROBUSTNESS_LIMIT and bound < ROBUSTNESS_LIMIT
               else "met (N too small for the bound to be < 1 %)" if k / n < ROBUSTNESS_LIMIT
               else "**NOT met**")
    return (f"| {label} | {n} | " + " | ".join(cells)
            + f" | {100 * worse.mean():.1f} % | {100 * far.mean():.1f} % | {verdict} |")


def agreement_table(pairs: dict) -> list[str]:
    """|method − LM|/error for the same spectra fitted with the global start by both (fits
    without failure or bound flags in both): median and 90th percentile per parameter, and the
    fraction of stars where any parameter differs by more than ``SAME_BASIN`` errors."""
    lines = ["| stars | S/N | N | RV median / q90 | Teff | log g | [Fe/H] | any > 0.5 error |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for (label, snr), (fit, lm_fit) in pairs.items():
        ok = trustworthy(fit) & trustworthy(lm_fit)
        cells, apart = [], np.zeros(int(ok.sum()), bool)
        for name, _ in PARAMS:
            d = np.abs(fit[name][ok] - lm_fit[name][ok]) / lm_fit[f"{name}_err"][ok]
            apart |= ~(d <= SAME_BASIN)
            cells.append(f"{np.median(d):.3f} / {np.quantile(d, 0.9):.3f}")
        lines.append(f"| {label} | {snr} | {len(apart)} | " + " | ".join(cells)
                     + f" | {100 * apart.mean():.1f} % |")
    return lines


def accuracy_table(fits: dict, truth) -> list[str]:
    """Median bias / robust scatter of fit − truth per S/N and Teff bin."""
    lines = ["| S/N | Teff bin [K] | N | RV bias / scatter [km/s] | Teff bias / scatter [K] | "
             "log g bias / scatter | [Fe/H] bias / scatter | flagged |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for snr, fit in fits.items():
        for lo, hi in itertools.pairwise(TEFF_BINS):
            sel = (truth.teff >= lo) & (truth.teff < hi)
            cells = [bias_scatter(fit[name][sel] - getattr(truth, name)[sel], name)
                     for name, _ in PARAMS]
            flagged = np.mean(fit["flags"][sel] != 0) if sel.any() else math.nan
            lines.append(f"| {snr} | {lo:.0f}–{hi:.0f} | {sel.sum()} | " + " | ".join(cells)
                         + f" | {100 * flagged:.0f} % |")
    return lines


def blase_table(fit, truth) -> list[str]:
    """Noise-free RMS and robust scatter of fit − truth below and above ``BLASE_SPLIT``."""
    lines = ["| noise-free, Teff | N | Teff RMS / robust [K] | log g RMS / robust | "
             "[Fe/H] RMS / robust |", "|---|---:|---:|---:|---:|"]
    for label, sel in ((f"< {BLASE_SPLIT:.0f} K", truth.teff < BLASE_SPLIT),
                       (f"≥ {BLASE_SPLIT:.0f} K", truth.teff >= BLASE_SPLIT)):
        cells = []
        for name in STELLAR:
            diff = fit[name][sel] - getattr(truth, name)[sel]
            digits = 1 if name == "teff" else 4
            cells.append(f"{rms(diff):.{digits}f} / {robust_scatter(diff):.{digits}f}")
        lines.append(f"| {label} | {sel.sum()} | " + " | ".join(cells) + " |")
    return lines


def calibration_table(fits: dict, truth) -> list[str]:
    """Standard deviation / robust width of the pulls per S/N (noise-free fits left out), the
    fraction of |pull| > 5 and the verdict on the issue's criterion."""
    lines = ["| S/N | N used | RV std ± SE / robust | Teff | log g | [Fe/H] | "
             "\\|pull\\| > 5 (any) | criterion: std in [0.9, 1.1] |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for snr, fit in fits.items():
        if snr == "inf":
            continue
        p = pulls(fit, truth)
        cells = [f"{mark(np.std(v))} ± {std_error(v):.2f} / {robust_scatter(v):.2f}"
                 for v in p.values()]
        wide = np.any(np.abs(np.stack(list(p.values()))) > 5, axis=0).mean()
        failing = [label for (name, label), v in zip(PARAMS, p.values())
                   if not in_range(np.std(v))]
        verdict = "met" if not failing else "**NOT met**: " + ", ".join(failing)
        lines.append(f"| {snr} | {len(p['teff'])} | " + " | ".join(cells)
                     + f" | {100 * wide:.1f} % | {verdict} |")
    return lines


def basin_table(fits: dict, truth) -> list[str]:
    """Per noisy S/N: global-start fits in a different basin from the truth-start fit (split by
    which has the lower χ²) and the pull std of all stars / same-basin stars / known-noise
    covariance, for Teff, log g and [Fe/H]."""
    lines = ["| S/N | N | different basin: global χ² lower | global χ² higher | "
             "Teff pull std: all → same basin (robust) | log g | [Fe/H] | "
             "log g, known-noise (JᵀJ)⁻¹: all → same basin |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for snr, (glob, from_truth) in fits.items():
        if snr == "inf":
            continue
        both = trustworthy(glob) & trustworthy(from_truth)
        other = both & ~same_basin(glob, from_truth)
        lower = int(np.sum(other & (chi2(glob) < chi2(from_truth))))
        higher = int(np.sum(other)) - lower
        n = int(both.sum())
        same = {k: v[~other] for k, v in glob.items()}
        p_all, p_same = pulls(glob, truth), pulls(same, MockTruth(*(v[~other] for v in truth)))
        cells = [f"{np.std(p_all[name]):.2f} → {np.std(p_same[name]):.2f} "
                 f"({robust_scatter(p_same[name]):.2f})" for name in STELLAR]
        k_all = pulls(glob, truth, known_noise_scale(glob))["logg"]
        k_same = pulls(same, MockTruth(*(v[~other] for v in truth)),
                       known_noise_scale(same))["logg"]
        lines.append(f"| {snr} | {n} | {lower} ({100 * lower / n:.1f} %) | "
                     f"{higher} ({100 * higher / n:.1f} %) | " + " | ".join(cells)
                     + f" | {np.std(k_all):.2f} → {np.std(k_same):.2f} |")
    return lines


def pulls_by_teff_table(fits: dict, truth, name: str = "logg") -> list[str]:
    """std (robust width) of one parameter's pulls per S/N and bin of true Teff."""
    bins = list(itertools.pairwise(PULL_TEFF_BINS))
    lines = ["| S/N | " + " | ".join(f"{lo:.0f}–{hi:.0f} K" for lo, hi in bins) + " |",
             "|---|" + "---:|" * len(bins)]
    for snr, fit in fits.items():
        if snr == "inf":
            continue
        ok = trustworthy(fit)
        pull = (fit[name] - getattr(truth, name)) / fit[f"{name}_err"]
        cells = []
        for lo, hi in bins:
            v = pull[ok & (truth.teff >= lo) & (truth.teff < hi)]
            cells.append(f"{np.std(v):.2f} ({robust_scatter(v):.2f}), {v.size}" if v.size
                         else "–")
        lines.append(f"| {snr} | " + " | ".join(cells) + " |")
    return lines


def clean_table(fits: dict, truth) -> list[str]:
    """Bias / scatter and pull std for spectra with and without cosmic rays and Clean, and the
    ratio of the robust scatters of the Clean fits to those of the clean spectra."""
    lines = ["| spectra (S/N 50) | fit | RV bias / scatter | Teff bias / scatter | "
             "log g bias / scatter | [Fe/H] bias / scatter | Teff pull std | "
             "\\|ΔTeff\\| > 10 % | flagged |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (spectra, mode), fit in fits.items():
        cells = [bias_scatter(fit[name] - getattr(truth, name), name) for name, _ in PARAMS]
        far = np.abs(fit["teff"] - truth.teff) / truth.teff > 0.1
        lines.append(f"| {spectra} | {mode} | " + " | ".join(cells)
                     + f" | {np.std(pulls(fit, truth)['teff']):.2f} | {100 * far.mean():.1f} % "
                     f"| {100 * np.mean(fit['flags'] != 0):.0f} % |")
    (reference, _, cleaned) = fits.values()
    ratios = [robust_scatter(cleaned[name] - getattr(truth, name))
              / robust_scatter(reference[name] - getattr(truth, name)) for name, _ in PARAMS]
    lines.append("")
    lines.append("Robust scatter with cosmic rays + Clean ÷ without cosmic rays, no Clean: "
                 + ", ".join(f"{label} {r:.2f}" for (_, label), r in zip(PARAMS, ratios)))
    return lines


def repeats_table(runs: dict, truth) -> list[str]:
    """Per star: K noise realisations fitted from the truth by LM (the basin's own minimum) and
    with the global start; log g scatter against the reported error, pull widths, and how the
    pulls depend on the reported error (realisations whose error came out < 0.8 × its median)."""
    lines = ["| star: Teff, log g, [Fe/H] | fit | N | log g std / robust | median error | "
             "error q10–q90 ÷ median | pull std / robust | pull std, error < 0.8 median (N) / "
             "≥ | skewness / excess kurtosis of log g |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for i, fits in runs.items():
        label = f"{i}: {truth.teff[i]:.0f} K, {truth.logg[i]:.2f}, {truth.feh[i]:+.2f}"
        for mode, fit in fits.items():
            ok = trustworthy(fit)
            x, err = fit["logg"][ok], fit["logg_err"][ok]
            pull = (x - truth.logg[i]) / err
            ratio = err / np.median(err)
            small = ratio < 0.8
            z = (x - x.mean()) / x.std()
            lines.append(
                f"| {label} | {mode} | {ok.sum()} | {np.std(x):.3f} / {robust_scatter(x):.3f} | "
                f"{np.median(err):.3f} | "
                f"{np.quantile(ratio, 0.1):.2f}–{np.quantile(ratio, 0.9):.2f} "
                f"| {np.std(pull):.2f} / {robust_scatter(pull):.2f} | "
                f"{np.std(pull[small]) if small.sum() > 1 else math.nan:.2f} ({small.sum()}) / "
                f"{np.std(pull[~small]):.2f} | "
                f"{np.mean(z ** 3):+.2f} / {np.mean(z ** 4) - 3:+.2f} |")
    return lines


def repeat_fits(run: Runner, stars, k: int, snr: float) -> dict:
    """For each star index of the "all" set: ``k`` mocks with fresh noise (seed REPEAT_SEED + i),
    fitted from the truth by LM and with ``run.method``'s global start."""
    out = {}
    for i in stars:
        one = MockTruth(*(np.repeat(v[i:i + 1], k) for v in run.truths["all"]))
        out[i] = {}
        for mode, theta0, method in (("truth-start LM", one.theta(), "lm"),
                                     (f"global {run.method}", None, run.method)):
            key = ("repeat", f"{i}-{k}-{snr:g}", 0, mode)
            if key not in run.fits:
                mocks = simulate(run.fm, one, snr=snr, seed=REPEAT_SEED + i)
                run.fits[key] = run.in_chunks(mocks, theta0, method, False, Timer())
                print(f"# fitted repeats of star {i}, {mode}", file=sys.stderr, flush=True)
            out[i][mode] = run.fits[key]
    return out


# ------------------------------------------------------------------------------ main

def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="elodie", help='"elodie", "demo" or a TGM file')
    parser.add_argument("--method", choices=("lm", "adam"), default="lm")
    parser.add_argument("--n", type=int, default=1000, help="stars per robustness set")
    parser.add_argument("--n-snr", type=int, default=None,
                        help="stars of the S/N sections (accuracy, calibration, basins, clean); "
                             "default --n")
    parser.add_argument("--snr", nargs="+", default=["inf", "10", "20", "50", "100"])
    parser.add_argument("--cosmic", type=int, default=10, help="cosmic-ray hits per spectrum")
    parser.add_argument("--chunk", type=int, default=None,
                        help="spectra per compiled call (default 250 for lm, 50 for adam)")
    parser.add_argument("--sections", nargs="+",
                        default=["robustness", "accuracy", "calibration", "basins", "agreement",
                                 "clean", "cost"],
                        help="also: repeats (K noise draws of a few stars at S/N 10)")
    parser.add_argument("--repeat-stars", type=int, nargs="+", default=list(REPEAT_STARS))
    parser.add_argument("--repeat-k", type=int, default=500, help="noise draws per star")
    parser.add_argument("--errors", choices=("profile", "laplace"), default="profile",
                        help="error model of the global-start fits (jaxlasp.fit.errors); fits "
                             "from a given start keep the Laplace errors")
    parser.add_argument("--save", default=None, help="write all fits and truths to this .npz")
    parser.add_argument("--load", default=None,
                        help="reuse the fits of a --save file (same --method, --n, --n-snr); "
                             "only what it lacks is fitted")
    args = parser.parse_args(argv)
    n_snr = min(args.n_snr or args.n, args.n)
    chunks = {method: min(args.chunk or default, args.n)
              for method, default in (("lm", 250), ("adam", 50))}
    fm = forward_model(args.model)
    run = Runner(fm, args.method, args.n, n_snr, chunks, args.errors)
    print(f"# validation: model {args.model}, method {args.method}, N = {args.n} per robustness "
          f"set, {n_snr} per S/N set, chunks of {chunks[args.method]}, device "
          f"{jax.devices()[0].device_kind}, {fm.grid.n} pixels, float64, weights = ivar, "
          f"global-start errors {args.errors}")
    print(f"# code: {code_state()}; started {time.strftime('%Y-%m-%d %H:%M')}")
    if args.load:
        print(f"# loaded {run.load(args.load)} kinds of fit from {args.load} (their times are "
              "not in the cost table)")
    began = time.perf_counter()
    tables, seconds = {}, {}

    def section(name):
        return name in args.sections

    t0 = time.perf_counter()
    sets = (("hot", "Teff 8000–20000 K"), ("all", "Teff 3100–20000 K"))
    if section("robustness"):
        rows = []
        for star_set, label in sets:
            modes = {m for pair in robustness_pairs(args.method) for m in pair}
            fits = {mode: run.fit(star_set, "50", mode) for mode in sorted(modes)}
            rows.append(robustness_row(label, fits, run.truth(star_set), args.method))
        tables["robustness"] = robustness_header(args.method) + rows
        seconds["robustness"] = time.perf_counter() - t0

    truth = run.truth("snr")
    if section("accuracy") or section("calibration"):
        t0 = time.perf_counter()
        fits = {snr: run.fit("snr", snr, "global") for snr in args.snr}
        if section("accuracy"):
            tables["accuracy"] = accuracy_table(fits, truth)
            if "inf" in fits:
                tables["accuracy"] += ["", "Noise-free (the blase3D paper's footing):", ""]
                tables["accuracy"] += blase_table(fits["inf"], truth)
        if section("calibration"):
            tables["calibration"] = calibration_table(fits, truth)
        seconds["accuracy + calibration"] = time.perf_counter() - t0
    if section("basins"):
        t0 = time.perf_counter()
        noisy = [snr for snr in args.snr if snr != "inf"]
        fits = {snr: (run.fit("snr", snr, "global"), run.fit("snr", snr, "reference"))
                for snr in noisy}
        tables["basins"] = (basin_table(fits, truth)
                            + ["", "log g pulls per true Teff bin, global start: std (robust), "
                               "N", ""]
                            + pulls_by_teff_table({s: f[0] for s, f in fits.items()}, truth))
        seconds["basins"] = time.perf_counter() - t0
    if section("agreement") and args.method != "lm":
        t0 = time.perf_counter()
        pairs = {}
        if section("robustness"):
            for star_set, label in sets:
                pairs[(label, "50")] = (run.fit(star_set, "50", "global"),
                                        run.fit(star_set, "50", "global (lm)"))
        for snr in args.snr:
            if snr != "inf" and (snr != "50" or not section("robustness")):
                pairs[("Teff 3100–20000 K", snr)] = (run.fit("snr", snr, "global"),
                                                     run.fit("snr", snr, "global (lm)"))
        tables["agreement"] = agreement_table(pairs)
        seconds["agreement"] = time.perf_counter() - t0
    if section("clean"):
        t0 = time.perf_counter()
        tables["clean"] = clean_table({
            ("no cosmic rays", "no Clean"): run.fit("snr", "50", "global"),
            (f"{args.cosmic} cosmic rays", "no Clean"): run.fit("snr", "50", "global",
                                                                args.cosmic),
            (f"{args.cosmic} cosmic rays", "Clean"): run.fit("snr", "50", "global+Clean",
                                                             args.cosmic),
        }, truth)
        seconds["clean"] = time.perf_counter() - t0
    if section("repeats"):
        t0 = time.perf_counter()
        runs = repeat_fits(run, args.repeat_stars, args.repeat_k, 10.0)
        tables["repeats"] = repeats_table(runs, run.truths["all"])
        seconds["repeats"] = time.perf_counter() - t0
    if section("cost"):
        run.time_grid()
        tables["cost"] = ["| step | ms per spectrum |", "|---|---:|"] + [
            f"| {label} | {run.timers[key].ms_per_spectrum():.1f} |" for key, label in (
                ("grid", "global start: grid scoring (144 nodes)"),
                ("fixed", f"{args.method} from one given start"),
                ("global", f"{args.method} with the global start (grid + 4 candidates)"),
                ("clean", f"{args.method} with the global start + Clean"),
                ("lm", "lm reference fits (from the truth; global, to compare Adam with)"))
            if run.timers[key].spectra]
        tables["cost"] += ["", "| section | wall time s |", "|---|---:|"] + [
            f"| {name} | {value:.0f} |" for name, value in seconds.items()]
    for name in args.sections:
        if name in tables:
            print(f"\n## {name}\n")
            print("\n".join(tables[name]))
    if args.save:
        run.save(args.save)
    print(f"\n# total wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
