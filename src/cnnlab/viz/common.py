"""Shared figure setup: a headless backend, one style, atomic PNG writes."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # figures are files; no display is needed or wanted

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from cnnlab.files import atomic_write_bytes  # noqa: E402

DPI = 150
STYLE = {
    "figure.dpi": 100,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "font.size": 10,
    "axes.titlesize": 11,
    "legend.frameon": False,
}


def figure(*args, **kwargs):
    """``plt.subplots`` under the project style."""
    with plt.rc_context(STYLE):
        return plt.subplots(*args, **kwargs)


def suptitle(fig, text: str, **kwargs):
    """A figure title at the very top edge, for ``fig.tight_layout`` to follow.

    ``tight_layout`` leaves one pad between the figure's top edge plus the title's
    height and the panels' own titles; matplotlib's default title position
    (2% below the edge) eats most of that pad, so the two titles crowd each other.
    """
    return fig.suptitle(text, y=1.0, va="top", **kwargs)


def save(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and close it."""
    path = Path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


# Ticks at 1, 2, 5 times a power of ten: 0, 200, 400 rather than 0, 150, 300 or 0.075, 0.15.
ROUND_STEPS = [1, 2, 5, 10]


def round_ticks(axis, integer: bool = False) -> None:
    """Major ticks of ``axis`` (``ax.xaxis`` or ``ax.yaxis``) at round numbers; whole numbers with ``integer``."""
    axis.set_major_locator(MaxNLocator(nbins="auto", steps=ROUND_STEPS, integer=integer))


def epoch_ticks(ax) -> None:
    """Whole, round epoch numbers on the x axis, however few epochs there are."""
    round_ticks(ax.xaxis, integer=True)


# Runs drawn on one axes: colour, line style and marker all differ, so that a curve drawn
# exactly over another still shows (the dashes of the later one let the earlier one through).
LINE_STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def series_style(i: int) -> dict:
    """Plot keywords of the ``i``-th of several overlaid runs: colour, line style, marker, and a line
    width that shrinks with ``i`` so that a later curve over an earlier one leaves it visible."""
    return {"color": f"C{i % 10}", "ls": LINE_STYLES[i % len(LINE_STYLES)], "marker": MARKERS[i % len(MARKERS)],
            "lw": max(1.2, 2.6 - 0.4 * i)}


def histogram_bins(values: np.ndarray, max_bins: int = 60) -> np.ndarray:
    """Bin edges suited to the number of values: numpy's "auto" rule, the larger of the
    Freedman–Diaconis and Sturges counts (16 + 16 pairs get about 6 bins, thousands get dozens)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return np.linspace(0.0, 1.0, 2)
    lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        pad = 0.01 * abs(lo) or 0.5  # all values equal: one bin around them
        return np.array([lo - pad, hi + pad])
    edges = np.histogram_bin_edges(v, bins="auto")
    if len(edges) - 1 > max_bins:
        edges = np.linspace(lo, hi, max_bins + 1)
    return edges
