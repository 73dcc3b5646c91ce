"""Argument checks shared by the package, and the memory budget of the array builders.

Every public function refuses bad input with a ``ValueError`` or ``TypeError`` that
names the argument and the value, before any arithmetic. The checks that more than one
module needs live here, once:

* :func:`as_int` — an integer option (bools and floats refused);
* :func:`real_number` — a finite real option with optional bounds;
* :func:`as_real_array` — an array of a real numeric dtype (complex, bool, object and
  strings refused);
* :func:`compute_dtype` — the **dtype rule** of every operation;
* :func:`floating_dtype` — a ``dtype=`` argument that must be floating;
* :func:`check_weights` — the per-group NeoCell kernels against their specs;
* :func:`check_nbytes` — the **memory budget**.

**Dtype rule.** An operation computes in float32 when every operand is float16 or
float32, and in float64 (the reference precision) otherwise: integer input computes in
float64 whatever its width, and complex input is refused before (by
:func:`as_real_array`). The rule is decided operand by operand, not by NumPy's
promotion (``result_type(int8, float32)`` is float32).

**Memory budget.** Functions that build an array whose size follows from their arguments rather than from
an array the caller already holds (:func:`neocell_ref.expansion.expand` and
:func:`~neocell_ref.expansion.expand_kernel`, :func:`neocell_ref.init.neo_init`,
:func:`~neocell_ref.init.skewed_identity`, :class:`neocell_ref.models.NeoNeXt` (its
parameters, and in :meth:`~neocell_ref.models.NeoNeXt.forward` the batch's input in
the model dtype and its largest layer output), the output and the intermediates of
:func:`neocell_ref.neocell_forward` and :func:`~neocell_ref.neocell_backward` in every
formulation, the arrays the porting kit's ``neocell_cases`` draws)
compute the size of every such array with Python integers first and refuse, with a
``ValueError`` stating the size in bytes, any single array larger than the budget,
instead of failing deep inside NumPy with ``MemoryError`` (or swapping).

The budget is :data:`DEFAULT_MAX_BYTES` (2 GiB) per array unless the environment
variable ``NEOCELL_MAX_BYTES`` gives another number of bytes, or :func:`set_max_bytes`
(or the :func:`max_bytes_set_to` context manager) sets one for the process.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import os
from collections.abc import Mapping, Set

import numpy as np

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_BYTES_ENV",
    "max_bytes",
    "set_max_bytes",
    "max_bytes_set_to",
    "check_nbytes",
    "as_int",
    "as_flag",
    "real_number",
    "as_real_array",
    "compute_dtype",
    "floating_dtype",
    "read_npy_header",
    "check_weights",
    "atomic_file",
]

#: Default memory budget: the largest single array a builder may allocate, in bytes.
DEFAULT_MAX_BYTES = 2 * 1024**3

#: Environment variable read when no budget was set with :func:`set_max_bytes`.
MAX_BYTES_ENV = "NEOCELL_MAX_BYTES"

_override = None  # set by set_max_bytes; None means "environment, else default"


def as_int(value, name: str, minimum: int | None = None) -> int:
    """``value`` as a Python int, refusing bools, floats and values below ``minimum``.

    Parameters
    ----------
    value : int
        Any :class:`numbers.Integral` but a bool (Python or NumPy integers).
    name : str
        How messages name the argument.
    minimum : int, optional
        Smallest value accepted; None (the default) accepts any integer.

    Returns
    -------
    int
        ``int(value)``.

    Raises
    ------
    TypeError
        ``value`` is not an integer (``bool``, ``7.0``, ``"7"``, ``None``).
    ValueError
        ``value < minimum``.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def as_flag(value, name: str) -> bool:
    """``value`` as a Python bool, refusing anything but ``True``, ``False`` and NumPy bools.

    One rule for every on/off argument of the package: ``0``, ``1``, ``"yes"`` and
    ``None`` are refused rather than read by their truth value, so that a misplaced
    positional argument cannot switch a flag silently.

    Parameters
    ----------
    value : bool
        ``True``, ``False``, ``np.True_`` or ``np.False_``.
    name : str
        How messages name the argument.

    Returns
    -------
    bool
        ``bool(value)``.

    Raises
    ------
    TypeError
        ``value`` is not a bool (its ``repr`` named).
    """
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False (a bool), got {value!r} of type {type(value).__name__}")
    return bool(value)


