"""The conformance kit that ports import: it must pass the reference and correct ports,
and catch every planted porting bug, both on the curated golden cases and on drawn ones;
a complex result fails, and checking nothing or what is not a port is refused. (The kit
against the exported golden sets and the fuzz of its arguments: tests/verify/test_golden.py.)"""

import re
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.vendor.pretty import pretty
from support import mutant_ports
from support.hostile import raises_naming

import neocell_ref as nr
from neocell_ref import layers
from neocell_ref.verify import testing
from neocell_ref.verify.golden_ops import LAYER_CASES_CORE
from neocell_ref.verify.testing import (
    NeoCellCase,
    assert_layer_matches,
    assert_model_matches,
    assert_neocell_matches,
    check_neocell_case,
)


def _reference(method):
    return (
        lambda x, a, b, s: nr.neocell_forward(x, a, b, s, method=method),
        lambda g, x, a, b, s: nr.neocell_backward(g, x, a, b, s, method=method),
    )


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_passes_its_own_kit(dtype):
    assert_neocell_matches(*_reference("patchwise"), dtype=dtype, max_examples=15)


def test_loop_formulation_passes_the_kit():
    assert_neocell_matches(*_reference("loop"), max_examples=10)


def test_independent_port_passes_the_kit():
    assert_neocell_matches(mutant_ports.correct_forward, mutant_ports.correct_backward, max_examples=15)


@pytest.mark.parametrize("bug", mutant_ports.BUGS)
@pytest.mark.parametrize("where", ["golden", "drawn"])
def test_porting_bug_is_caught_by_the_kit(bug, where):
    fwd = getattr(mutant_ports, f"{bug}_forward")
    bwd = getattr(mutant_ports, f"{bug}_backward")
    options = (
        dict(golden=True, max_examples=0) if where == "golden" else dict(golden=False, max_examples=40, shrink=False)
    )
    with pytest.raises(AssertionError) as info:
        assert_neocell_matches(fwd, bwd, **options)
    message = str(info.value)
    # The report names the case, the array, the worst element and the tolerance.
    assert ("golden case" in message) if where == "golden" else ("NeoCellCase(specs=" in message), message
    assert "worst element" in message or "raised" in message or "shape" in message, message


@pytest.mark.parametrize("block", [32, 64, 128], ids=lambda b: f"first {b}")
def test_a_port_covering_only_the_first_block_fails_the_golden_cases(block):
    """A port whose grid covers only the first ``block`` rows, columns or channels (the
    classic launch-size bug of a GPU kernel) fails the curated cases: the core suite has
    more than 128 channels in one case and planes of more than 128 rows and columns in
    another (two identical ports, one per axis, so that each case is shown to matter)."""

    def clipped(limit_channels, limit_plane):
        def clip(a):
            a = np.array(a)
            a[:, limit_channels:] = 0
            a[:, :, limit_plane:, :] = 0
            a[:, :, :, limit_plane:] = 0
            return a

        def forward(x, wa, wb, specs):
            return nr.neocell_forward(clip(x), wa, wb, specs)

        def backward(gy, x, wa, wb, specs):
            gx, ga, gb = nr.neocell_backward(gy, clip(x), wa, wb, specs)
            return clip(gx), ga, gb

        return forward, backward

    for limits, case in (((block, 10**9), "mixed_4p7_shift1_130ch"), ((10**9, block), "mixed_4p7_shift1_131x134")):
        with pytest.raises(AssertionError) as info:
            assert_neocell_matches(*clipped(*limits), max_examples=0)
        assert f"golden case '{case}'" in str(info.value), f"clipped at {limits}: {str(info.value)[:600]}"


@pytest.mark.parametrize("kind", ["drop_path", "batchnorm"])
def test_a_gradient_for_an_input_that_is_not_differentiated_fails_the_case(kind):
    """docs/porting.md section 2: a layer backward returns None for the drop-path scale
    and for the running statistics; a port returning arrays there computes something
    nothing would compare, and fails."""
    own = {"drop_path": layers.drop_path_backward, "batchnorm": layers.batchnorm_backward}[kind]

    def backward(*args, **options):
        grads = list(own(*args, **options))
        inputs = args[1:]
        return [g if g is not None or i >= len(inputs) else np.zeros_like(inputs[i]) for i, g in enumerate(grads)]

    with pytest.raises(AssertionError) as info:
        assert_layer_matches(kind, None, backward)
    assert "not differentiated" in str(info.value), str(info.value)[:800]
    assert_layer_matches(kind, None, own)  # the reference's own None passes


