"""Adam Clean schedules: PyLASP's fixed one against the adaptive per-spectrum one.

Usage: python benchmarks/adam_clean_schedule.py [--parts real mock] [--mocks 50] [--snr 30]
       [--cosmic-rays 6] [--bad-pixels 4] [--seed 0]

``real``: the 25 LAMOST sample spectra (FITS files, read as ``fit_files`` reads them, weighting
"none"), one group of 25 from PyLASP's start (7500 K, 3.5, −0.5), fitted by LM with Clean
(CurveFit's schedule, ``fit_batch(use_clean=True)``) and by Adam with Clean on each schedule
(``fit_batch_adam(clean=True, clean_schedule=…)``, per-spectrum convergence). Printed per
schedule: median and max |Adam − LM| of RV, Teff, log g, [Fe/H], the largest in LM σ, Adam steps
and Clean calls per spectrum (median / max; the vmapped loop runs max steps), the spectra whose
final mask equals LM's, the group's wall and CPU time (the second call: compiled) and the first
call's wall time (compilation included).

``mock``: ``--mocks`` FGK stars (4000–7000 K, log g 1–5, [Fe/H] −2…0.5) simulated with the ELODIE
model at S/N ``--snr`` with ``--cosmic-rays`` cosmic-ray hits and ``--bad-pixels`` bad pixels per
spectrum (``jaxlasp.mock.simulate``), flux over its median, weight 1 on good pixels; fitted from
the same start by LM and Adam with and without Clean. Printed per fit: median and 95th-percentile
|fit − truth|, the spectra with a parameter more than 5 of its errors off (a fit in a false
minimum), the fraction of cosmic-ray pixels left out of the final mask, steps and time.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import DEFAULT_START
from jaxlasp.fit import adam
from jaxlasp.fit.driver import fit_batch
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.groups.columns import result_columns
from jaxlasp.groups.inputs import lamost_weights, start_points
from jaxlasp.io import cut_to_grid, read_lamost, read_tgm
from jaxlasp.mock import draw_parameters, simulate
from jaxlasp.model import build_forward_model

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared/data/lamost-dr10-sample"
ELODIE = SAMPLE / "elodie32_flux_tgm_4199-5700.fits"
QUANTITIES = ("rv", "teff", "logg", "feh")


def timed(fit):
    """(result, wall s of the first call, wall s and CPU s of a second call); result = FitResult.

    CPU s (all threads of the process) is steadier than wall s when other jobs share the cores.
    """
    times = []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        result = jax.block_until_ready(fit())
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return result, times[0][0], times[1]


def joined(delta: dict, statistic) -> str:
    """``statistic`` of each quantity's |Δ|, comma-separated."""
    return ", ".join(f"{statistic(delta[q]):.3g}" for q in QUANTITIES)


def steps(n_iter) -> str:
    """Median / max of per-spectrum step counts."""
    return f"{np.median(n_iter):.0f}/{np.max(n_iter)}"


def fitters(fm, theta0, flux, weights, clean: bool):
    """name → zero-argument fit returning a FitResult: LM and Adam on each schedule."""
    fits = {"lm": lambda: fit_batch(fm, theta0, flux, weights, use_clean=clean)}
    schedules = adam.SCHEDULES if clean else ("fixed",)
    for schedule in schedules:
        fits[f"adam {schedule}" if clean else "adam"] = (
            lambda s=schedule: adam.fit_batch_adam(fm, theta0, flux, weights, clean=clean,
                                                   clean_schedule=s)[0])
    return fits


