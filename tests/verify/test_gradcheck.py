"""The gradient checker, and the teeth of the conformance comparison.

A checker that passes everything proves nothing. Here it must

* pass the package's correct backward (every method);
* reject deliberately broken backwards: every gradient scaled by 1.001, the wrapped
  corner's contribution dropped, a backward that ignores the shift, a transposed
  kernel gradient, one wrong element;
* name the input and the index of the worst element in its report.

That the official conformance comparison fails when the expansion rule, its adjoint or
the padding geometry is subtly wrong is shown in tests/meta/test_neocell_mutants.py.
"""

import copy

import numpy as np
import pytest
from support.hostile import raises_naming

# The modules themselves, for monkeypatching.
from neocell_ref import neocell_backward, parse_kernel_code
from neocell_ref.expansion import expand
from neocell_ref.spec import GroupSpec, parse_specs
from neocell_ref.verify.gradcheck import GradcheckReport, assert_gradients, check_gradients, neocell_gradcheck

METHODS = ("loop", "patchwise", "blockdiag")


def _case(specs, x_shape, seed=0):
    groups = parse_specs(specs)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(x_shape)
    wa = [rng.standard_normal(g.shape_a) for g in groups]
    wb = [rng.standard_normal(g.shape_b) for g in groups]
    return specs, x, wa, wb


# A shifted, mixed layer: group 0 kernel 4 shift 1 (channels use shifts 0, 1, 2, 3),
# group 1 kernel 3 with shift_a 1 / shift_b 2 (shifts 0/0, 1/2, 2/2 ... per channel).
SHIFTED = (
    [{"kernel": 4, "channels": 4, "shift": 1}, {"kernel": 3, "channels": 3, "shift_a": 1, "shift_b": 2}],
    (2, 7, 5, 6),
)


def _report_inputs(report):
    return {r.name: r for r in report.inputs}


# ======================================================================================
# the checker accepts correct gradients
# ======================================================================================
@pytest.mark.parametrize("method", METHODS)
def test_accepts_the_correct_backward(method):
    specs, x, wa, wb = _case(*SHIFTED)
    report = neocell_gradcheck(x, wa, wb, specs, method=method, max_elements=64)
    assert isinstance(report, GradcheckReport), f"neocell_gradcheck returned a {type(report).__name__}"
    assert report.passed, f"{method}: the correct backward was rejected\n{report}"
    names = [r.name for r in report.inputs]
    assert names == ["x", "weights_a[0]", "weights_a[1]", "weights_b[0]", "weights_b[1]"], names
    assert "PASSED" in str(report), f"{method}: no 'PASSED' in the report text\n{report}"


def test_accepts_a_medium_layer_with_default_settings():
    """'4+7' with 9 channels on 10x11: about 2000 outputs, no tuning of eps or tolerances."""
    specs = parse_kernel_code("4+7", 9, 1)
    _, x, wa, wb = _case(specs, (2, 9, 10, 11), seed=21)
    report = neocell_gradcheck(x, wa, wb, specs)
    assert report.passed, f"the correct backward was rejected with default settings\n{report}"


def test_generic_checker_on_a_nonlinear_function():
    """check_gradients is generic: f(x, w) = sin(x) * w**3 with its exact derivatives."""
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((3, 4)), rng.standard_normal((3, 4))]

    def forward(x, w):
        return np.sin(x) * w**3

    def backward(g, x, w):
        return [g * np.cos(x) * w**3, g * np.sin(x) * 3 * w**2]

    def wrong_backward(g, x, w):
        return [g * np.cos(x) * w**3, g * np.sin(x) * 2 * w**2]

    report = assert_gradients(forward, backward, inputs, names=["x", "w"])
    assert report.passed, f"assert_gradients returned a failed report\n{report}"
    bad = check_gradients(forward, wrong_backward, inputs, names=["x", "w"])
    by_name = _report_inputs(bad)
    assert not bad.passed and by_name["x"].passed and not by_name["w"].fd_passed, f"\n{bad}"
    with pytest.raises(AssertionError, match="FAILED"):
        assert_gradients(forward, wrong_backward, inputs, names=["x", "w"])


