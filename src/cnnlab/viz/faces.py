"""Face-verification figures, as pure functions of saved numbers (a run's metrics.csv, test_pairs.csv, ...).

Each function takes arrays (or rows) and a path and writes one PNG, so any
figure of any finished run can be drawn again without its model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.viz.common import figure, save

SAME_COLOUR = "#2a7ab9"
DIFF_COLOUR = "#d9661f"
GOOD, BAD = "#1a9850", "#d73027"


@dataclass
class RocCurve:
    """One ROC curve and its figures: ``far``/``tar`` from :func:`cnnlab.metrics.roc_curve`."""

    label: str
    far: np.ndarray
    tar: np.ndarray
    auc: float
    eer: float
    tar_at_far: float
    far_target: float = 1e-3
    far_resolved: bool = True
    """False with fewer than 1 / far_target different-people pairs: ``tar_at_far`` is then the TAR at FAR 0."""


def _column(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([float(r.get(key, math.nan)) for r in rows], dtype=float)


def plot_loss_curves(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Train and validation loss per epoch (left) and validation ROC AUC with the best epoch (right)."""
    epoch = _column(rows, "epoch")
    fig, (ax1, ax2) = figure(1, 2, figsize=(10, 3.8))
    train = _column(rows, "train_loss")
    ok = np.isfinite(train)
    ax1.plot(epoch[ok], train[ok], "o-", label="train", color="#555555", ms=3)
    ax1.plot(epoch, _column(rows, "val_loss"), "o-", label="validation", color=SAME_COLOUR, ms=3)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.set_title("loss (epoch 0: untrained network)")
    ax1.legend()
    auc = _column(rows, "val_roc_auc")
    ax2.plot(epoch, auc, "o-", color=SAME_COLOUR, ms=3)
    if np.isfinite(auc).any():
        b = int(np.nanargmax(auc))
        ax2.plot([epoch[b]], [auc[b]], "*", color=GOOD, ms=14, label=f"best: epoch {int(epoch[b])}, {auc[b]:.4f}")
        ax2.legend(loc="lower right")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("ROC AUC")
    ax2.set_title("validation ROC AUC (the best checkpoint)")
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def _split(distances: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.asarray(distances, dtype=float)
    s = np.asarray(same).astype(bool)
    return d[s], d[~s]


def plot_distance_boxplot(distances: np.ndarray, same: np.ndarray, threshold: float | None, path: str | Path,
                          title: str = "") -> Path:
    """Box plot of the pair distances, same person vs different people, with the decision threshold."""
    pos, neg = _split(distances, same)
    fig, ax = figure(figsize=(5, 4.2))
    bp = ax.boxplot([pos, neg], patch_artist=True, widths=0.5, showfliers=True,
                    flierprops={"markersize": 2, "alpha": 0.4})
    ax.set_xticks([1, 2], [f"same person\n({len(pos)} pairs)", f"different people\n({len(neg)} pairs)"])
    for patch, colour in zip(bp["boxes"], (SAME_COLOUR, DIFF_COLOUR)):
        patch.set_facecolor(colour)
        patch.set_alpha(0.6)
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
        ax.legend(loc="upper left")
    ax.set_ylabel("embedding distance")
    ax.set_title(title or "test-pair distances")
    return save(fig, path)


def plot_distance_histogram(distances: np.ndarray, same: np.ndarray, threshold: float | None, path: str | Path,
                            bins: int = 50, title: str = "") -> Path:
    """Overlaid histograms (densities) of same-person and different-people pair distances."""
    pos, neg = _split(distances, same)
    fig, ax = figure(figsize=(6, 4))
    both = np.concatenate([pos, neg])
    edges = np.linspace(float(both.min()), float(both.max()) + 1e-12, bins + 1) if both.size else bins
    ax.hist(pos, bins=edges, density=True, alpha=0.55, color=SAME_COLOUR, label=f"same person ({len(pos)})")
    ax.hist(neg, bins=edges, density=True, alpha=0.55, color=DIFF_COLOUR, label=f"different people ({len(neg)})")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("embedding distance")
    ax.set_ylabel("density")
    ax.set_title(title or "test-pair distances")
    ax.legend()
    return save(fig, path)


def plot_roc(curves: Sequence[RocCurve], path: str | Path, log_far: bool = False, title: str = "") -> Path:
    """ROC curves (TAR against FAR), each labelled with its AUC, EER and TAR at the target FAR.

    The EER point is marked on each curve; a dotted line marks the target
    FAR. With ``log_far`` the FAR axis is logarithmic (points at FAR = 0 are
    left out; the axis starts one decade below the smallest non-zero FAR).
    """
    fig, ax = figure(figsize=(6, 5))
    smallest = 1.0
    for c in curves:
        far, tar = np.asarray(c.far, dtype=float), np.asarray(c.tar, dtype=float)
        tar_far = f"{c.far_target:g}" if c.far_resolved else "0"
        label = f"{c.label}: AUC {c.auc:.4f}, EER {c.eer:.4f}, TAR@FAR={tar_far} {c.tar_at_far:.3f}"
        if log_far:
            keep = far > 0
            if keep.any():
                smallest = min(smallest, float(far[keep].min()))
            line, = ax.plot(far[keep], tar[keep], lw=1.6, label=label)
        else:
            line, = ax.plot(far, tar, lw=1.6, label=label)
        ax.plot([c.eer], [1 - c.eer], "o", color=line.get_color(), ms=5)
    target = curves[0].far_target if curves else 1e-3
    ax.axvline(target, color="grey", ls=":", lw=1)
    if log_far:
        ax.set_xscale("log")
        ax.set_xlim(min(smallest, target) / 10, 1.0)
    else:
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=1, ls="--")
        ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (FAR)" + (", log scale" if log_far else ""))
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title or "ROC of the test pairs (dots: EER)")
    ax.legend(loc="lower right", fontsize=8)
    return save(fig, path)


