"""bf16 and fp16 (with gradient scaling) training steps on a GPU, for every block and the Siamese network."""

import math

import pytest
import torch
import torch.nn.functional as F

from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.blocks import block_names
from cnnlab.run import RunDir
from cnnlab.runtime import autocast, choose_precision, grad_scaler, probe_hardware

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _step_until_applied(model, opt, scaler, x, y, precision, device, tries=8):
    """Training steps until one changes the weights (fp16 skips a step whose scaled gradients
    overflow, and halves the scale); returns the losses of the steps taken."""
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(tries):
        with autocast(device, precision):
            logits = model(x)
        assert logits.dtype == DTYPES[precision], "autocast did not run the network in half precision"
        loss = F.cross_entropy(logits.float(), y)
        losses.append(loss.item())
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if any(not torch.equal(b, p) for b, p in zip(before, model.parameters())):
            break
    return before, losses


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("block", block_names())
def test_a_half_precision_step_trains_every_block(block, precision):
    device = torch.device("cuda")
    choice = choose_precision(precision, None, probe_hardware(device))
    torch.manual_seed(0)
    model = BaseCNN(block, width=0.25).to(device)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
    scaler = grad_scaler(device, precision)
    assert scaler.is_enabled() == (precision == "fp16")
    g = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(16, 3, 32, 32, generator=g, device=device)
    if choice.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), generator=g, device=device)

    before, losses = _step_until_applied(model, opt, scaler, x, y, precision, device)

    assert all(math.isfinite(v) for v in losses), losses
    # Every tensor the last step had a gradient for moved (some, e.g. a bias before a BatchNorm, get none).
    stuck = [n for (n, p), b in zip(model.named_parameters(), before)
             if p.grad is not None and p.grad.abs().sum() > 0 and torch.equal(b, p)]
    assert not stuck, f"unchanged after {len(losses)} steps: {stuck}"
    assert not torch.equal(before[0], model.stem[0].weight) and not torch.equal(before[-2], model.fc.weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    scale = scaler.get_scale()
    assert math.isfinite(scale) and scale > 0, scale


def test_a_bf16_siamese_run_trains_on_cuda(tmp_path):
    from cnnlab.faces.train import train
    from tests.faces.conftest import make_people, tiny_config

    faces = make_people(tmp_path / "faces")
    summary = train(tiny_config(faces, device="cuda", precision="bf16"), tmp_path / "run", progress=False)

    assert summary["status"] == "finished"
    assert summary["device"].startswith("cuda") and summary["precision"] == "bf16"
    rows = RunDir(tmp_path / "run").read_metrics()
    assert [r["epoch"] for r in rows] == [0, 1]  # the untrained model's validation, then one epoch
    assert math.isfinite(rows[1]["train_loss"]) and math.isfinite(rows[1]["val_loss"])
    assert rows[1]["val_loss"] != rows[0]["val_loss"], "the weights did not change"
