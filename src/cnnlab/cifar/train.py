"""Train one BaseCNN variant on CIFAR-10 into a run folder.

``train(cfg, out)`` is what ``cnnlab cifar train`` calls. It runs unchanged as
one process or under ``torchrun`` (DistributedDataParallel: every rank its own
shard of each epoch, sums reduced across ranks, only rank 0 writes files).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import cnnlab
from cnnlab.config import CifarTrainConfig, from_dict, to_dict
from cnnlab.data.augment import AugmentConfig, eval_transform, train_transform
from cnnlab.data.cifar10 import Cifar10, load_cifar10, stratified_split, subsample
from cnnlab.engine import batch_indices, infer, train_one_epoch
from cnnlab.errors import CnnlabError
from cnnlab.files import atomic_torch_save, load_checkpoint, load_model_state
from cnnlab.metrics import accuracy
from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.profile import count_parameters
from cnnlab.run import RunDir, log_to_file
from cnnlab.run import resume_config as run_resume_config
from cnnlab.runtime import (device_name, enable_fast_kernels, DistInfo, all_reduce_sum, barrier, cleanup_distributed, init_distributed,
                            resolve_device, resolve_precision, rng_state, seed_everything, set_rng_state)

logger = logging.getLogger(__name__)

KIND = "cifar"
# Fields that change how fast a run goes, not what it computes: a resumed run may change them.
RUNTIME_FIELDS = ("device", "compile", "eval_batch_size", "data_dir", "download", "skip_bad_images")


def build_model(cfg: CifarTrainConfig, num_classes: int = 10) -> BaseCNN:
    return BaseCNN(cfg.blocks, cfg.width, num_classes=num_classes)


def build_optimizer(model: nn.Module, cfg: CifarTrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm parameters and biases (common practice; they are not weights to shrink).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.Adam(groups, lr=cfg.lr)


def load_run_model(run: RunDir, checkpoint: str = "best", device: str | torch.device = "cpu") -> tuple[BaseCNN, dict]:
    """The model of a finished run with the weights of ``checkpoints/<checkpoint>.pt``."""
    cfg = from_dict(CifarTrainConfig, run.read_config(), source=str(run.config_path))
    model = build_model(cfg)
    path = run.checkpoints / f"{checkpoint}.pt"
    ckpt = load_checkpoint(path)
    load_model_state(model, ckpt.get("model"), path, _what(model))
    return model.to(device), ckpt


def _what(model: BaseCNN) -> str:
    return f"{model.variant} at width {model.width}"


class _Data:
    """The tensors one process trains on, on its device."""

    def __init__(self, cfg: CifarTrainConfig, data: Cifar10, device: torch.device):
        train_idx, val_idx = stratified_split(data.train_labels, cfg.val_per_class, cfg.seed)
        train_idx = subsample(train_idx, cfg.max_train_samples, cfg.seed)
        # On a GPU the whole (uint8) training set sits in device memory: 150 MB for CIFAR-10.
        self.train_x = data.train_images[train_idx].to(device)
        self.train_y = data.train_labels[train_idx].to(device)
        self.val_x = data.train_images[val_idx]
        self.val_y = data.train_labels[val_idx]
        self.test_x, self.test_y = data.test_images, data.test_labels
        self.classes = data.classes
        self.sizes = {"train": len(train_idx), "val": len(val_idx), "test": len(data.test_labels)}


def _evaluate(model, x, y, device, cfg, precision, channels_last, dinfo: DistInfo, desc: str):
    """Loss and accuracy of ``x`` (sharded across ranks, sums reduced).

    ``model`` is the bare module, not the DDP wrapper: ranks may run different
    numbers of batches here, and DDP's forward could wait on a collective."""
    shard = torch.arange(len(x))[dinfo.rank::dinfo.world_size]
    logits = infer(model, x[shard], eval_transform, device=device, batch_size=cfg.eval_batch_size,
                   precision=precision, channels_last=channels_last, desc=desc)
    yy = y[shard]
    loss_sum = F.cross_entropy(logits, yy, reduction="sum").item() if len(yy) else 0.0
    correct = accuracy(logits, yy) * len(yy) if len(yy) else 0.0
    loss_sum, correct, n = all_reduce_sum([loss_sum, correct, float(len(yy))], device, dinfo)
    return loss_sum / max(n, 1), correct / max(n, 1)


