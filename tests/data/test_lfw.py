from pathlib import Path

import pytest
import torch
from PIL import Image

from cnnlab.data.faces import load_faces
from cnnlab.data.lfw import find_protocol_file, read_pairs, read_people, resolve_pairs, select_people
from cnnlab.errors import DataError


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def lfw_dir(tmp_path) -> Path:
    """An LFW-shaped folder: lfw/images_deepfunneled/<Name>/<Name>_NNNN.jpg beside the protocol files."""
    people = tmp_path / "lfw" / "images_deepfunneled"
    for p, (name, n) in enumerate([("Ann_Lee", 3), ("Bo_Diddley", 2), ("Cy_Young", 1), ("Di_Mu", 2)]):
        (people / name).mkdir(parents=True)
        for i in range(1, n + 1):
            Image.new("RGB", (24, 24), (60 * p, 30 * i, 100)).save(people / name / f"{name}_{i:04d}.jpg")
    return tmp_path / "lfw"


VIEW2 = [
    "2\t2",
    "Ann_Lee\t1\t2", "Bo_Diddley\t1\t2",
    "Ann_Lee\t3\tCy_Young\t1", "Di_Mu\t1\tBo_Diddley\t2",
    "Di_Mu\t1\t2", "Ann_Lee\t2\t3",
    "Cy_Young\t1\tDi_Mu\t2", "Bo_Diddley\t1\tAnn_Lee\t1",
]


def test_view2_pairs_parse_into_folds(tmp_path):
    pairs = read_pairs(_write(tmp_path / "pairs.txt", VIEW2))
    assert len(pairs) == 8 and pairs.num_folds == 2
    assert pairs.same.tolist() == [True, True, False, False] * 2
    assert pairs.fold.tolist() == [0] * 4 + [1] * 4
    assert pairs.left[0] == ("Ann_Lee", 1) and pairs.right[0] == ("Ann_Lee", 2)
    assert pairs.left[2] == ("Ann_Lee", 3) and pairs.right[2] == ("Cy_Young", 1)
    assert pairs.lines.tolist() == list(range(2, 10))


def test_view1_pairs_have_one_fold(tmp_path):
    pairs = read_pairs(_write(tmp_path / "pairsDevTest.txt", ["1", "Ann_Lee\t1\t3", "Ann_Lee\t2\tDi_Mu\t1", ""]))
    assert len(pairs) == 2 and pairs.fold.tolist() == [0, 0] and pairs.same.tolist() == [True, False]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["2\t1", "Ann_Lee\t1\t2", "Ann_Lee\t1\tBo_Diddley\t1", "Ann_Lee\t1\tx", "Ann_Lee\t1\tDi_Mu\t1"],
         r"line 4: an image number .* 'x'"),
        (["1\t2", "Ann_Lee\t1\t2", "Ann_Lee\t1\tBo_Diddley\t1", "Bo_Diddley\t1\t2", "Di_Mu\t1\tAnn_Lee\t1"],
         r"line 3: expected a same-person pair .*pair 2 of fold 1"),
        (["1\t1", "Ann_Lee\t1\t2", "Ann_Lee\t1\t2"], r"line 3: expected a different-person pair"),
        (["1\t1", "Ann_Lee\t0\t2", "Ann_Lee\t1\tBo_Diddley\t1"], r"line 2: an image number must be .* at least 1"),
        (["1\t2", "Ann_Lee\t1\t2"], r"announces 1 fold\(s\) of 2 .* ends after 1 at line 2"),
        (["1", "Ann_Lee\t1\t2", "Ann_Lee\t1\tBo_Diddley\t1", "Bo_Diddley\t1\t2"], r"line 4: more lines"),
        (["a b c"], r"line 1: expected a header"),
        (["ten"], r"line 1: the number of pairs must be an integer"),
    ],
)
def test_malformed_pairs_files_name_the_line(tmp_path, lines, message):
    path = _write(tmp_path / "pairs.txt", lines)
    with pytest.raises(DataError, match=message) as e:
        read_pairs(path)
    assert str(path) in str(e.value)


def test_pairs_resolve_to_face_indices(lfw_dir, tmp_path):
    fs = load_faces(lfw_dir, image_size=8, cache_dir=tmp_path / "c")
    pairs = read_pairs(_write(lfw_dir / "pairs.txt", VIEW2))
    left, right = resolve_pairs(pairs, fs)
    assert left.dtype == torch.int64 and len(left) == len(right) == 8
    for (name, n), i in zip(pairs.left + pairs.right, torch.cat([left, right]).tolist()):
        assert fs.files[i] == f"{name}/{name}_{n:04d}.jpg"
    assert torch.equal(fs.labels[left] == fs.labels[right], pairs.same)


