"""A small NeoCell port written independently of the package, with switchable bugs.

The golden oracle and the conformance kit must catch realistic porting bugs. This
port builds the expanded matrices with its own loops (not ``neocell_ref.expansion``),
parses group dicts itself, and computes in float64. Each ``bug`` reproduces one
mistake a porting engineer could plausibly make:

``corner_dropped``
    shifted blocks without the wrapped bottom-right corner;
``split_ceil``
    shift sub-groups of ``ceil(channels / n)`` channels instead of ``floor``;
``round_size``
    output size ``round(H * h_out / h_in)`` (half up) instead of ``floor``;
``swap_ab``
    the left and right kernels exchanged (``A`` applied along the width);
``transpose_a``
    ``weight_a`` read as ``(h_in, h_out)``, i.e. transposed;
``float32_accumulation``
    everything computed in float32 although float64 is claimed.

With ``bug=None`` it is a correct port; the tests check that too, so a bug is
caught because of the bug and not because the port is wrong everywhere.
"""

import math
from functools import partial

import numpy as np

BUGS = ("corner_dropped", "split_ceil", "round_size", "swap_ab", "transpose_a", "float32_accumulation")


def _sizes(group):
    if "h_in" in group:
        return group["h_in"], group["h_out"], group["w_in"], group["w_out"]
    if "kernel_a" in group:
        return group["kernel_a"], group["kernel_a"], group["kernel_b"], group["kernel_b"]
    k = group["kernel"]
    return k, k, k, k


def _shifts(group):
    if "shift_a" in group:
        return group["shift_a"], group["shift_b"]
    return group.get("shift", 0), group.get("shift", 0)


def _out_len(length, k_in, k_out, bug):
    if k_in == k_out:
        return length
    if bug == "round_size":
        return int(math.floor(length * k_out / k_in + 0.5))
    return (length * k_out) // k_in


