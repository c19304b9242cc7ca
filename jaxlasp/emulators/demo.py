"""A DEMO TGM emulator: synthetic spectra, NOT the ELODIE library.

jaxlasp can run without the real ELODIE 3.2 emulator coefficients (for a demonstration, or on a
machine with no data and no network) by using this small model instead. It has the same format as
the ELODIE 3.2 TGM emulator (interpolator version 2, 23 basis terms, three regimes; ALGORITHM §a),
but its coefficients are least-squares fits to toy spectra made here by ``demo_spectrum``: a
Planck continuum times absorption lines at the wavelengths of real lines, with strengths that
follow Teff, log g and [Fe/H] qualitatively. **Parameters measured with the demo model are not
astrophysical results.**

For science use the real ELODIE 3.2 model, ``elodie32_flux_tgm.fits``, from the ULySS
distribution (http://ulyss.univ-lyon1.fr/, "models" page), and read it with
``jaxlasp.io.read_tgm``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxlasp.emulators.tgm import (
    ELODIE32_DOMAIN,
    G_OFFSET,
    N_TERMS,
    REGIMES,
    T_OFFSET,
    TGMEmulator,
    basis_terms,
)
from jaxlasp.grids import LinearGrid

DEMO_LABEL = "jaxlasp DEMO model - synthetic, not ELODIE"
"""Label written into the demo model's FITS header (OBJECT and COMMENT)."""

RESOLUTION = 10000.0
"""Resolving power λ/FWHM of the demo lines (ELODIE's)."""
_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
"""FWHM / σ of a Gaussian."""

FIT_TEFF = {"warm": (4000.0, 9000.0), "hot": (7000.0, ELODIE32_DOMAIN.teff[1]),
            "cold": (ELODIE32_DOMAIN.teff[0], 4550.0)}
"""Teff range [K] fitted by each regime: where its blend weight is non-zero (ALGORITHM §a.4),
within ``ELODIE32_DOMAIN``."""

N_FIT = 256
"""Parameter points fitted per regime."""

FIT_SEED = {"warm": 1, "hot": 2, "cold": 3}
"""Seeds of the scrambled Sobol sequences of the fit points."""

_HC_K = 1.438777e8
"""hc/k [Å K], for the Planck function."""

# Species: (Teff of peak strength [K], width of the log10-Teff bump on the cool side, on the hot
# side [dex], d log10 S / d [Fe/H], d log10 S / d log g, central opacity S at the peak for
# [Fe/H] = 0, log g = 4.44). Neutral metals peak in cool stars, ions in F–A stars (and are
# stronger in giants), He I in B stars. Metal lines grow as 10^(0.5 [Fe/H]), a flattened curve of
# growth that keeps the spectra within reach of the emulator's cubic basis.
_SPECIES = {
    "H I": (9500.0, 0.12, 0.25, 0.0, 0.05, 15.0),
    "He I": (22000.0, 0.06, 0.12, 0.0, 0.0, 0.6),
    "Ca II": (5000.0, 0.40, 0.20, 0.5, 0.0, 20.0),
    "CH": (4800.0, 0.08, 0.08, 0.5, 0.0, 0.4),
    "TiO": (2800.0, 0.10, 0.05, 0.5, 0.0, 1.5),
    "Fe I": (3600.0, 0.40, 0.13, 0.5, 0.03, 0.4),
    "Ti I": (3400.0, 0.40, 0.10, 0.5, 0.03, 0.4),
    "Cr I": (3600.0, 0.40, 0.12, 0.5, 0.03, 0.3),
    "Ca I": (3600.0, 0.40, 0.11, 0.5, 0.03, 0.4),
    "Mg I": (4200.0, 0.40, 0.15, 0.5, 0.03, 0.4),
    "Na I": (3400.0, 0.40, 0.10, 0.5, 0.03, 0.3),
    "Ni I": (3800.0, 0.40, 0.12, 0.5, 0.03, 0.3),
    "Mn I": (3600.0, 0.40, 0.12, 0.5, 0.03, 0.3),
    "Fe II": (7000.0, 0.20, 0.15, 0.5, -0.10, 0.3),
    "Ti II": (7000.0, 0.20, 0.15, 0.5, -0.10, 0.35),
    "Cr II": (7500.0, 0.20, 0.15, 0.5, -0.10, 0.2),
    "Sr II": (5500.0, 0.25, 0.20, 0.5, -0.10, 1.0),
    "Ba II": (5500.0, 0.25, 0.20, 0.5, -0.10, 0.8),
    "Mg II": (10000.0, 0.15, 0.20, 0.5, -0.05, 1.0),
    "Si II": (12000.0, 0.10, 0.15, 0.5, -0.05, 0.4),
}

