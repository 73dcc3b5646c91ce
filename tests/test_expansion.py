"""The block-expansion rule (SPEC 3) and its adjoint (SPEC 5), against independent constructions.

``neocell_ref.expansion.block_layout`` is the package's one encoding of the rule. The
tests below rebuild the expanded matrix twice more, on purpose differently:

* ``expand_by_slicing``: a long ``scipy.linalg.block_diag(K, K, ...)`` sliced so that its
  first block starts at ``(s - p, s - q)``: the kernel's bottom-right ``s x s`` part then
  lands in the top-left corner, the off-diagonal parts of the first block fall outside,
  and everything past ``R x S`` is cut off;
* ``expand_by_index``: a per-entry formula (corner for ``i, j < s``, otherwise block
  ``(i - s) // p`` must equal block ``(j - s) // q``).

Plus literal matrices computed by hand and hand-counted ``nnz`` values. The two
constructions and the literal matrices live in ``support/expansion.py``;
tests/meta/test_expansion_mutants.py shows that a mutant rule is caught.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.expansion import HAND_EXAMPLES, K22, expand_by_index, expand_by_slicing
from support.hostile import raises_naming, small_layer

from neocell_ref import expansion as expand_module
from neocell_ref.expansion import expand, expand_adjoint, expand_kernel, expand_kernel_adjoint, nnz
from neocell_ref.spec import parse_specs
from neocell_ref.verify.testing import kernel_sizes, layer_specs, spatial_sizes

# --------------------------------------------------------------------------------------
# independent constructions (test code only)
# --------------------------------------------------------------------------------------


def reference_channel_shifts(channels, shift, kernel):
    """SPEC 4 written as a loop: sub-group j of channels // n channels uses j·s, last takes the rest."""
    if shift == 0:
        return [0] * channels
    n = (kernel - 1) // shift + 1
    size = channels // n
    shifts = []
    for c in range(channels):
        j = n - 1 if size == 0 else min(c // size, n - 1)
        shifts.append(j * shift)
    return shifts


def reference_expand(weights_a, weights_b, specs, size):
    """Layer expansion from the test's own pieces (sizes, sub-groups, slicing construction)."""
    height, width = size
    a_full, b_full = [], []
    for g, spec in enumerate(parse_specs(specs)):
        h_out = height if spec.h_in == spec.h_out else height * spec.h_out // spec.h_in
        w_out = width if spec.w_in == spec.w_out else width * spec.w_out // spec.w_in
        sa = reference_channel_shifts(spec.channels, spec.shift_a, spec.h_out)
        sb = reference_channel_shifts(spec.channels, spec.shift_b, spec.w_out)
        for c in range(spec.channels):
            a_full.append(expand_by_slicing(weights_a[g][c], h_out, height, sa[c]))
            b_full.append(expand_by_slicing(weights_b[g][c], width, w_out, sb[c]))
    return np.stack(a_full), np.stack(b_full)


def _random_weights(specs, rng):
    groups = parse_specs(specs)
    return ([rng.standard_normal(g.shape_a) for g in groups], [rng.standard_normal(g.shape_b) for g in groups])


@st.composite
def kernel_and_target(draw):
    """A p x q kernel, a target R x S (often smaller than the kernel) and a shift < min(p, q)."""
    p = draw(kernel_sizes(), label="p")
    q = draw(kernel_sizes(), label="q")
    rows = draw(spatial_sizes(16), label="rows")
    cols = draw(spatial_sizes(16), label="cols")
    shift = draw(st.sampled_from(range(min(p, q))), label="shift")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    return p, q, rows, cols, shift, seed


# ======================================================================================
# the independent constructions agree with each other and with expand_kernel
# ======================================================================================
@given(data=st.data())
def test_expand_kernel_matches_independent_constructions(data):
    p, q, rows, cols, shift, seed = data.draw(kernel_and_target(), label="kernel/target/shift")
    kernel = np.random.default_rng(seed).standard_normal((p, q))
    by_slicing = expand_by_slicing(kernel, rows, cols, shift)
    by_index = expand_by_index(kernel, rows, cols, shift)
    assert np.array_equal(by_slicing, by_index), (
        f"the two test constructions disagree for p,q={p},{q} R,S={rows},{cols} s={shift} "
        f"at {np.argwhere(by_slicing != by_index)[:5].tolist()}"
    )
    got = expand_kernel(kernel, rows, cols, shift)
    bad = np.argwhere(got != by_index)
    assert got.shape == (rows, cols) and bad.size == 0, (
        f"expand_kernel differs for p,q={p},{q} R,S={rows},{cols} s={shift} at (row, col) {bad[:5].tolist()}"
    )
    assert nnz(p, q, rows, cols, shift) == np.count_nonzero(expand_by_index(np.ones((p, q)), rows, cols, shift)), (
        f"nnz({p},{q},{rows},{cols},{shift}) differs from the count of filled entries"
    )


def test_expand_kernel_stacks_share_the_rule():
    """A stack (..., p, q) expands every kernel alike."""
    kernels = np.random.default_rng(3).standard_normal((2, 3, 4, 4))
    got = expand_kernel(kernels, 9, 9, 2)
    for idx in np.ndindex(2, 3):
        expected = expand_by_index(kernels[idx], 9, 9, 2)
        assert np.array_equal(got[idx], expected), f"stacked expansion differs for kernel {idx}"


@given(data=st.data())
def test_expand_layer_matches_independent_construction(data):
    specs, size = data.draw(layer_specs(as_dicts=None), label="layer")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    wa, wb = _random_weights(specs, np.random.default_rng(seed))
    a_full, b_full = expand(wa, wb, specs, size)
    a_ref, b_ref = reference_expand(wa, wb, specs, size)
    for name, got, ref in (("A_full", a_full, a_ref), ("B_full", b_full, b_ref)):
        assert got.shape == ref.shape, f"{name} shape {got.shape}, expected {ref.shape} for {specs} at {size}"
        bad = np.argwhere(got != ref)
        assert bad.size == 0, f"{name} differs for {specs} at {size}, (channel, row, col) {bad[:5].tolist()}"


# ======================================================================================
# the adjoint
# ======================================================================================
def _assert_inner_products_equal(lhs, rhs, scale, what):
    assert abs(lhs - rhs) <= 1e-13 * scale, (
        f"{what}: <expand(K), M> = {lhs!r} but <K, expand_adjoint(M)> = {rhs!r} "
        f"(difference {abs(lhs - rhs):.3e}, scale {scale:.3e})"
    )


@given(data=st.data())
def test_expand_kernel_adjoint_is_the_adjoint(data):
    p, q, rows, cols, shift, seed = data.draw(kernel_and_target(), label="kernel/target/shift")
    rng = np.random.default_rng(seed)
    kernel = rng.standard_normal((3, p, q))
    m = rng.standard_normal((3, rows, cols))
    expanded = expand_kernel(kernel, rows, cols, shift)
    adjoint = expand_kernel_adjoint(m, p, q, shift)
    assert adjoint.shape == kernel.shape, f"adjoint shape {adjoint.shape}, expected {kernel.shape}"
    scale = np.abs(expanded * m).sum() + np.abs(kernel * adjoint).sum() + 1e-300
    _assert_inner_products_equal(
        np.vdot(expanded, m), np.vdot(kernel, adjoint), scale, f"p,q={p},{q} R,S={rows},{cols} s={shift}"
    )


@given(data=st.data())
def test_expand_adjoint_is_the_adjoint_of_expand(data):
    specs, size = data.draw(layer_specs(as_dicts=None), label="layer")
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    wa, wb = _random_weights(specs, rng)
    a_full, b_full = expand(wa, wb, specs, size)
    ma, mb = rng.standard_normal(a_full.shape), rng.standard_normal(b_full.shape)
    ga, gb = expand_adjoint(ma, mb, specs)
    lhs = np.vdot(a_full, ma) + np.vdot(b_full, mb)
    rhs = sum(np.vdot(w, g) for w, g in zip(wa + wb, ga + gb))
    scale = (
        np.abs(a_full * ma).sum()
        + np.abs(b_full * mb).sum()
        + sum(np.abs(w * g).sum() for w, g in zip(wa + wb, ga + gb))
    )
    _assert_inner_products_equal(lhs, rhs, scale, f"layer {specs} at {size}")


@pytest.mark.parametrize(
    "rows, shift, expected",
    [
        # 2x2 kernel on 5x5 with all-ones M: count how often each entry was copied.
        # shift 0: full blocks at 0 and 2, a 1x1 block at 4 -> K[0,0] three times, the rest twice
        (5, 0, [[3, 2], [2, 2]]),
        # shift 1: corner gets K[1,1], full blocks at 1 and 3 -> K[1,1] three times
        (5, 1, [[2, 2], [2, 3]]),
        # 2x2 on 2x2 shift 1: corner K[1,1], block at 1 keeps a 1x1 part K[0,0]
        (2, 1, [[1, 0], [0, 1]]),
    ],
)
def test_expand_kernel_adjoint_hand_counted(rows, shift, expected):
    got = expand_kernel_adjoint(np.ones((rows, rows)), 2, 2, shift)
    assert np.array_equal(got, np.array(expected, dtype=float)), f"got {got.tolist()}, expected {expected}"


# ======================================================================================
# hand-computed literal matrices
# ======================================================================================


@pytest.mark.parametrize("name", sorted(HAND_EXAMPLES))
def test_expand_kernel_hand_computed(name):
    kernel, rows, cols, shift, expected = HAND_EXAMPLES[name]
    expected = np.array(expected, dtype=float)
    got = expand_kernel(kernel, rows, cols, shift)
    assert np.array_equal(got, expected), f"{name}: got\n{got}\nexpected\n{expected}"


def test_expand_layer_hand_computed():
    """One layer of two groups on a 3 x 3 input, written out by hand.

    Group 0: kernel 2, shift 1 -> n = 2 sub-groups; 3 // 2 = 1 channel in sub-group 0
    (shift 0), the last sub-group takes the other 2 (shift 1). Group 1: a 1x1 kernel,
    so its expanded matrices are 5·I and 7·I.
    """
    specs = [{"kernel": 2, "channels": 3, "shift": 1}, {"kernel": 1, "channels": 1}]
    k = K22
    wa = [np.stack([k, 2 * k, 3 * k]), np.full((1, 1, 1), 5.0)]
    wb = [np.stack([-k, -2 * k, -3 * k]), np.full((1, 1, 1), 7.0)]
    a_full, b_full = expand(wa, wb, specs, (3, 3))
    unshifted = [[1, 2, 0], [3, 4, 0], [0, 0, 1]]
    shifted = [[4, 0, 0], [0, 1, 2], [0, 3, 4]]
    expected_a = np.array([unshifted, 2 * np.array(shifted), 3 * np.array(shifted), 5 * np.eye(3)], dtype=float)
    expected_b = np.array([-np.array(unshifted), -2 * np.array(shifted), -3 * np.array(shifted), 7 * np.eye(3)])
    assert np.array_equal(a_full, expected_a), f"A_full:\n{a_full}\nexpected\n{expected_a}"
    assert np.array_equal(b_full, expected_b), f"B_full:\n{b_full}\nexpected\n{expected_b}"


# ======================================================================================
# nnz, counted by hand
# ======================================================================================
@pytest.mark.parametrize(
    "p, q, rows, cols, shift, expected",
    [
        (2, 2, 5, 5, 0, 4 + 4 + 1),  # blocks at 0, 2 and a 1x1 remnant at 4
        (2, 2, 5, 5, 1, 1 + 4 + 4),  # corner 1x1, blocks at 1 and 3
        (7, 7, 10, 10, 0, 49 + 9),  # one full block, a 3x3 remnant
        (7, 7, 10, 10, 3, 9 + 49),  # 3x3 corner, one full block at 3
        (7, 7, 14, 14, 0, 98),  # two full blocks
        (7, 7, 1, 1, 0, 1),  # 1x1 plane
        (4, 4, 3, 3, 3, 9),  # corner only
        (4, 4, 28, 28, 1, 1 + 6 * 16 + 9),  # corner, blocks at 1..21 (6 full), a 3x3 remnant at 25
        (1, 2, 2, 5, 0, 2 + 2),  # A of 2 -> 1 at H = 5: two 1x2 blocks
        (1, 3, 1, 2, 0, 2),  # 1x3 kernel on 1x2: block 0 keeps 1x2, block 1 is outside
        (3, 1, 6, 2, 0, 3 + 3),  # A of 1 -> 3 at H = 2: two 3x1 blocks
        (2, 3, 3, 4, 0, 6 + 1),  # B of 2 -> 3 at W = 3
    ],
)
def test_nnz_hand_counted(p, q, rows, cols, shift, expected):
    got = nnz(p, q, rows, cols, shift)
    assert got == expected, f"nnz({p}, {q}, {rows}, {cols}, {shift}) = {got}, expected {expected}"


# ======================================================================================
# test the tests: a subtly wrong rule is caught
# ======================================================================================


# --------------------------------------------------------------------------------------
# the geometry of SPEC section 3.2's equivalent view, and the walk over channel runs
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "length, k_in, k_out, shift, expected",
    [
        # SPEC section 3.2's example: H = 6, k = 3, s = 1: 2 zero rows on top, 9 rows = 3 tiles,
        # the first 2 output rows dropped
        (6, 3, 3, 1, (2, 3, 2)),
        (6, 3, 3, 0, (0, 2, 0)),  # no shift: no padding on top, 6 rows = 2 whole tiles
        (7, 3, 3, 0, (0, 3, 0)),  # a partial tile at the bottom
        (5, 2, 3, 0, (0, 3, 0)),  # 2 -> 3 tiles: 5 rows padded to 6
        (1, 7, 7, 6, (1, 1, 1)),  # the largest shift of a 7-kernel on a 1-row input
    ],
)
def test_padding_view_by_hand(length, k_in, k_out, shift, expected):
    got = expand_module.padding_view(length, k_in, k_out, shift)
    assert tuple(got) == expected, f"padding_view{(length, k_in, k_out, shift)} = {got}, expected {expected}"
    assert (got.front, got.tiles, got.crop) == expected, (
        f"padding_view{(length, k_in, k_out, shift)}: (front, tiles, crop) fields are"
        f" {(got.front, got.tiles, got.crop)}, expected {expected}"
    )


