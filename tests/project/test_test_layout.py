"""The test suite's layout: a reader finds the tests of a module where its name says.

* every module of ``neocell_ref`` has its test module at the expected path:
  ``neocell_ref/X.py`` -> ``tests/test_X.py``, the verifier's
  ``neocell_ref/verify/X.py`` -> ``tests/verify/test_X.py``, with the few exceptions
  listed below with their reason; and every test module there is named after a module;
* test-module names are unique across the tree (pytest imports them by basename);
* no test module imports another test module (or ``conftest``) and no test calls
  another test: what two modules share lives in ``tests/support/``, which holds no
  tests (the scans are in ``support/layout.py``; tests/meta/test_test_layout_mutants.py
  shows them finding planted violations);
* the other folders hold what their name says: ``tests/examples/`` the example ports,
  ``tests/project/`` checks of the repository as a whole, ``tests/meta/`` tests of the
  suite's own checks (tests of tests).
"""

from __future__ import annotations

import ast

from support.layout import (
    ELSEWHERE,
    FOLDERS,
    REPO,
    TESTS,
    all_test_files,
    called_names,
    expected_test_file,
    imported_names,
    module_names,
    package_modules,
    python_files,
)


def test_every_package_module_has_its_test_module():
    missing = []
    for name, in_verifier in package_modules():
        expected = expected_test_file(name, in_verifier)
        if expected is not None and not expected.is_file():
            missing.append(f"{name} -> {expected.relative_to(REPO)}")
    assert not missing, "package modules without their test module: " + ", ".join(missing)


def test_every_module_test_file_is_named_after_a_module():
    names = module_names()
    borrowed = {file for file, _ in ELSEWHERE.values()}
    stray = []
    for folder in (TESTS, TESTS / "verify"):
        for path in sorted(folder.glob("test_*.py")):
            if path.name not in borrowed and path.stem[len("test_") :] not in names:
                stray.append(str(path.relative_to(REPO)))
    assert not stray, (
        f"test modules named after no module of neocell_ref: {stray}; name a module's tests "
        "tests/test_MODULE.py (tests/verify/ for the verifier), or put the file in "
        "tests/project, tests/examples or tests/meta"
    )


def test_test_module_names_are_unique_and_folders_are_known():
    seen = {}
    for path in all_test_files():
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    twins = {name: paths for name, paths in seen.items() if len(paths) > 1}
    assert not twins, f"test modules with the same name (pytest imports them by name): {twins}"
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))}
    assert folders <= FOLDERS, f"unknown folders in tests/: {sorted(folders - FOLDERS)}"


def test_no_test_module_imports_another_test_module():
    bad = []
    for path in python_files():
        for name in imported_names(ast.parse(path.read_text(encoding="utf-8"))):
            last = name.split(".")[-1]
            if last.startswith("test_") or last == "conftest":
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "test code importing a test module (move what is shared to tests/support/): " + "; ".join(bad)


def test_no_test_calls_another_test():
    bad = []
    for path in all_test_files():
        for line, name in called_names(ast.parse(path.read_text(encoding="utf-8"))):
            if name.startswith("test_"):
                bad.append(f"{path.relative_to(REPO)}:{line} calls {name}")
    assert not bad, "tests calling tests (share a helper in tests/support/ instead): " + "; ".join(bad)


def test_support_holds_no_tests():
    files = [p for p in (TESTS / "support").rglob("test_*.py") if "__pycache__" not in p.parts]
    assert not files, f"test modules in tests/support/: {files}"
    found = []
    for path in sorted((TESTS / "support").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name.lower().startswith("test"):
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name}")
    assert not found, f"tests/support/ must hold helpers only, not tests: {found}"
