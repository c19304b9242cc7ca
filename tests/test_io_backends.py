"""The FITS access layer (jaxlasp.io._fits): fitsio and astropy give the same spectra, arrays,
keywords and errors, the same as a plain astropy read, and detection shares the reader's open."""
import gzip
import math
import shutil

import numpy as np
import pytest
from conftest import SAMPLE, need
from test_io_desi import write_desi

from jaxlasp.grids import LogGrid
from jaxlasp.io import SpectrumFileError, _fits, read_desi, read_lamost, read_spectra, readers
from jaxlasp.io._fits import (
    BACKEND_VARIABLE,
    FitsFile,
    card_value,
    find_card,
    fits_backend,
    fitsio_usable,
    header_cards,
    header_text,
    open_fits,
    set_fits_backend,
)
from jaxlasp.io.lamost import VACUUM_LN_SHIFT, fill_nonfinite, write_lamost
from jaxlasp.io.readers import open_probe, probe_file, register_reader

fits = pytest.importorskip("astropy.io.fits")

FITS_DIR = SAMPLE / "fits"
ONE = FITS_DIR / "3706009.fits"
NEEDS_FITSIO = pytest.mark.skipif(not fitsio_usable(),
                                  reason="fitsio is not importable (pip install fitsio)")
BACKENDS = ["astropy", pytest.param("fitsio", marks=NEEDS_FITSIO)]
FIELDS = ("flux", "ivar", "andmask", "finite")


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each backend in turn (fitsio skipped when it is not installed)."""
    set_fits_backend(request.param)
    yield request.param
    set_fits_backend(None)


def read_with(name, read, *args):
    """``read(*args)`` with FITS backend ``name``."""
    set_fits_backend(name)
    try:
        return read(*args)
    finally:
        set_fits_backend(None)


def assert_same_spectra(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert (x.id, x.grid, x.median, x.flags) == (y.id, y.grid, y.median, y.flags)
        for field in FIELDS:
            u, v = getattr(x, field), getattr(y, field)
            assert u.dtype == v.dtype
            np.testing.assert_array_equal(u, v)


def sample_files():
    paths = sorted(need(FITS_DIR).glob("*.fits"))
    assert len(paths) == 25
    return paths


@pytest.fixture(scope="module")
def desi_file(tmp_path_factory):
    return write_desi(tmp_path_factory.mktemp("desi") / "coadd-sv1-dark-9.fits")


@pytest.fixture(scope="module")
def lamost_file(tmp_path_factory):
    """A synthetic public-layout LAMOST file (no real data needed)."""
    grid = LogGrid(3.5682 * math.log(10.0), 1e-4 * math.log(10.0), 3909)
    flux = 100 + np.sin(np.arange(grid.n) / 50.0)
    path = tmp_path_factory.mktemp("lamost") / "123.fits"
    write_lamost(path, grid, flux, ivar=np.full(grid.n, 2.0), andmask=np.arange(grid.n) % 3)
    return path


# --- the same data from both backends and from plain astropy -------------------------------------

@NEEDS_FITSIO
def test_backends_agree_on_the_real_sample():
    for path in sample_files():
        assert_same_spectra(read_with("fitsio", read_spectra, path),
                            read_with("astropy", read_spectra, path))


def test_real_sample_matches_plain_astropy(backend):
    """The spectrum is the COADD row as astropy reads it, on the header's grid, windowed."""
    for path in sample_files():
        [spec] = read_spectra(path)
        row = fits.getdata(path, "COADD")[0]
        header = fits.getheader(path, 0)
        flux = row["FLUX"].astype(np.float32)
        ln_start = header["CRVAL1"] * math.log(10.0) - VACUUM_LN_SHIFT
        first = round((spec.grid.ln_start - ln_start) / spec.grid.step)
        part = slice(first, first + spec.grid.n)
        assert spec.grid.step == header["CD1_1"] * math.log(10.0)
        assert spec.median == max(float(np.nanmedian(flux)), 1.0)
        np.testing.assert_array_equal(spec.flux, fill_nonfinite(flux[part]))
        np.testing.assert_array_equal(spec.ivar, fill_nonfinite(row["IVAR"][part]))
        np.testing.assert_array_equal(spec.andmask, row["ANDMASK"][part].astype(np.int32))
        np.testing.assert_array_equal(spec.finite, np.isfinite(flux[part]))