def _channel_shift(index, channels, k_out, shift, bug):
    if shift == 0:
        return 0
    n = (k_out - 1) // shift + 1
    size = -(-channels // n) if bug == "split_ceil" else channels // n
    sub = n - 1 if size == 0 else min(index // size, n - 1)
    return sub * shift


def _place(kernel, rows, cols, shift, bug):
    """Expanded matrix by explicit block placement; returns it and the placed pieces."""
    p, q = kernel.shape
    m = np.zeros((rows, cols), dtype=kernel.dtype)
    pieces = []  # (matrix row, matrix col, kernel row, kernel col, rows, cols)
    i = 0
    while shift + i * p < rows and shift + i * q < cols:
        r0, c0 = shift + i * p, shift + i * q
        pieces.append((r0, c0, 0, 0, min(p, rows - r0), min(q, cols - c0)))
        i += 1
    if shift and bug != "corner_dropped":
        pieces.append((0, 0, p - shift, q - shift, min(shift, rows), min(shift, cols)))
    for r0, c0, kr, kc, r, c in pieces:
        m[r0 : r0 + r, c0 : c0 + c] = kernel[kr : kr + r, kc : kc + c]
    return m, pieces


def _gather(grad_m, shape, pieces):
    grad_k = np.zeros(shape, dtype=grad_m.dtype)
    for r0, c0, kr, kc, r, c in pieces:
        grad_k[kr : kr + r, kc : kc + c] += grad_m[r0 : r0 + r, c0 : c0 + c]
    return grad_k


def _per_channel(x_shape, weights_a, weights_b, specs, bug):
    """Yield (channel, group, index in group, A_full, B_full, pieces_a, pieces_b, kernels)."""
    _, _, h, w = x_shape
    c = 0
    for g, group in enumerate(specs):
        h_in, h_out, w_in, w_out = _sizes(group)
        sa, sb = _shifts(group)
        rows, cols = _out_len(h, h_in, h_out, bug), _out_len(w, w_in, w_out, bug)
        for i in range(group["channels"]):
            a, b = np.asarray(weights_a[g][i]), np.asarray(weights_b[g][i])
            if bug == "transpose_a":
                a = a.T
            if bug == "swap_ab":
                a, b = b.T, a.T
            a_full, pa = _place(a, rows, h, _channel_shift(i, group["channels"], h_out, sa, bug), bug)
            b_full, pb = _place(b.T, cols, w, _channel_shift(i, group["channels"], w_out, sb, bug), bug)
            yield c, g, i, a_full, b_full.T, pa, pb, a.shape, b.shape
            c += 1


def port_forward(x, weights_a, weights_b, specs, bug=None):
    """``y[n, c] = Â_c x[n, c] B̂_c`` with optional planted bug."""
    dtype = np.float32 if bug == "float32_accumulation" else np.float64
    x = np.asarray(x, dtype=dtype)
    weights_a = [np.asarray(w, dtype=dtype) for w in weights_a]
    weights_b = [np.asarray(w, dtype=dtype) for w in weights_b]
    out = None
    for c, g, i, a_full, b_full, *_ in _per_channel(x.shape, weights_a, weights_b, specs, bug):
        if out is None:
            out = np.zeros((x.shape[0], x.shape[1], a_full.shape[0], b_full.shape[1]), dtype=dtype)
        out[:, c] = a_full @ x[:, c] @ b_full
    return out.astype(np.float64)


def port_backward(grad_y, x, weights_a, weights_b, specs, bug=None):
    """Hand-derived backward of :func:`port_forward` with the same planted bug."""
    dtype = np.float32 if bug == "float32_accumulation" else np.float64
    x, grad_y = np.asarray(x, dtype=dtype), np.asarray(grad_y, dtype=dtype)
    weights_a = [np.asarray(w, dtype=dtype) for w in weights_a]
    weights_b = [np.asarray(w, dtype=dtype) for w in weights_b]
    grad_x = np.zeros_like(x)
    grads_a = [np.zeros_like(w) for w in weights_a]
    grads_b = [np.zeros_like(w) for w in weights_b]
    for c, g, i, a_full, b_full, pa, pb, a_shape, b_shape in _per_channel(x.shape, weights_a, weights_b, specs, bug):
        dy = grad_y[:, c]
        z = a_full @ x[:, c]
        grad_b_full = np.einsum("nij,nik->jk", z, dy)
        dz = dy @ b_full.T
        grad_a_full = np.einsum("nij,nkj->ik", dz, x[:, c])
        grad_x[:, c] = a_full.T @ dz
        ga = _gather(grad_a_full, a_shape, pa)
        gb = _gather(grad_b_full.T, b_shape[::-1], pb).T
        if bug == "swap_ab":
            ga, gb = gb.T, ga.T
        if bug == "transpose_a":
            ga = ga.T
        grads_a[g][i] = ga
        grads_b[g][i] = gb
    return grad_x.astype(np.float64), [a.astype(np.float64) for a in grads_a], [b.astype(np.float64) for b in grads_b]


# Module-level callables so that `neocell-ref golden verify --forward mutant_ports:NAME` works.
correct_forward = port_forward
correct_backward = port_backward
for _bug in BUGS:
    globals()[f"{_bug}_forward"] = partial(port_forward, bug=_bug)
    globals()[f"{_bug}_backward"] = partial(port_backward, bug=_bug)


# ======================================================================================
# Layer and model ports with one planted bug each
# ======================================================================================
# These reuse the package's layers for everything except the bug, so that a failure
# can only come from the bug. Each is a porting mistake seen in practice:
#
# ``batchnorm_unbiased``   BatchNorm normalising with the unbiased batch variance
#                          (PyTorch uses the biased one for normalisation);
# ``gelu_tanh``            the tanh approximation of GELU instead of the exact erf form;
# ``float32``              the model computed in float32 although float64 is claimed.
#
# A buggy layer comes with its own hand-derived backward, the exact gradient of the
# buggy forward (what a port differentiated by autograd would compute), so that its
# gradients are consistent with its forward: a diagnosis must explain them too. The
# backward functions are checked against finite differences (tests/verify/test_diagnosis.py).
# The layer ports (``batchnorm_unbiased_forward``/``_backward``, ``gelu_tanh_forward``/
# ``_backward``) follow the golden layer calling convention.
from contextlib import contextmanager  # noqa: E402

import neocell_ref.layers as _layers  # noqa: E402
from neocell_ref.models import NeoNeXt  # noqa: E402

MODEL_BUGS = ("batchnorm_unbiased", "gelu_tanh", "float32")
_batchnorm_forward = _layers.batchnorm_forward  # the correct ones, before any swap
_batchnorm_backward = _layers.batchnorm_backward


def batchnorm_unbiased_forward(x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5, out=None):
    if not training:
        return _batchnorm_forward(x, weight, bias, running_mean, running_var, training=False, eps=eps, out=out)
    x = np.asarray(x, dtype=np.result_type(x, weight))
    mean = x.mean(axis=(0, 2, 3))
    var = x.var(axis=(0, 2, 3), ddof=1)  # the bug: unbiased variance
    scale = np.asarray(weight) / np.sqrt(var + eps)
    y = (x - mean[:, None, None]) * scale[:, None, None] + np.asarray(bias)[:, None, None]
    if out is not None:
        out[...] = y
        return out
    return y


def batchnorm_unbiased_backward(grad_y, x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5):
    """Exact backward of :func:`batchnorm_unbiased_forward`, derived by hand.

    Per channel, with ``M = N·H·W``, ``μ = Σx/M``, ``v = Σ(x-μ)²/(M-1)``,
    ``s = (v + eps)^(-1/2)``, ``x̂ = (x-μ)·s``, ``y = w·x̂ + b`` and ``g = dy·w``:

    * ``db = Σ dy``, ``dw = Σ dy·x̂``;
    * ``∂μ/∂x_i = 1/M``; ``∂v/∂x_i = 2(x_i-μ)/(M-1)`` (the term through ``μ`` vanishes
      because ``Σ(x-μ) = 0``); ``∂s/∂v = -s³/2``;
    * ``dx_i = s·(g_i - Σg/M) - s³·(x_i-μ)·Σ_j g_j(x_j-μ)/(M-1)``
      ``= s·(g_i - Σg/M - x̂_i·Σ_j g_j x̂_j/(M-1))``.

    Only the last divisor differs from the biased BatchNorm (``M``).
    """
    if not training:
        return _batchnorm_backward(grad_y, x, weight, bias, running_mean, running_var, training=False, eps=eps)
    dtype = np.result_type(x, weight, grad_y)
    x, dy = np.asarray(x, dtype=dtype), np.asarray(grad_y, dtype=dtype)
    weight = np.asarray(weight, dtype=dtype)
    m = x.shape[0] * x.shape[2] * x.shape[3]
    centred = x - x.mean(axis=(0, 2, 3))[:, None, None]
    s = 1.0 / np.sqrt((centred**2).sum(axis=(0, 2, 3)) / (m - 1) + eps)
    x_hat = centred * s[:, None, None]
    g = dy * weight[:, None, None]
    grad_x = s[:, None, None] * (
        g - g.sum(axis=(0, 2, 3))[:, None, None] / m - x_hat * (g * x_hat).sum(axis=(0, 2, 3))[:, None, None] / (m - 1)
    )
    return grad_x, (dy * x_hat).sum(axis=(0, 2, 3)), dy.sum(axis=(0, 2, 3)), None, None


def gelu_tanh_forward(x, *, out=None):
    x = np.asarray(x)
    y = 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))  # the bug
    if out is not None:
        out[...] = y
        return out
    return y.astype(x.dtype, copy=False)


