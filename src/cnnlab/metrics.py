"""Scores for both studies, as pure functions of arrays.

Inputs are numpy arrays or torch tensors (converted here); outputs are Python
floats and numpy arrays. Nothing in this module trains, plots or logs.

Three families:

* **Classification** (CIFAR-10): :func:`accuracy`, :func:`confusion_matrix`,
  :func:`per_class_accuracy`.
* **Verification** (face pairs): every function takes one score per pair and a
  label per pair (1 = same person, 0 = different people). By default the
  scores are *distances* between two embeddings, so smaller means "more likely
  the same person" and a pair is accepted as "same" when
  ``distance <= threshold``. Pass ``higher_is_same=True`` for similarities
  (cosine similarity, a classifier's probability): a pair is then accepted
  when ``score >= threshold``, and every threshold returned is in score units.
  FAR (false accept rate) is the fraction of different-people pairs accepted;
  TAR (true accept rate) the fraction of same-person pairs accepted; FRR is
  ``1 - TAR``.
* **Retrieval** (embeddings with identity labels): :func:`knn`,
  :func:`precision_at_1`, :func:`mean_average_precision_at_r` (MAP@R, from
  Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020).
"""

from __future__ import annotations

import math
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from cnnlab.losses import LpDistance

__all__ = [
    "accuracy",
    "confusion_matrix",
    "per_class_accuracy",
    "roc_curve",
    "roc_auc",
    "equal_error_rate",
    "OperatingPoint",
    "operating_point_at_far",
    "tar_at_far",
    "best_threshold",
    "accuracy_at_threshold",
    "KFoldResult",
    "kfold_accuracy",
    "verification_report",
    "knn",
    "precision_at_1",
    "mean_average_precision_at_r",
]


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
            x = x.float()
        return x.numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------- classification


def _as_class_ids(logits_or_preds: Any, name: str) -> np.ndarray:
    a = _to_numpy(logits_or_preds)
    if a.ndim == 2:
        return a.argmax(axis=1)  # (N, C) scores -> (N,) predicted class
    if a.ndim != 1:
        raise ValueError(f"{name} must be (N,) class ids or (N, C) scores, got shape {a.shape}")
    if a.size and not np.issubdtype(a.dtype, np.integer):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} is one-dimensional, so it must hold whole class ids")
        a = a.astype(np.int64)
    return a


def _as_labels(labels: Any, n: int) -> np.ndarray:
    y = _to_numpy(labels)
    if y.shape != (n,):
        raise ValueError(f"labels must have shape ({n},) to match the predictions, got {y.shape}")
    return y


def accuracy(logits_or_preds: Any, labels: Any) -> float:
    """Fraction of correct predictions.

    ``logits_or_preds`` is either (N, C) scores (the arg-max is the prediction)
    or (N,) predicted class ids; ``labels`` is (N,) true class ids.
    """
    preds = _as_class_ids(logits_or_preds, "logits_or_preds")
    y = _as_labels(labels, len(preds))
    if len(preds) == 0:
        raise ValueError("accuracy of zero samples is undefined")
    return float(np.mean(preds == y))


