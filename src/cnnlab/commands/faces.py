"""``cnnlab faces ...``: the subcommands of the face-verification study. Thin: parse, call one function, print."""

from __future__ import annotations

import argparse
import urllib.parse
import urllib.request
from pathlib import Path

from cnnlab.commands import checks
from cnnlab.config import FACE_ALIGNS, FaceSearchConfig, FaceTrainConfig, from_dict
from cnnlab.errors import ConfigError, DataError, shown_path
from cnnlab.commands.options import (ALLOW_UNFINISHED, DEVICE, EXPORT_FILE, RESUME_NOTES, TRAINING_OPTIONS_FILE, add_command,
                            add_figures_command, arg, build_config, config_options, config_overrides, data_dir,
                            export_file, offline_advice, print_result, report_files, run_dir, train_args, train_command)
from cnnlab.search import RANKING


_RESULT_KEYS = ("roc_auc", "eer", "accuracy", "threshold", "tar_at_far_1e-3", "precision_at_1", "map_at_r",
                "best_val_roc_auc", "best_epoch", "train_seconds")


# --------------------------------------------------------------------------- advice and cheap checks
# Each handler checks what costs nothing (paths, values) before it loads a network or decodes images.

_LFW_FILES = "lfw-deepfunneled.tgz and the protocol files"
# Said where a download of LFW fails, as the command that failed can act on it.
_OFFLINE_TRAIN = (f"point --data-dir at a copy of LFW already on disk, or fetch {_LFW_FILES} elsewhere and run "
                  "cnnlab faces download --data-dir {folder} --url file:///path/to/that/folder/")
_OFFLINE_DOWNLOAD = (f"fetch {_LFW_FILES} elsewhere and give the folder holding them as --url "
                     "file:///path/to/that/folder/; or train with --data-dir at a copy of LFW already on disk")


def _centre_crop_advice(option: str = "give --align center"):
    """A face not found, or a detector not installed, advised with the command's own option."""
    from cnnlab.data.align import centre_crop_advice

    return centre_crop_advice(f"use a photo in which the face is visible, or {option} to take the centre crop instead",
                              f"or {option} to take the centre crop instead")


def _checked_train(cfg: FaceTrainConfig, out, **kwargs) -> dict:
    """``train``, once the face folder is known to be there (unless it is to be downloaded)."""
    from cnnlab.faces.train import train

    if not cfg.download:
        checks.input_folder(cfg.data_dir, "face folder")
    with offline_advice(_OFFLINE_TRAIN), _centre_crop_advice():
        return train(cfg, out, **kwargs)


def _check_data_dir(run, data_dir: str | None) -> None:
    """``--data-dir`` when given, else the folder the run was trained on, is a folder."""
    if data_dir is not None:
        checks.input_folder(data_dir, "--data-dir")
        return
    trained_on = run.read_config().get("data_dir")
    if isinstance(trained_on, str) and not Path(trained_on).expanduser().is_dir():
        raise DataError(f"{run.path} was trained on {trained_on}, which is no folder here; give --data-dir where "
                        "the faces are now")


# --------------------------------------------------------------------------- handlers


def _notes(summary: dict) -> dict:
    """The caveats of the headline numbers, worded as the reports word them."""
    from cnnlab.report import far_caveat

    return {"tar_at_far_1e-3": far_caveat(summary)}


