"""Hostile input for the golden verifier and the conformance kit (issue 9, sections 1-3).

Every reproducer of a verdict that could be fooled is a test here, asserting the exact
behaviour: the error type and the words naming the field, or the exit status of
``neocell-ref golden`` (2 with one line on stderr, never a traceback). Each integrity
check has a test-of-the-test: the tampering it exists to catch is caught, and the
untampered copy of the same set passes.
"""

import hashlib
import io
import json
import os
import shutil
import zipfile

import mutant_ports
import numpy as np
import pytest

import neocell_ref as nr
from neocell_ref import cli, layers
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
    assert_model_matches,
    assert_neocell_matches,
    check_neocell_case,
)
from neocell_ref.verify.tolerances import DEFAULT_SEED, case_rng

FORWARD = ["--forward", "mutant_ports:correct_forward"]
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
    assert "Traceback" not in err
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
    assert result.describe().startswith("case: y: ")


def test_real_floating_results_of_any_precision_still_pass():
    expected = np.linspace(-1, 1, 6).reshape(2, 3)
    for got in (expected, expected.astype(np.float32), expected.tolist()):
        assert compare_arrays("c", "y", got, expected, rtol=1e-6).passed


def test_an_output_whose_conversion_exits_fails_that_array():
    class Exits:
        def __array__(self, dtype=None, copy=None):
            raise SystemExit(0)

    result = compare_arrays("c", "y", Exits(), np.ones(2), rtol=1.0)
    assert not result.passed and "SystemExit" in result.message


def test_complex_port_fails_golden_verify(golden, capsys):
    code, out, err = verify_cli(capsys, golden, port=["--forward", "mutant_ports:complex_forward"])
    assert code == 1, (out, err)
    assert "FAILED (0/15 arrays pass" in out and "complex" in out


def test_complex_port_fails_the_kit():
    with pytest.raises(AssertionError, match="complex"):
        assert_neocell_matches(mutant_ports.complex_forward, max_examples=0)
    with pytest.raises(AssertionError, match="complex"):
        assert_neocell_matches(mutant_ports.complex_forward, golden=False, max_examples=3, shrink=False)
    with pytest.raises(AssertionError, match="complex"):
        assert_layer_matches("gelu", mutant_ports.gelu_complex_forward)


def test_complex_model_fails_the_kit():
    def forward(x, state, config, training):
        return mutant_ports.correct_model_forward(x, state, config, training) + 1e6j

    with pytest.raises(AssertionError, match="complex"):
        assert_model_matches(forward)


def test_port_calling_sys_exit_fails_each_case_and_the_run_goes_on(golden, capsys):
    code, out, err = verify_cli(
        capsys, golden, "--backward", "mutant_ports:correct_backward", port=["--forward", "mutant_ports:exit_forward"]
    )
    assert code == 1, (out, err)
    failures = [line for line in out.splitlines() if line.startswith("  FAIL ")]
    assert len(failures) == len(NEOCELL_CASES_CORE), out
    assert all("port's forward raised SystemExit: 0" in line for line in failures)
    # the backward still ran on every case and passed
    assert out.count(" grad_x ") == len(NEOCELL_CASES_CORE) and " ok " in out


def test_keyboard_interrupt_aborts(golden, capsys):
    with pytest.raises(KeyboardInterrupt):
        verify_golden(golden, "neocell", mutant_ports.interrupt_forward)
    with pytest.raises(KeyboardInterrupt):
        assert_neocell_matches(mutant_ports.interrupt_forward, max_examples=0)
    code, out, err = verify_cli(capsys, golden, port=["--forward", "mutant_ports:interrupt_forward"])
    assert code == 2 and err == "neocell-ref: interrupted\n" and out == ""


def test_exception_text_of_a_port_reaches_the_report(golden):
    """The hook for ports outside Python: a wrapper raising with the port's stderr tail."""
    report = verify_golden(golden, "neocell", mutant_ports.crash_log_forward)
    assert not report.passed
    message = report.failures[0].message
    assert message.startswith("port's forward raised RuntimeError: the port exited with status 1")
    assert message.endswith(mutant_ports.CRASH_LOG_LAST_LINE) and len(message) < 4100
    assert mutant_ports.CRASH_LOG_LAST_LINE in report.table()
    assert json.loads(json.dumps(report.to_dict()))["results"][0]["message"] == message


def test_a_port_raising_in_one_direction_does_not_hide_the_other(golden):
    report = verify_golden(golden, "neocell", mutant_ports.exit_forward, mutant_ports.correct_backward)
    assert {r.array for r in report.failures} == {"(forward call)"}
    assert report.results and any(r.passed for r in report.results)


