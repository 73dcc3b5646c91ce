"""Golden vectors: deterministic reference cases that ports are tested against.

A golden set is a folder with one ``.npz`` per case (arrays only, loadable with
``allow_pickle=False``) and one ``manifest.json`` that records the format version,
the package and NumPy versions, the seed, and per case: the operation, its spec and
options, the array names with shapes and dtypes, the tolerance of every expected
array, and the SHA-256 of its file. Exporting twice gives byte-identical files.

Operations are registered in :data:`OPERATIONS`; each knows its curated cases, how
to compute them with the reference, and how to call a port with them. See
``docs/porting.md`` for the calling conventions and the tolerance policy.

Tolerance policy: every expected array carries its tolerance in the manifest,
derived by the rules of :mod:`neocell_ref.verify.tolerances` (the magnitude bound
``|got - expected| <= safety · (n + 1) · u · bound + atol`` for sums of products,
the mixed-precision model for half-precision sets, normwise measured tolerances for
the whole model) and explained in ``docs/porting.md``.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import os
import platform
import shutil
import stat
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..validation import MAX_NPY_HEADER, _short_repr, as_flag, read_npy_member, real_number
from .golden_ops import HALF_EXCLUDED, OPERATIONS, make_case, neocell_expected
from .precision import HALF_DTYPES, STORAGE_DTYPE, dtype_name, not_bfloat16
from .tolerances import DEFAULT_SEED, allowed_error, check_seed, tolerance_policy

__all__ = [
    "FORMAT_VERSION",
    "MAX_RTOL_SCALE",
    "MAX_MANIFEST_BYTES",
    "GoldenError",
    "OPERATIONS",
    "export_golden",
    "derive_manifest",
    "load_manifest",
    "load_case",
    "set_digest",
    "manifest_digest",
    "check_digest",
    "load_callable",
    "load_port",
    "verify_golden",
    "compare_arrays",
    "check_tolerance_overrides",
    "ArrayComparison",
    "VerifyReport",
    "write_npz",
    "neocell_expected",
    "run_and_compare",
    "run_exec_and_compare",
    "compare_outputs",
]

#: Version of the golden-set format. 3: the manifest records ``storage_dtype``, and
#: sets can be float16 or bfloat16 (half-precision tolerances). 2: the manifest
#: records ``operations``, case arrays come from the name-keyed seeding rule
#: (``tolerances.case_rng``), and the whole manifest is checked against a
#: re-derivation. Sets of other formats are refused.
FORMAT_VERSION = 3
#: Largest factor by which a tolerance override may loosen a stored ``rtol``: a port
#: computing with TF32 matrix units (unit roundoff ``2**-11``) checked against the
#: float32 set (``2**-24``) needs ``2**13``; anything looser no longer verifies NeoCell.
MAX_RTOL_SCALE = 2.0**13
#: Largest accepted ``manifest.json`` (the full suite's is about 0.2 MB).
MAX_MANIFEST_BYTES = 4 * 2**20
#: Longest exception text kept in a report (the tail is kept: it holds the cause).
MAX_MESSAGE = 4000
#: Manifest fields that describe the machine that exported a set, not the set.
_ENVIRONMENT = ("generator", "numpy_version", "python_version")
_MANIFEST = "manifest.json"


class GoldenError(ValueError):
    """A golden set is unusable: missing or foreign file, wrong hash or digest, a
    manifest that differs from what this package exports, a malformed case file."""


# --------------------------------------------------------------------------------------
# deterministic .npz
# --------------------------------------------------------------------------------------
def _npz_bytes(arrays: dict) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name], order="C"), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    return buffer.getvalue()


def write_npz(path, arrays: dict) -> bytes:
    """Write ``arrays`` as an uncompressed ``.npz`` with fixed timestamps; return its bytes.

    ``numpy.savez`` stamps each member with the current time, so two exports differ;
    this writer fixes the date and the member order (sorted by name) so that equal
    arrays give equal bytes. The file loads with ``np.load(path, allow_pickle=False)``.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write (replaced if it exists).
    arrays : dict of str -> array_like
        The members, keyed by name (the member is ``NAME.npy``), any shapes and dtypes
        but object; written in C order.

    Returns
    -------
    bytes
        The file's contents (their SHA-256 is what a manifest records as ``sha256``).

    Raises
    ------
    ValueError
        An object array (it would need pickling); nothing is written then.
    OSError
        The file cannot be written.
    """
    data = _npz_bytes(arrays)
    Path(path).write_bytes(data)
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _exception_text(exc: BaseException) -> str:
    """``"Type: message"``, the message cut to its last :data:`MAX_MESSAGE` characters."""
    try:
        text = str(exc)
    except KeyboardInterrupt:
        raise
    except BaseException:  # a port's exception may fail to print itself, or even exit
        text = "<message not printable>"
    text = _printable(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
    if len(text) > MAX_MESSAGE:
        text = text[:200] + " [...] " + text[-(MAX_MESSAGE - 200) :]
    return text


def _printable(text: str) -> str:
    """``text`` printable on any terminal and in JSON: lone surrogates (which cannot be
    encoded, and would turn a failed case into an unusable run) and control characters
    other than newline and tab (a carriage return could overwrite a report line) become
    escapes."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(
        ch if ch in "\n\t" or ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text
    )


# --------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------
@dataclass
class ArrayComparison:
    """Outcome of comparing one array of a port with the reference.

    ``index``, ``got``, ``expected`` and ``allowed`` describe the worst element
    (largest ``|got - expected| / allowed``); ``ratio <= 1`` passes. ``message`` says
    why an array failed without a worst element (the port raised, returned no real
    floating array, or one of the wrong shape).
    """

    case: str
    array: str
    passed: bool
    index: tuple = ()
    got: float = float("nan")
    expected: float = float("nan")
    error: float = float("nan")
    allowed: float = float("nan")
    ratio: float = float("nan")
    message: str = ""
    diagnosis: list | None = None

    def describe(self) -> str:
        if self.message:
            text = f"{self.case}: {self.array}: {self.message}"
        else:
            text = (
                f"{self.case}: {self.array}: worst element {self.index}: got {self.got!r}, "
                f"expected {self.expected!r}, |error| {self.error:.3e} vs allowed {self.allowed:.3e} "
                f"({self.ratio:.3g}x the tolerance)"
            )
        lines = self.diagnosis_lines()
        return text + "".join("\n  " + line for line in lines)

    def diagnosis_lines(self) -> list:
        """``consistent with: ID — explanation (link)`` per known defect that explains
        this failing array, ``no known defect matches`` when none does; nothing when
        no diagnosis was made (a passing array, or a port that returned nothing)."""
        if self.diagnosis is None:
            return []
        if not self.diagnosis:
            return ["no known defect matches"]
        from .diagnosis import DEFECTS

        return [
            f"consistent with: {DEFECTS[i].describe()}" if i in DEFECTS else f"consistent with: {i}"
            for i in self.diagnosis
        ]


_KINDS = {
    "c": "complex",
    "O": "Python objects",
    "b": "booleans",
    "U": "strings",
    "S": "bytes",
    "i": "integers",
    "u": "unsigned integers",
    "V": "raw or structured records",
    "M": "datetimes",
    "m": "timedeltas",
}


def _port_array(value):
    """``(array, None)`` when ``value`` is a real floating array, else ``(None, reason)``.

    Nothing is converted silently: complex, integer, boolean, string and object
    results, ragged sequences and anything ``numpy.asarray`` cannot convert fail.
    """
    if isinstance(value, (str, bytes)):
        return None, f"the port returned a {type(value).__name__}, not an array"
    try:
        array = np.asarray(value)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a port's object may raise anything, SystemExit included
        return None, f"the port's output is not an array ({_exception_text(exc)})"
    if array.dtype.kind != "f":
        what = _KINDS.get(array.dtype.kind, array.dtype.kind)
        return None, (f"the port returned dtype {array.dtype} ({what}); only a real floating array is a result")
    return array, None


