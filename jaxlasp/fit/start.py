"""Global start: a coarse grid scored by the variable-projection χ², then fits from the best few.

A local optimiser started from one fixed point (PyLASP: 7500 K, 3.5, −0.5) can end in a false
minimum: the TGM emulator is piecewise in Teff (regimes blended at 4000/4550 K and 7000/9000 K),
and a hot star fitted from 7500 K can converge, unflagged, thousands of kelvin off. The global
start removes that dependence on the start point:

1. **Grid** (``default_grid``): a fixed set of (Teff, log g, [Fe/H]) nodes covering the
   emulator's domain. Teff is the parameter that moves the spectrum most and the one whose regime
   structure traps the fit, so it is sampled densely, geometrically (uniform in ln Teff, ~15 %
   apart) from the cold to the hot end, which puts several nodes in every regime and blend zone;
   log g and [Fe/H] only need one node near each basin, so 3 values each. 16 × 3 × 3 = 144 nodes
   by default.
2. **RV per node** (``node_velocities``): every node's spectrum, broadened with a fixed σ at mu = 0,
   is cross-correlated with the observed spectrum at integer shifts |mu| ≤ 15 px (both
   high-pass filtered: divided by a smooth version of themselves); the peak, refined by a
   parabola through its neighbours, is that node's mu.
3. **Score** (``batched_node_chi2``): χ² = Σ r² with r the forward model's residuals at
   θ = [mu_node, σ, ln Teff, log g, [Fe/H]], the degree-50 Legendre polynomial solved for each
   node — the value of ``node_chi2`` (``jaxlasp.model.residuals`` per node), computed in batch:
   the nodes' spectra on the observed grid are evaluated once per forward model and group
   (``node_spectra``); per spectrum each is broadened at its own mu as an integer shift of the
   edge-padded spectrum plus a 13-tap sub-pixel kernel (``shifted_nodes``, equal to
   ``broadened`` to round-off); χ² = Σ w f² − bᵀA⁻¹b (variable projection) with A and b from the
   Chebyshev moments Σ_i w_i m_i² T_l(x_i), l ≤ 100, and Σ_i w_i f_i m_i T_l(x_i) of all nodes
   (two matrix products; any polynomial basis gives the same χ²) and bᵀA⁻¹b from the modified
   Chebyshev algorithm, O(D²) per node (``projected_chi2``). The scoring is repeated without the
   pixels that are outliers at the best node (``clip_outliers``) only when there are any.
4. **Candidates** (``distinct_best``): the lowest-χ² node, then the lowest-χ² node at least
   ``separation`` in ln Teff away from those already chosen, and so on: n_best candidates in
   different Teff basins (different regimes when the data allow), not n neighbours of one; and
   (``best_at_other_logg``) the lowest-χ² node at least ``LOGG_SEPARATION`` in log g from the best
   one, for the Teff–log g valleys of hot stars, where a dwarf and a giant solution can sit at
   almost the same Teff (seen at 10 800 K, S/N 20: the Teff-distinct candidates all fell in the
   dwarf valley and the fit ended 2 dex from the truth's lower minimum).
5. **Fits** (``fit_multistart``): the chosen optimiser (LM or Adam) from every candidate, without
   Clean; each spectrum keeps the solution with the lowest loss (the same pixels and weights for
   every candidate, so the losses compare). LM candidates stop at the loose
   ``CANDIDATE_FTOL`` (1e-4), and the winner alone continues to the full tolerance: on the
   validation's mocks (250 hot stars at S/N 50, 250 of all Teff at S/N 10) this kept every
   winner's minimum, and every distinct minimum within 15 units of χ² of it (the ones the
   errors below need), at 7.1 and 6.6 iterations per candidate against 11.6 and 15.3 to the full
   tolerance. (Stopping the candidates after a fixed 2–4 iterations and dropping those far above
   the best lost the winner's minimum or a relevant distinct one in 0.4–2 % of the spectra: the
   candidates that end in the lowest minimum are often thousands of χ² units above the best
   after 3 iterations.) With Clean, one more fit with Clean starts from the winner.
6. **Errors across minima** (``mode_spread``): when the candidates end in distinct minima whose χ²
   is close to the winner's, the data do not decide between them and the winner's local
   covariance understates the uncertainty. Each distinct minimum k gets the Laplace weight of its
   posterior mass, w_k ∝ exp(−Δχ²_k/2)·√det Σ_k (Δχ² in units of the fit's reduced χ², as the
   covariance), and the reported covariance becomes Σ_winner + Σ_k w_k (θ_k − θ̂)(θ_k − θ̂)ᵀ: the
   second moment of the mixture about the reported point. Minima more than a few units of χ²
   above the winner add nothing; if the others hold ≥ 1 % of the mass the fit is flagged
   ``multimodal``.

Cost per spectrum (64 of the 25 LAMOST sample spectra, float64, the project's 2-core CPU, old
and new code alternating; ``benchmarks/start.py --base``): scoring 9 ms (was 49: 144 nodes × 2
passes of the full forward model per spectrum), candidate fits and winner 19 (was 23), profile
errors + spread between minima 5 (was 11); 33 in all (was 84), against 6.7 for LM from a fixed
start. The scoring then fell to 6.6 ms (9.3 in the same run) when ``projected_chi2``'s
recurrence ran in phases on the stretches of its arrays still needed (3.2 → 1.8 ms per spectrum
for its 144 nodes; 40 % of the sample's spectra score twice, with one or two pixels clipped).
The candidate fits are the floor: 4 candidates × ~7 LM iterations.
"""
from __future__ import annotations

