"""Training throughput (images/s, end to end) on this machine, side by side.

Columns, each training the same BaseCNN with the same optimiser and the same
augmentation settings:

  notebook fp32   the notebook's way: per-image torchvision transforms on PIL
                  images through a DataLoader, fp32;
  cnnlab fp32     uint8 tensor batches, augmentation drawn per sample and
                  applied in batches on the training device, fp32;
  fp32+CL         the same, channels-last;
  bf16+CL         the same, bf16 autocast + channels-last;
  auto            what ``select_precision(device, "auto", None)`` picks. When
                  that is one of the columns before it, it is that column's
                  measurement; otherwise it is measured on its own.

Rows are block designs x widths. Each configuration is timed over --steps
steps after --warmup steps, --repeats times; the repeats are interleaved (every
configuration once, then every configuration again) so that load from other
processes spreads over all of them, and the table shows the median. The
spread line says how noisy the machine was.

A column the device would only emulate (the precision policy warns about it:
bf16 on a CPU without AVX512-BF16 or AMX, or with oneDNN capped below them by
ONEDNN_MAX_CPU_ISA; bf16 on a GPU before compute capability 8.0) runs up to 10x
slower than fp32 there and would take most of the time: it is skipped, and a
note under the table says why (--emulated once measures it on the first
repeat only, marked *).

Time: with the defaults about 8 minutes on 2 idle cores (a repeat of the 16
configurations takes some 2.5 minutes, most of it at width 1). A repeat is
only started when the one before it says it ends within --max-seconds
(default 600), so a busy or slow machine does fewer repeats instead of taking
longer (--blocks A --steps 6 --warmup 2 with oneDNN capped to AVX2, on 2
cores shared with other jobs: one repeat, 325 s); a first repeat that outruns
it stops after the configuration that was running, and the table says what
was left out. A run ends within --max-seconds plus one configuration
(--steps + --warmup training steps).

    python benchmarks/train_throughput.py --blocks A,E --width 1,0.25 --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from cnnlab.data.augment import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig, train_transform
from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.blocks import format_blocks, parse_blocks
from cnnlab.runtime import (autocast, choose_precision, cpu_features, cpu_isa_cap, grad_scaler, probe_hardware,
                            resolve_device)

COLUMNS = {  # name -> (precision, channels_last); None: the notebook pipeline
    "notebook fp32": None,
    "cnnlab fp32": ("fp32", False),
    "fp32+CL": ("fp32", True),
    "bf16+CL": ("bf16", True),
}


class _PILDataset(Dataset):
    """What the notebook did: PIL images, one torchvision pipeline call per image."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images = [Image.fromarray(im.transpose(1, 2, 0)) for im in images]
        self.labels = labels
        self.transform = T.Compose([
            T.ColorJitter(brightness=0.25, contrast=0.25, saturation=0.25),
            T.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1)),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            T.Normalize(CIFAR10_MEAN, CIFAR10_STD),
        ])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def _data(n: int, data_dir: str | None, seed: int = 0):
    if data_dir:
        from cnnlab.data.cifar10 import load_cifar10

        d = load_cifar10(data_dir)
        return d.train_images[:n].numpy(), d.train_labels[:n].numpy()
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


def _model(blocks: str, width: float, channels_last: bool, device: torch.device):
    torch.manual_seed(0)
    model = BaseCNN(blocks, width).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def notebook(blocks, width, data: _PILDataset, batch_size, steps, warmup, workers, device,
             clock=time.perf_counter) -> float:
    model, opt = _model(blocks, width, False, device)
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers)
    it = iter(loader)
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = clock()
        x, y = next(it)
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        opt.zero_grad()
        loss.backward()
        opt.step()
    _sync(device)
    return steps * batch_size / (clock() - t0)


