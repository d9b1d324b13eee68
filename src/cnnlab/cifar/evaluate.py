"""The figures of a CIFAR-10 run and of the data.

- :func:`evaluate_run` (``cnnlab cifar evaluate``) loads ``best.pt``, looks at the
  test set once, saves what the figures need (predictions, features with their
  t-SNE coordinates, the feature maps of one image) and draws every figure.
- :func:`redraw_figures` (``cnnlab cifar figures``) draws them again from those
  files alone: no model, no training, no t-SNE.
- :func:`data_figures` (``cnnlab cifar data-figures``) draws the augmented
  training images, the validation split's classes and the augmentation draws.

The computing happens here; the drawing lives in :mod:`cnnlab.viz.cifar`.
"""

from __future__ import annotations

import logging
import math
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import CifarTrainConfig, from_dict
from cnnlab.data.augment import (CIFAR_AUGMENTS, AugmentConfig, affine_matrices, color_jitter, draw_params,
                                 eval_transform, random_affine)
from cnnlab.data.cifar10 import Cifar10, load_cifar10, stratified_split
from cnnlab.engine import check_finite, infer
from cnnlab.errors import CnnlabError, ConfigError, DataError, param
from cnnlab.files import atomic_open
from cnnlab.metrics import accuracy, confusion_matrix, per_class_accuracy
from cnnlab.run import FILE_ONLY, RunDir, log_to_file
from cnnlab.runtime import resolve_device, select_precision

logger = logging.getLogger(__name__)

PREDICTIONS_FILE = "test_predictions.npz"
FEATURES_FILE = "features.npz"
FEATURE_MAPS_FILE = "feature_maps.npz"
FIGURES = {
    "curves": "curves.png",
    "confusion_matrix": "confusion_matrix.png",
    "per_class_accuracy": "per_class_accuracy.png",
    "tsne": "tsne.png",
    "feature_maps": "feature_maps.png",
}
DATA_FIGURES = ("augmented_samples.png", "val_class_distribution.png", "augment_draws.png")
MAX_MAP_CHANNELS = 16  # per layer: enough to see what a layer responds to, small enough to keep


# --- evaluate --------------------------------------------------------------------------


def evaluate_run(run_dir: str | Path, tsne_samples: int = 2000, feature_image: int = 0, device: str = "auto",
                 data_dir: str | Path | None = None, progress: bool = True, allow_unfinished: bool = False,
                 data: Cifar10 | None = None) -> dict:
    """Test ``best.pt`` of a run once, save what the figures need, draw them; returns the summary.

    ``tsne_samples`` test images (a seeded random subset; 0 = all) go into the
    t-SNE; ``feature_image`` is the index of the test image whose feature maps
    are drawn. ``data_dir`` overrides the run's ``--data-dir`` (a run folder
    moved to another machine); ``data`` is the data set already loaded from there (a study evaluating
    its runs loads it once). A run that has not finished training is refused unless ``allow_unfinished``.
    With the run's ``tta: flip`` the test accuracy of flip test-time augmentation is recorded beside the
    plain one (``test_accuracy_tta``).
    """
    if not isinstance(tsne_samples, int) or tsne_samples < 0:
        raise ConfigError(f"{param('tsne_samples')}: expected 0 (all test images) or a positive number, "
                          f"got {tsne_samples!r}")
    if not isinstance(feature_image, int) or feature_image < 0:
        raise ConfigError(f"{param('feature_image')}: expected the index of a test image (0 or more), "
                          f"got {feature_image!r}")
    run = RunDir(run_dir)
    run.expect_study(CifarTrainConfig)
    with run.lock("cifar evaluate"):
        return _evaluate_run(run, tsne_samples, feature_image, device, data_dir, progress, allow_unfinished, data)


