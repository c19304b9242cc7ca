"""Multiplicative Legendre correction solved by weighted linear least squares (ALGORITHM §f).

The normal matrix Σ_i v_i P_k(x_i) P_l(x_i) is built from the 2D+1 moments μ_m = Σ_i v_i P_m(x_i)
through the exact linearisation P_k P_l = Σ_m C_klm P_m, which costs n·(2D+1) + (D+1)²(2D+1)
operations instead of n·(D+1)², about 7× fewer for PyLASP's 1327 pixels and degree 50.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DEGREE = 50
"""PyLASP's multiplicative polynomial degree."""


def legendre_nodes(n: int) -> np.ndarray:
    """PyLASP's abscissae x_i = 2i/n − 1, i = 0..n−1 (note: not symmetric; x_{n−1} = 1 − 2/n)."""
    return 2.0 * np.arange(n, dtype=np.float64) / n - 1.0


def legendre_basis(n: int, degree: int = DEGREE, x=None) -> np.ndarray:
    """P_0..P_degree at ``x`` (default ``legendre_nodes(n)``), float64; shape (n, degree+1)."""
    x = legendre_nodes(n) if x is None else np.asarray(x, np.float64)
    basis = np.empty((x.size, degree + 1))
    basis[:, 0] = 1.0
    if degree >= 1:
        basis[:, 1] = x
    for k in range(1, degree):
        basis[:, k + 1] = ((2 * k + 1) * x * basis[:, k] - k * basis[:, k - 1]) / (k + 1)
    return basis


def linearisation_coefficients(degree: int) -> np.ndarray:
    """C with P_k P_l = Σ_m C[k, l, m] P_m for k, l ≤ degree, m ≤ 2·degree; shape (D+1, D+1, 2D+1).

    C_klm = (2m+1)/2 ∫ P_k P_l P_m dx, integrated exactly by (2D+1)-point Gauss–Legendre
    quadrature; entries that vanish by parity or the triangle rule are set to exactly 0.
    """
    nodes, weights = np.polynomial.legendre.leggauss(2 * degree + 1)
    values = legendre_basis(nodes.size, 2 * degree, nodes)
    low = values[:, :degree + 1]
    coef = np.einsum("q,qk,ql,qm->klm", weights, low, low, values)
    coef *= np.arange(2 * degree + 1) + 0.5
    i, j, m = np.meshgrid(*(np.arange(d) for d in coef.shape), indexing="ij")
    coef[((i + j + m) % 2 == 1) | (m < abs(i - j)) | (m > i + j)] = 0.0
    return coef


@dataclass(frozen=True)
class LegendreSystem:
    """Legendre arrays for one number of pixels (a pytree of arrays).

    basis: (n, D+1) P_k(x_i); moments: (n, 2D+1) P_m(x_i); products: (D+1, D+1, 2D+1) C_klm.
    """

    basis: jax.Array
    moments: jax.Array
    products: jax.Array


jax.tree_util.register_dataclass(
    LegendreSystem, data_fields=["basis", "moments", "products"], meta_fields=[])


def legendre_system(n: int, degree: int = DEGREE, dtype=np.float64) -> LegendreSystem:
    """The ``LegendreSystem`` for PyLASP's nodes on n pixels."""
    moments = legendre_basis(n, 2 * degree)
    return LegendreSystem(*(jnp.asarray(a, dtype) for a in (
        moments[:, :degree + 1], moments, linearisation_coefficients(degree))))


@jax.jit
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


@jax.jit
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


@jax.jit
def triangular_inverse(low):
    """L⁻¹ of a lower-triangular (n, n) L, row by row (``lax.fori_loop``, see
    ``cholesky_lower``)."""
    n = low.shape[-1]
    index = jnp.arange(n)
    eye = jnp.eye(n, dtype=low.dtype)

    def row(j, inverse):
        return inverse.at[j].set((eye[j] - jnp.where(index < j, low[j], 0.0) @ inverse) / low[j, j])

    return lax.fori_loop(0, n, row, jnp.zeros_like(low))


