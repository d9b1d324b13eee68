"""Figures that put several runs side by side."""

from __future__ import annotations

from pathlib import Path

from matplotlib.ticker import ScalarFormatter

from cnnlab.run import read_metrics
from cnnlab.viz.common import figure, save


def plot_curves_overlay(metrics: dict[str, str | Path], path: str | Path) -> Path:
    """Validation accuracy and loss per epoch of several runs, one line each.

    ``metrics`` maps a label (the variant) to that run's ``metrics.csv``.
    """
    fig, (ax_acc, ax_loss) = figure(1, 2, figsize=(11, 4))
    for label, csv_path in metrics.items():
        rows = read_metrics(csv_path)
        epochs = [r["epoch"] for r in rows]
        ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in rows], marker="o", ms=3, label=label)
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], marker="o", ms=3, label=label)
    ax_acc.set(title="Validation accuracy", xlabel="epoch", ylabel="accuracy (%)")
    ax_loss.set(title="Validation loss", xlabel="epoch", ylabel="cross-entropy")
    ax_loss.set_yscale("log")  # one diverging early epoch should not flatten every other curve
    ax_loss.yaxis.set_major_formatter(ScalarFormatter())
    ax_loss.yaxis.set_minor_formatter(ScalarFormatter())
    ax_acc.legend(title="variant", ncol=2)
    fig.tight_layout()
    return save(fig, path)
