"""Reading LAMOST spectra: the real DR10 sample against PyLASP's arrays, and bad inputs."""
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import need
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from jaxlasp.grids import LAMOST_LN_STEP, LinearGrid, LogGrid, window_pixels
from jaxlasp.io import (
    FEW_GOOD_PIXELS,
    NONFINITE_FLUX,
    NONPOSITIVE_FLUX,
    SpectrumFileError,
    cut_to_grid,
    fill_nonfinite,
    fit_grid,
    read_lamost,
    read_pylasp_group,
)

SAMPLE = Path("../shared/data/lamost-dr10-sample")
FITS_DIR = SAMPLE / "fits"
GROUP = SAMPLE / "pylasp_group0.npz"
GOLDEN = Path("../shared/spec/golden.npz")
ONE = FITS_DIR / "3706009.fits"
MODEL_GRID = LinearGrid(4199.2, 0.2, 7506)
"""The ELODIE model grid of the sample (ALGORITHM §0)."""
FILE_LN_START = 3.5682 * math.log(10.0) - 0.00028
"""ln λ of pixel 0 of the sample files, in air (ALGORITHM §c.4)."""


@pytest.fixture(scope="module")
def one():
    """The sample spectrum ONE, read once."""
    return read_lamost(need(ONE))


def modified_copy(tmp_path, edit, name="3706009.fits"):
    """A copy of the sample file ONE written to tmp_path after ``edit(hdul)`` changed it."""
    fits = pytest.importorskip("astropy.io.fits")
    out = tmp_path / name
    with fits.open(need(ONE), memmap=False) as hdul:
        hdul = edit(hdul) or hdul
        hdul.writeto(out, output_verify="ignore")  # the LAMOST header has NAXISn with NAXIS = 0
    return out


def set_flux(index_values):
    """An edit that sets FLUX (and IVAR) pixels: {pixel: value}."""
    def edit(hdul):
        for k, v in index_values.items():
            hdul[1].data["FLUX"][0][k] = v
            hdul[1].data["IVAR"][0][k] = v
    return edit


def reference_fill(values):
    """§c.6 written out pixel by pixel: next pixel, then previous pixel, then 0."""
    out = list(values)
    for step in (1, -1):
        before = list(out)
        for i, v in enumerate(before):
            if not np.isfinite(v):
                out[i] = before[min(max(i + step, 0), len(out) - 1)]
    return np.array([v if np.isfinite(v) else 0.0 for v in out], dtype=np.asarray(values).dtype)


# --- the real sample -----------------------------------------------------------------------------

def test_window_truncation_and_metadata(one):
    spec = one
    assert spec.id == "3706009"
    assert spec.grid.n == 1328 and spec.grid.step == LAMOST_LN_STEP
    assert spec.grid.ln_start == pytest.approx(FILE_LN_START + 551 * LAMOST_LN_STEP, abs=1e-13)
    assert spec.flux.dtype == np.float32 and spec.ivar.dtype == np.float32
    assert spec.finite.all() and spec.flags == 0
    assert spec.normalised_flux().dtype == np.float64


def test_fit_grid_is_pylasp_grid(one):
    grid = fit_grid(one, MODEL_GRID)
    assert grid.n == 1327
    assert grid.ln_start == pytest.approx(8.342906825954625, abs=1e-12)


def test_all_25_reproduce_pylasp_group():
    _, group = read_pylasp_group(need(GROUP))
    assert sorted(group["ids"]) == sorted(p.stem for p in need(FITS_DIR).glob("*.fits"))
    for row, id_ in enumerate(group["ids"]):
        spec = read_lamost(FITS_DIR / f"{id_}.fits")
        cut = cut_to_grid(spec, fit_grid(spec, MODEL_GRID))
        assert cut.id == id_
        np.testing.assert_array_equal(cut.flux, group["spectra"][row])
        wave = np.exp(cut.grid.ln_centres).astype(np.float32)
        np.testing.assert_array_max_ulp(wave, group["wave"].astype(np.float32), maxulp=1)


