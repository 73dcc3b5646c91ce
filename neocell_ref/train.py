"""Training in NumPy: SGD and AdamW, a synthetic pattern task, one training step.

The optimizers follow PyTorch's update rules (``torch.optim.SGD`` with momentum and
L2 weight decay; ``torch.optim.AdamW`` with decoupled weight decay and bias
correction), written out so that a port can compare step by step. They update the
arrays of a parameter dict **in place** (the arrays of :attr:`NeoNeXt.params
<neocell_ref.models.NeoNeXt.params>`), keyed like the gradient dict.

Example::

    model = nr.models.NeoNeXt((1, 1, 1, 1), (8, 16, 24, 32), num_classes=4, kernel_spec="2+3")
    opt = AdamW(model.params, lr=3e-3)
    images, labels = synthetic_patterns(np.random.default_rng(0), 64)
    loss = train_step(model, opt, images, labels, smoothing=0.1)
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager

import numpy as np

from .layers import check_targets, cross_entropy_backward, cross_entropy_forward
from .validation import as_int, as_real_array, check_nbytes, floating_dtype, real_number

__all__ = ["SGD", "AdamW", "default_decay", "synthetic_patterns", "train_step", "PATTERN_CLASSES"]


@contextmanager
def _interrupts_held():
    """Hold Ctrl-C (SIGINT) until the block has finished, then deliver it.

    The optimizer's second pass writes the new values parameter by parameter; a
    KeyboardInterrupt between two writes would leave a half-updated model. Python runs
    signal handlers in the main thread only, between bytecodes: here the handler just
    notes the signal, and once the block is done the previous handler gets it (the
    default one raises KeyboardInterrupt then). Other threads never receive SIGINT, so
    there is nothing to hold; an ignored SIGINT or a handler not installed from Python
    is left alone.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is None or previous == signal.SIG_IGN:
        yield
        return
    received = []
    try:
        signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    except ValueError:  # not the main interpreter's main thread: no handler to set, none to hold
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])
            else:  # SIG_DFL: what the signal would have done (end the process)
                signal.raise_signal(signal.SIGINT)


def default_decay(name: str, value: np.ndarray) -> bool:
    """Weight decay for matrices and kernels (``ndim >= 2``); none for biases, norms, gammas.

    The ``decay`` callback of :class:`SGD` and :class:`AdamW` when none is given.

    Parameters
    ----------
    name : str
        The parameter's state-dict name (not used by this rule).
    value : ndarray
        The parameter; only its ``ndim`` is read.

    Returns
    -------
    bool
        True when ``value.ndim >= 2``.
    """
    return value.ndim >= 2


def _check_no_shared_memory(params):
    """Refuse parameters that overlap in memory: the same array twice, or two views of
    one array (``w`` and ``w[:]``), would be updated twice per step, the second update
    reading the first's result. A sweep over the arrays' byte ranges, so only arrays
    whose ranges overlap are compared (exactly, by :func:`numpy.shares_memory`)."""
    byte_bounds = getattr(np.lib, "array_utils", np).byte_bounds  # np.byte_bounds before NumPy 2
    spans = sorted((*byte_bounds(value), index, key) for index, (key, value) in enumerate(params.items()) if value.size)
    active = []  # (end, key) of the ranges still open
    for start, end, _, key in spans:
        active = [(e, k) for e, k in active if e > start]
        for _, other in active:
            if np.shares_memory(params[key], params[other]):
                raise ValueError(f"params[{key!r}] shares memory with params[{other!r}] (one would be updated twice)")
        active.append((end, key))


