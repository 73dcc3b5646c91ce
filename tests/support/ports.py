"""Ports that are programs: the exec-protocol Python script and the C port's build.

``PORT`` is one Python script that speaks the exec protocol of
:mod:`neocell_ref.verify.exec_port` in many modes (correct, planted bugs of
``support.mutant_ports``, misbehaving); format it with ``repo=str(REPO)`` and
``tests=str(TESTS)``. :func:`build_c_port` builds examples/c_port out of tree (skip
without cc/make locally, fail under CI). Used by the exec runner's, the verifier's,
the diagnosis' and the C port's tests.
"""

import shutil
import subprocess
import textwrap

import pytest

from support.optional import in_ci
from support.paths import REPO

# One script, many behaviours: ``port.py MODE IN OUT [EXTRA]``. Modes that only
# misbehave import nothing heavy, so that they start fast: bad output files are
# prepared by the tests and only placed by the port.
PORT = textwrap.dedent("""
    import json, os, subprocess, sys, time
    sys.path[:0] = [{repo!r}, {tests!r}]
    mode, in_dir, out_dir = sys.argv[1:4]
    case = json.load(open(os.path.join(in_dir, "case.json")))

    def out(name):
        return os.path.join(out_dir, name + ".npy")

    if mode == "exit3":
        sys.stderr.write("port: something broke on purpose\\n")
        sys.exit(3)
    if mode == "sigkill":
        sys.stderr.write("port: about to kill myself\\n")
        sys.stderr.flush()
        os.kill(os.getpid(), 9)
    if mode == "flood":
        sys.stderr.write("x" * 1000000 + "\\nLAST-LINE-OF-STDERR\\n")
        sys.stdout.write("y" * 1000000)
        sys.exit(1)
    if mode == "sleep":  # a child and a grandchild that would both run for a minute
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(sys.argv[4], "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        sys.stderr.write("port: sleeping instead of working\\n")
        sys.stderr.flush()
        time.sleep(60)
        sys.exit(0)
    if mode == "orphan":  # exits at once, leaving a child running that holds stderr open
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        with open(sys.argv[4], "w") as f:
            f.write(f"{{child.pid}}")
        sys.exit(0)
    if mode == "nothing":
        sys.exit(0)
    if mode in ("copy", "symlink", "fifo", "directory", "replace_out"):
        # Place outputs prepared by the test in the folder sys.argv[4] (no NumPy here: fast).
        import shutil
        source = sys.argv[4] if len(sys.argv) > 4 else None
        for name in case["outputs"]:
            prepared = os.path.join(source, name + ".npy") if source else None
            if mode == "copy" and os.path.exists(prepared):
                shutil.copyfile(prepared, out(name))
            elif mode == "symlink":  # a correct-looking file outside {{out}}, linked in
                os.symlink(prepared, out(name))
            elif mode == "fifo":
                os.mkfifo(out(name))
            elif mode == "directory":
                os.mkdir(out(name))
        if mode == "replace_out":  # {{out}} itself becomes a link to the prepared folder
            os.rmdir(out_dir)
            os.symlink(source, out_dir)
        sys.stderr.write(f"port: wrote {{mode}} outputs\\n")
        sys.exit(0)

    import numpy as np
    arrays = {{n: np.load(os.path.join(in_dir, n + ".npy"), allow_pickle=False) for n in case["inputs"]}}
    shapes = {{n: tuple(s) for n, s in case["outputs"].items()}}
    groups = len(case["specs"])
    if mode == "correct" or mode == "fortran_bigendian" or mode.startswith("mutant:"):
        if mode.startswith("mutant:"):
            from support import mutant_ports
            bug = None if mode == "mutant:None" else mode.split(":")[1]
            fwd = lambda *a: mutant_ports.port_forward(*a, bug=bug)
            bwd = lambda *a: mutant_ports.port_backward(*a, bug=bug)
        else:
            from neocell_ref import neocell_backward as bwd, neocell_forward as fwd
        wa = [arrays[f"weight_a_{{g}}"] for g in range(groups)]
        wb = [arrays[f"weight_b_{{g}}"] for g in range(groups)]
        got = {{"y": fwd(arrays["x"], wa, wb, case["specs"])}}
        if "grad_x" in shapes:
            gx, ga, gb = bwd(arrays["grad_y"], arrays["x"], wa, wb, case["specs"])
            got["grad_x"] = gx
            got.update({{f"grad_weight_a_{{g}}": a for g, a in enumerate(ga)}})
            got.update({{f"grad_weight_b_{{g}}": b for g, b in enumerate(gb)}})
        for name, value in got.items():
            if mode == "fortran_bigendian":
                value = np.asfortranarray(value.astype(">f8"))
            np.save(out(name), value)
        sys.exit(0)

    raise SystemExit(f"unknown mode {{mode}}")
""")


SOURCE = REPO / "examples" / "c_port"


SANITIZE = "-std=c99 -O1 -g -Wall -Wextra -pedantic -Werror -fsanitize=address,undefined -fno-sanitize-recover=all"


def unavailable(reason):
    if in_ci():
        pytest.fail(f"CI must build the C port, but {reason}", pytrace=False)
    pytest.skip(reason)


def build_c_port(folder, cflags=None):
    missing = [tool for tool in ("cc", "make") if shutil.which(tool) is None]
    if missing:
        unavailable(f"{' and '.join(missing)} not found: the C port needs a C99 compiler (cc) and make")
    binary = folder / "neocell_port"
    command = ["make", "-C", str(SOURCE), f"OUT={binary}"] + ([f"CFLAGS={cflags}"] if cflags else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    return binary, result.returncode, output
