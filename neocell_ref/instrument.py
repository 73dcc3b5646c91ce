"""Counting the multiply-accumulates that the code actually executes.

Every matrix product in the package's forward and backward passes goes through
:func:`matmul` (or :func:`stacked_dot` or :func:`outer`, the same product in another
NumPy call). Inside a :func:`count_macs` block each call is recorded, so the
analytic counts of :mod:`neocell_ref.calculator` can be compared with what ran.
Outside such a block the only cost is one check of an empty list.

Thread-safe: products run by worker threads (the fast paths' thread pool,
:mod:`neocell_ref._parallel`) are recorded under a lock into the same counters, so the
totals are those of a single-threaded run; only the order of ``calls`` may differ.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

__all__ = ["matmul", "stacked_dot", "outer", "count_macs", "MacCounter"]

_COUNTERS: list = []
_LOCK = threading.Lock()


@dataclass
class MacCounter:
    """Multiply-accumulates recorded inside a :func:`count_macs` block.

    Attributes
    ----------
    macs : int
        Total over all recorded products.
    calls : list of (str, tuple, tuple, int)
        ``(tag, shape_a, shape_b, macs)`` per product, in call order (in completion
        order across threads when products ran in several threads).
    """

    macs: int = 0
    calls: list = field(default_factory=list)

    def record(self, tag, shape_a, shape_b, shape_out):
        k = shape_a[-1]
        macs = int(np.prod(shape_out, dtype=np.int64)) * int(k)
        with _LOCK:
            self.macs += macs
            self.calls.append((tag, tuple(shape_a), tuple(shape_b), macs))

    def by_tag(self) -> dict:
        """Total MACs per tag."""
        out: dict = {}
        for tag, _, _, macs in self.calls:
            out[tag] = out.get(tag, 0) + macs
        return out


@contextmanager
def count_macs():
    """Record every instrumented product (:func:`matmul`, :func:`stacked_dot`, :func:`outer`) run inside the block.

    Yields
    ------
    MacCounter
        A new counter; while the block runs it records every call of :func:`matmul`,
        :func:`stacked_dot` and :func:`outer`, in any thread (nested blocks each record
        every call). It stops recording when the block exits.

    Examples
    --------
    >>> with count_macs() as counter:            # doctest: +SKIP
    ...     neocell_forward(x, wa, wb, specs)
    >>> counter.macs                             # doctest: +SKIP
    """
    counter = MacCounter()
    with _LOCK:
        _COUNTERS.append(counter)
    try:
        yield counter
    finally:
        with _LOCK:
            _COUNTERS.remove(counter)


def matmul(a, b, tag: str = "", out=None):
    """``np.matmul(a, b)`` that reports its multiply-accumulates to active counters.

    One product ``(..., m, k) @ (..., k, n)`` costs ``prod(out.shape) * k`` MACs
    (broadcast batch dimensions included), recorded under the label ``tag``
    (:meth:`MacCounter.by_tag`); ``out`` is passed to ``np.matmul``.

    Parameters
    ----------
    a : array_like, shape (..., m, k)
    b : array_like, shape (..., k, n)
        Stack dimensions broadcast as in ``np.matmul``.
    tag : str, default ""
        Label recorded with the call (:meth:`MacCounter.by_tag`).
    out : ndarray, shape (..., m, n), optional
        Passed to ``np.matmul``.

    Returns
    -------
    ndarray, shape (..., m, n)
        ``np.matmul(a, b, out=out)`` (``out`` itself when given).
    """
    result = np.matmul(a, b, out=out)
    _record(tag, a, b, result)
    return result


def _record(tag, a, b, result):
    if _COUNTERS:
        for counter in tuple(_COUNTERS):  # a snapshot: another thread may leave its block
            counter.record(tag, np.shape(a), np.shape(b), result.shape)


def outer(a, b, tag: str = "", out=None):
    """A product with inner dimension 1, ``(..., m, 1) @ (..., 1, n)``, as element-wise
    products, reported like :func:`matmul` (``m·n`` MACs per matrix).

    Such products arise where a kernel has a side of 1 (the NeoCell backward of a 2-to-1
    down-sampling layer: ``dZ = G Bᵀ`` and ``dX = Aᵀ dZ``). ``np.matmul`` hands them to
    BLAS's general kernel, which packs both operands for a single multiplication per
    value: 8x192x56² 2-to-1 backward, 10.4 and 10.8 ms of its 38 ms in these two
    products. Here: one NumPy multiplication per row (or per column, whichever side is
    shorter), broadcast over the stack. Every value is the rounded product
    ``a[..., i, 0]·b[..., 0, j]``, as from BLAS (a zero result may carry the other sign).

    Parameters
    ----------
    a : ndarray, shape (..., m, 1)
    b : ndarray, shape (..., 1, n)
        Stack dimensions broadcast as in ``np.matmul``.
    tag : str, optional
        Label recorded with the call (:meth:`MacCounter.by_tag`).
    out : ndarray, shape (..., m, n), optional

    Returns
    -------
    ndarray, shape (..., m, n)
    """
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != 1 or b.shape[-2] != 1:
        raise ValueError(f"outer: shapes {a.shape} and {b.shape} are not (..., m, 1) and (..., 1, n)")
    m, n = a.shape[-2], b.shape[-1]
    stack = a.shape[:-2]
    if b.shape[:-2] != stack:  # (equal stacks, the fast path's case, skip the broadcast)
        try:
            stack = np.broadcast_shapes(stack, b.shape[:-2])
        except ValueError:
            raise ValueError(f"outer: the stacks of shapes {a.shape} and {b.shape} do not broadcast") from None
    shape = (*stack, m, n)
    if out is None:
        out = np.empty(shape, dtype=np.result_type(a, b))
    elif not isinstance(out, np.ndarray) or out.shape != shape:
        raise ValueError(f"outer: out must be an ndarray of shape {shape}, got {getattr(out, 'shape', type(out))}")
    if m <= n:
        for i in range(m):  # row i: a[..., i, 0] times the row of b
            np.multiply(a[..., i, :], b[..., 0, :], out=out[..., i, :])
    else:
        for j in range(n):  # column j: the column of a times b[..., 0, j]
            np.multiply(a[..., :, 0], b[..., :, j], out=out[..., :, j])
    _record(tag, a, b, out)
    return out


def stacked_dot(a, b, tag: str = "", out=None):
    """``a[i] @ b[i]`` for every ``i`` of two stacks of matrices, one ``np.dot`` each,
    reported like :func:`matmul`.

    For the products with a long inner dimension and few output values (the kernel
    gradients of the NeoCell fast path, 4x4 or 7x7 outputs of sums over tens of
    thousands of terms): ``np.matmul`` keeps the GIL for a product with few output
    values (NumPy releases it in a generalized ufunc only above a problem size counted
    without the inner dimension), so threads running such products take turns, while
    ``np.dot`` releases it around every BLAS call. Measured with two threads on two
    cores, 600 products of ``(4, 7200) @ (7200, 4)``: ``np.matmul`` 0.8x the serial
    speed, ``np.dot`` 1.8x.

    Parameters
    ----------
    a : ndarray, shape (s, m, k)
    b : ndarray, shape (s, k, n)
    tag : str, optional
        Label recorded with the call (:meth:`MacCounter.by_tag`).
    out : ndarray, shape (s, m, n), optional
        C-contiguous matrices of the result dtype (each ``out[i]`` is written by ``np.dot``).

    Returns
    -------
    ndarray, shape (s, m, n)
    """
    if np.ndim(a) != 3 or np.ndim(b) != 3 or a.shape[0] != b.shape[0] or a.shape[2] != b.shape[1]:
        raise ValueError(f"stacked_dot: shapes {np.shape(a)} and {np.shape(b)} do not chain")
    stack, rows, _ = a.shape
    result = np.empty((stack, rows, b.shape[2]), dtype=np.result_type(a, b)) if out is None else out
    for i in range(stack):
        np.dot(a[i], b[i], out=result[i])
    _record(tag, a, b, result)
    return result
