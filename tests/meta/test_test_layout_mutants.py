"""The layout checks have teeth: they find a planted import of a test module and a
planted call of a test, and map modules to the test files the layout promises.

The scans are those of tests/project/test_test_layout.py (``support/layout.py``).
"""

import ast

from support.layout import TESTS, called_names, expected_test_file, imported_names


def test_the_layout_checks_see_what_they_check():
    """The scans above, on planted source: an import of a test module, a call of a test."""
    planted = "from test_models import tiny\nimport support.models\n\ndef test_a():\n    test_b()\n"
    tree = ast.parse(planted)
    assert "test_models" in imported_names(tree) and "support.models" in imported_names(tree), (
        f"planted imports of test_models and support.models not both found: {sorted(imported_names(tree))}"
    )
    assert [name for _, name in called_names(tree)] == ["test_b"], (
        f"planted call of test_b in test_a: calls found {called_names(tree)}, expected only test_b"
    )
    assert expected_test_file("neocell", False) == TESTS / "test_neocell.py", (
        f"module neocell maps to {expected_test_file('neocell', False)}, expected tests/test_neocell.py"
    )
    assert expected_test_file("golden", True) == TESTS / "verify" / "test_golden.py", (
        f"verify module golden maps to {expected_test_file('golden', True)}, expected tests/verify/test_golden.py"
    )
    assert expected_test_file("layer_kinds", False) == TESTS / "test_registry.py", (
        f"module layer_kinds maps to {expected_test_file('layer_kinds', False)}, expected tests/test_registry.py"
    )
    assert expected_test_file("instrument", False) == TESTS / "test_instrument.py", (
        f"module instrument maps to {expected_test_file('instrument', False)}, expected tests/test_instrument.py"
    )
    assert expected_test_file("__main__", False) is None, (
        f"__main__ should have no test file, maps to {expected_test_file('__main__', False)}"
    )