import contextlib
import itertools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxlasp.compile_cache import program
from jaxlasp.emulators.tgm import Domain
from jaxlasp.fit.adam import fit_batch_adam
from jaxlasp.fit.driver import FAILURES, MU_LIMIT, MULTIMODAL, FitResult, fit_batch
from jaxlasp.fit.errors import check_errors, profile_errors
from jaxlasp.model import (
    FEH,
    LN_TEFF,
    LOGG,
    ForwardModel,
    broadened,
    emulate,
    full_theta,
    lattice_model,
    lattice_view,
    residuals,
)
from jaxlasp.spectral.broaden import SIGMA_FLOOR, TRUNCATION, pad_edges
from jaxlasp.spectral.continuum import cholesky_lower, legendre_nodes

START_SIGMA = 1.0
"""Broadening σ [pixels] of the grid nodes (the σ of ``jaxlasp.groups.inputs.start_points``)."""
TEFF_RANGE = (3200.0, 28000.0)
"""Teff span of the default grid [K], clipped to the model's domain."""
TEFF_NODES = 16
"""Teff nodes of the default grid, uniform in ln Teff (3200–28000 K: 15.5 % apart)."""
LOGG_NODES = (1.0, 2.75, 4.5)
"""log g nodes [dex]: giants, subgiants/hot stars, dwarfs."""
FEH_NODES = (-1.75, -0.75, 0.25)
"""[Fe/H] nodes [dex]: halo, thick disc, thin disc."""
MULTIMODAL_MASS = 0.01
"""Posterior mass in minima other than the winner's from which a fit is flagged ``multimodal``."""
THETA_RESOLUTION = 1e-10
"""Distance [× (1 + |θ|), per parameter] below which two candidates are one minimum whatever
their errors: the xtol of PyLASP's No Clean fit. Noise-free spectra have errors at round-off
(~1e-15), below the ~1e-12 by which fits of one minimum from different starts differ."""
LOGG_SEPARATION = 1.0
"""Least log g distance [dex] of the log g alternative from the best node (the default nodes are
1.75 dex apart)."""
SEPARATION = 0.2
"""Least ln Teff distance between chosen candidates (≈ 22 % in Teff, > one grid step)."""
SMOOTH_PIXELS = 25.0
"""σ [pixels] of the Gaussian that estimates the continuum for the cross-correlation."""
MAX_SHIFT = int(MU_LIMIT)
"""Largest |mu| [pixels] tried by the cross-correlation (the fit's box)."""
CANDIDATE_FTOL = 1e-4
"""ftol of the LM candidate fits (the winner then continues to the full tolerance): on 250 hot
mock stars at S/N 50 it kept every winner and every distinct minimum within 15 units of χ² of
it, at 7.1 LM iterations per candidate against 11.6 to the full tolerance."""
CLIP_SIGMAS = 5.0
"""Pixels whose residual at the best node exceeds this many robust σ are left out of the second
scoring pass (cosmic rays, sky residuals)."""


class StartGrid(NamedTuple):
    """Grid nodes; each field (m,): ln Teff [ln K], log g [dex], [Fe/H] [dex]."""

    ln_teff: np.ndarray
    logg: np.ndarray
    feh: np.ndarray


def default_grid(domain: Domain, teff_nodes: int = TEFF_NODES, logg=LOGG_NODES,
                 feh=FEH_NODES) -> StartGrid:
    """The product grid of ``teff_nodes`` Teff values uniform in ln Teff over ``TEFF_RANGE`` and
    the ``logg`` × ``feh`` values, all clipped to ``domain``; m = teff_nodes·len(logg)·len(feh)."""
    lo, hi = max(TEFF_RANGE[0], domain.teff[0]), min(TEFF_RANGE[1], domain.teff[1])
    ln_teff = np.linspace(np.log(lo), np.log(hi), teff_nodes)
    t, g, z = np.meshgrid(ln_teff, np.clip(logg, *domain.logg), np.clip(feh, *domain.feh),
                          indexing="ij")
    return StartGrid(t.ravel(), g.ravel(), z.ravel())


