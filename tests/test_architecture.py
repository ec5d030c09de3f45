"""The shape of the code (docs/architecture.md), checked on the source: the library never imports a stage, the
infrastructure floor imports nothing above it, and no two modules import each other (lazy imports included)."""

from __future__ import annotations

import ast

import pytest

from tests.test_pipeline import PACKAGE, SRC, imported_modules

INFRASTRUCTURE = {"errors", "vocabulary", "layout", "outputs", "plots", "tracking", "team", "resume", "config"}
# what the infrastructure may import: itself, and the backbone registry (config validates names against it)
INFRASTRUCTURE_MAY_IMPORT = INFRASTRUCTURE | {"models", "models.backbones"}


def modules() -> dict[str, set[str]]:
    """Every sonotune module -> the sonotune modules it imports (package prefix dropped)."""
    graph = {}
    for path in sorted((SRC / PACKAGE).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        imports = imported_modules(ast.parse(path.read_text()), name)
        graph[name.removeprefix(f"{PACKAGE}.")] = {m.removeprefix(f"{PACKAGE}.") for m in imports if m != PACKAGE}
    return graph


def is_stage(name: str) -> bool:
    return name == "cli" or name == "stages" or name.startswith("stages.")


def test_the_library_never_imports_a_stage():
    offenders = {name: sorted(filter(is_stage, imports)) for name, imports in modules().items()
                 if not is_stage(name) and any(map(is_stage, imports))}
    assert offenders == {}


def test_the_infrastructure_imports_nothing_above_it():
    graph = modules()
    offenders = {name: sorted(graph[name] - INFRASTRUCTURE_MAY_IMPORT) for name in INFRASTRUCTURE
                 if graph[name] - INFRASTRUCTURE_MAY_IMPORT}
    assert offenders == {}


def test_no_import_cycles():
    graph = modules()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for child in graph.get(name, ()):
            if child in path:
                cycles.append(path[path.index(child):] + [child])
            elif child not in done:
                visit(child, path + [child])
        done.add(name)

    done: set[str] = set()
    for name in graph:
        if name not in done:
            visit(name, [name])
    # a package importing its own submodule (re-export) is not a cycle of concepts
    real = [c for c in cycles if not all(m.startswith(c[0] + ".") or c[0].startswith(m) for m in c[1:])]
    assert real == []


@pytest.mark.parametrize("marker", sorted(str(p.relative_to(SRC)) for p in SRC.rglob("__init__.py")))
def test_every_package_says_what_it_is_for(marker):
    """A docstring in each package marker (DVC, which hashes them as stage deps, also warns on an empty file)."""
    assert ast.get_docstring(ast.parse((SRC / marker).read_text())), f"{marker} has no docstring"
