"""Fuzz of the whole command line: every exit status means what the docs say.

``neocell-ref`` promises (``neocell_ref.cli``): 0 success, 1 a check failed (a port
failed its golden cases), 2 unusable input with one line on stderr, never a
traceback, and never a hang. Hypothesis draws command lines from a grammar of every
subcommand and option, filled with ordinary and hostile values (zero, negatives,
powers, non-numbers, NaN, huge sizes, empty strings, paths that are files or do not
exist, ports that are not callables, commands that fail), runs ``cli.main`` in the
test process and checks that contract on each one.
"""

from __future__ import annotations

import contextlib
import io
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def run(argv):
    """``cli.main(argv)`` in this process: (exit status, stdout, stderr, seconds)."""
    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse refuses a malformed command line with 2
            code = exc.code if isinstance(exc.code, int) else 1
    return code, out.getvalue(), err.getvalue(), time.perf_counter() - start


def check_contract(argv, expect=(0, 1, 2), seconds=30.0):
    code, out, err, took = run(argv)
    where = f"neocell-ref {' '.join(repr(a) for a in argv)}"
    assert code in expect, f"{where}: exit status {code!r}, expected one of {expect}\nstderr: {err[-2000:]}"
    assert "Traceback" not in err and "Traceback" not in out, f"{where}: printed a traceback:\n{err[-3000:]}"
    if code == 2:
        assert err.strip(), f"{where}: exit 2 without saying why on stderr"
    assert took < seconds, f"{where}: took {took:.1f} s (limit {seconds} s)"
    return code, out, err


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


def test_the_fuzz_would_notice_a_traceback(monkeypatch):
    """Test of the test: a command that crashes with an unexpected exception breaks the
    contract, and :func:`check_contract` says so."""
    from neocell_ref import calculator as cx

    def boom(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(cx, "complexity", boom)
    with pytest.raises((AssertionError, ZeroDivisionError)):
        check_contract(["complexity", "-k", "7"])
