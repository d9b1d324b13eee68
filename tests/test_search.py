import csv
import shlex
import socket
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cnnlab.commands.main import flag, main
from cnnlab.config import FACE_DEFAULT_MARGIN, FACE_LOSSES, FaceSearchConfig
from cnnlab.errors import ConfigError, Terminated
from cnnlab.search import DEFAULT_SPACE, check_space, read_space, search

from tests.faces.conftest import _fast_cpu, face_dir, tiny_config, tiny_options  # noqa: F401 (fixtures)

SPACE = {"lr": {"type": "float", "low": 1e-3, "high": 1e-1, "log": True},
         "margin": {"type": "float", "low": 0.5, "high": 2.0},
         "epochs": {"type": "categorical", "choices": [1]}}


def _space(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(SPACE))
    return path


def _rows(out):
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_search_runs_trials_and_resumes_with_more(face_dir, tmp_path, capsys):
    out = tmp_path / "search"
    space = _space(tmp_path)
    args = ["faces", "search", *tiny_options(face_dir), "--space", str(space), "--out", str(out)]
    assert main([*args, "--trials", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 finished" in printed and "best run:" in printed
    rows = _rows(out)
    assert [r["state"] for r in rows] == ["COMPLETE", "COMPLETE"]
    for r in rows:
        assert (out / r["run_dir"] / "summary.json").is_file()
        assert 1e-3 <= float(r["lr"]) <= 1e-1 and 0.5 <= float(r["margin"]) <= 2.0
        cfg = yaml.safe_load((out / r["run_dir"] / "config.yaml").read_text())
        assert cfg["lr"] == pytest.approx(float(r["lr"])) and cfg["epochs"] == 1
    best = yaml.safe_load((out / "best_params.yaml").read_text())
    assert best["val_roc_auc"] == max(float(r["val_roc_auc"]) for r in rows)
    assert (out / "best_run.txt").read_text().strip() == best["run_dir"]
    first = [(r["lr"], r["margin"]) for r in rows]

    assert main([*args, "--trials", "3"]) == 0
    rows = _rows(out)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    assert [(r["lr"], r["margin"]) for r in rows[:2]] == first  # kept, not rerun
    assert len({r["run_dir"] for r in rows}) == 3

    # Already complete: nothing more runs.
    assert main([*args, "--trials", "3"]) == 0
    assert len(_rows(out)) == 3


def test_a_killed_trial_is_marked_failed_and_the_rest_run(face_dir, tmp_path):
    out = tmp_path / "search"
    out.mkdir()
    storage = f"sqlite:///{out / 'search.db'}"
    study = optuna.create_study(study_name="faces", storage=storage, direction="maximize")
    # A trial left RUNNING by a process that no longer exists (as after kill -9).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    t = study.ask()
    t.set_user_attr("host", socket.gethostname())
    t.set_user_attr("pid", dead.pid)
    t.set_user_attr("run_dir", "trial-0000")

    cfg = FaceSearchConfig(trials=2, space=str(_space(tmp_path)))
    result = search(tiny_config(face_dir), cfg, out, progress=False)
    assert result["complete"] == 2 and result["failed"] == 1
    states = {t.number: t.state for t in optuna.load_study(study_name="faces", storage=storage).trials}
    assert states == {0: TrialState.FAIL, 1: TrialState.COMPLETE, 2: TrialState.COMPLETE}
    assert [r["state"] for r in _rows(out)] == ["FAIL", "COMPLETE", "COMPLETE"]


def test_trial_draws_depend_on_the_seed_and_trial_number_only(face_dir, tmp_path):
    cfg = FaceSearchConfig(trials=2, space=str(_space(tmp_path)), search_seed=7)
    a = search(tiny_config(face_dir), cfg, tmp_path / "a", progress=False)
    b_cfg = FaceSearchConfig(trials=1, space=cfg.space, search_seed=7)
    search(tiny_config(face_dir), b_cfg, tmp_path / "b", progress=False)
    search(tiny_config(face_dir), FaceSearchConfig(trials=2, space=cfg.space, search_seed=7), tmp_path / "b",
           progress=False)
    assert a["complete"] == 2
    assert [(r["lr"], r["margin"]) for r in _rows(tmp_path / "a")] == [(r["lr"], r["margin"]) for r in
                                                                       _rows(tmp_path / "b")]


def test_the_default_space_holds_the_study_best():
    space = read_space(None)
    assert space == DEFAULT_SPACE
    assert space["lr"]["low"] <= 1e-3 <= space["lr"]["high"]
    assert space["margin"]["low"] <= 1.0 <= space["margin"]["high"]
    assert space["step_size"]["low"] <= 10 <= space["step_size"]["high"]
    assert 0.1 in space["gamma"]["choices"] and 20 in space["epochs"]["choices"]


@pytest.mark.parametrize("loss", FACE_LOSSES)
def test_the_default_space_fits_the_loss_it_searches(face_dir, loss):
    base = tiny_config(face_dir, loss=loss)
    space = read_space(None, loss)
    check_space(base, space, "the default space")  # every bound accepted by the training options
    assert space["margin"]["low"] <= FACE_DEFAULT_MARGIN[loss] <= space["margin"]["high"]
    assert ("scale" in space) == (loss in ("cosface", "arcface", "subcenter-arcface"))
    if "scale" in space:
        assert space["scale"]["low"] <= 30 <= space["scale"]["high"]
    assert {k: v for k, v in space.items() if k not in ("margin", "scale")} == \
        {k: v for k, v in DEFAULT_SPACE.items() if k != "margin"}


def test_a_cosface_search_without_a_space_draws_cosine_margins_and_scales(face_dir, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="margin: the high 2.0 is refused"):  # why the space depends on the loss
        check_space(tiny_config(face_dir, loss="cosface"), DEFAULT_SPACE, "the contrastive space")
    monkeypatch.setitem(DEFAULT_SPACE, "epochs", {"type": "categorical", "choices": [1]})  # seconds, not hours
    result = search(tiny_config(face_dir, loss="cosface"), FaceSearchConfig(trials=1), tmp_path / "s",
                    progress=False)
    assert result["complete"] == 1
    (row,) = _rows(tmp_path / "s")
    assert 0.1 <= float(row["margin"]) <= 0.5 and 8 <= float(row["scale"]) <= 64
    cfg = yaml.safe_load((tmp_path / "s" / row["run_dir"] / "config.yaml").read_text())
    assert cfg["loss"] == "cosface" and cfg["scale"] == pytest.approx(float(row["scale"])) and cfg["epochs"] == 1


@pytest.mark.parametrize("content, message", [
    ({"learning_rate": {"type": "float", "low": 0.1, "high": 1}}, "'learning_rate' is not an option"),
    ({"lr": {"type": "float", "low": 1, "high": 0.1}}, "low .* must not exceed high"),
    ({"lr": {"type": "float", "low": 0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"gamma": {"type": "categorical", "choices": []}}, "non-empty list"),
    ({"lr": {"type": "uniform"}}, "expected \\{type"),
    ({"lr": {"type": "categorical", "choices": ["fast", "slow"]}}, "lr: choices: expected a finite number, got 'fast'"),
    ({"gamma": {"type": "categorical", "choices": [{"a": 1}]}}, "gamma: choices: expected a finite number, got {'a': 1}"),
    ({"loss": {"type": "categorical", "choices": ["triplet", 3]}}, "loss: choices: expected a string, got 3"),
    ({"augment": {"type": "categorical", "choices": ["no"]}}, "augment: choices: expected true or false, got 'no'"),
    ({"step_size": {"type": "int", "low": 5, "high": 15, "step": "abc"}},
     "step_size: step: expected an integer, got 'abc'"),
    ({"step_size": {"type": "int", "low": 5, "high": 15, "step": 0}}, "step_size: step: expected a positive number, got 0"),
    ({"epochs": {"type": "int", "low": 1.5, "high": 3}}, "epochs: low: expected an integer, got 1.5"),
    ({"epochs": {"type": "float", "low": 1, "high": 3}}, "epochs: a float range for an option that takes an integer"),
    ({"loss": {"type": "int", "low": 1, "high": 3}}, "loss: an int range for an option that takes a string"),
    ({"lr": {"type": "float", "low": "a", "high": 1}}, "lr: low: expected a finite number, got 'a'"),
    ({"lr": {"type": "float", "low": 0.1, "high": float("inf")}}, "lr: high: expected a finite number, got inf"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1, "log": "yes"}}, "lr: log: expected true or false, got 'yes'"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1, "lg": True}}, "lr: a float range takes low, high, log, step, not lg"),
    ({"lr": {"type": "float", "low": 0.1, "high": 1, "log": True, "step": 0.1}}, "lr: a float range takes step or log"),
])
def test_a_bad_space_file_names_the_file_and_the_key(tmp_path, content, message):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError, match=message) as e:
        read_space(path)
    assert str(e.value).startswith(f"space {path}: ")  # the parameter; the command line shows --space
    assert e.value.worded(flag).startswith(f"--space {path}: ")


