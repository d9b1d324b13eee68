"""Training recipes side by side: recipe x variant x budget -> accuracy and speed, in one table.

Each row is one cnnlab training run (``cnnlab.cifar.train.train``, the code ``cnnlab cifar train`` runs)
of a BaseCNN variant with a recipe (``cnnlab cifar recipes`` lists them) under a time budget (or, with
the budget ``epochs``, the recipe's own epochs). Columns: the epochs it trained, the best validation
accuracy (what chooses a recipe), the test accuracy (and with flip TTA where the recipe reports it), the
training seconds, images per second, and the machine (device, and threads on a CPU). The best recipe of
each variant and budget is named by validation accuracy, never by test accuracy.

Runs go to OUT/runs/<recipe>-<variant>-<budget>/ as ordinary run folders: a finished one is reused and an
unfinished one resumed, so an interrupted benchmark continues where it stopped when run again.

Time: the sum of the budgets over all rows, plus for each run about 10 s on a GPU (data loading,
validation after every epoch, the test pass) and a few percent of its budget on a CPU (validation is
not counted in a budget): the CPU setting below, 2 runs of 20 minutes, takes about 45 minutes on 2 idle
cores; --toy about a minute for 6 runs. The header prints the estimate before the first run. The
settings for the measurements in the README:

    # CPU: block B at width 0.25, a 20-minute budget per run, 2 threads (about 45 minutes for 2 recipes)
    python benchmarks/recipes.py --data-dir data/cifar10 --recipes study,fast --blocks B --width 0.25 \\
        --budgets 20m --threads 2 --out bench/recipes-cpu --json bench/recipes-cpu.json
    # GPU: the six variants at full width, 5 minutes each (about 65 minutes for 2 recipes; a run that
    # trains its recipe's epochs sooner ends there)
    python benchmarks/recipes.py --data-dir data/cifar10 --recipes study,fast \\
        --blocks A,B,C,D,D-sep,E --width 1 --budgets 5m --out bench/recipes-gpu --json bench/recipes-gpu.json

``--toy`` shrinks everything to seconds (width 0.125, batch 32, 2 epochs at most, budgets of 2 s), for
tests and a dry run on a small --data-dir.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from cnnlab.cifar.train import train
from cnnlab.config import CifarTrainConfig, from_dict, parse_duration
from cnnlab.models.blocks import format_blocks, parse_blocks
from cnnlab.recipes import load_recipe
from cnnlab.report import markdown_table
from cnnlab.run import RunDir, setup_logging
from cnnlab.runtime import device_name, resolve_device

COLUMNS = ("recipe", "variant", "budget", "epochs", "best val acc (%)", "test acc (%)", "test acc TTA (%)",
           "train s", "img/s", "machine")
TOY = {"width": 0.125, "batch_size": 32, "eval_batch_size": 64, "epochs": 2, "warmup_epochs": 0.0}
SECONDS_PER_RUN = 10  # data loading, validation and the test pass of a run on a GPU, beside its budget


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="CIFAR-10 folder, as cnnlab cifar train takes it")
    p.add_argument("--recipes", default="study,fast", metavar="LIST",
                   help="comma-separated recipe names or YAML files (default: study,fast)")
    p.add_argument("--blocks", default="B", metavar="LIST", help="comma-separated variants (default: B)")
    p.add_argument("--width", type=float, default=None, help="width of every run (default: the recipe's, 1.0)")
    p.add_argument("--budgets", default=None, metavar="LIST",
                   help="comma-separated time budgets (90s, 20m, 1.5h), or 'epochs' for the recipe's own epochs "
                        "without a budget (default: 20m; with --toy 2s)")
    p.add_argument("--epochs", type=int, default=None,
                   help="the most epochs a budgeted run trains, and what its schedule spans (default: the "
                        "recipe's)")
    p.add_argument("--max-train-samples", type=int, default=None, help="train on a seeded subset (default: all)")
    p.add_argument("--threads", type=int, default=None, help="torch threads on a CPU (default: torch's choice)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of every run (default: 0)")
    p.add_argument("--out", default="bench/recipes", help="folder of the runs (default: bench/recipes)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the rows here (default: none)")
    p.add_argument("--toy", action="store_true", help="tiny runs of seconds, for tests and dry runs")
    return p


def _budgets(text: str) -> list[str | None]:
    """The budgets asked for: a duration each, or None (``epochs``: the recipe's epochs, no budget)."""
    out = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        if item != "epochs":
            parse_duration(item, "budgets")  # a ConfigError naming the value, before any run
        out.append(None if item == "epochs" else item)
    return out


def _config(recipe: str, variant: str, budget: str | None, a: argparse.Namespace) -> CifarTrainConfig:
    """The run's configuration: the recipe's values, then this benchmark's."""
    r = load_recipe(recipe)
    values = {**r.options, "recipe": recipe, "blocks": variant, "data_dir": a.data_dir, "seed": a.seed,
              "device": a.device, "time_budget": budget, **(TOY if a.toy else {})}
    for key in ("width", "epochs", "max_train_samples"):
        if getattr(a, key) is not None:
            values[key] = getattr(a, key)
    return from_dict(CifarTrainConfig, values, source="benchmark options")


def _run_folder(out: Path, recipe: str, variant: str, budget: str | None) -> Path:
    return out / "runs" / f"{Path(recipe).stem}-{variant}-{budget or 'epochs'}"


def _train_or_reuse(cfg: CifarTrainConfig, folder: Path) -> dict:
    run = RunDir(folder)
    if run.exists() and run.read_summary().get("status") == "finished":
        return run.read_summary()
    return train(cfg, folder, resume=run.exists(), progress=False)


def machine(summary: dict) -> str:
    threads = summary.get("threads")
    return summary.get("device", "?") + (f", {threads} threads" if threads else "")


def row(recipe: str, variant: str, budget: str | None, s: dict) -> dict:
    return {"recipe": recipe, "variant": variant, "budget": budget or "epochs",
            "epochs": s.get("epochs_trained", s.get("epochs")), "best_val_accuracy": s["best_val_accuracy"],
            "test_accuracy": s["test_accuracy"], "test_accuracy_tta": s.get("test_accuracy_tta"),
            "train_seconds": s["train_seconds"], "images_per_second": s.get("train_images_per_second"),
            "time_used_seconds": s.get("time_used_seconds"), "machine": machine(s)}


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}"


