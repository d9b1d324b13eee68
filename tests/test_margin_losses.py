"""The margin softmax losses: values and gradients against pytorch-metric-learning, batches, options."""

import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.config import FACE_MARGIN_LOSSES, FaceTrainConfig
from cnnlab.errors import ConfigError
from cnnlab.losses import (
    ArcFaceLoss,
    ContrastiveLoss,
    CosFaceLoss,
    LpDistance,
    SubCenterArcFaceLoss,
    Triplets,
    face_loss_class,
    face_loss_names,
)

# Floats compared with a reference implementation: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics

pml = pytest.importorskip("pytorch_metric_learning.losses")

# The two implementations compute the same formulas in another order: float64 agrees to rounding, float32 to
# its precision times the scale (the logits are cosines times s).
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


def _reference(loss):
    """pytorch-metric-learning's loss with the same options and weights. Its weight matrix is (D, C * K),
    ours (C * K, D); its ArcFace margin is in degrees, ours in radians."""
    c, d, k = loss.num_classes, loss.weight.shape[1], loss.subcenters
    if isinstance(loss, SubCenterArcFaceLoss):
        ref = pml.SubCenterArcFaceLoss(num_classes=c, embedding_size=d, margin=math.degrees(loss.margin),
                                       scale=loss.scale, sub_centers=k)
    elif isinstance(loss, ArcFaceLoss):
        ref = pml.ArcFaceLoss(c, d, margin=math.degrees(loss.margin), scale=loss.scale)
    else:
        ref = pml.CosFaceLoss(c, d, margin=loss.margin, scale=loss.scale)
    with torch.no_grad():
        ref.W.copy_(loss.weight.T)
    return ref.to(loss.weight.dtype)


