"""The single description of a NeoNeXt network (SPEC section 7).

:func:`describe` turns a :class:`NeoNeXtConfig` and an input resolution into an
:class:`Architecture`: an ordered list of :class:`Unit` objects (stem, blocks,
down-sampling layers, head), each an ordered list of :class:`LayerDesc` with the
layer's kind, state-dict name, parameter and buffer shapes, per-sample input and
output shapes, and options. Three consumers read it and nothing else:

* :mod:`neocell_ref.models` builds the runnable network from it,
* the state-dict names (and PyTorch layouts) come from it,
* :mod:`neocell_ref.calculator` counts its parameters and operations.

Layer kinds (``LayerDesc.kind``) and their options, parameters and buffers are those of
their records in :mod:`neocell_ref.registry` (the built-in kinds in
:mod:`neocell_ref.layer_kinds`); :func:`kinds_table` lists them.

A :class:`Unit` of kind ``"residual"`` computes ``x + layers(x)``; one of kind
``"sequential"`` computes ``layers(x)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass, field

from . import registry
from .spec import GroupSpec, check_input_size, parse_kernel_code
from .validation import _first_items, _short_repr, as_flag, as_int, real_number

__all__ = [
    "NeoNeXtConfig",
    "LayerDesc",
    "Unit",
    "Architecture",
    "MODEL_CONFIGS",
    "resolution_pair",
    "describe",
    "get_config",
    "stage_kernel_codes",
    "RELEASED_CHECKPOINT_OPTIONS",
    "kinds_table",
]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1
LN_EPS = 1e-6
PATCH = 4
#: The deepest network :func:`describe` lays out block by block (NeoNeXt-XL has 36
#: blocks). Deeper ones are refused at once instead of taking minutes to describe;
#: :func:`neocell_ref.model_complexity` still counts them (in closed form).
MAX_BLOCKS = 10_000
STEM_IN = 3


@dataclass(frozen=True)
class NeoNeXtConfig:
    """Options of a NeoNeXt (SPEC section 7), with the official defaults.

    Parameters
    ----------
    per_stage_layers : tuple of 4 int
        Blocks per stage.
    dims : tuple of 4 int
        Channel widths per stage.
    num_classes : int, default 1000
    kernel_spec : str, default "default"
        ``"default"`` gives ``"4+7"`` in stages 1-2 and ``"7"`` in stages 3-4; any
        other kernel code is used in every stage.
    shifts : tuple of 4 int, default (1, 1, 1, 0)
        Shift amount per stage (0 = none).
    layer_scale_init_value : float, default 0.0
        Layer scale exists only when > 0.
    linear_bias : bool, default False
        Biases of ``fc_1`` and ``fc_2`` (the head always has a bias).
    drop_path : float, default 0.0
        Largest drop-path rate; block ``i`` of ``n`` gets ``drop_path * i / (n - 1)``
        (ConvNeXt's linear schedule).
    in_chans : int, default 3
    """

    per_stage_layers: tuple = (3, 3, 9, 3)
    dims: tuple = (96, 192, 384, 768)
    num_classes: int = 1000
    kernel_spec: str = "default"
    shifts: tuple = (1, 1, 1, 0)
    layer_scale_init_value: float = 0.0
    linear_bias: bool = False
    drop_path: float = 0.0
    in_chans: int = STEM_IN

    def __post_init__(self):
        for name in ("per_stage_layers", "dims", "shifts"):
            value = _first_items(getattr(self, name), 4)
            if value is None:  # a set or dict has no stage order
                raise TypeError(f"{name} must be a sequence of 4 integers, got {_short_repr(getattr(self, name))}")
            if len(value) != 4:
                raise ValueError(f"{name} must have 4 entries (one per stage), got {_short_repr(getattr(self, name))}")
            minimum = 0 if name == "shifts" else 1
            value = tuple(as_int(v, f"{name}[{stage}]", minimum) for stage, v in enumerate(value))
            object.__setattr__(self, name, value)
        for name in ("num_classes", "in_chans"):
            object.__setattr__(self, name, as_int(getattr(self, name), name, 1))
        if not isinstance(self.kernel_spec, str):
            raise TypeError(f"kernel_spec must be a str such as 'default' or '4+7', got {self.kernel_spec!r}")
        drop_path = real_number(self.drop_path, "drop_path", 0.0, 1.0, high_open=True, type_error=True)
        object.__setattr__(self, "drop_path", drop_path)
        scale = real_number(self.layer_scale_init_value, "layer_scale_init_value", 0.0, type_error=True)
        object.__setattr__(self, "layer_scale_init_value", scale)
        object.__setattr__(self, "linear_bias", as_flag(self.linear_bias, "linear_bias"))
        # Kernel codes are validated per stage here so that a bad code fails early.
        for stage, (code, dim, shift) in enumerate(zip(stage_kernel_codes(self.kernel_spec), self.dims, self.shifts)):
            try:
                parse_kernel_code(code, dim, shift)
            except ValueError as exc:  # name the stage: several stages may share a code
                raise ValueError(f"stage {stage + 1} (dims[{stage}]={dim}, shifts[{stage}]={shift}): {exc}") from None


MODEL_CONFIGS = {
    "neonext_t": dict(per_stage_layers=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    "neonext_s": dict(per_stage_layers=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    "neonext_b": dict(per_stage_layers=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    "neonext_l": dict(per_stage_layers=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    "neonext_xl": dict(per_stage_layers=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
}

#: Options of the released ImageNet checkpoints (SPEC section 7); shifts at 224 px.
RELEASED_CHECKPOINT_OPTIONS = dict(
    linear_bias=True, kernel_spec="4+7", layer_scale_init_value=1e-6, shifts=(1, 1, 1, 0)
)


def get_config(name: str, **options) -> NeoNeXtConfig:
    """The :class:`NeoNeXtConfig` of a named model (``neonext_t`` ... ``neonext_xl``) with options.

    Parameters
    ----------
    name : str
        A key of :data:`MODEL_CONFIGS`: ``"neonext_t"``, ``"neonext_s"``, ``"neonext_b"``,
        ``"neonext_l"`` or ``"neonext_xl"``.
    **options
        Any :class:`NeoNeXtConfig` field but ``per_stage_layers`` and ``dims`` (which
        the name fixes): ``num_classes``, ``kernel_spec``, ``shifts``,
        ``layer_scale_init_value``, ``linear_bias``, ``drop_path``, ``in_chans``.

    Returns
    -------
    NeoNeXtConfig

    Raises
    ------
    TypeError
        ``name`` is not a str, or an option is unknown or is ``per_stage_layers`` or
        ``dims``; or as :class:`NeoNeXtConfig` for an option's value.
    ValueError
        ``name`` is not a known model; or as :class:`NeoNeXtConfig` for an option's value.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str (one of {sorted(MODEL_CONFIGS)}), got {_short_repr(name)}")
    if name not in MODEL_CONFIGS:
        raise ValueError(f"unknown model name {name!r}; known: {sorted(MODEL_CONFIGS)}")
    unknown = set(options) - set(NeoNeXtConfig.__dataclass_fields__) | (set(options) & {"per_stage_layers", "dims"})
    if unknown:
        raise TypeError(f"unknown option(s) for {name}: {sorted(unknown)}")
    return NeoNeXtConfig(**MODEL_CONFIGS[name], **options)


def stage_kernel_codes(kernel_spec: str) -> tuple[str, str, str, str]:
    """Kernel code per stage: ``"default"`` is ``("4+7", "4+7", "7", "7")``.

    Parameters
    ----------
    kernel_spec : str
        ``"default"``, or a kernel code such as ``"7"`` or ``"4+7"`` used in every stage
        (:attr:`NeoNeXtConfig.kernel_spec`); the code itself is not checked here
        (:func:`neocell_ref.spec.parse_kernel_code` does).

    Returns
    -------
    tuple of 4 str
        One kernel code per stage.

    Raises
    ------
    TypeError
        ``kernel_spec`` is not a str.
    """
    if not isinstance(kernel_spec, str):
        raise TypeError(f"kernel_spec must be a str such as 'default' or '4+7', got {_short_repr(kernel_spec)}")
    if kernel_spec == "default":
        return ("4+7", "4+7", "7", "7")
    return (kernel_spec,) * 4


@dataclass(frozen=True)
class LayerDesc:
    """One layer of the network.

    Attributes
    ----------
    name : str
        State-dict prefix (``stage_1.0.ops.content.fc_1``); parameter-free layers get
        a descriptive name of the same shape that never appears in a state dict.
    kind : str
        See the module docstring.
    in_shape, out_shape : tuple of int
        Per-sample shapes, ``(C, H, W)`` or ``(C,)``.
    params : dict
        Trainable parameter name (relative to ``name``) -> shape, in state-dict order.
    buffers : dict
        Non-trainable state name -> shape (``()`` for scalars).
    options : dict
        Kind-specific options.
    """

    name: str
    kind: str
    in_shape: tuple
    out_shape: tuple
    params: dict = field(default_factory=dict)
    buffers: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)

    def key(self, entry: str) -> str:
        """Full state-dict name of one parameter or buffer (``entry`` relative to the layer)."""
        return f"{self.name}.{entry}"

    def param_keys(self) -> list[str]:
        """Full state-dict names of the trainable parameters."""
        return [self.key(p) for p in self.params]

    def buffer_keys(self) -> list[str]:
        """Full state-dict names of the buffers."""
        return [self.key(b) for b in self.buffers]

    def entries(self) -> Iterator[tuple]:
        """``(key, entry, shape, is_param)`` of every parameter then buffer, in state-dict order."""
        for entry, shape in self.params.items():
            yield self.key(entry), entry, shape, True
        for entry, shape in self.buffers.items():
            yield self.key(entry), entry, shape, False

    @property
    def num_params(self) -> int:
        total = 0
        for shape in self.params.values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total


