"""Run configurations: dataclasses, checked on creation, saved with every run.

The CLI and YAML files only override fields; a field's ``metadata["help"]``
is its ``--help`` text, so the options and the config cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from cnnlab.errors import ConfigError, param

C = TypeVar("C")

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
OPTIMIZERS = ("sgd", "adamw", "adam")
# The CIFAR study's choices (see the fields of :class:`CifarTrainConfig`).
POOLINGS = ("intended", "original")
AUGMENTS = ("study", "crop-flip", "none")
SCHEDULES = ("exponential", "linear", "cosine", "onecycle")
TTAS = ("none", "flip")
DEFAULT_CIFAR_RECIPE = "fast"
"""The recipe ``cnnlab cifar train`` and ``compare`` start from when none is named (``--recipe``, or
``recipe:`` in a ``--config`` file): the best one measured, by validation accuracy (README: *Recipes and time
budgets*). The dataclass defaults below are its values."""
DEFAULT_WARMUP = (2.0, 30)
"""The default warm-up, the fast recipe's: 2 epochs of 30, and the same share of a run of fewer epochs."""
MAX_LR = 10.0
"""The largest learning rate taken. The studies train at 0.05 (SGD) and 1e-3 (Adam); a rate above 10 is a
typo (``1e3`` for ``1e-3``) that diverges at once, and above float32's range torch cannot even apply it."""
MAX_WEIGHT_DECAY = 1.0
"""The largest weight decay taken: a decay of 1 already removes a weight's whole size every unit step of the
rate; more is a typo (``5e4`` for ``5e-4``), and above float32's range torch cannot apply it."""
MAX_SEED = 2**32 - 1
"""Seeds go to torch and to numpy's and scikit-learn's generators (t-SNE); numpy takes 0 .. 2**32 - 1."""
INT_RANGE = (-2**63, 2**63 - 1)
"""What torch takes as an integer (int64): a count or seed beyond it overflows inside torch."""
# Both studies' options.
PRECISION_HELP = ("fp32, or bf16 or fp16 autocast (fp16 with gradient scaling); auto picks what the hardware runs "
                  "fast: bf16 on CUDA GPUs of compute capability 8.0+ and on CPUs with AVX512-BF16 or AMX, fp16 on "
                  "older CUDA GPUs (T4, V100), fp32 elsewhere (other CPUs, Apple MPS); the run's log and summary "
                  "say why")
CHANNELS_LAST_HELP = ("channels-last memory format; auto: whichever is faster for the precision (on for bf16 and "
                      "fp16, on for fp32 on a CPU, off for fp32 on a GPU and on Apple MPS)")


def opt(default: Any, help: str, **extra: Any) -> Any:
    """A config field with its ``--help`` text. ``auto=True``: None means auto, which YAML files may also
    write as ``auto`` and the command line as ``--option auto``."""
    return field(default=default, metadata={"help": help, **extra})


def _require(cond: bool, option: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{param(option)}: expected {expected}, got {value!r}")


def check_common(cfg: Any) -> None:
    """Checks shared by every training config (fields present on ``cfg`` only)."""
    for name in ("batch_size", "eval_batch_size"):
        if hasattr(cfg, name):
            v = getattr(cfg, name)
            _require(isinstance(v, int) and v >= 1, name, "a positive integer", v)
    if hasattr(cfg, "lr"):
        _require(0 < cfg.lr <= MAX_LR, "lr", f"a learning rate in (0, {MAX_LR:g}]", cfg.lr)
    if hasattr(cfg, "weight_decay"):
        _require(0 <= cfg.weight_decay <= MAX_WEIGHT_DECAY, "weight_decay",
                 f"a value in [0, {MAX_WEIGHT_DECAY:g}]", cfg.weight_decay)
    if hasattr(cfg, "seed"):
        _require(0 <= cfg.seed <= MAX_SEED, "seed", f"an integer in [0, {MAX_SEED}]", cfg.seed)
    if hasattr(cfg, "gamma"):
        _require(0 < cfg.gamma <= 1, "gamma", "a value in (0, 1]", cfg.gamma)
    if hasattr(cfg, "device"):
        _require(isinstance(cfg.device, str) and bool(DEVICE_RE.match(cfg.device)), "device",
                 "auto, cpu, cuda, cuda:N or mps", cfg.device)
    if hasattr(cfg, "precision"):
        _require(cfg.precision in PRECISIONS, "precision", " or ".join(PRECISIONS), cfg.precision)
    if hasattr(cfg, "channels_last"):
        if cfg.channels_last == "auto":  # as from Python: the name of None
            cfg.channels_last = None
        _require(cfg.channels_last is None or isinstance(cfg.channels_last, bool), "channels_last",
                 "auto, true or false", cfg.channels_last)
    if hasattr(cfg, "optimizer"):
        _require(cfg.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS), cfg.optimizer)


