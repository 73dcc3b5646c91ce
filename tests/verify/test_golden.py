"""The golden verifier (:mod:`neocell_ref.verify.golden`): export, verify, and hostile input.

Three parts, in this order:

1. Hostile input for the golden verifier and the conformance kit (issue 9, sections
   1-3). Every reproducer of a verdict that could be fooled is a test here, asserting
   the exact behaviour: the error type and the words naming the field, or the exit
   status of ``neocell-ref golden`` (2 with one line on stderr, never a traceback).
   Each integrity check has a test-of-the-test: the tampering it exists to catch is
   caught, and the untampered copy of the same set passes.
2. Golden vectors: determinism, manifest integrity, the reference passing its own set,
   and realistic porting bugs (``support.mutant_ports``) being caught.
3. ``neocell-ref golden verify --exec``: ports that are programs, verified through the
   command line (the exec runner itself is tested in tests/verify/test_exec_port.py).

The curated cases themselves are tested in tests/verify/test_golden_ops.py, the
tolerance rule and the case seeding in tests/verify/test_tolerances.py.
"""

import hashlib
import io
import json
import os
import shutil
import warnings
import zipfile

import numpy as np
import pytest
from support import mutant_ports
from support.hostile import raises_naming

import neocell_ref as nr
from neocell_ref import cli, layers
from neocell_ref.verify import golden as golden_module
from neocell_ref.verify.golden import (
    FORMAT_VERSION,
    MAX_MANIFEST_BYTES,
    MAX_RTOL_SCALE,
    GoldenError,
    compare_arrays,
    derive_manifest,
    export_golden,
    load_case,
    load_manifest,
    run_and_compare,
    set_digest,
    verify_golden,
)
from neocell_ref.verify.golden_ops import NEOCELL_CASES_CORE, OPERATIONS, make_case
from neocell_ref.verify.testing import (
    NeoCellCase,
    assert_layer_matches,
    assert_neocell_matches,
    check_neocell_case,
)
from neocell_ref.verify.tolerances import DEFAULT_SEED

FORWARD = ["--forward", "support.mutant_ports:correct_forward"]
VICTIM = "k7_square_14x14"  # the case most tampering tests edit


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A NeoCell-only float64 core set, exported once; tests tamper with copies of it."""
    directory = tmp_path_factory.mktemp("hostile") / "base"
    export_golden(directory, operations=["neocell"])
    return directory


@pytest.fixture
def golden(base, tmp_path):
    """A fresh copy of the base set."""
    directory = tmp_path / "set"
    shutil.copytree(base, directory)
    return directory


def read_manifest(directory):
    return json.loads((directory / "manifest.json").read_text())


def write_manifest(directory, manifest):
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


def edit_manifest(directory, edit):
    manifest = read_manifest(directory)
    edit(manifest)
    write_manifest(directory, manifest)


def case_of(manifest, name=VICTIM):
    return next(c for c in manifest["cases"] if c["name"] == name)


def rewrite_case_file(directory, data, name=VICTIM):
    """Replace a case file by ``data`` and record its new hash (a "careful" tamperer)."""
    manifest = read_manifest(directory)
    case = case_of(manifest, name)
    (directory / case["file"]).write_bytes(data)
    case["sha256"] = hashlib.sha256(data).hexdigest()
    write_manifest(directory, manifest)


def npz(members):
    """A stored zip of ``{member name: bytes}``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def npy(array):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.asarray(array), allow_pickle=True)
    return buffer.getvalue()


def victim_members(directory):
    """The victim's members as ``{name.npy: bytes}``."""
    case = case_of(read_manifest(directory))
    with zipfile.ZipFile(directory / case["file"]) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


