"""The reference C port (examples/c_port) verified through the exec protocol.

The port is built once per session with the system C compiler and ``make`` (the
flags of its Makefile: C99, every warning an error), then checked

* on every case of the float64 and float32 core golden sets (made in memory, as the
  conformance kit makes them), all outputs of a case from one run, and forward-only;
* through the golden calling conventions (``ExecPort``) by the conformance kit,
  curated cases plus drawn ones;
* on the official conformance cases (outputs of the authors' implementation) with
  SPEC section 9's threshold;
* on refused input: it must exit with status 2 and say what it refused;
* as copies with one planted bug each (textual mutations of ``neocell.c``), which must fail;
* built with AddressSanitizer and UndefinedBehaviorSanitizer, on valid and refused input.

Without ``cc`` or ``make`` the tests skip with the reason; under ``CI`` they fail.
Planted bugs are caught by the same runner and comparison (tests/verify/test_exec_port.py).
"""

import json
import shutil
import subprocess

import numpy as np
import pytest
from support.official_neocell import ARRAYS as OFFICIAL_ARRAYS
from support.official_neocell import CASES as OFFICIAL_CASES
from support.official_neocell import TOLERANCE as OFFICIAL_TOLERANCE
from support.official_neocell import official_inputs
from support.ports import SANITIZE, SOURCE, build_c_port, unavailable

from neocell_ref.spec import parse_specs
from neocell_ref.verify.exec_port import (
    ExecPort,
    PortFailure,
    neocell_outputs,
    run_exec,
    run_golden_case,
)
from neocell_ref.verify.golden import compare_arrays
from neocell_ref.verify.golden_ops import OPERATIONS
from neocell_ref.verify.testing import assert_neocell_matches
from neocell_ref.verify.tolerances import relative_error


@pytest.fixture(scope="module")
def c_port(tmp_path_factory):
    """Path of the C port, built out of tree with the Makefile's flags."""
    binary, code, output = build_c_port(tmp_path_factory.mktemp("c_port"))
    assert code == 0, f"make failed:\n{output}"
    assert "warning" not in output.lower(), f"the build printed warnings:\n{output}"
    return binary


