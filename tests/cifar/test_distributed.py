"""Two CPU processes with the gloo backend, as torchrun starts them."""

import json
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _torchrun(args, tmp_path, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cnnlab", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_processes_agree_and_write_one_valid_run(cifar_batches, tmp_path):
    out = tmp_path / "ddp"
    args = ["cifar", "train", "--blocks", "D", "--width", "0.125", "--epochs", "2", "--batch-size", "16",
            "--data-dir", str(cifar_batches), "--device", "cpu", "--out", str(out)]
    p = _torchrun(args, tmp_path)
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
    p = _torchrun(["cifar", "train", "--resume", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text()) == s
