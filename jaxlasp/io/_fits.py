"""FITS access for the readers: one open per file, reading only the HDUs, columns and keywords used.

``open_fits(path, error)`` opens a file once; the ``FitsFile`` it gives lists the HDU names at
once and reads header keywords, binary-table columns and images only when asked for. Arrays come
back in native byte order with the file's scaling applied (BSCALE/BZERO, TSCALn/TZEROn: integers
stored with an offset come back unsigned), the same dtypes and values from either backend.

Backends (``JAXLASP_FITS_BACKEND=fitsio|astropy`` in the environment, or ``set_fits_backend``):

* 'fitsio': CFITSIO through the ``fitsio`` package (``pip install jaxlasp[fast]``); the default
  when fitsio is importable. It opens the file by its descriptor (/proc/self/fd or /dev/fd, so
  Linux and macOS), which also spares CFITSIO's extended file-name syntax ('[', '(' in a name).
* 'astropy': ``astropy.io.fits``, always available, about 5× slower for a LAMOST file
  (benchmarks/io.py).

Header keywords are found among the raw 80-character header cards and their values parsed by
astropy (``card_value``), for both backends: fitsio has no single-keyword read, and its
whole-header read takes 3 ms for a LAMOST header. Only single-card values are read (no HIERARCH
or CONTINUE cards).

``.fits.gz`` is decompressed by Python's gzip module into memory and handed to the backend as an
in-memory file (memfd): for a LAMOST file that takes 0.6 ms where CFITSIO's own gzip reading
takes 1.7 ms.

Errors: a missing file raises FileNotFoundError; a file that is not FITS, is truncated, carries
bytes after its last HDU or cannot be read, and a corrupt or truncated .gz, raise the ``error``
type the caller gives, with a message naming the file. astropy and fitsio are imported lazily.
"""
from __future__ import annotations

import gzip
import io
import os
import tempfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import ClassVar

import numpy as np

BACKEND_VARIABLE = "JAXLASP_FITS_BACKEND"
"""Environment variable choosing the FITS backend: 'fitsio' or 'astropy'."""
BACKENDS = ("fitsio", "astropy")
FITS_START = b"SIMPLE  ="
"""The first bytes of every FITS file (of its decompressed content for .gz)."""
GZIP_MAGIC = b"\x1f\x8b"
CARD = 80
"""Bytes per header card."""
END_CARD = "END" + " " * 77
FD_DIR = next((d for d in ("/proc/self/fd", "/dev/fd") if os.path.isdir(d)), None)
"""Where an open file descriptor N can be opened by name as FD_DIR/N (CFITSIO takes names)."""
READ_FAILURES = (OSError, ValueError, TypeError, IndexError, KeyError, EOFError, RuntimeError,
                 Warning)
"""What the backends raise for a file they cannot read (astropy's warnings are made errors)."""

_chosen_backend: str | None = None
"""The backend set by ``set_fits_backend``; None: the environment variable or the default."""
_MISSING = object()


def set_fits_backend(name: str | None) -> None:
    """Read FITS files with backend ``name`` ('fitsio' or 'astropy') from now on, in this process;
    None: back to $JAXLASP_FITS_BACKEND or the default. ImportError if fitsio is not usable."""
    global _chosen_backend
    if name is not None:
        _check_backend(name)
    _chosen_backend = name


def fits_backend() -> str:
    """The backend files are opened with: ``set_fits_backend``'s choice, else
    $JAXLASP_FITS_BACKEND, else 'fitsio' when it is usable, else 'astropy'."""
    name = _chosen_backend or os.environ.get(BACKEND_VARIABLE, "").strip().lower() or (
        "fitsio" if fitsio_usable() else "astropy")
    _check_backend(name)
    return name


@cache
def fitsio_usable() -> bool:
    """Whether fitsio imports and files can be handed to it by descriptor."""
    if FD_DIR is None:
        return False
    try:
        import fitsio  # noqa: F401
    except ImportError:
        return False
    return True


def _check_backend(name: str) -> None:
    """ValueError for an unknown backend name, ImportError for fitsio when it is not usable."""
    if name not in BACKENDS:
        raise ValueError(f"unknown FITS backend {name!r} (from set_fits_backend or "
                         f"${BACKEND_VARIABLE}); choose one of {', '.join(BACKENDS)}")
    if name == "fitsio" and not fitsio_usable():
        raise ImportError("the 'fitsio' FITS backend needs the fitsio package (pip install "
                          "fitsio, or jaxlasp[fast]) and /proc/self/fd or /dev/fd")


