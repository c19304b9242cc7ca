"""Line parameters (``Lines``) and the unit-area pseudo-Voigt profile [1/Å]; the clone
S(λ) = Π_j (1 − a_j V_j(λ)) on a wavelength grid [Å], banded (wing cut) or dense."""
from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxlasp.grids import LinearGrid

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""Full width at half maximum of a Gaussian per σ."""
TCH_WIDTH = (1.0, 2.69269, 2.42843, 4.47163, 0.07842, 1.0)
"""Coefficients v_n of f⁵ = Σ_n v_n f_G^(5−n) f_Lⁿ (Ida et al. 2000; blase Eq. 2)."""
TCH_ETA = (1.36603, -0.47719, 0.11116)
"""Coefficients of η = Σ_k c_k (f_L/f)^(k+1)."""
HALFWIDTH = 64
"""Default wing cut: each line is evaluated on 2·64 + 1 pixels (±12.8 Å at 0.2 Å/pixel)."""
MAX_DEPTH = 1.0 - 1e-9
"""Largest a·V used in ln(1 − aV): keeps the logarithm finite (the factor saturates beyond)."""


class Lines(NamedTuple):
    """Parameters of L lines (a pytree; every field has shape (..., L)).

    mu: centre μ′ [Å]; ln_amp: ln a, a [Å] the area of the line's absorption a·V;
    sigma: Gaussian standard deviation σ [Å]; gamma: Lorentzian half width at half maximum γ [Å].
    """

    mu: jax.Array
    ln_amp: jax.Array
    sigma: jax.Array
    gamma: jax.Array


# ---------------------------------------------------------------------------------------------
# Profile and banded evaluation


@jax.jit
def tch_width_eta(sigma, gamma):
    """(f, η): pseudo-Voigt FWHM f [Å] and Lorentz fraction η from Gaussian σ, Lorentz HWHM γ [Å].

    f = (Σ_n v_n f_G^(5−n) f_Lⁿ)^(1/5) with f_G = 2√(2 ln 2) σ, f_L = 2γ, and
    η = 1.36603 r − 0.47719 r² + 0.11116 r³ with r = f_L / f (Ida, Ando & Toraya 2000).
    """
    f_g = FWHM_PER_SIGMA * sigma
    f_l = 2.0 * gamma
    f5 = sum(v * f_g ** (5 - n) * f_l**n for n, v in enumerate(TCH_WIDTH))
    f = f5 ** 0.2
    r = f_l / f
    eta = r * (TCH_ETA[0] + r * (TCH_ETA[1] + r * TCH_ETA[2]))
    return f, eta


@jax.jit
def pseudo_voigt(delta, sigma, gamma):
    """Unit-area pseudo-Voigt V at offsets ``delta`` = λ − μ [Å]; result in 1/Å.

    V = η L(δ; f) + (1 − η) G(δ; f), with L and G the unit-area Lorentzian and Gaussian of full
    width at half maximum f (``tch_width_eta``). Arguments broadcast; σ, γ ≥ 0 and not both 0.
    """
    f, eta = tch_width_eta(sigma, gamma)
    half = 0.5 * f
    lorentz = half / (jnp.pi * (delta**2 + half**2))
    s = f / FWHM_PER_SIGMA
    gauss = jnp.exp(-0.5 * (delta / s) ** 2) / (s * math.sqrt(2.0 * math.pi))
    return eta * lorentz + (1.0 - eta) * gauss


def _log_transmission(delta, lines_b: Lines):
    """ln(1 − a V(δ)) with a·V capped at ``MAX_DEPTH``; ``lines_b`` broadcasts against ``delta``."""
    depth = jnp.exp(lines_b.ln_amp) * pseudo_voigt(delta, lines_b.sigma, lines_b.gamma)
    return jnp.log1p(-jnp.minimum(depth, MAX_DEPTH))


def window_start(mu, grid: LinearGrid, halfwidth: int):
    """First pixel (int32, shape of ``mu``) of each line's window of 2·halfwidth + 1 pixels.

    The window is centred on the pixel nearest μ [Å] and shifted to lie inside the grid, so a
    line near (or beyond) an edge is evaluated on the outermost pixels. Needs 2h + 1 ≤ n.
    """
    centre = jnp.round((lax.stop_gradient(mu) - grid.start) / grid.step)
    last = grid.n - 2 * halfwidth - 1
    return jnp.clip(centre - halfwidth, 0, last).astype(jnp.int32)


@partial(jax.jit, static_argnames=("grid", "halfwidth"))
def transmission(lines: Lines, grid: LinearGrid, halfwidth: int = HALFWIDTH):
    """Clone S(λ) = Π_j (1 − a_j V_j(λ)) on ``grid``'s pixel centres, with the wing cut; (n,).

    ``lines`` fields have shape (L,). Each line contributes only to its window (``window_start``):
    ln S is the scatter-add of the L × (2h+1) values of ln(1 − aV).
    """
    if 2 * halfwidth + 1 > grid.n:
        raise ValueError(f"a window of 2·{halfwidth} + 1 pixels exceeds the {grid.n}-pixel grid")
    offsets = jnp.arange(2 * halfwidth + 1)
    index = window_start(lines.mu, grid, halfwidth)[:, None] + offsets          # (L, W)
    wave = grid.start + grid.step * index.astype(lines.mu.dtype)
    values = _log_transmission(wave - lines.mu[:, None], Lines(*(p[:, None] for p in lines)))
    log_s = jnp.zeros(grid.n, values.dtype).at[index.ravel()].add(values.ravel())
    return jnp.exp(log_s)


def dense_transmission(lines: Lines, wave):
    """Π_j (1 − a_j V_j(λ)) at wavelengths ``wave`` (n,) [Å] with no wing cut (reference); (n,)."""
    values = _log_transmission(wave[None, :] - lines.mu[:, None],
                               Lines(*(p[:, None] for p in lines)))
    return jnp.exp(values.sum(axis=0))
