"""`neocell-ref golden verify --exec`: ports that are programs, verified through the CLI.

The exec runner itself (folders, case.json, every misbehaviour of a port) is tested in
tests/test_exec_port.py; here the verifier around it: the reference C port
(examples/c_port) passes the float64 and float32 core sets through the command line,
a planted-bug Python port fails (with a diagnosis), a port that fails one run fails
that case with its stderr tail in the report while the run goes on, and unusable
commands or option mixes exit 2 with one line, before any port runs.
"""

import json
import sys

import numpy as np
import pytest
from test_c_port import _build
from test_exec_port import PORT, REPO

from neocell_ref.cli import main
from neocell_ref.verify.exec_port import DEFAULT_TIMEOUT, ExecCommandError
from neocell_ref.verify.golden import (
    export_golden,
    load_case,
    load_manifest,
    run_exec_and_compare,
    verify_golden,
)
from neocell_ref.verify.golden_ops import OPERATIONS

CASES = [c[0] for c in OPERATIONS["neocell"].cases("core")]


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """NeoCell-only core golden sets, ``{dtype: folder}``."""
    root = tmp_path_factory.mktemp("exec_sets")
    for dtype in ("float64", "float32"):
        export_golden(root / dtype, dtype=dtype, operations=["neocell"])
    return {dtype: root / dtype for dtype in ("float64", "float32")}


@pytest.fixture(scope="module")
def c_port(tmp_path_factory):
    """The C port built out of tree (skip without cc/make locally, fail under CI)."""
    binary, code, output = _build(tmp_path_factory.mktemp("c_port"))
    assert code == 0, f"make failed:\n{output}"
    return binary


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    """``script(mode) -> command string`` for the protocol-speaking Python port of test_exec_port."""
    path = tmp_path_factory.mktemp("py_port") / "port.py"
    path.write_text(PORT.format(repo=str(REPO), tests=str(REPO / "tests")))
    return lambda mode: f"{sys.executable} {path} {mode} {{in}} {{out}}"


