"""The fast training path of :class:`neocell_ref.models.NeoNeXt`: ``forward(x, training=True)``
(with the default ``cache=True``) and the :meth:`~neocell_ref.models.NeoNeXt.backward` after it.

The plain formulation is the layer-by-layer loop of :mod:`neocell_ref.models` (each layer
by its layer kind's record, every intermediate a new array, each layer's input kept and
everything else recomputed in backward); it stays reachable with
``model.fast_training = False``. This module runs the same network with the part of
each block after its NeoCell,

    ``skip + drop_path(layer_scale(fc_2(GELU(fc_1(BatchNorm(x))))))``,

as one fused step (:func:`tail_forward`, :func:`tail_backward`). Every other layer
(stem, down-sampling, NeoCell, head) runs by its record exactly as in the plain path,
except the training BatchNorms of the stem and the down-sampling layers, which run the
tails' BatchNorm step (statistics once, same bits), and, with threads, a 1x1
convolution's per-sample products, which are shared out by samples (below).
What the fused step does differently:

* **BatchNorm** (training mode): the batch statistics are computed once, with the
  plain path's two-pass rule (:func:`neocell_ref.layers.batchnorm_stats`' arithmetic),
  and serve the normalisation, the running-statistic update and the backward, where
  the plain path computes them three times; the backward works in place in buffers it
  owns;
* **GELU**: one blocked pass over the hidden activation computes both ``GELU(h)`` (in
  place of ``h``) and its derivative ``GELU'(h)``, sharing the evaluation of ``Φ``; the
  derivative is kept for backward, where the GELU backward becomes one multiplication
  (the plain path keeps ``h`` and re-evaluates ``Φ`` and ``φ`` there);
* **layout**: with more than one sample the block's activations are gathered into one
  ``(C, N·H·W)`` matrix (:func:`_flat_layout`), so that each weight matrix is streamed
  once per batch, each product is one BLAS call and each weight gradient is one product
  with the long ``N·H·W`` sum inside BLAS, instead of ``N`` products summed afterwards;
  batch 1 runs the plain path's products on the NCHW memory;
* **layer scale, drop path, residual addition** run in place on arrays the step made;
* **threads**: the forward and its backward run with the worker pool owning the cores
  (:data:`train_scope`: NumPy's BLAS at one thread when ``NEOCELL_THREADS`` or the CPU
  count gives the pool two threads or more); the flat layout's products are then split
  by rows of the result (:func:`_product`), the GELU pass into contiguous blocks and
  the BatchNorm's forward and backward by channels (shares of two channels or more,
  :func:`_channel_shares`) and the 1x1 convolutions of the down-sampling layers by
  samples (:func:`neocell_ref.models_fast.conv1x1_samples`, :func:`conv1x1_backward`:
  the record's per-sample products, tape entry ``"fast_layer"``) over the pool's
  threads. The shares depend on the thread count only.

Equality with the plain path (``tests/test_models_fast_train.py``): in the per-sample
layout every value goes through the same operations in the same order, so logits,
gradients and running statistics are bit-identical; the ``(C, N·H·W)`` layout sums the
weight gradients in another order (one product over ``N·H·W`` instead of ``N`` products
then a sum) and lets BLAS block the products (and their row shares) differently, which
is within the float32 accuracy of ``docs/model.md`` (float64: about 1e-15 relative).
Bit-identity in the per-sample layout assumes BLAS computes a product's bits
independently of its own thread count, which holds for small products (the tests) and
not always for large ones (OpenBLAS at one and at two threads may differ in the last bit).
"""

from __future__ import annotations

import time

import numpy as np
from scipy import special

from . import _parallel as parallel
from . import layers as L
from . import registry
from .instrument import matmul
from .models_fast import (
    _ROW_UNIT,
    _linear_rows,
    _row_ranges,
    _stopwatch,
    conv1x1_samples,
    conv1x1_shares,
)

__all__ = ["train_forward", "tail_forward", "tail_backward", "train_tail", "train_scope"]

