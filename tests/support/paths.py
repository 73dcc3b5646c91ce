"""Where things are: the repository root, the test folder and the official test data."""

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
"""The ``tests/`` folder (on ``sys.path`` while testing, so ``support`` imports)."""
REPO = TESTS.parent
"""The repository root."""
DATA = TESTS / "data"
"""The official conformance data (``tests/data``, see its PROVENANCE.md)."""
