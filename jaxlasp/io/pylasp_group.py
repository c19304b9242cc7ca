"""Read a PyLASP prepared group (``pylasp_group0.npz``, ALGORITHM §b) with numpy only.

The file's ``ID`` array is a pickled object array of file names. It is read with an unpickler that
only admits numpy's array reconstruction, so a crafted file cannot run code.
"""
from __future__ import annotations

import io
import pickle
import zipfile

import numpy as np

from jaxlasp.emulators.tgm import TGMEmulator
from jaxlasp.io.lamost import file_stem
from jaxlasp.io.tgm_files import ModelFileError, load_npz, tgm_from_group

_GROUP_KEYS = ("spec_coef", "borders", "spectra_data", "wavelength_data", "ini_params")
_ARRAY_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


def read_pylasp_group(path) -> tuple[TGMEmulator, dict]:
    """The emulator and the spectra of a PyLASP group file.

    Returns (emulator, data) with data = {"spectra": (B, N) raw float32 flux, "wave": (N,) float32
    air wavelengths [Å], "ids": list of B file stems (e.g. '3703110'), or None if the file has no
    readable ``ID``, "ini_params": (B, 5) initial [Teff K, log g, [Fe/H], mu px, sigma px]}.
    """
    with load_npz(path) as npz:
        missing = [k for k in _GROUP_KEYS if k not in npz]
        if missing:
            raise ModelFileError(f"{path}: not a PyLASP group file: missing {missing}")
        arrays = {k: npz[k] for k in _GROUP_KEYS}
    emulator = tgm_from_group(arrays["spec_coef"], arrays["borders"], path)
    data = {
        "spectra": arrays["spectra_data"],
        "wave": arrays["wavelength_data"].ravel(),
        "ids": _read_ids(path),
        "ini_params": arrays["ini_params"],
    }
    return emulator, data


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays of plain Python objects and refuses everything else."""

    def find_class(self, module, name):
        if (module, name) not in _ARRAY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        return super().find_class(module, name)


def _read_ids(path) -> list[str] | None:
    """File stems from the group's pickled ``ID`` array, or None if absent or not plain strings."""
    try:
        with zipfile.ZipFile(path) as zf, zf.open("ID.npy") as member:
            fp = io.BytesIO(member.read())
        version = np.lib.format.read_magic(fp)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        header(fp)
        ids = _ArrayUnpickler(fp).load()
    except (KeyError, ValueError, pickle.UnpicklingError, EOFError):
        return None
    names = np.asarray(ids, dtype=object).ravel()
    if not all(isinstance(n, str) for n in names):
        return None
    return [file_stem(n) for n in names]
