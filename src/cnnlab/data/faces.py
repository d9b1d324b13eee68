"""Face sets for Siamese verification: people folders, decoding, splits, pairs.

A face set is a folder with one sub-folder per person (LFW and LFW
deep-funneled, the Kaggle "Extracted Faces" set, or any set laid out the same
way)::

    <root>/<Name>/<any image file PIL reads>

:func:`list_faces` lists the people and their files without decoding any
(seconds, even for LFW's 13,233 images), so a run can choose what it needs
first; :func:`load_faces` decodes the images of a folder, or of such a
listing narrowed to the files chosen (:meth:`FaceListing.only`), once (face
found or centre crop, resize) into one uint8 tensor and caches it on disk, so
a second run starts in seconds. :func:`split_people` makes identity-disjoint
train / validation / test splits and :func:`subsample_people` a seeded subset
of whole people; :mod:`cnnlab.data.samplers` draws pairs, triplets and P x K
batches from them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch
from PIL import Image

from cnnlab.data import cache
from cnnlab.data.align import ALIGNED_MARKER, NoFace, check_align, is_aligned_folder, prepare, progress
from cnnlab.data.images import list_files, load_many
from cnnlab.errors import ConfigError, DataError, param

logger = logging.getLogger(__name__)

LFW_CROP = 0.6
"""Default centre crop, as a fraction of the shorter side.

LFW deep-funneled images are 250x250 with the face aligned in the middle; the
face itself (forehead to chin) spans roughly the central 110-130 px. A crop of
0.6 (150 px) keeps the whole face with a thin margin: at 0.55 chins and
foreheads already touch the border on some images, at 0.5 they are cut,
while at 0.7 and above the shoulders and background take a third of the
picture and the face gets fewer of the 112 pixels.
"""

_CACHE_VERSION = 3
# 2: images are decoded upright (EXIF orientation applied); older caches hold them as stored.
# 3: of several faces, the one the photo is of (confidence, sharpness and size) is kept, not the largest.
_IGNORED_DIRS = {"__MACOSX"}  # left behind by zip archives made on macOS
_SHOWN = 5  # file names a log line lists before "and N more"


# --------------------------------------------------------------------------- scanning


def _is_hidden(p: Path) -> bool:
    return p.name.startswith(".") or p.name in _IGNORED_DIRS


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _is_hidden(p))


def _image_suffixes() -> frozenset[str]:
    # Every extension some installed PIL plugin claims (jpg, png, pgm, ppm, bmp, tif, webp, ...).
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _image_files(folder: Path, suffixes: frozenset[str]) -> list[Path]:
    return [p for p in list_files(folder) if p.suffix.lower() in suffixes]


def _deep_funneled(subs: list[Path], suffixes: frozenset[str]) -> Path | None:
    """The one deep-funneled copy of LFW among ``subs`` (a folder of person folders), if there is one."""
    found = [p for p in subs if "deepfunneled" in p.name.lower() and not _image_files(p, suffixes) and _subdirs(p)]
    return found[0] if len(found) == 1 else None


def find_people_root(root: str | os.PathLike) -> Path:
    """The folder that holds one sub-folder per person, starting from ``root``.

    ``root`` itself is the people folder unless it has exactly one (non-hidden)
    sub-folder and that sub-folder holds only further sub-folders (no images);
    then the search goes one level down, at most three times. So ``lfw/``
    holding ``images_deepfunneled/`` (and the protocol text files),
    ``lfw-deepfunneled/lfw-deepfunneled/`` as Kaggle's archive unpacks, and the
    people folder itself all work. A set with a single person is not
    mistaken for a wrapper, because that person's folder holds images.

    A folder that holds LFW's deep-funneled copy (``images_deepfunneled/``,
    ``lfw-deepfunneled/``) beside other folders, such as the unaligned
    ``images/`` copy, is a wrapper too: the deep-funneled copy is the one used
    (the faces are aligned in it), and the log says so.
    """
    root = Path(root)
    if not root.exists():
        raise DataError(f"face folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"face folder {root} is not a folder (expected <root>/<person>/<image>)")
    suffixes = _image_suffixes()
    current = root
    for _ in range(3):
        subs = _subdirs(current)
        funneled = _deep_funneled(subs, suffixes) if len(subs) > 1 else None
        if funneled is not None:
            others = ", ".join(p.name for p in subs if p != funneled)
            logger.info("using the deep-funneled copy %s; the other folder(s) beside it (%s) are not read",
                        funneled, others)
            current = funneled
            continue
        if len(subs) != 1 or _image_files(subs[0], suffixes) or not _subdirs(subs[0]):
            break
        current = subs[0]
    if current != root:
        logger.info("people folders found in %s", current)
    return current


def _scan(root: Path, skip_bad: bool) -> tuple[list[str], list[list[Path]]]:
    """Sorted person names and each person's sorted image files."""
    if not any(True for p in root.iterdir() if not _is_hidden(p)):
        raise DataError(f"face folder {root} is empty (expected <root>/<person>/<image>)")
    subs = _subdirs(root)
    if not subs:
        raise DataError(
            f"face folder {root} has no person sub-folders (expected one folder per person, "
            f"e.g. {root}/<Name>/<Name>_0001.jpg)"
        )
    suffixes = _image_suffixes()
    names, files, empty = [], [], []
    for person in subs:
        if not _image_files(person, suffixes):
            empty.append(person)
            continue
        names.append(person.name)
        # Every file beside the images is decoded too: a stray non-image file is a bad
        # file to report (or skip with --skip-bad-images), never silently passed over.
        files.append(list_files(person))
    if empty and not skip_bad:
        more = f" (and {len(empty) - 1} more)" if len(empty) > 1 else ""
        raise DataError(
            f"person folder {empty[0]} holds no image files{more}; remove it or use {param('skip_bad_images')}"
        )
    if empty:
        shown = ", ".join(p.name for p in empty[:10])
        logger.warning("skipped %d person folder(s) without images: %s%s",
                       len(empty), shown, " ..." if len(empty) > 10 else "")
    if not names:
        raise DataError(f"no person folder in {root} holds an image file")
    return names, files


