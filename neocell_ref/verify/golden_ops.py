"""The operations of the golden oracle: their curated cases, reference computation,
tolerances, and how a port is called (see :mod:`neocell_ref.verify.golden` for the file format
and the verifier, ``docs/porting.md`` for the conventions and the tolerance policy).

An :class:`Operation` bundles

* ``cases(suite)``: the curated cases, ``(name, spec, shape)`` each;
* ``make(name, spec, shape, dtype, rng)``: inputs drawn from ``rng`` in ``dtype``,
  expected outputs computed by the reference in float64, and the tolerance of every
  expected array;
* ``run_port(arrays, meta, forward, backward)``: the port called in the operation's
  convention, returning ``{expected array name: what the port computed}``.

Every case is made by :func:`make_case` with the arrays of
:func:`neocell_ref.verify.tolerances.case_rng` (the seeding rule); an exported golden set
and the in-memory conformance kit (:mod:`neocell_ref.verify.testing`) both call it, so
the same case name, dtype and seed give the same arrays in both. The tolerances come
from the rules of :mod:`neocell_ref.verify.tolerances`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import registry
from ..expansion import expand_kernel
from ..neocell import neocell_backward, neocell_forward
from ..spec import check_input_size, parse_specs
from .precision import HALF_DTYPES, dtype_name, store
from .tolerances import ELEMENTARY_ULPS, MODEL_RTOL, case_rng, gradient_peers, half_tolerance, sum_tolerance


def make_case(op_name: str, case, dtype, seed: int):
    """Make one curated case of ``op_name`` with the arrays of :func:`case_rng`.

    Parameters
    ----------
    op_name : str
        A key of :data:`OPERATIONS`.
    case : tuple
        ``(name, spec, shape)`` as listed by ``OPERATIONS[op_name].cases(suite)``.
    dtype : {"float64", "float32", "float16", "bfloat16"} or a NumPy dtype
        dtype of the inputs (a bfloat16 case stores them as float32 arrays of
        bfloat16 numbers, :func:`neocell_ref.verify.precision.store`).
    seed : int

    Returns
    -------
    meta, arrays, inputs, tolerances
        As the operation's ``make`` returns them.
    """
    name, spec, shape = case
    # The reference does not depend on the caller's np.seterr (a port module may set
    # all="raise" when it is imported): underflow to 0 and subnormals are part of it,
    # and a non-finite result is refused by the set's own checks.
    with np.errstate(all="ignore"):
        return OPERATIONS[op_name].make(name, spec, shape, dtype_name(dtype), case_rng(op_name, name, seed))


# --------------------------------------------------------------------------------------
# half-precision sets: how far a stored intermediate's error propagates
# --------------------------------------------------------------------------------------
def _largest_sum(values) -> float:
    """``max`` over leading index of ``Σ |values[i]|`` (exact for the few hundred
    half-precision numbers of a golden channel; float64 sums of them are exact)."""
    values = np.abs(np.asarray(values, dtype=np.float64))
    return float(values.reshape(values.shape[0], -1).sum(axis=1).max(initial=0.0))


def _neocell_propagation(groups, arrays):
    """Per expected NeoCell array, the factor by which the second product multiplies
    the absolute error of the rounded intermediate (``z`` or ``dz``): the largest
    column sum of ``|B̂|`` (for ``y``), of ``|Â|`` over its rows (``grad_x``), and the
    largest ``Σ |x|`` (``grad_weight_a``) or ``Σ |dy|`` (``grad_weight_b``) of a channel."""
    x, gy = arrays["x"], arrays["grad_y"]
    _, _, h, w = x.shape
    h_out, w_out = check_input_size(groups, h, w)
    prop = {"y": 0.0, "grad_x": 0.0}
    start = 0
    for g, spec in enumerate(groups):
        wa = np.abs(np.asarray(arrays[f"weight_a_{g}"], dtype=np.float64))
        wb = np.abs(np.asarray(arrays[f"weight_b_{g}"], dtype=np.float64))
        shifts_a, shifts_b = spec.channel_shifts()
        for i in range(spec.channels):
            b_full = expand_kernel(wb[i], w, w_out, int(shifts_b[i]))
            a_full = expand_kernel(wa[i], h_out, h, int(shifts_a[i]))
            prop["y"] = max(prop["y"], float(b_full.sum(axis=0).max(initial=0.0)))
            prop["grad_x"] = max(prop["grad_x"], float(a_full.sum(axis=0).max(initial=0.0)))
        channels = slice(start, start + spec.channels)
        prop[f"grad_weight_a_{g}"] = _largest_sum(np.moveaxis(x[:, channels], 1, 0))
        prop[f"grad_weight_b_{g}"] = _largest_sum(np.moveaxis(gy[:, channels], 1, 0))
        start += spec.channels
    return prop


# --------------------------------------------------------------------------------------
# the NeoCell operation
# --------------------------------------------------------------------------------------
def _k(kernel, channels, shift=0):
    return {"kernel": kernel, "channels": channels, "shift": shift}


#: Curated NeoCell cases: (name, specs as official dicts, input shape (N, C, H, W)).
#: Each covers a rule of SPEC sections 2-6; the comment says which.
NEOCELL_CASES_CORE = [
    # plain square kernel, size a multiple of the kernel
    ("k7_square_14x14", [_k(7, 4)], (2, 4, 14, 14)),
    # partial tiles: 10 is not a multiple of 7
    ("k7_partial_10x12", [_k(7, 3)], (2, 3, 10, 12)),
    # input smaller than the kernel, down to 1x1
    ("k7_input_1x1", [_k(7, 2)], (3, 2, 1, 1)),
    ("k5_input_2x3", [_k(5, 2)], (2, 2, 2, 3)),
    # "4+7" with shift 1 and uneven sub-groups (5 channels in 4 and in 7 sub-groups)
    ("mixed_4p7_shift1_uneven", [_k(4, 5, 1), _k(7, 5, 1)], (2, 10, 20, 20)),
    # "4+7" as a kernel code would split 96 channels, at a small size
    ("mixed_4p7_shift1_c14", [_k(4, 7, 1), _k(7, 7, 1)], (1, 14, 16, 23)),
    # every shift 1..6 of a 7-kernel, one group each
    ("k7_every_shift", [_k(7, 7, s) for s in range(1, 7)], (1, 42, 16, 16)),
    # shift_a != shift_b
    ("k5_shifta2_shiftb1", [{"kernel": 5, "channels": 7, "shift_a": 2, "shift_b": 1}], (1, 7, 15, 13)),
    # kernel_a / kernel_b form with shifts
    ("ka3_kb5_shift1", [{"kernel_a": 3, "kernel_b": 5, "channels": 6, "shift": 1}], (2, 6, 9, 11)),
    # largest used shift equal to the spatial size: kernel 4, shift 3 -> 2 sub-groups, max shift 3 = H
    ("k4_shift3_max_eq_size", [_k(4, 4, 3)], (1, 4, 3, 5)),
    # down-sampling 2 -> 1 (the NeoNeXt down-sampling layer), odd sizes (floor)
    ("down_2to1_9x7", [{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 6}], (2, 6, 9, 7)),
    # up-sampling 1 -> 2 and 1 -> 3
    ("up_1to2_1to3", [{"h_in": 1, "h_out": 2, "w_in": 1, "w_out": 3, "channels": 3}], (2, 3, 4, 5)),
    # non-integer ratios 2 -> 3 and 3 -> 2 with partial tiles
    ("ratio_2to3_3to2", [{"h_in": 2, "h_out": 3, "w_in": 3, "w_out": 2, "channels": 2}], (1, 2, 6, 9)),
    # mixed groups with different kernels but the same down-sampling ratio
    (
        "mixed_down_2to1_4to2",
        [
            {"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 3},
            {"h_in": 4, "h_out": 2, "w_in": 4, "w_out": 2, "channels": 2},
        ],
        (1, 5, 12, 8),
    ),
    # rectangular input, mixed "3+5" with shift 2 (3: 2 sub-groups; 5: 3 sub-groups)
    ("mixed_3p5_shift2_rect", [_k(3, 4, 2), _k(5, 5, 2)], (2, 9, 6, 17)),
    # beyond the usual block sizes of a kernel's grid (32, 64, 128): more than 128
    # channels, and planes of more than 128 rows and columns, each past a multiple of
    # both kernels (a port that covers only the first block of either fails)
    ("mixed_4p7_shift1_130ch", [_k(4, 65, 1), _k(7, 65, 1)], (1, 130, 9, 10)),
    ("mixed_4p7_shift1_131x134", [_k(4, 3, 1), _k(7, 3, 1)], (1, 6, 131, 134)),
]

#: Larger cases added by the "full" suite: NeoNeXt-T stage shapes at batch 1.
NEOCELL_CASES_FULL = [
    ("neonext_t_stage1", [_k(4, 48, 1), _k(7, 48, 1)], (1, 96, 56, 56)),
    ("neonext_t_stage3", [_k(7, 384, 1)], (1, 384, 14, 14)),
    ("neonext_t_stage4", [_k(7, 768, 0)], (1, 768, 7, 7)),
    ("neonext_t_downsample", [{"h_in": 2, "h_out": 1, "w_in": 2, "w_out": 1, "channels": 192}], (1, 192, 56, 56)),
]


def _neocell_accumulation(specs, x_shape):
    """Accumulation length per expected array (see the module docstring).

    * ``y = Â x B̂``: at most ``h_in`` terms on the left, ``w_in`` on the right.
    * ``grad_x = Âᵀ (dy B̂ᵀ)``: ``w_out + h_out``.
    * ``grad_a``: ``dz = dy B̂ᵀ`` (``w_out``), then a sum over samples, columns and the
      blocks sharing a kernel entry: ``N · W · blocks_h`` with ``blocks_h =
      ceil(H_out / h_out) + 1`` (the tiles of the padded view, one more than fit).
    * ``grad_b``: ``z = Â x`` (``h_in``), then ``N · H_out · blocks_w`` with
      ``blocks_w = ceil(W / w_in) + 1``.
    """
    n, _, h, w = x_shape
    h_out, w_out = check_input_size(specs, h, w)
    acc = {
        "y": max(g.h_in + g.w_in for g in specs),
        "grad_x": max(g.h_out + g.w_out for g in specs),
    }
    for i, g in enumerate(specs):
        blocks_h = -(-h_out // g.h_out) + 1
        blocks_w = -(-w // g.w_in) + 1
        acc[f"grad_weight_a_{i}"] = g.w_out + n * w * blocks_h
        acc[f"grad_weight_b_{i}"] = g.h_in + n * h_out * blocks_w
    return acc


def _neocell_reference(arrays, specs, groups):
    """Expected outputs and magnitude bounds, in float64, from stored inputs."""
    x = arrays["x"].astype(np.float64)
    wa = [arrays[f"weight_a_{g}"].astype(np.float64) for g in range(groups)]
    wb = [arrays[f"weight_b_{g}"].astype(np.float64) for g in range(groups)]
    gy = arrays["grad_y"].astype(np.float64)
    out = {}
    for prefix, xs, was, wbs, gys in (
        ("", x, wa, wb, gy),
        ("bound/", np.abs(x), [np.abs(a) for a in wa], [np.abs(b) for b in wb], np.abs(gy)),
    ):
        # Same sums of products on absolute values: the per-element magnitude bound.
        out[prefix + "y"] = neocell_forward(xs, was, wbs, specs, method="blockdiag")
        gx, ga, gb = neocell_backward(gys, xs, was, wbs, specs, method="blockdiag")
        out[prefix + "grad_x"] = gx
        for g in range(groups):
            out[prefix + f"grad_weight_a_{g}"] = ga[g]
            out[prefix + f"grad_weight_b_{g}"] = gb[g]
    return out


@np.errstate(all="ignore")  # independent of the caller's np.seterr, as make_case
def neocell_expected(specs, arrays, dtype=None):
    """Reference outputs, magnitude bounds and tolerances for one NeoCell case.

    Parameters
    ----------
    specs : list of dict or GroupSpec
    arrays : dict
        Inputs ``x``, ``weight_a_G``, ``weight_b_G``, ``grad_y`` in the port's dtype.
    dtype : str, optional
        The case's dtype when it is not the arrays' own (``"bfloat16"``, stored as
        float32). float16 and bfloat16 get the mixed-precision tolerances of
        :func:`half_tolerance`: two roundings to the half type on every path.

    Returns
    -------
    expected : dict
        ``y``, ``grad_x``, ``grad_weight_a_G``, ``grad_weight_b_G`` (float64) and their
        bounds ``bound/NAME``.
    tolerances : dict
        Per expected array: ``rtol``, ``atol``, ``accumulation_length``, ``bound``
        (see the module docstring).
    """
    groups = parse_specs(specs)
    dtype = dtype_name(np.result_type(*(a.dtype for a in arrays.values())) if dtype is None else dtype)
    expected = _neocell_reference(arrays, groups, len(groups))
    if dtype in HALF_DTYPES:
        # Every array passes through two roundings to the half type: the stored
        # intermediate (z = Â x for y and grad_b, dz = dy B̂ᵀ for grad_x and grad_a)
        # and the stored result; the intermediate's error reaches the result through
        # the second product, i.e. relative to the same magnitude bound.
        prop = _neocell_propagation(groups, arrays)
        tolerances = {
            key: {**half_tolerance(dtype, n, 2, prop[key]), "bound": f"bound/{key}"}
            for key, n in _neocell_accumulation(groups, arrays["x"].shape).items()
        }
        return expected, tolerances
    tolerances = {
        key: {**sum_tolerance(dtype, n), "bound": f"bound/{key}"}
        for key, n in _neocell_accumulation(groups, arrays["x"].shape).items()
    }
    return expected, tolerances


def _neocell_make(name, specs_dicts, x_shape, dtype, rng):
    dtype = dtype_name(dtype)
    specs = parse_specs(specs_dicts)
    x = rng.standard_normal(x_shape)
    h_out, w_out = check_input_size(specs, x_shape[2], x_shape[3])
    arrays = {"x": x}
    for g, spec in enumerate(specs):
        # Fully random kernels (not NeoInit): the skewed identity would make many
        # products exact and hide accumulation mistakes.
        arrays[f"weight_a_{g}"] = rng.standard_normal(spec.shape_a)
        arrays[f"weight_b_{g}"] = rng.standard_normal(spec.shape_b)
    arrays["grad_y"] = rng.standard_normal((x_shape[0], x_shape[1], h_out, w_out))
    arrays = {k: store(v, dtype) for k, v in arrays.items()}
    expected, tolerances = neocell_expected(specs_dicts, arrays, dtype)
    inputs = sorted(arrays)
    arrays.update(expected)
    meta = {"specs": [g.to_dict() for g in specs], "specs_as_written": specs_dicts, "x_shape": list(x_shape)}
    return meta, arrays, inputs, tolerances


def snapshot(value):
    """A port's output as it is when its call returns, safe from what the port does later.

    A port may return a buffer it keeps and writes again in its next call (the
    backward recomputing ``y`` into the forward's output buffer; the training forward
    reusing the inference forward's logits): compared later, the first call's output
    would be the second call's values, hiding a wrong one or failing a right one. So
    every output is copied when its call returns. What converts to a non-object array
    is copied as that array (the comparison converts it the same way); anything else
    (a string, a ragged sequence, an object that cannot convert) is kept as it is and
    fails the comparison with its own message.
    """
    if isinstance(value, (str, bytes)):
        return value
    try:
        array = np.asarray(value)
    except KeyboardInterrupt:
        raise
    except BaseException:  # a port's object may raise anything: the comparison says so
        return value
    if array.dtype == object:
        return value
    return np.array(array, copy=True)


def _neocell_run_port(arrays, meta, forward, backward):
    """Call a port with the NeoCell convention; return ``{array name: output}``.

    Each call gets its own copy of the specs, and its outputs are copied when it
    returns (:func:`snapshot`)."""
    groups = len(meta["specs_as_written"])
    x = arrays["x"]
    wa = [arrays[f"weight_a_{g}"] for g in range(groups)]
    wb = [arrays[f"weight_b_{g}"] for g in range(groups)]
    got = {}
    if forward is not None:
        got["y"] = snapshot(forward(x, wa, wb, copy.deepcopy(meta["specs_as_written"])))
    if backward is not None:
        gx, ga, gb = backward(arrays["grad_y"], x, wa, wb, copy.deepcopy(meta["specs_as_written"]))
        for side, grads in (("a", ga), ("b", gb)):
            if len(grads) != groups:  # an extra gradient would be silently unchecked
                raise ValueError(f"backward returned {len(grads)} weight_{side} gradients for {groups} group(s)")
        got["grad_x"] = snapshot(gx)
        for g in range(groups):
            got[f"grad_weight_a_{g}"] = snapshot(ga[g])
            got[f"grad_weight_b_{g}"] = snapshot(gb[g])
    return got


@dataclass(frozen=True)
class Operation:
    """A golden operation: its cases per suite, how to make one, how to call a port."""

    name: str
    cases: Callable  # suite -> list of (name, spec, shape)
    make: Callable  # (name, spec, shape, dtype, rng) -> (meta, arrays, inputs, tolerances)
    run_port: Callable  # (arrays, meta, forward, backward) -> {array: got}
    convention: str


OPERATIONS = {
    "neocell": Operation(
        name="neocell",
        cases=lambda suite: NEOCELL_CASES_CORE + (NEOCELL_CASES_FULL if suite == "full" else []),
        make=_neocell_make,
        run_port=_neocell_run_port,
        convention=(
            "forward(x, weights_a, weights_b, specs) -> y; "
            "backward(grad_y, x, weights_a, weights_b, specs) -> (grad_x, grads_a, grads_b); "
            "specs are official-style dicts, weights lists per group"
        ),
    ),
}


# --------------------------------------------------------------------------------------
# the other layers of NeoNeXt
# --------------------------------------------------------------------------------------
# Whether a layer kind's outputs are plain sums of products (tolerances use the
# per-element magnitude bound, exactly as for NeoCell) or are compared normwise,
# ``|got - expected| <= rtol · max|expected|`` (normalisations, GELU: a bound on the sum
# of absolute terms does not exist for a division by a computed standard deviation or
# for erf, and cancellation inside them is part of their conditioning) is the kind's
# record's ``norm`` (neocell_ref.registry), as are its functional pair and its
# accumulation lengths (plus ELEMENTARY_ULPS of neocell_ref.verify.tolerances).

#: Curated layer cases: (name, layer kind, {positional input: shape}, options).
LAYER_CASES_CORE = [
    ("linear_channels_bias", "linear", {"x": (2, 6, 3, 5), "weight": (10, 6), "bias": (10,)}, {}),
    ("linear_vector_nobias", "linear", {"x": (4, 12), "weight": (5, 12)}, {}),
    ("conv1x1", "conv1x1", {"x": (2, 5, 4, 3), "weight": (7, 5, 1, 1)}, {}),
    (
        "batchnorm_training",
        "batchnorm",
        {"x": (3, 4, 5, 6), "weight": (4,), "bias": (4,), "running_mean": (4,), "running_var": (4,)},
        {"training": True, "eps": 1e-5},
    ),
    (
        "batchnorm_inference",
        "batchnorm",
        {"x": (3, 4, 5, 6), "weight": (4,), "bias": (4,), "running_mean": (4,), "running_var": (4,)},
        {"training": False, "eps": 1e-5},
    ),
    ("layernorm_vector", "layernorm", {"x": (4, 12), "weight": (12,), "bias": (12,)}, {"eps": 1e-6}),
    ("layernorm_channels", "layernorm", {"x": (2, 5, 3, 3), "weight": (5,), "bias": (5,)}, {"eps": 1e-6}),
    ("gelu", "gelu", {"x": (4, 64)}, {}),
    ("patchify", "patchify", {"x": (2, 3, 8, 12)}, {"patch": 4}),
    ("avgpool", "avgpool", {"x": (2, 5, 3, 4)}, {}),
    ("layer_scale", "layer_scale", {"x": (2, 6, 3, 3), "gamma": (6,)}, {}),
    ("drop_path", "drop_path", {"x": (4, 3, 2, 2), "scale": (4,)}, {}),
]


def _layer_functions(kind):
    functions = registry.get(kind).functions
    if functions is None:  # pragma: no cover - NeoCell has its own operation
        raise ValueError(f"layer kind {kind!r} has no functional pair for golden layer cases")
    return functions


def _elementwise_bound(kind) -> bool:
    return registry.get(kind).norm == "elementwise"


def _layer_inputs(kind, shapes, rng):
    """Random inputs; statistics positive, GELU inputs spanning its interesting range."""
    arrays = {}
    for name, shape in shapes.items():
        if name == "running_var":
            arrays[name] = rng.uniform(0.5, 1.5, shape)
        elif name == "scale":  # drop path: dropped samples scale 0, kept ones 1/(1 - p)
            arrays[name] = np.where(np.arange(shape[0]) % 3 == 1, 0.0, 1.0 / (1.0 - 0.2))
        elif kind == "gelu":
            grid = np.concatenate([np.linspace(-8, 8, shape[1] // 2), [0.0, 1e-30, -1e-30, 1e-4, -1e-4, 40.0, -40.0]])
            x = np.concatenate([grid, rng.standard_normal(shape[1] - grid.size) * 3])
            arrays[name] = x[None, :] * rng.uniform(0.5, 1.5, (shape[0], 1))
        else:
            arrays[name] = rng.standard_normal(shape)
    return arrays


def _layer_accumulation(kind, shapes, options):
    """Accumulation length per expected array (``y`` and ``grad_<input>``), from the
    kind's record."""
    accumulation = registry.get(kind).accumulation
    if accumulation is None:  # pragma: no cover - NeoCell has its own operation
        raise ValueError(f"no accumulation rule for layer {kind!r}")
    return accumulation(shapes, options, ELEMENTARY_ULPS)


def _layer_expected(kind, arrays, order, options, grad_y):
    forward, backward = _layer_functions(kind)
    inputs = [arrays[n].astype(np.float64) for n in order]
    out = {"y": forward(*inputs, **options)}
    for name, grad in zip(order, backward(grad_y.astype(np.float64), *inputs, **options)):
        if grad is not None:
            out[f"grad_{name}"] = grad
    if _elementwise_bound(kind):  # magnitude bound: the same sums on absolute values
        abs_inputs = [np.abs(a) for a in inputs]
        out["bound/y"] = forward(*abs_inputs, **options)
        for name, grad in zip(order, backward(np.abs(grad_y.astype(np.float64)), *abs_inputs, **options)):
            if grad is not None:
                out[f"bound/grad_{name}"] = np.abs(grad)
    return out


def _layer_make(kind):
    def make(name, spec, shapes, dtype, rng):
        dtype = dtype_name(dtype)
        options = dict(spec)
        arrays = {k: store(v, dtype) for k, v in _layer_inputs(kind, shapes, rng).items()}
        order = list(shapes)
        forward, _ = _layer_functions(kind)
        y_shape = forward(*[arrays[n].astype(np.float64) for n in order], **options).shape
        arrays["grad_y"] = store(rng.standard_normal(y_shape), dtype)
        expected = _layer_expected(kind, arrays, order, options, arrays["grad_y"])
        inputs = sorted(arrays)
        acc = _layer_accumulation(kind, shapes, options)
        tolerances = {}
        for key in expected:
            if key.startswith("bound/"):
                continue
            n = acc[key]
            # Half precision: one rounding to the half type, the stored result (sums,
            # statistics and elementary functions in float32).
            rule = half_tolerance(dtype, n, 1) if dtype in HALF_DTYPES else sum_tolerance(dtype, n)
            tolerances[key] = {
                **rule,
                "bound": f"bound/{key}" if _elementwise_bound(kind) else None,
                "norm": registry.get(kind).norm,
            }
        arrays.update(expected)
        meta = {
            "layer": kind,
            "input_order": order,
            "options": options,
            "shapes": {k: list(v) for k, v in shapes.items()},
        }
        return meta, arrays, inputs, tolerances

    return make


def _layer_run_port(arrays, meta, forward, backward):
    order = meta["input_order"]
    inputs = [arrays[n] for n in order]
    got = {}
    if forward is not None:
        got["y"] = snapshot(forward(*inputs, **copy.deepcopy(meta["options"])))
    if backward is not None:
        grads = [snapshot(g) for g in backward(arrays["grad_y"], *inputs, **copy.deepcopy(meta["options"]))]
        # One gradient per positional input; trailing ones for optional inputs that
        # were not given (a missing bias) must be None.
        if len(grads) < len(order) or any(g is not None for g in grads[len(order) :]):
            raise ValueError(f"backward returned {len(grads)} gradients for inputs {order}")
        for name, grad in zip(order, grads):
            if f"grad_{name}" in meta["tolerances"]:
                got[f"grad_{name}"] = grad
            elif grad is not None:  # nothing would compare it: a port computing one is wrong
                raise ValueError(
                    f"backward returned a gradient for {name!r}, which is not differentiated "
                    "(running statistics, the drop-path scale): it must be None"
                )
    return got


def _layer_operation(kind):
    forward, backward = _layer_functions(kind)
    return Operation(
        name=kind,
        cases=lambda suite, kind=kind: [(n, opts, shapes) for n, k, shapes, opts in LAYER_CASES_CORE if k == kind],
        make=_layer_make(kind),
        run_port=_layer_run_port,
        convention=(
            f"forward(*inputs, **options) -> y; backward(grad_y, *inputs, **options) -> one gradient per "
            f"positional input (None where not differentiated); inputs in the manifest's input_order, "
            f"as {forward.__module__}.{forward.__name__}/{backward.__name__}"
        ),
    )


# --------------------------------------------------------------------------------------
# a whole small NeoNeXt
# --------------------------------------------------------------------------------------
#: Curated model cases: (name, NeoNeXtConfig options, input shape).
MODEL_CASES_CORE = [
    (
        "tiny_default_options",
        dict(per_stage_layers=(1, 1, 2, 1), dims=(8, 16, 32, 64), num_classes=10),
        (2, 3, 112, 112),
    ),
    (
        "tiny_released_options",
        dict(
            per_stage_layers=(1, 2, 1, 1),
            dims=(8, 16, 24, 32),
            num_classes=7,
            kernel_spec="4+7",
            linear_bias=True,
            layer_scale_init_value=0.5,
            shifts=(1, 1, 1, 0),
        ),
        (2, 3, 112, 96),
    ),
]


def _random_state(model, rng):
    """Every parameter and BatchNorm buffer drawn at random, like the official data.

    Drawn in state-dict order, each entry by its role (:data:`neocell_ref.registry.ROLES`)
    in its layer kind's record: scales and variances ``U(0.5, 1.5)``, NeoCell kernels
    their value plus ``0.1·N(0, 1)`` (NeoInit-like: identity-ish plus noise keeps the
    signals O(1)), weights ``N(0, 1/fan_in)``, shifts ``0.1·N(0, 1)``; counters are kept.
    Returns ``(state, roles)``: ``{key: array}`` and ``{key: role}``.
    """
    state, roles = {}, {}
    current = model.state_dict()
    for key, desc, entry, _, _ in model.architecture.entries():
        value = current[key]
        role = roles[key] = registry.get(desc.kind).roles(entry)
        if role == "count":
            state[key] = np.asarray(value)
        elif role in ("scale", "variance"):
            state[key] = rng.uniform(0.5, 1.5, value.shape)
        elif role == "kernel":
            state[key] = np.asarray(value, dtype=np.float64) + 0.1 * rng.standard_normal(value.shape)
        elif role == "weight" and value.ndim > 1:
            state[key] = rng.standard_normal(value.shape) / np.sqrt(int(np.prod(value.shape[1:])))
        else:  # shifts (biases, running means) and vectors of weights
            state[key] = 0.1 * rng.standard_normal(value.shape)
    return state, roles


#: Operations that have no half-precision golden cases, with the reason (said in
#: ``docs/porting.md``, "Half precision").
HALF_EXCLUDED = {
    "model": (
        "no sound tolerance: a whole NeoNeXt in half precision has no a-priori bound (a dozen "
        "normalisations divide by computed standard deviations) and this package has no "
        "mixed-precision emulation of the whole network to measure one on; verify the model "
        "in float32 and its NeoCells and layers in half precision"
    ),
}


def _model_make(name, config, x_shape, dtype, rng):
    from ..models import NeoNeXt

    dtype = dtype_name(dtype)
    if dtype in HALF_DTYPES:
        raise ValueError(f"operation 'model' has no {dtype} golden cases: {HALF_EXCLUDED['model']}")
    model = NeoNeXt(**config, dtype=np.float64, rng=np.random.default_rng(0), resolution=tuple(x_shape[2:]))
    model.fast_training = False  # expected values from the plain, layer-by-layer formulation
    state, roles = _random_state(model, rng)
    arrays = {f"state/{k}": (v if roles[k] == "count" else v.astype(dtype)) for k, v in state.items()}
    arrays["x"] = rng.standard_normal(x_shape).astype(dtype)
    arrays["grad_logits"] = rng.standard_normal((x_shape[0], config["num_classes"])).astype(dtype)
    model.load_state_dict(
        {
            k: arrays[f"state/{k}"] if roles[k] == "count" else np.asarray(arrays[f"state/{k}"], dtype=np.float64)
            for k in state
        }
    )
    x64 = arrays["x"].astype(np.float64)
    expected = {"logits_eval": model.forward(x64, training=False)}
    expected["logits_train"] = model.forward(x64, training=True)
    expected["grad_x"] = model.backward(arrays["grad_logits"].astype(np.float64))
    for key, grad in model.grads.items():
        expected[f"grad/{key}"] = grad
    inputs = sorted(arrays)
    rtol = MODEL_RTOL[np.dtype(dtype).name]
    # Parameter gradients are compared normwise per layer (gradient_peers): relative to
    # the largest gradient among the parameters of the same layer.
    peers = gradient_peers(expected, model.architecture)
    tolerances = {}
    for key in expected:
        tolerances[key] = {
            "rtol": rtol["logits" if key.startswith("logits") else "grad"],
            "atol": 0.0,
            "accumulation_length": None,
            "bound": None,
            "norm": "max",
            "scale_with": peers.get(key, [key]),
        }
    arrays.update(expected)
    meta = {"config": dict(config), "x_shape": list(x_shape)}
    return meta, arrays, inputs, tolerances


def _model_run_port(arrays, meta, forward, backward):
    def state():  # a fresh copy per call: a port may update buffers in place
        return {k[len("state/") :]: np.array(v) for k, v in arrays.items() if k.startswith("state/")}

    def config():  # a fresh copy per call: a port may change the dict or its lists
        return copy.deepcopy(meta["config"])

    got = {}
    if forward is not None:
        # each output copied before the next call (snapshot): the two forwards may share a buffer
        got["logits_eval"] = snapshot(forward(np.array(arrays["x"]), state(), config(), False))
        got["logits_train"] = snapshot(forward(np.array(arrays["x"]), state(), config(), True))
    if backward is not None:
        grad_x, grads = backward(arrays["grad_logits"], arrays["x"], state(), config())
        got["grad_x"] = snapshot(grad_x)
        wanted = {k[len("grad/") :] for k in meta["tolerances"] if k.startswith("grad/")}
        missing = sorted(wanted - set(grads))
        if missing:
            raise ValueError(f"backward returned no gradient for {missing}")
        # A gradient under a name the state dict lacks (a misnamed parameter's) would go
        # unchecked; entries for buffers (a port differentiating the whole state) are ignored.
        state_names = {k[len("state/") :] for k in arrays if k.startswith("state/")}
        extra = sorted(set(grads) - wanted - state_names, key=str)
        if extra:
            raise ValueError(f"backward returned gradients for names the model does not have: {extra[:5]}")
        for key in meta["tolerances"]:
            if key.startswith("grad/"):
                got[key] = snapshot(grads[key[len("grad/") :]])
    return got


OPERATIONS.update({kind: _layer_operation(kind) for kind in dict.fromkeys(k for _, k, _, _ in LAYER_CASES_CORE)})
OPERATIONS["model"] = Operation(
    name="model",
    cases=lambda suite: MODEL_CASES_CORE,
    make=_model_make,
    run_port=_model_run_port,
    convention=(
        "forward(x, state, config, training) -> logits; backward(grad_logits, x, state, config) -> "
        "(grad_x, {state-dict name: gradient}) of sum(logits * grad_logits) in training mode; state holds "
        "every parameter and buffer under the official names in PyTorch layouts, config the NeoNeXtConfig options"
    ),
)
