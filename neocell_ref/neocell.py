"""The NeoCell operator: three formulations, each forward beside its backward.

For every channel ``c`` (SPEC section 1)::

    y[n, c] = Â_c @ x[n, c] @ B̂_c

with ``Â_c`` of shape ``(H_out, H)`` and ``B̂_c`` of shape ``(W, W_out)`` the
expanded kernels of SPEC section 3. Three formulations compute it:

``"loop"``
    The paper's patch view, written literally: pad the plane, loop over channels
    and over tiles ``P``, compute ``A @ P @ B`` per tile, crop. Slow; for reading.
``"patchwise"`` (default)
    Vectorised, following SPEC 3's equivalent view (pad, map every tile, crop).
    Each shift sub-group is padded into a tiled layout where every tile row is one
    contiguous run, so that each axis is one matrix product per channel; channels
    (or samples) go through in cache-sized chunks with reused buffers. It never
    builds an ``H x H`` matrix.
``"blockdiag"``
    Builds ``Â`` and ``B̂`` with :func:`neocell_ref.expand.expand` and multiplies
    densely. The most direct transcription of SPEC sections 1, 3 and 5.

Backward (SPEC section 5), per sample and channel, with ``z = Â x`` and ``y = z B̂``::

    dB̂ = Σ_n z[n]ᵀ dy[n]      dz = dy B̂ᵀ      dÂ = Σ_n dz[n] x[n]ᵀ      dx = Âᵀ dz

and kernel gradients are the adjoint of the expansion. Every backward here
recomputes ``z`` from ``x`` instead of caching it: the operator is cheap and the
signatures stay pure functions of their inputs.

Dtypes: computation runs in float32 when every operand (``x``, the weights and, in
the backward, ``grad_y``) is float16 or float32, and in float64 otherwise (integer
input included, whatever its width); complex input is refused. float64 is the
reference precision.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .expand import expand, expand_adjoint
from .instrument import matmul
from .spec import check_input_size, parse_specs, shift_segments
from .validation import as_real_array, check_nbytes

__all__ = ["neocell_forward", "neocell_backward", "METHODS"]


# --------------------------------------------------------------------------------------
# validation shared by all methods
# --------------------------------------------------------------------------------------
_as_real_array = as_real_array


def _compute_dtype(*dtypes):
    """float32 when every operand is float16/float32, else float64 (the reference).

    Decided per operand, not by NumPy promotion: ``result_type(int8, float32)`` is
    float32, but integer input always computes in float64.
    """
    dtypes = [np.dtype(d) for d in dtypes]
    low = all(d.kind == "f" and d.itemsize <= 4 for d in dtypes)
    return np.dtype(np.float32) if low else np.dtype(np.float64)


def _check_weights(weights_a, weights_b, specs):
    """Validate per-group weight lists against ``specs``; return arrays and their dtype.

    Weights must be finite: NaN or Inf in a kernel is a bug upstream, and the
    weights are small enough that checking them costs nothing.
    """
    for name, weights in (("weights_a", weights_a), ("weights_b", weights_b)):
        if (
            isinstance(weights, (np.ndarray, str, bytes))
            or hasattr(weights, "keys")  # a dict {0: w0, ...} would index like a list
            or not hasattr(weights, "__len__")
        ):
            raise TypeError(
                f"{name} must be a list with one array per channel group, got "
                f"{type(weights).__name__}"
            )
        if len(weights) != len(specs):
            raise ValueError(
                f"{name} has {len(weights)} arrays but specs has {len(specs)} groups"
            )
    arrays_a, arrays_b = [], []
    for g, spec in enumerate(specs):
        for name, weights, shape, out in (
            ("weights_a", weights_a, spec.shape_a, arrays_a),
            ("weights_b", weights_b, spec.shape_b, arrays_b),
        ):
            arr = _as_real_array(weights[g], f"{name}[{g}]")
            if arr.shape != shape:
                raise ValueError(
                    f"{name}[{g}] has shape {arr.shape}, but group {g} needs {shape}"
                )
            if not np.isfinite(arr).all():
                raise ValueError(f"{name}[{g}] contains NaN or Inf")
            out.append(arr)
    dtype = _compute_dtype(*(a.dtype for a in arrays_a + arrays_b))
    return arrays_a, arrays_b, dtype


def _prepare(x, weights_a, weights_b, specs, grad_y=None, check_finite=False):
    """Validate all operands before any arithmetic; cast to one compute dtype."""
    specs = parse_specs(specs)
    x = _as_real_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    channels = sum(g.channels for g in specs)
    if x.shape[1] != channels:
        raise ValueError(
            f"x has {x.shape[1]} channels (x.shape[1]) but the groups' channels sum to "
            f"{channels}"
        )
    if x.shape[0] < 1:
        raise ValueError(f"x must hold at least one sample, got shape {x.shape}")
    h_out, w_out = check_input_size(specs, x.shape[2], x.shape[3])
    weights_a, weights_b, wdtype = _check_weights(weights_a, weights_b, specs)
    operands = [x.dtype, wdtype]
    if grad_y is not None:
        grad_y = _as_real_array(grad_y, "grad_y")
        expected = (x.shape[0], channels, h_out, w_out)
        if grad_y.shape != expected:
            raise ValueError(f"grad_y has shape {grad_y.shape}, expected {expected}")
        operands.append(grad_y.dtype)
    dtype = _compute_dtype(*operands)
    check_nbytes((x.shape[0], channels, h_out, w_out), dtype, "neocell: output y")
    if check_finite:
        for name, arr in (("x", x), ("grad_y", grad_y)):
            if arr is not None and not np.isfinite(arr).all():
                raise ValueError(f"{name} contains NaN or Inf (check_finite=True)")
    x = x.astype(dtype, copy=False)
    weights_a = [w.astype(dtype, copy=False) for w in weights_a]
    weights_b = [w.astype(dtype, copy=False) for w in weights_b]
    if grad_y is not None:
        grad_y = grad_y.astype(dtype, copy=False)
    return x, weights_a, weights_b, specs, grad_y, (h_out, w_out)


def _segments(specs):
    """Runs of channels with one kernel pair and one shift pair, with absolute offsets."""
    start = 0
    for g, spec in enumerate(specs):
        for a, b, sa, sb in shift_segments(spec):
            yield g, slice(a, b), slice(start + a, start + b), sa, sb
        start += spec.channels


# --------------------------------------------------------------------------------------
# the padding view of one axis (SPEC 3): shared by "loop" and "patchwise"
# --------------------------------------------------------------------------------------
def _axis_geometry(length, k_in, k_out, shift):
    """Padding and cropping for one axis of length ``length``.

    Returns ``(pad_front, tiles, crop_front, length_out)``: pad ``pad_front`` zeros in
    front (``k_in - shift`` when shifted), pad at the back up to ``tiles * k_in``,
    map each ``k_in`` slab to ``k_out`` values, drop ``crop_front`` values
    (``k_out - shift`` when shifted) and keep ``length_out``.
    """
    pad_front = k_in - shift if shift else 0
    tiles = -(-(length + pad_front) // k_in)
    crop_front = k_out - shift if shift else 0
    length_out = length if k_in == k_out else (length * k_out) // k_in
    return pad_front, tiles, crop_front, length_out


# --------------------------------------------------------------------------------------
# "loop": the paper's patch view, literally
# --------------------------------------------------------------------------------------
def _loop_forward(x, weights_a, weights_b, specs, out_size):
    n, _, height, width = x.shape
    y = np.zeros((n, x.shape[1], *out_size), dtype=x.dtype)
    for g, local, chans, sa, sb in _segments(specs):
        spec = specs[g]
        fa, ta, ca, _ = _axis_geometry(height, spec.h_in, spec.h_out, sa)
        fb, tb, cb, _ = _axis_geometry(width, spec.w_in, spec.w_out, sb)
        for c_local, c in zip(range(local.start, local.stop), range(chans.start, chans.stop)):
            a, b = weights_a[g][c_local], weights_b[g][c_local]
            plane = np.zeros((n, ta * spec.h_in, tb * spec.w_in), dtype=x.dtype)
            plane[:, fa:fa + height, fb:fb + width] = x[:, c]
            out = np.zeros((n, ta * spec.h_out, tb * spec.w_out), dtype=x.dtype)
            for i in range(ta):
                for j in range(tb):
                    tile = plane[:, i * spec.h_in:(i + 1) * spec.h_in, j * spec.w_in:(j + 1) * spec.w_in]
                    out[:, i * spec.h_out:(i + 1) * spec.h_out, j * spec.w_out:(j + 1) * spec.w_out] = matmul(matmul(a, tile, "loop"), b, "loop")
            y[:, c] = out[:, ca:ca + out_size[0], cb:cb + out_size[1]]
    return y


def _loop_backward(grad_y, x, weights_a, weights_b, specs, out_size):
    n, _, height, width = x.shape
    grad_x = np.zeros_like(x)
    grads_a = [np.zeros_like(w) for w in weights_a]
    grads_b = [np.zeros_like(w) for w in weights_b]
    for g, local, chans, sa, sb in _segments(specs):
        spec = specs[g]
        fa, ta, ca, _ = _axis_geometry(height, spec.h_in, spec.h_out, sa)
        fb, tb, cb, _ = _axis_geometry(width, spec.w_in, spec.w_out, sb)
        for c_local, c in zip(range(local.start, local.stop), range(chans.start, chans.stop)):
            a, b = weights_a[g][c_local], weights_b[g][c_local]
            plane = np.zeros((n, ta * spec.h_in, tb * spec.w_in), dtype=x.dtype)
            plane[:, fa:fa + height, fb:fb + width] = x[:, c]
            # The crop's adjoint: put grad_y back where it was cut from, zeros elsewhere.
            grad_out = np.zeros((n, ta * spec.h_out, tb * spec.w_out), dtype=x.dtype)
            grad_out[:, ca:ca + out_size[0], cb:cb + out_size[1]] = grad_y[:, c]
            grad_plane = np.zeros_like(plane)
            for i in range(ta):
                for j in range(tb):
                    rows_in = slice(i * spec.h_in, (i + 1) * spec.h_in)
                    cols_in = slice(j * spec.w_in, (j + 1) * spec.w_in)
                    tile = plane[:, rows_in, cols_in]
                    d_out = grad_out[:, i * spec.h_out:(i + 1) * spec.h_out, j * spec.w_out:(j + 1) * spec.w_out]
                    # Y = A P B:  dP = Aᵀ dY Bᵀ,  dA = Σ dY (P B)ᵀ,  dB = Σ (A P)ᵀ dY
                    grad_plane[:, rows_in, cols_in] = matmul(matmul(a.T, d_out, "loop"), b.T, "loop")
                    grads_a[g][c_local] += matmul(d_out, matmul(tile, b, "loop").transpose(0, 2, 1), "loop").sum(axis=0)
                    grads_b[g][c_local] += matmul(matmul(a, tile, "loop").transpose(0, 2, 1), d_out, "loop").sum(axis=0)
            # The padding's adjoint: keep the part that was x.
            grad_x[:, c] = grad_plane[:, fa:fa + height, fb:fb + width]
    return grad_x, grads_a, grads_b


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
# and the result comes out in the same tiled layout with ``k = h_out``. Going in and
# out of the layout is one strided copy each way (padding and cropping included).
#
# Speed (measured, see benchmarks/README.md): with kernels of 4 or 7 every step moves
# far more data than it computes, so the cost is the passes over the data: one
# strided copy in, two products, one strided copy out. Channels are processed in
# chunks whose work buffers fit in the L2 cache and are reused from chunk to chunk,
# which roughly halves the time against whole-layer buffers.

#: Size in bytes of the largest work buffer of one chunk (a cache-size heuristic).
_CHUNK_BYTES = 1 << 18


class _Segment(NamedTuple):
    """Consecutive channels of one group with one shift pair (one padding geometry).

    ``group``: index of the group; ``local``/``chans``: channel slice in the group's
    weights / in ``x``; ``front_*``, ``tiles_*``, ``crop_*``: :func:`_axis_geometry`
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
    huge plane still works). Besides keeping the work in cache, this keeps every
    product small enough that BLAS runs it on one thread: small products spread
    over threads spend their time waiting for each other, and far more so when
    other processes share the cores. Ranges are near-equal, largest first. Pure
    function of its arguments, hence cached: planning costs Python time otherwise.

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
    for g, local, chans, sa, sb in _segments(specs):
        spec = specs[g]
        fa, ta, ca, _ = _axis_geometry(height, spec.h_in, spec.h_out, sa)
        fb, tb, cb, _ = _axis_geometry(width, spec.w_in, spec.w_out, sb)
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