def test_channel_runs_cover_every_channel_once_with_its_shifts():
    from neocell_ref.spec import channel_shifts

    specs = parse_specs(
        [
            {"kernel": 4, "channels": 5, "shift": 1},
            {"kernel_a": 3, "kernel_b": 5, "channels": 7, "shift": 2},
            {"kernel": 2, "channels": 3},
        ]
    )
    seen = []
    for run in expand_module.channel_runs(specs):
        spec = specs[run.group]
        shifts_a = channel_shifts(spec.channels, spec.shift_a, spec.subgroups_a)
        shifts_b = channel_shifts(spec.channels, spec.shift_b, spec.subgroups_b)
        offset = sum(g.channels for g in specs[: run.group])
        assert run.chans == slice(offset + run.local.start, offset + run.local.stop), run
        for c in range(run.local.start, run.local.stop):
            assert (shifts_a[c], shifts_b[c]) == (run.shift_a, run.shift_b), (run, c)
        seen.extend(range(run.chans.start, run.chans.stop))
    assert seen == list(range(15)), f"runs cover channels {seen}, expected 0..14 once each"


# --------------------------------------------------------------------------------------
# hostile input (issue "Verdicts that cannot be fooled", section 5)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def layer():
    """``support.hostile.small_layer()``, built once for this module."""
    return small_layer()


