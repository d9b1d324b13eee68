"""``cnnlab cifar compare``: train (or reuse) each variant, evaluate it, and write the study.

A study folder holds one run folder per variant and seed (``runs/<variant>-seed<k>``),
``comparison.csv``, ``comparison.md``, ``report.md`` and a self-contained
``report.html``. Finished runs with the same configuration are reused,
unfinished ones resumed, so an interrupted study is continued by running the
same command again. To train variants on several GPUs, run each with
``torchrun ... cnnlab cifar train --out STUDY/runs/<variant>-seed<k>`` and then
``compare``: it picks up the finished runs.

The best variant is chosen by mean validation accuracy, never by test accuracy.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import statistics
from dataclasses import dataclass, field, replace
from pathlib import Path

from cnnlab.cifar.train import RUNTIME_FIELDS, describe_recipe, train
from cnnlab.config import CifarTrainConfig, to_dict
from cnnlab.errors import CnnlabError, ConfigError, param
from cnnlab.files import atomic_write_text
from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.blocks import format_blocks, parse_blocks
from cnnlab.models.profile import count_macs
from cnnlab.report import Figure, Section, Table, markdown_table, write_report
from cnnlab.run import FILE_ONLY, RunDir, log_to_file

logger = logging.getLogger(__name__)

STUDY_VARIANTS = ("A", "B", "C", "D", "D-sep", "E")


@dataclass
class VariantResult:
    variant: str
    runs: list[Path]
    params: int
    macs: int
    train_seconds: list[float]
    best_val: list[float]
    test: list[float]
    best_epochs: list[int]
    test_tta: list[float] = field(default_factory=list)

    @property
    def val_mean(self) -> float:
        return statistics.fmean(self.best_val)

    def row(self) -> dict:
        def ms(v):
            return (statistics.fmean(v), statistics.stdev(v) if len(v) > 1 else float("nan"))

        (vm, vs), (tm, ts), (sm, _) = ms(self.best_val), ms(self.test), ms(self.train_seconds)
        return {"variant": self.variant, "seeds": len(self.runs), "params": self.params, "macs": self.macs,
                "train_seconds": sm, "best_val_accuracy": vm, "best_val_accuracy_std": vs,
                "test_accuracy": tm, "test_accuracy_std": ts,
                "best_epoch": " / ".join(str(e) for e in self.best_epochs),  # one per seed
                # flip test-time augmentation, where every seed's run reported it
                "test_accuracy_tta": statistics.fmean(self.test_tta) if len(self.test_tta) == len(self.runs)
                else float("nan")}


def parse_variants(text: str | list[str]) -> list[str]:
    items = text.split(",") if isinstance(text, str) else list(text)
    variants = [format_blocks(parse_blocks(v.strip())) for v in items if v.strip()]
    if not variants:
        raise ConfigError(f"{param('blocks')}: give a comma-separated list of variants, e.g. A,B,C,D,D-sep,E")
    if len(set(variants)) != len(variants):
        raise ConfigError(f"{param('blocks')} {text!r}: a variant is listed twice")
    return variants


def parse_seeds(text: str | list[int] | None, default: int) -> list[int]:
    if text is None or text == "":
        return [default]
    try:
        seeds = [int(s) for s in text.split(",")] if isinstance(text, str) else [int(s) for s in text]
    except ValueError:
        raise ConfigError(f"{param('seeds')} {text!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{param('seeds')} {text!r}: a seed is listed twice")
    return seeds


def run_name(variant: str, seed: int) -> str:
    return f"{variant}-seed{seed}"


def _comparable(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if k not in RUNTIME_FIELDS}


def _train_or_reuse(cfg: CifarTrainConfig, out: Path, data: _StudyData) -> dict:
    run = RunDir(out)
    if run.exists():
        saved = run.read_config()
        if _comparable(saved) != _comparable(to_dict(cfg)):
            diff = sorted(k for k in _comparable(to_dict(cfg)) if saved.get(k) != to_dict(cfg).get(k))
            raise CnnlabError(
                f"{out} holds a run with other options ({', '.join(diff)}); use another study folder "
                "or remove that run"
            )
        if run.read_summary().get("status") == "finished":
            logger.info("reusing the finished run %s", out)
            return run.read_summary()
        logger.info("resuming the unfinished run %s", out)
        return train(cfg, out, resume=True, data=data.get())
    return train(cfg, out, data=data.get())


class _StudyData:
    """The study's data set, loaded (decoded or read from the cache, its source files listed and
    fingerprinted) once for all its runs, their evaluations and its data figures, and only when one needs it:
    a rerun that reuses every finished run loads nothing."""

    def __init__(self, base: CifarTrainConfig):
        self.base, self.data = base, None

    def get(self):
        from cnnlab.data.cifar10 import load_cifar10

        if self.data is None:
            self.data = load_cifar10(self.base.data_dir, self.base.download, self.base.skip_bad_images)
        return self.data


def compare(base: CifarTrainConfig, variants: list[str], out: str | Path, seeds: list[int] | None = None,
            evaluate: bool = True, tsne_samples: int = 2000) -> list[dict]:
    """Train/reuse every (variant, seed), evaluate each, write the comparison and report."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = seeds or [base.seed]
    data = _StudyData(base)
    with log_to_file(out / "compare.log"):
        results = []
        for v in variants:
            runs, summaries = [], []
            for s in seeds:
                path = out / "runs" / run_name(v, s)
                logger.info("== %s, seed %d", v, s)
                summaries.append(_train_or_reuse(replace(base, blocks=v, seed=s), path, data))
                runs.append(path)
                if evaluate:
                    _evaluate_if_needed(path, tsne_samples, data)
            model = BaseCNN(v, base.width, pooling=base.pooling)
            results.append(VariantResult(
                variant=v, runs=runs, params=summaries[0]["params"], macs=count_macs(model),
                train_seconds=[s["train_seconds"] for s in summaries],
                best_val=[s["best_val_accuracy"] for s in summaries],
                test=[s["test_accuracy"] for s in summaries],
                best_epochs=[s.get("best_epoch", 0) for s in summaries],
                test_tta=[s["test_accuracy_tta"] for s in summaries if "test_accuracy_tta" in s]))
        rows = [r.row() for r in results]
        best = max(results, key=lambda r: r.val_mean)
        write_comparison(out, rows, best.variant)
        if evaluate:
            _data_figures(base, out, data)
        write_study_report(out, results, best, base, seeds)
        logger.info("best variant by validation accuracy: %s (%.4f)", best.variant, best.val_mean, extra=FILE_ONLY)
    return rows