def grid_theta(grid: StartGrid, sigma: float = START_SIGMA):
    """θ (m, 5) of the grid nodes at mu = 0 with kernel width ``sigma`` [px]."""
    ln_teff = jnp.asarray(grid.ln_teff)
    return jnp.stack([jnp.zeros_like(ln_teff), jnp.full_like(ln_teff, sigma), ln_teff,
                      jnp.asarray(grid.logg, ln_teff.dtype), jnp.asarray(grid.feh, ln_teff.dtype)],
                     axis=-1)


def high_pass(flux, weights, width: float = SMOOTH_PIXELS):
    """flux / (weighted Gaussian smooth of flux) − 1 on used pixels, 0 elsewhere; shape (n,).

    Removes the continuum (any smooth multiplicative factor) before cross-correlating.
    """
    half = int(4 * width)
    x = jnp.arange(-half, half + 1)
    kernel = jnp.exp(-0.5 * (x / width) ** 2)
    used = (weights > 0).astype(flux.dtype)
    smooth = (jnp.convolve(flux * used, kernel, mode="same")
              / jnp.maximum(jnp.convolve(used, kernel, mode="same"), 1e-12))
    ratio = jnp.where(used > 0, flux / jnp.where(smooth != 0, smooth, 1.0) - 1.0, 0.0)
    return jnp.clip(ratio, -1.0, 1.0)


def shifted_copies(x, max_shift: int = MAX_SHIFT):
    """Rows x[i + ℓ] (zero outside) for ℓ = −max_shift..max_shift; shape (2·max_shift+1, n)."""
    n = x.shape[-1]
    padded = jnp.pad(x, max_shift)
    return jnp.stack([padded[max_shift + lag:max_shift + lag + n]
                      for lag in range(-max_shift, max_shift + 1)])


def peak_shift(ccf, max_shift: int = MAX_SHIFT):
    """Sub-pixel position [px] of the maximum of ``ccf`` (2·max_shift+1,) over shifts −max..max:
    the vertex of the parabola through the best integer shift and its neighbours."""
    k = jnp.clip(jnp.argmax(ccf), 1, ccf.shape[0] - 2)
    left, mid, right = ccf[k - 1], ccf[k], ccf[k + 1]
    curvature = left - 2 * mid + right
    concave = curvature < 0
    offset = jnp.where(concave, 0.5 * (left - right) / jnp.where(concave, curvature, -1.0), 0.0)
    return k - max_shift + jnp.clip(offset, -0.5, 0.5)


def node_velocities(templates, flux, weights, max_shift: int = MAX_SHIFT):
    """Kernel mean mu [px] (m,) of each node for one observed spectrum (n,).

    templates: (m, n) the nodes' spectra broadened at mu = 0, high-pass filtered. A kernel mean mu
    moves features to pixel i + mu (``broaden``), so node j's mu is the shift ℓ maximising the
    cross-correlation c_j(ℓ) = Σ_i o_{i+ℓ}·t_{j,i} (o: the high-pass filtered observation).
    """
    ccf = templates @ shifted_copies(high_pass(flux, weights), max_shift).T
    return jax.vmap(partial(peak_shift, max_shift=max_shift))(ccf)


def node_templates(fm: ForwardModel, nodes):
    """High-pass filtered spectra (m, n) of the nodes θ (m, 5), broadened at their (mu, σ)."""
    spectra = jax.vmap(broadened, in_axes=(None, 0))(fm, nodes)
    return jax.vmap(high_pass)(spectra, jnp.ones_like(spectra))


def node_chi2(fm: ForwardModel, nodes, flux, weights):
    """Variable-projection χ² = Σ_i r_i² (m,) of the nodes θ (m, 5) for one spectrum (n,):
    ``jaxlasp.model.residuals``, the Legendre polynomial solved for each node; NaN → +inf."""
    resid = jax.vmap(residuals, in_axes=(None, 0, None, None))(fm, nodes, flux, weights)
    chi2 = jnp.sum(resid * resid, axis=-1)
    return jnp.where(jnp.isnan(chi2), jnp.inf, chi2)


def chebyshev_matrix(n: int, degree: int) -> np.ndarray:
    """T_0..T_degree (Chebyshev polynomials of the first kind) at PyLASP's Legendre abscissae
    (``legendre_nodes(n)``), float64; shape (n, degree+1)."""
    x = legendre_nodes(n)
    basis = np.empty((n, degree + 1))
    basis[:, 0] = 1.0
    if degree >= 1:
        basis[:, 1] = x
    for k in range(1, degree):
        basis[:, k + 1] = 2.0 * x * basis[:, k] - basis[:, k - 1]
    return basis


def kernel_taps(sigma: float) -> int:
    """Half-width [px] of the sub-pixel kernel of ``shifted_nodes``: every node of the Gaussian
    kernel within TRUNCATION·σ of a centre δ ∈ [−0.5, 0.5]."""
    return int(np.floor(TRUNCATION * max(sigma, SIGMA_FLOOR) + 0.5)) + 1


