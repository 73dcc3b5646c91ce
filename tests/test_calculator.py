"""The calculator's closed forms, against the enumeration they replaced, at any size.

:func:`neocell_ref.expansion.nnz`, :func:`neocell_ref.calculator.neocell_counts`,
:func:`neocell_ref.calculator.depthwise_in_bounds_taps` and
:func:`neocell_ref.calculator.model_complexity` compute in closed form (derivations in
``docs/complexity.md``). Expected values here come from independent formulations:

* ``naive_nnz``: the entries SPEC 3 fills, decided position by position;
* ``naive_counts``: the old per-channel enumeration, with every channel's shift taken
  from :meth:`neocell_ref.spec.GroupSpec.channel_shifts` (the per-channel array rule of
  SPEC 4) and the tile count written here;
* ``naive_depthwise_taps``: the taps of a same-padded correlation, offset by offset;
* ``naive_model_complexity``: every layer of the full description counted one by one,
  the way the calculator did before it counted a stage's blocks once;
* hand formulas at sizes far beyond any enumeration (``2·k·C·H·W``, the square
  ``nnz = s² + ⌊(H−s)/k⌋·k² + ((H−s) mod k)²`` per sub-group).

The grid covers every shift of kernels 1..7, sizes not divisible by the kernel, 1x1
inputs, fewer channels than sub-groups, and up- and down-sampling kernels.
tests/meta/test_calculator_mutants.py shows that a wrong closed form is caught. The
slow references and comparison helpers live in ``support/layer_counts.py`` and
``support/model_counts.py``; the ``complexity`` and ``model-complexity`` commands are
tested in tests/test_cli.py.
"""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import scipy.signal
from hypothesis import given
from hypothesis import strategies as st
from support.layer_counts import (
    CX,
    FAST_SECONDS,
    NNZ_GRID,
    assert_closed_form_agrees,
    assert_counts_match_enumeration,
    assert_depthwise_matches_enumeration,
    assert_layer_counts_match_execution,
    assert_nnz_matches_enumeration,
    naive_counts,
    naive_nnz,
    naive_tiles,
    spec_filled_pattern,
)
from support.model_counts import (
    SIZES,
    assert_model_macs_match_hand,
    hand_params,
)
from support.paths import DATA

import neocell_ref
from neocell_ref.architecture import NeoNeXtConfig, describe, get_config
from neocell_ref.calculator import (
    CONVENTIONS,
    MAX_COUNT,
    MAX_LAYER_ROWS,
    LayerComplexity,
    LayerCount,
    closed_form_depthwise_macs,
    closed_form_neocell_macs,
    complexity,
    depthwise_in_bounds_taps,
    model_complexity,
    neocell_counts,
    released_checkpoint_options,
    subgroup_sizes,
)
from neocell_ref.expansion import block_layout, expand_kernel, nnz
from neocell_ref.instrument import count_macs
from neocell_ref.models import NeoNeXt, neonext_t
from neocell_ref.neocell import neocell_forward
from neocell_ref.spec import GroupSpec, check_input_size, parse_specs
from neocell_ref.verify.testing import layer_specs

# --------------------------------------------------------------------------------------
# the slow references (independent formulations, test code only)
# --------------------------------------------------------------------------------------


def naive_model_complexity(config, resolution):
    """Every layer of the full description counted one by one: ``(params, macs, elementwise, rows)``."""
    arch = describe(config, resolution)
    rows = []
    for unit in arch.units:
        for layer in unit.layers:
            rows.append(CX._count_layer(layer))
        if unit.kind == "residual":
            shape = unit.layers[-1].out_shape
            rows.append(
                CX.LayerCount(
                    f"{unit.name}.residual",
                    "residual",
                    tuple(shape),
                    tuple(shape),
                    0,
                    dict.fromkeys(CONVENTIONS, 0),
                    math.prod(shape),
                )
            )
    macs = {conv: sum(r.macs[conv] for r in rows) for conv in CONVENTIONS}
    return arch.num_params, macs, sum(r.elementwise_ops for r in rows), tuple(rows)


