"""JAX's persistent compilation cache, kept in the user's cache folder.

Compiling the fit programs takes most of a short run's time (~15 s for the LM fit with the global
start on a 2-core CPU). With the cache a second run of the same command on the same machine
loads the compiled programs instead. ``jaxlasp fit`` turns it on unless ``--no-compile-cache``
is given or ``JAXLASP_COMPILE_CACHE=0`` is set, and so do Dask workers (``--no-compile-cache``
sets that variable for the local ones); library users call ``enable_compilation_cache()``.

Where: ``$JAXLASP_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/jaxlasp/xla`` (default
``~/.cache/jaxlasp/xla``). Entries are keyed by the program, the JAX version and the device, so a
changed program or upgrade never loads a stale one; the folder may be deleted at any time.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import jax

log = logging.getLogger("jaxlasp")

CACHE_DIR_ENV = "JAXLASP_CACHE_DIR"
"""Environment variable naming the cache folder."""
SWITCH_ENV = "JAXLASP_COMPILE_CACHE"
"""Environment variable: '0', 'no', 'off' or 'false' turns the cache off."""
MIN_COMPILE_SECONDS = 0.0
"""Programs are cached however quickly they compiled (a run compiles dozens of small ones)."""


def default_cache_dir() -> Path:
    """``$JAXLASP_CACHE_DIR``, else ``$XDG_CACHE_HOME/jaxlasp/xla`` (``~/.cache/jaxlasp/xla``)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "jaxlasp" / "xla"


def cache_switched_off() -> bool:
    """Whether ``$JAXLASP_COMPILE_CACHE`` turns the cache off."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "no", "off", "false")


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
    return folder


def cache_as_configured() -> Path | None:
    """``enable_compilation_cache()`` unless ``$JAXLASP_COMPILE_CACHE`` turns it off; the folder
    or None."""
    return None if cache_switched_off() else enable_compilation_cache()
