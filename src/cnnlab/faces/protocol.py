"""What a face run trains, validates and tests on, for each ``--protocol``.

``--protocol none`` (any folder-per-person set): people are split
identity-disjoint into train / validation / test with ``--seed``; validation
and test pairs are drawn once, seeded, from their own people, as in the study
(for every anchor image a same-person partner with probability 0.5, else
someone else).

``--protocol lfw-view1`` (LFW's development view): the people of
``peopleDevTrain.txt`` are the training people, less a validation group held
back from them (``--val-fraction`` of them, identity-disjoint from the rest);
the test is the 1,000 pairs of ``pairsDevTest.txt``, whose people
(``peopleDevTest.txt``) never appear in training. Those people's images are
also the retrieval set (precision@1, MAP@R, nearest neighbours).

``--max-train-images N`` trains on N of the training images (whole people
drawn with ``--seed``, the last one cut to fit); validation and test stay
as they are without it. The choice is made on the folder's listing, so
only the images the run uses are decoded and searched for faces: on LFW
View 1, N images, the validation group's and the test pairs' (the test
people's other images are then left out of the retrieval set).

Everything here is index tensors into one decoded :class:`~cnnlab.data.faces.FaceSet`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cnnlab.config import FaceTrainConfig
from cnnlab.data.faces import FaceListing, FaceSet, list_faces, load_faces, split_people, subsample_people
from cnnlab.data.lfw import (PairList, PeopleList, find_protocol_file, read_pairs, read_people, resolve_pairs,
                             select_people)
from cnnlab.data.samplers import fixed_pairs, sample_triplets
from cnnlab.errors import DataError, param

logger = logging.getLogger(__name__)

# Offsets that give the validation and test draws and the training subset their own seeds, apart from training's.
_VAL_SEED, _TEST_SEED, _VAL_TRIPLET_SEED, _SUBSET_SEED = 1_000_003, 2_000_003, 3_000_003, 4_000_003


@dataclass
class Pairs:
    """Verification pairs as indices into a FaceSet: ``i``, ``j`` int64 (M,), ``same`` float32 (M,) of 1/0."""

    i: torch.Tensor
    j: torch.Tensor
    same: torch.Tensor

    def __len__(self) -> int:
        return len(self.same)

    def images(self) -> torch.Tensor:
        """The distinct images the pairs use, ascending."""
        return torch.unique(torch.cat([self.i, self.j]))


@dataclass
class StudyData:
    """A decoded face set and the index sets a run uses (all int64, into ``faces``)."""

    faces: FaceSet
    train: torch.Tensor  # images of the training people
    val: torch.Tensor  # images of the validation people
    val_pairs: Pairs
    val_triplets: tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (a, p, n), for the triplet loss's val loss
    test_pairs: Pairs
    test_images: torch.Tensor  # retrieval set: the test people's images (ascending, holds every test-pair image)
    protocol: str
    subset: dict | None = None  # the training subset (--max-train-images) and what it was drawn from; None: all

    def sizes(self) -> dict[str, Any]:
        people = lambda idx: int(torch.unique(self.faces.labels[idx]).numel())
        return {
            "num_train_images": len(self.train),
            "num_train_people": people(self.train),
            "num_val_images": len(self.val),
            "num_val_people": people(self.val),
            "num_val_pairs": len(self.val_pairs),
            "num_test_pairs": len(self.test_pairs),
            "num_test_images": len(self.test_images),
            "num_test_people": people(self.test_images),
            "train_subset": self.subset,
        }


def positions(sorted_set: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Where each of ``idx`` sits in ``sorted_set`` (ascending, holding every value of ``idx``)."""
    return torch.searchsorted(sorted_set, idx)


def _pairs_among(faces: FaceSet, images: torch.Tensor, seed: int, what: str, option: str) -> Pairs:
    """Seeded study pairs among ``images``, checked to be possible, with a message naming the
    parameter ``option`` (see :func:`~cnnlab.errors.param`)."""
    labels = faces.labels[images]
    people, counts = torch.unique(labels, return_counts=True)
    if len(people) < 2 or not bool((counts >= 2).any()):
        raise DataError(
            f"the {what} people ({len(people)} person(s), {int((counts >= 2).sum())} with two or more images) "
            f"cannot form both same-person and different-people pairs; {option} needs to give this split at "
            f"least two people, one of them with two or more images (the set has {faces.num_people} people)"
        )
    i, j, same = fixed_pairs(labels, seed=seed)
    if not bool(same.any()) or bool(same.all()):
        raise DataError(f"the {what} pairs drawn are all of one kind ({len(same)} pairs); {option} needs to give "
                        f"this split more people or images")
    return Pairs(images[i], images[j], same)


