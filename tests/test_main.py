"""``jaxlasp spectrum`` and ``jaxlasp info``: model spectra and model descriptions."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ELODIE, need

from jaxlasp.cli import main


def rows(text):
    return np.array([[float(v) for v in line.split()] for line in text.splitlines()
                     if line and not line.startswith("#")])


def test_demo_spectrum_is_printed(capsys, monkeypatch):
    monkeypatch.delenv("JAXLASP_MODEL", raising=False)
    assert main(["spectrum", "--full"]) == 0
    out = capsys.readouterr().out
    assert "DEMO model" in out
    table = rows(out)
    assert table.shape[1] == 2 and len(table) > 1300
    assert np.all(np.diff(table[:, 0]) > 0) and np.all(table[:, 1] > 0)


def test_out_of_domain_parameters_are_refused(capsys):
    assert main(["spectrum", "--teff", "90000"]) == 2
    assert "outside the model's valid domain" in capsys.readouterr().err


def test_bad_model_file_is_refused(capsys, tmp_path):
    bad = tmp_path / "model.fits"
    bad.write_text("no")
    assert main(["spectrum", "--model", str(bad)]) == 2
    assert "model.fits" in capsys.readouterr().err


def test_real_model_on_pylasp_grid(capsys):
    assert main(["spectrum", "--model", str(need(ELODIE)), "--teff", "4800", "--logg", "2.5"]) == 0
    out = capsys.readouterr().out
    assert "1327 LAMOST pixels 4200.282-5700.046" in out


def test_info_describes_the_demo_model(capsys, monkeypatch):
    monkeypatch.delenv("JAXLASP_MODEL", raising=False)
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "DEMO model" in out and "valid domain: Teff 3100–29971 K" in out


def test_info_describes_the_elodie_model(capsys):
    assert main(["info", str(need(ELODIE))]) == 0
    out = capsys.readouterr().out
    assert "wavelength: 4199.20–5700.20 Å, 7506 pixels" in out
    assert "TGM version" in out and "23 terms" in out


def test_unknown_command_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["frobnicate"])
    assert stop.value.code == 2