def run(capsys, *argv):
    """``neocell-ref golden ...`` in process: (exit status, stdout, stderr)."""
    code = cli.main(["golden", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def verify_cli(capsys, directory, *extra, port=FORWARD):
    return run(capsys, "verify", str(directory), "--op", "neocell", *port, *extra)


def assert_unusable(code, out, err, *words):
    """Exit 2, nothing on stdout, one line on stderr naming ``words``."""
    assert code == 2, (code, out, err)
    assert out == "", f"nothing may be reported as run: {out!r}"
    assert err.startswith("neocell-ref: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err, f"traceback on stderr: {err!r}"
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"


# ==================================================================================== 1
# Only a real result counts
# ==================================================================================== 1
@pytest.mark.parametrize(
    "got, words",
    [
        (np.ones((2, 3)) + 1e6j, "complex"),
        (np.ones((2, 3)) + 0j, "complex"),  # even with a zero imaginary part: not a real result
        (np.ones((2, 3), dtype=object), "Python objects"),
        (np.ones((2, 3), dtype=bool), "booleans"),
        (np.full((2, 3), "1.0"), "strings"),
        (np.ones((2, 3), dtype=np.int64), "integers"),
        (np.ones((2, 3), dtype=np.uint8), "unsigned integers"),
        ([[1.0, 1.0, 1.0], [1.0, 1.0]], "not an array"),  # ragged
        ("1.0", "not an array"),
        (np.ones((3, 2)), "shape (3, 2), expected (2, 3)"),
        (np.ones((1, 2, 3)), "shape (1, 2, 3)"),
        (1.0, "shape ()"),
    ],
)
def test_only_a_real_floating_array_of_the_expected_shape_counts(got, words):
    result = compare_arrays("case", "y", got, np.ones((2, 3)), rtol=1.0, atol=1.0)
    assert not result.passed and words in result.message, result.describe()
    assert result.describe().startswith("case: y: "), (
        f"description does not start with 'case: y: ': {result.describe()!r}"
    )


def test_real_floating_results_of_any_precision_still_pass():
    expected = np.linspace(-1, 1, 6).reshape(2, 3)
    for got in (expected, expected.astype(np.float32), expected.tolist()):
        result = compare_arrays("c", "y", got, expected, rtol=1e-6)
        assert result.passed, f"got as {type(got).__name__} of {np.asarray(got).dtype}: {result.describe()}"


def test_an_output_whose_conversion_exits_fails_that_array():
    class Exits:
        def __array__(self, dtype=None, copy=None):
            raise SystemExit(0)

    result = compare_arrays("c", "y", Exits(), np.ones(2), rtol=1.0)
    assert not result.passed and "SystemExit" in result.message, result.describe()


def test_complex_port_fails_golden_verify(golden, capsys):
    code, out, err = verify_cli(capsys, golden, port=["--forward", "support.mutant_ports:complex_forward"])
    assert code == 1, (out, err)
    assert f"FAILED (0/{len(NEOCELL_CASES_CORE)} arrays pass" in out and "complex" in out, (
        f"expected every array to fail as complex; stdout:\n{out}"
    )


def test_port_calling_sys_exit_fails_each_case_and_the_run_goes_on(golden, capsys):
    code, out, err = verify_cli(
        capsys,
        golden,
        "--backward",
        "support.mutant_ports:correct_backward",
        port=["--forward", "support.mutant_ports:exit_forward"],
    )
    assert code == 1, (out, err)
    failures = [line for line in out.splitlines() if line.startswith("  FAIL ")]
    assert len(failures) == len(NEOCELL_CASES_CORE), out
    assert all("port's forward raised SystemExit: 0" in line for line in failures), (
        f"rows without the SystemExit message: {[line for line in failures if 'raised SystemExit: 0' not in line]}"
    )
    # the backward still ran on every case and passed
    assert out.count(" grad_x ") == len(NEOCELL_CASES_CORE) and " ok " in out, (
        f"{out.count(' grad_x ')} grad_x rows for {len(NEOCELL_CASES_CORE)} cases, "
        f"' ok ' in stdout: {' ok ' in out}:\n{out}"
    )


def test_a_port_writing_into_its_inputs_changes_nothing_else(golden):
    """Every call gets fresh copies: the correct answers of a port that zeroes its
    inputs afterwards still pass, forward and backward, on every case."""
    report = verify_golden(golden, "neocell", mutant_ports.scribbling_forward, mutant_ports.scribbling_backward)
    assert report.passed and report.cases_run == len(NEOCELL_CASES_CORE), report.table()


def test_outputs_are_taken_when_each_call_returns(golden):
    """A port that returns a buffer it keeps and writes again later: a wrong forward
    (zeros) is not hidden by a backward that writes the right ``y`` into the same
    buffer, and a right port returning ``y`` and ``grad_x`` in one buffer passes."""
    report = verify_golden(golden, "neocell", mutant_ports.zero_kept_forward, mutant_ports.fixing_kept_backward)
    failing = {(r.case, r.array) for r in report.failures}
    assert failing == {(name, "y") for name, *_ in NEOCELL_CASES_CORE}, report.table()
    report = verify_golden(golden, "neocell", mutant_ports.right_kept_forward, mutant_ports.right_kept_backward)
    assert report.passed and report.cases_run == len(NEOCELL_CASES_CORE), report.table()


def test_extra_weight_gradients_fail_the_case(golden):
    report = verify_golden(golden, "neocell", None, mutant_ports.extra_grads_backward)
    assert {r.case for r in report.failures} == {name for name, *_ in NEOCELL_CASES_CORE}, report.table()
    assert all("weight_a gradients for" in r.message for r in report.failures), report.table()


def test_an_unprintable_port_message_is_escaped_not_fatal(golden, capsys):
    """A lone surrogate or a carriage return in a port's exception is written as an
    escape: the report stays encodable (the run is status 1, not 2) and one line per row."""
    report = verify_golden(golden, "neocell", mutant_ports.unprintable_forward)
    table = report.table()
    table.encode("utf-8")  # strict: raises on a lone surrogate
    json.dumps(report.to_dict(), ensure_ascii=False).encode("utf-8")
    assert "\\udcff" in table and "\\rPASSED" in table and "\r" not in table, table
    code, out, err = verify_cli(capsys, golden, port=["--forward", "support.mutant_ports:unprintable_forward"])
    assert code == 1, (out, err)


def test_a_huge_error_over_a_tiny_allowance_fails_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = compare_arrays("c", "y", np.array([1e300]), np.array([1e-300]), rtol=1e-16)
    assert not result.passed and result.ratio == np.inf, result.describe()


def test_model_calls_get_their_own_config_and_outputs(golden64):
    """The inference and training forwards get separate configs (a port reversing
    ``dims`` in place cannot break the next call) and their logits are taken when each
    returns (one kept buffer for both modes passes)."""
    for forward in (mutant_ports.config_changing_model_forward, mutant_ports.kept_logits_model_forward):
        report = verify_golden(golden64, "model", forward)
        assert report.passed, f"{forward.__name__}:\n{report.table()}"


def test_a_model_gradient_for_an_unknown_parameter_fails_the_case(golden64):
    report = verify_golden(golden64, "model", None, mutant_ports.extra_grad_model_backward)
    assert report.cases_run and len({r.case for r in report.failures}) == report.cases_run, report.table()
    words = "names the model does not have: ['head.fc.weight_misnamed']"
    assert all(words in r.message for r in report.failures), report.table()
    report = verify_golden(golden64, "model", None, mutant_ports.model_backward)
    assert report.passed, report.table()
    # A port differentiating the whole state dict also returns entries for the buffers:
    # names the model has, so they are ignored and the port passes.
    report = verify_golden(golden64, "model", None, mutant_ports.buffer_grads_model_backward)
    assert report.passed, report.table()


def test_the_model_cannot_be_loosened_until_half_its_gradients_pass(golden32):
    """MAX_RTOL_SCALE is argued for sums of products; the model's tolerances are measured
    (1e-4 of the largest gradient in float32), and 8192 times that would pass a backward
    that averages the loss it should sum (every gradient halved). Refused; at the stored
    tolerances that port fails."""
    with pytest.raises(ValueError, match="off by a factor of 2"):
        verify_golden(golden32, "model", None, mutant_ports.half_grads_model_backward, rtol_scale=MAX_RTOL_SCALE)
    report = verify_golden(golden32, "model", None, mutant_ports.half_grads_model_backward)
    assert not report.passed, f"a backward halving every gradient passed at the stored tolerances:\n{report.table()}"


def test_an_exception_whose_message_exits_fails_the_case(golden):
    report = verify_golden(golden, "neocell", mutant_ports.exiting_message_forward)
    assert not report.passed and len(report.failures) == len(NEOCELL_CASES_CORE), report.table()
    assert all("message not printable" in r.message for r in report.failures), report.table()


def test_keyboard_interrupt_aborts(golden, capsys):
    with pytest.raises(KeyboardInterrupt):
        verify_golden(golden, "neocell", mutant_ports.interrupt_forward)
    with pytest.raises(KeyboardInterrupt):
        assert_neocell_matches(mutant_ports.interrupt_forward, max_examples=0)
    code, out, err = verify_cli(capsys, golden, port=["--forward", "support.mutant_ports:interrupt_forward"])
    assert code == 2 and err == "neocell-ref: interrupted\n" and out == "", (
        f"exit status {code}, stdout {out!r}, stderr {err!r}"
    )


def test_exception_text_of_a_port_reaches_the_report(golden):
    """The hook for ports outside Python: a wrapper raising with the port's stderr tail."""
    report = verify_golden(golden, "neocell", mutant_ports.crash_log_forward)
    assert not report.passed, f"a crashing port passed:\n{report.table()}"
    message = report.failures[0].message
    assert message.startswith("port's forward raised RuntimeError: the port exited with status 1"), (
        f"message starts {message[:120]!r}"
    )
    assert message.endswith(mutant_ports.CRASH_LOG_LAST_LINE) and len(message) < 4100, (
        f"message of {len(message)} characters ends {message[-120:]!r}"
    )
    table = report.table()
    assert mutant_ports.CRASH_LOG_LAST_LINE in table, f"crash log's last line missing from the table:\n{table}"
    reloaded = json.loads(json.dumps(report.to_dict()))["results"][0]["message"]
    assert reloaded == message, f"message after a JSON round trip {reloaded[-120:]!r}, before {message[-120:]!r}"


def test_a_port_raising_in_one_direction_does_not_hide_the_other(golden):
    report = verify_golden(golden, "neocell", mutant_ports.exit_forward, mutant_ports.correct_backward)
    assert {r.array for r in report.failures} == {"(forward call)"}, (
        f"failing arrays {sorted({r.array for r in report.failures})}, expected only '(forward call)'"
    )
    assert report.results and any(r.passed for r in report.results), f"no backward row passed:\n{report.table()}"


# ---------------------------------------------------------------------- tolerance overrides
@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "0", "-1", "8193"])
def test_rtol_scale_out_of_bounds_is_exit_2(golden, capsys, value):
    code, out, err = verify_cli(
        capsys, golden, "--rtol-scale", value, port=["--forward", "support.mutant_ports:zero_forward"]
    )
    assert_unusable(code, out, err, "rtol_scale")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(rtol=float("inf")), ValueError, "rtol must be a finite real number"),
        (dict(rtol=0.0), ValueError, "rtol must be > 0"),
        (dict(rtol="1e-3"), TypeError, "rtol must be a real number"),
        (dict(atol=-1.0), ValueError, "atol must be >= 0"),
        (dict(atol=float("nan")), ValueError, "atol"),
        (dict(rtol_scale=float("inf")), ValueError, "rtol_scale"),
        (dict(rtol_scale=1e300), ValueError, "at most 8192"),
        (dict(rtol_scale=True), TypeError, "rtol_scale must be a real number"),
        (dict(rtol=1e-3), ValueError, "too loose"),  # finite, but far above 8192x the stored rtol
        (dict(atol=1.0), ValueError, "atol 1 exceeds"),
    ],
)
def test_tolerance_overrides_are_validated_everywhere(golden, kwargs, error, words):
    with pytest.raises(error, match=words):
        verify_golden(golden, "neocell", mutant_ports.zero_forward, **kwargs)
    with pytest.raises(error, match=words):
        assert_neocell_matches(mutant_ports.zero_forward, max_examples=0, **kwargs)
    with pytest.raises(error, match=words):
        assert_layer_matches("gelu", layers.gelu_forward, **kwargs)


def test_all_zero_port_fails_at_the_loosest_allowed_override(golden):
    report = verify_golden(golden, "neocell", mutant_ports.zero_forward, rtol_scale=MAX_RTOL_SCALE)
    assert not report.passed and len(report.failures) == len(NEOCELL_CASES_CORE), report.table()
    with pytest.raises(AssertionError):
        assert_neocell_matches(mutant_ports.zero_forward, rtol_scale=MAX_RTOL_SCALE, max_examples=0)


def _zero_weight_gradients_beyond_128(grad_y, x, weights_a, weights_b, specs):
    """Right ``grad_x``; every weight gradient zero on planes of more than 128 rows."""
    grad_x, grads_a, grads_b = mutant_ports.correct_backward(grad_y, x, weights_a, weights_b, specs)
    if x.shape[2] > 128:
        grads_a, grads_b = [np.zeros_like(g) for g in grads_a], [np.zeros_like(g) for g in grads_b]
    return grad_x, grads_a, grads_b


def test_the_override_guard_works_array_by_array(tmp_path, monkeypatch):
    """Found in a review: guarded only on the backward as a whole (half of grad_x still
    failed), --rtol-scale 4 let a bfloat16 port with all-zero weight gradients on the
    131x134 case pass. Array by array the override is refused; without the guard the
    same port passes, so the guard is what refuses it; at the stored tolerances it fails."""
    directory = tmp_path / "bf16"
    export_golden(directory, dtype="bfloat16", operations=["neocell"])
    only = {"exclude": {name: "not this case" for name, _, _ in NEOCELL_CASES_CORE if "131x134" not in name}}
    port = (mutant_ports.correct_forward, _zero_weight_gradients_beyond_128)
    with pytest.raises(
        ValueError, match=r"too loose for mixed_4p7_shift1_131x134: grad_weight_\w+ off by a factor of 2"
    ):
        verify_golden(directory, "neocell", *port, rtol_scale=4.0, **only)
    report = verify_golden(directory, "neocell", *port, **only)
    assert not report.passed, f"all-zero weight gradients passed at the stored tolerances:\n{report.table()}"
    monkeypatch.setattr(golden_module, "_check_loosening", lambda *args: None)
    report = verify_golden(directory, "neocell", *port, rtol_scale=4.0, **only)
    assert report.passed, (
        f"without the guard the port should pass at 4x (else this test proves nothing):\n{report.table()}"
    )


def test_loosening_is_printed_and_recorded(golden, capsys, tmp_path):
    report_file = tmp_path / "report.json"
    code, out, err = verify_cli(capsys, golden, "--rtol-scale", "4", "--json", str(report_file))
    assert code == 0, (out, err)
    header = out.splitlines()[:4]
    assert any("tolerances: LOOSENED by override: rtol_scale 4" in line for line in header), header
    report = json.loads(report_file.read_text())
    assert report["loosened"] is True and report["tolerance_overrides"]["rtol_scale"] == 4.0, (
        f"loosened {report['loosened']!r}, overrides {report['tolerance_overrides']}"
    )
    code, out, err = verify_cli(capsys, golden, "--rtol-scale", "0.5", "--json", str(report_file))
    assert code == 0, f"the reference failed its own set at half the tolerance: status {code}\n{out}{err}"
    assert "tightened (no array loosened)" in out, f"no 'tightened' tolerance line in stdout:\n{out}"
    report = json.loads(report_file.read_text())
    assert report["loosened"] is False, f"loosened {report['loosened']!r} at rtol_scale 0.5"
    code, out, err = verify_cli(capsys, golden, "--json", str(report_file))
    assert code == 0, f"the reference failed its own set: status {code}\n{out}{err}"
    assert "tolerances: as stored in the set" in out, f"no 'as stored' tolerance line in stdout:\n{out}"
    report = json.loads(report_file.read_text())
    assert report["tolerance_overrides"] == {"rtol": None, "atol": None, "rtol_scale": 1.0}, (
        f"tolerance_overrides {report['tolerance_overrides']} without overrides"
    )


