"""A small persistent pool of worker threads for the fast paths' element-wise work.

NumPy's ufuncs and BLAS release the GIL, so Python threads that each run their own
share of a fused block (:mod:`neocell_ref.models_fast`) use several cores at once. The
share of each thread is fixed by the caller (contiguous runs of pixel blocks, or of
matrix rows), never by which thread comes first, so results do not depend on scheduling.

How many threads (:func:`threads`):

* ``NEOCELL_THREADS`` in the environment, if set: a positive integer (``1`` switches
  the pool off: everything runs in the calling thread);
* otherwise the number of CPUs this process may use, capped at :data:`MAX_THREADS`, and
  at ``OPENBLAS_NUM_THREADS`` or ``OMP_NUM_THREADS`` when one of those is set to a
  positive integer: a run asked to be single-threaded stays single-threaded.

The environment is read on every call (cheap), so a test or a benchmark may change it
between calls; the pool grows lazily and is never shrunk.

BLAS inside the threads (:func:`single_threaded_blas`): when each of two threads calls a
two-threaded OpenBLAS, the calls queue behind one lock and OpenBLAS's idle threads spin
against the element-wise work, which measured slower than no threads at all. So while
the threads run, NumPy's OpenBLAS is set to one thread through its own
``openblas_set_num_threads_local`` (or ``openblas_set_num_threads`` in older versions;
found in this process's loaded libraries, as threadpoolctl does) and restored
afterwards; with another BLAS, or off Linux, nothing is changed. The count is
process-wide: BLAS calls of other threads during that time run single-threaded too.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

__all__ = [
    "threads",
    "run",
    "split",
    "in_task",
    "single_threaded_blas",
    "pool_owns_cores",
    "run_each",
    "MAX_THREADS",
    "MAX_EXPLICIT_THREADS",
]

#: Upper bound of the default thread count (``NEOCELL_THREADS`` may ask for more).
MAX_THREADS = 8
#: Upper bound of ``NEOCELL_THREADS``: the pool never shrinks, so a typo such as
#: ``NEOCELL_THREADS=100000`` must not start a hundred thousand threads.
MAX_EXPLICIT_THREADS = 256

_POOL = None
_POOL_SIZE = 0
_POOL_LOCK = threading.Lock()
_TASK = threading.local()  # ``depth``: how many tasks of :func:`run` this thread is inside


def _positive_env(name):
    """The positive integer in environment variable ``name``, or None if unset or empty."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _cpus():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def threads():
    """Number of threads the fast paths split their work over (1: no splitting)."""
    explicit = _positive_env("NEOCELL_THREADS")
    if explicit is not None:
        if explicit > MAX_EXPLICIT_THREADS:
            raise ValueError(f"NEOCELL_THREADS must be at most {MAX_EXPLICIT_THREADS}, got {explicit}")
        return explicit
    count = min(_cpus(), MAX_THREADS)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            value = _positive_env(name)
        except ValueError:
            value = None  # those variables belong to other libraries: not ours to refuse
        if value is not None:
            count = min(count, value)
    return max(1, count)


def _after_fork_in_child():
    """A forked child has none of the parent's pool threads: forget the pool (the next
    call starts a new one) and any BLAS hold the parent was inside."""
    global _POOL, _POOL_SIZE, _POOL_LOCK, _BLAS_LOCK
    _POOL, _POOL_SIZE = None, 0
    _POOL_LOCK, _BLAS_LOCK = threading.Lock(), threading.Lock()
    state = _BLAS_STATE
    if state["depth"] and state["api"] is not None and state["saved"] > 1:
        state["api"][0](state["saved"])  # forked inside a hold: the child's BLAS gets its count back
    state["depth"] = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _pool(workers):
    """The shared executor, with at least ``workers`` threads."""
    global _POOL, _POOL_SIZE
    with _POOL_LOCK:
        if _POOL is None or _POOL_SIZE < workers:
            old = _POOL
            _POOL = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="neocell")
            _POOL_SIZE = workers
            if old is not None:
                old.shutdown(wait=False)
        return _POOL


def in_task():
    """True inside a task of :func:`run` (in the pool or in the calling thread): code
    there must not call :func:`run` again (a pool thread waiting on the pool could wait
    for itself)."""
    return getattr(_TASK, "depth", 0) > 0


def _marked(task):
    """``task`` run with this thread marked as inside a task (:func:`in_task`)."""
    _TASK.depth = getattr(_TASK, "depth", 0) + 1
    try:
        return task()
    finally:
        _TASK.depth -= 1


