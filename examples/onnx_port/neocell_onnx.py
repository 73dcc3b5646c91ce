"""NeoCell and NeoNeXt as ONNX graphs run by ONNX Runtime: an example port.

Written for this package as a second runtime checked by neocell_ref's conformance
kit. It depends on NumPy, ``onnx`` and ``onnxruntime`` only (not on neocell_ref):
the channel-group rules, the shift sub-groups and the network layout are written
out again here from the specification, as any port has to, so that the kit tests
an independent implementation.

Every graph uses standard ``ai.onnx`` operators of opset :data:`OPSET` (no custom
operators, no contrib domain) and runs on ONNX Runtime's CPU execution provider in
float32.

How NeoCell maps onto ONNX (SPEC sections 1, 3 and 4; ``docs/onnx.md`` compares it
with the block-diagonal form): every channel group is cut into runs of channels
that share one ``(shift_a, shift_b)`` pair, and each run becomes ::

    Slice(x, channels)                 (N, c, H, W)
    Pad(front k_in - s, back to tiles) (N, c, t_h·h_in, t_w·w_in)    zeros
    Reshape                            (N, c, t_h, h_in, t_w·w_in)   one tile row per slab
    MatMul(A[c] as (1, c, 1, h_out, h_in), ·)                        A P for every tile
    Reshape                            (N, c, t_h·h_out·t_w, w_in)   one tile column per row
    MatMul(·, B[c] as (c, w_in, w_out))                              (A P) B
    Reshape                            (N, c, t_h·h_out, t_w·w_out)
    Slice(front k_out - s, keep H_out x W_out)

and the runs are concatenated on the channel axis. The padding in front by
``k_in - s`` and the crop of ``k_out - s`` are what make the kernel's bottom-right
``s x s`` corner act on the first ``s`` rows and columns (the "wrapped corner" of
SPEC 3); a run without shift needs no front padding and no crop.

Public functions (numpy in, float32 numpy out; the kit's calling conventions):

``forward(x, weights_a, weights_b, specs) -> y``
    One NeoCell; the graph takes ``x`` and the kernels as inputs and is cached per
    (specs, shapes, dtype).
``model_forward(x, state, config, training=False) -> logits``
    A whole NeoNeXt from an official-names state dict; parameters become graph
    initializers, as in an exported model. Training mode is supported when
    ``config["drop_path"] == 0`` (BatchNorm with batch statistics); with drop path it
    raises ``NotImplementedError`` (its random masks are the reference's own draws).
``linear_forward``, ``conv1x1_forward``, ``batchnorm_forward``, ``layernorm_forward``,
``gelu_forward``, ``patchify_forward``, ``avgpool_forward``, ``layer_scale_forward``,
``drop_path_forward``
    The layers the model uses, each a one-layer graph built by the same emitter the
    model uses, in the calling convention of ``neocell_ref.layers.<layer>_forward``.

``build_neocell_model`` and ``build_neonext_model`` return the ``onnx.ModelProto``
for inspection or saving (``onnx.save``).
"""

from __future__ import annotations

import numbers
from collections import OrderedDict

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "MUTATIONS",
    "forward",
    "model_forward",
    "build_neocell_model",
    "build_neonext_model",
    "session",
    "linear_forward",
    "conv1x1_forward",
    "batchnorm_forward",
    "layernorm_forward",
    "gelu_forward",
    "patchify_forward",
    "avgpool_forward",
    "layer_scale_forward",
    "drop_path_forward",
]

#: The ``ai.onnx`` opset of every graph (20: the first with a standard ``Gelu``).
OPSET = 20

#: Deliberate defects the NeoCell emitter can build in, for tests of the tests:
#: ``"shift-corner-dropped"`` (the wrapped ``s x s`` corner contributes nothing),
#: ``"shifts-ignored"`` (every run computed as unshifted), ``"kernels-swapped"``
#: (A and B exchanged, each transposed to fit).
MUTATIONS = ("shift-corner-dropped", "shifts-ignored", "kernels-swapped")

#: Threads of ONNX Runtime's intra-op pool for sessions built from now on (0: its default,
#: one per core).
INTRA_OP_THREADS = 0

_CACHE_SIZE = 64
_sessions: OrderedDict = OrderedDict()


# ======================================================================================
# channel groups (SPEC sections 2 and 4), written out again for this port
# ======================================================================================
def _int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


_GROUP_KEYS = {
    "kernel",
    "kernel_a",
    "kernel_b",
    "h_in",
    "h_out",
    "w_in",
    "w_out",
    "channels",
    "shift",
    "shift_a",
    "shift_b",
}