@dataclass
class RuntimeConfig:
    """How a run runs, shared by both studies' training configs.

    A study's config lists its own fields first and these last (see
    :class:`CifarTrainConfig`), and overrides one where its default or help
    differs. A resumed run keeps ``seed``, ``precision`` and ``channels_last``,
    which change what it computes; it may change :data:`RESUMABLE_FIELDS`.
    """

    seed: int = opt(0, "seed for the split, initialisation, shuffling and augmentation")
    device: str = opt("auto", "auto, cpu, cuda, cuda:N")
    precision: str = opt("auto", PRECISION_HELP, choices=PRECISIONS)
    channels_last: bool | None = opt(None, CHANNELS_LAST_HELP, auto=True)
    compile: bool = opt(False, "torch.compile the model")
    eval_batch_size: int = opt(1000, "batch size for validation and test")


RESUMABLE_FIELDS = ("device", "compile", "eval_batch_size")
"""The runtime fields a resumed run may change: how fast it runs, not what it computes. Each study adds the
fields that say where its data is found."""


# A dataclass lists the fields of its bases from the last base to the first, then its own; a study's
# config therefore derives from (RuntimeConfig, its own fields) so that config.yaml and --help list the
# study's fields first and the runtime ones last.
@dataclass
class _CifarFields:
    recipe: str | None = opt(DEFAULT_CIFAR_RECIPE, "the preset the other options start from: a name (cnnlab cifar "
                                                   "recipes lists them) or a YAML file of options; --config and the "
                                                   "options given "
                                      f"override it (default: {DEFAULT_CIFAR_RECIPE}; the defaults shown below "
                                      "are the fast recipe's)", metavar="NAME")
    # model
    blocks: str = opt("A", "one variant: one of A, B, C, D, D-sep, E for all eight blocks, or eight names "
                           "written together or joined by '+', e.g. AABBCCDE (a comma separates variants, "
                           "as in cifar compare --blocks A,E)")
    width: float = opt(1.0, "multiplies every channel count (0.25 for quick CPU runs)")
    pooling: str = opt("intended", "intended: MaxPool(2) after blocks 3, 5 and 8 (blocks at 32, 16 and 8 "
                                   "pixels); original: the study notebook's single MaxPool(2) after block 8, so "
                                   "every block runs at 32x32 (about 6x the compute, the same parameters)",
                       choices=POOLINGS)
    # data
    data_dir: str = opt("data/cifar10", "CIFAR-10 folder: cifar-10-batches-py/ or train/<class>/, test/<class>/")
    download: bool = opt(False, "download the official archive into --data-dir if it is not there")
    val_per_class: int | None = opt(None, "validation images per class (default: 1000, or 20%% of each class "
                                          "on smaller sets)")
    max_train_samples: int | None = opt(None, "train on a seeded subset of this many images")
    skip_bad_images: bool = opt(False, "skip image files that cannot be decoded instead of stopping")
    augment: str | bool = opt("crop-flip", "training augmentation: study (the study's color jitter, random affine "
                                       "and horizontal flip), crop-flip (random 32x32 crop of the image padded "
                                       "by 4 reflected pixels, and horizontal flip) or none", choices=AUGMENTS)
    # optimisation
    epochs: int = opt(30, "training epochs (with --time-budget: the most it may train)")
    time_budget: str | float | None = opt(None, "train for this long, e.g. 90s, 20m, 1.5h (training time; "
                                                "validation not counted): the schedule follows the elapsed "
                                                "fraction of the budget as if it were --epochs epochs, and the "
                                                "run ends at the schedule's floor when the budget is spent, or "
                                                "after --epochs epochs if those end first (default: none, "
                                                "--epochs alone)", metavar="DURATION")
    batch_size: int = opt(256, "training batch size (per process)")
    optimizer: str = opt("sgd", "sgd (Nesterov momentum), adamw or adam", choices=OPTIMIZERS)
    lr: float = opt(0.1, "peak learning rate lr_0")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(5e-4, "L2 weight decay (not applied to BatchNorm and biases)")
    schedule: str = opt("linear", "learning-rate schedule after the warm-up: exponential (the study's "
                                       "ExponentialLR, lr_t = lr_0 * gamma^t per epoch), linear or cosine "
                                       "(per step, to zero at the end), onecycle (OneCycleLR's shape: a cosine "
                                       "rise from lr_0/25 over the warm-up, then a cosine fall to about zero)",
                        choices=SCHEDULES)
    gamma: float = opt(0.85, "ExponentialLR decay per epoch: lr_t = lr_0 * gamma^t")
    warmup_epochs: float | None = opt(None, "linear warm-up of the learning rate over the first steps (in "
                                           "epochs; 0 = none; default: 2 epochs of 30, the same share of a "
                                           "shorter run)")
    label_smoothing: float = opt(0.1, "label smoothing of the cross-entropy loss")
    ema: float = opt(0.0, "decay of an exponential moving average of the weights, e.g. 0.999 (0 = off); when on, "
                          "validation, best.pt and the test use the averaged weights")
    tta: str = opt("flip", "test-time augmentation: flip also scores the test set as the mean of each image's "
                           "and its mirror image's logits (test_accuracy_tta, beside test_accuracy)",
                   choices=TTAS)