@dataclass
class FaceListing:
    """The files of a people folder, listed but not decoded: what a run chooses from before paying for decoding.

    ``paths[p]`` are the files of person ``names[p]`` (people and files
    sorted). ``labels`` and ``files`` are flat, as in :class:`FaceSet`
    (``files`` relative to ``root``, with ``/``), so what finds images by
    person or file name (:func:`cnnlab.data.lfw.select_people`,
    :func:`cnnlab.data.lfw.resolve_pairs`) reads both. ``partial``: a choice of
    the folder's files (:meth:`only`), which :func:`load_faces` caches apart
    from the whole folder's.
    """

    root: Path
    names: list[str]
    paths: list[list[Path]]
    partial: bool = False
    labels: torch.Tensor = field(init=False, repr=False, compare=False)  # both follow from paths
    files: list[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.labels = torch.tensor([p for p, fs in enumerate(self.paths) for _ in fs], dtype=torch.int64)
        self.files = [f.relative_to(self.root).as_posix() for fs in self.paths for f in fs]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def num_people(self) -> int:
        return len(self.names)

    def only(self, idx: torch.Tensor) -> FaceListing:
        """The listing of the files at ``idx`` (indices into ``files``) alone; people left without one drop out."""
        wanted = torch.zeros(len(self), dtype=torch.bool)
        wanted[torch.as_tensor(idx, dtype=torch.int64)] = True
        keep = wanted.tolist()
        names, paths, k = [], [], 0
        for name, person in zip(self.names, self.paths):
            chosen = [p for p, w in zip(person, keep[k : k + len(person)]) if w]
            k += len(person)
            if chosen:
                names.append(name)
                paths.append(chosen)
        return FaceListing(self.root, names, paths, partial=self.partial or len(names) < len(self.names)
                           or sum(map(len, paths)) < len(self))


def list_faces(root: str | os.PathLike, skip_bad: bool = False) -> FaceListing:
    """The people and files under ``root`` (see :func:`find_people_root`), nothing decoded.

    A person folder without images is a :class:`DataError` naming it, or,
    with ``skip_bad``, left out with a warning.
    """
    people_root = find_people_root(root)
    names, paths = _scan(people_root, skip_bad)
    return FaceListing(people_root, names, paths)


# --------------------------------------------------------------------------- decoding + cache


@dataclass
class FaceSet:
    """Decoded faces of a people folder.

    ``images`` is uint8 (N, 3, S, S); ``labels`` int64 (N,) indexes ``names``
    (people sorted by folder name); ``files`` are paths relative to ``root``
    (the people folder), with ``/`` separators, in the same order as
    ``images``. Images are sorted by person, then by file name.
    """

    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,) int64
    names: list[str]
    files: list[str]
    root: Path
    alignment: dict = field(default_factory=dict)  # how the faces were found: see _alignment_counts

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_people(self) -> int:
        return len(self.names)

    def counts(self) -> torch.Tensor:
        """Images per person, int64 (P,)."""
        return torch.bincount(self.labels, minlength=len(self.names))


