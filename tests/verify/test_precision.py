"""Half-precision golden sets (float16, bfloat16): storage, tolerances, and the proof
that the tolerances are right.

The proof runs reference emulations of the arithmetic model of ``docs/porting.md``
("Half precision": products of half-precision numbers accumulated in float32, the
intermediate and every result stored in the half type; ``neocell_ref.verify.precision``) as
ports through ``verify_golden``: they must pass every case of both sets with margin
(worst error/allowed at most 0.5), and the same emulations with a planted defect (the
shift corner dropped, the kernels swapped, the shifts ignored, or rounding to bfloat16
on a float16 set) must fail.
"""

import json
import math

import numpy as np
import pytest

import neocell_ref as nr
from neocell_ref import layers
from neocell_ref.cli import main as cli_main
from neocell_ref.spec import check_input_size, parse_specs
from neocell_ref.verify.golden import (
    FORMAT_VERSION,
    GoldenError,
    derive_manifest,
    export_golden,
    load_manifest,
    verify_golden,
    write_npz,
)
from neocell_ref.verify.golden_ops import HALF_EXCLUDED, OPERATIONS, make_case
from neocell_ref.verify.precision import (
    emulate_layer,
    emulate_neocell,
    not_bfloat16,
    round_bfloat16,
    round_to,
    store,
)

HALF = ["float16", "bfloat16"]
LAYER_OPS = [op for op in OPERATIONS if op not in ("neocell", "model")]


@pytest.fixture(scope="module")
def half_sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("half")
    sets = {}
    for dtype in HALF:
        export_golden(root / dtype, dtype=dtype)
        sets[dtype] = root / dtype
    return sets


# ------------------------------------------------------------------- rounding to bfloat16
def _bfloat16_grid():
    """Every finite bfloat16 number, ascending, from its 65536 bit patterns (an
    independent formulation: the nearest grid point, not bit arithmetic)."""
    with np.errstate(invalid="ignore"):
        bits = (np.arange(2**16, dtype=np.uint32) << 16).view(np.float32).astype(np.float64)
    grid = np.unique(bits[np.isfinite(bits)])
    return grid


def _nearest_even(values, grid):
    """Round to nearest on ``grid``, ties to the point with an even last significand bit."""
    idx = np.clip(np.searchsorted(grid, values), 1, len(grid) - 1)
    lo, hi = grid[idx - 1], grid[idx]
    pick_hi = (hi - values) < (values - lo)
    tie = (hi - values) == (values - lo)
    even_hi = ((hi.astype(np.float32).view(np.uint32) >> 16) & 1) == 0
    return np.where(pick_hi | (tie & even_hi), hi, lo)


def test_round_bfloat16_is_round_to_nearest_even():
    grid = _bfloat16_grid()
    rng = np.random.default_rng(1)
    values = rng.standard_normal(20000) * np.exp2(rng.integers(-130, 120, 20000))
    # Exact midpoints and values just beside them: the double-rounding trap of
    # going float64 -> float32 -> bfloat16.
    pick = rng.integers(1, len(grid) - 1, 2000)
    mids = (grid[pick] + grid[pick + 1]) / 2
    values = np.concatenate(
        [
            values,
            mids,
            np.nextafter(mids, np.inf),
            np.nextafter(mids, -np.inf),
            mids * (1 + 2.0**-40),
            mids * (1 - 2.0**-40),
        ]
    )
    values = values[np.abs(values) <= grid[-1]]
    got = round_bfloat16(values).astype(np.float64)
    want = _nearest_even(values, grid)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, (
        f"{bad.size} values rounded wrongly, first {values[bad[0]]!r}: got {got[bad[0]]!r}, want {want[bad[0]]!r}"
    )
    dtype32 = round_bfloat16(values.astype(np.float32)).dtype
    assert dtype32 == np.float32, f"round_bfloat16 of float32 input returned dtype {dtype32}, expected float32"


