"""The exec protocol runner (neocell_ref.verify.exec_port) against ports that are programs.

The ports are small Python scripts run with ``sys.executable``: a correct one (it
calls neocell_ref), the planted-bug ports of ``support/mutant_ports.py``, and misbehaving
ones (bad exit, hang, missing, pickled, complex, wrongly shaped, oversized, linked
or truncated outputs). Each misbehaviour must raise ``PortFailure`` naming the case
and the problem, with the port's stderr tail; nothing may crash, hang or unpickle.
"""

import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from support.paths import REPO
from support.ports import PORT

from neocell_ref.verify.exec_port import (
    TAIL_BYTES,
    ExecCommandError,
    ExecPort,
    PortFailure,
    check_command,
    file_name,
    neocell_outputs,
    run_exec,
    run_golden_case,
)
from neocell_ref.verify.golden import compare_arrays, run_and_compare
from neocell_ref.verify.golden_ops import OPERATIONS


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    """``port(mode, *extra) -> command`` running the script above in ``mode``."""
    folder = tmp_path_factory.mktemp("ports")
    script = folder / "port.py"
    script.write_text(PORT.format(repo=str(REPO), tests=str(REPO / "tests")))

    def command(mode, *extra):
        return [sys.executable, str(script), mode, "{in}", "{out}", *map(str, extra)]

    return command


def golden_case(name, dtype=np.float64):
    """``(meta, arrays)`` of the curated NeoCell golden case ``name``, made in memory."""
    op = OPERATIONS["neocell"]
    index, (name, spec, shape) = next((i, c) for i, c in enumerate(op.cases("core")) if c[0] == name)
    dtype = dtype if isinstance(dtype, str) else np.dtype(dtype).name  # "bfloat16" has no NumPy dtype
    meta, arrays, inputs, tolerances = op.make(name, spec, shape, dtype, np.random.default_rng([7, index]))
    return {**meta, "inputs": inputs, "tolerances": tolerances}, arrays


def failures(name, got, meta, arrays):
    """Arrays of ``got`` that fail the golden comparison."""
    bad = []
    for key, value in got.items():
        tol = meta["tolerances"][key]
        result = compare_arrays(
            name, key, value, arrays[key], rtol=tol["rtol"], atol=tol["atol"], bound=arrays[tol["bound"]]
        )
        if not result.passed:
            bad.append(result.describe())
    return bad


SMALL = "k5_shifta2_shiftb1"  # one group, shifted, every output small


def run_small(command, **kwargs):
    meta, arrays = golden_case(SMALL)
    return run_golden_case(command, "neocell", SMALL, meta, arrays, **kwargs)


def assert_port_failure(excinfo, *words, stderr=None):
    message = str(excinfo.value)
    assert f"case {SMALL!r}" in message, f"the failure does not name the case: {message}"
    for word in words:
        assert word in message, f"expected {word!r} in the failure message, got: {message}"
    if stderr is not None:
        assert stderr in excinfo.value.stderr_tail and stderr in message, (
            f"the failure does not carry the port's stderr {stderr!r}: {message}"
        )


# --------------------------------------------------------------------------------------
# a correct port passes, in every mode
# --------------------------------------------------------------------------------------
def test_correct_port_passes_forward_and_backward(port):
    meta, arrays = golden_case(SMALL)
    got = run_golden_case(port("correct"), "neocell", SMALL, meta, arrays)
    assert sorted(got) == sorted(meta["tolerances"]), f"outputs {sorted(got)}"
    bad = failures(SMALL, got, meta, arrays)
    assert bad == [], f"correct port fails {SMALL}: {bad}"


