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
from cnnlab.runtime import autocast, cpu_features, grad_scaler, resolve_device, select_precision

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
    lines = [f"CPU: {name}; vector extensions: {', '.join(features) or 'none of AVX2/AVX512/AVX512-BF16/AMX'}"]
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
    p.add_argument("--json", default=None, metavar="FILE", help="also write the results here (default: none)")
    return p


def _row(b: str, w: float, times: dict, columns: dict, auto_column: str) -> dict:
    med = {c: statistics.median(times[b, w, c]) for c in columns}
    best = max(med[c] for c in ("cnnlab fp32", "fp32+CL", "bf16+CL"))
    return {"blocks": b, "width": w, **{f"{c} img/s": med[c] for c in columns}, "auto": auto_column,
            "auto img/s": med[auto_column], "auto/notebook": med[auto_column] / med["notebook fp32"],
            "auto/best": med[auto_column] / best, "repeats": {c: times[b, w, c] for c in columns}}


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
    choice = select_precision(device, "auto", None)
    columns = dict(COLUMNS)
    auto_column = next((k for k, v in columns.items() if v == (choice.precision, choice.channels_last)), None)
    if auto_column is None:  # e.g. fp16 on an older GPU: a column of its own
        auto_column = f"{choice.precision}{'+CL' if choice.channels_last else ''}"
        columns[auto_column] = (choice.precision, choice.channels_last)

    images, labels = _data(a.batch_size * (a.steps + a.warmup), a.data_dir)
    pil = _PILDataset(images, labels)
    for line in machine_lines(device):
        print(line)
    print(f"auto = {auto_column} ({choice.reason}); batch {a.batch_size}, {a.steps} timed steps after {a.warmup}, "
          f"{a.clock} clock, median of {a.repeats} interleaved repeats", flush=True)

    rows = [(b, w) for b in blocks for w in widths]
    times: dict[tuple, list[float]] = {(b, w, c): [] for b, w in rows for c in columns}
    for _ in range(a.repeats):
        for b, w in rows:
            for c, config in columns.items():
                if config is None:
                    v = notebook(b, w, pil, a.batch_size, a.steps, a.warmup, a.workers, device, clock)
                else:
                    v = cnnlab(b, w, images, labels, a.batch_size, a.steps, a.warmup, device, *config, clock)
                times[b, w, c].append(v)

    head = ["blocks", "width", *COLUMNS, "auto", "auto/notebook", "auto/best"]
    print(("{:<8}{:>6}" + "{:>15}" * (len(head) - 2)).format(*head))
    results = [_row(b, w, times, columns, auto_column) for b, w in rows]
    for r in results:
        cells = [f"{r[c + ' img/s']:.1f}" for c in COLUMNS] + [
            f"{r['auto img/s']:.1f}", f"{r['auto/notebook']:.2f}x", f"{r['auto/best']:.2f}x"]
        print(("{:<8}{:>6}" + "{:>15}" * len(cells)).format(r["blocks"], f"{r['width']:g}", *cells))
    spreads = [(max(v) - min(v)) / statistics.median(v) for v in times.values()]
    print(f"spread of the repeats, (max - min) / median: median {statistics.median(spreads):.0%}, "
          f"largest {max(spreads):.0%}")
    out = {"machine": machine_lines(device), "auto": {"column": auto_column, "reason": choice.reason},
           "clock": a.clock, "batch_size": a.batch_size, "steps": a.steps, "warmup": a.warmup, "repeats": a.repeats,
           "rows": results, "spread_median": statistics.median(spreads), "spread_max": max(spreads)}
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