def node_padding(sigma: float) -> int:
    """Edge padding [px] of the node spectra: the largest integer shift plus the kernel."""
    return MAX_SHIFT + 1 + kernel_taps(sigma)


class NodeSpectra(NamedTuple):
    """The grid nodes' spectra on the observed grid, computed once per forward model and group.

    padded: (m, n + 2·``node_padding(σ)``) emulator spectra, edges repeated (``pad_edges``).
    templates: (m, n) high-pass filtered spectra broadened at mu = 0 (``node_templates``).
    """

    padded: jax.Array
    templates: jax.Array


def node_spectra(fm: ForwardModel, nodes, sigma: float = START_SIGMA) -> NodeSpectra:
    """``NodeSpectra`` of the nodes θ (m, 5) (their mu is ignored, σ = ``sigma``)."""
    spectra = jax.vmap(lambda th: emulate(fm, jnp.exp(th[LN_TEFF]), th[LOGG], th[FEH]))(nodes)
    return NodeSpectra(pad_edges(spectra, node_padding(sigma)), node_templates(fm, nodes))


def shifted_nodes(padded, mu, sigma: float, n: int):
    """Node spectra (m, n) broadened with kernel mean ``mu`` (m,) and width ``sigma``: equal (to
    round-off) to ``broadened`` at θ = [mu_j, σ, node j].

    mu = k + δ, k = round(mu): the kernel's non-zero nodes are k + t, |t| ≤ ``kernel_taps``, so
    the broadened spectrum is the spectrum shifted by k pixels (a slice of the edge-padded one)
    convolved with the 2·taps+1 kernel values at t − δ, instead of the 2·halfwidth+1 taps.
    """
    taps, pad = kernel_taps(sigma), node_padding(sigma)
    k = jnp.round(mu)
    offsets = jnp.arange(-taps, taps + 1)
    x = ((k[:, None] + offsets) - mu[:, None]) / max(sigma, SIGMA_FLOOR)
    kernel = jnp.where(jnp.abs(x) <= TRUNCATION, jnp.exp(-0.5 * x * x), 0.0)
    kernel = kernel / jnp.sum(kernel, axis=1, keepdims=True)      # column taps + t
    start = (pad - taps - k).astype(jnp.int32)
    window = jax.vmap(lambda row, s: lax.dynamic_slice_in_dim(row, s, n + 2 * taps))(padded, start)
    out = kernel[:, -1:] * window[:, :n]
    for u in range(1, 2 * taps + 1):              # out_i = Σ_t K_t · spectrum[i − k − t]
        out = out + kernel[:, 2 * taps - u, None] * window[:, u:u + n]
    return out


PHASES = 5
"""Loops the recurrence of ``projected_chi2`` is split into, each on the shorter stretch of its
arrays that its steps still need (1.8× faster than one loop over whole arrays at degree 50)."""