def real_part(emulator) -> None:
    grid = lamost_fit_grid(emulator.grid)
    spectra = [cut_to_grid(read_lamost(p), grid) for p in sorted((SAMPLE / "fits").glob("*.fits"))]
    flux = np.stack([s.normalised_flux() for s in spectra])
    weights = np.stack([lamost_weights(s, "none") for s in spectra])
    fm = build_forward_model(emulator, grid)
    theta0 = start_points(DEFAULT_START, len(flux))
    runs = {name: timed(fit) for name, fit in fitters(fm, theta0, flux, weights, True).items()}
    lm_result = runs.pop("lm")[0]
    lm = result_columns(lm_result, grid)
    print(f"25 LAMOST spectra, group of {len(flux)}, start {DEFAULT_START}: Adam Clean − LM Clean")
    print("schedule | median |Δ| RV, Teff, log g, [Fe/H] | max |Δ| | max |Δ|/σ_LM | steps med/max"
          " | Clean calls med/max | masks = LM's | wall s / CPU s (compiled) | first wall s")
    for name, (result, first, second) in runs.items():
        got = result_columns(result, grid)
        delta = {q: np.abs(got[q] - lm[q]) for q in QUANTITIES}
        sigmas = max(np.max(delta[q] / lm[q + "_err"]) for q in QUANTITIES)
        same_mask = np.sum(np.all(result.mask == lm_result.mask, axis=1))
        print(f"{name} | {joined(delta, np.median)} | {joined(delta, np.max)} | {sigmas:.2f}"
              f" | {steps(got['n_iter'])} | {steps(result.n_cycles)} | {same_mask}/{len(flux)}"
              f" | {second[0]:.1f} / {second[1]:.1f} | {first:.1f}"
              f" | converged {np.sum(got['converged'])}/{len(flux)}")


def mock_part(emulator, n: int, snr: float, cosmic_rays: int, bad_pixels: int, seed: int) -> None:
    grid = lamost_fit_grid(emulator.grid)
    fm = build_forward_model(emulator, grid)
    truth = draw_parameters(n, seed, teff=(4000.0, 7000.0), logg=(1.0, 5.0), feh=(-2.0, 0.5))
    mocks = simulate(fm, truth, snr=snr, seed=seed, cosmic_rays=cosmic_rays,
                     bad_pixels=bad_pixels)
    good = mocks.weights > 0
    flux = mocks.flux / np.nanmedian(np.where(good, mocks.flux, np.nan), axis=1, keepdims=True)
    weights = good.astype(np.float64)
    theta0 = start_points(DEFAULT_START, n)
    print(f"\n{n} mocks, S/N {snr}, {cosmic_rays} cosmic rays and {bad_pixels} bad pixels per "
          f"spectrum, seed {seed}, start {DEFAULT_START}: fit − truth")
    print("fit | median |Δ| RV, Teff, log g, [Fe/H] | 95 % |Δ| | spectra > 5σ off | cosmic-ray "
          "pixels rejected | steps med/max | wall s / CPU s (compiled)")
    for clean in (False, True):
        for name, fit in fitters(fm, theta0, flux, weights, clean).items():
            result, _, second = timed(fit)
            got = result_columns(result, grid)
            delta = {q: np.abs(got[q] - getattr(truth, q)) for q in QUANTITIES}
            off = np.sum(np.any([delta[q] > 5 * got[q + "_err"] for q in QUANTITIES], axis=0))
            rejected = mocks.cosmic & ~np.asarray(result.mask)
            caught = np.sum(rejected) / max(np.sum(mocks.cosmic), 1)
            label = f"{name} {'Clean' if clean else 'No Clean'}"
            print(f"{label} | {joined(delta, np.median)} | "
                  f"{joined(delta, lambda d: np.percentile(d, 95))} | {off} | {caught:.2f}"
                  f" | {steps(got['n_iter'])} | {second[0]:.1f} / {second[1]:.1f}"
                  f" | converged {np.sum(got['converged'])}/{n}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["real", "mock"], choices=["real", "mock"])
    parser.add_argument("--mocks", type=int, default=50)
    parser.add_argument("--snr", type=float, default=30.0)
    parser.add_argument("--cosmic-rays", type=int, default=6)
    parser.add_argument("--bad-pixels", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not ELODIE.exists():
        raise SystemExit(f"needs the LAMOST sample and ELODIE model in {SAMPLE}")
    emulator = read_tgm(ELODIE)
    print(f"device: {jax.devices()[0].device_kind}, float64")
    if "real" in args.parts:
        real_part(emulator)
    if "mock" in args.parts:
        mock_part(emulator, args.mocks, args.snr, args.cosmic_rays, args.bad_pixels, args.seed)


if __name__ == "__main__":
    main()
