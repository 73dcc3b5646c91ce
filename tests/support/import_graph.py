"""The import graph of the package, read from the source, and the rules checked on it.

tests/project/test_import_graph.py checks the package with these (no cycle, the
reference never imports the verifier, the eager-import rule);
tests/meta/test_import_graph_mutants.py shows on planted sources and graphs that the
parser finds each import form and the rules report what they must.
"""

import ast
from pathlib import Path

import neocell_ref

PACKAGE = "neocell_ref"
VERIFIER = f"{PACKAGE}.verify"
#: Top-level modules that are not part of the reference and may use the verifier.
FRONT_ENDS = {f"{PACKAGE}.cli", f"{PACKAGE}.demo"}
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


def is_verifier(name):
    return name == VERIFIER or name.startswith(VERIFIER + ".")


def reference_imports_of_the_verifier(graph):
    """``{reference module: verifier modules it imports}`` for every offending module."""
    return {
        name: sorted(target for target in targets if is_verifier(target))
        for name, targets in graph.items()
        if not is_verifier(name) and name not in FRONT_ENDS and any(is_verifier(t) for t in targets)
    }


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


def reference_modules():
    """Dotted names of the reference modules: every module outside the verifier and the
    command line, from the files on disk."""
    return [name for name in package_modules() if name != PACKAGE and not is_verifier(name) and name not in FRONT_ENDS]


def eager_import_problems(expected, loaded):
    """What breaks the eager-import rule, given the modules ``import neocell_ref`` loaded."""
    problems = []
    missing = sorted(set(expected) - set(loaded))
    if missing:
        problems.append(f"import neocell_ref does not import the reference modules {missing}")
    extra = sorted(name for name in loaded if is_verifier(name) or name in FRONT_ENDS or name == "hypothesis")
    if extra:
        problems.append(f"import neocell_ref imports {extra}: the verifier and the CLI are imported explicitly")
    return problems
