"""Reading DESI coadd/spectra files: synthetic files written with astropy, read back."""
import math

import numpy as np
import pytest

from jaxlasp.grids import LAMOST_AIR_GRID, LinearGrid, PixelGrid, lamost_fit_grid
from jaxlasp.groups.inputs import lamost_weights
from jaxlasp.io import FEW_GOOD_PIXELS, SpectrumFileError, cut_to_grid, read_desi, read_spectra
from jaxlasp.io.arrays import lattice_grid
from jaxlasp.io.desi import read_desi_native
from jaxlasp.io.lamost import VACUUM_LN_SHIFT

fits = pytest.importorskip("astropy.io.fits")

CAMERAS = {"B": (3600.0, 2751), "R": (5760.0, 2326), "Z": (7520.0, 2881)}
"""DESI's cameras: first pixel [vacuum Å] and pixel count, 0.8 Å steps (B/R and R/Z overlap)."""
STEP = 0.8
TARGETIDS = [39627745484341489, 39627745484341490, 616094193498735683]
MODEL_GRID = LinearGrid(4199.2, 0.2, 7506)
LINEAR = (2.0, 1e-3)
"""Spectrum 1 is a + b·(λ_vac − 5000 Å)."""
MASKED = (4500.0, 4503.2)
"""Centres [vacuum Å] of the run of B pixels masked (bit 2) with garbage flux in spectrum 1."""
NAN_RUN = (4800.0, 4801.6)
"""Centres [vacuum Å] of the run of B pixels with NaN flux and ivar 0 in spectrum 0."""
CONSTANT = {"B": (1.0, 1.0), "R": (2.0, 3.0), "Z": (3.0, 1.0)}
"""Spectrum 2: (flux, ivar) of each camera, different so that overlaps show the weighting."""


def camera_wave(cam):
    start, n = CAMERAS[cam]
    return start + STEP * np.arange(n)


def camera_arrays(cam):
    """(flux, ivar, mask) (3, nwave) of one camera for the three synthetic spectra."""
    wave = camera_wave(cam)
    flux = np.empty((3, wave.size), np.float32)
    ivar = np.empty_like(flux)
    mask = np.zeros(flux.shape, np.uint32)
    flux[0], ivar[0] = 5.0, 4.0
    nan_run = (wave >= NAN_RUN[0] - 0.01) & (wave <= NAN_RUN[1] + 0.01)
    flux[0, nan_run], ivar[0, nan_run] = np.nan, 0.0
    flux[1], ivar[1] = LINEAR[0] + LINEAR[1] * (wave - 5000.0), 1.0
    masked = (wave >= MASKED[0] - 0.01) & (wave <= MASKED[1] + 0.01)
    flux[1, masked], mask[1, masked] = 1e6, 2
    flux[2], ivar[2] = CONSTANT[cam]
    return flux, ivar, mask


def write_desi(path, cameras=("B", "R", "Z"), targetids=TARGETIDS, expids=None, radec=True):
    """A DESI-layout coadd file (HDU order as DESI writes it, masks as compressed images)."""
    fibermap = {"TARGETID": np.asarray(targetids, np.int64)}
    if radec:
        fibermap["TARGET_RA"] = 150.0 + 0.5 * np.arange(len(targetids))
        fibermap["TARGET_DEC"] = -2.0 - 0.25 * np.arange(len(targetids))
    if expids is not None:
        fibermap["EXPID"] = np.asarray(expids, np.int32)
    hdus = [fits.PrimaryHDU(),
            fits.BinTableHDU.from_columns(
                [fits.Column(name=k, array=v,
                             format={"i8": "K", "i4": "J", "f8": "D"}[v.dtype.str[1:]])
                 for k, v in fibermap.items()], name="FIBERMAP")]
    for cam in cameras:
        flux, ivar, mask = (a[:len(targetids)] for a in camera_arrays(cam))
        hdus += [fits.ImageHDU(camera_wave(cam), name=f"{cam}_WAVELENGTH"),
                 fits.ImageHDU(flux, name=f"{cam}_FLUX"),
                 fits.ImageHDU(ivar, name=f"{cam}_IVAR"),
                 fits.CompImageHDU(mask, name=f"{cam}_MASK"),
                 fits.ImageHDU(np.zeros((len(targetids), 11, 4), np.float32),
                               name=f"{cam}_RESOLUTION")]
    fits.HDUList(hdus).writeto(path)
    return path


