"""The ``cnnlab`` command line. Thin: it parses, then calls one function per subcommand.

Options of ``train``-like subcommands are generated from the config dataclasses
(their defaults and help texts), so ``--help`` and the saved ``config.yaml``
always agree. Precedence: dataclass defaults < ``--config FILE.yaml`` < options.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path
from typing import Any, Callable

from cnnlab import __version__
from cnnlab.errors import CnnlabError

logger = logging.getLogger("cnnlab.cli")


# --- options from dataclasses ---------------------------------------------------------


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def add_config_args(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One ``--option`` per dataclass field; only options actually given end up in the namespace."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group("run options (saved in the run's config.yaml)")
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        help_text = f.metadata.get("help", "")
        shown = "auto" if default is None else default
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        t = _base_type(hints[f.name])
        if t is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction,
                               help=f"{help_text} (default: {shown})", **kw)
            continue
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if typing.get_origin(t) is tuple or t is tuple:
            kw["type"], kw["nargs"] = float, "+"
        else:
            kw["type"] = t if t in (int, float, str) else str
        kw["metavar"] = f.name.upper() if "choices" not in kw else None
        group.add_argument(flag, help=f"{help_text} (default: {shown})", **kw)


def config_overrides(args: argparse.Namespace, cls: type) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in vars(args).items() if k in names}


def build_config(cls: type, args: argparse.Namespace) -> Any:
    from cnnlab.config import from_dict, load_yaml

    values: dict = {}
    if getattr(args, "config", None):
        values.update(load_yaml(args.config))
    values.update(config_overrides(args, cls))
    return from_dict(cls, values, source=args.config or "options")


# --- cifar ----------------------------------------------------------------------------


def _cifar_summary(args: argparse.Namespace) -> int:
    from cnnlab.cifar.summary import format_summary, model_summary

    s = model_summary(args.blocks, args.width)
    print(json.dumps(s, indent=2) if args.json else format_summary(s))
    return 0


def add_device_arg(p: argparse.ArgumentParser) -> None:
    """``--device`` of the commands that load a trained run."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")


