import json
import math
import re

import pytest
import torch
import yaml

from cnnlab.commands.main import flag, main
from cnnlab.config import FaceTrainConfig
from cnnlab.errors import CnnlabError, ConfigError, DataError
from cnnlab.faces.train import build_model, frozen_layers
from cnnlab.models.siamese import backbone_layers, set_trainable
from cnnlab.faces.train import build_loss, resume_config, train
from cnnlab.files import load_checkpoint
from cnnlab.inference.runs import load_face_network
from cnnlab.models.efficientnet_lite import key_map
from cnnlab.models.timm_backbone import TimmBackbone
from cnnlab.run import RunDir

from .conftest import make_people, tiny_config, tiny_options, write_pairs

RUN_FILES = ("config.yaml", "metrics.csv", "summary.json", "train.log", "checkpoints/best.pt", "checkpoints/last.pt",
             "test_pairs.csv", "test_embeddings.pt")


def test_cli_train_writes_every_file(face_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["faces", "train", *tiny_options(face_dir), "--out", str(out)]) == 0
    for f in RUN_FILES:
        assert (out / f).is_file(), f
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["backbone"] == "tiny" and cfg["epochs"] == 1 and cfg["margin"] == 1.0
    assert cfg["normalize_embeddings"] is True
    rows = RunDir(out).read_metrics()
    assert [r["epoch"] for r in rows] == [0, 1]  # epoch 0 scores the untrained network
    assert set(rows[0]) >= {"train_loss", "val_loss", "val_roc_auc", "lr", "seconds"}
    assert math.isnan(rows[0]["train_loss"]) and rows[1]["train_loss"] > 0
    s = json.loads((out / "summary.json").read_text())
    for k in ("roc_auc", "eer", "accuracy", "threshold", "tar_at_far_1e-3", "train_seconds", "best_val_roc_auc",
              "backbone_roc_auc", "precision_at_1", "map_at_r", "num_test_pairs"):
        assert k in s, k
    assert s["status"] == "finished" and 0 <= s["roc_auc"] <= 1 and 0 <= s["accuracy"] <= 1
    assert s["best_val_roc_auc"] == max(r["val_roc_auc"] for r in rows)
    assert s["num_train_people"] + s["num_val_people"] + s["num_test_people"] == 13
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert {"model", "optimizer", "scheduler", "epoch", "rng", "history", "best"} <= set(last) and last["epoch"] == 1
    printed = capsys.readouterr().out
    assert "roc_auc" in printed and "threshold" in printed
    assert "epoch 1/1" in (out / "train.log").read_text()


def test_test_files_hold_the_reported_pairs(face_dir, tmp_path):
    out = tmp_path / "run"
    s = train(tiny_config(face_dir), out, progress=False)
    saved = load_checkpoint(out / "test_embeddings.pt")
    lines = (out / "test_pairs.csv").read_text().splitlines()
    assert lines[0] == "a,b,same,distance,file_a,file_b"
    assert len(lines) - 1 == s["num_test_pairs"]
    emb = saved["embeddings"]
    assert emb.shape == (s["num_test_images"], 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)  # normalised embeddings
    for line in lines[1:]:
        a, b, same, d, fa, fb = line.split(",")
        assert float(d) == pytest.approx(float((emb[int(a)] - emb[int(b)]).norm()), abs=1e-5)
        assert (fa.split("/")[0] == fb.split("/")[0]) == (same == "1")
        assert saved["files"][int(a)] == fa


def test_best_checkpoint_is_the_best_validation_epoch(face_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(face_dir, epochs=3, lr=0.05), out, progress=False)
    rows = RunDir(out).read_metrics()
    best = load_checkpoint(out / "checkpoints" / "best.pt")
    assert best["epoch"] == max(rows, key=lambda r: r["val_roc_auc"])["epoch"]  # first of ties
    model, cfg = load_face_network(RunDir(out))
    assert not model.training and cfg.epochs == 3


class _Crash(Exception):
    pass


