"""Analytic complexity of NeoCell layers and NeoNeXt networks (SPEC section 8).

Two questions, answered by counting, never by running:

* :func:`complexity` -- what does one NeoCell layer cost, and what does the
  depthwise convolution it replaces cost?
* :func:`model_complexity` -- what does a whole NeoNeXt cost, in each counting
  convention that published figures use?

Everything here is integer arithmetic on shapes. The layer counts read the
expansion rule only through :func:`neocell_ref.expansion.nnz` and the spec rules only
through :mod:`neocell_ref.spec`; the model counts read the network only through
:func:`neocell_ref.architecture.describe`. The derivations of every formula are in
``docs/complexity.md``; the tests prove the counts equal the multiply-accumulates
that the package's own forward passes execute (:func:`neocell_ref.instrument.count_macs`).

Conventions (all counts are multiply-accumulates, MACs; "GFLOPs" in the NeoNeXt
and ConvNeXt papers means GMACs):

``neocell_macs`` (layer) / ``"fvcore_patchwise"`` (model)
    The useful multiplies of the patch-wise algorithm, SPEC 8:
    ``nnz(Â)·W + H_out·nnz(B̂)`` per channel and sample.
``patchwise_padded_macs`` (layer) / ``"executed"`` (model)
    What :mod:`neocell_ref.neocell`'s ``"patchwise"`` method actually multiplies:
    it pads partial and shifted tiles with zeros and multiplies them too.
``blockdiag_macs`` (layer) / ``"fvcore"`` (model)
    Dense products with the expanded matrices,
    ``C·H_out·H·W + C·H_out·W·W_out`` per sample (the authors' fvcore hook).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from dataclasses import dataclass, field

import numpy as np

from . import registry
from .architecture import (
    MODEL_CONFIGS,
    RELEASED_CHECKPOINT_OPTIONS,
    Architecture,
    NeoNeXtConfig,
    describe,
    get_config,
    resolution_pair,
)
from .expansion import nnz, padding_view
from .spec import GroupSpec, check_input_size, parse_kernel_code, parse_specs, subgroup_sizes
from .validation import as_int as _as_int
from .validation import floating_dtype

__all__ = [
    "complexity",
    "LayerComplexity",
    "neocell_counts",
    "closed_form_neocell_macs",
    "closed_form_depthwise_macs",
    "depthwise_in_bounds_taps",
    "subgroup_sizes",
    "MAX_COUNT",
    "MAX_LAYER_ROWS",
    "model_complexity",
    "ModelComplexity",
    "LayerCount",
    "CONVENTIONS",
    "released_checkpoint_options",
]

#: The four counting conventions of :func:`model_complexity`, in table order.
CONVENTIONS = ("executed", "fvcore", "fvcore_without_neocell", "fvcore_patchwise")

_CONVENTION_NOTES = {
    "executed": "matrix products this package's forward runs (NeoCell patch-wise, zero padding included)",
    "fvcore": "fvcore rules, NeoCell as dense block-diagonal products",
    "fvcore_without_neocell": "fvcore rules, NeoCell left out",
    "fvcore_patchwise": "fvcore rules, NeoCell as its patch-wise nnz MACs (SPEC 8)",
}

# fvcore's per-element costs (SPEC 8): BatchNorm in inference and LayerNorm.
_FVCORE_BATCHNORM_PER_ELEMENT = 2
_FVCORE_LAYERNORM_PER_ELEMENT = 5

# Element-wise operations of the "executed" convention, per element (see docs/complexity.md):
# they are reported beside the MACs, never added to them.
# The counts follow what neocell_ref.layers executes in inference (float64 path).
_ELEMENTWISE_PER_ELEMENT = {
    "batchnorm": 2,  # x * scale + shift, scale and shift folded once per channel
    "layernorm": 7,  # sum for the mean, subtract, square, sum for the variance,
    # times 1/std, times weight, plus bias
    "gelu": 2,  # one normal-CDF evaluation Φ(x) (an erf) and one multiply x·Φ(x)
    "layer_scale": 1,  # one multiply by gamma
    "bias": 1,  # one addition per output element of a linear layer with bias
    "residual": 1,  # the block's x + branch
    "avgpool": 1,  # one addition per input element (the division per output is ignored)
}


# --------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------
_check_int = _as_int  # one integer rule for specs and counts


def _check_pair(value, name: str, minimum: int) -> tuple[int, int]:
    """An int ``k`` (meaning ``(k, k)``) or a pair of ints, validated."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
        return (_check_int(value[0], f"{name}[0]", minimum), _check_int(value[1], f"{name}[1]", minimum))
    v = _check_int(value, name, minimum)
    return (v, v)


def _layer_specs(k, c, shift, code, specs) -> tuple[GroupSpec, ...]:
    """Resolve the ways of naming a layer into validated groups."""
    if specs is not None:
        given = [n for n, v in (("k", k), ("c", c), ("code", code)) if v is not None]
        if not (type(shift) is int and shift == 0):  # anything but the default counts as given
            given.append("shift")
        if given:
            raise ValueError(f"give either specs= or the shorthand k/c/code/shift, not both (also got {given})")
        return parse_specs(specs)
    if code is not None and not isinstance(code, str):
        raise TypeError(f"code must be a kernel code string such as '4+7', got {code!r}")
    if k is not None and code is not None:
        raise ValueError(f"give either k={k!r} or code={code!r}, not both")
    channels = 96 if c is None else _check_int(c, "c", 1)
    shift = _check_int(shift, "shift", 0)
    kernel = code if code is not None else (7 if k is None else k)
    if isinstance(kernel, str):
        return tuple(parse_kernel_code(kernel, channels, shift))
    ka, kb = _check_pair(kernel, "k", 1)
    if shift and shift >= min(ka, kb):  # named as given: GroupSpec would say shift_a
        raise ValueError(f"shift={shift} must be smaller than the kernel size {min(ka, kb)}")
    return (GroupSpec(channels=channels, h_in=ka, h_out=ka, w_in=kb, w_out=kb, shift_a=shift, shift_b=shift),)


