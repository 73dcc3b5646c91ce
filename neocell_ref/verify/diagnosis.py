"""What went wrong: a catalogue of known porting defects, each a variant of the reference.

When a port's array fails the golden comparison, the verifier asks this module
whether the port's output is what a *known* mistake would have produced. Every
entry of :data:`DEFECTS` is a small variant of the reference computation with one
planted deviation (the corner of a shifted expansion dropped, the sub-group split
rounded up, ...). If the failing output agrees with a variant within the case's
own tolerance, and the variant itself does not pass, the report says
``consistent with: ID — explanation (link)``. Nothing is ever guessed: no match, no
diagnosis; a passing array is never diagnosed.

The variants are written independently of the fast formulations: NeoCell variants
are the dense per-channel emulation :func:`neocell_ref.verify.precision.emulate_neocell`
(expanded matrices from :func:`neocell_ref.expansion.expand_kernel`, the one expansion
rule) with the one deviation their defect names switched on; layer and model variants reuse the
reference layers with one function replaced. ``docs/defects.md`` explains each
defect, with the symptom a port author sees.

Public surface: :data:`DEFECTS` (id -> :class:`Defect`) and :func:`diagnose`.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..spec import parse_specs
from .precision import UNIT_ROUNDOFF, dtype_name, emulate_neocell

__all__ = ["Defect", "DEFECTS", "diagnose", "variant_outputs"]

#: Where the catalogue is documented; each defect has an anchor there.
DOCS_PAGE = "docs/defects.md"


@dataclass(frozen=True)
class Defect:
    """One known porting defect.

    Attributes
    ----------
    id : str
        Stable identifier, e.g. ``"shift-corner-dropped"``.
    explanation : str
        One line: what the port does wrong.
    ops : tuple of str
        Golden operations the defect can show up in.
    variants : callable
        ``variants(op, meta, arrays, dtype) -> list of dict`` of reference variants
        (``{array name: output}``), each in the float64 answer's naming; an empty
        list where the defect cannot occur in this case (an unshifted layer cannot
        drop a shift corner).
    precision : str or None
        Set (to ``"reduced"``) for a precision defect: its match is judged with the
        unit roundoff of the dtype below the set's (:data:`_REDUCED`: a float32
        computation cannot match to float64 accuracy), and it is tried after the
        others. None for every other defect.
    """

    id: str
    explanation: str
    ops: tuple
    variants: Callable
    precision: str | None = None

    @property
    def link(self) -> str:
        return f"{DOCS_PAGE}#{self.id}"

    def describe(self) -> str:
        return f"{self.id} — {self.explanation} ({self.link})"


# ======================================================================================
# NeoCell variants: the dense formulation, channel by channel, with one deviation
# ======================================================================================
def _neocell_variant(arrays, specs_as_written, **defect):
    """One NeoCell case computed with one deviation, in float64.

    The dense per-channel emulation of :func:`neocell_ref.verify.precision.emulate_neocell`
    (one implementation for the half-precision proofs and this catalogue), here with
    float64 sums and storage unless ``defect`` names a precision; None where the
    deviation cannot be applied to this case.

    Each output ``NAME`` comes with ``bound/NAME``: the same deviation computed on the
    absolute values of the inputs, the variant's own magnitude bound (the golden set's
    ``bound/NAME`` is the correct operator's). A deviation can put larger terms into an
    element than the correct sums have there, and a port's rounding of those sums
    scales with them, not with the expected array's bound (:func:`diagnose`).
    """
    defect.setdefault("accumulate", "float64")
    dtype = defect.pop("dtype", "float64")
    variant = emulate_neocell(arrays, specs_as_written, dtype, **defect)
    if variant is None:
        return None
    inputs = {
        key: np.abs(value)
        for key, value in arrays.items()
        if key in ("x", "grad_y") or key.startswith(("weight_a_", "weight_b_"))
    }
    magnitude = emulate_neocell(inputs, specs_as_written, dtype, **defect)
    return {**variant, **{f"bound/{key}": np.abs(value) for key, value in magnitude.items()}}


def _shifted(meta):
    return any(g.shift_a or g.shift_b for g in parse_specs(meta["specs_as_written"]))


def _neocell_only(fn):
    def variants(op, meta, arrays, dtype):
        if op != "neocell":
            return []
        return [v for v in fn(meta, arrays, dtype) if v is not None]

    return variants


@_neocell_only
def _corner_dropped(meta, arrays, dtype):
    return [_neocell_variant(arrays, meta["specs_as_written"], corner=False)] if _shifted(meta) else []


@_neocell_only
def _split_rounded_up(meta, arrays, dtype):
    return [_neocell_variant(arrays, meta["specs_as_written"], split_rounded_up=True)] if _shifted(meta) else []


@_neocell_only
def _shifts_ignored(meta, arrays, dtype):
    return [_neocell_variant(arrays, meta["specs_as_written"], shifts=False)] if _shifted(meta) else []


@_neocell_only
def _size_rounded(meta, arrays, dtype):
    return [_neocell_variant(arrays, meta["specs_as_written"], size_rounded=True)]


@_neocell_only
def _kernels_swapped(meta, arrays, dtype):
    return [_neocell_variant(arrays, meta["specs_as_written"], swap=True)]


@_neocell_only
def _kernel_transposed(meta, arrays, dtype):
    return [_neocell_variant(arrays, meta["specs_as_written"], transpose=t) for t in ("a", "b")]


# ======================================================================================
# layer and model variants: the reference layers with one function replaced
# ======================================================================================
def _bn_unbiased_forward(bn_forward):
    """BatchNorm that normalises with the unbiased batch variance (training mode).

    ``(x-μ)/sqrt(σ²·M/(M-1) + eps)·w + b`` equals the reference with
    ``eps' = eps·(M-1)/M`` and ``w' = w·sqrt((M-1)/M)``: the variant reuses it.
    """

    def forward(x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5, out=None):
        if not training:
            return bn_forward(x, weight, bias, running_mean, running_var, training=False, eps=eps, out=out)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        k = np.sqrt((m - 1) / m)
        return bn_forward(
            x, np.asarray(weight) * k, bias, running_mean, running_var, training=True, eps=eps * (m - 1) / m, out=out
        )

    return forward


def _bn_unbiased_backward(bn_backward):
    def backward(grad_y, x, weight, bias, running_mean=None, running_var=None, *, training, eps=1e-5):
        if not training:
            return bn_backward(grad_y, x, weight, bias, running_mean, running_var, training=False, eps=eps)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        k = np.sqrt((m - 1) / m)
        gx, gw, gb, grm, grv = bn_backward(
            grad_y, x, np.asarray(weight) * k, bias, running_mean, running_var, training=True, eps=eps * (m - 1) / m
        )
        return gx, gw * k, gb, grm, grv  # ∂y/∂w = k·x̂'

    return backward


_TANH_C = np.sqrt(2.0 / np.pi)
_TANH_K = 0.044715


def _gelu_tanh_forward(x, *, out=None):
    """The tanh approximation ``x/2·(1 + tanh(√(2/π)(x + 0.044715x³)))`` (the defect)."""
    x = np.asarray(x)
    y = 0.5 * x * (1.0 + np.tanh(_TANH_C * (x + _TANH_K * x**3)))
    if out is not None:
        out[...] = y
        return out
    return y.astype(x.dtype if x.dtype.kind == "f" else np.float64, copy=False)


def _gelu_tanh_backward(grad_y, x):
    """Its derivative ``(1 + t)/2 + x/2·(1 - t²)·√(2/π)(1 + 3·0.044715x²)``, ``t = tanh(...)``."""
    x = np.asarray(x)
    t = np.tanh(_TANH_C * (x + _TANH_K * x**3))
    d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _TANH_C * (1.0 + 3.0 * _TANH_K * x * x)
    return (np.asarray(grad_y) * d,)


_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _layers_replaced(replacements):
    """The reference layers with some functions replaced, for the duration of a variant.

    The model looks its layer functions up in :mod:`neocell_ref.layers` at call time,
    so replacing them there changes exactly that layer everywhere in the network,
    forward and backward. A lock keeps two diagnoses from interleaving.
    """
    from .. import layers

    with _PATCH_LOCK:
        saved = {name: getattr(layers, name) for name in replacements}
        try:
            for name, make in replacements.items():
                setattr(layers, name, make(saved[name]))
            yield
        finally:
            for name, fn in saved.items():
                setattr(layers, name, fn)


def _layer_outputs(kind, meta, arrays, dtype):
    """A layer case computed by the (possibly replaced) reference layer."""
    from .. import layers

    forward = getattr(layers, f"{kind}_forward")
    backward = getattr(layers, f"{kind}_backward")
    order, options = meta["input_order"], meta["options"]
    inputs = [np.asarray(arrays[n], dtype=np.float64).astype(dtype) for n in order]
    out = {"y": forward(*inputs, **options)}
    grads = backward(np.asarray(arrays["grad_y"], dtype=np.float64).astype(dtype), *inputs, **options)
    for name, grad in zip(order, grads):
        if grad is not None:
            out[f"grad_{name}"] = grad
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _model_outputs(meta, arrays, dtype):
    """A model case computed by the reference model (with whatever layers are in place)."""
    from ..models import NeoNeXt

    x_shape = tuple(arrays["x"].shape)
    model = NeoNeXt(**meta["config"], dtype=dtype, rng=np.random.default_rng(0), resolution=x_shape[2:])
    state = {k[len("state/") :]: np.array(v) for k, v in arrays.items() if k.startswith("state/")}
    model.load_state_dict(state)
    model.fast_training = False  # the plain path: it runs every layer by its (replaced) function
    x = np.asarray(arrays["x"], dtype=np.float64).astype(dtype)
    out = {"logits_eval": model.forward(x, training=False), "logits_train": model.forward(x, training=True)}
    out["grad_x"] = model.backward(np.asarray(arrays["grad_logits"], dtype=np.float64).astype(dtype))
    for key, grad in model.grads.items():
        out[f"grad/{key}"] = grad
    return {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}


def _replaced(replacements, layer_kinds):
    """Variants of the layers in ``layer_kinds`` and of the model, with functions replaced."""

    def variants(op, meta, arrays, dtype):
        if op == "model":
            with _layers_replaced(replacements):
                return [_model_outputs(meta, arrays, np.float64)]
        if op in layer_kinds:
            if op == "batchnorm" and not meta["options"].get("training"):
                return []  # inference normalises with the running statistics: nothing to get wrong
            with _layers_replaced(replacements):
                return [_layer_outputs(op, meta, arrays, np.float64)]
        return []

    return variants


#: The precision a port falls to when it computes below its golden set's dtype: float32
#: arithmetic on a float64 set, float16 storage on a float32 set, bfloat16 storage on a
#: float16 set (a port that rounds to bfloat16 precision). Nothing is below bfloat16.
_REDUCED = {"float64": "float32", "float32": "float16", "float16": "bfloat16"}


def _reduced_precision(op, meta, arrays, dtype):
    """The reference computed below the set's precision (:data:`_REDUCED`)."""
    reduced = _REDUCED.get(dtype)
    if reduced is None:
        return []
    if dtype == "float64":
        if op == "neocell":
            return [_neocell_variant(arrays, meta["specs_as_written"], accumulate="float32", storage="float32")]
        if op == "model":
            return [_model_outputs(meta, arrays, np.float32)]
        return [_layer_outputs(op, meta, arrays, np.float32)]
    if op == "neocell":
        # A mixed-precision port storing inputs, z and results in the reduced type.
        return [_neocell_variant(arrays, meta["specs_as_written"], dtype=dtype, accumulate="float32", storage=reduced)]
    return []


