"""Helpers shared by the test modules; nothing here is collected as a test.

A test module never imports another test module: what two of them need (official
data readers, the exec-protocol port script, mutant ports, checks that a test and
its test-of-the-test in ``tests/meta/`` both run) lives here. ``tests/`` is on
``sys.path`` (``pythonpath = tests`` in ``setup.cfg``), so ``from support import ...``.
"""
