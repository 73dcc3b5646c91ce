"""The MAC counter (neocell_ref/instrument.py), the instrument of every count test.

Expected counts are written by hand from the shapes (``m·k·n`` per product, times the
broadcast batch); the thread test records from several threads at once and expects the
totals of the same products recorded one after another.
"""

import threading

import numpy as np
import pytest

from neocell_ref.instrument import count_macs, matmul, outer, stacked_dot


@pytest.mark.parametrize(
    "shape_a, shape_b, macs",
    [
        ((3, 4), (4, 5), 3 * 4 * 5),
        ((2, 3, 4), (4, 5), 2 * 3 * 4 * 5),  # broadcast batch
        ((7, 1, 3, 4), (6, 4, 5), 7 * 6 * 3 * 4 * 5),  # both broadcast
        ((4,), (4, 5), 4 * 5),  # vector @ matrix
        ((3, 4), (4,), 3 * 4),  # matrix @ vector
        ((4,), (4,), 4),  # dot product
        ((3, 0), (0, 5), 0),  # empty sum
    ],
)
def test_a_product_costs_its_output_size_times_the_summed_length(shape_a, shape_b, macs):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(shape_a), rng.standard_normal(shape_b)
    with count_macs() as counter:
        y = matmul(a, b, tag="t")
    assert np.array_equal(y, np.matmul(a, b)), "matmul must return np.matmul's product"
    assert counter.macs == macs, f"{shape_a} @ {shape_b}: counted {counter.macs} MACs, expected {macs}"
    assert counter.calls == [("t", shape_a, shape_b, macs)], f"recorded {counter.calls}"
    assert counter.by_tag() == {"t": macs}, f"by_tag {counter.by_tag()}, expected {{'t': {macs}}}"


def test_out_argument_nesting_and_nothing_recorded_outside():
    a, b = np.ones((2, 3)), np.ones((3, 4))
    out = np.empty((2, 4))
    matmul(a, b)  # outside any block: not recorded anywhere
    with count_macs() as outer:
        matmul(a, b, tag="x", out=out)
        with count_macs() as inner:
            result = matmul(a, b, tag="y")
        matmul(a, b, tag="x")
    assert np.array_equal(out, np.full((2, 4), 3.0)), "out= must receive the product"
    assert np.array_equal(result, out), f"returned product {result.tolist()} differs from out= {out.tolist()}"
    assert outer.by_tag() == {"x": 48, "y": 24}, f"outer block saw {outer.by_tag()}"
    assert inner.by_tag() == {"y": 24}, f"inner block saw {inner.by_tag()}"
    with count_macs() as after:
        pass
    assert after.macs == 0 and after.calls == [], f"an empty block counted {after.macs} MACs, calls {after.calls}"


