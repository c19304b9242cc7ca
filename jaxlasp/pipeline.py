"""Batch runner: files in, one catalog out — fixed-size groups, prefetching, progress, resume.

``run`` streams the input files in groups of ``group_size`` spectra (the last group padded, so
the compiled fit is reused), reads the next group on a background thread while the current one
is fitted, and writes each group's rows as its own part file (``<output>.parts/part-NNNNNN.ecsv``,
written atomically). When every input is done the parts are merged into the catalog (atomic
rename) and removed. ``resume=True`` keeps the rows already in the catalog and in the parts and
fits only what is missing; an interrupted run therefore loses at most the group in flight.

Every input path yields at least one row: a file that cannot be read gets a row of NaNs, flag
``READ_ERROR`` and the reason, and a group whose fit raises is recorded the same way, so one bad
spectrum never stops the run.
"""
from __future__ import annotations

import logging
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import numpy as np

from jaxlasp.api import (
    COLUMNS, GLOBAL_START, READ_ERROR, check_method, empty_columns, fit_spectra, initial_points,
    load_model, make_table, read_for_fit)
from jaxlasp.fit.errors import check_errors
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.io import get_reader
from jaxlasp.io.catalog import check_writable, read_catalog, write_catalog
from jaxlasp.model import ForwardModel, build_forward_model

log = logging.getLogger("jaxlasp")

SPECTRUM_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
"""File endings taken from a directory given as input."""
LIST_SUFFIXES = (".txt", ".lst", ".list")
"""File endings read as lists of input files (one path per line, '#' starts a comment)."""
PART_SUFFIXES = (".ecsv", ".parquet")
"""Formats of part files (both keep the table's metadata: the list of completed files)."""
CATALOG_COLUMNS = (*COLUMNS, "path")
"""Catalog columns: the fit table's columns plus the input file's path."""


@dataclass(frozen=True)
class FitOptions:
    """What to fit and how (the CLI's options); see ``jaxlasp.api.fit_spectra``."""

    method: str = "lm"
    clean: bool = False
    start: tuple[float, float, float] | str = GLOBAL_START
    window: tuple[float, float] = (4200.0, 5700.0)
    weighting: str = "none"
    max_iter: int | None = None
    group_size: int = 64
    format: str = "auto"
    devices: int | None = None
    errors: str = "profile"

    def capacity(self) -> int:
        """Spectra per group: ``group_size`` per device, over ``devices`` local devices (None:
        all of the default backend)."""
        from jaxlasp.parallel.devices import device_mesh

        return self.group_size * device_mesh(self.devices).size


class Record(NamedTuple):
    """One spectrum to put in the catalog: read (``spectrum``) or not (``reason`` says why)."""

    path: str
    id: str
    spectrum: object | None
    reason: str
    last_of_file: bool


class Summary(NamedTuple):
    """What a run did: rows in the catalog, how many of them failed, newly fitted this run."""

    rows: int
    failed: int
    unreadable: int
    fitted: int
    seconds: float


# ---------------------------------------------------------------- inputs

def _is_spectrum_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(SPECTRUM_SUFFIXES)


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
        key = path.resolve()
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


def read_records(path: Path, fm: ForwardModel, window, format: str = "auto") -> list[Record]:
    """The catalog records of one input file: one per spectrum, or one saying why none."""
    reads = read_for_fit(path, fm.grid, window, format)
    return [Record(str(path), r.id, r.spectrum, r.reason, k == len(reads) - 1)
            for k, r in enumerate(reads)]


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


