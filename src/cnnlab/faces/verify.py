"""Using a trained run: ``cnnlab faces verify`` (same person or not) and ``cnnlab faces identify`` (who is it).

Images go through exactly the decoding of training: any PIL mode to upright
8-bit RGB, then the run's ``--align`` (the face detected and aligned to the
five-point template, or the centre crop of ``--crop``) at ``--image-size``.
An input in which no face is found is an error naming it (unless the run
centre-crops); an input with several faces uses the largest, with a warning.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from cnnlab.config import FaceTrainConfig
from cnnlab.data.cache import cache_dir, fingerprint, load_checked, save_checked
from cnnlab.data.align import NoFace, Prepared, check_align, prepare
from cnnlab.data.faces import load_faces
from cnnlab.data.images import decode_rgb
from cnnlab.engine import check_finite
from cnnlab.errors import CnnlabError, DataError
from cnnlab.faces.train import embed, load_run_model, run_config
from cnnlab.files import not_a_regular_file
from cnnlab.losses import LpDistance
from cnnlab.run import RunDir
from cnnlab.runtime import choose_precision, probe_hardware, resolve_device, select_precision

logger = logging.getLogger(__name__)

_GALLERY_CACHE_VERSION = 2  # 2: the gallery's faces are found as the run's --align says


def prepare_input(img, name: str, cfg: FaceTrainConfig, align: str) -> Prepared:
    """One input image (upright RGB PIL) as the run's network sees it.

    With ``auto`` or ``detect``, an image without a face is a :class:`NoFace`
    naming ``name``; several faces: the largest, with a warning naming ``name``.
    """
    try:  # auto's fallback is for the images of a folder; a single input must hold a face
        p = prepare(img, cfg.image_size, cfg.crop, "detect" if align == "auto" else align, name)
    except NoFace:
        raise NoFace(name, "use a photo in which the face is visible, or take the centre crop of the image "
                           "instead of looking for a face") from None
    if p.faces > 1:
        logger.warning("%s: %d faces found; using the largest", name, p.faces)
    return p


def to_tensor(img) -> torch.Tensor:
    """A PIL RGB image as uint8 (3, H, W)."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)))


def load_image(path: str | os.PathLike, cfg: FaceTrainConfig, align: str | None = None) -> Prepared:
    """One image file decoded and made ready as in training (see :func:`prepare_input`)."""
    path = Path(path)
    problem = not_a_regular_file(path)
    if problem:
        raise DataError(f"image {path} {problem}")
    return prepare_input(decode_rgb(path), str(path), cfg, align or cfg.align)


def _threshold(run: RunDir) -> float:
    run_config(run)  # a face run, or an error naming the study it belongs to
    summary = run.read_summary()
    if summary.get("threshold") is None:
        raise CnnlabError(f"{run.path} has no decision threshold in summary.json; it is written when training "
                          f"ends (finish the run with cnnlab faces train --resume {run.path})")
    return float(summary["threshold"])


