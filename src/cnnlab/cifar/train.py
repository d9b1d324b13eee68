"""Train one BaseCNN variant on CIFAR-10 into a run folder.

``train(cfg, out)`` is what ``cnnlab cifar train`` calls. It runs unchanged as
one process or under ``torchrun`` (DistributedDataParallel: every rank its own
shard of each epoch, sums reduced across ranks, only rank 0 writes files).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab import engine
from cnnlab.config import RESUMABLE_FIELDS, CifarTrainConfig, to_dict
from cnnlab.data.augment import CIFAR_AUGMENTS, eval_transform, train_transform
from cnnlab.data.cifar10 import Cifar10, load_cifar10, stratified_split, subsample
from cnnlab.engine import (Fitted, Schedule, Session, TimeBudget, batch_indices, cosine_decay, exponential_decay, fit,
                           infer, linear_decay, load_best, one_cycle, ranks_in_sync, session, timing)
from cnnlab.errors import ConfigError, param
from cnnlab.metrics import accuracy
from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.profile import count_parameters
from cnnlab.run import FILE_ONLY, RunDir
from cnnlab.run import resume_config as run_resume_config
from cnnlab.runtime import all_reduce_sum, barrier, device_name, seed_everything

logger = logging.getLogger(__name__)

KIND = "cifar"
# What a resumed run may change: how fast it runs, and where its data is found.
RUNTIME_FIELDS = (*RESUMABLE_FIELDS, "data_dir", "download", "skip_bad_images")
# What ``cnnlab cifar evaluate`` adds to summary.json about the best checkpoint it tested: dropped when
# a finished run is extended, since further training may replace that checkpoint.
EVALUATION_KEYS = ("per_class_accuracy", "confusion_matrix", "tsne_samples", "feature_image", "evaluated_",
                   "figures")


def build_model(cfg: CifarTrainConfig, num_classes: int = 10) -> BaseCNN:
    return BaseCNN(cfg.blocks, cfg.width, num_classes=num_classes, pooling=cfg.pooling)


def build_schedule(cfg: CifarTrainConfig, steps_per_epoch: int, clock=None) -> Schedule:
    """The rate of every step for ``cfg.schedule``, by steps or, with ``cfg.time_budget``, by the elapsed
    fraction of the budget (read from ``clock``; ``time.perf_counter`` unless given)."""
    decays = {"exponential": lambda: exponential_decay(cfg.gamma),
              "linear": lambda: linear_decay(cfg.epochs, cfg.warmup_epochs),
              "cosine": lambda: cosine_decay(cfg.epochs, cfg.warmup_epochs),
              "onecycle": lambda: one_cycle(cfg.epochs, cfg.warmup_epochs)}
    # OneCycleLR's rise is its own warm-up.
    warmup = 0.0 if cfg.schedule == "onecycle" else cfg.warmup_epochs * steps_per_epoch
    budget = None
    if cfg.time_budget is not None:
        budget = TimeBudget(cfg.time_budget_seconds, **({"clock": clock} if clock is not None else {}))
    return Schedule(steps_per_epoch, decays[cfg.schedule](), warmup_steps=warmup, budget=budget, epochs=cfg.epochs)


def build_optimizer(model: nn.Module, cfg: CifarTrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm parameters and biases (common practice; they are not weights to shrink).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return engine.build_optimizer(groups, cfg.optimizer, cfg.lr, cfg.momentum)


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


class _Spec:
    """What the engine needs to train a BaseCNN on CIFAR-10 (see :class:`cnnlab.engine.TrainSpec`)."""

    lr_group = 0
    best_key = "val_accuracy"

    def __init__(self, cfg: CifarTrainConfig, d: _Data, s: Session):
        self.cfg, self.d, self.s = cfg, d, s
        shuffle_gen = torch.Generator().manual_seed(cfg.seed + 1)
        aug_gen = torch.Generator().manual_seed(cfg.seed + 2 + 1000 * s.dist.rank)
        self.generators = (shuffle_gen, aug_gen)
        self.aug = CIFAR_AUGMENTS[cfg.augment]

    def epoch_batches(self, epoch: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        return batch_indices(torch.arange(len(self.d.train_y)), self.cfg.batch_size, generator or self.generators[0],
                             drop_last=True, rank=self.s.dist.rank, world_size=self.s.dist.world_size)

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        model.train()

    def inputs(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dev_idx = idx.to(self.d.train_x.device, non_blocking=True)
        x = train_transform(self.d.train_x[dev_idx].to(self.s.device, non_blocking=True), self.generators[1], self.aug)
        return x, self.d.train_y[dev_idx].to(self.s.device, non_blocking=True)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        return loss, {"correct": (logits.detach().argmax(1) == y).sum()}

    def train_row(self, sums: dict[str, float], images: float) -> dict[str, float]:
        return {"train_accuracy": sums["correct"] / max(images, 1)}

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        desc = f"epoch {epoch + 1} val" if self.s.progress and self.s.is_main else None
        loss, acc = evaluate(model, self.d.val_x, self.d.val_y, self.s, self.cfg.eval_batch_size, desc)
        return {"val_loss": loss, "val_accuracy": acc}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, s: Session, batch_size: int,
             desc: str | None, tta: str = "none") -> tuple[float, float] | tuple[float, float, float]:
    """Loss and accuracy of ``x`` (sharded across ranks, sums reduced); with ``tta="flip"`` also the
    accuracy of the mean logits of each image and its mirror image.

    ``model`` is the bare module, not the DDP wrapper: ranks may run different
    numbers of batches here, and DDP's forward could wait on a collective."""
    shard = torch.arange(len(x))[s.dist.rank::s.dist.world_size]
    kw = dict(device=s.device, batch_size=batch_size, precision=s.precision.precision,
              channels_last=s.precision.channels_last)
    logits = infer(model, x[shard], eval_transform, desc=desc, **kw)
    yy = y[shard]
    loss_sum = F.cross_entropy(logits, yy, reduction="sum").item() if len(yy) else 0.0
    correct = accuracy(logits, yy) * len(yy) if len(yy) else 0.0
    sums = [loss_sum, correct, float(len(yy))]
    if tta == "flip":
        mirrored = infer(model, x[shard], flipped_eval_transform, desc=desc and f"{desc} (flipped)", **kw)
        sums.append(accuracy((logits + mirrored) / 2, yy) * len(yy) if len(yy) else 0.0)
    sums = all_reduce_sum(sums, s.device, s.dist)
    n = max(sums[2], 1)
    return (sums[0] / n, sums[1] / n) + ((sums[3] / n,) if tta == "flip" else ())