@pytest.mark.parametrize("loss", ["contrastive", "triplet"])
def test_resume_after_epoch_1_equals_the_uninterrupted_run(face_dir, tmp_path, loss):
    cfg = tiny_config(face_dir, epochs=3, loss=loss, step_size=2, gamma=0.5, freeze_bn=False)
    full = tmp_path / "full"
    train(cfg, full, progress=False)

    part = tmp_path / "part"

    def crash_after_epoch_1(row):
        if row["epoch"] == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train(cfg, part, progress=False, on_epoch=crash_after_epoch_1)
    assert not (part / "summary.json").exists()
    assert load_checkpoint(part / "checkpoints" / "last.pt")["epoch"] == 1

    train(resume_config(part), part, resume=True, progress=False)
    a, b = RunDir(full).read_metrics(), RunDir(part).read_metrics()
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [0, 1, 2, 3]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "val_roc_auc", "lr"):
            if not math.isnan(ra[k]):
                assert math.isclose(ra[k], rb[k], rel_tol=0, abs_tol=1e-6), (ra["epoch"], k)
    assert a[3]["lr"] == pytest.approx(a[1]["lr"] * 0.5)  # StepLR, step 2
    wa = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    wb = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    assert all(torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6) for k in wa)
    sa, sb = RunDir(full).read_summary(), RunDir(part).read_summary()
    for k in ("roc_auc", "accuracy", "threshold", "best_epoch"):
        assert sa[k] == pytest.approx(sb[k], abs=1e-6), k


def test_resume_of_a_finished_run_changes_nothing(face_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(face_dir), out, progress=False)
    before = (out / "checkpoints" / "last.pt").read_bytes()
    assert main(["faces", "train", "--resume", str(out)]) == 0
    assert (out / "checkpoints" / "last.pt").read_bytes() == before


def test_resume_refuses_to_change_what_the_run_computes(face_dir, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(face_dir), out, progress=False)
    with pytest.raises(CnnlabError, match="cannot change margin ") as e:
        resume_config(out, {"margin": 2.0})
    assert "cannot change --margin " in e.value.worded(flag)  # as the command line says it
    assert resume_config(out, {"device": "cpu", "eval_batch_size": 8}).eval_batch_size == 8


def test_epochs_0_scores_the_untrained_network_and_its_backbone(face_dir, tmp_path):
    out = tmp_path / "run"
    s = train(tiny_config(face_dir, epochs=0), out, progress=False)
    rows = RunDir(out).read_metrics()
    assert [r["epoch"] for r in rows] == [0]
    assert s["best_epoch"] == 0 and s["train_seconds"] == 0 and s["train_images_per_second"] is None
    for k in ("roc_auc", "accuracy", "threshold", "backbone_roc_auc", "backbone_accuracy", "backbone_threshold"):
        assert isinstance(s[k], float), k
    # best.pt holds the initial weights: the same embeddings as a fresh model from the same seed.
    torch.manual_seed(0)
    fresh = build_model(tiny_config(face_dir, epochs=0))
    saved = load_checkpoint(out / "checkpoints" / "best.pt")["model"]
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())


def test_triplet_run_uses_pk_batches(face_dir, tmp_path):
    cfg = tiny_config(face_dir, loss="triplet", miner="semi-hard", batch_size=8, pk_images=2)
    assert cfg.margin == 0.2  # the triplet default
    s = train(cfg, tmp_path / "run", progress=False)
    assert s["loss"] == "triplet" and s["miner"] == "semi-hard"
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3, 3])
    batches = build_loss(cfg).epoch_batches(labels, cfg.batch_size, torch.Generator().manual_seed(0))
    for idx, target in batches:
        assert len(idx) == 8 and torch.equal(target, labels[idx])
        assert all(int((target == p).sum()) == 2 for p in target.unique())  # K = 2 images of P = 4 people


def test_contrastive_batches_are_fresh_study_pairs(face_dir):
    cfg = tiny_config(face_dir, batch_size=6)
    labels = torch.arange(20) // 4  # five people, four images each
    g = torch.Generator().manual_seed(0)
    loss = build_loss(cfg)
    first, second = loss.epoch_batches(labels, cfg.batch_size, g), loss.epoch_batches(labels, cfg.batch_size, g)
    assert len(first) == 20 // 3  # one pair per anchor, three pairs a step, the partial batch dropped
    for idx, y in first:
        a, b = idx[:3], idx[3:]
        assert torch.equal((labels[a] == labels[b]).float(), y) and bool((a != b).all())
    assert not all(torch.equal(x[0], z[0]) for x, z in zip(first, second))  # new pairs each epoch


