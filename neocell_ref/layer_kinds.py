"""The records of the built-in layer kinds (:mod:`neocell_ref.registry`), one per kind.

Each kind's record sits beside what is specific to it: how its parameters are
initialised, the adapter that runs its functional pair of :mod:`neocell_ref.layers`
(or the NeoCell core) inside :class:`neocell_ref.models.NeoNeXt`, its cost in every
counting convention of :mod:`neocell_ref.calculator`, and the accumulation lengths of its
golden cases (:mod:`neocell_ref.verify.golden_ops`). Importing the package registers them.

Adding a kind is one :func:`neocell_ref.registry.register` call with such a record;
:func:`neocell_ref.registry.get` serves it to the description, the model, the calculator
and the golden oracle.
"""

from __future__ import annotations

import math

import numpy as np

from . import calculator as _cx
from . import layers as L
from .init import neo_init
from .neocell import neocell_backward, neocell_forward
from .registry import LayerKind, register
from .validation import as_int

# The calculator's constants and neocell_counts are read at call time (``_cx.NAME``), so
# that a test that patches one of them (a mutant of the calculator) reaches every count.

__all__ = ["INIT_STD", "trunc_normal", "neocell_state_names"]

#: Standard deviation of the truncated normal used for 1x1 convolutions and Linear layers.
INIT_STD = 0.02


def trunc_normal(rng, shape, std=INIT_STD, dtype=np.float64):
    """Normal ``N(0, std²)`` samples truncated to ``[-2·std, 2·std]`` by redrawing.

    Every value outside the interval is replaced by a fresh draw until none is left
    (the redraws consume ``rng`` in a deterministic order).

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : tuple of int
    std : float
    dtype : float32 or float64

    Returns
    -------
    ndarray of ``shape``
    """
    values = rng.standard_normal(shape)
    bad = np.abs(values) > 2.0
    while bad.any():
        values[bad] = rng.standard_normal(int(bad.sum()))
        bad = np.abs(values) > 2.0
    return (values * std).astype(dtype)


# --------------------------------------------------------------------------------------
# helpers shared by the records
# --------------------------------------------------------------------------------------
def _no_state(in_shape, out_shape, options):
    return {}, {}


def _no_params(desc, rng, dtype):
    return {}


def _roles(table, default="weight"):
    return lambda name: table.get(name, default)


def _no_macs():
    return dict.fromkeys(_cx.CONVENTIONS, 0)


def _out_elems(layer):
    return math.prod(int(v) for v in layer.out_shape)


def _positions(shapes):
    """``(N·S, S)``: positions (samples times spatial size) and spatial size of ``x``."""
    x = shapes["x"]
    spatial = int(np.prod(x[2:], dtype=np.int64)) if len(x) > 2 else 1
    return x[0] * spatial, spatial


# --------------------------------------------------------------------------------------
# patchify: (C, H, W) -> (C·p², H/p, W/p), a reshape
# --------------------------------------------------------------------------------------
def _fwd_patchify(model, desc, x, training, inplace):
    return L.patchify_forward(x, patch=desc.options["patch"]), x, True


def _bwd_patchify(model, desc, grad, x):
    return L.patchify_backward(grad, x, patch=desc.options["patch"])[0]


register(
    LayerKind(
        "patchify",
        "``patch`` (4): ``(C, H, W) -> (C*16, H/4, W/4)``",
        state=_no_state,
        roles=_roles({}),
        init=_no_params,
        forward=_fwd_patchify,
        backward=_bwd_patchify,
        count=lambda layer: (_no_macs(), 0),  # a reshape
        functions=(L.patchify_forward, L.patchify_backward),
        accumulation=lambda shapes, options, elementary: {"y": 1, "grad_x": 1},
        norm="elementwise",
    )
)


# --------------------------------------------------------------------------------------
# 1x1 convolution and linear layer: one multiply per (output element, input channel)
# --------------------------------------------------------------------------------------
def _product_count(layer):
    macs = dict.fromkeys(_cx.CONVENTIONS, _out_elems(layer) * int(layer.in_shape[0]))
    # The bias is an addition per output element, not a MAC.
    bias = _cx._ELEMENTWISE_PER_ELEMENT["bias"] * _out_elems(layer) if layer.options.get("bias") else 0
    return macs, bias


