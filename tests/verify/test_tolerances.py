"""The tolerance policy: the relative error, the half-precision bounds and the case seeding.

- ``relative_error`` is SPEC section 9's ``max|got - ref| / max|ref|`` on hand-made arrays;
- the float16/bfloat16 tolerances follow the documented arithmetic model;
- each golden case draws from a generator keyed by (operation, case name, seed), so
  adding a case does not reseed the others.
"""

import math

import numpy as np
import pytest
from support.hostile import raises_naming

from neocell_ref.verify.golden_ops import NEOCELL_CASES_CORE, OPERATIONS, case_rng, half_tolerance, make_case
from neocell_ref.verify.tolerances import allowed_error, relative_error, sum_tolerance


def test_adding_a_case_does_not_reseed_the_others(monkeypatch):
    from neocell_ref.verify import golden_ops as golden_ops

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
    assert not np.array_equal(draw("neocell", "a", 0), draw("neocell", "b", 0)), (
        f"cases 'a' and 'b' of neocell draw the same values {draw('neocell', 'a', 0)}: the name is not in the key"
    )
    assert not np.array_equal(draw("neocell", "a", 0), draw("gelu", "a", 0)), (
        f"case 'a' of neocell and of gelu draw the same values {draw('neocell', 'a', 0)}:"
        " the operation is not in the key"
    )
    assert not np.array_equal(draw("neocell", "a", 0), draw("neocell", "a", 1)), (
        f"seeds 0 and 1 of neocell case 'a' draw the same values {draw('neocell', 'a', 0)}: the seed is not in the key"
    )
    assert np.array_equal(draw("neocell", "a", 0), draw("neocell", "a", 0)), (
        f"two draws for the same key (neocell, 'a', 0) differ: {draw('neocell', 'a', 0)} vs {draw('neocell', 'a', 0)}"
    )


def test_half_tolerances_follow_the_arithmetic_model():
    # Hand calculation for k7_square_14x14 (N=2, C=4, 14x14, kernel 7): y has n = 7 + 7.
    _, _, _, tol16 = make_case("neocell", OPERATIONS["neocell"].cases("core")[0], "float16", 5)
    assert tol16["y"]["half_roundings"] == 2 and tol16["y"]["accumulation_length"] == 14, (
        f"float16 y of k7_square_14x14: half_roundings {tol16['y']['half_roundings']} (expected 2),"
        f" accumulation_length {tol16['y']['accumulation_length']} (expected 7 + 7 = 14)"
    )
    assert tol16["y"]["rtol"] == 2 * (2 * 2.0**-11 + 15 * 2.0**-24), (
        f"float16 y rtol {tol16['y']['rtol']!r}, expected 2 * (2 u16 + 15 u32) = {2 * (2 * 2.0**-11 + 15 * 2.0**-24)!r}"
    )
    _, _, _, tolbf = make_case("neocell", OPERATIONS["neocell"].cases("core")[0], "bfloat16", 5)
    assert tolbf["y"]["rtol"] == 2 * (2 * 2.0**-8 + 15 * 2.0**-24), (
        f"bfloat16 y rtol {tolbf['y']['rtol']!r},"
        f" expected 2 * (2 u_bf16 + 15 u32) = {2 * (2 * 2.0**-8 + 15 * 2.0**-24)!r}"
    )
    # grad_weight_a: n = w_out + N·W·(ceil(H_out/h_out) + 1) = 7 + 2·14·3.
    assert tol16["grad_weight_a_0"]["accumulation_length"] == 7 + 2 * 14 * 3, (
        f"float16 grad_weight_a_0 accumulation_length {tol16['grad_weight_a_0']['accumulation_length']},"
        f" expected 7 + 2*14*3 = {7 + 2 * 14 * 3}"
    )
    # A layer passes through one rounding (the stored result): linear y, n = C_in = 6.
    _, _, _, lin = make_case("linear", OPERATIONS["linear"].cases("core")[0], "float16", 5)
    assert lin["y"]["half_roundings"] == 1 and lin["y"]["rtol"] == 2 * (2.0**-11 + 7 * 2.0**-24), (
        f"float16 linear y: half_roundings {lin['y']['half_roundings']} (expected 1),"
        f" rtol {lin['y']['rtol']!r} (expected 2 * (u16 + 7 u32) = {2 * (2.0**-11 + 7 * 2.0**-24)!r})"
    )
    # atol: gradual underflow (times the second product's propagation), a power of two,
    # far below the rounding of any O(1) value.
    for tols, limit in ((tol16, 1e-4), (tolbf, 1e-30), (lin, 1e-6)):
        for key, tol in tols.items():
            assert tol["atol"] > 0 and math.frexp(tol["atol"])[0] == 0.5 and tol["atol"] < limit, (key, tol)
    assert half_tolerance("float16", 0, 1)["atol"] == 2.0 ** math.ceil(math.log2(2 * (2.0**-25 + 2.0**-150))), (
        f"float16 atol for n = 0, one rounding: {half_tolerance('float16', 0, 1)['atol']!r}, expected"
        f" {2.0 ** math.ceil(math.log2(2 * (2.0**-25 + 2.0**-150)))!r} (next power of two of 2 (2^-25 + 2^-150))"
    )


