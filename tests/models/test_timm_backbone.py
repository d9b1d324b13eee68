from torch import nn

from cnnlab.models.efficientnet_lite import efficientnet_lite0
from cnnlab.models.timm_backbone import timm_layers


def _all_params(layers: list[nn.Module]) -> list[int]:
    return [id(p) for layer in layers for p in layer.parameters()]


# ---------------------------------------------------------------- layers that freeze


def test_lite0_layers_are_stem_16_blocks_head():
    net = efficientnet_lite0(pretrained=False)
    layers = timm_layers(net)
    assert len(layers) == 18
    assert list(layers[0]) == [net.conv_stem, net.bn1] and list(layers[-1]) == [net.conv_head, net.bn2]
    assert layers[1:17] == [b for stage in net.blocks for b in stage]
    classifier = {id(p) for p in net.classifier.parameters()}
    assert sorted(_all_params(layers)) == sorted(id(p) for p in net.parameters() if id(p) not in classifier)
