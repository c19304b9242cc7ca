"""Adam (per-spectrum convergence) against jaxlasp's LM on the 25 spectra, No Clean and Clean."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import SAMPLE, need
from helpers import sample_fit

from jaxlasp.compare import QUANTITIES, differences, format_differences, read_pylasp_csv

# LM-vs-CurveFit tolerances (issue 4 asks Adam to meet them against LM): median and max |Δ|.
MEDIAN = {"rv": 0.05, "teff": 3.0, "logg": 0.005, "feh": 0.003}
MAXIMUM = {"rv": 0.3, "teff": 15.0, "logg": 0.03, "feh": 0.015}


@pytest.mark.slow
def test_adam_matches_lm_on_the_sample():
    lm, adam = sample_fit("lm"), sample_fit("adam")
    assert np.all(adam["converged"]) and list(adam["id"]) == list(lm["id"])
    for q in MEDIAN:
        delta = np.abs(np.asarray(adam[q]) - np.asarray(lm[q]))
        print(f"{q}: median {np.median(delta):.4f} max {np.max(delta):.4f}")
        assert np.median(delta) <= MEDIAN[q] and np.max(delta) <= MAXIMUM[q], q
        np.testing.assert_allclose(adam[q + "_err"], lm[q + "_err"], rtol=0.05)


@pytest.mark.slow
def test_adam_clean_matches_lm_clean():
    """Default Adam Clean (the adaptive schedule: CurveFit's Clean §g.1 at each spectrum's own
    convergence, as LM's Clean cycles) vs LM Clean, within the LM-vs-CurveFit tolerances.
    Measured: medians 0.011 km/s, 0.18 K, 0.0003, 0.0003 dex; maxima 0.16 km/s, 10.4 K
    (3706103), 0.009, 0.004 dex, all ≤ 0.17 LM σ; 24 of the 25 final masks equal LM's (3709130:
    2 pixels). PyLASP's fixed schedule (``clean_schedule="fixed"``: Adam-variant Clean §g.3 at
    it = 30, 60, …) differs from LM Clean by medians 0.10 km/s, 3.0 K, 0.004, 0.004 dex and maxima
    5.0 km/s (3713013), 52 K (3713226), 0.098, 0.050 dex: the two Clean variants reject
    different pixels (§j.10). ``benchmarks/adam_clean_schedule.py`` prints both.

    Against PyLASP's Adam Clean (printed, not asserted): medians 0.61 km/s, 10.7 K, 0.043,
    0.003 dex; maxima 6.6 km/s (3713013), 110 K (3713134), 0.17, 0.080 dex: PyLASP's schedule,
    Clean variant and unmasked Legendre fit (tests/test_adam_pylasp.py reproduces it in its own
    setting).
    """
    lm, adam = sample_fit("lm", clean=True), sample_fit("adam", clean=True)
    assert np.all(adam["converged"]) and list(adam["id"]) == list(lm["id"])
    for q in QUANTITIES:
        delta = np.abs(np.asarray(adam[q]) - np.asarray(lm[q]))
        in_sigma = delta / np.asarray(lm[q + "_err"])
        print(f"{q}: median {np.median(delta):.4f} max {np.max(delta):.4f} "
              f"max {np.max(in_sigma):.2f} σ")
        assert np.median(delta) <= MEDIAN[q] and np.max(delta) <= MAXIMUM[q], q
        np.testing.assert_allclose(adam[q + "_err"], lm[q + "_err"], rtol=0.05)
    reference = read_pylasp_csv(need(SAMPLE / "reference_pylasp_adam_clean.csv"))
    print(f"\njaxlasp Adam Clean (spectrum mode) − PyLASP Adam Clean:\n"
          f"{format_differences(differences(adam, reference))}")