def verify(capsys, directory, *args):
    """Run ``golden verify`` through the CLI; ``(exit code, stdout, stderr)``."""
    code = main(["golden", "verify", str(directory), "--op", "neocell", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def only(*names):
    """``--exclude`` options that leave only the named NeoCell cases."""
    args = []
    for name in CASES:
        if name not in names:
            args += ["--exclude", f"{name}=not needed for this test"]
    return args


def assert_unusable(code, out, err, *words):
    assert code == 2, (code, out, err)
    assert out == "", f"nothing may run: {out!r}"
    assert err.startswith("neocell-ref: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


# --------------------------------------------------------------------------------------
# the C port through the command line
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_c_port_passes_the_core_set_through_the_cli(c_port, sets, dtype, capsys, tmp_path):
    report_file = tmp_path / "report.json"
    code, out, err = verify(capsys, sets[dtype], "--exec", f"{c_port} {{in}} {{out}}", "--json", report_file)
    assert code == 0, out + err
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["cases_run"] == len(CASES), report["cases_run"]
    rows = report["results"]
    names = {(r["case"], r["array"]) for r in rows}
    manifest = load_manifest(sets[dtype])
    assert names == {(c["name"], k) for c in manifest["cases"] for k in c["tolerances"]}, "not every output compared"
    assert all(r["passed"] and r["diagnosis"] is None for r in rows)
    assert report["port"].startswith("exec ") and f"timeout {DEFAULT_TIMEOUT:g} s" in report["port"], report["port"]
    assert "port: exec" in out and "all outputs" in out


def test_c_port_forward_only(c_port, sets, capsys, tmp_path):
    report_file = tmp_path / "report.json"
    code, out, err = verify(
        capsys,
        sets["float32"],
        "--exec",
        f"{c_port} {{in}} {{out}}",
        "--forward-only",
        "--timeout",
        "30",
        "--json",
        report_file,
    )
    assert code == 0, out + err
    report = json.loads(report_file.read_text())
    assert sorted({r["array"] for r in report["results"]}) == ["y"] and len(report["results"]) == len(CASES)
    assert "forward outputs only" in report["port"] and "timeout 30 s" in report["port"], report["port"]


# --------------------------------------------------------------------------------------
# ports that fail
# --------------------------------------------------------------------------------------
def test_mutant_python_port_fails_through_exec_with_a_diagnosis(script, sets, capsys, tmp_path):
    """A port that reads weight_a transposed fails, every failing array diagnosed kernel-transposed."""
    report_file = tmp_path / "report.json"
    code, out, err = verify(
        capsys, sets["float64"], "--exec", script("mutant:transpose_a"), *only("k7_square_14x14"), "--json", report_file
    )
    assert code == 1, out + err
    report = json.loads(report_file.read_text())
    failed = [r for r in report["results"] if not r["passed"]]
    assert {r["array"] for r in failed} == {"y", "grad_x", "grad_weight_a_0", "grad_weight_b_0"}, failed
    assert all(r["diagnosis"] == ["kernel-transposed"] for r in failed), [r["diagnosis"] for r in failed]
    assert out.count("consistent with: kernel-transposed — ") == 4, out


def test_a_failed_run_fails_its_case_and_the_run_goes_on(script, sets, capsys, tmp_path):
    """Exit status 3 on every case: each case one (exec run) row with the stderr tail; all cases run."""
    report_file = tmp_path / "report.json"
    code, out, err = verify(capsys, sets["float64"], "--exec", script("exit3"), "--json", report_file)
    assert code == 1, out + err
    report = json.loads(report_file.read_text())
    assert report["cases_run"] == len(CASES)
    rows = report["results"]
    assert [r["case"] for r in rows] == CASES and {r["array"] for r in rows} == {"(exec run)"}
    for row in rows:
        assert not row["passed"] and row["diagnosis"] is None, row
        assert "the port exited with status 3" in row["message"], row["message"]
        assert "port: something broke on purpose" in row["message"], "the stderr tail is missing"
    assert out.count("port: something broke on purpose") == len(CASES), out


def test_timeout_fails_the_case(sets, capsys, tmp_path):
    report_file = tmp_path / "report.json"
    code, out, err = verify(
        capsys,
        sets["float64"],
        "--exec",
        "sh -c 'echo hanging >&2; sleep 30' {in} {out}",
        "--timeout",
        "0.5",
        *only("k7_input_1x1"),
        "--json",
        report_file,
    )
    assert code == 1, out + err
    (row,) = json.loads(report_file.read_text())["results"]
    assert row["array"] == "(exec run)" and "timed out after 0.5 s" in row["message"], row
    assert "hanging" in row["message"], row["message"]


def test_wrong_output_size_is_a_failed_run(script, sets, capsys, tmp_path):
    """The runner refuses an output of the wrong shape before comparing: the case fails as a run.

    No array was compared, so no diagnosis is made (the rounded output size is
    diagnosed when a Python port returns it, tests/test_diagnosis.py).
    """
    report_file = tmp_path / "report.json"
    code, out, err = verify(
        capsys,
        sets["float64"],
        "--exec",
        script("mutant:round_size"),
        "--forward-only",
        *only("down_2to1_9x7"),
        "--json",
        report_file,
    )
    assert code == 1, out + err
    (row,) = json.loads(report_file.read_text())["results"]
    assert row["array"] == "(exec run)" and row["diagnosis"] is None
    assert "output y.npy: has shape (2, 6, 5, 4), expected (2, 6, 4, 3)" in row["message"], row["message"]


def test_run_exec_and_compare_shares_the_comparison(script, sets):
    """The API: outputs of one run compared like run_and_compare's (one row per expected array)."""
    manifest = load_manifest(sets["float64"])
    case = next(c for c in manifest["cases"] if c["name"] == "k7_input_1x1")
    arrays = load_case(sets["float64"], case)
    rows = run_exec_and_compare(script("correct"), "neocell", case["name"], case, arrays)
    assert sorted(r.array for r in rows) == sorted(case["tolerances"])
    assert all(r.passed and r.diagnosis is None for r in rows)
    with pytest.raises(ValueError, match="too loose"):  # overrides checked as for callables, before the run
        run_exec_and_compare(script("correct"), "neocell", case["name"], case, arrays, rtol=1.0)


# --------------------------------------------------------------------------------------
# unusable commands and option mixes: exit 2, one line, nothing run
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, words",
    [
        (["--exec", "no-such-program-h11 {in} {out}"], ["not an executable"]),
        (["--exec", "true"], ["no {in} placeholder"]),
        (["--exec", ""], ["empty"]),
        (["--exec", "true {in} {out}", "--forward", "mutant_ports:correct_forward"], ["mutually exclusive"]),
        (["--exec", "true {in} {out}", "--backward", "mutant_ports:correct_backward"], ["mutually exclusive"]),
        (["--forward", "mutant_ports:correct_forward", "--forward-only"], ["apply to --exec"]),
        (["--forward", "mutant_ports:correct_forward", "--timeout", "5"], ["apply to --exec"]),
        (["--exec", "true {in} {out}", "--timeout", "0"], ["timeout"]),
        (["--exec", "true {in} {out}", "--timeout", "inf"], ["timeout"]),
        (["--exec", "true {in} {out}", "--timeout", "nan"], ["timeout"]),
        (["--exec", "true {in} {out}", "--timeout", "-1"], ["timeout"]),
    ],
    ids=[
        "missing-program",
        "no-placeholder",
        "empty",
        "with-forward",
        "with-backward",
        "forward-only-alone",
        "timeout-alone",
        "timeout-0",
        "timeout-inf",
        "timeout-nan",
        "timeout-negative",
    ],
)
def test_unusable_exec_arguments_exit_2(sets, capsys, args, words):
    assert_unusable(*verify(capsys, sets["float64"], *args), *words)


def test_exec_refuses_an_operation_the_protocol_lacks(tmp_path, capsys):
    export_golden(tmp_path / "gelu", operations=["gelu"])
    code = main(["golden", "verify", str(tmp_path / "gelu"), "--op", "gelu", "--exec", "true {in} {out}"])
    out, err = capsys.readouterr()
    assert_unusable(code, out, err, "exec protocol supports operations", "'gelu'")


def test_verify_golden_exec_arguments(sets):
    with pytest.raises(ValueError, match="mutually exclusive"):
        verify_golden(sets["float64"], "neocell", forward=np.zeros_like, command="true {in} {out}")
    with pytest.raises(ExecCommandError, match="not an executable"):
        verify_golden(sets["float64"], "neocell", command="no-such-program-h11 {in} {out}")
    with pytest.raises(ValueError, match="apply to an exec command"):
        verify_golden(sets["float64"], "neocell", forward=np.zeros_like, forward_only=True)
    with pytest.raises(TypeError, match="forward_only"):
        verify_golden(sets["float64"], "neocell", command="true {in} {out}", forward_only="yes")