def hand_square_counts(k, c, length, shift, batch=1):
    """Square k x k kernel, ``length x length`` input, one group: SPEC 8 from hand formulas.

    Sub-groups (SPEC 4, written out): ``n = (k−1)//s + 1``; the first ``n − 1`` get
    ``c // n`` channels and the last the rest (all of them when ``c < n``). A loop over
    the ``n <= k`` sub-groups, so usable at any ``c`` and ``length`` with a small ``k``.
    """
    n = 1 if shift == 0 else (k - 1) // shift + 1
    size = c // n
    mult = [0] * (n - 1) + [c] if size == 0 else [size] * (n - 1) + [c - (n - 1) * size]
    useful = padded = 0
    for j, m in enumerate(mult):
        s = j * shift
        square_nnz = s * s + ((length - s) // k) * k * k + ((length - s) % k) ** 2
        useful += m * 2 * square_nnz * length  # A and B alike: nnz·W + H·nnz
        padded += m * naive_tiles(length, k, s) ** 2 * 2 * k**3
    return batch * useful, batch * padded


# --------------------------------------------------------------------------------------
# closed forms == enumeration on the grid
# --------------------------------------------------------------------------------------
def test_nnz_closed_form_equals_enumeration_on_the_grid():
    assert_nnz_matches_enumeration(nnz)


def test_nnz_closed_form_equals_the_listed_layout():
    """The count of block_layout's entries (the layout expand_kernel scatters) is nnz."""
    for p, q, rows, cols, s in NNZ_GRID:
        listed = block_layout(p, q, rows, cols, s)
        assert len(listed[0]) == nnz(p, q, rows, cols, s), (
            f"block_layout lists {len(listed[0])} entries, "
            f"nnz says {nnz(p, q, rows, cols, s)} for ({p}, {q}, {rows}, {cols}, {s})"
        )
        positions = set(zip(listed[0].tolist(), listed[1].tolist()))
        assert len(positions) == len(listed[0]), f"block_layout repeats a position for ({p}, {q}, {rows}, {cols}, {s})"


def test_layer_counts_equal_enumeration_on_the_grid():
    checked = assert_counts_match_enumeration()
    assert checked > 1000, f"the grid should hold over a thousand valid layers, checked {checked}"


@given(data=st.data())
def test_layer_counts_equal_enumeration_random(data):
    k_a = data.draw(st.integers(1, 9), label="kernel_a")
    k_b = data.draw(st.integers(1, 9), label="kernel_b")
    s_a = data.draw(st.integers(0, k_a - 1), label="shift_a")
    s_b = data.draw(st.integers(0, k_b - 1), label="shift_b")
    c = data.draw(st.integers(1, 40), label="channels")
    height = data.draw(st.integers(1, 30), label="H")
    width = data.draw(st.integers(1, 30), label="W")
    specs = [GroupSpec(channels=c, h_in=k_a, h_out=k_a, w_in=k_b, w_out=k_b, shift_a=s_a, shift_b=s_b)]
    try:
        check_input_size(specs, height, width)
    except ValueError:
        return  # the shift rule of SPEC 4 refuses this input; nothing to count
    got = neocell_counts(specs, height, width)
    assert (got["nnz"], got["padded"]) == naive_counts(specs, height, width), (
        f"closed form {(got['nnz'], got['padded'])} != enumeration {naive_counts(specs, height, width)} "
        f"for {specs[0].to_dict()} at {height}x{width}"
    )


def test_subgroup_sizes_equal_the_per_channel_rule():
    for channels in range(1, 30):
        for n in range(1, 9):
            size, last = subgroup_sizes(channels, n)
            # kernel n with shift 1 has n sub-groups (one, unshifted, for n = 1)
            group = GroupSpec(channels=channels, h_in=n, h_out=n, w_in=1, w_out=1, shift_a=int(n > 1))
            shifts = group.channel_shifts()[0]
            counts = np.bincount(shifts, minlength=n).tolist()
            assert counts == [size] * (n - 1) + [last], (
                f"{channels} channels in {n} sub-groups: closed form {[size] * (n - 1) + [last]}, "
                f"per-channel rule {counts}"
            )


def test_depthwise_taps_closed_form_equals_enumeration():
    assert_depthwise_matches_enumeration(depthwise_in_bounds_taps)


# --------------------------------------------------------------------------------------
# exact at sizes no enumeration reaches, in milliseconds
# --------------------------------------------------------------------------------------
def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < FAST_SECONDS, f"{fn.__name__}{args}{kwargs} took {elapsed:.3f} s"
    return result


def test_channels_scale_exactly():
    """``c = 96·10⁹`` is exactly 10⁹ times ``c = 96`` in every integer field that depends on C."""
    small = complexity(k=7, c=96).to_dict()
    big = timed(complexity, k=7, c=96 * 10**9).to_dict()
    independent_of_c = {"height", "width", "height_out", "width_out", "batch"}
    for key, value in small.items():
        if key in independent_of_c:
            assert big[key] == value, f"{key}: {big[key]} != {value}"
        elif isinstance(value, int):
            assert big[key] == value * 10**9, f"{key}: {big[key]} is not 10**9 x {value}"
        elif isinstance(value, float):
            assert big[key] == value, f"{key}: ratio {big[key]} != {value}"
    assert big["specs"][0]["channels"] == 96 * 10**9, f"specs[0] channels {big['specs'][0]['channels']}, not 96e9"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(k=10**9),
        dict(dw_kernel=10**9),
        dict(h=10**15, w=10**15),
        dict(c=10**12),
        dict(k=10**9, shift=1, c=10**12, h=10**15, w=10**15, batch=10**6),
        dict(code="4+7", c=10**12, shift=1, h=10**15 + 3, w=10**15 + 5),
    ],
    ids=["k=1e9", "dw=1e9", "hw=1e15", "c=1e12", "all-huge-shift1", "4+7-huge"],
)
def test_huge_layers_are_fast(kwargs):
    timed(complexity, **kwargs)


@pytest.mark.parametrize("k, shift", [(7, 0), (7, 1), (7, 3), (4, 1), (5, 2), (3, 2), (1000, 1), (999, 10)])
@pytest.mark.parametrize("c, length", [(96, 7 * 10**13), (10**12 + 7, 10**15 + 3), (2, 10**9 + 1)])
def test_huge_layers_equal_hand_formulas(k, shift, c, length):
    got = timed(neocell_counts, [GroupSpec(c, k, k, k, k, shift, shift)], length, length, 3)
    expected = hand_square_counts(k, c, length, shift, 3)
    assert (got["nnz"], got["padded"]) == expected, (
        f"k={k}, shift={shift}, C={c}, H=W={length}: {(got['nnz'], got['padded'])} != hand {expected}"
    )
    if shift == 0 and length % k == 0:
        assert got["nnz"] == 2 * k * c * length * length * 3, "2kCHWN when k divides H and W"


def test_huge_depthwise_equals_hand_formula():
    # k <= L: per axis k·L − 2·(1 + ... + (k−1)/2) for odd k; k >= L: every pair, L².
    length, k = 10**15, 2 * 10**9 + 1
    half = (k - 1) // 2
    taps = timed(depthwise_in_bounds_taps, length, k)
    assert taps == k * length - half * (half + 1), (
        f"L=1e15, k=2e9+1: {taps}, hand formula {k * length - half * (half + 1)}"
    )
    taps = timed(depthwise_in_bounds_taps, 56, 10**9)
    assert taps == 56 * 56, f"L=56, k=1e9 (every pair in bounds): {taps}, not 56² = 3136"


