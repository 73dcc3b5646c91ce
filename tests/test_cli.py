"""Fuzz of the whole command line: every exit status means what the docs say.

``neocell-ref`` promises (``neocell_ref.cli``): 0 success, 1 a check failed (a port
failed its golden cases), 2 unusable input with one line on stderr, never a
traceback, and never a hang. Hypothesis draws command lines from a grammar of every
subcommand and option, filled with ordinary and hostile values (zero, negatives,
powers, non-numbers, NaN, huge sizes, empty strings, paths that are files or do not
exist, ports that are not callables, commands that fail), runs ``cli.main`` in the
test process and checks that contract on each one (``support.cli.check_contract``;
tests/meta/test_cli_mutants.py shows it notices a traceback).

Then the calculator's commands one by one: ``complexity`` and ``model-complexity``
print the calculator's exact results as a table or JSON and refuse unusable arguments
in one line with exit status 2. The ``golden`` commands are tested with the verifier
(tests/verify/), the main job in tests/test_demo.py.
"""

from __future__ import annotations

import io
import json
import time
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.cli import check_contract
from support.layer_counts import FAST_SECONDS

from neocell_ref.calculator import (
    complexity,
    model_complexity,
    released_checkpoint_options,
)
from neocell_ref.cli import main
from neocell_ref.verify.golden import export_golden

#: Values an integer option may receive from a careless or hostile user.
INTS = [
    "0",
    "1",
    "2",
    "7",
    "-1",
    "-0",
    "10**12",
    "10**400",
    "1e3",
    "3.5",
    "abc",
    "",
    "nan",
    "inf",
    "True",
    "0x10",
    " 7",
    "7 ",
    "9" * 40,
]
#: Values a real-number option may receive.
REALS = ["1", "0.5", "0", "-1", "nan", "inf", "-inf", "1e300", "8192", "8193", "abc", ""]
CODES = ["7", "4+7", "4+", "+7", "0+7", "4+4+4+4", "x", "", "1000000000"]
MODELS = ["neonext_t", "neonext_s", "neonext_xl", "bogus", ""]
DTYPES = ["float64", "float32", "float16", "bfloat16", "float8", "int32", ""]
OPS = ["neocell", "linear", "batchnorm", "gelu", "model", "bogus", ""]
PORTS = [
    "neocell_ref.neocell:neocell_forward",
    "neocell_ref.neocell:neocell_backward",
    "json:loads",
    "os:getcwd",
    "no_such_module:f",
    "neocell_ref.neocell:no_such_name",
    ":",
    "",
    "a:b:c",
    "neocell_ref.neocell:METHODS",
    "builtins:exit",
]
COMMANDS = ["false {in} {out}", "true {in} {out}", "/no/such/program {in} {out}", "", "{in}", "sleep"]


def _pick(values):
    return st.sampled_from(values)


@st.composite
def option_list(draw, options):
    """Some of ``options`` (name -> value strategy or None for a flag), in any order."""
    names = draw(st.lists(st.sampled_from(sorted(options)), unique=True, max_size=len(options)), label="options")
    argv = []
    for name in names:
        argv.append(name)
        if options[name] is not None:
            argv.extend(
                draw(options[name], label=name)
                if isinstance(options[name], st.SearchStrategy)
                else [draw(_pick(options[name]), label=name)]
            )
    return argv


def complexity_argv():
    return option_list(
        {
            "-k": INTS,
            "-c": INTS,
            "--code": CODES,
            "--shift": INTS,
            "--batch": INTS,
            "--dw-kernel": INTS,
            "--dtype": DTYPES,
            "--json": None,
            "--hw": st.lists(_pick(INTS), min_size=2, max_size=2),
        }
    ).map(lambda rest: ["complexity", *rest])


def model_complexity_argv():
    return st.tuples(
        _pick(MODELS),
        option_list(
            {
                "--resolution": INTS,
                "--released": None,
                "--per-layer": None,
                "--json": None,
            }
        ),
    ).map(lambda t: ["model-complexity", t[0], *t[1]])