def test_checker_argument_errors():
    def forward(x):
        return 2 * x

    with pytest.raises(ValueError, match="names has 2 entries but there are 1 inputs"):
        check_gradients(forward, lambda g, x: [2 * g], [np.ones(3)], names=["a", "b"])
    with pytest.raises(ValueError, match=r"returned 2 gradients for 1 inputs"):
        check_gradients(forward, lambda g, x: [2 * g, 2 * g], [np.ones(3)])
    with pytest.raises(ValueError, match=r"gradient of input0 has shape \(2,\), input has \(3,\)"):
        check_gradients(forward, lambda g, x: [np.ones(2)], [np.ones(3)])


# ======================================================================================
# the checker rejects wrong gradients and says where
# ======================================================================================
def _check(backward, specs, x, wa, wb, **kwargs):
    kwargs.setdefault("max_elements", 200)  # every element of these small inputs
    return neocell_gradcheck(x, wa, wb, specs, backward=backward, **kwargs)


def test_rejects_gradients_scaled_by_1_001():
    specs, x, wa, wb = _case(*SHIFTED)

    def scaled(gy, x_, wa_, wb_, sp):
        gx, ga, gb = neocell_backward(gy, x_, wa_, wb_, sp)
        return 1.001 * gx, [1.001 * g for g in ga], [1.001 * g for g in gb]

    report = _check(scaled, specs, x, wa, wb)
    assert not report.passed, f"a 0.1 % scaling error was accepted\n{report}"
    for r in report.inputs:
        assert not r.fd_passed and not r.dot_passed, f"{r.name}: the scaling went unnoticed\n{report}"
    assert "FAILED" in str(report), f"no 'FAILED' in the report text\n{report}"


def _corner_part_of_a(gy, x, wa, wb, specs):
    """Contribution of the wrapped corners to dK_A, per group (test-side computation).

    dÂ = Σ_n (dy B̂ᵀ) xᵀ; the corner of a channel with shift s is dÂ[:s, :s], which
    SPEC 5 adds into dK[p-s:, q-s:].
    """
    groups = parse_specs(specs)
    a_full, b_full = expand(wa, wb, specs, x.shape[2:])
    dz = gy @ b_full.transpose(0, 2, 1)
    grad_a_full = (dz @ x.transpose(0, 1, 3, 2)).sum(axis=0)
    corner, start = [], 0
    for g in groups:
        part = np.zeros(g.shape_a)
        for c, s in enumerate(g.channel_shifts()[0]):
            if s:
                part[c, g.h_out - s :, g.h_in - s :] = grad_a_full[start + c, :s, :s]
        corner.append(part)
        start += g.channels
    return corner


def test_rejects_dropped_corner_and_names_the_kernel_entry():
    specs, x, wa, wb = _case(*SHIFTED)

    def corner_dropped(gy, x_, wa_, wb_, sp):
        gx, ga, gb = neocell_backward(gy, x_, wa_, wb_, sp)
        corner = _corner_part_of_a(gy, x_, wa_, wb_, sp)
        assert all(np.abs(c).max() > 0 for c in corner), "test setup: no corner contribution"
        return gx, [g - c for g, c in zip(ga, corner)], gb

    report = _check(corner_dropped, specs, x, wa, wb)
    by_name = _report_inputs(report)
    assert not report.passed, f"a backward without the corner was accepted\n{report}"
    for name in ("x", "weights_b[0]", "weights_b[1]"):
        assert by_name[name].passed, f"{name} was blamed although its gradient is right\n{report}"
    for g, name in enumerate(("weights_a[0]", "weights_a[1]")):
        r = by_name[name]
        assert not r.fd_passed and not r.dot_passed, f"{name}: missing corner not detected\n{report}"
        c, row, col = r.worst_index
        spec = parse_specs(specs)[g]
        s = int(spec.channel_shifts()[0][c])
        assert s > 0 and row >= spec.h_out - s and col >= spec.h_in - s, (
            f"{name}: worst element {r.worst_index} is not in the bottom-right corner of a shifted channel"
        )
        assert str(r.worst_index) in str(report), f"the report does not print the index {r.worst_index}"