@pytest.fixture(scope="module")
def desi_file(tmp_path_factory):
    return write_desi(tmp_path_factory.mktemp("desi") / "coadd-main-bright-1000.fits")


@pytest.fixture(scope="module")
def full(desi_file):
    """The three spectra over everything the cameras cover."""
    return read_desi(desi_file, window=None)


def vacuum_edges(grid):
    """The grid's pixel edges [Å] in vacuum (the inverse of the reader's vacuum → air shift)."""
    return grid.edges * math.exp(VACUUM_LN_SHIFT)


def good_fraction(grid, run):
    """Per output pixel, the fraction of its vacuum bin outside the input pixels centred on
    ``run`` (first, last centre [Å], 0.8 Å wide)."""
    edges = vacuum_edges(grid)
    lo, hi = run[0] - STEP / 2, run[1] + STEP / 2
    bad = np.clip(np.minimum(edges[1:], hi) - np.maximum(edges[:-1], lo), 0, None)
    return 1 - bad / np.diff(edges)


def test_spectra_ids_and_grid(desi_file):
    spectra = read_desi(desi_file)
    assert [s.id for s in spectra] == [str(t) for t in TARGETIDS]
    grid = spectra[0].grid
    assert all(s.grid == grid for s in spectra)
    np.testing.assert_allclose(np.diff(np.log10(grid.centres)), 1e-4, rtol=1e-9)
    # the default window gives LAMOST's own pixels 551..1878, so LAMOST's fit grid applies
    lamost = LAMOST_AIR_GRID.sub(551, 1328)
    assert grid.n == lamost.n and grid.ln_start == pytest.approx(lamost.ln_start, abs=1e-12)
    fit = cut_to_grid(spectra[0], lamost_fit_grid(MODEL_GRID))
    assert fit.grid.n == 1327


def test_targetid_and_coordinates_are_carried(desi_file, tmp_path):
    spectra = read_desi(desi_file)
    assert [s.survey for s in spectra] == [
        {"targetid": t, "ra": 150.0 + 0.5 * k, "dec": -2.0 - 0.25 * k}
        for k, t in enumerate(TARGETIDS)]
    assert cut_to_grid(spectra[2], lamost_fit_grid(MODEL_GRID)).survey == spectra[2].survey
    bare = read_desi(write_desi(tmp_path / "bare.fits", radec=False))
    assert [s.survey for s in bare] == [{"targetid": t} for t in TARGETIDS]


def test_whole_coverage_on_the_lattice(full):
    grid = full[0].grid
    k = (grid.ln_start - LAMOST_AIR_GRID.ln_start) / LAMOST_AIR_GRID.step
    assert k == pytest.approx(round(k), abs=1e-6)
    edges = vacuum_edges(grid)
    assert edges[0] >= CAMERAS["B"][0] - STEP / 2
    assert edges[0] - (CAMERAS["B"][0] - STEP / 2) < edges[1] - edges[0]
    z_end = CAMERAS["Z"][0] + STEP * (CAMERAS["Z"][1] - 0.5)
    assert edges[-1] <= z_end and z_end - edges[-1] < edges[-1] - edges[-2]


def test_constant_flux_is_preserved(full):
    spec = full[0]
    expected_finite = good_fraction(spec.grid, NAN_RUN) >= 0.5
    np.testing.assert_array_equal(spec.finite, expected_finite)
    np.testing.assert_allclose(spec.flux[spec.finite], 5.0, rtol=1e-6)
    assert spec.median == pytest.approx(5.0)


def test_linear_flux_is_preserved(full):
    spec = full[1]
    edges = vacuum_edges(spec.grid)
    expected = LINEAR[0] + LINEAR[1] * (0.5 * (edges[1:] + edges[:-1]) - 5000.0)
    # piecewise-constant input pixels: a partial pixel at each bin end errs by < 0.1 Å·slope
    np.testing.assert_allclose(spec.flux[spec.finite], expected[spec.finite], rtol=0,
                               atol=0.2 * LINEAR[1])


