"""Internals of the chunked, tiled ``"patchwise"`` formulation (neocell_ref/neocell_fast.py).

What is proven, each against an independent construction written here:

* the tiled layout: padding planes into the layout (:func:`_padded_pieces`,
  :func:`_tile_pieces`, :func:`_zero_frame`) equals "pad by slicing into zeros, then
  ``reshape``/``transpose``", and cropping back out is its exact inverse;
* a reused work buffer stays correct chunk after chunk and segment after segment
  (changing geometry, shrinking chunks), starting from garbage (NaN) memory (that a
  frame written only once is caught is shown in tests/meta/test_neocell_fast_mutants.py);
* :func:`_patchwise_plan` covers every (channel, sample) once, never mixes shifts,
  keeps the size budget (splitting samples only when one channel exceeds it), and
  never lets a chunk outgrow the zero frame laid out for an earlier one;
* results do not depend on the chunking: one plane per chunk, a middle budget and
  a single chunk per segment give the same outputs and input gradients within the
  rounding bound of the same sums (not bitwise: OpenBLAS's AVX-512 kernels round a
  row of a product differently with the number of rows in the call), kernel
  gradients up to the order of summation over samples, all equal to the
  ``"blockdiag"`` formulation, for layers with uneven shifted sub-groups,
  ``shift_a != shift_b``, non-square kernels, partial tiles and 1x1 inputs;
* executed multiply-accumulates (``count_macs``) equal the closed forms documented in
  the docstrings, ``N·T_a·T_b·h_out·w_in·(h_in + w_out)`` per channel forward and
  ``N·T_a·T_b·h_out·w_in·(3·h_in + 2·w_out)`` backward, whatever the chunking and
  the number of threads, plus in float32 each widened kernel gradient once more;
* widened kernel gradients (float32) are the direct sums: on small integers, where
  float32 is exact in any order, the backward equals the float64 plain loop bit for
  bit (that dropping one of the widened product's blocks is caught is shown in
  tests/meta/test_neocell_fast_mutants.py);
* the chunks split over threads (``NEOCELL_THREADS``): every result with 2 and 3
  threads is bitwise the single-threaded one, for every chunking (many small chunks,
  odd counts, samples split), the thread shares cover every chunk once in plan
  order, keep a channel's split samples in one thread, and fall back to the plain
  loop for one thread, small layers and calls from inside a pool task (that a lost
  share is caught is shown in tests/meta/test_neocell_fast_mutants.py).
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.neocell_fast import (
    BUDGETS,
    WIDENED_SPECS,
    assert_chunkings_equal_blockdiag,
    assert_float32_gradients_exact,
    assert_reused_buffer_stays_correct,
    assert_threads_bit_identical,
    chunk_budget,
    threads_at_any_size,
    tiled_by_padding,
)

import neocell_ref.neocell_fast as nc
from neocell_ref import _parallel as parallel
from neocell_ref import neocell_backward, neocell_forward
from neocell_ref.instrument import count_macs
from neocell_ref.spec import parse_specs
from neocell_ref.verify.testing import neocell_cases
from neocell_ref.verify.tolerances import relative_error, sum_tolerance

# --------------------------------------------------------------------------------------
# independent constructions
# --------------------------------------------------------------------------------------


@st.composite
def tiled_geometries(draw):
    """A plane stack and a tiled geometry that holds it (front padding below the tile size)."""
    k = draw(st.integers(1, 7), label="tile height k")
    front_h = draw(st.integers(0, k - 1), label="front_h")
    length = draw(st.integers(1, 20), label="plane rows L")
    width = draw(st.integers(1, 9), label="plane columns M")
    front_w = draw(st.integers(0, 6), label="front_w")
    spare_tiles = draw(st.integers(0, 2), label="extra tiles beyond the minimum")
    spare_cols = draw(st.integers(0, 4), label="extra columns beyond the plane")
    tiles = -(-(front_h + length) // k) + spare_tiles
    batch = draw(st.integers(1, 3), label="N")
    channels = draw(st.integers(1, 4), label="m")
    return dict(
        k=k,
        front_h=front_h,
        front_w=front_w,
        tiles=tiles,
        width_padded=front_w + width + spare_cols,
        shape=(batch, channels, length, width),
    )


def numbered_planes(shape, dtype=np.float64):
    """Distinct non-zero values, so a misplaced or missing element cannot go unnoticed."""
    return (np.arange(math.prod(shape), dtype=dtype) + 1).reshape(shape)


# --------------------------------------------------------------------------------------
# the tiled layout
# --------------------------------------------------------------------------------------
@given(geo=tiled_geometries())
def test_padding_into_the_tiled_layout_matches_pad_reshape_transpose(geo):
    planes = numbered_planes(geo["shape"])
    n, m, _, _ = geo["shape"]
    shape = (m, geo["k"], n, geo["tiles"], geo["width_padded"])
    buffer = np.full(math.prod(shape), np.nan)  # fresh memory may hold anything
    got, pieces = nc._padded_pieces(buffer, shape, planes, geo["front_h"], geo["front_w"])
    for t, p in pieces:
        t[...] = p
    expected = tiled_by_padding(planes, geo["k"], geo["tiles"], geo["width_padded"], geo["front_h"], geo["front_w"])
    bad = np.argwhere(~(got == expected))
    assert bad.size == 0, (
        f"tiled layout differs at {len(bad)} positions, first (c, j, n, i, q) = "
        f"{tuple(bad[0])}: got {got[tuple(bad[0])]}, expected {expected[tuple(bad[0])]} ({geo})"
    )


@given(geo=tiled_geometries())
def test_cropping_out_of_the_tiled_layout_is_the_inverse_and_covers_every_element_once(geo):
    planes = numbered_planes(geo["shape"])
    n, m, _, _ = geo["shape"]
    tiled = tiled_by_padding(planes, geo["k"], geo["tiles"], geo["width_padded"], geo["front_h"], geo["front_w"]).copy()
    back = np.full(geo["shape"], np.nan)
    for t, p in nc._tile_pieces(tiled, back, geo["front_h"], geo["front_w"]):
        p[...] = t  # crop: copy every piece out of the layout
    assert np.array_equal(back, planes), (
        f"crop(pad(planes)) != planes at {np.argwhere(back != planes)[:3].tolist()} ({geo})"
    )
    pieces = nc._tile_pieces(tiled, planes, geo["front_h"], geo["front_w"])
    covered = sum(p.size for _, p in pieces)
    assert covered == planes.size, (
        f"pieces cover {covered} values, the planes hold {planes.size}: some element is copied twice or never ({geo})"
    )
    assert len(pieces) <= 3, f"{len(pieces)} pieces; at most 3 expected ({geo})"


def test_a_reused_buffer_stays_correct_chunk_after_chunk_and_segment_after_segment():
    """The forward's pattern: frame once per segment, then every chunk copied into a prefix."""
    assert_reused_buffer_stays_correct()


