"""``jaxlasp compare``: a catalog against a reference — PyLASP's CSV, LAMOST's LASP catalog or
another jaxlasp catalog — matched by OBSID or id, with median, robust scatter and max |Δ|."""
from __future__ import annotations

import numpy as np
from astropy.table import Table
from conftest import SAMPLE, need

from jaxlasp.cli import main
from jaxlasp.compare import read_pylasp_csv

PYLASP_CSV = SAMPLE / "reference_pylasp_curvefit_noclean.csv"
SHIFT = {"rv": 1.5, "teff": 10.0, "logg": -0.02, "feh": 0.01}


def shifted_catalog(tmp_path, name="catalog.ecsv", **extra):
    """A jaxlasp-layout catalog: PyLASP's values plus ``SHIFT``, ids as file stems, OBSIDs."""
    rows = read_pylasp_csv(need(PYLASP_CSV))
    ids = sorted(rows)
    table = Table({"id": ids, "obsid": [int(i) for i in ids], **{
        q: [rows[i][f"pred_{c}"] + SHIFT[q] for i in ids]
        for q, c in (("rv", "Rv"), ("teff", "Teff"), ("logg", "logg"), ("feh", "FeH"))}},
        **extra)
    table.write(tmp_path / name)
    return tmp_path / name, len(ids)


def summary_lines(out):
    return {line.split()[0]: line.split()[1:] for line in out.splitlines()[2:]}


def test_against_pylasp_csv_by_id(tmp_path, capsys):
    catalog, n = shifted_catalog(tmp_path)
    assert main(["compare", str(catalog), str(PYLASP_CSV), "--plot", str(tmp_path / "d.png")]) == 0
    lines = summary_lines(capsys.readouterr().out)
    for q, shift in SHIFT.items():
        count, median, scatter, worst = lines[q][:4]
        assert int(count) == n
        assert abs(float(median) - shift) < 1e-6
        assert float(scatter) < 1e-6 and abs(float(worst) - abs(shift)) < 1e-6
    assert (tmp_path / "d.png").stat().st_size > 0


def test_against_a_lamost_catalog_by_obsid(tmp_path, capsys):
    catalog, n = shifted_catalog(tmp_path)
    lasp = Table.read(catalog)
    lasp.remove_column("id")  # LAMOST's catalog: OBSID, no file names
    lasp["teff"] = np.asarray(lasp["teff"]) - SHIFT["teff"] - 100.0
    lasp.write(tmp_path / "lasp.fits")
    assert main(["compare", str(catalog), str(tmp_path / "lasp.fits")]) == 0
    count, median = summary_lines(capsys.readouterr().out)["teff"][:2]
    assert int(count) == n and abs(float(median) - 110.0) < 1e-6


def test_nothing_in_common_is_an_error(tmp_path, capsys):
    catalog, _ = shifted_catalog(tmp_path)
    other = Table({"obsid": [1, 2], "teff": [5000.0, 6000.0]})
    other.write(tmp_path / "other.csv")
    assert main(["compare", str(catalog), str(tmp_path / "other.csv")]) == 2
    assert "no rows matched" in capsys.readouterr().err


def test_a_file_without_parameters_is_refused(tmp_path, capsys):
    catalog, _ = shifted_catalog(tmp_path)
    Table({"obsid": [1]}).write(tmp_path / "empty.csv")
    assert main(["compare", str(catalog), str(tmp_path / "empty.csv")]) == 2
    assert "no parameter columns" in capsys.readouterr().err