def test_forward_only_fortran_order_big_endian(port, tmp_path):
    """Forward-only: no gradient seed in {in}, only y expected; Fortran-order big-endian output is read right."""
    meta, arrays = golden_case(SMALL, np.float32)
    got = run_golden_case(
        port("fortran_bigendian"), "neocell", SMALL, meta, arrays, forward_only=True, keep_dir=tmp_path
    )
    assert list(got) == ["y"], f"forward-only run returned {list(got)}, expected ['y']"
    bad = failures(SMALL, got, meta, arrays)
    assert bad == [], f"Fortran-order big-endian y fails {SMALL}: {bad}"
    (case_dir,) = tmp_path.iterdir()
    files = sorted(p.name for p in (case_dir / "in").iterdir())
    assert files == ["case.json", "weight_a_0.npy", "weight_b_0.npy", "x.npy"], files
    outputs = json.loads((case_dir / "in" / "case.json").read_text())["outputs"]
    assert outputs == {"y": [1, 7, 15, 13]}, (
        f"forward-only case.json outputs {outputs}, expected {{'y': [1, 7, 15, 13]}}"
    )


def test_case_json_schema(port, tmp_path):
    """case.json holds what docs/porting.md (section 8) says; inputs are little-endian C-order .npy 1.0."""
    meta, arrays = golden_case(SMALL, np.float32)
    with pytest.raises(PortFailure, match="missing"):  # a port that writes nothing; the folder is kept
        run_golden_case(port("nothing"), "neocell", SMALL, meta, arrays, keep_dir=tmp_path)
    (case_dir,) = tmp_path.iterdir()
    case = json.loads((case_dir / "in" / "case.json").read_text())
    assert case == json.loads(_doc_block("json")), "docs/porting.md's example differs from case.json"
    assert case == {
        "protocol": 1,
        "op": "neocell",
        "case": SMALL,
        "dtype": "float32",
        "specs": [{"kernel": 5, "channels": 7, "shift_a": 2, "shift_b": 1}],
        "inputs": ["grad_y", "weight_a_0", "weight_b_0", "x"],
        "outputs": {
            "grad_weight_a_0": [7, 5, 5],
            "grad_weight_b_0": [7, 5, 5],
            "grad_x": [1, 7, 15, 13],
            "y": [1, 7, 15, 13],
        },
    }, case
    for name in case["inputs"]:
        raw = (case_dir / "in" / f"{name}.npy").read_bytes()
        assert raw[:8] == b"\x93NUMPY\x01\x00", f"{name}: not a version 1.0 .npy"
        header = raw[10 : 10 + int.from_bytes(raw[8:10], "little")].decode("latin1")
        assert "'descr': '<f4'" in header and "'fortran_order': False" in header, header
        np.testing.assert_array_equal(np.load(case_dir / "in" / f"{name}.npy", allow_pickle=False), arrays[name])
    left = list((case_dir / "out").iterdir())
    assert left == [], f"{{out}} not empty after a port that writes nothing: {left}"


@pytest.mark.parametrize("dtype, descr, field", [("float16", "<f2", "float16"), ("bfloat16", "<f4", "float32")])
def test_half_sets_write_their_storage_dtype(port, tmp_path, dtype, descr, field):
    """docs/porting.md section 8.2: a float16 case is written as '<f2', a bfloat16 one as
    '<f4' holding bfloat16 numbers, and case.json's dtype names the files' dtype."""
    meta, arrays = golden_case(SMALL, dtype)
    with pytest.raises(PortFailure, match="missing"):
        run_golden_case(port("nothing"), "neocell", SMALL, meta, arrays, keep_dir=tmp_path)
    (case_dir,) = tmp_path.iterdir()
    written = json.loads((case_dir / "in" / "case.json").read_text())["dtype"]
    assert written == field, f"{dtype} case.json dtype {written!r}, expected {field!r}"
    for name in ("x", "weight_a_0", "weight_b_0", "grad_y"):
        raw = (case_dir / "in" / f"{name}.npy").read_bytes()
        header = raw[10 : 10 + int.from_bytes(raw[8:10], "little")].decode("latin1")
        assert f"'descr': '{descr}'" in header, (name, header)
        stored = np.load(case_dir / "in" / f"{name}.npy", allow_pickle=False)
        np.testing.assert_array_equal(stored, arrays[name])
        if dtype == "bfloat16":  # the low 16 bits of every float32 are zero
            assert not np.any(stored.view(np.uint32) & 0xFFFF), name


