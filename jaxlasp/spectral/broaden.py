"""Gaussian line-of-sight velocity broadening in observed pixels (ALGORITHM §e).

The kernel mean ``mu`` [pixels of Δlnλ] is the radial velocity, RV = c·expm1(Δlnλ·mu), and its
width ``sigma`` [pixels] the differential broadening. Shapes are static under ``jit``: the kernel
always has 2·halfwidth+1 nodes, and nodes further than 5σ from ``mu`` are zero, which is exactly
PyLASP's kernel whenever |mu| + 5σ ≤ halfwidth.
"""
from __future__ import annotations

import jax.numpy as jnp

SIGMA_FLOOR = 0.1
"""Smallest kernel width used [pixels]."""
TRUNCATION = 5.0
"""Kernel nodes with |x − mu| > TRUNCATION·σ are zero."""


def kernel_nodes(halfwidth: int):
    """Kernel node offsets x_k = halfwidth − k, k = 0..2·halfwidth [pixels]."""
    return jnp.arange(halfwidth, -halfwidth - 1, -1)


def gaussian_kernel(mu, sigma, halfwidth: int):
    """Normalised Gaussian kernel on ``kernel_nodes(halfwidth)``; shape (2·halfwidth+1,).

    σ is floored at ``SIGMA_FLOOR`` pixels; nodes with |w| = |x − mu|/σ > 5 are zero.
    """
    s = jnp.maximum(sigma, SIGMA_FLOOR)
    w = (kernel_nodes(halfwidth) - mu) / s
    k = jnp.where(jnp.abs(w) <= TRUNCATION, jnp.exp(-0.5 * w * w), 0.0)
    return k / jnp.sum(k)


def kernel_fits(mu, sigma, halfwidth: int):
    """True where the truncated kernel lies inside the static half-width (|mu| + 5σ ≤ halfwidth)."""
    return jnp.abs(mu) + TRUNCATION * jnp.maximum(sigma, SIGMA_FLOOR) <= halfwidth


def broaden(flux, mu, sigma, halfwidth: int):
    """Convolve ``flux`` (n,) with the kernel, replicating the edge values; shape (n,).

    out_i = Σ_x flux[clip(i − x, 0, n−1)]·K(x): a positive ``mu`` shifts features redward.
    """
    n = flux.shape[-1]
    kernel = gaussian_kernel(mu, sigma, halfwidth)
    index = jnp.clip(jnp.arange(n)[:, None] - kernel_nodes(halfwidth)[None, :], 0, n - 1)
    return flux[index] @ kernel
