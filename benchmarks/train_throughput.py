"""Training throughput (images/s, end to end) on this machine, side by side.

(a) reference: the notebook's way, per-image torchvision transforms on PIL
    images through a DataLoader, fp32;
(b) cnnlab: uint8 tensor batches, augmentation drawn per sample and applied in
    batches on the training device, fp32;
(c) cnnlab with bf16 autocast + channels_last.

All three train the same BaseCNN with the same optimiser and augmentation
settings; each is timed over --steps steps after --warmup steps.

    python benchmarks/train_throughput.py --blocks A E --json throughput.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from cnnlab.data.augment import CIFAR10_MEAN, CIFAR10_STD, AugmentConfig, train_transform
from cnnlab.engine import batch_indices, train_one_epoch
from cnnlab.models.basecnn import BaseCNN


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


def _model(blocks: str, width: float, channels_last: bool) -> tuple[BaseCNN, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = BaseCNN(blocks, width)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)


def reference(blocks, width, images, labels, batch_size, steps, warmup, workers) -> float:
    model, opt = _model(blocks, width, False)
    model.train()
    loader = DataLoader(_PILDataset(images, labels), batch_size=batch_size, shuffle=True, drop_last=True,
                        num_workers=workers)
    it = iter(loader)
    t0, seen = None, 0
    for step in range(warmup + steps):
        if step == warmup:
            t0 = time.perf_counter()
        x, y = next(it)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= warmup:
            seen += len(y)
    return seen / (time.perf_counter() - t0)


def ours(blocks, width, images, labels, batch_size, steps, warmup, precision, channels_last) -> float:
    model, opt = _model(blocks, width, channels_last)
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    gen = torch.Generator().manual_seed(0)
    transform = lambda b: train_transform(b, gen, AugmentConfig())  # noqa: E731
    batches = batch_indices(torch.arange(len(y)), batch_size, gen, drop_last=True)
    kw = dict(device=torch.device("cpu"), precision=precision, channels_last=channels_last, progress=False)
    train_one_epoch(model, x, y, batches[:warmup], opt, transform, **kw)
    t0 = time.perf_counter()
    s = train_one_epoch(model, x, y, batches[warmup:warmup + steps], opt, transform, **kw)
    return s["count"] / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", nargs="+", default=["A", "E"])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers of the reference (notebook: 0)")
    p.add_argument("--data-dir", help="real CIFAR-10 images instead of random ones")
    p.add_argument("--json", help="write the results here")
    a = p.parse_args(argv)

    n = a.batch_size * (a.steps + a.warmup)
    images, labels = _data(n, a.data_dir)
    results = {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {a.batch_size}, width {a.width}")
    print(f"{'blocks':<8}{'reference fp32':>16}{'cnnlab fp32':>14}{'cnnlab bf16+CL':>16}{'best/ref':>10}")
    for b in a.blocks:
        r = {
            "reference_img_s": reference(b, a.width, images, labels, a.batch_size, a.steps, a.warmup, a.workers),
            "cnnlab_fp32_img_s": ours(b, a.width, images, labels, a.batch_size, a.steps, a.warmup, "fp32", False),
            "cnnlab_bf16_img_s": ours(b, a.width, images, labels, a.batch_size, a.steps, a.warmup, "bf16", True),
        }
        r["speedup"] = max(r["cnnlab_fp32_img_s"], r["cnnlab_bf16_img_s"]) / r["reference_img_s"]
        results[b] = r
        print(f"{b:<8}{r['reference_img_s']:>16.1f}{r['cnnlab_fp32_img_s']:>14.1f}{r['cnnlab_bf16_img_s']:>16.1f}"
              f"{r['speedup']:>9.2f}x", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
