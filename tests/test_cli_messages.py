"""The command line's small courtesies: typos, windows, units, which model, CLI words."""
from __future__ import annotations

import subprocess
import sys

import pytest

from jaxlasp.cli import main


def test_a_mistyped_option_names_the_command_and_the_closest_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "spectra/", "--claen"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert "usage: jaxlasp fit" in err and "--claen (did you mean --clean?)" in err


def test_a_mistyped_command_gets_a_suggestion(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["fti", "spectra/"])
    assert exit_info.value.code == 2
    assert "unknown command 'fti' (did you mean 'fit'?)" in capsys.readouterr().err


def test_a_window_beyond_the_model_says_what_is_fitted():
    from jaxlasp.emulators.demo import demo_emulator
    from jaxlasp.grids import lamost_fit_grid, window_note

    model = demo_emulator().grid  # 3900–6800 Å
    assert window_note(lamost_fit_grid(model, (4200.0, 5700.0)), (4200.0, 5700.0)) is None
    note = window_note(lamost_fit_grid(model, (3800.0, 7000.0)), (3800.0, 7000.0))
    assert note.startswith("the window 3800–7000 Å reaches beyond the model's coverage: fitting")


def test_info_without_a_model_says_it_describes_the_demo(capsys, monkeypatch):
    monkeypatch.delenv("JAXLASP_MODEL", raising=False)
    assert main(["info"]) == 0
    out, err = capsys.readouterr()
    assert "no model given" in err and "demo" in err
    assert out.startswith("model: embedded DEMO model")


def test_spectrum_sigma_is_in_km_per_s_like_the_catalog(capsys):
    assert main(["spectrum", "--model", "demo", "--sigma", "138"]) == 0
    header = capsys.readouterr().out.splitlines()[1]
    assert "sigma=138.0 km/s (1.999 px)" in header  # 69.04 km/s per LAMOST pixel


def test_an_existing_catalog_is_refused_in_cli_words(tmp_path, capsys):
    output = tmp_path / "c.ecsv"
    output.write_text("")
    assert main(["fit", str(tmp_path), "--model", "demo", "-o", str(output)]) == 2
    err = capsys.readouterr().err
    assert "already exists: add --resume" in err and "resume=True" not in err


@pytest.mark.slow
def test_output_into_a_closed_pipe_is_not_an_error():
    shell = subprocess.run(f"{sys.executable} -m jaxlasp spectrum --model demo --full | head -1",
                           shell=True, capture_output=True, text=True, timeout=120)
    assert shell.stdout.startswith("# jaxlasp model spectrum")
    assert "Traceback" not in shell.stderr


def test_main_called_from_python_leaves_the_logger_as_it_found_it(caplog, monkeypatch):
    """``main`` sends jaxlasp's messages to stderr while it runs and then hands the logger back:
    later library calls still reach the caller's handlers."""
    import logging

    logger = logging.getLogger("jaxlasp")
    before = (logger.handlers[:], logger.level, logger.propagate)
    monkeypatch.delenv("JAXLASP_MODEL", raising=False)
    assert main(["info"]) == 0
    assert (logger.handlers[:], logger.level, logger.propagate) == before
    logger.warning("after main")
    assert "after main" in caplog.text
