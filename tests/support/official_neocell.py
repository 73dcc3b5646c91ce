"""The official NeoCell conformance data: ``tests/data/official_neocell.{npz,json}``.

Outputs of the authors' PyTorch implementation in float64 (provenance in
``tests/data/PROVENANCE.md``), read here once for every test that compares against
them: the conformance tests (tests/test_neocell.py), the C port (tests/examples),
the gradient checker (tests/verify/test_gradcheck.py) and the proof that the
comparison catches a subtly wrong expansion rule (tests/meta/test_neocell_mutants.py).
"""

import json

import numpy as np

from neocell_ref import neocell_backward, neocell_forward
from neocell_ref.verify.tolerances import relative_error
from support.paths import DATA

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
