"""The pipeline's read-ahead pool, its stage split and the compilation cache switch."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ELODIE, SAMPLE, need

from jaxlasp import cli, compile_cache
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.io import read_tgm
from jaxlasp.pipeline import (
    FitOptions,
    Record,
    _timed_read,
    read_ahead,
    read_records,
    run,
    steady_stages,
)

REPO = Path(__file__).resolve().parents[1]


def fake_read(path, per_file=1, delay=0.0, started=None):
    """``per_file`` records for ``path`` after ``delay`` s, noting the call in ``started``."""
    if started is not None:
        started.append(path)
    time.sleep(delay)
    return [Record(str(path), f"{path}-{k}", None, "", k == per_file - 1)
            for k in range(per_file)], delay


@pytest.mark.parametrize("workers", [1, 3])
def test_read_ahead_yields_files_in_input_order(workers):
    delays = [0.02 * ((7 * k) % 5) for k in range(12)]  # later files often finish first
    paths = [f"f{k:02d}" for k in range(12)]
    read = lambda p: fake_read(p, delay=delays[paths.index(p)])  # noqa: E731
    got = [records[0].path for records in read_ahead(paths, read, workers=workers)]
    assert got == paths


def test_read_ahead_keeps_a_bounded_number_of_spectra_in_flight():
    started: list = []
    reads = read_ahead([f"f{k}" for k in range(50)], partial(fake_read, started=started),
                       workers=1, spectra_ahead=4)
    next(reads)
    time.sleep(0.2)  # the pool would run on if nothing bounded it
    assert len(started) == 4
    many: list = []
    reads = read_ahead([f"f{k}" for k in range(50)],
                       partial(fake_read, per_file=10, started=many), workers=1, spectra_ahead=4)
    next(reads), next(reads)
    time.sleep(0.2)
    assert len(many) <= 4  # once files hold 10 spectra, two files (2 per worker) are in flight
    reads.close()


def test_read_ahead_raises_the_readers_exception_in_order():
    def read(path):
        if path == "bad":
            raise RuntimeError("reader broke")
        return fake_read(path)

    reads = read_ahead(["a", "bad", "c"], read, workers=2)
    assert next(reads)[0].path == "a"
    with pytest.raises(RuntimeError, match="reader broke"):
        next(reads)


def test_read_ahead_clock_counts_reading_and_waiting():
    from jaxlasp.timing import StageClock

    clock = StageClock()
    list(read_ahead([f"f{k}" for k in range(5)], partial(fake_read, delay=0.05), workers=1,
                    clock=clock))
    seconds = clock.as_dict()
    assert seconds["read"] == pytest.approx(0.25, abs=1e-9)  # the readers' own figures, summed
    assert 0.15 < seconds["idle"] < 1.0  # a consumer doing nothing waits for every file


def test_reader_processes_give_the_records_of_a_plain_read():
    files = sorted(need(SAMPLE / "fits").glob("*.fits*"))[:4]
    grid = lamost_fit_grid(read_tgm(need(ELODIE)).grid)
    read = partial(_timed_read, grid=grid, window=(4200.0, 5700.0), format="auto")
    pooled = [r for records in read_ahead(files, read, workers=2, kind="process")
              for r in records]
    plain = [r for path in files for r in read_records(path, grid, (4200.0, 5700.0))]
    assert [(r.path, r.id, r.reason) for r in pooled] == [(r.path, r.id, r.reason) for r in plain]
    for a, b in zip(pooled, plain):
        assert (a.spectrum.flux == b.spectrum.flux).all()
        assert (a.spectrum.finite == b.spectrum.finite).all()


def test_reader_pool_is_sized_and_checked():
    assert FitOptions().reader_pool() == (1, "thread")  # the CPU backend
    assert FitOptions(readers=3, reader_kind="process").reader_pool() == (3, "process")
    with pytest.raises(ValueError, match="readers must be"):
        run([], "demo", "x.ecsv", FitOptions(readers=0))
    with pytest.raises(ValueError, match="reader kind"):
        run([], "demo", "x.ecsv", FitOptions(reader_kind="fork"))


def test_steady_stages_leave_out_the_first_group():
    total = {"read": 3.0, "fit": 10.0, "idle": 0.5}
    first = {"wall": 7.0, "read": 1.0, "fit": 6.0}
    assert steady_stages(total, first) == {"read": 2.0, "fit": 4.0, "idle": 0.5}


@pytest.mark.slow
def test_run_reports_its_stage_split(tmp_path):
    files = sorted(need(SAMPLE / "fits").glob("*.fits*"))[:6]
    options = FitOptions(start=(7500.0, 3.5, -0.5), errors="laplace", group_size=2)
    summary = run(files, read_tgm(need(ELODIE)), tmp_path / "c.ecsv", options, quiet=True)
    stages = summary.stages
    assert summary.rows == 6
    assert {"setup", "first group", "read", "fit", "write", "idle"} <= set(stages)
    assert all(seconds >= 0 for seconds in stages.values())
    assert stages["setup"] + stages["first group"] <= summary.seconds
    assert "after it: read" in cli.stage_report(stages)


# ---------------------------------------------------------------- compilation cache

def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("JAXLASP_CACHE_DIR", str(tmp_path / "mine"))
    assert compile_cache.default_cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("JAXLASP_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_cache_dir() == tmp_path / "xdg" / "jaxlasp" / "xla"


@pytest.mark.parametrize("flag, env, on", [(False, "", True), (True, "", False),
                                           (False, "0", False), (False, "off", False)])
def test_cli_switches_the_cache(monkeypatch, tmp_path, flag, env, on):
    calls = []
    monkeypatch.setenv("JAXLASP_COMPILE_CACHE", env)
    monkeypatch.setattr(compile_cache, "enable_compilation_cache",
                        lambda path=None: calls.append(path) or tmp_path)
    cli.configure_compile_cache(SimpleNamespace(no_compile_cache=flag))
    assert bool(calls) == on
    assert compile_cache.cache_switched_off() == (not on)  # what Dask workers go by


def test_xla_switch_keeps_xlas_cache_but_exports_no_programs(monkeypatch, tmp_path):
    monkeypatch.setattr(compile_cache, "_programs_folder", None)
    monkeypatch.setenv("JAXLASP_COMPILE_CACHE", "xla")
    assert not compile_cache.cache_switched_off()
    assert compile_cache.enable_compilation_cache(tmp_path) == tmp_path
    assert compile_cache._programs_folder is None
    monkeypatch.setenv("JAXLASP_COMPILE_CACHE", "")
    compile_cache.enable_compilation_cache(tmp_path)
    assert compile_cache._programs_folder == tmp_path / compile_cache.PROGRAMS


def test_unusable_cache_folder_is_a_warning_not_an_error(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert compile_cache.enable_compilation_cache(blocker / "xla") is None
    assert "compilation cache off" in caplog.text


@pytest.mark.slow
def test_second_run_loads_compiled_programs_from_the_cache(tmp_path):
    """Two ``jaxlasp fit`` processes with one cache folder: the first fills it, the second adds
    nothing (every program came from it) and writes the same catalog. (The switch that turns
    the cache off is ``test_cli_switches_the_cache``.)"""
    spectrum = str(sorted(need(SAMPLE / "fits").glob("*.fits*"))[0])

    def fit(output, cache):
        env = {"JAXLASP_CACHE_DIR": str(cache), "PATH": "/usr/bin:/bin",
               "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}   # the suite's (conftest.py)
        command = [sys.executable, "-m", "jaxlasp", "fit", spectrum, "--model", str(ELODIE),
                   "--start", "7500,3.5,-0.5", "--errors", "laplace", "--group-size", "1", "-q",
                   "-o", str(tmp_path / output)]
        subprocess.run(command, cwd=REPO, env=env, check=True, timeout=600)
        return sorted(p.name for p in cache.rglob("*") if p.is_file())

    first = fit("a.ecsv", tmp_path / "cache")
    assert first
    assert fit("b.ecsv", tmp_path / "cache") == first
    same = [[line for line in (tmp_path / name).read_text().splitlines()
             if "created:" not in line] for name in ("a.ecsv", "b.ecsv")]  # all but the date
    assert same[0] == same[1]
