"""The reader registry, plain-array and specutils spectra, and the numpy resampler."""
import gzip
import math

import numpy as np
import pytest
from conftest import SAMPLE, need
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_io_desi import write_desi

from jaxlasp.grids import LAMOST_AIR_GRID, LinearGrid, LogGrid, lamost_fit_grid
from jaxlasp.io import (
    SpectrumFileError,
    cut_to_grid,
    from_specutils,
    get_reader,
    read_desi,
    read_lamost,
    read_spectra,
    reader_for,
    readers,
    register_reader,
    spectrum_from_arrays,
)
from jaxlasp.io.arrays import band, pixel_edges, rebin
from jaxlasp.io.lamost import VACUUM_LN_SHIFT

fits = pytest.importorskip("astropy.io.fits")

FITS_DIR = SAMPLE / "fits"
ONE = FITS_DIR / "3706009.fits"
MODEL_GRID = LinearGrid(4199.2, 0.2, 7506)


@pytest.fixture(scope="module")
def desi_file(tmp_path_factory):
    return write_desi(tmp_path_factory.mktemp("desi") / "coadd-sv1-dark-7.fits")


def lamost_copy(tmp_path, edit, name="3706009.fits"):
    """The sample file ONE written to tmp_path after ``edit(hdul)`` changed it."""
    out = tmp_path / name
    with fits.open(need(ONE), memmap=False) as hdul:
        hdul = edit(hdul) or hdul
        hdul.writeto(out, output_verify="ignore")  # the LAMOST header has NAXISn with NAXIS = 0
    return out


# --- the registry --------------------------------------------------------------------------------

def test_sample_files_are_lamost():
    paths = sorted(need(FITS_DIR).glob("*.fits"))
    assert len(paths) == 25
    for path in paths:
        assert reader_for(path).name == "lamost"
    [spec] = read_spectra(ONE)
    direct = read_lamost(ONE)
    assert spec.id == direct.id and spec.grid == direct.grid
    np.testing.assert_array_equal(spec.flux, direct.flux)


def test_lamost_layouts_are_recognised(tmp_path):
    def to_image(hdul):
        row = hdul[1].data[0]
        image = np.stack([row[c] for c in ("FLUX", "IVAR", "WAVELENGTH", "ANDMASK", "ORMASK")])
        header = hdul[0].header.copy()
        del header["TELESCOP"]  # recognised by its 2-D image and DC-FLAG alone
        return fits.HDUList([fits.PrimaryHDU(image, header=header)])
    internal = lamost_copy(tmp_path, to_image, "internal.fits")
    assert reader_for(internal).name == "lamost"
    np.testing.assert_array_equal(read_spectra(internal)[0].flux, read_lamost(ONE).flux)
    header_only = lamost_copy(tmp_path, lambda hdul: hdul[:1], "header_only.fits")
    assert reader_for(header_only).name == "lamost"
    with pytest.raises(SpectrumFileError, match=r"header_only\.fits: no 'COADD' table"):
        read_spectra(header_only)


def test_desi_is_recognised(tmp_path, desi_file):
    assert reader_for(desi_file).name == "desi"
    spectra = read_spectra(desi_file)
    assert len(spectra) == 3
    zipped = tmp_path / "coadd.fits.gz"
    zipped.write_bytes(gzip.compress(desi_file.read_bytes()))
    assert reader_for(zipped).name == "desi"
    for a, b in zip(read_spectra(zipped, window=(5000.0, 6000.0)),
                    read_desi(desi_file, (5000.0, 6000.0))):
        assert a.id == b.id and a.grid == b.grid
        np.testing.assert_array_equal(a.flux, b.flux)


def test_explicit_format(desi_file):
    assert [s.id for s in read_spectra(desi_file, format="desi")] == [
        s.id for s in read_spectra(desi_file)]
    with pytest.raises(SpectrumFileError, match="no 'COADD' table"):
        read_spectra(desi_file, format="lamost")
    with pytest.raises(ValueError, match="unknown spectrum format 'sdss'; registered: "
                                         "lamost, desi"):
        read_spectra(desi_file, format="sdss")
    assert get_reader("desi").read is read_desi


@pytest.mark.parametrize(
    "content", [b"FLUX IVAR\n1 2\n", b"", gzip.compress(b"not fits at all", mtime=0)],
    ids=["text", "empty", "gzip"])
