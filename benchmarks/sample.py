"""The 25 LAMOST sample spectra as PyLASP prepared them, shared by the LM benchmarks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxlasp.grids import lamost_fit_grid
from jaxlasp.io.pylasp_group import read_pylasp_group
from jaxlasp.model import build_forward_model

GROUP = (Path(__file__).resolve().parents[1].parent
         / "shared/data/lamost-dr10-sample/pylasp_group0.npz")


def load_sample(size: int | None = None):
    """(emulator, forward model, flux, weights) of the sample, repeated or cut to ``size`` spectra.

    flux (size, 1327) is divided by each spectrum's median; weights are 1 except PyLASP's dropped
    last pixel. Exits with a message when the real data is absent.
    """
    if not GROUP.exists():
        raise SystemExit(f"needs the LAMOST sample at {GROUP}")
    emulator, data = read_pylasp_group(GROUP)
    grid = lamost_fit_grid(emulator.grid)
    flux = data["spectra"].astype(np.float64)
    flux = np.resize(flux, (size or len(flux), grid.n))
    flux /= np.median(flux, axis=1, keepdims=True)
    weights = np.ones_like(flux)
    weights[:, -1] = 0.0
    return emulator, build_forward_model(emulator, grid), flux, weights
