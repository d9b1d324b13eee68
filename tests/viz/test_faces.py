import numpy as np
import pytest

from cnnlab.viz.faces import (
    RocCurve,
    plot_distance_boxplot,
    plot_distance_histogram,
    plot_loss_curves,
    plot_neighbours,
    plot_roc,
    plot_val_auc_curves,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _pairs():
    rng = np.random.default_rng(0)
    same = np.r_[np.ones(50, bool), np.zeros(50, bool)]
    d = np.where(same, rng.normal(0.5, 0.1, 100), rng.normal(1.0, 0.1, 100))
    return d, same


def test_loss_curves_skip_the_missing_train_loss_of_epoch_0(tmp_path):
    rows = [{"epoch": 0, "train_loss": float("nan"), "val_loss": 0.5, "val_roc_auc": 0.7},
            {"epoch": 1, "train_loss": 0.4, "val_loss": 0.3, "val_roc_auc": 0.8}]
    assert plot_loss_curves(rows, tmp_path / "l.png", title="run").read_bytes()[:8] == PNG


@pytest.mark.parametrize("fn", [plot_distance_boxplot, plot_distance_histogram])
def test_distance_figures(tmp_path, fn):
    d, same = _pairs()
    assert fn(d, same, 0.75, tmp_path / "d.png").read_bytes()[:8] == PNG
    assert fn(d, same, None, tmp_path / "e.png").is_file()


@pytest.mark.parametrize("log_far", [False, True])
def test_roc_overlay(tmp_path, log_far):
    from cnnlab.metrics import roc_curve

    d, same = _pairs()
    far, tar, _ = roc_curve(d, same)
    curves = [RocCurve("a", far, tar, 0.99, 0.03, 0.5), RocCurve("b", far, tar ** 2, 0.9, 0.1, 0.2)]
    assert plot_roc(curves, tmp_path / "r.png", log_far=log_far).read_bytes()[:8] == PNG


def test_neighbour_grid_and_val_curves(tmp_path):
    thumbs = np.zeros((2, 4, 3, 16, 16), np.uint8)
    correct = np.array([[True, False, True], [False, False, True]])
    dist = np.full((2, 3), 0.5)
    names = [["A", "B", "A"], ["C", "D", "E"]]
    assert plot_neighbours(thumbs, ["A", "E"], names, correct, dist, tmp_path / "n.png").read_bytes()[:8] == PNG
    hist = [("x", [{"epoch": 0, "val_roc_auc": 0.7}, {"epoch": 1, "val_roc_auc": 0.8}])]
    assert plot_val_auc_curves(hist, tmp_path / "v.png").read_bytes()[:8] == PNG


# --- the figure rules, read off the matplotlib objects ---------------------------------------


def test_histogram_bins_suit_the_number_of_pairs(tmp_path, drawn):
    rng = np.random.default_rng(1)
    few = np.r_[rng.normal(0.6, 0.08, 16), rng.normal(0.7, 0.08, 16)]
    plot_distance_histogram(few, np.r_[np.ones(16, bool), np.zeros(16, bool)], 0.65, tmp_path / "h.png")
    ax = drawn[-1].axes[0]
    bars = [p for p in ax.patches]
    assert 2 * 5 <= len(bars) <= 2 * 10  # 16 + 16 pairs: under ten bins each, not 50
    # Each group's bars are shares of its own pairs: they sum to 1.
    assert sum(b.get_height() for b in bars[: len(bars) // 2]) == pytest.approx(1.0)
    many = np.r_[rng.normal(0.6, 0.08, 5000), rng.normal(0.9, 0.08, 5000)]
    plot_distance_histogram(many, np.r_[np.ones(5000, bool), np.zeros(5000, bool)], 0.75, tmp_path / "m.png")
    assert len(drawn[-1].axes[0].patches) // 2 >= 30


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def test_the_histogram_legend_hides_no_bar(tmp_path, drawn):
    d, same = _pairs()
    plot_distance_histogram(d, same, 0.75, tmp_path / "h.png")
    fig = drawn[-1]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    bars = [p.get_window_extent() for p in ax.patches if p.get_height() > 0]
    assert bars and not any(_overlaps(legend, b) for b in bars)


def _roc(n_same: int, n_diff: int, seed: int = 0, label: str = "run") -> RocCurve:
    from cnnlab.faces.analyze import roc_of

    rng = np.random.default_rng(seed)
    d = np.r_[rng.normal(0.5, 0.2, n_same), rng.normal(1.0, 0.2, n_diff)]
    same = np.r_[np.ones(n_same, bool), np.zeros(n_diff, bool)]
    return roc_of({"distance": d, "same": same}, label)


def test_log_far_roc_starts_at_the_smallest_resolvable_far(tmp_path, drawn):
    plot_roc([_roc(16, 16)], tmp_path / "r.png", log_far=True)
    ax = drawn[-1].axes[0]
    assert ax.get_xscale() == "log"
    assert ax.get_xlim()[0] == pytest.approx(1 / 16)
    # 16 different-people pairs cannot resolve FAR = 1e-3: no line there, no TAR@FAR in the legend.
    assert not [ln for ln in ax.lines if list(ln.get_xdata()) == [1e-3, 1e-3]]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any("TAR@FAR" in t for t in texts)
    assert "1,000 different-people pairs" in ax.get_legend().get_title().get_text()


def test_roc_marks_far_1e3_where_the_pairs_resolve_it(tmp_path, drawn):
    plot_roc([_roc(300, 2000)], tmp_path / "r.png", log_far=True)
    ax = drawn[-1].axes[0]
    assert ax.get_xlim()[0] == pytest.approx(1 / 2000)
    assert [ln for ln in ax.lines if list(ln.get_xdata()) == [1e-3, 1e-3]]
    (text,) = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "TAR@FAR=1e-3" in text and "TAR@FAR=0" not in text


def test_roc_curves_that_coincide_stay_distinguishable(tmp_path, drawn):
    a, b = _roc(50, 50, label="a"), _roc(50, 50, label="b")  # the very same curve twice
    for log_far in (False, True):
        plot_roc([a, b], tmp_path / "r.png", log_far=log_far)
        lines = [ln for ln in drawn[-1].axes[0].lines if ln.get_label() in {h.get_text() for h in
                                                                           drawn[-1].axes[0].get_legend().get_texts()}]
        assert len(lines) == 2
        styles = [(ln.get_linestyle(), ln.get_marker()) for ln in lines]
        assert styles[0] != styles[1] and lines[0].get_linewidth() > lines[1].get_linewidth()


def _integer_ticks(axis) -> list[float]:
    lo, hi = axis.get_view_interval()
    return [t for t in axis.get_majorticklocs() if lo - 1e-9 <= t <= hi + 1e-9]


@pytest.mark.parametrize("epochs", [2, 3, 7, 30])
def test_epoch_ticks_are_whole_numbers(tmp_path, drawn, epochs):
    rows = [{"epoch": e, "train_loss": 1 / (e + 1), "val_loss": 1 / (e + 1), "val_roc_auc": 0.5 + e / 100}
            for e in range(epochs + 1)]
    plot_loss_curves(rows, tmp_path / "l.png", title="run")
    plot_val_auc_curves([("x", rows), ("y", rows)], tmp_path / "v.png")
    for fig in drawn:
        for ax in fig.axes:
            ticks = _integer_ticks(ax.xaxis)
            assert ticks and all(float(t).is_integer() for t in ticks), ticks
    val_lines = drawn[-1].axes[0].lines
    assert val_lines[0].get_linestyle() != val_lines[1].get_linestyle()