def test_huge_models_are_fast():
    result = timed(model_complexity, "neonext_t", 10**8)
    assert result.macs["fvcore"] > result.macs["fvcore_patchwise"] > 0, f"MACs at 1e8 px: {result.macs}"
    deep = timed(model_complexity, NeoNeXtConfig(per_stage_layers=(10**6, 1, 1, 1)))
    one = model_complexity(NeoNeXtConfig(per_stage_layers=(1, 1, 1, 1)))
    two = model_complexity(NeoNeXtConfig(per_stage_layers=(2, 1, 1, 1)))
    # A stage-1 block costs what the second block added; 10**6 blocks add 10**6 - 1 of them.
    assert deep.params == one.params + (10**6 - 1) * (two.params - one.params), "params of 10**6 blocks"
    for conv in CONVENTIONS:
        assert deep.macs[conv] == one.macs[conv] + (10**6 - 1) * (two.macs[conv] - one.macs[conv]), conv


# --------------------------------------------------------------------------------------
# model: counting a stage's blocks once equals counting every layer
# --------------------------------------------------------------------------------------
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


@pytest.mark.parametrize(
    "config, resolution",
    [
        (CUSTOM, (96, 100)),
        (NeoNeXtConfig(per_stage_layers=(3, 3, 9, 3)), 224),
        (
            NeoNeXtConfig(
                per_stage_layers=(2, 5, 1, 4), dims=(8, 16, 24, 32), drop_path=0.3, **released_checkpoint_options(384)
            ),
            384,
        ),
    ],
    ids=["custom-3+5", "neonext_t", "released-384"],
)
def test_model_counts_equal_layer_by_layer_enumeration(config, resolution):
    params, macs, elementwise, rows = naive_model_complexity(config, resolution)
    result = model_complexity(config, resolution)
    assert result.params == params, f"params {result.params} != layer-by-layer {params}"
    assert result.macs == macs, f"macs {result.macs} != layer-by-layer {macs}"
    assert result.elementwise_ops == elementwise, f"elementwise {result.elementwise_ops} != {elementwise}"
    assert result.num_layer_rows == len(rows), f"{result.num_layer_rows} rows announced, {len(rows)} layers"
    assert result.layers == rows, next(
        (f"row {i}: {a} != {b}" for i, (a, b) in enumerate(zip(result.layers, rows)) if a != b),
        "row count differs",
    )


def test_per_layer_table_refuses_beyond_the_limit():
    deep = model_complexity(NeoNeXtConfig(per_stage_layers=(MAX_LAYER_ROWS, 1, 1, 1)))
    assert deep.num_layer_rows > MAX_LAYER_ROWS, f"{deep.num_layer_rows} rows, limit {MAX_LAYER_ROWS}"
    for what in (lambda: deep.layers, deep.to_list, deep.table, deep.to_dict, deep.to_json):
        with pytest.raises(ValueError, match="MAX_LAYER_ROWS"):
            what()
    totals = deep.to_dict(per_layer=False)
    assert totals["params"] == deep.params and "layers" not in totals, "totals need no per-layer rows"
    assert "GMACs" in str(deep), "the summary needs no per-layer rows"


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, error, needle",
    [
        ((0, 0, 5, 5, 0), ValueError, "p \\(kernel rows\\) must be >= 1"),
        ((3, 0, 5, 5, 0), ValueError, "q \\(kernel columns\\) must be >= 1"),
        ((3, 3, 0, 5, 0), ValueError, "rows must be >= 1"),
        ((3, 3, 5, -1, 0), ValueError, "cols must be >= 1"),
        ((3, 3, 5, 5, -1), ValueError, "shift must be >= 0"),
        ((3, 3, 5, 5, 3), ValueError, "shift must be smaller than the kernel"),
        ((4, 2, 5, 5, 2), ValueError, "0 <= shift <= 1"),
        ((True, 3, 5, 5, 0), TypeError, "p \\(kernel rows\\) must be an integer"),
        ((3, 3, 5, 5, False), TypeError, "shift must be an integer"),
        ((3, 3, 5.0, 5, 0), TypeError, "rows must be an integer"),
        ((3, 3, "5", 5, 0), TypeError, "rows must be an integer"),
    ],
)
def test_nnz_and_block_layout_refuse_bad_arguments(args, error, needle):
    for fn in (nnz, block_layout):
        with pytest.raises(error, match=needle):
            fn(*args)
    # bools are refused even after the same sizes were cached as ints
    block_layout(3, 3, 5, 5, 0)
    with pytest.raises(TypeError, match="must be an integer"):
        block_layout(3, 3, 5, 5, False)


def test_expand_kernel_of_an_empty_kernel_is_refused_not_a_hang():
    with pytest.raises(ValueError):
        expand_kernel(np.ones((0, 0)), 5, 5, 0)


@pytest.mark.parametrize(
    "args, error", [((0, 3), ValueError), ((5, 0), ValueError), ((True, 3), TypeError), ((5, 2.0), TypeError)]
)
def test_depthwise_taps_refuse_bad_arguments(args, error):
    with pytest.raises(error, match="must be"):
        depthwise_in_bounds_taps(*args)


def test_counts_beyond_the_float_range_are_refused():
    with pytest.raises(ValueError, match="beyond the float range"):
        complexity(h=10**200)
    with pytest.raises(ValueError, match="im2col_elements in bytes"):
        complexity(k=1, c=1, h=10**102, dw_kernel=10**52, dtype="float64")
    with pytest.raises(ValueError, match="beyond the float range"):
        model_complexity("neonext_t", 4 * 10**160)
    side = 7 * 10**100  # 7 divides H and W: 2kCHW, exact far beyond float precision
    assert complexity(h=side).neocell_macs == 2 * 7 * 96 * side * side, "2kCHW at H = W = 7e100"
    assert MAX_COUNT == int(np.finfo(np.float64).max), f"MAX_COUNT {MAX_COUNT:.6e} is not float64's largest"


# --------------------------------------------------------------------------------------
# fuzz: any argument gives a correct result or a named ValueError/TypeError, quickly
# --------------------------------------------------------------------------------------
ODD_VALUES = st.one_of(
    st.integers(-2, 12),
    st.integers(10**12, 10**13),
    st.sampled_from([10**15, 7 * 10**100, 10**400, -(10**400)]),
    st.sampled_from(
        [
            0.0,
            2.5,
            float("nan"),
            float("inf"),
            True,
            False,
            None,
            "7",
            (3, 4),
            (2, 0),
            [],
            np.int64(5),
            np.float64(3.0),
            np.bool_(True),
        ]
    ),
)


