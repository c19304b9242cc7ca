"""Readers: LAMOST spectra, TGM emulator files, PyLASP prepared groups (astropy loaded lazily)."""
from jaxlasp.io.lamost import (
    FEW_GOOD_PIXELS,
    NONFINITE_FLUX,
    NONPOSITIVE_FLUX,
    LamostSpectrum,
    SpectrumFileError,
    cut_to_grid,
    fill_nonfinite,
    fit_grid,
    read_lamost,
)
from jaxlasp.io.pylasp_group import read_pylasp_group
from jaxlasp.emulators.tgm import crop_to
from jaxlasp.io.tgm_files import ModelFileError, read_tgm, tgm_from_group

__all__ = [
    "FEW_GOOD_PIXELS", "NONFINITE_FLUX", "NONPOSITIVE_FLUX", "LamostSpectrum", "ModelFileError",
    "SpectrumFileError", "crop_to", "cut_to_grid", "fill_nonfinite", "fit_grid", "read_lamost",
    "read_pylasp_group", "read_tgm", "tgm_from_group",
]