def test_round_bfloat16_special_values():
    largest = float(_bfloat16_grid()[-1])  # (2 - 2**-7) * 2**127
    ulp = 2.0**120
    cases = {
        np.inf: np.inf,
        -np.inf: -np.inf,
        largest: largest,
        largest + ulp / 2: np.inf,
        largest + ulp / 2 * (1 - 2.0**-30): largest,
        1e300: np.inf,
        -1e300: -np.inf,
        2.0**-133: 2.0**-133,
        2.0**-134: 0.0,
        2.0**-134 * 1.5: 2.0**-133,
        -0.0: -0.0,
        1e-300: 0.0,
    }
    with np.errstate(over="ignore"):
        got = round_bfloat16(np.array(list(cases), dtype=np.float64)).astype(np.float64)
    for (value, want), g in zip(cases.items(), got):
        assert g == want and math.copysign(1, g) == math.copysign(1, want), f"{value!r} -> {g!r}, expected {want!r}"
    nan = round_bfloat16(np.array([np.nan, -np.nan], dtype=np.float32))
    assert np.isnan(nan).all() and not not_bfloat16(nan).any(), (
        f"round_bfloat16([nan, -nan]) -> {nan!r}, not_bfloat16 of it {not_bfloat16(nan)!r} (expected all NaN, all False)"
    )
    flags = not_bfloat16(np.array([1.0, 1.0 + 2.0**-7, 1.0 + 2.0**-8, 1.0 + 2.0**-30])).tolist()
    assert flags == [False, False, True, True], (
        f"not_bfloat16 of [1, 1+2**-7, 1+2**-8, 1+2**-30] is {flags}, expected [False, False, True, True]"
    )
    with pytest.raises(TypeError, match="real floating"):
        round_bfloat16(np.arange(3))


# ------------------------------------------------------------------- export and storage
def test_half_sets_store_half_inputs_and_float64_answers(half_sets):
    for dtype, storage in (("float16", "float16"), ("bfloat16", "float32")):
        manifest = load_manifest(half_sets[dtype])
        assert manifest["format_version"] == FORMAT_VERSION == 3, (
            f"{dtype} set: format_version {manifest['format_version']!r}, FORMAT_VERSION {FORMAT_VERSION!r}, expected 3"
        )
        assert manifest["dtype"] == dtype and manifest["storage_dtype"] == storage, (
            f"{dtype} set: manifest dtype {manifest['dtype']!r} storage_dtype {manifest['storage_dtype']!r}, "
            f"expected {dtype!r} and {storage!r}"
        )
        ops, want_ops = set(manifest["operations"]), set(OPERATIONS) - {"model"}
        assert "model" not in manifest["operations"] and ops == want_ops, (
            f"{dtype} set operations: extra {sorted(ops - want_ops)}, missing {sorted(want_ops - ops)}"
        )
        for case in manifest["cases"]:
            with np.load(half_sets[dtype] / case["file"], allow_pickle=False) as data:
                for key in case["inputs"]:
                    assert str(data[key].dtype) == storage or key.startswith("state/"), (case["name"], key)
                    if dtype == "bfloat16":
                        assert not not_bfloat16(data[key]).any(), (case["name"], key)
                for key in case["tolerances"]:
                    assert data[key].dtype == np.float64, (case["name"], key)


