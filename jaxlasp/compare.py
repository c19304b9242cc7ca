"""Compare a jaxlasp catalogue with a PyLASP results CSV (as shipped with PyLASP)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

QUANTITIES = ("rv", "teff", "logg", "feh")
PYLASP_COLUMNS = {"rv": "pred_Rv", "teff": "pred_Teff", "logg": "pred_logg", "feh": "pred_FeH"}


def read_pylasp_csv(path) -> dict[str, dict[str, float]]:
    """PyLASP rows keyed by file stem; failed rows (−9999) are left out."""
    rows = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            values = {k: float(v) for k, v in row.items() if k != "ID"}
            if values["pred_Teff"] > -9000:
                rows[Path(row["ID"]).stem] = values
    return rows


def differences(table, reference: dict[str, dict[str, float]]) -> dict[str, np.ndarray]:
    """jaxlasp − PyLASP for each quantity, and jaxlasp/PyLASP − 1 for each error, on common ids."""
    ids = [i for i in table["id"] if i in reference]
    rows = {r["id"]: r for r in table}
    out = {"id": np.array(ids)}
    for q in QUANTITIES:
        col = PYLASP_COLUMNS[q]
        out[q] = np.array([rows[i][q] - reference[i][col] for i in ids])
        out[q + "_err"] = np.array([rows[i][q + "_err"] / reference[i][col + "_err"] - 1 for i in ids])
    return out


def format_differences(diff: dict[str, np.ndarray]) -> str:
    """A table of per-spectrum differences with median and max |Δ| lines."""
    names = ["rv", "teff", "logg", "feh", "rv_err", "teff_err", "logg_err", "feh_err"]
    lines = [f"{'id':>10} " + " ".join(f"{n:>9}" for n in names)]
    for k, i in enumerate(diff["id"]):
        lines.append(f"{i:>10} " + " ".join(f"{diff[n][k]:9.4f}" for n in names))
    for label, fn in (("median|Δ|", np.median), ("max|Δ|", np.max)):
        lines.append(f"{label:>10} " + " ".join(f"{fn(np.abs(diff[n])):9.4f}" for n in names))
    return "\n".join(lines)
