"""JAX's persistent compilation cache and jaxlasp's cache of traced programs, in the user's cache
folder.

Compiling the fit programs takes most of a short run's time (~15 s for the LM fit with the global
start on a 2-core CPU). With the cache a second run of the same command on the same machine
loads the compiled programs instead. ``jaxlasp fit`` turns it on unless ``--no-compile-cache``
is given or ``JAXLASP_COMPILE_CACHE=0`` is set, and so do Dask workers (``--no-compile-cache``
sets that variable for the local ones); library users call ``enable_compilation_cache()``.

Where: ``$JAXLASP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/jaxlasp/xla`` (default
``~/.cache/jaxlasp/xla``). Entries are keyed by the program, the JAX version and the device, so a
changed program or upgrade never loads a stale one; the folder may be deleted at any time.

XLA's cache skips compiling but not tracing: JAX still traces and lowers every program to find its
cache key, ~10 s for the fit programs of the defaults. The fit's entry points are therefore
declared with ``program`` instead of ``jax.jit``: while the cache is on, each is exported
(``jax.export``: traced and lowered once) and its serialized module kept in ``programs/`` beside
XLA's entries, keyed by the program's name, its arguments' structure, shapes and dtypes, its
static arguments, the source of the installed jaxlasp and the JAX version; a later run
deserializes it and only compiles (an XLA cache hit). With the cache off, ``program`` is
``jax.jit``; ``JAXLASP_COMPILE_CACHE=xla`` keeps XLA's cache but exports no programs (exporting
costs more than it saves where every program is compiled for one shape only, as in the tests).
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import logging
import os
import pickle
import tempfile
from pathlib import Path

import jax

log = logging.getLogger("jaxlasp")

CACHE_DIR_ENV = "JAXLASP_CACHE_DIR"
"""Environment variable naming the cache folder."""
SWITCH_ENV = "JAXLASP_COMPILE_CACHE"
"""Environment variable: '0', 'no', 'off' or 'false' turns the cache off; 'xla' keeps XLA's
compiled programs only (no exported programs)."""
MIN_COMPILE_SECONDS = 0.0
"""Programs are cached however quickly they compiled (a run compiles dozens of small ones)."""


def default_cache_dir() -> Path:
    """``$JAXLASP_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxlasp/xla`` (``~/.cache/jaxlasp/xla``)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxlasp" / "xla"


def _switch() -> str:
    return os.environ.get(SWITCH_ENV, "").strip().lower()


def cache_switched_off() -> bool:
    """Whether ``$JAXLASP_COMPILE_CACHE`` turns the cache off."""
    return _switch() in ("0", "no", "off", "false")


def enable_compilation_cache(path=None) -> Path | None:
    """Use ``path`` (default ``default_cache_dir()``) as JAX's persistent compilation cache.

    Returns the folder, or None (with a warning) when it cannot be created or written: the run
    goes on compiling as without a cache. Takes effect for programs compiled afterwards.
    """
    folder = Path(path).expanduser() if path is not None else default_cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(f"{folder} is not writable")
    except OSError as err:
        log.warning("compilation cache off: cannot use %s (%s)", folder, err)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    global _programs_folder
    _programs_folder = None if _switch() == "xla" else folder / PROGRAMS
    return folder


def cache_as_configured() -> Path | None:
    """``enable_compilation_cache()`` unless ``$JAXLASP_COMPILE_CACHE`` turns it off; the folder
    or None."""
    return None if cache_switched_off() else enable_compilation_cache()


PROGRAMS = "programs"
"""Sub-folder of the cache folder holding the exported programs."""
_programs_folder: Path | None = None


