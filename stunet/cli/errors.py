"""One line per failure for every command: ``prog: error: <what, naming the file and the fix>``, exit status 1 (2 for
wrong arguments), and no Python traceback unless ``--debug`` is on the command line or ``STUNET_DEBUG=1`` is set."""
from __future__ import annotations

import argparse
import contextlib
import functools
import sys

from stunet import settings
from stunet.errors import CaseError, CheckpointError, one_line, printable

__all__ = ["cli_entry", "command_parser", "debugging", "interrupt_ends", "one_line", "printable"]

ENV_DEBUG = settings.DEBUG
EXPECTED = (CheckpointError, CaseError, ValueError, FileNotFoundError, FileExistsError, NotADirectoryError,
            IsADirectoryError, PermissionError, OSError, MemoryError)


def command_parser(prog: str, **kwargs) -> argparse.ArgumentParser:
    """A command's argument parser (``argparse.ArgumentParser`` with ``kwargs``) whose --help lists ``--debug``, the
    option :func:`cli_entry` takes off the command line before the command parses it."""
    parser = argparse.ArgumentParser(prog=prog, **kwargs)
    parser.add_argument("--debug", action="store_true",
                        help=f"a failure prints its Python traceback instead of one line (as {ENV_DEBUG}=1 does)")
    return parser


def debugging(argv: list[str] | None = None) -> bool:
    """``--debug`` among the arguments, or ``STUNET_DEBUG`` set to yes (:func:`stunet.settings.debug`)."""
    return "--debug" in (argv or []) or settings.debug()


@contextlib.contextmanager
def _one_line_usage(prog: str):
    """argparse's usage errors as one line (its own print the whole usage first)."""
    original = argparse.ArgumentParser.error

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")

    argparse.ArgumentParser.error = error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = original


@contextlib.contextmanager
def interrupt_ends(prog: str):
    """Ctrl-C (KeyboardInterrupt) inside the block ends the command with one line, ``prog: interrupted``, and exit
    status 130 (128 + SIGINT), as shells report a command that SIGINT stopped."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr, flush=True)
        sys.exit(130)


def cli_entry(prog: str):
    """Decorate a command's ``main(argv=None)``: strips ``--debug``; without it (and without STUNET_DEBUG), every
    exception becomes one line on stderr and exit status 1. KeyboardInterrupt and SystemExit pass unchanged."""
    def wrap(main):
        @functools.wraps(main)
        def run(argv=None):
            args = list(sys.argv[1:] if argv is None else argv)
            debug = debugging(args)
            args = [a for a in args if a != "--debug"]
            if debug:
                return main(args)
            with _one_line_usage(prog):
                try:
                    return main(args)
                except EXPECTED as e:
                    detail = str(e) if isinstance(e, (CheckpointError, CaseError, ValueError)) else \
                        f"{type(e).__name__}: {e}"
                    message = one_line(detail) or type(e).__name__
                except Exception as e:  # a bug or an unforeseen failure: still one line, with the way to see more
                    message = (f"{type(e).__name__}: {one_line(str(e), 500)} (unexpected; rerun with --debug or "
                               f"{ENV_DEBUG}=1 for the traceback)")
            print(f"{prog}: error: {message}", file=sys.stderr)
            sys.exit(1)
        return run
    return wrap
