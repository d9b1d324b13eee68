import urllib.error
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from cnnlab.errors import CheckpointError, CnnlabError, ConfigError
from cnnlab.files import load_model_state
from cnnlab.models.efficientnet_lite import LITE_MEAN, LITE_STD, key_map, shipped_weights_path
from cnnlab.models.siamese import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SiameseNet,
    TinyCNN,
    b0_imagenet_file,
    backbone_layers,
    backbone_names,
    build_backbone,
    build_siamese,
    efficientnet_b0,
    is_backbone,
    set_train_mode,
    upgrade_state_dict,
)
from cnnlab.models.timm_backbone import TimmBackbone

# Floats compared across paths or with a reference: run again with the CPU kernels limited to AVX2 (.ci/run).
pytestmark = pytest.mark.numerics

B0_FILE = "efficientnet_b0_rwightman-7f5810bc.pth"


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty torch hub cache and no network: every download fails as it would offline."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture
def flush_denormals():
    # Random-init networks in eval mode shrink activations to denormal floats, which are slow on CPU.
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)


def _tiny_siamese(**kw) -> SiameseNet:
    torch.manual_seed(0)
    return build_siamese("tiny", "none", embedding_dim=kw.pop("embedding_dim", 16), **kw)


# ---------------------------------------------------------------- backbones


def test_registry_names():
    assert backbone_names() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "efficientnet_b0",
                                "tiny"]


@pytest.mark.parametrize(
    "name, features, mean, std",
    [
        ("efficientnet_lite0", 1280, LITE_MEAN, LITE_STD),
        ("efficientnet_b0", 1280, IMAGENET_MEAN, IMAGENET_STD),
        ("tiny", 128, (0.5,) * 3, (0.5,) * 3),
        ("timm:resnet18", 512, IMAGENET_MEAN, IMAGENET_STD),
    ],
)
def test_backbone_features_and_siamese_embeddings(name, features, mean, std, flush_denormals):
    b = build_backbone(name, "none")
    assert (b.num_features, b.mean, b.std) == (features, mean, std)
    x = torch.randn(2, 3, 64, 64)
    b.module.eval()
    with torch.no_grad():
        assert b.module.forward_features(x).shape == (2, features)
    model = build_siamese(name, "none", embedding_dim=32).eval()
    with torch.no_grad():
        z = model(x)
    assert z.shape == (2, 32)
    assert (z >= 0).all()  # ReLU after the projection, as in the study
    torch.testing.assert_close(model.mean.view(3), torch.tensor(mean))
    torch.testing.assert_close(model.std.view(3), torch.tensor(std))


def test_unknown_backbone_names_the_value_and_the_choices():
    with pytest.raises(ConfigError, match=r"backbone must be one of efficientnet_lite0, efficientnet_lite1, "
                                          r"efficientnet_lite2, efficientnet_b0, tiny or timm:NAME, got 'resnet50'"):
        build_siamese("resnet50", "none")
    with pytest.raises(ConfigError, match=r"timm has no model named 'resnet_nope'"):
        build_siamese("timm:resnet_nope", "none")


@pytest.mark.parametrize("name, known", [("efficientnet_lite0", True), ("tiny", True), ("timm:resnet18", True),
                                         ("timm:resnet18.a1_in1k", True), ("timm:resnet_nope", False),
                                         ("timm:resnet18.no_such_tag", False),
                                         ("resnet18", False), ("timm:", False), (None, False)])
def test_is_backbone(name, known):
    assert is_backbone(name) is known


def test_lite0_imagenet_means_the_shipped_file():
    model = build_siamese("efficientnet_lite0", "imagenet")
    shipped = torch.load(shipped_weights_path(), weights_only=True)
    assert isinstance(model.backbone, TimmBackbone)
    assert model.backbone.net.pretrained_cfg["architecture"] == "tf_efficientnet_lite0"
    assert torch.equal(model.backbone.net.conv_stem.weight, shipped["_conv_stem.weight"])
    assert torch.equal(model.backbone.net.bn2.running_var, shipped["_bn1.running_var"])


def test_missing_weights_path_names_the_file(tmp_path):
    for name in [*backbone_names(), "timm:resnet18"]:
        with pytest.raises(CheckpointError, match=r"^weights: .*absent\.pt is not a file"):
            build_backbone(name, str(tmp_path / "absent.pt"))


def test_tiny_imagenet_falls_back_to_random_init_with_a_warning(caplog):
    with caplog.at_level("WARNING", logger="cnnlab.models.siamese"):
        b = build_backbone("tiny", "imagenet")
    assert isinstance(b.module, TinyCNN)
    assert "no ImageNet weights" in caplog.text


def test_timm_backbone_from_a_local_state_dict(tmp_path):
    torch.manual_seed(2)
    net = timm.create_model("resnet18")
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    model = build_siamese("timm:resnet18", str(path), embedding_dim=8)
    assert torch.equal(model.backbone.net.layer4[1].conv2.weight, net.layer4[1].conv2.weight)


