"""Run configurations: dataclasses, checked on creation, saved with every run.

The CLI and YAML files only override fields; a field's ``metadata["help"]``
is its ``--help`` text, so the options and the config cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cnnlab.errors import ConfigError

C = TypeVar("C")

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("sgd", "adamw", "adam")


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its ``--help`` text."""
    return field(default=default, metadata={"help": help, **extra})


def _require(cond: bool, option: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"--{option.replace('_', '-')}: expected {expected}, got {value!r}")


def check_common(cfg: Any) -> None:
    """Checks shared by every training config (fields present on ``cfg`` only)."""
    for name in ("batch_size", "eval_batch_size"):
        if hasattr(cfg, name):
            v = getattr(cfg, name)
            _require(isinstance(v, int) and v >= 1, name, "a positive integer", v)
    if hasattr(cfg, "lr"):
        _require(cfg.lr > 0, "lr", "a positive learning rate", cfg.lr)
    if hasattr(cfg, "weight_decay"):
        _require(cfg.weight_decay >= 0, "weight_decay", "a value >= 0", cfg.weight_decay)
    if hasattr(cfg, "gamma"):
        _require(0 < cfg.gamma <= 1, "gamma", "a value in (0, 1]", cfg.gamma)
    if hasattr(cfg, "device"):
        _require(isinstance(cfg.device, str) and bool(DEVICE_RE.match(cfg.device)), "device",
                 "auto, cpu, cuda, cuda:N or mps", cfg.device)
    if hasattr(cfg, "precision"):
        _require(cfg.precision in PRECISIONS, "precision", " or ".join(PRECISIONS), cfg.precision)
    if hasattr(cfg, "optimizer"):
        _require(cfg.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS), cfg.optimizer)


@dataclass
class CifarTrainConfig:
    # model
    blocks: str = opt("A", "block design(s): one of A, B, C, D, D-sep, E for all eight blocks, "
                           "or eight names, e.g. AABBCCDE")
    width: float = opt(1.0, "multiplies every channel count (0.25 for quick CPU runs)")
    # data
    data_dir: str = opt("data/cifar10", "CIFAR-10 folder: cifar-10-batches-py/ or train/<class>/, test/<class>/")
    download: bool = opt(False, "download the official archive into --data-dir if it is not there")
    val_per_class: int | None = opt(None, "validation images per class (default: 1000, or 20%% of each class "
                                          "on smaller sets)")
    max_train_samples: int | None = opt(None, "train on a seeded subset of this many images")
    skip_bad_images: bool = opt(False, "skip image files that cannot be decoded instead of stopping")
    augment: bool = opt(True, "training augmentation: color jitter, random affine, horizontal flip")
    # optimisation
    epochs: int = opt(30, "training epochs")
    batch_size: int = opt(128, "training batch size (per process)")
    optimizer: str = opt("sgd", "sgd (Nesterov momentum), adamw or adam", choices=OPTIMIZERS)
    lr: float = opt(0.05, "initial learning rate lr_0")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(5e-4, "L2 weight decay (not applied to BatchNorm and biases)")
    gamma: float = opt(0.85, "ExponentialLR decay per epoch: lr_t = lr_0 * gamma^t")
    warmup_epochs: float = opt(1.0, "linear warm-up of the learning rate over the first steps "
                                    "(in epochs; 0 = none)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy loss")
    # runtime
    seed: int = opt(0, "seed for the split, initialisation, shuffling and augmentation")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N")
    precision: str = opt("auto", "fp32 or bf16 autocast; auto = bf16 on CUDA, fp32 on CPU", choices=PRECISIONS)
    channels_last: bool | None = opt(None, "channels-last memory format (default: on with bf16)")
    compile: bool = opt(False, "torch.compile the model")
    eval_batch_size: int = opt(1000, "batch size for validation and test")

    def __post_init__(self) -> None:
        from cnnlab.models.blocks import parse_blocks

        parse_blocks(self.blocks)
        _require(self.width > 0, "width", "a positive number", self.width)
        _require(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "a positive integer", self.epochs)
        if self.val_per_class is not None:
            _require(self.val_per_class >= 1, "val_per_class", "a positive integer", self.val_per_class)
        if self.max_train_samples is not None:
            _require(self.max_train_samples >= 1, "max_train_samples", "a positive integer",
                     self.max_train_samples)
        _require(0 <= self.label_smoothing < 1, "label_smoothing", "a value in [0, 1)", self.label_smoothing)
        _require(self.momentum >= 0, "momentum", "a value >= 0", self.momentum)
        _require(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", "a value in [0, --epochs]",
                 self.warmup_epochs)
        check_common(self)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], data: dict, source: str = "config") -> C:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option names to values")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    clean = {}
    for k, v in data.items():
        # YAML reads "1e-3" as a string; accept it where a float is expected.
        if v is not None and hints[k] in (float, float | None) and isinstance(v, (str, int)):
            try:
                v = float(v)
            except ValueError:
                raise ConfigError(f"{source}: {k} expected a number, got {v!r}") from None
        clean[k] = v
    return cls(**clean)


def save_yaml(cfg: Any, path: str | Path, extra: dict | None = None) -> None:
    from cnnlab.files import atomic_write_text

    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    if extra:
        data.update(extra)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return data or {}