@pytest.fixture(scope="module")
def sanitized_port(tmp_path_factory):
    """The C port built with AddressSanitizer and UndefinedBehaviorSanitizer."""
    folder = tmp_path_factory.mktemp("c_port_asan")
    if shutil.which("cc"):
        probe = folder / "probe.c"
        probe.write_text("int main(void) { return 0; }\n")
        result = subprocess.run(
            ["cc", *SANITIZE.split(), str(probe), "-o", str(folder / "probe")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            unavailable(f"the C compiler cannot build with sanitizers: {result.stderr.strip()}")
    binary, code, output = build_c_port(folder, SANITIZE)
    assert code == 0, f"make with sanitizers failed:\n{output}"
    return binary


def command(binary):
    return f"{binary} {{in}} {{out}}"


def golden_cases(dtype):
    """Every curated core NeoCell case: ``(name, meta with inputs and tolerances, arrays)``."""
    op = OPERATIONS["neocell"]
    for index, (name, spec, shape) in enumerate(op.cases("core")):
        meta, arrays, inputs, tolerances = op.make(name, spec, shape, dtype, np.random.default_rng([0, index]))
        yield name, {**meta, "inputs": inputs, "tolerances": tolerances}, arrays


def golden_failures(binary, dtype, forward_only=False):
    """Failed comparisons of the port on every core case (all outputs of a case from one run)."""
    failed, checked = [], 0
    for name, meta, arrays in golden_cases(dtype):
        got = run_golden_case(command(binary), "neocell", name, meta, arrays, forward_only=forward_only)
        expected_names = [k for k in meta["tolerances"] if not forward_only or not k.startswith("grad")]
        assert sorted(got) == sorted(expected_names), f"{name}: outputs {sorted(got)}"
        for key, value in got.items():
            tol = meta["tolerances"][key]
            result = compare_arrays(
                name, key, value, arrays[key], rtol=tol["rtol"], atol=tol["atol"], bound=arrays[tol["bound"]]
            )
            checked += 1
            if not result.passed:
                failed.append(result.describe())
    return failed, checked


@pytest.mark.parametrize("forward_only", [False, True], ids=["full", "forward_only"])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_core_golden_set(c_port, dtype, forward_only):
    failed, checked = golden_failures(c_port, dtype, forward_only)
    assert checked >= 15, f"only {checked} arrays were compared"
    assert not failed, "the C port differs from the reference:\n" + "\n".join(failed)


def test_full_suite_stage_shapes(c_port):
    """The NeoNeXt-T stage shapes of the "full" suite (float32), all outputs of each from one run."""
    from neocell_ref.verify.golden_ops import NEOCELL_CASES_FULL

    op, failed = OPERATIONS["neocell"], []
    for index, (name, spec, shape) in enumerate(NEOCELL_CASES_FULL):
        meta, arrays, inputs, tolerances = op.make(
            name, spec, shape, np.dtype("float32"), np.random.default_rng([1, index])
        )
        meta = {**meta, "inputs": inputs, "tolerances": tolerances}
        got = run_golden_case(command(c_port), "neocell", name, meta, arrays)
        for key, value in got.items():
            tol = tolerances[key]
            result = compare_arrays(name, key, value, arrays[key], rtol=tol["rtol"], bound=arrays[tol["bound"]])
            if not result.passed:
                failed.append(result.describe())
    assert not failed, "\n".join(failed)


def test_conformance_kit_through_exec_port(c_port):
    """The kit's curated cases and drawn cases (every spec form), via the golden calling conventions."""
    port = ExecPort(command(c_port))
    assert_neocell_matches(port.forward, port.backward, dtype=np.float32, max_examples=20)
    assert port.runs > 2 * 15, f"only {port.runs} runs: no drawn case was run"


@pytest.mark.parametrize("case", OFFICIAL_CASES, ids=[c["name"] for c in OFFICIAL_CASES])
def test_official_conformance_cases(c_port, case):
    """The authors' implementation's outputs, within SPEC section 9's relative error."""
    specs, x, wa, wb, gy = official_inputs(case)
    inputs = {"x": x, "grad_y": gy}
    inputs.update({f"weight_a_{g}": w for g, w in enumerate(wa)})
    inputs.update({f"weight_b_{g}": w for g, w in enumerate(wb)})
    outputs = neocell_outputs(specs, x.shape)
    got = run_exec(
        command(c_port), op="neocell", case=case["name"], inputs=inputs, outputs=outputs, fields={"specs": specs}
    )
    assert sorted(got) == sorted(outputs), f"{case['name']}: C port wrote {sorted(got)}, expected {sorted(outputs)}"
    for key, value in got.items():
        err = relative_error(value, OFFICIAL_ARRAYS[f"{case['name']}/{key}"])
        assert err <= OFFICIAL_TOLERANCE, f"{case['name']}: {key}: relative error {err:.3e} > {OFFICIAL_TOLERANCE}"


# --------------------------------------------------------------------------------------
# tests of the tests: C builds with one planted bug fail
# --------------------------------------------------------------------------------------
#: Textual mutations of neocell.c, each a porting mistake: ``{id: (original, mutant)}``.
C_MUTANTS = {
    "shift-and-corner-ignored": (
        "a.front_in = shift > 0 ? k_in - shift : 0;\n    a.front_out = shift > 0 ? k_out - shift : 0;",
        "a.front_in = 0;\n    a.front_out = 0;",
    ),
    "subgroup-split-rounded-up": (
        "long long size = channels / n_sub;",
        "long long size = (channels + n_sub - 1) / n_sub;",
    ),
    "output-size-rounded-up": ("return length * k_out / k_in;", "return (length * k_out + k_in - 1) / k_in;"),
    "last-partial-tile-dropped": (
        "a.tiles = (len + a.front_in + k_in - 1) / k_in;",
        "a.tiles = (len + a.front_in) / k_in;",
    ),
    "kernel-gradient-not-accumulated": ("gb[q * w_out + w] += sum;", "gb[q * w_out + w] = sum;"),
}


@pytest.mark.parametrize("mutant", sorted(C_MUTANTS))
def test_c_mutant_is_caught(c_port, tmp_path, mutant):
    """A copy of the port with one planted bug fails the float64 core set (c_port: tools are there)."""
    original, replacement = C_MUTANTS[mutant]
    source = tmp_path / "src"
    shutil.copytree(SOURCE, source, ignore=shutil.ignore_patterns("neocell_port"))
    text = (source / "neocell.c").read_text()
    assert text.count(original) == 1, f"{mutant}: the code to mutate is no longer in neocell.c"
    (source / "neocell.c").write_text(text.replace(original, replacement))
    binary = tmp_path / "neocell_port"
    result = subprocess.run(
        ["make", "-C", str(source), f"OUT={binary}", "CFLAGS=-std=c99 -O0"], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        failed, _ = golden_failures(binary, "float64")
    except PortFailure as exc:  # e.g. a wrong output size: the port refuses the case's shapes
        failed = [str(exc)]
    assert failed, f"the {mutant} mutant of the C port passed the float64 core set"


# --------------------------------------------------------------------------------------
# refused input: exit status 2 and a message, nothing written
# --------------------------------------------------------------------------------------
SPECS = [{"kernel": 3, "channels": 2, "shift": 1}, {"kernel_a": 2, "kernel_b": 4, "channels": 1}]


def write_case(folder, specs=SPECS, x_shape=(1, 3, 4, 8), case_edit=None, arrays_edit=None):
    """A valid forward-only case folder ``folder/in`` (and empty ``folder/out``), then edits."""
    rng = np.random.default_rng(5)
    specs = json.loads(json.dumps(specs))  # edits must not reach the shared SPECS
    inputs = {"x": rng.standard_normal(x_shape)}
    for g, group in enumerate(parse_specs(specs)):
        inputs[f"weight_a_{g}"] = rng.standard_normal(group.shape_a)
        inputs[f"weight_b_{g}"] = rng.standard_normal(group.shape_b)
    case = {
        "protocol": 1,
        "op": "neocell",
        "case": "hostile",
        "dtype": "float64",
        "specs": specs,
        "inputs": sorted(inputs),
        "outputs": {"y": list(x_shape)},
    }
    if case_edit:
        case_edit(case)
    if arrays_edit:
        arrays_edit(inputs)
    (folder / "in").mkdir()
    (folder / "out").mkdir()
    for name, value in inputs.items():
        if isinstance(value, bytes):
            (folder / "in" / f"{name}.npy").write_bytes(value)
        else:
            np.save(folder / "in" / f"{name}.npy", value, allow_pickle=value.dtype.hasobject)
    text = case if isinstance(case, str) else json.dumps(case)
    (folder / "in" / "case.json").write_text(text)
    return folder / "in", folder / "out"


def test_every_finite_float16_is_read_exactly(c_port, tmp_path):
    """The '<f2' reader against NumPy's float16 on all 63488 finite bit patterns
    (subnormals, zeros, the largest): a 1x1 NeoCell with unit kernels is y = x."""
    bits = np.arange(2**16, dtype=np.uint16)
    values = bits.view(np.float16)
    values = values[np.isfinite(values)].reshape(1, 1, 248, 256)

    def edit(inputs):
        inputs.update(x=values, weight_a_0=np.ones((1, 1, 1)), weight_b_0=np.ones((1, 1, 1)))

    specs = [{"kernel": 1, "channels": 1}]
    in_dir, out_dir = write_case(tmp_path, specs, values.shape, _set("outputs", {"y": list(values.shape)}), edit)
    result = run_port(c_port, in_dir, out_dir)
    assert result.returncode == 0, result.stderr
    y = np.load(out_dir / "y.npy", allow_pickle=False)
    same = y == values.astype(np.float64)  # -0 sums to +0 in y = 0 + 1*x*1, and equals it
    assert same.all(), (
        f"{np.count_nonzero(~same)} values differ, first at bits {bits[np.isfinite(bits.view(np.float16))][~same.ravel()][:5]}"
    )


def run_port(binary, in_dir, out_dir):
    return subprocess.run([str(binary), str(in_dir), str(out_dir)], capture_output=True, text=True, timeout=60)


def _set(key, value):
    return lambda d: d.__setitem__(key, value)


def _spec(key, value, group=0):
    return lambda d: d["specs"][group].__setitem__(key, value)


def _npy_bytes(array, header_edit=None):
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    data = buffer.getvalue()
    if header_edit:
        data = header_edit(data)
    return data


def _claim(shape):
    """A .npy header claiming ``shape`` of float64, followed by 64 bytes of data."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(64)


HOSTILE = {
    "unknown spec key": (dict(case_edit=_spec("kernal", 3)), 'unknown key "kernal"'),
    "two size forms": (dict(case_edit=_spec("kernel_a", 3)), "exactly one size form"),
    "kernel_a without kernel_b": (
        dict(case_edit=lambda d: d["specs"][1].pop("kernel_b")),
        "both kernel_a and kernel_b",
    ),
    "shift with shift_a": (dict(case_edit=_spec("shift_a", 1)), "both shift and shift_a"),
    "float in case.json": (dict(case_edit=_spec("channels", 1.5)), "only integers"),
    "boolean in case.json": (dict(case_edit=_spec("shift", True)), "true, false, null"),
    "negative channels": (dict(case_edit=_spec("channels", -2)), "out of range"),
    "shift as large as the kernel": (dict(case_edit=_spec("shift", 3)), "larger than the shift"),
    "largest used shift beyond the size": (
        dict(specs=[{"kernel": 7, "channels": 7, "shift": 3}], x_shape=(1, 7, 5, 9)),
        "exceeds the input height 5",
    ),
    "groups disagree on the output size": (
        dict(
            specs=[{"kernel": 2, "channels": 1}, {"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 1}],
            x_shape=(1, 2, 4, 4),
        ),
        "disagree on the output size",
    ),
    "channels do not add up": (dict(x_shape=(1, 4, 4, 8)), "channels sum to 3"),
    "unknown top-level key": (dict(case_edit=_set("extra", 1)), 'unknown key "extra"'),
    "protocol 2": (dict(case_edit=_set("protocol", 2)), "protocol 2 is not supported"),
    "another op": (dict(case_edit=_set("op", "gelu")), 'op "gelu" is not supported'),
    "wrong output shape": (dict(case_edit=_set("outputs", {"y": [1, 3, 4, 9]})), "not the shape this port computes"),
    "gradients without grad_y": (
        dict(case_edit=lambda d: d["outputs"].update(grad_x=[1, 3, 4, 8])),
        '"outputs" must be exactly',
    ),
    "missing input": (dict(arrays_edit=lambda a: a.pop("weight_b_1")), "weight_b_1.npy: cannot open"),
    "deep nesting": (dict(case_edit=_set("specs", json.loads("[" * 40 + "]" * 40))), "nesting too deep"),
    "repeated key": (dict(case_edit=lambda d: None), None),  # replaced below by raw text
    "big-endian input": (
        dict(arrays_edit=lambda a: a.__setitem__("x", a["x"].astype(">f8"))),
        "'>f8' is not supported",
    ),
    "integer input": (
        dict(arrays_edit=lambda a: a.__setitem__("x", a["x"].astype(np.int64))),
        "'<i8' is not supported",
    ),
    "complex input": (
        dict(arrays_edit=lambda a: a.__setitem__("x", a["x"].astype(complex))),
        "'<c16' is not supported",
    ),
    "Fortran-order input": (dict(arrays_edit=lambda a: a.__setitem__("x", np.asfortranarray(a["x"]))), "Fortran order"),
    "pickled input": (
        dict(arrays_edit=lambda a: a.__setitem__("x", np.array([{}, {}], dtype=object))),
        "'|O' is not supported",
    ),
    "wrong weight shape": (dict(arrays_edit=lambda a: a.__setitem__("weight_a_0", np.zeros((2, 3, 2)))), "wrong shape"),
    "truncated input": (dict(arrays_edit=lambda a: a.__setitem__("x", _npy_bytes(a["x"])[:-3])), "truncated data"),
    "trailing data": (dict(arrays_edit=lambda a: a.__setitem__("x", _npy_bytes(a["x"]) + b"\0")), "trailing data"),
    "huge shape claim": (
        dict(arrays_edit=lambda a: a.__setitem__("x", _claim((10**7, 10**7, 10**7)))),
        "too many elements",
    ),
    "size claim beyond the file": (
        dict(arrays_edit=lambda a: a.__setitem__("x", _claim((1, 3, 4, 10**9)))),
        "truncated data",
    ),
    "not a .npy": (dict(arrays_edit=lambda a: a.__setitem__("x", b"hello")), "not a .npy file"),
}


def _hostile_case(tmp_path, label):
    kwargs, words = HOSTILE[label]
    if label == "repeated key":
        in_dir, out_dir = write_case(tmp_path)
        text = (in_dir / "case.json").read_text()
        (in_dir / "case.json").write_text(text.replace('"protocol": 1', '"protocol": 1, "protocol": 1'))
        return in_dir, out_dir, "repeated object key"
    in_dir, out_dir = write_case(tmp_path, **kwargs)
    return in_dir, out_dir, words


def test_hostile_case_starts_from_a_valid_one(c_port, tmp_path):
    """The unedited case folder is accepted: each refusal below is due to its edit."""
    in_dir, out_dir = write_case(tmp_path)
    result = run_port(c_port, in_dir, out_dir)
    assert result.returncode == 0, result.stderr
    written = [p.name for p in out_dir.iterdir()]
    assert written == ["y.npy"], f"the valid case wrote {written}, expected ['y.npy']"


@pytest.mark.parametrize("label", sorted(HOSTILE))
def test_refused_input_exits_2_with_a_message(c_port, tmp_path, label):
    in_dir, out_dir, words = _hostile_case(tmp_path, label)
    result = run_port(c_port, in_dir, out_dir)
    assert result.returncode == 2, f"{label}: exit {result.returncode}, stderr {result.stderr!r}"
    assert result.stderr.startswith("neocell_port: error: ") and words in result.stderr, (
        f"{label}: expected {words!r} in stderr, got {result.stderr!r}"
    )
    assert list(out_dir.iterdir()) == [], f"{label}: the port wrote outputs although it refused the input"


def test_sanitized_build_on_valid_and_refused_input(sanitized_port, tmp_path):
    """No memory error or undefined behaviour on the float32 core set and on every refused input."""
    failed, _ = golden_failures(sanitized_port, "float32")
    assert not failed, "\n".join(failed)
    for index, label in enumerate(sorted(HOSTILE)):
        folder = tmp_path / str(index)
        folder.mkdir()
        in_dir, out_dir, words = _hostile_case(folder, label)
        result = run_port(sanitized_port, in_dir, out_dir)
        assert result.returncode == 2 and words in result.stderr, f"{label}: {result.returncode} {result.stderr!r}"
