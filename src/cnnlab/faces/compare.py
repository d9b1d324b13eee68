"""``cnnlab faces compare RUN... --out DIR``: finished face runs side by side.

One table (test ROC AUC, EER, accuracy at each run's validation threshold,
TAR at FAR 1e-3, retrieval precision@1 and MAP@R, training seconds, loss and
margin), the runs' ROC curves overlaid (linear and logarithmic FAR), their
validation ROC AUC per epoch, and ``report.md`` with a self-contained
``report.html``. Used for the study's ablations: margin 1 vs 2, contrastive
vs triplet.

Distances of runs with different margins or losses live on different
scales, so the table compares margin-free figures only (AUC, EER, TAR,
accuracy at each run's own threshold, retrieval); the loss values are not
compared.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

from cnnlab.errors import CnnlabError, param
from cnnlab.faces.analyze import read_test_pairs, roc_of
from cnnlab.files import atomic_write_text
from cnnlab.inference.runs import face_config
from cnnlab.run import RunDir

logger = logging.getLogger(__name__)

COLUMNS = [
    ("run", "run"), ("loss", "loss"), ("margin", "margin"), ("epochs", "epochs"),
    ("ROC AUC", "roc_auc"), ("EER", "eer"), ("accuracy", "accuracy"), ("TAR@FAR=1e-3", "tar_at_far_1e-3"),
    ("P@1", "precision_at_1"), ("MAP@R", "map_at_r"), ("val ROC AUC", "best_val_roc_auc"),
    ("best epoch", "best_epoch"),
    ("train s", "train_seconds"), ("pairs file accuracy", "lfw_accuracy_mean"),
]


def _names(runs: Sequence[RunDir]) -> list[str]:
    """Folder names, or parent/name where two runs share a name."""
    names = [r.path.resolve().name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.path.resolve().parent.name}/{r.path.resolve().name}" for r in runs]


def compare_runs(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> list[dict]:
    """Write the comparison of ``run_dirs`` into ``out``; return its table rows (one dict per run)."""
    from cnnlab.report import Figure, Section, Table, far_caveat, write_report
    from cnnlab.viz import faces as viz

    if len(run_dirs) < 1:
        raise CnnlabError("faces compare: give at least one run folder")
    runs = [RunDir(p) for p in run_dirs]
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"{param('out')} {out} is a file, expected a folder")
    rows, curves, histories = [], [], []
    unresolved = []  # the caveat of each run whose test pairs cannot resolve FAR = 1e-3
    for run, name in zip(runs, _names(runs)):
        cfg = face_config(run)
        summary = run.read_summary()
        if summary.get("status") != "finished":
            raise CnnlabError(f"{run.path} is not a finished face run; finish it with "
                              f"cnnlab faces train --resume {run.path}")
        row = {"run": name, "path": str(run.path)}
        for _, key in COLUMNS[1:]:
            row[key] = summary.get(key, getattr(cfg, key, None))
        if isinstance(row.get("train_seconds"), float):
            row["train_seconds"] = round(row["train_seconds"])
        rows.append(row)
        if far_caveat(summary):
            unresolved.append(f"{name}: {far_caveat(summary)}")
        curves.append(roc_of(read_test_pairs(run.path / "test_pairs.csv"), name))
        histories.append((name, run.read_metrics()))

    out.mkdir(parents=True, exist_ok=True)
    figures = [
        viz.plot_roc(curves, out / "roc.png", title="ROC of the test pairs (dots: EER)"),
        viz.plot_roc(curves, out / "roc_log.png", log_far=True, title="ROC, logarithmic FAR"),
        viz.plot_val_auc_curves(histories, out / "val_roc_auc.png"),
    ]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["run", "path", *[k for _, k in COLUMNS[1:]]], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "comparison.csv", buf.getvalue())

    used = [(label, key) for label, key in COLUMNS if any(r.get(key) is not None for r in rows)]
    table = Table([label for label, _ in used],
                  [[f"{r[key]:g}" if key == "margin" and isinstance(r.get(key), float) else _cell(r.get(key))
                    for _, key in used] for r in rows],
                  caption="Test figures of each run's best checkpoint (by validation ROC AUC); accuracy at the "
                          "threshold each run chose on its validation pairs."
                          + "".join(f" {c}." for c in unresolved)
                          + (" Best epoch 0: training did not improve on the untrained network, whose figures "
                             "these are." if any(r.get("best_epoch") == 0 and r.get("epochs") for r in rows) else ""))
    best = max(rows, key=lambda r: r["best_val_roc_auc"] if r.get("best_val_roc_auc") is not None else -1)
    intro = (f"{len(rows)} runs. The best by validation ROC AUC (runs are chosen on validation pairs, never on "
             f"the test) is **{best['run']}**.")
    sections = [
        Section("Table", "", [table]),
        Section("ROC curves", "", [Figure(figures[0], "ROC, linear FAR"), Figure(figures[1], "ROC, log FAR")]),
        Section("Training", "", [Figure(figures[2], "Validation ROC AUC per epoch (epoch 0: untrained)")]),
        Section("Runs", "", [Table(["run", "training images", "device", "precision", "trained by", "folder"],
                                   [[r["run"], *_made(RunDir(r["path"]).read_summary()), r["path"]] for r in rows])]),
    ]
    from cnnlab.run import command_line

    made = command_line()
    sections.append(Section("How this was made", f"This report: `{made}`." if made else
                            "This report: `cnnlab.faces.compare.compare_runs` (Python)."))
    write_report(out, "Face verification: comparison", sections, intro=intro)
    logger.debug("comparison of %d runs written to %s", len(rows), out)
    return rows


def _made(summary: dict) -> list:
    """A run's training-set size, device, precision and training command, for the Runs table."""
    n = summary.get("num_train_images")
    return [n if isinstance(n, int) else "–", summary.get("device", "–"), summary.get("precision", "–"),
            summary.get("command") or "not recorded"]


def _cell(v):
    if v is None:
        return math.nan
    return v


def comparison_markdown(rows: list[dict]) -> str:
    """The comparison table as Markdown (what the CLI prints)."""
    from cnnlab.report import markdown_table

    used = [(label, key) for label, key in COLUMNS if any(r.get(key) is not None for r in rows)]
    return markdown_table([label for label, _ in used], [[_cell(r.get(key)) for _, key in used] for r in rows])
