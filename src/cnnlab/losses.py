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
* Additive-margin softmax losses over the training people, each with a learnt
  weight per person: CosFace (Wang et al., "CosFace: Large Margin Cosine Loss
  for Deep Face Recognition", CVPR 2018), ArcFace (Deng et al., "ArcFace:
  Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019) and
  sub-center ArcFace (Deng et al., "Sub-center ArcFace: Boosting Face
  Recognition by Large-Scale Noisy Web Faces", ECCV 2020). They give the same
  values as pytorch-metric-learning's ``CosFaceLoss``, ``ArcFaceLoss`` and
  ``SubCenterArcFaceLoss`` (tests/test_margin_losses.py).

The face study trains through :class:`FaceLoss` objects, registered by the
name ``--loss`` gives (:func:`register_face_loss`). Each says what it needs
from a batch (pairs, labelled P x K batches it mines itself, or random
batches of images with their person's class), builds an epoch's batches from
the training people, scores a batch's embeddings, and scores the fixed
validation pairs or triplets; training has no branch per loss. A loss with
learnt weights (the margin losses) is given the number of training people and
trains with the network.
"""

from __future__ import annotations

import math
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
    "MarginSoftmaxLoss",
    "CosFaceLoss",
    "ArcFaceLoss",
    "SubCenterArcFaceLoss",
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
    images]``, its target 1 for the same person, 0 for different people),
    ``"labels"`` (a batch is P people x K images, its target their person ids;
    pairs or triplets are mined inside the batch) or ``"classes"`` (a batch is
    training images drawn at random, its target the index of each one's person
    among the training people, 0 .. num_classes - 1). Training asks the loss for
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
    def from_config(cls, cfg: Any, num_classes: int | None = None) -> FaceLoss:
        """The loss a face training config asks for (``margin`` and whatever else this loss reads).

        ``num_classes`` is the number of training people; a loss that learns a
        weight per person (``needs == "classes"``) cannot be built without it.
        """
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
    def from_config(cls, cfg: Any, num_classes: int | None = None) -> ContrastiveFaceLoss:
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
    def from_config(cls, cfg: Any, num_classes: int | None = None) -> TripletFaceLoss:
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


# --------------------------------------------------------------------------- margin softmax losses


def _random_batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """Indices 0 .. n - 1 shuffled into batches of ``batch_size``; a last partial batch is dropped unless it is
    the only one."""
    batches = list(torch.split(torch.randperm(n, generator=generator), batch_size))
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def _full(x: Tensor) -> Tensor:
    """``x`` in float32 if it is in half precision (cosines near 1 need the digits), else as it is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class MarginSoftmaxLoss(FaceLoss):
    """Softmax cross-entropy over the training people, on cosines, with a margin for each image's own person.

    The loss holds ``weight`` (num_classes x subcenters, D), a learnt direction
    per training person (row ``c * subcenters + k`` is sub-centre k of person
    c). For an embedding x and person c the logit is ``scale * cos(x, W_c)``
    (both normalised, so only directions count); the person's own logit is
    first made smaller (:meth:`target_cosine`), so that training must bring
    each image nearer its person's weight than to any other by the margin. With
    several sub-centres a person's cosine is the highest of its sub-centres',
    and the margin then applies to that one. The loss is the batch mean, in
    float32 at least, also under autocast.

    **Batches**: training images drawn at random, every image once an epoch
    (``needs == "classes"``). A classification loss compares each image with
    every person's weight, not with the others in its batch, so it needs no P
    x K batch; random batches are what the margin-loss papers train on, and
    they also use the people with a single image, which a P x K batch cannot.

    **People with a single image are classes** like any other: their one
    image still teaches their weight, and through the softmax that weight pushes
    every other person's images away from it, as an impostor does in a pair.

    **Validation loss**: the validation people are not among the classes, so
    the loss itself cannot score them. ``val_loss`` is the contrastive loss
    (margin 1, on unit-length embeddings) of the fixed validation pairs:
    comparable between margin-loss runs and epochs, not with the training
    loss. The best checkpoint is chosen by validation ROC AUC, as for every loss.

    Verification uses the embeddings alone: the weights exist only for training
    (saved in ``last.pt`` for resuming, not in ``best.pt``).
    """

    needs = "classes"
    subcenters: int = 1

    def __init__(self, num_classes: int, embedding_dim: int, margin: float, scale: float = 30.0,
                 subcenters: int = 1):
        super().__init__(margin)
        if not (isinstance(num_classes, int) and num_classes >= 2):
            raise ConfigError(f"a margin softmax loss needs at least two training people, got {num_classes!r}")
        if not (isinstance(subcenters, int) and subcenters >= 1):
            raise ConfigError(f"subcenters must be a positive integer, got {subcenters!r}")
        if not scale > 0:
            raise ConfigError(f"scale must be a positive number, got {scale!r}")
        self.num_classes, self.scale, self.subcenters = num_classes, float(scale), subcenters
        # Random unit rows: only directions count, and unit length gives Adam steps the head's relative size.
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes * subcenters, embedding_dim), dim=1))
        self.pair_loss = ContrastiveLoss(1.0, LpDistance(normalize_embeddings=True))

    @classmethod
    def from_config(cls, cfg: Any, num_classes: int | None = None) -> MarginSoftmaxLoss:
        if num_classes is None:
            raise ValueError(f"the {cls.name} loss learns a weight per training person: give num_classes")
        return cls(num_classes, cfg.embedding_dim, cfg.margin, cfg.scale, **cls._options(cfg))

    @classmethod
    def _options(cls, cfg: Any) -> dict:
        return {}

    def classes(self, labels: Tensor) -> Tensor:
        """(N,) class indices 0 .. num_classes - 1 of person ids ``labels`` (N,), in the order of the ids."""
        ids, classes = torch.unique(labels, return_inverse=True)
        if len(ids) != self.num_classes:
            raise ValueError(f"the training images show {len(ids)} people, but the loss holds weights for "
                             f"{self.num_classes}")
        return classes

    def epoch_batches(self, labels: Tensor, batch_size: int, generator: torch.Generator) -> list[Batch]:
        classes = self.classes(labels)
        return [(idx, classes[idx]) for idx in _random_batches(len(labels), batch_size, generator)]

    def cosines(self, embeddings: Tensor) -> Tensor:
        """(B, num_classes) cosines between embeddings (B, D) and each person's (nearest sub-centre) weight."""
        _check_embeddings(embeddings, "embeddings")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            x = F.normalize(_full(embeddings), dim=1)
            cos = x @ F.normalize(_full(self.weight).to(x.dtype), dim=1).T  # (B, C * K)
        if self.subcenters > 1:
            cos = cos.view(len(x), self.num_classes, self.subcenters).amax(dim=2)  # (B, C)
        return cos

    def target_cosine(self, cos: Tensor) -> Tensor:
        """The cosines (T,) of images with their own person's weight, with the margin applied."""
        raise NotImplementedError

    def forward(self, embeddings: Tensor, target: Tensor) -> Tensor:
        cos = self.cosines(embeddings)  # (B, C)
        target = target.to(device=cos.device, dtype=torch.int64)
        if target.shape != (len(cos),):
            raise ValueError(f"target must hold one class per image, shape ({len(cos)},), got {tuple(target.shape)}")
        own = F.one_hot(target, self.num_classes).bool()  # (B, C)
        with_margin = self.target_cosine(cos[own])  # (B,)
        logits = torch.where(own, with_margin[:, None], cos)
        return F.cross_entropy(self.scale * logits, target)

    def validation_loss(self, embeddings: Tensor, pairs: tuple[Tensor, Tensor, Tensor],
                        triplets: Triplets) -> Tensor:
        i, j, same = pairs
        return self.pair_loss(embeddings[i], embeddings[j], same)

    def describe(self) -> str:
        return f"{super().describe()}, scale {self.scale:g}, {self.num_classes} training people"

    def summary(self) -> dict:
        return {**super().summary(), "scale": self.scale}

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, embedding_dim={self.weight.shape[1]}, margin={self.margin}, "
                f"scale={self.scale}, subcenters={self.subcenters}")


