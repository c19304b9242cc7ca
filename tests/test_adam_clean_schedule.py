"""Adam's adaptive Clean schedule (jaxlasp.fit.adam, issue 4), on mocks of the demo model.

``clean_schedule="adaptive"`` (the default with per-spectrum convergence) calls CurveFit's Clean
for each spectrum when its own stopping rules fire, starts a new fit when Clean changed its mask
and stops when Clean left the mask unchanged or after ``MAX_CLEAN`` calls. The mocks are FGK
stars of the demo model with cosmic rays and bad pixels (``jaxlasp.mock.simulate``), fitted from
PyLASP's start with weight 1 on good pixels, as LAMOST spectra are by default; no real data needed.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxlasp.api import DEFAULT_START
from jaxlasp.emulators.demo import demo_emulator
from jaxlasp.fit import adam
from jaxlasp.fit.driver import MAX_CLEAN, fit_batch
from jaxlasp.grids import lamost_fit_grid
from jaxlasp.groups.columns import result_columns
from jaxlasp.groups.inputs import start_points
from jaxlasp.mock import draw_parameters, simulate
from jaxlasp.model import build_forward_model

N = 6
"""Mock spectra in the group."""
QUANTITIES = ("rv", "teff", "logg", "feh")


@pytest.fixture(scope="module")
def emulator():
    return demo_emulator()


@pytest.fixture(scope="module")
def data(emulator):
    """(fm, θ₀, flux / median, weights, mocks): S/N 50, 5 cosmic rays, 3 bad pixels each."""
    fm = build_forward_model(emulator, lamost_fit_grid(emulator.grid))
    truth = draw_parameters(N, seed=7, teff=(4500.0, 6500.0), logg=(2.0, 4.8), feh=(-1.5, 0.3))
    mocks = simulate(fm, truth, snr=50.0, seed=7, cosmic_rays=5, bad_pixels=3)
    used = mocks.weights > 0
    flux = mocks.flux / np.median(mocks.flux, axis=1, keepdims=True)
    return fm, start_points(DEFAULT_START, N), flux, used.astype(np.float64), mocks


@pytest.fixture(scope="module")
def group_fit(data):
    fm, theta0, flux, weights, _ = data
    return adam.fit_batch_adam(fm, theta0, flux, weights, clean=True)[0]


@pytest.fixture(scope="module")
def trace(data):
    """States and infos of the adaptive schedule, stepped by hand with a jitted ``adam.step``."""
    fm, theta0, flux, weights, _ = data
    flux, weights = jnp.asarray(flux), jnp.asarray(weights)
    jstep = jax.jit(adam.step, static_argnames=("clean", "clean_schedule"))
    state = adam.init(adam.x_from_theta(jnp.asarray(theta0)), flux.shape[1], box=adam.x_box(fm))
    states, infos = [state], []
    while bool(jnp.any(state.status == adam.RUNNING)):
        state, info = jstep(fm, state, flux, weights, clean=True, clean_schedule="adaptive")
        states.append(state)
        infos.append(info)
    return states, infos


def test_schedule_choice():
    assert adam.schedule_for(None, "spectrum") == "adaptive"
    assert adam.schedule_for(None, "group") == "fixed"      # PyLASP's setting
    assert adam.schedule_for("fixed", "spectrum") == "fixed"
    with pytest.raises(ValueError, match="clean_schedule must be"):
        adam.schedule_for("weekly", "spectrum")
    with pytest.raises(ValueError, match="needs convergence"):
        adam.schedule_for("adaptive", "group")


@pytest.mark.slow
def test_run_is_the_traced_loop(group_fit, trace):
    final = trace[0][-1]
    np.testing.assert_array_equal(group_fit.n_iter, final.n_iter)
    np.testing.assert_array_equal(group_fit.n_cycles, final.n_clean)
    np.testing.assert_allclose(group_fit.theta, adam.theta_from_x(final.best_x), rtol=0,
                               atol=1e-10)


@pytest.mark.slow
def test_clean_follows_each_spectrums_convergence(data, trace):
    """Clean only once the spectrum's stopping rules fired; a changed mask starts a new fit, an
    unchanged one (or the MAX_CLEAN-th call) ends the cleaning, and only then may it stop."""
    weights = data[3]
    states, infos = trace
    final = states[-1]
    cleaned = np.stack([np.asarray(i.cleaned) for i in infos])          # (steps, b)
    for b in range(N):
        calls = np.flatnonzero(cleaned[:, b])
        assert 1 <= len(calls) == final.n_clean[b] <= MAX_CLEAN
        n_iter = [int(states[k + 1].n_iter[b]) for k in calls]
        assert np.all(np.diff([0] + n_iter) > adam.PATIENCE)            # settled between calls
        for j, k in enumerate(calls):
            before, after = states[k], states[k + 1]
            changed = np.any((before.mask[b] != after.mask[b]) & (weights[b] > 0))
            if changed:
                assert after.status[b] == adam.RUNNING and after.best_loss[b] == np.inf
                np.testing.assert_array_equal(after.x[b], after.start_x[b])
                assert (np.array_equal(after.start_x[b], after.best_x[b])        # resume
                        or np.array_equal(after.start_x[b], before.start_x[b]))  # restart
            else:
                assert j == len(calls) - 1 and after.status[b] != adam.RUNNING
        last = states[calls[-1] + 1]
        unchanged = np.array_equal(last.mask[b], states[calls[-1]].mask[b])
        assert unchanged or final.n_clean[b] == MAX_CLEAN
        assert final.status[b] in (adam.SMALL_CHANGES, adam.STALLED)


@pytest.mark.slow
def test_cap_and_stop_with_a_scripted_clean(data, monkeypatch):
    """A Clean that drops one more pixel per call while a quota lasts: quota 0 stops at the first
    call, quota 2 at the third, an endless quota at MAX_CLEAN calls with MAX_CLEAN pixels out."""
    fm, theta0, flux, weights, _ = data
    quota = jnp.asarray([0, 2, 10**6])

    def scripted(fm, x, start, flux, weights, mask, first_call, mask_polynomial=True):
        used = weights > 0
        removed = jnp.sum(used & ~mask, axis=1)
        rank = jnp.cumsum(used, axis=1)
        drop = used & (rank == 100 + removed[:, None]) & (removed < quota)[:, None]
        return mask & used & ~drop, jnp.zeros(x.shape[0], bool)

    monkeypatch.setattr(adam, "curvefit_clean", scripted)
    run = jax.jit(lambda *a: adam.run.__wrapped__(*a, clean=True, clean_schedule="adaptive"))
    state = run(fm, adam.x_from_theta(jnp.asarray(theta0[:3])), jnp.asarray(flux[:3]),
                jnp.asarray(weights[:3]))
    removed = np.sum((weights[:3] > 0) & ~np.asarray(state.mask), axis=1)
    np.testing.assert_array_equal(state.n_clean, [1, 3, MAX_CLEAN])
    np.testing.assert_array_equal(removed, [0, 2, MAX_CLEAN])
    assert np.all(np.isin(state.status, [adam.SMALL_CHANGES, adam.STALLED]))


@pytest.mark.slow
def test_spectrum_alone_equals_spectrum_in_group(data, trace):
    """The loop from the same start rows: alone or in the group, the same steps, Clean calls,
    mask and best iterate (to round-off). (The rows are shared because converting θ₀ to x in
    batches of 1 and 6 can differ by an ulp in σ, and PyLASP's σ = 1 px start sits on the kernel
    truncation step of the forward model, where an ulp moves the loss by 1e-7.)"""
    fm, theta0, flux, weights, _ = data
    group = trace[0][-1]
    x0 = adam.x_from_theta(jnp.asarray(theta0))
    for b in (0, N - 1):
        alone = adam.run(fm, x0[b:b + 1], jnp.asarray(flux[b:b + 1]),
                         jnp.asarray(weights[b:b + 1]), clean=True, clean_schedule="adaptive")
        assert int(alone.n_iter[0]) == int(group.n_iter[b])
        assert int(alone.n_clean[0]) == int(group.n_clean[b]) >= 2
        np.testing.assert_array_equal(alone.mask[0], group.mask[b])
        np.testing.assert_allclose(alone.best_x[0], group.best_x[b], rtol=0, atol=1e-12)


@pytest.mark.slow
def test_recovers_the_truth_as_lm_clean_does(data, group_fit):
    """Adam's adaptive Clean finds LM Clean's masks and solutions, rejects the cosmic rays and
    recovers the truth within the errors."""
    fm, theta0, flux, weights, mocks = data
    grid = fm.grid
    lm_fit = fit_batch(fm, theta0, flux, weights, use_clean=True, slots=4)  # one LM program
    got, lm = result_columns(group_fit, grid), result_columns(lm_fit, grid)
    assert np.all(group_fit.converged) and np.all(lm_fit.converged)
    np.testing.assert_array_equal(group_fit.mask, lm_fit.mask)
    assert not np.any(mocks.cosmic & np.asarray(group_fit.mask))
    for q in QUANTITIES:
        truth = getattr(mocks.truth, q)
        print(f"{q}: |Adam − LM| ≤ {np.max(np.abs(got[q] - lm[q]) / lm[q + '_err']):.3f} σ, "
              f"|Adam − truth| ≤ {np.max(np.abs(got[q] - truth) / got[q + '_err']):.2f} σ")
        assert np.all(np.abs(got[q] - lm[q]) < 0.2 * lm[q + "_err"]), q
        assert np.all(np.abs(got[q] - truth) < 4 * got[q + "_err"]), q


@pytest.mark.slow
def test_adaptive_loop_stays_in_float32(emulator):
    """With a float32 emulator only per-spectrum scalars and the emulator basis are float64."""
    fm = build_forward_model(emulator.astype(jnp.float32), lamost_fit_grid(emulator.grid))
    batch = 3
    x0 = jnp.zeros((batch, 5), jnp.float32)
    flux = jnp.ones((batch, fm.grid.n), jnp.float32)
    run = jax.tree_util.Partial(adam.run, clean=True, clean_schedule="adaptive")
    text = str(jax.make_jaxpr(run)(fm, x0, flux, flux))
    shapes = {tuple(int(d) for d in dims.split(",") if d)
              for dims in re.findall(r"f64\[([\d,]*)\]", text)}
    assert all(np.prod(s) <= batch * 3 * 23 for s in shapes), shapes
    final = jax.eval_shape(run, fm, x0, flux, flux)
    assert final.best_x.dtype == jnp.float32 and final.start_x.dtype == jnp.float32
