"""The training loop and inference, used by both studies. They return numbers; they never plot.

A study describes what differs (a :class:`TrainSpec`: its batches, inputs,
loss and validation) and :func:`fit` does the rest, the same way for every
study: autocast and gradient scaling, channels-last, ``torch.compile``,
DistributedDataParallel with rank-0 writing, the non-finite checks, the
per-step learning-rate schedule, progress, and the checkpoints a resume
continues from bit for bit. :func:`session` opens the run folder around it
(device, precision policy, process group, log file).

Data stays a uint8 tensor (N, 3, H, W), on the training device or the CPU,
indexed in batches; the transform (augmentation + normalisation) runs on the
training device. There is no DataLoader and no per-image Python in the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

import cnnlab
from cnnlab.errors import CheckpointError, CnnlabError, NonFiniteOutput, OutOfMemory, TrainingDiverged
from cnnlab.files import atomic_torch_save, load_checkpoint, load_model_state
from cnnlab.run import RunDir, command_line, log_to_file
from cnnlab.runtime import (DistInfo, PrecisionChoice, all_reduce_sum, autocast, barrier, broadcast_object,
                            device_name, distributed, enable_fast_kernels, grad_scaler, resolve_device, rng_state,
                            select_precision, set_rng_state)

logger = logging.getLogger(__name__)

Transform = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- batches


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


def shard(batches: Sequence, rank: int, world_size: int) -> list:
    """This rank's share of an epoch's batches: every rank the same number of whole batches."""
    if world_size <= 1:
        return list(batches)
    usable = max(world_size, len(batches) // world_size * world_size)
    return list(batches[:usable][rank::world_size])


def _channels_last(x: torch.Tensor, on: bool) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last) if on and x.ndim == 4 else x


# --------------------------------------------------------------------------- the run around the loop


@dataclass
class Session:
    """One process's share of a run: its folder, device, precision and place in the process group."""

    run: RunDir
    device: torch.device
    dist: DistInfo
    precision: PrecisionChoice
    progress: bool = True
    resuming: bool = False  # --resume of a run that has a last checkpoint

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def autocast(self):
        return autocast(self.device, self.precision.precision)

    def main_first(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on rank 0 first (it decodes and caches data), then on the other ranks (they read the cache)."""
        if self.is_main:
            out = fn()
        barrier(self.dist)
        if not self.is_main:
            out = fn()
        return out

    def facts(self) -> dict:
        """What every summary records about where and how the run ran."""
        return {
            "device": device_name(self.device),
            "precision": self.precision.precision,
            "channels_last": self.precision.channels_last,
            "precision_reason": self.precision.reason,
            "world_size": self.dist.world_size,
            "torch": torch.__version__,
            "cnnlab": cnnlab.__version__,
            "command": command_line(),
        }


def session(cfg: Any, out: str | Path, body: Callable[[Session], dict], *, resume: bool, progress: bool,
            runtime_fields: tuple[str, ...], evaluation_keys: tuple[str, ...] = ()) -> dict:
    """Run ``body(session)`` in the run folder ``out`` and return its summary.

    Opens what every training run needs, the same for every study: the device,
    the precision policy's choice (logged with its reason), the process group
    under torchrun, the run folder's lock (rank 0 holds it until the end),
    ``config.yaml`` (rank 0; a resume must match the checkpoint's configuration
    but for ``runtime_fields`` and ``--epochs``) and ``train.log``. A finished
    run is left as it is, unless ``--epochs`` extends it: then it is reopened,
    and the summary keys that ``evaluation_keys`` name or begin (what an
    evaluation of the old best checkpoint wrote) are dropped.
    """
    from cnnlab.config import to_dict

    run = RunDir(out)
    device = resolve_device(cfg.device)
    with distributed(device) as dinfo:  # the process group, if this call made one, ends with the run
        stub: list[Path] = []  # what this new run created (rank 0), removed again when its start fails
        try:
            choice = select_precision(device, cfg.precision, cfg.channels_last)
            enable_fast_kernels(device)
            with contextlib.ExitStack() as held:
                changes = _open_run(run, to_dict(cfg), resume, runtime_fields, dinfo, held, stub)
                with log_to_file(run.log_path, enabled=dinfo.is_main):
                    if changes:
                        logger.info("resuming %s with changed options: %s", run.path, "; ".join(changes))
                    summary = run.read_summary()
                    if resume and summary.get("status") == "finished":
                        if not cfg.epochs > summary.get("epochs", cfg.epochs):
                            logger.info("%s is already finished; nothing to do", run.path)
                            return summary
                        barrier(dinfo)  # every rank has read the summary before rank 0 reopens it
                        if dinfo.is_main:
                            _reopen(run, summary, cfg.epochs, evaluation_keys)
                    if not dinfo.is_main:
                        logging.getLogger("cnnlab").setLevel(logging.WARNING)
                    s = Session(run, device, dinfo, choice, progress,
                                resuming=resume and run.last_checkpoint.is_file())
                    if resume and not s.resuming:
                        logger.info("%s has no checkpoint yet; starting from the beginning", run.path)
                    return body(s)
        except Exception as e:
            # A start that fails before its first checkpoint (data not found, a download that failed, options the
            # model refuses, a full disk, out of memory) leaves no run folder behind, or the same command would
            # then find "a run" in it. Ctrl-C and SIGTERM keep it: --resume continues an interrupted start.
            if stub and not isinstance(e, TrainingDiverged) and not run.last_checkpoint.exists():
                run.remove_new_run_files(stub)
            raise


def _open_run(run: RunDir, config: dict, resume: bool, runtime_fields: tuple[str, ...], dinfo: DistInfo,
              held: contextlib.ExitStack, stub: list[Path]) -> list[str]:
    """Rank 0 takes the run folder's lock (kept in ``held``) and prepares it; every rank learns whether
    that failed, so all of them stop with rank 0's message instead of waiting for it.

    Returns the options a resume changed. Once the lock is held, ``stub`` lists the paths a new run
    creates, to remove them again when its start fails (before it, they may be another process's)."""
    changes, failure = [], None
    if dinfo.is_main:
        try:
            created = run.new_run_files() if not run.exists() else []
            held.enter_context(run.lock("train", create=True))
            stub.extend(created)
            changes = run.prepare(config, resume, ignore=runtime_fields)
            if resume:
                run.set_aside_bad_summary()
        except Exception as e:  # noqa: BLE001 -- every rank must learn of it; raised below
            failure = e
    message = broadcast_object(None if failure is None else str(failure), dinfo)
    if failure is not None:
        raise failure
    if message is not None:
        raise CnnlabError(message)
    return changes


def _reopen(run: RunDir, summary: dict, epochs: int, evaluation_keys: tuple[str, ...]) -> None:
    """A finished run extended to ``epochs``: training again until the new end, and nothing in its summary
    claims to describe a best checkpoint that further training may replace."""
    logger.info("extending the finished run %s from %s to %d epochs; the schedule continues where it ended",
                run.path, summary.get("epochs"), epochs)
    kept = {k: v for k, v in summary.items() if not k.startswith(evaluation_keys)}
    run.write_summary({**kept, "status": "training", "epochs": epochs})


# --------------------------------------------------------------------------- what a study gives the loop


class TrainSpec(Protocol):
    """What differs between studies; :func:`fit` runs it.

    ``generators`` are every random stream the batches and augmentation draw
    from (saved with each checkpoint); ``lr_group`` is the optimizer group
    whose rate ``metrics.csv`` reports; ``best_key`` the validation figure
    (higher is better) that chooses ``best.pt``.
    """

    generators: tuple[torch.Generator, ...]
    lr_group: int
    best_key: str

    def epoch_batches(self, epoch: int) -> Sequence:
        """This rank's batches of ``epoch`` (0-based), in order."""

    def begin_epoch(self, model: nn.Module, epoch: int) -> None:
        """Put ``model`` in its training state for ``epoch`` (train mode, frozen layers)."""

    def inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, target)`` on the training device: x transformed and normalised, ready for the network."""

    def loss(self, out: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The batch's mean loss from the network's float32 output, and counts to sum over the epoch."""

    def train_row(self, sums: dict[str, float], images: float) -> dict[str, float]:
        """The epoch's training figures beside the loss, from the summed counts (e.g. accuracy)."""

    def validate(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Validation figures of the bare model (not the DDP wrapper): ``{"val_loss": ..., best_key: ...}``."""


@dataclass
class Schedule:
    """The learning rate of every step: ``base * decay(epoch) * warm-up(step)``.

    ``decay(epoch)`` is the study's per-epoch schedule (ExponentialLR:
    ``gamma ** epoch``; StepLR: ``gamma ** (epoch // step_size)``); the linear
    warm-up rises from 0 to 1 over ``warmup_steps``. It drives a
    :class:`~torch.optim.lr_scheduler.LambdaLR` stepped after every optimizer
    step, so its ``state_dict`` (the step count) resumes it exactly.
    """

    steps_per_epoch: int
    decay: Callable[[int], float]
    warmup_steps: float = 0.0

    def factor(self, step: int) -> float:
        f = self.decay(step // self.steps_per_epoch)
        if step < self.warmup_steps:
            f *= min(1.0, (step + 1) / self.warmup_steps)
        return f


def exponential_decay(gamma: float) -> Callable[[int], float]:
    return lambda epoch: gamma ** epoch


def step_decay(step_size: int, gamma: float) -> Callable[[int], float]:
    return lambda epoch: gamma ** (epoch // step_size)


@dataclass
class Fitted:
    """What :func:`fit` leaves: the per-epoch rows (``metrics.csv``) and the best epoch."""

    history: list[dict]
    best: dict


def build_optimizer(groups: list[dict], name: str, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """``sgd`` (Nesterov momentum when ``momentum`` > 0), ``adamw`` or ``adam`` over parameter ``groups``
    (each may carry its own ``lr`` and ``weight_decay``)."""
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr)
    raise ValueError(f"optimizer must be sgd, adamw or adam, got {name!r}")


# --------------------------------------------------------------------------- the loop


@dataclass
class _State:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    start: int = 0
    modules: dict[str, nn.Module] = field(default_factory=dict)


def fit(s: Session, spec: TrainSpec, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
        epochs: int, kind: str, config: dict, banner: str = "", compile: bool = False,
        validate_untrained: bool = False, on_epoch: Callable[[dict], None] | None = None,
        modules: dict[str, nn.Module] | None = None) -> Fitted:
    """Train ``model`` for ``epochs`` into the session's run folder and return its history.

    After each epoch: validation (``spec.validate``), ``best.pt`` when
    ``spec.best_key`` improved, ``last.pt`` (everything a resume needs,
    written atomically) and ``metrics.csv`` (rewritten from the checkpoint's
    history, so the two always agree), then ``on_epoch(row)``. With
    ``validate_untrained`` an epoch-0 row scores the network before any
    step (and competes for ``best.pt``). A resumed session continues after the
    last checkpoint's epoch and ends where the uninterrupted run would have.
    ``banner`` (what trains on what) is logged once the checkpoint has loaded.
    ``modules`` are what the optimizer trains besides ``model`` (a loss's
    learnt weights), by name: ``last.pt`` holds them for resuming; ``best.pt``
    holds the network alone.
    """
    st = _State(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step)),
                grad_scaler(s.device, s.precision.precision), best={spec.best_key: -math.inf, "epoch": -1},
                modules=dict(modules or {}))
    if s.resuming:
        _resume(s, spec, st, schedule, epochs)
    logger.info("%s; precision: %s", banner or "training", s.precision.reason)
    save = _Checkpoints(s, spec, st, kind, config)
    if validate_untrained and not st.history:
        t0 = time.perf_counter()
        v = spec.validate(model, -1)
        save.epoch({"epoch": 0, "train_loss": math.nan, **v, "lr": _epoch_lr(st, spec, schedule, 0),
                    "train_seconds": 0.0, "images_per_second": math.nan, "seconds": time.perf_counter() - t0})
        logger.info("epoch 0 (untrained)  %s", _fmt(v))
        if on_epoch is not None:
            on_epoch(st.history[-1])
    wrap = _Wrapper(s, compile)
    for epoch in range(st.start, epochs):
        t0 = time.perf_counter()
        lr = _epoch_lr(st, spec, schedule, epoch)
        spec.begin_epoch(model, epoch)
        sums = _train_epoch(s, spec, st, wrap(model), spec.epoch_batches(epoch), epoch)
        train_seconds = time.perf_counter() - t0
        v = spec.validate(model, epoch)
        row = {"epoch": epoch + 1, "train_loss": sums.pop("loss") / max(sums.pop("steps"), 1),
               **spec.train_row(sums, sums["images"]), **v, "lr": lr, "train_seconds": train_seconds,
               "images_per_second": sums["images"] / max(train_seconds, 1e-9), "seconds": time.perf_counter() - t0}
        save.epoch(row)
        logger.info("epoch %d/%d  train loss %.4f | %s | lr %.2e | %.0f img/s | %.1fs", epoch + 1, epochs,
                    row["train_loss"], _fmt({k: v for k, v in row.items() if k.startswith(("train_", "val_"))
                                             and k not in ("train_loss", "train_seconds")}),
                    lr, row["images_per_second"], row["seconds"])
        if on_epoch is not None:
            on_epoch(row)
    return Fitted(st.history, st.best)


def _fmt(values: dict[str, float]) -> str:
    return "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in values.items())


def _epoch_lr(st: _State, spec: TrainSpec, schedule: Schedule, epoch: int) -> float:
    """The rate ``metrics.csv`` reports for ``epoch``: the schedule's, before any warm-up."""
    return st.scheduler.base_lrs[spec.lr_group] * schedule.decay(epoch)


def _train_epoch(s: Session, spec: TrainSpec, st: _State, net: nn.Module, batches: Sequence,
                 epoch: int) -> dict[str, float]:
    """One pass over ``batches``; returns the sums of every rank: loss, steps, images and ``spec``'s counts.

    The loss is checked for NaN/inf without a device sync per step: the first
    bad step is recorded on the device and looked at every 25 steps. Without
    a progress bar (output to a file) a line is logged every two minutes.
    """
    dev = s.device
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    counts: dict[str, torch.Tensor] = {}
    first_bad = torch.full((), -1, device=dev, dtype=torch.int64)
    images, started = 0, time.perf_counter()
    last_note = started
    bar = tqdm(batches, desc=f"epoch {epoch + 1} train", unit="batch", leave=False,
               disable=None if s.progress and s.is_main else True, dynamic_ncols=True)
    for step, batch in enumerate(bar):
        x, target = spec.inputs(batch)
        with s.autocast():
            out = net(_channels_last(x, s.precision.channels_last))
        loss, extra = spec.loss(out.float(), target)
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        st.scaler.step(st.optimizer)
        st.scaler.update()
        st.scheduler.step()

        loss_d = loss.detach()
        first_bad = torch.where(~torch.isfinite(loss_d) & (first_bad < 0), step, first_bad)
        loss_sum += loss_d.double()
        for k, v in extra.items():
            counts[k] = counts.get(k, 0) + v.detach()
        images += len(x)
        if (step + 1) % 25 == 0 or step + 1 == len(batches):
            _check_finite(first_bad, epoch)
            if not bar.disable:
                bar.set_postfix(loss=f"{loss_sum.item() / (step + 1):.4f}")
            elif s.is_main and time.perf_counter() - last_note > 120:
                last_note = time.perf_counter()
                logger.info("epoch %d: step %d/%d, loss %.4f, %.1f img/s", epoch + 1, step + 1, len(batches),
                            loss_sum.item() / (step + 1), images / (last_note - started))
    _check_finite(first_bad, epoch)
    names = list(counts)
    values = all_reduce_sum([loss_sum.item(), float(len(batches)), float(images),
                             *(float(counts[k]) for k in names)], dev, s.dist)
    return dict(zip(["loss", "steps", "images", *names], values))


def _check_finite(first_bad: torch.Tensor, epoch: int) -> None:
    step = int(first_bad.item())
    if step >= 0:
        raise TrainingDiverged(
            f"the training loss became NaN or infinite at epoch {epoch + 1}, step {step + 1}; "
            "the last good checkpoint is kept (try a lower learning rate)"
        )


def _check_epoch_finite(st: _State, row: dict, key: str) -> None:
    """A diverged epoch (non-finite weights, validation loss or ``key``) never becomes a checkpoint.

    The training loss alone misses a step that blows the weights up after its
    loss was computed (one step an epoch at a huge rate). Every rank holds the
    same weights and validation figures, so every rank stops together.
    """
    bad = [k for k in ("val_loss", key) if k in row and not math.isfinite(float(row[k]))]
    states = [st.model.state_dict(), *({f"{k}.{n}": t for n, t in m.state_dict().items()}
                                       for k, m in st.modules.items())]
    floats = [(name, t) for state in states for name, t in state.items() if t.is_floating_point()]
    finite = torch.stack([torch.isfinite(t).all() for _, t in floats]).tolist() if floats else []  # one sync
    weights = [name for (name, _), ok in zip(floats, finite) if not ok]
    if not bad and not weights:
        return
    what = []
    if weights:
        what.append(f"{len(weights)} weight tensor(s) became NaN or infinite (e.g. {weights[0]})")
    what += [f"{k} is {row[k]}" for k in bad]
    kept = (f"the last good checkpoint (epoch {st.history[-1]['epoch']}) is kept" if st.history
            else "no checkpoint was written")
    raise TrainingDiverged(f"training diverged at epoch {row['epoch']}: {'; '.join(what)}; {kept} "
                           "and the run is not finished (try a lower learning rate)")


class _Wrapper:
    """The network the steps run through: DDP around the model when there are several processes,
    ``torch.compile`` when asked. DDP is rebuilt when the set of trainable parameters changes
    (a backbone joining after its frozen epochs), since it registers them once."""

    def __init__(self, s: Session, compile: bool):
        self.s, self.compile = s, compile
        self.key: tuple | None = None
        self.net: nn.Module | None = None

    def __call__(self, model: nn.Module) -> nn.Module:
        key = tuple(p.requires_grad for p in model.parameters())
        if self.net is None or (self.s.dist.enabled and key != self.key):
            net = model
            if self.s.dist.enabled:
                net = nn.parallel.DistributedDataParallel(
                    model, device_ids=[self.s.device.index] if self.s.device.type == "cuda" else None)
            self.net = torch.compile(net) if self.compile else net
            self.key = key
        return self.net


class _Checkpoints:
    """``last.pt``, ``best.pt`` and ``metrics.csv``, written by rank 0 after each epoch."""

    def __init__(self, s: Session, spec: TrainSpec, st: _State, kind: str, config: dict):
        self.s, self.spec, self.st, self.kind, self.config = s, spec, st, kind, config

    def epoch(self, row: dict) -> None:
        st, key = self.st, self.spec.best_key
        _check_epoch_finite(st, row, key)
        st.history.append(row)
        rngs = _gather(rng_state(*self.spec.generators), self.s.dist)
        if self.s.is_main:
            if row[key] > st.best[key]:
                st.best = {key: row[key], "epoch": row["epoch"]}
                atomic_torch_save({"kind": self.kind, "model": st.model.state_dict(), "epoch": row["epoch"],
                                   key: row[key], "config": self.config}, self.s.run.best_checkpoint)
            atomic_torch_save({
                "kind": self.kind, "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
                "scheduler": st.scheduler.state_dict(), "scaler": st.scaler.state_dict(), "epoch": row["epoch"],
                "rng": rngs, "history": st.history, "best": st.best, "config": self.config,
                **({"modules": {k: m.state_dict() for k, m in st.modules.items()}} if st.modules else {}),
            }, self.s.run.last_checkpoint)
            self.s.run.write_metrics(st.history)
        st.best = broadcast_object(st.best, self.s.dist)


def _gather(state: dict, dinfo: DistInfo) -> list[dict]:
    """Every rank's RNG state (each draws its own augmentation), for the checkpoint on rank 0."""
    if not dinfo.enabled:
        return [state]
    import torch.distributed as dist

    states = [None] * dinfo.world_size
    dist.all_gather_object(states, state)
    return states


def _resume(s: Session, spec: TrainSpec, st: _State, schedule: Schedule, epochs: int) -> None:
    """Continue from ``last.pt``, checked first (:meth:`RunDir.load_last`): a damaged or mismatched
    checkpoint is refused naming the file and the key, never half loaded."""
    path = s.run.last_checkpoint
    ckpt = s.run.load_last()
    best = ckpt["best"]
    if spec.best_key not in best:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its 'best' holds no {spec.best_key}")
    if ckpt["epoch"] > epochs:
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its 'epoch' is {ckpt['epoch']}, more than "
                              f"the run's {epochs} epochs")
    load_model_state(st.model, ckpt["model"], path, "this run's network")
    sched = ckpt["scheduler"]
    if "lr_lambdas" not in sched:  # an epoch scheduler of cnnlab 0.1: its count was epochs, not steps
        sched = {**sched, "last_epoch": ckpt["epoch"] * schedule.steps_per_epoch, "lr_lambdas": [None]}
        sched = {k: v for k, v in sched.items() if k in st.scheduler.state_dict()}
    rngs = ckpt["rng"] if isinstance(ckpt["rng"], list) else [ckpt["rng"]]
    for name, module in st.modules.items():
        _restore(path, "modules", lambda: module.load_state_dict(ckpt["modules"][name]))
    _restore(path, "optimizer", lambda: st.optimizer.load_state_dict(ckpt["optimizer"]))
    _restore(path, "scheduler", lambda: st.scheduler.load_state_dict(sched))
    if "scaler" in ckpt:
        _restore(path, "scaler", lambda: st.scaler.load_state_dict(ckpt["scaler"]))
    _restore(path, "rng", lambda: set_rng_state(rngs[min(s.dist.rank, len(rngs) - 1)], *spec.generators))
    st.history, st.best, st.start = ckpt["history"], best, ckpt["epoch"]
    logger.info("resuming %s after epoch %d", s.run.path, st.start)


def _restore(path: Path, key: str, load: Callable[[], Any]) -> None:
    """``load()`` (a ``load_state_dict`` of the checkpoint's ``key``), or a :class:`CheckpointError` naming both."""
    try:
        load()
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as e:
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} cannot be resumed: its '{key}' does not fit this run "
                              f"({text})") from None


