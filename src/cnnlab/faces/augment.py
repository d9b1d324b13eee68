"""Training augmentation for faces: a pure batch function applied on the training device.

Aligned face crops (LFW deep-funneled) differ mostly by pose and expression,
not by framing, so the augmentation is mild: a horizontal flip (a mirrored
face is the same person) and a small random zoom and shift, the batched
equivalent of a random resized crop of 87-100 % of the side. Colour is left
alone: skin tone and lighting carry identity in a verification set this
small. The random numbers are drawn on the CPU from an explicit generator, so
a run is reproducible and resumable on any device; evaluation images are
never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from cnnlab.data.augment import affine_matrices


@dataclass(frozen=True)
class FaceAugment:
    flip_p: float = 0.5
    zoom: tuple[float, float] = (1.0, 1.15)
    """Magnification range: 1.15 shows the central 87 % of the side."""
    shift: float = 0.04
    """Largest shift, as a fraction of the side, each way."""


def draw_params(n: int, cfg: FaceAugment, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image parameters, drawn on the CPU in a fixed order."""
    u = torch.rand((n, 4), generator=generator, dtype=torch.float64)  # (n, 4)
    return {
        "flip": u[:, 0] < cfg.flip_p,
        "zoom": cfg.zoom[0] + (cfg.zoom[1] - cfg.zoom[0]) * u[:, 1],
        "tx": cfg.shift * (2 * u[:, 2] - 1),
        "ty": cfg.shift * (2 * u[:, 3] - 1),
    }


def apply(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Zoom, shift and flip a float batch (B, 3, H, W) on its own device."""
    b, _, h, w = x.shape
    p = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
    zero = torch.zeros(b, dtype=torch.float64, device=x.device)
    theta = affine_matrices(zero, p["tx"] * w, p["ty"] * h, p["zoom"], h, w)  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.dtype), [b, 3, h, w], align_corners=False)
    # Border padding: a shift past the edge repeats the edge instead of adding black bars.
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(p["flip"][:, None, None, None], x.flip(3), x)


def train_images(images: torch.Tensor, generator: torch.Generator, cfg: FaceAugment | None) -> torch.Tensor:
    """uint8 (B, 3, H, W) on any device -> float in [0, 1], augmented when ``cfg`` is given."""
    x = images.float().div_(255.0)
    if cfg is None:
        return x
    return apply(x, draw_params(len(x), cfg, generator))
