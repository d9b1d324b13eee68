import json
import math
import re

import pytest
import torch
import yaml

from cnnlab.commands.main import main
from cnnlab import engine
from cnnlab.cifar.train import resume_config, train
from cnnlab.inference.runs import load_cifar_network
from cnnlab.config import CifarTrainConfig
from cnnlab.errors import CheckpointError, CnnlabError, ConfigError
from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir

TINY = dict(width=0.125, batch_size=32, eval_batch_size=64, epochs=2, lr=0.02)


def _cfg(data_dir, **kw):
    return CifarTrainConfig(data_dir=str(data_dir), **{**TINY, **kw})


def test_cli_run_writes_every_file(cifar_batches, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["cifar", "train", "--blocks", "B", "--width", "0.125", "--epochs", "2", "--batch-size", "32",
               "--recipe", "study", "--data-dir", str(cifar_batches), "--out", str(out)])
    assert rc == 0
    run = RunDir(out)
    for f in ("config.yaml", "metrics.csv", "summary.json", "train.log", "checkpoints/best.pt", "checkpoints/last.pt"):
        assert (out / f).is_file(), f
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["blocks"] == "B" and cfg["epochs"] == 2 and cfg["width"] == 0.125
    rows = run.read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"}
    assert rows[1]["lr"] == pytest.approx(rows[0]["lr"] * cfg["gamma"])  # ExponentialLR
    s = json.loads((out / "summary.json").read_text())
    for k in ("blocks", "width", "params", "epochs", "train_seconds", "best_val_accuracy", "test_accuracy",
              "device", "precision"):
        assert k in s, k
    assert s["blocks"] == "B" and s["epochs"] == 2 and 0 <= s["test_accuracy"] <= 1
    assert s["best_val_accuracy"] == max(r["val_accuracy"] for r in rows)
    assert s["num_train"] == 160 and s["num_val"] == 40 and s["num_test"] == 40
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "history"} <= set(last) and last["epoch"] == 2
    # The command ends once: the headline numbers, then the run folder; the log does not repeat them.
    printed, logged = capsys.readouterr()
    lines = printed.splitlines()
    assert lines[-1] == f"run: {out}" and sum(str(out) in line for line in lines) == 1
    assert re.fullmatch(r"best_val_accuracy [\d.]+  best_epoch [12]  test_accuracy [\d.]+  train_seconds [\d,]+",
                        lines[-2])
    assert sum("best_val_accuracy" in line for line in lines) == 1 and "best val accuracy" not in logged
    log = (out / "train.log").read_text()
    assert "epoch 2/2" in log and "best val accuracy" in log  # the run's log keeps the result line


def test_best_checkpoint_is_the_best_validation_epoch(cifar_batches, tmp_path):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=3), out, progress=False)
    rows = RunDir(out).read_metrics()
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    best_row = max(rows, key=lambda r: r["val_accuracy"])  # the first of ties, as the run keeps it
    assert best["epoch"] == best_row["epoch"]
    model, _ = load_cifar_network(RunDir(out))
    assert model.variant == "A"


class _Crash(Exception):
    pass


def test_resume_after_epoch_1_equals_the_uninterrupted_run(cifar_batches, tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(_cfg(cifar_batches, epochs=3), full, progress=False)

    # Interrupt the second run right after its first last.pt is written.
    part = tmp_path / "part"
    real_save = engine.atomic_torch_save

    def save_then_crash(obj, path):
        real_save(obj, path)
        if str(path).endswith("last.pt") and obj["epoch"] == 1:
            raise _Crash

    monkeypatch.setattr(engine, "atomic_torch_save", save_then_crash)
    with pytest.raises(_Crash):
        train(_cfg(cifar_batches, epochs=3), part, progress=False)
    monkeypatch.setattr(engine, "atomic_torch_save", real_save)
    assert not (part / "summary.json").exists()

    train(resume_config(part), part, resume=True, progress=False)
    a, b = RunDir(full).read_metrics(), RunDir(part).read_metrics()
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert math.isclose(ra[k], rb[k], rel_tol=0, abs_tol=1e-6), (ra["epoch"], k)
    wa = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)
    sa, sb = RunDir(full).read_summary(), RunDir(part).read_summary()
    assert sa["test_accuracy"] == sb["test_accuracy"]


def test_resume_of_a_finished_run_changes_nothing(cifar_batches, tmp_path):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=1), out, progress=False)
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert main(["cifar", "train", "--resume", str(out)]) == 0
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_refuses_to_change_what_the_run_computes(cifar_batches, tmp_path):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=1), out, progress=False)
    with pytest.raises(CnnlabError, match="cannot change lr "):
        resume_config(out, {"lr": 0.5})
    assert resume_config(out, {"device": "cpu"}).device == "cpu"