@dataclass(frozen=True)
class Unit:
    """A run of layers: ``"sequential"`` (``layers(x)``) or ``"residual"`` (``x + layers(x)``)."""

    name: str
    kind: str
    layers: tuple


@dataclass(frozen=True)
class Architecture:
    """A described network: config, input resolution and units in execution order."""

    config: NeoNeXtConfig
    resolution: tuple
    units: tuple

    def layers(self) -> Iterator[LayerDesc]:
        """Every layer in execution order."""
        for unit in self.units:
            yield from unit.layers

    def entries(self) -> Iterator[tuple]:
        """``(key, layer, entry, shape, is_param)`` of every state-dict entry, in state-dict
        order (per layer: parameters, then buffers)."""
        for layer in self.layers():
            for key, entry, shape, is_param in layer.entries():
                yield key, layer, entry, shape, is_param

    def param_shapes(self) -> dict:
        """State-dict name -> shape of every trainable parameter, in state-dict order."""
        return {key: shape for key, _, _, shape, is_param in self.entries() if is_param}

    def buffer_shapes(self) -> dict:
        """State-dict name -> shape of every buffer, in state-dict order."""
        return {key: shape for key, _, _, shape, is_param in self.entries() if not is_param}

    def state_shapes(self) -> dict:
        """Every state-dict entry (parameters and buffers), grouped per layer."""
        return {key: shape for key, _, _, shape, _ in self.entries()}

    @property
    def num_params(self) -> int:
        """Number of trainable scalars."""
        return sum(l.num_params for l in self.layers())