def _small_case(seed):
    """A shifted kernel-3 layer of two channels on a 5 x 4 plane, drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    return NeoCellCase(
        [{"kernel": 3, "channels": 2, "shift": 1}],
        rng.standard_normal((1, 2, 5, 4)),
        [rng.standard_normal((2, 3, 3))],
        [rng.standard_normal((2, 3, 3))],
        rng.standard_normal((1, 2, 5, 4)),
        seed,
    )


def test_the_kit_takes_each_output_when_its_call_returns():
    """A wrong forward into a kept buffer that the backward then fixes is still a
    failing ``y`` in the kit (the outputs are copied when each call returns)."""
    case = _small_case(5)
    results = check_neocell_case(mutant_ports.zero_kept_forward, mutant_ports.fixing_kept_backward, case)
    assert [r.array for r in results if not r.passed] == ["y"], results


def test_report_names_array_index_values_and_tolerance():
    case_failures = []
    case = _small_case(3)

    def off_by_one_element(x, a, b, s):
        y = nr.neocell_forward(x, a, b, s)
        y[0, 1, 4, 2] += 1e-6
        return y

    results = check_neocell_case(off_by_one_element, None, case, name="planted")
    case_failures = [r for r in results if not r.passed]
    assert len(case_failures) == 1, results
    failure = case_failures[0]
    assert (failure.case, failure.array, failure.index) == ("planted", "y", (0, 1, 4, 2)), (
        f"failure reported at {(failure.case, failure.array, failure.index)}, planted at ('planted', 'y', (0, 1, 4, 2))"
    )
    assert failure.got - failure.expected == pytest.approx(1e-6, rel=1e-6), (
        f"reported got - expected = {failure.got - failure.expected!r} (got {failure.got!r}, expected "
        f"{failure.expected!r}), planted 1e-6"
    )
    assert failure.allowed < 1e-13 and failure.ratio > 1e6, (
        f"allowed {failure.allowed!r} (expected < 1e-13), ratio {failure.ratio!r} (expected > 1e6)"
    )


def test_drawn_failure_is_shrunk_to_a_small_case():
    with pytest.raises(AssertionError) as info:
        assert_neocell_matches(mutant_ports.swap_ab_forward, None, golden=False, max_examples=20)
    assert "'channels': 1," in str(info.value), f"not shrunk to one channel:\n{info.value}"


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        assert_neocell_matches(None)
    with pytest.raises(TypeError, match="dtype"):
        assert_neocell_matches(*_reference("patchwise"), dtype=np.int32)


@pytest.mark.parametrize("layer", sorted({kind for _, kind, _, _ in LAYER_CASES_CORE}))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_layers_pass_the_layer_kit(layer, dtype):
    assert_layer_matches(layer, getattr(layers, f"{layer}_forward"), getattr(layers, f"{layer}_backward"), dtype=dtype)


@pytest.mark.parametrize(
    "layer, forward",
    [
        ("batchnorm", mutant_ports.batchnorm_unbiased_forward),
        ("gelu", mutant_ports.gelu_tanh_forward),
    ],
)
def test_layer_bugs_are_caught_by_the_kit(layer, forward):
    with pytest.raises(AssertionError, match="golden case"):
        assert_layer_matches(layer, forward)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reference_model_passes_the_model_kit(dtype):
    assert_model_matches(mutant_ports.correct_model_forward, mutant_ports.correct_model_backward, dtype=dtype)


@pytest.mark.parametrize("bug", mutant_ports.MODEL_BUGS)
def test_model_bugs_are_caught_by_the_kit(bug):
    with pytest.raises(AssertionError, match="tiny_default_options"):
        assert_model_matches(
            getattr(mutant_ports, f"model_{bug}_forward"), getattr(mutant_ports, f"model_{bug}_backward")
        )


def test_layer_kit_refuses_unknown_layers():
    with pytest.raises(ValueError, match="unknown layer"):
        assert_layer_matches("neocell", layers.gelu_forward)


# --------------------------------------------------------------------------------------
# hostile ports and arguments (issue "Verdicts that cannot be fooled"): a complex result
# fails, checking nothing and what is not a port are refused
# --------------------------------------------------------------------------------------
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
        assert_neocell_matches("support.mutant_ports:correct_forward")
    with pytest.raises(TypeError, match="port_backward must be callable"):
        assert_layer_matches("gelu", layers.gelu_forward, 3)
    with pytest.raises(TypeError, match="case must be a NeoCellCase"):
        check_neocell_case(mutant_ports.correct_forward, None, ("specs", "x"))


# --------------------------------------------------------------------------------------
# the strategies refuse bad options when they are made (not at draw time with
# hypothesis' InvalidArgument, and never by silently converting them)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda: testing.spatial_sizes(0), ValueError, "max_size must be >= 1, got 0"),
        (lambda: testing.spatial_sizes(2.5), TypeError, "max_size must be an integer, got 2.5"),
        (lambda: testing.kernel_sizes(0), ValueError, "max_kernel must be >= 1, got 0"),
        (lambda: testing.channel_counts(-1), ValueError, "max_channels must be >= 1, got -1"),
        (lambda: testing.kernel_codes(max_parts=0), ValueError, "max_parts must be >= 1, got 0"),
        (lambda: testing.kernel_codes(max_kernel="7"), TypeError, "max_kernel must be an integer, got '7'"),
        (lambda: testing.group_specs(max_kernel=0), ValueError, "max_kernel must be >= 1, got 0"),
        (lambda: testing.group_specs(max_channels=1.0), TypeError, "max_channels must be an integer, got 1.0"),
        (lambda: testing.group_specs(as_dicts="yes"), TypeError, "as_dicts must be True, False or None, got 'yes'"),
        (lambda: testing.group_specs(as_dicts=1), TypeError, "as_dicts must be True, False or None, got 1"),
        (lambda: testing.group_specs(shifts="no"), TypeError, "shifts must be True or False \\(a bool\\), got 'no'"),
        (lambda: testing.group_specs(form=["kernel"]), ValueError, "form must be one of"),
        (lambda: testing.layer_specs(height=2.7), TypeError, "height must be an integer, got 2.7"),
        (lambda: testing.layer_specs(height="7"), TypeError, "height must be an integer, got '7'"),
        (lambda: testing.layer_specs(height=0), ValueError, "height must be >= 1, got 0"),
        (lambda: testing.layer_specs(width=-3), ValueError, "width must be >= 1, got -3"),
        (lambda: testing.layer_specs(max_size=0), ValueError, "max_size must be >= 1, got 0"),
        (lambda: testing.layer_specs(max_groups=0), ValueError, "max_groups must be >= 1, got 0"),
        (lambda: testing.layer_specs(max_kernel=0), ValueError, "max_kernel must be >= 1, got 0"),
        (lambda: testing.layer_specs(max_channels=0), ValueError, "max_channels must be >= 1, got 0"),
        (
            lambda: testing.layer_specs(resample=None),
            TypeError,
            "resample must be True or False \\(a bool\\), got None",
        ),
        (lambda: testing.layer_specs(as_dicts="yes"), TypeError, "as_dicts must be True, False or None, got 'yes'"),
        (lambda: testing.neocell_cases(dtype=np.int32), TypeError, "dtype must be one of float16, float32, float64"),
        (lambda: testing.neocell_cases("bfloat16"), TypeError, "dtype must be one of float16, float32, float64"),
        (lambda: testing.neocell_cases(None), TypeError, "dtype must be one of float16, float32, float64"),
        (lambda: testing.neocell_cases(np.float32(1)), TypeError, "dtype must be one of .*, got np.float32\\(1.0\\)"),
        # the assert_*_matches helpers: a number is not read as its dtype, an unknown name is shown as given
        (
            lambda: testing.assert_neocell_matches(lambda *a: None, dtype=np.float64(2.0)),
            TypeError,
            "dtype must be float32 or float64, got np.float64\\(2.0\\)",
        ),
        (
            lambda: testing.assert_neocell_matches(lambda *a: None, dtype="foo"),
            TypeError,
            "dtype must be float32 or float64, got 'foo'",
        ),
        (
            lambda: testing.assert_model_matches(lambda *a: None, dtype=None),
            TypeError,
            "dtype must be float32 or float64, got None",
        ),
        (lambda: testing.neocell_cases(max_batch=0), ValueError, "max_batch must be >= 1, got 0"),
        (lambda: testing.neocell_cases(layers=3), TypeError, "layers must be a hypothesis strategy"),
        # bounded so that a draw cannot take unbounded time (every kernel pair is listed)
        (lambda: testing.kernel_sizes(65), ValueError, "max_kernel must be at most 64, got 65"),
        (lambda: testing.kernel_codes(max_kernel=10**5), ValueError, "max_kernel must be at most 64, got 100000"),
        (lambda: testing.group_specs(max_kernel=65), ValueError, "max_kernel must be at most 64, got 65"),
        (lambda: testing.layer_specs(max_kernel=65), ValueError, "max_kernel must be at most 64, got 65"),
        (lambda: testing.layer_specs(max_groups=65), ValueError, "max_groups must be at most 64, got 65"),
    ],
)
def test_strategies_refuse_bad_options_when_made(make, error, words):
    with pytest.raises(error, match=words):
        make()  # no draw: the error comes when the strategy is made


def _draw_some(strategy, count=5):
    drawn = []

    @settings(max_examples=count, database=None, deadline=None, derandomize=True)
    @given(value=strategy)
    def collect(value):
        drawn.append(value)

    collect()
    return drawn


def test_a_size_strategy_drawing_zero_is_refused_when_drawn():
    with pytest.raises(ValueError, match=r"height \(drawn from the height strategy\) must be >= 1, got 0"):
        _draw_some(testing.layer_specs(height=st.just(0)))
    sizes = {layer.size for layer in _draw_some(testing.layer_specs(height=st.just(3), width=np.int64(2)))}
    assert sizes == {(3, 2)}, sizes


@pytest.mark.parametrize(
    "layers, words",
    [
        (dict(height=10**5, width=10**5), ["neocell_cases: x", "(1, ", "100000, 100000)", "memory budget"]),
        (
            st.just(testing.LayerSpecs([{"kernel": 64, "channels": 1}], (1, 1))),
            ["neocell_cases: weight_a_0", "(1, 64, 64)", "memory budget"],
        ),
    ],
    ids=["input", "kernel"],
)
def test_neocell_cases_refuse_arrays_over_the_budget_before_allocating(layers, words):
    # a fixed size or a large kernel is checked when drawn, by name, not by a
    # MemoryError (or swapping) inside NumPy's generator
    from neocell_ref.validation import max_bytes_set_to

    if isinstance(layers, dict):
        layers = testing.layer_specs(**layers)
    with max_bytes_set_to(10**4), raises_naming(ValueError, *words):
        _draw_some(testing.neocell_cases(layers=layers, max_batch=1), 20)


@pytest.mark.parametrize("dtype", [np.float16, "float32", np.dtype(np.float64)])
def test_neocell_cases_draw_in_the_supported_dtypes(dtype):
    cases = _draw_some(testing.neocell_cases(dtype, max_batch=1))
    dtypes = {a.dtype for case in cases for a in (case.x, *case.weights_a, *case.weights_b, case.grad_y)}
    assert dtypes == {np.dtype(dtype)}, dtypes


@pytest.mark.parametrize(
    "options, error, words",
    [
        (dict(name=5), TypeError, "name must be a str or None, got int 5"),
        (dict(name=b"case"), TypeError, "name must be a str or None, got bytes"),
        (dict(diagnose="no"), TypeError, "diagnose must be True or False \\(a bool\\), got 'no'"),
        (dict(diagnose=None), TypeError, "diagnose must be True or False \\(a bool\\), got None"),
    ],
)
def test_check_neocell_case_refuses_bad_name_and_diagnose(options, error, words):
    case = _draw_some(testing.neocell_cases(), 1)[0]
    with pytest.raises(error, match=words):
        check_neocell_case(mutant_ports.correct_forward, None, case, **options)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("value", [np.inf, np.nan])
@pytest.mark.parametrize("key", ["x", "grad_y", "weight_b_0"])
def test_a_case_with_nan_or_inf_is_refused_by_name(dtype, value, key):
    """A non-finite input makes expected values NaN, against which any output would
    pass (a port writing zeros passed an all-NaN x; a float16 case's atol came from an
    infinite sum): refused before the port runs."""
    x = np.ones((1, 1, 2, 2), dtype=dtype)
    weights_a, weights_b = [np.ones((1, 2, 2), dtype=dtype)], [np.ones((1, 2, 2), dtype=dtype)]
    grad_y = np.ones_like(x)
    {"x": x, "grad_y": grad_y, "weight_b_0": weights_b[0]}[key][0, 0, 0] = value
    case = NeoCellCase([{"kernel": 2, "channels": 1}], x, weights_a, weights_b, grad_y)
    calls = []
    with pytest.raises(ValueError, match=f"{key} of the case holds NaN or Inf"):
        check_neocell_case(lambda *args: calls.append(args), None, case)
    assert not calls, "the port ran on a refused case"


@pytest.mark.parametrize(
    "x_value, weight_value, grad_y_value, words",
    [
        (1e154, 1e154, 1.0, ["expected value", "'y'"]),  # y = inf·0 = NaN in the reference
        # rows of opposite signs cancel: y is exactly 0 (and with grad_y = 0 every
        # gradient too), but y's magnitude bound is inf, under which any output passed
        (1e308, 1.0, 0.0, ["magnitude bound", "'bound/y'"]),
    ],
    ids=["reference", "bound"],
)
def test_a_case_whose_reference_overflows_is_refused(x_value, weight_value, grad_y_value, words):
    x = np.full((1, 1, 2, 2), x_value)
    x[0, 0, 1] *= -1
    weights = [np.full((1, 2, 2), weight_value)]
    grad_y = np.full_like(x, grad_y_value)
    case = NeoCellCase([{"kernel": 2, "channels": 1}], x, weights, weights, grad_y)
    calls = []
    with raises_naming(ValueError, "not finite for this case", *words):
        check_neocell_case(lambda *args: calls.append(args), None, case)
    assert not calls, "the port ran on a refused case"


# --------------------------------------------------------------------------------------
# a drawn failure prints the case's structure, not every array
# --------------------------------------------------------------------------------------
def test_hypothesis_prints_a_case_as_its_repr():
    case = _draw_some(testing.neocell_cases(), 1)[0]
    assert pretty(case) == repr(case), pretty(case)[:500]


def test_falsifying_example_of_a_drawn_case_is_short_and_names_the_seed():
    def zero_forward(x, weights_a, weights_b, specs):
        return np.zeros_like(nr.neocell_forward(x, weights_a, weights_b, specs))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(AssertionError) as info:
            assert_neocell_matches(zero_forward, golden=False, max_examples=10, shrink=False)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    text = f"{info.value}\n{notes}"
    assert "Falsifying example" in notes, notes[:2000]
    seeds = re.findall(r"seed=(\d+)", str(info.value))
    assert seeds and f"seed={seeds[0]}" in notes, f"seed of the message {seeds} not in the note:\n{notes[:2000]}"
    assert len(text) < 5000, f"failure report of {len(text)} characters:\n{text[:3000]}"
    assert "array(" not in notes, notes[:3000]
    large = [str(w.message) for w in caught if "overly large repr" in str(w.message)]
    assert not large, large


def test_a_case_prints_its_specs_as_the_port_receives_them():
    """The repr a failure shows reproduces the case in the form a port is called with:
    official-style dicts (a GroupSpec as its explicit dict), not GroupSpec objects."""
    from neocell_ref.spec import parse_specs

    (group,) = parse_specs([{"kernel": 4, "channels": 2, "shift": 1}])
    case = testing.NeoCellCase(
        [group], np.zeros((1, 2, 5, 5)), [np.zeros((2, 4, 4))], [np.zeros((2, 4, 4))], np.zeros((1, 2, 5, 5)), seed=3
    )
    text = repr(case)
    written = "[{'h_in': 4, 'h_out': 4, 'w_in': 4, 'w_out': 4, 'channels': 2, 'shift_a': 1, 'shift_b': 1}]"
    assert f"specs={written}" in text and "GroupSpec" not in text and "seed=3" in text, text
