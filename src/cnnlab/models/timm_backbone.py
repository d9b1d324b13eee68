"""Models of timm (Wightman, "PyTorch Image Models", 2019) as feature extractors.

:class:`TimmBackbone` holds the timm model in ``net``, so a state dict saved
from timm loads into ``net`` unchanged, and gives pooled features the way
every cnnlab backbone does. :func:`timm_layers` splits it into the units that
can be frozen from the front.
"""

from __future__ import annotations

import torch
from timm.models.efficientnet import EfficientNet
from torch import nn


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


def timm_layers(net: nn.Module) -> list[nn.Module]:
    """The layers of a timm model in forward order, the units that freeze from the front.

    timm's EfficientNets (Lite0 among them): stem (conv + BN), every block of
    every stage, head conv (+ BN); the classifier, which the features never
    pass, is in none. Any other model is one unit.
    """
    if isinstance(net, EfficientNet):
        return [nn.ModuleList([net.conv_stem, net.bn1]), *(b for stage in net.blocks for b in stage),
                nn.ModuleList([net.conv_head, net.bn2])]
    return [net]
