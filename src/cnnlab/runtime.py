"""Device, precision, seeding and (optional) torch.distributed, in one place."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from cnnlab.config import PRECISIONS
from cnnlab.errors import ConfigError, param

logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_local_rank()) if is_distributed() else torch.device("cuda")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{param('device')} {name}: no CUDA GPU is available on this machine; use "
                              f"{param('device')} cpu")
        index = int(name.split(":")[1]) if ":" in name else (dist_local_rank() if is_distributed() else 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{param('device')} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return torch.device("cuda", index)
    if name == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"{param('device')} mps: Apple MPS is not available on this machine")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise ConfigError(f"{param('device')} {name!r}: expected auto, cpu, cuda, cuda:N or mps")


def device_name(device: torch.device) -> str:
    """What a summary records: the device type and the processor or GPU model."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({cpu_features()[0]})"
    return device.type


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
    cpu_bf16: bool = False  # native bf16 instructions (AVX512-BF16 or AMX) that oneDNN may use
    cpu_features: tuple[str, ...] = ()  # vector extensions oneDNN may use, e.g. ("AVX2", "AVX512", "AVX512-BF16")
    cpu_limit: str = ""  # what capped them below the processor's, e.g. "ONEDNN_MAX_CPU_ISA=AVX2"


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


# x86 extensions as torch.cpu.get_capabilities() and /proc/cpuinfo name them, and as people say them.
_CPU_FEATURES = (
    ("AVX2", "avx2", "avx2"),
    ("AVX512", "avx512_f", "avx512f"),
    ("AVX512-BF16", "avx512_bf16", "avx512_bf16"),
    ("AVX512-FP16", "avx512_fp16", "avx512_fp16"),
    ("AMX-BF16", "amx_bf16", "amx_bf16"),
    ("AMX-FP16", "amx_fp16", "amx_fp16"),
)
_NATIVE_BF16 = ("AVX512-BF16", "AMX-BF16")
_CPUINFO = Path("/proc/cpuinfo")


def _cpuinfo() -> tuple[str, set[str]]:
    """The model name and flags of the first processor in /proc/cpuinfo ("", {} where there is none)."""
    name, flags = "", set()
    with contextlib.suppress(OSError):
        for line in _CPUINFO.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and not name:
                name = value.strip()
            elif key == "flags" and not flags:
                flags = set(value.split())
    return name, flags


def cpu_features() -> tuple[str, tuple[str, ...]]:
    """This machine's CPU model and the vector extensions of :data:`_CPU_FEATURES` it has.

    torch reports what its kernels will use (``torch.cpu.get_capabilities()``,
    present in torch 2.14); /proc/cpuinfo is the fallback where torch lacks it.
    """
    name, flags = _cpuinfo()
    caps = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    if caps:
        have = tuple(label for label, key, _ in _CPU_FEATURES if caps.get(key, False))
    else:
        have = tuple(label for label, _, flag in _CPU_FEATURES if flag in flags)
    name = name or caps.get("cpu_name") or platform.processor() or platform.machine()
    return name, have


# oneDNN runs the convolutions and matmuls, where bf16's speed comes from, and ONEDNN_MAX_CPU_ISA
# (DNNL_MAX_CPU_ISA in oneDNN 1.x) caps the instructions it may use: each cap -> how many of
# _CPU_FEATURES, in their order, it still allows. A value not here (ALL, DEFAULT, a newer or
# mistyped ISA) caps nothing. Measured on the AMD EPYC of _CPU_FP32_CHANNELS_LAST (block A,
# width 0.25, one thread, img/s of CPU time): bf16 + channels-last 308 uncapped, 14.5 with
# ONEDNN_MAX_CPU_ISA=AVX2 (fp32 + channels-last: 168), but 287 with ATEN_CPU_CAPABILITY=avx2,
# which caps only ATen's own vector kernels: the policy follows oneDNN's cap alone.
_ONEDNN_ISA_CAP = {
    "SSE41": 0, "AVX": 0, "AVX2": 1, "AVX2_VNNI": 1, "AVX2_VNNI_2": 1, "AVX512_CORE": 2, "AVX512_CORE_VNNI": 2,
    "AVX512_CORE_BF16": 3, "AVX512_CORE_FP16": 4, "AVX10_1_512": 4, "AVX10_2_512": 4,
    "AVX512_CORE_AMX": 5, "AVX10_1_512_AMX": 5,
}
_ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")