# Strong lines with pressure-broadened wings: (air λ [Å], species, relative strength, Lorentz
# half-width at Teff = 10⁴ K, log g = 4.44 [Å], d log10 γ / d log g, d log10 γ / d log10 Teff).
_STRONG = (
    (6562.80, "H I", 1.5, 4.0, 0.10, 0.7), (4861.32, "H I", 1.0, 3.0, 0.10, 0.7),
    (4340.46, "H I", 0.8, 2.5, 0.10, 0.7), (4101.73, "H I", 0.6, 2.2, 0.10, 0.7),
    (3970.07, "H I", 0.5, 2.0, 0.10, 0.7),
    (3933.66, "Ca II", 1.0, 1.0, 0.10, 0.0), (3968.47, "Ca II", 0.7, 1.0, 0.10, 0.0),
    (4226.73, "Ca I", 20.0, 0.25, 0.10, 0.0),
    (5167.32, "Mg I", 8.0, 0.25, 0.10, 0.0), (5172.68, "Mg I", 12.0, 0.25, 0.10, 0.0),
    (5183.60, "Mg I", 15.0, 0.25, 0.10, 0.0),
    (5889.95, "Na I", 15.0, 0.20, 0.10, 0.0), (5895.92, "Na I", 10.0, 0.20, 0.10, 0.0),
)

