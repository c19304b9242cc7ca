"""Line-list emulator (blase3D): a spectral grid cloned into pseudo-Voigt lines, interpolated.

Method (Shankar, Gully-Santiago & Morley, blase3D; blase: Gully-Santiago & Morley 2022):

1. Source grid: flux F on a rectilinear (Teff, log g, [Fe/H]) grid, divided by a smooth
   continuum C (``fit_continuum``) to give the normalised spectrum S̄ = F / C.
2. Cloning: lines are detected in 1 − S̄ with a prominence threshold, and the clone
   S(λ) = Π_j (1 − a_j V_j(λ))  (blase's product of line transmissions; no extra polynomial P,
   the source is already continuum-normalised) is fitted to S̄ by Adam over the four parameters of
   every line: centre μ′ [Å], ln a (a [Å]: V_j has unit area, so a_j is an equivalent-width-like
   amplitude), Gaussian σ [Å] and Lorentzian half width γ [Å] (optimised as ln σ, ln γ so they
   stay positive; stored as σ, γ). A second pass (``missed_lines``) adds lines at the minima of
   S̄ − clone that are not cloned lines (blends, shoulders) and refits from the first fit.
3. Identification: a line is the same line at every grid node where its pre-optimisation centre
   is equal at 0.01 Å; where it was not detected its ln a is −1000 (it vanishes).
4. Manifolds: each line's (μ′, ln a, σ, γ) is interpolated linearly over the regular grid
   (``interpolate``, differentiable in the parameters); so is the continuum (its Legendre
   coefficients). Only the lines present at a corner of the point's grid cell are interpolated
   and evaluated (``cell_lines``): on the 480-node ELODIE grid of ``benchmarks/lines.py`` at most
   3792 of the 7451 distinct lines.

That is ``build_linelist_emulator(method="blase3d")``. Its clones are close at the nodes but poor
between them: each node is fitted alone, so neighbouring nodes split a blend differently and a
line detected one pixel apart at two nodes is two lines, each vanishing at the other node; the
interpolated spectrum is then worse than the nearest node's and a fit ends on a node. The default,
``method="shared"``, replaces steps 2–3: the detections of all nodes are pooled into one line list
(``pooled_lines``; detections of different nodes within one pixel are one line), every node
starts from that list, and the whole grid is cloned at once by Adam on the mean squared residual
plus a penalty on each line parameter's second difference across the nodes (``clone_grid``,
``roughness``), so the parameters vary smoothly and step 4's interpolation follows the spectra
between the nodes (``benchmarks/lines.py``: LM errors on off-node spectra several times smaller).

Profile: the pseudo-Voigt of Ida, Ando & Toraya (2000) in the Thompson–Cox–Hastings form, with the
width f and the Lorentz fraction η from σ and γ (blase paper Eq. 2; ``tch_width_eta``).

Banded evaluation: each line is evaluated on a fixed window of 2·halfwidth + 1 pixels around its
centre pixel (the wing cut) and ln(1 − aV) is scatter-added into the spectrum. For L lines the cost
is L·(2h+1) profile evaluations instead of L·n for a dense L × n evaluation; with ~1000 lines on
the 7506-pixel ELODIE grid and h = 64 that is 58× fewer, and XLA's CPU scatter-add of those values
costs little: 3436 lines, one spectrum on a 2-core CPU: 10 ms banded against 168 ms dense
(``benchmarks/lines.py``). The window start is an
integer (piecewise constant in the parameters, no gradient); the gradient flows through the
profile values at the pixel wavelengths.

The emulator's flux ``linelist_flux(em, teff, logg, feh)`` = continuum × clone is a spectrum on a
linear wavelength grid like ``tgm_flux`` gives, so the forward model can resample, broaden and
multiply it by its Legendre polynomial unchanged (it cannot fold the resampling into the emulator,
which is not linear in its parameters: the forward model must resample each spectrum).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxlasp.emulators.tgm import Domain, TGMEmulator, tgm_flux
from jaxlasp.grids import LinearGrid

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))
"""Full width at half maximum of a Gaussian per σ."""
TCH_WIDTH = (1.0, 2.69269, 2.42843, 4.47163, 0.07842, 1.0)
"""Coefficients v_n of f⁵ = Σ_n v_n f_G^(5−n) f_Lⁿ (Ida et al. 2000; blase Eq. 2)."""
TCH_ETA = (1.36603, -0.47719, 0.11116)
"""Coefficients of η = Σ_k c_k (f_L/f)^(k+1)."""
MISSING_LN_AMP = -1000.0
"""ln a of a line at the grid nodes where it was not detected (blase3D)."""
PROMINENCE = 0.005
"""Detection threshold in normalised flux (blase3D)."""
CENTRE_PRECISION = 0.01
"""Precision [Å] at which pre-optimisation centres identify a line across the grid."""
HALFWIDTH = 64
"""Default wing cut: each line is evaluated on 2·64 + 1 pixels (±12.8 Å at 0.2 Å/pixel)."""
CONTINUUM_DEGREE = 5
"""Degree of the Legendre continuum (blase3D's 5th-order polynomial)."""
CONTINUUM_BLOCK = 100
"""Pixels per block whose maximum is a continuum point (20 Å at 0.2 Å/pixel)."""
AMPLITUDE_SPACES = ("log", "linear")
"""Spaces in which line amplitudes are interpolated (``LineListEmulator.amplitude``)."""
MAX_DEPTH = 1.0 - 1e-9
"""Largest a·V used in ln(1 − aV): keeps the logarithm finite (the factor saturates beyond)."""
CLONE_METHODS = ("shared", "blase3d")
"""How the grid is cloned (``build_linelist_emulator``)."""
MERGE_PIXELS = 1
"""Detections of different nodes at most this many pixels apart are one line (shared clone)."""
SMOOTHNESS = 1e-5
"""Weight of the shared clone's grid-roughness penalty against the mean squared residual."""


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


# ---------------------------------------------------------------------------------------------
# Continuum and source grid


def _unit_x(n: int):
    """Pixel positions mapped to [−1, 1] over a grid of n pixels; (n,)."""
    return np.linspace(-1.0, 1.0, n)


def fit_continuum(flux, degree: int = CONTINUUM_DEGREE, block: int = CONTINUUM_BLOCK,
                  iterations: int = 5, anchors: int = 2 * (CONTINUUM_DEGREE + 1)) -> np.ndarray:
    """Legendre coefficients (degree+1,) of an upper-envelope continuum of ``flux`` (n,) (host).

    The maximum of every block of ``block`` pixels is a candidate continuum point; a Legendre
    series in x ∈ [−1, 1] (over the pixels) is fitted through them, and block maxima more than
    0.5 % below the fit (blocks inside absorption bands) are dropped and the fit repeated. In each
    of ``anchors`` equal segments of the spectrum the block highest relative to the fit is always
    kept: without them the blocks of a cool star's molecular bands are dropped until a few, bunched
    points are left and the polynomial crosses zero between them.
    """
    flux = np.asarray(flux, np.float64)
    x = _unit_x(flux.size)
    n_block = flux.size // block
    peak = np.argmax(flux[:n_block * block].reshape(n_block, block), axis=1)
    peak = peak + block * np.arange(n_block)
    anchors = min(anchors, n_block)
    segment = np.arange(n_block) * anchors // n_block
    keep = np.ones(n_block, bool)
    for _ in range(iterations):
        coef = np.polynomial.legendre.legfit(x[peak[keep]], flux[peak[keep]], degree)
        ratio = flux[peak] / np.polynomial.legendre.legval(x[peak], coef)
        new = ratio >= 1.0 - 0.005
        for s in range(anchors):
            inside = np.flatnonzero(segment == s)
            new[inside[np.argmax(ratio[inside])]] = True
        if np.array_equal(new, keep):
            break
        keep = new
    return coef


def continuum_values(coef, n: int, first: int = 0, n_full: int | None = None):
    """Legendre continuum Σ_k c_k P_k(x) on pixels first..first+n−1 of an n_full-pixel grid; (n,).

    ``coef`` (degree+1,) is a JAX or NumPy array; x ∈ [−1, 1] spans the full (uncropped) grid.
    """
    n_full = n if n_full is None else n_full
    x = jnp.asarray(_unit_x(n_full)[first:first + n])
    p_prev, p = jnp.ones_like(x), x
    total = coef[0] * p_prev + (coef[1] * p if coef.shape[0] > 1 else 0.0)
    for k in range(2, coef.shape[0]):
        p_prev, p = p, ((2 * k - 1) * x * p - (k - 1) * p_prev) / k
        total = total + coef[k] * p
    return total


class SourceGrid(NamedTuple):
    """Spectra on a rectilinear (Teff, log g, [Fe/H]) grid, with continua (host NumPy arrays).

    axes: (teff [K], logg [dex], feh [dex]) increasing node values, each a tuple of ≥ 2 floats.
    flux: (nT, ng, nz, n) spectra on ``grid``; continuum: (nT, ng, nz, degree+1) Legendre
    coefficients (``fit_continuum``); normalised: (nT, ng, nz, n) flux / continuum.
    grid: the linear wavelength grid [Å]; domain: the parameter box the grid spans.
    """

    axes: tuple
    flux: np.ndarray
    continuum: np.ndarray
    normalised: np.ndarray
    grid: LinearGrid
    domain: Domain


def source_grid(tgm: TGMEmulator, teff, logg, feh, degree: int = CONTINUUM_DEGREE) -> SourceGrid:
    """Spectra of the TGM emulator at every node of the grid teff × logg × feh, normalised.

    teff [K], logg, feh [dex]: increasing 1-d node values (≥ 2 each).
    """
    axes = tuple(tuple(float(v) for v in np.asarray(a, np.float64)) for a in (teff, logg, feh))
    if any(len(a) < 2 or np.any(np.diff(a) <= 0) for a in axes):
        raise ValueError("each grid axis needs ≥ 2 strictly increasing nodes")
    mesh = [m.ravel() for m in np.meshgrid(*axes, indexing="ij")]
    flux = np.asarray(jax.jit(jax.vmap(tgm_flux, in_axes=(None, 0, 0, 0)))(tgm, *mesh), np.float64)
    continuum = np.stack([fit_continuum(f, degree) for f in flux])
    values = np.stack([np.asarray(continuum_values(c, f.size)) for c, f in zip(continuum, flux)])
    shape = tuple(len(a) for a in axes)
    domain = Domain(*((a[0], a[-1]) for a in axes))
    return SourceGrid(axes, flux.reshape(*shape, -1), continuum.reshape(*shape, -1),
                      (flux / values).reshape(*shape, -1), tgm.grid, domain)


# ---------------------------------------------------------------------------------------------
# Detection and cloning


class Detected(NamedTuple):
    """Lines found in one normalised spectrum (host arrays of shape (k,))."""

    pixel: np.ndarray       # int, pixel of the minimum
    prominence: np.ndarray  # depth above the surrounding saddle, normalised flux
    width: np.ndarray       # full width at half prominence [pixels]


def detect_lines(normalised, prominence: float = PROMINENCE) -> Detected:
    """Absorption lines of a normalised spectrum (n,): minima of prominence ≥ ``prominence``."""
    from scipy.signal import find_peaks

    pixel, props = find_peaks(1.0 - np.asarray(normalised, np.float64), prominence=prominence,
                              width=0)
    return Detected(pixel, props["prominences"], props["widths"])


def initial_lines(found: Detected, grid: LinearGrid, size: int) -> tuple[Lines, np.ndarray]:
    """Start values of the clone for ``found``, padded to ``size`` lines, and the validity mask.

    μ: the detected pixel's wavelength; σ, γ from the measured width w [pixels] (clipped to
    1–10, then in Å): a Gaussian FWHM of 0.8·w and γ = 0.05·w; a such that the line's central depth
    a·V(0) equals its prominence (≤ 0.95). Padding lines have ln a = −1000 (no absorption).
    """
    k = found.pixel.size
    if k > size:
        raise ValueError(f"{k} lines do not fit in {size} slots")
    width = np.clip(found.width, 1.0, 10.0) * grid.step
    sigma = 0.8 * width / FWHM_PER_SIGMA
    gamma = 0.05 * width
    peak = np.asarray(pseudo_voigt(0.0, jnp.asarray(sigma), jnp.asarray(gamma)))
    ln_amp = np.log(np.minimum(found.prominence, 0.95) / peak)

    def pad(values, fill):
        return np.concatenate([values, np.full(size - k, fill)])

    lines = Lines(pad(grid.centres[found.pixel], grid.start), pad(ln_amp, MISSING_LN_AMP),
                  pad(sigma, grid.step), pad(gamma, grid.step))
    return lines, np.arange(size) < k


def missed_lines(target, clone_flux, taken, prominence: float = PROMINENCE) -> Detected:
    """Absorption the clone misses: minima of target − clone (n,) of prominence ≥ ``prominence``
    at pixels not in ``taken`` (the pixels of the lines already cloned)."""
    found = detect_lines(1.0 + np.asarray(target) - np.asarray(clone_flux), prominence)
    keep = ~np.isin(found.pixel, taken)
    return Detected(*(a[keep] for a in found))


def stack_starts(found: list[Detected], grid: LinearGrid) -> tuple[Lines, np.ndarray]:
    """``initial_lines`` of every spectrum's ``found``, padded to the longest; fields (B, L)."""
    size = max(max(f.pixel.size for f in found), 1)
    starts = [initial_lines(f, grid, size) for f in found]
    return Lines(*(np.stack([s[0][k] for s in starts]) for k in range(4))), \
        np.stack([s[1] for s in starts])


def _to_free(lines: Lines) -> Lines:
    """Free parameters of the optimisation: (μ′, ln a, ln σ, ln γ)."""
    return lines._replace(sigma=jnp.log(lines.sigma), gamma=jnp.log(lines.gamma))


def _from_free(free: Lines) -> Lines:
    """Line parameters from the free parameters (inverse of ``_to_free``)."""
    return free._replace(sigma=jnp.exp(free.sigma), gamma=jnp.exp(free.gamma))


def clone_loss(free: Lines, target, grid: LinearGrid, halfwidth: int):
    """Mean squared difference between the clone of ``free`` (ln σ, ln γ) and ``target`` (n,)."""
    return jnp.mean((transmission(_from_free(free), grid, halfwidth) - target) ** 2)


def clone(target, lines: Lines, mask, grid: LinearGrid, halfwidth: int = HALFWIDTH,
          epochs: int = 100, learning_rate: float = 0.05) -> tuple[Lines, jax.Array]:
    """Fit the line parameters to one normalised spectrum by Adam (blase); (lines, final RMS).

    target: (n,) normalised flux on ``grid``; lines: start values, fields (L,); mask: (L,) bool,
    False for padding (held fixed). Adam (``learning_rate``, ``epochs`` full-spectrum steps) on
    (μ′, ln a, ln σ, ln γ) minimises the mean squared residual.
    """
    optimiser = optax.adam(learning_rate)
    grad = jax.value_and_grad(clone_loss)

    def step(carry, _):
        free, state = carry
        loss, g = grad(free, target, grid, halfwidth)
        g = jax.tree.map(lambda v: jnp.where(mask, v, 0.0), g)
        updates, state = optimiser.update(g, state, free)
        return (optax.apply_updates(free, updates), state), loss

    free = _to_free(lines)
    (free, _), _ = lax.scan(step, (free, optimiser.init(free)), None, length=epochs)
    return _from_free(free), jnp.sqrt(clone_loss(free, target, grid, halfwidth))


def _pad_rows(a, pad: int) -> np.ndarray:
    """``a`` (host) with its last row repeated ``pad`` times (a batch filled to whole chunks)."""
    a = np.asarray(a)
    return np.concatenate([a, np.repeat(a[-1:], pad, axis=0)])


_clone_batch = jax.jit(jax.vmap(clone, in_axes=(0, 0, 0, None, None, None, None)),
                       static_argnums=(3, 4, 5))


def clone_batch(targets, lines: Lines, mask, grid: LinearGrid, halfwidth: int = HALFWIDTH,
                epochs: int = 100, learning_rate: float = 0.05, chunk: int = 8):
    """``clone`` vmapped over spectra (B, n), lines (B, L) and mask (B, L), ``chunk`` at a time.

    Returns the fitted lines (B, L) and the RMS of clone − target per spectrum (B,).
    """
    b = np.shape(targets)[0]
    pad = -b % chunk
    targets, mask = _pad_rows(targets, pad), _pad_rows(mask, pad)
    lines = Lines(*(_pad_rows(p, pad) for p in lines))
    out, rms = [], []
    for i in range(0, b + pad, chunk):
        part = slice(i, i + chunk)
        fitted, r = _clone_batch(jnp.asarray(targets[part]), Lines(*(jnp.asarray(p[part])
                                 for p in lines)), jnp.asarray(mask[part]), grid, halfwidth,
                                 epochs, learning_rate)
        out.append(fitted)
        rms.append(r)
    fitted = Lines(*(np.concatenate([np.asarray(o[k]) for o in out])[:b] for k in range(4)))
    return fitted, np.concatenate([np.asarray(r) for r in rms])[:b]


# ---------------------------------------------------------------------------------------------
# Shared clone: one line list for the whole grid, fitted jointly and smoothly


def pooled_lines(found: list[Detected], grid: LinearGrid, merge: int = MERGE_PIXELS) -> Lines:
    """One start list for every node from the detections of all nodes; fields (M,).

    The start values of every node's detections (``initial_lines``) are sorted by centre and
    merged into one line while they lie at most ``merge`` pixels from the previous detection and
    come from different nodes (two lines of one spectrum stay two lines). A merged line starts at
    the mean centre and the median ln a, σ, γ of its detections.
    """
    if not any(f.pixel.size for f in found):
        return Lines(*(np.zeros(0) for _ in Lines._fields))
    starts = [initial_lines(f, grid, f.pixel.size)[0] for f in found]
    node = np.concatenate([np.full(f.pixel.size, i) for i, f in enumerate(found)])
    pixel = np.concatenate([f.pixel for f in found])
    values = [np.concatenate([np.asarray(getattr(s, name)) for s in starts])
              for name in Lines._fields]
    order = np.lexsort((node, pixel))
    node, pixel = node[order], pixel[order]
    label = np.zeros(pixel.size, int)
    members = set(node[:1])
    for i in range(1, pixel.size):
        if pixel[i] - pixel[i - 1] > merge or node[i] in members:
            label[i], members = label[i - 1] + 1, set()
        else:
            label[i] = label[i - 1]
        members.add(node[i])
    bounds = np.flatnonzero(np.diff(label)) + 1
    groups = [np.split(v[order], bounds) for v in values]
    mu = np.array([g.mean() for g in groups[0]])
    rest = [np.array([np.median(g) for g in field]) for field in groups[1:]]
    return Lines(mu, *rest)


SMOOTHNESS_SCALE = Lines(0.02, 1.0, 0.3, 0.3)
"""Node-to-node curvature of (μ′ [Å], ln a, ln σ, ln γ) that costs one unit of ``roughness``."""


def roughness(free: Lines, shape: tuple) -> jax.Array:
    """Σ over the fields and grid axes of the mean squared second difference of the free
    parameters (μ′ [Å], ln a, ln σ, ln γ) across the nodes, the first difference along an axis
    of two nodes, in units of ``SMOOTHNESS_SCALE``. ``free`` fields (N, M), N = prod(shape)."""
    total = 0.0
    for value, scale in zip(free, SMOOTHNESS_SCALE):
        cube = value.reshape(*shape, -1) / scale
        for axis, n in enumerate(shape):
            if n > 1:
                total = total + jnp.mean(jnp.diff(cube, n=min(2, n - 1), axis=axis) ** 2)
    return total


def _node_losses(free: Lines, targets, grid: LinearGrid, halfwidth: int, chunk: int):
    """Per-node ``clone_loss`` (N,) and its gradient, ``chunk`` nodes at a time (N % chunk == 0)."""
    split = jax.tree.map(lambda a: a.reshape(-1, chunk, *a.shape[1:]), (free, targets))
    one = jax.vmap(jax.value_and_grad(clone_loss), in_axes=(0, 0, None, None))
    loss, grad = lax.map(lambda part: one(*part, grid, halfwidth), split)
    return loss.reshape(-1), jax.tree.map(lambda g: g.reshape(-1, g.shape[-1]), grad)


def _clone_grid(free, targets, valid, grid, shape, halfwidth, epochs, learning_rate, smoothness,
                chunk):
    """Adam on Σ_nodes clone_loss / N + smoothness · roughness over all nodes at once."""
    optimiser = optax.adam(learning_rate)
    weight = valid.astype(targets.dtype) / jnp.sum(valid)
    n_real = int(np.prod(shape))

    def step(carry, _):
        free, state = carry
        _, data_grad = _node_losses(free, targets, grid, halfwidth, chunk)
        smooth_grad = jax.grad(lambda f: roughness(jax.tree.map(lambda a: a[:n_real], f),
                                                   shape))(free)
        grad = jax.tree.map(lambda d, r: weight[:, None] * d + smoothness * r, data_grad,
                            smooth_grad)
        updates, state = optimiser.update(grad, state, free)
        return (optax.apply_updates(free, updates), state), None

    (free, _), _ = lax.scan(step, (free, optimiser.init(free)), None, length=epochs)
    loss, _ = _node_losses(free, targets, grid, halfwidth, chunk)
    return free, jnp.sqrt(loss)


_clone_grid_jit = jax.jit(_clone_grid, static_argnums=(3, 4, 5, 6, 7, 9))


def clone_grid(targets, lines: Lines, shape: tuple, grid: LinearGrid, *,
               halfwidth: int = HALFWIDTH, epochs: int = 100, learning_rate: float = 0.05,
               smoothness: float = SMOOTHNESS, chunk: int = 8) -> tuple[Lines, np.ndarray]:
    """Clone all nodes of a grid jointly, the line parameters kept smooth across it.

    targets: (N, n) normalised spectra of the N = prod(shape) nodes in C order; lines: start
    values, fields (N, M) (every line at every node). Adam (``learning_rate``, ``epochs``) on
    (μ′, ln a, ln σ, ln γ) minimises the mean over nodes of the mean squared residual plus
    ``smoothness`` × ``roughness``: the penalty makes each line's parameters vary like a smooth
    function of (Teff, log g, [Fe/H]), which the trilinear interpolation between nodes then
    follows (independent clones of neighbouring nodes split blends differently, and a spectrum
    interpolated between them is worse than either). The data term's gradient is evaluated
    ``chunk`` nodes at a time. Returns the lines (N, M) and the RMS of clone − target (N,).
    """
    n = np.shape(targets)[0]
    pad = -n % chunk
    free = _to_free(Lines(*(jnp.asarray(_pad_rows(p, pad)) for p in lines)))
    valid = jnp.asarray(np.arange(n + pad) < n)
    free, rms = _clone_grid_jit(free, jnp.asarray(_pad_rows(targets, pad)), valid, grid,
                                tuple(shape), halfwidth, epochs, learning_rate, smoothness, chunk)
    fitted = _from_free(free)
    return Lines(*(np.asarray(p)[:n] for p in fitted)), np.asarray(rms)[:n]


# ---------------------------------------------------------------------------------------------
# Identification across the grid


def centre_keys(centres) -> np.ndarray:
    """Integer identity of pre-optimisation centres [Å] at ``CENTRE_PRECISION``."""
    return np.round(np.asarray(centres, np.float64) / CENTRE_PRECISION).astype(np.int64)


def identify_lines(keys: list[np.ndarray], fitted: Lines) -> tuple[Lines, np.ndarray]:
    """Merge per-node line lists into one list of distinct lines with values at every node.

    keys: for each of the N nodes, the ``centre_keys`` of its k_i detected lines (which occupy
    the first k_i slots of the node's row in ``fitted``); fitted: fields (N, L_pad). Returns the
    lines (N, M) over the M distinct keys, sorted, and the keys (M,).
    Where a line was not detected: ln a = −1000, μ′ its pre-optimisation centre, and σ, γ its
    mean over the nodes where it was detected (so interpolated widths stay plausible).
    """
    union = np.unique(np.concatenate(keys))
    n_nodes, m = len(keys), union.size
    found = np.zeros((n_nodes, m), bool)
    out = {name: np.zeros((n_nodes, m)) for name in Lines._fields}
    out["ln_amp"][:] = MISSING_LN_AMP
    out["mu"][:] = union * CENTRE_PRECISION
    for i, k in enumerate(keys):
        col = np.searchsorted(union, k)
        found[i, col] = True
        for name in Lines._fields:
            out[name][i, col] = np.asarray(getattr(fitted, name))[i, :k.size]
    count = found.sum(axis=0)
    for name in ("sigma", "gamma"):
        mean = np.where(found, out[name], 0.0).sum(axis=0) / count
        out[name] = np.where(found, out[name], mean)
    return Lines(**out), union


# ---------------------------------------------------------------------------------------------
# Interpolation and the emulator


def _axis_position(axis: tuple, x):
    """(cell index, fraction in the cell) of x on increasing nodes ``axis``; x clamped to them."""
    nodes = jnp.asarray(axis)
    x = jnp.clip(x, axis[0], axis[-1])
    i = jnp.clip(jnp.searchsorted(nodes, x, side="right") - 1, 0, len(axis) - 2)
    return i, (x - nodes[i]) / (nodes[i + 1] - nodes[i])


def cell_weights(axes: tuple, teff, logg, feh):
    """(cell, weights): the grid cell (i, j, k) holding (teff, logg, feh) (clamped to the box) and
    the trilinear weights (2, 2, 2) of its corners."""
    (i, t), (j, u), (k, v) = (_axis_position(a, x) for a, x in zip(axes, (teff, logg, feh)))
    w = jnp.stack([1.0 - t, t])[:, None, None] * jnp.stack([1.0 - u, u])[None, :, None] \
        * jnp.stack([1.0 - v, v])[None, None, :]
    return (i, j, k), w


def _corners(array, cell):
    """The 2 × 2 × 2 corner values ``array[i:i+2, j:j+2, k:k+2]`` of ``cell``; (2, 2, 2, ...)."""
    zero = jnp.zeros((), cell[0].dtype)
    return lax.dynamic_slice(array, tuple(cell) + (zero,) * (array.ndim - 3),
                             (2, 2, 2) + array.shape[3:])


def _weighted(cube, w):
    """Σ over the corners of w × cube (cube (2, 2, 2, ...), w (2, 2, 2))."""
    return jnp.tensordot(w.astype(cube.dtype), cube, axes=3)


def interpolate(values, axes: tuple, teff, logg, feh):
    """Trilinear interpolation of a pytree of arrays (nT, ng, nz, ...) at (teff, logg, feh).

    axes: the node values (static tuples). Points outside the grid are clamped to its box.
    Differentiable in the parameters (piecewise linear: the derivative jumps at nodes).
    """
    cell, w = cell_weights(axes, teff, logg, feh)
    return jax.tree.map(lambda a: _weighted(_corners(a, cell), w), values)


def cell_lines(ln_amp) -> np.ndarray:
    """Indices of the lines present at any corner of each grid cell, padded with −1 (host).

    ln_amp: (nT, ng, nz, M) with ``MISSING_LN_AMP`` where a line was not detected. Returns
    (nT−1, ng−1, nz−1, K) int32, K the most lines any cell has, each cell's indices increasing.
    Inside a cell the other lines are absent at all 8 corners, so they add nothing to the clone.
    """
    present = np.asarray(ln_amp) > 0.5 * MISSING_LN_AMP
    for axis in range(3):
        cut = [slice(None)] * 4
        cut[axis] = slice(1, None)
        low = [slice(None)] * 4
        low[axis] = slice(None, -1)
        present = present[tuple(low)] | present[tuple(cut)]
    k = max(int(present.sum(axis=-1).max()), 1)
    order = np.argsort(~present, axis=-1, kind="stable")[..., :k]
    valid = np.take_along_axis(present, order, axis=-1)
    return np.where(valid, order, -1).astype(np.int32)


@dataclass(frozen=True)
class LineListEmulator:
    """Line lists and continua on the nodes of a regular grid (a pytree; arrays are the leaves).

    lines: fields (nT, ng, nz, M) of the M distinct lines at every node.
    continuum: (nT, ng, nz, degree+1) Legendre coefficients of the continuum, in x ∈ [−1, 1] over
        the pixels of the full source grid.
    grid: the linear wavelength grid [Å] of the spectra (static).
    axes: node values (teff [K], logg [dex], feh [dex]) (static tuples).
    domain: the parameter box (the grid's).
    halfwidth: wing cut [pixels] (static).
    first, n_full: position of ``grid`` in the source grid (for the continuum's x) after a crop.
    amplitude: "log" interpolates ln a linearly (blase3D: a missing line, ln a = −1000, vanishes
        just off the nodes where it was found); "linear" interpolates a itself (missing: a = 0), so
        a line found at neighbouring pixels of neighbouring nodes (two keys) fades from one into
        the other instead of vanishing between them.
    active: (nT−1, ng−1, nz−1, K) int32 indices of the lines present at a corner of each cell,
        padded with −1 (``cell_lines``), or None; with it a spectrum is built from the K lines of
        its cell instead of all M (K ≈ the most lines of one node; M the union over the grid).
    """

    lines: Lines
    continuum: jax.Array
    grid: LinearGrid
    axes: tuple
    domain: Domain
    halfwidth: int = HALFWIDTH
    first: int = 0
    n_full: int | None = None
    amplitude: str = "log"
    active: jax.Array | None = None

    @property
    def dtype(self):
        """dtype of the emulator's arrays (and of its spectra)."""
        return self.continuum.dtype

    def astype(self, dtype) -> LineListEmulator:
        """The same emulator with arrays cast to ``dtype``."""
        lines, continuum = jax.tree.map(lambda a: jnp.asarray(a, dtype),
                                        (self.lines, self.continuum))
        return replace(self, lines=lines, continuum=continuum)

    def with_amplitude(self, amplitude: str) -> LineListEmulator:
        """The same emulator interpolating amplitudes in ``amplitude`` space ("log" or "linear")."""
        if amplitude not in AMPLITUDE_SPACES:
            raise ValueError(f"amplitude must be one of {AMPLITUDE_SPACES}, not {amplitude!r}")
        return replace(self, amplitude=amplitude)


jax.tree_util.register_dataclass(
    LineListEmulator, data_fields=["lines", "continuum", "active"],
    meta_fields=["grid", "axes", "domain", "halfwidth", "first", "n_full", "amplitude"])


def emulator_lines(em: LineListEmulator, teff, logg, feh) -> Lines:
    """The interpolated line list at (Teff [K], log g, [Fe/H]); fields (M,), or (K,) with
    ``em.active`` (the lines of the point's cell; padding slots have ln a = −1000).

    With ``em.amplitude == "linear"`` a = exp(ln a) is interpolated and ln a = ln max(a, 1e-300)
    returned (the floor keeps the gradient finite where a line is absent at all 8 corners).
    """
    cell, w = cell_weights(em.axes, teff, logg, feh)
    cube = jax.tree.map(lambda a: _corners(a, cell), em.lines)
    if em.active is not None:
        index = em.active[cell]
        cube = jax.tree.map(lambda a: jnp.take(a, jnp.maximum(index, 0), axis=3), cube)
        cube = cube._replace(ln_amp=jnp.where(index >= 0, cube.ln_amp, MISSING_LN_AMP))
    if em.amplitude == "log":
        return jax.tree.map(lambda a: _weighted(a, w), cube)
    lines = jax.tree.map(lambda a: _weighted(a, w), cube._replace(ln_amp=jnp.exp(cube.ln_amp)))
    return lines._replace(ln_amp=jnp.log(jnp.maximum(lines.ln_amp, 1e-300)))


def normalised_flux(em: LineListEmulator, teff, logg, feh):
    """Continuum-normalised model spectrum (the clone) on ``em.grid``; shape (n,)."""
    return transmission(emulator_lines(em, teff, logg, feh), em.grid, em.halfwidth)


def continuum_flux(em: LineListEmulator, teff, logg, feh):
    """The interpolated continuum on ``em.grid``; shape (n,)."""
    coef = interpolate(em.continuum, em.axes, teff, logg, feh)
    return continuum_values(coef, em.grid.n, em.first, em.n_full).astype(em.dtype)


def linelist_flux(em: LineListEmulator, teff, logg, feh):
    """Model flux (continuum × clone) on ``em.grid`` at (Teff [K], log g, [Fe/H]); shape (n,).

    The counterpart of ``tgm_flux`` for the forward model.
    """
    return continuum_flux(em, teff, logg, feh) * normalised_flux(em, teff, logg, feh)


def crop_linelist(em: LineListEmulator, lo: float, hi: float) -> LineListEmulator:
    """The emulator on the pixels covering [lo, hi] Å plus one each side (as ``tgm.crop_to``).

    Lines whose centre lies, at every node, more than the wing cut outside the new grid are
    dropped. Raises ValueError if the grid does not overlap [lo, hi] or the crop is narrower
    than one window.
    """
    edges = em.grid.edges
    if not (lo <= hi and hi > edges[0] and lo < edges[-1]):
        raise ValueError(f"the model covers {edges[0]:.3f}–{edges[-1]:.3f} Å, which does not "
                         f"overlap the requested interval [{lo}, {hi}] Å")
    first = max(int(np.searchsorted(edges, lo, side="right")) - 2, 0)
    last = min(int(np.searchsorted(edges, hi, side="left")), em.grid.n - 1)
    grid = em.grid.sub(first, last - first + 1)
    if 2 * em.halfwidth + 1 > grid.n:
        raise ValueError(f"the crop ({grid.n} pixels) is narrower than one line window")
    margin = em.halfwidth * grid.step
    mu = np.asarray(em.lines.mu).reshape(-1, em.lines.mu.shape[-1])
    keep = np.any((mu > grid.centres[0] - margin) & (mu < grid.centres[-1] + margin), axis=0)
    lines = jax.tree.map(lambda a: a[..., keep], em.lines)
    active = em.active
    if active is not None:
        index = np.asarray(active)
        new = np.cumsum(keep) - 1
        kept = (index >= 0) & keep[np.maximum(index, 0)]
        active = jnp.asarray(np.where(kept, new[np.maximum(index, 0)], -1).astype(np.int32))
    n_full = em.grid.n if em.n_full is None else em.n_full
    return replace(em, lines=lines, grid=grid, first=em.first + first, n_full=n_full,
                   active=active)


class CloneReport(NamedTuple):
    """Diagnostics of building an emulator (host arrays over the nodes, shape (nT, ng, nz))."""

    rms: np.ndarray        # RMS of clone − normalised source spectrum
    n_lines: np.ndarray    # lines detected at each node
    keys: np.ndarray       # (M,) identity keys of the distinct lines (centre / 0.01 Å)


def _clones(lines: Lines, grid: LinearGrid, halfwidth: int) -> np.ndarray:
    """``transmission`` of every row of ``lines`` (fields (N, L)); (N, n) host array."""
    return np.asarray(jax.jit(lambda f: lax.map(lambda one: transmission(one, grid, halfwidth),
                                                f))(jax.tree.map(jnp.asarray, lines)))


def _line_pixels(lines: Lines, grid: LinearGrid) -> list[np.ndarray]:
    """Pixel of each line's centre, per row of ``lines`` (fields (N, L))."""
    return list(np.round((np.asarray(lines.mu) - grid.start) / grid.step).astype(int))


def _clone_per_node(targets, found, grid, prominence, halfwidth, epochs, learning_rate, chunk,
                    refine):
    """blase3D: each node cloned alone, lines identified by pre-optimisation centre afterwards.
    Returns (lines (N, M) with ln a = −1000 where absent, keys (M,), RMS (N,), found)."""
    fitted, rms = clone_batch(targets, *stack_starts(found, grid), grid, halfwidth, epochs,
                              learning_rate, chunk)
    if refine:
        extra = [missed_lines(t, c, f.pixel, prominence) for t, c, f in
                 zip(targets, _clones(fitted, grid, halfwidth), found)]
        count = np.array([f.pixel.size for f in found])[:, None]
        found = [Detected(*map(np.concatenate, zip(f, e))) for f, e in zip(found, extra)]
        lines0, mask = stack_starts(found, grid)
        cloned = np.arange(mask.shape[1]) < count      # the first pass's slots start from its fit
        lines0 = Lines(*(np.where(cloned, np.pad(f, ((0, 0), (0, a.shape[1] - f.shape[1]))), a)
                         for a, f in zip(lines0, fitted)))
        fitted, rms = clone_batch(targets, lines0, mask, grid, halfwidth, epochs,
                                  learning_rate, chunk)
    keys = [centre_keys(grid.centres[f.pixel]) for f in found]
    merged, union = identify_lines(keys, fitted)
    return merged, union, rms, found


def _clone_shared(targets, found, shape, grid, prominence, halfwidth, epochs, learning_rate,
                  chunk, refine, smoothness):
    """One pooled line list at every node, cloned jointly and smoothly (``clone_grid``); with
    ``refine`` the pooled misses of every node are added and the grid cloned again.
    Returns (lines (N, M), keys (M,) of the start centres, RMS (N,), found)."""
    def everywhere(lines):
        return Lines(*(np.broadcast_to(p, (len(targets), p.size)) for p in lines))

    start = pooled_lines(found, grid)
    options = dict(halfwidth=halfwidth, learning_rate=learning_rate, smoothness=smoothness,
                   chunk=chunk)
    fitted, rms = clone_grid(targets, everywhere(start), shape, grid, epochs=epochs, **options)
    if refine:
        extra = [missed_lines(t, c, k, prominence) for t, c, k in
                 zip(targets, _clones(fitted, grid, halfwidth), _line_pixels(fitted, grid))]
        added = pooled_lines(extra, grid)
        start = Lines(*(np.concatenate(p) for p in zip(start, added)))
        fitted = Lines(*(np.concatenate([f, a], axis=1) for f, a in zip(fitted,
                                                                       everywhere(added))))
        fitted, rms = clone_grid(targets, fitted, shape, grid, epochs=epochs, **options)
        found = [Detected(*map(np.concatenate, zip(f, e))) for f, e in zip(found, extra)]
    return fitted, centre_keys(start.mu), rms, found


def build_linelist_emulator(source: SourceGrid, *, method: str = "shared",
                            prominence: float = PROMINENCE, halfwidth: int = HALFWIDTH,
                            epochs: int = 100, learning_rate: float = 0.05, chunk: int = 8,
                            refine: bool = True, smoothness: float = SMOOTHNESS,
                            ) -> tuple[LineListEmulator, CloneReport]:
    """Clone every normalised spectrum of ``source`` and assemble the line-list emulator.

    Lines are detected at every node on the host (``detect_lines``). ``method``:
    "blase3d": each node cloned alone (vmapped over ``chunk`` nodes, line lists padded to the
    longest), lines identified across nodes by pre-optimisation centre, ln a = −1000 where a
    line was not detected; a spectrum is built from the lines of its grid cell (``cell_lines``).
    "shared": the detections of all nodes pooled into one list (``pooled_lines``) that every
    node starts from, and the whole grid cloned at once with a smoothness penalty across the
    nodes (``clone_grid``, weight ``smoothness``), so that the interpolated lines between nodes
    stay close to the spectra there; every line is evaluated everywhere.
    With ``refine`` a second pass detects the absorption each clone misses (``missed_lines``:
    blends, lines in the wings of others), adds those lines and runs ``epochs`` more from the
    first fit.
    """
    if method not in CLONE_METHODS:
        raise ValueError(f"method must be one of {CLONE_METHODS}, not {method!r}")
    shape = source.normalised.shape[:3]
    grid = source.grid
    targets = source.normalised.reshape(-1, grid.n)
    found = [detect_lines(t, prominence) for t in targets]
    if method == "blase3d":
        fitted, keys, rms, found = _clone_per_node(targets, found, grid, prominence, halfwidth,
                                                   epochs, learning_rate, chunk, refine)
    else:
        fitted, keys, rms, found = _clone_shared(targets, found, shape, grid, prominence,
                                                 halfwidth, epochs, learning_rate, chunk,
                                                 refine, smoothness)
    lines = Lines(*(np.asarray(p).reshape(*shape, -1) for p in fitted))
    active = jnp.asarray(cell_lines(lines.ln_amp)) if method == "blase3d" else None
    em = LineListEmulator(jax.tree.map(jnp.asarray, lines), jnp.asarray(source.continuum),
                          source.grid, source.axes, source.domain, halfwidth, active=active)
    counts = np.array([f.pixel.size for f in found]).reshape(shape)
    return em, CloneReport(rms.reshape(shape), counts, keys)