def compare_arrays(case, array, got, expected, *, rtol, atol=0.0, bound=None) -> ArrayComparison:
    """Compare ``got`` with ``expected`` elementwise.

    Passes where ``|got - expected| <= rtol * scale + atol`` with ``scale = bound``
    when given (the magnitude bound of the tolerance policy) and ``|expected|``
    otherwise. ``got`` must be a real floating array of exactly ``expected``'s shape;
    anything else (complex, integer, boolean, object, ragged, another shape) fails
    with a message, and so does a non-finite value where a finite one is expected.
    Where the expected value itself is NaN or ±Inf (never in an exported set, which
    refuses them; possible in a hand-made kit case), only the same value passes: NaN
    for NaN, the same infinity for an infinity.

    Parameters
    ----------
    case : str
        The case's name (recorded in the result, for messages).
    array : str
        The name of the compared array (recorded in the result).
    got : object
        What the port returned; a real floating array of ``expected``'s shape to pass.
    expected : array_like of real numbers, any shape
        The expected values, compared in float64.
    rtol : float
        Relative tolerance, finite and ``>= 0``; keyword only, required.
    atol : float, default 0.0
        Absolute tolerance, finite and ``>= 0``.
    bound : array_like, optional
        Magnitudes ``>= 0`` that broadcast to ``expected``'s shape.

    Returns
    -------
    ArrayComparison
        ``passed`` when every element is within the tolerance (an empty array passes,
        ``ratio`` 0); the worst element's fields, or ``message`` when ``got`` is unusable.

    Raises
    ------
    TypeError, ValueError
        A bad tolerance or ``bound`` (:func:`~neocell_ref.verify.tolerances.allowed_error`),
        or an ``expected`` that NumPy cannot convert to float64. Never for ``got``: a bad
        ``got`` fails.
    """
    expected = np.asarray(expected, dtype=np.float64)
    got, reason = _port_array(got)
    if reason:
        return ArrayComparison(case, array, False, message=reason)
    if got.shape != expected.shape:
        return ArrayComparison(case, array, False, message=f"shape {got.shape}, expected {expected.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        got = got.astype(np.float64)
        allowed = allowed_error(expected, rtol=rtol, atol=atol, bound=bound)
        error = np.abs(got - expected)
    bad_nonfinite = ~np.isfinite(got) & np.isfinite(expected)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # huge / subnormal is inf: fails
        ratio = np.where(allowed > 0, error / allowed, np.where(error > 0, np.inf, 0.0))
    ratio = np.where(bad_nonfinite, np.inf, ratio)
    # A non-finite expected value makes error and allowed NaN (or inf - inf), which the
    # ratio above would read as 0: compare it by identity instead.
    same = (got == expected) | (np.isnan(got) & np.isnan(expected))
    ratio = np.where(np.isfinite(expected), ratio, np.where(same, 0.0, np.inf))
    if ratio.size == 0:
        return ArrayComparison(case, array, True, ratio=0.0)
    worst = np.unravel_index(int(np.nanargmax(np.where(np.isnan(ratio), np.inf, ratio))), ratio.shape)
    r = float(ratio[worst]) if not np.isnan(ratio[worst]) else float("inf")
    return ArrayComparison(
        case,
        array,
        bool(r <= 1.0),
        tuple(int(i) for i in worst),
        float(got[worst]),
        float(expected[worst]),
        float(error[worst]),
        float(allowed[worst]),
        r,
    )


# --------------------------------------------------------------------------------------
# tolerance overrides
# --------------------------------------------------------------------------------------
def check_tolerance_overrides(rtol=None, atol=None, rtol_scale=1.0):
    """Validate tolerance overrides; return them as ``(rtol, atol, rtol_scale)`` floats.

    Parameters
    ----------
    rtol : float, optional
        Replaces every stored ``rtol``; finite and > 0.
    atol : float, optional
        Replaces every stored ``atol`` (0 in every set); finite and >= 0.
    rtol_scale : float
        Multiplies every ``rtol``; finite, > 0 and at most :data:`MAX_RTOL_SCALE`.

    Raises
    ------
    TypeError
        A value that is not a real number.
    ValueError
        Infinite, NaN, negative, zero (``rtol``, ``rtol_scale``), or ``rtol_scale``
        above :data:`MAX_RTOL_SCALE`. How far ``rtol`` and ``atol`` may loosen each
        array is checked against the array's stored tolerance when it is compared
        (see ``docs/porting.md``, "What a verdict guarantees").
    """
    rtol = None if rtol is None else real_number(rtol, "rtol", 0.0, low_open=True, type_error=True)
    atol = None if atol is None else real_number(atol, "atol", 0.0, type_error=True)
    rtol_scale = real_number(rtol_scale, "rtol_scale", 0.0, low_open=True, type_error=True)
    if rtol_scale > MAX_RTOL_SCALE:
        raise ValueError(
            f"rtol_scale must be at most {MAX_RTOL_SCALE:g} (MAX_RTOL_SCALE, the loosest "
            f"documented accumulation), got {rtol_scale!r}"
        )
    return rtol, atol, rtol_scale


def _effective(tol, rtol, atol, rtol_scale):
    """The ``(rtol, atol)`` an array is compared with under the overrides."""
    return ((tol["rtol"] if rtol is None else rtol) * rtol_scale, tol["atol"] if atol is None else atol)


def _scale(tol, arrays, key):
    """What ``rtol`` multiplies: the stored magnitude bound; ``max|expected|`` over the
    array and its listed peers (normwise); or, when neither is given, ``|expected|``
    elementwise."""
    if tol.get("bound"):
        return arrays[tol["bound"]]
    if tol.get("norm") == "max":
        peers = tol.get("scale_with") or [key]
        scale = max((float(np.max(np.abs(arrays[k]))) for k in peers if np.size(arrays[k])), default=0.0)
        return np.full(np.shape(arrays[key]), scale)
    return None


def _check_loosening(name, meta, arrays, rtol, atol, rtol_scale):
    """Refuse overrides that loosen any array of a case beyond :data:`MAX_RTOL_SCALE`.

    For each expected array with stored ``rtol`` ``r`` and scale ``s`` (its bound, or
    ``|expected|``): the effective ``rtol`` may be at most ``MAX_RTOL_SCALE · r`` and
    the effective ``atol`` at most ``MAX_RTOL_SCALE · r · max(s)``, i.e. no override
    allows more than what the largest loosening of ``rtol`` allows at the array's
    largest element.

    Within those limits an answer off by a factor of two (:data:`GUARD_FACTOR` times
    the expected values) must still fail every array that it fails at the stored
    tolerances (array by array, so that one array of zeros beside right ones cannot
    pass either). A loosened tolerance that accepts half the answer
    accepts every error of that size, a sum over the wrong half of the terms or a mean
    taken for a sum, and also zeros as soon as it reaches the whole answer; how loose
    that is depends on the case, not only on the factor (NeoCell on a float16 set
    reaches it at a factor of a few hundred, the measured tolerances of the whole model
    at a few thousand).
    """
    for key, tol in meta["tolerances"].items():
        eff_rtol, eff_atol = _effective(tol, rtol, atol, rtol_scale)
        limit = MAX_RTOL_SCALE * tol["rtol"]
        if eff_rtol > limit * (1 + 1e-12):
            raise ValueError(
                f"tolerance override too loose for {name}: {key}: rtol {eff_rtol:.3g} is "
                f"{eff_rtol / tol['rtol']:.3g}x the stored {tol['rtol']:.3g}; at most "
                f"{MAX_RTOL_SCALE:g}x (MAX_RTOL_SCALE) is allowed"
            )
        if eff_atol > tol["atol"]:
            scale = _scale(tol, arrays, key)
            scale = np.abs(arrays[key]) if scale is None else scale
            top = float(np.max(scale)) if np.size(scale) else 0.0
            if eff_atol > limit * top:
                raise ValueError(
                    f"tolerance override too loose for {name}: {key}: atol {eff_atol:.3g} exceeds "
                    f"{MAX_RTOL_SCALE:g} (MAX_RTOL_SCALE) x rtol {tol['rtol']:.3g} x the array's "
                    f"largest scale {top:.3g} = {limit * top:.3g}"
                )
    if not _loosens(meta["tolerances"].values(), rtol, atol, rtol_scale):
        return  # the stored tolerances, or tighter ones: nothing the guard could catch
    for key, tol in meta["tolerances"].items():
        # Array by array: guarding only the forward and the backward as wholes let a port
        # whose grad_x is right and whose weight gradients are all zeros pass a loosened
        # bfloat16 set, since half of grad_x still failed.
        if _guard_passes(name, key, tol, arrays, rtol, atol, rtol_scale) and not _guard_passes(
            name, key, tol, arrays, None, None, 1.0
        ):
            raise ValueError(
                f"tolerance override too loose for {name}: {key} off by a factor of 2 (half the "
                "expected values, and so also all zeros) would pass, which the stored tolerance "
                "fails; exclude the case (--exclude) if the port cannot be verified at the stored "
                "tolerances"
            )


#: The answer an override must keep failing (:func:`_check_loosening`): this factor
#: times the expected values. Its error, half of every value, is below the error of
#: zeros everywhere, so a guard on it is a guard on zeros too.
GUARD_FACTOR = 0.5


def _guard_passes(name, key, tol, arrays, rtol, atol, rtol_scale) -> bool:
    """Whether ``GUARD_FACTOR`` times the answer passes ``key`` under the overrides: the
    very comparison a port gets."""
    eff_rtol, eff_atol = _effective(tol, rtol, atol, rtol_scale)
    wrong = GUARD_FACTOR * np.asarray(arrays[key], dtype=np.float64)
    bound = _scale(tol, arrays, key)
    return compare_arrays(name, key, wrong, arrays[key], rtol=eff_rtol, atol=eff_atol, bound=bound).passed


def _loosens(tolerances, rtol, atol, rtol_scale) -> bool:
    return any(
        e > s for tol in tolerances for e, s in zip(_effective(tol, rtol, atol, rtol_scale), (tol["rtol"], tol["atol"]))
    )


def _case_overrides(op, name, meta, arrays, rtol, atol, rtol_scale):
    """Validated overrides for one case (unknown operation, bad or too loose overrides raise)."""
    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; known: {sorted(OPERATIONS)}")
    rtol, atol, rtol_scale = check_tolerance_overrides(rtol, atol, rtol_scale)
    _check_loosening(name, meta, arrays, rtol, atol, rtol_scale)
    return rtol, atol, rtol_scale


def run_and_compare(op, name, meta, arrays, forward, backward, *, rtol=None, atol=None, rtol_scale=1.0, diagnose=True):
    """Run a port on one case and compare every output; return a list of :class:`ArrayComparison`.

    Forward and backward run separately, so that one failing does not hide the other.
    A callable that raises anything (``SystemExit`` included; only ``KeyboardInterrupt``
    propagates) fails the case with one row ``(forward call)`` or ``(backward call)``
    whose message holds the exception's type and text (its tail when long): a wrapper
    around a port outside Python can raise with the port's stderr tail as its message
    and it appears in the report. Every output must be a real floating array of exactly
    the expected shape (:func:`compare_arrays`). Failing arrays are diagnosed
    (:func:`compare_outputs`) unless ``diagnose`` is False.

    Parameters
    ----------
    op : str
        The operation, a key of :data:`OPERATIONS`.
    name : str
        The case's name (in the rows and messages).
    meta : dict
        The case's manifest entry. ``meta`` needs what the operation's ``run_port``
        reads (for NeoCell ``specs_as_written``) and ``tolerances``.
    arrays : dict of str -> ndarray
        ``arrays`` holds inputs, expected outputs and bounds. The port gets fresh
        copies of the inputs only.
    forward, backward : callable or None
        The port's functions in the operation's calling convention (manifest
        ``conventions``); None leaves that half out (both None: nothing is compared).
    rtol, atol : float, optional
        Overrides of the stored tolerances (None: stored).
    rtol_scale : float, default 1.0
        Factor on every ``rtol``, at most :data:`MAX_RTOL_SCALE`.
    diagnose : bool, default True
        Diagnose the failing arrays.

    Returns
    -------
    list of ArrayComparison
        A ``(forward call)`` or ``(backward call)`` row per call that raised, then one
        row per array the port returned (forward outputs first).

    Raises
    ------
    TypeError, ValueError
        Invalid tolerance overrides (:func:`check_tolerance_overrides`) or overrides
        loosening an array beyond :data:`MAX_RTOL_SCALE`, before the port runs; an
        ``op`` that is not in :data:`OPERATIONS` (ValueError).
    """
    rtol, atol, rtol_scale = _case_overrides(op, name, meta, arrays, rtol, atol, rtol_scale)
    results, got = [], {}
    for label, fns in (("forward", (forward, None)), ("backward", (None, backward))):
        if fns[0] is None and fns[1] is None:
            continue
        # The port gets fresh copies of the inputs only: what it writes into them cannot
        # reach the next call, the comparison or the diagnosis, and the expected answers
        # and bounds are not handed to it.
        inputs = {
            k: np.array(v) for k, v in arrays.items() if k not in meta["tolerances"] and not k.startswith("bound/")
        }
        try:
            outputs = OPERATIONS[op].run_port(inputs, meta, *fns)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # SystemExit and friends fail the case, the run goes on
            results.append(
                ArrayComparison(name, f"({label} call)", False, message=f"port's {label} raised {_exception_text(exc)}")
            )
            continue
        got.update(outputs)
    return results + compare_outputs(
        op, name, meta, arrays, got, rtol=rtol, atol=atol, rtol_scale=rtol_scale, diagnose=diagnose
    )


def run_exec_and_compare(
    command,
    op,
    name,
    meta,
    arrays,
    *,
    forward_only=False,
    timeout=None,
    rtol=None,
    atol=None,
    rtol_scale=1.0,
    diagnose=True,
):
    """Run a port that is a program (the exec protocol) on one golden case and compare.

    One process run computes every output of the case (only the forward ones with
    ``forward_only``), :func:`neocell_ref.verify.exec_port.run_golden_case`. A run that fails
    (:class:`~neocell_ref.verify.exec_port.PortFailure`: bad exit, timeout, a missing,
    malformed or wrongly shaped output) fails the case with one row ``(exec run)``
    whose message carries the tail of the port's stderr. The outputs are compared by
    :func:`compare_outputs`, exactly as a Python port's.

    Parameters
    ----------
    command : str or sequence of str
        The port, with ``{in}`` and ``{out}`` placeholders
        (:func:`neocell_ref.verify.exec_port.check_command`).
    op : str
        The operation, one the protocol supports
        (:data:`neocell_ref.verify.exec_port.CASE_FIELDS`: ``"neocell"``).
    name : str
        The case's name (in the rows, messages and ``case.json``).
    meta : dict
        ``meta`` is the case's manifest entry (``inputs``, ``tolerances``, and the fields
        the protocol copies into ``case.json``).
    arrays : dict of str -> ndarray
        The case's arrays: inputs, expected outputs (their shapes are the expected
        shapes) and bounds.
    forward_only : bool, default False
        Expect only the forward outputs (names not starting with ``grad``); ``grad_y``
        is not given to the port.
    timeout : float, optional
        Seconds per run before the port's process group is killed (default
        :data:`neocell_ref.verify.exec_port.DEFAULT_TIMEOUT`).
    rtol, atol, rtol_scale, diagnose
        As in :func:`run_and_compare`.

    Returns
    -------
    list of ArrayComparison
        One ``(exec run)`` row when the run fails, else one row per expected output.

    Raises
    ------
    neocell_ref.verify.exec_port.ExecCommandError
        The command cannot be run at all (a property of the port, not of the case).
    TypeError, ValueError
        Invalid overrides or timeout, an operation the protocol does not support.
    """
    from .exec_port import DEFAULT_TIMEOUT, PortFailure, run_golden_case

    rtol, atol, rtol_scale = _case_overrides(op, name, meta, arrays, rtol, atol, rtol_scale)
    try:
        got = run_golden_case(
            command,
            op,
            name,
            meta,
            arrays,
            forward_only=forward_only,
            timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
        )
    except PortFailure as exc:
        return [ArrayComparison(name, "(exec run)", False, message=_printable(str(exc)))]
    return compare_outputs(op, name, meta, arrays, got, rtol=rtol, atol=atol, rtol_scale=rtol_scale, diagnose=diagnose)


@np.errstate(all="ignore")  # a port module's np.seterr(all="raise") must not change a verdict
def compare_outputs(op, name, meta, arrays, got, *, rtol=None, atol=None, rtol_scale=1.0, diagnose=True):
    """Compare a port's outputs with one case's expected arrays; diagnose the failures.

    The comparison step shared by Python ports (:func:`run_and_compare`) and ports
    run through the exec protocol (:func:`run_exec_and_compare`). Each array is
    compared by :func:`compare_arrays` with the case's stored tolerance under the
    overrides (already validated by the caller). When arrays fail, and ``diagnose``
    is True, :func:`neocell_ref.verify.diagnosis.diagnose` is asked which known porting
    defects explain them, with the same elementwise allowed error; each failing
    array that held a real floating array gets ``diagnosis`` (a list of defect ids,
    empty when none matches). Passing arrays get none. A diagnosis never changes a
    verdict, and a diagnosis that raises is treated as no match.

    Parameters
    ----------
    op : str
        The operation (a key of :data:`neocell_ref.verify.golden_ops.OPERATIONS`).
    name : str
        The case's name (in messages).
    meta : dict
        The case's manifest entry; ``meta["tolerances"]`` holds every array's stored
        ``rtol``, ``atol`` and bound rule.
    arrays : dict of str -> ndarray
        The case's stored arrays: inputs and expected outputs.
    got : dict
        ``{expected array name: the port's output}``.
    rtol, atol : float, optional
        Overrides of the stored tolerances (None: stored).
    rtol_scale : float, default 1
        Factor on every stored ``rtol``.
    diagnose : bool, default True
        Ask the diagnosis which known defects explain the failing arrays.

    Returns
    -------
    list of ArrayComparison
        One per array of ``got``, in its order.
    """
    results, failing, allowed = [], {}, {}
    for key, value in got.items():
        tol = meta["tolerances"][key]
        eff_rtol, eff_atol = _effective(tol, rtol, atol, rtol_scale)
        bound = _scale(tol, arrays, key)
        result = compare_arrays(name, key, value, arrays[key], rtol=eff_rtol, atol=eff_atol, bound=bound)
        results.append(result)
        if not result.passed:
            array, reason = _port_array(value)
            if reason is None:  # something to compare with a variant
                failing[key] = array
                allowed[key] = allowed_error(arrays[key], rtol=eff_rtol, atol=eff_atol, bound=bound)
    if diagnose and failing:
        found = _diagnosis(op, meta, arrays, failing, allowed)
        for result in results:
            if result.array in failing:
                result.diagnosis = [d.id for d in found.get(result.array, [])]
    return results


def _diagnosis(op, meta, arrays, failing, allowed) -> dict:
    """:func:`neocell_ref.verify.diagnosis.diagnose`, any failure of it meaning "no match"."""
    import warnings

    from .diagnosis import diagnose

    x = arrays.get("x")
    dtype = np.asarray(x).dtype.name if x is not None and np.asarray(x).dtype.kind == "f" else "float64"
    if dtype == "float32" and any("half_roundings" in t for t in meta.get("tolerances", {}).values()):
        dtype = "bfloat16"  # a bfloat16 set stores its inputs as float32 (format 3)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return diagnose(op, meta, arrays, failing, allowed, dtype)
    except KeyboardInterrupt:
        raise
    except BaseException:  # a diagnosis is advice: it never breaks a verdict
        return {}


# --------------------------------------------------------------------------------------
# building a set (export and re-derivation share it)
# --------------------------------------------------------------------------------------
def _check_set_args(suite, dtype, seed, operations):
    if suite not in ("core", "full") or not isinstance(suite, str):
        raise ValueError(f"suite must be 'core' or 'full', got {suite!r}")
    name = dtype_name(dtype)
    seed = check_seed(seed)
    if operations is None:
        # A half-precision set leaves out the operations without a sound tolerance.
        ops = [op for op in OPERATIONS if not (name in HALF_DTYPES and op in HALF_EXCLUDED)]
    else:
        if isinstance(operations, str) or not isinstance(operations, (list, tuple)):
            raise TypeError(f"operations must be a list of operation names, got {operations!r}")
        ops = list(operations)
        for op in ops:
            if not isinstance(op, str) or op not in OPERATIONS:
                raise ValueError(f"unknown operation {op!r} in operations; known: {sorted(OPERATIONS)}")
        if len(set(ops)) != len(ops):
            raise ValueError(f"operations lists an operation twice: {ops}")
        if not ops:
            raise ValueError("operations is empty: a golden set must hold at least one operation")
        for op in ops:
            if name in HALF_DTYPES and op in HALF_EXCLUDED:
                raise ValueError(f"operation {op!r} has no {name} golden cases: {HALF_EXCLUDED[op]}")
    return suite, name, seed, ops


def _array_digest(array) -> str:
    array = np.ascontiguousarray(array)
    return _sha256(f"{array.dtype.str}{array.shape}".encode() + array.tobytes())


def _build_set(suite, dtype, seed, ops, input_digests=None):
    """The manifest and the case files (name -> bytes) of a set; arguments checked.

    ``input_digests``, when a dict, receives ``{file: {input array: digest}}``."""
    policy = tolerance_policy(dtype)
    if dtype in HALF_DTYPES:
        policy["excluded_operations"] = dict(HALF_EXCLUDED)
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": f"neocell_ref {__version__}",
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "suite": suite,
        "dtype": dtype,
        "storage_dtype": STORAGE_DTYPE[dtype],
        "seed": seed,
        "operations": list(ops),
        "tolerance_policy": policy,
        "seeding": "numpy.random.default_rng(SeedSequence([seed, *first 16 bytes of "
        "SHA-256('<op>/<case name>') as 4 little-endian uint32]))",
        "conventions": {op: OPERATIONS[op].convention for op in ops},
        "cases": [],
    }
    files = {}
    for op_name in ops:
        for case in OPERATIONS[op_name].cases(suite):
            name = case[0]
            meta, arrays, inputs, tolerances = _made_case(op_name, suite, name, dtype, seed)
            file_name = f"{op_name}__{name}.npz"
            files[file_name] = data = _npz_bytes(arrays)
            if input_digests is not None:
                input_digests[file_name] = {key: _array_digest(arrays[key]) for key in inputs}
            manifest["cases"].append(
                {
                    "name": name,
                    "op": op_name,
                    "file": file_name,
                    "sha256": _sha256(data),
                    **meta,
                    "inputs": inputs,
                    "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())},
                    "tolerances": tolerances,
                }
            )
    return manifest, files