@dataclass
class CifarTrainConfig(RuntimeConfig, _CifarFields):
    """One CIFAR-10 block-study run (``cnnlab cifar train``)."""

    def __post_init__(self) -> None:
        from cnnlab.models.blocks import parse_blocks

        _require(self.recipe is None or (isinstance(self.recipe, str) and bool(self.recipe.strip())), "recipe",
                 "a recipe name or a YAML file", self.recipe)
        parse_blocks(self.blocks)
        _require(self.width > 0, "width", "a positive number", self.width)
        _check_width(self.width)
        _require(self.pooling in POOLINGS, "pooling", " or ".join(POOLINGS), self.pooling)
        if isinstance(self.augment, bool):  # a config of cnnlab 0.1: augment on or off
            self.augment = "study" if self.augment else "none"
        _require(self.augment in AUGMENTS, "augment", ", ".join(AUGMENTS[:-1]) + " or " + AUGMENTS[-1], self.augment)
        _require(isinstance(self.epochs, int) and self.epochs >= 1, "epochs", "a positive integer", self.epochs)
        if self.time_budget is not None:
            parse_duration(self.time_budget, "time_budget")
        if self.val_per_class is not None:
            _require(self.val_per_class >= 1, "val_per_class", "a positive integer", self.val_per_class)
        if self.max_train_samples is not None:
            _require(self.max_train_samples >= 1, "max_train_samples", "a positive integer",
                     self.max_train_samples)
        _require(0 <= self.label_smoothing < 1, "label_smoothing", "a value in [0, 1)", self.label_smoothing)
        # Momentum 1 or more never forgets a gradient: the steps grow without bound and training diverges.
        _require(0 <= self.momentum < 1, "momentum", "a value in [0, 1)", self.momentum)
        _require(self.schedule in SCHEDULES, "schedule", ", ".join(SCHEDULES[:-1]) + " or " + SCHEDULES[-1],
                 self.schedule)
        if self.warmup_epochs is None:  # the default: a share of the run, so that a short run can warm up too
            self.warmup_epochs = DEFAULT_WARMUP[0] * min(1.0, self.epochs / DEFAULT_WARMUP[1])
        _require(0 <= self.warmup_epochs <= self.epochs, "warmup_epochs", f"a value in [0, {param('epochs')}]",
                 self.warmup_epochs)
        # A decay of 1 never moves the average from the initial weights.
        _require(0 <= self.ema < 1, "ema", "a decay in [0, 1) (0 = off)", self.ema)
        _require(self.tta in TTAS, "tta", " or ".join(TTAS), self.tta)
        check_common(self)

    @property
    def time_budget_seconds(self) -> float | None:
        """``time_budget`` in seconds (None without one)."""
        return None if self.time_budget is None else parse_duration(self.time_budget, "time_budget")