def test_masked_pixels_get_zero_weight(full):
    spec = full[1]
    fraction = good_fraction(spec.grid, MASKED)
    np.testing.assert_array_equal(spec.finite, fraction >= 0.5)
    lost = ~spec.finite
    assert 3 <= lost.sum() <= 5
    assert np.all(spec.ivar[lost] == 0) and np.all(spec.andmask[lost] == 2)
    assert np.all(spec.andmask[~lost] == 0) and np.all(spec.ivar[~lost] > 0)
    for weighting in ("none", "ivar"):
        assert np.all(lamost_weights(spec, weighting)[lost] == 0)
    assert spec.flux.max() < 10  # the masked pixels' 1e6 flux does not leak into their neighbours


def test_nan_flux_with_zero_ivar_is_dropped_and_filled(full):
    spec = full[0]
    lost = ~spec.finite
    assert lost.any() and np.all(spec.ivar[lost] == 0)
    assert np.isfinite(spec.flux).all() and spec.flags & 1  # NONFINITE_FLUX


def test_camera_overlap_is_ivar_weighted(tmp_path, full):
    """B/R overlap: the joint spectrum is the ivar-weighted mean of the single cameras."""
    single = {cam: read_desi(write_desi(tmp_path / f"{cam}.fits", cameras=(cam,)), None)[2]
              for cam in "BR"}
    b_end = (CAMERAS["B"][0] + STEP * (CAMERAS["B"][1] - 0.5)) * math.exp(-VACUUM_LN_SHIFT)
    r_start = (CAMERAS["R"][0] - STEP / 2) * math.exp(-VACUUM_LN_SHIFT)
    overlap = lattice_grid(r_start, b_end)
    assert overlap.n == 30  # 40 Å of 1.33 Å pixels
    b, r, joint = (cut_to_grid(s, overlap) for s in (single["B"], single["R"], full[2]))
    np.testing.assert_allclose(joint.ivar, b.ivar + r.ivar, rtol=1e-6)
    np.testing.assert_allclose(joint.flux, (b.flux * b.ivar + r.flux * r.ivar)
                               / (b.ivar + r.ivar), rtol=1e-6)
    # with the same input pixels under both cameras the weights are 1 : 3 everywhere
    np.testing.assert_allclose(joint.flux, (1.0 * 1 + 2.0 * 3) / 4, rtol=1e-6)
    np.testing.assert_allclose(r.ivar, 3 * b.ivar, rtol=1e-6)


def test_single_camera_ivar(tmp_path):
    """Output ivar = (Σ overlap)² / Σ overlap² σ²: 4200 Å bins (~0.97 Å) hold 1.2 input pixels."""
    spec = read_desi(write_desi(tmp_path / "b.fits", cameras=("B",)), (4200.0, 5700.0))[2]
    edges = vacuum_edges(spec.grid)
    in_edges = camera_wave("B")[0] - STEP / 2 + STEP * np.arange(CAMERAS["B"][1] + 1)
    for i in (0, 100, 700):
        overlaps = np.clip(np.minimum(edges[i + 1], in_edges[1:])
                           - np.maximum(edges[i], in_edges[:-1]), 0, None)
        expected = overlaps.sum() ** 2 / (overlaps**2).sum()  # input ivar 1
        assert spec.ivar[i] == pytest.approx(expected, rel=1e-6)


def test_per_exposure_spectra_file_ids(tmp_path):
    path = write_desi(tmp_path / "spectra.fits", targetids=[7, 7, 9], expids=[101, 102, 101])
    assert [s.id for s in read_desi(path)] == ["7-101", "7-102", "9-101"]


def test_fully_masked_spectrum_is_flagged_not_refused(tmp_path):
    path = write_desi(tmp_path / "coadd.fits")
    with fits.open(path, mode="update") as hdul:
        for cam in "BRZ":
            hdul[f"{cam}_IVAR"].data[1] = 0.0
    spectra = read_desi(path)
    assert len(spectra) == 3 and spectra[1].flags & FEW_GOOD_PIXELS
    assert not spectra[1].finite.any() and spectra[1].median == 1.0
    assert spectra[0].flags & FEW_GOOD_PIXELS == 0


def test_window_outside_coverage(desi_file):
    with pytest.raises(SpectrumFileError, match=r"coadd-main-bright-1000\.fits: the spectrum "
                                                r"covers 3599\.8–9819\.3 Å.*3000\.0–4000\.0"):
        read_desi(desi_file, (3000.0, 4000.0))