def cpu_isa_cap(environ=os.environ) -> str:
    """``NAME=VALUE`` of the variable that caps oneDNN's instructions in ``environ`` ("" where none does)."""
    for var in _ISA_ENV:
        if environ.get(var, "").strip():
            return f"{var}={environ[var].strip()}"
    return ""


def capped_features(features: tuple[str, ...], cap: str) -> tuple[str, ...]:
    """The extensions of ``features`` that oneDNN may still use under ``cap`` (as :func:`cpu_isa_cap` says it)."""
    allowed = _ONEDNN_ISA_CAP.get(cap.partition("=")[2].upper(), len(_CPU_FEATURES))
    keep = {label for label, _, _ in _CPU_FEATURES[:allowed]}
    return tuple(f for f in features if f in keep)


def probe_hardware(device: torch.device) -> Hardware:
    """The facts :func:`choose_precision` needs, read from ``device`` (and, for a CPU, oneDNN's cap)."""
    if device.type == "cuda":
        return Hardware("cuda", torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))
    if device.type == "cpu":
        name, features = cpu_features()
        cap = cpu_isa_cap()
        usable = capped_features(features, cap)
        return Hardware("cpu", name, cpu_bf16=any(f in usable for f in _NATIVE_BF16), cpu_features=usable,
                        cpu_limit=cap if usable != features else "")
    return Hardware(device.type, "Apple GPU" if device.type == "mps" else device.type)


# fp32 on a CPU trains faster channels-last: oneDNN's NHWC convolutions skip the reorders
# an NCHW tensor costs at every layer. Measured with benchmarks/train_throughput.py
# (--threads 1 --clock cpu --batch-size 32, README "Benchmarks") on a 2-core AMD EPYC
# (Zen 4, AVX512-BF16), torch 2.14.1: channels-last over NCHW in fp32, block A 1.07x
# (width 1) and 1.28x (width 0.25), block E 1.44x and 1.63x; never slower in three runs.
# With oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2): block E 1.41x and 1.93x, block A
# 1.22x at width 0.25. bf16 and fp16 always go channels-last on a CPU: NCHW was 1.1-1.5x
# slower for bf16 and 1.2-1.9x for fp16 on the same CPU.
_CPU_FP32_CHANNELS_LAST = True


def _auto_precision(hw: Hardware) -> tuple[str, str]:
    """What ``auto`` picks on ``hw``, and the fact that decides it."""
    if hw.device_type == "cuda":
        major, minor = hw.cuda_capability or (0, 0)
        gpu = f"{hw.name or 'CUDA GPU'} (compute capability {major}.{minor}"
        if (major, minor) >= (8, 0):
            return "bf16", gpu + ", native bf16)"
        if (major, minor) >= (7, 0):
            return "fp16", gpu + ", fp16 tensor cores, no native bf16)"
        return "fp32", gpu + ", no tensor cores)"
    if hw.device_type == "cpu":
        # AVX512-BF16 / AMX do bf16 dot products natively. On the AMD EPYC of
        # _CPU_FP32_CHANNELS_LAST, bf16 + channels-last over fp32 + channels-last: block A
        # 2.1x (width 1) and 1.6x (width 0.25), block E 2.0x and 1.5x (1.06x to 1.5x
        # across runs: the closest case).
        if hw.cpu_bf16:
            native = " and ".join(f for f in hw.cpu_features if f in _NATIVE_BF16) or "native bf16"
            return "bf16", f"CPU with {native}"
        return "fp32", "CPU without AVX512-BF16 or AMX" + (f" ({hw.cpu_limit})" if hw.cpu_limit else "")
    if hw.device_type == "mps":
        # fp16 autocast runs on MPS (torch >= 2.0) but needs gradient scaling, bf16 needs
        # macOS 14, and neither speed-up has been measured for these networks: fp32 is the
        # choice that is known to train correctly everywhere.
        return "fp32", "Apple MPS (half precision unmeasured there)"
    return "fp32", f"{hw.device_type} device"


