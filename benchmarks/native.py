"""DESI spectra fitted on their own pixels against the joined-and-resampled path (issue 22, c).

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/native.py [--model elodie|demo|PATH] [--n 200]
       [--snr 20 50] [--seed 0] [--window 4210 5690] [--folder DIR]

Mock stars (``jaxlasp.mock``, default ranges, fixed seeds) are made on DESI's camera pixels
(0.8 Å steps in vacuum, ``desi_camera_waves``) from a model neither fit uses: the emulator
broadened on a ln-λ grid ``--oversample`` (8) times finer than LAMOST's lattice, then integrated
over each camera pixel, times a random continuum, plus Gaussian noise at the given S/N per pixel;
one DESI coadd file per S/N (``write_mock_desi``). Each file is then
fitted the way a user fits it — ``jaxlasp.fit_files`` with the CLI's defaults (global start,
profile errors) and ``weighting="ivar"`` — twice:

* joined: the reader resamples each camera onto LAMOST's ln-λ lattice and joins them (the
  default), and the fit runs there;
* native: ``native=True``, each camera's own pixels, the model resampled onto them.

For each S/N and path, per parameter: median bias, robust scatter (1.4826·MAD) of fit − truth and
the robust width of the pulls (fit − truth)/error over the converged fits; the fraction converged,
the pixels fitted and the wall time of the call (compilation included). Markdown on stdout.
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from masks import PARAMETERS, load, mock_parser, print_table, summary


def main(argv=None) -> int:
    parser = mock_parser(__doc__.splitlines()[0])
    parser.add_argument("--window", type=float, nargs=2, default=[4210.0, 5690.0])
    parser.add_argument("--folder", default=None, help="where the mock files go (default: temp)")
    parser.add_argument("--oversample", type=int, default=8,
                        help="the mocks' ln-λ sampling, in pixels per LAMOST pixel")
    args = parser.parse_args(argv)

    from jaxlasp.api import fit_files
    from jaxlasp.mock import (
        desi_camera_waves,
        desi_pixels,
        draw_parameters,
        simulate,
        write_mock_desi,
    )
    from jaxlasp.model import auto_oversample, build_forward_model

    emulator = load(args.model)
    lo, hi = emulator.grid.edges[0] + 0.5, emulator.grid.edges[-1] - 0.5
    waves = desi_camera_waves(lo, hi)
    pixels = desi_pixels(waves)
    k = args.oversample
    fm = build_forward_model(emulator, pixels=pixels, oversample=k)
    truth = draw_parameters(args.n, seed=args.seed, domain=emulator.domain)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="jaxlasp-native-"))
    folder.mkdir(parents=True, exist_ok=True)
    cameras = ", ".join(f"{name} {w.size} px" for name, w in waves.items())
    print(f"# {args.n} mock stars, model {args.model} broadened at {k}× LAMOST's sampling, DESI "
          f"cameras {cameras} (0.8 Å), native kernel grid {auto_oversample(pixels)}× the "
          f"lattice's sampling, fit "
          f"window {args.window[0]:g}–{args.window[1]:g} Å, global start, profile errors, "
          "ivar weights", flush=True)
    for snr in args.snr:
        mocks = simulate(fm, truth, snr=snr, seed=args.seed + 1)
        path = write_mock_desi(mocks, pixels, waves, folder / f"coadd-mock-snr{snr:g}.fits")
        results, notes = {}, []
        for label, native in (("joined onto the LAMOST lattice", False),
                              ("native camera pixels", True)):
            began = time.perf_counter()
            table = fit_files([path], emulator, window=tuple(args.window), native=native,
                              weighting="ivar")
            seconds = time.perf_counter() - began
            results[label] = summary(table, truth)
            notes.append(f"{label}: {int(np.median(table['n_pixels']))} pixels, {seconds:.0f} s "
                         f"for {args.n} spectra (compilation included)")
            print(f"# S/N {snr:g} {label}: {seconds:.0f} s", file=sys.stderr, flush=True)
        print_table(f"(c) mock DESI spectra, S/N {snr:g} per 0.8 Å pixel, N = {args.n}",
                    results, notes)
    print(f"\n# parameters: {', '.join(label for _, label in PARAMETERS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