def _precision_scale(op, dtype):
    """How much looser a ``reduced-precision`` match is than the case's own tolerance.

    Operator and layer tolerances are proportional to the unit roundoff, so the ratio
    of the two roundoffs; the model's are measured per dtype (``MODEL_RTOL``), so the
    ratio of those (the smaller one over logits and gradients, never looser).
    """
    reduced = _REDUCED.get(dtype)
    if reduced is None:
        return 1.0
    if op == "model":
        from .tolerances import MODEL_RTOL

        low, high = MODEL_RTOL.get(reduced), MODEL_RTOL.get(dtype)
        if low is None or high is None:
            return 1.0
        return min(low[k] / high[k] for k in high)
    return UNIT_ROUNDOFF[reduced] / UNIT_ROUNDOFF[dtype]


_LAYER_OPS = ("linear", "conv1x1", "batchnorm", "layernorm", "gelu", "patchify", "avgpool", "layer_scale", "drop_path")

#: The catalogue, by id. Order is the order in which matches are reported.
DEFECTS = {
    d.id: d
    for d in (
        Defect(
            "shift-corner-dropped",
            "shifted blocks are placed, but the kernel's bottom-right corner is not wrapped into the "
            "top-left corner of the expanded matrix (SPEC section 3)",
            ("neocell",),
            _corner_dropped,
        ),
        Defect(
            "subgroup-split-rounded-up",
            "shift sub-groups hold ceil(channels / n) channels instead of floor(channels / n), the "
            "last one the remainder (SPEC section 4)",
            ("neocell",),
            _split_rounded_up,
        ),
        Defect(
            "shifts-ignored",
            "the shift of a group is ignored: every channel's blocks start at the top-left corner, "
            "as if the group were unshifted (SPEC section 4)",
            ("neocell",),
            _shifts_ignored,
        ),
        Defect(
            "output-size-rounded",
            "the output size of a resampling group is rounded (halves up) instead of floored (SPEC section 2)",
            ("neocell",),
            _size_rounded,
        ),
        Defect(
            "kernels-swapped",
            "the left and right kernels are exchanged: B is applied along the height and A along the "
            "width, each transposed to fit (SPEC section 1)",
            ("neocell",),
            _kernels_swapped,
        ),
        Defect(
            "kernel-transposed",
            "a kernel is read in the wrong layout: weight_a as (h_in, h_out) or weight_b as "
            "(w_out, w_in) (SPEC section 2)",
            ("neocell",),
            _kernel_transposed,
        ),
        Defect(
            "reduced-precision",
            "the port computes in a lower precision than the golden set's: float32 for a "
            "float64 set, float16 storage for a float32 set, bfloat16 storage for a float16 set",
            ("neocell", "model") + _LAYER_OPS,
            _reduced_precision,
            precision="reduced",
        ),
        Defect(
            "batchnorm-unbiased-variance",
            "training-mode BatchNorm normalises with the unbiased batch variance (divides by M - 1) "
            "instead of the biased one (SPEC section 7)",
            ("batchnorm", "model"),
            _replaced(
                {"batchnorm_forward": _bn_unbiased_forward, "batchnorm_backward": _bn_unbiased_backward}, ("batchnorm",)
            ),
        ),
        Defect(
            "gelu-tanh-approximation",
            "GELU uses the tanh approximation instead of the exact erf form (SPEC section 7)",
            ("gelu", "model"),
            _replaced(
                {"gelu_forward": lambda _: _gelu_tanh_forward, "gelu_backward": lambda _: _gelu_tanh_backward},
                ("gelu",),
            ),
        ),
    )
}