def flipped_eval_transform(images: torch.Tensor) -> torch.Tensor:
    """The evaluation transform of the mirror images (test-time augmentation)."""
    return eval_transform(images).flip(3)


def train(cfg: CifarTrainConfig, out: str | Path, resume: bool = False, progress: bool = True,
          data: Cifar10 | None = None) -> dict:
    """Train ``cfg`` into the run folder ``out`` and return its summary.

    With ``resume`` the run continues from ``checkpoints/last.pt`` and ends where
    the uninterrupted run would have ended; a finished run is left as it is,
    unless ``cfg.epochs`` is more than it trained: then it trains on to the new
    end, exactly as a run started with those epochs (the schedule is a function
    of the epoch), and its test is scored again with the best checkpoint. ``data`` is ``cfg.data_dir``'s data
    set when the caller has loaded it already (a study training several runs loads it once).
    """
    return session(cfg, out, lambda s: _train(cfg, s, data), resume=resume, progress=progress,
                   runtime_fields=RUNTIME_FIELDS, evaluation_keys=EVALUATION_KEYS)


def _train(cfg: CifarTrainConfig, s: Session, data: Cifar10 | None) -> dict:
    if data is None:
        data = s.main_first(lambda: load_cifar10(cfg.data_dir, cfg.download and s.is_main, cfg.skip_bad_images))
    d = _Data(cfg, data, s.device)
    seed_everything(cfg.seed)
    model = build_model(cfg, num_classes=len(d.classes)).to(s.device)
    if s.precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    spec = _Spec(cfg, d, s)
    schedule = build_schedule(cfg, len(spec.epoch_batches(0, torch.Generator())))
    fitted = fit(s, spec, model, build_optimizer(model, cfg), schedule, epochs=cfg.epochs, kind=KIND,
                 config=to_dict(cfg), banner=_banner(cfg, s, model, d), compile=cfg.compile, ema=cfg.ema)

    load_best(s, model, _what(model))
    test = evaluate(model, d.test_x, d.test_y, s, cfg.eval_batch_size, "test" if s.progress and s.is_main else None,
                    tta=cfg.tta)
    return _finish(cfg, s, model, d, data.layout, fitted, test)


