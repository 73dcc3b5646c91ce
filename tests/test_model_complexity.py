"""Model-level complexity calculator: parameters and MACs of NeoNeXt, four conventions.

Independent sources of the expected values:

* hand formulas written here from the text of SPEC sections 2, 4, 7 and 8 (stage by
  stage, with the square-kernel closed form ``nnz = s² + ⌊(H−s)/k⌋·k² + ((H−s) mod k)²``),
  never from :mod:`neocell_ref.architecture` or :mod:`neocell_ref.expansion`;
* the official tiny model's state dict in ``tests/data`` (outputs of the authors' code):
  its trainable arrays are exactly those that have a gradient (``grad/KEY``);
* the MACs the package's NeoCell forward and a whole built ``neocell_ref.models.NeoNeXt``
  forward execute, recorded by ``count_macs``, and the built model's parameter arrays;
* the published figures of SPEC section 7, written below as literals.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
from conftest import DATA

import neocell_ref
from neocell_ref import calculator as CX
from neocell_ref.architecture import NeoNeXtConfig, describe, get_config
from neocell_ref.calculator import (
    CONVENTIONS,
    LayerCount,
    model_complexity,
    released_checkpoint_options,
)
from neocell_ref.cli import main
from neocell_ref.instrument import count_macs
from neocell_ref.models import NeoNeXt, neonext_t
from neocell_ref.neocell import neocell_forward

NAMES = ("neonext_t", "neonext_s", "neonext_b", "neonext_l", "neonext_xl")
# SPEC 7's table, written out here (blocks per stage, widths).
SIZES = {
    "neonext_t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "neonext_s": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "neonext_b": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "neonext_l": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "neonext_xl": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}
# SPEC 7, "Published figures" (the authors' README): params in millions, GFLOPs = GMACs.
PUBLISHED_PARAMS_M = {"neonext_t": 27.5, "neonext_s": 49.3, "neonext_b": 86.8, "neonext_l": 193.5}
PUBLISHED_GMACS = {
    ("neonext_t", 224): 4.4,
    ("neonext_s", 224): 8.6,
    ("neonext_b", 224): 15.2,
    ("neonext_t", 384): 13.3,
    ("neonext_s", 384): 25.7,
    ("neonext_b", 384): 45.2,
}


# --------------------------------------------------------------------------------------
# hand formulas from the SPEC text
# --------------------------------------------------------------------------------------
def hand_groups(code, d):
    """SPEC 2 kernel codes: ``(kernel, channels)`` per group; the last takes the remainder."""
    ks = [int(k) for k in code.split("+")]
    per = d // len(ks)
    return list(zip(ks, [per] * (len(ks) - 1) + [d - per * (len(ks) - 1)]))


def hand_codes(kernel_spec):
    return ("4+7", "4+7", "7", "7") if kernel_spec == "default" else (kernel_spec,) * 4


def hand_params(blocks, dims, num_classes=1000, kernel_spec="default", linear_bias=False, layer_scale=False):
    """Trainable scalars of SPEC 7's NeoNeXt, layer by layer."""
    total = 48 * dims[0] + 2 * dims[0]  # stem 1x1 conv (bias-free) + BN
    for i, (n, d) in enumerate(zip(blocks, dims)):
        if i:
            total += dims[i - 1] * d + d * (2 * 1 + 2 * 1) + 2 * d  # conv, NeoCell 2->1 (A 1x2, B 2x1), BN
        neocell = sum(c * 2 * k * k for k, c in hand_groups(hand_codes(kernel_spec)[i], d))
        block = neocell + 2 * d + 4 * d * d + 4 * d * d  # NeoCell, BN, fc_1, fc_2
        if linear_bias:
            block += 4 * d + d
        if layer_scale:
            block += d
        total += n * block
    return total + 2 * dims[3] + dims[3] * num_classes + num_classes  # head LN + Linear with bias


