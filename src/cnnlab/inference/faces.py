"""A trained face run in use: :class:`FaceVerifier` embeds faces, verifies a pair, identifies a face in a gallery.

Its answers have the shape ``cnnlab faces verify --json`` and ``cnnlab faces
identify --json`` print, which are built on it, as ``cnnlab serve`` is.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from cnnlab.data.align import Prepared, centre_crop_advice
from cnnlab.errors import CnnlabError, param
from cnnlab.inference.gallery import Gallery
from cnnlab.inference.images import face_dict, prepare_faces, stack
from cnnlab.inference.runs import FaceRun, open_face_run
from cnnlab.losses import LpDistance

Network = Callable[[torch.Tensor], torch.Tensor]
"""What embeds a batch made ready for the network: uint8 (N, 3, S, S) in, float32 embeddings (N, D) out."""

_CENTRE = 'FaceVerifier.from_run(..., align="center")'  # how a user of this class asks for the centre crop


def _centre_crop_advice():
    """A face that is not found, or a detector that is not installed, advised with this class's parameter."""
    return centre_crop_advice(f"use a photo in which the face is visible, or open the run with {_CENTRE} to take "
                              "the centre crop instead", f"or open the run with {_CENTRE} to take the centre crop instead")


def check_k(k) -> None:
    """``k``, how many people or classes to list, is a positive integer (a :class:`CnnlabError` otherwise)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CnnlabError(f"{param('k')}: expected a positive integer, got {k!r}")


def pair_verdict(e: torch.Tensor, threshold: float) -> dict:
    """``{"distance", "threshold", "same_person"}`` of two embeddings ``e`` (2, D)."""
    distance = float(LpDistance().paired(e[:1], e[1:])[0])
    return {"distance": distance, "threshold": threshold, "same_person": distance <= threshold}


class FaceVerifier:
    """A trained face run: embed faces, verify a pair, identify a face in a gallery.

    Distances are Euclidean between embeddings; two faces are the same
    person when their distance is at most :attr:`threshold`, the one
    training chose on its validation pairs. Each input must hold a face
    (:class:`cnnlab.data.align.NoFace`, a :class:`~cnnlab.errors.DataError`
    naming it, otherwise) unless the run centre-crops (trained with ``--align
    center``, or opened with ``align="center"``).

    :attr:`network` embeds every batch this verifier makes ready (see
    :data:`Network`): the run's own :meth:`FaceRun.embeddings` unless another
    is given (:meth:`with_network`), e.g. a micro-batcher that shares the
    network among concurrent requests.
    """

    def __init__(self, opened: FaceRun, network: Network | None = None):
        self.opened = opened
        self.network: Network = network or opened.embeddings
        self.threshold: float = opened.threshold
        self.device: torch.device = opened.device
        self.model = opened.model
        self.cfg = opened.cfg
        self.align: str = opened.align

    @classmethod
    def from_run(cls, path: str | os.PathLike, device: str = "auto", align: str | None = None,
                 allow_unfinished: bool = False) -> "FaceVerifier":
        """The best checkpoint of the finished face run at ``path``, on ``device`` (auto: a GPU if there is one).

        ``align`` (auto, detect, center): how faces are found, when not as the
        run was trained (a warning says the threshold may then not fit). A run
        that has not finished training is a :class:`~cnnlab.errors.UnfinishedRun`
        unless ``allow_unfinished`` (it still needs a threshold: one chosen
        before the run was extended).
        """
        return cls(open_face_run(path, device, align, allow_unfinished))

    def with_network(self, network: Network) -> "FaceVerifier":
        """This verifier's run, threshold and align mode, embedding through ``network`` instead: e.g. a
        micro-batcher that calls this verifier's :attr:`network` once for several requests."""
        return type(self)(self.opened, network)

    def prepare(self, images) -> list[Prepared]:
        """Each image made ready for the network: ``.image`` (the aligned or cropped face, PIL), ``.face``
        (the detected face: box, landmarks, score; None when centre-cropped) and ``.faces`` (how many)."""
        with _centre_crop_advice():
            return prepare_faces(images, self.cfg, self.align)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (N, 3, S, S): each image decoded, its face aligned (or centre-cropped) and resized as in training."""
        return stack(self.prepare(images))

    def embed(self, images) -> torch.Tensor:
        """Embeddings (N, D), float32 on the CPU, of one image or a list of them."""
        return self.network(self.preprocess(images))

    def verify(self, a, b) -> dict:
        """``{"distance", "threshold", "same_person", "faces"}`` for two face images.

        ``faces``: for each image the face used, ``{"box": [x0, y0, x1, y1],
        "landmarks": [[x, y] x 5], "score"}`` in its pixels, or None when the
        run centre-crops.
        """
        prepared = self.prepare([a, b])
        return {**pair_verdict(self.network(stack(prepared)), self.threshold),
                "faces": [face_dict(p) for p in prepared]}

    def gallery(self, folder: str | os.PathLike) -> Gallery:
        """The people of ``folder`` (one sub-folder each) embedded by this run, cached per run and gallery."""
        with _centre_crop_advice():
            return Gallery.embedded(self.opened, folder)

    def identify(self, probe, gallery: str | os.PathLike | Gallery, k: int = 10) -> list[dict]:
        """The ``k`` people of ``gallery`` nearest to ``probe``, nearest first.

        ``gallery``: a folder (one sub-folder per person; see :meth:`gallery`)
        or a :class:`Gallery` it gave. Each entry: ``rank``, ``name``,
        ``distance`` (to the person's nearest image), ``image`` (that image,
        relative to the gallery) and ``same_person``.
        """
        check_k(k)
        g = gallery if isinstance(gallery, Gallery) else self.gallery(gallery)
        return g.search(self.embed(probe), k, self.threshold)
