"""Channel-group specifications of a NeoCell layer (SPEC sections 2 and 4).

A NeoCell layer splits its channels into consecutive *groups*. Every channel of a
group owns a left kernel ``A`` of shape ``(h_out, h_in)`` and a right kernel ``B``
of shape ``(w_in, w_out)``; a group may shift its blocks to exchange information
across patch borders.

This module is the one place that knows

* the three dict forms the official code accepts, and how they are validated;
* kernel codes such as ``"4+7"``;
* the output-size rule;
* how a shifted group is cut into sub-groups and which shift each channel uses;
* the shift-size rule that depends on the input size.

Every other module takes the validated, immutable :class:`GroupSpec` objects
produced by :func:`parse_specs`, never raw dicts.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .validation import _first_items, _short_repr, as_int, check_nbytes

__all__ = [
    "GroupSpec",
    "parse_group",
    "parse_specs",
    "MAX_GROUPS",
    "parse_kernel_code",
    "output_size",
    "check_input_size",
    "channel_shifts",
    "subgroup_sizes",
    "shift_segments",
]

_SIZE_FORMS = {
    "kernel": ("kernel",),
    "kernel_a/kernel_b": ("kernel_a", "kernel_b"),
    "h_in/h_out/w_in/w_out": ("h_in", "h_out", "w_in", "w_out"),
}
_ALLOWED_KEYS = frozenset({"channels", "shift", "shift_a", "shift_b"}.union(*map(set, _SIZE_FORMS.values())))


@dataclass(frozen=True)
class GroupSpec:
    """One channel group of a NeoCell layer, validated.

    Parameters
    ----------
    channels : int
        Number of channels in the group (>= 1).
    h_in, h_out : int
        The left kernel ``A`` has shape ``(h_out, h_in)``: ``h_in`` input rows of a
        tile become ``h_out`` output rows.
    w_in, w_out : int
        The right kernel ``B`` has shape ``(w_in, w_out)``.
    shift_a, shift_b : int
        Block shift amounts ``s`` for ``A`` and ``B`` (0 = no shift). A shift needs a
        square kernel on its axis and must be smaller than the kernel.

    Notes
    -----
    Construction validates everything that does not depend on the input size;
    :func:`check_input_size` validates the rest.
    """

    channels: int
    h_in: int
    h_out: int
    w_in: int
    w_out: int
    shift_a: int = 0
    shift_b: int = 0

    def __post_init__(self):
        for name in ("channels", "h_in", "h_out", "w_in", "w_out"):
            object.__setattr__(self, name, as_int(getattr(self, name), name, 1))
        for name in ("shift_a", "shift_b"):
            object.__setattr__(self, name, as_int(getattr(self, name), name, 0))
        for shift_name, k_in, k_out, kernel in (
            ("shift_a", self.h_in, self.h_out, "A (h_in, h_out)"),
            ("shift_b", self.w_in, self.w_out, "B (w_in, w_out)"),
        ):
            shift = getattr(self, shift_name)
            if shift == 0:
                continue
            if k_in != k_out:
                raise ValueError(
                    f"{shift_name}={shift} needs a square kernel, but kernel {kernel} is ({k_in}, {k_out})"
                )
            if shift >= k_out:
                raise ValueError(f"{shift_name}={shift} must be smaller than the kernel size {k_out}")

    # -- shapes -----------------------------------------------------------------
    @property
    def shape_a(self) -> tuple[int, int, int]:
        """Shape of this group's ``weight_a``: ``(channels, h_out, h_in)``."""
        return (self.channels, self.h_out, self.h_in)

    @property
    def shape_b(self) -> tuple[int, int, int]:
        """Shape of this group's ``weight_b``: ``(channels, w_in, w_out)``."""
        return (self.channels, self.w_in, self.w_out)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Output ``(H_out, W_out)`` of this group for an ``H x W`` input (SPEC 2).

        ``H_out = H`` when ``h_in == h_out``, else ``floor(H * h_out / h_in)``;
        likewise for the width. Integer arithmetic, so no rounding surprises.
        """
        h_out = height if self.h_in == self.h_out else (height * self.h_out) // self.h_in
        w_out = width if self.w_in == self.w_out else (width * self.w_out) // self.w_in
        return h_out, w_out

    # -- shifts -----------------------------------------------------------------
    @property
    def subgroups_a(self) -> int:
        """Number of shifted sub-groups for ``A``: ``(h_out - 1) // s + 1`` (1 if unshifted)."""
        return 1 if self.shift_a == 0 else (self.h_out - 1) // self.shift_a + 1

    @property
    def subgroups_b(self) -> int:
        """Number of shifted sub-groups for ``B``: ``(w_out - 1) // s + 1`` (1 if unshifted)."""
        return 1 if self.shift_b == 0 else (self.w_out - 1) // self.shift_b + 1

    @property
    def max_shift_a(self) -> int:
        """Largest shift any channel uses for ``A``: ``(n_a - 1) * shift_a``."""
        return (self.subgroups_a - 1) * self.shift_a

    @property
    def max_shift_b(self) -> int:
        """Largest shift any channel uses for ``B``: ``(n_b - 1) * shift_b``."""
        return (self.subgroups_b - 1) * self.shift_b

    def channel_shifts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-channel shifts ``(shifts_a, shifts_b)``, each an int array of length ``channels``."""
        return (
            channel_shifts(self.channels, self.shift_a, self.subgroups_a),
            channel_shifts(self.channels, self.shift_b, self.subgroups_b),
        )

    def to_dict(self) -> dict:
        """The official general dict form of this group (round-trips through :func:`parse_group`)."""
        return {
            "h_in": self.h_in,
            "h_out": self.h_out,
            "w_in": self.w_in,
            "w_out": self.w_out,
            "channels": self.channels,
            "shift_a": self.shift_a,
            "shift_b": self.shift_b,
        }


def subgroup_sizes(channels: int, subgroups: int) -> tuple[int, int]:
    """Channels per shifted sub-group (SPEC section 4), as two numbers.

    The group is split into ``subgroups`` consecutive sub-groups of
    ``size = channels // subgroups`` channels, the last one taking the remainder.

    Parameters
    ----------
    channels : int
        Channels of the group (>= 1).
    subgroups : int
        Number ``n`` of sub-groups (>= 1), such as :attr:`GroupSpec.subgroups_a`.

    Returns
    -------
    (size, last) : (int, int)
        Sub-groups ``0 .. n-2`` have ``size`` channels each and the last one
        ``last = channels - (n-1)·size``; when ``channels < n``, ``size = 0`` and the last
        sub-group holds every channel. :func:`channel_shifts` (one shift per channel) and
        :func:`shift_segments` (runs of channels) both follow from it.

    Raises
    ------
    TypeError
        ``channels`` or ``subgroups`` is not an integer (or is a bool).
    ValueError
        ``channels`` or ``subgroups`` is < 1.
    """
    channels = as_int(channels, "channels", 1)
    subgroups = as_int(subgroups, "subgroups", 1)
    size = channels // subgroups
    return (0, channels) if size == 0 else (size, channels - (subgroups - 1) * size)


def channel_shifts(channels: int, shift: int, subgroups: int) -> np.ndarray:
    """Shift used by every channel of a group (SPEC section 4).

    Sub-group ``j`` (sizes from :func:`subgroup_sizes`) uses shift ``j * shift``.

    Parameters
    ----------
    channels : int
        Channels of the group (>= 1).
    shift : int
        The group's shift amount ``s`` on one axis (``shift_a`` or ``shift_b``), >= 0.
    subgroups : int
        Number ``n`` of sub-groups on that axis (>= 1): :attr:`GroupSpec.subgroups_a` or
        :attr:`GroupSpec.subgroups_b`.

    Returns
    -------
    numpy.ndarray of int, shape (channels,)

    Raises
    ------
    TypeError, ValueError
        As :func:`subgroup_sizes` for ``channels`` and ``subgroups``, and for a ``shift``
        that is not an integer >= 0; ValueError also when the array would exceed the
        memory budget (:func:`neocell_ref.validation.check_nbytes`).
    """
    shift = as_int(shift, "shift", 0)
    channels = as_int(channels, "channels", 1)
    subgroups = as_int(subgroups, "subgroups", 1)
    size, _ = subgroup_sizes(channels, subgroups)
    if (subgroups - 1) * shift > np.iinfo(np.intp).max:
        raise ValueError(f"shift {shift} with {subgroups} sub-groups: the largest shift does not fit a NumPy integer")
    check_nbytes((channels,), np.intp, "channel_shifts")  # one shift per channel
    index = np.arange(channels)
    # With size == 0 all channels belong to the last sub-group.
    sub = np.full(channels, subgroups - 1) if size == 0 else np.minimum(index // size, subgroups - 1)
    return sub * shift


def shift_segments(spec: GroupSpec) -> list[tuple[int, int, int, int]]:
    """Cut a group into runs of consecutive channels sharing one ``(shift_a, shift_b)``.

    ``A`` and ``B`` are split into sub-groups independently (:func:`subgroup_sizes`),
    so the runs are the intersections of both splits.

    Parameters
    ----------
    spec : GroupSpec
        One parsed group.

    Returns
    -------
    list of (start, stop, shift_a, shift_b)
        Channel ranges ``start:stop`` relative to the group, in order, covering it.
    """

    # Closed form (no per-channel arrays, so any channel count works): a shifted axis
    # with n sub-groups of `size` channels changes its shift at j * size,
    # j = 1 .. n - 1 (nowhere when size == 0: every channel is in the last sub-group).
    # Each change is a real change, because sub-group j uses the shift j * s with s > 0.
    def cuts(subgroups):
        size, _ = subgroup_sizes(spec.channels, subgroups)
        return range(size, size * subgroups, size) if size else range(0)

    def shift_at(channel, shift, subgroups):
        size, _ = subgroup_sizes(spec.channels, subgroups)
        return shift * (subgroups - 1 if size == 0 else min(channel // size, subgroups - 1))

    bounds = sorted({0, spec.channels, *cuts(spec.subgroups_a), *cuts(spec.subgroups_b)})
    return [
        (start, stop, shift_at(start, spec.shift_a, spec.subgroups_a), shift_at(start, spec.shift_b, spec.subgroups_b))
        for start, stop in zip(bounds[:-1], bounds[1:])
    ]


def parse_group(group) -> GroupSpec:
    """Parse one group written in any official dict form, or pass a :class:`GroupSpec` through.

    Accepted dicts (SPEC section 2), each with ``"channels"`` and optionally
    ``"shift"`` or both ``"shift_a"`` and ``"shift_b"``:

    * ``{"kernel": k}``
    * ``{"kernel_a": ka, "kernel_b": kb}``
    * ``{"h_in": .., "h_out": .., "w_in": .., "w_out": ..}``

    Parameters
    ----------
    group : dict or GroupSpec
        One channel group: a mapping (anything with ``keys()``) in one of the forms
        above, or a :class:`GroupSpec`, returned as it is.

    Returns
    -------
    GroupSpec

    Raises
    ------
    TypeError
        If ``group`` is neither a mapping nor a :class:`GroupSpec`, or a value is not an int.
    ValueError
        On unknown keys, a mixture of size forms, an incomplete size form, ``shift``
        together with ``shift_a``/``shift_b``, one of ``shift_a``/``shift_b`` without
        the other, or invalid values. Also when the ``"channels"`` key or every size
        key is missing.
    """
    if isinstance(group, GroupSpec):
        return group
    if not hasattr(group, "keys"):
        raise TypeError(f"a group spec must be a dict or GroupSpec, got {type(group).__name__}: {group!r}")
    keys = set(group.keys())
    unknown = keys - _ALLOWED_KEYS
    if unknown:
        raise ValueError(
            f"unknown group spec key(s) {sorted(map(str, unknown))}; allowed keys are {sorted(_ALLOWED_KEYS)}"
        )
    if "channels" not in keys:
        raise ValueError(f"group spec {dict(group)!r} has no 'channels' key")
    forms = [name for name, fields in _SIZE_FORMS.items() if keys & set(fields)]
    if len(forms) != 1:
        present = sorted(keys & (_ALLOWED_KEYS - {"channels", "shift", "shift_a", "shift_b"}))
        if not forms:
            raise ValueError(
                f"group spec {dict(group)!r} gives no kernel size: use one of the forms {list(_SIZE_FORMS)}"
            )
        raise ValueError(f"group spec mixes size forms {forms} (keys {present}); use exactly one")
    fields = _SIZE_FORMS[forms[0]]
    missing = [f for f in fields if f not in keys]
    if missing:
        raise ValueError(f"group spec form {forms[0]!r} is missing key(s) {missing}")
    if "shift" in keys and keys & {"shift_a", "shift_b"}:
        raise ValueError(
            "group spec gives both 'shift' and 'shift_a'/'shift_b' "
            f"(keys {sorted(keys & {'shift', 'shift_a', 'shift_b'})}); use one"
        )
    if ("shift_a" in keys) != ("shift_b" in keys):
        given, absent = ("shift_a", "shift_b") if "shift_a" in keys else ("shift_b", "shift_a")
        raise ValueError(f"group spec gives {given!r} without {absent!r}; give both or 'shift'")

    # Validate every given value under the key the user wrote ("kernel", "shift"...),
    # so that messages name that key rather than the derived GroupSpec field.
    for key in sorted(keys - {"channels"}):
        as_int(group[key], key, 0 if key.startswith("shift") else 1)

    if forms[0] == "kernel":
        k = group["kernel"]
        sizes = dict(h_in=k, h_out=k, w_in=k, w_out=k)
    elif forms[0] == "kernel_a/kernel_b":
        ka, kb = group["kernel_a"], group["kernel_b"]
        sizes = dict(h_in=ka, h_out=ka, w_in=kb, w_out=kb)
    else:
        sizes = {f: group[f] for f in fields}
    if "shift" in keys:
        shift_a = shift_b = group["shift"]
    else:
        shift_a, shift_b = group.get("shift_a", 0), group.get("shift_b", 0)
    return GroupSpec(channels=group["channels"], shift_a=shift_a, shift_b=shift_b, **sizes)


#: Most channel groups a layer may have. Every group holds at least one channel, so this
#: is far above any network's channels per layer (the widest NeoNeXt, XL, has 2048); it bounds
#: what :func:`parse_specs` reads, so that an endless iterable is refused, not looped on.
MAX_GROUPS = 1 << 16


def parse_specs(specs) -> tuple[GroupSpec, ...]:
    """Parse a list of groups (dicts or :class:`GroupSpec`) into a tuple of :class:`GroupSpec`.

    A single dict or :class:`GroupSpec` is refused: a layer is always a list of groups.
    Any ordered iterable of groups is read (a list, a tuple, a generator), at most
    :data:`MAX_GROUPS` of them: a longer or endless one (``itertools.repeat(group)``) is
    refused after reading ``MAX_GROUPS + 1`` items, and a set or a dict (no group order)
    is refused at once.

    Parameters
    ----------
    specs : list of dict or GroupSpec
        The layer's channel groups in order, each as :func:`parse_group` reads it; any
        ordered iterable of them.

    Returns
    -------
    tuple of GroupSpec
        One per group, in order.

    Raises
    ------
    TypeError
        ``specs`` is not an ordered iterable of groups, or a group is not a dict or
        :class:`GroupSpec` (:func:`parse_group`).
    ValueError
        ``specs`` is empty or has more than :data:`MAX_GROUPS` groups, or a group is invalid.
    """
    # _first_items refuses strings, sets, Mappings and what iter() refuses (a GroupSpec,
    # a 0-d array); a dict-like that is no Mapping is refused by its keys.
    items = None if hasattr(specs, "keys") else _first_items(specs, MAX_GROUPS)
    if items is None:
        raise TypeError(f"specs must be a list of group specs, got {type(specs).__name__}: {_short_repr(specs)}")
    if len(items) > MAX_GROUPS:
        # Not its repr: a list of millions of groups would print them all.
        kind = type(specs).__name__
        got = f"a {kind} of {len(specs):,} groups" if hasattr(specs, "__len__") else f"a {kind} yielding more"
        raise ValueError(
            f"specs has more than MAX_GROUPS = {MAX_GROUPS:,} channel groups (a layer has at least one "
            f"channel per group), got {got}"
        )
    groups = tuple(parse_group(g) for g in items)
    if not groups:
        raise ValueError("specs must contain at least one channel group, got an empty list")
    return groups


def _as_written(specs) -> tuple[tuple[GroupSpec, ...], list[dict]]:
    """The validated groups of ``specs`` and the specs as a port receives them
    (docs/porting.md section 2): official-style dicts, each a copy of the one written
    (a :class:`GroupSpec` as its explicit dict)."""
    groups = parse_specs(specs)
    written = specs if isinstance(specs, (list, tuple)) else groups  # an iterator is used up
    return groups, [dict(g) if isinstance(g, Mapping) else p.to_dict() for g, p in zip(written, groups)]


def parse_kernel_code(code: str, channels: int, shift: int = 0) -> list[GroupSpec]:
    """Groups of a NeoNeXt stage from a kernel code such as ``"7"`` or ``"4+7"``.

    Parameters
    ----------
    code : str
        Kernel sizes joined by ``+``, in group order.
    channels : int
        Total number of channels ``D``. Each of the ``m`` groups gets ``D // m``
        channels; the last also takes the remainder.
    shift : int, default 0
        Shift amount ``s`` given to every group (for ``A`` and ``B``).

    Returns
    -------
    list of GroupSpec

    Raises
    ------
    ValueError
        On a malformed code, or if a group would get no channels.
    """
    if not isinstance(code, str):
        raise TypeError(f"kernel code must be a str such as '4+7', got {_short_repr(code)}")
    channels = as_int(channels, "channels", 1)
    shift = as_int(shift, "shift", 0)
    if code.count("+") >= MAX_GROUPS:  # before any group is built (a million took seconds)
        raise ValueError(f"kernel code has {code.count('+') + 1:,} kernel sizes, more than MAX_GROUPS = {MAX_GROUPS:,}")
    parts = [p.strip() for p in code.split("+")]
    # ASCII digits only: int() would also read "4_7" as 47 and accept non-ASCII digits.
    if not all(p and p.isascii() and p.isdigit() for p in parts):
        raise ValueError(f"kernel code {_short_repr(code)} is not a '+'-separated list of integers")
    # Any size a GroupSpec takes (the calculator counts exactly at any size), up to what
    # int() reads from a string (Python's limit, 4300 digits by default).
    limit = getattr(sys, "get_int_max_str_digits", lambda: 0)() or None
    long = next((p for p in parts if limit and len(p.lstrip("0")) > limit), None)
    if long is not None:
        raise ValueError(
            f"kernel code has a kernel size of {len(long.lstrip('0'))} digits; Python reads at most {limit} "
            "(sys.get_int_max_str_digits)"
        )
    kernels = [int(p.lstrip("0") or "0") for p in parts]  # leading zeros: int() counts them as digits
    if any(k < 1 for k in kernels):
        raise ValueError(f"kernel code {_short_repr(code)} has a kernel size < 1")
    if shift and shift >= min(kernels):  # named as given: GroupSpec would say shift_a
        raise ValueError(
            f"shift={shift} must be smaller than every kernel size of code {_short_repr(code)} "
            f"(the smallest is {min(kernels)})"
        )
    m = len(kernels)
    per_group = channels // m
    if per_group == 0:
        raise ValueError(
            f"kernel code {_short_repr(code)} has {m} groups but only channels={channels}: a group would get no channels"
        )
    sizes = [per_group] * (m - 1) + [channels - (m - 1) * per_group]
    return [
        GroupSpec(channels=c, h_in=k, h_out=k, w_in=k, w_out=k, shift_a=shift, shift_b=shift)
        for k, c in zip(kernels, sizes)
    ]


def output_size(specs: Sequence[GroupSpec], height: int, width: int) -> tuple[int, int]:
    """Common output size ``(H_out, W_out)`` of all groups, validated (SPEC 2).

    Parameters
    ----------
    specs : list of dict or GroupSpec
        The layer's groups, in any form :func:`parse_specs` reads.
    height, width : int
        Input size ``H x W`` (each >= 1).

    Returns
    -------
    (H_out, W_out) : (int, int)

    Raises
    ------
    ValueError
        If groups disagree or the output would be empty. Also when ``height`` or
        ``width`` is < 1, or a group is invalid (:func:`parse_specs`).
    TypeError
        ``height`` or ``width`` is not an integer, or ``specs`` is not a list of groups
        (:func:`parse_specs`).
    """
    specs = parse_specs(specs)
    height = as_int(height, "input height H", 1)
    width = as_int(width, "input width W", 1)
    return _output_size(specs, height, width)


def _output_size(specs, height: int, width: int) -> tuple[int, int]:
    """:func:`output_size` of parsed ``specs`` and validated sizes (its checks not repeated)."""
    sizes = {g.output_size(height, width) for g in specs}
    if len(sizes) > 1:
        detail = ", ".join(
            f"group {i} ({g.h_in}->{g.h_out}, {g.w_in}->{g.w_out}) gives {g.output_size(height, width)}"
            for i, g in enumerate(specs)
        )
        raise ValueError(f"groups disagree on the output size for input {height}x{width}: {detail}")
    ((h_out, w_out),) = sizes
    if h_out < 1 or w_out < 1:
        raise ValueError(
            f"output size would be {h_out}x{w_out} for input {height}x{width}; "
            "the input is too small for the down-sampling kernel"
        )
    return h_out, w_out


def check_input_size(specs: Sequence[GroupSpec], height: int, width: int) -> tuple[int, int]:
    """Validate an ``H x W`` input against the groups; return ``(H_out, W_out)``.

    Checks positive sizes, the output-size rule and the shift-size rule of
    SPEC section 4 (the largest used shift may equal but not exceed the size).

    Parameters
    ----------
    specs : list of dict or GroupSpec
        The layer's groups, in any form :func:`parse_specs` reads.
    height, width : int
        Input size ``H x W`` (each >= 1).

    Returns
    -------
    (H_out, W_out) : (int, int)
        As :func:`output_size`.

    Raises
    ------
    TypeError
        ``height`` or ``width`` is not an integer (or is a bool), or ``specs`` is not a
        list of groups (:func:`parse_specs`).
    ValueError
        ``height`` or ``width`` is < 1, a group is invalid (:func:`parse_specs`), a
        group's largest used shift exceeds the input height (``A``) or width (``B``), or
        as :func:`output_size`.
    """
    specs = parse_specs(specs)  # GroupSpecs pass through; a dict had no max_shift_a (AttributeError)
    height = as_int(height, "input height H", 1)
    width = as_int(width, "input width W", 1)
    for i, g in enumerate(specs):
        if g.max_shift_a > height:
            raise ValueError(
                f"group {i}: largest used shift_a {g.max_shift_a} (= ({g.subgroups_a} - 1) * "
                f"{g.shift_a}) exceeds the input height H={height}"
            )
        if g.max_shift_b > width:
            raise ValueError(
                f"group {i}: largest used shift_b {g.max_shift_b} (= ({g.subgroups_b} - 1) * "
                f"{g.shift_b}) exceeds the input width W={width}"
            )
    return _output_size(specs, height, width)  # parsed and checked above
