"""Diagnostic plots (matplotlib, drawn off-screen): one fit, and recovered-vs-true parameters."""
from __future__ import annotations

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_fit(wave, flux, comps, used, title: str, path, masked=(), segments=()) -> None:
    """Observed vs model spectrum, residuals with excluded pixels marked, and the polynomial.

    wave: (n,) Å; flux: (n,) observed; comps: ``jaxlasp.model.Components`` of the fit;
    used: (n,) bool, pixels the fit used (the others — weight 0 or rejected by Clean — are marked);
    masked: wavelength intervals ((lo, hi), … [Å]) left out by a mask, shaded in every panel;
    segments: the (lo, hi) windows of a segmented fit, their ends drawn as dashed lines.
    """
    plt = _pyplot()
    wave, flux, used = np.asarray(wave), np.asarray(flux), np.asarray(used, bool)
    model, poly = np.asarray(comps.model), np.asarray(comps.polynomial)
    if segments:  # nothing is fitted between segments (their polynomials are 0 there)
        between = ~np.any([(wave >= lo) & (wave <= hi) for lo, hi in segments], axis=0)
        model, poly = np.where(between, np.nan, model), np.where(between, np.nan, poly)
        used = used | between  # not marked as excluded: no pixel there is fitted
    fig, (top, mid, bottom) = plt.subplots(3, 1, sharex=True, figsize=(11, 7),
                                           gridspec_kw={"height_ratios": [3, 1.3, 1]})
    top.plot(wave, flux, lw=0.7, color="0.2", label="observed")
    top.plot(wave, model, lw=0.7, color="tab:red", label="model × polynomial")
    top.plot(wave[~used], flux[~used], "x", ms=4, color="tab:orange", label="excluded pixels")
    top.set_ylabel("flux (normalised)")
    top.set_title(title, fontsize=10)
    top.legend(loc="lower right", fontsize=8)
    mid.plot(wave, flux - model, lw=0.6, color="0.3")
    mid.plot(wave[~used], (flux - model)[~used], "x", ms=4, color="tab:orange")
    mid.axhline(0, color="tab:red", lw=0.6)
    mid.set_ylabel("residual")
    bottom.plot(wave, poly, color="tab:blue", lw=0.8)
    bottom.set_ylabel("polynomial")
    bottom.set_xlabel("wavelength [Å, air]")
    for k, (lo, hi) in enumerate(masked):
        for ax in (top, mid, bottom):
            ax.axvspan(max(lo, wave[0]), min(hi, wave[-1]), color="0.85", zorder=0,
                       label="masked" if (k == 0 and ax is top) else None)
    for lo, hi in segments:
        for ax in (top, mid, bottom):
            for edge in (lo, hi):
                ax.axvline(edge, color="tab:green", lw=0.7, ls="--", zorder=0)
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