def test_relative_error_metric():
    """The metric itself, on hand-made arrays (SPEC 9's definition)."""
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    got = ref + np.array([[0.0, 0.0], [0.0, 0.5]])
    assert relative_error(got, ref) == 0.5 / 4.0, (
        f"max|got - ref| / max|ref| with one entry off by 0.5 and max|ref| = 4: {relative_error(got, ref)!r},"
        " expected 0.125"
    )
    assert relative_error(ref, ref) == 0.0, f"relative error of an array to itself: {relative_error(ref, ref)!r}"
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0, (
        f"relative error of zeros to zeros: {relative_error(np.zeros(3), np.zeros(3))!r}, expected 0.0"
    )
    assert relative_error(np.ones(3), np.zeros(3)) == float("inf"), (
        f"relative error of ones to a zero reference: {relative_error(np.ones(3), np.zeros(3))!r}, expected inf"
    )
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(4,\)"):
        relative_error(ref, ref.ravel())


@pytest.mark.parametrize(
    "got, ref, word",
    [
        (np.array([1 + 5j]), np.array([1.0]), "got"),  # the imaginary part was dropped: 0.0
        (["1", "2"], [1.0, 2.0], "got"),  # strings were parsed: 0.0
        (np.array([1.0]), np.array([True]), "ref"),
    ],
)
def test_relative_error_casts_nothing_silently(got, ref, word):
    with pytest.raises(TypeError, match=word):
        relative_error(got, ref)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_relative_error_of_a_non_finite_value_is_infinite(bad):
    ref = np.array([1.0, 2.0])
    assert relative_error(np.array([bad, 2.0]), ref) == float("inf"), (
        f"got with {bad} at index 0: relative error {relative_error(np.array([bad, 2.0]), ref)!r}, expected inf"
    )
    assert relative_error(ref, np.array([1.0, bad])) == float("inf"), (
        f"ref with {bad} at index 1: relative error {relative_error(ref, np.array([1.0, bad]))!r}, expected inf"
    )


