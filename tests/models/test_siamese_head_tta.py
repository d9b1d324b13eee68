"""The embedding heads (relu, bnneck) and flip test-time augmentation of SiameseNet."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.config import FACE_HEADS, FaceTrainConfig
from cnnlab.engine import infer
from cnnlab.errors import ConfigError
from cnnlab.models.siamese import HEADS, build_siamese
from cnnlab.run import upgrade_config

# Floats compared across paths (a batch and its mirror, two passes and one): run again with AVX2 kernels (.ci/run).
pytestmark = pytest.mark.numerics


def _model(head="relu", flip_tta=False, normalize=True):
    torch.manual_seed(0)
    return build_siamese("tiny", "none", embedding_dim=8, normalize=normalize, head=head, flip_tta=flip_tta)


def _images(n=4, side=24):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(1))


def test_the_config_offers_the_heads_the_model_has():
    assert list(HEADS) == list(FACE_HEADS) == ["relu", "bnneck"]
    cfg = FaceTrainConfig()
    assert (cfg.head, cfg.flip_tta) == ("relu", False)
    # A run saved before these options existed ran with the relu head and no TTA.
    old = {k: v for k, v in vars(cfg).items() if k not in ("head", "flip_tta", "scale", "subcenters")}
    assert {k: upgrade_config(old)[k] for k in ("head", "flip_tta", "scale", "subcenters")} == {
        "head": "relu", "flip_tta": False, "scale": 30.0, "subcenters": 3}


def test_the_relu_head_is_the_study_head_with_its_checkpoint_keys():
    model = _model().eval()
    assert [k for k in model.state_dict() if k.startswith("head.")] == ["head.0.weight", "head.0.bias"]
    with torch.no_grad():
        assert (model(_images()) >= 0).all()


def test_the_bnneck_head_is_linear_then_batchnorm_without_relu():
    model = _model("bnneck", normalize=False)
    linear, bn = model.head
    assert isinstance(linear, nn.Linear) and linear.bias is None and isinstance(bn, nn.BatchNorm1d)
    assert not any(isinstance(m, nn.ReLU) for m in model.head.modules())
    model.train()
    z = model(_images(8))
    # Training normalises with the batch's statistics: zero mean, unit variance per dimension.
    torch.testing.assert_close(z.mean(dim=0), torch.zeros(8), rtol=0, atol=1e-5)
    assert (z < 0).any()
    groups = {g["name"]: g["params"] for g in model.param_groups(1e-3, 1.0, weight_decay=1e-4)}
    assert groups["head"] == [linear.weight] and groups["head/no_decay"] == [bn.weight, bn.bias]


def test_an_unknown_head_is_refused():
    with pytest.raises(ConfigError, match="head must be one of relu, bnneck, got 'gelu'"):
        _model("gelu")


@pytest.mark.parametrize("head", FACE_HEADS)
def test_flip_tta_averages_the_image_and_its_mirror(head):
    model = _model(head, flip_tta=True).eval()
    x = _images()
    with torch.no_grad():
        z, mirrored = model(x), model(x.flip(3))
        feats = (model.backbone.forward_features(x) + model.backbone.forward_features(x.flip(3))) / 2
        model.flip_tta = False
        plain = model(x)
        e1, e2 = model.head(model.backbone.forward_features(x)), model.head(model.backbone.forward_features(x.flip(3)))
    torch.testing.assert_close(z, F.normalize(model.head(feats), dim=1))
    torch.testing.assert_close(z, mirrored, rtol=0, atol=1e-6)  # an image and its mirror: one embedding
    assert not torch.allclose(z, plain, atol=1e-4)
    if head == "bnneck":  # affine in eval mode: exactly the mean of the two embeddings, then normalised
        torch.testing.assert_close(z, F.normalize((e1 + e2) / 2, dim=1))


def test_flip_tta_reaches_inference_with_features_and_leaves_training_alone():
    model = _model("bnneck", flip_tta=True)
    x = (_images() * 255).to(torch.uint8)
    out, feats = infer(model, x, model.normalize_input, device=torch.device("cpu"), features=True)
    with torch.no_grad():
        torch.testing.assert_close(out, model.eval()(x))
        torch.testing.assert_close(feats, model.forward_features(model.normalize_input(x)))
        xs = model.normalize_input(x)
        mean = (model.backbone.forward_features(xs) + model.backbone.forward_features(xs.flip(3))) / 2
    torch.testing.assert_close(feats, mean)
    model.train()
    model.head[1].eval()  # batch statistics aside, training sees each image once, unflipped
    model.backbone.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.normalize(model.head(model.backbone.forward_features(xs)), dim=1))
