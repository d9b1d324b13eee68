"""The study's reference network: a 3-conv stem, eight swappable blocks, a small head."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.blocks import create_block, format_blocks, parse_blocks

STEM_CHANNELS = (32, 64, 128)
BLOCK_CHANNELS = (128, 128, 128, 256, 256, 256, 512, 512, 512)
POOL_AFTER = (3, 5, 8)  # 1-based block indices followed by MaxPool(2): 32 -> 16 -> 8 -> 4
POOLINGS = {
    "intended": POOL_AFTER,
    # The study notebook's network: its pooling sat outside the block loop, so only one MaxPool(2) was
    # added, after the last block; every block runs at 32x32 (about 6x the compute, the same parameters).
    "original": (8,),
}


MIN_CHANNELS = 8


def _scaled(c: int, width: float) -> int:
    # Multiples of 8 keep block E's groups (in/8) whole at every width.
    return max(MIN_CHANNELS, int(round(c * width / 8)) * 8)


def scaled_channels(width: float) -> list[int]:
    """The channel count of every layer (stem, then blocks) at ``width``."""
    return [_scaled(c, width) for c in (*STEM_CHANNELS, *BLOCK_CHANNELS)]


def min_width() -> float:
    """The smallest width at which the widest layer is above :data:`MIN_CHANNELS`: below it every layer has
    the minimum and the width no longer changes the network. ``round`` takes 1.5 to 2, so the widest
    layer leaves the minimum where ``widest * width / 8`` reaches 1.5."""
    return 1.5 * 8 / max(BLOCK_CHANNELS)


class BaseCNN(nn.Module):
    """The stem, eight blocks and the head of DESIGN.md. ``pooling="original"`` builds the study notebook's
    network instead (one MaxPool, after block 8), to reproduce its table in its own conditions."""

    def __init__(self, blocks: str | tuple[str, ...] = "A", width: float = 1.0, num_classes: int = 10,
                 dropout: float = 0.25, pooling: str = "intended"):
        super().__init__()
        if not width > 0:
            raise ConfigError(f"width must be positive, got {width}")
        if pooling not in POOLINGS:
            raise ConfigError(f"pooling must be {' or '.join(POOLINGS)}, got {pooling!r}")
        self.pooling = pooling
        self.block_names = parse_blocks(blocks) if isinstance(blocks, str) else tuple(blocks)
        self.width = width
        stem = [_scaled(c, width) for c in STEM_CHANNELS]
        chans = [_scaled(c, width) for c in BLOCK_CHANNELS]

        layers, prev = [], 3
        for c in stem:
            layers += [nn.Conv2d(prev, c, 3, padding=1, bias=True), nn.BatchNorm2d(c), nn.ReLU(inplace=True)]
            prev = c
        self.stem = nn.Sequential(*layers)
        if chans[0] != prev:
            raise ConfigError("the stem must end with as many channels as the first block takes")

        # The pooling lives inside the stage loop, so each of the three pools is really
        # there (the notebook added one pool, at the end, and paid 6x the compute: pooling="original").
        self.blocks = nn.ModuleList()
        for i, name in enumerate(self.block_names):
            stage = [create_block(name, chans[i], chans[i + 1])]
            if i + 1 in POOLINGS[pooling]:
                stage.append(nn.MaxPool2d(2))
            self.blocks.append(nn.Sequential(*stage))

        self.num_features = chans[-1]
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

    @property
    def variant(self) -> str:
        return format_blocks(self.block_names)

    def forward_features(self, x: torch.Tensor, return_maps: bool = False):
        """Pooled features before the classifier, (B, F); with ``return_maps`` also the
        output of the stem and of each block, for feature-map figures."""
        maps = []
        x = self.stem(x)
        maps.append(x)
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        feats = torch.flatten(self.pool(x), 1)  # (B, F)
        return (feats, maps) if return_maps else feats

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

