"""``cnnlab faces analyze RUN_DIR`` and ``cnnlab faces figures RUN_DIR``: the verification figures of a run.

``analyze`` reads what training saved (``test_pairs.csv``,
``test_embeddings.pt``; recomputed from the best checkpoint when missing),
scores retrieval over the test people (precision@1, MAP@R, into
``summary.json``), picks the nearest neighbours of a few random test images
and saves them with their thumbnails (``neighbours.pt``), then draws every
figure into ``RUN_DIR/figures`` and writes ``report.md`` / ``report.html``.

``figures`` (:func:`redraw_figures`) draws the same figures from those files
alone: no model, no data folder.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.align import NoFace, is_aligned_folder, prepare
from cnnlab.data.images import BadImage, center_crop_resize, decode_rgb
from cnnlab.errors import CnnlabError, DataError
from cnnlab.faces.train import UNTRAINED_BEST
from cnnlab.files import atomic_torch_save, load_checkpoint
from cnnlab.inference.runs import face_config, load_face_network
from cnnlab.metrics import (
    equal_error_rate,
    knn,
    mean_average_precision_at_r,
    operating_point_at_far,
    precision_at_1,
    roc_auc,
    roc_curve,
)
from cnnlab.run import RunDir

logger = logging.getLogger(__name__)

NEIGHBOURS = "neighbours.pt"
LOG_FAR_KEY = "roc_log_far"  # summary.json: the ROC's FAR axis as last chosen, kept by `faces figures`
FIGURES = ("loss_curves.png", "distance_boxplot.png", "distance_histogram.png", "roc.png", "neighbours.png")


# --------------------------------------------------------------------------- saved files


def read_test_pairs(path: str | Path) -> dict[str, np.ndarray]:
    """``test_pairs.csv`` as arrays: ``a``, ``b`` (rows of test_embeddings.pt), ``same`` (bool), ``distance``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} does not exist; it is written at the end of cnnlab faces train "
                        "(finish the run with cnnlab faces train --resume, or run cnnlab faces analyze on it)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"same", "distance"} <= set(rows[0]):
        raise DataError(f"{path} is not a test_pairs.csv of cnnlab (expected columns same, distance)")
    return {
        "a": np.array([int(r["a"]) for r in rows], dtype=np.int64),
        "b": np.array([int(r["b"]) for r in rows], dtype=np.int64),
        "same": np.array([int(r["same"]) == 1 for r in rows]),
        "distance": np.array([float(r["distance"]) for r in rows]),
        "file_a": [r.get("file_a", "") for r in rows],
        "file_b": [r.get("file_b", "") for r in rows],
    }


def roc_of(pairs: dict[str, np.ndarray], label: str, far_target: float = 1e-3):
    """A :class:`~cnnlab.viz.faces.RocCurve` of saved test pairs."""
    from cnnlab.viz.faces import RocCurve

    d, y = pairs["distance"], pairs["same"]
    far, tar, _ = roc_curve(d, y)
    point = operating_point_at_far(d, y, far_target)
    return RocCurve(label, far, tar, roc_auc(d, y), equal_error_rate(d, y)[0], point.tar, far_target, point.resolved,
                    negatives=int((~np.asarray(y, dtype=bool)).sum()))


def _retest(run: RunDir, device: str, data_dir: str | None) -> None:
    """Write test_pairs.csv and test_embeddings.pt from the best checkpoint (runs from before they existed)."""
    from cnnlab.faces.protocol import load_study_data
    from cnnlab.faces.train import test_run
    from cnnlab.runtime import resolve_device, select_precision

    cfg = face_config(run)
    if data_dir:
        cfg = replace(cfg, data_dir=str(data_dir))
    dev = resolve_device(device)
    choice = select_precision(dev, cfg.precision, cfg.channels_last)
    model, _ = load_face_network(run, "best", dev)
    logger.info("scoring the best checkpoint of %s on its test pairs again", run.path)
    scores = test_run(model, load_study_data(cfg), cfg, run, device=dev, precision=choice.precision,
                      channels_last=choice.channels_last)
    run.update_summary(**scores)