@pytest.mark.parametrize("name, units", [("efficientnet_lite0", 18), ("timm:resnet18", 9)])
def test_frozen_timm_layers_stop_batch_statistics_and_stochastic_depth(name, units):
    model = build_siamese(name, "none", embedding_dim=8)
    layers = backbone_layers(model.backbone)
    assert len(layers) == units
    set_train_mode(model, layers[:3], freeze_bn=False)
    assert not any(m.training for layer in layers[:3] for m in layer.modules())
    assert all(m.training for m in layers[3].modules()) and model.head.training


# ---------------------------------------------------------------- checkpoints of the former Lite0 port


PORT_KEYS = [line for line in (Path(__file__).with_name("lite0_port_keys.txt")).read_text().splitlines()
             if line and not line.startswith("#")]


def _as_port_checkpoint(model: SiameseNet) -> dict:
    """``model``'s state dict under the names the hand-written Lite0 port gave it."""
    old = {f"backbone.net.{new}": f"backbone.{port}" for port, new in key_map("port", model.backbone.net).items()}
    return {old.get(k, k): v for k, v in model.state_dict().items()}


def test_port_checkpoint_loads_into_the_timm_lite0():
    torch.manual_seed(5)
    trained = build_siamese("efficientnet_lite0", "none", embedding_dim=8)
    state = _as_port_checkpoint(trained)
    assert list(state) == [f"backbone.{k}" for k in PORT_KEYS] + ["head.0.weight", "head.0.bias"]
    fresh = build_siamese("efficientnet_lite0", "none", embedding_dim=8)
    load_model_state(fresh, upgrade_state_dict(fresh, state), "old.pt")
    for k, v in trained.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


def test_upgrade_leaves_other_states_alone():
    lite = build_siamese("efficientnet_lite0", "none", embedding_dim=8)
    current = lite.state_dict()
    assert upgrade_state_dict(lite, current) is current
    tiny = _tiny_siamese()
    port = _as_port_checkpoint(lite)
    assert upgrade_state_dict(tiny, port) is port  # a tiny run's network: the misfit is load_model_state's to name
    assert upgrade_state_dict(lite, None) is None


# ---------------------------------------------------------------- torchvision EfficientNet-B0


def test_b0_offline_without_cache_tells_where_to_put_the_file(offline_hub):
    with pytest.raises(CnnlabError) as info:
        efficientnet_b0("imagenet")
    msg = str(info.value)
    assert B0_FILE in msg
    assert str(offline_hub) in msg  # torch.hub.get_dir()/checkpoints under the TORCH_HOME in use
    assert "weights PATH" in msg and "efficientnet_lite0" in msg
    assert "name resolution" in msg  # the reason the download failed
    assert b0_imagenet_file() == offline_hub / B0_FILE


def test_b0_imagenet_comes_from_the_hub_cache(offline_hub):
    torch.manual_seed(3)
    state = torchvision.models.efficientnet_b0(weights=None).state_dict()
    offline_hub.mkdir(parents=True)
    torch.save(state, offline_hub / B0_FILE)
    net = efficientnet_b0("imagenet")  # no download attempted: the fixture would make it fail
    for k, v in state.items():
        assert torch.equal(net.net.state_dict()[k], v), k


def test_b0_corrupt_cache_file_is_named(offline_hub):
    offline_hub.mkdir(parents=True)
    (offline_hub / B0_FILE).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=rf"{B0_FILE}.*delete it"):
        efficientnet_b0("imagenet")


def test_b0_local_state_dict_file(tmp_path, flush_denormals):
    torch.manual_seed(4)
    tv = torchvision.models.efficientnet_b0(weights=None)
    path = tmp_path / "b0.pth"
    torch.save(tv.state_dict(), path)
    net = efficientnet_b0(str(path)).eval()
    tv.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), tv(x))
        assert net.forward_features(x).shape == (2, 1280)


def test_b0_incompatible_state_dict_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"resnet\.pth does not hold torchvision EfficientNet-B0 weights"):
        efficientnet_b0(str(path))


def test_b0_file_holding_code_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"model": nn.Linear(2, 2)}, path)  # a pickled module: not loadable with weights_only
    with pytest.raises(CheckpointError, match="pickled.pth"):
        efficientnet_b0(str(path))


# ---------------------------------------------------------------- SiameseNet


def test_normalize_gives_unit_norm_embeddings():
    model = _tiny_siamese(normalize=True).eval()
    with torch.no_grad():
        z = model(torch.randn(5, 3, 32, 32))
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    raw = _tiny_siamese(normalize=False).eval()
    with torch.no_grad():
        assert not torch.allclose(raw(torch.randn(5, 3, 32, 32)).norm(dim=1), torch.ones(5))


