import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from cnnlab.data import faces
from cnnlab.data.faces import find_people_root, load_faces, split_people
from cnnlab.errors import ConfigError, DataError
from tests.faces import conftest as faces_conftest

SIDE = 40
# (name, number of images); the last three people have one image each.
PEOPLE = [(f"Person_{c}", n) for c, n in zip("ABCDEFGH", [3, 4, 5, 3, 4, 5, 3, 4])] + [
    ("Solo_X", 1), ("Solo_Y", 1), ("Solo_Z", 1)
]


def _colour(person: int, image: int) -> tuple[int, int, int]:
    return ((37 * person + 11 * image) % 256, (91 * person) % 256, (53 * image + 17 * person) % 256)


def _draw(path: Path, person: int, image: int) -> None:
    """A square image: a border colour outside the central half, a shape per person inside."""
    img = Image.new("RGB", (SIDE, SIDE), (250, 250, 250))
    d = ImageDraw.Draw(img)
    q = SIDE // 4
    d.rectangle([q, q, SIDE - q - 1, SIDE - q - 1], fill=_colour(person, image))
    if person % 3 == 1:  # some grayscale PNGs
        img.convert("L").save(path.with_suffix(".png"))
    elif person % 3 == 2:  # some PGMs
        img.convert("L").save(path.with_suffix(".pgm"))
    else:
        img.save(path.with_suffix(".jpg"), quality=95)


def make_people(root: Path, people=PEOPLE) -> Path:
    return faces_conftest.make_people(root, people, _draw)


@pytest.fixture
def people_dir(tmp_path) -> Path:
    return make_people(tmp_path / "people")


# --------------------------------------------------------------------------- scanning and decoding


def test_load_faces_labels_names_files_and_pixels(people_dir, tmp_path):
    fs = load_faces(people_dir, image_size=16, crop=0.5, cache_dir=tmp_path / "cache")
    total = sum(n for _, n in PEOPLE)
    assert fs.images.shape == (total, 3, 16, 16) and fs.images.dtype == torch.uint8
    assert fs.labels.dtype == torch.int64 and fs.labels.shape == (total,)
    assert fs.names == sorted(name for name, _ in PEOPLE)
    assert fs.root == people_dir and len(fs) == total and fs.num_people == len(PEOPLE)
    assert fs.counts().tolist() == [dict(PEOPLE)[n] for n in fs.names]
    for label, rel in zip(fs.labels.tolist(), fs.files):
        assert rel.split("/")[0] == fs.names[label]
        assert (people_dir / rel).is_file()
    # The central half holds only the shape's colour: a crop of 0.5 drops the light border.
    assert int(fs.images.float().mean(dim=(2, 3)).max()) < 250
    gray = fs.files.index("Person_B/Person_B_0002.png")
    assert torch.equal(fs.images[gray, 0], fs.images[gray, 1]) and torch.equal(fs.images[gray, 1], fs.images[gray, 2])
    # The whole image keeps the border.
    full = load_faces(people_dir, image_size=16, crop=1.0, cache_dir=tmp_path / "cache")
    assert int(full.images[0, :, 0, 0].min()) > 240


def test_decoding_writes_no_progress_bar_into_redirected_output(people_dir, tmp_path, capfd):
    """Off a terminal (a log file, a pipe) the bar is not drawn: no \\r-joined lines, no bar; what the decoding
    says there comes as whole log lines (when logging is set up)."""
    load_faces(people_dir, image_size=16, cache_dir=tmp_path / "cache")
    out, err = capfd.readouterr()
    assert "\r" not in out + err and "%|" not in out + err and "it/s]" not in out + err


def test_every_progress_bar_is_drawn_on_a_terminal_only():
    """Each tqdm(...) in the package says when it is disabled; tqdm's default draws into any stream."""
    import ast

    src = Path(faces.__file__).resolve().parents[1]
    calls = [(p.name, node.lineno) for p in src.rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "tqdm"
             and not any(k.arg == "disable" for k in node.keywords)]
    assert not calls, f"tqdm bars without disable= (None: terminal only): {calls}"


def test_default_crop_keeps_the_face_centre_of_a_250px_image(tmp_path):
    folder = tmp_path / "p" / "Face_A"
    folder.mkdir(parents=True)
    img = Image.new("RGB", (250, 250), (0, 0, 255))
    ImageDraw.Draw(img).rectangle([50, 50, 199, 199], fill=(255, 0, 0))  # the central 150 px
    img.save(folder / "Face_A_0001.png")
    fs = load_faces(tmp_path / "p", cache_dir=tmp_path / "c")
    assert fs.images.shape == (1, 3, 112, 112)
    assert float(faces.LFW_CROP) == pytest.approx(0.6)
    # 0.6 of 250 px is exactly the red square: no blue left at all.
    assert int(fs.images[0, 2].max()) < 30 and int(fs.images[0, 0].min()) > 225


