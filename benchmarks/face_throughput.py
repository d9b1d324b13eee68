"""Face training throughput (images/s, end to end) on this machine, side by side.

Each row trains the same Siamese network (the backbone of --backbone at
--image-size with a 512-d head, CosFace over --people synthetic people, Adam,
the backbone at a tenth of the head's rate) on synthetic uint8 faces:

  plain fp32   the usual way: each image a PIL image, zoomed, shifted and
               flipped by torchvision transforms in a DataLoader (--workers
               processes), normalised, batch 64, fp32;
  cnnlab       what ``cnnlab faces train`` does: the uint8 face set on the
               training device, batches indexed there, zoom, shift and flip
               drawn per image and applied to the whole batch in one
               grid_sample, in the precision ``--precision auto`` picks (bf16
               + channels-last where that is fast), at each of --batch-sizes;
  + compile    the same under torch.compile, with --compile.

Columns: images/s over --steps steps after --warmup steps, and the first
step's seconds (what makes a first epoch slower than the next: cuDNN's
autotuning, lazy initialisation, compilation). A configuration is only
started within --max-seconds (default 600) of the start; those left out are
named under the table. On one GPU the target is 10,000 images/s or more for
Lite0 at 112 px.

Time: with the defaults about 4 minutes on 2 idle cores (Lite0 at 112 px runs
some 60 images/s there in bf16; the plain row's DataLoader adds its start),
well under a minute on a GPU; --toy (a tiny backbone, 32 px) a few seconds.

    python benchmarks/face_throughput.py --batch-sizes 64,256,1024 --compile --json faces-throughput.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from cnnlab.config import FaceTrainConfig
from cnnlab.data.augment import FaceAugment, face_train_transform
from cnnlab.faces.train import build_loss, build_model, build_optimizer
from cnnlab.report import markdown_table
from cnnlab.runtime import autocast, cpu_features, device_name, resolve_device, select_precision

COLUMNS = ("path", "batch", "precision", "images/s", "first step s", "device")


def _faces(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """``n`` uint8 (3, size, size) stand-ins for faces: smooth random images, as compressible as photos."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, 256, (n, 3, size // 8, size // 8), generator=g, dtype=torch.uint8)
    return torch.nn.functional.interpolate(small.float(), size=(size, size), mode="bilinear").to(torch.uint8)