# --- header cards --------------------------------------------------------------------------------

@lru_cache(maxsize=4096)
def card_value(card: str):
    """The value of an 80-character header card, parsed by astropy (``fits.Card``): 'T'/'F' →
    bool, integer → int, real → float, string → str without trailing blanks, nothing → None.
    ValueError for a card astropy cannot read. Remembered: survey files repeat most cards
    verbatim, and astropy takes ~30 µs a card."""
    from astropy.io import fits
    from astropy.utils.exceptions import AstropyUserWarning

    with warnings.catch_warnings():
        warnings.simplefilter("error", AstropyUserWarning)
        try:
            value = fits.Card.fromstring(card).value
        except (ValueError, AstropyUserWarning, fits.VerifyError) as err:
            raise ValueError(f"unreadable value in the header card {card.rstrip()!r}") from err
    return None if isinstance(value, fits.card.Undefined) else value


def header_text(header: bytes) -> str:
    """A header's cards before its END card, as text."""
    text = header.decode("latin-1")
    end = text.find(END_CARD)
    while end > 0 and end % CARD:
        end = text.find(END_CARD, end + 1)
    return text if end < 0 else text[:end]


def find_card(text: str, key: str) -> str | None:
    """The value card ('= ' in columns 9–10) of keyword ``key`` in ``header_text``, the last
    one when the keyword repeats; None when there is none."""
    target = f"{key.upper():<8}= "
    start = text.rfind(target)
    while start > 0 and start % CARD:  # the text was found inside another card
        start = text.rfind(target, 0, start + len(target) - 1)
    return None if start < 0 else text[start:start + CARD]


def header_cards(text: str) -> dict[str, str]:
    """Keyword → value card of every keyword in ``header_text`` (the last card when repeated)."""
    cards = (text[start:start + CARD] for start in range(0, len(text), CARD))
    return {card[:8].rstrip(): card for card in cards if card[8:10] == "= "}


# --- opening -------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class _Content:
    """A file's FITS bytes: the open file itself (``fd``), or for .gz its decompressed ``data``."""

    fd: int | None
    data: bytes | None
    size: int

    def read(self, offset: int, size: int) -> bytes:
        """``size`` bytes from ``offset`` (fewer at the end)."""
        if self.data is not None:
            return self.data[offset:offset + size]
        return _read_at(self.fd, offset, size)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def _read_at(fd: int, offset: int, size: int) -> bytes:
    """Bytes at ``offset`` of an open file, leaving its position alone where the OS allows."""
    if hasattr(os, "pread"):
        return os.pread(fd, size, offset)
    os.lseek(fd, offset, os.SEEK_SET)
    return os.read(fd, size)


