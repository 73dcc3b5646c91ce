"""Runnable NeoNeXt networks, built from the single architecture description.

:class:`NeoNeXt` reads :func:`neocell_ref.architecture.describe` and nothing else to know
its layers: the order of the units and layers, the state-dict names, the parameter and
buffer shapes and the per-layer options (kernel specs, eps, momentum, drop-path rate) all
come from the :class:`~neocell_ref.architecture.LayerDesc` objects. This module only knows,
per layer *kind*, which function of :mod:`neocell_ref.layers` (or the NeoCell core) runs it
and how its parameters are initialised.

Quick start::

    import numpy as np
    import neocell_ref as nr

    m = nr.models.neonext_t(num_classes=1000, dtype=np.float32, rng=np.random.default_rng(0))
    logits = m.forward(x, training=False)         # x: (N, 3, H, W), H and W multiples of 4
    grad_x = m.backward(grad_logits)              # parameter gradients in m.grads
    m.save_npz("weights.npz"); m.load_npz("weights.npz")

Semantics that SPEC leaves open are decided in ``docs/model.md`` (cache semantics,
initialisation, dtype casting, drop-path randomness, float32 accuracy).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import time
from collections import namedtuple

import numpy as np

from . import registry
from .architecture import MODEL_CONFIGS, Architecture, NeoNeXtConfig, describe, get_config, resolution_pair
from .layer_kinds import INIT_STD, trunc_normal
from .models_fast import fast_forward
from .models_fast_train import tail_backward, train_forward, train_scope
from .validation import _short_repr, as_flag, as_int, as_real_array, atomic_file, check_nbytes, floating_dtype, read_npz

__all__ = [
    "NeoNeXt",
    "IncompatibleKeys",
    "neonext_t",
    "neonext_s",
    "neonext_b",
    "neonext_l",
    "neonext_xl",
    "trunc_normal",
    "INIT_STD",
]

#: Result of a non-strict :meth:`NeoNeXt.load_state_dict` (as in PyTorch).
IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


class NeoNeXt:
    """A NeoNeXt network (SPEC section 7) with forward and hand-written backward.

    Parameters
    ----------
    *sizes : tuple of 4 int, optional
        ``per_stage_layers`` and ``dims`` (blocks and widths per stage), positionally or
        by keyword; default :class:`~neocell_ref.architecture.NeoNeXtConfig`'s (NeoNeXt-T).
    **options
        The other options of :class:`~neocell_ref.architecture.NeoNeXtConfig`
        (``num_classes``, ``kernel_spec``, ``shifts``, ``layer_scale_init_value``,
        ``linear_bias``, ``drop_path``, ``in_chans``), keyword only, with its defaults
        (the official ones).
    dtype : float32 or float64, default float64
        Dtype of every parameter and activation. float64 is the reference precision.
    rng : numpy.random.Generator, optional
        Source of the initial weights (default ``np.random.default_rng(0)``).
    resolution : int or (int, int), default 224
        Input size used to validate the description at construction (the shift rule
        depends on it). :meth:`forward` accepts any other size that the configuration
        supports.
    drop_path_seed : int, default 0
        Seed of :attr:`drop_path_rng`, the generator of the drop-path masks.

    Attributes
    ----------
    config : NeoNeXtConfig
    architecture : Architecture
        The description the model was built from (at ``resolution``).
    params : dict of str -> ndarray
        Trainable parameters under their official state-dict names, PyTorch layouts.
    buffers : dict of str -> ndarray
        BatchNorm ``running_mean``, ``running_var`` (model dtype) and
        ``num_batches_tracked`` (int64 scalar).
    grads : dict of str -> ndarray
        Parameter gradients of the last :meth:`backward`, keyed like :attr:`params`.
    drop_path_rng : numpy.random.Generator
        Draws the per-sample drop-path masks in training mode (one ``random(N)`` draw per
        block with a non-zero rate, in execution order). Replace it to re-seed.
    profile : dict or None
        Set to a dict to accumulate seconds per layer kind (``"neocell"``, ``"linear"``,
        ``"gelu"``, ..., ``"residual_add"``) over forward and backward calls; forward and
        backward times go under ``"forward:<kind>"`` and ``"backward:<kind>"``.
    fast_training : bool, default True
        A cached training forward (and its backward) runs the fast training path
        (:mod:`neocell_ref.models_fast_train`); False runs the plain layer-by-layer
        formulation, which the fast one is tested against.
    """

    def __init__(self, *sizes, dtype=np.float64, rng=None, resolution=224, drop_path_seed=0, **options):
        # The options and their defaults are NeoNeXtConfig's: the one place they are listed.
        if len(sizes) > 2:
            raise TypeError(f"NeoNeXt takes at most 2 positional arguments (per_stage_layers, dims), got {len(sizes)}")
        for name, value in zip(("per_stage_layers", "dims"), sizes):
            if name in options:
                raise TypeError(f"NeoNeXt got multiple values for {name}")
            options[name] = value
        unknown = sorted(set(options) - set(NeoNeXtConfig.__dataclass_fields__))
        if unknown:
            raise TypeError(
                f"NeoNeXt got unknown option(s) {unknown}; the options are NeoNeXtConfig's: "
                f"{list(NeoNeXtConfig.__dataclass_fields__)}"
            )
        self._setup(NeoNeXtConfig(**options), dtype, rng, resolution, drop_path_seed)

    @classmethod
    def from_config(cls, config, *, dtype=np.float64, rng=None, resolution=224, drop_path_seed=0):
        """Build a model from a :class:`~neocell_ref.architecture.NeoNeXtConfig`."""
        if not isinstance(config, NeoNeXtConfig):
            raise TypeError(f"config must be a NeoNeXtConfig, got {type(config).__name__}")
        model = cls.__new__(cls)
        model._setup(config, dtype, rng, resolution, drop_path_seed)
        return model

    @classmethod
    def from_architecture(cls, architecture, *, dtype=np.float64, rng=None, drop_path_seed=0):
        """Build a model from a given :class:`~neocell_ref.architecture.Architecture`.

        The model runs exactly the described units and layers (any registered layer
        kind, :mod:`neocell_ref.registry`), at the description's resolution only:
        :meth:`forward` refuses another input size.
        """
        if not isinstance(architecture, Architecture):
            raise TypeError(f"architecture must be an Architecture, got {type(architecture).__name__}")
        model = cls.__new__(cls)
        model._setup(
            architecture.config, dtype, rng, architecture.resolution, drop_path_seed, architecture=architecture
        )
        return model

    # ----------------------------------------------------------------------------------
    # construction and initialisation
    # ----------------------------------------------------------------------------------
    def _setup(self, config, dtype, rng, resolution, drop_path_seed, architecture=None):
        dtype = floating_dtype(dtype, allowed=_FLOAT_DTYPES)
        if rng is None:
            rng = np.random.default_rng(0)
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator (e.g. np.random.default_rng(0)), got {rng!r}")
        drop_path_seed = as_int(drop_path_seed, "drop_path_seed", 0)
        self.config = config
        self.dtype = dtype
        self._fixed_architecture = architecture is not None
        self.architecture = describe(config, resolution) if architecture is None else architecture
        self._architectures = {self.architecture.resolution: self.architecture}
        self.drop_path_rng = np.random.default_rng(int(drop_path_seed))
        self.params = {}
        self.buffers = {}
        self.grads = {}
        self.profile = None
        self.fast_training = True
        self._tape = None
        self._running_updates = None
        # Refuse before allocating anything. Random initialisers draw in float64 first.
        for key, desc, _, shape, _ in self.architecture.entries():
            drawn = np.float64 if registry.get(desc.kind).init_draws_float64 else dtype
            check_nbytes(shape, drawn, f"NeoNeXt: {key}")
        for desc in self.architecture.layers():
            values = registry.get(desc.kind).init(desc, rng, dtype)
            expected = {entry: tuple(shape) for _, entry, shape, _ in desc.entries()}
            got = {k: np.shape(v) for k, v in values.items()}
            if got != expected:  # pragma: no cover - programming error
                raise RuntimeError(
                    f"initialiser of {desc.kind!r} made {got} for {desc.name}, description says {expected}"
                )
            for key, entry, _, is_param in desc.entries():
                (self.params if is_param else self.buffers)[key] = values[entry]

    def num_parameters(self) -> int:
        """Number of trainable scalars (from the description; buffers not counted)."""
        return self.architecture.num_params

    def __repr__(self):
        c = self.config
        return (
            f"NeoNeXt(per_stage_layers={c.per_stage_layers}, dims={c.dims}, num_classes={c.num_classes}, "
            f"kernel_spec={c.kernel_spec!r}, shifts={c.shifts}, dtype={self.dtype.name}, "
            f"params={self.num_parameters():,})"
        )

    # ----------------------------------------------------------------------------------
    # state dict
    # ----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Copies of every parameter and buffer under the official names, in description order.

        Parameters and running statistics have the model dtype; ``num_batches_tracked`` is
        an int64 scalar array. Round-trips through :meth:`load_state_dict`.
        """
        out = {}
        for key in self.architecture.state_shapes():
            source = self.params if key in self.params else self.buffers
            out[key] = source[key].copy()
        return out

    def load_state_dict(self, state, strict=True):
        """Load parameters and buffers from a mapping of official names to arrays.

        Every entry is validated before anything is assigned, so a failed load leaves the
        model unchanged. Accepted values: real floating arrays of the exact shape (cast
        to the model dtype, so a float64 checkpoint loads into a float32 model with
        rounding, and stored as new C-contiguous arrays whatever the source's memory
        order) and, for ``num_batches_tracked``, an integer scalar in [0, 2**63 - 1]
        (Python int, NumPy integer, or integer array of shape ``()`` or ``(1,)``).
        Values must be finite; running variances >= 0.

        Parameters
        ----------
        state : mapping of str -> array_like
            For example :meth:`state_dict`'s output or an opened ``.npz`` file.
        strict : bool, default True
            Refuse missing and unexpected keys (the error lists them). With False they
            are skipped and reported in the return value.

        Returns
        -------
        IncompatibleKeys
            ``(missing_keys, unexpected_keys)``, both empty after a strict load.

        Raises
        ------
        ValueError
            Missing/unexpected keys (strict), a value that cannot be read from ``state``
            (an object member of ``np.load(path)``, which refuses to unpickle it; the key
            named), a shape mismatch (key, expected, got), a non-finite value, a
            negative running variance or a ``num_batches_tracked`` outside int64 or
            negative (key and value named); all problems in one message.
        TypeError
            ``state`` is not a mapping, a key is not a str, or a value has a wrong dtype
            (key and dtype named).
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"state must be a mapping of state-dict names to arrays, got {type(state).__name__}")
        strict = as_flag(strict, "strict")
        keys = list(state.keys())
        for key in keys:
            if not isinstance(key, str):
                raise TypeError(f"state-dict keys must be str, got {key!r} ({type(key).__name__})")
        expected = self.architecture.state_shapes()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in keys if k not in expected]
        problems = []
        if strict and (missing or unexpected):
            if missing:
                problems.append(f"missing key(s): {missing}")
            if unexpected:
                problems.append(f"unexpected key(s): {unexpected}")
        type_problems = []
        new = {}
        for key, desc, entry, shape, _ in self.architecture.entries():
            if key not in state:
                continue
            try:
                value = state[key]
            except Exception as exc:  # any mapping's error; an NpzFile raises on reading
                # np.load(path)[key] reads the member only now, and refuses an object member
                # ("Object arrays cannot be loaded when allow_pickle=False") or a damaged
                # one with a message that names no key.
                problems.append(f"{key}: could not be read from state ({type(exc).__name__}: {exc})")
                continue
            try:
                new[key] = self._validate_entry(key, value, tuple(shape), registry.get(desc.kind).roles(entry))
            except TypeError as exc:
                type_problems.append(str(exc))
            except ValueError as exc:
                problems.append(str(exc))
        if type_problems:
            raise TypeError("cannot load state dict: " + "; ".join(type_problems + problems))
        if problems:
            raise ValueError("cannot load state dict: " + "; ".join(problems))
        for key, value in new.items():
            (self.params if key in self.params else self.buffers)[key] = value
        self._tape = None  # a cached forward no longer matches the weights
        return IncompatibleKeys(missing if not strict else [], unexpected if not strict else [])

    def _validate_entry(self, key, value, shape, role):
        if isinstance(value, np.ma.MaskedArray):  # np.asarray would load the masked values
            raise TypeError(f"{key}: a masked array; its mask would be ignored")
        if role == "count":
            try:
                arr = np.asarray(value)
            except Exception as exc:
                raise TypeError(f"{key}: could not be converted to an array ({exc})") from None
            # An int beyond int64 and uint64 (2**64, -2**63 - 1) becomes an object array:
            # read the int it holds, so that the range check below names it.
            item = arr.reshape(())[()] if arr.shape in ((), (1,)) else None
            if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Integral):
                raise TypeError(f"{key}: expected an integer scalar, got dtype {arr.dtype} shape {arr.shape}")
            count = int(item)
            if not -(2**63) <= count < 2**63:
                raise ValueError(f"{key}: {_short_repr(count)} is outside the int64 range [-2**63, 2**63 - 1]")
            if count < 0:
                raise ValueError(f"{key}: must be in [0, 2**63 - 1] (a count of batches, int64), got {count}")
            return np.asarray(count, dtype=np.int64)
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise TypeError(f"{key}: could not be converted to an array ({exc})") from None
        if arr.dtype.kind != "f":
            raise TypeError(f"{key}: expected a floating-point array, got dtype {arr.dtype}")
        if arr.shape != shape:
            raise ValueError(f"{key}: shape mismatch, expected {shape}, got {arr.shape}")
        # Cast first, then check: 1e300 is finite in float64 but Inf in a float32 model.
        # Always a new C-ordered array: astype keeps a Fortran source's order, and the
        # layers' products then round differently from those of the same values in C order.
        with np.errstate(over="ignore"):
            cast = arr.astype(self.dtype, order="C", copy=True)
        if not np.isfinite(cast).all():
            detail = f" after the cast to {self.dtype}" if np.isfinite(arr).all() else ""
            raise ValueError(f"{key}: contains NaN or Inf{detail}")
        if role == "variance" and (cast < 0).any():
            raise ValueError(f"{key}: running variance must be >= 0, got min {cast.min()!r}")
        return cast

    def save_npz(self, path):
        """Write :meth:`state_dict` to an uncompressed ``.npz`` (no pickled objects).

        The file is written exactly at ``path`` (``np.savez`` alone would add ``.npz`` to
        a path without that suffix), and atomically: into a temporary file of the same
        folder, then renamed over ``path``, so an interrupted save leaves an existing
        checkpoint intact (the temporary file is removed).

        Parameters
        ----------
        path : str or os.PathLike
            Any name, ``.npz`` suffix or not; not empty.

        Raises
        ------
        TypeError
            ``path`` is not a str or ``os.PathLike`` of a str (``path`` and the value named).
        ValueError
            ``path`` is empty.
        OSError
            The folder cannot be written, or ``path`` is a folder.
        """
        target = os.fspath(path) if isinstance(path, os.PathLike) else path
        if not isinstance(target, str):
            raise TypeError(
                f"path must be a str or an os.PathLike, got {_short_repr(path)} of type {type(path).__name__}"
            )
        if not target:
            raise ValueError("path must not be empty ('' would be written as '.npz' by np.savez)")
        state = self.state_dict()
        with atomic_file(target) as file:  # a file object: np.savez adds no suffix
            np.savez(file, **state)

    def load_npz(self, path, strict=True):
        """Load a ``.npz`` written by :meth:`save_npz` (or any archive of official names).

        Every member's ``.npy`` header is checked against this model's state (name,
        shape, a real numeric dtype, exact size) before its data is read
        (:func:`neocell_ref.validation.read_npz`): object arrays, forged headers and
        zip bombs are refused with a ``ValueError`` and nothing is unpickled. A member
        stored in Fortran order is read too (as ``np.load`` reads it).

        Parameters
        ----------
        path : str, os.PathLike or binary file object
            The archive, by path or opened for binary reading (``io.BytesIO(data)``).
        strict : bool, default True
            As :meth:`load_state_dict`. With False, members of unknown names are not
            read and are reported in ``unexpected_keys`` (in archive order), as
            ``load_state_dict(np.load(path), strict=False)`` reports them.

        Returns
        -------
        IncompatibleKeys

        Raises
        ------
        TypeError
            ``path`` is neither a str, an ``os.PathLike`` nor a binary file object
            (``path`` and the value named), or as :meth:`load_state_dict`.
        ValueError
            The archive or a member is unreadable or refused (named), or as
            :meth:`load_state_dict`.
        """
        strict = as_flag(strict, "strict")
        # A batch count may be stored as shape () or (1,), as load_state_dict accepts it.
        shapes = {
            key: frozenset({(), (1,)}) if key.endswith("num_batches_tracked") else np.shape(value)
            for key, value in self.state_dict().items()
        }
        skipped = []  # names of members not read (strict=False)
        state = read_npz(path, shapes, what="state archive", strict=strict, skipped=skipped)
        result = self.load_state_dict(state, strict=strict)
        # state holds only known names, so every unexpected key is a skipped member.
        return IncompatibleKeys(result.missing_keys, result.unexpected_keys + skipped)

    # ----------------------------------------------------------------------------------
    # forward / backward
    # ----------------------------------------------------------------------------------
    def describe(self, resolution):
        """The architecture description at another input size (memoised)."""
        resolution = resolution_pair(resolution)
        if resolution not in self._architectures and self._fixed_architecture:
            raise ValueError(
                f"this model was built from an architecture described at {self.architecture.resolution}; "
                f"it cannot run at {resolution}"
            )
        if resolution not in self._architectures:
            self._architectures[resolution] = describe(self.config, resolution)
        return self._architectures[resolution]

    def _check_input(self, x):
        x = as_real_array(x, "x")
        if x.ndim != 4:
            raise ValueError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
        if x.shape[0] < 1:
            raise ValueError(f"x must hold at least one sample, got shape {x.shape}")
        if x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"x has {x.shape[1]} channels (x.shape[1]) but the model expects in_chans={self.config.in_chans}"
            )
        return x

    def forward(self, x, training=False, *, cache=True):
        """Logits of a batch.

        Parameters
        ----------
        x : array_like, shape (N, in_chans, H, W)
            ``H`` and ``W`` positive multiples of 4 that the shifts fit (SPEC 4, 7).
            Cast to the model dtype.
        training : bool, default False
            True: BatchNorm normalises with batch statistics and updates its running
            statistics (and ``num_batches_tracked``), drop path draws masks from
            :attr:`drop_path_rng`. False: running statistics, drop path is the identity.
        cache : bool, default True
            Keep what :meth:`backward` needs (the input of every layer, the drop-path
            factors and the BatchNorm statistics used): the plain formulation, one
            layer after the other; in training the fast training path
            (:mod:`neocell_ref.models_fast_train`) unless :attr:`fast_training` is
            False. ``cache=False`` is the fast inference path
            (:mod:`neocell_ref.models_fast`): intermediate arrays are overwritten in
            place, the part of each block after its NeoCell runs fused over cache-sized
            blocks of pixels (``docs/model.md``), and :meth:`backward` is refused until
            the next cached forward.

        Returns
        -------
        logits : ndarray, shape (N, num_classes), model dtype

        Raises
        ------
        TypeError
            ``training`` or ``cache`` is not a bool, or ``x`` is not a real numeric array.
        ValueError
            ``x`` has a wrong shape or size, or the batch's largest activation would
            exceed the memory budget (:mod:`neocell_ref.validation`; refused before
            anything runs); in training mode also when ``x`` holds NaN
            or Inf, or a batch statistic is not finite; in either mode when the
            variance of a normalisation overflows from finite values (naming the layer). A training forward that raises
            leaves the running statistics and ``num_batches_tracked`` unchanged: the
            updates are committed only after the whole forward succeeded. Any refused
            forward drops the previous forward's cache: :meth:`backward` then raises.
        """
        # Dropped first: after a refused forward, backward must not differentiate an
        # earlier one (it raises instead, as after cache=False).
        self._tape = None
        training, cache = as_flag(training, "training"), as_flag(cache, "cache")
        x = self._check_input(x)
        self._check_activations(x.shape)
        with np.errstate(over="ignore"):  # an overflow to Inf is refused below in training
            x = x.astype(self.dtype, copy=False)
        if training and not np.isfinite(x).all():  # after the cast: 1e300 is Inf in float32
            raise ValueError(
                f"x contains NaN or Inf (in the model dtype {self.dtype}); a training forward "
                "refuses it (it would enter the BatchNorm running statistics)"
            )
        if training:
            self._check_batch_statistics(x.shape)
        self._running_updates = {} if training else None
        try:
            logits = self._forward(x, training, cache)
            updates = self._running_updates
        finally:
            self._running_updates = None
        if updates:
            bad = [key for key, value in updates.items() if not np.isfinite(value).all()]
            if bad:
                self._tape = None
                raise ValueError(
                    f"the training forward produced non-finite BatchNorm statistics for {bad}; "
                    "running statistics left unchanged"
                )
            self.buffers.update(updates)
        return logits

    def _check_activations(self, x_shape):
        """Refuse, before anything is allocated, a batch whose input in the model dtype or
        largest layer output would exceed the memory budget
        (:func:`neocell_ref.validation.check_nbytes`): a forward's arrays grow with ``N``,
        and a broadcast input of a few kilobytes can stand for any batch."""
        check_nbytes(x_shape, self.dtype, "forward: x in the model dtype")
        widest = max(self.describe(x_shape[2:]).layers(), key=lambda desc: math.prod(desc.out_shape))
        check_nbytes((x_shape[0], *widest.out_shape), self.dtype, f"forward: output of {widest.name}")

    def _check_batch_statistics(self, x_shape):
        """Refuse, before anything runs, a training batch that leaves some BatchNorm a
        single value per channel (the unbiased running variance would divide by zero):
        the message names the first such layer, as PyTorch's does not."""
        for desc in self.describe(x_shape[2:]).layers():
            if desc.kind == "batchnorm":
                values = x_shape[0] * math.prod(desc.in_shape[1:])
                if values < 2:
                    raise ValueError(
                        f"{desc.name}: BatchNorm in training mode needs more than 1 value per channel, "
                        f"and a batch of {x_shape[0]} at {x_shape[2]}x{x_shape[3]} gives it "
                        f"{x_shape[0]}x{desc.in_shape[1]}x{desc.in_shape[2]} = {values}; use a larger batch or input"
                    )

    def _forward(self, x, training, cache):
        if not cache:
            return fast_forward(self, x, training)
        if training and self.fast_training:
            with train_scope():
                x, tape = train_forward(self, x)
            self._tape = {"layers": tape, "output_shape": x.shape, "training": True, "fast": True}
            return x
        # The plain formulation: each layer of the description by its kind's record, every
        # intermediate a new array, the input of each layer kept for backward.
        tape = []
        for unit in self.describe(x.shape[2:]).units:
            if unit.kind == "residual":
                skip = x
                tape.append(("fork", None, None))  # x feeds both the branch and the skip
            for desc in unit.layers:
                x = self._forward_layer(desc, x, training, tape)
            if unit.kind == "residual":
                start = time.perf_counter() if self.profile is not None else 0.0
                x = skip + x
                if self.profile is not None:
                    self._tick("forward:residual_add", start)
                tape.append(("join", None, None))  # x + branch(x)
        self._tape = {"layers": tape, "output_shape": x.shape, "training": bool(training)}
        return x

    __call__ = forward

    def backward(self, grad_logits):
        """Gradients of the last cached :meth:`forward` (``training`` as it was then).

        Parameters
        ----------
        grad_logits : array_like, shape (N, num_classes)
            Gradient of the loss with respect to the logits of that forward.

        Returns
        -------
        grad_x : ndarray, shape (N, in_chans, H, W)
            Gradient with respect to the input.

        Notes
        -----
        Fills :attr:`grads` (replacing it: gradients are not accumulated across calls)
        with one entry per trainable parameter, keyed by state-dict name, in the
        parameter's layout. Uses the parameter values current at the call: do not
        update parameters between the forward and its backward. The cache is kept, so
        backward may be called again on the same forward with another ``grad_logits``.
        """
        if self._tape is None:
            raise RuntimeError(
                "backward needs a preceding forward with cache=True (none since construction, "
                "the last forward had cache=False, or a state dict was loaded since)"
            )
        grad = as_real_array(grad_logits, "grad_logits")
        if grad.shape != self._tape["output_shape"]:
            raise ValueError(
                f"grad_logits has shape {grad.shape}, expected {self._tape['output_shape']} (the logits' shape)"
            )
        grad = grad.astype(self.dtype, copy=True)
        self.grads = {}
        # The fast training path's backward runs in its forward's scope (worker pool and BLAS threads).
        with train_scope() if self._tape.get("fast") else contextlib.nullcontext():
            grad = self._backward_tape(grad)
        # Parameters in state-dict order.
        self.grads = {k: self.grads[k] for k in self.architecture.param_shapes() if k in self.grads}
        return grad

    def _backward_tape(self, grad):
        """Walk the tape backwards from ``grad`` (the logits' gradient, owned); fills ``grads``."""
        skips = []
        for kind, desc, saved in reversed(self._tape["layers"]):
            if kind == "join":
                skips.append(grad)  # d(x + branch)/dx: the skip path passes grad on
            elif kind == "fork":
                start = time.perf_counter() if self.profile is not None else 0.0
                grad = grad + skips.pop()  # branch gradient plus skip gradient (new array)
                if self.profile is not None:
                    self._tick("backward:residual_add", start)
            elif kind == "tail":  # a block's fused tail (the fast training path)
                grad = tail_backward(self, desc, grad, saved)
            elif kind == "fast_layer":  # a layer the fast training path ran itself
                start = time.perf_counter() if self.profile is not None else 0.0
                backward, inner = saved
                grad = backward(self, desc, grad, inner)
                if self.profile is not None:
                    self._tick(f"backward:{desc.kind}", start)
            else:
                start = time.perf_counter() if self.profile is not None else 0.0
                grad = registry.get(desc.kind).backward(self, desc, grad, saved)
                if self.profile is not None:
                    self._tick(f"backward:{desc.kind}", start)
        return grad

    def clear_cache(self):
        """Drop the cached forward (frees its memory); :meth:`backward` then needs a new forward."""
        self._tape = None

    def _forward_layer(self, desc, x, training, tape):
        start = time.perf_counter() if self.profile is not None else 0.0
        y, saved, _ = registry.get(desc.kind).forward(self, desc, x, training, False)
        tape.append(("layer", desc, saved))
        if self.profile is not None:
            self._tick(f"forward:{desc.kind}", start)
        return y

    def _tick(self, key, start):
        self.profile[key] = self.profile.get(key, 0.0) + time.perf_counter() - start

    # The model protocol of the layer-kind records (neocell_ref.registry.LayerKind.forward).
    def param(self, desc, entry):
        """The parameter ``entry`` (a name of ``desc.params``) of the described layer ``desc``."""
        return self.params[desc.key(entry)]

    def buffer(self, desc, entry):
        """The buffer ``entry`` (a name of ``desc.buffers``) of the described layer ``desc``."""
        return self.buffers[desc.key(entry)]

    def set_grad(self, desc, entry, value):
        """Record the gradient of parameter ``entry`` of ``desc`` (during :meth:`backward`)."""
        self.grads[desc.key(entry)] = value

    def stage_buffer(self, desc, entry, value):
        """A training forward's new value of buffer ``entry`` of ``desc``: committed to
        :attr:`buffers` only once the whole forward has succeeded."""
        self._running_updates[desc.key(entry)] = value


