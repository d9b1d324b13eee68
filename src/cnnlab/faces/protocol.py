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

Everything here is index tensors into one decoded :class:`~cnnlab.data.faces.FaceSet`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.config import FaceTrainConfig
from cnnlab.data.faces import FaceSet, load_faces, split_people
from cnnlab.data.samplers import fixed_pairs, sample_triplets
from cnnlab.data.lfw import find_protocol_file, read_pairs, read_people, resolve_pairs, select_people
from cnnlab.errors import DataError

logger = logging.getLogger(__name__)

# Offsets that give the validation and test draws their own seeds, apart from training's.
_VAL_SEED, _TEST_SEED, _VAL_TRIPLET_SEED = 1_000_003, 2_000_003, 3_000_003


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

    def sizes(self) -> dict[str, int]:
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
        }


def positions(sorted_set: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Where each of ``idx`` sits in ``sorted_set`` (ascending, holding every value of ``idx``)."""
    return torch.searchsorted(sorted_set, idx)


def _pairs_among(faces: FaceSet, images: torch.Tensor, seed: int, what: str, option: str) -> Pairs:
    """Seeded study pairs among ``images``, checked to be possible, with a message naming the option."""
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


def _split_default(cfg: FaceTrainConfig, faces: FaceSet) -> StudyData:
    fractions = (1.0 - cfg.val_fraction - cfg.test_fraction, cfg.val_fraction, cfg.test_fraction)
    split = split_people(faces.labels, fractions, seed=cfg.seed)
    val_pairs = _pairs_among(faces, split.val, cfg.seed + _VAL_SEED, "validation", "--val-fraction")
    test_pairs = _pairs_among(faces, split.test, cfg.seed + _TEST_SEED, "test", "--test-fraction")
    val_triplets = _val_triplets(faces, split.val, cfg.seed + _VAL_TRIPLET_SEED)
    return StudyData(faces, split.train, split.val, val_pairs, val_triplets, test_pairs, split.test, "none")


def _split_lfw_view1(cfg: FaceTrainConfig, faces: FaceSet) -> StudyData:
    train_file = find_protocol_file("peopleDevTrain.txt", cfg.data_dir, cfg.protocol_dir)
    train_people = read_people(train_file)
    train_all = select_people(faces, train_people.names, train_file)
    # The validation group: whole people of DevTrain, so it is identity-disjoint from training too.
    inner = split_people(faces.labels[train_all], (1.0 - cfg.val_fraction, cfg.val_fraction, 0.0), seed=cfg.seed)
    train, val = train_all[inner.train], train_all[inner.val]

    pairs_file = find_protocol_file("pairsDevTest.txt", cfg.data_dir, cfg.protocol_dir)
    pair_list = read_pairs(pairs_file)
    i, j = resolve_pairs(pair_list, faces)
    test_pairs = Pairs(i, j, pair_list.same.to(torch.float32))
    try:
        test_file = find_protocol_file("peopleDevTest.txt", cfg.data_dir, cfg.protocol_dir)
        test_images = select_people(faces, read_people(test_file).names, test_file)
    except DataError as e:
        logger.info("retrieval over the test-pair images only (%s)", e)
        test_images = torch.empty(0, dtype=torch.int64)
    test_images = torch.unique(torch.cat([test_images, test_pairs.images()]))
    overlap = torch.isin(faces.labels[test_images], faces.labels[train_all])
    if bool(overlap.any()):
        logger.warning("%d test image(s) belong to training people; View 1 is meant to be identity-disjoint",
                       int(overlap.sum()))
    val_pairs = _pairs_among(faces, val, cfg.seed + _VAL_SEED, "validation", "--val-fraction")
    return StudyData(faces, train, val, val_pairs, _val_triplets(faces, val, cfg.seed + _VAL_TRIPLET_SEED),
                     test_pairs, test_images, "lfw-view1")


def load_study_data(cfg: FaceTrainConfig, faces: FaceSet | None = None) -> StudyData:
    """Decode (or read from the cache) ``cfg.data_dir`` and split it as ``cfg.protocol`` says.

    ``faces``: the set already loaded from ``cfg.data_dir`` with ``cfg``'s size and crop, so a
    command that holds it does not load (and announce) it a second time.
    """
    if faces is None:
        if cfg.download:
            from cnnlab.data.lfw import download_lfw_if_missing

            download_lfw_if_missing(cfg.data_dir)
        faces = load_faces(cfg.data_dir, image_size=cfg.image_size, crop=cfg.crop, skip_bad=cfg.skip_bad_images,
                           align=cfg.align)
    data = _split_lfw_view1(cfg, faces) if cfg.protocol == "lfw-view1" else _split_default(cfg, faces)
    if not bool((torch.unique(faces.labels[data.train], return_counts=True)[1] >= 2).any()):
        raise DataError(f"no training person in {faces.root} has two or more images, so there is nothing to "
                        "learn from")
    n = data.sizes()
    logger.info("split (%s, seed %d): train %d people (%d images); validation %d people (%d images, %d pairs); "
                "test %d people (%d images, %d pairs)", data.protocol, cfg.seed, n["num_train_people"],
                n["num_train_images"], n["num_val_people"], n["num_val_images"], n["num_val_pairs"],
                n["num_test_people"], n["num_test_images"], n["num_test_pairs"])
    return data


def data_root(cfg: FaceTrainConfig) -> Path:
    """The people folder of a run's data (for reading images again, e.g. thumbnails)."""
    from cnnlab.data.faces import find_people_root

    return find_people_root(cfg.data_dir)