def _evaluate_run(run: RunDir, tsne_samples: int, feature_image: int, device: str, data_dir: str | Path | None,
                  progress: bool, allow_unfinished: bool, data: Cifar10 | None) -> dict:
    from cnnlab.cifar.train import flipped_eval_transform
    from cnnlab.inference.runs import load_cifar_network

    cfg = from_dict(CifarTrainConfig, run.read_config(), source=str(run.config_path))
    summary = run.read_summary()
    with log_to_file(run.log_path):
        dev = resolve_device(device)
        # The precision and memory format training tested with, so the test accuracy is the same number.
        # Runs from before summaries recorded them get what the precision policy picks now.
        precision = summary.get("precision") or cfg.precision
        channels_last = summary.get("channels_last")
        if channels_last is None or precision == "auto":
            choice = select_precision(dev, precision, channels_last if channels_last is not None else cfg.channels_last)
            precision, channels_last = choice.precision, choice.channels_last
        # A test of an unfinished run describes a best checkpoint that training may still replace: refused
        # unless asked for.
        model, ckpt = load_cifar_network(run, "best", dev, allow_unfinished)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)

        if data is None:
            data = load_cifar10(data_dir if data_dir is not None else cfg.data_dir, False, cfg.skip_bad_images)
        n_test = len(data.test_labels)
        if feature_image >= n_test:
            raise ConfigError(f"{param('feature_image')} {feature_image}: the test set has {n_test} images "
                              f"(indices 0..{n_test - 1})")
        classes = list(data.classes)
        logger.info("evaluating %s (best epoch %s) on %d test images on %s, %s", run.path, ckpt.get("epoch", "?"),
                    n_test, dev, precision)

        kw = dict(device=dev, batch_size=cfg.eval_batch_size, precision=precision, channels_last=channels_last)
        logits, feats = infer(model, data.test_images, eval_transform, features=True,
                              desc="test" if progress else None, **kw)
        source = f"the network of {run.best_checkpoint} ({precision} on {dev})"
        check_finite(logits, "logits", source)
        check_finite(feats, "features", source)
        labels = data.test_labels.numpy()
        preds = logits.argmax(1).numpy()
        test_acc = accuracy(preds, labels)
        tta = {}
        if cfg.tta == "flip":
            mirrored = infer(model, data.test_images, flipped_eval_transform, desc="test (flipped)" if progress else None,
                             **kw)
            tta["test_accuracy_tta"] = accuracy(((logits + mirrored) / 2).argmax(1).numpy(), labels)
        cm = confusion_matrix(preds, labels, len(classes))
        per_class = per_class_accuracy(cm)
        trained = summary.get("test_accuracy")
        if isinstance(trained, (int, float)) and not math.isclose(trained, test_acc, abs_tol=1e-9):
            logger.warning("test accuracy %.4f differs from the %.4f measured after training "
                           "(another data folder or device?)", test_acc, trained)
        epoch = np.int64(ckpt.get("epoch", -1))  # which best.pt these files describe; figures checks it
        _save_npz(run.path / PREDICTIONS_FILE, logits=logits.numpy(), predictions=preds, labels=labels,
                  classes=np.array(classes), checkpoint_epoch=epoch)

        subset = _tsne_subset(n_test, tsne_samples, cfg.seed)
        coords = tsne_2d(feats[subset].numpy(), cfg.seed)
        _save_npz(run.path / FEATURES_FILE, features=feats[subset].numpy(), labels=labels[subset],
                  test_index=subset, tsne=coords, classes=np.array(classes), checkpoint_epoch=epoch)

        maps = feature_maps(model, data.test_images[feature_image], dev)
        _save_npz(run.path / FEATURE_MAPS_FILE, image=data.test_images[feature_image].numpy(),
                  label=np.int64(labels[feature_image]), prediction=np.int64(preds[feature_image]),
                  test_index=np.int64(feature_image), classes=np.array(classes), checkpoint_epoch=epoch,
                  layer_names=np.array([name for name, _, _ in maps]),
                  **{f"map_{i}": m for i, (_, m, _) in enumerate(maps)},
                  **{f"channels_{i}": c for i, (_, _, c) in enumerate(maps)})

        written = _redraw_figures(run, best_epoch=ckpt.get("epoch"))  # best.pt is loaded already
        summary = run.update_summary(
            test_accuracy=test_acc,
            **tta,
            per_class_accuracy={c: (None if math.isnan(a) else float(a)) for c, a in zip(classes, per_class)},
            confusion_matrix=cm.tolist(),
            tsne_samples=len(subset),
            feature_image=feature_image,
            evaluated_epoch=ckpt.get("epoch"),
            evaluated_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            figures=[p.name for p in written],
        )
        write_run_report(run, cfg, summary, written)
        logger.info("test accuracy %.4f; figures in %s", test_acc, run.figures, extra=FILE_ONLY)
    return summary