@functools.lru_cache(maxsize=64)
def _made_case(op_name, suite, name, dtype, seed):
    """:func:`make_case` of the case ``name`` of ``suite``, cached (export and every
    verification of a set need the same cases; about 1 s per full set uncached). The
    arrays are read-only: the cache hands the same ones to every caller."""
    case = next(c for c in OPERATIONS[op_name].cases(suite) if c[0] == name)
    meta, arrays, inputs, tolerances = make_case(op_name, case, dtype, seed)
    for array in arrays.values():
        array.setflags(write=False)
    return meta, arrays, inputs, tolerances


#: How far a stored expected value may lie from the one this machine computes, as a
#: fraction of its allowed error: SAFETY = 2 gives the reference's own rounding half
#: of the allowance, so two correct machines differ by less than that.
EXPECTED_DRIFT = 0.5
#: How far a stored magnitude bound may lie from this machine's, relative: a sum of
#: absolute values differs between machines in its last bits only.
BOUND_DRIFT = 2.0**-30


def _check_answers(manifest, case, arrays):
    """Refuse stored expected values or bounds that are not this package's answers.

    The inputs are checked bit for bit; the answers may differ in their last bits
    between machines, so each is recomputed here and must agree: a bound within
    :data:`BOUND_DRIFT` (relative), an expected value within :data:`EXPECTED_DRIFT` of
    its allowed error. An edit that moves an answer or widens a bound, with the file's
    hash updated in the manifest, is refused without the ``--digest`` pin.
    """
    _, derived, inputs, _ = _made_case(case["op"], manifest["suite"], case["name"], manifest["dtype"], manifest["seed"])
    where = f"case {case['name']!r} ({case['op']}): {case['file']}"
    for key in sorted(set(derived) - set(inputs)):
        stored, want = np.asarray(arrays[key], dtype=np.float64), np.asarray(derived[key], dtype=np.float64)
        if key in case["tolerances"]:
            tol = case["tolerances"][key]
            bound = _scale(tol, derived, key)
            allowed = EXPECTED_DRIFT * allowed_error(want, rtol=tol["rtol"], atol=tol["atol"], bound=bound)
            what = f"{EXPECTED_DRIFT:g} of its allowed error"
        else:
            allowed = BOUND_DRIFT * np.abs(want)
            what = f"a relative {BOUND_DRIFT:.3g}"
        with np.errstate(over="ignore", invalid="ignore"):
            off = ~(np.abs(stored - want) <= allowed)
        if off.any():
            index = tuple(int(i) for i in np.argwhere(off)[0])
            raise GoldenError(
                f"{where}: {key}{list(index)} is {stored[index]!r}, but this package computes "
                f"{want[index]!r} (more than {what} apart): the stored answers were edited"
            )


