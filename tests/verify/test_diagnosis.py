"""The diagnosis of failing arrays (neocell_ref.verify.diagnosis), proven on planted-bug ports.

Every mutant port of tests/support/mutant_ports.py is a realistic porting mistake written
independently of the package. Each must be diagnosed with exactly its own defect id
on every array it makes fail, wherever the defect's variant applies,

* through ``golden verify`` with Python callables (float64 and float32 sets),
* through ``golden verify --exec`` (the NeoCell mutants as programs speaking the
  exec protocol, the script of tests/support/ports.py),
* in the assertion message of the conformance kit (``assert_*_matches``);

and a correct port gets no diagnosis on any set this package exports. The arrays
that legitimately get none are listed in :data:`NO_DIAGNOSIS`, each with its reason.
The mutants' hand-derived backward functions are checked by finite differences, and
a diagnosis that crashes must neither crash the verifier nor change a verdict.
"""

import json
import re
import sys

import numpy as np
import pytest
from support import mutant_ports as mp
from support.paths import REPO
from support.ports import PORT

from neocell_ref import layers
from neocell_ref.cli import main
from neocell_ref.verify.diagnosis import DEFECTS, Defect, diagnose
from neocell_ref.verify.golden import (
    _check_set_args,
    _effective,
    _scale,
    compare_outputs,
    export_golden,
    load_case,
    load_manifest,
    verify_golden,
)
from neocell_ref.verify.golden_ops import OPERATIONS
from neocell_ref.verify.gradcheck import check_gradients
from neocell_ref.verify.testing import (
    assert_layer_matches,
    assert_model_matches,
    assert_neocell_matches,
)
from neocell_ref.verify.tolerances import allowed_error

#: Every dtype ``golden export`` accepts (docs/porting.md section 4), written here rather
#: than asked of the code under test, so that a dtype export stopped accepting fails
#: (test_every_export_dtype_is_accepted) instead of quietly removing its tests.
EXPORT_DTYPES = ["float64", "float32", "float16", "bfloat16"]


@pytest.mark.parametrize("dtype", EXPORT_DTYPES)
def test_every_export_dtype_is_accepted(dtype):
    suite, name, seed, ops = _check_set_args("core", dtype, 0, None)  # raises for a dtype export refuses
    assert name == dtype and "neocell" in ops, f"export of {dtype}: read as {name!r} with operations {ops}"


#: NeoCell mutants -> their defect id.
NEOCELL_BUGS = {
    "corner_dropped": "shift-corner-dropped",
    "split_ceil": "subgroup-split-rounded-up",
    "round_size": "output-size-rounded",
    "swap_ab": "kernels-swapped",
    "transpose_a": "kernel-transposed",
    "float32_accumulation": "reduced-precision",
}
#: Model mutants -> their defect id.
MODEL_BUGS = {
    "batchnorm_unbiased": "batchnorm-unbiased-variance",
    "gelu_tanh": "gelu-tanh-approximation",
    "float32": "reduced-precision",
}
#: Layer mutants: op -> (forward, backward, defect id).
LAYER_MUTANTS = {
    "batchnorm": (mp.batchnorm_unbiased_forward, mp.batchnorm_unbiased_backward, "batchnorm-unbiased-variance"),
    "gelu": (mp.gelu_tanh_forward, mp.gelu_tanh_backward, "gelu-tanh-approximation"),
}
#: Mutants that compute in float32: on a float32 set that is the set's own precision,
#: so they pass there and nothing is diagnosed.
PRECISION_BUGS = {"float32_accumulation", "float32"}