#: Largest count the calculators report. Every count is exact (Python ints) but is also
#: printed as a float (MB, GMACs, ratios), so it must fit a float64 (about 1.8e308);
#: larger sizes are refused with a ValueError rather than crashing while printing.
MAX_COUNT = int(sys.float_info.max)

#: Most rows :attr:`ModelComplexity.layers` (the per-layer table) builds; a network with
#: more layers still gets its totals, in time independent of its number of blocks.
MAX_LAYER_ROWS = 100_000


def _check_representable(values: dict, context: str) -> None:
    """Refuse counts beyond :data:`MAX_COUNT`, naming the first one and its size."""
    for name, value in values.items():
        if value > MAX_COUNT:
            digits = int(value.bit_length() * math.log10(2))
            raise ValueError(
                f"{name} of {context} is about 10^{digits}, beyond the float range (about 1.8e308) "
                "in which the report is printed; use smaller sizes"
            )


# --------------------------------------------------------------------------------------
# NeoCell counts (shared by the layer and the model calculators)
# --------------------------------------------------------------------------------------
def _axis_pieces(channels: int, subgroups: int, shift: int, k: int, length: int) -> list:
    """Cut one axis of a group into runs of sub-groups with one closed form each.

    Sub-group ``j`` uses shift ``s = j·shift``. With ``length = q·k + r`` (SPEC 4 keeps
    ``s <= length`` and ``s < k``; a shifted axis has a square ``k x k`` kernel and
    ``length x length`` matrix), docs/complexity.md shows that

    * ``nnz = s² + q·k² + (r−s)²`` while ``s <= r`` and ``s² + (q−1)·k² + (k+r−s)²`` after:
      a quadratic in ``j`` on each side of ``j·shift = r``;
    * the padded tile count ``T`` is ``q + [r > 0]`` at ``j = 0``, ``q + 2`` while
      ``0 < j·shift < r`` and ``q + 1`` from ``j·shift >= r`` on: constant on each run.

    The runs start at ``j = 0``, ``1``, the first ``j`` with ``j·shift >= r``, the first
    with ``j·shift > r``, and ``n − 1`` (the last sub-group, whose multiplicity differs).

    Returns
    -------
    list of (c0, c1, j1, j2, m)
        Channels ``c0:c1`` of the group are the sub-groups ``j1..j2`` (inclusive), each
        with ``m`` channels; the runs cover ``0:channels`` in order.
    """
    if shift == 0:
        return [(0, channels, 0, 0, channels)]
    size, last = subgroup_sizes(channels, subgroups)
    n = subgroups
    if size == 0:
        return [(0, channels, n - 1, n - 1, channels)]
    r = length % k
    starts = {0, 1, -(-r // shift), r // shift + 1, n - 1}
    starts = sorted(j for j in starts if 0 <= j <= n - 1)
    pieces = [(j1 * size, j2 * size, j1, j2 - 1, size) for j1, j2 in zip(starts, starts[1:])]
    pieces.append(((n - 1) * size, channels, n - 1, n - 1, last))
    return pieces


def _sum_over_runs(value, j1: int, j2: int) -> int:
    """``Σ_{j=j1..j2} value(j)`` for a ``value`` that is a polynomial of degree <= 2 in ``j`` there.

    Newton's forward differences: with ``N`` terms, ``f0 = value(j1)``,
    ``Δ = value(j1+1) − f0``, ``Δ² = value(j1+2) − 2·value(j1+1) + f0``, the sum is
    ``N·f0 + C(N,2)·Δ + C(N,3)·Δ²`` exactly (three evaluations, any ``N``).
    """
    n = j2 - j1 + 1
    if n <= 3:
        return sum(value(j) for j in range(j1, j2 + 1))
    f0, f1, f2 = value(j1), value(j1 + 1), value(j1 + 2)
    return n * f0 + n * (n - 1) // 2 * (f1 - f0) + n * (n - 1) * (n - 2) // 6 * (f2 - 2 * f1 + f0)


def _sum_of_products(pieces_a, t_a, pieces_b, t_b) -> int:
    """``Σ_c T_a(c)·T_b(c)`` for two step functions of the channel index given as runs."""
    total = i = j = 0
    while i < len(pieces_a) and j < len(pieces_b):
        lo = max(pieces_a[i][0], pieces_b[j][0])
        hi = min(pieces_a[i][1], pieces_b[j][1])
        total += max(0, hi - lo) * t_a[i] * t_b[j]
        if pieces_a[i][1] <= pieces_b[j][1]:
            i += 1
        else:
            j += 1
    return total


def neocell_counts(specs, height: int, width: int, batch: int = 1) -> dict:
    """Multiply-accumulates of a NeoCell layer, three ways, in closed form.

    Parameters
    ----------
    specs : list of dict or GroupSpec
    height, width : int
        Input ``H, W``.
    batch : int
        Samples ``N``.

    Returns
    -------
    dict with int values
        ``"nnz"``: ``N · Σ_c (nnz(Â_c)·W + H_out·nnz(B̂_c))`` (SPEC 8, the useful
        multiplies); ``"padded"``: what the zero-padded patch-wise method executes,
        ``N · Σ_c T_a·T_b·h_out·w_in·(h_in + w_out)`` (both axes are padded before
        the first product, so each product runs over every padded tile); ``"blockdiag"``:
        ``N · C · (H_out·H·W + H_out·W·W_out)``; ``"height_out"``, ``"width_out"``.

    Notes
    -----
    The sums over channels are taken per run of shifted sub-groups with one closed
    form each (:func:`_axis_pieces`), never per channel, so the cost does not depend on
    ``C``, the kernel sizes or ``H, W``. Derivation: docs/complexity.md.
    """
    specs = parse_specs(specs)
    batch = _check_int(batch, "batch", 1)
    # Python ints from here on: NumPy integers would wrap (int64) or overflow (uint8).
    height, width = _check_int(height, "height", 1), _check_int(width, "width", 1)
    h_out, w_out = check_input_size(specs, height, width)
    channels = sum(g.channels for g in specs)
    useful = padded = 0
    for g in specs:
        pieces_a = _axis_pieces(g.channels, g.subgroups_a, g.shift_a, g.h_in, height)
        pieces_b = _axis_pieces(g.channels, g.subgroups_b, g.shift_b, g.w_in, width)
        nnz_a = sum(
            m * _sum_over_runs(lambda j, g=g: nnz(g.h_out, g.h_in, h_out, height, j * g.shift_a), j1, j2)
            for _, _, j1, j2, m in pieces_a
        )
        nnz_b = sum(
            m * _sum_over_runs(lambda j, g=g: nnz(g.w_in, g.w_out, width, w_out, j * g.shift_b), j1, j2)
            for _, _, j1, j2, m in pieces_b
        )
        useful += nnz_a * width + h_out * nnz_b
        # Z = A @ X over all T_a·T_b padded tiles, then Z @ B over the same tiles.
        t_a = [padding_view(height, g.h_in, g.h_out, j1 * g.shift_a).tiles for _, _, j1, _, _ in pieces_a]
        t_b = [padding_view(width, g.w_in, g.w_out, j1 * g.shift_b).tiles for _, _, j1, _, _ in pieces_b]
        tiles = _sum_of_products(pieces_a, t_a, pieces_b, t_b)
        padded += tiles * g.h_out * g.w_in * (g.h_in + g.w_out)
    blockdiag = channels * (h_out * height * width + h_out * width * w_out)
    return {
        "nnz": batch * useful,
        "padded": batch * padded,
        "blockdiag": batch * blockdiag,
        "height_out": h_out,
        "width_out": w_out,
    }


def _closed_form_args(k, c, h, w, batch) -> tuple[int, int, int, int, int]:
    """The closed forms' arguments checked (each an integer ``>= 1``) as Python ints:
    NumPy integers would wrap (int64) or overflow (uint8) in the products."""
    return tuple(_check_int(v, name, 1) for name, v in zip(("k", "c", "h", "w", "batch"), (k, c, h, w, batch)))


def closed_form_neocell_macs(k: int, c: int, h: int, w: int, batch: int = 1) -> int:
    """``2·k·C·H·W·N``: NeoCell MACs for square ``k x k`` kernels, no shift, ``k`` dividing ``H`` and ``W``.

    Derivation: ``Â`` is ``diag(A, ..., A)`` with ``H/k`` blocks of ``k²`` entries,
    so ``nnz(Â) = k·H`` and ``nnz(Â)·W = k·H·W``; likewise ``H·nnz(B̂) = k·H·W``.

    Parameters
    ----------
    k : int
        Kernel size of ``A`` and ``B`` (>= 1); must divide ``h`` and ``w``.
    c : int
        Channels ``C`` (>= 1).
    h, w : int
        Input height ``H`` and width ``W`` (>= 1).
    batch : int, default 1
        Samples ``N`` (>= 1).

    Returns
    -------
    int
        ``2·k·C·H·W·N``, a Python int.

    Raises
    ------
    TypeError
        An argument is not an integer (or is a bool).
    ValueError
        An argument is < 1, or ``k`` does not divide ``h`` or ``w``.
    """
    k, c, h, w, batch = _closed_form_args(k, c, h, w, batch)
    if h % k or w % k:
        raise ValueError(f"the closed form needs k={k} to divide h={h} and w={w}")
    return 2 * k * c * h * w * batch


def closed_form_depthwise_macs(k: int, c: int, h: int, w: int, batch: int = 1) -> int:
    """``k²·C·H·W·N``: a stride-1, same-padded ``k x k`` depthwise convolution, every tap counted.

    Parameters
    ----------
    k, c, h, w, batch : int
        As in :func:`closed_form_neocell_macs` (each >= 1); ``k`` need not divide ``h`` or ``w``.

    Returns
    -------
    int
        ``k²·C·H·W·N``, a Python int.

    Raises
    ------
    TypeError
        An argument is not an integer (or is a bool).
    ValueError
        An argument is < 1.
    """
    k, c, h, w, batch = _closed_form_args(k, c, h, w, batch)
    return k * k * c * h * w * batch


def depthwise_in_bounds_taps(length: int, k: int) -> int:
    """Taps of a same-padded, stride-1 ``k``-tap 1-D correlation that land inside the input.

    With ``pl = (k-1)//2`` zeros before and ``pr = k-1-pl`` after (PyTorch's
    ``padding="same"``), the tap at offset ``d`` (``-pl <= d <= pr``) reads inside
    the input for ``max(0, length - |d|)`` output positions. A 2-D depthwise
    kernel is the product of its two axes. The sum is symmetric in ``pl, pr``, so
    it does not matter which side gets the extra zero of an even kernel.

    Closed form: with ``g(m) = Σ_{d=0}^{m} max(0, L − d) = (m'+1)·L − m'(m'+1)/2``,
    ``m' = min(m, L − 1)``, the count is ``g(pl) + g(pr) − L`` (``d = 0`` is in both).

    Parameters
    ----------
    length : int
        Input length ``L`` (>= 1), equal to the output length.
    k : int
        Taps of the kernel (>= 1).

    Returns
    -------
    int
        In-bounds taps summed over the ``L`` output positions (at most ``k·L``).

    Raises
    ------
    TypeError
        ``length`` or ``k`` is not an integer (or is a bool).
    ValueError
        ``length`` or ``k`` is < 1.
    """
    length = _check_int(length, "length", 1)
    k = _check_int(k, "k", 1)

    def one_side(m):
        m = min(m, length - 1)
        return (m + 1) * length - m * (m + 1) // 2

    pl = (k - 1) // 2
    pr = k - 1 - pl
    return one_side(pl) + one_side(pr) - length


# --------------------------------------------------------------------------------------
# formatting helpers
# --------------------------------------------------------------------------------------
#: From this size on, printed figures are in scientific notation: a fixed prefix (T, G,
#: MB) would print hundreds of digits of float noise.
_SCIENTIFIC_FROM = 1e15


def _human(n: float, unit: str = "") -> str:
    """``12_345_678`` -> ``"12.35 M"``; from 10**15 on, scientific (``"4.390e+302 MACs"``)."""
    if abs(n) >= _SCIENTIFIC_FROM:
        return f"{float(n):.3e} {unit}".rstrip()
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {prefix}{unit}"
    return f"{n:g} {unit}".rstrip()


def _gmacs(n: int) -> str:
    """MACs in GMACs to 3 decimals (the papers' GFLOPs), scientific beyond 10**15."""
    return f"{n / 1e9:9.3f} GMACs" if n < _SCIENTIFIC_FROM else f"{float(n):.3e} MACs"


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _shape(s) -> str:
    return "x".join(str(v) for v in s)


# --------------------------------------------------------------------------------------
# layer level
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerComplexity:
    """Costs of one NeoCell layer and of the depthwise convolution it replaces.

    All MAC and memory counts are for the whole batch of ``batch`` samples; the
    parameters and the expanded matrices do not depend on the batch.

    Attributes
    ----------
    specs : tuple of GroupSpec
        The channel groups.
    channels, height, width, height_out, width_out, batch : int
        ``C``, input ``H x W``, output ``H_out x W_out``, ``N``.
    dw_kernel : (int, int)
        Kernel ``kh x kw`` of the compared depthwise convolution (stride 1, same padding).
    dtype : str
        Floating dtype in which memory is also reported in bytes.
    neocell_params : int
        Trainable scalars: ``Σ_g channels_g · (h_out·h_in + w_in·w_out)``.
    neocell_macs : int
        SPEC 8's useful patch-wise MACs, ``N · Σ_c (nnz(Â_c)·W + H_out·nnz(B̂_c))``.
    neocell_macs_per_output : float
        ``neocell_macs / (N·C·H_out·W_out)``.
    patchwise_padded_macs : int
        MACs of this package's ``"patchwise"`` method, which also multiplies the zero
        padding of partial and shifted tiles (``>= neocell_macs``; equal when no tile is cut).
    blockdiag_macs : int
        Dense products with the expanded matrices, ``N·C·(H_out·H·W + H_out·W·W_out)``.
    neocell_extra_memory : int
        Elements of the one intermediate the patch-wise algorithm needs, ``z = Â x``:
        ``N·C·H_out·W``.
    blockdiag_extra_memory : int
        Elements of the expanded matrices, ``C·(H_out·H + W·W_out)`` (the block-diagonal
        method needs the same ``z`` as well).
    depthwise_params : int
        ``kh·kw·C``, **without** bias (NeoCell has none either).
    depthwise_params_with_bias : int
        ``kh·kw·C + C``.
    depthwise_macs : int
        ``kh·kw·C·H·W·N``: every tap of every output, the zero-padding taps included
        (the convention of fvcore and of SPEC 8).
    depthwise_macs_in_bounds : int
        Only the taps that land on the input (not on the padding).
    im2col_elements : int
        Elements the im2col lowering materialises, ``N·C·kh·kw·H·W``.
    depthwise_macs_over_neocell_macs : float
        ``depthwise_macs / neocell_macs``.
    neocell_params_over_depthwise_params : float
        ``neocell_params / depthwise_params`` (bias-free on both sides).
    """

    specs: tuple
    channels: int
    height: int
    width: int
    height_out: int
    width_out: int
    batch: int
    dw_kernel: tuple
    dtype: str
    neocell_params: int
    neocell_macs: int
    neocell_macs_per_output: float
    patchwise_padded_macs: int
    blockdiag_macs: int
    neocell_extra_memory: int
    blockdiag_extra_memory: int
    depthwise_params: int
    depthwise_params_with_bias: int
    depthwise_macs: int
    depthwise_macs_in_bounds: int
    im2col_elements: int
    depthwise_macs_over_neocell_macs: float
    neocell_params_over_depthwise_params: float

    def to_dict(self) -> dict:
        """Every attribute under its own name; ``specs`` as the official general dicts."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["specs"] = [g.to_dict() for g in self.specs]
        out["dw_kernel"] = list(self.dw_kernel)
        return out

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def _mb(self, elements: int) -> str:
        nbytes = elements * (2 if self.dtype == "bfloat16" else np.dtype(self.dtype).itemsize)
        return f"{nbytes / 1e6:.2f} MB" if nbytes < _SCIENTIFIC_FROM else f"{float(nbytes):.3e} bytes"

    def __str__(self) -> str:
        kh, kw = self.dw_kernel
        lines = [
            f"NeoCell layer vs {kh}x{kw} depthwise convolution (stride 1, same padding)",
            f"  input N={_fmt_int(self.batch)}, C={_fmt_int(self.channels)}, {self.height}x{self.width} -> "
            f"NeoCell output {self.height_out}x{self.width_out}",
        ]
        if (self.height_out, self.width_out) != (self.height, self.width):
            lines.append(
                "  note: NeoCell resamples here, the depthwise convolution (stride 1) keeps the size: "
                "the depthwise figures and ratios compare layers with different outputs"
            )
        for i, g in enumerate(self.specs):
            lines.append(
                f"  group {i}: {_fmt_int(g.channels)} channels, A {g.h_out}x{g.h_in}, B {g.w_in}x{g.w_out}, "
                f"shift {g.shift_a}/{g.shift_b}"
            )
        rows = [
            ("NeoCell parameters", self.neocell_params, "scalars (no bias)"),
            ("depthwise parameters", self.depthwise_params, "scalars (no bias)"),
            ("depthwise parameters with bias", self.depthwise_params_with_bias, "scalars"),
            ("NeoCell MACs (patch-wise, nnz)", self.neocell_macs, _human(self.neocell_macs, "MACs")),
            ("NeoCell MACs per output element", self.neocell_macs_per_output, "MACs"),
            (
                "patch-wise MACs incl. zero padding",
                self.patchwise_padded_macs,
                _human(self.patchwise_padded_macs, "MACs"),
            ),
            ("block-diagonal MACs (dense)", self.blockdiag_macs, _human(self.blockdiag_macs, "MACs")),
            ("depthwise MACs (all taps)", self.depthwise_macs, _human(self.depthwise_macs, "MACs")),
            (
                "depthwise MACs (in-bounds taps)",
                self.depthwise_macs_in_bounds,
                _human(self.depthwise_macs_in_bounds, "MACs"),
            ),
            (
                "NeoCell extra memory (z = A·x)",
                self.neocell_extra_memory,
                f"elements, {self._mb(self.neocell_extra_memory)} {self.dtype}",
            ),
            (
                "block-diagonal extra memory (expanded A, B)",
                self.blockdiag_extra_memory,
                f"elements, {self._mb(self.blockdiag_extra_memory)} {self.dtype}",
            ),
            (
                "im2col elements (depthwise)",
                self.im2col_elements,
                f"elements, {self._mb(self.im2col_elements)} {self.dtype}",
            ),
            ("depthwise MACs / NeoCell MACs", self.depthwise_macs_over_neocell_macs, "x"),
            ("NeoCell params / depthwise params", self.neocell_params_over_depthwise_params, "x"),
        ]
        width = max(len(r[0]) for r in rows)
        for label, value, unit in rows:
            text = _fmt_int(value) if isinstance(value, int) else f"{value:,.3f}"
            lines.append(f"  {label:<{width}}  {text:>15}  {unit}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)


def complexity(
    k=None,
    c=None,
    h: int = 56,
    w: int | None = None,
    *,
    batch: int = 1,
    shift: int = 0,
    code: str | None = None,
    specs=None,
    dw_kernel=None,
    dtype="float32",
) -> LayerComplexity:
    """Analytic costs of a NeoCell layer and of the depthwise convolution it replaces.

    Parameters
    ----------
    k : int, (int, int) or str, default 7
        Square kernel size for ``A`` and ``B``; a pair ``(kernel_a, kernel_b)``; or a
        kernel code such as ``"4+7"`` (SPEC 2).
    c : int, default 96
        Channels (for ``k`` or ``code``).
    h, w : int, default 56 and ``w = h``
        Input height and width.
    batch : int, default 1
    shift : int, default 0
        Shift amount given to every group (for ``k`` or ``code``).
    code : str, optional
        Kernel code, as an alternative to a string ``k``.
    specs : list of dict or GroupSpec, optional
        The channel groups in any official form (non-square ``h_in != h_out``
        kernels, different shifts...). Excludes ``k``, ``c``, ``code`` and ``shift``.
    dw_kernel : int or (int, int), optional
        The compared depthwise kernel. Default: the largest ``h_in`` and the largest
        ``w_in`` over the groups (7x7 for ``"4+7"``).
    dtype : str, numpy.dtype or type, default "float32"
        Floating dtype for the memory figures in bytes; also ``"bfloat16"`` (2 bytes),
        which NumPy has no dtype for.

    Returns
    -------
    LayerComplexity

    Raises
    ------
    ValueError, TypeError
        On any invalid or conflicting argument, naming it.

    Examples
    --------
    >>> r = complexity(k=7, c=96)
    >>> r.neocell_macs == 2 * 7 * 96 * 56 * 56
    True
    """
    layer = _layer_specs(k, c, shift, code, specs)
    height = _check_int(h, "h", 1)
    width = height if w is None else _check_int(w, "w", 1)
    batch = _check_int(batch, "batch", 1)
    # memory is reported in dt; bfloat16 (2 bytes) has no NumPy dtype
    dt = "bfloat16" if isinstance(dtype, str) and dtype == "bfloat16" else floating_dtype(dtype)
    itemsize = 2 if dt == "bfloat16" else dt.itemsize
    if dw_kernel is None:
        dw = (max(g.h_in for g in layer), max(g.w_in for g in layer))
    else:
        dw = _check_pair(dw_kernel, "dw_kernel", 1)
    counts = neocell_counts(layer, height, width, batch)
    h_out, w_out = counts["height_out"], counts["width_out"]
    channels = sum(g.channels for g in layer)
    neocell_params = sum(g.channels * (g.h_out * g.h_in + g.w_in * g.w_out) for g in layer)
    kh, kw = dw
    dw_params = kh * kw * channels
    dw_macs = kh * kw * channels * height * width * batch
    dw_in = depthwise_in_bounds_taps(height, kh) * depthwise_in_bounds_taps(width, kw) * channels * batch
    counted = dict(
        neocell_params=neocell_params,
        neocell_macs=counts["nnz"],
        patchwise_padded_macs=counts["padded"],
        blockdiag_macs=counts["blockdiag"],
        neocell_extra_memory=batch * channels * h_out * width,
        blockdiag_extra_memory=channels * (h_out * height + width * w_out),
        depthwise_params=dw_params,
        depthwise_params_with_bias=dw_params + channels,
        depthwise_macs=dw_macs,
        depthwise_macs_in_bounds=dw_in,
        im2col_elements=batch * channels * kh * kw * height * width,
    )
    _check_representable(counted, "the layer")
    _check_representable(
        {
            f"{key} in bytes": counted[key] * itemsize
            for key in ("neocell_extra_memory", "blockdiag_extra_memory", "im2col_elements")
        },
        "the layer",
    )
    return LayerComplexity(
        specs=layer,
        channels=channels,
        height=height,
        width=width,
        height_out=h_out,
        width_out=w_out,
        batch=batch,
        dw_kernel=dw,
        dtype=str(dt),
        neocell_macs_per_output=counts["nnz"] / (batch * channels * h_out * w_out),
        depthwise_macs_over_neocell_macs=dw_macs / counts["nnz"],
        neocell_params_over_depthwise_params=neocell_params / dw_params,
        **counted,
    )


# --------------------------------------------------------------------------------------
# model level
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerCount:
    """One row of the per-layer table of :func:`model_complexity` (per image).

    Attributes
    ----------
    name : str
        State-dict prefix of the layer (``stage_1.0.ops.content.neocell``).
    kind : str
        Layer kind of :mod:`neocell_ref.architecture`, or ``"residual"`` for the
        addition that closes a block.
    in_shape, out_shape : tuple of int
    params : int
        Trainable scalars.
    macs : dict
        MACs per convention (keys :data:`CONVENTIONS`).
    elementwise_ops : int
        Element-wise operations of the executed forward (bias additions,
        normalisation, GELU, ...), counted as documented in ``docs/complexity.md``;
        not MACs.
    """

    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    params: int
    macs: dict
    elementwise_ops: int

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "in_shape": list(self.in_shape),
            "out_shape": list(self.out_shape),
            "params": self.params,
            "macs": dict(self.macs),
            "elementwise_ops": self.elementwise_ops,
        }


def _count_layer(layer) -> LayerCount:
    """MACs of one described layer in every convention (per image)."""
    # The kind's record knows its cost in every convention (neocell_ref.layer_kinds).
    macs, elementwise = registry.get(layer.kind).count(layer)
    if set(macs) != set(CONVENTIONS):  # pragma: no cover - a record of a new kind is incomplete
        raise ValueError(
            f"the record of layer kind {layer.kind!r} counted conventions {sorted(macs)}, expected {list(CONVENTIONS)}"
        )
    macs = {conv: int(macs[conv]) for conv in CONVENTIONS}
    # Python ints throughout (a config may carry NumPy integers): exact at any size.
    in_shape = tuple(int(v) for v in layer.in_shape)
    out_shape = tuple(int(v) for v in layer.out_shape)
    params = sum(math.prod(int(v) for v in s) for s in layer.params.values())
    return LayerCount(layer.name, layer.kind, in_shape, out_shape, params, macs, int(elementwise))


def _display_name(name: str) -> str:
    if name in MODEL_CONFIGS:
        return "NeoNeXt-" + name.split("_", 1)[1].upper()
    return name


@dataclass(frozen=True)
class ModelComplexity:
    """Parameters and MACs of a NeoNeXt, per image.

    Attributes
    ----------
    name : str
        Model name, or ``"custom"`` for a :class:`NeoNeXtConfig`.
    config : NeoNeXtConfig
    resolution : (int, int)
        Input ``H, W``.
    params : int
        Trainable scalars (BatchNorm running statistics are buffers, not counted).
    macs : dict
        Total MACs per convention, keys :data:`CONVENTIONS`.
    elementwise_ops : int
        Element-wise operations of the executed forward (not MACs).
    runs : tuple of (str or None, tuple of LayerCount, int)
        The counted rows in execution order, in runs ``(stage, rows, copies)``: a
        stage's blocks are identical, so block 0's rows are counted once and stand for
        ``copies`` blocks (``stage`` is ``"stage_i"``; ``None`` for the stem,
        down-sampling and head rows, ``copies == 1``).

    Notes
    -----
    :attr:`layers` spells the runs out, one row per layer; it refuses to build more than
    :data:`MAX_LAYER_ROWS` rows (the totals never need it).
    """

    name: str
    config: NeoNeXtConfig
    resolution: tuple
    params: int
    macs: dict
    elementwise_ops: int
    runs: tuple = field(repr=False)

    @property
    def num_layer_rows(self) -> int:
        """Rows of the per-layer table (:attr:`layers`), counted without building them."""
        return sum(len(rows) * copies for _, rows, copies in self.runs)

    @functools.cached_property
    def layers(self) -> tuple:
        """Per layer, in execution order, plus one ``"residual"`` row per block (tuple of LayerCount).

        Raises
        ------
        ValueError
            If there would be more than :data:`MAX_LAYER_ROWS` rows.
        """
        n = self.num_layer_rows
        if n > MAX_LAYER_ROWS:
            raise ValueError(
                f"the per-layer table of this network would have {n:,} rows, more than "
                f"neocell_ref.calculator.MAX_LAYER_ROWS = {MAX_LAYER_ROWS:,}; the totals (params, macs, "
                "elementwise_ops) and to_dict(per_layer=False) do not need it"
            )
        out = []
        for stage, rows, copies in self.runs:
            if stage is None:
                out.extend(rows)
                continue
            template = f"{stage}.0"
            for b in range(copies):
                out.extend(dataclasses.replace(r, name=f"{stage}.{b}" + r.name[len(template) :]) for r in rows)
        return tuple(out)

    @functools.cached_property
    def parts(self) -> dict:
        """Subtotals per part of the network, in execution order: ``"stem"``,
        ``"stage_1"``, ``"downsample_1"``, ``"stage_2"``, ... ``"head"`` (a stage with
        all its blocks, residual additions included).

        Returns
        -------
        dict of str to dict
            ``{part: {"params": int, "macs": {convention: int}, "elementwise_ops": int}}``;
            the parts add up to :attr:`params`, :attr:`macs` and :attr:`elementwise_ops`.
            Built from the runs, so also for networks too deep for :attr:`layers`.
        """
        out = {}
        for stage, rows, copies in self.runs:
            for row in rows:
                part = stage if stage is not None else row.name.split(".")[0]
                entry = out.setdefault(part, {"params": 0, "macs": dict.fromkeys(CONVENTIONS, 0), "elementwise_ops": 0})
                entry["params"] += row.params * copies
                for conv in CONVENTIONS:
                    entry["macs"][conv] += row.macs[conv] * copies
                entry["elementwise_ops"] += row.elementwise_ops * copies
        return out

    def to_list(self) -> list:
        """The per-layer table as a list of dicts."""
        return [row.to_dict() for row in self.layers]

    def to_dict(self, per_layer: bool = True) -> dict:
        out = {
            "name": self.name,
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.config).items()},
            "resolution": list(self.resolution),
            "units": {
                "params": "trainable scalars",
                "macs": "multiply-accumulates per image, per counting convention",
                "elementwise_ops": "element-wise operations per image (not MACs)",
            },
            "params": self.params,
            "macs": dict(self.macs),
            "elementwise_ops": self.elementwise_ops,
            "conventions": dict(_CONVENTION_NOTES),
            "parts": {name: {**v, "macs": dict(v["macs"])} for name, v in self.parts.items()},
        }
        if per_layer:
            out["layers"] = self.to_list()
        return out

    def to_json(self, per_layer: bool = True, **kwargs) -> str:
        return json.dumps(self.to_dict(per_layer), **kwargs)

    def summary(self) -> str:
        cfg = self.config
        h, w = self.resolution
        lines = [
            f"{_display_name(self.name)} at {h}x{w}, per image",
            f"  blocks {cfg.per_stage_layers}, widths {cfg.dims}, kernel_spec={cfg.kernel_spec!r}, "
            f"shifts={cfg.shifts},",
            f"  layer_scale_init_value={cfg.layer_scale_init_value}, linear_bias={cfg.linear_bias}, "
            f"num_classes={cfg.num_classes}, in_chans={cfg.in_chans}",
            f"  parameters: {_fmt_int(self.params)} ({_human(self.params)})",
            "  MACs per convention, exact (GFLOPs as in the papers = GMACs):",
        ]
        width = max(len(_fmt_int(m)) for m in self.macs.values())
        for conv in CONVENTIONS:
            m = self.macs[conv]
            lines.append(f"    {conv:<24} {_fmt_int(m):>{width}} = {_gmacs(m)}  {_CONVENTION_NOTES[conv]}")
        ops = self.elementwise_ops
        lines.append(f"  element-wise ops of the executed forward (not MACs): {_fmt_int(ops)} ({_human(ops)})")
        lines.append("  per part: parameters, fvcore_patchwise MACs")
        parts = self.parts
        pw = max(len(_fmt_int(v["params"])) for v in parts.values())
        mw = max(len(_fmt_int(v["macs"]["fvcore_patchwise"])) for v in parts.values())
        for name, v in parts.items():
            m = v["macs"]["fvcore_patchwise"]
            lines.append(f"    {name:<14} {_fmt_int(v['params']):>{pw}}  {_fmt_int(m):>{mw}} = {_gmacs(m)}")
        return "\n".join(lines)

    def table(self) -> str:
        """The per-layer table as fixed-width text (MACs in M, per image)."""
        head = (
            f"{'layer':<40} {'kind':<11} {'input':>13} {'output':>13} {'params':>11} "
            + " ".join(f"{c:>14}" for c in ("executed M", "fvcore M", "fv w/o neo M", "fv patch M"))
            + f" {'elem-ops M':>11}"
        )
        lines = [head, "-" * len(head)]
        for r in self.layers:
            lines.append(
                f"{r.name:<40} {r.kind:<11} {_shape(r.in_shape):>13} {_shape(r.out_shape):>13} "
                f"{_fmt_int(r.params):>11} "
                + " ".join(f"{r.macs[c] / 1e6:>14.3f}" for c in CONVENTIONS)
                + f" {r.elementwise_ops / 1e6:>11.3f}"
            )
        lines.append("-" * len(head))
        lines.append(
            f"{'total':<40} {'':<11} {'':>13} {'':>13} {_fmt_int(self.params):>11} "
            + " ".join(f"{self.macs[c] / 1e6:>14.3f}" for c in CONVENTIONS)
            + f" {self.elementwise_ops / 1e6:>11.3f}"
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return self.summary()


def released_checkpoint_options(resolution=224) -> dict:
    """Options of the released ImageNet checkpoints (SPEC 7) for a resolution.

    :data:`neocell_ref.architecture.RELEASED_CHECKPOINT_OPTIONS` holds the 224 px
    options; the 384 px checkpoints also shift stage 4 (shifts ``(1, 1, 1, 1)``).
    Checkpoints were released at 224 and 384 px only: a rectangle follows its longer
    side, and a resolution whose longer side is neither is refused (ValueError) rather
    than answered with another checkpoint's options.

    Parameters
    ----------
    resolution : int or (int, int), default 224
        Input size ``s`` (for ``s x s``) or ``(H, W)``, as
        :func:`neocell_ref.architecture.resolution_pair` reads it.

    Returns
    -------
    dict
        A new dict of :class:`NeoNeXtConfig` options (``linear_bias``, ``kernel_spec``,
        ``layer_scale_init_value``, ``shifts``), ready for ``**`` into
        :func:`model_complexity` or :func:`neocell_ref.architecture.get_config`.

    Raises
    ------
    ValueError
        ``resolution`` is not a valid input size (:func:`~neocell_ref.architecture.resolution_pair`),
        or its longer side is neither 224 nor 384.
    """
    options = dict(RELEASED_CHECKPOINT_OPTIONS)
    side = max(resolution_pair(resolution))
    if side not in (224, 384):
        raise ValueError(
            f"released checkpoints exist at 224 and 384 px only; resolution={resolution!r} has neither "
            "as its longer side (pass the options of the checkpoint you mean, or leave them out)"
        )
    if side == 384:
        options["shifts"] = (1, 1, 1, 1)
    return options


def _resolve_config(model, model_options, resolution) -> tuple[str, NeoNeXtConfig, object]:
    """A name, a NeoNeXtConfig, an Architecture or a model object, and the resolution asked
    for (None: the model's own) -> (name, config, resolution to count at).

    An Architecture is a network described at one resolution: it is counted there (another
    resolution is refused), and only if its units are the ones its config describes (the
    count is taken from the config). A model object is counted at the resolution of its
    ``architecture`` unless another is asked for, which its ``describe`` must accept (a
    model built from an architecture runs at that one only).
    """
    if isinstance(model, str):
        return model, get_config(model, **model_options), 224 if resolution is None else resolution
    config, architecture = None, None
    if isinstance(model, NeoNeXtConfig):
        config = model
    elif isinstance(model, Architecture):
        architecture = model
        if resolution is not None and resolution_pair(resolution) != tuple(model.resolution):
            raise ValueError(
                f"resolution={resolution!r} differs from the Architecture's own {tuple(model.resolution)}: "
                "an Architecture is counted at the resolution it was described at (pass its config to "
                "count another)"
            )
    else:
        # A model object (neocell_ref.models) carries its config and its architecture.
        own = getattr(model, "architecture", None)
        if isinstance(own, Architecture):
            architecture = own
            if resolution is not None and resolution_pair(resolution) != tuple(own.resolution):
                describe_at = getattr(model, "describe", None)
                architecture = describe_at(resolution) if callable(describe_at) else None
                if not isinstance(architecture, Architecture):
                    raise ValueError(f"the model cannot be described at resolution={resolution!r}")
        candidate = getattr(model, "config", None)
        config = candidate if isinstance(candidate, NeoNeXtConfig) else None
    if config is None and architecture is None:
        raise TypeError(
            "model must be a model name (one of "
            f"{sorted(MODEL_CONFIGS)}), a NeoNeXtConfig, an Architecture or a NeoNeXt model, "
            f"got {type(model).__name__}"
        )
    if architecture is not None:
        config = architecture.config
        resolution = tuple(architecture.resolution)
        if architecture != describe(config, resolution):
            raise ValueError(
                "the Architecture's units are not those its config describes at "
                f"{resolution}; model_complexity counts a NeoNeXt from its config and cannot count "
                "edited units"
            )
    if model_options:
        unknown = set(model_options) - set(NeoNeXtConfig.__dataclass_fields__)
        if unknown:
            raise TypeError(f"unknown model option(s): {sorted(unknown)}")
        config = dataclasses.replace(config, **model_options)
    name = "custom"
    for known, sizes in MODEL_CONFIGS.items():
        if (config.per_stage_layers, config.dims) == (tuple(sizes["per_stage_layers"]), tuple(sizes["dims"])):
            name = known
    return name, config, 224 if resolution is None else resolution


def model_complexity(model, resolution=None, **model_options) -> ModelComplexity:
    """Parameters and MACs of a NeoNeXt in every counting convention (per image).

    Parameters
    ----------
    model : str, NeoNeXtConfig, Architecture or model object
        ``"neonext_t"``, ``"neonext_s"``, ``"neonext_b"``, ``"neonext_l"``,
        ``"neonext_xl"``; a custom :class:`NeoNeXtConfig`; an :class:`Architecture`
        (counted at its own resolution, and only if its units are the ones its config
        describes); or a built model (anything carrying ``.architecture``, or a
        ``.config``).
    resolution : int or (int, int), optional
        Input height and width (multiples of 4). Default: the resolution of an
        Architecture or of a model's ``architecture``, else 224. An Architecture
        refuses any other; a model is counted at another if its ``describe`` accepts it.
    **model_options
        SPEC 7 options: ``num_classes``, ``kernel_spec``, ``shifts``,
        ``layer_scale_init_value``, ``linear_bias`` (and ``drop_path``, ``in_chans``).
        See :func:`released_checkpoint_options` for the released checkpoints.

    Returns
    -------
    ModelComplexity

    Examples
    --------
    >>> r = model_complexity("neonext_t", 224, **released_checkpoint_options(224))
    >>> round(r.params / 1e6, 1), round(r.macs["fvcore_patchwise"] / 1e9, 1)
    (27.5, 4.4)
    """
    name, config, resolution = _resolve_config(model, model_options, resolution)
    # The blocks of a stage have the same layers and shapes (only their names and
    # drop-path rates differ), so the network is described with one block per stage,
    # each block counted once and multiplied: the cost does not grow with the blocks.
    # (The tests compare this with counting the full description, layer by layer.)
    template = describe(dataclasses.replace(config, per_stage_layers=(1, 1, 1, 1)), resolution)
    runs = []
    stage = 0
    for unit in template.units:
        rows = [_count_layer(layer) for layer in unit.layers]
        if unit.kind != "residual":
            runs.append((None, tuple(rows), 1))
            continue
        shape = rows[-1].out_shape
        # The block's closing addition x + branch: no MACs, one element-wise op per element.
        rows.append(
            LayerCount(
                f"{unit.name}.residual",
                "residual",
                shape,
                shape,
                0,
                dict.fromkeys(CONVENTIONS, 0),
                _ELEMENTWISE_PER_ELEMENT["residual"] * math.prod(shape),
            )
        )
        prefix = f"stage_{stage + 1}"
        if unit.name != f"{prefix}.0":  # pragma: no cover - architecture.py renamed its blocks
            raise ValueError(f"unexpected block name {unit.name!r}: model_complexity expects {prefix}.0")
        runs.append((prefix, tuple(rows), config.per_stage_layers[stage]))
        stage += 1

    def total(of):
        return sum(copies * sum(of(r) for r in rows) for _, rows, copies in runs)

    params = total(lambda r: r.params)
    macs = {conv: total(lambda r, conv=conv: r.macs[conv]) for conv in CONVENTIONS}
    elementwise = total(lambda r: r.elementwise_ops)
    _check_representable(
        {"params": params, **{f"{conv} MACs": v for conv, v in macs.items()}, "elementwise_ops": elementwise},
        f"{_display_name(name)} at this resolution",
    )
    return ModelComplexity(
        name=name,
        config=config,
        resolution=tuple(template.resolution),
        params=params,
        macs=macs,
        elementwise_ops=elementwise,
        runs=tuple(runs),
    )