def _evaluate_if_needed(run_dir: Path, tsne_samples: int, data: _StudyData) -> None:
    from cnnlab.cifar.evaluate import evaluate_run

    if "evaluated_at" not in RunDir(run_dir).read_summary():
        evaluate_run(run_dir, tsne_samples=tsne_samples, data=data.get())


def _data_figures(base: CifarTrainConfig, out: Path, data: _StudyData) -> None:
    from cnnlab.cifar.evaluate import DATA_FIGURES, data_figures

    folder = out / "data-figures"
    drawn = DATA_FIGURES if base.augment == "study" else DATA_FIGURES[:2]  # the draws are the study augmentation's
    if not all((folder / name).is_file() for name in drawn):
        data_figures(base.data_dir, folder, seed=base.seed, val_per_class=base.val_per_class, augment=base.augment,
                     data=data.get())


COLUMNS = ("variant", "seeds", "params", "macs", "train_seconds", "best_val_accuracy", "best_val_accuracy_std",
           "test_accuracy", "test_accuracy_std", "best_epoch", "test_accuracy_tta")


def _pm(mean: float, std: float, pct: bool = True) -> str:
    if math.isnan(mean):
        return "–"
    scale = 100 if pct else 1
    s = f"{mean * scale:.2f}"
    return s if math.isnan(std) else f"{s} ± {std * scale:.2f}"


def table_rows(rows: list[dict], best: str) -> tuple[list[str], list[list]]:
    header = ["variant", "trainable params", "MACs / image", "train time (s)", "best val acc (%)", "best epoch",
              "test acc (%)"]
    tta = any(isinstance(r.get("test_accuracy_tta"), float) and not math.isnan(r["test_accuracy_tta"]) for r in rows)
    header += ["test acc, flip TTA (%)"] if tta else []
    body = []
    for r in rows:
        name = r["variant"] + (" (best)" if r["variant"] == best else "")
        body.append([name, int(r["params"]), int(r["macs"]), round(r["train_seconds"]),
                     _pm(r["best_val_accuracy"], r["best_val_accuracy_std"]), r.get("best_epoch", "–"),
                     _pm(r["test_accuracy"], r["test_accuracy_std"])]
                    + ([_pm(r["test_accuracy_tta"], math.nan)] if tta else []))
    return header, body


