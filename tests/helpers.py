"""Small helpers shared by the tests: golden-array grids and points, edited copies of real files,
fits of the real sample shared by the test files."""
from __future__ import annotations

import fcntl
import math
import os
import pickle
from pathlib import Path

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


def computed_once(name: str, compute):
    """``compute()``, computed once per test session however many test files (on however many
    pytest-xdist workers) ask for it: the first caller stores its result, pickled, in the session's
    temporary cache folder (tests/conftest.py), and the others wait for it and read it. For the
    heavy fits several files compare against; ``name`` must say everything the result depends on."""
    folder = Path(os.environ["JAXLASP_CACHE_DIR"]) / "test-results"
    folder.mkdir(exist_ok=True)
    stored = folder / f"{name}.pickle"
    with open(folder / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if stored.exists():
            return pickle.loads(stored.read_bytes())
        result = compute()
        stored.write_bytes(pickle.dumps(result))
        return result


def sample_fit(method: str = "lm", clean: bool = False):
    """``fit_files`` on the 25 real LAMOST sample spectra with ELODIE 3.2 in PyLASP's setting
    (``jaxlasp.api.PYLASP``), computed once per test session (``computed_once``)."""
    from conftest import ELODIE, SAMPLE, need

    from jaxlasp.api import PYLASP, fit_files

    paths = sorted(need(SAMPLE / "fits").glob("*.fits"))
    return computed_once(f"sample-{method}-{'clean' if clean else 'noclean'}",
                         lambda: fit_files(paths, need(ELODIE), method=method, clean=clean,
                                           **PYLASP))
