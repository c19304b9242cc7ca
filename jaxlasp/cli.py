"""The ``jaxlasp`` command: fit, demo, plot, info, spectrum.

Exit codes: 0 success; 2 bad arguments or input (unreadable model, start outside the domain,
unwritable output, …); 3 the catalog is complete but some spectra could not be fitted (see their
``flags``/``reason``); 130 interrupted (finished groups are kept: rerun with ``--resume``).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

import numpy as np

log = logging.getLogger("jaxlasp")

DEMO = "demo"
"""``--model demo`` selects the embedded, synthetic demo model."""
EXIT_BAD_INPUT, EXIT_SOME_FAILED, EXIT_INTERRUPTED = 2, 3, 130


class UsageError(ValueError):
    """A command-line error reported as one line on stderr with exit code 2."""


def _floats(n: int, what: str):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != n:
            raise argparse.ArgumentTypeError(f"{what}: expected {n} comma-separated numbers, "
                                             f"got {text!r}")
        return values
    return parse


def _start(text: str):
    """--start: 'global' or three comma-separated numbers."""
    return text if text == "global" else _floats(3, "--start")(text)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.environ.get("JAXLASP_MODEL"),
                        help="TGM model file (ULySS FITS or PyLASP .npz/.pt), or 'demo' for the "
                             "embedded demo model (default: $JAXLASP_MODEL)")


def _fit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("lm", "adam", "curvefit"), default="lm",
                        help="optimiser: Levenberg–Marquardt (default), Adam, or curvefit "
                             "(LASP-CurveFit's own path, to reproduce PyLASP's results)")
    parser.add_argument("--clean", action="store_true", help="reject outlier pixels (Clean)")
    parser.add_argument("--start", type=_start, default="global", metavar="global|T,G,Z",
                        help="'global' (default): scan a grid of models and fit from the best "
                             "candidates; or a fixed start Teff [K], log g, [Fe/H] such as "
                             "PyLASP's 7500,3.5,-0.5")
    parser.add_argument("--window", type=_floats(2, "--window"), default=(4200.0, 5700.0),
                        metavar="LO,HI", help="wavelength window [Å] (default 4200,5700)")
    parser.add_argument("--weighting", choices=("none", "ivar"), default="none",
                        help="pixel weights: none (PyLASP) or ivar (IVAR and ANDMASK)")
    parser.add_argument("--errors", choices=("profile", "laplace"), default="profile",
                        help="error bars: profile (default: the Laplace covariance rescaled to "
                             "the width of the chi2 profile, calibrated on mock spectra) or "
                             "laplace (curve_fit's, as PyLASP reports)")
    parser.add_argument("--format", default="auto",
                        help="input format: auto (recognise each file), lamost, desi, or another "
                             "registered reader")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxlasp", description="Stellar parameters (RV, Teff, log g, [Fe/H]) by "
        "full-spectrum fitting of a spectral emulator, in JAX.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fit = sub.add_parser("fit", help="fit spectra and write a catalog")
    fit.add_argument("paths", nargs="+", metavar="PATH",
                     help="spectrum files, directories, or text files listing files")
    _model_option(fit)
    _fit_options(fit)
    fit.add_argument("--group-size", type=int, default=64,
                     help="spectra per device fitted together in one compiled batch (default 64)")
    fit.add_argument("--devices", type=int, default=None, metavar="N",
                     help="local devices (GPUs) each group is split over (default: all)")
    fit.add_argument("--max-iter", type=int, default=None, help="iteration cap per fit")
    fit.add_argument("-o", "--output", default="catalog.ecsv",
                     help="catalog: .csv, .ecsv, .fits or .parquet (default catalog.ecsv)")
    fit.add_argument("--resume", action="store_true",
                     help="continue an interrupted run: keep rows already written, fit the rest")
    fit.add_argument("--device", choices=("cpu", "gpu"), default=None,
                     help="run on this device (default: JAX's default device)")
    cluster = fit.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="fit on the Dask cluster of this scheduler (tcp://host:8786)")
    cluster.add_argument("--dask-workers", type=int, metavar="N",
                         help="fit on a local Dask cluster of N worker processes")
    fit.add_argument("--chunk-files", type=int, default=512, metavar="N",
                     help="files per cluster task and part file (default 512)")
    _common(fit)

    demo = sub.add_parser("demo", help="simulate spectra from the demo model, fit, compare")
    demo.add_argument("--n", type=int, default=200, help="number of mock spectra (default 200)")
    demo.add_argument("--snr", type=float, default=50.0, help="signal-to-noise per pixel")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--output-dir", default="jaxlasp-demo",
                      help="folder for the catalog and plot (default ./jaxlasp-demo)")
    _common(demo)

    plot = sub.add_parser("plot", help="plot the fit of one spectrum")
    plot.add_argument("spectrum", metavar="SPECTRUM", help="spectrum file")
    _model_option(plot)
    _fit_options(plot)
    plot.add_argument("--index", type=int, default=0,
                      help="which spectrum of a multi-spectrum file (default 0)")
    plot.add_argument("--from-catalog", metavar="CATALOG",
                      help="take the parameters from this catalog's row for the spectrum "
                           "instead of fitting")
    plot.add_argument("-o", "--output", default="fit.png", help="image file (default fit.png)")
    _common(plot)

    info = sub.add_parser("info", help="describe a model: wavelength range, regimes, domain")
    info.add_argument("model", nargs="?", default=os.environ.get("JAXLASP_MODEL") or DEMO,
                      metavar="MODEL", help="model file or 'demo' (default: $JAXLASP_MODEL, "
                                            "else demo)")
    _common(info)

    spectrum = sub.add_parser("spectrum", help="print one model spectrum on the LAMOST grid")
    _model_option(spectrum)
    spectrum.add_argument("--teff", type=float, default=5800.0, help="effective temperature [K]")
    spectrum.add_argument("--logg", type=float, default=4.4, help="surface gravity log g [dex]")
    spectrum.add_argument("--feh", type=float, default=0.0, help="metallicity [Fe/H] [dex]")
    spectrum.add_argument("--rv", type=float, default=0.0, help="radial velocity [km/s]")
    spectrum.add_argument("--sigma", type=float, default=1.0, help="broadening σ [pixels]")
    spectrum.add_argument("--window", type=_floats(2, "--window"), default=(4200.0, 5700.0),
                          metavar="LO,HI", help="wavelength window [Å]")
    spectrum.add_argument("--full", action="store_true", help="print every pixel")
    _common(spectrum)
    return parser


# ---------------------------------------------------------------- helpers

def load_model(name, required: bool = True):
    """(emulator, description) for a model path or 'demo'; UsageError when it cannot be read."""
    if not name:
        if required:
            raise UsageError("no model: pass --model TGM_FILE (or set JAXLASP_MODEL); "
                             "'--model demo' uses the embedded demo model")
        name = DEMO
    if name == DEMO:
        from jaxlasp.emulators.demo import demo_emulator

        return demo_emulator(), "embedded DEMO model (synthetic, not ELODIE)"
    from jaxlasp.io import read_tgm

    try:
        return read_tgm(name), f"model file {name}"
    except (OSError, ValueError, ImportError) as err:
        raise UsageError(str(err)) from err


def select_device(device: str | None) -> None:
    """Make JAX use the CPU or the GPU; UsageError when the GPU is asked for but absent."""
    if device is None:
        return
    import jax

    jax.config.update("jax_platforms", "cpu" if device == "cpu" else "cuda")
    try:
        jax.devices()
    except RuntimeError as err:
        raise UsageError(f"--device {device}: no such device available ({err})") from err


def configure_logging(args) -> None:
    """jaxlasp's messages to stderr at the level --quiet/--verbose choose (other libraries' loggers
    are left alone)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    log.propagate = False


