"""benchmarks/train_throughput.py at a toy size: its rows, its auto column, its list syntax."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cnnlab.runtime import cpu_features, select_precision
from tests.conftest import load_benchmark



@pytest.fixture(scope="module")
def throughput():
    return load_benchmark("train_throughput")


def test_rows_are_blocks_by_widths_and_auto_is_the_policys_choice(throughput, tmp_path, capsys):
    out = throughput.main(["--blocks", "A", "E", "--width", "0.125,0.25", "--batch-size", "4", "--steps", "1",
                           "--warmup", "0", "--repeats", "1", "--clock", "cpu", "--json", str(tmp_path / "t.json")])
    assert [(r["blocks"], r["width"]) for r in out["rows"]] == [("A", 0.125), ("A", 0.25), ("E", 0.125), ("E", 0.25)]
    choice = select_precision(torch.device("cpu"), "auto", None)
    picked = throughput.COLUMNS[out["auto"]["column"]]
    assert picked == (choice.precision, choice.channels_last) and out["auto"]["reason"] == choice.reason
    for r in out["rows"]:
        assert r["auto img/s"] == r[out["auto"]["column"] + " img/s"] > 0
        assert r["notebook fp32 img/s"] > 0 and r["auto/notebook"] > 0
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["blocks"] == "A"
    printed = capsys.readouterr().out
    name, features = cpu_features()
    extensions = ", ".join(features) or "none of AVX2/AVX512/AVX512-BF16/AMX"
    assert printed.startswith(f"CPU: {name}; vector extensions: {extensions}\n")  # the machine before its numbers
    assert "torch " in printed and "thread" in printed


def test_comma_and_space_lists_mean_the_same(throughput):
    assert throughput._list(["A,E"], str, "--blocks") == throughput._list(["A", "E"], str, "--blocks") == ["A", "E"]
    assert throughput._list(["1, 0.25"], float, "--width") == [1.0, 0.25]
    with pytest.raises(SystemExit, match="--width"):
        throughput._list(["one"], float, "--width")


# benchmarks/pack_data.py: the data that travels to a GPU machine.

_PEOPLE = [(f"Person_{c}", 3) for c in "ABCDEFGH"] + [("Solo_X", 1)]


@pytest.fixture(scope="module")
def pack():
    return load_benchmark("pack_data")


def _lfw(root: Path, protocol: bool = True) -> Path:
    """LFW's layout: root/images_deepfunneled/<Name>/, the View 1 and View 2 protocol files beside it."""
    from tests.faces.conftest import make_people, write_pairs

    make_people(root / "images_deepfunneled", _PEOPLE)
    if protocol:
        (root / "peopleDevTrain.txt").write_text("".join(["5\n"] + [f"Person_{c}\t3\n" for c in "ABCGH"]))
        (root / "peopleDevTest.txt").write_text("4\nPerson_D\t3\nPerson_E\t3\nPerson_F\t3\nSolo_X\t1\n")
        write_pairs(root / "pairsDevTest.txt", [([("Person_D", 1, 2), ("Person_E", 1, 3)],
                                                 [("Person_D", 1, "Solo_X", 1), ("Person_E", 2, "Person_F", 1)])],
                    view1=True)
        write_pairs(root / "pairs.txt", [([("Person_A", 1, 2)], [("Person_A", 1, "Person_D", 1)]),
                                         ([("Person_F", 2, 3)], [("Person_B", 1, "Solo_X", 1)])])
    return root


