"""The ``neocell-ref`` console script.

Each subcommand lives in the module that owns its subject; that module exposes
``register_cli(subparsers)``, which adds a sub-parser whose ``func`` default
handles the parsed arguments and returns an exit status. This file only lists
those modules, so adding a command never means editing another command's code.
Run without a subcommand, ``neocell-ref`` runs ``demo``.

Exit status, for every command: what the command returns (0 success, 1 a check
failed, e.g. a port failed its golden cases); 2 when the input is unusable. A command
signals unusable input by raising ``ValueError`` or ``TypeError`` (``GoldenError`` is a
``ValueError``) from its argument validation or while reading its input, or
``OSError`` for a path it cannot read or write; :func:`main` then prints one line
``neocell-ref: error: ...`` on stderr and returns 2, never a traceback. argparse
itself exits with 2 on a malformed command line, and ``KeyboardInterrupt`` aborts
with 2 as well.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order ``--help`` lists them.
COMMAND_MODULES = [
    "neocell_ref.demo",
    "neocell_ref.verify.golden",
    "neocell_ref.calculator",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neocell-ref",
        description="Reference implementation and verifier for NeoCell and NeoNeXt. Without a subcommand, runs 'demo'.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(subparsers)
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
        # Output piped into e.g. `head` that closed early: not an error of ours.
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print("neocell-ref: interrupted", file=sys.stderr)
        return 2
    except (ValueError, TypeError, OSError) as exc:
        # Unusable input (bad argument, unusable golden set or port, unwritable path).
        print(f"neocell-ref: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
