"""What the losses train on, drawn from person labels: pairs, triplets and P x K batches.

Every function takes ``labels`` (the person id of each image of the set it
samples from, e.g. ``faces.labels[split.train]``) and returns indices into
that same ``labels``; map them back with ``split.train[i]``. Everything is
vectorised: no per-pair Python.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Sampler

from cnnlab.errors import ConfigError, DataError

def _groups(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(order, start, size)``: the label-sorted image indices, and for each
    image where its person's block starts in that order and how long it is."""
    order = torch.argsort(labels, stable=True)  # (N,)
    _, inverse, counts = torch.unique_consecutive(labels[order], return_inverse=True, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts  # (G,)
    start_sorted = starts[inverse]  # (N,) in sorted order
    start = torch.empty_like(start_sorted)
    size = torch.empty_like(start_sorted)
    start[order] = start_sorted
    size[order] = counts[inverse]
    return order, start, size


def _uniform_below(high: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An integer uniform in [0, high) for each element of ``high`` (all > 0)."""
    u = torch.rand(high.shape, generator=generator, dtype=torch.float64)
    return torch.minimum((u * high).long(), high - 1)  # min guards the rare float round-up


def _anchors(labels: torch.Tensor, size: torch.Tensor, anchors: torch.Tensor | None) -> torch.Tensor:
    if anchors is None:
        anchors = torch.nonzero(size >= 2).flatten()
    else:
        anchors = torch.as_tensor(anchors, dtype=torch.int64).flatten()
        if len(anchors) and (anchors.min() < 0 or anchors.max() >= len(labels)):
            raise ValueError(f"anchors must index labels (0..{len(labels) - 1})")
        if bool((size[anchors] < 2).any()):
            raise ValueError("every anchor must belong to a person with at least two images")
    if len(anchors) == 0:
        raise DataError("no person has two or more images, so no positive pair can be formed")
    return anchors


def _positives(a: torch.Tensor, order, start, size, generator) -> torch.Tensor:
    # Another image of the anchor's person, never the anchor: draw a rank among
    # the other size-1 images and step over the anchor's own rank.
    rank = torch.empty_like(start)
    rank[order] = torch.arange(len(order))
    rank = rank - start
    other = _uniform_below(size[a] - 1, generator)
    other = other + (other >= rank[a]).long()
    return order[start[a] + other]


def _negatives(a: torch.Tensor, order, start, size, generator) -> torch.Tensor:
    # Uniform over the images of everybody else, exactly and without
    # resampling: draw a position among the N - size others in label-sorted
    # order and jump over the anchor's own block.
    n = len(order)
    if bool((size[a] >= n).any()):
        raise DataError("every image belongs to the same person, so no negative pair can be formed")
    pos = _uniform_below(n - size[a], generator)
    pos = pos + size[a] * (pos >= start[a]).long()
    return order[pos]


def sample_pairs(
    labels: torch.Tensor, generator: torch.Generator, anchors: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One pair per anchor, as in the study: same person with probability 0.5, else another.

    ``anchors`` defaults to every image whose person has at least two images
    (people with one image appear only as the other half of negative pairs).
    A positive partner is another image of the anchor's person (never the
    anchor itself), uniformly; a negative partner is uniform over the images
    of all other people. Returns ``(i, j, y)``: int64 indices into ``labels``
    and float32 ``y`` (1 same person, 0 different), in a random order. Pass a
    generator that moves on between epochs for fresh pairs each epoch.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    order, start, size = _groups(labels)
    a = _anchors(labels, size, anchors)
    a = a[torch.randperm(len(a), generator=generator)]
    same = torch.rand(len(a), generator=generator) < 0.5
    j = torch.where(same, _positives(a, order, start, size, generator), _negatives(a, order, start, size, generator))
    return a, j, same.to(torch.float32)


def fixed_pairs(
    labels: torch.Tensor, seed: int = 0, anchors: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`sample_pairs` with its own seeded generator: the same pairs on every call (validation, test)."""
    return sample_pairs(labels, torch.Generator().manual_seed(int(seed)), anchors)


def sample_triplets(
    labels: torch.Tensor, generator: torch.Generator, anchors: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One triplet ``(a, p, n)`` per anchor, in a random order: p another image of a's person, n someone else's.

    Anchors and the draws of partners are as in :func:`sample_pairs`.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    order, start, size = _groups(labels)
    a = _anchors(labels, size, anchors)
    a = a[torch.randperm(len(a), generator=generator)]
    return a, _positives(a, order, start, size, generator), _negatives(a, order, start, size, generator)


class PKBatchSampler(Sampler[list[int]]):
    """Batches of ``p`` different people with ``k`` images each, for triplet mining in the batch.

    Only people with at least two images take part (one image repeated k
    times would give only zero-distance positives). People are visited in a
    fresh random order each epoch, so every one comes up about equally often;
    a person with at least ``k`` images gives ``k`` different ones, a person
    with fewer gives all of them and then draws again from them. An epoch is
    ``max(1, n // (p * k))`` batches, n the images of the people taking part.
    The batches hold indices into ``labels`` and depend only on the
    generator's state (use it as ``DataLoader(..., batch_sampler=...)``).
    """

    def __init__(self, labels: torch.Tensor, p: int, k: int, generator: torch.Generator | None = None):
        if not isinstance(p, int) or p < 2:
            raise ConfigError(f"p (people a batch) must be an integer of at least 2, got {p!r}")
        if not isinstance(k, int) or k < 2:
            raise ConfigError(f"k (images a person) must be an integer of at least 2, got {k!r}")
        labels = torch.as_tensor(labels, dtype=torch.int64)
        order = torch.argsort(labels, stable=True)
        _, counts = torch.unique_consecutive(labels[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        keep = counts >= 2
        self._order = order
        self._starts = starts[keep]  # (P_all,)
        self._counts = counts[keep]  # (P_all,)
        if len(self._counts) < p:
            raise DataError(
                f"P x K batches need at least {p} people with two or more images; this set has {len(self._counts)}"
            )
        self.p, self.k = p, k
        self.generator = generator if generator is not None else torch.Generator().manual_seed(
            int(torch.randint(0, 2**62, (1,)).item()))
        self._batches = max(1, int(self._counts.sum()) // (p * k))

    def __len__(self) -> int:
        return self._batches

    def _people(self) -> torch.Tensor:
        """(batches, p) person positions, p different ones per row, from successive permutations."""
        n = len(self._counts)
        rows, pending = [], torch.empty(0, dtype=torch.int64)
        while len(rows) < self._batches:
            perm = torch.randperm(n, generator=self.generator)
            # Leftovers of the last permutation first, then the new one without them,
            # so a batch never holds the same person twice.
            stream = torch.cat([pending, perm[~torch.isin(perm, pending)]])
            full = len(stream) // self.p
            rows.extend(stream[: full * self.p].view(full, self.p))
            pending = stream[full * self.p :]
        return torch.stack(rows[: self._batches])

    def __iter__(self) -> Iterator[list[int]]:
        people = self._people()  # (B, P)
        counts = self._counts[people]  # (B, P)
        width = int(self._counts.max())
        # A random permutation of each person's images: sort random keys, with
        # the slots past the person's count pushed to the end.
        keys = torch.rand((*people.shape, width), generator=self.generator)
        keys = keys.masked_fill(torch.arange(width) >= counts.unsqueeze(-1), 2.0)
        rank = torch.argsort(keys, dim=-1)[..., : self.k]  # (B, P, min(k, width))
        if rank.shape[-1] < self.k:
            rank = torch.cat([rank, rank.new_zeros((*rank.shape[:-1], self.k - rank.shape[-1]))], -1)
        # Slots beyond a small person's count draw again from their images.
        extra = _uniform_below(counts.unsqueeze(-1).expand(-1, -1, self.k), self.generator)
        rank = torch.where(torch.arange(self.k) >= counts.unsqueeze(-1), extra, rank)
        index = self._order[self._starts[people].unsqueeze(-1) + rank]  # (B, P, K)
        for batch in index.view(len(index), -1):
            yield batch.tolist()