def test_rejects_a_backward_that_ignores_the_shift():
    specs, x, wa, wb = _case(*SHIFTED)
    unshifted = [GroupSpec(g.channels, g.h_in, g.h_out, g.w_in, g.w_out) for g in parse_specs(specs)]

    def shift_ignored(gy, x_, wa_, wb_, sp):
        return neocell_backward(gy, x_, wa_, wb_, unshifted)

    report = _check(shift_ignored, specs, x, wa, wb)
    assert not report.passed, f"a backward with shift 0 was accepted\n{report}"
    assert not _report_inputs(report)["x"].passed, f"grad_x of the wrong operator was accepted\n{report}"


@pytest.mark.parametrize("which", ["a", "b"])
def test_rejects_a_transposed_kernel_gradient(which):
    specs, x, wa, wb = _case(*SHIFTED)

    def transposed(gy, x_, wa_, wb_, sp):
        gx, ga, gb = neocell_backward(gy, x_, wa_, wb_, sp)
        if which == "a":
            ga = [ga[0].transpose(0, 2, 1), ga[1]]
        else:
            gb = [gb[0], gb[1].transpose(0, 2, 1)]
        return gx, ga, gb

    report = _check(transposed, specs, x, wa, wb)
    bad = "weights_a[0]" if which == "a" else "weights_b[1]"
    failed = [r.name for r in report.inputs if not r.passed]
    assert failed == [bad], f"expected only {bad} to fail, got {failed}\n{report}"
    assert report.worst.name == bad, f"worst input is {report.worst.name}, expected {bad}\n{report}"


def test_report_names_a_single_wrong_element():
    specs, x, wa, wb = _case([{"kernel": 2, "channels": 2, "shift": 1}], (1, 2, 3, 4))
    index = (0, 1, 2, 3)

    def one_wrong(gy, x_, wa_, wb_, sp):
        gx, ga, gb = neocell_backward(gy, x_, wa_, wb_, sp)
        gx = gx.copy()
        gx[index] += 1e-3
        return gx, ga, gb

    report = _check(one_wrong, specs, x, wa, wb)
    r = _report_inputs(report)["x"]
    assert not r.fd_passed, f"one element off by 1e-3 was accepted\n{report}"
    assert r.worst_index == index, f"worst element reported at {r.worst_index}, the wrong one is {index}\n{report}"
    assert abs((r.analytic - r.numeric) - 1e-3) < 1e-8, f"reported values {r.analytic}, {r.numeric}"
    assert report.worst.name == "x", f"worst input reported {report.worst.name!r}, the wrong one is 'x'\n{report}"
    assert "x " in str(report) and str(index) in str(report), f"report does not name x {index}:\n{report}"


# --------------------------------------------------------------------------------------
# hostile input (issue "Verdicts that cannot be fooled", section 5)
# --------------------------------------------------------------------------------------
def _double(x):
    return 2 * x


def _double_back(g, x):
    return [2 * g]


@pytest.mark.parametrize(
    "eps, words",
    [
        (0, ("eps", "> 0")),
        (-1e-6, ("eps", "> 0")),
        (float("nan"), ("eps", "finite")),
        (float("inf"), ("eps", "finite")),
    ],
)
def test_check_gradients_refuses_bad_eps(eps, words):
    with raises_naming(ValueError, *words):
        check_gradients(_double, _double_back, [np.ones(3)], eps=eps)


@pytest.mark.parametrize("name", ["rtol", "atol", "dot_rtol"])
def test_check_gradients_refuses_tolerances_that_accept_anything(name):
    with raises_naming(ValueError, name, "finite"):
        check_gradients(_double, _double_back, [np.ones(3)], **{name: float("inf")})
    with raises_naming(ValueError, name, ">= 0"):
        check_gradients(_double, _double_back, [np.ones(3)], **{name: -1.0})