def _tsne_subset(n: int, samples: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset of ``samples`` of ``n`` (all when 0 or more than ``n``)."""
    if samples == 0 or samples >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=samples, replace=False))


def tsne_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, F) features -> (N, 2) t-SNE coordinates (scikit-learn, PCA initialisation, seeded)."""
    from sklearn.manifold import TSNE

    n = len(features)
    if n < 3:
        raise CnnlabError(f"t-SNE needs at least 3 test images, got {n}")
    # The perplexity must stay below the number of points; 30 is the usual value.
    perplexity = float(min(30.0, (n - 1) / 3))
    logger.info("t-SNE of %d features of dimension %d (perplexity %g)%s", n, features.shape[1], perplexity,
                "; this takes a minute or so" if n > 3000 else "")
    t0 = time.perf_counter()
    coords = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                  random_state=seed).fit_transform(features.astype(np.float32))
    logger.info("t-SNE done in %.1fs", time.perf_counter() - t0)
    return coords.astype(np.float32)


@torch.no_grad()
def feature_maps(model, image: torch.Tensor, device: torch.device,
                 max_channels: int = MAX_MAP_CHANNELS) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(layer name, maps (K, H, W), channel indices (K,))`` for the stem and each block.

    Of each layer the ``max_channels`` channels with the strongest mean
    activation are kept (in channel order): after a ReLU many channels are
    silent for any one image, and a grid of blank squares says nothing.
    """
    model.eval()
    x = eval_transform(image[None]).to(device)  # (1, 3, H, W)
    _, maps = model.forward_features(x.contiguous(memory_format=torch.contiguous_format), return_maps=True)
    names = ["stem"] + [f"block {i + 1}: {b}" for i, b in enumerate(model.block_names)]
    out = []
    for name, m in zip(names, maps):
        m = m[0].float().cpu()  # (C, H, W)
        k = min(max_channels, m.shape[0])
        keep = torch.topk(m.mean(dim=(1, 2)), k).indices.sort().values
        out.append((name, m[keep].numpy(), keep.numpy()))
    return out


# --- figures of a run ------------------------------------------------------------------


def redraw_figures(run_dir: str | Path) -> list[Path]:
    """Draw every figure of a run whose data is in the folder; returns the files written.

    The curves need only ``metrics.csv``; the others need the files that
    ``cnnlab cifar evaluate`` saves, and are skipped (with a log line) without them.
    """
    run = RunDir(run_dir)
    run.expect_study(CifarTrainConfig)
    with run.lock("cifar figures"):
        return _redraw_figures(run)


def _redraw_figures(run: RunDir, best_epoch: int | None = None) -> list[Path]:
    from cnnlab.viz import cifar as viz

    if not run.metrics_path.is_file():
        raise CnnlabError(f"{run.path} has no metrics.csv: it holds no run, or no epoch has finished yet")
    summary = run.read_summary()
    name = _run_name(run, summary)
    fig_dir = run.figures
    written = [viz.plot_curves(run.metrics_path, fig_dir / FIGURES["curves"],
                               best_epoch=summary.get("best_epoch"),
                               title=f"Training curves: {name}{_training_facts(run, summary)}")]

    best = best_epoch if best_epoch is not None else run.best_epoch()
    pred = _load_npz(run.path / PREDICTIONS_FILE, ("predictions", "labels", "classes"), run, best)
    if pred is not None:
        classes = [str(c) for c in pred["classes"]]
        cm = confusion_matrix(pred["predictions"], pred["labels"], len(classes))
        acc = accuracy(pred["predictions"], pred["labels"])
        written.append(viz.plot_confusion_matrix(
            cm, classes, fig_dir / FIGURES["confusion_matrix"],
            title=f"Confusion matrix: {name}, {int(cm.sum()):,} test images, accuracy {acc:.1%}"))
        written.append(viz.plot_per_class_accuracy(
            per_class_accuracy(cm), classes, fig_dir / FIGURES["per_class_accuracy"], overall=acc,
            title=f"Per-class test accuracy: {name}"))

    feats = _load_npz(run.path / FEATURES_FILE, ("tsne", "labels", "classes"), run, best)
    if feats is not None:
        written.append(viz.plot_tsne(
            feats["tsne"], feats["labels"], [str(c) for c in feats["classes"]], fig_dir / FIGURES["tsne"],
            title=f"t-SNE of the pre-classifier features: {name}, {len(feats['labels']):,} test images"))

    fm = _load_npz(run.path / FEATURE_MAPS_FILE, ("image", "label", "prediction", "test_index", "classes",
                                                  "layer_names"), run, best)
    if fm is not None:
        layers = [str(n) for n in fm["layer_names"]]
        missing = [f"map_{i}" for i in range(len(layers)) if f"map_{i}" not in fm]
        if missing:
            raise DataError(f"{run.path / FEATURE_MAPS_FILE} lacks {', '.join(missing)}; "
                            f"run `cnnlab cifar evaluate {run.path}` again")
        classes = [str(c) for c in fm["classes"]]
        true, pred_c = classes[int(fm["label"])], classes[int(fm["prediction"])]
        written.append(viz.plot_feature_maps(
            fm["image"], [fm[f"map_{i}"] for i in range(len(layers))], layers, fig_dir / FIGURES["feature_maps"],
            title=f"Feature maps: {name}",
            caption=f"test image {int(fm['test_index'])}\ntrue class: {true}\npredicted: {pred_c}\n\n"
                    f"each row: the {fm['map_0'].shape[0]} channels of a layer with the strongest mean activation,\n"
                    "each on its own colour scale (bright = strong)"))
    logger.debug("wrote %d figure(s) to %s", len(written), fig_dir)
    return written


def _run_name(run: RunDir, summary: dict) -> str:
    blocks, width = summary.get("blocks"), summary.get("width")
    if blocks is None:
        try:
            cfg = run.read_config()
            blocks, width = cfg.get("blocks"), cfg.get("width")
        except CnnlabError:
            return run.path.name
    pooling = ", original pooling" if summary.get("pooling") == "original" else ""
    return f"BaseCNN {blocks}" + (f" (width {width:g}{pooling})" if isinstance(width, (int, float)) else "")


def _training_facts(run: RunDir, summary: dict) -> str:
    """", 30 epochs, 49,000 training images": what a curve's title needs beside the network."""
    epochs, num_train = summary.get("epochs_trained", summary.get("epochs")), summary.get("num_train")
    if epochs is None:
        try:
            epochs = run.read_config().get("epochs")
        except CnnlabError:
            pass
    parts = [f"{epochs} epoch{'s' if epochs != 1 else ''}" if isinstance(epochs, int) else "",
             f"{num_train:,} training images" if isinstance(num_train, int) else ""]
    return "".join(f", {p}" for p in parts if p)


