"""Line-list emulator (blase3D): a spectral grid cloned into pseudo-Voigt lines, interpolated.

Method (Shankar, Gully-Santiago & Morley, blase3D; blase: Gully-Santiago & Morley 2022):

1. Source grid: flux F on a rectilinear (Teff, log g, [Fe/H]) grid, divided by a smooth
   continuum C (``fit_continuum``) to give the normalised spectrum S̄ = F / C.
2. Cloning: lines are detected in 1 − S̄ with a prominence threshold, and the clone
   S(λ) = Π_j (1 − a_j V_j(λ))  (blase's product of line transmissions; no extra polynomial P,
   the source is already continuum-normalised) is fitted to S̄ by Adam over the four parameters of
   every line: centre μ′ [Å], ln a (a [Å]: V_j has unit area, so a_j is an equivalent-width-like
   amplitude), Gaussian σ [Å] and Lorentzian half width γ [Å] (optimised as ln σ, ln γ so they
   stay positive; stored as σ, γ). A second pass (``missed_lines``) adds lines at the minima of
   S̄ − clone that are not cloned lines (blends, shoulders) and refits from the first fit.
3. Identification: a line is the same line at every grid node where its pre-optimisation centre
   is equal at 0.01 Å; where it was not detected its ln a is −1000 (it vanishes).
4. Manifolds: each line's (μ′, ln a, σ, γ) is interpolated linearly over the regular grid
   (``interpolate``, differentiable in the parameters); so is the continuum (its Legendre
   coefficients). Only the lines present at a corner of the point's grid cell are interpolated
   and evaluated (``cell_lines``): on the 480-node ELODIE grid of ``benchmarks/lines.py`` at most
   3792 of the 7451 distinct lines.

That is ``build_linelist_emulator(method="blase3d")``. Its clones are close at the nodes but poor
between them: each node is fitted alone, so neighbouring nodes split a blend differently and a
line detected one pixel apart at two nodes is two lines, each vanishing at the other node; the
interpolated spectrum is then worse than the nearest node's and a fit ends on a node. The default,
``method="shared"``, replaces steps 2–3: the detections of all nodes are pooled into one line list
(``pooled_lines``; detections of different nodes within one pixel are one line), every node
starts from that list, and the whole grid is cloned at once by Adam on the mean squared residual
plus a penalty on each line parameter's second difference across the nodes (``clone_grid``,
``roughness``), so the parameters vary smoothly and step 4's interpolation follows the spectra
between the nodes (``benchmarks/lines.py``: LM errors on off-node spectra several times smaller).

Profile: the pseudo-Voigt of Ida, Ando & Toraya (2000) in the Thompson–Cox–Hastings form, with the
width f and the Lorentz fraction η from σ and γ (blase paper Eq. 2; ``tch_width_eta``).

Banded evaluation: each line is evaluated on a fixed window of 2·halfwidth + 1 pixels around its
centre pixel (the wing cut) and ln(1 − aV) is scatter-added into the spectrum. For L lines the cost
is L·(2h+1) profile evaluations instead of L·n for a dense L × n evaluation; with ~1000 lines on
the 7506-pixel ELODIE grid and h = 64 that is 58× fewer, and XLA's CPU scatter-add of those values
costs little: 3436 lines, one spectrum on a 2-core CPU: 10 ms banded against 168 ms dense
(``benchmarks/lines.py``). The window start is an
integer (piecewise constant in the parameters, no gradient); the gradient flows through the
profile values at the pixel wavelengths.

The emulator's flux ``linelist_flux(em, teff, logg, feh)`` = continuum × clone is a spectrum on a
linear wavelength grid like ``tgm_flux`` gives, so the forward model can resample, broaden and
multiply it by its Legendre polynomial unchanged (it cannot fold the resampling into the emulator,
which is not linear in its parameters: the forward model must resample each spectrum).

The package's files, lowest first (each imports only those above it):
``profiles`` the ``Lines`` pytree, the pseudo-Voigt profile and the banded clone; ``continuum``
the Legendre continua and the source grid; ``detection`` line detection, start values and the
identification across the grid; ``cloning`` the per-node and the shared (whole-grid) clone;
``emulator`` the interpolation, ``LineListEmulator`` and its flux and crop; ``build``
``build_linelist_emulator``.
"""
from jaxlasp.emulators.lines.build import CLONE_METHODS, CloneReport, build_linelist_emulator
from jaxlasp.emulators.lines.cloning import (
    MERGE_PIXELS,
    SMOOTHNESS,
    SMOOTHNESS_SCALE,
    clone,
    clone_batch,
    clone_grid,
    clone_loss,
    pooled_lines,
    roughness,
)
from jaxlasp.emulators.lines.cloning import _to_free as _to_free
from jaxlasp.emulators.lines.continuum import (
    CONTINUUM_BLOCK,
    CONTINUUM_DEGREE,
    SourceGrid,
    continuum_values,
    fit_continuum,
    source_grid,
)
from jaxlasp.emulators.lines.detection import (
    CENTRE_PRECISION,
    MISSING_LN_AMP,
    PROMINENCE,
    Detected,
    centre_keys,
    detect_lines,
    identify_lines,
    initial_lines,
    missed_lines,
    stack_starts,
)
from jaxlasp.emulators.lines.emulator import (
    AMPLITUDE_SPACES,
    LineListEmulator,
    cell_lines,
    cell_weights,
    continuum_flux,
    crop_linelist,
    emulator_lines,
    interpolate,
    linelist_flux,
    normalised_flux,
)
from jaxlasp.emulators.lines.profiles import (
    FWHM_PER_SIGMA,
    HALFWIDTH,
    MAX_DEPTH,
    TCH_ETA,
    TCH_WIDTH,
    Lines,
    dense_transmission,
    pseudo_voigt,
    tch_width_eta,
    transmission,
    window_start,
)

__all__ = ["AMPLITUDE_SPACES", "CENTRE_PRECISION", "CLONE_METHODS", "CONTINUUM_BLOCK",
           "CONTINUUM_DEGREE", "FWHM_PER_SIGMA", "HALFWIDTH", "MAX_DEPTH", "MERGE_PIXELS",
           "MISSING_LN_AMP", "PROMINENCE", "SMOOTHNESS", "SMOOTHNESS_SCALE", "TCH_ETA",
           "TCH_WIDTH", "CloneReport", "Detected", "LineListEmulator", "Lines", "SourceGrid",
           "build_linelist_emulator", "cell_lines", "cell_weights", "centre_keys", "clone",
           "clone_batch", "clone_grid", "clone_loss", "continuum_flux", "continuum_values",
           "crop_linelist", "dense_transmission", "detect_lines", "emulator_lines",
           "fit_continuum", "identify_lines", "initial_lines", "interpolate", "linelist_flux",
           "missed_lines", "normalised_flux", "pooled_lines", "pseudo_voigt", "roughness",
           "source_grid", "stack_starts", "tch_width_eta", "transmission", "window_start"]
