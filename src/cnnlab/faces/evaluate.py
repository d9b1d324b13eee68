"""``cnnlab faces evaluate RUN_DIR --pairs pairs.txt``: LFW's View 2 protocol on a trained run.

View 2 (``pairs.txt``) is ten folds of 300 same-person and 300
different-people pairs. For each fold the decision threshold is chosen on
the other nine (the best accuracy there) and applied to it; the result is
the mean and the sample standard deviation of the ten accuracies
(:func:`cnnlab.metrics.kfold_accuracy`).

View 2 is drawn from all of LFW, so it shares people with any LFW training
set, View 1's ``peopleDevTrain.txt`` included: a pair whose person was
trained on is easier than a pair of strangers. The number of such pairs is
counted and stored beside the accuracy (``lfw_pairs_with_training_people``)
so a reader can judge the figure; the strict protocol trains ten models, each
without one fold's people.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.data.faces import load_faces
from cnnlab.data.lfw import read_pairs, resolve_pairs
from cnnlab.errors import ConfigError, DataError, param
from cnnlab.faces.analyze import pairs_file_name, write_run_report
from cnnlab.engine import check_finite
from cnnlab.faces.train import infer_embeddings
from cnnlab.files import atomic_write_text
from cnnlab.inference.runs import load_face_network
from cnnlab.metrics import equal_error_rate, kfold_accuracy, pair_distances, roc_auc
from cnnlab.run import FILE_ONLY, RunDir
from cnnlab.runtime import resolve_device, select_precision

logger = logging.getLogger(__name__)

VIEW2_PAIRS = "lfw_view2_pairs.csv"


def _training_people(cfg, faces) -> set[str] | None:
    """Names of the run's training people, when they can be worked out again (else None)."""
    from cnnlab.faces.protocol import load_study_data

    try:
        d = load_study_data(cfg, faces)
    except DataError as e:
        logger.info("cannot tell which pairs hold training people (%s)", e)
        return None
    return {d.faces.names[int(p)] for p in torch.unique(d.faces.labels[torch.cat([d.train, d.val])])}


def evaluate_pairs(run_dir: str | os.PathLike, pairs: str | os.PathLike, data_dir: str | None = None,
                   device: str = "auto", progress: bool = True, align: str | None = None,
                   allow_unfinished: bool = False) -> dict:
    """Score the run's best checkpoint on an LFW ``pairs.txt``; the figures go into ``summary.json``.

    Keys: ``lfw_accuracy_mean``, ``lfw_accuracy_std`` (sample std over
    folds), ``lfw_accuracy_std_error``, ``lfw_fold_accuracies``,
    ``lfw_roc_auc`` and ``lfw_eer`` (all pairs at once), ``lfw_num_pairs``,
    ``lfw_folds``, ``lfw_pairs_file`` and ``lfw_pairs_with_training_people``.
    Each pair's distance is written to ``lfw_view2_pairs.csv``. A run that
    has not finished training is refused unless ``allow_unfinished``.
    """
    run = RunDir(run_dir)
    with run.lock("faces evaluate"):
        return _evaluate_pairs(run, pairs, data_dir, device, progress, align, allow_unfinished)


def _evaluate_pairs(run: RunDir, pairs: str | os.PathLike, data_dir: str | None, device: str,
                    progress: bool, align: str | None = None, allow_unfinished: bool = False) -> dict:
    dev = resolve_device(device)
    model, cfg = load_face_network(run, "best", dev, allow_unfinished)
    if data_dir:
        cfg = replace(cfg, data_dir=str(data_dir))
    if align and align != cfg.align:
        logger.warning("%s was trained with --align %s; evaluating with --align %s", run.path, cfg.align, align)
        cfg = replace(cfg, align=align)
    pair_list = read_pairs(pairs)
    if pair_list.num_folds < 2:
        raise ConfigError(f"{param('pairs')} {pairs}: holds a single fold of pairs; View 2 evaluation needs several "
                          f"(LFW's pairs.txt has 10). pairsDevTest.txt is the test of {param('protocol')} lfw-view1")
    faces = load_faces(cfg.data_dir, image_size=cfg.image_size, crop=cfg.crop, skip_bad=cfg.skip_bad_images,
                           align=cfg.align)
    i, j = resolve_pairs(pair_list, faces)
    used = torch.unique(torch.cat([i, j]))
    choice = select_precision(dev, cfg.precision, cfg.channels_last)
    emb = infer_embeddings(model, faces.images[used], device=dev, batch_size=cfg.eval_batch_size,
                           precision=choice.precision, channels_last=choice.channels_last,
                           desc="embedding the pairs' images" if progress else None)
    check_finite(emb, "embeddings", f"the network of {run.best_checkpoint} ({choice.precision} on {dev})")
    dist = pair_distances(emb, torch.searchsorted(used, i), torch.searchsorted(used, j))
    same = pair_list.same
    kf = kfold_accuracy(dist, same, pair_list.fold)

    trained = _training_people(cfg, faces)
    overlap = None
    if trained is not None:
        overlap = sum(1 for (a, _), (b, _) in zip(pair_list.left, pair_list.right) if a in trained or b in trained)
        if overlap:
            logger.warning("%d of the %d pairs hold a person the run trained on; View 2 accuracy is optimistic "
                           "for such a run", overlap, len(pair_list))

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["fold", "same", "distance", "file_a", "file_b"])
    for f, s, dd, a, b in zip(pair_list.fold.tolist(), same.tolist(), dist.tolist(), i.tolist(), j.tolist()):
        w.writerow([f, int(s), repr(float(dd)), faces.files[a], faces.files[b]])
    atomic_write_text(run.path / VIEW2_PAIRS, buf.getvalue())

    values = {
        "lfw_accuracy_mean": kf.mean,
        "lfw_accuracy_std": kf.std,
        "lfw_accuracy_std_error": kf.std_error,
        "lfw_fold_accuracies": kf.per_fold.tolist(),
        "lfw_fold_thresholds": kf.thresholds.tolist(),
        "lfw_roc_auc": roc_auc(dist, same),
        "lfw_eer": equal_error_rate(dist, same)[0],
        "lfw_num_pairs": len(pair_list),
        "lfw_folds": pair_list.num_folds,
        "lfw_pairs_file": str(Path(pairs).resolve()),
        "lfw_pairs_with_training_people": overlap,
        "lfw_align": cfg.align,
    }
    what = pairs_file_name(str(pairs), pair_list.num_folds).replace("`", "")
    logger.info("%s: accuracy %.4f ± %.4f (std over %d folds), ROC AUC %.4f", what[0].upper() + what[1:], kf.mean,
                kf.std, pair_list.num_folds, values["lfw_roc_auc"], extra=FILE_ONLY)
    summary = run.update_summary(**values)
    if (run.path / "report.md").is_file():  # analyze came first: its report gains this evaluation
        write_run_report(run)
    return summary