WIDE_FIGURES = (FIGURES["confusion_matrix"], FIGURES["feature_maps"])
REPORT_CAPTIONS = {
    "curves.png": "Loss and accuracy per epoch, train and validation; the dashed line marks the best epoch "
                  "(its checkpoint is the one tested).",
    "confusion_matrix.png": "Test-set confusion matrix: counts, and fractions of each true class.",
    "per_class_accuracy.png": "Test accuracy of each class, with the overall accuracy.",
    "tsne.png": "t-SNE of the features before the classifier, test images coloured by their true class.",
    "feature_maps.png": "Feature maps of one test image: the most active channels of the stem and of each block.",
}


def write_run_report(run: RunDir, cfg: CifarTrainConfig, summary: dict, figures: list[Path]) -> tuple[Path, Path]:
    """``report.md`` and a self-contained ``report.html`` of one evaluated run."""
    from cnnlab.cifar.train import describe_recipe
    from cnnlab.report import METRIC_COLUMNS, Figure, Section, Table, config_table, provenance, seconds, write_report
    from cnnlab.run import command_line

    name = _run_name(run, summary)
    pct = lambda v: f"{v:.2%}" if isinstance(v, (int, float)) else "–"  # noqa: E731
    sizes = [summary.get(k) for k in ("num_train", "num_val", "num_test")]
    intro = (f"{name}, {summary.get('params', 0):,} trainable parameters, trained "
             f"{summary.get('epochs_trained', summary.get('epochs', cfg.epochs))} epochs on "
             + (f"{sizes[0]:,} training images ({sizes[1]:,} validation, {sizes[2]:,} test)."
                if all(isinstance(n, int) for n in sizes) else "CIFAR-10 (sizes not recorded).")
             + f" The test images were scored once, with the best checkpoint (epoch {summary.get('best_epoch', '?')}, "
               "the best validation accuracy). Training: " + describe_recipe(cfg) + ".")
    rows = [
        ["best validation accuracy", f"{pct(summary.get('best_val_accuracy'))} (epoch {summary.get('best_epoch', '?')})"],
        ["test accuracy", pct(summary.get("test_accuracy"))],
        *([["test accuracy with flip TTA", pct(summary["test_accuracy_tta"])]] if "test_accuracy_tta" in summary
          else []),
        ["test loss", summary.get("test_loss", math.nan)],
        ["training images", summary.get("num_train", "–")],
        ["training time", seconds(summary.get("train_seconds"))],
        *_recipe_rows(cfg, summary),
    ]
    sections = [
        Section("Results", "", [Table(METRIC_COLUMNS, rows)]),
        # The two grids of small cells are unreadable at half the page's width.
        Section("Figures", "", [Figure(p, REPORT_CAPTIONS.get(p.name, ""),
                                       wide=True if p.name in WIDE_FIGURES else None) for p in figures]),
    ]
    sections.append(provenance(summary, "cifar", command_line(), "cnnlab.cifar.evaluate.evaluate_run"))
    sections.append(Section("Configuration", "`config.yaml`; `cnnlab cifar train --config config.yaml` repeats it.",
                            [config_table(cfg)]))
    return write_report(run.path, f"CIFAR-10 run {run.path.name}", sections, intro=intro)


