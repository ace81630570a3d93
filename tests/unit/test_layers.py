"""The import graph of aether/, read from the source with ``ast`` (nothing is imported): no
cycles between modules, no import from a lower layer to a higher one, heavy libraries only
where they are needed, and the test infrastructure (``testing/``) outside the product."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from support import REPO

PACKAGE = REPO / "aether"

# Top layer first: a package may import its own layer's allowed peers and any layer below.
LAYERS: list[set[str]] = [
    {"__main__"},
    {"cli"},
    {"api"},
    {"pipeline"},
    {"places", "pois", "embeddings", "sample", "ml", "evaluation", "query", "testing"},
    {"execution", "io", "provenance"},
    {"core", "settings", "errors", "aether", "_callable", "_compat", "_version", "yamlfile"},
]
# Imports allowed between peers of one layer (importer -> imported); every other peer import
# is refused. places < pois < embeddings; sample reads places; ml < evaluation, query.
PEERS: dict[str, set[str]] = {
    "pois": {"places"},
    "embeddings": {"places", "pois"},
    "sample": {"places"},
    "evaluation": {"ml"},
    "query": {"ml"},
    "execution": {"io"},
    "provenance": {"io"},  # what a run or a result was made from and with
    "settings": {"core", "errors", "yamlfile"},
    "aether": {"_version"},  # the package's __version__
    "yamlfile": {"errors"},  # bounded YAML for run, task and settings files
    "core": {"errors"},
    "_compat": {"errors"},  # the one home of dependencies' private APIs (lazy imports)
}
HEAVY = ("torch", "ee", "xee", "sentence_transformers")
HEAVY_ALLOWED = ("ml", "embeddings")
TESTING_IMPORTERS = {("aether.cli.emulator", "emulator_serve")}  # `aether emulator serve` only


@dataclass(frozen=True)
class Import:
    source: str  # importing module, e.g. aether.ml.encode
    target: str  # imported name as written, e.g. aether.ml.heads or torch
    module_level: bool
    function: str | None  # the enclosing function of a function-level import


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = module_names()


def _resolve(module: str, name: str | None) -> str:
    """``from module import name``: the submodule when ``name`` is one, else ``module``."""
    return f"{module}.{name}" if name and f"{module}.{name}" in MODULES else module


def imports_of(source: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(), filename=str(path))

    def visit(node: ast.AST, function: str | None, guarded: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                yield from visit(child, function or child.name, guarded)
                continue
            # `if TYPE_CHECKING:` imports are read by type checkers only
            is_guard = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
            module_level = function is None and not guarded
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(source, alias.name, module_level, function)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    yield Import(source, _resolve(child.module, alias.name), module_level,
                                 function)
            yield from visit(child, function, guarded or is_guard)

    yield from visit(tree, None, False)


ALL_IMPORTS = [imp for name, path in sorted(MODULES.items()) for imp in imports_of(name, path)]
INTERNAL = [imp for imp in ALL_IMPORTS if imp.target.split(".")[0] == "aether"]


def package(module: str) -> str:
    """The layer unit of a module: aether.ml.encode -> ml; aether/__init__ -> aether."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "aether"


def layer(pkg: str) -> int:
    return next(i for i, names in enumerate(LAYERS) if pkg in names)


def test_every_package_has_a_layer() -> None:
    missing = sorted({package(m) for m in MODULES} - set().union(*LAYERS))
    assert not missing, f"add {missing} to LAYERS"


def find_cycle(imports: list[Import]) -> list[str] | None:
    """A cycle of modules importing each other, at module or function level (a function's
    import runs when it is called, so a circle through one is a circle all the same)."""
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for imp in imports:
        typing_only = not imp.module_level and imp.function is None  # `if TYPE_CHECKING:`
        if imp.target in MODULES and imp.target != imp.source and not typing_only and not (
                imp.source == "aether" and imp.function == "__getattr__"):
            graph[imp.source].add(imp.target)
            # importing a submodule runs its package's __init__ first
            parent = imp.target.rsplit(".", 1)[0]
            if parent in MODULES and not f"{imp.source}.".startswith(f"{parent}."):
                graph[imp.source].add(parent)
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (cycle := walk(start)):
            return cycle
    return None


def test_no_cycles() -> None:
    cycle = find_cycle(INTERNAL)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_planted_cycle_is_found() -> None:
    """A function-level import from core back up to the pipeline closes a circle: found."""
    planted = Import("aether.core.aef", "aether.pipeline.extract", False, "decode")
    cycle = find_cycle([*INTERNAL, planted])
    assert cycle is not None and "aether.core.aef" in cycle


def test_no_upward_or_sideways_imports() -> None:
    bad = []
    for imp in INTERNAL:
        src, dst = package(imp.source), package(imp.target)
        if src == dst or dst == "testing":
            continue
        if src == "aether" and dst == "api" and not imp.module_level:
            continue  # the package's lazy re-export of the Python API
        if layer(dst) < layer(src) or (layer(dst) == layer(src)
                                        and dst not in PEERS.get(src, set())):
            bad.append(f"{imp.source} -> {imp.target}")
    assert not bad, "imports against the layer order:\n" + "\n".join(sorted(set(bad)))


def test_testing_is_imported_only_by_emulator_serve() -> None:
    users = {(imp.source, imp.function) for imp in INTERNAL
             if package(imp.target) == "testing" and package(imp.source) != "testing"}
    assert users == TESTING_IMPORTERS
    assert all(not imp.module_level for imp in INTERNAL
               if package(imp.target) == "testing" and package(imp.source) != "testing")


def test_heavy_libraries_not_imported_at_module_level_elsewhere() -> None:
    bad = [f"{imp.source}: import {imp.target}" for imp in ALL_IMPORTS
           if imp.module_level and imp.target.split(".")[0] in HEAVY
           and package(imp.source) not in HEAVY_ALLOWED]
    assert not bad, "\n".join(bad)


def test_the_checker_sees_what_it_checks() -> None:
    """The parser finds known edges of each kind (so an empty result means a clean graph)."""
    edges = {(i.source, i.target, i.module_level) for i in ALL_IMPORTS}
    assert ("aether.ml.heads", "torch", True) in edges
    assert ("aether.cli.emulator", "aether.testing.emulator", False) in edges
    assert any(s == "aether.embeddings" and t == "aether.embeddings.base" and m
               for s, t, m in edges)