def _cache_keys(root: Path, image_size: int, crop: float, files: list[list[Path]],
                align: str = "center", partial: bool = False) -> tuple[str, str]:
    """(name, content key) of the cache: the name from the folder, size and crop, the key also from the files.

    One cache file per folder, size and crop, overwritten when the files
    change, so adding a photo does not leave a stale copy of the whole set
    behind. Sizes and modification times stand in for the contents:
    re-hashing 13k images on every start would cost as much as decoding them.
    A ``partial`` listing (a run's choice of the files) is named by its file
    names too: one cache per choice, beside the whole folder's, which it
    neither replaces nor is replaced by.
    """
    settings = {"version": _CACHE_VERSION, "root": str(root.resolve()), "size": image_size,
                "crop": round(float(crop), 6), "align": align, "aligned_folder": is_aligned_folder(root)}
    if partial:
        names = "\n".join(p.relative_to(root).as_posix() for person_files in files for p in person_files)
        settings["only"] = hashlib.sha256(names.encode()).hexdigest()[:24]
    listing = []
    for person_files in files:
        for p in person_files:
            st = p.stat()
            listing.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    name = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    blob = json.dumps({**settings, "files": listing}, sort_keys=True, separators=(",", ":"))
    return name, hashlib.sha256(blob.encode()).hexdigest()


def _cache_problem(obj: dict, names: list[str], files: list[list[Path]], image_size: int,
                   skip_bad: bool) -> str | None:
    """What is wrong with a cached decode, given the people and files the folder holds now (None: nothing)."""
    kept, rel, bad, no_face = obj.get("names"), obj.get("files"), obj.get("bad"), obj.get("no_face")
    if not all(isinstance(x, list) and all(isinstance(v, str) for v in x) for x in (kept, rel, bad, no_face)):
        return "its names, files, bad files or files without a face are not lists of strings"
    if not isinstance(obj.get("alignment"), dict):
        return "it does not say how the faces were found"
    problem = cache.labelled_images_problem(obj.get("images"), obj.get("labels"), size=image_size,
                                            classes=len(kept), name="faces")
    if problem:
        return problem
    if len(rel) != len(obj["labels"]):
        return f"it lists {len(rel)} files for {len(obj['labels'])} faces"
    scanned = sum(len(f) for f in files)
    if len(rel) + len(bad) + len(no_face) != scanned:
        return f"it accounts for {len(rel) + len(bad) + len(no_face)} image files where the folder holds {scanned}"
    if not set(kept) <= set(names) or kept != sorted(kept, key=names.index) or (len(kept) != len(names)
                                                                                and not skip_bad and not bad):
        return "its people are not the people folders of the face folder"
    return None


