"""Native pixels (issue 22): the forward model on any strictly increasing pixel grid, in one or
more segments; the model is broadened on the LAMOST lattice and resampled onto the pixels."""
from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxlasp.api import fit_files
from jaxlasp.emulators.demo import demo_emulator
from jaxlasp.fit.driver import fit_batch
from jaxlasp.grids import LAMOST_AIR_GRID, PixelGrid, lamost_fit_grid
from jaxlasp.io import read_spectra
from jaxlasp.io.arrays import band, rebin
from jaxlasp.io.catalog import read_catalog
from jaxlasp.mock import (
    desi_camera_waves,
    desi_pixels,
    draw_parameters,
    simulate,
    write_mock_desi,
)
from jaxlasp.model import (
    DEFAULT_HALFWIDTH,
    auto_oversample,
    broadened,
    build_forward_model,
    emulate,
    fitted_pixels,
    kernel_grid,
    lattice_view,
    n_pixels,
    observe,
    parameter_grid,
    residuals,
    theta_from_physical,
)
from jaxlasp.pipeline import FitOptions, check_same_options, run, run_options
from jaxlasp.spectral.broaden import TRUNCATION

seeds = st.integers(0, 2**32 - 1)
sizes = st.sampled_from([40, 333])   # few shapes: each is a compilation


@pytest.fixture(scope="module")
def emulator():
    return demo_emulator()


@pytest.fixture(scope="module")
def kernel(emulator):
    """A fixed kernel grid, 4300–5600 Å, with the emulator folded onto it once."""
    grid = kernel_grid(emulator.grid, PixelGrid.from_edges([4300.0, 5600.0]), margin=0)
    return grid, build_forward_model(emulator, grid)


def random_pixels(rng, n, lo, hi):
    """n irregular pixels (edges (n+1,)) spanning [lo, hi] Å, widths varying by 5×."""
    widths = rng.uniform(0.2, 1.0, n)
    return lo + (hi - lo) * np.concatenate([[0.0], np.cumsum(widths)]) / widths.sum()


def overlap_mean(values, in_edges, out_edges):
    """Mean of a piecewise-constant density over each output bin, from explicit overlaps."""
    out = np.empty(len(out_edges) - 1)
    for i in range(out.size):
        lo, hi = out_edges[i], out_edges[i + 1]
        share = np.clip(np.minimum(in_edges[1:], hi) - np.maximum(in_edges[:-1], lo), 0, None)
        out[i] = np.sum(share * values) / (hi - lo)
    return out


def numpy_broaden(flux, mu, sigma, halfwidth):
    """Σ_x flux[clip(i − x)]·K(x), K the normalised Gaussian truncated at 5σ on x = −h..h."""
    x = np.arange(-halfwidth, halfwidth + 1)
    w = (x - mu) / sigma
    k = np.where(np.abs(w) <= TRUNCATION, np.exp(-0.5 * w * w), 0.0)
    k /= k.sum()
    i = np.arange(flux.size)
    return sum(kx * flux[np.clip(i - xx, 0, flux.size - 1)] for xx, kx in zip(x, k))


def test_pixel_grid_segments_and_checks():
    grid = PixelGrid.from_edges([1.0, 2.0, 4.0], [1.5, 2.5, 3.0, 3.5])
    assert grid.n == 5 and grid.sizes == [2, 3] and grid.ranges == [(0, 2), (2, 5)]
    np.testing.assert_allclose(grid.centres, [1.5, 3.0, 2.0, 2.75, 3.25])
    np.testing.assert_allclose(grid.widths, [1.0, 2.0, 1.0, 0.5, 0.5])
    assert (grid.lo, grid.hi) == (1.0, 4.0)
    assert grid == PixelGrid.from_edges([1.0, 2.0, 4.0], [1.5, 2.5, 3.0, 3.5])
    assert hash(grid) == hash(PixelGrid.from_edges([1.0, 2.0, 4.0], [1.5, 2.5, 3.0, 3.5]))
    assert grid != PixelGrid.from_edges([1.0, 2.0, 4.0])
    for bad in ([1.0, 1.0, 2.0], [2.0, 1.0], [1.0], [1.0, np.nan]):
        with pytest.raises(ValueError, match="strictly increasing"):
            PixelGrid.from_edges(bad)
    with pytest.raises(ValueError, match="at least one segment"):
        PixelGrid(())


