"""Style is checked, never reviewed: the whole tree is ruff clean, lint and format.

The configuration is ``[tool.ruff]`` in ``pyproject.toml``. Needs ruff (in the ``test``
extra); without it the test skips locally with the install command and fails in CI
(``tests/support/optional.py``).
"""

from __future__ import annotations

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
