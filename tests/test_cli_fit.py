"""``jaxlasp fit`` end to end on the real LAMOST sample: catalog formats, PyLASP agreement,
resume."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ELODIE, SAMPLE, need
from test_lm_reference import MAXIMUM, MEDIAN

from jaxlasp.cli import main
from jaxlasp.compare import differences, format_differences, read_pylasp_csv
from jaxlasp.io.catalog import read_catalog

REPO = Path(__file__).resolve().parents[1]
NUMERIC = ("rv", "rv_err", "teff", "teff_err", "logg", "logg_err", "feh", "feh_err", "sigma",
           "loss")


def fit_args(output, *extra):
    return ["fit", str(need(SAMPLE / "fits")), "--model", str(need(ELODIE)), "-o", str(output),
            "--group-size", "10", "-q", *extra]


PYLASP_START = ("--start", "7500,3.5,-0.5")


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """The sample fitted by the CLI into a CSV, a FITS and a Parquet catalog."""
    pytest.importorskip("pyarrow")
    folder = tmp_path_factory.mktemp("catalogs")
    out = {}
    for suffix in ("csv", "fits", "parquet"):
        path = folder / f"catalog.{suffix}"
        assert main(fit_args(path, *PYLASP_START)) == 0
        out[suffix] = read_catalog(path)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["csv", "fits", "parquet"])
def test_catalog_matches_pylasp_curvefit(catalogs, suffix):
    table = catalogs[suffix]
    paths = sorted(str(p) for p in (SAMPLE / "fits").glob("*.fits"))
    assert sorted(table["path"]) == paths  # every input exactly once
    assert list(table["id"]) == [Path(p).stem for p in paths]  # in input order
    assert table["converged"].dtype == bool and np.all(table["converged"])
    assert np.all((table["flags"] & 0xFF) == 0)  # reader flags (≥ 256) say some flux ≤ 0
    reference = read_pylasp_csv(need(SAMPLE / "reference_pylasp_curvefit_noclean.csv"))
    diff = differences(table, reference)
    print(f"\n{suffix} catalog − PyLASP CurveFit (No Clean):\n{format_differences(diff)}")
    assert len(diff["id"]) >= 14
    for q in MEDIAN:
        assert np.median(np.abs(diff[q])) <= MEDIAN[q], q
        assert np.max(np.abs(diff[q])) <= MAXIMUM[q], q


@pytest.mark.slow
def test_formats_hold_the_same_numbers(catalogs):
    csv, fits, parquet = catalogs["csv"], catalogs["fits"], catalogs["parquet"]
    for name in NUMERIC:
        np.testing.assert_allclose(fits[name], parquet[name], rtol=0, atol=0, err_msg=name)
        np.testing.assert_allclose(csv[name], parquet[name], rtol=1e-12, err_msg=name)
    assert fits["teff"].unit == "K" and parquet["rv"].unit == "km / s"


@pytest.mark.slow
@pytest.mark.parametrize("suffix", ["csv", "fits", "parquet"])
def test_survey_columns_link_rows_back_to_the_survey(catalogs, suffix):
    """OBSID, RA, Dec and the five S/N values of each LAMOST file's header, in every format;
    no DESI TARGETID."""
    from astropy.io import fits

    table = catalogs[suffix]
    for row in table:
        header = fits.getheader(row["path"], 0)
        assert row["obsid"] == header["OBSID"] and str(row["obsid"]) == row["id"]
        assert (row["ra"], row["dec"]) == (header["RA"], header["DEC"])
        assert [row[f"snr_{b}"] for b in "ugriz"] == [header[f"SNR{b}"] for b in "UGRIZ"]
    assert np.all(table["targetid"] == -1)
    assert table["ra"].unit == "deg" and "OBSID" in table["obsid"].description
    assert table["teff"].unit == "K" and table["teff"].description == "effective temperature"
    assert "options" in table.meta and "jaxlasp" in table.meta  # CSV: in its commented header


@pytest.mark.slow
def test_existing_catalog_is_not_overwritten_without_resume(catalogs, tmp_path, capsys):
    path = tmp_path / "c.csv"
    path.write_text("keep me")
    assert main(fit_args(path)) == 2
    assert "--resume" in capsys.readouterr().err and path.read_text() == "keep me"


@pytest.mark.slow
def test_default_global_start_agrees_with_pylasp_and_resume_fits_nothing(catalogs, tmp_path):
    path = tmp_path / "c.ecsv"
    assert main(fit_args(path)) == 0  # --start global
    table = read_catalog(path)
    assert np.all(table["converged"])
    reference = read_pylasp_csv(need(SAMPLE / "reference_pylasp_curvefit_noclean.csv"))
    diff = differences(table, reference)
    print(f"\nglobal start − PyLASP CurveFit from (7500, 3.5, −0.5):\n{format_differences(diff)}")
    for q in MEDIAN:
        assert np.max(np.abs(diff[q])) <= MAXIMUM[q], q
    before = path.read_bytes()
    assert main(fit_args(path, "--resume")) == 0
    assert path.read_bytes() == before


def _cli(output, *extra):
    """The CLI as a child process (so that it can be killed)."""
    # JAXLASP_COMPILE_CACHE=on: the resumed run loads the programs the killed one traced
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(REPO),
               JAXLASP_COMPILE_CACHE="on")
    cmd = [sys.executable, "-m", "jaxlasp", *fit_args(output, *PYLASP_START, *extra)]
    cmd[cmd.index("--group-size") + 1] = "1"  # 25 parts: a wide window to kill the run in
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_and_resume_gives_the_uninterrupted_catalog(catalogs, tmp_path):
    output = tmp_path / "killed.csv"
    parts = tmp_path / "killed.csv.parts"
    child = _cli(output)
    deadline = time.monotonic() + 300
    while not (parts.is_dir() and len(list(parts.glob("part-*.ecsv"))) >= 2):
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "no part file appeared"
        time.sleep(0.2)
    child.send_signal(signal.SIGKILL)  # the harshest interruption: no clean-up at all
    child.wait()
    assert not output.exists()
    written = len(list(parts.glob("part-*.ecsv")))
    assert 2 <= written < 25, "the run finished before it was killed"
    resumed = _cli(output, "--resume")
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert not parts.exists()
    table, whole = read_catalog(output), catalogs["csv"]
    assert list(table["path"]) == list(whole["path"])  # no duplicate, none missing, same order
    for name in NUMERIC:
        np.testing.assert_allclose(table[name], whole[name], rtol=1e-7, atol=1e-9, err_msg=name)


@pytest.mark.slow
def test_plot_a_fit_and_a_catalog_row(catalogs, tmp_path, capsys):
    spectrum = str(need(SAMPLE / "fits" / "3706009.fits"))
    catalog = tmp_path / "c.ecsv"
    assert main(fit_args(catalog, *PYLASP_START)) == 0
    for extra in (["--clean"], ["--from-catalog", str(catalog)]):
        image = tmp_path / f"fit{len(extra)}.png"
        assert main(["plot", spectrum, "--model", str(ELODIE), "-o", str(image), *extra]) == 0
        assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 20_000
    other = tmp_path / "other.ecsv"
    table = read_catalog(catalog)
    table[table["id"] != "3706009"].write(other)  # a catalog without this spectrum
    assert main(["plot", spectrum, "--model", str(ELODIE), "--from-catalog", str(other)]) == 2
    assert "no row for spectrum 3706009" in capsys.readouterr().err


@pytest.mark.slow
def test_plot_from_a_clean_catalog_draws_the_catalogs_fit(tmp_path, monkeypatch, capsys):
    """--from-catalog fits the spectrum again with the options the catalog recorded: a Clean
    catalog's plot has its Clean mask (same pixels used, same rejected count) and its numbers;
    a row the refit does not reproduce is warned about."""
    import jaxlasp.plot

    spectrum = str(need(SAMPLE / "fits" / "3713134.fits"))
    catalog = tmp_path / "clean.ecsv"
    assert main(["fit", spectrum, "--model", str(ELODIE), "-o", str(catalog), "-q", "--clean",
                 *PYLASP_START, "--errors", "laplace", "--group-size", "1"]) == 0
    row = read_catalog(catalog)[0]
    drawn = {}
    monkeypatch.setattr(jaxlasp.plot, "plot_fit",
                        lambda wave, flux, comps, used, title, path, **kw: drawn.update(
                            used=used, title=title, noise=kw["noise"]))
    assert main(["plot", spectrum, "--model", str(ELODIE), "--from-catalog", str(catalog),
                 "-o", str(tmp_path / "p.png")]) == 0  # no --clean: the catalog says so
    assert row["n_clean"] > 0 and f"{row['n_clean']} rejected by Clean" in drawn["title"]
    assert int(np.sum(drawn["used"])) == row["n_pixels"]
    assert f"Teff {row['teff']:.0f} ± {row['teff_err']:.0f} K" in drawn["title"]
    chi2 = float(drawn["title"].split("χ²/dof ")[1].split(",")[0])
    assert 0.3 < chi2 < 3.0  # the fit against the file's own IVAR noise
    assert np.isfinite(drawn["noise"]).mean() > 0.9
    assert "differs" not in capsys.readouterr().err

    edited = read_catalog(catalog)
    edited["teff"] += 50.0
    edited.write(tmp_path / "edited.ecsv")
    assert main(["plot", spectrum, "--model", str(ELODIE), "--from-catalog",
                 str(tmp_path / "edited.ecsv"), "-o", str(tmp_path / "q.png")]) == 0
    assert "differs from" in capsys.readouterr().err