def hand_nnz_square(k, length, s):
    """Filled entries of a k x k kernel expanded to length x length with shift s."""
    return s * s + ((length - s) // k) * k * k + ((length - s) % k) ** 2


def hand_tiles(length, k, s):
    """Tiles of the padding view: ``k - s`` zeros in front when shifted, then up to a multiple of k."""
    front = k - s if s else 0
    return -(-(length + front) // k)


def hand_channel_shifts(channels, s, k):
    if s == 0:
        return [0] * channels
    n = (k - 1) // s + 1
    size = channels // n
    return [((n - 1) if size == 0 else min(i // size, n - 1)) * s for i in range(channels)]


def hand_macs(blocks, dims, res, num_classes=1000, kernel_spec="default", shifts=(1, 1, 1, 0)):
    """Per-image MACs in the four conventions for a square input ``res x res``."""
    h = res // 4
    base = 48 * dims[0] * h * h + 2 * dims[0] * h * h  # stem conv + BN (2 per element)
    dense = nnz = padded = 0
    for i, (n, d) in enumerate(zip(blocks, dims)):
        if i:
            ho = h // 2
            base += dims[i - 1] * d * h * h + 2 * d * ho * ho  # 1x1 conv at the input size, BN after
            dense += d * (ho * h * h + ho * h * ho)  # C·H_out·H·W + C·H_out·W·W_out
            nnz += d * (2 * ho * h + ho * 2 * ho)  # Â has H_out 1x2 blocks, B̂ W_out 2x1
            padded += d * (2 * ho * h + ho * 2 * ho)  # 2 | H: no padding
            h = ho
        per_block_nnz = per_block_padded = 0
        for k, c in hand_groups(hand_codes(kernel_spec)[i], d):
            for s in hand_channel_shifts(c, shifts[i], k):
                per_block_nnz += 2 * hand_nnz_square(k, h, s) * h  # A and B alike (H = W)
                # both axes padded to T x T tiles of k x k; A @ tile and tile @ B: k³ each
                per_block_padded += 2 * hand_tiles(h, k, s) ** 2 * k**3
        base += n * (2 * d * h * h + 8 * d * d * h * h)  # BN + fc_1 + fc_2
        dense += n * 2 * d * h**3
        nnz += n * per_block_nnz
        padded += n * per_block_padded
    base += 5 * dims[3] + dims[3] * num_classes  # head LayerNorm + Linear
    bn_and_ln = 2 * dims[0] * (res // 4) ** 2  # what "executed" leaves out
    hh = res // 4
    for i, (n, d) in enumerate(zip(blocks, dims)):
        if i:
            hh //= 2
            bn_and_ln += 2 * d * hh * hh
        bn_and_ln += n * 2 * d * hh * hh
    bn_and_ln += 5 * dims[3]
    return {
        "fvcore": base + dense,
        "fvcore_without_neocell": base,
        "fvcore_patchwise": base + nnz,
        "executed": base - bn_and_ln + padded,
    }


OPTION_SETS = [
    {},
    {"kernel_spec": "4+7", "linear_bias": True, "layer_scale_init_value": 1e-6},
    {"kernel_spec": "7", "shifts": (0, 0, 0, 0), "num_classes": 10},
    {"kernel_spec": "3+5+7", "shifts": (2, 1, 0, 2), "linear_bias": True, "num_classes": 21},
]


# --------------------------------------------------------------------------------------
# parameters
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("options", OPTION_SETS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
@pytest.mark.parametrize("name", NAMES)
def test_params_equal_hand_count(name, options):
    blocks, dims = SIZES[name]
    expected = hand_params(
        blocks,
        dims,
        options.get("num_classes", 1000),
        options.get("kernel_spec", "default"),
        options.get("linear_bias", False),
        options.get("layer_scale_init_value", 0) > 0,
    )
    got = model_complexity(name, 224, **options).params
    assert got == expected, f"{name} {options}: params {got} != hand count {expected} (diff {got - expected})"


def _official_tiny():
    meta = json.loads((DATA / "official_tiny_model.json").read_text())
    arrays = np.load(DATA / "official_tiny_model.npz", allow_pickle=False)
    cfg = meta["config"]
    config = NeoNeXtConfig(
        per_stage_layers=tuple(cfg["per_stage_layers"]),
        dims=tuple(cfg["dims"]),
        num_classes=cfg["num_classes"],
        kernel_spec=cfg["kernel_spec"],
        shifts=tuple(cfg["shifts"]),
        layer_scale_init_value=cfg["layer_scale_init_value"],
        linear_bias=cfg["linear_bias"],
    )
    # Trainable = has a gradient in the official backward (BatchNorm buffers have none).
    trainable = {k[len("grad/") :]: arrays[k].size for k in arrays.files if k.startswith("grad/")}
    return config, tuple(meta["input_shape"][2:]), trainable


def test_params_equal_official_tiny_model_state_dict():
    config, resolution, trainable = _official_tiny()
    result = model_complexity(config, resolution)
    assert result.name == "custom", f"a custom config should be called 'custom', got {result.name!r}"
    total = sum(trainable.values())
    assert result.params == total, f"params {result.params} != official trainable scalars {total}"
    for row in result.layers:
        official = sum(v for k, v in trainable.items() if k.startswith(row.name + "."))
        assert row.params == official, f"layer {row.name}: params {row.params} != official {official}"


# --------------------------------------------------------------------------------------
# MACs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("res", [224, 384])
@pytest.mark.parametrize(
    "options",
    OPTION_SETS[:2] + [{"kernel_spec": "3+5+7", "shifts": (2, 1, 0, 2)}],
    ids=["defaults", "released", "3+5+7"],
)
@pytest.mark.parametrize("name", NAMES)
def test_macs_equal_hand_count(name, options, res):
    assert_model_macs_match_hand(name, options, res)


def assert_model_macs_match_hand(name, options, res):
    blocks, dims = SIZES[name]
    expected = hand_macs(
        blocks,
        dims,
        res,
        options.get("num_classes", 1000),
        options.get("kernel_spec", "default"),
        options.get("shifts", (1, 1, 1, 0)),
    )
    got = model_complexity(name, res, **options).macs
    for conv in CONVENTIONS:
        assert got[conv] == expected[conv], (
            f"{name} {options} at {res}: {conv} {got[conv]} != hand {expected[conv]} "
            f"(diff {got[conv] - expected[conv]})"
        )


def test_a_wrong_batchnorm_rule_is_caught(monkeypatch):
    # fvcore's training-mode rule (5 per element) instead of SPEC 8's inference rule (2).
    monkeypatch.setattr(CX, "_FVCORE_BATCHNORM_PER_ELEMENT", 5)
    with pytest.raises(AssertionError, match="fvcore"):
        assert_model_macs_match_hand("neonext_t", {}, 224)


def test_a_forgotten_shift_corner_is_caught_at_model_level(monkeypatch):
    real_nnz = CX.nnz
    monkeypatch.setattr(CX, "nnz", lambda p, q, r, c, s: real_nnz(p, q, r, c, s) - min(s, r) * min(s, c))
    with pytest.raises(AssertionError, match="fvcore_patchwise"):
        assert_model_macs_match_hand("neonext_t", {}, 224)


def test_a_double_counted_dense_neocell_is_caught(monkeypatch):
    real = CX.neocell_counts
    monkeypatch.setattr(
        CX,
        "neocell_counts",
        lambda specs, h, w, batch=1: {
            **real(specs, h, w, batch),
            "blockdiag": real(specs, h, w, batch)["blockdiag"] * 2,
        },
    )
    with pytest.raises(AssertionError, match="fvcore "):
        assert_model_macs_match_hand("neonext_t", {}, 224)


def test_executed_neocell_macs_equal_instrumented_forward():
    """Every NeoCell row's executed MACs are what ``neocell_forward`` multiplies on that input."""
    config, resolution, _ = _official_tiny()
    result = model_complexity(config, resolution)
    rows = {r.name: r for r in result.layers}
    rng = np.random.default_rng(0)
    checked = 0
    for layer in describe(config, resolution).layers():
        if layer.kind != "neocell":
            continue
        specs = layer.options["specs"]
        wa = [rng.standard_normal(g.shape_a) for g in specs]
        wb = [rng.standard_normal(g.shape_b) for g in specs]
        x = rng.standard_normal((1, *layer.in_shape))
        with count_macs() as counter:
            neocell_forward(x, wa, wb, specs)
        got = rows[layer.name].macs["executed"]
        assert got == counter.macs, f"{layer.name}: executed {got} != instrumented {counter.macs}"
        checked += 1
    assert checked == 8, f"expected 5 block + 3 down-sampling NeoCells, checked {checked}"


# A small custom network whose sizes leave partial tiles and use shifts in three stages.
CUSTOM = NeoNeXtConfig(
    per_stage_layers=(1, 2, 1, 1),
    dims=(6, 12, 18, 24),
    num_classes=7,
    kernel_spec="3+5",
    shifts=(2, 1, 1, 0),
    layer_scale_init_value=0.5,
    linear_bias=True,
)


@pytest.mark.parametrize("which", ["official_tiny", "custom_3+5"])
def test_executed_macs_and_params_equal_the_running_model(which):
    """A built NeoNeXt: its parameter arrays and the MACs its forward executes."""
    if which == "official_tiny":
        config, resolution, _ = _official_tiny()
    else:
        config, resolution = CUSTOM, (96, 96)
    model = NeoNeXt.from_config(config, dtype=np.float32, resolution=resolution, rng=np.random.default_rng(1))
    result = model_complexity(model, resolution)
    scalars = sum(v.size for v in model.params.values())
    assert result.params == scalars, f"{which}: params {result.params} != model's parameter scalars {scalars}"
    batch = 2
    x = np.random.default_rng(2).standard_normal((batch, 3, *resolution)).astype(np.float32)
    with count_macs() as counter:
        model.forward(x, training=False, cache=False)
    assert counter.macs == batch * result.macs["executed"], (
        f"{which}: forward executed {counter.macs} MACs, calculator says {batch} x "
        f"{result.macs['executed']} = {batch * result.macs['executed']}"
    )
    tags = counter.by_tag()
    neocell = sum(r.macs["executed"] for r in result.layers if r.kind == "neocell")
    dense = sum(r.macs["executed"] for r in result.layers if r.kind in ("conv1x1", "linear"))
    assert tags.get("patchwise", 0) == batch * neocell, f"{which}: NeoCell MACs {tags} vs {batch * neocell}"
    assert tags.get("conv1x1", 0) + tags.get("linear", 0) == batch * dense, (
        f"{which}: 1x1 conv + linear MACs {tags} vs {batch * dense}"
    )


def test_params_equal_the_built_neonext_t_with_released_options():
    options = released_checkpoint_options(224)
    model = neonext_t(dtype=np.float32, rng=np.random.default_rng(0), **options)
    scalars = sum(v.size for v in model.params.values())
    got = model_complexity("neonext_t", 224, **options).params
    assert got == scalars, f"neonext_t released: params {got} != model's parameter scalars {scalars}"


def test_elementwise_ops_hand_count():
    """The documented per-element counts, added up by hand for NeoNeXt-T (released options)."""
    blocks, dims = SIZES["neonext_t"]
    h = 56
    ops = 2 * dims[0] * h * h  # stem BN
    for i, (n, d) in enumerate(zip(blocks, dims)):
        if i:
            h //= 2
            ops += 2 * d * h * h  # down-sampling BN
        # BN 2, fc_1 bias 1 on 4d, GELU 2 on 4d, fc_2 bias 1, layer scale 1, residual 1
        ops += n * (2 * d + 4 * d + 2 * 4 * d + d + d + d) * h * h
    ops += dims[3] * h * h + 7 * dims[3] + 1000  # pooling, LayerNorm, head bias
    got = model_complexity("neonext_t", 224, **released_checkpoint_options(224)).elementwise_ops
    assert got == ops, f"elementwise ops {got} != hand count {ops} (diff {got - ops})"


def test_per_layer_rows_sum_to_totals_and_convert():
    result = model_complexity("neonext_t", 224, **released_checkpoint_options(224))
    for conv in CONVENTIONS:
        total = sum(r.macs[conv] for r in result.layers)
        assert total == result.macs[conv], f"{conv}: rows sum to {total}, total says {result.macs[conv]}"
    assert sum(r.params for r in result.layers) == result.params, "row params do not sum to the total"
    assert sum(r.elementwise_ops for r in result.layers) == result.elementwise_ops, "elementwise ops"
    listed = result.to_list()
    assert len(listed) == len(result.layers) and all(isinstance(d, dict) for d in listed), "to_list"
    assert set(listed[0]) == set(LayerCount.__dataclass_fields__), f"row keys {sorted(listed[0])}"
    assert json.loads(result.to_json()) == result.to_dict(), "JSON does not round-trip"
    kinds = {r.kind for r in result.layers}
    assert kinds == {
        "patchify",
        "conv1x1",
        "batchnorm",
        "neocell",
        "linear",
        "gelu",
        "layer_scale",
        "drop_path",
        "residual",
        "avgpool",
        "layernorm",
    }, f"kinds {kinds}"
    fc1 = next(r for r in result.layers if r.name == "stage_1.0.ops.content.fc_1")
    assert fc1.in_shape == (96, 56, 56) and fc1.out_shape == (384, 56, 56), "fc_1 shapes"
    assert fc1.macs["fvcore"] == 96 * 384 * 56 * 56, "fc_1: one multiply per output and input channel"
    assert fc1.elementwise_ops == 384 * 56 * 56, "fc_1 bias: one addition per output element"
    stem = next(r for r in result.layers if r.name == "stem.conv")
    # The official stem is patchify + 1x1 conv; a 4x4 stride-4 conv does the same multiplies.
    assert stem.macs["fvcore"] == 96 * 56 * 56 * (3 * 4 * 4), "stem = 4x4 stride-4 conv MACs"


def test_model_objects_and_configs_are_accepted():
    by_name = model_complexity("neonext_t", 224, linear_bias=True)
    config = get_config("neonext_t", linear_bias=True)
    assert model_complexity(config, 224).to_dict() == by_name.to_dict(), "config vs name"
    assert model_complexity(describe(config, 224)).to_dict() == by_name.to_dict(), "Architecture"

    class Carrier:  # what a built model exposes
        pass

    carrier = Carrier()
    carrier.config = config
    assert model_complexity(carrier, 224).to_dict() == by_name.to_dict(), "object with .config"
    plain = model_complexity(get_config("neonext_t"), 224, linear_bias=True)
    assert plain.to_dict() == by_name.to_dict(), "options applied to a config"


@pytest.mark.parametrize(
    "args, kwargs, error, needle",
    [
        (("neonext_q",), {}, ValueError, "unknown model name 'neonext_q'"),
        ((3.5,), {}, TypeError, "model must be a model name"),
        (("neonext_t", 225), {}, ValueError, "multiples of 4"),
        (("neonext_t",), {"colour": 1}, TypeError, "unknown option"),
        (("neonext_t",), {"dims": (1, 2, 3, 4)}, TypeError, "unknown option"),
        ((get_config("neonext_t"),), {"colour": 1}, TypeError, "unknown model option"),
        (("neonext_t",), {"shifts": (1, 1, 1)}, ValueError, "shifts must have 4 entries"),
        (("neonext_t", 32), {}, ValueError, "stage 2 at 4x4: group 1: largest used shift_a 6"),
    ],
)
def test_bad_input_is_refused(args, kwargs, error, needle):
    with pytest.raises(error, match=needle):
        model_complexity(*args, **kwargs)


# --------------------------------------------------------------------------------------
# published figures (SPEC 7)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("res", [224, 384])
@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS_M))
def test_published_parameter_counts_are_reproduced(name, res):
    params = model_complexity(name, res, **released_checkpoint_options(res)).params
    assert round(params / 1e6, 1) == PUBLISHED_PARAMS_M[name], (
        f"{name}: {params / 1e6:.3f} M does not round to the published {PUBLISHED_PARAMS_M[name]} M"
    )


def _reproducing(res):
    """Conventions whose totals round (to 0.1 GMACs) to every published figure at ``res``."""
    found = {}
    for conv in CONVENTIONS:
        got = {
            name: round(model_complexity(name, res, **released_checkpoint_options(res)).macs[conv] / 1e9, 1)
            for (name, r) in PUBLISHED_GMACS
            if r == res
        }
        found[conv] = all(got[name] == PUBLISHED_GMACS[(name, res)] for name in got)
    return {conv for conv, ok in found.items() if ok}


def test_224px_gflops_are_reproduced_by_the_patchwise_counts_only():
    """4.4 / 8.6 / 15.2 come out of the patch-wise counts, not out of the authors' fvcore hook."""
    reproducing = _reproducing(224)
    assert reproducing == {"fvcore_patchwise", "executed"}, (
        f"conventions reproducing 4.4 / 8.6 / 15.2 are now {sorted(reproducing)}, docs/complexity.md "
        "says fvcore_patchwise and executed (dense fvcore gives 4.5 / 8.7 / 15.4, without NeoCell "
        "4.4 / 8.5 / 15.1)"
    )


@pytest.mark.parametrize("name", ["neonext_t", "neonext_s", "neonext_b"])
def test_384px_gflops_are_reproduced_by_no_convention(name):
    """The 384 px figures 13.3 / 25.7 / 45.2 match no convention, with either option set."""
    published = PUBLISHED_GMACS[(name, 384)]
    for options in (released_checkpoint_options(384), {}):
        macs = model_complexity(name, 384, **options).macs
        got = {conv: round(macs[conv] / 1e9, 1) for conv in CONVENTIONS}
        assert published not in got.values(), (
            f"{name} at 384 px with {options}: a convention now gives the published {published}: {got}; "
            "update the finding in docs/complexity.md"
        )


# --------------------------------------------------------------------------------------
# printing and command line
# --------------------------------------------------------------------------------------
def test_summary_and_table_are_readable():
    result = neocell_ref.model_complexity("neonext_t", 224, **released_checkpoint_options(224))
    text = str(result)
    for needle in ("NeoNeXt-T at 224x224, per image", "27,532,552 (27.53 M)", "GMACs", *CONVENTIONS):
        assert needle in text, f"{needle!r} missing from the summary:\n{text}"
    table = result.table()
    for row in result.layers:
        assert row.name in table, f"layer {row.name} missing from the per-layer table"
    assert table.splitlines()[-1].startswith("total"), "the table ends with a total row"


def run_cli(argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        status = main(argv)
    return status, buf.getvalue()


def test_cli_model_complexity():
    status, text = run_cli(["model-complexity", "neonext_t", "--resolution", "224"])
    assert status == 0 and text.strip() == str(model_complexity("neonext_t", 224)), f"summary:\n{text}"
    status, text = run_cli(["model-complexity", "neonext_s", "--resolution", "384", "--released", "--json"])
    expected = model_complexity("neonext_s", 384, **released_checkpoint_options(384)).to_dict(per_layer=False)
    assert status == 0 and json.loads(text) == expected, f"JSON differs: {text[:300]}"
    status, text = run_cli(
        [
            "model-complexity",
            "neonext_t",
            "--per-layer",
            "--kernel-spec",
            "7",
            "--shifts",
            "0",
            "0",
            "0",
            "0",
            "--linear-bias",
            "--num-classes",
            "10",
        ]
    )
    expected = model_complexity(
        "neonext_t", 224, kernel_spec="7", shifts=(0, 0, 0, 0), linear_bias=True, num_classes=10
    )
    assert status == 0 and expected.table() in text, "per-layer table missing"
    err = io.StringIO()
    with redirect_stderr(err):
        status, text = run_cli(["model-complexity", "neonext_t", "--resolution", "226"])
    message = err.getvalue()
    assert status == 2 and text == "" and message.startswith("neocell-ref: error: "), (status, text, message)
    assert "multiples of 4" in message and message.count("\n") == 1, f"bad resolution: {message!r}"