def plot_neighbours(thumbs: np.ndarray, query_names: Sequence[str], neighbour_names: Sequence[Sequence[str]],
                    correct: np.ndarray, distances: np.ndarray, path: str | Path) -> Path:
    """An image grid: each row a query image, then its nearest neighbours, nearest first.

    ``thumbs`` is uint8 (Q, 1 + K, 3, S, S), the query first in each row;
    a neighbour of the query's own person gets a green frame, anyone else a red one.
    """
    thumbs = np.asarray(thumbs)
    q, cols = thumbs.shape[:2]
    fig, axes = figure(q, cols, figsize=(1.25 * cols, 1.5 * q), squeeze=False)
    for r in range(q):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(thumbs[r, c].transpose(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            if c == 0:
                name, colour, width = query_names[r], "black", 2.5
                ax.set_title(_short(name), fontsize=6.5, fontweight="bold")
            else:
                ok = bool(correct[r, c - 1])
                name, colour, width = neighbour_names[r][c - 1], GOOD if ok else BAD, 3.0
                ax.set_title(f"{_short(name)}\n{distances[r, c - 1]:.3f}", fontsize=6)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colour)
                spine.set_linewidth(width)
    fig.suptitle("nearest neighbours among the test images (first column: query; green: same person)",
                 fontsize=9)
    return save(fig, path)


def _short(name: str, width: int = 16) -> str:
    name = name.replace("_", " ")
    return name if len(name) <= width else name[: width - 1] + "…"


def plot_val_auc_curves(histories: Sequence[tuple[str, Sequence[dict]]], path: str | Path) -> Path:
    """Validation ROC AUC per epoch of several runs, ``histories`` as (name, metrics rows)."""
    fig, ax = figure(figsize=(6, 4))
    for name, rows in histories:
        ax.plot(_column(rows, "epoch"), _column(rows, "val_roc_auc"), "o-", ms=3, label=name)
    ax.set_xlabel("epoch (0: untrained)")
    ax.set_ylabel("validation ROC AUC")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=8)
    return save(fig, path)
