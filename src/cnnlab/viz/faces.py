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
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath
from matplotlib.ticker import PercentFormatter

from cnnlab.viz.common import epoch_ticks, figure, histogram_bins, round_ticks, save, series_style, suptitle

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
    negatives: int = 0
    """Different-people pairs behind the curve (0: unknown); the smallest FAR they resolve is 1 / negatives."""

    def smallest_far(self) -> float:
        """The smallest non-zero FAR these pairs can show: 1 / (different-people pairs)."""
        if self.negatives > 0:
            return 1.0 / self.negatives
        far = np.asarray(self.far, dtype=float)
        return float(far[far > 0].min()) if (far > 0).any() else 1.0


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
    ax1.legend(loc="best")
    auc = _column(rows, "val_roc_auc")
    ax2.plot(epoch, auc, "o-", color=SAME_COLOUR, ms=3)
    if np.isfinite(auc).any():
        b = int(np.nanargmax(auc))
        ax2.plot([epoch[b]], [auc[b]], "*", color=GOOD, ms=14, label=f"best: epoch {int(epoch[b])}, {auc[b]:.4f}")
        ax2.legend(loc="best")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("ROC AUC")
    ax2.set_title("validation ROC AUC (the best checkpoint)")
    for ax in (ax1, ax2):
        epoch_ticks(ax)
        round_ticks(ax.yaxis)
        # The best epoch is often the last and the highest point: leave room for the star's
        # half-width beyond it, on both panels so that their epochs line up.
        ax.margins(x=0.08)
    ax2.margins(y=0.12)
    if title:
        suptitle(fig, title)
    fig.tight_layout()  # room for the title above the panels' own titles
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
                    flierprops={"markersize": 2, "alpha": 0.4}, medianprops={"color": "black", "lw": 1.5})
    ax.set_xticks([1, 2], [f"same person\n({len(pos)} pairs)", f"different people\n({len(neg)} pairs)"])
    for patch, colour in zip(bp["boxes"], (SAME_COLOUR, DIFF_COLOUR)):
        patch.set_facecolor(colour)
        patch.set_alpha(0.6)
    if threshold is not None and math.isfinite(threshold):
        ax.axhline(threshold, color="black", ls="--", lw=1)
        # Named between the two boxes, where no box or whisker can be (a legend would sit on one).
        ax.text(1.5, threshold, f"threshold {threshold:.3f}", ha="center", va="bottom", fontsize=8)
    round_ticks(ax.yaxis)
    ax.set_ylabel("embedding distance")
    ax.set_title(title or "test-pair distances")
    return save(fig, path)


def plot_distance_histogram(distances: np.ndarray, same: np.ndarray, threshold: float | None, path: str | Path,
                            bins: int | None = None, title: str = "") -> Path:
    """Overlaid histograms of same-person and different-people pair distances, with the threshold.

    Each group's bars are its share of its own pairs (the groups may differ in
    size). The bins suit the number of pairs (:func:`~cnnlab.viz.common.histogram_bins`)
    unless ``bins`` is given; the legend sits beside the axes, over no bar.
    """
    pos, neg = _split(distances, same)
    fig, ax = figure(figsize=(7.5, 4))
    both = np.concatenate([pos, neg])
    if bins is None:
        edges = histogram_bins(both)
    else:
        edges = np.linspace(float(both.min()), float(both.max()) + 1e-12, bins + 1) if both.size else bins
    for values, colour, label in ((pos, SAME_COLOUR, "same person"), (neg, DIFF_COLOUR, "different people")):
        weights = np.full(len(values), 1.0 / max(len(values), 1))
        ax.hist(values, bins=edges, weights=weights, alpha=0.55, color=colour, edgecolor=colour,
                label=f"{label} ({len(values)} pairs)")
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.3f}")
    ax.set_xlabel("embedding distance")
    ax.set_ylabel("share of the group's pairs")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    round_ticks(ax.xaxis)
    ax.set_title(title or "test-pair distances")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, path)


