"""Batch runner: files in, one catalog out — fixed-size groups, read-ahead, progress, resume.

``run`` streams the input files in groups of ``group_size`` spectra (the last group padded, so
the compiled fit is reused), reads the files ahead of the fit on a pool of reader threads or
processes (``read_ahead``, sized by ``FitOptions.reader_pool``), times every stage (read, fit,
errors, write, fitter idle: ``Summary.stages``), and writes each group's rows as its own part
file (``<output>.parts/part-NNNNNN.ecsv``, written atomically). When every input is done the
parts are merged into the catalog (atomic rename) and removed. ``resume=True`` keeps the rows
already in the catalog and in the parts and fits only what is missing; an interrupted run
therefore loses at most the group in flight. One run per catalog (``jaxlasp.io.lock``); inputs are
known by their real path (``input_key``); the options are recorded with every part and a resume
with other options is refused (``run_options``).

Every input path yields at least one row: a file that cannot be read gets a row of NaNs, flag
``READ_ERROR`` and the reason, and a group whose fit raises is recorded the same way, so one bad
spectrum never stops the run.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import multiprocessing
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache, partial
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np

from jaxlasp.fit.errors import check_errors
from jaxlasp.grids import LogGrid, PixelGrid, lamost_fit_grid, window_note
from jaxlasp.groups.columns import (
    COLUMNS,
    DESCRIPTIONS,
    INTEGER_COLUMNS,
    READ_ERROR,
    UNITS,
    broadening_columns,
    describe,
    empty_columns,
    make_table,
    put_rows,
    unit,
    with_broadening,
)
from jaxlasp.groups.fitting import check_method, fit_spectrum_group
from jaxlasp.groups.inputs import DEMO_MODEL, GLOBAL_START, initial_points, load_model, read_for_fit
from jaxlasp.io import get_reader
from jaxlasp.io.catalog import check_writable, read_catalog, temporary_files, write_catalog
from jaxlasp.io.lamost import SURVEY_KEYS, file_stem
from jaxlasp.io.lock import catalog_lock
from jaxlasp.model import ForwardModel, build_forward_model
from jaxlasp.parallel.devices import device_mesh
from jaxlasp.spectral.continuum import DEGREE
from jaxlasp.spectral.masks import Intervals, fit_window
from jaxlasp.timing import StageClock

log = logging.getLogger("jaxlasp")

SPECTRUM_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
"""File endings taken from a directory given as input."""
LIST_SUFFIXES = (".txt", ".lst", ".list")
"""File endings read as lists of input files (one path per line, '#' starts a comment)."""
PART_SUFFIXES = (".ecsv", ".parquet")
"""Formats of part files (both keep the table's metadata: the list of completed files)."""
SURVEY_COLUMNS = SURVEY_KEYS
"""Catalog columns carried from the input files (``Spectrum.survey``): -1 (ids) or NaN where the
file does not say."""
SURVEY_IDS = ("obsid", "targetid")
CATALOG_COLUMNS = (*COLUMNS, *SURVEY_COLUMNS, "path")
"""Catalog columns: the fit table's columns, the survey's and the input file's path."""
CATALOG_DESCRIPTIONS = {
    **DESCRIPTIONS, "obsid": "LAMOST OBSID (-1: not a LAMOST file)",
    "targetid": "DESI TARGETID (-1: not a DESI file)", "ra": "right ascension (J2000) from the "
    "file (LAMOST RA, DESI TARGET_RA)", "dec": "declination (J2000) from the file",
    **{f"snr_{band}": f"LAMOST signal-to-noise ratio in the {band} band (header SNR{band.upper()})"
       for band in "ugriz"}}
CATALOG_UNITS = {**UNITS, "ra": "deg", "dec": "deg"}


@dataclass(frozen=True)
class FitOptions:
    """What to fit and how (the CLI's options); see ``jaxlasp.api.fit_files``."""

    method: str = "lm"
    clean: bool = False
    start: tuple[float, float, float] | str = GLOBAL_START
    window: tuple[float, float] = (4200.0, 5700.0)
    mask: Intervals = ()
    segments: Intervals = ()
    mdegree: int = DEGREE
    adegree: int = -1
    weighting: str = "none"
    max_iter: int | None = None
    group_size: int = 64
    format: str = "auto"
    devices: int | None = None
    errors: str = "profile"
    readers: int | None = None
    reader_kind: str = "auto"
    native: bool = True
    segment_broadening: bool = False

    def fit_window(self) -> tuple[float, float]:
        """The window read and fitted: the span of ``segments`` when given, else ``window``."""
        return fit_window(None, self.segments) if self.segments else tuple(self.window)

    def capacity(self) -> int:
        """Spectra per group: ``group_size`` per device, over ``devices`` local devices (None:
        all of the default backend)."""
        return self.group_size * device_mesh(self.devices).size

    def reader_pool(self) -> tuple[int, str]:
        """(workers, "thread" | "process") reading the input files (``read_ahead``).

        ``readers`` None sizes the pool to the machine: on the CPU backend one thread (reading a
        file costs a few per cent of fitting it, and the fit needs the cores); on an accelerator
        every host core but one, in processes (the readers' Python code holds the GIL).
        ``reader_kind`` "auto" picks threads on the CPU backend, processes otherwise.
        """
        import jax

        on_cpu = jax.default_backend() == "cpu"
        workers = self.readers or (1 if on_cpu else max(1, (os.cpu_count() or 2) - 1))
        kind = self.reader_kind if self.reader_kind != "auto" else (
            "thread" if on_cpu else "process")
        return workers, kind


def run_options(options: FitOptions, model) -> str:
    """What a catalog's numbers depend on, as JSON: the fit options and the model (its file's
    name and SHA-256, "demo", or an in-memory emulator). Stored with every part and in the
    catalog's metadata; a resume with other options is refused (``check_same_options``)."""
    return json.dumps({
        "method": options.method, "clean": options.clean, "errors": options.errors,
        "start": options.start if isinstance(options.start, str) else list(options.start),
        "window": list(options.window), "weighting": options.weighting,
        "max_iter": options.max_iter, "format": options.format, "model": model_identity(model),
        # recorded only when set, so that catalogs from before masks existed resume as they are
        **({"mask": [list(pair) for pair in options.mask]} if options.mask else {}),
        **({"segments": [list(pair) for pair in options.segments]} if options.segments else {}),
        **({"mdegree": options.mdegree} if options.mdegree != DEGREE else {}),
        **({"adegree": options.adegree} if options.adegree != -1 else {}),
        **({"segment_broadening": True} if options.segment_broadening else {}),
        "native": options.native},
        sort_keys=True)


def model_identity(model) -> str:
    """'NAME sha256:…' of a model file, 'demo', or 'an emulator object' (not checkable)."""
    if isinstance(model, (str, Path)) and str(model) != DEMO_MODEL:
        return f"{Path(model).name} sha256:{_file_digest(os.path.realpath(model))}"
    return DEMO_MODEL if isinstance(model, str) else "an emulator object"


@lru_cache(maxsize=8)
def _file_digest(path: str) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def check_same_options(tables, expected: str, output: Path) -> None:
    """Raise ValueError naming the differences when a table done earlier (catalog or part)
    was fitted with other options than ``expected`` (``run_options``); tables that predate the
    record (or a CSV catalog, which keeps no metadata) are taken as they are. A record from
    before native pixels counts as ``native`` False when its table holds DESI rows (they were
    joined onto the lattice), else as whatever is asked now (no other file has a native form)."""
    want = json.loads(expected)
    for table in tables:
        found = table.meta.get("options")
        if not found or found == expected:
            continue
        had = json.loads(found)
        if "native" not in had:   # from before native pixels: DESI spectra were fitted joined
            had["native"] = want.get("native") if not _has_native_rows(table) else False
        changes = [f"{k}: {had.get(k)!r} then, {want.get(k)!r} now"
                   for k in sorted(set(had) | set(want)) if had.get(k) != want.get(k)]
        if not changes:
            continue
        raise ValueError(f"{output} was started with other options ({'; '.join(changes)}); "
                         "resume with the same options, or write a new catalog")


def _has_native_rows(table) -> bool:
    """Whether a catalog table holds spectra of a reader with a native form (DESI: a TARGETID)."""
    return "targetid" in table.colnames and bool(np.any(np.asarray(table["targetid"]) >= 0))


class Record(NamedTuple):
    """One spectrum to put in the catalog: read (``spectrum``) or not (``reason`` says why)."""

    path: str
    id: str
    spectrum: object | None
    reason: str
    last_of_file: bool


class Summary(NamedTuple):
    """What a run did: rows in the catalog, how many of them failed, newly fitted this run, its
    wall time [s] and the split of that time by stage (``jaxlasp.timing.STAGES``; "setup": model
    and inputs before the first group; "first group": its wall time, compilation included)."""

    rows: int
    failed: int
    unreadable: int
    fitted: int
    seconds: float
    stages: Mapping[str, float] = MappingProxyType({})


# ---------------------------------------------------------------- inputs

def _is_spectrum_file(path: Path) -> bool:
    """A FITS file by its name: a file, or a link (even a broken or looping one, which then
    gets a row saying why it cannot be read)."""
    return (path.is_file() or path.is_symlink()) and path.name.lower().endswith(SPECTRUM_SUFFIXES)


def input_key(path) -> str:
    """What identifies an input file across runs: its resolved real path (however it was typed;
    a link loop resolves without error)."""
    return os.path.realpath(path)


def _listed_paths(listing: Path) -> list[Path]:
    """Paths named in a text file, relative ones taken from the listing's folder."""
    paths = []
    for line in listing.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            path = Path(line).expanduser()
            paths.append(path if path.is_absolute() else listing.parent / path)
    return paths


def expand_inputs(paths: Iterable) -> list[Path]:
    """The spectrum files named by ``paths``: files, directories (searched recursively for
    FITS files, sorted) and text lists. Each file appears once, in first-seen order; a path that
    does not exist is kept, so that it gets a row saying so."""
    found, seen = [], set()

    def add(path: Path):
        key = input_key(path)
        if key not in seen:
            seen.add(key)
            found.append(path)

    for path in map(Path, paths):
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if _is_spectrum_file(p)):
                add(file)
        elif path.is_file() and path.name.lower().endswith(LIST_SUFFIXES):
            for file in _listed_paths(path):
                add(file)
        else:
            add(path)
    return found


