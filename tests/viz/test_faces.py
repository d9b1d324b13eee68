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
