"""Batched augmentation, applied on the training device.

The study's per-image torchvision pipeline (ColorJitter, RandomAffine,
RandomHorizontalFlip) as pure batch functions in the manner of airbench's
``batch_flip_lr``: the random parameters are drawn per sample on the CPU from
an explicit generator (so a run is reproducible and resumable on any device),
then applied to the whole batch at once on its device. No PIL, no per-image
Python in the training loop. Beside it, the standard CIFAR augmentation
(:class:`CropFlip`: a random crop of the padded image and a horizontal flip),
built the same way. Each augmentation is a frozen dataclass with ``draw``
(parameters, on the CPU) and ``apply`` (the batch, on its device);
:data:`CIFAR_AUGMENTS` names them.

Evaluation images are only normalised (:func:`eval_transform`); training and
evaluation transforms are built apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
_GRAY = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, with torchvision's rounding


@dataclass(frozen=True)
class AugmentConfig:
    """The study's augmentation: ColorJitter, RandomAffine and a horizontal flip."""

    brightness: float = 0.25
    contrast: float = 0.25
    saturation: float = 0.25
    degrees: float = 10.0
    translate: float = 0.1
    scale: tuple[float, float] = (0.9, 1.1)
    flip_p: float = 0.5

    def draw(self, n: int, generator: torch.Generator, size: int = 32) -> dict[str, torch.Tensor]:
        return draw_params(n, self, generator, size)

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return augment(x, params)


def _uniform(n: int, lo: float, hi: float, g: torch.Generator) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def draw_params(n: int, cfg: AugmentConfig, generator: torch.Generator, size: int = 32) -> dict[str, torch.Tensor]:
    """Per-sample parameters, drawn on the CPU in a fixed order."""
    return {
        "brightness": _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, generator),
        "contrast": _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, generator),
        "saturation": _uniform(n, 1 - cfg.saturation, 1 + cfg.saturation, generator),
        "angle": _uniform(n, -cfg.degrees, cfg.degrees, generator),
        # Whole-pixel shifts, as torchvision's RandomAffine draws them.
        "tx": torch.round(_uniform(n, -cfg.translate * size, cfg.translate * size, generator)),
        "ty": torch.round(_uniform(n, -cfg.translate * size, cfg.translate * size, generator)),
        "scale": _uniform(n, cfg.scale[0], cfg.scale[1], generator),
        "flip": torch.rand(n, generator=generator) < cfg.flip_p,
    }


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    w = x.new_tensor(_GRAY)[None, :, None, None]
    return (x * w).sum(dim=1, keepdim=True)  # (B, 1, H, W)


def color_jitter(x: torch.Tensor, brightness: torch.Tensor, contrast: torch.Tensor,
                 saturation: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_brightness/contrast/saturation with one factor per image.

    x: (B, 3, H, W) in [0, 1]. Applied in the order brightness, contrast, saturation.
    """
    f = lambda t: t.to(x.dtype)[:, None, None, None]  # noqa: E731
    x = (x * f(brightness)).clamp_(0, 1)
    mean = _grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    x = (x * f(contrast) + mean * (1 - f(contrast))).clamp_(0, 1)
    x = (x * f(saturation) + _grayscale(x) * (1 - f(saturation))).clamp_(0, 1)
    return x


def affine_matrices(angle: torch.Tensor, tx: torch.Tensor, ty: torch.Tensor, scale: torch.Tensor,
                    height: int, width: int) -> torch.Tensor:
    """(B, 2, 3) matrices for ``F.affine_grid``: rotate by ``angle`` degrees about the
    centre, scale, then shift by (tx, ty) pixels. The grid maps output to input
    positions, so this is the inverse of the image transform."""
    a = angle * (math.pi / 180)
    cos, sin = torch.cos(a) / scale, torch.sin(a) / scale
    # Normalised coordinates span 2 units over the image: a shift of t pixels is 2t/size.
    sx, sy = 2 * tx / width, 2 * ty / height
    theta = torch.stack([
        torch.stack([cos, sin, -(cos * sx + sin * sy)], dim=1),
        torch.stack([-sin, cos, -(-sin * sx + cos * sy)], dim=1),
    ], dim=1)
    return theta  # (B, 2, 3)


def random_affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Warp each image by its matrix; outside pixels are black, as torchvision's default fill."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def hflip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask[:, None, None, None], x.flip(3), x)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = x.new_tensor(mean)[None, :, None, None]
    s = x.new_tensor(std)[None, :, None, None]
    return (x - m) / s


def augment(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply drawn parameters to a float batch in [0, 1] on its own device."""
    p = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
    x = color_jitter(x, p["brightness"], p["contrast"], p["saturation"])
    theta = affine_matrices(p["angle"], p["tx"], p["ty"], p["scale"], x.shape[2], x.shape[3])
    x = random_affine(x, theta)
    return hflip(x, p["flip"])


@dataclass(frozen=True)
class CropFlip:
    """The standard CIFAR augmentation (as in the ResNet paper and airbench): pad each side by ``padding``
    pixels, take a random crop of the original size, flip horizontally with probability ``flip_p``.

    The padding reflects the image (airbench's choice; torchvision's ``RandomCrop(32, padding=4)`` pads
    with zeros): a shifted image then shows plausible content at its edge instead of a black bar.
    """

    padding: int = 4
    flip_p: float = 0.5

    def draw(self, n: int, generator: torch.Generator, size: int = 32) -> dict[str, torch.Tensor]:
        """Per-sample offsets of the crop in the padded image (0 .. 2 * padding) and flips, in a fixed order."""
        span = 2 * self.padding + 1
        return {"dx": torch.randint(0, span, (n,), generator=generator),
                "dy": torch.randint(0, span, (n,), generator=generator),
                "flip": torch.rand(n, generator=generator) < self.flip_p}

    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        return hflip(random_crop(x, params["dx"], params["dy"], self.padding), params["flip"].to(x.device))


def random_crop(x: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor, padding: int) -> torch.Tensor:
    """Each image of ``x`` (B, C, H, W), reflect-padded by ``padding``, cropped back to (H, W) at its own
    offset (``dx``, ``dy`` in 0 .. 2 * padding): one gather for the whole batch."""
    b, _, h, w = x.shape
    if padding == 0:
        return x
    padded = F.pad(x, (padding,) * 4, mode="reflect")  # (B, C, H + 2p, W + 2p)
    dev = x.device
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)  # (B, H)
    cols = dx.to(dev)[:, None] + torch.arange(w, device=dev)  # (B, W)
    batch = torch.arange(b, device=dev)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


