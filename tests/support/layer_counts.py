"""Independent counts of a NeoCell layer and the comparisons that use them.

Slow references written from the text of SPEC sections 2-4 and 8 (position-by-position
filled entries, the per-channel enumeration, tap-by-tap depthwise counts) and the
comparison helpers built on them. tests/test_calculator.py runs the comparisons on the
calculator; tests/meta/test_calculator_mutants.py runs them on planted mistakes and
shows they fail.
"""

import itertools
from functools import cache

import numpy as np

from neocell_ref import calculator as CX
from neocell_ref.calculator import (
    complexity,
    neocell_counts,
)
from neocell_ref.expansion import expand
from neocell_ref.instrument import count_macs
from neocell_ref.neocell import neocell_forward
from neocell_ref.spec import GroupSpec, check_input_size, parse_specs

# A generous bound for "milliseconds": a closed form takes well under 1 ms; the bound
# leaves room for a loaded 2-core machine.
FAST_SECONDS = 0.5


@cache
def naive_nnz(p, q, rows, cols, s):
    """Filled entries of SPEC 3, position by position: corner ``i, j < s``, else same block."""
    i = np.arange(rows)[:, None]
    j = np.arange(cols)[None, :]
    corner = (i < s) & (j < s)
    block = (i >= s) & (j >= s) & ((i - s) // p == (j - s) // q)
    return int((corner | block).sum())


def naive_tiles(length, k, s):
    """Tiles of the padding view: ``k − s`` zeros in front when shifted, then up to a multiple of k."""
    padded = length + (k - s if s else 0)
    return (padded + k - 1) // k


def naive_counts(specs, height, width, batch=1):
    """The per-channel enumeration the closed forms replaced: ``(nnz MACs, padded MACs)``."""
    groups = parse_specs(specs)
    h_out, w_out = check_input_size(groups, height, width)
    useful = padded = 0
    for g in groups:
        shifts_a, shifts_b = g.channel_shifts()
        for sa, sb in zip(shifts_a.tolist(), shifts_b.tolist()):
            useful += naive_nnz(g.h_out, g.h_in, h_out, height, sa) * width
            useful += h_out * naive_nnz(g.w_in, g.w_out, width, w_out, sb)
            padded += (
                naive_tiles(height, g.h_in, sa) * naive_tiles(width, g.w_in, sb) * g.h_out * g.w_in * (g.h_in + g.w_out)
            )
    return batch * useful, batch * padded


def naive_depthwise_taps(length, k):
    """In-bounds taps of a same-padded k-tap correlation, output position by position."""
    left = (k - 1) // 2
    return sum(1 for i in range(length) for a in range(k) if 0 <= i + a - left < length)


NNZ_GRID = [
    (p, q, rows, cols, s)
    for p, q in itertools.product((1, 2, 3, 4, 7), repeat=2)
    for rows, cols in ((1, 1), (1, 5), (2, 9), (6, 6), (7, 7), (9, 4), (13, 16))
    for s in range(min(p, q))
]


def assert_nnz_matches_enumeration(nnz_fn, grid=NNZ_GRID):
    for p, q, rows, cols, s in grid:
        got, expected = nnz_fn(p, q, rows, cols, s), naive_nnz(p, q, rows, cols, s)
        assert got == expected, (
            f"nnz({p}, {q}, {rows}, {cols}, shift={s}) = {got}, position-by-position count {expected} "
            f"(off by {got - expected})"
        )


# Axes of a group: (kernel, shift) for every shift of kernels 1..7, plus unshifted
# up/down-sampling kernels (k_in, k_out).
SHIFTED_AXES = [(k, s) for k in (1, 2, 3, 4, 5, 7) for s in range(k)]


PARTNER_AXES = [(1, 0), (3, 2), (4, 1), (7, 1), (7, 3)]


RESAMPLING = [((2, 1), (2, 1)), ((3, 2), (1, 3)), ((1, 3), (2, 3)), ((4, 1), (3, 3))]


SIZES = [(1, 1), (2, 9), (7, 7), (9, 16), (16, 6), (13, 13)]


CHANNELS = (1, 3, 13)


def layer_grid():
    """Single-group layers: every (kernel, shift) on A against a few on B, and the reverse."""
    for (ka, sa), (kb, sb) in itertools.chain(
        itertools.product(SHIFTED_AXES, PARTNER_AXES), itertools.product(PARTNER_AXES, SHIFTED_AXES)
    ):
        for c in CHANNELS:
            yield [GroupSpec(channels=c, h_in=ka, h_out=ka, w_in=kb, w_out=kb, shift_a=sa, shift_b=sb)]
    for (a_in, a_out), (b_in, b_out) in RESAMPLING:
        for c in CHANNELS:
            yield [GroupSpec(channels=c, h_in=a_in, h_out=a_out, w_in=b_in, w_out=b_out)]
    # several groups, as kernel codes make them
    yield parse_specs([{"kernel": 4, "channels": 5, "shift": 1}, {"kernel": 7, "channels": 9, "shift": 1}])
    yield parse_specs(
        [
            {"kernel": 3, "channels": 2, "shift": 2},
            {"kernel": 5, "channels": 11, "shift": 2},
            {"kernel": 7, "channels": 4, "shift": 3},
        ]
    )


def assert_counts_match_enumeration(counts_fn=neocell_counts):
    checked = 0
    for specs in layer_grid():
        for height, width in SIZES:
            try:
                check_input_size(specs, height, width)
            except ValueError:
                continue  # shift larger than the input, or an empty output: not a layer
            got = counts_fn(specs, height, width, 2)
            expected = naive_counts(specs, height, width, 2)
            where = f"specs={[g.to_dict() for g in specs]}, H x W={height}x{width}, N=2"
            assert got["nnz"] == expected[0], (
                f"nnz MACs {got['nnz']} != per-channel enumeration {expected[0]} "
                f"(off by {got['nnz'] - expected[0]}; {where})"
            )
            assert got["padded"] == expected[1], (
                f"padded MACs {got['padded']} != per-channel enumeration {expected[1]} "
                f"(off by {got['padded'] - expected[1]}; {where})"
            )
            checked += 1
    return checked


def assert_depthwise_matches_enumeration(taps_fn):
    for length in range(1, 14):
        for k in range(1, 16):  # kernels longer than the input included
            got, expected = taps_fn(length, k), naive_depthwise_taps(length, k)
            assert got == expected, f"in-bounds taps L={length}, k={k}: {got}, counted tap by tap {expected}"


def spec_filled_pattern(p, q, rows, cols, s):
    """Boolean ``rows x cols`` pattern of entries SPEC 3 fills, decided per position.

    A position ``(r, c)`` is filled when it lies in the top-left ``s x s`` corner, or
    when ``r, c >= s`` and both fall into the same block index ``(r-s)//p == (c-s)//q``.
    """
    r = np.arange(rows)[:, None]
    c = np.arange(cols)[None, :]
    corner = (r < s) & (c < s)
    block = (r >= s) & (c >= s) & ((r - s) // p == (c - s) // q)
    return corner | block


def spec_channel_shifts(channels, shift, k_out):
    """Per-channel shifts of SPEC 4: ``n = (k_out-1)//s + 1`` sub-groups of ``channels//n``."""
    if shift == 0:
        return [0] * channels
    n = (k_out - 1) // shift + 1
    size = channels // n
    return [((n - 1) if size == 0 else min(i // size, n - 1)) * shift for i in range(channels)]


def spec_out_len(length, k_in, k_out):
    return length if k_in == k_out else (length * k_out) // k_in


def independent_nnz_macs(groups, height, width, batch):
    """SPEC 8's ``Σ_c nnz(Â_c)·W + H_out·nnz(B̂_c)``, from the position-rule pattern."""
    h_out = spec_out_len(height, groups[0].h_in, groups[0].h_out)
    w_out = spec_out_len(width, groups[0].w_in, groups[0].w_out)
    total = 0
    for g in groups:
        for sa, sb in zip(
            spec_channel_shifts(g.channels, g.shift_a, g.h_out), spec_channel_shifts(g.channels, g.shift_b, g.w_out)
        ):
            nnz_a = int(spec_filled_pattern(g.h_out, g.h_in, h_out, height, sa).sum())
            nnz_b = int(spec_filled_pattern(g.w_in, g.w_out, width, w_out, sb).sum())
            total += nnz_a * width + h_out * nnz_b
    return batch * total


def random_weights(groups, rng):
    return ([rng.standard_normal(g.shape_a) for g in groups], [rng.standard_normal(g.shape_b) for g in groups])


def assert_layer_counts_match_execution(specs, size, batch, seed=0):
    """Every analytic NeoCell count of :func:`complexity` equals an independent measurement."""
    groups = parse_specs(specs)
    height, width = size
    result = complexity(specs=specs, h=height, w=width, batch=batch)
    rng = np.random.default_rng(seed)
    wa, wb = random_weights(groups, rng)
    x = rng.standard_normal((batch, result.channels, height, width))
    where = f"specs={[g.to_dict() for g in groups]}, N={batch}, H x W={height}x{width}"

    with count_macs() as bd:
        neocell_forward(x, wa, wb, specs, method="blockdiag")
    assert set(bd.by_tag()) == {"blockdiag"}, f"unexpected product tags {bd.by_tag()} ({where})"
    assert result.blockdiag_macs == bd.macs, (
        f"blockdiag_macs {result.blockdiag_macs} != executed block-diagonal MACs {bd.macs} "
        f"(diff {result.blockdiag_macs - bd.macs}; {where})"
    )
    # The first block-diagonal product is z = Â x: its size is the intermediate both methods hold.
    _, shape_a, shape_b, _ = bd.calls[0]
    z_size = int(np.prod(np.broadcast_shapes(shape_a[:-2], shape_b[:-2]))) * shape_a[-2] * shape_b[-1]
    assert result.neocell_extra_memory == z_size, (
        f"neocell_extra_memory {result.neocell_extra_memory} != size {z_size} of z = Â x ({where})"
    )

    with count_macs() as pw:
        neocell_forward(x, wa, wb, specs, method="patchwise")
    assert set(pw.by_tag()) == {"patchwise"}, f"unexpected product tags {pw.by_tag()} ({where})"
    assert result.patchwise_padded_macs == pw.macs, (
        f"patchwise_padded_macs {result.patchwise_padded_macs} != executed patch-wise MACs "
        f"{pw.macs} (diff {result.patchwise_padded_macs - pw.macs}; {where})"
    )

    expected_nnz = independent_nnz_macs(groups, height, width, batch)
    assert result.neocell_macs == expected_nnz, (
        f"neocell_macs {result.neocell_macs} != SPEC-3 position-rule count {expected_nnz} "
        f"(diff {result.neocell_macs - expected_nnz}; {where})"
    )
    ones_a = [np.ones(g.shape_a) for g in groups]
    ones_b = [np.ones(g.shape_b) for g in groups]
    a_full, b_full = expand(ones_a, ones_b, specs, size)
    counted = batch * sum(
        np.count_nonzero(a_full[c]) * width + result.height_out * np.count_nonzero(b_full[c])
        for c in range(result.channels)
    )
    assert result.neocell_macs == counted, (
        f"neocell_macs {result.neocell_macs} != count_nonzero(expand(ones)) count {counted} ({where})"
    )
    assert result.blockdiag_extra_memory == a_full.size + b_full.size, (
        f"blockdiag_extra_memory {result.blockdiag_extra_memory} != expanded matrices' size "
        f"{a_full.size + b_full.size} ({where})"
    )
    assert result.neocell_macs <= result.patchwise_padded_macs, (
        f"useful MACs {result.neocell_macs} exceed executed padded MACs {result.patchwise_padded_macs} ({where})"
    )
    # Parameters: the scalars of the kernels the forward above was given (each group's
    # (c, h_out, h_in) and (c, w_in, w_out) arrays), so non-square kernels count too.
    weights = sum(w.size for w in [*wa, *wb])
    assert result.neocell_params == weights, (
        f"neocell_params {result.neocell_params} != {weights} scalars in the kernels run ({where})"
    )
    ratio = result.neocell_params / result.depthwise_params
    assert result.neocell_params_over_depthwise_params == ratio, (
        f"neocell_params_over_depthwise_params {result.neocell_params_over_depthwise_params} != "
        f"{result.neocell_params} / {result.depthwise_params} = {ratio} ({where})"
    )
    return result


def assert_closed_form_agrees(k, c, h, w, batch):
    """The closed form, the general count and a hand formula written here all agree."""
    hand = 2 * k * c * h * w * batch  # nnz(Â) = (H/k)·k² = k·H, likewise for B̂
    closed = CX.closed_form_neocell_macs(k, c, h, w, batch)
    general = complexity(k=k, c=c, h=h, w=w, batch=batch).neocell_macs
    where = f"k={k}, C={c}, H x W={h}x{w}, N={batch}"
    assert closed == hand, f"closed form {closed} != hand 2kCHWN = {hand} ({where})"
    assert general == closed, f"general count {general} != closed form {closed} ({where})"
