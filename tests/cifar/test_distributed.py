"""Two CPU processes with the gloo backend, as torchrun starts them."""

import json

import pytest
import torch.distributed as dist

from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir
from tests.torchrun import kill_when, metrics_rows, torchrun

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_two_processes_agree_and_write_one_valid_run(cifar_batches, tmp_path):
    out = tmp_path / "ddp"
    args = ["cifar", "train", "--blocks", "D", "--width", "0.125", "--epochs", "2", "--batch-size", "16",
            "--data-dir", str(cifar_batches), "--device", "cpu", "--out", str(out)]
    p = torchrun(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True and s["status"] == "finished"
    rows = RunDir(out).read_metrics()
    assert [r["epoch"] for r in rows] == [1, 2]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2  # each rank's augmentation stream is saved
    # Only rank 0 wrote: one log line per epoch, no stray temporary files.
    assert (out / "train.log").read_text().count("epoch 2/2") == 1
    assert not [p for p in out.rglob("*.tmp")]

    # Resume under torchrun: a finished run is left as it is, and the command succeeds.
    p = torchrun(["cifar", "train", "--resume", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text()) == s


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(cifar_batches, tmp_path):
    def args(out, *extra):
        return ["cifar", "train", "--blocks", "A", "--width", "0.125", "--epochs", "3", "--batch-size", "16",
                "--data-dir", str(cifar_batches), "--device", "cpu", *extra, "--out", str(out)]

    full = tmp_path / "full"
    assert torchrun(args(full), tmp_path).returncode == 0

    part = tmp_path / "part"
    kill_when(args(part), tmp_path, part, lambda run: metrics_rows(run) >= 2)  # epoch 1 written: kill in epoch 2
    assert not (part / "summary.json").exists(), "the run finished before it could be killed"

    p = torchrun(["cifar", "train", "--resume", str(part)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = RunDir(full).read_metrics(), RunDir(part).read_metrics()
    assert len(a) == len(b) == 3
    for ra, rb in zip(a, b):
        for k in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
            assert abs(ra[k] - rb[k]) <= 1e-6, (ra["epoch"], k)
