"""Adam (per-spectrum convergence) against jaxlasp's LM on the 25 spectra, No Clean and Clean."""
from __future__ import annotations

import numpy as np

from conftest import ELODIE, SAMPLE, need
from jaxlasp.api import fit_files
from jaxlasp.compare import QUANTITIES, differences, format_differences, read_pylasp_csv

# LM-vs-CurveFit tolerances (issue 4 asks Adam to meet them against LM): median and max |Δ|.
MEDIAN = {"rv": 0.05, "teff": 3.0, "logg": 0.005, "feh": 0.003}
MAXIMUM = {"rv": 0.3, "teff": 15.0, "logg": 0.03, "feh": 0.015}


def test_adam_matches_lm_on_the_sample():
    paths = sorted(need(SAMPLE / "fits").glob("*.fits"))
    lm = fit_files(paths, need(ELODIE))
    adam = fit_files(paths, ELODIE, method="adam")
    assert np.all(adam["converged"]) and list(adam["id"]) == list(lm["id"])
    for q in MEDIAN:
        delta = np.abs(np.asarray(adam[q]) - np.asarray(lm[q]))
        print(f"{q}: median {np.median(delta):.4f} max {np.max(delta):.4f}")
        assert np.median(delta) <= MEDIAN[q] and np.max(delta) <= MAXIMUM[q], q
        np.testing.assert_allclose(adam[q + "_err"], lm[q + "_err"], rtol=0.05)


def test_adam_clean_near_lm_clean():
    """Default Adam Clean (per spectrum, Adam-variant Clean §g.3 at it = 30, 60, …) vs LM Clean
    (CurveFit's variant §g.1 after each fit) and vs PyLASP's Adam Clean CSV.

    The two Clean variants reject different pixels (§j.10: PyLASP's own Adam and CurveFit Clean
    results differ by a median of 12 K, up to 75 K), so the LM-vs-CurveFit tolerances are not the
    yardstick; we require medians within twice them and every spectrum within 1 LM σ. Measured: medians 0.10 km/s,
    3.0 K, 0.004, 0.004 dex; maxima 5.0 km/s (3713013), 52 K (3713226), 0.098, 0.050 dex, all
    within 0.75 LM σ; errors within 5.4 %.

    Against PyLASP's Adam Clean (printed, not asserted): medians 0.58 km/s, 9.5 K, 0.040, 0.012;
    maxima 3.1 km/s, 101 K (3713134), 0.20, 0.042, and 3.4 σ on the cool star 3715155 (+72 K),
    which PyLASP's Clean moves 100 K away from its own No Clean result while both jaxlasp Clean
    fits stay within 30 K of it. The cause is PyLASP's unmasked Legendre fit: with
    ``mask_polynomial=False`` in PyLASP's setting, jaxlasp lands within 0.41 PyLASP σ of it
    (tests/test_adam_pylasp.py); jaxlasp's default masks the polynomial, as LM does.
    """
    paths = sorted(need(SAMPLE / "fits").glob("*.fits"))
    lm = fit_files(paths, need(ELODIE), clean=True)
    adam = fit_files(paths, ELODIE, method="adam", clean=True)
    assert np.all(adam["converged"]) and list(adam["id"]) == list(lm["id"])
    for q in QUANTITIES:
        delta = np.abs(np.asarray(adam[q]) - np.asarray(lm[q]))
        in_sigma = delta / np.asarray(lm[q + "_err"])
        print(f"{q}: median {np.median(delta):.4f} max {np.max(delta):.4f} "
              f"max {np.max(in_sigma):.2f} σ")
        assert np.median(delta) <= 2 * MEDIAN[q] and np.max(in_sigma) <= 1.0, q
        np.testing.assert_allclose(adam[q + "_err"], lm[q + "_err"], rtol=0.1)
    reference = read_pylasp_csv(need(SAMPLE / "reference_pylasp_adam_clean.csv"))
    print(f"\njaxlasp Adam Clean (spectrum mode) − PyLASP Adam Clean:\n"
          f"{format_differences(differences(adam, reference))}")
