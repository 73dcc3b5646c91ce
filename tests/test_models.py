"""The NeoNeXt model object: construction, initialisation, state dicts, forward/backward API.

* the model is built from the architecture description (names, shapes, counts);
* initialisation follows docs/model.md (truncated normal, NeoInit, ones/zeros);
* state dicts round-trip (mapping and .npz), and every bad entry is refused with its key;
* a small whole model passes the gradient check end to end (input and a sample of
  parameters), in inference and in training mode with drop path and layer scale;
* a deliberately broken layer backward makes that check fail;
* cache semantics, BatchNorm buffer updates, drop-path determinism, the MACs executed,
  float32 against float64.
"""

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.hostile import TINY_MODEL, raises_naming
from support.models import TINY, model_gradcheck, tiny, tiny_input
from support.official_model import (
    FLOAT32_GRADS,
    FLOAT32_LOGITS,
    TOLERANCE,
    build,
    conformance_errors,
    official_state,
    run_sequence,
)

import neocell_ref as nr
from neocell_ref import layers as L
from neocell_ref import models
from neocell_ref.architecture import MODEL_CONFIGS, NeoNeXtConfig, describe, get_config
from neocell_ref.init import skewed_identity
from neocell_ref.instrument import count_macs
from neocell_ref.models import NeoNeXt
from neocell_ref.verify.gradcheck import check_gradients
from neocell_ref.verify.tolerances import MODEL_RTOL, relative_error


# ======================================================================================
# construction from the description
# ======================================================================================
def test_parameters_and_buffers_are_those_of_the_description():
    model = tiny(layer_scale_init_value=0.5, linear_bias=True)
    config = NeoNeXtConfig(
        **{k: v for k, v in TINY.items() if k != "resolution"}, layer_scale_init_value=0.5, linear_bias=True
    )
    arch = describe(config, 32)
    shapes, described = (
        {k: v.shape for k, v in model.params.items()},
        {k: tuple(s) for k, s in arch.param_shapes().items()},
    )
    assert shapes == described, (
        f"parameter shapes differ from the description at {set(shapes.items()) ^ set(described.items())}"
    )
    shapes, described = (
        {k: v.shape for k, v in model.buffers.items()},
        {k: tuple(s) for k, s in arch.buffer_shapes().items()},
    )
    assert shapes == described, (
        f"buffer shapes differ from the description at {set(shapes.items()) ^ set(described.items())}"
    )
    assert list(model.state_dict()) == list(arch.state_shapes()), "state_dict order is not the description's"
    sizes = sum(v.size for v in model.params.values())
    assert model.num_parameters() == sizes == arch.num_params, (
        f"num_parameters() {model.num_parameters()}, arrays hold {sizes}, description counts {arch.num_params}"
    )
    assert any(k.endswith("layer_scale.gamma") for k in model.params), "layer scale missing with init 0.5"
    assert "stage_1.0.ops.content.fc_1.bias" in model.params, "linear_bias=True gave no fc_1.bias"
    assert model.config.dims == TINY["dims"] and model.architecture.resolution == (32, 32), (
        f"dims {model.config.dims}, resolution {model.architecture.resolution}"
    )


def test_layer_scale_and_linear_bias_absent_by_default():
    model = tiny()
    assert not any("layer_scale" in k for k in model.params), "layer scale present with init value 0"
    assert not any(k.endswith(("fc_1.bias", "fc_2.bias")) for k in model.params), "fc biases with linear_bias=False"
    assert "head.fc.bias" in model.params, "the head always has a bias"


def test_neonext_t_parameter_arrays_match_the_count():
    model = nr.models.neonext_t(dtype=np.float32, rng=np.random.default_rng(0))
    total = sum(v.size for v in model.params.values())
    assert total == model.num_parameters() == describe(get_config("neonext_t")).num_params, total
    assert all(v.dtype == np.float32 for v in model.params.values()), "float32 model with float64 parameters"
    head, kernel = model.params["head.fc.weight"].shape, model.params["stage_1.0.ops.content.neocell.weight_a.1"].shape
    assert head == (1000, 768), f"head.fc.weight has shape {head}, not (1000, 768)"
    assert kernel == (48, 7, 7), f"stage 1's 7x7 group kernels have shape {kernel}, not 48 of 7x7"


@pytest.mark.parametrize("name", sorted(MODEL_CONFIGS))
def test_factories_pass_their_sizes_and_options(name, monkeypatch):
    seen = {}

    def fake_from_config(config, **kwargs):
        seen.update(config=config, **kwargs)
        return "built"

    monkeypatch.setattr(models.NeoNeXt, "from_config", staticmethod(fake_from_config))
    rng = np.random.default_rng(3)
    out = getattr(nr.models, name)(
        num_classes=10,
        kernel_spec="4+7",
        shifts=(1, 1, 1, 1),
        linear_bias=True,
        layer_scale_init_value=1e-6,
        drop_path=0.1,
        dtype=np.float32,
        rng=rng,
    )
    assert out == "built", f"the factory returned {out!r}, not what NeoNeXt built"
    config = seen["config"]
    assert (config.per_stage_layers, config.dims) == (
        MODEL_CONFIGS[name]["per_stage_layers"],
        MODEL_CONFIGS[name]["dims"],
    ), f"{name}: layers {config.per_stage_layers}, dims {config.dims}"
    assert (
        config.num_classes,
        config.kernel_spec,
        config.shifts,
        config.linear_bias,
        config.layer_scale_init_value,
        config.drop_path,
    ) == (10, "4+7", (1, 1, 1, 1), True, 1e-6, 0.1), f"{name}: options not passed through: {config}"
    assert seen["dtype"] == np.float32 and seen["rng"] is rng, f"dtype {seen['dtype']}, rng {seen['rng']!r}"