def confusion_matrix(preds: Any, labels: Any, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts: row = true class, column = predicted class.

    Note the argument order (predictions first), unlike scikit-learn's
    ``confusion_matrix(y_true, y_pred)``; the layout of the result is the same.
    ``preds`` may also be (N, C) scores.
    """
    p = _as_class_ids(preds, "preds").astype(np.int64)
    y = _as_labels(labels, len(p)).astype(np.int64)
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, got {num_classes}")
    for name, a in (("preds", p), ("labels", y)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), found values {a.min()}..{a.max()}")
    # One bincount over the flattened (true, predicted) cell index: linear, no Python loop.
    counts = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(confusion: Any) -> np.ndarray:
    """(C,) recall of each class from a confusion matrix (rows = true class).

    A class with no samples gets NaN, so an average over classes can skip it
    explicitly (``np.nanmean``) rather than count it as 0 or 1.
    """
    cm = _to_numpy(confusion)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion must be a square (C, C) matrix, got shape {cm.shape}")
    support = cm.sum(axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


# --------------------------------------------------------------------------- verification


def _verification_inputs(scores: Any, labels: Any, higher_is_same: bool) -> tuple[np.ndarray, np.ndarray, float]:
    """Distances (accept when ``d <= t``), boolean labels, and the sign that maps back to scores."""
    s = _to_numpy(scores).astype(np.float64).reshape(-1)
    y = _to_numpy(labels).reshape(-1)
    if s.shape != y.shape:
        raise ValueError(f"distances and labels differ in length: {s.shape[0]} vs {y.shape[0]}")
    if s.size == 0:
        raise ValueError("no pairs given")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{int(np.sum(~np.isfinite(s)))} of {s.size} distances are NaN or infinite")
    if y.dtype != np.bool_:
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be 1 (same person) or 0 (different people)")
        y = y.astype(bool)
    sign = -1.0 if higher_is_same else 1.0
    return sign * s, y, sign


def _require_both_classes(y: np.ndarray, what: str) -> None:
    n_same = int(y.sum())
    if n_same == 0 or n_same == y.size:
        raise ValueError(
            f"{what} needs both same-person and different-people pairs; "
            f"got {n_same} same and {y.size - n_same} different"
        )


def _cumulative_counts(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct sorted distances, and how many positives / negatives lie at or below each."""
    order = np.argsort(d, kind="stable")
    d, y = d[order], y[order]
    # The last position of each run of equal distances: a threshold cannot split ties.
    last = np.flatnonzero(np.r_[d[1:] != d[:-1], True])
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return d[last], tp, fp


def _roc_points(d: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    values, tp, fp = _cumulative_counts(d, y)
    # Start from "accept nothing" so the curve begins at (0, 0).
    thresholds = np.r_[-np.inf, values]
    return np.r_[0, fp], np.r_[0, tp], thresholds, int(y.sum()), int(y.size - y.sum())


def roc_curve(
    distances: Any, labels: Any, *, higher_is_same: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds), one point per distinct distance, FAR increasing.

    Point ``i`` is what accepting every pair with ``distance <= thresholds[i]``
    gives. The first point, threshold ``-inf``, accepts nothing (FAR = TAR = 0);
    the last accepts everything. Every distinct distance is kept (scikit-learn's
    ``roc_curve(labels, -distances, drop_intermediate=False)`` gives the same
    curve with thresholds of the opposite sign).
    """
    d, y, sign = _verification_inputs(distances, labels, higher_is_same)
    _require_both_classes(y, "a ROC curve")
    fp, tp, thresholds, n_pos, n_neg = _roc_points(d, y)
    return fp / n_neg, tp / n_pos, sign * thresholds


def roc_auc(distances: Any, labels: Any, *, higher_is_same: bool = False) -> float:
    """Area under the ROC curve: the chance that a random same-person pair is closer
    than a random different-people pair (ties count one half)."""
    far, tar, _ = roc_curve(distances, labels, higher_is_same=higher_is_same)
    return float(np.sum(np.diff(far) * (tar[1:] + tar[:-1])) / 2.0)


def equal_error_rate(distances: Any, labels: Any, *, higher_is_same: bool = False) -> tuple[float, float]:
    """(eer, threshold) where FAR equals FRR.

    Between the two ROC points where ``FAR - FRR`` changes sign, FAR and FRR
    are interpolated linearly and the crossing is returned, with the threshold
    interpolated the same way. Where the crossing lies between "accept nothing"
    and the smallest distance, the threshold is the smallest distance.
    """
    far, tar, thresholds = roc_curve(distances, labels, higher_is_same=higher_is_same)
    gap = far - (1.0 - tar)  # starts at -1, ends at +1, never decreases
    j = int(np.argmax(gap >= 0))
    i = j - 1
    t = gap[i] / (gap[i] - gap[j])  # in (0, 1]
    eer = far[i] + t * (far[j] - far[i])
    if np.isinf(thresholds[i]):
        threshold = thresholds[j]
    else:
        threshold = thresholds[i] + t * (thresholds[j] - thresholds[i])
    return float(eer), float(threshold)


class OperatingPoint(NamedTuple):
    """A point of the ROC chosen for a target FAR."""

    tar: float
    far: float
    """The FAR actually reached (at most the target)."""
    threshold: float
    resolved: bool
    """False when there are fewer than ``1 / target`` different-people pairs: the only
    FAR at or below the target is then 0, and ``tar`` is the TAR at FAR = 0."""


def operating_point_at_far(
    distances: Any, labels: Any, far: float = 1e-3, *, higher_is_same: bool = False
) -> OperatingPoint:
    """The ROC point with the largest TAR whose FAR is at most ``far``, and whether
    the data have enough different-people pairs to resolve that FAR."""
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must lie in [0, 1], got {far}")
    d, y, sign = _verification_inputs(distances, labels, higher_is_same)
    _require_both_classes(y, "TAR at a FAR")
    fp, tp, thresholds, n_pos, n_neg = _roc_points(d, y)
    # Compare false-accept counts, not rates, so that 3/3000 counts as <= 1e-3.
    allowed = math.floor(far * n_neg * (1 + 1e-12))
    i = int(np.searchsorted(fp, allowed, side="right")) - 1  # fp is non-decreasing
    return OperatingPoint(
        tar=float(tp[i] / n_pos),
        far=float(fp[i] / n_neg),
        threshold=float(sign * thresholds[i]),
        resolved=bool(far == 0.0 or n_neg * far >= 1.0 - 1e-12),
    )


def tar_at_far(distances: Any, labels: Any, far: float = 1e-3, *, higher_is_same: bool = False) -> float:
    """The largest TAR reached with FAR at most ``far``.

    With ``n`` different-people pairs the smallest non-zero FAR is ``1 / n``.
    When ``n < 1 / far`` (fewer than 1,000 for FAR = 1e-3) the target cannot be
    resolved and this returns the TAR at FAR = 0; :func:`operating_point_at_far`
    returns the same number with a ``resolved`` flag, and
    :func:`verification_report` reports the flag beside it.
    """
    return operating_point_at_far(distances, labels, far, higher_is_same=higher_is_same).tar


def _best_threshold(d: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Best (threshold, accuracy) on distances, accepting ``d <= threshold``."""
    values, tp, fp = _cumulative_counts(d, y)
    n_pos, n = int(y.sum()), y.size
    # Candidate k accepts the k smallest distinct values (k = 0: nothing).
    correct = np.r_[0, tp] + (n - n_pos) - np.r_[0, fp]
    k = int(np.argmax(correct))  # first maximum: the smallest threshold among equals
    if len(values) > 1:
        step = 0.5 * (values[-1] - values[0]) / (len(values) - 1)
    else:
        step = 0.5 * max(abs(values[0]), 1.0)
    if k == 0:
        threshold = values[0] - step
    elif k == len(values):
        threshold = values[-1] + step
    else:
        lo, hi = values[k - 1], values[k]
        threshold = lo + (hi - lo) / 2.0
        if threshold >= hi:  # adjacent floats: the midpoint rounds up onto the next value
            threshold = lo
    return float(threshold), float(correct[k] / n)


def best_threshold(distances: Any, labels: Any, *, higher_is_same: bool = False) -> tuple[float, float]:
    """(threshold, accuracy): the threshold that classifies these pairs best.

    Candidates are the midpoints between consecutive distinct distances, plus
    one threshold below all of them and one above all of them (half the mean
    gap between distinct distances beyond the extremes). Among equally good
    thresholds the strictest (the one accepting fewest pairs) is returned. One
    sort and one cumulative sum: O(n log n).
    """
    d, y, sign = _verification_inputs(distances, labels, higher_is_same)
    threshold, acc = _best_threshold(d, y)
    return sign * threshold, acc


def accuracy_at_threshold(distances: Any, labels: Any, threshold: float, *, higher_is_same: bool = False) -> float:
    """Fraction of pairs classified correctly when ``distance <= threshold`` means "same"
    (``score >= threshold`` with ``higher_is_same=True``)."""
    d, y, sign = _verification_inputs(distances, labels, higher_is_same)
    return float(np.mean((d <= sign * threshold) == y))


class KFoldResult(NamedTuple):
    mean: float
    std: float
    """Sample standard deviation over folds (n - 1 in the denominator, as LFW's protocol states)."""
    per_fold: np.ndarray
    thresholds: np.ndarray
    """The threshold chosen on the other folds and applied to each fold."""

    @property
    def std_error(self) -> float:
        """Standard error of the mean, the ± figure LFW results are reported with."""
        return self.std / math.sqrt(len(self.per_fold))


def kfold_accuracy(distances: Any, labels: Any, folds: Any, *, higher_is_same: bool = False) -> KFoldResult:
    """Cross-validated verification accuracy (LFW View 2: ten folds of 600 pairs).

    ``folds`` holds a fold id per pair. For each fold the threshold is chosen by
    :func:`best_threshold` on all the other folds and then applied to that fold,
    so no fold is scored with a threshold it helped choose.
    """
    d, y, sign = _verification_inputs(distances, labels, higher_is_same)
    f = _to_numpy(folds).reshape(-1)
    if f.shape != d.shape:
        raise ValueError(f"folds must hold one fold id per pair: {f.shape[0]} ids for {d.shape[0]} pairs")
    ids = np.unique(f)
    if len(ids) < 2:
        raise ValueError(f"k-fold accuracy needs at least 2 folds, got {len(ids)}")
    per_fold = np.empty(len(ids))
    thresholds = np.empty(len(ids))
    for j, fold in enumerate(ids):  # a loop over ~10 folds, each step vectorised
        test = f == fold
        threshold, _ = _best_threshold(d[~test], y[~test])
        per_fold[j] = np.mean((d[test] <= threshold) == y[test])
        thresholds[j] = sign * threshold
    return KFoldResult(
        mean=float(per_fold.mean()),
        std=float(per_fold.std(ddof=1)),
        per_fold=per_fold,
        thresholds=thresholds,
    )


def verification_report(
    distances: Any, labels: Any, threshold: float | None = None, *, higher_is_same: bool = False
) -> dict[str, Any]:
    """The standard verification figures as a JSON-ready dict.

    Keys: ``n_pairs``, ``n_same``, ``n_different``, ``roc_auc``, ``eer``,
    ``eer_threshold``, ``tar_at_far_1e-3``, ``tar_at_far_1e-3_resolved`` (see
    :func:`tar_at_far`), ``accuracy``, ``threshold`` and ``threshold_source``.
    Pass the ``threshold`` chosen on validation pairs to score test pairs
    honestly (``threshold_source`` is then ``"given"``); without one, the best
    threshold on these very pairs is used and ``threshold_source`` is
    ``"best_on_these_pairs"``, an optimistic accuracy.
    """
    d, y, sign = _verification_inputs(distances, labels, higher_is_same)
    scores = sign * d  # back in the caller's units
    eer, eer_threshold = equal_error_rate(scores, y, higher_is_same=higher_is_same)
    point = operating_point_at_far(scores, y, 1e-3, higher_is_same=higher_is_same)
    if threshold is None:
        threshold, acc = best_threshold(scores, y, higher_is_same=higher_is_same)
        source = "best_on_these_pairs"
    else:
        acc = accuracy_at_threshold(scores, y, threshold, higher_is_same=higher_is_same)
        source = "given"
    return {
        "n_pairs": int(y.size),
        "n_same": int(y.sum()),
        "n_different": int(y.size - y.sum()),
        "roc_auc": roc_auc(scores, y, higher_is_same=higher_is_same),
        "eer": eer,
        "eer_threshold": eer_threshold,
        "tar_at_far_1e-3": point.tar,
        "tar_at_far_1e-3_resolved": point.resolved,
        "accuracy": acc,
        "threshold": float(threshold),
        "threshold_source": source,
    }


# --------------------------------------------------------------------------- retrieval


def _as_embeddings(embeddings: Any) -> torch.Tensor:
    e = embeddings if isinstance(embeddings, torch.Tensor) else torch.from_numpy(np.asarray(embeddings))
    e = e.detach()
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(e.shape)}")
    if not e.is_floating_point() or e.dtype in (torch.float16, torch.bfloat16):
        e = e.float()
    if not torch.isfinite(e).all():
        raise ValueError("embeddings contain NaN or infinite values")
    # Distances ignore a shift; centring makes the matrix-product form of cdist lose less precision.
    return e - e.mean(dim=0, keepdim=True)


def _knn_chunks(
    e: torch.Tensor, k_of_chunk: Any, rows: torch.Tensor, exclude_self: bool, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (query rows, neighbour indices (b, k), distances (b, k)) chunk by chunk.

    Only a (batch_size, N) block of distances exists at a time: for all of LFW
    (13,233 faces) 54 MB per block of 1,024 queries instead of a 700 MB matrix.
    """
    for start in range(0, len(rows), batch_size):
        q = rows[start : start + batch_size]
        k = int(k_of_chunk(q))
        dist = torch.cdist(e[q], e)  # (b, N), via a matrix product: fast, ~1e-3 relative error near 0
        # A sample's distance to itself is known exactly; the product form would give rounding noise.
        dist[torch.arange(len(q), device=e.device), q] = float("inf") if exclude_self else 0.0
        values, index = torch.topk(dist, k, dim=1, largest=False, sorted=True)  # (b, k)
        yield q, index, values


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")


def knn(
    embeddings: Any, k: int, exclude_self: bool = True, *, batch_size: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest neighbours of every embedding by Euclidean distance.

    Returns ``(indices, distances)``, both (N, k), nearest first. With
    ``exclude_self`` a sample is never its own neighbour (other samples with an
    identical embedding still are). Torch tensors are searched on their own
    device; numpy arrays on the CPU.
    """
    e = _as_embeddings(embeddings)
    n = e.shape[0]
    limit = n - 1 if exclude_self else n
    if not 1 <= k <= limit:
        raise ValueError(f"k must lie in [1, {limit}] for {n} embeddings, got {k}")
    _check_batch_size(batch_size)
    rows = torch.arange(n, device=e.device)
    parts = list(_knn_chunks(e, lambda q: k, rows, exclude_self, batch_size))
    index = torch.cat([p[1] for p in parts]).cpu().numpy().astype(np.int64)
    dist = torch.cat([p[2] for p in parts]).cpu().numpy()
    return index, dist


def _retrieval_queries(embeddings: Any, labels: Any, batch_size: int, metric: str
                       ) -> tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor]:
    """Checked inputs of a retrieval metric: the embeddings, dense identity ids (N,), per sample how
    many *other* samples share its identity (N,), and the queries that have one (on the embeddings' device)."""
    e = _as_embeddings(embeddings)
    n = e.shape[0]
    y = _to_numpy(labels).reshape(-1)
    if y.shape != (n,):
        raise ValueError(f"labels must hold one identity per embedding: {y.shape[0]} labels for {n} embeddings")
    _check_batch_size(batch_size)
    _, dense, counts = np.unique(y, return_inverse=True, return_counts=True)
    dense = dense.reshape(-1)
    r = counts[dense] - 1
    rows = np.flatnonzero(r > 0)
    if len(rows) == 0:
        raise ValueError(f"{metric} needs at least one identity with two or more samples")
    return e, dense, r, torch.from_numpy(rows).to(e.device)


def precision_at_1(embeddings: Any, labels: Any, *, batch_size: int = 1024) -> float:
    """Fraction of queries whose nearest other sample has the same identity.

    A query whose identity has no other sample cannot be answered right and is
    left out, as in MAP@R (and pytorch-metric-learning's AccuracyCalculator).
    """
    e, dense, _, rows = _retrieval_queries(embeddings, labels, batch_size, "precision@1")
    hits = 0
    for q, index, _ in _knn_chunks(e, lambda q: 1, rows, True, batch_size):
        q, index = q.cpu().numpy(), index.cpu().numpy()
        hits += int(np.sum(dense[index[:, 0]] == dense[q]))
    return hits / len(rows)


def mean_average_precision_at_r(embeddings: Any, labels: Any, *, batch_size: int = 1024) -> tuple[float, int]:
    """(MAP@R, number of queries counted).

    For a query with ``R`` other samples of its identity, the ``R`` nearest
    other samples are retrieved and ``AP@R = (1/R) * sum_i P(i) * rel(i)`` over
    ranks ``i = 1..R``, where ``rel(i)`` is 1 when the i-th neighbour shares the
    identity and ``P(i)`` is the precision among the first ``i``. MAP@R is the
    mean over queries; queries with ``R = 0`` are left out, and their count is
    what the second number excludes.
    """
    e, dense, r, rows = _retrieval_queries(embeddings, labels, batch_size, "MAP@R")
    r_t = torch.from_numpy(r).to(e.device)
    dense_t = torch.from_numpy(dense).to(e.device)
    total = 0.0
    # Each chunk retrieves only as deep as its own largest R.
    for q, index, _ in _knn_chunks(e, lambda q: r_t[q].max(), rows, True, batch_size):
        k = index.shape[1]
        rank = torch.arange(1, k + 1, device=e.device, dtype=torch.float64)  # (k,)
        within = rank[None, :] <= r_t[q, None]  # (b, k): only the first R ranks count
        rel = (dense_t[index] == dense_t[q, None]) & within  # (b, k)
        precision = rel.cumsum(dim=1) / rank[None, :]  # (b, k) P(i)
        ap = (precision * rel).sum(dim=1) / r_t[q]  # (b,)
        total += float(ap.sum())
    return total / len(rows), len(rows)


def pair_distances(emb: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (M,) between rows ``i`` and ``j`` of ``emb`` (N, D)."""
    return LpDistance().paired(emb[i], emb[j])
