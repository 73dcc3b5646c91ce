"""The main job (`neocell-ref` without arguments) runs, checks itself, and fails loudly."""

from neocell_ref import cli


def test_main_job_passes_and_prints_costs(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    assert "demo: all checks passed" in out
    assert "gradient check: PASSED" in out
    assert "NeoNeXt-T at 224x224" in out and "27,532,552" in out  # 27.5 M, SPEC 7's published count
