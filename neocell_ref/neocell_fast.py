"""The fast path of the NeoCell operator: the default ``"patchwise"`` formulation.

:func:`patchwise_forward` and :func:`patchwise_backward` compute exactly what the plain
formulations of :mod:`neocell_ref.neocell` compute (``"loop"``, the patch view tile by
tile, and ``"blockdiag"``), following SPEC section 3's equivalent view (pad, map every
tile, crop) with the geometry of :func:`neocell_ref.expansion.padding_view`, but arranged
for speed: a tiled layout in which each axis is one matrix product per channel, and a
chunk planner that keeps the work buffers in cache and reuses them. Nothing here is
needed to understand the operator; the tests prove it equal to the plain formulations
(tests/test_neocell.py, tests/test_neocell_fast.py).

Both functions take operands already validated and cast by the dispatchers
:func:`neocell_ref.neocell_forward` / :func:`neocell_ref.neocell_backward`
(``method="patchwise"``, the default), with the signature of the other formulations.

Threads. The chunks of a layer are independent (the forward writes disjoint outputs),
so they are split over the worker threads of :mod:`neocell_ref._parallel`
(``NEOCELL_THREADS``; one thread when it or ``OPENBLAS_NUM_THREADS`` is 1) with NumPy's
BLAS at one thread meanwhile. Each thread gets a contiguous run of whole chunks in plan
order (:func:`_shares`, balanced by the chunks' cost in the pass's direction:
:func:`_chunk_cost`), its own work buffers and its own zero frames, and runs on
them exactly the operations of the single-threaded loop; a channel whose samples are
split over several chunks goes to one thread whole, so the backward sums its kernel
gradients in the same order. Results are therefore bitwise those of one thread with
BLAS at one thread, for any thread count and any scheduling. (A run kept in one
thread, ``NEOCELL_THREADS=1``, leaves BLAS at its own thread count; a multi-threaded
BLAS may then sum a long kernel-gradient product in another order, so its gradients
agree with the threaded ones to rounding, not bitwise.) Layers with fewer than
:data:`_MIN_VALUES_PER_THREAD` tiled input values or :data:`_CHUNKS_PER_THREAD` chunks
per thread, and calls from inside a task of the pool (no nested pool use), run the
plain loop in the calling thread. With threads, the backward's long kernel-gradient
products go through :func:`neocell_ref.instrument.stacked_dot`, since ``np.matmul``
keeps the GIL for products with so few output values (:func:`_kernel_product`).

Kernel gradients. In float32, a kernel gradient with a narrow result (a side odd or
6: kernel 7) is computed two terms side by side, a product of twice the width whose
diagonal blocks are summed (:func:`_widened`): twice the MACs, but faster with BLAS.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from . import _parallel as parallel
from .expansion import channel_runs, padding_view
from .instrument import matmul, outer, stacked_dot

__all__ = ["patchwise_forward", "patchwise_backward"]


# --------------------------------------------------------------------------------------
# "patchwise": SPEC 3's padding view on both axes, in a tiled layout, few large products
# --------------------------------------------------------------------------------------
# Layout. A run of ``m`` channels that share one kernel size and one shift pair is
# padded (SPEC 3, the equivalent view) and stored *tiled*:
#
#     tiled[c, j, n, i, q] = padded[n, c, i*k + j, q]      shape (m, k, N, T, P)
#
# with ``k`` the tile height, ``T`` the number of tiles along the height and ``P`` the
# padded width. Row ``j`` of every tile of every sample of channel ``c`` then lies in
# one contiguous run of ``N*T*P`` values, so
#
# * the left product of a tile, ``A @ tile``, for all tiles and samples of a channel
#   is ONE matrix product ``A_c (h_out, h_in) @ X_c (h_in, N*T*P)``;
# * the right product of a tile, ``tile @ B``, is ONE product of the rows cut into
#   slabs of ``w_in``: ``(h_out*N*T*P/w_in, w_in) @ B_c (w_in, w_out)``;
#
# and the result comes out in the same tiled layout with ``k = h_out``. Going out of
# the layout is one strided copy (cropping included); going in is two: the chunk's
# planes into a contiguous staging buffer, then a strided copy (padding included) from
# there (:func:`_stage`).
#
# Speed (measured, see benchmarks/README.md): with kernels of 4 or 7 every step moves
# far more data than it computes, so the cost is the passes over the data: the copies
# in, two products, one strided copy out. Channels are processed in chunks whose work
# buffers fit in the L2 cache and are reused from chunk to chunk, which roughly halves
# the time against whole-layer buffers.

#: Size in bytes of the largest work buffer of one chunk (a cache-size heuristic: the
#: L2 cache of the benchmark machine's cores). 256 KiB until the copies in were staged
#: (:func:`_stage`); since then 512 KiB measured 0.91-0.99x of its time in interleaved
#: A/B (8x96x56² ``"4+7"``, forward and backward, one and two threads, median of 30
#: per-round ratios), 28² and 14² layers 0.89-1.01x; 1 and 2 MiB no better.
_CHUNK_BYTES = 1 << 19

#: Threads are used only for layers of at least this many input values per thread
#: (summed over all channels and samples) and at least :data:`_CHUNKS_PER_THREAD`
#: chunks per thread: below that, starting the threads costs more than it saves.
_MIN_VALUES_PER_THREAD = 1 << 19
_CHUNKS_PER_THREAD = 2


class _Segment(NamedTuple):
    """Consecutive channels of one group with one shift pair (one padding geometry).

    ``group``: index of the group; ``local``/``chans``: channel slice in the group's
    weights / in ``x``; ``front_*``, ``tiles_*``, ``crop_*``: :func:`neocell_ref.expansion.padding_view`
    of the height (``a``) and width (``b``) axes; ``chunks``: ``(c0, c1, n0, n1)``
    channel ranges (relative to the segment) and sample ranges, processed one at a
    time, in an order where the sample count ``n1 - n0`` changes at most once and
    the channel count never grows while it stays the same.
    """

    group: int
    local: slice
    chans: slice
    front_a: int
    tiles_a: int
    crop_a: int
    front_b: int
    tiles_b: int
    crop_b: int
    chunks: tuple


def _near_equal(count, parts):
    """``(start, stop)`` of ``parts`` near-equal consecutive ranges of ``count``, largest first."""
    bounds = [0]
    for p in range(parts):
        bounds.append(bounds[-1] + count // parts + (p < count % parts))
    return list(zip(bounds[:-1], bounds[1:]))


@lru_cache(maxsize=256)
def _patchwise_plan(specs, batch, height, width, itemsize, chunk_bytes):
    """Cut the layer into :class:`_Segment` s and each segment into chunks.

    A chunk's largest work buffer holds at most ``chunk_bytes``: a chunk is as many
    channels (with all samples) as fit, or, when one channel with all samples does
    not fit, one channel with as many samples as fit (at least one sample: a single
    huge plane still works). Besides keeping the work in cache, this keeps the
    products small: a chunk's product is one BLAS call per channel, whatever the
    number of channels in the chunk, so only chunks of one channel (planes too large
    for two) make products that grow with the budget (8x112², kernel 7, 512 KiB: one
    channel with its 8 samples, 7x7 by 7x16184). When :mod:`neocell_ref._parallel`
    runs the chunks, BLAS is held at one thread meanwhile. Ranges are near-equal,
    largest first. Pure function of its arguments, hence cached: planning costs
    Python time otherwise.

    Parameters
    ----------
    specs : tuple of GroupSpec
    batch, height, width : int
        ``N``, ``H``, ``W`` of the input.
    itemsize : int
        Bytes per value.
    chunk_bytes : int

    Returns
    -------
    tuple of _Segment
        In channel order; their chunks cover every (channel, sample) exactly once.
    """
    segments = []
    for g, local, chans, sa, sb in channel_runs(specs):
        spec = specs[g]
        fa, ta, ca = padding_view(height, spec.h_in, spec.h_out, sa)
        fb, tb, cb = padding_view(width, spec.w_in, spec.w_out, sb)
        per_plane = ta * tb * max(spec.h_in, spec.h_out) * max(spec.w_in, spec.w_out) * itemsize
        count = local.stop - local.start
        if batch * per_plane <= chunk_bytes:
            channel_ranges = _near_equal(count, -(-count // (chunk_bytes // (batch * per_plane))))
            chunks = [(c0, c1, 0, batch) for c0, c1 in channel_ranges]
        else:
            sample_ranges = _near_equal(batch, -(-batch // max(1, chunk_bytes // per_plane)))
            chunks = [(c, c + 1, n0, n1) for n0, n1 in sample_ranges for c in range(count)]
        segments.append(_Segment(g, local, chans, fa, ta, ca, fb, tb, cb, tuple(chunks)))
    return tuple(segments)


def _tiled_shapes(segment, spec, channels, samples):
    """Shapes of the tiled arrays of ``channels`` channels and ``samples`` samples of a segment.

    ``X``: (m, h_in, n, T_a, T_b*w_in); ``Z = A X``: (m, h_out, n, T_a, T_b*w_in);
    ``Y = Z B``: (m, h_out, n, T_a, T_b*w_out).
    """
    m, n, ta, tb = channels, samples, segment.tiles_a, segment.tiles_b
    return (
        (m, spec.h_in, n, ta, tb * spec.w_in),
        (m, spec.h_out, n, ta, tb * spec.w_in),
        (m, spec.h_out, n, ta, tb * spec.w_out),
    )


def _buffer_sizes(plan, specs, plane_values):
    """Largest ``(X, Z, Y, S)`` sizes over all chunks: one work buffer of each. ``S`` is
    the staging buffer (:func:`_stage`): a chunk's ``(sample, channel)`` planes of
    ``plane_values`` values each (the larger of the input's and the output's plane)."""
    sizes = [0, 0, 0, 0]
    for seg in plan:
        for c0, c1, n0, n1 in seg.chunks:
            shapes = _tiled_shapes(seg, specs[seg.group], c1 - c0, n1 - n0)
            for i, size in enumerate([*map(math.prod, shapes), (c1 - c0) * (n1 - n0) * plane_values]):
                sizes[i] = max(sizes[i], size)
    return tuple(sizes)


def _stage(buffer, planes, samples, channels):
    """A contiguous ``(samples, channels, L, M)`` view at the start of ``buffer`` for a
    chunk's share of ``planes`` (N, C, L, M).

    A chunk goes into the tiled layout in two copies: its planes into this view with
    ``np.copyto`` (``samples`` contiguous runs of ``channels*L*M`` values), then from
    the view into the layout with :func:`_tile_pieces`. The direct strided copy from
    ``planes`` took longer than both: NumPy iterates an assignment in the order of
    the destination, which for the tiled layout reads one image row (``M`` values)
    from each sample's plane in turn, from memory; the staged copy reads the planes
    as a stream and tiles them from the cache. Interleaved A/B against the direct
    copy, median of 30 per-round ratios, 8x96 channels, ``"4+7"`` shift 1, one thread:
    56² forward 0.89x, forward + backward 0.94x; 112² 0.86x and 0.87x (two threads:
    0.95x, 0.99x; 0.90x, 0.88x). The values copied are the same, so are the results.
    """
    return _view(buffer, (samples, channels, *planes.shape[2:]))


def _copy_in(staged, pieces, planes, chunk):
    """Copy a chunk of ``planes`` into the tiled layout: into its staging view ``staged``
    (:func:`_stage`), then through ``pieces`` (:func:`_tile_pieces` of the tiled view and
    ``staged``, channel axis first) into the tiled view's first ``c1 - c0`` channels."""
    c0, c1, n0, n1 = chunk
    m = c1 - c0
    np.copyto(staged[:, :m], planes[n0:n1, c0:c1])
    for t, p in pieces:
        t[:m] = p[:m]


