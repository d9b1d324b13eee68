"""A margin loss under torchrun: its per-person weights live outside DDP, so their gradients are averaged
over the processes by the loss's own hooks; every process must hold the same weights."""

import pytest
import torch.distributed as dist

from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir
from tests.torchrun import torchrun

from .conftest import make_people, tiny_options

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _args(faces, out, epochs):
    return ["faces", "train", *tiny_options(faces, epochs=epochs, loss="subcenter-arcface", subcenters=2,
                                            **{"batch-size": 4, "precision": "fp32"}), "--out", str(out)]


def test_two_processes_keep_one_set_of_loss_weights(tmp_path):
    # Rank 0 alone saves the weights; a run extended from its checkpoint gives every process rank 0's. It ends
    # where the uninterrupted run ends only if both processes held those same weights all along.
    faces = make_people(tmp_path / "faces")
    full, ext = tmp_path / "full", tmp_path / "ext"
    for out, epochs in ((full, 3), (ext, 2)):
        p = torchrun(_args(faces, out, epochs), tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
    p = torchrun(["faces", "train", "--resume", str(ext), "--epochs", "3"], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = RunDir(full).read_metrics(), RunDir(ext).read_metrics()
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1, 2, 3]
    for k in ("train_loss", "val_loss", "val_roc_auc"):
        assert abs(a[3][k] - b[3][k]) <= 1e-6, k
    wa, wb = (load_checkpoint(r / "checkpoints" / "last.pt")["modules"]["loss"]["weight"] for r in (full, ext))
    assert (wa - wb).abs().max() <= 1e-6
    assert RunDir(full).read_summary()["ranks_in_sync"] is True