# --------------------------------------------------------------------------------------
# bad arguments: a tolerance is never negative, NaN or built from a non-integer length
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, error, words",
    [
        (lambda: sum_tolerance("float64", -5), ValueError, r"n \(accumulation length\) must be >= 0, got -5"),
        (lambda: sum_tolerance("float64", 2.5), TypeError, r"n \(accumulation length\) must be an integer, got 2\.5"),
        (lambda: sum_tolerance("float32", True), TypeError, r"n \(accumulation length\) must be an integer"),
        (lambda: half_tolerance("float16", 3, -2, -5.0), ValueError, "roundings must be >= 0, got -2"),
        (lambda: half_tolerance("float16", -1, 2), ValueError, r"n \(accumulation length\) must be >= 0, got -1"),
        (lambda: half_tolerance("float16", 3, 2.0), TypeError, "roundings must be an integer, got 2.0"),
        (lambda: half_tolerance("float16", 3, 2, -5.0), ValueError, "propagation must be >= 0.0, got -5.0"),
        (
            lambda: half_tolerance("bfloat16", 3, 2, math.nan),
            ValueError,
            "propagation must be a finite real number, got nan",
        ),
        (
            lambda: half_tolerance("float16", 3, 2, math.inf),
            ValueError,
            "propagation must be a finite real number, got inf",
        ),
        (lambda: half_tolerance("float16", 3, 2, "1"), TypeError, "propagation must be a real number, got '1'"),
        (
            lambda: half_tolerance("float64", 3, 2),
            ValueError,
            "half_tolerance is for float16 or bfloat16 sets, got dtype 'float64'",
        ),
        (lambda: allowed_error([1.0], rtol=-1.0), ValueError, "rtol must be >= 0.0, got -1.0"),
        (lambda: allowed_error([1.0], rtol=math.nan), ValueError, "rtol must be a finite real number, got nan"),
        (lambda: allowed_error([1.0], rtol=math.inf), ValueError, "rtol must be a finite real number, got inf"),
        (lambda: allowed_error([1.0], rtol=None), TypeError, "rtol must be a real number, got None"),
        (lambda: allowed_error([1.0], rtol=1e-3, atol=-1e-9), ValueError, "atol must be >= 0.0, got -1e-09"),
        (
            lambda: allowed_error([1.0], rtol=1e-3, atol=math.nan),
            ValueError,
            "atol must be a finite real number, got nan",
        ),
        (lambda: allowed_error([1.0], rtol=1e-3, atol=1j), TypeError, "atol must be a real number, got 1j"),
        (lambda: allowed_error([1.0], rtol=1e-3, bound=[-2.0]), ValueError, "bound is a magnitude and must be >= 0"),
        (lambda: allowed_error([1.0, 2.0], rtol=1.0, bound=[1, 2, 3]), ValueError, r"bound has shape \(3,\).*\(2,\)"),
        (
            lambda: allowed_error([1j], rtol=1.0),
            TypeError,
            "expected must be a real numeric array, got dtype complex128",
        ),
    ],
)
def test_tolerance_functions_refuse_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_tolerance_functions_accept_numpy_scalars_and_zero():
    """The checks take what the golden oracle passes (NumPy integers and floats, zero)."""
    assert sum_tolerance("float64", np.int64(0)) == {"rtol": 2 * 2.0**-53, "atol": 0.0, "accumulation_length": 0}, (
        f"sum_tolerance('float64', np.int64(0)) = {sum_tolerance('float64', np.int64(0))}"
    )
    assert type(sum_tolerance("float32", np.int32(3))["accumulation_length"]) is int, (
        "sum_tolerance('float32', np.int32(3)) keeps accumulation_length as"
        f" {type(sum_tolerance('float32', np.int32(3))['accumulation_length']).__name__}, expected a Python int"
    )
    tol = half_tolerance("float16", np.int64(3), np.int64(2), np.float64(0.5))
    assert tol["rtol"] == 2 * (2 * 2.0**-11 + 4 * 2.0**-24) and tol["half_roundings"] == 2, tol
    allowed = allowed_error([1.0, -2.0], rtol=np.float64(0.0), atol=0.5, bound=np.array([3.0, 0.0]))
    assert allowed.tolist() == [0.5, 0.5], allowed
    allowed = allowed_error([1.0, -2.0], rtol=0.25, bound=[4.0, 8.0])
    assert allowed.tolist() == [1.0, 2.0], allowed


def test_the_documented_constants_are_the_ones_used():
    """The numbers docs/spec.md and docs/porting.md state, written here by hand: the
    model tolerances (spec section 9, porting section on the model) and the group limit
    (spec section 2). Tests elsewhere read these constants from the package, so a
    loosened or changed value would otherwise pass them."""
    from neocell_ref.spec import MAX_GROUPS
    from neocell_ref.verify.tolerances import MODEL_RTOL

    documented = {"float64": {"logits": 1e-10, "grad": 1e-10}, "float32": {"logits": 1e-5, "grad": 1e-4}}
    assert MODEL_RTOL == documented, f"MODEL_RTOL is {MODEL_RTOL}, the documentation states {documented}"
    assert MAX_GROUPS == 65_536, f"MAX_GROUPS is {MAX_GROUPS:,}, docs/spec.md section 2 states 65,536"


