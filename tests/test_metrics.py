import math

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

from cnnlab import metrics

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


# --------------------------------------------------------------------------- classification


def test_accuracy_from_logits_and_from_class_ids():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.5, 0.1, 0.9], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, 0])
    assert metrics.accuracy(logits, labels) == 0.75
    assert metrics.accuracy(np.array([0, 1, 2, 0]), labels) == 0.75
    assert metrics.accuracy(torch.tensor(logits), torch.tensor(labels)) == 0.75
    assert isinstance(metrics.accuracy(logits, labels), float)


def test_accuracy_refuses_mismatched_lengths_and_no_samples():
    with pytest.raises(ValueError, match="shape"):
        metrics.accuracy(np.array([0, 1, 2]), np.array([0, 1]))
    with pytest.raises(ValueError, match="zero samples"):
        metrics.accuracy(np.array([], dtype=np.int64), np.array([], dtype=np.int64))


def test_confusion_matrix_matches_scikit_learn_rows_true_columns_predicted():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    preds = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 10, 500))
    cm = metrics.confusion_matrix(preds, labels, 10)
    assert cm.dtype == np.int64 and cm.shape == (10, 10)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(labels, preds, labels=range(10)))
    # Orientation on a case small enough to read: one sample of class 2 predicted as 0.
    cm = metrics.confusion_matrix(torch.tensor([0]), torch.tensor([2]), 3)
    assert cm[2, 0] == 1 and cm.sum() == 1


def test_confusion_matrix_refuses_ids_outside_the_classes():
    with pytest.raises(ValueError, match=r"preds must lie in \[0, 3\)"):
        metrics.confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="labels must lie"):
        metrics.confusion_matrix(np.array([0, 1]), np.array([-1, 1]), 3)


def test_per_class_accuracy_is_recall_and_nan_for_an_empty_class():
    cm = np.array([[3, 1, 0], [0, 0, 0], [2, 0, 2]])
    acc = metrics.per_class_accuracy(cm)
    np.testing.assert_allclose(acc[[0, 2]], [0.75, 0.5])
    assert math.isnan(acc[1])


# --------------------------------------------------------------------------- verification


def _pairs(n=400, seed=0, ties=False):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    d = rng.normal(1.0 - 0.4 * y, 0.3)  # same-person pairs are closer
    if ties:
        d = np.round(d, 1)
    return d, y


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_scikit_learn_with_the_sign_of_distances(ties):
    d, y = _pairs(ties=ties)
    far, tar, thr = metrics.roc_curve(d, y)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, -d, drop_intermediate=False)
    np.testing.assert_allclose(far, sk_fpr)
    np.testing.assert_allclose(tar, sk_tpr)
    np.testing.assert_allclose(thr, -sk_thr)
    assert thr[0] == -np.inf and far[-1] == 1 and tar[-1] == 1


def test_roc_curve_with_similarities():
    d, y = _pairs()
    far, tar, thr = metrics.roc_curve(-d, y, higher_is_same=True)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(y, -d, drop_intermediate=False)
    np.testing.assert_allclose(far, sk_fpr)
    np.testing.assert_allclose(tar, sk_tpr)
    np.testing.assert_allclose(thr, sk_thr)


@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_matches_scikit_learn(ties):
    d, y = _pairs(seed=1, ties=ties)
    assert metrics.roc_auc(d, y) == pytest.approx(skm.roc_auc_score(y, -d), abs=1e-12)
    assert metrics.roc_auc(torch.tensor(-d), torch.tensor(y), higher_is_same=True) == pytest.approx(
        skm.roc_auc_score(y, -d), abs=1e-12
    )
    # A perfectly separating distance has AUC 1; the reversed sign 0.
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 1.0
    assert metrics.roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0], higher_is_same=True) == 0.0