CIFAR_AUGMENTS: dict[str, AugmentConfig | CropFlip | None] = {
    "study": AugmentConfig(), "crop-flip": CropFlip(), "none": None}
"""The training augmentations a CIFAR run names (``--augment``)."""


def train_transform(images: torch.Tensor, generator: torch.Generator,
                    cfg: AugmentConfig | CropFlip | None = AugmentConfig(),
                    mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> augmented (``cfg``: see :data:`CIFAR_AUGMENTS`), normalised float32."""
    x = images.float().div_(255)
    if cfg is not None:
        x = cfg.apply(x, cfg.draw(len(x), generator, size=x.shape[-1]))
    return normalize(x, mean, std)


def eval_transform(images: torch.Tensor, mean: tuple[float, ...] = CIFAR10_MEAN,
                   std: tuple[float, ...] = CIFAR10_STD) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> normalised float32. Deterministic: no augmentation."""
    return normalize(images.float().div_(255), mean, std)


# --------------------------------------------------------------------------- faces
# Aligned face crops (LFW deep-funneled) differ mostly by pose and expression,
# not by framing, so the augmentation is mild: a horizontal flip (a mirrored
# face is the same person) and a small random zoom and shift, the batched
# equivalent of a random resized crop of 87-100 % of the side. Colour is left
# alone: skin tone and lighting carry identity in a verification set this
# small. The random numbers are drawn on the CPU from an explicit generator, so
# a run is reproducible and resumable on any device; evaluation images are
# never augmented.


@dataclass(frozen=True)
class FaceAugment:
    flip_p: float = 0.5
    zoom: tuple[float, float] = (1.0, 1.15)
    """Magnification range: 1.15 shows the central 87 % of the side."""
    shift: float = 0.04
    """Largest shift, as a fraction of the side, each way."""


def draw_face_params(n: int, cfg: FaceAugment, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image parameters, drawn on the CPU in a fixed order."""
    u = torch.rand((n, 4), generator=generator, dtype=torch.float64)  # (n, 4)
    return {
        "flip": u[:, 0] < cfg.flip_p,
        "zoom": cfg.zoom[0] + (cfg.zoom[1] - cfg.zoom[0]) * u[:, 1],
        "tx": cfg.shift * (2 * u[:, 2] - 1),
        "ty": cfg.shift * (2 * u[:, 3] - 1),
    }


def face_augment(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Zoom, shift and flip a float batch (B, 3, H, W) on its own device."""
    b, _, h, w = x.shape
    p = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
    zero = torch.zeros(b, dtype=torch.float64, device=x.device)
    theta = affine_matrices(zero, p["tx"] * w, p["ty"] * h, p["zoom"], h, w)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [b, 3, h, w], align_corners=False)
    # Border padding: a shift past the edge repeats the edge instead of adding black bars.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(p["flip"][:, None, None, None], x.flip(3), x)


def face_train_transform(images: torch.Tensor, generator: torch.Generator, cfg: FaceAugment | None) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float in [0, 1], augmented when ``cfg`` is given."""
    x = images.float().div_(255.0)
    if cfg is None:
        return x
    return face_augment(x, draw_face_params(len(x), cfg, generator))