def plot_roc(curves: Sequence[RocCurve], path: str | Path, log_far: bool = False, title: str = "") -> Path:
    """ROC curves (TAR against FAR), each labelled with its AUC, EER and TAR at the target FAR.

    The EER point is marked on each curve. A dotted line marks the target FAR
    where the pairs resolve it (at least 1 / target different-people pairs);
    the TAR at that FAR is in a curve's label only then. With ``log_far`` the
    FAR axis is logarithmic and starts at the smallest FAR the pairs can
    resolve, 1 / (different-people pairs): points at FAR = 0 cannot be drawn there.
    Several curves differ in colour, line style and marker, so one drawn over
    another still shows.
    """
    fig, ax = figure(figsize=(6, 5.6))
    target = curves[0].far_target if curves else 1e-3
    for i, c in enumerate(curves):
        far, tar = np.asarray(c.far, dtype=float), np.asarray(c.tar, dtype=float)
        label = f"{c.label}: AUC {c.auc:.4f}, EER {c.eer:.4f}"
        if c.far_resolved:
            label += f", TAR@FAR={far_text(c.far_target)} {c.tar_at_far:.3f}"
        keep = far > 0 if log_far else np.ones(len(far), bool)
        if len(curves) > 1:
            style = series_style(i)
            ax.plot(far[keep], tar[keep], label=label, ms=4, markevery=_markevery(int(keep.sum())), **style)
        else:
            style = {"color": "C0"}
            ax.plot(far[keep], tar[keep], label=label, lw=1.8, color="C0")
        ax.plot([c.eer], [1 - c.eer], "o", color=style["color"], ms=6, mec="black", mew=0.6)
    lowest = min((c.smallest_far() for c in curves), default=target)
    resolvable = [c for c in curves if c.far_resolved]
    if resolvable:
        ax.axvline(target, color="grey", ls=":", lw=1)
        ax.text(target, 0.02, f" FAR {far_text(target)}", color="grey", fontsize=8, rotation=90, va="bottom", ha="right")
    if log_far:
        ax.set_xscale("log")
        ax.set_xlim(lowest, 1.0)
    else:
        ax.plot([0, 1], [0, 1], color="lightgrey", lw=1, ls="--")
        ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false accept rate (FAR)" + (f", log scale from 1/{round(1 / lowest):,}" if log_far else ""))
    ax.set_ylabel("true accept rate (TAR)")
    ax.set_title(title or "ROC of the test pairs (dots: EER)")
    note = None
    if len(resolvable) < len(curves):
        note = (f"TAR@FAR={far_text(target)} needs at least {math.ceil(1 / target):,} different-people pairs; "
                + ", ".join(f"{c.label}: {c.negatives:,}" for c in curves if not c.far_resolved and c.negatives))
    # Below the axes: a legend inside would hide the part of the curve it sits on.
    leg = ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.13), fontsize=8, title=note,
                    title_fontsize=7.5, alignment="left")
    leg.get_title().set_color("0.35")
    return save(fig, path)


