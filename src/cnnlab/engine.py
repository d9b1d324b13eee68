"""The training loop and inference, used by both studies. They return numbers; they never plot.

A study describes what differs (a :class:`TrainSpec`: its batches, inputs,
loss and validation) and :func:`fit` does the rest, the same way for every
study: autocast and gradient scaling, channels-last, ``torch.compile``,
DistributedDataParallel with rank-0 writing, the non-finite checks, the
per-step learning-rate schedule (by steps, or by the spent fraction of a
:class:`TimeBudget`), an optional :class:`WeightAverage` of the weights,
progress, and the checkpoints a resume continues from bit for bit. :func:`session` opens the run folder around it
(device, precision policy, process group, log file).

Data stays a uint8 tensor (N, 3, H, W), on the training device or the CPU,
indexed in batches; the transform (augmentation + normalisation) runs on the
training device. There is no DataLoader and no per-image Python in the loop.
"""

from __future__ import annotations

import contextlib
import copy
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
            # CPU timings depend on the threads as much as on the processor.
            **({"threads": torch.get_num_threads()} if self.device.type == "cpu" else {}),
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
class TimeBudget:
    """The training seconds a run may spend, read from ``clock`` (``time.perf_counter``; a test gives its own).

    Only training counts: :meth:`begin` and :meth:`end` bracket each epoch's steps, so validation and
    checkpoints spend none of it. :meth:`tick` (once a step) reads the clock; ``now`` is the training
    time at the last tick, ``spent`` at the end of the last epoch (what a checkpoint saves and a resume
    restores). With several processes ``sync`` makes every rank take rank 0's reading, so all of them
    step at the same rate and stop at the same step.
    """

    seconds: float
    clock: Callable[[], float] = time.perf_counter
    spent: float = 0.0
    now: float = 0.0
    sync: Callable[[float], float] | None = None
    _start: float | None = None

    @property
    def fraction(self) -> float:
        return min(1.0, self.now / self.seconds)

    @property
    def over(self) -> bool:
        return self.now >= self.seconds

    def begin(self) -> None:
        self._start, self.now = self.clock(), self.spent

    def tick(self) -> None:
        elapsed = self.spent + (self.clock() - self._start if self._start is not None else 0.0)
        self.now = self.sync(elapsed) if self.sync is not None else elapsed

    def end(self) -> None:
        """The epoch's steps are over: what the last tick read is spent (every rank agreed on it)."""
        self.spent, self._start = self.now, None

    def restore(self, spent: float) -> None:
        self.spent = self.now = float(spent)


@dataclass
class Schedule:
    """The learning rate of every step: ``base * decay(t) * warm-up``, with ``t`` the run's position in epochs.

    ``decay(t)`` is the study's schedule as a function of that position: ExponentialLR ``gamma ** floor(t)``,
    StepLR ``gamma ** (floor(t) // step_size)``, or a decay over the whole run (:func:`linear_decay`,
    :func:`cosine_decay`, :func:`one_cycle`). Without a ``budget`` the position is ``step / steps_per_epoch``
    and the linear warm-up rises from 0 to 1 over ``warmup_steps``. With one, as airbench schedules by
    progress, it is ``epochs`` times the elapsed fraction of the budget: the budget stands for ``epochs``
    epochs, the warm-up covers the same share of it, and the rate reaches ``decay(epochs)``, its floor,
    when the budget is spent. ``epochs`` also bounds the run: where the steps are further along than the
    clock (a machine that trains every epoch within the budget), the position follows the steps, so the run
    ends at its floor whichever ends it. It drives a :class:`~torch.optim.lr_scheduler.LambdaLR` stepped
    after every optimizer step, so its ``state_dict`` (the step count) and the budget's seconds resume it
    exactly.
    """

    steps_per_epoch: int
    decay: Callable[[float], float]
    warmup_steps: float = 0.0
    budget: TimeBudget | None = None
    epochs: int = 1

    def position(self, step: int) -> float:
        if self.budget is None:
            return step / self.steps_per_epoch
        return max(self.epochs * self.budget.fraction, step / self.steps_per_epoch)

    def factor(self, step: int) -> float:
        t = self.position(step)
        f = self.decay(t)
        if self.budget is None:
            if step < self.warmup_steps:
                f *= min(1.0, (step + 1) / self.warmup_steps)
        elif self.warmup_steps > 0:
            f *= min(1.0, t * self.steps_per_epoch / self.warmup_steps)
        return f

    def epoch_factor(self, epoch: int) -> float:
        """The factor ``metrics.csv`` reports for ``epoch``: the schedule's at its start, before any warm-up."""
        return self.decay(epoch if self.budget is None else self.position(epoch * self.steps_per_epoch))


def exponential_decay(gamma: float) -> Callable[[float], float]:
    return lambda t: gamma ** math.floor(t)


