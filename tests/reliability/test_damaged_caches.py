"""A damaged decode cache is never used: one warning, rebuilt from the source files, the same run."""

import random

import pytest

from cnnlab.commands.main import main
from cnnlab.run import RunDir
from tests.conftest import write_cifar_batches
from tests.faces.conftest import make_people, tiny_options


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "flipped bytes":
        rng = random.Random(0)
        for i in rng.sample(range(len(data) // 2, len(data)), 64):
            data[i] ^= 0xFF
    elif how == "truncated":
        data = data[: len(data) // 3]
    else:  # "garbage"
        data = bytearray(random.Random(1).randbytes(4096))
    path.write_bytes(bytes(data))


def _twice(tmp_path, monkeypatch, argv_for, pattern):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    assert main(argv_for(tmp_path / "first")) == 0
    caches = sorted((tmp_path / "cache").rglob(pattern))
    assert len(caches) == 1, caches
    return caches[0]


@pytest.mark.parametrize("how", ["flipped bytes", "truncated", "garbage"])
def test_a_damaged_cifar_cache_is_rebuilt_and_the_run_is_the_same(how, tmp_path, monkeypatch, capsys):
    root = write_cifar_batches(tmp_path / "b").parent

    def argv(out):
        return ["cifar", "train", "--width", "0.125", "--epochs", "1", "--batch-size", "32", "--precision", "fp32",
                "--device", "cpu", "--data-dir", str(root), "--out", str(out)]

    cache = _twice(tmp_path, monkeypatch, argv, "cifar10-*.pt")
    _damage(cache, how)
    capsys.readouterr()
    assert main(argv(tmp_path / "second")) == 0
    err = capsys.readouterr().err  # the CLI's log goes to the console
    warnings = [line for line in err.splitlines() if line.startswith("ignoring the")]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "building it again" in warnings[0], err
    assert "Traceback" not in err
    a, b = RunDir(tmp_path / "first").read_metrics(), RunDir(tmp_path / "second").read_metrics()
    assert [r["val_accuracy"] for r in a] == [r["val_accuracy"] for r in b]
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]


@pytest.mark.parametrize("how", ["flipped bytes", "truncated"])
def test_a_damaged_face_cache_is_rebuilt_and_the_run_is_the_same(how, tmp_path, monkeypatch, capsys):
    faces = make_people(tmp_path / "faces")

    def argv(out):
        return ["faces", "train", *tiny_options(faces, precision="fp32"), "--out", str(out)]

    cache = _twice(tmp_path, monkeypatch, argv, "faces/*.pt")
    _damage(cache, how)
    capsys.readouterr()
    assert main(argv(tmp_path / "second")) == 0
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("ignoring the")]
    assert len(warnings) == 1 and str(cache) in warnings[0] and "building it again" in warnings[0], err
    assert "Traceback" not in err
    a, b = RunDir(tmp_path / "first").read_metrics(), RunDir(tmp_path / "second").read_metrics()
    assert [r["val_roc_auc"] for r in a] == [r["val_roc_auc"] for r in b]
    assert [r["val_loss"] for r in a] == [r["val_loss"] for r in b]