# --------------------------------------------------------------------------- nearest neighbours


def _thumbnail(root: Path, rel: str, size: int, crop: float, align: str = "center") -> np.ndarray:
    """The image ``root/rel`` as the network saw it: aligned or cropped as training did, ``size`` pixels."""
    img = decode_rgb(root / rel)
    try:
        img = prepare(img, size, crop, align, str(root / rel), is_aligned_folder(root)).image
    except NoFace:  # cannot happen for an image the run embedded; a file changed since
        img = center_crop_resize(img, size, crop)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)  # (3, S, S)


def nearest_neighbours(saved: dict, queries: int = 5, k: int = 10, seed: int = 0,
                       root: Path | None = None) -> dict:
    """The ``k`` nearest test images of ``queries`` random test images whose person has another image.

    Thumbnails are decoded from the image files (under ``root``, default the
    folder the run was trained from) exactly as training decoded them.
    """
    emb, labels = saved["embeddings"], saved["labels"]
    n = len(labels)
    counts = torch.bincount(labels)
    candidates = torch.nonzero(counts[labels] >= 2).flatten()
    if len(candidates) == 0 or n < 2:
        raise DataError("no test person has two or more images; there are no neighbours to show")
    k = min(k, n - 1)
    g = torch.Generator().manual_seed(seed)
    query = candidates[torch.randperm(len(candidates), generator=g)[:queries]]
    index, dist = knn(emb, k)
    index, dist = torch.from_numpy(index[query.numpy()]), torch.from_numpy(dist[query.numpy()])  # (Q, k)
    correct = labels[index] == labels[query][:, None]  # (Q, k)
    names = saved["names"]
    root = Path(root) if root is not None else Path(saved["root"])
    files = saved["files"]
    rows = []
    for q, nb in zip(query.tolist(), index.tolist()):
        rows.append(np.stack([_thumbnail(root, files[i], saved["image_size"], saved["crop"], saved.get("align", "center")) for i in [q, *nb]]))
    return {
        "query": query,
        "neighbours": index,
        "distances": dist.float(),
        "correct": correct,
        "query_names": [names[int(labels[q])] for q in query.tolist()],
        "neighbour_names": [[names[int(labels[i])] for i in nb] for nb in index.tolist()],
        "thumbnails": torch.from_numpy(np.stack(rows)),  # (Q, 1 + k, 3, S, S) uint8
    }


# --------------------------------------------------------------------------- figures


def redraw_figures(run_dir: str | Path, log_far: bool | None = None) -> list[Path]:
    """Draw every figure of a run from its saved files into ``RUN_DIR/figures``; return the paths written.

    ``log_far`` None keeps the ROC's FAR axis the run was last drawn with
    (``roc_log_far`` in ``summary.json``, linear if never chosen); True or
    False draws it so and saves that choice. Figures whose data is missing are
    skipped with a message (the neighbour grid needs ``neighbours.pt``, which
    ``analyze`` writes).
    """
    run = RunDir(run_dir)
    with run.lock("faces figures"):
        return _redraw_figures(run, log_far)


def _warn_if_older(what: str, epoch: object, best: int | None, run: RunDir, renew: str) -> None:
    """``what`` was drawn from the best checkpoint of ``epoch``; say so if the run's is another one now."""
    if isinstance(epoch, int) and best is not None and epoch != best:
        logger.warning("%s comes from the best checkpoint of epoch %d, but the run's best checkpoint is now epoch "
                       "%d: its figures are out of date; %s", what, epoch, best, renew)