def _open_content(path: Path, error: type[Exception]) -> _Content:
    """The file opened; a gzip file read and decompressed (``error`` if that fails)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    if _read_at(fd, 0, len(GZIP_MAGIC)) != GZIP_MAGIC:
        return _Content(fd, None, os.fstat(fd).st_size)
    with open(fd, "rb") as stream:
        compressed = stream.read()
    try:
        data = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as exc:
        raise error(f"{path}: not a readable FITS file, corrupt or truncated gzip data "
                    f"({type(exc).__name__}: {exc})") from exc
    return _Content(None, data, len(data))


@contextmanager
def open_fits(path, error: type[Exception]) -> Iterator[FitsFile | None]:
    """The FITS file at ``path`` (.fits or .fits.gz) open for the context, or None when its
    content does not start like FITS. Raises FileNotFoundError or ``error`` (see the module)."""
    path = Path(path)
    content = _open_content(path, error)
    try:
        if content.read(0, len(FITS_START)) != FITS_START:
            yield None
            return
        backend = _FitsioFile if fits_backend() == "fitsio" else _AstropyFile
        file = backend(path, content, error)
        try:
            yield file
        finally:
            file.close()
    finally:
        content.close()


@contextmanager
def as_fits(source, error: type[Exception]) -> Iterator[FitsFile]:
    """``source`` itself when it is an open FitsFile (left open), else the FITS file at that path
    open for the context; ``error`` when that file does not start like FITS."""
    if isinstance(source, FitsFile):
        yield source
        return
    with open_fits(source, error) as file:
        if file is None:
            raise error(f"{Path(source)}: not a readable FITS file (it does not start with a "
                        "FITS header)")
        yield file


# --- the open file -------------------------------------------------------------------------------

class FitsFile:
    """An open FITS file (see ``open_fits``); HDUs are given by index, 0 for the primary HDU.

    path: the file. names: the HDU names (EXTNAME; 'PRIMARY' for HDU 0 without one).
    headers: each HDU's ``Header``, whose keywords are read when asked for.

    A backend subclass supplies _open (→ names), _data_end and _header_span (byte offsets),
    _kind ('image', 'table' or None), _column_names, _columns, _image and close.
    """

    def __init__(self, path: Path, content: _Content, error: type[Exception]):
        self.path, self._content, self._error = path, content, error
        self._header_texts: dict[int, str] = {}
        try:
            with self._reading("listing the HDUs"):
                self.names = self._open()
                end = self._data_end(len(self.names) - 1)
        except BaseException:
            self.close()
            raise
        if end != content.size:
            self.close()
            raise error(f"{path}: not a readable FITS file, corrupt or truncated: its readable "
                        f"HDUs end at byte {end}, the file has {content.size} bytes")
        self.headers = tuple(Header(self, i) for i in range(len(self.names)))

    def keyword(self, hdu: int, key: str, default=None):
        """The value of keyword ``key`` in HDU ``hdu``'s header (``card_value``), or ``default``
        when the header has no such value card."""
        card = find_card(self._header_text(hdu), key)
        if card is None:
            return default
        try:
            return card_value(card)
        except ValueError as exc:
            raise self._error(f"{self.path}: HDU {hdu}: {exc}") from exc

    def keywords(self, hdu: int) -> list[str]:
        """The keywords of HDU ``hdu``'s value cards, in header order."""
        return list(header_cards(self._header_text(hdu)))

    def is_table(self, hdu: int) -> bool:
        """Whether HDU ``hdu`` is a binary table."""
        return self._kind(hdu) == "table"

    def column_names(self, hdu: int) -> tuple[str, ...]:
        """The column names of binary table ``hdu``, upper case."""
        with self._reading(f"the columns of HDU {hdu}"):
            return tuple(name.upper() for name in self._column_names(hdu))

    def columns(self, hdu: int, wanted: Iterable[str]) -> dict[str, np.ndarray]:
        """Upper-case name → all rows of that column (names matched ignoring case) for the
        ``wanted`` columns binary table ``hdu`` has."""
        with self._reading(f"the columns of HDU {hdu}"):
            by_upper = {name.upper(): name for name in self._column_names(hdu)}
            present = [key for key in dict.fromkeys(w.upper() for w in wanted) if key in by_upper]
            data = self._columns(hdu, [by_upper[key] for key in present]) if present else {}
            return {key: _native(data[by_upper[key]]) for key in present}

    def image(self, hdu: int) -> np.ndarray | None:
        """The image of HDU ``hdu`` (compressed images decompressed), None when it is not an
        image or has no data."""
        if self._kind(hdu) != "image":
            return None
        with self._reading(f"the image of HDU {hdu}"):
            data = self._image(hdu)
        return None if data is None else _native(data)

    def _header_text(self, hdu: int) -> str:
        """HDU ``hdu``'s ``header_text``, read once."""
        if hdu not in self._header_texts:
            with self._reading(f"the header of HDU {hdu}"):
                start, end = self._header_span(hdu)
            self._header_texts[hdu] = header_text(self._content.read(start, end - start))
        return self._header_texts[hdu]

    @contextmanager
    def _reading(self, what: str):
        """Turn the backend's failures while reading ``what`` into ``error``."""
        try:
            with self._failures_raised():
                yield
        except READ_FAILURES as exc:
            raise self._error(f"{self.path}: not a readable FITS file, corrupt or truncated "
                              f"({what}: {type(exc).__name__}: {exc})") from exc

    @contextmanager
    def _failures_raised(self):
        """Make the backend raise, not warn, about a bad file."""
        yield


class Header(Mapping):
    """One HDU's header keywords (value cards only), each value read when asked for."""

    def __init__(self, file: FitsFile, hdu: int):
        self._file, self._hdu = file, hdu

    def __getitem__(self, key: str):
        value = self._file.keyword(self._hdu, key, _MISSING)
        if value is _MISSING:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._file.keywords(self._hdu))

    def __len__(self) -> int:
        return len(self._file.keywords(self._hdu))


def _native(array) -> np.ndarray:
    """``array`` in native byte order (copied only when it is not already)."""
    array = np.asarray(array)
    return array.astype(array.dtype.newbyteorder("="), copy=False)