def test_expand_adjoint_refuses_one_channel_for_two(layer):
    specs = layer[0]
    ga, gb = np.ones((1, 6, 6)), np.ones((1, 6, 6))
    with raises_naming(ValueError, "grad_a_full", "(1, 6, 6)", "(2, 6, 6)"):
        expand_adjoint(ga, gb, specs)
    with raises_naming(ValueError, "grad_b_full", "(1, 6, 6)", "(2, 6, 6)"):
        expand_adjoint(np.ones((2, 6, 6)), gb, specs)


def test_expand_adjoint_refuses_2d_and_complex(layer):
    specs = layer[0]
    with raises_naming(ValueError, "grad_a_full", "3-D", "(6, 6)"):
        expand_adjoint(np.ones((6, 6)), np.ones((6, 6)), specs)
    with raises_naming(TypeError, "grad_b_full", "complex"):
        expand_adjoint(np.ones((2, 6, 6)), np.ones((2, 6, 6)) * 1j, specs)


def test_expand_adjoint_of_correct_shapes_still_matches_expand(layer):
    """The new checks accept what expand returns; adjoint identity <E(w), G> = <w, E*(G)>."""
    specs, wa, wb, _ = layer
    rng = np.random.default_rng(5)
    a_full, b_full = expand(wa, wb, specs, (6, 6))
    ga, gb = rng.standard_normal(a_full.shape), rng.standard_normal(b_full.shape)
    da, db = expand_adjoint(ga, gb, specs)
    assert np.isclose(np.vdot(a_full, ga), np.vdot(wa[0], da[0]), rtol=1e-12), (
        f"<E(wa), Ga> = {np.vdot(a_full, ga):.17g}, <wa, E*(Ga)> = {np.vdot(wa[0], da[0]):.17g}:"
        f" |diff| {abs(np.vdot(a_full, ga) - np.vdot(wa[0], da[0])):.3g} (rtol 1e-12)"
    )
    assert np.isclose(np.vdot(b_full, gb), np.vdot(wb[0], db[0]), rtol=1e-12), (
        f"<E(wb), Gb> = {np.vdot(b_full, gb):.17g}, <wb, E*(Gb)> = {np.vdot(wb[0], db[0]):.17g}:"
        f" |diff| {abs(np.vdot(b_full, gb) - np.vdot(wb[0], db[0])):.3g} (rtol 1e-12)"
    )


