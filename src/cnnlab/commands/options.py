"""What every study's command line shares: subcommands as data, options from config dataclasses.

Options of ``train``-like subcommands are generated from the config dataclasses
(their defaults and help texts), so ``--help`` and the saved ``config.yaml``
always agree. Precedence: dataclass defaults < ``--config FILE.yaml`` < options.

A command module (:mod:`cnnlab.commands.cifar`, ...) declares each subcommand with
:func:`add_command` and a list of :func:`arg` specs; the root
:mod:`cnnlab.commands.main` only composes them. This module imports neither, so
the command modules never import their composer.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence, Union

from cnnlab.config import check_fields, from_dict, load_yaml
from cnnlab.errors import CnnlabError, TargetRefused, shown_path

# --- subcommands as data --------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One ``add_argument`` call, kept as data until a parser is built."""

    flags: tuple[str, ...]
    kwargs: dict[str, Any]

    def __call__(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument(*self.flags, **self.kwargs)


def arg(*flags: str, **kwargs: Any) -> Arg:
    """``arg("--seed", type=int, default=0, help=...)``: the arguments of ``add_argument``."""
    return Arg(flags, kwargs)


# An argument spec is an Arg, or any function that adds arguments to a parser (a group of options).
Spec = Union[Arg, Callable[[argparse.ArgumentParser], None]]


def _epilog(examples: Sequence[str], notes: str) -> str | None:
    if not examples:
        return notes or None
    head = "example:" if len(examples) == 1 else "examples:"
    text = "\n".join([head, *("  " + e for e in examples)])
    return f"{text}\n\n{notes}" if notes else text


def add_command(sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], *,
                help: str, description: str, examples: Sequence[str] = (), notes: str = "",
                args: Iterable[Spec] = ()) -> argparse.ArgumentParser:
    """Add subcommand ``name``, which calls ``func(args)``, with its texts and its arguments in order.

    ``examples`` are command lines shown under the help (kept as written, so the
    description is too); ``notes`` is raw text after them.
    """
    kw: dict[str, Any] = {"help": help, "description": description}
    epilog = _epilog(examples, notes)
    if epilog:
        kw.update(epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser = sub.add_parser(name, **kw)
    for spec in args:
        spec(parser)
    parser.set_defaults(func=func)
    return parser


def add_figures_command(sub: argparse._SubParsersAction, func: Callable[[argparse.Namespace], int], *,
                        description: str, args: Iterable[Spec]) -> argparse.ArgumentParser:
    """``figures``: each study redraws a run's figures from the files the run saved."""
    return add_command(sub, "figures", func, help="redraw a run's figures from its saved files",
                       description=description, args=args)


# --- the arguments several subcommands share ---------------------------------------------


def run_dir(help: str) -> Arg:
    """The RUN_DIR of a command that reads a finished run."""
    return arg("run_dir", metavar="RUN_DIR", help=help)


def data_dir(help: str, **kwargs: Any) -> Arg:
    """``--data-dir`` of a command whose data is found elsewhere unless given."""
    return arg("--data-dir", metavar="DIR", help=help, **kwargs)


DEVICE = arg("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
ALLOW_UNFINISHED = arg("--allow-unfinished", action="store_true",
                       help="use a run that has not finished training (its best checkpoint so far) instead of "
                            "refusing it")
RESUME_NOTES = """\
resuming and extending:
  --resume RUN_DIR continues a run from checkpoints/last.pt, whose saved configuration is the
  run's truth: a config.yaml edited since, or an option that changes what the run computes, is
  refused with the differences listed. Only how it runs may change (--device, --data-dir,
  --eval-batch-size, --compile...), and --epochs, which extends a run, finished or not: it then
  trains exactly as a run started with the new --epochs (the learning-rate schedule continues
  where it ended; StepLR steps where it would have), and its test is scored again at the end
  with the best checkpoint. One process at a time works on a run folder."""
TRAINING_OPTIONS_FILE = arg("--config", metavar="FILE", help="YAML file of training options")
EXPORT_FILE = [arg("--format", required=True, choices=("onnx", "torchscript"), help="file format of --out"),
               arg("--out", required=True, metavar="FILE", help="the file to write, a new one unless --force"),
               arg("--force", action="store_true", help="replace a regular file already at --out (a link, device, "
                                                        "FIFO or folder, or a file in a run's checkpoints/, never)")]


def export_file(study: str, args: argparse.Namespace, check_run: Callable[[], Any] | None = None) -> dict:
    """``cnnlab STUDY export``: the run's network written to --out; its metadata is returned.

    --out is checked first; then ``check_run()``, the command's cheap look at RUN_DIR, before the run is opened.
    """
    from cnnlab.export import export_run
    from cnnlab.files import refuse_replacing

    try:
        try:
            refuse_replacing(args.out, replace_file=args.force)
        except TargetRefused:
            pass  # export_run refuses it, with the first reason that applies, before it opens the run
        else:
            if check_run is not None:
                check_run()
        return export_run(study, args.run_dir, args.format, args.out, force=args.force,
                          allow_unfinished=args.allow_unfinished)
    except TargetRefused as e:
        hint = "; give --force to replace it" if e.replaceable else ""
        raise CnnlabError(f"--out {e}{hint}") from None


@contextlib.contextmanager
def offline_advice(advice: str) -> Iterator[None]:
    """A download that fails inside the block says how to do without it in the command's options:
    ``advice``, where ``{folder}`` stands for the folder the download was for."""
    from cnnlab.data.download import DownloadFailed

    try:
        yield
    except DownloadFailed as e:
        raise e.advising(advice.format(folder=shown_path(e.by_hand.parent))) from None


RUN_OPTIONS = "run options (saved in the run's config.yaml)"


def config_options(cls: type, exclude: tuple[str, ...] = (), title: str = RUN_OPTIONS) -> Spec:
    """One ``--option`` per field of the dataclass ``cls``, headed ``title`` (see :func:`add_config_args`)."""
    return lambda parser: add_config_args(parser, cls, exclude, title)


def train_args(cls: type) -> list[Spec]:
    """--out, --resume, --config and one option per field of ``cls``: every train command's options."""
    return [
        arg("--out", help="new run folder"),
        arg("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint"),
        arg("--config", metavar="FILE", help="YAML file of options (a run's config.yaml works)"),
        config_options(cls),
    ]


# --- options from dataclasses ---------------------------------------------------------


def _base_type(hint: Any) -> Any:
    """``int | None`` -> ``int``; any other hint (``tuple[float, ...]`` too) as it is."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_config_args(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (),
                    title: str = RUN_OPTIONS) -> None:
    """One ``--option`` per dataclass field, in a group named ``title``; only options given reach the namespace.

    The default is appended to each help text unless the text already says what it is.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(title)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        help_text = f.metadata.get("help", "")
        shown = "auto" if default is None else default
        if "default:" not in help_text:
            help_text = f"{help_text} (default: {shown})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        t = _base_type(hints[f.name])
        if t is bool and f.metadata.get("auto"):
            _add_auto_switch(group, flag, help_text, kw)
            continue
        if t is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text, **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if typing.get_origin(t) is tuple or t is tuple:
            kw["type"], kw["nargs"] = float, "+"
        else:
            kw["type"] = t if t in (int, float, str) else str
        kw["metavar"] = f.metadata.get("metavar", f.name.upper()) if "choices" not in kw else None
        group.add_argument(flag, help=help_text, **kw)


# A switch whose None means auto (a field with metadata "auto"): --x {auto,on,off}, --x alone (on), --no-x.
_SWITCH = {"auto": None, "on": True, "off": False}


def _switch(text: str) -> bool | None:
    if text not in _SWITCH:
        raise argparse.ArgumentTypeError(f"expected auto, on or off, got {text!r}")
    return _SWITCH[text]


def _add_auto_switch(group: argparse._ArgumentGroup, flag: str, help_text: str, kw: dict) -> None:
    group.add_argument(flag, nargs="?", const=True, type=_switch, metavar="{auto,on,off}",
                       help=f"{help_text}; {flag} alone: on", **kw)
    group.add_argument("--no-" + flag[2:], action="store_const", const=False, help=f"the same as {flag} off", **kw)


def config_overrides(args: argparse.Namespace, cls: type) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k in names}


def build_config(cls: type, args: argparse.Namespace,
                 base: Callable[[dict, dict], tuple[dict, str]] | None = None) -> Any:
    """``cls`` from --config FILE and the options; with ``base`` (a study's recipes) from the values
    ``base(values, sources)`` gives below them, ``values`` being those of the file and the options and
    ``sources`` where each was written."""
    # The file and the options are checked each on their own: a bad value is named where it was
    # written, and a bad file is refused even where an option overrides its value.
    file_values = check_fields(cls, load_yaml(args.config), source=args.config) if getattr(args, "config", None) \
        else {}
    options = check_fields(cls, config_overrides(args, cls), source="options")
    sources = {**dict.fromkeys(file_values, args.config), **dict.fromkeys(options, "options")}
    values = {**file_values, **options}
    if base is not None:
        preset, where = base(values, sources)
        values, sources = {**preset, **values}, {**dict.fromkeys(preset, where), **sources}
    return from_dict(cls, values, source=args.config or "options", sources=sources)


# --- running and printing -------------------------------------------------------------


def train_command(args: argparse.Namespace, cls: type, resume_config: Callable, train: Callable,
                  command: str, base: Callable[[dict, dict], tuple[dict, str]] | None = None) -> dict:
    """Start a run in --out, or continue the one in --resume (only runtime options may change).
    ``base``: see :func:`build_config`."""
    if args.resume:
        cfg = resume_config(args.resume, config_overrides(args, cls))
        return train(cfg, args.resume, resume=True)
    if not args.out:
        raise CnnlabError(f"{command}: give --out RUN_DIR (a new folder), or --resume RUN_DIR")
    return train(build_config(cls, args, base), args.out)


def print_result(summary: dict, keys: tuple[str, ...], where: dict[str, Any] | None = None,
                 notes: dict[str, str | None] | None = None) -> None:
    """How a command ends, once: its headline numbers on one line, then where its results went.

    Each number as :func:`cnnlab.report.headline` writes it, as the reports do (counts and seconds
    as integers with thousands separators, other numbers to four decimals without padding zeros).
    ``notes`` maps a key to a caveat printed under the line (``key: caveat``) when that key's number
    is printed. ``where`` maps a name (``run``, ``figures``, ``report``) to a path, or to several
    (shown on one line, comma-separated), one line each.
    """
    from cnnlab.report import headline

    shown = [k for k in keys if not isinstance(summary.get(k), bool) and summary.get(k) is not None]
    if shown:
        print("  ".join(f"{k} {headline(k, summary[k])}" for k in shown))
    for k, note in (notes or {}).items():
        if note and k in shown:
            print(f"{k}: {note}")
    for name, paths in (where or {}).items():
        paths = paths if isinstance(paths, (list, tuple)) else [paths]
        print(f"{name}: " + ", ".join(shown_path(p) for p in paths))


def report_files(folder: str | os.PathLike) -> tuple[Path, Path]:
    """Where a command's report went: ``report.md`` and the self-contained ``report.html`` of ``folder``."""
    return Path(folder) / "report.md", Path(folder) / "report.html"