def _group(group, index):
    """``(channels, h_in, h_out, w_in, w_out, shift_a, shift_b)`` from an official dict."""
    if not isinstance(group, dict):
        if hasattr(group, "to_dict"):  # a neocell_ref GroupSpec
            group = group.to_dict()
        else:
            raise TypeError(f"specs[{index}] must be a dict, got {type(group).__name__}")
    where = f"specs[{index}]"
    unknown = set(group) - _GROUP_KEYS
    if unknown:
        raise ValueError(f"{where} has unknown key(s) {sorted(unknown)}; allowed: {sorted(_GROUP_KEYS)}")
    if "h_in" in group:
        sizes = [group[k] for k in ("h_in", "h_out", "w_in", "w_out")]
    elif "kernel_a" in group:
        sizes = [group["kernel_a"], group["kernel_a"], group["kernel_b"], group["kernel_b"]]
    elif "kernel" in group:
        sizes = [group["kernel"]] * 4
    else:
        raise ValueError(f"{where} needs 'kernel', 'kernel_a'/'kernel_b' or 'h_in'/'h_out'/'w_in'/'w_out'")
    h_in, h_out, w_in, w_out = (_int(v, f"{where} kernel size", 1) for v in sizes)
    if "shift_a" in group or "shift_b" in group:
        shift_a, shift_b = group.get("shift_a", 0), group.get("shift_b", 0)
    else:
        shift_a = shift_b = group.get("shift", 0)
    shift_a = _int(shift_a, f"{where} shift_a", 0)
    shift_b = _int(shift_b, f"{where} shift_b", 0)
    for s, k_in, k_out, axis in ((shift_a, h_in, h_out, "a"), (shift_b, w_in, w_out, "b")):
        if s and (k_in != k_out or s >= k_out):
            raise ValueError(f"{where}: shift_{axis}={s} needs a square kernel larger than the shift")
    channels = _int(group.get("channels"), f"{where} channels", 1)
    return channels, h_in, h_out, w_in, w_out, shift_a, shift_b


def _channel_shifts(channels, k_out, shift):
    """Shift of every channel: ``n = (k_out - 1) // s + 1`` sub-groups of ``channels // n``
    channels, sub-group ``j`` shifted by ``j·s``, the last taking the remainder (all of
    them when ``channels < n``)."""
    if shift == 0:
        return [0] * channels
    n = (k_out - 1) // shift + 1
    size = channels // n
    return [(n - 1 if size == 0 else min(c // size, n - 1)) * shift for c in range(channels)]


def _runs(group):
    """Runs ``(start, stop, shift_a, shift_b)`` of channels of one group sharing both shifts."""
    channels, _, h_out, _, w_out, shift_a, shift_b = group
    pairs = list(zip(_channel_shifts(channels, h_out, shift_a), _channel_shifts(channels, w_out, shift_b)))
    runs, start = [], 0
    for c in range(1, channels + 1):
        if c == channels or pairs[c] != pairs[start]:
            runs.append((start, c, *pairs[start]))
            start = c
    return runs


def _axis(length, k_in, k_out, shift):
    """One axis of one run: ``(front pad, back pad, tiles, front crop, output length)``."""
    front = k_in - shift if shift else 0
    tiles = -(-(length + front) // k_in)
    out = length if k_in == k_out else length * k_out // k_in
    return front, tiles * k_in - length - front, tiles, (k_out - shift if shift else 0), out


def _output_size(groups, height, width):
    """Common output size of all groups; the shift-size rule of SPEC 4 checked per group."""
    sizes = set()
    for i, (_, h_in, h_out, w_in, w_out, sa, sb) in enumerate(groups):
        for s, k, length, axis in ((sa, h_out, height, "H"), (sb, w_out, width, "W")):
            if s and ((k - 1) // s) * s > length:
                raise ValueError(
                    f"specs[{i}]: largest used shift {((k - 1) // s) * s} exceeds the input {axis}={length}"
                )
        sizes.add((_axis(height, h_in, h_out, 0)[4], _axis(width, w_in, w_out, 0)[4]))
    if len(sizes) != 1:
        raise ValueError(f"the groups disagree on the output size: {sorted(sizes)}")
    size = sizes.pop()
    if min(size) < 1:
        raise ValueError(f"output size {size} is empty for input {height}x{width}")
    return size


def _parse(specs):
    if isinstance(specs, dict) or not hasattr(specs, "__len__") or len(specs) == 0:
        raise TypeError("specs must be a non-empty list of group dicts")
    return tuple(_group(g, i) for i, g in enumerate(specs))


# ======================================================================================
# a small graph builder over onnx.helper
# ======================================================================================
class _Graph:
    """Nodes, initializers, inputs and outputs of one graph, with unique tensor names."""

    def __init__(self):
        self.nodes, self.initializers, self.inputs, self._names = [], [], [], {}

    def name(self, hint):
        count = self._names.get(hint, 0)
        self._names[hint] = count + 1
        return hint if count == 0 else f"{hint}_{count}"

    def input(self, name, shape):
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape)))
        return name

    def const(self, array, hint):
        """An initializer (float arrays in float32, integer arrays in int64)."""
        array = np.asarray(array)
        array = array.astype(np.float32 if array.dtype.kind == "f" else np.int64)
        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def ints(self, values, hint):
        return self.const(np.asarray(values, dtype=np.int64), hint)

    def op(self, op_type, inputs, hint, **attrs):
        out = self.name(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    def model(self, output, shape, graph_name):
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            self.inputs,
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(shape))],
            initializer=self.initializers,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="neocell_onnx")
        model.ir_version = min(model.ir_version, 10)  # readable by older runtimes too
        onnx.checker.check_model(model)
        return model


