"""The TGM spectral emulator (ULySS/ELODIE piecewise polynomial in Teff, log g, [Fe/H]).

ALGORITHM §a. Three regimes (warm, hot, cold) each give a flux as a linear combination of basis
terms in τ (scaled log10 Teff), g = log g − 4.44 and z = [Fe/H]; the regimes are blended linearly
in log10 Teff at 4000/4550 K and 7000/9000 K. The emulator is linear in its coefficients, so the
coefficient planes may live on any pixel grid (the model's linear grid, or the observed grid after
resampling them once, ALGORITHM §k).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from jaxlasp.grids import LinearGrid, LogGrid

T_OFFSET = 3.7617
"""log10 Teff offset of the basis [log10 K]."""
G_OFFSET = 4.44
"""log g offset of the basis [dex]."""
REGIMES = ("warm", "hot", "cold")
"""Order of the regime axis of the coefficient array (the FITS HDU order)."""
N_TERMS = {1: 23, 2: 23, 3: 26}
"""Number of basis terms per interpolator version."""

_T_BLEND = tuple(math.log10(a) - T_OFFSET for a in (4000.0, 4550.0, 7000.0, 9000.0))


@dataclass(frozen=True)
class Domain:
    """Box of parameters where the emulator is trusted: (low, high) for each."""

    teff: tuple[float, float]
    logg: tuple[float, float]
    feh: tuple[float, float]

    def contains(self, teff, logg, feh):
        """Boolean (array) that each parameter triple lies inside the box (bounds included)."""
        inside = [(lo <= v) & (v <= hi) for v, (lo, hi) in
                  ((teff, self.teff), (logg, self.logg), (feh, self.feh))]
        return inside[0] & inside[1] & inside[2]


ELODIE32_DOMAIN = Domain(teff=(3100.0, 29971.0), logg=(0.0, 5.9), feh=(-2.5, 1.0))
"""Valid box of the ELODIE 3.2 interpolator.

