import torch
import pytest

from cnnlab.data.samplers import PKBatchSampler, fixed_pairs, sample_pairs, sample_triplets
from cnnlab.errors import ConfigError, DataError


def _labels(counts: list[int]) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))


# --------------------------------------------------------------------------- pairs and triplets

COUNTS = [3, 4, 5, 1, 2, 6, 1, 3, 2, 1]


def test_pairs_are_valid_and_half_positive():
    labels = _labels(COUNTS)
    gen = torch.Generator().manual_seed(0)
    multi = torch.tensor([c >= 2 for c in COUNTS])[labels]
    ys = []
    for _ in range(50):
        i, j, y = sample_pairs(labels, gen)
        assert i.dtype == j.dtype == torch.int64 and y.dtype == torch.float32
        # Every image of a person with >= 2 images is an anchor exactly once.
        assert sorted(i.tolist()) == torch.nonzero(multi).flatten().tolist()
        pos, neg = y == 1, y == 0
        assert torch.equal(labels[i[pos]], labels[j[pos]]) and bool((i[pos] != j[pos]).all())
        assert bool((labels[i[neg]] != labels[j[neg]]).all())
        assert bool((i != j).all())
        ys.append(y)
    assert float(torch.cat(ys).mean()) == pytest.approx(0.5, abs=0.04)


def test_pairs_triplets_and_pk_on_unsorted_labels_with_gaps():
    # Labels of a split: person ids with gaps, images in any order.
    perm = torch.randperm(sum(COUNTS), generator=torch.Generator().manual_seed(3))
    labels = _labels(COUNTS)[perm] * 7 + 3
    gen = torch.Generator().manual_seed(0)
    i, j, y = sample_pairs(labels, gen)
    pos = y == 1
    assert torch.equal(labels[i[pos]], labels[j[pos]]) and bool((i != j).all())
    assert bool((labels[i[~pos]] != labels[j[~pos]]).all())
    a, p, n = sample_triplets(labels, gen)
    assert torch.equal(labels[a], labels[p]) and bool((a != p).all()) and bool((labels[a] != labels[n]).all())
    for batch in PKBatchSampler(labels, 3, 2, gen):
        people = labels[torch.tensor(batch)].view(3, 2)
        assert bool((people[:, 0] == people[:, 1]).all()) and len(set(people[:, 0].tolist())) == 3


def test_negatives_reach_everybody_else_including_one_image_people():
    labels = _labels(COUNTS)
    gen = torch.Generator().manual_seed(0)
    # The anchor 0 repeated: one call gives many independent draws for it.
    i, j, y = sample_pairs(labels, gen, anchors=torch.zeros(5000, dtype=torch.int64))
    assert set(j[y == 1].tolist()) == {1, 2}
    hits = torch.bincount(j[y == 0], minlength=len(labels))
    assert int(hits[: COUNTS[0]].sum()) == 0
    # Uniform over the other 26 images: about 2500 / 26 = 96 each.
    assert int(hits[COUNTS[0]:].min()) > 50 and int(hits.max()) < 150


def test_validation_pairs_repeat_and_training_pairs_change():
    labels = _labels(COUNTS)
    a = fixed_pairs(labels, seed=7)
    b = fixed_pairs(labels, seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    gen = torch.Generator().manual_seed(7)
    epoch1, epoch2 = sample_pairs(labels, gen), sample_pairs(labels, gen)
    assert not all(torch.equal(x, y) for x, y in zip(epoch1, epoch2))


def test_pairs_on_a_large_set_stay_vectorised():
    # 100k images of 20k people: a Python loop per image would be far slower than this allows.
    labels = torch.sort(torch.randint(0, 20_000, (100_000,), generator=torch.Generator().manual_seed(0))).values
    i, j, y = sample_pairs(labels, torch.Generator().manual_seed(1))
    pos = y == 1
    assert torch.equal(labels[i[pos]], labels[j[pos]]) and bool((labels[i[~pos]] != labels[j[~pos]]).all())
    assert bool((i != j).all())


def test_pair_errors():
    with pytest.raises(DataError, match="no person has two or more images"):
        sample_pairs(_labels([1, 1, 1]), torch.Generator())
    with pytest.raises(DataError, match="same person"):
        sample_pairs(_labels([4]), torch.Generator())
    with pytest.raises(ValueError, match="at least two images"):
        sample_pairs(_labels([1, 3]), torch.Generator(), anchors=torch.tensor([0]))


def test_triplets_are_valid():
    labels = _labels(COUNTS)
    gen = torch.Generator().manual_seed(0)
    a, p, n = sample_triplets(labels, gen)
    assert len(a) == sum(c for c in COUNTS if c >= 2)
    assert torch.equal(labels[a], labels[p]) and bool((a != p).all())
    assert bool((labels[a] != labels[n]).all())
    again = sample_triplets(labels, torch.Generator().manual_seed(0))
    assert all(torch.equal(x, y) for x, y in zip((a, p, n), again))


# --------------------------------------------------------------------------- P x K batches


def test_pk_batches_hold_p_people_with_k_images_each():
    counts = [2, 3, 4, 6, 8, 1, 5, 2, 7, 3, 1, 4]
    labels = _labels(counts)
    sampler = PKBatchSampler(labels, p=4, k=3, generator=torch.Generator().manual_seed(0))
    eligible = sum(c for c in counts if c >= 2)
    assert len(sampler) == eligible // 12
    batches = list(sampler)
    assert len(batches) == len(sampler)
    seen = set()
    for batch in batches:
        assert len(batch) == 12
        people = labels[torch.tensor(batch)].view(4, 3)
        assert bool((people == people[:, :1]).all())  # K images of one person per row
        assert len(set(people[:, 0].tolist())) == 4  # P different people
        for row, person in zip(torch.tensor(batch).view(4, 3), people[:, 0].tolist()):
            assert counts[person] >= 2
            # Enough images: K different ones; fewer: every one of them.
            assert len(set(row.tolist())) == min(3, counts[person])
            seen.add(person)
    # Over a few epochs every eligible person comes up.
    for _ in range(5):
        for batch in sampler:
            seen.update(labels[torch.tensor(batch)].tolist())
    assert seen == {p for p, c in enumerate(counts) if c >= 2}


def test_pk_is_deterministic_given_the_generator():
    labels = _labels([3, 4, 5, 2, 6, 4, 3])
    a = list(PKBatchSampler(labels, 3, 2, torch.Generator().manual_seed(5)))
    b = list(PKBatchSampler(labels, 3, 2, torch.Generator().manual_seed(5)))
    assert a == b
    sampler = PKBatchSampler(labels, 3, 2, torch.Generator().manual_seed(5))
    assert list(sampler) != list(sampler)  # the next epoch differs


def test_pk_errors():
    with pytest.raises(DataError, match="at least 4 people with two or more images"):
        PKBatchSampler(_labels([3, 3, 3, 1, 1]), p=4, k=2)
    with pytest.raises(ConfigError, match="k \\(images a person\\) must be"):
        PKBatchSampler(_labels([3, 3, 3]), p=2, k=1)
