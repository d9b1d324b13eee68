"""``cnnlab cifar ...``: the subcommands of the CIFAR-10 block study. Thin: parse, call one function, print."""

from __future__ import annotations

import argparse
import contextlib
import math
from pathlib import Path

from cnnlab.commands import checks
from cnnlab.config import AUGMENTS, DEFAULT_CIFAR_RECIPE, POOLINGS, CifarTrainConfig
from cnnlab.errors import ConfigError, DataError, shown_path
from cnnlab.commands.options import (ALLOW_UNFINISHED, DEVICE, EXPORT_FILE, RESUME_NOTES, TRAINING_OPTIONS_FILE, add_command,
                            add_figures_command, arg, build_config, config_options, data_dir, export_file,
                            offline_advice, print_result, report_files, run_dir, train_args, train_command)

_RUN_DIR = run_dir("a run folder of cnnlab cifar train")


# --------------------------------------------------------------------------- cheap checks and advice
# Each handler checks what costs nothing (paths, values) before it loads a network or decodes data, and
# says how to get the data with the options it has.

_DOWNLOAD = "add --download to fetch CIFAR-10 into it"
_NO_DOWNLOAD = "give --data-dir the folder holding CIFAR-10; cnnlab cifar train --download fetches it"
_OFFLINE = ("point --data-dir at a copy of CIFAR-10 already on disk: the official cifar-10-batches-py folder (or the "
            "folder holding it), or train/<class>/ and test/<class>/ image folders")


@contextlib.contextmanager
def _data_advice(download: str = _DOWNLOAD):
    """A data folder that is missing or empty, advised as the command gets CIFAR-10 (``download``), and a
    download that fails, with the command's way to do without it."""
    from cnnlab.data.cifar10 import NoData

    try:
        with offline_advice(_OFFLINE):
            yield
    except NoData as e:
        raise e.advising(download) from None


def _check_data(data_dir: str | Path, download: str = _DOWNLOAD) -> None:
    """The CIFAR-10 folder is there and laid out as one (a look at its entries, nothing decoded)."""
    from cnnlab.data.cifar10 import detect_layout

    with _data_advice(download):
        detect_layout(Path(data_dir).expanduser())


def _checked_train(cfg: CifarTrainConfig, out, **kwargs) -> dict:
    """``train``, once the data folder is known to be there (unless it is to be downloaded)."""
    from cnnlab.cifar.train import train

    if not cfg.download:
        _check_data(cfg.data_dir)
    with _data_advice():
        return train(cfg, out, **kwargs)


# --------------------------------------------------------------------------- handlers


def _summary(args: argparse.Namespace) -> int:
    from cnnlab.cifar.compare import parse_variants
    from cnnlab.cifar.summary import format_summary, model_summary
    from cnnlab.files import dumps_json

    variants = parse_variants(args.blocks)
    if not 0 < args.width < math.inf:
        raise ConfigError(f"--width: expected a positive number, got {args.width}")
    summaries = [model_summary(v, args.width, pooling=args.pooling) for v in variants]
    if args.json:  # one variant: its object; several: a list of them
        print(dumps_json(summaries[0] if len(summaries) == 1 else summaries, indent=2))
    else:
        print("\n\n".join(format_summary(s) for s in summaries))
    return 0


RESULT_KEYS = ("best_val_accuracy", "best_epoch", "test_accuracy", "test_accuracy_tta", "train_seconds")


def _train(args: argparse.Namespace) -> int:
    from cnnlab.cifar.train import resume_config
    from cnnlab.recipes import recipe_base

    summary = train_command(args, CifarTrainConfig, resume_config, _checked_train, "cifar train", base=recipe_base)
    print_result(summary, RESULT_KEYS, where={"run": args.resume or args.out})
    return 0