def _manifest_text(manifest) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def manifest_digest(manifest: dict) -> str:
    """The set digest (SHA-256 of ``manifest.json``) of a manifest as
    :func:`export_golden` writes and returns it.

    Parameters
    ----------
    manifest : dict
        A manifest as :func:`export_golden` returns it.

    Returns
    -------
    str
        64 lowercase hex digits.
    """
    return _sha256(_manifest_text(manifest).encode("utf-8"))


@functools.lru_cache(maxsize=16)
def _derived(suite, dtype, seed, ops):
    """``(manifest text, input digests)`` this package exports; cached (about 1 s uncached)."""
    digests = {}
    manifest, _ = _build_set(suite, dtype, seed, list(ops), digests)
    return _manifest_text(manifest), digests


def derive_manifest(suite="core", dtype="float64", seed=DEFAULT_SEED, operations=None) -> dict:
    """The manifest this package exports for ``suite``, ``dtype``, ``seed`` and ``operations``.

    The verifier compares a set's manifest with this one (apart from the exporting
    machine's versions and the case files' hashes) before it runs anything. Computed
    by building the set in memory (about a second for the full suite), cached per
    arguments within a process.

    Parameters
    ----------
    suite : {"core", "full"}, default "core"
    dtype : {"float64", "float32", "float16", "bfloat16"}, default "float64"
        Dtype of the set's inputs (a NumPy dtype of the first three is read too).
    seed : int, default DEFAULT_SEED
        In ``[0, 2**63 - 1]``.
    operations : list of str, optional
        Subset of :data:`OPERATIONS` (default all those the dtype has cases for).

    Returns
    -------
    dict
        A fresh copy, as ``json.loads`` of ``manifest.json`` gives it.

    Raises
    ------
    TypeError, ValueError
        A bad argument, as in :func:`export_golden`.
    """
    suite, dtype, seed, ops = _check_set_args(suite, dtype, seed, operations)
    return json.loads(_derived(suite, dtype, seed, tuple(ops))[0])


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------
def _folder_arg(directory, what="directory") -> Path:
    if isinstance(directory, bytes) or not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"{what} must be a path (str or os.PathLike), got {type(directory).__name__} {directory!r}")
    text = os.fspath(directory)
    if not isinstance(text, str):
        raise TypeError(f"{what} must be a text path, got {directory!r}")
    if text == "":
        raise ValueError(f"{what} is empty: give the path of a folder")
    if "\0" in text:
        raise ValueError(f"{what} {text!r} contains a NUL character")
    return Path(text)