def test_construction_errors():
    for dtype, shown in [
        (np.float16, "float16"),
        (None, "None"),
        (np.float64(7.0), "np.float64(7.0)"),
        ("foo", "'foo'"),
    ]:
        # None is not read as float64, nor a number as its dtype (np.dtype reads both)
        with raises_naming(TypeError, f"dtype must be float32 or float64, got {shown}"):
            tiny(dtype=dtype)
    with pytest.raises(TypeError, match="rng"):
        nr.models.NeoNeXt(**TINY, rng=0)
    with pytest.raises(ValueError, match="dims"):
        nr.models.NeoNeXt((1, 1, 1, 1), (4, 8, 8), resolution=32)
    with pytest.raises(TypeError, match="unknown option"):
        nr.models.neonext_t(dims=(1, 2, 3, 4))
    with pytest.raises(ValueError, match="stage 1"):  # a 7 kernel with shift 1 needs feature maps >= 6
        nr.models.NeoNeXt((1, 1, 1, 1), (4, 8, 8, 8), resolution=16)


# ======================================================================================
# initialisation (docs/model.md)
# ======================================================================================
def test_initialisation_rules():
    model = nr.models.NeoNeXt(
        (1, 1, 1, 1),
        (16, 32, 32, 32),
        num_classes=200,
        kernel_spec="2+3",
        layer_scale_init_value=0.25,
        linear_bias=True,
        resolution=32,
        rng=np.random.default_rng(4),
    )
    p, b = model.params, model.buffers
    w = np.concatenate(
        [p[k].ravel() for k in p if k.endswith(("conv.weight", "fc_1.weight", "fc_2.weight", "fc.weight"))]
    )
    assert np.abs(w).max() <= 2 * models.INIT_STD, f"truncation at 2 std violated: {np.abs(w).max()}"
    # standard deviation of N(0, s²) truncated to ±2s is s·0.8796 (hand value of
    # sqrt(1 - 2·2·φ(2)/(Φ(2) - Φ(-2)))); with ~37000 draws it is known to ~0.5 %
    assert abs(w.std() / models.INIT_STD - 0.8796) < 0.02, f"std {w.std()}"
    assert abs(w.mean()) < 5 * models.INIT_STD / np.sqrt(w.size), f"mean {w.mean()}"
    for key, value in p.items():
        if key.endswith(("fc_1.bias", "fc_2.bias", "fc.bias", "norm.bias", "norm_1.bias", "ln.bias")):
            assert not value.any(), f"{key} not zero"
        if key.endswith(("norm.weight", "norm_1.weight", "ln.weight")):
            assert (value == 1).all(), f"{key} not one"
        if key.endswith("layer_scale.gamma"):
            assert (value == 0.25).all(), f"{key} not the init value"
    for key, value in b.items():
        if key.endswith("running_mean"):
            assert not value.any(), key
        elif key.endswith("running_var"):
            assert (value == 1).all(), key
        else:
            assert value.dtype == np.int64 and value.shape == () and int(value) == 0, key
    # NeoInit: skewed identity plus noise of standard deviation 1/sqrt(h_in·h_out)
    down = p["downsample_1.neocell.weight_a.0"]  # (32, 1, 2): S = [[0.5, 0.5]]
    noise = down - skewed_identity(1, 2)
    assert abs(noise.std() * np.sqrt(2) - 1) < 0.3, f"NeoInit noise std {noise.std()} vs 1/sqrt(2)"
    assert abs(noise.mean()) < 4 / np.sqrt(2 * noise.size), f"NeoInit noise mean {noise.mean()}"


def test_initialisation_is_deterministic_per_seed():
    a, b, c = tiny(seed=5), tiny(seed=5), tiny(seed=6)
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params), "same seed, different weights"
    assert not np.array_equal(a.params["stem.conv.weight"], c.params["stem.conv.weight"]), "seed ignored"


# ======================================================================================
# state dicts
# ======================================================================================
def test_state_dict_round_trip_and_copies(tmp_path):
    source, target = tiny(seed=1), tiny(seed=2)
    state = source.state_dict()
    state["stem.norm.running_var"] = state["stem.norm.running_var"] * 3
    state["stem.norm.num_batches_tracked"] = np.asarray(7, dtype=np.int64)
    result = target.load_state_dict(state)
    assert result == models.IncompatibleKeys([], []), result
    again = target.state_dict()
    assert list(again) == list(state), "state_dict keys or their order changed by a load"
    for key in state:
        assert np.array_equal(again[key], state[key]) and again[key].dtype == state[key].dtype, key
    again["stem.conv.weight"][...] = 0
    assert target.params["stem.conv.weight"].any(), "state_dict returned a view, not a copy"
    path = tmp_path / "w.npz"
    target.save_npz(path)
    third = tiny(seed=3)
    third.load_npz(path)
    for key, value in third.state_dict().items():
        assert np.array_equal(value, state[key]), f"{key} changed in the npz round trip"
    x = tiny_input()
    assert np.array_equal(third.forward(x), target.forward(x)), "npz round trip changed the logits"


def test_load_npz_accepts_the_batch_counts_load_state_dict_accepts(tmp_path):
    """A count stored with shape (1,) loads from an archive as from a mapping; (2,) does not."""
    model = tiny()
    state = model.state_dict()
    np.savez(tmp_path / "one.npz", **{**state, "stem.norm.num_batches_tracked": np.array([5])})
    model.load_npz(tmp_path / "one.npz")
    got = model.buffers["stem.norm.num_batches_tracked"]
    assert got.dtype == np.int64 and got.shape == () and int(got) == 5, repr(got)
    np.savez(tmp_path / "two.npz", **{**state, "stem.norm.num_batches_tracked": np.array([5, 6])})
    with pytest.raises(ValueError, match=r"num_batches_tracked.*shape \(2,\), expected \(\) or \(1,\)"):
        model.load_npz(tmp_path / "two.npz")


