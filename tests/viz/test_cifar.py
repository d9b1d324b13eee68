import numpy as np
import pytest
from PIL import Image

from cnnlab.run import RunDir
from cnnlab.viz import cifar as viz

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _is_png(path, min_size=(300, 200)):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
        return im.size


def _texts(ax):
    return [t.get_text() for t in ax.texts]


def test_curves_from_metrics_csv_mark_the_best_epoch(tmp_path, drawn):
    rows = [
        {"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.3, "val_loss": 1.8, "val_accuracy": 0.40, "lr": 0.1},
        {"epoch": 2, "train_loss": 1.5, "train_accuracy": 0.5, "val_loss": 1.4, "val_accuracy": 0.55, "lr": 0.09},
        {"epoch": 3, "train_loss": 1.2, "train_accuracy": 0.6, "val_loss": 1.5, "val_accuracy": 0.55, "lr": 0.08},
    ]
    run = RunDir(tmp_path / "run")
    run.write_metrics(rows)
    out = viz.plot_curves(run.metrics_path, tmp_path / "curves.png")
    _is_png(out)
    fig = drawn[0]
    ax_loss, ax_acc = fig.axes
    lines = {ln.get_label(): ln for ln in ax_loss.get_lines()}
    assert list(lines["train"].get_ydata()) == [2.0, 1.5, 1.2]
    assert list(lines["validation"].get_ydata()) == [1.8, 1.4, 1.5]
    # Best epoch: the first of the tied validation accuracies, as training keeps it.
    assert list(lines["best epoch (2)"].get_xdata()) == [2, 2]
    acc_lines = {ln.get_label(): ln for ln in ax_acc.get_lines()}
    assert list(acc_lines["validation"].get_ydata()) == [0.40, 0.55, 0.55]
    assert ax_loss.get_xlabel() == "epoch" and "loss" in ax_loss.get_ylabel()
    assert ax_acc.get_ylabel() == "accuracy"
    assert {t.get_text() for t in ax_loss.get_legend().get_texts()} == {"train", "validation", "best epoch (2)"}


def test_curves_take_rows_and_an_explicit_best_epoch(tmp_path, drawn):
    rows = [{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5}]
    viz.plot_curves(rows, tmp_path / "c.png", best_epoch=1, title="one epoch")
    assert drawn[0]._suptitle.get_text() == "one epoch"
    with pytest.raises(ValueError, match="no rows"):
        viz.plot_curves([], tmp_path / "empty.png")


def test_confusion_matrix_annotates_every_count_and_names_the_classes(tmp_path, drawn):
    rng = np.random.default_rng(0)
    cm = rng.integers(0, 50, size=(10, 10))
    cm[np.arange(10), np.arange(10)] += 100
    out = viz.plot_confusion_matrix(cm, CLASSES, tmp_path / "cm.png")
    _is_png(out, (1000, 500))
    counts_ax, frac_ax = [ax for ax in drawn[0].axes if ax.get_title() in ("Counts", "Normalised by true class")]
    assert counts_ax.get_title() == "Counts"
    # Each count sits in its cell: x = predicted column, y = true row.
    cells = {(int(t.get_position()[1]), int(t.get_position()[0])): t.get_text() for t in counts_ax.texts}
    assert cells == {(i, j): str(cm[i, j]) for i in range(10) for j in range(10)}
    assert [t.get_text() for t in counts_ax.get_xticklabels()] == CLASSES
    assert [t.get_text() for t in counts_ax.get_yticklabels()] == CLASSES
    assert counts_ax.get_xlabel() == "predicted class" and counts_ax.get_ylabel() == "true class"
    frac = {(int(t.get_position()[1]), int(t.get_position()[0])): t.get_text() for t in frac_ax.texts}
    assert frac[(3, 3)] == f"{cm[3, 3] / cm[3].sum():.2f}"
    acc = np.trace(cm) / cm.sum()
    assert f"{acc:.1%}" in drawn[0]._suptitle.get_text()


def test_confusion_matrix_counts_only_and_shape_check(tmp_path, drawn):
    cm = np.array([[3, 1], [0, 4]])
    viz.plot_confusion_matrix(cm, ["a", "b"], tmp_path / "cm.png", normalized=False)
    titled = [ax for ax in drawn[0].axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["Counts"]
    assert sorted(_texts(titled[0])) == ["0", "1", "3", "4"]
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        viz.plot_confusion_matrix(cm, ["a", "b", "c"], tmp_path / "bad.png")


def test_per_class_accuracy_bars_and_overall_line(tmp_path, drawn):
    acc = np.array([0.9, 0.5, np.nan])
    out = viz.plot_per_class_accuracy(acc, ["cat", "dog", "emu"], tmp_path / "pc.png", overall=0.7)
    _is_png(out)
    ax = drawn[0].axes[0]
    assert [p.get_height() for p in ax.patches] == [0.9, 0.5, 0.0]
    assert _texts(ax) == ["90%", "50%", "n/a"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "emu"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["overall 70.0%"]


def test_tsne_colours_each_class_and_names_it_in_the_legend(tmp_path, drawn):
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(10), 7)
    coords = rng.normal(size=(70, 2)) + labels[:, None] * 5
    out = viz.plot_tsne(coords, labels, CLASSES, tmp_path / "tsne.png")
    _is_png(out)
    ax = drawn[0].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == [f"{c} (7)" for c in CLASSES]
    # One scatter per class, holding exactly that class's points.
    for c, coll in enumerate(ax.collections):
        np.testing.assert_allclose(coll.get_offsets(), coords[labels == c])
    assert len({tuple(coll.get_facecolor()[0]) for coll in ax.collections}) == 10
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        viz.plot_tsne(coords[:, :1], labels, CLASSES, tmp_path / "bad.png")


def test_feature_maps_show_the_input_and_every_channel_of_every_layer(tmp_path, drawn):
    image = np.zeros((3, 32, 32), dtype=np.uint8)
    image[0, :16] = 255
    maps = [np.random.default_rng(i).random((k, s, s)) for i, (k, s) in enumerate([(4, 32), (3, 16), (4, 4)])]
    out = viz.plot_feature_maps(image, maps, ["stem", "block 1: A", "block 2: A"], tmp_path / "fm.png",
                                title="Feature maps", caption="true class: cat")
    _is_png(out)
    fig = drawn[0]
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 1 + 3  # the input, then one row per layer
    np.testing.assert_array_equal(shown[0].images[0].get_array(), image.transpose(1, 2, 0))
    for ax, m in zip(shown[1:], maps):
        np.testing.assert_allclose(ax.images[0].get_array().filled(np.nan), viz.channel_mosaic(m, 4))
    assert [ax.get_ylabel() for ax in shown] == ["input", "stem\n32x32", "block 1: A\n16x16", "block 2: A\n4x4"]
    assert any("true class: cat" in t.get_text() for ax in fig.axes for t in ax.texts)
    assert fig._suptitle.get_text() == "Feature maps"
    with pytest.raises(ValueError, match="3 feature maps for 2 layer names"):
        viz.plot_feature_maps(image, maps, ["stem", "block 1"], tmp_path / "bad.png")


def test_channel_mosaic_scales_each_channel_and_lines_up_every_size():
    m = np.zeros((3, 4, 4), dtype=np.float32)
    m[0] = np.arange(16).reshape(4, 4)  # 0..15
    m[1] = 7.0  # constant: shown as 0, not as a division by zero
    m[2, 0, 0] = -2.0
    mosaic = viz.channel_mosaic(m, cols=4, cell=8, gap=2)
    assert mosaic.shape == (8, 4 * 8 + 3 * 2)
    first = mosaic[:, :8]
    np.testing.assert_allclose(first[::2, ::2], m[0] / 15)  # each pixel repeated 2x2
    assert first.min() == 0 and first.max() == 1
    assert np.all(mosaic[:, 10:18] == 0)
    np.testing.assert_allclose(mosaic[:2, 20:22], 0.0)  # the minimum of channel 2
    assert np.isnan(mosaic[:, 8:10]).all() and np.isnan(mosaic[:, 30:]).all()  # a gap; the unused 4th column


def test_image_grid_titles_each_image_with_its_class(tmp_path, drawn):
    images = np.random.default_rng(0).random((12, 3, 32, 32)).astype(np.float32)
    labels = [i % 10 for i in range(12)]
    out = viz.plot_image_grid(images, labels, CLASSES, tmp_path / "grid.png", cols=5, title="samples")
    _is_png(out)
    axes = drawn[0].axes
    assert len(axes) == 15  # 3 rows of 5; the last 3 cells are empty
    assert [ax.get_title() for ax in axes[:12]] == [CLASSES[y] for y in labels]
    assert all(not ax.axison for ax in axes[12:])
    with pytest.raises(ValueError, match="12 images but 3 labels"):
        viz.plot_image_grid(images, [0, 1, 2], CLASSES, tmp_path / "bad.png")


def test_class_distribution_bars_carry_their_counts(tmp_path, drawn):
    counts = np.array([1000, 998, 1000])
    out = viz.plot_class_distribution(counts, ["a", "b", "c"], tmp_path / "d.png")
    _is_png(out)
    ax = drawn[0].axes[0]
    assert [p.get_height() for p in ax.patches] == [1000, 998, 1000]
    assert _texts(ax) == ["1,000", "998", "1,000"]
    assert "2,998 images" in ax.get_title()


def test_augment_draws_two_labelled_rows_each_starting_with_the_original(tmp_path, drawn):
    original = np.full((3, 8, 8), 0.5, dtype=np.float32)
    jitter = np.random.default_rng(0).random((10, 3, 8, 8))
    affine = np.random.default_rng(1).random((10, 3, 8, 8))
    out = viz.plot_augment_draws(original, [("ColorJitter", jitter, [f"j{i}" for i in range(10)]),
                                            ("RandomAffine", affine, [f"a{i}" for i in range(10)])],
                                 tmp_path / "draws.png")
    _is_png(out, (1000, 200))
    axes = np.array(drawn[0].axes).reshape(2, 11)
    assert [axes[r, 0].get_ylabel() for r in range(2)] == ["ColorJitter", "RandomAffine"]
    assert [ax.get_title() for ax in axes[0]] == ["original"] + [f"j{i}" for i in range(10)]
    np.testing.assert_allclose(axes[1, 3].images[0].get_array(), affine[2].transpose(1, 2, 0))


def _ticks(axis) -> list[float]:
    lo, hi = axis.get_view_interval()
    return [float(t) for t in axis.get_majorticklocs() if lo - 1e-9 <= t <= hi + 1e-9]


def _round_step(step: float) -> bool:
    """1, 2 or 5 times a power of ten: a step a reader counts in."""
    mantissa = step / 10 ** np.floor(np.log10(step))
    return any(np.isclose(mantissa, m) for m in (1, 2, 5))


@pytest.mark.parametrize("epochs", [2, 6, 30])
def test_curves_tick_whole_epochs(tmp_path, drawn, epochs):
    rows = [{"epoch": e, "train_loss": 2 / e, "train_accuracy": e / 40, "val_loss": 2.2 / e, "val_accuracy": e / 41,
             "lr": 0.1} for e in range(1, epochs + 1)]
    viz.plot_curves(rows, tmp_path / "c.png", title="Training curves: BaseCNN A (width 0.25), 2 epochs")
    for ax in drawn[0].axes:
        ticks = _ticks(ax.xaxis)
        assert ticks and all(t.is_integer() for t in ticks), ticks


@pytest.mark.parametrize("per_class", [40, 1000, 4500])
def test_class_distribution_ticks_at_round_numbers(tmp_path, drawn, per_class):
    viz.plot_class_distribution(np.full(10, per_class), CLASSES, tmp_path / "d.png")
    ticks = _ticks(drawn[0].axes[0].yaxis)
    steps = set(np.round(np.diff(ticks), 6))
    assert len(steps) == 1, ticks
    step = steps.pop()
    # 0, 200, ..., 1000: not 0, 150, ..., 1050.
    assert _round_step(step) and all(float(t / step).is_integer() for t in ticks), ticks


def test_study_curves_keep_coinciding_runs_apart_and_tick_whole_epochs(tmp_path, monkeypatch):
    from cnnlab.viz import compare

    figs = []
    real = compare.save
    monkeypatch.setattr(compare, "save", lambda fig, path: figs.append(fig) or real(fig, path))
    rows = [{"epoch": e, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.0 / e, "val_accuracy": 0.1 * e,
             "lr": 0.1} for e in (1, 2)]
    paths = {}
    for name in ("A", "B", "C"):  # three runs with the very same curves
        run = RunDir(tmp_path / name)
        run.write_metrics(rows)
        paths[name] = run.metrics_path
    compare.plot_curves_overlay(paths, tmp_path / "curves.png", title="width 0.25, 2 epochs, 5,000 training images")
    fig = figs[0]
    assert fig._suptitle.get_text() == "width 0.25, 2 epochs, 5,000 training images"
    for ax in fig.axes:
        styles = {(ln.get_linestyle(), ln.get_marker()) for ln in ax.get_lines()}
        assert len(styles) == 3
        assert all(t.is_integer() for t in _ticks(ax.xaxis))