def table(rows: list[dict]) -> str:
    body = [[r["recipe"], r["variant"], r["budget"], r["epochs"], _pct(r["best_val_accuracy"]),
             _pct(r["test_accuracy"]), _pct(r["test_accuracy_tta"]), round(r["train_seconds"]),
             round(r["images_per_second"] or 0), r["machine"]] for r in rows]
    return markdown_table(COLUMNS, body)


def best_by_validation(rows: list[dict]) -> dict[tuple[str, str], str]:
    """The recipe with the best validation accuracy for each (variant, budget)."""
    best: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["variant"], r["budget"])
        if key not in best or r["best_val_accuracy"] > best[key]["best_val_accuracy"]:
            best[key] = r
    return {k: r["recipe"] for k, r in best.items()}


def _header(a: argparse.Namespace, plan: list[tuple], budgets: list[str | None]) -> str:
    seconds = sum(parse_duration(b) for _, _, b in plan if b is not None) + SECONDS_PER_RUN * len(plan)
    unbudgeted = sum(b is None for _, _, b in plan)
    return (f"recipes benchmark: {len(plan)} runs ({a.recipes} x {a.blocks} x "
            f"{', '.join(b or 'epochs' for b in budgets)}) on {device_name(resolve_device(a.device))}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; expected duration about "
            f"{seconds / 60:.0f} min"
            + (f" plus {unbudgeted} run(s) of the recipe's epochs" if unbudgeted else ""))


def main(argv: list[str] | None = None) -> dict:
    a = _parser().parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    recipes = [r.strip() for r in a.recipes.split(",") if r.strip()]
    variants = [format_blocks(parse_blocks(v.strip())) for v in a.blocks.split(",") if v.strip()]
    budgets = _budgets(a.budgets or ("2s" if a.toy else "20m"))
    plan = [(r, v, b) for r in recipes for v in variants for b in budgets]
    configs = {p: _config(*p, a) for p in plan}  # every recipe and value checked before the first run
    print(_header(a, plan, budgets), flush=True)
    rows, started = [], time.perf_counter()
    for (recipe, variant, budget), cfg in configs.items():
        logging.getLogger("cnnlab").info("== %s, %s, %s", recipe, variant, budget or "epochs")
        s = _train_or_reuse(cfg, _run_folder(Path(a.out), recipe, variant, budget))
        rows.append(row(recipe, variant, budget, s))
    print(table(rows))
    best = best_by_validation(rows)
    for (variant, budget), recipe in best.items():
        print(f"best recipe by validation accuracy for {variant}, {budget}: {recipe}")
    result = {"rows": rows, "best_by_validation": [{"variant": v, "budget": b, "recipe": r}
                                                   for (v, b), r in best.items()],
              "seconds": time.perf_counter() - started, "command": " ".join(sys.argv)}
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    setup_logging()
    main()
