"""Listing a face folder before decoding it, choosing a subset of whole people, and the progress of long decodes
in a log (output to a file or a pipe, where no bar is drawn)."""

from __future__ import annotations

import logging
import re

import pytest
import torch

from cnnlab.data import align, images
from cnnlab.data.faces import FaceListing, list_faces, load_faces, subsample_people
from cnnlab.faces.align_folder import align_folder
from tests.faces.conftest import PEOPLE, make_people

_LINE = re.compile(r"(\d+)/(\d+) images \((\d+)%\), ([\d.]+) img/s, about (\d+ s|\d+ min \d\d s) left")


@pytest.fixture
def people_dir(tmp_path):
    return make_people(tmp_path / "people")


@pytest.fixture
def decoded(monkeypatch) -> list[str]:
    """The files the decoder opens, in the order it opens them (a spy on the one decoder)."""
    opened: list[str] = []
    real = images.decode_rgb

    def spy(path, *args, **kwargs):
        opened.append(path.parent.name + "/" + path.name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(images, "decode_rgb", spy)
    return opened


def _progress_lines(caplog) -> list[re.Match]:
    return [m for r in caplog.records if (m := _LINE.search(r.getMessage()))]


def test_duration_reads_as_a_time():
    assert [align.duration(s) for s in (0.4, 45, 200, 3900)] == ["0 s", "45 s", "3 min 20 s", "1 h 05 min"]


def test_progress_logs_done_rate_and_time_left_every_interval(monkeypatch, caplog):
    clock = iter(range(0, 1000, 10))  # every reading of the clock 10 s later
    monkeypatch.setattr(align.time, "perf_counter", lambda: float(next(clock)))
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        assert list(align.progress(iter(range(10)), 10, "finding faces in lfw", every=30)) == list(range(10))
    lines = [r.getMessage() for r in caplog.records]
    # After 3, 6 and 9 images (30 s apart), none at the last: the closing line says it all.
    assert lines == [
        "finding faces in lfw: 3/10 images (30%), 0.1 img/s, about 1 min 10 s left",
        "finding faces in lfw: 6/10 images (60%), 0.1 img/s, about 40 s left",
        "finding faces in lfw: 9/10 images (90%), 0.1 img/s, about 10 s left",
        "finding faces in lfw: 10 images in 1 min 50 s (0.1 img/s)",
    ]


def test_decoding_a_folder_logs_its_progress_when_no_bar_is_drawn(people_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(align, "PROGRESS_SECONDS", 0.0)  # a line after every image
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        fs = load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    lines = _progress_lines(caplog)
    total = len(fs)
    assert len(lines) == total - 1 and all(int(m.group(2)) == total for m in lines)
    assert [int(m.group(1)) for m in lines] == list(range(1, total))
    assert all("decoding faces in people" in m.string for m in lines)
    assert any(f"decoding faces in people: {total} images in" in r.getMessage() for r in caplog.records)


def test_aligning_a_folder_logs_its_progress(people_dir, tmp_path, monkeypatch, caplog):
    class NoFaces:
        def detect_faces(self, rgb):
            return []

    import cnnlab.faces.align_folder as af

    monkeypatch.setattr(af, "detector", lambda: align.FaceDetector(network=NoFaces))
    monkeypatch.setattr(align, "PROGRESS_SECONDS", 0.0)
    with caplog.at_level(logging.INFO, logger="cnnlab"):
        report = align_folder(people_dir, tmp_path / "aligned", size=32)
    assert len(report["no_face"]) == report["images"] == sum(n for _, n in PEOPLE)
    lines = _progress_lines(caplog)
    assert len(lines) == report["images"] - 1 and "aligning faces of people" in lines[0].string


def test_a_listing_decodes_nothing_and_narrows_to_the_files_chosen(people_dir, decoded):
    listing = list_faces(people_dir)
    assert decoded == [] and not listing.partial
    assert len(listing) == sum(n for _, n in PEOPLE) and listing.names == sorted(n for n, _ in PEOPLE)
    assert listing.files[0] == "Person_A/Person_A_0001.jpg" and listing.labels[:5].tolist() == [0, 0, 0, 0, 1]
    some = listing.only(torch.tensor([5, 0, 1]))  # Person_A's first two images, Person_B's second
    assert isinstance(some, FaceListing) and some.partial
    assert some.names == ["Person_A", "Person_B"] and some.labels.tolist() == [0, 0, 1]
    assert some.files == ["Person_A/Person_A_0001.jpg", "Person_A/Person_A_0002.jpg", "Person_B/Person_B_0002.jpg"]
    assert not listing.only(torch.arange(len(listing))).partial  # every file is the whole folder


def test_a_narrowed_listing_decodes_only_its_files_into_a_cache_of_its_own(people_dir, tmp_path, decoded):
    listing = list_faces(people_dir)
    some = listing.only(torch.tensor([0, 1, 2, 40]))
    fs = load_faces(some, image_size=16, cache_dir=tmp_path / "c")
    assert sorted(decoded) == sorted(some.files) and fs.files == some.files and fs.names == some.names
    whole = load_faces(listing, image_size=16, cache_dir=tmp_path / "c")
    assert len(decoded) == 4 + len(listing) and len(list((tmp_path / "c" / "faces").iterdir())) == 2
    # Each is served from its own cache; the subset's pixels are the whole folder's.
    again = load_faces(some, image_size=16, cache_dir=tmp_path / "c")
    load_faces(people_dir, image_size=16, cache_dir=tmp_path / "c")
    assert len(decoded) == 4 + len(listing)
    assert torch.equal(again.images, whole.images[torch.tensor([0, 1, 2, 40])])
    # Another choice of files is another cache, decoded once.
    load_faces(listing.only(torch.tensor([0, 1, 3])), image_size=16, cache_dir=tmp_path / "c")
    assert len(decoded) == 7 + len(listing) and len(list((tmp_path / "c" / "faces").iterdir())) == 3


def test_subsample_takes_whole_people_in_a_seeded_order_and_cuts_the_last():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 4 + [3] * 2 + [4] * 6)
    pool = torch.arange(len(labels))
    assert torch.equal(subsample_people(labels, pool, None), pool)
    assert torch.equal(subsample_people(labels, pool, 50), pool)
    for seed in range(6):
        chosen = subsample_people(labels, pool, 9, seed=seed)
        assert len(chosen) == 9 and torch.equal(chosen, chosen.sort().values)
        counts = torch.bincount(labels[chosen], minlength=5)
        full = torch.bincount(labels, minlength=5)
        partial = [p for p in range(5) if 0 < counts[p] < full[p]]
        assert len(partial) <= 1  # whole people, but for the last one
        if partial:  # the person cut keeps their first images
            mine = chosen[labels[chosen] == partial[0]]
            assert torch.equal(mine, pool[labels == partial[0]][: len(mine)])
        assert torch.equal(subsample_people(labels, pool, 9, seed=seed), chosen)
    draws = {tuple(subsample_people(labels, pool, 9, seed=s).tolist()) for s in range(6)}
    assert len(draws) > 1
    # From a part of the set only, never outside it.
    part = torch.tensor([0, 1, 5, 6, 7, 14, 15])
    assert set(subsample_people(labels, part, 4, seed=1).tolist()) <= set(part.tolist())