def test_a_space_file_takes_numbers_written_as_yaml_strings_and_optional_nulls(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("lr: {type: categorical, choices: [1e-3, 1.0e-2]}\n"  # YAML reads 1e-3 as a string
                    "trainable_layers: {type: categorical, choices: [null, 2]}\n"
                    "step_size: {type: int, low: 2, high: 8, step: 2}\n")
    space = read_space(path)
    assert space["lr"]["choices"] == [1e-3, 1e-2] and space["trainable_layers"]["choices"] == [None, 2]
    assert space["step_size"]["step"] == 2


def _search_argv(faces, space, out, *extra):
    return ["faces", "search", *tiny_options(faces), "--space", str(space), "--trials", "1", "--out", str(out),
            *extra]


@pytest.mark.parametrize("content, culprit", [
    ("lr: {type: categorical, choices: [fast]}\n", "lr: choices: expected a finite number, got 'fast'"),
    ("step_size: {type: int, low: 5, high: 9, step: abc}\n", "step_size: step: expected an integer, got 'abc'"),
    # Every margin the space can draw is tried before a trial runs: 0 is refused by the contrastive loss.
    ("margin: {type: float, low: 0, high: 2}\n",
     "margin: the low 0.0 is refused by the training options (--margin: expected a positive number"),
    ("margin: {type: categorical, choices: [1.0, -1.0]}\n", "margin: the choice -1.0 is refused"),
])
def test_a_bad_space_is_refused_before_the_search_folder_exists(face_dir, tmp_path, capfd, content, culprit):
    space = tmp_path / "space.yaml"
    space.write_text(content)
    out = tmp_path / "search"
    assert main(_search_argv(face_dir, space, out)) == 2
    err = capfd.readouterr().err
    assert f"--space {space}: {culprit}" in err and "Traceback" not in err
    assert not out.exists()


def test_values_refused_only_together_stop_the_search_with_one_message_and_no_traceback(face_dir, tmp_path, capfd):
    # Each value alone is fine; a triplet batch of 6 cannot hold whole groups of --pk-images 4.
    space = tmp_path / "space.yaml"
    space.write_text("loss: {type: categorical, choices: [triplet]}\nbatch_size: {type: categorical, choices: [6]}\n")
    out = tmp_path / "search"
    assert main(_search_argv(face_dir, space, out)) == 2
    err = capfd.readouterr().err
    assert "trial 0 drew values the training options refuse: --batch-size" in err
    assert "Traceback" not in err and "Trial 0 failed" not in err
    assert err.strip().splitlines()[-1].startswith("cnnlab: error: ")
    assert not (out / "trial-0000").exists()


@pytest.mark.parametrize("stop, status, how", [(KeyboardInterrupt, 130, "Ctrl-C"), (Terminated, 143, "SIGTERM")])
def test_an_interrupted_search_names_the_command_that_continues_it(face_dir, tmp_path, capfd, monkeypatch,
                                                                   stop, status, how):
    import cnnlab.faces.train as face_train

    space, out = _space(tmp_path), tmp_path / "search"
    argv = _search_argv(face_dir, space, out)
    real_fit = face_train.fit

    def interrupted(*a, **k):
        raise stop()

    monkeypatch.setattr(face_train, "fit", interrupted)
    assert main(argv) == status
    err = capfd.readouterr().err
    assert "Traceback" not in err and "--resume" not in err
    assert err.strip().splitlines()[-1] == f"cnnlab: interrupted by {how}; continue with: cnnlab {shlex.join(argv)}"
    assert f"interrupted by {'SIGTERM' if stop is Terminated else 'Ctrl-C'}" in (out / "trial-0000" / "train.log").read_text()
    assert [r["state"] for r in _rows(out)] == ["FAIL"]

    monkeypatch.setattr(face_train, "fit", real_fit)
    assert main(argv) == 0  # the same command again continues it
    assert [r["state"] for r in _rows(out)] == ["FAIL", "COMPLETE"]


def test_search_options_are_checked(face_dir, tmp_path, capsys):
    assert main(["faces", "search", *tiny_options(face_dir), "--trials", "0", "--out", str(tmp_path / "s")]) == 2
    assert "--trials" in capsys.readouterr().err


def _finished(number: int, auc: float, best_epoch: int, val_loss: float):
    return optuna.trial.create_trial(
        value=auc, params={"lr": 1e-3}, distributions={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2)},
        user_attrs={"best_epoch": best_epoch, "best_val_loss": val_loss, "run_dir": f"trial-{number:04d}"})