def test_missing_image_or_person_names_the_line(lfw_dir, tmp_path):
    fs = load_faces(lfw_dir, image_size=8, cache_dir=tmp_path / "c")
    pairs = read_pairs(_write(tmp_path / "p.txt", ["1", "Bo_Diddley\t1\t3", "Ann_Lee\t1\tBo_Diddley\t1"]))
    with pytest.raises(DataError, match=r"p.txt, line 2: Bo_Diddley has no image number 3 .*Bo_Diddley_0003"):
        resolve_pairs(pairs, fs)
    pairs = read_pairs(_write(tmp_path / "p.txt", ["1", "Bo_Diddley\t1\t2", "Ann_Lee\t1\tZed_Zed\t1"]))
    with pytest.raises(DataError, match=r"p.txt, line 3: no person folder 'Zed_Zed'"):
        resolve_pairs(pairs, fs)


def test_view1_people_and_selection(lfw_dir, tmp_path):
    fs = load_faces(lfw_dir, image_size=8, cache_dir=tmp_path / "c")
    path = _write(lfw_dir / "peopleDevTrain.txt", ["2", "Ann_Lee\t3", "Di_Mu\t2"])
    people = read_people(path)
    assert people.names == ["Ann_Lee", "Di_Mu"] and people.counts.tolist() == [3, 2]
    assert people.fold.tolist() == [0, 0]
    idx = select_people(fs, people.names, path)
    assert sorted({fs.files[i].split("/")[0] for i in idx.tolist()}) == ["Ann_Lee", "Di_Mu"] and len(idx) == 5
    with pytest.raises(DataError, match=r"peopleDevTrain.txt names people without a folder .*: Nope"):
        select_people(fs, ["Ann_Lee", "Nope"], path)


def test_view2_people_file_has_folds(tmp_path):
    people = read_people(_write(tmp_path / "people.txt", ["2", "1", "Ann_Lee\t3", "2", "Bo_Diddley\t2", "Di_Mu\t2"]))
    assert people.names == ["Ann_Lee", "Bo_Diddley", "Di_Mu"] and people.fold.tolist() == [0, 1, 1]


@pytest.mark.parametrize(
    "lines, message",
    [
        (["2", "Ann_Lee\t3"], r"ends at line 2"),
        (["1", "Ann_Lee\t3", "Bo_Diddley\t2"], r"line 3: more lines"),
        (["1", "Ann_Lee\tthree"], r"line 2: the number of images must be an integer"),
        (["1", "Ann Lee\t3"], r"line 2: expected 'name<TAB>number_of_images'"),
    ],
)
def test_malformed_people_files_name_the_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        read_people(_write(tmp_path / "peopleDevTest.txt", lines))


def test_find_protocol_file_search_order(tmp_path):
    data = tmp_path / "lfw" / "images_deepfunneled"
    data.mkdir(parents=True)
    proto = tmp_path / "proto"
    proto.mkdir()
    with pytest.raises(DataError, match=r"pairs.txt not found; looked in .*proto, .*images_deepfunneled, .*lfw$"):
        find_protocol_file("pairs.txt", data, proto)
    _write(tmp_path / "lfw" / "pairs.txt", ["1"])
    assert find_protocol_file("pairs.txt", data) == tmp_path / "lfw" / "pairs.txt"
    _write(data / "pairs.txt", ["1"])
    assert find_protocol_file("pairs.txt", data) == data / "pairs.txt"
    _write(proto / "pairs.txt", ["1"])
    assert find_protocol_file("pairs.txt", data, proto) == proto / "pairs.txt"


def test_official_view2_pairs(shared_datasets):
    path = shared_datasets / "lfw-official-pairs.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    pairs = read_pairs(path)
    assert len(pairs) == 6000 and pairs.num_folds == 10
    assert torch.bincount(pairs.fold).tolist() == [600] * 10
    for f in range(10):
        assert pairs.same[pairs.fold == f].tolist() == [True] * 300 + [False] * 300
    assert pairs.left[0] == ("Abel_Pacheco", 1) and pairs.right[0] == ("Abel_Pacheco", 4)
    assert all(a[0] != b[0] for a, b, s in zip(pairs.left, pairs.right, pairs.same.tolist()) if not s)


def test_sample_pairs_resolve_against_the_sample(shared_datasets, tmp_path):
    sample = shared_datasets / "lfw-sample"
    if not (sample / "pairs.txt").is_file():
        pytest.skip(f"{sample} not found")
    fs = load_faces(sample, image_size=16, cache_dir=tmp_path / "c")
    assert fs.root == sample / "people" and len(fs) == 344 and fs.num_people == 80
    pairs = read_pairs(find_protocol_file("pairs.txt", fs.root))
    assert len(pairs) == 200 and pairs.num_folds == 2
    left, right = resolve_pairs(pairs, fs)
    assert torch.equal(fs.labels[left] == fs.labels[right], pairs.same)
    assert bool((left[pairs.same] != right[pairs.same]).all())
