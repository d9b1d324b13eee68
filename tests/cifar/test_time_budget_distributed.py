"""A time budget under torchrun: every rank steps at rank 0's clock and all stop at the same step."""

import json

import pytest
import torch.distributed as dist

from cnnlab.files import load_checkpoint
from tests.torchrun import torchrun

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def test_two_processes_stop_together_on_the_budget_at_the_floor(cifar_batches, tmp_path):
    out = tmp_path / "ddp"
    args = ["cifar", "train", "--blocks", "E", "--width", "0.125", "--epochs", "500", "--batch-size", "16",
            "--schedule", "linear", "--time-budget", "1.5s", "--ema", "0.9", "--data-dir", str(cifar_batches),
            "--device", "cpu", "--out", str(out)]
    p = torchrun(args, tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True and s["status"] == "finished"
    assert 1 <= s["epochs_trained"] < 500 and s["time_used_seconds"] >= 1.5
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.0, abs=1e-12)
    assert last["budget_spent"] == s["time_used_seconds"]