# Illustrative list of real lines (approximate air wavelengths [Å], optional ":relative strength"),
# drawn with an instrumental profile of resolving power RESOLUTION.
_LINES = {
    "Fe I": """3920.26 3922.91 3927.92 3930.30 4005.24 4045.81:4 4063.59:3 4071.74:3 4132.06:2
        4143.87:2 4181.75 4187.04 4191.43 4198.30 4202.03:2 4219.36 4235.94 4250.12:2 4250.79:2
        4260.47:2 4271.76:3 4282.40 4294.12 4299.23 4307.90:3 4325.76:3 4383.54:4 4404.75:3
        4415.12:2 4427.31 4442.34 4447.72 4459.12 4461.65 4466.55 4476.02 4494.56 4528.61 4531.15
        4592.65 4602.94 4619.29 4625.05 4632.91 4647.43 4667.45 4678.85 4691.41 4707.27 4733.59
        4736.77 4786.81 4789.65 4871.32:2 4872.14 4890.76:2 4891.49:2 4903.31 4918.99 4920.50:2
        4924.77 4938.81 4939.69 4946.39 4957.60:3 4966.09 4973.10 4994.13 5001.86 5006.12 5012.07
        5014.94 5022.24 5041.07 5041.76 5049.82 5051.63 5068.77 5074.75 5079.22 5083.34 5090.77
        5107.45 5110.41 5123.72 5127.36 5133.69 5137.38 5139.46 5141.74 5142.93 5150.84 5151.91
        5162.27 5166.28 5171.60 5191.45 5192.34 5194.94 5198.71 5202.34 5215.18 5216.27 5225.53
        5227.19:3 5232.94:2 5242.49 5250.21 5250.65 5254.96 5263.31 5266.56 5269.54:4 5281.79
        5283.62 5302.30 5307.36 5324.18 5328.04:3 5328.53 5332.90 5339.93 5341.02 5365.40
        5367.47 5369.96 5371.49:3 5383.37 5389.48 5393.17 5397.13:3 5400.50 5404.15 5405.77:3
        5410.91 5415.20 5424.07 5429.70:3 5434.52 5446.92:3 5455.61 5463.28 5473.90 5476.56
        5497.52 5501.47 5506.78 5524.25 5563.60 5569.62 5572.84 5576.09 5586.76 5615.64 5624.54
        5658.82 5662.52 5701.54 5709.38 5753.12 5775.08 5816.37 5862.36 5909.97 5914.20 5930.18
        5934.65 5952.72 5956.69 5976.78 5983.68 5984.81 6003.01 6008.56 6020.17 6024.06 6027.05
        6056.00 6065.48 6078.49 6082.71 6093.64 6096.66 6136.61 6137.69 6151.62 6157.73 6165.36
        6173.33 6180.20 6187.99 6191.56:2 6200.31 6213.43 6219.28 6230.72:2 6240.65 6246.32
        6252.56:2 6254.26 6265.13 6270.22 6297.79 6301.50 6302.49 6311.50 6315.81 6318.02 6322.69
        6335.33 6336.82 6344.15 6355.03 6358.69 6380.74 6393.60:2 6400.00:2 6411.65 6419.95
        6421.35 6430.85 6494.98:2 6498.94 6546.24 6592.91 6593.87 6609.11 6663.44 6677.99
        6705.10 6750.15""",
    "Fe II": """4178.86 4233.17:2 4296.57 4303.17 4351.76 4416.83 4491.40 4508.29 4515.34 4520.22
        4522.63:2 4541.52 4549.47:2 4555.89 4576.34 4583.84:2 4620.52 4629.34 4923.93:3 5018.44:3
        5169.03:3 5197.58 5234.63 5264.81 5276.00 5284.11 5316.62:2 5325.55 5362.87 5414.07
        5425.26 5534.85 6084.11 6149.26 6238.39 6247.56 6416.92 6432.68 6456.38 6516.08""",
    "Ti I": """3998.64 4533.24 4534.78 4656.47 4681.91 4981.73 4991.07 4999.50 5007.21 5014.28
        5022.87 5039.96 5064.65 5173.74 5192.97 5210.39 6258.10 6261.10""",
    "Ti II": """4300.05 4395.03:2 4443.80:2 4468.49:2 4501.27:2 4533.97:2 4563.76:2 4571.97:2
        4589.96 5129.16 5188.69 5226.54 5336.79 5381.02 5418.77""",
    "Cr I": """4254.33:2 4274.80:2 4289.72:2 5204.51 5206.04 5208.42 5264.15 5296.69 5298.28
        5345.80 5348.31 5409.78""",
    "Cr II": "4558.65 4588.20 4616.63 4618.80 4824.13 5237.33",
    "Ca I": """4302.53 4318.65 4425.44 4434.96 4454.78:2 5588.76:2 5857.45 6102.72 6122.22:2
        6162.17:2 6439.08:2 6449.81 6462.57 6717.68""",
    "Mg I": "3986.75 4571.10 4702.99:2 5528.41:2",
    "Na I": "5682.63 5688.21 6154.23 6160.75",
    "Ni I": "5035.36 5476.90 6643.63",
    "Mn I": "4030.75:2 4033.06:2 4034.48 6013.51 6021.82",
    "Sr II": "4077.71 4215.52",
    "Ba II": "4554.03 4934.08 6141.71 6496.90",
    "Mg II": "4481.23",
    "Si II": "6347.11 6371.37",
    "He I": "4026.19 4387.93 4471.48:2 4921.93 5015.68 5875.62:2 6678.15",
}

_G_BAND = (4305.0, 6.0)
"""CH G band: centre and Gaussian σ [Å] of one broad feature."""
_TIO_HEADS = (4761.0, 4954.0, 5167.0, 5448.0, 5847.0, 6159.0, 6651.0)
"""TiO band heads [Å] (bands degrade to the red)."""
_TIO_DECAY = 80.0
"""e-folding length of the TiO bands redward of the head [Å]."""
_TIO_EDGE = 0.5
"""Width of the (logistic) rise of a TiO band at its head [Å]."""
_DEPTH_MAX = 0.95
"""Largest line depth: normalised flux = 1 − D·τ/(D + τ) for opacity τ (Minnaert)."""


def _line_table():
    """Weak lines as arrays: air λ [Å], species index into ``_SPECIES``, relative strength."""
    names = list(_SPECIES)
    rows = [(float(w), names.index(sp), float(s or 1.0))
            for sp, text in _LINES.items()
            for w, _, s in (item.partition(":") for item in text.split())]
    return tuple(np.array(col) for col in zip(*rows))


_WEAK_WAVE, _WEAK_SPECIES, _WEAK_REL = _line_table()


