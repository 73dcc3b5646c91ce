"""The patch-wise method's tiled layout and chunking, checked against obvious constructions.

``tiled_by_padding`` builds the tiled layout the obvious way (pad, split, transpose);
the ``assert_*`` checks are run by tests/test_neocell_fast.py on the real code and by
tests/meta/test_neocell_fast_mutants.py on a buffer that keeps stale padding and on a
thread split that loses one thread's share.
"""

import os
from contextlib import contextmanager

import numpy as np

import neocell_ref.neocell_fast as nc
from neocell_ref import neocell_backward, neocell_forward
from neocell_ref.spec import parse_specs
from neocell_ref.verify.tolerances import relative_error

BUDGETS = (1, 3000, 1 << 40)  # one channel per chunk, a few channels, one chunk per segment


@contextmanager
def chunk_budget(budget):
    """Run the patch-wise method with another chunk budget (bytes per work buffer)."""
    saved = nc._CHUNK_BYTES
    nc._CHUNK_BYTES = budget
    try:
        yield
    finally:
        nc._CHUNK_BYTES = saved


@contextmanager
def threads_at_any_size(count):
    """Run the patch-wise method with ``NEOCELL_THREADS=count`` and without the
    minimum work per thread, so that even tiny layers are split over ``count`` threads,
    whose backward then computes every kernel gradient by ``np.dot`` per matrix (no
    minimum size), where one thread uses the stacked ``np.matmul``."""
    saved = nc._MIN_VALUES_PER_THREAD, nc._CHUNKS_PER_THREAD, nc._DOT_MIN_MACS, os.environ.get("NEOCELL_THREADS")
    nc._MIN_VALUES_PER_THREAD, nc._CHUNKS_PER_THREAD, nc._DOT_MIN_MACS = 0, 1, 0
    os.environ["NEOCELL_THREADS"] = str(count)
    try:
        yield
    finally:
        nc._MIN_VALUES_PER_THREAD, nc._CHUNKS_PER_THREAD, nc._DOT_MIN_MACS = saved[:3]
        if saved[3] is None:
            os.environ.pop("NEOCELL_THREADS", None)
        else:
            os.environ["NEOCELL_THREADS"] = saved[3]


def patchwise_results(case, budget, threads):
    """Forward and backward of a :class:`~neocell_ref.verify.testing.NeoCellCase` by the
    patch-wise method with chunk budget ``budget`` and ``threads`` threads, by name."""
    specs, x, wa, wb, gy = case
    with chunk_budget(budget), threads_at_any_size(threads):
        y = neocell_forward(x, wa, wb, specs, method="patchwise")
        gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method="patchwise")
    return {
        "y": y,
        "grad_x": gx,
        **{f"grads_a[{i}]": a for i, a in enumerate(ga)},
        **{f"grads_b[{i}]": b for i, b in enumerate(gb)},
    }


def assert_threads_bit_identical(case, budget, counts=(2, 3)):
    """Every result with ``counts`` threads is bitwise the single-threaded one."""
    reference = patchwise_results(case, budget, 1)
    for count in counts:
        for name, value in patchwise_results(case, budget, count).items():
            expected = reference[name]
            assert value.dtype == expected.dtype, (
                f"{name} with {count} threads: dtype {value.dtype} != {expected.dtype}"
            )
            differ = ~(value == expected)
            assert not differ.any(), (
                f"{name} with {count} threads (chunk budget {budget} B) differs from one thread at "
                f"{differ.sum()} of {differ.size} positions, first {np.argwhere(differ)[:3].tolist()}, "
                f"relative error {relative_error(value, expected):.3g} ({case})"
            )


def tiled_by_padding(planes, k, tiles, width_padded, front_h, front_w):
    """The tiled layout built the obvious way: pad, split rows into tiles, transpose.

    ``tiled[c, j, n, i, q] = padded[n, c, i*k + j, q]`` with ``planes`` placed at
    ``(front_h, front_w)`` inside zeros of shape ``(N, m, tiles*k, width_padded)``.
    """
    n, m, length, width = planes.shape
    padded = np.zeros((n, m, tiles * k, width_padded), dtype=planes.dtype)
    padded[:, :, front_h : front_h + length, front_w : front_w + width] = planes
    return padded.reshape(n, m, tiles, k, width_padded).transpose(1, 3, 0, 2, 4)