def export_argv(root):
    targets = [str(root / "new"), str(root / "a_file"), "", str(root / "no" / "such" / "parent")]
    return st.tuples(
        _pick(targets), option_list({"--suite": ["core", "bogus", ""], "--dtype": DTYPES, "--seed": INTS})
    ).map(lambda t: ["golden", "export", t[0], *t[1]])


def verify_argv(root):
    sets = [str(root / "set"), str(root / "empty"), str(root / "missing"), str(root / "a_file")]
    port = st.one_of(
        option_list({"--forward": PORTS, "--backward": PORTS}),
        st.tuples(_pick(COMMANDS), option_list({"--timeout": REALS, "--forward-only": None})).map(
            lambda t: ["--exec", t[0], *t[1]]
        ),
    )
    rest = option_list({"--rtol-scale": REALS, "--digest": ["0" * 64, "abc", ""], "--exclude": ["k7_*=slow", "=", "x"]})
    return st.tuples(_pick(sets), _pick(OPS), port, rest).map(
        lambda t: ["golden", "verify", t[0], "--op", t[1], *t[2], *t[3]]
    )


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz_cli")
    export_golden(root / "set", operations=["neocell"])
    (root / "empty").mkdir()
    (root / "a_file").write_text("not a folder\n")
    return root


@settings(max_examples=40)
@given(argv=st.one_of(complexity_argv(), model_complexity_argv()))
def test_calculator_commands_keep_the_exit_contract(argv):
    check_contract(argv, expect=(0, 2))


def test_export_commands_keep_the_exit_contract(root):
    @settings(max_examples=15, deadline=None)
    @given(argv=export_argv(root))
    def inner(argv):
        code, _, _ = check_contract(argv, expect=(0, 2))
        if code == 0:  # a set was written: clean up so the next draw starts alike
            import shutil

            shutil.rmtree(argv[2])

    inner()


def test_verify_commands_keep_the_exit_contract(root):
    @settings(max_examples=30, deadline=None)
    @given(argv=verify_argv(root))
    def inner(argv):
        code, out, _ = check_contract(argv)
        if code == 0:
            assert "PASSED" in out, f"exit 0 without a PASSED report: {out[-500:]}"

    inner()