def step_decay(step_size: int, gamma: float) -> Callable[[float], float]:
    return lambda t: gamma ** (math.floor(t) // step_size)


def linear_decay(epochs: float, warmup: float = 0.0) -> Callable[[float], float]:
    """1 until the warm-up ends (``warmup`` epochs), then a straight line to 0 at ``epochs``."""
    span = max(epochs - warmup, 1e-12)
    return lambda t: min(1.0, max(0.0, (epochs - t) / span))


def cosine_decay(epochs: float, warmup: float = 0.0) -> Callable[[float], float]:
    """1 until the warm-up ends, then half a cosine down to 0 at ``epochs``."""
    span = max(epochs - warmup, 1e-12)
    return lambda t: 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, (t - warmup) / span))))


def one_cycle(epochs: float, warmup: float, div: float = 25.0, final_div: float = 1e4) -> Callable[[float], float]:
    """The rate shape of torch's ``OneCycleLR`` (cosine annealing, ``pct_start = warmup / epochs``): from
    ``1 / div`` up to 1 over the warm-up, then down to ``1 / (div * final_div)`` at ``epochs``. Its own
    warm-up: give the :class:`Schedule` none."""
    def anneal(start: float, end: float, pct: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * min(1.0, max(0.0, pct))))

    span = max(epochs - warmup, 1e-12)
    return lambda t: (anneal(1 / div, 1.0, t / warmup) if t < warmup
                      else anneal(1.0, 1 / (div * final_div), (t - warmup) / span))


class WeightAverage:
    """An exponential moving average of a model's weights and BatchNorm statistics (timm's ``ModelEmaV2``).

    ``model`` is the averaged copy, the one validation, ``best.pt`` and the test use. The decay of
    update ``n`` is ``min(decay, (1 + n) / (10 + n))``: a short run is not dominated by the random
    initial weights. Integer buffers (BatchNorm's step count) are copied.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))
        self._floats = [(a, b) for a, b in pairs if a.is_floating_point()]
        self._others = [(a, b) for a, b in pairs if not a.is_floating_point()]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_([a for a, _ in self._floats], [b.detach() for _, b in self._floats], 1 - d)
        for a, b in self._others:
            a.copy_(b)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


@dataclass
class Fitted:
    """What :func:`fit` leaves: the per-epoch rows (``metrics.csv``), the best epoch and, with a time
    budget, the training seconds it spent."""

    history: list[dict]
    best: dict
    budget_spent: float | None = None


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
    ema: WeightAverage | None = None
    budget: TimeBudget | None = None
    modules: dict[str, nn.Module] = field(default_factory=dict)

    @property
    def scored(self) -> nn.Module:
        """The weights validation, ``best.pt`` and the test use: the average when there is one."""
        return self.ema.model if self.ema is not None else self.model


def fit(s: Session, spec: TrainSpec, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule, *,
        epochs: int, kind: str, config: dict, banner: str = "", compile: bool = False,
        validate_untrained: bool = False, on_epoch: Callable[[dict], None] | None = None,
        ema: float = 0.0, modules: dict[str, nn.Module] | None = None) -> Fitted:
    """Train ``model`` for ``epochs`` into the session's run folder and return its history.

    After each epoch: validation (``spec.validate``), ``best.pt`` when
    ``spec.best_key`` improved, ``last.pt`` (everything a resume needs,
    written atomically) and ``metrics.csv`` (rewritten from the checkpoint's
    history, so the two always agree), then ``on_epoch(row)``. With
    ``validate_untrained`` an epoch-0 row scores the network before any
    step (and competes for ``best.pt``). A resumed session continues after the
    last checkpoint's epoch and ends where the uninterrupted run would have.
    ``banner`` (what trains on what) is logged once the checkpoint has loaded.
    With ``schedule.budget`` training stops at the first step that spends it (that partial epoch is
    validated and saved as any other) or after ``epochs``, whichever comes first. With ``ema`` (a decay
    in (0, 1)) a :class:`WeightAverage` of the weights is what validation and ``best.pt`` see.
    ``modules`` are what the optimizer trains besides ``model`` (a loss's
    learnt weights), by name: ``last.pt`` holds them for resuming; ``best.pt``
    holds the network alone.
    """
    st = _State(model, optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule.factor(step)),
                grad_scaler(s.device, s.precision.precision), best={spec.best_key: -math.inf, "epoch": -1},
                ema=WeightAverage(model, ema) if ema > 0 else None, budget=schedule.budget,
                modules=dict(modules or {}))
    if st.budget is not None and s.dist.enabled:
        st.budget.sync = lambda seconds: all_reduce_sum([seconds if s.is_main else 0.0], s.device, s.dist)[0]
    if s.resuming:
        _resume(s, spec, st, schedule, epochs)
    logger.info("%s; precision: %s", banner or "training", s.precision.reason)
    save = _Checkpoints(s, spec, st, kind, config)
    if validate_untrained and not st.history:
        t0 = time.perf_counter()
        v = spec.validate(st.scored, -1)
        save.epoch({"epoch": 0, "train_loss": math.nan, **v, "lr": _epoch_lr(st, spec, schedule, 0),
                    "train_seconds": 0.0, "images_per_second": math.nan, "seconds": time.perf_counter() - t0})
        logger.info("epoch 0 (untrained)  %s", _fmt(v))
        if on_epoch is not None:
            on_epoch(st.history[-1])
    wrap = _Wrapper(s, compile)
    for epoch in range(st.start, epochs):
        if st.budget is not None and st.budget.over:
            break
        t0 = time.perf_counter()
        lr = _epoch_lr(st, spec, schedule, epoch)
        spec.begin_epoch(model, epoch)
        sums = _train_epoch(s, spec, st, wrap(model), spec.epoch_batches(epoch), epoch)
        train_seconds = time.perf_counter() - t0
        v = spec.validate(st.scored, epoch)
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
    if st.budget is not None:
        logger.info("trained %.1fs of the %.1fs time budget in %d epoch(s)", st.budget.spent, st.budget.seconds,
                    st.history[-1]["epoch"] if st.history else 0)
    return Fitted(st.history, st.best, st.budget.spent if st.budget is not None else None)


def _fmt(values: dict[str, float]) -> str:
    return "  ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in values.items())


def _epoch_lr(st: _State, spec: TrainSpec, schedule: Schedule, epoch: int) -> float:
    """The rate ``metrics.csv`` reports for ``epoch``: the schedule's at its start, before any warm-up."""
    return st.scheduler.base_lrs[spec.lr_group] * schedule.epoch_factor(epoch)