def _chunk_values(segment, spec, chunk):
    """Size of a chunk's tiled input (the thresholds for using threads are in these)."""
    c0, c1, n0, n1 = chunk
    return math.prod(_tiled_shapes(segment, spec, c1 - c0, n1 - n0)[0])


#: Weight of one tiled input value against one executed multiply-accumulate in the cost
#: of a chunk (:func:`_chunk_cost`), for the forward and for the backward. Fitted to
#: single-threaded times per tiled value on the benchmark machine (float32, 8x48
#: channels at 56x56, shift 1): forward 2.73 ns (kernel 4) and 3.11 ns (kernel 7),
#: backward 5.43 and 8.55 ns, where the model gives the ratios 1.15 and 1.58 (measured
#: 1.14 and 1.57). Only the balance of the thread shares depends on it, never a result.
#: After the widened kernel gradients and the staged copies the backward's measured
#: ratio fell to 1.23-1.26 (a weight of about 40); refitted to 40, the two-threaded
#: 8x96 ``"4+7"`` backward did not move (interleaved A/B: 56² 1.02x, 112² 0.99x), so
#: the weights stay.
_VALUE_WEIGHT = {"forward": 32, "backward": 6}


def _chunk_cost(segment, spec, chunk, direction):
    """Work of a chunk in a thread share: its tiled input values (the copies) weighted by
    :data:`_VALUE_WEIGHT`, plus its executed MACs in ``direction`` (``"forward"``:
    ``h_in + w_out`` per ``Z`` value, ``"backward"``: ``3*h_in + 2*w_out``; see
    :func:`patchwise_forward` and :func:`patchwise_backward`)."""
    c0, c1, n0, n1 = chunk
    m, n = c1 - c0, n1 - n0
    per_z = spec.h_in + spec.w_out if direction == "forward" else 3 * spec.h_in + 2 * spec.w_out
    z_values = math.prod(_tiled_shapes(segment, spec, m, n)[1])
    return _VALUE_WEIGHT[direction] * _chunk_values(segment, spec, chunk) + z_values * per_z