class PolynomialFit(NamedTuple):
    """The weighted least-squares multiplicative polynomial of one spectrum, and its factor."""

    coefs: jax.Array       # (D+1,) Legendre coefficients a
    polynomial: jax.Array  # (n,) Σ_k a_k P_k(x_i)
    low: jax.Array         # (D+1, D+1) Cholesky factor of the unit-diagonal normal matrix
    scale: jax.Array       # (D+1,) square roots of the normal matrix's diagonal


def polynomial_fit(model, flux, weights, legendre: LegendreSystem) -> PolynomialFit:
    """Coefficients a minimising Σ_i weights_i·(flux_i − model_i·Σ_k a_k P_k(x_i))².

    model, flux, weights: (n,); weights are 1/err² times the pixel mask (0 excludes a pixel).
    The normal equations (from moments, see the module docstring) are scaled to unit diagonal (a
    correlation matrix, as PyLASP does) and solved by Cholesky, followed by one step of iterative
    refinement on the residual of the original problem, which restores the accuracy that forming
    the normal equations loses when the mask leaves them ill conditioned. A singular system (e.g.
    fewer good pixels than coefficients) gives non-finite values, for the caller to flag.
    """
    basis = legendre.basis
    normal = legendre.products @ (legendre.moments.T @ (weights * model * model))
    scale = jnp.sqrt(jnp.diagonal(normal))
    low = cholesky_lower(normal / scale[:, None] / scale[None, :])

    def solve(target):
        return cholesky_solve(low, basis.T @ (weights * model * target) / scale) / scale

    coefs = solve(flux)
    coefs = coefs + solve(flux - model * (basis @ coefs))
    return PolynomialFit(coefs, basis @ coefs, low, scale)


def fit_multiplicative_polynomial(model, flux, weights, legendre: LegendreSystem):
    """(a, polynomial) of ``polynomial_fit``: coefficients (D+1,), Σ_k a_k P_k on all n pixels."""
    fit = polynomial_fit(model, flux, weights, legendre)
    return fit.coefs, fit.polynomial


def normal_inverse(fit: PolynomialFit):
    """N⁻¹ = D⁻¹ L⁻ᵀ L⁻¹ D⁻¹ of the fit's normal matrix N = D L Lᵀ D; shape (D+1, D+1)."""
    root = triangular_inverse(fit.low)
    return (root.T @ root) / fit.scale[:, None] / fit.scale[None, :]


def polynomial_tangents(fit: PolynomialFit, model, tangents, flux, weights,
                        legendre: LegendreSystem):
    """Derivatives (k, n) of the fitted polynomial along the model tangents ``tangents`` (k, n).

    Differentiating the normal equations N a = Pᵀ W c f, N = Pᵀ W c² P, along dc gives
    N da = Pᵀ W dc (f − 2 c p) with p = P a: products with N⁻¹ from the fit's Cholesky factor
    (exact implicit differentiation, as in variable projection) instead of differentiating the
    moments, the factorisation and the refinement step; one refinement step, as for a. The
    explicit inverse turns the k solves into matrix products (the Jacobian does not need the last
    digits that ``polynomial_fit`` keeps with triangular solves). Tangents are rows
    (tangent-major): with XLA on a CPU this layout is ~3× faster than columns.
    """
    basis = legendre.basis
    inverse = normal_inverse(fit)
    forcing = tangents * (weights * (flux - 2 * model * fit.polynomial))
    dcoefs = (forcing @ basis) @ inverse
    weighted_square = weights * model * model
    dcoefs = dcoefs + ((forcing - weighted_square * (dcoefs @ basis.T)) @ basis) @ inverse
    return dcoefs @ basis.T


