"""Running the command line in this process, and its exit contract.

``check_contract`` is what the fuzz of tests/test_cli.py asserts for every drawn
command line; tests/meta/test_cli_mutants.py shows it notices a traceback.
"""

import contextlib
import io
import time

from neocell_ref.cli import main


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
    # the CLI turns what it did not foresee into status 2 and one "internal error" line
    # (never a traceback for a user); for the fuzz that line is a defect all the same
    assert "internal error" not in err, f"{where}: an unforeseen exception:\n{err[-2000:]}"
    if code == 2:
        assert err.strip(), f"{where}: exit 2 without saying why on stderr"
    assert took < seconds, f"{where}: took {took:.1f} s (limit {seconds} s)"
    return code, out, err
