"""Losses for Siamese embeddings, and the miners that pick triplets from a batch.

Laid out like pytorch-metric-learning: a distance object, one reduction shared
by every loss, losses that take embeddings, and miners that return index
tensors into a labelled batch.

* Contrastive loss (Hadsell, Chopra and LeCun, "Dimensionality Reduction by
  Learning an Invariant Mapping", CVPR 2006), in the study's form with a
  squared margin: ``y * d**2 + (1 - y) * max(0, m**2 - d**2)``.
* Triplet margin loss (Schroff, Kalenichenko and Philbin, "FaceNet", CVPR
  2015): ``max(d(a, p) - d(a, n) + margin, 0)``, with semi-hard negatives as in
  FaceNet and batch-hard mining as in Hermans, Beyer and Leibe, "In Defense of
  the Triplet Loss for Person Re-Identification", 2017.

The face study trains through :class:`FaceLoss` objects, registered by the
name ``--loss`` gives (:func:`register_face_loss`). Each says what it needs
from a batch (pairs, or labelled P x K batches it mines itself), builds an
epoch's batches from the training people, scores a batch's embeddings, and
scores the fixed validation pairs or triplets; training has no branch per
loss.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cnnlab.data.samplers import PKBatchSampler, sample_pairs
from cnnlab.errors import ConfigError

__all__ = [
    "LpDistance",
    "REDUCTIONS",
    "reduce_losses",
    "ContrastiveLoss",
    "TripletMarginLoss",
    "Triplets",
    "TripletMiner",
    "BatchHardMiner",
    "SemiHardMiner",
    "AllTripletsMiner",
    "MINERS",
    "create_miner",
    "FaceLoss",
    "ContrastiveFaceLoss",
    "TripletFaceLoss",
    "register_face_loss",
    "face_loss_names",
    "face_loss_class",
]

REDUCTIONS = ("mean", "sum", "none")


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with a finite gradient at 0; NaN stays NaN.

    The derivative of sqrt is infinite at 0 (two identical embeddings), and
    ``inf * 0`` in the chain rule is NaN. Where ``x <= 0`` the square root of 1
    is taken instead and then masked out, so the value there is exactly 0 and
    its gradient 0. A NaN (embeddings of a broken network) is not ``<= 0`` and
    so stays NaN: a distance of 0 would call any two faces the same person.
    """
    zero = x <= 0
    root = torch.sqrt(torch.where(zero, torch.ones_like(x), x))
    return torch.where(zero, torch.zeros_like(x), root)