def _loss(name, num_classes=7, dim=5, margin=None, scale=30.0, subcenters=3, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cls = face_loss_class(name)
    kw = {"subcenters": subcenters} if cls is SubCenterArcFaceLoss else {}
    margin = FaceTrainConfig(loss=name).margin if margin is None else margin
    return cls(num_classes, dim, margin, scale, **kw).to(dtype)


def _inputs(n=32, num_classes=7, dim=5, dtype=torch.float64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=dtype), torch.randint(0, num_classes, (n,), generator=g)


CASES = [
    ("cosface", None, 30.0), ("cosface", 0.2, 64.0), ("cosface", 0.0, 16.0),
    ("arcface", None, 30.0), ("arcface", 0.3, 64.0), ("arcface", 1.2, 10.0),
    ("subcenter-arcface", None, 30.0), ("subcenter-arcface", 0.35, 64.0),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name, margin, scale", CASES)
def test_loss_and_gradients_equal_pytorch_metric_learning(name, margin, scale, dtype):
    ours = _loss(name, margin=margin, scale=scale, dtype=dtype)
    ref = _reference(ours)
    emb, labels = _inputs(dtype=dtype)
    e1, e2 = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    a, b = ours(e1, labels), ref(e2, labels)
    assert a.dtype == dtype
    torch.testing.assert_close(a, b, **TOL[dtype])
    a.backward()
    b.backward()
    torch.testing.assert_close(e1.grad, e2.grad, **TOL[dtype])
    torch.testing.assert_close(ours.weight.grad, ref.W.grad.T, **TOL[dtype])


def test_arcface_beyond_180_degrees_less_the_margin_equals_the_reference():
    # Embeddings opposite their own weight (and nearly so): theta + m passes 180 degrees, where both use
    # cos(theta) - m sin(m), which keeps the logit falling as the angle grows.
    ours = _loss("arcface", margin=0.5)
    labels = torch.tensor([0, 1, 2, 3])
    emb = -ours.weight.detach()[labels].clone()
    emb[2:] += 0.05 * torch.randn(2, 5, dtype=emb.dtype)
    torch.testing.assert_close(ours(emb, labels), _reference(ours)(emb, labels), **TOL[torch.float64])
    cos = torch.tensor([-1.0, -0.99, -0.95], dtype=torch.float64)
    assert (ours.target_cosine(cos) == cos - 0.5 * math.sin(0.5)).all()


def test_arcface_gradient_stays_finite_on_the_own_weight():
    # arccos has an infinite slope at cos = 1: an image exactly on its weight must not give NaN.
    loss = _loss("arcface", dtype=torch.float32)
    labels = torch.tensor([0, 1])
    emb = loss.weight.detach()[labels].clone().requires_grad_()
    loss(emb, labels).backward()
    assert torch.isfinite(emb.grad).all() and torch.isfinite(loss.weight.grad).all()


@pytest.mark.parametrize("name", FACE_MARGIN_LOSSES)
def test_a_zero_margin_is_the_softmax_of_the_scaled_cosines(name):
    loss = _loss(name, margin=0.0, scale=12.0)
    emb, labels = _inputs()
    cos = F.normalize(emb, dim=1) @ F.normalize(loss.weight.detach(), dim=1).T
    cos = cos.view(len(emb), loss.num_classes, loss.subcenters).amax(dim=2)
    torch.testing.assert_close(loss(emb, labels), F.cross_entropy(12.0 * cos, labels), **TOL[torch.float64])


@pytest.mark.parametrize("name", FACE_MARGIN_LOSSES)
def test_a_larger_margin_costs_more(name):
    emb, labels = _inputs()
    values = [_loss(name, margin=m)(emb, labels).item() for m in (0.0, 0.1, 0.3)]
    assert values[0] < values[1] < values[2]


def test_one_subcenter_is_arcface_and_an_image_counts_with_its_nearest_subcenter():
    emb, labels = _inputs()
    sub, arc = _loss("subcenter-arcface", subcenters=1), _loss("arcface")
    with torch.no_grad():
        arc.weight.copy_(sub.weight)
    torch.testing.assert_close(sub(emb, labels), arc(emb, labels), **TOL[torch.float64])
    # Three sub-centres: image by image, the loss is ArcFace's with each person's sub-centre nearest that image.
    sub = _loss("subcenter-arcface", subcenters=3)
    w = sub.weight.detach().view(7, 3, 5)
    per_image = []
    for x, y in zip(emb, labels):
        nearest = (F.normalize(w, dim=2) @ F.normalize(x, dim=0)).argmax(dim=1)  # (7,)
        with torch.no_grad():
            arc.weight.copy_(w[torch.arange(7), nearest])
        per_image.append(arc(x[None], y[None]))
    torch.testing.assert_close(sub(emb, labels), torch.stack(per_image).mean(), **TOL[torch.float64])


def test_half_precision_embeddings_give_a_float32_loss_close_to_float32():
    loss = _loss("arcface", dtype=torch.float32)
    emb, labels = _inputs(dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = loss(emb.bfloat16(), labels)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(loss(emb, labels).item(), rel=2e-2)  # bf16 embeddings: 8 bits of mantissa


def test_the_loss_owns_a_unit_weight_per_person_and_subcenter():
    loss = _loss("subcenter-arcface", num_classes=4, dim=6, subcenters=3)
    (name, w), = loss.named_parameters()
    assert name == "weight" and w.shape == (12, 6)
    torch.testing.assert_close(w.detach().norm(dim=1), torch.ones(12, dtype=w.dtype))
    assert set(loss.state_dict()) == {"weight"}


# --------------------------------------------------------------------------- as face losses


def test_the_margin_losses_are_registered_and_need_class_labels():
    assert face_loss_names() == ["contrastive", "triplet", *FACE_MARGIN_LOSSES]
    for name, cls in zip(FACE_MARGIN_LOSSES, (CosFaceLoss, ArcFaceLoss, SubCenterArcFaceLoss)):
        assert face_loss_class(name) is cls and cls.needs == "classes"


@pytest.mark.parametrize("name, margin, extra", [("cosface", 0.35, {}), ("arcface", 0.5, {}),
                                                 ("subcenter-arcface", 0.5, {"subcenters": 3})])
def test_from_config_takes_the_defaults_and_needs_the_number_of_people(name, margin, extra):
    cfg = FaceTrainConfig(loss=name, embedding_dim=8)
    loss = face_loss_class(name).from_config(cfg, 5)
    assert (loss.margin, loss.scale, loss.num_classes, loss.subcenters) == (margin, 30.0, 5, extra.get("subcenters", 1))
    assert loss.weight.shape == (5 * loss.subcenters, 8)
    assert loss.summary() == {"loss": name, "margin": margin, "miner": None, "scale": 30.0, **extra}
    assert loss.describe().startswith(f"{name} loss, margin {margin:g}, scale 30, 5 training people")
    with pytest.raises(ValueError, match=f"the {name} loss learns a weight per training person"):
        face_loss_class(name).from_config(cfg)
    cfg = FaceTrainConfig(loss=name, margin=0.25, scale=64.0, subcenters=2)
    loss = face_loss_class(name).from_config(cfg, 3)
    assert (loss.margin, loss.scale) == (0.25, 64.0)


@pytest.mark.parametrize("bad, message", [
    (dict(num_classes=1), "at least two training people, got 1"),
    (dict(scale=0.0), "scale must be a positive number, got 0.0"),
    (dict(subcenters=0), "subcenters must be a positive integer, got 0"),
])
def test_the_library_refuses_values_it_cannot_train_with(bad, message):
    kw = dict(num_classes=3, embedding_dim=4, margin=0.5, scale=30.0, subcenters=2) | bad
    with pytest.raises(ConfigError, match=message):
        SubCenterArcFaceLoss(**kw)


def test_epoch_batches_are_random_images_with_their_class_every_image_once():
    # Person ids as the training split holds them: not 0..C-1, and people with a single image.
    labels = torch.tensor([7, 7, 7, 3, 3, 42, 11, 11, 11, 11, 5, 9, 9])
    loss = _loss("arcface", num_classes=6)
    g = torch.Generator().manual_seed(0)
    batches = loss.epoch_batches(labels, 4, g)
    assert [len(idx) for idx, _ in batches] == [4, 4, 4]  # the partial last batch of 1 is dropped
    seen = torch.cat([idx for idx, _ in batches])
    assert len(set(seen.tolist())) == 12  # no image twice
    order = {p: c for c, p in enumerate(sorted(set(labels.tolist())))}  # classes in the order of the ids
    for idx, target in batches:
        assert target.tolist() == [order[p] for p in labels[idx].tolist()]
    again = loss.epoch_batches(labels, 4, g)
    assert not all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, again))  # a new draw each epoch
    assert [len(i) for i, _ in loss.epoch_batches(labels, 64, g)] == [13]  # one partial batch: kept
    with pytest.raises(ValueError, match="show 6 people, but the loss holds weights for 5"):
        _loss("arcface", num_classes=5).epoch_batches(labels, 4, g)


def test_single_image_people_are_trained_as_classes():
    labels = torch.tensor([0, 0, 1, 2])  # people 1 and 2 have one image each
    loss = _loss("cosface", num_classes=3)
    covered = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        for _, target in loss.epoch_batches(labels, 2, g):
            covered |= set(target.tolist())
    assert covered == {0, 1, 2}


@pytest.mark.parametrize("name", FACE_MARGIN_LOSSES)
def test_validation_loss_is_the_contrastive_loss_of_the_validation_pairs(name):
    loss = _loss(name, dim=4)
    emb = 3.0 * torch.randn(6, 4, dtype=torch.float64)
    pairs = (torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5]), torch.tensor([1.0, 0.0, 1.0]))
    triplets = Triplets(torch.tensor([0]), torch.tensor([3]), torch.tensor([1]))
    expected = ContrastiveLoss(1.0, LpDistance(normalize_embeddings=True))(emb[pairs[0]], emb[pairs[1]], pairs[2])
    torch.testing.assert_close(loss.validation_loss(emb, pairs, triplets), expected)
    # Unit-length embeddings: the scale of the embeddings does not change it.
    torch.testing.assert_close(loss.validation_loss(7 * emb, pairs, triplets), expected)