def prefetch(iterator: Iterator, depth: int = 1) -> Iterator:
    """Iterate ``iterator`` on a background thread, ``depth`` items ahead (I/O overlaps compute).
    An exception raised while producing is re-raised in the consumer."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                items.put(item)
            items.put(done)
        except BaseException as err:  # handed over to the consumer
            items.put(err)

    thread = threading.Thread(target=produce, daemon=True, name="jaxlasp-reader")
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def fit_group(fm: ForwardModel, group: list[Record], options: FitOptions, capacity: int):
    """The catalog table of one group: its readable spectra fitted as one batch padded to
    ``capacity`` (so every group has the compiled shape), the others as failure rows."""
    good = [k for k, r in enumerate(group) if r.spectrum is not None]
    columns = empty_columns(len(group))
    reasons = [r.reason for r in group]
    if good:
        spectra = [group[k].spectrum for k in good]
        padded = spectra + [spectra[0]] * (capacity - len(spectra))
        try:
            fitted, fit_reasons = fit_spectra(
                fm, padded, method=options.method, clean=options.clean, start=options.start,
                weighting=options.weighting, max_iter=options.max_iter,
                devices=options.devices, errors=options.errors)
        except Exception as err:  # a failed group is recorded, never fatal
            log.error("fitting a group of %d spectra failed: %s", len(good), err)
            for k in good:
                reasons[k] = f"fit failed: {err}"
        else:
            for name, values in fitted.items():
                columns[name][good] = values[:len(good)]
            for j, k in enumerate(good):
                reasons[k] = fit_reasons[j]
    table = make_table([r.id for r in group], columns, reasons)
    table["path"] = np.asarray([r.path for r in group], dtype=str)
    table.meta["complete_paths"] = [r.path for r in group if r.last_of_file]
    return table


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
    """``table`` with exactly ``CATALOG_COLUMNS`` in catalog dtypes (CSV reads lose them)."""
    from astropy.table import Table

    columns = {}
    for name in CATALOG_COLUMNS:
        values = np.asarray(table[name]) if name in table.colnames else np.full(len(table), "")
        if name in ("id", "reason", "path"):
            values = values.astype(str)
        elif name == "converged":
            values = values.astype(bool)
        elif name in ("n_iter", "n_clean", "flags"):
            values = values.astype(np.int64)
        else:
            values = values.astype(np.float64)
        columns[name] = values
    out = Table(columns, names=CATALOG_COLUMNS)
    for name in COLUMNS:
        if name in table.colnames and table[name].unit is not None:
            out[name].unit = table[name].unit
    return out


def load_done(output: Path):
    """(tables already done, complete paths, done (path, id) keys) from the catalog and parts."""
    tables, complete = [], set()
    if output.exists():
        table = normalise(read_catalog(output))
        tables.append(table)
        complete.update(table["path"])
    for part in _part_files(output):
        table = read_catalog(part)
        complete.update(table.meta.get("complete_paths", []))
        tables.append(normalise(table))
    keys = {(p, i) for t in tables for p, i in zip(t["path"], t["id"])}
    return tables, complete, keys


def merge(tables, order: dict[str, int]):
    """One table from ``tables``, rows sorted by input order (unknown paths last, stable)."""
    from astropy.table import vstack

    table = vstack(tables, metadata_conflicts="silent") if tables else normalise(
        make_table([], empty_columns(0), []))
    table.meta.pop("complete_paths", None)
    rank = np.array([order.get(p, len(order)) for p in table["path"]], np.int64)
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
    accident). Raises ValueError for bad options (method, start outside the domain, output).
    """
    t0 = time.perf_counter()
    output = Path(output)
    check_run(output, options, resume)
    options.capacity()  # ValueError for more devices than this process has
    fm = prepare_model(model, options)
    paths = expand_inputs(inputs)
    tables, complete, keys = load_done(output) if resume else ([], set(), set())
    todo = [p for p in paths if str(p) not in complete]
    log.info("%d input files, %d already done, %d to fit (%s, clean=%s, %d spectra per group)",
             len(paths), len(paths) - len(todo), len(todo), options.method, options.clean,
             options.capacity())
    folder = parts_folder(output)
    folder.mkdir(exist_ok=True)
    next_part = len(_part_files(output))
    progress = Progress(len(todo), quiet)
    files = spectra = failed = 0
    for group, table in fit_paths(fm, todo, options, keys):
        write_catalog(table, folder / f"part-{next_part:06d}.ecsv")
        next_part += 1
        tables.append(normalise(table))
        files += sum(r.last_of_file for r in group)
        spectra += len(group)
        failed += int(np.count_nonzero(~np.asarray(table["converged"])))
        progress.update(files, spectra, failed)
    return finish_catalog(output, tables, paths, spectra, t0)


def check_run(output: Path, options: FitOptions, resume: bool) -> None:
    """Raise ValueError for bad options or an output that exists without ``resume``."""
    check_method(options.method)
    check_errors(options.errors)
    if options.group_size < 1:
        raise ValueError(f"group size must be ≥ 1, not {options.group_size}")
    if options.format != "auto":
        get_reader(options.format)  # ValueError naming the registered readers
    check_writable(output)
    if not resume and (output.exists() or parts_folder(output).exists()):
        raise ValueError(f"{output} (or its parts folder) already exists: pass resume=True "
                         "(--resume) to continue it, or remove it")


def prepare_model(model, options: FitOptions) -> ForwardModel:
    """The forward model for ``options.window``; ValueError for a start outside its domain."""
    emulator = load_model(model)
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid, tuple(options.window)))
    initial_points(options.start, 1, fm)
    return fm


def fit_paths(fm: ForwardModel, paths, options: FitOptions, skip=frozenset()):
    """(group, table) for each group of the spectra in ``paths`` (in order, read on a background
    thread while the previous group is fitted); spectra whose (path, id) is in ``skip`` are left
    out (already in the catalog)."""
    def records():
        for path in paths:
            for record in read_records(path, fm, options.window, options.format):
                if (record.path, record.id) not in skip:
                    yield record

    capacity = options.capacity()
    for group in prefetch(group_records(records(), capacity)):
        yield group, fit_group(fm, group, options, capacity)


def finish_catalog(output: Path, tables, paths, fitted: int, t0: float) -> Summary:
    """Merge ``tables`` in the order of ``paths`` into ``output``, remove the parts folder and
    summarise the run (``fitted`` spectra this run, started at ``t0``)."""
    catalog = merge(tables, {str(p): k for k, p in enumerate(paths)})
    write_catalog(catalog, output)
    shutil.rmtree(parts_folder(output), ignore_errors=True)  # parts and stale temporary files
    failures = ~np.asarray(catalog["converged"], bool)
    unreadable = (np.asarray(catalog["flags"]) & READ_ERROR) != 0
    return Summary(len(catalog), int(failures.sum()), int(unreadable.sum()), fitted,
                   time.perf_counter() - t0)
