"""Hand counts of a whole NeoNeXt: parameters and MACs from SPEC sections 2, 4, 7 and 8.

Written stage by stage from the text of the specification, never from
:mod:`neocell_ref.architecture` or :mod:`neocell_ref.expansion`. Used by
tests/test_calculator.py and by tests/meta/test_calculator_mutants.py.
"""

from neocell_ref.calculator import (
    CONVENTIONS,
    model_complexity,
)

# SPEC 7's table, written out here (blocks per stage, widths).
SIZES = {
    "neonext_t": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "neonext_s": ((3, 3, 27, 3), (96, 192, 384, 768)),
    "neonext_b": ((3, 3, 27, 3), (128, 256, 512, 1024)),
    "neonext_l": ((3, 3, 27, 3), (192, 384, 768, 1536)),
    "neonext_xl": ((3, 3, 27, 3), (256, 512, 1024, 2048)),
}


def hand_groups(code, d):
    """SPEC 2 kernel codes: ``(kernel, channels)`` per group; the last takes the remainder."""
    ks = [int(k) for k in code.split("+")]
    per = d // len(ks)
    return list(zip(ks, [per] * (len(ks) - 1) + [d - per * (len(ks) - 1)]))


def hand_codes(kernel_spec):
    return ("4+7", "4+7", "7", "7") if kernel_spec == "default" else (kernel_spec,) * 4


def hand_params(blocks, dims, num_classes=1000, kernel_spec="default", linear_bias=False, layer_scale=False):
    """Trainable scalars of SPEC 7's NeoNeXt, layer by layer."""
    total = 48 * dims[0] + 2 * dims[0]  # stem 1x1 conv (bias-free) + BN
    for i, (n, d) in enumerate(zip(blocks, dims)):
        if i:
            total += dims[i - 1] * d + d * (2 * 1 + 2 * 1) + 2 * d  # conv, NeoCell 2->1 (A 1x2, B 2x1), BN
        neocell = sum(c * 2 * k * k for k, c in hand_groups(hand_codes(kernel_spec)[i], d))
        block = neocell + 2 * d + 4 * d * d + 4 * d * d  # NeoCell, BN, fc_1, fc_2
        if linear_bias:
            block += 4 * d + d
        if layer_scale:
            block += d
        total += n * block
    return total + 2 * dims[3] + dims[3] * num_classes + num_classes  # head LN + Linear with bias


def hand_nnz_square(k, length, s):
    """Filled entries of a k x k kernel expanded to length x length with shift s."""
    return s * s + ((length - s) // k) * k * k + ((length - s) % k) ** 2


def hand_tiles(length, k, s):
    """Tiles of the padding view: ``k - s`` zeros in front when shifted, then up to a multiple of k."""
    front = k - s if s else 0
    return -(-(length + front) // k)


def hand_channel_shifts(channels, s, k):
    if s == 0:
        return [0] * channels
    n = (k - 1) // s + 1
    size = channels // n
    return [((n - 1) if size == 0 else min(i // size, n - 1)) * s for i in range(channels)]


def hand_macs(blocks, dims, res, num_classes=1000, kernel_spec="default", shifts=(1, 1, 1, 0)):
    """Per-image MACs in the four conventions for a square input ``res x res``."""
    h = res // 4
    base = 48 * dims[0] * h * h + 2 * dims[0] * h * h  # stem conv + BN (2 per element)
    dense = nnz = padded = 0
    for i, (n, d) in enumerate(zip(blocks, dims)):
        if i:
            ho = h // 2
            base += dims[i - 1] * d * h * h + 2 * d * ho * ho  # 1x1 conv at the input size, BN after
            dense += d * (ho * h * h + ho * h * ho)  # C·H_out·H·W + C·H_out·W·W_out
            nnz += d * (2 * ho * h + ho * 2 * ho)  # Â has H_out 1x2 blocks, B̂ W_out 2x1
            padded += d * (2 * ho * h + ho * 2 * ho)  # 2 | H: no padding
            h = ho
        per_block_nnz = per_block_padded = 0
        for k, c in hand_groups(hand_codes(kernel_spec)[i], d):
            for s in hand_channel_shifts(c, shifts[i], k):
                per_block_nnz += 2 * hand_nnz_square(k, h, s) * h  # A and B alike (H = W)
                # both axes padded to T x T tiles of k x k; A @ tile and tile @ B: k³ each
                per_block_padded += 2 * hand_tiles(h, k, s) ** 2 * k**3
        base += n * (2 * d * h * h + 8 * d * d * h * h)  # BN + fc_1 + fc_2
        dense += n * 2 * d * h**3
        nnz += n * per_block_nnz
        padded += n * per_block_padded
    base += 5 * dims[3] + dims[3] * num_classes  # head LayerNorm + Linear
    bn_and_ln = 2 * dims[0] * (res // 4) ** 2  # what "executed" leaves out
    hh = res // 4
    for i, (n, d) in enumerate(zip(blocks, dims)):
        if i:
            hh //= 2
            bn_and_ln += 2 * d * hh * hh
        bn_and_ln += n * 2 * d * hh * hh
    bn_and_ln += 5 * dims[3]
    return {
        "fvcore": base + dense,
        "fvcore_without_neocell": base,
        "fvcore_patchwise": base + nnz,
        "executed": base - bn_and_ln + padded,
    }


def assert_model_macs_match_hand(name, options, res):
    blocks, dims = SIZES[name]
    expected = hand_macs(
        blocks,
        dims,
        res,
        options.get("num_classes", 1000),
        options.get("kernel_spec", "default"),
        options.get("shifts", (1, 1, 1, 0)),
    )
    got = model_complexity(name, res, **options).macs
    for conv in CONVENTIONS:
        assert got[conv] == expected[conv], (
            f"{name} {options} at {res}: {conv} {got[conv]} != hand {expected[conv]} "
            f"(diff {got[conv] - expected[conv]})"
        )
