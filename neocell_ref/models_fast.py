"""The fast path of :class:`neocell_ref.models.NeoNeXt`: ``forward(x, cache=False)``.

The plain formulation of the network is :meth:`neocell_ref.models.NeoNeXt.forward` with
``cache=True``: a loop over the description's layers, each run by its layer kind's
record (:mod:`neocell_ref.registry`), every intermediate a new array. This module runs
the same operations, in the same order for every value, arranged for speed:

* **buffer ownership**: an intermediate the path made itself (``owned``) may be
  overwritten by the next element-wise layer (BatchNorm, GELU, layer scale, drop path
  work in place through the record's ``inplace`` flag); the caller's input and a
  block's skip input never are;
* **fusion**: in inference, what follows a block's NeoCell,
  ``skip + drop_path(layer_scale(fc_2(GELU(fc_1(BN(x))))))``, runs over cache-sized
  blocks of pixels (:func:`_fused_tail`, :func:`_fused_mlp`); in training the
  ``fc_1, GELU, fc_2`` run is fused the same way;
* **threads**: the fused runs (the inference tail, the training-mode MLP) are split
  over worker threads (:mod:`neocell_ref._parallel`, ``NEOCELL_THREADS``): contiguous
  runs of pixel blocks in the early stages, rows of the hidden and output matrices in
  the late ones, with NumPy's OpenBLAS held at one thread meanwhile; the 1x1
  convolutions of several samples by samples (:func:`conv1x1_samples`, also the fast
  training path's); the shares are fixed by the data, not by scheduling;
* **profiling**: with :attr:`NeoNeXt.profile` set, the time of each fused step goes
  under ``"forward:<kind>"`` like the layer-by-layer path's (summed over threads).

Nothing is kept for backward. The tests prove this path equal to the plain one
(``tests/test_models_fast.py``, ``tests/test_models.py``: bit-identical where the order
of operations is the same, within the documented float32 accuracy of ``docs/model.md``
where BLAS orders a blocked product's sums differently).
"""

from __future__ import annotations

import time

import numpy as np

from . import _parallel as parallel
from . import layers as L
from . import registry
from .instrument import matmul

__all__ = ["fast_forward", "inference_tail"]


def fast_forward(model, x, training):
    """Logits of ``model`` for ``x`` (already checked and in the model dtype), nothing cached.

    Parameters
    ----------
    model : NeoNeXt
    x : ndarray, shape (N, in_chans, H, W)
        Never modified.
    training : bool
        As :meth:`NeoNeXt.forward`; running-statistic updates are staged on the model.

    Returns
    -------
    ndarray, shape (N, num_classes)
    """
    with parallel.pool_owns_cores():  # BLAS on one thread while the pool may run
        return _forward(model, x, training)


def _forward(model, x, training):
    arch = model.describe(x.shape[2:])
    owned = False  # may x be overwritten? Never the caller's array.
    for unit in arch.units:
        if unit.kind != "residual":
            for desc in unit.layers:
                x, owned = _run_layer(model, desc, x, owned, training)
            continue
        skip = x
        owned = joined = False
        layers = unit.layers
        i = 0
        while i < len(layers):
            tail = None if training else inference_tail(layers[i:])
            if tail is not None:  # fuse what follows the NeoCell, the residual addition included
                x, joined = _fused_tail(model, tail, x, owned, skip), True
                break
            if _is_mlp(layers[i : i + 3]):
                fc_1, fc_2 = layers[i], layers[i + 2]
                x, owned = _fused_mlp(model, _mlp_weights(model, fc_1, fc_2), x), True
                i += 3
                continue
            x, owned = _run_layer(model, layers[i], x, owned, training)
            i += 1
        if not joined:
            start = time.perf_counter() if model.profile is not None else 0.0
            if owned:
                x += skip
            else:
                x = skip + x
            if model.profile is not None:
                model._tick("forward:residual_add", start)
        owned = True
    return x


