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

The parser and the rules are ``tests/support/import_graph.py``;
tests/meta/test_import_graph_mutants.py shows them reporting planted violations.
"""

import importlib
import subprocess
import sys
import types

from support.import_graph import (
    PACKAGE,
    ROOT,
    VERIFIER,
    eager_import_problems,
    find_cycle,
    import_graph,
    package_modules,
    reference_imports_of_the_verifier,
    reference_modules,
)


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


# --------------------------------------------------------------------------------------
# the eager-import rule
# --------------------------------------------------------------------------------------
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
    # a private module (neocell_ref._parallel) is loaded with the reference but not exported
    public = {short for short in (name.rpartition(".")[2] for name in expected) if not short.startswith("_")}
    assert attributes == public, (
        f"modules in neocell_ref.__all__ {sorted(attributes)} differ from the public reference modules {sorted(public)}"
    )
    # a name means one thing: the functions nr.expand and nr.complexity are not modules
    package = importlib.import_module(PACKAGE)
    for name in ("expand", "complexity"):
        value = getattr(package, name)
        assert callable(value) and not isinstance(value, types.ModuleType), (
            f"{PACKAGE}.{name} is {value!r}, not the function"
        )


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
