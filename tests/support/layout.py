"""The scans behind tests/project/test_test_layout.py: where a module's tests live, and
what a test file imports and calls (tests/meta/test_test_layout_mutants.py runs them on
planted source)."""

from __future__ import annotations

import ast

from support.paths import REPO, TESTS

PACKAGE = REPO / "neocell_ref"
FOLDERS = {"support", "verify", "examples", "project", "meta", "data"}
#: modules whose tests live in another module's test file, with the reason
ELSEWHERE = {
    "_parallel": ("test_models_fast.py", "the fast paths' worker threads, tested with the path they serve"),
    "layer_kinds": ("test_registry.py", "the built-in kinds are registry records, tested with the registry"),
}
#: modules without a test module of their own, with the reason
UNTESTED = {
    "__init__": "the package namespace; the public API is fuzzed in tests/project/test_public_api.py",
    "__main__": "runs cli.main",
}


def package_modules() -> list[tuple[str, bool]]:
    """``(name, in_verifier)`` of every module file of the package."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        inside = path.relative_to(PACKAGE).parts
        out.append((path.stem, inside[0] == "verify"))
    return out


def module_names() -> set[str]:
    """The package's module names."""
    return {name for name, _ in package_modules()}


def expected_test_file(name: str, in_verifier: bool):
    """Where the tests of module ``name`` live, or None for an untested module."""
    if name in UNTESTED:
        return None
    if name in ELSEWHERE:
        return TESTS / ("verify" if in_verifier else "") / ELSEWHERE[name][0]
    return TESTS / ("verify" if in_verifier else "") / f"test_{name}.py"


def all_test_files() -> list:
    return sorted(p for p in TESTS.rglob("test_*.py") if "__pycache__" not in p.parts)


def python_files() -> list:
    return sorted(p for p in TESTS.rglob("*.py") if "__pycache__" not in p.parts)


def imported_names(tree) -> list[str]:
    """Every module name an ``import`` or ``from ... import`` statement names."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def called_names(tree) -> list[tuple[int, str]]:
    """``(line, name)`` of every call of a plain name (``f(...)``, not ``obj.f(...)``)."""
    return [
        (node.lineno, node.func.id)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    ]