def _run_layer(model, desc, x, owned, training):
    """One layer by its record, in place when ``x`` is owned; returns ``(y, owned)``.
    A 1x1 convolution of several samples runs :func:`conv1x1_samples` instead (the
    record's products, split over the pool by samples)."""
    start = time.perf_counter() if model.profile is not None else 0.0
    shares = conv1x1_shares(desc, x)
    if shares is not None:
        y, fresh = conv1x1_samples(x, model.param(desc, "weight"), shares), True
    else:
        y, _, fresh = registry.get(desc.kind).forward(model, desc, x, training, owned)
    if model.profile is not None:
        model._tick(f"forward:{desc.kind}", start)
    return y, (fresh or owned)


def _mlp_weights(model, fc_1, fc_2):
    """``(w1, b1, w2, b2)`` of a block's fc_1 and fc_2 (biases None when absent)."""
    return (
        model.param(fc_1, "weight"),
        model.param(fc_1, "bias") if "bias" in fc_1.params else None,
        model.param(fc_2, "weight"),
        model.param(fc_2, "bias") if "bias" in fc_2.params else None,
    )


def _fused_tail(model, tail, x, owned, skip):
    """Inference fast path for the rest of a block after its NeoCell:
    ``skip + drop_path(layer_scale(fc_2(GELU(fc_1(BN(x))))))``.

    Exactly the operations of the layer-by-layer path, in the same order for every
    value, but applied block by block (see :func:`_fused_mlp`) so that each block of
    pixels stays in cache from the BatchNorm to the residual addition: inference
    BatchNorm as ``x·scale + shift`` in place (:func:`~neocell_ref.layers.batchnorm_affine`),
    fc_1, GELU, fc_2, ``γ·`` and ``+ skip``; drop path is the identity in inference.
    """
    bn, fc_1, fc_2, scale = tail
    affine = None
    if bn is not None:
        affine = L.batchnorm_affine(
            model.param(bn, "weight"),
            model.param(bn, "bias"),
            model.buffer(bn, "running_mean"),
            model.buffer(bn, "running_var"),
            eps=bn.options["eps"],
        )
        if not owned:
            x = x.copy()  # the BatchNorm below works in place
    gamma = None if scale is None else model.param(scale, "gamma")
    return _fused_mlp(model, _mlp_weights(model, fc_1, fc_2), x, affine=affine, gamma=gamma, skip=skip)


