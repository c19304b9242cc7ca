"""LASP-Adam (jaxlasp.fit.adam): Clean vs PyLASP, the parameter map, fits on real spectra."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import SAMPLE, need

from jaxlasp.fit import adam
from jaxlasp.model import theta_from_physical

IDS = ["3706009", "3709197", "3713139", "3709130", "3713013"]


@pytest.mark.slow
def test_clean_adam_matches_pylasp(golden):
    model = golden["adam_bestfit"][:, :1325]
    resid = golden["adam_resid"]
    expected = golden["adam_clean_mask_j30"]
    for dtype in (np.float32, np.float64):
        mask = jax.vmap(adam.clean_adam)(jnp.asarray(model, dtype), jnp.asarray(resid, dtype),
                                         jnp.ones(resid.shape, bool))
        np.testing.assert_array_equal(np.asarray(mask).astype(np.uint8), expected)


def test_parameter_map_round_trips():
    rng = np.random.default_rng(1)
    theta = theta_from_physical(rng.uniform(3500, 20000, 50), rng.uniform(0, 5.5, 50),
                                rng.uniform(-2.4, 0.9, 50), rng.uniform(-800, 800, 50),
                                rng.uniform(0.2, 4.9, 50))
    x = adam.x_from_theta(theta)
    np.testing.assert_allclose(adam.theta_from_x(x), theta, rtol=0, atol=1e-12)
    np.testing.assert_allclose(adam.x_from_theta(adam.theta_from_x(x)), x, rtol=0, atol=1e-12)
    # PyLASP's initial x for (7500 K, 3.5, −0.5), mu 0, sigma 1 px (ALGORITHM §i.2)
    x0 = adam.x_from_theta(theta_from_physical(7500.0, 3.5, -0.5))
    np.testing.assert_allclose(x0, [-0.20328, 0.16667, 0.14286, 0.0, -0.63265], atol=1e-5)
    # the box corners are Teff 2998–29990 K, log g 0–6, [Fe/H] −2.5–1, |mu| ≤ 15, sigma 0.1–5
    lo, hi = np.asarray(adam.theta_from_x(-np.ones(5))), np.asarray(adam.theta_from_x(np.ones(5)))
    np.testing.assert_allclose(np.exp(lo[2]), 10 ** 3.4767, rtol=1e-12)
    np.testing.assert_allclose(lo[[0, 1, 3, 4]], [-15, 0.1, 0, -2.5], atol=1e-12)
    np.testing.assert_allclose(hi[[0, 1, 3, 4]], [15, 5.0, 6, 1], atol=1e-12)


def test_projection_keeps_x_in_box():
    x = jnp.asarray([[-3.0, -1.0, 0.3, 1.0, 7.0]])
    np.testing.assert_array_equal(adam.project(x), [[-1.0, -1.0, 0.3, 1.0, 1.0]])


@pytest.fixture(scope="module")
def data(elodie):
    from jaxlasp.grids import lamost_fit_grid
    from jaxlasp.groups.inputs import lamost_weights, start_points
    from jaxlasp.io import cut_to_grid, read_lamost
    from jaxlasp.model import build_forward_model

    grid = lamost_fit_grid(elodie.grid)
    spectra = [cut_to_grid(read_lamost(need(SAMPLE / "fits" / f"{i}.fits")), grid) for i in IDS]
    flux = np.stack([s.normalised_flux() for s in spectra])
    weights = np.stack([lamost_weights(s, "none") for s in spectra])
    fm = build_forward_model(elodie, grid)
    return fm, grid, start_points((7500.0, 3.5, -0.5), len(IDS)), flux, weights


@pytest.fixture(scope="module")
def adam_fit(data):
    fm, _, theta0, flux, weights = data
    return adam.fit_batch_adam(fm, theta0, flux, weights)


@pytest.mark.slow
def test_spectrum_mode_reaches_the_lm_solution(data, adam_fit):
    """Measured: |Δ| ≤ 0.05 LM errors in RV, Teff, log g, [Fe/H] (in ≤ 125 Adam steps)."""
    from jaxlasp.fit.driver import fit_batch
    from jaxlasp.groups.columns import result_columns

    fm, grid, theta0, flux, weights = data
    result, group_loss = adam_fit
    ref = result_columns(fit_batch(fm, theta0, flux, weights), grid)
    got = result_columns(result, grid)
    assert np.all(result.converged) and np.all(result.flags == 0)
    assert np.all(result.n_iter < 300) and np.all(result.n_cycles == 0)
    for name in ("rv", "teff", "logg", "feh"):
        dev = np.abs(got[name] - ref[name]) / ref[name + "_err"]
        assert np.all(dev < 0.2), (name, dev)
        np.testing.assert_allclose(got[name + "_err"], ref[name + "_err"], rtol=0.05)
    np.testing.assert_allclose(got["loss"], ref["loss"], rtol=1e-5)
    n = np.sum(weights > 0, axis=1)
    assert float(group_loss) == pytest.approx(np.sqrt(np.sum(got["loss"] ** 2 * n) / n.sum()))


@pytest.fixture(scope="module")
def trace(data):
    """Every state of the spectrum-mode loop, stepped by hand with a jitted ``adam.step``."""
    fm, _, theta0, flux, weights = data
    flux, weights = jnp.asarray(flux), jnp.asarray(weights)
    jstep = jax.jit(adam.step, static_argnames=("clean", "convergence", "max_iter",
                                                "mask_polynomial"))
    state = adam.init(adam.x_from_theta(jnp.asarray(theta0)), flux.shape[1])
    states, infos = [state], []
    while bool(jnp.any(state.status == adam.RUNNING)):
        state, info = jstep(fm, state, flux, weights, lr=0.1)
        states.append(state)
        infos.append(info)
    return jstep, states, infos


@pytest.mark.slow
def test_loop_equals_run_and_best_iterate_is_reported(data, adam_fit, trace):
    _, states, infos = trace
    final = states[-1]
    result, _ = adam_fit
    np.testing.assert_array_equal(final.n_iter, result.n_iter)
    np.testing.assert_allclose(adam.theta_from_x(final.best_x), result.theta, rtol=0, atol=1e-10)
    xs = np.stack([s.x for s in states[:-1]])            # point evaluated at each step
    losses = np.stack([i.loss for i in infos])
    for b in range(len(IDS)):
        k = final.n_iter[b]
        best = np.argmin(losses[:k, b])
        np.testing.assert_array_equal(final.best_x[b], xs[best, b])
        assert final.best_loss[b] == losses[best, b]
        # the post-step parameters are not the reported ones
        assert not np.array_equal(final.x[b], final.best_x[b])


def test_frozen_spectra_stop_changing(trace):
    _, states, _ = trace
    final = states[-1]
    assert len(set(np.asarray(final.n_iter).tolist())) > 1  # they stopped at different steps
    for b in range(len(IDS)):
        k = int(final.n_iter[b])
        assert final.status[b] in (adam.SMALL_CHANGES, adam.STALLED)
        frozen = states[k]
        for later in states[k:]:
            np.testing.assert_array_equal(later.x[b], frozen.x[b])
            np.testing.assert_array_equal(later.best_x[b], frozen.best_x[b])
            for a, c in zip(jax.tree_util.tree_leaves(later.opt_state),
                            jax.tree_util.tree_leaves(frozen.opt_state)):
                np.testing.assert_array_equal(a[b], c[b])
        assert not np.array_equal(states[k - 1].x[b], frozen.x[b])


def test_every_iterate_is_inside_the_box(data, trace):
    fm, _, theta0, flux, weights = data
    jstep, states, _ = trace
    assert all(np.all(np.abs(s.x) <= 1) for s in states)
    # a huge learning rate pushes x against the box: the projection holds it there
    state = adam.init(adam.x_from_theta(jnp.asarray(theta0)), flux.shape[1])
    hit = False
    for _ in range(5):
        state, _ = jstep(fm, state, jnp.asarray(flux), jnp.asarray(weights), lr=5.0)
        assert np.all(np.abs(state.x) <= 1)
        hit |= bool(np.any(np.abs(state.x) == 1))
    assert hit


@pytest.mark.slow
def test_group_mode_stops_together_near_lm(data, adam_fit):
    fm, _, theta0, flux, weights = data
    result, group_loss = adam.fit_batch_adam(fm, theta0, flux, weights, convergence="group")
    assert len(set(np.asarray(result.n_iter).tolist())) == 1
    spectrum_mode, spectrum_loss = adam_fit
    err = np.sqrt(np.diagonal(np.asarray(spectrum_mode.covariance), axis1=1, axis2=2))
    assert np.all(np.abs(result.theta - spectrum_mode.theta) < 0.2 * err)
    assert float(group_loss) == pytest.approx(float(spectrum_loss), rel=1e-5)


@pytest.mark.slow
def test_fixed_clean_schedule_and_mask(data):
    fm, _, theta0, flux, weights = data
    result, _ = adam.fit_batch_adam(fm, theta0, flux, weights, clean=True, clean_schedule="fixed")
    n_iter = np.asarray(result.n_iter)
    scheduled = np.array([np.sum(np.arange(30, 331, 30) < k) for k in n_iter])
    np.testing.assert_array_equal(result.n_cycles, scheduled)
    assert np.all(result.n_cycles >= 1) and np.all(result.converged)
    rejected = np.sum((weights > 0) & ~np.asarray(result.mask), axis=1)
    np.testing.assert_array_equal(result.n_clean, rejected)
    assert np.all(rejected > 0) and np.all(rejected < 0.1 * flux.shape[1])


@pytest.mark.slow
@pytest.mark.parametrize("convergence", ["spectrum", "group"])
def test_projected_gradient_equals_reverse_mode(demo_fm, convergence):
    """The Adam gradient J_bᵀr_b from the variable-projection Jacobian equals reverse-mode
    autodiff through the emulator, kernel and Legendre solve, for random points, weights and
    Clean masks (both convergence modes)."""
    from jaxlasp import mock

    truth = mock.draw_parameters(6, seed=3)
    spectra = mock.simulate(demo_fm, truth, snr=30.0, seed=4)
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.uniform(-0.8, 0.8, (6, 5)))
    mask = jnp.asarray(rng.random(spectra.flux.shape) > 0.1)
    flux, weights = jnp.asarray(spectra.flux), jnp.asarray(spectra.weights)

    def objective(xx):
        per, sq, n = adam.losses(demo_fm, xx, flux, weights, mask)
        return jnp.sqrt(sq / n) if convergence == "group" else jnp.sum(per)

    per, group, grad = adam.loss_gradient(demo_fm, x, flux, weights, mask, convergence)
    expected = jax.grad(objective)(x)
    per_ad, sq, n = adam.losses(demo_fm, x, flux, weights, mask)
    np.testing.assert_allclose(per, per_ad, rtol=1e-12)
    np.testing.assert_allclose(group, jnp.sqrt(sq / n), rtol=1e-12)
    scale = np.max(np.abs(expected))
    np.testing.assert_allclose(grad, expected, rtol=0, atol=1e-8 * scale)