def test_model_errors_compare_parameter_gradients_per_layer():
    """Hand-made arrays on a tiny network: a vanishing bias gradient (at most
    VANISHING_GRADIENT of its layer) is judged against its layer's largest gradient, every
    other array on its own; missing, reshaped, non-real, NaN and changed-integer results
    are infinite errors."""
    from neocell_ref.architecture import NeoNeXtConfig, describe
    from neocell_ref.verify.tolerances import gradient_peers, model_errors

    arch = describe(NeoNeXtConfig(per_stage_layers=(1, 1, 1, 1), dims=(8, 16, 24, 32), linear_bias=True), 96)
    weight, bias = "grad/stage_1.0.ops.content.fc_2.weight", "grad/stage_1.0.ops.content.fc_2.bias"
    peers = gradient_peers([weight, bias, "logits_eval", "grad/not_a_parameter"], arch)
    assert peers[bias] == [bias, weight] and peers[weight] == [bias, weight], f"fc_2's peers: {peers}"
    assert peers["grad/not_a_parameter"] == ["grad/not_a_parameter"], f"an unknown key's peers: {peers}"
    assert "logits_eval" not in peers, "only parameter gradients have peers"

    ref = {
        weight: np.array([[4.0, -2.0]]),
        bias: np.array([1e-16, -1e-16]),  # rounding noise of an exact zero
        "logits_eval": np.array([2.0, -8.0]),
        "buffers_after_train/stem.norm.num_batches_tracked": np.array(1),
    }
    got = {
        weight: np.array([[4.0, -1.0]]),  # off by 1 where the layer's largest is 4: 1/4
        bias: np.array([3e-16, -1e-16]),  # off by 2e-16: 5e-17 of the layer, 2.0 of its own size
        "logits_eval": np.array([2.0, -6.0]),  # 2 / 8
        "buffers_after_train/stem.norm.num_batches_tracked": np.array(1),
    }
    errors = model_errors(got, ref, arch)
    expected = {weight: 0.25, bias: 5e-17, "logits_eval": 0.25, "buffers_after_train/stem.norm.num_batches_tracked": 0}
    for key, value in expected.items():
        assert errors[key] == pytest.approx(value, rel=1e-12, abs=0), f"{key}: error {errors[key]!r}, by hand {value}"
    for name, change in [
        ("missing", lambda d: d.pop(bias)),
        ("reshaped", lambda d: d.__setitem__(bias, np.zeros(3))),
        ("NaN", lambda d: d.__setitem__(bias, np.array([np.nan, 0.0]))),
        ("count changed", lambda d: d.__setitem__("buffers_after_train/stem.norm.num_batches_tracked", np.array(2))),
    ]:
        bad = dict(got)
        change(bad)
        worst = max(model_errors(bad, ref, arch).values())
        assert worst == math.inf, f"a {name} result gave a finite worst error {worst}"
    for name, answer in [
        ("complex", np.array([1e-16 + 1j, 0])),
        ("bool", np.array([True, False])),
        ("ragged", [[1], []]),
    ]:
        error = model_errors({**got, bias: answer}, ref, arch)[bias]
        assert error == math.inf, f"a {name} answer for {bias} gave error {error}"

    # a small but real gradient is judged on its own size, not loosened by its layer's
    small = {weight: np.array([[4.0, -2.0]]), bias: np.array([0.01, -0.01])}  # 0.0025 of the layer
    errors = model_errors({weight: small[weight], bias: np.array([0.011, -0.01])}, small, arch)
    assert errors[bias] == pytest.approx(0.1, rel=1e-12), f"0.001 off a bias of 0.01: {errors[bias]!r}, by hand 0.1"
    # a reference layer holding Inf leaves no scale to trust: every gradient of the layer fails
    broken = {weight: np.array([[np.inf, -2.0]]), bias: np.array([1.0, -1.0])}
    errors = model_errors({weight: np.array([[np.inf, -2.0]]), bias: np.array([100.0, -1.0])}, broken, arch)
    assert errors[bias] == math.inf and errors[weight] == math.inf, f"errors with an Inf in the layer: {errors}"
    with raises_naming(TypeError, "must be mappings"):
        model_errors([1.0], ref, arch)
    with raises_naming(TypeError, "architecture must be an Architecture", "NoneType"):
        model_errors(got, ref, None)
    assert gradient_peers([weight, 7], arch)[weight] == [weight], "a non-str key is not a gradient name"
    with raises_naming(TypeError, "ref['logits_eval']"):
        model_errors(got, {"logits_eval": np.array([1j])}, arch)
