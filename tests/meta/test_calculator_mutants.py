"""The calculator's checks have teeth: deliberately wrong counts make them fail.

Each test plants one plausible mistake in :mod:`neocell_ref.calculator` (or hands a
wrong closed form to a comparison) and shows that the check of tests/test_calculator.py
that guards it fails, with the message that check prints:

- ``assert_nnz_matches_enumeration`` (``nnz`` against the position-by-position count)
  and ``assert_counts_match_enumeration`` (layer counts against the per-channel
  enumeration) catch a forgotten shift corner, a clipped block counted in full or as a
  square, a run boundary that is ignored, a sum without the second difference and
  the remainder given to the wrong sub-group;
- ``assert_depthwise_matches_enumeration`` catches a depthwise count without the clip;
- ``assert_closed_form_agrees`` catches a ``k²`` closed form;
- ``assert_layer_counts_match_execution`` (counts against executed MACs) catches a
  forgotten shift corner, a forgotten partial tile, an off-by-one tile count and a
  parameter count that is right for square kernels only;
- ``assert_model_macs_match_hand`` (model counts against hand formulas) catches a wrong
  BatchNorm rule, a forgotten shift corner and a double-counted dense NeoCell.

The checks live in ``support/layer_counts.py`` and ``support/model_counts.py``.
"""

import pytest
from support.layer_counts import (
    CX,
    assert_closed_form_agrees,
    assert_counts_match_enumeration,
    assert_depthwise_matches_enumeration,
    assert_layer_counts_match_execution,
    assert_nnz_matches_enumeration,
)
from support.model_counts import assert_model_macs_match_hand

from neocell_ref import expansion as EX
from neocell_ref.expansion import nnz


def _nnz_without_corner(p, q, rows, cols, s):
    return nnz(p, q, rows, cols, s) - min(s, rows) * min(s, cols)


def _nnz_clipped_block_counted_full(p, q, rows, cols, s):
    full, last_r, last_c = EX._block_span(p, q, rows, cols, s)
    return min(s, rows) * min(s, cols) + full * p * q + (p * q if last_r and last_c else 0)


def _nnz_clipped_block_square(p, q, rows, cols, s):
    # the square formula ((L − s) mod k)² used for a rectangular matrix
    full, last_r, last_c = EX._block_span(p, q, rows, cols, s)
    return min(s, rows) * min(s, cols) + full * p * q + min(p, last_r) ** 2


@pytest.mark.parametrize("mutant", [_nnz_without_corner, _nnz_clipped_block_counted_full, _nnz_clipped_block_square])
def test_a_wrong_nnz_closed_form_is_caught(mutant, monkeypatch):
    with pytest.raises(AssertionError, match="position-by-position"):
        assert_nnz_matches_enumeration(mutant)
    monkeypatch.setattr(CX, "nnz", mutant)
    with pytest.raises(AssertionError, match="per-channel enumeration"):
        assert_counts_match_enumeration()


def test_a_missing_run_boundary_is_caught(monkeypatch):
    """Runs that ignore where ``j·shift`` passes ``H mod k`` sum nnz as one quadratic: wrong."""
    real = CX._axis_pieces

    def merged(channels, subgroups, shift, k, length):
        pieces = real(channels, subgroups, shift, k, length)
        inner = [p for p in pieces if p[2] >= 1 and p[3] <= subgroups - 2]
        if len(inner) < 2:
            return pieces
        joined = (inner[0][0], inner[-1][1], inner[0][2], inner[-1][3], inner[0][4])
        return [pieces[0], joined] + [p for p in pieces[1:] if p not in inner]

    monkeypatch.setattr(CX, "_axis_pieces", merged)
    with pytest.raises(AssertionError, match="per-channel enumeration"):
        assert_counts_match_enumeration()


def test_a_sum_without_the_second_difference_is_caught(monkeypatch):
    """Summing nnz over a run as if it were linear in the sub-group index is wrong."""

    def linear_sum(value, j1, j2):
        n = j2 - j1 + 1
        return n * value(j1) + n * (n - 1) // 2 * (value(j1 + 1) - value(j1)) if n > 1 else value(j1)

    monkeypatch.setattr(CX, "_sum_over_runs", linear_sum)
    with pytest.raises(AssertionError, match="nnz MACs"):
        assert_counts_match_enumeration()


def test_a_wrong_sub_group_multiplicity_is_caught(monkeypatch):
    """The remainder given to the first sub-group instead of the last (a plausible slip)."""

    def remainder_first(channels, subgroups):
        size = channels // subgroups
        return (0, channels) if size == 0 else (channels - (subgroups - 1) * size, size)

    monkeypatch.setattr(CX, "subgroup_sizes", remainder_first)
    with pytest.raises(AssertionError, match="per-channel enumeration"):
        assert_counts_match_enumeration()


