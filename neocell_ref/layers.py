"""Every NeoNeXt layer other than NeoCell, each forward beside its hand-derived backward.

Conventions (the same for every pair, so that :func:`neocell_ref.verify.gradcheck.check_gradients`
can check any of them directly):

* ``<layer>_forward(x, *params, **options) -> y`` is a pure function;
* ``<layer>_backward(grad_y, x, *params, **options) -> tuple`` returns one gradient per
  positional input of the forward, in the same order (``None`` where an input is not
  differentiable, for example the drop-path scale). Backward functions **recompute**
  what they need from the inputs (batch statistics, ``x̂``, ``Φ(x)``...): nothing is
  cached between the two calls, so each pair can be read, ported and checked on its own.
  :class:`neocell_ref.models.NeoNeXt` keeps the layer inputs of a forward for that reason.

Activations are ``(N, C, H, W)`` with the channel axis 1 (SPEC section 7); channel-axis
layers (:func:`linear_forward`, :func:`layernorm_forward`, :func:`layer_scale_forward`)
also accept ``(N, C)`` or any ``(N, C, *S)``. Every matrix product goes through
:func:`neocell_ref.instrument.matmul` with the tag ``"linear"`` or ``"conv1x1"``, so the
multiply-accumulates that run can be counted.

Dtypes: a layer computes in the dtype the package's dtype rule
(:func:`neocell_ref.validation.compute_dtype`) gives for its operands, and returns that
dtype. The exact GELU is evaluated with :func:`scipy.special.ndtr` in
float64; in float32 it uses a fitted approximation whose accuracy is stated and tested
(:func:`gelu_forward`, ``docs/model.md``).

Bad input (wrong rank, mismatched shapes, non-numeric or complex dtypes, out-of-range
options) raises ``ValueError``/``TypeError`` naming the argument before any arithmetic.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

from . import _parallel as parallel
from .instrument import matmul
from .validation import as_flag, as_int, as_real_array, check_nbytes, compute_dtype, floating_dtype, real_number

__all__ = [
    "linear_forward",
    "linear_backward",
    "conv1x1_forward",
    "conv1x1_backward",
    "batchnorm_stats",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_update_running",
    "batchnorm_running_from_stats",
    "batchnorm_affine",
    "layernorm_forward",
    "layernorm_backward",
    "gelu_forward",
    "gelu_backward",
    "patchify_forward",
    "patchify_backward",
    "avgpool_forward",
    "avgpool_backward",
    "layer_scale_forward",
    "layer_scale_backward",
    "drop_path_scale",
    "drop_path_forward",
    "drop_path_backward",
    "residual_add_forward",
    "residual_add_backward",
    "cross_entropy_forward",
    "cross_entropy_backward",
    "check_targets",
    "GELU_FLOAT32_COEFFICIENTS",
    "GELU_FLOAT32_CLIP",
]


# --------------------------------------------------------------------------------------
# validation helpers: cheap (shape and dtype checks only), run before any arithmetic
# --------------------------------------------------------------------------------------
# Arrays: as_real_array (bool, complex, object and string refused, naming the argument);
# compute dtype: the package's dtype rule, compute_dtype (neocell_ref.validation).


def _cast(dtype, *arrays):
    return tuple(None if a is None else a.astype(dtype, copy=False) for a in arrays)


def _check_ndim(arr, name, minimum, maximum=None, layout="(N, C, ...)"):
    if arr.ndim < minimum or (maximum is not None and arr.ndim > maximum):
        want = f"{minimum}-D" if maximum == minimum else f"at least {minimum}-D"
        raise ValueError(f"{name} must be {want} {layout}, got shape {arr.shape}")


def _check_nonempty(arr, name, axes, what):
    """A mean over ``axes`` of ``arr`` needs at least one value (else it is NaN)."""
    if any(arr.shape[a] == 0 for a in axes):
        raise ValueError(f"{name} has shape {arr.shape}: {what} needs at least one value to average")


def _check_shape(arr, name, expected):
    if arr.shape != tuple(expected):
        raise ValueError(f"{name} has shape {arr.shape}, expected {tuple(expected)}")


def _check_grad(grad_y, expected_shape):
    grad_y = as_real_array(grad_y, "grad_y")
    _check_shape(grad_y, "grad_y", expected_shape)
    return grad_y


def _same_view(a, b):
    """True when ``a`` and ``b`` are the same values in the same places (in-place use)."""
    return (
        a.shape == b.shape
        and a.strides == b.strides
        and a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
    )


def _check_out(out, shape, dtype):
    """An ``out=`` argument: None, or a writeable ndarray of exactly the result's ``shape``
    and compute ``dtype``. NumPy itself would broadcast the result into a larger ``out``
    (the returned shape changes) and cast it into a narrower dtype, both silently."""
    if out is None:
        return None
    shape, dtype = tuple(shape), np.dtype(dtype)
    if isinstance(out, np.ma.MaskedArray) or not isinstance(out, np.ndarray):
        got = f"a {type(out).__name__}"
    elif out.shape != shape or out.dtype != dtype:
        got = f"shape {out.shape} and dtype {out.dtype}"
    elif not out.flags.writeable:
        got = "a read-only array"
    else:
        return out
    raise ValueError(f"out must be a writeable ndarray of shape {shape} and dtype {dtype}, got {got}")


def _channel_view(shape):
    """Shape that broadcasts a per-channel vector against an array of ``shape`` (axis 1)."""
    return (1, shape[1]) + (1,) * (len(shape) - 2)


def _reduce_axes(ndim, keep=1):
    return tuple(a for a in range(ndim) if a != keep)


# --------------------------------------------------------------------------------------
# Linear on the channel axis, and the 1x1 convolution (the same product)
# --------------------------------------------------------------------------------------
def _linear_prepare(x, weight, bias, grad_y=None, *, weight_name="weight"):
    x = as_real_array(x, "x")
    weight = as_real_array(weight, weight_name)
    _check_ndim(x, "x", 2)
    if weight.ndim != 2:
        raise ValueError(f"{weight_name} must be 2-D (out, in), got shape {weight.shape}")
    if weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"{weight_name} has {weight.shape[1]} input channels (shape {weight.shape}) but x has "
            f"{x.shape[1]} channels (x.shape[1], shape {x.shape})"
        )
    if bias is not None:
        bias = as_real_array(bias, "bias")
        _check_shape(bias, "bias", (weight.shape[0],))
    expected_y = (x.shape[0], weight.shape[0], *x.shape[2:])
    if grad_y is not None:
        grad_y = _check_grad(grad_y, expected_y)
    dtype = compute_dtype(x, weight, bias, grad_y)
    return _cast(dtype, x, weight, bias, grad_y)


def _linear(x, weight, bias, tag):
    n, c = x.shape[:2]
    if x.ndim == 2:
        # (N, C_in) @ (C_in, C_out): one product for the whole batch.
        y = matmul(x, weight.T, tag)
        if bias is not None:
            y += bias
        return y
    # (C_out, C_in) @ (N, C_in, P): one GEMM per sample on the contiguous NCHW planes,
    # no layout copy (a reshape of a C-contiguous array is a view). P is given, not -1,
    # which NumPy cannot infer for an empty batch (N = 0).
    x3 = x.reshape(n, c, math.prod(x.shape[2:]))
    y = matmul(weight, x3, tag)
    if bias is not None:
        y += bias[:, None]
    return y.reshape(n, weight.shape[0], *x.shape[2:])


def _linear_grads(grad_y, x, weight, bias, tag):
    n = x.shape[0]
    if x.ndim == 2:
        grad_x = matmul(grad_y, weight, tag)  # dx = dy W
        grad_w = matmul(grad_y.T, x, tag)  # dW = dyᵀ x
        grad_b = None if bias is None else grad_y.sum(axis=0)
        return grad_x, grad_w, grad_b
    c_out, c_in = weight.shape
    positions = math.prod(x.shape[2:])  # not -1: ambiguous for an empty batch
    g3 = grad_y.reshape(n, c_out, positions)
    x3 = x.reshape(n, c_in, positions)
    grad_x = matmul(weight.T, g3, tag).reshape(x.shape)  # dx[n] = Wᵀ dy[n]
    if n == 1:
        grad_w = matmul(g3[0], x3[0].T, tag)  # dW = Σ_n dy[n] x[n]ᵀ
    else:
        grad_w = matmul(g3, x3.transpose(0, 2, 1), tag).sum(axis=0)
    grad_b = None if bias is None else g3.sum(axis=(0, 2))
    return grad_x, grad_w, grad_b


def linear_forward(x, weight, bias=None, *, tag="linear"):
    """Linear layer on the channel axis: ``y[n, o, ...] = Σ_i W[o, i] x[n, i, ...] + b[o]``.

    Parameters
    ----------
    x : array_like, shape (N, C_in) or ``(N, C_in, *S)``
    weight : array_like, shape (C_out, C_in)
        PyTorch ``Linear.weight`` layout.
    bias : array_like, shape (C_out,), optional
    tag : str
        Tag of the matrix products for :func:`neocell_ref.instrument.count_macs`.

    Returns
    -------
    y : ndarray, shape (N, C_out) or ``(N, C_out, *S)``
    """
    x, weight, bias, _ = _linear_prepare(x, weight, bias)
    return _linear(x, weight, bias, tag)


def linear_backward(grad_y, x, weight, bias=None, *, tag="linear"):
    """Backward of :func:`linear_forward`.

    ``dx = Wᵀ dy`` per sample and position, ``dW = Σ dy xᵀ`` over samples and
    positions, ``db = Σ dy``.

    Parameters
    ----------
    grad_y : array_like, shape (N, C_out) or ``(N, C_out, *S)``
        Gradient of the loss with respect to ``y``.
    x, weight, bias, tag
        As in :func:`linear_forward`.

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_weight : ndarray, shape (C_out, C_in)
    grad_bias : ndarray, shape (C_out,), or None when ``bias`` is None
    """
    x, weight, bias, grad_y = _linear_prepare(x, weight, bias, grad_y)
    return _linear_grads(grad_y, x, weight, bias, tag)


def _conv_weight(weight, x):
    weight = as_real_array(weight, "weight")
    if weight.ndim != 4 or weight.shape[2:] != (1, 1):
        raise ValueError(f"weight must be (out, in, 1, 1) (PyTorch Conv2d layout), got shape {weight.shape}")
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 4, 4, "(N, C, H, W)")
    return weight.reshape(weight.shape[:2]), x


def conv1x1_forward(x, weight):
    """Bias-free 1x1 convolution: ``y[n, o] = Σ_i W[o, i] x[n, i]`` at every pixel.

    Parameters
    ----------
    x : array_like, shape (N, C_in, H, W)
    weight : array_like, shape (C_out, C_in, 1, 1)
        PyTorch ``Conv2d.weight`` layout.

    Returns
    -------
    y : ndarray, shape (N, C_out, H, W)
    """
    w2, x = _conv_weight(weight, x)
    x, w2, _, _ = _linear_prepare(x, w2, None)
    return _linear(x, w2, None, "conv1x1")


def conv1x1_backward(grad_y, x, weight):
    """Backward of :func:`conv1x1_forward`: ``(grad_x, grad_weight)``, the weight gradient
    in the ``(C_out, C_in, 1, 1)`` layout.

    Parameters
    ----------
    grad_y : array_like, shape (N, C_out, H, W)
        Gradient of the loss with respect to ``y``.
    x, weight
        As in :func:`conv1x1_forward`.

    Returns
    -------
    grad_x : ndarray, shape (N, C_in, H, W)
    grad_weight : ndarray, shape (C_out, C_in, 1, 1)
    """
    w2, x = _conv_weight(weight, x)
    x, w2, _, grad_y = _linear_prepare(x, w2, None, grad_y)
    grad_x, grad_w, _ = _linear_grads(grad_y, x, w2, None, "conv1x1")
    return grad_x, grad_w.reshape(w2.shape + (1, 1))


# --------------------------------------------------------------------------------------
# BatchNorm2d
# --------------------------------------------------------------------------------------
def _bn_prepare(x, weight, bias, running_mean, running_var, training, eps, grad_y=None):
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 4, 4, "(N, C, H, W)")
    c = x.shape[1]
    arrays = []
    for name, arr in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if arr is None and name.startswith("running") and training:
            arrays.append(None)
            continue
        arr = as_real_array(arr, name)
        _check_shape(arr, name, (c,))
        arrays.append(arr)
    training = as_flag(training, "training")
    eps = real_number(eps, "eps", 0.0, low_open=True)
    if training:
        _bn_values_per_channel(x.shape)
    if not training:
        _check_running(arrays[2], arrays[3])
    if grad_y is not None:
        grad_y = _check_grad(grad_y, x.shape)
    dtype = compute_dtype(x, *arrays, grad_y)
    return (*_cast(dtype, x, *arrays, grad_y), eps)


def _check_running(running_mean, running_var, names=("running_mean", "running_var")):
    """Statistics must be finite and the variance >= 0 (else ``sqrt`` gives NaN)."""
    for name, arr in zip(names, (running_mean, running_var)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or Inf")
    if (running_var < 0).any():
        i = int(np.argmax(running_var < 0))
        raise ValueError(f"{names[1]} must be >= 0, got {names[1]}[{i}] = {float(running_var[i])!r}")


def _bn_stats(x):
    # Two-pass (mean, then mean of squared deviations): no cancellation in float32.
    mean = x.mean(axis=(0, 2, 3))
    with np.errstate(over="ignore"):  # an overflowed variance is refused by the callers, with a message
        var = np.square(x - mean[:, None, None]).mean(axis=(0, 2, 3))
    return mean, var


def _check_spread(x, var, what):
    """Refuse a variance that overflowed although ``x`` is finite: normalising by it would
    silently give zeros (``1/sqrt(inf) = 0``). NaN or Inf in ``x`` itself propagates to
    the output as usual; ``what`` names the statistic."""
    if not np.isfinite(var).all() and np.isfinite(x).all():
        raise ValueError(
            f"the {what} of x overflowed {x.dtype} (finite values up to {float(np.max(np.abs(x))):.3g} in "
            "magnitude; their squares do not fit): the normalised output would be 0, not the "
            "normalised values; rescale x or compute in float64"
        )


def _bn_batch_stats(x):
    """:func:`_bn_stats` of a training-mode BatchNorm, refusing an overflowed variance."""
    mean, var = _bn_stats(x)
    _check_spread(x, var, "batch variance")
    return mean, var


def _bn_values_per_channel(shape) -> int:
    """``N·H·W`` of an ``(N, C, H, W)`` shape: the values a training-mode BatchNorm
    averages per channel, refused below 2 (the variance of one value is 0 and its
    unbiased running update divides by ``m - 1 = 0``)."""
    m = shape[0] * shape[2] * shape[3]
    if m < 2:
        raise ValueError(f"BatchNorm in training mode needs more than 1 value per channel, got x of shape {shape}")
    return m


def batchnorm_stats(x):
    """Batch statistics of BatchNorm2d: per-channel mean and *biased* variance.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)

    Returns
    -------
    mean, var : ndarray, shape (C,)
        Over the ``N·H·W`` values of each channel; ``var`` divides by ``N·H·W``.
    """
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 4, 4, "(N, C, H, W)")
    _check_nonempty(x, "x", (0, 2, 3), "a batch statistic over N, H, W")
    x = x.astype(compute_dtype(x), copy=False)
    return _bn_stats(x)


def _bn_scale_shift(weight, bias, mean, var, eps):
    inv_std = 1.0 / np.sqrt(var + eps)
    scale = weight * inv_std
    return inv_std, scale, bias - mean * scale


def batchnorm_affine(weight, bias, mean, var, *, eps=1e-5):
    """BatchNorm with fixed statistics as a per-channel affine map ``y = x·scale + shift``.

    ``scale = weight/sqrt(var + eps)``, ``shift = bias - mean·scale``: exactly the numbers
    :func:`batchnorm_forward` multiplies and adds.

    Parameters
    ----------
    weight, bias, mean, var : array_like, shape (C,)
    eps : float, default 1e-5

    Returns
    -------
    scale, shift : ndarray, shape (C,)
    """
    arrays = [as_real_array(a, n) for a, n in ((weight, "weight"), (bias, "bias"), (mean, "mean"), (var, "var"))]
    for arr, name in zip(arrays[1:], ("bias", "mean", "var")):
        _check_shape(arr, name, arrays[0].shape)
    if arrays[0].ndim != 1:
        raise ValueError(f"weight must be 1-D (C,), got shape {arrays[0].shape}")
    eps = real_number(eps, "eps", 0.0, low_open=True)
    _check_running(arrays[2], arrays[3], names=("mean", "var"))
    weight, bias, mean, var = _cast(compute_dtype(*arrays), *arrays)
    _, scale, shift = _bn_scale_shift(weight, bias, mean, var, eps)
    return scale, shift


def batchnorm_forward(x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5, out=None):
    """BatchNorm2d: ``y = (x - μ) / sqrt(σ² + eps) · weight + bias`` per channel.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
    weight, bias : array_like, shape (C,)
    running_mean, running_var : array_like, shape (C,)
        Used as ``μ``, ``σ²`` in inference mode (then they must be finite and
        ``running_var >= 0``, else ``ValueError``); ignored (may be None) in training mode.
    training : bool
        True: ``μ``, ``σ²`` are the batch mean and biased batch variance of ``x``
        (:func:`batchnorm_stats`). False: the running statistics.
    eps : float, default 1e-5
    out : ndarray, optional
        Where to write ``y``: an ndarray of ``x``'s shape and the compute dtype (else
        ``ValueError``); may be ``x`` itself for an in-place update when ``x`` is of the
        compute dtype (float32 or float64: a float16 ``x`` computes in float32).

    Returns
    -------
    y : ndarray, shape (N, C, H, W)

    Raises
    ------
    ValueError
        Besides shapes and running statistics that do not fit: in training mode, a
        batch variance that overflows the dtype although ``x`` is finite (the output
        would be 0). NaN or Inf in ``x`` is not refused; it propagates to the output.

    Notes
    -----
    The running statistics are not updated here (a forward is a pure function); see
    :func:`batchnorm_update_running`.
    """
    x, weight, bias, rm, rv, _, eps = _bn_prepare(x, weight, bias, running_mean, running_var, training, eps)
    _check_out(out, x.shape, x.dtype)
    mean, var = _bn_batch_stats(x) if training else (rm, rv)
    _, scale, shift = _bn_scale_shift(weight, bias, mean, var, eps)
    y = np.multiply(x, scale[:, None, None], out=out)
    y += shift[:, None, None]
    return y


def batchnorm_backward(grad_y, x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5):
    """Backward of :func:`batchnorm_forward` (batch statistics recomputed from ``x``).

    With ``x̂ = (x - μ)·r``, ``r = 1/sqrt(σ² + eps)`` and ``M = N·H·W`` values per channel:

    * ``d bias = Σ dy``, ``d weight = Σ dy · x̂`` (sums over N, H, W);
    * inference (``μ``, ``σ²`` constants): ``dx = dy · weight · r``;
    * training (``μ``, ``σ²`` functions of ``x``):
      ``dx = weight · r / M · (M·dy - d bias - x̂ · d weight)``.

    Parameters
    ----------
    grad_y : array_like, shape (N, C, H, W)
        Gradient of the loss with respect to ``y``.
    x, weight, bias, running_mean, running_var, training, eps
        As in :func:`batchnorm_forward` (``bias`` is checked but does not enter the
        gradients).

    Returns
    -------
    grad_x : ndarray, shape (N, C, H, W)
    grad_weight, grad_bias : ndarray, shape (C,)
    grad_running_mean, grad_running_var : None
        The running statistics are buffers, not differentiated.
    """
    x, weight, bias, rm, rv, grad_y, eps = _bn_prepare(
        x, weight, bias, running_mean, running_var, training, eps, grad_y
    )
    mean, var = _bn_batch_stats(x) if training else (rm, rv)
    inv_std, scale, _ = _bn_scale_shift(weight, bias, mean, var, eps)
    x_hat = (x - mean[:, None, None]) * inv_std[:, None, None]
    grad_b = grad_y.sum(axis=(0, 2, 3))
    grad_w = (grad_y * x_hat).sum(axis=(0, 2, 3))
    if training:
        m = x.shape[0] * x.shape[2] * x.shape[3]
        grad_x = grad_y - (grad_b / m)[:, None, None]
        grad_x -= x_hat * (grad_w / m)[:, None, None]
        grad_x *= scale[:, None, None]
    else:
        grad_x = grad_y * scale[:, None, None]
    return grad_x, grad_w, grad_b, None, None


def batchnorm_update_running(x, running_mean, running_var, num_batches_tracked, *, momentum=0.1):
    """New running statistics after a training-mode forward on ``x`` (PyTorch's rule).

    ``running_mean ← (1 - m)·running_mean + m·μ`` and
    ``running_var ← (1 - m)·running_var + m·σ²·M/(M - 1)`` (the *unbiased* batch
    variance, ``M = N·H·W``), ``num_batches_tracked ← num_batches_tracked + 1``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Input of the training-mode forward; ``M = N·H·W`` must be at least 2.
    running_mean, running_var : array_like, shape (C,)
        The current running statistics (not modified).
    num_batches_tracked : int or integer array_like, shape ()
        The current count of training batches.
    momentum : float in [0, 1], default 0.1
        ``m`` of the rule above.

    Returns
    -------
    running_mean, running_var : ndarray, shape (C,)
        New arrays in the compute dtype of ``running_mean`` and ``running_var``
        (:func:`neocell_ref.validation.compute_dtype`: float32 when both are float16 or
        float32, else float64).
    num_batches_tracked : ndarray, shape (), int64

    Raises
    ------
    ValueError
        ``x`` holds NaN or Inf (checked before any statistic is computed), its batch
        variance or the new running statistics overflow the dtype, the running
        statistics are not finite or the variance is negative, or
        ``num_batches_tracked + 1`` would not fit int64. Also a shape that does not fit,
        ``N·H·W < 2`` or ``momentum`` outside [0, 1].
    TypeError
        An array that is not real numeric, or ``num_batches_tracked`` that is not an
        integer scalar.
    """
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 4, 4, "(N, C, H, W)")
    rm = as_real_array(running_mean, "running_mean")
    rv = as_real_array(running_var, "running_var")
    _check_shape(rm, "running_mean", (x.shape[1],))
    _check_shape(rv, "running_var", (x.shape[1],))
    _bn_values_per_channel(x.shape)
    momentum = real_number(momentum, "momentum", 0.0, 1.0)
    count = _check_count(num_batches_tracked)
    _check_running(rm, rv)
    # Refused before any statistic is computed: a NaN or Inf would enter the running
    # statistics for good (and the model would then refuse its own state dict).
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or Inf; a training forward would write them into the running statistics")
    m = x.shape[0] * x.shape[2] * x.shape[3]
    mean, var = _bn_batch_stats(x.astype(compute_dtype(x), copy=False))
    return _bn_running(mean, var, m, rm, rv, count, momentum)


def _check_count(num_batches_tracked):
    """``num_batches_tracked`` as an int whose successor fits int64."""
    nbt = np.asarray(num_batches_tracked)
    if nbt.shape != () or nbt.dtype.kind not in "iu":
        raise TypeError(f"num_batches_tracked must be an integer scalar, got {num_batches_tracked!r}")
    count = int(nbt)
    if not 0 <= count < np.iinfo(np.int64).max:
        raise ValueError(f"num_batches_tracked must be in [0, 2**63 - 1) so that the new count fits int64, got {count}")
    return count


def _bn_running(mean, var, m, rm, rv, count, momentum):
    """The update rule of :func:`batchnorm_update_running` from the batch statistics of
    ``m`` values per channel (operands already validated)."""
    dtype = compute_dtype(rm, rv)
    with np.errstate(over="ignore"):  # refused below, with a message
        new_mean = ((1.0 - momentum) * rm + momentum * mean).astype(dtype, copy=False)
        new_var = ((1.0 - momentum) * rv + momentum * var * (m / (m - 1))).astype(dtype, copy=False)
    if not (np.isfinite(new_mean).all() and np.isfinite(new_var).all()):
        raise ValueError(
            f"the new running statistics overflow {dtype} (batch variance up to {float(np.max(var)):.3g}); "
            "running statistics unchanged"
        )
    return new_mean, new_var, np.asarray(count + 1, dtype=np.int64)


def batchnorm_running_from_stats(mean, var, m, running_mean, running_var, num_batches_tracked, *, momentum=0.1):
    """:func:`batchnorm_update_running` given the batch statistics instead of ``x``.

    For a caller that has already computed ``mean, var = batchnorm_stats(x)`` over
    ``m = N·H·W >= 2`` values per channel (the fast training path): the same rule, the
    same checks of the running statistics and the count, without a second pass over
    ``x``. Non-finite statistics are refused: ``x`` held NaN or Inf, or its variance
    overflowed (finite values of ``x`` near the dtype's limit).

    Parameters
    ----------
    mean, var : array_like, shape (C,)
        The batch mean and *biased* batch variance (:func:`batchnorm_stats`).
    m : int
        Values per channel the statistics were taken over, ``N·H·W >= 2``.
    running_mean, running_var, num_batches_tracked, momentum
        As in :func:`batchnorm_update_running`; ``mean``, ``var`` and ``running_var``
        must have ``running_mean``'s shape.

    Returns
    -------
    running_mean, running_var : ndarray, shape (C,)
        New arrays, as in :func:`batchnorm_update_running`.
    num_batches_tracked : ndarray, shape (), int64

    Raises
    ------
    ValueError
        Shapes that differ, ``m < 2``, ``momentum`` outside [0, 1], non-finite running
        statistics or a negative variance, non-finite ``mean`` or ``var``, a negative
        ``var``, new running statistics that overflow the dtype, or
        ``num_batches_tracked + 1`` that would not fit int64.
    TypeError
        An array that is not real numeric, ``m`` not an integer, or
        ``num_batches_tracked`` not an integer scalar.
    """
    rm = as_real_array(running_mean, "running_mean")
    _check_ndim(rm, "running_mean", 1, 1, "(C,)")
    rv = as_real_array(running_var, "running_var")
    mean, var = as_real_array(mean, "mean"), as_real_array(var, "var")
    for arr, name in ((rv, "running_var"), (mean, "mean"), (var, "var")):
        _check_shape(arr, name, rm.shape)
    m = as_int(m, "m", 2)
    momentum = real_number(momentum, "momentum", 0.0, 1.0)
    count = _check_count(num_batches_tracked)
    _check_running(rm, rv)
    if not (np.isfinite(mean).all() and np.isfinite(var).all()):
        # Not only NaN/Inf in x: the variance of finite values near the dtype's limit overflows.
        raise ValueError(
            "the batch mean or variance is not finite (x held NaN or Inf, or the statistics overflowed); "
            "running statistics unchanged"
        )
    if (var < 0).any():  # not a variance: it would make running_var negative for good
        raise ValueError(f"var must be >= 0 (a batch variance), got minimum {float(var.min())!r}")
    return _bn_running(mean, var, m, rm, rv, count, momentum)


# --------------------------------------------------------------------------------------
# LayerNorm over the channel axis
# --------------------------------------------------------------------------------------
def _ln_prepare(x, weight, bias, eps, grad_y=None):
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 2)
    _check_nonempty(x, "x", (1,), "LayerNorm over the channel axis")
    weight = as_real_array(weight, "weight")
    bias = as_real_array(bias, "bias")
    _check_shape(weight, "weight", (x.shape[1],))
    _check_shape(bias, "bias", (x.shape[1],))
    eps = real_number(eps, "eps", 0.0, low_open=True)
    if grad_y is not None:
        grad_y = _check_grad(grad_y, x.shape)
    dtype = compute_dtype(x, weight, bias, grad_y)
    return (*_cast(dtype, x, weight, bias, grad_y), eps)


def _ln_normalise(x, eps):
    mean = x.mean(axis=1, keepdims=True)
    centred = x - mean
    with np.errstate(over="ignore"):  # refused just below, with a message
        var = np.square(centred).mean(axis=1, keepdims=True)
    _check_spread(x, var, "variance over the channels")
    inv_std = 1.0 / np.sqrt(var + eps)
    return centred * inv_std, inv_std


def layernorm_forward(x, weight, bias, *, eps=1e-6):
    """LayerNorm over the channel axis: ``y = (x - μ)/sqrt(σ² + eps)·weight + bias``.

    ``μ`` and the biased ``σ²`` are taken over axis 1 (the ``C`` channels) separately for
    every sample and position.

    Parameters
    ----------
    x : array_like, shape (N, C) or ``(N, C, *S)``
    weight, bias : array_like, shape (C,)
    eps : float, default 1e-6 (the NeoNeXt head)

    Returns
    -------
    y : ndarray, shape of ``x``

    Raises
    ------
    ValueError
        Besides shapes that do not fit: a variance that overflows the dtype although
        ``x`` is finite (the output would be 0). NaN or Inf in ``x`` propagates.
    """
    x, weight, bias, _, eps = _ln_prepare(x, weight, bias, eps)
    x_hat, _ = _ln_normalise(x, eps)
    view = _channel_view(x.shape)
    return x_hat * weight.reshape(view) + bias.reshape(view)


def layernorm_backward(grad_y, x, weight, bias, *, eps=1e-6):
    """Backward of :func:`layernorm_forward`.

    With ``g = dy·weight`` and means ``⟨·⟩`` over the channel axis:
    ``dx = r·(g - ⟨g⟩ - x̂·⟨g·x̂⟩)``, ``d weight = Σ dy·x̂``, ``d bias = Σ dy`` (sums over
    samples and positions), ``r = 1/sqrt(σ² + eps)``.

    Parameters
    ----------
    grad_y : array_like, shape of ``x``
        Gradient of the loss with respect to ``y``.
    x, weight, bias, eps
        As in :func:`layernorm_forward`.

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_weight, grad_bias : ndarray, shape (C,)
    """
    x, weight, bias, grad_y, eps = _ln_prepare(x, weight, bias, eps, grad_y)
    x_hat, inv_std = _ln_normalise(x, eps)
    axes = _reduce_axes(x.ndim)
    grad_w = (grad_y * x_hat).sum(axis=axes)
    grad_b = grad_y.sum(axis=axes)
    g = grad_y * weight.reshape(_channel_view(x.shape))
    grad_x = g - g.mean(axis=1, keepdims=True)
    grad_x -= x_hat * (g * x_hat).mean(axis=1, keepdims=True)
    grad_x *= inv_std
    return grad_x, grad_w, grad_b


# --------------------------------------------------------------------------------------
# GELU (exact): x·Φ(x)
# --------------------------------------------------------------------------------------
#: float32 evaluation of ``Φ(-t) = exp(P(t))`` for ``t = min(|x|, GELU_FLOAT32_CLIP)``:
#: the coefficients of ``P`` in increasing powers of ``t``. A weighted minimax fit of
#: ``log Φ(-t)`` on ``[0, 8]`` (Lawson iteration on Chebyshev points, weight ``Φ(-t)``
#: so that the *absolute* error of ``Φ`` is levelled); see docs/model.md, where the
#: derivation is reproduced. Note ``P(0) ≈ -log 2`` and ``P'(0) ≈ -sqrt(2/π)``.
GELU_FLOAT32_COEFFICIENTS = (
    -0.6931471655136259,
    -0.7978856866259371,
    -0.3182965877943108,
    -0.036393709785631105,
    0.004904339362167626,
    -0.00010110644315225016,
    -0.0001265336358816922,
    2.677014024869127e-05,
    -1.921462212292386e-06,
)
#: ``t`` is clipped here: ``exp(P(12))`` underflows to exactly 0 in float32, so beyond
#: ``|x| = 12`` the float32 GELU is exactly ``max(x, 0)`` (``Φ(-12) ≈ 2e-33``), also for
#: ``±inf``. Between 8 (the end of the fit) and 12, ``P`` keeps decreasing and the tail
#: stays below ``Φ(-8) ≈ 6e-16``, far under float32 resolution relative to ``|x|``.
GELU_FLOAT32_CLIP = 12.0
#: Elements per block of the float32 path, so that its two temporaries stay in L2. Each
#: block makes about 20 NumPy calls, whose fixed cost per call counts at small blocks.
#: 2**15 until 2026-12-02; then, on a 2-core AMD EPYC (1 MiB of L2 per core), a block
#: of 2**18 values in cache took 2.98 ns per value at 2**15 and 2.31 at 2**16 forward,
#: 4.92 and 4.38 backward (best of 9 runs of 20 calls); inside NeoNeXt-T's batch-8
#: forward the GELU's share fell from 218 to 187 ms (best of 6, one thread). 2**17
#: was no better in the model (its temporaries no longer fit in L2 beside the block).
_GELU_CHUNK = 1 << 16
#: Elements per block while other tasks of the fast paths' worker pool run
#: (:func:`neocell_ref._parallel.in_task`). Every NumPy call takes the GIL to start and
#: to finish; with two threads making ~20 short calls per block, each waits for the
#: other's GIL hand-over so often that two threads were no faster than one (measured:
#: 0.97x at 2**15 values per block, 1.5x at 2**17, where each call works ~25 µs).
_GELU_CHUNK_THREADED = 1 << 17
_INV_SQRT_2PI = 0.3989422804014327


def _gelu_chunk():
    """Values per block of the float32 GELU passes in the calling thread (see above)."""
    return _GELU_CHUNK_THREADED if parallel.in_task() else _GELU_CHUNK


def _constant_row(value):
    """A read-only float32 block of ``value``, as long as the longest GELU block."""
    row = np.full(max(_GELU_CHUNK, _GELU_CHUNK_THREADED), value, dtype=np.float32)
    row.flags.writeable = False
    return row


# The clip and the ``max(x, 0)`` compare against these rows rather than a scalar: NumPy's
# float32 minimum/maximum with a scalar operand takes a slower loop (about 0.9 ns per value
# against 0.2 ns on this project's benchmark machine), and the results are the same bits,
# signed zeros and NaNs included (tests/test_layers.py checks both forms).
_GELU_CLIP_ROW = _constant_row(GELU_FLOAT32_CLIP)
_ZERO_ROW = _constant_row(0.0)


# float32 scalars made once: building ``np.float32(c)`` costs about as much as a NumPy
# call on a short block, and the float32 GELU makes about 20 such operations per block.
_GELU32_COEFFICIENTS = tuple(np.float32(c) for c in GELU_FLOAT32_COEFFICIENTS)
_HALF32, _MINUS_HALF32 = np.float32(0.5), np.float32(-0.5)
_INV_SQRT_2PI32 = np.float32(_INV_SQRT_2PI)


def _gelu32_tail(t, work):
    """``Φ(-t)`` in float32, overwriting ``t``'s clipped copy in ``work`` (same shape)."""
    c = _GELU32_COEFFICIENTS
    np.minimum(t, _GELU_CLIP_ROW[: t.size], out=t)
    np.multiply(t, c[-1], out=work)
    for ck in c[-2:0:-1]:  # Horner: P(t) = (...(c8 t + c7) t + ...) t + c0
        work += ck
        work *= t
    work += c[0]
    return np.exp(work, out=work)


def _gelu32_forward(x, out):
    """float32 GELU as ``max(x, 0) - |x|·Φ(-|x|)`` in cache-sized blocks.

    ``x·Φ(x) = max(x, 0) - |x|·Φ(-|x|)`` holds for both signs (``Φ(x) = 1 - Φ(-x)``);
    the form never subtracts nearly equal numbers, so the fitted ``Φ(-t)``'s accuracy
    carries over to ``y``.
    """
    flat_x = x.reshape(-1)
    flat_y = out.reshape(-1)
    chunk = _gelu_chunk()
    size = min(chunk, flat_x.size)
    t_buf = np.empty(size, dtype=np.float32)
    w_buf = np.empty(size, dtype=np.float32)
    with np.errstate(under="ignore"):  # exp(P(t)) underflows to 0 on purpose for large t
        for start in range(0, flat_x.size, chunk):
            xs = flat_x[start : start + chunk]
            ys = flat_y[start : start + chunk]
            t = np.abs(xs, out=t_buf[: xs.size])
            q = _gelu32_tail(t, w_buf[: xs.size])  # clips t in place
            _gelu32_value(xs, t, q, ys)
    return out


def _gelu32_value(xs, t, tail, out):
    """float32 ``max(x, 0) - t·Φ(-t)`` into ``out`` from ``t`` (the clipped ``|x|``) and
    ``tail = Φ(-t)``, which is overwritten; ``out`` may be ``xs`` (read before written).

    The clipped ``t`` equals ``|x|`` wherever ``Φ(-t)`` is not exactly 0, so the product
    is ``|x|·Φ(-|x|)``; for ``|x| = inf`` it is ``12·0 = 0`` instead of ``inf·0 = NaN``.
    The one float32 GELU value, used by :func:`_gelu32_forward` and the fast training
    path's fused pass.
    """
    tail *= t
    np.maximum(xs, _ZERO_ROW[: xs.size], out=out)
    out -= tail
    return out


def gelu_forward(x, *, out=None):
    """Exact GELU, ``y = x·Φ(x) = x·(1 + erf(x/√2))/2`` (not the tanh approximation).

    float64 (and integer) input: ``Φ`` is :func:`scipy.special.ndtr`, SciPy's erf-based
    normal CDF, which keeps full relative precision in the negative tail where
    ``(1 + erf)`` would cancel.

    float32 input: a fitted approximation (:data:`GELU_FLOAT32_COEFFICIENTS`), about ten
    times faster than SciPy's erf, evaluated as ``max(x, 0) - |x|·Φ(-|x|)`` with
    ``Φ(-t) = exp(P(min(t, 12)))``. Tested accuracy for every float32 ``x`` sampled:
    ``|y - x·Φ(x)| <= 1.5·ε₃₂·|x| + 2⁻¹⁴⁹`` (``ε₃₂ = 2⁻²³``; the second term is the
    smallest subnormal), relative error below ``8·ε₃₂`` for ``x >= -1`` — the same order as the rounding of ``x`` itself, which a float32
    matrix product upstream leaves at ``ε₃₂·|x|`` anyway.

    Parameters
    ----------
    x : array_like, any shape
    out : ndarray, optional
        Output array of the compute dtype and ``x``'s shape; may be ``x`` (in place)
        when ``x`` is of the compute dtype (float32 or float64).

    Returns
    -------
    y : ndarray, shape of ``x``
    """
    x = as_real_array(x, "x")
    dtype = compute_dtype(x)
    x = x.astype(dtype, copy=False)
    _check_out(out, x.shape, dtype)
    if out is None:
        out = np.empty(x.shape, dtype)
    elif np.shares_memory(x, out) and not _same_view(x, out):
        # Block by block (float32) or after the first write (float64's -inf fix), a
        # partial overlap would read values already overwritten: work from a copy.
        x = x.copy()
    if dtype == np.float32:
        if not (x.flags.c_contiguous and out.flags.c_contiguous):
            out[...] = _gelu32_forward(np.ascontiguousarray(x), np.empty(x.shape, np.float32))
            return out
        return _gelu32_forward(x, out)
    negative_infinity = np.isneginf(x)  # read before out (which may be x) is written
    cdf = special.ndtr(x)
    with np.errstate(under="ignore", invalid="ignore"):  # x·Φ(x) is subnormal or 0 far left on purpose
        np.multiply(x, cdf, out=out)
    out[negative_infinity] = 0.0  # the limit, as in float32 (-inf·0 gave NaN)
    return out


def gelu_backward(grad_y, x):
    """Backward of :func:`gelu_forward`: ``dx = dy·(Φ(x) + x·φ(x))``, ``φ`` the normal density.

    float32 uses the same fitted ``Φ`` as the forward and ``np.exp`` for ``φ``.

    Parameters
    ----------
    grad_y : array_like, shape of ``x``
        Gradient of the loss with respect to ``y``.
    x : array_like, any shape
        Input of the forward.

    Returns
    -------
    (grad_x,) : tuple of one ndarray, shape of ``x``
    """
    x = as_real_array(x, "x")
    grad_y = _check_grad(grad_y, x.shape)
    dtype = compute_dtype(x, grad_y)
    x, grad_y = _cast(dtype, x, grad_y)
    if dtype == np.float32:  # ±inf: _gelu32_derivative takes the limits
        grad_x = _gelu32_backward(np.ascontiguousarray(grad_y), np.ascontiguousarray(x))
        return (grad_x.reshape(x.shape),)  # ascontiguousarray makes a 0-d array 1-d
    cdf = special.ndtr(x)
    with np.errstate(under="ignore", invalid="ignore"):  # φ(x) is 0 beyond |x| ≈ 38 on purpose
        pdf = np.exp(np.square(x) * -0.5) * _INV_SQRT_2PI
        derivative = np.asarray(cdf + x * pdf)  # an array also for 0-d x (a scalar otherwise)
    infinite = np.isinf(x)
    if infinite.any():  # the derivative's limits, 0 at -inf and 1 at +inf (x·φ(x) gave inf·0 = NaN)
        derivative[infinite] = x[infinite] > 0
    return (grad_y * derivative,)


def _gelu32_backward(grad_y, x):
    """float32 ``dy·(Φ(x) + x·φ(x))`` in cache-sized blocks (as :func:`_gelu32_forward`)."""
    grad_x = np.empty_like(x)
    flat_x, flat_g, flat_out = x.reshape(-1), grad_y.reshape(-1), grad_x.reshape(-1)
    chunk = _gelu_chunk()
    size = min(chunk, flat_x.size)
    t_buf, w_buf, p_buf = (np.empty(size, dtype=np.float32) for _ in range(3))
    with np.errstate(under="ignore", over="ignore", invalid="ignore"):  # x² overflows far out; ±inf fixed by the caller
        for start in range(0, flat_x.size, chunk):
            xs = flat_x[start : start + chunk]
            k = xs.size
            t = np.abs(xs, out=t_buf[:k])
            tail = _gelu32_tail(t, w_buf[:k])  # Φ(-|x|)
            derivative = _gelu32_derivative(xs, tail, tail, p_buf[:k])
            np.multiply(flat_g[start : start + chunk], derivative, out=flat_out[start : start + k])
    return grad_x


def _gelu32_derivative(xs, tail, out, scratch):
    """float32 ``Φ(x) + x·φ(x)`` into ``out`` from ``tail = Φ(-|x|)`` (``out`` may be ``tail``).

    The one float32 GELU derivative, used by :func:`_gelu32_backward` and by the fast
    training path's fused pass, which are bit-identical because they run this.
    ``scratch`` (shape of ``xs``) is overwritten.
    """
    # Φ(x) = 1/2 + sign(x)·(1/2 - Φ(-|x|)): absolute accuracy ε, which is what a
    # derivative of size O(1) needs (a masked ``where=`` update is 50x slower)
    np.subtract(_HALF32, tail, out=out)
    np.copysign(out, xs, out=out)
    out += _HALF32
    pdf = np.square(xs, out=scratch)
    pdf *= _MINUS_HALF32
    np.exp(pdf, out=pdf)
    pdf *= _INV_SQRT_2PI32  # φ(x)
    with np.errstate(invalid="ignore"):  # ±inf·0 at x = ±inf, replaced below
        pdf *= xs
    out += pdf
    # ±inf·φ(±inf) made NaN there: take the derivative's limits, 0 at -inf and 1 at +inf.
    # The values are bounded (|out| < 1.2), so a NaN sum is the cheap test for it.
    if np.isnan(np.add.reduce(out)):
        infinite = np.isinf(xs)
        out[infinite] = xs[infinite] > 0
    return out


# --------------------------------------------------------------------------------------
# 4x4 patchify (the stem's space-to-depth)
# --------------------------------------------------------------------------------------
def _patch_prepare(x, patch):
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 4, 4, "(N, C, H, W)")
    patch = as_int(patch, "patch", 1)
    h, w = x.shape[2:]
    if h % patch or w % patch:
        raise ValueError(f"input height and width must be multiples of {patch}, got {h}x{w} (x shape {x.shape})")
    return x.astype(compute_dtype(x), copy=False), patch


def patchify_forward(x, *, patch=4):
    """Space-to-depth: ``y[n, c·p² + p·py + px, i, j] = x[n, c, p·i + py, p·j + px]``.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        ``H`` and ``W`` multiples of ``patch``.
    patch : int, default 4

    Returns
    -------
    y : ndarray, shape (N, C·p², H/p, W/p), C-contiguous
    """
    x, p = _patch_prepare(x, patch)
    n, c, h, w = x.shape
    blocks = x.reshape(n, c, h // p, p, w // p, p)  # (n, c, i, py, j, px)
    return np.ascontiguousarray(blocks.transpose(0, 1, 3, 5, 2, 4)).reshape(n, c * p * p, h // p, w // p)


def patchify_backward(grad_y, x, *, patch=4):
    """Backward of :func:`patchify_forward`: the inverse permutation of ``grad_y``.

    Parameters
    ----------
    grad_y : array_like, shape (N, C·p², H/p, W/p)
        Gradient of the loss with respect to ``y``.
    x : array_like, shape (N, C, H, W)
        Input of the forward; only its shape and dtype are used.
    patch : int, default 4
        As in :func:`patchify_forward`.

    Returns
    -------
    (grad_x,) : tuple of one ndarray, shape (N, C, H, W)
    """
    x, p = _patch_prepare(x, patch)
    n, c, h, w = x.shape
    grad_y = _check_grad(grad_y, (n, c * p * p, h // p, w // p)).astype(
        compute_dtype(x, np.asarray(grad_y)), copy=False
    )
    blocks = grad_y.reshape(n, c, p, p, h // p, w // p)  # (n, c, py, px, i, j)
    return (np.ascontiguousarray(blocks.transpose(0, 1, 4, 2, 5, 3)).reshape(n, c, h, w),)


# --------------------------------------------------------------------------------------
# global average pooling
# --------------------------------------------------------------------------------------
def avgpool_forward(x):
    """Global average pooling ``(N, C, H, W) -> (N, C)``: the mean over ``H·W`` pixels.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        ``H`` and ``W`` at least 1 (else ``ValueError``).

    Returns
    -------
    y : ndarray, shape (N, C)
    """
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 4, 4, "(N, C, H, W)")
    _check_nonempty(x, "x", (2, 3), "average pooling over H, W")
    return x.astype(compute_dtype(x), copy=False).mean(axis=(2, 3))


def avgpool_backward(grad_y, x):
    """Backward of :func:`avgpool_forward`: every pixel receives ``dy / (H·W)``.

    Parameters
    ----------
    grad_y : array_like, shape (N, C)
        Gradient of the loss with respect to ``y``.
    x : array_like, shape (N, C, H, W)
        Input of the forward; only its shape and dtype are used.

    Returns
    -------
    (grad_x,) : tuple of one ndarray, shape (N, C, H, W)
    """
    x = as_real_array(x, "x")
    _check_ndim(x, "x", 4, 4, "(N, C, H, W)")
    _check_nonempty(x, "x", (2, 3), "average pooling over H, W")
    grad_y = _check_grad(grad_y, x.shape[:2])
    dtype = compute_dtype(x, grad_y)
    g = grad_y.astype(dtype, copy=False) / dtype.type(x.shape[2] * x.shape[3])
    return (np.broadcast_to(g[:, :, None, None], x.shape).copy(),)


# --------------------------------------------------------------------------------------
# layer scale
# --------------------------------------------------------------------------------------
def _factor_prepare(x, factor, name, axis, grad_y=None):
    """Validate ``x`` and a vector ``factor`` with one value per index of ``x``'s ``axis``
    (layer scale: per channel, axis 1; drop path: per sample, axis 0)."""
    x = as_real_array(x, "x")
    _check_ndim(x, "x", axis + 1)
    factor = as_real_array(factor, name)
    _check_shape(factor, name, (x.shape[axis],))
    if grad_y is not None:
        grad_y = _check_grad(grad_y, x.shape)
    return _cast(compute_dtype(x, factor, grad_y), x, factor, grad_y)


def _ls_prepare(x, gamma, grad_y=None):
    return _factor_prepare(x, gamma, "gamma", 1, grad_y)


def layer_scale_forward(x, gamma, *, out=None):
    """Per-channel factor: ``y[n, c, ...] = gamma[c]·x[n, c, ...]``.

    Parameters
    ----------
    x : array_like, shape ``(N, C, *S)``
    gamma : array_like, shape (C,)
    out : ndarray, optional
        An ndarray of ``x``'s shape and the compute dtype (else ``ValueError``); may
        be ``x`` when ``x`` is of the compute dtype (float32 or float64).

    Returns
    -------
    y : ndarray, shape of ``x``
        ``out`` when given.
    """
    x, gamma, _ = _ls_prepare(x, gamma)
    _check_out(out, x.shape, x.dtype)
    return np.multiply(x, gamma.reshape(_channel_view(x.shape)), out=out)


def layer_scale_backward(grad_y, x, gamma):
    """Backward of :func:`layer_scale_forward`: ``(dy·gamma, Σ dy·x)`` (sum over all but axis 1).

    Parameters
    ----------
    grad_y : array_like, shape of ``x``
        Gradient of the loss with respect to ``y``.
    x, gamma
        As in :func:`layer_scale_forward`.

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_gamma : ndarray, shape (C,)
    """
    x, gamma, grad_y = _ls_prepare(x, gamma, grad_y)
    return grad_y * gamma.reshape(_channel_view(x.shape)), (grad_y * x).sum(axis=_reduce_axes(x.ndim))


# --------------------------------------------------------------------------------------
# drop path (stochastic depth)
# --------------------------------------------------------------------------------------
def drop_path_scale(rng, n, rate, dtype=np.float64):
    """Per-sample factors of drop path in training mode.

    Each sample's residual branch is kept with probability ``1 - rate`` (one
    ``rng.random(n)`` draw: kept where the uniform number is ``< 1 - rate``) and kept
    branches are multiplied by ``1/(1 - rate)`` so that the expectation is unchanged (as
    timm's ``drop_path`` with ``scale_by_keep=True``, used by ConvNeXt).

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
        Batch size.
    rate : float in [0, 1)
        Drop probability. ``rate == 0`` draws nothing and returns ones.
    dtype : floating dtype, default float64
        An integer dtype is refused (``TypeError``): it would truncate ``1/(1 - rate)``.

    Returns
    -------
    scale : ndarray, shape (n,)
        ``0`` or ``1/(1 - rate)``.
    """
    rate = real_number(rate, "rate", 0.0, 1.0, high_open=True)
    n = as_int(n, "n", 1)
    dtype = floating_dtype(dtype)
    check_nbytes((n,), dtype, "drop_path_scale: scale")
    if rate == 0.0:
        return np.ones(n, dtype=dtype)
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {rng!r}")
    keep = 1.0 - rate
    return np.where(rng.random(n) < keep, 1.0 / keep, 0.0).astype(dtype)


def _dp_prepare(x, scale, grad_y=None):
    return _factor_prepare(x, scale, "scale", 0, grad_y)


def drop_path_forward(x, scale, *, out=None):
    """Drop path with given per-sample factors: ``y[n] = scale[n]·x[n]``.

    In inference the layer is the identity (the model does not call it); in training
    ``scale`` comes from :func:`drop_path_scale`.

    Parameters
    ----------
    x : array_like, shape ``(N, *S)``
        The residual branch, at least 1-D.
    scale : array_like, shape (N,)
        Per-sample factors.
    out : ndarray, optional
        As in :func:`layer_scale_forward`: an ndarray of ``x``'s shape and the compute
        dtype; may be ``x``.

    Returns
    -------
    y : ndarray, shape of ``x``
        ``out`` when given.
    """
    x, scale, _ = _dp_prepare(x, scale)
    _check_out(out, x.shape, x.dtype)
    return np.multiply(x, scale.reshape((-1,) + (1,) * (x.ndim - 1)), out=out)


def drop_path_backward(grad_y, x, scale):
    """Backward of :func:`drop_path_forward`: ``(dy·scale, None)``; the factors are not
    differentiated (they are random draws, not parameters).

    Parameters
    ----------
    grad_y : array_like, shape of ``x``
        Gradient of the loss with respect to ``y``.
    x, scale
        As in :func:`drop_path_forward`.

    Returns
    -------
    grad_x : ndarray, shape of ``x``
    grad_scale : None
    """
    x, scale, grad_y = _dp_prepare(x, scale, grad_y)
    return grad_y * scale.reshape((-1,) + (1,) * (x.ndim - 1)), None


# --------------------------------------------------------------------------------------
# residual add
# --------------------------------------------------------------------------------------
def residual_add_forward(x, branch):
    """``y = x + branch`` (the block's skip connection).

    Parameters
    ----------
    x : array_like, any shape
        The skip input.
    branch : array_like, shape of ``x``
        The residual branch's output (not broadcast: the shapes must be equal).

    Returns
    -------
    y : ndarray, shape of ``x``
        A new array.
    """
    x, branch = as_real_array(x, "x"), as_real_array(branch, "branch")
    _check_shape(branch, "branch", x.shape)
    x, branch = _cast(compute_dtype(x, branch), x, branch)
    return x + branch


def residual_add_backward(grad_y, x, branch):
    """Backward of :func:`residual_add_forward`: the gradient reaches both inputs unchanged.

    Parameters
    ----------
    grad_y : array_like, shape of ``x``
        Gradient of the loss with respect to ``y``.
    x, branch
        As in :func:`residual_add_forward`; only their shapes and dtypes are used.

    Returns
    -------
    grad_x, grad_branch : ndarray, shape of ``x``
        Two separate copies of ``grad_y`` in the compute dtype.
    """
    x, branch = as_real_array(x, "x"), as_real_array(branch, "branch")
    _check_shape(branch, "branch", x.shape)
    grad_y = _check_grad(grad_y, x.shape)
    grad_y = grad_y.astype(compute_dtype(x, branch, grad_y), copy=False)
    return grad_y.copy(), grad_y.copy()


# --------------------------------------------------------------------------------------
# cross-entropy with label smoothing
# --------------------------------------------------------------------------------------
def check_targets(labels, classes, smoothing, batch=None):
    """The checked ``labels`` (integer array, shape (N,), values in ``[0, classes)``) and
    ``smoothing`` (a float in [0, 1]) of the cross-entropy; ``N`` must equal ``batch``
    when given. Also :func:`neocell_ref.train.train_step`'s check before any work.

    Parameters
    ----------
    labels : array_like of int, shape (N,)
        Class indices.
    classes : int
        Number of classes ``K``: every label must be in ``[0, classes)``.
    smoothing : float in [0, 1]
        Label-smoothing ``ε``.
    batch : int, optional
        The required ``N`` (the logits' batch size); any ``N`` when None.

    Returns
    -------
    labels : ndarray of int, shape (N,)
    smoothing : float

    Raises
    ------
    TypeError
        ``labels`` is a masked array or not of an integer dtype; ``classes`` or
        ``batch`` is not an integer.
    ValueError
        ``labels`` is not 1-D or its length is not ``batch``, a label is outside
        ``[0, classes)``, ``classes < 1`` or ``batch < 0``, or ``smoothing`` is not a
        finite real number in [0, 1].
    """
    classes = as_int(classes, "classes", 1)
    if batch is not None:
        batch = as_int(batch, "batch", 0)
    if isinstance(labels, np.ma.MaskedArray):  # np.asarray would train on the masked labels
        raise TypeError("labels is a masked array; its mask would be ignored: pass the labels to keep")
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.ndim != 1 or (batch is not None and labels.shape[0] != batch):
        expected = "(N,)" if batch is None else f"({batch},)"
        raise ValueError(f"labels has shape {labels.shape}, expected {expected}")
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"labels[{i}] = {int(labels[i])} is outside [0, {classes}) for {classes} classes")
    return labels, real_number(smoothing, "smoothing", 0.0, 1.0)


def _ce_prepare(logits, labels, smoothing):
    logits = as_real_array(logits, "logits")
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits must be 2-D (N, K) with N, K >= 1, got shape {logits.shape}")
    labels, smoothing = check_targets(labels, logits.shape[1], smoothing, logits.shape[0])
    logits = logits.astype(compute_dtype(logits), copy=False)
    # A loss of NaN is never an answer: NaN or +Inf logits make every softmax NaN, and a
    # -Inf logit (PyTorch's masking idiom) gives 0·(-Inf) = NaN here wherever its target
    # weight is 0. Refused instead, naming the first such entry.
    finite = np.isfinite(logits)
    if not finite.all():
        n, k = np.unravel_index(int(np.argmin(finite)), logits.shape)
        raise ValueError(f"logits must be finite, got logits[{n}, {k}] = {logits[n, k]}")
    return logits, labels, smoothing


def _ce_terms(logits, labels, smoothing):
    """``(loss, softmax)`` of checked logits, both from float64, whatever their dtype.

    With ``d = max(z) - z >= 0`` per sample, the loss of sample ``n`` is
    ``log(1 + Σ_{k≠top} exp(-d_k)) + (1-ε)·d_label + ε·mean_k d_k``: a sum of terms >= 0,
    so no cancellation, and no ``0·(-Inf)`` however large ``d`` (``q·log softmax`` gave
    NaN at ``ε = 0`` once ``max - z`` overflowed, and float32 gave Inf for losses as
    small as 2e37). ``max - z`` of float32 logits cannot overflow in float64; of float64
    ones it can (up to twice the largest float64), so the linear terms use ``d/2``,
    always finite, and a loss whose exact value exceeds float64 is refused rather than
    returned as Inf.
    """
    z = logits.astype(np.float64)
    n, k = z.shape
    rows = np.arange(n)
    top = z.argmax(axis=1)
    high = z[rows, top][:, None]
    with np.errstate(over="ignore"):
        d = high - z  # +Inf where the exact difference exceeds float64; exp(-Inf) = 0 is exact
    e = np.exp(-d)
    e[rows, top] = 0.0
    rest = e.sum(axis=1)  # Σ over the other classes, in [0, K-1]
    softmax = e / (1.0 + rest)[:, None]
    softmax[rows, top] = 1.0 / (1.0 + rest)
    half_d = 0.5 * high - 0.5 * z  # d/2, finite for every finite z (halving is exact but for subnormals)
    linear = (1.0 - smoothing) * half_d[rows, labels]
    if smoothing:  # mean of K values up to the largest float64: divide before summing
        linear = linear + smoothing * (half_d / k).sum(axis=1)
    half_loss = 0.5 * np.log1p(rest) + linear  # log1p keeps a loss of 1e-300, log(1 + x) made it 0
    with np.errstate(over="ignore"):
        total = half_loss.sum()
        mean = total / n if np.isfinite(total) else (half_loss / n).sum()
        loss = float(2.0 * mean)
    if not math.isfinite(loss):
        i = int(np.argmax(half_loss))
        raise ValueError(
            f"the cross-entropy is too large for float64 (sample {i}: logits from {float(z[i].min())!r} "
            f"to {float(z[i].max())!r}, label {int(labels[i])}); refused rather than returned as Inf"
        )
    return loss, softmax


def _smoothed_targets(labels, k, smoothing, dtype):
    q = np.full((labels.shape[0], k), smoothing / k, dtype=dtype)
    q[np.arange(labels.shape[0]), labels] += 1.0 - smoothing
    return q


def cross_entropy_forward(logits, labels, *, smoothing=0.0):
    """Mean cross-entropy with label smoothing (PyTorch's ``label_smoothing`` rule).

    The target distribution of sample ``n`` is ``q = (1 - ε)·onehot(labels[n]) + ε/K``;
    the loss is ``-(1/N) Σ_n Σ_k q[n, k]·log softmax(logits[n])[k]``, computed in
    float64 whatever the logits' dtype (float32 logits have a finite loss however far
    apart), in a form that holds no ``0·(-Inf)`` or ``Inf - Inf``.

    Parameters
    ----------
    logits : array_like, shape (N, K)
    labels : array_like of int, shape (N,)
        Class indices in ``[0, K)``.
    smoothing : float in [0, 1], default 0

    Returns
    -------
    loss : float

    Raises
    ------
    ValueError
        Logits holding NaN or ±Inf, labels or ``smoothing`` refused by
        :func:`check_targets`, or finite float64 logits so far apart that the exact
        loss exceeds the largest float64 (it is refused, never returned as Inf).
    TypeError
        As in :func:`check_targets`, or logits that are not real numeric.
    """
    logits, labels, smoothing = _ce_prepare(logits, labels, smoothing)
    return _ce_terms(logits, labels, smoothing)[0]


def cross_entropy_backward(logits, labels, *, smoothing=0.0):
    """Gradient of :func:`cross_entropy_forward` with respect to the logits: ``(softmax - q)/N``.

    The softmax is computed in float64 (as the loss) and the gradient returned in the
    logits' compute dtype. Refuses exactly what the forward refuses, a loss that
    overflows float64 included, although the gradient itself is bounded by ``1/N``.

    Parameters
    ----------
    logits, labels, smoothing
        As in :func:`cross_entropy_forward`.

    Returns
    -------
    grad_logits : ndarray, shape (N, K)

    Raises
    ------
    ValueError, TypeError
        As in :func:`cross_entropy_forward`.
    """
    logits, labels, smoothing = _ce_prepare(logits, labels, smoothing)
    softmax = _ce_terms(logits, labels, smoothing)[1]
    q = _smoothed_targets(labels, logits.shape[1], smoothing, np.float64)
    return ((softmax - q) / logits.shape[0]).astype(logits.dtype, copy=False)
