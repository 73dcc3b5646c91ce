"""The layer-kind registry: one record per kind, read by the description, the model, the
calculator and the golden oracle.

A toy kind (a per-channel ``y = x·weight + bias``) is registered in one place, for the
duration of each test; the tests show that a model built from a description using it,
the complexity calculator and the golden oracle pick it up, with expected values
computed here by hand from the plain model (never by the code under test).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from support.hostile import raises_naming

import neocell_ref  # noqa: F401  (registers the built-in kinds)
from neocell_ref import calculator as CX
from neocell_ref import registry
from neocell_ref.architecture import NeoNeXtConfig, Unit, describe, kinds_table, layer
from neocell_ref.models import NeoNeXt
from neocell_ref.verify import golden, golden_ops
from neocell_ref.verify.tolerances import DEFAULT_SEED

BUILT_IN = (
    "patchify",
    "conv1x1",
    "batchnorm",
    "neocell",
    "linear",
    "gelu",
    "layer_scale",
    "drop_path",
    "avgpool",
    "layernorm",
)


# --------------------------------------------------------------------------------------
# the toy kind: functional pair, model adapters, counts, tolerances, all in one record
# --------------------------------------------------------------------------------------
def _channel_view(x):
    return (1, -1) + (1,) * (x.ndim - 2)


def toy_forward(x, weight, bias):
    return x * weight.reshape(_channel_view(x)) + bias.reshape(_channel_view(x))


def toy_backward(grad_y, x, weight, bias):
    axes = (0,) + tuple(range(2, x.ndim))
    return grad_y * weight.reshape(_channel_view(x)), (grad_y * x).sum(axis=axes), grad_y.sum(axis=axes)


def _toy_model_forward(model, desc, x, training, inplace):
    return toy_forward(x, model.param(desc, "weight"), model.param(desc, "bias")), x, True


def _toy_model_backward(model, desc, grad, x):
    grad_x, grad_w, grad_b = toy_backward(grad, x, model.param(desc, "weight"), model.param(desc, "bias"))
    model.set_grad(desc, "weight", grad_w)
    model.set_grad(desc, "bias", grad_b)
    return grad_x


def _toy_count(layer):
    elems = int(np.prod(layer.out_shape))
    return dict.fromkeys(CX.CONVENTIONS, 3 * elems), 5 * elems


def toy_kind(functions=(toy_forward, toy_backward)):
    return registry.LayerKind(
        "toy_affine",
        "per-channel x·weight + bias; params ``weight``, ``bias`` (C,)",
        state=lambda i, o, options: ({"weight": (i[0],), "bias": (i[0],)}, {}),
        roles=lambda name: {"weight": "scale", "bias": "shift"}[name],
        init=lambda desc, rng, dtype: {
            "weight": np.ones(desc.params["weight"], dtype),
            "bias": np.zeros(desc.params["bias"], dtype),
        },
        forward=_toy_model_forward,
        backward=_toy_model_backward,
        count=_toy_count,
        functions=functions,
        accumulation=lambda shapes, options, elementary: {
            "y": 1,
            "grad_x": 1,
            "grad_weight": shapes["x"][0],
            "grad_bias": shapes["x"][0],
        },
        norm="elementwise",
    )


@pytest.fixture
def toy():
    with registry.registered(toy_kind()) as kind:
        yield kind
    assert "toy_affine" not in registry.names(), "the toy kind outlived its test"


CONFIG = NeoNeXtConfig(per_stage_layers=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=5, shifts=(0, 0, 0, 0))


def _with_toy_head(arch):
    """The description with a toy layer after the head's classifier."""
    head = arch.units[-1]
    toy_layer = layer("head.toy", "toy_affine", head.layers[-1].out_shape)
    units = arch.units[:-1] + (Unit(head.name, head.kind, head.layers + (toy_layer,)),)
    return dataclasses.replace(arch, units=units)


# --------------------------------------------------------------------------------------
# the registry itself
# --------------------------------------------------------------------------------------
def test_every_built_in_kind_is_registered_once():
    assert set(BUILT_IN) <= set(registry.names()), f"registered: {registry.names()}"
    names = registry.names()
    assert len(names) == len(set(names)), f"kinds registered twice: {sorted({n for n in names if names.count(n) > 1})}"
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.get("linear"))
    with pytest.raises(ValueError, match="unknown layer kind 'nope'"):
        registry.get("nope")


