"""A trained run opened for use: its configuration, its network, and how that network is called.

A run is used only once it has finished training (an :class:`~cnnlab.errors.UnfinishedRun`
otherwise, unless the caller allows it), with a checkpoint whose weights fit the
run's network and are finite (:func:`cnnlab.files.load_model_state`). A face run
brings the decision threshold its training chose, the precision its test
embeddings were computed in and how its inputs' faces are found; a CIFAR run
its class names.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import torch

from cnnlab.cifar.train import build_model as build_cifar_model
from cnnlab.config import CifarTrainConfig, FaceTrainConfig, from_dict
from cnnlab.data.align import check_align
from cnnlab.data.augment import eval_transform
from cnnlab.data.cifar10 import CLASSES
from cnnlab.engine import check_finite, infer
from cnnlab.errors import CheckpointError, CnnlabError
from cnnlab.faces.train import build_model as build_face_model
from cnnlab.faces.train import infer_embeddings
from cnnlab.files import load_checkpoint, load_model_state
from cnnlab.models.basecnn import BaseCNN
from cnnlab.models.siamese import SiameseNet
from cnnlab.run import RunDir
from cnnlab.runtime import choose_precision, probe_hardware, resolve_device, select_precision

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- face runs


def face_config(run: RunDir) -> FaceTrainConfig:
    """The saved configuration of a face run (a :class:`CnnlabError` when the folder is not one)."""
    run.expect_study(FaceTrainConfig)
    return from_dict(FaceTrainConfig, run.read_config(), source=str(run.config_path))


def load_face_network(run: RunDir, checkpoint: str = "best", device: str | torch.device = "cpu",
                      allow_unfinished: bool = False) -> tuple[SiameseNet, FaceTrainConfig]:
    """The network of a finished face run with the weights of ``checkpoints/<checkpoint>.pt``, in eval mode; an
    unfinished run only with ``allow_unfinished`` (see :meth:`RunDir.require_finished`)."""
    cfg = face_config(run)
    run.require_finished(allow_unfinished)
    path = run.checkpoints / f"{checkpoint}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {run.path} a finished face run?")
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") not in (None, "faces"):
        raise CheckpointError(f"{path} is a {ckpt.get('kind')} checkpoint, not a face run's")
    model = build_face_model(cfg, weights="none")
    load_model_state(model, ckpt.get("model"), path, "this run's network")
    return model.to(device).eval(), cfg


def face_threshold(run: RunDir) -> float:
    """The decision threshold training chose on the validation pairs of the face run ``run``."""
    face_config(run)  # a face run, or an error naming the study it belongs to
    summary = run.read_summary()
    if summary.get("threshold") is None:
        raise CnnlabError(f"{run.path} has no decision threshold in summary.json; it is written when training "
                          f"ends (finish the run with cnnlab faces train --resume {run.path})")
    return float(summary["threshold"])


def embedding_precision(run: RunDir, cfg: FaceTrainConfig, dev: torch.device) -> tuple[str, bool]:
    """The precision and memory format to embed in: those of the run's test embeddings, so a
    distance is on the scale the threshold was chosen on, unless ``dev`` would only emulate
    that precision (a bf16 run used on a CPU without bf16 instructions): then the policy's."""
    summary = run.read_summary()
    recorded, channels_last = summary.get("precision"), summary.get("channels_last")
    if recorded in ("fp32", "bf16", "fp16"):
        choice = choose_precision(recorded, channels_last, probe_hardware(dev))
        if choice.warning is None:
            return choice.precision, choice.channels_last
        logger.info("the run embedded in %s, which %s emulates; distances may differ in the third decimal",
                    recorded, dev)
    choice = select_precision(dev, "auto", cfg.channels_last)
    return choice.precision, choice.channels_last