def _train(args: argparse.Namespace) -> int:
    from cnnlab.faces.train import resume_config

    summary = train_command(args, FaceTrainConfig, resume_config, _checked_train, "faces train")
    print_result(summary, _RESULT_KEYS, where={"run": args.resume or args.out}, notes=_notes(summary))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    run = checks.run_folder(args.run_dir, FaceTrainConfig)
    checks.input_file(args.pairs, "--pairs")
    _check_data_dir(run, args.data_dir)
    from cnnlab.faces.evaluate import evaluate_pairs
    from cnnlab.report import headline

    with _centre_crop_advice():
        s = evaluate_pairs(args.run_dir, args.pairs, data_dir=args.data_dir, device=args.device, align=args.align,
                           allow_unfinished=args.allow_unfinished)
    # As the report's Pairs evaluation table writes them.
    print(f"LFW accuracy {s['lfw_accuracy_mean']:.4f} ± {s['lfw_accuracy_std']:.4f} (std over {s['lfw_folds']} "
          f"folds; standard error {s['lfw_accuracy_std_error']:.4f})  "
          f"ROC AUC {headline('lfw_roc_auc', s['lfw_roc_auc'])}")
    md, page = report_files(args.run_dir)
    # The report is analyze's: evaluate adds itself to one that is there.
    print_result({}, (), where={"summary": Path(args.run_dir) / "summary.json",
                                "report": (md, page) if md.is_file() else
                                f"none yet (cnnlab faces analyze {shown_path(args.run_dir)} writes it, with this "
                                "evaluation)"})
    return 0


def _analyze(args: argparse.Namespace) -> int:
    checks.run_folder(args.run_dir, FaceTrainConfig)
    checks.positive(args.queries, "--queries")
    checks.positive(args.k, "-k")
    if args.data_dir is not None:
        checks.input_folder(args.data_dir, "--data-dir")
    from cnnlab.faces.analyze import analyze

    s = analyze(args.run_dir, device=args.device, seed=args.seed, log_far=args.log_far, data_dir=args.data_dir,
                queries=args.queries, k=args.k)
    print_result(s, _RESULT_KEYS, where={"figures": Path(args.run_dir) / "figures",
                                         "report": report_files(args.run_dir)}, notes=_notes(s))
    return 0


def _figures(args: argparse.Namespace) -> int:
    checks.run_folder(args.run_dir, FaceTrainConfig)
    from cnnlab.faces.analyze import redraw_figures

    for path in redraw_figures(args.run_dir, log_far=args.log_far):
        print(shown_path(path))
    return 0


def _compare(args: argparse.Namespace) -> int:
    for run in args.runs:
        checks.run_folder(run, FaceTrainConfig)
    checks.output_folder(args.out, "--out")
    from cnnlab.faces.compare import compare_runs, comparison_markdown

    rows = compare_runs(args.runs, args.out)
    print(comparison_markdown(rows))
    print_result({}, (), where={"comparison": Path(args.out), "report": report_files(args.out)})
    return 0


def _verify(args: argparse.Namespace) -> int:
    checks.run_folder(args.run_dir, FaceTrainConfig)
    checks.input_file(args.image_a, "image")
    checks.input_file(args.image_b, "image")
    from cnnlab.inference.faces import FaceVerifier
    from cnnlab.files import dumps_json

    fv = FaceVerifier.from_run(args.run_dir, device=args.device, align=args.align,
                               allow_unfinished=args.allow_unfinished)
    with _centre_crop_advice():
        r = fv.verify(args.image_a, args.image_b)
    if args.json:
        print(dumps_json(r))
        return 0
    verdict = "same person" if r["same_person"] else "different people"
    print(f"distance {r['distance']:.4f}  threshold {r['threshold']:.4f}  {verdict}")
    counts = [len(c) for c in r["compared"]]
    if max(counts) > 1:  # say which faces the answer is for
        for name, face, n in zip((args.image_a, args.image_b), r["faces"], counts):
            print(f"  {shown_path(name)}: {n} face(s) compared; the closest pair's is at {_box(face)}")
    return 0


def _box(face: dict | None) -> str:
    """A face's box as a reader wants it: x0,y0 - x1,y1 in whole pixels (or that there is none)."""
    if face is None:
        return "the centre crop"
    x0, y0, x1, y1 = (round(v) for v in face["box"])
    return f"({x0}, {y0}) - ({x1}, {y1})"


