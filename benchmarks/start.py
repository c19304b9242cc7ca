"""Where the global start's time goes: stage split of ``fit_multistart``, against a fixed-start LM.

Usage: OPENBLAS_NUM_THREADS=1 python benchmarks/start.py [--batch 64] [--repeats 5] [--clean]
       [--base DIR]

Needs ../shared/data/lamost-dr10-sample (pylasp_group0.npz). A batch of the 25 LAMOST sample
spectra repeated is fitted with ``fit_multistart`` (LM, profile errors) and its stages are timed
with its ``timer`` hook: "start" (grid scoring), "fit" (candidate fits and the winner), "clean"
(with --clean) and "errors" (profile errors + spread between minima); next to it LM No Clean from
PyLASP's start (``fit_batch``, Laplace errors) and ``profile_errors`` on that fit. Milliseconds
per spectrum, median over --repeats after a compiling call.

--base DIR: also time the same stages with another checkout's ``jaxlasp/fit/start.py`` and
``jaxlasp/fit/errors.py`` (e.g. ``git worktree add /tmp/jaxlasp-base <commit>``), loaded as
modules into this process; old and new calls alternate, so both see the same machine load.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from sample import load_sample

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.api import DEFAULT_START
from jaxlasp.fit.driver import MULTIMODAL, fit_batch
from jaxlasp.fit.errors import profile_errors
from jaxlasp.fit.start import fit_multistart
from jaxlasp.groups.inputs import start_points

STAGES = ("start", "fit", "clean", "errors")


class StageTimer:
    """``timer`` for ``fit_multistart``: wall time per stage name, accumulated."""

    def __init__(self):
        self.seconds = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, name: str):
        began = time.perf_counter()
        yield
        self.seconds[name] += time.perf_counter() - began


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def old_multistart(start, errors, fm, flux, weights, clean: bool, timer: StageTimer):
    """The other checkout's ``fit_multistart``, stage by stage with its own functions."""
    with timer("start"):
        theta0, good = jax.block_until_ready(start.start_candidates(fm, flux, weights))
    k = theta0.shape[1]
    repeat = partial(jnp.repeat, repeats=k, axis=0)
    fit_weights = weights * good if clean else weights
    with timer("fit"):
        candidates = fit_batch(fm, theta0.reshape(-1, 5), repeat(flux), repeat(fit_weights))
        result = jax.block_until_ready(start.best_of(candidates, k))
    if clean:
        with timer("clean"):
            result = jax.block_until_ready(fit_batch(fm, result.theta, flux, weights,
                                                     use_clean=True))
    with timer("errors"):
        result = errors.profile_errors(fm, result, flux, weights)
        spread, elsewhere = start.mode_spread(candidates, repeat(fit_weights) > 0, k)
        result = jax.block_until_ready(result._replace(
            covariance=result.covariance + spread,
            flags=result.flags | MULTIMODAL * (elsewhere >= start.MULTIMODAL_MASS)))
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--clean", action="store_true")
    parser.add_argument("--base", type=Path, default=None,
                        help="another checkout whose start.py and errors.py to time alongside")
    args = parser.parse_args()
    _, fm, flux, weights = load_sample(args.batch)
    flux, weights = jnp.asarray(flux), jnp.asarray(weights)
    theta0 = start_points(DEFAULT_START, args.batch)
    old = None
    if args.base is not None:
        old = (load_module(args.base / "jaxlasp/fit/start.py", "base_start"),
               load_module(args.base / "jaxlasp/fit/errors.py", "base_errors"))
    runs = {"new": lambda t: fit_multistart(fm, flux, weights, clean=args.clean, timer=t)}
    if old:
        runs["old"] = lambda t: old_multistart(*old, fm, flux, weights, args.clean, t)
    fixed = fit_batch(fm, theta0, flux, weights)
    singles = {"LM from a fixed start": lambda: fit_batch(fm, theta0, flux, weights),
               "profile errors of that fit": lambda: profile_errors(fm, fixed, flux, weights)}
    if old:
        singles["profile errors of that fit (old)"] = lambda: old[1].profile_errors(
            fm, fixed, flux, weights)
    samples = defaultdict(list)
    for rep in range(args.repeats + 1):           # the first round compiles
        for name, run in runs.items():
            timer = StageTimer()
            began = time.perf_counter()
            jax.block_until_ready(run(timer))
            total = time.perf_counter() - began
            if rep:
                for stage_name, sec in timer.seconds.items():
                    samples[(name, stage_name)].append(sec)
                samples[(name, "total")].append(total)
        for name, fn in singles.items():
            began = time.perf_counter()
            jax.block_until_ready(fn())
            if rep:
                samples[("single", name)].append(time.perf_counter() - began)
    ms = {key: 1e3 * float(np.median(v)) / args.batch for key, v in samples.items()}
    print(f"# device {jax.devices()[0].device_kind}, float64, batch {args.batch} of the 25 LAMOST "
          f"sample spectra, LM, profile errors{', Clean' if args.clean else ''}; ms per spectrum, "
          f"median of {args.repeats}")
    names = list(runs)
    print("| stage | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for stage_name in STAGES + ("total",):
        if any((name, stage_name) in ms for name in names):
            print(f"| {stage_name} | " + " | ".join(f"{ms.get((name, stage_name), np.nan):.2f}"
                                                    for name in names) + " |")
    for name in singles:
        print(f"| {name} | {ms[('single', name)]:.2f} |" + " |" * (len(names) - 1))


if __name__ == "__main__":
    main()