def _doc_block(language):
    """The first fenced ``language`` block of the exec protocol section of docs/porting.md."""
    text = (REPO / "docs" / "porting.md").read_text()
    text = text.split("\n## 8. Ports that are programs: the exec protocol\n", 1)[1].split("\n## ", 1)[0]
    return text.split(f"```{language}\n", 1)[1].split("```", 1)[0]


@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (1, 7, 15, 13)])
def test_documented_npy_recipe(tmp_path, shape):
    """The NumPy-free reader/writer of docs/porting.md (section 8.5): numpy.save's bytes, exact values."""
    recipe = {}
    exec(compile(_doc_block("python"), "docs/porting.md", "exec"), recipe)
    values = np.random.default_rng(3).standard_normal(shape)
    recipe["write_npy"](tmp_path / "a.npy", shape, list(values.ravel()))
    np.save(tmp_path / "b.npy", values)
    ours, numpys = (tmp_path / "a.npy").read_bytes(), (tmp_path / "b.npy").read_bytes()
    first = next((i for i, (a, b) in enumerate(zip(ours, numpys)) if a != b), min(len(ours), len(numpys)))
    assert ours == numpys, (
        f"shape {shape}: recipe's .npy ({len(ours)} bytes) differs from numpy.save's ({len(numpys)} bytes) "
        f"from byte {first}: {ours[first : first + 16]!r} vs {numpys[first : first + 16]!r}"
    )
    for dtype in ("<f8", "<f4", "<f2"):
        np.save(tmp_path / "c.npy", values.astype(dtype))
        got_shape, got = recipe["read_npy"](tmp_path / "c.npy")
        assert got_shape == shape and np.array_equal(np.reshape(got, shape), values.astype(dtype)), dtype
    for bad in (values.astype(">f8"), np.asfortranarray(np.ones((2, 3))), np.zeros(shape, dtype=np.int32)):
        np.save(tmp_path / "d.npy", bad)
        with pytest.raises(ValueError, match="unsupported"):
            recipe["read_npy"](tmp_path / "d.npy")


