"""The conformance kit that ports import: it must pass the reference and correct ports,
and catch every planted porting bug, both on the curated golden cases and on drawn ones;
a complex result fails, and checking nothing or what is not a port is refused. (The kit
against the exported golden sets and the fuzz of its arguments: tests/verify/test_golden.py.)"""

import numpy as np
import pytest
from support import mutant_ports

import neocell_ref as nr
from neocell_ref import layers
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


def test_report_names_array_index_values_and_tolerance():
    case_failures = []

    rng = np.random.default_rng(3)
    specs = [{"kernel": 3, "channels": 2, "shift": 1}]
    case = NeoCellCase(
        specs,
        rng.standard_normal((1, 2, 5, 4)),
        [rng.standard_normal((2, 3, 3))],
        [rng.standard_normal((2, 3, 3))],
        rng.standard_normal((1, 2, 5, 4)),
        3,
    )

    def off_by_one_element(x, a, b, s):
        y = nr.neocell_forward(x, a, b, s)
        y[0, 1, 4, 2] += 1e-6
        return y

    results = check_neocell_case(off_by_one_element, None, case, name="planted")
    case_failures = [r for r in results if not r.passed]
    assert len(case_failures) == 1, results
    failure = case_failures[0]
    assert (failure.case, failure.array, failure.index) == ("planted", "y", (0, 1, 4, 2))
    assert failure.got - failure.expected == pytest.approx(1e-6, rel=1e-6)
    assert failure.allowed < 1e-13 and failure.ratio > 1e6


def test_drawn_failure_is_shrunk_to_a_small_case():
    with pytest.raises(AssertionError) as info:
        assert_neocell_matches(mutant_ports.swap_ab_forward, None, golden=False, max_examples=20)
    assert "channels=1" in str(info.value), str(info.value)


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
