"""One run per catalog: an exclusive lock on ``<catalog>.lock``, held while the run lasts.

The lock is an ``fcntl.flock`` on the lock file, so the operating system releases it when the
holding process ends in any way (``kill -9`` included): a lock left by a killed run is never
stale, the file merely stays behind and the next run takes it over. The file holds the holder's
host, process id and start time, so that a refused run can say which run holds the catalog.
(``flock`` is per host: on a network file system shared by several machines it may not exclude a
run on another machine.) The run removes the lock file when it ends; a run that locked a file
checks that it is still the one at the path (not one removed meanwhile) before going on.
"""
from __future__ import annotations

import fcntl
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path


class CatalogLocked(RuntimeError):
    """Another run holds the catalog's lock."""


def lock_path(output) -> Path:
    """The lock file of the catalog ``output``: ``<output>.lock`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


@contextmanager
def catalog_lock(output):
    """Hold the catalog's lock for the context; CatalogLocked (naming the holder) if another
    process holds it."""
    path = lock_path(output)
    fd = _locked_file(path, output)
    try:
        stamp = (f"process {os.getpid()} on {socket.gethostname()}, started "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}")
        os.ftruncate(fd, 0)
        os.pwrite(fd, stamp.encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)  # still held: no other run can be using this file
        os.close(fd)  # releases the lock


def _locked_file(path: Path, output) -> int:
    """A descriptor of the lock file at ``path``, exclusively locked (CatalogLocked if held)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 400, 0).decode(errors="replace").strip() or "another run"
            os.close(fd)
            raise CatalogLocked(f"{output} is being written by another run ({holder}); wait for "
                                f"it to finish, or stop it and rerun with --resume") from None
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            return fd
        os.close(fd)  # the holder removed it as we opened it: lock the new one