def read_records(path: Path, grid: LogGrid, window, format: str = "auto", *,
                 native: bool = False, segments=()) -> list[Record]:
    """The catalog records of one input file: one per spectrum, or one saying why none
    (``native``, ``segments``: as ``jaxlasp.groups.inputs.read_for_fit``)."""
    reads = read_for_fit(path, grid, window, format, native=native, segments=segments)
    return [Record(str(path), r.id, r.spectrum, r.reason, k == len(reads) - 1)
            for k, r in enumerate(reads)]


def _timed_read(path: Path, grid: LogGrid, window, format: str, native: bool = False,
                segments=()) -> tuple[list[Record], float]:
    """(``read_records``, seconds it took): what a reader worker returns. Whatever a file does to
    the reader (links, permissions, decompression, a plug-in reader's bug) becomes a record
    with the reason, never an exception that would stop the run."""
    start = time.perf_counter()
    try:
        records = read_records(path, grid, window, format, native=native, segments=segments)
    except Exception as err:
        reason = f"{path}: cannot be read ({type(err).__name__}: {err})"
        records = [Record(str(path), file_stem(path), None, reason, True)]
    return records, time.perf_counter() - start


def read_ahead(paths, read, *, workers: int = 1, kind: str = "thread", spectra_ahead: int = 128,
               clock: StageClock | None = None) -> Iterator[list[Record]]:
    """``read(path)`` → (records, seconds) for each path, yielded in input order, computed on a
    pool of ``workers`` threads or processes (``kind``) ahead of the consumer.

    The pool keeps about ``spectra_ahead`` spectra in flight (in files: ``spectra_ahead`` over
    the mean spectra per file seen so far, at least 2 per worker), so a many-spectrum file does
    not fill the memory. ``clock`` gets the readers' time as "read" and the consumer's waits as
    "idle". ``read`` must be picklable for processes (a module-level function or partial).
    """
    clock = clock or StageClock()
    if kind not in ("thread", "process"):
        raise ValueError(f"reader kind must be 'thread' or 'process', not {kind!r}")
    if kind == "process":
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="jaxlasp-reader")
    pending: deque = deque()
    paths = iter(paths)
    files = spectra = 0
    try:
        while True:
            per_file = spectra / files if files else 1.0
            limit = max(2 * workers, int(spectra_ahead / max(per_file, 1.0)))
            for path in itertools.islice(paths, max(0, limit - len(pending))):
                pending.append(pool.submit(read, path))
            if not pending:
                return
            waited = time.perf_counter()
            records, seconds = pending.popleft().result()
            clock.add("idle", time.perf_counter() - waited)
            clock.add("read", seconds)
            files, spectra = files + 1, spectra + len(records)
            yield records
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- grouping

