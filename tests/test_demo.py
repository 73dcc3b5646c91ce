"""The main job (`neocell-ref` without arguments) runs and checks itself.

That it fails loudly when a formulation is wrong: tests/meta/test_demo_mutants.py.
"""

from neocell_ref import cli


def test_main_job_passes_and_prints_costs(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "demo: all checks passed" in out
    assert "gradient check: PASSED" in out
    assert "NeoNeXt-T at 224x224" in out and "27,532,552" in out  # 27.5 M, SPEC 7's published count