# ---------------------------------------------------------------------- checking nothing
def test_verify_refuses_to_check_nothing(golden, capsys):
    code, out, err = verify_cli(capsys, golden, "--exclude", "*=nothing supported")
    assert_unusable(code, out, err, "every case of operation 'neocell' is excluded")
    code, out, err = verify_cli(capsys, golden, "--exclude", "k7_typo*=typo")
    assert_unusable(code, out, err, "'k7_typo*' matches no case")
    code, out, err = run(capsys, "verify", str(golden), "--op", "neocell")
    assert_unusable(code, out, err, "--forward and/or --backward")
    code, out, err = run(capsys, "verify", str(golden), "--op", "gelu", "--forward", "neocell_ref.layers:gelu_forward")
    assert_unusable(code, out, err, "no cases of operation 'gelu'")


# ==================================================================================== 2
# The manifest is verified as a whole
# ==================================================================================== 2
def test_untampered_copy_passes(golden, capsys):
    """The control of every tampering test below: the same copy, unedited, passes."""
    code, out, err = verify_cli(capsys, golden, "--backward", "support.mutant_ports:correct_backward")
    assert code == 0 and "PASSED" in out, (out, err)
    loaded, stored = load_manifest(golden), read_manifest(golden)
    assert loaded == stored, (
        "load_manifest differs from manifest.json in "
        f"{sorted(k for k in loaded.keys() | stored.keys() if loaded.get(k) != stored.get(k))}"
    )


def _raise_tolerances(manifest):
    for case in manifest["cases"]:
        for tol in case["tolerances"].values():
            tol["rtol"] = 1e300


def _delete_cases(manifest):
    manifest["cases"] = manifest["cases"][:1]


def _duplicate_case(manifest):
    manifest["cases"].append(dict(manifest["cases"][0]))


def _edit(field, value):
    def edit(manifest):
        case = case_of(manifest)
        *path, last = field
        for key in path:
            case = case[key]
        case[last] = value

    return edit


TAMPERING = {
    "every tolerance raised to 1e300": (_raise_tolerances, "tolerances.grad_weight_a_0.rtol is 1e+300"),
    "all cases but one deleted": (_delete_cases, f"1 cases instead of {len(NEOCELL_CASES_CORE)}"),
    "a case listed twice": (_duplicate_case, "listed twice"),
    "an array's shape edited": (_edit(("arrays", "y", "shape"), [2, 4, 14, 13]), "arrays.y.shape[3] is 13"),
    "an array's dtype edited": (_edit(("arrays", "x", "dtype"), "float32"), 'arrays.x.dtype is "float32"'),
    "x_shape edited": (_edit(("x_shape",), [2, 4, 7, 7]), "x_shape[2] is 7"),
    "specs edited": (_edit(("specs_as_written", 0, "kernel"), 5), "specs_as_written[0].kernel is 5"),
    "atol raised": (_edit(("tolerances", "y", "atol"), 1.0), "tolerances.y.atol is 1.0"),
    "accumulation length as a float": (
        _edit(("tolerances", "y", "accumulation_length"), 14.0),
        "accumulation_length is 14.0, expected 14",
    ),
    "a field added": (_edit(("note",), "trust me"), "note is not a field"),
    "file escaping with ..": (_edit(("file",), "../outside.npz"), "not a plain file name"),
    "absolute file path": (_edit(("file",), "/etc/passwd"), "not a plain file name"),
    "file renamed": (_edit(("file",), "other.npz"), 'file is "other.npz"'),
    "no file": (lambda m: case_of(m).pop("file"), "has no 'file'"),
    "no tolerances": (lambda m: case_of(m).pop("tolerances"), "tolerances is missing"),
    "seed changed": (lambda m: m.update(seed=1), "is not what this package draws for seed 1"),
    "suite bogus": (lambda m: m.update(suite="huge"), "suite must be 'core' or 'full'"),
    "seed negative": (lambda m: m.update(seed=-1), "seed must be an integer in [0, 2**63 - 1]"),
    "operations edited": (lambda m: m.update(operations=["neocell", "gelu"]), "case list differs"),
    "policy edited": (lambda m: m["tolerance_policy"].update(safety=1e6), "tolerance_policy.safety"),
    "sha256 malformed": (_edit(("sha256",), "0" * 63), "64 lowercase hex digits"),
}


@pytest.mark.parametrize("what", sorted(TAMPERING))
def test_tampered_manifest_is_refused(golden, capsys, what):
    edit, words = TAMPERING[what]
    edit_manifest(golden, edit)
    with pytest.raises(GoldenError) as info:
        verify_golden(golden, "neocell", mutant_ports.zero_forward)
    assert words in str(info.value), str(info.value)
    code, out, err = verify_cli(capsys, golden, port=["--forward", "support.mutant_ports:zero_forward"])
    assert_unusable(code, out, err, words, "manifest.json" if what != "seed changed" else VICTIM)


def test_edited_input_with_updated_hash_is_refused(golden, capsys):
    """Inputs are re-drawn and compared bit for bit, so an input edited with care (file
    hash updated) is caught."""
    members = victim_members(golden)
    with zipfile.ZipFile(io.BytesIO(npz(members))) as zf, zf.open("x.npy") as fh:
        x = np.lib.format.read_array(fh)
    x[0, 0, 0, 0] += 1.0
    members["x.npy"] = npy(x)
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), f"case '{VICTIM}' (neocell)", "input x is not what")


def _victim_array(golden, name):
    with zipfile.ZipFile(golden / case_of(read_manifest(golden))["file"]) as zf, zf.open(f"{name}.npy") as fh:
        return np.lib.format.read_array(fh)


def _edit_member(golden, name, edit):
    """Apply ``edit`` to one array of the victim and store it with the hash updated."""
    members = victim_members(golden)
    array = _victim_array(golden, name)
    edit(array)
    members[f"{name}.npy"] = npy(array)
    rewrite_case_file(golden, npz(members))


def _allowed_y(golden):
    """The allowed error of the victim's y, elementwise: stored rtol x stored bound."""
    return case_of(read_manifest(golden))["tolerances"]["y"]["rtol"] * _victim_array(golden, "bound/y")


@pytest.mark.parametrize(
    "name, edit, words",
    [
        # a bound 1000x wider would loosen every tolerance of y 1000-fold
        ("bound/y", lambda a, allowed: a.__imul__(1000.0), "bound/y[0, 0, 0, 0] is"),
        # one answer moved by 4x its allowed error: a port matching the edit would pass
        (
            "y",
            lambda a, allowed: a.__setitem__((0, 0, 1, 2), a[0, 0, 1, 2] + 4 * allowed[0, 0, 1, 2]),
            "y[0, 0, 1, 2] is",
        ),
        ("grad_x", lambda a, allowed: a.__setitem__((0, 0, 0, 0), 0.0), "grad_x[0, 0, 0, 0] is"),
    ],
)
def test_edited_answer_or_bound_with_updated_hash_is_refused(golden, capsys, name, edit, words):
    """Expected values and bounds are recomputed and must agree within half their
    allowed error (a bound within a relative 2**-30), so an edit with the file hash
    updated is refused even without the --digest pin."""
    allowed = _allowed_y(golden)
    _edit_member(golden, name, lambda a: edit(a, allowed))
    assert_unusable(*verify_cli(capsys, golden), f"case '{VICTIM}' (neocell)", words, "the stored answers were edited")


def test_answers_within_half_their_allowance_are_machine_differences(golden, capsys):
    """Another machine's last bits are accepted: every y moved by a quarter of its allowed error."""
    allowed = _allowed_y(golden)
    _edit_member(golden, "y", lambda a: a.__iadd__(0.25 * allowed))
    code, out, err = verify_cli(capsys, golden)
    assert code == 0, (out, err)


def test_other_format_versions_get_a_clear_message(golden, capsys):
    edit_manifest(golden, lambda m: m.update(format_version=1))
    code, out, err = verify_cli(capsys, golden)
    assert_unusable(code, out, err, "format_version 1", f"reads format {FORMAT_VERSION} only", "export the set again")
    edit_manifest(golden, lambda m: m.pop("format_version"))
    assert_unusable(*verify_cli(capsys, golden), "format_version null")