def group_records(records: Iterable[Record], group_size: int) -> Iterator[list[Record]]:
    """Consecutive records in groups holding ``group_size`` readable spectra (the last fewer);
    unreadable records travel with the group they arrive in."""
    group, n_good = [], 0
    for record in records:
        group.append(record)
        n_good += record.spectrum is not None
        if n_good == group_size:
            yield group
            group, n_good = [], 0
    if group:
        yield group


def fit_group(models: RunModels, group: list[Record], options: FitOptions, capacity: int,
              clock: StageClock | None = None):
    """The catalog table of one group: its readable spectra fitted in batches padded to
    ``capacity`` (so every group has the compiled shape), one batch per pixel grid (one batch
    unless native spectra on several grids share the group), the others as failure rows.
    ``clock`` gets the time of each stage (``jaxlasp.timing``)."""
    batches: dict = {}
    for k, r in enumerate(group):
        if r.spectrum is not None:
            batches.setdefault(models.key(r.spectrum.grid), []).append(k)
    columns = empty_columns(len(group))
    reasons = [r.reason for r in group]
    for key, good in batches.items():
        spectra = [group[k].spectrum for k in good]
        padded = spectra + [spectra[0]] * (capacity - len(spectra))
        try:
            fitted, fit_reasons = fit_spectrum_group(
                models.for_key(key), padded, method=options.method, clean=options.clean,
                start=options.start, weighting=options.weighting, max_iter=options.max_iter,
                devices=options.devices, errors=options.errors, mask=options.mask or None,
                timer=clock)
        except Exception as err:  # a failed group is recorded, never fatal
            log.error("fitting a group of %d spectra failed: %s", len(good), err)
            for k in good:
                reasons[k] = f"fit failed: {err}"
        else:
            put_rows(columns, good, fitted)
            for j, k in enumerate(good):
                reasons[k] = fit_reasons[j]
    table = make_table([r.id for r in group], columns, reasons)
    for name, values in survey_columns([r.spectrum for r in group]).items():
        table[name] = values
    table["path"] = np.asarray([r.path for r in group], dtype=str)
    table.meta["complete_paths"] = [r.path for r in group if r.last_of_file]
    return table