def _precision(run: RunDir, cfg, dev: torch.device) -> tuple[str, bool]:
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
    model: torch.nn.Module
    cfg: FaceTrainConfig
    threshold: float
    device: torch.device
    precision: str
    channels_last: bool
    align: str  # how inputs are made ready: the run's --align unless told otherwise

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings (N, D), float32 on the CPU, of uint8 images (N, 3, S, S) decoded as in training; a
        :class:`~cnnlab.errors.NonFiniteOutput` rather than a NaN embedding, from which any distance would be meaningless."""
        return check_finite(embed(self.model, images, device=self.device, batch_size=self.cfg.eval_batch_size,
                                  precision=self.precision, channels_last=self.channels_last),
                            "embeddings", _source(self.run, self.precision, self.device))


def _source(run: RunDir, precision: str, device: torch.device) -> str:
    return f"the network of {run.best_checkpoint} ({precision} on {device})"


def open_run(run_dir: str | os.PathLike, device: str = "auto", align: str | None = None,
             allow_unfinished: bool = False) -> FaceRun:
    """The best checkpoint of a finished face run, with its threshold; an error saying what to do otherwise.

    ``align``: how inputs are made ready, when not as the run was trained
    (``--align``); a warning says that distances may then not match the
    run's threshold. ``allow_unfinished``: use a run that has not finished
    training, with the threshold it has (one chosen before the run was
    extended); one that never finished has none and is refused.
    """
    run = RunDir(run_dir)
    dev = resolve_device(device)
    model, cfg = load_run_model(run, "best", dev, allow_unfinished)
    threshold = _threshold(run)
    if align is not None and check_align(align) != cfg.align:
        logger.warning("%s was trained with --align %s; using --align %s, so distances may not be on the scale of "
                       "its threshold", run.path, cfg.align, align)
    return FaceRun(run, model, cfg, threshold, dev, *_precision(run, cfg, dev), align or cfg.align)


def pair_verdict(e: torch.Tensor, threshold: float) -> dict:
    """``{"distance", "threshold", "same_person"}`` of two embeddings ``e`` (2, D)."""
    distance = float(LpDistance().paired(e[:1], e[1:])[0])
    return {"distance": distance, "threshold": threshold, "same_person": distance <= threshold}


def verify(run_dir: str | os.PathLike, image_a: str | os.PathLike, image_b: str | os.PathLike,
           device: str = "auto", align: str | None = None, allow_unfinished: bool = False) -> dict:
    """``{"distance", "threshold", "same_person", "faces"}`` for two image files, with the run's best checkpoint.

    The threshold is the one training chose on its validation pairs; the two
    images are called the same person when their distance is at most it.
    ``faces``: for each image the face used (box, landmarks, score), or None
    where the run centre-crops. :class:`cnnlab.FaceVerifier` does the same for
    PIL images and arrays too.
    """
    r = open_run(run_dir, device, align, allow_unfinished)
    prepared = [load_image(p, r.cfg, r.align) for p in (image_a, image_b)]
    x = torch.stack([to_tensor(p.image) for p in prepared])  # (2, 3, S, S)
    return {**pair_verdict(r.embed(x), r.threshold), "faces": [face_dict(p) for p in prepared]}


def face_dict(p: Prepared) -> dict | None:
    """The face an input was aligned on, as JSON-ready numbers (None: centre-cropped)."""
    return p.face.to_dict() if p.face is not None else None


def _gallery(run: RunDir, model, cfg, gallery: str | os.PathLike, dev: torch.device, precision: str,
             channels_last: bool, align: str | None = None) -> dict:
    """Embeddings of every image under ``gallery`` (one folder per person), cached per run and gallery.

    The cache key covers the gallery's files (names, sizes, modification
    times), the image size and crop, and the run's best checkpoint, so adding
    a photo or training the run further embeds the gallery again.
    """
    align = align or cfg.align
    faces = load_faces(gallery, image_size=cfg.image_size, crop=cfg.crop, skip_bad=True, align=align)
    ckpt = run.best_checkpoint.resolve()
    st = ckpt.stat()
    key = fingerprint([faces.root / f for f in faces.files], faces.root, _GALLERY_CACHE_VERSION, cfg.image_size,
                      cfg.crop, align, str(ckpt), st.st_size, st.st_mtime_ns, precision, channels_last)
    path = cache_dir() / "faces-gallery" / f"{key}.pt"
    meta = {"version": _GALLERY_CACHE_VERSION, "image_size": cfg.image_size, "crop": cfg.crop, "align": align,
            "embedding_dim": cfg.embedding_dim, "files": len(faces.files), "root": str(faces.root)}
    cached = load_checked(path, key=key, meta=meta, what="gallery cache",
                          check=lambda g: _gallery_problem(g, faces, cfg.embedding_dim))
    if cached is not None:
        logger.info("gallery embeddings from the cache %s", path)
        return cached
    emb = check_finite(embed(model, faces.images, device=dev, batch_size=cfg.eval_batch_size, precision=precision,
                             channels_last=channels_last, desc="embedding the gallery"),
                       "embeddings of the gallery", _source(run, precision, dev))
    out = {"embeddings": emb, "labels": faces.labels, "names": list(faces.names), "files": list(faces.files),
           "root": str(faces.root)}
    save_checked(path, out, key=key, meta=meta, what="gallery cache")
    return out


def _gallery_problem(g: dict, faces, dim: int) -> str | None:
    """Whether cached gallery embeddings are those of ``faces``, the gallery as it is now (None: they are)."""
    if g.get("names") != list(faces.names) or g.get("files") != list(faces.files):
        return "its people or files are not those of the gallery"
    labels, emb = g.get("labels"), g.get("embeddings")
    if not isinstance(labels, torch.Tensor) or not torch.equal(labels, faces.labels):
        return "its labels are not those of the gallery"
    if not isinstance(emb, torch.Tensor) or not emb.is_floating_point() or emb.ndim != 2 \
            or tuple(emb.shape) != (len(labels), dim) or not bool(torch.isfinite(emb).all()):
        return f"its embeddings are not one finite {dim}-d vector per gallery image"
    return None


def check_k(k) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise CnnlabError(f"-k: expected a positive integer, got {k!r}")


def identify(run_dir: str | os.PathLike, probe: str | os.PathLike, gallery: str | os.PathLike, k: int = 10,
             device: str = "auto", align: str | None = None, allow_unfinished: bool = False) -> list[dict]:
    """The ``k`` gallery people nearest to ``probe``, nearest first (see :func:`nearest_people`)."""
    check_k(k)
    r = open_run(run_dir, device, align, allow_unfinished)
    g = _gallery(r.run, r.model, r.cfg, gallery, r.device, r.precision, r.channels_last, r.align)
    return nearest_people(r.embed(to_tensor(load_image(probe, r.cfg, r.align).image)[None]), g, k, r.threshold)


def nearest_people(q: torch.Tensor, g: dict, k: int, threshold: float) -> list[dict]:
    """The ``k`` people of gallery ``g`` (see :func:`_gallery`) nearest to embedding ``q`` (1, D).

    A person's distance is that of their nearest gallery image. Each entry:
    ``rank``, ``name``, ``distance``, ``image`` (that nearest image, relative
    to the gallery's people folder) and ``same_person`` (distance at most
    ``threshold``).
    """
    dist = LpDistance().pairwise(q, g["embeddings"])[0]  # (N,)
    labels = g["labels"]
    people = len(g["names"])
    best = torch.full((people,), float("inf")).scatter_reduce(0, labels, dist, reduce="amin")  # (P,)
    order = torch.argsort(best)[: min(k, people)]
    out = []
    for rank, p in enumerate(order.tolist(), 1):
        mine = torch.nonzero(labels == p).flatten()
        nearest = int(mine[torch.argmin(dist[mine])])
        d = float(best[p])
        out.append({"rank": rank, "name": g["names"][p], "distance": d, "image": g["files"][nearest],
                    "same_person": d <= threshold})
    return out
