"""Wavelength masks: parsing, the pixels they cover, and fits that ignore what is masked."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SAMPLE, need
from helpers import edited_lamost_copy
from hypothesis import given
from hypothesis import strategies as st

from jaxlasp.spectral.masks import (
    check_intervals,
    intervals_from,
    masked_pixels,
    parse_intervals,
    read_intervals,
)

# ---------------------------------------------------------------- intervals and pixels


def test_intervals_from_text_and_file(tmp_path):
    assert parse_intervals("5570-5585, 4300.5-4310") == ((4300.5, 4310.0), (5570.0, 5585.0))
    path = tmp_path / "mask.txt"
    path.write_text("# lo hi [Å]\n5570 5585  # sky\n4300.5 4310\n\n")
    assert read_intervals(path) == ((4300.5, 4310.0), (5570.0, 5585.0))
    assert intervals_from(str(path)) == intervals_from("4300.5-4310,5570-5585")


@pytest.mark.parametrize("text, words", [("5570", "LO-HI"), ("a-b", "LO-HI"), ("", "LO-HI"),
                                         ("5585-5570", "lo < hi"), ("nan-5000", "finite")])
def test_bad_interval_text_is_refused(text, words):
    with pytest.raises(ValueError, match=words):
        parse_intervals(text)


@pytest.mark.parametrize("content, words", [("5570 5585 5600\n", "two columns"),
                                            ("5570 x\n", "not a mask file"),
                                            ("5590 5585\n", "lo < hi")])
def test_bad_mask_file_is_refused(tmp_path, content, words):
    path = tmp_path / "mask.txt"
    path.write_text(content)
    with pytest.raises(ValueError, match=words):
        read_intervals(path)


finite = st.floats(4000.0, 6000.0, allow_nan=False)


@given(st.lists(st.tuples(finite, finite).filter(lambda p: p[0] < p[1]), max_size=4),
       st.lists(finite, min_size=1, max_size=50))
def test_masked_pixels_against_a_loop(intervals, wavelength):
    got = masked_pixels(np.sort(wavelength), check_intervals(intervals))
    want = [any(lo <= w <= hi for lo, hi in intervals) for w in np.sort(wavelength)]
    assert got.tolist() == want


# ---------------------------------------------------------------- fits on the real sample

GARBAGE = (5000.0, 5050.0)


@pytest.fixture(scope="module")
def spoiled(tmp_path_factory):
    """A real LAMOST file and a copy with its flux × 3 over 5000–5050 Å (a bad region)."""
    def spoil(wavelength, flux, ivar):
        flux[(wavelength >= GARBAGE[0] - 3) & (wavelength <= GARBAGE[1] + 3)] *= 3.0  # vacuum

    source = need(SAMPLE / "fits" / "3706009.fits")
    path = tmp_path_factory.mktemp("spoiled") / "spoiled.fits"
    return source, edited_lamost_copy(source, path, spoil)


@pytest.mark.slow
@pytest.mark.parametrize("method, clean", [("lm", False), ("lm", True), ("adam", True)])
def test_a_masked_bad_region_changes_nothing(spoiled, elodie, method, clean):
    """Flux × 3 over a masked region: the same parameters as the untouched spectrum with the same
    mask (to the fit's tolerance), with and without Clean, LM and Adam; unmasked, the region
    moves the fit."""
    from jaxlasp.api import fit_files
    from jaxlasp.grids import lamost_fit_grid

    kwargs = dict(start=(6000.0, 4.0, 0.0), errors="laplace", clean=clean, method=method)
    masked = fit_files(list(spoiled), elodie, mask=[(4990.0, 5060.0)], **kwargs)
    plain = fit_files(list(spoiled), elodie, **kwargs)
    assert list(masked["converged"]) == [True, True]
    for name in ("rv", "teff", "logg", "feh"):
        assert masked[name][1] == pytest.approx(masked[name][0], rel=1e-6, abs=1e-6), name
    moved = [abs(plain[n][1] - plain[n][0]) / plain[f"{n}_err"][0] for n in ("teff", "feh")]
    assert max(moved) > 1.0  # the test can fail: unmasked garbage matters
    if not clean:  # Clean's own rejections differ with and without the mask
        grid = lamost_fit_grid(elodie.grid)
        inside = np.count_nonzero(masked_pixels(grid.centres, ((4990.0, 5060.0),)))
        assert plain["n_pixels"][0] - masked["n_pixels"][0] == inside


@pytest.mark.slow
def test_a_fully_masked_spectrum_is_a_flagged_row(spoiled, elodie):
    from jaxlasp.api import fit_files

    table = fit_files(list(spoiled), elodie, start=(6000.0, 4.0, 0.0), errors="laplace",
                      mask=[(4000.0, 6000.0)])
    assert table["n_pixels"].tolist() == [0, 0]
    assert not any(table["converged"])
    assert all("not_fitted" in r for r in table["reason"])
    assert np.isnan(table["teff"]).all() and np.isnan(table["rv_err"]).all()


@pytest.mark.slow
def test_a_pixel_mask_array_equals_its_intervals(elodie):
    from jaxlasp.api import fit_arrays
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.io import cut_to_grid, read_spectra

    grid = lamost_fit_grid(elodie.grid)
    spectrum = cut_to_grid(read_spectra(need(SAMPLE / "fits" / "3706009.fits"))[0], grid)
    flux = spectrum.normalised_flux()
    intervals = [(4990.0, 5060.0), (5160.0, 5190.0)]
    pixels = masked_pixels(grid.centres, check_intervals(intervals))
    by_intervals = fit_arrays(flux, elodie, start=(6000.0, 4.0, 0.0), errors="laplace",
                              mask=intervals)
    by_pixels = fit_arrays(flux, elodie, start=(6000.0, 4.0, 0.0), errors="laplace",
                           mask=pixels)
    for name in ("rv", "teff", "logg", "feh", "n_pixels"):
        assert by_pixels[name][0] == by_intervals[name][0], name
    assert by_pixels["n_pixels"][0] == grid.n - pixels.sum()  # default weights: all pixels
    with pytest.raises(ValueError, match="pixel mask has shape"):
        fit_arrays(flux, elodie, mask=pixels[:-1])


@pytest.mark.slow
def test_cli_mask_reaches_the_catalog_and_its_options(spoiled, tmp_path, capsys):
    from jaxlasp.cli import main
    from jaxlasp.io.catalog import read_catalog

    source = spoiled[0]
    mask_file = tmp_path / "mask.txt"
    mask_file.write_text("# a bad region\n4990 5060\n")
    output = tmp_path / "c.ecsv"
    common = [str(source), "--model", str(need(SAMPLE / "elodie32_flux_tgm_4199-5700.fits")),
              "--start", "6000,4,0", "--errors", "laplace", "-q", "--group-size", "2"]
    # (groups of 2: the batch of the fit_files calls above, whose compiled programs it reuses)
    assert main(["fit", *common, "--mask", str(mask_file), "-o", str(output)]) == 0
    catalog = read_catalog(output)
    assert json.loads(catalog.meta["options"])["mask"] == [[4990.0, 5060.0]]
    assert main(["fit", *common, "-o", str(tmp_path / "plain.ecsv")]) == 0
    plain = read_catalog(tmp_path / "plain.ecsv")
    assert "mask" not in json.loads(plain.meta["options"])  # default options as before masks
    assert catalog["n_pixels"][0] < plain["n_pixels"][0]
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", *common, "--mask", "5060-4990", "-o", str(tmp_path / "bad.ecsv")])
    assert exit_info.value.code == 2
    assert "--mask" in capsys.readouterr().err
