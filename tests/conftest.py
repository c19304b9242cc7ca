"""Shared fixtures: the real data in ../shared (skipped with a reason when absent)."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# One BLAS thread: the NumPy/SciPy references solve small problems, and a multi-threaded OpenBLAS
# slows down 100× when another process shares the two cores of a CI machine.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Each test compiles most programs for shapes of its own, where exporting programs
# (compile_cache.program) costs more than it saves: XLA's cache only, unless a test says so.
os.environ.setdefault("JAXLASP_COMPILE_CACHE", "xla")
# The suite compiles hundreds of programs and runs each on a few spectra, so XLA's compile time
# is most of its time: XLA's CPU compiler with its older loop emitters compiles the LM program
# ~30 % faster (and runs it ~20 % slower: benchmarks/lm_cpu.py with XLA_FLAGS set). The tests'
# subprocesses inherit it.
# JAXLASP_TEST_FAST_COMPILE=0 runs the suite with the compiler settings users get. (Optimisation
# level 0 would halve the compile time again, but its round-off differs: MINPACK's path and the
# PyLASP reruns then leave their tolerances.)
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_use_fusion_emitters=false"
     if os.environ.get("JAXLASP_TEST_FAST_COMPILE", "1") != "0" else ""]).strip()

from pathlib import Path

import numpy as np
import pytest
from hypothesis import settings

import jaxlasp  # noqa: F401  (enables float64)
from jaxlasp.compile_cache import enable_compilation_cache

# Compiled programs persist on disk for the session, in a folder of its own (never the user's
# cache): the caches are cleared after every module, and the next module, the CLI tests' own
# processes included, loads its programs instead of compiling them again.
if not os.environ.get("JAXLASP_CACHE_DIR"):
    os.environ["JAXLASP_CACHE_DIR"] = tempfile.mkdtemp(prefix="jaxlasp-test-xla-")
    atexit.register(shutil.rmtree, os.environ["JAXLASP_CACHE_DIR"], ignore_errors=True)
enable_compilation_cache()

# Property tests draw the same examples on every run, so CI cannot fail by chance; set
# HYPOTHESIS_PROFILE=explore to search new examples.
settings.register_profile("ci", derandomize=True, deadline=None)
settings.register_profile("explore", derandomize=False, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
SAMPLE = SHARED / "data" / "lamost-dr10-sample"
GOLDEN = SHARED / "spec" / "golden.npz"
ELODIE = SAMPLE / "elodie32_flux_tgm_4199-5700.fits"
GROUP = SAMPLE / "pylasp_group0.npz"


LONGEST_FILES = ("test_lines", "test_start", "test_native", "test_segment_broadening",
                 "test_catalog_integrity", "test_devices", "test_cli_fit", "test_cluster",
                 "test_additive", "test_adam_float32", "test_segments", "test_errors",
                 "test_adam_clean_schedule", "test_adam")
"""The test files that took longest (--durations on a 2-core CPU), longest first."""


def pytest_collection_modifyitems(config, items):
    """The longest files first, then the rest in their order (a stable sort: tests keep their
    order within a file): pytest-xdist hands out whole files in this order, and a long file
    started last holds up the end of the run while the other workers idle."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module: one process compiles thousands of
    shapes over the suite, and XLA's CPU compiler crashed (SIGSEGV) late in such a run."""
    yield
    import jax

    jax.clear_caches()


@pytest.fixture(autouse=True)
def _restore_jaxlasp_logger():
    """The CLI, called in-process, points jaxlasp's logger at the test's captured stderr and stops
    it propagating; put it back so that later tests (and caplog) see its records."""
    import logging

    logger = logging.getLogger("jaxlasp")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def need(path: Path) -> Path:
    """Skip the test unless ``path`` exists (the real data is in ../shared, absent for users)."""
    if not path.exists():
        pytest.skip(f"real data not found at {path} (it lives in ../shared beside the repository)")
    return path


@pytest.fixture(scope="session")
def golden():
    """PyLASP's intermediate arrays at 7 parameter points (GOLDEN.md)."""
    with np.load(need(GOLDEN)) as g:
        return {k: g[k] for k in g.files}


@pytest.fixture(scope="session")
def elodie():
    """The real ELODIE 3.2 TGM emulator (4199–5700 Å), float64."""
    from jaxlasp.io import read_tgm

    return read_tgm(need(ELODIE))


@pytest.fixture(scope="session")
def demo_fm():
    """The embedded demo emulator's forward model on its LAMOST 4200–5700 Å fit grid."""
    from jaxlasp.emulators.demo import demo_emulator
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.model import build_forward_model

    emulator = demo_emulator()
    return build_forward_model(emulator, lamost_fit_grid(emulator.grid))