@functools.cache
def source_version() -> str:
    """Digest of the installed jaxlasp's Python source and the versions of JAX, optax and NumPy (the
    code a program is traced through): a program exported by other code is never loaded."""
    import numpy
    import optax

    versions = (jax.__version__, jax.lib.__version__, optax.__version__, numpy.__version__)
    digest = hashlib.sha256(repr(versions).encode())
    root = Path(__file__).parent
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def program(fun=None, *, static_argnames=()):
    """``jax.jit(fun, static_argnames=...)`` whose traced program persists in the cache folder
    while the cache is on (module docstring). Calls made while tracing (a ``program`` called from
    inside another jitted function) use the plain jitted function."""
    if fun is None:
        return functools.partial(program, static_argnames=static_argnames)
    static_argnames = (static_argnames,) if isinstance(static_argnames, str) else tuple(
        static_argnames)
    jitted = jax.jit(fun, static_argnames=static_argnames)
    signature = inspect.signature(fun)
    loaded = {}

    @functools.wraps(fun)
    def call(*args, **kwargs):
        folder = _programs_folder
        if folder is None:
            return jitted(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        static = tuple((name, bound.arguments[name]) for name in static_argnames)
        dynamic = {name: value for name, value in bound.arguments.items()
                   if name not in static_argnames}
        leaves, tree = jax.tree.flatten(dynamic)
        if any(isinstance(leaf, jax.core.Tracer) for leaf in leaves):
            return jitted(*args, **kwargs)
        avals = tuple(jax.typeof(leaf) for leaf in leaves)
        memo = (tree, avals, static, jax.default_backend())
        if memo not in loaded:
            try:
                loaded[memo] = _exported(fun, folder, tree, avals, dict(static))
            except Exception as err:  # cannot be exported here: this program is only jitted
                log.debug("program %s not kept (%s: %s)", fun.__qualname__,
                          type(err).__name__, err)
                loaded[memo] = None
        if loaded[memo] is None:
            return jitted(*args, **kwargs)
        compiled, out_tree = loaded[memo]
        return jax.tree.unflatten(out_tree, compiled(*leaves))

    call.jitted = jitted
    return call


def _exported(fun, folder: Path, tree, avals, static: dict):
    """(jitted call of the exported program, output tree) from ``folder``, exporting and saving
    it first when it is not there (or cannot be read)."""
    key = hashlib.sha256(repr((source_version(), fun.__module__, fun.__qualname__, str(tree),
                               [(a.shape, str(a.dtype), a.weak_type) for a in avals],
                               sorted(static.items()), jax.default_backend(),
                               jax.config.jax_enable_x64)).encode()).hexdigest()[:32]
    path = folder / f"{fun.__qualname__}-{key}.jaxprog"
    try:
        exported, out_tree = pickle.loads(path.read_bytes())
        exported = jax.export.deserialize(exported)
    except FileNotFoundError:
        exported = out_tree = None
    except Exception as err:  # a damaged or foreign file: export again and replace it
        log.debug("cached program %s unusable (%s): exporting again", path.name, err)
        exported = out_tree = None
    if exported is None:
        trees = []

        def flat(*leaves):
            outputs = fun(**jax.tree.unflatten(tree, leaves), **static)
            out_leaves, out_tree = jax.tree.flatten(outputs)
            trees.append(out_tree)
            return out_leaves

        specs = [jax.ShapeDtypeStruct(a.shape, a.dtype, weak_type=a.weak_type) for a in avals]
        serialized = jax.export.export(jax.jit(flat))(*specs).serialize()
        out_tree = trees[0]
        _write_atomically(path, pickle.dumps((serialized, out_tree)))
        # The program as a later run loads it (its outputs' types, weak ones made strong, must
        # not depend on whether it was just exported: they key the next programs)
        exported = jax.export.deserialize(serialized)
    return jax.jit(exported.call), out_tree


def _write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (concurrent runs and
    workers may write the same program); a failure only costs the next run an export."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         delete=False) as temporary:
            temporary.write(data)
        os.replace(temporary.name, path)
    except OSError as err:
        log.debug("cannot keep program %s: %s", path.name, err)