def layer(name, kind, in_shape, out_shape=None, **options) -> LayerDesc:
    """A :class:`LayerDesc` of a registered kind, its parameters and buffers (names and
    shapes) from the kind's record (:attr:`neocell_ref.registry.LayerKind.state`).
    ``out_shape`` defaults to ``in_shape``."""
    in_shape = tuple(in_shape)
    out_shape = in_shape if out_shape is None else tuple(out_shape)
    params, buffers = registry.get(kind).state(in_shape, out_shape, options)
    return LayerDesc(name, kind, in_shape, out_shape, params=params, buffers=buffers, options=options)


def kinds_table() -> str:
    """The registered layer kinds with their options, parameters and buffers, one per line.

    Returns
    -------
    str
        One line per kind of :func:`neocell_ref.registry.names`, in registration order:
        the name padded to 12 characters, then the record's ``doc``.
    """
    return "\n".join(f"{name:<12} {registry.get(name).doc}" for name in registry.names())


def _batchnorm(name, shape):
    return layer(name, "batchnorm", shape, eps=BN_EPS, momentum=BN_MOMENTUM)


def _conv1x1(name, shape, c_out):
    return layer(name, "conv1x1", shape, (c_out, *shape[1:]))


def _neocell(name, shape, specs):
    specs = tuple(specs)
    h_out, w_out = check_input_size(specs, shape[1], shape[2])
    return layer(name, "neocell", shape, (shape[0], h_out, w_out), specs=specs)


