"""Wall-clock seconds per stage of a run, for the stage split a long run reports.

A ``StageClock`` is called as a context manager, ``with clock("fit"): ...``, and adds the block's
wall time [s] to that stage; reader threads add theirs with ``clock.add``. It only measures: the
fitting code blocks on its results inside a timed block (``jax.block_until_ready``) so that JAX's
asynchronous dispatch does not move a stage's cost into the next one.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import contextmanager

STAGES = ("read", "prepare", "start", "fit", "clean", "errors", "columns", "write", "idle")
"""The stages of ``jaxlasp.pipeline.run``, in the order they are reported. "read": time spent
in readers (summed over reader workers, so it can exceed the wall time); "idle": the fitter
waiting for input; "prepare": stacking the read spectra into arrays; "columns": results to
table rows."""


class StageClock:
    """Seconds per stage name (thread-safe), in first-seen order after ``STAGES``."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, time.perf_counter() - start)

    def as_dict(self) -> dict[str, float]:
        """{stage: seconds}, the known stages first, in ``STAGES`` order."""
        with self._lock:
            names = [s for s in STAGES if s in self.seconds]
            names += [s for s in self.seconds if s not in STAGES]
            return {s: self.seconds[s] for s in names}


def describe(stages: dict[str, float], per: int = 0) -> str:
    """'read 1.20 s, fit 3.40 s, …' (with ms per item when ``per`` > 0)."""
    def one(name, seconds):
        rate = f" ({1e3 * seconds / per:.2f} ms each)" if per else ""
        return f"{name} {seconds:.2f} s{rate}"
    return ", ".join(one(name, s) for name, s in stages.items())