def check_domain(emulator, teff, logg, feh, what: str) -> None:
    domain = emulator.domain
    if not bool(domain.contains(teff, logg, feh)):
        raise UsageError(f"{what} (Teff, log g, [Fe/H]) = ({teff}, {logg}, {feh}) lies outside "
                         f"the model's valid domain Teff {domain.teff} K, log g {domain.logg}, "
                         f"[Fe/H] {domain.feh}")


class Interrupted(Exception):
    """SIGTERM received (handled like Ctrl-C)."""


def _raise_interrupted(signum, frame):
    raise Interrupted(f"signal {signum}")


# ---------------------------------------------------------------- commands

def cmd_fit(args) -> int:
    from jaxlasp.io.catalog import CatalogError
    from jaxlasp.pipeline import FitOptions, run

    select_device(args.device)
    emulator, source = load_model(args.model)
    if not isinstance(args.start, str):
        check_domain(emulator, *args.start, "--start")
    options = FitOptions(method=args.method, clean=args.clean, start=args.start,
                         window=tuple(args.window), weighting=args.weighting,
                         max_iter=args.max_iter, group_size=args.group_size,
                         format=args.format, devices=args.devices, errors=args.errors)
    log.info("model: %s", source)
    try:
        if args.scheduler or args.dask_workers:
            summary = _fit_on_cluster(args, options)
        else:
            summary = run(args.paths, emulator, args.output, options, resume=args.resume,
                          quiet=args.quiet)
    except (CatalogError, ValueError, OSError, ImportError) as err:
        raise UsageError(str(err)) from err
    log.info("%d rows written to %s (%d newly fitted in %.1f s); %d not fitted or not "
             "converged, of which %d unreadable", summary.rows, args.output, summary.fitted,
             summary.seconds, summary.failed, summary.unreadable)
    return EXIT_SOME_FAILED if summary.failed else 0


def _fit_on_cluster(args, options):
    """``fit`` on Dask: workers load the model themselves (once each), by absolute path."""
    from jaxlasp.parallel.cluster import run_cluster

    model = args.model if args.model == DEMO else str(Path(args.model).absolute())
    return run_cluster(args.paths, model, args.output, options, scheduler=args.scheduler,
                       workers=args.dask_workers, chunk_files=args.chunk_files,
                       resume=args.resume, quiet=args.quiet)


