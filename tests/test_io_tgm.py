"""Reading TGM emulator files: ULySS FITS, PyLASP group .npz/.pt, cropping and bad files."""
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import need

from jaxlasp.grids import LinearGrid
from jaxlasp.io import ModelFileError, crop_to, read_pylasp_group, read_tgm

SAMPLE = Path("../shared/data/lamost-dr10-sample")
ELODIE = SAMPLE / "elodie32_flux_tgm_4199-5700.fits"
GROUP = SAMPLE / "pylasp_group0.npz"

fits = pytest.importorskip("astropy.io.fits")


def write_tgm(path, coef, header):
    """Write a ULySS-layout TGM file: one image per regime (terms × pixels), ``header`` in HDU0."""
    primary = fits.PrimaryHDU(coef[0])
    primary.header.update(header)
    hdus = [primary] + [fits.ImageHDU(c, name=n) for c, n in zip(coef[1:], ("HOT", "COLD"))]
    fits.HDUList(hdus).writeto(path)
    return path


TGM_HEADER = dict(CRVAL1=3900.0, CDELT1=0.4, CRPIX1=1, CTYPE1="AWAV", ULY_TYPE="TGM", INTRP_V=2)


def random_coef(rows=23, n=50, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).normal(size=(3, rows, n)).astype(dtype)


# --- the real ELODIE file and PyLASP's group -----------------------------------------------------

def test_elodie_fits_loads():
    emu = read_tgm(need(ELODIE))
    assert emu.coef.shape == (3, 23, 7506)
    assert emu.coef.dtype == np.float64
    assert emu.grid == LinearGrid(4199.2, 0.2, 7506)
    assert emu.version == 2


def test_elodie_fits_equals_pylasp_spec_coef():
    emu = read_tgm(need(ELODIE))
    spec_coef = np.load(need(GROUP), allow_pickle=False)["spec_coef"]
    np.testing.assert_array_equal(np.asarray(emu.coef), spec_coef.transpose(2, 0, 1))


def test_float32_dtype():
    assert read_tgm(need(ELODIE), dtype=np.float32).coef.dtype == np.float32


def test_npz_group_equals_fits():
    from_fits, from_npz = read_tgm(need(ELODIE)), read_tgm(need(GROUP))
    assert from_npz.grid == from_fits.grid
    assert from_npz.version == 2
    np.testing.assert_array_equal(np.asarray(from_npz.coef), np.asarray(from_fits.coef))


def test_read_pylasp_group():
    emu, data = read_pylasp_group(need(GROUP))
    assert emu.grid == LinearGrid(4199.2, 0.2, 7506)
    assert data["spectra"].shape == (25, 1327) and data["spectra"].dtype == np.float32
    assert data["wave"].shape == (1327,)
    assert data["ids"][:3] == ["3703110", "3706009", "3706011"] and len(data["ids"]) == 25
    np.testing.assert_array_equal(data["ini_params"][0], [7500, 3.5, -0.5, 0, 1])


def test_read_pylasp_group_needs_no_astropy():
    code = ("import sys; sys.modules['astropy'] = None\n"
            "from jaxlasp.io import read_pylasp_group\n"
            f"emu, data = read_pylasp_group({str(need(GROUP))!r})\n"
            "assert emu.coef.shape == (3, 23, 7506) and len(data['ids']) == 25")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_group_ids_refuse_foreign_pickles(tmp_path):
    class Foreign:
        """Unpickles through builtins.str: harmless, but outside the admitted globals."""

        def __reduce__(self):
            return (str, ("3703110.fits",))

    src = np.load(need(GROUP), allow_pickle=False)
    arrays = {k: src[k] for k in src.files if k != "ID"}
    ids = np.empty((1, 1), dtype=object)
    ids[0, 0] = Foreign()
    np.savez(tmp_path / "evil.npz", ID=ids, **arrays)
    _, data = read_pylasp_group(tmp_path / "evil.npz")
    assert data["ids"] is None


def test_pt_group_via_torch(tmp_path, monkeypatch):
    src = np.load(need(GROUP), allow_pickle=False)
    arrays = {"spec_coef": src["spec_coef"], "borders": src["borders"]}
    calls = []

    def load(path, map_location=None, weights_only=True):
        calls.append(weights_only)
        return arrays

    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=load))
    (tmp_path / "0.pt").write_bytes(b"")
    emu = read_tgm(tmp_path / "0.pt")
    assert calls == [False]
    assert emu.grid == LinearGrid(4199.2, 0.2, 7506)
    np.testing.assert_array_equal(np.asarray(emu.coef), src["spec_coef"].transpose(2, 0, 1))


def test_pt_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    (tmp_path / "0.pt").write_bytes(b"")
    with pytest.raises(ImportError, match="needs torch"):
        read_tgm(tmp_path / "0.pt")


# --- synthetic FITS files ------------------------------------------------------------------------

def test_synthetic_26_rows_float64_keeps_23(tmp_path):
    coef = random_coef(rows=26, n=40)
    coef[1, 3, 7] = np.nan
    path = write_tgm(tmp_path / "m.fits", coef, {**TGM_HEADER, "CRPIX1": 3})
    emu = read_tgm(path)
    assert emu.coef.shape == (3, 23, 40) and emu.version == 2
    assert emu.grid == LinearGrid(3900.0 - 2 * 0.4, 0.4, 40)
    expected = np.nan_to_num(coef[:, :23])
    np.testing.assert_array_equal(np.asarray(emu.coef), expected)