@pytest.mark.parametrize(
    "shift, words", [(-1, ("shift", ">= 0", "-1")), (3, ("shift=3", "smaller", "(3, 3)")), (5, ("shift=5", "smaller"))]
)
def test_expand_kernel_refuses_shifts_outside_the_kernel(shift, words):
    with raises_naming(ValueError, *words):
        expand_kernel(np.ones((3, 3)), 6, 6, shift)
    with raises_naming(ValueError, *words):
        expand_kernel_adjoint(np.ones((6, 6)), 3, 3, shift)


def test_expand_kernel_refuses_empty_kernel_without_looping():
    # Used to loop forever: a 0-row block never advances.
    with raises_naming(ValueError, "kernel", "non-empty", "(0, 0)"):
        expand_kernel(np.ones((0, 0)), 5, 5, 0)
    with raises_naming(ValueError, "kernel", "(2, 0)"):
        expand_kernel(np.ones((2, 0)), 5, 5, 0)
    with raises_naming(ValueError, "p must be >= 1"):
        expand_kernel_adjoint(np.ones((5, 5)), 0, 3, 0)


def test_expand_kernel_argument_types():
    with raises_naming(ValueError, "kernel", "2-D"):
        expand_kernel(np.ones(3), 5, 5, 0)
    with raises_naming(TypeError, "rows", "integer"):
        expand_kernel(np.ones((2, 2)), 5.0, 5, 0)
    with raises_naming(TypeError, "shift", "bool"):
        expand_kernel(np.ones((2, 2)), 5, 5, True)
    with raises_naming(TypeError, "kernel", "complex"):
        expand_kernel(np.ones((2, 2)) * 1j, 5, 5, 0)
    with raises_naming(TypeError, "size", "pair"):
        expand([np.ones((1, 2, 2))], [np.ones((1, 2, 2))], [{"kernel": 2, "channels": 1}], 4)


