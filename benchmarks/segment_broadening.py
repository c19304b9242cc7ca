"""A broadening σ per segment on mock spectra (issue 22): two halves of different resolution.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/segment_broadening.py [--model elodie|demo|PATH]
       [--n 200] [--snr 20 50] [--seed 0] [--ratio 0.8] [--sigma 60 120]

Mock stars (``jaxlasp.mock``, default ranges but σ uniform in ``--sigma`` km/s, fixed seeds) on
LAMOST's 4200–5700 Å grid, fitted in the two segments 4200–4900 and 5000–5700 Å the way a user
fits arrays — ``jaxlasp.api.fit_arrays`` with the CLI's defaults (global start, profile errors),
weights = the mocks' IVAR. The red segment's pixels come from the same mock stars simulated with
σ × ``--ratio`` (same seed: the same continuum and noise draws), so the two halves differ in
resolution only (a real LAMOST spectrum, 3706009, has σ 1.19 px in the blue half and 0.94 px in
the red one: ratio 0.8). Rows:

* one σ everywhere (the mocks at σ in both halves), fitted with one σ: the reference;
* the red half at σ × ratio, fitted with one σ (today's fit);
* the same, fitted with ``segment_broadening=True`` (a σ per segment).

For each S/N and fit, per parameter: median bias, robust scatter (1.4826·MAD) of fit − truth
and the robust width of the pulls, over the converged fits; and the fraction converged; then the
σ each fit found against the truth of each half. Markdown on stdout, progress on stderr.
"""
from __future__ import annotations

import sys
import time

import numpy as np
from masks import load, mock_parser, print_table, robust, summary

SEGMENTS = ((4200.0, 4900.0), (5000.0, 5700.0))
RED_FROM = 4950.0
"""Pixels from here [Å] take the red half's σ (the gap between the segments is not fitted)."""


def main(argv=None) -> int:
    parser = mock_parser(__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.8, help="red σ over blue σ")
    parser.add_argument("--sigma", type=float, nargs=2, default=[60.0, 120.0],
                        help="range of the blue half's σ [km/s]")
    args = parser.parse_args(argv)

    from jaxlasp.api import fit_arrays
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.mock import draw_parameters, simulate
    from jaxlasp.model import build_forward_model

    emulator = load(args.model)
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid))
    truth = draw_parameters(args.n, seed=args.seed, domain=emulator.domain,
                            sigma=tuple(args.sigma))
    red_truth = truth._replace(sigma=truth.sigma * args.ratio)
    red = fm.grid.centres >= RED_FROM
    print(f"# {args.n} mock stars, model {args.model}, σ {args.sigma[0]:g}–{args.sigma[1]:g} "
          f"km/s in 4200–4950 Å and × {args.ratio:g} above, segments "
          + ", ".join(f"{lo:g}–{hi:g} Å" for lo, hi in SEGMENTS)
          + ", global start, profile errors, ivar weights", flush=True)
    for snr in args.snr:
        blue = simulate(fm, truth, snr=snr, seed=args.seed + 1)
        reddened = simulate(fm, red_truth, snr=snr, seed=args.seed + 1)
        flux = np.where(red, reddened.flux, blue.flux)
        weights = np.where(red, reddened.weights, blue.weights)
        runs = {"one σ everywhere, one σ fitted": (blue.flux, blue.weights, False),
                f"red σ × {args.ratio:g}, one σ fitted": (flux, weights, False),
                f"red σ × {args.ratio:g}, σ per segment": (flux, weights, True)}
        results, notes = {}, []
        for label, (f, w, per_segment) in runs.items():
            began = time.perf_counter()
            table = fit_arrays(f, emulator, weights=w, grid=blue.grid, segments=SEGMENTS,
                               start="global", errors="profile", segment_broadening=per_segment)
            results[label] = summary(table, truth)
            ok = np.asarray(table["converged"], bool)
            red_sigma = red_truth.sigma if f is flux else truth.sigma
            found = [("σ blue", table["sigma"], truth.sigma)]
            if per_segment:
                found.append(("σ red", table["sigma_2"], red_sigma))
            else:
                found.append(("σ red", table["sigma"], red_sigma))
            notes.append(f"{label}: " + "; ".join(
                f"{name} − truth: median {np.median((np.asarray(v) - t)[ok]):.2f}, scatter "
                f"{robust((np.asarray(v) - t)[ok]):.2f} km/s" for name, v, t in found))
            print(f"# S/N {snr:g} {label}: {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
        print_table(f"(d) halves of different resolution, S/N {snr:g}, N = {args.n}", results,
                    notes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
