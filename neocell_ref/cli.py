"""The ``neocell-ref`` console script: every command's argument parsing, in one place.

The subcommands and the library calls they make:

* ``demo`` -- :func:`neocell_ref.demo.run_demo`;
* ``golden export`` / ``golden verify`` -- :func:`neocell_ref.verify.golden.export_golden`
  and :func:`~neocell_ref.verify.golden.verify_golden` (the report's table is the
  golden module's);
* ``complexity`` / ``model-complexity`` -- :func:`neocell_ref.calculator.complexity`
  and :func:`~neocell_ref.calculator.model_complexity` (their text and JSON are the
  calculator's).

This module holds only the parsers and the glue from parsed arguments to those calls;
what a command computes and prints lives in the module that owns its subject. Run
without a subcommand, ``neocell-ref`` runs ``demo``.

Exit status, for every command: what the command returns (0 success, 1 a check
failed, e.g. a port failed its golden cases); 2 when the input is unusable. A command
signals unusable input by raising ``ValueError`` or ``TypeError`` (``GoldenError`` is a
``ValueError``) from its argument validation or while reading its input, or
``OSError`` for a path it cannot read or write; :func:`main` then prints one line
``neocell-ref: error: ...`` on stderr and returns 2, never a traceback. argparse
itself exits with 2 on a malformed command line, and ``KeyboardInterrupt`` aborts
with 2 as well. When standard output is closed before everything was written (piped
into ``head``, say), the status is 141 (``128 + SIGPIPE``, what a shell reports for a
tool that signal ended): the output is incomplete and claims nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import sys
from pathlib import Path

from . import calculator, demo, validation
from .architecture import get_config
from .verify import exec_port, golden, precision, tolerances

#: Exit status when standard output closed before the output was complete (128 + SIGPIPE).
BROKEN_PIPE_STATUS = 141


# --------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------
def _add_demo(subparsers) -> None:
    """The ``demo`` subcommand."""
    p = subparsers.add_parser("demo", help="build a shifted '4+7' NeoCell, compare formulations, gradient-check")
    p.add_argument("--channels", type=int, default=24)
    p.add_argument("--code", default="4+7")
    p.add_argument("--shift", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=lambda a: 0 if demo.run_demo(a.channels, code=a.code, shift=a.shift, seed=a.seed) else 1)


# --------------------------------------------------------------------------------------
# golden export | verify
# --------------------------------------------------------------------------------------
def _parse_exclusions(items):
    exclude = {}
    for item in items or []:
        pattern, sep, reason = item.partition("=")
        if not sep or not pattern or not reason.strip():
            raise ValueError(f"--exclude takes PATTERN=REASON (a reason is required), got {item!r}")
        exclude[pattern] = reason.strip()
    return exclude


def _check_output_file(name, option):
    """Refuse, before anything runs, an output file that cannot be written whole; return
    the path to write (symbolic links followed, so a link to a report is written through).

    The file is replaced by renaming a temporary file over it
    (:func:`neocell_ref.validation.atomic_file`), so it must be a regular file or not
    exist yet: a device, FIFO or socket (``/dev/full``, ``/dev/stdout``) would be
    replaced, not written to. The folder is probed by creating and removing a file in
    it: permission bits say nothing to root or on a read-only or virtual file system.
    """
    if name == "":
        raise ValueError(f"{option} is empty: give a file path")
    if name.endswith(("/", os.sep)) or os.path.basename(name) in (".", ".."):
        raise ValueError(f"{option} {name}: names a folder; give a file path")
    path = Path(os.path.realpath(name))
    if path.is_dir():
        raise ValueError(f"{option} {name}: is a folder, not a file")
    if path.exists() and not path.is_file():
        raise ValueError(
            f"{option} {name}: is not a regular file (a device, FIFO or socket); the report replaces "
            "the file whole, so give a file path"
        )
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{option} {name}: the file is not writable")
    if not path.parent.is_dir():
        raise ValueError(f"{option} {name}: the folder {path.parent} does not exist")
    probe = path.parent / f".{path.name}.probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except OSError as exc:
        raise ValueError(f"{option} {name}: cannot create a file in {path.parent} ({exc.strerror})") from None
    return path


def _golden_export(args) -> int:
    manifest = golden.export_golden(args.directory, suite=args.suite, dtype=args.dtype, seed=args.seed)
    digest = golden.manifest_digest(manifest)
    print(
        f"wrote {len(manifest['cases'])} cases ({args.suite}, {args.dtype}, seed {args.seed}) and "
        f"manifest.json to {args.directory}\nset digest (SHA-256 of manifest.json): {digest}"
    )
    return 0


def _golden_verify(args) -> int:
    report_path = None
    if args.json is not None:
        report_path = _check_output_file(args.json, "--json")
        if report_path.is_relative_to(Path(args.directory).resolve()):
            raise ValueError(
                f"--json {args.json}: is inside the golden set {args.directory}; write the report elsewhere"
            )
        # A report left by an earlier run must not outlive this one: removed before any
        # other check can fail or anything can end the process (a port's import
        # included), so only a run that reaches its verdict leaves a report.
        report_path.unlink(missing_ok=True)
    exclude = _parse_exclusions(args.exclude)
    golden.check_tolerance_overrides(None, None, args.rtol_scale)
    golden.check_digest(args.digest)
    if args.exec is not None:
        if args.forward is not None or args.backward is not None:
            raise ValueError("--exec is mutually exclusive with --forward/--backward: give one port")
        exec_port.check_command(args.exec)  # an unusable command is refused before the set is read
        forward = backward = None
    else:
        if args.forward_only or args.timeout is not None:
            raise ValueError(
                "--forward-only and --timeout apply to --exec; for a forward-only check of a "
                "Python port give only --forward"
            )
        forward = golden.load_port(args.forward, "--forward")
        backward = golden.load_port(args.backward, "--backward")
        if forward is None and backward is None:
            raise ValueError("give --forward and/or --backward, or --exec")
    report = golden.verify_golden(
        args.directory,
        args.op,
        forward,
        backward,
        exclude=exclude,
        rtol_scale=args.rtol_scale,
        digest=args.digest,
        command=args.exec,
        forward_only=args.forward_only,
        timeout=args.timeout,
    )
    print(report.table())
    if report_path is not None:
        text = json.dumps(report.to_dict(), indent=1, allow_nan=False) + "\n"
        try:  # whole or not at all: a CI that requires the report never reads a truncated one
            with validation.atomic_file(str(report_path)) as file:
                file.write(text.encode())
        except OSError as exc:
            raise OSError(f"--json {args.json}: the report could not be written ({exc}); no report was left") from None
    return 0 if report.passed else 1


def _add_golden(subparsers) -> None:
    """The ``golden export`` and ``golden verify`` subcommands."""
    parser = subparsers.add_parser(
        "golden",
        help="export golden vectors or verify a port against them",
        description="Exit status: 0 only when every non-excluded case ran and passed (verify) or the set "
        "was written (export); 1 when a port failed; 2 when the set, an argument or the "
        "port is unusable (one line on stderr).",
    )
    sub = parser.add_subparsers(dest="golden_command", metavar="ACTION", required=True)
    ex = sub.add_parser("export", help="write a deterministic golden set")
    ex.add_argument("directory")
    ex.add_argument("--suite", choices=["core", "full"], default="core")
    ex.add_argument(
        "--dtype",
        choices=list(precision.FLOAT_DTYPES),
        default="float64",
        help="float16 and bfloat16 sets carry mixed-precision tolerances (docs/porting.md); "
        "bfloat16 inputs are stored as float32 arrays of bfloat16 numbers",
    )
    ex.add_argument("--seed", type=int, default=tolerances.DEFAULT_SEED, help="in [0, 2**63 - 1]")
    ex.set_defaults(func=_golden_export)
    ve = sub.add_parser(
        "verify",
        help="run a port on every golden case of an operation",
        description="Failing arrays are diagnosed against known porting defects (docs/defects.md).",
    )
    ve.add_argument("directory")
    ve.add_argument("--op", required=True, choices=sorted(golden.OPERATIONS))
    ve.add_argument("--forward", help="package.module:function")
    ve.add_argument("--backward", help="package.module:function")
    ve.add_argument(
        "--exec",
        metavar="COMMAND",
        help='a port that is a program: "COMMAND {in} {out}", run once per case through the exec '
        "protocol (docs/porting.md); not with --forward/--backward",
    )
    ve.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=f"with --exec: seconds per case before the port's process group is killed (default {exec_port.DEFAULT_TIMEOUT:g})",
    )
    ve.add_argument("--forward-only", action="store_true", help="with --exec: expect only the forward outputs")
    ve.add_argument(
        "--exclude",
        action="append",
        metavar="PATTERN=REASON",
        help="skip cases matching an fnmatch pattern, with a stated reason (repeatable)",
    )
    ve.add_argument(
        "--rtol-scale",
        type=float,
        default=1.0,
        help=f"multiply every stored rtol (finite, > 0, at most {golden.MAX_RTOL_SCALE:g})",
    )
    ve.add_argument(
        "--digest", metavar="SHA256", help="refuse the set unless its digest (SHA-256 of manifest.json) is this"
    )
    ve.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    ve.set_defaults(func=_golden_verify)


# --------------------------------------------------------------------------------------
# complexity, model-complexity
# --------------------------------------------------------------------------------------
_POWER_DIGITS = re.compile(r"([0-9]+)\*\*([0-9]+)")


def _cli_int(minimum: int):
    """An argparse ``type``: an integer ``>= minimum`` written in digits or as a power ``10**12``.

    Anything else (a sign below the minimum, a fraction, ``1e12``, a power beyond
    :data:`neocell_ref.calculator.MAX_COUNT`) is an ``ArgumentTypeError``, which argparse reports in one line
    and exits with status 2. The size of a power is bounded before it is computed.
    """

    def parse(text: str) -> int:
        text = text.strip()
        power = _POWER_DIGITS.fullmatch(text)
        if text.isascii() and (text.isdigit() or (text[:1] == "-" and text[1:].isdigit())):
            if len(text) > 400:
                raise argparse.ArgumentTypeError(f"{text[:20]}... has {len(text)} digits, beyond the float range")
            value = int(text)
        elif power:
            if len(text) > 400:
                raise argparse.ArgumentTypeError(
                    f"{text[:20]}... is {len(text)} characters long, too long to be a size"
                )
            base, exponent = int(power[1]), int(power[2])
            # log2 bounds the power before it is computed (10**300 fits, 10**400 does not);
            # the margin leaves the exact comparison below to decide near the limit.
            limit = calculator.MAX_COUNT.bit_length() + 8
            if base > 1 and (exponent > limit or exponent * math.log2(base) > limit):  # 2**e > 2**limit
                raise argparse.ArgumentTypeError(f"{text} is beyond the float range (about 1.8e308)")
            value = base**exponent
        else:
            raise argparse.ArgumentTypeError(f"expected an integer (digits, or a power such as 10**12), got {text!r}")
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {text}")
        if value > calculator.MAX_COUNT:
            raise argparse.ArgumentTypeError(f"{text} is beyond the float range (about 1.8e308)")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def _complexity(args) -> int:
    # A ValueError/TypeError here is unusable input: cli.main prints it as one line on
    # stderr and exits 2. The text is built in full before anything is printed.
    result = calculator.complexity(
        k=args.kernel,
        c=args.channels,
        h=args.hw[0],
        w=args.hw[1],
        batch=args.batch,
        shift=args.shift,
        code=args.code,
        dw_kernel=args.dw_kernel,
        dtype=args.dtype,
    )
    print(result.to_json(indent=2) if args.json else str(result))
    return 0


def _model_complexity(args) -> int:
    # Unusable input raises ValueError/TypeError: cli.main turns it into exit 2 with one
    # line on stderr. The text is built in full before anything is printed.
    resolution = args.resolution[0] if len(args.resolution) == 1 else tuple(args.resolution)
    options = calculator.released_checkpoint_options(resolution) if args.released else {}
    for key in ("num_classes", "kernel_spec", "layer_scale_init_value", "linear_bias"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.shifts is not None:
        options["shifts"] = tuple(args.shifts)
    sizes = {"per_stage_layers": args.depths, "dims": args.dims, "in_chans": args.in_chans}
    sizes = {key: value for key, value in sizes.items() if value is not None}  # lists: NeoNeXtConfig makes tuples
    model = args.model
    if sizes:  # a custom network: the named one with other sizes
        model = dataclasses.replace(get_config(args.model, **options), **sizes)
        options = {}
    result = calculator.model_complexity(model, resolution, **options)
    if args.json:
        text = result.to_json(per_layer=args.per_layer, indent=2)
    else:
        text = str(result) + ("\n\n" + result.table() if args.per_layer else "")
    print(text)
    return 0


def _add_complexity(subparsers) -> None:
    """The ``complexity`` and ``model-complexity`` subcommands."""
    p = subparsers.add_parser(
        "complexity",
        help="analytic cost of a NeoCell layer vs the depthwise convolution it replaces",
        description="Parameters, MACs and memory of a NeoCell layer and of a stride-1 depthwise "
        "convolution on the same input, counted in closed form, in exact integers. Integers may "
        "be written as powers, e.g. -c 10**12. Counting rules: docs/complexity.md.",
    )
    sizes = p.add_mutually_exclusive_group()  # argparse names the options, as typed
    sizes.add_argument("-k", "--kernel", type=_cli_int(1), default=None, help="square kernel size (default 7)")
    sizes.add_argument("--code", default=None, help="kernel code such as 4+7 (instead of -k)")
    p.add_argument("-c", "--channels", type=_cli_int(1), default=None, help="channels (default 96)")
    p.add_argument(
        "--hw", type=_cli_int(1), nargs=2, default=(56, 56), metavar=("H", "W"), help="input size (default 56 56)"
    )
    p.add_argument("--shift", type=_cli_int(0), default=0, help="shift amount of every group (default 0)")
    p.add_argument("--batch", type=_cli_int(1), default=1, help="samples N (default 1)")
    p.add_argument(
        "--dw-kernel",
        type=_cli_int(1),
        default=None,
        help="depthwise kernel compared (default: largest NeoCell kernel)",
    )
    p.add_argument(
        "--dtype", default="float32", help="dtype for memory in bytes: float16/32/64 or bfloat16 (default float32)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.set_defaults(func=_complexity)

    q = subparsers.add_parser(
        "model-complexity",
        help="parameters and MACs of a NeoNeXt in every counting convention",
        description="Parameters and MACs per image of a NeoNeXt (executed, fvcore, "
        "fvcore_without_neocell, fvcore_patchwise), counted in closed form (each stage's identical "
        "blocks once). Integers may be written as powers, e.g. --resolution 10**6. "
        "Counting rules: docs/complexity.md.",
    )
    q.add_argument("model", choices=sorted(calculator.MODEL_CONFIGS))
    q.add_argument(
        "--resolution",
        type=_cli_int(1),
        nargs="+",
        default=[224],
        metavar="PX",
        help="input size: one value or H W (default 224)",
    )
    q.add_argument(
        "--released",
        action="store_true",
        help="options of the released checkpoints (linear_bias, '4+7', layer scale 1e-6; shifts 1,1,1,1 at 384 px)",
    )
    q.add_argument("--num-classes", type=_cli_int(1), default=None)
    q.add_argument("--kernel-spec", default=None, help="'default' or a kernel code such as 4+7")
    q.add_argument("--shifts", type=_cli_int(0), nargs=4, default=None, metavar="S")
    q.add_argument("--layer-scale-init-value", type=float, default=None)
    q.add_argument("--linear-bias", action=argparse.BooleanOptionalAction, default=None)
    q.add_argument(
        "--depths", type=_cli_int(1), nargs=4, default=None, metavar="D", help="blocks per stage (a custom network)"
    )
    q.add_argument("--dims", type=_cli_int(1), nargs=4, default=None, metavar="W", help="widths per stage (custom)")
    q.add_argument("--in-chans", type=_cli_int(1), default=None, help="input channels (default 3; custom)")
    q.add_argument("--per-layer", action="store_true", help="also print the per-layer table")
    q.add_argument("--json", action="store_true", help="print JSON")
    q.set_defaults(func=_model_complexity)


# --------------------------------------------------------------------------------------
# the console script
# --------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neocell-ref",
        description="Reference implementation and verifier for NeoCell and NeoNeXt. Without a subcommand, runs 'demo'.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    # in the order ``--help`` lists them
    _add_demo(subparsers)
    _add_golden(subparsers)
    _add_complexity(subparsers)
    return parser


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (whitespace runs collapsed)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo", *([] if argv is None else argv)])
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:
        # Output piped into e.g. `head` that closed early: the output is incomplete, which
        # is neither a success nor a failed check (1). 141 = 128 + SIGPIPE, the status a
        # shell reports for a tool that SIGPIPE ended. Later writes go to /dev/null, so
        # the interpreter's own flush at exit does not fail again.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return BROKEN_PIPE_STATUS
    except KeyboardInterrupt:
        print("neocell-ref: interrupted", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        # Unusable input (bad argument, unusable golden set or port, unwritable path).
        print(f"neocell-ref: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - the exit status contract: 2 and one line, never a traceback
        # Nothing above should reach here; if something does (a defect of neocell-ref,
        # or a port's import that changed the interpreter's state), there is no verdict:
        # status 2, not 1 ("the port failed"), with the exception named.
        print(
            f"neocell-ref: internal error: {type(exc).__name__}: {_one_line(exc)} (no verdict; please report it)",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