def _recipe_rows(cfg: CifarTrainConfig, summary: dict) -> list[list]:
    """How the run trained, for its report: the recipe, the network's pooling and the time budget."""
    from cnnlab.report import seconds

    rows = [["recipe", cfg.recipe or "none recorded"],
            ["pooling", "original (one MaxPool, after block 8: the study notebook's network)"
             if cfg.pooling == "original" else "intended (MaxPool after blocks 3, 5 and 8)"]]
    if cfg.time_budget is not None:
        used = summary.get("time_used_seconds")
        rows.append(["time budget", f"{cfg.time_budget} ({seconds(cfg.time_budget_seconds)}); used {seconds(used)} "
                                    f"in {summary.get('epochs_trained', '?')} epochs on {summary.get('device', '?')}"])
    return rows


def _save_npz(path: Path, **arrays) -> None:
    with atomic_open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


def _load_npz(path: Path, keys: tuple[str, ...], run: RunDir, best_epoch: int | None) -> dict[str, np.ndarray] | None:
    """The arrays of ``path``, or None (logged) when it is absent; a :class:`DataError` when unreadable.

    A warning when they were computed from another best checkpoint than the run's now (it trained on)."""
    if not path.is_file():
        logger.info("skipping the figures of %s: it is absent (run `cnnlab cifar evaluate %s` first)",
                    path.name, run.path)
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as e:  # noqa: BLE001 -- a damaged .npz fails as OSError, ValueError, EOFError, BadZipFile, ...
        raise DataError(f"{path} cannot be read ({e}); run `cnnlab cifar evaluate {run.path}` again") from None
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; run `cnnlab cifar evaluate {run.path}` again")
    epoch = int(arrays["checkpoint_epoch"]) if "checkpoint_epoch" in arrays else None
    if epoch is not None and best_epoch is not None and epoch != best_epoch:
        logger.warning("%s was computed from the best checkpoint of epoch %d, but the run's best checkpoint is now "
                       "epoch %d: its figures are out of date; run `cnnlab cifar evaluate %s` to renew them",
                       path.name, epoch, best_epoch, run.path)
    return arrays


# --- figures of the data ---------------------------------------------------------------


AUGMENT_NAMES = {"study": "ColorJitter, RandomAffine, flip",
                 "crop-flip": "random crop of the image padded by 4 reflected pixels, flip", "none": "none"}