#: The scope of a fast training forward and of its backward: the worker pool owns the
#: cores (NumPy's BLAS at one thread when the pool has threads, see
#: :func:`neocell_ref._parallel.pool_owns_cores`); the block tails' large products and
#: their GELU pass are then split over the pool's threads (:func:`_product`,
#: :func:`_gelu_with_derivative`).
train_scope = parallel.pool_owns_cores

#: Products of at least this many multiply-accumulates are split over the pool's
#: threads by rows of the result (whole multiples of ``_ROW_UNIT`` rows); smaller ones
#: cost less than waking a thread. NeoNeXt-T's block products have 2**24 to 2**28.
_SPLIT_MACS = 1 << 22


def _product(a, b, bias=None):
    """``a @ b (+ bias[:, None])`` for 2-D operands (tag ``"linear"``), split over the
    worker pool by rows of the result when the pool has threads and the product is large.

    Shares are whole multiples of ``_ROW_UNIT`` rows, fixed by the thread count. BLAS
    may block a share's rows differently from the whole product's (with OpenBLAS at one
    thread and shares of 16 rows the NeoNeXt-T products measured bitwise equal, but
    that is not promised), so the result is equal to the unsplit one within the
    documented float32 accuracy (tested with shares of 3 rows); the bias is added to
    each share by its thread (the same additions).
    """
    rows, inner = a.shape
    columns = b.shape[1]
    workers = parallel.threads()
    out = np.empty((rows, columns), dtype=np.result_type(a, b))
    if workers < 2 or parallel.in_task() or rows < 2 * _ROW_UNIT or rows * inner * columns < _SPLIT_MACS:
        _linear_rows(a, b, bias, out, 0, rows)
        return out
    parallel.run_each(_row_ranges(rows, workers), lambda span: _linear_rows(a, b, bias, out, *span))
    return out


def train_forward(model, x):
    """Training-mode logits of ``model`` for ``x`` (checked, model dtype) and the tape.

    Parameters
    ----------
    model : NeoNeXt
        The network; its BatchNorm running-statistic updates are staged on it
        (:meth:`NeoNeXt.stage_buffer`) and its :attr:`NeoNeXt.drop_path_rng` draws the
        drop-path masks.
    x : ndarray, shape (N, in_chans, H, W)
        Input, already checked and in the model dtype.

    Returns
    -------
    logits : ndarray, shape (N, num_classes)
    tape : list
        ``(kind, desc, saved)`` entries in execution order, as the plain path records
        them (``"fork"``, ``"layer"``, ``"join"``) plus ``("tail", TailPlan, saved)``
        for a fused block tail; :meth:`NeoNeXt.backward` walks it backwards. A 1x1
        convolution split by samples and a stem or down-sampling BatchNorm are recorded
        as ``("fast_layer", desc, (backward, inner))``, run as
        ``backward(model, desc, grad, inner)``.
    """
    tape = []
    for unit in model.describe(x.shape[2:]).units:
        residual = unit.kind == "residual"
        if residual:
            skip = x
            tape.append(("fork", None, None))
        layers = list(unit.layers)
        tail = None
        for i in range(len(layers)) if residual else ():
            tail = train_tail(layers[i:])
            if tail is not None:
                layers = layers[:i]
                break
        for desc in layers:
            start = time.perf_counter() if model.profile is not None else 0.0
            shares = conv1x1_shares(desc, x)
            if shares is not None:  # the record's products, split by samples
                tape.append(("fast_layer", desc, (conv1x1_backward, x)))
                x = conv1x1_samples(x, model.param(desc, "weight"), shares)
            elif desc.kind == "batchnorm":  # stem and down-sampling: the blocks' BatchNorm step
                y, bn_saved = _bn_train_forward(model, desc, x)
                tape.append(("fast_layer", desc, (batchnorm_backward, (x, bn_saved))))
                x = y
            else:
                x, saved, _ = registry.get(desc.kind).forward(model, desc, x, True, False)
                tape.append(("layer", desc, saved))
            if model.profile is not None:
                model._tick(f"forward:{desc.kind}", start)
        if tail is not None:
            x, saved = tail_forward(model, tail, x, skip)  # the residual addition included
            tape.append(("tail", tail, saved))
            tape.append(("join", None, None))
        elif residual:
            start = time.perf_counter() if model.profile is not None else 0.0
            x = skip + x
            if model.profile is not None:
                model._tick("forward:residual_add", start)
            tape.append(("join", None, None))
    return x, tape