def train(cfg: CifarTrainConfig, out: str | Path, resume: bool = False, progress: bool = True) -> dict:
    """Train ``cfg`` into the run folder ``out`` and return its summary.

    With ``resume`` the run continues from ``checkpoints/last.pt`` and ends where
    the uninterrupted run would have ended; a finished run is left as it is.
    """
    run = RunDir(out)
    device = resolve_device(cfg.device)
    dinfo = init_distributed(device)
    try:
        return _train(cfg, run, resume, device, dinfo, progress)
    finally:
        cleanup_distributed(dinfo)


def _train(cfg, run: RunDir, resume, device, dinfo: DistInfo, progress) -> dict:
    precision = resolve_precision(cfg.precision, device)
    enable_fast_kernels(device)
    channels_last = cfg.channels_last if cfg.channels_last is not None else precision == "bf16"
    if dinfo.is_main:
        run.prepare(to_dict(cfg), resume, ignore=RUNTIME_FIELDS)
    barrier(dinfo)
    with log_to_file(run.log_path, enabled=dinfo.is_main):
        if resume and run.read_summary().get("status") == "finished":
            logger.info("%s is already finished; nothing to do", run.path)
            return run.read_summary()
        if not dinfo.is_main:
            logging.getLogger("cnnlab").setLevel(logging.WARNING)

        # Rank 0 decodes and caches first; the others then read the cache.
        if dinfo.is_main:
            data = load_cifar10(cfg.data_dir, cfg.download, cfg.skip_bad_images)
        barrier(dinfo)
        if not dinfo.is_main:
            data = load_cifar10(cfg.data_dir, False, cfg.skip_bad_images)
        d = _Data(cfg, data, device)
        seed_everything(cfg.seed)
        model = build_model(cfg, num_classes=len(d.classes)).to(device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        params = count_parameters(model)
        optimizer = build_optimizer(model, cfg)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.gamma)
        shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
        aug_gen = torch.Generator().manual_seed(cfg.seed + 2 + 1000 * dinfo.rank)

        history: list[dict] = []
        best = {"val_accuracy": -1.0, "epoch": 0}
        start = 0
        if resume and run.last_checkpoint.is_file():
            ckpt = load_checkpoint(run.last_checkpoint)
            load_model_state(model, ckpt.get("model"), run.last_checkpoint, _what(model))
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            set_rng_state(ckpt["rng"][min(dinfo.rank, len(ckpt["rng"]) - 1)], shuffle_gen, aug_gen)
            history, best, start = ckpt["history"], ckpt["best"], int(ckpt["epoch"])
            logger.info("resuming %s after epoch %d of %d", run.path, start, cfg.epochs)
        elif resume:
            logger.info("%s has no checkpoint yet; starting from the beginning", run.path)

        net = model
        if dinfo.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net)

        logger.info(
            "training %s (width %s, %s trainable parameters) on %s, %s%s; train %d / val %d / test %d images%s",
            model.variant, cfg.width, f"{params:,}", device_name(device), precision,
            " + channels_last" if channels_last else "", d.sizes["train"], d.sizes["val"], d.sizes["test"],
            f"; {dinfo.world_size} processes" if dinfo.enabled else "",
        )
        aug = AugmentConfig() if cfg.augment else None
        transform = lambda x: train_transform(x, aug_gen, aug)  # noqa: E731

        for epoch in range(start, cfg.epochs):
            t0 = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            batches = batch_indices(torch.arange(len(d.train_y)), cfg.batch_size, shuffle_gen, drop_last=True,
                                    rank=dinfo.rank, world_size=dinfo.world_size)
            s = train_one_epoch(net, d.train_x, d.train_y, batches, optimizer, transform, device=device,
                                precision=precision, channels_last=channels_last,
                                label_smoothing=cfg.label_smoothing, epoch=epoch, progress=progress,
                                lr_factor=_warmup(cfg.warmup_epochs, epoch, len(batches)))
            loss_sum, correct, n = all_reduce_sum([s["loss_sum"], s["correct"], s["count"]], device, dinfo)
            train_seconds = time.perf_counter() - t0
            val_loss, val_acc = _evaluate(model, d.val_x, d.val_y, device, cfg, precision, channels_last, dinfo,
                                          desc=f"epoch {epoch + 1} val" if progress and dinfo.is_main else None)
            scheduler.step()
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / n,
                "train_accuracy": correct / n,
                "val_loss": val_loss,
                "val_accuracy": val_acc,
                "lr": lr,
                "train_seconds": train_seconds,
                "seconds": time.perf_counter() - t0,
            }
            history.append(row)
            logger.info("epoch %d/%d  train loss %.4f acc %.4f | val loss %.4f acc %.4f | lr %.2e | %.1fs",
                        epoch + 1, cfg.epochs, row["train_loss"], row["train_accuracy"], val_loss, val_acc, lr,
                        row["seconds"])
            if dinfo.is_main:
                if val_acc > best["val_accuracy"]:
                    best = {"val_accuracy": val_acc, "epoch": epoch + 1}
                    atomic_torch_save({"kind": KIND, "model": model.state_dict(), "epoch": epoch + 1,
                                       "val_accuracy": val_acc, "config": to_dict(cfg)}, run.best_checkpoint)
                rngs = _gather_rng(rng_state(shuffle_gen, aug_gen), dinfo)
                atomic_torch_save({
                    "kind": KIND, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "rng": rngs, "history": history,
                    "best": best, "config": to_dict(cfg),
                }, run.last_checkpoint)
                # metrics.csv is rewritten from the checkpoint's history, so the two always agree.
                run.write_metrics(history)
            else:
                _gather_rng(rng_state(shuffle_gen, aug_gen), dinfo)
            best = _sync_best(best, dinfo)

        # The test set is looked at once, after training, with the best checkpoint.
        barrier(dinfo)
        best_ckpt = load_checkpoint(run.best_checkpoint) if run.best_checkpoint.is_file() else None
        if best_ckpt is None:
            raise CnnlabError(f"{run.best_checkpoint} is missing; the run cannot be tested")
        load_model_state(model, best_ckpt["model"], run.best_checkpoint, _what(model))
        test_loss, test_acc = _evaluate(model, d.test_x, d.test_y, device, cfg, precision, channels_last, dinfo,
                                        desc="test" if progress and dinfo.is_main else None)
        in_sync = _ranks_in_sync(model, dinfo)
        if not in_sync:
            logger.warning("the processes ended with different weights; DistributedDataParallel lost sync")
        total_train = sum(r["train_seconds"] for r in history)
        summary = {
            "kind": KIND,
            "status": "finished",
            "blocks": model.variant,
            "width": cfg.width,
            "params": params,
            "epochs": cfg.epochs,
            "train_seconds": total_train,
            "wall_seconds": sum(r["seconds"] for r in history),
            "train_images_per_second": d.sizes["train"] * len(history) / max(total_train, 1e-9),
            "best_val_accuracy": best["val_accuracy"],
            "best_epoch": best["epoch"],
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            "num_train": d.sizes["train"],
            "num_val": d.sizes["val"],
            "num_test": d.sizes["test"],
            "classes": d.classes,
            "data_layout": data.layout,
            "device": device_name(device),
            "precision": precision,
            "channels_last": channels_last,
            "world_size": dinfo.world_size,
            "ranks_in_sync": in_sync,
            "torch": torch.__version__,
            "cnnlab": cnnlab.__version__,
        }
        if dinfo.is_main:
            summary = run.update_summary(**summary)
            logger.info("best val accuracy %.4f (epoch %d); test accuracy %.4f; %.1fs of training",
                        best["val_accuracy"], best["epoch"], test_acc, total_train)
        barrier(dinfo)
        return summary