def test_not_fits(tmp_path, content):
    path = tmp_path / "spec.fits"
    path.write_bytes(content)
    with pytest.raises(SpectrumFileError, match=r"spec\.fits: not a FITS file .* no registered "
                                                r"reader \(lamost, desi\) recognises it"):
        read_spectra(path)


def test_unknown_fits(tmp_path):
    path = tmp_path / "image.fits"
    fits.HDUList([fits.PrimaryHDU(np.zeros(10)), fits.ImageHDU(np.ones(3), name="SCI")]).writeto(
        path)
    with pytest.raises(SpectrumFileError, match=r"image\.fits: no registered reader \(lamost, "
                                                r"desi\) recognises this FITS file \(HDUs: "
                                                r"\['PRIMARY', 'SCI'\]\)"):
        read_spectra(path)


@pytest.mark.parametrize("keep", [100, 4000, -2000])
def test_truncated_files(tmp_path, desi_file, keep):
    for source in (desi_file, need(ONE)):
        path = tmp_path / f"cut-{source.name}"
        path.write_bytes(source.read_bytes()[:keep])
        with pytest.raises(SpectrumFileError, match=rf"cut-{source.stem}\.fits: not a readable "
                                                    "FITS file"):
            read_spectra(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        read_spectra(tmp_path / "absent.fits")


def test_plug_in_reader(tmp_path, monkeypatch, desi_file):
    """A new survey plugs in without touching anything else; newer registrations are asked
    first, so a plug-in can also claim a layout a built-in reader accepts."""
    monkeypatch.setattr(readers, "_READERS", dict(readers._READERS))
    path = tmp_path / "toy.fits"
    wave = np.linspace(4000.0, 6000.0, 2001)
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.stack([wave, 1 + 0 * wave]),
                                                   name="TOYSPEC")]).writeto(path)

    def read_toy(p, window):
        data = fits.getdata(p, "TOYSPEC")
        return [spectrum_from_arrays(data[0], data[1], id="toy", window=window)]
    register_reader("toy", read_toy, lambda probe: "TOYSPEC" in probe.names)
    [spec] = read_spectra(path)
    assert spec.id == "toy" and reader_for(path).name == "toy"
    np.testing.assert_allclose(spec.flux, 1.0, rtol=1e-6)
    register_reader("everything", lambda p, w: [], lambda probe: probe.is_fits)
    assert reader_for(desi_file).name == "everything"
    assert reader_for(path).name == "everything"


# --- plain arrays and specutils ------------------------------------------------------------------

def test_lamost_arrays_round_trip():
    """The sample file's own arrays (vacuum WAVELENGTH column, float32) give read_lamost's
    spectrum exactly: the grid snaps to the LAMOST lattice, nothing is resampled."""
    row = fits.getdata(need(ONE), 1)[0]
    spec = spectrum_from_arrays(row["WAVELENGTH"], row["FLUX"], row["IVAR"], row["ANDMASK"],
                                id="3706009", vacuum=True, window=(4200.0, 5700.0))
    direct = read_lamost(ONE)
    assert spec.grid == direct.grid and spec.median == direct.median
    for field in ("flux", "ivar", "andmask", "finite"):
        np.testing.assert_array_equal(getattr(spec, field), getattr(direct, field))
    assert spec.flags == direct.flags and spec.id == direct.id


def test_log_uniform_arrays_keep_their_grid():
    wave = 10 ** (3.6 + 5e-5 * np.arange(500))  # off the LAMOST step: kept as is
    flux = np.linspace(1.0, 2.0, 500)
    spec = spectrum_from_arrays(wave[::-1], flux[::-1])  # decreasing input is reversed
    assert spec.grid.step == pytest.approx(5e-5 * math.log(10), rel=1e-9)
    assert spec.grid.ln_start == pytest.approx(3.6 * math.log(10), abs=1e-12)
    np.testing.assert_array_equal(spec.flux, flux.astype(np.float32))
    assert spec.finite.all() and spec.median == pytest.approx(1.5)