def test_temporary_folders_are_removed(port, monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    with pytest.raises(PortFailure):
        run_small(port("nothing"))
    assert list(tmp_path.iterdir()) == [], "the runner left its case folder behind"


def test_exec_port_adapter_in_the_golden_calling_convention(port):
    """ExecPort gives forward/backward callables that run_and_compare accepts: all pass."""
    meta, arrays = golden_case(SMALL)
    adapter = ExecPort(port("correct"))
    results = run_and_compare("neocell", SMALL, meta, arrays, adapter.forward, adapter.backward)
    assert sorted(r.array for r in results) == sorted(meta["tolerances"]), (
        f"compared arrays {sorted(r.array for r in results)}, expected {sorted(meta['tolerances'])}"
    )
    assert all(r.passed for r in results), [r.describe() for r in results if not r.passed]
    assert adapter.runs == 2, "forward-only run plus full run"


def test_neocell_outputs_shapes():
    shapes = neocell_outputs([{"h_in": 2, "h_out": 1, "w_in": 3, "w_out": 1, "channels": 4}], (2, 4, 9, 7))
    assert shapes == {
        "y": (2, 4, 4, 2),
        "grad_x": (2, 4, 9, 7),
        "grad_weight_a_0": (4, 1, 2),
        "grad_weight_b_0": (4, 3, 1),
    }, f"output shapes {shapes}"
    shapes = neocell_outputs([{"kernel": 3, "channels": 1}], (1, 1, 5, 5), forward_only=True)
    assert shapes == {"y": (1, 1, 5, 5)}, f"forward-only output shapes {shapes}, expected {{'y': (1, 1, 5, 5)}}"


# --------------------------------------------------------------------------------------
# tests of the tests: planted-bug ports through the runner fail
# --------------------------------------------------------------------------------------
#: Each bug of mutant_ports.py with a curated case that exposes it.
MUTANT_CASES = {
    "corner_dropped": "mixed_4p7_shift1_uneven",
    "split_ceil": "mixed_4p7_shift1_uneven",
    "round_size": "down_2to1_9x7",
    "swap_ab": "k7_square_14x14",
    "transpose_a": "k7_square_14x14",
    "float32_accumulation": "k7_square_14x14",
}


@pytest.mark.parametrize("case", sorted(set(MUTANT_CASES.values())))
def test_unbugged_mutant_port_passes(port, case):
    """The planted-bug port without a bug passes the cases used below (so they fail because of the bug)."""
    meta, arrays = golden_case(case)
    got = run_golden_case(port("mutant:None"), "neocell", case, meta, arrays)
    bad = failures(case, got, meta, arrays)
    assert bad == [], f"mutant port without a bug fails {case}: {bad}"


@pytest.mark.parametrize("bug", sorted(MUTANT_CASES))
def test_mutant_port_fails_through_the_runner(port, bug):
    case = MUTANT_CASES[bug]
    meta, arrays = golden_case(case)
    if bug == "round_size":  # a wrong output size is caught by the runner's shape check
        with pytest.raises(PortFailure, match=r"output y.npy: has shape \(2, 6, 5, 4\), expected \(2, 6, 4, 3\)"):
            run_golden_case(port(f"mutant:{bug}"), "neocell", case, meta, arrays, forward_only=True)
        return
    got = run_golden_case(port(f"mutant:{bug}"), "neocell", case, meta, arrays)
    assert failures(case, got, meta, arrays), f"the {bug} port passed {case} through the exec runner"


# --------------------------------------------------------------------------------------
# misbehaving ports: a PortFailure that names the case, the problem and the stderr tail
# --------------------------------------------------------------------------------------
def test_nonzero_exit(port):
    with pytest.raises(PortFailure) as excinfo:
        run_small(port("exit3"))
    assert_port_failure(excinfo, "exited with status 3", stderr="something broke on purpose")


def test_killed_by_a_signal(port):
    with pytest.raises(PortFailure) as excinfo:
        run_small(port("sigkill"))
    assert_port_failure(excinfo, "killed by signal 9", stderr="about to kill myself")


def _alive(pid):
    """True while ``pid`` runs (a zombie waiting for its parent counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # pragma: no cover - no /proc: ask the kernel
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


def test_timeout_kills_the_whole_process_group(port, tmp_path):
    pids_file = tmp_path / "pids"
    start = time.monotonic()
    with pytest.raises(PortFailure) as excinfo:
        run_small(port("sleep", pids_file), timeout=2.0)
    elapsed = time.monotonic() - start
    assert_port_failure(
        excinfo, "timed out after 2 s", "process group was killed", stderr="sleeping instead of working"
    )
    assert elapsed < 20, f"the runner took {elapsed:.1f} s to give up on a 2 s timeout"
    pids = [int(p) for p in pids_file.read_text().split()]
    deadline = time.monotonic() + 5
    while any(map(_alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(map(_alive, pids)), f"processes {[p for p in pids if _alive(p)]} of the port survived the timeout"


def test_processes_left_behind_are_killed(port, tmp_path):
    """A port that exits normally but leaves a child running: the child is killed too."""
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    with pytest.raises(PortFailure, match="missing"):
        run_small(port("orphan", pid_file))
    assert time.monotonic() - start < 20, "the runner waited for the left-behind child"
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), f"process {pid} left behind by the port is still running"


def test_stderr_is_kept_bounded_to_its_tail(port):
    with pytest.raises(PortFailure) as excinfo:
        run_small(port("flood"))
    tail = excinfo.value.stderr_tail
    assert len(tail.encode()) <= TAIL_BYTES, f"kept {len(tail)} bytes of stderr"
    assert tail.rstrip().endswith("LAST-LINE-OF-STDERR"), tail[-100:]
    assert_port_failure(excinfo, "exited with status 1")


def _npy(array, allow_pickle=False):
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _claiming(shape, data=bytes(64)):
    """A .npy header claiming a float64 array of ``shape``, followed by ``data``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + data


#: Bad outputs: ``{label: (file bytes from the expected shape, or None to write no file; words)}``.
BAD_OUTPUTS = {
    "nothing written": (lambda name, shape: None, ["y.npy", "missing"]),
    "gradients missing": (lambda name, shape: _npy(np.zeros(shape)) if name == "y" else None, ["grad_", "missing"]),
    "pickled": (
        lambda name, shape: _npy(np.array([{"a": 1}] * 3, dtype=object), True),
        ["Python objects", "unpickling", "refused"],
    ),
    "complex": (lambda name, shape: _npy(np.zeros(shape) + 1e6j), ["complex128", "real floating type"]),
    "integer": (lambda name, shape: _npy(np.zeros(shape, dtype=np.int64)), ["int64", "real floating type"]),
    "boolean": (lambda name, shape: _npy(np.zeros(shape, dtype=bool)), ["bool", "real floating type"]),
    "structured": (
        lambda name, shape: _npy(np.zeros(shape, dtype=[("re", "<f8"), ("im", "<f8")])),
        ["real floating type"],
    ),
    "wrong shape": (
        lambda name, shape: _npy(np.zeros(shape[:-1] + (shape[-1] + 1,))),
        ["has shape (1, 7, 15, 14)", "expected (1, 7, 15, 13)"],
    ),
    "huge header claim": (
        lambda name, shape: _claiming((10**7, 10**7)),
        ["has shape (10000000, 10000000)", "expected"],
    ),
    "truncated": (lambda name, shape: _npy(np.zeros(shape))[:-8], ["truncated or trailing data"]),
    "trailing data": (lambda name, shape: _npy(np.zeros(shape)) + b"\0" * 8, ["truncated or trailing data"]),
    "oversized": (
        lambda name, shape: _npy(np.zeros(shape)) + bytes(16 * math.prod(shape) + 10**6),
        ["more than any .npy of shape"],
    ),
    "garbage": (lambda name, shape: b"this is not a .npy file at all", ["not a readable .npy file"]),
    "format 3.0": (
        lambda name, shape: b"\x93NUMPY\x03\x00" + _npy(np.zeros(shape))[8:],
        ["not a readable .npy file", "format version (3, 0)"],
    ),
    "nested header": (
        lambda name, shape: b"\x93NUMPY\x01\x00" + (4000).to_bytes(2, "little") + b"(" * 3999 + b"\n",
        ["not a readable .npy file"],
    ),
}


def prepare(folder, make, forward_only=False):
    """Write ``make(name, shape)`` for every output of the SMALL case into ``folder``."""
    meta, arrays = golden_case(SMALL)
    shapes = neocell_outputs(meta["specs_as_written"], arrays["x"].shape, forward_only)
    for name, shape in shapes.items():
        data = make(name, shape)
        if data is not None:
            (folder / f"{name}.npy").write_bytes(data)
    return folder


@pytest.mark.parametrize("label", sorted(BAD_OUTPUTS))
def test_bad_outputs_fail_the_case(port, tmp_path, label):
    make, words = BAD_OUTPUTS[label]
    with pytest.raises(PortFailure) as excinfo:
        run_small(port("copy", prepare(tmp_path, make)))
    assert_port_failure(excinfo, *words, stderr="wrote copy outputs")


def test_prepared_outputs_pass_when_correct(port, tmp_path):
    """The copying port itself is sound: with the expected arrays prepared, the case passes."""
    meta, arrays = golden_case(SMALL)
    got = run_small(port("copy", prepare(tmp_path, lambda name, shape: _npy(arrays[name]))))
    bad = failures(SMALL, got, meta, arrays)
    assert bad == [], f"copying port with the expected arrays fails {SMALL}: {bad}"


def _expected_files(tmp_path):
    _, arrays = golden_case(SMALL)
    return prepare(tmp_path, lambda name, shape: _npy(arrays[name]))


def test_symlinked_output_is_refused(port, tmp_path):
    with pytest.raises(PortFailure) as excinfo:  # links to files holding the right answers
        run_small(port("symlink", _expected_files(tmp_path)))
    assert_port_failure(excinfo, "symbolic link", stderr="wrote symlink outputs")


@pytest.mark.parametrize("mode", ["fifo", "directory"])
def test_non_regular_output_is_refused_without_blocking(port, mode):
    with pytest.raises(PortFailure) as excinfo:
        run_small(port(mode))
    assert_port_failure(excinfo, "not a regular file", stderr=f"wrote {mode} outputs")


def test_replaced_output_folder_is_refused(port, tmp_path):
    elsewhere = _expected_files(tmp_path)
    with pytest.raises(PortFailure) as excinfo:
        run_small(port("replace_out", elsewhere))
    assert_port_failure(excinfo, "output folder was removed or replaced", stderr="wrote replace_out outputs")
    assert (elsewhere / "y.npy").is_file(), "the runner removed files outside its own folder"


def test_pickled_output_is_never_unpickled(port, monkeypatch, tmp_path):
    """Loading with pickle enabled would call pickle.loads: make that fail loudly."""
    import pickle

    def forbidden(*args, **kwargs):  # pragma: no cover - reached only if the runner unpickles
        raise AssertionError("the runner unpickled a port's output")

    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    with pytest.raises(PortFailure, match="Python objects"):
        run_small(port("copy", prepare(tmp_path, BAD_OUTPUTS["pickled"][0])))


# --------------------------------------------------------------------------------------
# unusable commands and arguments
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "command, words",
    [
        ("", "empty"),
        ("   ", "empty"),
        ("cat {in}", "no {out} placeholder"),
        ("cat {out}", "no {in} placeholder"),
        ("'unclosed {in} {out}", "cannot be split"),
        ("/nonexistent/port {in} {out}", "not an executable file"),
        ("no-such-program-h7 {in} {out}", "not an executable file"),
        ("{in} {out}", "program itself cannot be a placeholder"),
        (42, "string or a list"),
    ],
)
def test_unusable_commands_are_refused(command, words):
    with pytest.raises(ExecCommandError) as excinfo:
        check_command(command)
    assert words in str(excinfo.value), str(excinfo.value)
    assert isinstance(excinfo.value, ValueError), f"{type(excinfo.value).__mro__} has no ValueError"


