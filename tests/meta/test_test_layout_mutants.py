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
    assert "test_models" in imported_names(tree) and "support.models" in imported_names(tree)
    assert [name for _, name in called_names(tree)] == ["test_b"]
    assert expected_test_file("neocell", False) == TESTS / "test_neocell.py"
    assert expected_test_file("golden", True) == TESTS / "verify" / "test_golden.py"
    assert expected_test_file("layer_kinds", False) == TESTS / "test_registry.py"
    assert expected_test_file("instrument", False) == TESTS / "test_instrument.py"
    assert expected_test_file("__main__", False) is None
