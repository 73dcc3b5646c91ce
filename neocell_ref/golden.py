"""Golden vectors: deterministic reference cases that ports are tested against.

A golden set is a folder with one ``.npz`` per case (arrays only, loadable with
``allow_pickle=False``) and one ``manifest.json`` that records the format version,
the package and NumPy versions, the seed, and per case: the operation, its spec and
options, the array names with shapes and dtypes, the tolerance of every expected
array, and the SHA-256 of its file. Exporting twice gives byte-identical files.

Operations are registered in :data:`OPERATIONS`; each knows its curated cases, how
to compute them with the reference, and how to call a port with them. See
``docs/porting.md`` for the calling conventions and the tolerance policy.

Tolerance policy (NeoCell)
--------------------------
Every expected value is a sum of products. Running the same computation on the
absolute values of all inputs gives, per element, ``bound = Σ |terms|``; the
classic floating-point bound for a sum of ``n`` products evaluated in any order is
``|fl(s) - s| <= γ_n · bound`` with ``γ_n ≈ n·u`` (``u`` the unit roundoff of the
port's dtype). A port passes an element when::

    |got - expected| <= safety · (n + 1) · u · bound + atol

where ``n`` is the array's accumulation length (stored per array in the manifest),
``+1`` accounts for rounding the result to the port's dtype, and ``safety = 2``
covers the reference's own error. Expected values are computed in float64 from the
inputs as stored, so a float32 golden set holds float32 inputs and float64 answers.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import __version__
from .golden_ops import OPERATIONS, SAFETY, neocell_expected, unit_roundoff  # noqa: F401 (re-exported)

__all__ = [
    "FORMAT_VERSION",
    "GoldenError",
    "OPERATIONS",
    "export_golden",
    "load_manifest",
    "load_case",
    "verify_golden",
    "compare_arrays",
    "ArrayComparison",
    "VerifyReport",
    "write_npz",
    "unit_roundoff",
    "neocell_expected",
    "run_and_compare",
]

FORMAT_VERSION = 1
DEFAULT_SEED = 20240318


class GoldenError(Exception):
    """A golden set is unusable: missing file, wrong hash, malformed manifest."""


# --------------------------------------------------------------------------------------
# deterministic .npz
# --------------------------------------------------------------------------------------
def write_npz(path, arrays: dict) -> bytes:
    """Write ``arrays`` as an uncompressed ``.npz`` with fixed timestamps; return its bytes.

    ``numpy.savez`` stamps each member with the current time, so two exports differ;
    this writer fixes the date and the member order (sorted by name) so that equal
    arrays give equal bytes. The file loads with ``np.load(path, allow_pickle=False)``.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, mode="w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arrays[name], order="C"), allow_pickle=False)
            zf.writestr(info, member.getvalue())
    data = buffer.getvalue()
    Path(path).write_bytes(data)
    return data


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------
@dataclass
class ArrayComparison:
    """Outcome of comparing one array of a port with the reference.

    ``index``, ``got``, ``expected`` and ``allowed`` describe the worst element
    (largest ``|got - expected| / allowed``); ``ratio <= 1`` passes.
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

    def describe(self) -> str:
        if self.message:
            return f"{self.case}: {self.array}: {self.message}"
        return (
            f"{self.case}: {self.array}: worst element {self.index}: got {self.got!r}, "
            f"expected {self.expected!r}, |error| {self.error:.3e} vs allowed {self.allowed:.3e} "
            f"({self.ratio:.3g}x the tolerance)"
        )


def compare_arrays(case, array, got, expected, *, rtol, atol=0.0, bound=None) -> ArrayComparison:
    """Compare ``got`` with ``expected`` elementwise.

    Passes where ``|got - expected| <= rtol * scale + atol`` with ``scale = bound``
    when given (the magnitude bound of the tolerance policy) and ``|expected|``
    otherwise. Shape mismatches and non-finite values fail with a message.
    """
    expected = np.asarray(expected, dtype=np.float64)
    try:
        got = np.asarray(got, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        return ArrayComparison(case, array, False, message=f"could not convert the port's output: {exc}")
    if got.shape != expected.shape:
        return ArrayComparison(case, array, False, message=f"shape {got.shape}, expected {expected.shape}")
    scale = np.abs(expected) if bound is None else np.asarray(bound, dtype=np.float64)
    allowed = rtol * scale + atol
    error = np.abs(got - expected)
    bad_nonfinite = ~np.isfinite(got) & np.isfinite(expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(allowed > 0, error / allowed, np.where(error > 0, np.inf, 0.0))
    ratio = np.where(bad_nonfinite, np.inf, ratio)
    if ratio.size == 0:
        return ArrayComparison(case, array, True, ratio=0.0)
    worst = np.unravel_index(int(np.nanargmax(np.where(np.isnan(ratio), np.inf, ratio))), ratio.shape)
    r = float(ratio[worst]) if not np.isnan(ratio[worst]) else float("inf")
    return ArrayComparison(
        case, array, bool(r <= 1.0), tuple(int(i) for i in worst), float(got[worst]),
        float(expected[worst]), float(error[worst]), float(allowed[worst]), r,
    )


# --------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------
def export_golden(directory, suite="core", dtype="float64", seed=DEFAULT_SEED, operations=None):
    """Write a golden set to ``directory``; return the manifest dict.

    Parameters
    ----------
    directory : path
        Created if missing. Existing case files of the same names are overwritten.
    suite : {"core", "full"}
    dtype : {"float64", "float32"}
        Dtype of the stored inputs (expected values are float64 either way).
    seed : int
        Each case draws from ``default_rng([seed, case index])``, so cases are
        independent of one another and of the order of operations.
    operations : list of str, optional
        Subset of :data:`OPERATIONS` (default all).
    """
    if suite not in ("core", "full"):
        raise ValueError(f"suite must be 'core' or 'full', got {suite!r}")
    if dtype not in ("float64", "float32"):
        raise ValueError(f"dtype must be 'float64' or 'float32', got {dtype!r}")
    ops = list(OPERATIONS) if operations is None else list(operations)
    for op in ops:
        if op not in OPERATIONS:
            raise ValueError(f"unknown operation {op!r}; known: {sorted(OPERATIONS)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION,
        "generator": f"neocell_ref {__version__}",
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "suite": suite,
        "dtype": dtype,
        "seed": seed,
        "tolerance_policy": {
            "rule": "|got - expected| <= rtol * bound + atol, elementwise",
            "rtol": "safety * (accumulation_length + 1) * unit_roundoff(dtype)",
            "safety": SAFETY,
            "unit_roundoff": unit_roundoff(dtype),
            "bound": "the same computation on absolute values of all inputs (array 'bound/NAME')",
        },
        "conventions": {op: OPERATIONS[op].convention for op in ops},
        "cases": [],
    }
    for op_name in ops:
        op = OPERATIONS[op_name]
        for index, (name, spec, shape) in enumerate(op.cases(suite)):
            rng = np.random.default_rng([seed, index, sum(op_name.encode())])
            meta, arrays, inputs, tolerances = op.make(name, spec, shape, np.dtype(dtype), rng)
            file_name = f"{op_name}__{name}.npz"
            data = write_npz(directory / file_name, arrays)
            manifest["cases"].append({
                "name": name,
                "op": op_name,
                "file": file_name,
                "sha256": _sha256(data),
                **meta,
                "inputs": inputs,
                "arrays": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in sorted(arrays.items())},
                "tolerances": tolerances,
            })
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (directory / "manifest.json").write_text(text)
    return manifest


# --------------------------------------------------------------------------------------
# loading and verifying
# --------------------------------------------------------------------------------------
def load_manifest(directory) -> dict:
    """Read and check ``manifest.json``: format version, every file present with its hash.

    Raises
    ------
    GoldenError
        On a missing or malformed manifest, an unknown format version, a missing
        case file or a SHA-256 mismatch. Never passes silently.
    """
    directory = Path(directory)
    path = directory / "manifest.json"
    if not path.is_file():
        raise GoldenError(f"no manifest.json in {directory}")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise GoldenError(f"{path} is not valid JSON: {exc}") from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise GoldenError(
            f"{path}: format_version {manifest.get('format_version')!r}, this package reads {FORMAT_VERSION}"
        )
    for case in manifest.get("cases", []):
        file = directory / case["file"]
        if not file.is_file():
            raise GoldenError(f"case {case['name']!r}: file {case['file']} is missing")
        digest = _sha256(file.read_bytes())
        if digest != case["sha256"]:
            raise GoldenError(
                f"case {case['name']!r}: {case['file']} has SHA-256 {digest}, manifest says {case['sha256']}"
            )
    return manifest


def load_case(directory, case: dict) -> dict:
    """Arrays of one case (``allow_pickle=False``)."""
    with np.load(Path(directory) / case["file"], allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@dataclass
class VerifyReport:
    """Result of :func:`verify_golden`: one row per compared array, plus exclusions."""

    op: str
    results: list = field(default_factory=list)
    excluded: list = field(default_factory=list)  # (case, reason)

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results) and bool(self.results)

    @property
    def failures(self):
        return [r for r in self.results if not r.passed]

    def table(self) -> str:
        lines = [f"golden verify: op {self.op}: {'PASSED' if self.passed else 'FAILED'} "
                 f"({len(self.results) - len(self.failures)}/{len(self.results)} arrays pass, "
                 f"{len(self.excluded)} cases excluded)"]
        lines.append(f"  {'case':<28} {'array':<20} {'status':<6} {'error/allowed':>14}")
        for r in self.results:
            ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.3g}"
            lines.append(f"  {r.case:<28} {r.array:<20} {'ok' if r.passed else 'FAIL':<6} {ratio:>14}")
        for case, reason in self.excluded:
            lines.append(f"  {case:<28} {'(excluded)':<20} {'skip':<6} {reason}")
        for r in self.failures:
            lines.append("  FAIL " + r.describe())
        return "\n".join(lines)

    __str__ = table

    def to_dict(self) -> dict:
        return {
            "op": self.op,
            "passed": self.passed,
            "results": [r.__dict__ for r in self.results],
            "excluded": [{"case": c, "reason": r} for c, r in self.excluded],
        }


def run_and_compare(op, name, meta, arrays, forward, backward, *, rtol=None, atol=None, rtol_scale=1.0):
    """Run a port on one case and compare every output; return a list of :class:`ArrayComparison`.

    ``meta`` needs what the operation's ``run_port`` reads (for NeoCell
    ``specs_as_written``) and ``tolerances``; ``arrays`` holds inputs, expected
    outputs and bounds. Forward and backward run separately, so that one raising
    does not hide the other; an exception fails the case with its message.
    """
    results, got = [], {}
    for label, fns in (("forward", (forward, None)), ("backward", (None, backward))):
        if fns == (None, None):
            continue
        try:
            got.update(OPERATIONS[op].run_port(arrays, meta, *fns))
        except Exception as exc:
            results.append(ArrayComparison(name, f"({label} call)", False,
                                           message=f"port's {label} raised {type(exc).__name__}: {exc}"))
    for key, value in got.items():
        tol = meta["tolerances"][key]
        results.append(compare_arrays(
            name, key, value, arrays[key],
            rtol=(tol["rtol"] * rtol_scale) if rtol is None else rtol,
            atol=tol["atol"] if atol is None else atol,
            bound=_scale(tol, arrays, key),
        ))
    return results


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


def verify_golden(directory, op, forward=None, backward=None, *, exclude=None, rtol_scale=1.0,
                  rtol=None, atol=None) -> VerifyReport:
    """Run a port on every golden case of ``op`` and compare.

    Parameters
    ----------
    directory : path
        A golden set written by :func:`export_golden`; the manifest and hashes are
        checked first (:class:`GoldenError` on any problem).
    op : str
        Operation name, e.g. ``"neocell"``.
    forward, backward : callable, optional
        The port's functions in the operation's calling convention (manifest
        ``conventions``). At least one is required.
    exclude : dict, optional
        ``{fnmatch pattern: reason}``: cases whose name matches are not run and are
        listed in the report with the reason.
    rtol_scale : float
        Multiplies every stored ``rtol`` (a port documenting a looser accumulation).
    rtol, atol : float, optional
        Override the stored tolerances outright.
    """
    from fnmatch import fnmatch

    if op not in OPERATIONS:
        raise ValueError(f"unknown operation {op!r}; known: {sorted(OPERATIONS)}")
    if forward is None and backward is None:
        raise ValueError("give at least one of forward and backward")
    manifest = load_manifest(directory)
    report = VerifyReport(op=op)
    exclude = exclude or {}
    for case in manifest["cases"]:
        if case["op"] != op:
            continue
        reasons = [reason for pattern, reason in exclude.items() if fnmatch(case["name"], pattern)]
        if reasons:
            report.excluded.append((case["name"], reasons[0]))
            continue
        arrays = load_case(directory, case)
        report.results.extend(run_and_compare(op, case["name"], case, arrays, forward, backward,
                                              rtol=rtol, atol=atol, rtol_scale=rtol_scale))
    if not report.results and not report.excluded:
        raise GoldenError(f"the golden set in {directory} has no cases of operation {op!r}")
    return report


# --------------------------------------------------------------------------------------
# command line: neocell-ref golden export|verify
# --------------------------------------------------------------------------------------
def load_callable(target: str):
    """Import ``"package.module:function"`` (the current directory is importable)."""
    import importlib
    import os
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


def _parse_exclusions(items):
    exclude = {}
    for item in items or []:
        pattern, sep, reason = item.partition("=")
        if not sep or not pattern or not reason.strip():
            raise ValueError(f"--exclude takes PATTERN=REASON (a reason is required), got {item!r}")
        exclude[pattern] = reason.strip()
    return exclude


def _cli_export(args) -> int:
    manifest = export_golden(args.directory, suite=args.suite, dtype=args.dtype, seed=args.seed)
    print(f"wrote {len(manifest['cases'])} cases ({args.suite}, {args.dtype}) and manifest.json to {args.directory}")
    return 0


def _cli_verify(args) -> int:
    try:
        forward = load_callable(args.forward) if args.forward else None
        backward = load_callable(args.backward) if args.backward else None
        report = verify_golden(args.directory, args.op, forward, backward,
                               exclude=_parse_exclusions(args.exclude), rtol_scale=args.rtol_scale)
    except GoldenError as exc:
        print(f"golden verify: ERROR: {exc}")
        return 2
    except (ValueError, TypeError, ImportError, AttributeError) as exc:
        print(f"golden verify: ERROR: bad argument: {exc}")
        return 2
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1, default=str) + "\n")
    return 0 if report.passed else 1


def register_cli(subparsers):
    golden = subparsers.add_parser("golden", help="export golden vectors or verify a port against them")
    sub = golden.add_subparsers(dest="golden_command", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="write a deterministic golden set")
    ex.add_argument("directory")
    ex.add_argument("--suite", choices=["core", "full"], default="core")
    ex.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    ex.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ex.set_defaults(func=_cli_export)
    ve = sub.add_parser("verify", help="run a port's callables on every golden case of an operation")
    ve.add_argument("directory")
    ve.add_argument("--op", required=True, choices=sorted(OPERATIONS))
    ve.add_argument("--forward", help="package.module:function")
    ve.add_argument("--backward", help="package.module:function")
    ve.add_argument("--exclude", action="append", metavar="PATTERN=REASON",
                    help="skip cases matching an fnmatch pattern, with a stated reason (repeatable)")
    ve.add_argument("--rtol-scale", type=float, default=1.0, help="multiply every stored rtol")
    ve.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ve.set_defaults(func=_cli_verify)
