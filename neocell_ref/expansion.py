"""The block-expansion rule (SPEC section 3) and its adjoint (SPEC section 5).

This module is the single place that knows how a kernel is laid along the
diagonal of an expanded matrix: where the blocks go, how they are clipped at the
border, and how a shift moves them and wraps the kernel's bottom-right corner into
the top-left corner. Everything else that needs that picture asks
:func:`block_layout`:

* :func:`expand_kernel` scatters kernel entries into the expanded matrix;
* :func:`expand_kernel_adjoint` gathers an expanded-matrix gradient back onto the
  kernel, summing every place a kernel entry was copied to (the corner included);
* :func:`nnz` counts the filled entries in closed form (the complexity calculator uses it).

The patch-wise formulations follow the same rule by padding and cropping instead
(SPEC section 3, "an equivalent view"); the geometry of that view lives here too:

* :func:`padding_view` — front padding, tile count and crop of one axis;
* :func:`channel_runs` — the walk over a layer's channels in runs that share one
  kernel size and one shift pair (SPEC section 4), used by every formulation.

The tests prove the views agree.

**Dtypes.** :func:`expand` and :func:`expand_adjoint` follow the package's dtype rule
(:func:`neocell_ref.validation.compute_dtype`) over all their operands, as every
operation does. The one-kernel functions :func:`expand_kernel` and
:func:`expand_kernel_adjoint` compute integer input in float64 by the same rule (an
integer gradient summed into an integer array would wrap around), but keep a floating
operand's own dtype: the expansion copies entries exactly in any floating dtype, and the
adjoint then sums in the dtype the caller chose (the precision model of
:mod:`neocell_ref.verify` passes float16 to round every partial sum as a float16 port
would).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Set
from functools import lru_cache
from typing import NamedTuple

import numpy as np

from .spec import check_input_size, parse_specs, shift_segments
from .validation import as_int, as_real_array, check_nbytes, check_weights, compute_dtype

__all__ = [
    "block_layout",
    "expand_kernel",
    "expand_kernel_adjoint",
    "nnz",
    "expand",
    "expand_adjoint",
    "PaddingView",
    "padding_view",
    "ChannelRun",
    "channel_runs",
]


def _check_layout(p, q, rows, cols, shift) -> tuple[int, int, int, int, int]:
    """Validate the arguments shared by :func:`block_layout` and :func:`nnz`.

    Sizes are ints >= 1 (bools refused); the shift is an int with
    ``0 <= shift < min(p, q)``, the range SPEC 4 gives a channel's shift (the corner
    takes ``K[p-shift:, q-shift:]``, which must be a proper part of the kernel).
    """
    p, q = as_int(p, "p (kernel rows)", 1), as_int(q, "q (kernel columns)", 1)
    rows, cols = as_int(rows, "rows", 1), as_int(cols, "cols", 1)
    shift = as_int(shift, "shift", 0)
    if shift >= min(p, q):
        raise ValueError(f"shift must be smaller than the kernel ({p}x{q}): 0 <= shift <= {min(p, q) - 1}, got {shift}")
    return p, q, rows, cols, shift


def block_layout(p: int, q: int, rows: int, cols: int, shift: int):
    """Where each entry of a ``p x q`` kernel lands in a ``rows x cols`` expanded matrix.

    Follows SPEC section 3 literally:

    1. if ``shift > 0``, the top-left ``shift x shift`` corner receives the kernel's
       bottom-right ``shift x shift`` part ``K[p-shift:, q-shift:]``;
    2. block ``i`` starts at ``(shift + i*p, shift + i*q)``; the part inside the
       matrix, ``r x t``, receives the kernel's top-left part ``K[:r, :t]``.

    Parameters
    ----------
    p, q : int
        Kernel shape (>= 1).
    rows, cols : int
        Expanded-matrix shape ``R x S`` (>= 1).
    shift : int
        Block shift ``0 <= s < min(p, q)``.

    Returns
    -------
    (m_rows, m_cols, k_rows, k_cols) : tuple of read-only int arrays, each shape (nnz,)
        Entry ``(m_rows[j], m_cols[j])`` of the expanded matrix holds kernel entry
        ``(k_rows[j], k_cols[j])``. Matrix positions are distinct. Order: the corner,
        then the blocks in order, each row by row.

    Raises
    ------
    TypeError, ValueError
        On a non-integer (or bool) argument, a size < 1, or a shift outside ``[0, min(p, q))``.
    """
    return _block_layout(*_check_layout(p, q, rows, cols, shift))


def _block_span(p, q, rows, cols, shift) -> tuple[int, int, int]:
    """``(full, last_r, last_c)``: blocks whole on both axes, room left for the next block.

    Block ``i`` starts at ``(shift + i*p, shift + i*q)``. It is whole when
    ``(i+1)*p <= rows - shift`` and ``(i+1)*q <= cols - shift``, so the first
    ``full = min((rows-shift)//p, (cols-shift)//q)`` blocks are whole; block ``full``
    (if any) keeps ``min(p, last_r) x min(q, last_c)`` entries, and none after it starts
    inside the matrix (see docs/complexity.md, "Closed form of nnz").
    """
    span_r, span_c = rows - shift, cols - shift
    if span_r <= 0 or span_c <= 0:
        return 0, 0, 0
    full = min(span_r // p, span_c // q)
    return full, span_r - full * p, span_c - full * q


@lru_cache(maxsize=1024)
def _block_layout(p, q, rows, cols, shift):
    pieces = []  # (matrix row 0, matrix col 0, kernel row 0, kernel col 0, n rows, n cols, copies)
    if shift > 0:
        pieces.append((0, 0, p - shift, q - shift, min(shift, rows), min(shift, cols), 1))
    full, last_r, last_c = _block_span(p, q, rows, cols, shift)
    if full:
        pieces.append((shift, shift, 0, 0, p, q, full))
    if last_r and last_c:
        pieces.append((shift + full * p, shift + full * q, 0, 0, min(p, last_r), min(q, last_c), 1))
    parts = [[], [], [], []]
    for mr, mc, kr, kc, nr, nc, copies in pieces:
        # copies x nr x nc entries; copy i is moved by (i*p, i*q) in the matrix.
        i = np.arange(copies)[:, None, None]
        ii = np.arange(nr)[None, :, None]
        jj = np.arange(nc)[None, None, :]
        shape = (copies, nr, nc)
        for out, value in zip(parts, (mr + i * p + ii, mc + i * q + jj, kr + ii, kc + jj)):
            out.append(np.broadcast_to(value, shape).ravel())
    result = tuple(
        np.concatenate(part).astype(np.intp, copy=False) if part else np.zeros(0, dtype=np.intp) for part in parts
    )
    for arr in result:
        arr.setflags(write=False)
    return result


def nnz(p: int, q: int, rows: int, cols: int, shift: int) -> int:
    """Number of entries of the expanded ``rows x cols`` matrix that the rule fills (closed form).

    ``min(s, R)·min(s, S)`` corner entries, ``full·p·q`` for the whole blocks and
    ``min(p, last_r)·min(q, last_c)`` for the clipped one (:func:`_block_span`);
    derived in docs/complexity.md. Integer arithmetic, time independent of the sizes;
    :func:`block_layout` lists the same entries one by one (the tests compare them).

    Parameters
    ----------
    p, q, rows, cols, shift : int
        As in :func:`block_layout`: kernel shape ``p x q`` (>= 1), expanded-matrix shape
        ``R x S`` (>= 1), block shift ``0 <= s < min(p, q)``.

    Returns
    -------
    int
        The number of filled entries, ``len(block_layout(p, q, rows, cols, shift)[0])``.

    Raises
    ------
    TypeError, ValueError
        As :func:`block_layout`.
    """
    p, q, rows, cols, shift = _check_layout(p, q, rows, cols, shift)
    full, last_r, last_c = _block_span(p, q, rows, cols, shift)
    corner = min(shift, rows) * min(shift, cols)
    return corner + full * p * q + min(p, last_r) * min(q, last_c)


def expand_kernel(kernel: np.ndarray, rows: int, cols: int, shift: int) -> np.ndarray:
    """Expand kernels into block-diagonal matrices.

    Parameters
    ----------
    kernel : ndarray, shape (..., p, q)
        One kernel or a stack of kernels sharing ``shift``.
    rows, cols : int
        Shape ``R x S`` of the expanded matrix.
    shift : int
        Block shift ``s``.

    Returns
    -------
    ndarray, shape (..., rows, cols)
        In ``kernel``'s dtype when it is floating, in float64 when it is an integer
        array (the module's dtype note).

    Raises
    ------
    TypeError
        ``kernel`` is not a real numeric array, or a size or the shift is not an integer.
    ValueError
        ``kernel`` has fewer than 2 dimensions or an empty kernel axis, ``rows`` or
        ``cols`` is negative, ``shift`` is negative or not smaller than the kernel
        (``0 <= shift < min(p, q)``; SPEC 3), or the result would exceed the memory
        budget (:mod:`neocell_ref.validation`).
    """
    kernel = as_real_array(kernel, "kernel")
    p, q = _kernel_shape(kernel, "kernel")
    rows, cols = as_int(rows, "rows", 0), as_int(cols, "cols", 0)
    shift = _check_shift(shift, p, q)
    dtype = _kernel_dtype(kernel)
    check_nbytes(kernel.shape[:-2] + (rows, cols), dtype, "expand_kernel: expanded matrix")
    out = np.zeros(kernel.shape[:-2] + (rows, cols), dtype=dtype)
    if rows and cols:  # an empty matrix (a zero output size) holds no entry
        check_nbytes((nnz(p, q, rows, cols, shift),), np.intp, "expand_kernel: block layout indices")
        m_r, m_c, k_r, k_c = block_layout(p, q, rows, cols, shift)
        out[..., m_r, m_c] = kernel[..., k_r, k_c]
    return out


def expand_kernel_adjoint(grad_full: np.ndarray, p: int, q: int, shift: int) -> np.ndarray:
    """Adjoint of :func:`expand_kernel`: gradient of the kernel from that of the expanded matrix.

    Every expanded entry filled from ``K[a, b]`` adds into ``dK[a, b]`` (SPEC 5).

    Parameters
    ----------
    grad_full : ndarray, shape (..., rows, cols)
    p, q : int
        Kernel shape.
    shift : int

    Returns
    -------
    ndarray, shape (..., p, q)
        In ``grad_full``'s dtype when it is floating, in float64 when it is an integer
        array: summing the copies in an integer array would wrap around silently.

    Raises
    ------
    TypeError, ValueError
        As :func:`expand_kernel`, for ``grad_full``, ``p``, ``q`` and ``shift``.
    """
    grad_full = as_real_array(grad_full, "grad_full")
    if grad_full.ndim < 2:
        raise ValueError(f"grad_full must be at least 2-D (..., rows, cols), got shape {grad_full.shape}")
    p, q = as_int(p, "p", 1), as_int(q, "q", 1)
    shift = _check_shift(shift, p, q)
    rows, cols = grad_full.shape[-2:]
    dtype = _kernel_dtype(grad_full)
    check_nbytes(grad_full.shape[:-2] + (p, q), dtype, "expand_kernel_adjoint: kernel gradient")
    lead = grad_full.shape[:-2]
    if not (rows and cols):  # nothing was filled, nothing flows back
        return np.zeros(lead + (p, q), dtype=dtype)
    check_nbytes((nnz(p, q, rows, cols, shift),), np.intp, "expand_kernel_adjoint: block layout indices")
    m_r, m_c, k_r, k_c = block_layout(p, q, rows, cols, shift)
    # An explicit row count: reshape(-1, 0) is ambiguous when nothing is filled (rows == 0).
    values = grad_full[..., m_r, m_c].reshape(math.prod(lead), len(m_r)).astype(dtype, copy=False)
    flat = np.zeros((values.shape[0], p * q), dtype=dtype)
    # Sum duplicates: a kernel entry is copied into every block (and the corner).
    np.add.at(flat, (slice(None), k_r * q + k_c), values)
    return flat.reshape(lead + (p, q))


def _kernel_dtype(arr) -> np.dtype:
    """The dtype of the one-kernel functions: a floating ``arr``'s own, else the dtype
    rule's (float64 for integers; see the module docstring)."""
    return arr.dtype if arr.dtype.kind == "f" else compute_dtype(arr)


def _kernel_shape(kernel, name):
    """``(p, q)`` of a ``(..., p, q)`` kernel stack; both axes non-empty."""
    if kernel.ndim < 2:
        raise ValueError(f"{name} must be at least 2-D (..., p, q), got shape {kernel.shape}")
    p, q = kernel.shape[-2:]
    if p < 1 or q < 1:
        raise ValueError(f"{name} must have a non-empty (p, q) kernel, got shape {kernel.shape}")
    return p, q


def _check_shift(shift, p, q):
    """A shift ``s`` with ``0 <= s < min(p, q)``: SPEC 3 takes the wrapped corner from
    ``K[p-s:, q-s:]``, which a larger or negative ``s`` would index from the wrong end."""
    shift = as_int(shift, "shift", 0)
    if shift and shift >= min(p, q):
        raise ValueError(f"shift={shift} must be smaller than the kernel shape ({p}, {q})")
    return shift


class PaddingView(NamedTuple):
    """Geometry of one axis in SPEC section 3's equivalent view (pad, map every tile, crop).

    ``front``: zero rows added on top (``k - s`` when the shift ``s > 0``, else 0);
    ``tiles``: slabs of ``k_in`` rows once zero rows are added at the bottom up to a
    multiple of ``k_in``; ``crop``: output rows removed first (``k - s`` when
    ``s > 0``, else 0) before the first ``H_out`` rows are kept. Columns (the width,
    kernel ``B``) likewise.
    """

    front: int
    tiles: int
    crop: int


def padding_view(length: int, k_in: int, k_out: int, shift: int) -> PaddingView:
    """The :class:`PaddingView` of an axis of ``length`` values, tiles ``k_in -> k_out``, shift ``shift``.

    With a shift, SPEC section 4 makes the kernel square (``k_in == k_out == k``).
    Arguments are trusted (validated specs and sizes); integer arithmetic only.

    Parameters
    ----------
    length : int
        Input length of the axis: ``H`` for the height (kernel ``A``), ``W`` for the
        width (kernel ``B``).
    k_in, k_out : int
        The kernel's input and output size on that axis (``h_in, h_out`` or
        ``w_in, w_out``).
    shift : int
        The channel's shift on that axis (0 = none).

    Returns
    -------
    PaddingView
        ``(front, tiles, crop)``: ``front = crop = 0`` without a shift, else
        ``front = k_in - shift`` and ``crop = k_out - shift``;
        ``tiles = ceil((length + front) / k_in)``.
    """
    front = k_in - shift if shift else 0
    return PaddingView(front, -(-(length + front) // k_in), k_out - shift if shift else 0)


class ChannelRun(NamedTuple):
    """Consecutive channels of one group that share one shift pair (SPEC section 4).

    ``group``: index of the group; ``local``: the channels' slice in the group's
    weights; ``chans``: their slice in the layer (``x.shape[1]``);
    ``shift_a``/``shift_b``: the shifts of ``A`` and ``B``.
    """

    group: int
    local: slice
    chans: slice
    shift_a: int
    shift_b: int


def channel_runs(specs):
    """Yield the :class:`ChannelRun` s of a layer of parsed ``specs``, in channel order.

    Each group is cut by :func:`neocell_ref.spec.shift_segments`; the runs cover
    every channel of the layer once.

    Parameters
    ----------
    specs : sequence of GroupSpec
        The layer's groups, already parsed (:func:`neocell_ref.spec.parse_specs`).

    Yields
    ------
    ChannelRun
        ``(group, local, chans, shift_a, shift_b)``, in channel order.
    """
    start = 0
    for g, spec in enumerate(specs):
        for a, b, sa, sb in shift_segments(spec):
            yield ChannelRun(g, slice(a, b), slice(start + a, start + b), sa, sb)
        start += spec.channels


def expand(weights_a, weights_b, specs, size):
    """Expanded matrices of a whole NeoCell layer.

    Parameters
    ----------
    weights_a : list of ndarray
        ``weights_a[g]`` has shape ``(channels_g, h_out, h_in)``.
    weights_b : list of ndarray
        ``weights_b[g]`` has shape ``(channels_g, w_in, w_out)``.
    specs : list of dict or GroupSpec
    size : (int, int)
        Input ``(H, W)``.

    Returns
    -------
    A_full : ndarray, shape (C, H_out, H)
    B_full : ndarray, shape (C, W, W_out)
        Per channel ``c``, ``y[n, c] = A_full[c] @ x[n, c] @ B_full[c]``. Both in the
        :func:`~neocell_ref.validation.compute_dtype` of all the weights (integer
        weights give float64).
    """
    specs = parse_specs(specs)
    unordered = isinstance(size, (Set, Mapping))  # {7, 8} has no first and second element
    if unordered or isinstance(size, (str, bytes)) or not hasattr(size, "__len__") or len(size) != 2:
        raise TypeError(f"size must be a pair (H, W) of integers, got {size!r}")
    height, width = size
    h_out, w_out = check_input_size(specs, height, width)
    height, width = int(height), int(width)
    weights_a, weights_b, dtype = check_weights(weights_a, weights_b, specs)
    channels = sum(g.channels for g in specs)
    check_nbytes((channels, h_out, height), dtype, "expand: A_full")
    check_nbytes((channels, width, w_out), dtype, "expand: B_full")
    a_full = np.zeros((channels, h_out, height), dtype=dtype)
    b_full = np.zeros((channels, width, w_out), dtype=dtype)
    for g, sl, c, sa, sb in channel_runs(specs):
        a_full[c] = expand_kernel(weights_a[g][sl], h_out, height, sa)
        b_full[c] = expand_kernel(weights_b[g][sl], width, w_out, sb)
    return a_full, b_full


def expand_adjoint(grad_a_full, grad_b_full, specs):
    """Adjoint of :func:`expand`: kernel gradients from expanded-matrix gradients.

    Parameters
    ----------
    grad_a_full : ndarray, shape (C, H_out, H)
    grad_b_full : ndarray, shape (C, W, W_out)
    specs : list of dict or GroupSpec

    Returns
    -------
    grads_a, grads_b : lists of ndarray shaped like the weights
        In the :func:`~neocell_ref.validation.compute_dtype` of both gradients, as
        :func:`expand` returns both matrices in that of all the weights (integer
        gradients are summed in float64, never wrapped around).

    Raises
    ------
    TypeError
        A gradient is not a real numeric array.
    ValueError
        A gradient does not have exactly the shape :func:`expand` returns for these
        specs at the input size ``(H, W)`` read from ``grad_a_full.shape[2]`` and
        ``grad_b_full.shape[1]`` (no broadcasting).
    """
    specs = parse_specs(specs)
    grad_a_full = as_real_array(grad_a_full, "grad_a_full")
    grad_b_full = as_real_array(grad_b_full, "grad_b_full")
    for name, arr, layout in (
        ("grad_a_full", grad_a_full, "(C, H_out, H)"),
        ("grad_b_full", grad_b_full, "(C, W, W_out)"),
    ):
        if arr.ndim != 3:
            raise ValueError(f"{name} must be 3-D {layout}, got shape {arr.shape}")
    height, width = grad_a_full.shape[2], grad_b_full.shape[1]
    h_out, w_out = check_input_size(specs, height, width)
    channels = sum(g.channels for g in specs)
    for name, arr, expected in (
        ("grad_a_full", grad_a_full, (channels, h_out, height)),
        ("grad_b_full", grad_b_full, (channels, width, w_out)),
    ):
        if arr.shape != expected:
            raise ValueError(
                f"{name} has shape {arr.shape}, expected {expected} for these specs and input "
                f"size H={height}, W={width}"
            )
    # Cast before the sums: expand_kernel_adjoint keeps a float16 operand's dtype.
    dtype = compute_dtype(grad_a_full, grad_b_full)
    grad_a_full, grad_b_full = grad_a_full.astype(dtype, copy=False), grad_b_full.astype(dtype, copy=False)
    grads_a = [np.zeros(g.shape_a, dtype=dtype) for g in specs]
    grads_b = [np.zeros(g.shape_b, dtype=dtype) for g in specs]
    for g, sl, c, sa, sb in channel_runs(specs):
        spec = specs[g]
        grads_a[g][sl] = expand_kernel_adjoint(grad_a_full[c], spec.h_out, spec.h_in, sa)
        grads_b[g][sl] = expand_kernel_adjoint(grad_b_full[c], spec.w_in, spec.w_out, sb)
    return grads_a, grads_b
