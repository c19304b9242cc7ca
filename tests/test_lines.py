"""The line-list (blase3D) emulator: profile, banded evaluation, cloning, identification,
interpolation, differentiability."""
from __future__ import annotations

from dataclasses import replace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ELODIE
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.interpolate import RegularGridInterpolator
from scipy.special import voigt_profile
from scipy.stats import cauchy, norm

from jaxlasp.emulators import lines as L
from jaxlasp.emulators.tgm import Domain, crop_to
from jaxlasp.grids import LinearGrid

widths = st.floats(0.05, 3.0)


@settings(max_examples=30, deadline=None)
@given(sigma=widths, gamma=widths)
def test_pseudo_voigt_close_to_voigt(sigma, gamma):
    """Within 1.5 % of the true Voigt profile's peak everywhere (Ida et al.: ~1 %)."""
    x = np.linspace(-20.0, 20.0, 4001) * (sigma + gamma)
    exact = voigt_profile(x, sigma, gamma)
    approx = np.asarray(L.pseudo_voigt(jnp.asarray(x), sigma, gamma))
    assert np.max(np.abs(approx - exact)) < 0.015 * exact.max()


@settings(max_examples=30, deadline=None)
@given(sigma=widths, gamma=widths)
def test_pseudo_voigt_area_and_fwhm(sigma, gamma):
    """Unit area (Lorentz part within ±R: (2/π) arctan(R/(f/2))); V(f/2) = V(0)/2 exactly."""
    f, eta = (float(v) for v in L.tch_width_eta(sigma, gamma))
    reach = 200.0 * f
    x = np.linspace(-reach, reach, 400_001)
    area = np.trapezoid(np.asarray(L.pseudo_voigt(jnp.asarray(x), sigma, gamma)), x)
    expected = (1.0 - eta) + eta * 2.0 / np.pi * np.arctan(reach / (0.5 * f))
    assert area == pytest.approx(expected, rel=1e-6)
    peak, half = (float(L.pseudo_voigt(d, sigma, gamma)) for d in (0.0, 0.5 * f))
    assert half == pytest.approx(0.5 * peak, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(width=widths)
def test_pseudo_voigt_limits(width):
    """γ = 0 gives the Gaussian of σ; σ = 0 the Lorentzian of HWHM γ (η(1) = 1.00000)."""
    x = np.linspace(-10.0, 10.0, 101) * width
    gauss = np.asarray(L.pseudo_voigt(jnp.asarray(x), width, 0.0))
    np.testing.assert_allclose(gauss, norm.pdf(x, scale=width), rtol=1e-12)
    lorentz = np.asarray(L.pseudo_voigt(jnp.asarray(x), 0.0, width))
    np.testing.assert_allclose(lorentz, cauchy.pdf(x, scale=width), rtol=2e-5)


def _lines(mu, ln_amp, sigma, gamma):
    return L.Lines(*(jnp.asarray(np.asarray(v, np.float64)) for v in (mu, ln_amp, sigma, gamma)))


def _random_lines(rng, grid, k, depth=(0.05, 0.6)):
    """k lines at pixel centres (so detection recovers the same centres) with random shapes."""
    pixel = np.sort(rng.choice(np.arange(20, grid.n - 20, 12), k, replace=False))
    sigma = rng.uniform(0.15, 0.35, k)
    gamma = rng.uniform(0.01, 0.08, k)
    peak = np.asarray(L.pseudo_voigt(0.0, jnp.asarray(sigma), jnp.asarray(gamma)))
    return _lines(grid.centres[pixel], np.log(rng.uniform(*depth, k) / peak), sigma, gamma)


@pytest.mark.slow
def test_banded_equals_dense():
    """A window as wide as the grid reproduces the dense product; a cut one differs by the wings."""
    grid = LinearGrid(5000.0, 0.2, 201)
    lines = _random_lines(np.random.default_rng(0), grid, 8)
    dense = np.asarray(L.dense_transmission(lines, jnp.asarray(grid.centres)))
    full = np.asarray(L.transmission(lines, grid, halfwidth=100))
    np.testing.assert_allclose(full, dense, rtol=0, atol=1e-13)
    cut = np.asarray(L.transmission(lines, grid, halfwidth=40))
    assert 0 < np.max(np.abs(cut - dense)) < 2e-3
    with pytest.raises(ValueError, match="exceeds"):
        L.transmission(lines, grid, halfwidth=101)


@pytest.mark.slow
def test_clone_recovers_injected_lines():
    grid = LinearGrid(5000.0, 0.2, 400)
    truth = _random_lines(np.random.default_rng(1), grid, 10)
    target = np.asarray(L.transmission(truth, grid, 64))
    found = L.detect_lines(target)
    assert found.pixel.size == 10
    start, mask = L.initial_lines(found, grid, 12)
    before = np.sqrt(np.mean((np.asarray(L.transmission(_lines(*start), grid, 64)) - target) ** 2))
    fitted, rms = L.clone_batch(target[None], L.Lines(*(p[None] for p in start)), mask[None],
                                grid, 64, epochs=300)
    assert rms[0] < 0.1 * before and rms[0] < 5e-3
    np.testing.assert_allclose(fitted.mu[0, :10], truth.mu, atol=0.02)
    np.testing.assert_allclose(np.exp(fitted.ln_amp[0, :10]), np.exp(truth.ln_amp), rtol=0.1)
    assert np.all(fitted.ln_amp[0, 10:] == L.MISSING_LN_AMP)


def test_identify_lines_fill():
    keys = [L.centre_keys([5000.0, 5000.2]), L.centre_keys([5000.2, 5001.0])]
    fitted = L.Lines(np.array([[5000.01, 5000.21], [5000.19, 5001.02]]),
                     np.array([[-1.0, -2.0], [-3.0, -4.0]]), np.array([[0.1, 0.2], [0.4, 0.5]]),
                     np.array([[0.01, 0.02], [0.04, 0.05]]))
    merged, union = L.identify_lines(keys, fitted)
    np.testing.assert_array_equal(union, [500000, 500020, 500100])
    np.testing.assert_array_equal(merged.ln_amp, [[-1.0, -2.0, -1000.0], [-1000.0, -3.0, -4.0]])
    np.testing.assert_allclose(merged.mu, [[5000.01, 5000.21, 5001.0], [5000.0, 5000.19, 5001.02]])
    np.testing.assert_allclose(merged.sigma, [[0.1, 0.2, 0.5], [0.1, 0.4, 0.5]])


AXES = ((4000.0, 5000.0, 6500.0), (1.0, 3.0), (-1.0, 0.0, 0.5))


def test_interpolate_matches_scipy_and_nodes():
    rng = np.random.default_rng(2)
    values = rng.normal(size=(3, 2, 3, 4))
    points = np.column_stack([rng.uniform(a[0], a[-1], 50) for a in AXES])
    ours = np.stack([np.asarray(L.interpolate(jnp.asarray(values), AXES, *p)) for p in points])
    ref = RegularGridInterpolator(AXES, values)(points)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-13)
    for idx in np.ndindex(3, 2, 3):
        node = [a[i] for a, i in zip(AXES, idx)]
        np.testing.assert_allclose(L.interpolate(jnp.asarray(values), AXES, *node), values[idx],
                                   atol=1e-14)