def test_equal_error_rate_interpolates_where_far_crosses_frr():
    # Sorted: .1P .2P .25N .3P .5N .6P .7N  (4 same, 3 different).
    # At t=.25: FAR 1/3, FRR 1/2; at t=.3: FAR 1/3, FRR 1/4. FAR - FRR goes -1/6 -> +1/12,
    # crossing 2/3 of the way: FRR = 1/2 - 2/3 * 1/4 = 1/3 = FAR, threshold .25 + 2/3 * .05.
    d = [0.1, 0.2, 0.3, 0.6, 0.25, 0.5, 0.7]
    y = [1, 1, 1, 1, 0, 0, 0]
    eer, threshold = metrics.equal_error_rate(d, y)
    assert eer == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.25 + 2 / 3 * 0.05)
    eer_s, threshold_s = metrics.equal_error_rate(-np.array(d), y, higher_is_same=True)
    assert eer_s == pytest.approx(1 / 3) and threshold_s == pytest.approx(-threshold)


def test_equal_error_rate_on_an_exact_crossing():
    # Sorted .1P .2N .3P .4N: at t=.2 FAR = FRR = 1/2 exactly, no interpolation needed.
    eer, threshold = metrics.equal_error_rate([0.1, 0.3, 0.2, 0.4], [1, 1, 0, 0])
    assert eer == pytest.approx(0.5) and threshold == pytest.approx(0.2)
    assert metrics.equal_error_rate([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])[0] == 0.0


def test_tar_at_far_takes_the_largest_tar_within_the_target():
    negatives = 1.0 + np.arange(2000) / 1000  # 1.000, 1.001, ... : two of them allowed at FAR 1e-3
    positives = np.r_[np.linspace(0.1, 0.5, 60), np.full(10, 1.0005), np.full(10, 1.0015), np.full(20, 2.5)]
    d = np.r_[positives, negatives]
    y = np.r_[np.ones(100), np.zeros(2000)]
    # Up to 1.0015 only two negatives (1.000, 1.001) are accepted, and 80 of 100 positives.
    assert metrics.tar_at_far(d, y, far=1e-3) == pytest.approx(0.8)
    point = metrics.operating_point_at_far(d, y, far=1e-3)
    assert point.resolved and point.far == pytest.approx(1e-3) and point.threshold == pytest.approx(1.0015)
    assert metrics.tar_at_far(d, y, far=0.0) == pytest.approx(0.6)
    assert metrics.tar_at_far(-d, y, far=1e-3, higher_is_same=True) == pytest.approx(0.8)


def test_tar_at_far_counts_three_in_three_thousand_as_within_1e_3():
    negatives = 1.0 + np.arange(3000) / 3000
    positives = np.r_[np.full(5, 0.5), np.full(5, 1.0 + 2.5 / 3000), np.full(5, 1.0 + 3.5 / 3000)]
    y = np.r_[np.ones(15), np.zeros(3000)]
    point = metrics.operating_point_at_far(np.r_[positives, negatives], y, far=1e-3)
    assert point.tar == pytest.approx(10 / 15) and point.far == pytest.approx(3 / 3000) and point.resolved


def test_tar_at_far_with_too_few_negatives_returns_tar_at_far_zero_and_flags_it():
    negatives = 1.0 + np.arange(500) / 500  # 1/500 > 1e-3: no FAR between 0 and 1e-3 exists
    positives = np.r_[np.full(30, 0.5), np.full(70, 1.5)]
    d = np.r_[positives, negatives]
    y = np.r_[np.ones(100), np.zeros(500)]
    point = metrics.operating_point_at_far(d, y, far=1e-3)
    assert point.tar == pytest.approx(0.3) and point.far == 0.0 and not point.resolved
    assert metrics.tar_at_far(d, y) == pytest.approx(0.3)
    assert metrics.operating_point_at_far(d, y, far=2e-3).resolved


