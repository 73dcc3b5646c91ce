"""The main job (`neocell-ref` without arguments) runs and checks itself.

That it fails loudly when a formulation is wrong: tests/meta/test_demo_mutants.py.
"""

from neocell_ref import cli


def test_main_job_passes_and_prints_costs(capsys):
    code = cli.main([])
    out, err = capsys.readouterr()
    assert code == 0, f"demo exit status {code}, expected 0\nstdout:\n{out}\nstderr:\n{err}"
    assert "demo: all checks passed" in out, f"no 'demo: all checks passed' in stdout:\n{out}"
    assert "gradient check: PASSED" in out, f"no 'gradient check: PASSED' in stdout:\n{out}"
    assert "NeoNeXt-T at 224x224" in out and "27,532,552" in out, (  # 27.5 M, SPEC 7's published count
        f"no 'NeoNeXt-T at 224x224' row with 27,532,552 parameters in stdout:\n{out}"
    )
