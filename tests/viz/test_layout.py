"""Layout of the figures, read off the drawn matplotlib objects: nothing clipped, cut short or crowded."""

import numpy as np
import pytest
from matplotlib.font_manager import FontProperties
from matplotlib.textpath import TextToPath

from cnnlab.viz import cifar, faces

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
LONG_NAMES = ["Leonardo_DiCaprio", "Arnold_Schwarzenegger", "Gloria_Macapagal_Arroyo",
              "Jose_Luis_Rodriguez_Zapatero", "Luiz_Inacio_Lula_da_Silva"]


# The figures are drawn on their own canvas, not written (see the drawn fixture in conftest.py).
DRAW_ONLY = True


def _points(fig, pixels: float) -> float:
    return pixels * 72 / fig.dpi


def _gap_below(upper, lower) -> float:
    """Pixels between the bottom of ``upper`` and the top of ``lower`` (negative: they overlap)."""
    return upper.y0 - lower.y1


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


# --- the best-epoch star ------------------------------------------------------------------


@pytest.mark.parametrize("epochs", [1, 8, 30])
def test_the_best_epoch_star_is_whole_when_it_is_the_last_and_highest_point(tmp_path, drawn, epochs):
    rows = [{"epoch": e, "train_loss": float("nan") if e == 0 else 1 / e, "val_loss": 1 / (e + 1),
             "val_roc_auc": 0.71 + 0.27 * (1 - 0.7 ** e)} for e in range(epochs + 1)]
    faces.plot_loss_curves(rows, tmp_path / "l.png", title="run: resnet18, 512-d")
    fig = drawn[-1]
    ax = fig.axes[1]
    (star,) = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert list(star.get_xdata()) == [epochs]
    lo, hi = ax.get_xlim()
    assert lo < 0 and epochs + 0.05 * (hi - lo) < hi
    box, axes = star.get_window_extent(), ax.get_window_extent()
    # Inside the axes with at least 4 points to spare on every side: not clipped by any edge.
    room = min(box.x0 - axes.x0, axes.x1 - box.x1, box.y0 - axes.y0, axes.y1 - box.y1)
    assert _points(fig, room) >= 4, room
    # Both panels show the same epochs, so that one epoch sits at one x on both.
    assert fig.axes[0].get_xlim() == pytest.approx(ax.get_xlim())


# --- the neighbour grid ---------------------------------------------------------------------


def _neighbour_grid(tmp_path, query_names, k=10):
    rng = np.random.default_rng(0)
    q = len(query_names)
    pool = query_names + ["Colin_Powell", "AJ_Cook"]
    names = [[pool[(r + c) % len(pool)] for c in range(k)] for r in range(q)]
    correct = np.array([[n == query_names[r] for n in row] for r, row in enumerate(names)])
    thumbs = rng.integers(0, 256, (q, 1 + k, 3, 24, 24), dtype=np.uint8)
    dist = np.sort(rng.uniform(0.4, 1.2, (q, k)), axis=1)
    faces.plot_neighbours(thumbs, query_names, names, correct, dist, tmp_path / "n.png")
    return names


def _titles(fig):
    return [ax.title for ax in fig.axes]


def test_neighbour_grid_shows_every_name_whole(tmp_path, drawn):
    names = _neighbour_grid(tmp_path, LONG_NAMES)
    fig = drawn[-1]
    texts = [t.get_text() for t in _titles(fig)]
    assert not any("…" in t or "..." in t for t in texts)
    # A name may be split onto two lines, but every word of it is there, in order.
    shown = [" ".join(t.split("\n")[:-1]) if i % 11 else t.replace("\n", " ") for i, t in enumerate(texts)]
    expected = [n.replace("_", " ") for r, q in enumerate(LONG_NAMES) for n in [q, *names[r]]]
    assert shown == expected
    assert {"Leonardo DiCaprio", "Arnold Schwarzenegger", "Gloria Macapagal Arroyo"} <= set(shown)