def test_embed_is_forward():
    model = _tiny_siamese().eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.embed(x), model(x))


def test_normalize_input_from_uint8_and_float():
    model = build_siamese("efficientnet_b0", "none")
    x8 = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1).expand(2, 3, 2, 2)
    out = model.normalize_input(x8)
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 0, 0], (1 - mean) / std)
    torch.testing.assert_close(model.normalize_input(x8.float() / 255), out)
    with pytest.raises(TypeError, match="uint8 or float"):
        model.normalize_input(x8.long())


def test_forward_normalises_uint8_itself():
    model = _tiny_siamese().eval()
    x8 = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(model(x8), model(model.normalize_input(x8)))


def test_mean_std_buffers_follow_the_device_and_stay_out_of_checkpoints():
    model = _tiny_siamese()
    names = {n for n, _ in model.named_buffers()}
    assert {"mean", "std"} <= names
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    model.to(torch.float64)
    assert model.mean.dtype == torch.float64


def test_bad_embedding_dim():
    with pytest.raises(ConfigError, match="embedding_dim must be a positive integer"):
        build_siamese("tiny", "none", embedding_dim=0)


def test_freeze_backbone_keeps_backbone_and_bn_stats_while_head_trains():
    model = _tiny_siamese().freeze_backbone(True)
    model.train()
    assert not model.backbone.training and model.head.training
    assert all(not p.requires_grad for p in model.backbone.parameters())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.param_groups(lr=0.1, backbone_lr_mult=1.0), lr=0.1)
    loss = model(torch.randn(4, 3, 32, 32) * 3 + 1).pow(2).sum() + model(torch.randn(4, 3, 32, 32)).sum()
    loss.backward()
    opt.step()
    after = {k: v.clone() for k, v in model.state_dict().items()}
    for k, v in before.items():
        if k.startswith("backbone."):
            assert torch.equal(after[k], v), k  # weights and BatchNorm running stats alike
    assert not torch.equal(after["head.0.weight"], before["head.0.weight"])

    # The same step unfrozen moves both the backbone weights and its BatchNorm statistics.
    model.freeze_backbone(False)
    assert model.backbone.training and all(p.requires_grad for p in model.backbone.parameters())
    opt = torch.optim.SGD(model.param_groups(lr=0.1, backbone_lr_mult=1.0), lr=0.1)
    model(torch.randn(4, 3, 32, 32) * 3 + 1).pow(2).sum().backward()
    opt.step()
    moved = model.state_dict()
    assert not torch.equal(moved["backbone.features.0.weight"], after["backbone.features.0.weight"])
    assert not torch.equal(moved["backbone.features.1.running_mean"], after["backbone.features.1.running_mean"])


def test_param_groups_lrs():
    model = _tiny_siamese()
    groups = model.param_groups(lr=0.01, backbone_lr_mult=0.1)
    assert [(g["name"], g["lr"]) for g in groups] == [("backbone", pytest.approx(0.001)), ("head", 0.01)]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.backbone.parameters()}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    opt = torch.optim.AdamW(groups, lr=0.01)
    assert [g["lr"] for g in opt.param_groups] == [pytest.approx(0.001), 0.01]


def test_param_groups_leave_out_frozen_or_zero_lr_backbone():
    model = _tiny_siamese()
    assert [g["name"] for g in model.param_groups(0.01, backbone_lr_mult=0.0)] == ["head"]
    model.freeze_backbone()
    assert [g["name"] for g in model.param_groups(0.01, backbone_lr_mult=1.0)] == ["head"]


def test_param_groups_weight_decay_spares_biases_and_batchnorm():
    model = _tiny_siamese()
    groups = {g["name"]: g for g in model.param_groups(0.01, backbone_lr_mult=0.5, weight_decay=1e-4)}
    assert set(groups) == {"backbone", "backbone/no_decay", "head", "head/no_decay"}
    assert all(p.ndim > 1 for p in groups["backbone"]["params"]) and groups["backbone"]["weight_decay"] == 1e-4
    assert all(p.ndim == 1 for p in groups["backbone/no_decay"]["params"])
    assert groups["head/no_decay"]["weight_decay"] == 0.0 and groups["head/no_decay"]["lr"] == 0.01
    assert groups["backbone/no_decay"]["lr"] == pytest.approx(0.005)
    n = sum(len(g["params"]) for g in groups.values())
    assert n == len(list(model.parameters()))


@pytest.mark.parametrize(
    "kw, option",
    [({"lr": 0.0}, "lr must be positive"), ({"backbone_lr_mult": -1.0}, "backbone_lr_mult must be >= 0"),
     ({"weight_decay": -1e-4}, "weight_decay must be >= 0")],
)
def test_param_groups_bad_values(kw, option):
    args = {"lr": 0.01, "backbone_lr_mult": 1.0, **kw}
    with pytest.raises(ConfigError, match=option):
        _tiny_siamese().param_groups(**args)