def far_text(far: float) -> str:
    """1e-3 rather than 0.001 or 1e-03: how the field writes a FAR."""
    if far >= 0.01:
        return f"{far:g}"
    mantissa, exponent = f"{far:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _markevery(n: int) -> int:
    """A marker on about every tenth point: enough to tell styles apart, few enough not to hide the line."""
    return max(1, n // 10)


# The neighbour grid, in inches: a column per image, each row a square image under its titles.
CELL = 1.25  # column pitch
IMAGE = 1.1  # image side; the rest of the pitch is the gap between images
NAME_SIZE, QUERY_SIZE = 6.0, 6.5  # points
TITLE_PAD = 4.0  # points between a title and its image (clear of its 3-point frame)
HEAD = 0.32  # the figure title's band above the first row's titles
ROW_GAP = 0.08  # between a row's images and the titles of the row below


def plot_neighbours(thumbs: np.ndarray, query_names: Sequence[str], neighbour_names: Sequence[Sequence[str]],
                    correct: np.ndarray, distances: np.ndarray, path: str | Path) -> Path:
    """An image grid: each row a query image, then its nearest neighbours, nearest first.

    ``thumbs`` is uint8 (Q, 1 + K, 3, S, S), the query first in each row;
    a neighbour of the query's own person gets a green frame, anyone else a red one.
    Every name is shown whole (:func:`fit_name`), above its image.
    """
    thumbs = np.asarray(thumbs)
    q, cols = thumbs.shape[:2]
    titles = [[_cell_title(r, c, query_names, neighbour_names, distances) for c in range(cols)] for r in range(q)]
    lines = max(text.count("\n") + 1 for row in titles for text, _ in row)
    fig, axes = figure(q, cols, squeeze=False, **_grid_geometry(q, cols, lines))
    for r in range(q):
        for c in range(cols):
            ax = axes[r][c]
            ax.imshow(thumbs[r, c].transpose(1, 2, 0))
            ax.set_xticks([])
            ax.set_yticks([])
            ax.grid(False)
            text, size = titles[r][c]
            ax.set_title(text, fontsize=size, fontweight="bold" if c == 0 else "normal", pad=TITLE_PAD)
            colour, lw = ("black", 2.5) if c == 0 else ((GOOD if correct[r, c - 1] else BAD), 3.0)
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color(colour)
                spine.set_linewidth(lw)
    fig.suptitle("nearest neighbours among the test images (first column: query; green: same person)",
                 fontsize=9, y=1 - 0.06 / fig.get_figheight(), va="top")
    return save(fig, path)


def _grid_geometry(rows: int, cols: int, lines: int) -> dict:
    """Figure size and subplot spacing of the neighbour grid, from its measures in inches: the
    images ``CELL`` apart, each row's titles (``lines`` high) just above it, the figure title just above all."""
    band = (lines * 1.2 * QUERY_SIZE + TITLE_PAD) / 72  # inches of titles above each row
    width, height = cols * CELL, HEAD + rows * (band + IMAGE) + (rows - 1) * ROW_GAP
    side = (CELL - IMAGE) / 2 / width
    return {"figsize": (width, height), "gridspec_kw": {
        "left": side, "right": 1 - side, "wspace": (CELL - IMAGE) / IMAGE,
        "top": 1 - (HEAD + band) / height, "bottom": 0.0, "hspace": (band + ROW_GAP) / IMAGE}}


def _cell_title(r: int, c: int, query_names, neighbour_names, distances) -> tuple[str, float]:
    """The title of one grid cell and its font size: the query's name, or a neighbour's name and distance."""
    room = CELL * 72 - 8  # points: a name may reach into the gap beside its image, not to the next name
    if c == 0:
        return fit_name(query_names[r], room, QUERY_SIZE, "bold")
    name, size = fit_name(neighbour_names[r][c - 1], room, NAME_SIZE)
    return f"{name}\n{distances[r, c - 1]:.3f}", size


def fit_name(name: str, width: float, size: float, weight: str = "normal") -> tuple[str, float]:
    """A person's whole name as text at most ``width`` points wide, and its font size.

    LFW writes names with underscores ("Gloria_Macapagal_Arroyo"). A name that
    does not fit on one line at ``size`` is split onto two at the space that
    balances the lines best; only a line that still does not fit shrinks the font.
    A name is never cut short: the surname is what tells two people apart.
    """
    text = " ".join(name.replace("_", " ").split())
    if _text_width(text, size, weight) <= width:
        return text, size
    words = text.split(" ")
    if len(words) > 1:
        splits = [(" ".join(words[:i]), " ".join(words[i:])) for i in range(1, len(words))]
        first, rest = min(splits, key=lambda pair: max(_text_width(t, size, weight) for t in pair))
        text = f"{first}\n{rest}"
    widest = max(_text_width(line, size, weight) for line in text.split("\n"))
    return text, size * min(1.0, width / widest)


def _text_width(text: str, size: float, weight: str) -> float:
    """Width in points of one line of ``text`` in the default font."""
    prop = FontProperties(size=size, weight=weight)
    return TextToPath().get_text_width_height_descent(text, prop, ismath=False)[0]


def plot_val_auc_curves(histories: Sequence[tuple[str, Sequence[dict]]], path: str | Path) -> Path:
    """Validation ROC AUC per epoch of several runs, ``histories`` as (name, metrics rows)."""
    fig, ax = figure(figsize=(6, 4))
    for i, (name, rows) in enumerate(histories):
        ax.plot(_column(rows, "epoch"), _column(rows, "val_roc_auc"), ms=4, label=name, **series_style(i))
    ax.set_xlabel("epoch (0: untrained)")
    ax.set_ylabel("validation ROC AUC")
    epoch_ticks(ax)
    round_ticks(ax.yaxis)
    ax.legend(fontsize=8, loc="best")
    return save(fig, path)