def test_load_npz_refuses_pickled_objects(tmp_path):
    path = tmp_path / "evil.npz"
    state = tiny().state_dict()
    state["stem.conv.weight"] = np.array([{"not": "an array"}], dtype=object)
    np.savez(path, **state)  # object arrays are pickled inside the archive
    with pytest.raises(ValueError, match="stem.conv.weight.*dtype object; only real numbers"):
        tiny().load_npz(path)


def test_non_strict_load_npz_reports_unexpected_members_as_load_state_dict_does(tmp_path):
    """Members of unknown names are skipped unread and reported in archive order, the
    documented rule of load_state_dict(np.load(path), strict=False); missing keys alike.
    load_npz reported IncompatibleKeys([], []) for them."""
    state = tiny(seed=1).state_dict()
    dropped = "head.fc.bias"
    path = tmp_path / "extra.npz"
    np.savez(path, zzz=np.zeros(2), **{k: v for k, v in state.items() if k != dropped}, extra=np.zeros((3, 3)))
    model = tiny()
    got = model.load_npz(path, strict=False)
    assert got == models.IncompatibleKeys([dropped], ["zzz", "extra"]), got
    with np.load(path) as archive:
        assert got == tiny().load_state_dict(archive, strict=False), "load_npz and load_state_dict disagree"
    assert np.array_equal(model.params["stem.conv.weight"], state["stem.conv.weight"]), "known members not loaded"
    with raises_naming(ValueError, "zzz", "no array of that name"):  # strict: refused as before
        tiny().load_npz(path)


def test_load_npz_reads_fortran_ordered_members(tmp_path):
    """np.save writes an F-contiguous array with fortran_order True; load_npz reads the
    values np.load reads (the saved arrays themselves) instead of refusing the member."""
    state = tiny(seed=1).state_dict()
    fortran = {k: np.asfortranarray(v) for k, v in state.items()}
    conv = fortran["stem.conv.weight"]
    assert conv.ndim == 4 and not conv.flags.c_contiguous, f"the array to save is {conv.ndim}-D and C-ordered"
    path = tmp_path / "fortran.npz"
    np.savez(path, **fortran)
    with np.load(path) as archive:  # the member really is stored in Fortran order
        flags = archive["head.fc.weight"].flags
        assert flags.f_contiguous and not flags.c_contiguous, f"saved member not in Fortran order:\n{flags}"
    model = tiny()
    model.load_npz(path)
    for key, value in model.state_dict().items():
        assert np.array_equal(value, state[key]), f"{key} differs after a Fortran-order load"


def test_load_state_dict_names_the_key_of_an_unreadable_member(tmp_path):
    """np.load(path)[key] refuses an object member only when read; the message named no key."""
    state = tiny().state_dict()
    state["stem.conv.weight"] = np.array([{"not": "an array"}], dtype=object)
    path = tmp_path / "objects.npz"
    np.savez(path, **state)
    model = tiny(seed=4)
    with np.load(path) as archive:
        _expect(ValueError, ["stem.conv.weight", "could not be read", "allow_pickle=False"], model, archive)


def test_float64_state_loads_into_float32_model():
    state = tiny(seed=1).state_dict()
    model = tiny(np.float32)
    model.load_state_dict(state)
    for key, value in model.params.items():
        assert value.dtype == np.float32 and np.array_equal(value, state[key].astype(np.float32)), key
    assert model.buffers["stem.norm.running_var"].dtype == np.float32, "running_var not cast to the model dtype"


def _expect(error, words, model, state, **kwargs):
    before = model.state_dict()
    with pytest.raises(error) as info:
        model.load_state_dict(state, **kwargs)
    for word in words:
        assert word in str(info.value), f"message {str(info.value)!r} does not mention {word!r}"
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before), "a failed load changed the model"


def test_load_state_dict_errors_name_the_key():
    model = tiny()
    good = model.state_dict()
    missing = {k: v for k, v in good.items() if k != "head.fc.bias"}
    _expect(ValueError, ["missing", "head.fc.bias"], model, missing)
    _expect(ValueError, ["unexpected", "head.extra"], model, {**good, "head.extra": np.zeros(3)})
    _expect(
        ValueError,
        ["stem.conv.weight", "shape mismatch", "(4, 48, 1, 1)", "(4, 48)"],
        model,
        {**good, "stem.conv.weight": np.zeros((4, 48))},
    )
    _expect(TypeError, ["head.fc.weight", "int64"], model, {**good, "head.fc.weight": np.zeros((5, 8), dtype=np.int64)})
    _expect(TypeError, ["head.fc.weight", "complex"], model, {**good, "head.fc.weight": np.zeros((5, 8), complex)})
    _expect(TypeError, ["head.fc.weight", "bool"], model, {**good, "head.fc.weight": np.zeros((5, 8), bool)})
    _expect(ValueError, ["head.ln.weight", "NaN"], model, {**good, "head.ln.weight": np.full(8, np.nan)})
    _expect(ValueError, ["stem.norm.running_var", ">= 0"], model, {**good, "stem.norm.running_var": -np.ones(4)})
    _expect(
        TypeError,
        ["stem.norm.num_batches_tracked", "integer scalar"],
        model,
        {**good, "stem.norm.num_batches_tracked": np.float64(3.0)},
    )
    _expect(
        TypeError,
        ["stem.norm.num_batches_tracked"],
        model,
        {**good, "stem.norm.num_batches_tracked": np.zeros((2,), np.int64)},
    )
    masked = np.ma.masked_array(np.full((5, 8), 123.0), mask=True)
    _expect(TypeError, ["head.fc.weight", "masked array"], model, {**good, "head.fc.weight": masked})
    _expect(TypeError, ["mapping"], model, [("stem.conv.weight", np.zeros(1))])
    _expect(TypeError, ["keys must be str", "3"], model, {**good, 3: np.zeros(1)})
    # several problems at once are all reported
    _expect(ValueError, ["missing", "unexpected"], model, {**missing, "head.extra": np.zeros(1)})