# --------------------------------------------------------------------------------------
# the calculator's commands: exact integers, tables and JSON, one-line errors (exit 2)
# --------------------------------------------------------------------------------------
def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse refuses an argument
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def test_cli_prints_exact_integers_at_huge_sizes():
    status, out, _ = run_cli(["complexity", "-c", "10**12", "--json"])
    assert status == 0, out
    assert f'"neocell_macs": {2 * 7 * 10**12 * 56 * 56},' in out, out
    status, out, _ = run_cli(["complexity", "-c", "1000000000000"])
    assert status == 0 and f"{2 * 7 * 10**12 * 56 * 56:,}" in out, out
    for argv in (
        ["complexity", "-k", "1000000000"],
        ["complexity", "--dw-kernel", "1000000000"],
        ["complexity", "--hw", "10**15", "10**15"],
        ["model-complexity", "neonext_t", "--resolution", "100000000"],
        ["complexity", "-c", "10**300"],  # within the float range: 2*7*56*56*10**300 MACs
        ["complexity", "-c", "2**1000"],
    ):
        start = time.perf_counter()
        status, out, err = run_cli(argv)
        assert status == 0 and not err, f"{argv}: status {status}, {err}"
        assert time.perf_counter() - start < 5 * FAST_SECONDS, f"{argv} was slow"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["complexity", "-c", "0"], "must be >= 1"),
        (["complexity", "-c", "-5"], "must be >= 1"),
        (["complexity", "-k", "2.5"], "expected an integer"),
        (["complexity", "-k", "1e9"], "expected an integer"),
        (["complexity", "--hw", "56", "x"], "expected an integer"),
        (["complexity", "--shift", "-1"], "must be >= 0"),
        (["complexity", "--batch", "0"], "must be >= 1"),
        (["complexity", "--dw-kernel", "0"], "must be >= 1"),
        (["complexity", "--hw", "10**400", "5"], "beyond the float range"),
        (["complexity", "-c", "10**1000000000"], "beyond the float range"),
        (["complexity", "-c", "2**1" + "0" * 309], "beyond the float range"),  # log2 of the exponent overflowed
        (["complexity", "-c", "9" * 500], "beyond the float range"),
        (["complexity", "--hw", "10**200", "10**200"], "beyond the float range"),
        (["complexity", "-k", "7", "--shift", "7"], "error: shift=7 must be smaller"),
        (["complexity", "--dtype", "int8"], "dtype must be a floating NumPy dtype, got int8"),
        (["model-complexity", "neonext_q"], "invalid choice"),
        (["model-complexity", "neonext_t", "--resolution", "0"], "must be >= 1"),
        (["model-complexity", "neonext_t", "--resolution", "226"], "multiples of 4"),
        (["model-complexity", "neonext_t", "--resolution", "4", "4", "4"], "multiples of 4"),
        (["model-complexity", "neonext_t", "--resolution", "4*10**160"], "expected an integer"),
        (["model-complexity", "neonext_t", "--resolution", "10**160"], "beyond the float range"),
        (["model-complexity", "neonext_t", "--num-classes", "0"], "must be >= 1"),
        (["model-complexity", "neonext_t", "--shifts", "1", "1", "1", "-1"], "must be >= 0"),
        (["model-complexity", "neonext_t", "--layer-scale-init-value", "nan"], "finite"),
        (["model-complexity", "neonext_t", "--kernel-spec", "4+0"], "kernel size < 1"),
        (["complexity", "-k", "7", "--code", "4+7"], "argument --code: not allowed with argument -k/--kernel"),
    ],
)
def test_cli_refuses_unusable_arguments_with_status_2(argv, needle):
    status, out, err = run_cli(argv)
    text = out + err
    assert status == 2, f"{argv}: exit status {status}, output {text!r}"
    assert "Traceback" not in text, f"{argv}: traceback printed:\n{text}"
    message = [line for line in text.splitlines() if "error:" in line]
    assert len(message) == 1 and needle in message[0], f"{argv}: expected one error line with {needle!r}:\n{text}"