_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(s|sec|m|min|h)?\s*$")
_UNIT_SECONDS = {None: 1, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(value: Any, option: str = "time_budget") -> float:
    """Seconds of a duration written ``90s``, ``20m``, ``1.5h`` or as a number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        m = _DURATION.match(value) if isinstance(value, str) else None
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)] if m else math.nan
    _require(math.isfinite(seconds) and seconds > 0, option,
             "a positive duration such as 90s, 20m or 1.5h (a bare number is seconds)", value)
    return seconds


def _check_width(width: float) -> None:
    """Refuse a width at which every layer is at the minimum channel count: the width then no longer
    scales the network (1e-9 and 0.02 train the same network), so the value asked for is not the one run."""
    from cnnlab.models.basecnn import MIN_CHANNELS, min_width

    if width < min_width():
        raise ConfigError(f"{param('width')}: expected a width of at least {min_width():g}, got {width!r}: it makes "
                          f"every layer the minimum {MIN_CHANNELS} channels wide, the same network as any "
                          f"smaller width")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls: type[C], data: dict, source: str = "config", sources: dict[str, str] | None = None) -> C:
    """``cls(**data)``, every value first checked against the field's declared type.

    ``source`` names where the values come from: a YAML file (messages say
    ``FILE: key``) or ``"options"``, given one by one (messages name the
    field with :func:`~cnnlab.errors.param`: ``key`` from Python, ``--key`` on the command line);
    ``sources`` names it per key where ``data`` mixes a file and options.
    """
    checked = check_fields(cls, data, source)
    try:
        return cls(**checked)
    except ConfigError as e:
        raise _named_by_source(e, {k: (sources or {}).get(k, source) for k in data}) from None


def _named_by_source(error: ConfigError, sources: dict[str, str]) -> ConfigError:
    """A range check's ``key: expected ...`` (the field named by :func:`~cnnlab.errors.param`) as
    ``FILE: key: expected ...`` when the value came from a file."""
    text = error.worded()  # its parameters still marked
    m = re.match(re.escape(param("KEY")).replace("KEY", r"(\w+)") + ": ", text)
    key = m.group(1) if m else None
    if key is None or sources.get(key, "options") == "options":
        return error
    return ConfigError(f"{sources[key]}: {key}: {text[m.end():]}")


def check_fields(cls: type, data: dict, source: str = "config") -> dict:
    """``data`` (field names of ``cls`` to values), each value checked by :func:`check_type`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of option names to values")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(map(str, set(data) - names))
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {', '.join(unknown)}")
    hints = typing.get_type_hints(cls)
    auto = {f.name for f in dataclasses.fields(cls) if f.metadata.get("auto")}  # None means auto
    out = {}
    for k, v in data.items():
        expected = f"auto or {type_name(hints[k])}" if k in auto else None
        out[k] = None if k in auto and v == "auto" else check_type(v, hints[k], _where(source, k), expected)
    return out


def _where(source: str, key: str) -> str:
    return param(key) if source == "options" else f"{source}: {key}"


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}