def _previous_set_problem(path: Path, entries) -> str | None:
    """None when ``path`` holds a golden set and nothing else, else what is foreign in it."""
    manifest_path = path / _MANIFEST
    try:
        st = os.lstat(manifest_path)
    except OSError:
        return f"it holds {entries[0].name} and no manifest.json"
    if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_MANIFEST_BYTES:
        return "its manifest.json is not a regular file of acceptable size"
    try:
        manifest = json.loads(manifest_path.read_bytes().decode("utf-8"))
        files = {case["file"] for case in manifest["cases"]} if "format_version" in manifest else None
    except (ValueError, TypeError, KeyError, RecursionError, OSError):
        files = None
    if not isinstance(files, set) or not all(isinstance(f, str) and f == Path(f).name for f in files):
        return "its manifest.json is not a golden-set manifest"
    for entry in entries:
        st = os.lstat(entry)
        if entry.name != _MANIFEST and entry.name not in files:
            return f"{entry.name} is not a file of the golden set"
        if not stat.S_ISREG(st.st_mode):
            return f"{entry.name} is not a regular file"
    return None


def _check_export_target(directory) -> Path:
    path = _folder_arg(directory)
    if path.name in ("", ".", ".."):
        raise ValueError(
            f"{directory!s}: name the golden set's folder (not '.', '..' or a root), it is replaced as a whole"
        )
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; give the folder itself")
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path} exists and is not a folder")
        entries = sorted(path.iterdir())
        problem = _previous_set_problem(path, entries) if entries else None
        if problem:
            raise ValueError(
                f"{path} is not empty and does not hold only a golden set ({problem}); "
                f"export into a new or empty folder"
            )
    return path


def _write_set(path: Path, files: dict, manifest_text: str) -> None:
    """Write the set into a temporary sibling folder, then rename it to ``path``.

    ``path`` never holds a half-written set: a previous set there is renamed away,
    replaced by the complete new one, and deleted (restored if the rename fails).
    """
    parent = path.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=parent))
    try:
        os.chmod(tmp, 0o755)
        for name, data in files.items():
            (tmp / name).write_bytes(data)
        (tmp / _MANIFEST).write_bytes(manifest_text.encode("utf-8"))
        if not path.exists():
            os.rename(tmp, path)
        elif not any(path.iterdir()):
            os.rmdir(path)
            os.rename(tmp, path)
        else:
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=parent))
            try:
                os.rename(path, old)  # onto the empty placeholder
            except BaseException:
                os.rmdir(old)
                raise
            try:
                os.rename(tmp, path)
            except BaseException:
                os.rename(old, path)
                raise
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export_golden(directory, suite="core", dtype="float64", seed=DEFAULT_SEED, operations=None):
    """Write a golden set to ``directory``; return the manifest dict.

    Parameters
    ----------
    directory : path
        A new or empty folder, or one holding a previous golden set and nothing else
        (it is replaced exactly, no stale file stays). The set is written into a
        temporary sibling folder and renamed into place, so ``directory`` never holds
        a half-written set.
    suite : {"core", "full"}
    dtype : {"float64", "float32", "float16", "bfloat16"}
        Dtype of the inputs (expected values are float64 either way). A float16 set
        stores float16 arrays; a bfloat16 set stores float32 arrays whose every value
        is a bfloat16 number (manifest ``storage_dtype``). Half-precision sets carry
        the mixed-precision tolerances of ``docs/porting.md`` and leave out the
        whole model (``golden_ops.HALF_EXCLUDED``).
    seed : int
        In ``[0, 2**63 - 1]``. Each case draws from
        :func:`neocell_ref.verify.tolerances.case_rng` (keyed by seed, operation and case
        name), exactly as the conformance kit does with the same seed.
    operations : list of str, optional
        Subset of :data:`OPERATIONS` (default all), recorded in the manifest.

    Raises
    ------
    TypeError, ValueError
        A bad argument, an empty path, a path that is a file, or a non-empty folder
        that holds something other than a golden set; nothing is written then.
    OSError
        The folder cannot be written.
    """
    suite, dtype, seed, ops = _check_set_args(suite, dtype, seed, operations)
    path = _check_export_target(directory)
    manifest, files = _build_set(suite, dtype, seed, ops)
    text = _manifest_text(manifest)
    _write_set(path, files, text)
    return manifest


# --------------------------------------------------------------------------------------
# loading and verifying a set as a whole
# --------------------------------------------------------------------------------------
def _plain_name_problem(name) -> str | None:
    if not isinstance(name, str) or not name:
        return f"file {name!r} is not a file name"
    if "/" in name or "\\" in name or "\0" in name or name in (".", "..") or os.path.isabs(name):
        return f"file {name!r} is not a plain file name inside the set's folder (no paths, no '..')"
    return None


