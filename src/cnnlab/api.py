"""Using a trained run from Python: :class:`FaceVerifier` for a face run, :class:`Classifier` for a CIFAR run.

    from cnnlab import FaceVerifier
    fv = FaceVerifier.from_run("runs/view1")
    fv.verify("a.jpg", "b.jpg")          # {"distance": .., "threshold": .., "same_person": .., "faces": ..}

Results have the shape the CLI's ``--json`` prints: ``verify`` as ``faces verify``,
``identify`` as ``faces identify``, ``Classifier.predict`` as ``cifar predict``.

Images may be given as file paths, PIL images or uint8 numpy arrays (H, W, 3)
in RGB order, each at least 8x8 pixels and at most about 89 megapixels, as
files must be; each is decoded exactly as in training (upright 8-bit RGB; for
faces the run's ``--align``: the face detected and aligned, or the centre
crop, at the run's size; 32x32 for CIFAR). The CLI's ``faces verify``,
``faces identify`` and ``cifar predict`` are built on these classes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from cnnlab.cifar.train import load_run_model as load_cifar_run
from cnnlab.data.augment import eval_transform
from cnnlab.data.cifar10 import CLASSES, IMAGE_SIZE
from cnnlab.data.align import DetectorMissing, NoFace, Prepared
from cnnlab.data.images import _to_rgb, check_size, decode_rgb, resize_exact, upright
from cnnlab.engine import check_finite, infer
from cnnlab.errors import CnnlabError, DataError
from cnnlab.faces.verify import (_gallery, check_k, face_dict, load_image, nearest_people, open_run, pair_verdict,
                                 prepare_input, to_tensor)
from cnnlab.files import not_a_regular_file
from cnnlab.run import RunDir
from cnnlab.runtime import resolve_device


def _rgb(image, what: str) -> Image.Image:
    """One image (path, PIL image or uint8 array (H, W, 3)) as an 8-bit RGB PIL image."""
    if isinstance(image, (str, os.PathLike)):
        problem = not_a_regular_file(image)
        if problem:
            raise DataError(f"image {image} {problem}")
        return decode_rgb(image)
    if isinstance(image, Image.Image):
        check_size(image.size, what)  # the limits of a file; checked again once upright, as a file's are
        img = upright(image, what)  # as a file would be decoded: EXIF orientation applied
        check_size(img.size, what)
        return _to_rgb(img)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"{what}: expected a uint8 array of shape (H, W, 3) in RGB order, got "
                            f"{image.dtype} {tuple(image.shape)}")
        check_size((image.shape[1], image.shape[0]), what)
        return Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    raise DataError(f"{what}: expected a file path, a PIL image or a uint8 numpy array (H, W, 3), "
                    f"got {type(image).__name__}")


def _single(images) -> bool:
    """Whether ``images`` is one image (path, PIL image, (H, W, 3) array) rather than a batch of them."""
    return isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3)


def _as_list(images) -> list:
    """A batch of images as a list; a single image (path, PIL image, (H, W, 3) array) is a batch of one."""
    if _single(images):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if not len(images):
            raise DataError(f"images: expected at least one image, got an array of shape {tuple(images.shape)}")
        return list(images)
    if not isinstance(images, Sequence) or not images:
        raise DataError("images: expected an image or a non-empty list of them")
    return list(images)


def _stack(prepared: list[Prepared]) -> torch.Tensor:
    return torch.stack([to_tensor(p.image) for p in prepared])


def _name(image, i: int) -> str:
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"


_CENTRE = 'FaceVerifier.from_run(..., align="center")'  # how a user of this API asks for the centre crop


@contextlib.contextmanager
def _centre_crop_advice():
    """A face that is not found, or a detector that is not installed, advised with this API's parameter."""
    try:
        yield
    except NoFace as e:
        raise e.advising(f"use a photo in which the face is visible, or open the run with {_CENTRE} to take "
                         "the centre crop instead") from None
    except DetectorMissing as e:
        raise e.advising(f"or open the run with {_CENTRE} to take the centre crop instead") from None


