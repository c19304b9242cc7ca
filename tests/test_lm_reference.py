"""LM on the 25 real LAMOST spectra against PyLASP's CurveFit results (reference CSVs)."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import ELODIE, SAMPLE, need
from jaxlasp.api import fit_files
from jaxlasp.compare import differences, format_differences, read_pylasp_csv

# Issue 3's acceptance figures: median and max |Δ| for RV [km/s], Teff [K], log g, [Fe/H].
MEDIAN = {"rv": 0.05, "teff": 3.0, "logg": 0.005, "feh": 0.003}
MAXIMUM = {"rv": 0.3, "teff": 15.0, "logg": 0.03, "feh": 0.015}
ERROR_RATIO = 0.10


@pytest.fixture(scope="module", params=[False, True], ids=["noclean", "clean"])
def run(request):
    paths = sorted(need(SAMPLE / "fits").glob("*.fits"))
    table = fit_files(paths, need(ELODIE), clean=request.param)
    name = "clean" if request.param else "noclean"
    reference = read_pylasp_csv(need(SAMPLE / f"reference_pylasp_curvefit_{name}.csv"))
    diff = differences(table, reference)
    print(f"\njaxlasp LM ({name}) − PyLASP CurveFit:\n{format_differences(diff)}")
    return request.param, table, diff


def test_all_converge(run):
    _, table, _ = run
    assert len(table) == 25
    assert np.all(table["converged"]), table[~table["converged"]]
    assert np.all((table["flags"] & 0xFF) == 0)


def test_medians(run):
    _, _, diff = run
    assert len(diff["id"]) >= 14
    for q, tol in MEDIAN.items():
        assert np.median(np.abs(diff[q])) <= tol, q


def test_errors_within_ten_percent(run):
    _, _, diff = run
    for q in MEDIAN:
        assert np.max(np.abs(diff[q + "_err"])) <= ERROR_RATIO, q


def test_maxima(run, request):
    clean, _, diff = run
    if clean:
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "Clean masks depend on the optimiser's path: on 3713134 and 3713139 the exact-Jacobian "
            "LM ends 30–40 K from PyLASP with different final masks (issue 3 note)")))
    for q, tol in MAXIMUM.items():
        assert np.max(np.abs(diff[q])) <= tol, q
