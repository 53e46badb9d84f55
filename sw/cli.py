"""The ``velcro`` command line.

Each feature registers its sub-commands from its own module in
:mod:`velcro.sw.commands` (shared options in :mod:`velcro.sw.commands.options`); this
file builds the parser and turns :class:`~velcro.sw.errors.VelcroError` into a
one-line message with exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import commands
from .errors import VelcroError, printable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="velcro",
        description="Compress a trained CNN for a specialized task (VELCRO, vector "
                    "quantization) and run it on the Alveo U280 accelerator.")
    parser.add_argument("--version", action="version", version=f"velcro {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # Every module of velcro.sw.commands.COMMANDS defines register(subparsers).
    for name in commands.COMMANDS:
        importlib.import_module(f"{commands.__name__}.{name}").register(sub)
    return parser


def version() -> str:
    """The installed version of velcro."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    try:
        return installed("velcro")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _os_error(e: OSError) -> str:
    where = e.filename if e.filename is not None else ""
    cause = e.strerror or str(e) or type(e).__name__
    return f"{where}: {cause}" if where else cause


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0, 2 for an error, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except VelcroError as e:
        print(f"velcro: error: {printable(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        # The environment, not the input: a read-only folder, a full disk, permissions.
        print(f"velcro: error: {printable(_os_error(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("velcro: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