def real_number(value, name, low=None, high=None, low_open=False, high_open=False, *, type_error=False) -> float:
    """``value`` as a finite Python float within optional bounds.

    ``low_open``/``high_open`` make a bound strict. Anything that is not a finite real
    number (``bool``, ``None``, a string, NaN, ±Inf, a complex number) is a
    ``ValueError`` naming ``name``; with ``type_error=True`` a value that is not a real
    number at all (``bool``, ``None``, a string, a complex number) is a ``TypeError``
    instead, and only NaN, ±Inf and values out of bounds are ``ValueError``.

    Parameters
    ----------
    value : real number
        Any :class:`numbers.Real` but a bool (ints, floats, NumPy scalars, fractions)
        with a finite float value.
    name : str
        How messages name the argument.
    low, high : float, optional
        Bounds on ``value`` (after conversion to float); None (the default) for none.
    low_open, high_open : bool, default False
        Make ``low`` / ``high`` strict (``value > low`` rather than ``>=``).
    type_error : bool, default False
        Raise ``TypeError`` rather than ``ValueError`` for a value that is not a real
        number at all.

    Returns
    -------
    float
        ``float(value)``, finite and within the bounds.

    Raises
    ------
    ValueError
        ``value`` is not a finite real number (with ``type_error``: is NaN, ±Inf or
        beyond the float range) or is out of bounds.
    TypeError
        Only with ``type_error=True``: ``value`` is not a real number (``bool``,
        ``None``, a string, a complex number).
    """
    not_real = isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real)
    if type_error and not_real:
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if not not_real:
        try:  # a Fraction or an int beyond the float range has no finite float
            as_float = float(value)
        except (OverflowError, ValueError, TypeError):
            as_float = math.nan
    if not_real or not math.isfinite(as_float):
        raise ValueError(f"{name} must be a finite real number, got {_short_repr(value)}")
    value = as_float
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return value


def _short_repr(value) -> str:
    """``repr(value)``, cut in the middle when long (a 400-digit integer)."""
    try:
        text = repr(value)
    except ValueError:  # an int (or a Fraction of ints) beyond Python's digit limit for str()
        if isinstance(value, numbers.Integral):
            return f"an integer of about {int(int(value).bit_length() * 0.30103)} digits"
        return f"a {type(value).__name__} too long to print"
    return text if len(text) <= 80 else f"{text[:40]}...{text[-20:]} ({len(text)} characters)"


def _first_items(value, count: int):
    """The items of an ordered iterable, read to at most ``count + 1`` (enough to refuse a
    longer, or endless, one), as a tuple; None for anything else: a string, a set or a
    dict (no order of items), a non-iterable or a 0-d array.

    Iterable means what ``iter()`` accepts, the sequence protocol (``__getitem__`` and
    ``__len__`` only) included; an error raised while the items are read (inside the
    caller's generator, say) propagates as it is.
    """
    if isinstance(value, (str, bytes, Set, Mapping)):
        return None
    try:
        iterator = iter(value)
    except TypeError:  # not iterable, or a 0-d array
        return None
    return tuple(itertools.islice(iterator, count + 1))


def as_real_array(value, name) -> np.ndarray:
    """``value`` as an ndarray of a real numeric dtype (integer or floating).

    Parameters
    ----------
    value : array_like
        Anything ``np.asarray`` converts, of any shape.
    name : str
        How messages name the argument.

    Returns
    -------
    ndarray
        ``np.asarray(value)`` (no copy when ``value`` is already an ndarray), of
        ``value``'s shape and an integer or floating dtype.

    Raises
    ------
    TypeError
        ``value`` is ``None`` or a masked array, cannot be converted, or converts to a
        bool, complex, object or string array.
    """
    if value is None:
        raise TypeError(f"{name} must be a real numeric array, got None")
    if isinstance(value, np.ma.MaskedArray):  # np.asarray would drop the mask silently
        raise TypeError(f"{name} is a masked array; its mask would be ignored: pass value.filled(...) or value.data")
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and exotic objects
        raise TypeError(f"{name} could not be converted to an array: {exc}") from None
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    return arr