def test_command_is_split_without_a_shell(tmp_path):
    """Shell syntax reaches the program as plain arguments: nothing is interpreted."""
    marker = tmp_path / "should-not-exist"
    argv = check_command(f"{sys.executable} -c 'import sys' {{in}} {{out}} ; touch {marker}")
    assert argv[-3:] == [";", "touch", str(marker)], f"argv ends {argv[-3:]}, expected [';', 'touch', {str(marker)!r}]"
    with pytest.raises(PortFailure):  # the program runs, writes nothing: missing y
        run_small(argv)
    assert not marker.exists(), "a shell interpreted the command"


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), float("nan"), "5", True])
def test_bad_timeout_is_refused(port, timeout):
    with pytest.raises(ValueError, match="timeout"):
        run_small(port("correct"), timeout=timeout)


@pytest.mark.parametrize("name", ["../escape", "state/stages.0.weight", "", "a.b", "1x", None])
def test_member_names_that_are_not_file_names_are_refused(name):
    with pytest.raises(ValueError, match="member name"):
        file_name(name)


def test_run_exec_argument_checks(port):
    x = np.zeros((1, 1, 2, 2))
    with pytest.raises(ValueError, match="at least one output"):
        run_exec(port("correct"), op="neocell", case="c", inputs={"x": x}, outputs={})
    with pytest.raises(ValueError, match="written by the runner"):
        run_exec(port("correct"), op="neocell", case="c", inputs={"x": x}, outputs={"y": (1,)}, fields={"outputs": {}})
    with pytest.raises(TypeError, match="real floating"):
        run_exec(port("correct"), op="neocell", case="c", inputs={"x": x.astype(complex)}, outputs={"y": (1,)})
    with pytest.raises(ValueError, match="non-negative integers"):
        run_exec(port("correct"), op="neocell", case="c", inputs={"x": x}, outputs={"y": (-1,)})
    with pytest.raises(ValueError, match="supports operations"):
        run_golden_case(port("correct"), "model", "c", {}, {})
