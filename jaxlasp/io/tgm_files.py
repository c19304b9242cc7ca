"""Read TGM emulator coefficients: ULySS model FITS files and PyLASP's prepared group arrays.

ALGORITHM §a.3 and §b. The ULySS TGM file holds three images (HDU0 warm, HDU1 hot, HDU2 cold) of
NAXIS1 = pixels × NAXIS2 = terms, on a wavelength grid linear in air Å given by CRVAL1, CDELT1
(or CD1_1) and CRPIX1. PyLASP's group (``.npz``, or ``.pt`` written by ``torch.save``) carries
the same coefficients as ``spec_coef`` (terms, pixels, regimes) with the pixel edges ``borders``.
"""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from jaxlasp.emulators.tgm import N_TERMS, TGMEmulator
from jaxlasp.grids import LinearGrid
from jaxlasp.io._fits import read_hdus

FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz")
"""File-name endings read as ULySS FITS models."""
GROUP_VERSION = 2
"""TGM interpolator version of PyLASP's prepared groups (ELODIE 3.2, ALGORITHM §a)."""


class ModelFileError(ValueError):
    """A file that cannot be read as a TGM emulator model."""


def read_tgm(path, dtype=np.float64) -> TGMEmulator:
    """The TGM emulator stored at ``path``; the reader is chosen by the file-name suffix.

    ``.fits``/``.fit``/``.fits.gz``: ULySS model file. ``.npz``: PyLASP prepared group (numpy
    only). ``.pt``: the same group saved by PyTorch (needs ``torch``; the file is unpickled, so only
    read trusted files). Coefficients are cast to ``dtype`` (float64 needs ``jax_enable_x64``); the
    grid is the model's linear air-wavelength grid [Å].
    """
    name = Path(path).name.lower()
    if name.endswith(FITS_SUFFIXES):
        return read_tgm_fits(path, dtype)
    if name.endswith(".npz"):
        return tgm_from_group(*_group_arrays(load_npz(path), path), path, dtype)
    if name.endswith(".pt"):
        return tgm_from_group(*_group_arrays(_load_pt(path), path), path, dtype)
    raise ModelFileError(
        f"{path}: unknown model file type; expected one of {FITS_SUFFIXES + ('.npz', '.pt')}"
    )


def tgm_from_group(spec_coef, borders, source, dtype=np.float64) -> TGMEmulator:
    """Emulator from PyLASP's group arrays (ALGORITHM §b).

    spec_coef: (terms ≥ 23, pixels, 3) indexed [term, pixel, regime]; borders: (pixels+1,) or
    (1, pixels+1) model pixel edges [Å], float32 in PyLASP's files and so good to ~2e-4 Å only. The
    grid is rebuilt from them with step = round(mean edge spacing, 6) and start = round(first edge
    + step/2, 3), which recovers PyLASP's 4199.2 + 0.2 j exactly. ``source`` names the file in
    error messages.
    """
    spec_coef = np.asarray(spec_coef)
    borders = np.asarray(borders, dtype=np.float64).ravel()
    n_terms = N_TERMS[GROUP_VERSION]
    if spec_coef.ndim != 3 or spec_coef.shape[0] < n_terms or spec_coef.shape[2] != 3:
        raise ModelFileError(
            f"{source}: spec_coef has shape {spec_coef.shape}; expected (≥{n_terms}, pixels, 3)"
        )
    n_pix = spec_coef.shape[1]
    if borders.size != n_pix + 1 or not np.all(np.diff(borders) > 0):
        raise ModelFileError(
            f"{source}: borders must be {n_pix + 1} increasing pixel edges; "
            f"got {borders.size} values"
        )
    step = round(float(np.mean(np.diff(borders))), 6)
    start = round(float(borders[0]) + step / 2, 3)
    coef = np.nan_to_num(np.transpose(spec_coef[:n_terms], (2, 0, 1)))
    return TGMEmulator(jnp.asarray(coef, dtype), GROUP_VERSION, LinearGrid(start, step, n_pix))


