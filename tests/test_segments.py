"""Segments: disjoint windows fitted jointly, each with its own polynomials."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import ELODIE, SAMPLE, need
from helpers import edited_lamost_copy

from jaxlasp.api import PYLASP
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.spectral.continuum import legendre_basis, segment_basis

SEGMENTS = ((4200.0, 4900.0), (5000.0, 5700.0))


def test_segment_basis_is_one_legendre_block_per_segment():
    basis = segment_basis(30, [(0, 10), (15, 30)], [2, 3])
    assert basis.shape == (30, 3 + 4)
    np.testing.assert_array_equal(basis[:10, :3], legendre_basis(10, 2))
    np.testing.assert_array_equal(basis[15:, 3:], legendre_basis(15, 3))
    assert not basis[10:15].any() and not basis[:10, 3:].any() and not basis[15:, :3].any()
    assert segment_basis(30, [(0, 10)], [-1]).shape == (30, 0)  # no additive polynomial


def test_segment_degrees_and_ranges(elodie):
    from jaxlasp.model import segment_degree, segment_ranges

    grid = lamost_fit_grid(elodie.grid)
    assert segment_degree(50, grid, grid.n) == 50  # PyLASP's window keeps PyLASP's degree
    assert segment_degree(50, grid, grid.n // 2) in (24, 25)
    first, second = segment_ranges(grid, SEGMENTS)
    assert grid.centres[first[1] - 1] <= 4900.0 < grid.centres[first[1]]
    assert grid.centres[second[0] - 1] < 5000.0 <= grid.centres[second[0]]
    with pytest.raises(ValueError, match="overlap"):
        segment_ranges(grid, ((4200.0, 5000.0), (4900.0, 5700.0)))
    with pytest.raises(ValueError, match="at least 10"):
        segment_ranges(grid, ((4200.0, 4201.0),))


@pytest.fixture(scope="module")
def recalibrated(tmp_path_factory):
    """A real LAMOST file and a copy whose red segment (≥ 4950 Å) is × 1.7, its IVAR ÷ 1.7²: two
    arms with different flux calibrations (the noise scaled with the flux)."""
    def recalibrate(wavelength, flux, ivar):
        flux[wavelength >= 4950.0] *= 1.7
        ivar[wavelength >= 4950.0] /= 1.7**2

    source = need(SAMPLE / "fits" / "3706009.fits")
    path = tmp_path_factory.mktemp("recalibrated") / "recalibrated.fits"
    return source, edited_lamost_copy(source, path, recalibrate)


@pytest.mark.slow
@pytest.mark.parametrize("method, clean", [("lm", False), ("lm", True), ("adam", False)])
def test_one_segment_scaled_changes_nothing(recalibrated, elodie, method, clean):
    """Exact where χ² is invariant: pixels weighted by IVAR, which scales with the calibration
    (with unit weights a scaled segment weighs more in χ², and the optimum moves)."""
    from jaxlasp.api import fit_files

    kwargs = dict(start=(6000.0, 4.0, 0.0), errors="laplace", method=method, clean=clean,
                  weighting="ivar")
    table = fit_files(list(recalibrated), elodie, segments=SEGMENTS, **kwargs)
    assert list(table["converged"]) == [True, True]
    for name in ("rv", "teff", "logg", "feh"):
        assert table[name][1] == pytest.approx(table[name][0], rel=1e-6, abs=1e-6), name
    if method == "lm" and not clean:
        plain = fit_files(list(recalibrated), elodie, **kwargs)  # one polynomial over the jump
        moved = [abs(plain[n][1] - plain[n][0]) / plain[f"{n}_err"][0] for n in ("teff", "feh")]
        assert max(moved) > 1.0
        grid = lamost_fit_grid(elodie.grid)
        gap = np.count_nonzero((grid.centres > 4900.0) & (grid.centres < 5000.0))
        assert table["n_pixels"][0] == plain["n_pixels"][0] - gap


@pytest.mark.slow
def test_one_segment_over_the_window_is_the_default_fit(elodie):
    """The explicit design path (one segment, degree 50) equals PyLASP's moment path."""
    from jaxlasp.api import fit_files

    paths = [need(SAMPLE / "fits" / f"{i}.fits") for i in ("3706009", "3713134")]
    default = fit_files(paths, elodie, **PYLASP)
    segmented = fit_files(paths, elodie, segments=[(4200.0, 5700.0)], **PYLASP)
    for name in ("rv", "teff", "logg", "feh", "teff_err", "n_pixels"):
        np.testing.assert_allclose(segmented[name], default[name], rtol=1e-6, err_msg=name)


@pytest.mark.slow
def test_cli_segments(recalibrated, tmp_path, capsys):
    from jaxlasp.cli import main
    from jaxlasp.io.catalog import read_catalog

    output = tmp_path / "c.ecsv"
    common = [str(recalibrated[0]), "--model", str(need(ELODIE)), "--start", "6000,4,0",
              "--errors", "laplace", "-q", "--group-size", "2"]   # fit_files' batch above
    assert main(["fit", *common, "--segments", "4200-4900,5000-5700", "-o", str(output)]) == 0
    options = json.loads(read_catalog(output).meta["options"])
    assert options["segments"] == [list(s) for s in SEGMENTS]
    assert options["window"] == [4200.0, 5700.0]
    code = main(["fit", *common, "--segments", "4200-4900,5000-5700", "--window", "4200,5700",
                 "-o", str(tmp_path / "both.ecsv")])
    assert code == 2 and "not both" in capsys.readouterr().err
    code = main(["fit", *common, "--segments", "4200-5000,4900-5700", "-o",
                 str(tmp_path / "overlap.ecsv")])
    assert code == 2 and "overlap" in capsys.readouterr().err
    plot = tmp_path / "fit.png"
    assert main(["plot", str(recalibrated[1]), "--model", str(need(ELODIE)), "--start", "6000,4,0",
                 "--segments", "4200-4900,5000-5700", "--mask", "5170-5180", "-o",
                 str(plot)]) == 0
    assert plot.stat().st_size > 10_000