The ELODIE 3.2 library spans roughly 3100–50000 K, log g −0.3–5.9 and [Fe/H] −2.8–+1.0
(Prugniel & Soubiran; Wu et al. 2011, A&A 525, A71); we intersect it with the box that
LASP-Adam enforces (ALGORITHM §a.5) so that both jaxlasp optimisers share one domain.
"""


@dataclass(frozen=True)
class TGMEmulator:
    """Coefficients of a TGM emulator on some pixel grid (a pytree; ``coef`` is the only leaf).

    coef: array (3, n_terms, n_pix), regime axis in ``REGIMES`` order (warm, hot, cold).
    version: ULySS interpolator version (1, 2 or 3).
    grid: the pixel grid of ``coef`` (``LinearGrid`` as in the FITS file, or ``LogGrid`` once
        the coefficients have been resampled onto an observed grid).
    domain: parameter box in which the emulator is valid.
    """

    coef: jax.Array
    version: int = 2
    grid: LinearGrid | LogGrid | None = None
    domain: Domain = field(default=ELODIE32_DOMAIN)

    def replace_coef(self, coef, grid) -> TGMEmulator:
        """The same emulator with coefficient planes on another grid."""
        return TGMEmulator(coef, self.version, grid, self.domain)

    def astype(self, dtype) -> TGMEmulator:
        """The same emulator with coefficients cast to ``dtype`` (the basis stays float64)."""
        return self.replace_coef(jnp.asarray(self.coef, dtype), self.grid)


jax.tree_util.register_dataclass(
    TGMEmulator, data_fields=["coef"], meta_fields=["version", "grid", "domain"]
)


@jax.custom_jvp
def taylor_remainder(x):
    """R(x) = eˣ − Σ_{n≤5} xⁿ/n! = Σ_{n≥6} xⁿ/n!, without cancellation.

    The series to x⁴⁵/45! for |x| < 4 (truncation error < 1e-23 relative), its terms as running
    products x⁶/6!·Π_{k=7..n} x/k, the direct formula elsewhere, where R is no smaller than a third
    of the largest Taylor term. A handful of array operations (not a Python loop of 120), so that
    tracing the fit programs stays cheap; the derivative R′(x) = R(x) + x⁵/5! is given exactly.
    """
    small = jnp.abs(x) < 4.0
    xs = jnp.where(small, x, 0.0)
    ratios = xs[..., None] / jnp.arange(7, 46, dtype=xs.dtype)
    tail = jnp.cumprod(ratios, axis=-1)  # x/7, x²/(7·8), …, x³⁹/(7⋯45)
    series = xs**6 / 720.0 * (1.0 + jnp.sum(tail, axis=-1))
    xl = jnp.where(small, 5.0, x)
    direct = jnp.expm1(xl) - xl * (1 + xl / 2 * (1 + xl / 3 * (1 + xl / 4 * (1 + xl / 5))))
    return jnp.where(small, series, direct)


@taylor_remainder.defjvp
def _taylor_remainder_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    value = taylor_remainder(x)
    return value, (value + x**5 / 120.0) * dx


def basis_terms(tau, g, z, version: int = 2):
    """The TGM basis φ_k(τ, g, z) (ALGORITHM §a.2); shape (..., n_terms)."""
    u = tau * tau - 1.0
    terms = [
        jnp.ones_like(tau), tau, z, g, tau**2, tau * u, u**2, tau * z, tau * g, u * g, u * z,
        g**2, z**2, tau * u**2, tau * g**2, g**3, z**3, tau * z**2, g * z, g**2 * z, g * z**2,
    ]
    if version == 1:
        terms += [jnp.exp(tau), jnp.exp(tau**2)]
    elif version == 2:
        terms += [taylor_remainder(tau), taylor_remainder(2.0 * tau)]
    elif version == 3:
        terms += [tau * u * g, u**2 * g, u * tau * z, u * g**2, u * g**3]
    else:
        raise ValueError(f"unknown TGM interpolator version {version!r} (known: 1, 2, 3)")
    return jnp.stack(jnp.broadcast_arrays(*terms), axis=-1)


def regime_weights(t):
    """Blend weights (warm, hot, cold) at t = log10 Teff − 3.7617 (ALGORITHM §a.4);
    shape (..., 3)."""
    t4000, t4550, t7000, t9000 = _T_BLEND
    q_cold = (t - t4000) / (t4550 - t4000)
    q_hot = (t - t7000) / (t9000 - t7000)
    one, zero = jnp.ones_like(t), jnp.zeros_like(t)
    warm = jnp.where(t <= t4000, zero, jnp.where(t <= t4550, q_cold, jnp.where(
        t <= t7000, one, jnp.where(t < t9000, 1.0 - q_hot, zero))))
    hot = jnp.where(t <= t7000, zero, jnp.where(t < t9000, q_hot, one))
    cold = jnp.where(t <= t4000, one, jnp.where(t <= t4550, 1.0 - q_cold, zero))
    return jnp.stack([warm, hot, cold], axis=-1)


def regime_design(teff, logg, feh, version: int = 2):
    """Blended basis: weight_r·φ_k(τ_r) for each regime r and term k, in float64;
    shape (3, n_terms).

    ``teff`` [K], ``logg`` [dex], ``feh`` [dex] are scalars. The flux is the contraction of this
    with the coefficient planes.
    """
    f64 = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
    t = jnp.log10(jnp.asarray(teff, f64)) - T_OFFSET
    g = jnp.asarray(logg, f64) - G_OFFSET
    z = jnp.asarray(feh, f64)
    tau = t / 0.2
    tau_cold = tau if version == 1 else (t + 0.1) / 0.2
    warm_hot = basis_terms(tau, g, z, version)  # the warm and hot regimes share τ
    phi = jnp.stack([warm_hot, warm_hot, basis_terms(tau_cold, g, z, version)])
    return regime_weights(t)[:, None] * phi


def tgm_flux(emulator: TGMEmulator, teff, logg, feh):
    """Model flux on the emulator's pixel grid at (Teff [K], log g [dex], [Fe/H] [dex]);
    shape (n_pix,).

    The basis is evaluated in float64 and then cast to the coefficients' dtype.
    """
    n_terms = N_TERMS[emulator.version]
    design = regime_design(teff, logg, feh, emulator.version).astype(emulator.coef.dtype)
    return jnp.einsum("rk,rkp->p", design, emulator.coef[:, :n_terms])


def crop_to(emulator: TGMEmulator, lo: float, hi: float) -> TGMEmulator:
    """The emulator restricted to the pixels that cover [lo, hi] Å, plus one pixel each side.

    The margin is clipped to the pixels that exist. Raises ValueError if the model's coverage
    (its pixel edges) does not overlap [lo, hi].
    """
    edges = emulator.grid.edges
    if not (lo <= hi and hi > edges[0] and lo < edges[-1]):
        raise ValueError(
            f"the model covers {edges[0]:.3f}–{edges[-1]:.3f} Å, which does not overlap the "
            f"requested interval [{lo}, {hi}] Å"
        )
    first = max(int(np.searchsorted(edges, lo, side="right")) - 2, 0)
    last = min(int(np.searchsorted(edges, hi, side="left")), emulator.grid.n - 1)
    n = last - first + 1
    return emulator.replace_coef(emulator.coef[:, :, first:last + 1],
                                 emulator.grid.sub(first, n))