def run_cli_stdout(argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        status = main(argv)
    return status, buf.getvalue()


def test_cli_complexity_table_and_json():
    status, text = run_cli_stdout(["complexity", "-k", "7", "-c", "96"])
    assert status == 0 and text.strip() == str(complexity(k=7, c=96)), f"table differs:\n{text}"
    status, text = run_cli_stdout(
        ["complexity", "-c", "96", "--hw", "56", "40", "--code", "4+7", "--shift", "1", "--json"]
    )
    expected = complexity(code="4+7", c=96, h=56, w=40, shift=1).to_dict()
    assert status == 0 and json.loads(text) == expected, f"JSON differs: {text[:300]}"


def test_cli_model_complexity_of_a_custom_network():
    """--depths/--dims/--in-chans count the named network with other sizes: the same
    numbers as model_complexity of that NeoNeXtConfig in Python."""
    from neocell_ref.architecture import NeoNeXtConfig

    argv = ["model-complexity", "neonext_t", "--depths", "1", "2", "1", "3", "--dims", "13", "21", "37", "45"]
    argv += ["--in-chans", "5", "--kernel-spec", "3+5", "--resolution", "96", "128", "--json"]
    status, text = run_cli_stdout(argv)
    config = NeoNeXtConfig(per_stage_layers=(1, 2, 1, 3), dims=(13, 21, 37, 45), in_chans=5, kernel_spec="3+5")
    expected = model_complexity(config, (96, 128)).to_dict(per_layer=False)
    assert status == 0, f"exit status {status}: {text[:300]}"
    got = json.loads(text)
    assert got == expected, f"JSON differs from Python's in {[k for k in expected if got.get(k) != expected[k]]}"
    assert got["name"] == "custom" and got["config"]["in_chans"] == 5, f"name {got['name']!r}, {got['config']}"


def test_cli_complexity_reports_bad_input():
    err = io.StringIO()
    with redirect_stderr(err):
        status, text = run_cli_stdout(["complexity", "--code", "4+7", "--shift", "4"])
    message = err.getvalue()
    assert status == 2 and text == "", f"status {status}, stdout {text!r}"
    assert message.startswith("neocell-ref: error: ") and message.count("\n") == 1, message
    assert "shift=4 must be smaller than every kernel size of code '4+7'" in message, message


def test_cli_model_complexity():
    status, text = run_cli_stdout(["model-complexity", "neonext_t", "--resolution", "224"])
    assert status == 0 and text.strip() == str(model_complexity("neonext_t", 224)), f"summary:\n{text}"
    status, text = run_cli_stdout(["model-complexity", "neonext_s", "--resolution", "384", "--released", "--json"])
    expected = model_complexity("neonext_s", 384, **released_checkpoint_options(384)).to_dict(per_layer=False)
    assert status == 0 and json.loads(text) == expected, f"JSON differs: {text[:300]}"
    # a rectangle: the released 384 px options follow the longer side, as in the API
    status, text = run_cli_stdout(
        ["model-complexity", "neonext_s", "--resolution", "224", "384", "--released", "--json"]
    )
    options = released_checkpoint_options((224, 384))
    assert options["shifts"] == (1, 1, 1, 1), options
    expected = model_complexity("neonext_s", (224, 384), **options).to_dict(per_layer=False)
    assert status == 0 and json.loads(text) == expected, f"JSON differs: {text[:300]}"
    status, text = run_cli_stdout(
        [
            "model-complexity",
            "neonext_t",
            "--per-layer",
            "--kernel-spec",
            "7",
            "--shifts",
            "0",
            "0",
            "0",
            "0",
            "--linear-bias",
            "--num-classes",
            "10",
        ]
    )
    expected = model_complexity(
        "neonext_t", 224, kernel_spec="7", shifts=(0, 0, 0, 0), linear_bias=True, num_classes=10
    )
    assert status == 0 and expected.table() in text, "per-layer table missing"
    err = io.StringIO()
    with redirect_stderr(err):
        status, text = run_cli_stdout(["model-complexity", "neonext_t", "--resolution", "226"])
    message = err.getvalue()
    assert status == 2 and text == "" and message.startswith("neocell-ref: error: "), (status, text, message)
    assert "multiples of 4" in message and message.count("\n") == 1, f"bad resolution: {message!r}"


def test_the_readmes_cost_commands_run():
    """Every ``neocell-ref complexity`` / ``model-complexity`` line of README.md's command
    line block runs (with its optional ``[--flags]`` left out and with each of them)."""
    import re
    import shlex

    from support.paths import REPO

    lines = [
        line.split("#")[0].split()
        for line in (REPO / "README.md").read_text(encoding="utf-8").splitlines()
        if re.match(r"neocell-ref (model-)?complexity ", line)
    ]
    assert len(lines) >= 3, f"README.md's command block lost its cost commands: {lines}"
    for words in lines:
        plain = [w for w in words[1:] if not w.startswith("[")]
        optional = [w.strip("[]") for w in words[1:] if w.startswith("[")]
        for argv in (plain, plain + optional):
            out, err = io.StringIO(), io.StringIO()
            with redirect_stdout(out), redirect_stderr(err):
                code = main(argv)
            assert code == 0, f"README command {shlex.join(['neocell-ref', *argv])!r} exited {code}: {err.getvalue()}"


def test_a_closed_output_pipe_exits_141_without_a_traceback():
    """Output piped into a reader that stops early (``| head``): status 141 (128 + SIGPIPE),
    not 1, which means a failed check, and no traceback."""
    import subprocess
    import sys

    from support.paths import REPO

    proc = subprocess.Popen(
        [sys.executable, "-m", "neocell_ref.cli", "model-complexity", "neonext_b", "--per-layer", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO,
    )
    proc.stdout.read(16)
    proc.stdout.close()  # the reader goes away long before the 100 kB of JSON are written
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141, f"status {proc.returncode}, stderr {err.decode()[-500:]!r}"
    assert b"Traceback" not in err, err.decode()[-500:]