def test_expected_answers_are_float64_results_of_the_stored_inputs(half_sets):
    from neocell_ref.neocell import neocell_forward

    manifest = load_manifest(half_sets["bfloat16"])
    case = next(c for c in manifest["cases"] if c["name"] == "mixed_4p7_shift1_uneven")
    with np.load(half_sets["bfloat16"] / case["file"], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    y = neocell_forward(
        arrays["x"].astype(np.float64),
        [arrays[f"weight_a_{g}"].astype(np.float64) for g in range(2)],
        [arrays[f"weight_b_{g}"].astype(np.float64) for g in range(2)],
        case["specs_as_written"],
        method="loop",
    )
    diff = np.abs(y - arrays["y"])
    assert np.allclose(y, arrays["y"], rtol=1e-13, atol=1e-13), (
        f"{case['name']}: float64 forward of the stored inputs differs from stored y by up to {np.max(diff)!r} "
        f"at {np.unravel_index(np.argmax(diff), diff.shape)} (rtol=atol=1e-13)"
    )


def test_bad_dtype_arguments_are_named_errors(tmp_path):
    # np.dtype would read None as float64, and a number's or an array's dtype
    for bad in ("float8", "int8", None, True, "bfloat", np.int32, "complex128", np.float32(2.0), np.zeros(2)):
        with pytest.raises(ValueError, match="dtype must be one of float64, float32, float16, bfloat16"):
            export_golden(tmp_path / "x", dtype=bad)
        with pytest.raises(ValueError, match="dtype"):
            derive_manifest(dtype=bad)
    assert not (tmp_path / "x").exists(), f"refused export still created {tmp_path / 'x'}"
    for dtype in HALF:
        with pytest.raises(ValueError, match=f"operation 'model' has no {dtype} golden cases: no sound tolerance"):
            export_golden(tmp_path / "m", dtype=dtype, operations=["neocell", "model"])
        with pytest.raises(ValueError, match="no sound tolerance"):
            make_case("model", OPERATIONS["model"].cases("core")[0], dtype, 0)
    assert "model" in HALF_EXCLUDED, f"'model' missing from HALF_EXCLUDED {sorted(HALF_EXCLUDED)}"


def test_cli_exports_half_sets(tmp_path, capsys):
    code = cli_main(["golden", "export", str(tmp_path / "bf"), "--dtype", "bfloat16"])
    assert code == 0, f"golden export --dtype bfloat16 exit status {code}, expected 0"
    written = load_manifest(tmp_path / "bf")["dtype"]
    assert written == "bfloat16", f"exported manifest dtype {written!r}, expected 'bfloat16'"
    with pytest.raises(SystemExit) as exc:
        cli_main(["golden", "export", str(tmp_path / "f8"), "--dtype", "float8"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "invalid choice: 'float8'" in err, (
        f"--dtype float8: exit status {exc.value.code!r} (expected 2), stderr {err!r}"
    )


def test_a_bfloat16_set_with_a_value_that_is_not_bfloat16_is_refused(tmp_path):
    export_golden(tmp_path / "g", dtype="bfloat16", operations=["neocell"])
    manifest = json.loads((tmp_path / "g" / "manifest.json").read_text())
    case = manifest["cases"][0]
    with np.load(tmp_path / "g" / case["file"], allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    arrays["x"] = arrays["x"].copy()
    arrays["x"].flat[3] = np.nextafter(arrays["x"].flat[3], np.float32(np.inf))  # a float32, not a bfloat16
    import hashlib

    case["sha256"] = hashlib.sha256(write_npz(tmp_path / "g" / case["file"], arrays)).hexdigest()
    (tmp_path / "g" / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    with pytest.raises(GoldenError, match="input x holds values that are not bfloat16 numbers"):
        load_manifest(tmp_path / "g")


# ------------------------------------------------------------------- emulated ports
def _neocell_port(dtype, **defect):
    """The emulation of the arithmetic model in the NeoCell calling convention."""

    def arrays_of(x, weights_a, weights_b, grad_y):
        arrays = {"x": x, "grad_y": grad_y}
        for g, (a, b) in enumerate(zip(weights_a, weights_b)):
            arrays[f"weight_a_{g}"], arrays[f"weight_b_{g}"] = a, b
        return arrays

    def run(arrays, specs):
        out = emulate_neocell(arrays, specs, dtype, **defect)
        if out is None:
            raise ValueError("this defect cannot be planted in this case")
        return out

    def forward(x, weights_a, weights_b, specs):
        h_out, w_out = check_input_size(parse_specs(specs), x.shape[2], x.shape[3])
        return run(arrays_of(x, weights_a, weights_b, np.zeros(x.shape[:2] + (h_out, w_out))), specs)["y"]

    def backward(grad_y, x, weights_a, weights_b, specs):
        out = run(arrays_of(x, weights_a, weights_b, grad_y), specs)
        groups = range(len(weights_a))
        return out["grad_x"], [out[f"grad_weight_a_{g}"] for g in groups], [out[f"grad_weight_b_{g}"] for g in groups]

    return forward, backward


def _layer_port(kind, dtype, **options_of_emulation):
    def named(inputs):
        return {f"in{i}": a for i, a in enumerate(inputs)}, [f"in{i}" for i in range(len(inputs))]

    def forward(*inputs, **options):
        arrays, order = named(inputs)
        y = getattr(layers, f"{kind}_forward")(*[np.asarray(a, dtype=np.float64) for a in inputs], **options)
        arrays["grad_y"] = np.zeros(y.shape)
        return emulate_layer(kind, arrays, order, options, dtype, **options_of_emulation)["y"]

    def backward(grad_y, *inputs, **options):
        arrays, order = named(inputs)
        arrays["grad_y"] = grad_y
        out = emulate_layer(kind, arrays, order, options, dtype, **options_of_emulation)
        return tuple(out.get(f"grad_{n}") for n in order)

    return forward, backward


@pytest.mark.parametrize("dtype", HALF)
def test_emulated_mixed_precision_port_passes_every_case_with_margin(half_sets, dtype):
    worst = []
    for op in load_manifest(half_sets[dtype])["operations"]:
        port = _neocell_port(dtype) if op == "neocell" else _layer_port(op, dtype)
        report = verify_golden(half_sets[dtype], op, *port)
        assert report.passed, report.table()
        worst.extend((r.ratio, f"{r.case}/{r.array}") for r in report.results)
    ratio, where = max(worst)
    print(f"{dtype}: worst error/allowed of the emulation {ratio:.3f} ({where}) over {len(worst)} arrays")
    # Every rounding stays within half the allowance: SAFETY = 2 is the margin.
    assert ratio <= 0.5, f"{dtype}: the emulation uses {ratio:.3f} of the tolerance at {where}"


def _shifted(case):
    return any(g.shift_a or g.shift_b for g in parse_specs(case["specs_as_written"]))


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("defect", [{"corner": False}, {"shifts": False}, {"swap": True}])
def test_emulated_port_with_a_planted_defect_fails(half_sets, dtype, defect):
    manifest = load_manifest(half_sets[dtype])
    report = verify_golden(half_sets[dtype], "neocell", *_neocell_port(dtype, **defect))
    assert not report.passed, f"{dtype} emulation with defect {defect} passed every case:\n{report.table()}"
    failed = {r.case for r in report.failures}
    if "swap" in defect:  # every case whose kernels differ from their swapped transposes
        must = {c["name"] for c in manifest["cases"] if c["op"] == "neocell" and c["name"] != "k7_input_1x1"}
    else:  # exactly the cases with a shift
        must = {c["name"] for c in manifest["cases"] if c["op"] == "neocell" and _shifted(c)}
        assert failed == must, f"{defect}: failed {sorted(failed)}, expected the shifted cases {sorted(must)}"
    assert must <= failed, f"{defect}: passed {sorted(must - failed)}"
    for name in must:  # by far: each such case misses by more than 10x somewhere
        ratios = [r.ratio for r in report.failures if r.case == name]
        assert any(not (r <= 10) for r in ratios), f"{defect}: {name} fails by {ratios} only"


def test_float16_set_fails_a_port_that_rounds_to_bfloat16(half_sets):
    """A port whose storage is bfloat16 (8 significant bits, not 11) fails the float16
    set: every NeoCell case and every layer fails in at least one array. Single arrays
    dominated by cancellation (a sum much smaller than its terms) may stay within the
    tolerance; docs/porting.md says why."""
    for op in load_manifest(half_sets["float16"])["operations"]:
        port = (
            _neocell_port("float16", storage="bfloat16")
            if op == "neocell"
            else _layer_port(op, "float16", storage="bfloat16")
        )
        report = verify_golden(half_sets["float16"], op, *port)
        cases = {r.case for r in report.results}
        assert {r.case for r in report.failures} == cases, f"{op}: {report.table()}"


def test_emulation_rounds_every_storage_point():
    """The emulation really rounds: its results are numbers of the storage type, and
    they differ from the float64 reference by more than float32 rounding would."""
    case = OPERATIONS["neocell"].cases("core")[4]
    _, arrays, _, _ = make_case("neocell", case, "float16", 0)
    out = emulate_neocell(arrays, case[1], "float16")
    for key, value in out.items():
        assert np.array_equal(value, round_to(value, "float16")), key
    y_err = np.max(np.abs(out["y"] - arrays["y"]))
    assert y_err > 1e-4, f"float16 emulation of y differs from the float64 answer by only {y_err!r} (expected > 1e-4)"


def test_half_precision_accumulation_is_outside_the_model():
    """A port that sums in float16 (every partial sum rounded) is outside the model.

    On positive data (no cancellation: the bound is the result itself, the partial sums
    grow to the full result) with 2247-term weight gradients, the float32-accumulating
    emulation uses at most half the tolerance and the float16-accumulating one exceeds
    it. ``rtol_scale`` = the accumulation length (docs/porting.md: what recursive
    half-precision accumulation needs) is refused there, since ``2247 · u_half > 1``
    and the loosened tolerance would pass an all-zero answer; on a 147-term case it is
    accepted and the float16-accumulating port passes."""
    from neocell_ref.verify.golden import MAX_RTOL_SCALE, run_and_compare
    from neocell_ref.verify.golden_ops import neocell_expected
    from neocell_ref.verify.precision import store

    specs, shape = [{"kernel": 7, "channels": 2, "shift": 1}], (16, 2, 28, 28)
    rng = np.random.default_rng(7)
    arrays = {
        "x": rng.uniform(0.5, 1, shape),
        "weight_a_0": rng.uniform(0.5, 1, (2, 7, 7)),
        "weight_b_0": rng.uniform(0.5, 1, (2, 7, 7)),
        "grad_y": rng.uniform(0.5, 1, shape),
    }
    arrays = {k: store(v, "float16") for k, v in arrays.items()}
    expected, tolerances = neocell_expected(specs, arrays, "float16")
    meta, everything = {"specs_as_written": specs, "tolerances": tolerances}, {**arrays, **expected}
    n_max = max(t["accumulation_length"] for t in tolerances.values())
    assert n_max == 7 + 16 * 28 * (4 + 1) and n_max <= MAX_RTOL_SCALE, (
        f"largest accumulation_length {n_max}, expected {7 + 16 * 28 * (4 + 1)} and <= MAX_RTOL_SCALE {MAX_RTOL_SCALE}"
    )

    model = run_and_compare("neocell", "positive", meta, everything, *_neocell_port("float16"))
    assert max(r.ratio for r in model) <= 0.5, [(r.array, r.ratio) for r in model]
    half_sums = _neocell_port("float16", accumulate="float16")
    at_one = run_and_compare("neocell", "positive", meta, everything, *half_sums)
    assert {r.array for r in at_one if not r.passed} >= {"grad_weight_a_0", "grad_weight_b_0"}, [
        (r.array, r.ratio) for r in at_one
    ]
    with pytest.raises(ValueError, match="off by a factor of 2"):
        run_and_compare("neocell", "positive", meta, everything, *half_sums, rtol_scale=n_max)

    small = (1, 2, 28, 28)
    arrays = {
        k: store(rng.uniform(0.5, 1, small if k in ("x", "grad_y") else v.shape), "float16") for k, v in arrays.items()
    }
    expected, tolerances = neocell_expected(specs, arrays, "float16")
    meta, everything = {"specs_as_written": specs, "tolerances": tolerances}, {**arrays, **expected}
    n_max = max(t["accumulation_length"] for t in tolerances.values())
    assert n_max == 7 + 1 * 28 * (4 + 1), f"largest accumulation_length {n_max}, expected {7 + 1 * 28 * (4 + 1)}"
    scaled = run_and_compare("neocell", "small", meta, everything, *half_sums, rtol_scale=n_max)
    assert all(r.passed for r in scaled), [(r.array, r.ratio) for r in scaled]


@pytest.mark.parametrize(
    "edit, words",
    [
        (lambda m: m["cases"][0]["tolerances"]["y"].__setitem__("rtol", 0.5), "tolerances.y.rtol is 0.5"),
        (lambda m: m["cases"][0]["tolerances"]["y"].__setitem__("half_roundings", 1), "half_roundings is 1"),
        (lambda m: m["cases"][0]["tolerances"]["y"].__setitem__("atol", 1.0), "tolerances.y.atol is 1.0"),
        (lambda m: m.__setitem__("storage_dtype", "float16"), 'storage_dtype is "float16"'),
        (lambda m: m.__setitem__("operations", [*m["operations"], "model"]), "operation 'model' has no bfloat16"),
        (lambda m: m.__setitem__("dtype", "float32"), "cannot be edited"),
    ],
)
def test_edited_half_manifest_is_refused(tmp_path, edit, words):
    export_golden(tmp_path / "g", dtype="bfloat16", operations=["neocell"])
    path = tmp_path / "g" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    with pytest.raises(GoldenError, match=words):
        load_manifest(tmp_path / "g")


def _scaled_port(op, factor):
    """The reference in float64, every output multiplied by ``factor`` (0: a port that
    computes nothing; 0.5 or 1.5: one off by half the answer)."""

    def scaled(values):
        return tuple(None if v is None else factor * np.asarray(v, dtype=np.float64) for v in values)

    if op == "neocell":

        def forward(x, weights_a, weights_b, specs):
            return factor * nr.neocell_forward(np.asarray(x, dtype=np.float64), weights_a, weights_b, specs)

        def backward(grad_y, x, weights_a, weights_b, specs):
            gx, ga, gb = nr.neocell_backward(grad_y, np.asarray(x, dtype=np.float64), weights_a, weights_b, specs)
            return factor * gx, scaled(ga), scaled(gb)

        return forward, backward

    def as64(inputs):
        return [None if a is None else np.asarray(a, dtype=np.float64) for a in inputs]

    def forward(*inputs, **options):
        return factor * getattr(layers, f"{op}_forward")(*as64(inputs), **options)

    def backward(grad_y, *inputs, **options):
        grads = getattr(layers, f"{op}_backward")(np.asarray(grad_y, dtype=np.float64), *as64(inputs), **options)
        return scaled(grads if isinstance(grads, tuple) else (grads,))

    return forward, backward


@pytest.mark.parametrize("dtype", HALF)
def test_no_accepted_override_lets_a_port_off_by_half_the_answer_pass(half_sets, dtype):
    """docs/porting.md section 7: at any accepted --rtol-scale, a port returning zeros,
    half or one and a half times the answer fails every case; a scale under which half
    the answer would pass a case is refused. The half sets' tolerances reach that at a
    scale of a few hundred (float16) or a few dozen (bfloat16), well below
    MAX_RTOL_SCALE."""
    from neocell_ref.verify.golden import MAX_RTOL_SCALE

    refused = []
    for op in load_manifest(half_sets[dtype])["operations"]:
        for scale in (1.0, 16.0, 64.0, 512.0, MAX_RTOL_SCALE):
            for factor in (0.0, 0.5, 1.5):
                try:
                    report = verify_golden(half_sets[dtype], op, *_scaled_port(op, factor), rtol_scale=scale)
                except ValueError as exc:
                    assert "off by a factor of 2" in str(exc), f"{op} at {scale}: {exc}"
                    refused.append((op, scale))
                    break  # the scale is refused whatever the port
                cases = {r.case for r in report.results}
                passed = sorted(cases - {r.case for r in report.failures})
                assert not passed, f"{dtype} {op}: {factor} x the answer passes {passed} at rtol_scale {scale:g}"
    # The guard is what holds at the top: without it the scales above would be accepted.
    assert ("neocell", MAX_RTOL_SCALE) in refused, refused
    assert ("neocell", 1.0) not in refused, refused


# --------------------------------------------------------------------------------------
# bad arguments of the rounding helpers and the emulation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("function", [round_to, store])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    "values, words",
    [
        (np.array([1 + 2j]), "values must be a real numeric array, got dtype complex128"),
        (np.array([1.5 + 0j], dtype=np.complex64), "values must be a real numeric array, got dtype complex64"),
        (None, "values must be a real numeric array, got None"),
        (["a"], "values must be a real numeric array, got dtype <U1"),
        (np.array([True]), "values must be a real numeric array, got dtype bool"),
    ],
)
def test_rounding_refuses_complex_and_non_numeric_values(function, dtype, values, words):
    """Complex input is refused (it lost its imaginary part with only a ComplexWarning),
    and None is no longer rounded to NaN."""
    with pytest.raises(TypeError, match=words):
        function(values, dtype)


@pytest.mark.parametrize("function", [round_to, store])
def test_rounding_integers_to_bfloat16(function):
    """Integers are real numbers: rounded like the same values in float64."""
    ints = np.array([1, 257, -70001, 2**40 + 1])
    got = np.asarray(function(ints, "bfloat16"), dtype=np.float64)
    want = np.asarray(function(ints.astype(np.float64), "bfloat16"), dtype=np.float64)
    assert np.array_equal(got, want), f"{function.__name__}: {got} != {want}"
    assert got.tolist()[:3] == [1.0, 256.0, -70144.0], got


def _one_group_arrays(**changes):
    arrays = {
        "x": np.ones((1, 1, 2, 2)),
        "grad_y": np.ones((1, 1, 2, 2)),
        "weight_a_0": np.ones((1, 2, 2)),
        "weight_b_0": np.ones((1, 2, 2)),
    }
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


@pytest.mark.parametrize(
    "arrays, options, error, words",
    [
        (_one_group_arrays(), dict(transpose="c"), ValueError, "transpose must be None, 'a' or 'b', got 'c'"),
        (_one_group_arrays(), dict(transpose="A"), ValueError, "transpose must be None, 'a' or 'b', got 'A'"),
        (_one_group_arrays(), dict(transpose=True), ValueError, "transpose must be None, 'a' or 'b', got True"),
        (
            _one_group_arrays(weight_a_0=np.ones((1, 3, 3))),
            {},
            ValueError,
            r"arrays\['weight_a_0'\] has shape \(1, 3, 3\), but the specs need \(1, 2, 2\)",
        ),
        (
            _one_group_arrays(weight_b_0=np.ones((2, 2, 2))),
            {},
            ValueError,
            r"arrays\['weight_b_0'\] has shape \(2, 2, 2\), but the specs need \(1, 2, 2\)",
        ),
        (
            _one_group_arrays(x=np.ones((1, 2, 2))),
            {},
            ValueError,
            r"arrays\['x'\] has shape \(1, 2, 2\), expected \(N, 1, H, W\)",
        ),
        (
            _one_group_arrays(x=np.ones((1, 3, 2, 2))),
            {},
            ValueError,
            r"arrays\['x'\] has shape \(1, 3, 2, 2\), expected \(N, 1, H, W\)",
        ),
        (
            _one_group_arrays(grad_y=np.ones((2, 1, 2, 2))),
            {},
            ValueError,
            r"arrays\['grad_y'\] has shape \(2, 1, 2, 2\), expected \(1, 1, H_out, W_out\)",
        ),
        (_one_group_arrays(x=None), {}, ValueError, "arrays has no 'x'"),
        (
            _one_group_arrays(weight_a_0=np.ones((1, 2, 2)) * 1j),
            {},
            TypeError,
            r"arrays\['weight_a_0'\] must be a real numeric array, got dtype complex128",
        ),
        ([np.ones(3)], {}, TypeError, "arrays must be a dict"),
    ],
)
def test_emulate_neocell_refuses_bad_arguments(arrays, options, error, words):
    with pytest.raises(error, match=words):
        emulate_neocell(arrays, [{"kernel": 2, "channels": 1}], "float16", **options)


def test_emulate_neocell_accepts_a_grad_y_of_another_size():
    """A size defect's backward receives grad_y of the true size: only y is emulated."""
    out = emulate_neocell(_one_group_arrays(grad_y=np.ones((1, 1, 3, 3))), [{"kernel": 2, "channels": 1}], "float16")
    assert sorted(out) == ["y"] and out["y"].shape == (1, 1, 2, 2), out


@pytest.mark.parametrize("kind", ["nope", 7, None])
def test_emulate_layer_names_an_unknown_kind(kind):
    with pytest.raises(ValueError, match="kind must name a layer"):
        emulate_layer(kind, {}, [], {}, "float16")