def _synthetic_emulator(amplitude):
    """A hand-made emulator: 6 lines whose parameters vary smoothly over the AXES grid."""
    grid = LinearGrid(5000.0, 0.2, 300)
    rng = np.random.default_rng(3)
    t, g, z = np.meshgrid(*(np.asarray(a) for a in AXES), indexing="ij")
    base = _random_lines(rng, grid, 6)
    x = ((t - 5000.0) / 1000.0 + 0.1 * g + 0.2 * z)[..., None]
    lines = _lines(base.mu + 0.03 * x, base.ln_amp + 0.5 * x, base.sigma * (1 + 0.1 * x),
                   base.gamma * (1 + 0.2 * x))
    lines = lines._replace(ln_amp=lines.ln_amp.at[0, 0, 0, 2].set(L.MISSING_LN_AMP))
    continuum = jnp.asarray(np.stack([1 + 0.01 * x[..., 0], 0.02 * x[..., 0]], axis=-1))
    dom = Domain(*((a[0], a[-1]) for a in AXES))
    return L.LineListEmulator(lines, continuum, grid, AXES, dom, 40, amplitude=amplitude)


@pytest.mark.slow
@pytest.mark.parametrize("amplitude", ["log", "linear"])
def test_emulator_gradient_matches_finite_differences(amplitude):
    em = _synthetic_emulator(amplitude)
    flux = jax.jit(L.linelist_flux)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=em.grid.n))
    for teff, logg, feh in [(4400.0, 2.1, -0.3), (5600.0, 1.4, 0.2)]:
        def f(x, logg=logg, feh=feh):
            return jnp.dot(weights, flux(em, x[0], x[1], x[2]))
        x = jnp.array([teff, logg, feh])
        grad = np.asarray(jax.grad(f)(x))
        assert np.all(np.isfinite(grad))
        for i, h in enumerate((0.5, 1e-4, 1e-4)):
            e = jnp.zeros(3).at[i].set(h)
            fd = (f(x + e) - f(x - e)) / (2 * h)
            assert grad[i] == pytest.approx(float(fd), rel=1e-5, abs=1e-9)