def gelu_tanh_backward(grad_y, x):
    """Exact backward of :func:`gelu_tanh_forward`, derived by hand.

    ``y = x/2·(1 + tanh u)``, ``u = c(x + k x³)``, ``c = √(2/π)``, ``k = 0.044715``:
    ``dy/dx = (1 + tanh u)/2 + x/2·sech² u·c(1 + 3k x²)``, ``sech² u = 1/cosh² u``.
    """
    x = np.asarray(x)
    c = np.sqrt(2.0 / np.pi)
    u = c * (x + 0.044715 * x**3)
    with np.errstate(over="ignore"):  # cosh overflows far out, where sech² is 0
        sech2 = 1.0 / np.cosh(u) ** 2
    d = 0.5 * (1.0 + np.tanh(u)) + 0.5 * x * sech2 * c * (1.0 + 3 * 0.044715 * x**2)
    return ((np.asarray(grad_y) * d).astype(np.result_type(x, grad_y), copy=False),)


@contextmanager
def _layers_replaced(bug):
    """Run the package's model with one layer function swapped for the buggy one."""
    replaced = {
        "batchnorm_unbiased": {
            "batchnorm_forward": batchnorm_unbiased_forward,
            "batchnorm_backward": batchnorm_unbiased_backward,
        },
        "gelu_tanh": {"gelu_forward": gelu_tanh_forward, "gelu_backward": gelu_tanh_backward},
    }.get(bug, {})
    original = {name: getattr(_layers, name) for name in replaced}
    for name, fn in replaced.items():
        setattr(_layers, name, fn)
    try:
        yield
    finally:
        for name, fn in original.items():
            setattr(_layers, name, fn)


