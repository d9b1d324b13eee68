"""Any model of timm (Wightman, "PyTorch Image Models", 2019) as a feature extractor.

:class:`TimmBackbone` holds the timm model in ``net``, so a state dict saved
from timm loads into ``net`` unchanged, and gives pooled features the way
every cnnlab backbone does. :func:`timm_layers` splits it into the units that
can be frozen from the front.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Mapping

import timm
import torch
from timm.models.efficientnet import EfficientNet
from torch import nn

from cnnlab.errors import CnnlabError, ConfigError
from cnnlab.files import load_checkpoint
from cnnlab.models.efficientnet_lite import load_state_strict

logger = logging.getLogger(__name__)


class TimmBackbone(nn.Module):
    """A timm model that exposes its pooled features (B, F) as ``forward_features``.

    timm's own ``forward_features`` returns the unpooled map (B, C, h, w);
    here it goes on through timm's ``forward_head(..., pre_logits=True)``
    (global pooling, and for some models a norm), the input of the classifier.
    Build ``net`` with ``drop_rate=0``: timm applies its head dropout before
    it returns the pre-logits.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        # head_hidden_size is the pre-logits width where a model has a layer after pooling (MobileNetV3).
        self.num_features: int = int(getattr(net, "head_hidden_size", None) or net.num_features)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)  # (B, F)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits of timm's classifier, or the features themselves when the model has none."""
        return self.net.get_classifier()(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def is_timm_model(name: str) -> bool:
    """Whether timm knows the model ``name``, and its tag if it has one (``resnet18.a1_in1k``)."""
    if not timm.is_model(name):
        return False
    try:
        timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # "Invalid pretrained tag"
        return False
    return True


def input_stats(net: nn.Module) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel (mean, std) for inputs in [0, 1], from the model's timm data config."""
    data = timm.data.resolve_model_data_config(net)
    return tuple(float(v) for v in data["mean"]), tuple(float(v) for v in data["std"])  # type: ignore[return-value]


def _without_classifier(net: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` less the classifier entries that a headless ``net`` (``num_classes=0``) has no place for."""
    heads = net.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    own = net.state_dict()
    return {k: v for k, v in state.items() if k in own or not any(k.startswith(f"{h}.") for h in heads)}


def _download_pretrained(name: str) -> nn.Module:
    """``timm.create_model(name, pretrained=True)`` headless, or one clear error when it cannot download."""
    cfg = timm.models.get_pretrained_cfg(name)
    source = cfg and (cfg.hf_hub_id or cfg.url or cfg.file)
    if not source:
        raise ConfigError(f"timm has no pretrained weights for {name!r}; use the weights 'none' or a path to a "
                          "state-dict file")
    try:
        return timm.create_model(name, pretrained=True, num_classes=0, drop_rate=0.0)
    except (OSError, RuntimeError) as e:  # offline (URLError, LocalEntryNotFoundError), HTTP errors, a bad hash
        text = str(e).strip()
        reason = text.splitlines()[0] if text else type(e).__name__
        raise CnnlabError(
            f"the pretrained weights of timm's {name} ({source}) are not in the local Hugging Face or torch hub "
            f"cache and could not be downloaded ({reason[:300]}). Use the weights 'none' to start from random "
            f"weights, or a path to a local state-dict file of timm's {name}, or the backbone "
            f"efficientnet_lite0, whose ImageNet weights are installed with cnnlab and work offline"
        ) from None


def create_timm_backbone(name: str, pretrained: bool = False, *,
                         weights_path: str | os.PathLike | None = None) -> TimmBackbone:
    """timm's model ``name`` without its classifier, as a :class:`TimmBackbone`.

    ``pretrained`` loads timm's default pretrained weights for ``name`` (a
    name may carry a tag, e.g. ``resnet50.a1_in1k``), downloaded into the
    Hugging Face or torch hub cache; ``weights_path`` a local state dict in
    timm's layout (classifier entries, if any, are dropped). Otherwise the
    weights are timm's random initialisation.
    """
    if not is_timm_model(name):
        raise ConfigError(f"timm has no model named {name!r} (see timm.list_models(), with "
                          "pretrained=True for the tagged names)")
    if pretrained:
        net = _download_pretrained(name)
        logger.info("timm %s: pretrained weights from %s", name, net.pretrained_cfg.get("hf_hub_id") or
                    net.pretrained_cfg.get("url"))
        return TimmBackbone(net)
    net = timm.create_model(name, pretrained=False, num_classes=0, drop_rate=0.0)
    if weights_path is not None:
        path = Path(weights_path)
        load_state_strict(net, _without_classifier(net, load_checkpoint(path)), f"weights file {path}",
                          f"timm {name}")
        logger.info("timm %s: loaded weights from %s", name, path)
    return TimmBackbone(net)


def timm_layers(net: nn.Module) -> list[nn.Module]:
    """The layers of a timm model in forward order, the units that freeze from the front.

    timm's EfficientNets (Lite0 among them): stem (conv + BN), every block of
    every stage, head conv (+ BN); the classifier, which the features never
    pass, is in none. Every other model: timm's own fine-grained parameter
    groups (``net.group_matcher(coarse=False)``, the groups timm uses for
    layer-wise learning-rate decay), usually the stem, each block of each
    stage, and the layers after the last block joined to it; e.g. ResNet-18:
    stem, 8 basic blocks. A unit is the largest modules whose parameters all
    lie in its group, so that putting a frozen unit in eval mode also stops
    its dropout and stochastic depth; parameters held directly by a module
    that spans groups (a ViT's position embedding) join their group as a
    :class:`torch.nn.ParameterList`.
    """
    if isinstance(net, EfficientNet):
        return [nn.ModuleList([net.conv_stem, net.bn1]), *(b for stage in net.blocks for b in stage),
                nn.ModuleList([net.conv_head, net.bn2])]
    try:
        matcher = net.group_matcher(coarse=False)
    except (AttributeError, NotImplementedError):
        return [m for m in net.children() if next(m.parameters(), None) is not None]
    group_of = timm.models.group_parameters(net, matcher, reverse=True)  # parameter name -> group, forward order
    units: dict[int, list] = defaultdict(list)

    def visit(prefix: str, module: nn.Module) -> None:
        groups = {group_of[prefix + n] for n, _ in module.named_parameters()}
        if len(groups) == 1:
            units[groups.pop()].append(module)
            return
        for n, p in module.named_parameters(recurse=False):
            units[group_of[prefix + n]].append(p)
        for n, child in module.named_children():
            if next(child.parameters(), None) is not None:
                visit(f"{prefix}{n}.", child)

    visit("", net)
    layers: list[nn.Module] = []
    for _, items in sorted(units.items()):
        modules = [m for m in items if isinstance(m, nn.Module)]
        params = [p for p in items if isinstance(p, nn.Parameter)]
        if params:
            modules.append(nn.ParameterList(params))
        layers.append(modules[0] if len(modules) == 1 else nn.ModuleList(modules))
    return layers