@pytest.mark.parametrize("wrapping", [["lfw", "images_deepfunneled"], ["lfw-deepfunneled", "lfw-deepfunneled"]])
def test_people_folder_found_below_a_wrapper(tmp_path, wrapping):
    inner = tmp_path.joinpath(*wrapping)
    make_people(inner, PEOPLE[:3])
    (tmp_path / wrapping[0] / "pairs.txt").write_text("1\n")  # protocol files beside the folder
    assert find_people_root(tmp_path / wrapping[0]) == inner
    fs = load_faces(tmp_path / wrapping[0], image_size=8, cache_dir=tmp_path / "c")
    assert fs.root == inner and fs.names == ["Person_A", "Person_B", "Person_C"]


@pytest.mark.parametrize("layout", [["lfw", "images_deepfunneled"], ["lfw-dataset", "lfw-deepfunneled", "lfw-deepfunneled"]])
def test_deep_funneled_copy_is_used_beside_other_folders(tmp_path, layout, caplog):
    # LFW as Kaggle lays it out: the deep-funneled copy beside the unaligned one and other folders.
    top = tmp_path / layout[0]
    inner = top.joinpath(*layout[1:])
    make_people(inner, PEOPLE[:3])
    make_people(top / "images", PEOPLE[3:5])  # the unaligned copy: other people here, so a mix-up shows
    (top / "notes").mkdir()
    (top / "notes" / "readme.txt").write_text("no pictures here")
    (top / "pairs.txt").write_text("1\n")
    caplog.set_level(logging.INFO, logger="cnnlab")
    assert find_people_root(top) == inner
    assert f"using the deep-funneled copy {top / layout[1]}" in caplog.text and "images" in caplog.text
    fs = load_faces(top, image_size=8, cache_dir=tmp_path / "c")
    assert fs.root == inner and fs.names == ["Person_A", "Person_B", "Person_C"]


def test_a_people_folder_with_several_folders_is_not_taken_for_lfw(tmp_path):
    # Two copies that both say "deepfunneled": nothing to choose between, so the folder is read as it is.
    make_people(tmp_path / "set" / "a_deepfunneled", PEOPLE[:2])
    make_people(tmp_path / "set" / "b_deepfunneled", PEOPLE[2:4])
    assert find_people_root(tmp_path / "set") == tmp_path / "set"
    # A person's folder holds images, so it is never taken for the copy.
    make_people(tmp_path / "people", [("Deepfunneled_Fan", 2), ("Person_B", 2)])
    assert find_people_root(tmp_path / "people") == tmp_path / "people"


def test_single_person_set_is_not_taken_for_a_wrapper(tmp_path):
    make_people(tmp_path / "one", PEOPLE[:1])
    assert find_people_root(tmp_path / "one") == tmp_path / "one"


def test_folder_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match=r"missing.*does not exist"):
        load_faces(tmp_path / "missing")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(DataError, match=r"afile is not a folder"):
        load_faces(tmp_path / "afile")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty is empty"):
        load_faces(tmp_path / "empty")
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (20, 20)).save(flat / "a.jpg")
    with pytest.raises(DataError, match=r"flat has no person sub-folders"):
        load_faces(flat)


def test_person_without_images_is_an_error_or_skipped(people_dir, tmp_path, caplog):
    (people_dir / "Nobody").mkdir()
    (people_dir / "Nobody" / "notes.txt").write_text("no pictures here")
    with pytest.raises(DataError, match=r"Nobody holds no image files.*skip_bad_images"):
        load_faces(people_dir, image_size=8, cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.faces"):
        fs = load_faces(people_dir, image_size=8, skip_bad=True, cache_dir=tmp_path / "c")
    assert "Nobody" not in fs.names and len(fs.names) == len(PEOPLE)
    assert "skipped 1 person folder(s) without images: Nobody" in caplog.text


def test_bad_image_is_an_error_or_skipped_and_reported(people_dir, tmp_path, caplog):
    bad = people_dir / "Person_A" / "Person_A_0009.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    # A person whose only image is bad disappears and the ids after it shift down.
    (only,) = (people_dir / "Solo_X").iterdir()
    only.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"Person_A_0009.jpg"):
        load_faces(people_dir, image_size=8, cache_dir=tmp_path / "c")
    with caplog.at_level(logging.WARNING):
        fs = load_faces(people_dir, image_size=8, skip_bad=True, cache_dir=tmp_path / "c")
    assert "Person_A/Person_A_0009.jpg" not in fs.files and len(fs) == sum(n for _, n in PEOPLE) - 1
    assert "Solo_X" not in fs.names and fs.labels.max() == len(fs.names) - 1
    assert all(rel.split("/")[0] == fs.names[y] for y, rel in zip(fs.labels.tolist(), fs.files))
    assert "skipped 2 bad image file(s)" in caplog.text and "Person_A_0009.jpg" in caplog.text
    # The cached result remembers the bad files: without skip_bad it is still an error.
    with pytest.raises(DataError, match=r"Person_A_0009.jpg"):
        load_faces(people_dir, image_size=8, cache_dir=tmp_path / "c")


