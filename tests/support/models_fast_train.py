"""The fast training path's comparison with the plain one: twin models, one training step
through each, and the arrays that differ.

Used by tests/test_models_fast_train.py and by the proof that the comparison catches
broken fast backwards (tests/meta/test_models_fast_train_mutants.py).
"""

import numpy as np

import neocell_ref as nr
from neocell_ref import models_fast_train as F
from neocell_ref.verify.tolerances import relative_error

#: documented accuracy (docs/model.md): float32 logits 1e-5, gradients 1e-4; float64 1e-12
TOLERANCE = {np.float32: (1e-5, 1e-4), np.float64: (1e-12, 1e-12)}

SMALL = dict(dims=(4, 8, 8, 8), num_classes=5, kernel_spec="2+3", shifts=(1, 1, 1, 0))


def build(dtype, seed=0, depth=(1, 1, 2, 1), resolution=32, **options):
    """A small model with random weights (NeoInit's structure perturbed: its kernels map
    constant maps to constant maps, which would make some bias gradients exactly zero and
    their relative errors meaningless)."""
    options = {**SMALL, **options}
    model = nr.models.NeoNeXt(depth, dtype=dtype, rng=np.random.default_rng(seed), resolution=resolution, **options)
    rng = np.random.default_rng(seed + 100)
    for key, value in model.params.items():
        model.params[key] = (value + 0.1 * rng.standard_normal(value.shape)).astype(dtype)
    return model


def training_step(model, x, grad_logits, fast):
    """Logits, input gradient, parameter gradients, buffers and the drop-path generator
    state after one training forward and its backward."""
    model.fast_training = fast
    logits = model.forward(x, training=True)
    grad_x = model.backward(grad_logits)
    state = model.drop_path_rng.bit_generator.state
    return {"logits": logits, "grad_x": grad_x, **model.grads, **dict(model.buffers)}, state


def both(dtype, n, size, seed=0, **options):
    """The plain and the fast results of the same step on twin models."""
    rng = np.random.default_rng(seed + 1)
    x = rng.standard_normal((n, 3, *size)).astype(dtype)
    g = rng.standard_normal((n, options.get("num_classes", SMALL["num_classes"]))).astype(dtype)
    plain = training_step(build(dtype, seed, resolution=size, **options), x, g, fast=False)
    fast = training_step(build(dtype, seed, resolution=size, **options), x, g, fast=True)
    return plain, fast


def mismatches(plain, fast, dtype, exact):
    """``[(name, error)]`` of every array that differs (bitwise when ``exact``, else by
    more than the documented relative error), and the generator state."""
    (ref, ref_state), (got, got_state) = plain, fast
    assert set(ref) == set(got), f"fast path gives {sorted(set(got) ^ set(ref))} differently"
    bad = []
    for key in ref:
        if exact:
            if not np.array_equal(ref[key], got[key]) or ref[key].dtype != got[key].dtype:
                bad.append((key, relative_error(got[key], ref[key])))
            continue
        bound = TOLERANCE[dtype][0 if key == "logits" else 1]
        diff = float(np.max(np.abs(got[key].astype(np.float64) - ref[key])))
        err = diff / max(float(np.max(np.abs(ref[key]))), STRUCTURAL_ZERO * block_scale(ref, key))
        if err > bound:
            bad.append((key, err))
    if ref_state != got_state:
        bad.append(("drop_path_rng", float("inf")))
    return bad


#: Some gradients are exactly zero in exact arithmetic (a per-channel constant that a
#: following training-mode BatchNorm removes: the bias of fc_2 in the last block of a
#: stage, whose down-sampling NeoCell maps constant maps to constant maps) and hold only
#: rounding noise; their relative error is meaningless. Every array is compared against
#: at least this fraction of the largest gradient of its block (SPEC 9's relative error
#: for every array larger than that).
STRUCTURAL_ZERO = 1e-2


def block_scale(ref, key):
    """Largest magnitude of the reference gradients of the block (or layer) of ``key``."""
    if key in ("logits", "grad_x"):
        return 0.0
    block = key.split(".ops.")[0] if ".ops." in key else key.split(".")[0]
    return max(float(np.max(np.abs(v))) for k, v in ref.items() if k.startswith(block + ".") and v.ndim)


def no_flat_layout(monkeypatch):
    monkeypatch.setattr(F, "_flat_layout", lambda fc_1, fc_2, n, positions: False)


def bn_split_step(monkeypatch, threads):
    """One fast training step (float32, per-sample layout, batch 3) of a small model whose
    BatchNorms have 3, 5, 6 and 7 channels, with ``NEOCELL_THREADS=threads``: the case of
    the BatchNorm and conv1x1 split comparison and of its mutants. Returns
    :func:`training_step`'s pair and the model's tape."""
    no_flat_layout(monkeypatch)
    monkeypatch.setenv("NEOCELL_THREADS", str(threads))
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 3, 40, 36)).astype(np.float32)
    g = rng.standard_normal((3, 5)).astype(np.float32)
    model = build(np.float32, dims=(3, 5, 6, 7), resolution=(40, 36), linear_bias=True)
    return (*training_step(model, x, g, fast=True), model._tape["layers"])