def add_train_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """--out, --resume, --config and one option per field of ``cls``: every train command's options."""
    parser.add_argument("--out", help="new run folder")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last checkpoint")
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (a run's config.yaml works)")
    add_config_args(parser, cls)


def train_command(args: argparse.Namespace, cls: type, resume_config: Callable, train: Callable,
                  command: str) -> dict:
    """Start a run in --out, or continue the one in --resume (only runtime options may change)."""
    if args.resume:
        cfg = resume_config(args.resume, config_overrides(args, cls))
        return train(cfg, args.resume, resume=True)
    if not args.out:
        raise CnnlabError(f"{command}: give --out RUN_DIR (a new folder), or --resume RUN_DIR")
    return train(build_config(cls, args), args.out)


def _cifar_train(args: argparse.Namespace) -> int:
    from cnnlab.cifar.train import resume_config, train
    from cnnlab.config import CifarTrainConfig

    summary = train_command(args, CifarTrainConfig, resume_config, train, "cifar train")
    print_result(summary, ("best_val_accuracy", "test_accuracy", "train_seconds"))
    return 0


def _cifar_evaluate(args: argparse.Namespace) -> int:
    from cnnlab.cifar.evaluate import evaluate_run

    summary = evaluate_run(args.run_dir, tsne_samples=args.tsne_samples, feature_image=args.feature_image,
                           device=args.device, data_dir=args.data_dir)
    print_result(summary, ("best_val_accuracy", "test_accuracy"))
    print(f"figures: {Path(args.run_dir) / 'figures'}")
    return 0


def _cifar_figures(args: argparse.Namespace) -> int:
    from cnnlab.cifar.evaluate import redraw_figures

    for path in redraw_figures(args.run_dir):
        print(path)
    return 0


def _cifar_data_figures(args: argparse.Namespace) -> int:
    from cnnlab.cifar.evaluate import data_figures

    for path in data_figures(args.data_dir, args.out, seed=args.seed, val_per_class=args.val_per_class,
                             skip_bad_images=args.skip_bad_images):
        print(path)
    return 0


def _cifar_compare(args: argparse.Namespace) -> int:
    from cnnlab.cifar.compare import compare, parse_seeds, parse_variants, read_comparison, table_rows
    from cnnlab.config import CifarTrainConfig
    from cnnlab.report import markdown_table

    variants = parse_variants(args.blocks)
    args.blocks = variants[0]  # the config is checked with one variant; compare sets each in turn
    base = build_config(CifarTrainConfig, args)
    rows = compare(base, variants, args.out, seeds=parse_seeds(args.seeds, base.seed),
                   evaluate=not args.no_evaluate, tsne_samples=args.tsne_samples)
    best = max(rows, key=lambda r: r["best_val_accuracy"])["variant"]
    print(markdown_table(*table_rows(read_comparison(args.out), best)))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def print_result(summary: dict, keys: tuple[str, ...]) -> None:
    """The headline numbers of a finished command, on one line."""
    parts = []
    for k in keys:
        v = summary.get(k)
        if isinstance(v, bool) or v is None:
            continue
        parts.append(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}")
    if parts:
        print("  ".join(parts))


def _add_cifar(sub: argparse._SubParsersAction) -> None:
    from cnnlab.config import CifarTrainConfig

    cifar = sub.add_parser("cifar", help="the CIFAR-10 block study", description="The CIFAR-10 block study: "
                           "train BaseCNN variants (blocks A-E), evaluate and compare them.")
    csub = cifar.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = csub.add_parser("summary", help="layer table and trainable parameters of a variant",
                        description="Print the layer table, trainable parameters and MACs of a BaseCNN variant.")
    p.add_argument("--blocks", default="A", help="block design(s), e.g. A, D-sep or AABBCCDE (default: A)")
    p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default: 1.0)")
    p.add_argument("--json", action="store_true", help="print a JSON object instead of the table")
    p.set_defaults(func=_cifar_summary)

    p = csub.add_parser(
        "train", help="train one variant into a run folder",
        description="Train one BaseCNN variant on CIFAR-10. The run folder gets config.yaml, metrics.csv, "
                    "summary.json, checkpoints/{best,last}.pt and train.log; --resume continues it.",
        epilog="examples:\n  cnnlab cifar train --blocks B --data-dir data/cifar10 --download --out runs/B\n"
               "  cnnlab cifar train --blocks E --width 0.25 --epochs 5 --precision bf16 --data-dir data/cifar10 "
               "--out runs/E-quick\n  cnnlab cifar train --resume runs/B",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_train_args(p, CifarTrainConfig)
    p.set_defaults(func=_cifar_train)

    p = csub.add_parser(
        "evaluate", help="test a run's best checkpoint and draw its figures",
        description="Load RUN_DIR/checkpoints/best.pt, run the test set once and write test_predictions.npz, "
                    "features.npz (with the t-SNE coordinates), feature_maps.npz and figures/*.png into the run "
                    "folder; the test accuracy, per-class accuracy and confusion matrix go into summary.json.",
        epilog="example:\n  cnnlab cifar evaluate runs/E-quick --tsne-samples 0 --feature-image 7",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of cnnlab cifar train")
    p.add_argument("--tsne-samples", type=int, default=2000, metavar="N",
                   help="test images in the t-SNE, a seeded random subset (default: 2000; 0 = all)")
    p.add_argument("--feature-image", type=int, default=0, metavar="INDEX",
                   help="index of the test image whose feature maps are drawn (default: 0)")
    add_device_arg(p)
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="CIFAR-10 folder, if not where the run was trained from (default: the run's --data-dir)")
    p.set_defaults(func=_cifar_evaluate)

    p = csub.add_parser(
        "figures", help="redraw a run's figures from its saved files",
        description="Redraw every figure of RUN_DIR from metrics.csv and the files cnnlab cifar evaluate saved, "
                    "without the model and without recomputing t-SNE. Figures whose data is absent are skipped.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder of cnnlab cifar train")
    p.set_defaults(func=_cifar_figures)

    p = csub.add_parser(
        "data-figures", help="figures of the training data and its augmentation",
        description="Write augmented_samples.png (50 augmented training images with their classes), "
                    "val_class_distribution.png (the validation split training makes) and augment_draws.png "
                    "(one image, 10 draws of ColorJitter and 10 of RandomAffine) into --out.")
    p.add_argument("--data-dir", default=CifarTrainConfig.data_dir, metavar="DIR",
                   help=f"CIFAR-10 folder (default: {CifarTrainConfig.data_dir})")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNG files (created if needed)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the drawn images (default: 0)")
    p.add_argument("--val-per-class", type=int, default=None, metavar="N",
                   help="validation images per class, as in training (default: 1000, or 20%% of each class "
                        "on smaller sets)")
    p.add_argument("--skip-bad-images", action="store_true", help="skip image files that cannot be decoded")
    p.set_defaults(func=_cifar_data_figures)

    p = csub.add_parser(
        "compare", help="train, evaluate and compare several variants (the study)",
        description="Train each variant (reusing finished runs in --out, resuming unfinished ones), evaluate it, "
                    "and write comparison.csv, comparison.md, report.md and a self-contained report.html. "
                    "The best variant is chosen by validation accuracy, never by test accuracy.",
        epilog="example:\n  cnnlab cifar compare --blocks A,B,C,D,D-sep,E --width 0.25 --epochs 5 "
               "--data-dir data/cifar10 --out studies/quick",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", default="A,B,C,D,D-sep,E", metavar="LIST",
                   help="comma-separated variants (default: A,B,C,D,D-sep,E)")
    p.add_argument("--out", required=True, metavar="STUDY_DIR", help="study folder (created; reused when rerun)")
    p.add_argument("--seeds", metavar="LIST", help="comma-separated seeds, e.g. 0,1,2 (default: --seed)")
    p.add_argument("--tsne-samples", type=int, default=2000, metavar="N",
                   help="test images in each t-SNE (default: 2000; 0 = all)")
    p.add_argument("--no-evaluate", action="store_true", help="only train and tabulate; no figures")
    p.add_argument("--config", metavar="FILE", help="YAML file of training options")
    add_config_args(p, CifarTrainConfig, exclude=("blocks",))
    p.set_defaults(func=_cifar_compare)


# --- main -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnlab",
        description="cnnlab: the CIFAR-10 CNN block study and Siamese face verification, in PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="more log output")
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    _add_cifar(sub)
    for extra in _EXTRA_STUDIES:
        extra(sub)
    return parser


# Further subcommand groups register here (see cnnlab.faces.cli).
_EXTRA_STUDIES: list[Callable[[argparse._SubParsersAction], None]] = []


def _load_extra_studies() -> None:
    try:
        from cnnlab.faces.cli import add_faces
    except ImportError:  # pragma: no cover - during development only
        return
    if add_faces not in _EXTRA_STUDIES:
        _EXTRA_STUDIES.append(add_faces)


def main(argv: list[str] | None = None) -> int:
    from cnnlab.run import setup_logging

    _load_extra_studies()
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