def test_the_described_kinds_are_the_registered_ones():
    arch = describe(NeoNeXtConfig(layer_scale_init_value=0.5, linear_bias=True), 224)
    used = {desc.kind for desc in arch.layers()}
    assert used == set(BUILT_IN), f"description uses {sorted(used)}"
    for desc in arch.layers():
        params, buffers = registry.get(desc.kind).state(desc.in_shape, desc.out_shape, desc.options)
        assert (params, buffers) == (desc.params, desc.buffers), desc.name
        for _, entry, _, _ in desc.entries():
            assert registry.get(desc.kind).roles(entry) in registry.ROLES, (desc.name, entry)


def test_the_kinds_table_lists_a_registered_kind(toy):
    table = kinds_table()
    assert "toy_affine" in table, f"'toy_affine' missing from the kinds table:\n{table}"
    assert "layernorm" in table, f"'layernorm' missing from the kinds table:\n{table}"


# --------------------------------------------------------------------------------------
# the toy kind reaches the model, the calculator and the golden oracle
# --------------------------------------------------------------------------------------
def test_a_registered_kind_runs_in_the_model(toy):
    plain = NeoNeXt.from_config(CONFIG, rng=np.random.default_rng(0), resolution=32)
    model = NeoNeXt.from_architecture(_with_toy_head(plain.architecture), rng=np.random.default_rng(0))
    added = set(model.params) - set(plain.params)
    assert added == {"head.toy.weight", "head.toy.bias"}, (
        f"parameters added by the toy head {sorted(added)}, expected ['head.toy.bias', 'head.toy.weight']"
    )
    rng = np.random.default_rng(1)
    w, b = rng.uniform(0.5, 1.5, 5), rng.standard_normal(5)
    state = {**plain.state_dict(), "head.toy.weight": w, "head.toy.bias": b}
    model.load_state_dict(state)
    x = rng.standard_normal((2, 3, 32, 32))
    g = rng.standard_normal((2, 5))

    logits = plain.forward(x)
    want = logits * w + b  # by hand: the toy layer applied to the plain model's logits
    for cache in (True, False):
        got = model.forward(x, cache=cache)
        np.testing.assert_allclose(
            got, want, rtol=1e-14, atol=0, err_msg=f"toy model logits (cache={cache}) vs plain logits·w + b"
        )
    model.forward(x)
    grad_x = model.backward(g)
    np.testing.assert_allclose(
        grad_x, plain.backward(g * w), rtol=1e-12, atol=1e-300, err_msg="grad_x: toy model vs plain model fed g·w"
    )
    np.testing.assert_allclose(model.grads["head.toy.weight"], (g * logits).sum(0), rtol=1e-13)
    np.testing.assert_allclose(model.grads["head.toy.bias"], g.sum(0), rtol=1e-13)
    assert list(model.grads) == list(model.architecture.param_shapes()), "gradients not in state-dict order"
    with pytest.raises(ValueError, match="cannot run at"):
        model.forward(np.zeros((1, 3, 64, 64)))


def test_a_registered_kind_is_counted_by_the_calculator(toy):
    plain = describe(CONFIG, 32)
    rows = [CX._count_layer(desc) for desc in _with_toy_head(plain).layers()]
    toy_row = rows[-1]
    got = (toy_row.kind, toy_row.params, toy_row.elementwise_ops)
    assert got == ("toy_affine", 10, 25), (
        f"toy row (kind, params, elementwise_ops) {got}, expected ('toy_affine', 10, 25)"
    )
    assert toy_row.macs == dict.fromkeys(CX.CONVENTIONS, 15), f"toy row macs {toy_row.macs}, expected 15 per convention"
    plain_rows = [CX._count_layer(desc) for desc in plain.layers()]
    assert rows[:-1] == plain_rows, "adding a layer changed the counts of the others"


def _toy_case(monkeypatch, kind):
    monkeypatch.setitem(golden_ops.OPERATIONS, "toy_affine", golden_ops._layer_operation(kind))
    case = ("toy_channels", {}, {"x": (3, 4, 2, 5), "weight": (4,), "bias": (4,)})
    meta, arrays, _, tolerances = golden_ops.make_case("toy_affine", case, "float64", DEFAULT_SEED)
    return {**meta, "tolerances": tolerances}, arrays


