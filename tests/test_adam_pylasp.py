"""LASP-Adam in PyLASP's own setting (group of 25, convergence="group") against its CSVs.

PyLASP's Adam inputs (ALGORITHM §i): the prepared group's raw flux divided, in float32, by
its median over the 1327 fitted pixels (§i.1); pixels 0..N−3 in the fit and the loss (§i.4);
the last resampling bin clipped (``edges="clip"``, §d.3); the Legendre polynomial fitted without
the Clean mask (§f.1, §j.10), i.e. ``mask_polynomial=False``. Measured with
``mask_polynomial=True``, the Clean-mode differences in Teff grow from median 0.25 K / max 26 K to
median 9 K / max 88 K.

Left different on purpose (the issue's fixes): we report each spectrum's best iterate where PyLASP
reports x one Adam step later (§i.6), errors come from the exact Jacobian instead of h = 0.05
central differences (§i.7), and the emulator basis is exact where PyLASP's float32 one loses digits
for cool stars (§j.1).
"""
from __future__ import annotations

import numpy as np
import pytest
from conftest import GROUP, SAMPLE, need

from jaxlasp.compare import (
    PYLASP_COLUMNS,
    QUANTITIES,
    differences,
    format_differences,
    read_pylasp_csv,
)
from jaxlasp.fit import adam
from jaxlasp.groups.columns import make_table, result_columns
from jaxlasp.groups.inputs import start_points

FIT_PIXELS_DROPPED = 2
"""PyLASP-Adam leaves pixels N−2 and N−1 out of the Legendre fit and the loss (§i.4)."""
CLEAN_STOP = 170
"""Last iteration index of PyLASP's own CPU re-run in Clean mode (ALGORITHM §i.5). The published
Clean CSV's run stopped at 200 instead (its ``iter``), so it made one more Clean call (it = 180)."""


def pylasp_flux(raw):
    """PyLASP-Adam's f_norm: raw flux over its median on the fitted pixels, divided in float32."""
    raw = np.asarray(raw, np.float32)
    return (raw / np.median(raw, axis=1, keepdims=True)).astype(np.float64)


@pytest.fixture(scope="module")
def inputs(elodie):
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.io.pylasp_group import read_pylasp_group
    from jaxlasp.model import build_forward_model

    _, data = read_pylasp_group(need(GROUP))
    grid = lamost_fit_grid(elodie.grid)
    flux = pylasp_flux(data["spectra"])
    weights = np.zeros_like(flux)
    weights[:, :grid.n - FIT_PIXELS_DROPPED] = 1.0
    theta0 = start_points(data["ini_params"][:, :3], len(flux))
    fm = build_forward_model(elodie, grid, edges="clip")
    return fm, grid, data["ids"], theta0, flux, weights


def fit_group(inputs, clean):
    fm, _, _, theta0, flux, weights = inputs
    return adam.fit_batch_adam(fm, theta0, flux, weights, clean=clean, convergence="group",
                               mask_polynomial=False)


@pytest.fixture(scope="module")
def noclean_fit(inputs):
    return fit_group(inputs, clean=False)


@pytest.fixture(scope="module", params=[False, True], ids=["noclean", "clean"])
def run(request, inputs):
    clean = request.param
    _, grid, ids, _, _, _ = inputs
    fitted = fit_group(inputs, True) if clean else request.getfixturevalue("noclean_fit")
    result, group_loss = fitted
    table = make_table(ids, result_columns(result, grid), [""] * len(ids))
    name = "clean" if clean else "noclean"
    reference = read_pylasp_csv(need(SAMPLE / f"reference_pylasp_adam_{name}.csv"))
    diff = differences(table, reference)
    print(f"\njaxlasp Adam (group, {name}, best iterate) − PyLASP Adam:\n"
          f"{format_differences(diff)}")
    return clean, result, float(group_loss), table, reference, diff


def sigma_units(diff, reference):
    """|Δ| in units of PyLASP's errors, per quantity (common ids)."""
    return {q: np.abs(diff[q]) / np.array([reference[i][PYLASP_COLUMNS[q] + "_err"]
                                           for i in diff["id"]]) for q in QUANTITIES}


@pytest.mark.slow
def test_stops_at_pylasps_iteration(run):
    clean, result, _, _, reference, _ = run
    assert np.all(result.converged) and np.all(result.flags == 0)
    last = CLEAN_STOP if clean else {int(r["iter"]) for r in reference.values()}.pop()
    np.testing.assert_array_equal(result.n_iter, last + 1)   # iter is 0-based