def _brute_best_accuracy(d, y):
    values = np.unique(d)
    cuts = np.r_[values[0] - 1, (values[1:] + values[:-1]) / 2, values[-1] + 1]
    return max(np.mean((d <= t) == y) for t in cuts)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_best_threshold_reaches_the_best_accuracy_of_any_cut(seed, ties):
    d, y = _pairs(n=300, seed=seed, ties=ties)
    threshold, acc = metrics.best_threshold(d, y)
    assert acc == pytest.approx(_brute_best_accuracy(d, y))
    assert metrics.accuracy_at_threshold(d, y, threshold) == pytest.approx(acc)
    # The threshold is a midpoint between two distinct distances, never a distance itself.
    assert not np.any(d == threshold)
    threshold_s, acc_s = metrics.best_threshold(-d, y, higher_is_same=True)
    assert threshold_s == pytest.approx(-threshold) and acc_s == acc
    assert metrics.accuracy_at_threshold(-d, y, threshold_s, higher_is_same=True) == pytest.approx(acc)


def test_best_threshold_is_the_midpoint_of_the_gap():
    threshold, acc = metrics.best_threshold([0.1, 0.2, 0.6, 0.9], [1, 1, 0, 0])
    assert threshold == pytest.approx(0.4) and acc == 1.0
    # All pairs of one person: accept everything, beyond the largest distance.
    threshold, acc = metrics.best_threshold([0.1, 0.2, 0.3], [1, 1, 1])
    assert threshold > 0.3 and acc == 1.0
    threshold, acc = metrics.best_threshold([0.1, 0.2, 0.3], [0, 0, 0])
    assert threshold < 0.1 and acc == 1.0


def test_best_threshold_on_adjacent_floats_still_separates_them():
    lo = 1.0
    hi = np.nextafter(lo, 2.0)
    threshold, acc = metrics.best_threshold([lo, hi], [1, 0])
    assert acc == 1.0 and metrics.accuracy_at_threshold([lo, hi], [1, 0], threshold) == 1.0


def test_kfold_accuracy_chooses_each_threshold_on_the_other_folds():
    # Fold 0 and 1 separate at 2.5; fold 2 separates at 6.5. Each fold's threshold comes from
    # the others: folds 0 and 1 get 6.5 (accept all: half right), fold 2 gets 2.5 (reject all).
    d = np.r_[[1, 2, 3, 4], [1, 1.5, 2, 3, 3.5, 4], [5, 5.2, 5.5, 5.8, 6, 7, 8]]
    y = np.r_[[1, 1, 0, 0], [1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0]]
    folds = np.r_[[7] * 4, [3] * 6, [9] * 7]  # ids need not be 0..k-1; results follow sorted ids
    # Shuffle so folds are interleaved, as LFW's are not but other sets may be.
    order = np.random.default_rng(0).permutation(len(d))
    result = metrics.kfold_accuracy(d[order], y[order], folds[order])
    np.testing.assert_allclose(result.per_fold, [0.5, 0.5, 2 / 7])  # folds 3, 7, 9
    np.testing.assert_allclose(result.thresholds, [6.5, 6.5, 2.5])
    assert result.mean == pytest.approx((1 + 2 / 7) / 3)
    assert result.std == pytest.approx(np.std([0.5, 0.5, 2 / 7], ddof=1))
    assert result.std_error == pytest.approx(result.std / math.sqrt(3))
    mean, std, per_fold, thresholds = result  # unpacks as a tuple
    assert mean == result.mean


def test_kfold_accuracy_matches_a_plain_loop_on_ten_folds():
    d, y = _pairs(n=600, seed=3)
    folds = np.repeat(np.arange(10), 60)
    result = metrics.kfold_accuracy(d, y, folds)
    expected = []
    for k in range(10):
        threshold, _ = metrics.best_threshold(d[folds != k], y[folds != k])
        expected.append(np.mean((d[folds == k] <= threshold) == y[folds == k]))
    np.testing.assert_allclose(result.per_fold, expected)


def test_kfold_accuracy_needs_two_folds():
    with pytest.raises(ValueError, match="at least 2 folds"):
        metrics.kfold_accuracy([0.1, 0.2], [1, 0], [0, 0])
    with pytest.raises(ValueError, match="one fold id per pair"):
        metrics.kfold_accuracy([0.1, 0.2], [1, 0], [0, 1, 1])


