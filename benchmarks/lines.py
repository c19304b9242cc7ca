"""Line-list (blase3D) emulator: clone fidelity, reconstruction speed, blase3D inference protocol.

Usage: python benchmarks/lines.py [--teff 3200 7000 200 11000 400] [--logg 2 5.5 0.5]
       [--feh -0.5 0] [--method shared blase3d] [--epochs 100] [--no-refine]
       [--n-test-teff 21] [--starts 1] [--gp 21] [--amplitude log linear]

An axis is ``start stop step [stop step ...]``: the default Teff axis is 3200–7000 K in 200 K steps,
then 7400–11000 K in 400 K steps (30 nodes; blase3D's density, 100/200 K, is
``--teff 3100 7000 100 11000 200``, 60 nodes). Source grid: the ELODIE 3.2 TGM model of
../shared/data (the demo model when absent) on --teff × --logg × --feh, continuum-normalised
(``jaxlasp.emulators.lines.source_grid``), cloned with Adam (lr 0.05, --epochs), then (unless
--no-refine) a second detection pass on the clone residuals and --epochs more, by each --method of
``build_linelist_emulator`` in turn ("shared": one pooled line list, the grid cloned jointly with
a smoothness penalty; "blase3d": every node alone, lines identified by their start centres).

Printed:
* clone fidelity: RMS of clone − normalised source per node (min / median / max, and by Teff),
  lines per node, distinct lines, lines per cell, build time, emulator size, peak memory;
* reconstruction: ms per spectrum for a vmapped batch of 64 (banded evaluation of the lines of the
  point's cell), and for one spectrum with the banded and the dense (no wing cut) evaluation;
* the blase3D protocol, reduced to the grid's box: --n-test-teff Teff × 5 log g × 2 [Fe/H] test
  spectra off the nodes (the TGM model's own normalised spectra, noise-free), inferred with
  jaxlasp's LM (exact forward-mode Jacobians of the normalised emulator spectrum, started at the
  --starts nodes whose clones are nearest, the lowest χ² kept, box = the grid), all spectra in one
  batch compacted over 32 slots (``jaxlasp.fit.schedule``), for each --amplitude interpolation;
  batch wall time / spectra and the time of one spectrum alone; mean |error| for Teff below / at
  or above 7000 K;
* --gp spectra spread over the test set inferred by scikit-optimize ``gp_minimize`` (100 random
  + 20 guided evaluations of the RMS loss, Teff within ±500 K of the truth as blase3D) on the
  first --method's emulator with the first --amplitude, with LM on the same spectra.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxlasp  # noqa: F401  (float64)
from jaxlasp.emulators import lines as L
from jaxlasp.emulators.tgm import tgm_flux
from jaxlasp.fit.schedule import run_compacted

ELODIE = (Path(__file__).resolve().parents[1].parent
          / "shared/data/lamost-dr10-sample/elodie32_flux_tgm_4199-5700.fits")
SCALE = np.array([1000.0, 1.0, 1.0])
"""LM parameters are (Teff / 1000 K, log g, [Fe/H])."""
BLASE3D = {"below": (93.0, 0.24, 0.056), "above": (347.0, 0.26, 0.16)}
"""blase3D's mean absolute errors (Teff K, log g, [Fe/H]) below / above 7000 K, ~200 s each."""


def _tgm():
    if ELODIE.exists():
        from jaxlasp.io import read_tgm
        return read_tgm(ELODIE), "ELODIE 3.2"
    from jaxlasp.emulators.demo import demo_emulator
    return demo_emulator(4200.0, 5700.0, 0.2), "DEMO"


def _axis(start, *segments):
    """Nodes from ``start`` through (stop, step) segments: 3100 7000 100 11000 200 gives 3100–7000
    in 100 K steps, then 7200–11000 in 200 K steps."""
    if not segments or len(segments) % 2:
        raise SystemExit("an axis is: start stop step [stop step ...]")
    nodes = [start]
    for stop, step in zip(segments[::2], segments[1::2]):
        nodes.extend(np.arange(nodes[-1] + step, stop + 0.5 * step, step))
    return np.array(nodes)