def _align(args: argparse.Namespace) -> int:
    checks.input_folder(args.src, "face folder")
    checks.output_folder(args.dst, "DST")
    from cnnlab.faces.align_folder import align_folder

    with _centre_crop_advice(option="train on SRC itself with --align center"):  # this command is detection
        r = align_folder(args.src, args.dst, size=args.size)
    done = r["aligned"] + r["kept_from_before"]
    print(f"{done} of {r['images']} images aligned into {shown_path(args.dst)} ({len(r['no_face'])} without a face, "
          f"{len(r['bad'])} unreadable: see {shown_path(Path(args.dst) / 'cnnlab-aligned.json')})")
    return 0


def _identify(args: argparse.Namespace) -> int:
    checks.run_folder(args.run_dir, FaceTrainConfig)
    checks.input_file(args.probe, "image")
    checks.input_folder(args.gallery, "--gallery")
    checks.positive(args.k, "-k")
    from cnnlab.inference.faces import FaceVerifier
    from cnnlab.files import dumps_json

    fv = FaceVerifier.from_run(args.run_dir, device=args.device, align=args.align,
                               allow_unfinished=args.allow_unfinished)
    with _centre_crop_advice():
        each = fv.identify_faces(args.probe, args.gallery, k=args.k)
    if args.json:
        print(dumps_json(each))
        return 0
    for n, answer in enumerate(each, 1):
        if len(each) > 1:
            print(f"face {n} of {len(each)}, at {_box(answer['face'])}" + (" (the one the photo is of)" if n == 1 else ""))
        rows = answer["matches"]
        width = max(len(r["name"]) for r in rows)
        print(f"{'rank':>4}  {'name':<{width}}  {'distance':>8}  match  nearest image")
        for r in rows:
            print(f"{r['rank']:>4}  {r['name']:<{width}}  {r['distance']:>8.4f}  "
                  f"{'yes' if r['same_person'] else 'no':<5}  {r['image']}")
    return 0


def _export(args: argparse.Namespace) -> int:
    checks.output_file(args.out, "--out")
    meta = export_file("faces", args, check_run=lambda: checks.run_folder(args.run_dir, FaceTrainConfig))
    pre = meta["preprocessing"]
    how = f"centre crop {pre['crop']}" if pre["align"] == "center" else "faces aligned to the five-point template"
    print(f"embedding network ({meta['output']['shape'][1]}-d, threshold {meta['threshold']:.4f}) written to "
          f"{shown_path(args.out)}; input uint8 RGB (batch, 3, {meta['input']['shape'][-1]}, {meta['input']['shape'][-1]}), "
          f"{how}")
    return 0


def _search(args: argparse.Namespace) -> int:
    from cnnlab.search import search

    base = build_config(FaceTrainConfig, args)
    cfg = from_dict(FaceSearchConfig, config_overrides(args, FaceSearchConfig), source="options")
    checks.output_folder(args.out, "--out")
    if cfg.space:
        checks.input_file(cfg.space, "--space")
    with offline_advice(_OFFLINE_TRAIN), _centre_crop_advice():
        r = search(base, cfg, args.out)
    print(f"study {r['study']}: {r['complete']} finished, {r['failed']} failed, {r['pruned']} pruned trial(s)")
    if r["best"]:
        b = r["best"]
        print(f"best trial {b['trial']}: validation ROC AUC {b['val_roc_auc']:.4f} (best epoch {b['best_epoch']})  "
              + "  ".join(f"{k} {v}" for k, v in b["params"].items()))
        print(f"best run: {shown_path(Path(args.out) / b['run_dir'])}")
    print(f"trials: {shown_path(Path(args.out) / 'trials.csv')}")
    return 0