# ---------------------------------------------------------------------- tolerance overrides
@pytest.mark.parametrize("value", ["inf", "1e300", "nan", "0", "-1", "8193"])
def test_rtol_scale_out_of_bounds_is_exit_2(golden, capsys, value):
    code, out, err = verify_cli(capsys, golden, "--rtol-scale", value, port=["--forward", "mutant_ports:zero_forward"])
    assert_unusable(code, out, err, "rtol_scale")


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(rtol=float("inf")), ValueError, "rtol must be finite"),
        (dict(rtol=0.0), ValueError, "rtol must be finite and > 0"),
        (dict(rtol="1e-3"), TypeError, "rtol must be a real number"),
        (dict(atol=-1.0), ValueError, "atol must be finite and >= 0"),
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


def test_loosening_is_printed_and_recorded(golden, capsys, tmp_path):
    report_file = tmp_path / "report.json"
    code, out, err = verify_cli(capsys, golden, "--rtol-scale", "4", "--json", str(report_file))
    assert code == 0, (out, err)
    header = out.splitlines()[:4]
    assert any("tolerances: LOOSENED by override: rtol_scale 4" in line for line in header), header
    report = json.loads(report_file.read_text())
    assert report["loosened"] is True and report["tolerance_overrides"]["rtol_scale"] == 4.0
    code, out, err = verify_cli(capsys, golden, "--rtol-scale", "0.5", "--json", str(report_file))
    assert "tightened (no array loosened)" in out
    assert json.loads(report_file.read_text())["loosened"] is False
    code, out, err = verify_cli(capsys, golden, "--json", str(report_file))
    assert "tolerances: as stored in the set" in out
    assert json.loads(report_file.read_text())["tolerance_overrides"] == {"rtol": None, "atol": None, "rtol_scale": 1.0}


# ---------------------------------------------------------------------- checking nothing
@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(golden=False, max_examples=0), ValueError, "checks nothing"),
        (dict(max_examples=-1), ValueError, "max_examples must be >= 0"),
        (dict(golden=False, max_examples=-5), ValueError, "max_examples"),
        (dict(max_examples=2.5), TypeError, "max_examples must be an integer"),
        (dict(layers="bogus"), TypeError, "layers must be a hypothesis strategy"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(golden="yes"), TypeError, "golden must be True or False"),
    ],
)
def test_kit_refuses_to_check_nothing_and_bad_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        assert_neocell_matches(mutant_ports.zero_forward, **kwargs)


def test_kit_refuses_what_is_not_a_port():
    with pytest.raises(TypeError, match="port_forward must be callable"):
        assert_neocell_matches("mutant_ports:correct_forward")
    with pytest.raises(TypeError, match="port_backward must be callable"):
        assert_layer_matches("gelu", layers.gelu_forward, 3)
    with pytest.raises(TypeError, match="case must be a NeoCellCase"):
        check_neocell_case(mutant_ports.correct_forward, None, ("specs", "x"))


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
    code, out, err = verify_cli(capsys, golden, "--backward", "mutant_ports:correct_backward")
    assert code == 0 and "PASSED" in out, (out, err)
    assert load_manifest(golden) == read_manifest(golden)


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
    "14 of 15 cases deleted": (_delete_cases, "1 cases instead of 15"),
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
    code, out, err = verify_cli(capsys, golden, port=["--forward", "mutant_ports:zero_forward"])
    assert_unusable(code, out, err, words, "manifest.json" if what != "seed changed" else VICTIM)


def test_edited_input_with_updated_hash_is_refused(golden, capsys):
    """Inputs are re-drawn and compared bit for bit, so an input edited with care (file
    hash updated) is caught; expected values are pinned by the hash and the digest."""
    members = victim_members(golden)
    with zipfile.ZipFile(io.BytesIO(npz(members))) as zf, zf.open("x.npy") as fh:
        x = np.lib.format.read_array(fh)
    x[0, 0, 0, 0] += 1.0
    members["x.npy"] = npy(x)
    rewrite_case_file(golden, npz(members))
    assert_unusable(*verify_cli(capsys, golden), f"case '{VICTIM}' (neocell)", "input x is not what")


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
    assert len(buffer.getvalue()) < 200_000
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
    assert verify_golden(golden, "neocell", mutant_ports.correct_forward).passed


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
    assert set_digest(golden) == digest
    report_file = tmp_path / "r.json"
    code, out, err = verify_cli(capsys, golden, "--digest", digest.upper(), "--json", str(report_file))
    assert code == 0 and f"set digest (SHA-256 of manifest.json): {digest}" in out, (out, err)
    assert json.loads(report_file.read_text())["golden_set"]["digest_sha256"] == digest
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
        (["--forward", "mutant_ports:no_such_function"], ["has no attribute 'no_such_function'"]),
        (["--forward", "mutant_ports:not_callable"], ["is not callable"]),
        (["--backward", "mutant_ports"], ["expected 'package.module:function'"]),
    ]
    for port, words in cases:
        assert_unusable(*verify_cli(capsys, golden, port=port), *words)
    with pytest.raises(TypeError, match="forward must be callable"):
        verify_golden(golden, "neocell", "mutant_ports:correct_forward")


