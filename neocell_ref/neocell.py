"""The NeoCell operator: three formulations, each forward beside its backward.

This module holds the plain formulations, the public dispatchers and the input
validation; the speed work of the default ``"patchwise"`` method (tiled layout, chunk
planner, reused buffers) lives beside it in :mod:`neocell_ref.neocell_fast`.

For every channel ``c`` (SPEC section 1)::

    y[n, c] = Â_c @ x[n, c] @ B̂_c

with ``Â_c`` of shape ``(H_out, H)`` and ``B̂_c`` of shape ``(W, W_out)`` the
expanded kernels of SPEC section 3. Three formulations compute it:

``"loop"``
    The paper's patch view, written literally: pad the plane, loop over channels
    and over tiles ``P``, compute ``A @ P @ B`` per tile, crop. Slow; for reading,
    and the plain reference of the patch-wise view.
``"patchwise"`` (default)
    The fast path (:mod:`neocell_ref.neocell_fast`): the same view, vectorised.
    Each shift sub-group is padded into a tiled layout where every tile row is one
    contiguous run, so that each axis is one matrix product per channel; channels
    (or samples) go through in cache-sized chunks with reused buffers. It never
    builds an ``H x H`` matrix. The tests prove it equal to ``"loop"`` and
    ``"blockdiag"``.
``"blockdiag"``
    Builds ``Â`` and ``B̂`` with :func:`neocell_ref.expansion.expand` and multiplies
    densely. The most direct transcription of SPEC sections 1, 3 and 5.

Backward (SPEC section 5), per sample and channel, with ``z = Â x`` and ``y = z B̂``::

    dB̂ = Σ_n z[n]ᵀ dy[n]      dz = dy B̂ᵀ      dÂ = Σ_n dz[n] x[n]ᵀ      dx = Âᵀ dz

and kernel gradients are the adjoint of the expansion. Every backward here
recomputes ``z`` from ``x`` instead of caching it: the operator is cheap and the
signatures stay pure functions of their inputs.

Dtypes: the package's dtype rule (:func:`neocell_ref.validation.compute_dtype`) over
``x``, the weights and, in the backward, ``grad_y``; complex input is refused.
"""

from __future__ import annotations

import numpy as np

from .expansion import channel_runs, expand, expand_adjoint, padding_view
from .instrument import matmul
from .neocell_fast import patchwise_backward, patchwise_forward
from .spec import check_input_size, parse_specs
from .validation import as_flag, as_real_array, check_nbytes, check_weights, compute_dtype

__all__ = ["neocell_forward", "neocell_backward", "METHODS"]