# --------------------------------------------------------------------------------------
# chunking
# --------------------------------------------------------------------------------------
@given(case=neocell_cases(max_batch=3), budget=st.sampled_from((1, 500, 5000, 1 << 40)))
def test_plan_covers_every_plane_once_within_one_shift_segment_and_the_budget(case, budget):
    groups = case.groups
    n, channels, height, width = case.x.shape
    plan = nc._patchwise_plan(groups, n, height, width, 8, budget)
    covered = np.zeros((channels, n), dtype=int)
    offsets = np.cumsum([0] + [g.channels for g in groups])
    for seg in plan:
        g = groups[seg.group]
        assert seg.chans.start - offsets[seg.group] == seg.local.start, f"local/absolute slices disagree in {seg}"
        shifts_a, shifts_b = g.channel_shifts()
        sa, sb = set(shifts_a[seg.local]), set(shifts_b[seg.local])
        assert len(sa) == 1 and len(sb) == 1, f"segment {seg} mixes shifts {sa} x {sb}"
        (sa,), (sb,) = sa, sb
        front_a = g.h_in - sa if sa else 0
        front_b = g.w_in - sb if sb else 0
        assert (seg.front_a, seg.front_b) == (front_a, front_b), f"fronts of {seg} for shifts ({sa}, {sb})"
        assert (seg.crop_a, seg.crop_b) == (g.h_out - sa if sa else 0, g.w_out - sb if sb else 0), (
            f"crops of {seg} for shifts ({sa}, {sb})"
        )
        assert seg.tiles_a == -(-(height + front_a) // g.h_in), f"tiles_a of {seg}, H={height}"
        assert seg.tiles_b == -(-(width + front_b) // g.w_in), f"tiles_b of {seg}, W={width}"
        per_plane = seg.tiles_a * seg.tiles_b * max(g.h_in, g.h_out) * max(g.w_in, g.w_out) * 8
        previous = None
        for c0, c1, n0, n1 in seg.chunks:
            covered[seg.chans.start + c0 : seg.chans.start + c1, n0:n1] += 1
            m, samples = c1 - c0, n1 - n0
            assert m * samples == 1 or m * samples * per_plane <= budget, (
                f"chunk {(c0, c1, n0, n1)} of {m * samples * per_plane} B exceeds {budget} B in {seg}"
            )
            assert samples == n or m == 1, f"chunk {(c0, c1, n0, n1)} splits samples of several channels"
            if previous is not None and previous[1] == samples:
                assert m <= previous[0], (
                    f"chunk {(c0, c1, n0, n1)} has more channels than an earlier chunk of the same "
                    f"sample count in {seg}: the zero frame laid out for that one would not cover it"
                )
            previous = (m, samples) if previous is None or previous[1] != samples else previous
    assert (covered == 1).all(), f"(channel, sample) pairs covered {covered.tolist()} times, expected once each"


def test_plan_splits_samples_only_when_one_channel_exceeds_the_budget():
    """A hand example: 4x4 kernels, 8x8 planes (2x2 tiles of 16: 64 values = 512 B in float64)."""
    groups = parse_specs([{"kernel": 4, "channels": 3}])
    (seg,) = nc._patchwise_plan(groups, 5, 8, 8, 8, 3 * 5 * 512)
    assert seg.chunks == ((0, 3, 0, 5),), f"everything fits one chunk, got {seg.chunks}"
    (seg,) = nc._patchwise_plan(groups, 5, 8, 8, 8, 3 * 5 * 512 - 1)
    assert seg.chunks == ((0, 2, 0, 5), (2, 3, 0, 5)), f"two channels per chunk, got {seg.chunks}"
    (seg,) = nc._patchwise_plan(groups, 5, 8, 8, 8, 3 * 512 - 1)
    expected = tuple((c, c + 1, n0, n1) for n0, n1 in ((0, 2), (2, 4), (4, 5)) for c in range(3))
    assert seg.chunks == expected, f"one channel, at most two samples per chunk, got {seg.chunks}"


def _forward_backward(case, budget):
    specs, x, wa, wb, gy = case
    with chunk_budget(budget):
        y = neocell_forward(x, wa, wb, specs, method="patchwise")
        gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method="patchwise")
    return {
        "y": y,
        "grad_x": gx,
        **{f"grads_a[{i}]": a for i, a in enumerate(ga)},
        **{f"grads_b[{i}]": b for i, b in enumerate(gb)},
    }


@settings(max_examples=20)
@given(case=neocell_cases(max_batch=3), single=st.booleans())
def test_results_do_not_depend_on_the_chunking_and_equal_blockdiag(case, single):
    if single:
        case = case.astype(np.float32)
    results = [_forward_backward(case, b) for b in BUDGETS]
    tol = 1e-4 if single else 1e-12
    # The same sums on absolute values: each output's magnitude bound, and the longest
    # chain of sums behind any output (one along each axis of a tile).
    specs, x, wa, wb, gy = case
    magnitude = {
        "y": neocell_forward(abs(x), [abs(a) for a in wa], [abs(b) for b in wb], specs, method="blockdiag"),
        "grad_x": neocell_backward(
            abs(gy), abs(x), [abs(a) for a in wa], [abs(b) for b in wb], specs, method="blockdiag"
        )[0],
    }
    length = max(max(g.h_in, g.h_out) + max(g.w_in, g.w_out) for g in parse_specs(specs))
    for budget, result in zip(BUDGETS[:-1], results[:-1]):
        for name, value in result.items():
            other = results[-1][name]
            assert value.dtype == other.dtype, f"{name}: dtype {value.dtype} != {other.dtype}"
            if name in ("y", "grad_x"):
                # Every output value is the same sums of products, only grouped into
                # other BLAS calls: equal within twice the rounding bound of those sums
                # (each is within (n + 1)·u·bound of the exact value). Not bitwise: with
                # AVX-512, OpenBLAS rounds a row of a product differently depending on
                # how many rows the call has (seen at 1e-16 on a 1x1 input).
                allowed = magnitude[name] * sum_tolerance(value.dtype, length)["rtol"]
                excess = np.abs(value - other) - allowed
                assert (excess <= 0).all(), (
                    f"{name} with chunk budget {budget} B differs from one chunk per segment "
                    f"beyond the rounding bound at {np.argwhere(excess > 0)[:3].tolist()} (first "
                    f"positions), by up to {excess.max():.3g} over it ({case})"
                )
            else:
                # Kernel gradients sum over samples; split samples change the summation order.
                err = relative_error(value, other)
                assert err <= tol, (
                    f"{name} with chunk budget {budget} B differs from one chunk per segment by "
                    f"{err:.3g} (relative) > {tol} ({case})"
                )
    specs, x, wa, wb, gy = case
    dense = {"y": neocell_forward(x, wa, wb, specs, method="blockdiag")}
    gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method="blockdiag")
    dense.update(
        {
            "grad_x": gx,
            **{f"grads_a[{i}]": a for i, a in enumerate(ga)},
            **{f"grads_b[{i}]": b for i, b in enumerate(gb)},
        }
    )
    for name, value in results[0].items():
        err = relative_error(value, dense[name])
        assert err <= tol, f"{name}: one channel per chunk vs blockdiag, relative error {err:.3g} > {tol} ({case})"


