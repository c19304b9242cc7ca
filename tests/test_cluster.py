"""The Dask cluster runner: same catalog as one process, complete even when a worker is killed."""
from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from jaxlasp.api import DEMO_MODEL
from jaxlasp.io.catalog import read_catalog
from jaxlasp.pipeline import FitOptions, parts_folder, run

distributed = pytest.importorskip(
    "distributed", reason="dask.distributed is an optional extra: pip install 'jaxlasp[cluster]'")
from jaxlasp.parallel.cluster import chunk_part_name, run_cluster  # noqa: E402

N_SPECTRA = 100
OPTIONS = FitOptions(start=(5500.0, 4.0, 0.0), errors="laplace", group_size=25,
                     weighting="ivar")
"""A fixed start and Laplace errors keep compilation short; groups of 25 = chunks of 25 files."""
NUMERIC = ("rv", "rv_err", "teff", "teff_err", "logg", "logg_err", "feh", "feh_err", "sigma",
           "loss")


@pytest.fixture(scope="module")
def mock_files(tmp_path_factory, demo_fm):
    from jaxlasp.mock import draw_parameters, simulate, write_mock_files

    truth = draw_parameters(N_SPECTRA, seed=3, domain=demo_fm.emulator.domain)
    mock = simulate(demo_fm, truth, snr=30.0, seed=4)
    folder = tmp_path_factory.mktemp("mocks")
    return write_mock_files(mock, folder)


@pytest.fixture(scope="module")
def single_process(mock_files, tmp_path_factory):
    output = tmp_path_factory.mktemp("single") / "catalog.ecsv"
    run(mock_files, DEMO_MODEL, output, OPTIONS, quiet=True)
    return read_catalog(output)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    # workers share one compilation cache: the second worker (and a restarted one) reuses the
    # programs the first compiled
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax-cache"))
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       dashboard_address=":0")
    with distributed.Client(cluster) as client:
        yield client
    cluster.close()
    os.environ.pop("JAX_COMPILATION_CACHE_DIR")


def assert_same_catalog(ours, reference):
    assert list(ours["path"]) == list(reference["path"])
    assert list(ours["id"]) == list(reference["id"])
    for name in ("flags", "converged", "n_iter"):
        np.testing.assert_array_equal(ours[name], reference[name], err_msg=name)
    for name in NUMERIC:
        np.testing.assert_allclose(ours[name], reference[name], rtol=1e-9, atol=0, err_msg=name)


@pytest.mark.slow
def test_two_workers_give_the_single_process_catalog(mock_files, single_process, client,
                                                     tmp_path):
    output = tmp_path / "cluster.ecsv"
    reports = []
    summary = run_cluster(mock_files, DEMO_MODEL, output, OPTIONS, client=client,
                          chunk_files=25, quiet=True, on_chunk=reports.append)
    assert summary.rows == N_SPECTRA and summary.fitted == N_SPECTRA
    assert len(reports) == N_SPECTRA // 25
    assert len({r.worker for r in reports}) == 2, "both workers should have fitted chunks"
    assert not parts_folder(output).exists()
    assert np.mean(single_process["converged"]) > 0.75  # fixed start: a few fail (flagged)
    assert_same_catalog(read_catalog(output), single_process)


@pytest.mark.slow
def test_killed_worker_still_gives_a_complete_catalog(mock_files, single_process, client,
                                                      tmp_path):
    output = tmp_path / "killed.ecsv"
    killed = []

    def kill_a_busy_worker(report):
        if killed:
            return
        busy = [w for w, keys in client.processing().items() if keys and w != report.worker]
        busy = busy or [w for w, keys in client.processing().items() if keys]
        if busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed.append(busy[0])

    run_cluster(mock_files, DEMO_MODEL, output, OPTIONS, client=client, chunk_files=25,
                quiet=True, on_chunk=kill_a_busy_worker)
    assert killed, "no worker was busy after the first chunk: the test did not kill one"
    assert_same_catalog(read_catalog(output), single_process)


@pytest.mark.slow
def test_resume_keeps_finished_chunks(mock_files, single_process, client, tmp_path):
    output = tmp_path / "resumed.parquet"  # Parquet parts
    first = [str(p.absolute()) for p in mock_files[:25]]
    run_cluster(first, DEMO_MODEL, output, OPTIONS, client=client, chunk_files=25, quiet=True)
    reports = []
    summary = run_cluster(mock_files, DEMO_MODEL, output, OPTIONS, client=client,
                          chunk_files=25, resume=True, quiet=True, on_chunk=reports.append)
    assert summary.fitted == N_SPECTRA - 25
    assert all(r.part.endswith(".parquet") for r in reports)
    assert chunk_part_name(first, output) not in {os.path.basename(r.part) for r in reports}
    assert_same_catalog(read_catalog(output), single_process)


@pytest.mark.slow
def test_unreadable_files_get_rows(mock_files, client, tmp_path):
    broken = tmp_path / "broken.fits"
    broken.write_bytes(b"not a FITS file")
    output = tmp_path / "broken.ecsv"
    summary = run_cluster([broken, *mock_files[:3]], DEMO_MODEL, output, OPTIONS, client=client,
                          chunk_files=2, quiet=True)
    catalog = read_catalog(output)
    assert summary.rows == 4 and summary.unreadable == 1
    assert catalog["id"][0] == "broken" and not catalog["converged"][0]


@pytest.mark.slow
def test_cli_runs_on_a_local_cluster(mock_files, single_process, tmp_path):
    from jaxlasp.cli import main

    output = tmp_path / "cli.ecsv"
    code = main(["fit", *map(str, mock_files[:10]), "--model", DEMO_MODEL, "--start", "5500,4,0",
                 "--weighting", "ivar", "--errors", "laplace", "--group-size", "25",
                 "--dask-workers", "1", "--chunk-files", "5", "-o", str(output), "-q"])
    catalog = read_catalog(output)
    assert code == (0 if all(catalog["converged"]) else 3)
    assert_same_catalog(catalog, single_process[:10])
