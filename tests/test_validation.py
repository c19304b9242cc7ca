"""benchmarks/validation.py: its statistics, the verdicts its tables print, and a smoke run.

The tables of the README come from this script; these tests check that a criterion that is not
met is reported as such (a ✗ / "NOT met"), on hand-made fit columns, and that the script still
runs end to end against the library (demo model, a few stars).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from jaxlasp.fit.driver import AT_BOUND, NOT_CONVERGED
from jaxlasp.mock import MockTruth

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "validation.py"


@pytest.fixture(scope="module")
def validation():
    spec = importlib.util.spec_from_file_location("validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_truth(n: int, rng) -> MockTruth:
    return MockTruth(teff=np.exp(rng.uniform(np.log(3100), np.log(20000), n)),
                     logg=rng.uniform(0, 5, n), feh=rng.uniform(-2.5, 0.5, n),
                     rv=rng.uniform(-300, 300, n), sigma=rng.uniform(40, 120, n))


def make_fit(truth: MockTruth, rng, width: float = 1.0, errors=None) -> dict[str, np.ndarray]:
    """Fit columns whose pulls are Gaussian with standard deviation ``width``."""
    n = len(truth.teff)
    errors = errors or {"rv": 3.0, "teff": 50.0, "logg": 0.1, "feh": 0.05}
    fit = {"flags": np.zeros(n, np.int64), "loss": np.ones(n), "n_used": np.full(n, 1327)}
    for name, err in errors.items():
        fit[f"{name}_err"] = np.full(n, err)
        fit[name] = getattr(truth, name) + width * err * rng.standard_normal(n)
    return fit


def test_robust_scatter_and_rms(validation):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(200_000)
    assert validation.robust_scatter(x) == pytest.approx(1.0, abs=0.01)
    x[:1000] = 1e6  # 0.5 % outliers move the std, not the robust width
    assert validation.robust_scatter(x) == pytest.approx(1.0, abs=0.02)
    assert np.std(x) > 1000
    assert validation.rms(np.array([3.0, -4.0])) == pytest.approx(math.sqrt(12.5))
    assert math.isnan(validation.robust_scatter(np.array([])))


def test_upper_bound_is_clopper_pearson(validation):
    # 0 of n: the exact bound 1 − 0.05^(1/n) (≈ 3/n, the "rule of three")
    assert validation.upper_bound(0, 1000) == pytest.approx(1 - 0.05 ** (1 / 1000), rel=1e-9)
    assert validation.upper_bound(0, 200) > 0.01 > validation.upper_bound(0, 1000)
    assert validation.upper_bound(5, 5) == 1.0


def test_trustworthy_and_pulls_leave_out_flagged_fits(validation):
    rng = np.random.default_rng(1)
    truth = make_truth(10, rng)
    fit = make_fit(truth, rng)
    fit["flags"][[2, 5]] = [AT_BOUND, NOT_CONVERGED]
    fit["logg"][2] += 100.0
    p = validation.pulls(fit, truth)
    assert all(v.size == 8 for v in p.values())
    assert np.max(np.abs(p["logg"])) < 10


def test_known_noise_scale(validation):
    fit = {"n_used": np.array([1005, 105]), "loss": np.array([1.0, 0.5])}
    # χ² = M·loss²: 1005 and 26.25 → √((M − 5)/χ²)
    np.testing.assert_allclose(validation.known_noise_scale(fit),
                               [math.sqrt(1000 / 1005), math.sqrt(100 / 26.25)])


def test_calibration_table_marks_failures(validation):
    rng = np.random.default_rng(2)
    truth = make_truth(4000, rng)
    good, wide = make_fit(truth, rng, 1.0), make_fit(truth, rng, 1.3)
    table = "\n".join(validation.calibration_table({"50": good, "10": wide}, truth))
    row_50 = next(line for line in table.splitlines() if line.startswith("| 50 |"))
    row_10 = next(line for line in table.splitlines() if line.startswith("| 10 |"))
    assert "✗" not in row_50 and row_50.endswith("| met |")
    assert row_10.count("✗") == 4
    assert "**NOT met**: RV, Teff, log g, [Fe/H]" in row_10


def test_robustness_row_verdicts(validation):
    rng = np.random.default_rng(3)
    n = 1000
    truth = make_truth(n, rng)
    base = make_fit(truth, rng, 0.0)
    modes = ("5000 K", "7500 K", "reference", "global", "from truth")
    fits = {mode: {k: v.copy() for k, v in base.items()} for mode in modes}
    fits["5000 K"]["teff"][:300] += 2000.0
    row = validation.robustness_row("x", fits, truth)
    assert "| 30.0 % | 30.0 % | 0.0 % |" in row
    assert "0.0 % (0 of 1000; ≤ 0.3 %)" in row and row.endswith("| met |")
    fits["global"]["teff"][:20] += 500.0  # 2 % move: the criterion fails
    row = validation.robustness_row("x", fits, truth)
    assert "2.0 % (20 of 1000" in row and "**NOT met**" in row
    small = {mode: {k: v[:100] for k, v in fit.items()} for mode, fit in fits.items()}
    small["global"] = {k: v[:100] for k, v in base.items()}
    row = validation.robustness_row("x", small, MockTruth(*(v[:100] for v in truth)))
    assert "met (N too small for the bound to be < 1 %)" in row  # 0 of 100 cannot show < 1 %
    # Adam: one more column (Adam from the truth against the reference), same verdict column
    fits["from truth"]["teff"][:50] += 300.0
    row = validation.robustness_row("x", fits, truth, "adam")
    header = validation.robustness_header("adam")
    columns = header[0].replace("\\|", "").count("|")  # escaped bars are inside cells
    assert row.count("|") == columns == header[1].count("|")
    assert "| 5.0 % | 2.0 % (20 of 1000" in row


def test_agreement_table(validation):
    rng = np.random.default_rng(5)
    truth = make_truth(500, rng)
    lm_fit = make_fit(truth, rng)
    adam_fit = {k: v.copy() for k, v in lm_fit.items()}
    adam_fit["teff"] = adam_fit["teff"] + 0.01 * adam_fit["teff_err"]
    adam_fit["logg"][:10] += 2 * adam_fit["logg_err"][:10]
    row = validation.agreement_table({("all", "50"): (adam_fit, lm_fit)})[-1]
    assert row.startswith("| all | 50 | 500 | 0.000 / 0.000 | 0.010 / 0.010 | 0.000 / 0.000 |")
    assert row.endswith("| 2.0 % |")


def test_same_basin_and_basin_table(validation):
    rng = np.random.default_rng(4)
    truth = make_truth(2000, rng)
    from_truth = make_fit(truth, rng, 1.0)
    glob = {k: v.copy() for k, v in from_truth.items()}
    # 40 stars in another basin: 30 with a lower χ² (global better), 10 with a higher one
    glob["logg"][:40] += 2.0
    glob["loss"][:30] = 0.99
    glob["loss"][30:40] = 1.01
    assert validation.same_basin(glob, from_truth).sum() == 1960
    table = validation.basin_table({"10": (glob, from_truth)}, truth)
    row = table[-1]
    assert row.startswith("| 10 | 2000 | 30 (1.5 %) | 10 (0.5 %) |")
    cells = [c.strip() for c in row.split("|")]
    all_std, same_std = (float(x) for x in cells[6].split(" (")[0].split(" → "))
    assert all_std > 2 and same_std == pytest.approx(1.0, abs=0.05)


@pytest.mark.slow
def test_smoke_run_on_the_demo_model(validation, capsys, tmp_path):
    saved = tmp_path / "fits.npz"
    validation.main(["--model", "demo", "--n", "3", "--chunk", "3", "--snr", "50",
                     "--sections", "robustness", "calibration", "--save", str(saved)])
    out = capsys.readouterr().out
    assert "## robustness" in out and "## calibration" in out
    assert "| Teff 8000–20000 K | 3 |" in out and "| 50 | " in out
    # the saved fits print the same tables without fitting again
    validation.main(["--model", "demo", "--n", "3", "--snr", "50", "--sections", "robustness",
                     "calibration", "--load", str(saved)])
    again = capsys.readouterr()
    assert "fitted" not in again.err
    tables = [o[o.index("## robustness"):o.index("# total")] for o in (out, again.out)]
    assert tables[0] == tables[1]
    with pytest.raises(SystemExit):
        validation.main(["--model", "demo", "--n", "4", "--load", str(saved)])
