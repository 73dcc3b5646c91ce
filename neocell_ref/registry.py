"""The layer-kind registry: one record per kind of layer a NeoNeXt description may use.

Every fact about a layer *kind* (``"linear"``, ``"batchnorm"``, ``"neocell"`` ...) that
more than one part of the package needs lives in its :class:`LayerKind` record, and
every part reads it from here:

* :mod:`neocell_ref.architecture` asks the record for the parameter and buffer names
  and shapes of a described layer (:attr:`LayerKind.state`);
* :mod:`neocell_ref.models` initialises, runs and differentiates a layer with the
  record's :attr:`~LayerKind.init`, :attr:`~LayerKind.forward` and
  :attr:`~LayerKind.backward`, and validates loaded state by its :attr:`~LayerKind.roles`;
* :mod:`neocell_ref.calculator` counts it with :attr:`~LayerKind.count`;
* :mod:`neocell_ref.verify.golden_ops` makes golden layer cases with the record's functional
  pair (:attr:`~LayerKind.functions`), its accumulation lengths
  (:attr:`~LayerKind.accumulation`) and tolerance norm (:attr:`~LayerKind.norm`).

The records of the built-in kinds are registered in :mod:`neocell_ref.layer_kinds`
(imported by the package), one record beside the adapters of each layer pair, the way
autograd registers a primitive's VJP beside the primitive. A new kind is one
:func:`register` call; :func:`registered` registers one for the duration of a ``with``
block (tests).

This module imports nothing from the package, so every consumer may import it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

from .validation import as_flag

__all__ = ["LayerKind", "register", "unregister", "registered", "get", "names", "ROLES"]

#: Roles a parameter or buffer can play (:attr:`LayerKind.roles`). They decide how a
#: loaded value is validated (:meth:`neocell_ref.models.NeoNeXt.load_state_dict`) and how
#: the golden oracle draws a random state (:mod:`neocell_ref.verify.golden_ops`):
#:
#: * ``"weight"``: a weight matrix or tensor (random: normal over ``sqrt(fan_in)``);
#: * ``"shift"``: a bias-like vector, also a running mean (random: ``0.1·N(0, 1)``);
#: * ``"scale"``: a multiplicative per-channel factor (random: ``U(0.5, 1.5)``);
#: * ``"variance"``: a running variance, must be >= 0 (random: ``U(0.5, 1.5)``);
#: * ``"count"``: an int64 scalar counter, never drawn;
#: * ``"kernel"``: a NeoCell kernel (random: its NeoInit value plus ``0.1·N(0, 1)``).
ROLES = ("weight", "shift", "scale", "variance", "count", "kernel")


@dataclass(frozen=True)
class LayerKind:
    """Everything the package knows about one kind of layer.

    Attributes
    ----------
    name : str
        The kind, as in :attr:`neocell_ref.architecture.LayerDesc.kind`.
    doc : str
        One line for the table of kinds (options, parameters, shapes).
    state : callable
        ``state(in_shape, out_shape, options) -> (params, buffers)``: state-dict names
        (relative to the layer's name) -> shapes, each in state-dict order. Per-sample
        shapes ``(C, H, W)`` or ``(C,)``.
    roles : callable
        ``roles(name) -> str``: the role (one of :data:`ROLES`) of a parameter or buffer.
    init : callable
        ``init(desc, rng, dtype) -> {name: array}`` with exactly the names and shapes of
        ``desc.params`` and ``desc.buffers``.
    init_draws_float64 : bool
        The initialiser draws float64 values first (its memory check uses float64).
    forward : callable
        ``forward(model, desc, x, training, inplace) -> (y, saved, fresh)``: ``saved`` is
        what ``backward`` needs, ``fresh`` whether ``y`` is a new array the model owns.
        The model protocol: ``model.param(desc, name)``, ``model.buffer(desc, name)``,
        ``model.set_grad(desc, name, value)``, ``model.stage_buffer(desc, name, value)``
        (a training update committed after the whole forward succeeded) and
        ``model.drop_path_rng``.
    backward : callable
        ``backward(model, desc, grad_y, saved) -> grad_x``; parameter gradients through
        ``model.set_grad``.
    inference_identity : bool
        The layer is the identity in inference (drop path): the fused inference path of
        the model skips it.
    count : callable
        ``count(layer) -> (macs, elementwise_ops)`` per image: ``macs`` a dict with one
        int per counting convention (:data:`neocell_ref.calculator.CONVENTIONS`),
        ``elementwise_ops`` an int (``docs/complexity.md``).
    functions : (callable, callable) or None
        The functional pair ``(forward(*inputs, **options), backward(grad_y, *inputs,
        **options))`` golden layer cases are made and verified with; None for a kind
        with its own golden operation (NeoCell).
    accumulation : callable or None
        ``accumulation(shapes, options, elementary) -> {expected array: n}``: the
        accumulation length of ``y`` and of each ``grad_<input>`` of a golden layer case
        with positional inputs of ``shapes``; ``elementary`` is the golden oracle's
        allowance for elementary functions (ulps).
    norm : {"elementwise", "max"}
        How golden tolerances of the kind are applied: ``"elementwise"`` for plain sums
        of products (per-element magnitude bound), ``"max"`` (normwise) for
        normalisations and elementary functions.
    """

    name: str
    doc: str
    state: Callable
    roles: Callable
    init: Callable
    forward: Callable
    backward: Callable
    count: Callable
    init_draws_float64: bool = False
    inference_identity: bool = False
    functions: tuple | None = None
    accumulation: Callable | None = None
    norm: str = "max"

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"a layer kind's name must be an identifier, got {self.name!r}")
        if self.norm not in ("elementwise", "max"):
            raise ValueError(f"norm of layer kind {self.name!r} must be 'elementwise' or 'max', got {self.norm!r}")
        for flag in ("init_draws_float64", "inference_identity"):
            object.__setattr__(self, flag, as_flag(getattr(self, flag), f"{flag} of layer kind {self.name!r}"))


_KINDS: dict = {}


def register(kind: LayerKind) -> LayerKind:
    """Add a layer kind; refuses a name that is already registered.

    Parameters
    ----------
    kind : LayerKind
        The record to register under ``kind.name``.

    Returns
    -------
    LayerKind
        ``kind`` itself.

    Raises
    ------
    TypeError
        ``kind`` is not a :class:`LayerKind`.
    ValueError
        A kind of that name is already registered.
    """
    if not isinstance(kind, LayerKind):
        raise TypeError(f"register expects a LayerKind, got {type(kind).__name__}")
    if kind.name in _KINDS:
        raise ValueError(f"layer kind {kind.name!r} is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Remove a layer kind registered with :func:`register`.

    Parameters
    ----------
    name : str
        The kind's name (:attr:`LayerKind.name`).

    Returns
    -------
    None

    Raises
    ------
    ValueError
        No kind of that name is registered.
    """
    if name not in _KINDS:
        raise ValueError(f"layer kind {name!r} is not registered")
    del _KINDS[name]


@contextlib.contextmanager
def registered(kind: LayerKind):
    """Register ``kind`` for the duration of a ``with`` block.

    Parameters
    ----------
    kind : LayerKind
        The record to register on entry (:func:`register`) and unregister on exit,
        also when the block raises.

    Yields
    ------
    LayerKind
        ``kind`` itself.

    Raises
    ------
    TypeError, ValueError
        On entry, as :func:`register`.
    """
    register(kind)
    try:
        yield kind
    finally:
        unregister(kind.name)


def get(name: str) -> LayerKind:
    """The record of a layer kind.

    Parameters
    ----------
    name : str
        The kind, as in :attr:`neocell_ref.architecture.LayerDesc.kind`.

    Returns
    -------
    LayerKind

    Raises
    ------
    ValueError
        If no record of that name is registered (the message lists the known kinds).
    """
    try:
        return _KINDS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown layer kind {name!r}; registered: {sorted(_KINDS)}") from None


def names() -> tuple:
    """The registered kinds, in registration order.

    Returns
    -------
    tuple of str
        The names of the registered kinds.
    """
    return tuple(_KINDS)