# ======================================================================================
# emitters: one function per layer, shared by the one-layer graphs and the model
# ======================================================================================
def emit_neocell(g, x, shape, groups, kernel, *, prefix="neocell", mutation=None):
    """Emit NeoCell on tensor ``x`` of static ``shape`` ``(N, C, H, W)``.

    Parameters
    ----------
    g : _Graph
    x : str
        Input tensor name.
    shape : tuple of 4 int
    groups : tuple of parsed groups (see :func:`_group`)
    kernel : callable
        ``kernel(side, group, start, stop) -> tensor name`` of the kernels of channels
        ``start:stop`` of a group: ``side`` ``"a"`` gives shape ``(c, h_out, h_in)``,
        ``"b"`` gives ``(c, w_in, w_out)``.
    mutation : one of :data:`MUTATIONS`, optional

    Returns
    -------
    (name, out_shape)
    """
    if mutation is not None and mutation not in MUTATIONS:
        raise ValueError(f"mutation must be one of {MUTATIONS}, got {mutation!r}")
    n, channels, height, width = shape
    if channels != sum(grp[0] for grp in groups):
        raise ValueError(f"x has {channels} channels but the groups' channels sum to {sum(grp[0] for grp in groups)}")
    h_out, w_out = _output_size(groups, height, width)
    pieces, offset = [], 0
    for gi, grp in enumerate(groups):
        _, h_in, k_ho, w_in, k_wo, _, _ = grp
        for start, stop, sa, sb in _runs(grp):
            if mutation == "shifts-ignored":
                sa = sb = 0
            c = stop - start
            tag = f"{prefix}.g{gi}.c{start}_{stop}"
            fh, bh, th, ch, _ = _axis(height, h_in, k_ho, sa)
            fw, bw, tw, cw, _ = _axis(width, w_in, k_wo, sb)
            xs = x
            if c != channels:
                xs = g.op(
                    "Slice",
                    [
                        x,
                        g.ints([offset + start], tag + ".c0"),
                        g.ints([offset + stop], tag + ".c1"),
                        g.ints([1], tag + ".ax"),
                    ],
                    tag + ".x",
                )
            if fh or bh or fw or bw:
                xs = g.op("Pad", [xs, g.ints([0, 0, fh, fw, 0, 0, bh, bw], tag + ".pads")], tag + ".pad")
            a = kernel("a", gi, start, stop)
            b = kernel("b", gi, start, stop)
            if mutation == "kernels-swapped":  # A <- B^T, B <- A^T (square kernels only)
                a, b = (
                    g.op("Transpose", [b], tag + ".bT", perm=[0, 2, 1]),
                    g.op("Transpose", [a], tag + ".aT", perm=[0, 2, 1]),
                )
            # A on every tile: (1, c, 1, h_out, h_in) @ (N, c, th, h_in, tw*w_in)
            tiles = g.op("Reshape", [xs, g.ints([n, c, th, h_in, tw * w_in], tag + ".s1")], tag + ".rows")
            a5 = g.op("Reshape", [a, g.ints([1, c, 1, k_ho, h_in], tag + ".s2")], tag + ".a5")
            z = g.op("MatMul", [a5, tiles], tag + ".AP")
            # B on every tile: (N, c, th*h_out*tw, w_in) @ (c, w_in, w_out)
            z = g.op("Reshape", [z, g.ints([n, c, th * k_ho * tw, w_in], tag + ".s3")], tag + ".cols")
            y = g.op("MatMul", [z, b], tag + ".APB")
            y = g.op("Reshape", [y, g.ints([n, c, th * k_ho, tw * k_wo], tag + ".s4")], tag + ".plane")
            if ch or cw or th * k_ho != h_out or tw * k_wo != w_out:
                y = g.op(
                    "Slice",
                    [
                        y,
                        g.ints([ch, cw], tag + ".y0"),
                        g.ints([ch + h_out, cw + w_out], tag + ".y1"),
                        g.ints([2, 3], tag + ".yax"),
                    ],
                    tag + ".crop",
                )
            if mutation == "shift-corner-dropped" and (sa or sb):
                mask = np.ones((h_out, w_out), dtype=np.float32)
                mask[:sa, :] = 0.0  # rows filled only by A's wrapped corner
                mask[:, :sb] = 0.0  # columns filled only by B's wrapped corner
                y = g.op("Mul", [y, g.const(mask, tag + ".mask")], tag + ".nocorner")
            pieces.append(y)
        offset += grp[0]
    y = pieces[0] if len(pieces) == 1 else g.op("Concat", pieces, f"{prefix}.y", axis=1)
    return y, (n, channels, h_out, w_out)