@pytest.mark.parametrize("edit, message", [
    (lambda h: h.pop("FIBERMAP"), "no FIBERMAP table with a TARGETID column"),
    (lambda h: h.pop("R_IVAR"), r"R_IVAR should be an image of shape \(3, 2326\).*missing"),
    (lambda h: h["B_FLUX"].__setattr__("data", h["B_FLUX"].data[:2]),
     r"B_FLUX should be an image of shape \(3, 2751\).*found \(2, 2751\)"),
    (lambda h: [h.pop(f"{c}_{kind}") for c in "BRZ" for kind in ("WAVELENGTH", "FLUX")],
     "no DESI camera HDUs"),
])
def test_broken_files(tmp_path, desi_file, edit, message):
    path = tmp_path / "broken.fits"
    with fits.open(desi_file) as hdul:
        edit(hdul)
        hdul.writeto(path)
    with pytest.raises(SpectrumFileError, match=message):
        read_desi(path)


# ---------------------------------------------------------------- native pixels (issue 22)

def test_native_spectra_keep_the_cameras_pixels(desi_file):
    """Native: each camera's own pixels (air), cut to the window, nothing resampled."""
    spectra = read_spectra(desi_file, native=True)          # default window 4200–5700 Å
    assert [s.id for s in spectra] == [str(t) for t in TARGETIDS]
    grid = spectra[0].grid
    assert isinstance(grid, PixelGrid) and all(s.grid == grid for s in spectra)
    assert len(grid.sizes) == 1                               # only B reaches into the window
    air = camera_wave("B") * math.exp(-VACUUM_LN_SHIFT)
    inside = air[(air >= 4200.0) & (air <= 5700.0)]
    np.testing.assert_allclose(grid.centres, inside, rtol=1e-12)
    np.testing.assert_allclose(grid.widths, STEP * math.exp(-VACUUM_LN_SHIFT), rtol=1e-9)
    assert np.all(spectra[2].flux == 1.0) and np.all(spectra[2].ivar == 1.0)
    linear = LINEAR[0] + LINEAR[1] * (inside * math.exp(VACUUM_LN_SHIFT) - 5000.0)
    masked = np.abs(inside * math.exp(VACUUM_LN_SHIFT) - 4501.6) < 1.7
    np.testing.assert_allclose(spectra[1].flux[~masked], linear[~masked], rtol=1e-6)
    assert masked.sum() == 5 and not spectra[1].finite[masked].any()
    assert np.all(spectra[1].ivar[masked] == 0) and np.all(spectra[1].andmask[masked] == 2)
    assert spectra[1].finite[~masked].all()
    assert spectra[2].survey == {"targetid": TARGETIDS[2], "ra": 151.0, "dec": -2.5}
    assert np.all(lamost_weights(spectra[2], "none") == 1)   # no dropped last pixel


def test_a_fully_masked_native_spectrum_is_flagged_not_refused(tmp_path):
    path = write_desi(tmp_path / "coadd.fits")
    with fits.open(path, mode="update") as hdul:
        hdul["B_IVAR"].data[1] = 0.0
    spectra = read_spectra(path, native=True)
    assert len(spectra) == 3 and spectra[1].flags & FEW_GOOD_PIXELS
    assert not spectra[1].finite.any() and spectra[1].median == 1.0
    assert np.all(lamost_weights(spectra[1], "ivar") == 0)
    assert spectra[0].flags & FEW_GOOD_PIXELS == 0


def test_native_segments_are_per_camera_and_window(desi_file):
    spectra = read_desi_native(desi_file, windows=((5000.0, 6000.0), (7600.0, 9000.0)))
    grid = spectra[0].grid
    centres = [grid.centres[a:b] for a, b in grid.ranges]
    # B ∩ first window, R ∩ first window, R ∩ second, Z ∩ second: cameras in file order
    assert len(centres) == 4
    assert [round(c[0]) for c in centres] == [5000, 5758, 7600, 7600]
    assert all(np.all(np.diff(c) > 0) for c in centres)
    whole = read_desi_native(desi_file, windows=None)[0].grid
    assert whole.sizes == [CAMERAS[c][1] for c in "BRZ"]
    with pytest.raises(SpectrumFileError, match="does not include the window 3000–4000"):
        read_desi_native(desi_file, windows=((3000.0, 4000.0),))