def _species_strength(species, teff, logg, feh):
    """Central opacity of a line of relative strength 1 of ``species``, shape of ``teff``.

    A log-normal bump in Teff (different widths on either side of the peak) scaled by the
    metallicity and gravity dependences of ``_SPECIES``.
    """
    t_peak, w_cool, w_hot, d_feh, d_logg, s_peak = _SPECIES[species]
    x = np.log10(teff / t_peak)
    width = np.where(x < 0.0, w_cool, w_hot)
    scale = 10.0 ** (d_feh * feh + d_logg * (logg - G_OFFSET))
    return s_peak * np.exp(-0.5 * (x / width) ** 2) * scale


def _pseudo_voigt(delta, sigma, gamma, eta):
    """Peak-normalised pseudo-Voigt at offsets ``delta`` [Å]: Gaussian σ, Lorentz HWHM γ [Å]."""
    return (1.0 - eta) * np.exp(-0.5 * (delta / sigma) ** 2) + eta / (1.0 + (delta / gamma) ** 2)


def demo_spectrum(teff, logg, feh, wave):
    """Synthetic DEMO spectrum (not ELODIE) in F_λ, normalised so the continuum is 1 at 5000 Å.

    ``teff`` [K], ``logg`` [dex], ``feh`` [dex]: scalars, or 1-d arrays of equal length n;
    ``wave``: air wavelengths [Å], shape (m,). Returns float64 of shape (m,), or (n, m) for array
    parameters. A Planck continuum B_λ(Teff)/B_λ=5000Å(Teff) times the line absorption
    1 − D·τ/(D + τ) with D = 0.95 (Minnaert's curve-of-growth formula), where the opacity τ(λ)
    sums pseudo-Voigt lines at the wavelengths of real lines (Balmer, Ca II H&K, Ca I 4227, Mg b
    and Na D with pressure wings; ~370 metal, ion and He I lines at the instrumental width of
    R = 10000), the CH G band and TiO bands.
    """
    scalar = np.ndim(teff) == 0
    teff, logg, feh = (np.atleast_1d(np.asarray(p, np.float64))[:, None] for p in (teff, logg, feh))
    wave = np.asarray(wave, np.float64)
    sigma_inst = wave / (RESOLUTION * _FWHM_PER_SIGMA)

    continuum = (5000.0 / wave) ** 5 * np.expm1(_HC_K / (5000.0 * teff)) / np.expm1(
        _HC_K / (wave * teff))

    # Weak lines: instrumental Gaussian with 10 % of a Lorentzian (γ = 1.5 σ) for faint wings.
    strength = np.concatenate([_species_strength(sp, teff, logg, feh) for sp in _SPECIES],
                              axis=1)                                    # (n, species)
    sigma = _WEAK_WAVE / (RESOLUTION * _FWHM_PER_SIGMA)
    profiles = _pseudo_voigt(wave[None, :] - _WEAK_WAVE[:, None], sigma[:, None],
                             1.5 * sigma[:, None], 0.1)                  # (lines, m)
    tau = (strength[:, _WEAK_SPECIES] * _WEAK_REL) @ profiles

    # Strong lines: half Gaussian core, half Lorentzian wings whose width depends on Teff, log g.
    for centre, species, rel, gamma0, dg, dt in _STRONG:
        gamma = gamma0 * 10.0 ** (dg * (logg - G_OFFSET) + dt * np.log10(teff / 1e4))
        s = rel * _species_strength(species, teff, logg, feh)
        tau = tau + s * _pseudo_voigt(wave - centre, sigma_inst, np.maximum(gamma, sigma_inst), 0.5)

    g_band = np.exp(-0.5 * ((wave - _G_BAND[0]) / _G_BAND[1]) ** 2)
    tau = tau + _species_strength("CH", teff, logg, feh) * g_band
    x = wave[None, :] - np.array(_TIO_HEADS)[:, None]                    # (heads, m)
    band = np.exp(-x / _TIO_DECAY - np.logaddexp(0.0, -x / _TIO_EDGE)).sum(axis=0)
    tau = tau + _species_strength("TiO", teff, logg, feh) * band

    flux = continuum * (1.0 - _DEPTH_MAX * tau / (_DEPTH_MAX + tau))
    return flux[0] if scalar else flux