def test_num_batches_tracked_accepts_scalars_and_non_strict_load():
    model = tiny()
    good = model.state_dict()
    for value in (5, np.int64(5), np.asarray(5, np.int32), np.array([5])):
        model.load_state_dict({**good, "stem.norm.num_batches_tracked": value})
        got = model.buffers["stem.norm.num_batches_tracked"]
        assert got.dtype == np.int64 and got.shape == () and int(got) == 5, f"{value!r} -> {got!r}"
    partial = {"head.fc.bias": np.arange(5.0), "extra.key": np.zeros(2)}
    result = model.load_state_dict(partial, strict=False)
    assert result.unexpected_keys == ["extra.key"], result
    assert "head.fc.bias" not in result.missing_keys and "stem.conv.weight" in result.missing_keys, result
    assert np.array_equal(model.params["head.fc.bias"], np.arange(5.0)), "non-strict load skipped a good key"
    with pytest.raises(ValueError, match="shape mismatch"):
        model.load_state_dict({"head.fc.bias": np.zeros(6)}, strict=False)


# ======================================================================================
# forward / backward API and cache semantics
# ======================================================================================
def test_forward_input_errors():
    model = tiny()
    with pytest.raises(ValueError, match="4-D"):
        model.forward(np.zeros((3, 32, 32)))
    with pytest.raises(ValueError, match="in_chans=3"):
        model.forward(np.zeros((1, 4, 32, 32)))
    with pytest.raises(ValueError, match="multiples of 4"):
        model.forward(np.zeros((1, 3, 30, 32)))
    with pytest.raises(TypeError, match="complex"):
        model.forward(np.zeros((1, 3, 32, 32), complex))
    with pytest.raises(ValueError, match="at least one sample"):
        model.forward(np.zeros((0, 3, 32, 32)))
    with pytest.raises(TypeError, match="training"):
        model.forward(np.zeros((1, 3, 32, 32)), training="no")
    with pytest.raises(ValueError, match="BatchNorm in training mode"):  # batch 1 reaches 1x1 in stage 4
        model.forward(np.zeros((1, 3, 32, 32)), training=True)


def test_backward_needs_a_cached_forward():
    model = tiny()
    with pytest.raises(RuntimeError, match="forward"):
        model.backward(np.zeros((2, 5)))
    model.forward(tiny_input(), cache=False)
    with pytest.raises(RuntimeError, match="cache=True"):
        model.backward(np.zeros((2, 5)))
    model.forward(tiny_input())
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        model.backward(np.zeros((2, 6)))
    model.load_state_dict(model.state_dict())
    with pytest.raises(RuntimeError, match="state dict"):
        model.backward(np.zeros((2, 5)))
    # a refused forward (bad channels; NaN in training) leaves no earlier cache to differentiate
    for bad, training in [(np.zeros((2, 4, 32, 32)), False), (np.full((2, 3, 32, 32), np.nan), True)]:
        model.forward(tiny_input())
        with pytest.raises(ValueError):
            model.forward(bad, training=training)
        with pytest.raises(RuntimeError, match="forward"):
            model.backward(np.zeros((2, 5)))


def test_cache_semantics():
    model = tiny(layer_scale_init_value=0.5)
    x = tiny_input()
    x_copy = x.copy()
    fast = model.forward(x, cache=False)
    cached = model.forward(x)
    assert np.array_equal(fast, cached), "cache=False changed the logits"
    assert np.array_equal(x, x_copy), "forward modified its input"
    g = np.random.default_rng(2).standard_normal(cached.shape)
    gx1 = model.backward(g)
    grads1 = {k: v.copy() for k, v in model.grads.items()}
    gx2 = model.backward(g)
    assert np.array_equal(gx1, gx2), "a second backward on the same forward differs"
    assert all(np.array_equal(grads1[k], model.grads[k]) for k in grads1), "gradients accumulated across backwards"
    assert list(model.grads) == list(model.params), "grads are not keyed like params (state-dict order)"
    wrong = [k for k in model.params if model.grads[k].shape != model.params[k].shape]
    assert not wrong, f"gradients shaped unlike their parameters: {wrong}"
    model.backward(2 * g)
    assert all(np.allclose(model.grads[k], 2 * grads1[k], rtol=1e-12, atol=1e-300) for k in grads1), (
        "backward is not linear in grad"
    )


def test_batchnorm_buffers_update_only_in_training():
    model = tiny()
    x = tiny_input(4)
    model.forward(x, training=False)
    count = int(model.buffers["stem.norm.num_batches_tracked"])
    assert count == 0, f"an inference forward counted {count} batches"
    model.forward(x, training=True)
    model.forward(x, training=True, cache=False)
    for key, value in model.buffers.items():
        if key.endswith("num_batches_tracked"):
            assert int(value) == 2, f"{key} = {int(value)} after two training forwards"
    # by hand for the stem: two momentum-0.1 updates towards the same batch statistics
    patches = L.patchify_forward(x)
    stem_in = L.conv1x1_forward(patches, model.params["stem.conv.weight"])
    values = stem_in.transpose(1, 0, 2, 3).reshape(4, -1)
    mean, unbiased = values.mean(axis=1), values.var(axis=1, ddof=1)
    expected_mean = 0.9 * (0.9 * 0 + 0.1 * mean) + 0.1 * mean
    expected_var = 0.9 * (0.9 * 1 + 0.1 * unbiased) + 0.1 * unbiased
    for key, expected, atol in [("running_mean", expected_mean, 1e-14), ("running_var", expected_var, 0.0)]:
        got = model.buffers[f"stem.norm.{key}"]
        assert np.allclose(got, expected, rtol=1e-12, atol=atol), (
            f"stem.norm.{key}: largest difference from the hand update {np.max(np.abs(got - expected)):.3g}"
        )


