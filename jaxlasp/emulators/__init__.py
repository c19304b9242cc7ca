"""Spectral emulators: parameters → model flux on a pixel grid."""
from jaxlasp.emulators.tgm import ELODIE32_DOMAIN, Domain, TGMEmulator, tgm_flux

__all__ = ["ELODIE32_DOMAIN", "Domain", "TGMEmulator", "tgm_flux"]
