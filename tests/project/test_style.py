"""Style is checked, never reviewed: the whole tree is ruff clean, lint and format, and
every public function has a numpydoc docstring that names each of its parameters.

The configuration is ``[tool.ruff]`` in ``pyproject.toml``. Needs ruff (in the ``test``
extra); without it the test skips locally with the install command and fails in CI
(``tests/support/optional.py``).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import subprocess
import sys

from support.optional import require
from support.paths import REPO

ROOT = REPO


def ruff(*args):
    require("ruff", "test")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    return result.returncode, result.stdout + result.stderr


def test_ruff_lint_is_clean():
    code, output = ruff("check", ".")
    assert code == 0, f"ruff check found problems (fix them, or run 'python -m ruff check --fix .'):\n{output[-4000:]}"


def test_ruff_format_is_clean():
    code, output = ruff("format", "--check", ".")
    assert code == 0, f"files not formatted (run 'python -m ruff format .'):\n{output[-4000:]}"


def _public_functions():
    """Every function named in the ``__all__`` of the package and its public modules
    (the verifier's included), once each."""
    package = importlib.import_module("neocell_ref")
    names = ["neocell_ref"]
    for pkg in ("neocell_ref", "neocell_ref.verify"):
        path = importlib.import_module(pkg).__path__
        names += [f"{pkg}.{m.name}" for m in pkgutil.iter_modules(path) if not m.name.startswith("_")]
    seen = {}
    for module_name in names:
        module = package if module_name == "neocell_ref" else importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if inspect.isfunction(obj) and id(obj) not in seen:
                seen[id(obj)] = (f"{module_name}.{name}", obj)
    return list(seen.values())


def _section(doc, title):
    """The body of a numpydoc section (``Title`` underlined with dashes), or None."""
    match = re.search(rf"^{title}\n-+\n(.*?)(?=^\w[\w ]*\n-+\n|\Z)", doc, re.S | re.M)
    return None if match is None else match.group(1)


def test_public_functions_have_numpydoc_sections():
    functions = _public_functions()
    assert len(functions) > 100, f"found only {len(functions)} public functions: the walk is broken"
    problems = []
    for where, fn in functions:
        doc = inspect.getdoc(fn) or ""
        params = [p.name for p in inspect.signature(fn).parameters.values()]
        entries = set()  # names at the start of the Parameters section's unindented lines
        for line in (_section(doc, "Parameters") or "").splitlines():
            if line and not line.startswith(" "):
                entries.update(part.strip().lstrip("*") for part in line.split(" : ")[0].split(","))
        missing = [p for p in params if p not in entries]
        if missing:
            problems.append(f"{where}: parameters {missing} have no entry under 'Parameters'")
        if not any(_section(doc, title) is not None for title in ("Returns", "Yields", "Raises")):
            problems.append(f"{where}: no 'Returns', 'Yields' or 'Raises' section")
    assert not problems, f"{len(problems)} public functions lack numpydoc sections:\n" + "\n".join(problems)


def test_every_test_assertion_says_what_differed():
    """array-api-tests' rule: an ``assert`` carries a message (values, where, by how much),
    so that a failure in a port's CI is readable without a debugger."""
    bare = []
    files = sorted((ROOT / "tests").rglob("*.py"))
    assert len(files) > 50, f"found only {len(files)} test files: the walk is broken"
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        bare += [
            f"{path.relative_to(ROOT)}:{node.lineno}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Assert) and node.msg is None
        ]
    assert not bare, f"{len(bare)} assertions without a message:\n" + "\n".join(bare[:50])