def test_drop_path_uses_the_model_generator():
    x = tiny_input(4)
    a, b, c = tiny(drop_path=0.5), tiny(drop_path=0.5), tiny(drop_path=0.5, drop_path_seed=1)
    ya, yb, yc = (m.forward(x, training=True) for m in (a, b, c))
    assert np.array_equal(ya, yb), "same drop_path_seed, different training outputs"
    assert not np.array_equal(ya, yc), "drop_path_seed has no effect"
    same_state = tiny()
    same_state.load_state_dict(a.state_dict())  # the training forward moved the running statistics
    assert np.array_equal(a.forward(x), same_state.forward(x)), "drop path is not the identity in inference"
    plain = tiny()
    state = plain.drop_path_rng.bit_generator.state
    plain.forward(x, training=True)
    assert plain.drop_path_rng.bit_generator.state == state, "drop_path=0 consumed random numbers"


# ======================================================================================
# end-to-end gradient check of a small whole model
# ======================================================================================


def test_whole_model_gradients_inference_mode():
    report = model_gradcheck(tiny(), training=False)
    assert report.passed, f"inference-mode model gradients\n{report}"


def test_whole_model_gradients_training_mode_with_drop_path_layer_scale_and_biases():
    model = tiny(drop_path=0.6, layer_scale_init_value=0.5, linear_bias=True)
    report = model_gradcheck(model, training=True)
    assert report.passed, f"training-mode model gradients\n{report}"


@settings(max_examples=8)
@given(data=st.data())
def test_random_small_models_gradients_and_fast_path(data):
    """Property over small configurations: uneven channel groups, rectangular inputs, both
    modes, with or without shifts, layer scale and biases. The input gradient passes the
    gradient check (a few elements and the dot-product test), and the fast inference
    path gives the layer-by-layer logits."""
    code = data.draw(st.sampled_from(["2+3", "3", "2", "3+2"]), label="kernel code")
    shifts = tuple(data.draw(st.integers(0, 1), label=f"shift stage {s + 1}") for s in range(3)) + (0,)
    size = data.draw(st.sampled_from([(32, 32), (32, 64), (64, 32)]), label="input H, W")
    dims = data.draw(st.sampled_from([(4, 8, 8, 8), (3, 5, 6, 7)]), label="dims")
    depth = data.draw(st.sampled_from([(1, 1, 1, 1), (2, 1, 1, 1)]), label="blocks per stage")
    training = data.draw(st.booleans(), label="training")
    layer_scale = data.draw(st.sampled_from([0.0, 0.3]), label="layer_scale_init_value")
    bias = data.draw(st.booleans(), label="linear_bias")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    model = nr.models.NeoNeXt(
        depth,
        dims,
        num_classes=3,
        kernel_spec=code,
        shifts=shifts,
        layer_scale_init_value=layer_scale,
        linear_bias=bias,
        resolution=size,
        rng=np.random.default_rng(seed),
    )
    x = np.random.default_rng(seed + 1).standard_normal((2, 3, *size))
    if not training:
        fast, cached = model.forward(x, cache=False), model.forward(x)
        err = relative_error(fast, cached)
        assert err <= 1e-13, f"fast path differs by {err:.2e} ({code}, shifts {shifts}, {size})"

    def forward(x_):
        return model.forward(x_, training=training)

    def backward(g, x_):
        model.forward(x_, training=training)
        return [model.backward(g)]

    report = check_gradients(
        forward, backward, [x], names=["x"], max_elements=4, dot_rtol=1e-7, rng=np.random.default_rng(seed)
    )
    assert report.passed, f"{code}, shifts {shifts}, size {size}, dims {dims}, training={training}\n{report}"


# ======================================================================================
# float32, MAC counts, complexity
# ======================================================================================
def test_float32_model_agrees_with_float64():
    x = tiny_input(4)
    m64, m32 = tiny(np.float64, seed=9), tiny(np.float32, seed=9)
    m32.load_state_dict(m64.state_dict())
    for training in (False, True):
        y64, y32 = m64.forward(x, training=training), m32.forward(x.astype(np.float32), training=training)
        assert y32.dtype == np.float32, f"float32 model returned {y32.dtype} (training={training})"
        err = relative_error(y32, y64)
        bound = MODEL_RTOL["float32"]["logits"]
        assert err <= bound, f"float32 logits (training={training}): relative error {err:.3e} > {bound:g}"


def test_executed_matrix_products_match_the_description():
    model = tiny()
    x = tiny_input(2)
    with count_macs() as counter:
        model.forward(x)
    expected = {"linear": 0, "conv1x1": 0}
    for desc in model.architecture.layers():
        if desc.kind in expected:
            c_out, c_in = desc.params["weight"][:2]
            positions = int(np.prod(desc.in_shape[1:], dtype=np.int64))
            expected[desc.kind] += 2 * c_out * c_in * positions
    tags = counter.by_tag()
    assert {k: tags.get(k, 0) for k in expected} == expected, f"MACs by tag {tags}, expected {expected}"
    assert set(tags) - set(expected), "NeoCell products were not counted"


def test_complexity_calculator_reads_the_model():
    model = tiny()
    result = nr.model_complexity(model, resolution=32)
    assert result.params == model.num_parameters(), (
        f"complexity params {result.params} vs model {model.num_parameters()}"
    )