def type_name(hint: Any) -> str:
    """How a message names what a field of type ``hint`` takes: ``an integer or null``."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) if a is not type(None) else "null" for a in args)
    if typing.get_origin(hint) is tuple:
        return f"a list of {type_name(args[0]).removeprefix('a ').removeprefix('an ')}s"
    return _TYPE_NAMES.get(hint, getattr(hint, "__name__", str(hint)))


def check_type(value: Any, hint: Any, where: str, expected: str | None = None) -> Any:
    """``value`` as a field of type ``hint`` takes it, or a :class:`ConfigError` naming ``where``.

    Strict where YAML and the command line are loose: a boolean only as a YAML
    boolean (``'false'`` and ``no`` in quotes are strings), an integer never as a
    float (``150.5``, ``150.0``) nor as a boolean, ``null`` only in an optional
    field, and no infinite or NaN number. A string that reads as a number is
    taken where a number is expected, because YAML reads ``1e-3`` as a string.
    ``expected`` says what is taken, when not what ``hint`` names.
    """
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    expected = expected or type_name(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _check_one(value, rest[0], where, expected)
    return _check_one(value, hint, where, expected)


def _check_one(value: Any, hint: Any, where: str, expected: str) -> Any:
    given = value

    def refuse() -> ConfigError:
        return ConfigError(f"{where}: expected {expected}, got {given!r}")

    if typing.get_origin(hint) is tuple:
        if not isinstance(value, (list, tuple)):
            raise refuse()
        item = typing.get_args(hint)[0]
        return tuple(_check_one(v, item, where, expected) for v in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise refuse()
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise refuse()
        if not INT_RANGE[0] <= value <= INT_RANGE[1]:
            raise ConfigError(f"{where}: expected {expected} in [-2**63, 2**63 - 1] (what torch takes), "
                              f"got {given!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise refuse() from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise refuse()
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise refuse()
        return value
    return value  # a type this check does not know: the dataclass checks it


def save_yaml(cfg: Any, path: str | Path, extra: dict | None = None) -> None:
    from cnnlab.files import atomic_write_text

    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    if extra:
        data.update(extra)
    atomic_write_text(path, yaml.safe_dump(data, sort_keys=False))


def load_yaml(path: str | Path) -> dict:
    from cnnlab.files import not_a_regular_file

    path = Path(path)
    problem = not_a_regular_file(path)
    if problem:
        raise ConfigError(f"config file {path} {problem}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return data or {}


# --- face verification -----------------------------------------------------------------

FACE_LOSSES = ("contrastive", "triplet", "cosface", "arcface", "subcenter-arcface")
FACE_MARGIN_LOSSES = ("cosface", "arcface", "subcenter-arcface")
"""The additive-margin softmax losses: they learn a weight per training person (see :mod:`cnnlab.losses`)."""
FACE_HEADS = ("relu", "bnneck")
FACE_MINERS = ("batch-hard", "semi-hard", "all")
FACE_PROTOCOLS = ("none", "lfw-view1")
FACE_ALIGNS = ("auto", "detect", "center")
ALIGN_HELP = ("how the face is found in each image: auto (detect it and its five landmarks and align it to the "
              "standard template; where no face is found, the centre crop of --crop), detect (the same, but "
              "images without a face are skipped) or center (no detection: the centre crop of --crop)")
FACE_DEFAULT_MARGIN = {"contrastive": 1.0, "triplet": 0.2, "cosface": 0.35, "arcface": 0.5, "subcenter-arcface": 0.5}
"""``--margin`` when none is given: the study's 1.0 for the contrastive loss, FaceNet's 0.2 for the triplet loss,
the papers' cosine margin 0.35 for CosFace and angular margin 0.5 rad (28.6 degrees) for ArcFace."""
MAX_ANGULAR_MARGIN = math.pi / 2
"""ArcFace's margin is an angle added to the angle to the person's weight: from 90 degrees on, even an image
that lies on its weight scores no higher than one at right angles to it."""