def _fused_mlp(model, weights, x, *, affine=None, gamma=None, skip=None):
    """``skip + γ·fc_2(GELU(fc_1(x·scale + shift)))`` for the fast path (``cache=False``).

    ``affine = (scale, shift)`` (applied to ``x`` in place), ``gamma`` and ``skip``
    are optional. The same operations as the layer-by-layer path (products through
    :func:`~neocell_ref.instrument.matmul` with the tag ``"linear"``, then
    :func:`~neocell_ref.layers.gelu_forward`), arranged for the memory hierarchy:

    * early stages, where the ``4d``-channel hidden activation dwarfs the weights:
      blocks of about ``_MLP_BLOCK`` hidden values (pixels of one sample) pass
      through one reused, cache-sized buffer, instead of a new ``(N, 4d, H, W)``
      array written to and read back from main memory;
    * late stages, where the weights are the larger operand: all samples form one
      ``(C, N·H·W)`` matrix, so each weight matrix is streamed once per batch.

    Each output value is computed by the same operations as unfused, so the results
    agree to rounding (BLAS may order a product's sums differently for a block).
    """
    w1, b1, w2, b2 = weights
    n, c_in = x.shape[:2]
    hidden, c_out = w1.shape[0], w2.shape[0]
    if w1.shape[1] != c_in or w2.shape[1] != hidden:  # pragma: no cover - guarded by the description
        raise ValueError(f"MLP weights {w1.shape}, {w2.shape} do not chain on x {x.shape}")
    positions = int(np.prod(x.shape[2:], dtype=np.int64))
    x3 = np.ascontiguousarray(x).reshape(n, c_in, positions)
    out = np.empty((n, c_out, *x.shape[2:]), dtype=model.dtype)
    out3 = out.reshape(n, c_out, positions)
    skip3 = None if skip is None else skip.reshape(n, c_out, positions)
    workers = parallel.threads()
    if w1.size + w2.size >= hidden * positions:
        # Late stages (few pixels, wide layers): the weights are the larger operand, so
        # stream them once for the whole batch: one (c_in, N·H·W) matrix, not N blocks.
        # The two layout copies are of the small activations.
        lap = _stopwatch(model)
        if affine is not None:
            _affine(model, x3, affine, lap)
        xt = x3.transpose(1, 0, 2).reshape(c_in, n * positions) if n > 1 else x3[0]
        if workers > 1 and hidden >= 2 * _ROW_UNIT:
            # Each thread computes its own rows of the hidden matrix, then of the output.
            y = _late_rows(model, w1, b1, w2, b2, xt, workers)
            lap = _stopwatch(model)
        else:
            h = np.empty((hidden, xt.shape[1]), model.dtype)
            y = _mlp_block(model, w1, b1, w2, b2, xt, h, None, lap)
        out3[...] = y.reshape(c_out, n, positions).transpose(1, 0, 2)
        _finish(model, out3, gamma, skip3, lap)
        return out
    # Early stages: the hidden activation dwarfs the weights; run blocks of pixels of
    # one sample through a reused cache-sized buffer, writing into ``out``.
    columns = _block_columns(positions, hidden)
    blocks = [
        np.s_[sample, :, start : min(positions, start + columns)]
        for sample in range(n)
        for start in range(0, positions, columns)
    ]

    def run_blocks(chosen, lap):
        buffer = np.empty(hidden * columns, dtype=model.dtype)
        for block in chosen:
            xb = x3[block]
            if affine is not None:
                _affine(model, xb, affine, lap)
            h = buffer[: hidden * xb.shape[1]].reshape(hidden, xb.shape[1])  # contiguous
            y = _mlp_block(model, w1, b1, w2, b2, xb, h, out3[block], lap)
            _finish(model, y, gamma, None if skip3 is None else skip3[block], lap)

    if workers > 1 and len(blocks) > 1:
        # Each thread runs its own contiguous run of blocks from the BatchNorm to the
        # residual addition, with its own buffer: the blocks, and so every value's
        # operations, are those of the single-threaded loop.
        def early_task(lo, hi):
            def task():
                sink, tlap = _thread_stopwatch(model)
                run_blocks(blocks[lo:hi], tlap)
                return sink

            return task

        with parallel.single_threaded_blas():
            _merge(model, parallel.run([early_task(lo, hi) for lo, hi in parallel.split(len(blocks), workers)]))
    else:
        run_blocks(blocks, _stopwatch(model))
    return out


#: Layers whose per-sample products total at least this many multiply-accumulates are
#: split over the pool by samples (:func:`sample_shares`); smaller ones cost less than
#: waking a thread. NeoNeXt-T's 1x1 convolutions at batch 8 have 2**27 to 2**29.
_SAMPLE_SPLIT_MACS = 1 << 22


def conv1x1_shares(desc, x):
    """:func:`sample_shares` of layer ``desc`` on ``x`` if it is a 1x1 convolution (its
    multiply-accumulates: ``x.size`` times the output channels), else None."""
    return sample_shares(x.shape[0], x.size * desc.out_shape[0]) if desc.kind == "conv1x1" else None


def sample_shares(samples, macs):
    """Thread shares ``(lo, hi)`` of the sample axis for a layer of per-sample products,
    or None to run it in the calling thread (one thread, inside a task, one sample, or
    fewer than :data:`_SAMPLE_SPLIT_MACS` MACs)."""
    workers = min(parallel.threads(), samples)
    if workers < 2 or parallel.in_task() or macs < _SAMPLE_SPLIT_MACS:
        return None
    return parallel.split(samples, workers)