def test_check_gradients_refuses_wrt_outside_inputs():
    with raises_naming(ValueError, "wrt", "[5]", "1 inputs"):
        check_gradients(_double, _double_back, [np.ones(3)], wrt=[5])
    with raises_naming(ValueError, "wrt", ">= 0"):
        check_gradients(_double, _double_back, [np.ones(3)], wrt=[-1])
    with raises_naming(ValueError, "wrt", "twice"):
        check_gradients(_double, _double_back, [np.ones(3)], wrt=[0, 0])
    with raises_naming(TypeError, "wrt", "integer"):
        check_gradients(_double, _double_back, [np.ones(3)], wrt=[True])


def test_check_gradients_rng_must_be_a_generator():
    with raises_naming(TypeError, "rng", "Generator", "0"):
        check_gradients(_double, _double_back, [np.ones(3)], rng=0)


def test_check_gradients_refuses_to_check_nothing():
    with raises_naming(ValueError, "nothing to check", "None for every input"):
        check_gradients(_double, lambda g, x: [None], [np.ones(3)])
    with raises_naming(ValueError, "nothing to check", "wrt is empty"):
        check_gradients(_double, _double_back, [np.ones(3)], wrt=[])
    with raises_naming(ValueError, "nothing to check", "inputs is empty"):
        check_gradients(lambda: np.ones(2), lambda g: [], [])
    with raises_naming(ValueError, "wrt selects", "input1", "None"):
        check_gradients(lambda a, b: a * b, lambda g, a, b: [g * b, None], [np.ones(2), np.ones(2)], wrt=[1])


def test_check_gradients_refuses_complex_gradients_and_outputs():
    with raises_naming(TypeError, "gradient of input0", "complex"):
        check_gradients(_double, lambda g, x: [2 * g + 1e6j], [np.ones(3)])
    with raises_naming(TypeError, "forward's output", "complex"):
        check_gradients(lambda x: x * 1j, _double_back, [np.ones(3)])
    with raises_naming(TypeError, "backward must return a sequence"):
        check_gradients(_double, lambda g, x: None, [np.ones(3)])


def test_check_gradients_still_passes_and_fails_what_it_should():
    report = check_gradients(_double, _double_back, [np.ones(3)])
    assert report.passed, f"the exact gradient of 2x was rejected\n{report}"
    report = check_gradients(_double, lambda g, x: [2.001 * g], [np.ones(3)])
    assert not report.passed, f"a gradient 0.05 % off (2.001 for 2) was accepted\n{report}"


def test_a_step_that_rounds_away_is_refused_not_passed():
    """Where |x| dwarfs eps, x ± eps rounds back to x: every difference would be 0 and a
    zero gradient would match. The checker refuses, naming eps, the input and the index."""
    for inputs in ([np.full(4, 1e11)], [np.array([1.0, 1e11, 1.0])]):
        with raises_naming(ValueError, "eps=1e-06", "input0", "rounds back"):
            check_gradients(lambda a: 3 * a, lambda g, a: [np.zeros_like(a)], inputs, max_elements=8)
    rng = np.random.default_rng(0)
    args = ([rng.standard_normal((1, 2, 2))], [rng.standard_normal((1, 2, 2))], [{"kernel": 2, "channels": 1}])
    with raises_naming(ValueError, "eps=0.001", "x at", "rounds back"):
        neocell_gradcheck(rng.standard_normal((1, 1, 4, 4)) * 1e14, *args)


def test_empty_inputs_check_nothing_and_are_refused():
    with raises_naming(ValueError, "nothing to check", "input0"):
        check_gradients(lambda a: 2 * a, lambda g, a: [1000 * g], [np.ones((0, 3))])


def test_a_nan_gradient_is_reported_at_its_element():
    report = check_gradients(lambda a: 2 * a, lambda g, a: [np.where(np.arange(3) == 1, np.nan, 2 * g)], [np.ones(3)])
    (row,) = report.inputs
    assert not row.passed and row.worst_index == (1,) and np.isnan(row.analytic), str(report)


def test_zero_tolerances_fail_any_error_without_dividing_by_zero():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = check_gradients(lambda a: a, lambda g, a: [g + 1e-3], [np.ones(3)], rtol=0, atol=0, dot_rtol=0)
    assert not report.passed, str(report)


