"""``cnnlab faces ...``: the subcommands of the face-verification study. Thin: parse, call one function, print."""

from __future__ import annotations

import argparse
import json
from pathlib import Path



_EXAMPLES_TRAIN = """\
examples:
  cnnlab faces train --data-dir data/lfw --protocol lfw-view1 --epochs 3 --precision bf16 --out runs/view1
  cnnlab faces train --data-dir data/my-faces --loss triplet --miner semi-hard --out runs/triplet
  cnnlab faces train --data-dir data/lfw --protocol lfw-view1 --epochs 0 --out runs/imagenet
  cnnlab faces train --resume runs/view1"""


_RESULT_KEYS = ("roc_auc", "eer", "accuracy", "threshold", "tar_at_far_1e-3", "precision_at_1", "map_at_r",
                "best_val_roc_auc", "train_seconds")


# --------------------------------------------------------------------------- handlers


def _train(args: argparse.Namespace) -> int:
    from cnnlab.cli import print_result, train_command
    from cnnlab.config import FaceTrainConfig
    from cnnlab.faces.train import resume_config, train

    print_result(train_command(args, FaceTrainConfig, resume_config, train, "faces train"), _RESULT_KEYS)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from cnnlab.faces.evaluate import evaluate_pairs

    s = evaluate_pairs(args.run_dir, args.pairs, data_dir=args.data_dir, device=args.device)
    print(f"LFW accuracy {s['lfw_accuracy_mean']:.4f} ± {s['lfw_accuracy_std']:.4f} (std over {s['lfw_folds']} "
          f"folds; standard error {s['lfw_accuracy_std_error']:.4f})  ROC AUC {s['lfw_roc_auc']:.4f}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from cnnlab.cli import print_result
    from cnnlab.faces.analyze import analyze

    s = analyze(args.run_dir, device=args.device, seed=args.seed, log_far=args.log_far, data_dir=args.data_dir,
                queries=args.queries, k=args.k)
    print_result(s, _RESULT_KEYS)
    print(f"figures: {Path(args.run_dir) / 'figures'}")
    print(f"report: {Path(args.run_dir) / 'report.html'}")
    return 0


def _figures(args: argparse.Namespace) -> int:
    from cnnlab.faces.analyze import redraw_figures

    for path in redraw_figures(args.run_dir, log_far=args.log_far):
        print(path)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from cnnlab.faces.compare import compare_runs, comparison_markdown

    rows = compare_runs(args.runs, args.out)
    print(comparison_markdown(rows))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from cnnlab.faces.verify import verify

    r = verify(args.run_dir, args.image_a, args.image_b, device=args.device)
    if args.json:
        print(json.dumps(r))
    else:
        verdict = "same person" if r["same_person"] else "different people"
        print(f"distance {r['distance']:.4f}  threshold {r['threshold']:.4f}  {verdict}")
    return 0


def _identify(args: argparse.Namespace) -> int:
    from cnnlab.faces.verify import identify

    rows = identify(args.run_dir, args.probe, args.gallery, k=args.k, device=args.device)
    if args.json:
        print(json.dumps(rows))
        return 0
    width = max(len(r["name"]) for r in rows)
    print(f"{'rank':>4}  {'name':<{width}}  {'distance':>8}  match  nearest image")
    for r in rows:
        print(f"{r['rank']:>4}  {r['name']:<{width}}  {r['distance']:>8.4f}  {'yes' if r['same_person'] else 'no':<5}  "
              f"{r['image']}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from cnnlab.cli import build_config, config_overrides
    from cnnlab.config import FaceSearchConfig, FaceTrainConfig, from_dict
    from cnnlab.search import search

    base = build_config(FaceTrainConfig, args)
    cfg = from_dict(FaceSearchConfig, config_overrides(args, FaceSearchConfig), source="options")
    r = search(base, cfg, args.out)
    print(f"study {r['study']}: {r['complete']} finished, {r['failed']} failed, {r['pruned']} pruned trial(s)")
    if r["best"]:
        b = r["best"]
        print(f"best trial {b['trial']}: validation ROC AUC {b['val_roc_auc']:.4f}  "
              + "  ".join(f"{k} {v}" for k, v in b["params"].items()))
        print(f"best run: {Path(args.out) / b['run_dir']}")
    print(f"trials: {Path(args.out) / 'trials.csv'}")
    return 0


def _download(args: argparse.Namespace) -> int:
    from cnnlab.data.lfw import LFW_URL, download_lfw

    path = download_lfw(args.data_dir, base_url=args.url or LFW_URL)
    print(f"LFW is in {path}; train with --data-dir {path} --protocol lfw-view1")
    return 0


# --------------------------------------------------------------------------- parsers


def add_faces(sub: argparse._SubParsersAction) -> None:
    """Register ``cnnlab faces`` and its subcommands."""
    from cnnlab.cli import add_config_args, add_device_arg, add_train_args
    from cnnlab.config import FaceSearchConfig, FaceTrainConfig

    raw = argparse.RawDescriptionHelpFormatter
    faces = sub.add_parser("faces", help="Siamese face verification",
                           description="Face verification with Siamese networks: train, search, analyse, compare, "
                                       "then verify and identify faces with a trained run.")
    fsub = faces.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = fsub.add_parser(
        "train", help="train a Siamese network into a run folder",
        description="Train backbone + embedding head with the contrastive or triplet loss. The run folder gets "
                    "config.yaml, metrics.csv, summary.json, checkpoints/{best,last}.pt, test_pairs.csv, "
                    "test_embeddings.pt and train.log; --resume continues it. --epochs 0 scores the untrained "
                    "(ImageNet) network.",
        epilog=_EXAMPLES_TRAIN, formatter_class=raw)
    add_train_args(p, FaceTrainConfig)
    p.set_defaults(func=_train)

    p = fsub.add_parser(
        "evaluate", help="LFW View 2: 10-fold accuracy on pairs.txt",
        description="Score the run's best checkpoint on LFW's pairs.txt: for each fold the threshold is chosen on "
                    "the other folds. lfw_accuracy_mean and lfw_accuracy_std go into summary.json. View 2 shares "
                    "people with LFW training sets; the count of such pairs is reported with it.",
        epilog="example:\n  cnnlab faces evaluate runs/view1 --pairs data/lfw/pairs.txt", formatter_class=raw)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run of cnnlab faces train")
    p.add_argument("--pairs", required=True, metavar="FILE", help="LFW pairs file with several folds (pairs.txt)")
    p.add_argument("--data-dir", metavar="DIR", help="face folder (default: the run's --data-dir)")
    add_device_arg(p)
    p.set_defaults(func=_evaluate)

    p = fsub.add_parser(
        "analyze", help="figures, retrieval scores and a report of a run",
        description="Write figures/ (loss curves, distance box plot and histogram with the threshold, ROC with AUC, "
                    "EER and TAR@FAR=1e-3, nearest neighbours of random test images), retrieval precision@1 and "
                    "MAP@R into summary.json, neighbours.pt, report.md and report.html.",
        epilog="example:\n  cnnlab faces analyze runs/view1 --log-far", formatter_class=raw)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run of cnnlab faces train")
    p.add_argument("--log-far", action="store_true", help="logarithmic FAR axis on the ROC")
    p.add_argument("--seed", type=int, default=0, help="seed choosing the query images (default: 0)")
    p.add_argument("--queries", type=int, default=5, help="query images in the neighbour grid (default: 5)")
    p.add_argument("-k", type=int, default=10, help="neighbours per query (default: 10)")
    p.add_argument("--data-dir", metavar="DIR", help="face folder, if the images have moved since training")
    add_device_arg(p)
    p.set_defaults(func=_analyze)

    p = fsub.add_parser(
        "figures", help="redraw a run's figures from its saved files",
        description="Redraw every figure of RUN_DIR from metrics.csv, test_pairs.csv and neighbours.pt, without "
                    "the model or the data.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run of cnnlab faces train")
    p.add_argument("--log-far", action="store_true", help="logarithmic FAR axis on the ROC")
    p.set_defaults(func=_figures)

    p = fsub.add_parser(
        "compare", help="compare finished runs: table, ROC curves, report",
        description="One table (ROC AUC, EER, accuracy, TAR@FAR=1e-3, P@1, MAP@R, training seconds, loss, margin), "
                    "overlaid ROC curves, comparison.csv, report.md and a self-contained report.html.",
        epilog="example:\n  cnnlab faces compare runs/margin1 runs/margin2 runs/triplet --out studies/ablation",
        formatter_class=raw)
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="finished runs of cnnlab faces train")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the comparison (created)")
    p.set_defaults(func=_compare)

    p = fsub.add_parser(
        "verify", help="are two face images the same person?",
        description="Print the distance of two images' embeddings, the run's threshold (chosen on its validation "
                    "pairs) and the verdict.",
        epilog="example:\n  cnnlab faces verify runs/view1 a.jpg b.jpg --json", formatter_class=raw)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run of cnnlab faces train")
    p.add_argument("image_a", metavar="A", help="first image file")
    p.add_argument("image_b", metavar="B", help="second image file")
    p.add_argument("--json", action="store_true",
                   help='print {"distance": .., "threshold": .., "same_person": true|false}')
    add_device_arg(p)
    p.set_defaults(func=_verify)

    p = fsub.add_parser(
        "identify", help="the nearest people to a face in a gallery",
        description="Embed the gallery (one sub-folder per person; cached per run and gallery) and list the k "
                    "people nearest to the probe image, each with their nearest image.",
        epilog="example:\n  cnnlab faces identify runs/view1 probe.jpg --gallery data/office -k 5",
        formatter_class=raw)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run of cnnlab faces train")
    p.add_argument("probe", metavar="PROBE", help="image file of the face to identify")
    p.add_argument("--gallery", required=True, metavar="DIR", help="folder with one sub-folder per person")
    p.add_argument("-k", type=int, default=10, help="people to list (default: 10)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    add_device_arg(p)
    p.set_defaults(func=_identify)

    p = fsub.add_parser(
        "search", help="random search over training options (Optuna)",
        description="Random search (Optuna RandomSampler) over lr, margin, step size, gamma and epochs, or the "
                    "options of --space. Each trial is a run folder OUT/trial-NNNN; trials are ranked by validation "
                    "ROC AUC (the validation loss depends on the margin). Writes trials.csv, best_params.yaml and "
                    "best_run.txt. Running it again continues the study. Workers on several machines share a study "
                    "through --storage postgresql://... or mysql://... (with the SQLAlchemy driver installed).",
        epilog="examples:\n"
               "  cnnlab faces search --data-dir data/lfw --protocol lfw-view1 --trials 10 --out searches/v1\n"
               "  cnnlab faces search --space space.yaml --storage postgresql://me:pw@db/optuna --study v1 "
               "--trials 40 --data-dir data/lfw --out searches/v1\n\n"
               "space.yaml:\n  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
               "  margin: {type: float, low: 0.5, high: 2.0}\n  step_size: {type: int, low: 5, high: 15}\n"
               "  gamma: {type: categorical, choices: [0.1, 0.3, 0.5]}\n"
               "  epochs: {type: categorical, choices: [10, 20, 30]}",
        formatter_class=raw)
    p.add_argument("--out", required=True, metavar="DIR", help="search folder (created; reused when rerun)")
    p.add_argument("--config", metavar="FILE", help="YAML file of training options")
    add_config_args(p, FaceSearchConfig)
    add_config_args(p, FaceTrainConfig)
    p.set_defaults(func=_search)

    p = fsub.add_parser(
        "download", help="download LFW (deep-funneled) and its protocol files",
        description="Fetch lfw-deepfunneled.tgz and pairsDevTrain.txt, pairsDevTest.txt, peopleDevTrain.txt, "
                    "peopleDevTest.txt, pairs.txt and people.txt from LFW's site into --data-dir, check their md5 "
                    "and unpack the images (about 110 MB).")
    p.add_argument("--data-dir", required=True, metavar="DIR", help="folder to put LFW in (created)")
    p.add_argument("--url", metavar="URL", help="another location of the same files, e.g. file:///mnt/lfw/")
    p.set_defaults(func=_download)