def _fit_points(regime: str) -> np.ndarray:
    """Deterministic parameter points (Teff [K], log g, [Fe/H]) of one regime, shape (N_FIT, 3).

    A scrambled Sobol sequence in (log10 Teff, log g, [Fe/H]) over ``FIT_TEFF[regime]`` and the
    log g, [Fe/H] ranges of ``ELODIE32_DOMAIN``, with each coordinate mapped u → (1 − cos πu)/2
    (Chebyshev spacing), which crowds points towards the edges of the box and keeps the
    polynomial fit accurate (and the flux positive) at the edges.
    """
    from scipy.stats import qmc

    lo_t, hi_t = FIT_TEFF[regime]
    dom = ELODIE32_DOMAIN
    unit = qmc.Sobol(d=3, scramble=True, seed=FIT_SEED[regime]).random(N_FIT)
    unit = 0.5 - 0.5 * np.cos(np.pi * unit)
    lows = [np.log10(lo_t), dom.logg[0], dom.feh[0]]
    highs = [np.log10(hi_t), dom.logg[1], dom.feh[1]]
    pts = qmc.scale(unit, lows, highs)
    pts[:, 0] = 10.0 ** pts[:, 0]
    return pts


def _design(regime: str, teff, logg, feh) -> np.ndarray:
    """Version-2 basis of one regime at the points, float64, shape (n, 23) (τ as in tgm.py)."""
    t = np.log10(teff) - T_OFFSET
    tau = (t + 0.1) / 0.2 if regime == "cold" else t / 0.2
    with jax.enable_x64(True):
        phi = basis_terms(jnp.asarray(tau), jnp.asarray(logg - G_OFFSET), jnp.asarray(feh), 2)
        return np.asarray(phi, np.float64)


@functools.lru_cache(maxsize=4)
def demo_emulator(start: float = 3900.0, stop: float = 6800.0, step: float = 0.2) -> TGMEmulator:
    """The DEMO TGM emulator (synthetic, not ELODIE) on the linear grid start..stop [Å] by step.

    For each regime, the 23 version-2 coefficients of every pixel are the linear least-squares fit
    to ``demo_spectrum`` at the ``N_FIT`` points of ``_fit_points(regime)``, so ``tgm_flux``
    reproduces ``demo_spectrum`` (to ~1 % RMS). Deterministic and cached; about 2 s to build.
    """
    n = round((stop - start) / step) + 1
    grid = LinearGrid(float(start), float(step), n)
    coef = np.empty((3, N_TERMS[2], n))
    for r, regime in enumerate(REGIMES):
        teff, logg, feh = _fit_points(regime).T
        spectra = demo_spectrum(teff, logg, feh, grid.centres)
        coef[r] = np.linalg.lstsq(_design(regime, teff, logg, feh), spectra, rcond=None)[0]
    with jax.enable_x64(True):
        coef = jnp.asarray(coef, jnp.float64)
    return TGMEmulator(coef, version=2, grid=grid, domain=ELODIE32_DOMAIN)


def write_demo_fits(path, emulator: TGMEmulator | None = None) -> None:
    """Write ``emulator`` (default ``demo_emulator()``) as a ULySS TGM FITS file at ``path``.

    HDU0 warm, HDU1 'HOT', HDU2 'COLD': float32 images of NAXIS1 = pixels × NAXIS2 = terms, with
    the linear air-wavelength grid [Å] in CRVAL1/CDELT1/CRPIX1 and ULY_TYPE='TGM', INTRP_V=2.
    """
    from astropy.io import fits

    emulator = demo_emulator() if emulator is None else emulator
    coef = np.asarray(emulator.coef, np.float32)
    header = fits.Header()
    header["CRVAL1"] = (emulator.grid.start, "air wavelength of pixel CRPIX1 [Angstrom]")
    header["CDELT1"] = (emulator.grid.step, "pixel step [Angstrom]")
    header["CRPIX1"] = 1
    header["CTYPE1"] = "AWAV"
    header["ULY_TYPE"] = "TGM"
    header["INTRP_V"] = (emulator.version, "TGM interpolator version")
    header["OBJECT"] = DEMO_LABEL
    header["COMMENT"] = DEMO_LABEL + "; real model: elodie32_flux_tgm.fits from ULySS"
    hdus = [fits.PrimaryHDU(coef[0], header=header),
            fits.ImageHDU(coef[1], header=header, name="HOT"),
            fits.ImageHDU(coef[2], header=header, name="COLD")]
    fits.HDUList(hdus).writeto(path, overwrite=True)