def _warmup(warmup_epochs: float, epoch: int, steps_per_epoch: int):
    """Linear warm-up from 0 to the scheduled rate over ``warmup_epochs`` epochs of steps.

    Deep plain and residual stacks at a high initial rate can blow up in their first
    steps; a warm-up lets BatchNorm statistics settle first. Afterwards the rate is the
    study's ExponentialLR, lr_t = lr_0 * gamma^t.
    """
    total = warmup_epochs * steps_per_epoch
    if total <= 0 or epoch * steps_per_epoch >= total:
        return None
    return lambda step: min(1.0, (epoch * steps_per_epoch + step + 1) / total)


def _gather_rng(state: dict, dinfo: DistInfo) -> list[dict]:
    """Every rank's RNG state (each draws its own augmentation), for the checkpoint on rank 0."""
    if not dinfo.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * dinfo.world_size
    dist.all_gather_object(states, state)
    return states


def _ranks_in_sync(model: nn.Module, dinfo: DistInfo) -> bool:
    """Whether every process holds the same weights (a cheap DDP sanity check)."""
    if not dinfo.enabled:
        return True
    import torch.distributed as dist

    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    sums = [None] * dinfo.world_size
    dist.all_gather_object(sums, total)
    return all(s == sums[0] for s in sums)


def _sync_best(best: dict, dinfo: DistInfo) -> dict:
    if not dinfo.enabled:
        return best
    from cnnlab.runtime import broadcast_object

    return broadcast_object(best, dinfo)


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> CifarTrainConfig:
    """The saved config of a run, with only runtime fields overridden."""
    return run_resume_config(CifarTrainConfig, run_dir, overrides, RUNTIME_FIELDS)