def _peak_rss():
    """Peak resident memory of this process [MiB]."""
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _timed(fn, *args, repeats=3):
    """Best wall time [s] of ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(fn(*args))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def _normalised(tgm, params):
    """Noise-free test spectra: the TGM model's spectra over their fitted continua; (b, n)."""
    flux = np.asarray(jax.vmap(tgm_flux, in_axes=(None, 0, 0, 0))(tgm, *params.T))
    return np.stack([f / np.asarray(L.continuum_values(L.fit_continuum(f), f.size)) for f in flux])


def _residual(theta, em, data):
    p = theta * SCALE
    return L.normalised_flux(em, p[0], p[1], p[2]) - data


def reconstruction(em):
    batch = jax.jit(jax.vmap(L.normalised_flux, in_axes=(None, 0, 0, 0)))
    rng = np.random.default_rng(0)
    pts = [jnp.asarray(rng.uniform(lo, hi, 64)) for lo, hi in
           (em.domain.teff, em.domain.logg, em.domain.feh)]
    t_batch = _timed(batch, em, *pts) / 64
    one = jax.jit(L.normalised_flux)
    t_one = _timed(one, em, 5500.0, 4.0, -0.2)
    dense = jax.jit(lambda e, t, g, z: L.dense_transmission(
        L.emulator_lines(e, t, g, z), jnp.asarray(e.grid.centres)))
    t_dense = _timed(dense, em, 5500.0, 4.0, -0.2, repeats=1)
    print(f"reconstruction: batched (64) {1e3 * t_batch:.2f} ms/spectrum; single "
          f"{1e3 * t_one:.2f} ms banded (halfwidth {em.halfwidth}), {1e3 * t_dense:.1f} ms dense")


def test_points(domain, n_teff):
    """n_teff Teff × 5 log g × 2 [Fe/H] inside the grid box, off its nodes."""
    span = lambda lo, hi, k: lo + (hi - lo) * (np.arange(k) + 0.5) / k  # noqa: E731
    mesh = np.meshgrid(span(*domain.teff, n_teff), span(*domain.logg, 5),
                       span(*domain.feh, 2), indexing="ij")
    return np.column_stack([m.ravel() for m in mesh])


def node_clones(em):
    """The nodes (N, 3) and the emulator's spectra there (N, n) (computed once per emulator)."""
    nodes = np.column_stack([m.ravel() for m in np.meshgrid(*em.axes, indexing="ij")])
    clones = jax.jit(jax.vmap(L.normalised_flux, in_axes=(None, 0, 0, 0)))(
        em, *jnp.asarray(nodes).T)
    return jnp.asarray(nodes), clones


def nearest_nodes(nodes, clones, data, count: int):
    """Parameters of the ``count`` nodes whose clones have the smallest RMS against each
    spectrum, nearest first; (b, count, 3).

    ‖d − c‖² = ‖d‖² − 2 d·c + ‖c‖²: one (b, n) × (n, N) product, no (b, N, n) array.
    """
    distance = jnp.sum(clones**2, axis=1)[None, :] - 2.0 * data @ clones.T
    return nodes[lax.top_k(-distance, count)[1]]


def lm_fitter(em, slots, starts=1):
    """A jitted batch LM fit (nodes, clones, data (b, n)) -> (b, 3) estimates [K, dex, dex].

    Start: the ``starts`` nearest nodes, the fit of lowest χ² kept; ``slots`` problems stepped at
    a time, refilled as they converge (``jaxlasp.fit.schedule.run_compacted``); box = the grid.
    """
    lower = np.array([em.domain.teff[0], em.domain.logg[0], em.domain.feh[0]]) / SCALE
    upper = np.array([em.domain.teff[1], em.domain.logg[1], em.domain.feh[1]]) / SCALE

    @jax.jit
    def fit(nodes, clones, data):
        b = data.shape[0]
        start = nearest_nodes(nodes, clones, data, starts).reshape(b * starts, 3) / SCALE
        state = run_compacted(_residual, start, em, jnp.repeat(data, starts, axis=0),
                              lower=lower, upper=upper, slots=min(slots, b * starts),
                              max_iter=50, ftol=1e-8, xtol=1e-8)
        best = jnp.argmin(state.cost.reshape(b, starts), axis=1)
        theta = state.theta.reshape(b, starts, 3)[jnp.arange(b), best]
        return theta * SCALE, state.n_iter.reshape(b, starts).sum(axis=1)

    return fit