def test_neighbour_names_do_not_run_into_each_other(tmp_path, drawn):
    _neighbour_grid(tmp_path, LONG_NAMES)
    fig = drawn[-1]
    boxes = [t.get_window_extent() for t in _titles(fig)]
    for r in range(len(LONG_NAMES)):
        row = boxes[r * 11:(r + 1) * 11]
        assert not [(a, b) for a, b in zip(row, row[1:]) if _overlaps(a, b)]
    # Nor into the images: each title is above its own image and below the row above.
    for ax, box in zip(fig.axes, boxes):
        assert box.y0 >= ax.get_window_extent().y1


def test_neighbour_grid_title_sits_close_above_the_first_row(tmp_path, drawn):
    _neighbour_grid(tmp_path, ["Colin_Powell", "AJ_Cook"])  # short names: one line each, two with the distance
    fig = drawn[-1]
    top = max(t.get_window_extent().y1 for t in _titles(fig))
    gap = _points(fig, fig._suptitle.get_window_extent().y0 - top)
    assert 2 <= gap <= 30  # clear of the first row's titles, without an empty band between


def _width(text: str, size: float, weight: str = "normal") -> float:
    """Points one line of ``text`` takes in the default font."""
    prop = FontProperties(size=size, weight=weight)
    return TextToPath().get_text_width_height_descent(text, prop, ismath=False)[0]


def test_fit_name_keeps_short_names_on_one_line():
    assert faces.fit_name("Colin_Powell", 82, 6.0) == ("Colin Powell", 6.0)
    assert faces.fit_name("Leonardo_DiCaprio", 82, 6.0) == ("Leonardo DiCaprio", 6.0)


def test_fit_name_wraps_a_long_name_at_a_space_rather_than_cutting_it():
    text, size = faces.fit_name("Jose_Luis_Rodriguez_Zapatero", 82, 6.0)
    assert size == 6.0 and text.count("\n") == 1
    assert text.replace("\n", " ") == "Jose Luis Rodriguez Zapatero"
    assert all(_width(line, size, "normal") <= 82 for line in text.split("\n"))


def test_fit_name_shrinks_a_single_word_that_cannot_wrap():
    text, size = faces.fit_name("Wolfeschlegelsteinhausenbergerdorff", 82, 6.0)
    assert text == "Wolfeschlegelsteinhausenbergerdorff" and size < 6.0
    assert _width(text, size, "normal") == pytest.approx(82, rel=0.02)


# --- figure titles above panel titles ---------------------------------------------------------


def _assert_clear_of_panel_titles(fig, titles, min_gap_points=4):
    sup = fig._suptitle.get_window_extent()
    for t in titles:
        box = t.get_window_extent()
        assert not _overlaps(sup, box), t.get_text()
        assert _points(fig, _gap_below(sup, box)) >= min_gap_points, t.get_text()


def test_confusion_matrix_title_clears_the_panel_titles(tmp_path, drawn):
    cm = np.full((10, 10), 12) + np.diag(np.full(10, 800))
    cifar.plot_confusion_matrix(cm, CLASSES, tmp_path / "cm.png",
                                title="Confusion matrix: cifar-resnet-se, 10,000 test images, accuracy 80.9%")
    fig = drawn[-1]
    panels = [ax.title for ax in fig.axes if ax.get_title() in ("Counts", "Normalised by true class")]
    assert len(panels) == 2
    _assert_clear_of_panel_titles(fig, panels)


def test_loss_curves_title_clears_the_panel_titles(tmp_path, drawn):
    rows = [{"epoch": e, "train_loss": 1.0, "val_loss": 1.0, "val_roc_auc": 0.8} for e in range(4)]
    faces.plot_loss_curves(rows, tmp_path / "l.png", title="run: resnet18, 512-d, 3 epochs")
    fig = drawn[-1]
    _assert_clear_of_panel_titles(fig, [ax.title for ax in fig.axes])