def test_columns_and_keywords_match_plain_astropy(backend):
    for path in sample_files():
        with open_fits(path, SpectrumFileError) as file:
            assert file.names == ("PRIMARY", "COADD") and file.is_table(1)
            columns = file.columns(1, ("flux", "IVAR", "ANDMASK", "NO_SUCH"))
            header = file.headers[0]
            assert dict(header) == plain_keywords(fits.getheader(path, 0))
            assert file.image(0) is None
        table = fits.getdata(path, "COADD")
        assert sorted(columns) == ["ANDMASK", "FLUX", "IVAR"]
        for name, values in columns.items():
            assert values.dtype.isnative and values.dtype == table[name].dtype.newbyteorder("=")
            np.testing.assert_array_equal(values, table[name])


def plain_keywords(header) -> dict:
    """astropy's keyword → value pairs without COMMENT/HISTORY (the old FileProbe headers)."""
    return {k: v for k, v in header.items() if k not in ("COMMENT", "HISTORY", "")}


@pytest.mark.parametrize("compress", [False, True])
def test_desi_images_and_spectra_match_plain_astropy(backend, desi_file, tmp_path, compress):
    path = desi_file
    if compress:
        path = tmp_path / "coadd.fits.gz"
        path.write_bytes(gzip.compress(desi_file.read_bytes()))
    with open_fits(path, SpectrumFileError) as file:
        assert file.image(0) is None
        for i, name in enumerate(file.names[1:], 1):
            expected = fits.getdata(desi_file, name)
            if file.is_table(i):
                got = file.columns(i, file.column_names(i))
                assert list(got) == expected.names
                for column in expected.names:
                    np.testing.assert_array_equal(got[column], expected[column])
            else:
                got = file.image(i)
                assert got.dtype.isnative and got.dtype == expected.dtype.newbyteorder("=")
                np.testing.assert_array_equal(got, expected)
        assert file.image(file.names.index("B_MASK")).dtype == np.uint32
    assert_same_spectra(read_desi(path, None), read_with("astropy", read_desi, desi_file, None))


@NEEDS_FITSIO
def test_gzip_and_internal_layout_agree(tmp_path, lamost_file):
    zipped = tmp_path / "123.fits.gz"
    zipped.write_bytes(gzip.compress(lamost_file.read_bytes()))
    with fits.open(lamost_file) as hdul:
        row = hdul[1].data[0]
        image = np.stack([row["FLUX"], row["IVAR"], row["FLUX"], row["ANDMASK"]])
        internal = tmp_path / "123-internal.fits"
        fits.PrimaryHDU(image.astype(np.float32), header=hdul[0].header).writeto(internal)
    expected = read_with("astropy", read_lamost, lamost_file)
    for name in ("fitsio", "astropy"):
        assert_same_spectra([read_with(name, read_lamost, zipped)], [expected])
        from_image = read_with(name, read_lamost, internal)
        assert from_image.grid == expected.grid
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(from_image, field), getattr(expected, field))


def test_odd_file_names(backend, tmp_path, desi_file):
    """CFITSIO's extended file-name syntax ('[', '(') does not apply: the file is opened by
    descriptor."""
    path = tmp_path / "coadd[1](x)+.fits"
    shutil.copyfile(desi_file, path)
    assert_same_spectra(read_spectra(path), read_with("astropy", read_desi, desi_file))


# --- header keywords -----------------------------------------------------------------------------

def test_card_values_match_astropy(desi_file):
    """Every value card of the real sample's and a DESI file's headers, as stored in the file,
    reads as astropy reads it."""
    paths = [desi_file] + (sorted(FITS_DIR.glob("*.fits")) if FITS_DIR.exists() else [])
    n = 0
    for path in paths:
        raw = path.read_bytes()
        with fits.open(path) as hdul:
            spans = [(h.fileinfo()["hdrLoc"], h.fileinfo()["datLoc"]) for h in hdul]
        for start, end in spans:
            text = header_text(raw[start:end])
            for key, card in header_cards(text).items():
                expected = fits.Card.fromstring(card).value
                value = card_value(card)
                assert (value, type(value)) == (expected, type(expected)), card
                assert find_card(text, key) == card
                n += 1
    assert n > 100


