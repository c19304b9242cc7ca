"""LASP-Adam in float32 against float64 on the 25 real spectra (issue 4).

A float32 run is chosen by casting the emulator (``TGMEmulator.astype``): the Adam loop then runs
in float32 except the emulator's 23 basis values, which stay float64 so that the cool-star
cancellation of PyLASP's float32 emulator (ALGORITHM §j.1) does not come back. Errors, loss and
flags are computed in float64 at the float32 solution (``fit_batch_adam``).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SAMPLE, need
from helpers import sample_fit

from jaxlasp.api import PYLASP, fit_files
from jaxlasp.compare import QUANTITIES
from jaxlasp.fit import adam

# The LM-vs-CurveFit tolerances, which the issue sets for float32 vs float64: median, max |Δ|.
MEDIAN = {"rv": 0.05, "teff": 3.0, "logg": 0.005, "feh": 0.003}
MAXIMUM = {"rv": 0.3, "teff": 15.0, "logg": 0.03, "feh": 0.015}


def float64_shapes(fn, *args) -> set[tuple[int, ...]]:
    """Shapes of all float64 values in the jaxpr of ``fn(*args)`` (nested jaxprs included)."""
    text = str(jax.make_jaxpr(fn)(*args))
    return {tuple(int(d) for d in dims.split(",") if d) for dims in re.findall(r"f64\[([\d,]*)\]",
                                                                             text)}


@pytest.mark.parametrize("clean", [False, True], ids=["noclean", "clean"])
def test_loop_computes_in_float32(elodie, clean):
    """Only per-spectrum scalars and the (3, 23) emulator basis are float64 in the loop."""
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.model import build_forward_model

    grid = lamost_fit_grid(elodie.grid)
    fm = build_forward_model(elodie.astype(jnp.float32), grid)
    batch = 3
    x0 = jnp.zeros((batch, 5), jnp.float32)
    flux = jnp.ones((batch, grid.n), jnp.float32)
    run = jax.tree_util.Partial(adam.run, clean=clean)
    shapes = float64_shapes(run, fm, x0, flux, flux)
    assert shapes and all(np.prod(s) <= batch * 3 * 23 for s in shapes), shapes
    final = jax.eval_shape(run, fm, x0, flux, flux)
    assert final.best_x.dtype == jnp.float32 and final.best_loss.dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("clean", [False, True], ids=["noclean", "clean"])
def test_float32_agrees_with_float64(elodie, clean):
    """Measured (No Clean / Clean, adaptive schedule): medians 4e-5 / 0.009 km/s, 0.002 / 0.22 K,
    1e-6 / 4e-4 dex; maxima 0.16 / 0.06 km/s, 1.7 / 2.5 K, 0.0015 / 0.0024, 0.0007 / 0.0009 dex.
    (With PyLASP's fixed Clean schedule: maxima 0.07 km/s, 0.8 K, ≤ 0.07 σ.) The maxima
    move with round-off (an earlier state of the forward model gave 3.8 K): near the minimum the
    loss is flat (0.07 σ changes χ² by 0.005), so round-off steers where Adam stops."""
    paths = sorted(need(SAMPLE / "fits").glob("*.fits"))
    wide = sample_fit("adam", clean=clean)
    single = fit_files(paths, elodie.astype(jnp.float32), method="adam", clean=clean,
                        **PYLASP)
    assert np.all(single["converged"]) and np.all(wide["converged"])
    for q in QUANTITIES:
        delta = np.abs(np.asarray(single[q]) - np.asarray(wide[q]))
        print(f"{q}: median {np.median(delta):.2e} max {np.max(delta):.2e}")
        assert np.median(delta) <= MEDIAN[q] and np.max(delta) <= MAXIMUM[q], q
        np.testing.assert_allclose(single[q + "_err"], wide[q + "_err"], rtol=0.01)
