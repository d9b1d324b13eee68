import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cnnlab.data.images import center_crop_resize
from cnnlab.errors import CheckpointError
from cnnlab.models.efficientnet_lite import (
    BN_EPS,
    BN_MOMENTUM,
    LITE_MEAN,
    LITE_STD,
    EfficientNetLite0,
    efficientnet_lite0,
    load_lite0_state,
    reference_key,
    reference_key_map,
    same_padding,
    shipped_weights_path,
)

reference_impl = pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture(scope="module")
def shipped_state() -> dict:
    return torch.load(shipped_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite() -> EfficientNetLite0:
    return efficientnet_lite0(pretrained=True).eval()


@pytest.fixture(scope="module")
def reference(shipped_state):
    # image_size=None makes the reference pad dynamically, so it accepts any input size.
    ref = reference_impl.EfficientNet.from_name("efficientnet-lite0", image_size=None)
    ref.load_state_dict(shipped_state, strict=True)
    return ref.eval()


@pytest.fixture(scope="module")
def reference_static(shipped_state):
    # The reference's default build: padding fixed for 224x224 inputs.
    ref = reference_impl.EfficientNet.from_name("efficientnet-lite0")
    ref.load_state_dict(shipped_state, strict=True)
    return ref.eval()


def _lite_input(rgb: np.ndarray) -> torch.Tensor:
    """The Lite eval preprocessing: centre crop 224/256 of the short side, bicubic to 224, (x - 127) / 128."""
    img = center_crop_resize(Image.fromarray(rgb), 224, crop=224 / 256)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)  # (3, 224, 224)
    return ((x - 127.0) / 128.0).unsqueeze(0)  # (1, 3, 224, 224)


# ---------------------------------------------------------------- key mapping


def test_every_shipped_key_maps_to_a_distinct_entry_of_the_right_shape(shipped_state):
    mapping = reference_key_map(list(shipped_state))
    own = EfficientNetLite0().state_dict()
    assert len(set(mapping.values())) == len(shipped_state) == 296  # nothing merged
    assert set(mapping.values()) == set(own)  # every key consumed, every entry filled
    for src, dst in mapping.items():
        assert own[dst].shape == shipped_state[src].shape, (src, dst)


def test_loaded_weights_equal_the_shipped_tensors(lite, shipped_state):
    own = lite.state_dict()
    for src, dst in reference_key_map(list(shipped_state)).items():
        assert torch.equal(own[dst], shipped_state[src]), src


@pytest.mark.parametrize(
    "src, dst",
    [
        ("_conv_stem.weight", "stem.conv.weight"),
        ("_bn0.running_var", "stem.bn.running_var"),
        ("_blocks.0._depthwise_conv.weight", "blocks.0.depthwise.conv.weight"),
        ("_blocks.0._bn1.bias", "blocks.0.depthwise.bn.bias"),
        ("_blocks.0._bn2.weight", "blocks.0.project.bn.weight"),
        ("_blocks.15._expand_conv.weight", "blocks.15.expand.conv.weight"),
        ("_blocks.15._bn0.num_batches_tracked", "blocks.15.expand.bn.num_batches_tracked"),
        ("_blocks.7._project_conv.weight", "blocks.7.project.conv.weight"),
        ("_conv_head.weight", "head.conv.weight"),
        ("_bn1.running_mean", "head.bn.running_mean"),
        ("_fc.bias", "classifier.bias"),
    ],
)
def test_reference_key_names(src, dst):
    assert reference_key(src) == dst


def test_unknown_reference_key_is_refused_naming_the_file(shipped_state, tmp_path):
    state = dict(shipped_state)
    state["_blocks.3._se_reduce.weight"] = torch.zeros(4, 144, 1, 1)  # an SE layer Lite0 does not have
    with pytest.raises(CheckpointError, match=r"w\.pth.*_blocks\.3\._se_reduce\.weight"):
        load_lite0_state(EfficientNetLite0(), state, source=str(tmp_path / "w.pth"))


def test_missing_and_misshapen_keys_are_refused(shipped_state):
    state = dict(shipped_state)
    del state["_blocks.5._bn1.running_var"]
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. blocks\.5\.depthwise\.bn\.running_var\)"):
        load_lite0_state(EfficientNetLite0(), state, source="x")
    state = dict(shipped_state)
    state["_fc.weight"] = torch.zeros(10, 1280)
    with pytest.raises(CheckpointError, match=r"wrong shape \(e\.g\. classifier\.weight: \(10, 1280\)"):
        load_lite0_state(EfficientNetLite0(), state, source="x")


def test_own_layout_round_trips_through_a_file(lite, tmp_path):
    path = tmp_path / "lite0.pt"
    torch.save(lite.state_dict(), path)
    again = efficientnet_lite0(weights_path=path)
    for k, v in lite.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_missing_weights_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        efficientnet_lite0(weights_path=tmp_path / "nope.pth")