class FaceRun(NamedTuple):
    """A finished face run opened for use: its best network on a device, and how to embed with it."""

    run: RunDir
    model: SiameseNet
    cfg: FaceTrainConfig
    threshold: float
    device: torch.device
    precision: str
    channels_last: bool
    align: str  # how inputs are made ready: the run's align mode unless told otherwise

    @property
    def source(self) -> str:
        """What computes the embeddings, as a message names it."""
        return f"the network of {self.run.best_checkpoint} ({self.precision} on {self.device})"

    def embeddings(self, images: torch.Tensor, desc: str | None = None, what: str = "embeddings") -> torch.Tensor:
        """Embeddings (N, D), float32 on the CPU, of uint8 images (N, 3, S, S) made ready as in training, in
        batches of the run's evaluation batch size; a :class:`~cnnlab.errors.NonFiniteOutput` naming ``what``
        rather than a NaN embedding, from which any distance would be meaningless."""
        return check_finite(infer_embeddings(self.model, images, device=self.device,
                                             batch_size=self.cfg.eval_batch_size, precision=self.precision,
                                             channels_last=self.channels_last, desc=desc),
                            what, self.source)


def open_face_run(path: str | os.PathLike, device: str = "auto", align: str | None = None,
                  allow_unfinished: bool = False) -> FaceRun:
    """The best checkpoint of a finished face run, with its threshold; an error saying what to do otherwise.

    ``align``: how inputs are made ready, when not as the run was trained; a
    warning says that distances may then not match the run's threshold.
    ``allow_unfinished``: use a run that has not finished training, with the
    threshold it has (one chosen before the run was extended); one that never
    finished has none and is refused.
    """
    run = RunDir(path)
    dev = resolve_device(device)
    model, cfg = load_face_network(run, "best", dev, allow_unfinished)
    threshold = face_threshold(run)
    if align is not None and check_align(align) != cfg.align:
        logger.warning("%s was trained with --align %s; using --align %s, so distances may not be on the scale of "
                       "its threshold", run.path, cfg.align, align)
    return FaceRun(run, model, cfg, threshold, dev, *embedding_precision(run, cfg, dev), align or cfg.align)


# --------------------------------------------------------------------------- CIFAR runs


def load_cifar_network(run: RunDir, checkpoint: str = "best", device: str | torch.device = "cpu",
                       allow_unfinished: bool = False) -> tuple[BaseCNN, dict]:
    """The network of a finished CIFAR run with the weights of ``checkpoints/<checkpoint>.pt``, and that
    checkpoint; an unfinished run only with ``allow_unfinished`` (see :meth:`RunDir.require_finished`)."""
    run.expect_study(CifarTrainConfig)
    run.require_finished(allow_unfinished)
    cfg = from_dict(CifarTrainConfig, run.read_config(), source=str(run.config_path))
    model = build_cifar_model(cfg)
    path = run.checkpoints / f"{checkpoint}.pt"
    ckpt = load_checkpoint(path)
    load_model_state(model, ckpt.get("model"), path, f"{model.variant} at width {model.width}")
    return model.to(device), ckpt


class CifarRun(NamedTuple):
    """A finished CIFAR run opened for use: its best network on a device, in eval mode, and its classes."""

    run: RunDir
    model: BaseCNN
    classes: list[str]
    device: torch.device

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, C), float32 on the CPU, of uint8 images (N, 3, 32, 32); a
        :class:`~cnnlab.errors.NonFiniteOutput` where the network gives NaN, of which no class is the most
        probable."""
        logits = infer(self.model, images, eval_transform, device=self.device)
        check_finite(logits, "logits", f"the network of {self.run.best_checkpoint} (fp32 on {self.device})")
        return torch.softmax(logits, dim=1)


def open_cifar_run(path: str | os.PathLike, device: str = "auto", allow_unfinished: bool = False) -> CifarRun:
    """The best checkpoint of the finished CIFAR run at ``path`` with its class names; a run that has not
    finished training is a :class:`~cnnlab.errors.UnfinishedRun` unless ``allow_unfinished``."""
    run = RunDir(path)
    dev = resolve_device(device)
    model, _ = load_cifar_network(run, "best", dev, allow_unfinished)
    classes = [str(c) for c in run.read_summary().get("classes") or CLASSES]
    if len(classes) != model.fc.out_features:
        raise CnnlabError(f"{run.summary_path} names {len(classes)} classes, the network of "
                          f"{run.path} has {model.fc.out_features} outputs")
    return CifarRun(run, model.eval(), classes, dev)