def _redraw_figures(run: RunDir, log_far: bool | None) -> list[Path]:
    from cnnlab.viz import faces as viz

    cfg = face_config(run)  # a face run, or a clear error
    summary = run.read_summary()  # read before any figure is drawn: a bad one changes nothing
    out: list[Path] = []
    name = run.path.name
    if log_far is None:
        log_far = bool(summary.get(LOG_FAR_KEY, False))
    elif summary and summary.get(LOG_FAR_KEY) != log_far:
        summary = run.update_summary(**{LOG_FAR_KEY: bool(log_far)})
    if run.metrics_path.is_file():
        out.append(viz.plot_loss_curves(run.read_metrics(), run.figures / "loss_curves.png",
                                        title=curve_title(name, cfg, summary)))
    best = run.best_epoch()
    if (run.path / "test_pairs.csv").is_file():
        _warn_if_older("test_pairs.csv", summary.get("best_epoch"), best, run,
                       f"finish the run with cnnlab faces train --resume {run.path}")
        pairs = read_test_pairs(run.path / "test_pairs.csv")
        threshold = summary.get("threshold")
        out.append(viz.plot_distance_boxplot(pairs["distance"], pairs["same"], threshold,
                                             run.figures / "distance_boxplot.png", title=f"{name}: test pairs"))
        out.append(viz.plot_distance_histogram(pairs["distance"], pairs["same"], threshold,
                                               run.figures / "distance_histogram.png", title=f"{name}: test pairs"))
        out.append(viz.plot_roc([roc_of(pairs, name)], run.figures / "roc.png", log_far=log_far))
    else:
        logger.warning("%s has no test_pairs.csv; distance and ROC figures skipped", run.path)
    nb_path = run.path / NEIGHBOURS
    if nb_path.is_file():
        nb = load_checkpoint(nb_path)
        _warn_if_older(NEIGHBOURS, nb.get("checkpoint_epoch"), best, run, f"run cnnlab faces analyze {run.path}")
        out.append(viz.plot_neighbours(nb["thumbnails"].numpy(), nb["query_names"], nb["neighbour_names"],
                                       nb["correct"].numpy(), nb["distances"].numpy(),
                                       run.figures / "neighbours.png"))
    else:
        logger.info("%s has no %s yet (cnnlab faces analyze writes it); neighbour grid skipped", run.path, NEIGHBOURS)
    return out


def curve_title(name: str, cfg, summary: dict) -> str:
    """"run: efficientnet_lite0, 512-d, 20 epochs, 9,525 training images of 4,038 people"."""
    n, people = summary.get("num_train_images"), summary.get("num_train_people")
    size = f", {n:,} training images" + (f" of {people:,} people" if isinstance(people, int) else "") \
        if isinstance(n, int) else ""
    epochs = summary.get("epochs", cfg.epochs)
    return f"{name}: {cfg.backbone}, {cfg.embedding_dim}-d, {epochs} epoch{'s' if epochs != 1 else ''}{size}"


# --------------------------------------------------------------------------- analyze


def analyze(run_dir: str | Path, device: str = "auto", seed: int = 0, log_far: bool = False,
            data_dir: str | None = None, queries: int = 5, k: int = 10) -> dict:
    """Retrieval scores, nearest neighbours, every figure and a report of a finished face run."""
    run = RunDir(run_dir)
    with run.lock("faces analyze"):
        return _analyze(run, device, seed, log_far, data_dir, queries, k)


