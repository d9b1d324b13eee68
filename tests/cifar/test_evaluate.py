import contextlib
import io
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cifar import evaluate as ev
from cnnlab.cifar.evaluate import FIGURES, data_figures, evaluate_run, redraw_figures
from cnnlab.cifar.train import train
from cnnlab.commands.main import main
from cnnlab.config import CifarTrainConfig
from cnnlab.data.cifar10 import load_cifar10, stratified_split
from cnnlab.errors import CnnlabError, ConfigError, DataError
from cnnlab.report import fmt
from cnnlab.viz import cifar as viz
from tests.conftest import CLASSES, write_cifar_batches

# Spatial size of the stem and of each block's output: pools after blocks 3, 5 and 8.
MAP_SIZES = [32, 32, 32, 16, 16, 8, 8, 8, 4]


@pytest.fixture(scope="module")


def trained(tmp_path_factory):
    """One tiny finished run (and its data), trained once for the whole module."""
    root = tmp_path_factory.mktemp("evaluate")
    with pytest.MonkeyPatch.context() as mp:
        # The per-test cache fixture is not active at module scope; keep the cache out of ~/.cache here too.
        mp.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        data = root / "data"
        write_cifar_batches(data)
        cfg = CifarTrainConfig(data_dir=str(data), blocks="E", width=0.125, epochs=2, batch_size=32,
                               eval_batch_size=16, lr=0.02)
        summary = train(cfg, root / "run", progress=False)
    return {"run": root / "run", "data": data, "summary": summary}


@pytest.fixture(scope="module")


def evaluated(trained, tmp_path_factory):
    """A copy of the tiny run after ``cnnlab cifar evaluate`` (the real CLI)."""
    run = tmp_path_factory.mktemp("evaluated") / "run"
    shutil.copytree(trained["run"], run)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("CNNLAB_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cnnlab-cache"))
        rc = main(["cifar", "evaluate", str(run), "--tsne-samples", "25", "--feature-image", "3",
                   "--device", "cpu"])
    assert rc == 0
    (run.parent / "evaluate.out").write_text(printed.getvalue())  # what the command printed, for the tests
    return run


@pytest.fixture


def run_copy(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained["run"], run)
    return run


@pytest.fixture


def evaluate_log(caplog):
    # The CLI stops "cnnlab" records at its own handler; listen on the module's logger itself.
    lg = logging.getLogger("cnnlab.cifar.evaluate")
    lg.addHandler(caplog.handler)
    lg.setLevel(logging.INFO)
    yield caplog
    lg.removeHandler(caplog.handler)
    lg.setLevel(logging.NOTSET)


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
        return im.size


