"""Fit many files on a Dask cluster: chunks of files, one part file per chunk, one final merge.

The client (``run_cluster``) expands the inputs, leaves out the files a resumed catalog already
holds, cuts the rest into chunks of ``chunk_files`` files and submits one task per chunk. A worker
(``fit_chunk``) fits its chunk exactly as the single-process pipeline does (same groups, padding
and flags; the model is loaded once per worker process and its compiled programs are reused) and
writes the chunk's rows atomically as its own part file,
``<catalog>.parts/part-chunk-<hash>.parquet`` for a Parquet catalog, ``….ecsv`` otherwise (named
by the chunk's content, so a retried chunk overwrites its own part and never duplicates rows).
When every chunk is done the client merges the parts in input order into the catalog.

Failures: a task that raises is retried ``retries`` times; a worker that dies (killed, out of
memory, node lost) has its chunk rescheduled on another worker by Dask's scheduler. A chunk that
still fails becomes rows flagged ``READ_ERROR`` with the reason, so every input has a row. An
interrupted run is resumed with ``resume=True``: finished chunks are kept, the rest is re-chunked.

Parts are Parquet or ECSV because both keep the table's metadata (the list of completed files
that resuming needs) and float64 exactly; FITS headers cannot hold that list, so a FITS (or CSV)
catalog is merged from ECSV parts.
Workers must see the inputs and the catalog's folder at the same paths (a shared file system).
``dask[distributed]`` is an optional extra (``pip install 'jaxlasp[cluster]'``).
"""
from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxlasp.compile_cache import cache_as_configured
from jaxlasp.groups.columns import empty_columns, make_table
from jaxlasp.groups.inputs import load_model
from jaxlasp.io.catalog import write_catalog
from jaxlasp.io.lamost import file_stem
from jaxlasp.io.lock import catalog_lock
from jaxlasp.pipeline import (
    FitOptions,
    Progress,
    Summary,
    check_found,
    check_fresh,
    check_options,
    check_same_options,
    expand_inputs,
    finish_catalog,
    fit_paths,
    input_key,
    load_done,
    normalise,
    parts_folder,
    prepare_model,
    prepare_models,
    run_options,
)

log = logging.getLogger("jaxlasp")

CHUNK_FILES = 512
"""Default number of input files per chunk (one task, one part file)."""
RETRIES = 2
"""Default number of times a chunk whose task raised is tried again."""


class ChunkReport(NamedTuple):
    """What a worker did with one chunk."""

    part: str      # the part file written
    files: int
    spectra: int
    failed: int    # rows not converged (unreadable included)
    seconds: float
    worker: str    # the worker's address ('' outside a Dask worker)


def chunk_part_name(paths, output) -> str:
    """The part file name of a chunk of the catalog ``output``: a hash of its paths (stable
    across runs and retries), Parquet for a Parquet catalog, else ECSV."""
    digest = hashlib.sha1("\n".join(map(str, paths)).encode()).hexdigest()[:16]
    suffix = ".parquet" if Path(output).suffix.lower() == ".parquet" else ".ecsv"
    return f"part-chunk-{digest}{suffix}"


@lru_cache(maxsize=4)
def _worker_model(model: str, options: FitOptions):
    """The forward model on the worker, built once per (model, options) per process (with the
    persistent compilation cache unless $JAXLASP_COMPILE_CACHE turns it off)."""
    cache_as_configured()
    return prepare_models(model, options)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return ""


def fit_chunk(paths: list[str], model, options: FitOptions, part: str,
              skip=frozenset()) -> ChunkReport:
    """Fit the files ``paths`` and write their rows to the part file ``part`` (atomically).

    model: a TGM path or "demo" (loaded once per process), or an emulator (e.g. scattered by the
    client). skip: (path, id) pairs already in the catalog, left out.
    """
    from astropy.table import vstack

    t0 = time.perf_counter()
    models = (_worker_model(str(model), options) if isinstance(model, (str, Path))
              else prepare_models(model, options))
    tables = [normalise(table) for _, table in fit_paths(models, paths, options, skip)]
    table = (vstack(tables, metadata_conflicts="silent") if tables
             else normalise(make_table([], empty_columns(0), [])))
    table.meta["complete_paths"] = list(paths)
    table.meta["options"] = run_options(options, model)
    write_catalog(table, part)
    failed = int(np.count_nonzero(~np.asarray(table["converged"], bool)))
    return ChunkReport(part, len(paths), len(table), failed, time.perf_counter() - t0,
                       _worker_address())


def failed_chunk_table(paths, reason: str):
    """Catalog rows for the files of a chunk that could not be fitted on the cluster."""
    table = make_table([file_stem(p) for p in paths], empty_columns(len(paths)),
                       [reason] * len(paths))
    table["path"] = np.asarray([str(p) for p in paths], dtype=str)
    table.meta["complete_paths"] = [str(p) for p in paths]
    return normalise(table)


