"""jaxlasp: stellar parameters from spectra by full-spectrum fitting of an emulator, in JAX.

Importing jaxlasp enables float64 in JAX (``jax_enable_x64``): the CPU path computes in float64,
and float32 is chosen explicitly by casting the emulator (``TGMEmulator.astype``). Set the
environment variable ``JAXLASP_NO_X64=1`` to leave JAX's setting alone.
"""
import os

import jax

if not os.environ.get("JAXLASP_NO_X64"):
    jax.config.update("jax_enable_x64", True)

from jaxlasp.api import PYLASP, fit_arrays, fit_files, fit_spectra
from jaxlasp.emulators.tgm import ELODIE32_DOMAIN, Domain, TGMEmulator, tgm_flux
from jaxlasp.grids import LinearGrid, LogGrid
from jaxlasp.model import ForwardModel, batch_residuals, build_forward_model, components, residuals

__all__ = [
    "ELODIE32_DOMAIN",
    "PYLASP",
    "Domain",
    "ForwardModel",
    "LinearGrid",
    "LogGrid",
    "TGMEmulator",
    "batch_residuals",
    "build_forward_model",
    "components",
    "fit_arrays",
    "fit_files",
    "fit_spectra",
    "residuals",
    "tgm_flux",
]