@pytest.mark.parametrize(
    "text, words",
    [
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{not json", "not valid JSON"),
        ('{"a": NaN}', "not valid JSON"),
        ('{"a": 1, "a": 2}', "appears twice"),
        ("[]", "top level is a list"),
        ('{"format_version": ' + "9" * 5000 + "}", "not valid JSON"),
    ],
)
def test_malformed_manifest_is_exit_2(golden, capsys, text, words):
    (golden / "manifest.json").write_text(text)
    assert_unusable(*verify_cli(capsys, golden), words)


def test_huge_manifest_is_refused_unread(golden, capsys):
    with open(golden / "manifest.json", "ab") as fh:
        fh.truncate(MAX_MANIFEST_BYTES + 1)
    assert_unusable(*verify_cli(capsys, golden), f"more than the {MAX_MANIFEST_BYTES}")


def test_case_file_that_is_a_symlink_out_of_the_folder_is_refused(golden, tmp_path, capsys):
    manifest = read_manifest(golden)
    victim = golden / case_of(manifest)["file"]
    outside = tmp_path / "outside.npz"
    shutil.move(victim, outside)
    os.symlink(outside, victim)
    assert_unusable(*verify_cli(capsys, golden), "symbolic link")


def test_case_file_that_is_not_a_regular_file_is_refused(golden, capsys):
    victim = golden / case_of(read_manifest(golden))["file"]
    victim.unlink()
    victim.mkdir()
    assert_unusable(*verify_cli(capsys, golden), "not a regular file")


def test_manifest_that_is_a_symlink_is_refused(golden, tmp_path, capsys):
    shutil.move(golden / "manifest.json", tmp_path / "m.json")
    os.symlink(tmp_path / "m.json", golden / "manifest.json")
    assert_unusable(*verify_cli(capsys, golden), "symbolic link")


def test_missing_case_file_and_missing_set(golden, tmp_path, capsys):
    (golden / case_of(read_manifest(golden))["file"]).unlink()
    assert_unusable(*verify_cli(capsys, golden), "is missing")
    assert_unusable(*verify_cli(capsys, tmp_path / "nowhere"), "not a folder")
    assert_unusable(*verify_cli(capsys, tmp_path), "no manifest.json")


# ==================================================================================== 3
# Case files: hashes, zip structure, .npy headers, bombs
# ==================================================================================== 3
def test_corrupted_zip_with_updated_hash_is_exit_2(golden, capsys):
    data = bytearray((golden / case_of(read_manifest(golden))["file"]).read_bytes())
    data[-30:] = b"\0" * 30  # garble the end-of-central-directory record
    rewrite_case_file(golden, bytes(data))
    assert_unusable(*verify_cli(capsys, golden), "not a readable .npz", VICTIM)


def test_flipped_data_byte_with_updated_hash_fails_the_crc(golden, capsys):
    members = victim_members(golden)
    data = bytearray(npz(members))
    offset = data.index(members["y.npy"]) + 200  # inside y's data
    data[offset] ^= 0xFF
    rewrite_case_file(golden, bytes(data))
    assert_unusable(*verify_cli(capsys, golden), "member y.npy", "unreadable", "CRC")


def test_truncated_case_file_is_exit_2(golden, capsys):
    data = (golden / case_of(read_manifest(golden))["file"]).read_bytes()
    rewrite_case_file(golden, data[: len(data) // 2])
    assert_unusable(*verify_cli(capsys, golden), "not a readable .npz")


@pytest.mark.parametrize("member", ["y.npy", "bound/y.npy"])
def test_missing_member_is_exit_2(golden, capsys, member):
    members = victim_members(golden)
    del members[member]
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), "members differ from the manifest", f"missing ['{member}']")


def test_extra_and_duplicate_members_are_exit_2(golden, capsys):
    members = victim_members(golden)
    rewrite_case_file(golden, npz({**members, "extra.npy": npy(np.zeros(2))}))
    assert_unusable(*verify_cli(capsys, golden), "extra ['extra.npy']")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf, pytest.warns(UserWarning, match="Duplicate"):
        for name, data in members.items():
            zf.writestr(name, data)
        zf.writestr("y.npy", members["y.npy"])
    rewrite_case_file(golden, buffer.getvalue())
    assert_unusable(*verify_cli(capsys, golden), "y.npy appears twice")


def test_object_member_is_refused_naming_the_golden_set(golden, capsys):
    members = victim_members(golden)
    members["y.npy"] = npy(np.array([{"a": 1}, None], dtype=object))
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), f"case '{VICTIM}' (neocell)", "member y.npy", "Python objects")


def _forged_header(shape, dtype="<f8", payload=b""):
    """A .npy member whose header claims ``shape`` (no such data follows)."""
    header = {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + payload


@pytest.mark.parametrize(
    "forged, words",
    [
        (_forged_header((40_000, 1_000_000)), "header declares shape (40000, 1000000)"),  # 320 GB
        (_forged_header((2, 4, 14, 14), "<c16"), "header declares dtype <c16"),
        (_forged_header((2, 4, 14, 14), ">f8"), "header declares dtype >f8"),
        (_forged_header((2, 4, 14, 14)), "the zip directory says"),  # right header, no data
    ],
)
def test_npy_header_lies_are_refused_before_any_data_is_read(golden, capsys, forged, words):
    members = victim_members(golden)
    members["y.npy"] = forged
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), "member y.npy", words)


def test_fortran_order_and_unknown_npy_versions_are_refused(golden, capsys):
    members = victim_members(golden)
    y = members["y.npy"]
    members["y.npy"] = y.replace(b"'fortran_order': False", b"'fortran_order': True ")
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), "Fortran order")
    members["y.npy"] = y[:6] + b"\x03\x00" + y[8:]
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), ".npy format version (3, 0)")


def test_zip_bomb_is_refused_before_expanding(golden, capsys):
    """A 20 MB member of zeros deflates to ~20 kB; its directory size gives it away."""
    members = victim_members(golden)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data + (b"\0" * 20_000_000 if name == "y.npy" else b""))
    assert len(buffer.getvalue()) < 200_000, f"the bomb compressed to {len(buffer.getvalue())} bytes, expected < 200000"
    rewrite_case_file(golden, buffer.getvalue())
    assert_unusable(*verify_cli(capsys, golden), "member y.npy", "says 20012672 bytes uncompressed")


def test_deflated_member_of_the_right_size_is_read(golden):
    """Control for the bomb test: compression itself is not what is refused."""
    members = victim_members(golden)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    rewrite_case_file(golden, buffer.getvalue())
    report = verify_golden(golden, "neocell", mutant_ports.correct_forward)
    assert report.passed, report.table()


def test_oversized_case_file_is_refused_unread(golden, capsys):
    victim = golden / case_of(read_manifest(golden))["file"]
    with open(victim, "ab") as fh:
        fh.truncate(10**9)  # sparse: nothing is written, nothing may be read
    assert_unusable(*verify_cli(capsys, golden), "has 1000000000 bytes, more than")


def test_non_finite_stored_values_are_refused(golden, capsys):
    members = victim_members(golden)
    with zipfile.ZipFile(io.BytesIO(npz(members))) as zf, zf.open("y.npy") as fh:
        y = np.lib.format.read_array(fh)
    y[0, 0, 0, 0] = np.nan
    members["y.npy"] = npy(y)
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), "non-finite")


def test_tampered_file_without_updated_hash(golden, capsys):
    victim = golden / case_of(read_manifest(golden))["file"]
    data = bytearray(victim.read_bytes())
    data[-100] ^= 1
    victim.write_bytes(bytes(data))
    assert_unusable(*verify_cli(capsys, golden), "has SHA-256")


# ---------------------------------------------------------------------- the digest pin
def test_digest_is_reported_and_pins_the_set(golden, capsys, tmp_path):
    digest = hashlib.sha256((golden / "manifest.json").read_bytes()).hexdigest()
    reported = set_digest(golden)
    assert reported == digest, f"set_digest {reported}, SHA-256 of manifest.json {digest}"
    report_file = tmp_path / "r.json"
    code, out, err = verify_cli(capsys, golden, "--digest", digest.upper(), "--json", str(report_file))
    assert code == 0 and f"set digest (SHA-256 of manifest.json): {digest}" in out, (out, err)
    written = json.loads(report_file.read_text())["golden_set"]["digest_sha256"]
    assert written == digest, f"report digest {written!r}, expected {digest}"
    # any change of the set changes the digest: an edited hash, or a re-export with another seed
    other = tmp_path / "other"
    export_golden(other, operations=["neocell"], seed=7)
    assert_unusable(*verify_cli(capsys, other, "--digest", digest), "the set digest is", "was pinned")
    assert_unusable(*verify_cli(capsys, golden, "--digest", "abc"), "64 hex digits")
    with pytest.raises(GoldenError, match="was pinned"):
        verify_golden(other, "neocell", mutant_ports.correct_forward, digest=digest)


# ---------------------------------------------------------------------- ports that cannot be used
def test_unusable_ports_are_exit_2(golden, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "broken_port.py").write_text("raise RuntimeError('missing libneocell.so')\n")
    (tmp_path / "exiting_port.py").write_text("import sys\nsys.exit(0)\n")
    cases = [
        (["--forward", "broken_port:forward"], ["--forward 'broken_port:forward'", "missing libneocell.so"]),
        (["--forward", "exiting_port:forward"], ["exiting_port", "SystemExit"]),
        (["--forward", "no_such_module_h1:f"], ["No module named 'no_such_module_h1'"]),
        (["--forward", "support.mutant_ports:no_such_function"], ["has no attribute 'no_such_function'"]),
        (["--forward", "support.mutant_ports:not_callable"], ["is not callable"]),
        (["--backward", "mutant_ports"], ["expected 'package.module:function'"]),
    ]
    for port, words in cases:
        assert_unusable(*verify_cli(capsys, golden, port=port), *words)
    with pytest.raises(TypeError, match="forward must be callable"):
        verify_golden(golden, "neocell", "support.mutant_ports:correct_forward")


# ---------------------------------------------------------------------- output paths
def test_unwritable_json_path_is_refused_before_running(golden, tmp_path, capsys):
    for path, words in [(tmp_path / "missing" / "r.json", "does not exist"), (tmp_path, "is a folder")]:
        assert_unusable(*verify_cli(capsys, golden, "--json", str(path)), "--json", words)
    assert_unusable(*verify_cli(capsys, golden, "--json", ""), "--json is empty")
    # A path ending in a separator was accepted and failed only after the port had run.
    assert_unusable(*verify_cli(capsys, golden, "--json", str(tmp_path / "new") + os.sep), "names a folder")