def compute_dtype(*operands) -> np.dtype:
    """The compute dtype of an operation (the dtype rule of the module docstring).

    Parameters
    ----------
    *operands : ndarray, numpy dtype or None
        The operands' arrays or dtypes; ``None`` (an absent optional operand) is skipped.

    Returns
    -------
    numpy.dtype
        float32 when every operand is float16 or float32, else float64.
    """
    dtypes = [
        op.dtype if isinstance(op, (np.ndarray, np.generic)) else np.dtype(op) for op in operands if op is not None
    ]
    low = all(d.kind == "f" and d.itemsize <= 4 for d in dtypes)
    return np.dtype(np.float32) if low else np.dtype(np.float64)


def floating_dtype(dtype, name: str = "dtype", allowed=None) -> np.dtype:
    """``dtype`` (anything :class:`numpy.dtype` reads, such as ``np.float32`` or ``"f8"``)
    as a floating NumPy dtype, for the arguments that choose the dtype of new arrays.

    Only names, dtypes and types are read: ``None`` is refused rather than read as
    NumPy's default float64, and so is anything with a ``dtype`` attribute (NumPy reads
    ``np.float64(7.0)`` or an array as its dtype: a number passed by mistake would
    pass). A name NumPy does not know is refused naming ``name`` (NumPy's own message
    would not say which argument it was).

    Parameters
    ----------
    dtype : str, numpy.dtype or type
    name : str
        How messages name the argument.
    allowed : sequence of dtype-like, optional
        The only dtypes accepted (for example float32 and float64).

    Returns
    -------
    numpy.dtype

    Raises
    ------
    TypeError
        ``dtype`` is not a dtype, not floating, or not in ``allowed``; ``name`` and the
        value are named.
    """
    wanted = "a floating NumPy dtype"
    if allowed is not None:
        allowed = [np.dtype(d) for d in allowed]
        wanted = " or ".join(d.name for d in allowed)
    result = None
    if isinstance(dtype, (str, np.dtype, type)):
        try:
            result = np.dtype(dtype)
        except (TypeError, ValueError):  # "data type 'foo' not understood", a malformed spec
            pass
    if result is None:
        raise TypeError(f"{name} must be {wanted}, got {_short_repr(dtype)}")
    if result.kind != "f" or (allowed is not None and result not in allowed):
        # a class NumPy reads as another dtype (np.ndarray -> object) is shown as given too
        plain = isinstance(dtype, np.dtype) or result.name in (dtype, getattr(dtype, "__name__", None))
        given = "" if plain else f" (from {_short_repr(dtype)})"
        raise TypeError(f"{name} must be {wanted}, got {result}{given}")
    return result