#: Failing rows that legitimately carry no defect id: ``(bug, case, array) -> diagnosis``
#: (``None``: the port returned nothing to compare; ``[]``: compared, no variant applies).
NO_DIAGNOSIS = {
    # The rounded output size makes y one row/column too large (diagnosed); the mutant's
    # backward then multiplies the stored grad_y of the true size with matrices of the
    # rounded size and raises: there is no gradient to compare.
    ("round_size", "down_2to1_9x7", "(backward call)"): None,
    # ka3_kb5_shift1: swapping puts B (3 x 3 after the transpose) where A belongs, on an
    # axis whose channel shifts reach 4 (k = 5, shift 1). A kernel smaller than its shift
    # has no corner to wrap, so the kernels-swapped variant refuses the case (what such a
    # port computes is arbitrary) and y gets "no known defect matches". The mutant's
    # backward raises on the same mismatch: nothing to compare.
    ("swap_ab", "ka3_kb5_shift1", "y"): [],
    ("swap_ab", "ka3_kb5_shift1", "(backward call)"): None,
}


@pytest.fixture(scope="module")
def golden_set(tmp_path_factory):
    """``golden_set(dtype)``: the core set of ``dtype`` with every operation, exported once."""
    root, made = tmp_path_factory.mktemp("diagnosis_sets"), {}

    def get(dtype):
        if dtype not in made:
            export_golden(root / dtype, dtype=dtype)
            made[dtype] = root / dtype
        return made[dtype]

    return get


def _case_name(label):
    """The golden case name of a report row (the kit names it ``golden case 'NAME'``)."""
    match = re.fullmatch(r"golden case '(.+)'", label)
    return match.group(1) if match else label


def assert_own_diagnosis(rows, bug, own):
    """Every failing row is diagnosed exactly ``[own]``, or is listed in :data:`NO_DIAGNOSIS`.

    ``rows``: ``(case, array, passed, diagnosis)`` tuples. Returns the number of failing
    rows and the NO_DIAGNOSIS entries of ``bug`` that did not fail.
    """
    failing = [r for r in rows if not r[2]]
    assert failing, f"the {bug} mutant passed: nothing was diagnosed"
    for case, array, _, diagnosis in failing:
        key = (bug, _case_name(case), array)
        want = NO_DIAGNOSIS.get(key, [own])
        assert diagnosis == want, f"{key}: diagnosed {diagnosis}, expected {want}"
    seen = {(bug, _case_name(c), a) for c, a, p, _ in failing}
    listed = {k for k in NO_DIAGNOSIS if k[0] == bug}
    return len(failing), listed - seen


def report_rows(report):
    return [(r.case, r.array, r.passed, r.diagnosis) for r in report.results]


def correct_layer(kind):
    """The reference layer in float64 on the stored inputs: a correct port of any set."""
    forward, backward = getattr(layers, f"{kind}_forward"), getattr(layers, f"{kind}_backward")

    def f64(args):
        return [None if a is None else np.asarray(a, dtype=np.float64) for a in args]

    return (lambda *a, **o: forward(*f64(a), **o)), (lambda g, *a, **o: backward(*f64((g, *a)), **o))


def correct_model_forward(x, state, config, training):
    return mp.model_forward(np.asarray(x, np.float64), _state64(state), config, training)


def correct_model_backward(grad_logits, x, state, config):
    return mp.model_backward(np.asarray(grad_logits, np.float64), np.asarray(x, np.float64), _state64(state), config)


def _state64(state):
    return {k: v if k.endswith("num_batches_tracked") else np.asarray(v, np.float64) for k, v in state.items()}


# ======================================================================================
# through golden verify with Python callables
# ======================================================================================
@pytest.mark.parametrize("dtype", EXPORT_DTYPES)
@pytest.mark.parametrize("bug", sorted(NEOCELL_BUGS))
def test_neocell_mutant_diagnosed_through_verify(golden_set, bug, dtype):
    report = verify_golden(golden_set(dtype), "neocell", getattr(mp, f"{bug}_forward"), getattr(mp, f"{bug}_backward"))
    if bug in PRECISION_BUGS and dtype != "float64":
        assert report.passed, report.table()  # float32 arithmetic is at least this set's own precision
        return
    _, unseen = assert_own_diagnosis(report_rows(report), bug, NEOCELL_BUGS[bug])
    assert not unseen, f"rows expected without a diagnosis did not fail: {unseen}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("bug", sorted(MODEL_BUGS))
