"""Golden vectors: determinism, manifest integrity, the reference passing its own set,
and realistic porting bugs being caught (mutation tests)."""

import hashlib
import json

import mutant_ports
import numpy as np
import pytest

import neocell_ref as nr
from neocell_ref import cli, layers
from neocell_ref.architecture import NeoNeXtConfig, describe
from neocell_ref.spec import check_input_size, parse_specs
from neocell_ref.verify.golden import (
    FORMAT_VERSION,
    GoldenError,
    compare_arrays,
    export_golden,
    load_case,
    load_manifest,
    verify_golden,
)
from neocell_ref.verify.golden_ops import LAYER_CASES_CORE, NEOCELL_CASES_CORE, NEOCELL_CASES_FULL, OPERATIONS
from neocell_ref.verify.tolerances import MODEL_RTOL, unit_roundoff


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
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["numpy_version"] == np.__version__
    assert manifest["dtype"] == "float64" and manifest["suite"] == "core"
    assert isinstance(manifest["seed"], int)
    names = [(c["op"], c["name"]) for c in manifest["cases"]]
    expected_names = [(op, name) for op in OPERATIONS for name, _, _ in OPERATIONS[op].cases("core")]
    assert names == expected_names, f"case list {names}"
    assert [n for op, n in names if op == "neocell"] == [name for name, _, _ in NEOCELL_CASES_CORE]
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
                assert tol["rtol"] == MODEL_RTOL["float64"]["logits" if key.startswith("logits") else "grad"]
                continue
            u = unit_roundoff(np.float64)
            expected_rtol = 2.0 * (tol["accumulation_length"] + 1) * u
            assert tol["rtol"] == pytest.approx(expected_rtol), f"{case['name']}/{key}: rtol {tol['rtol']}"
            if tol["bound"] is not None:
                assert tol["bound"] in arrays, f"{case['name']}/{key}: bound array {tol['bound']} missing"
            else:
                assert tol["norm"] == "max", f"{case['name']}/{key}: neither a bound nor normwise"
        with open(golden64 / case["file"], "rb") as fh:
            assert hashlib.sha256(fh.read()).hexdigest() == case["sha256"]


def test_float32_set_stores_float32_inputs_and_float64_answers(golden32):
    manifest = load_manifest(golden32)
    case = manifest["cases"][0]
    assert case["op"] == "neocell"
    arrays = load_case(golden32, case)
    assert arrays["x"].dtype == np.float32 and arrays["weight_a_0"].dtype == np.float32
    assert arrays["y"].dtype == np.float64
    assert manifest["tolerance_policy"]["unit_roundoff"] == 2.0**-24


def test_curated_cases_cover_every_rule():
    """The core suite must exercise each rule of SPEC sections 2-6 at least once."""
    seen = set()
    for name, specs, shape in NEOCELL_CASES_CORE:
        groups = parse_specs(specs)
        h, w = shape[2:]
        check_input_size(groups, h, w)
        forms = {("h_in" in g and "h") or ("kernel_a" in g and "ab") or "k" for g in specs}
        seen |= {f"form_{f}" for f in forms}
        if len(groups) > 1:
            seen.add("mixed_groups")
        for g in groups:
            if g.shift_a != g.shift_b:
                seen.add("shift_a_ne_shift_b")
            if g.shift_a and g.channels % g.subgroups_a:
                seen.add("uneven_subgroups")
            if g.shift_a and g.channels < g.subgroups_a:
                seen.add("fewer_channels_than_subgroups")
            if g.shift_a and g.max_shift_a == h:
                seen.add("max_shift_equals_size")
            if g.h_out < g.h_in:
                seen.add("down_sampling")
            if g.h_out > g.h_in:
                seen.add("up_sampling")
            if g.h_in != g.h_out and (h * g.h_out) % g.h_in:
                seen.add("floor_output_size")
            if g.h_in == g.h_out and (h % g.h_in or w % g.w_in):
                seen.add("partial_tiles")
            if h < g.h_in and w < g.w_in:
                seen.add("input_smaller_than_kernel")
        if (h, w) == (1, 1):
            seen.add("input_1x1")
        if h != w:
            seen.add("rectangular")
        seen |= {f"shift_{g.shift_a}" for g in groups if g.h_in == 7}
    required = {
        "form_h",
        "form_ab",
        "form_k",
        "mixed_groups",
        "shift_a_ne_shift_b",
        "uneven_subgroups",
        "fewer_channels_than_subgroups",
        "max_shift_equals_size",
        "down_sampling",
        "up_sampling",
        "floor_output_size",
        "partial_tiles",
        "input_smaller_than_kernel",
        "input_1x1",
        "rectangular",
    } | {f"shift_{s}" for s in range(0, 7)}
    assert required <= seen, f"rules not covered by the core golden suite: {sorted(required - seen)}"


def test_full_suite_cases_are_valid():
    for name, specs, shape in NEOCELL_CASES_FULL:
        groups = parse_specs(specs)
        assert sum(g.channels for g in groups) == shape[1], name
        check_input_size(groups, *shape[2:])


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


