"""Training and inference loops. They return numbers; they never plot or write files.

Data is a uint8 tensor (N, 3, H, W) already on the training device (or on the
CPU), indexed in batches; the transform (augmentation + normalisation) runs on
that device. There is no DataLoader and no per-image Python in the loop.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from cnnlab.errors import TrainingDiverged
from cnnlab.runtime import autocast

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]


def batch_indices(indices: torch.Tensor, batch_size: int, generator: torch.Generator | None = None,
                  drop_last: bool = False, rank: int = 0, world_size: int = 1) -> list[torch.Tensor]:
    """Split ``indices`` into batches, shuffled with ``generator`` if given.

    With several processes every rank draws the same permutation and keeps its
    own shard (equal sizes, so all ranks take the same number of steps). With
    ``drop_last`` a final partial batch is dropped, unless it would be the only one.
    """
    if generator is not None:
        indices = indices[torch.randperm(len(indices), generator=generator)]
    if world_size > 1:
        per_rank = len(indices) // world_size
        indices = indices[rank::world_size][:per_rank]
    batches = list(torch.split(indices, batch_size))
    if drop_last and len(batches) > 1 and len(batches[-1]) < batch_size:
        batches.pop()
    return batches


def _prepare(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batches: list[torch.Tensor],
    optimizer: torch.optim.Optimizer,
    transform: Transform,
    *,
    device: torch.device,
    precision: str = "fp32",
    channels_last: bool = False,
    label_smoothing: float = 0.0,
    epoch: int = 0,
    log_every: int = 25,
    progress: bool = True,
    lr_factor: Callable[[int], float] | None = None,
) -> dict[str, float]:
    """One pass over ``batches``; returns sums (loss, correct, count) so ranks can add them.

    ``lr_factor(step)`` scales the epoch's learning rate at each step (a warm-up);
    the epoch's rate is restored at the end so an epoch scheduler continues from it.
    The loss is checked for NaN/inf without a device sync per step: the first bad
    step is recorded on the device and looked at every ``log_every`` steps.
    """
    model.train()
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    first_bad = torch.full((), -1, device=device, dtype=torch.int64)
    count = 0
    bar = tqdm(batches, desc=f"epoch {epoch + 1} train", unit="batch", leave=False,
               disable=None if progress else True, dynamic_ncols=True)
    for step, idx in enumerate(bar):
        dev_idx = idx.to(images.device, non_blocking=True)
        x = _prepare(transform(images[dev_idx].to(device, non_blocking=True)), channels_last)
        y = labels[dev_idx].to(device, non_blocking=True)
        if lr_factor is not None:
            f = lr_factor(step)
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * f
        with autocast(device, precision):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

        loss_d = loss.detach()
        first_bad = torch.where(~torch.isfinite(loss_d) & (first_bad < 0), step, first_bad)
        loss_sum += loss_d.double() * len(idx)
        correct += (logits.detach().argmax(1) == y).sum()
        count += len(idx)
        if (step + 1) % log_every == 0 or step + 1 == len(batches):
            _check_finite(first_bad, epoch)
            if not bar.disable:
                bar.set_postfix(loss=f"{loss_sum.item() / count:.4f}", acc=f"{correct.item() / count:.3f}")
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["lr"] = lr
    _check_finite(first_bad, epoch)
    return {"loss_sum": loss_sum.item(), "correct": float(correct.item()), "count": float(count)}


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
            "the last good checkpoint is kept (try a lower --lr)"
        )


@torch.no_grad()
def infer(
    model: nn.Module,
    images: torch.Tensor,
    transform: Transform,
    *,
    device: torch.device,
    batch_size: int = 1000,
    precision: str = "fp32",
    channels_last: bool = False,
    features: bool = False,
    desc: str | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, C) as float32 on the CPU; with ``features`` also the pooled
    features before the classifier (N, F). Nothing is scored here."""
    model.eval()
    net = getattr(model, "module", model)
    logits, feats = [], []
    for idx in tqdm(batch_indices(torch.arange(len(images)), batch_size), desc=desc or "inference",
                    unit="batch", leave=False, disable=None if desc else True):
        x = _prepare(transform(images[idx.to(images.device)].to(device, non_blocking=True)), channels_last)
        with autocast(device, precision):
            if features:
                f = net.forward_features(x)
                out = net.forward_head(f)
                feats.append(f.float().cpu())
            else:
                out = model(x)
        logits.append(out.float().cpu())
    out = torch.cat(logits) if logits else torch.zeros(0)
    return (out, torch.cat(feats)) if features else out
