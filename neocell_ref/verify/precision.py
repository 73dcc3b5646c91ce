"""Half precision: the dtypes of golden sets, rounding to float16 and bfloat16, and
reference emulations of the mixed-precision arithmetic model of ``docs/porting.md``
(section "Half precision").

The arithmetic model (what a golden float16 or bfloat16 set is derived for):

* inputs are half-precision numbers (exactly the stored inputs);
* every product of two half-precision numbers is formed exactly and accumulated in
  float32 or better (unit roundoff ``u_acc = 2**-24``);
* every intermediate that the formulation stores (for NeoCell ``z = Â x`` in the
  forward, ``dz = dy B̂ᵀ`` in the backward) and every result is rounded to the half
  type (unit roundoff ``u_half``: ``2**-11`` for float16, ``2**-8`` for bfloat16).

NumPy has no bfloat16 dtype, and this package depends on NumPy and SciPy only: a
bfloat16 number is carried in a float32 array whose low 16 bits are zero, and
:func:`round_bfloat16` rounds to it (round to nearest, ties to even) by bit
manipulation. The emulations (:func:`emulate_neocell`, :func:`emulate_layer`) follow
the model with every storage point rounded; the tests run them against golden sets
(they must pass with margin) and with planted defects (they must fail).
"""

from __future__ import annotations

import numpy as np

from ..expansion import expand_kernel, expand_kernel_adjoint
from ..spec import check_input_size, parse_specs
from ..validation import as_flag, as_real_array

__all__ = [
    "FLOAT_DTYPES",
    "HALF_DTYPES",
    "STORAGE_DTYPE",
    "UNIT_ROUNDOFF",
    "UNDERFLOW",
    "ACCUMULATION_DTYPE",
    "dtype_name",
    "round_bfloat16",
    "not_bfloat16",
    "round_to",
    "store",
    "emulate_neocell",
    "emulate_layer",
]