@pytest.mark.parametrize("card, value", [
    ("TELESCOP= 'LAMOST  '           / telescope", "LAMOST"),
    ("OBJNAME = '  x y '", "  x y"),
    ("QUOTE   = 'it''s' / a 'quoted' comment", "it's"),
    ("EMPTY   = ''", ""),
    ("VACUUM  =                    T / in vacuum", True),
    ("FLAG    = F", False),
    ("CD1_1   =               1.0D-4", 1e-4),
    ("CRVAL1  = +.5E3", 500.0),
    ("NAXIS   =                  007", 7),
    ("NEG     = -12 / x", -12),
    ("BLANK   =", None),
])
def test_card_value(card, value):
    got = card_value(card.ljust(80))
    assert got == value and type(got) is type(value)
    if value is not None:
        assert fits.Card.fromstring(card.ljust(80)).value == value


def test_unreadable_card_value():
    with pytest.raises(ValueError, match="unreadable value"):
        card_value("X       = 1_000".ljust(80))


def test_find_card_is_aligned_and_takes_the_last():
    cards = ["A       = 1", "COMMENT B       = 2", "B       = 3", "B       = 4", "END"]
    text = header_text("".join(c.ljust(80) for c in cards).encode() + b" " * 80)
    assert find_card(text, "b") == cards[3].ljust(80) and find_card(text, "C") is None
    assert header_cards(text) == {"A": cards[0].ljust(80), "B": cards[3].ljust(80)}


# --- one open per file, lazy probes, plug-ins ----------------------------------------------------

def test_detection_and_reading_share_one_open(backend, monkeypatch, desi_file, lamost_file):
    opened = []
    open_content = _fits._open_content
    monkeypatch.setattr(_fits, "_open_content", lambda *a: opened.append(a) or open_content(*a))
    for path in (desi_file, lamost_file):
        read_spectra(path)
    assert len(opened) == 2


def test_probe_reads_keywords_on_demand(backend, lamost_file):
    with open_probe(lamost_file) as probe:
        assert probe.is_fits and probe.names == ("PRIMARY", "COADD")
        assert isinstance(probe.file, FitsFile) and not probe.file._header_texts
        assert probe.headers[0]["DC-FLAG"] == 1 and "CRVAL1" in probe.headers[0]
        assert list(probe.file._header_texts) == [0]
        with pytest.raises(KeyError):
            probe.headers[1]["NO_SUCH"]
    detached = probe_file(lamost_file)
    assert detached.file is None
    assert detached.headers[0] == plain_keywords(fits.getheader(lamost_file, 0))


def test_plug_in_reader_given_the_open_file(monkeypatch, desi_file):
    monkeypatch.setattr(readers, "_READERS", dict(readers._READERS))
    seen = []

    def read(source, window):
        seen.append(source)
        return read_desi(source, window)
    register_reader("desi-too", read, lambda probe: "FIBERMAP" in probe.names, takes_file=True)
    assert len(read_spectra(desi_file)) == 3 and isinstance(seen[0], FitsFile)


# --- choosing the backend ------------------------------------------------------------------------

def test_backend_choice(monkeypatch):
    monkeypatch.setenv(BACKEND_VARIABLE, "astropy")
    assert fits_backend() == "astropy"
    monkeypatch.setenv(BACKEND_VARIABLE, "cfitsio")
    with pytest.raises(ValueError, match="unknown FITS backend 'cfitsio'"):
        fits_backend()
    set_fits_backend("astropy")
    try:
        assert fits_backend() == "astropy"
    finally:
        set_fits_backend(None)
    monkeypatch.delenv(BACKEND_VARIABLE)
    assert fits_backend() == ("fitsio" if fitsio_usable() else "astropy")
    monkeypatch.setattr(_fits, "fitsio_usable", lambda: False)
    assert fits_backend() == "astropy"
    with pytest.raises(ImportError, match="pip install fitsio"):
        set_fits_backend("fitsio")