class TailPlan(tuple):
    """``(batchnorm or None, fc_1, fc_2, layer_scale or None, drop_path or None)``."""

    __slots__ = ()


def train_tail(layers):
    """A :class:`TailPlan` if ``layers`` (the rest of a residual unit) is
    ``[batchnorm], linear, gelu, linear, [layer_scale], [drop_path]``, else None.
    Which layers a block has is read from the description, not assumed.

    Parameters
    ----------
    layers : sequence of LayerDesc
        The layers of a residual unit from some index on, in execution order (sliced,
        not modified).

    Returns
    -------
    tail : TailPlan or None
        ``(bn, fc_1, fc_2, scale, drop)``, a tuple of 5 LayerDesc with ``bn``, ``scale``
        and ``drop`` None where the block has no such layer; None when ``layers`` is not
        such a tail.
    """
    kinds = [d.kind for d in layers]
    bn = None
    if kinds[:1] == ["batchnorm"]:
        bn, layers, kinds = layers[0], layers[1:], kinds[1:]
    if kinds[:3] != ["linear", "gelu", "linear"]:
        return None
    fc_1, fc_2 = layers[0], layers[2]
    if fc_1.out_shape != fc_2.in_shape:  # pragma: no cover - guarded by the description
        return None
    rest, kinds = list(layers[3:]), kinds[3:]
    scale = drop = None
    if kinds[:1] == ["layer_scale"]:
        scale, kinds = rest.pop(0), kinds[1:]
    if kinds[:1] == ["drop_path"]:
        drop, kinds = rest.pop(0), kinds[1:]
    return None if kinds else TailPlan((bn, fc_1, fc_2, scale, drop))


def _flat_layout(fc_1, fc_2, n, positions):
    """True when the block's products run on one ``(C, N·H·W)`` matrix: for every batch
    of more than one sample.

    Measured on 2 cores (NeoNeXt-T, batch 8, interleaved A/B, benchmarks/README.md): in
    the late stages (weights larger than one sample's hidden activation) it saves 11 %
    of the training step single-threaded, where ``N`` per-sample weight gradients of
    short sums are the cost; in the early stages it is neutral single-threaded and saves
    8-25 % with multi-threaded BLAS on a loaded machine, where each of the ``N``
    per-sample products is a synchronisation of the BLAS threads. The per-sample layout
    (the plain path's products, bit-identical) serves batch 1.
    """
    return n > 1


def _to_flat(a3):
    """``(N, C, P) -> (C, N·P)`` (a copy)."""
    n, c, p = a3.shape
    return np.ascontiguousarray(a3.transpose(1, 0, 2)).reshape(c, n * p)


def _from_flat(a, n, out=None):
    """``(C, N·P) -> (N, C, P)``, into ``out`` when given, else a new array."""
    c = a.shape[0]
    view = a.reshape(c, n, -1).transpose(1, 0, 2)
    if out is None:
        return np.ascontiguousarray(view)
    out[...] = view
    return out


