"""The Siamese network of a face run: building it, which backbone layers train, loading a finished run."""

from __future__ import annotations

import logging

import torch
from torch import nn

from cnnlab.config import FaceTrainConfig, from_dict
from cnnlab.errors import CheckpointError
from cnnlab.files import load_checkpoint, load_model_state
from cnnlab.models.efficientnet_lite import EfficientNetLite0
from cnnlab.models.siamese import SiameseNet, TinyCNN, TorchvisionEfficientNet, build_siamese
from cnnlab.run import RunDir

logger = logging.getLogger(__name__)


def build_model(cfg: FaceTrainConfig, weights: str | None = None) -> SiameseNet:
    """The run's network; ``weights`` overrides ``cfg.weights`` (``"none"`` when a checkpoint follows)."""
    return build_siamese(cfg.backbone, weights if weights is not None else cfg.weights, cfg.embedding_dim,
                         cfg.normalize_embeddings)


def backbone_layers(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's layers in forward order, the units ``--trainable-layers`` counts from the end.

    EfficientNet-Lite0: stem, 16 MBConv blocks, head conv (18); torchvision
    EfficientNet-B0: its 9 feature stages; tiny: its 3 conv-BN-ReLU units.
    """
    if isinstance(backbone, EfficientNetLite0):
        return [backbone.stem, *backbone.blocks, backbone.head]
    if isinstance(backbone, TorchvisionEfficientNet):
        return list(backbone.net.features)
    if isinstance(backbone, TinyCNN):
        f = list(backbone.features)
        return [nn.ModuleList(f[i : i + 3]) for i in range(0, len(f), 3)]
    return [backbone]


def frozen_layers(model: SiameseNet, cfg: FaceTrainConfig, epoch: int) -> list[nn.Module]:
    """Backbone layers that do not train in ``epoch`` (0-based): all of them during ``--freeze-epochs``
    or with ``--backbone-lr-mult 0``, else all but the last ``--trainable-layers``."""
    layers = backbone_layers(model.backbone)
    if epoch < cfg.freeze_epochs or cfg.backbone_lr_mult == 0:
        return layers
    if cfg.trainable_layers is None:
        return []
    return layers[: max(0, len(layers) - cfg.trainable_layers)]


def set_trainable(model: SiameseNet, frozen: list[nn.Module]) -> None:
    """Gradients for every parameter except those of ``frozen`` layers.

    A frozen prefix also saves its backward pass: autograd stops where the
    first trainable layer begins.
    """
    for p in model.parameters():
        p.requires_grad_(True)
    for layer in frozen:
        for p in layer.parameters():
            p.requires_grad_(False)


def set_train_mode(model: SiameseNet, frozen: list[nn.Module], freeze_bn: bool) -> None:
    """``model.train()``, except frozen layers (and with ``freeze_bn`` every backbone BatchNorm) stay in eval mode.

    Frozen layers then behave exactly as at evaluation (no batch statistics,
    no stochastic depth); BatchNorm in eval mode keeps the ImageNet running
    statistics, so training and evaluation normalise alike.
    """
    model.train()
    for layer in frozen:
        layer.eval()
    if freeze_bn:
        for m in model.backbone.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def run_config(run: RunDir) -> FaceTrainConfig:
    """The saved configuration of a face run (a :class:`CnnlabError` when the folder is not one)."""
    return from_dict(FaceTrainConfig, run.read_config(), source=str(run.config_path))


def load_run_model(run: RunDir, checkpoint: str = "best",
                   device: str | torch.device = "cpu") -> tuple[SiameseNet, FaceTrainConfig]:
    """The network of a face run with the weights of ``checkpoints/<checkpoint>.pt``, in eval mode."""
    cfg = run_config(run)
    path = run.checkpoints / f"{checkpoint}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; is {run.path} a finished face run?")
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") not in (None, "faces"):
        raise CheckpointError(f"{path} is a {ckpt.get('kind')} checkpoint, not a face run's")
    model = build_model(cfg, weights="none")
    load_model_state(model, ckpt.get("model"), path, "this run's network")
    return model.to(device).eval(), cfg