def load_faces(
    root: str | os.PathLike | FaceListing,
    image_size: int = 112,
    crop: float = LFW_CROP,
    skip_bad: bool = False,
    cache_dir: str | os.PathLike | None = None,
    align: str = "center",
) -> FaceSet:
    """Decode every face under ``root`` (see :func:`find_people_root`), or of the :class:`FaceListing` ``root``
    (the files a run chose, see :func:`list_faces`), into a :class:`FaceSet`.

    Each image is decoded to upright RGB (grayscale repeated into three
    channels) and made ``image_size`` x ``image_size`` as ``align`` says (see
    :mod:`cnnlab.data.align`): the face detected and aligned to the five-point
    template (``auto``, ``detect``), or the centre ``crop`` of the shorter side
    (``center``, and ``auto`` where no face is found). With ``detect`` an image
    without a face is left out, and the log says how many and which. The
    result is cached in ``cache_dir`` (default ``$CNNLAB_CACHE_DIR``, else
    ``~/.cache/cnnlab``), keyed by the folder, the size, the crop, the
    alignment and the names, sizes and modification times of the files, so a
    second call decodes (and detects) nothing and any change to the folder
    decodes again (and replaces that folder's cache). A corrupt cache is
    ignored, with a warning, and written again.

    Without ``skip_bad``, a person folder without images or an image that
    cannot be decoded is a :class:`DataError` naming it; with it, they are
    skipped with a warning (a person left with no readable image is dropped,
    and the ids of the people after it shift down).
    """
    if not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"{param('image_size')} must be an integer of at least 8, got {image_size!r}")
    if not 0.0 < float(crop) <= 1.0:
        raise ConfigError(f"{param('crop')} must be a fraction of the image side in (0, 1], got {crop!r}")
    check_align(align)
    listing = root if isinstance(root, FaceListing) else list_faces(root, skip_bad)
    people_root, names, files = listing.root, listing.names, listing.paths
    cache_name, key = _cache_keys(people_root, image_size, crop, files, align, listing.partial)
    cache_path = cache.cache_dir(cache_dir) / "faces" / f"{cache_name}.pt"

    meta = {"version": _CACHE_VERSION, "image_size": image_size, "crop": round(float(crop), 6), "align": align,
            "files": sum(len(f) for f in files)}
    cached = cache.load_checked(cache_path, key=key, meta=meta, what="face cache",
                                check=lambda obj: _cache_problem(obj, names, files, image_size, skip_bad))
    if cached is not None:
        if cached["bad"]:
            first = people_root / cached["bad"][0]
            if not skip_bad:
                raise DataError(f"{first}: cannot be decoded (use {param('skip_bad_images')} to skip such files)")
            logger.warning("skipped %d bad image file(s), e.g. %s", len(cached["bad"]), first)
        _log_alignment(cached["alignment"], people_root)
        logger.info("loaded %d faces of %d people from the cache %s",
                    len(cached["labels"]), len(cached["names"]), cache_path)
        return FaceSet(cached["images"], cached["labels"], list(cached["names"]),
                       list(cached["files"]), people_root, dict(cached["alignment"]))

    faces, no_face, bad_rel = _decode(people_root, names, files, image_size, crop, align, skip_bad)
    cache.save_checked(cache_path, {"images": faces.images, "labels": faces.labels, "names": faces.names,
                                    "files": faces.files, "bad": bad_rel, "no_face": no_face,
                                    "alignment": faces.alignment}, key=key, meta=meta, what="face cache")
    logger.info("decoded %d faces of %d people from %s", len(faces), faces.num_people, people_root)
    return faces


