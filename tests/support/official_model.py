"""The official whole-network conformance data: ``tests/data/official_tiny_model.{npz,json}``.

Outputs of the authors' PyTorch NeoNeXt (float64, CPU; provenance in
``tests/data/PROVENANCE.md``). The official sequence (load, eval forward, train
forward, backward) and its comparison serve the conformance tests
(tests/test_models.py) and the proof that subtly wrong layers fail them
(tests/meta/test_models_mutants.py); the ``official`` fixture in ``conftest.py``
loads the data once.
"""

import json

import numpy as np

import neocell_ref as nr
from neocell_ref.verify.tolerances import MODEL_RTOL, relative_error
from support.paths import DATA

#: the model tolerances of the verifier (docs/model.md, docs/porting.md): float64 for
#: logits and gradients alike, and the documented float32 accuracy of the tiny model
TOLERANCE = MODEL_RTOL["float64"]["logits"]
assert MODEL_RTOL["float64"]["grad"] == TOLERANCE, "one float64 tolerance for every array"
FLOAT32_LOGITS = MODEL_RTOL["float32"]["logits"]
FLOAT32_GRADS = MODEL_RTOL["float32"]["grad"]


def load_official():
    """``(arrays, meta)``: every array of the npz (loaded without pickle) and the JSON."""
    with np.load(DATA / "official_tiny_model.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads((DATA / "official_tiny_model.json").read_text())
    return arrays, meta


def build(meta, dtype=np.float64):
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["config"].items()}
    return nr.models.NeoNeXt(**options, dtype=dtype, resolution=tuple(meta["input_shape"][2:]))


def official_state(arrays):
    return {k[len("state/") :]: v for k, v in arrays.items() if k.startswith("state/")}


def run_sequence(arrays, meta, dtype=np.float64):
    """The official sequence: load, eval forward, train forward, backward; collect results."""
    model = build(meta, dtype)
    model.load_state_dict(official_state(arrays))
    out = {"logits_eval": model.forward(arrays["x"], training=False)}
    out["logits_train"] = model.forward(arrays["x"], training=True)
    out["grad_x"] = model.backward(arrays["grad_logits"])
    out.update({f"grad/{k}": v for k, v in model.grads.items()})
    state = model.state_dict()
    for key in arrays:
        if key.startswith("buffers_after_train/"):
            out[key] = state[key[len("buffers_after_train/") :]]
    return out, model


def conformance_errors(result, arrays):
    """Relative error of every compared array (missing results count as infinite)."""
    errors = {}
    for key, ref in arrays.items():
        if key.startswith(("state/", "x")) or key == "grad_logits":
            continue
        if key not in result:
            errors[key] = float("inf")
        elif ref.dtype.kind in "iu":
            errors[key] = 0.0 if int(result[key]) == int(ref) else float("inf")
        else:
            errors[key] = relative_error(result[key], ref)
    return errors