def _product_accumulation(shapes, options, elementary):
    positions, _ = _positions(shapes)
    return {"y": shapes["x"][1], "grad_x": shapes["weight"][0], "grad_weight": positions, "grad_bias": positions}


def _fwd_conv1x1(model, desc, x, training, inplace):
    return L.conv1x1_forward(x, model.param(desc, "weight")), x, True


def _bwd_conv1x1(model, desc, grad, x):
    grad_x, grad_w = L.conv1x1_backward(grad, x, model.param(desc, "weight"))
    model.set_grad(desc, "weight", grad_w)
    return grad_x


register(
    LayerKind(
        "conv1x1",
        "bias-free 1x1 convolution; param ``weight`` (out, in, 1, 1)",
        state=lambda i, o, options: ({"weight": (o[0], i[0], 1, 1)}, {}),
        roles=_roles({}),
        init=lambda desc, rng, dtype: {"weight": trunc_normal(rng, desc.params["weight"], dtype=dtype)},
        init_draws_float64=True,
        forward=_fwd_conv1x1,
        backward=_bwd_conv1x1,
        count=_product_count,
        functions=(L.conv1x1_forward, L.conv1x1_backward),
        accumulation=_product_accumulation,
        norm="elementwise",
    )
)


def _linear_state(in_shape, out_shape, options):
    params = {"weight": (out_shape[0], in_shape[0])}
    if options["bias"]:
        params["bias"] = (out_shape[0],)
    return params, {}


def _init_linear(desc, rng, dtype):
    out = {"weight": trunc_normal(rng, desc.params["weight"], dtype=dtype)}
    if "bias" in desc.params:
        out["bias"] = np.zeros(desc.params["bias"], dtype=dtype)
    return out


def _linear_bias(model, desc):
    return model.param(desc, "bias") if "bias" in desc.params else None


def _fwd_linear(model, desc, x, training, inplace):
    return L.linear_forward(x, model.param(desc, "weight"), _linear_bias(model, desc)), x, True


def _bwd_linear(model, desc, grad, x):
    bias = _linear_bias(model, desc)
    grad_x, grad_w, grad_b = L.linear_backward(grad, x, model.param(desc, "weight"), bias)
    model.set_grad(desc, "weight", grad_w)
    if bias is not None:
        model.set_grad(desc, "bias", grad_b)
    return grad_x


register(
    LayerKind(
        "linear",
        "on the channel axis; ``bias`` (bool); params ``weight`` (out, in) and ``bias`` (out,) when present",
        state=_linear_state,
        roles=_roles({"bias": "shift"}),
        init=_init_linear,
        init_draws_float64=True,
        forward=_fwd_linear,
        backward=_bwd_linear,
        count=_product_count,
        functions=(L.linear_forward, L.linear_backward),
        accumulation=_product_accumulation,
        norm="elementwise",
    )
)


# --------------------------------------------------------------------------------------
# BatchNorm
# --------------------------------------------------------------------------------------
def _init_batchnorm(desc, rng, dtype):
    c = desc.params["weight"]
    return {
        "weight": np.ones(c, dtype=dtype),
        "bias": np.zeros(c, dtype=dtype),
        "running_mean": np.zeros(desc.buffers["running_mean"], dtype=dtype),
        "running_var": np.ones(desc.buffers["running_var"], dtype=dtype),
        "num_batches_tracked": np.asarray(0, dtype=np.int64),
    }