def _decode(people_root: Path, names: list[str], files: list[list[Path]], image_size: int, crop: float,
            align: str, skip_bad: bool) -> tuple[FaceSet, list[str], list[str]]:
    """Decode (and find the face in) every file: the face set, the files without a face, the bad files."""
    flat = [p for person_files in files for p in person_files]
    person_of = [i for i, person_files in enumerate(files) for _ in person_files]
    how = _Tally(people_root, align, is_aligned_folder(people_root))

    def transform(img: Image.Image, path: Path) -> Image.Image:
        return how.prepare(img, path, image_size, crop)

    what = "decoding faces" if align == "center" or how.aligned_folder else "finding faces"
    if align != "center" and not how.aligned_folder:
        logger.info("finding the face and its five landmarks in %d images of %s (once: the result is cached)",
                    len(flat), people_root)
    arr, kept, bad = load_many(flat, transform, skip_bad=skip_bad, with_path=True,
                               progress=lambda it, total: progress(it, total, f"{what} in {people_root.name}"))
    alignment = how.counts()
    _log_alignment(alignment, people_root)
    if not kept:
        raise DataError(f"no image under {people_root} could be decoded"
                        + (" or holds a face" if alignment.get("no_face") else ""))
    # Relabel over the people that still have an image, keeping the sorted order.
    kept_person = torch.tensor([person_of[i] for i in kept], dtype=torch.int64)
    present, labels = torch.unique(kept_person, sorted=True, return_inverse=True)
    kept_names = [names[i] for i in present.tolist()]
    if len(kept_names) < len(names):
        dropped = sorted(set(names) - set(kept_names))
        logger.warning("dropped %d person(s) none of whose images could be used: %s",
                       len(dropped), ", ".join(dropped[:10]))
    rel = [flat[i].relative_to(people_root).as_posix() for i in kept]
    bad_rel = [b.path.relative_to(people_root).as_posix() for b in bad if not isinstance(b, NoFace)]
    no_face = [b.path.relative_to(people_root).as_posix() for b in bad if isinstance(b, NoFace)]
    faces = FaceSet(torch.from_numpy(arr), labels.to(torch.int64), kept_names, rel, people_root, alignment)
    return faces, no_face, bad_rel


class _Tally:
    """Prepares the images of one folder (from several threads) and counts how each face was found."""

    def __init__(self, root: Path, align: str, aligned_folder: bool):
        self.root, self.align, self.aligned_folder = root, align, aligned_folder
        self._lock = threading.Lock()
        self._how: dict[str, list[str]] = {"aligned": [], "center": [], "as-is": [], "no_face": [], "several": []}

    def prepare(self, img: Image.Image, path: Path, size: int, crop: float) -> Image.Image:
        rel = path.relative_to(self.root).as_posix()
        try:
            p = prepare(img, size, crop, self.align, str(path), self.aligned_folder)
        except NoFace:
            with self._lock:
                self._how["no_face"].append(rel)
            raise
        with self._lock:
            self._how[p.how].append(rel)
            if p.faces > 1:
                self._how["several"].append(rel)
        return p.image

    def counts(self) -> dict:
        """``{"align", "aligned", "center", "as_is", "no_face", "several"}`` counts, and the first files
        without a face (``"examples"``: the centre-cropped ones for auto, the skipped ones for detect)."""
        h = {k: sorted(v) for k, v in self._how.items()}
        missing = h["no_face"] or (h["center"] if self.align == "auto" else [])
        return {"align": "as-is (a folder written by cnnlab faces align)" if self.aligned_folder else self.align,
                "aligned": len(h["aligned"]), "center": len(h["center"]), "as_is": len(h["as-is"]),
                "no_face": len(h["no_face"]), "several": len(h["several"]), "examples": missing[:_SHOWN]}


def _log_alignment(a: dict, root: Path) -> None:
    """One log line per thing worth knowing about how the faces of ``root`` were found."""
    if not a or a.get("align") == "center":
        return
    if a.get("as_is"):
        logger.info("%s was written by cnnlab faces align (%s): its %d faces are used as they are",
                    root, ALIGNED_MARKER, a["as_is"])
        return
    shown = ", ".join(a.get("examples", []))
    logger.info("aligned %d face(s) of %s to the five-point template", a.get("aligned", 0), root)
    if a.get("align") == "auto" and a.get("center"):
        logger.info("no face found in %d image(s), which are centre-cropped instead (--align auto): %s%s",
                    a["center"], shown, " ..." if a["center"] > _SHOWN else "")
    if a.get("no_face"):
        logger.warning("skipped %d image(s) in which no face was found (--align detect): %s%s",
                       a["no_face"], shown, " ..." if a["no_face"] > _SHOWN else "")
    if a.get("several"):
        logger.info("%d image(s) hold several faces; of each, the one the photo is of (by the detector's "
                    "confidence, sharpness and size together) was used", a["several"])


