"""Images made ready for a trained network, exactly as training made its images ready.

An input is a file path, a PIL image or a uint8 numpy array (H, W, 3) in RGB
order. A file goes through the one decoder of every image cnnlab reads
(:func:`cnnlab.data.images.decode_rgb`: the size limits from its header,
upright 8-bit RGB); a PIL image or an array meets the same limits and the same
conversion. Then a face run finds the face as its align mode says (detected
and aligned to the five-point template, or the centre crop) at its image size,
and a CIFAR run resizes to 32x32 as image folders are resized in training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.config import FaceTrainConfig
from cnnlab.data.align import MAX_COMPARED, NoFace, Prepared, prepare_each
from cnnlab.data.cifar10 import IMAGE_SIZE
from cnnlab.data.images import check_size, decode_rgb, resize_exact, to_rgb, upright
from cnnlab.errors import DataError
from cnnlab.files import not_a_regular_file

logger = logging.getLogger(__name__)


def as_rgb(image, what: str) -> Image.Image:
    """One image (path, PIL image or uint8 array (H, W, 3)) as an 8-bit RGB PIL image; ``what`` names it."""
    if isinstance(image, (str, os.PathLike)):
        problem = not_a_regular_file(image)
        if problem:
            raise DataError(f"image {image} {problem}")
        return decode_rgb(image)
    if isinstance(image, Image.Image):
        check_size(image.size, what)  # the limits of a file; checked again once upright, as a file's are
        img = upright(image, what)  # as a file would be decoded: EXIF orientation applied
        check_size(img.size, what)
        return to_rgb(img)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DataError(f"{what}: expected a uint8 array of shape (H, W, 3) in RGB order, got "
                            f"{image.dtype} {tuple(image.shape)}")
        check_size((image.shape[1], image.shape[0]), what)
        return Image.fromarray(np.ascontiguousarray(image), mode="RGB")
    raise DataError(f"{what}: expected a file path, a PIL image or a uint8 numpy array (H, W, 3), "
                    f"got {type(image).__name__}")


def is_single(images) -> bool:
    """Whether ``images`` is one image (path, PIL image, (H, W, 3) array) rather than a batch of them."""
    return isinstance(images, (str, os.PathLike, Image.Image)) or (isinstance(images, np.ndarray) and images.ndim == 3)


def as_batch(images) -> list:
    """A batch of images as a list; a single image (path, PIL image, (H, W, 3) array) is a batch of one."""
    if is_single(images):
        return [images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if not len(images):
            raise DataError(f"images: expected at least one image, got an array of shape {tuple(images.shape)}")
        return list(images)
    if not isinstance(images, Sequence) or not images:
        raise DataError("images: expected an image or a non-empty list of them")
    return list(images)


def image_name(image, i: int) -> str:
    """How messages name the ``i``-th image of a batch: its path, or ``image i``."""
    return str(image) if isinstance(image, (str, os.PathLike)) else f"image {i}"


def to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL RGB image as uint8 (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def stack(prepared: Sequence[Prepared]) -> torch.Tensor:
    """The faces of ``prepared`` as the network's uint8 batch (N, 3, S, S)."""
    return torch.stack([to_tensor(p.image) for p in prepared])


# --------------------------------------------------------------------------- faces


def _candidates(img: Image.Image, name: str, cfg: FaceTrainConfig, align: str, limit: int) -> list[Prepared]:
    """The faces of one input image (upright RGB PIL) as the network of the face run ``cfg`` sees them, the
    one the photo is of first (:func:`cnnlab.data.align.ranked`), at most ``limit`` of them.

    With ``auto`` or ``detect``, an image without a face is a :class:`NoFace`
    naming ``name``; several faces are logged, naming ``name``.
    """
    try:  # auto's fallback is for the images of a folder; a single input must hold a face
        each = prepare_each(img, cfg.image_size, cfg.crop, "detect" if align == "auto" else align, name,
                            limit=limit)
    except NoFace:
        raise NoFace(name, "use a photo in which the face is visible, or take the centre crop of the image "
                           "instead of looking for a face") from None
    if each[0].faces > 1:
        logger.warning("%s: %d faces found; %s", name, each[0].faces,
                    "using the one the photo is of (by confidence, sharpness and size)" if limit == 1
                    else f"comparing the first {len(each)} (by confidence, sharpness and size)")
    return each


def face_candidates(images, cfg: FaceTrainConfig, align: str | None = None,
                    limit: int = MAX_COMPARED) -> list[list[Prepared]]:
    """For each of ``images`` (one or a list: paths, PIL images, arrays), its faces made ready for the network
    of the face run ``cfg``, the one the photo is of first, at most ``limit``; ``align``: the run's align mode
    unless given. A centre-cropping run gives one (the centre crop) per image."""
    align = align or cfg.align
    return [_candidates(as_rgb(im, image_name(im, i)), image_name(im, i), cfg, align, limit)
            for i, im in enumerate(as_batch(images))]


def prepare_faces(images, cfg: FaceTrainConfig, align: str | None = None) -> list[Prepared]:
    """Each of ``images`` decoded and the face it is of made ready (see :func:`face_candidates`)."""
    return [each[0] for each in face_candidates(images, cfg, align, limit=1)]


def load_face(path: str | os.PathLike, cfg: FaceTrainConfig, align: str | None = None) -> Prepared:
    """One image file decoded and the face it is of made ready; ``align``: the run's align mode unless given."""
    return prepare_faces([Path(path)], cfg, align)[0]


def face_dict(p: Prepared) -> dict | None:
    """The face an input was aligned on, as JSON-ready numbers (None: centre-cropped)."""
    return p.face.to_dict() if p.face is not None else None


# --------------------------------------------------------------------------- CIFAR


def cifar_batch(images) -> torch.Tensor:
    """uint8 (N, 3, 32, 32): each of ``images`` decoded to RGB and resized to 32x32 as CIFAR folders are in
    training."""
    return torch.stack([to_tensor(resize_exact(as_rgb(im, image_name(im, i)), IMAGE_SIZE))
                        for i, im in enumerate(as_batch(images))])
