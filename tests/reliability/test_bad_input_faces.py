"""The bad-input corpus, face side: one clear message naming the culprit, a non-zero
exit status, no traceback, and the files of an earlier run unchanged."""

from __future__ import annotations

import os
import contextlib
import shutil
from pathlib import Path

import pytest
import yaml
from PIL import Image

from cnnlab.commands.main import main
from tests.faces.conftest import make_people, tiny_options, write_pairs
from tests.reliability.conftest import check_bad_input, lock_held_elsewhere


@pytest.fixture(scope="module")
def face_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("facerun")
    faces = make_people(root / "faces")
    assert main(["faces", "train", *tiny_options(faces), "--out", str(root / "run")]) == 0
    return root


def _train(case, faces, *extra):
    return ["faces", "train", *tiny_options(faces), *extra, "--out", str(case / "new")]


def _people(case, mutate):
    faces = make_people(case / "faces")
    culprit = mutate(faces)
    return _train(case, faces), culprit


def _empty_person(faces):
    (faces / "Nobody_Here").mkdir()
    return "Nobody_Here"


def _bad_jpeg(faces):
    (faces / "Person_C" / "Person_C_0009.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return "Person_C_0009.jpg"


def _text_file(faces):
    (faces / "Person_D" / "notes.txt").write_text("who is this")
    return "notes.txt"


def _tiny_image(faces):
    Image.new("RGB", (1, 1)).save(faces / "Person_E" / "Person_E_0009.png")
    return "Person_E_0009.png"


def _pairs(case, prev, lines):
    path = case / "pairs.txt"
    path.write_text("\n".join(lines) + "\n")
    return ["faces", "evaluate", str(prev), "--pairs", str(path)]


FOLD2 = ["Person_C\t1\t2", "Person_D\t1\tPerson_E\t1"]  # a second, well-formed fold

SUMMARY_DAMAGE = {"not json": b"{not json", "random bytes": bytes(range(256)) * 2, "a JSON list": b"[]",
                  "truncated": b'{"kind": "faces", "thresh'}


def _bad_summary(damage, *command):
    def case(c, p):
        (p / "summary.json").write_bytes(SUMMARY_DAMAGE[damage])
        argv = ["faces", *[str(p) if a == "RUN" else str(p.parent / "faces" / a) if a.endswith(".jpg") else
                           str(c / a) if a == "cmp" else a for a in command]]
        return argv, f"{p / 'summary.json'} is not a JSON object"
    return case


SUMMARY_COMMANDS = {
    "verify": ("verify", "RUN", "Person_A/Person_A_0001.jpg", "Person_B/Person_B_0001.jpg"),
    "compare": ("compare", "RUN", "--out", "cmp"),
    "analyze": ("analyze", "RUN"),
    "figures": ("figures", "RUN"),
}


def _cifar_command_on_a_face_run(*command):
    def case(c, p):
        return ["cifar", *[str(p) if a == "RUN" else a for a in command]], \
            f"{p} is a run of the face-verification study (made by cnnlab faces train)"
    return case


CIFAR_COMMANDS = {"figures": ("figures", "RUN"), "evaluate": ("evaluate", "RUN"),
                  "train --resume": ("train", "--resume", "RUN")}

def _verify_with(case, prev, make):
    """``faces verify`` given, as its first image, a path that is not a regular file."""
    path = make(case)
    good = case / "good.jpg"
    shutil.copy(next((prev.parent / "faces" / "Person_A").iterdir()), good)
    return ["faces", "verify", str(prev), str(path), str(good)], str(path)


def _fifo(case):
    os.mkfifo(case / "pipe.jpg")  # opening it to read would wait forever for a writer
    return case / "pipe.jpg"


def _folder(case):
    (case / "photo.jpg").mkdir()
    return case / "photo.jpg"


def _with_config(case, text, culprit):
    (case / "c.yaml").write_text(text)
    return _train(case, make_people(case / "f"), "--config", str(case / "c.yaml")), f"c.yaml: {culprit}"


def _search_space(case, text, culprit):
    (case / "space.yaml").write_text(text)
    argv = ["faces", "search", *tiny_options(make_people(case / "f")), "--space", str(case / "space.yaml"),
            "--trials", "1", "--out", str(case / "search")]
    return argv, f"--space {case / 'space.yaml'}: {culprit}"

def _edited_config(case, prev, edit, culprit):
    cfg = yaml.safe_load((prev / "config.yaml").read_text())
    edit(cfg)
    (prev / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ["faces", "train", "--resume", str(prev), "--epochs", "2"], culprit


CASES = [
    ("missing data folder", lambda c, p: (_train(c, c / "nowhere"), "nowhere")),
    ("empty data folder", lambda c, p: ((c / "empty").mkdir(), _train(c, c / "empty"))[1:] + ("empty",)),
    ("person folder without images", lambda c, p: _people(c, _empty_person)),
    ("corrupted jpeg", lambda c, p: _people(c, _bad_jpeg)),
    ("non-image file", lambda c, p: _people(c, _text_file)),
    ("1x1 image", lambda c, p: _people(c, _tiny_image)),
    ("pairs line naming a missing image", lambda c, p: (
        _pairs(c, p, ["2\t1", "Person_A\t1\t9", "Person_A\t1\tPerson_B\t1", *FOLD2]), "line 2")),
    ("pairs line naming a missing person", lambda c, p: (
        _pairs(c, p, ["2\t1", "Person_A\t1\t2", "Ghost\t1\tPerson_B\t1", *FOLD2]), "line 3")),
    ("malformed pairs line", lambda c, p: (
        _pairs(c, p, ["2\t1", "Person_A\tone\t2", "Person_A\t1\tPerson_B\t1", *FOLD2]), "line 2")),
    ("zero margin", lambda c, p: (_train(c, make_people(c / "f"), "--margin", "0"), "--margin")),
    ("negative margin", lambda c, p: (_train(c, make_people(c / "f"), "--margin", "-1"), "--margin")),
    ("negative epochs", lambda c, p: (_train(c, make_people(c / "f"), "--epochs", "-2"), "--epochs")),
    ("zero batch size", lambda c, p: (_train(c, make_people(c / "f"), "--batch-size", "0"), "--batch-size")),
    ("missing device", lambda c, p: (_train(c, make_people(c / "f"), "--device", "cuda:9"), "--device cuda:9")),
    ("unknown backbone", lambda c, p: (_train(c, make_people(c / "f"), "--backbone", "resnet9000"), "--backbone")),
    ("out holds another run", lambda c, p: (
        ["faces", "train", *tiny_options(p.parent / "faces", **{"embedding-dim": 8}), "--out", str(p)],
        "already holds a different run")),
    ("verify with a missing image", lambda c, p: (
        ["faces", "verify", str(p), str(c / "a.jpg"), str(c / "b.jpg")], "a.jpg")),
    *((f"summary.json {d}, {cmd}", _bad_summary(d, *a)) for d in SUMMARY_DAMAGE for cmd, a in SUMMARY_COMMANDS.items()
      if d == "not json" or cmd == "verify"),
    *((f"cifar {cmd} on a face run", _cifar_command_on_a_face_run(*a)) for cmd, a in CIFAR_COMMANDS.items()),
    # Not a regular file: said so, not "does not exist" (issue 9, item 12).
    ("verify with a folder as an image", lambda c, p: (
        _verify_with(c, p, _folder)[0], f"image {c / 'photo.jpg'} is a folder, not a regular file")),
    ("verify with a FIFO as an image", lambda c, p: (
        _verify_with(c, p, _fifo)[0], f"image {c / 'pipe.jpg'} is a FIFO (named pipe), not a regular file")),
    ("verify with /dev/zero as an image", lambda c, p: (
        _verify_with(c, p, lambda c: Path("/dev/zero"))[0], "image /dev/zero is a character device, not a regular file")),
    ("identify with a folder as the probe", lambda c, p: (
        ["faces", "identify", str(p), str(_folder(c)), "--gallery", str(p.parent / "faces")],
        "is a folder, not a regular file")),
    # A failed start leaves no run folder (item 13): the table checks that nothing is left behind.
    ("lfw protocol without its files", lambda c, p: (
        _train(c, make_people(c / "f"), "--protocol", "lfw-view1"), "LFW protocol file peopleDevTrain.txt not found")),
    ("backbone weights file missing", lambda c, p: (
        _train(c, make_people(c / "f"), "--backbone", "efficientnet_lite0", "--weights", str(c / "none.pt")),
        "none.pt")),
    # Values of the wrong type (item 7).
    ("config quoted boolean", lambda c, p: _with_config(c, "augment: 'no'\n", "augment: expected true or false, got 'no'")),
    ("config margin as a word", lambda c, p: _with_config(
        c, "margin: wide\n", "margin: expected a finite number or null, got 'wide'")),
    ("NaN lr", lambda c, p: (_train(c, make_people(c / "f"), "--lr", "nan"), "--lr: expected a finite number, got nan")),
    # A bad search space: one message, no traceback, no search folder (item 9).
    ("search space with string choices for lr", lambda c, p: _search_space(
        c, "lr: {type: categorical, choices: [fast, slow]}\n", "lr: choices: expected a finite number, got 'fast'")),
    ("search space with dict choices", lambda c, p: _search_space(
        c, "gamma: {type: categorical, choices: [{a: 1}]}\n", "gamma: choices: expected a finite number")),
    ("search space with step abc", lambda c, p: _search_space(
        c, "step_size: {type: int, low: 2, high: 8, step: abc}\n", "step_size: step: expected an integer, got 'abc'")),
    ("search space with step 0", lambda c, p: _search_space(
        c, "step_size: {type: int, low: 2, high: 8, step: 0}\n", "step_size: step: expected a positive number, got 0")),
    ("search space drawing a refused margin", lambda c, p: _search_space(
        c, "margin: {type: float, low: -1, high: 1}\n", "margin: the low -1.0 is refused by the training options")),
    ("config.yaml with another margin", lambda c, p: _edited_config(
        c, p, lambda cfg: cfg.update(margin=2.0), "margin: 1.0 in the run, 2.0 in config.yaml")),
    ("config.yaml without a key", lambda c, p: _edited_config(
        c, p, lambda cfg: cfg.pop("test_fraction"), "test_fraction: 0.3 in the run, missing from config.yaml")),
    ("resume changing the seed", lambda c, p: (
        ["faces", "train", "--resume", str(p), "--seed", "7"], "cannot change --seed")),
    ("analyze of an unfinished run", lambda c, p: (
        ((p / "summary.json").unlink(), ["faces", "analyze", str(p)])[1], "is not a finished run")),
]


@pytest.mark.parametrize("name, build", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_one_clear_message(name, build, tmp_path, face_run, capsys):
    check_bad_input(build, face_run / "run", tmp_path, capsys)


def test_skip_bad_images_skips_faces_and_reports_them(tmp_path, caplog):
    faces = make_people(tmp_path / "faces")
    _bad_jpeg(faces), _text_file(faces), _empty_person(faces)
    caplog.set_level("WARNING", logger="cnnlab")
    rc = main(_train(tmp_path, faces, "--skip-bad-images"))
    assert rc == 0
    assert "Person_C_0009.jpg" in caplog.text and "notes.txt" in caplog.text and "Nobody_Here" in caplog.text


def test_pairs_file_in_lfw_format_is_accepted(tmp_path, face_run):
    """The control case for the pairs rows above: a well-formed file evaluates."""
    pairs = write_pairs(tmp_path / "pairs.txt", [
        ([("Person_A", 1, 2), ("Person_B", 1, 3)], [("Person_A", 1, "Person_B", 1), ("Person_C", 2, "Person_D", 1)]),
        ([("Person_C", 1, 2), ("Person_D", 2, 3)], [("Person_E", 1, "Person_F", 1), ("Person_G", 2, "Person_H", 1)]),
    ])
    run = tmp_path / "run"
    shutil.copytree(face_run / "run", run)
    assert main(["faces", "evaluate", str(run), "--pairs", str(pairs)]) == 0


def test_weights_blown_up_in_an_epoch_stop_a_face_run_as_diverged(tmp_path, capsys, monkeypatch):
    """The face side of the engine's check: the untrained epoch 0 stays the last good checkpoint."""
    import torch

    import cnnlab.engine as engine
    from cnnlab.files import load_checkpoint

    real = engine._train_epoch

    def blow_up(s, spec, st, net, batches, epoch):
        sums = real(s, spec, st, net, batches, epoch)
        with torch.no_grad():
            for p in st.model.parameters():
                p.fill_(float("nan"))
        return sums

    monkeypatch.setattr(engine, "_train_epoch", blow_up)
    out = tmp_path / "new"
    rc = main(_train(tmp_path, make_people(tmp_path / "faces")))
    err = capsys.readouterr().err
    assert rc == 2 and "training diverged at epoch 1" in err and "last good checkpoint (epoch 0)" in err, err
    assert "Traceback" not in err and not (out / "summary.json").exists()
    last = load_checkpoint(out / "checkpoints" / "last.pt")
    assert last["epoch"] == 0 and all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())


def test_a_download_that_cannot_reach_its_server_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    import functools

    import cnnlab.data.lfw as lfw

    monkeypatch.setattr(lfw, "download_lfw", functools.partial(lfw.download_lfw, base_url="file:///nowhere/lfw/"))
    out = tmp_path / "runs" / "new"
    argv = ["faces", "train", *tiny_options(tmp_path / "lfw"), "--download", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot" in err and "lfw-deepfunneled.tgz" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()  # nor the folder above the run, which the start created
    assert main(argv) == 2  # the same command fails the same way, not with "already holds this run"
    assert "already holds" not in capsys.readouterr().err
@pytest.mark.parametrize("command", [["faces", "train", "--resume"], ["faces", "analyze"], ["faces", "figures"],
                                     ["faces", "evaluate"]])
def test_a_run_in_use_by_another_process_is_refused_naming_it(command, tmp_path, face_run, capsys):
    pairs = write_pairs(tmp_path / "pairs.txt", [([("Person_A", 1, 2)], [("Person_A", 1, "Person_B", 1)])] * 2)
    extra = ["--pairs", str(pairs)] if command[1] == "evaluate" else []
    with contextlib.ExitStack() as held:
        def build(case, prev):
            holder = held.enter_context(lock_held_elsewhere(prev))
            return [*command, str(prev), *extra], f"in use by another cnnlab process (PID {holder.pid}, started "

        check_bad_input(build, face_run / "run", tmp_path, capsys)