def test_neocell_gradcheck_gives_a_port_the_specs_as_official_dicts():
    """A port's backward is called as docs/porting.md section 2 says: specs are the
    official-style dicts as the caller wrote them (a GroupSpec as its explicit dict),
    never GroupSpec objects, and fresh: a port writing into them changes neither the
    caller's specs nor what a later check gives the port (one backward call per check)."""
    rng = np.random.default_rng(0)
    seen = []  # the specs each call received, as received

    def port_backward(gy, x, wa, wb, specs):
        assert all(type(s) is dict for s in specs), [type(s).__name__ for s in specs]
        seen.append(copy.deepcopy(specs))
        specs[0]["channels"] = -1  # a port scribbling on its argument changes nothing
        return neocell_backward(gy, x, wa, wb, parse_specs([dict(s, channels=2) for s in specs]))

    written = [{"kernel": 4, "channels": 2, "shift": 1}]
    x = rng.standard_normal((1, 2, 6, 6))
    wa, wb = [rng.standard_normal((2, 4, 4))], [rng.standard_normal((2, 4, 4))]
    for run in range(2):  # the second run gets fresh dicts although the port wrote into the first's
        report = neocell_gradcheck(x, wa, wb, written, backward=port_backward)
        assert report.passed, f"run {run}: port backward given dict specs was rejected\n{report}"
    assert len(seen) == 2 and all(s == written for s in seen), f"specs as received, call by call: {seen}"
    assert written == [{"kernel": 4, "channels": 2, "shift": 1}], f"the caller's specs were changed: {written}"
    (group,) = parse_specs(written)
    seen.clear()
    report = neocell_gradcheck(x, wa, wb, [group], backward=port_backward)
    assert report.passed, f"port backward given GroupSpec specs was rejected\n{report}"
    assert seen and all(s == [group.to_dict()] for s in seen), f"a GroupSpec reached the port as {seen}"


def test_neocell_gradcheck_names_a_weight_list_of_the_wrong_length():
    rng = np.random.default_rng(0)
    specs = [{"kernel": 2, "channels": 1}]
    w = [rng.standard_normal((1, 2, 2))]
    with raises_naming(ValueError, "weights_a has 2 arrays", "1 group"):
        neocell_gradcheck(rng.standard_normal((1, 1, 4, 4)), w * 2, w, specs)
    with raises_naming(TypeError, "names", "'xy'"):
        check_gradients(lambda a, b: a + b, lambda g, a, b: [g, g], [np.ones(2), np.ones(2)], names="xy")
    with raises_naming(TypeError, "forward must be callable", "None"):
        check_gradients(None, lambda g, a: [g], [np.ones(2)])


def test_a_non_finite_input_element_is_named_not_blamed_on_eps():
    with raises_naming(ValueError, "input0 at (1,) is nan", "finite"):
        check_gradients(lambda a: 2 * a, lambda g, a: [2 * g], [np.array([1.0, np.nan])])


@pytest.mark.parametrize("side", ["a", "b"])
def test_neocell_gradcheck_refuses_a_backward_without_kernel_gradients(side):
    """A backward returning None for a kernel is refused by name, not reported as
    passed with the kernel's rows left out."""
    specs = parse_kernel_code("3", channels=2, shift=1)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 5, 4))
    wa, wb = [rng.standard_normal((2, 3, 3))], [rng.standard_normal((2, 3, 3))]

    def without_kernel_gradient(gy, x_, a, b, s):
        gx, ga, gb = neocell_backward(gy, x_, a, b, s)
        return (gx, [None], gb) if side == "a" else (gx, ga, [None])

    with raises_naming(ValueError, f"weights_{side}[0]", "backward returned None"):
        neocell_gradcheck(x, wa, wb, specs, backward=without_kernel_gradient)
    # the package's own backward: every input has its rows
    report = neocell_gradcheck(x, wa, wb, specs)
    assert [row.name for row in report.inputs] == ["x", "weights_a[0]", "weights_b[0]"], report