def survey_columns(spectra) -> dict[str, np.ndarray]:
    """``SURVEY_COLUMNS`` for the rows of ``spectra`` (None for a file that could not be read):
    the readers' ``Spectrum.survey`` values, -1 or NaN where there are none."""
    columns = {name: np.full(len(spectra), -1, np.int64) if name in SURVEY_IDS
               else np.full(len(spectra), np.nan) for name in SURVEY_COLUMNS}
    for row, spectrum in enumerate(spectra):
        for name, value in (spectrum.survey.items() if spectrum is not None else ()):
            columns[name][row] = value
    return columns


# ---------------------------------------------------------------- catalog parts and resume

def parts_folder(output: Path) -> Path:
    """Where the per-group part files of ``output`` are kept until the final merge."""
    return output.with_name(output.name + ".parts")


def _part_files(output: Path) -> list[Path]:
    folder = parts_folder(output)
    if not folder.is_dir():
        return []
    return sorted(p for suffix in PART_SUFFIXES for p in folder.glob(f"part-*{suffix}"))


def normalise(table):
    """``table`` with exactly ``CATALOG_COLUMNS`` (and its per-segment broadening columns,
    ``broadening_columns``) in catalog dtypes (CSV reads lose them)."""
    from astropy.table import Table

    columns = {}
    names = with_broadening(CATALOG_COLUMNS, broadening_columns(table.colnames))
    for name in names:
        kind = (str if name in ("id", "reason", "path") else bool if name == "converged"
                else np.int64 if name in (*INTEGER_COLUMNS, *SURVEY_IDS) else np.float64)
        if name in table.colnames:
            values = np.asarray(table[name]).astype(kind)
        else:  # a catalog written before the column existed
            values = np.full(len(table), np.nan if kind is np.float64 else -1 if name in
                             SURVEY_IDS else kind())
        columns[name] = values
    out = Table(columns, names=names)
    for name in names:
        out[name].unit = CATALOG_UNITS.get(name, unit(name))
    return out


