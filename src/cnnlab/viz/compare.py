"""Figures that put several runs side by side."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import ScalarFormatter

from cnnlab.run import read_metrics
from cnnlab.viz.common import epoch_ticks, figure, round_ticks, save, series_style


def plot_curves_overlay(metrics: dict[str, str | Path], path: str | Path, title: str | None = None) -> Path:
    """Validation accuracy and loss per epoch of several runs, one line each.

    ``metrics`` maps a label (the variant) to that run's ``metrics.csv``. Runs
    differ in colour, line style and marker, so curves that coincide stay
    distinguishable.
    """
    fig, (ax_acc, ax_loss) = figure(1, 2, figsize=(11, 4.3))
    for i, (label, csv_path) in enumerate(metrics.items()):
        rows = read_metrics(csv_path)
        epochs = [r["epoch"] for r in rows]
        style = series_style(i)
        ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], ms=4, label=label, **style)
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], ms=4, label=label, **style)
    for ax in (ax_acc, ax_loss):
        epoch_ticks(ax)
    round_ticks(ax_acc.yaxis)
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    ax_loss.set(title="Validation loss", xlabel="epoch", ylabel="cross-entropy")
    ax_loss.set_yscale("log")  # one diverging early epoch should not flatten every other curve
    ax_loss.yaxis.set_major_formatter(ScalarFormatter())
    ax_loss.yaxis.set_minor_formatter(ScalarFormatter())
    ax_acc.legend(title="variant", ncol=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)
