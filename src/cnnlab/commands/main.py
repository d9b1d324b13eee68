"""The ``cnnlab`` command line. Thin: it parses, then calls one function per subcommand.

This module only composes the commands: :mod:`cnnlab.commands.cifar`, :mod:`cnnlab.commands.faces`
and :mod:`cnnlab.commands.serve` declare their subcommands with the shared helpers of
:mod:`cnnlab.commands.options`; none imports this module.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import shlex
import signal
import sys
from pathlib import Path

from cnnlab import __version__
from cnnlab.commands.cifar import add_cifar
from cnnlab.commands.faces import add_faces
from cnnlab.commands.serve import add_serve
from cnnlab.errors import CnnlabError, OutOfMemory, Terminated, UnfinishedRun, shown_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="cnnlab: the CIFAR-10 CNN block study and Siamese face verification, in PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    add_cifar(sub)
    add_faces(sub)
    add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from cnnlab.run import setup_logging

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        with _sigterm_as_interrupt():
            status = int(args.func(args) or 0)
            sys.stdout.flush()  # a closed pipe shows here, not as a traceback at the interpreter's exit
            return status
    except CnnlabError as e:
        if args.debug:
            raise
        print(f"cnnlab: error: {e.worded(flag)}{_hint(e, args, argv)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # whoever read the output has gone (cnnlab ... | head): stop quietly
        if args.debug:
            raise
        _stdout_to_devnull()
        return CLOSED_PIPE
    except OSError as e:  # a full disk, a read-only folder, a file that vanished
        if args.debug:
            raise
        where = f" ({shown_path(e.filename)})" if getattr(e, "filename", None) else ""
        intact = "; what was written before is intact (files are replaced atomically)" \
            if e.errno in _WRITE_ERRORS else ""
        print(f"cnnlab: error: {e.strerror or e}{where}{intact}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as e:
        if args.debug:
            raise
        how = "SIGTERM" if isinstance(e, Terminated) else "Ctrl-C"
        command = continue_command(args, argv)
        print(f"cnnlab: interrupted by {how}" + (f"; continue with: {command}" if command else ""), file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT)


def flag(name: str) -> str:
    """The command line's flag for the parameter or config field ``name``: ``-k``, ``--image-size``."""
    return ("-" if len(name) == 1 else "--") + name.replace("_", "-")


# The status of a command whose output nobody reads any more: what a shell reports for a Unix tool that
# SIGPIPE stopped (128 + 13), as Ctrl-C and SIGTERM give 130 and 143; scripts with pipefail know it.
CLOSED_PIPE = 141
# Errors only a write raises: every file cnnlab writes is replaced atomically, so the earlier one is whole.
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def _stdout_to_devnull() -> None:
    """Point stdout's descriptor at /dev/null, so that the interpreter's last flush of what the closed
    pipe refused fails no more ("Exception ignored ... BrokenPipeError")."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): nothing is flushed at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def _hint(error: CnnlabError, args: argparse.Namespace, argv: list[str]) -> str:
    """What the command line can do about ``error``, in its own flags ("" when nothing)."""
    # Training commands take --eval-batch-size (train, and cifar compare and faces search for every run).
    trains = hasattr(args, "resume") or getattr(args, "rerun_continues", False)
    if isinstance(error, UnfinishedRun) and hasattr(args, "allow_unfinished"):
        # The library cannot know the flag that lets this command use an unfinished run; the parser does.
        return "; or give --allow-unfinished to use its best checkpoint so far"
    if not isinstance(error, OutOfMemory) or not trains:
        return ""
    smaller = max(1, error.batch_size // 4)
    command = continue_command(args, argv)
    if command and not getattr(args, "rerun_continues", False):
        return f"; give a smaller --eval-batch-size, e.g. {command} --eval-batch-size {smaller}"
    return f"; give a smaller --eval-batch-size (it was {error.batch_size}), e.g. --eval-batch-size {smaller}"


def continue_command(args: argparse.Namespace, argv: list[str]) -> str | None:
    """The command line that continues what an interrupted command did, or None if there is none.

    A training run continues with ``--resume RUN_DIR`` once its folder holds a run;
    a command whose rerun continues it (``faces search``, ``cifar compare``) with
    the same command again.
    """
    if getattr(args, "rerun_continues", False):
        return shlex.join(["cnnlab", *argv])
    target = getattr(args, "resume", None) or getattr(args, "out", None)
    if hasattr(args, "resume") and target and (Path(target) / "config.yaml").is_file():
        return shlex.join(["cnnlab", args.study, args.command, "--resume", str(target)])
    return None


@contextlib.contextmanager
def _sigterm_as_interrupt():
    """SIGTERM raises :class:`Terminated` (a KeyboardInterrupt), so it stops a run as Ctrl-C does:
    the last checkpoint kept, a line in the log, the command that continues it."""
    def stop(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals to whoever owns them
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