def infer_lm(em, data, reference, slots=32, starts=1):
    """LM fits of every spectrum in one compacted batch; (estimates (b, 3), iterations (b,),
    seconds: start + fits, compile excluded). ``reference``: ``node_clones(em)``."""
    fit = lm_fitter(em, slots, starts)
    data = jnp.asarray(data)
    jax.block_until_ready(fit(*reference, data))     # compile
    t0 = time.perf_counter()
    est, n_iter = jax.block_until_ready(fit(*reference, data))
    return np.asarray(est), np.asarray(n_iter), time.perf_counter() - t0


def single_lm_seconds(em, data, reference, count=10, starts=1):
    """Mean wall time [s] of fitting ``count`` spectra one at a time (batch of 1)."""
    fit = lm_fitter(em, 1, starts)
    jax.block_until_ready(fit(*reference, jnp.asarray(data[:1])))
    t0 = time.perf_counter()
    for d in data[:count]:
        jax.block_until_ready(fit(*reference, jnp.asarray(d[None])))
    return (time.perf_counter() - t0) / count


def infer_gp(em, data, truth, calls=120, random=100):
    """gp_minimize of the RMS loss per spectrum (blase3D's protocol); (estimates, s each)."""
    from skopt import gp_minimize

    loss_fn = jax.jit(lambda p, d: jnp.sqrt(jnp.mean(_residual(p / SCALE, em, d) ** 2)))
    loss_fn(jnp.asarray(truth[0]), data[0]).block_until_ready()   # compile
    out, times = [], []
    for d, t in zip(data, truth):
        box = [(max(t[0] - 500.0, em.domain.teff[0]), min(t[0] + 500.0, em.domain.teff[1])),
               em.domain.logg, em.domain.feh]
        t0 = time.perf_counter()
        res = gp_minimize(lambda p: float(loss_fn(jnp.asarray(p), d)), box, n_calls=calls,
                          n_initial_points=random, random_state=0)
        times.append(time.perf_counter() - t0)
        out.append(res.x)
    return np.array(out), np.array(times)


def errors(est, truth, label, seconds):
    err = np.abs(est - truth)
    for name, sel in (("< 7000 K", truth[:, 0] < 7000), (">= 7000 K", truth[:, 0] >= 7000)):
        if sel.any():
            m = err[sel].mean(axis=0)
            print(f"  {label:24s} {name:9s} n={sel.sum():3d}  |ΔTeff| {m[0]:6.1f} K  |Δlog g| "
                  f"{m[1]:.3f}  |Δ[Fe/H]| {m[2]:.3f}  median |ΔTeff| "
                  f"{np.median(err[sel, 0]):6.1f} K  {seconds:.3f} s/spectrum")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teff", type=float, nargs="+", default=[3200.0, 7000.0, 200.0,
                                                                   11000.0, 400.0])
    parser.add_argument("--logg", type=float, nargs="+", default=[2.0, 5.5, 0.5])
    parser.add_argument("--feh", type=float, nargs="+", default=[-0.5, 0.0])
    parser.add_argument("--method", nargs="+", default=list(L.CLONE_METHODS),
                        choices=L.CLONE_METHODS)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--no-refine", dest="refine", action="store_false")
    parser.add_argument("--n-test-teff", type=int, default=21)
    parser.add_argument("--starts", type=int, default=1,
                        help="LM starts per spectrum: the nearest node clones, best χ² kept")
    parser.add_argument("--gp", type=int, default=21)
    parser.add_argument("--amplitude", nargs="+", default=["log", "linear"])
    args = parser.parse_args()

    tgm, label = _tgm()
    axes = (_axis(*args.teff), _axis(*args.logg), np.array(args.feh))
    print(f"model {label}, {tgm.grid.n} pixels; grid {[len(a) for a in axes]} = "
          f"{np.prod([len(a) for a in axes])} nodes (Teff {args.teff}, log g {args.logg}, "
          f"[Fe/H] {args.feh}); device {jax.devices()[0]}")
    source = L.source_grid(tgm, *axes)
    first = None
    for method in args.method:
        em = build(source, method, args)
        first = em if first is None else first
        protocol(tgm, em, method, args)
    for side, (dt, dg, dz) in BLASE3D.items():
        print(f"  {'blase3D (PHOENIX, GP)':24s} {side:9s} |ΔTeff| {dt:6.1f} K  |Δlog g| {dg:.3f}"
              f"  |Δ[Fe/H]| {dz:.3f}  ~200 s/spectrum")
    if args.gp:
        truth = test_points(first.domain, args.n_test_teff)
        pick = np.linspace(0, len(truth) - 1, args.gp).round().astype(int)
        truth = truth[pick]
        data = _normalised(tgm, truth)
        emu = first.with_amplitude(args.amplitude[0])
        label = f"{args.method[0]}, {args.amplitude[0]}"
        est, times = infer_gp(emu, data, truth)
        lm_est, _, lm_seconds = infer_lm(emu, data, node_clones(emu), starts=args.starts)
        for i, t, g, lmv, s in zip(pick, truth, est, lm_est, times):
            print(f"  GP ({label}) spectrum {i}: truth {t.round(2)} GP {np.round(g, 2)}"
                  f" ({s:.1f} s) LM {lmv.round(2)}")
        errors(est, truth, f"GP ({label})", times.mean())
        errors(lm_est, truth, f"LM ({label}), same", lm_seconds / len(pick))


