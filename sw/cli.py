"""The ``velcro`` command line.

Each feature registers its sub-commands from its own module in
:mod:`velcro.sw.commands` (shared options in :mod:`velcro.sw.commands.options`); this
file builds the parser and turns :class:`~velcro.sw.errors.VelcroError` into a
one-line message with exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading

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


@contextlib.contextmanager
def interrupts_deferred():
    """Hold Ctrl-C back until the block ends, then raise :class:`KeyboardInterrupt`.

    A KeyboardInterrupt raised while torch's C++ extension initialises cannot unwind
    through it: the process aborts (``std::terminate``) instead of exiting cleanly.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if pending:
        raise KeyboardInterrupt


def _needs_torch(args) -> bool:
    needs = getattr(args, "needs_torch", True)
    return bool(needs(args) if callable(needs) else needs)


def main(argv=None) -> int:
    """Run the command line; returns the exit code (0, 2 for an error, 130 interrupted)."""
    try:
        with interrupts_deferred():
            parser = build_parser()
        args = parser.parse_args(argv)
        if _needs_torch(args):
            with interrupts_deferred():
                import torch  # noqa: F401
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


def run() -> None:
    """The ``velcro`` console entry point: exit with :func:`main`'s code.

    After Ctrl-C the process leaves at once with 130: every writer has already removed
    its temporary file, and the interpreter's teardown after an interrupted command can
    otherwise end the process by the signal itself (exit status -2 instead of 130).
    """
    code = main()
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    run()
