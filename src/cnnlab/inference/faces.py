"""A trained face run in use: :class:`FaceVerifier` embeds faces, verifies a pair, identifies a face in a gallery.

Its answers have the shape ``cnnlab faces verify --json`` and ``cnnlab faces
identify --json`` print, which are built on it, as ``cnnlab serve`` is.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch

from cnnlab.data.align import MAX_COMPARED, Prepared, centre_crop_advice
from cnnlab.errors import CnnlabError, param
from cnnlab.inference.gallery import Gallery
from cnnlab.inference.images import face_candidates, face_dict, prepare_faces, stack
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


def closest_pair(ea: torch.Tensor, eb: torch.Tensor) -> tuple[int, int]:
    """The rows (i, j) of the nearest pair between the embeddings ``ea`` (M, D) and ``eb`` (N, D); a NaN
    distance wins, so that a network that gives NaN is never answered for by a finite pair."""
    d = LpDistance().pairwise(ea, eb)  # (M, N)
    k = int(torch.argmax(d.isnan().flatten().to(torch.uint8))) if bool(d.isnan().any()) else int(torch.argmin(d))
    return divmod(k, d.shape[1])


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

    def candidates(self, images, limit: int = MAX_COMPARED) -> list[list[Prepared]]:
        """For each image, its faces made ready for the network (as :meth:`prepare` gives one), the one the
        photo is of first, at most ``limit``: what :meth:`verify` compares and :meth:`identify_faces` answers for."""
        with _centre_crop_advice():
            return face_candidates(images, self.cfg, self.align, limit)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (N, 3, S, S): each image decoded, its face aligned (or centre-cropped) and resized as in training."""
        return stack(self.prepare(images))

    def embed(self, images) -> torch.Tensor:
        """Embeddings (N, D), float32 on the CPU, of one image or a list of them."""
        return self.network(self.preprocess(images))

    def verify(self, a, b) -> dict:
        """``{"distance", "threshold", "same_person", "faces", "compared"}`` for two face images.

        Where an image holds several faces, up to
        :data:`~cnnlab.data.align.MAX_COMPARED` of each (the one the photo is
        of first) are compared and the answer is for the closest pair: is the
        person of one photo in the other. ``faces``: for each image the face
        of that pair, ``{"box": [x0, y0, x1, y1], "landmarks": [[x, y] x 5],
        "score"}`` in its pixels (with ``sharpness`` and ``quality`` where the
        image held several), or None when the run centre-crops. ``compared``:
        for each image, every face compared, in that order.
        """
        ca, cb = self.candidates([a, b])
        e = self.network(stack(ca + cb))
        i, j = closest_pair(e[:len(ca)], e[len(ca):])
        return {**pair_verdict(torch.stack([e[i], e[len(ca) + j]]), self.threshold),
                "faces": [face_dict(ca[i]), face_dict(cb[j])],
                "compared": [[face_dict(p) for p in ca], [face_dict(p) for p in cb]]}

    def gallery(self, folder: str | os.PathLike) -> Gallery:
        """The people of ``folder`` (one sub-folder each) embedded by this run, cached per run and gallery."""
        with _centre_crop_advice():
            return Gallery.embedded(self.opened, folder)

    def identify(self, probe, gallery: str | os.PathLike | Gallery, k: int = 10) -> list[dict]:
        """The ``k`` people of ``gallery`` nearest to the face ``probe`` is of, nearest first (:meth:`identify_faces`
        answers for each face of a photo).

        ``gallery``: a folder (one sub-folder per person; see :meth:`gallery`)
        or a :class:`Gallery` it gave. Each entry: ``rank``, ``name``,
        ``distance`` (to the person's nearest image), ``image`` (that image,
        relative to the gallery) and ``same_person``.
        """
        return self.identify_faces(probe, gallery, k, limit=1)[0]["matches"]

    def identify_faces(self, probe, gallery: str | os.PathLike | Gallery, k: int = 10,
                       limit: int = MAX_COMPARED) -> list[dict]:
        """:meth:`identify` for each face of ``probe`` (at most ``limit``, the one the photo is of first):
        ``[{"face": {"box", "landmarks", "score", ...} or None, "matches": [...]}, ...]``."""
        check_k(k)
        g = gallery if isinstance(gallery, Gallery) else self.gallery(gallery)
        (each,) = self.candidates([probe], limit)
        e = self.network(stack(each))
        return [{"face": face_dict(p), "matches": g.search(e[i:i + 1], k, self.threshold)}
                for i, p in enumerate(each)]