def check_weights(weights_a, weights_b, specs):
    """Validate the per-group NeoCell kernels against ``specs``.

    Weights must be finite: NaN or Inf in a kernel is a bug upstream, and the weights
    are small enough that checking them costs nothing.

    Parameters
    ----------
    weights_a, weights_b : list of array_like
        One array per group: ``weights_a[g]`` of shape ``(channels_g, h_out, h_in)``,
        ``weights_b[g]`` of shape ``(channels_g, w_in, w_out)``.
    specs : sequence of GroupSpec
        Parsed specs (:func:`neocell_ref.spec.parse_specs`).

    Returns
    -------
    (arrays_a, arrays_b, dtype)
        The weights as real ndarrays (not cast) and their :func:`compute_dtype`.

    Raises
    ------
    TypeError
        A weight list is not a list (an array, a string, a dict), or an entry is not a
        real numeric array.
    ValueError
        A list has the wrong number of arrays, an array the wrong shape, or a weight
        is NaN or Inf.
    """
    for name, weights in (("weights_a", weights_a), ("weights_b", weights_b)):
        if (
            isinstance(weights, (np.ndarray, str, bytes))
            or hasattr(weights, "keys")  # a dict {0: w0, ...} would index like a list
            or not hasattr(weights, "__len__")
        ):
            raise TypeError(f"{name} must be a list with one array per channel group, got {type(weights).__name__}")
        if len(weights) != len(specs):
            raise ValueError(f"{name} has {len(weights)} arrays but specs has {len(specs)} groups")
    arrays_a, arrays_b = [], []
    for g, spec in enumerate(specs):
        for name, weights, shape, out in (
            ("weights_a", weights_a, spec.shape_a, arrays_a),
            ("weights_b", weights_b, spec.shape_b, arrays_b),
        ):
            arr = as_real_array(weights[g], f"{name}[{g}]")
            if arr.shape != shape:
                raise ValueError(f"{name}[{g}] has shape {arr.shape}, but group {g} needs {shape}")
            if not np.isfinite(arr).all():
                raise ValueError(f"{name}[{g}] contains NaN or Inf")
            out.append(arr)
    dtype = compute_dtype(*arrays_a, *arrays_b)
    return arrays_a, arrays_b, dtype


def _parse_env(text):
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = None
    if value is None or value < 1:
        raise ValueError(f"environment variable {MAX_BYTES_ENV}={text!r} must be a positive integer number of bytes")
    return value


def max_bytes() -> int:
    """The memory budget in bytes now in force (see the module docstring).

    Returns
    -------
    int
        The value set by :func:`set_max_bytes`, else the environment variable
        ``NEOCELL_MAX_BYTES`` (when set and not blank), else :data:`DEFAULT_MAX_BYTES`.

    Raises
    ------
    ValueError
        ``NEOCELL_MAX_BYTES`` is read and is not a positive integer.
    """
    if _override is not None:
        return _override
    text = os.environ.get(MAX_BYTES_ENV)
    return DEFAULT_MAX_BYTES if text is None or not text.strip() else _parse_env(text)


def set_max_bytes(limit) -> int | None:
    """Set the memory budget for this process; return the previous setting.

    Parameters
    ----------
    limit : int or None
        Largest array, in bytes, a builder may allocate (>= 1). ``None`` returns to the
        environment variable ``NEOCELL_MAX_BYTES``, else :data:`DEFAULT_MAX_BYTES`.

    Returns
    -------
    int or None
        The previous value given to this function (``None`` if none was in force), so
        that ``set_max_bytes(previous)`` restores it.
    """
    global _override
    if limit is not None:
        limit = as_int(limit, "memory budget limit", 1)
    previous, _override = _override, limit
    return previous


@contextlib.contextmanager
def max_bytes_set_to(limit):
    """Context manager: :func:`set_max_bytes` for the duration of a ``with`` block.

    Parameters
    ----------
    limit : int or None
        As in :func:`set_max_bytes`; the previous setting is restored on exit, also when
        the block raises.

    Yields
    ------
    None

    Raises
    ------
    TypeError, ValueError
        On entry, ``limit`` is neither None nor an integer >= 1 (:func:`as_int`).
    """
    previous = set_max_bytes(limit)
    try:
        yield
    finally:
        set_max_bytes(previous)


def check_nbytes(shape, dtype, what: str) -> int:
    """Refuse an array of ``shape`` and ``dtype`` larger than the memory budget.

    The size is computed with Python integers (no overflow at any size). Call it before
    allocating.

    Parameters
    ----------
    shape : sequence of int
    dtype : numpy dtype
    what : str
        Names the array in the message (for example ``"expand: A_full"``).

    Returns
    -------
    int
        The size in bytes.

    Raises
    ------
    ValueError
        The array would exceed :func:`max_bytes`; the message gives the shape, the size
        in bytes and how to raise the budget.
    """
    shape = tuple(int(s) for s in shape)
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    limit = max_bytes()
    if nbytes > limit:
        raise ValueError(
            f"{what} of shape {shape} ({np.dtype(dtype)}) would need {nbytes:,} bytes, more than "
            f"the memory budget of {limit:,} bytes per array; raise it with "
            f"neocell_ref.validation.set_max_bytes(n) or the environment variable {MAX_BYTES_ENV}"
        )
    return nbytes


