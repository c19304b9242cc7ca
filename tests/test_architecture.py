"""The house rules of docs/architecture.md, read from the source with ``ast``: jaxlasp's modules
import one another at the top of the file (the CLI excepted) and only downwards through the
layers. ``python tests/test_architecture.py`` prints the import graph."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "jaxlasp"

LAYERS = (
    ("base", ("jaxlasp.grids", "jaxlasp.compile_cache", "jaxlasp.timing", "jaxlasp.plot",
              "jaxlasp.spectral", "jaxlasp.spectral.*", "jaxlasp.parallel",
              "jaxlasp.parallel.devices", "jaxlasp.io._fits", "jaxlasp.io.lock",
              "jaxlasp.io.catalog")),
    ("emulators", ("jaxlasp.emulators", "jaxlasp.emulators.*")),
    ("io", ("jaxlasp.io", "jaxlasp.io.*")),
    ("model", ("jaxlasp.model",)),
    ("fit", ("jaxlasp.fit", "jaxlasp.fit.*")),
    ("mocks and references", ("jaxlasp.mock", "jaxlasp.testing")),
    ("groups", ("jaxlasp.groups", "jaxlasp.groups.*")),
    ("api", ("jaxlasp.api",)),
    ("runs", ("jaxlasp.pipeline", "jaxlasp.demo_run", "jaxlasp.compare")),
    ("cluster", ("jaxlasp.parallel.cluster",)),
    ("face", ("jaxlasp",)),
    ("command", ("jaxlasp.cli", "jaxlasp.__main__")),
)
"""Lowest first. A module may import modules of lower layers, and of its own layer inside its own
package folder (``jaxlasp.fit.start`` imports ``jaxlasp.fit.driver``) or in a folder above it below
``jaxlasp`` (``jaxlasp.emulators.lines.continuum`` imports ``jaxlasp.emulators.tgm``)."""
DEFERRED_IMPORTS_ALLOWED = ("jaxlasp.cli",)
"""The command defers its imports so that ``jaxlasp --help`` answers at once."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path) for path in PACKAGE.rglob("*.py")}


def layer(module: str) -> int:
    """Index in LAYERS of the most specific pattern naming ``module``."""
    best = None
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            exact = pattern == module
            member = pattern.endswith(".*") and module.startswith(pattern[:-1])
            if exact or (member and (best is None or not best[1])):
                best = (index, exact)
    if best is None:
        raise KeyError(f"{module} is in no layer of tests/test_architecture.py: place it there "
                       "and in docs/architecture.md")
    return best[0]


def folder(module: str) -> str:
    """The package folder a module lives in (a package's ``__init__``: its own folder)."""
    return module if module in PACKAGES else module.rsplit(".", 1)[0]


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported jaxlasp module, at the top of the file) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "jaxlasp":
                continue
            # ``from jaxlasp.fit import lm`` imports the module jaxlasp.fit.lm
            names = sorted({f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES
                            else node.module for a in node.names})
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "jaxlasp"]
        else:
            continue
        found += [(name, id(node) in top) for name in names]
    return found


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    return {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


GRAPH = import_graph()
PACKAGES = {module_name(path) for path in PACKAGE.rglob("__init__.py")}


def test_every_module_has_a_layer():
    for module in GRAPH:
        layer(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_go_down_the_layers(module):
    for target, _ in GRAPH[module]:
        if layer(target) < layer(module):
            continue
        above = folder(target) != "jaxlasp" and folder(module).startswith(folder(target) + ".")
        same_folder = layer(target) == layer(module) and (folder(target) == folder(module)
                                                          or above)
        assert same_folder, (f"{module} ({LAYERS[layer(module)][0]}) imports {target} "
                             f"({LAYERS[layer(target)][0]}): imports run down the layers")


@pytest.mark.parametrize("module", sorted(set(GRAPH) - set(DEFERRED_IMPORTS_ALLOWED)))
def test_jaxlasp_modules_are_imported_at_the_top(module):
    deferred = [target for target, at_top in GRAPH[module] if not at_top]
    assert not deferred, f"{module} imports {deferred} inside a function: import at the top"


def test_no_import_cycles():
    visiting, done = set(), set()

    def visit(module, path):
        assert module not in visiting, " → ".join([*path, module])
        if module in done:
            return
        visiting.add(module)
        for target, _ in GRAPH.get(module, ()):
            visit(target, [*path, module])
        visiting.discard(module)
        done.add(module)

    for module in GRAPH:
        visit(module, [])


def test_the_rules_catch_an_upward_import(tmp_path):
    """The checks can fail: an emulator importing the fit is refused."""
    with pytest.raises(AssertionError, match="imports run down the layers"):
        GRAPH["jaxlasp.emulators.tgm"].append(("jaxlasp.fit.driver", True))
        try:
            test_imports_go_down_the_layers("jaxlasp.emulators.tgm")
        finally:
            GRAPH["jaxlasp.emulators.tgm"].pop()


if __name__ == "__main__":
    for name, graph_layer in ((m, layer(m)) for m in sorted(GRAPH, key=layer)):
        targets = ", ".join(f"{t}{'' if top else ' (deferred)'}" for t, top in GRAPH[name])
        print(f"[{LAYERS[graph_layer][0]}] {name} -> {targets or '—'}", file=sys.stdout)
