"""A registry of spectrum readers: one entry point for every survey's files.

``read_spectra(path)`` recognises the file (``reader_for``) and returns a list of ``Spectrum``
(a LAMOST file holds one spectrum, a DESI file many), all on air ln-λ grids truncated to the
window, ready for ``cut_to_grid``. A new survey plugs in with ``register_reader(name, reader,
sniff)``, without touching the pipeline: ``reader(path, window)`` returns a list of Spectrum and
``sniff(probe)`` says, from a ``FileProbe`` (the file's HDU names, and header keywords read when
the sniffer asks for them), whether the reader takes the file. Readers registered later are
asked first, so a plug-in can claim a layout that a built-in reader would also accept.

The file is opened once: detection and the built-in readers (registered with ``takes_file``)
share the open file, reading only the keywords, columns and HDUs they use. FITS files are read
by fitsio when it is installed, else by astropy; ``set_fits_backend`` or the environment variable
JAXLASP_FITS_BACKEND=fitsio|astropy chooses (``jaxlasp.io._fits``).

Built in:

* 'lamost': LAMOST DR9/DR10 low-resolution files (``read_lamost``), recognised by a COADD table,
  a TELESCOP = 'LAMOST' primary header, or (internal layout) a 2-D primary image with a DC-FLAG
  wavelength header.
* 'desi': DESI coadd and spectra files (``read_desi``), recognised by a FIBERMAP table and
  X_WAVELENGTH/X_FLUX camera HDUs.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jaxlasp.io._fits import FitsFile, fits_backend, open_fits, set_fits_backend
from jaxlasp.io.desi import is_desi, read_desi, read_desi_native
from jaxlasp.io.lamost import DEFAULT_WINDOW, Spectrum, SpectrumFileError, read_lamost

__all__ = ["FileProbe", "Reader", "fits_backend", "get_reader", "is_lamost", "open_probe",
           "probe_file", "read_spectra", "reader_for", "register_reader", "set_fits_backend"]


@dataclass(frozen=True)
class FileProbe:
    """What sniffing sees of a file: its HDUs' names and header keywords, without the data.

    path: the file. is_fits: whether it starts like a FITS file (after gunzip for .gz).
    names: the HDU names (EXTNAME, 'PRIMARY' for HDU0), () when not FITS.
    headers: each HDU's keyword → value mapping (no COMMENT/HISTORY), () when not FITS; a probe
        from ``open_probe`` reads a keyword from the file only when it is asked for.
    file: the open file (``open_probe``), None when not FITS or detached (``probe_file``).
    """

    path: Path
    is_fits: bool
    names: tuple[str, ...] = ()
    headers: Sequence[Mapping] = ()
    file: FitsFile | None = None


@dataclass(frozen=True)
class Reader:
    """A registered reader: ``read(path, window)`` → list of Spectrum; ``sniff(probe)`` → bool;
    takes_file: ``read`` also accepts the open ``FitsFile`` in place of the path.
    native: None, or ``native(path, windows)`` → list of Spectrum on their own pixels
    (``jaxlasp.grids.PixelGrid``), for files whose pixels are not LAMOST's lattice."""

    name: str
    read: Callable[[Path, tuple[float, float]], list[Spectrum]]
    sniff: Callable[[FileProbe], bool]
    takes_file: bool = False
    native: Callable | None = None


_READERS: dict[str, Reader] = {}
"""Registered readers by name, in registration order (asked newest first)."""


def register_reader(name: str, reader: Callable, sniff: Callable[[FileProbe], bool], *,
                    takes_file: bool = False, native: Callable | None = None) -> Reader:
    """Register (or replace) the reader ``name``; it is asked before those registered earlier.

    reader(path, window) returns the file's spectra as a list of ``Spectrum`` (window: (lo, hi)
    Å) and raises SpectrumFileError for a file it cannot read. sniff(probe) returns True when the
    reader takes the file described by a ``FileProbe``. takes_file: the reader also accepts, in
    place of the path, the FITS file detection opened (``probe.file``), and is given it.
    native(path, windows): the file's spectra on their own pixels, cut to windows ((lo, hi), …
    Å), for ``read_spectra(native=True)``; readers without it give their ln-λ spectra there too
    (takes_file applies to it as well).
    """
    entry = Reader(name, reader, sniff, takes_file, native)
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