# --------------------------------------------------------------------------------------
# reading .npz archives without trusting them
# --------------------------------------------------------------------------------------
#: Largest ``.npy`` header read.
MAX_NPY_HEADER = 4096

# The header-length field of each .npy format version read (little-endian unsigned).
_NPY_LENGTH_FIELD = {(1, 0): "<H", (2, 0): "<I"}
# Magic string, version and the widest length field: what precedes the header text.
_NPY_PREFIX_MAX = len(np.lib.format.MAGIC_PREFIX) + 2 + 4
# The widest real numeric dtype (long double): bounds a member whose dtype is not fixed.
_MAX_REAL_ITEMSIZE = max(np.dtype(c).itemsize for c in np.typecodes["AllInteger"] + np.typecodes["Float"])


def _read_exactly(fp, size: int, what: str) -> bytes:
    data = fp.read(size)
    if len(data) != size:
        raise ValueError(f"the file ends inside its {what} ({len(data)} of {size} bytes)")
    return data


def read_npy_header(fp):
    """``((shape, fortran_order, dtype), length)`` of the ``.npy`` at ``fp``, ``length``
    counting every byte up to the data; ``fp`` is left at the data. The one reader of
    ``.npy`` headers from outside: archive members here, a port's output files in
    :mod:`neocell_ref.verify.exec_port`.

    The header length is read and checked here, before NumPy's reader sees it: NumPy
    reads the whole declared length (up to 4 GiB in format 2.0) before comparing it
    with ``max_header_size``.

    Parameters
    ----------
    fp : binary file object
        At the start of the ``.npy``.

    Returns
    -------
    ((tuple, bool, numpy.dtype), int)

    Raises
    ------
    ValueError
        What is wrong, without naming the file (callers say which): no ``.npy`` magic,
        a format other than 1.0 and 2.0, a header longer than :data:`MAX_NPY_HEADER`, a
        truncated header, or one NumPy cannot parse (its own error, whatever its type).
    """
    import io
    import struct

    try:
        version = np.lib.format.read_magic(fp)
    except ValueError as exc:  # too short, or "the magic string is not correct"
        raise ValueError(f"not a .npy array: {exc}") from None
    if version not in _NPY_LENGTH_FIELD:
        raise ValueError(f".npy format version {version} (this package reads 1.0 and 2.0)")
    field = _NPY_LENGTH_FIELD[version]
    raw_length = _read_exactly(fp, struct.calcsize(field), ".npy header length")
    (length,) = struct.unpack(field, raw_length)
    if length > MAX_NPY_HEADER:
        raise ValueError(
            f"its .npy header declares {length:,} bytes of header text, more than the "
            f"{MAX_NPY_HEADER} read (MAX_NPY_HEADER)"
        )
    text = _read_exactly(fp, length, ".npy header")
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    try:  # from the bounded bytes already read, never from fp
        header = reader(io.BytesIO(raw_length + text), max_header_size=MAX_NPY_HEADER)
    except Exception as exc:  # noqa: BLE001 - NumPy parses untrusted text: whatever it raises
        # "Header does not contain the correct keys", "malformed node or string", a
        # header nested too deep (RecursionError, or tokenize's TokenError), a bad descr
        raise ValueError(f"malformed .npy header: {type(exc).__name__}: {exc}") from None
    return header, len(np.lib.format.MAGIC_PREFIX) + 2 + len(raw_length) + length