def test_the_kernel_grid_is_refined_for_pixels_finer_than_the_lattice(emulator):
    lattice_like = PixelGrid.from_log_grid(lamost_fit_grid(emulator.grid))
    assert auto_oversample(lattice_like) == 1
    assert auto_oversample(PixelGrid.from_edges(np.arange(4300.0, 5600.0, 0.8))) == 2
    assert auto_oversample(PixelGrid.from_edges(np.arange(4300.0, 5600.0, 3.0))) == 1
    fm = build_forward_model(emulator, pixels=PixelGrid.from_edges(np.arange(4300, 5600, 0.5)))
    lattice = parameter_grid(fm)
    assert fm.oversample == 3 and fm.grid.n == 3 * lattice.n
    assert lattice.step == LAMOST_AIR_GRID.step and fm.halfwidth == 3 * DEFAULT_HALFWIDTH
    np.testing.assert_allclose(fm.grid.edges[::3], lattice.edges, rtol=1e-13)
    with pytest.raises(ValueError, match="native pixels only"):
        build_forward_model(emulator, lamost_fit_grid(emulator.grid), oversample=2)


def test_kernel_grid_covers_the_pixels_on_the_lattice(emulator):
    pixels = PixelGrid.from_edges(np.linspace(4500.0, 4600.0, 51), np.linspace(4550, 4700, 31))
    grid = kernel_grid(emulator.grid, pixels, margin=5)
    offset = (grid.ln_start - LAMOST_AIR_GRID.ln_start) / grid.step
    assert grid.step == LAMOST_AIR_GRID.step and abs(offset - round(offset)) < 1e-6
    assert grid.edges[0] < 4500.0 * math.exp(-4 * grid.step)
    assert grid.edges[-1] > 4700.0 * math.exp(4 * grid.step)
    with pytest.raises(ValueError, match="beyond the model's coverage"):
        kernel_grid(emulator.grid, PixelGrid.from_edges(np.linspace(3800.0, 4000.0, 11)))


@pytest.mark.slow
def test_native_pixels_equal_to_the_lattice_give_the_lattice_model(emulator):
    """Native pixels that are the fit grid's own: the same residuals (to round-off) and fits."""
    grid = lamost_fit_grid(emulator.grid)
    lattice = build_forward_model(emulator, grid)
    native = build_forward_model(emulator, grid, pixels=PixelGrid.from_log_grid(grid))
    assert n_pixels(native) == grid.n and fitted_pixels(native).all()
    mock = simulate(lattice, draw_parameters(2, seed=5), snr=40, seed=6)
    truth = mock.truth.theta(grid.step)
    for k in range(2):
        ours = residuals(native, jnp.asarray(truth[k]), mock.flux[k], mock.weights[k])
        ref = residuals(lattice, jnp.asarray(truth[k]), mock.flux[k], mock.weights[k])
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-11 * float(jnp.max(jnp.abs(ref))))
    start = np.tile(theta_from_physical(6000.0, 4.0, -0.3), (2, 1))
    a = fit_batch(lattice, start, mock.flux, mock.weights)
    b = fit_batch(native, start, mock.flux, mock.weights)
    np.testing.assert_allclose(b.theta, a.theta, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b.covariance, a.covariance, rtol=1e-6, atol=0)