def cnnlab(blocks, width, images, labels, batch_size, steps, warmup, device, precision, channels_last,
           clock=time.perf_counter) -> float:
    """cnnlab's training step (batched augmentation on the device, autocast, gradient
    scaling for fp16) in a bare loop: no logging, no NaN checks, no progress bar."""
    model, opt = _model(blocks, width, channels_last, device)
    scaler = grad_scaler(device, precision)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.from_numpy(images).to(device), torch.from_numpy(labels).long().to(device)
    order = torch.randperm(len(y), generator=gen).to(device)
    for step in range(warmup + steps):
        if step == warmup:
            _sync(device)
            t0 = clock()
        idx = order[step * batch_size:(step + 1) * batch_size]
        xb = train_transform(x[idx], gen, AugmentConfig())
        if channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            loss = F.cross_entropy(model(xb).float(), y[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    _sync(device)
    return steps * batch_size / (clock() - t0)


def _list(values: list[str], parse, option: str) -> list:
    """``A,E`` or ``A E`` (or both): the items of a comma- and/or space-separated list."""
    items = [v.strip() for text in values for v in text.split(",") if v.strip()]
    try:
        return [parse(v) for v in items]
    except ValueError as e:
        raise SystemExit(f"{option}: {e}") from None


def machine_lines(device: torch.device) -> list[str]:
    """What the numbers were measured on, for the lines above the table."""
    name, features = cpu_features()
    cap = cpu_isa_cap()
    lines = [f"CPU: {name}; vector extensions: {', '.join(features) or 'none of AVX2/AVX512/AVX512-BF16/AMX'}"
             + (f"; oneDNN capped by {cap}" if cap else "")]
    if device.type == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(device)}")
    threads = torch.get_num_threads()
    lines.append(f"torch {torch.__version__}, {threads} thread{'s' if threads != 1 else ''}, device {device}")
    return lines


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", nargs="+", default=["A,E"], metavar="LIST",
                   help="block designs, one row set each: A,E or A E; a design may be eight names (default: A,E)")
    p.add_argument("--width", "--widths", dest="width", nargs="+", default=["1,0.25"], metavar="LIST",
                   help="width multipliers, one row each per block design: 1,0.25 or 1 0.25 (default: 1,0.25)")
    p.add_argument("--batch-size", type=int, default=64, help="images per training step (default: 64)")
    p.add_argument("--steps", type=int, default=4, help="timed steps per configuration and repeat (default: 4)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps before them (default: 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved repeats of every configuration; the table shows the median (default: 3)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader workers of the notebook pipeline (default: 0, as the notebook)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: torch's own choice, one per core)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall: elapsed seconds; cpu: this process's CPU seconds, which other processes' load "
                        "barely changes when --threads is 1 (with more threads it adds theirs up; "
                        "CPU only, not with --workers) (default: wall)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    p.add_argument("--data-dir", default=None, help="real CIFAR-10 images instead of random ones (default: random)")
    p.add_argument("--emulated", choices=("skip", "once"), default="skip",
                   help="columns this device only emulates (the precision policy warns about them): skip them, "
                        "or measure them on the first repeat only (default: skip)")
    p.add_argument("--max-seconds", type=float, default=600,
                   help="start no repeat that would end after this many seconds; 0: no limit (default: 600)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here (default: none)")
    return p


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _row(b: str, w: float, times: dict, columns: dict, auto_column: str) -> dict:
    med = {c: _median(times[b, w, c]) for c in columns}
    measured = [med[c] for c, config in columns.items() if config is not None and med[c] is not None]
    best = max(measured, default=None)
    return {"blocks": b, "width": w, **{f"{c} img/s": med[c] for c in columns}, "auto": auto_column,
            "auto img/s": med[auto_column], "auto/notebook": _ratio(med[auto_column], med["notebook fp32"]),
            "auto/best": _ratio(med[auto_column], best), "repeats": {c: times[b, w, c] for c in columns}}


def _columns(choice) -> tuple[dict, str]:
    """The columns to measure, and which of them is ``auto`` (a column of its own, e.g. fp16 on an older GPU)."""
    columns = dict(COLUMNS)
    auto_column = next((k for k, v in columns.items() if v == (choice.precision, choice.channels_last)), None)
    if auto_column is None:
        auto_column = f"{choice.precision}{'+CL' if choice.channels_last else ''}"
        columns[auto_column] = (choice.precision, choice.channels_last)
    return columns, auto_column


def emulated_columns(columns: dict, hw) -> dict[str, str]:
    """The columns ``hw`` only emulates, each with the precision policy's warning about it."""
    warnings = {c: choose_precision(config[0], config[1], hw).warning for c, config in columns.items() if config}
    return {c: w for c, w in warnings.items() if w}


def measure(configs: list[tuple], repeats: int, run, max_seconds: float, once: frozenset = frozenset(),
            now=None) -> tuple[dict, int, str]:
    """``run(config)`` for every config, ``repeats`` times interleaved (those in ``once``: the first time only).

    Returns the measurements per config, the repeats done and why it stopped early ("" if it did not):
    a repeat starts only if the one before it would still end within ``max_seconds`` (0: no limit),
    and the first stops before a configuration once the time is up.
    """
    now = now or time.perf_counter  # the wall clock, whatever --clock measures with
    times: dict[tuple, list[float]] = {c: [] for c in configs}
    start, last = now(), 0.0
    for r in range(repeats):
        t0 = now()
        if r and max_seconds and t0 - start + last > max_seconds:
            return times, r, f"{r} of {repeats} repeats: another would pass --max-seconds {max_seconds:g}"
        for config in configs:
            if r and config in once:
                continue
            if max_seconds and now() - start > max_seconds:
                return times, r, f"stopped in repeat {r + 1} of {repeats} at --max-seconds {max_seconds:g}"
            times[config].append(run(config))
        last = now() - t0
    return times, repeats, ""


def _print_table(results: list[dict], notes: dict[str, str], emulated: str) -> None:
    head = ["blocks", "width", *COLUMNS, "auto", "auto/notebook", "auto/best"]
    print(("{:<8}{:>6}" + "{:>15}" * (len(head) - 2)).format(*head))

    def cell(value, column=None, fmt="{:.1f}"):
        if value is None:
            return "skipped" if column in notes and emulated == "skip" else "-"
        return fmt.format(value) + ("*" if column in notes else "")

    for r in results:
        cells = [cell(r[c + " img/s"], c) for c in COLUMNS] + [
            cell(r["auto img/s"]), cell(r["auto/notebook"], fmt="{:.2f}x"), cell(r["auto/best"], fmt="{:.2f}x")]
        print(("{:<8}{:>6}" + "{:>15}" * len(cells)).format(r["blocks"], f"{r['width']:g}", *cells))
    for c, why in notes.items():
        if emulated == "skip":
            print(f"{c}: skipped: {why} (--emulated once measures it on one repeat)")
        else:
            print(f"* {c}: one repeat only: {why}")


def main(argv=None) -> dict:
    a = _parser().parse_args(argv)
    blocks = _list(a.blocks, lambda v: format_blocks(parse_blocks(v)), "--blocks")
    widths = _list(a.width, float, "--width")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    if a.clock == "cpu" and (a.workers or device.type != "cpu"):
        raise SystemExit("--clock cpu: counts only this process's CPU time; use it with --workers 0 on the CPU")
    clock = time.process_time if a.clock == "cpu" else time.perf_counter
    hw = probe_hardware(device)
    choice = choose_precision("auto", None, hw)
    columns, auto_column = _columns(choice)
    notes = emulated_columns(columns, hw)

    images, labels = _data(a.batch_size * (a.steps + a.warmup), a.data_dir)
    pil = _PILDataset(images, labels)
    for line in machine_lines(device):
        print(line)
    print(f"auto = {auto_column} ({choice.reason}); batch {a.batch_size}, {a.steps} timed steps after {a.warmup}, "
          f"{a.clock} clock, median of {a.repeats} interleaved repeats", flush=True)

    def run(config) -> float:
        b, w, c = config
        if columns[c] is None:
            return notebook(b, w, pil, a.batch_size, a.steps, a.warmup, a.workers, device, clock)
        return cnnlab(b, w, images, labels, a.batch_size, a.steps, a.warmup, device, *columns[c], clock)

    t0 = time.perf_counter()
    rows = [(b, w) for b in blocks for w in widths]
    configs = [(b, w, c) for b, w in rows for c in columns if not (c in notes and a.emulated == "skip")]
    once = frozenset(k for k in configs if k[2] in notes)
    measured, done, stopped = measure(configs, a.repeats, run, a.max_seconds, once)
    times = {(b, w, c): measured.get((b, w, c), []) for b, w in rows for c in columns}
    results = [_row(b, w, times, columns, auto_column) for b, w in rows]
    _print_table(results, notes, a.emulated)
    spreads = [(max(v) - min(v)) / statistics.median(v) for v in times.values() if len(v) > 1]
    if spreads:
        print(f"spread of the repeats, (max - min) / median: median {statistics.median(spreads):.0%}, "
              f"largest {max(spreads):.0%}")
    if stopped:
        print(f"time limit: {stopped}; '-': not measured")
    seconds = time.perf_counter() - t0
    print(f"measured in {seconds:.0f} s")
    out = {"machine": machine_lines(device), "auto": {"column": auto_column, "reason": choice.reason},
           "clock": a.clock, "batch_size": a.batch_size, "steps": a.steps, "warmup": a.warmup, "repeats": a.repeats,
           "repeats_done": done, "stopped": stopped, "emulated": {"mode": a.emulated, "columns": notes},
           "rows": results, "spread_median": statistics.median(spreads) if spreads else None,
           "spread_max": max(spreads, default=None), "seconds": seconds}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
