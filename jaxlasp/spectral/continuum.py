"""Multiplicative Legendre correction solved by weighted linear least squares (ALGORITHM §f)."""
from __future__ import annotations

import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np

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
    factor = jsl.cho_factor(corr, lower=True)
    coefs = jsl.cho_solve(factor, rhs / scale) / scale
    correction = weighted.T @ (flux - design @ coefs)
    coefs = coefs + jsl.cho_solve(factor, correction / scale) / scale
    return coefs, basis @ coefs
