"""Internals of the chunked, tiled ``"patchwise"`` formulation (neocell_ref/neocell.py).

What is proven, each against an independent construction written here:

* the tiled layout: padding planes into the layout (:func:`_tile_pieces`,
  :func:`_zero_frame`, :class:`_TiledBuffer`) equals "pad with ``np.pad``-style slicing,
  then ``reshape``/``transpose``", and cropping back out is its exact inverse;
* a reused :class:`_TiledBuffer` stays correct across chunks of changing geometry and
  channel count, starting from garbage (NaN) memory; a buffer that forgets to rewrite
  its zero frame is caught (the test of the test);
* :func:`_patchwise_chunks` covers every channel once, never mixes shifts, keeps the
  size budget, and sizes each shift segment's chunks largest first;
* results do not depend on the chunking: one channel per chunk, a middle budget and
  a single chunk per segment give identical outputs and gradients, equal to the
  ``"blockdiag"`` formulation, for layers with uneven shifted sub-groups,
  ``shift_a != shift_b``, non-square kernels, partial tiles and 1x1 inputs;
* executed multiply-accumulates (``count_macs``) equal the closed forms documented in
  the docstrings, ``N·T_a·T_b·h_out·w_in·(h_in + w_out)`` per channel forward and
  ``N·T_a·T_b·h_out·w_in·(3·h_in + 2·w_out)`` backward, whatever the chunking.
"""

import math
from contextlib import contextmanager

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import neocell_ref.neocell as nc
from neocell_ref import neocell_backward, neocell_forward
from neocell_ref.instrument import count_macs
from neocell_ref.spec import parse_specs, shift_segments
from neocell_ref.testing import neocell_cases, relative_error

BUDGETS = (1, 3000, 1 << 40)  # one channel per chunk, a few channels, one chunk per segment


@contextmanager
def chunk_budget(budget):
    """Run the patch-wise method with another chunk budget (bytes per work buffer)."""
    saved = nc._CHUNK_BYTES
    nc._CHUNK_BYTES = budget
    try:
        yield
    finally:
        nc._CHUNK_BYTES = saved


# --------------------------------------------------------------------------------------
# independent constructions
# --------------------------------------------------------------------------------------
def tiled_by_padding(planes, k, tiles, width_padded, front_h, front_w):
    """The tiled layout built the obvious way: pad, split rows into tiles, transpose.

    ``tiled[c, j, n, i, q] = padded[n, c, i*k + j, q]`` with ``planes`` placed at
    ``(front_h, front_w)`` inside zeros of shape ``(N, m, tiles*k, width_padded)``.
    """
    n, m, length, width = planes.shape
    padded = np.zeros((n, m, tiles * k, width_padded), dtype=planes.dtype)
    padded[:, :, front_h:front_h + length, front_w:front_w + width] = planes
    return padded.reshape(n, m, tiles, k, width_padded).transpose(1, 3, 0, 2, 4)


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
    return dict(k=k, front_h=front_h, front_w=front_w, tiles=tiles,
                width_padded=front_w + width + spare_cols, shape=(batch, channels, length, width))


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
    buffer = nc._TiledBuffer(math.prod(shape), np.float64)
    buffer.data[:] = np.nan  # fresh memory may hold anything
    got = buffer.pad(planes, shape, geo["front_h"], geo["front_w"])
    expected = tiled_by_padding(planes, geo["k"], geo["tiles"], geo["width_padded"],
                                geo["front_h"], geo["front_w"])
    bad = np.argwhere(~(got == expected))
    assert bad.size == 0, (
        f"tiled layout differs at {len(bad)} positions, first (c, j, n, i, q) = "
        f"{tuple(bad[0])}: got {got[tuple(bad[0])]}, expected {expected[tuple(bad[0])]} ({geo})"
    )


@given(geo=tiled_geometries())
def test_cropping_out_of_the_tiled_layout_is_the_inverse_and_covers_every_element_once(geo):
    planes = numbered_planes(geo["shape"])
    n, m, _, _ = geo["shape"]
    tiled = tiled_by_padding(planes, geo["k"], geo["tiles"], geo["width_padded"],
                             geo["front_h"], geo["front_w"]).copy()
    back = np.full(geo["shape"], np.nan)
    nc._from_tiled(back, tiled, geo["front_h"], geo["front_w"])
    assert np.array_equal(back, planes), (
        f"crop(pad(planes)) != planes at {np.argwhere(back != planes)[:3].tolist()} ({geo})"
    )
    pieces = nc._tile_pieces(tiled, planes, geo["front_h"], geo["front_w"])
    covered = sum(p.size for _, p in pieces)
    assert covered == planes.size, (
        f"pieces cover {covered} values, the planes hold {planes.size}: some element is "
        f"copied twice or never ({geo})"
    )
    assert len(pieces) <= 3, f"{len(pieces)} pieces; at most 3 expected ({geo})"


