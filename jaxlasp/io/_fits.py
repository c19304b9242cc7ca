"""Read a whole FITS file into plain numpy arrays, turning every failure into one error type.

astropy is imported here lazily, so the numerical core of jaxlasp imports without it.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True, eq=False)
class Hdu:
    """One HDU read into memory: ``data`` is an image array, a dict of table columns, or None."""

    name: str
    header: dict
    data: np.ndarray | dict[str, np.ndarray] | None


def _native(array) -> np.ndarray:
    """A copy of ``array`` in native byte order (FITS data are big-endian)."""
    array = np.asarray(array)
    return array.astype(array.dtype.newbyteorder("="))


def _keywords(header) -> dict:
    """The header's keyword → value pairs, without COMMENT/HISTORY cards."""
    return {k: v for k, v in header.items() if k not in ("COMMENT", "HISTORY", "")}


def _hdu_data(hdu):
    """Image → array, binary table → {column name (upper case): array of all rows}, else None."""
    from astropy.io import fits

    if isinstance(hdu, fits.BinTableHDU):
        return {name.upper(): _native(hdu.data[name]) for name in hdu.columns.names}
    if hdu.data is None or not isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU)):
        return None
    return _native(hdu.data)


def read_hdus(path, error: type[Exception]) -> list[Hdu]:
    """All HDUs of the FITS file at ``path`` (.fits or .fits.gz), fully read.

    A file that is not FITS, is truncated or is otherwise unreadable raises ``error`` with a
    message naming the file; a missing file raises FileNotFoundError.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        from astropy.io import fits
        from astropy.utils.exceptions import AstropyUserWarning
    except ImportError as exc:
        message = f"reading FITS files ({path}) needs astropy (pip install astropy)"
        raise ImportError(message) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", AstropyUserWarning)  # truncation is only a warning
            with fits.open(path, memmap=False, lazy_load_hdus=False) as hdul:
                return [Hdu(h.name, _keywords(h.header), _hdu_data(h)) for h in hdul]
    except (OSError, ValueError, TypeError, IndexError, KeyError, EOFError,
            AstropyUserWarning) as exc:
        raise error(f"{path}: not a readable FITS file ({type(exc).__name__}: {exc})") from exc
