"""LFW's protocol files: the View 1 and View 2 pair lists and people lists.

View 1 is for development: ``peopleDevTrain.txt`` / ``peopleDevTest.txt``
name disjoint sets of people, ``pairsDevTrain.txt`` / ``pairsDevTest.txt``
list pairs among them. View 2 (``pairs.txt``) is the 10-fold protocol that
published LFW figures use. Formats (fields separated by tabs, any white space
accepted here)::

    pairs.txt            S N          then per fold: N lines "name i j" (same person),
                                      then N lines "name1 i name2 j" (different people)
    pairsDev*.txt        N            then N same-person lines, then N different-person lines
    peopleDev*.txt       N            then N lines "name number_of_images"
    people.txt           S            then per fold: a line "N", then N lines "name number_of_images"

Image ``i`` of ``name`` is the file ``<name>/<name>_%04d.<ext>`` of the people
folder (:func:`resolve_pairs` maps pairs to indices of a
:class:`~cnnlab.data.faces.FaceSet`).

:func:`download_lfw` fetches the deep-funneled images and these files from
LFW's site (Huang, Ramesh, Berg and Learned-Miller, 2007; deep funneling:
Huang, Mattar, Lee and Learned-Miller, NIPS 2012): 5,749 people, 13,233
aligned 250x250 JPEG images. Each file is checked against its md5; an
interrupted download resumes (:func:`cnnlab.data.download.download_url`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from cnnlab.data.download import DownloadFailed, download_url, extract_archive, made_folder
from cnnlab.data.faces import FaceListing, FaceSet
from cnnlab.errors import DataError
from cnnlab.files import not_a_regular_file

logger = logging.getLogger(__name__)


@dataclass
class PairList:
    """Pairs read from an LFW pairs file; one entry per pair, in file order.

    ``left`` and ``right`` are ``(name, image_number)``; ``same`` is bool (M,),
    ``fold`` int64 (M,) (all 0 for View 1 files); ``lines`` int64 (M,) is the
    line of each pair in ``source``, for error messages.
    """

    left: list[tuple[str, int]]
    right: list[tuple[str, int]]
    same: torch.Tensor
    fold: torch.Tensor
    lines: torch.Tensor
    source: Path

    def __len__(self) -> int:
        return len(self.left)

    @property
    def num_folds(self) -> int:
        return int(self.fold.max()) + 1 if len(self.fold) else 0


@dataclass
class PeopleList:
    """People read from an LFW people file: names, their image counts, and folds (View 2)."""

    names: list[str]
    counts: torch.Tensor  # (P,) int64
    fold: torch.Tensor  # (P,) int64, all 0 for View 1 files
    source: Path


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """Non-blank lines as (1-based line number, fields)."""
    problem = not_a_regular_file(path)
    if problem:
        raise DataError(f"LFW protocol file {path} {problem}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not a text file (expected an LFW protocol file)") from None
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


def _count(path: Path, lineno: int, field: str, what: str, minimum: int = 0) -> int:
    try:
        value = int(field)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise DataError(f"{path}, line {lineno}: {what} must be an integer of at least {minimum}, got {field!r}")
    return value


def read_pairs(path: str | os.PathLike) -> PairList:
    """Parse ``pairs.txt`` (View 2: header ``S N``) or ``pairsDevTrain/Test.txt`` (View 1: header ``N``).

    A malformed line, a line of the wrong kind for its place (a
    different-person line among the same-person ones or the other way
    round), too few or too many lines are a :class:`DataError` naming the
    file and the line.
    """
    path = Path(path)
    rows = _read_lines(path)
    if not rows:
        raise DataError(f"{path} is empty (expected an LFW pairs file)")
    header_line, header = rows[0]
    if len(header) == 1:
        folds, per = 1, _count(path, header_line, header[0], "the number of pairs", 1)
    elif len(header) == 2:
        folds = _count(path, header_line, header[0], "the number of folds", 1)
        per = _count(path, header_line, header[1], "the number of pairs per fold", 1)
    else:
        raise DataError(
            f"{path}, line {header_line}: expected a header 'folds<TAB>pairs' (pairs.txt) or 'pairs' "
            f"(pairsDevTrain.txt), got {' '.join(header)!r}"
        )
    body = rows[1:]
    expected = folds * 2 * per
    if len(body) < expected:
        last = body[-1][0] if body else header_line
        raise DataError(
            f"{path}: the header (line {header_line}) announces {folds} fold(s) of {per} same-person and "
            f"{per} different-person pairs ({expected} lines), but the file ends after "
            f"{len(body)} at line {last}"
        )
    if len(body) > expected:
        raise DataError(
            f"{path}, line {body[expected][0]}: more lines than the {expected} pairs the header "
            f"(line {header_line}) announces"
        )

    left, right, same, fold, lines = [], [], [], [], []
    for k, (lineno, fields) in enumerate(body):
        f, within = divmod(k, 2 * per)
        matched = within < per
        if matched and len(fields) != 3:
            raise DataError(
                f"{path}, line {lineno}: expected a same-person pair 'name<TAB>i<TAB>j' "
                f"(pair {within + 1} of fold {f + 1}), got {' '.join(fields)!r}"
            )
        if not matched and len(fields) != 4:
            raise DataError(
                f"{path}, line {lineno}: expected a different-person pair 'name1<TAB>i<TAB>name2<TAB>j' "
                f"(pair {within + 1} of fold {f + 1}), got {' '.join(fields)!r}"
            )
        if matched:
            name = fields[0]
            a = (name, _count(path, lineno, fields[1], "an image number", 1))
            b = (name, _count(path, lineno, fields[2], "an image number", 1))
        else:
            a = (fields[0], _count(path, lineno, fields[1], "an image number", 1))
            b = (fields[2], _count(path, lineno, fields[3], "an image number", 1))
        left.append(a)
        right.append(b)
        same.append(matched)
        fold.append(f)
        lines.append(lineno)
    return PairList(
        left, right,
        torch.tensor(same, dtype=torch.bool),
        torch.tensor(fold, dtype=torch.int64),
        torch.tensor(lines, dtype=torch.int64),
        path,
    )


def read_people(path: str | os.PathLike) -> PeopleList:
    """Parse ``peopleDevTrain/Test.txt`` (header ``N``, then ``name count`` lines) or ``people.txt``.

    ``people.txt`` (View 2) is told apart by its second line, a single number:
    the size of the first fold.
    """
    path = Path(path)
    rows = _read_lines(path)
    if not rows:
        raise DataError(f"{path} is empty (expected an LFW people file)")
    header_line, header = rows[0]
    if len(header) != 1:
        raise DataError(f"{path}, line {header_line}: expected a single count, got {' '.join(header)!r}")
    first = _count(path, header_line, header[0], "the count", 1)
    by_fold = len(rows) > 1 and len(rows[1][1]) == 1
    sections: list[tuple[int, int]] = []  # (header row index, number of people)
    if by_fold:
        i = 1
        for _ in range(first):
            if i >= len(rows):
                raise DataError(f"{path}: {first} folds announced on line {header_line}, the file ends first")
            lineno, fields = rows[i]
            if len(fields) != 1:
                raise DataError(f"{path}, line {lineno}: expected the size of a fold, got {' '.join(fields)!r}")
            sections.append((i, _count(path, lineno, fields[0], "the size of a fold", 1)))
            i += 1 + sections[-1][1]
    else:
        sections.append((0, first))
    end = sections[-1][0] + 1 + sections[-1][1]
    if end < len(rows):
        raise DataError(f"{path}, line {rows[end][0]}: more lines than the header(s) announce")
    if end > len(rows):
        raise DataError(f"{path}: the file ends at line {rows[-1][0]}, before the {end - 1} entries announced")

    names, counts, fold = [], [], []
    for f, (h, n) in enumerate(sections):
        for lineno, fields in rows[h + 1 : h + 1 + n]:
            if len(fields) != 2:
                raise DataError(f"{path}, line {lineno}: expected 'name<TAB>number_of_images', got {' '.join(fields)!r}")
            names.append(fields[0])
            counts.append(_count(path, lineno, fields[1], "the number of images", 1))
            fold.append(f)
    return PeopleList(names, torch.tensor(counts, dtype=torch.int64), torch.tensor(fold, dtype=torch.int64), path)


def _image_index(faces: FaceSet | FaceListing) -> dict[tuple[str, int], int]:
    """(person, image number) -> index, from LFW's ``<Name>/<Name>_NNNN.<ext>`` file names."""
    index = {}
    for i, rel in enumerate(faces.files):
        person, _, filename = rel.rpartition("/")
        stem = filename.rsplit(".", 1)[0]
        prefix, _, number = stem.rpartition("_")
        if prefix == person and number.isdigit():
            index[(person, int(number))] = i
    return index