def _banner(cfg: CifarTrainConfig, s: Session, model: BaseCNN, d: _Data) -> str:
    budget = f" for at most {cfg.time_budget} of training" if cfg.time_budget is not None else ""
    return (f"training {model.variant} (width {cfg.width}, {cfg.pooling} pooling, {count_parameters(model):,} "
            f"trainable parameters) with the {cfg.recipe or 'unnamed'} recipe{budget} on {device_name(s.device)}, "
            f"{s.precision.precision}{' + channels_last' if s.precision.channels_last else ''}"
            f"; train {d.sizes['train']} / val {d.sizes['val']} / test {d.sizes['test']} images"
            f"{f'; {s.dist.world_size} processes' if s.dist.enabled else ''}")


def recipe_facts(cfg: CifarTrainConfig, fitted: Fitted) -> dict:
    """What a summary records of how the run trained: its recipe, network and, with one, its time budget."""
    facts = {"recipe": cfg.recipe, "pooling": cfg.pooling, "augment": cfg.augment, "schedule": cfg.schedule,
             "ema": cfg.ema, "epochs_trained": max((r["epoch"] for r in fitted.history), default=0)}
    if cfg.time_budget is not None:
        facts.update(time_budget=cfg.time_budget, time_budget_seconds=cfg.time_budget_seconds,
                     time_used_seconds=fitted.budget_spent)
    return facts


def describe_recipe(cfg: CifarTrainConfig) -> str:
    """One sentence of how a run trains: its recipe and the values that make it, its network's pooling."""
    warmup = f" after {cfg.warmup_epochs:g} warm-up epochs" if cfg.warmup_epochs and cfg.schedule != "onecycle" else ""
    schedule = (f"ExponentialLR gamma {cfg.gamma:g}" if cfg.schedule == "exponential" else
                f"{cfg.schedule} schedule") + warmup
    extras = [f"label smoothing {cfg.label_smoothing:g}" if cfg.label_smoothing else "",
              f"weight average (EMA {cfg.ema:g})" if cfg.ema else "", "flip TTA reported" if cfg.tta == "flip" else ""]
    pooling = ("the notebook's original pooling (one MaxPool, after block 8)" if cfg.pooling == "original"
               else "the intended pooling")
    return (f"recipe {cfg.recipe or 'not recorded'}: batch {cfg.batch_size}, {cfg.optimizer} lr {cfg.lr:g}, "
            f"weight decay {cfg.weight_decay:g}, {schedule}, {cfg.augment} augmentation"
            + "".join(f", {e}" for e in extras if e) + f", {cfg.precision} precision; {pooling}")


def _finish(cfg: CifarTrainConfig, s: Session, model: BaseCNN, d: _Data, layout: str, fitted: Fitted,
            test: tuple[float, ...]) -> dict:
    in_sync = ranks_in_sync(model, s.dist)
    if not in_sync:
        logger.warning("the processes ended with different weights; DistributedDataParallel lost sync")
    best = fitted.best
    test_loss, test_acc = test[:2]
    summary = {
        "kind": KIND, "status": "finished", "blocks": model.variant, "width": cfg.width,
        "params": count_parameters(model), "epochs": cfg.epochs, **recipe_facts(cfg, fitted),
        **timing(fitted.history), "best_val_accuracy": best["val_accuracy"], "best_epoch": best["epoch"],
        "test_accuracy": test_acc, "test_loss": test_loss, **({"test_accuracy_tta": test[2]} if len(test) > 2 else {}),
        "num_train": d.sizes["train"], "num_val": d.sizes["val"], "num_test": d.sizes["test"],
        "classes": d.classes, "data_layout": layout, **s.facts(), "ranks_in_sync": in_sync,
    }
    if s.is_main:
        summary = s.run.update_summary(**summary)
        tta = f" ({summary['test_accuracy_tta']:.4f} with flip TTA)" if "test_accuracy_tta" in summary else ""
        logger.info("best val accuracy %.4f (epoch %d); test accuracy %.4f%s; %.1fs of training",
                    best["val_accuracy"], best["epoch"], test_acc, tta, summary["train_seconds"], extra=FILE_ONLY)
    barrier(s.dist)
    return summary


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> CifarTrainConfig:
    """The saved config of a run, with only runtime fields overridden (and ``epochs``, which extends a run
    trained by epochs; a run with a time budget ends on its budget, and its epochs span its schedule)."""
    cfg = run_resume_config(CifarTrainConfig, run_dir, overrides, RUNTIME_FIELDS)
    saved = RunDir(run_dir).run_config(RUNTIME_FIELDS).get("epochs")
    if cfg.time_budget is not None and cfg.epochs != saved:
        raise ConfigError(f"{param('epochs')} {cfg.epochs}: the run in {run_dir} has a time budget ({cfg.time_budget}), "
                          f"over which its schedule spans its {saved} epochs; a budgeted run ends on its budget "
                          "and cannot be extended")
    return cfg
