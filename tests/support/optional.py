"""Optional test dependencies: skip locally with a reason, fail in CI.

The notebook and documentation tests need packages outside the ``test`` extra
(``notebooks`` and ``docs`` extras, see ``setup.cfg``). A developer without them
gets a skip that says what to install; in CI (environment variable ``CI`` set to
anything but ``""``, ``0`` or ``false``) a missing package is a failure, so no test
is ever skipped silently there.
"""

from __future__ import annotations

import importlib
import os

import pytest


def in_ci() -> bool:
    """True when the environment variable ``CI`` says we run in continuous integration."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(module_name: str, extra: str):
    """Import and return ``module_name``, or skip (locally) / fail (in CI) naming ``extra``.

    Parameters
    ----------
    module_name : str
        Importable module name, e.g. ``"nbclient"``.
    extra : str
        The ``setup.cfg`` extra that provides it, e.g. ``"notebooks"``.
    """
    try:
        return importlib.import_module(module_name)
    except ImportError as exc:
        message = (
            f"{module_name} is not importable ({exc}); install the '{extra}' extra: "
            f'python -m pip install ".[{extra}]"'
        )
        if in_ci():
            pytest.fail(f"CI must run this test, but {message}", pytrace=False)
        pytest.skip(message, allow_module_level=True)  # also usable at import time


def unavailable(message: str):
    """Skip (locally) or fail (in CI) a test whose environment lacks ``message``'s need."""
    if in_ci():
        pytest.fail(f"CI must run this test, but {message}", pytrace=False)
    pytest.skip(message)
