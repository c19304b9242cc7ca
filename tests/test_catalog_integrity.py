"""Catalog integrity: one run per catalog (the lock), catalogs readable as the umask says, one row
per input whatever a kill, a resume or a bad file does."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxlasp.api import DEMO_MODEL
from jaxlasp.cli import main
from jaxlasp.io import register_reader
from jaxlasp.io.catalog import read_catalog, write_catalog
from jaxlasp.io.lock import CatalogLocked, catalog_lock, lock_path
from jaxlasp.pipeline import FitOptions, parts_folder, run


def test_a_second_lock_on_one_catalog_is_refused_and_names_the_holder(tmp_path):
    output = tmp_path / "c.ecsv"
    with (catalog_lock(output), pytest.raises(CatalogLocked, match=f"process {os.getpid()}"),
          catalog_lock(output)):
        pass
    with catalog_lock(output):  # released at the end of the first
        assert lock_path(output).exists()
    assert not lock_path(output).exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    output = tmp_path / "c.ecsv"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from jaxlasp.io.lock import catalog_lock\n"
         f"with catalog_lock({str(output)!r}):\n    print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CatalogLocked, match=f"process {holder.pid}"), catalog_lock(output):
            pass
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    with catalog_lock(output):
        pass


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_catalog_mode_follows_the_umask(tmp_path, umask):
    from astropy.table import Table

    previous = os.umask(umask)
    try:
        write_catalog(Table({"a": np.arange(3)}), tmp_path / "c.ecsv")
    finally:
        os.umask(previous)
    assert (tmp_path / "c.ecsv").stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------- runs on real inputs (demo model)

OPTIONS = FitOptions(start=(5500.0, 4.0, 0.0), errors="laplace", group_size=4)
"""A fixed start keeps compilation short; groups of 4 give several parts for 10 files."""


@pytest.fixture(scope="module")
def mock_folder(tmp_path_factory, demo_fm):
    from jaxlasp.mock import draw_parameters, simulate, write_mock_files

    truth = draw_parameters(10, seed=5, domain=demo_fm.emulator.domain)
    folder = tmp_path_factory.mktemp("mocks")
    write_mock_files(simulate(demo_fm, truth, snr=30.0, seed=6), folder)
    return folder


@pytest.fixture(scope="module")
def reference(mock_folder, tmp_path_factory):
    """The uninterrupted run's catalog."""
    output = tmp_path_factory.mktemp("reference") / "catalog.ecsv"
    run([mock_folder], DEMO_MODEL, output, OPTIONS, quiet=True)
    return read_catalog(output)


def same_rows(table, reference):
    assert list(table["path"]) == list(reference["path"])
    for name in ("id", "teff", "logg", "feh", "rv", "flags", "reason"):
        assert list(table[name]) == list(reference[name]), name


@pytest.mark.slow
def test_killed_during_the_merge_resumes_to_one_row_per_spectrum(mock_folder, reference,
                                                                   tmp_path):
    """State of a kill after the catalog was renamed into place but before its parts were
    removed (or half removed): the parts' rows are also in the catalog."""
    output = tmp_path / "catalog.ecsv"
    run([mock_folder], DEMO_MODEL, output, OPTIONS, quiet=True)
    parts = parts_folder(output)
    parts.mkdir()
    write_catalog(read_catalog(output)[:7], parts / "part-000000.ecsv")  # as a part: 7 rows
    summary = run([mock_folder], DEMO_MODEL, output, OPTIONS, resume=True, quiet=True)
    assert summary.fitted == 0
    same_rows(read_catalog(output), reference)
    assert not parts.exists()


