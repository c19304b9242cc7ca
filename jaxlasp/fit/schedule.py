"""LM over a batch with compaction: a fixed number of slots, refilled as their problems finish.

``lm.run`` steps the whole batch until its slowest member has converged, so every member pays for
the slowest one (LAMOST spectra from a common start: 10.4 iterations on average, up to ~18). Here
``slots`` problems are stepped together; after each step the slots whose problem has finished hand
their final state to the results and take the next waiting problem, whose first step evaluates its
start point (``lm.PENDING``). The loop is one ``lax.while_loop`` on the device: no host round trips.

Each problem goes through exactly the same sequence of states as under ``lm.run`` (its own damping,
tolerances and iteration cap), so the results agree with ``lm.run`` to round-off; the cost is the
number of slot-steps, Σ (iterations + 1) / slots plus the drain at the end, instead of
(max iterations + 1) per member.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxlasp.fit import lm


class Slots(NamedTuple):
    """Loop carry: the slots' states and owners, the queue position and the results."""

    state: lm.LMState   # (slots, ...) states of the problems in the slots
    owner: jax.Array    # (slots,) index of the problem in each slot; batch size = empty
    queued: jax.Array   # number of problems handed to slots so far
    results: lm.LMState  # (batch, ...) final states (SKIPPED until a problem finishes)


def _gather(tree, index):
    """``tree`` (leading axis batch) at ``index`` (slots,); indices out of range are clamped."""
    return jax.tree_util.tree_map(lambda a: a[jnp.clip(index, 0, a.shape[0] - 1)], tree)


def run_compacted(fun: Callable, theta, shared, data, *, lower, upper, slots: int,
                  max_iter: int = 100, ftol=1e-10, xtol=1e-10, active=None,
                  jacobian: Callable | None = None, damping=lm.INITIAL_DAMPING) -> lm.LMState:
    """``lm.run`` with compaction: the same results, with ``slots`` problems stepped at a time.

    theta (b, p), data (leading axis b), ftol/xtol/damping scalars or (b,) arrays, active (b,)
    bool or None, as for ``lm.run``; ``slots`` (static) ≤ b. Members not ``active`` are never
    evaluated and come back with status SKIPPED and the state of their start point left
    unevaluated (zero residuals and Jacobian). Returns the final ``lm.LMState`` of every member
    (leading axis b).
    """
    batch = theta.shape[0]
    dtype = theta.dtype
    ftol = jnp.broadcast_to(jnp.asarray(ftol, dtype), (batch,))
    xtol = jnp.broadcast_to(jnp.asarray(xtol, dtype), (batch,))
    damping = jnp.broadcast_to(jnp.asarray(damping, dtype), (batch,))
    lower, upper = jnp.asarray(lower, dtype), jnp.asarray(upper, dtype)
    active = jnp.ones(batch, bool) if active is None else jnp.asarray(active, bool)
    order = jnp.argsort(~active, stable=True)  # active members first, in order
    n_active = jnp.sum(active)

    shape = jax.eval_shape(lambda th, d: lm.residuals_and_jacobian(fun, th, shared, d, jacobian),
                           theta[0], _gather(data, jnp.zeros((), int)))
    resid, jac = (jnp.zeros(s.shape, dtype) for s in shape)
    waiting = jax.vmap(lambda th, f, x, lam: lm.pending(th, resid, jac, f, x, lam))(
        theta, ftol, xtol, damping)
    results = waiting._replace(status=jnp.full(batch, lm.SKIPPED))

    def fill(index, valid):
        """Pending states for the problems ``order[index]``; SKIPPED where not ``valid``."""
        owner = jnp.where(valid, order[jnp.clip(index, 0, batch - 1)], batch)
        state = _gather(waiting, owner)
        return state._replace(status=jnp.where(valid, state.status, lm.SKIPPED)), owner

    first = jnp.arange(slots)
    state, owner = fill(first, first < n_active)
    carry = Slots(state, owner, jnp.minimum(n_active, slots), results)
    batched_step = jax.vmap(
        lambda s, d: lm.step(fun, lower, upper, max_iter, s, shared, d, jacobian)[0])

    def body(carry: Slots) -> Slots:
        state = batched_step(carry.state, _gather(data, carry.owner))
        done = (carry.owner < batch) & (state.status != lm.RUNNING) & (state.status != lm.PENDING)
        results = jax.tree_util.tree_map(
            lambda r, s: r.at[jnp.where(done, carry.owner, batch)].set(s, mode="drop"),
            carry.results, state)
        index = carry.queued + jnp.cumsum(done) - 1
        refill, owner = fill(index, done & (index < n_active))
        state = jax.tree_util.tree_map(
            lambda a, b: jnp.where(jnp.expand_dims(done, tuple(range(1, a.ndim))), a, b),
            refill, state)
        owner = jnp.where(done, owner, carry.owner)
        return Slots(state, owner, jnp.minimum(carry.queued + jnp.sum(done), n_active), results)

    def running(carry: Slots):
        return jnp.any((carry.state.status == lm.RUNNING) | (carry.state.status == lm.PENDING))

    return lax.while_loop(running, body, carry).results
