"""The NeoCell operator: three formulations, each forward beside its backward.

For every channel ``c`` (SPEC section 1)::

    y[n, c] = Â_c @ x[n, c] @ B̂_c

with ``Â_c`` of shape ``(H_out, H)`` and ``B̂_c`` of shape ``(W, W_out)`` the
expanded kernels of SPEC section 3. Three formulations compute it:

``"loop"``
    The paper's patch view, written literally: pad the plane, loop over channels
    and over tiles ``P``, compute ``A @ P @ B`` per tile, crop. Slow; for reading.
``"patchwise"`` (default)
    Vectorised. Each axis is "pad, cut into slabs, one matrix product per channel,
    crop" (SPEC 3, the equivalent view); the whole layer runs in a few large
    products and never builds an ``H x H`` matrix.
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

import numpy as np

from .expand import expand, expand_adjoint
from .instrument import matmul
from .spec import check_input_size, parse_specs, shift_segments

__all__ = ["neocell_forward", "neocell_backward", "METHODS"]


# --------------------------------------------------------------------------------------
# validation shared by all methods
# --------------------------------------------------------------------------------------
def _as_real_array(value, name):
    try:
        arr = np.asarray(value)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype.kind not in "fiu" or arr.dtype.kind == "b":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


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
        if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__"):
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
# "patchwise": each axis as pad -> slabs -> one product per channel -> crop
# --------------------------------------------------------------------------------------
def _slab_forward(v, kernel, shift, length_out):
    """Apply a stack of kernels along the last axis of ``v``.

    Parameters
    ----------
    v : ndarray, shape (c, M, L)
    kernel : ndarray, shape (c, k_in, k_out)
        Each slab of ``k_in`` values maps to ``k_out`` values: ``out_slab = slab @ kernel``.

    Returns
    -------
    out : ndarray, shape (c, M, length_out)
    slabs : ndarray, shape (c, M * tiles, k_in)
        The padded input cut into slabs (the backward needs it for the kernel gradient).
    """
    c, m, length = v.shape
    k_in, k_out = kernel.shape[1:]
    front, tiles, crop, _ = _axis_geometry(length, k_in, k_out, shift)
    padded = np.zeros((c, m, tiles * k_in), dtype=v.dtype)
    padded[:, :, front:front + length] = v
    slabs = padded.reshape(c, m * tiles, k_in)
    out = matmul(slabs, kernel, "patchwise").reshape(c, m, tiles * k_out)
    return out[:, :, crop:crop + length_out], slabs


def _slab_backward(grad_out, slabs, kernel, shift, length):
    """Adjoint of :func:`_slab_forward`: ``(grad_v, grad_kernel)``.

    ``out_slab = slab @ K`` gives ``d_slab = d_out_slab @ Kᵀ`` and ``dK = Σ slabᵀ d_out_slab``.
    """
    c, m, length_out = grad_out.shape
    k_in, k_out = kernel.shape[1:]
    front, tiles, crop, _ = _axis_geometry(length, k_in, k_out, shift)
    full = np.zeros((c, m, tiles * k_out), dtype=grad_out.dtype)
    full[:, :, crop:crop + length_out] = grad_out  # adjoint of the crop
    d_slabs = full.reshape(c, m * tiles, k_out)
    grad_kernel = matmul(slabs.transpose(0, 2, 1), d_slabs, "patchwise")
    grad_padded = matmul(d_slabs, kernel.transpose(0, 2, 1), "patchwise").reshape(c, m, tiles * k_in)
    return grad_padded[:, :, front:front + length], grad_kernel  # adjoint of the padding


def _patchwise_segment_forward(xs, a, b, sa, sb, out_size):
    """One run of channels: ``xs`` (N, c, H, W) -> (N, c, H_out, W_out) plus the slabs."""
    n, c, height, width = xs.shape
    # Height axis: z = Â x, i.e. zᵀ = xᵀ Âᵀ, slabs along H with kernel Aᵀ.
    xt = xs.transpose(1, 0, 3, 2).reshape(c, n * width, height)
    zt, slabs_a = _slab_forward(xt, a.transpose(0, 2, 1), sa, out_size[0])
    # Width axis: y = z B̂, slabs along W with kernel B.
    z = zt.reshape(c, n, width, out_size[0]).transpose(0, 1, 3, 2).reshape(c, n * out_size[0], width)
    y, slabs_b = _slab_forward(z, b, sb, out_size[1])
    return y.reshape(c, n, *out_size).transpose(1, 0, 2, 3), slabs_a, slabs_b


def _patchwise_forward(x, weights_a, weights_b, specs, out_size):
    y = np.empty((x.shape[0], x.shape[1], *out_size), dtype=x.dtype)
    for g, local, chans, sa, sb in _segments(specs):
        y[:, chans] = _patchwise_segment_forward(
            x[:, chans], weights_a[g][local], weights_b[g][local], sa, sb, out_size
        )[0]
    return y


def _patchwise_backward(grad_y, x, weights_a, weights_b, specs, out_size):
    n, _, height, width = x.shape
    grad_x = np.empty_like(x)
    grads_a = [np.empty_like(w) for w in weights_a]
    grads_b = [np.empty_like(w) for w in weights_b]
    for g, local, chans, sa, sb in _segments(specs):
        a, b = weights_a[g][local], weights_b[g][local]
        c = a.shape[0]
        _, slabs_a, slabs_b = _patchwise_segment_forward(x[:, chans], a, b, sa, sb, out_size)
        dy = grad_y[:, chans].transpose(1, 0, 2, 3).reshape(c, n * out_size[0], out_size[1])
        dz, grads_b[g][local] = _slab_backward(dy, slabs_b, b, sb, width)
        dzt = dz.reshape(c, n, out_size[0], width).transpose(0, 1, 3, 2).reshape(c, n * width, out_size[0])
        dxt, grad_at = _slab_backward(dzt, slabs_a, a.transpose(0, 2, 1), sa, height)
        grads_a[g][local] = grad_at.transpose(0, 2, 1)
        grad_x[:, chans] = dxt.reshape(c, n, width, height).transpose(1, 0, 3, 2)
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


def _method(method, which):
    if method not in METHODS:
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
    fn = _method(method, 0)
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
    fn = _method(method, 1)
    x, wa, wb, specs, grad_y, out_size = _prepare(
        x, weights_a, weights_b, specs, grad_y=grad_y, check_finite=check_finite
    )
    return fn(grad_y, x, wa, wb, specs, out_size)
