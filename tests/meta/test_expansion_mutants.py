"""The expansion tests have teeth: a subtly wrong corner rule is caught.

``test_mutant_corner_rule_is_caught``: with ``block_layout`` taking the wrapped corner
from ``K[:s, :s]`` instead of ``K[p-s:, q-s:]``, both references of
tests/test_expansion.py (the hand-computed ``3x3_shift2_on_4x4`` example and the
per-entry construction ``expand_by_index``, in ``support/expansion.py``) differ from
the result, while unshifted expansions are untouched.
"""

import numpy as np
from support.expansion import HAND_EXAMPLES, expand_by_index

from neocell_ref import expansion as expand_module
from neocell_ref.expansion import expand_kernel


def _layout_with_corner_from_top_left(p, q, rows, cols, shift):
    """The rule with one mistake: the corner receives K[:s, :s] instead of K[p-s:, q-s:]."""
    m_r, m_c, k_r, k_c = _ORIGINAL_LAYOUT(p, q, rows, cols, shift)
    in_corner = (m_r < shift) & (m_c < shift)
    k_r = np.where(in_corner, k_r - (p - shift), k_r)
    k_c = np.where(in_corner, k_c - (q - shift), k_c)
    return m_r, m_c, k_r, k_c


_ORIGINAL_LAYOUT = expand_module.block_layout


def test_mutant_corner_rule_is_caught(monkeypatch):
    monkeypatch.setattr(expand_module, "block_layout", _layout_with_corner_from_top_left)
    kernel, rows, cols, shift, expected = HAND_EXAMPLES["3x3_shift2_on_4x4"]
    mutant = expand_kernel(kernel, rows, cols, shift)
    assert not np.array_equal(mutant, np.array(expected, dtype=float)), "the hand-written example missed the mutant"
    assert not np.array_equal(mutant, expand_by_index(kernel, rows, cols, shift)), (
        "the independent construction missed the mutant"
    )
    # Unshifted expansions are untouched by this mutant, so only shifted cases can catch it.
    unshifted, by_index = expand_kernel(kernel, 7, 7, 0), expand_by_index(kernel, 7, 7, 0)
    assert np.array_equal(unshifted, by_index), (
        f"the corner mutant changed the unshifted 7x7 expansion: shapes {unshifted.shape} vs {by_index.shape}"
        + (
            f", differs at {np.argwhere(unshifted != by_index)[:3].tolist()},"
            f" max |diff| {np.max(np.abs(unshifted - by_index)):.3g}"
            if unshifted.shape == by_index.shape
            else ""
        )
    )