def _train_epoch(s: Session, spec: TrainSpec, st: _State, net: nn.Module, batches: Sequence,
                 epoch: int) -> dict[str, float]:
    """One pass over ``batches``; returns the sums of every rank: loss, steps, images and ``spec``'s counts.

    The loss is checked for NaN/inf without a device sync per step: the first
    bad step is recorded on the device and looked at every 25 steps. Without
    a progress bar (output to a file) a line is logged every two minutes.
    With a time budget the epoch ends at the first step that spends it.
    """
    dev = s.device
    loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
    counts: dict[str, torch.Tensor] = {}
    first_bad = torch.full((), -1, device=dev, dtype=torch.int64)
    images, started = 0, time.perf_counter()
    last_note = started
    bar = tqdm(batches, desc=f"epoch {epoch + 1} train", unit="batch", leave=False,
               disable=None if s.progress and s.is_main else True, dynamic_ncols=True)
    budget, steps = st.budget, 0
    if budget is not None:
        budget.begin()
    for step, batch in enumerate(bar):
        x, target = spec.inputs(batch)
        with s.autocast():
            out = net(_channels_last(x, s.precision.channels_last))
        loss, extra = spec.loss(out.float(), target)
        st.optimizer.zero_grad(set_to_none=True)
        st.scaler.scale(loss).backward()
        st.scaler.step(st.optimizer)
        st.scaler.update()
        if budget is not None:
            budget.tick()  # before the scheduler: the next step's rate follows the time spent so far
        st.scheduler.step()
        if st.ema is not None:
            st.ema.update()

        loss_d = loss.detach()
        first_bad = torch.where(~torch.isfinite(loss_d) & (first_bad < 0), step, first_bad)
        loss_sum += loss_d.double()
        for k, v in extra.items():
            counts[k] = counts.get(k, 0) + v.detach()
        images += len(x)
        steps = step + 1
        if steps % 25 == 0 or steps == len(batches):
            _check_finite(first_bad, epoch)
            if not bar.disable:
                bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}")
            elif s.is_main and time.perf_counter() - last_note > 120:
                last_note = time.perf_counter()
                logger.info("epoch %d: step %d/%d, loss %.4f, %.1f img/s", epoch + 1, steps, len(batches),
                            loss_sum.item() / steps, images / (last_note - started))
        if budget is not None and budget.over:
            logger.info("epoch %d: the time budget is spent after step %d/%d", epoch + 1, steps, len(batches))
            break
    bar.close()
    if budget is not None:
        budget.end()
    _check_finite(first_bad, epoch)
    names = list(counts)
    values = all_reduce_sum([loss_sum.item(), float(steps), float(images),
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
                atomic_torch_save({"kind": self.kind, "model": st.scored.state_dict(), "epoch": row["epoch"],
                                   key: row[key], "config": self.config}, self.s.run.best_checkpoint)
            extra = {"ema": st.ema.state_dict()} if st.ema is not None else {}
            if st.budget is not None:
                extra["budget_spent"] = st.budget.spent
            if st.modules:
                extra["modules"] = {k: m.state_dict() for k, m in st.modules.items()}
            atomic_torch_save({
                "kind": self.kind, "model": st.model.state_dict(), "optimizer": st.optimizer.state_dict(),
                "scheduler": st.scheduler.state_dict(), "scaler": st.scaler.state_dict(), "epoch": row["epoch"],
                "rng": rngs, "history": st.history, "best": st.best, "config": self.config, **extra,
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
    if st.ema is not None:
        _restore(path, "ema", lambda: st.ema.load_state_dict(ckpt["ema"]))
    if st.budget is not None:
        _restore(path, "budget_spent", lambda: st.budget.restore(float(ckpt["budget_spent"])))
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