def _analyze(run: RunDir, device: str, seed: int, log_far: bool, data_dir: str | None, queries: int,
             k: int) -> dict:
    cfg = face_config(run)
    if run.read_summary().get("status") != "finished":
        raise CnnlabError(f"{run.path} is not a finished run (no summary.json status 'finished'); "
                          f"finish it with cnnlab faces train --resume {run.path}")
    emb_path = run.path / "test_embeddings.pt"
    if not emb_path.is_file() or not (run.path / "test_pairs.csv").is_file():
        _retest(run, device, data_dir)
    saved = load_checkpoint(emb_path)
    emb, labels = saved["embeddings"], saved["labels"]
    retrieval: dict = {}
    try:
        retrieval["precision_at_1"] = precision_at_1(emb, labels)
        retrieval["map_at_r"], retrieval["retrieval_queries"] = mean_average_precision_at_r(emb, labels)
    except ValueError as e:
        logger.warning("retrieval scores skipped: %s", e)
    root = Path(data_dir) if data_dir else None
    if root is not None:
        from cnnlab.data.faces import find_people_root

        root = find_people_root(root)
    try:
        nb = nearest_neighbours(saved, queries=queries, k=k, seed=seed, root=root)
        nb["checkpoint_epoch"] = run.read_summary().get("best_epoch")  # what figures checks it against
        atomic_torch_save(nb, run.path / NEIGHBOURS)
    except BadImage as e:
        logger.warning("neighbour grid skipped: %s (pass --data-dir where the images are now)", e)
    except DataError as e:
        logger.warning("neighbour grid skipped: %s", e)
    figures = _redraw_figures(run, log_far)
    summary = run.update_summary(**retrieval)
    write_run_report(run, cfg, summary, figures)
    return summary


def _test_text(summary: dict) -> str:
    """What the test pairs are, in words: where they come from and how the threshold was set."""
    from cnnlab.report import far_caveat

    n, same = summary.get("num_test_pairs"), summary.get("num_test_pairs_same")
    split = f" ({same:,} same person, {n - same:,} different people)" if isinstance(n, int) and isinstance(same, int) \
        else ""
    n_text = f"{n:,}" if isinstance(n, int) else "The"
    if summary.get("protocol") == "lfw-view1":
        where = "of LFW View 1 (`pairsDevTest.txt`), whose people never appear in training"
    else:
        people, images = summary.get("num_test_people"), summary.get("num_test_images")
        held = f"{people:,} held-out people" if isinstance(people, int) else "held-out people"
        where = f"drawn from {held}" + (f" ({images:,} images)" if isinstance(images, int) else "") + \
            ", none of whom appear in training or validation"
    val = summary.get("num_val_pairs")
    text = (f"{n_text} test pairs{split} {where}; the decision threshold is chosen on the "
            f"{f'{val:,} ' if isinstance(val, int) else ''}validation pairs.")
    caveat = far_caveat(summary)
    if caveat:
        text += f" {caveat}; the table leaves it out."
    return text


def pairs_file_name(path: str | None, folds: int | None) -> str:
    """"LFW View 2" for LFW's own ``pairs.txt`` (ten folds), else what the file is."""
    name = Path(path).name if path else "a pairs file"
    if name == "pairs.txt" and folds == 10:
        return "LFW View 2 (`pairs.txt`)"
    return f"the pairs of `{name}`"


def _pairs_section(summary: dict):
    """What ``cnnlab faces evaluate`` measured, as it measured it; None when it has not run."""
    from cnnlab.report import METRIC_COLUMNS, Section, Table

    if summary.get("lfw_accuracy_mean") is None:
        return None
    folds, n = summary.get("lfw_folds"), summary.get("lfw_num_pairs")
    what = pairs_file_name(summary.get("lfw_pairs_file"), folds)
    acc = f"{summary['lfw_accuracy_mean']:.4f} ± {summary.get('lfw_accuracy_std', math.nan):.4f}"
    rows = [["accuracy (mean ± std over the folds)", acc],
            ["folds", folds if folds is not None else "–"],
            ["pairs", n if n is not None else "–"],
            ["ROC AUC (all pairs at once)", summary.get("lfw_roc_auc", math.nan)],
            ["EER (all pairs at once)", summary.get("lfw_eer", math.nan)]]
    seen = summary.get("lfw_pairs_with_training_people")
    rows.append(["pairs holding a person seen in training",
                 f"{seen:,} of {n:,}" if isinstance(seen, int) and isinstance(n, int) else "not known"])
    text = (f"`cnnlab faces evaluate` on {what}: {n:,} pairs in {folds} folds, from "
            f"`{summary.get('lfw_pairs_file', '?')}`. Each fold is scored at the threshold chosen on the other folds.")
    if isinstance(seen, int) and seen:
        text += (f" {seen:,} pairs hold a person the run trained on, so this accuracy is optimistic beside a "
                 "result on strangers.")
    return Section("Pairs evaluation", text, [Table(METRIC_COLUMNS, rows)])


