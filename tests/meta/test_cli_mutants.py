"""The command-line fuzz has teeth: a command that crashes breaks the exit contract.

``support.cli.check_contract`` (asserted by tests/test_cli.py for every drawn command
line) fails for a command whose implementation raises an unexpected exception.
"""

import pytest
from support.cli import check_contract


def test_the_fuzz_would_notice_a_traceback(monkeypatch):
    """Test of the test: a command that crashes with an unexpected exception breaks the
    contract, and :func:`check_contract` says so (the CLI prints it as one "internal
    error" line with status 2, which the fuzz counts as a defect)."""

    from neocell_ref import calculator as cx  # the module, not nr.complexity

    def boom(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(cx, "complexity", boom)
    with pytest.raises((AssertionError, ZeroDivisionError)):
        check_contract(["complexity", "-k", "7"])