def _slow_warning(precision: str, auto: str, hw: Hardware) -> str | None:
    """Why an explicitly requested ``precision`` runs slowly on ``hw`` (None if it does not)."""
    slow = None
    if hw.device_type == "cpu":
        if precision == "bf16" and not hw.cpu_bf16:
            # Measured by limiting oneDNN on an AMD EPYC (see _CPU_FP32_CHANNELS_LAST): bf16 was
            # 1.6-2.1x slower than fp32 with AVX512 and 7-11x slower with AVX2 only.
            times = "about 2x" if "AVX512" in hw.cpu_features else "up to 10x"
            without = "no AVX512-BF16 or AMX" + (f" under {hw.cpu_limit}" if hw.cpu_limit else "")
            slow = f"bf16 on this CPU ({without}) is emulated and typically {times} slower than fp32"
        elif precision == "fp16" and "AMX-FP16" not in hw.cpu_features:
            # On the same EPYC (no AVX512-FP16 or AMX-FP16) fp16 + channels-last trained 6-11x
            # slower than fp32 + channels-last (blocks E and A, width 0.25).
            slow = "fp16 on a CPU without AMX-FP16 is emulated and typically 5-10x slower than fp32"
    elif hw.device_type == "cuda":
        major, minor = hw.cuda_capability or (0, 0)
        if precision == "bf16" and (major, minor) < (8, 0):
            slow = (f"bf16 on this GPU (compute capability {major}.{minor}, no bf16 tensor cores) is emulated "
                    "and much slower than fp16")
        elif precision == "fp16" and (major, minor) < (7, 0):
            slow = (f"fp16 on this GPU (compute capability {major}.{minor}, no tensor cores) "
                    "is rarely faster than fp32")
    elif hw.device_type == "mps" and precision == "bf16":
        slow = "bf16 on Apple MPS needs macOS 14 or later and is not known to be faster than fp32 there"
    return f"{slow}; --precision auto would pick {auto}" if slow else None


def _channels_last(precision: str, hw: Hardware) -> bool:
    """The memory format ``precision`` runs fastest in on ``hw``."""
    if hw.device_type == "cuda":
        return precision != "fp32"  # tensor-core convolutions take NHWC; cuDNN transposes NCHW first
    if hw.device_type == "cpu":
        return precision != "fp32" or _CPU_FP32_CHANNELS_LAST
    return False  # MPS: unmeasured


def choose_precision(requested: str, channels_last: bool | None, hw: Hardware) -> PrecisionChoice:
    """The precision policy: a pure function of the request and the hardware.

    ``auto`` picks what ``hw`` runs fast: bf16 on CUDA GPUs of compute capability
    8.0 and later and on CPUs with AVX512-BF16 or AMX, fp16 (with gradient
    scaling) on CUDA 7.x, fp32 elsewhere. ``channels_last=None`` picks the memory
    format that is faster for the chosen precision. An explicit precision is
    kept; if ``hw`` runs it slowly, ``warning`` says so and what ``auto`` picks.
    """
    if requested not in PRECISIONS:
        raise ConfigError(f"precision must be {', '.join(PRECISIONS)}; got {requested!r}")
    auto, why = _auto_precision(hw)
    precision = auto if requested == "auto" else requested
    warning = None if requested == "auto" else _slow_warning(precision, auto, hw)
    cl = _channels_last(precision, hw) if channels_last is None else bool(channels_last)
    chosen = precision + (" + gradient scaling" if precision == "fp16" else "") + (" + channels-last" if cl else "")
    reason = f"auto: {why} -> {chosen}" if requested == "auto" else f"requested {precision} on {why} -> {chosen}"
    return PrecisionChoice(precision, cl, reason, warning)


def select_precision(device: torch.device, requested: str, channels_last: bool | None) -> PrecisionChoice:
    """:func:`choose_precision` for ``device``; its warning, if any, is logged once.

    Once per call, that is per run: each run's log says why it is slow.
    """
    choice = choose_precision(requested, channels_last, probe_hardware(device))
    if choice.warning:
        logger.warning(choice.warning)
    return choice


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision ``precision`` (possibly ``auto``) means on ``device``; nothing is logged."""
    return choose_precision(precision, None, probe_hardware(device)).precision


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


@contextlib.contextmanager
def distributed(device: torch.device) -> Iterator[DistInfo]:
    """The process group of a torchrun launch, for the body; a world of one, without a group, otherwise.

    A group this call creates is destroyed when the body ends, also when it raises: one left
    open holds its backend's threads and connections (NCCL's watchdog among them) until the
    process exits, and can hold up that exit. A group that existed before (the caller's own)
    is used and left to its creator.
    """
    if not is_distributed():
        yield DistInfo()
        return
    created = not dist.is_initialized()
    if created:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        yield DistInfo(dist.get_rank(), dist.get_world_size(), dist_local_rank())
    finally:
        if created and dist.is_initialized():
            dist.destroy_process_group()


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
