"""Spectral operations: resampling, broadening, multiplicative continuum."""