def test_model_mutant_diagnosed_through_verify(golden_set, bug, dtype):
    report = verify_golden(
        golden_set(dtype), "model", getattr(mp, f"model_{bug}_forward"), getattr(mp, f"model_{bug}_backward")
    )
    if bug in PRECISION_BUGS and dtype == "float32":
        assert report.passed, report.table()  # float32 arithmetic is this set's own precision
        return
    assert_own_diagnosis(report_rows(report), bug, MODEL_BUGS[bug])
    # Logits and gradients fail, not only a handful of arrays (the backward is consistent).
    failed = {r.array for r in report.failures}
    assert {"logits_train", "grad_x"} <= failed, failed
    assert sum(a.startswith("grad/") for a in failed) > 50, f"only {len(failed)} arrays failed"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("op", sorted(LAYER_MUTANTS))
def test_layer_mutant_diagnosed_through_verify(golden_set, op, dtype):
    forward, backward, own = LAYER_MUTANTS[op]
    report = verify_golden(golden_set(dtype), op, forward, backward)
    assert_own_diagnosis(report_rows(report), op, own)
    failed = {(r.case, r.array) for r in report.failures}
    if op == "batchnorm":  # inference normalises with the running statistics: unaffected
        assert failed == {("batchnorm_training", a) for a in ("y", "grad_x", "grad_weight")}, failed
    else:
        assert failed == {("gelu", "y"), ("gelu", "grad_x")}, failed


# ======================================================================================
# through golden verify --exec
# ======================================================================================
#: Cases each NeoCell mutant is run on as a program (each run starts Python: a few
#: cases that show the bug, plus the cases of NO_DIAGNOSIS).
EXEC_CASES = {
    "corner_dropped": ["mixed_4p7_shift1_uneven"],
    "split_ceil": ["mixed_4p7_shift1_uneven"],
    "round_size": ["down_2to1_9x7"],
    "swap_ab": ["k7_square_14x14", "ka3_kb5_shift1"],
    "transpose_a": ["k7_square_14x14"],
    "float32_accumulation": ["k5_shifta2_shiftb1"],
}


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("py_port") / "port.py"
    path.write_text(PORT.format(repo=str(REPO), tests=str(REPO / "tests")))
    return lambda mode: f"{sys.executable} {path} {mode} {{in}} {{out}}"


