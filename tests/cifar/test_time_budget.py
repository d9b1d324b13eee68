"""--time-budget on a fake clock, the weight average (--ema) and flip test-time augmentation (--tta)."""

from __future__ import annotations

import math

import pytest
import torch

import cnnlab.cifar.train as cifar_train
from cnnlab.cifar.train import resume_config, train
from cnnlab.inference.runs import load_cifar_network
from cnnlab.commands.main import main
from cnnlab.config import CifarTrainConfig
from cnnlab.data.augment import eval_transform
from cnnlab.data.cifar10 import load_cifar10
from cnnlab.engine import infer
from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir
from tests.conftest import train_until

# 160 training images in batches of 32: 5 steps an epoch.
TINY = dict(width=0.125, batch_size=32, eval_batch_size=64, lr=0.02, device="cpu", precision="fp32",
            channels_last=False)


def _cfg(data_dir, **kw):
    return CifarTrainConfig(data_dir=str(data_dir), **{**TINY, **kw})


class StepClock:
    """A clock that moves one second every time it is read: the budget reads it once as an epoch's
    steps begin and once after every step, so every step takes exactly one second."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        self.t += 1.0
        return self.t - 1.0


@pytest.fixture
def fake_clock(monkeypatch):
    """Every run's schedule on its own :class:`StepClock`; returns the rate of every step taken, in order."""
    real_schedule, real_optimizer = cifar_train.build_schedule, cifar_train.build_optimizer
    rates = []

    def optimizer(model, cfg):
        opt = real_optimizer(model, cfg)
        opt.register_step_pre_hook(lambda o, args, kw: rates.append(o.param_groups[0]["lr"]))
        return opt

    monkeypatch.setattr(cifar_train, "build_schedule", lambda cfg, steps: real_schedule(cfg, steps, clock=StepClock()))
    monkeypatch.setattr(cifar_train, "build_optimizer", optimizer)
    return rates


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_the_rate_follows_the_spent_fraction_and_the_run_stops_on_time_at_its_floor(cifar_batches, tmp_path,
                                                                                     fake_clock, schedule):
    out = tmp_path / "run"
    s = train(_cfg(cifar_batches, epochs=10, schedule=schedule, warmup_epochs=0.0, time_budget="7s"), out,
              progress=False)
    # 7 steps of one second: the 5 of epoch 1 and 2 of epoch 2, each at the rate of the budget spent before it.
    decay = cifar_train.build_schedule(_cfg(cifar_batches, epochs=10, schedule=schedule, warmup_epochs=0.0), 5).decay
    assert fake_clock == pytest.approx([0.02 * decay(10 * k / 7) for k in range(7)])
    assert fake_clock[0] == pytest.approx(0.02)
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)  # the floor
    rows = RunDir(out).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2] and last["epoch"] == 2  # the partial epoch validated and saved
    assert 0 <= rows[1]["val_accuracy"] <= 1
    assert rows[1]["lr"] == pytest.approx(0.02 * decay(10 * 5 / 7))  # the rate as epoch 2 began
    assert last["budget_spent"] == 7
    assert s["status"] == "finished" and s["epochs_trained"] == 2 and s["epochs"] == 10
    assert s["time_budget"] == "7s" and s["time_budget_seconds"] == 7 and s["time_used_seconds"] == 7
    assert s["device"].startswith("cpu") and s["threads"] >= 1  # the machine the budget was spent on
    assert "trained 7.0s of the 7.0s time budget in 2 epoch(s)" in (out / "train.log").read_text()


def test_the_exponential_schedule_under_a_budget_ends_at_gamma_to_the_epochs(cifar_batches, tmp_path, fake_clock):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=4, schedule="exponential", gamma=0.5, warmup_epochs=0.0, time_budget=8.0), out,
          progress=False)
    # The budget stands for 4 epochs: 2 seconds each, the rate halving every 2 steps.
    assert fake_clock == pytest.approx([0.02, 0.02, 0.01, 0.01, 0.005, 0.005, 0.0025, 0.0025])
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.02 * 0.5 ** 4)


