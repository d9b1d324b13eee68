"""Face training as torchrun starts it: two CPU processes with the gloo backend."""

import json

import pytest
import torch.distributed as dist

from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir
from tests.torchrun import kill_when, metrics_rows, torchrun

from .conftest import make_people, tiny_options

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _args(faces, out, epochs=2, **extra):
    return ["faces", "train", *tiny_options(faces, epochs=epochs, **extra), "--out", str(out)]


def test_two_processes_agree_and_write_one_valid_run(tmp_path):
    faces = make_people(tmp_path / "faces")
    out = tmp_path / "ddp"
    p = torchrun(_args(faces, out, loss="triplet", **{"batch-size": 8, "pk-images": 2}), tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["world_size"] == 2 and s["ranks_in_sync"] is True and s["status"] == "finished"
    assert [r["epoch"] for r in RunDir(out).read_metrics()] == [0, 1, 2]
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2 and len(ckpt["rng"]) == 2  # each rank's augmentation stream is saved
    assert (out / "train.log").read_text().count("epoch 2/2") == 1  # only rank 0 wrote
    assert (out / "test_pairs.csv").is_file() and not list(out.rglob("*.tmp"))

    p = torchrun(["faces", "train", "--resume", str(out)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text()) == s


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(tmp_path):
    faces = make_people(tmp_path / "faces")
    full, part = tmp_path / "full", tmp_path / "part"
    assert torchrun(_args(faces, full, epochs=3), tmp_path).returncode == 0

    # Rows 0 (untrained) and 1 written: kill inside epoch 2.
    kill_when(_args(faces, part, epochs=3), tmp_path, part, lambda run: metrics_rows(run) >= 3)
    assert not (part / "summary.json").exists(), "the run finished before it could be killed"

    p = torchrun(["faces", "train", "--resume", str(part)], tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = RunDir(full).read_metrics(), RunDir(part).read_metrics()
    assert len(a) == len(b) == 4
    for ra, rb in zip(a[1:], b[1:]):
        for k in ("train_loss", "val_loss", "val_roc_auc", "lr"):
            assert abs(ra[k] - rb[k]) <= 1e-6, (ra["epoch"], k)