class _PILFaces(Dataset):
    """The same faces as PIL images, transformed one by one as a plain PyTorch loop would."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean, std):
        aug = FaceAugment()
        self.images = [Image.fromarray(x.permute(1, 2, 0).numpy()) for x in images]
        self.labels = labels
        self.t = T.Compose([T.RandomAffine(0, translate=(aug.shift, aug.shift), scale=aug.zoom),
                            T.RandomHorizontalFlip(aug.flip_p), T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.t(self.images[i]), self.labels[i]


def _setup(args, device: torch.device):
    cfg = FaceTrainConfig(backbone=args.backbone, weights="none", image_size=args.image_size, loss="cosface",
                          device=str(device))
    model = build_model(cfg).to(device)
    loss_fn = build_loss(cfg, num_classes=args.people).to(device)
    return cfg, model, loss_fn, build_optimizer(model, cfg, loss_fn)


def _step(model, loss_fn, opt, x, y, device, precision) -> None:
    with autocast(device, precision):
        emb = model(x)
    loss = loss_fn(emb.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(batches, run_step, device, warmup: int, steps: int, batch: int) -> tuple[float, float]:
    """(images/s over ``steps`` steps after ``warmup``, seconds of the first step)."""
    it = iter(batches)
    t0 = time.perf_counter()
    run_step(*next(it))
    _sync(device)
    first = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        run_step(*next(it))
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        run_step(*next(it))
    _sync(device)
    return steps * batch / (time.perf_counter() - t0), first


def plain_row(args, device, images, labels) -> dict:
    """The per-image torchvision pipeline, batch 64, fp32."""
    cfg, model, loss_fn, opt = _setup(args, device)
    model.train()
    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    loader = DataLoader(_PILFaces(images, labels, mean, std), batch_size=64, shuffle=True, drop_last=True,
                        num_workers=args.workers, persistent_workers=args.workers > 0)

    def batches():
        while True:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    ips, first = _timed(batches(), lambda x, y: _step(model, loss_fn, opt, x, y, device, "fp32"), device,
                        args.warmup, args.steps, 64)
    return {"path": f"plain fp32 ({args.workers} loader workers)", "batch": 64, "precision": "fp32",
            "images/s": ips, "first step s": first}


def cnnlab_row(args, device, images, labels, batch: int, compiled: bool) -> dict:
    """cnnlab's pipeline: the face set on the device, batched augmentation, the precision auto picks."""
    cfg, model, loss_fn, opt = _setup(args, device)
    model.train()
    choice = select_precision(device, "auto", None)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compiled else model
    on_device, y_all = images.to(device), labels.to(device)
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            idx = torch.randint(len(on_device), (batch,), generator=g).to(device)
            x = model.normalize_input(face_train_transform(on_device[idx], g, FaceAugment()))
            if choice.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y_all[idx]

    ips, first = _timed(batches(), lambda x, y: _step(net, loss_fn, opt, x, y, device, choice.precision), device,
                        args.warmup, args.steps, batch)
    cl = " + channels-last" if choice.channels_last else ""
    return {"path": "cnnlab + compile" if compiled else "cnnlab", "batch": batch,
            "precision": choice.precision + cl, "images/s": ips, "first step s": first}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter,
                                epilog=__doc__[__doc__.index("Time:"):].split("\n\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0", help="face backbone (default: efficientnet_lite0)")
    p.add_argument("--image-size", type=int, default=112, help="face side in pixels (default: 112)")
    p.add_argument("--batch-sizes", default="64,256", help="cnnlab's batch sizes, comma-separated (default: 64,256)")
    p.add_argument("--people", type=int, default=1000, help="synthetic people, CosFace's classes (default: 1000)")
    p.add_argument("--images", type=int, default=2048, help="synthetic face images (default: 2048)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration (default: 10)")
    p.add_argument("--warmup", type=int, default=3, help="steps before timing, the first included (default: 3)")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes of the plain row (default: 2)")
    p.add_argument("--compile", action="store_true", help="also time cnnlab's path under torch.compile")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default: auto)")
    p.add_argument("--max-seconds", type=float, default=600, help="start no configuration after this many seconds "
                                                                  "(default: 600; 0: no limit)")
    p.add_argument("--toy", action="store_true", help="a tiny backbone at 32 px, 2 timed steps: seconds, for tests")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    if args.toy:
        args.backbone, args.image_size, args.steps, args.warmup, args.people, args.images, args.workers = \
            "tiny", 32, 2, 1, 20, 256, 0
    device = resolve_device(args.device)
    torch.manual_seed(0)
    images = _faces(args.images, args.image_size)
    labels = torch.arange(args.images) % args.people
    name, features = cpu_features()
    where = device_name(device) if device.type == "cuda" else f"cpu ({name}), {torch.get_num_threads()} threads"
    print(f"{where}; torch {torch.__version__}; {args.backbone} at {args.image_size} px")

    plan = [("plain", 64, False)] + [("cnnlab", int(b), False) for b in args.batch_sizes.split(",")]
    plan += [("cnnlab", int(b), True) for b in args.batch_sizes.split(",")] if args.compile else []
    rows, left_out, start = [], [], time.perf_counter()
    for kind, batch, compiled in plan:
        if rows and args.max_seconds and time.perf_counter() - start > args.max_seconds:
            left_out.append(f"{kind} batch {batch}" + (" compiled" if compiled else ""))
            continue
        row = plain_row(args, device, images, labels) if kind == "plain" else \
            cnnlab_row(args, device, images, labels, batch, compiled)
        rows.append({**row, "device": where})
        print(f"  {row['path']}, batch {batch}: {row['images/s']:.0f} img/s (first step {row['first step s']:.2f} s)",
              flush=True)
    print(markdown_table(COLUMNS, [[r[c] if not isinstance(r[c], float) else round(r[c], 2) for c in COLUMNS]
                                   for r in rows]))
    if left_out:
        print(f"not started within --max-seconds {args.max_seconds:g}: " + "; ".join(left_out))
    result = {"device": where, "cpu_features": list(features), "rows": rows, "left_out": left_out}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