def cmd_info(args) -> int:
    from jaxlasp.emulators.tgm import REGIMES

    emulator, source = load_model(args.model, required=False)
    grid, domain = emulator.grid, emulator.domain
    wave = grid.centres
    print(f"model: {source}")
    print(f"interpolator: TGM version {emulator.version}, {emulator.coef.shape[1]} terms, "
          f"dtype {emulator.coef.dtype}")
    print(f"wavelength: {wave[0]:.2f}–{wave[-1]:.2f} Å, {grid.n} pixels "
          f"({type(grid).__name__}, step {grid.step:g})")
    print(f"regimes: {', '.join(REGIMES)} (cold below 4550 K, blended with warm over "
          "4000–4550 K; hot above 7000 K, blended with warm over 7000–9000 K)")
    print(f"valid domain: Teff {domain.teff[0]:g}–{domain.teff[1]:g} K, log g "
          f"{domain.logg[0]:g}–{domain.logg[1]:g}, [Fe/H] {domain.feh[0]:g}–{domain.feh[1]:g}")
    return 0


def cmd_spectrum(args) -> int:
    import jax.numpy as jnp

    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.model import build_forward_model, components, theta_from_physical

    emulator, source = load_model(args.model, required=False)
    check_domain(emulator, args.teff, args.logg, args.feh, "the requested")
    grid = lamost_fit_grid(emulator.grid, tuple(args.window))
    fm = build_forward_model(emulator, grid)
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


def _catalog_row(catalog_path, spectrum_id: str, path: str):
    from jaxlasp.io.catalog import CatalogError, read_catalog

    try:
        table = read_catalog(catalog_path)
    except CatalogError as err:
        raise UsageError(str(err)) from err
    rows = [row for row in table if ("path" in table.colnames and row["path"] == path)
            or row["id"] == spectrum_id]
    if not rows:
        raise UsageError(f"{catalog_path}: no row for spectrum {spectrum_id}")
    row = rows[0]
    if not np.isfinite(row["teff"]):
        raise UsageError(f"{catalog_path}: spectrum {spectrum_id} has no fitted parameters "
                         f"({row['reason']})")
    return row


def cmd_plot(args) -> int:
    import jax.numpy as jnp

    from jaxlasp.api import fit, initial_points, lamost_weights, read_for_fit, result_columns
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.mock import kms_to_pixels
    from jaxlasp.model import build_forward_model, components, theta_from_physical
    from jaxlasp.plot import plot_fit

    emulator, _ = load_model(args.model)
    if not isinstance(args.start, str):
        check_domain(emulator, *args.start, "--start")
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid, tuple(args.window)))
    reads = read_for_fit(Path(args.spectrum), fm.grid, args.window, args.format)
    if args.index >= len(reads):
        raise UsageError(f"{args.spectrum} holds {len(reads)} spectra; --index {args.index} "
                         "is out of range")
    spectrum = reads[args.index].spectrum
    if spectrum is None:
        raise UsageError(reads[args.index].reason)
    flux = spectrum.normalised_flux()
    weights = lamost_weights(spectrum, args.weighting)
    if args.from_catalog:
        row = _catalog_row(args.from_catalog, spectrum.id, args.spectrum)
        theta = theta_from_physical(row["teff"], row["logg"], row["feh"], row["rv"],
                                    kms_to_pixels(row["sigma"], fm.grid.step))
        used, label = weights > 0, f"parameters from {args.from_catalog}"
    else:
        result = fit(fm, initial_points(args.start, 1, fm), flux[None], weights[None],
                     method=args.method, clean=args.clean, max_iter=None, errors=args.errors)
        row = {k: v[0] for k, v in result_columns(result, fm.grid).items()}
        theta = np.asarray(result.theta[0])
        used = np.asarray(result.mask[0], bool) & (weights > 0)
        label = f"{args.method}{' + Clean' if args.clean else ''} fit"
    comps = components(fm, jnp.asarray(theta), jnp.asarray(flux), jnp.asarray(used * weights))
    title = (f"{spectrum.id}: RV {row['rv']:.2f} km/s, Teff {row['teff']:.0f} K, log g "
             f"{row['logg']:.3f}, [Fe/H] {row['feh']:.3f} ({label})")
    plot_fit(fm.grid.centres, flux, comps, used, title, args.output)
    log.info("wrote %s", args.output)
    return 0


def cmd_demo(args) -> int:
    from jaxlasp.demo_run import run_demo

    try:
        return run_demo(n=args.n, snr=args.snr, seed=args.seed, output_dir=Path(args.output_dir))
    except ValueError as err:
        raise UsageError(str(err)) from err


COMMANDS = {"fit": cmd_fit, "demo": cmd_demo, "plot": cmd_plot, "info": cmd_info,
            "spectrum": cmd_spectrum}


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Interrupted):
        log.error("interrupted: finished groups are kept; rerun with --resume to continue")
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)