def _check_embeddings(x: Tensor, name: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{name} must be (N, D) embeddings, got shape {tuple(x.shape)}")


class LpDistance:
    """Euclidean (L2) distance between embeddings, named as in pytorch-metric-learning.

    With ``normalize_embeddings`` every embedding is scaled to unit length
    first, so distances lie in [0, 2]. Half-precision inputs are computed in
    float32, and outside autocast, because ``|x|^2 + |y|^2 - 2 x.y`` cancels
    badly in 16 bits.
    """

    def __init__(self, normalize_embeddings: bool = False):
        self.normalize_embeddings = normalize_embeddings

    def __repr__(self) -> str:
        return f"LpDistance(normalize_embeddings={self.normalize_embeddings})"

    def _prepare(self, x: Tensor) -> Tensor:
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return F.normalize(x, p=2, dim=1) if self.normalize_embeddings else x

    def pairwise_squared(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(N, M) squared distances between every row of ``x`` and every row of ``y`` (default ``x``)."""
        same = y is None or y is x
        _check_embeddings(x, "x")
        if not same:
            _check_embeddings(y, "y")
            if y.shape[1] != x.shape[1]:
                raise ValueError(f"x and y differ in embedding size: {x.shape[1]} vs {y.shape[1]}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = self._prepare(x)
            y = x if same else self._prepare(y)
            # Distances ignore a common shift; removing the mean keeps the expansion below from
            # cancelling large norms (embeddings after a ReLU all sit far from the origin).
            shift = (x if same else torch.cat([x, y])).mean(dim=0, keepdim=True).detach()
            x = x - shift
            y = x if same else y - shift
            sq_x = (x * x).sum(dim=1)  # (N,)
            sq_y = sq_x if same else (y * y).sum(dim=1)  # (M,)
            d2 = (sq_x[:, None] + sq_y[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)  # (N, M)
            if same:
                eye = torch.eye(len(x), dtype=torch.bool, device=x.device)
                d2 = d2.masked_fill(eye, 0.0)  # exactly 0, not rounding noise
        return d2

    def pairwise(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """(N, M) distances between every row of ``x`` and every row of ``y`` (default ``x``)."""
        return _safe_sqrt(self.pairwise_squared(x, y))

    def paired_squared(self, x: Tensor, y: Tensor) -> Tensor:
        """(N,) squared distances between row i of ``x`` and row i of ``y``."""
        _check_embeddings(x, "x")
        _check_embeddings(y, "y")
        if x.shape != y.shape:
            raise ValueError(f"paired embeddings must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        with torch.autocast(device_type=x.device.type, enabled=False):
            diff = self._prepare(x) - self._prepare(y)  # (N, D), exact: no expansion needed
            return (diff * diff).sum(dim=1)

    def paired(self, x: Tensor, y: Tensor) -> Tensor:
        """(N,) distances between row i of ``x`` and row i of ``y``."""
        return _safe_sqrt(self.paired_squared(x, y))

    __call__ = pairwise


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {', '.join(REDUCTIONS)}; got {reduction!r}")
    return reduction


def reduce_losses(losses: Tensor, reduction: str) -> Tensor:
    """Reduce per-pair or per-triplet losses: ``mean``, ``sum`` or ``none``.

    The mean of no losses (a batch where the miner found no triplet) is 0,
    still attached to the graph so ``backward`` works, rather than NaN.
    """
    _check_reduction(reduction)
    if reduction == "none":
        return losses
    total = losses.sum()
    return total if reduction == "sum" else total / max(losses.numel(), 1)


class _EmbeddingLoss(nn.Module):
    def __init__(self, margin: float, distance: LpDistance | None, reduction: str):
        super().__init__()
        self.margin = float(margin)
        self.distance = distance if distance is not None else LpDistance()
        self.reduction = _check_reduction(reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, distance={self.distance!r}, reduction={self.reduction!r}"


class ContrastiveLoss(_EmbeddingLoss):
    """Per pair ``y * d**2 + (1 - y) * max(0, margin**2 - d**2)``, ``d`` the distance
    between the pair's two embeddings and ``y = 1`` for the same person.

    Different-people pairs farther apart than ``margin`` cost nothing.
    Call as ``loss(emb1, emb2, y)`` with ``emb1``, ``emb2`` (N, D) and ``y``
    (N,) of 0/1 (bool, int or float).
    """

    def __init__(self, margin: float = 1.0, distance: LpDistance | None = None, reduction: str = "mean"):
        if not margin > 0:
            raise ConfigError(f"margin must be a positive number for the contrastive loss, got {margin}")
        super().__init__(margin, distance, reduction)

    def forward(self, emb1: Tensor, emb2: Tensor, y: Tensor) -> Tensor:
        d2 = self.distance.paired_squared(emb1, emb2)  # (N,)
        if y.shape != d2.shape:
            raise ValueError(f"y must hold one label per pair, shape {tuple(d2.shape)}, got {tuple(y.shape)}")
        y = y.to(device=d2.device, dtype=d2.dtype)
        losses = y * d2 + (1.0 - y) * F.relu(self.margin**2 - d2)
        return reduce_losses(losses, self.reduction)


class Triplets(NamedTuple):
    """Indices into a batch, one entry per triplet: (T,) each."""

    anchor: Tensor
    positive: Tensor
    negative: Tensor


def _label_masks(labels: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
    """(B, B) masks of positives (same label, not itself) and negatives (other label)."""
    if dist.ndim != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"mining needs a square (B, B) distance matrix, got shape {tuple(dist.shape)}")
    if labels.shape != (dist.shape[0],):
        raise ValueError(f"labels must be ({dist.shape[0]},) to match the batch, got shape {tuple(labels.shape)}")
    labels = labels.to(dist.device)
    same = labels[:, None] == labels[None, :]  # (B, B)
    eye = torch.eye(len(labels), dtype=torch.bool, device=dist.device)
    return same & ~eye, ~same


class TripletMiner:
    """Chooses (anchor, positive, negative) index triplets from a labelled batch.

    A batch is usually P people with K images each. ``miner(embeddings,
    labels)`` measures distances itself (Euclidean unless a distance is given);
    :meth:`TripletMarginLoss.from_batch` calls :meth:`mine` on the loss's own
    distance matrix instead, so the distances are computed once. Mining picks
    indices and needs no gradient.
    """

    def __call__(self, embeddings: Tensor, labels: Tensor, distance: LpDistance | None = None) -> Triplets:
        distance = distance if distance is not None else LpDistance()
        with torch.no_grad():
            dist = distance.pairwise(embeddings)  # (B, B)
        return self.mine(dist, labels)

    def mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        """Triplets from a (B, B) distance matrix and (B,) labels."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class BatchHardMiner(TripletMiner):
    """For each anchor, its farthest positive and its nearest negative.

    Anchors without a positive (the only image of a person in the batch) or
    without a negative are skipped, so at most B triplets come back.
    """

    def mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        pos, neg = _label_masks(labels, dist)
        hardest_pos = dist.masked_fill(~pos, float("-inf")).argmax(dim=1)  # (B,)
        hardest_neg = dist.masked_fill(~neg, float("inf")).argmin(dim=1)  # (B,)
        anchor = torch.nonzero(pos.any(dim=1) & neg.any(dim=1)).flatten()
        return Triplets(anchor, hardest_pos[anchor], hardest_neg[anchor])


class SemiHardMiner(TripletMiner):
    """One negative for every (anchor, positive) pair, semi-hard where possible.

    Semi-hard negatives lie beyond the positive but inside the margin,
    ``d(a, p) < d(a, n) < d(a, p) + margin``: they still cost something, yet
    are not the hardest ones, which FaceNet found can collapse training early.
    Of these the nearest to the anchor is chosen. Where a pair has none, its
    hardest (nearest) negative is used instead, so every pair still yields a
    triplet. Anchors without a negative in the batch are skipped. Use the same
    margin as the loss.
    """

    def __init__(self, margin: float = 0.2):
        if not margin > 0:
            raise ConfigError(f"margin must be a positive number for semi-hard mining, got {margin}")
        self.margin = float(margin)

    def __repr__(self) -> str:
        return f"SemiHardMiner(margin={self.margin})"

    def mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        pos, neg = _label_masks(labels, dist)
        anchor, positive = torch.nonzero(pos & neg.any(dim=1, keepdim=True), as_tuple=True)  # (P,) each
        d_ap = dist[anchor, positive][:, None]  # (P, 1)
        d_an = dist[anchor]  # (P, B)
        neg_a = neg[anchor]  # (P, B)
        semi = neg_a & (d_an > d_ap) & (d_an < d_ap + self.margin)  # (P, B)
        nearest_semi = d_an.masked_fill(~semi, float("inf")).argmin(dim=1)  # (P,)
        nearest_neg = d_an.masked_fill(~neg_a, float("inf")).argmin(dim=1)  # (P,)
        negative = torch.where(semi.any(dim=1), nearest_semi, nearest_neg)
        return Triplets(anchor, positive, negative)


class AllTripletsMiner(TripletMiner):
    """Every valid triplet: ``a != p`` with the same label, ``n`` with another label.

    The count grows as B^3 (B = 128 as 32 people x 4 images: 47,616 triplets);
    most are easy and cost 0 once training has started.
    """

    def mine(self, dist: Tensor, labels: Tensor) -> Triplets:
        pos, neg = _label_masks(labels, dist)
        valid = pos[:, :, None] & neg[:, None, :]  # (B, B, B): [a, p, n]
        return Triplets(*torch.nonzero(valid, as_tuple=True))


class TripletMarginLoss(_EmbeddingLoss):
    """Per triplet ``max(d(a, p) - d(a, n) + margin, 0)``.

    ``loss(anchor, positive, negative)`` scores explicit triplets, each (N, D).
    ``loss.from_batch(embeddings, labels, miner)`` mines triplets inside a
    labelled batch and scores them.
    """

    def __init__(self, margin: float = 0.2, distance: LpDistance | None = None, reduction: str = "mean"):
        if not margin >= 0:
            raise ConfigError(f"margin must be zero or positive for the triplet loss, got {margin}")
        super().__init__(margin, distance, reduction)

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        d_ap = self.distance.paired(anchor, positive)  # (N,)
        d_an = self.distance.paired(anchor, negative)  # (N,)
        return reduce_losses(F.relu(d_ap - d_an + self.margin), self.reduction)

    def from_batch(self, embeddings: Tensor, labels: Tensor, miner: TripletMiner) -> Tensor:
        """Loss over the triplets ``miner`` picks from ``embeddings`` (B, D) with ``labels`` (B,).

        With ``reduction="none"`` the result has one entry per mined triplet
        (possibly none). A batch with no valid triplet gives a loss of 0.
        """
        dist = self.distance.pairwise(embeddings)  # (B, B), computed once for mining and loss
        a, p, n = miner.mine(dist.detach(), labels)
        return reduce_losses(F.relu(dist[a, p] - dist[a, n] + self.margin), self.reduction)


MINERS: dict[str, type[TripletMiner]] = {"batch-hard": BatchHardMiner, "semi-hard": SemiHardMiner,
                                         "all": AllTripletsMiner}
"""The miners by the name ``--miner`` gives."""


def create_miner(name: str, margin: float) -> TripletMiner:
    """The miner ``name`` for a triplet loss of ``margin``."""
    if name not in MINERS:
        raise ConfigError(f"miner must be one of {', '.join(MINERS)}; got {name!r}")
    if MINERS[name] is SemiHardMiner:
        # A margin of 0 leaves no semi-hard band; the miner then falls back to the hardest negatives.
        return SemiHardMiner(max(margin, 1e-6))
    return MINERS[name]()


# --------------------------------------------------------------------------- face losses

Batch = tuple[Tensor, Tensor]
"""``(images, target)``: int64 indices into the training images, and what the loss scores them against."""


class FaceLoss(nn.Module):
    """A training objective of the face study: what it needs from a batch, and how it scores one.

    As in pytorch-metric-learning, a loss says what it takes. ``needs`` is
    ``"pairs"`` (a batch is image pairs laid out ``[first images; second
    images]``, its target 1 for the same person, 0 for different people) or
    ``"labels"`` (a batch is P people x K images, its target their person ids;
    pairs or triplets are mined inside the batch). Training asks the loss for
    each epoch's batches (:meth:`epoch_batches`), scores every batch
    (``loss(embeddings, target)``) and, after each epoch, the fixed validation
    pairs and triplets (:meth:`validation_loss`). A loss is a module, so one
    with learnable weights gives them by :meth:`parameters` and moves with
    ``.to(device)``. Subclasses register under their ``--loss`` name with
    :func:`register_face_loss` and read their options in :meth:`from_config`.
    """

    name: ClassVar[str] = ""
    needs: ClassVar[str] = ""

    def __init__(self, margin: float):
        super().__init__()
        self.margin = margin

    @classmethod
    def from_config(cls, cfg: Any) -> FaceLoss:
        """The loss a face training config asks for (``margin`` and whatever else this loss reads)."""
        raise NotImplementedError

    def epoch_batches(self, labels: Tensor, batch_size: int, generator: torch.Generator) -> list[Batch]:
        """One epoch of batches of ``batch_size`` images, indices into ``labels`` (the person id of each
        training image); a last partial batch is dropped unless it is the only one. ``generator`` moves on
        between epochs, so each epoch draws new batches."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        """The loss of one batch: ``embeddings`` (B, D) of the batch's images in order, its ``target``."""
        raise NotImplementedError

    def validation_loss(self, embeddings: Tensor, pairs: tuple[Tensor, Tensor, Tensor],
                        triplets: Triplets) -> Tensor:
        """The loss on fixed validation sets: ``pairs`` ``(i, j, same)`` and ``triplets`` ``(a, p, n)`` index
        rows of ``embeddings`` (N, D); each loss scores the kind it trains on."""
        raise NotImplementedError

    def describe(self) -> str:
        """The loss as a run's banner names it: ``contrastive loss, margin 1``."""
        return f"{self.name} loss, margin {self.margin:g}"

    def summary(self) -> dict:
        """The loss's entries in a run's summary."""
        return {"loss": self.name, "margin": self.margin, "miner": None}

    def extra_repr(self) -> str:
        return f"margin={self.margin}"


_FACE_LOSSES: dict[str, type[FaceLoss]] = {}


def register_face_loss(name: str):
    """Class decorator: the :class:`FaceLoss` that ``--loss name`` trains with."""

    def deco(cls: type[FaceLoss]) -> type[FaceLoss]:
        cls.name = name
        _FACE_LOSSES[name] = cls
        return cls

    return deco


def face_loss_names() -> list[str]:
    return list(_FACE_LOSSES)


def face_loss_class(name: str) -> type[FaceLoss]:
    if name not in _FACE_LOSSES:
        raise ConfigError(f"loss must be one of {', '.join(_FACE_LOSSES)}; got {name!r}")
    return _FACE_LOSSES[name]


def _pair_batches(labels: Tensor, pairs_per_batch: int, generator: torch.Generator) -> list[Batch]:
    i, j, y = sample_pairs(labels, generator)  # fresh study pairs, one per anchor image
    n = len(y) if len(y) < pairs_per_batch else (len(y) // pairs_per_batch) * pairs_per_batch
    return [(torch.cat([i[s : s + pairs_per_batch], j[s : s + pairs_per_batch]]), y[s : s + pairs_per_batch])
            for s in range(0, n, pairs_per_batch)]


def _pk_batches(labels: Tensor, people: int, images_per_person: int, generator: torch.Generator) -> list[Batch]:
    out = []
    for b in PKBatchSampler(labels, people, images_per_person, generator=generator):
        idx = torch.tensor(b, dtype=torch.int64)
        out.append((idx, labels[idx]))
    return out


@register_face_loss("contrastive")
class ContrastiveFaceLoss(FaceLoss):
    """:class:`ContrastiveLoss` on fresh study pairs every epoch, ``batch_size / 2`` pairs a batch."""

    needs = "pairs"

    def __init__(self, margin: float = 1.0):
        super().__init__(margin)
        self.pair_loss = ContrastiveLoss(margin)

    @classmethod
    def from_config(cls, cfg: Any) -> ContrastiveFaceLoss:
        return cls(cfg.margin)

    def epoch_batches(self, labels: Tensor, batch_size: int, generator: torch.Generator) -> list[Batch]:
        return _pair_batches(labels, batch_size // 2, generator)

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        half = len(embeddings) // 2
        return self.pair_loss(embeddings[:half], embeddings[half:], target)

    def validation_loss(self, embeddings: Tensor, pairs: tuple[Tensor, Tensor, Tensor],
                        triplets: Triplets) -> Tensor:
        i, j, same = pairs
        return self.pair_loss(embeddings[i], embeddings[j], same)


@register_face_loss("triplet")
class TripletFaceLoss(FaceLoss):
    """:class:`TripletMarginLoss` on P x K batches (``images_per_person`` = K), triplets mined by ``miner``."""

    needs = "labels"

    def __init__(self, margin: float = 0.2, miner: str = "batch-hard", images_per_person: int = 4):
        super().__init__(margin)
        self.miner_name, self.images_per_person = miner, images_per_person
        self.miner = create_miner(miner, margin)
        self.triplet_loss = TripletMarginLoss(margin)

    @classmethod
    def from_config(cls, cfg: Any) -> TripletFaceLoss:
        return cls(cfg.margin, cfg.miner, cfg.pk_images)

    def epoch_batches(self, labels: Tensor, batch_size: int, generator: torch.Generator) -> list[Batch]:
        return _pk_batches(labels, batch_size // self.images_per_person, self.images_per_person, generator)

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        return self.triplet_loss.from_batch(embeddings, target, self.miner)

    def validation_loss(self, embeddings: Tensor, pairs: tuple[Tensor, Tensor, Tensor],
                        triplets: Triplets) -> Tensor:
        a, p, n = triplets
        return self.triplet_loss(embeddings[a], embeddings[p], embeddings[n])

    def describe(self) -> str:
        return f"{super().describe()}, {self.miner_name} mining"

    def summary(self) -> dict:
        return {**super().summary(), "miner": self.miner_name}

    def extra_repr(self) -> str:
        return f"margin={self.margin}, miner={self.miner!r}, images_per_person={self.images_per_person}"