def test_a_reused_buffer_stays_correct_across_changing_geometry_and_channel_counts():
    """Frame rewritten when the geometry changes or a chunk has more channels than before."""
    rng = np.random.default_rng(5)
    steps = [  # (m, k, tiles, width_padded, front_h, front_w, L, M)
        (3, 4, 4, 9, 3, 3, 13, 6),
        (2, 4, 4, 9, 3, 3, 13, 6),   # same geometry, fewer channels: frame still valid
        (3, 4, 4, 9, 3, 3, 13, 6),   # back to 3 channels: frame of channel 2 was kept
        (3, 4, 4, 9, 1, 1, 13, 6),   # other shift: other frame
        (4, 4, 4, 9, 1, 1, 13, 6),   # more channels than framed: must rewrite
        (2, 2, 7, 5, 0, 0, 13, 5),   # other kernel
        (1, 4, 4, 9, 3, 3, 13, 6),
    ]
    size = max(m * k * 2 * t * p for m, k, t, p, *_ in steps)
    buffer = nc._TiledBuffer(size, np.float64)
    buffer.data[:] = np.nan
    for step, (m, k, tiles, width_padded, fh, fw, length, width) in enumerate(steps):
        planes = rng.standard_normal((2, m, length, width))
        got = buffer.pad(planes, (m, k, 2, tiles, width_padded), fh, fw)
        expected = tiled_by_padding(planes, k, tiles, width_padded, fh, fw)
        assert np.array_equal(got, expected), (
            f"step {step} {steps[step]}: reused buffer differs at "
            f"{np.argwhere(~(got == expected))[:3].tolist()}"
        )


def test_the_reuse_test_catches_a_buffer_that_never_rewrites_its_frame(monkeypatch):
    """Test of the test above: with the frame written only once, garbage leaks through."""
    calls = []
    real = nc._zero_frame

    def first_time_only(*args):
        if not calls:
            real(*args)
        calls.append(args)

    monkeypatch.setattr(nc, "_zero_frame", first_time_only)
    with pytest.raises(AssertionError, match="reused buffer differs"):
        test_a_reused_buffer_stays_correct_across_changing_geometry_and_channel_counts()


# --------------------------------------------------------------------------------------
# chunking
# --------------------------------------------------------------------------------------
@given(case=neocell_cases(max_batch=3), budget=st.sampled_from((1, 500, 5000, 1 << 40)))
def test_chunks_cover_every_channel_once_within_one_shift_segment_and_the_budget(case, budget):
    groups = case.groups
    n, _, height, width = case.x.shape
    chunks = nc._patchwise_chunks(groups, n, height, width, 8, chunk_bytes=budget)
    seen = np.concatenate([np.arange(ch.chans.start, ch.chans.stop) for ch in chunks])
    assert np.array_equal(seen, np.arange(case.x.shape[1])), (
        f"chunks cover channels {seen.tolist()}, expected 0..{case.x.shape[1] - 1} once, in order"
    )
    offsets = np.cumsum([0] + [g.channels for g in groups])
    for ch in chunks:
        g = groups[ch.group]
        assert ch.chans.start - offsets[ch.group] == ch.local.start, f"local/absolute slices disagree in {ch}"
        shifts_a, shifts_b = g.channel_shifts()
        sa, sb = set(shifts_a[ch.local]), set(shifts_b[ch.local])
        assert len(sa) == 1 and len(sb) == 1, f"chunk {ch} mixes shifts {sa} x {sb}"
        (sa,), (sb,) = sa, sb
        front_a = g.h_in - sa if sa else 0
        front_b = g.w_in - sb if sb else 0
        assert (ch.front_a, ch.front_b) == (front_a, front_b), f"fronts of {ch} for shifts ({sa}, {sb})"
        assert ch.tiles_a == -(-(height + front_a) // g.h_in), f"tiles_a of {ch}, H={height}"
        assert ch.tiles_b == -(-(width + front_b) // g.w_in), f"tiles_b of {ch}, W={width}"
        m = ch.local.stop - ch.local.start
        per_channel = n * ch.tiles_a * ch.tiles_b * max(g.h_in, g.h_out) * max(g.w_in, g.w_out) * 8
        assert m == 1 or m * per_channel <= budget, f"chunk {ch} of {m * per_channel} B exceeds {budget} B"
    for g_index, g in enumerate(groups):
        for start, stop, _, _ in shift_segments(g):
            sizes = [ch.local.stop - ch.local.start for ch in chunks
                     if ch.group == g_index and start <= ch.local.start < stop]
            assert sizes == sorted(sizes, reverse=True), f"segment {start}:{stop} chunk sizes {sizes} not largest first"
            assert max(sizes) - min(sizes) <= 1, f"segment {start}:{stop} chunk sizes {sizes} not near-equal"


def _forward_backward(case, budget):
    specs, x, wa, wb, gy = case
    with chunk_budget(budget):
        y = neocell_forward(x, wa, wb, specs, method="patchwise")
        gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method="patchwise")
    return {"y": y, "grad_x": gx, **{f"grads_a[{i}]": a for i, a in enumerate(ga)},
            **{f"grads_b[{i}]": b for i, b in enumerate(gb)}}


@settings(max_examples=20)
@given(case=neocell_cases(max_batch=3), single=st.booleans())
def test_results_do_not_depend_on_the_chunking_and_equal_blockdiag(case, single):
    if single:
        case = case.astype(np.float32)
    results = [_forward_backward(case, b) for b in BUDGETS]
    for budget, result in zip(BUDGETS[:-1], results[:-1]):
        for name, value in result.items():
            other = results[-1][name]
            assert value.dtype == other.dtype and np.array_equal(value, other), (
                f"{name} with chunk budget {budget} B differs from one chunk per segment by "
                f"{relative_error(value, other):.3g} (relative) ({case})"
            )
    specs, x, wa, wb, gy = case
    dense = {"y": neocell_forward(x, wa, wb, specs, method="blockdiag")}
    gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method="blockdiag")
    dense.update({"grad_x": gx, **{f"grads_a[{i}]": a for i, a in enumerate(ga)},
                  **{f"grads_b[{i}]": b for i, b in enumerate(gb)}})
    tol = 1e-4 if single else 1e-12
    for name, value in results[0].items():
        err = relative_error(value, dense[name])
        assert err <= tol, f"{name}: one channel per chunk vs blockdiag, relative error {err:.3g} > {tol} ({case})"