def _model(x, state, config, bug):
    dtype = np.float32 if bug == "float32" else np.asarray(x).dtype
    model = NeoNeXt(**config, dtype=dtype, resolution=tuple(np.shape(x)[2:]))
    model.fast_training = False  # the plain path runs every layer by its (replaced) function
    model.load_state_dict(state)
    return model, np.asarray(x, dtype=dtype)


def model_forward(x, state, config, training, bug=None):
    with _layers_replaced(bug):
        model, x = _model(x, state, config, bug)
        return model.forward(x, training=training).astype(np.float64)


def model_backward(grad_logits, x, state, config, bug=None):
    with _layers_replaced(bug):
        model, x = _model(x, state, config, bug)
        model.forward(x, training=True)
        grad_x = model.backward(np.asarray(grad_logits, dtype=x.dtype))
        return grad_x, dict(model.grads)


correct_model_forward = model_forward
correct_model_backward = model_backward
for _bug in MODEL_BUGS:
    globals()[f"model_{_bug}_forward"] = partial(model_forward, bug=_bug)
    globals()[f"model_{_bug}_backward"] = partial(model_backward, bug=_bug)


# ======================================================================================
# Hostile ports: outputs and behaviour that must never pass (tests/verify/test_golden.py)
# ======================================================================================
# ``complex``       the right values plus 1e6j (converting to float would drop the
#                   imaginary part and pass);
# ``exit``          calls sys.exit(0) (a verifier that lets it through exits 0);
# ``interrupt``     raises KeyboardInterrupt (must abort the run, not fail a case);
# ``zero``          all zeros of the right shape (must fail at any allowed loosening);
# ``crash_log``     raises with a long multi-line message, like a wrapper around a port
#                   outside Python that puts the port's stderr into its exception;
# ``scribbling``    correct, but zeroes its inputs afterwards (a later call, the
#                   comparison or the diagnosis reading them would see zeros);
# ``extra_grads``   correct gradients plus one more per side, which nothing compares.
import sys  # noqa: E402


def complex_forward(x, weights_a, weights_b, specs):
    return port_forward(x, weights_a, weights_b, specs) + 1e6j


def exit_forward(*args, **kwargs):
    sys.exit(0)


def interrupt_forward(*args, **kwargs):
    raise KeyboardInterrupt


def zero_forward(x, weights_a, weights_b, specs):
    return np.zeros_like(port_forward(x, weights_a, weights_b, specs))


CRASH_LOG_LAST_LINE = "fatal: kernel launch failed at neocell.cu:42"


def crash_log_forward(*args, **kwargs):
    lines = [f"port stderr line {i}: warming up" for i in range(500)] + [CRASH_LOG_LAST_LINE]
    raise RuntimeError("the port exited with status 1; stderr tail:\n" + "\n".join(lines))


def gelu_complex_forward(x, **options):
    return _layers.gelu_forward(x, **options) + 1e6j


not_callable = 42


def scribbling_forward(x, weights_a, weights_b, specs):
    y = port_forward(x, weights_a, weights_b, specs)
    for array in [x, *weights_a, *weights_b]:
        array[...] = 0.0
    return y