def _check_url(url: str) -> None:
    """A local ``--url`` (file:// or a path) must be the folder holding LFW's files, not one of them."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("", "file") or (parts.scheme == "file" and parts.netloc not in ("", "localhost")):
        return  # a server's, or one download_url explains
    folder = Path(urllib.request.url2pathname(parts.path) if parts.scheme == "file" else url)
    if folder.is_file():
        raise ConfigError(f"--url {url} names a file; give the folder holding {_LFW_FILES}, e.g. "
                          f"{folder.parent.resolve().as_uri()}/")
    if not folder.is_dir():
        raise ConfigError(f"--url {url}: {shown_path(folder)} is no folder here; give the folder holding "
                          f"{_LFW_FILES}")


def _download(args: argparse.Namespace) -> int:
    checks.output_folder(args.data_dir, "--data-dir")
    if args.url:
        _check_url(args.url)
    from cnnlab.data.lfw import LFW_URL, download_lfw

    with offline_advice(_OFFLINE_DOWNLOAD):
        path = download_lfw(args.data_dir, base_url=args.url or LFW_URL)
    print(f"LFW is in {shown_path(path)}; train with --data-dir {shown_path(path)} --protocol lfw-view1")
    return 0


# --------------------------------------------------------------------------- parsers

_FINISHED_RUN = run_dir("a finished run of cnnlab faces train")
_ALIGN = arg("--align", choices=FACE_ALIGNS, default=None,
             help="how the face is found in each image: auto or detect (detect the face and its five landmarks, "
                  "align it), or center (the centre crop); default: as the run was trained, which is what its "
                  "threshold fits")
_LOG_FAR = arg("--log-far", action="store_true", help="logarithmic FAR axis on the ROC")
_REDRAW_LOG_FAR = arg("--log-far", action=argparse.BooleanOptionalAction, default=None,
                      help="logarithmic FAR axis on the ROC, or linear with --no-log-far (default: the axis the run "
                           "was analysed with, saved in summary.json)")

_SEARCH_SPACE_EXAMPLE = """\
space.yaml:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  margin: {type: float, low: 0.5, high: 2.0}
  step_size: {type: int, low: 5, high: 15}
  gamma: {type: categorical, choices: [0.1, 0.3, 0.5]}
  epochs: {type: categorical, choices: [10, 20, 30]}"""


def add_faces(sub: argparse._SubParsersAction) -> None:
    """Register ``cnnlab faces`` and its subcommands."""
    faces = sub.add_parser("faces", help="Siamese face verification",
                           description="Face verification with Siamese networks: train, search, analyse, compare, "
                                       "then verify and identify faces with a trained run.")
    fsub = faces.add_subparsers(dest="command", required=True, metavar="COMMAND")

    add_command(
        fsub, "train", _train, help="train a Siamese network into a run folder",
        description="Train backbone + embedding head with a pair, triplet or margin (CosFace, ArcFace) loss "
                    "(--loss). The run folder gets "
                    "config.yaml, metrics.csv, summary.json, checkpoints/{best,last}.pt, test_pairs.csv, "
                    "test_embeddings.pt and train.log; --resume continues it. --epochs 0 scores the untrained "
                    "(ImageNet) network.",
        notes=RESUME_NOTES,
        examples=["cnnlab faces train --data-dir data/lfw --protocol lfw-view1 --epochs 3 "
                  "--out runs/view1",
                  "cnnlab faces train --data-dir data/my-faces --loss triplet --miner semi-hard --out runs/triplet",
                  "cnnlab faces train --data-dir data/lfw --protocol lfw-view1 --epochs 0 --out runs/imagenet",
                  "cnnlab faces train --resume runs/view1 --epochs 10"],
        args=train_args(FaceTrainConfig))

    add_command(
        fsub, "evaluate", _evaluate, help="LFW View 2: 10-fold accuracy on pairs.txt",
        description="Score the run's best checkpoint on LFW's pairs.txt: for each fold the threshold is chosen on "
                    "the other folds. lfw_accuracy_mean and lfw_accuracy_std go into summary.json. View 2 shares "
                    "people with LFW training sets; the count of such pairs is reported with it.",
        examples=["cnnlab faces evaluate runs/view1 --pairs data/lfw/pairs.txt"],
        args=[_FINISHED_RUN,
              arg("--pairs", required=True, metavar="FILE", help="LFW pairs file with several folds (pairs.txt)"),
              data_dir("face folder (default: the run's --data-dir)"),
              _ALIGN,
              DEVICE,
              ALLOW_UNFINISHED])

    add_command(
        fsub, "analyze", _analyze, help="figures, retrieval scores and a report of a run",
        description="Write figures/ (loss curves, distance box plot and histogram with the threshold, ROC with AUC, "
                    "EER and TAR@FAR=1e-3, nearest neighbours of random test images), retrieval precision@1 and "
                    "MAP@R into summary.json, neighbours.pt, report.md and report.html.",
        examples=["cnnlab faces analyze runs/view1 --log-far"],
        args=[_FINISHED_RUN,
              _LOG_FAR,
              arg("--seed", type=int, default=0, help="seed choosing the query images (default: 0)"),
              arg("--queries", type=int, default=5, help="query images in the neighbour grid (default: 5)"),
              arg("-k", type=int, default=10, help="neighbours per query (default: 10)"),
              data_dir("face folder, if the images have moved since training"),
              DEVICE])

    add_figures_command(
        fsub, _figures,
        description="Redraw every figure of RUN_DIR from metrics.csv, test_pairs.csv and neighbours.pt, without "
                    "the model or the data.",
        args=[run_dir("a run of cnnlab faces train"), _REDRAW_LOG_FAR])

    add_command(
        fsub, "compare", _compare, help="compare finished runs: table, ROC curves, report",
        description="One table (ROC AUC, EER, accuracy, TAR@FAR=1e-3, P@1, MAP@R, training seconds, loss, margin), "
                    "overlaid ROC curves, comparison.csv, report.md and a self-contained report.html.",
        examples=["cnnlab faces compare runs/margin1 runs/margin2 runs/triplet --out studies/ablation"],
        args=[arg("runs", nargs="+", metavar="RUN_DIR", help="finished runs of cnnlab faces train"),
              arg("--out", required=True, metavar="DIR", help="folder for the comparison (created)")])

    _add_use_commands(fsub)

    search = add_command(
        fsub, "search", _search, help="random search over training options (Optuna)",
        description="Random search (Optuna RandomSampler) over lr, margin, step size, gamma and epochs (the "
                    "margin's range fitted to --loss; cosface and arcface also draw --scale), or the options of "
                    "--space. Each trial is a run folder OUT/trial-NNNN; " + RANKING + ". Writes "
                    "trials.csv, best_params.yaml and "
                    "best_run.txt. Running it again continues the study. Workers on several machines share a study "
                    "through --storage postgresql://... or mysql://... (with the SQLAlchemy driver installed).",
        examples=["cnnlab faces search --data-dir data/lfw --protocol lfw-view1 --trials 10 --out searches/v1",
                  "cnnlab faces search --space space.yaml --storage postgresql://me:pw@db/optuna --study v1 "
                  "--trials 40 --data-dir data/lfw --out searches/v1"],
        notes=_SEARCH_SPACE_EXAMPLE,
        args=[arg("--out", required=True, metavar="DIR", help="search folder (created; reused when rerun)"),
              TRAINING_OPTIONS_FILE,
              config_options(FaceSearchConfig, title="search options (the study: trials, space, storage)"),
              config_options(FaceTrainConfig, title="training options of every trial (saved in its config.yaml; "
                                                   "the space draws its own)")])
    search.set_defaults(rerun_continues=True)  # interrupted, the same command again continues it

    _add_download_command(fsub)


def _add_use_commands(fsub: argparse._SubParsersAction) -> None:
    """What a trained run is for: verify a pair, identify a face in a gallery, export the network."""
    add_command(
        fsub, "verify", _verify, help="are two face images the same person?",
        description="Print the distance of two images' embeddings, the run's threshold (chosen on its validation "
                    "pairs) and the verdict. Each image's face is found as in training (--align of the run); an "
                    "image without a face is an error naming it. Where an image holds several faces (a warning "
                    "says so), up to 5 of each are compared, the one the photo is of first (by the detector's "
                    "confidence, sharpness and size), and the answer is for the closest pair: is the person of "
                    "one photo in the other. The faces of that pair and every face compared are printed.",
        examples=["cnnlab faces verify runs/view1 a.jpg b.jpg --json"],
        args=[_FINISHED_RUN,
              arg("image_a", metavar="A", help="first image file"),
              arg("image_b", metavar="B", help="second image file"),
              arg("--json", action="store_true",
                  help='print {"distance": .., "threshold": .., "same_person": true|false, "faces": [the '
                       'pair\'s box, landmarks, score], "compared": [[every face of A], [every face of B]]}'),
              _ALIGN,
              DEVICE,
              ALLOW_UNFINISHED])

    add_command(
        fsub, "identify", _identify, help="the nearest people to a face in a gallery",
        description="Embed the gallery (one sub-folder per person; cached per run and gallery) and list the k "
                    "people nearest to the face in the probe image, each with their nearest image. A probe with "
                    "several faces gets a list for each (up to 5), the one the photo is of first (by the "
                    "detector's confidence, sharpness and size).",
        examples=["cnnlab faces identify runs/view1 probe.jpg --gallery data/office -k 5"],
        args=[_FINISHED_RUN,
              arg("probe", metavar="PROBE", help="image file of the face to identify"),
              arg("--gallery", required=True, metavar="DIR", help="folder with one sub-folder per person"),
              arg("-k", type=int, default=10, help="people to list (default: 10)"),
              arg("--json", action="store_true",
                  help='print [{"face": {box, landmarks, score} or null, "matches": [{"rank", "name", "distance", '
                       '"same_person", "image"}, ..]}, ..]: one entry per face of the probe'),
              _ALIGN,
              DEVICE,
              ALLOW_UNFINISHED])

    add_command(
        fsub, "export", _export, help="the embedding network as an ONNX or TorchScript file",
        description="Write the best checkpoint's embedding network to one file. It takes uint8 RGB images "
                    "(batch, 3, S, S), normalises them itself and returns the embeddings (batch, D). Its metadata "
                    "(cnnlab.json: ONNX metadata_props, TorchScript extra file) records the image size, how faces "
                    "are found (the alignment template and detector, or the centre crop), mean and std, whether "
                    "embeddings are L2-normalised and the run's threshold.",
        examples=["cnnlab faces export runs/view1 --format onnx --out view1.onnx"],
        args=[_FINISHED_RUN,
              *EXPORT_FILE,
              ALLOW_UNFINISHED])


def _add_download_command(fsub: argparse._SubParsersAction) -> None:
    add_command(
        fsub, "align", _align, help="detect and align every face of a folder into a new folder",
        description="Find the face and its five landmarks in every image of SRC (one sub-folder per person) and "
                    "write it aligned to the standard five-point template, --size pixels square, into DST with the "
                    "same layout. DST/cnnlab-aligned.json lists what was skipped and why (no face, unreadable). "
                    "Training, evaluation and galleries use DST's images as they are. Run again, it continues an "
                    "interrupted run.",
        examples=["cnnlab faces align photos/ aligned/", "cnnlab faces train --data-dir aligned/ --out runs/mine"],
        args=[arg("src", metavar="SRC", help="face folder: one sub-folder of images per person"),
              arg("dst", metavar="DST", help="folder for the aligned faces (created; new, or one this command "
                                             "wrote, to continue it)"),
              arg("--size", type=int, default=112, help="side of the aligned faces in pixels (default: 112)")])

    add_command(
        fsub, "download", _download, help="download LFW (deep-funneled) and its protocol files",
        description="Fetch lfw-deepfunneled.tgz and pairsDevTrain.txt, pairsDevTest.txt, peopleDevTrain.txt, "
                    "peopleDevTest.txt, pairs.txt and people.txt from LFW's site into --data-dir, check their md5 "
                    "and unpack the images (about 110 MB).",
        args=[arg("--data-dir", required=True, metavar="DIR", help="folder to put LFW in (created)"),
              arg("--url", metavar="URL", help="another location of the same files, e.g. file:///mnt/lfw/")])