def test_products_from_several_threads_are_all_counted():
    """Eight threads each record 200 products into the counter the caller opened, at the
    same time: every product is counted once, under its own tag (the fast paths' worker
    threads record into the block of the thread that called the model). Under CPython's
    GIL an unlocked counter rarely loses an update, so this pins the totals, not the lock."""
    a, b = np.ones((2, 3)), np.ones((3, 5))
    per_call, threads, calls = 2 * 3 * 5, 8, 200
    start = threading.Barrier(threads)

    def work(tag):
        start.wait()
        for _ in range(calls):
            matmul(a, b, tag=tag)

    with count_macs() as counter:
        pool = [threading.Thread(target=work, args=(f"t{i}",)) for i in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join()
    assert len(counter.calls) == threads * calls, f"{len(counter.calls)} calls recorded, {threads * calls} made"
    assert counter.macs == threads * calls * per_call, f"total {counter.macs}, expected {threads * calls * per_call}"
    assert counter.by_tag() == {f"t{i}": calls * per_call for i in range(threads)}, (
        f"by_tag {counter.by_tag()}, expected {calls * per_call} for each of t0..t{threads - 1}"
    )


@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed views"])
def test_stacked_dot_is_the_stacked_product_and_counts_like_matmul(transposed):
    """``stacked_dot`` (one ``np.dot`` per matrix, for the kernel gradients) computes the
    stacked product (checked against float64 ``np.einsum``, another formulation), into
    ``out`` when given, and records one call of ``s·m·k·n`` MACs as ``matmul`` would."""
    rng = np.random.default_rng(3)
    s, m, k, n = 3, 4, 500, 7
    a = rng.standard_normal((s, k, m)).transpose(0, 2, 1) if transposed else rng.standard_normal((s, m, k))
    b = rng.standard_normal((s, n, k)).transpose(0, 2, 1) if transposed else rng.standard_normal((s, k, n))
    a, b = a.astype(np.float32), b.astype(np.float32)
    exact = np.einsum("smk,skn->smn", a.astype(np.float64), b.astype(np.float64))
    out = np.empty((s, m, n), np.float32)
    with count_macs() as counter:
        got = stacked_dot(a, b, "t", out=out)
        fresh = stacked_dot(a, b, "t")
    assert got is out and fresh.dtype == np.float32 and fresh.shape == (s, m, n), (
        f"returned out= itself: {got is out}; fresh result {fresh.dtype} {fresh.shape}, expected float32 {(s, m, n)}"
    )
    for name, value in (("out=", got), ("new array", fresh)):
        error = np.max(np.abs(value - exact)) / np.max(np.abs(exact))
        assert error < 1e-5, f"stacked_dot ({name}) differs from the exact product by {error:.2e} (relative)"
    assert counter.calls == [("t", a.shape, b.shape, s * m * k * n)] * 2, counter.calls
    for bad_a, bad_b in ((a, b[:2]), (a[0], b[0]), (a, b[:, :-1])):
        with pytest.raises(ValueError, match="do not chain"):
            stacked_dot(bad_a, bad_b)


@pytest.mark.parametrize(
    "shape_a, shape_b",
    [
        ((3, 1), (1, 5)),  # m < n: by rows
        ((6, 1), (1, 2)),  # m > n: by columns
        ((4, 7, 1), (4, 1, 2)),  # stacked
        ((2, 1, 3, 1), (5, 1, 4)),  # stacks broadcast
        ((1, 1), (1, 1)),
    ],
)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outer_is_the_product_with_inner_dimension_one_and_counts_like_matmul(shape_a, shape_b, dtype):
    """``outer`` (a product with inner dimension 1 as element-wise products, for the
    kernel sides of 1) equals ``np.matmul``'s result value for value (one rounded
    product per value: no sum), into ``out`` when given, and records what ``matmul``
    records for the same operands."""
    rng = np.random.default_rng(4)
    a, b = rng.standard_normal(shape_a).astype(dtype), rng.standard_normal(shape_b).astype(dtype)
    with count_macs() as expected_count:
        expected = matmul(a, b, "t")
    out = np.full(expected.shape, np.nan, dtype)
    with count_macs() as counter:
        got = outer(a, b, "t", out=out)
        fresh = outer(a, b, "t")
    assert got is out and fresh.dtype == expected.dtype and fresh.shape == expected.shape, (
        f"returned out= itself: {got is out}; fresh result {fresh.dtype} {fresh.shape}, "
        f"expected {expected.dtype} {expected.shape}"
    )
    for name, value in (("out=", got), ("new array", fresh)):
        differ = ~(value == expected)
        assert not differ.any(), (
            f"outer ({name}) {shape_a} @ {shape_b} differs from np.matmul at {np.argwhere(differ)[:3].tolist()}"
        )
    assert counter.calls == expected_count.calls * 2, (counter.calls, expected_count.calls)


def test_outer_refuses_operands_whose_inner_dimension_is_not_one():
    for shape_a, shape_b in (((3, 2), (2, 4)), ((3,), (1, 4)), ((3, 1), (2, 4))):
        with pytest.raises(ValueError, match="are not"):
            outer(np.ones(shape_a), np.ones(shape_b))
    with pytest.raises(ValueError, match="do not broadcast"):
        outer(np.ones((2, 3, 1)), np.ones((3, 1, 4)))
    for bad in (np.empty((3, 5)), [[0.0] * 4] * 3):
        with pytest.raises(ValueError, match=r"out must be an ndarray of shape \(3, 4\)"):
            outer(np.ones((3, 1)), np.ones((1, 4)), out=bad)
    assert outer([[2.0], [3.0]], [[1.0, 4.0]]).tolist() == [[2.0, 8.0], [3.0, 12.0]], "lists are taken as arrays"