class CombinedFit(NamedTuple):
    """Multiplicative and additive Legendre polynomials fitted together (ULySS's MDEGREE and
    ADEGREE): model = c·p + q with p = Σ_k a_k P_k, q = Σ_j b_j P_j."""

    coefs: jax.Array       # (D+1,) multiplicative coefficients a
    polynomial: jax.Array  # (n,) p
    additive: jax.Array    # (n,) q
    solution: jax.Array    # (D+1+A+1,) all coefficients (a, b)
    low: jax.Array         # Cholesky factor of the unit-diagonal normal matrix
    scale: jax.Array       # square roots of the normal matrix's diagonal


def combined_fit(model, flux, weights, basis, additive_basis) -> CombinedFit:
    """Coefficients (a, b) minimising Σ_i weights_i·(flux_i − model_i·p_i − q_i)².

    basis: (n, D+1) multiplicative Legendre basis; additive_basis: (n, A+1). The design matrix
    [c·P | P_add] is formed explicitly (n·(D+A+2)² operations; the moment trick of
    ``polynomial_fit`` holds for the multiplicative block only); the normal equations are scaled
    to unit diagonal, solved by Cholesky and refined by one step, as in ``polynomial_fit``.
    """
    design = jnp.concatenate([model[:, None] * basis, additive_basis], axis=1)
    weighted = design * weights[:, None]
    normal = design.T @ weighted
    scale = jnp.sqrt(jnp.diagonal(normal))
    low = cholesky_lower(normal / scale[:, None] / scale[None, :])

    def solve(target):
        return cholesky_solve(low, (weighted.T @ target) / scale) / scale

    coefs = solve(flux)
    coefs = coefs + solve(flux - design @ coefs)
    m = basis.shape[1]
    return CombinedFit(coefs[:m], basis @ coefs[:m], additive_basis @ coefs[m:], coefs, low, scale)


def combined_tangents(fit: CombinedFit, model, tangents, flux, weights, basis, additive_basis):
    """Derivatives (k, n) of the fitted model c·p + q along the tangents ``tangents`` (k, n) of c.

    With design D = [c·P | A] and normal matrix N = Dᵀ W D, differentiating N x = Dᵀ W f along
    dc gives N dx = dDᵀ W e − Dᵀ W (dc·p), e = f − D x, dD = [dc·P | 0]; the model moves by
    dc·p + D dx. Products with N⁻¹ from the fit's Cholesky factor, one refinement step (as
    ``polynomial_tangents``), instead of differentiating the factorisation.
    """
    design = jnp.concatenate([model[:, None] * basis, additive_basis], axis=1)
    root = triangular_inverse(fit.low)
    inverse = (root.T @ root) / fit.scale[:, None] / fit.scale[None, :]
    moved = tangents * fit.polynomial                                   # dc·p, (k, n)
    residual = weights * (flux - design @ fit.solution)
    top = (tangents * residual) @ basis                                 # dDᵀ W e, (k, D+1)
    rhs = jnp.concatenate([top, jnp.zeros((top.shape[0], additive_basis.shape[1]), top.dtype)],
                          axis=1) - (moved * weights) @ design
    dx = rhs @ inverse
    dx = dx + (rhs - ((dx @ design.T) * weights) @ design) @ inverse
    return moved + dx @ design.T


def segment_basis(n: int, ranges, degrees) -> np.ndarray:
    """Block Legendre basis (n, Σ(d_s+1)): segment s (pixels ``ranges[s]`` = (first, stop))
    gets P_0..P_{d_s} at PyLASP's nodes over its own pixels (``legendre_nodes``), 0 elsewhere.
    A degree of −1 gives the segment no columns."""
    columns = []
    for (first, stop), degree in zip(ranges, degrees):
        if degree < 0:
            continue
        block = np.zeros((n, degree + 1))
        block[first:stop] = legendre_basis(stop - first, degree)
        columns.append(block)
    return np.concatenate(columns, axis=1) if columns else np.zeros((n, 0))