def variant_outputs(defect_id, op, meta, arrays, dtype=np.float64):
    """Outputs of every variant of one defect on one golden case (for tests and docs).

    Parameters
    ----------
    defect_id : str
        A key of :data:`DEFECTS`, e.g. ``"shift-corner-dropped"``.
    op, meta, arrays
        As in :func:`diagnose`: the golden operation, the case's manifest entry and
        the case's arrays (inputs, expected outputs, bounds).
    dtype : str or numpy dtype, default numpy.float64
        As in :func:`diagnose`: the golden set's dtype.

    Returns
    -------
    list of dict
        ``{array name: float64 output}`` per variant; empty where the defect cannot occur.
        A NeoCell variant also holds ``bound/NAME``, its own magnitude bound of each output.

    Raises
    ------
    KeyError
        ``defect_id`` is not in :data:`DEFECTS`.
    ValueError
        ``dtype`` is not float64, float32, float16 or bfloat16 (checked only when ``op``
        is one of the defect's ``ops``).
    """
    defect = DEFECTS[defect_id]
    if op not in defect.ops:
        return []
    return [v for v in defect.variants(op, meta, arrays, dtype_name(dtype)) if v is not None]


def _agrees(got, reference, allowed) -> bool:
    """``|got - reference| <= allowed`` everywhere, all finite, same shape."""
    try:
        got = np.asarray(got)
        if got.dtype.kind not in "fiu":
            return False
        got = got.astype(np.float64)
    except (TypeError, ValueError):
        return False
    if got.shape != reference.shape or not np.all(np.isfinite(got)):
        return False
    return bool(np.all(np.abs(got - reference) <= allowed))