def test_bad_option_values():
    with pytest.raises(ConfigError, match="^image_size"):
        load_faces(".", image_size=0)
    with pytest.raises(ConfigError, match="^crop"):
        load_faces(".", crop=1.5)


# --------------------------------------------------------------------------- cache


def _no_decoding(*args, **kwargs):
    raise AssertionError("images were decoded although the cache should have been used")


def test_second_load_comes_from_the_cache(people_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))
    first = load_faces(people_dir, image_size=16)
    cache_files = list((tmp_path / "cache").glob("faces/*.pt"))
    assert len(cache_files) == 1  # in $CNNLAB_CACHE_DIR
    monkeypatch.setattr(faces, "load_many", _no_decoding)
    second = load_faces(people_dir, image_size=16)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    assert first.names == second.names and first.files == second.files and second.root == people_dir


def test_cache_follows_size_crop_and_file_changes(people_dir, tmp_path, monkeypatch):
    load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c" / "faces").iterdir())) == 1
    load_faces(people_dir, image_size=12, cache_dir=tmp_path / "c")
    load_faces(people_dir, image_size=16, crop=0.9, cache_dir=tmp_path / "c")
    assert len(list((tmp_path / "c" / "faces").iterdir())) == 3
    calls = []
    real = faces.load_many
    monkeypatch.setattr(faces, "load_many", lambda paths, *a, **k: calls.append(len(paths)) or real(paths, *a, **k))
    _draw(people_dir / "Person_A" / "Person_A_0004", 0, 4)  # a new file
    fs = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert calls == [len(fs)] and "Person_A/Person_A_0004.jpg" in fs.files
    # The changed folder's cache replaced the old one, and serves the next call.
    assert len(list((tmp_path / "c" / "faces").iterdir())) == 3
    again = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert calls == [len(fs)] and again.files == fs.files
    # A file rewritten in place (new size and time) counts as a change too.
    _draw(people_dir / "Person_A" / "Person_A_0001", 21, 1)  # same name, same .jpg
    load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert calls == [len(fs), len(fs)]


