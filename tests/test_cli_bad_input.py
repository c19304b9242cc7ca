"""``jaxlasp fit`` on a directory of broken inputs beside good ones: clear messages or flagged rows,
and the good spectra still fitted as PyLASP fits them."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import ELODIE, SAMPLE, need
from test_lm_reference import MAXIMUM

from jaxlasp.api import READ_ERROR
from jaxlasp.cli import main
from jaxlasp.compare import differences, read_pylasp_csv
from jaxlasp.io.catalog import read_catalog

GOOD = ("3706009", "3706103", "3709130")
"""Sample spectra fitted in the same run as the broken files (all in PyLASP's reference CSV)."""


def edited(source, target, edit):
    """Write ``source`` to ``target`` after ``edit(hdul)`` changed it (``edit`` may return a new
    HDUList)."""
    fits = pytest.importorskip("astropy.io.fits")
    with fits.open(source, memmap=False) as hdul:
        hdul = edit(hdul) or hdul
        hdul.writeto(target, output_verify="ignore")  # LAMOST headers have NAXISn with NAXIS = 0
    return target


def set_columns(**values):
    """An edit that overwrites COADD columns, e.g. FLUX=np.nan or a function of the old values."""
    def edit(hdul):
        row = hdul[1].data
        for name, value in values.items():
            old = np.array(row[name][0])
            row[name][0] = value(old) if callable(value) else value
    return edit


def without_coadd(hdul):
    fits = pytest.importorskip("astropy.io.fits")
    return fits.HDUList([hdul[0]])


def shifted_to_red(hdul):
    hdul[0].header["CRVAL1"] = np.log10(5000.0)  # now covers ~5000–10000 Å: not the window


@pytest.fixture(scope="module")
def battery(tmp_path_factory):
    """A folder of good, broken and duplicate inputs, and the catalog of one CLI run over it."""
    folder = tmp_path_factory.mktemp("battery")
    source = need(SAMPLE / "fits")
    spectra = folder / "spectra"
    (spectra / "again").mkdir(parents=True)
    for name in GOOD:
        (spectra / f"{name}.fits").write_bytes((source / f"{name}.fits").read_bytes())
    one = source / "3712166.fits"
    cases = {
        "nan_some": set_columns(FLUX=lambda f: np.where(np.arange(f.size) % 97 == 0, np.nan, f)),
        "inf_some": set_columns(FLUX=lambda f: np.where(np.arange(f.size) % 89 == 0, np.inf, f)),
        "nan_all": set_columns(FLUX=np.nan),
        "zero_all": set_columns(FLUX=0.0),
        "negative_all": set_columns(FLUX=lambda f: -np.abs(f) - 1.0),
        "ivar_zero": set_columns(IVAR=0.0),
        "no_coadd": without_coadd,
        "wrong_range": shifted_to_red,
    }
    for name, edit in cases.items():
        edited(one, spectra / f"{name}.fits", edit)
    whole = (source / "3713013.fits").read_bytes()
    (spectra / "truncated.fits").write_bytes(whole[: len(whole) // 3])
    (spectra / "not_fits.fits").write_text("observer's notes, saved with the wrong name\n")
    (spectra / "again" / "3706009.fits").write_bytes((source / "3706009.fits").read_bytes())
    listing = folder / "list.txt"
    listing.write_text(f"# a list naming a file the folder holds too, and a missing file\n"
                       f"spectra/{GOOD[0]}.fits\nspectra/missing.fits\n")
    catalog = folder / "catalog.ecsv"
    code = main(["fit", str(spectra), str(listing), "--model", str(need(ELODIE)), "-o",
                 str(catalog), "--group-size", "8", "--start", "7500,3.5,-0.5", "-q"])
    return code, read_catalog(catalog), spectra


def rows(table, stem):
    return table[[str(p).endswith(f"/{stem}.fits") for p in table["path"]]]


@pytest.mark.slow
def test_exit_code_says_some_failed(battery):
    code, _, _ = battery
    assert code == 3


@pytest.mark.slow
def test_every_input_once(battery):
    _, table, spectra = battery
    files = sorted(str(p) for p in spectra.rglob("*.fits")) + [str(spectra / "missing.fits")]
    assert sorted(map(str, table["path"])) == sorted(files)
    assert len(set(table["path"])) == len(table)


@pytest.mark.slow
def test_good_spectra_match_pylasp(battery):
    _, table, _ = battery
    good = table[[i in GOOD for i in table["id"]]]
    assert len(good) == 4 and np.all(good["converged"])  # 3706009 twice: the copy in again/
    reference = read_pylasp_csv(need(SAMPLE / "reference_pylasp_curvefit_noclean.csv"))
    diff = differences(good, reference)
    for q, tol in MAXIMUM.items():
        assert np.max(np.abs(diff[q])) <= tol, q
    twins = table[table["id"] == "3706009"]
    assert twins["teff"][0] == twins["teff"][1]  # duplicate names: both fitted, both kept


@pytest.mark.slow
@pytest.mark.parametrize("stem, words", [
    ("nan_all", "no finite flux"),
    ("no_coadd", "COADD"),
    ("wrong_range", "does not include the window"),
    ("truncated", "FITS"),
    ("not_fits", "not a FITS file"),
    ("missing", "No such file"),
])
def test_unreadable_files_get_a_row_with_the_reason(battery, stem, words):
    _, table, _ = battery
    row = rows(table, stem)
    assert len(row) == 1
    row = row[0]
    assert not row["converged"] and row["flags"] & READ_ERROR and np.isnan(row["teff"])
    assert words.lower() in row["reason"].lower(), row["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["zero_all", "negative_all"])
def test_unphysical_flux_is_flagged_not_fitted_as_good(battery, stem):
    _, table, _ = battery
    row = rows(table, stem)[0]
    assert not row["converged"] and row["reason"], row


@pytest.mark.slow
def test_repaired_and_ignored_defects_are_fitted(battery):
    _, table, _ = battery
    for stem in ("nan_some", "inf_some", "ivar_zero"):
        row = rows(table, stem)[0]
        assert row["converged"], (stem, row["reason"])
    assert "nonfinite_flux" in rows(table, "nan_some")[0]["reason"]
    reference = rows(table, "ivar_zero")[0]  # IVAR is not used with --weighting none
    for stem in ("nan_some", "inf_some"):
        assert abs(rows(table, stem)[0]["teff"] - reference["teff"]) < 3 * reference["teff_err"]


@pytest.mark.slow
def test_ivar_weighting_flags_a_spectrum_without_valid_ivar(battery, tmp_path):
    _, _, spectra = battery
    catalog = tmp_path / "ivar.csv"
    code = main(["fit", str(spectra / "ivar_zero.fits"), str(spectra / f"{GOOD[0]}.fits"),
                 "--model", str(ELODIE), "--weighting", "ivar", "-o", str(catalog),
                 "--start", "7500,3.5,-0.5", "-q"])
    table = read_catalog(catalog)
    assert code == 3
    assert list(table["converged"]) == [False, True]
    assert "few_pixels" in table["reason"][0]


@pytest.mark.slow
@pytest.mark.parametrize("argv, words", [
    (["-o", "no/such/folder/catalog.csv"], "does not exist"),
    (["-o", "catalog.xlsx"], "unknown catalog format"),
    (["--start", "90000,4,0"], "outside the model's valid domain"),
    (["--format", "sdss"], "sdss"),
])
def test_bad_arguments_are_refused_with_a_message(battery, argv, words, tmp_path, capsys,
                                                  monkeypatch):
    _, _, spectra = battery
    monkeypatch.chdir(tmp_path)
    assert main(["fit", str(spectra / f"{GOOD[0]}.fits"), "--model", str(ELODIE), *argv]) == 2
    assert words in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written


def test_malformed_start_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["fit", "x.fits", "--model", "demo", "--start", "5000,4"])
    assert stop.value.code == 2
    assert "expected 3 comma-separated numbers" in capsys.readouterr().err