# --------------------------------------------------------------------------------------
# validation shared by all methods
# --------------------------------------------------------------------------------------
def _prepare(x, weights_a, weights_b, specs, grad_y=None, check_finite=False):
    """Validate all operands before any arithmetic; cast to one compute dtype."""
    specs = parse_specs(specs)
    x = as_real_array(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    channels = sum(g.channels for g in specs)
    if x.shape[1] != channels:
        raise ValueError(f"x has {x.shape[1]} channels (x.shape[1]) but the groups' channels sum to {channels}")
    if x.shape[0] < 1:
        raise ValueError(f"x must hold at least one sample, got shape {x.shape}")
    h_out, w_out = check_input_size(specs, x.shape[2], x.shape[3])
    weights_a, weights_b, wdtype = check_weights(weights_a, weights_b, specs)
    operands = [x.dtype, wdtype]
    if grad_y is not None:
        grad_y = as_real_array(grad_y, "grad_y")
        expected = (x.shape[0], channels, h_out, w_out)
        if grad_y.shape != expected:
            raise ValueError(f"grad_y has shape {grad_y.shape}, expected {expected}")
        operands.append(grad_y.dtype)
    dtype = compute_dtype(*operands)
    check_nbytes((x.shape[0], channels, h_out, w_out), dtype, "neocell: output y")
    # x in the compute dtype: the cast below copies it (x may be a broadcast view of a
    # few bytes), and the backward's grad_x has its size.
    check_nbytes(x.shape, dtype, "neocell: x in the compute dtype")
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


# --------------------------------------------------------------------------------------
# "loop": the paper's patch view, literally (SPEC section 3.2 with the geometry of
# expand.padding_view): the plain reference the fast "patchwise" path is proven against
# --------------------------------------------------------------------------------------
def _loop_forward(x, weights_a, weights_b, specs, out_size):
    n, _, height, width = x.shape
    y = np.zeros((n, x.shape[1], *out_size), dtype=x.dtype)
    for g, local, chans, sa, sb in channel_runs(specs):
        spec = specs[g]
        fa, ta, ca = padding_view(height, spec.h_in, spec.h_out, sa)
        fb, tb, cb = padding_view(width, spec.w_in, spec.w_out, sb)
        for c_local, c in zip(range(local.start, local.stop), range(chans.start, chans.stop)):
            a, b = weights_a[g][c_local], weights_b[g][c_local]
            plane = np.zeros((n, ta * spec.h_in, tb * spec.w_in), dtype=x.dtype)
            plane[:, fa : fa + height, fb : fb + width] = x[:, c]
            out = np.zeros((n, ta * spec.h_out, tb * spec.w_out), dtype=x.dtype)
            for i in range(ta):
                for j in range(tb):
                    tile = plane[:, i * spec.h_in : (i + 1) * spec.h_in, j * spec.w_in : (j + 1) * spec.w_in]
                    out[:, i * spec.h_out : (i + 1) * spec.h_out, j * spec.w_out : (j + 1) * spec.w_out] = matmul(
                        matmul(a, tile, "loop"), b, "loop"
                    )
            y[:, c] = out[:, ca : ca + out_size[0], cb : cb + out_size[1]]
    return y


def _loop_backward(grad_y, x, weights_a, weights_b, specs, out_size):
    n, _, height, width = x.shape
    grad_x = np.zeros_like(x)
    grads_a = [np.zeros_like(w) for w in weights_a]
    grads_b = [np.zeros_like(w) for w in weights_b]
    for g, local, chans, sa, sb in channel_runs(specs):
        spec = specs[g]
        fa, ta, ca = padding_view(height, spec.h_in, spec.h_out, sa)
        fb, tb, cb = padding_view(width, spec.w_in, spec.w_out, sb)
        for c_local, c in zip(range(local.start, local.stop), range(chans.start, chans.stop)):
            a, b = weights_a[g][c_local], weights_b[g][c_local]
            plane = np.zeros((n, ta * spec.h_in, tb * spec.w_in), dtype=x.dtype)
            plane[:, fa : fa + height, fb : fb + width] = x[:, c]
            # The crop's adjoint: put grad_y back where it was cut from, zeros elsewhere.
            grad_out = np.zeros((n, ta * spec.h_out, tb * spec.w_out), dtype=x.dtype)
            grad_out[:, ca : ca + out_size[0], cb : cb + out_size[1]] = grad_y[:, c]
            grad_plane = np.zeros_like(plane)
            for i in range(ta):
                for j in range(tb):
                    rows_in = slice(i * spec.h_in, (i + 1) * spec.h_in)
                    cols_in = slice(j * spec.w_in, (j + 1) * spec.w_in)
                    tile = plane[:, rows_in, cols_in]
                    d_out = grad_out[:, i * spec.h_out : (i + 1) * spec.h_out, j * spec.w_out : (j + 1) * spec.w_out]
                    # Y = A P B:  dP = Aᵀ dY Bᵀ,  dA = Σ dY (P B)ᵀ,  dB = Σ (A P)ᵀ dY
                    grad_plane[:, rows_in, cols_in] = matmul(matmul(a.T, d_out, "loop"), b.T, "loop")
                    grads_a[g][c_local] += matmul(d_out, matmul(tile, b, "loop").transpose(0, 2, 1), "loop").sum(axis=0)
                    grads_b[g][c_local] += matmul(matmul(a, tile, "loop").transpose(0, 2, 1), d_out, "loop").sum(axis=0)
            # The padding's adjoint: keep the part that was x.
            grad_x[:, c] = grad_plane[:, fa : fa + height, fb : fb + width]
    return grad_x, grads_a, grads_b


# --------------------------------------------------------------------------------------
# "blockdiag": dense products with the expanded matrices
# --------------------------------------------------------------------------------------
def _blockdiag_forward(x, weights_a, weights_b, specs, out_size):
    a_full, b_full = expand(weights_a, weights_b, specs, x.shape[2:])
    return matmul(
        matmul(a_full, x, "blockdiag"), b_full, "blockdiag"
    )  # (C,Ho,H) @ (N,C,H,W) @ (C,W,Wo), broadcast over N


def _blockdiag_backward(grad_y, x, weights_a, weights_b, specs, out_size):
    a_full, b_full = expand(weights_a, weights_b, specs, x.shape[2:])
    z = matmul(a_full, x, "blockdiag")
    grad_b_full = matmul(z.transpose(0, 1, 3, 2), grad_y, "blockdiag").sum(axis=0)  # dB̂ = Σ_n zᵀ dy
    grad_z = matmul(grad_y, b_full.transpose(0, 2, 1), "blockdiag")  # dz = dy B̂ᵀ
    grad_a_full = matmul(grad_z, x.transpose(0, 1, 3, 2), "blockdiag").sum(axis=0)  # dÂ = Σ_n dz xᵀ
    grad_x = matmul(a_full.transpose(0, 2, 1), grad_z, "blockdiag")  # dx = Âᵀ dz
    grads_a, grads_b = expand_adjoint(grad_a_full, grad_b_full, specs)
    return grad_x, grads_a, grads_b


# --------------------------------------------------------------------------------------
# public dispatchers
# --------------------------------------------------------------------------------------
METHODS = {
    "loop": (_loop_forward, _loop_backward),
    "patchwise": (patchwise_forward, patchwise_backward),  # the fast path, neocell_fast.py
    "blockdiag": (_blockdiag_forward, _blockdiag_backward),
}


def _check_intermediates(method, backward, x_shape, specs, out_size, dtype):
    """Refuse, before any arithmetic, a case whose intermediates break the memory budget.

    The output and ``x`` in the compute dtype are budgeted in :func:`_prepare`; an
    intermediate can be far larger when a group changes the aspect ratio
    (``h_out > h_in`` with ``w_out < w_in``: ``z = Â x`` is ``h_out/h_in`` times the input
    while ``y`` is not). Checked, per method, the largest arrays it allocates, and no
    others (so nothing that fits is refused):

    * ``"blockdiag"``: ``z = Â x`` (N, C, H_out, W); backward also the per-sample
      ``zᵀ dy`` (N, C, W, W_out) and ``dz xᵀ`` (N, C, H_out, H) before their sums;
    * ``"loop"``: per group, one channel's padded input plane (N, T_a·h_in, T_b·w_in),
      its output plane (N, T_a·h_out, T_b·w_out) and one tile's ``A P``
      (N, h_out, w_in), with ``T_a``, ``T_b`` the tile counts of SPEC 3's padding view;
      backward also one tile's per-sample kernel-gradient terms (N, h_out, h_in) and
      (N, w_in, w_out) and its ``Aᵀ dY`` (N, h_in, w_out), which none of the planes
      bounds when a kernel side is much longer than the plane's other side;
    * ``"patchwise"``: per group, the tiled input, ``Z`` and output of one sample of one
      channel, (T_a·h_in, T_b·w_in), (T_a·h_out, T_b·w_in) and (T_a·h_out, T_b·w_out):
      its chunks never hold less, and hold more only within their fixed byte size.
    """
    n, channels, height, width = x_shape
    if method == "blockdiag":
        shapes = [(n, channels, out_size[0], width)]
        if backward:
            shapes += [(n, channels, width, out_size[1]), (n, channels, out_size[0], height)]
    else:
        shapes = []
        for g, _, _, shift_a, shift_b in channel_runs(specs):
            spec = specs[g]
            tiles_a = padding_view(height, spec.h_in, spec.h_out, shift_a)[1]
            tiles_b = padding_view(width, spec.w_in, spec.w_out, shift_b)[1]
            rows_in, rows_out = tiles_a * spec.h_in, tiles_a * spec.h_out
            cols_in, cols_out = tiles_b * spec.w_in, tiles_b * spec.w_out
            if method == "loop":
                shapes += [(n, rows_in, cols_in), (n, rows_out, cols_out), (n, spec.h_out, spec.w_in)]
                if backward:
                    shapes += [(n, spec.h_out, spec.h_in), (n, spec.w_in, spec.w_out), (n, spec.h_in, spec.w_out)]
            else:
                shapes += [(rows_in, cols_in), (rows_out, cols_in), (rows_out, cols_out)]
    for shape in shapes:
        check_nbytes(shape, dtype, f"neocell ({method}): intermediate")


def _method(method, which, check_finite):
    as_flag(check_finite, "check_finite")
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
    _check_intermediates(method, False, x.shape, specs, out_size, x.dtype)
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
    _check_intermediates(method, True, x.shape, specs, out_size, x.dtype)
    return fn(grad_y, x, wa, wb, specs, out_size)
