"""Counting the multiply-accumulates that the code actually executes.

Every matrix product in the package's forward and backward passes goes through
:func:`matmul` (or :func:`stacked_dot`, the same product in another NumPy call). Inside a :func:`count_macs` block each call is recorded, so the
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

__all__ = ["matmul", "stacked_dot", "count_macs", "MacCounter"]

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
    """Record every :func:`matmul` executed inside the block.

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
    (broadcast batch dimensions included).
    """
    result = np.matmul(a, b, out=out)
    if _COUNTERS:
        for counter in tuple(_COUNTERS):  # a snapshot: another thread may leave its block
            counter.record(tag, np.shape(a), np.shape(b), result.shape)
    return result


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
    if _COUNTERS:
        for counter in tuple(_COUNTERS):
            counter.record(tag, a.shape, b.shape, result.shape)
    return result
