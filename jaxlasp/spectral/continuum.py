"""Multiplicative Legendre correction solved by weighted linear least squares (ALGORITHM §f)."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

DEGREE = 50
"""PyLASP's multiplicative polynomial degree."""


def legendre_nodes(n: int) -> np.ndarray:
    """PyLASP's abscissae x_i = 2i/n − 1, i = 0..n−1 (note: not symmetric; x_{n−1} = 1 − 2/n)."""
    return 2.0 * np.arange(n, dtype=np.float64) / n - 1.0


def legendre_basis(n: int, degree: int = DEGREE) -> np.ndarray:
    """Legendre polynomials P_0..P_degree at ``legendre_nodes(n)``, float64; shape (n, degree+1)."""
    x = legendre_nodes(n)
    basis = np.empty((n, degree + 1))
    basis[:, 0] = 1.0
    if degree >= 1:
        basis[:, 1] = x
    for k in range(1, degree):
        basis[:, k + 1] = ((2 * k + 1) * x * basis[:, k] - k * basis[:, k - 1]) / (k + 1)
    return basis


def cholesky_lower(a):
    """Lower Cholesky factor of a small symmetric positive-definite matrix (n, n).

    Written with ``lax.fori_loop`` rather than LAPACK: under ``vmap`` on a CPU, jaxlib's batched
    LAPACK kernels can deadlock in its thread pool (seen with jaxlib 0.10 on 2 cores), and the
    loop vectorises over a batch on any device. Not positive definite → NaN.
    """
    a = jnp.asarray(a)
    n = a.shape[-1]
    index = jnp.arange(n)

    def column(j, low):
        row = jnp.where(index < j, low[j], 0.0)
        diag = jnp.sqrt(a[j, j] - row @ row)
        col = jnp.where(index > j, (a[:, j] - low @ row) / diag, 0.0)
        return low.at[:, j].set(col.at[j].set(diag))

    return lax.fori_loop(0, n, column, jnp.zeros_like(a))


def cholesky_solve(low, b):
    """Solve (L Lᵀ) x = b for x, with L from ``cholesky_lower``; b of shape (n,)."""
    low, b = jnp.asarray(low), jnp.asarray(b)
    n = b.shape[-1]
    index = jnp.arange(n)

    def forward(j, y):
        return y.at[j].set((b[j] - jnp.where(index < j, low[j], 0.0) @ y) / low[j, j])

    def backward(k, x):
        j = n - 1 - k
        return x.at[j].set((y[j] - jnp.where(index > j, low[:, j], 0.0) @ x) / low[j, j])

    y = lax.fori_loop(0, n, forward, jnp.zeros_like(b))
    return lax.fori_loop(0, n, backward, jnp.zeros_like(b))


def fit_multiplicative_polynomial(model, flux, weights, basis):
    """Coefficients a minimising Σ_i weights_i·(flux_i − model_i·Σ_k a_k P_k(x_i))².

    model, flux, weights: (n,); weights are 1/err² times the pixel mask (0 excludes a pixel).
    basis: (n, degree+1) from ``legendre_basis``.
    Returns (a, polynomial) with polynomial = basis @ a on all n pixels. The normal equations are
    scaled to unit diagonal (a correlation matrix, as PyLASP does) and solved by Cholesky, followed
    by one step of iterative refinement on the residual of the original problem, which restores
    the accuracy that forming the normal equations loses when the mask leaves them ill conditioned.
    A singular system (e.g. fewer good pixels than coefficients) gives non-finite values, for the
    caller to flag.
    """
    design = model[:, None] * basis
    weighted = design * weights[:, None]
    normal = weighted.T @ design
    rhs = weighted.T @ flux
    scale = jnp.sqrt(jnp.diagonal(normal))
    corr = normal / scale[:, None] / scale[None, :]
    low = cholesky_lower(corr)
    coefs = cholesky_solve(low, rhs / scale) / scale
    correction = weighted.T @ (flux - design @ coefs)
    coefs = coefs + cholesky_solve(low, correction / scale) / scale
    return coefs, basis @ coefs
