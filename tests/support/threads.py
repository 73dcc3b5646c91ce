"""The threaded fast inference path's test helpers: a model with a non-trivial block tail,
small blocks that split unevenly, and the threads-on against threads-off comparison.

Used by tests/test_models_fast.py and by the proof that the comparison catches a split
that loses work (tests/meta/test_models_fast_mutants.py).
"""

import numpy as np

import neocell_ref as nr
from neocell_ref import models_fast
from neocell_ref.instrument import count_macs
from neocell_ref.verify.tolerances import relative_error
from support import models

# The small model of support/models.py with two stage-2 blocks (32x32): stage 1 (4
# channels at 8x8, 16 hidden) runs the early-stage pixel blocks, stages 2-4 the
# late-stage (C, N·H·W) matrix.
TINY = {**models.TINY, "per_stage_layers": (1, 2, 1, 1)}


def perturb_tail(model, seed=8):
    """Make linear biases, BatchNorm affine, layer scale and running statistics not 0/1."""
    rng = np.random.default_rng(seed)
    dtype = model.dtype
    for key in model.params:
        if key.endswith(("bias", "norm.weight", "gamma")):
            model.params[key] = (1 + rng.standard_normal(model.params[key].shape)).astype(dtype)
    for key in model.buffers:
        if key.endswith("running_mean"):
            model.buffers[key] = rng.standard_normal(model.buffers[key].shape).astype(dtype)
        elif key.endswith("running_var"):
            model.buffers[key] = rng.uniform(0.5, 2, model.buffers[key].shape).astype(dtype)
    return model


def model_with_nontrivial_tail(dtype):
    """The model above with linear biases and layer scale, its tail perturbed."""
    return perturb_tail(
        nr.models.NeoNeXt(
            **TINY, linear_bias=True, layer_scale_init_value=0.5, dtype=dtype, rng=np.random.default_rng(0)
        )
    )


def use_small_blocks(monkeypatch):
    """Blocks of 3 pixels in stage 1 (64 = 21·3 + 1 per sample: 22 blocks, odd for 3
    threads) and late-stage row shares in units of 3 rows (8 output rows: 3 units, the
    last one short), so that every branch splits unevenly."""
    monkeypatch.setattr(models_fast, "_MLP_BLOCK", 16 * 3)
    monkeypatch.setattr(models_fast, "_ROW_UNIT", 3)


def run(model, x, threads, monkeypatch):
    """(logits, MACs by tag, profile keys) of the fast path with ``threads`` threads."""
    monkeypatch.setenv("NEOCELL_THREADS", str(threads))
    model.profile = {}
    with count_macs() as counter:
        y = model.forward(x, cache=False)
    keys = sorted(model.profile)
    model.profile = None
    return y, counter.by_tag(), keys


def assert_threads_agree(model, x, monkeypatch, exact):
    """Threads 2 and 3 against 1: equal logits (bitwise if ``exact``, else within float32
    accuracy), equal MACs, equal profile keys. The threaded runs come first, so that
    memory freed by the reference run cannot hand a run that skipped work the right
    values by chance."""
    runs = {threads: run(model, x, threads, monkeypatch) for threads in (2, 3, 1)}
    ref, ref_macs, ref_keys = runs[1]
    for threads in (2, 3):
        y, macs, keys = runs[threads]
        err = relative_error(y, ref)
        if exact:
            assert np.array_equal(y, ref), f"{threads} threads differ from 1 by {err:.3e} (expected bitwise equal)"
        else:
            assert err <= 1e-6, f"{threads} threads differ from 1 by {err:.3e}"
        assert macs == ref_macs, f"{threads} threads executed MACs {macs}, single-threaded {ref_macs}"
        assert keys == ref_keys, f"profile kinds with {threads} threads {keys}, single-threaded {ref_keys}"
    return ref, ref_macs