# --------------------------------------------------------------------------------------
# forward
# --------------------------------------------------------------------------------------
def tail_forward(model, tail, x, skip):
    """``skip + drop_path(γ·fc_2(GELU(fc_1(BN(x)))))`` in training mode, and what backward needs.

    ``x`` (the block's NeoCell output) and ``skip`` are never modified. The BatchNorm
    running-statistic updates are staged on the model (committed after the forward).

    Parameters
    ----------
    model : NeoNeXt
        Holds the parameters; its :attr:`NeoNeXt.drop_path_rng` draws the drop-path
        factors (one ``random(N)`` when the rate is non-zero).
    tail : TailPlan
        The block's tail layers, from :func:`train_tail`.
    x : ndarray, shape (N, C, H, W)
        The block's NeoCell output, the tail's input (``P = H·W`` below).
    skip : ndarray, shape (N, C, H, W)
        The block's input, added to the branch.

    Returns
    -------
    out : ndarray, shape of ``skip``
    saved : tuple
        ``(x, bn_saved, y, a, d, z, drop_scale, flat)``: the BatchNorm input and its
        ``(mean, inv_std, scale)``, fc_1's input ``y``, fc_2's input ``a = GELU(h)``
        and the GELU derivative ``d = GELU'(h)`` (both ``(N, 4C, P)`` or, in the flat
        layout, ``(4C, N·P)``, with ``y`` alike), the layer-scale input ``z`` (None
        without layer scale), the drop-path factors (None when not drawn) and ``flat``
        (bool: the flat layout ran). ``bn_saved`` is None without BatchNorm.
    """
    bn, fc_1, fc_2, scale_desc, drop_desc = tail
    lap = _stopwatch(model, "forward")
    n = x.shape[0]
    positions = int(np.prod(x.shape[2:], dtype=np.int64))
    bn_saved = None
    if bn is not None:
        y, bn_saved = _bn_train_forward(model, bn, x)
    else:
        y = x
    lap("batchnorm")
    w1, b1, w2, b2 = _weights(model, fc_1), _bias(model, fc_1), _weights(model, fc_2), _bias(model, fc_2)
    flat = _flat_layout(fc_1, fc_2, n, positions)
    y3 = np.ascontiguousarray(y).reshape(n, y.shape[1], positions)
    if flat:
        y2 = _to_flat(y3)
        h = _product(w1, y2, b1)
    else:
        y2 = y3
        h = matmul(w1, y3, "linear")  # the plain path's product: one GEMM per sample
        if b1 is not None:
            h += b1[:, None]
    lap("linear")
    d = np.empty_like(h)
    a = _gelu_with_derivative(h, d)  # in place of h
    lap("gelu")
    if flat:
        z = _product(w2, a, b2)
    else:
        z = matmul(w2, a, "linear")
        if b2 is not None:
            z += b2[:, None]
    if flat:
        z = _from_flat(z, n)
    z = z.reshape(skip.shape)
    lap("linear")
    kept_z = None
    if scale_desc is not None:
        kept_z = z
        z = L.layer_scale_forward(z, model.param(scale_desc, "gamma"))  # new array: z is kept for γ's gradient
        lap("layer_scale")
    drop_scale = None
    if drop_desc is not None and drop_desc.options["rate"] != 0.0:
        # the drop_path record's draw, in execution order (one rng.random(N) per block)
        drop_scale = L.drop_path_scale(model.drop_path_rng, n, drop_desc.options["rate"], dtype=z.dtype)
        L.drop_path_forward(z, drop_scale, out=z)
        lap("drop_path")
    z += skip  # x + branch, with the branch's buffer as the result (addition commutes exactly)
    lap("residual_add")
    return z, (x, bn_saved, y2, a, d, kept_z, drop_scale, flat)


def _weights(model, desc):
    return model.param(desc, "weight")


def _bias(model, desc):
    return model.param(desc, "bias") if "bias" in desc.params else None


#: BatchNorm layers of at least this many values have their channels split over the
#: pool's threads (:func:`_channel_shares`); smaller ones cost less than waking a thread.
_BN_SPLIT_VALUES = 1 << 17


#: Values per block of channels inside a share of the training BatchNorm passes
#: (:func:`_channel_blocks`): a block's statistics, normalisation and gradient passes
#: then re-read it from cache instead of memory. Measured on the benchmark machine, one
#: thread, float32, batch 8, forward / backward ms, whole layer -> blocks of 2**18 values:
#: 96x56² 10.6 / 14.8 -> 7.6 / 9.7; 192x28² 5.0 / 5.3 -> 3.0 / 3.5; 384x14² 2.6 / 2.8
#: -> 2.1 / 2.4 (2**16: 9.3 / 10.6 at 56²; 2**19: 7.9 / 9.1); the same bits.
_BN_BLOCK_VALUES = 1 << 18


