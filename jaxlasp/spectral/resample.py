"""Flux-conserving resampling between pixel grids (ALGORITHM §d).

The cumulative integral of the input flux density is interpolated linearly at the output bin
edges; differences of it divided by the output bin widths give the mean flux density in each
output bin. The operation is linear in the input flux.
"""
from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

EDGE_MODES = ("extrapolate", "clip")


def resample(flux, in_edges, out_edges, out_widths, edges: str = "extrapolate"):
    """Resample flux densities from input bins onto output bins, conserving flux.

    flux: (..., n_in) mean flux density in each input bin (any units per Å).
    in_edges: (n_in+1,) increasing input bin edges [Å].
    out_edges: (n_out+1,) increasing output bin edges [Å].
    out_widths: (n_out,) divisor for each output bin [Å]; the edge difference for an exact mean, or
        λ_i·Δlnλ on a log grid as PyLASP does (``LogGrid.widths``).
    edges: beyond the input coverage the cumulative integral is either extrapolated along the
        first/last input segment ("extrapolate", LASP-CurveFit, the exact default: the edge pixel's
        density continues) or held constant ("clip", LASP-Adam: no flux beyond the coverage).
    Returns (..., n_out) flux densities.
    """
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {EDGE_MODES}, not {edges!r}")
    in_edges = jnp.asarray(in_edges)
    out_edges = jnp.asarray(out_edges)
    widths_in = jnp.diff(in_edges)
    cumulative = jnp.cumsum(flux * widths_in, axis=-1)
    cumulative = jnp.concatenate([jnp.zeros_like(cumulative[..., :1]), cumulative], axis=-1)
    if edges == "clip":
        out_edges = jnp.clip(out_edges, in_edges[0], in_edges[-1])
    n_in = in_edges.shape[0] - 1
    upper = jnp.clip(jnp.searchsorted(in_edges, out_edges, side="right"), 1, n_in)
    frac = (out_edges - in_edges[upper - 1]) / widths_in[upper - 1]
    lo, hi = cumulative[..., upper - 1], cumulative[..., upper]
    at_edges = lo + frac * (hi - lo)
    return jnp.diff(at_edges, axis=-1) / out_widths


class ResamplingPlan(NamedTuple):
    """``resample`` from fixed input bins onto fixed output bins in segments, worked out once
    (numpy): the cumulative integral's interpolation at every segment's edges (``upper``,
    ``frac``: (E,)), and per output pixel the edges that bound it (``lower_edge``, ``upper_edge``
    (n_out,) indices into those E edges) and its width [Å]."""

    upper: np.ndarray
    frac: np.ndarray
    lower_edge: np.ndarray
    upper_edge: np.ndarray
    widths: np.ndarray


def resampling_plan(in_edges, segments, edges: str = "extrapolate") -> ResamplingPlan:
    """The ``ResamplingPlan`` from bins ``in_edges`` (n_in+1,) onto output bins given as one
    increasing array of edges per segment [Å] (segments may overlap one another); ``edges`` as
    in ``resample``."""
    if edges not in EDGE_MODES:
        raise ValueError(f"edges must be one of {EDGE_MODES}, not {edges!r}")
    in_edges = np.asarray(in_edges, np.float64)
    out = np.concatenate([np.asarray(s, np.float64) for s in segments])
    if edges == "clip":
        out = np.clip(out, in_edges[0], in_edges[-1])
    n_in = in_edges.size - 1
    upper = np.clip(np.searchsorted(in_edges, out, side="right"), 1, n_in)
    frac = (out - in_edges[upper - 1]) / np.diff(in_edges)[upper - 1]
    starts = np.cumsum([0] + [len(s) for s in segments[:-1]])
    lower_edge = np.concatenate([start + np.arange(len(s) - 1)
                                 for start, s in zip(starts, segments)])
    widths = np.concatenate([np.diff(np.asarray(s, np.float64)) for s in segments])
    return ResamplingPlan(upper, frac, lower_edge, lower_edge + 1, widths)


def apply_plan(flux, in_edges, plan: ResamplingPlan):
    """``resample`` of flux densities (..., n_in) by a ``ResamplingPlan``: (..., n_out)."""
    cumulative = jnp.cumsum(flux * jnp.asarray(np.diff(np.asarray(in_edges, np.float64)),
                                               flux.dtype), axis=-1)
    cumulative = jnp.concatenate([jnp.zeros_like(cumulative[..., :1]), cumulative], axis=-1)
    lo, hi = cumulative[..., plan.upper - 1], cumulative[..., plan.upper]
    at_edges = lo + jnp.asarray(plan.frac, flux.dtype) * (hi - lo)
    return ((at_edges[..., plan.upper_edge] - at_edges[..., plan.lower_edge])
            / jnp.asarray(plan.widths, flux.dtype))
