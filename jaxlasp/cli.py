"""The ``jaxlasp`` command: fit, demo, plot, info, spectrum.

Exit codes: 0 success; 2 bad arguments or input (unreadable model, start outside the domain,
unwritable output, no spectrum files, catalog locked by another run, …); 3 the catalog is
complete but some spectra could not be fitted (see their ``flags``/``reason``); 4 writing the
catalog failed mid-run (disk full, I/O error: finished groups are kept, rerun with ``--resume``);
130 interrupted (finished groups are kept: rerun with ``--resume``).
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
EXIT_BAD_INPUT, EXIT_SOME_FAILED, EXIT_WRITE_FAILED, EXIT_INTERRUPTED = 2, 3, 4, 130


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


def _int_at_least(low: int, what: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"{what}: expected an integer ≥ {low}, got {text!r}")
        return value
    return parse


def _intervals(what: str, files: bool = False):
    """LO-HI[,LO-HI…] [Å], or (``files``) a file of such intervals."""
    def parse(text: str):
        from jaxlasp.spectral.masks import intervals_from, parse_intervals

        try:
            return intervals_from(text) if files else parse_intervals(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"{what}: {err}") from None
    return parse


def fit_window_of(args) -> tuple[float, float]:
    """The window of --window or --segments (UsageError for both)."""
    from jaxlasp.spectral.masks import fit_window

    if args.segments and args.window is not None:
        raise UsageError("give --window or --segments, not both (the segments set the window)")
    return fit_window(args.window, args.segments)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug messages")


def _model_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=os.environ.get("JAXLASP_MODEL"),
                        help="TGM model file (ULySS FITS or PyLASP .npz/.pt), 'elodie32' (ELODIE "
                             "3.2, fetched once into your cache), or 'demo' for the embedded "
                             "demo model (default: $JAXLASP_MODEL)")


def _compile_cache_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-compile-cache", action="store_true",
                        help="do not keep compiled programs between runs (default: kept in "
                             "$JAXLASP_CACHE_DIR or ~/.cache/jaxlasp/xla, so a second run "
                             "starts in seconds; JAXLASP_COMPILE_CACHE=0 also turns it off)")


def _fit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=("lm", "adam", "curvefit"), default="lm",
                        help="optimiser: Levenberg–Marquardt (default), Adam, or curvefit "
                             "(LASP-CurveFit's own path, to reproduce PyLASP's results)")
    parser.add_argument("--clean", action="store_true", help="reject outlier pixels (Clean)")
    parser.add_argument("--start", type=_start, default="global", metavar="global|T,G,Z",
                        help="'global' (default): scan a grid of models and fit from the best "
                             "candidates; or a fixed start Teff [K], log g, [Fe/H] such as "
                             "PyLASP's 7500,3.5,-0.5")
    parser.add_argument("--window", type=_floats(2, "--window"), default=None,
                        metavar="LO,HI", help="wavelength window [Å] (default 4200,5700)")
    parser.add_argument("--segments", type=_intervals("--segments"), default=(),
                        metavar="LO-HI,LO-HI[,...]",
                        help="disjoint windows [Å] fitted jointly (shared RV, Teff, log g, "
                             "[Fe/H]), each with its own polynomials; instead of --window")
    parser.add_argument("--mask", type=_intervals("--mask", files=True), default=(),
                        metavar="LO-HI[,LO-HI...]|FILE",
                        help="wavelength intervals [Å] left out of the fit (pixels whose centre "
                             "lies inside), or a file of them: two columns lo hi, one interval "
                             "a line, '#' comments")
    parser.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                        help="fit spectra on their own pixels where the reader has them (the "
                             "default; DESI: each camera a segment with its own polynomial, the "
                             "model resampled onto the pixels); --no-native joins DESI cameras "
                             "onto LAMOST's lattice as before. LAMOST files are the same either "
                             "way")
    parser.add_argument("--segment-broadening", action="store_true",
                        help="a Gaussian broadening of its own for each segment (each of "
                             "--segments, or each camera of native pixels: arms of different "
                             "resolution); the catalog gains sigma_2, ... ('sigma' is the first "
                             "segment's)")
    parser.add_argument("--mdegree", type=_int_at_least(0, "--mdegree"), default=50, metavar="N",
                        help="degree of the multiplicative Legendre polynomial (default 50, "
                             "PyLASP's)")
    parser.add_argument("--adegree", type=_int_at_least(-1, "--adegree"), default=-1, metavar="N",
                        help="degree of an additive Legendre polynomial fitted with it (default "
                             "-1: none, PyLASP; 0: a constant, e.g. scattered light)")
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
    fit.add_argument("--readers", type=int, default=None, metavar="N",
                     help="workers reading files ahead of the fit (default: 1 thread on the "
                          "CPU, all host cores but one as processes with a GPU)")
    fit.add_argument("--reader-kind", choices=("auto", "thread", "process"), default="auto",
                     help="readers as threads or processes (default auto: threads on the CPU)")
    _compile_cache_option(fit)
    _common(fit)

    demo = sub.add_parser("demo", help="simulate spectra from the demo model, fit, compare")
    demo.add_argument("--n", type=int, default=200, help="number of mock spectra (default 200)")
    demo.add_argument("--snr", type=float, default=50.0, help="signal-to-noise per pixel")
    demo.add_argument("--seed", type=int, default=0, help="random seed")
    demo.add_argument("--output-dir", default="jaxlasp-demo",
                      help="folder for the catalog and plot (default ./jaxlasp-demo)")
    _compile_cache_option(demo)
    _common(demo)

    plot = sub.add_parser("plot", help="plot the fit of one spectrum")
    plot.add_argument("spectrum", metavar="SPECTRUM", help="spectrum file")
    _model_option(plot)
    _fit_options(plot)
    plot.add_argument("--index", type=int, default=0,
                      help="which spectrum of a multi-spectrum file (default 0)")
    plot.add_argument("--from-catalog", metavar="CATALOG",
                      help="draw the fit of this catalog's row: the spectrum fitted again "
                           "with the options the catalog recorded (Clean mask included), "
                           "checked against the row")
    plot.add_argument("-o", "--output", default="fit.png", help="image file (default fit.png)")
    _compile_cache_option(plot)
    _common(plot)

    info = sub.add_parser("info", help="describe a model: wavelength range, regimes, domain")
    info.add_argument("model", nargs="?", default=os.environ.get("JAXLASP_MODEL"),
                      metavar="MODEL", help="model file, 'elodie32' or 'demo' (default: "
                                            "$JAXLASP_MODEL, else demo)")
    _common(info)

    compare = sub.add_parser("compare", help="compare a catalog with a reference catalog "
                                             "(jaxlasp, PyLASP CSV, LAMOST LASP)")
    compare.add_argument("catalog", help="a jaxlasp catalog (CSV, ECSV, FITS, Parquet)")
    compare.add_argument("reference", help="a reference: a jaxlasp catalog, PyLASP's results "
                                           "CSV or LAMOST's LASP catalog (FITS or CSV)")
    compare.add_argument("--plot", metavar="PNG", help="also draw Δ against the reference value")
    _common(compare)

    spectrum = sub.add_parser("spectrum", help="print one model spectrum on the LAMOST grid")
    _model_option(spectrum)
    spectrum.add_argument("--teff", type=float, default=5800.0, help="effective temperature [K]")
    spectrum.add_argument("--logg", type=float, default=4.4, help="surface gravity log g [dex]")
    spectrum.add_argument("--feh", type=float, default=0.0, help="metallicity [Fe/H] [dex]")
    spectrum.add_argument("--rv", type=float, default=0.0, help="radial velocity [km/s]")
    spectrum.add_argument("--sigma", type=float, default=69.0,
                          help="broadening σ [km/s], as the catalog's sigma (default 69 ≈ one "
                               "LAMOST pixel)")
    spectrum.add_argument("--window", type=_floats(2, "--window"), default=(4200.0, 5700.0),
                          metavar="LO,HI", help="wavelength window [Å]")
    spectrum.add_argument("--full", action="store_true", help="print every pixel")
    _common(spectrum)
    return parser


# ---------------------------------------------------------------- helpers

def load_model(name, required: bool = True):
    """(emulator, description) for a model path, a named model or 'demo'; UsageError when it
    cannot be read."""
    if not name:
        if required:
            raise UsageError("no model: pass --model TGM_FILE or --model elodie32 (fetched once "
                             "into your cache), or set JAXLASP_MODEL; '--model demo' uses the "
                             "embedded demo model")
        name = DEMO
    if name == DEMO:
        from jaxlasp.emulators.demo import demo_emulator

        return demo_emulator(), "embedded DEMO model (synthetic, not ELODIE)"
    from jaxlasp.io import read_tgm

    path, description = model_source(name)
    try:
        return read_tgm(path), description
    except (OSError, ValueError, ImportError) as err:
        raise UsageError(str(err)) from err


def model_source(name) -> tuple[str, str]:
    """(model path or 'demo', description) without loading it; a named model is fetched into the
    cache first. UsageError when there is none or it cannot be fetched."""
    if not name:
        load_model(name)  # the "no model" message
    if name == DEMO:
        return DEMO, "embedded DEMO model (synthetic, not ELODIE)"
    from jaxlasp.io.model_files import (
        NAMED_MODELS,
        ModelUnavailable,
        is_named_model,
        model_dir,
        named_model_path,
    )

    if is_named_model(name):
        entry = NAMED_MODELS[name]
        if not (model_dir() / entry.filename).is_file():
            log.info("fetching the %s model (%s) once into %s", name, entry.description,
                     model_dir())
        try:
            path = named_model_path(name)
        except ModelUnavailable as err:
            raise UsageError(str(err)) from err
        return str(path), f"{name}: {entry.description}, {path}"
    return str(name), f"model file {name}"


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


def configure_compile_cache(args) -> None:
    """Turn on JAX's persistent compilation cache (``jaxlasp.compile_cache``) for commands that
    compile fits, unless --no-compile-cache (which also tells local Dask workers, through the
    environment) or JAXLASP_COMPILE_CACHE=0 says not to."""
    if not hasattr(args, "no_compile_cache"):
        return
    from jaxlasp import compile_cache

    if args.no_compile_cache:
        os.environ[compile_cache.SWITCH_ENV] = "0"
    folder = compile_cache.cache_as_configured()
    log.debug("compilation cache: %s", folder or "off")


def configure_logging(args) -> tuple:
    """jaxlasp's messages to stderr at the level --quiet/--verbose choose (other libraries' loggers
    are left alone). Returns the logger's previous (handlers, level, propagate) for
    ``restore_logging``."""
    previous = (log.handlers[:], log.level, log.propagate)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO)
    log.propagate = False
    return previous


def restore_logging(previous: tuple) -> None:
    """Put jaxlasp's logger back as it was before ``configure_logging`` (``main`` called from
    Python must not leave its stderr handler behind)."""
    log.handlers[:], level, log.propagate = previous
    log.setLevel(level)


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
    from jaxlasp.io.catalog import CatalogError, CatalogWriteError
    from jaxlasp.io.lock import CatalogLocked
    from jaxlasp.pipeline import CatalogExists, FitOptions, run

    select_device(args.device)
    model, source = model_source(args.model)  # loaded by the run, once it holds the catalog
    options = FitOptions(method=args.method, clean=args.clean, start=args.start,
                         window=fit_window_of(args), segments=args.segments, mask=args.mask,
                         mdegree=args.mdegree,
                         adegree=args.adegree, weighting=args.weighting,
                         max_iter=args.max_iter, group_size=args.group_size,
                         format=args.format, devices=args.devices, errors=args.errors,
                         readers=args.readers, reader_kind=args.reader_kind,
                         native=args.native, segment_broadening=args.segment_broadening)
    log.info("model: %s", source)
    try:
        if args.scheduler or args.dask_workers:
            summary = _fit_on_cluster(args, options)
        else:
            summary = run(args.paths, model, args.output, options, resume=args.resume,
                          quiet=args.quiet)
    except CatalogWriteError as err:
        log.error("%s; the groups finished so far are kept: make room and rerun the same command "
                  "with --resume", err.strerror)
        return EXIT_WRITE_FAILED
    except CatalogExists as err:
        raise UsageError(str(CatalogExists(err.output, "add --resume"))) from err
    except (CatalogError, CatalogLocked, ValueError, OSError, ImportError) as err:
        raise UsageError(str(err)) from err
    log.info("%d rows written to %s (%d newly fitted in %.1f s); %d not fitted or not "
             "converged, of which %d unreadable", summary.rows, args.output, summary.fitted,
             summary.seconds, summary.failed, summary.unreadable)
    if summary.stages:
        log.info("timings: %s", stage_report(summary.stages))
    return EXIT_SOME_FAILED if summary.failed else 0


def stage_report(stages: dict) -> str:
    """'setup 2.1 s, first group 14.0 s; after it: read 0.3 s, …' from ``Summary.stages``."""
    from jaxlasp.timing import describe

    head = {k: stages[k] for k in ("setup", "first group") if k in stages}
    rest = {k: v for k, v in stages.items() if k not in head}
    return (describe(head) + " (compilation included)"
            + (f"; after it: {describe(rest)}" if rest else ""))


def _fit_on_cluster(args, options):
    """``fit`` on Dask: workers load the model themselves (once each), by absolute path."""
    from jaxlasp.parallel.cluster import run_cluster

    model = args.model if args.model == DEMO else str(Path(args.model).absolute())
    return run_cluster(args.paths, model, args.output, options, scheduler=args.scheduler,
                       workers=args.dask_workers, chunk_files=args.chunk_files,
                       resume=args.resume, quiet=args.quiet)


def cmd_info(args) -> int:
    from jaxlasp.emulators.tgm import REGIMES

    if not args.model:
        log.warning("no model given (MODEL or $JAXLASP_MODEL): describing the embedded demo "
                    "model, which is synthetic, not ELODIE")
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
    from jaxlasp.mock import kms_to_pixels
    from jaxlasp.model import build_forward_model, components, theta_from_physical

    emulator, source = load_model(args.model, required=False)
    check_domain(emulator, args.teff, args.logg, args.feh, "the requested")
    grid = lamost_fit_grid(emulator.grid, tuple(args.window))
    fm = build_forward_model(emulator, grid)
    sigma_px = kms_to_pixels(args.sigma, grid.step)
    theta = jnp.asarray(theta_from_physical(args.teff, args.logg, args.feh, args.rv, sigma_px))
    flux = np.asarray(components(fm, theta, jnp.ones(grid.n), jnp.ones(grid.n)).convolved)
    wave = grid.centres
    print(f"# jaxlasp model spectrum: {source}")
    print(f"# Teff={args.teff} K logg={args.logg} [Fe/H]={args.feh} RV={args.rv} km/s "
          f"sigma={args.sigma} km/s ({sigma_px:.3f} px); "
          f"{grid.n} LAMOST pixels {wave[0]:.3f}-{wave[-1]:.3f} A (air)")
    print("# wavelength_A flux")
    rows = range(grid.n) if args.full else [*range(5), *range(grid.n - 5, grid.n)]
    for i in rows:
        if not args.full and i == grid.n - 5:
            print(f"# ... {grid.n - 10} more pixels (use --full)")
        print(f"{wave[i]:.4f} {flux[i]:.6e}")
    print(f"# flux min {flux.min():.4e} median {np.median(flux):.4e} max {flux.max():.4e}")
    return 0


def _catalog(catalog_path):
    """(catalog table, its recorded fit options or {}); UsageError when it cannot be read."""
    import json

    from jaxlasp.io.catalog import CatalogError, read_catalog

    try:
        table = read_catalog(catalog_path)
    except CatalogError as err:
        raise UsageError(str(err)) from err
    try:
        options = json.loads(table.meta.get("options") or "{}")
    except (TypeError, ValueError):
        options = {}
    return table, options


def _catalog_row(table, catalog_path, spectrum_id: str, path: str):
    """The catalog's row for the spectrum (by id, within the rows of its file where the catalog
    has paths); UsageError when there is none or it holds no parameters."""
    rows = [row for row in table if row["id"] == spectrum_id
            and ("path" not in table.colnames or row["path"] == path)]
    rows = rows or [row for row in table if row["id"] == spectrum_id]
    if not rows:
        raise UsageError(f"{catalog_path}: no row for spectrum {spectrum_id}")
    row = rows[0]
    if not np.isfinite(row["teff"]):
        raise UsageError(f"{catalog_path}: spectrum {spectrum_id} has no fitted parameters "
                         f"({row['reason']})")
    return row


def _options_from_catalog(args, options: dict) -> None:
    """Set the fit arguments of ``args`` to the options a catalog recorded (its run's)."""
    for key in ("method", "clean", "errors", "weighting", "mdegree", "adegree", "native",
                "segment_broadening"):
        if key in options:
            setattr(args, key, options[key])
    if "start" in options:
        args.start = options["start"] if isinstance(options["start"], str) else tuple(
            options["start"])
    for key in ("mask", "segments"):
        if options.get(key):
            setattr(args, key, [tuple(pair) for pair in options[key]])
    if options.get("window") and not options.get("segments"):
        args.window = tuple(options["window"])


def cmd_plot(args) -> int:
    import jax.numpy as jnp

    from jaxlasp.grids import PixelGrid, lamost_fit_grid, window_note
    from jaxlasp.groups.columns import describe_flags, result_columns
    from jaxlasp.groups.fitting import fit
    from jaxlasp.groups.inputs import initial_points, lamost_weights, mask_weights, read_for_fit
    from jaxlasp.model import (
        build_forward_model,
        components,
        fitted_pixels,
        observed_grid,
        parameter_grid,
    )
    from jaxlasp.plot import plot_fit

    catalog = None
    if args.from_catalog:  # the catalog's own options: its fit, Clean mask included, again
        catalog, options = _catalog(args.from_catalog)
        _options_from_catalog(args, options)
    emulator, _ = load_model(args.model)
    if not isinstance(args.start, str):
        check_domain(emulator, *args.start, "--start")
    window = fit_window_of(args)
    polynomials = dict(degree=args.mdegree, adegree=args.adegree,
                       segment_broadening=args.segment_broadening)
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid, window),
                             segments=args.segments, **polynomials)
    if note := window_note(fm.grid, window):
        log.warning("%s", note)
    reads = read_for_fit(Path(args.spectrum), fm.grid, window, args.format, native=args.native,
                         segments=args.segments)
    if args.index >= len(reads):
        raise UsageError(f"{args.spectrum} holds {len(reads)} spectra; --index {args.index} "
                         "is out of range")
    spectrum = reads[args.index].spectrum
    if spectrum is None:
        raise UsageError(reads[args.index].reason)
    catalog_row = (None if catalog is None else
                   _catalog_row(catalog, args.from_catalog, spectrum.id, args.spectrum))
    segments = args.segments
    if isinstance(spectrum.grid, PixelGrid):   # on its own pixels: each arm a segment
        fm = build_forward_model(emulator, pixels=spectrum.grid, **polynomials)
        segments = [(float(e[0]), float(e[-1])) for e in spectrum.grid.segment_edges]
    flux = spectrum.normalised_flux()
    weights = mask_weights(lamost_weights(spectrum, args.weighting)[None], args.mask or None,
                           observed_grid(fm))[0] * fitted_pixels(fm)
    result = fit(fm, initial_points(args.start, 1, fm), flux[None], weights[None],
                 method=args.method, clean=args.clean, max_iter=None, errors=args.errors)
    row = {k: v[0] for k, v in result_columns(result, parameter_grid(fm)).items()}
    label = f"{args.method}{' + Clean' if args.clean else ''} fit"
    if catalog_row is not None:
        label += f", as in {Path(args.from_catalog).name}"
        _check_reproduced(row, catalog_row, args.from_catalog)
    theta = np.asarray(result.theta[0])
    used = np.asarray(result.mask[0], bool) & (weights > 0)
    comps = components(fm, jnp.asarray(theta), jnp.asarray(flux), jnp.asarray(used * weights))
    flags = describe_flags(row["flags"]) or "no flags"
    noise = np.where(spectrum.ivar > 0, 1.0 / np.sqrt(np.maximum(spectrum.ivar, 1e-300))
                     / spectrum.median, np.nan)
    title = (f"{spectrum.id} ({label})\nRV {row['rv']:.2f} ± {row['rv_err']:.2f} km/s, "
             f"Teff {row['teff']:.0f} ± {row['teff_err']:.0f} K, log g {row['logg']:.3f} ± "
             f"{row['logg_err']:.3f}, [Fe/H] {row['feh']:.3f} ± {row['feh_err']:.3f}; "
             f"{_reduced_chi2(flux, comps, used, noise, theta.size)}loss {row['loss']:.4g}, "
             f"{int(row['n_pixels'])} pixels, {int(row['n_clean'])} rejected by Clean; {flags}")
    plot_fit(observed_grid(fm).centres, flux, comps, used, title, args.output, masked=args.mask,
             segments=segments, noise=noise)
    log.info("wrote %s", args.output)
    return 0