def test_verification_report_uses_a_given_threshold_or_says_it_chose_one():
    d, y = _pairs(n=2000, seed=4)
    chosen = metrics.verification_report(d, y)
    assert chosen["threshold_source"] == "best_on_these_pairs"
    assert (chosen["threshold"], chosen["accuracy"]) == metrics.best_threshold(d, y)
    assert chosen["roc_auc"] == pytest.approx(skm.roc_auc_score(y, -d))
    assert (chosen["eer"], chosen["eer_threshold"]) == metrics.equal_error_rate(d, y)
    assert chosen["tar_at_far_1e-3"] == metrics.tar_at_far(d, y, 1e-3)
    # About 1,000 different-people pairs: whether FAR 1e-3 is resolved depends on the exact count.
    assert chosen["tar_at_far_1e-3_resolved"] is (chosen["n_different"] >= 1000)
    assert chosen["n_pairs"] == 2000 and chosen["n_same"] + chosen["n_different"] == 2000
    given = metrics.verification_report(d, y, threshold=0.5)
    assert given["threshold_source"] == "given" and given["threshold"] == 0.5
    assert given["accuracy"] == metrics.accuracy_at_threshold(d, y, 0.5)
    assert given["accuracy"] <= chosen["accuracy"]
    sims = metrics.verification_report(-d, y, higher_is_same=True)
    assert sims["roc_auc"] == pytest.approx(chosen["roc_auc"])
    assert sims["threshold"] == pytest.approx(-chosen["threshold"])


def test_verification_inputs_are_checked():
    with pytest.raises(ValueError, match="NaN"):
        metrics.roc_auc([0.1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="both same-person and different-people"):
        metrics.roc_auc([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="1 \\(same person\\) or 0"):
        metrics.roc_auc([0.1, 0.2], [1, 2])
    with pytest.raises(ValueError, match="differ in length"):
        metrics.roc_auc([0.1, 0.2], [1])


# --------------------------------------------------------------------------- retrieval


def _brute_knn(e, k, exclude_self):
    n = len(e)
    idx = np.empty((n, k), dtype=np.int64)
    dist = np.empty((n, k))
    for i in range(n):
        row = [(float(np.sqrt(np.sum((e[i] - e[j]) ** 2))), j) for j in range(n) if not (exclude_self and j == i)]
        row.sort()
        idx[i] = [j for _, j in row[:k]]
        dist[i] = [v for v, _ in row[:k]]
    return idx, dist


@pytest.mark.parametrize("exclude_self", [True, False])
def test_knn_matches_a_brute_force_loop(exclude_self):
    e = np.random.default_rng(0).normal(size=(60, 5)).astype(np.float32) + 3.0
    idx, dist = metrics.knn(e, 4, exclude_self=exclude_self, batch_size=7)
    ref_idx, ref_dist = _brute_knn(e.astype(np.float64), 4, exclude_self)
    assert idx.shape == (60, 4) and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)
    if exclude_self:
        assert not np.any(idx == np.arange(60)[:, None])
    else:
        np.testing.assert_array_equal(idx[:, 0], np.arange(60))
    idx_t, _ = metrics.knn(torch.from_numpy(e), 4, exclude_self=exclude_self)
    np.testing.assert_array_equal(idx_t, ref_idx)


def test_knn_keeps_identical_samples_as_neighbours_but_not_self():
    e = np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]])
    idx, dist = metrics.knn(e, 1)
    np.testing.assert_array_equal(idx[:, 0], [1, 0, 0])
    assert dist[0, 0] == pytest.approx(0.0, abs=1e-6)


def test_knn_refuses_k_out_of_range():
    with pytest.raises(ValueError, match=r"k must lie in \[1, 2\]"):
        metrics.knn(np.zeros((3, 2)), 3)


def _one_d(points):
    return np.asarray(points, dtype=np.float64)[:, None]


