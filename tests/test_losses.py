import math

import pytest
import torch

from cnnlab.config import FACE_LOSSES, FACE_MINERS, FaceTrainConfig
from cnnlab.errors import ConfigError
from cnnlab.losses import (
    MINERS,
    AllTripletsMiner,
    BatchHardMiner,
    ContrastiveLoss,
    FaceLoss,
    LpDistance,
    SemiHardMiner,
    TripletMarginLoss,
    Triplets,
    create_miner,
    face_loss_class,
    face_loss_names,
    reduce_losses,
)

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics


def _dist(u, v):
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(u, v)))


def _reduce(values, reduction):
    t = torch.tensor(values, dtype=torch.float64)
    if reduction == "none":
        return t
    if reduction == "sum":
        return t.sum()
    return t.mean() if len(values) else torch.tensor(0.0, dtype=torch.float64)


def _batch(people=5, per_person=4, dim=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(people).repeat_interleave(per_person)
    centres = torch.randn(people, dim, generator=g)
    emb = centres[labels] * scale + 0.7 * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)  # people are not in blocks in a real batch
    return emb[perm].double(), labels[perm]


# --------------------------------------------------------------------------- distance


@pytest.mark.parametrize("normalize", [False, True])
def test_pairwise_and_paired_distances_match_a_loop(normalize):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, generator=g, dtype=torch.float64) + 50.0  # far from the origin, as after a ReLU
    y = torch.randn(5, 4, generator=g, dtype=torch.float64) + 50.0
    dist = LpDistance(normalize_embeddings=normalize)
    xs = torch.nn.functional.normalize(x, dim=1) if normalize else x
    ys = torch.nn.functional.normalize(y, dim=1) if normalize else y
    expected = torch.tensor([[_dist(a, b) for b in ys] for a in xs], dtype=torch.float64)
    torch.testing.assert_close(dist.pairwise(x, y), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(dist(x, y), expected, rtol=1e-9, atol=1e-9)
    expected_self = torch.tensor([[_dist(a, b) for b in xs] for a in xs], dtype=torch.float64)
    torch.testing.assert_close(dist.pairwise(x), expected_self, rtol=1e-9, atol=1e-9)
    assert torch.all(torch.diagonal(dist.pairwise(x)) == 0)
    expected_paired = torch.tensor([_dist(a, b) for a, b in zip(xs[:5], ys)], dtype=torch.float64)
    torch.testing.assert_close(dist.paired(x[:5], y), expected_paired)
    if normalize:
        assert dist.pairwise(x, y).max() <= 2.0


def test_pairwise_distance_in_float32_stays_accurate_far_from_the_origin():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(64, 128, generator=g) * 10.0  # all positive, norms around 65
    exact = torch.cdist(x.double(), x.double(), compute_mode="donot_use_mm_for_euclid_dist")
    assert (LpDistance().pairwise(x).double() - exact).abs().max() < 1e-3


def test_half_precision_inputs_give_float32_distances():
    x = torch.randn(4, 8).half()
    assert LpDistance().pairwise(x).dtype == torch.float32
    assert LpDistance().paired(x, x).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # mixed-precision training
        d = LpDistance().pairwise(x.float())
    assert d.dtype == torch.float32


def test_distance_gradients_are_finite_for_identical_embeddings():
    x = torch.randn(3, 5, dtype=torch.float64)
    e = torch.cat([x, x]).requires_grad_()  # rows i and i + 3 coincide
    LpDistance().pairwise(e).sum().backward()
    assert torch.isfinite(e.grad).all()
    a = x.clone().requires_grad_()
    b = x.clone().requires_grad_()
    d = LpDistance().paired(a, b)
    assert torch.all(d == 0)
    d.sum().backward()
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_distance_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        LpDistance().paired(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="embedding size"):
        LpDistance().pairwise(torch.zeros(3, 2), torch.zeros(3, 5))
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        LpDistance().pairwise(torch.zeros(3))


# --------------------------------------------------------------------------- reduction


def test_reduction_of_nothing_is_zero_and_differentiable():
    x = torch.randn(4, requires_grad=True)
    empty = x[torch.zeros(0, dtype=torch.long)]
    loss = reduce_losses(empty, "mean")
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(x.grad == 0)


def test_an_unknown_reduction_is_refused_naming_the_choices():
    with pytest.raises(ConfigError, match="mean, sum, none"):
        ContrastiveLoss(reduction="avg")
    with pytest.raises(ConfigError, match="reduction"):
        reduce_losses(torch.zeros(2), "max")


# --------------------------------------------------------------------------- contrastive


@pytest.mark.parametrize("margin", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_contrastive_loss_matches_a_loop_over_pairs(margin, reduction):
    g = torch.Generator().manual_seed(int(margin * 10))
    e1 = torch.randn(12, 3, generator=g, dtype=torch.float64)
    e2 = torch.randn(12, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([1, 0] * 6)  # both labels, as ints
    expected = []
    for a, b, label in zip(e1, e2, y.tolist()):
        d = _dist(a, b)
        expected.append(label * d**2 + (1 - label) * max(0.0, margin**2 - d**2))
    got = ContrastiveLoss(margin=margin, reduction=reduction)(e1, e2, y)
    torch.testing.assert_close(got, _reduce(expected, reduction))
    # Some negatives fall inside the margin and some outside, so both branches are exercised.
    d = LpDistance().paired(e1, e2)[y == 0]
    if margin == 1.0:
        assert (d < margin).any() and (d > margin).any()


def test_contrastive_loss_accepts_bool_and_float_labels():
    e1, e2 = torch.randn(4, 3), torch.randn(4, 3)
    loss = ContrastiveLoss()
    ints = loss(e1, e2, torch.tensor([1, 0, 1, 0]))
    torch.testing.assert_close(loss(e1, e2, torch.tensor([True, False, True, False])), ints)
    torch.testing.assert_close(loss(e1, e2, torch.tensor([1.0, 0.0, 1.0, 0.0])), ints)


def test_contrastive_loss_is_zero_for_negatives_beyond_the_margin():
    e1 = torch.randn(5, 4)
    e2 = e1 + torch.tensor([3.0, 0.0, 0.0, 0.0])  # d = 3 > m = 2
    loss = ContrastiveLoss(margin=2.0, reduction="none")
    torch.testing.assert_close(loss(e1, e2, torch.zeros(5)), torch.zeros(5))
    # The same pairs labelled "same person" cost d^2 = 9.
    torch.testing.assert_close(loss(e1, e2, torch.ones(5)), torch.full((5,), 9.0))


def test_contrastive_loss_gradients_are_finite_for_identical_embeddings():
    e1 = torch.randn(4, 3, requires_grad=True)
    e2 = e1.detach().clone().requires_grad_()
    loss = ContrastiveLoss(margin=1.0)(e1, e2, torch.tensor([1, 0, 1, 0]))
    assert loss.item() == pytest.approx(0.5)  # two negatives at d = 0 cost m^2 each, over 4 pairs
    loss.backward()
    assert torch.isfinite(e1.grad).all() and torch.isfinite(e2.grad).all()


def test_contrastive_margin_must_be_positive():
    with pytest.raises(ConfigError, match="margin must be a positive number"):
        ContrastiveLoss(margin=0.0)


def test_contrastive_loss_refuses_a_label_per_pair_mismatch():
    with pytest.raises(ValueError, match="one label per pair"):
        ContrastiveLoss()(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(4))


# --------------------------------------------------------------------------- triplet


def _triplet_loop(emb_a, emb_p, emb_n, margin):
    return [max(_dist(a, p) - _dist(a, n) + margin, 0.0) for a, p, n in zip(emb_a, emb_p, emb_n)]


@pytest.mark.parametrize("margin", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_triplet_loss_matches_a_loop_over_triplets(margin, reduction):
    g = torch.Generator().manual_seed(7)
    a, p, n = (torch.randn(10, 4, generator=g, dtype=torch.float64) for _ in range(3))
    got = TripletMarginLoss(margin=margin, reduction=reduction)(a, p, n)
    expected = _triplet_loop(a, p, n, margin)
    torch.testing.assert_close(got, _reduce(expected, reduction))
    assert 0 < sum(v == 0.0 for v in expected) < 10  # some triplets are easy, some are not


@pytest.mark.parametrize("miner", [BatchHardMiner(), SemiHardMiner(margin=0.5), AllTripletsMiner()], ids=repr)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_triplet_loss_from_batch_matches_a_loop_over_the_mined_triplets(miner, reduction):
    emb, labels = _batch()
    loss = TripletMarginLoss(margin=0.5, reduction=reduction)
    got = loss.from_batch(emb, labels, miner)
    a, p, n = miner(emb, labels)
    assert len(a) > 0
    expected = _triplet_loop(emb[a], emb[p], emb[n], 0.5)
    torch.testing.assert_close(got, _reduce(expected, reduction), rtol=1e-9, atol=1e-9)


def test_triplet_loss_gradients_are_finite_when_anchor_and_positive_coincide():
    a = torch.randn(4, 3, requires_grad=True)
    p = a.detach().clone().requires_grad_()
    n = torch.randn(4, 3, requires_grad=True)
    TripletMarginLoss(margin=10.0)(a, p, n).backward()
    for t in (a, p, n):
        assert torch.isfinite(t.grad).all()
    x = torch.randn(3, 5)
    emb = torch.cat([x, x]).requires_grad_()  # each person's two images share one embedding
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    loss = TripletMarginLoss(margin=1.0).from_batch(emb, labels, AllTripletsMiner())
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(emb.grad).all()


def test_triplet_loss_on_a_batch_without_triplets_is_zero_and_differentiable():
    emb = torch.randn(4, 3, requires_grad=True)
    loss = TripletMarginLoss().from_batch(emb, torch.zeros(4, dtype=torch.long), BatchHardMiner())
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(emb.grad == 0)


def test_triplet_margin_cannot_be_negative():
    with pytest.raises(ConfigError, match="margin must be zero or positive"):
        TripletMarginLoss(margin=-0.1)
    with pytest.raises(ConfigError, match="margin must be a positive number for semi-hard"):
        SemiHardMiner(margin=0.0)


# --------------------------------------------------------------------------- miners


def _pairs_by_brute_force(labels):
    lab = labels.tolist()
    n = len(lab)
    pos = {a: [p for p in range(n) if p != a and lab[p] == lab[a]] for a in range(n)}
    neg = {a: [j for j in range(n) if lab[j] != lab[a]] for a in range(n)}
    return pos, neg


def _with_a_lone_person(emb, labels):
    # One image of a person absent otherwise: a valid negative, never an anchor with a positive.
    return torch.cat([emb, emb[:1] + 0.1]), torch.cat([labels, torch.tensor([99])])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_picks_the_farthest_positive_and_nearest_negative(seed):
    emb, labels = _with_a_lone_person(*_batch(seed=seed))
    d = LpDistance().pairwise(emb)
    a, p, n = BatchHardMiner()(emb, labels)
    pos, neg = _pairs_by_brute_force(labels)
    assert sorted(a.tolist()) == [i for i in range(len(labels)) if pos[i] and neg[i]]
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        assert j in pos[i] and k in neg[i]
        assert d[i, j] == max(d[i, q] for q in pos[i])
        assert d[i, k] == min(d[i, q] for q in neg[i])


@pytest.mark.parametrize("margin", [0.1, 0.5, 2.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_semi_hard_chooses_valid_semi_hard_negatives_and_falls_back_to_the_hardest(margin, seed):
    emb, labels = _with_a_lone_person(*_batch(seed=seed))
    d = LpDistance().pairwise(emb).tolist()
    a, p, n = SemiHardMiner(margin=margin)(emb, labels)
    pos, neg = _pairs_by_brute_force(labels)
    expected_pairs = sorted((i, j) for i in pos for j in pos[i] if neg[i])
    assert sorted(zip(a.tolist(), p.tolist())) == expected_pairs
    semi_count = fallback_count = 0
    for i, j, k in zip(a.tolist(), p.tolist(), n.tolist()):
        assert k in neg[i]
        semi = [q for q in neg[i] if d[i][j] < d[i][q] < d[i][j] + margin]
        if semi:
            semi_count += 1
            assert k in semi and d[i][k] == min(d[i][q] for q in semi)
        else:
            fallback_count += 1
            assert d[i][k] == min(d[i][q] for q in neg[i])
    # The margins are chosen so that each branch occurs.
    if margin <= 0.1:
        assert fallback_count > 0
    if margin >= 0.5:
        assert semi_count > 0


def test_semi_hard_on_a_line():
    # Anchor 0 and positive 1 (person 0); negatives at 0.5 (hard), 1.1 and 1.15 (semi-hard for
    # margin 0.2), 5 (easy). The nearest semi-hard one, 1.1, is chosen; with margin 0.05 none is
    # semi-hard and the hardest, 0.5, is used.
    emb = torch.tensor([[0.0], [1.0], [0.5], [1.15], [1.1], [5.0]])
    labels = torch.tensor([0, 0, 1, 2, 3, 4])
    a, p, n = SemiHardMiner(margin=0.2)(emb, labels)
    assert (a[0].item(), p[0].item(), n[0].item()) == (0, 1, 4)
    a, p, n = SemiHardMiner(margin=0.05)(emb, labels)
    assert (a[0].item(), p[0].item(), n[0].item()) == (0, 1, 2)


def test_all_triplets_lists_every_valid_triplet_once():
    emb, labels = _with_a_lone_person(*_batch(people=3, per_person=3))
    a, p, n = AllTripletsMiner()(emb, labels)
    pos, neg = _pairs_by_brute_force(labels)
    expected = sorted((i, j, k) for i in pos for j in pos[i] for k in neg[i])
    got = sorted(zip(a.tolist(), p.tolist(), n.tolist()))
    assert got == expected and len(set(got)) == len(got)


def test_miners_refuse_labels_that_do_not_match_the_batch():
    with pytest.raises(ValueError, match=r"labels must be \(4,\)"):
        BatchHardMiner()(torch.randn(4, 2), torch.zeros(3, dtype=torch.long))


# --------------------------------------------------------------------------- face losses

# Six people with four images each; a batch of 8 images: 4 pairs, or P = 2 people x K = 4 images.
FACE_LABELS = torch.arange(24) // 4


# The losses without learnt weights; the margin softmax losses (needs "classes") are in test_margin_losses.py.
PAIR_AND_TRIPLET_LOSSES = [n for n in face_loss_names() if face_loss_class(n).needs != "classes"]


def _face_loss(name: str, **kw) -> FaceLoss:
    return face_loss_class(name).from_config(FaceTrainConfig(loss=name, batch_size=8, pk_images=4, **kw))


def _separated(labels: torch.Tensor) -> torch.Tensor:
    """Embeddings where every person is one point, far (10 * sqrt 2) from every other person's."""
    return 10.0 * torch.nn.functional.one_hot(labels, int(labels.max()) + 1).double()


def test_every_loss_the_config_takes_is_registered_and_only_those():
    assert face_loss_names() == list(FACE_LOSSES)
    assert list(MINERS) == list(FACE_MINERS)
    with pytest.raises(ConfigError, match="loss must be one of contrastive, triplet, cosface, .*; got 'lifted'"):
        face_loss_class("lifted")


@pytest.mark.parametrize("name", PAIR_AND_TRIPLET_LOSSES)
def test_a_face_loss_is_a_module_named_and_registered_as_the_config_says(name):
    loss = _face_loss(name)
    assert isinstance(loss, torch.nn.Module) and type(loss) is face_loss_class(name)
    assert loss.name == name and loss.needs in ("pairs", "labels")
    assert loss.margin == FaceTrainConfig(loss=name).margin
    assert list(loss.parameters()) == []  # nothing learnable in these two: the optimizer trains the network alone
    assert loss.to("cpu") is loss


@pytest.mark.parametrize("name", PAIR_AND_TRIPLET_LOSSES)
def test_a_face_loss_builds_batches_of_the_kind_it_needs(name):
    loss = _face_loss(name)
    g = torch.Generator().manual_seed(0)
    batches = loss.epoch_batches(FACE_LABELS, 8, g)
    assert batches and all(len(idx) == 8 and idx.dtype == torch.int64 for idx, _ in batches)
    assert all(0 <= int(idx.min()) and int(idx.max()) < len(FACE_LABELS) for idx, _ in batches)
    if loss.needs == "pairs":  # [first images; second images], target 1 for one person, 0 for two
        assert len(batches) == 24 // 4  # one pair per image, four pairs a batch
        for idx, target in batches:
            first, second = idx[:4], idx[4:]
            assert bool((first != second).all())
            assert torch.equal(target, (FACE_LABELS[first] == FACE_LABELS[second]).float())
    else:  # P x K: the person ids, K images each
        assert len(batches) == 24 // 8
        for idx, target in batches:
            assert torch.equal(target, FACE_LABELS[idx])
            assert sorted(torch.unique(target, return_counts=True)[1].tolist()) == [4, 4]
    again = loss.epoch_batches(FACE_LABELS, 8, g)  # the generator moved on: new batches
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))


@pytest.mark.parametrize("name", PAIR_AND_TRIPLET_LOSSES)
def test_a_face_loss_scores_a_batch_zero_when_people_are_apart_and_more_when_collapsed(name):
    loss = _face_loss(name)
    for idx, target in loss.epoch_batches(FACE_LABELS, 8, torch.Generator().manual_seed(1)):
        apart = _separated(FACE_LABELS[idx]).requires_grad_()
        value = loss(apart, target)
        assert value.shape == () and value.item() == pytest.approx(0.0, abs=1e-9)
        collapsed = torch.zeros(8, 6, dtype=torch.float64, requires_grad=True)
        value = loss(collapsed, target)
        if loss.needs == "labels" or not bool(target.all()):  # a batch holding different people
            assert value.item() > 0
        value.backward()
        assert torch.isfinite(collapsed.grad).all()


def test_the_contrastive_face_loss_is_the_contrastive_loss_of_the_batch_pairs():
    loss = _face_loss("contrastive", margin=0.7)
    idx, target = loss.epoch_batches(FACE_LABELS, 8, torch.Generator().manual_seed(0))[0]
    emb = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = [y * _dist(a, b) ** 2 + (1 - y) * max(0.0, 0.7**2 - _dist(a, b) ** 2)
                for a, b, y in zip(emb[:4], emb[4:], target.tolist())]
    torch.testing.assert_close(loss(emb, target), _reduce(expected, "mean"))


@pytest.mark.parametrize("miner", FACE_MINERS)
def test_the_triplet_face_loss_is_the_triplet_loss_of_the_mined_triplets(miner):
    loss = _face_loss("triplet", margin=0.5, miner=miner)
    assert type(loss.miner) is MINERS[miner]
    emb, labels = _batch()
    a, p, n = loss.miner(emb, labels)
    expected = _triplet_loop(emb[a], emb[p], emb[n], 0.5)
    torch.testing.assert_close(loss(emb, labels), _reduce(expected, "mean"), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", PAIR_AND_TRIPLET_LOSSES)
def test_a_face_loss_scores_the_validation_pairs_or_triplets_it_trains_on(name):
    loss = _face_loss(name)
    emb, labels = _batch(people=4, per_person=3)
    pairs = (torch.tensor([0, 1, 2, 3]), torch.tensor([5, 6, 7, 8]), (labels[:4] == labels[5:9]).float())
    triplets = Triplets(*AllTripletsMiner()(emb, labels))
    got = loss.validation_loss(emb, pairs, triplets)
    if loss.needs == "pairs":
        i, j, same = pairs
        expected = ContrastiveLoss(loss.margin)(emb[i], emb[j], same)
    else:
        expected = TripletMarginLoss(loss.margin)(emb[triplets.anchor], emb[triplets.positive],
                                                  emb[triplets.negative])
    torch.testing.assert_close(got, expected)
    assert loss.validation_loss(_separated(labels), pairs, triplets).item() == pytest.approx(0.0, abs=1e-9)


def test_a_face_loss_describes_itself_as_the_banner_and_summary_say():
    contrastive, triplet = _face_loss("contrastive"), _face_loss("triplet", miner="semi-hard")
    assert contrastive.describe() == "contrastive loss, margin 1"
    assert triplet.describe() == "triplet loss, margin 0.2, semi-hard mining"
    assert contrastive.summary() == {"loss": "contrastive", "margin": 1.0, "miner": None}
    assert triplet.summary() == {"loss": "triplet", "margin": 0.2, "miner": "semi-hard"}


def test_semi_hard_mining_with_a_zero_margin_falls_back_to_the_hardest_negatives():
    miner = create_miner("semi-hard", 0.0)
    emb = torch.tensor([[0.0], [1.0], [0.5], [1.1], [5.0]])
    a, p, n = miner(emb, torch.tensor([0, 0, 1, 2, 3]))
    assert (a[0].item(), p[0].item(), n[0].item()) == (0, 1, 2)
    with pytest.raises(ConfigError, match="miner must be one of batch-hard, semi-hard, all; got 'easy'"):
        create_miner("easy", 0.2)