@pytest.mark.slow
def test_emulator_at_nodes_and_crop():
    """At a node the emulator gives that node's lines; a crop keeps the same flux on its pixels."""
    em = _synthetic_emulator("log")
    node = (5000.0, 3.0, 0.0)
    at_node = L.Lines(*(p[1, 1, 1] for p in em.lines))
    np.testing.assert_allclose(L.normalised_flux(em, *node), L.transmission(at_node, em.grid, 40),
                               atol=1e-14)
    cropped = L.crop_linelist(em, 5012.0, 5050.0)
    first = round((cropped.grid.start - em.grid.start) / em.grid.step)
    full = np.asarray(L.linelist_flux(em, 4800.0, 2.0, -0.2))
    part = np.asarray(L.linelist_flux(cropped, 4800.0, 2.0, -0.2))
    # away from the edges, where the windows of lines near or beyond them are shifted inside
    inside = slice(2 * em.halfwidth + 1, cropped.grid.n - 2 * em.halfwidth - 1)
    np.testing.assert_allclose(part[inside], full[first:first + cropped.grid.n][inside],
                               atol=1e-12)


@pytest.fixture(scope="module")
def tgm_small():
    """ELODIE (or the demo model when absent) cropped to 4400–4600 Å."""
    if ELODIE.exists():
        from jaxlasp.io import read_tgm
        tgm = read_tgm(ELODIE)
    else:
        from jaxlasp.emulators.demo import demo_emulator
        tgm = demo_emulator()
    return crop_to(tgm, 4400.0, 4600.0)


@pytest.mark.slow
def test_build_emulator_end_to_end(tgm_small):
    """Clones are close to the source spectra at the nodes; the flux differentiates in Teff."""
    source = L.source_grid(tgm_small, [5000.0, 6000.0], [3.5, 4.5], [-0.5, 0.0])
    assert source.normalised.shape == (2, 2, 2, tgm_small.grid.n)
    em, report = L.build_linelist_emulator(source, halfwidth=32, epochs=100, chunk=8)
    assert np.all(report.n_lines > 20)
    assert np.all(report.rms < 0.03)
    assert em.lines.mu.shape == (2, 2, 2, report.keys.size)
    clone = np.asarray(L.linelist_flux(em, 6000.0, 3.5, 0.0))
    original = source.flux[1, 0, 1]
    assert np.sqrt(np.mean((clone / original - 1) ** 2)) < 0.03
    grad = jax.grad(lambda t: jnp.sum(L.linelist_flux(em.with_amplitude("linear"), t, 4.0,
                                                      -0.2)))(5500.0)
    assert np.isfinite(grad) and grad != 0


