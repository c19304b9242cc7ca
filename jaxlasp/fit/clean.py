"""Outlier-pixel rejection, LASP-CurveFit's "Clean" (ALGORITHM §g.1), for one spectrum.

Pure and jit/vmap-able: masks are boolean arrays over all n pixels. Neighbour tests in layer 3
are cyclic (np.roll semantics, as PyLASP); the layer-2 neighbour list stays inside [0, n−1].
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

LEVELS = (3.0, 4.0, 5.0, 7.0)
"""Rejection thresholds in robust σ, tried in order while more than 3 % of pixels exceed them."""
MAX_FRACTION = 0.03
LAYER3_PASSES = 20


class CleanResult(NamedTuple):
    """Outcome of one Clean call."""

    mask: jax.Array     # (n,) bool, new good pixels (G unchanged when nothing was rejected)
    sigma: jax.Array    # robust σ: std of residuals over the previous good pixels (ddof = 1)
    counts: jax.Array   # (3,) int: layer-1 m, layer-2 m2, layer-3 m3 rejections (PyLASP counts)
    changed: jax.Array  # bool: mask differs from the previous one


def masked_std(values, mask):
    """Standard deviation (ddof = 1) of ``values`` over ``mask``."""
    n = jnp.sum(mask)
    mean = jnp.sum(jnp.where(mask, values, 0.0)) / n
    return jnp.sqrt(jnp.sum(jnp.where(mask, (values - mean) ** 2, 0.0)) / (n - 1))


def clean(model, resid, good, initial, first_call, noise=None) -> CleanResult:
    """One CurveFit Clean call.

    model: (n,) best-fit model B (its polynomial fitted on ``good``).
    resid: (n,) residuals (f − B)/err on ``initial`` pixels, 0 elsewhere.
    good: (n,) bool, current good pixels G; initial: (n,) bool, initial good pixels G0.
    first_call: bool, True for the call after the first fit (gradient factor 0.5, else 0.2).
    noise: (n,) err per pixel (default 1).
    """
    n = model.shape[-1]
    err = jnp.ones_like(model) if noise is None else noise
    facsh = jnp.where(first_call, 0.5, 0.2)
    slope = jnp.maximum(jnp.abs(model - jnp.roll(model, -1)), jnp.abs(model - jnp.roll(model, 1)))
    excess = jnp.abs(resid) - facsh * slope / err
    sigma = masked_std(resid, good)

    exceed = jnp.stack([good & (excess > lvl * sigma) for lvl in LEVELS])
    counts = jnp.sum(exceed, axis=1)
    acceptable = counts <= MAX_FRACTION * jnp.sum(good)
    level_index = jnp.where(jnp.any(acceptable[:3]), jnp.argmax(acceptable[:3]), 3)
    level = jnp.asarray(LEVELS, sigma.dtype)[level_index]
    m1 = counts[level_index]

    outliers = initial & (excess > level * sigma)
    mask = initial & ~outliers
    index = jnp.arange(n)
    listed = (jnp.where(index < n - 1, jnp.roll(outliers, -1), False).astype(int)
              + jnp.where(index > 0, jnp.roll(outliers, 1), False).astype(int))
    hit = mask & (excess > 2 * sigma)
    m2 = jnp.sum(listed * hit)
    mask = mask & ~((listed > 0) & hit)

    def layer3(carry):
        mask, m3, _, passes = carry
        s = masked_std(resid, mask)
        cand = mask & (excess > s)
        prev_r, next_r = jnp.roll(resid, 1), jnp.roll(resid, -1)
        from_left = (cand & ~jnp.roll(mask, 1) & (prev_r * resid > 0)
                     & (jnp.abs(resid) <= jnp.abs(prev_r)))
        from_right = (cand & ~jnp.roll(mask, -1) & (next_r * resid > 0)
                      & (jnp.abs(resid) <= jnp.abs(next_r)))
        found = jnp.sum(from_left) + jnp.sum(from_right)
        return mask & ~(from_left | from_right), m3 + found, found > 0, passes + 1

    mask, m3, _, _ = lax.while_loop(lambda c: c[2] & (c[3] < LAYER3_PASSES), layer3,
                                    (mask, jnp.asarray(0), jnp.asarray(True), 0))
    nothing = m1 == 0
    new_mask = jnp.where(nothing, good, mask)
    new_counts = jnp.where(nothing, 0, jnp.stack([m1, m2, m3]))
    return CleanResult(new_mask, sigma, new_counts, jnp.any(new_mask != good))