def build(source, method, args):
    """Clone ``source`` by ``method``, print the clone fidelity and reconstruction speed."""
    t0 = time.perf_counter()
    em, report = L.build_linelist_emulator(source, method=method, epochs=args.epochs,
                                           refine=args.refine)
    build_s = time.perf_counter() - t0
    n_nodes = report.rms.size
    size = sum(np.asarray(a).nbytes for a in jax.tree.leaves(em)) / 2**20
    per_cell = em.active.shape[-1] if em.active is not None else em.lines.mu.shape[-1]
    print(f"\n### method {method}\nclone fidelity ({args.epochs} epochs"
          f"{', refined' if args.refine else ''}): RMS min {report.rms.min():.4f} median "
          f"{np.median(report.rms):.4f} max {report.rms.max():.4f}; lines detected per node median "
          f"{np.median(report.n_lines):.0f} (min {report.n_lines.min()}, max "
          f"{report.n_lines.max()}); {report.keys.size} distinct lines, {per_cell} evaluated per "
          f"spectrum; build {build_s:.1f} s ({build_s / n_nodes:.2f} s/node incl. compile); "
          f"emulator {size:.0f} MiB; peak RSS {_peak_rss():.0f} MiB")
    teffs = source.axes[0]
    for t_i in range(0, len(teffs), max(len(teffs) // 15, 1)):
        print(f"  Teff {teffs[t_i]:6.0f} K: median clone RMS {np.median(report.rms[t_i]):.4f}"
              f", max {report.rms[t_i].max():.4f}, lines {np.median(report.n_lines[t_i]):.0f}")
    reconstruction(em)
    return em


def protocol(tgm, em, method, args):
    """The blase3D protocol on ``em`` for each --amplitude: interpolation error and LM accuracy."""
    truth = test_points(em.domain, args.n_test_teff)
    data = _normalised(tgm, truth)
    print(f"protocol: {len(truth)} noise-free off-node test spectra in the grid box")
    for amplitude in args.amplitude:
        emu = em.with_amplitude(amplitude)
        label = f"{method}, {amplitude}"
        t0 = time.perf_counter()
        reference = jax.block_until_ready(node_clones(emu))
        t_ref = time.perf_counter() - t0
        off = np.sqrt(np.mean((np.asarray(jax.jit(jax.vmap(
            L.normalised_flux, in_axes=(None, 0, 0, 0)))(emu, *jnp.asarray(truth).T)) - data) ** 2,
            axis=1))
        print(f"  {label}: emulator RMS vs the test spectra at the truth: median "
              f"{np.median(off):.4f}, max {off.max():.4f}; node clones for the start "
              f"{t_ref:.1f} s (once per emulator, incl. compile)")
        est, n_iter, seconds = infer_lm(emu, data, reference, starts=args.starts)
        single = single_lm_seconds(emu, data, reference, starts=args.starts)
        print(f"  LM ({label}): batch of {len(data)} in {seconds:.1f} s = "
              f"{seconds / len(data):.3f} s/spectrum; one at a time {single:.3f} s/spectrum; "
              f"iterations mean {n_iter.mean():.1f}, max {n_iter.max()}")
        errors(est, truth, f"LM ({label})", seconds / len(truth))
        at_node = np.min(np.abs(est[:, :1] - np.asarray(em.axes[0])[None]), axis=1) < 1.0
        print(f"  LM ({label}): {at_node.mean():.0%} of the estimates within 1 K of a Teff node")


if __name__ == "__main__":
    main()
