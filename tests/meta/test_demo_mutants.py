"""The main job has teeth: it fails when a formulation is wrong.

tests/test_demo.py shows that ``neocell-ref`` (the demo) passes; here the "loop"
forward is off by 1e-4 relative and the demo's own checks report ``CHECKS FAILED``.
"""

import neocell_ref.neocell as neocell_module
from neocell_ref.demo import run_demo


def test_demo_fails_when_a_formulation_is_wrong(monkeypatch):
    forward, backward = neocell_module.METHODS["loop"]
    monkeypatch.setitem(neocell_module.METHODS, "loop", (lambda *a: forward(*a) * 1.0001, backward))
    lines = []
    assert run_demo(out=lines.append, costs=False) is False, (
        f"the demo did not report failure with the 'loop' forward off by 1e-4 relative; last lines: {lines[-3:]}"
    )
    assert lines[-1] == "demo: CHECKS FAILED", (
        f"the demo's last line is {lines[-1]!r}, expected 'demo: CHECKS FAILED' (the 'loop' forward is off by 1e-4)"
    )