def load_best(s: Session, model: nn.Module, what: str = "this run's network") -> None:
    """Load ``best.pt`` into ``model``: the test is looked at once, after training, with the best checkpoint."""
    barrier(s.dist)
    if not s.run.best_checkpoint.is_file():
        raise CnnlabError(f"{s.run.best_checkpoint} is missing; the run cannot be tested")
    load_model_state(model, load_checkpoint(s.run.best_checkpoint).get("model"), s.run.best_checkpoint, what)


def ranks_in_sync(model: nn.Module, dinfo: DistInfo) -> bool:
    """Whether every process holds the same weights (a cheap DDP sanity check)."""
    if not dinfo.enabled:
        return True
    total = sum(float(p.detach().double().sum()) for p in model.parameters())
    sums = _gather({"sum": total}, dinfo)
    return all(x["sum"] == sums[0]["sum"] for x in sums)


def timing(history: list[dict]) -> dict:
    """Training time and speed over the trained epochs (an epoch-0 row has none)."""
    trained = [r for r in history if r["epoch"] > 0]
    total = sum(r["train_seconds"] for r in trained)
    images = sum(r["images_per_second"] * r["train_seconds"] for r in trained)
    return {"train_seconds": total, "wall_seconds": sum(r["seconds"] for r in history),
            "train_images_per_second": images / total if total > 0 else None}