@pytest.mark.parametrize("trials, winner", [
    # tied AUC (0.7206: what the untrained network scores): the later best epoch, then the lower loss
    ([(0.7206, 0, 0.30), (0.7206, 2, 0.50), (0.7206, 2, 0.40), (0.7206, 1, 0.10)], 2),
    ([(0.7206, 0, 0.30), (0.7206, 0, 0.20)], 1),
    # the AUC comes first, whatever the epoch or loss
    ([(0.7206, 3, 0.10), (0.7300, 0, 0.90)], 1),
])
def test_ties_in_validation_auc_go_to_the_later_best_epoch_then_the_lower_loss(tmp_path, trials, winner):
    study = optuna.create_study(direction="maximize")
    for n, (auc, epoch, loss) in enumerate(trials):
        study.add_trial(_finished(n, auc, epoch, loss))
    from cnnlab.search import write_outputs

    best = write_outputs(study, tmp_path)
    assert best["trial"] == winner and best["best_epoch"] == trials[winner][1]
    assert (tmp_path / "best_run.txt").read_text() == f"trial-{winner:04d}\n"
    assert yaml.safe_load((tmp_path / "best_params.yaml").read_text())["trial"] == winner


def test_search_help_states_the_ranking_rule(capsys):
    with pytest.raises(SystemExit):
        main(["faces", "search", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "ties go to the later best epoch, then to the lower validation loss" in text