def read_tgm_fits(path, dtype=np.float64) -> TGMEmulator:
    """ULySS TGM model FITS file → emulator (regimes warm, hot, cold = HDU0, 1, 2)."""
    hdus = read_hdus(path, ModelFileError)
    images = [h.data for h in hdus[:3]]
    if len(images) < 3 or not all(isinstance(d, np.ndarray) for d in images):
        found = [type(h.data).__name__ if h.data is not None else "no data" for h in hdus]
        raise ModelFileError(
            f"{path}: not a TGM model: needs 3 image HDUs (warm, hot, cold), found {found}"
        )
    header = hdus[0].header
    _check_model_type(header, path)
    version = _version(header, path)
    _check_shapes(images, N_TERMS[version], path)
    grid = _linear_axis(header, images[0].shape[1], path)
    coef = np.stack([np.nan_to_num(d[:N_TERMS[version]]) for d in images])
    return TGMEmulator(jnp.asarray(coef, dtype), version, grid)


def _check_model_type(header: Mapping, path) -> None:
    """ULY_TYPE, where present, must be 'TGM'."""
    uly_type = header.get("ULY_TYPE")
    if uly_type is not None and str(uly_type).strip().upper() != "TGM":
        raise ModelFileError(f"{path}: ULY_TYPE is {uly_type!r}, not a TGM model")


def _version(header: Mapping, path) -> int:
    """Interpolator version from INTRP_V (1 when absent, as in ULySS)."""
    version = header.get("INTRP_V", 1)
    if version not in N_TERMS:
        raise ModelFileError(
            f"{path}: unknown TGM interpolator version INTRP_V={version!r} "
            f"(known: {sorted(N_TERMS)})"
        )
    return int(version)


def _check_shapes(images: list[np.ndarray], n_terms: int, path) -> None:
    """Three floating-point images of equal shape (23 or 26 terms ≥ n_terms, pixels)."""
    shapes = [d.shape for d in images]
    ok = (all(d.ndim == 2 and np.issubdtype(d.dtype, np.floating) for d in images)
          and len(set(shapes)) == 1 and shapes[0][0] in (23, 26) and shapes[0][0] >= n_terms)
    if not ok:
        raise ModelFileError(
            f"{path}: not a TGM model: the 3 images must be floating point with equal shape "
            f"(23 or 26 terms ≥ {n_terms}, pixels); found shapes {shapes}, "
            f"dtypes {[str(d.dtype) for d in images]}"
        )


def _linear_axis(header: Mapping, n: int, path) -> LinearGrid:
    """The linear wavelength grid [Å] of HDU0: CRVAL1 at pixel CRPIX1, step CDELT1 or CD1_1."""
    ctype = str(header.get("CTYPE1", "")).strip().upper()
    dc_flag = header.get("DC-FLAG", 0)
    if "-" in ctype or dc_flag != 0:
        raise ModelFileError(
            f"{path}: the wavelength axis is not linear (CTYPE1={ctype!r}, DC-FLAG={dc_flag!r}); "
            "a TGM model must be sampled linearly in Å"
        )
    start, step = header.get("CRVAL1"), header.get("CDELT1", header.get("CD1_1"))
    if not isinstance(start, (int, float)) or not isinstance(step, (int, float)) or step <= 0:
        raise ModelFileError(
            f"{path}: needs numeric CRVAL1 and a positive CDELT1 or CD1_1 "
            f"(found CRVAL1={start!r}, step={step!r})"
        )
    crpix = header.get("CRPIX1", 1)
    return LinearGrid(float(start) - (crpix - 1) * float(step), float(step), n)


def load_npz(path):
    """The arrays of an ``.npz`` file (no pickles); ModelFileError if it is not a readable one."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelFileError(f"{path}: not a readable .npz file ({exc})") from exc


def _load_pt(path):
    """The dict ``torch.save`` wrote to a PyLASP ``.pt`` group (unpickled: trusted files only)."""
    try:
        import torch
    except ImportError as exc:
        raise ImportError(
            f"{path}: reading PyTorch .pt files needs torch (pip install torch); "
            "alternatively convert the group to .npz"
        ) from exc
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises many unrelated types for a bad file
        raise ModelFileError(f"{path}: not a readable .pt file ({exc})") from exc
    if not isinstance(data, Mapping):
        raise ModelFileError(f"{path}: expected a dict of arrays, found {type(data).__name__}")
    return data


def _group_arrays(data: Mapping, path) -> tuple[np.ndarray, np.ndarray]:
    """``spec_coef`` and ``borders`` of a PyLASP group, as numpy arrays."""
    missing = [k for k in ("spec_coef", "borders") if k not in data]
    if missing:
        raise ModelFileError(f"{path}: not a PyLASP group file: missing {missing}")
    return _to_numpy(data["spec_coef"]), _to_numpy(data["borders"])


def _to_numpy(x) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor."""
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x)