def test_a_depthwise_closed_form_without_the_clip_is_caught():
    """``Σ (L − |d|)`` without ``max(0, ·)``: wrong once the kernel is longer than the input."""

    def unclipped(length, k):
        pl, pr = (k - 1) // 2, k - 1 - (k - 1) // 2
        return k * length - pl * (pl + 1) // 2 - pr * (pr + 1) // 2

    with pytest.raises(AssertionError, match="counted tap by tap"):
        assert_depthwise_matches_enumeration(unclipped)


def test_a_k_squared_closed_form_is_caught(monkeypatch):
    monkeypatch.setattr(CX, "closed_form_neocell_macs", lambda k, c, h, w, batch=1: k * k * c * h * w * batch)
    with pytest.raises(AssertionError, match="closed form"):
        assert_closed_form_agrees(7, 96, 56, 56, 1)


def test_a_forgotten_shift_corner_is_caught(monkeypatch):
    def nnz_without_corner(p, q, rows, cols, shift):
        return nnz(p, q, rows, cols, shift) - min(shift, rows) * min(shift, cols)

    monkeypatch.setattr(CX, "nnz", nnz_without_corner)
    with pytest.raises(AssertionError, match="neocell_macs"):
        assert_layer_counts_match_execution([{"kernel": 4, "channels": 3, "shift": 1}], (9, 9), 1)


def test_a_forgotten_partial_tile_is_caught(monkeypatch):
    # Counting only the full blocks: the clipped block at the border is forgotten.
    def full_blocks_only(p, q, rows, cols, shift):
        corner = min(shift, rows) * min(shift, cols)
        return corner + min((rows - shift) // p, (cols - shift) // q) * p * q

    monkeypatch.setattr(CX, "nnz", full_blocks_only)
    with pytest.raises(AssertionError, match="neocell_macs"):
        assert_layer_counts_match_execution([{"kernel": 4, "channels": 2}], (10, 10), 1)


def test_an_off_by_one_tile_count_is_caught(monkeypatch):
    original = CX.padding_view
    monkeypatch.setattr(
        CX, "padding_view", lambda length, k_in, k_out, shift: original(length, k_in, k_out, 0)
    )  # ignores the shift pad
    with pytest.raises(AssertionError, match="patchwise_padded_macs"):
        assert_layer_counts_match_execution([{"kernel": 4, "channels": 3, "shift": 1}], (8, 8), 1)


def test_a_square_kernel_parameter_count_is_caught(monkeypatch):
    """``c·(h_in² + w_in²)`` instead of ``c·(h_out·h_in + w_in·w_out)``: right for square
    kernels only, so only a resampling layer shows it (2 -> 1: 32 scalars, not 16)."""
    import dataclasses

    import support.layer_counts as LC

    real = LC.complexity

    def square_params(**kwargs):
        result = real(**kwargs)
        groups = CX.parse_specs(kwargs["specs"])
        return dataclasses.replace(result, neocell_params=sum(g.channels * (g.h_in**2 + g.w_in**2) for g in groups))

    monkeypatch.setattr(LC, "complexity", square_params)
    assert_layer_counts_match_execution([{"kernel": 3, "channels": 2, "shift": 1}], (6, 6), 1)  # square: no difference
    with pytest.raises(AssertionError, match="neocell_params 32 != 16 scalars"):
        assert_layer_counts_match_execution([{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 4}], (8, 8), 1)


def test_a_wrong_batchnorm_rule_is_caught(monkeypatch):
    # fvcore's training-mode rule (5 per element) instead of SPEC 8's inference rule (2).
    monkeypatch.setattr(CX, "_FVCORE_BATCHNORM_PER_ELEMENT", 5)
    with pytest.raises(AssertionError, match="fvcore"):
        assert_model_macs_match_hand("neonext_t", {}, 224)


def test_a_forgotten_shift_corner_is_caught_at_model_level(monkeypatch):
    real_nnz = CX.nnz
    monkeypatch.setattr(CX, "nnz", lambda p, q, r, c, s: real_nnz(p, q, r, c, s) - min(s, r) * min(s, c))
    with pytest.raises(AssertionError, match="fvcore_patchwise"):
        assert_model_macs_match_hand("neonext_t", {}, 224)


def test_a_double_counted_dense_neocell_is_caught(monkeypatch):
    real = CX.neocell_counts
    monkeypatch.setattr(
        CX,
        "neocell_counts",
        lambda specs, h, w, batch=1: {
            **real(specs, h, w, batch),
            "blockdiag": real(specs, h, w, batch)["blockdiag"] * 2,
        },
    )
    with pytest.raises(AssertionError, match="fvcore "):
        assert_model_macs_match_hand("neonext_t", {}, 224)
