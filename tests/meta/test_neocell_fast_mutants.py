"""The tiled-layout, chunking and thread tests have teeth: a buffer that keeps stale
padding fails them, and so do a thread split that loses one thread's share and a chunk
tiled from stale staged planes.

The mutant gives each work buffer of :mod:`neocell_ref.neocell_fast` its zero padding
frame on first use only (another clears a view only when it is padded in front). Then

- the buffer-reuse check of tests/test_neocell_fast.py
  (``support.neocell_fast.assert_reused_buffer_stays_correct``) sees garbage leak
  through, and
- the chunking check (``support.neocell_fast.assert_chunkings_equal_blockdiag``) sees
  the patch-wise results differ from blockdiag's.

The second mutant drops the last thread's share of the chunks; the thread check
(``support.neocell_fast.assert_threads_bit_identical``) sees the results with threads
differ from one thread's. Its outputs are allocated filled with NaN, so that the lost
chunks cannot pass by reusing memory that held the right values.

The third skips the staging copy (``_copy_in``) for every chunk but a segment's first,
so later chunks are tiled from stale planes; the chunking check sees it.

The last mutants keep only one diagonal block of a widened kernel gradient (the even
rows of ``dB``, the first halves of ``dA``); the exactness check on integers
(``support.neocell_fast.assert_float32_gradients_exact``) sees the kernel gradients
differ from the float64 loop's.
"""

import types

import numpy as np
import pytest
from support.neocell_fast import (
    WIDENED_SPECS,
    assert_chunkings_equal_blockdiag,
    assert_float32_gradients_exact,
    assert_reused_buffer_stays_correct,
    assert_threads_bit_identical,
)

import neocell_ref.neocell_fast as nc
from neocell_ref.spec import parse_specs


def _zero_frame_only_once(monkeypatch):
    """Mutant: buffers get their zero padding frame on first use only, never again."""
    calls = []
    real = nc._zero_frame

    def first_time_only(*args):
        if not calls:
            real(*args)
        calls.append(args)

    monkeypatch.setattr(nc, "_zero_frame", first_time_only)


def test_the_reuse_test_catches_a_buffer_that_never_rewrites_its_frame(monkeypatch):
    """With the frame written only once, garbage leaks through a reused buffer."""
    _zero_frame_only_once(monkeypatch)
    with pytest.raises(AssertionError, match="reused buffer differs"):
        assert_reused_buffer_stays_correct()


def test_the_reuse_test_catches_a_frame_that_forgets_the_trailing_padding(monkeypatch):
    """Mutant of the clearing rule: the view is cleared only when there is padding in
    front, so a layout padded at the end alone (a side that the kernel does not divide,
    no shift) keeps what an earlier segment left there."""

    def front_only(tiled, front_h, length, front_w, width):
        if front_h or front_w:
            tiled.fill(0)

    monkeypatch.setattr(nc, "_zero_frame", front_only)
    with pytest.raises(AssertionError, match="reused buffer differs"):
        assert_reused_buffer_stays_correct()


def test_the_chunking_tests_catch_stale_padding_in_a_reused_buffer(monkeypatch):
    """An operator whose buffers keep the first chunk's frame fails the chunking check."""
    _zero_frame_only_once(monkeypatch)
    specs = [{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 10, "shift": 1}]
    with pytest.raises(AssertionError, match="relative error"):
        assert_chunkings_equal_blockdiag(specs, (15, 15))


def _stage_first_chunk_only(monkeypatch):
    """Mutant: a segment's later chunks are tiled from the staging buffer without being
    staged, so they reuse the planes of the segment's first chunk."""
    real = nc._copy_in

    def stale(staged, pieces, planes, chunk):
        c0, c1, n0, n1 = chunk
        if c0 == 0 and n0 == 0:
            return real(staged, pieces, planes, chunk)
        for t, p in pieces:
            t[: c1 - c0] = p[: c1 - c0]

    monkeypatch.setattr(nc, "_copy_in", stale)