@pytest.mark.parametrize("bug", sorted(NEOCELL_BUGS))
def test_neocell_mutant_diagnosed_through_exec(golden_set, script, bug, capsys, tmp_path):
    directory = golden_set("float64")
    excludes = []
    for name, *_ in OPERATIONS["neocell"].cases("core"):
        if name not in EXEC_CASES[bug]:
            excludes += ["--exclude", f"{name}=not needed to show the diagnosis"]
    report_file = tmp_path / "report.json"
    code = main(
        [
            "golden",
            "verify",
            str(directory),
            "--op",
            "neocell",
            "--exec",
            script(f"mutant:{bug}"),
            *excludes,
            "--json",
            str(report_file),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, out + err
    rows = json.loads(report_file.read_text())["results"]
    runs = [r for r in rows if r["array"] == "(exec run)"]
    # One run computes every output: a mutant whose backward raises (NO_DIAGNOSIS's
    # "(backward call)" rows) or whose output has the wrong size (the runner refuses the
    # file) fails the whole run, and a failed run has no array to diagnose.
    expected_runs = {case for b, case, array in NO_DIAGNOSIS if b == bug and array == "(backward call)"}
    assert {r["case"] for r in runs} == expected_runs, runs
    odd = [r for r in runs if not (r["diagnosis"] is None and "exec port failed" in r["message"])]
    assert all(r["diagnosis"] is None and "exec port failed" in r["message"] for r in runs), (
        f"{bug}: failed runs with a diagnosis or without 'exec port failed' in the message: {odd}"
    )
    compared = [(r["case"], r["array"], r["passed"], r["diagnosis"]) for r in rows if r["array"] != "(exec run)"]
    if compared:
        assert_own_diagnosis(compared, bug, NEOCELL_BUGS[bug])
    assert out.count(f"consistent with: {NEOCELL_BUGS[bug]} — ") == sum(not p for _, _, p, _ in compared), out


# ======================================================================================
# in the conformance kit's assertion message
# ======================================================================================
def message_rows(message):
    """``(case, array, False, diagnosis)`` per failing array of a kit assertion message."""
    rows = []
    for line in message.splitlines():
        head = re.match(r"  (golden case '[^']+'): (\S+(?: call\))?): ", line)
        if head:
            rows.append([head.group(1), head.group(2), False, None])
        elif line.startswith("    consistent with: "):
            rows[-1][3] = (rows[-1][3] or []) + [line.split(": ", 1)[1].split(" — ")[0]]
        elif line == "    no known defect matches":
            rows[-1][3] = []
    return [tuple(r) for r in rows]


def kit_message(call):
    with pytest.raises(AssertionError) as excinfo:
        call()
    return str(excinfo.value)


@pytest.mark.parametrize("bug", sorted(NEOCELL_BUGS))
def test_neocell_mutant_diagnosed_by_the_kit(bug):
    forward, backward = getattr(mp, f"{bug}_forward"), getattr(mp, f"{bug}_backward")
    message = kit_message(lambda: assert_neocell_matches(forward, backward, max_examples=0))
    rows = message_rows(message)
    _, unseen = assert_own_diagnosis(rows, bug, NEOCELL_BUGS[bug])
    assert not unseen, unseen
    n_lines, n_rows = message.count("consistent with: "), sum(d != [] and d is not None for *_, d in rows)
    assert n_lines == n_rows, (
        f"{bug}: {n_lines} 'consistent with: ' lines in the kit message but {n_rows} diagnosed rows:\n{message}"
    )


def test_drawn_case_failure_is_diagnosed_by_the_kit():
    """The example hypothesis reports (shrunk) carries the diagnosis too."""
    message = kit_message(
        lambda: assert_neocell_matches(mp.transpose_a_forward, None, golden=False, max_examples=10, shrink=False)
    )
    assert "drawn case" in message and "consistent with: kernel-transposed — " in message, message
    assert len(set(re.findall(r"consistent with: (\S+)", message))) == 1, message


@pytest.mark.parametrize("bug", sorted(MODEL_BUGS))
def test_model_mutant_diagnosed_by_the_kit(bug):
    message = kit_message(
        lambda: assert_model_matches(getattr(mp, f"model_{bug}_forward"), getattr(mp, f"model_{bug}_backward"))
    )
    assert_own_diagnosis(message_rows(message), bug, MODEL_BUGS[bug])


@pytest.mark.parametrize("op", sorted(LAYER_MUTANTS))
def test_layer_mutant_diagnosed_by_the_kit(op):
    forward, backward, own = LAYER_MUTANTS[op]
    message = kit_message(lambda: assert_layer_matches(op, forward, backward))
    assert_own_diagnosis(message_rows(message), op, own)


# ======================================================================================
# a correct port, and the reference itself, are never diagnosed
# ======================================================================================
def correct_port(op):
    if op == "neocell":
        return mp.correct_forward, mp.correct_backward
    if op == "model":
        return correct_model_forward, correct_model_backward
    return correct_layer(op)


@pytest.mark.parametrize("dtype", EXPORT_DTYPES)
def test_correct_port_gets_no_diagnosis(golden_set, dtype):
    directory = golden_set(dtype)
    for op in load_manifest(directory)["operations"]:
        report = verify_golden(directory, op, *correct_port(op))
        assert report.passed, report.table()
        diagnosed = [(r.case, r.array, r.diagnosis) for r in report.results if r.diagnosis is not None]
        assert all(r.diagnosis is None for r in report.results), f"{dtype} {op}: correct port diagnosed: {diagnosed}"
        table = report.table()
        assert "consistent with" not in table and "no known defect" not in table, (
            f"{dtype} {op}: correct port's report mentions a diagnosis:\n{table}"
        )


@pytest.mark.parametrize("dtype", EXPORT_DTYPES)
def test_the_reference_answer_matches_no_defect(golden_set, dtype):
    """Offered the expected arrays themselves as a port's output, no structural defect
    explains any of them: a variant must differ from the reference to count as evidence.

    ``reduced-precision`` is left out on purpose: the exact answer *is* within the lower
    precision's tolerance of a lower-precision computation, so for an output that failed
    (only failing outputs are diagnosed) that match is the diagnosis it exists to give.
    """
    directory = golden_set(dtype)
    for case in load_manifest(directory)["cases"]:
        arrays = load_case(directory, case)
        allowed = {}
        for key, tol in case["tolerances"].items():
            rtol, atol = _effective(tol, None, None, 1.0)
            allowed[key] = allowed_error(arrays[key], rtol=rtol, atol=atol, bound=_scale(tol, arrays, key))
        failing = {key: arrays[key] for key in case["tolerances"]}
        found = diagnose(case["op"], case, arrays, failing, allowed, arrays["x"].dtype)
        found = {k: [d.id for d in v if not d.precision] for k, v in found.items()}
        assert not any(found.values()), f"{case['name']}: {found}"


# ======================================================================================
# report formats
# ======================================================================================
def test_text_and_json_report_formats(golden_set, capsys, tmp_path):
    report_file = tmp_path / "report.json"
    code = main(
        [
            "golden",
            "verify",
            str(golden_set("float64")),
            "--op",
            "neocell",
            "--forward",
            "support.mutant_ports:swap_ab_forward",
            "--backward",
            "support.mutant_ports:swap_ab_backward",
            "--json",
            str(report_file),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 1, (
        f"golden verify of the swap_ab mutant: exit status {code}, expected 1; stdout {out!r} stderr {err!r}"
    )
    lines = out.splitlines()
    swapped = DEFECTS["kernels-swapped"]
    line = next(i for i, l in enumerate(lines) if l.startswith("  FAIL k7_square_14x14: y: worst element"))
    assert lines[line + 1].strip() == (
        f"consistent with: kernels-swapped — {swapped.explanation} (docs/defects.md#kernels-swapped)"
    ), lines[line + 1]
    line = next(i for i, l in enumerate(lines) if l.startswith("  FAIL ka3_kb5_shift1: y: worst element"))
    assert lines[line + 1].strip() == "no known defect matches", lines[line + 1]
    rows = {(r["case"], r["array"]): r for r in json.loads(report_file.read_text())["results"]}
    got = rows[("k7_square_14x14", "y")]["diagnosis"]
    assert got == ["kernels-swapped"], f"JSON diagnosis of k7_square_14x14/y is {got!r}, expected ['kernels-swapped']"
    got = rows[("ka3_kb5_shift1", "y")]["diagnosis"]
    assert got == [], f"JSON diagnosis of ka3_kb5_shift1/y is {got!r}, expected []"
    got = rows[("ka3_kb5_shift1", "(backward call)")]["diagnosis"]
    assert got is None, f"JSON diagnosis of ka3_kb5_shift1/(backward call) is {got!r}, expected None"
    passing = [r for r in rows.values() if r["passed"]]
    assert passing and all(r["diagnosis"] is None for r in passing), "passing arrays are never diagnosed"


# ======================================================================================
# a diagnosis is advice: it never crashes the verifier or changes a verdict
# ======================================================================================
def _k7_case(golden_set):
    directory = golden_set("float64")
    case = next(c for c in load_manifest(directory)["cases"] if c["name"] == "k7_square_14x14")
    return case, load_case(directory, case)


def test_a_crashing_variant_explains_nothing(golden_set, monkeypatch):
    def boom(*args):
        raise RuntimeError("variant broke")

    broken = Defect("kernel-transposed", "broken on purpose", ("neocell",), boom)
    monkeypatch.setitem(DEFECTS, "kernel-transposed", broken)
    case, arrays = _k7_case(golden_set)
    got = {
        "y": mp.transpose_a_forward(
            arrays["x"], [arrays["weight_a_0"]], [arrays["weight_b_0"]], case["specs_as_written"]
        )
    }
    (row,) = compare_outputs("neocell", case["name"], case, arrays, got)
    assert not row.passed and row.diagnosis == [], row


def test_a_crashing_diagnosis_changes_no_verdict(golden_set, monkeypatch):
    import neocell_ref.verify.diagnosis

    def boom(*args, **kwargs):
        raise MemoryError("diagnosis broke")

    monkeypatch.setattr(neocell_ref.verify.diagnosis, "diagnose", boom)
    case, arrays = _k7_case(golden_set)
    got = {"y": np.array(arrays["y"]), "grad_x": np.zeros_like(arrays["grad_x"])}
    rows = {r.array: r for r in compare_outputs("neocell", case["name"], case, arrays, got)}
    assert rows["y"].passed and rows["y"].diagnosis is None, (
        f"y: passed {rows['y'].passed} (expected True), diagnosis {rows['y'].diagnosis!r} (expected None)"
    )
    assert not rows["grad_x"].passed and rows["grad_x"].diagnosis == [], (
        f"grad_x: passed {rows['grad_x'].passed} (expected False), diagnosis {rows['grad_x'].diagnosis!r} "
        "(expected [] when diagnose raises)"
    )


def test_diagnosis_can_be_switched_off(golden_set):
    case, arrays = _k7_case(golden_set)
    (row,) = compare_outputs("neocell", case["name"], case, arrays, {"y": np.zeros_like(arrays["y"])}, diagnose=False)
    assert not row.passed and row.diagnosis is None, (
        f"diagnose=False: passed {row.passed} (expected False), diagnosis {row.diagnosis!r} (expected None)"
    )


# ======================================================================================
# the mutants' hand-derived backward functions
# ======================================================================================
def test_unbiased_batchnorm_backward_by_finite_differences():
    rng = np.random.default_rng(11)
    x, w, b = rng.standard_normal((3, 4, 2, 3)), rng.uniform(0.5, 1.5, 4), rng.standard_normal(4)
    report = check_gradients(
        lambda x, w, b: mp.batchnorm_unbiased_forward(x, w, b, training=True),
        lambda g, x, w, b: mp.batchnorm_unbiased_backward(g, x, w, b, training=True)[:3],
        [x, w, b],
        names=["x", "weight", "bias"],
        rng=rng,
    )
    assert report.passed, str(report)
    # Not the biased BatchNorm's gradient (so the check above is not vacuous).
    g = rng.standard_normal(x.shape)
    ours = mp.batchnorm_unbiased_backward(g, x, w, b, training=True)[0]
    biased = layers.batchnorm_backward(g, x, w, b, training=True)[0]
    gap = np.max(np.abs(ours - biased))
    assert gap > 1e-3, f"unbiased-variance grad_x within {gap!r} of the biased BatchNorm's (expected > 1e-3)"


def test_tanh_gelu_backward_by_finite_differences():
    rng = np.random.default_rng(12)
    x = np.concatenate([np.linspace(-6, 6, 25), rng.standard_normal(20) * 3])
    report = check_gradients(mp.gelu_tanh_forward, mp.gelu_tanh_backward, [x], names=["x"], rng=rng)
    assert report.passed, str(report)
    exact = layers.gelu_backward(np.ones_like(x), x)[0]
    gap = np.max(np.abs(mp.gelu_tanh_backward(np.ones_like(x), x)[0] - exact))
    assert gap > 1e-4, f"tanh-GELU gradient within {gap!r} of the exact GELU's (expected > 1e-4)"


def test_a_port_rounding_differently_where_the_reference_is_exactly_zero(golden_set):
    """Where no term reaches an element, the reference is exactly 0 and nothing is allowed
    there; a defect that puts terms there is still recognised when the port rounds them
    differently from the variant (the notebook's port of the split bug does)."""
    directory = golden_set("float64")
    case = next(c for c in load_manifest(directory)["cases"] if c["name"] == "mixed_3p5_shift2_rect")
    arrays = load_case(directory, case)
    groups = len(case["specs_as_written"])
    args = (
        [arrays[f"weight_a_{g}"] for g in range(groups)],
        [arrays[f"weight_b_{g}"] for g in range(groups)],
        case["specs_as_written"],
    )
    _, grads_a, _ = mp.split_ceil_backward(arrays["grad_y"], arrays["x"], *args)
    got = grads_a[1]
    exact_zero = arrays["bound/grad_weight_a_1"] == 0
    assert np.any(exact_zero & (got != 0)), "the case no longer has the situation this test is about"
    got = np.where(exact_zero, np.nextafter(got, np.inf), got)  # one ulp off the variant there
    (row,) = compare_outputs("neocell", case["name"], case, arrays, {"grad_weight_a_1": got})
    assert not row.passed and row.diagnosis == ["subgroup-split-rounded-up"], row


def test_the_match_scales_with_the_variants_own_sums(golden_set):
    """A port computing a defect rounds the defect's sums, which can be much larger than
    the correct operator's at an element: it is recognised when it is off the variant by
    less than the case's rtol times the variant's own magnitude bound, and not beyond it
    (on an AVX-512 machine the split bug's dense port was 3.8 times the expected array's
    allowed error off the variant at 3 elements, and went undiagnosed)."""
    directory = golden_set("float64")
    case = next(c for c in load_manifest(directory)["cases"] if c["name"] == "mixed_4p7_shift1_uneven")
    arrays = load_case(directory, case)
    (variant,) = DEFECTS["subgroup-split-rounded-up"].variants("neocell", case, arrays, "float64")
    own, expected = variant["bound/grad_x"], arrays["bound/grad_x"]
    assert np.max(own / np.where(expected > 0, expected, np.inf)) > 2, "the case lost what this test is about"
    rtol = case["tolerances"]["grad_x"]["rtol"]
    allowed = {"grad_x": rtol * expected}
    where = own > 2 * expected  # the defect's sums are larger here
    for factor, diagnosed in ((0.9, True), (1.5, False)):
        got = np.where(where, variant["grad_x"] + factor * rtol * own, variant["grad_x"])
        found = [d.id for d in diagnose("neocell", case, arrays, {"grad_x": got}, allowed).get("grad_x", [])]
        assert ("subgroup-split-rounded-up" in found) == diagnosed, (
            f"off the variant by {factor} x rtol x its own bound: diagnosed {found}"
        )


def test_port_rounding_to_bfloat16_on_a_float16_set_is_diagnosed_reduced_precision(golden_set):
    """A mixed-precision port that stores in bfloat16 (the emulation of docs/porting.md's
    arithmetic model with ``storage="bfloat16"``) fails the float16 set; every array the
    catalogue explains is ``reduced-precision`` and nothing else, and most are explained
    (the rest deviate by less than a bfloat16 rounding's worth somewhere the match is
    held to, which is honest silence, not a wrong id)."""
    report = verify_golden(
        golden_set("float16"),
        "neocell",
        lambda x, wa, wb, specs: _bf16(x, wa, wb, specs)["y"],
        lambda gy, x, wa, wb, specs: _bf16_backward(gy, x, wa, wb, specs),
    )
    failing = [r for r in report.results if not r.passed]
    assert failing, "a bfloat16-storing port passed the float16 set"
    diagnosed = [r for r in failing if r.diagnosis]
    assert all(r.diagnosis == ["reduced-precision"] for r in diagnosed), [
        (r.case, r.array, r.diagnosis) for r in diagnosed if r.diagnosis != ["reduced-precision"]
    ]
    assert len(diagnosed) >= len(failing) / 2, f"only {len(diagnosed)} of {len(failing)} failing arrays explained"


def _bf16_arrays(x, wa, wb):
    arrays = {
        "x": np.asarray(x),
        **{f"weight_a_{g}": np.asarray(a) for g, a in enumerate(wa)},
        **{f"weight_b_{g}": np.asarray(b) for g, b in enumerate(wb)},
    }
    return arrays


def _bf16(x, wa, wb, specs, grad_y=None):
    from neocell_ref.spec import check_input_size, parse_specs
    from neocell_ref.verify.precision import emulate_neocell

    arrays = _bf16_arrays(x, wa, wb)
    if grad_y is None:  # the forward needs no gradient: any of the right shape will do
        h_out, w_out = check_input_size(parse_specs(specs), x.shape[2], x.shape[3])
        grad_y = np.zeros(x.shape[:2] + (h_out, w_out), dtype=x.dtype)
    arrays["grad_y"] = np.asarray(grad_y)
    return emulate_neocell(arrays, specs, "float16", storage="bfloat16")


def _bf16_backward(grad_y, x, wa, wb, specs):
    out = _bf16(x, wa, wb, specs, grad_y)
    return (
        out["grad_x"],
        [out[f"grad_weight_a_{g}"] for g in range(len(wa))],
        [out[f"grad_weight_b_{g}"] for g in range(len(wb))],
    )


def _emulated_port(**defect):
    """A float64 port built from the emulation of docs/porting.md (``neocell_ref.verify.precision``)
    with one planted defect: an implementation independent of ``diagnosis``."""
    from neocell_ref.spec import check_input_size, parse_specs
    from neocell_ref.verify.precision import emulate_neocell

    def run(x, wa, wb, specs, grad_y=None):
        arrays = _bf16_arrays(x, wa, wb)
        if grad_y is None:
            h_out, w_out = check_input_size(parse_specs(specs), x.shape[2], x.shape[3])
            grad_y = np.zeros(x.shape[:2] + (h_out, w_out))
        arrays["grad_y"] = np.asarray(grad_y)
        return emulate_neocell(arrays, specs, "float64", accumulate="float64", **defect)

    def backward(grad_y, x, wa, wb, specs):
        out = run(x, wa, wb, specs, grad_y)
        return (
            out["grad_x"],
            [out[f"grad_weight_a_{g}"] for g in range(len(wa))],
            [out[f"grad_weight_b_{g}"] for g in range(len(wb))],
        )

    return (lambda x, wa, wb, specs: run(x, wa, wb, specs)["y"]), backward


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_shifts_ignored_port_is_diagnosed_shifts_ignored(golden_set, dtype):
    """A port that drops every shift (the emulation with ``shifts=False``) fails exactly the
    shifted cases, and each failing array is diagnosed ``shifts-ignored`` and nothing else;
    the same emulation without the defect passes (so the failure is the defect's)."""
    forward, backward = _emulated_port(shifts=False)
    report = verify_golden(golden_set(dtype), "neocell", forward, backward)
    failing = [r for r in report.results if not r.passed]
    assert failing, "a port ignoring shifts passed"
    wrong = [(r.case, r.array, r.diagnosis) for r in failing if r.diagnosis != ["shifts-ignored"]]
    assert not wrong, f"arrays not diagnosed exactly shifts-ignored: {wrong}"
    clean = verify_golden(golden_set(dtype), "neocell", *_emulated_port())
    assert clean.passed, f"the {dtype} emulation without the defect fails:\n{clean.table()}"
