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
inputs, fewer channels than sub-groups, and up- and down-sampling kernels. Mutants at
the end show that a wrong closed form is caught.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from contextlib import redirect_stderr, redirect_stdout
from functools import cache

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from neocell_ref import calculator as CX
from neocell_ref import expansion as EX
from neocell_ref.architecture import NeoNeXtConfig, describe
from neocell_ref.calculator import (
    CONVENTIONS,
    MAX_COUNT,
    MAX_LAYER_ROWS,
    complexity,
    depthwise_in_bounds_taps,
    model_complexity,
    neocell_counts,
    released_checkpoint_options,
    subgroup_sizes,
)
from neocell_ref.cli import main
from neocell_ref.expansion import block_layout, expand_kernel, nnz
from neocell_ref.spec import GroupSpec, check_input_size, parse_specs

# A generous bound for "milliseconds": a closed form takes well under 1 ms; the bound
# leaves room for a loaded 2-core machine.
FAST_SECONDS = 0.5


# --------------------------------------------------------------------------------------
# the slow references (independent formulations, test code only)
# --------------------------------------------------------------------------------------
@cache
def naive_nnz(p, q, rows, cols, s):
    """Filled entries of SPEC 3, position by position: corner ``i, j < s``, else same block."""
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    corner = (i < s) & (j < s)
    block = (i >= s) & (j >= s) & ((i - s) // p == (j - s) // q)
    return int((corner | block).sum())


def naive_tiles(length, k, s):
    """Tiles of the padding view: ``k − s`` zeros in front when shifted, then up to a multiple of k."""
    padded = length + (k - s if s else 0)
    return (padded + k - 1) // k


def naive_counts(specs, height, width, batch=1):
    """The per-channel enumeration the closed forms replaced: ``(nnz MACs, padded MACs)``."""
    groups = parse_specs(specs)
    h_out, w_out = check_input_size(groups, height, width)
    useful = padded = 0
    for g in groups:
        shifts_a, shifts_b = g.channel_shifts()
        for sa, sb in zip(shifts_a.tolist(), shifts_b.tolist()):
            useful += naive_nnz(g.h_out, g.h_in, h_out, height, sa) * width
            useful += h_out * naive_nnz(g.w_in, g.w_out, width, w_out, sb)
            padded += (
                naive_tiles(height, g.h_in, sa) * naive_tiles(width, g.w_in, sb) * g.h_out * g.w_in * (g.h_in + g.w_out)
            )
    return batch * useful, batch * padded


def naive_depthwise_taps(length, k):
    """In-bounds taps of a same-padded k-tap correlation, output position by position."""
    left = (k - 1) // 2
    return sum(1 for i in range(length) for a in range(k) if 0 <= i + a - left < length)


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
# comparison helpers (the mutant tests reuse them with a wrong closed form)
# --------------------------------------------------------------------------------------
NNZ_GRID = [
    (p, q, rows, cols, s)
    for p, q in itertools.product((1, 2, 3, 4, 7), repeat=2)
    for rows, cols in ((1, 1), (1, 5), (2, 9), (6, 6), (7, 7), (9, 4), (13, 16))
    for s in range(min(p, q))
]


def assert_nnz_matches_enumeration(nnz_fn, grid=NNZ_GRID):
    for p, q, rows, cols, s in grid:
        got, expected = nnz_fn(p, q, rows, cols, s), naive_nnz(p, q, rows, cols, s)
        assert got == expected, (
            f"nnz({p}, {q}, {rows}, {cols}, shift={s}) = {got}, position-by-position count {expected} "
            f"(off by {got - expected})"
        )


# Axes of a group: (kernel, shift) for every shift of kernels 1..7, plus unshifted
# up/down-sampling kernels (k_in, k_out).
SHIFTED_AXES = [(k, s) for k in (1, 2, 3, 4, 5, 7) for s in range(k)]
PARTNER_AXES = [(1, 0), (3, 2), (4, 1), (7, 1), (7, 3)]
RESAMPLING = [((2, 1), (2, 1)), ((3, 2), (1, 3)), ((1, 3), (2, 3)), ((4, 1), (3, 3))]
SIZES = [(1, 1), (2, 9), (7, 7), (9, 16), (16, 6), (13, 13)]
CHANNELS = (1, 3, 13)


def layer_grid():
    """Single-group layers: every (kernel, shift) on A against a few on B, and the reverse."""
    for (ka, sa), (kb, sb) in itertools.chain(
        itertools.product(SHIFTED_AXES, PARTNER_AXES), itertools.product(PARTNER_AXES, SHIFTED_AXES)
    ):
        for c in CHANNELS:
            yield [GroupSpec(channels=c, h_in=ka, h_out=ka, w_in=kb, w_out=kb, shift_a=sa, shift_b=sb)]
    for (a_in, a_out), (b_in, b_out) in RESAMPLING:
        for c in CHANNELS:
            yield [GroupSpec(channels=c, h_in=a_in, h_out=a_out, w_in=b_in, w_out=b_out)]
    # several groups, as kernel codes make them
    yield parse_specs([{"kernel": 4, "channels": 5, "shift": 1}, {"kernel": 7, "channels": 9, "shift": 1}])
    yield parse_specs(
        [
            {"kernel": 3, "channels": 2, "shift": 2},
            {"kernel": 5, "channels": 11, "shift": 2},
            {"kernel": 7, "channels": 4, "shift": 3},
        ]
    )


def assert_counts_match_enumeration(counts_fn=neocell_counts):
    checked = 0
    for specs in layer_grid():
        for height, width in SIZES:
            try:
                check_input_size(specs, height, width)
            except ValueError:
                continue  # shift larger than the input, or an empty output: not a layer
            got = counts_fn(specs, height, width, 2)
            expected = naive_counts(specs, height, width, 2)
            where = f"specs={[g.to_dict() for g in specs]}, H x W={height}x{width}, N=2"
            assert got["nnz"] == expected[0], (
                f"nnz MACs {got['nnz']} != per-channel enumeration {expected[0]} "
                f"(off by {got['nnz'] - expected[0]}; {where})"
            )
            assert got["padded"] == expected[1], (
                f"padded MACs {got['padded']} != per-channel enumeration {expected[1]} "
                f"(off by {got['padded'] - expected[1]}; {where})"
            )
            checked += 1
    return checked


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


def assert_depthwise_matches_enumeration(taps_fn):
    for length in range(1, 14):
        for k in range(1, 16):  # kernels longer than the input included
            got, expected = taps_fn(length, k), naive_depthwise_taps(length, k)
            assert got == expected, f"in-bounds taps L={length}, k={k}: {got}, counted tap by tap {expected}"


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
    assert big["specs"][0]["channels"] == 96 * 10**9


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
    assert timed(depthwise_in_bounds_taps, length, k) == k * length - half * (half + 1)
    assert timed(depthwise_in_bounds_taps, 56, 10**9) == 56 * 56


def test_huge_models_are_fast():
    result = timed(model_complexity, "neonext_t", 10**8)
    assert result.macs["fvcore"] > result.macs["fvcore_patchwise"] > 0
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
@pytest.mark.parametrize(
    "config, resolution",
    [
        (
            NeoNeXtConfig(
                per_stage_layers=(1, 2, 1, 1),
                dims=(6, 12, 18, 24),
                num_classes=7,
                kernel_spec="3+5",
                shifts=(2, 1, 1, 0),
                layer_scale_init_value=0.5,
                linear_bias=True,
            ),
            (96, 100),
        ),
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
    assert deep.num_layer_rows > MAX_LAYER_ROWS
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
    assert MAX_COUNT == int(np.finfo(np.float64).max)


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


# --------------------------------------------------------------------------------------
# command line: exact integers, and exit status 2 in one line for unusable arguments
# --------------------------------------------------------------------------------------
def run_cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exc:  # argparse refuses an argument
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def test_cli_prints_exact_integers_at_huge_sizes():
    status, out, _ = run_cli(["complexity", "-c", "10**12", "--json"])
    assert status == 0, out
    assert f'"neocell_macs": {2 * 7 * 10**12 * 56 * 56},' in out, out
    status, out, _ = run_cli(["complexity", "-c", "1000000000000"])
    assert status == 0 and f"{2 * 7 * 10**12 * 56 * 56:,}" in out, out
    for argv in (
        ["complexity", "-k", "1000000000"],
        ["complexity", "--dw-kernel", "1000000000"],
        ["complexity", "--hw", "10**15", "10**15"],
        ["model-complexity", "neonext_t", "--resolution", "100000000"],
    ):
        start = time.perf_counter()
        status, out, err = run_cli(argv)
        assert status == 0 and not err, f"{argv}: status {status}, {err}"
        assert time.perf_counter() - start < 5 * FAST_SECONDS, f"{argv} was slow"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["complexity", "-c", "0"], "must be >= 1"),
        (["complexity", "-c", "-5"], "must be >= 1"),
        (["complexity", "-k", "2.5"], "expected an integer"),
        (["complexity", "-k", "1e9"], "expected an integer"),
        (["complexity", "--hw", "56", "x"], "expected an integer"),
        (["complexity", "--shift", "-1"], "must be >= 0"),
        (["complexity", "--batch", "0"], "must be >= 1"),
        (["complexity", "--dw-kernel", "0"], "must be >= 1"),
        (["complexity", "--hw", "10**400", "5"], "beyond the float range"),
        (["complexity", "-c", "10**1000000000"], "beyond the float range"),
        (["complexity", "-c", "9" * 500], "beyond the float range"),
        (["complexity", "--hw", "10**200", "10**200"], "beyond the float range"),
        (["complexity", "-k", "7", "--shift", "7"], "shift_a=7 must be smaller"),
        (["complexity", "--dtype", "int8"], "floating dtype"),
        (["model-complexity", "neonext_q"], "invalid choice"),
        (["model-complexity", "neonext_t", "--resolution", "0"], "must be >= 1"),
        (["model-complexity", "neonext_t", "--resolution", "226"], "multiples of 4"),
        (["model-complexity", "neonext_t", "--resolution", "4", "4", "4"], "multiples of 4"),
        (["model-complexity", "neonext_t", "--resolution", "4*10**160"], "expected an integer"),
        (["model-complexity", "neonext_t", "--resolution", "10**160"], "beyond the float range"),
        (["model-complexity", "neonext_t", "--num-classes", "0"], "must be >= 1"),
        (["model-complexity", "neonext_t", "--shifts", "1", "1", "1", "-1"], "must be >= 0"),
        (["model-complexity", "neonext_t", "--layer-scale-init-value", "nan"], "finite"),
        (["model-complexity", "neonext_t", "--kernel-spec", "4+0"], "kernel size < 1"),
    ],
)
def test_cli_refuses_unusable_arguments_with_status_2(argv, needle):
    status, out, err = run_cli(argv)
    text = out + err
    assert status == 2, f"{argv}: exit status {status}, output {text!r}"
    assert "Traceback" not in text, f"{argv}: traceback printed:\n{text}"
    message = [line for line in text.splitlines() if "error:" in line]
    assert len(message) == 1 and needle in message[0], f"{argv}: expected one error line with {needle!r}:\n{text}"


