"""Figures of the CIFAR-10 study, as pure functions of saved data.

Each function takes arrays (or a run's ``metrics.csv``) and an output path,
writes one PNG and returns its path. None of them trains, loads a model or
computes an embedding: t-SNE coordinates, confusion counts and feature maps
are computed once by ``cnnlab cifar evaluate`` and saved in the run folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.ticker import MaxNLocator, PercentFormatter

from cnnlab.run import read_metrics
from cnnlab.viz.common import STYLE, epoch_ticks, figure, plt, round_ticks, save, suptitle

__all__ = [
    "plot_curves",
    "plot_confusion_matrix",
    "plot_per_class_accuracy",
    "plot_tsne",
    "plot_feature_maps",
    "plot_image_grid",
    "plot_class_distribution",
    "plot_augment_draws",
    "channel_mosaic",
]


def _as_image(img: np.ndarray) -> np.ndarray:
    """(3, H, W) uint8 or float in [0, 1] -> (H, W, 3) for ``imshow``."""
    a = np.asarray(img)
    if a.ndim != 3 or a.shape[0] not in (1, 3):
        raise ValueError(f"expected an image of shape (3, H, W), got {a.shape}")
    a = a.transpose(1, 2, 0)
    if a.dtype == np.uint8:
        return a
    return np.clip(a.astype(np.float32), 0.0, 1.0)


def _show(ax, img: np.ndarray) -> None:
    # Nearest-neighbour keeps 32x32 pixels sharp instead of smearing them.
    ax.imshow(_as_image(img), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for s in ax.spines.values():
        s.set_visible(False)


def _class_colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


# --- a run's training ----------------------------------------------------------------


def plot_curves(metrics: str | Path | Sequence[dict], path: str | Path, best_epoch: int | None = None,
                title: str | None = None) -> Path:
    """Loss and accuracy per epoch, train vs validation, from ``metrics.csv`` (or its rows).

    The best epoch (by validation accuracy, the first of ties as training keeps
    it, unless ``best_epoch`` is given) is marked on both panels.
    """
    rows = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    if not rows:
        raise ValueError("no epochs to plot: the metrics hold no rows")
    col = lambda k: np.array([r.get(k, np.nan) for r in rows], dtype=np.float64)  # noqa: E731
    epochs = col("epoch")
    if best_epoch is None:
        best_epoch = int(epochs[int(np.nanargmax(col("val_accuracy")))])
    marker = "o" if len(rows) <= 40 else None

    fig, (ax_loss, ax_acc) = figure(1, 2, figsize=(11, 4.2))
    with plt.rc_context(STYLE):
        for ax, key, label in ((ax_loss, "loss", "loss (cross-entropy)"), (ax_acc, "accuracy", "accuracy")):
            ax.plot(epochs, col(f"train_{key}"), marker=marker, ms=3.5, lw=1.8, color="C0", label="train")
            ax.plot(epochs, col(f"val_{key}"), marker=marker, ms=3.5, lw=1.8, color="C1", label="validation")
            ax.axvline(best_epoch, color="0.4", ls="--", lw=1, label=f"best epoch ({best_epoch})")
            ax.set_xlabel("epoch")
            ax.set_ylabel(label)
            epoch_ticks(ax)
            round_ticks(ax.yaxis)
            if len(rows) == 1:
                ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        # decimals=None: as many as the axis range needs (a run between 12% and 15% needs one).
        ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=None))
        best_row = rows[int(np.flatnonzero(epochs == best_epoch)[0])] if best_epoch in epochs else None
        if best_row is not None:
            ax_acc.annotate(f"{best_row['val_accuracy']:.1%}", (best_epoch, best_row["val_accuracy"]),
                            xytext=(5, 6), textcoords="offset points", color="C1", fontsize=9)
        ax_loss.set_title("Loss")
        ax_acc.set_title("Accuracy")
        ax_loss.legend(loc="best")
        if title:
            fig.suptitle(title, fontsize=12)
        fig.tight_layout()
    return save(fig, path)


# --- test-set scores -------------------------------------------------------------------


def _confusion_panel(ax, values: np.ndarray, classes: Sequence[str], fmt, title: str, cbar_label: str, fig):
    n = len(classes)
    vmax = values.max() if values.size and values.max() > 0 else 1
    im = ax.imshow(values, cmap="Blues", vmin=0, vmax=vmax)
    ax.grid(False)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fontsize = 9 if n <= 10 else max(5, 9 - (n - 10) // 3)
    for i in range(n):
        for j in range(n):
            v = values[i, j]
            # Dark text on light cells, light text on dark ones.
            color = "white" if v > 0.55 * vmax else "0.15"
            ax.text(j, i, fmt(v), ha="center", va="center", color=color, fontsize=fontsize)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
    if np.issubdtype(values.dtype, np.integer):
        cb.locator = MaxNLocator(integer=True, steps=[1, 2, 5, 10])
        cb.update_ticks()
    cb.set_label(cbar_label)
    cb.outline.set_visible(False)


def plot_confusion_matrix(cm: np.ndarray, classes: Sequence[str], path: str | Path, normalized: bool = True,
                          title: str | None = None) -> Path:
    """Counts (rows = true class, columns = predicted), class names on both axes;
    with ``normalized`` a second panel of row fractions (each class's recall on the diagonal)."""
    cm = np.asarray(cm)
    n = len(classes)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {cm.shape}, expected ({n}, {n}) for {n} classes")
    side = max(5.5, 0.55 * n + 1.5)
    panels = 2 if normalized else 1
    fig, axes = figure(1, panels, figsize=(side * panels + 0.8 * panels, side))
    axes = np.atleast_1d(axes)
    with plt.rc_context(STYLE):
        _confusion_panel(axes[0], cm, classes, lambda v: f"{int(v)}", "Counts", "images", fig)
        if normalized:
            support = cm.sum(axis=1, keepdims=True)
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = np.where(support > 0, cm / np.maximum(support, 1), 0.0)
            _confusion_panel(axes[1], frac, classes, lambda v: f"{v:.2f}" if v >= 0.005 else "0",
                             "Normalised by true class", "fraction of the true class", fig)
        total = int(cm.sum())
        acc = np.trace(cm) / total if total else float("nan")
        suptitle(fig, title or f"Confusion matrix: {total:,} test images, accuracy {acc:.1%}", fontsize=12)
        fig.tight_layout()
    return save(fig, path)


def plot_per_class_accuracy(per_class: np.ndarray, classes: Sequence[str], path: str | Path,
                            overall: float | None = None, title: str | None = None) -> Path:
    """One bar per class (its test recall), the value on each bar, the overall accuracy as a line."""
    acc = np.asarray(per_class, dtype=np.float64)
    if acc.shape != (len(classes),):
        raise ValueError(f"{acc.shape[0] if acc.ndim else 0} accuracies for {len(classes)} classes")
    fig, ax = figure(figsize=(max(7.0, 0.75 * len(classes) + 1.5), 4.2))
    with plt.rc_context(STYLE):
        x = np.arange(len(classes))
        bars = ax.bar(x, np.nan_to_num(acc), color=_class_colors(len(classes)), width=0.7, zorder=2)
        for b, v in zip(bars, acc):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.015, "n/a" if math.isnan(v) else f"{v:.0%}",
                    ha="center", va="bottom", fontsize=9)
        if overall is not None:
            ax.axhline(overall, color="0.25", ls="--", lw=1.2, zorder=3, label=f"overall {overall:.1%}")
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
        ax.set_xticks(x, classes, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_ylim(0, 1.1)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylabel("test accuracy (recall)")
        ax.set_title(title or "Per-class test accuracy")
        ax.grid(axis="x", visible=False)
        fig.tight_layout()
    return save(fig, path)


def plot_tsne(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], path: str | Path,
              title: str | None = None) -> Path:
    """2-D t-SNE points coloured by true class, with a legend of class names."""
    coords = np.asarray(coords, dtype=np.float64)
    labels = np.asarray(labels)
    if coords.ndim != 2 or coords.shape[1] != 2 or len(coords) != len(labels):
        raise ValueError(f"expected (N, 2) coordinates and N labels, got {coords.shape} and {labels.shape}")
    n = len(coords)
    size = float(np.clip(8000 / max(n, 1), 5, 40))  # big enough to see, small enough not to hide each other
    fig, ax = figure(figsize=(8.2, 6.5))
    with plt.rc_context(STYLE):
        colors = _class_colors(len(classes))
        for c, name in enumerate(classes):
            m = labels == c
            ax.scatter(coords[m, 0], coords[m, 1], s=size, color=colors[c], alpha=0.75, linewidths=0,
                       label=f"{name} ({int(m.sum())})")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
        ax.set_xlabel("t-SNE 1")
        ax.set_ylabel("t-SNE 2")
        ax.set_title(title or f"t-SNE of the features before the classifier ({n:,} test images)")
        leg = ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), title="true class",
                        markerscale=max(1.0, 40 / size) ** 0.5)
        for h in leg.legend_handles:
            h.set_alpha(1)
        fig.tight_layout()
    return save(fig, path)