# ======================================================================================
# dtypes: integer input computes in float64 (the package's dtype rule), never wraps
# --------------------------------------------------------------------------------------


def test_expand_adjoint_sums_integer_gradients_in_float64():
    """300x300 of uint8 200 with a 3x3 kernel: each entry of the kernel gradient is the sum
    of its 100 copies, 100·200 = 20000 by hand (uint8 accumulation wrapped to 32)."""
    specs = [{"kernel": 3, "channels": 1}]
    grads_a, grads_b = expand_adjoint(np.full((1, 300, 300), 200, np.uint8), np.zeros((1, 300, 300), np.uint8), specs)
    assert grads_a[0].dtype == np.float64 and grads_b[0].dtype == np.float64, (grads_a[0].dtype, grads_b[0].dtype)
    assert np.array_equal(grads_a[0], np.full((1, 3, 3), 20000.0)), grads_a[0]
    assert np.array_equal(grads_b[0], np.zeros((1, 3, 3))), grads_b[0]


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int64])
def test_expand_kernel_adjoint_sums_integer_gradients_in_float64(dtype):
    """Every kernel entry of a 2x2 kernel on 256x256 (shift 0) is copied 128 times; with
    all-100 entries its gradient is 12800 (hand count), which no 8-bit integer holds."""
    got = expand_kernel_adjoint(np.full((256, 256), 100, dtype), 2, 2, 0)
    assert got.dtype == np.float64, got.dtype
    assert np.array_equal(got, np.full((2, 2), 12800.0)), got
    # The empty matrix takes the same rule.
    assert expand_kernel_adjoint(np.zeros((0, 4), dtype), 2, 2, 0).dtype == np.float64, (
        f"the adjoint of an empty {np.dtype(dtype).name} gradient has dtype"
        f" {expand_kernel_adjoint(np.zeros((0, 4), dtype), 2, 2, 0).dtype}, expected float64"
    )


