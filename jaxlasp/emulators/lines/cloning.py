"""Cloning by Adam: each node's spectrum alone (blase; ``clone``, ``clone_batch``), or the whole
grid at once from one pooled line list, kept smooth across the nodes (``clone_grid``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax

from jaxlasp.emulators.lines.detection import Detected, initial_lines
from jaxlasp.emulators.lines.profiles import HALFWIDTH, Lines, transmission
from jaxlasp.grids import LinearGrid

MERGE_PIXELS = 1
"""Detections of different nodes at most this many pixels apart are one line (shared clone)."""
SMOOTHNESS = 1e-5
"""Weight of the shared clone's grid-roughness penalty against the mean squared residual."""


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