@dataclass
class _FaceFields:
    # data
    data_dir: str = opt("data/lfw", "face folder: one sub-folder per person (for LFW the folder holding "
                                    "lfw-deepfunneled/ or images_deepfunneled/ and the protocol files)")
    download: bool = opt(False, "download LFW deep-funneled and its protocol files into --data-dir if no face "
                                "folder is there")
    protocol: str = opt("none", "none: identity-disjoint train/validation/test people drawn with --seed; "
                                "lfw-view1: train on peopleDevTrain.txt (less a validation group), test on "
                                "pairsDevTest.txt", choices=FACE_PROTOCOLS)
    protocol_dir: str | None = opt(None, "folder of LFW's protocol files (default: --data-dir, then its parent)")
    val_fraction: float = opt(0.1, "fraction of the training people held back for validation")
    test_fraction: float = opt(0.1, "fraction of the people kept for testing (--protocol none)")
    max_train_images: int | None = opt(None, "train on a subset of this many of the training images: whole people "
                                             "drawn with --seed (validation and test stay whole); only the images "
                                             "the run uses are decoded and searched for faces")
    image_size: int = opt(112, "side of the decoded, cached face images in pixels")
    crop: float = opt(0.6, "centre crop before resizing, as a fraction of the shorter side (0.6 frames an "
                           "LFW face), for --align center and images auto finds no face in")
    align: str = opt("auto", ALIGN_HELP, choices=FACE_ALIGNS)
    skip_bad_images: bool = opt(False, "skip image files that cannot be decoded instead of stopping")
    augment: bool = opt(True, "training augmentation: horizontal flip and a small random zoom and shift")
    # model
    backbone: str = opt("efficientnet_lite0", "efficientnet_lite0 (timm's tf_efficientnet_lite0; ImageNet "
                                              "weights work offline), efficientnet_b0 (torchvision), tiny "
                                              "(tests), or timm:NAME for any timm model, e.g. timm:resnet18")
    weights: str = opt("imagenet", "backbone weights: imagenet (for timm:NAME downloaded from timm's hub), none, "
                                   "or a path to a state-dict file")
    embedding_dim: int = opt(512, "size D of the embedding (backbone -> Linear -> --head)")
    normalize_embeddings: bool = opt(True, "scale every embedding to unit length (distances in [0, 2])")
    head: str = opt("relu", "embedding head after the Linear: relu (the study's) or bnneck (BatchNorm1d, no ReLU, "
                            "as in ArcFace's output layer)", choices=FACE_HEADS)
    flip_tta: bool = opt(False, "embed each validation, test and inference image and its mirror image and "
                                "average the two (test-time augmentation; twice the inference time)")
    trainable_layers: int | None = opt(None, "train only the last N layers of the backbone (the rest keep "
                                             "their ImageNet weights); default: all")
    freeze_bn: bool = opt(True, "keep the backbone's BatchNorm statistics at their ImageNet values while "
                                "training")
    # loss
    loss: str = opt("contrastive", "contrastive (pairs), triplet (P x K batches with --miner), or a margin softmax "
                                   "over the training people on random batches: cosface, arcface or "
                                   "subcenter-arcface (tolerates mislabelled images)", choices=FACE_LOSSES)
    margin: float | None = opt(None, "margin of the loss (default: 1.0 contrastive, 0.2 triplet, 0.35 cosface "
                                     "(cosine), 0.5 arcface and subcenter-arcface (radians))")
    scale: float = opt(30.0, "s, the scale of the cosines in cosface, arcface and subcenter-arcface")
    subcenters: int = opt(3, "K, weights per person in subcenter-arcface")
    miner: str = opt("batch-hard", "triplet mining inside a batch: batch-hard, semi-hard or all",
                     choices=FACE_MINERS)
    pk_images: int = opt(4, "K, images per person in a triplet batch (P = --batch-size / K people)")
    # optimisation
    epochs: int = opt(20, "training epochs (0: only evaluate the untrained model)")
    batch_size: int = opt(64, "images per training step: --batch-size / 2 pairs, or P x K for triplets")
    optimizer: str = opt("adam", "adam, adamw or sgd (Nesterov momentum 0.9)", choices=OPTIMIZERS)
    lr: float = opt(1e-3, "learning rate of the embedding head")
    backbone_lr_mult: float = opt(0.1, "backbone learning rate = --lr x this (0 freezes the backbone)")
    freeze_epochs: int = opt(0, "train only the head for this many epochs before the backbone joins")
    weight_decay: float = opt(0.0, "weight decay (not applied to BatchNorm parameters and biases)")
    step_size: int = opt(10, "StepLR: multiply the learning rates by --gamma every this many epochs")
    gamma: float = opt(0.1, "StepLR decay factor")