class _Optimizer:
    def __init__(self, params, weight_decay, decay):
        if not hasattr(params, "items"):
            raise TypeError(f"params must be a dict of name -> ndarray, got {type(params).__name__}")
        for key, value in params.items():
            if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
                raise TypeError(
                    f"params[{key!r}] must be a floating ndarray (updated in place), got {type(value).__name__}"
                )
        _check_no_shared_memory(params)
        self.params = params
        self.weight_decay = real_number(weight_decay, "weight_decay", 0.0)
        self.decay = default_decay if decay is None else decay
        self.steps = 0

    def step(self, grads):
        """Apply one update with ``grads`` (dict keyed like ``params``), whole or not at all.

        Two passes over the parameters, one at a time (so the extra memory is that of the
        largest parameter, not of all of them): the first checks every gradient, makes
        every ``decay`` choice and computes every new value, and refuses the step if any
        new parameter or optimizer state is not finite (an overflow, whatever
        ``np.errstate`` says) or a parameter is not writeable; the second computes the
        same values again and writes them in place. A step refused in the first pass
        (a gradient, a decay callback that raises, an overflow) changes nothing. Ctrl-C
        during the second pass is held until every value is written, then raised (in
        the main thread; see :func:`_interrupts_held`): the step is then whole, and
        :attr:`steps` counts it.
        """
        self._check_grads(grads)
        decays = {key: bool(self.weight_decay) and bool(self.decay(key, p)) for key, p in self.params.items()}
        for key, p in self.params.items():
            if not p.flags.writeable:
                raise ValueError(f"params[{key!r}] is read-only; no parameter was updated")
        zeros = self._scratch(1, fill=0)
        work = self._scratch(self._BUFFERS)  # both passes compute into the same buffers
        for key, new_param, new_state in self._updates(grads, decays, work):
            # x·0 summed is 0 for finite x and NaN as soon as one value is NaN or ±Inf:
            # one BLAS pass per array instead of isfinite's boolean array.
            (zero,) = zeros(new_param)
            with np.errstate(invalid="ignore"):
                finite = all(not np.isnan(np.vdot(a.ravel(), zero.ravel())) for a in (new_param, *new_state))
            if not finite:
                raise ValueError(f"the update of params[{key!r}] is not finite (overflow); no parameter was updated")
        with _interrupts_held():
            for key, new_param, new_state in self._updates(grads, decays, work):  # the same values again
                self.params[key][...] = new_param
                self._commit(key, new_state)
            self.steps += 1

    def _scratch(self, count, fill=None):
        """``count`` work buffers per parameter dtype, each as large as the largest
        parameter of that dtype (filled with ``fill`` if given); returns a function
        giving a parameter's views of them (:meth:`_updates` computes into these)."""
        sizes = {}
        for p in self.params.values():
            sizes[p.dtype] = max(sizes.get(p.dtype, 0), p.size)
        make = np.empty if fill is None else (lambda n, dtype: np.full(n, fill, dtype=dtype))
        buffers = {dtype: [make(size, dtype=dtype) for _ in range(count)] for dtype, size in sizes.items()}

        def views(p):
            return [b[: p.size].reshape(p.shape) for b in buffers[p.dtype]]

        return views

    def _check_grads(self, grads):
        if not hasattr(grads, "items"):  # the rule of params (__init__)
            raise TypeError(f"grads must be a dict of name -> ndarray keyed like params, got {type(grads).__name__}")
        missing = [k for k in self.params if k not in grads]
        unknown = [k for k in grads if k not in self.params]
        if missing or unknown:
            raise ValueError(f"grads do not match params: missing {missing}, unknown {unknown}")
        for key, g in grads.items():
            g = as_real_array(g, f"grads[{key!r}]")  # a complex gradient is refused, never cast
            if g.shape != self.params[key].shape:
                raise ValueError(f"grads[{key!r}] has shape {g.shape}, params has {self.params[key].shape}")
            # Refused before any parameter changes: a NaN step would corrupt the model for good.
            if not np.isfinite(g).all():
                raise ValueError(f"grads[{key!r}] contains NaN or Inf; no parameter was updated")


class SGD(_Optimizer):
    """Stochastic gradient descent with momentum (PyTorch's rule).

    ``g ← grad + weight_decay·p`` (L2 decay on the parameters that ``decay`` selects),
    ``v ← momentum·v + g`` (``v = g`` at the first step), ``p ← p - lr·v``.

    Parameters
    ----------
    params : dict of str -> ndarray
    lr : float
    momentum : float, default 0.9
    weight_decay : float, default 0
    decay : callable(name, array) -> bool, optional
        Which parameters get weight decay (default :func:`default_decay`).
    """

    def __init__(self, params, lr, momentum=0.9, weight_decay=0.0, decay=None):
        super().__init__(params, weight_decay, decay)
        self.lr = real_number(lr, "lr", 0.0, low_open=True)
        self.momentum = real_number(momentum, "momentum", 0.0)
        self.velocity = {}

    _BUFFERS = 3  # work buffers of _updates

    def _updates(self, grads, decays, views):
        """``(key, new parameter, (new velocity,) or ())`` per parameter, nothing written;
        the arrays are views of the work buffers, valid until the next item. The
        operations are PyTorch's, in its order: ``g + wd·p``, ``momentum·v + g``,
        ``p - lr·v``."""
        for key, p in self.params.items():
            grad, work, new_p = views(p)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked by step
                grad[...] = grads[key]
                if decays[key]:
                    np.multiply(p, self.weight_decay, out=work)
                    np.add(grad, work, out=grad)
                state = ()
                if self.momentum:
                    v = self.velocity.get(key)
                    if v is not None:
                        np.multiply(v, self.momentum, out=work)
                        np.add(work, grad, out=grad)
                    state = (grad,)
                np.multiply(grad, self.lr, out=work)
                np.subtract(p, work, out=new_p)
                yield key, new_p, state

    def _commit(self, key, state):
        if state:
            self.velocity[key] = state[0].copy()


