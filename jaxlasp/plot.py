"""Diagnostic plots (matplotlib, drawn off-screen): one fit, and recovered-vs-true parameters."""
from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


ZOOMS = ((4841.0, 4881.0, "Hβ"), (5160.0, 5195.0, "Mg b"))
"""Wavelength windows [Å, air] drawn enlarged under a fit: the lines that carry most of the
information on Teff (Hβ) and log g (the Mg b triplet)."""


def _broken(x, *ys):
    """``x`` and ``ys`` with NaN inserted where ``x`` stops increasing (where one arm of a
    native spectrum ends and the next, overlapping it, begins), so lines are not joined there."""
    cuts = np.flatnonzero(np.diff(x) <= 0) + 1
    return [np.insert(np.asarray(a, np.float64), cuts, np.nan) for a in (x, *ys)]


def plot_fit(wave, flux, comps, used, title: str, path, masked=(), segments=(), noise=None,
             zooms=ZOOMS) -> None:
    """Observed vs model spectrum, residuals with excluded pixels marked, the polynomial, and
    enlarged windows on the strongest lines.

    wave: (n,) Å (increasing, or increasing within each arm of a native spectrum); flux: (n,)
    observed; comps: ``jaxlasp.model.Components`` of the fit;
    used: (n,) bool, pixels the fit used (the others — weight 0 or rejected by Clean — are marked);
    masked: wavelength intervals ((lo, hi), … [Å]) left out by a mask, shaded in every panel;
    segments: the (lo, hi) windows of a segmented fit, their ends drawn as dashed lines;
    noise: (n,) 1σ of the flux (NaN where unknown), drawn as a band around zero residual;
    zooms: (lo, hi, label) windows [Å] drawn enlarged (those inside ``wave``).
    """
    plt = _pyplot()
    wave, flux, used = np.asarray(wave), np.asarray(flux), np.asarray(used, bool)
    model, poly = np.asarray(comps.model), np.asarray(comps.polynomial)
    if segments:  # nothing is fitted between segments (their polynomials are 0 there)
        between = ~np.any([(wave >= lo) & (wave <= hi) for lo, hi in segments], axis=0)
        model, poly = np.where(between, np.nan, model), np.where(between, np.nan, poly)
        used = used | between  # not marked as excluded: no pixel there is fitted
    zooms = [z for z in zooms if z[0] >= wave.min() and z[1] <= wave.max()]
    fig = plt.figure(figsize=(11, 9.5 if zooms else 7))
    grid = fig.add_gridspec(4 if zooms else 3, max(len(zooms), 1),
                            height_ratios=[3, 1.3, 1, 2.2][:4 if zooms else 3])
    top = fig.add_subplot(grid[0, :])
    mid = fig.add_subplot(grid[1, :], sharex=top)
    bottom = fig.add_subplot(grid[2, :], sharex=top)
    top.plot(*_broken(wave, flux), lw=0.7, color="0.2", label="observed")
    top.plot(*_broken(wave, model), lw=0.7, color="tab:red", label="model × polynomial")
    top.plot(wave[~used], flux[~used], "x", ms=4, color="tab:orange", label="excluded pixels")
    top.set_ylabel("flux (normalised)")
    top.set_title(title, fontsize=9)
    top.legend(loc="lower right", fontsize=8)
    if noise is not None:
        x, band = _broken(wave, noise)
        mid.fill_between(x, -band, band, color="tab:blue", alpha=0.2, lw=0, label="±1σ noise")
        mid.legend(loc="lower right", fontsize=7)
    mid.plot(*_broken(wave, flux - model), lw=0.6, color="0.3")
    mid.plot(wave[~used], (flux - model)[~used], "x", ms=4, color="tab:orange")
    mid.axhline(0, color="tab:red", lw=0.6)
    mid.set_ylabel("residual")
    bottom.plot(*_broken(wave, poly), color="tab:blue", lw=0.8)
    bottom.set_ylabel("polynomial")
    bottom.set_xlabel("wavelength [Å, air]")
    panels = [top, mid, bottom]
    for k, (lo, hi, label) in enumerate(zooms):
        ax = fig.add_subplot(grid[3, k])
        inside = (wave >= lo) & (wave <= hi)
        ax.plot(*_broken(wave[inside], flux[inside]), lw=0.9, color="0.2")
        ax.plot(*_broken(wave[inside], model[inside]), lw=0.9, color="tab:red")
        out = inside & ~used
        ax.plot(wave[out], flux[out], "x", ms=4, color="tab:orange")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("wavelength [Å, air]")
        for axis in (top, mid, bottom):
            axis.axvspan(lo, hi, color="tab:purple", alpha=0.06, zorder=0)
        panels.append(ax)
    zoomed = [(ax, lo, hi) for ax, (lo, hi, _) in zip(panels[3:], zooms)]
    for k, (lo, hi) in enumerate(masked):
        for ax in panels:
            ax.axvspan(max(lo, wave.min()), min(hi, wave.max()), color="0.85", zorder=0,
                       label="masked" if (k == 0 and ax is top) else None)
    for lo, hi in segments:
        for ax in panels:
            for edge in (lo, hi):
                ax.axvline(edge, color="tab:green", lw=0.7, ls="--", zorder=0)
    for ax, lo, hi in zoomed:
        ax.set_xlim(lo, hi)
    top.set_xlim(wave.min(), wave.max())
    if masked:
        top.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_recovery(truth: dict, fitted: dict, path, title: str = "") -> None:
    """Fitted minus true value against the true value, one panel per parameter.

    truth, fitted: {"rv": …, "teff": …, "logg": …, "feh": …} arrays of equal length.
    """
    plt = _pyplot()
    labels = {"rv": "RV [km/s]", "teff": "Teff [K]", "logg": "log g", "feh": "[Fe/H]"}
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.4))
    for ax, (name, label) in zip(axes, labels.items()):
        true, fit = np.asarray(truth[name]), np.asarray(fitted[name])
        ax.plot(true, fit - true, ".", ms=3)
        ax.axhline(0, color="tab:red", lw=0.6)
        ax.set_xlabel(f"true {label}")
        ax.set_ylabel("fitted − true")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