@partial(jax.jit, static_argnames="phases")
def projected_chi2(moments, mixed, total, phases: int = PHASES):
    """min over polynomials p of degree D of Σ_i v_i (g_i − p(x_i))², for many (v, g) at once.

    moments: (B, 2D+1) Chebyshev moments μ_l = Σ_i v_i T_l(x_i); mixed: (B, D+1) Σ_i v_i g_i
    T_l(x_i); total: (B,) Σ_i v_i g_i². The minimum is total − bᵀA⁻¹b with A_kl = Σ v T_k T_l
    (any basis of the polynomials gives the same value). It is computed in O(D²) per problem by
    the modified Chebyshev algorithm (Gautschi 2004, §2.1.7): the recurrence coefficients
    (α_k, β_k) of the monic polynomials π_k orthogonal under the weights v follow from the
    moments of the monic Chebyshev polynomials p_l = T_l/2^(l−1) through the mixed moments
    σ_kl = Σ v π_k p_l; π_k's coefficients in p (c_kl) follow the same recurrence, and
    bᵀA⁻¹b = Σ_k (Σ_l c_kl ⟨g, p_l⟩)² / σ_kk. Non-positive-definite A gives NaN.

    Step k needs σ_{k−1,l} only for k − 1 ≤ l ≤ 2D + 1 − k and c_{k,l} only for l ≤ k (the
    others are zero), so the steps run in ``phases`` loops, each on the stretch of l that its
    steps need.
    """
    size = moments.shape[-1]
    degree = mixed.shape[-1] - 1
    dtype = moments.dtype
    monic = np.concatenate([[1.0], 0.5 ** np.arange(size - 1)])      # p_l = T_l · monic_l
    m = moments * monic
    g = mixed * monic[:degree + 1]
    # t·p_l = p_{l+1} + b_l p_{l−1}: b_1 = ½, b_l = ¼ for l ≥ 2
    order = np.arange(size + 1)
    recurrence = np.where(order == 1, 0.5, np.where(order > 1, 0.25, 0.0))

    def down(a):   # a[l + 1]
        return jnp.concatenate([a[:, 1:], jnp.zeros_like(a[:, :1])], axis=1)

    def up(a):     # a[l − 1]
        return jnp.concatenate([jnp.zeros_like(a[:, :1]), a[:, :-1]], axis=1)

    def phase(lo: int, width: int, c_width: int):
        """Steps on σ_{·,l}, lo ≤ l < lo + width, and c_{·,l}, l < c_width."""
        index = np.arange(lo, lo + width)
        b_l = jnp.asarray(recurrence[lo:lo + width], dtype)
        b_next = jnp.asarray(recurrence[1:c_width + 1], dtype)          # b_{l+1}
        g_phase = g[:, :c_width]

        def step(k, carry):
            sig_prev, sig, alpha, beta, c_prev, c, acc = carry
            new = down(sig) - alpha[:, None] * sig - beta[:, None] * sig_prev + b_l * up(sig)
            new = jnp.where((index >= k) & (index <= size - 1 - k), new, 0.0)
            norm, above = jnp.take(new, k - lo, axis=1), jnp.take(new, k + 1 - lo, axis=1)
            norm_prev = jnp.take(sig, k - 1 - lo, axis=1)
            above_prev = jnp.take(sig, k - lo, axis=1)
            c_new = up(c) + b_next * down(c) - alpha[:, None] * c - beta[:, None] * c_prev
            tau = jnp.sum(c_new * g_phase, axis=1)
            return (sig, new, above / norm - above_prev / norm_prev, norm / norm_prev, c, c_new,
                    acc + tau * tau / norm)
        return step

    c0 = jnp.zeros_like(g).at[:, 0].set(1.0)
    carry = (jnp.zeros_like(m), m, m[:, 1] / m[:, 0], m[:, 0], jnp.zeros_like(g), c0,
             g[:, 0] ** 2 / m[:, 0])
    bounds = np.unique(np.linspace(1, degree + 1, phases + 1).round().astype(int))
    lo = 0
    for first, stop in itertools.pairwise(bounds):
        # steps first..stop−1 read σ at l ∈ [first − 1, size − first] and make π_k, whose
        # coefficients c_{k,l} vanish for l > k, up to k = stop − 1
        shift, width = first - 1 - lo, size - 2 * (first - 1)
        c_width = min(stop, degree + 1)
        sig_prev, sig, alpha, beta, c_prev, c, acc = carry
        sig_prev, sig = sig_prev[:, shift:shift + width], sig[:, shift:shift + width]
        c_prev, c = (jnp.pad(a[:, :c_width], ((0, 0), (0, max(0, c_width - a.shape[1]))))
                     for a in (c_prev, c))
        lo = first - 1
        carry = lax.fori_loop(int(first), int(stop), phase(lo, width, c_width),
                              (sig_prev, sig, alpha, beta, c_prev, c, acc))
    return total - carry[-1]


def batched_node_chi2(models, flux, weights, chebyshev):
    """Variable-projection χ² (m,) of node models (m, n) for one spectrum (n,): equal to
    ``node_chi2`` (to round-off) when ``models`` are the nodes' broadened spectra and
    ``chebyshev`` = ``chebyshev_matrix(n, 2·degree)``. The moments of all nodes are two matrix
    products; the projections ``projected_chi2``. NaN → +inf."""
    degree = (chebyshev.shape[1] - 1) // 2
    weighted = models * weights
    moments = (weighted * models) @ chebyshev
    mixed = (weighted * flux) @ chebyshev[:, :degree + 1]
    total = jnp.broadcast_to(jnp.sum(weights * flux * flux), models.shape[:1])
    chi2 = projected_chi2(moments, mixed, total)
    return jnp.where(jnp.isnan(chi2), jnp.inf, chi2)


def clip_outliers(resid, weights, n_sigma: float = CLIP_SIGMAS):
    """Good-pixel mask (n,): used pixels (weights > 0) whose |resid| ≤ n_sigma × 1.4826·MAD of
    the used residuals (a robust σ that outliers do not inflate)."""
    used = weights > 0
    size = jnp.abs(jnp.where(used, resid, jnp.nan))
    return used & (size <= n_sigma * 1.4826 * jnp.nanmedian(size))


def distinct_best(chi2, ln_teff, n_best: int, separation: float = SEPARATION):
    """Indices (n_best,) of the lowest-χ² nodes, each at least ``separation`` in ln Teff from the
    ones chosen before it; when no node is that far, the lowest-χ² node not yet chosen."""
    chosen = jnp.zeros(chi2.shape, bool)
    near = jnp.zeros(chi2.shape, bool)
    picks = []
    for _ in range(n_best):
        fallback = jnp.where(chosen, jnp.inf, chi2)
        distinct = jnp.where(near, jnp.inf, fallback)
        pick = jnp.where(jnp.isfinite(jnp.min(distinct)), jnp.argmin(distinct),
                         jnp.argmin(fallback))
        picks.append(pick)
        chosen = chosen.at[pick].set(True)
        near = near | (jnp.abs(ln_teff - ln_teff[pick]) < separation)
    return jnp.stack(picks)