def test_a_registered_kind_gets_golden_cases(toy, monkeypatch):
    meta, arrays = _toy_case(monkeypatch, "toy_affine")
    n = meta["tolerances"]["grad_weight"]["accumulation_length"]
    assert n == 3, f"grad_weight accumulation_length {n}, expected 3"
    assert all(t["norm"] == "elementwise" and t["bound"] for t in meta["tolerances"].values()), (
        f"tolerances not elementwise with a bound: {meta['tolerances']}"
    )
    # The expected y is the reference's; check it by hand before trusting the verdicts.
    x, w, b = arrays["x"], arrays["weight"], arrays["bias"]
    np.testing.assert_array_equal(arrays["y"], x * w[None, :, None, None] + b[None, :, None, None])
    results = golden.run_and_compare("toy_affine", "toy_channels", meta, arrays, toy_forward, toy_backward)
    assert sorted(r.array for r in results) == ["grad_bias", "grad_weight", "grad_x", "y"], (
        f"compared arrays {sorted(r.array for r in results)}, expected ['grad_bias', 'grad_weight', 'grad_x', 'y']"
    )
    assert all(r.passed for r in results), [r.describe() for r in results if not r.passed]


def test_a_wrong_port_of_a_registered_kind_fails_its_golden_case(toy, monkeypatch):
    meta, arrays = _toy_case(monkeypatch, "toy_affine")

    def wrong_backward(grad_y, x, weight, bias):
        gx, gw, gb = toy_backward(grad_y, x, weight, bias)
        return gx, gw, gb * (1 + 1e-9)  # a tiny relative error in one gradient

    results = golden.run_and_compare("toy_affine", "toy_channels", meta, arrays, toy_forward, wrong_backward)
    failed = [r.array for r in results if not r.passed]
    assert failed == ["grad_bias"], [r.describe() for r in results]


# --------------------------------------------------------------------------------------
# state-dict names come from the description only
# --------------------------------------------------------------------------------------
def test_state_dict_names_are_the_descriptions():
    model = NeoNeXt.from_config(CONFIG, resolution=32)
    keys = [k for desc in model.architecture.layers() for k in desc.param_keys() + desc.buffer_keys()]
    names = list(model.state_dict())
    first = next((i for i, (a, b) in enumerate(zip(names, keys)) if a != b), min(len(names), len(keys)))
    assert names == keys, (
        f"state_dict has {len(names)} names, the descriptions {len(keys)}; first difference at {first}: "
        f"{names[first : first + 1]} vs {keys[first : first + 1]}"
    )
    missing = {"downsample_1.neocell.weight_a.0", "stem.norm.num_batches_tracked"} - set(keys)
    assert "downsample_1.neocell.weight_a.0" in keys and "stem.norm.num_batches_tracked" in keys, (
        f"missing from the description's keys: {sorted(missing)}"
    )


def test_model_options_default_to_the_config():
    sizes = dict(per_stage_layers=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    model = NeoNeXt(*sizes.values(), resolution=32, shifts=(0, 0, 0, 0))
    want = dataclasses.replace(NeoNeXtConfig(), **sizes, shifts=(0, 0, 0, 0))
    assert model.config == want, "model.config differs from the config defaults (field: got, expected): " + str(
        {
            f.name: (getattr(model.config, f.name, None), getattr(want, f.name))
            for f in dataclasses.fields(want)
            if getattr(model.config, f.name, None) != getattr(want, f.name)
        }
    )
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['widths'\]"):
        NeoNeXt(widths=(8, 16, 24, 32))
    with pytest.raises(TypeError, match="multiple values for dims"):
        NeoNeXt((1, 1, 1, 1), (8, 16, 24, 32), dims=(8, 16, 24, 32))


def test_neocell_state_names_by_hand_and_refusals():
    from neocell_ref.layer_kinds import neocell_state_names

    names = neocell_state_names(2)
    assert names == (["weight_a.0", "weight_a.1"], ["weight_b.0", "weight_b.1"]), f"names of 2 groups: {names}"
    with raises_naming(ValueError, "groups must be >= 1", "0"):  # a NeoCell layer has a group
        neocell_state_names(0)
    with raises_naming(TypeError, "groups must be an integer", "1.5"):
        neocell_state_names(1.5)
