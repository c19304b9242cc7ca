"""One group of spectra over all local devices: a 1-D mesh over spectra, one compiled program.

The group's rows (spectra) are split into equal shards, one per device of a 1-D ``Mesh`` whose
axis is ``AXIS`` (``NamedSharding(mesh, P(AXIS))``); ``jax.shard_map`` runs the whole fit — global
start, LM or Adam, Clean cycles, errors — on each shard as an independent program. Nothing in the
fit couples spectra, so there is no collective inside the loops: each device runs its own
``while_loop``s to its own convergence and the devices meet only when the group's results are
gathered. The emulator and the observed grid (``ForwardModel``) are replicated.

Under ``shard_map`` the Clean schedule cannot ask the host how many spectra are still cycling, so
it runs all its cycles as one ``lax.fori_loop`` (a fit with no active member costs almost
nothing); results are the same. (Unrolled, the traced Clean schedule held 11 fits: compiling and
running it under ``jit`` on 6 spectra took 39 s on the 2-core CPU; as a loop 10 s.)
"""
from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "spectra"
"""Name of the mesh axis the spectra are split over."""


def device_mesh(devices: int | None = None) -> Mesh:
    """A 1-D mesh over the first ``devices`` local devices of the default backend (None: all).

    Raises ValueError when more devices are asked for than exist.
    """
    local = jax.local_devices()
    count = len(local) if devices is None else int(devices)
    if not 1 <= count <= len(local):
        raise ValueError(f"asked for {devices} devices, but this process has {len(local)} "
                         f"({local[0].platform}); on CPU, XLA_FLAGS="
                         "--xla_force_host_platform_device_count=N splits it into N devices")
    return Mesh(np.asarray(local[:count]), (AXIS,))


def pad_rows(array, multiple: int):
    """``array`` with its first row repeated at the end until its length is a multiple of
    ``multiple`` (padding rows are fitted and discarded; repeating a real row keeps them valid)."""
    missing = -array.shape[0] % multiple
    if not missing:
        return array
    return jnp.concatenate([array, jnp.repeat(array[:1], missing, axis=0)])


@lru_cache(maxsize=32)
def _sharded(fit_group: Callable, mesh: Mesh, n_batch_args: int):
    """jit(shard_map(fit_group)) with the model replicated and the batch arguments split."""
    rows = P(AXIS)
    mapped = jax.shard_map(fit_group, mesh=mesh, in_specs=(P(), *[rows] * n_batch_args),
                           out_specs=rows, check_vma=False)
    return jax.jit(mapped)


def run_sharded(fit_group: Callable, mesh: Mesh, fm, *batch_args):
    """``fit_group(fm, *batch_args)`` (a pytree of arrays with leading axis b) with the b rows of
    ``batch_args`` split over ``mesh``'s devices.

    ``fit_group`` must be a hashable function of arrays (e.g. a module-level function or a
    ``functools.partial`` kept by the caller): the compiled program is cached per
    (function, mesh, argument shapes). b need not divide the device count: rows are padded.
    """
    batch = batch_args[0].shape[0]
    sharding = NamedSharding(mesh, P(AXIS))
    padded = [jax.device_put(pad_rows(jnp.asarray(a), mesh.size), sharding) for a in batch_args]
    result = _sharded(fit_group, mesh, len(batch_args))(fm, *padded)
    return jax.tree_util.tree_map(lambda a: a[:batch], result)