class AdamW(_Optimizer):
    """Adam with decoupled weight decay (PyTorch's ``AdamW``).

    At step ``t``: ``p ← p·(1 - lr·weight_decay)`` (for parameters that ``decay``
    selects), ``m ← β1·m + (1-β1)·g``, ``v ← β2·v + (1-β2)·g²``,
    ``p ← p - lr·(m/(1-β1ᵗ)) / (sqrt(v/(1-β2ᵗ)) + eps)``.

    Parameters
    ----------
    params : dict of str -> ndarray
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
    eps : float, default 1e-8
    weight_decay : float, default 0.05
    decay : callable(name, array) -> bool, optional
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, decay=None):
        super().__init__(params, weight_decay, decay)
        self.lr = real_number(lr, "lr", 0.0, low_open=True)
        if not isinstance(betas, (tuple, list, np.ndarray)):
            raise TypeError(f"betas must be a pair (beta1, beta2) of numbers in [0, 1), got {betas!r}")
        if len(betas) != 2 or not all(0.0 <= real_number(b, "betas", 0.0) < 1.0 for b in betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = real_number(eps, "eps", 0.0, low_open=True)
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}

    _BUFFERS = 5  # work buffers of _updates

    def _updates(self, grads, decays, views):
        """``(key, new parameter, (new m, new v))`` per parameter, nothing written; the
        arrays are views of the work buffers, valid until the next item. The operations
        are PyTorch's, in its order (see the class docstring)."""
        b1, b2 = self.betas
        t = self.steps + 1
        c1, c2 = 1.0 - b1**t, 1.0 - b2**t
        for key, p in self.params.items():
            grad, m, v, step, new_p = views(p)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # checked by step
                grad[...] = grads[key]
                np.multiply(self.m[key], b1, out=m)
                np.multiply(grad, 1.0 - b1, out=step)
                np.add(m, step, out=m)
                np.multiply(self.v[key], b2, out=v)
                np.square(grad, out=step)
                np.multiply(step, 1.0 - b2, out=step)
                np.add(v, step, out=v)
                np.divide(m, c1, out=step)
                np.multiply(step, self.lr, out=step)  # lr·(m/c1)
                np.divide(v, c2, out=grad)  # grad is no longer needed
                np.sqrt(grad, out=grad)
                np.add(grad, self.eps, out=grad)
                np.divide(step, grad, out=step)
                if decays[key]:
                    np.multiply(p, 1.0 - self.lr * self.weight_decay, out=new_p)
                    np.subtract(new_p, step, out=new_p)
                else:
                    np.subtract(p, step, out=new_p)
                yield key, new_p, (m, v)

    def _commit(self, key, state):
        m, v = state
        self.m[key][...] = m
        self.v[key][...] = v


#: Classes of :func:`synthetic_patterns`, by label.
PATTERN_CLASSES = ("horizontal stripes", "vertical stripes", "diagonal stripes", "anti-diagonal stripes")