def test_golden_points():
    golden = np.load(need(GOLDEN), allow_pickle=False)
    for p, name in enumerate(golden["pt_spec_id"]):
        spec = read_lamost(need(FITS_DIR / str(name)))
        cut = cut_to_grid(spec, fit_grid(spec, MODEL_GRID))
        assert spec.median == golden["cf_flux_median"][p]
        np.testing.assert_array_equal(cut.normalised_flux(), golden["cf_obs_flux"][p])
        assert cut.grid.ln_start == pytest.approx(float(golden["cf_meta_obs_start"]), abs=1e-12)
        np.testing.assert_allclose(cut.grid.centres, golden["cf_obs_wave"][p], rtol=1e-14)


def test_gzipped_file_and_its_id(tmp_path, one):
    path = tmp_path / "3706009.fits.gz"
    path.write_bytes(gzip.compress(need(ONE).read_bytes()))
    spec = read_lamost(path)
    assert spec.id == "3706009"
    np.testing.assert_array_equal(spec.flux, one.flux)


def test_internal_image_layout(tmp_path, one):
    fits = pytest.importorskip("astropy.io.fits")

    def to_image(hdul):
        row = hdul[1].data[0]
        image = np.stack([row[c] for c in ("FLUX", "IVAR", "WAVELENGTH", "ANDMASK", "ORMASK")])
        return fits.HDUList([fits.PrimaryHDU(image, header=hdul[0].header)])

    public = one
    internal = read_lamost(modified_copy(tmp_path, to_image))
    assert internal.grid == public.grid and internal.median == public.median
    for field in ("flux", "ivar", "andmask"):
        np.testing.assert_array_equal(getattr(internal, field), getattr(public, field))


def test_air_file_has_no_vacuum_shift(tmp_path):
    def to_air(hdul):
        hdul[0].header["VACUUM"] = False
    spec = read_lamost(modified_copy(tmp_path, to_air))
    file_grid = LogGrid(3.5682 * math.log(10.0), LAMOST_LN_STEP, 3909)
    first, last = window_pixels(file_grid, 4200.0, 5700.0)
    assert spec.grid == file_grid.sub(first, last - first + 1)


# --- non-finite and non-positive flux ------------------------------------------------------------

def test_nonfinite_flux_is_flagged_and_replaced(tmp_path, one):
    bad = {551 + 10: np.nan, 551 + 11: np.inf, 551 + 50: -np.inf, 1878: np.nan, 1877: np.nan}
    path = modified_copy(tmp_path, set_flux(bad))
    spec, clean = read_lamost(path), one
    assert spec.flags & NONFINITE_FLUX
    np.testing.assert_array_equal(np.flatnonzero(~spec.finite), sorted(k - 551 for k in bad))
    f, c = spec.flux, clean.flux
    assert f[11] == c[12] and f[50] == c[51]  # next pixel's value
    assert f[10] == c[9]  # its next pixel (11) was bad too: previous pixel's value
    assert f[1326] == c[1325]  # next (last) pixel bad: previous pixel's value
    assert f[1327] == 0  # last pixel: itself, then its previous (still bad before step 2), then 0
    np.testing.assert_array_equal(spec.ivar, reference_fill(np.where(spec.finite, clean.ivar,
                                                                     np.nan)))
    fits = pytest.importorskip("astropy.io.fits")
    raw = fits.getdata(path, 1)["FLUX"][0]
    assert spec.median == np.nanmedian(raw)  # over the whole file, before any replacement


def test_all_nonfinite_window_is_an_error(tmp_path):
    path = modified_copy(tmp_path, set_flux(dict.fromkeys(range(540, 1890), np.nan)))
    with pytest.raises(SpectrumFileError, match="no finite flux"):
        read_lamost(path)


def test_few_good_pixels_flag(tmp_path):
    path = modified_copy(tmp_path, set_flux(dict.fromkeys(range(551, 1876), np.nan)))
    spec = read_lamost(path)
    assert spec.finite.sum() == 3
    assert spec.flags & FEW_GOOD_PIXELS and spec.flags & NONFINITE_FLUX


def test_nonpositive_flux_flag(tmp_path):
    spec = read_lamost(modified_copy(tmp_path, set_flux({700: -5.0})))
    assert spec.flags == NONPOSITIVE_FLUX


@given(hnp.arrays(np.float32, st.integers(1, 40),
                  elements=st.sampled_from([1.0, -2.5, 3.0, np.nan, np.inf, -np.inf])))