@settings(max_examples=12, deadline=None)
@given(seed=seeds, n=sizes, two=st.booleans(), k=st.sampled_from([1, 3]))
def test_native_broadening_matches_numpy(emulator, kernel, seed, n, two, k):
    """``broadened`` on random irregular pixels (one segment, or two overlapping ones) equals
    broadening on the kernel grid (the lattice, or each lattice pixel split in k) in numpy,
    with mu and σ in lattice pixels, followed by explicit overlap integrals."""
    grid, _ = kernel
    rng = np.random.default_rng(seed)
    segments = ([random_pixels(rng, n, 4350.0, 5000.0), random_pixels(rng, n // 2, 4900, 5550)]
                if two else [random_pixels(rng, n, 4350.0, 5550.0)])
    native = build_forward_model(emulator, grid, pixels=PixelGrid.from_edges(*segments),
                                 oversample=k)
    assert native.grid.n == k * grid.n and parameter_grid(native) == grid
    theta = theta_from_physical(rng.uniform(4000, 9000), rng.uniform(1, 5), rng.uniform(-2, 0.5),
                                rng.uniform(-300, 300), rng.uniform(0.6, 4.0))
    flux = np.asarray(emulate(native, math.exp(theta[2]), theta[3], theta[4]))
    on_kernel = numpy_broaden(flux, k * theta[0], k * theta[1], native.halfwidth)
    expected = np.concatenate([overlap_mean(on_kernel, native.grid.edges, e) for e in segments])
    np.testing.assert_allclose(broadened(native, jnp.asarray(theta)), expected, rtol=1e-10)


@settings(max_examples=12, deadline=None)
@given(seed=seeds, n=sizes)
def test_observe_conserves_flux(emulator, kernel, seed, n):
    """Pixels tiling the kernel grid exactly keep Σ value·width."""
    grid, _ = kernel
    rng = np.random.default_rng(seed)
    edges = random_pixels(rng, n, grid.edges[0], grid.edges[-1])
    native = build_forward_model(emulator, grid, pixels=PixelGrid.from_edges(edges))
    values = rng.uniform(0.1, 2.0, grid.n)
    out = np.asarray(observe(native, jnp.asarray(values)))
    np.testing.assert_allclose(np.sum(out * np.diff(edges)), np.sum(values * np.diff(grid.edges)),
                               rtol=1e-11)


@settings(max_examples=12, deadline=None)
@given(seed=seeds, n=sizes)
def test_lattice_view_is_the_readers_rebin(emulator, kernel, seed, n):
    """The global start's view of native data on the kernel grid is ``io.arrays.rebin`` (weights
    as inverse variances, zero weight = bad pixel)."""
    grid, _ = kernel
    rng = np.random.default_rng(seed)
    edges = random_pixels(rng, n, 4400.0, 5500.0)
    native = build_forward_model(emulator, grid, pixels=PixelGrid.from_edges(edges))
    flux = rng.uniform(0.5, 1.5, n)
    weights = np.where(rng.random(n) < 0.1, 0.0, rng.uniform(10.0, 100.0, n))
    ours_flux, ours_weights = lattice_view(native, jnp.asarray(flux), jnp.asarray(weights))
    ref_flux, ref_ivar = rebin(band(edges, grid.edges), flux, weights, weights > 0)
    ok = np.isfinite(ref_flux)
    np.testing.assert_allclose(np.asarray(ours_weights), ref_ivar, rtol=1e-10, atol=0)
    np.testing.assert_allclose(np.asarray(ours_flux)[ok], ref_flux[ok], rtol=1e-12)
    assert np.all(np.asarray(ours_flux)[~ok] == 0)


def test_native_models_refuse_segments_and_far_pixels(emulator):
    pixels = PixelGrid.from_edges(np.linspace(4500.0, 5000.0, 101))
    with pytest.raises(ValueError, match="segments are the pixels' own"):
        build_forward_model(emulator, pixels=pixels, segments=[(4500, 4700), (4800, 5000)])
    with pytest.raises(ValueError, match="beyond the model's coverage"):
        build_forward_model(emulator, pixels=PixelGrid.from_edges(np.linspace(6000, 7000, 11)))


@pytest.fixture(scope="module")
def desi_mock(tmp_path_factory, emulator):
    """A DESI coadd file of mock stars made natively on the B and R cameras' own 0.8 Å pixels,
    5300–6500 Å (the cameras overlap at 5760–5800 Å)."""
    waves = desi_camera_waves(5300.0, 6500.0)
    assert list(waves) == ["B", "R"]
    pixels = desi_pixels(waves)
    fm = build_forward_model(emulator, pixels=pixels)
    mock = simulate(fm, draw_parameters(6, seed=21, teff=(4500.0, 7500.0)), snr=60, seed=22)
    path = write_mock_desi(mock, pixels, waves, tmp_path_factory.mktemp("desi") / "coadd.fits")
    return path, mock, fm


@pytest.mark.slow
def test_a_camera_scaled_by_a_constant_changes_nothing(desi_mock):
    """Each camera has its own multiplicative polynomial: calibrating one differently (× 1.7)
    gives the same parameters, to the fit's tolerance."""
    _, mock, fm = desi_mock
    basis = np.asarray(fm.design.multiplicative) != 0       # a polynomial per camera
    (a0, a1), (b0, b1) = fm.pixels.ranges
    in_first, in_second = basis[a0:a1].any(axis=0), basis[b0:b1].any(axis=0)
    assert not np.any(in_first & in_second) and in_first.sum() > 10 and in_second.sum() > 10
    scaled, weights = mock.flux.copy(), mock.weights.copy()
    first, stop = fm.pixels.ranges[1]
    scaled[:, first:stop] *= 1.7
    weights[:, first:stop] /= 1.7**2      # the same S/N: the errors scale with the flux
    start = np.tile(theta_from_physical(6000.0, 4.0, -0.3), (len(scaled), 1))
    a = fit_batch(fm, start, mock.flux, mock.weights)
    b = fit_batch(fm, start, scaled, weights)
    np.testing.assert_allclose(b.theta, a.theta, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_a_desi_file_fitted_natively_by_the_api_and_the_pipeline(desi_mock, emulator, tmp_path):
    path, mock, fm = desi_mock
    window = (5310.0, 6490.0)
    options = {"start": "global", "errors": "laplace"}
    table = fit_files([path], emulator, window=window, native=True, **options)
    truth = mock.truth
    for name, true in (("teff", truth.teff), ("logg", truth.logg), ("feh", truth.feh)):
        pull = (np.asarray(table[name]) - true) / np.asarray(table[f"{name}_err"])
        assert np.all(np.abs(pull) < 4.0), (name, pull)
        assert np.mean(np.abs(pull) < 2.0) >= 0.8, (name, pull)
    inside = (fm.pixels.centres >= window[0]) & (fm.pixels.centres <= window[1])
    assert np.all(table["n_pixels"] == inside.sum())
    catalog = tmp_path / "native.ecsv"
    run([path], emulator, catalog, FitOptions(window=window, native=True, group_size=6,
                                              start=options["start"], errors="laplace"),
        quiet=True)
    rows = read_catalog(catalog)
    for name in ("rv", "teff", "logg", "feh", "teff_err", "n_pixels"):
        np.testing.assert_allclose(rows[name], table[name], rtol=1e-6, err_msg=name)
    assert json.loads(rows.meta["options"])["native"] is True
    joined = read_spectra(path, window=window, native=False)[0]   # lattice pixels are wider
    assert not isinstance(joined.grid, PixelGrid) and joined.grid.n < table["n_pixels"][0]
    masked = fit_files([path], emulator, window=window, mask=[(5700.0, 5850.0)], **options)
    in_mask = inside & (fm.pixels.centres >= 5700.0) & (fm.pixels.centres <= 5850.0)
    (a0, a1), (b0, b1) = fm.pixels.ranges
    assert in_mask[a0:a1].sum() > 100 and in_mask[b0:b1].sum() > 100   # both cameras there
    assert np.all(masked["n_pixels"] == inside.sum() - in_mask.sum())
    # a σ per camera (B and R): the mocks' cameras share one width, which the two σ straddle
    arms = fit_files([path], emulator, window=window, segment_broadening=True,
                     start=(6000.0, 4.0, -0.3), errors="laplace")
    assert "sigma_2" in arms.colnames and "sigma_3" not in arms.colnames
    ok = np.asarray(arms["converged"]) & np.asarray(table["converged"])
    assert ok.sum() >= 5
    np.testing.assert_allclose(0.5 * (arms["sigma"] + arms["sigma_2"])[ok], table["sigma"][ok],
                               rtol=0.15)
    for name, true in (("teff", truth.teff), ("logg", truth.logg), ("feh", truth.feh)):
        assert np.all(np.abs((np.asarray(arms[name]) - true) / arms[f"{name}_err"]) < 4.0), name


def test_catalogs_from_before_native_pixels_resume_unless_they_hold_desi_rows(tmp_path):
    """A catalog stamped before ``native`` existed: LAMOST rows resume under the native default
    (LAMOST files have no native form), DESI rows (fitted joined then) do not."""
    from astropy.table import Table

    now = run_options(FitOptions(), "demo")
    old = json.loads(now)
    del old["native"]
    lamost = Table({"id": ["a"], "targetid": [-1]}, meta={"options": json.dumps(old)})
    desi = Table({"id": ["b"], "targetid": [39627745484341489]},
                 meta={"options": json.dumps(old)})
    check_same_options([lamost], now, tmp_path / "c.ecsv")
    with pytest.raises(ValueError, match="native: False then, True now"):
        check_same_options([lamost, desi], now, tmp_path / "c.ecsv")
    check_same_options([desi], run_options(FitOptions(native=False), "demo"), tmp_path / "c")