@lru_cache(maxsize=256)
def _shares(specs, batch, height, width, itemsize, chunk_bytes, parts, min_values, min_chunks, direction="forward"):
    """The chunks of the plan cut into ``parts`` thread shares, or None if not worth it.

    Jobs are the chunks of a segment whose chunks hold all samples, and the channels of
    a segment whose samples are split (all the chunks of that channel: the backward sums
    a channel's kernel gradient over them, in sample order, in one thread). Jobs are
    cut into ``parts`` contiguous runs of near-equal work (:func:`_chunk_cost` in
    ``direction``). A share is a tuple of ``(segment, chunks)`` with the chunks in plan order,
    so the sample count still changes at most once per segment and the channel count
    never grows while it stays the same: each thread's own zero frames and buffers
    work as in the single-threaded loop. Pure function of its arguments, hence cached.

    Returns
    -------
    tuple of tuple of (_Segment, tuple), or None
        None when there are fewer than ``min_chunks`` chunks or fewer than
        ``min_values`` tiled input values per thread: run in one thread.
    """
    plan = _patchwise_plan(specs, batch, height, width, itemsize, chunk_bytes)
    jobs = []  # (segment index, owned chunks in plan order, work)
    for s, seg in enumerate(plan):
        spec = specs[seg.group]
        if all(n0 == 0 and n1 == batch for _, _, n0, n1 in seg.chunks):
            jobs.extend((s, (chunk,), _chunk_cost(seg, spec, chunk, direction)) for chunk in seg.chunks)
        else:  # one channel per chunk, samples split: one job per channel
            for c in sorted({c0 for c0, _, _, _ in seg.chunks}):
                own = tuple(chunk for chunk in seg.chunks if chunk[0] == c)
                jobs.append((s, own, sum(_chunk_cost(seg, spec, chunk, direction) for chunk in own)))
    chunk_count = sum(len(seg.chunks) for seg in plan)
    values = sum(_chunk_values(seg, specs[seg.group], chunk) for seg in plan for chunk in seg.chunks)
    if parts < 2 or chunk_count < min_chunks * parts or values < min_values * parts:
        return None
    total = sum(work for _, _, work in jobs)
    # Contiguous runs of jobs: job j goes to the share its work midpoint falls in.
    owner, done = [], 0
    for _, _, work in jobs:
        owner.append(min(parts - 1, (2 * done + work) * parts // (2 * total)))
        done += work
    shares = []
    for p in range(parts):
        mine = {}
        for (s, own, _), o in zip(jobs, owner):
            if o == p:
                mine.setdefault(s, set()).update(own)
        if mine:  # chunks of each segment in plan order
            shares.append(tuple((plan[s], tuple(c for c in plan[s].chunks if c in own)) for s, own in mine.items()))
    return tuple(shares) if len(shares) > 1 else None


def _work(specs, batch, height, width, itemsize, direction="forward"):
    """The thread shares of a layer: ``(segment, chunks)`` lists, one per thread, balanced
    for the work of ``direction`` (``"forward"`` or ``"backward"``).

    One share (the whole plan, in order) when :func:`neocell_ref._parallel.threads` is
    1, when called from inside a task of the thread pool (no nested pool use), or when
    the layer is too small (:func:`_shares`).
    """
    plan = _patchwise_plan(specs, batch, height, width, itemsize, _CHUNK_BYTES)
    parts = 1 if parallel.in_task() else parallel.threads()
    shares = None
    if parts > 1:
        limits = (_MIN_VALUES_PER_THREAD, _CHUNKS_PER_THREAD)
        shares = _shares(specs, batch, height, width, itemsize, _CHUNK_BYTES, parts, *limits, direction)
    return plan, shares or (tuple((seg, seg.chunks) for seg in plan),)


def _view(buffer, shape):
    """The first ``prod(shape)`` values of a flat work buffer, as an array of ``shape``."""
    return buffer[: math.prod(shape)].reshape(shape)


def _tile_pieces(tiled, planes, front_h, front_w):
    """Matching views of a tiled array and of the planes it holds.

    The map is ``tiled[c, j, n, i, front_w + q] <-> planes[n, c, i*k + j - front_h, q]``
    for every plane element (``0 <= i*k + j - front_h < L``, ``0 <= q < M``).

    Parameters
    ----------
    tiled : ndarray, shape (m, k, N, T, P)
    planes : ndarray, shape (N, m', L, M)
        With ``front_h + L <= T*k`` and ``front_w + M <= P``. The channel counts ``m``
        and ``m'`` may differ: every returned view has the channel axis first, so
        ``t[:c]`` and ``p[lo:lo + c]`` pair up any ``c`` channels.
    front_h, front_w : int
        Zeros in front of the planes (``front_h < k``).

    Returns
    -------
    list of (tiled_view, planes_view)
        Pairs of equal shape apart from the channel axis, at most three (first
        partial tile, full tiles, last partial tile), covering every plane element
        exactly once. Assigning either way copies in or out of the layout.
    """
    k = tiled.shape[1]
    n, m, length, width = planes.shape
    cols = slice(front_w, front_w + width)
    pieces = []
    row, tile = 0, 0  # next plane row to place, and the tile it falls in
    if front_h:
        rows = min(k - front_h, length)
        pieces.append((tiled[:, front_h : front_h + rows, :, 0, cols], planes[:, :, :rows].transpose(1, 2, 0, 3)))
        row, tile = rows, 1
    full = (length - row) // k
    if full:
        # Splitting the row axis into (tile, row in tile) is always a view.
        block = planes[:, :, row : row + full * k].reshape(n, m, full, k, width)
        pieces.append((tiled[:, :, :, tile : tile + full, cols], block.transpose(1, 3, 0, 2, 4)))
        row, tile = row + full * k, tile + full
    if row < length:
        pieces.append((tiled[:, : length - row, :, tile, cols], planes[:, :, row:].transpose(1, 2, 0, 3)))
    return pieces


def _zero_frame(tiled, front_h, length, front_w, width):
    """Make every entry of ``tiled`` (m, k, N, T, P) that holds no plane value zero.

    These are the padding zeros of SPEC 3's view. Padding a chunk into the layout
    writes only the other entries, so the frame written for a segment's first chunk
    serves all of its chunks of the same sample count (a chunk with fewer channels
    uses a prefix: channels are the outermost axis): nothing is cleared per chunk.

    When there is any padding the whole view is cleared: ``tiled`` is contiguous (a
    work buffer's prefix), so that is one ``fill``, faster than the up to six strided
    assignments that reach only the frame, and the copy in overwrites the rest.
    Interleaved A/B, median of 20 per-round ratios of the whole operator, NeoNeXt-T's
    56², 28² and 14² layers (8 samples): forward 0.97-0.99, 0.93-0.94, 0.92-0.93 (one
    and two threads), backward 0.98, 0.95, 0.93 (one thread); one sample 0.89-0.95. An
    unpadded layout (NeoNeXt-T's 7² layers: no shift, 7 divides 7) has no frame to write.
    """
    k, tiles, cols = tiled.shape[1], tiled.shape[3], tiled.shape[4]
    if front_h or front_w or tiles * k != front_h + length or cols != front_w + width:
        tiled.fill(0)


def _padded_pieces(buffer, shape, planes, front_h, front_w):
    """A tiled view of ``shape`` in ``buffer`` with its zero frame, and its pieces for ``planes``."""
    tiled = _view(buffer, shape)
    _zero_frame(tiled, front_h, planes.shape[2], front_w, planes.shape[3])
    return tiled, _tile_pieces(tiled, planes, front_h, front_w)


def _product(a, b, out):
    """A chunk's product ``a @ b`` into ``out`` (tag ``"patchwise"``): by
    :func:`neocell_ref.instrument.outer` when the inner dimension is 1 (a kernel side
    of 1), else by ``np.matmul``. The same values and MAC counts either way."""
    return (outer if a.shape[-1] == 1 else matmul)(a, b, "patchwise", out=out)


def patchwise_forward(x, weights_a, weights_b, specs, out_size):
    """Forward pass, chunk by chunk, two matrix products per chunk.

    For a chunk of ``m`` channels and ``n`` samples with tile counts ``T_a`` (height)
    and ``T_b`` (width) of SPEC 3's padding view, the executed products are (tag
    ``"patchwise"``)::

        Z = A @ X:   (m, h_out, h_in) @ (m, h_in, n*T_a*T_b*w_in)
        Y = Z @ B:   (m, h_out*n*T_a*T_b, w_in) @ (m, w_in, w_out)

    so every channel costs ``N*T_a*T_b*h_out*w_in*(h_in + w_out)`` MACs, zeros of the
    padding included, whatever the chunking. ``T_a = ceil((H + f_a) / h_in)`` with
    ``f_a = h_in - s_a`` for the channel's shift ``s_a > 0`` and 0 otherwise; ``T_b``
    likewise from ``W``, ``w_in`` and ``s_b``.

    Parameters
    ----------
    x : ndarray, shape (N, C, H, W)
        Input, already validated and in the compute dtype (:func:`neocell_ref.neocell_forward`
        checks and casts every operand; nothing is checked here).
    weights_a : list of ndarray
        ``weights_a[g]`` has shape ``(channels_g, h_out, h_in)``, in ``x``'s dtype.
    weights_b : list of ndarray
        ``weights_b[g]`` has shape ``(channels_g, w_in, w_out)``, in ``x``'s dtype.
    specs : tuple of GroupSpec
        Parsed groups (:func:`neocell_ref.spec.parse_specs`); a tuple, since the plan is
        cached by its arguments.
    out_size : (int, int)
        ``(H_out, W_out)``, as :func:`neocell_ref.spec.check_input_size` returns it.

    Returns
    -------
    y : ndarray, shape (N, C, H_out, W_out)
        A new array in ``x``'s dtype.
    """
    n, _, height, width = x.shape
    y = np.empty((n, x.shape[1], *out_size), dtype=x.dtype)
    plan, shares = _work(specs, n, height, width, x.itemsize)
    sizes = _buffer_sizes(plan, specs, height * width)

    def task(share):  # own work buffers and zero frames per thread
        buf_x, buf_z, buf_y, buf_s = (np.empty(s, dtype=x.dtype) for s in sizes)
        for seg, chunks in share:
            spec = specs[seg.group]
            wa, wb = weights_a[seg.group][seg.local], weights_b[seg.group][seg.local]
            x_planes, y_planes = x[:, seg.chans], y[:, seg.chans]
            samples = None  # sample count the tiled views below are laid out for
            for c0, c1, n0, n1 in chunks:
                m = c1 - c0
                if n1 - n0 != samples:  # new layout: new zero frame and copy views
                    samples = n1 - n0
                    shape_x, shape_z, shape_y = _tiled_shapes(seg, spec, m, samples)
                    xs = _stage(buf_s, x_planes, samples, m)
                    xt, x_pieces = _padded_pieces(buf_x, shape_x, xs, seg.front_a, seg.front_b)
                    z, yt = _view(buf_z, shape_z), _view(buf_y, shape_y)
                    y_pieces = _tile_pieces(yt, y_planes, seg.crop_a, seg.crop_b)
                _copy_in(xs, x_pieces, x_planes, (c0, c1, n0, n1))
                _product(wa[c0:c1], xt[:m].reshape(m, spec.h_in, -1), z[:m].reshape(m, spec.h_out, -1))
                _product(z[:m].reshape(m, -1, spec.w_in), wb[c0:c1], yt[:m].reshape(m, -1, spec.w_out))
                for t, p in y_pieces:
                    p[c0:c1, :, n0:n1] = t[:m]

    parallel.run_each(shares, task)
    return y


#: Kernel-gradient products of at least this many multiply-accumulates per matrix go
#: through ``np.dot`` when the backward runs on several threads (:func:`_kernel_product`).
_DOT_MIN_MACS = 1 << 15


def _kernel_product(threaded, macs):
    """The product function for a chunk's kernel gradients (``dB = Zᵀ G``, ``dA = dZ Xᵀ``:
    4x4 or 7x7 results of long sums, ``macs`` multiply-accumulates per channel), both
    counted like every product.

    ``np.matmul`` keeps the GIL for a product with so few output values, so threads
    running long ones take turns (8x96x56² ``"4+7"`` backward, two threads: 21 ms, as on
    one thread); :func:`neocell_ref.instrument.stacked_dot` (one ``np.dot`` per matrix,
    which releases it) brought that to 13.8 ms. One call per channel costs more Python
    time than one stacked call, which single-threaded and for small products outweighs
    it (two threads, NeoNeXt-T's 14² layers, 2.5-25 k MACs per matrix: 6.3 ms stacked
    against 8.3 ms per matrix; its down-sampling layers, 1x2 results: 6.6 against 7.5 ms;
    its 28² and 56² layers, 33-222 k: 13.1 against 9.9 ms and 15.9 against 11.9 ms).
    So: per matrix when ``threaded`` and ``macs >= _DOT_MIN_MACS``, else stacked. Both
    call the same BLAS product on the same operands (tested bitwise).
    """
    return stacked_dot if threaded and macs >= _DOT_MIN_MACS else matmul


def _widened(dtype, a, b, length):
    """Whether a kernel gradient with an ``(a, b)`` result, summed over ``length`` terms, is
    computed by a *widened* product (:func:`_row_gradient`, :func:`_column_gradient`).

    Widening pairs the terms: a ``(2a, 2b)`` product over ``length/2`` terms whose two
    diagonal ``(a, b)`` blocks are the sums over the even and the odd terms (or the first
    and the second half). It executes twice the multiply-accumulates, and pays where the
    BLAS kernel wastes most of its register tile on a narrow result: float32 results of
    odd or 6-wide sides. Measured, one thread, OpenBLAS on the benchmark machine, a
    stack of two channels (µs, direct / widened): 7x7 over 4536 terms 184 / 102 (``dB``)
    and 161 / 104 (``dA``); 3x3 173 / 115; 5x5 125 / 97; 6x6 106 / 63; but 4x4 65 / 61
    and 8x8 65 / 84; the down-sampling layers' 2x1 lost (about 10 % of the layer's
    backward); float64 gained little where it gained (7x7: 162 / 160 and 130 / 116)
    and lost at 4x4 (70 / 99), so it is never widened. The NeoCell backward of
    NeoNeXt-T's stage-3 layer (8x384x14², kernel 7) went 11.5 → 9.2 ms, the 8x96x56²
    ``"4+7"`` one 21.9 → 18.8 ms.
    Hence: float32, both sides at least 3, not both multiples of 4, ``length`` even
    (which may differ between chunks of a channel whose samples are split).
    """
    return dtype == np.float32 and min(a, b) >= 3 and bool(a % 4 or b % 4) and length % 2 == 0


def _row_gradient(left, right, threaded, out=None):
    """``Σ_r left[:, r]ᵀ right[:, r]``, the kernel gradient ``dB = Zᵀ G`` of a chunk.

    Parameters
    ----------
    left : ndarray, shape (m, R, a)
    right : ndarray, shape (m, R, b)
        C-contiguous per channel (rows of ``a`` / ``b`` values).
    threaded : bool
        Whether the backward runs on several threads (:func:`_kernel_product`).
    out : ndarray, shape (m, a, b), optional

    Returns
    -------
    ndarray, shape (m, a, b)
        Widened (:func:`_widened`): row pairs ``(2r, 2r+1)`` side by side, a ``(2a, 2b)``
        result whose top-left block sums the even rows and bottom-right block the odd.
    """
    m, rows, a = left.shape
    b = right.shape[2]
    product = _kernel_product(threaded, rows * a * b)  # the route by the useful work
    if not _widened(left.dtype, a, b, rows):
        return product(left.transpose(0, 2, 1), right, "patchwise", out=out)
    pairs_left = left.reshape(m, rows // 2, 2 * a).transpose(0, 2, 1)
    wide = product(pairs_left, right.reshape(m, rows // 2, 2 * b), "patchwise")
    return np.add(wide[:, :a, :b], wide[:, a:, b:], out=out)


def _column_gradient(left, right, threaded, out=None):
    """``left @ rightᵀ`` over long rows, the kernel gradient ``dA = dZ Xᵀ`` of a chunk:
    ``left`` (m, a, L) and ``right`` (m, b, L), C-contiguous per channel, give (m, a, b);
    ``threaded`` and ``out`` as for :func:`_row_gradient`. Widened (:func:`_widened`):
    each row cut into halves stacked as two rows (a free reshape), a ``(2a, 2b)`` result
    whose entries ``[2i, 2j]`` sum the first halves and ``[2i+1, 2j+1]`` the second.
    """
    m, a, length = left.shape
    b = right.shape[1]
    product = _kernel_product(threaded, length * a * b)
    if not _widened(left.dtype, a, b, length):
        return product(left, right.transpose(0, 2, 1), "patchwise", out=out)
    halves_right = right.reshape(m, 2 * b, length // 2).transpose(0, 2, 1)
    wide = product(left.reshape(m, 2 * a, length // 2), halves_right, "patchwise")
    return np.add(wide[:, 0::2, 0::2], wide[:, 1::2, 1::2], out=out)


def patchwise_backward(grad_y, x, weights_a, weights_b, specs, out_size):
    """Backward pass (SPEC 5) in the tiled layout of :func:`patchwise_forward`.

    Per chunk, with ``X`` the tiled input, ``G`` the tiled ``grad_y`` (zeros where the
    forward cropped) and ``R = h_out*n*T_a*T_b`` rows of ``w_in``/``w_out`` values::

        Z  = A @ X        (m, h_out, h_in)  @ (m, h_in, n*T_a*T_b*w_in)    recomputed
        dB = Zᵀ @ G       (m, w_in, R)      @ (m, R, w_out)
        dZ = G @ Bᵀ       (m, R, w_out)     @ (m, w_out, w_in)
        dA = dZ @ Xᵀ      (m, h_out, n*T_a*T_b*w_in) @ (m, n*T_a*T_b*w_in, h_in)
        dX = Aᵀ @ dZ      (m, h_in, h_out)  @ (m, h_out, n*T_a*T_b*w_in)

    so every channel costs ``N*T_a*T_b*h_out*w_in*(3*h_in + 2*w_out)`` MACs (tag
    ``"patchwise"``), plus once more the MACs of each kernel gradient that is widened
    (:func:`_widened`; float32 only: ``R*w_in*w_out`` for a chunk's ``dB``,
    ``n*T_a*T_b*w_in*h_out*h_in`` for its ``dA``), whose off-diagonal blocks are
    thrown away. The sums over tiles and samples of SPEC 5 are the long inner
    dimension of ``dB`` and ``dA`` (plus a sum over the chunks of a channel when its
    samples are split); the padding zeros in ``X`` and ``G`` make the shift-corner
    and clipped-block contributions come out exactly as the adjoint of the
    expansion. ``dX`` cropped to the input is ``grad_x``.

    Parameters
    ----------
    grad_y : ndarray, shape (N, C, H_out, W_out)
        Gradient of the loss with respect to the output, in ``x``'s dtype.
    x, weights_a, weights_b, specs, out_size
        As in :func:`patchwise_forward` (validated and cast by
        :func:`neocell_ref.neocell_backward`; nothing is checked here).

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
        In ``x``'s dtype.
    grads_a : list of ndarray
        Shaped like ``weights_a`` (and of their dtype); includes the shift-corner
        contributions.
    grads_b : list of ndarray
        Shaped like ``weights_b`` (and of their dtype).
    """
    n, _, height, width = x.shape
    grad_x = np.empty_like(x)
    grads_a = [np.empty_like(w) for w in weights_a]
    grads_b = [np.empty_like(w) for w in weights_b]
    plan, shares = _work(specs, n, height, width, x.itemsize, "backward")
    size_x, size_z, size_y, size_s = _buffer_sizes(plan, specs, max(height * width, math.prod(out_size)))

    threaded = len(shares) > 1

    def task(share):  # own work buffers and zero frames per thread; whole channels when samples split
        buf_x, buf_dx, buf_z, buf_g = (np.empty(s, dtype=x.dtype) for s in (size_x, size_x, size_z, size_y))
        buf_s = np.empty(size_s, dtype=x.dtype)  # staging, for x then for grad_y
        for seg, chunks in share:
            spec = specs[seg.group]
            a, b = weights_a[seg.group][seg.local], weights_b[seg.group][seg.local]
            ga, gb = grads_a[seg.group][seg.local], grads_b[seg.group][seg.local]
            x_planes, g_planes = x[:, seg.chans], grad_y[:, seg.chans]
            dx_planes = grad_x[:, seg.chans]
            samples = None  # sample count the tiled views below are laid out for
            for c0, c1, n0, n1 in chunks:
                m = c1 - c0
                if n1 - n0 != samples:  # new layout: new zero frames and copy views
                    samples = n1 - n0
                    shape_x, shape_z, shape_y = _tiled_shapes(seg, spec, m, samples)
                    xs, gs = _stage(buf_s, x_planes, samples, m), _stage(buf_s, g_planes, samples, m)
                    xt, x_pieces = _padded_pieces(buf_x, shape_x, xs, seg.front_a, seg.front_b)
                    gt, g_pieces = _padded_pieces(buf_g, shape_y, gs, seg.crop_a, seg.crop_b)
                    z, dxt = _view(buf_z, shape_z), _view(buf_dx, shape_x)
                    dx_pieces = _tile_pieces(dxt, dx_planes, seg.front_a, seg.front_b)
                _copy_in(xs, x_pieces, x_planes, (c0, c1, n0, n1))
                _copy_in(gs, g_pieces, g_planes, (c0, c1, n0, n1))  # x is tiled: the stage is free
                x2 = xt[:m].reshape(m, spec.h_in, -1)  # (m, h_in, n*T_a*T_b*w_in)
                g2 = gt[:m].reshape(m, -1, spec.w_out)  # (m, R, w_out)
                z2 = z[:m].reshape(m, spec.h_out, -1)  # Z, later dZ
                _product(a[c0:c1], x2, z2)
                # The kernel gradients (long sums, few outputs): see _kernel_product, _widened.
                db = _row_gradient(z2.reshape(m, -1, spec.w_in), g2, threaded, gb[c0:c1] if n0 == 0 else None)
                # Z is used up: dZ goes into its buffer.
                _product(g2, b[c0:c1].transpose(0, 2, 1), z2.reshape(m, -1, spec.w_in))
                da = _column_gradient(z2, x2, threaded, ga[c0:c1] if n0 == 0 else None)
                if n0:  # later samples of a channel whose samples are split: accumulate
                    gb[c0:c1] += db
                    ga[c0:c1] += da
                _product(a[c0:c1].transpose(0, 2, 1), z2, dxt[:m].reshape(m, spec.h_in, -1))
                for t, p in dx_pieces:
                    p[c0:c1, :, n0:n1] = t[:m]

    parallel.run_each(shares, task)
    return grad_x, grads_a, grads_b