def test_precision_at_1_by_hand():
    # Nearest others: 0->1 (same), 1->0 (same), 10->11.5 (other), 11.5->10 (other),
    # 20->11.5 (other); 50 is the only sample of its identity and is left out: 2 of 5.
    e = _one_d([0, 1, 10, 11.5, 20, 50])
    labels = [0, 0, 1, 0, 1, 2]
    assert metrics.precision_at_1(e, labels) == pytest.approx(2 / 5)
    assert metrics.precision_at_1(torch.tensor(e), torch.tensor(labels), batch_size=2) == pytest.approx(2 / 5)


def test_map_at_r_by_hand():
    # Identity A at 0, 1, 3; B at 2.2, 5.5; C alone at 100; D at 50, 50.5.
    e = _one_d([0, 1, 3, 2.2, 5.5, 100, 50, 50.5])
    labels = np.array(["A", "A", "A", "B", "B", "C", "D", "D"])
    # a@0 (R=2): 1 (A), 2.2 (B)         -> (1/1) / 2            = 0.5
    # a@1 (R=2): 0 (A), 2.2 (B)         -> 0.5
    # a@3 (R=2): 2.2 (B), 1 (A)         -> (1/2) / 2            = 0.25
    # b@2.2 (R=1): 3 (A)                -> 0
    # b@5.5 (R=1): 3 (A)                -> 0
    # d@50, d@50.5 (R=1): each other    -> 1, 1
    # C has R = 0 and does not count.
    value, counted = metrics.mean_average_precision_at_r(e, labels)
    assert counted == 7
    assert value == pytest.approx((0.5 + 0.5 + 0.25 + 0 + 0 + 1 + 1) / 7)
    assert metrics.mean_average_precision_at_r(e, labels, batch_size=3)[0] == pytest.approx(value)


def test_map_at_r_counts_the_precision_at_each_relevant_rank():
    # Identity E at 200, 201, 203.5, 210; two single-sample identities at 202.4 and 205 only
    # get in the way (R = 0, so they are not queries).
    e = _one_d([200, 201, 203.5, 210, 202.4, 205])
    labels = ["E", "E", "E", "E", "F", "G"]
    # e@200   (R=3): 201 E, 202.4 F, 203.5 E  -> (1/1 + 2/3) / 3 = 5/9
    # e@201   (R=3): 200 E, 202.4 F, 203.5 E  -> 5/9
    # e@203.5 (R=3): 202.4 F, 205 G, 201 E    -> (1/3) / 3     = 1/9
    # e@210   (R=3): 205 G, 203.5 E, 202.4 F  -> (1/2) / 3     = 1/6
    value, counted = metrics.mean_average_precision_at_r(e, labels)
    assert counted == 4
    assert value == pytest.approx((5 / 9 + 5 / 9 + 1 / 9 + 1 / 6) / 4)


def _brute_map_at_r(e, labels):
    n = len(e)
    aps = {}
    for i in range(n):
        r = int(np.sum(labels == labels[i])) - 1
        if r == 0:
            continue
        order = sorted((j for j in range(n) if j != i), key=lambda j: np.linalg.norm(e[i] - e[j]))[:r]
        hits, total = 0, 0.0
        for rank, j in enumerate(order, start=1):
            if labels[j] == labels[i]:
                hits += 1
                total += hits / rank
        aps[i] = total / r
    return float(np.mean(list(aps.values()))), aps


def test_map_at_r_matches_a_brute_force_loop():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 12, 90)
    e = rng.normal(size=(90, 4)) + labels[:, None] * 0.3
    value, counted = metrics.mean_average_precision_at_r(e, labels, batch_size=16)
    ref, aps = _brute_map_at_r(e, labels)
    assert counted == len(aps)
    assert value == pytest.approx(ref, abs=1e-9)


def test_retrieval_needs_an_identity_with_two_samples():
    with pytest.raises(ValueError, match="two or more samples"):
        metrics.mean_average_precision_at_r(np.eye(3), [0, 1, 2])
    with pytest.raises(ValueError, match="two or more samples"):
        metrics.precision_at_1(np.eye(3), [0, 1, 2])
