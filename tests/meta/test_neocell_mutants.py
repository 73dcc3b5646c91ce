"""The official conformance comparison has teeth: subtly wrong NeoCells fail it.

The comparison of tests/test_neocell.py (``support.official_neocell.conformance_errors``
against the authors' outputs in ``tests/data/official_neocell``) must fail when

- the expansion rule takes the wrapped corner from ``K[:s, :s]`` instead of
  ``K[p-s:, q-s:]`` (every output of a shifted case, no unshifted one);
- the expansion's adjoint assigns instead of accumulating (only the kernel gradients);
- the padding geometry of the patch-wise view ignores the shift ("loop", "patchwise"),

and pass again, on the same case, with the real code (the baseline).
"""

import numpy as np
from support.official_neocell import TOLERANCE, case_by_name, conformance_errors

from neocell_ref import expansion as expand_module
from neocell_ref import neocell as neocell_module
from neocell_ref import neocell_fast as fast_module

METHODS = ("loop", "patchwise", "blockdiag")
SHIFTED_OFFICIAL = "mixed_4p7_shift1_c8_28x28"


def _failing(errors):
    return {k: v for k, v in errors.items() if not v <= TOLERANCE}


def test_conformance_passes_unpatched():
    """Baseline of the mutants below: the same comparison passes on the real code."""
    for method in METHODS:
        failing = _failing(conformance_errors(case_by_name(SHIFTED_OFFICIAL), method))
        assert not failing, (
            f"{SHIFTED_OFFICIAL}, method {method!r}: outputs above the tolerance {TOLERANCE:.0e}"
            f" on the real code: {failing}"
        )


def test_conformance_catches_corner_from_top_left(monkeypatch):
    """block_layout with the corner taken from K[:s, :s] instead of K[p-s:, q-s:]."""
    original = expand_module.block_layout

    def wrong_layout(p, q, rows, cols, shift):
        m_r, m_c, k_r, k_c = original(p, q, rows, cols, shift)
        corner = (m_r < shift) & (m_c < shift)
        return m_r, m_c, np.where(corner, k_r - (p - shift), k_r), np.where(corner, k_c - (q - shift), k_c)

    monkeypatch.setattr(expand_module, "block_layout", wrong_layout)
    failing = _failing(conformance_errors(case_by_name(SHIFTED_OFFICIAL), "blockdiag"))
    assert {"y", "grad_x", "grad_weight_a_0", "grad_weight_b_0"} <= set(failing), (
        f"the conformance comparison missed a wrong corner rule; failing outputs: {failing}"
    )
    # An unshifted case is untouched by this mutant, as it should be.
    unshifted_failing = _failing(conformance_errors(case_by_name("k7_c4_14x14"), "blockdiag"))
    assert not unshifted_failing, (
        f"the corner mutant changed the unshifted case k7_c4_14x14 (tolerance {TOLERANCE:.0e}): {unshifted_failing}"
    )


def test_conformance_catches_an_adjoint_that_drops_repeated_copies(monkeypatch):
    """expand_kernel_adjoint that assigns instead of accumulating (only the last copy counts)."""

    def last_copy_only(grad_full, p, q, shift):
        m_r, m_c, k_r, k_c = expand_module.block_layout(p, q, *grad_full.shape[-2:], shift)
        out = np.zeros(grad_full.shape[:-2] + (p, q))
        out[..., k_r, k_c] = grad_full[..., m_r, m_c]
        return out

    monkeypatch.setattr(expand_module, "expand_kernel_adjoint", last_copy_only)
    for name in ("k7_c4_14x14", SHIFTED_OFFICIAL):
        failing = _failing(conformance_errors(case_by_name(name), "blockdiag"))
        assert {"grad_weight_a_0", "grad_weight_b_0"} <= set(failing) and "y" not in failing, (
            f"{name}: expected only kernel gradients to fail, got {failing}"
        )


def _clear_caches(module):
    """Forget everything the module memoised (e.g. patch-wise plans built from the geometry)."""
    for value in vars(module).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


def test_conformance_catches_padding_geometry_without_shift(monkeypatch):
    """The patch-wise view (used by "loop" and "patchwise") with the shift ignored.

    Plans derived from the geometry may be cached, so caches are cleared before the
    mutant runs and again after it is removed (no mutant plan may leak into other tests).
    """
    original = expand_module.padding_view
    users = (neocell_module, fast_module)  # the modules that read the padding view
    try:
        with monkeypatch.context() as patch:
            for module in users:
                _clear_caches(module)
                patch.setattr(
                    module, "padding_view", lambda length, k_in, k_out, shift: original(length, k_in, k_out, 0)
                )
            failing = {
                method: _failing(conformance_errors(case_by_name(SHIFTED_OFFICIAL), method))
                for method in ("loop", "patchwise")
            }
    finally:
        for module in users:
            _clear_caches(module)
    for method, bad in failing.items():
        assert {"y", "grad_x"} <= set(bad), f"{method}: ignored shift not caught, failing {bad}"
    # and with the real geometry back, everything passes again
    for method in ("loop", "patchwise"):
        still_failing = _failing(conformance_errors(case_by_name(SHIFTED_OFFICIAL), method))
        assert not still_failing, (
            f"{SHIFTED_OFFICIAL}, method {method!r}: outputs above the tolerance {TOLERANCE:.0e}"
            f" with the real geometry restored: {still_failing}"
        )