def _reduced_chi2(flux, comps, used, noise, n_parameters: int) -> str:
    """'χ²/dof X, ' against the file's noise (IVAR) over the pixels used, with the
    ``n_parameters`` of θ and the polynomial coefficients as fitted; '' where the file gives no
    noise."""
    scaled = (np.asarray(flux) - np.asarray(comps.model)) / noise
    good = np.asarray(used, bool) & np.isfinite(scaled)
    dof = int(good.sum()) - n_parameters - int(np.size(comps.coefs))
    return f"χ²/dof {np.sum(scaled[good] ** 2) / dof:.2f}, " if dof > 0 else ""


def _check_reproduced(row: dict, catalog_row, catalog: str) -> None:
    """Warn when the plot's refit is not the catalog's fit (other options, model or code)."""
    for name in ("rv", "teff", "logg", "feh"):
        error = float(catalog_row[f"{name}_err"])
        scale = error if np.isfinite(error) and error > 0 else 1.0
        if not abs(float(row[name]) - float(catalog_row[name])) <= 1e-3 * scale:
            log.warning("the plotted fit differs from %s's row: %s %.6g here, %.6g there (was "
                        "it made with another model or jaxlasp version?)", catalog, name,
                        float(row[name]), float(catalog_row[name]))
            return


def cmd_demo(args) -> int:
    from jaxlasp.demo_run import run_demo

    try:
        return run_demo(n=args.n, snr=args.snr, seed=args.seed, output_dir=Path(args.output_dir))
    except ValueError as err:
        raise UsageError(str(err)) from err