def call_within_bound(fn, *args, **kwargs):
    """``fn(...)``, or None when it refused with ValueError/TypeError; either within the time bound."""
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
    except (ValueError, TypeError):
        result = None
    elapsed = time.perf_counter() - start
    assert elapsed < FAST_SECONDS, f"{fn.__name__}(*{args!r}, **{kwargs!r}) took {elapsed:.3f} s"
    return result


@given(args=st.tuples(*[ODD_VALUES] * 5))
def test_fuzz_nnz(args):
    got = call_within_bound(nnz, *args)
    if got is None:
        return
    p, q, rows, cols, s = (int(a) for a in args)
    assert 0 <= got <= rows * cols, f"nnz{args} = {got} outside [0, rows·cols]"
    if max(p, q, rows, cols) <= 20:
        assert got == naive_nnz(p, q, rows, cols, s), f"nnz{args} = {got} != {naive_nnz(p, q, rows, cols, s)}"


@given(data=st.data())
def test_fuzz_complexity(data):
    names = ("k", "c", "h", "w", "batch", "shift", "dw_kernel")
    kwargs = {n: data.draw(ODD_VALUES, label=n) for n in names if data.draw(st.booleans(), label=f"give {n}")}
    if data.draw(st.booleans(), label="code instead of k"):
        kwargs.pop("k", None)
        kwargs["code"] = data.draw(
            st.sampled_from(["4+7", "7", "3+5+7", "0", "4+", "10**9", "1000000000"]), label="code"
        )
    result = call_within_bound(complexity, **kwargs)
    if result is not None:
        values = result.to_dict()
        ints = [v for v in values.values() if isinstance(v, int)]
        assert all(0 < v <= MAX_COUNT for v in ints), f"complexity(**{kwargs!r}) gave {values}"
        assert result.neocell_macs <= result.patchwise_padded_macs, f"useful > padded for {kwargs!r}"
        str(result)  # printable without overflow


@given(data=st.data())
def test_fuzz_model_complexity(data):
    name = data.draw(st.sampled_from(["neonext_t", "neonext_xl", "neonext_q"]), label="model")
    resolution = data.draw(
        st.one_of(ODD_VALUES, st.sampled_from([224, 384, 4 * 10**6, (224, 96), (8, 4)])), label="resolution"
    )
    options = {}
    if data.draw(st.booleans(), label="num_classes"):
        options["num_classes"] = data.draw(ODD_VALUES, label="num_classes value")
    if data.draw(st.booleans(), label="shifts"):
        options["shifts"] = data.draw(
            st.sampled_from([(0, 0, 0, 0), (1, 1, 1, 1), (2, 2, 2, 2), (1, -1, 0, 0)]), label="shifts value"
        )
    result = call_within_bound(model_complexity, name, resolution, **options)
    if result is not None:
        assert result.params > 0 and all(0 <= v <= MAX_COUNT for v in result.macs.values()), result.macs
        str(result)


# ======================================================================================
# Layer-level complexity calculator: analytic counts proven against what runs.
#
# Independent sources of the expected values, per test:
#
# * the MACs that the package's own forward passes execute, recorded by
#   :func:`neocell_ref.instrument.count_macs` (block-diagonal and patch-wise);
# * a filled-entry pattern of the expanded matrices written here from the text of
#   SPEC section 3 by a *different* rule (position -> "which block am I in?") than
#   :func:`neocell_ref.expansion.block_layout` (block -> positions), and
#   ``np.count_nonzero`` of :func:`neocell_ref.expansion.expand` applied to all-ones kernels;
# * hand closed forms (``2·k·C·H·W``, ``s² + ⌊(H−s)/k⌋·k² + ((H−s) mod k)²``);
# * a direct depthwise convolution that counts its taps, itself checked against
#   ``scipy.signal.correlate2d``.
#
# tests/meta/test_calculator_mutants.py breaks the calculator on purpose (a ``k²``
# closed form, a forgotten shift corner, an off-by-one tile count) and shows that
# these comparisons fail.
# ======================================================================================


# --------------------------------------------------------------------------------------
# hand-checked values of the example
# --------------------------------------------------------------------------------------
def test_default_example_hand_values():
    r = neocell_ref.complexity(k=7, c=96)
    c, h, w = 96, 56, 56
    expected = {
        "height_out": 56,
        "width_out": 56,
        "batch": 1,
        "channels": 96,
        "neocell_params": c * (7 * 7 + 7 * 7),  # 9,408
        "neocell_macs": 2 * 7 * c * h * w,  # 4,214,784
        "patchwise_padded_macs": 2 * 7 * c * h * w,  # 56 = 8·7: no padding
        "blockdiag_macs": c * (h * h * w + h * w * w),  # 33,718,272
        "neocell_extra_memory": c * h * w,  # z = Âx
        "blockdiag_extra_memory": c * (h * h + w * w),
        "depthwise_params": 49 * c,  # 4,704
        "depthwise_params_with_bias": 49 * c + c,  # 4,800
        "depthwise_macs": 49 * c * h * w,  # 14,751,744
        "depthwise_macs_in_bounds": c * (7 * 56 - 2 * (1 + 2 + 3)) ** 2,  # 3 taps miss on each side
        "im2col_elements": c * 49 * h * w,
    }
    for key, value in expected.items():
        assert getattr(r, key) == value, f"{key}: got {getattr(r, key)}, hand value {value}"
    assert r.neocell_macs_per_output == 14.0, f"2k = 14 MACs per output, got {r.neocell_macs_per_output}"
    assert r.depthwise_macs_over_neocell_macs == 3.5, f"k²/2k = 3.5, got {r.depthwise_macs_over_neocell_macs}"
    assert r.neocell_params_over_depthwise_params == 2.0, f"2k²/k² = 2, got {r.neocell_params_over_depthwise_params}"


