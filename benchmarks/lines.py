"""Line-list (blase3D) emulator: clone fidelity, reconstruction speed, blase3D inference protocol.

Usage: python benchmarks/lines.py [--teff 4000 8000 500] [--logg 2 5 1] [--feh -0.5 0]
       [--epochs 100] [--n-test-teff 21] [--gp 3] [--amplitude log linear]

Source grid: the ELODIE 3.2 TGM model of ../shared/data (the demo model when absent) evaluated on
the rectilinear grid --teff/--logg (start stop step) × --feh, continuum-normalised
(``jaxlasp.emulators.lines.source_grid``), cloned with Adam (lr 0.05, --epochs).

Printed:
* clone fidelity: RMS of clone − normalised source per node (min / median / max), lines per node,
  distinct lines, build time;
* reconstruction: ms per spectrum for a vmapped batch of 64 (banded evaluation), and for one
  spectrum with the banded and the dense (no wing cut) evaluation;
* the blase3D protocol, reduced to the grid's range: --n-test-teff Teff × 5 log g × 2 [Fe/H]
  test spectra off the nodes (the TGM model's own normalised spectra, noise-free), inferred with
  jaxlasp's LM (``jaxlasp.fit.lm.run``, exact forward-mode Jacobians of the normalised emulator
  spectrum, start at the node whose clone is nearest in RMS, box = the grid) for each --amplitude
  interpolation; mean |error| for Teff below / at or above 7000 K, seconds per inference;
* --gp spectra inferred by scikit-optimize ``gp_minimize`` (100 random + 20 guided evaluations of
  the RMS loss, Teff within ±500 K of the truth as blase3D), on the first --amplitude.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import jaxlasp  # noqa: E402,F401  (float64)
from jaxlasp.emulators import lines as L  # noqa: E402
from jaxlasp.emulators.tgm import tgm_flux  # noqa: E402
from jaxlasp.fit import lm  # noqa: E402

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


def _axis(start, stop, step):
    return np.arange(start, stop + 0.5 * step, step)


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


def nearest_node(em, data):
    """Parameters of the node whose clone has the smallest RMS against each spectrum; (b, 3)."""
    nodes = np.column_stack([m.ravel() for m in np.meshgrid(*em.axes, indexing="ij")])
    clones = np.asarray(jax.jit(jax.vmap(L.normalised_flux, in_axes=(None, 0, 0, 0)))(
        em, *jnp.asarray(nodes).T))
    rms = ((data[:, None, :] - clones[None]) ** 2).mean(axis=2)
    return nodes[np.argmin(rms, axis=1)]


def infer_lm(em, data, chunk=16):
    """LM fits of (Teff, log g, [Fe/H]) to the normalised spectra; (estimates (b, 3), s total)."""
    lower = np.array([em.domain.teff[0], em.domain.logg[0], em.domain.feh[0]]) / SCALE
    upper = np.array([em.domain.teff[1], em.domain.logg[1], em.domain.feh[1]]) / SCALE
    fit = jax.jit(lambda th, d: lm.run(_residual, th, em, d, lower=lower, upper=upper,
                                       max_iter=50, ftol=1e-8, xtol=1e-8))
    t0 = time.perf_counter()
    start = nearest_node(em, data) / SCALE
    out = []
    for i in range(0, len(data), chunk):
        state = fit(jnp.asarray(start[i:i + chunk]), jnp.asarray(data[i:i + chunk]))
        out.append(np.asarray(state.theta) * SCALE)
    return np.concatenate(out), time.perf_counter() - t0


def infer_gp(em, data, truth, calls=120, random=100):
    """gp_minimize of the RMS loss per spectrum (blase3D's protocol); (estimates, s each)."""
    from skopt import gp_minimize

    loss_fn = jax.jit(lambda p, d: jnp.sqrt(jnp.mean(_residual(p / SCALE, em, d) ** 2)))
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
    parser.add_argument("--teff", type=float, nargs=3, default=[4000.0, 8000.0, 500.0])
    parser.add_argument("--logg", type=float, nargs=3, default=[2.0, 5.0, 1.0])
    parser.add_argument("--feh", type=float, nargs="+", default=[-0.5, 0.0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--n-test-teff", type=int, default=21)
    parser.add_argument("--gp", type=int, default=3)
    parser.add_argument("--amplitude", nargs="+", default=["log", "linear"])
    args = parser.parse_args()

    tgm, label = _tgm()
    axes = (_axis(*args.teff), _axis(*args.logg), np.array(args.feh))
    print(f"model {label}, {tgm.grid.n} pixels; grid {[len(a) for a in axes]} nodes "
          f"(Teff {args.teff}, log g {args.logg}, [Fe/H] {args.feh}); device {jax.devices()[0]}")
    t0 = time.perf_counter()
    source = L.source_grid(tgm, *axes)
    em, report = L.build_linelist_emulator(source, epochs=args.epochs)
    build = time.perf_counter() - t0
    n_nodes = report.rms.size
    print(f"clone fidelity ({args.epochs} epochs): RMS min {report.rms.min():.4f} median "
          f"{np.median(report.rms):.4f} max {report.rms.max():.4f}; lines/node median "
          f"{np.median(report.n_lines):.0f} (min {report.n_lines.min()}, max "
          f"{report.n_lines.max()}); {report.keys.size} distinct lines; build {build:.1f} s "
          f"({build / n_nodes:.2f} s/node incl. compile)")
    for t_i in range(len(axes[0])):
        print(f"  Teff {axes[0][t_i]:6.0f} K: median clone RMS {np.median(report.rms[t_i]):.4f}, "
              f"lines {np.median(report.n_lines[t_i]):.0f}")
    reconstruction(em)

    truth = test_points(em.domain, args.n_test_teff)
    data = _normalised(tgm, truth)
    print(f"protocol: {len(truth)} noise-free off-node test spectra in the grid box")
    for amplitude in args.amplitude:
        emu = em.with_amplitude(amplitude)
        off = np.sqrt(np.mean((np.asarray(jax.jit(jax.vmap(
            L.normalised_flux, in_axes=(None, 0, 0, 0)))(emu, *jnp.asarray(truth).T)) - data) ** 2,
            axis=1))
        print(f"  amplitude {amplitude}: emulator RMS vs the test spectra at the truth: median "
              f"{np.median(off):.4f}, max {off.max():.4f}")
        est, _ = infer_lm(emu, data[:16])  # compile
        est, seconds = infer_lm(emu, data)
        errors(est, truth, f"LM ({amplitude})", seconds / len(truth))
    for side, (dt, dg, dz) in BLASE3D.items():
        print(f"  {'blase3D (PHOENIX, GP)':24s} {side:9s} |ΔTeff| {dt:6.1f} K  |Δlog g| {dg:.3f}"
              f"  |Δ[Fe/H]| {dz:.3f}  ~200 s/spectrum")
    if args.gp:
        pick = np.linspace(0, len(truth) - 1, args.gp).astype(int)
        emu = em.with_amplitude(args.amplitude[0])
        est, times = infer_gp(emu, data[pick], truth[pick])
        lm_est, _ = infer_lm(emu, data[pick])
        for i, t, g, lmv, s in zip(pick, truth[pick], est, lm_est, times):
            print(f"  GP ({args.amplitude[0]}) spectrum {i}: truth {t.round(2)} GP {np.round(g, 2)}"
                  f" ({s:.1f} s) LM {lmv.round(2)}")
        errors(est, truth[pick], f"GP ({args.amplitude[0]})", times.mean())


if __name__ == "__main__":
    main()