@pytest.fixture(scope="module")
def linelist_small(tgm_small):
    """A line-list emulator cloned from 2×2×2 nodes of ``tgm_small`` (linear amplitudes)."""
    source = L.source_grid(tgm_small, [5000.0, 6000.0], [3.5, 4.5], [-0.5, 0.0])
    em, _ = L.build_linelist_emulator(source, halfwidth=32, epochs=100, chunk=8)
    return em.with_amplitude("linear")


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lm", "adam"])
def test_rv_and_broadening_are_fitted_through_the_line_list(linelist_small, method):
    """The line-list emulator plugs into the forward model: both optimisers recover RV, σ and
    the stellar parameters of a noise-free spectrum made by that model with a tilted continuum."""
    from jaxlasp.fit.adam import fit_batch_adam
    from jaxlasp.fit.driver import fit_batch
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.model import build_forward_model, components, theta_from_physical

    fm = build_forward_model(linelist_small, lamost_fit_grid(linelist_small.grid, (4420., 4580.)),
                             degree=5)
    truth = theta_from_physical(5600.0, 4.1, -0.2, rv=40.0, sigma_px=1.3)
    ones = jnp.ones(fm.grid.n)
    tilt = 1 + 0.1 * np.linspace(-1, 1, fm.grid.n)
    flux = np.asarray(components(fm, jnp.asarray(truth), ones, ones).convolved) * tilt
    start = theta_from_physical(5400.0, 3.9, -0.35, rv=0.0, sigma_px=1.0)
    if method == "lm":
        result = fit_batch(fm, start[None], flux[None], np.ones((1, fm.grid.n)))
        tol = 1e-6
    else:
        # this grid spans 0.16 of Adam's normalised Teff axis: PyLASP's lr 0.1 (made for the
        # whole ELODIE box) oversteps it, so a tenth of it
        result, _ = fit_batch_adam(fm, start[None], flux[None], np.ones((1, fm.grid.n)), lr=0.01)
        tol = 5e-3  # Adam stops on |ΔL| < 1e-5, not at machine precision
    assert bool(result.converged[0]), int(result.flags[0])
    np.testing.assert_allclose(np.asarray(result.theta[0]), truth, rtol=0, atol=tol)


def test_cell_lines_matches_brute_force():
    rng = np.random.default_rng(5)
    ln_amp = np.where(rng.uniform(size=(3, 4, 2, 30)) < 0.15, -2.0, L.MISSING_LN_AMP)
    active = L.cell_lines(ln_amp)
    assert active.shape[:3] == (2, 3, 1)
    for i, j, k in np.ndindex(2, 3, 1):
        expected = np.flatnonzero((ln_amp[i:i + 2, j:j + 2, k:k + 2] > -500).any(axis=(0, 1, 2)))
        row = active[i, j, k]
        np.testing.assert_array_equal(row[row >= 0], expected)
        assert np.all(row[expected.size:] == -1)


def _with_gaps(em):
    """``em`` without line 1 on the two cooler Teff nodes and line 4 on the two hotter (so every
    cell lacks one), and the same with its ``cell_lines``."""
    ln_amp = np.asarray(em.lines.ln_amp).copy()
    ln_amp[:2, :, :, 1] = L.MISSING_LN_AMP
    ln_amp[1:, :, :, 4] = L.MISSING_LN_AMP
    em = replace(em, lines=em.lines._replace(ln_amp=jnp.asarray(ln_amp)))
    return em, replace(em, active=jnp.asarray(L.cell_lines(ln_amp)))


@pytest.mark.slow
@pytest.mark.parametrize("amplitude", ["log", "linear"])
def test_cell_lines_give_the_same_flux_and_gradient(amplitude):
    """Evaluating only the lines of the point's cell changes neither flux nor its gradient."""
    every, cell = _with_gaps(_synthetic_emulator(amplitude))
    assert cell.active.shape[-1] < every.lines.mu.shape[-1]
    rng = np.random.default_rng(6)
    for point in np.column_stack([rng.uniform(a[0], a[-1], 6) for a in AXES]):
        np.testing.assert_allclose(L.linelist_flux(cell, *point), L.linelist_flux(every, *point),
                                   rtol=1e-13, atol=0)
        grads = [np.asarray(jax.jacfwd(lambda x, e=e: L.linelist_flux(e, *x))(jnp.asarray(point)))
                 for e in (cell, every)]
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-10, atol=1e-16)
    lo, hi = 5012.0, 5050.0
    np.testing.assert_allclose(L.linelist_flux(L.crop_linelist(cell, lo, hi), 4800.0, 2.0, -0.2),
                               L.linelist_flux(L.crop_linelist(every, lo, hi), 4800.0, 2.0, -0.2),
                               rtol=1e-13, atol=0)