def test_to_dict_has_every_attribute_and_is_json():
    r = complexity(code="4+7", c=24, shift=1, h=23, w=30, batch=2)
    d = r.to_dict()
    attrs = {f for f in LayerComplexity.__dataclass_fields__}
    assert set(d) == attrs, f"to_dict keys differ from attributes: {set(d) ^ attrs}"
    for key in attrs - {"specs", "dw_kernel"}:
        assert d[key] == getattr(r, key), f"to_dict[{key!r}] = {d[key]!r} != attribute {getattr(r, key)!r}"
    assert [parse_specs([s])[0] for s in d["specs"]] == list(r.specs), "specs do not round-trip"
    assert json.loads(r.to_json()) == d, "JSON does not round-trip"


def test_str_is_a_readable_table_with_units():
    text = str(complexity(k=7, c=96))
    for needle in (
        "NeoCell parameters",
        "9,408",
        "4,214,784",
        "4.21 MMACs",
        "depthwise MACs (all taps)",
        "14,751,744",
        "MB float32",
        "3.500",
        "scalars (no bias)",
        "7x7 depthwise",
    ):
        assert needle in text, f"{needle!r} missing from the table:\n{text}"
    assert repr(complexity(k=7, c=96)) == text, "repr should print the same table"


# --------------------------------------------------------------------------------------
# analytic counts == what the code executes (property-based)
# --------------------------------------------------------------------------------------
@given(data=st.data())
def test_counts_equal_instrumented_execution(data):
    specs, size = data.draw(layer_specs(max_size=12, max_kernel=5, max_channels=4), label="layer")
    batch = data.draw(st.integers(1, 2), label="batch")
    assert_layer_counts_match_execution(specs, size, batch)


@given(data=st.data())
def test_shorthand_forms_equal_explicit_specs(data):
    """k / (ka, kb) / code with a shift count exactly what the equivalent specs count."""
    code = data.draw(st.sampled_from(["7", "4+7", "3+5+7", "2"]), label="code")
    c = data.draw(st.integers(3, 12), label="c")
    h = data.draw(st.integers(7, 16), label="h")
    w = data.draw(st.integers(7, 16), label="w")
    shift = data.draw(st.integers(0, 1), label="shift")
    short = complexity(code=code, c=c, h=h, w=w, shift=shift)
    sizes = [int(k) for k in code.split("+")]
    per = c // len(sizes)
    chans = [per] * (len(sizes) - 1) + [c - per * (len(sizes) - 1)]
    explicit = [{"kernel": k, "channels": n, "shift": shift} for k, n in zip(sizes, chans)]
    full = assert_layer_counts_match_execution(explicit, (h, w), 1)
    assert short.to_dict() == full.to_dict(), f"code {code!r} differs from its explicit specs"
    ka = data.draw(st.integers(1, 7), label="kernel_a")
    kb = data.draw(st.integers(1, 7), label="kernel_b")
    pair = complexity(k=(ka, kb), c=c, h=h, w=w)
    ref = complexity(specs=[{"kernel_a": ka, "kernel_b": kb, "channels": c}], h=h, w=w, dw_kernel=(ka, kb))
    assert pair.to_dict() == ref.to_dict(), f"k=({ka}, {kb}) differs from the kernel_a/kernel_b spec"


@pytest.mark.parametrize(
    "specs, size, batch",
    [
        ([{"h_in": 3, "h_out": 2, "w_in": 4, "w_out": 4, "channels": 5, "shift_a": 0, "shift_b": 2}], (11, 13), 2),
        ([{"h_in": 1, "h_out": 3, "w_in": 2, "w_out": 5, "channels": 2}], (4, 6), 1),
        ([{"kernel": 4, "channels": 2, "shift": 1}, {"kernel": 7, "channels": 9, "shift": 1}], (6, 6), 1),
        ([{"kernel_a": 5, "kernel_b": 3, "channels": 7, "shift_a": 2, "shift_b": 1}], (4, 2), 3),
        ([{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 4}], (7, 9), 1),
        ([{"kernel": 7, "channels": 3}], (1, 1), 1),
    ],
    ids=["down3to2-shiftB", "upsample", "4+7-shift-small-H", "ka5-kb3-shifts", "2to1-odd", "1x1-input"],
)
def test_counts_equal_instrumented_execution_edge_cases(specs, size, batch):
    assert_layer_counts_match_execution(specs, size, batch)


def test_padding_costs_extra_only_when_a_tile_is_cut():
    divisible = complexity(k=7, c=8, h=21, w=14)
    assert divisible.patchwise_padded_macs == divisible.neocell_macs, "no padding when 7 | H, W"
    ragged = complexity(k=7, c=8, h=20, w=14)
    assert ragged.patchwise_padded_macs > ragged.neocell_macs, "H=20 leaves a 6-row tile: padded > useful"
    shifted = complexity(k=7, c=8, h=21, w=14, shift=1)
    assert shifted.patchwise_padded_macs > shifted.neocell_macs, "a shift cuts tiles at both ends"


# --------------------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------------------
@given(data=st.data())
def test_closed_form_unshifted_divisible(data):
    k = data.draw(st.integers(1, 8), label="k")
    c = data.draw(st.integers(1, 40), label="c")
    h = k * data.draw(st.integers(1, 9), label="h_tiles")
    w = k * data.draw(st.integers(1, 9), label="w_tiles")
    batch = data.draw(st.integers(1, 3), label="batch")
    assert_closed_form_agrees(k, c, h, w, batch)
    r = complexity(k=k, c=c, h=h, w=w, batch=batch)
    assert r.depthwise_macs == closed_form_depthwise_macs(k, c, h, w, batch) == k * k * c * h * w * batch, (
        f"depthwise {r.depthwise_macs} != k²CHWN {k * k * c * h * w * batch}"
    )
    assert r.neocell_macs_per_output == 2 * k, f"per output {r.neocell_macs_per_output} != 2k = {2 * k}"


