"""The import-graph checks have teeth: planted imports and graphs are reported.

The checks of tests/project/test_import_graph.py (``support/import_graph.py``):

- the parser resolves every import form (lazy, relative, aliased, from the verify
  subpackage) and the cycle finder reports a planted cycle;
- the rule that the reference never imports the verifier reports a planted lazy
  import of the verifier in a reference module, and not one from the command line or
  from inside the verifier;
- the eager-import rule reports a reference module the package ``__init__`` forgot, and
  a verifier module, the command line or hypothesis imported by ``import neocell_ref``.
"""

import pytest
from support.import_graph import (
    PACKAGE,
    VERIFIER,
    eager_import_problems,
    find_cycle,
    import_graph,
    imported_modules,
    is_verifier,
    package_modules,
    reference_imports_of_the_verifier,
    reference_modules,
)


def test_the_verifier_rule_notices_a_reference_module_that_imports_it():
    """Test of the test: a planted lazy import of the verifier in a reference module is
    reported, one from the command line or from inside the verifier is not."""
    graph = import_graph()
    graph[f"{PACKAGE}.layers"] = graph[f"{PACKAGE}.layers"] | {f"{VERIFIER}.tolerances"}
    assert reference_imports_of_the_verifier(graph) == {f"{PACKAGE}.layers": [f"{VERIFIER}.tolerances"]}, (
        f"the planted import of {VERIFIER}.tolerances in {PACKAGE}.layers is not the one reported:"
        f" {reference_imports_of_the_verifier(graph)}"
    )
    assert f"{VERIFIER}.gradcheck" in graph[f"{PACKAGE}.demo"], graph[f"{PACKAGE}.demo"]
    assert f"{VERIFIER}.precision" in graph[f"{VERIFIER}.golden"], graph[f"{VERIFIER}.golden"]


def test_the_graph_sees_lazy_and_relative_imports():
    """Test of the test: the parser finds the edges it must, a cycle is reported."""
    graph = import_graph()
    assert f"{PACKAGE}.validation" in graph[f"{PACKAGE}.expansion"], graph[f"{PACKAGE}.expansion"]
    assert f"{PACKAGE}.neocell_fast" in graph[f"{PACKAGE}.neocell"], graph[f"{PACKAGE}.neocell"]
    # gradcheck imports the operator inside a function only, two levels up
    assert f"{PACKAGE}.neocell" in graph[f"{PACKAGE}.verify.gradcheck"], graph[f"{PACKAGE}.verify.gradcheck"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"], (
        f"planted cycle a->b->c->a reported as {find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}})}"
    )
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None, (
        f"acyclic graph reported with cycle {find_cycle({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}})}"
    )


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
    assert imported_modules(f"{PACKAGE}.probe", known, module) == expected, (
        f"source {source!r} resolved to {sorted(imported_modules(f'{PACKAGE}.probe', known, module))},"
        f" expected {sorted(expected)}"
    )


def test_the_eager_rule_test_sees_a_missing_module_and_an_eager_verifier():
    """Test of the test: the reference modules come from the files, so a module the
    package ``__init__`` forgot is reported, as is a verifier module or hypothesis
    imported by ``import neocell_ref``."""
    expected = reference_modules()
    assert f"{PACKAGE}.models_fast" in expected and f"{PACKAGE}.layer_kinds" in expected, expected
    assert not any(is_verifier(name) for name in expected) and f"{PACKAGE}.cli" not in expected, expected
    assert eager_import_problems(expected, expected) == [], (
        "problems reported when exactly the reference modules are imported:"
        f" {eager_import_problems(expected, expected)}"
    )
    forgot = [name for name in expected if name != f"{PACKAGE}.calculator"]
    assert f"{PACKAGE}.calculator" in eager_import_problems(expected, forgot)[0], (
        f"a forgotten {PACKAGE}.calculator is not named first; problems: {eager_import_problems(expected, forgot)}"
    )
    for eager in (f"{VERIFIER}.golden", "hypothesis", f"{PACKAGE}.demo"):
        assert eager in eager_import_problems(expected, [*expected, eager])[0], (
            f"an eagerly imported {eager} is not named first; problems:"
            f" {eager_import_problems(expected, [*expected, eager])}"
        )
