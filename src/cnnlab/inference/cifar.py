"""A trained CIFAR run in use: :class:`Classifier` gives the most probable classes of images.

Its answers have the shape ``cnnlab cifar predict --json`` prints, which is
built on it, as ``cnnlab serve`` is.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from cnnlab.inference.faces import check_k
from cnnlab.inference.images import as_batch, cifar_batch, is_single
from cnnlab.inference.runs import CifarRun, open_cifar_run

Network = Callable[[torch.Tensor], torch.Tensor]
"""What classifies a batch made ready for the network: uint8 (N, 3, 32, 32) in, probabilities (N, C) out."""


class Classifier:
    """A trained CIFAR run: the top-k classes of images, with probabilities.

    :attr:`network` classifies every batch this classifier makes ready (see
    :data:`Network`): the run's own :meth:`CifarRun.probabilities` unless
    another is given (:meth:`with_network`), e.g. a micro-batcher that shares
    the network among concurrent requests.
    """

    def __init__(self, opened: CifarRun, network: Network | None = None):
        self.opened = opened
        self.network: Network = network or opened.probabilities
        self.run, self.model, self.classes, self.device = opened.run, opened.model, opened.classes, opened.device

    @classmethod
    def from_run(cls, path: str | os.PathLike, device: str = "auto", allow_unfinished: bool = False) -> "Classifier":
        """The best checkpoint of the finished CIFAR run at ``path``; a run that has not finished training is a
        :class:`~cnnlab.errors.UnfinishedRun` unless ``allow_unfinished``."""
        return cls(open_cifar_run(path, device, allow_unfinished))

    def with_network(self, network: Network) -> "Classifier":
        """This classifier's run and classes, classifying through ``network`` instead: e.g. a micro-batcher
        that calls this classifier's :attr:`network` once for several requests."""
        return type(self)(self.opened, network)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (N, 3, 32, 32): each image decoded to RGB and resized to 32x32 as CIFAR folders are in training."""
        return cifar_batch(images)

    def probabilities(self, images) -> torch.Tensor:
        """Class probabilities (N, C), float32 on the CPU; a :class:`~cnnlab.errors.NonFiniteOutput` where the
        network gives NaN, of which no class is the most probable."""
        return self.network(self.preprocess(images))

    def predict(self, images, k: int = 5) -> dict | list[dict]:
        """The ``k`` most probable classes of each image, most probable first, as ``cnnlab cifar predict --json``
        prints them: for one image ``{"image": .., "top": [{"class": .., "probability": ..}, ..]}``, for a list
        of images (or an (N, H, W, 3) array) a list of those, in order. ``image`` is the path as given (a str),
        None for a PIL image or an array."""
        check_k(k)
        batch = as_batch(images)
        p = self.probabilities(batch)
        top = torch.topk(p, min(k, p.shape[1]), dim=1)
        results = [{"image": os.fspath(im) if isinstance(im, (str, os.PathLike)) else None,
                    "top": [{"class": self.classes[c], "probability": float(v)}
                            for v, c in zip(vals.tolist(), idx.tolist())]}
                   for im, vals, idx in zip(batch, top.values, top.indices)]
        return results[0] if is_single(images) else results