def run(tasks):
    """Call every zero-argument callable of ``tasks`` and return their results in order.

    The first task runs in the calling thread, the others in the pool, concurrently.
    Every task is waited for, even when one raises; then the first exception (in task
    order) is raised again.
    """
    tasks = list(tasks)
    if len(tasks) <= 1:
        return [task() for task in tasks]
    futures = [_pool(len(tasks) - 1).submit(_marked, task) for task in tasks[1:]]
    results, errors = [], []
    try:
        results.append(_marked(tasks[0]))
    except BaseException as exc:  # noqa: BLE001 - re-raised below after the others finish
        errors.append(exc)
        results.append(None)
    for future in futures:
        try:
            results.append(future.result())
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
            results.append(None)
    if errors:
        raise errors[0]
    return results


def split(count, parts):
    """``parts`` contiguous ``(start, stop)`` ranges covering ``range(count)``, the
    first ones one longer when ``count`` does not divide; empty ranges are left out."""
    parts = max(1, min(parts, count))
    base, extra = divmod(count, parts)
    ranges, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        ranges.append((start, stop))
        start = stop
    return ranges


_BLAS_LOCK = threading.Lock()
_BLAS_STATE = {"api": None, "searched": False, "depth": 0, "saved": None}
#: ``(set, get)`` pairs of thread-count functions, the cheap one first:
#: ``openblas_set_num_threads_local`` (OpenBLAS 0.3.27+) only changes the count, while
#: ``openblas_set_num_threads`` stops and restarts OpenBLAS's threads (measured: about
#: 25 ms per round trip against nothing measurable, per fused call of the fast path).
_BLAS_SETTERS = (
    ("openblas_set_num_threads_local", "scipy_openblas_get_num_threads64_"),
    ("openblas_set_num_threads_local", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads_local", "openblas_get_num_threads"),
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)


def _numpy_openblas():
    """``(set_num_threads, get_num_threads)`` of the OpenBLAS NumPy loaded, or None."""
    import numpy

    root = os.path.dirname(os.path.dirname(os.path.abspath(numpy.__file__)))
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", maps.read())))
    except OSError:  # pragma: no cover - not Linux
        return None
    for path in paths:
        if not path.startswith(root) or "numpy" not in path:
            continue  # SciPy may load its own OpenBLAS: not the one np.matmul calls
        try:
            lib = ctypes.CDLL(path)
        except OSError:  # pragma: no cover
            continue
        for setter, getter in _BLAS_SETTERS:
            if hasattr(lib, setter) and hasattr(lib, getter):
                set_fn, get_fn = getattr(lib, setter), getattr(lib, getter)
                set_fn.argtypes, get_fn.restype = [ctypes.c_int], ctypes.c_int
                return set_fn, get_fn
    return None


@contextmanager
def single_threaded_blas():
    """NumPy's OpenBLAS at one thread inside the block (nested and concurrent uses
    counted), its previous thread count restored after the last one leaves; a no-op
    when that OpenBLAS is not found."""
    state = _BLAS_STATE
    with _BLAS_LOCK:
        if not state["searched"]:
            state["api"], state["searched"] = _numpy_openblas(), True
        api = state["api"]
        if api is not None:
            if state["depth"] == 0:
                state["saved"] = api[1]()
                if state["saved"] > 1:
                    api[0](1)
            state["depth"] += 1
    try:
        yield
    finally:
        if api is not None:
            with _BLAS_LOCK:
                state["depth"] -= 1
                if state["depth"] == 0 and state["saved"] > 1:
                    api[0](state["saved"])


@contextmanager
def pool_owns_cores():
    """For a whole fast-path pass: NumPy's OpenBLAS at one thread when the pool has
    more than one thread (:func:`threads`), so that the pool's tasks are the only
    threads competing for the cores; a no-op otherwise.

    Yields
    ------
    None
        A context manager: the body runs with that BLAS setting, restored on exit
        (also on an exception).

    Why the whole pass and not only around each :func:`run`: after a multi-threaded
    call, OpenBLAS's idle workers keep spinning (up to ``2**28`` cycles, about 0.1 s,
    unless ``OPENBLAS_THREAD_TIMEOUT`` was set before NumPy loaded) and take a core
    from the pool's next tasks. Measured on 2 cores, NeoNeXt-T inference at default
    threads: batch 1 220 -> 124 ms, batch 8 1010 -> 736 ms. The products outside the
    pool then run on one core, which costs less than the spinning did.
    """
    if threads() > 1:
        with single_threaded_blas():
            yield
    else:
        yield


def run_each(shares, task):
    """``task(share)`` for every item of ``shares`` (the fast paths' thread shares: row,
    sample or channel ranges, NeoCell chunk runs): in the calling thread when there is
    one, else over the pool (:func:`run`) with NumPy's BLAS at one thread
    (:func:`single_threaded_blas`)."""
    if len(shares) == 1:
        task(shares[0])
        return
    with single_threaded_blas():
        run([lambda share=share: task(share) for share in shares])