def read_npy_member(archive, info, shape, where: str, dtype=None, *, fortran_order: bool = False) -> np.ndarray:
    """One ``.npy`` member of a zip archive, its header checked before any data is read.

    The member must be unencrypted, stored or deflated, and no larger in the zip
    directory than a valid member of the expected shape and dtype can be (checked
    before anything is read); its header (format 1.0 or 2.0, at most
    :data:`MAX_NPY_HEADER` bytes, a length checked before the header is read) must
    declare C order (or Fortran order, when ``fortran_order``), exactly ``shape`` and
    either exactly ``dtype`` or, when ``dtype`` is None, a real numeric dtype (never
    Python objects); the zip directory's size must be the header plus exactly that
    many bytes. Only then are those bytes read (bounded; reading to the end checks the
    CRC), so a forged header or a zip bomb costs nothing and nothing is unpickled.

    Parameters
    ----------
    archive : zipfile.ZipFile
    info : zipfile.ZipInfo
    shape : tuple of int, or a frozenset of them
        The shape to declare, or the shapes any of which may be declared.
    where : str
        How messages name the member.
    dtype : numpy dtype, optional
    fortran_order : bool, default False
        Also accept a header declaring Fortran order: the same bytes, read column-major,
        and returned C-contiguous like every other result.

    Raises
    ------
    ValueError
        Starting with ``where``, saying what is wrong (NumPy's errors on a malformed
        header included).
    """
    import zipfile
    import zlib

    if info.flag_bits & 0x1:
        raise ValueError(f"{where}: the member is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise ValueError(f"{where}: unsupported zip compression method {info.compress_type}")
    accepted = {tuple(s) for s in shape} if isinstance(shape, (set, frozenset)) else {tuple(shape)}
    # zipfile decompresses at most the directory's size: bounding it first bounds every
    # read below, whatever the member's header claims.
    itemsize = _MAX_REAL_ITEMSIZE if dtype is None else np.dtype(dtype).itemsize
    largest = _NPY_PREFIX_MAX + MAX_NPY_HEADER + max(math.prod(s) for s in accepted) * itemsize
    if info.file_size > largest:
        raise ValueError(
            f"{where}: the zip directory says {info.file_size} bytes uncompressed, more than the "
            f"{largest} a .npy of the expected shape and dtype can take"
        )
    try:
        with archive.open(info) as fp:
            try:
                (got_shape, fortran, got_dtype), header_length = read_npy_header(fp)
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if got_dtype.hasobject or (dtype is None and got_dtype.kind not in "fiu"):
                raise ValueError(
                    f"{where}: its header declares dtype {got_dtype}; only real numbers are read, never Python objects"
                )
            if dtype is not None and got_dtype != dtype:
                raise ValueError(f"{where}: its header declares dtype {got_dtype.str}, expected {np.dtype(dtype).str}")
            shape = tuple(int(s) for s in got_shape)  # NumPy lets True pass as a dimension
            if shape not in accepted:
                wanted = next(iter(accepted)) if len(accepted) == 1 else " or ".join(map(str, sorted(accepted)))
                raise ValueError(f"{where}: its header declares shape {shape}, expected {wanted}")
            if fortran and not fortran_order:
                raise ValueError(f"{where}: its header declares Fortran order; only C order is read")
            nbytes = math.prod(shape) * got_dtype.itemsize
            if info.file_size != header_length + nbytes:
                raise ValueError(
                    f"{where}: the zip directory says {info.file_size} bytes uncompressed, the header "
                    f"gives exactly {header_length + nbytes}"
                )
            if info.compress_type == zipfile.ZIP_STORED and info.compress_size != info.file_size:
                raise ValueError(f"{where}: stored (uncompressed) with {info.compress_size} bytes for {info.file_size}")
            raw = fp.read(nbytes + 1)
    except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
        raise ValueError(f"{where}: unreadable: {exc}") from None
    if len(raw) != nbytes:
        raise ValueError(f"{where}: {len(raw)} bytes of data, expected {nbytes}")
    # The same number of bytes either way (checked above); only their order differs.
    values = np.frombuffer(raw, dtype=got_dtype).reshape(shape, order="F" if fortran else "C")
    return values.copy(order="C")  # writeable, C-contiguous, not a view of the read bytes


def read_npz(path, shapes: dict, *, what: str = "archive", strict: bool = True, skipped: list | None = None) -> dict:
    """The arrays of an ``.npz``, every member checked before its data is read.

    Each member must be a ``NAME.npy`` with ``NAME`` in ``shapes`` (others are refused
    when ``strict``, skipped unread otherwise) and pass :func:`read_npy_member` with the
    expected shape and any real numeric dtype, in C or Fortran order (as ``np.load``
    reads both). The golden-set reader applies the same member check against its
    manifest (C order only: its writer never stores Fortran order).

    Parameters
    ----------
    path : str, os.PathLike or binary file object
        The archive's path, or a file object opened for binary reading (seekable),
        such as ``open(p, "rb")`` or ``io.BytesIO(data)``.
    shapes : dict
        ``{array name: expected shape}`` (a frozenset of shapes accepts any of them).
    what : str
        How messages name the archive.
    strict : bool
        Refuse members whose names are not in ``shapes``.
    skipped : list, optional
        When given, the names of the members skipped (``strict=False``) are appended to
        it once each, in archive order, so that a caller can report them.

    Returns
    -------
    dict of ndarray

    Raises
    ------
    TypeError
        ``path`` is neither a str, an ``os.PathLike`` nor a binary file object
        (``bytes``, ``None``, a number, a text file); ``path`` and the value named.
    ValueError
        Naming the archive, the member and what is wrong.
    """
    import io
    import zipfile

    if isinstance(path, os.PathLike):
        path = os.fspath(path)  # may be bytes, refused below as bytes are
    if isinstance(path, str):
        label = repr(path)
    elif hasattr(path, "read") and hasattr(path, "seek") and not isinstance(path, io.TextIOBase):
        label = "<file object>"  # os.fspath would raise TypeError in the error message itself
    else:
        # bytes too: zipfile would take them for a file object; and are they a path or the contents?
        hint = ": pass a str path, or io.BytesIO(data) for an archive's contents" if isinstance(path, bytes) else ""
        raise TypeError(
            f"path must be a str, an os.PathLike or a binary file object, got {_short_repr(path)} "
            f"of type {type(path).__name__}{hint}"
        )
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{what} {label} is not a readable .npz: {exc}") from None
    arrays = {}
    skipped_names = set()  # a set: a list's `in` made many unknown members quadratic
    with archive:
        for info in archive.infolist():
            where = f"{what}: member {info.filename!r}"
            if not info.filename.endswith(".npy"):
                raise ValueError(f"{where} is not a .npy array")
            name = info.filename[: -len(".npy")]
            if name not in shapes:
                if strict:
                    raise ValueError(f"{where}: no array of that name is expected (known: {len(shapes)} names)")
                if skipped is not None and name not in skipped_names:
                    skipped_names.add(name)
                    skipped.append(name)
                continue
            if name in arrays:
                raise ValueError(f"{where} appears twice")
            arrays[name] = read_npy_member(archive, info, shapes[name], where, fortran_order=True)
    return arrays


@contextlib.contextmanager
def atomic_file(path):
    """A binary file that replaces ``path`` whole when the block ends, or not at all.

    The block writes into a temporary file in ``path``'s folder (``os.replace`` is atomic
    only within one file system); on a normal exit the file is flushed, synced and
    renamed over ``path``. On any exception (a full disk, ``KeyboardInterrupt``) the
    temporary file is removed and ``path`` is left as it was: a reader finds the old
    file, or none, never a truncated one.

    Parameters
    ----------
    path : str
        The file to write (its folder must exist).

    Yields
    ------
    file object
        Opened for binary writing.

    Raises
    ------
    OSError
        The folder cannot be written, or writing failed; ``path`` is unchanged.
    """
    import uuid

    folder, name = os.path.split(path)
    temporary = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        with open(temporary, "xb") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:  # KeyboardInterrupt too: no stray temporary file
        with contextlib.suppress(FileNotFoundError):
            os.remove(temporary)
        raise