def _fwd_batchnorm(model, desc, x, training, inplace):
    w, b = model.param(desc, "weight"), model.param(desc, "bias")
    eps = desc.options["eps"]
    running = (model.buffer(desc, "running_mean"), model.buffer(desc, "running_var"))
    try:  # a batch whose statistics overflow is refused by the layer functions: name the layer
        if training:
            new_mean, new_var, nbt = L.batchnorm_update_running(
                x, *running, model.buffer(desc, "num_batches_tracked"), momentum=desc.options["momentum"]
            )
            # Committed by the model once the whole forward has succeeded.
            model.stage_buffer(desc, "running_mean", new_mean)
            model.stage_buffer(desc, "running_var", new_var)
            model.stage_buffer(desc, "num_batches_tracked", nbt)
        y = L.batchnorm_forward(x, w, b, *running, training=training, eps=eps, out=x if inplace else None)
    except ValueError as exc:
        raise ValueError(f"{desc.name}: {exc}") from None
    # Inference backward needs the running statistics used here (later training forwards
    # replace the arrays, they never modify them, so keeping the references is a snapshot).
    return y, (x, running, training), not inplace


def _bwd_batchnorm(model, desc, grad, saved):
    x, running, training = saved
    grad_x, grad_w, grad_b, _, _ = L.batchnorm_backward(
        grad,
        x,
        model.param(desc, "weight"),
        model.param(desc, "bias"),
        *running,
        training=training,
        eps=desc.options["eps"],
    )
    model.set_grad(desc, "weight", grad_w)
    model.set_grad(desc, "bias", grad_b)
    return grad_x


def _count_batchnorm(layer):
    fv = _cx._FVCORE_BATCHNORM_PER_ELEMENT * _out_elems(layer)
    macs = {"executed": 0, "fvcore": fv, "fvcore_without_neocell": fv, "fvcore_patchwise": fv}
    return macs, _cx._ELEMENTWISE_PER_ELEMENT["batchnorm"] * _out_elems(layer)


def _accumulation_batchnorm(shapes, options, elementary):
    n = _positions(shapes)[0] + elementary
    return {"y": n, "grad_x": n, "grad_weight": n, "grad_bias": n}


register(
    LayerKind(
        "batchnorm",
        "``eps``, ``momentum``; params ``weight``, ``bias``; buffers ``running_mean``, "
        "``running_var``, ``num_batches_tracked``",
        state=lambda i, o, options: (
            {"weight": (i[0],), "bias": (i[0],)},
            {"running_mean": (i[0],), "running_var": (i[0],), "num_batches_tracked": ()},
        ),
        roles=_roles(
            {
                "weight": "scale",
                "bias": "shift",
                "running_mean": "shift",
                "running_var": "variance",
                "num_batches_tracked": "count",
            }
        ),
        init=_init_batchnorm,
        forward=_fwd_batchnorm,
        backward=_bwd_batchnorm,
        count=_count_batchnorm,
        functions=(L.batchnorm_forward, L.batchnorm_backward),
        accumulation=_accumulation_batchnorm,
    )
)


# --------------------------------------------------------------------------------------
# NeoCell
# --------------------------------------------------------------------------------------
def neocell_state_names(groups: int) -> tuple:
    """``(["weight_a.0", ...], ["weight_b.0", ...])``: the parameter names of a NeoCell
    layer with ``groups`` channel groups (SPEC section 7), in state-dict order.

    Parameters
    ----------
    groups : int
        Number of channel groups (``len(specs)``), >= 1.

    Returns
    -------
    names_a : list of str
        ``"weight_a.0"`` ... ``"weight_a.{groups - 1}"``, the names of the ``Â`` weights.
    names_b : list of str
        ``"weight_b.0"`` ... ``"weight_b.{groups - 1}"``, the names of the ``B̂`` weights.
    """
    groups = as_int(groups, "groups", 1)
    return [f"weight_a.{g}" for g in range(groups)], [f"weight_b.{g}" for g in range(groups)]


def _neocell_state(in_shape, out_shape, options):
    specs = options["specs"]
    names_a, names_b = neocell_state_names(len(specs))
    params = {name: s.shape_a for name, s in zip(names_a, specs)}
    params.update({name: s.shape_b for name, s in zip(names_b, specs)})
    return params, {}


def _init_neocell(desc, rng, dtype):
    names_a, names_b = neocell_state_names(len(desc.options["specs"]))
    weights_a, weights_b = neo_init(desc.options["specs"], rng, dtype=dtype)
    return dict(zip(names_a + names_b, list(weights_a) + list(weights_b)))


def _neocell_weights(model, desc):
    names_a, names_b = neocell_state_names(len(desc.options["specs"]))
    return [model.param(desc, k) for k in names_a], [model.param(desc, k) for k in names_b]


