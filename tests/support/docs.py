"""Building the documentation with Sphinx, warnings as errors.

tests/project/test_docs.py builds ``docs/`` with it; tests/meta/test_docs_mutants.py
builds a planted page to show that a failing code cell fails the build.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from support.optional import require
from support.paths import REPO

DOCS = REPO / "docs"
BUILD_TIMEOUT = 900  # seconds; the build takes well under a minute


def require_docs_extra():
    """Skip (locally) or fail (in CI) unless the ``docs`` extra is installed."""
    for module in ("sphinx", "myst_nb", "numpydoc", "matplotlib", "ipykernel"):
        require(module, "docs")


def sphinx_build(src: Path, out: Path, timeout=BUILD_TIMEOUT):
    """Run ``sphinx -W --keep-going -b html`` on ``src``; return (exit code, log, seconds)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    command = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-b",
        "html",
        "-d",
        str(out / "doctrees"),
        str(src),
        str(out / "html"),
    ]
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    return result.returncode, result.stdout + result.stderr, time.perf_counter() - start