@pytest.mark.slow
def test_resume_knows_a_folder_however_it_is_typed(mock_folder, reference, tmp_path,
                                                    monkeypatch):
    output = tmp_path / "catalog.ecsv"
    monkeypatch.chdir(mock_folder.parent)
    run([mock_folder.name], DEMO_MODEL, output, OPTIONS, quiet=True)  # relative
    link = tmp_path / "link"
    link.symlink_to(mock_folder)
    for typed in (mock_folder, link):  # absolute, and through a link
        summary = run([typed], DEMO_MODEL, output, OPTIONS, resume=True, quiet=True)
        assert summary.fitted == 0 and summary.rows == len(reference)


def test_a_second_run_on_a_locked_catalog_is_refused_before_the_model_loads(mock_folder,
                                                                             tmp_path, capsys):
    output = tmp_path / "catalog.ecsv"
    with catalog_lock(output):
        code = main(["fit", str(mock_folder), "--model", "no-such-model.fits", "-o", str(output)])
    assert code == 2
    assert "being written by another run" in capsys.readouterr().err
    assert not output.exists() and not parts_folder(output).exists()


def test_inputs_without_spectra_are_a_usage_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = main(["fit", str(tmp_path / "empty"), "--model", "demo", "-o",
                 str(tmp_path / "c.ecsv")])
    assert code == 2
    assert "no spectrum files" in capsys.readouterr().err
    assert not (tmp_path / "c.ecsv").exists()


@pytest.mark.slow
def test_link_loops_and_reader_crashes_become_rows(mock_folder, tmp_path):
    folder = tmp_path / "in"
    shutil.copytree(mock_folder, folder)
    (folder / "loop.fits").symlink_to(folder / "loop.fits")  # inside the folder
    named = tmp_path / "named.fits"
    named.symlink_to(named)  # named on the command line
    crash = tmp_path / "crash.fits"
    crash.write_bytes(b"x")

    def broken(path, window):
        raise RuntimeError("plug-in bug")

    register_reader("broken", broken, lambda probe: False)
    try:
        output = tmp_path / "catalog.ecsv"
        run([folder, named], DEMO_MODEL, output, OPTIONS, quiet=True)
        run([crash], DEMO_MODEL, tmp_path / "crash.ecsv",
            dataclasses.replace(OPTIONS, format="broken"), quiet=True)
    finally:
        from jaxlasp.io.readers import _READERS

        _READERS.pop("broken")
    table = read_catalog(output)
    reasons = dict(zip(table["path"], table["reason"]))
    assert len(table) == 12
    assert "loop.fits" in reasons[str(folder / "loop.fits")]
    assert reasons[str(named)]
    assert "plug-in bug" in read_catalog(tmp_path / "crash.ecsv")["reason"][0]