def write_run_report(run: RunDir, cfg=None, summary: dict | None = None,
                     figures: list[Path] | None = None) -> None:
    """``report.md`` and ``report.html`` of a face run, from its folder (the figures drawn so far)."""
    from cnnlab.report import METRIC_COLUMNS, Figure, Section, Table, config_table, provenance, seconds, write_report
    from cnnlab.run import command_line

    cfg = cfg if cfg is not None else face_config(run)
    summary = summary if summary is not None else run.read_summary()
    if figures is None:
        figures = [run.figures / n for n in FIGURES if (run.figures / n).is_file()]
    keys = [("ROC AUC", "roc_auc"), ("EER", "eer"), ("accuracy (validation threshold)", "accuracy"),
            ("threshold", "threshold"), ("TAR @ FAR = 1e-3", "tar_at_far_1e-3"), ("precision@1", "precision_at_1"),
            ("MAP@R", "map_at_r"), ("best validation ROC AUC", "best_val_roc_auc"), ("best epoch", "best_epoch")]
    hide = {"tar_at_far_1e-3"} if summary.get("tar_at_far_1e-3_resolved") is False else set()
    rows = [[label, summary[k] if summary.get(k) is not None else math.nan]
            for label, k in keys if k in summary and k not in hide]
    rows.append(["training time", seconds(summary.get("train_seconds"))])
    hide_b = {"tar_at_far_1e-3"} if summary.get("backbone_tar_at_far_1e-3_resolved") is False else set()
    backbone = [[label, summary.get(f"backbone_{k}")] for label, k in keys[:7]
                if summary.get(f"backbone_{k}") is not None and k not in hide_b]
    captions = {
        "loss_curves.png": "Loss and validation ROC AUC per epoch (epoch 0: the untrained network).",
        "distance_boxplot.png": "Test-pair distances by label, with the threshold chosen on validation.",
        "distance_histogram.png": "Test-pair distance histograms by label, with the threshold.",
        "roc.png": "ROC of the test pairs.",
        "neighbours.png": "Nearest test images of five random test images (green: same person).",
    }
    n, people = summary.get("num_train_images"), summary.get("num_train_people")
    intro = (f"{cfg.backbone} with a {cfg.embedding_dim}-d embedding head, {cfg.loss} loss (margin {cfg.margin:g}), "
             f"trained {summary.get('epochs', cfg.epochs)} epochs on "
             + (f"{n:,} images of {people:,} people" if isinstance(n, int) and isinstance(people, int)
                else "an unrecorded number of images")
             + f". The best checkpoint (epoch {summary.get('best_epoch', '?')}, by validation ROC AUC) is tested.")
    sections = [Section("Test", _test_text(summary), [Table(METRIC_COLUMNS, rows)])]
    pairs = _pairs_section(summary)
    if pairs is not None:
        sections.append(pairs)
    if backbone:
        sections.append(Section("Backbone features alone", "The same figures for the backbone's pooled features, "
                                "without the embedding head.", [Table(METRIC_COLUMNS, backbone)]))
    sections.append(Section("Figures", "", [Figure(p, captions.get(p.name, "")) for p in figures]))
    sections.append(provenance(summary, "faces", command_line(), "cnnlab.faces.analyze"))
    sections.append(Section("Configuration", "`config.yaml`; `cnnlab faces train --config config.yaml` repeats it.",
                            [config_table(cfg)]))
    if summary.get("best_epoch") == 0 and (summary.get("epochs") or 0) > 0:
        intro = (f"**{UNTRAINED_BEST[0].upper()}{UNTRAINED_BEST[1:]}**: best.pt is the network before training, "
                 "and the test figures below are its figures.\n\n" + intro)
    write_report(run.path, f"Face verification run {run.path.name}", sections, intro=intro)
