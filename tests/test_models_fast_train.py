"""The fast training path (neocell_ref.models_fast_train) against the plain one.

The plain formulation (``model.fast_training = False``: the layer-by-layer loop of
models.py, each layer by its record, statistics and GELU recomputed in backward) is the
independent reference. A training forward and its backward through both must give

* bit-identical logits, input gradient, parameter gradients, running statistics and
  drop-path draws where the fast path keeps the order of operations (every block in
  the per-sample layout: batch 1, or the ``(C, N·H·W)`` layout switched off);
* results within the float32 accuracy of docs/model.md (float64: 1e-12) where the
  ``(C, N·H·W)`` layout (every batch of more than one sample) sums the weight gradients
  in another order;

over small models with every layer kind and option (layer scale, drop path with a seed,
biases), odd and rectangular input sizes, batch 1. The fast path's gradients also pass
the finite-difference check on their own, and deliberately broken fast backwards (the
BatchNorm backward without its mean term, the GELU derivative without ``x·φ(x)``, a
per-sample weight gradient of the first sample only) fail the comparison
(tests/meta/test_models_fast_train_mutants.py; the comparison lives in
tests/support/models_fast_train.py).
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.hostile import raises_naming
from support.models_fast_train import bn_split_step, both, build, mismatches, no_flat_layout, training_step

from neocell_ref import layers as L
from neocell_ref import models_fast_train as F
from neocell_ref.verify.gradcheck import check_gradients
from neocell_ref.verify.tolerances import relative_error


# --------------------------------------------------------------------------------------
# bit-identical where the order of operations is the same
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(layer_scale_init_value=0.5, drop_path=0.5, linear_bias=True),
        dict(layer_scale_init_value=1e-6, linear_bias=True),
    ],
    ids=["defaults", "layer_scale+drop_path+bias", "layer_scale+bias"],
)
@pytest.mark.parametrize("n, size", [(1, (64, 48)), (3, (36, 44))])
def test_bit_identical_in_the_per_sample_layout(monkeypatch, dtype, options, n, size):
    if n > 1:
        no_flat_layout(monkeypatch)  # batch 1 never uses the (C, N·H·W) layout
    bad = mismatches(*both(dtype, n, size, **options), dtype, exact=True)
    assert not bad, f"fast training path not bit-identical ({dtype.__name__}, n={n}, {size}, {options}): {bad}"


# --------------------------------------------------------------------------------------
# within the documented accuracy with the (C, N·H·W) layout
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [2, 3])
def test_flat_layout_within_documented_accuracy(dtype, n):
    options = dict(layer_scale_init_value=0.5, drop_path=0.4, linear_bias=True)
    # float32: at least 4 values per channel in stage 4's BatchNorm (over 3 values a
    # batch-statistics BatchNorm amplifies the rounding of its input far beyond 1e-4)
    size = (44, 52) if dtype == np.float64 else (64, 72)
    bad = mismatches(*both(dtype, n, size, **options), dtype, exact=False)
    assert not bad, f"fast training path differs beyond the documented accuracy ({dtype.__name__}, n={n}): {bad}"


@pytest.mark.parametrize("threads", [2, 3])
def test_products_and_gelu_split_over_threads(monkeypatch, threads):
    """With the worker pool on, the flat layout's products are split by rows of the result
    and the GELU pass into contiguous blocks (forced here on a small model: every product
    and every GELU is split, in shares of 3 rows / 7 values that do not divide evenly).
    The GELU split is element-wise, so alone it changes no bit; split products may be
    blocked differently by BLAS, so the whole step stays within the documented float32
    accuracy of the unsplit one (same scope: BLAS at one thread). MACs counted the same."""
    from neocell_ref import models_fast
    from neocell_ref.instrument import count_macs

    monkeypatch.setenv("NEOCELL_THREADS", str(threads))
    monkeypatch.setattr(models_fast, "_ROW_UNIT", 3)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 3, 64, 72)).astype(np.float32)
    g = rng.standard_normal((3, 5)).astype(np.float32)
    options = dict(layer_scale_init_value=0.5, linear_bias=True)
    results = {}
    for products, gelu in ((False, False), (False, True), (True, True)):
        monkeypatch.setattr(F, "_SPLIT_MACS", 0 if products else 1 << 62)
        monkeypatch.setattr(L, "_GELU_CHUNK_THREADED", 7 if gelu else 1 << 62)
        with count_macs() as counter:
            step = training_step(build(np.float32, resolution=(64, 72), **options), x, g, fast=True)
        results[products, gelu] = (step, counter.by_tag())
    (whole, whole_macs) = results[False, False]
    gelu_split = results[False, True][0][0]
    bad = [
        (k, relative_error(gelu_split[k], whole[0][k]))
        for k in whole[0]
        if not np.array_equal(gelu_split[k], whole[0][k])
    ]
    assert not bad, f"{threads} threads: splitting the GELU pass changed {bad}"
    bad = mismatches(whole, results[True, True][0], np.float32, exact=False)
    assert not bad, f"{threads} threads: split products beyond the documented accuracy: {bad}"
    for key, (_, macs) in results.items():
        assert macs == whole_macs, f"split {key} counted MACs {macs}, unsplit {whole_macs}"


@pytest.mark.parametrize("threads", [2, 3])
def test_batchnorm_and_conv1x1_splits_change_no_bit(monkeypatch, threads):
    """With the worker pool on, each thread computes the statistics, the normalisation
    and the backward of its own channels of a block's BatchNorm, in shares of at least
    two channels, and the per-sample products of the 1x1 convolutions (forward and
    backward) of its own samples (both forced here on a small model whose 3, 5, 6 and 7
    channels split unevenly, or not at all: 3 channels with 3 threads). Per channel and
    per sample the operations are the same, so the whole step is bit-identical to the
    unsplit one (per-sample layout, where everything else is too): logits, gradients
    and running statistics."""
    from neocell_ref import models_fast

    steps = {}
    for count, limit in ((1, 1 << 62), (threads, 0)):
        monkeypatch.setattr(F, "_BN_SPLIT_VALUES", limit)
        monkeypatch.setattr(models_fast, "_SAMPLE_SPLIT_MACS", limit)
        steps[count] = bn_split_step(monkeypatch, count)
    kinds = {kind for kind, _, _ in steps[threads][2]}
    assert "fast_layer" in kinds, f"the forced split should run the 1x1 convolutions by samples; tape kinds {kinds}"
    bad = mismatches(steps[1][:2], steps[threads][:2], np.float32, exact=True)
    assert not bad, f"{threads} threads: the BatchNorm or conv1x1 split changed {bad}"
    expected = {  # channels -> shares: never one channel alone
        2: {3: [(0, 3)], 5: [(0, 3), (3, 5)], 7: [(0, 4), (4, 7)]},
        3: {3: [(0, 3)], 5: [(0, 3), (3, 5)], 7: [(0, 3), (3, 5), (5, 7)]},
    }[threads]
    for channels, want in expected.items():
        got = F._channel_shares(np.empty((3, channels, 2, 2), np.float32))
        assert got == want, f"{threads} threads, {channels} channels: shares {got}, expected {want}"


@pytest.mark.parametrize("threads", [1, 2])
def test_batchnorm_blocks_of_channels_change_no_bit(monkeypatch, threads):
    """Inside a share, the training BatchNorms run block by block of channels (blocks
    of at least two channels; forced here to the smallest, 2-3 channels, on the model of
    the split test): per channel the same operations, so the same bits as one block."""
    steps = {}
    for label, values in (("one block", 1 << 62), ("smallest blocks", 1)):
        monkeypatch.setattr(F, "_BN_BLOCK_VALUES", values)
        monkeypatch.setattr(F, "_BN_SPLIT_VALUES", 0 if threads > 1 else 1 << 62)
        steps[label] = bn_split_step(monkeypatch, threads)
    bad = mismatches(steps["one block"][:2], steps["smallest blocks"][:2], np.float32, exact=True)
    assert not bad, f"{threads} thread(s): BatchNorm blocks of channels changed {bad}"
    expected = {(0, 3): [(0, 3)], (0, 5): [(0, 3), (3, 5)], (2, 9): [(2, 5), (5, 7), (7, 9)]}  # never one channel
    for span, want in expected.items():
        got = F._channel_blocks(span, 4)
        assert got == want, f"blocks of {span} with the smallest block size: {got}, expected {want}"


@settings(max_examples=10)
@given(data=st.data())
def test_random_small_models_match_the_plain_path(data):
    code = data.draw(st.sampled_from(["2+3", "3", "2", "3+2"]), label="kernel code")
    shifts = tuple(data.draw(st.integers(0, 1), label=f"shift stage {s + 1}") for s in range(3)) + (0,)
    size = data.draw(st.sampled_from([(32, 32), (32, 48), (36, 36), (44, 52)]), label="input H, W")
    dims = data.draw(st.sampled_from([(4, 8, 8, 8), (3, 5, 6, 7)]), label="dims")
    depth = data.draw(st.sampled_from([(1, 1, 1, 1), (2, 1, 2, 1)]), label="blocks per stage")
    n = data.draw(st.integers(1, 3), label="batch")
    if n == 1:
        size = (64, 64)  # stage 4 needs more than one value per channel in its BatchNorm
    options = dict(
        dims=dims,
        depth=depth,
        kernel_spec=code,
        shifts=shifts,
        layer_scale_init_value=data.draw(st.sampled_from([0.0, 0.3]), label="layer_scale_init_value"),
        linear_bias=data.draw(st.booleans(), label="linear_bias"),
        drop_path=data.draw(st.sampled_from([0.0, 0.5]), label="drop_path"),
        drop_path_seed=data.draw(st.integers(0, 99), label="drop_path_seed"),
    )
    seed = data.draw(st.integers(0, 2**16), label="seed")
    bad = mismatches(*both(np.float64, n, size, seed, **options), np.float64, exact=False)
    assert not bad, f"fast training path differs (n={n}, {size}, {options}): {bad}"


# --------------------------------------------------------------------------------------
# the fast path is the default; the cache survives its backward
# --------------------------------------------------------------------------------------
def test_fast_path_is_the_default_and_fuses_every_block():
    model = build(np.float64, layer_scale_init_value=0.5, drop_path=0.3)
    assert model.fast_training is True, "the fast training path is not the default"
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32))
    model.forward(x, training=True)
    blocks = sum(unit.kind == "residual" for unit in model.architecture.units)
    tails = [entry for entry in model._tape["layers"] if entry[0] == "tail"]
    assert len(tails) == blocks, f"{len(tails)} fused tails for {blocks} blocks"
    # the stem's and the down-sampling layers' BatchNorms run the tails' BatchNorm step
    norms = [d.name for d in model.architecture.layers() if d.kind == "batchnorm" and ".ops." not in d.name]
    fast = [d.name for kind, d, _ in model._tape["layers"] if kind == "fast_layer" and d.kind == "batchnorm"]
    assert fast == norms and norms, f"BatchNorms outside the blocks run fast: {fast}, expected {norms}"
    model.fast_training = False
    model.forward(x, training=True)
    assert not [e for e in model._tape["layers"] if e[0] in ("tail", "fast_layer")], "plain path ran fast steps"


def test_backward_twice_gives_the_same_gradients_and_keeps_the_cache():
    model = build(np.float32, layer_scale_init_value=0.5, drop_path=0.3, linear_bias=True)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    g = rng.standard_normal((3, 5)).astype(np.float32)
    model.forward(x, training=True)
    first_x, first = model.backward(g), dict(model.grads)
    second_x, second = model.backward(g), dict(model.grads)
    assert np.array_equal(first_x, second_x), "a second backward gave another input gradient"
    for key in first:
        assert np.array_equal(first[key], second[key]), f"a second backward changed grads[{key!r}]"
    doubled = model.backward(2 * g)  # backward is linear in grad_logits
    assert relative_error(doubled, 2 * first_x) <= 1e-6, "backward is not linear in grad_logits"


def test_profile_names_the_layer_kinds_of_the_fused_tail():
    model = build(np.float64, layer_scale_init_value=0.5, drop_path=0.3)
    model.profile = {}
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32))
    model.forward(x, training=True)
    model.backward(np.ones((2, 5)))
    for direction in ("forward", "backward"):
        for kind in ("batchnorm", "linear", "gelu", "layer_scale", "drop_path", "neocell"):
            assert f"{direction}:{kind}" in model.profile, f"profile lacks {direction}:{kind}: {sorted(model.profile)}"


def test_non_finite_statistics_are_refused_and_buffers_unchanged():
    for fast in (False, True):
        model = build(np.float32)
        model.fast_training = fast
        for key in ("stage_1.0.ops.content.neocell.weight_a.0", "stage_1.0.ops.content.neocell.weight_b.0"):
            model.params[key] = model.params[key] * np.float32(1e30)  # the block's BatchNorm input overflows
        before = {k: v.copy() for k, v in model.buffers.items()}
        with pytest.raises(ValueError, match="NaN or Inf"), np.errstate(all="ignore"):
            model.forward(np.ones((2, 3, 32, 32), np.float32), training=True)
        for key, value in before.items():
            assert np.array_equal(model.buffers[key], value), f"fast={fast}: a refused forward changed {key}"


@pytest.mark.parametrize("dtype, scale", [(np.float64, 1e200), (np.float32, 1e20)], ids=["float64", "float32"])
@pytest.mark.parametrize(
    "cache, fast", [(False, True), (True, False), (True, True)], ids=["no cache", "plain tape", "fast path"]
)
def test_statistics_that_overflow_from_a_finite_input_name_the_layer(dtype, scale, cache, fast):
    """A finite input near the dtype's limit: the stem's batch variance overflows. Every
    path refuses it naming the BatchNorm (the fast one said "x held NaN or Inf", blaming
    an input that held none, and named no layer), and the buffers stay as they were."""
    model = build(dtype)
    model.fast_training = fast
    x = np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(dtype) * dtype(scale)
    assert np.isfinite(x).all(), "the input must be finite for this test"
    before = {k: v.copy() for k, v in model.buffers.items()}
    words = ["stem.norm", "overflowed"] if cache and fast else ["stem.norm"]
    with raises_naming(ValueError, *words), np.errstate(all="ignore"):
        model.forward(x, training=True, cache=cache)
    changed = [k for k, v in before.items() if not np.array_equal(model.buffers[k], v)]
    assert not changed, f"the refused forward changed {changed[:4]}"


# --------------------------------------------------------------------------------------
# finite differences through the fast path (float64)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "n, size, split",
    [(3, 32, False), (1, 64, False), (3, 32, True)],
    ids=["flat layout", "per-sample layout", "flat layout, every split forced over 2 threads"],
)
def test_fast_path_gradients_by_finite_differences(monkeypatch, n, size, split):
    """Input and a sample of parameters in both layouts, BatchNorm, layer scale, biases,
    drop path with fixed masks; and with every thread split of the step forced on
    (products by rows, GELU by blocks, BatchNorms by channels and in blocks of
    channels, 1x1 convolutions by samples), the stem's and a down-sampling layer's
    parameters included."""
    from neocell_ref import models_fast

    if split:
        monkeypatch.setenv("NEOCELL_THREADS", "2")
        monkeypatch.setattr(F, "_SPLIT_MACS", 0)
        monkeypatch.setattr(F, "_BN_SPLIT_VALUES", 0)
        monkeypatch.setattr(F, "_BN_BLOCK_VALUES", 1)
        monkeypatch.setattr(models_fast, "_SAMPLE_SPLIT_MACS", 0)
        monkeypatch.setattr(models_fast, "_ROW_UNIT", 3)
        monkeypatch.setattr(L, "_GELU_CHUNK_THREADED", 7)
    model = build(np.float64, resolution=size, layer_scale_init_value=0.5, drop_path=0.5, linear_bias=True)
    names = [
        "stem.norm.weight",
        "downsample_1.conv.weight",
        "stage_1.0.ops.content.norm.weight",
        "stage_1.0.ops.content.fc_1.weight",
        "stage_1.0.ops.content.fc_2.bias",
        "stage_3.1.ops.content.fc_1.weight",
        "stage_3.1.ops.content.fc_1.bias",
        "stage_3.1.ops.content.norm.bias",
        "stage_4.0.ops.content.fc_2.weight",
        "stage_4.0.ops.content.layer_scale.gamma",
    ]
    x = np.random.default_rng(6).standard_normal((n, 3, size, size))
    flat = F._flat_layout(*_mlp(model, "stage_1.0"), n, 64)
    assert flat == (n > 1), f"batch {n}: _flat_layout is {flat!r}, expected {n > 1}"

    def run(x_, *values):
        for key, value in zip(names, values):
            model.params[key] = value.copy()
        model.drop_path_rng = np.random.default_rng(9)  # the same masks at every call
        return model.forward(x_, training=True)

    def backward(g, x_, *values):
        run(x_, *values)
        grad_x = model.backward(g)
        return [grad_x] + [model.grads[k] for k in names]

    inputs = [x] + [model.params[k].copy() for k in names]
    report = check_gradients(
        run, backward, inputs, names=["x"] + names, max_elements=6, rng=np.random.default_rng(12), dot_rtol=1e-7
    )
    assert report.passed, f"fast training path gradients\n{report}"
    if split:
        kinds = {d.kind for kind, d, _ in model._tape["layers"] if kind == "fast_layer"}
        assert "conv1x1" in kinds, f"the forced split should run the 1x1 convolutions by samples: {kinds}"


def _mlp(model, block):
    layers = {d.name: d for d in model.architecture.layers()}
    return layers[f"{block}.ops.content.fc_1"], layers[f"{block}.ops.content.fc_2"]


def test_fused_gelu_is_the_plain_gelu_and_its_derivative_bit_for_bit(monkeypatch):
    """float32 GELU and derivative of one fused pass against layers.gelu_forward and
    layers.gelu_backward, over a grid with the special values, in many blocks."""
    monkeypatch.setattr(L, "_GELU_CHUNK", 999)  # 22 blocks, the last one ragged
    grid = np.linspace(-16, 16, 20990, dtype=np.float32)  # with the 10 special values: 3·7·1000
    special_values = np.array([0.0, -0.0, 1e-30, -1e-30, 12.0, -12.0, np.inf, -np.inf, 3e38, -3e38], np.float32)
    h = np.concatenate([grid, special_values]).reshape(3, -1, 7)
    got_d = np.empty_like(h)
    with np.errstate(invalid="ignore", over="ignore"):  # the derivative at ±inf is NaN in both
        expected_y = L.gelu_forward(h)
        expected_d = L.gelu_backward(np.ones_like(h), h)[0]
        got_y = F._gelu_with_derivative(h.copy(), got_d)
    assert np.array_equal(got_y, expected_y), "fused GELU differs from layers.gelu_forward"
    assert np.array_equal(got_d, expected_d, equal_nan=True), "fused GELU derivative differs from layers.gelu_backward"


def test_running_update_from_statistics_is_the_update_from_x():
    """layers.batchnorm_running_from_stats (the fast path's update) against
    batchnorm_update_running on the same x, and its refusals."""
    rng = np.random.default_rng(8)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
        rm, rv = rng.standard_normal(4).astype(dtype), rng.uniform(0.5, 1.5, 4).astype(dtype)
        expected = L.batchnorm_update_running(x, rm, rv, np.int64(7), momentum=0.3)
        got = L.batchnorm_running_from_stats(*L.batchnorm_stats(x), 90, rm, rv, np.int64(7), momentum=0.3)
        for name, e, g in zip(("running_mean", "running_var", "num_batches_tracked"), expected, got):
            assert np.array_equal(e, g) and e.dtype == g.dtype, f"{name} ({dtype.__name__}): {g} != {e}"
    mean, var = np.zeros(4), np.ones(4)
    with pytest.raises(ValueError, match="NaN or Inf"):
        L.batchnorm_running_from_stats(np.full(4, np.nan), var, 90, mean, var, 0)
    with pytest.raises(ValueError, match="running_var"):
        L.batchnorm_running_from_stats(mean, var, 90, mean, -var, 0)
    with pytest.raises(ValueError, match="fits int64"):
        L.batchnorm_running_from_stats(mean, var, 90, mean, var, np.iinfo(np.int64).max)
    with pytest.raises(ValueError, match="m must be >= 2"):
        L.batchnorm_running_from_stats(mean, var, 1, mean, var, 0)
    with pytest.raises(ValueError, match="shape"):
        L.batchnorm_running_from_stats(np.zeros(3), var, 90, mean, var, 0)
    with pytest.raises(ValueError, match="var must be >= 0 \\(a batch variance\\), got minimum -50.0"):
        L.batchnorm_running_from_stats(mean, np.array([-50.0, 1, 1, 1]), 90, mean, var, 0)
    column = np.zeros((4, 1))  # one value per channel, but not the (C,) layout of the rule
    with pytest.raises(ValueError, match="running_mean must be 1-D \\(C,\\), got shape \\(4, 1\\)"):
        L.batchnorm_running_from_stats(column, column + 1, 90, column, column + 1, 0)