def test_the_chunking_tests_catch_a_chunk_tiled_from_a_stale_stage(monkeypatch):
    """An operator that skips the staging copy after a segment's first chunk fails the
    chunking check (forward and backward both stage through ``_copy_in``)."""
    _stage_first_chunk_only(monkeypatch)
    specs = [{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 10, "shift": 1}]
    with pytest.raises(AssertionError, match="relative error"):
        assert_chunkings_equal_blockdiag(specs, (15, 15))


def _lose_last_share(monkeypatch):
    """Mutant: the thread split runs every share but the last; outputs start as NaN."""
    real = nc.parallel.run_each

    def all_but_last(shares, task):
        return real(shares[:-1] if len(shares) > 1 else shares, task)

    poisoned = types.SimpleNamespace(**{name: getattr(np, name) for name in dir(np) if not name.startswith("__")})
    poisoned.empty = lambda shape, dtype=float: np.full(shape, np.nan, dtype=dtype)
    poisoned.empty_like = lambda a: np.full_like(a, np.nan)
    monkeypatch.setattr(nc.parallel, "run_each", all_but_last)
    monkeypatch.setattr(nc, "np", poisoned)


@pytest.mark.parametrize("budget", [1, 1 << 40], ids=["samples split", "one chunk per segment"])
def test_the_thread_test_catches_a_split_that_loses_a_share(monkeypatch, budget):
    """With one thread's share of the chunks never run, threads differ from one thread."""
    _lose_last_share(monkeypatch)
    specs = [{"kernel": 4, "channels": 9, "shift": 1}, {"kernel": 7, "channels": 10, "shift": 1}]
    rng = np.random.default_rng(3)
    groups = parse_specs(specs)
    x, gy = rng.standard_normal((2, 2, 19, 15, 15))
    wa = [rng.standard_normal(g.shape_a) for g in groups]
    wb = [rng.standard_normal(g.shape_b) for g in groups]
    with pytest.raises(AssertionError, match="with 2 threads .* differs from one thread"):
        assert_threads_bit_identical((specs, x, wa, wb, gy), budget, counts=(2,))


def _into(out, result):
    """``result`` written into ``out`` when given (the real helpers' contract)."""
    if out is None:
        return result.copy()
    out[...] = result
    return out


def _row_gradient_even_rows_only(left, right, threaded, out=None):
    """Mutant of ``_row_gradient``: a widened ``dB`` keeps the even rows' block only."""
    m, rows, a = left.shape
    b = right.shape[2]
    if not nc._widened(left.dtype, a, b, rows):
        return np.matmul(left.transpose(0, 2, 1), right, out=out)
    wide = np.matmul(left.reshape(m, rows // 2, 2 * a).transpose(0, 2, 1), right.reshape(m, rows // 2, 2 * b))
    return _into(out, wide[:, :a, :b])


def _column_gradient_first_halves_only(left, right, threaded, out=None):
    """Mutant of ``_column_gradient``: a widened ``dA`` keeps the first halves' block only."""
    m, a, length = left.shape
    b = right.shape[1]
    if not nc._widened(left.dtype, a, b, length):
        return np.matmul(left, right.transpose(0, 2, 1), out=out)
    halves = right.reshape(m, 2 * b, length // 2).transpose(0, 2, 1)
    wide = np.matmul(left.reshape(m, 2 * a, length // 2), halves)
    return _into(out, wide[:, 0::2, 0::2])


@pytest.mark.parametrize(
    "name, mutant",
    [("_row_gradient", _row_gradient_even_rows_only), ("_column_gradient", _column_gradient_first_halves_only)],
)
def test_the_exactness_test_catches_a_widened_gradient_that_drops_a_block(monkeypatch, name, mutant):
    """With one block of a widened kernel gradient lost, float32 differs from the exact loop."""
    monkeypatch.setattr(nc, name, mutant)
    with pytest.raises(AssertionError, match="differs from the exact float64 loop"):
        assert_float32_gradients_exact(WIDENED_SPECS, (15, 15), 2, 1 << 40)