def emit_linear(g, x, ndim, weight, bias, prefix):
    """Linear on the channel axis (PyTorch ``Linear`` layout ``weight (out, in)``).

    2-D ``(N, C)``: ``Gemm(x, W, b, transB=1)``. ``(N, C, H, W)``: a 1x1 ``Conv``
    with ``W`` as ``(out, in, 1, 1)``. Other ranks go through a 4-D reshape.
    """
    if ndim == 2:
        inputs = [x, weight] + ([bias] if bias else [])
        return g.op("Gemm", inputs, prefix, transB=1)
    w4 = g.op("Unsqueeze", [weight, g.ints([2, 3], prefix + ".wax")], prefix + ".w4")
    return emit_conv1x1(g, x, ndim, w4, bias, prefix)


def emit_conv1x1(g, x, ndim, weight4, bias, prefix):
    """1x1 convolution ``Conv(x, W (out, in, 1, 1)[, b])`` on ``(N, C, *S)``."""
    inputs = [weight4] + ([bias] if bias else [])
    if ndim == 4:
        return g.op("Conv", [x] + inputs, prefix)
    shape_in = g.op("Shape", [x], prefix + ".shape")
    x4 = g.op("Reshape", [x, g.ints([0, 0, -1, 1], prefix + ".to4")], prefix + ".x4")
    y4 = g.op("Conv", [x4] + inputs, prefix + ".conv")
    # the output keeps every axis of x but the channel axis, which becomes `out`
    out_c = g.op(
        "Slice",
        [g.op("Shape", [weight4], prefix + ".wshape"), g.ints([0], prefix + ".o0"), g.ints([1], prefix + ".o1")],
        prefix + ".cout",
    )
    head = g.op("Slice", [shape_in, g.ints([0], prefix + ".h0"), g.ints([1], prefix + ".h1")], prefix + ".n")
    tail = g.op("Slice", [shape_in, g.ints([2], prefix + ".t0"), g.ints([ndim], prefix + ".t1")], prefix + ".rest")
    shape_out = g.op("Concat", [head, out_c, tail], prefix + ".shape_out", axis=0)
    return g.op("Reshape", [y4, shape_out], prefix + ".y")


def _channel_vector(g, v, ndim, prefix):
    """A ``(C,)`` tensor viewed as ``(C, 1, ..., 1)`` to broadcast over ``(N, C, *S)``."""
    if ndim <= 2:
        return v
    return g.op("Unsqueeze", [v, g.ints(list(range(1, ndim - 1)), prefix + ".ax")], prefix + ".view")


def emit_batchnorm(g, x, weight, bias, mean, var, *, training, eps, prefix):
    """BatchNorm2d on ``(N, C, H, W)``.

    Inference: the standard ``BatchNormalization`` operator with the running statistics.
    Training: batch mean and biased batch variance over ``N, H, W`` (``ReduceMean``),
    then ``(x - μ)·w/sqrt(σ² + eps) + b``; running statistics are not updated.
    """
    if not training:
        return g.op("BatchNormalization", [x, weight, bias, mean, var], prefix, epsilon=float(eps))
    axes = g.ints([0, 2, 3], prefix + ".axes")
    mu = g.op("ReduceMean", [x, axes], prefix + ".mean", keepdims=1)
    centred = g.op("Sub", [x, mu], prefix + ".centred")
    var_b = g.op("ReduceMean", [g.op("Mul", [centred, centred], prefix + ".sq"), axes], prefix + ".var", keepdims=1)
    std = g.op(
        "Sqrt", [g.op("Add", [var_b, g.const(np.float32(eps), prefix + ".eps")], prefix + ".var_eps")], prefix + ".std"
    )
    scale = g.op("Div", [_channel_vector(g, weight, 4, prefix + ".w"), std], prefix + ".scale")
    return g.op(
        "Add", [g.op("Mul", [centred, scale], prefix + ".scaled"), _channel_vector(g, bias, 4, prefix + ".b")], prefix
    )


def emit_layernorm(g, x, ndim, weight, bias, *, eps, prefix):
    """LayerNorm over the channel axis: the standard ``LayerNormalization`` on the last
    axis, with the channel axis moved there and back when ``x`` has spatial axes."""
    if ndim == 2:
        return g.op("LayerNormalization", [x, weight, bias], prefix, axis=-1, epsilon=float(eps))
    last = [0] + list(range(2, ndim)) + [1]
    back = [0, ndim - 1] + list(range(1, ndim - 1))
    xt = g.op("Transpose", [x], prefix + ".to_last", perm=last)
    yt = g.op("LayerNormalization", [xt, weight, bias], prefix + ".ln", axis=-1, epsilon=float(eps))
    return g.op("Transpose", [yt], prefix, perm=back)