def _unpack(archive: Path, dest: Path) -> Path:
    import tarfile

    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def test_pack_writes_both_archives_in_the_layouts_cnnlab_reads(pack, tmp_path, capsys):
    from PIL import Image

    from cnnlab.config import FaceTrainConfig
    from cnnlab.data.images import center_crop_resize, decode_rgb
    from cnnlab.faces.protocol import load_study_data
    from tests.conftest import write_cifar_folders

    cifar = write_cifar_folders(tmp_path / "cifar", n_train=2, n_test=1)
    lfw = _lfw(tmp_path / "lfw")
    out = tmp_path / "packed"
    assert pack.main(["--cifar-dir", str(cifar), "--lfw-dir", str(lfw), "--out", str(out), "--size", "24"]) == 0
    printed = capsys.readouterr().out
    assert f"{out / 'cifar10.tar.xz'}: 30 images" in printed and "MiB" in printed and "--crop 1.0" in printed
    assert sorted(p.name for p in out.iterdir()) == ["cifar10.tar.xz", "lfw-view1.tar.xz"]  # no .part left

    got = _unpack(out / "cifar10.tar.xz", tmp_path / "u")
    original = sorted(p.relative_to(cifar) for p in cifar.rglob("*") if p.is_file())
    assert sorted(p.relative_to(got / "cifar10") for p in (got / "cifar10").rglob("*") if p.is_file()) == original
    assert all((got / "cifar10" / p).read_bytes() == (cifar / p).read_bytes() for p in original)

    _unpack(out / "lfw-view1.tar.xz", tmp_path / "u")
    faces = tmp_path / "u" / "lfw"
    for name in pack.PROTOCOL_FILES:
        assert (faces / name).read_bytes() == (lfw / name).read_bytes()
    packed = faces / "images_deepfunneled" / "Person_D" / "Person_D_0002.jpg"
    with Image.open(packed) as img:
        assert img.size == (24, 24)
        got_pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32))
    source = lfw / "images_deepfunneled" / "Person_D" / "Person_D_0002.jpg"
    want = torch.from_numpy(np.asarray(center_crop_resize(decode_rgb(source), 24, 0.6), dtype=np.float32))
    assert (got_pixels - want).abs().mean() < 6  # the same crop, up to JPEG
    assert len(list((faces / "images_deepfunneled").rglob("*.jpg"))) == 25

    cfg = FaceTrainConfig(data_dir=str(faces), protocol="lfw-view1", crop=1.0, image_size=24, backbone="tiny",
                          weights="none", val_fraction=0.4, device="cpu")
    data = load_study_data(cfg)
    assert data.protocol == "lfw-view1" and len(data.test_pairs.same) == 4


def test_pack_refuses_over_the_limit_and_keeps_nothing(pack, tmp_path, capsys):
    from tests.conftest import write_cifar_folders

    cifar = write_cifar_folders(tmp_path / "cifar", n_train=2, n_test=1)
    out = tmp_path / "packed"
    rc = pack.main(["--cifar-dir", str(cifar), "--lfw-dir", str(_lfw(tmp_path / "lfw")), "--out", str(out),
                    "--size", "24", "--limit-mib", "0.001"])
    err = capsys.readouterr().err
    assert rc == 2 and "over the --limit-mib 0.001 MiB" in err and "nothing was kept" in err
    assert list(out.iterdir()) == []


def test_pack_names_a_missing_protocol_file_and_invents_view1_only_when_asked(pack, tmp_path, capsys):
    from cnnlab.data.lfw import read_pairs, read_people
    from tests.conftest import write_cifar_folders
    from tests.faces.conftest import write_pairs

    cifar = write_cifar_folders(tmp_path / "cifar", n_train=2, n_test=1)
    lfw = _lfw(tmp_path / "lfw", protocol=False)
    args = ["--cifar-dir", str(cifar), "--lfw-dir", str(lfw), "--out", str(tmp_path / "packed"), "--size", "24"]
    assert pack.main(args) == 2
    err = capsys.readouterr().err
    assert "pairsDevTest.txt" in err and "pairs.txt" in err and "--invent-view1" in err
    assert list((tmp_path / "packed").iterdir()) == []

    write_pairs(lfw / "pairs.txt", [([("Person_A", 1, 2)], [("Person_A", 1, "Person_D", 1)]),
                                    ([("Person_F", 2, 3)], [("Person_B", 1, "Solo_X", 1)])])
    assert pack.main(args + ["--invent-view1"]) == 0
    faces = _unpack(tmp_path / "packed" / "lfw-view1.tar.xz", tmp_path / "u") / "lfw"
    train, test = read_people(faces / "peopleDevTrain.txt"), read_people(faces / "peopleDevTest.txt")
    assert set(train.names).isdisjoint(test.names) and set(train.names) | set(test.names) == {n for n, _ in _PEOPLE}
    pairs = read_pairs(faces / "pairsDevTest.txt")
    assert {n for n, _ in pairs.left + pairs.right} <= set(test.names) and int(pairs.same.sum()) == len(pairs.same) // 2
    assert not (lfw / "pairsDevTest.txt").exists()  # invented into the archive only