def resolve_pairs(pairs: PairList, faces: FaceSet | FaceListing) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into ``faces`` (decoded, or a listing: so a pairs file is checked before decoding) of each pair's
    two images, int64 (M,) each.

    A pair naming a person without a folder, or an image number without a
    file, is a :class:`DataError` naming the pairs file and the line.
    """
    index = _image_index(faces)
    people = set(faces.names)
    out = []
    for side in (pairs.left, pairs.right):
        idx = []
        for (name, number), lineno in zip(side, pairs.lines.tolist()):
            i = index.get((name, number))
            if i is None:
                if name not in people:
                    raise DataError(f"{pairs.source}, line {lineno}: no person folder {name!r} in {faces.root}")
                raise DataError(
                    f"{pairs.source}, line {lineno}: {name} has no image number {number} "
                    f"(expected {faces.root / name / f'{name}_{number:04d}'}.jpg or another image type, "
                    f"readable)"
                )
            idx.append(i)
        out.append(torch.tensor(idx, dtype=torch.int64))
    return out[0], out[1]


def select_people(faces: FaceSet | FaceListing, names: Sequence[str], source: str | os.PathLike | None = None) -> torch.Tensor:
    """Indices (ascending, int64) of every image of the people in ``names``, e.g. from :func:`read_people`.

    A name without a folder in ``faces`` is a :class:`DataError` (naming ``source`` when given).
    """
    position = {n: i for i, n in enumerate(faces.names)}
    missing = [n for n in names if n not in position]
    if missing:
        where = f"{source} names" if source is not None else "asked for"
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataError(f"{where} people without a folder in {faces.root}: {', '.join(missing[:5])}{more}")
    wanted = torch.zeros(len(faces.names), dtype=torch.bool)
    wanted[torch.tensor([position[n] for n in names], dtype=torch.int64)] = True
    return torch.nonzero(wanted[faces.labels]).flatten()


def find_protocol_file(
    name: str, data_dir: str | os.PathLike, protocol_dir: str | os.PathLike | None = None, what: str = ""
) -> Path:
    """Find an LFW protocol file such as ``pairs.txt``; ``what`` it holds goes into the message when it is missing.

    Looks in ``protocol_dir`` (when given), then ``data_dir``, then the
    parent of ``data_dir`` (where LFW's files sit beside
    ``images_deepfunneled/``), and returns the first match.
    """
    places = ([Path(protocol_dir)] if protocol_dir is not None else []) + [Path(data_dir), Path(data_dir).absolute().parent]
    for place in places:
        candidate = place / name
        if candidate.is_file():
            logger.info("using %s", candidate)
            return candidate
    raise DataError(f"LFW protocol file {name} not found{f' ({what})' if what else ''}; looked in "
                    + ", ".join(str(p.absolute()) for p in places))


# --------------------------------------------------------------------------- download

LFW_URL = "http://vis-www.cs.umass.edu/lfw/"
ARCHIVE = "lfw-deepfunneled.tgz"
# md5 of each file as published on the site (the archive's as torchvision's LFW dataset checks it).
LFW_FILES: dict[str, str] = {
    ARCHIVE: "68331da3eb755a505a502b5aacb3c201",
    "pairsDevTrain.txt": "4f27cbf15b2da4a85c1907eb4181ad21",
    "pairsDevTest.txt": "5132f7440eb68cf58910c8a45a2ac10b",
    "peopleDevTrain.txt": "54eaac34beb6d042ed3a7d883e247a21",
    "peopleDevTest.txt": "e4bf5be0a43b5dcd9dc5ccfcb8fb19c5",
    "pairs.txt": "9f1ba174e4e1c508ff7cdf10ac338a7d",
    "people.txt": "450f0863dd89e85e73936a6d71a3474b",
}


OFFLINE = (f"use a copy of LFW already on disk as the face folder, or fetch {ARCHIVE} and the protocol files "
           "elsewhere and give the folder holding them as the base URL (file:///path/to/folder/)")
"""How to do without LFW's site, in the library's words; a command says it with its own options."""


def _has_people(data_dir: Path) -> bool:
    return data_dir.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in data_dir.iterdir())


def download_lfw(data_dir: str | os.PathLike, base_url: str = LFW_URL, check_md5: bool = True) -> Path:
    """Fetch whatever of LFW deep-funneled is missing from ``data_dir`` and return ``data_dir``.

    Afterwards ``data_dir`` holds ``lfw-deepfunneled/<Name>/<Name>_NNNN.jpg``
    and the protocol files, the layout ``--data-dir`` and ``--protocol
    lfw-view1`` expect. The archive is kept beside them (delete it to save
    100 MB). ``base_url`` may be a ``file://`` folder holding the same files
    (for a machine without internet, with files fetched elsewhere). A
    :class:`~cnnlab.data.download.DownloadFailed` says how to do without the
    network (:data:`OFFLINE`).
    """
    data_dir = Path(data_dir).expanduser()
    if data_dir.exists() and not data_dir.is_dir():
        raise DataError(f"{data_dir} is a file, expected a folder")
    base = base_url if base_url.endswith("/") else base_url + "/"
    with made_folder(data_dir):  # a failed download leaves no empty folder behind
        try:
            _fetch_lfw(data_dir, base, check_md5)
        except DownloadFailed as e:
            raise e.advising(OFFLINE) from None
    return data_dir


def _fetch_lfw(data_dir: Path, base: str, check_md5: bool) -> None:
    for name, md5 in LFW_FILES.items():
        if name == ARCHIVE:
            if _has_people(data_dir):
                continue
            archive = download_url(base + name, data_dir / name, md5 if check_md5 else None)
            logger.info("extracting %s into %s", archive, data_dir)
            extract_archive(archive, data_dir)
        elif not (data_dir / name).is_file():
            download_url(base + name, data_dir / name, md5 if check_md5 else None)


def download_lfw_if_missing(data_dir: str | os.PathLike) -> None:
    """:func:`download_lfw` unless ``data_dir`` already holds person folders and every protocol file."""
    data_dir = Path(data_dir).expanduser()
    if _has_people(data_dir) and all((data_dir / n).is_file() for n in LFW_FILES if n != ARCHIVE):
        return
    download_lfw(data_dir)
