"""The main job (`neocell-ref` without arguments) runs, checks itself, and fails loudly."""

import neocell_ref.neocell as neocell_module
from neocell_ref import cli
from neocell_ref.demo import run_demo


def test_main_job_passes_and_prints_costs(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "demo: all checks passed" in out
    assert "gradient check: PASSED" in out
    assert "NeoNeXt-T at 224x224" in out and "27,532,552" in out  # 27.5 M, SPEC 7's published count


def test_demo_fails_when_a_formulation_is_wrong(monkeypatch):
    forward, backward = neocell_module.METHODS["loop"]
    monkeypatch.setitem(neocell_module.METHODS, "loop", (lambda *a: forward(*a) * 1.0001, backward))
    lines = []
    assert run_demo(out=lines.append, costs=False) is False
    assert lines[-1] == "demo: CHECKS FAILED"
