"""The TGM emulator: basis terms, regime blending and domain (ALGORITHM §a)."""
from __future__ import annotations

import math
from decimal import Decimal, getcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jaxlasp  # noqa: F401
from jaxlasp.emulators.tgm import (
    ELODIE32_DOMAIN,
    N_TERMS,
    T_OFFSET,
    TGMEmulator,
    basis_terms,
    regime_weights,
    taylor_remainder,
    tgm_flux,
)
from jaxlasp.grids import LinearGrid


def remainder_exact(x: float) -> float:
    """Σ_{n≥6} xⁿ/n! in 60-digit decimal arithmetic."""
    getcontext().prec = 60
    dx, term, total = Decimal(x), Decimal(1), Decimal(0)
    for n in range(1, 200):
        term = term * dx / n
        if n >= 6:
            total += term
    return float(total)


@settings(max_examples=200, deadline=None)
@given(x=st.floats(-8.0, 8.0))
def test_taylor_remainder_has_no_cancellation(x):
    exact = remainder_exact(x)
    assert float(taylor_remainder(jnp.float64(x))) == pytest.approx(exact, rel=1e-13, abs=1e-300)


@settings(max_examples=100, deadline=None)
@given(x=st.floats(-8.0, 8.0))
def test_taylor_remainder_derivative_is_exact(x):
    """R′(x) = eˣ − Σ_{n≤4} xⁿ/n! = R(x) + x⁵/5!, forward and reverse mode alike."""
    exact = remainder_exact(x) + x**5 / 120.0
    forward = jax.jvp(taylor_remainder, (jnp.float64(x),), (jnp.float64(1.0),))[1]
    assert float(forward) == pytest.approx(exact, rel=1e-13, abs=1e-300)
    assert float(jax.grad(taylor_remainder)(jnp.float64(x))) == pytest.approx(float(forward))


def test_taylor_remainder_float32_accurate_for_cool_stars():
    """ALGORITHM §j.1: τ = −0.279 gives 6.29e-7; float32 must keep its digits (PyLASP's did not)."""
    x = np.float32(-0.279)
    ours = float(taylor_remainder(jnp.asarray(x)))
    assert ours == pytest.approx(remainder_exact(float(x)), rel=1e-6)


@pytest.mark.parametrize("version", [1, 2, 3])
def test_basis_size_and_first_terms(version):
    phi = np.asarray(basis_terms(jnp.float64(0.3), jnp.float64(-0.2), jnp.float64(0.1), version))
    assert phi.shape == (N_TERMS[version],)
    np.testing.assert_allclose(phi[:4], [1.0, 0.3, 0.1, -0.2])


@settings(max_examples=100, deadline=None)
@given(teff=st.floats(3000, 30000))
def test_regime_weights_partition_of_unity(teff):
    w = np.asarray(regime_weights(jnp.float64(math.log10(teff) - T_OFFSET)))
    assert np.all(w >= 0) and w.sum() == pytest.approx(1.0, abs=1e-14)
    assert np.count_nonzero(w) <= 2


@pytest.mark.parametrize("teff", [4000.0, 4550.0, 7000.0, 9000.0])
def test_regime_weights_continuous_at_boundaries(teff):
    t = math.log10(teff) - T_OFFSET
    below, above = (np.asarray(regime_weights(jnp.float64(t + d))) for d in (-1e-9, 1e-9))
    np.testing.assert_allclose(below, above, atol=1e-7)


@pytest.mark.parametrize("teff,expected",
                         [(3800, [0, 0, 1]), (5500, [1, 0, 0]), (12000, [0, 1, 0])])
def test_regime_weights_pure_regimes(teff, expected):
    t = jnp.float64(math.log10(teff) - T_OFFSET)
    np.testing.assert_array_equal(regime_weights(t), expected)


def test_flux_is_linear_blend_of_regimes():
    """Between 7000 and 9000 K: q·F_hot + (1 − q)·F_warm, q linear in log10 Teff."""
    rng = np.random.default_rng(1)
    coef = rng.normal(size=(3, 23, 50))
    emu = TGMEmulator(jnp.asarray(coef), 2, LinearGrid(5000.0, 0.2, 50))
    teff, logg, feh = 8000.0, 4.0, -0.3
    t = math.log10(teff) - T_OFFSET
    q = (math.log10(teff) - math.log10(7000)) / (math.log10(9000) - math.log10(7000))
    phi = np.asarray(basis_terms(jnp.float64(t / 0.2), jnp.float64(logg - 4.44), jnp.float64(feh)))
    warm, hot = phi @ coef[0], phi @ coef[1]
    np.testing.assert_allclose(tgm_flux(emu, teff, logg, feh), q * hot + (1 - q) * warm,
                               rtol=1e-12, atol=1e-12)


def test_float32_coefficients_keep_float64_basis():
    rng = np.random.default_rng(2)
    coef = rng.normal(size=(3, 23, 40)) * 3e4
    emu64 = TGMEmulator(jnp.asarray(coef), 2, LinearGrid(5000.0, 0.2, 40))
    emu32 = emu64.astype(jnp.float32)
    f64 = np.asarray(tgm_flux(emu64, 4035.7, 4.588, -0.049))
    f32 = np.asarray(tgm_flux(emu32, 4035.7, 4.588, -0.049))
    assert f32.dtype == np.float32
    assert np.max(np.abs(f32 - f64)) <= 1e-5 * np.max(np.abs(f64)) * 23


def test_domain():
    dom = ELODIE32_DOMAIN
    assert bool(dom.contains(5800.0, 4.4, 0.0))
    for bad in [(2000.0, 4.4, 0.0), (60000.0, 4.0, 0.0), (5800.0, 7.0, 0.0), (5800.0, 4.4, -4.0)]:
        assert not bool(dom.contains(*bad))
    teff = jnp.array([5800.0, 2000.0])
    np.testing.assert_array_equal(dom.contains(teff, 4.4, 0.0), [True, False])


def test_emulator_is_a_pytree_and_jits():
    emu = TGMEmulator(jnp.ones((3, 23, 10)), 2, LinearGrid(5000.0, 0.2, 10))
    leaves = jax.tree_util.tree_leaves(emu)
    assert len(leaves) == 1
    flux = jax.jit(tgm_flux)(emu, 5800.0, 4.4, 0.0)
    assert flux.shape == (10,)
