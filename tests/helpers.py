"""Small helpers shared by the tests: golden-array grids and points, edited copies of real files."""
from __future__ import annotations

import math

import numpy as np

from jaxlasp.grids import LogGrid


def rel_err(ours, ref):
    """Largest absolute difference relative to the reference's largest magnitude."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    return np.max(np.abs(ours - ref)) / np.max(np.abs(ref))


def golden_grid(golden) -> LogGrid:
    """The observed ln-λ grid of GOLDEN.md's CurveFit arrays."""
    return LogGrid(float(golden["cf_meta_obs_start"]), float(golden["cf_meta_obs_step"]),
                   int(golden["cf_meta_npix"]))


def golden_theta(golden, i) -> np.ndarray:
    """θ = [mu, sigma, ln Teff, log g, [Fe/H]] of golden point ``i``."""
    return np.array([golden["pt_mu_pix"][i], golden["pt_sigma_pix"][i],
                     math.log(golden["pt_teff_K"][i]), golden["pt_logg"][i], golden["pt_feh"][i]])


def edited_lamost_copy(source, path, edit):
    """Write a copy of the LAMOST file ``source`` to ``path`` after ``edit(wavelength, flux,
    ivar)`` changed its first spectrum's arrays in place (vacuum Å); returns ``path``. The header
    is kept as LAMOST wrote it (astropy's verification would rewrite it)."""
    from astropy.io import fits

    with fits.open(source) as hdus:
        data = hdus[1].data
        edit(data["WAVELENGTH"][0], data["FLUX"][0], data["IVAR"][0])
        hdus.writeto(path, output_verify="ignore")
    return path