def test_pack_leaves_earlier_archives_alone_without_force(pack, tmp_path):
    out = tmp_path / "packed"
    out.mkdir()
    (out / "cifar10.tar.xz").write_bytes(b"earlier")
    with pytest.raises(SystemExit, match="--force"):
        pack.main(["--cifar-dir", str(tmp_path), "--lfw-dir", str(tmp_path), "--out", str(out)])
    assert (out / "cifar10.tar.xz").read_bytes() == b"earlier"
    with pytest.raises(SystemExit, match="--crop must be in"):
        pack.main(["--cifar-dir", str(tmp_path), "--lfw-dir", str(tmp_path), "--out", str(tmp_path / "o"),
                   "--crop", "1.5"])


# benchmarks/gpu_check.sh: one command, parts that fail one by one.

_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def _check(*args, scratch=None):
    import os
    import subprocess

    env = {**os.environ, "PYTHON": "false"}  # a Python that always fails: every part that needs one fails fast
    if scratch is not None:
        env["SCRATCH"] = str(scratch)
    return subprocess.run(["bash", str(_CHECK), *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=120, check=False)


def test_gpu_check_goes_on_after_a_failed_part_and_records_each(tmp_path):
    # Archives that are not xz and no working Python: every part fails, fast, and each is recorded.
    for name in ("c.tar.xz", "l.tar.xz"):
        (tmp_path / name).write_bytes(b"not xz")
    out = tmp_path / "out"
    r = _check("--dry-run", tmp_path / "c.tar.xz", tmp_path / "l.tar.xz", out, scratch=tmp_path / "scratch")
    assert r.returncode == 0, r.stderr
    status = [line.split() for line in (out / "status.txt").read_text().splitlines()]
    assert [s[0] for s in status] == ["info", "unpack", "tests", "cifar", "faces", "view2", "tables"]
    assert all(s[1] != "0" for s in status[1:])  # each failed, and the script still ran the next
    assert all((out / f"{s[0]}.log").is_file() for s in status)


def test_gpu_check_refuses_missing_archives_and_a_used_output_folder(tmp_path):
    r = _check(tmp_path / "none.tar.xz", tmp_path / "none.tar.xz", tmp_path / "out")
    assert r.returncode == 2 and "none.tar.xz is not a file" in r.stderr and not (tmp_path / "out").exists()
    (tmp_path / "c.tar.xz").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "status.txt").write_text("earlier\n")
    r = _check(tmp_path / "c.tar.xz", tmp_path / "c.tar.xz", tmp_path / "out")
    assert r.returncode == 2 and "already holds a check" in r.stderr
    assert (tmp_path / "out" / "status.txt").read_text() == "earlier\n"
    r = _check(tmp_path / "c.tar.xz")
    assert r.returncode == 2 and "usage: gpu_check.sh" in r.stderr


# benchmarks/faces_photos.py: LFW pairs as photo-like images.



@pytest.fixture(scope="module")
def photos():
    return load_benchmark("faces_photos")


def test_photos_are_larger_cluttered_canvases_stored_upright_or_with_exif(photos, tmp_path):
    from PIL import Image

    from cnnlab.data.images import decode_rgb

    root = tmp_path / "people"
    (root / "Ann_Lee").mkdir(parents=True)
    face = np.zeros((250, 250, 3), dtype=np.uint8)
    face[60:190, 80:170] = (250, 220, 190)
    for k in range(1, 9):
        Image.fromarray(face).save(root / "Ann_Lee" / f"Ann_Lee_{k:04d}.jpg")
    files = [f"Ann_Lee/Ann_Lee_{k:04d}.jpg" for k in range(1, 9)]
    assert photos.make_photos(root, files, tmp_path / "out") == 8
    assert photos.make_photos(root, files, tmp_path / "out") == 0  # made once, kept
    tags = []
    for rel in files:
        path = tmp_path / "out" / rel
        with Image.open(path) as im:
            tags.append(im.getexif().get(photos.EXIF_ORIENTATION, 1))
            stored = im.size
        upright = decode_rgb(path)
        assert min(upright.size) >= 250 * 0.45 and max(upright.size) >= 480
        if tags[-1] in (6, 8):
            assert stored == upright.size[::-1]  # stored turned; decoding turns it back
    assert set(tags) <= {1, 3, 6, 8} and any(t in (6, 8) for t in tags)
    # The same image gives the same photo, whatever else is made beside it.
    a = np.asarray(decode_rgb(tmp_path / "out" / files[0]))
    photos.make_photos(root, files[:1], tmp_path / "again")
    assert np.array_equal(a, np.asarray(decode_rgb(tmp_path / "again" / files[0])))