def load_done(output: Path):
    """(tables already done, complete input keys, done (input key, id) keys) from the catalog
    and the parts. A row whose (input, id) an earlier table already holds is dropped, so that
    whatever a kill left (a merged catalog beside its parts, say) counts each spectrum once."""
    tables, complete, keys = [], set(), set()
    sources = ([output] if output.exists() else []) + _part_files(output)
    for source in sources:
        table = read_catalog(source)
        complete.update(input_key(p) for p in (table["path"] if source == output
                                                else table.meta.get("complete_paths", [])))
        kept = {key: table.meta[key] for key in ("options", "created") if table.meta.get(key)}
        table = normalise(table)
        table.meta.update(kept)
        rows = [(input_key(p), i) for p, i in zip(table["path"], table["id"])]
        new = np.array([row not in keys for row in rows], bool)
        keys.update(rows)
        tables.append(table[new] if not new.all() else table)
    return tables, complete, keys


def merge(tables, order: dict[str, int]):
    """One table from ``tables``, rows sorted by input order (``order``: input key → rank;
    unknown paths last, stable)."""
    from astropy.table import vstack

    table = vstack(tables, metadata_conflicts="silent") if tables else normalise(
        make_table([], empty_columns(0), []))
    for name in broadening_columns(table.colnames):  # parts with fewer segments: NaN
        if hasattr(table[name], "filled"):
            table[name] = table[name].filled(np.nan)
    table.meta.pop("complete_paths", None)
    rank = np.array([order.get(input_key(p), len(order)) for p in table["path"]], np.int64)
    return table[np.argsort(rank, kind="stable")]


# ---------------------------------------------------------------- progress

class Progress:
    """Files done, spectra/s and ETA: a bar on a terminal, else a log line every ``every`` s."""

    def __init__(self, total_files: int, quiet: bool = False, every: float = 10.0):
        self.total, self.quiet, self.every = total_files, quiet, every
        self.start = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()

    def update(self, files: int, spectra: int, failed: int) -> None:
        now = time.perf_counter()
        if self.quiet or (not self.tty and now - self.last < self.every and files < self.total):
            return
        self.last = now
        rate = spectra / max(now - self.start, 1e-9)
        eta = (self.total - files) * (now - self.start) / max(files, 1)
        text = (f"{files}/{self.total} files, {spectra} spectra, {failed} failed, "
                f"{rate:.1f} spectra/s, ETA {eta:.0f} s")
        if self.tty:
            sys.stderr.write(f"\r{text}" + ("\n" if files >= self.total else ""))
            sys.stderr.flush()
        else:
            log.info(text)


# ---------------------------------------------------------------- the run

def run(inputs, model, output, options: FitOptions = FitOptions(), *, resume: bool = False,
        quiet: bool = False) -> Summary:
    """Fit every spectrum in ``inputs`` (files, directories, lists) and write ``output``.

    model: TGM file path or ``TGMEmulator``. output: catalog path (.csv, .ecsv, .fits, .parquet).
    Without ``resume`` an existing catalog or parts folder is an error (nothing is overwritten by
    accident). Raises ValueError for bad options (method, start outside the domain, output) or
    inputs without any spectrum file, and ``CatalogLocked`` while another run writes ``output``
    (``jaxlasp.io.lock``; taken before the model is loaded).
    """
    t0 = time.perf_counter()
    output = Path(output)
    check_options(output, options)
    with catalog_lock(output):
        check_fresh(output, resume)
        return _run_locked(inputs, model, output, options, resume, quiet, t0)