def _read_regular(directory: Path, name: str, limit: int, where: str) -> bytes:
    """Bytes of ``directory/name``: a regular file (no link), at most ``limit`` bytes."""
    problem = _plain_name_problem(name)
    if problem:
        raise GoldenError(f"{where}: {problem}")
    path = directory / name
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise GoldenError(f"{where}: {path} is missing") from None
    except OSError as exc:
        raise GoldenError(f"{where}: cannot read {path}: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        raise GoldenError(f"{where}: {path} is a symbolic link; a golden set holds regular files only")
    if not stat.S_ISREG(st.st_mode):
        raise GoldenError(f"{where}: {path} is not a regular file")
    if st.st_size > limit:
        raise GoldenError(f"{where}: {path} has {st.st_size} bytes, more than the {limit} it can have")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise GoldenError(f"{where}: cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise GoldenError(f"{where}: {path} grew beyond {limit} bytes while being read")
    return data


def _no_duplicate_keys(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _parse_manifest(data: bytes, path) -> dict:
    try:
        manifest = json.loads(
            data.decode("utf-8"), object_pairs_hook=_no_duplicate_keys, parse_constant=_reject_constant
        )
    except RecursionError:
        raise GoldenError(f"{path} is not a golden-set manifest: JSON nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise GoldenError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise GoldenError(f"{path} is not a golden-set manifest: the top level is a {type(manifest).__name__}")
    return manifest


def _short(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _difference(got, want, path) -> str | None:
    """The first difference between two JSON values (types compared strictly), or None."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            return f"{path} is {_short(got)}, expected an object"
        for key in want:
            if key not in got:
                return f"{path}.{key} is missing"
        for key in got:
            if key not in want:
                return f"{path}.{key} is not a field this package writes"
        for key in want:
            diff = _difference(got[key], want[key], f"{path}.{key}")
            if diff:
                return diff
        return None
    if isinstance(want, list):
        if not isinstance(got, list):
            return f"{path} is {_short(got)}, expected a list"
        if len(got) != len(want):
            return f"{path} has {len(got)} entries, expected {len(want)}"
        for i, (g, w) in enumerate(zip(got, want)):
            diff = _difference(g, w, f"{path}[{i}]")
            if diff:
                return diff
        return None
    if type(got) is not type(want) or got != want:
        return f"{path} is {_short(got)}, expected {_short(want)}"
    return None


def _check_manifest(manifest: dict, path) -> dict:
    """Refuse a manifest that is not exactly what this package exports for its recorded
    suite, dtype, seed and operations (environment fields and file hashes apart);
    return the digests of the input arrays this package draws for them."""
    version = manifest.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        generator = manifest.get("generator")
        written = f", written by {_short(generator)}" if isinstance(generator, str) else ""
        raise GoldenError(
            f"{path}: format_version {_short(version)}{written}; this package (neocell_ref "
            f"{__version__}) reads format {FORMAT_VERSION} only: export the set again with it"
        )
    for key in ("suite", "dtype", "seed", "operations", "cases", *_ENVIRONMENT):
        if key not in manifest:
            raise GoldenError(f"{path}: the manifest has no {key!r}")
    for key in _ENVIRONMENT:
        if not isinstance(manifest[key], str):
            raise GoldenError(f"{path}: {key} is {_short(manifest[key])}, expected a string")
    if not isinstance(manifest["cases"], list) or not all(isinstance(c, dict) for c in manifest["cases"]):
        raise GoldenError(f"{path}: cases is not a list of objects")
    # Paths first, so that an escaping path is named as such.
    seen = set()
    for case in manifest["cases"]:
        label = f"case {_short(case.get('name'))} ({_short(case.get('op'))})"
        if "file" not in case:
            raise GoldenError(f"{path}: {label} has no 'file'")
        problem = _plain_name_problem(case["file"])
        if problem:
            raise GoldenError(f"{path}: {label}: {problem}")
        key = (_short(case.get("op")), _short(case.get("name")))
        if key in seen:
            raise GoldenError(f"{path}: {label} is listed twice")
        seen.add(key)
        digest = case.get("sha256")
        if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= set("0123456789abcdef")):
            raise GoldenError(f"{path}: {label}: sha256 is {_short(digest)}, expected 64 lowercase hex digits")
    recorded = (manifest["suite"], manifest["dtype"], manifest["seed"], manifest["operations"])
    try:
        suite, dtype, seed, ops = _check_set_args(*recorded)
    except (TypeError, ValueError) as exc:
        raise GoldenError(f"{path}: {exc}") from None
    text, input_digests = _derived(suite, dtype, seed, tuple(ops))
    want = json.loads(text)
    context = f"suite {suite!r}, dtype {dtype!r}, seed {seed}, operations {ops}"
    got_cases, want_cases = manifest["cases"], want["cases"]
    got_ids = [(c.get("op"), c.get("name")) for c in got_cases]
    want_ids = [(c["op"], c["name"]) for c in want_cases]
    if got_ids != want_ids:
        missing = [f"{n} ({o})" for o, n in want_ids if (o, n) not in got_ids]
        extra = [f"{_short(n)} ({_short(o)})" for o, n in got_ids if (o, n) not in want_ids]
        detail = (f"missing {missing[:5]}" if missing else "") + (f" unknown {extra[:5]}" if extra else "")
        raise GoldenError(
            f"{path}: the case list differs from the one this package exports for {context}: "
            f"{len(got_ids)} cases instead of {len(want_ids)}; {detail.strip() or 'order differs'}"
        )
    rest = lambda m: {k: v for k, v in m.items() if k not in ("cases", *_ENVIRONMENT)}  # noqa: E731
    diff = _difference(rest(manifest), rest(want), "manifest")
    for got_case, want_case in zip(got_cases, want_cases):
        if diff:
            break
        strip = lambda c: {k: v for k, v in c.items() if k != "sha256"}  # noqa: E731
        diff = _difference(strip(got_case), strip(want_case), f"case {want_case['name']!r} ({want_case['op']})")
    if diff:
        raise GoldenError(
            f"{path}: {diff} (this package exports {context} so; a golden set cannot be edited: export it again)"
        )
    return input_digests


def _size_limit(case) -> int:
    """Largest possible size of a case file with the manifest's (re-derived) arrays."""
    total = 22
    for key, info in case["arrays"].items():
        nbytes = math.prod(info["shape"]) * np.dtype(info["dtype"]).itemsize
        total += nbytes + MAX_NPY_HEADER + 2 * len(key.encode()) + 200
    return total


def _read_member(zf, info, shape, dtype, where):
    """One ``.npy`` member as an array, its header checked against the manifest before
    any data is read (:func:`neocell_ref.validation.read_npy_member`), then finite."""
    try:
        array = read_npy_member(zf, info, shape, where, dtype=dtype)
    except ValueError as exc:
        raise GoldenError(str(exc)) from None
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise GoldenError(f"{where}: holds non-finite values")
    return array


def _case_arrays(data: bytes, case: dict, where: str) -> dict:
    """The arrays of a case file, every member checked against the manifest first."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except Exception as exc:  # BadZipFile, truncated or garbled directories
        raise GoldenError(f"{where}: not a readable .npz (zip) file: {_exception_text(exc)}") from None
    with zf:
        infos = zf.infolist()
        names = [info.filename for info in infos]
        wanted = {f"{key}.npy": key for key in case["arrays"]}
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise GoldenError(f"{where}: member {twice[0]} appears twice")
        extra = sorted(set(names) - set(wanted))
        missing = sorted(set(wanted) - set(names))
        if extra or missing:
            raise GoldenError(
                f"{where}: members differ from the manifest: "
                f"{'extra ' + str(extra[:5]) if extra else ''}"
                f"{' missing ' + str(missing[:5]) if missing else ''}".replace(":  ", ": ")
            )
        arrays = {}
        for info in infos:
            key = wanted[info.filename]
            spec = case["arrays"][key]
            member = f"{where}: member {info.filename}"
            try:
                arrays[key] = _read_member(zf, info, tuple(spec["shape"]), np.dtype(spec["dtype"]), member)
            except GoldenError:
                raise
            except Exception as exc:  # corrupt data, bad CRC, garbled header
                raise GoldenError(f"{member}: unreadable: {_exception_text(exc)}") from None
    return arrays


def _read_case(directory: Path, case: dict) -> dict:
    where = f"case {case['name']!r} ({case['op']}): {case['file']}"
    data = _read_regular(directory, case["file"], _size_limit(case), where)
    digest = _sha256(data)
    if digest != case["sha256"]:
        raise GoldenError(f"{where} has SHA-256 {digest}, the manifest says {case['sha256']}")
    return _case_arrays(data, case, where)


def check_digest(digest):
    """``digest`` normalised (lower case, stripped), ``None`` for ``None``; a value that is
    not 64 hex digits is a TypeError/ValueError naming it.

    Parameters
    ----------
    digest : str or None
        A set digest (SHA-256 hex), as :func:`set_digest` returns it.

    Returns
    -------
    str or None
        64 lowercase hex digits, or None.

    Raises
    ------
    TypeError
        ``digest`` is neither a string nor None.
    ValueError
        ``digest`` is not 64 hex digits (after stripping whitespace).
    """
    if digest is None:
        return None
    if not isinstance(digest, str):
        raise TypeError(f"digest must be a SHA-256 hex string, got {type(digest).__name__} {_short_repr(digest)}")
    text = digest.strip().lower()
    if len(text) != 64 or not set(text) <= set("0123456789abcdef"):
        raise ValueError(f"digest must be 64 hex digits (a SHA-256), got {digest!r}")
    return text


def _load_set(directory, digest=None, keep_op=None):
    """Verify a golden set as a whole; return ``(manifest, set digest)``, and with
    ``keep_op`` also ``{case file: arrays}`` of that operation's cases."""
    digest = check_digest(digest)
    directory = _folder_arg(directory)
    if not directory.is_dir():
        raise GoldenError(f"no golden set at {directory}: not a folder")
    path = directory / _MANIFEST
    if not os.path.lexists(path):
        raise GoldenError(f"no manifest.json in {directory}: not a golden set")
    data = _read_regular(directory, _MANIFEST, MAX_MANIFEST_BYTES, "golden set")
    actual = _sha256(data)
    if digest is not None and actual != digest:
        raise GoldenError(
            f"{path}: the set digest is {actual}, but {digest} was pinned: this is not "
            f"the golden set the port is to be verified against"
        )
    manifest = _parse_manifest(data, path)
    input_digests = _check_manifest(manifest, path)
    kept = {}
    for case in manifest["cases"]:
        arrays = _read_case(directory, case)
        if case["op"] == keep_op:
            kept[case["file"]] = arrays
        # Inputs are drawn bit-identically everywhere (the expected values may differ
        # in the last bits between machines): an edited seed or input is caught here.
        for key, want in input_digests[case["file"]].items():
            if manifest["dtype"] == "bfloat16" and not_bfloat16(arrays[key]).any():
                raise GoldenError(
                    f"case {case['name']!r} ({case['op']}): {case['file']}: input {key} holds "
                    f"values that are not bfloat16 numbers (a bfloat16 set stores float32 "
                    f"arrays of bfloat16 numbers only)"
                )
            if _array_digest(arrays[key]) != want:
                raise GoldenError(
                    f"case {case['name']!r} ({case['op']}): {case['file']}: input {key} is not "
                    f"what this package draws for seed {manifest['seed']} (seed or inputs edited)"
                )
        _check_answers(manifest, case, arrays)
    return (manifest, actual) if keep_op is None else (manifest, actual, kept)


def set_digest(directory) -> str:
    """The digest of a golden set: the SHA-256 of its ``manifest.json`` bytes.

    The manifest holds every case file's SHA-256, and the verifier checks every file
    against it, so this one value pins every byte of the set. The set is verified
    as a whole first (:class:`GoldenError` if unusable).

    Parameters
    ----------
    directory : str or os.PathLike
        The golden set's folder.

    Returns
    -------
    str
        64 lowercase hex digits.

    Raises
    ------
    GoldenError
        The set is unusable (:func:`load_manifest`).
    TypeError, ValueError
        ``directory`` is not a path (str or os.PathLike), is empty or holds a NUL.
    """
    return _load_set(directory)[1]


def load_manifest(directory, *, digest=None) -> dict:
    """Verify a golden set as a whole and return its manifest.

    Checks, before anything else uses the set: ``manifest.json`` is a regular file of
    at most :data:`MAX_MANIFEST_BYTES` bytes whose SHA-256 (the set digest) equals
    ``digest`` when given; it is valid JSON of this :data:`FORMAT_VERSION` and equal to
    :func:`derive_manifest` for its recorded suite, dtype, seed and operations (cases,
    specs, shapes, dtypes, tolerances, input shapes; only the exporting machine's
    versions and the file hashes may differ); every case file is a plain name inside
    the folder, a regular file (no link) whose SHA-256 matches the manifest, a zip whose
    members are exactly the manifest's arrays, each ``.npy`` header declaring the
    manifest's shape and dtype and the exact byte size, with finite data.

    Parameters
    ----------
    directory : path
    digest : str, optional
        The expected set digest (64 hex digits), see :func:`set_digest`.

    Raises
    ------
    GoldenError
        Naming the first problem and where it is. Never passes silently.
    """
    return _load_set(directory, digest)[0]


def load_case(directory, case: dict) -> dict:
    """Arrays of one case of a verified manifest (file hash, members and headers checked again).

    Parameters
    ----------
    directory : str or os.PathLike
        The golden set's folder.
    case : dict
        One entry of the manifest's ``cases`` (:func:`load_manifest`): its ``file``,
        ``sha256`` and ``arrays`` are read (``name`` and ``op`` for messages).

    Returns
    -------
    dict of str -> ndarray
        Every member of the case file, keyed by array name, of the manifest's shape
        and dtype.

    Raises
    ------
    GoldenError
        The file is missing, not a regular file, too large, of another SHA-256, or its
        members or their headers differ from the manifest, or hold non-finite values.
    TypeError, ValueError
        ``directory`` is not a path (str or os.PathLike), is empty or holds a NUL.
    """
    return _read_case(_folder_arg(directory), case)


@dataclass
class VerifyReport:
    """Result of :func:`verify_golden`: one row per compared array, plus exclusions.

    ``passed`` is True only when at least one array was compared and every compared
    array passed. ``digest`` is the set digest (:func:`set_digest`); ``overrides`` the
    tolerance overrides and ``loosened`` whether they allowed more error than stored
    for any array; ``port`` says how the port was run (Python callables, or the exec
    command with its timeout and mode). A failing array's ``diagnosis`` lists the
    known defects that explain it (``docs/defects.md``).
    """

    op: str
    results: list = field(default_factory=list)
    excluded: list = field(default_factory=list)  # (case, reason)
    directory: str = ""
    digest: str = ""
    suite: str = ""
    dtype: str = ""
    seed: int | None = None
    format_version: int = FORMAT_VERSION
    overrides: dict = field(default_factory=dict)
    loosened: bool = False
    cases_run: int = 0
    port: str = ""

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results) and bool(self.results)

    @property
    def failures(self):
        return [r for r in self.results if not r.passed]

    def _tolerance_line(self) -> str:
        given = {k: v for k, v in self.overrides.items() if v is not None and not (k == "rtol_scale" and v == 1.0)}
        if not given:
            return "tolerances: as stored in the set"
        text = ", ".join(f"{k} {v:g}" for k, v in given.items())
        state = "LOOSENED" if self.loosened else "tightened (no array loosened)"
        return f"tolerances: {state} by override: {text} (loosening limit {MAX_RTOL_SCALE:g}x the stored rtol)"

    def table(self) -> str:
        lines = [
            f"golden verify: op {self.op}: {'PASSED' if self.passed else 'FAILED'} "
            f"({len(self.results) - len(self.failures)}/{len(self.results)} arrays pass, "
            f"{self.cases_run} cases run, {len(self.excluded)} cases excluded)"
        ]
        if self.digest:
            lines.append(
                f"  golden set {self.directory}: format {self.format_version}, suite {self.suite}, "
                f"dtype {self.dtype}, seed {self.seed}"
            )
            lines.append(f"  set digest (SHA-256 of manifest.json): {self.digest}")
        lines.append("  " + self._tolerance_line())
        if self.port:
            lines.append(f"  port: {self.port}")
        lines.append(f"  {'case':<28} {'array':<20} {'status':<6} {'error/allowed':>14}")
        for r in self.results:
            ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.3g}"
            lines.append(f"  {r.case:<28} {r.array:<20} {'ok' if r.passed else 'FAIL':<6} {ratio:>14}")
        for case, reason in self.excluded:
            lines.append(f"  {case:<28} {'(excluded)':<20} {'skip':<6} {reason}")
        for r in self.failures:
            lines.append("  FAIL " + r.describe().replace("\n", "\n       "))
        return "\n".join(lines)

    __str__ = table

    def to_dict(self) -> dict:
        def safe(value):  # strict JSON: no NaN or Infinity literals
            if isinstance(value, float) and not math.isfinite(value):
                return str(value)
            if isinstance(value, (list, tuple)):
                return [safe(v) for v in value]
            return value

        return {
            "op": self.op,
            "passed": self.passed,
            "golden_set": {
                "directory": self.directory,
                "digest_sha256": self.digest,
                "format_version": self.format_version,
                "suite": self.suite,
                "dtype": self.dtype,
                "seed": self.seed,
            },
            "port": self.port,
            "tolerance_overrides": dict(self.overrides),
            "loosened": self.loosened,
            "cases_run": self.cases_run,
            "results": [{k: safe(v) for k, v in r.__dict__.items()} for r in self.results],
            "excluded": [{"case": c, "reason": r} for c, r in self.excluded],
        }


def _check_port(fn, name):
    if fn is not None and not callable(fn):
        raise TypeError(f"{name} must be callable or None, got {type(fn).__name__} {fn!r}")


def _check_exclusions(exclude) -> dict:
    if exclude is None:
        return {}
    if not isinstance(exclude, dict):
        raise TypeError(f"exclude must be a dict {{pattern: reason}}, got {type(exclude).__name__}")
    for pattern, reason in exclude.items():
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"exclude pattern {pattern!r} must be a non-empty string")
        if not isinstance(reason, str) or not reason.strip():
            raise ValueError(f"exclude pattern {pattern!r} needs a reason (a non-empty string)")
    return dict(exclude)


def _check_exec_args(op, forward, backward, command, forward_only, timeout):
    """Validate the port arguments of :func:`verify_golden`; return ``(port description, timeout)``."""
    forward_only = as_flag(forward_only, "forward_only")
    if command is None:
        if forward_only or timeout is not None:
            raise ValueError(
                "forward_only and timeout apply to an exec command; for a forward-only check of "
                "Python callables give only forward"
            )
        if forward is None and backward is None:
            raise ValueError("give at least one of forward and backward (or an exec command)")
        return "python callables: " + " and ".join(
            n for n, f in (("forward", forward), ("backward", backward)) if f is not None
        ), None
    from .exec_port import CASE_FIELDS, DEFAULT_TIMEOUT, check_command, check_timeout

    if forward is not None or backward is not None:
        raise ValueError("an exec command and forward/backward callables are mutually exclusive: give one port")
    check_command(command)
    if op not in CASE_FIELDS:
        raise ValueError(f"the exec protocol supports operations {sorted(CASE_FIELDS)}, not {op!r}")
    timeout = DEFAULT_TIMEOUT if timeout is None else timeout
    timeout = check_timeout(timeout)
    shown = command if isinstance(command, str) else " ".join(command)
    mode = "forward outputs only" if forward_only else "all outputs"
    return f"exec {shown!r} (one run per case, {mode}, timeout {float(timeout):g} s)", float(timeout)


def verify_golden(
    directory,
    op,
    forward=None,
    backward=None,
    *,
    exclude=None,
    rtol_scale=1.0,
    rtol=None,
    atol=None,
    digest=None,
    command=None,
    forward_only=False,
    timeout=None,
) -> VerifyReport:
    """Run a port on every golden case of ``op`` and compare.

    Parameters
    ----------
    directory : path
        A golden set written by :func:`export_golden`. It is verified as a whole
        first (:func:`load_manifest`), and every case of ``op`` is loaded, before the
        port runs.
    op : str
        Operation name, e.g. ``"neocell"``.
    forward, backward : callable, optional
        The port's functions in the operation's calling convention (manifest
        ``conventions``). At least one is required, unless ``command`` is given.
    exclude : dict, optional
        ``{fnmatch pattern: reason}``: cases whose name matches are not run and are
        listed in the report with the reason. A pattern that matches no case of
        ``op``, or excluding every case, is an error.
    rtol_scale : float
        Multiplies every stored ``rtol``; at most :data:`MAX_RTOL_SCALE`.
    rtol, atol : float, optional
        Replace the stored tolerances outright, within the same loosening limit.
    digest : str, optional
        Pin the set: its digest (:func:`set_digest`) must be this SHA-256.
    command : str or sequence of str, optional
        A port that is a program, run once per case through the exec protocol
        (``docs/porting.md``, "The exec protocol"; :mod:`neocell_ref.verify.exec_port`),
        instead of ``forward``/``backward`` (mutually exclusive). A run that fails
        fails its case with the port's stderr tail in the report; the run goes on.
    forward_only : bool
        With ``command``: expect only the forward outputs.
    timeout : float, optional
        With ``command``: seconds per run before the port's process group is killed
        (default :data:`neocell_ref.verify.exec_port.DEFAULT_TIMEOUT`).

    Returns
    -------
    VerifyReport
        Failing arrays carry a diagnosis (``docs/defects.md``).

    Raises
    ------
    GoldenError
        The set is unusable or not the pinned one.
    TypeError, ValueError
        A bad argument, or an exec command that cannot be run
        (:class:`~neocell_ref.verify.exec_port.ExecCommandError`). Nothing of the port has run then.
    """
    from fnmatch import fnmatch

    if not isinstance(op, str) or op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; known: {sorted(OPERATIONS)}")
    _check_port(forward, "forward")
    _check_port(backward, "backward")
    port, timeout = _check_exec_args(op, forward, backward, command, forward_only, timeout)
    rtol, atol, rtol_scale = check_tolerance_overrides(rtol, atol, rtol_scale)
    exclude = _check_exclusions(exclude)
    manifest, actual_digest, arrays_of = _load_set(directory, digest, keep_op=op)
    cases = [case for case in manifest["cases"] if case["op"] == op]
    if not cases:
        raise GoldenError(
            f"the golden set in {directory} has no cases of operation {op!r} (it holds {manifest['operations']})"
        )
    unmatched = [p for p in exclude if not any(fnmatch(case["name"], p) for case in cases)]
    if unmatched:
        raise ValueError(f"exclude pattern {unmatched[0]!r} matches no case of operation {op!r}")
    report = VerifyReport(
        op=op,
        directory=str(directory),
        digest=actual_digest,
        suite=manifest["suite"],
        dtype=manifest["dtype"],
        seed=manifest["seed"],
        overrides={"rtol": rtol, "atol": atol, "rtol_scale": rtol_scale},
        port=port,
    )
    selected = []
    for case in cases:
        reasons = [reason for pattern, reason in exclude.items() if fnmatch(case["name"], pattern)]
        if reasons:
            report.excluded.append((case["name"], reasons[0]))
        else:
            selected.append(case)
    if not selected:
        raise ValueError(f"every case of operation {op!r} is excluded: nothing would be checked")
    loaded = [(case, arrays_of[case["file"]]) for case in selected]
    for case, arrays in loaded:  # every override checked before the port runs at all
        _check_loosening(case["name"], case, arrays, rtol, atol, rtol_scale)
    report.loosened = _loosens([t for case in selected for t in case["tolerances"].values()], rtol, atol, rtol_scale)
    for case, arrays in loaded:
        if command is not None:
            results = run_exec_and_compare(
                command,
                op,
                case["name"],
                case,
                arrays,
                forward_only=forward_only,
                timeout=timeout,
                rtol=rtol,
                atol=atol,
                rtol_scale=rtol_scale,
            )
        else:
            results = run_and_compare(
                op, case["name"], case, arrays, forward, backward, rtol=rtol, atol=atol, rtol_scale=rtol_scale
            )
        report.results.extend(results)
        report.cases_run += 1
    return report


# --------------------------------------------------------------------------------------
# ports named by "package.module:function" (the command line's --forward/--backward)
# --------------------------------------------------------------------------------------
def load_callable(target: str):
    """Import ``"package.module:function"`` (the current directory is importable).

    Parameters
    ----------
    target : str
        ``"package.module:function"``; the part after the colon may be a dotted path
        of attributes (``"module:Class.method"``). The current directory is put first
        on ``sys.path`` when it is not on it.

    Returns
    -------
    callable

    Raises
    ------
    ValueError
        ``target`` is not a string with exactly one colon.
    ImportError
        The module cannot be imported (whatever the module raises while importing
        propagates too).
    AttributeError
        The module has no such attribute.
    TypeError
        The object found is not callable.
    """
    import importlib
    import sys

    if not isinstance(target, str) or target.count(":") != 1:
        raise ValueError(f"expected 'package.module:function', got {target!r}")
    module_name, attr = target.split(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    module = importlib.import_module(module_name)
    obj = module
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{target} is not callable")
    return obj


def load_port(target, option):
    """:func:`load_callable`, any failure (import error, SystemExit at import, not
    callable) turned into a one-line ValueError naming ``option`` and the target;
    ``None`` for no target.

    Parameters
    ----------
    target : str or None
        ``"package.module:function"`` (:func:`load_callable`), or None.
    option : str
        How the message names the argument (the command line's ``"--forward"``).

    Returns
    -------
    callable or None

    Raises
    ------
    ValueError
        The port cannot be loaded (only ``KeyboardInterrupt`` propagates unchanged).
    """
    if target is None:
        return None
    try:
        return load_callable(target)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the port's module may raise anything while importing
        raise ValueError(f"{option} {target!r}: the port cannot be loaded: {_exception_text(exc)}") from None