@given(data=st.data())
def test_square_nnz_closed_form_with_shift_and_ragged_tiles(data):
    """``nnz = s² + ⌊(H−s)/k⌋·k² + ((H−s) mod k)²`` for a square k x k kernel on H x H."""
    k = data.draw(st.integers(1, 8), label="k")
    s = data.draw(st.integers(0, k - 1), label="shift")
    h = data.draw(st.integers(max(s, 1), 30), label="H")
    hand = s * s + ((h - s) // k) * k * k + ((h - s) % k) ** 2
    got = nnz(k, k, h, h, s)
    assert got == hand, f"nnz({k}, {k}, {h}, {h}, {s}) = {got}, closed form {hand}"
    assert got == int(spec_filled_pattern(k, k, h, h, s).sum()), "closed form disagrees with SPEC-3 pattern"


def test_closed_form_refuses_non_divisible_sizes():
    with pytest.raises(ValueError, match="divide"):
        closed_form_neocell_macs(7, 96, 55, 56)


# --------------------------------------------------------------------------------------
# depthwise convolution: against a direct implementation that counts its taps
# --------------------------------------------------------------------------------------
def direct_depthwise(x, kernels):
    """Stride-1 ``same`` depthwise correlation, tap by tap, counting multiplies.

    ``x`` (C, H, W), ``kernels`` (C, kh, kw); ``(kh-1)//2`` zeros before, the rest after
    (PyTorch ``padding="same"``). Returns ``(y, all_taps, in_bounds_taps)``.
    """
    c, h, w = x.shape
    _, kh, kw = kernels.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    y = np.zeros_like(x)
    all_taps = in_bounds = 0
    for a in range(kh):
        for b in range(kw):
            dy, dx = a - top, b - left
            rows = np.arange(h)[(np.arange(h) + dy >= 0) & (np.arange(h) + dy < h)]
            cols = np.arange(w)[(np.arange(w) + dx >= 0) & (np.arange(w) + dx < w)]
            all_taps += c * h * w  # every output reads this tap, padding or not
            in_bounds += c * len(rows) * len(cols)
            if len(rows) and len(cols):
                y[:, rows[:, None], cols[None, :]] += (
                    kernels[:, a, b, None, None] * x[:, rows[:, None] + dy, cols[None, :] + dx]
                )
    return y, all_taps, in_bounds


@given(data=st.data())
def test_depthwise_counts_against_direct_convolution(data):
    kh = data.draw(st.integers(1, 7), label="kh")
    kw = data.draw(st.integers(1, 7), label="kw")
    c = data.draw(st.integers(1, 3), label="C")
    h = data.draw(st.integers(1, 12), label="H")
    w = data.draw(st.integers(1, 12), label="W")
    batch = data.draw(st.integers(1, 2), label="N")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    kernels = rng.standard_normal((c, kh, kw))
    total_all = total_in = 0
    for _ in range(batch):
        x = rng.standard_normal((c, h, w))
        y, all_taps, in_bounds = direct_depthwise(x, kernels)
        for ch in range(c):
            # scipy's "full" output index m reads x[m - (kh-1) + a]; ours reads x[i - top + a].
            full = scipy.signal.correlate2d(x[ch], kernels[ch], mode="full")
            r0, c0 = kh - 1 - (kh - 1) // 2, kw - 1 - (kw - 1) // 2
            ref = full[r0 : r0 + h, c0 : c0 + w]
            err = np.abs(y[ch] - ref).max()
            assert err < 1e-12, f"direct depthwise differs from scipy by {err} (channel {ch}, k {kh}x{kw})"
        total_all += all_taps
        total_in += in_bounds
    r = complexity(k=3, c=c, h=h, w=w, batch=batch, dw_kernel=(kh, kw))
    where = f"k {kh}x{kw}, C={c}, H x W={h}x{w}, N={batch}"
    assert r.depthwise_macs == total_all, f"depthwise_macs {r.depthwise_macs} != counted {total_all} ({where})"
    assert r.depthwise_macs_in_bounds == total_in, (
        f"depthwise_macs_in_bounds {r.depthwise_macs_in_bounds} != counted {total_in} ({where})"
    )
    assert r.depthwise_params == kernels.size, f"params {r.depthwise_params} != kernel size {kernels.size}"
    assert r.depthwise_params_with_bias == kernels.size + c, "with bias: one more scalar per channel"
    assert r.im2col_elements == batch * c * kh * kw * h * w, "im2col holds every tap of every output"


def test_default_depthwise_kernel_is_the_largest_neocell_kernel():
    assert complexity(code="4+7").dw_kernel == (7, 7), "a '4+7' layer is compared with a 7x7 depthwise"
    down = complexity(specs=[{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 4}], h=8)
    assert down.dw_kernel == (2, 2) and (down.height_out, down.width_out) == (4, 4), (
        f"down-sampling: dw {down.dw_kernel}, output {down.height_out}x{down.width_out}"
    )


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(k=7.0), TypeError, "k must be an integer"),
        (dict(k=True), TypeError, "k must be an integer"),
        (dict(k=(3, 4, 5)), ValueError, "k must be an int or a pair"),
        (dict(c=0), ValueError, "c must be >= 1"),
        (dict(h=0), ValueError, "h must be >= 1"),
        (dict(w=-2), ValueError, "w must be >= 1"),
        (dict(h="56"), TypeError, "h must be an integer"),
        (dict(batch=0), ValueError, "batch must be >= 1"),
        (dict(shift=-1), ValueError, "shift must be >= 0"),
        (dict(shift=7), ValueError, "^shift=7 must be smaller than the kernel size 7"),
        (dict(code="4+7", shift=4), ValueError, "^shift=4 must be smaller than every kernel size of code .4\\+7."),
        (dict(k=7, shift=3, h=4), ValueError, "exceeds the input height H=4"),
        (dict(k=7, code="4+7"), ValueError, "either k=7 or code='4\\+7'"),
        (dict(code=7), TypeError, "code must be a kernel code string"),
        (dict(code="4+x"), ValueError, "not a '\\+'-separated list"),
        (dict(specs=[{"kernel": 7, "channels": 4}], k=7), ValueError, "either specs= or"),
        (dict(specs=[{"kernel": 7, "channels": 4}], shift=1), ValueError, "either specs= or"),
        (dict(specs={"kernel": 7, "channels": 4}), TypeError, "specs must be a list"),
        (dict(specs=[{"kernel": 7}]), ValueError, "no 'channels' key"),
        (dict(dw_kernel=(3,)), ValueError, "dw_kernel must be an int or a pair"),
        (dict(dw_kernel=0), ValueError, "dw_kernel must be >= 1"),
        (dict(dtype="int32"), TypeError, "dtype must be a floating NumPy dtype, got int32"),
        (dict(dtype=object()), TypeError, "dtype must be a floating NumPy dtype, got <object"),
        (dict(dtype=None), TypeError, "dtype must be a floating NumPy dtype, got None"),  # not float64
        (dict(dtype=np.float64(7.0)), TypeError, "dtype must be a floating NumPy dtype, got np.float64"),  # a number
        (dict(dtype="4+7"), TypeError, "dtype must be a floating NumPy dtype, got '4\\+7'"),
        (dict(dtype="(10000000000000,)f8"), TypeError, "dtype must be a floating NumPy dtype, got '\\(1000"),
        (dict(specs=[{"kernel": 7, "channels": 4}], shift=np.array([0, 0])), ValueError, "either specs= or"),
        (dict(specs=[{"kernel": 7, "channels": 4}], shift=0.0), ValueError, "either specs= or"),
        (dict(specs=np.array(7)), TypeError, "specs must be a list"),
        (
            dict(
                specs=[{"h_in": 2, "h_out": 1, "w_in": 1, "w_out": 1, "channels": 2}, {"kernel": 3, "channels": 2}], h=8
            ),
            ValueError,
            "groups disagree on the output size",
        ),
    ],
)
def test_bad_input_is_refused_with_a_named_field(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        complexity(**kwargs)


# ======================================================================================
# Model-level complexity calculator: parameters and MACs of NeoNeXt, four conventions.
#
# Independent sources of the expected values:
#
# * hand formulas written here from the text of SPEC sections 2, 4, 7 and 8 (stage by
#   stage, with the square-kernel closed form ``nnz = s² + ⌊(H−s)/k⌋·k² + ((H−s) mod k)²``),
#   never from :mod:`neocell_ref.architecture` or :mod:`neocell_ref.expansion`;
# * the official tiny model's state dict in ``tests/data`` (outputs of the authors' code):
#   its trainable arrays are exactly those that have a gradient (``grad/KEY``);
# * the MACs the package's NeoCell forward and a whole built ``neocell_ref.models.NeoNeXt``
#   forward execute, recorded by ``count_macs``, and the built model's parameter arrays;
# * the published figures of SPEC section 7, written below as literals.
# ======================================================================================

NAMES = ("neonext_t", "neonext_s", "neonext_b", "neonext_l", "neonext_xl")
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


def _official_tiny(stem):
    meta = json.loads((DATA / f"{stem}.json").read_text())
    arrays = np.load(DATA / f"{stem}.npz", allow_pickle=False)
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


@pytest.mark.parametrize("stem", ["official_tiny_model", "official_tiny_model_options"])
def test_params_equal_official_tiny_model_state_dict(stem):
    """Default options, and linear biases with layer scale and kernel code "3+5"."""
    config, resolution, trainable = _official_tiny(stem)
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


def test_executed_neocell_macs_equal_instrumented_forward():
    """Every NeoCell row's executed MACs are what ``neocell_forward`` multiplies on that input."""
    config, resolution, _ = _official_tiny("official_tiny_model")
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


@pytest.mark.parametrize("which", ["official_tiny", "custom_3+5"])
def test_executed_macs_and_params_equal_the_running_model(which):
    """A built NeoNeXt: its parameter arrays and the MACs its forward executes."""
    if which == "official_tiny":
        config, resolution, _ = _official_tiny("official_tiny_model")
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


def test_printed_counts_are_exact_and_never_float_noise():
    """The summary prints every convention's MACs as the exact integer beside its GMACs
    (a tiny network is not '0.000 GMACs' four times), names in_chans, and sizes far beyond
    float precision print in scientific notation, not as hundreds of noisy digits."""
    tiny = NeoNeXtConfig(dims=(1, 1, 1, 1), per_stage_layers=(1, 1, 1, 1), shifts=(0, 0, 0, 0), kernel_spec="7")
    result = neocell_ref.model_complexity(tiny, 32)
    text = str(result)
    for conv in CONVENTIONS:
        exact = f"{result.macs[conv]:,} ="
        assert exact in text, f"{conv}: exact count {exact!r} missing from the summary:\n{text}"
    assert "in_chans=3" in text, f"in_chans missing from the summary:\n{text}"
    huge = str(complexity(k=7, c=10**300))
    noisy = [token for token in huge.split() if len(token) > 40 and "," not in token]
    assert not noisy, f"float digits printed at 1e300 channels: {[t[:60] for t in noisy]}"
    assert "e+" in huge, f"no scientific notation for sizes beyond 1e15:\n{huge[-600:]}"


def test_memory_in_bfloat16_is_two_bytes_per_value():
    """NumPy has no bfloat16 dtype; the calculator still reports memory in it: z = A·x of
    7x7 on 1 x 96 x 56 x 56 holds 96·56·56 = 301,056 values, 602,112 bytes = 0.60 MB."""
    result = complexity(k=7, c=96, dtype="bfloat16")
    line = next(line for line in str(result).splitlines() if "NeoCell extra memory" in line)
    assert "301,056" in line and "0.60 MB bfloat16" in line, f"bfloat16 memory line: {line!r}"
    assert result.to_dict()["dtype"] == "bfloat16", f"dtype in the dict: {result.to_dict()['dtype']!r}"


def test_parts_add_up_and_match_hand_counts():
    """Per-part subtotals: NeoNeXt-T's stem (1x1 convolution 48 -> 96 without bias, and
    BatchNorm's 2 x 96) and stage 1 (three blocks of 80,160: SPEC 8's example) by hand;
    every part equals its rows of the per-layer table; the parts add up to the totals."""
    result = neocell_ref.model_complexity("neonext_t", 224)
    parts = result.parts
    assert list(parts) == [
        "stem",
        "stage_1",
        "downsample_1",
        "stage_2",
        "downsample_2",
        "stage_3",
        "downsample_3",
        "stage_4",
        "head",
    ], f"parts in order: {list(parts)}"
    assert parts["stem"]["params"] == 48 * 96 + 2 * 96, f"stem params {parts['stem']['params']}"
    assert parts["stage_1"]["params"] == 3 * 80_160, f"stage_1 params {parts['stage_1']['params']}"
    for name, part in parts.items():
        rows = [r for r in result.layers if r.name.split(".")[0] == name]
        by_rows = (sum(r.params for r in rows), {c: sum(r.macs[c] for r in rows) for c in CONVENTIONS})
        assert (part["params"], part["macs"]) == by_rows, f"{name}: part {part}, its table rows {by_rows}"
    assert sum(p["params"] for p in parts.values()) == result.params, "parts do not add up to the parameters"
    for conv in CONVENTIONS:
        total = sum(p["macs"][conv] for p in parts.values())
        assert total == result.macs[conv], f"{conv}: parts add up to {total}, total {result.macs[conv]}"
    assert sum(p["elementwise_ops"] for p in parts.values()) == result.elementwise_ops, "element-wise ops"
    data = json.loads(result.to_json(per_layer=False))
    assert data["parts"]["stage_1"]["params"] == 240_480 and "macs" in data["units"], f"JSON: {list(data)}"


def test_a_resampling_layer_warns_that_the_depthwise_comparison_is_not_like_for_like():
    down = str(complexity(specs=[{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 192}], h=56))
    assert "note: NeoCell resamples here" in down, f"no note for a 56 -> 28 layer:\n{down}"
    same = str(complexity(k=7, c=96))
    assert "note:" not in same, f"a note for a size-keeping layer:\n{same}"


def test_a_bad_stage_or_down_sampling_is_named():
    with pytest.raises(ValueError, match=r"^stage 2 \(dims\[1\]=192, shifts\[1\]=9\): shift=9"):
        neocell_ref.model_complexity("neonext_t", 224, shifts=(1, 9, 1, 0))
    with pytest.raises(ValueError, match=r"^downsample_3 at 1x1: output size would be 0x0"):
        neocell_ref.model_complexity("neonext_t", 24, shifts=(0, 0, 0, 0))


def test_an_architecture_or_a_model_is_counted_at_its_own_resolution():
    """An Architecture described at 112 px (and a model built from it, or built at 128 px)
    is counted at that resolution, not at the default 224; asking for another one is
    refused where the object cannot run there, and edited units are refused."""
    import dataclasses

    config = NeoNeXtConfig(per_stage_layers=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=10)
    arch = describe(config, 112)
    _, macs_112, _, _ = naive_model_complexity(config, 112)
    built = NeoNeXt.from_architecture(arch)
    for what, model in (("Architecture", arch), ("model built from it", built)):
        got = model_complexity(model)
        assert got.resolution == (112, 112), f"{what}: counted at {got.resolution}, described at 112"
        assert got.macs == macs_112, f"{what}: MACs {got.macs}, its layers counted one by one {macs_112}"
        with pytest.raises(ValueError, match=r"\(112, 112\)"):
            model_complexity(model, 224)
    with pytest.raises(ValueError, match="units"):
        model_complexity(dataclasses.replace(arch, units=arch.units[:-1]))
    at_128 = NeoNeXt.from_config(config, resolution=128)
    assert model_complexity(at_128).resolution == (128, 128), "a model built at 128 px"
    assert model_complexity(at_128, 224).macs == naive_model_complexity(config, 224)[1], (
        "a model that runs at any size, counted at an asked 224"
    )


@pytest.mark.parametrize("np_int", [np.int64, np.int32, np.uint8, np.uint16])
def test_numpy_integer_arguments_count_exactly(np_int):
    """NumPy integers are counted as Python integers: no wrap-around (int64 past 2⁶³,
    uint8 past 255) and Python ints out. Expected values: the hand formulas 2·k·C·H·W
    and k²·C·H·W in Python integers."""
    big = 7 * 10**8 if np.iinfo(np_int).max >= 7 * 10**8 else 56
    k, c, h = 7, min(96, int(np.iinfo(np_int).max)), big
    args = [np_int(v) for v in (k, c, h, h)]
    got = closed_form_neocell_macs(*args)
    assert type(got) is int and got == 2 * k * c * h * h, (
        f"closed_form_neocell_macs: {got!r}, expected {2 * k * c * h * h}"
    )
    got = closed_form_depthwise_macs(*args)
    assert type(got) is int and got == k * k * c * h * h, (
        f"closed_form_depthwise_macs: {got!r}, expected {k * k * c * h * h}"
    )
    counts = neocell_counts([{"kernel": k, "channels": c}], np_int(h), np_int(h))
    assert all(type(v) is int for v in counts.values()), f"neocell_counts returned {counts!r}"
    assert counts["blockdiag"] == c * (h * h * h + h * h * h), f"blockdiag {counts['blockdiag']}"
    assert counts["nnz"] == 2 * k * c * h * h, f"nnz {counts['nnz']}, expected 2kCHW = {2 * k * c * h * h}"


@pytest.mark.parametrize("resolution", [512, 448, (224, 448), 256])
def test_released_options_exist_at_224_and_384_only(resolution):
    """No checkpoint was released at other resolutions (SPEC 7): refused, not answered
    with the 224 px checkpoint's options."""
    with pytest.raises(ValueError, match="224 and 384 px only"):
        released_checkpoint_options(resolution)
