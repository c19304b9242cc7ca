"""Readers: spectra of any registered survey (LAMOST, DESI, plain arrays, specutils), TGM emulator
files, PyLASP prepared groups (astropy loaded lazily)."""
from jaxlasp.emulators.tgm import crop_to
from jaxlasp.io._fits import fits_backend, set_fits_backend
from jaxlasp.io.arrays import from_specutils, spectrum_from_arrays
from jaxlasp.io.desi import read_desi
from jaxlasp.io.lamost import (
    FEW_GOOD_PIXELS,
    NONFINITE_FLUX,
    NONPOSITIVE_FLUX,
    LamostSpectrum,
    Spectrum,
    SpectrumFileError,
    cut_to_grid,
    fill_nonfinite,
    fit_grid,
    read_lamost,
)
from jaxlasp.io.pylasp_group import read_pylasp_group
from jaxlasp.io.readers import (
    FileProbe,
    Reader,
    get_reader,
    open_probe,
    read_spectra,
    reader_for,
    register_reader,
)
from jaxlasp.io.tgm_files import ModelFileError, read_tgm, tgm_from_group

__all__ = [
    "FEW_GOOD_PIXELS", "NONFINITE_FLUX", "NONPOSITIVE_FLUX", "FileProbe", "LamostSpectrum",
    "ModelFileError", "Reader", "Spectrum", "SpectrumFileError", "crop_to", "cut_to_grid",
    "fill_nonfinite", "fit_grid", "fits_backend", "from_specutils", "get_reader", "open_probe",
    "read_desi", "read_lamost", "read_pylasp_group", "read_spectra", "read_tgm", "reader_for",
    "register_reader", "set_fits_backend", "spectrum_from_arrays", "tgm_from_group",
]