def _fwd_neocell(model, desc, x, training, inplace):
    wa, wb = _neocell_weights(model, desc)
    return neocell_forward(x, wa, wb, desc.options["specs"]), x, True


def _bwd_neocell(model, desc, grad, x):
    wa, wb = _neocell_weights(model, desc)
    grad_x, grads_a, grads_b = neocell_backward(grad, x, wa, wb, desc.options["specs"])
    names_a, names_b = neocell_state_names(len(desc.options["specs"]))
    for key, g in zip(names_a + names_b, list(grads_a) + list(grads_b)):
        model.set_grad(desc, key, g)
    return grad_x


def _count_neocell(layer):
    _, height, width = (int(v) for v in layer.in_shape)
    counts = _cx.neocell_counts(layer.options["specs"], height, width, 1)
    macs = {
        "executed": counts["padded"],
        "fvcore": counts["blockdiag"],
        "fvcore_without_neocell": 0,
        "fvcore_patchwise": counts["nnz"],
    }
    return macs, 0


register(
    LayerKind(
        "neocell",
        "``specs`` (tuple of GroupSpec); params ``weight_a.{g}``, ``weight_b.{g}``",
        state=_neocell_state,
        roles=_roles({}, default="kernel"),
        init=_init_neocell,
        init_draws_float64=True,
        forward=_fwd_neocell,
        backward=_bwd_neocell,
        count=_count_neocell,
        # Golden cases of NeoCell are the "neocell" operation of neocell_ref.verify.golden_ops.
    )
)


# --------------------------------------------------------------------------------------
# GELU, layer scale, drop path: element-wise
# --------------------------------------------------------------------------------------
def _fwd_gelu(model, desc, x, training, inplace):
    return L.gelu_forward(x, out=x if inplace else None), x, not inplace


def _bwd_gelu(model, desc, grad, x):
    return L.gelu_backward(grad, x)[0]


register(
    LayerKind(
        "gelu",
        "exact (erf) GELU",
        state=_no_state,
        roles=_roles({}),
        init=_no_params,
        forward=_fwd_gelu,
        backward=_bwd_gelu,
        count=lambda layer: (_no_macs(), _cx._ELEMENTWISE_PER_ELEMENT["gelu"] * _out_elems(layer)),
        functions=(L.gelu_forward, L.gelu_backward),
        accumulation=lambda shapes, options, elementary: {"y": elementary, "grad_x": elementary},
    )
)


def _init_layer_scale(desc, rng, dtype):
    value = desc.options["init_value"]
    if abs(value) > float(np.finfo(dtype).max):
        raise ValueError(f"layer_scale_init_value={value!r} overflows to Inf in {dtype}")
    return {"gamma": np.full(desc.params["gamma"], value, dtype=dtype)}


def _fwd_layer_scale(model, desc, x, training, inplace):
    return L.layer_scale_forward(x, model.param(desc, "gamma"), out=x if inplace else None), x, not inplace


def _bwd_layer_scale(model, desc, grad, x):
    grad_x, grad_gamma = L.layer_scale_backward(grad, x, model.param(desc, "gamma"))
    model.set_grad(desc, "gamma", grad_gamma)
    return grad_x


register(
    LayerKind(
        "layer_scale",
        "param ``gamma`` (C,); ``init_value``",
        state=lambda i, o, options: ({"gamma": (i[0],)}, {}),
        roles=_roles({"gamma": "scale"}),
        init=_init_layer_scale,
        forward=_fwd_layer_scale,
        backward=_bwd_layer_scale,
        count=lambda layer: (_no_macs(), _cx._ELEMENTWISE_PER_ELEMENT["layer_scale"] * _out_elems(layer)),
        functions=(L.layer_scale_forward, L.layer_scale_backward),
        accumulation=lambda shapes, options, elementary: {"y": 1, "grad_x": 1, "grad_gamma": _positions(shapes)[0]},
        norm="elementwise",
    )
)


