"""The five block designs of the study, registered by name.

Every block has the signature ``Block(in_ch, out_ch, **kw)`` and keeps the
spatial size; the network places the pooling. A variant is a string of block
names (see :func:`parse_blocks`).

- A: conv-BN-ReLU (Simonyan & Zisserman, "Very Deep Convolutional Networks", 2015)
- B: A with spatial attention; C: A with squeeze-and-excitation (Hu et al., 2018)
- D: basic residual block (He et al., "Deep Residual Learning", 2016);
  D-sep: its 3x3 conv made depthwise-separable (Chollet, "Xception", 2017)
- E: grouped bottleneck (Xie et al., "Aggregated Residual Transformations", 2017)

Bias and normalisation choices are those that reproduce the parameter counts
of the original study exactly (see DESIGN.md).
"""

from __future__ import annotations

import re
from typing import Callable

import torch
from torch import nn

from cnnlab.errors import ConfigError, param
from cnnlab.models.attention import create_attn

_BLOCKS: dict[str, Callable[..., nn.Module]] = {}

NUM_BLOCKS = 8


def register_block(name: str):
    def deco(cls):
        _BLOCKS[name] = cls
        return cls

    return deco


def block_names() -> list[str]:
    return list(_BLOCKS)


def create_block(name: str, in_ch: int, out_ch: int, **kw) -> nn.Module:
    return _BLOCKS[name](in_ch, out_ch, **kw)


def _conv_bn(in_ch: int, out_ch: int, k: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, k, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
    )


class ConvBlock(nn.Module):
    """3x3 conv (no bias) + BN + ReLU, optionally followed by an attention module."""

    attn_name: str | None = None

    def __init__(self, in_ch: int, out_ch: int, attn: str | None = None):
        super().__init__()
        self.conv = _conv_bn(in_ch, out_ch, 3)
        self.act = nn.ReLU(inplace=True)
        self.attn = create_attn(attn if attn is not None else self.attn_name, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(self.act(self.conv(x)))


@register_block("A")
class PlainBlock(ConvBlock):
    attn_name = None


@register_block("B")
class SpatialAttentionBlock(ConvBlock):
    attn_name = "spatial"


@register_block("C")
class SqueezeExciteBlock(ConvBlock):
    attn_name = "se"


def _shortcut(in_ch: int, out_ch: int) -> nn.Module:
    # A plain 1x1 projection (no BN) when the width changes: what the study's counts imply.
    return nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1, bias=False)


class _Residual(nn.Module):
    """``relu(body(x) + shortcut(x))``.

    The body's last BatchNorm starts with zero scale (Goyal et al., "Accurate, Large
    Minibatch SGD", 2017), so each block starts as its shortcut: stacks of these
    blocks then train stably at the default learning rate from the first step.
    """

    def __init__(self, body: nn.Module, in_ch: int, out_ch: int):
        super().__init__()
        self.body = body
        self.shortcut = _shortcut(in_ch, out_ch)
        self.act = nn.ReLU(inplace=True)
        last_bn = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        nn.init.zeros_(last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


@register_block("D")
class ResidualBlock(_Residual):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(_conv_bn(in_ch, out_ch, 3), in_ch, out_ch)


@register_block("D-sep")
class SeparableResidualBlock(_Residual):
    def __init__(self, in_ch: int, out_ch: int):
        body = nn.Sequential(
            nn.Conv2d(in_ch, in_ch, 3, padding=1, groups=in_ch, bias=False),  # depthwise
            nn.Conv2d(in_ch, out_ch, 1, bias=False),  # pointwise
            nn.BatchNorm2d(out_ch),
        )
        super().__init__(body, in_ch, out_ch)


@register_block("E")
class GroupedBottleneckBlock(_Residual):
    """1x1 to out/4, grouped 3x3 with in/8 groups, 1x1 back to out; BN after each."""

    def __init__(self, in_ch: int, out_ch: int):
        mid = max(1, out_ch // 4)
        groups = max(1, in_ch // 8)
        if mid % groups:
            raise ConfigError(
                f"block E cannot be built for {in_ch}->{out_ch} channels: its {mid} bottleneck "
                f"channels do not split into {groups} groups; choose another {param('width')}"
            )
        body = nn.Sequential(
            _conv_bn(in_ch, mid, 1),
            nn.ReLU(inplace=True),
            _conv_bn(mid, mid, 3, groups=groups),
            nn.ReLU(inplace=True),
            _conv_bn(mid, out_ch, 1),
        )
        super().__init__(body, in_ch, out_ch)


def parse_blocks(spec: str) -> tuple[str, ...]:
    """Turn a variant string into eight block names.

    One name means all eight blocks (``"B"``, ``"D-sep"``); otherwise eight
    names written together or separated by spaces or ``+``
    (``"AABBCCDE"``, ``"A+A+D-sep+D-sep+C+C+E+E"``). Case does not matter.
    A comma separates variants wherever a list is taken (``"A,E"``), so it is
    refused inside one variant rather than read as a second meaning.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"{param('blocks')}: expected one block name or eight, e.g. 'B' or 'AABBCCDE'")
    if "," in spec:
        n = len([v for v in spec.split(",") if v.strip()])
        raise ConfigError(
            f"{param('blocks')} {spec!r}: a comma separates variants ({n} here), and this takes one variant "
            "(one block name, or eight written together or joined by '+', e.g. AABBCCDE); "
            "cnnlab cifar compare --blocks A,E trains and compares several"
        )
    names = sorted(_BLOCKS, key=len, reverse=True)
    lookup = {n.lower(): n for n in names}
    pattern = re.compile("|".join(re.escape(n) for n in names), re.IGNORECASE)
    text = re.sub(r"[\s+]", "", spec)
    tokens, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() != pos:
            break
        tokens.append(lookup[m.group(0).lower()])
        pos = m.end()
    if pos != len(text):
        raise ConfigError(
            f"{param('blocks')} {spec!r}: {text[pos:]!r} is not a block name; known blocks: {', '.join(_BLOCKS)}"
        )
    if len(tokens) == 1:
        return (tokens[0],) * NUM_BLOCKS
    if len(tokens) != NUM_BLOCKS:
        raise ConfigError(
            f"{param('blocks')} {spec!r}: names {len(tokens)} blocks; expected 1 (used for all) or {NUM_BLOCKS}"
        )
    return tuple(tokens)


def format_blocks(blocks: tuple[str, ...]) -> str:
    """The shortest string :func:`parse_blocks` reads back as ``blocks``."""
    if len(set(blocks)) == 1:
        return blocks[0]
    sep = "+" if any(len(b) > 1 for b in blocks) else ""
    return sep.join(blocks)
