"""Embedding images with a Siamese network: deterministic, batched, no augmentation."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from cnnlab.losses import LpDistance
from cnnlab.models.siamese import SiameseNet
from cnnlab.runtime import autocast


@torch.no_grad()
def embed(
    model: SiameseNet,
    images: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 256,
    precision: str = "fp32",
    channels_last: bool = False,
    features: bool = False,
    desc: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Embeddings (N, D) float32 on the CPU of uint8 ``images`` (N, 3, S, S).

    With ``features`` also the backbone's pooled features (N, F), the input of
    the embedding head, from the same forward pass. The model is put in eval
    mode; images are normalised on the device.
    """
    model.eval()
    out, feats = [], []
    starts = range(0, len(images), batch_size)
    for s in tqdm(starts, desc=desc or "embedding", unit="batch", leave=False, disable=None if desc else True):
        x = model.normalize_input(images[s : s + batch_size].to(device, non_blocking=True))
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            f = model.backbone.forward_features(x)  # (B, F)
            z = model.head(f)  # (B, D)
        z = z.float()
        if model.normalize:
            z = torch.nn.functional.normalize(z, p=2.0, dim=1)
        out.append(z.cpu())
        if features:
            feats.append(f.float().cpu())
    d = model.embedding_dim
    emb = torch.cat(out) if out else torch.zeros(0, d)
    if features:
        return emb, (torch.cat(feats) if feats else torch.zeros(0, model.head[0].in_features))
    return emb


def pair_distances(emb: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    """Euclidean distances (M,) between rows ``i`` and ``j`` of ``emb`` (N, D)."""
    return LpDistance().paired(emb[i], emb[j])
