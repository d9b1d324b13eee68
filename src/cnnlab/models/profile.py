"""Layer table, parameter count and forward MACs of a model."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.models.basecnn import BaseCNN


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def count_macs(model: nn.Module, input_size: tuple[int, ...] = (1, 3, 32, 32)) -> int:
    """Multiply-accumulates of one forward pass for one input of ``input_size``
    (convolutions, linear layers and matmuls; what FLOP counters report as FLOPs / 2)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2 // input_size[0]


def layer_table(model: BaseCNN, image_size: int = 32) -> list[dict]:
    """One row per stage (stem, block 1..8, head): its name, output shape and parameters."""
    rows = []
    stages = [("stem", "stem", model.stem)] + [
        (f"block{i + 1}", model.block_names[i], b) for i, b in enumerate(model.blocks)
    ]
    x = torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for name, design, module in stages:
            x = module(x)
            pooled = any(isinstance(m, nn.MaxPool2d) for m in module.children())
            rows.append({"layer": name, "design": design + (" + maxpool" if pooled and name != "stem" else ""),
                         "output": list(x.shape[1:]), "params": count_parameters(module)})
    model.train(was_training)
    head = count_parameters(model.fc)
    rows.append({"layer": "head", "design": "avgpool + dropout + linear", "output": [model.fc.out_features],
                 "params": head})
    return rows