def test_evaluate_writes_every_figure_data_file_and_summary_key(trained, evaluated):
    for name in FIGURES.values():
        _png(evaluated / "figures" / name)
    s = json.loads((evaluated / "summary.json").read_text())
    assert s["test_accuracy"] == trained["summary"]["test_accuracy"]
    assert s["figures"] == list(FIGURES.values())
    assert s["tsne_samples"] == 25 and s["feature_image"] == 3 and s["evaluated_at"].endswith("+00:00")
    assert list(s["per_class_accuracy"]) == list(CLASSES)
    cm = np.array(s["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 40 and (cm.sum(axis=1) == 4).all()  # 4 test images a class
    assert s["test_accuracy"] == pytest.approx(np.trace(cm) / 40)
    for i, c in enumerate(CLASSES):
        assert s["per_class_accuracy"][c] == pytest.approx(cm[i, i] / 4)
    # Training's own summary keys survive.
    assert s["best_val_accuracy"] == trained["summary"]["best_val_accuracy"] and s["status"] == "finished"


def test_evaluate_saves_predictions_features_and_feature_maps(trained, evaluated):
    data = load_cifar10(trained["data"])
    with np.load(evaluated / "test_predictions.npz") as z:
        assert z["logits"].shape == (40, 10) and z["logits"].dtype == np.float32
        np.testing.assert_array_equal(z["predictions"], z["logits"].argmax(1))
        np.testing.assert_array_equal(z["labels"], data.test_labels.numpy())
        assert list(z["classes"]) == list(CLASSES)
    with np.load(evaluated / "features.npz") as z:
        idx = z["test_index"]
        assert len(idx) == 25 and len(set(idx.tolist())) == 25 and (np.diff(idx) > 0).all()
        np.testing.assert_array_equal(z["labels"], data.test_labels.numpy()[idx])
        assert z["features"].shape == (25, 64)  # width 0.125: the last block has 64 channels
        assert z["tsne"].shape == (25, 2) and np.isfinite(z["tsne"]).all()
    with np.load(evaluated / "feature_maps.npz") as z:
        assert int(z["test_index"]) == 3 and int(z["label"]) == int(data.test_labels[3])
        np.testing.assert_array_equal(z["image"], data.test_images[3].numpy())
        assert list(z["layer_names"]) == ["stem"] + [f"block {i}: E" for i in range(1, 9)]
        for i, size in enumerate(MAP_SIZES):
            m, ch = z[f"map_{i}"], z[f"channels_{i}"]
            assert m.shape == (16, size, size) and ch.shape == (16,) and (np.diff(ch) > 0).all()


def test_feature_maps_keep_the_strongest_channels_of_the_real_outputs(trained):
    from cnnlab.inference.runs import load_cifar_network
    from cnnlab.data.augment import eval_transform
    from cnnlab.run import RunDir

    model, _ = load_cifar_network(RunDir(trained["run"]))
    image = load_cifar10(trained["data"]).test_images[5]
    maps = ev.feature_maps(model, image, torch.device("cpu"), max_channels=4)
    with torch.no_grad():
        _, full = model.eval().forward_features(eval_transform(image[None]), return_maps=True)
    assert len(maps) == 9
    for (name, m, channels), out in zip(maps, full):
        out = out[0].numpy()
        strongest = np.sort(np.argsort(-out.mean(axis=(1, 2)), kind="stable")[:4])
        np.testing.assert_array_equal(channels, strongest)
        np.testing.assert_allclose(m, out[channels], rtol=1e-6)


def test_figures_redraws_everything_without_model_or_tsne(evaluated, tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run / "figures")

    def no_tsne(*a, **k):
        raise AssertionError("t-SNE must not be recomputed")

    import sklearn.manifold

    monkeypatch.setattr(sklearn.manifold, "TSNE", no_tsne)
    monkeypatch.setattr(ev, "tsne_2d", no_tsne)
    monkeypatch.setattr(ev, "infer", no_tsne)
    assert main(["cifar", "figures", str(run)]) == 0
    for name in FIGURES.values():
        _png(run / "figures" / name)
    assert capsys.readouterr().out.split() == [str(run / "figures" / n) for n in FIGURES.values()]


def test_figures_uses_the_saved_tsne_coordinates(evaluated, tmp_path, monkeypatch):
    seen = {}
    real = viz.plot_tsne

    def keep(coords, labels, classes, path, title=None):
        seen.update(coords=coords, labels=labels, classes=classes)
        return real(coords, labels, classes, path, title)

    monkeypatch.setattr(viz, "plot_tsne", keep)
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    redraw_figures(run)
    with np.load(run / "features.npz") as z:
        np.testing.assert_array_equal(seen["coords"], z["tsne"])
        np.testing.assert_array_equal(seen["labels"], z["labels"])
    assert seen["classes"] == list(CLASSES)


def test_figures_before_evaluate_draws_the_curves_and_says_what_it_skipped(run_copy, evaluate_log):
    written = redraw_figures(run_copy)
    assert [p.name for p in written] == ["curves.png"]
    _png(run_copy / "figures" / "curves.png")
    for name in ("test_predictions.npz", "features.npz", "feature_maps.npz"):
        assert f"skipping the figures of {name}: it is absent (run `cnnlab cifar evaluate" in evaluate_log.text


def test_figures_of_a_folder_without_metrics_is_an_error(tmp_path, capsys):
    assert main(["cifar", "figures", str(tmp_path)]) == 2
    assert f"{tmp_path} has no metrics.csv" in capsys.readouterr().err


def test_a_damaged_data_file_is_named(evaluated, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    (run / "features.npz").write_bytes(b"not an npz file")
    with pytest.raises(DataError, match=r"features\.npz cannot be read"):
        redraw_figures(run)
    np.savez(run / "features.npz", labels=np.zeros(3))
    with pytest.raises(DataError, match=r"features\.npz lacks tsne, classes"):
        redraw_figures(run)


def test_evaluate_checks_its_options(run_copy, trained, capsys):
    with pytest.raises(ConfigError, match="^tsne_samples: expected 0"):
        evaluate_run(run_copy, tsne_samples=-1)
    rc = main(["cifar", "evaluate", str(run_copy), "--feature-image", "40", "--device", "cpu"])
    assert rc == 2
    assert "--feature-image 40: the test set has 40 images (indices 0..39)" in capsys.readouterr().err


def test_evaluate_needs_a_run_and_its_best_checkpoint(run_copy, tmp_path):
    with pytest.raises(CnnlabError, match="holds no cnnlab run"):
        evaluate_run(tmp_path / "nothing")
    (run_copy / "checkpoints" / "best.pt").unlink()
    with pytest.raises(CnnlabError, match=r"best\.pt does not exist"):
        evaluate_run(run_copy)


def test_evaluate_all_test_images_from_a_moved_data_dir(run_copy, trained, tmp_path):
    import yaml

    cfg = yaml.safe_load((run_copy / "config.yaml").read_text())
    cfg["data_dir"] = str(tmp_path / "gone")  # the run came from another machine
    (run_copy / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    with pytest.raises(DataError, match="gone does not exist"):
        evaluate_run(run_copy, device="cpu", progress=False)
    moved = tmp_path / "moved-data"
    shutil.copytree(trained["data"], moved)
    s = evaluate_run(run_copy, tsne_samples=0, device="cpu", data_dir=moved, progress=False)
    assert s["tsne_samples"] == 40
    assert s["test_accuracy"] == trained["summary"]["test_accuracy"]


def test_tsne_subset_is_seeded_sorted_and_complete_at_zero():
    a, b = ev._tsne_subset(100, 10, seed=3), ev._tsne_subset(100, 10, seed=3)
    np.testing.assert_array_equal(a, b)
    assert len(set(a.tolist())) == 10 and (np.diff(a) > 0).all()
    assert not np.array_equal(a, ev._tsne_subset(100, 10, seed=4))
    np.testing.assert_array_equal(ev._tsne_subset(100, 0, seed=3), np.arange(100))
    np.testing.assert_array_equal(ev._tsne_subset(5, 10, seed=3), np.arange(5))


# --- data figures ------------------------------------------------------------------------


def test_data_figures_writes_its_three_pngs_from_the_training_split(cifar_folders, tmp_path, monkeypatch,
                                                                    capsys):
    seen = {}
    for name in ("plot_image_grid", "plot_class_distribution", "plot_augment_draws"):
        real = getattr(viz, name)

        def keep(*args, _real=real, _name=name, **kw):
            seen[_name] = args
            return _real(*args, **kw)

        monkeypatch.setattr(viz, name, keep)
    out = tmp_path / "data-figures"
    assert main(["cifar", "data-figures", "--data-dir", str(cifar_folders), "--out", str(out),
                 "--seed", "2"]) == 0
    for name in ev.DATA_FIGURES:
        _png(out / name)
    assert capsys.readouterr().out.split() == [str(out / n) for n in ev.DATA_FIGURES]

    data = load_cifar10(cifar_folders)
    train_idx, val_idx = stratified_split(data.train_labels, None, 2)
    # 50 augmented training images (never validation ones), shown in [0, 1], with their labels.
    images, labels = seen["plot_image_grid"][:2]
    assert images.shape == (50, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert sorted(set(labels)) <= list(range(10))
    # The validation split is the one training makes: 2 of each class's 10 images here.
    counts = seen["plot_class_distribution"][0]
    np.testing.assert_array_equal(counts, torch.bincount(data.train_labels[val_idx], minlength=10).numpy())
    assert counts.tolist() == [2] * 10
    original, rows = seen["plot_augment_draws"][:2]
    assert [r[0] for r in rows] == ["ColorJitter", "RandomAffine"]
    jitter, affine = rows[0][1], rows[1][1]
    assert jitter.shape == affine.shape == (10, 3, 32, 32) and len(rows[0][2]) == len(rows[1][2]) == 10
    # Each draw differs from the original and from the other draws.
    assert all(not np.allclose(d, original) for d in jitter) and all(not np.allclose(d, original) for d in affine)
    assert len({d.tobytes() for d in jitter}) == 10
    # The original is a real training image, un-normalised.
    matches = (data.train_images[train_idx].float() / 255 - torch.from_numpy(original)).abs().amax(dim=(1, 2, 3))
    assert float(matches.min()) == 0


def test_data_figures_val_per_class_as_in_training(cifar_folders, tmp_path, monkeypatch):
    seen = {}
    real = viz.plot_class_distribution

    def keep(counts, *args, **kw):
        seen["counts"] = counts
        return real(counts, *args, **kw)

    monkeypatch.setattr(viz, "plot_class_distribution", keep)
    data_figures(cifar_folders, tmp_path / "out", val_per_class=3)
    assert seen["counts"].tolist() == [3] * 10
    with pytest.raises(ConfigError, match="^val_per_class 10: class 0 has only 10 training images"):
        data_figures(cifar_folders, tmp_path / "out2", val_per_class=10)


def test_data_figures_out_must_be_a_folder(cifar_folders, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(CnnlabError, match="is a file, expected a folder"):
        data_figures(cifar_folders, tmp_path / "file")


def test_evaluate_refuses_an_unfinished_run(run_copy, capsys):
    (run_copy / "summary.json").unlink()
    before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()}
    assert main(["cifar", "evaluate", str(run_copy)]) == 2
    err = capsys.readouterr().err
    assert "has not finished training" in err and f"cnnlab cifar train --resume {run_copy}" in err
    assert {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file()} == before


def test_figures_warns_when_the_best_checkpoint_moved_on_after_evaluate(evaluated, tmp_path, evaluate_log):
    from cnnlab.files import atomic_torch_save, load_checkpoint

    run = tmp_path / "run"
    shutil.copytree(evaluated, run)
    with np.load(run / "test_predictions.npz") as z:
        evaluated_epoch = int(z["checkpoint_epoch"])
    redraw_figures(run)
    assert "out of date" not in evaluate_log.text
    best = load_checkpoint(run / "checkpoints" / "best.pt")
    atomic_torch_save({**best, "epoch": evaluated_epoch + 3}, run / "checkpoints" / "best.pt")  # trained on
    redraw_figures(run)
    for name in ("test_predictions.npz", "features.npz", "feature_maps.npz"):
        assert (f"{name} was computed from the best checkpoint of epoch {evaluated_epoch}, but the run's best "
                f"checkpoint is now epoch {evaluated_epoch + 3}") in evaluate_log.text


def test_evaluate_writes_a_self_contained_report_of_the_run(evaluated):
    s = json.loads((evaluated / "summary.json").read_text())
    md = (evaluated / "report.md").read_text()
    page = (evaluated / "report.html").read_text()
    assert md.startswith(f"# CIFAR-10 run {evaluated.name}")
    assert f"trained 2 epochs on {s['num_train']:,} training images" in md
    assert f"| test accuracy | {s['test_accuracy']:.2%} |" in md
    assert f"| training time | {round(s['train_seconds'])} s |" in md
    assert f"Trained on **{s['device']}** in {s['precision']}" in md
    for name in FIGURES.values():
        assert f"](figures/{name})" in md
    assert page.count('src="data:image/png;base64,') == len(FIGURES) and 'src="figures/' not in page


def test_evaluate_prints_where_its_figures_and_reports_went(evaluated):
    s = json.loads((evaluated / "summary.json").read_text())
    lines = (evaluated.parent / "evaluate.out").read_text().splitlines()
    assert lines == [f"test_accuracy {fmt(s['test_accuracy'])}  best_val_accuracy {fmt(s['best_val_accuracy'])}  "
                     f"best_epoch {s['best_epoch']}",
                     f"figures: {evaluated / 'figures'}",
                     f"report: {evaluated / 'report.md'}, {evaluated / 'report.html'}"]


def test_the_report_tables_head_their_columns_and_say_auto(evaluated):
    md, page = (evaluated / "report.md").read_text(), (evaluated / "report.html").read_text()
    assert "| metric | value |" in md and "<th>metric</th><th>value</th>" in page
    assert "| figure |" not in md and "<th>figure</th>" not in page
    assert "| option | value |" in md
    # The run was trained with the default --channels-last, auto: said so, never as None.
    assert "| channels_last | auto |" in md and "<td>channels_last</td><td>auto</td>" in page


def test_curves_title_names_width_epochs_and_training_images(evaluated, monkeypatch):
    titles = []
    real = viz.plot_curves
    monkeypatch.setattr(viz, "plot_curves", lambda *a, **k: titles.append(k["title"]) or real(*a, **k))
    redraw_figures(evaluated)
    s = json.loads((evaluated / "summary.json").read_text())
    assert titles == [f"Training curves: BaseCNN E (width 0.125), 2 epochs, {s['num_train']:,} training images"]