def cmd_compare(args) -> int:
    from jaxlasp.compare import QUANTITIES, compare_catalogs, plot_comparison, read_reference

    try:
        catalog, reference = read_reference(args.catalog), read_reference(args.reference)
    except (OSError, ValueError) as err:
        raise UsageError(str(err)) from err
    summary = compare_catalogs(catalog, reference)
    units = {"rv": "km/s", "teff": "K", "logg": "dex", "feh": "dex"}
    print(f"# {args.catalog} − {args.reference}: rows matched by OBSID, else by id")
    print(f"{'parameter':>10} {'n':>6} {'median Δ':>10} {'scatter':>10} {'max |Δ|':>10}  unit")
    for q in QUANTITIES:
        if q in summary:
            s = summary[q]
            print(f"{q:>10} {s['n']:6d} {s['median']:10.4g} {s['scatter']:10.4g} "
                  f"{s['max']:10.4g}  {units[q]}")
    if not any(s["n"] for s in summary.values()):
        log.error("no rows matched: the catalogs share no OBSID or id")
        return EXIT_BAD_INPUT
    if args.plot:
        plot_comparison(summary, args.plot, labels=(Path(args.catalog).stem,
                                                    Path(args.reference).stem))
        log.info("wrote %s", args.plot)
    return 0


