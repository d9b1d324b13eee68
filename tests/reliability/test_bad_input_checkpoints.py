"""Bad values and damaged checkpoints: each gets one clear message naming the file or option and what was
expected, exit status 2, no traceback, no stub run folder, and nothing already written changes.

Values out of range (a rate of 1e308, a seed numpy cannot take, momentum 5, a width that collapses every
layer), a last.pt with a key missing, of another type, or that disagrees with its run, and memory running
out while the network scores the test set.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import yaml

import cnnlab.cifar.train as cifar_train
import cnnlab.engine as engine
from cnnlab.commands.main import main
from cnnlab.config import CifarTrainConfig, from_dict
from cnnlab.files import load_checkpoint
from cnnlab.models.basecnn import BaseCNN, min_width, scaled_channels
from cnnlab.run import history_problem
from tests.conftest import write_cifar_batches
from tests.reliability.conftest import check_bad_input, snapshot
from tests.reliability.test_bad_input import TRAIN, _config, _option, previous_run  # noqa: F401 -- a fixture

# --- values out of range -----------------------------------------------------------------------


def _stub_with(key, value):
    """A folder holding only a config.yaml (what a start that failed once left behind), one value out of range,
    continued with --resume: the message names that config.yaml and the key."""
    def case(tmp, prev):
        cfg = yaml.safe_load((prev / "config.yaml").read_text())
        cfg[key] = value
        (tmp / "stub").mkdir()
        (tmp / "stub" / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return ["cifar", "train", "--resume", str(tmp / "stub")], f"stub/config.yaml: {key}: expected"
    return case


def _config_only(text, culprit):
    """--config FILE holding ``text`` with no option beside it that sets the same key."""
    def case(tmp, prev):
        argv, culprit_in_file = _config(text, culprit)(tmp, prev)
        i = argv.index("--width")
        return argv[:i] + argv[i + 2:], culprit_in_file
    return case


def _config_and_option(text, *opts, culprit):
    """--config FILE beside options: the message names the place the bad value was written."""
    def case(tmp, prev):
        argv, _ = _config(text, "")(tmp, prev)
        return argv + list(opts), culprit
    return case


LR = "expected a learning rate in (0, 10]"
SEED = "expected an integer in [0, 4294967295]"
VALUES = [
    ("config lr 1e308", _config("lr: 1e308\n", f"lr: {LR}, got 1e+308")),
    ("lr 1e3 for 1e-3", _option("--lr", "1e3", culprit=f"--lr: {LR}, got 1000.0")),
    ("config seed beyond int64", _config("seed: 99999999999999999999999\n",
                                         "seed: expected an integer in [-2**63, 2**63 - 1] (what torch takes), "
                                         "got 99999999999999999999999")),
    ("seed beyond numpy", _option("--seed", str(2**32), culprit=f"--seed: {SEED}, got 4294967296")),
    ("negative seed", _option("--seed", "-1", culprit=f"--seed: {SEED}, got -1")),
    ("config eval batch size beyond int64", _config("eval_batch_size: 99999999999999999999\n",
                                                    "eval_batch_size: expected an integer in [-2**63")),
    ("config width 1e-9", _config_only("width: 1e-9\n", "width: expected a width of at least 0.0234375, got 1e-09: "
                                                   "it makes every layer the minimum 8 channels wide")),
    ("width 0.02", _option("--width", "0.02", culprit="--width: expected a width of at least 0.0234375, got 0.02")),
    ("config momentum 5", _config("momentum: 5\n", "momentum: expected a value in [0, 1), got 5.0")),
    ("momentum 1", _option("--momentum", "1", culprit="--momentum: expected a value in [0, 1), got 1.0")),
    ("weight decay 1e308", _option("--weight-decay", "1e308",
                                   culprit="--weight-decay: expected a value in [0, 1], got 1e+308")),
    ("bad option beside a config file", _config_and_option("lr: 0.1\n", "--momentum", "5",
                                                           culprit="cnnlab: error: --momentum: expected a value")),
    ("bad config value beside an option", _config_and_option("momentum: 5\n", "--lr", "0.1",
                                                             culprit="c.yaml: momentum: expected a value")),
    ("resume of a stub with lr 1e308", _stub_with("lr", 1e308)),
    ("resume of a stub with a huge seed", _stub_with("seed", 99999999999999999999999)),
]


@pytest.mark.parametrize("name, build", VALUES, ids=[c[0] for c in VALUES])
def test_a_value_out_of_range_gets_one_clear_message(name, build, tmp_path, previous_run, capsys):
    check_bad_input(build, previous_run, tmp_path, capsys)


def test_the_smallest_width_taken_still_scales_the_network():
    w = min_width()
    assert max(scaled_channels(w)) == 16 and set(scaled_channels(w * 0.999)) == {8}
    assert from_dict(CifarTrainConfig, {"width": w}).width == w
    assert BaseCNN("A", w).num_features == 16


# --- damaged checkpoints -------------------------------------------------------------------------


def _last(edit, culprit, extend=False):
    """last.pt edited by ``edit(ckpt)``, then --resume: of the unfinished run, or (``extend``) of the
    finished one with --epochs 2, whose config.yaml and summary.json must stay as they are."""
    def case(tmp, prev):
        path = prev / "checkpoints" / "last.pt"
        ckpt = load_checkpoint(path)
        edit(ckpt)
        torch.save(ckpt, path)
        if not extend:
            (prev / "summary.json").unlink()
        more = ["--epochs", "2"] if extend else []
        return ["cifar", "train", "--resume", str(prev), *more], f"checkpoint {path} {culprit}"
    return case


DAMAGED = "is damaged or not of this version of cnnlab:"


def _drop(key):
    return _last(lambda c: c.pop(key), f"{DAMAGED} it has no '{key}'")


def _set(key, value, culprit, extend=False):
    return _last(lambda c: c.__setitem__(key, value), culprit, extend)


def _metrics_ahead(tmp, prev):
    """metrics.csv one epoch ahead of last.pt (an older copy of the checkpoint put back)."""
    lines = (prev / "metrics.csv").read_text().splitlines()
    (prev / "metrics.csv").write_text("\n".join([*lines, lines[-1].replace("1,", "2,", 1)]) + "\n")
    return (["cifar", "train", "--resume", str(prev), "--epochs", "3"],
            "metrics.csv holds 2 epochs (1, 2), the checkpoint's 'history' 1 epoch (1); resuming would rewrite "
            "metrics.csv")


CANNOT = "cannot be resumed:"
CHECKPOINTS = [
    *((f"last.pt without {k}", _drop(k)) for k in ("history", "rng", "best", "optimizer", "scheduler", "epoch",
                                                    "model")),
    ("epoch a string", _set("epoch", "x", f"{DAMAGED} its 'epoch' is 'x', expected an integer")),
    ("epoch a boolean", _set("epoch", True, f"{DAMAGED} its 'epoch' is True, expected an integer")),
    ("history not a list", _set("history", {"1": 2}, f"{DAMAGED} its 'history' is dict, expected a list")),
    ("epoch -1", _set("epoch", -1, f"{CANNOT} its 'epoch' is -1, expected the number of epochs trained", True)),
    ("epoch 0 after a trained epoch", _set("epoch", 0, f"{CANNOT} its 'epoch' is 0 but its 'history' holds "
                                                       "1 epoch (1), expected epochs 1..0", True)),
    ("empty history", _set("history", [], f"{CANNOT} its 'epoch' is 1 but its 'history' holds no epochs, "
                                          "expected epochs 1..1", True)),
    ("history row without an epoch", _set("history", [{"val_accuracy": 1.0}],
                                          f"{CANNOT} row 0 of its 'history' has no epoch number")),
    ("best without its figure", _set("best", {"epoch": 1}, f"{CANNOT} its 'best' is ['epoch'], expected a "
                                                            "validation figure and its epoch", True)),
    ("best of another study", _set("best", {"epoch": 1, "val_roc_auc": 0.9},
                                   f"{CANNOT} its 'best' holds no val_accuracy")),
    ("rng of another kind", _set("rng", [{"torch": "x"}], f"{CANNOT} its 'rng' does not fit this run")),
    ("rng an empty list", _set("rng", [], f"{CANNOT} its 'rng' does not fit this run")),
    ("optimizer of another network", _set("optimizer", {"state": {}, "param_groups": []},
                                          f"{CANNOT} its 'optimizer' does not fit this run")),
]


@pytest.mark.parametrize("name, build", CHECKPOINTS, ids=[c[0] for c in CHECKPOINTS])
def test_a_damaged_last_checkpoint_is_refused_naming_the_file_and_the_key(name, build, tmp_path, previous_run,
                                                                           capsys):
    check_bad_input(build, previous_run, tmp_path, capsys, replaced="checkpoints/last.pt")


def test_metrics_ahead_of_the_last_checkpoint_are_refused_not_cut(tmp_path, previous_run, capsys):
    check_bad_input(_metrics_ahead, previous_run, tmp_path, capsys, replaced="metrics.csv")


def test_a_best_checkpoint_without_weights_is_named(tmp_path, previous_run, capsys):
    shutil.copytree(previous_run.parent, tmp_path / "prev")
    run = tmp_path / "prev" / previous_run.name
    path = run / "checkpoints" / "best.pt"
    ckpt = load_checkpoint(path)
    ckpt.pop("model")
    torch.save(ckpt, path)
    (run / "summary.json").unlink()  # trained to its end, not tested: the resume tests best.pt
    checkpoints = snapshot(run / "checkpoints")
    assert main(["cifar", "train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == f"cnnlab: error: checkpoint {path} holds no model weights", err
    assert snapshot(run / "checkpoints") == checkpoints and not (run / "summary.json").exists()


@pytest.mark.parametrize("epoch, numbers, ok", [
    (1, [1], True), (3, [1, 2, 3], True),
    (1, [0, 1], True), (0, [0], True),  # the face study scores the untrained network as epoch 0
    (0, [], True),
    (3, [1, 2, 3, 0, 1], False), (2, [1, 3], False), (2, [0, 2], False), (1, [0], False),
])
def test_a_history_must_number_its_epochs_up_to_the_checkpoints(epoch, numbers, ok):
    assert (history_problem(epoch, [{"epoch": n} for n in numbers]) is None) == ok


# --- out of memory while scoring -------------------------------------------------------------------

OOM = {
    "cpu allocator": lambda: RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                          "can't allocate memory: you tried to allocate 4000000000 bytes."),
    "MemoryError": lambda: MemoryError(),
    "CUDA": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
}


def _out_of_memory_once(monkeypatch, make, after_training: bool) -> None:
    """Every pass of the network in inference runs out of memory: after training (the test pass) or always."""
    state = {"tested": not after_training}
    real_infer, real_load_best = engine._infer, cifar_train.load_best

    def load_best(*a, **k):
        state["tested"] = True
        return real_load_best(*a, **k)

    def infer(*a, **k):
        if state["tested"]:
            raise make()
        return real_infer(*a, **k)

    monkeypatch.setattr(engine, "_infer", infer)
    monkeypatch.setattr(cifar_train, "load_best", load_best)


@pytest.mark.parametrize("kind", sorted(OOM))
def test_out_of_memory_in_the_test_pass_keeps_the_run_and_says_how_to_go_on(kind, tmp_path, monkeypatch, capsys):
    data = write_cifar_batches(tmp_path / "b").parent
    out = tmp_path / "run"
    _out_of_memory_once(monkeypatch, OOM[kind], after_training=True)
    rc = main(TRAIN + ["--data-dir", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    message = err.strip().splitlines()[-1]
    assert message.startswith("cnnlab: error: out of memory running the network on batches of 1000 images")
    assert message.endswith(f"give a smaller --eval-batch-size, e.g. cnnlab cifar train --resume {out} "
                            "--eval-batch-size 250"), message
    metrics = (out / "metrics.csv").read_text()
    assert (out / "checkpoints" / "best.pt").is_file() and not (out / "summary.json").exists()
    monkeypatch.undo()
    assert main(["cifar", "train", "--resume", str(out), "--eval-batch-size", "250"]) == 0
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert (out / "metrics.csv").read_text() == metrics  # not trained again: only tested


def test_out_of_memory_before_the_first_checkpoint_leaves_no_run(tmp_path, previous_run, monkeypatch, capsys):
    _out_of_memory_once(monkeypatch, OOM["cpu allocator"], after_training=False)
    build = _option("--eval-batch-size", "64", culprit="give a smaller --eval-batch-size (it was 64), "
                                                       "e.g. --eval-batch-size 16")
    check_bad_input(build, previous_run, tmp_path, capsys)


def test_an_error_that_is_not_out_of_memory_is_not_dressed_as_one():
    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        engine.infer(Broken(), torch.zeros(2, 3, 4, 4, dtype=torch.uint8), lambda x: x.float(),
                     device=torch.device("cpu"))