#: The dtypes a golden set can be exported in.
FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")
#: The half-precision ones (mixed-precision tolerance model).
HALF_DTYPES = ("float16", "bfloat16")
#: How the inputs of a set of each dtype are stored (NumPy has no bfloat16).
STORAGE_DTYPE = {"float64": "float64", "float32": "float32", "float16": "float16", "bfloat16": "float32"}
#: Unit roundoff ``u`` (half the machine epsilon): the largest relative error of
#: rounding to nearest a value inside the normal range.
UNIT_ROUNDOFF = {"float64": 2.0**-53, "float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
#: Half the smallest positive subnormal: the largest absolute error of rounding to
#: nearest a value below the normal range (gradual underflow).
UNDERFLOW = {"float64": 2.0**-1075, "float32": 2.0**-150, "float16": 2.0**-25, "bfloat16": 2.0**-134}
#: Accumulation type of the arithmetic model.
ACCUMULATION_DTYPE = "float32"


def dtype_name(dtype, name: str = "dtype") -> str:
    """The name in :data:`FLOAT_DTYPES` of ``dtype`` (a NumPy dtype, type or name).

    Parameters
    ----------
    dtype : str, numpy.dtype or type
        ``"float64"``, ``"float32"``, ``"float16"`` or ``"bfloat16"``, or another NumPy
        dtype, type or name of one of the first three (``np.float32``, ``"f4"``).
    name : str, default "dtype"
        How the message names the argument.

    Returns
    -------
    str
        One of :data:`FLOAT_DTYPES`.

    Raises
    ------
    ValueError
        For anything else, naming the value: ``None`` (NumPy reads it as float64) and
        numbers or arrays (NumPy reads their dtype) included.
    """
    if isinstance(dtype, str) and dtype == "bfloat16":
        return dtype
    text = None
    if isinstance(dtype, (str, np.dtype, type)):
        try:
            text = np.dtype(dtype).name
        except (TypeError, ValueError):
            pass
    if text not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be one of {', '.join(FLOAT_DTYPES)}, got {dtype!r}")
    return text


def round_bfloat16(values) -> np.ndarray:
    """Round to the nearest bfloat16 number, ties to even; return float32 carrying it.

    bfloat16 is float32 with the low 16 bits of the significand dropped (1 sign, 8
    exponent, 7 stored significand bits). Float64 input is rounded directly (not
    first to float32 and then to bfloat16, which could round a tie twice). NaN stays
    NaN (quiet), infinities stay infinite, values beyond the largest bfloat16
    (``(2 - 2**-7) * 2**127``) by half an ulp or more become infinite, values below
    the smallest subnormal (``2**-133``) by half of it or more become signed zero.

    Parameters
    ----------
    values : array_like of real floats

    Returns
    -------
    ndarray of float32, the shape of ``values``
    """
    source = np.asarray(values)
    if source.dtype.kind != "f":
        raise TypeError(f"round_bfloat16 takes a real floating array, got dtype {source.dtype}")
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        wide = source.astype(np.float64)
        single = wide.astype(np.float32)
    bits = np.ascontiguousarray(single).view(np.uint32).astype(np.uint64)
    low = bits & 0xFFFF
    # Round to nearest even on the float32 bits: the carry runs into the exponent,
    # which is exactly right (largest finite -> infinity, subnormal -> normal).
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    # Double rounding: when float64 -> float32 was inexact and landed exactly on a
    # bfloat16 midpoint, the true value decides the direction, not "ties to even".
    with np.errstate(invalid="ignore"):
        above = np.abs(wide) > np.abs(single.astype(np.float64))
        tie = (low == 0x8000) & (wide != single.astype(np.float64)) & np.isfinite(wide)
    rounded = np.where(tie, np.where(above, (bits + 0x8000) & 0xFFFF0000, bits & 0xFFFF0000), rounded)
    nan = np.isnan(wide)
    rounded = np.where(nan, (bits & 0x80000000) | 0x7FC00000, rounded)
    return rounded.astype(np.uint32).view(np.float32).reshape(source.shape)


def not_bfloat16(values) -> np.ndarray:
    """Boolean mask of the elements of ``values`` that are not bfloat16 numbers.

    NaN counts as bfloat16 (it has a bfloat16 encoding); a float64 value that is not
    even a float32 number does not.

    Parameters
    ----------
    values : array_like of real floats, any shape

    Returns
    -------
    ndarray of bool, the shape of ``values``
        True where the element is not a bfloat16 number.

    Raises
    ------
    TypeError
        ``values`` is not a floating array (integers included).
    """
    source = np.asarray(values)
    if source.dtype.kind != "f":
        raise TypeError(f"not_bfloat16 takes a real floating array, got dtype {source.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        single = source.astype(np.float32)
        exact = (single.astype(source.dtype) == source) | np.isnan(source)
    bits = np.ascontiguousarray(single).view(np.uint32)
    return ~exact | ((bits & 0xFFFF) != 0) & ~np.isnan(single)


def round_to(values, dtype) -> np.ndarray:
    """``values`` rounded (to nearest, ties to even) to ``dtype``, returned as float64.

    Parameters
    ----------
    values : array_like of real numbers, any shape
        Integer or floating.
    dtype : str or numpy.dtype
        ``dtype`` is a name of :data:`FLOAT_DTYPES` (or a dtype :func:`dtype_name`
        reads); float64 returns a copy.

    Returns
    -------
    ndarray of float64, the shape of ``values``
        Values beyond the range of ``dtype`` become infinite.

    Raises
    ------
    TypeError
        ``values`` is not a real numeric array (complex, bool, strings, None).
    ValueError
        ``dtype`` is not one of :data:`FLOAT_DTYPES`.
    """
    dtype = dtype_name(dtype)
    array = as_real_array(values, "values")
    with np.errstate(over="ignore", invalid="ignore"):
        if dtype == "bfloat16":
            return round_bfloat16(array.astype(np.float64, copy=False)).astype(np.float64)
        return array.astype(dtype).astype(np.float64)


def store(values, dtype) -> np.ndarray:
    """The array a golden set of ``dtype`` stores for ``values`` (drawn in float64).

    float64, float32 and float16 sets store ``values.astype(dtype)``; a bfloat16 set
    stores float32 arrays holding ``round_bfloat16(values)``.

    Parameters
    ----------
    values : array_like of real numbers, any shape
        Integer or floating.
    dtype : str or numpy.dtype
        The set's dtype, one of :data:`FLOAT_DTYPES` (see :func:`dtype_name`).

    Returns
    -------
    ndarray, the shape of ``values``
        Of dtype ``STORAGE_DTYPE[dtype]`` (:data:`STORAGE_DTYPE`).

    Raises
    ------
    TypeError
        ``values`` is not a real numeric array (complex, bool, strings, None).
    ValueError
        ``dtype`` is not one of :data:`FLOAT_DTYPES`.
    """
    dtype = dtype_name(dtype)
    values = as_real_array(values, "values")
    if dtype == "bfloat16":
        return round_bfloat16(values if values.dtype.kind == "f" else values.astype(np.float64))
    with np.errstate(under="ignore"):  # rounding to a subnormal or to 0 is the point
        return values.astype(dtype)


# --------------------------------------------------------------------------------------
# emulations of the arithmetic model
# --------------------------------------------------------------------------------------
def _matmul_acc(a, b, acc):
    """``a @ b`` of half-precision numbers: products exact, sums in ``acc``.

    float32/float64: NumPy's matrix product in that type. float16: recursive
    summation with every partial sum rounded to float16 (one rounding per fused
    multiply-add; the product of two float16 numbers and its sum with a float16
    number are exact in float64), as a port accumulating in half precision does.
    """
    if acc != "float16":
        return np.matmul(a.astype(acc), b.astype(acc))
    a, b = a.astype(np.float64), b.astype(np.float64)
    out = np.zeros(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (a.shape[-2], b.shape[-1]))
    for k in range(a.shape[-1]):
        out = round_to(out + a[..., :, k : k + 1] * b[..., k : k + 1, :], "float16")
    return out


def _fold(grad_full, p, q, shift, acc):
    """:func:`expand_kernel_adjoint` with its sums over blocks in ``acc`` (float16:
    ``numpy.add.at`` on a float16 array rounds every partial sum)."""
    if acc != "float16":
        return expand_kernel_adjoint(grad_full.astype(acc), p, q, shift)
    return expand_kernel_adjoint(grad_full.astype(np.float16), p, q, shift).astype(np.float64)


def _axis_out(length, k_in, k_out, rounded):
    """Output length of one axis (SPEC section 2): floor, or (a defect) rounded half up."""
    if k_in == k_out:
        return length
    if not rounded:
        return (length * k_out) // k_in
    return (2 * length * k_out + k_in) // (2 * k_in)


def _ceil_split_shifts(channels, shift, subgroups):
    """Per-channel shifts with sub-groups of ``ceil(channels / n)`` channels (a defect)."""
    if shift == 0:
        return np.zeros(channels, dtype=int)
    size = -(-channels // subgroups)
    return np.minimum(np.arange(channels) // size, subgroups - 1) * shift


def _neocell_arrays(arrays, groups):
    """The inputs of :func:`emulate_neocell` as real arrays, their shapes checked
    against ``groups``: ``x`` (N, C, H, W) with ``C`` the groups' channels, ``grad_y``
    (N, C, any, any) (a size defect's backward gets ``grad_y`` of the true size), the
    kernels of exactly the groups' shapes."""
    if not hasattr(arrays, "keys"):
        raise TypeError(f"arrays must be a dict of the case's input arrays, got {type(arrays).__name__}")
    expected = {"x": None, "grad_y": None}
    for g, spec in enumerate(groups):
        expected[f"weight_a_{g}"] = spec.shape_a
        expected[f"weight_b_{g}"] = spec.shape_b
    missing = [key for key in expected if key not in arrays]
    if missing:
        raise ValueError(f"arrays has no {', '.join(map(repr, missing))}, needed for specs of {len(groups)} group(s)")
    out = {key: as_real_array(arrays[key], f"arrays[{key!r}]") for key in expected}
    channels = sum(spec.channels for spec in groups)
    x = out["x"]
    if x.ndim != 4 or x.shape[1] != channels:
        raise ValueError(f"arrays['x'] has shape {x.shape}, expected (N, {channels}, H, W)")
    grad_y = out["grad_y"]
    if grad_y.ndim != 4 or grad_y.shape[:2] != x.shape[:2]:
        raise ValueError(
            f"arrays['grad_y'] has shape {grad_y.shape}, expected ({x.shape[0]}, {channels}, H_out, W_out)"
        )
    for key, shape in expected.items():
        if shape is not None and out[key].shape != shape:
            raise ValueError(f"arrays[{key!r}] has shape {out[key].shape}, but the specs need {shape}")
    return out


def emulate_neocell(
    arrays,
    specs,
    dtype,
    *,
    accumulate=ACCUMULATION_DTYPE,
    storage=None,
    corner=True,
    swap=False,
    shifts=True,
    split_rounded_up=False,
    size_rounded=False,
    transpose=None,
):
    """NeoCell forward and backward as a mixed-precision port computes them.

    Block-diagonal formulation per channel (SPEC section 3): ``z = Â x`` (sums in
    ``accumulate``, stored rounded to ``storage``), ``y = z B̂`` (rounded);
    ``dz = dy B̂ᵀ`` (rounded), ``grad_x = Âᵀ dz`` (rounded); ``dÂ = Σ_n dz xᵀ`` and
    ``dB̂ = Σ_n zᵀ dy`` summed in ``accumulate``, folded onto the kernels (SPEC section
    5) in ``accumulate`` and rounded. Every product is of two numbers of the storage
    type, hence exact in float32.

    Parameters
    ----------
    arrays : dict
        ``x`` (N, C, H, W), ``weight_a_G`` (c_G, h_out, h_in), ``weight_b_G``
        (c_G, w_in, w_out), ``grad_y`` (N, C, H_out, W_out): the inputs of a golden case.
    specs : list of dict
        The case's specs as written.
    dtype : str
        The golden set's dtype, and the default of ``storage``.
    accumulate : str
        Accumulation dtype: ``"float32"`` in the model, ``"float64"``, or
        ``"float16"`` (every partial sum rounded to float16: a port that accumulates
        in half precision, outside the model).
    storage : str, optional
        The type inputs, intermediates and results are rounded to (inputs: a no-op on a
        set's own inputs when it is the set's dtype); default ``dtype``.
        (``storage="bfloat16"`` on a float16 set emulates a port of lower precision.)
    corner, swap, shifts, split_rounded_up, size_rounded : bool
        Planted defects (the tests' mutants and :mod:`neocell_ref.verify.diagnosis`'s
        catalogue): ``corner=False`` drops the wrapped corner of a shifted expansion,
        ``swap=True`` exchanges A and B (each transposed to fit), ``shifts=False``
        ignores every shift, ``split_rounded_up`` makes shift sub-groups of
        ``ceil(channels / n)`` channels, ``size_rounded`` rounds a resampling group's
        output size half up instead of flooring it.
    transpose : {None, "a", "b"}
        A defect: that kernel read in the transposed layout. A mixed-up kernel is laid
        out with its own shape (blocks of its rows and columns, its own corner
        wrapped), as index arithmetic written against the kernel's shape does.

    Returns
    -------
    dict
        ``y``, ``grad_x``, ``grad_weight_a_G``, ``grad_weight_b_G`` as float64 arrays
        holding numbers of the storage type (``y`` only when a size defect changes the
        output shape: a port's backward receives ``grad_y`` of the true size); None
        when a defect cannot be applied (a mixed-up kernel smaller than its shift, or
        groups whose rounded output sizes disagree).

    Raises
    ------
    TypeError, ValueError
        A bad dtype, ``transpose`` or defect flag (each flag must be True or False); an
        array missing, not real, or of a shape that does not fit ``specs``.
    """
    dtype = dtype_name(dtype)
    storage = dtype if storage is None else dtype_name(storage, "storage")
    acc = dtype_name(accumulate, "accumulate")
    if acc == "bfloat16":
        raise ValueError("accumulate='bfloat16' is not emulated; use 'float16', 'float32' or 'float64'")
    if not (transpose is None or (isinstance(transpose, str) and transpose in ("a", "b"))):
        raise ValueError(f"transpose must be None, 'a' or 'b', got {transpose!r}")
    corner, swap, shifts = as_flag(corner, "corner"), as_flag(swap, "swap"), as_flag(shifts, "shifts")
    split_rounded_up = as_flag(split_rounded_up, "split_rounded_up")
    size_rounded = as_flag(size_rounded, "size_rounded")
    groups = parse_specs(specs)
    given = _neocell_arrays(arrays, groups)
    rnd = lambda a: round_to(a, storage)  # noqa: E731
    inp = lambda key: round_to(given[key].astype(np.float64), storage)  # noqa: E731
    x, grad_y = inp("x"), inp("grad_y")
    n, _, height, width = x.shape
    if size_rounded:
        sizes = {(_axis_out(height, g.h_in, g.h_out, True), _axis_out(width, g.w_in, g.w_out, True)) for g in groups}
        if len(sizes) != 1:
            return None
        h_out, w_out = sizes.pop()
    else:
        h_out, w_out = check_input_size(groups, height, width)
    backward = grad_y.shape[2:] == (h_out, w_out)
    out = {"y": np.zeros((n, x.shape[1], h_out, w_out)), "grad_x": np.zeros(x.shape)}
    channel = 0
    for g, spec in enumerate(groups):
        wa, wb = inp(f"weight_a_{g}"), inp(f"weight_b_{g}")
        if swap:
            wa, wb = wb.transpose(0, 2, 1), wa.transpose(0, 2, 1)
        if transpose == "a":
            wa = wa.transpose(0, 2, 1)
        if transpose == "b":
            wb = wb.transpose(0, 2, 1)
        shifts_a, shifts_b = spec.channel_shifts()
        if split_rounded_up:
            shifts_a = _ceil_split_shifts(spec.channels, spec.shift_a, spec.subgroups_a)
            shifts_b = _ceil_split_shifts(spec.channels, spec.shift_b, spec.subgroups_b)
        if not shifts:
            shifts_a, shifts_b = 0 * shifts_a, 0 * shifts_b
        if int(shifts_a.max(initial=0)) >= min(wa.shape[1:]) or int(shifts_b.max(initial=0)) >= min(wb.shape[1:]):
            return None
        grads_a, grads_b = np.zeros(wa.shape), np.zeros(wb.shape)
        for i in range(spec.channels):
            sa, sb = int(shifts_a[i]), int(shifts_b[i])
            a_full = expand_kernel(wa[i], h_out, height, sa)
            b_full = expand_kernel(wb[i], width, w_out, sb)
            if not corner:
                a_full[:sa, :sa] = 0
                b_full[:sb, :sb] = 0
            xc = x[:, channel]
            z = rnd(_matmul_acc(a_full, xc, acc))  # stored Â x
            out["y"][:, channel] = rnd(_matmul_acc(z, b_full, acc))
            if not backward:
                channel += 1
                continue
            dy = grad_y[:, channel]
            dz = rnd(_matmul_acc(dy, b_full.T, acc))  # stored dy B̂ᵀ
            out["grad_x"][:, channel] = rnd(_matmul_acc(a_full.T, dz, acc))
            # Σ_n dz xᵀ and Σ_n zᵀ dy: one float32 sum over samples and columns.
            grad_a_full = _matmul_acc(
                dz.transpose(1, 0, 2).reshape(h_out, -1), xc.transpose(0, 2, 1).reshape(-1, height), acc
            )
            grad_b_full = _matmul_acc(z.transpose(2, 0, 1).reshape(width, -1), dy.reshape(-1, w_out), acc)
            if not corner:
                grad_a_full[:sa, :sa] = 0
                grad_b_full[:sb, :sb] = 0
            grads_a[i] = rnd(_fold(grad_a_full, *wa.shape[1:], sa, acc))
            grads_b[i] = rnd(_fold(grad_b_full, *wb.shape[1:], sb, acc))
            channel += 1
        # Back to the stored weights' layout (the chain rule through the mix-up).
        if transpose == "a":
            grads_a = grads_a.transpose(0, 2, 1)
        if transpose == "b":
            grads_b = grads_b.transpose(0, 2, 1)
        if swap:
            grads_a, grads_b = grads_b.transpose(0, 2, 1), grads_a.transpose(0, 2, 1)
        out[f"grad_weight_a_{g}"] = grads_a
        out[f"grad_weight_b_{g}"] = grads_b
    return out if backward else {"y": out["y"]}


def emulate_layer(kind, arrays, order, options, dtype, *, storage=None):
    """A layer as a mixed-precision port computes it: the reference layer run in
    float32 on the half-precision inputs (sums, statistics and elementary functions
    in float32), every result rounded once to ``storage`` (default ``dtype``).

    Parameters
    ----------
    kind : str
        A layer kind of :mod:`neocell_ref.registry` with a forward/backward pair
        (``"linear"``, ``"batchnorm"``, ``"gelu"``, ...).
    arrays : dict of str -> array_like
        The layer's inputs, keyed by the names in ``order``, and ``grad_y`` (the shape
        of the layer's output): the inputs of a golden layer case. They are rounded
        to ``storage`` before use.
    order : sequence of str
        Names of the inputs in the order of the layer's positional arguments (the
        manifest's ``input_order``).
    options : dict
        Keyword options of the layer's forward and backward (the manifest's ``options``).
    dtype : str or numpy.dtype
        The golden set's dtype, one of :data:`FLOAT_DTYPES`.
    storage : str or numpy.dtype, optional
        The type the inputs and results are rounded to; default ``dtype``.

    Returns
    -------
    dict
        ``y`` and ``grad_<input>`` for every differentiated input, float64 arrays.

    Raises
    ------
    ValueError
        ``kind`` names no layer with a forward/backward pair; ``dtype`` or ``storage``
        is not one of :data:`FLOAT_DTYPES`.
    KeyError
        ``arrays`` lacks an input named in ``order`` or ``grad_y``.
    """
    from .. import registry

    dtype = dtype_name(dtype)
    storage = dtype if storage is None else dtype_name(storage, "storage")
    # The registry's record is the one place a layer kind's functional pair is named.
    try:
        pair = registry.get(kind).functions
    except ValueError:
        pair = None
    if pair is None:
        kinds = [k for k in registry.names() if registry.get(k).functions is not None]
        raise ValueError(f"kind must name a layer with a forward/backward pair, one of {kinds}, got {kind!r}")
    forward, backward = pair
    inputs = [round_to(np.asarray(arrays[k], dtype=np.float64), storage).astype(np.float32) for k in order]
    grad_y = round_to(np.asarray(arrays["grad_y"], dtype=np.float64), storage).astype(np.float32)
    out = {"y": round_to(forward(*inputs, **options), storage)}
    for name, grad in zip(order, backward(grad_y, *inputs, **options)):
        if grad is not None:
            out[f"grad_{name}"] = round_to(grad, storage)
    return out