def _variant_tolerance(tol, arrays, variant, name):
    """The allowed error of matching a port against ``variant``'s ``name``.

    ``tol`` is scaled to the variant's own sums where they are larger: by
    ``bound_variant / bound_expected`` per element when both carry magnitude bounds
    (NeoCell variants, :func:`_neocell_variant`), never below ``tol``. Without it a
    port that computes the defect exactly fails to match it wherever the defect puts
    larger terms into an element than the correct operator has there and the port's
    BLAS rounds those sums differently from the variant's (seen on an AVX-512 machine:
    3.8 times the allowed error on 3 of 8000 elements).
    """
    own, expected = variant.get(f"bound/{name}"), arrays.get(f"bound/{name}")
    if own is None or expected is None or np.ndim(tol) == 0:
        return tol
    own, expected = np.asarray(own, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    if own.shape != tol.shape or expected.shape != tol.shape:
        return tol
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(expected > 0, own / expected, 1.0)
    return tol * np.maximum(ratio, 1.0)


def diagnose(op, meta, arrays, failing, allowed, dtype=np.float64):
    """Known defects that explain a port's failing arrays on one golden case.

    Parameters
    ----------
    op : str
        Golden operation (``"neocell"``, a layer kind, ``"model"``).
    meta : dict
        The case's manifest entry (what the operation's port call reads).
    arrays : dict
        The case's arrays: inputs, expected outputs, bounds.
    failing : dict
        ``{array name: the port's output}`` for the arrays that failed only.
    allowed : dict
        ``{array name: elementwise allowed error}`` (shape of the expected array, or a
        scalar) as the verifier computed it for the case's tolerance.
    dtype : str or numpy dtype
        The golden set's dtype: float64, float32, float16 or bfloat16 (a bfloat16
        set stores its inputs as float32, so its name must be given).

    Returns
    -------
    dict
        ``{array name: [Defect, ...]}`` for each failing array that at least one
        defect explains; arrays that none explains are absent.

    Notes
    -----
    A defect explains an array when (1) one of its variants agrees with the port's
    output within the array's allowed error (for ``reduced-precision``, scaled by the
    ratio of the two unit roundoffs) and (2) that variant itself does *not* pass the
    comparison with the expected array, so the match is evidence, not coincidence.
    A precision defect is tried only on arrays that no other defect explains (its
    looser match could otherwise absorb a structural defect). A variant that raises
    explains nothing.
    Where the variant's shape differs from the expected one (an output-size defect),
    the largest allowed error of the array is used.
    """
    dtype = dtype_name(dtype)
    found = {}
    # Precision defects last, and only for arrays no other defect explains: their match
    # is held to a tolerance thousands of times looser than the case's (the lower
    # precision's), wide enough to absorb a structural defect's small deviations (a
    # dropped corner that only touches a few cancelling gradient entries).
    ordered = [d for d in DEFECTS.values() if not d.precision] + [d for d in DEFECTS.values() if d.precision]
    for defect in ordered:
        if op not in defect.ops or not failing:
            continue
        names = [n for n in failing if not (defect.precision and n in found)]
        if not names:
            continue
        try:
            scale = _precision_scale(op, dtype) if defect.precision else 1.0
            variants = [v for v in defect.variants(op, meta, arrays, dtype) if v is not None]
        except KeyboardInterrupt:
            raise
        except Exception:  # a variant that cannot be computed for this case explains nothing
            continue
        for name in names:
            got = failing[name]
            expected = np.asarray(arrays.get(name), dtype=np.float64) if name in arrays else None
            if expected is None:
                continue
            tol = np.asarray(allowed[name], dtype=np.float64)
            # Where the reference is exactly 0 with nothing allowed (no term reaches that
            # element), a variant can hold a value (a defect adds terms there) that a
            # port computes with its own rounding: the match allows the array's largest
            # allowed error there instead of demanding the variant's bits.
            top = float(np.max(tol, initial=0.0))
            match_tol = np.where(tol > 0, tol, top) if tol.ndim else tol
            for variant in variants:
                if name not in variant:
                    continue
                v = variant[name]
                if v.shape == expected.shape:
                    if _agrees(v, expected, tol):
                        continue  # the defect does not change this array: no evidence
                    ok = _agrees(got, v, _variant_tolerance(match_tol, arrays, variant, name) * scale)
                else:
                    ok = _agrees(got, v, top * scale)
                if ok:
                    found.setdefault(name, []).append(defect)
                    break
    order = list(DEFECTS)
    return {name: sorted(defects, key=lambda d: order.index(d.id)) for name, defects in found.items()}
