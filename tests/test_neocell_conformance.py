"""Official conformance: the three formulations reproduce the authors' implementation.

``tests/data/official_neocell.{npz,json}`` hold outputs of the official NeoNeXt PyTorch
implementation in float64 (provenance in ``tests/data/PROVENANCE.md``): an independent
source of expected values. For every case and every method, the forward output, the
input gradient and every kernel gradient must match with SPEC 9's relative error
``max|got - ref| / max|ref| <= 1e-12``. The case specs are passed exactly as the JSON
writes them (official dict forms).

``conformance_errors`` is also used by ``test_gradcheck.py`` to prove that this
comparison fails for a subtly wrong expansion rule.
"""

import json

import numpy as np
import pytest
from conftest import DATA

from neocell_ref import neocell_backward, neocell_forward
from neocell_ref.verify.tolerances import relative_error

METHODS = ("loop", "patchwise", "blockdiag")
#: float64 against float64: both sides round differently, but only at the 1e-16 level.
TOLERANCE = 1e-12


def load_official():
    """``(cases, arrays)``: the JSON case list and a dict of every array (loaded without pickle)."""
    meta = json.loads((DATA / "official_neocell.json").read_text())
    with np.load(DATA / "official_neocell.npz", allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    return meta["cases"], arrays


CASES, ARRAYS = load_official()
CASE_NAMES = [case["name"] for case in CASES]


def case_by_name(name):
    return next(case for case in CASES if case["name"] == name)


def official_inputs(case):
    """``(specs, x, weights_a, weights_b, grad_y)`` of an official case, specs as written in the JSON."""
    name, groups = case["name"], case["groups"]
    return (
        case["specs"],
        ARRAYS[f"{name}/x"],
        [ARRAYS[f"{name}/weight_a_{g}"] for g in range(groups)],
        [ARRAYS[f"{name}/weight_b_{g}"] for g in range(groups)],
        ARRAYS[f"{name}/grad_y"],
    )


def conformance_errors(case, method):
    """Relative error of every output of ``method`` against the official arrays.

    Returns
    -------
    dict
        ``{"y": err, "grad_x": err, "grad_weight_a_0": err, ...}``.
    """
    name, groups = case["name"], case["groups"]
    specs, x, wa, wb, gy = official_inputs(case)
    y = neocell_forward(x, wa, wb, specs, method=method)
    gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method=method)
    got = {"y": y, "grad_x": gx}
    got.update({f"grad_weight_a_{g}": ga[g] for g in range(groups)})
    got.update({f"grad_weight_b_{g}": gb[g] for g in range(groups)})
    return {key: relative_error(value, ARRAYS[f"{name}/{key}"]) for key, value in got.items()}


def test_data_is_complete():
    """Every case has every array the comparison needs, with the shapes the JSON states."""
    assert len(CASES) >= 6, f"expected the 6 official cases, found {CASE_NAMES}"
    for case in CASES:
        name = case["name"]
        assert ARRAYS[f"{name}/x"].shape == tuple(case["x_shape"]), f"{name}: x shape"
        assert ARRAYS[f"{name}/y"].shape == tuple(case["y_shape"]), f"{name}: y shape"
        for g in range(case["groups"]):
            for key in ("weight_a", "weight_b", "grad_weight_a", "grad_weight_b"):
                assert f"{name}/{key}_{g}" in ARRAYS, f"{name}: {key}_{g} missing"
        for key in ("x", "y", "grad_y", "grad_x"):
            assert ARRAYS[f"{name}/{key}"].dtype == np.float64, f"{name}/{key} is not float64"


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", CASE_NAMES)
def test_official_conformance(name, method):
    case = case_by_name(name)
    errors = conformance_errors(case, method)
    assert set(errors) == {"y", "grad_x"} | {f"grad_weight_{ab}_{g}" for ab in "ab" for g in range(case["groups"])}
    bad = {key: err for key, err in errors.items() if not err <= TOLERANCE}
    assert not bad, (
        f"{name} / {method}: relative error above {TOLERANCE:g} for "
        + ", ".join(f"{key}: {err:.3e}" for key, err in bad.items())
        + f" (specs {case['specs']})"
    )


@pytest.mark.parametrize("name", CASE_NAMES)
def test_output_shape_matches_official(name):
    case = case_by_name(name)
    specs, x, wa, wb, _ = official_inputs(case)
    for method in METHODS:
        y = neocell_forward(x, wa, wb, specs, method=method)
        assert y.shape == tuple(case["y_shape"]) and y.dtype == np.float64, (
            f"{name}/{method}: output {y.shape} {y.dtype}, official {tuple(case['y_shape'])} float64"
        )


def test_relative_error_metric():
    """The metric itself, on hand-made arrays (SPEC 9's definition)."""
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    got = ref + np.array([[0.0, 0.0], [0.0, 0.5]])
    assert relative_error(got, ref) == 0.5 / 4.0
    assert relative_error(ref, ref) == 0.0
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    assert relative_error(np.ones(3), np.zeros(3)) == float("inf")
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(4,\)"):
        relative_error(ref, ref.ravel())
