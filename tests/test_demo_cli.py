"""``jaxlasp demo``: the README's main job recovers the parameters of its mock spectra."""
from __future__ import annotations

import numpy as np
import pytest

from jaxlasp.cli import main
from jaxlasp.io.catalog import read_catalog


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--n", "40", "--snr", "50", "--seed", "3", "--output-dir", str(folder)])
    return code, folder


@pytest.mark.slow
def test_demo_writes_a_catalog_and_a_plot(demo, capsys):
    code, folder = demo
    assert code == 0
    table = read_catalog(folder / "catalog.ecsv")
    assert len(table) == 40 and {"true_teff", "teff", "teff_err"} <= set(table.colnames)
    assert (folder / "recovery.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_demo_recovers_the_truth(demo):
    _, folder = demo
    table = read_catalog(folder / "catalog.ecsv")
    ok = np.asarray(table["converged"])
    assert ok.mean() >= 0.9
    for name in ("rv", "teff", "logg", "feh"):
        pull = (table[name] - table[f"true_{name}"])[ok] / table[f"{name}_err"][ok]
        assert np.median(np.abs(pull)) < 1.5, name  # 0.67 for calibrated Gaussian errors
    assert np.median(np.abs(table["teff"] - table["true_teff"])[ok]) < 100.0


def test_demo_refuses_a_bad_snr(tmp_path, capsys):
    assert main(["demo", "--snr", "0", "--output-dir", str(tmp_path)]) == 2
    assert "snr" in capsys.readouterr().err