def _channel_blocks(span, per_channel):
    """The share ``span = (lo, hi)`` of channels cut into near-equal consecutive blocks of
    about :data:`_BN_BLOCK_VALUES` values (``per_channel`` values per channel), each of
    at least two channels (see :func:`_channel_shares`: the statistics keep their bits)."""
    lo, hi = span
    count = max(1, min((hi - lo) // 2, -(-(hi - lo) * per_channel // _BN_BLOCK_VALUES)))
    return [(lo + a, lo + b) for a, b in parallel.split(hi - lo, count)]


def _channel_shares(x):
    """Thread shares ``(lo, hi)`` of the channel axis of ``x`` (N, C, H, W) for the
    BatchNorm passes, or ``[(0, C)]`` (the calling thread) when the pool has one thread,
    inside a task, or for a small layer.

    Every share holds at least two channels: NumPy sums a slice of two or more channels
    over ``(N, H, W)`` in the same order as the whole array (tested), but a single
    channel's slice in another order (its ``N`` partial sums pairwise), which would
    change the statistics' last bits.
    """
    channels = x.shape[1]
    workers = min(parallel.threads(), channels // 2)
    if workers < 2 or parallel.in_task() or x.size < _BN_SPLIT_VALUES:
        return [(0, channels)]
    return parallel.split(channels, workers)


def _bn_train_forward(model, desc, x):
    """Training-mode BatchNorm with the statistics computed once (the plain two-pass rule).

    Returns ``y`` (a new array) and ``(mean, inv_std, scale)`` for backward; stages the
    running-statistic updates (a refused update is re-raised naming the layer, as the
    plain path names it). With threads, each computes the statistics of its own
    channels (:func:`_channel_shares`) and normalises them, block by block of channels
    (:func:`_channel_blocks`): per channel the same operations in the same order, so
    the same bits.
    """
    w, b = model.param(desc, "weight"), model.param(desc, "bias")
    eps = desc.options["eps"]
    channels, count = x.shape[1], L._bn_values_per_channel(x.shape)  # refuses fewer than 2
    mean, var = np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    inv_std, scale = np.empty(channels, x.dtype), np.empty(channels, x.dtype)
    y = np.empty_like(x)

    def normalise(share):
        for lo, hi in _channel_blocks(share, count):
            mean[lo:hi], var[lo:hi] = L._bn_stats(x[:, lo:hi])
            inv_std[lo:hi], scale[lo:hi], shift = L._bn_scale_shift(w[lo:hi], b[lo:hi], mean[lo:hi], var[lo:hi], eps)
            np.multiply(x[:, lo:hi], scale[lo:hi, None, None], out=y[:, lo:hi])
            y[:, lo:hi] += shift[:, None, None]

    parallel.run_each(_channel_shares(x), normalise)
    try:
        running = L.batchnorm_running_from_stats(
            mean,
            var,
            count,
            model.buffer(desc, "running_mean"),
            model.buffer(desc, "running_var"),
            model.buffer(desc, "num_batches_tracked"),
            momentum=desc.options["momentum"],
        )
    except ValueError as exc:  # the layers function cannot know which layer it serves
        raise ValueError(f"{desc.name}: {exc}") from exc
    for entry, value in zip(("running_mean", "running_var", "num_batches_tracked"), running):
        model.stage_buffer(desc, entry, value)
    return y, (mean, inv_std, scale)


def _gelu_with_derivative(h, d):
    """``GELU(h)`` in place of ``h`` and ``GELU'(h)`` into ``d``; returns ``h``.

    float32: the arithmetic of :func:`neocell_ref.layers.gelu_forward` and
    :func:`~neocell_ref.layers.gelu_backward` (the fitted ``Φ(-|x|)``, evaluated once
    here for both), value by value the same operations in the same order, so both
    results are bit-identical to the plain path's. float64: SciPy's ``ndtr`` as there.
    """
    if h.dtype != np.float32:
        cdf = special.ndtr(h)
        pdf = np.exp(np.square(h) * -0.5) * L._INV_SQRT_2PI
        np.add(cdf, h * pdf, out=d)
        return np.multiply(h, cdf, out=h)
    flat_h, flat_d = h.reshape(-1), d.reshape(-1)
    workers = parallel.threads()
    unit = L._GELU_CHUNK_THREADED
    if workers > 1 and not parallel.in_task() and flat_h.size >= 2 * unit:
        # Element-wise: contiguous shares (whole blocks) over the pool, the same values.
        bounds = _row_ranges(flat_h.size, workers, unit)
        parallel.run_each(bounds, lambda span: _gelu32_with_derivative(flat_h[slice(*span)], flat_d[slice(*span)]))
    else:
        _gelu32_with_derivative(flat_h, flat_d)
    return h


def _gelu32_with_derivative(flat_h, flat_d):
    """The float32 pass of :func:`_gelu_with_derivative` on flat arrays."""
    chunk = L._gelu_chunk()  # layers' float32 GELU blocks (in L2; longer in threads)
    size = min(chunk, flat_h.size)
    t_buf, w_buf, p_buf = (np.empty(size, dtype=np.float32) for _ in range(3))
    with np.errstate(under="ignore"):  # exp(P(t)) underflows to 0 on purpose for large t
        for start in range(0, flat_h.size, chunk):
            xs = flat_h[start : start + chunk]
            ds = flat_d[start : start + chunk]
            k = xs.size
            t = np.abs(xs, out=t_buf[:k])
            q = L._gelu32_tail(t, w_buf[:k])  # Φ(-|x|); clips t in place
            L._gelu32_derivative(xs, q, ds, p_buf[:k])  # Φ(x) + x·φ(x), q kept
            L._gelu32_value(xs, t, q, xs)  # max(x, 0) - |x|·Φ(-|x|) (x is overwritten last)


# --------------------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------------------
def tail_backward(model, tail, grad, saved):
    """Gradient with respect to the tail's input ``x`` (the skip's gradient is ``grad``
    itself, added by the model at the fork); parameter gradients through ``model.set_grad``.

    ``grad`` is never modified; every buffer written in place is made here.

    Parameters
    ----------
    model : NeoNeXt
        Holds the parameters; receives the gradients of the tail's BatchNorm ``weight``
        and ``bias``, ``fc_1`` and ``fc_2`` ``weight`` (and ``bias`` where present) and
        layer-scale ``gamma``.
    tail : TailPlan
        As passed to :func:`tail_forward`.
    grad : ndarray, shape (N, C, H, W)
        Gradient of the loss with respect to the tail's output (the block's output).
    saved : tuple
        The ``saved`` of the matching :func:`tail_forward`.

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
        Gradient with respect to the tail's input ``x`` (the block's NeoCell output), a
        new array.
    """
    bn, fc_1, fc_2, scale_desc, drop_desc = tail
    x, bn_saved, y2, a, d, z, drop_scale, flat = saved
    lap = _stopwatch(model, "backward")
    n = grad.shape[0]
    g = grad
    if drop_scale is not None:
        g = g * drop_scale[:, None, None, None]  # drop path backward: dy·scale, a new array
        lap("drop_path")
    if scale_desc is not None:
        gamma = model.param(scale_desc, "gamma")
        model.set_grad(scale_desc, "gamma", (g * z).sum(axis=(0, 2, 3)))
        if g is grad:
            g = g * gamma[:, None, None]
        else:
            g *= gamma[:, None, None]
        lap("layer_scale")
    w1, b1, w2, b2 = _weights(model, fc_1), _bias(model, fc_1), _weights(model, fc_2), _bias(model, fc_2)
    g3 = g.reshape(n, g.shape[1], -1)
    # fc_2: dx = W2ᵀ dy, dW2 = dy aᵀ, db2 = Σ dy
    if flat:
        g2 = _to_flat(g3)
        grad_a = _product(w2.T, g2)
        model.set_grad(fc_2, "weight", _product(g2, a.T))
        if b2 is not None:
            model.set_grad(fc_2, "bias", g2.sum(axis=1))
    else:
        grad_a = matmul(w2.T, g3, "linear")
        model.set_grad(fc_2, "weight", _weight_grad(g3, a))
        if b2 is not None:
            model.set_grad(fc_2, "bias", g3.sum(axis=(0, 2)))
    lap("linear")
    grad_a *= d  # GELU backward: dy·GELU'(h)
    lap("gelu")
    grad_h = grad_a
    if flat:
        grad_y = _product(w1.T, grad_h)
        model.set_grad(fc_1, "weight", _product(grad_h, y2.T))
        if b1 is not None:
            model.set_grad(fc_1, "bias", grad_h.sum(axis=1))
        grad_y = _from_flat(grad_y, n)
    else:
        grad_y = matmul(w1.T, grad_h, "linear")
        model.set_grad(fc_1, "weight", _weight_grad(grad_h, y2))
        if b1 is not None:
            model.set_grad(fc_1, "bias", grad_h.sum(axis=(0, 2)))
    grad_y = grad_y.reshape(x.shape)
    lap("linear")
    if bn is None:
        return grad_y
    grad_x = _bn_train_backward(model, bn, grad_y, x, bn_saved)
    lap("batchnorm")
    return grad_x


def conv1x1_backward(model, desc, grad, x):
    """:func:`neocell_ref.layers.conv1x1_backward` of a 1x1 convolution the fast training
    forward ran by samples (:func:`neocell_ref.models_fast.conv1x1_samples`): the same
    per-sample products (``Wᵀ dy[n]`` and ``dy[n] x[n]ᵀ``), each thread on its own
    samples, and the weight gradient summed over the samples in the main thread as
    there; so the same bits. Sets the weight gradient; returns ``grad_x``."""
    weight = model.param(desc, "weight")
    w2 = weight.reshape(weight.shape[:2])
    n = x.shape[0]
    g3 = np.ascontiguousarray(grad).reshape(n, w2.shape[0], -1)
    x3 = x.reshape(n, w2.shape[1], -1)
    grad_x = np.empty(x.shape, dtype=g3.dtype)
    gx3 = grad_x.reshape(n, w2.shape[1], -1)
    per_sample = np.empty((n, *w2.shape), dtype=g3.dtype)

    def task(span):
        lo, hi = span
        matmul(w2.T, g3[lo:hi], "conv1x1", out=gx3[lo:hi])
        matmul(g3[lo:hi], x3[lo:hi].transpose(0, 2, 1), "conv1x1", out=per_sample[lo:hi])

    parallel.run_each(conv1x1_shares(desc, x) or [(0, n)], task)
    model.set_grad(desc, "weight", per_sample.sum(axis=0).reshape(weight.shape))
    return grad_x


def batchnorm_backward(model, desc, grad, saved):
    """Backward of a training-mode BatchNorm outside the block tails (stem, down-sampling)
    that the fast training forward ran by :func:`_bn_train_forward`: the block tails'
    :func:`_bn_train_backward` (statistics of the forward, channels over the pool), on a
    copy of ``grad``, which the tape may share with a skip connection."""
    x, bn_saved = saved
    return _bn_train_backward(model, desc, np.array(grad, copy=True), x, bn_saved)


def _weight_grad(g3, x3):
    """``Σ_n g3[n] x3[n]ᵀ``, exactly as :func:`neocell_ref.layers.linear_backward`."""
    if g3.shape[0] == 1:
        return matmul(g3[0], x3[0].T, "linear")
    return matmul(g3, x3.transpose(0, 2, 1), "linear").sum(axis=0)


def _bn_train_backward(model, desc, grad_y, x, bn_saved):
    """Training-mode BatchNorm backward with the forward's statistics, in place in
    ``grad_y`` (which the caller owns): the operations of
    :func:`neocell_ref.layers.batchnorm_backward`, in the same order (with threads, each
    on its own channels, and in blocks of channels, as in the forward)."""
    mean, inv_std, scale = bn_saved
    m = L._bn_values_per_channel(x.shape)
    grad_w, grad_b = np.empty_like(mean), np.empty_like(mean)

    def backward(share):
        for lo, hi in _channel_blocks(share, m):
            g = grad_y[:, lo:hi]
            x_hat = x[:, lo:hi] - mean[lo:hi, None, None]
            x_hat *= inv_std[lo:hi, None, None]
            grad_b[lo:hi] = g.sum(axis=(0, 2, 3))
            grad_w[lo:hi] = (g * x_hat).sum(axis=(0, 2, 3))
            g -= (grad_b[lo:hi] / m)[:, None, None]
            x_hat *= (grad_w[lo:hi] / m)[:, None, None]
            g -= x_hat
            g *= scale[lo:hi, None, None]

    parallel.run_each(_channel_shares(x), backward)
    model.set_grad(desc, "weight", grad_w)
    model.set_grad(desc, "bias", grad_b)
    return grad_y
