"""LM on the 25 real LAMOST spectra against PyLASP's CurveFit results (reference CSVs), for the
exact-Jacobian path (method "lm") and CurveFit's own path (method "curvefit")."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import GOLDEN, SAMPLE, need
from helpers import sample_fit

from jaxlasp.compare import differences, format_differences, read_pylasp_csv

# Issue 3's acceptance figures: median and max |Δ| for RV [km/s], Teff [K], log g, [Fe/H].
MEDIAN = {"rv": 0.05, "teff": 3.0, "logg": 0.005, "feh": 0.003}
MAXIMUM = {"rv": 0.3, "teff": 15.0, "logg": 0.03, "feh": 0.015}
ERROR_RATIO = 0.10
# CurveFit's path against PyLASP re-run on one machine (golden cfrun): what following MINPACK's
# path with our model gives; the measured maxima are 0.004 km/s, 0.68 K, 0.0005, 0.0015.
RERUN_MAXIMUM = {"rv": 0.01, "teff": 1.5, "logg": 0.002, "feh": 0.003}
RUNS = [("lm", False), ("lm", True), ("curvefit", False), ("curvefit", True)]


def golden_rerun(clean: bool) -> dict[str, dict[str, float]]:
    """PyLASP CurveFit re-run on the 25 spectra (GOLDEN §4.2 ``cfrun{0,1}_csv``), keyed by file
    stem as ``read_pylasp_csv``; failed rows (−9999) left out."""
    golden = np.load(need(GOLDEN), allow_pickle=True)
    columns = [str(c) for c in golden["cfrun_csv_columns"]]
    rows = golden["cfrun1_csv" if clean else "cfrun0_csv"]
    return {Path(str(i)).stem: dict(zip(columns, map(float, row)))
            for i, row in zip(golden["adamrun_ids"], rows) if row[1] > -9000}


@pytest.fixture(scope="module", params=RUNS, ids=[f"{m}-{'clean' if c else 'noclean'}"
                                                  for m, c in RUNS])
def run(request):
    method, clean = request.param
    table = sample_fit(method, clean)
    name = "clean" if clean else "noclean"
    reference = read_pylasp_csv(need(SAMPLE / f"reference_pylasp_curvefit_{name}.csv"))
    diff = differences(table, reference)
    print(f"\njaxlasp {method} ({name}) − PyLASP CurveFit (published):\n"
          f"{format_differences(diff)}")
    return method, clean, table, diff


@pytest.mark.slow
def test_all_converge(run):
    _, _, table, _ = run
    assert len(table) == 25
    assert np.all(table["converged"]), table[~table["converged"]]
    assert np.all((table["flags"] & 0xFF) == 0)


@pytest.mark.slow
def test_medians(run):
    _, _, _, diff = run
    assert len(diff["id"]) >= 14
    for q, tol in MEDIAN.items():
        assert np.median(np.abs(diff[q])) <= tol, q


@pytest.mark.slow
def test_errors_within_ten_percent(run):
    _, _, _, diff = run
    for q in MEDIAN:
        assert np.max(np.abs(diff[q + "_err"])) <= ERROR_RATIO, q


@pytest.mark.slow
def test_maxima(run, request):
    """The maxima of issue 3. Exact path with Clean: its masks differ from PyLASP's on 3713134
    and 3713139 (each Clean acts on where the previous fit stopped), 30–41 K (strict xfail).
    CurveFit's path with Clean: on the spectra PyLASP's own re-run reproduces; 3715155 is left
    out because PyLASP itself does not reproduce its published value: on this platform its first
    LM step from 7500 K goes to σ = −0.15 px and the run fails (GOLDEN cfrun1 = −9999)."""
    method, clean, _, diff = run
    if method == "lm" and clean:
        request.applymarker(pytest.mark.xfail(strict=True, reason=(
            "exact-Jacobian Clean path ends 30–41 K from PyLASP on 3713134/3713139 with other "
            "masks; method='curvefit' follows PyLASP's path (issue 3 note)")))
    keep = np.ones(len(diff["id"]), bool)
    if method == "curvefit" and clean:
        keep = np.isin(diff["id"], list(golden_rerun(clean=True)))
        assert list(diff["id"][~keep]) == ["3715155"]
    for q, tol in MAXIMUM.items():
        assert np.max(np.abs(diff[q][keep])) <= tol, q


@pytest.mark.slow
@pytest.mark.parametrize("clean", [False, True], ids=["noclean", "clean"])
def test_curvefit_reproduces_pylasp_rerun(clean):
    """CurveFit's path against PyLASP re-run on one machine, all 24 spectra it fits."""
    diff = differences(sample_fit("curvefit", clean), golden_rerun(clean))
    print(f"\njaxlasp curvefit − PyLASP re-run (GOLDEN cfrun{int(clean)}):\n"
          f"{format_differences(diff)}")
    assert len(diff["id"]) == 24
    for q, tol in RERUN_MAXIMUM.items():
        assert np.max(np.abs(diff[q])) <= tol, q
    for q in MEDIAN:
        assert np.max(np.abs(diff[q + "_err"])) <= ERROR_RATIO, q