# ---------------------------------------------------------------------------- the reference passes
@pytest.mark.parametrize("method", ["loop", "patchwise", "blockdiag"])
def test_reference_passes_its_own_float64_set(golden64, method):
    report = verify_golden(golden64, "neocell", *_methods(method))
    assert report.passed, report.table()
    assert len(report.results) == sum(2 + 2 * len(s) for _, s, _ in NEOCELL_CASES_CORE)


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
    assert report.excluded and all(reason for _, reason in report.excluded)


# ---------------------------------------------------------------------------- comparison
def test_compare_arrays_reports_worst_element():
    expected = np.zeros((2, 3))
    got = expected.copy()
    got[1, 2] = 1e-3
    got[0, 1] = 1e-4
    result = compare_arrays("c", "y", got, expected, rtol=0.0, atol=1e-5)
    assert not result.passed and result.index == (1, 2) and result.got == 1e-3
    assert result.ratio == pytest.approx(100.0)
    assert "(1, 2)" in result.describe()
    assert not compare_arrays("c", "y", np.zeros((3, 2)), expected, rtol=1.0).passed
    nan = expected.copy()
    nan[0, 0] = np.nan
    assert not compare_arrays("c", "y", nan, expected, rtol=1.0, atol=1.0).passed


# ---------------------------------------------------------------------------- command line
def test_cli_export_and_verify(tmp_path, monkeypatch, capsys):
    directory = tmp_path / "g"
    assert cli.main(["golden", "export", str(directory)]) == 0
    report_file = tmp_path / "report.json"
    code = cli.main(
        [
            "golden",
            "verify",
            str(directory),
            "--op",
            "neocell",
            "--forward",
            "mutant_ports:correct_forward",
            "--backward",
            "mutant_ports:correct_backward",
            "--exclude",
            "k7_input_1x1=not supported by this port",
            "--json",
            str(report_file),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "k7_input_1x1" in out and "not supported by this port" in out
    report = json.loads(report_file.read_text())
    assert report["passed"] and report["excluded"] == [{"case": "k7_input_1x1", "reason": "not supported by this port"}]
    code = cli.main(
        ["golden", "verify", str(directory), "--op", "neocell", "--forward", "mutant_ports:corner_dropped_forward"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "FAIL" in out and "mixed_4p7_shift1_uneven" in out
    (directory / "manifest.json").write_text(
        (directory / "manifest.json").read_text().replace('"sha256": "', '"sha256": "0', 1)
    )
    # Unusable input: exit 2 and one line on stderr (the generic rule of cli.main).
    code = cli.main(
        ["golden", "verify", str(directory), "--op", "neocell", "--forward", "mutant_ports:correct_forward"]
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
            "mutant_ports:correct_forward",
            "--exclude",
            "k7*",
        ]
    )
    assert code == 2 and "PATTERN=REASON" in capsys.readouterr().err
    code = cli.main(["golden", "verify", str(directory), "--op", "neocell", "--forward", "no_such_module:f"])
    assert code == 2 and "no_such_module" in capsys.readouterr().err


# ---------------------------------------------------------------------------- layers and the model
def test_every_model_layer_kind_has_golden_cases():
    kinds = {layer.kind for layer in describe(NeoNeXtConfig(layer_scale_init_value=0.5, drop_path=0.1), 224).layers()}
    covered = {kind for _, kind, _, _ in LAYER_CASES_CORE} | {"neocell"}
    assert kinds <= covered, f"layer kinds of NeoNeXt without golden cases: {sorted(kinds - covered)}"
    modes = {opts.get("training") for _, kind, _, opts in LAYER_CASES_CORE if kind == "batchnorm"}
    assert modes == {True, False}, "BatchNorm needs a training and an inference case"


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
    assert {"logits_eval", "logits_train", "grad_x"} <= arrays and any(a.startswith("grad/") for a in arrays)


def test_vanishing_bias_gradient_is_compared_against_its_layer(golden32):
    """fc_2.bias feeds a training-mode BatchNorm, so its exact gradient is 0: the
    normwise scale must come from the layer's weight gradient, not from the noise."""
    manifest = load_manifest(golden32)
    case = next(c for c in manifest["cases"] if c["name"] == "tiny_released_options")
    tol = case["tolerances"]["grad/stage_1.0.ops.content.fc_2.bias"]
    assert tol["scale_with"] == ["grad/stage_1.0.ops.content.fc_2.bias", "grad/stage_1.0.ops.content.fc_2.weight"]


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
    assert "tiny_default_options" in {r.case for r in report.failures}
    if bug == "batchnorm_unbiased":  # a training-only bug: inference logits still agree
        assert all(r.passed for r in report.results if r.array == "logits_eval"), report.table()


def test_cli_verifies_the_model(golden64, capsys):
    code = cli.main(
        ["golden", "verify", str(golden64), "--op", "model", "--forward", "mutant_ports:model_gelu_tanh_forward"]
    )
    out = capsys.readouterr().out
    assert code == 1 and "logits_eval" in out and "FAIL" in out