def _buffer_sizes(plan, specs):
    """Largest ``(X, Z, Y)`` sizes over all chunks: one work buffer of each."""
    sizes = [0, 0, 0]
    for seg in plan:
        for c0, c1, n0, n1 in seg.chunks:
            for i, shape in enumerate(_tiled_shapes(seg, specs[seg.group], c1 - c0, n1 - n0)):
                sizes[i] = max(sizes[i], math.prod(shape))
    return tuple(sizes)


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
        pieces.append((tiled[:, front_h:front_h + rows, :, 0, cols],
                       planes[:, :, :rows].transpose(1, 2, 0, 3)))
        row, tile = rows, 1
    full = (length - row) // k
    if full:
        # Splitting the row axis into (tile, row in tile) is always a view.
        block = planes[:, :, row:row + full * k].reshape(n, m, full, k, width)
        pieces.append((tiled[:, :, :, tile:tile + full, cols], block.transpose(1, 3, 0, 2, 4)))
        row, tile = row + full * k, tile + full
    if row < length:
        pieces.append((tiled[:, :length - row, :, tile, cols],
                       planes[:, :, row:].transpose(1, 2, 0, 3)))
    return pieces


def _zero_frame(tiled, front_h, length, front_w, width):
    """Zero every entry of ``tiled`` (m, k, N, T, P) that holds no plane value.

    These are the padding zeros of SPEC 3's view. Padding a chunk into the layout
    writes only the other entries, so the frame written for a segment's first chunk
    serves all of its chunks of the same sample count (a chunk with fewer channels
    uses a prefix: channels are the outermost axis) and no clearing pass is needed.
    """
    k = tiled.shape[1]
    tiled[..., :front_w] = 0
    tiled[..., front_w + width:] = 0
    cols = slice(front_w, front_w + width)
    if front_h:
        tiled[:, :front_h, :, 0, cols] = 0
    end_tile, end_row = divmod(front_h + length, k)
    if end_row:
        tiled[:, end_row:, :, end_tile, cols] = 0
        end_tile += 1
    tiled[:, :, :, end_tile:, cols] = 0