def test_out_folder_holding_another_run_is_refused(cifar_batches, tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=1), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    rc = main(["cifar", "train", "--blocks", "E", "--data-dir", str(cifar_batches), "--out", str(out)])
    assert rc == 2
    assert "already holds a different run" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_checkpoint_of_another_architecture_is_a_clear_error(cifar_batches, tmp_path):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=1), out, progress=False)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    cfg["blocks"] = "E"
    (out / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(CheckpointError, match="best.pt was saved from another architecture than E"):
        load_cifar_network(RunDir(out))


@pytest.mark.parametrize("args, message", [
    (["--epochs", "0"], "--epochs: expected a positive integer"),
    (["--batch-size", "-4"], "--batch-size: expected a positive integer"),
    (["--width", "0"], "--width: expected a positive number"),
    (["--blocks", "ABX"], "--blocks"),
    (["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:99"], "--device cuda"),
])
def test_bad_options_exit_2_with_the_option_named(cifar_batches, tmp_path, capsys, args, message):
    rc = main(["cifar", "train", "--data-dir", str(cifar_batches), "--out", str(tmp_path / "r"), *args])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_config_file_is_overridden_by_options(cifar_batches, tmp_path):
    from cnnlab.commands.main import build_parser
    from cnnlab.commands.options import build_config

    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(yaml.safe_dump({"blocks": "C", "lr": "1e-3", "epochs": 7}))
    args = build_parser().parse_args(["cifar", "train", "--config", str(cfg_file), "--epochs", "3"])
    cfg = build_config(CifarTrainConfig, args)
    assert (cfg.blocks, cfg.lr, cfg.epochs) == ("C", 1e-3, 3)
    cfg_file.write_text(yaml.safe_dump({"nonsense": 1}))
    with pytest.raises(ConfigError, match="unknown option"):
        build_config(CifarTrainConfig, build_parser().parse_args(["cifar", "train", "--config", str(cfg_file)]))


def test_real_sample_short_run(shared_datasets, tmp_path):
    sample = shared_datasets / "cifar10-sample"
    if not sample.is_dir():
        pytest.skip("no cifar10-sample")
    s = train(CifarTrainConfig(blocks="E", width=0.125, epochs=1, batch_size=64, max_train_samples=256,
                               data_dir=str(sample)), tmp_path / "real", progress=False)
    assert s["num_train"] == 256 and s["num_val"] == 400 and s["num_test"] == 1000
    assert s["data_layout"] == "folders" and 0 <= s["test_accuracy"] <= 1


def test_a_finished_run_extended_from_2_to_4_epochs_equals_a_4_epoch_run(cifar_batches, tmp_path, capsys):
    full, ext = tmp_path / "full", tmp_path / "ext"
    # The exponential schedule: its rate at an epoch does not depend on how many epochs follow it.
    train(_cfg(cifar_batches, epochs=4, schedule="exponential", warmup_epochs=1.5), full, progress=False)
    train(_cfg(cifar_batches, epochs=2, schedule="exponential", warmup_epochs=1.5), ext, progress=False)
    RunDir(ext).update_summary(confusion_matrix=[[1]], evaluated_epoch=1)  # as cifar evaluate leaves it
    assert main(["cifar", "train", "--resume", str(ext), "--epochs", "4"]) == 0
    a, b = RunDir(full).read_metrics(), RunDir(ext).read_metrics()
    assert [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert math.isclose(ra[k], rb[k], rel_tol=0, abs_tol=1e-6), (ra["epoch"], k)
    sa, sb = RunDir(full).read_summary(), RunDir(ext).read_summary()
    assert sb["status"] == "finished" and sb["epochs"] == 4 and sb["best_epoch"] == sa["best_epoch"]
    assert sb["test_accuracy"] == sa["test_accuracy"]
    assert "confusion_matrix" not in sb and "evaluated_epoch" not in sb  # they described the old best.pt
    assert yaml.safe_load((ext / "config.yaml").read_text())["epochs"] == 4
    log = (ext / "train.log").read_text()
    assert "epochs: 2 in the run, 4 in this command" in log and "extending the finished run" in log


def test_epochs_cannot_shorten_a_run(cifar_batches, tmp_path, capsys):
    out = tmp_path / "run"
    train(_cfg(cifar_batches, epochs=2), out, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["cifar", "train", "--resume", str(out), "--epochs", "1"]) == 2
    assert "--epochs 1: the run has already trained 2 epochs" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
