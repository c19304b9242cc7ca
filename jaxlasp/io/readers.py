"""A registry of spectrum readers: one entry point for every survey's files.

``read_spectra(path)`` recognises the file (``reader_for``) and returns a list of ``Spectrum``
(a LAMOST file holds one spectrum, a DESI file many), all on air ln-λ grids truncated to the
window, ready for ``cut_to_grid``. A new survey plugs in with ``register_reader(name, reader,
sniff)``, without touching the pipeline: ``reader(path, window)`` returns a list of Spectrum and
``sniff(probe)`` says, from a ``FileProbe`` (the file's HDU names and header keywords, read
without the data), whether the reader takes the file. Readers registered later are asked first,
so a plug-in can claim a layout that a built-in reader would also accept.

Built in:

* 'lamost': LAMOST DR9/DR10 low-resolution files (``read_lamost``), recognised by a COADD table,
  a TELESCOP = 'LAMOST' primary header, or (internal layout) a 2-D primary image with a DC-FLAG
  wavelength header.
* 'desi': DESI coadd and spectra files (``read_desi``), recognised by a FIBERMAP table and
  X_WAVELENGTH/X_FLUX camera HDUs.
"""
from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from jaxlasp.io._fits import _keywords
from jaxlasp.io.desi import is_desi, read_desi
from jaxlasp.io.lamost import DEFAULT_WINDOW, Spectrum, SpectrumFileError, read_lamost

FITS_START = b"SIMPLE  ="
"""The first bytes of every FITS file (of its decompressed content for .gz)."""
GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class FileProbe:
    """What sniffing sees of a file: its HDUs' names and header keywords, without the data.

    path: the file. is_fits: whether it starts like a FITS file (after gunzip for .gz).
    names: the HDU names (EXTNAME, 'PRIMARY' for HDU0), () when not FITS.
    headers: each HDU's keyword → value dict (no COMMENT/HISTORY), () when not FITS.
    """

    path: Path
    is_fits: bool
    names: tuple[str, ...] = ()
    headers: tuple[dict, ...] = ()


@dataclass(frozen=True)
class Reader:
    """A registered reader: ``read(path, window)`` → list of Spectrum; ``sniff(probe)`` → bool."""

    name: str
    read: Callable[[Path, tuple[float, float]], list[Spectrum]]
    sniff: Callable[[FileProbe], bool]


_READERS: dict[str, Reader] = {}
"""Registered readers by name, in registration order (asked newest first)."""


def register_reader(name: str, reader: Callable, sniff: Callable[[FileProbe], bool]) -> Reader:
    """Register (or replace) the reader ``name``; it is asked before those registered earlier.

    reader(path, window) returns the file's spectra as a list of ``Spectrum`` (window: (lo, hi)
    Å) and raises SpectrumFileError for a file it cannot read. sniff(probe) returns True when the
    reader takes the file described by a ``FileProbe``.
    """
    entry = Reader(name, reader, sniff)
    _READERS.pop(name, None)
    _READERS[name] = entry
    return entry


def get_reader(name: str) -> Reader:
    """The reader registered as ``name`` (ValueError listing the known names otherwise)."""
    try:
        return _READERS[name]
    except KeyError:
        raise ValueError(f"unknown spectrum format {name!r}; registered: "
                         f"{', '.join(_READERS)}") from None


def probe_file(path) -> FileProbe:
    """The ``FileProbe`` of ``path``: HDU names and headers read without the data.

    Raises FileNotFoundError for a missing file and SpectrumFileError (naming the file) for one
    that starts like FITS but whose headers cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not _starts_like_fits(path):
        return FileProbe(path, False)
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, memmap=False, lazy_load_hdus=True) as hdul:
                hdus = [(h.name, _keywords(h.header)) for h in hdul]
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError,
            AstropyUserWarning) as exc:
        raise SpectrumFileError(f"{path}: not a readable FITS file ({type(exc).__name__}: "
                                f"{exc})") from exc
    return FileProbe(path, True, tuple(n for n, _ in hdus), tuple(h for _, h in hdus))


def reader_for(path) -> Reader:
    """The registered reader that recognises the file at ``path`` (newest registration first).

    Raises SpectrumFileError, naming the file, when no reader recognises it (saying whether it
    is a FITS file at all and which HDUs it has), and FileNotFoundError when it does not exist.
    """
    probe = probe_file(path)
    for reader in reversed(list(_READERS.values())):
        if reader.sniff(probe):
            return reader
    known = ", ".join(_READERS)
    if not probe.is_fits:
        raise SpectrumFileError(f"{path}: not a FITS file (it does not start with a FITS "
                                f"header) and no registered reader ({known}) recognises it")
    raise SpectrumFileError(f"{path}: no registered reader ({known}) recognises this FITS file "
                            f"(HDUs: {list(probe.names)})")


def read_spectra(path, format: str = "auto",
                 window: tuple[float, float] = DEFAULT_WINDOW) -> list[Spectrum]:
    """The spectra in the file at ``path``, truncated to ``window`` [Å].

    format: a registered reader's name, or "auto" to recognise the file (``reader_for``).
    Raises SpectrumFileError (naming the file) for a file that cannot be read.
    """
    reader = reader_for(path) if format == "auto" else get_reader(format)
    return reader.read(Path(path), tuple(window))


def is_lamost(probe: FileProbe) -> bool:
    """Whether a probed file looks like a LAMOST low-resolution spectrum (public or internal)."""
    if not probe.headers:
        return False
    primary = probe.headers[0]
    telescope = str(primary.get("TELESCOP", "")).strip().upper()
    return ("COADD" in probe.names or telescope.startswith("LAMOST")
            or (primary.get("NAXIS") == 2 and "DC-FLAG" in primary))


def _read_lamost_file(path, window) -> list[Spectrum]:
    """``read_lamost`` as a registry reader (one spectrum per file)."""
    return [read_lamost(path, window)]


def _starts_like_fits(path: Path) -> bool:
    """Whether the file (gunzipped when it is gzip) starts with a FITS primary header card."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    try:
        with (gzip.open if compressed else open)(path, "rb") as stream:
            return stream.read(len(FITS_START)) == FITS_START
    except (OSError, EOFError):
        return False


register_reader("lamost", _read_lamost_file, is_lamost)
register_reader("desi", read_desi, lambda probe: is_desi(probe.names))