def test_epochs_bound_a_budget_that_is_not_spent_and_the_rate_then_follows_the_steps(cifar_batches, tmp_path,
                                                                                      fake_clock):
    out = tmp_path / "run"
    s = train(_cfg(cifar_batches, epochs=2, schedule="linear", warmup_epochs=0.0, time_budget="1h"), out,
              progress=False)
    assert s["epochs_trained"] == 2 and s["time_used_seconds"] == 10 and len(fake_clock) == 10
    assert fake_clock == pytest.approx([0.02 * (1 - k / 10) for k in range(10)])  # the steps are further along
    assert load_checkpoint(out / "checkpoints" / "last.pt")["optimizer"]["param_groups"][0]["lr"] == 0  # its floor


def test_a_resumed_run_continues_with_the_remaining_budget(cifar_batches, tmp_path, fake_clock):
    cfg = _cfg(cifar_batches, epochs=10, schedule="linear", warmup_epochs=1.0, time_budget="12s", ema=0.9)
    full, part = tmp_path / "full", tmp_path / "part"
    s_full = train(cfg, full, progress=False)
    whole = list(fake_clock)
    fake_clock.clear()
    train_until(train, cfg, part, epoch=1)
    assert load_checkpoint(part / "checkpoints" / "last.pt")["budget_spent"] == 5
    s_part = train(resume_config(part), part, resume=True, progress=False)
    assert fake_clock == pytest.approx(whole)  # the same rate at every step: 5 before, 7 after the resume
    a, b = RunDir(full).read_metrics(), RunDir(part).read_metrics()
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3]  # 5 + 5 + 2 steps
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert math.isclose(ra[k], rb[k], rel_tol=0, abs_tol=1e-6), (ra["epoch"], k)
    assert s_part["time_used_seconds"] == s_full["time_used_seconds"] == 12
    assert s_part["test_accuracy"] == s_full["test_accuracy"]


def test_a_budgeted_run_cannot_be_extended_by_epochs(cifar_batches, tmp_path, fake_clock, capsys):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=3, time_budget="4s"), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["cifar", "train", "--resume", str(out), "--epochs", "20"]) == 2
    err = capsys.readouterr().err
    assert "--epochs 20: the run in" in err and "has a time budget (4s)" in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["cifar", "train", "--resume", str(out)]) == 0  # the same epochs: finished, nothing to do


def test_with_a_weight_average_validation_and_best_pt_use_the_averaged_weights(cifar_batches, tmp_path):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=1, ema=0.5), out, progress=False)
    last, best = (load_checkpoint(out / "checkpoints" / n) for n in ("last.pt", "best.pt"))
    assert last["ema"]["updates"] == 5
    assert all(torch.equal(best["model"][k], v) for k, v in last["ema"]["model"].items())
    assert not all(torch.equal(last["model"][k], v) for k, v in last["ema"]["model"].items())


def test_flip_tta_is_reported_beside_the_plain_test_accuracy(cifar_batches, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["cifar", "train", "--width", "0.125", "--epochs", "1", "--batch-size", "32", "--tta", "flip",
                 "--precision", "fp32", "--data-dir", str(cifar_batches), "--out", str(out)]) == 0
    assert "test_accuracy_tta" in capsys.readouterr().out
    s = RunDir(out).read_summary()
    model, _ = load_cifar_network(RunDir(out))
    data = load_cifar10(str(cifar_batches))
    plain = infer(model, data.test_images, eval_transform, device=torch.device("cpu"), batch_size=1000)
    mirrored = infer(model, data.test_images, lambda x: eval_transform(x).flip(3), device=torch.device("cpu"),
                     batch_size=1000)
    y = data.test_labels
    assert s["test_accuracy"] == pytest.approx(float((plain.argmax(1) == y).float().mean()))
    assert s["test_accuracy_tta"] == pytest.approx(float(((plain + mirrored) / 2).argmax(1).eq(y).float().mean()))


def test_the_time_budget_option_takes_seconds_minutes_and_hours(cifar_batches, tmp_path):
    from cnnlab.commands.main import build_parser
    from cnnlab.commands.options import build_config

    for text, seconds in (("90s", 90), ("20m", 1200), ("1.5h", 5400), ("45", 45)):
        args = build_parser().parse_args(["cifar", "train", "--time-budget", text, "--out", str(tmp_path / "r")])
        cfg = build_config(CifarTrainConfig, args)
        assert cfg.time_budget == text and cfg.time_budget_seconds == seconds