def test_linear_arrays_are_resampled_to_the_lattice():
    wave = np.arange(4000.0, 6000.0, 0.5)  # air, linear
    mask = (wave > 5000) & (wave < 5003)
    flux = np.where(mask, 1e6, 3.0 + 1e-3 * (wave - 5000.0))
    spec = spectrum_from_arrays(wave, flux, mask=mask, id="lin", window=(4200.0, 5700.0))
    assert spec.grid.n == 1328
    assert spec.grid.ln_start == pytest.approx(LAMOST_AIR_GRID.sub(551, 1).ln_start, abs=1e-12)
    assert cut_to_grid(spec, lamost_fit_grid(MODEL_GRID)).grid.n == 1327
    # expected: the mean of the line over the part of each bin outside the masked input pixels
    edges, masked = spec.grid.edges, (5000.25, 5002.75)
    lo = np.clip(edges[:-1], *masked)
    hi = np.clip(edges[1:], *masked)

    def integral(x0, x1):
        return 3.0 * (x1 - x0) + 1e-3 * ((x1 - 5000.0) ** 2 - (x0 - 5000.0) ** 2) / 2
    with np.errstate(invalid="ignore"):  # bins inside the masked pixels: 0/0
        expected = ((integral(edges[:-1], edges[1:]) - integral(lo, hi))
                    / (np.diff(edges) - (hi - lo)))
    np.testing.assert_allclose(spec.flux[spec.finite], expected[spec.finite], atol=5e-5)
    lost = ~spec.finite
    assert 1 <= lost.sum() <= 3 and np.all(spec.ivar[lost] == 0) and np.all(spec.andmask[lost])
    centres = spec.grid.centres
    assert np.all((centres[lost] > 4999.5) & (centres[lost] < 5003.5))


def test_vacuum_arrays_are_shifted():
    wave = np.arange(4000.0, 6000.0, 0.5)
    air = spectrum_from_arrays(wave, wave)
    vac = spectrum_from_arrays(wave * math.exp(VACUUM_LN_SHIFT), wave, vacuum=True)
    assert vac.grid == air.grid
    np.testing.assert_allclose(vac.flux, air.flux, rtol=1e-6)


def test_bad_arrays():
    with pytest.raises(ValueError, match="1-D of one length"):
        spectrum_from_arrays(np.arange(10.0) + 4000, np.ones(9))
    with pytest.raises(ValueError, match="strictly monotonic"):
        spectrum_from_arrays(np.array([4000.0, 4001.0, 4000.5]), np.ones(3))
    with pytest.raises(SpectrumFileError, match="spectrum x: the spectrum covers"):
        spectrum_from_arrays(np.arange(5000.0, 6000.0), np.ones(1000), id="x",
                             window=(4200.0, 5700.0))


def test_from_specutils():
    specutils = pytest.importorskip("specutils")
    u = pytest.importorskip("astropy.units")
    from astropy.nddata import StdDevUncertainty

    make = getattr(specutils, "Spectrum", None) or specutils.Spectrum1D  # renamed in 2.0

    wave = np.arange(4100.0, 5800.0, 0.7)
    flux = 2.0 + np.sin(wave / 50.0)
    sigma = np.full(wave.size, 0.5)
    mask = np.zeros(wave.size, bool)
    mask[1000:1004] = True
    spec1d = make(flux=flux * u.Jy, spectral_axis=wave * u.AA,
                                  uncertainty=StdDevUncertainty(sigma), mask=mask)
    got = from_specutils(spec1d, id="s", window=(4200.0, 5700.0))
    expected = spectrum_from_arrays(wave, flux, 1 / sigma**2, mask, id="s",
                                    window=(4200.0, 5700.0))
    assert got.grid == expected.grid and got.id == "s"
    for field in ("flux", "ivar", "andmask", "finite"):
        np.testing.assert_array_equal(getattr(got, field), getattr(expected, field))
    in_frequency = make(flux=flux[::-1] * u.Jy,
                                        spectral_axis=(wave[::-1] * u.AA).to(u.THz,
                                                                             u.spectral()))
    np.testing.assert_allclose(from_specutils(in_frequency, window=(4200.0, 5700.0)).flux,
                               spectrum_from_arrays(wave, flux, window=(4200.0, 5700.0)).flux,
                               rtol=1e-5)
    with pytest.raises(ValueError, match="one spectrum"):
        from_specutils(make(flux=np.ones((2, 5)) * u.Jy,
                                            spectral_axis=np.arange(5.0) * u.AA))