def data_figures(data_dir: str | Path, out: str | Path, seed: int = 0, val_per_class: int | None = None,
                 skip_bad_images: bool = False, samples: int = 50, draws: int = 10, augment: str = "study",
                 data: Cifar10 | None = None) -> list[Path]:
    """The augmented training images, the validation split's classes and one image's augmentation draws.

    The split is the one training makes with the same ``seed`` and
    ``val_per_class``; images are shown un-normalised, after the training augmentation ``augment``
    (a name of :data:`~cnnlab.data.augment.CIFAR_AUGMENTS`). The draws of ColorJitter and RandomAffine
    are the study augmentation's: they are drawn only for it. ``data``: the data set of ``data_dir``,
    when already loaded.
    """
    from cnnlab.viz import cifar as viz

    if val_per_class is not None and val_per_class < 1:
        raise ConfigError(f"{param('val_per_class')}: expected a positive integer, got {val_per_class}")
    if augment not in CIFAR_AUGMENTS:
        raise ConfigError(f"{param('augment')}: expected {', '.join(CIFAR_AUGMENTS)}, got {augment!r}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise CnnlabError(f"{param('out')} {out} is a file, expected a folder")
    data = data if data is not None else load_cifar10(data_dir, False, skip_bad_images)
    classes = list(data.classes)
    train_idx, val_idx = stratified_split(data.train_labels, val_per_class, seed)
    aug = CIFAR_AUGMENTS[augment]
    g = torch.Generator().manual_seed(seed)
    written = []

    pick = train_idx[torch.randperm(len(train_idx), generator=g)[:samples]]
    x = data.train_images[pick].float() / 255  # (S, 3, H, W) in [0, 1]
    shown = aug.apply(x, aug.draw(len(x), g, size=x.shape[-1])) if aug is not None else x
    written.append(viz.plot_image_grid(
        shown.numpy(), data.train_labels[pick].tolist(), classes, out / DATA_FIGURES[0], cols=10,
        title=f"{len(pick)} random training images after augmentation ({AUGMENT_NAMES[augment]})"))

    counts = torch.bincount(data.train_labels[val_idx], minlength=len(classes)).numpy()
    rule = f"{val_per_class} a class" if val_per_class is not None else "20% of each class, at most 1,000"
    written.append(viz.plot_class_distribution(
        counts, classes, out / DATA_FIGURES[1],
        title=f"Validation split: {int(counts.sum()):,} images ({rule}, seed {seed}); "
              f"{len(train_idx):,} left for training"))
    if augment == "study":
        written.append(_augment_draws(x, g, draws, classes[int(data.train_labels[pick[0]])], out / DATA_FIGURES[2]))
    logger.debug("wrote %s to %s", ", ".join(p.name for p in written), out)
    return written


def _augment_draws(x: torch.Tensor, g: torch.Generator, draws: int, label: str, path: Path) -> Path:
    """``draws`` draws of the study's ColorJitter and of its RandomAffine on the first image of ``x``."""
    from cnnlab.viz import cifar as viz

    aug = AugmentConfig()
    one = x[:1].expand(draws, -1, -1, -1)  # the first sample, drawn `draws` times
    p = draw_params(draws, aug, g, size=x.shape[-1])
    jitter = color_jitter(one.clone(), p["brightness"], p["contrast"], p["saturation"])
    theta = affine_matrices(p["angle"], p["tx"], p["ty"], p["scale"], x.shape[2], x.shape[3])
    affine = random_affine(one.clone(), theta)
    jitter_captions = [f"b {b:.2f} c {c:.2f}\ns {s:.2f}"
                       for b, c, s in zip(p["brightness"].tolist(), p["contrast"].tolist(), p["saturation"].tolist())]
    # Rounded to ints first, so that no caption reads "-0".
    affine_captions = [f"{round(a):+d}° x{s:.2f}\nshift ({round(tx):+d}, {round(ty):+d})"
                       for a, s, tx, ty in zip(p["angle"].tolist(), p["scale"].tolist(), p["tx"].tolist(),
                                               p["ty"].tolist())]
    return viz.plot_augment_draws(
        x[0].numpy(), [("ColorJitter", jitter.numpy(), jitter_captions),
                       ("RandomAffine", affine.numpy(), affine_captions)],
        path,
        title=f"One training image ({label}): {draws} draws of ColorJitter "
              f"(brightness, contrast, saturation {aug.brightness}) and of RandomAffine "
              f"(±{aug.degrees:g}°, translate {aug.translate}, scale {aug.scale[0]}–{aug.scale[1]})")
