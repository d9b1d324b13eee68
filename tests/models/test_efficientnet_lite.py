from pathlib import Path

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
    efficientnet_lite0,
    key_map,
    layout_of,
    load_lite0_state,
    new_lite0,
    shipped_weights_path,
)
from cnnlab.models.timm_backbone import TimmBackbone

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics

reference_impl = pytest.importorskip("efficientnet_lite_pytorch")

PORT_KEYS = [line for line in (Path(__file__).with_name("lite0_port_keys.txt")).read_text().splitlines()
             if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def shipped_state() -> dict:
    return torch.load(shipped_weights_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite() -> nn.Module:
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


def test_every_shipped_key_maps_to_a_distinct_entry_of_the_right_shape(shipped_state, lite):
    assert layout_of(shipped_state) == "efficientnet_pytorch"
    mapping = key_map("efficientnet_pytorch", lite)
    own = lite.state_dict()
    assert set(mapping) == set(shipped_state)  # every shipped key has a place
    assert len(set(mapping.values())) == len(shipped_state) == len(own) == 296  # nothing merged, all filled
    for src, dst in mapping.items():
        assert own[dst].shape == shipped_state[src].shape, (src, dst)


def test_loaded_weights_equal_the_shipped_tensors(lite, shipped_state):
    own = lite.state_dict()
    for src, dst in key_map("efficientnet_pytorch", lite).items():
        assert torch.equal(own[dst], shipped_state[src]), src


def test_port_keys_map_one_to_one_in_timms_order(lite):
    # The port's keys, in the port's order, land on timm's keys in timm's order: the parameters come in
    # the same order, so an optimizer state saved with the port fits timm's model.
    mapping = key_map("port", lite)
    assert len(PORT_KEYS) == 296 and set(mapping) == set(PORT_KEYS)
    assert [mapping[k] for k in PORT_KEYS] == list(lite.state_dict())
    params = {n for n, _ in lite.named_parameters()}
    assert [mapping[k] for k in PORT_KEYS if mapping[k] in params] == [n for n, _ in lite.named_parameters()]


@pytest.mark.parametrize(
    "layout, src, dst",
    [
        ("efficientnet_pytorch", "_conv_stem.weight", "conv_stem.weight"),
        ("efficientnet_pytorch", "_bn0.running_var", "bn1.running_var"),
        ("efficientnet_pytorch", "_blocks.0._depthwise_conv.weight", "blocks.0.0.conv_dw.weight"),
        ("efficientnet_pytorch", "_blocks.0._bn1.bias", "blocks.0.0.bn1.bias"),
        ("efficientnet_pytorch", "_blocks.0._project_conv.weight", "blocks.0.0.conv_pw.weight"),
        ("efficientnet_pytorch", "_blocks.0._bn2.weight", "blocks.0.0.bn2.weight"),
        ("efficientnet_pytorch", "_blocks.1._expand_conv.weight", "blocks.1.0.conv_pw.weight"),
        ("efficientnet_pytorch", "_blocks.15._expand_conv.weight", "blocks.6.0.conv_pw.weight"),
        ("efficientnet_pytorch", "_blocks.15._bn0.num_batches_tracked", "blocks.6.0.bn1.num_batches_tracked"),
        ("efficientnet_pytorch", "_blocks.7._bn1.weight", "blocks.3.2.bn2.weight"),
        ("efficientnet_pytorch", "_blocks.7._project_conv.weight", "blocks.3.2.conv_pwl.weight"),
        ("efficientnet_pytorch", "_blocks.14._bn2.running_mean", "blocks.5.3.bn3.running_mean"),
        ("efficientnet_pytorch", "_conv_head.weight", "conv_head.weight"),
        ("efficientnet_pytorch", "_bn1.running_mean", "bn2.running_mean"),
        ("efficientnet_pytorch", "_fc.bias", "classifier.bias"),
        ("port", "stem.conv.weight", "conv_stem.weight"),
        ("port", "blocks.0.project.bn.bias", "blocks.0.0.bn2.bias"),
        ("port", "blocks.4.expand.conv.weight", "blocks.2.1.conv_pw.weight"),
        ("port", "blocks.12.depthwise.bn.running_var", "blocks.5.1.bn2.running_var"),
        ("port", "blocks.12.project.conv.weight", "blocks.5.1.conv_pwl.weight"),
        ("port", "head.bn.weight", "bn2.weight"),
        ("port", "classifier.weight", "classifier.weight"),
    ],
)
def test_key_names(lite, layout, src, dst):
    assert key_map(layout, lite)[src] == dst


def test_unknown_reference_key_is_refused_naming_the_file(shipped_state, tmp_path):
    state = dict(shipped_state)
    state["_blocks.3._se_reduce.weight"] = torch.zeros(4, 144, 1, 1)  # an SE layer Lite0 does not have
    with pytest.raises(CheckpointError, match=r"w\.pth.*_blocks\.3\._se_reduce\.weight"):
        load_lite0_state(new_lite0(), state, source=str(tmp_path / "w.pth"))


def test_missing_and_misshapen_keys_are_refused(shipped_state):
    state = dict(shipped_state)
    del state["_blocks.5._bn1.running_var"]
    with pytest.raises(CheckpointError, match=r"1 missing \(e\.g\. blocks\.3\.0\.bn2\.running_var\)"):
        load_lite0_state(new_lite0(), state, source="x")
    state = dict(shipped_state)
    state["_fc.weight"] = torch.zeros(10, 1280)
    with pytest.raises(CheckpointError, match=r"wrong shape \(e\.g\. classifier\.weight: \(10, 1280\)"):
        load_lite0_state(new_lite0(), state, source="x")


@pytest.mark.parametrize("layout", [None, "port"])
def test_timm_and_port_layouts_round_trip_through_a_file(lite, tmp_path, layout):
    state = lite.state_dict()
    if layout is not None:
        back = {new: old for old, new in key_map(layout, lite).items()}
        state = {back[k]: v for k, v in state.items()}
    path = tmp_path / "lite0.pt"
    torch.save(state, path)
    again = efficientnet_lite0(weights_path=path)
    for k, v in lite.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_missing_weights_file_names_it(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pth"):
        efficientnet_lite0(weights_path=tmp_path / "nope.pth")


def test_pretrained_false_is_random_init(shipped_state):
    torch.manual_seed(0)
    model = efficientnet_lite0(pretrained=False)
    assert not torch.equal(model.conv_stem.weight, shipped_state["_conv_stem.weight"])
    assert torch.equal(model.bn1.running_mean, torch.zeros(32))


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
    assert lite.conv_stem.out_channels == 32 and lite.conv_head.out_channels == lite.num_features == 1280
    assert sum(len(stage) for stage in lite.blocks) == 16
    assert lite.drop_rate == 0.0  # timm would drop out the pooled features the Siamese head reads


@pytest.mark.parametrize(
    "layer, size, kernel, stride, pad",  # pad: (before, after) along each axis
    [
        ("conv_stem", 224, 3, 2, (0, 1)),  # even input: the extra pixel goes after, unlike PyTorch's padding=1
        ("blocks.2.0.conv_dw", 112, 5, 2, (1, 2)),
        ("conv_stem", 75, 3, 2, (1, 1)),  # odd input: symmetric
        ("blocks.2.0.conv_dw", 75, 5, 2, (2, 2)),
        ("blocks.1.1.conv_dw", 7, 3, 1, (1, 1)),
        ("blocks.2.1.conv_dw", 7, 5, 1, (2, 2)),
    ],
)
def test_convolutions_pad_the_tensorflow_way(lite, layer, size, kernel, stride, pad):
    conv = lite.get_submodule(layer)
    assert conv.kernel_size == (kernel, kernel) and conv.stride == (stride, stride)
    torch.manual_seed(size)
    x = torch.randn(1, conv.in_channels, size, size)
    expected = nn.functional.conv2d(nn.functional.pad(x, (*pad, *pad)), conv.weight, stride=stride,
                                    groups=conv.groups)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), expected)


def test_stride2_convs_pad_asymmetrically_on_even_inputs(lite):
    # The stem conv with PyTorch's symmetric padding=1 gives other numbers than TensorFlow "same".
    x = torch.randn(1, 3, 16, 16)
    conv = lite.conv_stem
    symmetric = nn.functional.conv2d(x, conv.weight, stride=2, padding=1)
    with torch.no_grad():
        ours = conv(x)
    assert ours.shape == (1, 32, 8, 8)
    assert not torch.allclose(ours, symmetric, atol=1e-3)


# ---------------------------------------------------------------- against the reference implementation


@pytest.mark.parametrize("hw", [(224, 224), (112, 112), (150, 150), (113, 150), (64, 97)])
def test_matches_reference_implementation_exactly(lite, reference, hw):
    torch.manual_seed(hw[0] * 1000 + hw[1])
    x = torch.randn(2, 3, *hw)
    backbone = TimmBackbone(lite).eval()
    with torch.no_grad():
        feats = backbone.forward_features(x)
        logits = backbone(x)
        ref_feats = torch.flatten(reference._avg_pooling(reference.extract_features(x)), 1)
        ref_logits = reference(x)
    assert feats.shape == (2, 1280) and logits.shape == (2, 1000)
    # Same weights, same operations in the same order: bit-identical in fp32, not merely close.
    assert (feats - ref_feats).abs().max().item() == 0.0
    assert (logits - ref_logits).abs().max().item() == 0.0
    assert torch.equal(logits, lite(x))


def test_matches_reference_static_padding_build_at_224(lite, reference_static):
    torch.manual_seed(1)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(lite(x), reference_static(x))


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
    model = TimmBackbone(efficientnet_lite0(pretrained=False))
    model.net.load_state_dict(lite.state_dict())
    blocks = [b for stage in model.net.blocks for b in stage]
    assert isinstance(blocks[0].drop_path, nn.Identity)
    assert blocks[15].drop_path.drop_prob == pytest.approx(0.2 * 15 / 16)
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
    plain = TimmBackbone(efficientnet_lite0(pretrained=False, drop_path_rate=0.0))
    plain.net.load_state_dict(lite.state_dict())
    plain.train()
    with torch.no_grad():
        torch.manual_seed(0)
        e = plain.forward_features(x)
        torch.manual_seed(1)
        torch.testing.assert_close(plain.forward_features(x), e)