def _padded_pieces(buffer, shape, planes, front_h, front_w):
    """A tiled view of ``shape`` in ``buffer`` with its zero frame, and its pieces for ``planes``."""
    tiled = _view(buffer, shape)
    _zero_frame(tiled, front_h, planes.shape[2], front_w, planes.shape[3])
    return tiled, _tile_pieces(tiled, planes, front_h, front_w)


def _from_tiled(planes, tiled, front_h, front_w):
    """Crop the tiled layout ``tiled`` back into ``planes`` (N, m, L, M), in place."""
    for t, p in _tile_pieces(tiled, planes, front_h, front_w):
        p[...] = t


def _patchwise_forward(x, weights_a, weights_b, specs, out_size):
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
    """
    n, _, height, width = x.shape
    y = np.empty((n, x.shape[1], *out_size), dtype=x.dtype)
    plan = _patchwise_plan(specs, n, height, width, x.itemsize, _CHUNK_BYTES)
    buf_x, buf_z, buf_y = (np.empty(s, dtype=x.dtype) for s in _buffer_sizes(plan, specs))
    for seg in plan:
        spec = specs[seg.group]
        wa, wb = weights_a[seg.group][seg.local], weights_b[seg.group][seg.local]
        x_planes, y_planes = x[:, seg.chans], y[:, seg.chans]
        samples = None  # sample count the tiled views below are laid out for
        for c0, c1, n0, n1 in seg.chunks:
            m = c1 - c0
            if n1 - n0 != samples:  # new layout: new zero frame and copy views
                samples = n1 - n0
                shape_x, shape_z, shape_y = _tiled_shapes(seg, spec, m, samples)
                xt, x_pieces = _padded_pieces(buf_x, shape_x, x_planes, seg.front_a, seg.front_b)
                z, yt = _view(buf_z, shape_z), _view(buf_y, shape_y)
                y_pieces = _tile_pieces(yt, y_planes, seg.crop_a, seg.crop_b)
            for t, p in x_pieces:
                t[:m] = p[c0:c1, :, n0:n1]
            matmul(wa[c0:c1], xt[:m].reshape(m, spec.h_in, -1), "patchwise",
                   out=z[:m].reshape(m, spec.h_out, -1))
            matmul(z[:m].reshape(m, -1, spec.w_in), wb[c0:c1], "patchwise",
                   out=yt[:m].reshape(m, -1, spec.w_out))
            for t, p in y_pieces:
                p[c0:c1, :, n0:n1] = t[:m]
    return y


def _patchwise_backward(grad_y, x, weights_a, weights_b, specs, out_size):
    """Backward pass (SPEC 5) in the tiled layout of :func:`_patchwise_forward`.

    Per chunk, with ``X`` the tiled input, ``G`` the tiled ``grad_y`` (zeros where the
    forward cropped) and ``R = h_out*n*T_a*T_b`` rows of ``w_in``/``w_out`` values::

        Z  = A @ X        (m, h_out, h_in)  @ (m, h_in, n*T_a*T_b*w_in)    recomputed
        dB = Zᵀ @ G       (m, w_in, R)      @ (m, R, w_out)
        dZ = G @ Bᵀ       (m, R, w_out)     @ (m, w_out, w_in)
        dA = dZ @ Xᵀ      (m, h_out, n*T_a*T_b*w_in) @ (m, n*T_a*T_b*w_in, h_in)
        dX = Aᵀ @ dZ      (m, h_in, h_out)  @ (m, h_out, n*T_a*T_b*w_in)

    so every channel costs ``N*T_a*T_b*h_out*w_in*(3*h_in + 2*w_out)`` MACs (tag
    ``"patchwise"``). The sums over tiles and samples of SPEC 5 are the long inner
    dimension of ``dB`` and ``dA`` (plus a sum over the chunks of a channel when its
    samples are split); the padding zeros in ``X`` and ``G`` make the shift-corner
    and clipped-block contributions come out exactly as the adjoint of the
    expansion. ``dX`` cropped to the input is ``grad_x``.
    """
    n, _, height, width = x.shape
    grad_x = np.empty_like(x)
    grads_a = [np.empty_like(w) for w in weights_a]
    grads_b = [np.empty_like(w) for w in weights_b]
    plan = _patchwise_plan(specs, n, height, width, x.itemsize, _CHUNK_BYTES)
    size_x, size_z, size_y = _buffer_sizes(plan, specs)
    buf_x, buf_dx, buf_z, buf_g = (np.empty(s, dtype=x.dtype) for s in (size_x, size_x, size_z, size_y))
    for seg in plan:
        spec = specs[seg.group]
        a, b = weights_a[seg.group][seg.local], weights_b[seg.group][seg.local]
        ga, gb = grads_a[seg.group][seg.local], grads_b[seg.group][seg.local]
        x_planes, g_planes = x[:, seg.chans], grad_y[:, seg.chans]
        dx_planes = grad_x[:, seg.chans]
        samples = None  # sample count the tiled views below are laid out for
        for c0, c1, n0, n1 in seg.chunks:
            m = c1 - c0
            if n1 - n0 != samples:  # new layout: new zero frames and copy views
                samples = n1 - n0
                shape_x, shape_z, shape_y = _tiled_shapes(seg, spec, m, samples)
                xt, x_pieces = _padded_pieces(buf_x, shape_x, x_planes, seg.front_a, seg.front_b)
                gt, g_pieces = _padded_pieces(buf_g, shape_y, g_planes, seg.crop_a, seg.crop_b)
                z, dxt = _view(buf_z, shape_z), _view(buf_dx, shape_x)
                dx_pieces = _tile_pieces(dxt, dx_planes, seg.front_a, seg.front_b)
            for t, p in x_pieces:
                t[:m] = p[c0:c1, :, n0:n1]
            for t, p in g_pieces:
                t[:m] = p[c0:c1, :, n0:n1]
            x2 = xt[:m].reshape(m, spec.h_in, -1)            # (m, h_in, n*T_a*T_b*w_in)
            g2 = gt[:m].reshape(m, -1, spec.w_out)           # (m, R, w_out)
            z2 = z[:m].reshape(m, spec.h_out, -1)            # Z, later dZ
            matmul(a[c0:c1], x2, "patchwise", out=z2)
            db = matmul(z2.reshape(m, -1, spec.w_in).transpose(0, 2, 1), g2, "patchwise",
                        out=gb[c0:c1] if n0 == 0 else None)
            # Z is used up: dZ goes into its buffer.
            matmul(g2, b[c0:c1].transpose(0, 2, 1), "patchwise", out=z2.reshape(m, -1, spec.w_in))
            da = matmul(z2, x2.transpose(0, 2, 1), "patchwise", out=ga[c0:c1] if n0 == 0 else None)
            if n0:  # later samples of a channel whose samples are split: accumulate
                gb[c0:c1] += db
                ga[c0:c1] += da
            matmul(a[c0:c1].transpose(0, 2, 1), z2, "patchwise", out=dxt[:m].reshape(m, spec.h_in, -1))
            for t, p in dx_pieces:
                p[c0:c1, :, n0:n1] = t[:m]
    return grad_x, grads_a, grads_b


# --------------------------------------------------------------------------------------
# "blockdiag": dense products with the expanded matrices
# --------------------------------------------------------------------------------------
def _blockdiag_forward(x, weights_a, weights_b, specs, out_size):
    a_full, b_full = expand(weights_a, weights_b, specs, x.shape[2:])
    return matmul(matmul(a_full, x, "blockdiag"), b_full, "blockdiag")  # (C,Ho,H) @ (N,C,H,W) @ (C,W,Wo), broadcast over N


def _blockdiag_backward(grad_y, x, weights_a, weights_b, specs, out_size):
    a_full, b_full = expand(weights_a, weights_b, specs, x.shape[2:])
    z = matmul(a_full, x, "blockdiag")
    grad_b_full = matmul(z.transpose(0, 1, 3, 2), grad_y, "blockdiag").sum(axis=0)   # dB̂ = Σ_n zᵀ dy
    grad_z = matmul(grad_y, b_full.transpose(0, 2, 1), "blockdiag")                     # dz = dy B̂ᵀ
    grad_a_full = matmul(grad_z, x.transpose(0, 1, 3, 2), "blockdiag").sum(axis=0)   # dÂ = Σ_n dz xᵀ
    grad_x = matmul(a_full.transpose(0, 2, 1), grad_z, "blockdiag")                     # dx = Âᵀ dz
    grads_a, grads_b = expand_adjoint(grad_a_full, grad_b_full, specs)
    return grad_x, grads_a, grads_b


# --------------------------------------------------------------------------------------
# public dispatchers
# --------------------------------------------------------------------------------------
METHODS = {
    "loop": (_loop_forward, _loop_backward),
    "patchwise": (_patchwise_forward, _patchwise_backward),
    "blockdiag": (_blockdiag_forward, _blockdiag_backward),
}


def _method(method, which, check_finite):
    if not isinstance(check_finite, (bool, np.bool_)):
        raise TypeError(f"check_finite must be a bool, got {check_finite!r}")
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return METHODS[method][which]


def neocell_forward(x, weights_a, weights_b, specs, method="patchwise", *, check_finite=False):
    """NeoCell forward pass ``y[n, c] = Â_c x[n, c] B̂_c``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Input. ``C`` must equal the sum of the groups' channels.
    weights_a : list of array_like
        ``weights_a[g]`` has shape ``(channels_g, h_out, h_in)``.
    weights_b : list of array_like
        ``weights_b[g]`` has shape ``(channels_g, w_in, w_out)``.
    specs : list of dict or GroupSpec
        One entry per channel group, in any official dict form (SPEC section 2).
    method : {"patchwise", "loop", "blockdiag"}
        Formulation; all agree to rounding.
    check_finite : bool, default False
        Also refuse NaN/Inf in ``x`` (weights are always checked).

    Returns
    -------
    y : ndarray, shape (N, C, H_out, W_out)
        In the compute dtype (see the module docstring).

    Raises
    ------
    ValueError, TypeError
        On any inconsistency, before arithmetic; the message names the field.
    """
    fn = _method(method, 0, check_finite)
    x, wa, wb, specs, _, out_size = _prepare(x, weights_a, weights_b, specs, check_finite=check_finite)
    return fn(x, wa, wb, specs, out_size)


def neocell_backward(grad_y, x, weights_a, weights_b, specs, method="patchwise", *, check_finite=False):
    """NeoCell backward pass (SPEC section 5).

    Parameters
    ----------
    grad_y : array_like, shape (N, C, H_out, W_out)
        Gradient of the loss with respect to the output.
    x, weights_a, weights_b, specs, method, check_finite
        As in :func:`neocell_forward`. ``z = Â x`` is recomputed, not cached.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    grads_a : list of ndarray
        Shaped like ``weights_a``; includes the shift-corner contributions.
    grads_b : list of ndarray
        Shaped like ``weights_b``.
    """
    fn = _method(method, 1, check_finite)
    if grad_y is None:  # _prepare reads None as "no gradient" (the forward's case)
        raise TypeError("grad_y must be a real numeric array of the output's shape, got None")
    x, wa, wb, specs, grad_y, out_size = _prepare(
        x, weights_a, weights_b, specs, grad_y=grad_y, check_finite=check_finite
    )
    return fn(grad_y, x, wa, wb, specs, out_size)