def test_a_cache_from_before_upright_decoding_is_decoded_again(tmp_path, monkeypatch):
    # A face stored sideways (EXIF orientation 8, as phones save portrait photos): a cache written
    # before decoding applied the orientation holds it sideways, and must not be served.
    root = make_people(tmp_path / "people", PEOPLE[:3])
    upright = Image.new("RGB", (SIDE, SIDE), (250, 250, 250))
    ImageDraw.Draw(upright).rectangle([0, 0, SIDE // 2 - 1, SIDE // 4], fill=(200, 20, 20))  # a top-left bar
    exif = Image.Exif()
    exif[0x0112] = 8
    (root / "Person_A" / "Person_A_0001.png").unlink(missing_ok=True)
    upright.rotate(-90).save(root / "Person_A" / "Person_A_0001.jpg", quality=95, exif=exif)
    from cnnlab.data import images

    def error(fs):
        i = fs.files.index("Person_A/Person_A_0001.jpg")
        got = fs.images[i].permute(1, 2, 0).to(torch.int16)
        want = torch.tensor(np.array(upright), dtype=torch.int16)
        return float((got - want).abs().float().mean())

    # The cache as the previous version wrote it: sideways pixels, under the previous version number.
    monkeypatch.setattr(faces, "_CACHE_VERSION", faces._CACHE_VERSION - 1)
    monkeypatch.setattr(images, "upright", lambda img, path: img)
    assert error(load_faces(root, image_size=SIDE, crop=1.0, cache_dir=tmp_path / "c")) > 20
    monkeypatch.undo()
    assert error(load_faces(root, image_size=SIDE, crop=1.0, cache_dir=tmp_path / "c")) < 4


def test_corrupt_cache_is_ignored_and_rebuilt(people_dir, tmp_path, caplog):
    first = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    (cache,) = (tmp_path / "c" / "faces").iterdir()
    cache.write_bytes(cache.read_bytes()[:100])
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.faces"):
        second = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert "ignoring the face cache" in caplog.text and str(cache) in caplog.text
    assert torch.equal(first.images, second.images)
    # Rebuilt: a third load reads it without a warning.
    caplog.clear()
    load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert "ignoring" not in caplog.text


def test_cache_holding_something_else_is_ignored(people_dir, tmp_path, caplog):
    load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    (cache,) = (tmp_path / "c" / "faces").iterdir()
    torch.save({"key": "other", "images": torch.zeros(1), "labels": torch.zeros(1)}, cache)
    with caplog.at_level(logging.WARNING, logger="cnnlab.data.faces"):
        fs = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert "ignoring the face cache" in caplog.text and fs.images.shape[-1] == 16


# --------------------------------------------------------------------------- splits


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


def test_split_is_identity_disjoint_complete_and_seeded():
    gen = torch.Generator().manual_seed(1)
    counts = torch.randint(1, 7, (200,), generator=gen).tolist()
    labels = _labels(counts)
    split = split_people(labels, (0.8, 0.1, 0.1), seed=3)
    train, val, test = split
    assert sorted(torch.cat([train, val, test]).tolist()) == list(range(len(labels)))
    people = [set(labels[s].tolist()) for s in (train, val, test)]
    assert not (people[0] & people[1]) and not (people[0] & people[2]) and not (people[1] & people[2])
    # Cut by people, roughly by the fractions, among the people with several images.
    multi = {p for p, c in enumerate(counts) if c >= 2}
    share = [len(s & multi) / len(multi) for s in people]
    assert share == pytest.approx([0.8, 0.1, 0.1], abs=0.02)
    # One-image people are spread over every split as impostors.
    solo = {p for p, c in enumerate(counts) if c == 1}
    assert all(s & solo for s in people)
    again = split_people(labels, (0.8, 0.1, 0.1), seed=3)
    assert all(torch.equal(a, b) for a, b in zip(split, again))
    other = split_people(labels, (0.8, 0.1, 0.1), seed=4)
    assert not torch.equal(split.train, other.train)


def test_split_with_an_empty_test_and_few_people():
    labels = _labels([2, 2, 3])
    split = split_people(labels, (0.5, 0.5, 0.0), seed=0)
    assert len(split.test) == 0 and len(split.train) > 0 and len(split.val) > 0
    tiny = split_people(_labels([2, 2, 2]), (0.8, 0.1, 0.1), seed=0)
    assert all(len(part) == 2 for part in tiny)  # every split asked for gets one person


@pytest.mark.parametrize("counts, fractions, want", [
    ([2, 3, 4, 5, 6, 2, 3, 4, 5, 6, 2, 3], (0.8, 0.1, 0.1), [8, 2, 2]),  # 12 people: 10/1/1 before
    ([2] * 6, (0.8, 0.1, 0.1), [2, 2, 2]),  # just enough for two each
    ([2] * 5, (0.8, 0.1, 0.1), [3, 1, 1]),  # too few for two each: one each, as before
    ([3] * 12 + [1] * 4, (0.9, 0.1, 0.0), [10, 2, 0]),  # a split of 0 stays empty
    ([2] * 100, (0.8, 0.1, 0.1), [80, 10, 10]),  # large sets: the fractions alone
])
def test_small_sets_give_validation_and_test_two_people_when_they_can(counts, fractions, want):
    labels = _labels(counts)
    several = torch.tensor(counts) >= 2
    got = [int(several[torch.unique(labels[part])].sum()) for part in split_people(labels, fractions, seed=0)]
    assert got == want


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.3, 0.1), (0.0, 0.5, 0.5), (1.2, -0.1, -0.1)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ConfigError, match="split fractions"):
        split_people(_labels([2, 2, 2]), fractions)


def test_split_needs_people_with_several_images():
    with pytest.raises(DataError, match="two or more images"):
        split_people(_labels([1, 1, 1]))


def test_flipped_pixels_in_the_cache_are_noticed_and_decoded_again(people_dir, tmp_path, caplog):
    """Flipped bytes once changed the test ROC AUC with "loaded from the cache"."""
    first = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    (path,) = (tmp_path / "c" / "faces").iterdir()
    record = torch.load(path, weights_only=True)
    record["data"]["images"][0, 0, :4, :4] ^= 0x5A
    torch.save(record, path)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        again = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "do not match its digest" in warnings[0] and "from the cache" not in caplog.text
    assert torch.equal(again.images, first.images)


def test_a_cache_of_another_image_size_or_file_count_is_rebuilt(people_dir, tmp_path, caplog):
    from cnnlab.data import cache

    first = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    (path,) = (tmp_path / "c" / "faces").iterdir()
    record = torch.load(path, weights_only=True)
    data = record["data"]
    data["files"], data["images"], data["labels"] = data["files"][1:], data["images"][1:], data["labels"][1:]
    record.update(description=cache.describe(data), digest=cache.digest(data))
    torch.save(record, path)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cnnlab"):
        again = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert "where the folder holds" in caplog.text and again.files == first.files