def connect(scheduler: str | None = None, workers: int | None = None):
    """A ``distributed.Client``: to the scheduler at ``scheduler``, or to a new ``LocalCluster``
    of ``workers`` single-threaded worker processes. ImportError (with the install command)
    when dask.distributed is missing."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as err:
        raise ImportError("the cluster runner needs dask.distributed: "
                          "pip install 'jaxlasp[cluster]' (or 'dask[distributed]')") from err
    if scheduler:
        return Client(scheduler)
    if not workers or workers < 1:
        raise ValueError("give a scheduler address or a number of local workers ≥ 1")
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                           dashboard_address=":0")
    return Client(cluster)


def run_cluster(inputs, model, output, options: FitOptions = FitOptions(), *, client=None,
                scheduler: str | None = None, workers: int | None = None,
                chunk_files: int = CHUNK_FILES, retries: int = RETRIES, resume: bool = False,
                quiet: bool = False, on_chunk: Callable[[ChunkReport], None] | None = None
                ) -> Summary:
    """Fit every spectrum in ``inputs`` on a Dask cluster and write the catalog ``output``.

    The cluster: ``client`` (a ``distributed.Client``, left open), else ``scheduler`` (address of
    a running scheduler) or ``workers`` (a LocalCluster of that many processes, closed at the
    end). model: TGM path, "demo" or an emulator (sent once to every worker). ``on_chunk`` is
    called on the client with each finished chunk's report. Otherwise as ``pipeline.run``.
    """
    t0 = time.perf_counter()
    output = Path(output).absolute()
    check_options(output, options)
    if chunk_files < 1:
        raise ValueError(f"chunk size must be ≥ 1 file, not {chunk_files}")
    with catalog_lock(output):
        check_fresh(output, resume)
        paths = [str(p.absolute()) for p in expand_inputs(inputs)]  # workers' cwd may differ
        check_found(paths, inputs)
        prepare_model(model, options)  # bad model or start: ValueError here, not on each worker
        stamp = run_options(options, model)
        done, complete, keys = load_done(output) if resume else ([], set(), set())
        check_same_options(done, stamp, output)
        todo = [p for p in paths if input_key(p) not in complete]
        chunks = [todo[k:k + chunk_files] for k in range(0, len(todo), chunk_files)]
        parts_folder(output).mkdir(exist_ok=True)
        fitted = 0
        if chunks:
            own_client = client is None
            client = client or connect(scheduler, workers)
            try:
                fitted = _run_chunks(client, chunks, model, options, output, keys, retries,
                                     quiet, on_chunk)
            finally:
                if own_client:
                    cluster = client.cluster
                    client.close()
                    if cluster is not None:
                        cluster.close()
        tables, _, _ = load_done(output)
        return finish_catalog(output, tables, paths, fitted, t0, stamp)


def _run_chunks(client, chunks, model, options, output: Path, keys, retries: int, quiet: bool,
                on_chunk) -> int:
    """Submit one task per chunk, collect the reports, write failure parts; spectra fitted."""
    from distributed import as_completed

    folder = parts_folder(output)

    if not isinstance(model, (str, Path)):
        model = client.scatter(load_model(model), broadcast=True)
    log.info("%d chunks of ≤ %d files on %d workers", len(chunks),
             max(map(len, chunks), default=0), len(client.scheduler_info()["workers"]))
    futures = {}
    for chunk in chunks:
        name = chunk_part_name(chunk, output)
        members = {input_key(p) for p in chunk}
        skip = frozenset(k for k in keys if k[0] in members)
        future = client.submit(fit_chunk, chunk, model, options, str(folder / name), skip,
                               key=f"jaxlasp-{Path(name).stem}", retries=retries, pure=False)
        futures[future] = chunk
    progress = Progress(sum(map(len, chunks)), quiet)
    files = spectra = failed = 0
    for future in as_completed(futures):
        chunk = futures[future]
        try:
            report = future.result()
        except Exception as err:  # retries exhausted or workers lost: rows say why
            log.error("chunk of %d files (%s …) failed: %s", len(chunk), chunk[0], err)
            part = folder / chunk_part_name(chunk, output)
            write_catalog(failed_chunk_table(chunk, f"fit failed on the cluster: {err}"), part)
            report = ChunkReport(str(part), len(chunk), len(chunk), len(chunk), 0.0, "")
        files += report.files
        spectra += report.spectra
        failed += report.failed
        progress.update(files, spectra, failed)
        if on_chunk is not None:
            on_chunk(report)
    return spectra
