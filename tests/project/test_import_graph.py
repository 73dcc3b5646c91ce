"""The package's modules import each other without a cycle, lazy imports included.

Every ``import`` statement of every ``neocell_ref`` module is read from its source
(the AST, so imports inside functions, the lazy ones, count as much as those at the
top), the graph of imports between package modules is built, and it must be acyclic:
a cycle means two modules each know something the other needs, i.e. a fact that has
no single home. Every module must also import on its own.

The reference never depends on the verifier: no module outside ``neocell_ref.verify``
(the package ``__init__`` included) imports it, except the command line (``cli``,
``demo``), which serves both.

The eager-import rule (the docstring of ``neocell_ref/__init__.py``): ``import
neocell_ref`` imports every reference module, so each is an attribute of the package,
and neither the verifier nor hypothesis; ``from neocell_ref import verify`` works
without hypothesis, and only the conformance kit ``neocell_ref.verify.testing`` needs it.
"""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_every_package_module_is_found_and_imports_on_its_own():
    modules = package_modules()
    assert f"{PACKAGE}.neocell" in modules and f"{PACKAGE}.validation" in modules, modules
    for name in modules:
        importlib.import_module(name)


def test_the_intra_package_import_graph_is_acyclic_lazy_imports_included():
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle between package modules: " + " -> ".join(cycle)


def test_the_reference_never_imports_the_verifier_lazy_imports_included():
    graph = import_graph()
    assert f"{VERIFIER}.golden" in graph and f"{PACKAGE}.models" in graph, sorted(graph)
    offenders = reference_imports_of_the_verifier(graph)
    assert not offenders, f"reference modules importing neocell_ref.verify: {offenders}"


def test_the_verifier_rule_notices_a_reference_module_that_imports_it():
    """Test of the test: a planted lazy import of the verifier in a reference module is
    reported, one from the command line or from inside the verifier is not."""
    graph = import_graph()
    graph[f"{PACKAGE}.layers"] = graph[f"{PACKAGE}.layers"] | {f"{VERIFIER}.tolerances"}
    assert reference_imports_of_the_verifier(graph) == {f"{PACKAGE}.layers": [f"{VERIFIER}.tolerances"]}
    assert f"{VERIFIER}.gradcheck" in graph[f"{PACKAGE}.demo"], graph[f"{PACKAGE}.demo"]
    assert f"{VERIFIER}.precision" in graph[f"{VERIFIER}.golden"], graph[f"{VERIFIER}.golden"]


def test_the_graph_sees_lazy_and_relative_imports():
    """Test of the test: the parser finds the edges it must, a cycle is reported."""
    graph = import_graph()
    assert f"{PACKAGE}.validation" in graph[f"{PACKAGE}.expansion"], graph[f"{PACKAGE}.expansion"]
    assert f"{PACKAGE}.neocell_fast" in graph[f"{PACKAGE}.neocell"], graph[f"{PACKAGE}.neocell"]
    # gradcheck imports the operator inside a function only, two levels up
    assert f"{PACKAGE}.neocell" in graph[f"{PACKAGE}.verify.gradcheck"], graph[f"{PACKAGE}.verify.gradcheck"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f():\n    from .neocell import neocell_forward\n", {"neocell_ref.neocell"}),
        ("from . import spec\n", {"neocell_ref.spec"}),
        ("import neocell_ref.expansion as e\n", {"neocell_ref.expansion"}),
        ("import numpy\nfrom .validation import as_int\n", {"neocell_ref.validation"}),
        ("def f():\n    from .verify.tolerances import SAFETY\n", {"neocell_ref.verify.tolerances"}),
        ("from .verify import golden\n", {"neocell_ref.verify.golden"}),
    ],
)
def test_the_parser_resolves_each_import_form(tmp_path, source, expected):
    module = tmp_path / "probe.py"
    module.write_text(source, encoding="utf-8")
    known = set(package_modules()) | {f"{PACKAGE}.probe"}
    assert imported_modules(f"{PACKAGE}.probe", known, module) == expected


# --------------------------------------------------------------------------------------
# the eager-import rule
# --------------------------------------------------------------------------------------
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


def _fresh_python(code):
    """Run ``code`` in a fresh interpreter from the checkout; return its stdout lines."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT.parent, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_import_neocell_ref_imports_every_reference_module_and_not_the_verifier():
    expected = reference_modules()
    assert f"{PACKAGE}.expansion" in expected and f"{PACKAGE}.calculator" in expected, expected
    loaded = _fresh_python(
        "import sys, types, neocell_ref as nr\n"
        "for name in sorted(sys.modules):\n"
        "    if name.startswith('neocell_ref.') or name == 'hypothesis':\n"
        "        print(name)\n"
        "for attr in nr.__all__:\n"
        "    if isinstance(getattr(nr, attr), types.ModuleType):\n"
        "        print('attribute:' + attr)\n"
    )
    problems = eager_import_problems(expected, loaded)
    assert not problems, "; ".join(problems)
    attributes = {name.partition(":")[2] for name in loaded if name.startswith("attribute:")}
    assert attributes == {name.rpartition(".")[2] for name in expected}, (
        f"modules in neocell_ref.__all__ {sorted(attributes)} differ from the reference modules {expected}"
    )
    # a name means one thing: the functions nr.expand and nr.complexity are not modules
    assert importlib.import_module(PACKAGE).expand is not importlib.import_module(f"{PACKAGE}.expansion")


def test_the_verifier_is_imported_explicitly_and_only_its_kit_needs_hypothesis():
    out = _fresh_python(
        "import sys\n"
        "sys.modules['hypothesis'] = None  # as if hypothesis were not installed\n"
        "from neocell_ref import verify\n"
        "from neocell_ref.verify import golden, tolerances, gradcheck, diagnosis, exec_port, precision\n"
        "print(sorted(verify.__all__) == sorted(n for n in verify.__all__ if hasattr(verify, n)))\n"
        "try:\n"
        "    import neocell_ref.verify.testing\n"
        "except ImportError:\n"
        "    print('kit-needs-hypothesis')\n"
    )
    assert out == ["True", "kit-needs-hypothesis"], out


def test_the_eager_rule_test_sees_a_missing_module_and_an_eager_verifier():
    """Test of the test: the reference modules come from the files, so a module the
    package ``__init__`` forgot is reported, as is a verifier module or hypothesis
    imported by ``import neocell_ref``."""
    expected = reference_modules()
    assert f"{PACKAGE}.models_fast" in expected and f"{PACKAGE}.layer_kinds" in expected, expected
    assert not any(is_verifier(name) for name in expected) and f"{PACKAGE}.cli" not in expected, expected
    assert eager_import_problems(expected, expected) == []
    forgot = [name for name in expected if name != f"{PACKAGE}.calculator"]
    assert f"{PACKAGE}.calculator" in eager_import_problems(expected, forgot)[0]
    for eager in (f"{VERIFIER}.golden", "hypothesis", f"{PACKAGE}.demo"):
        assert eager in eager_import_problems(expected, [*expected, eager])[0]