# ======================================================================================
# Official conformance of the whole network: tests/data/official_tiny_model.{npz,json}
# (default options) and official_tiny_model_options.{npz,json} (linear biases, layer
# scale, "3+5", shift 2); the ``official`` fixture runs every test below on both.
#
# The data are outputs of the authors' PyTorch NeoNeXt (float64, CPU; provenance in
# tests/data/PROVENANCE.md). With its state dict loaded, the reference must reproduce, in
# float64 with relative error ``max|got - ref| / max|ref| <= 1e-10`` (a vanishing
# parameter gradient relative to the largest gradient of its layer, model_errors):
#
# 1. ``logits_eval`` (inference mode, computed first),
# 2. ``logits_train`` (training mode, batch statistics, computed second),
# 3. ``grad_x`` and every ``grad/KEY`` of ``sum(logits_train * grad_logits)``,
# 4. ``buffers_after_train/KEY``: BatchNorm running statistics and ``num_batches_tracked``
#    after that training forward, read from ``state_dict()``.
#
# The same comparison in float32 must stay within the documented float32 bound, and the
# comparison must *fail* for subtly wrong layers (mutants), or it would prove nothing.
# ======================================================================================
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
    """Each on its own size, except a vanishing one (conformance_errors): fc_2.bias in
    front of a training-mode BatchNorm has an exact gradient of 0, rounding noise in both
    implementations, judged against its layer's largest gradient."""
    arrays, meta = official
    result, model = result64
    expected = sorted(k[len("grad/") :] for k in arrays if k.startswith("grad/"))
    assert sorted(model.grads) == expected, f"gradient keys differ: {set(model.grads) ^ set(expected)}"
    errors = {k: e for k, e in conformance_errors(result, arrays, meta).items() if k.startswith("grad/")}
    assert len(errors) == len(expected), f"{len(errors)} gradients compared, {len(expected)} stored"
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
    dtypes = (result["logits_eval"].dtype, result["grad_x"].dtype)
    assert dtypes == (np.float32, np.float32), f"logits and grad_x in {dtypes}, not float32"
    errors = conformance_errors(result, arrays, meta)
    for key, err in errors.items():
        bound = FLOAT32_LOGITS if key.startswith("logits") else FLOAT32_GRADS
        assert err <= bound, f"float32 {key}: relative error {err:.3e} > {bound:g}"


# --------------------------------------------------------------------------------------
# hostile input (issue "Verdicts that cannot be fooled", section 5)
# --------------------------------------------------------------------------------------
@pytest.fixture
def tiny32():
    return NeoNeXt(**TINY_MODEL, dtype=np.float32)


def test_load_state_dict_casts_before_checking_finiteness(tiny32):
    state = tiny32.state_dict()
    key = "stem.conv.weight"
    before = state[key].copy()
    with raises_naming(ValueError, key, "NaN or Inf", "after the cast to float32"):
        tiny32.load_state_dict({**state, key: np.full(state[key].shape, 1e300)})
    np.testing.assert_array_equal(tiny32.params[key], before)  # nothing assigned


def test_load_state_dict_num_batches_tracked_beyond_int64(tiny32):
    state = tiny32.state_dict()
    key = "stem.norm.num_batches_tracked"
    with raises_naming(ValueError, key, "int64", "18446744073709551615"):
        tiny32.load_state_dict({**state, key: np.uint64(2**64 - 1)})
    tiny32.load_state_dict({**state, key: np.uint64(2**63 - 1)})
    assert tiny32.buffers[key] == 2**63 - 1, f"{key} read as {tiny32.buffers[key]!r}"
    # the next training forward would overflow the count: refused, statistics untouched
    mean = tiny32.buffers["stem.norm.running_mean"].copy()
    with raises_naming(ValueError, "num_batches_tracked", "int64"):
        tiny32.forward(np.ones((2, 3, 32, 32)), training=True)
    np.testing.assert_array_equal(tiny32.buffers["stem.norm.running_mean"], mean)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e300])
def test_training_forward_refuses_nonfinite_input_before_touching_running_statistics(bad):
    model = NeoNeXt(**TINY_MODEL, dtype=np.float32)
    before = model.state_dict()
    x = np.ones((2, 3, 32, 32))
    x[1, 2, 3, 4] = bad
    with raises_naming(ValueError, "x contains NaN or Inf", "training"):
        model.forward(x, training=True)
    after = model.state_dict()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key], err_msg=key)
    model.load_state_dict(after)  # the model still accepts its own state
    logits = model.forward(np.ones((2, 3, 32, 32)), training=True)
    assert np.isfinite(logits).all(), f"non-finite logits after the refused forward: {logits}"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("cache", [True, False])
def test_a_batch_too_small_for_batchnorm_names_the_layer(cache):
    """At 32 px the last downsampling normalises 1x1 maps: a training batch of one gives
    it one value per channel. Refused before anything runs, naming that layer."""
    model = NeoNeXt(dims=(8, 16, 24, 32), per_stage_layers=(1, 1, 1, 1), num_classes=4, shifts=(0, 0, 0, 0))
    before = {k: v.copy() for k, v in model.buffers.items()}
    with pytest.raises(ValueError, match=r"downsample_3\.norm_1: BatchNorm in training mode .* = 1"):
        model.forward(np.ones((1, 3, 32, 32)), training=True, cache=cache)
    assert all(np.array_equal(before[k], model.buffers[k]) for k in before), "a refused forward changed buffers"
    shape = model.forward(np.ones((2, 3, 32, 32)), training=True, cache=cache).shape
    assert shape == (2, 4), f"a batch of two gave logits of shape {shape}"


def test_training_forward_commits_running_statistics_only_when_it_succeeds():
    """A NaN born inside the network (here: a poisoned fc weight after stage 1's first
    BatchNorm) is caught by a later BatchNorm; the earlier ones must not have moved."""
    model = NeoNeXt(**TINY_MODEL)
    model.params["stage_1.0.ops.content.fc_2.weight"][0, 0] = np.inf
    before = {k: v.copy() for k, v in model.buffers.items()}
    with pytest.raises(ValueError, match="NaN or Inf"), np.errstate(invalid="ignore"):  # the NaN is the point
        model.forward(np.random.default_rng(0).standard_normal((2, 3, 32, 32)), training=True)
    for key, value in before.items():
        np.testing.assert_array_equal(model.buffers[key], value, err_msg=key)


