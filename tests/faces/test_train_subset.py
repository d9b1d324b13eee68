"""``--max-train-images``: a run on a seeded subset of whole training people, chosen before anything is decoded, so
only the images the run uses are decoded; and the cheap checks (protocol files, their people and images) first."""

from __future__ import annotations

import pytest
import torch
import yaml

from cnnlab.commands.main import main
from cnnlab.config import FaceTrainConfig
from cnnlab.data import images
from cnnlab.errors import ConfigError, DataError
from cnnlab.faces.protocol import load_study_data
from cnnlab.faces.train import train

from .conftest import PEOPLE, make_people, tiny_config, tiny_options, write_pairs

ALL_IMAGES = sum(n for _, n in PEOPLE)


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The files the decoder opens (a spy on the one decoder every face set goes through)."""
    opened: list[str] = []
    real = images.decode_rgb

    def spy(path, *args, **kwargs):
        opened.append(f"{path.parent.name}/{path.name}")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images, "decode_rgb", spy)
    return opened


def _files(d, idx) -> list[str]:
    return [d.faces.files[i] for i in idx.tolist()]


def _pair_files(d, pairs) -> list[tuple[str, str, float]]:
    return list(zip(_files(d, pairs.i), _files(d, pairs.j), pairs.same.tolist()))


def _view1(folder, train_people, test_people=None, pairs=True):
    """View 1's protocol files in ``folder``: DevTrain people, DevTest pairs among H, I and J (and their people)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "peopleDevTrain.txt").write_text(f"{len(train_people)}\n" + "".join(f"{p}\t1\n" for p in train_people))
    if test_people:
        (folder / "peopleDevTest.txt").write_text(f"{len(test_people)}\n" + "".join(f"{p}\t4\n" for p in test_people))
    if pairs:
        write_pairs(folder / "pairsDevTest.txt",
                    [([("Person_H", 1, 2), ("Person_I", 3, 4)],
                      [("Person_H", 1, "Person_J", 2), ("Person_I", 1, "Person_J", 3)])], view1=True)
    return folder


TRAIN_PEOPLE = [f"Person_{c}" for c in "ABCDEFG"] + ["Solo_X", "Solo_Y", "Solo_Z"]


def test_subset_is_whole_people_seeded_and_leaves_validation_and_test_as_they_were(face_dir):
    full = load_study_data(tiny_config(face_dir))
    d = load_study_data(tiny_config(face_dir, max_train_images=7))
    assert len(d.train) == 7 and d.subset == {
        "max_train_images": 7, "seed": 0, "images": 7, "people": d.sizes()["num_train_people"],
        "of_images": len(full.train), "of_people": full.sizes()["num_train_people"]}
    chosen = _files(d, d.train)
    assert set(chosen) < set(_files(full, full.train))
    per_person = {}
    for f in chosen:
        per_person[f.split("/")[0]] = per_person.get(f.split("/")[0], 0) + 1
    assert sum(1 for p, n in per_person.items() if n < dict(PEOPLE)[p]) <= 1  # whole people but the last
    # Scored as the full run is: the same validation and test images and pairs.
    assert _files(d, d.val) == _files(full, full.val) and _files(d, d.test_images) == _files(full, full.test_images)
    assert _pair_files(d, d.val_pairs) == _pair_files(full, full.val_pairs)
    assert _pair_files(d, d.test_pairs) == _pair_files(full, full.test_pairs)
    # The same seed draws the same subset; others draw others.
    assert _files(load_study_data(tiny_config(face_dir, max_train_images=7)), d.train) == chosen
    others = {tuple(_files(o, o.train)) for o in
              (load_study_data(tiny_config(face_dir, max_train_images=7, seed=s)) for s in (1, 2, 3))}
    assert len(others | {tuple(chosen)}) > 1
    assert full.subset is None and full.sizes()["train_subset"] is None


def test_only_the_images_the_run_uses_are_decoded(face_dir, decoded):
    d = load_study_data(tiny_config(face_dir, max_train_images=6))
    used = set(_files(d, torch.cat([d.train, d.val, d.test_images])))
    assert sorted(decoded) == sorted(used) and len(decoded) < ALL_IMAGES
    assert d.faces.files == sorted(used) and len(d.faces) == len(used)


def test_view1_subset_keeps_the_test_pairs_whole_and_decodes_nothing_else_of_the_test_people(
        face_dir, tmp_path, decoded):
    proto = _view1(tmp_path / "proto", TRAIN_PEOPLE, ["Person_H", "Person_I", "Person_J"])
    cfg = dict(protocol="lfw-view1", protocol_dir=str(proto), val_fraction=0.3)
    full = load_study_data(tiny_config(face_dir, **cfg))
    decoded.clear()
    d = load_study_data(tiny_config(face_dir, max_train_images=5, **cfg))
    assert len(d.train) == 5 and len(d.test_pairs) == 4 and d.test_pairs.same.tolist() == [1, 1, 0, 0]
    assert _pair_files(d, d.test_pairs) == _pair_files(full, full.test_pairs)
    assert _files(d, d.val) == _files(full, full.val)
    pair_images = {"Person_H/Person_H_0001.jpg", "Person_H/Person_H_0002.jpg", "Person_I/Person_I_0003.jpg",
                   "Person_I/Person_I_0004.jpg", "Person_J/Person_J_0002.jpg", "Person_J/Person_J_0003.jpg",
                   "Person_I/Person_I_0001.jpg"}
    assert set(_files(d, d.test_images)) == pair_images  # retrieval over the pairs' images alone
    assert sorted(decoded) == sorted(set(_files(d, d.train)) | set(_files(d, d.val)) | pair_images)
    assert "Person_H/Person_H_0003.jpg" not in decoded and "Person_J/Person_J_0001.jpg" not in decoded