def conv1x1_samples(x, weight, shares):
    """:func:`neocell_ref.layers.conv1x1_forward` for the fast paths, with the samples
    split over the pool in ``shares`` (of :func:`sample_shares`).

    The plain function computes ``W @ x[n]`` as one BLAS product per sample (a stacked
    ``np.matmul``); here each thread runs the products of its own samples, the same
    calls on the same operands, so the result is the same bits.

    Parameters
    ----------
    x : ndarray, shape (N, C_in, H, W)
        In the model dtype (checked by the caller).
    weight : ndarray, shape (C_out, C_in, 1, 1)
    shares : list of (int, int)

    Returns
    -------
    ndarray, shape (N, C_out, H, W)
    """
    n, c_in = x.shape[:2]
    w2 = weight.reshape(weight.shape[:2])
    x3 = np.ascontiguousarray(x).reshape(n, c_in, -1)
    y = np.empty((n, w2.shape[0], *x.shape[2:]), dtype=np.result_type(x, w2))
    y3 = y.reshape(n, w2.shape[0], -1)
    parallel.run_each(shares, lambda span: matmul(w2, x3[slice(*span)], "conv1x1", out=y3[slice(*span)]))
    return y


def _block_columns(positions, hidden):
    """Pixels per early-stage block: at most about ``_MLP_BLOCK // hidden``, in equal
    blocks whose number per sample is even (5 blocks of a 56x56 stage become 6), so
    that two threads get equal shares even at batch 1. Independent of the thread
    count, so the blocks, and every value, are the same with threads on or off."""
    count = -(-positions // max(1, _MLP_BLOCK // hidden))
    if count > 1 and count % 2:
        count += 1
    return -(-positions // count)


def _late_rows(model, w1, b1, w2, b2, xt, workers):
    """``w2 @ GELU(w1 @ xt + b1) + b2`` split over threads by rows: first each thread
    computes and activates its own rows of the hidden matrix, then (after all have)
    its own rows of the output; each weight row is read by one thread only."""
    hidden, c_out, columns = w1.shape[0], w2.shape[0], xt.shape[1]
    h = np.empty((hidden, columns), model.dtype)
    y = np.empty((c_out, columns), model.dtype)

    def first(lo, hi):
        def task():
            sink, lap = _thread_stopwatch(model)
            _linear_rows(w1, xt, b1, h, lo, hi)
            lap("linear")
            L.gelu_forward(h[lo:hi], out=h[lo:hi])
            lap("gelu")
            return sink

        return task

    def second(lo, hi):
        def task():
            sink, lap = _thread_stopwatch(model)
            _linear_rows(w2, h, b2, y, lo, hi)
            lap("linear")
            return sink

        return task

    with parallel.single_threaded_blas():
        _merge(model, parallel.run([first(lo, hi) for lo, hi in _row_ranges(hidden, workers)]))
        _merge(model, parallel.run([second(lo, hi) for lo, hi in _row_ranges(c_out, workers)]))
    return y


def _row_ranges(rows, workers, unit=None):
    """Thread shares of ``rows`` matrix rows (or values), in whole multiples of ``unit``
    (default :data:`_ROW_UNIT` rows); the last share may be shorter."""
    unit = _ROW_UNIT if unit is None else unit
    units = -(-rows // unit)
    return [(unit * lo, min(rows, unit * hi)) for lo, hi in parallel.split(units, workers)]


def _linear_rows(a, b, bias, out, lo, hi):
    """Rows ``lo:hi`` of ``out = a @ b (+ bias[:, None])`` (tag ``"linear"``): one
    thread's share of a product split by rows of the result (also the fast training
    path's)."""
    matmul(a[lo:hi], b, "linear", out=out[lo:hi])
    if bias is not None:
        out[lo:hi] += bias[lo:hi, None]


def _affine(model, x, affine, lap):
    """Inference BatchNorm on a block of channels-first values, in place."""
    scale, shift = affine
    view = (-1,) + (1,) * (x.ndim - 1) if x.ndim == 2 else (1, -1, 1)
    x *= scale.reshape(view)
    x += shift.reshape(view)
    lap("batchnorm")


def _finish(model, y, gamma, skip, lap):
    """Layer scale and the residual addition on a block of the output, in place."""
    view = (-1, 1) if y.ndim == 2 else (1, -1, 1)
    if gamma is not None:
        y *= gamma.reshape(view)
        lap("layer_scale")
    if skip is not None:
        y += skip
        lap("residual_add")


def _mlp_block(model, w1, b1, w2, b2, x, h, y, lap):
    """``y = w2 @ GELU(w1 @ x + b1) + b2`` for one block of columns, through buffer ``h``.

    ``y`` may be a view to write into (or None for a new array).
    """
    matmul(w1, x, "linear", out=h)
    if b1 is not None:
        h += b1[:, None]
    lap("linear")
    L.gelu_forward(h, out=h)
    lap("gelu")
    y = matmul(w2, h, "linear", out=y)
    if b2 is not None:
        y += b2[:, None]
    lap("linear")
    return y


def _stopwatch(model, direction="forward"):
    """``lap(kind)`` adds the time since the previous lap to ``profile[f"{direction}:{kind}"]``
    (a no-op when not profiling). Also the fast training path's stopwatch."""
    if model.profile is None:
        return lambda kind: None
    last = [time.perf_counter()]

    def lap(kind):
        now = time.perf_counter()
        key = f"{direction}:{kind}"
        model.profile[key] = model.profile.get(key, 0.0) + now - last[0]
        last[0] = now

    return lap


def _thread_stopwatch(model):
    """``(sink, lap)`` for one worker thread: ``lap`` as :func:`_stopwatch`'s, but into
    the thread's own dict ``sink`` (None when not profiling), merged by :func:`_merge`."""
    if model.profile is None:
        return None, lambda kind: None
    sink = {}
    last = [time.perf_counter()]

    def lap(kind):
        now = time.perf_counter()
        key = f"forward:{kind}"
        sink[key] = sink.get(key, 0.0) + now - last[0]
        last[0] = now

    return sink, lap


def _merge(model, sinks):
    """Add the worker threads' profiles (in task order) to ``model.profile``: with
    threads, a kind's entry is the time summed over the threads that ran it."""
    if model.profile is None:
        return
    for sink in sinks:
        for key, seconds in sink.items():
            model.profile[key] = model.profile.get(key, 0.0) + seconds


#: Hidden values per block of the fused inference MLP (``_fused_mlp``): 2**18 float32
#: values are 1 MiB, which with the block's input and output stays in a core's share of
#: the last-level cache (the GELU walks it in L2-sized pieces). Measured (interleaved,
#: NeoNeXt-T 224 px, 2 threads, batch 8) about 6 % faster than 2**17, whose fewer
#: columns per product paid more per-call overhead; 2**19 and 2**20 no better; with
#: one thread all four alike.
_MLP_BLOCK = 1 << 18

#: A late stage's rows are split over threads in multiples of this many rows (a
#: multiple of the register blocking of BLAS kernels), only where there are two or more.
_ROW_UNIT = 16


def _is_mlp(layers):
    """True for the run ``linear, gelu, linear`` (a block's fc_1, GELU, fc_2)."""
    return len(layers) == 3 and tuple(d.kind for d in layers) == ("linear", "gelu", "linear")


def inference_tail(layers):
    """``(batchnorm or None, fc_1, fc_2, layer_scale or None)`` if ``layers`` (the rest of
    a residual unit) is ``[batchnorm], linear, gelu, linear, [layer_scale], [drop_path]``,
    else None. Which layers a block has is read from the description, not assumed.

    Parameters
    ----------
    layers : iterable of LayerDesc
        The layers of a residual unit from some index on, in execution order (not modified).

    Returns
    -------
    tail : tuple of 4 LayerDesc or None
        ``(bn, fc_1, fc_2, scale)``, ``bn`` and ``scale`` None where the block has no such
        layer; None when ``layers`` is not such a tail. The trailing layer that is skipped
        may be of any kind whose record has ``inference_identity`` (drop path).
    """
    layers = list(layers)
    bn = layers.pop(0) if layers and layers[0].kind == "batchnorm" else None
    if [d.kind for d in layers[:3]] != ["linear", "gelu", "linear"]:
        return None
    fc_1, fc_2, rest = layers[0], layers[2], layers[3:]
    scale = rest.pop(0) if rest and rest[0].kind == "layer_scale" else None
    if rest and registry.get(rest[0].kind).inference_identity:
        rest.pop(0)  # drop path: the identity in inference
    return None if rest else (bn, fc_1, fc_2, scale)