def _run_locked(inputs, model, output: Path, options: FitOptions, resume: bool, quiet: bool,
                t0: float) -> Summary:
    """``run`` once the catalog's lock is held."""
    paths = expand_inputs(inputs)
    check_found(paths, inputs)
    models = prepare_models(model, options)
    stamp = run_options(options, model)
    tables, complete, keys = load_done(output) if resume else ([], set(), set())
    check_same_options(tables, stamp, output)
    todo = [p for p in paths if input_key(p) not in complete]
    workers, kind = options.reader_pool()
    log.info("%d input files, %d already done, %d to fit (%s, clean=%s, %d spectra per group, "
             "%d reader %s%s)", len(paths), len(paths) - len(todo), len(todo), options.method,
             options.clean, options.capacity(), workers, kind, "s" if workers > 1 else "")
    folder = parts_folder(output)
    folder.mkdir(exist_ok=True)
    next_part = len(_part_files(output))
    progress = Progress(len(todo), quiet)
    files = spectra = failed = 0
    clock = StageClock()
    setup = time.perf_counter() - t0
    first_group: dict | None = None
    group_started = time.perf_counter()
    for group, table in fit_paths(models, todo, options, keys, clock):
        table.meta["options"] = stamp
        with clock("write"):
            write_catalog(table, folder / f"part-{next_part:06d}.ecsv")
            tables.append(normalise(table))
        next_part += 1
        files += sum(r.last_of_file for r in group)
        spectra += len(group)
        failed += int(np.count_nonzero(~np.asarray(table["converged"])))
        progress.update(files, spectra, failed)
        if first_group is None:
            first_group = {"wall": time.perf_counter() - group_started, **clock.as_dict()}
    with clock("write"):
        summary = finish_catalog(output, tables, paths, spectra, t0, stamp)
    stages = {"setup": setup, "first group": (first_group or {}).get("wall", 0.0),
              **steady_stages(clock.as_dict(), first_group or {})}
    return summary._replace(stages=stages)


def steady_stages(total: dict[str, float], first: dict[str, float]) -> dict[str, float]:
    """Seconds per stage after the first group (``total`` minus ``first``): the steady state
    without the compilation the first group pays."""
    return {name: seconds - first.get(name, 0.0) for name, seconds in total.items()}


def check_options(output: Path, options: FitOptions) -> None:
    """Raise ValueError for bad options or an output that cannot be written."""
    check_method(options.method)
    check_errors(options.errors)
    if options.group_size < 1:
        raise ValueError(f"group size must be ≥ 1, not {options.group_size}")
    if options.readers is not None and options.readers < 1:
        raise ValueError(f"readers must be ≥ 1, not {options.readers}")
    if options.reader_kind not in ("auto", "thread", "process"):
        raise ValueError(f"reader kind must be 'auto', 'thread' or 'process', not "
                         f"{options.reader_kind!r}")
    if options.format != "auto":
        get_reader(options.format)  # ValueError naming the registered readers
    check_writable(output)
    options.capacity()  # ValueError for more devices than this process has


class CatalogExists(ValueError):
    """The catalog (or its parts) exists and no resume was asked for."""

    def __init__(self, output: Path, how: str = "pass resume=True"):
        super().__init__(f"{output} (or its parts folder) already exists: {how} to continue it, "
                         "or remove it")
        self.output = output


def check_fresh(output: Path, resume: bool) -> None:
    """Raise ``CatalogExists`` when ``output`` or its parts exist and ``resume`` is not given."""
    if not resume and (output.exists() or parts_folder(output).exists()):
        raise CatalogExists(output)


def check_found(paths: list[Path], inputs) -> None:
    """Raise ValueError when the inputs name no spectrum file at all."""
    if not paths:
        raise ValueError(f"no spectrum files in {', '.join(map(str, inputs)) or 'the inputs'} "
                         f"(files ending {', '.join(SPECTRUM_SUFFIXES)}, folders holding such "
                         "files, or lists of them)")


MAX_NATIVE_MODELS = 8
"""Native forward models a run keeps (one per pixel grid met; the oldest is dropped beyond)."""


@dataclass
class RunModels:
    """The forward models of a run: ``lattice`` for spectra on LAMOST's lattice (cut to its fit
    grid) and, for spectra on their own pixels (``FitOptions.native``), one per
    ``PixelGrid``, built from ``emulator`` when first met."""

    lattice: ForwardModel
    emulator: object
    options: FitOptions
    native: dict = field(default_factory=dict)

    @staticmethod
    def key(grid) -> PixelGrid | None:
        """Which model fits spectra on ``grid``: the native pixel grid, or None (lattice)."""
        return grid if isinstance(grid, PixelGrid) else None

    def for_key(self, key: PixelGrid | None) -> ForwardModel:
        """The forward model for ``key`` (``key``), built and kept when new."""
        if key is None:
            return self.lattice
        if key not in self.native:
            if len(self.native) >= MAX_NATIVE_MODELS:
                self.native.pop(next(iter(self.native)))
            self.native[key] = build_forward_model(
                self.emulator, pixels=key, degree=self.options.mdegree,
                adegree=self.options.adegree,
                segment_broadening=self.options.segment_broadening)
        return self.native[key]


