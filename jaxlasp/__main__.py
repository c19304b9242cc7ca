"""``python -m jaxlasp``: build one model spectrum on the LAMOST grid and print it.

The model is ``--model PATH`` (a ULySS TGM FITS file or a PyLASP group ``.npz``), else the
environment variable ``JAXLASP_MODEL``, else the embedded DEMO model (synthetic, not ELODIE).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m jaxlasp", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("JAXLASP_MODEL"),
                        help="TGM model file (default: $JAXLASP_MODEL, else the embedded demo model)")
    parser.add_argument("--teff", type=float, default=5800.0, help="effective temperature [K]")
    parser.add_argument("--logg", type=float, default=4.4, help="surface gravity log g [dex]")
    parser.add_argument("--feh", type=float, default=0.0, help="metallicity [Fe/H] [dex]")
    parser.add_argument("--rv", type=float, default=0.0, help="radial velocity [km/s]")
    parser.add_argument("--sigma", type=float, default=1.0, help="broadening σ [LAMOST pixels]")
    parser.add_argument("--window", type=float, nargs=2, default=(4200.0, 5700.0),
                        metavar=("LO", "HI"), help="wavelength window [Å]")
    parser.add_argument("--full", action="store_true", help="print every pixel")
    return parser.parse_args(argv)


def load_model(path):
    """(emulator, description) for ``path``, or the demo model when ``path`` is None."""
    if path:
        from jaxlasp.io import read_tgm

        return read_tgm(path), f"model file {path}"
    from jaxlasp.emulators.demo import demo_emulator

    return demo_emulator(), "embedded DEMO model (synthetic, not ELODIE; pass --model for real work)"


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    import jax.numpy as jnp

    import jaxlasp
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.model import components, theta_from_physical

    try:
        emulator, source = load_model(args.model)
    except (OSError, ValueError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    domain = emulator.domain
    if not bool(domain.contains(args.teff, args.logg, args.feh)):
        print(f"error: (Teff, log g, [Fe/H]) = ({args.teff}, {args.logg}, {args.feh}) lies outside "
              f"the model's valid domain Teff {domain.teff} K, log g {domain.logg}, "
              f"[Fe/H] {domain.feh}", file=sys.stderr)
        return 2
    grid = lamost_fit_grid(emulator.grid, tuple(args.window))
    fm = jaxlasp.build_forward_model(emulator, grid)
    theta = jnp.asarray(theta_from_physical(args.teff, args.logg, args.feh, args.rv, args.sigma))
    flux = np.asarray(components(fm, theta, jnp.ones(grid.n), jnp.ones(grid.n)).convolved)
    wave = grid.centres
    print(f"# jaxlasp model spectrum: {source}")
    print(f"# Teff={args.teff} K logg={args.logg} [Fe/H]={args.feh} RV={args.rv} km/s "
          f"sigma={args.sigma} px; {grid.n} LAMOST pixels {wave[0]:.3f}-{wave[-1]:.3f} A (air)")
    print("# wavelength_A flux")
    rows = range(grid.n) if args.full else [*range(5), *range(grid.n - 5, grid.n)]
    for i in rows:
        if not args.full and i == grid.n - 5:
            print(f"# ... {grid.n - 10} more pixels (use --full)")
        print(f"{wave[i]:.4f} {flux[i]:.6e}")
    print(f"# flux min {flux.min():.4e} median {np.median(flux):.4e} max {flux.max():.4e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