@pytest.mark.slow
def test_a_full_disk_names_the_file_and_how_to_resume(mock_folder, tmp_path, monkeypatch, capsys):
    import errno

    from jaxlasp.io import catalog

    def full(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(catalog.os, "replace", full)
    output = tmp_path / "catalog.ecsv"
    code = main(["fit", str(mock_folder), "--model", "demo", "--start", "5500,4,0", "--errors",
                 "laplace", "--group-size", "4", "-o", str(output)])   # OPTIONS' programs
    err = capsys.readouterr().err
    assert code == 4
    assert "part-000000.ecsv: cannot be written (No space left on device)" in err
    assert "--resume" in err


def test_rows_never_fitted_report_no_parameters(tmp_path):
    """An all-zero spectrum: the fit cannot leave its start, so the row must not show it."""
    from jaxlasp.api import NOT_FITTED
    from jaxlasp.io.arrays import lattice_grid
    from jaxlasp.io.lamost import write_lamost

    grid = lattice_grid(3700.0, 9000.0)  # LAMOST's ln-λ lattice
    write_lamost(tmp_path / "zero.fits", grid, np.zeros(grid.n))
    run([tmp_path / "zero.fits"], DEMO_MODEL, tmp_path / "c.ecsv", OPTIONS, quiet=True)
    row = read_catalog(tmp_path / "c.ecsv")[0]
    assert not row["converged"] and row["flags"] & NOT_FITTED and "not_fitted" in row["reason"]
    for name in ("teff", "teff_err", "logg", "feh", "rv", "sigma"):
        assert np.isnan(row[name]), name


@pytest.mark.parametrize("suffix", [".ecsv", ".fits"])  # FITS upper-cases the metadata keys
def test_resume_with_other_options_is_refused_and_says_which(mock_folder, tmp_path, suffix):
    output = tmp_path / f"catalog{suffix}"
    files = sorted(mock_folder.glob("*.fits"))
    run(files[:3], DEMO_MODEL, output, OPTIONS, quiet=True)
    other = dataclasses.replace(OPTIONS, start=(6000.0, 4.0, 0.0), errors="profile")
    with pytest.raises(ValueError, match=r"errors: 'laplace' then, 'profile' now.*start"):
        run(files, DEMO_MODEL, output, other, resume=True, quiet=True)
    assert len(read_catalog(output)) == 3  # nothing fitted, nothing merged
    summary = run(files, DEMO_MODEL, output, OPTIONS, resume=True, quiet=True)
    assert summary.fitted == len(files) - 3
    assert json.loads(read_catalog(output).meta["options"])["model"] == "demo"


# ---------------------------------------------------------------- kill -9 at every stage

KILLER = """
import os, shutil, sys
from pathlib import Path

from jaxlasp.api import DEMO_MODEL
from jaxlasp.compile_cache import enable_compilation_cache
from jaxlasp.pipeline import FitOptions, run

stage, k, folder, output = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
real_replace, parts_done = os.replace, 0


def die():
    os._exit(137)  # as SIGKILL: no clean-up, no finally, the lock dropped by the OS


def replace(source, target):
    global parts_done
    is_part = Path(target).parent.name.endswith(".parts")
    if ((stage == "writing a part" and is_part and parts_done == k)
            or (stage == "writing the catalog" and Path(target) == output)):
        Path(source).write_bytes(Path(source).read_bytes()[: Path(source).stat().st_size // 2])
        die()  # a half-written temporary file, never renamed
    real_replace(source, target)
    parts_done += is_part
    if stage == "after parts" and is_part and parts_done == k:
        die()


def rmtree(path, ignore_errors=False):
    for part in sorted(Path(path).glob("part-*"))[:k]:  # the first k parts removed
        part.unlink()
    die()


os.replace = replace
shutil.rmtree = rmtree
enable_compilation_cache()
run([folder], DEMO_MODEL, output, FitOptions(start=(5500.0, 4.0, 0.0), errors="laplace",
                                             group_size=4), quiet=True)
print("not killed")
"""
"""A run of OPTIONS (10 files, 3 parts) that dies at ``stage`` (argv 1) after ``k`` (argv 2)
parts written or removed."""
EXPORTING = {**os.environ, "JAXLASP_COMPILE_CACHE": "on"}
"""The runs in processes of their own load their traced programs from the session's cache (the
first one exports them), as a user's second run does: tracing was most of their time."""


@pytest.mark.slow
@pytest.mark.parametrize("stage, k", [("after parts", 1), ("after parts", 3),
                                      ("writing a part", 1), ("writing the catalog", 0),
                                      ("removing parts", 0), ("removing parts", 2)])
def test_killed_at_any_stage_resumes_to_the_uninterrupted_catalog(mock_folder, reference,
                                                                  tmp_path, stage, k):
    output = tmp_path / "catalog.ecsv"
    killed = subprocess.run([sys.executable, "-c", KILLER, stage, str(k), str(mock_folder),
                             str(output)], capture_output=True, text=True, timeout=300,
                            env=EXPORTING)
    assert killed.returncode == 137, killed.stdout + killed.stderr
    summary = run([mock_folder], DEMO_MODEL, output, OPTIONS, resume=True, quiet=True)
    same_rows(read_catalog(output), reference)
    already = {"after parts": 4 * k, "writing a part": 4 * k}.get(stage, len(reference))
    assert summary.fitted == len(reference) - min(already, len(reference))
    assert not parts_folder(output).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["catalog.ecsv"]  # no litter, no lock


@pytest.mark.slow
def test_two_runs_started_together_write_one_catalog(mock_folder, reference, tmp_path):
    output = tmp_path / "catalog.ecsv"
    command = [sys.executable, "-m", "jaxlasp", "fit", str(mock_folder), "--model", "demo",
               "--start", "5500,4,0", "--errors", "laplace", "--group-size", "4", "-o",
               str(output)]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=EXPORTING) for _ in range(2)]
    results = [(r.wait(timeout=300), r.stderr.read()) for r in runs]
    winner_code = 0 if all(reference["converged"]) else 3  # 3: some spectra did not converge
    assert sorted(code for code, _ in results) == sorted([winner_code, 2]), results
    loser = next(err for code, err in results if code == 2)
    assert "being written by another run" in loser
    same_rows(read_catalog(output), reference)