def emit_gelu(g, x, prefix):
    """Exact (erf) GELU: the standard ``Gelu`` with ``approximate="none"``."""
    return g.op("Gelu", [x], prefix, approximate="none")


def emit_patchify(g, x, shape, patch, prefix):
    """Space-to-depth ``y[n, c·p² + p·py + px, i, j] = x[n, c, p·i + py, p·j + px]``
    (``Reshape``/``Transpose``; ONNX's ``SpaceToDepth`` orders channels the other way)."""
    n, c, h, w = shape
    p = patch
    blocks = g.op("Reshape", [x, g.ints([n, c, h // p, p, w // p, p], prefix + ".s1")], prefix + ".blocks")
    moved = g.op("Transpose", [blocks], prefix + ".moved", perm=[0, 1, 3, 5, 2, 4])
    return g.op("Reshape", [moved, g.ints([n, c * p * p, h // p, w // p], prefix + ".s2")], prefix)


def emit_avgpool(g, x, prefix):
    """Global average pooling ``(N, C, H, W) -> (N, C)``."""
    return g.op("Flatten", [g.op("GlobalAveragePool", [x], prefix + ".pool")], prefix, axis=1)


def emit_layer_scale(g, x, ndim, gamma, prefix):
    """``y = gamma[c]·x[n, c, ...]``."""
    return g.op("Mul", [x, _channel_vector(g, gamma, ndim, prefix + ".gamma")], prefix)


def emit_drop_path(g, x, ndim, scale, prefix):
    """``y[n] = scale[n]·x[n]`` with given per-sample factors."""
    view = g.op("Reshape", [scale, g.ints([-1] + [1] * (ndim - 1), prefix + ".s")], prefix + ".view")
    return g.op("Mul", [x, view], prefix)


# ======================================================================================
# sessions
# ======================================================================================
def session(model):
    """An ONNX Runtime CPU session for ``model`` (all graph optimisations on)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if INTRA_OP_THREADS:
        options.intra_op_num_threads = INTRA_OP_THREADS
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _cached(key, build):
    sess = _sessions.get(key)
    if sess is None:
        sess = session(build())
        _sessions[key] = sess
        if len(_sessions) > _CACHE_SIZE:
            _sessions.popitem(last=False)
    else:
        _sessions.move_to_end(key)
    return sess


def _f32(value, name):
    arr = np.asarray(value)
    if arr.dtype.kind not in "fiu":  # bool is kind "b", refused here too
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


# ======================================================================================
# one NeoCell
# ======================================================================================
def build_neocell_model(specs, x_shape, *, mutation=None):
    """The ONNX model of one NeoCell for input shape ``(N, C, H, W)``.

    Graph inputs: ``x`` and ``weight_a_G``, ``weight_b_G`` per group; output ``y``.
    """
    groups = _parse(specs)
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x_shape)}")
    g = _Graph()
    x = g.input("x", x_shape)
    names = {}
    for gi, (c, h_in, h_out, w_in, w_out, _, _) in enumerate(groups):
        names["a", gi] = g.input(f"weight_a_{gi}", (c, h_out, h_in))
        names["b", gi] = g.input(f"weight_b_{gi}", (c, w_in, w_out))

    def kernel(side, gi, start, stop):
        w = names[side, gi]
        if stop - start == groups[gi][0]:
            return w
        tag = f"{w}.c{start}_{stop}"
        return g.op(
            "Slice", [w, g.ints([start], tag + ".0"), g.ints([stop], tag + ".1"), g.ints([0], tag + ".ax")], tag
        )

    y, out_shape = emit_neocell(g, x, tuple(x_shape), groups, kernel, mutation=mutation)
    y = g.op("Identity", [y], "y")
    return g.model(y, out_shape, "neocell")


def forward(x, weights_a, weights_b, specs, *, mutation=None):
    """NeoCell forward through ONNX Runtime: ``x (N, C, H, W) -> y (N, C, H_out, W_out)``, float32.

    ``specs`` are official group dicts; ``weights_a[g]`` has shape ``(c_g, h_out, h_in)``,
    ``weights_b[g]`` ``(c_g, w_in, w_out)``. ``mutation`` builds a deliberately wrong
    graph (:data:`MUTATIONS`) for tests of the tests.
    """
    groups = _parse(specs)
    x = _f32(x, "x")
    for name, weights in (("weights_a", weights_a), ("weights_b", weights_b)):
        if isinstance(weights, np.ndarray) or not hasattr(weights, "__len__") or len(weights) != len(groups):
            raise ValueError(f"{name} must be a list of {len(groups)} arrays (one per group)")
    feeds = {"x": x}
    for gi, (c, h_in, h_out, w_in, w_out, _, _) in enumerate(groups):
        for side, w, shape in (("a", weights_a[gi], (c, h_out, h_in)), ("b", weights_b[gi], (c, w_in, w_out))):
            arr = _f32(w, f"weights_{side}[{gi}]")
            if arr.shape != shape:
                raise ValueError(f"weights_{side}[{gi}] has shape {arr.shape}, group {gi} needs {shape}")
            feeds[f"weight_{side}_{gi}"] = arr
    key = ("neocell", groups, x.shape, "float32", mutation)
    sess = _cached(key, lambda: build_neocell_model(specs, x.shape, mutation=mutation))
    return sess.run(["y"], feeds)[0]


# ======================================================================================
# the layers, one graph each, in the calling convention of neocell_ref.layers
# ======================================================================================
def _run_layer(kind, arrays, options, emit):
    """Build (or reuse) a graph with ``arrays`` as inputs, emitted by ``emit``, and run it."""
    feeds = {name: _f32(a, name) for name, a in arrays.items() if a is not None}
    shapes = tuple((k, v.shape) for k, v in feeds.items())

    def build():
        g = _Graph()
        names = {k: g.input(k, v.shape) for k, v in feeds.items()}
        y, shape = emit(g, names, {k: v.shape for k, v in feeds.items()})
        return g.model(g.op("Identity", [y], "y"), shape, kind)

    sess = _cached((kind, shapes, tuple(sorted(options.items()))), build)
    return sess.run(["y"], feeds)[0]


def _rank(shape, minimum, name="x"):
    if len(shape) < minimum:
        raise ValueError(f"{name} must have at least {minimum} dimensions, got shape {shape}")
    return len(shape)


def linear_forward(x, weight, bias=None):
    """``y[n, o, ...] = Σ_i W[o, i] x[n, i, ...] + b[o]``, x ``(N, C_in, *S)``."""

    def emit(g, t, s):
        if len(s["weight"]) != 2 or s["weight"][1] != s["x"][1]:
            raise ValueError(f"weight {s['weight']} does not fit x {s['x']}")
        y = emit_linear(g, t["x"], _rank(s["x"], 2), t["weight"], t.get("bias"), "linear")
        return y, (s["x"][0], s["weight"][0], *s["x"][2:])

    return _run_layer("linear", {"x": x, "weight": weight, "bias": bias}, {}, emit)


def conv1x1_forward(x, weight):
    """Bias-free 1x1 convolution, ``weight (C_out, C_in, 1, 1)``."""

    def emit(g, t, s):
        _rank(s["x"], 4)
        return emit_conv1x1(g, t["x"], 4, t["weight"], None, "conv1x1"), (s["x"][0], s["weight"][0], *s["x"][2:])

    return _run_layer("conv1x1", {"x": x, "weight": weight}, {}, emit)


def batchnorm_forward(x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5):
    """BatchNorm2d; inference uses the running statistics, training the batch statistics."""
    if not training and (running_mean is None or running_var is None):
        raise ValueError("inference-mode batchnorm needs running_mean and running_var")
    arrays = {"x": x, "weight": weight, "bias": bias}
    if not training:
        arrays.update(running_mean=running_mean, running_var=running_var)

    def emit(g, t, s):
        _rank(s["x"], 4)
        y = emit_batchnorm(
            g,
            t["x"],
            t["weight"],
            t["bias"],
            t.get("running_mean"),
            t.get("running_var"),
            training=bool(training),
            eps=eps,
            prefix="batchnorm",
        )
        return y, s["x"]

    return _run_layer("batchnorm", arrays, {"training": bool(training), "eps": float(eps)}, emit)


def layernorm_forward(x, weight, bias, *, eps=1e-6):
    """LayerNorm over the channel axis of ``(N, C, *S)``."""

    def emit(g, t, s):
        return emit_layernorm(g, t["x"], _rank(s["x"], 2), t["weight"], t["bias"], eps=eps, prefix="layernorm"), s["x"]

    return _run_layer("layernorm", {"x": x, "weight": weight, "bias": bias}, {"eps": float(eps)}, emit)


def gelu_forward(x):
    """Exact GELU ``x·Φ(x)``."""
    return _run_layer("gelu", {"x": x}, {}, lambda g, t, s: (emit_gelu(g, t["x"], "gelu"), s["x"]))


def patchify_forward(x, *, patch=4):
    """4x4 (``patch``) space-to-depth of the stem."""
    patch = _int(patch, "patch", 1)

    def emit(g, t, s):
        n, c, h, w = s["x"] if len(s["x"]) == 4 else (None,) * 4
        if n is None or h % patch or w % patch:
            raise ValueError(f"x must be (N, C, H, W) with H, W multiples of {patch}, got {s['x']}")
        return emit_patchify(g, t["x"], s["x"], patch, "patchify"), (n, c * patch * patch, h // patch, w // patch)

    return _run_layer("patchify", {"x": x}, {"patch": patch}, emit)


def avgpool_forward(x):
    """Global average pooling ``(N, C, H, W) -> (N, C)``."""

    def emit(g, t, s):
        _rank(s["x"], 4)
        return emit_avgpool(g, t["x"], "avgpool"), s["x"][:2]

    return _run_layer("avgpool", {"x": x}, {}, emit)


def layer_scale_forward(x, gamma):
    """``y = gamma[c]·x[n, c, ...]``."""
    return _run_layer(
        "layer_scale",
        {"x": x, "gamma": gamma},
        {},
        lambda g, t, s: (emit_layer_scale(g, t["x"], _rank(s["x"], 2), t["gamma"], "layer_scale"), s["x"]),
    )


def drop_path_forward(x, scale):
    """``y[n] = scale[n]·x[n]``."""
    return _run_layer(
        "drop_path",
        {"x": x, "scale": scale},
        {},
        lambda g, t, s: (emit_drop_path(g, t["x"], _rank(s["x"], 1), t["scale"], "drop_path"), s["x"]),
    )


# ======================================================================================
# the whole NeoNeXt (SPEC section 7)
# ======================================================================================
#: NeoNeXtConfig's options and defaults (NeoNeXt-T, official option defaults).
CONFIG_DEFAULTS = dict(
    per_stage_layers=(3, 3, 9, 3),
    dims=(96, 192, 384, 768),
    num_classes=1000,
    kernel_spec="default",
    shifts=(1, 1, 1, 0),
    layer_scale_init_value=0.0,
    linear_bias=False,
    drop_path=0.0,
    in_chans=3,
)
_PATCH, _BN_EPS, _LN_EPS = 4, 1e-5, 1e-6


def _config(config):
    if not isinstance(config, dict):
        config = {k: getattr(config, k) for k in CONFIG_DEFAULTS if hasattr(config, k)}
    unknown = set(config) - set(CONFIG_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown config option(s): {sorted(unknown)}")
    cfg = {**CONFIG_DEFAULTS, **config}
    for name in ("per_stage_layers", "dims", "shifts"):
        value = cfg[name]
        if not hasattr(value, "__len__") or len(value) != 4:
            raise ValueError(f"config {name} must have 4 entries (one per stage), got {value!r}")
        cfg[name] = tuple(_int(v, f"config {name} entry", 0 if name != "dims" else 1) for v in value)
    for code, dim, shift in zip(_stage_codes(cfg["kernel_spec"]), cfg["dims"], cfg["shifts"]):
        _stage_groups(code, dim, shift)  # a bad kernel code or shift fails here, named
    return cfg


def _stage_codes(kernel_spec):
    """Kernel code per stage: ``"default"`` is ``"4+7"`` in stages 1-2 and ``"7"`` in 3-4."""
    return ("4+7", "4+7", "7", "7") if kernel_spec == "default" else (kernel_spec,) * 4


def _stage_groups(code, channels, shift):
    """Groups of one stage from a kernel code: ``m`` parts of ``channels // m``, the last
    taking the remainder, all with the stage's shift."""
    parts = code.split("+") if isinstance(code, str) else [""]
    if not all(p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"kernel_spec {code!r} is not 'default' or a '+'-separated list of kernel sizes")
    kernels = [int(k) for k in parts]
    per = channels // len(kernels)
    sizes = [per] * (len(kernels) - 1) + [channels - per * (len(kernels) - 1)]
    if per == 0:
        raise ValueError(f"kernel code {code!r} leaves a group without channels at {channels} channels")
    return _parse([{"kernel": k, "channels": c, "shift": shift} for c, k in zip(sizes, kernels)])


def build_neonext_model(state, config, x_shape, *, training=False, mutation=None):
    """The ONNX model of a whole NeoNeXt with ``state`` (official names) as initializers.

    Parameters
    ----------
    state : dict of str -> array
        Every parameter and BatchNorm buffer under its official state-dict name.
    config : dict
        NeoNeXtConfig options (missing ones take the official defaults).
    x_shape : (N, in_chans, H, W)
    training : bool
        BatchNorm with batch statistics (no drop path: see :func:`model_forward`).
    mutation : one of :data:`MUTATIONS`, optional
        Build the defect into every NeoCell (tests of the tests).
    """
    cfg = _config(config)
    used = set()

    def p(name):
        if name not in state:
            raise ValueError(f"state has no entry {name!r}")
        used.add(name)
        return np.asarray(state[name], dtype=np.float32)

    g = _Graph()
    n, c_in, h, w = x_shape
    if c_in != cfg["in_chans"] or h % _PATCH or w % _PATCH:
        raise ValueError(
            f"x shape {tuple(x_shape)} does not fit in_chans={cfg['in_chans']} and a {_PATCH}x{_PATCH} stem"
        )
    x = g.input("x", x_shape)

    def const(name):
        return g.const(p(name), name)

    def batchnorm(x, name):
        return emit_batchnorm(
            g,
            x,
            const(f"{name}.weight"),
            const(f"{name}.bias"),
            None if training else const(f"{name}.running_mean"),
            None if training else const(f"{name}.running_var"),
            training=training,
            eps=_BN_EPS,
            prefix=name,
        )

    def conv(x, name):
        return emit_conv1x1(g, x, 4, const(f"{name}.weight"), None, name)

    def neocell(x, shape, groups, name):
        kernels = [(p(f"{name}.weight_a.{i}"), p(f"{name}.weight_b.{i}")) for i in range(len(groups))]
        for i, (c, h_in, h_out, w_in, w_out, _, _) in enumerate(groups):
            if kernels[i][0].shape != (c, h_out, h_in) or kernels[i][1].shape != (c, w_in, w_out):
                raise ValueError(
                    f"{name}: kernel shapes {kernels[i][0].shape}, {kernels[i][1].shape} do not fit "
                    f"group {i} {(c, h_in, h_out, w_in, w_out)}"
                )

        def kernel(side, gi, start, stop):
            return g.const(
                kernels[gi][0 if side == "a" else 1][start:stop], f"{name}.weight_{side}.{gi}.c{start}_{stop}"
            )

        return emit_neocell(g, x, shape, groups, kernel, prefix=name, mutation=mutation)

    # stem: patchify, 1x1 conv, BatchNorm
    shape = (n, c_in, h, w)
    x = emit_patchify(g, x, shape, _PATCH, "stem.patchify")
    shape = (n, c_in * _PATCH * _PATCH, h // _PATCH, w // _PATCH)
    x = batchnorm(conv(x, "stem.conv"), "stem.norm")
    dims = cfg["dims"]
    shape = (n, dims[0], *shape[2:])
    codes = _stage_codes(cfg["kernel_spec"])
    for stage in range(4):
        if stage:  # down-sampling: 1x1 conv, NeoCell 2 -> 1, BatchNorm
            pre = f"downsample_{stage}"
            x = conv(x, f"{pre}.conv")
            shape = (n, dims[stage], *shape[2:])
            x, shape = neocell(x, shape, ((dims[stage], 2, 1, 2, 1, 0, 0),), f"{pre}.neocell")
            x = batchnorm(x, f"{pre}.norm_1")
        groups = _stage_groups(codes[stage], dims[stage], cfg["shifts"][stage])
        for b in range(cfg["per_stage_layers"][stage]):
            pre = f"stage_{stage + 1}.{b}.ops.content"
            y, _ = neocell(x, shape, groups, f"{pre}.neocell")
            y = batchnorm(y, f"{pre}.norm")
            for fc in ("fc_1", "fc_2"):  # fc_1, exact GELU, fc_2
                bias = const(f"{pre}.{fc}.bias") if cfg["linear_bias"] else None
                y = emit_linear(g, y, 4, const(f"{pre}.{fc}.weight"), bias, f"{pre}.{fc}")
                if fc == "fc_1":
                    y = emit_gelu(g, y, f"{pre}.gelu")
            if cfg["layer_scale_init_value"] > 0:
                y = emit_layer_scale(g, y, 4, const(f"{pre}.layer_scale.gamma"), f"{pre}.layer_scale")
            x = g.op("Add", [x, y], f"stage_{stage + 1}.{b}.residual")
    x = emit_avgpool(g, x, "head.avgpool")
    x = emit_layernorm(g, x, 2, const("head.ln.weight"), const("head.ln.bias"), eps=_LN_EPS, prefix="head.ln")
    x = emit_linear(g, x, 2, const("head.fc.weight"), const("head.fc.bias"), "head.fc")
    unused = sorted(
        k for k in state if k not in used and not k.endswith(("num_batches_tracked", "running_mean", "running_var"))
    )
    if unused:
        raise ValueError(f"state has entries this config does not use: {unused[:5]}")
    return g.model(g.op("Identity", [x], "logits"), (n, cfg["num_classes"]), "neonext")


def model_forward(x, state, config, training=False, *, mutation=None):
    """Logits ``(N, num_classes)`` of a NeoNeXt in float32 through ONNX Runtime.

    The graph is built from ``state`` on every call (its parameters are initializers).
    ``mutation`` builds a defect into every NeoCell (:data:`MUTATIONS`), for tests of
    the tests.

    Raises
    ------
    NotImplementedError
        In training mode with ``drop_path > 0``: the drop-path masks are random draws of
        the reference's generator, which this port does not reproduce.
    """
    cfg = _config(config)
    if training and cfg["drop_path"] > 0:
        raise NotImplementedError("training mode with drop_path > 0 (random per-sample masks) is not ported")
    x = _f32(x, "x")
    if x.ndim != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    model = build_neonext_model(state, cfg, x.shape, training=bool(training), mutation=mutation)
    return session(model).run(["logits"], {"x": x})[0]