def assert_reused_buffer_stays_correct():
    """The forward's pattern: frame once per segment, then every chunk copied into a prefix."""
    rng = np.random.default_rng(5)
    segments = [  # (chunk sizes largest first, k, tiles, width_padded, front_h, front_w, L, M)
        ((3, 3, 2), 4, 4, 9, 3, 3, 13, 6),
        ((4, 3), 4, 4, 9, 1, 1, 13, 6),  # other shift: other frame, more channels
        ((2,), 2, 7, 5, 0, 0, 13, 5),  # other kernel
        ((1, 1), 4, 4, 9, 3, 3, 13, 6),
    ]
    size = max(sizes[0] * k * 2 * t * p for sizes, k, t, p, *_ in segments)
    buffer = np.full(size, np.nan)
    for s_index, (sizes, k, tiles, width_padded, fh, fw, length, width) in enumerate(segments):
        planes = rng.standard_normal((2, sum(sizes), length, width))
        tiled, pieces = nc._padded_pieces(buffer, (sizes[0], k, 2, tiles, width_padded), planes, fh, fw)
        lo = 0
        for m in sizes:
            for t, p in pieces:
                t[:m] = p[lo : lo + m]
            expected = tiled_by_padding(planes[:, lo : lo + m], k, tiles, width_padded, fh, fw)
            assert np.array_equal(tiled[:m], expected), (
                f"segment {s_index} {segments[s_index]}, chunk {lo}:{lo + m}: reused buffer "
                f"differs at {np.argwhere(~(tiled[:m] == expected))[:3].tolist()}"
            )
            lo += m


def assert_chunkings_equal_blockdiag(specs, size):
    """Forward and backward of ``specs`` at ``size`` equal blockdiag's for every chunk budget."""
    rng = np.random.default_rng(11)
    groups = parse_specs(specs)
    channels = sum(g.channels for g in groups)
    x = rng.standard_normal((2, channels, *size))
    wa = [rng.standard_normal(g.shape_a) for g in groups]
    wb = [rng.standard_normal(g.shape_b) for g in groups]
    y_ref = neocell_forward(x, wa, wb, specs, method="blockdiag")
    gy = rng.standard_normal(y_ref.shape)
    gx_ref, ga_ref, gb_ref = neocell_backward(gy, x, wa, wb, specs, method="blockdiag")
    for budget in BUDGETS:
        with chunk_budget(budget):
            y = neocell_forward(x, wa, wb, specs, method="patchwise")
            gx, ga, gb = neocell_backward(gy, x, wa, wb, specs, method="patchwise")
        pairs = [("y", y, y_ref), ("grad_x", gx, gx_ref)]
        pairs += [(f"grads_a[{i}]", a, r) for i, (a, r) in enumerate(zip(ga, ga_ref))]
        pairs += [(f"grads_b[{i}]", b, r) for i, (b, r) in enumerate(zip(gb, gb_ref))]
        for name, got, ref in pairs:
            err = relative_error(got, ref)
            assert err <= 1e-12, f"{name} with chunk budget {budget} B: relative error {err:.3g} vs blockdiag"


#: A layer whose float32 kernel gradients are widened (kernel 7 when the chunk's term
#: count is even, the 5x3 group always, the 3x2 group's ``dA``) or not (kernel 4, the
#: 3x2 group's 2x2 ``dB``), shifted and not.
WIDENED_SPECS = [
    {"kernel": 7, "channels": 5, "shift": 1},
    {"kernel": 4, "channels": 3, "shift": 1},
    {"kernel_a": 5, "kernel_b": 3, "channels": 4, "shift_a": 2, "shift_b": 1},
    {"kernel_a": 3, "kernel_b": 2, "channels": 2},
]


def assert_float32_gradients_exact(specs, size, batch, budget):
    """float32 patch-wise backward on small integers equals the float64 ``"loop"`` one exactly.

    Inputs, kernels and ``grad_y`` are integers in [-2, 2], so every product and every
    partial sum is an integer far below 2**24: float32 computes them without rounding
    in any order, and so every float32 result must equal the float64 plain loop's bit
    for bit, however the fast path groups its sums (widened kernel gradients included).
    """
    rng = np.random.default_rng(23)
    groups = parse_specs(specs)
    channels = sum(g.channels for g in groups)
    x = rng.integers(-2, 3, (batch, channels, *size)).astype(np.float64)
    wa = [rng.integers(-2, 3, g.shape_a).astype(np.float64) for g in groups]
    wb = [rng.integers(-2, 3, g.shape_b).astype(np.float64) for g in groups]
    gy = rng.integers(-2, 3, neocell_forward(x, wa, wb, specs, method="loop").shape).astype(np.float64)
    expected = neocell_backward(gy, x, wa, wb, specs, method="loop")
    with chunk_budget(budget):
        got = neocell_backward(
            gy.astype(np.float32),
            x.astype(np.float32),
            [w.astype(np.float32) for w in wa],
            [w.astype(np.float32) for w in wb],
            specs,
        )
    names = ["grad_x"] + [f"grads_a[{i}]" for i in range(len(groups))] + [f"grads_b[{i}]" for i in range(len(groups))]
    for name, value, ref in zip(names, [got[0], *got[1], *got[2]], [expected[0], *expected[1], *expected[2]]):
        assert value.dtype == np.float32, f"{name}: dtype {value.dtype}, expected float32"
        differ = ~(value.astype(np.float64) == ref)
        assert not differ.any(), (
            f"{name} (float32, batch {batch}, chunk budget {budget} B) differs from the exact float64 loop at "
            f"{differ.sum()} of {differ.size} positions, first {np.argwhere(differ)[:3].tolist()}, "
            f"relative error {relative_error(value, ref):.3g}"
        )