def plot_feature_maps(image: np.ndarray, maps: Sequence[np.ndarray], layer_names: Sequence[str],
                      path: str | Path, title: str | None = None, caption: str | None = None) -> Path:
    """The input image, then one row of channels per layer (stem and each block).

    ``maps[i]`` is (K, H, W) for layer ``i``; every channel is shown on its own
    colour scale (bright = strong activation), since channels differ in range.
    """
    if len(maps) != len(layer_names):
        raise ValueError(f"{len(maps)} feature maps for {len(layer_names)} layer names")
    if not maps:
        raise ValueError("no feature maps to plot")
    cols = max(int(np.asarray(m).shape[0]) for m in maps)
    rows = len(maps)
    cell = 0.62  # inches per channel
    head = 3  # the input image is as tall as this many rows
    cmap = colormaps["viridis"].with_extremes(bad="white")  # NaN = the gaps between channels
    with plt.rc_context(STYLE):
        height = 0.5 + (rows + head) * cell * 1.12
        fig = plt.figure(figsize=(1.3 + cols * cell, height))
        # The title needs about half an inch above the grid, whatever the figure's height.
        gs = fig.add_gridspec(rows + 1, 2, height_ratios=[head] + [1] * rows, width_ratios=[head, cols - head],
                              hspace=0.12, wspace=0.02, top=1 - 0.5 / height, bottom=0.01, left=0.1, right=0.99)
        ax = fig.add_subplot(gs[0, 0])
        _show(ax, image)
        ax.set_ylabel("input", rotation=0, ha="right", va="center", fontsize=10, labelpad=8)
        if caption:
            text_ax = fig.add_subplot(gs[0, 1])
            text_ax.axis("off")
            text_ax.text(0.03, 0.5, caption, ha="left", va="center", fontsize=10, transform=text_ax.transAxes)
        for r, (m, name) in enumerate(zip(maps, layer_names)):
            m = np.asarray(m, dtype=np.float32)
            a = fig.add_subplot(gs[r + 1, :])
            # One image per layer (not one axes per channel): a figure of 150 axes takes seconds to draw.
            a.imshow(channel_mosaic(m, cols), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            a.set_xticks([])
            a.set_yticks([])
            a.grid(False)
            for sp in a.spines.values():
                sp.set_visible(False)
            a.set_ylabel(f"{name}\n{m.shape[1]}x{m.shape[2]}", rotation=0, ha="right", va="center", fontsize=9,
                         labelpad=8)
        if title:
            fig.suptitle(title, fontsize=12, y=0.995)
    return save(fig, path)


def channel_mosaic(maps: np.ndarray, cols: int | None = None, cell: int = 32, gap: int = 4) -> np.ndarray:
    """(K, H, W) channels side by side in one (cell, cols*cell + gaps) array.

    Each channel is scaled to [0, 1] on its own (a constant channel is 0) and
    enlarged to ``cell`` pixels by repetition, so that layers of every size
    line up; the gaps (and unused columns) are NaN.
    """
    maps = np.asarray(maps, dtype=np.float32)
    k, h, w = maps.shape
    cols = cols or k
    lo = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - lo
    scaled = np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0.0)
    out = np.full((cell, cols * cell + (cols - 1) * gap), np.nan, dtype=np.float32)
    for i in range(k):
        big = np.repeat(np.repeat(scaled[i], max(1, cell // h), axis=0), max(1, cell // w), axis=1)[:cell, :cell]
        x0 = i * (cell + gap)
        out[:big.shape[0], x0:x0 + big.shape[1]] = big
    return out


# --- the data ----------------------------------------------------------------------------


def plot_image_grid(images: np.ndarray, labels: Sequence[int], classes: Sequence[str], path: str | Path,
                    cols: int = 10, title: str | None = None) -> Path:
    """Images (N, 3, H, W) (uint8, or float in [0, 1]) in a grid, each titled with its class."""
    images = np.asarray(images)
    n = len(images)
    if n == 0:
        raise ValueError("no images to plot")
    if len(labels) != n:
        raise ValueError(f"{n} images but {len(labels)} labels")
    cols = min(cols, n)
    rows = math.ceil(n / cols)
    fig, axes = figure(rows, cols, figsize=(1.25 * cols, 1.42 * rows + 0.5), squeeze=False)
    with plt.rc_context(STYLE):
        for i, ax in enumerate(axes.flat):
            if i < n:
                _show(ax, images[i])
                ax.set_title(classes[int(labels[i])], fontsize=9, pad=3)
            else:
                ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=12)
        fig.tight_layout(h_pad=0.4, w_pad=0.3)
    return save(fig, path)


def plot_class_distribution(counts: np.ndarray, classes: Sequence[str], path: str | Path,
                            title: str | None = None, ylabel: str = "images") -> Path:
    """A bar per class with its count written on it."""
    counts = np.asarray(counts)
    if counts.shape != (len(classes),):
        raise ValueError(f"{counts.shape[0] if counts.ndim else 0} counts for {len(classes)} classes")
    fig, ax = figure(figsize=(max(7.0, 0.75 * len(classes) + 1.5), 4.0))
    with plt.rc_context(STYLE):
        x = np.arange(len(classes))
        bars = ax.bar(x, counts, color=_class_colors(len(classes)), width=0.7, zorder=2)
        top = counts.max() if counts.size and counts.max() > 0 else 1
        for b, v in zip(bars, counts):
            ax.text(b.get_x() + b.get_width() / 2, b.get_height() + 0.01 * top, f"{int(v):,}",
                    ha="center", va="bottom", fontsize=9)
        ax.set_xticks(x, classes, rotation=30, ha="right", rotation_mode="anchor")
        ax.set_ylim(0, top * 1.12)
        round_ticks(ax.yaxis, integer=True)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("class")
        ax.grid(axis="x", visible=False)
        ax.set_title(title or f"Class distribution ({int(counts.sum()):,} images)")
        fig.tight_layout()
    return save(fig, path)


def plot_augment_draws(original: np.ndarray, rows: Sequence[tuple[str, np.ndarray, Sequence[str]]],
                       path: str | Path, title: str | None = None) -> Path:
    """One image and several random draws of each augmentation, one labelled row each.

    ``rows`` holds ``(name, draws (K, 3, H, W), captions (K))``; each row starts
    with the original so every draw sits beside what it was drawn from.
    """
    if not rows:
        raise ValueError("no augmentation rows to plot")
    k = max(len(d) for _, d, _ in rows)
    fig, axes = figure(len(rows), k + 1, figsize=(1.3 * (k + 1) + 1.2, 1.75 * len(rows) + 0.6), squeeze=False)
    with plt.rc_context(STYLE):
        for r, (name, draws, captions) in enumerate(rows):
            _show(axes[r, 0], original)
            axes[r, 0].set_title("original", fontsize=8.5, pad=3, fontweight="bold")
            axes[r, 0].set_ylabel(name, fontsize=11, rotation=90, labelpad=8)
            for j in range(k):
                ax = axes[r, j + 1]
                if j < len(draws):
                    _show(ax, draws[j])
                    if j < len(captions):
                        ax.set_title(captions[j], fontsize=7, pad=3)
                else:
                    ax.axis("off")
        if title:
            fig.suptitle(title, fontsize=12)
        fig.tight_layout(h_pad=0.6, w_pad=0.25)
    return save(fig, path)