@pytest.mark.parametrize(
    "specs, size",
    [
        ([{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 10, "shift": 1}], (15, 15)),
        ([{"kernel_a": 5, "kernel_b": 3, "channels": 11, "shift_a": 2, "shift_b": 1}], (9, 7)),
        ([{"h_in": 2, "h_out": 1, "w_in": 3, "w_out": 2, "channels": 4}], (7, 8)),
        (
            [{"kernel": 2, "channels": 1, "shift": 1}, {"kernel": 7, "channels": 2}],
            (1, 1),
        ),  # channel in the last sub-group
        ([{"kernel": 7, "channels": 8, "shift": 3}], (6, 6)),  # largest shift == H
    ],
    ids=["4+7 uneven", "shift_a!=shift_b", "down-sampling", "1x1", "max shift"],
)
def test_named_layers_equal_blockdiag_for_every_chunking(specs, size):
    assert_chunkings_equal_blockdiag(specs, size)


# --------------------------------------------------------------------------------------
# executed MACs: the documented closed form
# --------------------------------------------------------------------------------------
def closed_form_macs(groups, batch, height, width):
    """Per channel, from its own shifts: ``N·T_a·T_b·h_out·w_in·(h_in + w_out)`` and
    ``N·T_a·T_b·h_out·w_in·(3·h_in + 2·w_out)`` (forward, backward)."""
    forward = backward = 0
    for g in groups:
        shifts_a, shifts_b = g.channel_shifts()
        for sa, sb in zip(shifts_a.tolist(), shifts_b.tolist()):
            tiles_a = -(-(height + (g.h_in - sa if sa else 0)) // g.h_in)
            tiles_b = -(-(width + (g.w_in - sb if sb else 0)) // g.w_in)
            common = batch * tiles_a * tiles_b * g.h_out * g.w_in
            forward += common * (g.h_in + g.w_out)
            backward += common * (3 * g.h_in + 2 * g.w_out)
    return forward, backward


@settings(max_examples=15)
@given(case=neocell_cases(max_batch=3), budget=st.sampled_from(BUDGETS))
def test_executed_macs_equal_the_documented_closed_form(case, budget):
    specs, x, wa, wb, gy = case
    n, _, height, width = x.shape
    forward, backward = closed_form_macs(case.groups, n, height, width)
    with chunk_budget(budget), count_macs() as fwd:
        neocell_forward(x, wa, wb, specs, method="patchwise")
    with chunk_budget(budget), count_macs() as bwd:
        neocell_backward(gy, x, wa, wb, specs, method="patchwise")
    assert fwd.by_tag() == {"patchwise": forward}, (
        f"forward executed {fwd.by_tag()}, closed form {forward} (budget {budget} B, {case})"
    )
    assert bwd.by_tag() == {"patchwise": backward}, (
        f"backward executed {bwd.by_tag()}, closed form {backward} (budget {budget} B, {case})"
    )


@settings(max_examples=10)
@given(case=neocell_cases(max_batch=3), budget=st.sampled_from(BUDGETS))
def test_executed_macs_do_not_depend_on_the_thread_count(case, budget):
    specs, x, wa, wb, gy = case
    n, _, height, width = x.shape
    forward, backward = closed_form_macs(case.groups, n, height, width)
    with chunk_budget(budget), threads_at_any_size(3), count_macs() as fwd:
        neocell_forward(x, wa, wb, specs, method="patchwise")
    with chunk_budget(budget), threads_at_any_size(3), count_macs() as bwd:
        neocell_backward(gy, x, wa, wb, specs, method="patchwise")
    assert (fwd.by_tag(), bwd.by_tag()) == ({"patchwise": forward}, {"patchwise": backward}), (
        f"3 threads executed {fwd.by_tag()} / {bwd.by_tag()}, closed form {forward} / {backward} ({case})"
    )


def widening_extra_macs(groups, batch, height, width, samples_per_chunk):
    """The MACs a float32 backward executes beyond :func:`closed_form_macs`: each widened
    kernel gradient once more (docs of ``patchwise_backward``), by the rule of
    ``_widened`` restated: both result sides >= 3, not both multiples of 4, an even
    number of summed terms in the chunk (``R = h_out·n·T_a·T_b`` rows for ``dB``,
    ``L = n·T_a·T_b·w_in`` columns for ``dA``, ``n`` the chunk's samples)."""

    def widened(a, b, terms):
        return min(a, b) >= 3 and (a % 4 or b % 4) and terms % 2 == 0

    extra = 0
    for g in groups:
        shifts_a, shifts_b = g.channel_shifts()
        for sa, sb in zip(shifts_a.tolist(), shifts_b.tolist()):
            tiles_a = -(-(height + (g.h_in - sa if sa else 0)) // g.h_in)
            tiles_b = -(-(width + (g.w_in - sb if sb else 0)) // g.w_in)
            for n in samples_per_chunk:
                rows, cols = g.h_out * n * tiles_a * tiles_b, n * tiles_a * tiles_b * g.w_in
                extra += rows * g.w_in * g.w_out if widened(g.w_in, g.w_out, rows) else 0
                extra += cols * g.h_out * g.h_in if widened(g.h_out, g.h_in, cols) else 0
    return extra


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("budget", [1, 1 << 40], ids=["one sample per chunk", "all samples per chunk"])
def test_float32_backward_executes_each_widened_kernel_gradient_twice(batch, budget):
    """Same closed form as in float64, plus the widened kernel gradients' thrown-away blocks."""
    specs = WIDENED_SPECS
    groups = parse_specs(specs)
    case = neocell_case(specs, (batch, sum(g.channels for g in groups), 15, 15), np.float32)
    forward, backward = closed_form_macs(groups, batch, 15, 15)
    extra = widening_extra_macs(groups, batch, 15, 15, [1] * batch if budget == 1 else [batch])
    assert extra > 0, "the case must widen some kernel gradient"
    with chunk_budget(budget), count_macs() as bwd:
        neocell_backward(case[4], case[1], case[2], case[3], specs)
    assert bwd.by_tag() == {"patchwise": backward + extra}, (
        f"float32 backward executed {bwd.by_tag()}, closed form {backward} + widened {extra} (batch {batch})"
    )


@pytest.mark.parametrize("batch", [1, 2, 3])
@pytest.mark.parametrize("budget", [1, 3000, 1 << 40], ids=["one sample per chunk", "a few channels", "one chunk"])
def test_float32_kernel_gradients_are_exact_on_integers_widened_or_not(monkeypatch, batch, budget):
    """Independent source: the float64 plain loop, exact on small integers (see the helper)."""
    decisions = []
    real = nc._widened

    def spy(*args):
        decisions.append(real(*args))
        return decisions[-1]

    monkeypatch.setattr(nc, "_widened", spy)
    assert_float32_gradients_exact(WIDENED_SPECS, (15, 15), batch, budget)
    assert True in decisions and False in decisions, f"widened and direct products both exercised: {decisions}"


# --------------------------------------------------------------------------------------
# threads: the same chunks, the same operations, bitwise the same results
# --------------------------------------------------------------------------------------
@settings(max_examples=20)
@given(case=neocell_cases(max_batch=3), budget=st.sampled_from(BUDGETS), single=st.booleans())
def test_results_with_2_and_3_threads_are_bitwise_those_of_one(case, budget, single):
    assert_threads_bit_identical(case.astype(np.float32) if single else case, budget)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("budget", [1, 5000, 1 << 40], ids=["one plane per chunk", "odd chunk counts", "one chunk"])
def test_mixed_shifted_groups_with_threads_are_bitwise_those_of_one(dtype, budget):
    specs = [
        {"kernel": 4, "channels": 9, "shift": 1},
        {"kernel": 7, "channels": 13, "shift": 2},
        {"kernel_a": 5, "kernel_b": 3, "channels": 5, "shift_a": 2, "shift_b": 1},
    ]
    for batch in (1, 3):
        case = neocell_case(specs, (batch, 27, 15, 15), dtype)
        assert_threads_bit_identical(case, budget)


def neocell_case(specs, shape, dtype):
    """A :class:`~neocell_ref.verify.testing.NeoCellCase`-like tuple with seeded normal arrays."""
    rng = np.random.default_rng(17)
    groups = parse_specs(specs)
    x = rng.standard_normal(shape).astype(dtype)
    wa = [rng.standard_normal(g.shape_a).astype(dtype) for g in groups]
    wb = [rng.standard_normal(g.shape_b).astype(dtype) for g in groups]
    gy = rng.standard_normal(neocell_forward(x, wa, wb, specs).shape).astype(dtype)
    return specs, x, wa, wb, gy


@pytest.mark.parametrize("budget", BUDGETS[:2])
@pytest.mark.parametrize("parts", [2, 3, 7])
def test_thread_shares_cover_every_chunk_once_in_plan_order_with_whole_split_channels(budget, parts):
    specs = parse_specs([{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 5, "shift": 3}])
    plan = nc._patchwise_plan(specs, 3, 15, 15, 8, budget)
    shares = nc._shares(specs, 3, 15, 15, 8, budget, parts, 0, 1)
    assert shares is not None and len(shares) == parts, f"{parts} shares expected, got {shares and len(shares)}"
    seen = {}  # chunk (absolute channels, samples) -> thread
    for t, share in enumerate(shares):
        for seg, chunks in share:
            order = [seg.chunks.index(c) for c in chunks]
            assert order == sorted(order), f"thread {t}: chunks of segment {seg.chans} out of plan order: {chunks}"
            for c0, c1, n0, n1 in chunks:
                key = (seg.chans.start + c0, seg.chans.start + c1, n0, n1)
                assert key not in seen, f"chunk {key} in threads {seen[key]} and {t}"
                seen[key] = t
    for channel in {c0 for c0, _, n0, n1 in seen if (n0, n1) != (0, 3)}:  # samples split
        owners = {t for (c0, _, n0, n1), t in seen.items() if c0 == channel}
        assert len(owners) == 1, f"channel {channel}'s sample chunks are in threads {owners}"
    expected = {(s.chans.start + c0, s.chans.start + c1, n0, n1) for s in plan for c0, c1, n0, n1 in s.chunks}
    assert set(seen) == expected, f"shares miss {expected - set(seen)}"


@pytest.mark.parametrize("direction", ["forward", "backward"])
@pytest.mark.parametrize("parts", [2, 3])
def test_thread_shares_balance_the_cost_of_their_direction(direction, parts):
    """Each share's work (chunk costs in the pass's direction: kernel-7 chunks cost more
    per value than kernel-4 ones, far more in the backward) is within one job's work of
    an equal part; the forward's and the backward's shares of a "4+7" layer differ."""
    specs = parse_specs([{"kernel": 4, "channels": 48, "shift": 1}, {"kernel": 7, "channels": 48, "shift": 1}])
    args = (specs, 8, 56, 56, 4, nc._CHUNK_BYTES, parts, 0, 1)
    shares = nc._shares(*args, direction)
    spec_of = {seg.chans.start: specs[seg.group] for share in shares for seg, _ in share}
    work = [
        sum(nc._chunk_cost(seg, spec_of[seg.chans.start], c, direction) for seg, cs in sh for c in cs) for sh in shares
    ]
    largest = max(
        nc._chunk_cost(seg, spec_of[seg.chans.start], c, direction) for sh in shares for seg, cs in sh for c in cs
    )
    equal = sum(work) / parts
    assert all(abs(w - equal) <= largest for w in work), f"{direction}, {parts} shares: work {work}, equal {equal}"
    other = nc._shares(*args, "backward" if direction == "forward" else "forward")
    assert other != shares, "forward and backward shares should differ for a 4+7 layer"


def test_one_thread_small_layers_and_pool_tasks_run_the_plain_loop(monkeypatch):
    specs = parse_specs([{"kernel": 4, "channels": 96, "shift": 1}])
    plan = nc._patchwise_plan(specs, 8, 56, 56, 4, nc._CHUNK_BYTES)
    whole = (tuple((seg, seg.chunks) for seg in plan),)
    monkeypatch.setenv("NEOCELL_THREADS", "2")
    assert len(nc._work(specs, 8, 56, 56, 4)[1]) == 2, "an 8x96x56x56 layer is split over 2 threads"
    assert nc._work(specs, 1, 14, 14, 4)[1] == (
        tuple((seg, seg.chunks) for seg in nc._patchwise_plan(specs, 1, 14, 14, 4, nc._CHUNK_BYTES)),
    ), "a 1x96x14x14 layer is too small for threads"
    (inside,) = parallel.run([lambda: nc._work(specs, 8, 56, 56, 4)[1], lambda: None])[:1]
    assert inside == whole, "inside a pool task the patch-wise loop must not use the pool again"
    monkeypatch.setenv("NEOCELL_THREADS", "1")
    assert nc._work(specs, 8, 56, 56, 4)[1] == whole, "NEOCELL_THREADS=1: one share, the plan in order"
