"""Device, precision, seeding and (optional) torch.distributed, in one place."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import torch
import torch.distributed as dist

from cnnlab.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_local_rank()) if is_distributed() else torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name}: no CUDA GPU is available on this machine; use --device cpu")
        index = int(name.split(":")[1]) if ":" in name else (dist_local_rank() if is_distributed() else 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("--device mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"--device {name!r}: expected auto, cpu, cuda, cuda:N or mps")


def device_name(device: torch.device) -> str:
    """What a summary records: the device type and the processor or GPU model."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"


def enable_fast_kernels(device: torch.device) -> None:
    """On a GPU: let cuDNN pick the fastest convolution for the (fixed) input size,
    and fp32 matmuls use TF32. Neither applies on the CPU, where runs stay bit-reproducible."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


@dataclass(frozen=True)
class Hardware:
    """What a device can run fast: the facts the precision policy decides from."""

    device_type: str  # "cpu", "cuda" or "mps"
    name: str = ""
    cuda_capability: tuple[int, int] | None = None
    cpu_bf16: bool = False  # native bf16 instructions (AVX512-BF16 or AMX)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision and memory format a run uses, and why."""

    precision: str  # "fp32", "bf16" or "fp16"
    channels_last: bool
    reason: str
    warning: str | None = None

    @property
    def use_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 and fp32 need none."""
        return self.precision == "fp16"


def probe_hardware(device: torch.device) -> Hardware:
    if device.type == "cuda":
        return Hardware("cuda", torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
    return Hardware(device.type, platform.processor() or platform.machine())


def choose_precision(requested: str, channels_last: bool | None, hw: Hardware) -> PrecisionChoice:
    """The precision policy: a pure function of the request and the hardware."""
    precision = requested
    if requested == "auto":
        precision = "bf16" if hw.device_type == "cuda" else "fp32"
    cl = channels_last if channels_last is not None else precision == "bf16"
    return PrecisionChoice(precision, cl, "requested" if requested != "auto" else "auto")


def select_precision(device: torch.device, requested: str, channels_last: bool | None) -> PrecisionChoice:
    """:func:`choose_precision` for ``device``; a warning, if any, is logged once."""
    return choose_precision(requested, channels_last, probe_hardware(device))


def resolve_precision(precision: str, device: torch.device) -> str:
    return select_precision(device, precision, None).precision


def autocast(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A gradient scaler, enabled only for fp16 (a no-op pass-through otherwise)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)  # also seeds every CUDA device


def rng_state(*generators: torch.Generator) -> dict:
    """Everything random a resumed run must continue from."""
    state = {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different GPU count on resume
            torch.cuda.set_rng_state_all(state["cuda"])


# --- distributed (torchrun) ---------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def dist_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when started by torchrun; a no-op for one process."""
    if not is_distributed():
        return DistInfo()
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return DistInfo(dist.get_rank(), dist.get_world_size(), dist_local_rank())


def all_reduce_sum(values: list[float], device: torch.device, info: DistInfo) -> list[float]:
    if not info.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup_distributed(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