@register_face_loss("cosface")
class CosFaceLoss(MarginSoftmaxLoss):
    """Large margin cosine loss: the own person's cosine less ``margin``, ``cos(theta) - m`` (m = 0.35 in the paper)."""

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.35, scale: float = 30.0):
        super().__init__(num_classes, embedding_dim, margin, scale)

    def target_cosine(self, cos: Tensor) -> Tensor:
        return cos - self.margin


@register_face_loss("arcface")
class ArcFaceLoss(MarginSoftmaxLoss):
    """Additive angular margin: the own person's angle grows by ``margin`` radians, ``cos(theta + m)``
    (m = 0.5 in the paper).

    Where ``theta + m`` would pass 180 degrees, ``cos(theta + m)`` would rise
    again and reward moving away from the own weight; there ``cos(theta) -
    m sin(m)`` is used instead, as in the paper's code and in
    pytorch-metric-learning, which keeps the logit falling as the angle grows.
    """

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 30.0,
                 subcenters: int = 1):
        super().__init__(num_classes, embedding_dim, margin, scale, subcenters)

    def target_cosine(self, cos: Tensor) -> Tensor:
        # arccos has an infinite slope at +-1: clamp just inside, where the gradient is large but finite.
        theta = torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7))
        m = self.margin
        return torch.where(theta <= math.pi - m, torch.cos(theta + m), cos - m * math.sin(m))


@register_face_loss("subcenter-arcface")
class SubCenterArcFaceLoss(ArcFaceLoss):
    """ArcFace with ``subcenters`` (K, 3 in the paper) weights per person; an image counts with the nearest.

    An image mislabelled as a person (common in sets gathered from the web)
    need not pull the person's main weight towards it: it can gather on a
    sub-centre of its own, while the person's clean images share the dominant
    one. The paper then drops the non-dominant sub-centres and retrains; here
    they are kept, since only the embeddings are used after training.
    """

    def __init__(self, num_classes: int, embedding_dim: int, margin: float = 0.5, scale: float = 30.0,
                 subcenters: int = 3):
        super().__init__(num_classes, embedding_dim, margin, scale, subcenters)

    @classmethod
    def _options(cls, cfg: Any) -> dict:
        return {"subcenters": cfg.subcenters}

    def describe(self) -> str:
        return f"{super().describe()}, {self.subcenters} sub-centres each"

    def summary(self) -> dict:
        return {**super().summary(), "subcenters": self.subcenters}