# --------------------------------------------------------------------------------------
# named models
# --------------------------------------------------------------------------------------
def _factory(name):
    def build(*, dtype=np.float64, rng=None, resolution=224, drop_path_seed=0, **options):
        config = get_config(name, **options)
        return NeoNeXt.from_config(config, dtype=dtype, rng=rng, resolution=resolution, drop_path_seed=drop_path_seed)

    sizes = MODEL_CONFIGS[name]
    build.__name__ = build.__qualname__ = name
    build.__doc__ = f"""NeoNeXt-{name.split("_")[1].upper()}: blocks {sizes["per_stage_layers"]}, widths {sizes["dims"]}.

    Keyword options are those of :class:`~neocell_ref.architecture.NeoNeXtConfig` except
    the sizes (``num_classes``, ``kernel_spec``, ``shifts``, ``layer_scale_init_value``,
    ``linear_bias``, ``drop_path``, ``in_chans``), plus ``dtype``, ``rng``, ``resolution``
    and ``drop_path_seed`` of :class:`NeoNeXt`.

    Parameters
    ----------
    dtype : float32 or float64, default float64
        Dtype of every parameter and activation.
    rng : numpy.random.Generator, optional
        Source of the initial weights (default ``np.random.default_rng(0)``).
    resolution : int or (int, int), default 224
        Input size ``H x W`` used to validate the description at construction (the shift
        rule depends on it); :meth:`NeoNeXt.forward` accepts any other supported size.
    drop_path_seed : int, default 0
        Seed of the model's :attr:`~NeoNeXt.drop_path_rng`.
    **options
        The options of :class:`~neocell_ref.architecture.NeoNeXtConfig` other than
        ``per_stage_layers`` and ``dims``, keyword only, with its defaults.

    Returns
    -------
    model : NeoNeXt
        Freshly initialised, with this model's ``per_stage_layers`` and ``dims``.

    Raises
    ------
    TypeError
        An unknown option, ``per_stage_layers`` or ``dims``, a ``dtype`` other than
        float32 or float64, an ``rng`` that is not a Generator, or an option of the wrong type.
    ValueError
        A ``resolution`` whose sides are not positive multiples of 4 or are too small for
        the shifts, a negative ``drop_path_seed``, or an option value out of range (e.g.
        ``num_classes`` < 1, ``drop_path`` >= 1, an unreadable ``kernel_spec``).
    """
    return build


neonext_t = _factory("neonext_t")
neonext_s = _factory("neonext_s")
neonext_b = _factory("neonext_b")
neonext_l = _factory("neonext_l")
neonext_xl = _factory("neonext_xl")