def _recipes(args: argparse.Namespace) -> int:
    from cnnlab.recipes import describe, recipe_text

    if args.name:
        print(recipe_text(args.name), end="")
        return 0
    shown = describe()
    width = max(len(name) for name, _ in shown)
    for name, text in shown:
        default = " (default)" if name == DEFAULT_CIFAR_RECIPE else ""
        print(f"{name:<{width}}  {text}{default}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    run = checks.run_folder(args.run_dir, CifarTrainConfig)
    if args.data_dir is not None:
        _check_data(args.data_dir, _NO_DOWNLOAD)
    else:
        trained_on = run.read_config().get("data_dir")
        if isinstance(trained_on, str) and not Path(trained_on).expanduser().exists():
            raise DataError(f"{run.path} was trained on {trained_on}, which does not exist here; give --data-dir "
                            "where CIFAR-10 is now")
    from cnnlab.cifar.evaluate import evaluate_run

    with _data_advice(_NO_DOWNLOAD):
        summary = evaluate_run(args.run_dir, tsne_samples=args.tsne_samples, feature_image=args.feature_image,
                               device=args.device, data_dir=args.data_dir, allow_unfinished=args.allow_unfinished)
    print_result(summary, ("test_accuracy", "best_val_accuracy", "best_epoch"),
                 where={"figures": Path(args.run_dir) / "figures", "report": report_files(args.run_dir)})
    return 0


def _figures(args: argparse.Namespace) -> int:
    checks.run_folder(args.run_dir, CifarTrainConfig, needs_config=False)  # metrics.csv is all the curves need
    from cnnlab.cifar.evaluate import redraw_figures

    for path in redraw_figures(args.run_dir):
        print(shown_path(path))
    return 0


def _data_figures(args: argparse.Namespace) -> int:
    _check_data(args.data_dir, _NO_DOWNLOAD)
    checks.output_folder(args.out, "--out")
    if args.val_per_class is not None:
        checks.positive(args.val_per_class, "--val-per-class")
    from cnnlab.cifar.evaluate import data_figures

    with _data_advice(_NO_DOWNLOAD):
        paths = data_figures(args.data_dir, args.out, seed=args.seed, val_per_class=args.val_per_class,
                             skip_bad_images=args.skip_bad_images, augment=args.augment)
    for path in paths:
        print(shown_path(path))
    return 0


def _compare(args: argparse.Namespace) -> int:
    from cnnlab.cifar.compare import compare, parse_seeds, parse_variants, read_comparison, table_rows
    from cnnlab.report import markdown_table

    from cnnlab.recipes import recipe_base

    variants = parse_variants(args.blocks)
    args.blocks = variants[0]  # the config is checked with one variant; compare sets each in turn
    base = build_config(CifarTrainConfig, args, recipe_base)
    seeds = parse_seeds(args.seeds, base.seed)
    checks.output_folder(args.out, "--out")
    if args.tsne_samples < 0:  # checked by each evaluation too, but that comes after the first training
        raise ConfigError(f"--tsne-samples: expected 0 (all test images) or a positive number, got "
                          f"{args.tsne_samples}")
    with _data_advice():
        rows = compare(base, variants, args.out, seeds=seeds, evaluate=not args.no_evaluate,
                       tsne_samples=args.tsne_samples)
    best = max(rows, key=lambda r: r["best_val_accuracy"])["variant"]
    print(markdown_table(*table_rows(read_comparison(args.out), best)))
    out = Path(args.out)
    print(f"best variant by validation accuracy: {best}")
    print_result({}, (), where={"runs": out / "runs", "tables": (out / "comparison.csv", out / "comparison.md"),
                                "figures": out / "figures", "report": report_files(out)})
    return 0


def _predict(args: argparse.Namespace) -> int:
    checks.run_folder(args.run_dir, CifarTrainConfig)
    for image in args.images:
        checks.input_file(image, "image")
    checks.positive(args.k, "-k")
    from cnnlab.inference.cifar import Classifier
    from cnnlab.files import dumps_json

    clf = Classifier.from_run(args.run_dir, device=args.device, allow_unfinished=args.allow_unfinished)
    results = clf.predict(args.images, k=args.k)  # a list of {"image", "top"}, as --json prints it
    if args.json:
        print(dumps_json(results))
        return 0
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"]))
    return 0


def _export(args: argparse.Namespace) -> int:
    checks.output_file(args.out, "--out")
    meta = export_file("cifar", args, check_run=lambda: checks.run_folder(args.run_dir, CifarTrainConfig))
    print(f"classifier of {len(meta['classes'])} classes written to {shown_path(args.out)}; input uint8 RGB "
          f"(batch, 3, 32, 32), output logits")
    return 0


# --------------------------------------------------------------------------- parsers


def add_cifar(sub: argparse._SubParsersAction) -> None:
    """Register ``cnnlab cifar`` and its subcommands."""
    cifar = sub.add_parser("cifar", help="the CIFAR-10 block study", description="The CIFAR-10 block study: "
                           "train BaseCNN variants (blocks A-E), evaluate and compare them.")
    csub = cifar.add_subparsers(dest="command", required=True, metavar="COMMAND")

    _add_summary_command(csub)

    add_command(
        csub, "train", _train, help="train one variant into a run folder",
        description="Train one BaseCNN variant on CIFAR-10. The run folder gets config.yaml, metrics.csv, "
                    "summary.json, checkpoints/{best,last}.pt and train.log; --resume continues it.",
        notes=RESUME_NOTES,
        examples=["cnnlab cifar train --blocks B --data-dir data/cifar10 --download --out runs/B",
                  "cnnlab cifar train --blocks E --width 0.25 --epochs 5 --data-dir data/cifar10 "
                  "--out runs/E-quick",
                  "cnnlab cifar train --blocks B --recipe fast --time-budget 20m --data-dir data/cifar10 "
                  "--out runs/B-fast",
                  "cnnlab cifar train --resume runs/B",
                  "cnnlab cifar train --resume runs/B --epochs 40"],
        args=train_args(CifarTrainConfig))

    add_command(
        csub, "evaluate", _evaluate, help="test a run's best checkpoint and draw its figures",
        description="Load RUN_DIR/checkpoints/best.pt, run the test set once and write test_predictions.npz, "
                    "features.npz (with the t-SNE coordinates), feature_maps.npz and figures/*.png into the run "
                    "folder; the test accuracy, per-class accuracy and confusion matrix go into summary.json.",
        examples=["cnnlab cifar evaluate runs/E-quick --tsne-samples 0 --feature-image 7"],
        args=[_RUN_DIR,
              arg("--tsne-samples", type=int, default=2000, metavar="N",
                  help="test images in the t-SNE, a seeded random subset (default: 2000; 0 = all)"),
              arg("--feature-image", type=int, default=0, metavar="INDEX",
                  help="index of the test image whose feature maps are drawn (default: 0)"),
              DEVICE,
              data_dir("CIFAR-10 folder, if not where the run was trained from (default: the run's --data-dir)",
                       default=None),
              ALLOW_UNFINISHED])

    add_figures_command(
        csub, _figures,
        description="Redraw every figure of RUN_DIR from metrics.csv and the files cnnlab cifar evaluate saved, "
                    "without the model and without recomputing t-SNE. Figures whose data is absent are skipped.",
        args=[_RUN_DIR])

    add_command(
        csub, "data-figures", _data_figures, help="figures of the training data and its augmentation",
        description="Write augmented_samples.png (50 training images after --augment, with their classes), "
                    "val_class_distribution.png (the validation split training makes) and, for the study's "
                    "augmentation, augment_draws.png (one image, 10 draws of ColorJitter and 10 of RandomAffine) "
                    "into --out.",
        args=[data_dir(f"CIFAR-10 folder (default: {CifarTrainConfig.data_dir})", default=CifarTrainConfig.data_dir),
              arg("--out", required=True, metavar="DIR", help="folder for the PNG files (created if needed)"),
              arg("--seed", type=int, default=0, help="seed of the split and of the drawn images (default: 0)"),
              arg("--val-per-class", type=int, default=None, metavar="N",
                  help="validation images per class, as in training (default: 1000, or 20%% of each class "
                       "on smaller sets)"),
              arg("--skip-bad-images", action="store_true", help="skip image files that cannot be decoded"),
              arg("--augment", choices=AUGMENTS, default="study",
                  help="the training augmentation shown: study, crop-flip or none, as cifar train takes it "
                       "(default: study)")])

    compare = add_command(
        csub, "compare", _compare, help="train, evaluate and compare several variants (the study)",
        description="Train each variant (reusing finished runs in --out, resuming unfinished ones), evaluate it, "
                    "and write comparison.csv, comparison.md, report.md and a self-contained report.html. "
                    "The best variant is chosen by validation accuracy, never by test accuracy.",
        examples=["cnnlab cifar compare --blocks A,B,C,D,D-sep,E --width 0.25 --epochs 5 "
                  "--data-dir data/cifar10 --out studies/quick"],
        args=[arg("--blocks", default="A,B,C,D,D-sep,E", metavar="LIST",
                  help="comma-separated variants, each one block name or eight, e.g. A,E or AABBCCDE,E "
                       "(default: A,B,C,D,D-sep,E)"),
              arg("--out", required=True, metavar="STUDY_DIR", help="study folder (created; reused when rerun)"),
              arg("--seeds", metavar="LIST", help="comma-separated seeds, e.g. 0,1,2 (default: --seed)"),
              arg("--tsne-samples", type=int, default=2000, metavar="N",
                  help="test images in each t-SNE (default: 2000; 0 = all)"),
              arg("--no-evaluate", action="store_true", help="only train and tabulate; no figures"),
              TRAINING_OPTIONS_FILE,
              config_options(CifarTrainConfig, exclude=("blocks",),
                             title="training options of every variant (saved in each run's config.yaml)")])
    compare.set_defaults(rerun_continues=True)  # interrupted, the same command again continues it

    _add_recipes_command(csub)
    _add_use_commands(csub)


def _add_summary_command(csub: argparse._SubParsersAction) -> None:
    add_command(
        csub, "summary", _summary, help="layer table and trainable parameters of a variant",
        description="Print the layer table, trainable parameters and MACs of a BaseCNN variant.",
        args=[arg("--blocks", default="A", metavar="LIST",
                  help="comma-separated variants, each one block name or eight, e.g. A, D-sep, AABBCCDE or "
                       "A,E (default: A)"),
              arg("--width", type=float, default=1.0, help="channel multiplier (default: 1.0)"),
              arg("--pooling", choices=POOLINGS, default="intended",
                  help="intended (MaxPool after blocks 3, 5, 8) or original (the notebook's one MaxPool after "
                       "block 8; the same parameters, about 6x the MACs) (default: intended)"),
              arg("--json", action="store_true", help="print JSON instead of the table (a list for several variants)")])


def _add_recipes_command(csub: argparse._SubParsersAction) -> None:
    add_command(
        csub, "recipes", _recipes, help="list the training recipes (--recipe NAME), or print one",
        description="List the training recipes shipped with cnnlab, one line each, or print the YAML file of "
                    "one, to copy and change: a run given --recipe FILE.yaml starts from it.",
        examples=["cnnlab cifar recipes", "cnnlab cifar recipes fast > my.yaml"],
        args=[arg("name", nargs="?", metavar="NAME", help="print this recipe's YAML file")])


def _add_use_commands(csub: argparse._SubParsersAction) -> None:
    """What a trained run is for: classify images, export the network."""
    add_command(
        csub, "predict", _predict, help="the most probable classes of image files",
        description="Classify image files with the run's best checkpoint: each is decoded to RGB and resized to "
                    "32x32 as CIFAR folders are in training; its k most probable classes are printed.",
        examples=["cnnlab cifar predict runs/B cat.png ship.jpg -k 3 --json"],
        args=[_RUN_DIR,
              arg("images", nargs="+", metavar="IMAGE", help="image files"),
              arg("-k", type=int, default=5, help="classes per image (default: 5)"),
              arg("--json", action="store_true", help='print [{"image": .., "top": [{"class", "probability"}]}]'),
              DEVICE,
              ALLOW_UNFINISHED])

    add_command(
        csub, "export", _export, help="the classifier as an ONNX or TorchScript file",
        description="Write the best checkpoint's network to one file taking uint8 RGB images (batch, 3, 32, 32) "
                    "and returning logits (batch, classes); it normalises its input itself. Its metadata "
                    "(cnnlab.json) records the class names, the input size, mean and std.",
        examples=["cnnlab cifar export runs/B --format torchscript --out B.pt"],
        args=[_RUN_DIR,
              *EXPORT_FILE,
              ALLOW_UNFINISHED])
