"""Compare a jaxlasp catalogue with a PyLASP results CSV (as shipped with PyLASP)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from jaxlasp.io.catalog import read_catalog

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
        out[q + "_err"] = np.array([rows[i][q + "_err"] / reference[i][col + "_err"] - 1
                                    for i in ids])
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


REFERENCE_NAMES = {
    "rv": ("rv", "pred_rv", "rv_kms", "vr"), "teff": ("teff", "pred_teff"),
    "logg": ("logg", "pred_logg"), "feh": ("feh", "pred_feh", "fe_h", "[fe/h]")}
"""Column names (lower case) a reference catalog may use for each parameter; the error is the
same name + "_err"."""


def read_reference(path):
    """A catalog as an astropy Table with the match keys ``obsid_key`` (OBSID, where valid) and
    ``id_key`` (the file stem of its id) and ``rv``, ``teff``, ``logg``, ``feh`` (and their
    ``_err`` where present): a jaxlasp catalog, PyLASP's results CSV or LAMOST's LASP catalog
    (FITS or CSV, columns obsid, rv, teff, logg, feh). Rows PyLASP marks failed (−9999) are left
    out. ValueError when no parameter column is found."""
    from astropy.table import Table

    try:
        table = read_catalog(path)
    except Exception:
        table = Table.read(path)
    lower = {name.lower(): name for name in table.colnames}
    out = Table()
    ids = (np.asarray(table[lower["id"]]).astype(str) if "id" in lower
           else np.full(len(table), ""))
    out["id_key"] = [Path(i).name.split(".")[0] for i in ids]
    obsid = np.asarray(table[lower["obsid"]]) if "obsid" in lower else np.full(len(table), -1)
    out["obsid_key"] = [str(int(o)) if _valid_id(o) else "" for o in obsid]
    for quantity, names in REFERENCE_NAMES.items():
        name = next((lower[n] for n in names if n in lower), None)
        if name is None:
            continue
        out[quantity] = np.asarray(table[name], np.float64)
        err = lower.get(name.lower() + "_err")
        if err is not None:
            out[quantity + "_err"] = np.asarray(table[err], np.float64)
    found = [q for q in QUANTITIES if q in out.colnames]
    if not found:
        raise ValueError(f"{path}: no parameter columns ({', '.join(QUANTITIES)} or PyLASP's "
                         f"pred_*) in {table.colnames}")
    failed = np.zeros(len(out), bool)
    for q in found:
        failed |= out[q] <= -9000
    return out[~failed]


def _valid_id(value) -> bool:
    try:
        return int(value) >= 0
    except (TypeError, ValueError):
        return False


def matched_rows(catalog, reference) -> list[tuple[int, int]]:
    """(catalog row, reference row) pairs: by OBSID where both rows have one, else by id."""
    by_obsid = {key: k for k, key in enumerate(reference["obsid_key"]) if key}
    by_id = {key: k for k, key in enumerate(reference["id_key"]) if key}
    pairs = []
    for k, (obsid, id_) in enumerate(zip(catalog["obsid_key"], catalog["id_key"])):
        j = by_obsid.get(obsid) if obsid else None
        j = by_id.get(id_) if j is None and id_ else j
        if j is not None:
            pairs.append((k, j))
    return pairs


def compare_catalogs(catalog, reference) -> dict[str, dict]:
    """Per parameter, over the matched rows (``matched_rows``) finite in both: n, median Δ,
    robust scatter (1.4826 × MAD of Δ), max |Δ| (Δ = catalog − reference), and the arrays."""
    rows = matched_rows(catalog, reference)
    summary = {}
    for q in QUANTITIES:
        if q not in reference.colnames or q not in catalog.colnames:
            continue
        ours = np.array([catalog[q][k] for k, _ in rows], np.float64)
        theirs = np.array([reference[q][j] for _, j in rows], np.float64)
        keep = np.isfinite(ours) & np.isfinite(theirs)
        ours, theirs = ours[keep], theirs[keep]
        delta = ours - theirs
        median = float(np.median(delta)) if delta.size else np.nan
        summary[q] = {"n": int(delta.size), "median": median,
                      "scatter": float(1.4826 * np.median(np.abs(delta - median)))
                      if delta.size else np.nan,
                      "max": float(np.max(np.abs(delta))) if delta.size else np.nan,
                      "ours": ours, "theirs": theirs}
    return summary


def plot_comparison(summary, path, labels=("catalog", "reference")) -> None:
    """Δ against the reference value, one panel per parameter, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    quantities = [q for q in QUANTITIES if q in summary]
    figure, axes = plt.subplots(1, len(quantities), figsize=(4 * len(quantities), 3.4),
                                squeeze=False)
    for ax, q in zip(axes[0], quantities):
        s = summary[q]
        ax.scatter(s["theirs"], s["ours"] - s["theirs"], s=6, alpha=0.6)
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xlabel(f"{q} ({labels[1]})")
        ax.set_ylabel(f"Δ{q} ({labels[0]} − {labels[1]})")
        ax.set_title(f"n={s['n']} median {s['median']:.3g} scatter {s['scatter']:.3g}",
                     fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