def _shoulder_source():
    """A 2×2×2 source grid whose spectra have a weak line on the wing of a strong one (a shoulder,
    no minimum of its own) and an isolated line."""
    grid = LinearGrid(5000.0, 0.2, 300)
    lines = _lines(grid.centres[[100, 103, 200]], np.log([0.35, 0.06, 0.15]), [0.25, 0.25, 0.25],
                   [0.03, 0.03, 0.03])
    spectrum = np.asarray(L.transmission(lines, grid, 64))
    axes = ((1.0, 2.0), (1.0, 2.0), (1.0, 2.0))
    normalised = np.broadcast_to(spectrum, (2, 2, 2, grid.n))
    return L.SourceGrid(axes, normalised, np.ones((2, 2, 2, 1)), normalised, grid,
                        Domain(*((a[0], a[-1]) for a in axes))), spectrum


@pytest.mark.slow
def test_second_pass_adds_the_missed_line():
    source, spectrum = _shoulder_source()
    assert L.detect_lines(spectrum).pixel.size == 2          # the shoulder is not a minimum
    _, report1 = L.build_linelist_emulator(source, epochs=150, refine=False)
    second, report2 = L.build_linelist_emulator(source, epochs=150, refine=True)
    assert np.all(report1.n_lines == 2) and np.all(report2.n_lines > 2)
    assert set(report1.keys) < set(report2.keys)             # the first pass's lines stay
    # the single line fitted to the blend leaves dips on both sides: lines are added there
    assert np.all(report1.rms > 2e-3) and np.all(report2.rms < 0.1 * report1.rms)
    clone = np.asarray(L.normalised_flux(second, 1.5, 1.5, 1.5))
    assert np.sqrt(np.mean((clone - spectrum) ** 2)) < 5e-4


@pytest.mark.slow
def test_missed_lines_skips_cloned_pixels():
    grid = LinearGrid(5000.0, 0.2, 200)
    truth = _lines(grid.centres[[50, 120]], np.log([0.1, 0.1]), [0.25, 0.25], [0.02, 0.02])
    target = np.asarray(L.transmission(truth, grid, 64))
    only_first = np.asarray(L.transmission(L.Lines(*(p[:1] for p in truth)), grid, 64))
    shallow = np.asarray(L.transmission(truth._replace(ln_amp=truth.ln_amp - 0.5), grid, 64))
    np.testing.assert_array_equal(L.missed_lines(target, only_first, [50]).pixel, [120])
    assert L.missed_lines(target, shallow, [50, 120]).pixel.size == 0


# ---------------------------------------------------------------------------------------------
# Shared clone


def _detections(pixels):
    return L.Detected(np.asarray(pixels, int), np.full(len(pixels), 0.1), np.full(len(pixels), 3.))


def test_pooled_lines_merges_across_nodes_not_within():
    """Detections of different nodes ≤ 1 pixel apart are one line; two of one node stay two."""
    grid = LinearGrid(5000.0, 0.2, 300)
    found = [_detections([50, 100, 160, 161]), _detections([51, 100, 102]), _detections([])]
    pooled = L.pooled_lines(found, grid)
    expected = [50.5, 100, 102, 160, 161]
    np.testing.assert_allclose(pooled.mu, grid.start + grid.step * np.array(expected), rtol=1e-12)
    assert L.pooled_lines([_detections([])], grid).mu.size == 0


@pytest.mark.slow
@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(20, 80), max_size=12, unique=True), min_size=1, max_size=5))
def test_pooled_lines_properties(pixel_lists):
    """Sorted centres; at least as many lines as any node detected, at most all detections; every
    detection within one pixel of a pooled centre."""
    grid = LinearGrid(5000.0, 0.2, 100)
    pooled = L.pooled_lines([_detections(sorted(p)) for p in pixel_lists], grid)
    sizes = [len(p) for p in pixel_lists]
    assert max(sizes) <= pooled.mu.size <= sum(sizes)
    assert np.all(np.diff(pooled.mu) > 0)
    for p in pixel_lists:
        for wave in grid.centres[np.asarray(p, int)]:
            assert np.min(np.abs(pooled.mu - wave)) <= grid.step + 1e-9


def _roughness_reference(fields, shape):
    total = 0.0
    for value, scale in zip(fields, L.SMOOTHNESS_SCALE):
        cube = np.asarray(value).reshape(*shape, -1) / scale
        for axis, n in enumerate(shape):
            if n > 1:
                total += np.mean(np.diff(cube, n=min(2, n - 1), axis=axis) ** 2)
    return total