@pytest.mark.parametrize("specs, size", [
    ([{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 10, "shift": 1}], (15, 15)),
    ([{"kernel_a": 5, "kernel_b": 3, "channels": 11, "shift_a": 2, "shift_b": 1}], (9, 7)),
    ([{"h_in": 2, "h_out": 1, "w_in": 3, "w_out": 2, "channels": 4}], (7, 8)),
    ([{"kernel": 2, "channels": 1, "shift": 1}, {"kernel": 7, "channels": 2}], (1, 1)),  # channel in the last sub-group
    ([{"kernel": 7, "channels": 8, "shift": 3}], (6, 6)),   # largest shift == H
], ids=["4+7 uneven", "shift_a!=shift_b", "down-sampling", "1x1", "max shift"])
def test_named_layers_equal_blockdiag_for_every_chunking(specs, size):
    rng = np.random.default_rng(11)
    groups = parse_specs(specs)
    channels = sum(g.channels for g in groups)
    x = rng.standard_normal((2, channels, *size))
    wa = [rng.standard_normal(g.shape_a) for g in groups]
    wb = [rng.standard_normal(g.shape_b) for g in groups]
    y_ref = neocell_forward(x, wa, wb, specs, method="blockdiag")
    gy = rng.standard_normal(y_ref.shape)
    gx_ref, ga_ref, gb_ref = neocell_backward(gy, x, wa, wb, specs, method="blockdiag")
    for budget in BUDGETS:
        with chunk_budget(budget):
            y = neocell_forward(x, wa, wb, specs, method="patchwise")
            gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method="patchwise")
        pairs = [("y", y, y_ref), ("grad_x", gx, gx_ref)]
        pairs += [(f"grads_a[{i}]", a, r) for i, (a, r) in enumerate(zip(ga, ga_ref))]
        pairs += [(f"grads_b[{i}]", b, r) for i, (b, r) in enumerate(zip(gb, gb_ref))]
        for name, got, ref in pairs:
            err = relative_error(got, ref)
            assert err <= 1e-12, f"{name} with chunk budget {budget} B: relative error {err:.3g} vs blockdiag"


def test_the_chunking_tests_catch_stale_padding_in_a_reused_buffer(monkeypatch):
    """Test of the tests above: an operator whose buffers keep the first chunk's frame fails."""
    calls = []
    real = nc._zero_frame

    def first_time_only(*args):
        if not calls:
            real(*args)
        calls.append(args)

    monkeypatch.setattr(nc, "_zero_frame", first_time_only)
    specs = [{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 10, "shift": 1}]
    with pytest.raises(AssertionError, match="relative error"):
        test_named_layers_equal_blockdiag_for_every_chunking(specs, (15, 15))


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