def _val_triplets(faces: FaceSet, val: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    a, p, n = sample_triplets(faces.labels[val], torch.Generator().manual_seed(seed))
    return val[a], val[p], val[n]


@dataclass
class _View1:
    """View 1's protocol files, found and parsed before any image is listed or decoded."""

    train_people: PeopleList
    test_pairs: PairList
    test_people: PeopleList | None  # None: retrieval over the test-pair images only


def _read_view1(cfg: FaceTrainConfig) -> _View1:
    """The protocol files of ``--protocol lfw-view1``: a missing or malformed one is refused here, in seconds,
    not after minutes of finding faces."""
    where = (cfg.data_dir, cfg.protocol_dir)
    train_file = find_protocol_file("peopleDevTrain.txt", *where, what="View 1's training people")
    pairs_file = find_protocol_file("pairsDevTest.txt", *where, what="View 1's test pairs")
    train_people, test_pairs = read_people(train_file), read_pairs(pairs_file)
    try:
        test_people = read_people(find_protocol_file("peopleDevTest.txt", *where, what="View 1's test people"))
    except DataError as e:
        logger.info("retrieval over the test-pair images only (%s)", e)
        test_people = None
    return _View1(train_people, test_pairs, test_people)


@dataclass
class _Plan:
    """The images a run uses, as indices (int64, ascending) into a listing or a decoded face set."""

    train: torch.Tensor
    val: torch.Tensor
    test_images: torch.Tensor  # --protocol none: the test people's images; lfw-view1: at least the test pairs'
    subset: dict | None = None  # what --max-train-images chose, for the run's summary

    def needed(self) -> torch.Tensor:
        return torch.unique(torch.cat([self.train, self.val, self.test_images]))

    def onto(self, listing: FaceListing, faces: FaceSet) -> _Plan:
        """The same images as indices into ``faces``, decoded from ``listing``; files that did not decode drop out."""
        position = {f: k for k, f in enumerate(faces.files)}

        def move(idx: torch.Tensor) -> torch.Tensor:  # both are sorted by person, then file: order is kept
            found = [position.get(listing.files[i]) for i in idx.tolist()]
            return torch.tensor([k for k in found if k is not None], dtype=torch.int64)

        return _Plan(move(self.train), move(self.val), move(self.test_images), self.subset)


def _plan(cfg: FaceTrainConfig, catalog: FaceListing | FaceSet, view1: _View1 | None) -> _Plan:
    """Split ``catalog`` as ``cfg.protocol`` says and draw ``cfg.max_train_images`` from its training people.

    Validation and test are the same with and without a subset (for the same
    seed and files), so a run on a subset is scored as the full run is.
    """
    if view1 is None:
        fractions = (1.0 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
        pool, val, test = split_people(catalog.labels, fractions, seed=cfg.seed)
    else:
        people = view1.train_people
        train_all = select_people(catalog, people.names, people.source)
        # The validation group: whole people of DevTrain, so it is identity-disjoint from training too.
        inner = split_people(catalog.labels[train_all], (1.0 - cfg.val_fraction, cfg.val_fraction, 0.0),
                             seed=cfg.seed)
        pool, val = train_all[inner.train], train_all[inner.val]
        test = _view1_test_images(cfg, catalog, view1)
    train = subsample_people(catalog.labels, pool, cfg.max_train_images, cfg.seed + _SUBSET_SEED)
    if cfg.max_train_images is None:
        return _Plan(train, val, test)
    people = lambda idx: int(torch.unique(catalog.labels[idx]).numel())
    subset = {"max_train_images": cfg.max_train_images, "seed": cfg.seed, "images": len(train),
              "people": people(train), "of_images": len(pool), "of_people": people(pool)}
    if not bool((torch.unique(catalog.labels[train], return_counts=True)[1] >= 2).any()):
        raise DataError(f"the {len(train)} training image(s) chosen ({subset['people']} person(s)) hold no person "
                        f"with two or more images, so there is nothing to learn from; ask for more of the "
                        f"{len(pool)} training images of {catalog.root}")
    return _Plan(train, val, test, subset)


def _view1_test_images(cfg: FaceTrainConfig, catalog: FaceListing | FaceSet, view1: _View1) -> torch.Tensor:
    """The test pairs' images (checked to exist), and the test people's when the run decodes them."""
    i, j = resolve_pairs(view1.test_pairs, catalog)
    pair_images = torch.unique(torch.cat([i, j]))
    if view1.test_people is None:
        return pair_images
    if cfg.max_train_images is not None:  # a quick run: only the images it scores are decoded
        logger.info("retrieval over the %d test-pair images only (a run on a subset decodes none of the test "
                    "people's other images)", len(pair_images))
        return pair_images
    try:
        people = select_people(catalog, view1.test_people.names, view1.test_people.source)
    except DataError as e:
        logger.info("retrieval over the test-pair images only (%s)", e)
        return pair_images
    return torch.unique(torch.cat([people, pair_images]))


def _check_listing(listing: FaceListing, view1: _View1 | None) -> None:
    """View 1's training people and test-pair images are in the folder: checked before any image is decoded."""
    if view1 is not None:
        select_people(listing, view1.train_people.names, view1.train_people.source)
        resolve_pairs(view1.test_pairs, listing)


def _study(cfg: FaceTrainConfig, faces: FaceSet, plan: _Plan, view1: _View1 | None) -> StudyData:
    """The pairs and triplets of ``plan``'s images, drawn (or, for View 1's test, read) on the decoded ``faces``."""
    val_pairs = _pairs_among(faces, plan.val, cfg.seed + _VAL_SEED, "validation", param("val_fraction"))
    val_triplets = _val_triplets(faces, plan.val, cfg.seed + _VAL_TRIPLET_SEED)
    if view1 is None:
        test_pairs = _pairs_among(faces, plan.test_images, cfg.seed + _TEST_SEED, "test", param("test_fraction"))
        return StudyData(faces, plan.train, plan.val, val_pairs, val_triplets, test_pairs, plan.test_images,
                         "none", plan.subset)
    i, j = resolve_pairs(view1.test_pairs, faces)
    test_pairs = Pairs(i, j, view1.test_pairs.same.to(torch.float32))
    test_images = torch.unique(torch.cat([plan.test_images, test_pairs.images()]))
    overlap = torch.isin(faces.labels[test_images], faces.labels[torch.cat([plan.train, plan.val])])
    if bool(overlap.any()):
        logger.warning("%d test image(s) belong to training people; View 1 is meant to be identity-disjoint",
                       int(overlap.sum()))
    return StudyData(faces, plan.train, plan.val, val_pairs, val_triplets, test_pairs, test_images, "lfw-view1",
                     plan.subset)


def _load_planned(cfg: FaceTrainConfig, view1: _View1 | None) -> tuple[FaceSet, _Plan]:
    """List ``cfg.data_dir``, check it against the protocol files, and decode what the run uses (see below)."""
    listing = list_faces(cfg.data_dir, cfg.skip_bad_images)
    load = lambda what: load_faces(what, image_size=cfg.image_size, crop=cfg.crop, skip_bad=cfg.skip_bad_images,
                                   align=cfg.align)
    if cfg.max_train_images is None:
        _check_listing(listing, view1)
        faces = load(listing)
        return faces, _plan(cfg, faces, view1)
    plan = _plan(cfg, listing, view1)
    needed = plan.needed()
    logger.info("training on %d images of %d people drawn (seed %d) from the %d training images of %d people; "
                "decoding those, the validation and the test images: %d of the %d images of %s",
                plan.subset["images"], plan.subset["people"], cfg.seed, plan.subset["of_images"],
                plan.subset["of_people"], len(needed), len(listing), listing.root)
    faces = load(listing.only(needed))
    return faces, plan.onto(listing, faces)


def load_study_data(cfg: FaceTrainConfig, faces: FaceSet | None = None) -> StudyData:
    """Decode (or read from the cache) what ``cfg`` uses of ``cfg.data_dir``, split as ``cfg.protocol`` says.

    The cheap steps come first: the protocol files are found and parsed and
    the folder is listed (and checked against them) before any image is
    decoded. Without ``cfg.max_train_images`` the whole folder is then
    decoded and split on the faces that decoded, as runs always have been;
    with it, the split and the subset are chosen on the listing and only
    their images (the subset, validation, test) are decoded and searched for
    faces. ``faces``: the set already loaded from ``cfg.data_dir`` with
    ``cfg``'s size and crop, so a command that holds it does not load (and
    announce) it a second time.
    """
    if faces is None and cfg.download:
        from cnnlab.data.lfw import download_lfw_if_missing

        download_lfw_if_missing(cfg.data_dir)
    view1 = _read_view1(cfg) if cfg.protocol == "lfw-view1" else None
    faces, plan = (faces, _plan(cfg, faces, view1)) if faces is not None else _load_planned(cfg, view1)
    data = _study(cfg, faces, plan, view1)
    if not bool((torch.unique(faces.labels[data.train], return_counts=True)[1] >= 2).any()):
        raise DataError(f"no training person in {faces.root} has two or more images, so there is nothing to "
                        "learn from")
    n = data.sizes()
    logger.info("split (%s, seed %d): train %d people (%d images%s); validation %d people (%d images, %d pairs); "
                "test %d people (%d images, %d pairs)", data.protocol, cfg.seed, n["num_train_people"],
                n["num_train_images"], ", a subset" if data.subset else "", n["num_val_people"],
                n["num_val_images"], n["num_val_pairs"], n["num_test_people"], n["num_test_images"],
                n["num_test_pairs"])
    return data


def data_root(cfg: FaceTrainConfig) -> Path:
    """The people folder of a run's data (for reading images again, e.g. thumbnails)."""
    from cnnlab.data.faces import find_people_root

    return find_people_root(cfg.data_dir)
