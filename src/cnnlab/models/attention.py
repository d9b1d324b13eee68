"""Attention modules a block can be given by name (``create_attn``).

- Spatial attention: one sigmoid gate per position from a 1x1 convolution, in
  the spirit of the spatial branch of CBAM (Woo et al., 2018).
- Squeeze-and-excitation: Hu et al., "Squeeze-and-Excitation Networks", 2018.
"""

from __future__ import annotations

import torch
from torch import nn


class SpatialAttention(nn.Module):
    """``x * sigmoid(conv1x1(x -> 1 channel))``; the 1x1 conv carries a bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.gate = nn.Conv2d(channels, 1, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gate(x))  # (B, C, H, W) * (B, 1, H, W)


class SqueezeExcite(nn.Module):
    """Global average pool, FC down by ``reduction``, ReLU, FC up, sigmoid, scale."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3))  # (B, C)
        s = torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))
        return x * s[:, :, None, None]


_ATTN = {"spatial": SpatialAttention, "se": SqueezeExcite}


def create_attn(name: str | None, channels: int) -> nn.Module:
    if name is None:
        return nn.Identity()
    try:
        return _ATTN[name](channels)
    except KeyError:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(_ATTN)}") from None