@contextmanager
def open_probe(path) -> Iterator[FileProbe]:
    """The ``FileProbe`` of ``path`` with the file open for the context: names at once, header
    keywords read when asked for, ``probe.file`` for the readers.

    Raises FileNotFoundError for a missing file and SpectrumFileError (naming the file) for one
    that starts like FITS (or is gzip) but cannot be read.
    """
    with open_fits(path, SpectrumFileError) as file:
        if file is None:
            yield FileProbe(Path(path), False)
        else:
            yield FileProbe(file.path, True, file.names, file.headers, file)


def probe_file(path) -> FileProbe:
    """The ``FileProbe`` of ``path``, detached from the file: every header keyword read.

    Raises as ``open_probe``; ``reader_for`` and ``read_spectra`` use ``open_probe``, which reads
    only the keywords the sniffers ask for.
    """
    with open_probe(path) as probe:
        return FileProbe(probe.path, probe.is_fits, probe.names,
                         tuple(dict(header) for header in probe.headers))


def reader_for(path) -> Reader:
    """The registered reader that recognises the file at ``path`` (newest registration first).

    Raises SpectrumFileError, naming the file, when no reader recognises it (saying whether it
    is a FITS file at all and which HDUs it has), and FileNotFoundError when it does not exist.
    """
    with open_probe(path) as probe:
        return _recognise(probe)


def read_spectra(path, format: str = "auto", window: tuple[float, float] = DEFAULT_WINDOW, *,
                 native: bool = False, windows=None) -> list[Spectrum]:
    """The spectra in the file at ``path``, truncated to ``window`` [Å].

    format: a registered reader's name, or "auto" to recognise the file (``reader_for``). The
    file is opened once, for detection and reading together. native: spectra on their own
    pixels, cut to ``windows`` ((lo, hi), … Å; default ``[window]``), from readers that have a
    native form (DESI); the others' spectra are on the lattice as without it (a LAMOST file's
    pixels are the lattice). Raises SpectrumFileError (naming the file) for a file that cannot
    be read.
    """
    window = tuple(window)

    def read(reader: Reader, source):
        if native and reader.native is not None:
            return reader.native(source, tuple(windows or [window]))
        return reader.read(source, window)

    if format != "auto" and not get_reader(format).takes_file:
        return read(get_reader(format), Path(path))
    with open_probe(path) as probe:
        reader = _recognise(probe) if format == "auto" else get_reader(format)
        return read(reader, probe.file if reader.takes_file and probe.file is not None
                    else Path(path))


def _recognise(probe: FileProbe) -> Reader:
    """The newest registered reader whose sniffer takes the probed file (SpectrumFileError if
    none does)."""
    for reader in reversed(list(_READERS.values())):
        if reader.sniff(probe):
            return reader
    known = ", ".join(_READERS)
    if not probe.is_fits:
        raise SpectrumFileError(f"{probe.path}: not a FITS file (it does not start with a FITS "
                                f"header) and no registered reader ({known}) recognises it")
    raise SpectrumFileError(f"{probe.path}: no registered reader ({known}) recognises this FITS "
                            f"file (HDUs: {list(probe.names)})")


def is_lamost(probe: FileProbe) -> bool:
    """Whether a probed file looks like a LAMOST low-resolution spectrum (public or internal)."""
    if not probe.headers:
        return False
    if "COADD" in probe.names:
        return True
    primary = probe.headers[0]
    telescope = str(primary.get("TELESCOP", "")).strip().upper()
    return telescope.startswith("LAMOST") or (primary.get("NAXIS") == 2 and "DC-FLAG" in primary)


def _read_lamost_file(source, window) -> list[Spectrum]:
    """``read_lamost`` as a registry reader (one spectrum per file)."""
    return [read_lamost(source, window)]


register_reader("lamost", _read_lamost_file, is_lamost, takes_file=True)
register_reader("desi", read_desi, lambda probe: is_desi(probe.names), takes_file=True,
                native=read_desi_native)
