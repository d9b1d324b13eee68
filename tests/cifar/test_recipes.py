"""Named recipes (--recipe NAME or FILE, cnnlab cifar recipes), the options that make them, and bad input."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml

from cnnlab.cifar.train import train
from cnnlab.commands.main import main
from cnnlab.config import DEFAULT_CIFAR_RECIPE, CifarTrainConfig, to_dict
from cnnlab.files import atomic_torch_save, load_checkpoint
from cnnlab.recipes import describe, load_recipe, recipe_names, recipe_text
from cnnlab.run import RunDir
from tests.conftest import write_cifar_batches
from tests.reliability.conftest import check_bad_input

TINY = ["--width", "0.125", "--epochs", "1", "--batch-size", "32", "--eval-batch-size", "64"]


def _train(data, out, *opts):
    return main(["cifar", "train", *TINY, "--data-dir", str(data), "--out", str(out), *opts])


def test_the_recipes_command_lists_each_recipe_on_one_line_and_prints_one(capsys):
    assert main(["cifar", "recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == recipe_names() == ["fast", "original", "study"]
    for line, (name, text) in zip(lines, describe()):
        assert text and text in line
        assert line.endswith("(default)") == (name == DEFAULT_CIFAR_RECIPE)
    assert main(["cifar", "recipes", "fast"]) == 0
    printed = capsys.readouterr().out
    assert printed == recipe_text("fast") and yaml.safe_load(printed)["augment"] == "crop-flip"
    assert main(["cifar", "recipes", "nosuch"]) == 2
    assert "expected a recipe name (fast, original, study)" in capsys.readouterr().err


def test_the_default_recipe_is_the_configs_defaults_and_every_recipe_sets_every_training_choice():
    defaults = to_dict(CifarTrainConfig())
    default = load_recipe(DEFAULT_CIFAR_RECIPE).options
    assert default and all(defaults[k] == v for k, v in default.items())
    keys = {"epochs", "batch_size", "optimizer", "lr", "weight_decay", "schedule", "warmup_epochs",
            "label_smoothing", "augment", "ema", "tta", "precision"}
    for name in recipe_names():  # a recipe does not depend on the defaults of the day
        assert keys <= set(load_recipe(name).options), name


def test_the_original_recipe_is_the_notebooks_training():
    o = load_recipe("original").options
    assert (o["optimizer"], o["lr"], o["schedule"], o["gamma"], o["batch_size"], o["augment"], o["precision"]) == \
        ("adam", 1e-3, "exponential", 0.9, 64, "study", "fp32")
    assert o["warmup_epochs"] == 0 and o["weight_decay"] == 0 and o["label_smoothing"] == 0 and o["ema"] == 0


def test_a_run_starts_from_its_recipe_options_override_it_and_everything_records_it(cifar_batches, tmp_path):
    out = tmp_path / "run"
    assert _train(cifar_batches, out, "--recipe", "fast", "--lr", "0.03", "--warmup-epochs", "0.5") == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    fast = load_recipe("fast").options
    assert cfg["recipe"] == "fast" and cfg["lr"] == 0.03  # the option wins
    assert cfg["schedule"] == fast["schedule"] and cfg["augment"] == "crop-flip" and cfg["label_smoothing"] == 0.1
    assert cfg["batch_size"] == 32 and cfg["epochs"] == 1
    s = RunDir(out).read_summary()
    assert s["recipe"] == "fast" and s["pooling"] == "intended" and "test_accuracy_tta" in s
    assert "with the fast recipe" in (out / "train.log").read_text()
    assert main(["cifar", "evaluate", str(out), "--tsne-samples", "20"]) == 0
    report = (out / "report.md").read_text()
    assert "| recipe | fast |" in report and "recipe fast: batch 32, sgd lr 0.03" in report
    assert "| test accuracy with flip TTA |" in report and "| pooling | intended" in report


def test_a_short_run_warms_up_for_the_recipes_share_of_its_epochs(cifar_batches, tmp_path):
    out = tmp_path / "run"
    assert _train(cifar_batches, out) == 0  # 1 epoch of the fast recipe's 30, which warm up for 2
    assert yaml.safe_load((out / "config.yaml").read_text())["warmup_epochs"] == pytest.approx(2 / 30)
    assert CifarTrainConfig(epochs=3).warmup_epochs == pytest.approx(0.2)
    assert CifarTrainConfig().warmup_epochs == 2.0 and CifarTrainConfig(epochs=60).warmup_epochs == 2.0
    assert CifarTrainConfig(epochs=3, warmup_epochs=0.5).warmup_epochs == 0.5


def test_without_a_recipe_a_run_records_the_default_one(cifar_batches, tmp_path):
    out = tmp_path / "run"
    assert _train(cifar_batches, out) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["recipe"] == DEFAULT_CIFAR_RECIPE


def test_a_copied_recipe_file_and_a_config_naming_a_recipe(cifar_batches, tmp_path, capsys):
    mine = tmp_path / "mine.yaml"
    assert main(["cifar", "recipes", "original"]) == 0
    mine.write_text(capsys.readouterr().out.replace("lr: 0.001", "lr: 0.002"))
    out = tmp_path / "run"
    assert _train(cifar_batches, out, "--recipe", str(mine)) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["recipe"] == str(mine) and cfg["lr"] == 0.002 and cfg["optimizer"] == "adam"

    conf = tmp_path / "c.yaml"
    conf.write_text("recipe: original\ngamma: 0.8\n")
    out2 = tmp_path / "run2"
    assert _train(cifar_batches, out2, "--config", str(conf)) == 0
    cfg = yaml.safe_load((out2 / "config.yaml").read_text())
    assert (cfg["recipe"], cfg["optimizer"], cfg["gamma"], cfg["precision"]) == ("original", "adam", 0.8, "fp32")


def test_the_original_pooling_trains_and_the_run_says_so(cifar_batches, tmp_path):
    out = tmp_path / "run"
    assert _train(cifar_batches, out, "--pooling", "original", "--blocks", "E") == 0
    s = RunDir(out).read_summary()
    assert s["pooling"] == "original" and "original pooling" in (out / "train.log").read_text()


def test_a_run_saved_before_recipes_resumes_and_evaluates(cifar_batches, tmp_path):
    """A run of cnnlab 0.1: ``augment: true`` and none of the recipe fields, in config.yaml and last.pt."""
    out = tmp_path / "run"
    train(CifarTrainConfig(data_dir=str(cifar_batches), width=0.125, epochs=1, batch_size=32), out, progress=False)
    new = {"recipe", "pooling", "time_budget", "schedule", "ema", "tta"}
    old = {**{k: v for k, v in to_dict(CifarTrainConfig(data_dir=str(cifar_batches), width=0.125, epochs=1,
                                                         batch_size=32)).items() if k not in new}, "augment": True}
    (out / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    for name in ("last.pt", "best.pt"):
        ckpt = load_checkpoint(out / "checkpoints" / name)
        atomic_torch_save({**ckpt, "config": old}, out / "checkpoints" / name)
    assert main(["cifar", "train", "--resume", str(out), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [1, 2]
    assert main(["cifar", "evaluate", str(out), "--tsne-samples", "20"]) == 0


def test_compare_runs_every_variant_with_the_recipe_and_its_report_says_which(cifar_batches, tmp_path, capsys):
    study = tmp_path / "study"
    assert main(["cifar", "compare", "--blocks", "A,E", *TINY, "--recipe", "fast", "--time-budget", "1h",
                 "--warmup-epochs", "0",
                 "--no-evaluate", "--data-dir", str(cifar_batches), "--out", str(study)]) == 0
    for v in ("A", "E"):
        cfg = yaml.safe_load((study / "runs" / f"{v}-seed0" / "config.yaml").read_text())
        assert cfg["recipe"] == "fast" and cfg["time_budget"] == "1h"
    report = (study / "report.md").read_text()
    assert "a 1h time budget of training per run (at most 1 epochs)" in report and "recipe fast" in report
    assert "test acc, flip TTA (%)" in (study / "comparison.md").read_text()
    # Rerun with another recipe: the runs there were trained otherwise.
    assert main(["cifar", "compare", "--blocks", "A", *TINY, "--recipe", "study", "--no-evaluate",
                 "--data-dir", str(cifar_batches), "--out", str(study)]) == 2
    assert "holds a run with other options (" in capsys.readouterr().err


# --- bad input: one message naming the file or option, exit 2, nothing written -------------------------


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("prev")
    write_cifar_batches(root / "data")
    out = root / "run"
    assert _train(root / "data", out) == 0
    return out


def _new_run(*opts, culprit, files=None):
    def case(tmp, prev):
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
        opts_ = [o.replace("TMP", str(tmp)) for o in opts]
        return ["cifar", "train", *TINY, "--data-dir", str(prev.parent / "data"), "--out", str(tmp / "new"),
                *opts_], culprit.replace("TMP", str(tmp))
    return case


def _resume_with(*opts, culprit):
    return lambda tmp, prev: (["cifar", "train", "--resume", str(prev), *opts], culprit)


BAD = {
    "unknown recipe": _new_run("--recipe", "nosuch", culprit="--recipe: expected a recipe name (fast, original, "
                               "study) or a YAML file, got 'nosuch', which is neither"),
    "recipe file with an unknown key": _new_run("--recipe", "TMP/r.yaml", files={"r.yaml": "speed: 3\n"},
                                                culprit="TMP/r.yaml: unknown option(s) speed"),
    "recipe file with a wrong type": _new_run("--recipe", "TMP/r.yaml", files={"r.yaml": "lr: fast\n"},
                                              culprit="TMP/r.yaml: lr: expected a finite number, got 'fast'"),
    "recipe file with a value out of range": _new_run("--recipe", "TMP/r.yaml", files={"r.yaml": "ema: 1.0\n"},
                                                      culprit="TMP/r.yaml: ema: expected a decay in [0, 1)"),
    "recipe file naming a recipe": _new_run("--recipe", "TMP/r.yaml", files={"r.yaml": "recipe: fast\n"},
                                            culprit="TMP/r.yaml: recipe: a recipe cannot name another recipe"),
    "config naming an unknown recipe": _new_run("--config", "TMP/c.yaml", files={"c.yaml": "recipe: quick\n"},
                                                culprit="TMP/c.yaml: recipe: expected a recipe name"),
    "config with an unknown schedule": _new_run("--config", "TMP/c.yaml", files={"c.yaml": "schedule: step\n"},
                                                culprit="TMP/c.yaml: schedule: expected exponential, linear, "
                                                        "cosine or onecycle, got 'step'"),
    "config with an unknown pooling": _new_run("--config", "TMP/c.yaml", files={"c.yaml": "pooling: late\n"},
                                               culprit="TMP/c.yaml: pooling: expected intended or original, "
                                                       "got 'late'"),
    "time budget without a unit we know": _new_run("--time-budget", "20 minutes",
                                                   culprit="--time-budget: expected a positive duration such as "
                                                           "90s, 20m or 1.5h (a bare number is seconds), got "
                                                           "'20 minutes'"),
    "time budget of nothing": _new_run("--time-budget", "0s", culprit="--time-budget: expected a positive duration"),
    "weight average that never moves": _new_run("--ema", "1", culprit="--ema: expected a decay in [0, 1) (0 = off), "
                                                                     "got 1.0"),
    "warm-up that outlasts the epochs": _new_run("--warmup-epochs", "2", culprit="--warmup-epochs: expected a "
                                                 "value in [0, --epochs], got 2.0"),
    "recipe whose warm-up outlasts its epochs": _new_run("--recipe", "TMP/r.yaml", "--epochs", "3",
                                                         files={"r.yaml": "epochs: 2\nwarmup_epochs: 4\n"},
                                                         culprit="warmup_epochs: expected a value in [0, --epochs]"),
    "resume with another recipe": _resume_with("--recipe", "study", culprit="cannot change --recipe"),
    "resume with a time budget": _resume_with("--time-budget", "5m", culprit="cannot change --time-budget"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_recipe_input_gets_one_clear_message(name, tmp_path, previous_run, capsys):
    check_bad_input(BAD[name], previous_run, tmp_path, capsys)
