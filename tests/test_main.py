"""``python -m jaxlasp``: the README's main job on the embedded demo model."""
from __future__ import annotations

import numpy as np

from conftest import ELODIE, need
from jaxlasp.__main__ import main


def rows(text):
    return np.array([[float(v) for v in line.split()] for line in text.splitlines()
                     if line and not line.startswith("#")])


def test_demo_spectrum_is_printed(capsys, monkeypatch):
    monkeypatch.delenv("JAXLASP_MODEL", raising=False)
    assert main(["--full"]) == 0
    out = capsys.readouterr().out
    assert "DEMO model" in out
    table = rows(out)
    assert table.shape[1] == 2 and len(table) > 1300
    assert np.all(np.diff(table[:, 0]) > 0) and np.all(table[:, 1] > 0)


def test_out_of_domain_parameters_are_refused(capsys):
    assert main(["--teff", "90000"]) == 2
    assert "outside the model's valid domain" in capsys.readouterr().err


def test_bad_model_file_is_refused(capsys, tmp_path):
    bad = tmp_path / "model.fits"
    bad.write_text("no")
    assert main(["--model", str(bad)]) == 2
    assert "model.fits" in capsys.readouterr().err


def test_real_model_on_pylasp_grid(capsys):
    assert main(["--model", str(need(ELODIE)), "--teff", "4800", "--logg", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "1327 LAMOST pixels 4200.282-5700.046" in out
