"""Face runs with the margin softmax losses, the BN-neck head and flip test-time augmentation."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import FACE_MARGIN_LOSSES
from cnnlab.errors import CheckpointError
from cnnlab.faces.train import build_loss, build_model, build_optimizer, resume_config, train
from cnnlab.inference.runs import load_face_network
from cnnlab.faces.protocol import load_study_data
from cnnlab.files import load_checkpoint
from cnnlab.run import RunDir

from .conftest import PEOPLE, tiny_config


def _train_people(out) -> int:
    return json.loads((out / "summary.json").read_text())["num_train_people"]


@pytest.mark.parametrize("name, subcenters", [("cosface", 1), ("arcface", 1), ("subcenter-arcface", 2)])
def test_a_margin_loss_trains_end_to_end_with_its_weights_beside_the_network(face_dir, tmp_path, name, subcenters):
    out = tmp_path / "run"
    cfg = tiny_config(face_dir, loss=name, epochs=2, subcenters=subcenters)
    s = train(cfg, out, progress=False)
    assert s["status"] == "finished" and (s["loss"], s["margin"], s["scale"]) == (name, cfg.margin, 30.0)
    people = _train_people(out)
    assert f"({name} loss, margin {cfg.margin:g}, scale 30, {people} training people" in (out / "train.log").read_text()
    rows = RunDir(out).read_metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(math.isfinite(r["val_loss"]) and 0 <= r["val_roc_auc"] <= 1 for r in rows)
    assert all(r["train_loss"] > 0 for r in rows[1:])

    last = load_checkpoint(out / "checkpoints" / "last.pt")
    weight = last["modules"]["loss"]["weight"]
    assert weight.shape == (people * subcenters, cfg.embedding_dim)
    # The optimizer trained the weights: their own group at the head's rate, with Adam's moments.
    group = next(g for g in last["optimizer"]["param_groups"] if g["name"] == "loss")
    assert group["lr"] == pytest.approx(cfg.lr) and group["name"] == last["optimizer"]["param_groups"][-2]["name"]
    (pid,) = group["params"]
    assert last["optimizer"]["state"][pid]["exp_avg"].shape == weight.shape
    assert float(last["optimizer"]["state"][pid]["exp_avg"].abs().sum()) > 0
    # best.pt is the network alone: everything that loads a run reads it as before.
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert set(best["model"]) == set(build_model(cfg, weights="none").state_dict())
    model, _ = load_face_network(RunDir(out))
    assert not model.training


def test_a_margin_loss_learns_one_class_per_training_person_single_image_people_included(face_dir):
    cfg = tiny_config(face_dir, loss="arcface")
    labels = torch.tensor([4, 4, 9, 12, 12, 12])  # person 9 has one image
    loss = build_loss(cfg, 3)
    assert loss.weight.shape == (3, cfg.embedding_dim)
    targets = torch.cat([t for _, t in loss.epoch_batches(labels, 2, torch.Generator().manual_seed(0))])
    assert sorted(targets.tolist()) == [0, 0, 1, 2, 2, 2]
    assert sum(n for _, n in PEOPLE if n == 1) == 3  # the drawn set has single-image people too


def test_the_loss_weights_join_the_optimizer_before_the_head(face_dir):
    cfg = tiny_config(face_dir, loss="cosface", weight_decay=1e-4, backbone_lr_mult=0.5)
    model, loss = build_model(cfg), build_loss(cfg, 5)
    opt = build_optimizer(model, cfg, loss)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["backbone", "backbone/no_decay", "loss", "head", "head/no_decay"]
    group = opt.param_groups[2]
    assert group["params"] == [loss.weight] and group["lr"] == cfg.lr and group["weight_decay"] == 1e-4
    contrastive = tiny_config(face_dir)
    plain = build_optimizer(build_model(contrastive), contrastive, build_loss(contrastive))
    assert [g["name"] for g in plain.param_groups] == ["backbone", "head"]  # losses without weights: as before


class _Crash(Exception):
    pass


def _crash_after_epoch_1(row):
    if row["epoch"] == 1:
        raise _Crash


def test_resume_continues_a_margin_loss_run_bit_exactly(face_dir, tmp_path):
    cfg = tiny_config(face_dir, loss="subcenter-arcface", subcenters=2, epochs=3, step_size=2, gamma=0.5,
                      freeze_bn=False, head="bnneck")
    full, part = tmp_path / "full", tmp_path / "part"
    train(cfg, full, progress=False)
    with pytest.raises(_Crash):
        train(cfg, part, progress=False, on_epoch=_crash_after_epoch_1)
    assert load_checkpoint(part / "checkpoints" / "last.pt")["epoch"] == 1
    train(resume_config(part), part, resume=True, progress=False)

    a, b = RunDir(full).read_metrics(), RunDir(part).read_metrics()
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a[1:], b[1:]):
        for k in ("train_loss", "val_loss", "val_roc_auc", "lr"):
            assert ra[k] == rb[k], (ra["epoch"], k)  # the same machine: resuming promises the same bits
    la, lb = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (full, part))
    assert torch.equal(la["modules"]["loss"]["weight"], lb["modules"]["loss"]["weight"])
    assert all(torch.equal(v, lb["model"][k]) for k, v in la["model"].items())


def test_a_checkpoint_without_the_loss_weights_is_refused_naming_them(face_dir, tmp_path):
    cfg = tiny_config(face_dir, loss="cosface", epochs=2)
    out = tmp_path / "run"
    with pytest.raises(_Crash):
        train(cfg, out, progress=False, on_epoch=_crash_after_epoch_1)
    path = out / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path)
    del ckpt["modules"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"last\.pt cannot be resumed: its 'modules' does not fit this run"):
        train(resume_config(out), out, resume=True, progress=False)


def test_bnneck_and_flip_tta_reach_the_network_that_loads_the_run(face_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(face_dir, loss="arcface", head="bnneck", flip_tta=True, epochs=1, precision="fp32")
    train(cfg, out, progress=False)
    model, saved = load_face_network(RunDir(out))
    assert (saved.head, saved.flip_tta) == ("bnneck", True)
    assert isinstance(model.head[1], torch.nn.BatchNorm1d) and model.flip_tta
    # The test embeddings the run saved are those of each image and its mirror, averaged, then normalised.
    d = load_study_data(cfg)
    x = d.faces.images[d.test_images]
    with torch.no_grad():
        xs = model.normalize_input(x)
        both = (model.head(model.backbone.forward_features(xs)) +
                model.head(model.backbone.forward_features(xs.flip(3)))) / 2
        model.flip_tta = False
        plain = model(x)
    embeddings = load_checkpoint(out / "test_embeddings.pt")["embeddings"]
    torch.testing.assert_close(embeddings, F.normalize(both, dim=1), rtol=0, atol=1e-5)
    assert not torch.allclose(embeddings, plain, atol=1e-3)


@pytest.mark.parametrize("name", FACE_MARGIN_LOSSES)
def test_margin_loss_runs_use_random_batches_of_the_whole_training_set(face_dir, name):
    cfg = tiny_config(face_dir, loss=name, batch_size=5)
    labels = torch.arange(23) // 3
    batches = build_loss(cfg, 8).epoch_batches(labels, cfg.batch_size, torch.Generator().manual_seed(0))
    assert [len(i) for i, _ in batches] == [5] * 4  # 23 images: four whole batches, the last 3 dropped