def test_pretrained_false_is_random_init(shipped_state):
    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=False)
    assert not torch.equal(model.stem.conv.weight, shipped_state["_conv_stem.weight"])
    assert torch.equal(model.stem.bn.running_mean, torch.zeros(32))


# ---------------------------------------------------------------- architecture


def test_architecture_is_lite0(lite, reference):
    n_params = sum(p.numel() for p in lite.parameters())
    assert n_params == sum(p.numel() for p in reference.parameters()) == 4_652_008
    bns = [m for m in lite.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == 49 and all(m.eps == BN_EPS == 1e-3 and m.momentum == BN_MOMENTUM == 0.01 for m in bns)
    # No squeeze-excitation (no sigmoid gates), ReLU6 everywhere, fixed stem and head widths.
    assert not any(isinstance(m, (nn.Sigmoid, nn.SiLU, nn.ReLU)) for m in lite.modules())
    # stem, blocks (block 0 has no expand conv), head
    assert sum(isinstance(m, nn.ReLU6) for m in lite.modules()) == 1 + (1 + 15 * 2) + 1
    assert lite.stem.conv.out_channels == 32 and lite.head.conv.out_channels == lite.num_features == 1280
    assert len(lite.blocks) == 16


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 3, 2, (0, 1)),  # even input: the extra pixel goes after, unlike PyTorch's padding=1
        (112, 5, 2, (1, 2)),
        (75, 3, 2, (1, 1)),  # odd input: symmetric
        (75, 5, 2, (2, 2)),
        (7, 3, 1, (1, 1)),
        (7, 5, 1, (2, 2)),
    ],
)
def test_same_padding(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_stride2_convs_pad_asymmetrically_on_even_inputs(lite):
    # The stem conv with PyTorch's symmetric padding=1 gives other numbers than TensorFlow "same".
    x = torch.randn(1, 3, 16, 16)
    conv = lite.stem.conv
    symmetric = nn.functional.conv2d(x, conv.weight, stride=2, padding=1)
    tf_same = nn.functional.conv2d(nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    with torch.no_grad():
        ours = conv(x)
    assert ours.shape == (1, 32, 8, 8)
    torch.testing.assert_close(ours, tf_same)
    assert not torch.allclose(ours, symmetric, atol=1e-3)


# ---------------------------------------------------------------- against the reference implementation


@pytest.mark.parametrize("hw", [(224, 224), (150, 150), (113, 150), (64, 97)])
def test_matches_reference_implementation(lite, reference, hw):
    torch.manual_seed(hw[0] * 1000 + hw[1])
    x = torch.randn(2, 3, *hw)
    with torch.no_grad():
        feats = lite.forward_features(x)
        logits = lite(x)
        ref_feats = reference.extract_features(x).mean(dim=(2, 3))
        ref_logits = reference(x)
    assert feats.shape == (2, 1280) and logits.shape == (2, 1000)
    torch.testing.assert_close(feats, ref_feats, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_matches_reference_static_padding_build_at_224(lite, reference_static):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(lite(x), reference_static(x), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- ImageNet predictions


def test_normalisation_constants_are_the_lite_preprocessing():
    x = torch.arange(256, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    mean = torch.tensor(LITE_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE_STD).view(1, 3, 1, 1)
    torch.testing.assert_close((x / 255 - mean) / std, (x - 127) / 128)


def test_predicts_a_cat_for_chelsea(lite):
    skdata = pytest.importorskip("skimage.data")
    with torch.no_grad():
        top5 = lite(_lite_input(skdata.chelsea())).topk(5).indices[0].tolist()
    assert {281, 282, 285} & set(top5[:2]), top5  # tabby, tiger cat, Egyptian cat


def test_predicts_espresso_for_coffee(lite):
    skdata = pytest.importorskip("skimage.data")
    with torch.no_grad():
        probs = lite(_lite_input(skdata.coffee())).softmax(dim=1)[0]
    assert probs.argmax().item() in (967, 968)  # espresso, cup
    assert probs[967] > 0.5


def test_stochastic_depth_acts_only_in_training(lite):
    model = efficientnet_lite0(pretrained=False)
    model.load_state_dict(lite.state_dict())
    assert model.blocks[0].drop_path == 0.0 and model.blocks[15].drop_path == pytest.approx(0.2 * 15 / 16)
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        model.train()
        torch.manual_seed(0)
        a = model.forward_features(x)
        torch.manual_seed(1)
        b = model.forward_features(x)
        model.eval()
        c, d = model.forward_features(x), model.forward_features(x)
    assert not torch.allclose(a, b)  # residual branches dropped at random
    torch.testing.assert_close(c, d)
    plain = efficientnet_lite0(pretrained=False, drop_path_rate=0.0)
    plain.load_state_dict(lite.state_dict())
    plain.train()
    with torch.no_grad():
        torch.manual_seed(0)
        e = plain.forward_features(x)
        torch.manual_seed(1)
        torch.testing.assert_close(plain.forward_features(x), e)