class _FitsioFile(FitsFile):
    """FitsFile read by CFITSIO (fitsio), given the file's descriptor by name (``FD_DIR``)."""

    _KINDS: ClassVar[dict[str, str]] = {"IMAGE_HDU": "image", "BINARY_TBL": "table"}

    def _open(self) -> tuple[str, ...]:
        import fitsio

        self._own_fd = None if self._content.data is None else _memory_file(self._content.data)
        fd = self._content.fd if self._own_fd is None else self._own_fd
        self._fits = fitsio.FITS(f"{FD_DIR}/{fd}")
        self._hdus = list(self._fits)
        return tuple(h.get_extname() or ("PRIMARY" if i == 0 else "")
                     for i, h in enumerate(self._hdus))

    def _data_end(self, hdu: int) -> int:
        return self._hdus[hdu].get_offsets()["data_end"]

    def _header_span(self, hdu: int) -> tuple[int, int]:
        offsets = self._hdus[hdu].get_offsets()
        return offsets["header_start"], offsets["data_start"]

    def _kind(self, hdu: int) -> str | None:
        return self._KINDS.get(self._hdus[hdu].get_exttype())

    def _column_names(self, hdu: int) -> list[str]:
        return self._hdus[hdu].get_colnames()

    def _columns(self, hdu: int, names: list[str]):
        return self._hdus[hdu].read(columns=names)

    def _image(self, hdu: int):
        return self._hdus[hdu].read()

    def close(self) -> None:
        if getattr(self, "_fits", None) is not None:
            self._fits.close()
        if getattr(self, "_own_fd", None) is not None:
            os.close(self._own_fd)
            self._own_fd = None


def _memory_file(data: bytes) -> int:
    """A descriptor of an unnamed file holding ``data`` (in memory where the OS offers one)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("jaxlasp-fits")
    else:
        fd, name = tempfile.mkstemp(suffix=".fits")
        os.unlink(name)
    with open(fd, "wb", closefd=False) as stream:
        stream.write(data)
    os.lseek(fd, 0, os.SEEK_SET)  # /dev/fd/N shares this position with CFITSIO
    return fd


class _AstropyFile(FitsFile):
    """FitsFile read by astropy.io.fits (HDUs listed at once, data read when asked for)."""

    def _open(self) -> tuple[str, ...]:
        try:
            from astropy.io import fits
        except ImportError as exc:
            raise ImportError(f"reading FITS files ({self.path}) needs astropy (pip install "
                              "astropy) or fitsio") from exc
        source = self.path if self._content.data is None else io.BytesIO(self._content.data)
        self._hdul = fits.open(source, memmap=False, lazy_load_hdus=True)
        self._hdus = list(self._hdul)
        return tuple(h.name for h in self._hdus)

    def _data_end(self, hdu: int) -> int:
        info = self._hdus[hdu].fileinfo()
        return info["datLoc"] + info["datSpan"]

    def _header_span(self, hdu: int) -> tuple[int, int]:
        info = self._hdus[hdu].fileinfo()
        return info["hdrLoc"], info["datLoc"]

    def _kind(self, hdu: int) -> str | None:
        from astropy.io import fits

        h = self._hdus[hdu]
        if isinstance(h, (fits.PrimaryHDU, fits.ImageHDU, fits.CompImageHDU)):
            return "image"  # asked first: older astropy made CompImageHDU a BinTableHDU
        return "table" if isinstance(h, fits.BinTableHDU) else None

    def _column_names(self, hdu: int) -> list[str]:
        return self._hdus[hdu].columns.names

    def _columns(self, hdu: int, names: list[str]):
        return self._hdus[hdu].data  # astropy reads a table whole

    def _image(self, hdu: int):
        return self._hdus[hdu].data

    @contextmanager
    def _failures_raised(self):
        from astropy.utils.exceptions import AstropyUserWarning

        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # truncation is only a warning
            yield

    def close(self) -> None:
        if getattr(self, "_hdul", None) is not None:
            self._hdul.close()


# --- whole files ---------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Hdu:
    """One HDU read into memory: ``data`` is an image array, a dict of table columns, or None."""

    name: str
    header: dict
    data: np.ndarray | dict[str, np.ndarray] | None


def read_hdus(path, error: type[Exception]) -> list[Hdu]:
    """Every HDU of the FITS file at ``path`` (.fits or .fits.gz) read whole: its header keywords,
    its image or all its binary-table columns (upper-case names). Errors as ``open_fits``."""
    with as_fits(path, error) as file:
        return [Hdu(name, dict(file.headers[i]), _whole_data(file, i))
                for i, name in enumerate(file.names)]


def _whole_data(file: FitsFile, hdu: int):
    """All columns of a binary table, an image, or None."""
    if file.is_table(hdu):
        return file.columns(hdu, file.column_names(hdu))
    return file.image(hdu)