def test_fill_nonfinite_matches_reference(values):
    np.testing.assert_array_equal(fill_nonfinite(values), reference_fill(values))
    assert np.isfinite(fill_nonfinite(values)).all()


@given(st.integers(0, 1327), st.integers(1, 1328))
def test_cut_to_grid_of_subgrid(one, first, n):
    spec = one
    n = min(n, spec.grid.n - first)
    cut = cut_to_grid(spec, LogGrid(spec.grid.ln_start + first * spec.grid.step,
                                    spec.grid.step, n))
    assert cut.grid == spec.grid.sub(first, n)
    np.testing.assert_array_equal(cut.flux, spec.flux[first:first + n])


# --- bad files and grids -------------------------------------------------------------------------

def test_cut_to_grid_errors(one):
    spec = one
    g = spec.grid
    with pytest.raises(ValueError, match=r"not commensurate.*0\.500000 pixels"):
        cut_to_grid(spec, LogGrid(g.ln_start + 0.5 * g.step, g.step, 10))
    with pytest.raises(ValueError, match=r"not commensurate.*steps"):
        cut_to_grid(spec, LogGrid(g.ln_start, 1.0001 * g.step, 10))
    with pytest.raises(ValueError, match="not inside spectrum 3706009"):
        cut_to_grid(spec, g.sub(1000, 400))


def test_missing_coadd(tmp_path):
    path = modified_copy(tmp_path, lambda hdul: hdul[:1])
    with pytest.raises(SpectrumFileError, match=r"3706009\.fits: no 'COADD' table"):
        read_lamost(path)


def test_coadd_without_flux(tmp_path):
    fits = pytest.importorskip("astropy.io.fits")

    def drop_flux(hdul):
        cols = [c for c in hdul[1].columns if c.name != "FLUX"]
        table = fits.BinTableHDU.from_columns(cols, name="COADD")
        return fits.HDUList([hdul[0], table])
    with pytest.raises(SpectrumFileError, match="COADD table has no FLUX column"):
        read_lamost(modified_copy(tmp_path, drop_flux))


def test_not_fits(tmp_path):
    path = tmp_path / "spec.fits"
    path.write_text("FLUX IVAR\n1 2\n")
    with pytest.raises(SpectrumFileError, match=r"spec\.fits: not a readable FITS file"):
        read_lamost(path)


def test_truncated(tmp_path):
    raw = need(ONE).read_bytes()
    path = tmp_path / "truncated.fits"
    path.write_bytes(raw[:-2000])
    with pytest.raises(SpectrumFileError, match=r"truncated\.fits: not a readable FITS file"):
        read_lamost(path)


def test_window_not_covered(tmp_path):
    def shift(hdul):
        hdul[0].header["CRVAL1"] = 3.7
    message = r"covers 5010\.5–12321\.9 Å, which does not include the window 4200\.0–5700\.0 Å"
    with pytest.raises(SpectrumFileError, match=message):
        read_lamost(modified_copy(tmp_path, shift))


def test_wavelength_header_missing(tmp_path):
    def drop(hdul):
        del hdul[0].header["CRVAL1"]
    with pytest.raises(SpectrumFileError, match="wavelength header missing"):
        read_lamost(modified_copy(tmp_path, drop))


def test_linear_sampling_refused(tmp_path):
    def linear(hdul):
        hdul[0].header["DC-FLAG"] = 0
    with pytest.raises(SpectrumFileError, match="DC-FLAG is 0"):
        read_lamost(modified_copy(tmp_path, linear))


def test_obsid_coordinates_and_snr_come_from_the_header():
    from astropy.io import fits

    for path in sorted(need(FITS_DIR).glob("*.fits"))[:5]:
        header = fits.getheader(path, 0)
        survey = read_lamost(path).survey
        assert survey == {"obsid": header["OBSID"], "ra": header["RA"], "dec": header["DEC"],
                          **{f"snr_{b}": header[f"SNR{b.upper()}"] for b in "ugriz"}}
        assert str(survey["obsid"]) == path.stem  # the public files are named by OBSID


def test_survey_values_missing_from_a_header_are_left_out():
    from jaxlasp.io.lamost import lamost_survey_values

    assert lamost_survey_values({"OBSID": "123", "RA": "n/a", "SNRG": 7.5, "DEC": True}) == {
        "obsid": 123, "snr_g": 7.5}