def write_comparison(out: Path, rows: list[dict], best: str) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "comparison.csv", buf.getvalue())
    header, body = table_rows(rows, best)
    atomic_write_text(out / "comparison.md", markdown_table(header, body) + "\n\n"
                      f"Best variant by validation accuracy: **{best}**.\n")


def read_comparison(out: str | Path) -> list[dict]:
    with open(Path(out) / "comparison.csv", newline="") as f:
        return [{k: (v if k in ("variant", "best_epoch") else float(v)) for k, v in r.items()}
                for r in csv.DictReader(f)]


def _length(cfg: CifarTrainConfig) -> str:
    """"30 epochs", or "a 20m time budget (at most 30 epochs)"."""
    if cfg.time_budget is None:
        return f"{cfg.epochs} epochs"
    return f"a {cfg.time_budget} time budget of training per run (at most {cfg.epochs} epochs)"


def write_study_report(out: Path, results: list[VariantResult], best: VariantResult, base: CifarTrainConfig,
                       seeds: list[int]) -> tuple[Path, Path]:
    from cnnlab.viz.compare import plot_curves_overlay

    from cnnlab.report import provenance
    from cnnlab.run import command_line

    rows = [r.row() for r in results]
    figs = out / "figures"
    first = RunDir(results[0].runs[0]).read_summary()
    num_train = first.get("num_train")
    size = f", {num_train:,} training images" if isinstance(num_train, int) else ""
    curves = plot_curves_overlay({r.variant: r.runs[0] / "metrics.csv" for r in results}, figs / "curves.png",
                                 title=f"Validation curves: width {base.width:g}, {_length(base)}{size}")
    header, body = table_rows(rows, best.variant)
    seeds_txt = f"{len(seeds)} seeds ({', '.join(map(str, seeds))}), mean ± std" if len(seeds) > 1 else \
        f"seed {seeds[0]}"
    sections = [
        Section("Comparison", f"Width {base.width}, {_length(base)}{size}; {describe_recipe(base)}; {seeds_txt}. "
                f"The best variant is chosen by validation accuracy, never by test accuracy: "
                f"**{best.variant}**.", [Table(header, body)]),
        Section("Training curves", "Validation accuracy and loss per epoch (first seed of each variant).",
                [Figure(curves, "validation curves of all variants")]),
    ]
    bfig = best.runs[0] / "figures"
    best_items = [Figure(bfig / n, c, wide) for n, c, wide in (
        ("confusion_matrix.png", f"{best.variant}: confusion matrix on the test set", True),
        ("curves.png", f"{best.variant}: loss and accuracy", None),
        ("tsne.png", f"{best.variant}: t-SNE of test features", None),
        ("feature_maps.png", f"{best.variant}: feature maps of one test image", True)) if (bfig / n).is_file()]
    if best_items:
        sections.append(Section(f"Best variant: {best.variant}", "", best_items))
    tsne = [Figure(r.runs[0] / "figures" / "tsne.png", f"{r.variant}") for r in results
            if (r.runs[0] / "figures" / "tsne.png").is_file()]
    if tsne:
        sections.append(Section("t-SNE of each variant", "Features before the classifier, test images.", tsne))
    data = [Figure(out / "data-figures" / n, c) for n, c in (
        ("augmented_samples.png", "augmented training images"),
        ("augment_draws.png", "ColorJitter and RandomAffine draws of one image"),
        ("val_class_distribution.png", "validation split by class")) if (out / "data-figures" / n).is_file()]
    if data:
        sections.append(Section("Data", "", data))
    configs = "\n\n".join(f"# {r.variant}: {r.runs[0].name}\n" + (r.runs[0] / "config.yaml").read_text()
                          for r in results)
    how = provenance(first, "cifar", command_line(), "cnnlab.cifar.compare.compare")
    how.text = f"The runs of `{out / 'runs'}`; the first: " + how.text[0].lower() + how.text[1:]
    sections.append(how)
    sections.append(Section("Run configurations", "", [configs]))
    return write_report(out, "CIFAR-10 block study", sections,
                        intro="BaseCNN with its eight middle blocks swapped between designs, trained on "
                              "CIFAR-10 and compared by accuracy, parameters, compute and training time.")