def synthetic_patterns(rng, n, size=32, noise=0.5, dtype=np.float64):
    """A small image-classification task: the orientation of noisy stripes.

    Image ``i`` of class ``k = labels[i]`` is ``sin(2π·u/period + phase)`` with ``u`` the
    row (k=0), column (1), row+column (2) or row-column (3), period drawn from
    ``{4, 6, 8}``, a random phase and a random per-channel amplitude in ``[0.5, 1.5]``,
    plus Gaussian noise of standard deviation ``noise``.

    Parameters
    ----------
    rng : numpy.random.Generator
    n : int
        Number of images.
    size : int, default 32
    noise : float, default 0.5
    dtype : floating dtype, default float64
        dtype of ``images`` (drawn in float64, then cast).

    Returns
    -------
    images : ndarray, shape (n, 3, size, size)
    labels : ndarray of int64, shape (n,)
    """
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator, got {rng!r}")
    n, size = as_int(n, "n", 1), as_int(size, "size", 1)
    noise = real_number(noise, "noise", 0.0)
    dtype = floating_dtype(dtype)
    check_nbytes((n, 3, size, size), np.float64, "synthetic_patterns: images")
    labels = rng.integers(0, len(PATTERN_CLASSES), size=n)
    period = rng.choice(np.array([4.0, 6.0, 8.0]), size=n)
    phase = rng.uniform(0.0, 2 * np.pi, size=n)
    amplitude = rng.uniform(0.5, 1.5, size=(n, 3))
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    coords = np.stack([rows, cols, rows + cols, rows - cols])  # (4, size, size)
    u = coords[labels]  # (n, size, size)
    wave = np.sin(2 * np.pi * u / period[:, None, None] + phase[:, None, None])
    images = amplitude[:, :, None, None] * wave[:, None] + noise * rng.standard_normal((n, 3, size, size))
    return images.astype(dtype), labels.astype(np.int64)


def train_step(model, optimizer, images, labels, smoothing=0.0):
    """One step: training forward, cross-entropy with label smoothing, backward, update.

    A step happens whole or not at all. ``optimizer``, ``labels`` and ``smoothing`` are
    checked before any work, ``images`` by the forward; a step that fails later (logits
    or gradients not finite, which the loss and the optimizer refuse, or a loss that is
    not finite: finite logits so far apart that it overflows float64) puts back the
    model's running statistics, drop-path generator and gradients as they were before
    the call, and no parameter or optimizer state has changed nor is the step counted:
    the loss returned is always finite. Ctrl-C while the
    optimizer writes the new values is held until they are all written (the step has
    then happened; nothing is put back) and raised after.

    Parameters
    ----------
    model : NeoNeXt
    optimizer : SGD or AdamW
        Built on ``model.params`` (the same arrays: they are updated in place).
    images : array_like, shape (N, in_chans, H, W)
    labels : array_like of int, shape (N,)
        Class indices in ``[0, num_classes)``.
    smoothing : float in [0, 1], default 0

    Returns
    -------
    loss : float
        The loss before the update, finite.

    Raises
    ------
    TypeError, ValueError
        A refused step (see above), the loss's refusals included.
    """
    if not isinstance(optimizer, _Optimizer):
        raise TypeError(f"optimizer must be an SGD or AdamW of neocell_ref.train, got {type(optimizer).__name__}")
    params = getattr(model, "params", None)
    if (
        not isinstance(params, dict)
        or optimizer.params.keys() != params.keys()
        or any(optimizer.params[key] is not value for key, value in params.items())
    ):
        raise ValueError("optimizer must be built on model.params (the model's own arrays, every one of them)")
    # The classes are the head's outputs (an architecture may differ from its config's
    # num_classes); the batch is checked here when images is already an array.
    classes = list(model.architecture.layers())[-1].out_shape[0]
    batch = images.shape[0] if isinstance(images, np.ndarray) and images.ndim >= 1 else None
    check_targets(labels, classes, smoothing, batch)
    saved = (dict(model.buffers), model.drop_path_rng.bit_generator.state, dict(model.grads))
    steps = optimizer.steps
    try:
        logits = model.forward(images, training=True)
        loss = cross_entropy_forward(logits, labels, smoothing=smoothing)
        if not math.isfinite(loss):  # the loss refuses one it cannot represent; never count one
            raise ValueError(f"the loss is {loss!r}, not finite; the step was refused and nothing changed")
        model.backward(cross_entropy_backward(logits, labels, smoothing=smoothing))
        optimizer.step(model.grads)  # whole or not at all (_Optimizer.step)
    except BaseException:  # KeyboardInterrupt too: an interrupted step leaves no trace
        if optimizer.steps != steps:
            # The update was written whole and Ctrl-C, held meanwhile, came after it
            # (_Optimizer.step): the step happened; rolling back the statistics now
            # would leave them older than the parameters.
            raise
        # Running statistics are replaced, never modified in place (NeoNeXt.forward), so
        # the old dict's arrays are the old values.
        buffers, rng_state, grads = saved
        model.buffers.clear()
        model.buffers.update(buffers)
        model.drop_path_rng.bit_generator.state = rng_state
        model.grads = grads
        # The failed step's cached forward is dropped, so backward() refuses to run rather
        # than differentiate it (keeping the previous one alive would double the memory
        # of every step, for a cache that a new step replaces anyway).
        model.clear_cache()
        raise
    return loss