def _linear(name, shape, c_out, bias):
    return layer(name, "linear", shape, (c_out, *shape[1:]), bias=bias)


def resolution_pair(resolution) -> tuple[int, int]:
    """``resolution`` (an int ``s`` for ``s x s``, or ``(H, W)``) as a pair of Python ints.

    The one check of the patchify stem's rule: both sides positive multiples of its
    patch size (SPEC section 7). Whether every later layer can take its input (a
    non-empty down-sampled map, the shift-size rule of SPEC section 4) is checked by
    :func:`describe`.

    Parameters
    ----------
    resolution : int or (int, int)
        Input size: an int ``s`` for ``s x s``, or an ordered pair ``(H, W)`` (a
        sequence or iterable of two integers; a set or a dict is refused).

    Returns
    -------
    (H, W) : (int, int)
        Python ints, each a positive multiple of 4.

    Raises
    ------
    ValueError
        Anything but one integer or two integers that are positive multiples of 4.
    """
    if isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool):
        pair = (resolution, resolution)
    else:
        pair = _first_items(resolution, 2)  # a set or dict has no first and second side
    if (
        pair is None
        or len(pair) != 2
        or any(isinstance(r, bool) or not isinstance(r, numbers.Integral) or r < PATCH or r % PATCH for r in pair)
    ):
        raise ValueError(f"input resolution must be (H, W) with positive multiples of {PATCH}, got {resolution!r}")
    return int(pair[0]), int(pair[1])


