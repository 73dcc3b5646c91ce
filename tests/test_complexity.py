"""Layer-level complexity calculator: analytic counts proven against what runs.

Independent sources of the expected values, per test:

* the MACs that the package's own forward passes execute, recorded by
  :func:`neocell_ref.instrument.count_macs` (block-diagonal and patch-wise);
* a filled-entry pattern of the expanded matrices written here from the text of
  SPEC section 3 by a *different* rule (position -> "which block am I in?") than
  :func:`neocell_ref.expansion.block_layout` (block -> positions), and
  ``np.count_nonzero`` of :func:`neocell_ref.expansion.expand` applied to all-ones kernels;
* hand closed forms (``2·k·C·H·W``, ``s² + ⌊(H−s)/k⌋·k² + ((H−s) mod k)²``);
* a direct depthwise convolution that counts its taps, itself checked against
  ``scipy.signal.correlate2d``.

A last group of tests breaks the calculator on purpose (a ``k²`` closed form, a
forgotten shift corner, an off-by-one tile count) and shows the comparisons fail.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest
import scipy.signal
from hypothesis import given
from hypothesis import strategies as st

import neocell_ref
from neocell_ref import calculator as CX
from neocell_ref.calculator import (
    LayerComplexity,
    closed_form_depthwise_macs,
    closed_form_neocell_macs,
    complexity,
)
from neocell_ref.cli import main
from neocell_ref.expansion import expand, nnz
from neocell_ref.instrument import count_macs
from neocell_ref.neocell import neocell_forward
from neocell_ref.spec import parse_specs
from neocell_ref.verify.testing import layer_specs


# --------------------------------------------------------------------------------------
# independent pictures of SPEC 2-4, written here on purpose
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# the comparison helpers (also used by the "test the tests" section)
# --------------------------------------------------------------------------------------
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
    return result


def assert_closed_form_agrees(k, c, h, w, batch):
    """The closed form, the general count and a hand formula written here all agree."""
    hand = 2 * k * c * h * w * batch  # nnz(Â) = (H/k)·k² = k·H, likewise for B̂
    closed = CX.closed_form_neocell_macs(k, c, h, w, batch)
    general = complexity(k=k, c=c, h=h, w=w, batch=batch).neocell_macs
    where = f"k={k}, C={c}, H x W={h}x{w}, N={batch}"
    assert closed == hand, f"closed form {closed} != hand 2kCHWN = {hand} ({where})"
    assert general == closed, f"general count {general} != closed form {closed} ({where})"


# --------------------------------------------------------------------------------------
# hand-checked values of the example
# --------------------------------------------------------------------------------------
def test_default_example_hand_values():
    r = neocell_ref.complexity(k=7, c=96)
    c, h, w = 96, 56, 56
    expected = {
        "height_out": 56,
        "width_out": 56,
        "batch": 1,
        "channels": 96,
        "neocell_params": c * (7 * 7 + 7 * 7),  # 9,408
        "neocell_macs": 2 * 7 * c * h * w,  # 4,214,784
        "patchwise_padded_macs": 2 * 7 * c * h * w,  # 56 = 8·7: no padding
        "blockdiag_macs": c * (h * h * w + h * w * w),  # 33,718,272
        "neocell_extra_memory": c * h * w,  # z = Âx
        "blockdiag_extra_memory": c * (h * h + w * w),
        "depthwise_params": 49 * c,  # 4,704
        "depthwise_params_with_bias": 49 * c + c,  # 4,800
        "depthwise_macs": 49 * c * h * w,  # 14,751,744
        "depthwise_macs_in_bounds": c * (7 * 56 - 2 * (1 + 2 + 3)) ** 2,  # 3 taps miss on each side
        "im2col_elements": c * 49 * h * w,
    }
    for key, value in expected.items():
        assert getattr(r, key) == value, f"{key}: got {getattr(r, key)}, hand value {value}"
    assert r.neocell_macs_per_output == 14.0, f"2k = 14 MACs per output, got {r.neocell_macs_per_output}"
    assert r.depthwise_macs_over_neocell_macs == 3.5, f"k²/2k = 3.5, got {r.depthwise_macs_over_neocell_macs}"
    assert r.neocell_params_over_depthwise_params == 2.0, f"2k²/k² = 2, got {r.neocell_params_over_depthwise_params}"


def test_to_dict_has_every_attribute_and_is_json():
    r = complexity(code="4+7", c=24, shift=1, h=23, w=30, batch=2)
    d = r.to_dict()
    attrs = {f for f in LayerComplexity.__dataclass_fields__}
    assert set(d) == attrs, f"to_dict keys differ from attributes: {set(d) ^ attrs}"
    for key in attrs - {"specs", "dw_kernel"}:
        assert d[key] == getattr(r, key), f"to_dict[{key!r}] = {d[key]!r} != attribute {getattr(r, key)!r}"
    assert [parse_specs([s])[0] for s in d["specs"]] == list(r.specs), "specs do not round-trip"
    assert json.loads(r.to_json()) == d, "JSON does not round-trip"


def test_str_is_a_readable_table_with_units():
    text = str(complexity(k=7, c=96))
    for needle in (
        "NeoCell parameters",
        "9,408",
        "4,214,784",
        "4.21 MMACs",
        "depthwise MACs (all taps)",
        "14,751,744",
        "MB float32",
        "3.500",
        "scalars (no bias)",
        "7x7 depthwise",
    ):
        assert needle in text, f"{needle!r} missing from the table:\n{text}"
    assert repr(complexity(k=7, c=96)) == text, "repr should print the same table"


# --------------------------------------------------------------------------------------
# analytic counts == what the code executes (property-based)
# --------------------------------------------------------------------------------------
@given(data=st.data())
def test_counts_equal_instrumented_execution(data):
    specs, size = data.draw(layer_specs(max_size=12, max_kernel=5, max_channels=4), label="layer")
    batch = data.draw(st.integers(1, 2), label="batch")
    assert_layer_counts_match_execution(specs, size, batch)


@given(data=st.data())
def test_shorthand_forms_equal_explicit_specs(data):
    """k / (ka, kb) / code with a shift count exactly what the equivalent specs count."""
    code = data.draw(st.sampled_from(["7", "4+7", "3+5+7", "2"]), label="code")
    c = data.draw(st.integers(3, 12), label="c")
    h = data.draw(st.integers(7, 16), label="h")
    w = data.draw(st.integers(7, 16), label="w")
    shift = data.draw(st.integers(0, 1), label="shift")
    short = complexity(code=code, c=c, h=h, w=w, shift=shift)
    sizes = [int(k) for k in code.split("+")]
    per = c // len(sizes)
    chans = [per] * (len(sizes) - 1) + [c - per * (len(sizes) - 1)]
    explicit = [{"kernel": k, "channels": n, "shift": shift} for k, n in zip(sizes, chans)]
    full = assert_layer_counts_match_execution(explicit, (h, w), 1)
    assert short.to_dict() == full.to_dict(), f"code {code!r} differs from its explicit specs"
    ka = data.draw(st.integers(1, 7), label="kernel_a")
    kb = data.draw(st.integers(1, 7), label="kernel_b")
    pair = complexity(k=(ka, kb), c=c, h=h, w=w)
    ref = complexity(specs=[{"kernel_a": ka, "kernel_b": kb, "channels": c}], h=h, w=w, dw_kernel=(ka, kb))
    assert pair.to_dict() == ref.to_dict(), f"k=({ka}, {kb}) differs from the kernel_a/kernel_b spec"


@pytest.mark.parametrize(
    "specs, size, batch",
    [
        ([{"h_in": 3, "h_out": 2, "w_in": 4, "w_out": 4, "channels": 5, "shift_a": 0, "shift_b": 2}], (11, 13), 2),
        ([{"h_in": 1, "h_out": 3, "w_in": 2, "w_out": 5, "channels": 2}], (4, 6), 1),
        ([{"kernel": 4, "channels": 2, "shift": 1}, {"kernel": 7, "channels": 9, "shift": 1}], (6, 6), 1),
        ([{"kernel_a": 5, "kernel_b": 3, "channels": 7, "shift_a": 2, "shift_b": 1}], (4, 2), 3),
        ([{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 4}], (7, 9), 1),
        ([{"kernel": 7, "channels": 3}], (1, 1), 1),
    ],
    ids=["down3to2-shiftB", "upsample", "4+7-shift-small-H", "ka5-kb3-shifts", "2to1-odd", "1x1-input"],
)
def test_counts_equal_instrumented_execution_edge_cases(specs, size, batch):
    assert_layer_counts_match_execution(specs, size, batch)


def test_padding_costs_extra_only_when_a_tile_is_cut():
    divisible = complexity(k=7, c=8, h=21, w=14)
    assert divisible.patchwise_padded_macs == divisible.neocell_macs, "no padding when 7 | H, W"
    ragged = complexity(k=7, c=8, h=20, w=14)
    assert ragged.patchwise_padded_macs > ragged.neocell_macs, "H=20 leaves a 6-row tile: padded > useful"
    shifted = complexity(k=7, c=8, h=21, w=14, shift=1)
    assert shifted.patchwise_padded_macs > shifted.neocell_macs, "a shift cuts tiles at both ends"


# --------------------------------------------------------------------------------------
# closed forms
# --------------------------------------------------------------------------------------
@given(data=st.data())
def test_closed_form_unshifted_divisible(data):
    k = data.draw(st.integers(1, 8), label="k")
    c = data.draw(st.integers(1, 40), label="c")
    h = k * data.draw(st.integers(1, 9), label="h_tiles")
    w = k * data.draw(st.integers(1, 9), label="w_tiles")
    batch = data.draw(st.integers(1, 3), label="batch")
    assert_closed_form_agrees(k, c, h, w, batch)
    r = complexity(k=k, c=c, h=h, w=w, batch=batch)
    assert r.depthwise_macs == closed_form_depthwise_macs(k, c, h, w, batch) == k * k * c * h * w * batch, (
        f"depthwise {r.depthwise_macs} != k²CHWN {k * k * c * h * w * batch}"
    )
    assert r.neocell_macs_per_output == 2 * k, f"per output {r.neocell_macs_per_output} != 2k = {2 * k}"


@given(data=st.data())
def test_square_nnz_closed_form_with_shift_and_ragged_tiles(data):
    """``nnz = s² + ⌊(H−s)/k⌋·k² + ((H−s) mod k)²`` for a square k x k kernel on H x H."""
    k = data.draw(st.integers(1, 8), label="k")
    s = data.draw(st.integers(0, k - 1), label="shift")
    h = data.draw(st.integers(max(s, 1), 30), label="H")
    hand = s * s + ((h - s) // k) * k * k + ((h - s) % k) ** 2
    got = nnz(k, k, h, h, s)
    assert got == hand, f"nnz({k}, {k}, {h}, {h}, {s}) = {got}, closed form {hand}"
    assert got == int(spec_filled_pattern(k, k, h, h, s).sum()), "closed form disagrees with SPEC-3 pattern"


def test_closed_form_refuses_non_divisible_sizes():
    with pytest.raises(ValueError, match="divide"):
        closed_form_neocell_macs(7, 96, 55, 56)


# --------------------------------------------------------------------------------------
# depthwise convolution: against a direct implementation that counts its taps
# --------------------------------------------------------------------------------------
def direct_depthwise(x, kernels):
    """Stride-1 ``same`` depthwise correlation, tap by tap, counting multiplies.

    ``x`` (C, H, W), ``kernels`` (C, kh, kw); ``(kh-1)//2`` zeros before, the rest after
    (PyTorch ``padding="same"``). Returns ``(y, all_taps, in_bounds_taps)``.
    """
    c, h, w = x.shape
    _, kh, kw = kernels.shape
    top, left = (kh - 1) // 2, (kw - 1) // 2
    y = np.zeros_like(x)
    all_taps = in_bounds = 0
    for a in range(kh):
        for b in range(kw):
            dy, dx = a - top, b - left
            rows = np.arange(h)[(np.arange(h) + dy >= 0) & (np.arange(h) + dy < h)]
            cols = np.arange(w)[(np.arange(w) + dx >= 0) & (np.arange(w) + dx < w)]
            all_taps += c * h * w  # every output reads this tap, padding or not
            in_bounds += c * len(rows) * len(cols)
            if len(rows) and len(cols):
                y[:, rows[:, None], cols[None, :]] += (
                    kernels[:, a, b, None, None] * x[:, rows[:, None] + dy, cols[None, :] + dx]
                )
    return y, all_taps, in_bounds


@given(data=st.data())
def test_depthwise_counts_against_direct_convolution(data):
    kh = data.draw(st.integers(1, 7), label="kh")
    kw = data.draw(st.integers(1, 7), label="kw")
    c = data.draw(st.integers(1, 3), label="C")
    h = data.draw(st.integers(1, 12), label="H")
    w = data.draw(st.integers(1, 12), label="W")
    batch = data.draw(st.integers(1, 2), label="N")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    kernels = rng.standard_normal((c, kh, kw))
    total_all = total_in = 0
    for _ in range(batch):
        x = rng.standard_normal((c, h, w))
        y, all_taps, in_bounds = direct_depthwise(x, kernels)
        for ch in range(c):
            # scipy's "full" output index m reads x[m - (kh-1) + a]; ours reads x[i - top + a].
            full = scipy.signal.correlate2d(x[ch], kernels[ch], mode="full")
            r0, c0 = kh - 1 - (kh - 1) // 2, kw - 1 - (kw - 1) // 2
            ref = full[r0 : r0 + h, c0 : c0 + w]
            err = np.abs(y[ch] - ref).max()
            assert err < 1e-12, f"direct depthwise differs from scipy by {err} (channel {ch}, k {kh}x{kw})"
        total_all += all_taps
        total_in += in_bounds
    r = complexity(k=3, c=c, h=h, w=w, batch=batch, dw_kernel=(kh, kw))
    where = f"k {kh}x{kw}, C={c}, H x W={h}x{w}, N={batch}"
    assert r.depthwise_macs == total_all, f"depthwise_macs {r.depthwise_macs} != counted {total_all} ({where})"
    assert r.depthwise_macs_in_bounds == total_in, (
        f"depthwise_macs_in_bounds {r.depthwise_macs_in_bounds} != counted {total_in} ({where})"
    )
    assert r.depthwise_params == kernels.size, f"params {r.depthwise_params} != kernel size {kernels.size}"
    assert r.depthwise_params_with_bias == kernels.size + c, "with bias: one more scalar per channel"
    assert r.im2col_elements == batch * c * kh * kw * h * w, "im2col holds every tap of every output"


def test_default_depthwise_kernel_is_the_largest_neocell_kernel():
    assert complexity(code="4+7").dw_kernel == (7, 7), "a '4+7' layer is compared with a 7x7 depthwise"
    down = complexity(specs=[{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 4}], h=8)
    assert down.dw_kernel == (2, 2) and (down.height_out, down.width_out) == (4, 4), (
        f"down-sampling: dw {down.dw_kernel}, output {down.height_out}x{down.width_out}"
    )


# --------------------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, needle",
    [
        (dict(k=0), ValueError, "k must be >= 1"),
        (dict(k=7.0), TypeError, "k must be an integer"),
        (dict(k=True), TypeError, "k must be an integer"),
        (dict(k=(3, 4, 5)), ValueError, "k must be an int or a pair"),
        (dict(c=0), ValueError, "c must be >= 1"),
        (dict(h=0), ValueError, "h must be >= 1"),
        (dict(w=-2), ValueError, "w must be >= 1"),
        (dict(h="56"), TypeError, "h must be an integer"),
        (dict(batch=0), ValueError, "batch must be >= 1"),
        (dict(shift=-1), ValueError, "shift must be >= 0"),
        (dict(shift=7), ValueError, "shift_a=7 must be smaller than the kernel size 7"),
        (dict(k=7, shift=3, h=4), ValueError, "exceeds the input height H=4"),
        (dict(k=7, code="4+7"), ValueError, "either k=7 or code='4\\+7'"),
        (dict(code=7), TypeError, "code must be a kernel code string"),
        (dict(code="4+x"), ValueError, "not a '\\+'-separated list"),
        (dict(specs=[{"kernel": 7, "channels": 4}], k=7), ValueError, "either specs= or"),
        (dict(specs=[{"kernel": 7, "channels": 4}], shift=1), ValueError, "either specs= or"),
        (dict(specs={"kernel": 7, "channels": 4}), TypeError, "specs must be a list"),
        (dict(specs=[{"kernel": 7}]), ValueError, "no 'channels' key"),
        (dict(dw_kernel=(3,)), ValueError, "dw_kernel must be an int or a pair"),
        (dict(dw_kernel=0), ValueError, "dw_kernel must be >= 1"),
        (dict(dtype="int32"), ValueError, "dtype must be a floating dtype"),
        (dict(dtype=object()), TypeError, "dtype must name a NumPy floating dtype"),
        (
            dict(
                specs=[{"h_in": 2, "h_out": 1, "w_in": 1, "w_out": 1, "channels": 2}, {"kernel": 3, "channels": 2}], h=8
            ),
            ValueError,
            "groups disagree on the output size",
        ),
    ],
)
def test_bad_input_is_refused_with_a_named_field(kwargs, error, needle):
    with pytest.raises(error, match=needle):
        complexity(**kwargs)


# --------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------
def run_cli(argv):
    buf = io.StringIO()
    with redirect_stdout(buf):
        status = main(argv)
    return status, buf.getvalue()


def test_cli_complexity_table_and_json():
    status, text = run_cli(["complexity", "-k", "7", "-c", "96"])
    assert status == 0 and text.strip() == str(complexity(k=7, c=96)), f"table differs:\n{text}"
    status, text = run_cli(["complexity", "-c", "96", "--hw", "56", "40", "--code", "4+7", "--shift", "1", "--json"])
    expected = complexity(code="4+7", c=96, h=56, w=40, shift=1).to_dict()
    assert status == 0 and json.loads(text) == expected, f"JSON differs: {text[:300]}"


def test_cli_complexity_reports_bad_input():
    err = io.StringIO()
    with redirect_stderr(err):
        status, text = run_cli(["complexity", "-k", "7", "--code", "4+7"])
    message = err.getvalue()
    assert status == 2 and text == "", f"status {status}, stdout {text!r}"
    assert message.startswith("neocell-ref: error: ") and message.count("\n") == 1, message
    assert "either k=7 or code='4+7'" in message, message


# --------------------------------------------------------------------------------------
# test the tests: deliberately wrong formulas are caught
# --------------------------------------------------------------------------------------
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