# --------------------------------------------------------------------------- inference


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
    """The network's outputs (N, C) as float32 on the CPU, in eval mode, no augmentation.

    With ``features`` also what ``forward_features`` returns (N, F), the input
    of ``forward_head``, from the same pass. Nothing is scored here. Running out
    of memory is an :class:`~cnnlab.errors.OutOfMemory` naming ``batch_size``.
    """
    try:
        return _infer(model, images, transform, device, batch_size, precision, channels_last, features, desc)
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise
        text = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise OutOfMemory(f"out of memory running the network on batches of {batch_size} images on {device} "
                          f"({text}); smaller batches need less memory", batch_size) from None


_OOM_TEXT = re.compile(r"out of memory|can't allocate memory|cannot allocate memory|not enough memory", re.I)


def _out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` says memory ran out: MemoryError, torch's OutOfMemoryError (CUDA), or the RuntimeError
    of a CPU or MPS allocation that failed (``DefaultCPUAllocator: can't allocate memory``)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(e, (MemoryError, oom)) or bool(_OOM_TEXT.search(str(e)))


def _infer(model: nn.Module, images: torch.Tensor, transform: Transform, device: torch.device, batch_size: int,
           precision: str, channels_last: bool, features: bool, desc: str | None):
    model.eval()
    net = getattr(model, "module", model)
    outs, feats = [], []
    for idx in tqdm(batch_indices(torch.arange(len(images)), batch_size), desc=desc or "inference",
                    unit="batch", leave=False, disable=None if desc else True):
        x = _channels_last(transform(images[idx.to(images.device)].to(device, non_blocking=True)), channels_last)
        with autocast(device, precision):
            if features:
                f = net.forward_features(x)
                out = net.forward_head(f)
                feats.append(f.float().cpu())
            else:
                out = model(x)
        outs.append(out.float().cpu())
    out = torch.cat(outs) if outs else torch.zeros(0)
    return (out, torch.cat(feats) if feats else torch.zeros(0)) if features else out


def check_finite(outputs: torch.Tensor, what: str, source: str) -> torch.Tensor:
    """``outputs``, or a :class:`NonFiniteOutput` when any of them is NaN or infinite.

    Whatever is computed from such outputs (a distance, a class, a score) looks like an answer and means
    nothing; ``source`` (the network, its checkpoint and precision) and ``what`` (logits, embeddings) name
    them in the message.
    """
    if not bool(torch.isfinite(outputs).all()):
        raise NonFiniteOutput(f"{source} gave NaN or infinite {what}; no answer can be given from them")
    return outputs