def describe(config: NeoNeXtConfig, resolution=224) -> Architecture:
    """Describe a NeoNeXt for an input of ``resolution`` (int or ``(H, W)``) pixels.

    Parameters
    ----------
    config : NeoNeXtConfig
        The network's options.
    resolution : int or (int, int), default 224
        Input ``H x W`` as :func:`resolution_pair` reads it.

    Returns
    -------
    Architecture
        The units (stem, the blocks of each stage with the down-sampling layers before
        stages 2-4, head) in execution order; per-sample shapes start at
        ``(in_chans, H, W)``.

    Raises
    ------
    ValueError
        If the height or width is not a positive multiple of 4, or a stage's shift
        does not fit its feature map (SPEC section 4). Also when a side is below 32 (a
        down-sampling layer's output would be empty), or the config has more than
        :data:`MAX_BLOCKS` blocks.
    TypeError
        If ``config`` is not a :class:`NeoNeXtConfig` (a name goes through
        :func:`get_config` first).
    """
    if not isinstance(config, NeoNeXtConfig):
        raise TypeError(
            f"config must be a NeoNeXtConfig (get_config(name) makes one for a model name), got {_short_repr(config)}"
        )
    resolution = resolution_pair(resolution)
    total_blocks = sum(config.per_stage_layers)
    if total_blocks > MAX_BLOCKS:
        # Every block is a handful of layer records: a description is linear in the
        # block count, and a network this deep would take minutes just to describe.
        raise ValueError(
            f"per_stage_layers={config.per_stage_layers} describes {total_blocks} blocks; a description "
            f"(and so a runnable model) holds at most MAX_BLOCKS={MAX_BLOCKS} (NeoNeXt-XL has 36). "
            "model_complexity counts a network of any depth in closed form."
        )
    h, w = resolution
    dims = config.dims
    units = []

    # Stem: patchify 4x4, 1x1 conv 48 -> d0, BatchNorm.
    shape = (config.in_chans, h, w)
    patched = (config.in_chans * PATCH * PATCH, h // PATCH, w // PATCH)
    stem = [
        layer("stem.patchify", "patchify", shape, patched, patch=PATCH),
        _conv1x1("stem.conv", patched, dims[0]),
    ]
    shape = stem[-1].out_shape
    stem.append(_batchnorm("stem.norm", shape))
    units.append(Unit("stem", "sequential", tuple(stem)))

    block_index = 0
    codes = stage_kernel_codes(config.kernel_spec)
    for stage in range(4):
        if stage > 0:
            prefix = f"downsample_{stage}"
            down = [_conv1x1(f"{prefix}.conv", shape, dims[stage])]
            shape = down[-1].out_shape
            down_spec = GroupSpec(channels=dims[stage], h_in=2, h_out=1, w_in=2, w_out=1)
            try:
                down.append(_neocell(f"{prefix}.neocell", shape, [down_spec]))
            except ValueError as exc:
                raise ValueError(f"{prefix} at {shape[1]}x{shape[2]}: {exc}") from None
            shape = down[-1].out_shape
            down.append(_batchnorm(f"{prefix}.norm_1", shape))
            units.append(Unit(prefix, "sequential", tuple(down)))
        d = dims[stage]
        specs = parse_kernel_code(codes[stage], d, config.shifts[stage])
        for b in range(config.per_stage_layers[stage]):
            p = f"stage_{stage + 1}.{b}.ops.content"
            rate = config.drop_path * block_index / (total_blocks - 1) if total_blocks > 1 else 0.0
            block_index += 1
            try:
                neocell = _neocell(f"{p}.neocell", shape, specs)
            except ValueError as exc:
                raise ValueError(f"stage {stage + 1} at {shape[1]}x{shape[2]}: {exc}") from None
            layers = [neocell, _batchnorm(f"{p}.norm", shape)]
            layers.append(_linear(f"{p}.fc_1", shape, 4 * d, config.linear_bias))
            wide = layers[-1].out_shape
            layers.append(layer(f"{p}.gelu", "gelu", wide))
            layers.append(_linear(f"{p}.fc_2", wide, d, config.linear_bias))
            if config.layer_scale_init_value > 0:
                layers.append(layer(f"{p}.layer_scale", "layer_scale", shape, init_value=config.layer_scale_init_value))
            layers.append(layer(f"{p}.drop_path", "drop_path", shape, rate=rate))
            units.append(Unit(f"stage_{stage + 1}.{b}", "residual", tuple(layers)))

    c = dims[3]
    head = [
        layer("head.avgpool", "avgpool", shape, (c,)),
        layer("head.ln", "layernorm", (c,), eps=LN_EPS),
        _linear("head.fc", (c,), config.num_classes, True),
    ]
    units.append(Unit("head", "sequential", tuple(head)))
    return Architecture(config=config, resolution=resolution, units=tuple(units))