# --------------------------------------------------------------------------------------
# test the tests: wrong closed forms are caught
# --------------------------------------------------------------------------------------
def _nnz_without_corner(p, q, rows, cols, s):
    return nnz(p, q, rows, cols, s) - min(s, rows) * min(s, cols)


def _nnz_clipped_block_counted_full(p, q, rows, cols, s):
    full, last_r, last_c = EX._block_span(p, q, rows, cols, s)
    return min(s, rows) * min(s, cols) + full * p * q + (p * q if last_r and last_c else 0)


def _nnz_clipped_block_square(p, q, rows, cols, s):
    # the square formula ((L − s) mod k)² used for a rectangular matrix
    full, last_r, last_c = EX._block_span(p, q, rows, cols, s)
    return min(s, rows) * min(s, cols) + full * p * q + min(p, last_r) ** 2


@pytest.mark.parametrize("mutant", [_nnz_without_corner, _nnz_clipped_block_counted_full, _nnz_clipped_block_square])
def test_a_wrong_nnz_closed_form_is_caught(mutant, monkeypatch):
    with pytest.raises(AssertionError, match="position-by-position"):
        assert_nnz_matches_enumeration(mutant)
    monkeypatch.setattr(CX, "nnz", mutant)
    with pytest.raises(AssertionError, match="per-channel enumeration"):
        assert_counts_match_enumeration()


