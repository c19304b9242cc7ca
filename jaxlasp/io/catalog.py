"""Catalog files: write and read result tables as CSV, ECSV, FITS or Parquet, atomically.

The format follows the file name's suffix. Writing goes to a temporary file in the same folder
that is then renamed over the target, so a reader never sees a half-written catalog and an
interrupted run never destroys an earlier one. astropy (and pyarrow, for Parquet) are imported
lazily.
"""
from __future__ import annotations

import glob
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import numpy as np

FORMATS = {".csv": "ascii.csv", ".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits",
           ".parquet": "parquet"}
"""Catalog formats by file-name suffix (astropy's format names)."""


class CatalogError(ValueError):
    """A catalog path that cannot be written or read (unknown format, missing folder, corrupt)."""


class CatalogWriteError(OSError):
    """Writing a catalog or part file failed (disk full, quota, I/O error); names the file."""


def catalog_format(path) -> str:
    """astropy's format name for ``path`` from its suffix; CatalogError for an unknown one."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise CatalogError(f"{path}: unknown catalog format {suffix!r}; use one of "
                           f"{', '.join(sorted(FORMATS))}")
    if FORMATS[suffix] == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError as err:
            raise CatalogError(f"{path}: writing Parquet needs pyarrow "
                               "(python -m pip install 'jaxlasp[parquet]')") from err
    return FORMATS[suffix]


def check_writable(path) -> None:
    """Raise CatalogError unless a catalog can be created at ``path`` (format and folder)."""
    path = Path(path)
    catalog_format(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CatalogError(f"{path}: the folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CatalogError(f"{path}: not writable")
    try:  # the access test passes for root on read-only or virtual file systems (/proc)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise CatalogError(f"{path}: cannot create files in {folder} "
                           f"({err.strerror or err})") from err


def temporary_files(path) -> list[Path]:
    """The temporary files ``write_catalog`` makes for ``path`` (left behind only by a kill)."""
    path = Path(path)
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*{glob.escape(path.suffix)}"))


def write_catalog(table, path) -> None:
    """Write ``table`` to ``path`` (format from the suffix) atomically: temp file, then rename.
    The file's mode follows the umask, as a plainly created file's would."""
    path = Path(path)
    fmt = catalog_format(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would survive the rename
    os.close(fd)
    try:
        if fmt == "parquet":
            _write_parquet(table, tmp)
        elif fmt == "ascii.csv":
            _write_csv(table, tmp)
        else:
            with warnings.catch_warnings():  # FITS has no 'dex': those units are dropped there
                warnings.filterwarnings("ignore", message=".*could not be saved in native FITS")
                table.write(tmp, format=fmt, overwrite=True)
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise CatalogWriteError(err.errno, f"{path}: cannot be written "
                                    f"({err.strerror or err})") from err
        raise


def current_umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


CATALOG_META = ("options", "jaxlasp", "created")
"""Metadata keys jaxlasp writes into catalogs (``jaxlasp.pipeline.finish_catalog``)."""


def read_catalog(path):
    """An astropy Table from a catalog written by ``write_catalog``; CatalogError if unreadable."""
    from astropy.table import Table

    fmt = catalog_format(path)
    try:
        table = (_read_parquet(path) if fmt == "parquet" else _read_csv(path)
                 if fmt == "ascii.csv" else Table.read(path, format=fmt))
    except Exception as err:  # astropy raises many types for corrupt files
        raise CatalogError(f"{path}: cannot read the catalog ({err})") from err
    for key in CATALOG_META:  # FITS keeps header keywords upper case
        if key.upper() in table.meta and key not in table.meta:
            table.meta[key] = table.meta.pop(key.upper())
    for name in ("id", "path", "reason"):  # CSV: numeric ids read as ints, "" as masked
        if name in table.colnames:
            description = table[name].description
            table[name] = np.asarray(["" if np.ma.is_masked(v) else str(v)
                                      for v in table[name]], dtype=str)
            table[name].description = description
    if "converged" in table.colnames and table["converged"].dtype.kind in "USO":
        table["converged"] = np.isin(np.asarray(table["converged"], str), ("True", "true", "1"))
    return table


CSV_COLUMN_LINE = re.compile(r"^(?P<name>\w+)(?: \[(?P<unit>[^\]]*)\])?: (?P<text>.*)$")
"""A CSV header line describing a column: ``name [unit]: description``."""


def _write_csv(table, path) -> None:
    """Plain CSV with a commented header ('# ' lines): the catalog's metadata as ``key: value``
    and each column as ``name [unit]: description``, so units and descriptions survive."""
    lines = [f"{key}: {table.meta[key]}" for key in CATALOG_META if table.meta.get(key)]
    for column in table.itercols():
        unit = f" [{column.unit}]" if column.unit is not None else ""
        lines.append(f"{column.name}{unit}: {column.description or ''}")
    copy = table.copy(copy_data=False)
    copy.meta = {"comments": lines}
    copy.write(path, format="ascii.csv", comment="# ", overwrite=True)


def _read_csv(path):
    """A CSV catalog, its commented header (``_write_csv``) turned back into metadata, units and
    descriptions; a CSV without one reads as it is."""
    from astropy.table import Table

    table = Table.read(path, format="ascii.csv", comment="#")
    for line in table.meta.pop("comments", []):
        key, _, value = line.partition(": ")
        if key in CATALOG_META:
            table.meta[key] = value
        elif (match := CSV_COLUMN_LINE.match(line)) and match["name"] in table.colnames:
            column = table[match["name"]]
            column.unit = match["unit"] or None
            column.description = match["text"] or None
    return table


def _write_parquet(table, path) -> None:
    """Columns as Parquet columns, units and table meta as JSON in the schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    units = {n: str(table[n].unit) for n in table.colnames if table[n].unit is not None}
    descriptions = {n: table[n].description for n in table.colnames if table[n].description}
    arrow = pa.table({n: np.asarray(table[n]) for n in table.colnames})
    meta = {b"jaxlasp.units": json.dumps(units).encode(),
            b"jaxlasp.descriptions": json.dumps(descriptions).encode(),
            b"jaxlasp.meta": json.dumps(dict(table.meta)).encode()}
    pq.write_table(arrow.replace_schema_metadata(meta), path)


def _read_parquet(path):
    """An astropy Table from a Parquet file written by ``_write_parquet`` (or any flat one)."""
    import pyarrow.parquet as pq
    from astropy.table import Table

    arrow = pq.read_table(path)
    meta = arrow.schema.metadata or {}
    table = Table({n: arrow.column(n).to_numpy() for n in arrow.column_names},
                  meta=json.loads(meta.get(b"jaxlasp.meta", b"{}")))
    for name, unit in json.loads(meta.get(b"jaxlasp.units", b"{}")).items():
        table[name].unit = unit
    for name, description in json.loads(meta.get(b"jaxlasp.descriptions", b"{}")).items():
        table[name].description = description
    return table
