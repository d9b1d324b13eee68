"""``cnnlab cifar summary``: the layer table and parameter count of a variant."""

from __future__ import annotations

from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.profile import count_macs, count_parameters, layer_table


def model_summary(blocks: str = "A", width: float = 1.0, num_classes: int = 10, pooling: str = "intended") -> dict:
    model = BaseCNN(blocks, width, num_classes=num_classes, pooling=pooling)
    return {
        "blocks": model.variant,
        "block_list": list(model.block_names),
        "width": width,
        "pooling": pooling,
        "trainable_parameters": count_parameters(model),
        "total_parameters": count_parameters(model, trainable_only=False),
        "macs_per_image": count_macs(model),
        "layers": layer_table(model),
    }


def format_summary(s: dict) -> str:
    pooling = "" if s.get("pooling", "intended") == "intended" else f", {s['pooling']} pooling"
    lines = [f"BaseCNN {s['blocks']} (width {s['width']}{pooling})", ""]
    w = max(len(r["design"]) for r in s["layers"])
    lines.append(f"{'layer':<8} {'design':<{w}} {'output':>14} {'params':>12}")
    lines.append("-" * (8 + w + 14 + 12 + 3))
    for r in s["layers"]:
        out = "x".join(str(v) for v in r["output"])
        lines.append(f"{r['layer']:<8} {r['design']:<{w}} {out:>14} {r['params']:>12,}")
    lines.append("-" * (8 + w + 14 + 12 + 3))
    lines.append(f"trainable parameters: {s['trainable_parameters']:,}")
    lines.append(f"forward MACs per 32x32 image: {s['macs_per_image']:,}")
    return "\n".join(lines)