def test_json_path_that_is_not_a_regular_file_is_left_alone(golden, tmp_path, capsys):
    """A FIFO (or a device such as /dev/full, or a link to one such as /dev/stdout) was
    unlinked at the start and replaced by the report: refused, and left where it was."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(fifo)
    for path in (fifo, link):
        assert_unusable(*verify_cli(capsys, golden, "--json", str(path)), "--json", "not a regular file")
        assert fifo.exists() and not fifo.is_file(), f"{path}: the FIFO was removed or replaced"
    assert link.is_symlink(), "the link was replaced"


def test_json_report_through_a_link_replaces_the_link_target(golden, tmp_path, capsys):
    target = tmp_path / "reports" / "r.json"
    target.parent.mkdir()
    link = tmp_path / "r.json"
    link.symlink_to(target)
    code, out, err = verify_cli(capsys, golden, "--json", str(link))
    assert code == 0 and link.is_symlink(), f"status {code}, link kept {link.is_symlink()}, stderr {err!r}"
    assert json.loads(target.read_text())["passed"] is True, "the report did not reach the link's target"


def test_json_report_may_not_be_written_into_the_set(golden, capsys):
    manifest = (golden / "manifest.json").read_bytes()
    assert_unusable(*verify_cli(capsys, golden, "--json", str(golden / "manifest.json")), "inside the golden set")
    assert_unusable(*verify_cli(capsys, golden, "--json", str(golden / "report.json")), "inside the golden set")
    (golden / "sub").mkdir()  # any depth inside the set (only the immediate folder was refused)
    try:
        assert_unusable(*verify_cli(capsys, golden, "--json", str(golden / "sub" / "r.json")), "inside the golden set")
    finally:
        (golden / "sub").rmdir()
    assert (golden / "manifest.json").read_bytes() == manifest and not (golden / "report.json").exists(), (
        f"manifest.json changed: {(golden / 'manifest.json').read_bytes() != manifest}, "
        f"report.json written: {(golden / 'report.json').exists()}"
    )


def test_a_run_cut_short_leaves_no_earlier_report_behind(golden, tmp_path, capsys):
    """A run that never reaches its verdict (here: interrupted) removes the --json
    file of an earlier passing run, so a CI reading the file cannot see a stale pass."""
    report_file = tmp_path / "r.json"
    code, out, err = verify_cli(capsys, golden, "--json", str(report_file))
    assert code == 0, f"exit status {code}, stderr {err!r}, stdout:\n{out}"
    passed = json.loads(report_file.read_text())["passed"]
    assert passed is True, f"report says passed {passed!r}"
    code, out, err = verify_cli(
        capsys, golden, "--json", str(report_file), port=["--forward", "support.mutant_ports:interrupt_forward"]
    )
    assert code == 2 and not report_file.exists(), (out, err)
    # also when the run ends before the set is read: a port that cannot be imported (the
    # file is removed first, so a port ending the process while imported leaves none)
    code, out, err = verify_cli(capsys, golden, "--json", str(report_file))
    assert code == 0 and report_file.exists(), (
        f"exit status {code}, report written {report_file.exists()}, stderr {err!r}, stdout:\n{out}"
    )
    code, out, err = verify_cli(capsys, golden, "--json", str(report_file), port=["--forward", "no_such_port:forward"])
    assert code == 2 and not report_file.exists(), (out, err)


def test_export_refuses_unusable_paths_and_leaves_nothing(tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    assert_unusable(*run(capsys, "export", ""), "directory is empty")
    assert_unusable(*run(capsys, "export", "."), "name the golden set's folder")
    assert_unusable(*run(capsys, "export", str(tmp_path / "..")), "name the golden set's folder")
    assert_unusable(*run(capsys, "export", str(tmp_path / "a_file")), "exists and is not a folder")
    assert_unusable(*run(capsys, "export", str(tmp_path / "a_file" / "sub")), "a_file")  # NotADirectoryError
    assert_unusable(*run(capsys, "export", str(tmp_path / "g"), "--seed", "-1"), "seed")
    assert_unusable(*run(capsys, "export", str(tmp_path / "g"), "--seed", str(2**63)), "seed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"], "a refused export left something behind"


def test_export_refuses_a_foreign_non_empty_folder(tmp_path, capsys):
    target = tmp_path / "g"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    assert_unusable(*run(capsys, "export", str(target)), "not empty", "notes.txt")
    assert (target / "notes.txt").read_text() == "mine", f"notes.txt now reads {(target / 'notes.txt').read_text()!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"], (
        f"left in {tmp_path}: {sorted(p.name for p in tmp_path.iterdir())}"
    )


def test_export_replaces_a_previous_set_exactly(tmp_path):
    target = tmp_path / "g"
    export_golden(target, suite="full", operations=["neocell"])
    assert (target / "neocell__neonext_t_stage1.npz").exists(), (
        f"no full-suite case file among {sorted(p.name for p in target.iterdir())}"
    )
    export_golden(target, suite="core", operations=["neocell"])
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted(["manifest.json"] + [f"neocell__{n}.npz" for n, _, _ in NEOCELL_CASES_CORE]), names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"], "temporary folders left behind"
    report = verify_golden(target, "neocell", mutant_ports.correct_forward)
    assert report.passed, report.table()
    # a previous set plus a foreign file is not "a previous set": refused, untouched
    (target / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="report.json is not a file of the golden set"):
        export_golden(target, operations=["neocell"])
    assert (target / "report.json").exists(), "the refused export removed the foreign report.json"


def test_export_into_an_empty_folder(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    export_golden(target, operations=["gelu"])
    assert (target / "manifest.json").exists(), f"no manifest.json among {sorted(p.name for p in target.iterdir())}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"], (
        f"left in {tmp_path}: {sorted(p.name for p in tmp_path.iterdir())}"
    )


def test_export_argument_errors_name_the_argument(tmp_path):
    for kwargs, error, words in [
        (dict(seed=1.5), TypeError, "seed must be an integer"),
        (dict(seed=True), TypeError, "seed must be an integer"),
        (dict(operations="neocell"), TypeError, "operations must be a list"),
        (dict(operations=[]), ValueError, "operations is empty"),
        (dict(operations=["neocell", "neocell"]), ValueError, "twice"),
        (dict(operations=["conv9"]), ValueError, "unknown operation 'conv9'"),
        (dict(dtype=None), ValueError, "dtype"),
    ]:
        with pytest.raises(error, match=words):
            export_golden(tmp_path / "g", **kwargs)
    with pytest.raises(TypeError, match="directory must be a path"):
        export_golden(None)
    assert not (tmp_path / "g").exists(), f"a refused export created {tmp_path / 'g'}"


# ==================================================================================== 6
# One seeding rule per case
# ==================================================================================== 6
@pytest.mark.parametrize("op", ["neocell", "gelu", "batchnorm"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_kit_and_export_make_the_same_arrays(tmp_path, op, dtype):
    seed = 12345
    export_golden(tmp_path / "g", dtype=dtype, seed=seed, operations=[op])
    manifest = load_manifest(tmp_path / "g")
    for case in OPERATIONS[op].cases("core"):
        _, arrays, inputs, _ = make_case(op, case, np.dtype(dtype), seed)
        stored = load_case(tmp_path / "g", case_of(manifest, case[0]))
        for key in inputs:  # drawn inputs: bit-identical
            assert stored[key].dtype == arrays[key].dtype and np.array_equal(stored[key], arrays[key]), (case[0], key)


def test_kit_golden_cases_are_the_exported_cases(base):
    """The kit with the export's seed runs the very arrays of the exported set: a port
    failing only on one stored case's arrays fails the kit on that case too."""
    victim = load_case(base, case_of(load_manifest(base)))["x"]

    def fails_on_the_stored_x(x, a, b, s):
        y = mutant_ports.correct_forward(x, a, b, s)
        return y + 1.0 if x.shape == victim.shape and np.array_equal(x, victim) else y

    with pytest.raises(AssertionError, match=f"golden case '{VICTIM}'"):
        assert_neocell_matches(fails_on_the_stored_x, max_examples=0, seed=DEFAULT_SEED)
    assert_neocell_matches(fails_on_the_stored_x, max_examples=0, seed=DEFAULT_SEED + 1)


def test_derived_manifest_is_the_exported_one(base):
    exported = read_manifest(base)
    derived = derive_manifest(operations=["neocell"])
    for manifest in (exported, derived):
        for key in ("generator", "numpy_version", "python_version"):
            manifest.pop(key)
    assert exported == derived, (
        f"fields differing: {sorted(k for k in exported.keys() | derived.keys() if exported.get(k) != derived.get(k))}"
    )


def test_run_and_compare_rejects_loose_overrides_before_the_port_runs():
    calls = []

    def port(*args):
        calls.append(args)
        return mutant_ports.correct_forward(*args)

    name, spec, shape = NEOCELL_CASES_CORE[0]
    meta, arrays, _, tolerances = make_case("neocell", (name, spec, shape), np.float64, 0)
    with pytest.raises(ValueError, match="too loose"):
        run_and_compare("neocell", name, {**meta, "tolerances": tolerances}, arrays, port, None, rtol=0.5)
    assert calls == [], f"the port ran {len(calls)} times before the override was refused"
    rng = np.random.default_rng(0)
    case = NeoCellCase(
        spec,
        rng.standard_normal(shape),
        [rng.standard_normal((4, 7, 7))],
        [rng.standard_normal((4, 7, 7))],
        rng.standard_normal(shape),
    )
    with pytest.raises(ValueError, match="too loose"):
        check_neocell_case(port, None, case, atol=1e3)
    assert calls == [], f"the refused override still ran the port {len(calls)} times"
    rows = check_neocell_case(port, None, case)
    assert all(r.passed for r in rows) and calls, (
        f"without the override: port calls {len(calls)}, failing rows {[r.describe() for r in rows if not r.passed]}"
    )


