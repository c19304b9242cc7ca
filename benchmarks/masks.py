"""Masks and the additive polynomial on mock spectra (issue 22): recovered against true values.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/masks.py [--model elodie|demo|PATH] [--n 200]
       [--snr 20 50] [--seed 0]

Mock stars (``jaxlasp.mock``, default ranges, fixed seeds) are fitted the way a user fits arrays —
``jaxlasp.api.fit_arrays`` with the CLI's defaults (global start, profile errors), weights = the
mocks' IVAR — under two kinds of damage:

* (a) a bad region: the flux × 3 over 5000–5050 Å, fitted without a mask and with
  ``mask=[(5000, 5050)]``; the untouched spectra, without a mask, are the reference.
* (b) scattered light: 30 % of the median noise-free flux added to every pixel (IVAR unchanged:
  the light's own photon noise is left out), fitted without and with ``adegree=0``; the untouched
  spectra with and without ``adegree=0`` are the references (the second shows what the extra
  nuisance parameter costs).

For each S/N and fit, per parameter: median bias, robust scatter (1.4826·MAD) of fit − truth,
and the robust width of the pulls (fit − truth)/error, over the converged fits; and the fraction
converged. Tables are printed as Markdown; progress goes to stderr.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ELODIE = (Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "lamost-dr10-sample"
          / "elodie32_flux_tgm_4199-5700.fits")
BAD_REGION = (5000.0, 5050.0)
LIGHT = 0.3
PARAMETERS = (("rv", "RV [km/s]"), ("teff", "Teff [K]"), ("logg", "log g"), ("feh", "[Fe/H]"))


def load(model: str):
    import jax

    jax.config.update("jax_enable_x64", True)
    from jaxlasp.api import load_model

    if model == "elodie":
        if not ELODIE.exists():
            raise SystemExit(f"the ELODIE model is not at {ELODIE}; use --model demo or PATH")
        model = str(ELODIE)
    return load_model(model)


def robust(values) -> float:
    values = np.asarray(values)
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def summary(table, truth) -> dict[str, tuple[float, float, float]]:
    ok = np.asarray(table["converged"], bool)
    rows = {}
    for name, _ in PARAMETERS:
        diff = (np.asarray(table[name]) - getattr(truth, name))[ok]
        pull = diff / np.asarray(table[f"{name}_err"])[ok]
        rows[name] = (float(np.median(diff)), robust(diff), robust(pull))
    rows["converged"] = float(ok.mean())
    return rows


def markdown(title: str, results: dict[str, dict]) -> str:
    lines = [f"**{title}**", "",
             "| fit | converged | " + " | ".join(f"{label} bias / scatter / pull width"
                                                   for _, label in PARAMETERS) + " |",
             "|---|---:|" + "---:|" * len(PARAMETERS)]
    for label, rows in results.items():
        cells = [f"{rows[name][0]:.3g} / {rows[name][1]:.3g} / {rows[name][2]:.2f}"
                 for name, _ in PARAMETERS]
        lines.append(f"| {label} | {rows['converged']:.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def print_table(title: str, results: dict[str, dict], notes=()) -> None:
    """Print ``markdown(title, results)`` between blank lines, then each note as a bullet."""
    print()
    print(markdown(title, results), flush=True)
    print()
    for note in notes:
        print(f"* {note}")


def mock_parser(description: str) -> argparse.ArgumentParser:
    """The options of the mock-star tables: --model, --n, --snr, --seed."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="elodie")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--snr", type=float, nargs="+", default=[20.0, 50.0])
    parser.add_argument("--seed", type=int, default=0)
    return parser


def main(argv=None) -> int:
    parser = mock_parser(__doc__.splitlines()[0])
    args = parser.parse_args(argv)

    from jaxlasp.api import fit_arrays
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.mock import draw_parameters, simulate
    from jaxlasp.model import build_forward_model

    emulator = load(args.model)
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid))
    truth = draw_parameters(args.n, seed=args.seed, domain=emulator.domain)
    centres = fm.grid.centres
    bad = (centres >= BAD_REGION[0]) & (centres <= BAD_REGION[1])
    print(f"# {args.n} mock stars, model {args.model}, bad region {BAD_REGION[0]:g}–"
          f"{BAD_REGION[1]:g} Å ({bad.sum()} pixels) × 3, scattered light {LIGHT:.0%} of the "
          f"median flux", flush=True)
    for snr in args.snr:
        mocks = simulate(fm, truth, snr=snr, seed=args.seed + 1)
        spoiled = np.where(bad, 3.0 * mocks.flux, mocks.flux)
        lit = mocks.flux + LIGHT * np.median(mocks.noiseless, axis=1, keepdims=True)
        runs = {
            "a": {"untouched, no mask": (mocks.flux, {}),
                  "flux × 3 over 5000–5050 Å, no mask": (spoiled, {}),
                  "flux × 3 over 5000–5050 Å, masked": (spoiled, {"mask": [BAD_REGION]})},
            "b": {"untouched, no additive": (mocks.flux, {}),
                  "untouched, adegree 0": (mocks.flux, {"adegree": 0}),
                  "+30 % light, no additive": (lit, {}),
                  "+30 % light, adegree 0": (lit, {"adegree": 0})},
        }
        for part, title in (("a", "a masked bad region"), ("b", "additive scattered light")):
            results = {}
            for label, (flux, options) in runs[part].items():
                began = time.perf_counter()
                table = fit_arrays(flux, emulator, weights=mocks.weights, grid=mocks.grid,
                                   start="global", errors="profile", **options)
                results[label] = summary(table, truth)
                print(f"# S/N {snr:g} {label}: {time.perf_counter() - began:.0f} s",
                      file=sys.stderr, flush=True)
            print()
            print(markdown(f"({part}) {title}, S/N {snr:g}, N = {args.n}", results), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