def test_an_output_where_no_file_can_be_created_fails_before_the_model_loads(mock_folder,
                                                                            capsys):
    if not os.path.isdir("/proc/self"):
        pytest.skip("needs Linux's /proc (a folder where no file can be created, even by root)")
    code = main(["fit", str(mock_folder), "--model", "no-such-model.fits", "-o", "/proc/x.ecsv"])
    assert code == 2
    assert "/proc/x.ecsv: cannot create files in /proc" in capsys.readouterr().err


@pytest.mark.slow
def test_pixels_of_zero_flux_are_left_out(tmp_path, elodie):
    """LAMOST writes 0 where a pixel has no data: ten such pixels inside the window are no
    measurement, so the fit is the one with those pixels missing (NaN), and near the untouched
    spectrum's (fitted as flux, they moved the Teff by 20 K from the fit without them)."""
    from conftest import SAMPLE, need
    from helpers import edited_lamost_copy

    from jaxlasp.api import fit_files

    source = need(SAMPLE / "fits" / "3706009.fits")
    edited = []
    for value in (0.0, np.nan):
        def holes(wavelength, flux, ivar, value=value):
            first = int(np.searchsorted(wavelength, 5170.0))
            flux[first:first + 10] = value  # in Mg b

        edited.append(edited_lamost_copy(source, tmp_path / f"holes-{value}.fits", holes))
    table = fit_files([source, *edited], elodie, start=(6000.0, 4.0, 0.0), errors="laplace")
    assert list(table["converged"]) == [True, True, True]
    assert "nonpositive_flux" in table["reason"][1]
    for name in ("teff", "logg", "feh", "rv"):
        assert table[name][1] == pytest.approx(table[name][2], rel=1e-6, abs=1e-6), name  # tol
        assert abs(table[name][1] - table[name][0]) < 0.5 * table[f"{name}_err"][0], name


@pytest.mark.slow
def test_the_catalog_records_its_provenance(reference, mock_folder, tmp_path):
    """Version, date, options (model and checksum included) and column descriptions and units
    travel with the catalog."""
    from datetime import datetime
    from importlib.metadata import version

    assert reference.meta["jaxlasp"] == version("jaxlasp")
    assert datetime.fromisoformat(reference.meta["created"]).tzinfo is not None
    assert json.loads(reference.meta["options"])["model"] == "demo"
    assert reference["teff"].description == "effective temperature"
    assert str(reference["teff"].unit) == "K"
    assert reference["path"].description.startswith("input file")
    output = tmp_path / "catalog.ecsv"  # a resumed catalog keeps its creation time
    files = sorted(mock_folder.glob("*.fits"))
    run(files[:3], DEMO_MODEL, output, OPTIONS, quiet=True)
    created = read_catalog(output).meta["created"]
    os.utime(output)
    run(files[:5], DEMO_MODEL, output, OPTIONS, resume=True, quiet=True)
    assert read_catalog(output).meta["created"] == created
