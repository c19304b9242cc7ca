"""The tutorial notebook runs top to bottom (its code cells, executed in order)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"


@pytest.mark.slow
def test_tutorial_runs(monkeypatch):
    monkeypatch.chdir(NOTEBOOK.parent)
    namespace: dict = {}
    for cell in json.loads(NOTEBOOK.read_text())["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), str(NOTEBOOK), "exec"), namespace)
    table = namespace["table"]
    assert all(table["converged"]), table[~table["converged"]]
