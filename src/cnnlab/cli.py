"""The ``cnnlab`` command line. Thin: it parses, then calls one function per subcommand.

This module only composes the studies: ``cnnlab.cifar.cli`` and ``cnnlab.faces.cli``
declare their subcommands with the shared helpers of ``cnnlab.options``; neither
imports this module.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cnnlab import __version__
from cnnlab.cifar.cli import add_cifar
from cnnlab.errors import CnnlabError
from cnnlab.faces.cli import add_faces


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
    return parser


def main(argv: list[str] | None = None) -> int:
    from cnnlab.run import setup_logging

    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except CnnlabError as e:
        if args.debug:
            raise
        print(f"cnnlab: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, a file that vanished
        if args.debug:
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"cnnlab: error: {e.strerror or e}{where}; what was written before is intact "
              "(files are replaced atomically)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        target = getattr(args, "out", None) or getattr(args, "resume", None)
        hint = f"; continue with --resume {target}" if target and Path(target).exists() else ""
        print(f"cnnlab: interrupted{hint}", file=sys.stderr)
        return 130
