"""The import rules of ARCHITECTURE.md ("Where things live"): a package imports only its own
modules and packages of lower layers, and no import cycle joins two modules. Imports are read
from the source (every `import`, lazy ones inside functions included), nothing is imported."""
from __future__ import annotations

from pathlib import Path

import pytest

from cxrkit.core.imports import import_statements

REPO = Path(__file__).resolve().parent.parent

# Lowest first. Packages of one layer do not import each other.
LAYERS = [
    {"cxrkit.core"},
    {"cxrkit.data", "cxrkit.evaluation"},
    {"cxrkit.labelstudio"},
    {"cxrkit.models"},
    {"cxrkit.selection"},
    {"cxrkit.pipeline"},
    {"cxrkit.services"},
    {"flows", "ml_backend"},
    {"cxrkit.cli"},
]
LAYER_OF = {package: k for k, layer in enumerate(LAYERS) for package in layer}


def modules() -> dict[str, Path]:
    found = {}
    for top in ("cxrkit", "flows", "ml_backend"):
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def package_of(module: str) -> str | None:
    parts = module.split(".")
    name = ".".join(parts[:2]) if parts[0] == "cxrkit" else parts[0]
    return name if name in LAYER_OF else None


def imports(path: Path, module: str, known: dict[str, Path]) -> set[str]:
    """The project's modules that the file imports (`from a import b`: a.b when b is a module)."""
    found = set()
    for target, names in import_statements(path, module):
        for name in [f"{target}.{n}" if f"{target}.{n}" in known else target for n in names] or [target]:
            while name and name not in known:  # `import a.b.c` names a module; a name inside one does not
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {m: imports(p, m, modules()) for m, p in modules().items()}


def test_every_package_has_a_layer():
    assert {package_of(m) for m in GRAPH} - {None} == set(LAYER_OF)
    assert [m for m in GRAPH if package_of(m) is None] == ["cxrkit"]  # the package's own __init__ only


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if package_of(m)))
def test_imports_go_down_the_layers(module):
    own = package_of(module)
    wrong = sorted(f"{target} ({package_of(target)})" for target in GRAPH[module]
                   if package_of(target) not in (own, None) and LAYER_OF[package_of(target)] >= LAYER_OF[own])
    assert not wrong, f"{module} ({own}, layer {LAYER_OF[own]}) imports a layer not below it: {wrong}"


def test_no_import_cycle():
    # Tarjan's strongly connected components over module imports; a component of two or more is a cycle.
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
