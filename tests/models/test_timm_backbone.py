import urllib.error

import pytest
import timm
import torch
from torch import nn

from cnnlab.errors import CheckpointError, CnnlabError, ConfigError
from cnnlab.models.efficientnet_lite import efficientnet_lite0
from cnnlab.models.timm_backbone import TimmBackbone, create_timm_backbone, input_stats, timm_layers

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics

OFFLINE = "[Errno -3] Temporary failure in name resolution"


@pytest.fixture
def offline_timm(monkeypatch):
    """Every download timm can start fails as it does on a machine without a network."""
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError

        hub_error = LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub and we cannot find the requested files "
            f"in the local cache ({OFFLINE}). Please check your connection and try again.")
    except ImportError:  # without huggingface_hub timm downloads from plain URLs
        hub_error = None

    def hub_offline(*args, **kwargs):
        raise hub_error

    def url_offline(*args, **kwargs):
        raise urllib.error.URLError(OFFLINE)

    if hub_error is not None:
        monkeypatch.setattr(timm.models._hub, "hf_hub_download", hub_offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", url_offline)
    monkeypatch.setattr(timm.models._hub, "download_url_to_file", url_offline)
    monkeypatch.setattr(torch.hub, "download_url_to_file", url_offline)


def _all_params(layers: list[nn.Module]) -> list[int]:
    return [id(p) for layer in layers for p in layer.parameters()]


# ---------------------------------------------------------------- features


def test_features_are_the_pooled_pre_logits():
    torch.manual_seed(0)
    b = create_timm_backbone("resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        f = b.forward_features(x)
        fmap = b.net.forward_features(x)  # (2, 512, 2, 2)
    assert b.num_features == 512 and f.shape == (2, 512)
    torch.testing.assert_close(f, fmap.mean(dim=(2, 3)))
    assert isinstance(b.net.get_classifier(), nn.Identity)  # headless: forward gives the features
    with torch.no_grad():
        torch.testing.assert_close(b(x), f)


def test_features_take_no_head_dropout_in_training():
    # timm applies its head dropout before it returns the pre-logits; backbones are built without it.
    torch.manual_seed(0)
    b = create_timm_backbone("resnet18").train()
    assert b.net.drop_rate == 0.0
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        torch.manual_seed(0)
        first = b.forward_features(x)
        torch.manual_seed(1)
        assert torch.equal(b.forward_features(x), first)  # nothing random between the blocks and the head


def test_input_stats_follow_timms_data_config():
    assert input_stats(timm.create_model("resnet18")) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert input_stats(timm.create_model("tf_efficientnet_lite0")) == ((0.5,) * 3, (0.5,) * 3)


# ---------------------------------------------------------------- weights


@pytest.mark.parametrize("name", ["resnet_nope", "resnet18.no_such_tag"])
def test_unknown_model_is_a_config_error(name):
    with pytest.raises(ConfigError, match=rf"timm has no model named '{name}'"):
        create_timm_backbone(name)


def test_pretrained_offline_is_one_clear_error(offline_timm):
    with pytest.raises(CnnlabError) as info:
        create_timm_backbone("resnet18", pretrained=True)
    msg = str(info.value)
    assert "timm's resnet18" in msg and "could not be downloaded" in msg
    assert "name resolution" in msg  # the reason
    assert "'none'" in msg and "path to a local state-dict file" in msg and "efficientnet_lite0" in msg
    assert "--" not in msg  # a library error names values; the CLI owns the flags


def test_model_without_pretrained_weights_is_refused():
    with pytest.raises(ConfigError, match=r"no pretrained weights for 'botnet50ts_256'"):
        create_timm_backbone("botnet50ts_256", pretrained=True)


def test_local_state_dict_with_or_without_classifier(tmp_path):
    torch.manual_seed(1)
    full = timm.create_model("resnet18")  # with its 1000-way fc, as timm saves it
    path = tmp_path / "r18.pth"
    torch.save(full.state_dict(), path)
    b = create_timm_backbone("resnet18", weights_path=path)
    own = b.net.state_dict()
    assert set(full.state_dict()) - set(own) == {"fc.weight", "fc.bias"}
    for k, v in own.items():
        assert torch.equal(v, full.state_dict()[k]), k
    torch.save(own, path)  # headless
    again = create_timm_backbone("resnet18", weights_path=path)
    assert torch.equal(again.net.conv1.weight, full.conv1.weight)


def test_incompatible_state_dict_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(CheckpointError, match=r"other\.pth does not hold timm resnet18 weights"):
        create_timm_backbone("resnet18", weights_path=path)


# ---------------------------------------------------------------- layers that freeze


def test_lite0_layers_are_stem_16_blocks_head():
    net = efficientnet_lite0(pretrained=False)
    layers = timm_layers(net)
    assert len(layers) == 18
    assert list(layers[0]) == [net.conv_stem, net.bn1] and list(layers[-1]) == [net.conv_head, net.bn2]
    assert layers[1:17] == [b for stage in net.blocks for b in stage]
    classifier = {id(p) for p in net.classifier.parameters()}
    assert sorted(_all_params(layers)) == sorted(id(p) for p in net.parameters() if id(p) not in classifier)


def test_resnet_layers_are_stem_and_basic_blocks():
    net = timm.create_model("resnet18", num_classes=0)
    layers = timm_layers(net)
    assert len(layers) == 9
    assert list(layers[0]) == [net.conv1, net.bn1]
    assert layers[1:] == [net.layer1[0], net.layer1[1], net.layer2[0], net.layer2[1],
                          net.layer3[0], net.layer3[1], net.layer4[0], net.layer4[1]]
    assert sorted(_all_params(layers)) == sorted(id(p) for p in net.parameters())


def test_vit_layers_hold_loose_parameters_in_the_stem():
    net = timm.create_model("test_vit", num_classes=0)
    layers = timm_layers(net)
    assert len(layers) == 1 + len(net.blocks)
    stem = {id(p) for p in layers[0].parameters()}
    assert {id(net.cls_token), id(net.pos_embed)} <= stem
    assert {id(p) for p in net.patch_embed.parameters()} <= stem
    assert layers[1] is net.blocks[0]
    assert {id(p) for p in net.norm.parameters()} <= {id(p) for p in layers[-1].parameters()}  # joins the last block
    assert sorted(_all_params(layers)) == sorted(id(p) for p in net.parameters())  # every parameter, once


def test_timm_backbone_wraps_any_module_with_the_timm_interface():
    b = TimmBackbone(timm.create_model("test_efficientnet", num_classes=0))
    with torch.no_grad():
        assert b.eval().forward_features(torch.randn(1, 3, 64, 64)).shape == (1, b.num_features)