@dataclass
class FaceTrainConfig(RuntimeConfig, _FaceFields):
    """One Siamese face-verification run (``cnnlab faces train``).

    The defaults are the ones measured to give a working verifier; the README
    says why each one is what it is.
    """

    seed: int = opt(0, "seed for the split, pairs, initialisation and augmentation")
    eval_batch_size: int = opt(256, "batch size for embedding validation and test images")

    def __post_init__(self) -> None:
        _require(self.protocol in FACE_PROTOCOLS, "protocol", " or ".join(FACE_PROTOCOLS), self.protocol)
        _require(self.loss in FACE_LOSSES, "loss", f"{', '.join(FACE_LOSSES[:-1])} or {FACE_LOSSES[-1]}", self.loss)
        _require(self.miner in FACE_MINERS, "miner", " or ".join(FACE_MINERS), self.miner)
        _require(0 < self.val_fraction < 1, "val_fraction", "a fraction in (0, 1)", self.val_fraction)
        _require(0 <= self.test_fraction < 1, "test_fraction", "a fraction in [0, 1)", self.test_fraction)
        if self.protocol == "none":
            _require(self.test_fraction > 0, "test_fraction", f"a fraction in (0, 1) with {param('protocol')} none",
                     self.test_fraction)
            _require(self.val_fraction + self.test_fraction < 1, "val_fraction",
                     f"a fraction that leaves training people beside {param('test_fraction')}", self.val_fraction)
        if self.max_train_images is not None:
            _require(isinstance(self.max_train_images, int) and self.max_train_images >= 2, "max_train_images",
                     "an integer of at least 2 (a person's two images)", self.max_train_images)
        _require(isinstance(self.image_size, int) and self.image_size >= 16, "image_size",
                 "an integer of at least 16", self.image_size)
        _require(0 < self.crop <= 1, "crop", "a fraction in (0, 1]", self.crop)
        _require(self.align in FACE_ALIGNS, "align", " or ".join(FACE_ALIGNS), self.align)
        from cnnlab.models.siamese import backbone_names, is_backbone

        _require(is_backbone(self.backbone), "backbone", f"{', '.join(backbone_names())} or timm:NAME with NAME "
                 "a timm model (timm.list_models())", self.backbone)
        _require(isinstance(self.embedding_dim, int) and self.embedding_dim >= 1, "embedding_dim",
                 "a positive integer", self.embedding_dim)
        if self.trainable_layers is not None:
            _require(isinstance(self.trainable_layers, int) and self.trainable_layers >= 0, "trainable_layers",
                     "an integer >= 0", self.trainable_layers)
        if self.margin is None:
            self.margin = FACE_DEFAULT_MARGIN[self.loss]
        _require(isinstance(self.head, str) and self.head in FACE_HEADS, "head", " or ".join(FACE_HEADS), self.head)
        _require(0 < self.scale, "scale", "a positive number", self.scale)
        _require(isinstance(self.subcenters, int) and self.subcenters >= 1, "subcenters", "a positive integer",
                 self.subcenters)
        if self.loss == "contrastive":
            _require(self.margin > 0, "margin", "a positive number for the contrastive loss", self.margin)
            _require(self.batch_size >= 2 and self.batch_size % 2 == 0, "batch_size",
                     "an even number of at least 2 (two images a pair)", self.batch_size)
        elif self.loss in FACE_MARGIN_LOSSES:
            self._check_margin_loss()
        else:
            _require(self.margin >= 0, "margin", "a number >= 0 for the triplet loss", self.margin)
            _require(isinstance(self.pk_images, int) and self.pk_images >= 2, "pk_images",
                     "an integer of at least 2", self.pk_images)
            _require(self.batch_size % self.pk_images == 0 and self.batch_size // self.pk_images >= 2,
                     "batch_size", f"a multiple of {param('pk_images')} ({self.pk_images}) holding at least two people",
                     self.batch_size)
        _require(isinstance(self.epochs, int) and self.epochs >= 0, "epochs", "an integer >= 0", self.epochs)
        _require(isinstance(self.freeze_epochs, int) and self.freeze_epochs >= 0, "freeze_epochs",
                 "an integer >= 0", self.freeze_epochs)
        _require(isinstance(self.step_size, int) and self.step_size >= 1, "step_size", "a positive integer",
                 self.step_size)
        check_common(self)
        _require(0 <= self.backbone_lr_mult and self.lr * self.backbone_lr_mult <= MAX_LR, "backbone_lr_mult",
                 f"a value >= 0 that keeps the backbone's rate ({param('lr')} x this) at most {MAX_LR:g}",
                 self.backbone_lr_mult)

    def _check_margin_loss(self) -> None:
        if self.loss == "cosface":
            # The margin is subtracted from a cosine; from 1 on, the person's own weight never wins.
            _require(0 <= self.margin < 1, "margin", "a cosine margin in [0, 1) for cosface", self.margin)
        else:
            _require(0 <= self.margin < MAX_ANGULAR_MARGIN, "margin",
                     f"an angle in radians in [0, {MAX_ANGULAR_MARGIN:.4f}) for {self.loss}", self.margin)
        # The bnneck head's batch statistics need two images at least.
        _require(self.batch_size >= 2, "batch_size", f"at least 2 for {self.loss}", self.batch_size)