def prepare_models(model, options: FitOptions) -> RunModels:
    """The run's ``RunModels`` (``prepare_model`` for the lattice one)."""
    emulator = load_model(model)
    return RunModels(prepare_model(emulator, options), emulator, options)


def prepare_model(model, options: FitOptions) -> ForwardModel:
    """The forward model for ``options.window``; ValueError for a start outside its domain."""
    emulator = load_model(model)
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid, options.fit_window()),
                             degree=options.mdegree, adegree=options.adegree,
                             segments=options.segments,
                             segment_broadening=options.segment_broadening)
    if note := window_note(fm.grid, options.fit_window()):
        log.warning("%s", note)
    if options.segment_broadening and len(options.segments) < 2:
        log.warning("a σ per segment with a single window: spectra on the LAMOST lattice keep "
                    "one σ; only spectra on their own pixels with several cameras (DESI) get one "
                    "per camera (give --segments for windows of their own)")
    initial_points(options.start, 1, fm)
    return fm


def fit_paths(models: RunModels, paths, options: FitOptions, skip=frozenset(),
              clock: StageClock | None = None):
    """(group, table) for each group of the spectra in ``paths``, in order; the files are read
    ahead of the fit by ``options.reader_pool()`` workers (``read_ahead``). Spectra whose
    (input key, id) is in ``skip`` are left out (already in the catalog). ``clock`` gets the time of
    each stage."""
    clock = clock or StageClock()
    workers, kind = options.reader_pool()
    capacity = options.capacity()
    read = partial(_timed_read, grid=models.lattice.grid, window=options.fit_window(),
                   format=options.format, native=options.native, segments=options.segments)
    records = (record
               for file_records in read_ahead(paths, read, workers=workers, kind=kind,
                                              spectra_ahead=2 * capacity, clock=clock)
               for record in file_records if (input_key(record.path), record.id) not in skip)
    for group in group_records(records, capacity):
        yield group, fit_group(models, group, options, capacity, clock)


def jaxlasp_version() -> str:
    """The installed jaxlasp's version ("unknown" when run from a source tree not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jaxlasp")
    except PackageNotFoundError:
        return "unknown"


def finish_catalog(output: Path, tables, paths, fitted: int, t0: float,
                   options: str | None = None) -> Summary:
    """Merge ``tables`` in the order of ``paths`` into ``output`` (with the ``run_options``
    record ``options``, the jaxlasp version and the time the catalog was first created — a
    resumed catalog keeps it — in its metadata), remove the parts folder and summarise the run
    (``fitted`` spectra this run, started at ``t0``)."""
    catalog = merge(tables, {input_key(p): k for k, p in enumerate(paths)})
    for name in catalog.colnames:
        catalog[name].description = CATALOG_DESCRIPTIONS.get(name) or describe(name)
    earlier = [t.meta["created"] for t in tables if t.meta.get("created")]  # a resumed catalog
    catalog.meta.clear()  # in one order, so that a resume that fits nothing writes the same bytes
    if options:
        catalog.meta["options"] = options
    catalog.meta["jaxlasp"] = jaxlasp_version()  # keys of ≤ 8 letters: plain FITS cards
    catalog.meta["created"] = (min(earlier) if earlier
                               else datetime.now(UTC).isoformat(timespec="seconds"))
    write_catalog(catalog, output)
    shutil.rmtree(parts_folder(output), ignore_errors=True)  # parts and stale temporary files
    for stale in temporary_files(output):  # a killed run's half-written catalog (lock held)
        stale.unlink(missing_ok=True)
    failures = ~np.asarray(catalog["converged"], bool)
    unreadable = (np.asarray(catalog["flags"]) & READ_ERROR) != 0
    return Summary(len(catalog), int(failures.sum()), int(unreadable.sum()), fitted,
                   time.perf_counter() - t0)