def best_at_other_logg(chi2, logg, picks, separation: float = LOGG_SEPARATION):
    """Index of the lowest-χ² node not in ``picks`` whose log g is at least ``separation`` from
    that of ``picks[0]`` (the best node); when there is none, the lowest-χ² node not in picks."""
    chosen = jnp.zeros(chi2.shape, bool).at[picks].set(True)
    fallback = jnp.where(chosen, jnp.inf, chi2)
    distinct = jnp.where(jnp.abs(logg - logg[picks[0]]) < separation, jnp.inf, fallback)
    return jnp.where(jnp.isfinite(jnp.min(distinct)), jnp.argmin(distinct), jnp.argmin(fallback))


def choose_candidates(chi2, nodes, n_best: int, separation, with_logg: bool):
    """Indices of the candidates: ``distinct_best`` in Teff, plus ``best_at_other_logg``."""
    picks = distinct_best(chi2, nodes[:, LN_TEFF], n_best, separation)
    if not with_logg:
        return picks
    return jnp.append(picks, best_at_other_logg(chi2, nodes[:, LOGG], picks))


@program(static_argnames=("n_best", "with_logg", "sigma"))
def _global_start(fm: ForwardModel, nodes, flux, weights, n_best: int, separation,
                  with_logg: bool, sigma: float = START_SIGMA):
    """(θ₀ (b, k, 5), good-pixel masks (b, n)) for θ nodes (m, 5) at mu = 0 and σ = ``sigma``,
    k = n_best + with_logg. The nodes' spectra are computed once (``node_spectra``), then the
    spectra are scored one at a time (bounded memory); the second, clipped scoring pass runs only
    for spectra where ``clip_outliers`` removed a pixel (otherwise it would repeat the first).
    With native pixels the scoring (cross-correlation, node χ²) runs on the data put onto the
    kernel grid (``lattice_view``); the outlier pixels are found on the native pixels."""
    native = fm.pixels is not None
    scorer = lattice_model(fm) if native else fm
    n = scorer.grid.n
    spectra = node_spectra(scorer, nodes, sigma)
    degree = scorer.legendre.basis.shape[1] - 1
    chebyshev = jnp.asarray(chebyshev_matrix(n, 2 * degree), nodes.dtype)

    def scored(f, w):   # the data as scored: native pixels put onto the kernel grid
        return lattice_view(fm, f, w) if native else (f, w)

    def one(data):
        f, w = data
        fs, ws = scored(f, w)
        mu = node_velocities(spectra.templates, fs, ws)
        candidates = nodes.at[:, 0].set(mu)
        models = shifted_nodes(spectra.padded, mu, sigma, n)
        chi2 = batched_node_chi2(models, fs, ws, chebyshev)
        best = candidates[jnp.argmin(chi2)]
        good = clip_outliers(residuals(fm, best, f, w), w)
        chi2 = lax.cond(jnp.all(good == (w > 0)), lambda: chi2,
                        lambda: batched_node_chi2(models, *scored(f, w * good), chebyshev))
        return candidates[choose_candidates(chi2, nodes, n_best, separation, with_logg)], good

    return lax.map(one, (flux, weights))


def start_candidates(fm: ForwardModel, flux, weights, *, grid: StartGrid | None = None,
                     n_best: int = 3, separation: float = SEPARATION,
                     sigma: float = START_SIGMA, logg_alternative: bool = True):
    """(θ₀ (b, k, 5), good (b, n)): ``global_start``'s k candidates and the pixels it scored
    them on (used pixels minus the outliers of ``clip_outliers``)."""
    grid = default_grid(fm.emulator.domain) if grid is None else grid
    if not 1 <= n_best + logg_alternative <= grid.ln_teff.size:
        raise ValueError(f"n_best must be between 1 and the {grid.ln_teff.size} grid nodes")
    nodes = full_theta(fm, grid_theta(grid, sigma))
    flux, weights = jnp.asarray(flux, nodes.dtype), jnp.asarray(weights, nodes.dtype)
    return _global_start(fm, nodes, flux, weights, n_best, separation, bool(logg_alternative),
                         float(sigma))


