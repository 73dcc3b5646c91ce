"""Official conformance of the whole network: tests/data/official_tiny_model.{npz,json}.

The data are outputs of the authors' PyTorch NeoNeXt (float64, CPU; provenance in
tests/data/PROVENANCE.md). With its state dict loaded, the reference must reproduce, in
float64 with relative error ``max|got - ref| / max|ref| <= 1e-10``:

1. ``logits_eval`` (inference mode, computed first),
2. ``logits_train`` (training mode, batch statistics, computed second),
3. ``grad_x`` and every ``grad/KEY`` of ``sum(logits_train * grad_logits)``,
4. ``buffers_after_train/KEY``: BatchNorm running statistics and ``num_batches_tracked``
   after that training forward, read from ``state_dict()``.

The same comparison in float32 must stay within the documented float32 bound, and the
comparison must *fail* for subtly wrong layers (mutants), or it would prove nothing.
"""

import json

import numpy as np
import pytest
from conftest import DATA

import neocell_ref as nr
from neocell_ref import layers as L
from neocell_ref.verify.tolerances import MODEL_RTOL, relative_error

#: the model tolerances of the verifier (docs/model.md, docs/porting.md): float64 for
#: logits and gradients alike, and the documented float32 accuracy of the tiny model
TOLERANCE = MODEL_RTOL["float64"]["logits"]
assert MODEL_RTOL["float64"]["grad"] == TOLERANCE, "one float64 tolerance for every array"
FLOAT32_LOGITS = MODEL_RTOL["float32"]["logits"]
FLOAT32_GRADS = MODEL_RTOL["float32"]["grad"]


@pytest.fixture(scope="module")
def official():
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


@pytest.fixture(scope="module")
def result64(official):
    arrays, meta = official
    return run_sequence(arrays, meta, np.float64)


# --------------------------------------------------------------------------------------
# names and shapes
# --------------------------------------------------------------------------------------
def test_state_dict_names_and_shapes_are_the_official_ones(official):
    arrays, meta = official
    model = build(meta)
    state = model.state_dict()
    assert sorted(state) == sorted(meta["keys"]), (
        f"state-dict keys differ: missing {sorted(set(meta['keys']) - set(state))}, "
        f"extra {sorted(set(state) - set(meta['keys']))}"
    )
    for key, value in state.items():
        ref = arrays[f"state/{key}"]
        assert value.shape == ref.shape, f"{key}: shape {value.shape}, official {ref.shape}"
        assert value.dtype.kind == ref.dtype.kind, f"{key}: dtype {value.dtype}, official {ref.dtype}"
    trainable = {k[len("grad/") :] for k in arrays if k.startswith("grad/")}
    assert set(model.params) == trainable, f"trainable parameters differ: {set(model.params) ^ trainable}"
    assert model.num_parameters() == sum(arrays[f"grad/{k}"].size for k in trainable), "num_parameters"


# --------------------------------------------------------------------------------------
# float64: every array within 1e-10
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["logits_eval", "logits_train", "grad_x"])
def test_outputs_and_input_gradient(official, result64, which):
    arrays, _ = official
    err = relative_error(result64[0][which], arrays[which])
    assert err <= TOLERANCE, f"{which}: relative error {err:.3e} > {TOLERANCE:g}"


def test_every_parameter_gradient(official, result64):
    arrays, _ = official
    result, model = result64
    expected = sorted(k[len("grad/") :] for k in arrays if k.startswith("grad/"))
    assert sorted(model.grads) == expected, f"gradient keys differ: {set(model.grads) ^ set(expected)}"
    errors = {k: relative_error(result[f"grad/{k}"], arrays[f"grad/{k}"]) for k in expected}
    bad = {k: e for k, e in errors.items() if not e <= TOLERANCE}
    worst = max(errors, key=errors.get)
    assert not bad, f"{len(bad)} gradients beyond {TOLERANCE:g}: {bad}"
    assert errors[worst] <= TOLERANCE, f"worst gradient {worst}: {errors[worst]:.3e}"