def test_json_write_failing_after_the_run_is_exit_2_without_traceback(golden, tmp_path, capsys, monkeypatch):
    """If the --json file still cannot be written after the checks (here the disk fills
    up once the report's bytes are written, before they reach the disk), the status is
    2 with one line, never a traceback, and neither the report nor a part of it is left
    (a CI requiring the report must not read a truncated one)."""
    import errno
    import os

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    folder = tmp_path / "reports"
    folder.mkdir()
    code, out, err = verify_cli(capsys, golden, "--json", str(folder / "r.json"))
    assert code == 2 and "PASSED" in out, (out, err)
    assert err.startswith("neocell-ref: error: --json ") and os.strerror(errno.ENOSPC) in err, f"stderr {err!r}"
    assert err.count("\n") == 1, f"stderr is not one line: {err!r}"
    assert not any(folder.iterdir()), f"left behind: {sorted(p.name for p in folder.iterdir())}"


def test_export_prints_the_set_digest(tmp_path, capsys):
    code, out, err = run(capsys, "export", str(tmp_path / "g"))
    assert code == 0, err
    digest = set_digest(tmp_path / "g")
    assert f"set digest (SHA-256 of manifest.json): {digest}" in out, f"digest {digest} not in stdout:\n{out}"


# ==================================================================================== fuzz
# Arguments of the verifier, the kit and the CLI: a correct result or a named
# TypeError/ValueError (exit status 2 on the command line), never anything else.
import sys

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from support.paths import REPO
from support.ports import PORT, build_c_port

from neocell_ref.cli import main
from neocell_ref.verify.exec_port import DEFAULT_TIMEOUT, ExecCommandError
from neocell_ref.verify.golden import run_exec_and_compare
from neocell_ref.verify.golden_ops import LAYER_CASES_CORE, MODEL_RTOL
from neocell_ref.verify.tolerances import unit_roundoff

ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.just([1.0]),
    st.just(np.float32(2.0)),
    st.just(np.int64(3)),
)


@given(rtol=ANY_VALUE, atol=ANY_VALUE, rtol_scale=ANY_VALUE)
def test_fuzz_tolerance_overrides(rtol, atol, rtol_scale):
    try:
        got = nr.verify.golden.check_tolerance_overrides(rtol, atol, rtol_scale)
    except (TypeError, ValueError) as exc:
        named = [n for n, v in (("rtol", rtol), ("atol", atol), ("rtol_scale", rtol_scale)) if n in str(exc)]
        assert named, f"the error does not name the argument: {exc}"
        return
    r, a, s = got
    assert (r is None or (np.isfinite(r) and r > 0)) and (a is None or (np.isfinite(a) and a >= 0)), (
        f"accepted rtol {r!r}, atol {a!r} (given {rtol!r}, {atol!r})"
    )
    assert np.isfinite(s) and 0 < s <= MAX_RTOL_SCALE, f"accepted rtol_scale {s!r} (given {rtol_scale!r})"


@settings(max_examples=15, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    scale=st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6)),
    exclude=st.lists(st.text(alphabet="k7*=_ ab", max_size=8), max_size=2),
    digest=st.one_of(st.none(), st.text(alphabet="0123456789abcdefX", min_size=60, max_size=66)),
)
def test_fuzz_verify_command_line(base, capsys, scale, exclude, digest):
    argv = ["verify", str(base), "--op", "neocell", *FORWARD, f"--rtol-scale={scale}"]
    argv += [f"--exclude={item}" for item in exclude]
    argv += [] if digest is None else ["--digest", digest]
    try:
        code, out, err = run(capsys, *argv)
    except SystemExit as exc:  # argparse refuses a malformed command line with 2
        assert exc.code == 2, f"argparse exit code {exc.code!r}"
        capsys.readouterr()
        return
    assert code in (0, 1, 2), code
    if code == 2:
        assert err.startswith("neocell-ref: error: ") and err.count("\n") == 1 and out == "", err


@settings(max_examples=20)
@given(
    kwargs=st.fixed_dictionaries(
        {},
        optional={
            "max_examples": ANY_VALUE,
            "golden": ANY_VALUE,
            "layers": ANY_VALUE,
            "seed": ANY_VALUE,
            "dtype": ANY_VALUE,
            "shrink": ANY_VALUE,
        },
    )
)
def test_fuzz_kit_arguments(kwargs):
    """Only argument errors here (the port raises if it is ever run on bad arguments)."""

    def port(*args):
        raise AssertionError("ran")

    try:
        assert_neocell_matches(port, **kwargs)
    except (TypeError, ValueError) as exc:
        assert any(name in str(exc) for name in kwargs), f"{exc} names none of {sorted(kwargs)}"
    except AssertionError as exc:
        assert "raised AssertionError: ran" in str(exc), exc  # valid arguments: the port ran and failed


def test_failed_replacement_restores_the_previous_set(tmp_path, monkeypatch):
    target = tmp_path / "g"
    export_golden(target, operations=["gelu"])
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    real_rename = os.rename

    def rename(src, dst):
        if os.path.basename(src).startswith(".g.partial-"):
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        export_golden(target, operations=["gelu"], seed=5)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in target.iterdir()}
    assert after == before, (
        "files changed, added or removed: "
        f"{sorted(k for k in after.keys() | before.keys() if after.get(k) != before.get(k))}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"], "temporary folders left behind"