# --- the resampler -------------------------------------------------------------------------------

def cumulative_reference(in_edges, flux, out_edges):
    """Flux-conserving resampling by interpolating the cumulative integral (ALGORITHM §d.1)."""
    cumulative = np.concatenate([[0.0], np.cumsum(flux * np.diff(in_edges))])
    return np.diff(np.interp(out_edges, in_edges, cumulative)) / np.diff(out_edges)


widths = hnp.arrays(np.float64, st.integers(2, 40), elements=st.floats(0.05, 3.0))


@given(widths, st.data())
def test_rebin_matches_cumulative_integral(in_widths, data):
    in_edges = 4000.0 + np.concatenate([[0.0], np.cumsum(in_widths)])
    flux = data.draw(hnp.arrays(np.float64, in_widths.size,
                                elements=st.floats(-10, 100, allow_subnormal=False)))
    scale = np.abs(flux).max() + 1.0
    cuts = data.draw(hnp.arrays(np.float64, st.integers(0, 30), elements=st.floats(0, 1),
                                unique=True))
    out_edges = np.unique(np.concatenate([in_edges[[0, -1]],
                                          in_edges[0] + cuts * (in_edges[-1] - in_edges[0])]))
    out, ivar = rebin(band(in_edges, out_edges), flux, np.ones_like(flux),
                      np.ones(flux.size, bool))
    np.testing.assert_allclose(out, cumulative_reference(in_edges, flux, out_edges),
                               rtol=1e-9, atol=1e-9 * scale)
    total = np.sum(flux * in_widths)
    assert np.sum(out * np.diff(out_edges)) == pytest.approx(total, rel=1e-9,
                                                             abs=1e-9 * scale * in_widths.sum())
    assert np.all(ivar > 0)


def test_rebin_ivar_by_monte_carlo():
    """The propagated ivar is the inverse of the output scatter for independent input noise."""
    rng = np.random.default_rng(1)
    in_edges = pixel_edges(np.arange(4000.0, 4100.0, 0.8))
    ivar = rng.uniform(0.5, 4.0, in_edges.size - 1)
    out_edges = LogGrid(math.log(4010.0), 2.302585092994046e-4, 60).edges
    b = band(in_edges, out_edges)
    noise = rng.normal(size=(4000, ivar.size)) / np.sqrt(ivar)
    out, out_ivar = rebin(b, noise, np.broadcast_to(ivar, noise.shape),
                          np.ones(noise.shape, bool))
    np.testing.assert_allclose(out.var(axis=0) * out_ivar[0], 1.0, atol=0.12)
    assert np.ptp(out_ivar, axis=0).max() == 0


def test_rebin_coverage_rule():
    in_edges = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    flux = np.array([1.0, 50.0, 3.0, 4.0])
    good = np.array([True, False, True, True])
    out, ivar = rebin(band(in_edges, np.array([0.0, 1.5, 2.2, 4.5])), flux, np.ones(4), good)
    # bin 0: 1 Å of 1.5 good (mean 1); bin 1: 0.2 Å of 0.7 good (< half: dropped);
    # bin 2: 1.8 Å of 2.3 good, mean (0.8·3 + 1·4)/1.8, ivar 1.8²/(0.8² + 1²)
    np.testing.assert_allclose(out, [1.0, np.nan, (0.8 * 3 + 4) / 1.8])
    np.testing.assert_allclose(ivar, [1.0, 0.0, 1.8**2 / (0.8**2 + 1)])


def test_constant_vacuum_shift_against_iau_formula():
    """The documented cost of PyLASP's constant vacuum → air shift, against Morton (2000)."""
    wave = np.linspace(3600.0, 9830.0, 2000)
    s2 = (1e4 / wave) ** 2
    n = 1 + 8.34254e-5 + 2.406147e-2 / (130 - s2) + 1.5998e-4 / (38.9 - s2)
    error_kms = (np.log(n) - VACUUM_LN_SHIFT) * 299792.458
    assert np.abs(error_kms).max() < 1.8
    window = (wave > 4200) & (wave < 5700)
    assert error_kms[window].min() > -0.8 and error_kms[window].max() < 0.52