def test_expand_of_integer_weights_follows_the_dtype_rule():
    """Integer kernels expand in float64 (compute_dtype), the values copied exactly; a
    floating kernel keeps its own dtype in the one-kernel function."""
    kernel = np.array([[1, 2], [3, 4]], dtype=np.int8)
    got = expand_kernel(kernel, 3, 3, 1)
    expected = np.array([[4, 0, 0], [0, 1, 2], [0, 3, 4]], dtype=np.float64)  # SPEC 3 by hand
    assert got.dtype == np.float64 and np.array_equal(got, expected), got
    assert expand_kernel(kernel.astype(np.float32), 3, 3, 1).dtype == np.float32, (
        f"a float32 kernel expands to {expand_kernel(kernel.astype(np.float32), 3, 3, 1).dtype}, expected float32"
    )
    a_full, b_full = expand([kernel[None]], [kernel[None]], [{"kernel": 2, "channels": 1, "shift": 1}], (3, 3))
    assert a_full.dtype == b_full.dtype == np.float64, (a_full.dtype, b_full.dtype)
    assert np.array_equal(a_full[0], expected), a_full[0]


def test_expand_adjoint_follows_the_dtype_rule_of_both_gradients():
    """float32 with float64 computes in float64; float16 alone in float32 (compute_dtype)."""
    specs = [{"kernel": 2, "channels": 1}]
    da, db = expand_adjoint(np.ones((1, 4, 4), np.float32), np.ones((1, 4, 4)), specs)
    assert da[0].dtype == db[0].dtype == np.float64, (da[0].dtype, db[0].dtype)
    da, db = expand_adjoint(np.ones((1, 4, 4), np.float16), np.ones((1, 4, 4), np.float16), specs)
    assert da[0].dtype == db[0].dtype == np.float32, (da[0].dtype, db[0].dtype)
    assert np.array_equal(da[0], np.full((1, 2, 2), 2.0)), da[0]  # each entry copied twice