@dataclass
class FaceSearchConfig:
    """A random search over :class:`FaceTrainConfig` fields (``cnnlab faces search``)."""

    trials: int = opt(10, "finished trials the study should hold; a rerun adds only the missing ones")
    study: str = opt("faces", "Optuna study name (several workers sharing --storage join the same study)")
    storage: str | None = opt(None, "Optuna storage URL (default: sqlite:///OUT/search.db); "
                                    "postgresql://... or mysql://... for workers on several machines")
    space: str | None = opt(None, "YAML file of the search space (default: lr, margin, step_size, gamma, epochs "
                                  "around the study's best, the margin's range fitted to --loss, and for "
                                  "cosface and arcface also scale)")
    search_seed: int = opt(0, "seed of the random sampler (trial n draws from seed and n only)")
    prune: bool = opt(False, "stop unpromising trials early (Optuna's median pruner on validation ROC AUC)")

    def __post_init__(self) -> None:
        _require(isinstance(self.trials, int) and self.trials >= 1, "trials", "a positive integer", self.trials)
        _require(isinstance(self.study, str) and bool(self.study.strip()), "study", "a non-empty name", self.study)
        _require(0 <= self.search_seed <= MAX_SEED, "search_seed", f"an integer in [0, {MAX_SEED}]",
                 self.search_seed)
