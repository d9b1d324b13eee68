"""The bad-input corpus, face side: one clear message naming the culprit, a non-zero
exit status, no traceback, and the files of an earlier run unchanged."""

from __future__ import annotations

import contextlib
import shutil

import pytest
import yaml
from PIL import Image

from cnnlab.cli import main
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