class FaceVerifier:
    """A trained face run: embed faces, verify a pair, identify a face in a gallery.

    Distances are Euclidean between embeddings; two faces are the same
    person when their distance is at most :attr:`threshold`, the one
    training chose on its validation pairs. Each input must hold a face
    (:class:`cnnlab.data.align.NoFace`, a :class:`~cnnlab.errors.DataError`
    naming it, otherwise) unless the run centre-crops (trained with ``--align
    center``, or opened with ``align="center"``).
    """

    def __init__(self, opened):
        self._run = opened  # a cnnlab.faces.verify.FaceRun
        self.threshold: float = opened.threshold
        self.device: torch.device = opened.device
        self.model = opened.model
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
        return cls(open_run(path, device, align, allow_unfinished))

    def prepare(self, images) -> list[Prepared]:
        """Each image made ready for the network: ``.image`` (the aligned or cropped face, PIL), ``.face``
        (the detected face: box, landmarks, score; None when centre-cropped) and ``.faces`` (how many)."""
        cfg, align = self._run.cfg, self.align
        with _centre_crop_advice():
            return [load_image(im, cfg, align) if isinstance(im, (str, os.PathLike))
                    else prepare_input(_rgb(im, _name(im, i)), _name(im, i), cfg, align)
                    for i, im in enumerate(_as_list(images))]

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (N, 3, S, S): each image decoded, its face aligned (or centre-cropped) and resized as in training."""
        return _stack(self.prepare(images))

    def embed(self, images) -> torch.Tensor:
        """Embeddings (N, D), float32 on the CPU, of one image or a list of them."""
        return self._run.embed(self.preprocess(images))

    def verify(self, a, b) -> dict:
        """``{"distance", "threshold", "same_person", "faces"}`` for two face images.

        ``faces``: for each image the face used, ``{"box": [x0, y0, x1, y1],
        "landmarks": [[x, y] x 5], "score"}`` in its pixels, or None when the
        run centre-crops.
        """
        prepared = self.prepare([a, b])
        return {**pair_verdict(self._run.embed(_stack(prepared)), self.threshold),
                "faces": [face_dict(p) for p in prepared]}

    def identify(self, probe, gallery_dir: str | os.PathLike, k: int = 10) -> list[dict]:
        """The ``k`` people of ``gallery_dir`` (one sub-folder per person) nearest to ``probe``, nearest first.

        Each entry: ``rank``, ``name``, ``distance`` (to the person's nearest
        image), ``image`` (that image, relative to the gallery) and
        ``same_person``. The gallery's embeddings are cached per run and gallery.
        """
        check_k(k)
        r = self._run
        with _centre_crop_advice():
            g = _gallery(r.run, r.model, r.cfg, gallery_dir, r.device, r.precision, r.channels_last, r.align)
        return nearest_people(self.embed(probe), g, k, self.threshold)


class Classifier:
    """A trained CIFAR run: the top-k classes of images, with probabilities."""

    def __init__(self, run, model, classes: list[str], device: torch.device):
        self.run, self.model, self.classes, self.device = run, model.eval(), classes, device

    @classmethod
    def from_run(cls, path: str | os.PathLike, device: str = "auto", allow_unfinished: bool = False) -> "Classifier":
        """The best checkpoint of the finished CIFAR run at ``path``; a run that has not finished training is a
        :class:`~cnnlab.errors.UnfinishedRun` unless ``allow_unfinished``."""
        run = RunDir(path)
        dev = resolve_device(device)
        model, _ = load_cifar_run(run, "best", dev, allow_unfinished)
        classes = [str(c) for c in run.read_summary().get("classes") or CLASSES]
        if len(classes) != model.fc.out_features:
            raise CnnlabError(f"{run.summary_path} names {len(classes)} classes, the network of "
                              f"{run.path} has {model.fc.out_features} outputs")
        return cls(run, model, classes, dev)

    def preprocess(self, images) -> torch.Tensor:
        """uint8 (N, 3, 32, 32): each image decoded to RGB and resized to 32x32 as CIFAR folders are in training."""
        return torch.stack([to_tensor(resize_exact(_rgb(im, _name(im, i)), IMAGE_SIZE))
                            for i, im in enumerate(_as_list(images))])

    def probabilities(self, images) -> torch.Tensor:
        """Class probabilities (N, C), float32 on the CPU; a :class:`~cnnlab.errors.NonFiniteOutput` where the
        network gives NaN, of which no class is the most probable."""
        logits = infer(self.model, self.preprocess(images), eval_transform, device=self.device)
        check_finite(logits, "logits", f"the network of {self.run.best_checkpoint} (fp32 on {self.device})")
        return torch.softmax(logits, dim=1)

    def predict(self, images, k: int = 5) -> dict | list[dict]:
        """The ``k`` most probable classes of each image, most probable first, as ``cnnlab cifar predict --json``
        prints them: for one image ``{"image": .., "top": [{"class": .., "probability": ..}, ..]}``, for a list
        of images (or an (N, H, W, 3) array) a list of those, in order. ``image`` is the path as given (a str),
        None for a PIL image or an array."""
        check_k(k)
        batch = _as_list(images)
        p = self.probabilities(batch)
        top = torch.topk(p, min(k, p.shape[1]), dim=1)
        results = [{"image": os.fspath(im) if isinstance(im, (str, os.PathLike)) else None,
                    "top": [{"class": self.classes[c], "probability": float(v)}
                            for v, c in zip(vals.tolist(), idx.tolist())]}
                   for im, vals, idx in zip(batch, top.values, top.indices)]
        return results[0] if _single(images) else results


__all__ = ["Classifier", "FaceVerifier", "check_k"]