def test_roughness_is_zero_for_linear_trends_and_matches_numpy():
    shape = (5, 3, 1)
    i, j, _ = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    linear = [(a * i + b * j).reshape(-1, 1) * np.ones((1, 4)) for a, b in
              ((0.01, -0.02), (0.5, 0.2), (-0.1, 0.3), (0.2, 0.0))]
    flat = float(L.roughness(L.Lines(*map(jnp.asarray, linear)), shape))
    assert flat == pytest.approx(0, abs=1e-20)
    rng = np.random.default_rng(3)
    fields = [rng.normal(size=(15, 4)) for _ in range(4)]
    assert float(L.roughness(L.Lines(*map(jnp.asarray, fields)), shape)) == pytest.approx(
        _roughness_reference(fields, shape), rel=1e-12)
    two = (2, 3, 1)   # an axis of two nodes contributes its first difference
    fields = [rng.normal(size=(6, 4)) for _ in range(4)]
    assert float(L.roughness(L.Lines(*map(jnp.asarray, fields)), two)) == pytest.approx(
        _roughness_reference(fields, two), rel=1e-12)


def _smooth_source():
    """A 5×2×2 grid of synthetic spectra whose lines move and grow smoothly with the node
    coordinates, and a function giving the exact spectrum anywhere in the box."""
    grid = LinearGrid(5000.0, 0.2, 400)
    base = _random_lines(np.random.default_rng(8), grid, 12, depth=(0.1, 0.5))

    def spectrum(t, g, z):
        lines = base._replace(mu=base.mu + 0.15 * t - 0.05 * g,
                              ln_amp=base.ln_amp + 0.6 * t + 0.2 * z - 0.1 * t * t,
                              sigma=base.sigma * (1 + 0.05 * g))
        return np.asarray(L.transmission(lines, grid, 64))

    axes = (tuple(np.arange(5.0)), (0.0, 1.0), (0.0, 1.0))
    normalised = np.stack([spectrum(*p) for p in np.ndindex(5, 2, 2)]).reshape(5, 2, 2, -1)
    source = L.SourceGrid(axes, normalised, np.ones((5, 2, 2, 1)), normalised, grid,
                          Domain(*((a[0], a[-1]) for a in axes)))
    return source, spectrum


@pytest.mark.slow
@pytest.mark.parametrize("method", L.CLONE_METHODS)
def test_clone_methods_on_a_smooth_grid(method):
    """Both methods clone the nodes closely; between the nodes only the shared clone stays close to
    the true spectrum (its line parameters vary smoothly)."""
    source, spectrum = _smooth_source()
    em, report = L.build_linelist_emulator(source, method=method, epochs=200)
    assert np.all(report.rms < 4e-3)
    mids = [(0.5, 0.5, 0.5), (1.5, 0.3, 0.8), (2.5, 0.5, 0.2), (3.5, 0.9, 0.5)]
    between = max(np.sqrt(np.mean((np.asarray(L.normalised_flux(em, *p)) - spectrum(*p)) ** 2))
                  for p in mids)
    if method == "shared":
        assert em.active is None and em.lines.mu.shape == (5, 2, 2, report.keys.size)
        assert between < 3 * np.median(report.rms) + 2e-3
    else:
        assert between > 2 * np.median(report.rms)


@pytest.mark.slow
def test_shared_clone_smoothness_lowers_roughness():
    source, _ = _smooth_source()
    targets = source.normalised.reshape(-1, source.grid.n)
    found = [L.detect_lines(t) for t in targets]
    start = L.pooled_lines(found, source.grid)
    starts = L.Lines(*(np.broadcast_to(p, (len(targets), p.size)) for p in start))
    rough = []
    for smoothness in (0.0, 1e-4):
        fitted, rms = L.clone_grid(targets, starts, (5, 2, 2), source.grid, epochs=100,
                                   smoothness=smoothness, chunk=8)
        rough.append(float(L.roughness(L._to_free(L.Lines(*map(jnp.asarray, fitted))),
                                       (5, 2, 2))))
        assert np.all(rms < 0.02)
    assert rough[1] < 0.5 * rough[0]


@pytest.mark.slow
def test_unknown_clone_method():
    source, _ = _smooth_source()
    with pytest.raises(ValueError, match="method"):
        L.build_linelist_emulator(source, method="independent")
