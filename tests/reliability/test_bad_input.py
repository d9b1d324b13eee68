"""The bad-input corpus: each case gives one clear message naming the culprit, a
non-zero exit status, no traceback, and leaves what was already written unchanged.

Each row: an id, a function that prepares the case under ``tmp_path`` and returns
(argv, text the message must contain), and the expected exit status.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import random
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.commands.main import main
from tests.conftest import TouchesOnLoad, write_cifar_batches, write_cifar_folders
from tests.reliability.conftest import check_bad_input, lock_held_elsewhere

TRAIN = ["cifar", "train", "--width", "0.125", "--epochs", "1", "--batch-size", "32"]


# --- case builders: (tmp_path, previous_run) -> (argv, culprit) -------------------------


def _folders(tmp, mutate):
    root = write_cifar_folders(tmp / "imgs", n_train=6, n_test=2)
    culprit = mutate(root / "train" / "cat")
    return TRAIN + ["--data-dir", str(root), "--out", str(tmp / "new")], culprit


def _write(name, data):
    def mutate(folder):
        p = folder / name
        p.write_bytes(data(folder) if callable(data) else data)
        return name
    return mutate


def _jpeg_bytes(size=(32, 32)):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def _batches(tmp, mutate):
    root = tmp / "batches"
    folder = write_cifar_batches(root)
    culprit = mutate(folder)
    return TRAIN + ["--data-dir", str(root), "--out", str(tmp / "new")], culprit


def _truncate_batch(folder):
    p = folder / "data_batch_2"
    p.write_bytes(p.read_bytes()[:1000])
    return "data_batch_2: truncated or corrupted"


def _garble_batch(folder):
    p = folder / "data_batch_4"
    p.write_bytes(random.Random(4).randbytes(4000))  # seeded: test_garbage.py covers many damages
    return "data_batch_4"


def _evil_batch(folder):
    evil = TouchesOnLoad(folder / "PWNED")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": evil, b"labels": []}, protocol=2))
    return "test_batch: not a CIFAR-10 batch"


def _bad_labels(make):
    """data_batch_3 with its 'labels' replaced by ``make(labels)``: a pickle numpy itself could have written."""
    def mutate(folder):
        p = folder / "data_batch_3"
        with open(p, "rb") as f:
            batch = pickle.load(f, encoding="bytes")
        batch[b"labels"] = make(list(batch[b"labels"]))
        p.write_bytes(pickle.dumps(batch, protocol=2))
        return "data_batch_3: not a CIFAR-10 batch: 'labels' must be a list of integers"
    return mutate


def _data_dir(tmp, make):
    d = tmp / "data"
    make(d)
    return TRAIN + ["--data-dir", str(d), "--out", str(tmp / "new")], f"--data-dir {d}"


def _option(*opts, culprit):
    def case(tmp, prev):
        root = write_cifar_batches(tmp / "b").parent
        return TRAIN + ["--data-dir", str(root), "--out", str(tmp / "new"), *opts], culprit
    return case


def _other_run_in_out(tmp, prev):
    data = prev.parent / "data"
    return TRAIN + ["--blocks", "E", "--data-dir", str(data), "--out", str(prev)], "already holds a different run"


def _other_arch_checkpoint(tmp, prev):
    from cnnlab.files import atomic_torch_save
    from cnnlab.models.basecnn import BaseCNN

    bad = tmp / "other.pt"
    atomic_torch_save({"model": BaseCNN("E", 0.125).state_dict(), "epoch": 1}, bad)
    (prev / "checkpoints" / "best.pt").write_bytes(bad.read_bytes())
    return ["cifar", "evaluate", str(prev)], "best.pt was saved from another architecture"


def _evil_checkpoint(tmp, prev):
    buf = io.BytesIO()
    torch.save({"model": TouchesOnLoad(tmp / "PWNED"), "epoch": 1}, buf)
    (prev / "checkpoints" / "last.pt").write_bytes(buf.getvalue())
    (prev / "summary.json").unlink()  # an unfinished run, so --resume reads last.pt
    return ["cifar", "train", "--resume", str(prev)], "last.pt cannot be loaded safely"


SUMMARY_DAMAGE = {
    "not json": b"{not json",
    "random bytes": bytes(random.Random(6).randbytes(300)),
    "a JSON list": b"[]",
    "truncated": b'{"kind": "cifar", "status": "fini',
}


def _bad_summary(damage, *command):
    def case(tmp, prev):
        (prev / "summary.json").write_bytes(SUMMARY_DAMAGE[damage])
        return ["cifar", *command, str(prev)], f"{prev / 'summary.json'} is not a JSON object"
    return case


def _face_command_on_a_cifar_run(*command):
    def case(tmp, prev):
        argv = ["faces", *[str(prev) if c == "RUN" else str(tmp / c) if c.endswith((".jpg", ".txt")) else c
                           for c in command]]
        return argv, f"{prev} is a run of the CIFAR-10 block study (made by cnnlab cifar train)"
    return case


FACE_COMMANDS = {
    "figures": ("figures", "RUN"),
    "analyze": ("analyze", "RUN"),
    "evaluate": ("evaluate", "RUN", "--pairs", "pairs.txt"),
    "verify": ("verify", "RUN", "a.jpg", "b.jpg"),
    "identify": ("identify", "RUN", "a.jpg", "--gallery", "."),
    "compare": ("compare", "RUN", "--out", "cmp"),
    "train --resume": ("train", "--resume", "RUN"),
}


def _config(text, culprit):
    """``--config FILE`` holding ``text``; the message must name the file and ``culprit`` (key, value, type)."""
    def case(tmp, prev):
        root = write_cifar_batches(tmp / "b").parent
        (tmp / "c.yaml").write_text(text)
        return TRAIN + ["--config", str(tmp / "c.yaml"), "--data-dir", str(root), "--out", str(tmp / "new")], \
            f"c.yaml: {culprit}"
    return case


def _unicode_classes(tmp, prev):
    root = write_cifar_folders(tmp / "imgs", n_train=2, n_test=1)
    nfc, nfd = "caf\u00e9", "cafe\u0301"  # the same name, composed and decomposed
    (root / "train" / "cat").rename(root / "train" / nfc)
    (root / "test" / "cat").rename(root / "test" / nfd)
    return TRAIN + ["--data-dir", str(root), "--out", str(tmp / "new")], \
        "train/caf\\xe9 and test/cafe\\u0301 are the same name in different Unicode normalisation"


def _resume_with_a_key_deleted(tmp, prev):
    config = prev / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(True)
                              if not line.startswith("val_per_class:")))
    (prev / "summary.json").unlink()  # an unfinished run
    return ["cifar", "train", "--resume", str(prev)], "val_per_class: null in the run, missing from config.yaml"


def _resume_nothing(tmp, prev):
    (tmp / "empty").mkdir()
    return ["cifar", "train", "--resume", str(tmp / "empty")], "holds no cnnlab run"


def _edit_config(edit):
    """A hand-edited config.yaml of the finished run, then --resume: the checkpoint's configuration wins."""
    def case(tmp, prev):
        import yaml

        cfg = yaml.safe_load((prev / "config.yaml").read_text())
        culprit = edit(cfg)
        (prev / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
        return ["cifar", "train", "--resume", str(prev), "--epochs", "2"], culprit
    return case


def _set(key, value, culprit):
    return _edit_config(lambda cfg: (cfg.__setitem__(key, value), culprit)[1])


def _unfinished(tmp, prev):
    (prev / "summary.json").unlink()  # what a run killed before its end leaves
    return ["cifar", "evaluate", str(prev)], "has not finished training"


CASES = [
    ("missing data folder", lambda t, p: _data_dir(t, lambda d: None), 2),
    ("empty data folder", lambda t, p: _data_dir(t, lambda d: d.mkdir()), 2),
    ("wrong layout", lambda t, p: _data_dir(t, lambda d: (d.mkdir(), (d / "x.csv").write_text("1"))), 2),
    ("batches incomplete", lambda t, p: _batches(t, lambda f: ((f / "data_batch_5").unlink(), "data_batch_5")[1]), 2),
    ("truncated batch", lambda t, p: _batches(t, _truncate_batch), 2),
    ("corrupted batch", lambda t, p: _batches(t, _garble_batch), 2),
    ("malicious batch", lambda t, p: _batches(t, _evil_batch), 2),
    ("labels as bytes", lambda t, p: _batches(t, _bad_labels(lambda y: bytes(y))), 2),
    ("labels all None", lambda t, p: _batches(t, _bad_labels(lambda y: [None] * len(y))), 2),
    ("labels a 2-D array", lambda t, p: _batches(t, _bad_labels(lambda y: np.array(y).reshape(-1, 1))), 2),
    ("float labels", lambda t, p: _batches(t, _bad_labels(lambda y: [3.7] * len(y))), 2),
    ("float label array", lambda t, p: _batches(t, _bad_labels(lambda y: np.array(y, dtype=np.float64) + 0.7)), 2),
    ("corrupted jpeg", lambda t, p: _folders(t, _write("bad.jpg", b"\xff\xd8\xff\xe0" + random.Random(5).randbytes(300))), 2),
    ("truncated jpeg", lambda t, p: _folders(t, _write("cut.jpg", _jpeg_bytes()[:200])), 2),
    ("non-image file", lambda t, p: _folders(t, _write("notes.txt", b"hello")), 2),
    ("1x1 image", lambda t, p: _folders(t, lambda f: (Image.new("RGB", (1, 1)).save(f / "dot.png"), "dot.png")[1]), 2),
    ("class folder without images", lambda t, p: _folders(
        t, lambda f: ([x.unlink() for x in f.iterdir()], "cat: class folder holds no image files")[1]), 2),
    ("blocks too short", _option("--blocks", "AAB", culprit="--blocks 'AAB'"), 2),
    ("blocks unknown letter", _option("--blocks", "AAAAAAAZ", culprit="'Z' is not a block name"), 2),
    ("zero epochs", _option("--epochs", "0", culprit="--epochs"), 2),
    ("negative epochs", _option("--epochs", "-3", culprit="--epochs"), 2),
    ("zero batch size", _option("--batch-size", "0", culprit="--batch-size"), 2),
    ("negative width", _option("--width", "-0.5", culprit="--width"), 2),
    ("negative lr", _option("--lr", "-1", culprit="--lr"), 2),
    ("missing device", _option("--device", "cuda:9", culprit="--device cuda:9"), 2),
    ("unknown device", _option("--device", "tpu", culprit="--device"), 2),
    ("out holds another run", _other_run_in_out, 2),
    ("checkpoint of another architecture", _other_arch_checkpoint, 2),
    ("malicious checkpoint", _evil_checkpoint, 2),
    ("resume of a folder with no run", _resume_nothing, 2),
    *((f"summary.json {d}, evaluate", _bad_summary(d, "evaluate", "--tsne-samples", "0"), 2) for d in SUMMARY_DAMAGE),
    *((f"summary.json {d}, figures", _bad_summary(d, "figures"), 2) for d in SUMMARY_DAMAGE),
    *((f"faces {c} on a cifar run", _face_command_on_a_cifar_run(*a), 2) for c, a in FACE_COMMANDS.items()),
    # Values of the wrong type, from a YAML file or the command line (issue 9, item 7).
    ("config width as a list", _config("width: [0.125]\n", "width: expected a finite number, got [0.125]"), 2),
    ("config data_dir as a number", _config("data_dir: 123\n", "data_dir: expected a string, got 123"), 2),
    ("config seed as a word", _config("seed: abc\n", "seed: expected an integer, got 'abc'"), 2),
    ("config integer as a float", _config("max_train_samples: 150.5\n",
                                          "max_train_samples: expected an integer or null, got 150.5"), 2),
    ("config null where not optional", _config("label_smoothing: null\n",
                                               "label_smoothing: expected a finite number, got None"), 2),
    ("config integer as a boolean", _config("batch_size: true\n", "batch_size: expected an integer, got True"), 2),
    ("config quoted false", _config("compile: 'false'\n", "compile: expected true or false, got 'false'"), 2),
    ("config quoted no", _config("augment: 'no'\n", "augment: expected study, crop-flip or none, got 'no'"), 2),
    ("config infinite lr", _config("lr: .inf\n", "lr: expected a finite number, got inf"), 2),
    ("infinite width", _option("--width", "inf", culprit="--width: expected a finite number, got inf"), 2),
    ("NaN lr", _option("--lr", "nan", culprit="--lr: expected a finite number, got nan"), 2),
    ("config is a folder", _option("--config", "/", culprit="config file / is a folder, not a regular file"), 2),
    # Messages that mislead (item 12).
    ("class folders differing in Unicode normalisation", _unicode_classes, 2),
    ("resume with a key deleted from config.yaml", _resume_with_a_key_deleted, 2),
    ("config.yaml with another seed", _set("seed", 7, "seed: 0 in the run, 7 in config.yaml"), 2),
    ("config.yaml without a key", _edit_config(lambda cfg: (
        cfg.pop("val_per_class"), "val_per_class: null in the run, missing from config.yaml")[1]), 2),
    ("config.yaml with an unknown key", _set("colour", "red", 'colour: not in the run, "red" in config.yaml'), 2),
    ("config.yaml with another seed, how to go on", _set("seed", 7, "put config.yaml back as it was"), 2),
    ("evaluate of an unfinished run", _unfinished, 2),
]


@pytest.fixture(scope="module")
def previous_run(tmp_path_factory):
    """A finished run whose files must never change because of a bad command."""
    root = tmp_path_factory.mktemp("prev")
    write_cifar_batches(root / "data")
    out = root / "run"
    assert main(TRAIN + ["--data-dir", str(root / "data"), "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("name, build, status", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_message(name, build, status, tmp_path, previous_run, capsys):
    replaced = {"checkpoint of another architecture": "checkpoints/best.pt",
                "malicious checkpoint": "checkpoints/last.pt"}.get(name)
    check_bad_input(build, previous_run, tmp_path, capsys, status, replaced)


def test_skip_bad_images_skips_and_reports_them(tmp_path, capsys, caplog):
    root = write_cifar_folders(tmp_path / "imgs", n_train=6, n_test=2)
    (root / "train" / "cat" / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    (root / "train" / "dog" / "notes.txt").write_text("hi")
    Image.new("RGB", (1, 1)).save(root / "test" / "cat" / "dot.png")
    caplog.set_level("WARNING", logger="cnnlab")
    rc = main(TRAIN + ["--data-dir", str(root), "--out", str(tmp_path / "r"), "--skip-bad-images"])
    assert rc == 0
    log = caplog.text
    assert "skipped 2 bad image file(s)" in log and "bad.jpg" in log and "notes.txt" in log
    assert "skipped 1 bad image file(s)" in log and "dot.png" in log


def test_every_png_mode_decodes(tmp_path):
    """Grayscale, RGBA, palette and 16-bit PNGs in an image folder are read, not refused."""
    from cnnlab.data.cifar10 import load_cifar10

    root = write_cifar_folders(tmp_path / "imgs", n_train=2, n_test=1)
    cat = root / "train" / "cat"
    Image.new("L", (32, 32), 200).save(cat / "gray.png")
    Image.new("RGBA", (32, 32), (10, 20, 30, 0)).save(cat / "rgba.png")
    Image.new("RGB", (32, 32), (250, 0, 0)).convert("P", palette=Image.Palette.ADAPTIVE).save(cat / "pal.png")
    Image.fromarray(np.full((32, 32), 65535, dtype=np.uint16)).save(cat / "sixteen.png")
    d = load_cifar10(root)
    assert len(d.train_labels) == 24
    imgs = {}
    files = sorted(p.name for p in cat.iterdir())
    start = int((d.train_labels < d.classes.index("cat")).sum())
    for i, name in enumerate(files):
        imgs[name] = d.train_images[start + i]
    assert imgs["gray.png"].float().mean() == 200
    assert imgs["rgba.png"][:, 0, 0].tolist() == [10, 20, 30]
    assert imgs["pal.png"][:, 0, 0].tolist()[0] > 240
    assert imgs["sixteen.png"].min() == 255  # 16-bit white is 8-bit white, not clipped noise


def test_nan_loss_stops_with_epoch_and_step_and_keeps_the_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    import torch.nn.functional as F

    root = write_cifar_batches(tmp_path / "b").parent
    out = tmp_path / "run"
    real = F.cross_entropy
    calls = {"n": 0}

    def poisoned(*a, **k):  # training steps only: fine for epoch 1 (5 steps), NaN from step 3 of epoch 2
        loss = real(*a, **k)
        if "label_smoothing" not in k:  # validation and test scoring
            return loss
        calls["n"] += 1
        return loss * float("nan") if calls["n"] >= 5 + 3 else loss

    monkeypatch.setattr(F, "cross_entropy", poisoned)
    rc = main(TRAIN + ["--epochs", "3", "--data-dir", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "NaN or infinite at epoch 2, step 3" in err
    from cnnlab.files import load_checkpoint

    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in load_checkpoint(out / "checkpoints" / "last.pt")["model"].values()
               if v.is_floating_point())


def _evil_archive(tmp_path: Path, member_name: str) -> Path:
    archive = tmp_path / "evil.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(member_name)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    return archive


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/cnnlab-absolute-escape.txt"])
def test_download_of_an_archive_that_escapes_is_refused(tmp_path, capsys, monkeypatch, member):
    import cnnlab.data.cifar10 as cifar10
    from cnnlab.data.download import md5sum

    archive = _evil_archive(tmp_path, member)
    monkeypatch.setattr(cifar10, "URL", archive.as_uri())
    monkeypatch.setattr(cifar10, "MD5", md5sum(archive))
    target = tmp_path / "data" / "inner"
    rc = main(TRAIN + ["--data-dir", str(target), "--download", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert rc == 2 and member.lstrip("/") in err and "Traceback" not in err
    assert not (tmp_path / "data" / "escaped.txt").exists()
    assert not Path("/tmp/cnnlab-absolute-escape.txt").exists()


def _weights_finite(path: Path) -> bool:
    from cnnlab.files import load_checkpoint

    return all(torch.isfinite(v).all() for v in load_checkpoint(path)["model"].values() if v.is_floating_point())


def test_weights_blown_up_by_an_epochs_last_step_stop_the_run_as_diverged(tmp_path, capsys, monkeypatch):
    """A step that sends the weights to NaN after its loss was computed once ended as 'finished'."""
    import cnnlab.engine as engine

    root = write_cifar_batches(tmp_path / "b").parent
    out = tmp_path / "run"
    real = engine._train_epoch

    def blow_up_in_epoch_2(s, spec, st, net, batches, epoch):
        sums = real(s, spec, st, net, batches, epoch)
        if epoch == 1:
            with torch.no_grad():
                for p in st.model.parameters():
                    p.fill_(float("inf"))
        return sums

    monkeypatch.setattr(engine, "_train_epoch", blow_up_in_epoch_2)
    rc = main(TRAIN + ["--epochs", "3", "--data-dir", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "training diverged at epoch 2" in err and "became NaN or infinite" in err, err
    assert "last good checkpoint (epoch 1) is kept" in err and "Traceback" not in err
    from cnnlab.files import load_checkpoint

    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] == 1
    assert _weights_finite(out / "checkpoints" / "last.pt") and _weights_finite(out / "checkpoints" / "best.pt")
    assert not (out / "summary.json").exists()  # never marked finished
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # the header and epoch 1


def test_a_huge_learning_rate_in_a_one_step_epoch_is_diverged_not_finished(tmp_path, capsys, monkeypatch):
    """The issue's case: one step an epoch at an absurd rate; only the training loss was checked.
    The config refuses such a rate now; the divergence check must still stand on its own."""
    import cnnlab.config

    monkeypatch.setattr(cnnlab.config, "MAX_LR", float("inf"))
    root = write_cifar_batches(tmp_path / "b").parent
    out = tmp_path / "run"
    rc = main(TRAIN + ["--batch-size", "256", "--lr", "1e30", "--data-dir", str(root), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "training diverged at epoch 1" in err and "no checkpoint was written" in err, err
    assert not (out / "checkpoints" / "best.pt").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize("damage", sorted(SUMMARY_DAMAGE))
def test_resume_rebuilds_a_summary_that_is_not_json(damage, tmp_path, previous_run, capsys):
    import shutil

    from tests.reliability.conftest import snapshot

    shutil.copytree(previous_run.parent, tmp_path / "prev")
    run = tmp_path / "prev" / previous_run.name
    good = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_bytes(SUMMARY_DAMAGE[damage])
    checkpoints = snapshot(run / "checkpoints")
    assert main(["cifar", "train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"{run / 'summary.json'} is not a JSON object" in err and "rebuilt from the checkpoints" in err
    rebuilt = json.loads((run / "summary.json").read_text())
    assert rebuilt["status"] == "finished" and rebuilt["best_epoch"] == good["best_epoch"]
    assert rebuilt["test_accuracy"] == good["test_accuracy"]
    assert (run / "summary.json.unreadable").read_bytes() == SUMMARY_DAMAGE[damage]  # kept, not lost
    assert snapshot(run / "checkpoints") == checkpoints


def test_a_download_that_cannot_reach_its_server_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    import cnnlab.data.cifar10 as cifar10

    monkeypatch.setattr(cifar10, "URL", "file:///nowhere/cifar-10-python.tar.gz")
    out = tmp_path / "runs" / "A"
    argv = TRAIN + ["--data-dir", str(tmp_path / "data"), "--download", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cifar-10-python.tar.gz" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    assert main(argv) == 2  # the same command fails the same way, not with "already holds this run"
    assert "already holds" not in capsys.readouterr().err


@pytest.mark.parametrize("command", [["cifar", "train", "--resume"], ["cifar", "evaluate"], ["cifar", "figures"]])
def test_a_run_in_use_by_another_process_is_refused_naming_it(command, tmp_path, previous_run, capsys):
    with contextlib.ExitStack() as held:
        def build(case, prev):
            holder = held.enter_context(lock_held_elsewhere(prev))
            return [*command, str(prev)], f"in use by another cnnlab process (PID {holder.pid}, started "

        check_bad_input(build, previous_run, tmp_path, capsys)
    # SIGKILL released the lock with the holder: the run is free again, nothing stale is left
    assert main(["cifar", "figures", str(tmp_path / "prev" / previous_run.name)]) == 0
    assert not (tmp_path / "prev" / previous_run.name / ".lock").exists()