@pytest.mark.slow
def test_losses(run, inputs):
    """PyLASP's alone_loss (masked RMS over N−2 pixels) and total_loss (the group's RMS).

    No Clean: measured ≤ 1.0e-4 relative (float32 rounding of PyLASP's model). Clean: ours are
    0.01–1.7 % lower (3709130), the masks differ (one Clean call fewer, see ``CLEAN_STOP``).
    """
    clean, result, group_loss, table, reference, diff = run
    n_fit = inputs[1].n - FIT_PIXELS_DROPPED
    n_used = np.sum(np.asarray(result.mask), axis=1)
    alone = dict(zip(table["id"], np.asarray(result.loss) * np.sqrt(n_used / n_fit)))
    rel = np.array([alone[i] / reference[i]["alone_loss"] - 1 for i in diff["id"]])
    total = {r["total_loss"] for r in reference.values()}.pop()
    tol = 0.02 if clean else 2e-4
    print(f"alone_loss ratio − 1: median {np.median(rel):.2e}, max |.| {np.max(np.abs(rel)):.2e}; "
          f"total_loss ratio − 1: {group_loss / total - 1:.2e}")
    assert np.max(np.abs(rel)) <= tol
    assert abs(group_loss / total - 1) <= tol


@pytest.mark.slow
def test_post_step_parameters_reproduce_pylasp(inputs, noclean_fit):
    """No Clean: PyLASP's reported x (one step after the last evaluated point, §i.6) from our loop.

    What is left is float32: RV quantised to 0.036 km/s in PyLASP's CSV (§j.7), and up to 1 K on
    the two cool stars (3713139, 3715155) where PyLASP's float32 emulator is off by ~1 % (§j.1).
    Measured median/max: 0.014/0.036 km/s, 0.06/0.95 K, 2e-4/0.0017, 3e-5/0.0016.
    """
    result, _ = noclean_fit
    reference = read_pylasp_csv(need(SAMPLE / "reference_pylasp_adam_noclean.csv"))
    fm, grid, ids, theta0, flux, weights = inputs
    state = adam.run(fm, adam.x_from_theta(theta0), flux, weights, clean=False,
                     convergence="group", mask_polynomial=False)
    np.testing.assert_array_equal(state.n_iter, result.n_iter)
    post_step = result._replace(theta=adam.theta_from_x(state.x))
    post = make_table(ids, result_columns(post_step, grid), [""] * len(ids))
    diff = differences(post, reference)
    print(f"\npost-step parameters − PyLASP Adam (No Clean):\n{format_differences(diff)}")
    median = {"rv": 0.04, "teff": 0.3, "logg": 0.001, "feh": 0.001}
    maximum = {"rv": 0.1, "teff": 2.0, "logg": 0.005, "feh": 0.005}
    for q in QUANTITIES:
        assert np.median(np.abs(diff[q])) <= median[q], q
        assert np.max(np.abs(diff[q])) <= maximum[q], q


@pytest.mark.slow
def test_reported_parameters(run):
    """Our best iterates against PyLASP's CSV.

    No Clean: the difference is PyLASP's post-step reporting (one Adam step, up to 0.29 km/s and
    5.5 K here): medians 0.14 km/s, 2.1 K, 0.0016, 5e-4; maxima 0.29 km/s, 5.5 K, 0.010, 0.006.
    The LM-vs-CurveFit tolerances hold except the RV median (0.05 km/s). Clean: medians 0.023 km/s,
    0.25 K, 3e-4, 3e-4 (LM tolerances hold); the maxima (0.42 km/s on 3712166, 26 K, 0.019 and
    0.019 dex on 3709130) come from different final masks: ≤ 0.41 of PyLASP's errors.
    """
    clean, _, _, _, reference, diff = run
    median = {"rv": 0.05 if clean else 0.2, "teff": 3.0, "logg": 0.005, "feh": 0.003}
    maximum = {"rv": 0.4, "teff": 15.0, "logg": 0.03, "feh": 0.015}
    in_sigma = sigma_units(diff, reference)
    for q in QUANTITIES:
        print(f"{q}: max |Δ| = {np.max(in_sigma[q]):.3f} PyLASP σ")
        assert np.median(np.abs(diff[q])) <= median[q], q
        if clean:
            assert np.max(in_sigma[q]) <= 0.5, q
        else:
            assert np.max(np.abs(diff[q])) <= maximum[q], q


@pytest.mark.slow
def test_errors_near_pylasps(run):
    """Exact-Jacobian errors vs PyLASP's h = 0.05 central differences (±12 % in Teff) and, with
    Clean, its dof that ignores the mask: measured median ≤ 3.3 %, max 14.5 % (log g, 3709139)."""
    _, _, _, _, _, diff = run
    for q in QUANTITIES:
        ratio = np.abs(diff[q + "_err"])
        assert np.median(ratio) <= 0.05 and np.max(ratio) <= 0.2, q