def test_forward_cache_and_training_must_be_bools(tiny32):
    x = np.ones((1, 3, 32, 32))
    with raises_naming(TypeError, "cache", "bool", "'no'"):
        tiny32.forward(x, cache="no")
    with raises_naming(TypeError, "training", "bool"):
        tiny32.forward(x, training="yes")


def _npz_with_member(path, name, header_shape, data_bytes, claimed_size=None):
    """An .npz whose member ``name`` has a real .npy header for ``header_shape`` (float64)
    followed by ``data_bytes`` bytes; the zip directory may claim another size."""
    import io
    import zipfile

    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": tuple(header_shape)})
    member.write(b"\0" * data_bytes)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(name + ".npy", member.getvalue())
    if claimed_size is not None:  # patch the central directory's uncompressed size
        raw = bytearray(path.read_bytes())
        at = raw.rfind(b"PK\x01\x02")
        raw[at + 24 : at + 28] = int(claimed_size).to_bytes(4, "little")
        path.write_bytes(bytes(raw))


def test_load_npz_checks_every_header_before_reading(tmp_path, tiny32):
    """A member claiming a 8 TB array, one of the wrong shape, an unknown name and a
    directory that lies about the size are each refused by name, and nothing large is
    allocated (tracemalloc peak); a good archive still loads."""
    model = tiny32
    path = tmp_path / "bomb.npz"
    _npz_with_member(path, "stem.conv.weight", (10**6, 10**6), 16)
    tracemalloc.start()
    with pytest.raises(ValueError, match=r"stem\.conv\.weight.*header declares shape \(1000000, 1000000\)"):
        model.load_npz(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak} bytes allocated for a forged header"
    _npz_with_member(path, "no.such.weight", (2,), 16)
    with pytest.raises(ValueError, match="no.such.weight.*no array of that name"):
        model.load_npz(path)
    shape = model.state_dict()["stem.conv.weight"].shape
    _npz_with_member(path, "stem.conv.weight", shape, 8 * int(np.prod(shape)), claimed_size=2**31)
    with pytest.raises(ValueError, match="zip directory says 2147483648 bytes"):
        model.load_npz(path, strict=False)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        model.load_npz(tmp_path / "junk.npz")
    model.save_npz(tmp_path / "good.npz")
    NeoNeXt(**TINY_MODEL, dtype=np.float32).load_npz(tmp_path / "good.npz")


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("training", [False, True])
def test_forward_refuses_a_batch_over_the_memory_budget_before_allocating(training, cache):
    """A broadcast input of a few kilobytes can stand for any batch: 120,000 images ran
    for a minute at 15 GB. The forward now checks its input in the model dtype and its
    largest layer output against the budget first (tracemalloc: nothing of that size is
    allocated), and names the layer; a batch under the budget still runs."""
    from neocell_ref.validation import max_bytes_set_to

    model = NeoNeXt(**{**TINY_MODEL, "dims": (16, 16, 24, 32)})  # fc_1 of stage 1 is wider than x
    arch = model.describe((32, 32))
    widest = max(arch.layers(), key=lambda d: int(np.prod(d.out_shape)))
    assert np.prod(widest.out_shape) > 3 * 32 * 32, f"the widest layer {widest.name} is no wider than x"
    per_sample = int(np.prod(widest.out_shape)) * 8  # float64 bytes of its output per image
    budget = 4 * per_sample  # room for 4 images' widest activation
    x = np.broadcast_to(np.ones((1, 3, 32, 32)), (5, 3, 32, 32))
    with max_bytes_set_to(budget):
        tracemalloc.start()
        try:
            with raises_naming(ValueError, f"forward: output of {widest.name}", "memory budget", "(5, "):
                model.forward(x, training=training, cache=cache)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < per_sample, (
            f"{peak:,} bytes allocated before the refusal (one image's widest output: {per_sample:,})"
        )
        logits = model.forward(np.ones((2, 3, 32, 32)), training=training, cache=cache)
    assert logits.shape == (2, 4), f"a batch under the budget: logits of shape {logits.shape}"


# --------------------------------------------------------------------------------------
# archives and state dicts: the second hostile review
# --------------------------------------------------------------------------------------
def test_load_npz_refuses_a_header_bomb_by_name_before_reading_it(tmp_path, tiny32):
    """A 100 KB archive whose member declares 10**8 bytes of .npy header text (and holds
    them): NumPy's reader read them all (10**9 cost 2 GB). Refused unread, by name."""
    import struct
    import zipfile

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("stem.conv.weight.npy", "w", force_zip64=True) as member:
            member.write(b"\x93NUMPY\x02\x00" + struct.pack("<I", 10**8))
            for _ in range(100):
                member.write(b" " * 10**6)
    assert path.stat().st_size < 2**20, f"the test archive is {path.stat().st_size} bytes"
    tracemalloc.start()
    try:
        with raises_naming(ValueError, "state archive: member 'stem.conv.weight.npy'", "says 100000012 bytes"):
            tiny32.load_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"{peak:,} bytes allocated before the refusal"


def test_non_strict_load_npz_reports_each_unknown_member_once_in_archive_order(tmp_path):
    import warnings
    import zipfile

    state = tiny(seed=1).state_dict()
    path = tmp_path / "extra.npz"
    np.savez(path, **state)
    with zipfile.ZipFile(path, "a") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Duplicate name": the point here
        for name in ("zz", "aa", "zz", "mm", "aa"):
            zf.writestr(f"{name}.npy", b"")  # never read: no header needed
    got = tiny().load_npz(path, strict=False)
    assert got == models.IncompatibleKeys([], ["zz", "aa", "mm"]), got


