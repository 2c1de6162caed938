"""The package's import structure, read from its source: the rules of the architecture that
import-linter (``scripts/lint.sh``, contracts in pyproject.toml) cannot state.

- No import cycle, between modules or between the package's parts (the packages and top-level
  modules the layers name). Every import statement counts: at module level, inside functions and
  under ``if TYPE_CHECKING:``; an import hidden in a function still ties the two modules together.
- No module imports another module's private name (``from x import _name``), not even a package
  re-exporting its own modules' private names, and none reaches into private members that only
  other modules define (``config._layers``, ``job._notify``): what a module shares, it names
  without an underscore.
- ``worker.py`` imports only the standard library and dill: it is copied alone to the nodes.
- Nothing outside ``backends/`` compares a backend's name or probes a backend with
  ``getattr``/``hasattr``: what differs between backends is a declared capability.
- The contract that keeps ``ui/`` to the job model and the settings names every other part, so a
  new module cannot slip past it.

Read with ``ast`` rather than by importing, so a test never runs the package's import-time code
and works on a tree that does not import at all.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "azpar_magic"


@dataclass(frozen=True)
class Import:
    """One module importing another module of the package (or one name from it)."""

    importer: str
    imported: str
    name: str | None  # the name taken from `imported` by `from imported import name`, if not a module
    line: int

    def where(self) -> str:
        return f"{self.importer}:{self.line}"


def _module_files() -> dict[str, Path]:
    files = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


MODULES = _module_files()


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def _absolute(importer: str, level: int, module: str | None) -> str:
    """The absolute name of `from <level dots><module> import ...` written in `importer`."""
    if not level:
        return module or ""
    base = importer.split(".")
    base = base if _is_package(importer) else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _parse(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))


def _imports_of(module: str) -> Iterator[Import]:
    """Every import of a package module by `module`, wherever the statement stands."""
    for node in ast.walk(_parse(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield Import(module, alias.name, None, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node.level, node.module)
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                if submodule in MODULES:
                    yield Import(module, submodule, None, node.lineno)
                elif source in MODULES:
                    yield Import(module, source, alias.name, node.lineno)


def _external_imports_of(module: str) -> Iterator[tuple[str, int]]:
    """The top-level names of what `module` imports from outside the package."""
    for node in ast.walk(_parse(module)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            yield node.module.split(".")[0], node.lineno


IMPORTS = [imported for module in MODULES for imported in _imports_of(module)]


def _part(module: str) -> str:
    """The part of the package a module belongs to, as the layers name them: `jobs`, `run`,
    `backends.azure`, `errors`... (the package's own `__init__` is the part `azpar_magic`)."""
    parts = module.split(".")[1:]
    if parts[:1] == ["backends"] and len(parts) > 1:
        return ".".join(parts[:2])
    return parts[0] if parts else PACKAGE


def _cycles(edges: dict[str, dict[str, Import]]) -> list[tuple[list[str], set[str]]]:
    """The strongly connected components of more than one node (or a node importing itself),
    each with one shortest cycle through its smallest member (Tarjan, then a breadth-first search)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in edges.get(node, {}):
                components.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)

    cycles = []
    for component in components:
        start = min(component)
        paths = {target: [start, target] for target in edges[start] if target in component}
        frontier = list(paths)
        while start not in paths:
            next_frontier = []
            for node in frontier:
                for target in sorted(edges[node]):
                    if target in component and target not in paths:
                        paths[target] = paths[node] + [target]
                        next_frontier.append(target)
            frontier = next_frontier
        cycles.append((paths[start], component))
    return sorted(cycles, key=lambda found: found[0])


def _describe(found: tuple[list[str], set[str]], edges: dict[str, dict[str, Import]]) -> str:
    cycle, component = found
    steps = [f"{a} ({edges[a][b].where()})" for a, b in pairwise(cycle)]
    text = " -> ".join(steps + [cycle[-1]])
    if len(component) > len(cycle) - 1:
        text += f"\n  (one of the cycles among {len(component)}: {', '.join(sorted(component))})"
    return text


def _graph(key) -> dict[str, dict[str, Import]]:
    edges: dict[str, dict[str, Import]] = {}
    for imported in IMPORTS:
        a, b = key(imported.importer), key(imported.imported)
        if a != b or imported.importer == imported.imported:
            edges.setdefault(a, {}).setdefault(b, imported)
    return edges


def test_the_source_is_found():
    assert f"{PACKAGE}.worker" in MODULES and len(IMPORTS) > 50


def test_no_import_cycle_between_modules():
    edges = _graph(lambda module: module)
    cycles = [_describe(found, edges) for found in _cycles(edges)]
    assert not cycles, "import cycles (module (file:line of the import) -> ...):\n" + "\n".join(cycles)


def test_no_import_cycle_between_the_parts_of_the_package():
    edges = _graph(_part)
    cycles = [_describe(found, edges) for found in _cycles(edges)]
    assert not cycles, "cycles between parts (part (first import that ties it to the next)):\n" + "\n".join(cycles)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_imports(module: str) -> Iterator[str]:
    for imported in IMPORTS:
        if imported.importer != module:
            continue
        if imported.name is not None:
            if _private(imported.name):
                yield f"{imported.where()}: from {imported.imported} import {imported.name}"
            continue
        parent, _, name = imported.imported.rpartition(".")
        if _private(name) and not module.startswith(parent + "."):  # a private module, outside its package
            yield f"{imported.where()}: {imported.imported}"


def _private_member(name: str) -> bool:
    """`_x`, but not a protocol name that ends in an underscore too (`_repr_html_`)."""
    return name.startswith("_") and not name.endswith("_")


def _private_definitions(module: str) -> set[str]:
    """The private names a module defines: functions, classes and methods, module and class
    variables, and attributes its methods set on `self` or `cls`."""
    names = set()
    for node in ast.walk(_parse(module)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.value, ast.Name)
            and node.value.id in ("self", "cls")
        ):
            names.add(node.attr)
    return {name for name in names if _private_member(name)}


PRIVATE_DEFINITIONS = {module: _private_definitions(module) for module in MODULES}


def _private_members_used(module: str) -> Iterator[str]:
    """`something._x` in `module` where only other modules define `_x`: another module's
    function, a field of another module's class. Read by name, without types: a name that the
    module defines itself is taken as its own."""
    for node in ast.walk(_parse(module)):
        if not isinstance(node, ast.Attribute) or not _private_member(node.attr):
            continue
        target = node.value
        if isinstance(target, ast.Name) and target.id in ("self", "cls"):
            continue
        if isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "super":
            continue
        if node.attr in PRIVATE_DEFINITIONS[module]:
            continue
        owners = sorted(other for other, names in PRIVATE_DEFINITIONS.items() if node.attr in names)
        if owners:
            yield f"{module}:{node.lineno}: {ast.unparse(target)}.{node.attr} (defined in {', '.join(owners)})"


def test_no_module_imports_another_modules_private_names():
    offenders = [use for module in MODULES for use in _private_imports(module)]
    assert not offenders, "private names imported across modules:\n" + "\n".join(offenders)


def test_no_module_reaches_into_private_members_defined_elsewhere():
    offenders = sorted({use for module in MODULES for use in _private_members_used(module)})
    assert not offenders, "private members of other modules used (make them public):\n" + "\n".join(offenders)


def _backend_questions(module: str) -> Iterator[str]:
    """A backend's name compared (``backend.name == "azure"``, ``job.backend_name in (...)``), or its
    members probed with getattr/hasattr: the ways code decides by which backend it has."""
    for node in ast.walk(_parse(module)):
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                if (
                    isinstance(operand, ast.Attribute)
                    and operand.attr in ("name", "backend_name")
                    and (operand.attr == "backend_name" or "backend" in ast.unparse(operand.value).lower())
                ):
                    yield f"{module}:{node.lineno}: {ast.unparse(node)}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and node.args
            and "backend" in ast.unparse(node.args[0]).lower()
        ):
            yield f"{module}:{node.lineno}: {ast.unparse(node)}"


def test_nothing_outside_a_backend_decides_by_its_name_or_probes_its_members():
    outside = [module for module in MODULES if not module.startswith(f"{PACKAGE}.backends")]
    questions = [question for module in outside for question in _backend_questions(module)]
    assert not questions, (
        "decided by the backend's name or by probing it (declare a capability in backends/base.py):\n"
        + "\n".join(questions)
    )


# Libraries the worker imports only when a task's own code already uses them, never for itself: matplotlib's
# Agg canvas, in the figures backend module matplotlib itself imports (worker._FiguresBackendFinder).
WORKER_IMPORTS_WHEN_THE_TASK_DOES = {"matplotlib"}


def test_the_worker_imports_only_the_standard_library_and_dill():
    allowed = set(sys.stdlib_module_names) | {"__future__", "dill", PACKAGE}  # the package: the next line
    allowed |= WORKER_IMPORTS_WHEN_THE_TASK_DOES
    others = [
        f"{PACKAGE}.worker:{line}: {name}"
        for name, line in _external_imports_of(f"{PACKAGE}.worker")
        if name not in allowed
    ]
    others += [
        f"{imported.where()}: {imported.imported}" for imported in IMPORTS if imported.importer == f"{PACKAGE}.worker"
    ]
    assert not others, "the worker runs alone on a node with Python and dill:\n" + "\n".join(others)


def _contract(name: str) -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+, where import-linter runs too
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["name"] == name]
    return contract


def test_the_ui_contract_names_every_other_part():
    contract = _contract("ui imports only the job model and the settings")
    forbidden = {name.removeprefix(PACKAGE + ".") for name in contract["forbidden_modules"]}
    parts = {_part(module) for module in MODULES} - {PACKAGE}
    allowed = {"ui", "jobs", "config"}
    missing = sorted(part for part in parts - allowed if part not in forbidden and part.split(".")[0] not in forbidden)
    assert not missing, f"parts the ui contract does not forbid (add them to pyproject.toml): {missing}"