def scribbling_backward(grad_y, x, weights_a, weights_b, specs):
    grads = port_backward(grad_y, x, weights_a, weights_b, specs)
    for array in [grad_y, x, *weights_a, *weights_b]:
        array[...] = 0.0
    return grads


def extra_grads_backward(grad_y, x, weights_a, weights_b, specs):
    grad_x, grads_a, grads_b = port_backward(grad_y, x, weights_a, weights_b, specs)
    return grad_x, [*grads_a, np.ones(3)], [*grads_b, np.ones(3)]


def unprintable_forward(*args, **kwargs):
    # a lone surrogate cannot be encoded; a carriage return would overwrite the line
    raise RuntimeError("decoded \udcff badly\rPASSED everything")


def extra_grad_model_backward(grad_logits, x, state, config):
    grad_x, grads = model_backward(grad_logits, x, state, config)
    return grad_x, {**grads, "head.fc.weight_misnamed": np.zeros(3)}


def buffer_grads_model_backward(grad_logits, x, state, config):
    """Correct, plus zero or None "gradients" for every buffer, as a port that
    differentiates the whole state dict returns them."""
    grad_x, grads = model_backward(grad_logits, x, state, config)
    buffers = {
        k: (None if k.endswith("num_batches_tracked") else np.zeros(np.shape(v)))
        for k, v in state.items()
        if k not in grads
    }
    return grad_x, {**grads, **buffers}


def half_grads_model_backward(grad_logits, x, state, config):
    """The loss averaged where it is summed: every gradient half the right one."""
    grad_x, grads = model_backward(grad_logits, x, state, config)
    return 0.5 * grad_x, {k: 0.5 * v for k, v in grads.items()}


class _ExitingMessage(Exception):
    def __str__(self):
        raise SystemExit(0)


def exiting_message_forward(*args, **kwargs):
    raise _ExitingMessage()


# --------------------------------------------------------------------------------------
# ports that keep and rewrite the arrays they returned
# --------------------------------------------------------------------------------------
_KEPT = {}


def _kept(shape):
    """One buffer per shape, kept across calls (as a port with preallocated outputs)."""
    if shape not in _KEPT:
        _KEPT[shape] = np.empty(shape)
    return _KEPT[shape]


def zero_kept_forward(x, weights_a, weights_b, specs):
    """A wrong forward (all zeros) into a kept buffer..."""
    y = port_forward(x, weights_a, weights_b, specs)
    out = _kept(y.shape)
    out[...] = 0.0
    return out


def fixing_kept_backward(grad_y, x, weights_a, weights_b, specs):
    """...whose backward then writes the right ``y`` into that buffer (a forward it
    recomputes): compared after the backward, the zeros would be gone."""
    y = port_forward(x, weights_a, weights_b, specs)
    _kept(y.shape)[...] = y
    return port_backward(grad_y, x, weights_a, weights_b, specs)


def right_kept_forward(x, weights_a, weights_b, specs):
    """A right forward into a kept buffer..."""
    y = port_forward(x, weights_a, weights_b, specs)
    out = _kept(y.shape)
    out[...] = y
    return out


def right_kept_backward(grad_y, x, weights_a, weights_b, specs):
    """...and a right backward returning ``grad_x`` in the same buffer when the shapes
    agree (square kernels): a right port, which must pass."""
    grad_x, grads_a, grads_b = port_backward(grad_y, x, weights_a, weights_b, specs)
    out = _kept(grad_x.shape)
    out[...] = grad_x
    return out, grads_a, grads_b


def kept_logits_model_forward(x, state, config, training):
    """Right logits, both modes written into one kept buffer."""
    logits = model_forward(x, state, config, training)
    out = _kept(logits.shape)
    out[...] = logits
    return out


def config_changing_model_forward(x, state, config, training):
    """Right logits, then the config's lists reversed in place (a port that 'tidies up')."""
    logits = model_forward(x, state, config, training)
    for value in config.values():
        if isinstance(value, list):
            value.reverse()
    return logits