def global_start(fm: ForwardModel, flux, weights, *, grid: StartGrid | None = None,
                 n_best: int = 3, separation: float = SEPARATION, sigma: float = START_SIGMA,
                 logg_alternative: bool = True):
    """Start points θ₀ (b, k, 5) for spectra (b, n) on ``fm``'s grid, best first; k = n_best
    (+ 1 with ``logg_alternative``).

    flux, weights: as ``fit_batch`` (weights = 1/err² times the good-pixel mask). grid: the nodes
    (default ``default_grid(fm.emulator.domain)``); every node gets its own mu from the
    cross-correlation and the fixed width ``sigma`` [px] and is scored by its χ²; the scoring is
    repeated without the pixels that are outliers at the best node (``clip_outliers``), and the
    n_best distinct best (``distinct_best``), then the best at another log g
    (``best_at_other_logg``), are returned. Deterministic.
    """
    return start_candidates(fm, flux, weights, grid=grid, n_best=n_best, separation=separation,
                            sigma=sigma, logg_alternative=logg_alternative)[0]


def fit_one_method(fm: ForwardModel, theta0, flux, weights, *, method: str, clean: bool,
                   max_iter: int | None, warm: bool = False) -> FitResult:
    """Fit spectra (b, n) from θ₀ (b, 5) with "lm" (``fit_batch``), "curvefit"
    (``fit_batch(path="curvefit")``) or "adam" (``fit_batch_adam``); ``max_iter`` None takes the
    method's default (100 / 5000; curvefit: MINPACK's evaluation limit); ``warm`` (θ₀ are
    solutions already) as ``fit_batch``'s, for "lm"."""
    if method in ("lm", "curvefit"):
        return fit_batch(fm, theta0, flux, weights, use_clean=clean, max_iter=max_iter or 100,
                         path="exact" if method == "lm" else "curvefit", warm=warm)
    if method == "adam":
        return fit_batch_adam(fm, theta0, flux, weights, clean=clean,
                              max_iter=max_iter or 5000)[0]
    raise ValueError(f"method must be 'lm', 'curvefit' or 'adam', not {method!r}")


@program(static_argnames=("n_best",))
def best_of(result: FitResult, n_best: int) -> FitResult:
    """Per spectrum, the candidate fit with the lowest finite loss, from a result whose rows are
    n_best consecutive candidates of each spectrum (b·n_best rows → b rows)."""
    loss = jnp.where(jnp.isfinite(result.loss), result.loss, jnp.inf).reshape(-1, n_best)
    rows = jnp.arange(loss.shape[0]) * n_best + jnp.argmin(loss, axis=1)
    return jax.tree_util.tree_map(lambda a: a[rows], result)


def mode_weights(result: FitResult, used, n_best: int):
    """Laplace posterior weights (b, n_best), summing to 1, of candidate fits whose rows are n_best
    consecutive candidates per spectrum; used: (b·n_best, n) pixels each fit could use.

    A candidate gets weight 0 when it failed (any of ``FAILURES``) or lies inside a lower-loss
    candidate's minimum (every parameter within that one's error, or within ``THETA_RESOLUTION``
    of it where the error is smaller: a noise-free spectrum's), so that a minimum counts once.
    Δχ² = (M − p)·(loss²/loss²_min − 1): χ² differences in units of the winner's reduced χ²,
    the scale of its covariance (M: the winner's used pixels, p: θ's length).
    """
    rows = lambda a: a.reshape((-1, n_best) + a.shape[1:])  # noqa: E731
    theta, cov = rows(result.theta), rows(result.covariance)
    ok = (rows(result.flags) & FAILURES) == 0
    low = jax.vmap(jax.vmap(cholesky_lower))(cov)
    log_det = 2.0 * jnp.sum(jnp.log(jnp.diagonal(low, axis1=-2, axis2=-1)), axis=-1)
    ok = ok & jnp.isfinite(rows(result.loss)) & jnp.isfinite(log_det)
    loss2 = jnp.where(ok, rows(result.loss) ** 2, jnp.inf)
    order = jnp.arange(n_best)
    lower = (loss2[:, :, None] < loss2[:, None, :]) | (
        (loss2[:, :, None] == loss2[:, None, :]) & (order[:, None] < order[None, :]))
    error = jnp.sqrt(jnp.abs(jnp.diagonal(cov, axis1=-2, axis2=-1)))
    reach = jnp.maximum(error, THETA_RESOLUTION * (1.0 + jnp.abs(theta)))
    inside = jnp.all(jnp.abs(theta[:, :, None] - theta[:, None, :]) < reach[:, :, None], axis=-1)
    ok = ok & ~jnp.any(lower & inside & ok[:, :, None], axis=1)
    best = jnp.argmin(loss2, axis=1)
    n_used = jnp.take_along_axis(rows(jnp.sum(used & result.mask, axis=1)), best[:, None], 1)
    delta = (n_used - theta.shape[-1]) * (loss2 / jnp.min(loss2, axis=1, keepdims=True) - 1.0)
    log_w = jnp.where(ok, -0.5 * delta + 0.5 * log_det, -jnp.inf)
    log_w = log_w - jnp.max(log_w, axis=1, keepdims=True)
    w = jnp.where(ok, jnp.exp(log_w), 0.0)
    return w / jnp.sum(w, axis=1, keepdims=True)


