"""A group of spectra through the fit: read → start → fit → errors → catalog columns.

The layer that the public API (``jaxlasp.api``), the pipeline, the CLI and the cluster runner
share: ``inputs`` (the model, the spectra of a file cut to the fit grid, pixel weights and start
points), ``fitting`` (one batch through the optimiser, Clean and the errors) and ``columns`` (the
catalog's columns, flags and Table).
"""