# ======================================================================================
# Golden vectors: determinism, manifest integrity, the reference passing its own set,
# and realistic porting bugs being caught (mutation tests).
# ======================================================================================
@pytest.fixture(scope="module")
def golden64(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden64")
    export_golden(directory, suite="core", dtype="float64")
    return directory


@pytest.fixture(scope="module")
def golden32(tmp_path_factory):
    directory = tmp_path_factory.mktemp("golden32")
    export_golden(directory, suite="core", dtype="float32")
    return directory


def _digests(directory):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def _methods(method):
    return (
        lambda x, a, b, s: nr.neocell_forward(x, a, b, s, method=method),
        lambda g, x, a, b, s: nr.neocell_backward(g, x, a, b, s, method=method),
    )


# ---------------------------------------------------------------------------- export
def test_export_is_byte_identical_across_runs_and_folders(golden64, tmp_path):
    export_golden(tmp_path, suite="core", dtype="float64")
    first, second = _digests(golden64), _digests(tmp_path)
    assert first == second, (
        f"files differing between two exports: {sorted(k for k in first if first[k] != second.get(k))}"
    )


def test_manifest_describes_every_case(golden64):
    manifest = load_manifest(golden64)
    assert manifest["format_version"] == FORMAT_VERSION, (
        f"format_version {manifest['format_version']!r}, expected {FORMAT_VERSION}"
    )
    assert manifest["numpy_version"] == np.__version__, (
        f"numpy_version {manifest['numpy_version']!r}, running {np.__version__}"
    )
    assert manifest["dtype"] == "float64" and manifest["suite"] == "core", (
        f"dtype {manifest['dtype']!r}, suite {manifest['suite']!r}"
    )
    assert isinstance(manifest["seed"], int), f"seed {manifest['seed']!r} is a {type(manifest['seed']).__name__}"
    names = [(c["op"], c["name"]) for c in manifest["cases"]]
    expected_names = [(op, name) for op in OPERATIONS for name, _, _ in OPERATIONS[op].cases("core")]
    assert names == expected_names, f"case list {names}"
    assert [n for op, n in names if op == "neocell"] == [name for name, _, _ in NEOCELL_CASES_CORE], (
        f"neocell cases {[n for op, n in names if op == 'neocell']}"
    )
    for case in manifest["cases"]:
        arrays = load_case(golden64, case)  # allow_pickle=False inside
        assert set(arrays) == set(case["arrays"]), f"{case['name']}: npz members differ from the manifest"
        for key, info in case["arrays"].items():
            assert list(arrays[key].shape) == info["shape"] and str(arrays[key].dtype) == info["dtype"], (
                f"{case['name']}/{key}: stored {arrays[key].shape} {arrays[key].dtype}, manifest {info}"
            )
        for key, tol in case["tolerances"].items():
            assert key in arrays, f"{case['name']}: tolerance for {key} but no such expected array"
            if case["op"] == "model":  # normwise, from measurement (docs/porting.md)
                assert tol["rtol"] == MODEL_RTOL["float64"]["logits" if key.startswith("logits") else "grad"], (
                    f"{case['name']}/{key}: rtol {tol['rtol']}, MODEL_RTOL {MODEL_RTOL['float64']}"
                )
                continue
            u = unit_roundoff(np.float64)
            expected_rtol = 2.0 * (tol["accumulation_length"] + 1) * u
            assert tol["rtol"] == pytest.approx(expected_rtol), f"{case['name']}/{key}: rtol {tol['rtol']}"
            if tol["bound"] is not None:
                assert tol["bound"] in arrays, f"{case['name']}/{key}: bound array {tol['bound']} missing"
            else:
                assert tol["norm"] == "max", f"{case['name']}/{key}: neither a bound nor normwise"
        with open(golden64 / case["file"], "rb") as fh:
            actual = hashlib.sha256(fh.read()).hexdigest()
            assert actual == case["sha256"], f"{case['file']}: SHA-256 {actual}, manifest says {case['sha256']}"


def test_float32_set_stores_float32_inputs_and_float64_answers(golden32):
    manifest = load_manifest(golden32)
    case = manifest["cases"][0]
    assert case["op"] == "neocell", f"first case is op {case['op']!r}"
    arrays = load_case(golden32, case)
    assert arrays["x"].dtype == np.float32 and arrays["weight_a_0"].dtype == np.float32, (
        f"x stored as {arrays['x'].dtype}, weight_a_0 as {arrays['weight_a_0'].dtype}"
    )
    assert arrays["y"].dtype == np.float64, f"y stored as {arrays['y'].dtype}"
    assert manifest["tolerance_policy"]["unit_roundoff"] == 2.0**-24, (
        f"unit_roundoff {manifest['tolerance_policy']['unit_roundoff']!r}, expected 2**-24"
    )


# ---------------------------------------------------------------------------- integrity
def test_tampered_file_is_an_error(golden64, tmp_path):
    export_golden(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    victim = tmp_path / manifest["cases"][3]["file"]
    data = bytearray(victim.read_bytes())
    data[-10] ^= 1
    victim.write_bytes(bytes(data))
    with pytest.raises(GoldenError, match="SHA-256"):
        verify_golden(tmp_path, "neocell", *_methods("patchwise"))


def test_missing_file_and_bad_manifest_are_errors(tmp_path):
    with pytest.raises(GoldenError, match="no manifest"):
        load_manifest(tmp_path)
    export_golden(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / manifest["cases"][0]["file"]).unlink()
    with pytest.raises(GoldenError, match="missing"):
        load_manifest(tmp_path)
    manifest["format_version"] = 999
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GoldenError, match="format_version"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(GoldenError, match="not valid JSON"):
        load_manifest(tmp_path)


def test_bad_arguments(golden64, tmp_path):
    with pytest.raises(ValueError, match="suite"):
        export_golden(tmp_path, suite="huge")
    with pytest.raises(ValueError, match="dtype"):
        export_golden(tmp_path, dtype="float8")
    with pytest.raises(ValueError, match="at least one"):
        verify_golden(golden64, "neocell")
    with pytest.raises(ValueError, match="unknown operation"):
        verify_golden(golden64, "conv9x9", *_methods("patchwise"))


# ---------------------------------------------------------------------------- the caller's np.seterr
def _own_ports(op):
    """The package's own functions as a port of ``op`` (NeoCell, each layer, the model)."""
    from neocell_ref import registry

    if op == "neocell":
        return _methods("patchwise")
    if op == "model":
        return mutant_ports.model_forward, mutant_ports.model_backward
    return registry.get(op).functions


@pytest.mark.parametrize("dtype", ["float64", "float16"])
def test_verdicts_do_not_depend_on_the_callers_error_state(golden64, tmp_path, dtype):
    """A port module that calls np.seterr(all="raise") when imported (as a strict test
    suite does) ran the set's re-derivation under it: underflow in the reference's exp
    and in the float16 rounding crashed the verifier. The reference and the comparison
    now fix their own error state; the package's own functions pass every operation."""
    directory = golden64
    if dtype != "float64":
        directory = tmp_path / dtype
        export_golden(directory, suite="core", dtype=dtype)
    operations = json.loads((directory / "manifest.json").read_text())["operations"]
    assert "neocell" in operations and "gelu" in operations, operations
    with np.errstate(all="raise"):
        for op in operations:
            report = verify_golden(directory, op, *_own_ports(op))
            assert report.passed, f"{op} ({dtype}) under np.errstate(all='raise'):\n{report.table()}"


def test_cli_a_port_module_setting_seterr_raise_gets_a_verdict(golden64, capsys):
    """Through the command line: the port module is imported first and sets
    np.seterr(all="raise"); the set's re-derivation crashed with a FloatingPointError
    traceback and status 1. It must be a verdict (here: passed, status 0)."""
    import sys

    saved = np.geterr()
    sys.modules.pop("support.strict_port", None)
    try:
        code, out, err = run(
            capsys, "verify", str(golden64), "--op", "neocell", "--forward", "support.strict_port:forward"
        )
    finally:
        np.seterr(**saved)
    assert code == 0 and "PASSED" in out, (code, out[-2000:], err)


def test_cli_an_unforeseen_exception_is_status_2_and_one_line(golden64, capsys, monkeypatch):
    """The exit status contract: status 1 means a port failed; anything the CLI did not
    foresee (here a defect planted in the verifier) is status 2 with one line."""

    def broken(*args, **kwargs):
        raise ZeroDivisionError("planted")

    monkeypatch.setattr(cli.golden, "verify_golden", broken)
    code, out, err = verify_cli(capsys, golden64)
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert lines == ["neocell-ref: internal error: ZeroDivisionError: planted (no verdict; please report it)"], err


# ---------------------------------------------------------------------------- the reference passes
@pytest.mark.parametrize("method", ["loop", "patchwise", "blockdiag"])
def test_reference_passes_its_own_float64_set(golden64, method):
    report = verify_golden(golden64, "neocell", *_methods(method))
    assert report.passed, report.table()
    assert len(report.results) == sum(2 + 2 * len(s) for _, s, _ in NEOCELL_CASES_CORE), (
        f"{len(report.results)} rows, expected {sum(2 + 2 * len(s) for _, s, _ in NEOCELL_CASES_CORE)}"
    )


def test_reference_in_float32_passes_the_float32_set(golden32):
    fwd, bwd = _methods("patchwise")
    report = verify_golden(golden32, "neocell", fwd, bwd)
    assert report.passed, report.table()


def test_float32_computation_fails_the_float64_set(golden64):
    def fwd32(x, a, b, s):
        return nr.neocell_forward(
            x.astype(np.float32), [w.astype(np.float32) for w in a], [w.astype(np.float32) for w in b], s
        )

    report = verify_golden(golden64, "neocell", fwd32)
    assert not report.passed and all(not r.passed for r in report.results), report.table()


# ---------------------------------------------------------------------------- mutation tests
def test_independent_port_passes(golden64):
    report = verify_golden(golden64, "neocell", mutant_ports.correct_forward, mutant_ports.correct_backward)
    assert report.passed, report.table()


# Cases each bug must break (at least): a bug that only shows on some shapes must be
# caught on those, and the report must name them.
EXPECTED_FAILING = {
    "corner_dropped": "mixed_4p7_shift1_uneven",
    "split_ceil": "mixed_4p7_shift1_uneven",
    "round_size": "down_2to1_9x7",
    "swap_ab": "up_1to2_1to3",
    "transpose_a": "k7_square_14x14",
    "float32_accumulation": "k7_square_14x14",
}


@pytest.mark.parametrize("bug", mutant_ports.BUGS)
def test_porting_bug_is_caught_by_golden_verify(golden64, bug):
    fwd = getattr(mutant_ports, f"{bug}_forward")
    bwd = getattr(mutant_ports, f"{bug}_backward")
    report = verify_golden(golden64, "neocell", fwd, bwd)
    assert not report.passed, f"bug {bug!r} passed the golden set:\n{report.table()}"
    failing_cases = {r.case for r in report.failures}
    assert EXPECTED_FAILING[bug] in failing_cases, f"{bug}: failing cases {sorted(failing_cases)}"
    assert EXPECTED_FAILING[bug] in report.table(), "the report must name the failing case"


def test_unshifted_square_cases_do_not_see_shift_bugs(golden64):
    """Control: shift-only bugs pass the cases without shifts, so failures are specific."""
    report = verify_golden(
        golden64,
        "neocell",
        mutant_ports.corner_dropped_forward,
        exclude={"*shift*": "shifted", "*every*": "shifted", "mixed_3p5*": "shifted", "ka3_kb5*": "shifted"},
    )
    assert report.passed, report.table()
    assert report.excluded and all(reason for _, reason in report.excluded), f"excluded {report.excluded}"


# ---------------------------------------------------------------------------- comparison
def test_compare_arrays_reports_worst_element():
    expected = np.zeros((2, 3))
    got = expected.copy()
    got[1, 2] = 1e-3
    got[0, 1] = 1e-4
    result = compare_arrays("c", "y", got, expected, rtol=0.0, atol=1e-5)
    assert not result.passed and result.index == (1, 2) and result.got == 1e-3, result.describe()
    assert result.ratio == pytest.approx(100.0), f"ratio {result.ratio!r}, expected 100"
    assert "(1, 2)" in result.describe(), f"worst index missing: {result.describe()!r}"
    wrong_shape = compare_arrays("c", "y", np.zeros((3, 2)), expected, rtol=1.0)
    assert not wrong_shape.passed, f"a (3, 2) result passed for (2, 3): {wrong_shape.describe()}"
    nan = expected.copy()
    nan[0, 0] = np.nan
    with_nan = compare_arrays("c", "y", nan, expected, rtol=1.0, atol=1.0)
    assert not with_nan.passed, f"a NaN result passed: {with_nan.describe()}"


@pytest.mark.parametrize(
    "expected_value, got_value, passes",
    [
        (np.nan, 0.0, False),
        (np.nan, 12345.0, False),
        (np.nan, np.inf, False),
        (np.nan, np.nan, True),
        (np.inf, np.inf, True),
        (np.inf, -np.inf, False),
        (np.inf, 1e300, False),
        (-np.inf, np.nan, False),
    ],
)
def test_compare_arrays_holds_a_non_finite_expected_value_to_the_same_value(expected_value, got_value, passes):
    # |got - NaN| and its allowance are NaN, which read as a ratio of 0 and passed
    # anything where the expected value was NaN
    expected = np.array([expected_value, 1.0, 2.0])
    got = np.array([got_value, 1.0, 2.0])
    result = compare_arrays("c", "y", got, expected, rtol=1e-15)
    assert result.passed is passes, f"expected {expected_value}, got {got_value}: {result.describe()}"
    if not passes:
        assert result.index == (0,), result.describe()


# ---------------------------------------------------------------------------- command line
def test_cli_export_and_verify(tmp_path, monkeypatch, capsys):
    directory = tmp_path / "g"
    code = cli.main(["golden", "export", str(directory)])
    assert code == 0, f"golden export exit status {code}"
    report_file = tmp_path / "report.json"
    code = cli.main(
        [
            "golden",
            "verify",
            str(directory),
            "--op",
            "neocell",
            "--forward",
            "support.mutant_ports:correct_forward",
            "--backward",
            "support.mutant_ports:correct_backward",
            "--exclude",
            "k7_input_1x1=not supported by this port",
            "--json",
            str(report_file),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "k7_input_1x1" in out and "not supported by this port" in out, f"exclusion not reported in stdout:\n{out}"
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["excluded"] == [
        {"case": "k7_input_1x1", "reason": "not supported by this port"}
    ], f"passed {report['passed']!r}, excluded {report['excluded']}"
    code = cli.main(
        [
            "golden",
            "verify",
            str(directory),
            "--op",
            "neocell",
            "--forward",
            "support.mutant_ports:corner_dropped_forward",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out and "mixed_4p7_shift1_uneven" in out, f"exit status {code}, stdout:\n{out}"
    (directory / "manifest.json").write_text(
        (directory / "manifest.json").read_text().replace('"sha256": "', '"sha256": "0', 1)
    )
    # Unusable input: exit 2 and one line on stderr (the generic rule of cli.main).
    code = cli.main(
        ["golden", "verify", str(directory), "--op", "neocell", "--forward", "support.mutant_ports:correct_forward"]
    )
    captured = capsys.readouterr()
    assert code == 2 and captured.err.startswith("neocell-ref: error: ") and "sha256" in captured.err, captured
    code = cli.main(
        [
            "golden",
            "verify",
            str(directory),
            "--op",
            "neocell",
            "--forward",
            "support.mutant_ports:correct_forward",
            "--exclude",
            "k7*",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "PATTERN=REASON" in err, f"exit status {code}, stderr {err!r}"
    code = cli.main(["golden", "verify", str(directory), "--op", "neocell", "--forward", "no_such_module:f"])
    err = capsys.readouterr().err
    assert code == 2 and "no_such_module" in err, f"exit status {code}, stderr {err!r}"


# ---------------------------------------------------------------------------- layers and the model


LAYER_OPS = sorted({kind for _, kind, _, _ in LAYER_CASES_CORE})


@pytest.mark.parametrize("op", LAYER_OPS)
def test_reference_layers_pass_their_golden_sets(golden64, golden32, op):
    forward, backward = getattr(layers, f"{op}_forward"), getattr(layers, f"{op}_backward")
    for directory in (golden64, golden32):
        report = verify_golden(directory, op, forward, backward)
        assert report.passed, report.table()
        assert any(r.array.startswith("grad_") for r in report.results), f"{op}: no gradient compared"


@pytest.mark.parametrize("dtype_fixture", ["golden64", "golden32"])
def test_reference_model_passes_its_golden_set(request, dtype_fixture):
    report = verify_golden(
        request.getfixturevalue(dtype_fixture),
        "model",
        mutant_ports.correct_model_forward,
        mutant_ports.correct_model_backward,
    )
    assert report.passed, report.table()
    arrays = {r.array for r in report.results}
    assert {"logits_eval", "logits_train", "grad_x"} <= arrays and any(a.startswith("grad/") for a in arrays), (
        f"arrays compared: {sorted(arrays)}"
    )


def test_vanishing_bias_gradient_is_compared_against_its_layer(golden32):
    """fc_2.bias feeds a training-mode BatchNorm, so its exact gradient is 0: the
    normwise scale must come from the layer's weight gradient, not from the noise."""
    manifest = load_manifest(golden32)
    case = next(c for c in manifest["cases"] if c["name"] == "tiny_released_options")
    tol = case["tolerances"]["grad/stage_1.0.ops.content.fc_2.bias"]
    assert tol["scale_with"] == ["grad/stage_1.0.ops.content.fc_2.bias", "grad/stage_1.0.ops.content.fc_2.weight"], (
        f"scale_with {tol['scale_with']}"
    )


@pytest.mark.parametrize(
    "op, forward, failing_case",
    [
        ("batchnorm", mutant_ports.batchnorm_unbiased_forward, "batchnorm_training"),
        ("gelu", mutant_ports.gelu_tanh_forward, "gelu"),
    ],
)
@pytest.mark.parametrize("dtype_fixture", ["golden64", "golden32"])
def test_layer_porting_bug_is_caught(request, dtype_fixture, op, forward, failing_case):
    report = verify_golden(request.getfixturevalue(dtype_fixture), op, forward)
    assert not report.passed and {r.case for r in report.failures} == {failing_case}, report.table()


@pytest.mark.parametrize("bug", mutant_ports.MODEL_BUGS)
def test_model_porting_bug_is_caught(golden64, bug):
    report = verify_golden(
        golden64, "model", getattr(mutant_ports, f"model_{bug}_forward"), getattr(mutant_ports, f"model_{bug}_backward")
    )
    assert not report.passed, report.table()
    assert "tiny_default_options" in {r.case for r in report.failures}, report.table()
    if bug == "batchnorm_unbiased":  # a training-only bug: inference logits still agree
        assert all(r.passed for r in report.results if r.array == "logits_eval"), report.table()


def test_cli_verifies_the_model(golden64, capsys):
    code = cli.main(
        [
            "golden",
            "verify",
            str(golden64),
            "--op",
            "model",
            "--forward",
            "support.mutant_ports:model_gelu_tanh_forward",
        ]
    )
    out = capsys.readouterr().out
    assert code == 1 and "logits_eval" in out and "FAIL" in out, f"exit status {code}, stdout:\n{out}"


# ======================================================================================
# `neocell-ref golden verify --exec`: ports that are programs, verified through the CLI.
#
# The exec runner itself (folders, case.json, every misbehaviour of a port) is tested in
# tests/verify/test_exec_port.py; here the verifier around it: the reference C port
# (examples/c_port) passes the float64 and float32 core sets through the command line,
# a planted-bug Python port fails (with a diagnosis), a port that fails one run fails
# that case with its stderr tail in the report while the run goes on, and unusable
# commands or option mixes exit 2 with one line, before any port runs.
# ======================================================================================
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
    binary, code, output = build_c_port(tmp_path_factory.mktemp("c_port"))
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
    assert all(r["passed"] and r["diagnosis"] is None for r in rows), (
        f"rows failing or diagnosed: {[r for r in rows if not (r['passed'] and r['diagnosis'] is None)]}"
    )
    assert report["port"].startswith("exec ") and f"timeout {DEFAULT_TIMEOUT:g} s" in report["port"], report["port"]
    assert "port: exec" in out and "all outputs" in out, f"port line missing from stdout:\n{out}"


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
    assert sorted({r["array"] for r in report["results"]}) == ["y"] and len(report["results"]) == len(CASES), (
        f"arrays {sorted({r['array'] for r in report['results']})}, "
        f"{len(report['results'])} rows for {len(CASES)} cases"
    )
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
    assert report["cases_run"] == len(CASES), f"cases_run {report['cases_run']}, expected {len(CASES)}"
    rows = report["results"]
    assert [r["case"] for r in rows] == CASES and {r["array"] for r in rows} == {"(exec run)"}, (
        f"cases {[r['case'] for r in rows]}, arrays {sorted({r['array'] for r in rows})}"
    )
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
    diagnosed when a Python port returns it, tests/verify/test_diagnosis.py).
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
    assert row["array"] == "(exec run)" and row["diagnosis"] is None, row
    assert "output y.npy: has shape (2, 6, 5, 4), expected (2, 6, 4, 3)" in row["message"], row["message"]


def test_run_exec_and_compare_shares_the_comparison(script, sets):
    """The API: outputs of one run compared like run_and_compare's (one row per expected array)."""
    manifest = load_manifest(sets["float64"])
    case = next(c for c in manifest["cases"] if c["name"] == "k7_input_1x1")
    arrays = load_case(sets["float64"], case)
    rows = run_exec_and_compare(script("correct"), "neocell", case["name"], case, arrays)
    assert sorted(r.array for r in rows) == sorted(case["tolerances"]), (
        f"rows for {sorted(r.array for r in rows)}, expected {sorted(case['tolerances'])}"
    )
    assert all(r.passed and r.diagnosis is None for r in rows), (
        f"rows failing or diagnosed: {[r.describe() for r in rows if not (r.passed and r.diagnosis is None)]}"
    )
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
        (["--exec", "true {in} {out}", "--forward", "support.mutant_ports:correct_forward"], ["mutually exclusive"]),
        (["--exec", "true {in} {out}", "--backward", "support.mutant_ports:correct_backward"], ["mutually exclusive"]),
        (["--forward", "support.mutant_ports:correct_forward", "--forward-only"], ["apply to --exec"]),
        (["--forward", "support.mutant_ports:correct_forward", "--timeout", "5"], ["apply to --exec"]),
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


def test_check_digest_normalises_and_refuses_by_value():
    from neocell_ref.verify.golden import check_digest

    digest = "ab" * 32
    got = check_digest(f"  {digest.upper()}\n")
    assert got == digest, f"check_digest kept case or whitespace: {got!r}"
    assert check_digest(None) is None, "no digest given is no digest to check"
    with raises_naming(TypeError, "digest must be a SHA-256 hex string", "int 12345"):
        check_digest(12345)
    with raises_naming(ValueError, "64 hex digits", "'abc'"):
        check_digest("abc")
    with raises_naming(ValueError, "64 hex digits", "'" + "g" * 64 + "'"):
        check_digest("g" * 64)