@program(static_argnames=("n_best",))
def mode_spread(result: FitResult, used, n_best: int):
    """(spread (b, p, p), mass elsewhere (b,)): Σ_k w_k (θ_k − θ̂)(θ_k − θ̂)ᵀ over the candidates'
    distinct minima (``mode_weights``), θ̂ the lowest-loss candidate, and the weight outside θ̂'s
    minimum. Zero when every candidate failed."""
    w = mode_weights(result, used, n_best)
    theta = result.theta.reshape(-1, n_best, result.theta.shape[-1])
    loss = jnp.where(jnp.isfinite(result.loss), result.loss, jnp.inf).reshape(-1, n_best)
    best = jnp.argmin(loss, axis=1)
    d = theta - jnp.take_along_axis(theta, best[:, None, None], 1)
    w = jnp.where(jnp.isfinite(w), w, 0.0)
    spread = jnp.einsum("bk,bki,bkj->bij", w, d, d)
    return spread, 1.0 - jnp.take_along_axis(w, best[:, None], 1)[:, 0]


def fit_multistart(fm: ForwardModel, flux, weights, *, method: str = "lm", clean: bool = False,
                   n_best: int = 3, grid: StartGrid | None = None, max_iter: int | None = None,
                   separation: float = SEPARATION, logg_alternative: bool = True,
                   errors: str = "profile", candidate_ftol: float | None = CANDIDATE_FTOL,
                   timer=None) -> FitResult:
    """Fit spectra (b, n) from the global start: the best of its candidate fits per spectrum
    (n_best distinct in Teff, plus one at another log g with ``logg_alternative``).

    The candidates (``global_start``) are fitted with ``method`` ("lm", "curvefit" or "adam")
    without Clean and the lowest loss wins. With "lm" the candidates stop at the loose
    ``candidate_ftol`` (None: the full tolerance) and only the winner continues to the full
    tolerance (``fit_batch``'s). Without ``clean`` they are fitted on all used pixels and the
    winner is the result. With ``clean`` they are fitted without the start's outlier pixels
    (``clip_outliers``: a cosmic ray must not choose the basin), and the winner's solution starts
    the fit with Clean on all used pixels. Returns a FitResult of b rows (``n_iter``: of the
    winning candidate's fit and its continuation, or of the Clean fit) whose covariance, rescaled
    to the χ² profile with ``errors="profile"`` (``jaxlasp.fit.errors``), includes the spread
    between distinct minima (``mode_spread``), flagged ``multimodal`` when other minima hold
    ≥ ``MULTIMODAL_MASS`` of the posterior mass.

    timer: None, or a callable ``timer(stage)`` returning a context manager, entered around the
    stages "start" (candidate scoring), "fit" (candidate fits and the winner), "clean" (the Clean
    fit, with ``clean``) and "errors" (profile errors and the spread between minima); each stage's
    outputs are then waited for (``jax.block_until_ready``) inside its block. With None nothing
    is waited for (the function is also traced inside ``shard_map``).
    """
    check_errors(errors)

    def stage(name):
        return contextlib.nullcontext() if timer is None else timer(name)

    def ready(tree):
        return tree if timer is None else jax.block_until_ready(tree)

    flux, weights = jnp.asarray(flux), jnp.asarray(weights)
    with stage("start"):
        theta0, good = ready(start_candidates(fm, flux, weights, grid=grid, n_best=n_best,
                                              separation=separation,
                                              logg_alternative=logg_alternative))
    k, size = theta0.shape[1:]
    repeat = partial(jnp.repeat, repeats=k, axis=0)
    fit_weights = weights * good if clean else weights
    loose = method == "lm" and candidate_ftol is not None
    with stage("fit"):
        if loose:
            candidates = fit_batch(fm, theta0.reshape(-1, size), repeat(flux),
                                   repeat(fit_weights), max_iter=max_iter or 100,
                                   ftol=candidate_ftol)
        else:
            candidates = fit_one_method(fm, theta0.reshape(-1, size), repeat(flux),
                                        repeat(fit_weights), method=method, clean=False,
                                        max_iter=max_iter)
        result = best_of(candidates, k)
        if loose and not clean:
            final = fit_batch(fm, result.theta, flux, weights, max_iter=max_iter or 100)
            result = final._replace(n_iter=final.n_iter + result.n_iter)
        result = ready(result)
    if clean:
        with stage("clean"):
            result = ready(fit_one_method(fm, result.theta, flux, weights, method=method,
                                          clean=True, max_iter=max_iter, warm=True))
    with stage("errors"):
        if errors == "profile":
            result = profile_errors(fm, result, flux, weights)
        spread, elsewhere = mode_spread(candidates, repeat(fit_weights) > 0, k)
        result = ready(result._replace(
            covariance=result.covariance + spread,
            flags=result.flags | MULTIMODAL * (elsewhere >= MULTIMODAL_MASS)))
    return result