def test_buffers_after_the_training_forward(official, result64):
    arrays, _ = official
    result, _ = result64
    keys = [k for k in arrays if k.startswith("buffers_after_train/")]
    # stem, 1 + 1 + 2 + 1 blocks and 3 down-sampling layers: 9 BatchNorms with 3 buffers each
    assert len(keys) == 9 * 3, f"expected 9 BatchNorms x 3 buffers, found {len(keys)}"
    for key in keys:
        got, ref = result[key], arrays[key]
        if key.endswith("num_batches_tracked"):
            assert got.dtype == np.int64 and got.shape == () and int(got) == int(ref), f"{key}: {got!r} vs {ref!r}"
        else:
            err = relative_error(got, ref)
            assert err <= TOLERANCE, f"{key}: relative error {err:.3e}"


def test_inference_forward_leaves_buffers_alone(official):
    arrays, meta = official
    model = build(meta)
    model.load_state_dict(official_state(arrays))
    before = model.state_dict()
    model.forward(arrays["x"], training=False)
    after = model.state_dict()
    for key in before:
        assert np.array_equal(before[key], after[key]), f"inference forward changed {key}"


def test_npz_round_trip_reproduces_the_official_logits(official, tmp_path):
    arrays, meta = official
    model = build(meta)
    model.load_state_dict(official_state(arrays))
    path = tmp_path / "tiny.npz"
    model.save_npz(path)
    other = build(meta)
    other.load_npz(path)
    err = relative_error(other.forward(arrays["x"]), arrays["logits_eval"])
    assert err <= TOLERANCE, f"logits after an npz round trip: relative error {err:.3e}"


# --------------------------------------------------------------------------------------
# float32: within the documented bound
# --------------------------------------------------------------------------------------
def test_float32_model_within_documented_accuracy(official):
    arrays, meta = official
    result, model = run_sequence(arrays, meta, np.float32)
    assert model.params["stem.conv.weight"].dtype == np.float32, "float64 weights were not cast to float32"
    assert result["logits_eval"].dtype == np.float32 and result["grad_x"].dtype == np.float32
    errors = conformance_errors(result, arrays)
    for key, err in errors.items():
        bound = FLOAT32_LOGITS if key.startswith("logits") else FLOAT32_GRADS
        assert err <= bound, f"float32 {key}: relative error {err:.3e} > {bound:g}"


# --------------------------------------------------------------------------------------
# the comparison has teeth: subtly wrong layers fail it
# --------------------------------------------------------------------------------------
def _biased_running_var(x, running_mean, running_var, nbt, *, momentum=0.1):
    mean, var = L.batchnorm_stats(x)
    return (
        (1 - momentum) * running_mean + momentum * mean,
        (1 - momentum) * running_var + momentum * var,
        np.asarray(int(nbt) + 1, dtype=np.int64),
    )


def _patchify_swapped(x, *, patch=4):
    n, c, h, w = x.shape
    blocks = np.asarray(x).reshape(n, c, h // patch, patch, w // patch, patch)
    return np.ascontiguousarray(blocks.transpose(0, 1, 5, 3, 2, 4)).reshape(
        n, c * patch * patch, h // patch, w // patch
    )


def _gelu_tanh(x, *, out=None):
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def _layernorm_eps_1e5(x, weight, bias, *, eps=1e-6):
    return _original_layernorm(x, weight, bias, eps=1e-5)


_original_layernorm = L.layernorm_forward
_original_bn = L.batchnorm_forward


def _bn_unbiased_normalisation(x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5, out=None):
    if not training:
        return _original_bn(x, weight, bias, running_mean, running_var, training=False, eps=eps, out=out)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean, var = L.batchnorm_stats(x)
    return _original_bn(x, weight, bias, mean, var * m / (m - 1), training=False, eps=eps, out=out)


MUTANTS = {
    "running variance updated with the biased variance": ("batchnorm_update_running", _biased_running_var),
    "patchify with px and py swapped": ("patchify_forward", _patchify_swapped),
    "tanh-approximated GELU": ("gelu_forward", _gelu_tanh),
    "LayerNorm eps 1e-5 instead of 1e-6": ("layernorm_forward", _layernorm_eps_1e5),
    "training BatchNorm normalised with the unbiased variance": ("batchnorm_forward", _bn_unbiased_normalisation),
}


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
def test_mutants_fail_conformance(official, monkeypatch, mutant):
    arrays, meta = official
    name, replacement = MUTANTS[mutant]
    monkeypatch.setattr(L, name, replacement)
    result, _ = run_sequence(arrays, meta)
    errors = conformance_errors(result, arrays)
    failing = {k: e for k, e in errors.items() if not e <= TOLERANCE}
    assert failing, f"mutant '{mutant}' passed the conformance comparison (worst {max(errors.values()):.3e})"