# ---------------------------------------------------------------------- output paths
def test_unwritable_json_path_is_refused_before_running(golden, tmp_path, capsys):
    for path, words in [(tmp_path / "missing" / "r.json", "does not exist"), (tmp_path, "is a folder")]:
        assert_unusable(*verify_cli(capsys, golden, "--json", str(path)), "--json", words)
    assert_unusable(*verify_cli(capsys, golden, "--json", ""), "--json is empty")


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
    assert (target / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"]


def test_export_replaces_a_previous_set_exactly(tmp_path):
    target = tmp_path / "g"
    export_golden(target, suite="full", operations=["neocell"])
    assert (target / "neocell__neonext_t_stage1.npz").exists()
    export_golden(target, suite="core", operations=["neocell"])
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted(["manifest.json"] + [f"neocell__{n}.npz" for n, _, _ in NEOCELL_CASES_CORE]), names
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"], "temporary folders left behind"
    assert verify_golden(target, "neocell", mutant_ports.correct_forward).passed
    # a previous set plus a foreign file is not "a previous set": refused, untouched
    (target / "report.json").write_text("{}")
    with pytest.raises(ValueError, match="report.json is not a file of the golden set"):
        export_golden(target, operations=["neocell"])
    assert (target / "report.json").exists()


def test_export_into_an_empty_folder(tmp_path):
    target = tmp_path / "empty"
    target.mkdir()
    export_golden(target, operations=["gelu"])
    assert (target / "manifest.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


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
    assert not (tmp_path / "g").exists()


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


def test_adding_a_case_does_not_reseed_the_others(monkeypatch):
    import neocell_ref.verify.golden_ops as golden_ops

    before = {
        name: make_case("neocell", (name, spec, shape), np.float64, 3)[1]["x"]
        for name, spec, shape in NEOCELL_CASES_CORE
    }
    extra = ("new_case_first", [{"kernel": 3, "channels": 1}], (1, 1, 3, 3))
    monkeypatch.setattr(golden_ops, "NEOCELL_CASES_CORE", [extra] + list(NEOCELL_CASES_CORE))
    for case in OPERATIONS["neocell"].cases("core")[1:]:
        assert np.array_equal(make_case("neocell", case, np.float64, 3)[1]["x"], before[case[0]]), case[0]
    # and the key really is the name, the operation and the seed
    draw = lambda *key: case_rng(*key).standard_normal(4)  # noqa: E731
    assert not np.array_equal(draw("neocell", "a", 0), draw("neocell", "b", 0))
    assert not np.array_equal(draw("neocell", "a", 0), draw("gelu", "a", 0))
    assert not np.array_equal(draw("neocell", "a", 0), draw("neocell", "a", 1))
    assert np.array_equal(draw("neocell", "a", 0), draw("neocell", "a", 0))


def test_derived_manifest_is_the_exported_one(base):
    exported = read_manifest(base)
    derived = derive_manifest(operations=["neocell"])
    for manifest in (exported, derived):
        for key in ("generator", "numpy_version", "python_version"):
            manifest.pop(key)
    assert exported == derived


def test_run_and_compare_rejects_loose_overrides_before_the_port_runs():
    calls = []

    def port(*args):
        calls.append(args)
        return mutant_ports.correct_forward(*args)

    name, spec, shape = NEOCELL_CASES_CORE[0]
    meta, arrays, _, tolerances = make_case("neocell", (name, spec, shape), np.float64, 0)
    with pytest.raises(ValueError, match="too loose"):
        run_and_compare("neocell", name, {**meta, "tolerances": tolerances}, arrays, port, None, rtol=0.5)
    assert calls == []
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
    assert calls == [] and all(r.passed for r in check_neocell_case(port, None, case)) and calls


def test_json_write_failing_after_the_run_is_exit_2_without_traceback(golden, tmp_path, capsys, monkeypatch):
    """If the --json file still cannot be written after the checks (a full disk, a
    permission changed meanwhile), the status is 2 with one line, never a traceback."""
    from pathlib import Path

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_text", refuse)
    code, out, err = verify_cli(capsys, golden, "--json", str(tmp_path / "r.json"))
    assert code == 2 and "PASSED" in out, (out, err)
    assert err.startswith("neocell-ref: error: ") and "Permission denied" in err and err.count("\n") == 1


def test_export_prints_the_set_digest(tmp_path, capsys):
    code, out, err = run(capsys, "export", str(tmp_path / "g"))
    assert code == 0, err
    assert f"set digest (SHA-256 of manifest.json): {set_digest(tmp_path / 'g')}" in out


# ==================================================================================== fuzz
# Arguments of the verifier, the kit and the CLI: a correct result or a named
# TypeError/ValueError (exit status 2 on the command line), never anything else.
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

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
    assert (r is None or (np.isfinite(r) and r > 0)) and (a is None or (np.isfinite(a) and a >= 0))
    assert np.isfinite(s) and 0 < s <= MAX_RTOL_SCALE


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
        assert exc.code == 2
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
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["g"], "temporary folders left behind"