def test_trainable_layers_and_freeze_epochs(face_dir):
    cfg = tiny_config(face_dir, trainable_layers=1, freeze_epochs=1)
    model = build_model(cfg)
    layers = backbone_layers(model.backbone)
    assert len(layers) == 3
    first = lambda ls: [id(next(layer.parameters())) for layer in ls]
    assert first(frozen_layers(model, cfg, 0)) == first(layers)  # head only while --freeze-epochs lasts
    assert first(frozen_layers(model, cfg, 1)) == first(layers[:2])
    set_trainable(model, frozen_layers(model, cfg, 1))
    assert all(p.requires_grad for p in layers[2].parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in model.head.parameters())


def test_frozen_layers_do_not_change(face_dir, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_config(face_dir, trainable_layers=1, epochs=2, lr=0.05, freeze_bn=False)
    train(cfg, out, progress=False)
    torch.manual_seed(0)
    start = build_model(cfg).state_dict()
    end = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    # First two conv units frozen (BatchNorm statistics too: frozen layers stay in eval mode), the last trained.
    assert all(torch.equal(start[k], end[k]) for k in start if k.startswith("backbone.features.") and
               int(k.split(".")[2]) < 6)
    assert not torch.equal(start["backbone.features.6.weight"], end["backbone.features.6.weight"])
    assert not torch.equal(start["head.0.weight"], end["head.0.weight"])


def test_lfw_view1_protocol_trains_on_dev_train_and_tests_on_dev_test(face_dir, tmp_path):
    people = sorted(p.name for p in face_dir.iterdir())
    train_people, test_people = people[:7] + people[10:], people[7:10]  # Person_A..G + solos | H, I, J
    (tmp_path / "peopleDevTrain.txt").write_text(f"{len(train_people)}\n" +
                                                  "".join(f"{p}\t1\n" for p in train_people))
    (tmp_path / "peopleDevTest.txt").write_text("3\n" + "".join(f"{p}\t4\n" for p in test_people))
    write_pairs(tmp_path / "pairsDevTest.txt",
                [([("Person_H", 1, 2), ("Person_I", 3, 4)],
                  [("Person_H", 1, "Person_J", 2), ("Person_I", 1, "Person_J", 3)])],
                view1=True)
    out = tmp_path / "run"
    s = train(tiny_config(face_dir, protocol="lfw-view1", protocol_dir=str(tmp_path), val_fraction=0.3), out,
              progress=False)
    assert s["protocol"] == "lfw-view1" and s["num_test_pairs"] == 4 and s["num_test_pairs_same"] == 2
    assert s["num_test_people"] == 3 and s["num_test_images"] == 12
    assert s["num_train_people"] + s["num_val_people"] == len(train_people)
    lines = (out / "test_pairs.csv").read_text().splitlines()[1:]
    assert [tuple(line.split(",")[4:]) for line in lines] == [
        ("Person_H/Person_H_0001.jpg", "Person_H/Person_H_0002.jpg"),
        ("Person_I/Person_I_0003.jpg", "Person_I/Person_I_0004.jpg"),
        ("Person_H/Person_H_0001.jpg", "Person_J/Person_J_0002.jpg"),
        ("Person_I/Person_I_0001.jpg", "Person_J/Person_J_0003.jpg"),
    ]


def test_lfw_view1_without_protocol_files_names_them(face_dir, tmp_path):
    with pytest.raises(DataError, match="peopleDevTrain.txt not found"):
        train(tiny_config(face_dir, protocol="lfw-view1", protocol_dir=str(tmp_path)), tmp_path / "run",
              progress=False)


def test_a_small_set_of_twelve_people_trains_and_reports_its_split(tmp_path, caplog):
    # A user's own photos: 12 people with 2-6 images each and the default 10% validation and test
    # shares (one person each by the fractions alone, who could form no different-people pair).
    people = [(f"P{i:02d}", 2 + i % 5) for i in range(12)]
    faces = make_people(tmp_path / "faces", people)
    caplog.set_level("INFO", logger="cnnlab")
    summary = train(tiny_config(faces, val_fraction=0.1, test_fraction=0.1), tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == saved["status"] == "finished"
    split = {k: saved[k] for k in ("num_train_people", "num_val_people", "num_test_people")}
    assert split == {"num_train_people": 8, "num_val_people": 2, "num_test_people": 2}
    total = sum(n for _, n in people)
    assert saved["num_train_images"] + saved["num_val_images"] + saved["num_test_images"] == total
    assert saved["num_val_pairs"] > 0 and saved["num_test_pairs"] > 0
    assert "validation 2 people" in (tmp_path / "run" / "train.log").read_text()
    assert (f"train 8 people ({saved['num_train_images']} images); validation 2 people "
            f"({saved['num_val_images']} images, {saved['num_val_pairs']} pairs); test 2 people") in caplog.text


def test_too_few_validation_people_is_a_clear_error(tmp_path):
    # Three people: each split gets one (too few for two each), and one person cannot make a
    # different-people pair.
    faces = make_people(tmp_path / "faces", [("Ann", 4), ("Bob", 4), ("Cid", 4)])
    with pytest.raises(DataError, match="validation people .*val_fraction"):
        train(tiny_config(faces, val_fraction=0.1, test_fraction=0.1), tmp_path / "run", progress=False)


@pytest.mark.parametrize("kw, message", [
    (dict(margin=-1.0), "--margin"),
    (dict(batch_size=7), "--batch-size: expected an even number"),
    (dict(loss="triplet", batch_size=10, pk_images=4), "--batch-size: expected a multiple of --pk-images"),
    (dict(loss="hinge"), "--loss"),
    (dict(epochs=-1), "--epochs"),
    (dict(val_fraction=0.6, test_fraction=0.5), "--val-fraction"),
    (dict(protocol="view2"), "--protocol"),
    (dict(image_size=8), "--image-size"),
    (dict(trainable_layers=-2), "--trainable-layers"),
    (dict(backbone="resnet18"), "--backbone: expected efficientnet_lite0, efficientnet_lite1, efficientnet_lite2, "
                                "efficientnet_b0, tiny or timm:NAME"),
    (dict(backbone="timm:resnet_nope"), "--backbone: .*got 'timm:resnet_nope'"),
])


def test_bad_options_name_the_option(face_dir, kw, message):
    with pytest.raises(ConfigError) as e:
        tiny_config(face_dir, **kw)
    assert re.search(message, e.value.worded(flag)), e.value.worded(flag)  # the command line: the flags
    assert "--" not in str(e.value)  # Python: the fields' own names


def test_bad_cli_options_exit_2(face_dir, tmp_path, capsys):
    assert main(["faces", "train", *tiny_options(face_dir, margin=0), "--out", str(tmp_path / "r")]) == 2
    assert "--margin" in capsys.readouterr().err
    assert main(["faces", "train", *tiny_options(tmp_path / "missing"), "--out", str(tmp_path / "r2")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_default_margins_follow_the_loss():
    assert FaceTrainConfig().margin == 1.0
    assert FaceTrainConfig(loss="triplet").margin == 0.2
    assert FaceTrainConfig(loss="triplet", margin=0.5).margin == 0.5


def test_default_crop_is_the_lfw_crop():
    from cnnlab.data.faces import LFW_CROP

    assert FaceTrainConfig().crop == LFW_CROP


def test_freeze_bn_keeps_backbone_batchnorm_in_eval_mode(face_dir):
    from torch import nn

    from cnnlab.models.siamese import set_train_mode

    model = build_model(tiny_config(face_dir))
    bns = [m for m in model.backbone.modules() if isinstance(m, nn.BatchNorm2d)]
    set_train_mode(model, [], freeze_bn=True)
    assert model.training and model.head.training and not any(m.training for m in bns)
    set_train_mode(model, [], freeze_bn=False)
    assert all(m.training for m in bns)


# --------------------------------------------------------------------------- timm backbones


def test_timm_backbone_trains_end_to_end(face_dir, tmp_path):
    out = tmp_path / "run"
    # The tiny runs' learning rate: at 0.05 this bf16 ResNet diverged now and then, depending on thread timing.
    cfg = tiny_config(face_dir, backbone="timm:resnet18", image_size=16, trainable_layers=2, freeze_bn=False)
    s = train(cfg, out, progress=False)
    assert s["status"] == "finished" and s["backbone"] == "timm:resnet18" and 0 <= s["roc_auc"] <= 1
    model, saved = load_face_network(RunDir(out))
    assert saved.backbone == "timm:resnet18" and isinstance(model.backbone, TimmBackbone)
    assert len(backbone_layers(model.backbone)) == 9  # stem, 8 basic blocks: the last 2 trained
    torch.manual_seed(0)
    start = build_model(cfg).state_dict()
    end = load_checkpoint(out / "checkpoints" / "last.pt")["model"]
    assert torch.equal(start["backbone.net.conv1.weight"], end["backbone.net.conv1.weight"])
    assert torch.equal(start["backbone.net.layer3.1.bn2.running_mean"], end["backbone.net.layer3.1.bn2.running_mean"])
    assert not torch.equal(start["backbone.net.layer4.1.conv2.weight"], end["backbone.net.layer4.1.conv2.weight"])


def _as_port_checkpoint(path, model) -> None:
    """Rewrite the network in checkpoint ``path`` under the key names of the former hand-written Lite0 port."""
    old = {f"backbone.net.{new}": f"backbone.{port}" for port, new in key_map("port", model.backbone.net).items()}
    ckpt = load_checkpoint(path)
    ckpt["model"] = {old.get(k, k): v for k, v in ckpt["model"].items()}
    torch.save(ckpt, path)


def test_run_of_the_former_lite0_port_evaluates_and_resumes(face_dir, tmp_path):
    import shutil

    cfg = tiny_config(face_dir, backbone="efficientnet_lite0", image_size=16, epochs=2, freeze_bn=False,
                      weight_decay=1e-4)
    part, old = tmp_path / "part", tmp_path / "old"

    def crash_after_epoch_1(row):
        if row["epoch"] == 1:
            raise _Crash

    with pytest.raises(_Crash):
        train(cfg, part, progress=False, on_epoch=crash_after_epoch_1)
    shutil.copytree(part, old)
    model = build_model(cfg, weights="none")
    for name in ("last.pt", "best.pt"):
        _as_port_checkpoint(old / "checkpoints" / name, model)
    assert "backbone.blocks.15.project.bn.running_var" in load_checkpoint(old / "checkpoints" / "last.pt")["model"]

    loaded, _ = load_face_network(RunDir(old), "last", allow_unfinished=True)  # as evaluate and analyze load it
    before = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in before.items())

    # Resuming loads the old names and the optimizer state saved beside them, and goes on as if nothing changed.
    for run in (part, old):
        train(resume_config(run), run, resume=True, progress=False)
    expected = load_checkpoint(part / "checkpoints" / "last.pt")["model"]
    got = load_checkpoint(old / "checkpoints" / "last.pt")["model"]
    assert set(got) == set(expected)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    a, b = RunDir(part).read_summary(), RunDir(old).read_summary()
    assert a["roc_auc"] == b["roc_auc"] and a["best_epoch"] == b["best_epoch"]


def test_a_finished_run_extended_from_2_to_4_epochs_equals_a_4_epoch_run(face_dir, tmp_path):
    full, ext = tmp_path / "full", tmp_path / "ext"
    kw = dict(step_size=3, gamma=0.5, freeze_bn=False)  # StepLR steps after epoch 3, beyond the first end
    train(tiny_config(face_dir, epochs=4, **kw), full, progress=False)
    train(tiny_config(face_dir, epochs=2, **kw), ext, progress=False)
    RunDir(ext).update_summary(lfw_accuracy_mean=0.5)  # as faces evaluate leaves it
    assert main(["faces", "train", "--resume", str(ext), "--epochs", "4"]) == 0
    a, b = RunDir(full).read_metrics(), RunDir(ext).read_metrics()
    assert [r["epoch"] for r in b] == [0, 1, 2, 3, 4]
    for ra, rb in zip(a, b):
        for k in ("train_loss", "val_loss", "val_roc_auc", "lr"):
            if not math.isnan(ra[k]):
                assert math.isclose(ra[k], rb[k], rel_tol=0, abs_tol=1e-6), (ra["epoch"], k)
    assert b[4]["lr"] == pytest.approx(b[3]["lr"] * 0.5)
    sa, sb = RunDir(full).read_summary(), RunDir(ext).read_summary()
    assert sb["status"] == "finished" and sb["epochs"] == 4 and "lfw_accuracy_mean" not in sb
    for k in ("roc_auc", "accuracy", "threshold", "best_epoch"):
        assert sa[k] == pytest.approx(sb[k], abs=1e-6), k


def test_a_run_whose_best_is_the_untrained_network_says_so(face_dir, tmp_path, capsys):
    """Epoch 0 competes for best.pt; when it wins, the console, train.log and comparison table say so."""
    from cnnlab.faces.train import UNTRAINED_BEST

    out = tmp_path / "run"
    # a rate too small to change a distance: every epoch ties with epoch 0, and the first of ties is kept
    assert main(["faces", "train", *tiny_options(face_dir, lr=1e-12), "--out", str(out)]) == 0
    printed, logged = capsys.readouterr()
    lines = printed.splitlines()
    assert json.loads((out / "summary.json").read_text())["best_epoch"] == 0
    assert UNTRAINED_BEST in logged and UNTRAINED_BEST in (out / "train.log").read_text()
    headline = next(line for line in lines if line.startswith("roc_auc "))
    assert "best_epoch 0" in headline and lines[-1] == f"run: {out}"
    assert sum(str(out) in line for line in lines) == 1
    assert main(["faces", "compare", str(out), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out.splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    row = [c.strip() for c in table[2].strip("|").split("|")]
    assert row[header.index("best epoch")] == "0" and row[header.index("margin")] == "1"
    assert "training did not improve on the untrained network" in (tmp_path / "cmp" / "report.md").read_text()
    assert main(["faces", "analyze", str(out), "--device", "cpu"]) == 0
    assert UNTRAINED_BEST in (out / "report.md").read_text().lower()
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2:] == [f"figures: {out / 'figures'}", f"report: {out / 'report.md'}, {out / 'report.html'}"]
    assert sum(str(out) in line for line in lines) == 2


def test_training_never_asks_which_loss_or_miner_it_has():
    """The loss object says what it needs (:class:`cnnlab.losses.FaceLoss`); faces/train.py compares no
    ``.loss`` or ``.miner`` against a name, so a new loss is a new class, not a new branch."""
    import ast
    from pathlib import Path

    import cnnlab.faces.train

    path = Path(cnnlab.faces.train.__file__)
    asks = lambda node: isinstance(node, ast.Attribute) and node.attr in ("loss", "miner")
    found = [f"line {n.lineno}: {ast.unparse(n)}" for n in ast.walk(ast.parse(path.read_text()))
             if (isinstance(n, ast.Compare) and any(asks(x) for x in (n.left, *n.comparators)))
             or (isinstance(n, ast.Match) and asks(n.subject))]
    assert not found, f"{path} branches on the loss: " + "; ".join(found)


def test_the_banner_and_summary_name_the_loss_as_before(face_dir, tmp_path):
    s = train(tiny_config(face_dir, epochs=1), tmp_path / "c", progress=False)
    assert (s["loss"], s["margin"], s["miner"]) == ("contrastive", 1.0, None)
    assert "-d head (contrastive loss, margin 1) on " in (tmp_path / "c" / "train.log").read_text()
    cfg = tiny_config(face_dir, epochs=1, loss="triplet", miner="all", batch_size=8, pk_images=2)
    s = train(cfg, tmp_path / "t", progress=False)
    assert (s["loss"], s["margin"], s["miner"]) == ("triplet", 0.2, "all")
    assert "-d head (triplet loss, margin 0.2, all mining) on " in (tmp_path / "t" / "train.log").read_text()