def test_a_run_on_a_subset_says_so_in_its_config_and_summary(face_dir, tmp_path, caplog):
    caplog.set_level("INFO", logger="cnnlab")
    out = tmp_path / "run"
    s = train(tiny_config(face_dir, max_train_images=8), out, progress=False)
    assert s["num_train_images"] == 8 and s["train_subset"]["max_train_images"] == 8
    assert s["train_subset"]["images"] == 8 and s["train_subset"]["of_images"] > 8
    assert yaml.safe_load((out / "config.yaml").read_text())["max_train_images"] == 8
    assert "training on 8 images of" in caplog.text and "(8 images, a subset)" in caplog.text


def test_a_subset_too_small_to_hold_a_pair_is_refused_before_decoding(face_dir, decoded):
    # Two images hold no same-person pair when the first person drawn has a single image (as seed 4 does).
    with pytest.raises(DataError, match="the 2 training image.s. chosen .2 person.s.. hold no person with two or "
                                        "more images") as e:
        load_study_data(tiny_config(face_dir, max_train_images=2, seed=4))
    assert str(face_dir) in str(e.value) and decoded == []
    with pytest.raises(ConfigError, match="^max_train_images: expected an integer of at least 2"):
        FaceTrainConfig(max_train_images=1)


@pytest.mark.parametrize("missing, what", [("peopleDevTrain.txt", "View 1's training people"),
                                           ("pairsDevTest.txt", "View 1's test pairs")])
def test_a_missing_protocol_file_is_refused_before_any_image_is_listed_or_decoded(
        face_dir, tmp_path, decoded, monkeypatch, missing, what):
    import cnnlab.faces.protocol as protocol

    proto = _view1(tmp_path / "proto", TRAIN_PEOPLE)
    (proto / missing).unlink()
    monkeypatch.setattr(protocol, "list_faces", lambda *a, **k: pytest.fail("the folder was listed"))
    with pytest.raises(DataError) as e:
        load_study_data(tiny_config(face_dir, protocol="lfw-view1", protocol_dir=str(proto)))
    msg = str(e.value)
    assert f"LFW protocol file {missing} not found ({what}); looked in {proto}, {face_dir}, {face_dir.parent}" == msg
    assert decoded == []


def test_a_malformed_pairs_file_or_a_pair_without_its_image_is_refused_before_decoding(face_dir, tmp_path, decoded):
    proto = _view1(tmp_path / "proto", TRAIN_PEOPLE)
    (proto / "pairsDevTest.txt").write_text("1\nPerson_H\t1\t2\nPerson_H\tone\tPerson_J\t2\n")
    cfg = tiny_config(face_dir, protocol="lfw-view1", protocol_dir=str(proto))
    with pytest.raises(DataError, match=r"pairsDevTest.txt, line 3: an image number"):
        load_study_data(cfg)
    (proto / "pairsDevTest.txt").write_text("1\nPerson_H\t1\t9\nPerson_H\t1\tPerson_J\t2\n")
    with pytest.raises(DataError, match=r"pairsDevTest.txt, line 2: Person_H has no image number 9"):
        load_study_data(cfg)
    (proto / "peopleDevTrain.txt").write_text("1\nNo_Such_Person\t3\n")
    with pytest.raises(DataError, match=r"peopleDevTrain.txt names people without a folder .*: No_Such_Person"):
        load_study_data(cfg)
    assert decoded == []


def test_the_command_line_refuses_a_missing_protocol_file_and_a_bad_subset_size(face_dir, tmp_path, capsys,
                                                                                 decoded):
    out = tmp_path / "run"
    for extra, culprit in (
        (["--protocol", "lfw-view1", "--protocol-dir", str(tmp_path / "none")], "pairsDevTest.txt"),
        (["--max-train-images", "0"], "--max-train-images"),
    ):
        if culprit == "pairsDevTest.txt":
            _view1(tmp_path / "none", TRAIN_PEOPLE, pairs=False)
        rc = main(["faces", "train", *tiny_options(face_dir), *extra, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and culprit in err and "Traceback" not in err, err
        assert not out.exists() and decoded == []


def test_view2_evaluation_refuses_a_missing_pairs_file_before_decoding(run_copy, tmp_path, decoded):
    from cnnlab.faces.evaluate import evaluate_pairs

    with pytest.raises(DataError, match="nope/pairs.txt"):
        evaluate_pairs(run_copy, tmp_path / "nope" / "pairs.txt", device="cpu", progress=False)
    assert decoded == []


def test_a_small_sample_of_a_folder_of_many_people_trains(tmp_path):
    # Many people with few images, as LFW: a subset of whole people still forms pairs to learn from.
    faces = make_people(tmp_path / "faces", [(f"P{i:02d}", 1 + i % 4) for i in range(40)])
    d = load_study_data(tiny_config(faces, max_train_images=12))
    assert len(d.train) == 12 and d.sizes()["num_train_people"] < 12
