"""torch.distributed over NCCL on a GPU.

One process under torchrun is a world of one, in which cnnlab joins no process group (there
is nothing to synchronise); so NCCL and DistributedDataParallel are exercised in this process
with a world of one, and two processes under torchrun where the machine has two GPUs (NCCL
refuses two ranks on one GPU).
"""

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from cnnlab.models.basecnn import BaseCNN
from cnnlab.run import RunDir
from cnnlab.runtime import autocast
from tests.conftest import write_cifar_batches

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)"),
    pytest.mark.skipif(not dist.is_available() or not dist.is_nccl_available(),
                       reason="torch.distributed with NCCL is not available"),
]


def _torchrun(args, tmp_path, nproc):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNLAB_CACHE_DIR": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "cnnlab", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def _args(data, out):
    return ["cifar", "train", "--blocks", "D", "--width", "0.125", "--epochs", "1", "--batch-size", "16",
            "--data-dir", str(data), "--device", "cuda", "--out", str(out)]


def test_one_process_under_torchrun_trains_on_cuda(tmp_path):
    data = write_cifar_batches(tmp_path / "c").parent
    p = _torchrun(_args(data, tmp_path / "run"), tmp_path, nproc=1)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "finished" and s["world_size"] == 1 and s["device"].startswith("cuda")
    assert [r["epoch"] for r in RunDir(tmp_path / "run").read_metrics()] == [1]


def test_a_ddp_step_over_nccl_averages_gradients_and_trains(tmp_path):
    device = torch.device("cuda", 0)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        assert dist.get_backend() == "nccl"
        t = torch.ones(3, device=device)
        dist.all_reduce(t)
        assert t.tolist() == [1.0, 1.0, 1.0]  # a world of one sums to itself

        torch.manual_seed(0)
        model = BaseCNN("D", width=0.25).to(device)
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index])
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        x, y = torch.randn(16, 3, 32, 32, device=device), torch.randint(0, 10, (16,), device=device)
        before = model.fc.weight.detach().clone()
        with autocast(device, "bf16"):
            loss = F.cross_entropy(net(x).float(), y)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        assert torch.isfinite(loss) and not torch.equal(before, model.fc.weight)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs for two NCCL ranks")
def test_two_processes_over_nccl_agree(tmp_path):
    data = write_cifar_batches(tmp_path / "c").parent
    p = _torchrun(_args(data, tmp_path / "run"), tmp_path, nproc=2)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True and s["status"] == "finished"