COMMANDS = {"fit": cmd_fit, "demo": cmd_demo, "plot": cmd_plot, "info": cmd_info,
            "spectrum": cmd_spectrum, "compare": cmd_compare}


def parse_arguments(argv: list[str]):
    """Parsed ``argv``; a mistyped command or option exits 2 with the (sub)command's usage and
    the closest valid words ("did you mean …?")."""
    import difflib

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the subcommands' parsers
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        close = difflib.get_close_matches(argv[0], commands, n=1)
        parser.error(f"unknown command {argv[0]!r}" + (f" (did you mean {close[0]!r}?)"
                                                       if close else "")
                     + f"; commands: {', '.join(commands)}")
    args, extra = parser.parse_known_args(argv)
    if extra:
        sub = commands[args.command]
        options = [o for action in sub._actions for o in action.option_strings]
        hints = [f"{word} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
                 word.split("=")[0], options, n=1)) else word for word in extra]
        sub.error(f"unrecognized arguments: {' '.join(hints)}")
    return args


def main(argv=None) -> int:
    """Run the command line; returns the exit code."""
    args = parse_arguments(sys.argv[1:] if argv is None else list(argv))
    logging_before = configure_logging(args)
    configure_compile_cache(args)
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        log.error("%s", err)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, Interrupted):
        log.error("interrupted: finished groups are kept; rerun with --resume to continue")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # output piped into a reader that stopped (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        restore_logging(logging_before)