# --------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Image indices into a :class:`FaceSet` for each split (int64, ascending)."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    def __iter__(self) -> Iterator[torch.Tensor]:
        return iter((self.train, self.val, self.test))


def _split_counts(n: int, fractions: Sequence[float], at_least: int = 1) -> list[int]:
    # Largest remainder, then make sure every split asked for gets ``at_least`` people
    # when there are enough to go round (else one each, when there are enough for that).
    raw = [f * n for f in fractions]
    counts = [int(r) for r in raw]
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    order = sorted(wanted, key=lambda i: raw[i] - counts[i], reverse=True)
    for t in range(n - sum(counts)):
        counts[order[t % len(order)]] += 1
    floor = next((k for k in (at_least, 1) if n >= k * len(wanted)), 0)
    for i in wanted:
        while counts[i] < floor:
            donor = max(range(len(counts)), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    return counts


MIN_EVAL_PEOPLE = 2
"""People with two or more images that every split asked for gets, when the set has enough.

Validation and test pairs need different people; with one person a split can
only form same-person pairs. So a small set (12 people, a 0.1 validation
fraction) still gives validation and test two people each, as long as there
are two for every split.
"""


def split_people(
    labels: torch.Tensor, fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0
) -> Split:
    """Identity-disjoint train / validation / test split, the same for the same seed.

    People with two or more images are shuffled and cut by ``fractions``;
    every split asked for gets at least :data:`MIN_EVAL_PEOPLE` of them when
    there are that many for each split (else at least one, when there are enough).
    People with a single image cannot form a positive pair; they are cut by
    the same fractions on their own, so every split keeps its share of them
    as impostors (the samplers below never take them as anchors, only as the
    other image of a negative pair). A fraction may be 0 (e.g. a test split
    of 0 when LFW's ``pairs.txt`` is the test).
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"split fractions must be three non-negative numbers (train, validation, test) "
            f"summing to 1, got {fractions}"
        )
    if fractions[0] == 0:
        raise ConfigError(f"split fractions must give the training split some people, got {fractions}")
    labels = torch.as_tensor(labels, dtype=torch.int64)
    people, counts = torch.unique(labels, return_counts=True)
    g = torch.Generator().manual_seed(int(seed))
    part_of = torch.empty(int(people.max()) + 1 if len(people) else 0, dtype=torch.int64)
    several = people[counts >= 2]
    for group in (several, people[counts == 1]):
        shuffled = group[torch.randperm(len(group), generator=g)]
        at_least = MIN_EVAL_PEOPLE if group is several else 1
        parts = torch.split(shuffled, _split_counts(len(group), fractions, at_least))
        for s, members in enumerate(parts):
            part_of[members] = s
    if fractions[0] > 0 and not bool((part_of[several] == 0).any()):
        raise DataError("the training split has no person with two or more images; a face set needs "
                        "people with several images to form positive pairs")
    where = part_of[labels]
    return Split(*(torch.nonzero(where == s).flatten() for s in range(3)))


def subsample_people(labels: torch.Tensor, idx: torch.Tensor, n: int | None, seed: int = 0) -> torch.Tensor:
    """``n`` of the images ``idx`` (ascending), whole people in a seeded random order, the last one cut to fit.

    Whole people keep the subset's positive pairs what they are in the full
    set; drawing images one by one would leave most people with one image.
    All of ``idx`` when ``n`` is None or not smaller.
    """
    idx = torch.as_tensor(idx, dtype=torch.int64)
    if n is None or n >= len(idx):
        return idx
    labels = torch.as_tensor(labels, dtype=torch.int64)
    people = torch.unique(labels[idx])
    order = people[torch.randperm(len(people), generator=torch.Generator().manual_seed(int(seed)))]
    rank = torch.empty(int(people.max()) + 1, dtype=torch.int64)
    rank[order] = torch.arange(len(order))
    by_person = idx[torch.argsort(rank[labels[idx]], stable=True)]  # each person's images stay in file order
    return by_person[:n].sort().values