def _fwd_drop_path(model, desc, x, training, inplace):
    rate = desc.options["rate"]
    if not training or rate == 0.0:
        return x, None, False  # identity: nothing drawn, nothing to save
    scale = L.drop_path_scale(model.drop_path_rng, x.shape[0], rate, dtype=x.dtype)
    return L.drop_path_forward(x, scale, out=x if inplace else None), (x, scale), not inplace


def _bwd_drop_path(model, desc, grad, saved):
    if saved is None:
        return grad
    x, scale = saved
    return L.drop_path_backward(grad, x, scale)[0]


register(
    LayerKind(
        "drop_path",
        "``rate`` (probability of dropping the residual branch, training only)",
        state=_no_state,
        roles=_roles({}),
        init=_no_params,
        inference_identity=True,
        forward=_fwd_drop_path,
        backward=_bwd_drop_path,
        count=lambda layer: (_no_macs(), 0),  # the identity in inference
        functions=(L.drop_path_forward, L.drop_path_backward),
        accumulation=lambda shapes, options, elementary: {"y": 1, "grad_x": 1},
        norm="elementwise",
    )
)


# --------------------------------------------------------------------------------------
# head: global average pooling and LayerNorm
# --------------------------------------------------------------------------------------
def _fwd_avgpool(model, desc, x, training, inplace):
    return L.avgpool_forward(x), x, True


def _bwd_avgpool(model, desc, grad, x):
    return L.avgpool_backward(grad, x)[0]


register(
    LayerKind(
        "avgpool",
        "global average pooling ``(C, H, W) -> (C,)``",
        state=_no_state,
        roles=_roles({}),
        init=_no_params,
        forward=_fwd_avgpool,
        backward=_bwd_avgpool,
        count=lambda layer: (
            _no_macs(),
            _cx._ELEMENTWISE_PER_ELEMENT["avgpool"] * math.prod(int(v) for v in layer.in_shape),
        ),
        functions=(L.avgpool_forward, L.avgpool_backward),
        accumulation=lambda shapes, options, elementary: {"y": _positions(shapes)[1], "grad_x": 1},
        norm="elementwise",
    )
)


def _fwd_layernorm(model, desc, x, training, inplace):
    try:  # activations whose variance overflows are refused by the layer function: name the layer
        y = L.layernorm_forward(x, model.param(desc, "weight"), model.param(desc, "bias"), eps=desc.options["eps"])
    except ValueError as exc:
        raise ValueError(f"{desc.name}: {exc}") from None
    return y, x, True


def _bwd_layernorm(model, desc, grad, x):
    grad_x, grad_w, grad_b = L.layernorm_backward(
        grad, x, model.param(desc, "weight"), model.param(desc, "bias"), eps=desc.options["eps"]
    )
    model.set_grad(desc, "weight", grad_w)
    model.set_grad(desc, "bias", grad_b)
    return grad_x


def _count_layernorm(layer):
    fv = _cx._FVCORE_LAYERNORM_PER_ELEMENT * _out_elems(layer)
    macs = {"executed": 0, "fvcore": fv, "fvcore_without_neocell": fv, "fvcore_patchwise": fv}
    return macs, _cx._ELEMENTWISE_PER_ELEMENT["layernorm"] * _out_elems(layer)


def _accumulation_layernorm(shapes, options, elementary):
    x = shapes["x"]
    positions, spatial = _positions(shapes)
    n = x[1] + elementary
    return {"y": n, "grad_x": n, "grad_weight": x[0] * spatial + elementary, "grad_bias": positions}


register(
    LayerKind(
        "layernorm",
        "over channels; ``eps``; params ``weight``, ``bias``",
        state=lambda i, o, options: ({"weight": (i[0],), "bias": (i[0],)}, {}),
        roles=_roles({"weight": "scale", "bias": "shift"}),
        init=lambda desc, rng, dtype: {
            "weight": np.ones(desc.params["weight"], dtype=dtype),
            "bias": np.zeros(desc.params["bias"], dtype=dtype),
        },
        forward=_fwd_layernorm,
        backward=_bwd_layernorm,
        count=_count_layernorm,
        functions=(L.layernorm_forward, L.layernorm_backward),
        accumulation=_accumulation_layernorm,
    )
)