def test_version_3_keeps_26_rows_and_missing_version_is_1(tmp_path):
    coef = random_coef(rows=26, n=10, dtype=np.float32)
    v3 = read_tgm(write_tgm(tmp_path / "v3.fits", coef, {**TGM_HEADER, "INTRP_V": 3}))
    assert v3.coef.shape == (3, 26, 10) and v3.version == 3
    minimal = dict(CRVAL1=3900.0, CD1_1=0.4)  # no INTRP_V, ULY_TYPE, CDELT1, CRPIX1 or CTYPE1
    v1 = read_tgm(write_tgm(tmp_path / "v1.fits.gz", coef[:, :23], minimal))
    assert v1.version == 1 and v1.grid == LinearGrid(3900.0, 0.4, 10)


# --- crop_to -------------------------------------------------------------------------------------

def test_crop_to_keeps_cover_plus_margin():
    emu = read_tgm(need(ELODIE))
    cropped = crop_to(emu, 4500.05, 4600.0)  # 4500.05 is inside pixel 4500.0; 4600.0 is a centre
    assert cropped.grid.centres[0] == pytest.approx(4499.8)
    assert cropped.grid.centres[-1] == pytest.approx(4600.2)
    first = round((4499.8 - 4199.2) / 0.2)
    np.testing.assert_array_equal(np.asarray(cropped.coef),
                                  np.asarray(emu.coef)[:, :, first:first + cropped.grid.n])


def test_crop_to_clips_at_the_ends():
    emu = read_tgm(need(ELODIE))
    assert crop_to(emu, 4000.0, 6000.0).grid == emu.grid
    assert crop_to(emu, 4199.15, 4199.2).grid.n == 2  # first pixel + margin on the right only


def test_crop_to_without_overlap_fails():
    emu = read_tgm(need(ELODIE))
    with pytest.raises(ValueError, match="does not overlap"):
        crop_to(emu, 6000.0, 6500.0)


# --- bad files -----------------------------------------------------------------------------------

def test_single_image_is_not_tgm(tmp_path):
    path = tmp_path / "spectrum.fits"
    fits.PrimaryHDU(np.ones(100)).writeto(path)
    with pytest.raises(ModelFileError, match=r"spectrum\.fits.*3 image HDUs"):
        read_tgm(path)


def test_wrong_shape_is_not_tgm(tmp_path):
    path = write_tgm(tmp_path / "m.fits", random_coef(rows=5), TGM_HEADER)
    with pytest.raises(ModelFileError, match=r"m\.fits.*23 or 26 terms"):
        read_tgm(path)


def test_log_sampled_axis_is_refused(tmp_path):
    path = write_tgm(tmp_path / "m.fits", random_coef(), {**TGM_HEADER, "CTYPE1": "AWAV-LOG"})
    with pytest.raises(ModelFileError, match="not linear"):
        read_tgm(path)
    path = write_tgm(tmp_path / "d.fits", random_coef(), {**TGM_HEADER, "DC-FLAG": 1})
    with pytest.raises(ModelFileError, match="DC-FLAG=1"):
        read_tgm(path)


def test_wrong_uly_type(tmp_path):
    path = write_tgm(tmp_path / "ssp.fits", random_coef(), {**TGM_HEADER, "ULY_TYPE": "SSP"})
    with pytest.raises(ModelFileError, match=r"ssp\.fits: ULY_TYPE is 'SSP', not a TGM model"):
        read_tgm(path)


def test_unknown_version_and_missing_wavelength(tmp_path):
    path = write_tgm(tmp_path / "v.fits", random_coef(), {**TGM_HEADER, "INTRP_V": 7})
    with pytest.raises(ModelFileError, match="INTRP_V=7"):
        read_tgm(path)
    header = {k: v for k, v in TGM_HEADER.items() if k != "CRVAL1"}
    with pytest.raises(ModelFileError, match="CRVAL1"):
        read_tgm(write_tgm(tmp_path / "w.fits", random_coef(), header))


def test_text_file(tmp_path):
    path = tmp_path / "model.fits"
    path.write_text("this is not a FITS file\n" * 10)
    with pytest.raises(ModelFileError, match=r"model\.fits: not a readable FITS file"):
        read_tgm(path)


def test_truncated_copy_of_real_file(tmp_path):
    raw = need(ELODIE).read_bytes()
    path = tmp_path / "truncated.fits"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match=r"truncated\.fits: not a readable FITS file"):
        read_tgm(path)


def test_unknown_suffix_and_bad_npz(tmp_path):
    with pytest.raises(ModelFileError, match="unknown model file type"):
        read_tgm(tmp_path / "model.txt")
    np.savez(tmp_path / "other.npz", x=np.ones(3))
    with pytest.raises(ModelFileError, match=r"missing \['spec_coef', 'borders'\]"):
        read_tgm(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelFileError, match=r"junk\.npz: not a readable \.npz"):
        read_tgm(tmp_path / "junk.npz")
    np.savez(tmp_path / "shape.npz", spec_coef=np.ones((23, 10, 2)), borders=np.arange(11.0))
    with pytest.raises(ModelFileError, match="spec_coef has shape"):
        read_tgm(tmp_path / "shape.npz")