def test_fortran_ordered_state_loads_c_contiguous_and_gives_bitwise_the_same_outputs():
    """astype(copy=True) kept a Fortran source's order: the same values then gave logits
    differing in the last bits from those of a C-ordered load (or of load_npz)."""
    state = tiny(seed=1).state_dict()
    fortran = {k: np.asfortranarray(v) for k, v in state.items()}
    assert not fortran["head.fc.weight"].flags.c_contiguous, "the Fortran-ordered source is C-contiguous"
    from_f, from_c = tiny(seed=2), tiny(seed=3)
    from_f.load_state_dict(fortran)
    from_c.load_state_dict({k: np.ascontiguousarray(v) for k, v in state.items()})
    for key, value in {**from_f.params, **from_f.buffers}.items():
        flags = value.flags
        assert flags.c_contiguous and flags.owndata and flags.writeable, f"{key} stored with\n{flags}"
        assert not np.shares_memory(value, fortran[key]), f"{key} is a view of the loaded array"
    x = tiny_input()
    for cache in (False, True):
        got, want = from_f.forward(x, cache=cache), from_c.forward(x, cache=cache)
        assert np.array_equal(got, want), (
            f"cache={cache}: logits differ by {np.abs(got - want).max()} between Fortran and C order"
        )


def test_save_npz_writes_exactly_the_path_given(tmp_path):
    """np.savez added .npz to a path without it, so load_npz(path) found no file."""
    model = tiny(seed=1)
    for name in ("checkpoint", "weights.bin", "w.npz"):
        path = tmp_path / name
        model.save_npz(path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [name], (
            f"save_npz({name!r}) left {list(tmp_path.iterdir())}"
        )
        other = tiny(seed=2)
        other.load_npz(str(path))
        assert np.array_equal(other.params["head.fc.weight"], model.params["head.fc.weight"]), f"{name}: not loaded"
        path.unlink()


@pytest.mark.parametrize(
    "path, error, words",
    [
        ("", ValueError, ["path must not be empty"]),  # np.savez wrote '.npz'
        (12345, TypeError, ["path must be a str or an os.PathLike", "12345", "int"]),
        (None, TypeError, ["path must be a str or an os.PathLike", "None"]),
        (b"w.npz", TypeError, ["path must be a str or an os.PathLike", "b'w.npz'", "bytes"]),
    ],
    ids=repr,
)
def test_save_npz_refuses_a_bad_path_naming_it(tmp_path, monkeypatch, path, error, words):
    monkeypatch.chdir(tmp_path)
    with raises_naming(error, *words):
        tiny().save_npz(path)
    assert list(tmp_path.iterdir()) == [], f"a refused save wrote {list(tmp_path.iterdir())}"


def test_an_interrupted_save_npz_leaves_the_existing_checkpoint_intact(tmp_path, monkeypatch):
    """The save goes to a temporary file of the same folder, renamed over the target
    only once complete; an interrupted one is removed."""
    path = tmp_path / "w.npz"
    tiny(seed=1).save_npz(path)
    before = path.read_bytes()

    def interrupted(file, **arrays):
        file.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiny(seed=2).save_npz(path)
    monkeypatch.undo()
    assert path.read_bytes() == before, "the interrupted save changed the existing checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["w.npz"], f"left behind: {list(tmp_path.iterdir())}"
    tiny(seed=3).load_npz(path)


@pytest.mark.parametrize("path", [12345, None, b"w.npz", 2.5], ids=repr)
def test_load_npz_refuses_a_path_of_the_wrong_type_naming_it(path):
    """They gave AttributeError ('int' object has no attribute 'seek')."""
    with raises_naming(TypeError, "path must be a str, an os.PathLike or a binary file object", repr(path)):
        tiny().load_npz(path)


def test_load_npz_reads_and_names_file_objects(tmp_path):
    """A BytesIO of junk made the error handler itself raise TypeError (os.fspath)."""
    import io

    with raises_naming(ValueError, "state archive <file object> is not a readable .npz"):
        tiny().load_npz(io.BytesIO(b"not a zip"))
    source = tiny(seed=1)
    source.save_npz(tmp_path / "w.npz")
    model = tiny(seed=2)
    with open(tmp_path / "w.npz", "rb") as file:
        model.load_npz(file)
    model.load_npz(io.BytesIO((tmp_path / "w.npz").read_bytes()))
    assert np.array_equal(model.params["head.fc.weight"], source.params["head.fc.weight"]), "file object not loaded"


@pytest.mark.parametrize(
    "value, shown",
    [
        (2**64, "18446744073709551616"),
        (-(2**63) - 1, "-9223372036854775809"),
        (10**30, "1000000000000000000000000000000"),
        (np.array(10**30, dtype=object), "1000000000000000000000000000000"),
        (np.array([2**64], dtype=object), "18446744073709551616"),
    ],
    ids=repr,
)
def test_num_batches_tracked_beyond_int64_is_a_value_error_naming_key_and_value(tiny32, value, shown):
    """Python ints beyond int64 and uint64 make object arrays: 'TypeError: expected an
    integer scalar, got dtype object shape ()'."""
    state = tiny32.state_dict()
    key = "stem.norm.num_batches_tracked"
    _expect(ValueError, [key, shown, "outside the int64 range"], tiny32, {**state, key: value})


def test_num_batches_tracked_object_scalars_in_range_load_and_others_are_refused(tiny32):
    state = tiny32.state_dict()
    key = "stem.norm.num_batches_tracked"
    tiny32.load_state_dict({**state, key: np.array(7, dtype=object)})
    got = tiny32.buffers[key]
    assert got.dtype == np.int64 and got.shape == () and int(got) == 7, f"object 7 loaded as {got!r}"
    _expect(ValueError, [key, "[0, 2**63 - 1]", "-1"], tiny32, {**state, key: -1})
    for bad in (np.array(3.0, dtype=object), np.array(True, dtype=object), True, "7", np.ones((1, 1), np.int64)):
        _expect(TypeError, [key, "integer scalar"], tiny32, {**state, key: bad})