# --- the same errors from both backends ----------------------------------------------------------

def flipped(data: bytes, at: int, n: int = 16) -> bytes:
    """``data`` with ``n`` bytes from ``at`` inverted."""
    return data[:at] + bytes(b ^ 0xFF for b in data[at:at + n]) + data[at + n:]


BROKEN = {
    "empty": (lambda raw: b"", "not a readable FITS file \\(it does not start"),
    "text": (lambda raw: b"FLUX IVAR\n1 2\n", "not a readable FITS file \\(it does not start"),
    "truncated": (lambda raw: raw[:-2000], "not a readable FITS file, corrupt or truncated"),
    "cut_in_header": (lambda raw: raw[:4000], "not a readable FITS file, corrupt or truncated"),
    "last_block_missing": (lambda raw: raw[:-2880],
                           "not a readable FITS file, corrupt or truncated"),
    "trailing_bytes": (lambda raw: raw + b"x" * 2880,
                       "not a readable FITS file, corrupt or truncated"),
    "corrupt_header": (lambda raw: flipped(raw, 2880, 8),
                       "not a readable FITS file, corrupt or truncated"),
    "gz_corrupt": (lambda raw: flipped(gzip.compress(raw), len(gzip.compress(raw)) // 2),
                   "not a readable FITS file, corrupt or truncated gzip data"),
    "gz_truncated": (lambda raw: gzip.compress(raw)[:len(gzip.compress(raw)) // 2],
                     "not a readable FITS file, corrupt or truncated gzip data"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files(backend, tmp_path, desi_file, lamost_file, case):
    make, message = BROKEN[case]
    detected = message
    if "does not start" in message:
        detected = r"not a FITS file \(it does not start with a FITS header\) and no registered"
    for source, read in ((lamost_file, read_lamost), (desi_file, read_desi)):
        path = tmp_path / f"{case}-{source.name}"
        path.write_bytes(make(source.read_bytes()))
        name = path.name.replace(".", r"\.")
        with pytest.raises(SpectrumFileError, match=rf"{name}: {message}"):
            read(path)
        with pytest.raises(SpectrumFileError, match=rf"{name}: {detected}"):
            read_spectra(path)


def test_missing_file(backend, tmp_path):
    for read in (read_spectra, read_lamost, read_desi):
        with pytest.raises(FileNotFoundError, match=r"absent\.fits: no such file"):
            read(tmp_path / "absent.fits")


def rewritten(source, target, edit):
    """``source`` written to ``target`` after ``edit(hdul)`` (which may return a new HDUList)."""
    with fits.open(source) as hdul:
        edited = edit(hdul)
        (edited if isinstance(edited, fits.HDUList) else hdul).writeto(target)
    return target


@pytest.mark.parametrize("edit, read, message", [
    (lambda h: h[:1], read_lamost, r"no 'COADD' table with a FLUX column .* HDUs found: "
                                   r"\['PRIMARY'\]"),
    (lambda h: h[1].columns.del_col("FLUX"), read_lamost,
     r"the COADD table has no FLUX column \(columns: \['ANDMASK', 'IVAR'\]\)"),
    (lambda h: h[0].header.remove("CRVAL1"), read_lamost, "wavelength header missing"),
    (lambda h: h[0].header.remove("CD1_1"), read_lamost, "wavelength header missing"),
    (lambda h: h.pop("FIBERMAP"), read_desi, "no FIBERMAP table with a TARGETID column"),
    (lambda h: h["FIBERMAP"].columns.change_name("TARGETID", "TID"), read_desi,
     "no FIBERMAP table with a TARGETID column"),
])
def test_files_without_what_the_reader_needs(backend, tmp_path, desi_file, lamost_file, edit,
                                             read, message):
    source = lamost_file if read is read_lamost else desi_file
    path = rewritten(source, tmp_path / "edited.fits", edit)
    with pytest.raises(SpectrumFileError, match=rf"edited\.fits: {message}"):
        read(path)
