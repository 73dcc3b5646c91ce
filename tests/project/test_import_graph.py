"""The package's modules import each other without a cycle, lazy imports included.

Every ``import`` statement of every ``neocell_ref`` module is read from its source
(the AST, so imports inside functions, the lazy ones, count as much as those at the
top), the graph of imports between package modules is built, and it must be acyclic:
a cycle means two modules each know something the other needs, i.e. a fact that has
no single home. Every module must also import on its own.
"""

import ast
import importlib
from pathlib import Path

import pytest

import neocell_ref

PACKAGE = "neocell_ref"
ROOT = Path(neocell_ref.__file__).resolve().parent


def package_modules():
    """Dotted names of every module of the package, from the files on disk."""
    names = []
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.append(".".join((PACKAGE, *parts)))
    return names


def module_path(name):
    rel = Path(*name.split(".")[1:])
    init = ROOT / rel / "__init__.py"
    return init if init.exists() else (ROOT / rel).with_suffix(".py")


def imported_modules(name, known, path=None):
    """Package modules that module ``name`` (source at ``path``) imports anywhere in its source."""
    path = module_path(name) if path is None else path
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # ``from .x import y`` in module a.b.c resolves against a.b (a.b.c if a package)
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import f`` imports mod
            candidates = [f"{stem}.{alias.name}" if f"{stem}.{alias.name}" in known else stem for alias in node.names]
        else:
            continue
        for candidate in candidates:
            # the longest known module that the dotted name is, or lies inside
            parts = candidate.split(".")
            for end in range(len(parts), 0, -1):
                prefix = ".".join(parts[:end])
                if prefix in known:
                    if prefix != name:
                        found.add(prefix)
                    break
    return found


def find_cycle(graph):
    """A list of modules forming a cycle in ``graph`` (dict name -> set of names), or None."""
    state = {}  # name -> "open" while on the DFS path, "done" after
    path = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def import_graph():
    modules = package_modules()
    known = set(modules)
    # The package __init__ imports its modules; a module importing the package itself
    # (``import neocell_ref``) would close a cycle through it, and is reported as one.
    return {name: imported_modules(name, known) for name in modules}


def test_every_package_module_is_found_and_imports_on_its_own():
    modules = package_modules()
    assert f"{PACKAGE}.neocell" in modules and f"{PACKAGE}.validation" in modules, modules
    for name in modules:
        importlib.import_module(name)


def test_the_intra_package_import_graph_is_acyclic_lazy_imports_included():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between package modules: " + " -> ".join(cycle)


def test_the_graph_sees_lazy_and_relative_imports():
    """Test of the test: the parser finds the edges it must, a cycle is reported."""
    graph = import_graph()
    assert f"{PACKAGE}.validation" in graph[f"{PACKAGE}.expand"], graph[f"{PACKAGE}.expand"]
    assert f"{PACKAGE}.neocell_fast" in graph[f"{PACKAGE}.neocell"], graph[f"{PACKAGE}.neocell"]
    # gradcheck imports the operator inside a function only
    assert f"{PACKAGE}.neocell" in graph[f"{PACKAGE}.gradcheck"], graph[f"{PACKAGE}.gradcheck"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f():\n    from .neocell import neocell_forward\n", {"neocell_ref.neocell"}),
        ("from . import spec\n", {"neocell_ref.spec"}),
        ("import neocell_ref.expand as e\n", {"neocell_ref.expand"}),
        ("import numpy\nfrom .validation import as_int\n", {"neocell_ref.validation"}),
    ],
)
def test_the_parser_resolves_each_import_form(tmp_path, source, expected):
    module = tmp_path / "probe.py"
    module.write_text(source, encoding="utf-8")
    known = set(package_modules()) | {f"{PACKAGE}.probe"}
    assert imported_modules(f"{PACKAGE}.probe", known, module) == expected
