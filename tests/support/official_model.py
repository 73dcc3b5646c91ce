"""The official whole-network conformance data: ``tests/data/official_tiny_model.{npz,json}``
(the default options) and ``tests/data/official_tiny_model_options.{npz,json}`` (linear
biases, layer scale, kernel code ``"3+5"``, shift 2, a 64 x 64 input).

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
from neocell_ref.verify.tolerances import MODEL_RTOL, model_errors
from support.paths import DATA

#: the model tolerances of the verifier (docs/model.md, docs/porting.md): float64 for
#: logits and gradients alike, and the documented float32 accuracy of the tiny model
TOLERANCE = MODEL_RTOL["float64"]["logits"]
assert MODEL_RTOL["float64"]["grad"] == TOLERANCE, "one float64 tolerance for every array"
FLOAT32_LOGITS = MODEL_RTOL["float32"]["logits"]
FLOAT32_GRADS = MODEL_RTOL["float32"]["grad"]


#: The whole-network data files (stems in tests/data).
STEMS = ("official_tiny_model", "official_tiny_model_options")


def load_official(stem="official_tiny_model"):
    """``(arrays, meta)``: every array of the npz (loaded without pickle) and the JSON."""
    with np.load(DATA / f"{stem}.npz", allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads((DATA / f"{stem}.json").read_text())
    return arrays, meta


def config(meta):
    """The file's configuration as :class:`neocell_ref.architecture.NeoNeXtConfig` (which
    takes the JSON lists of per-stage values as they are)."""
    return nr.architecture.NeoNeXtConfig(**meta["config"])


def build(meta, dtype=np.float64):
    return nr.models.NeoNeXt.from_config(config(meta), dtype=dtype, resolution=tuple(meta["input_shape"][2:]))


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


def conformance_errors(result, arrays, meta):
    """Relative error of every compared array (missing results count as infinite), by
    :func:`neocell_ref.verify.tolerances.model_errors`: each array on its own size, except
    a gradient that vanishes mathematically (``fc_2.bias`` before a training-mode
    BatchNorm: rounding noise on both sides), judged against its layer's largest."""
    refs = {k: v for k, v in arrays.items() if not (k.startswith(("state/", "x")) or k == "grad_logits")}
    architecture = nr.architecture.describe(config(meta), tuple(meta["input_shape"][2:]))
    return model_errors(result, refs, architecture)