def test_a_missing_run_boundary_is_caught(monkeypatch):
    """Runs that ignore where ``j·shift`` passes ``H mod k`` sum nnz as one quadratic: wrong."""
    real = CX._axis_pieces

    def merged(channels, subgroups, shift, k, length):
        pieces = real(channels, subgroups, shift, k, length)
        inner = [p for p in pieces if p[2] >= 1 and p[3] <= subgroups - 2]
        if len(inner) < 2:
            return pieces
        joined = (inner[0][0], inner[-1][1], inner[0][2], inner[-1][3], inner[0][4])
        return [pieces[0], joined] + [p for p in pieces[1:] if p not in inner]

    monkeypatch.setattr(CX, "_axis_pieces", merged)
    with pytest.raises(AssertionError, match="per-channel enumeration"):
        assert_counts_match_enumeration()


def test_a_sum_without_the_second_difference_is_caught(monkeypatch):
    """Summing nnz over a run as if it were linear in the sub-group index is wrong."""

    def linear_sum(value, j1, j2):
        n = j2 - j1 + 1
        return n * value(j1) + n * (n - 1) // 2 * (value(j1 + 1) - value(j1)) if n > 1 else value(j1)

    monkeypatch.setattr(CX, "_sum_over_runs", linear_sum)
    with pytest.raises(AssertionError, match="nnz MACs"):
        assert_counts_match_enumeration()


def test_a_wrong_sub_group_multiplicity_is_caught(monkeypatch):
    """The remainder given to the first sub-group instead of the last (a plausible slip)."""

    def remainder_first(channels, subgroups):
        size = channels // subgroups
        return (0, channels) if size == 0 else (channels - (subgroups - 1) * size, size)

    monkeypatch.setattr(CX, "subgroup_sizes", remainder_first)
    with pytest.raises(AssertionError, match="per-channel enumeration"):
        assert_counts_match_enumeration()


def test_a_depthwise_closed_form_without_the_clip_is_caught():
    """``Σ (L − |d|)`` without ``max(0, ·)``: wrong once the kernel is longer than the input."""

    def unclipped(length, k):
        pl, pr = (k - 1) // 2, k - 1 - (k - 1) // 2
        return k * length - pl * (pl + 1) // 2 - pr * (pr + 1) // 2

    with pytest.raises(AssertionError, match="counted tap by tap"):
        assert_depthwise_matches_enumeration(unclipped)
